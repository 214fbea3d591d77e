#!/usr/bin/env python3
"""Seeds fuzz/corpus/<target>/ with small real inputs: lines of the sample
captures in replay-data/, the requests of docs/protocol.md, and WebSocket
frames a client sends. Run from anywhere; existing seeds are overwritten,
corpus entries the fuzzer added are kept."""

import gzip
import hashlib
import json
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
SAMPLES = os.path.join(ROOT, "replay-data")


def write(target, data):
    directory = os.path.join(CORPUS, target)
    os.makedirs(directory, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def lines(path, count, opener=open):
    with opener(path, "rb") as f:
        out = []
        for line in f:
            out.append(line.rstrip(b"\r\n"))
            if len(out) == count:
                break
        return out


def distinct_kinds(path, count, key):
    """Up to `count` lines, at most two per kind (stream name, message type)."""
    seen = {}
    picked = []
    with gzip.open(path, "rb") as f:
        for line in f:
            if len(line) > 16384:
                continue  # Depth snapshots: long, and nothing the small ones lack.
            kind = key(line)
            if seen.get(kind, 0) < 2:
                seen[kind] = seen.get(kind, 0) + 1
                picked.append(line.rstrip(b"\r\n"))
            if len(picked) == count:
                break
    return picked


def mask_frame(fin, opcode, payload, mask=b"\xa1\xb2\xc3\xd4"):
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n <= 0xFFFF:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


requests = [
    {"op": "subscribe", "id": 1, "symbols": ["spot:BTCUSDT", "usdm:BTCUSDT"]},
    {"op": "subscribe", "id": 2, "symbols": ["spot:BTCUSDT"], "channel": "ticker", "max_rate_hz": 10},
    {"op": "unsubscribe", "id": 3, "symbols": ["spot:BTCUSDT"]},
    {"op": "list", "id": 4},
    {"op": "ping", "id": 5},
    {"op": "subscribe", "symbols": [], "max_rate_hz": -1},
]
for request in requests:
    write("request", json.dumps(request).encode())
write("request", b"{not json")

# The first byte of a frame_decoder input picks the piece size.
for request in requests[:4]:
    payload = json.dumps(request).encode()
    write("frame_decoder", b"\x07" + mask_frame(True, 0x1, payload))
    half = len(payload) // 2
    fragmented = mask_frame(False, 0x1, payload[:half]) + mask_frame(True, 0x0, payload[half:])
    write("frame_decoder", b"\x03" + fragmented)
write("frame_decoder", b"\x3f" + mask_frame(True, 0x9, b"ping") + mask_frame(True, 0xA, b""))
write("frame_decoder", b"\x00" + mask_frame(True, 0x8, struct.pack(">H", 1000) + b"bye"))
write("frame_decoder", b"\x01" + mask_frame(True, 0x1, b"x" * 300))

binance = os.path.join(SAMPLES, "binance-spot-btcusdt-20240808.gz")
for line in distinct_kinds(binance, 8, lambda l: l.split(b'"', 4)[3] if b'"' in l else b""):
    write("binance", line)
    # The live parser sees the message without the capture's timestamp.
    write("binance", line.split(b" ", 1)[-1])
usdm = os.path.join(SAMPLES, "binance-usdm-btcusdt-20240808.gz")
for line in distinct_kinds(usdm, 6, lambda l: l.split(b'"', 4)[3] if b'"' in l else b""):
    write("binance", line)

coinbase = os.path.join(SAMPLES, "coinbase-sample.ws.gz")
for line in distinct_kinds(coinbase, 12, lambda l: l.split(b'"type":"', 1)[-1][:12]):
    write("coinbase", line)
    if b": {" in line:
        write("coinbase", line.split(b": ", 1)[1])

write("native", b'{"tickwire_replay":1,"source":"seed"}')
write("native", b'{"recv_ts_ns":1723161255088169167,"symbol":"BTCUSDT","exchange_ts_ns":1723161256313000000,'
      b'"type":"quote","bid":"61800.20","bid_size":"2.507","ask":"61800.30","ask_size":"2.510"}')
write("native", b'{"recv_ts_ns":1723161255088176367,"symbol":"BTCUSDT","exchange_ts_ns":null,'
      b'"type":"trade","price":"61800.30","size":"0.006"}')

for name in ["tardis-binance-futures-btcusdt-quotes-sample.csv", "tardis-binance-futures-btcusdt-trades-sample.csv"]:
    write("tardis", b"\n".join(lines(os.path.join(SAMPLES, name), 6)))
