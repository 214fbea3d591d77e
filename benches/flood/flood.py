#!/usr/bin/env python3
"""Abusive clients for measuring what a flood costs everyone else.

Each flooder opens a WebSocket connection to tickwire and sends subscribe
requests as fast as the socket takes them, while a thread reads (and throws
away) whatever the server answers, so the server is never held back by an
unread socket. A flooder the server closes (1008 after too many `rate_limited`
errors) reconnects at once.

    benches/flood/flood.py ws://127.0.0.1:8080/ws --clients 4 --duration 40

Prints the frames sent and the reconnects when done. Standard library only.
"""

import argparse
import base64
import json
import os
import socket
import struct
import threading
import time
from urllib.parse import urlparse


def frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81])
    if n < 126:
        head += bytes([0x80 | n])
    else:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def connect(url):
    parsed = urlparse(url)
    sock = socket.create_connection((parsed.hostname, parsed.port or 80))
    key = base64.b64encode(os.urandom(16)).decode()
    path = parsed.path or "/ws"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {parsed.netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    return sock


def drain(sock):
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def flood(url, symbols, deadline, totals, lock):
    request = json.dumps({"op": "subscribe", "symbols": symbols}).encode()
    burst = frame(request) * 256
    sent = reconnects = 0
    while time.monotonic() < deadline:
        try:
            sock = connect(url)
        except OSError:
            time.sleep(0.05)
            continue
        reader = threading.Thread(target=drain, args=(sock,), daemon=True)
        reader.start()
        try:
            while time.monotonic() < deadline:
                sock.sendall(burst)
                sent += 256
        except OSError:
            reconnects += 1
        finally:
            sock.close()
    with lock:
        totals["frames"] += sent
        totals["reconnects"] += reconnects


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--symbols", default="spot:BTCUSDT")
    args = parser.parse_args()
    deadline = time.monotonic() + args.duration
    totals = {"frames": 0, "reconnects": 0}
    lock = threading.Lock()
    symbols = args.symbols.split(",")
    threads = [
        threading.Thread(target=flood, args=(args.url, symbols, deadline, totals, lock))
        for _ in range(args.clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({**totals, "frames_per_sec": round(totals["frames"] / args.duration)}))


if __name__ == "__main__":
    main()
