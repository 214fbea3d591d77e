#!/usr/bin/env python3
"""The raw loopback floor: TCP ping-pong of a 64-byte message between two
processes on 127.0.0.1 (TCP_NODELAY, blocking sockets), reported as round
trip / 2 in microseconds. Python adds a few µs per hop, so this is an upper
bound on the kernel's one-way time, measured on the same machine in the same
run as the servers.

    loopback.py [--count N] [--json OUT]
"""
import argparse
import json
import os
import socket
import time

MESSAGE = b"x" * 64


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--json")
    args = parser.parse_args()

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    child = os.fork()
    if child == 0:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                conn.sendall(recv_exact(conn, len(MESSAGE)))
        except (EOFError, OSError):
            os._exit(0)
    listener.close()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    samples = []
    for i in range(args.warmup + args.count):
        start = time.perf_counter_ns()
        sock.sendall(MESSAGE)
        recv_exact(sock, len(MESSAGE))
        if i >= args.warmup:
            samples.append((time.perf_counter_ns() - start) / 2000.0)
    sock.close()
    os.waitpid(child, 0)
    samples.sort()

    def q(p):
        return samples[min(len(samples) - 1, int(p * len(samples)))]

    result = {
        "what": "TCP ping-pong on 127.0.0.1 between two Python processes, round trip / 2",
        "count": len(samples),
        "one_way_us": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": samples[-1]},
    }
    o = result["one_way_us"]
    print(f"loopback one-way (RTT/2): p50 {o['p50']:.1f}  p99 {o['p99']:.1f}  p99.9 {o['p999']:.1f}  max {o['max']:.0f} µs  (n={len(samples)})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
