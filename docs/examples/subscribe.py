#!/usr/bin/env python3
"""Subscribe to tickwire tickers (client protocol v1) and print them.

    pip install websockets
    python3 subscribe.py ws://127.0.0.1:8080/ws spot:BTCUSDT usdm:BTCUSDT
    python3 subscribe.py ws://127.0.0.1:8080/ws spot:BTCUSDT --count 20 --max-rate-hz 5

Tracks `seq` per symbol and checks that `skipped` is consistent with it.
Exits with status 0 after --count tickers or when the server shuts down (close
code 1001), and 1 on any other close, on an inconsistency, or when the server
accepted none of the symbols.
"""

import argparse
import asyncio
import json
import sys
import time
from decimal import Decimal

import websockets


def decimal_or_none(text):
    # Prices and sizes are exact decimal strings (or null): never use float().
    return None if text is None else Decimal(text)


async def run(url, symbols, count, max_rate_hz):
    last_seq = {}  # symbol -> seq of the last ticker received on this connection
    accepted = None  # the symbols the `subscribed` reply lists
    tickers = 0
    missed = 0
    async with websockets.connect(url) as ws:  # answers server pings by itself
        request = {"op": "subscribe", "id": 1, "symbols": symbols}
        if max_rate_hz is not None:
            request["max_rate_hz"] = max_rate_hz
        await ws.send(json.dumps(request))
        try:
            async for raw in ws:
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "ticker":
                    symbol, seq = msg["symbol"], msg["seq"]
                    prev = last_seq.get(symbol)
                    if msg["snapshot"]:
                        # A snapshot is the new baseline for this symbol.
                        pass
                    elif prev is None:
                        # First update of a symbol that had no data at subscribe time.
                        pass
                    elif seq <= prev or msg["skipped"] != seq - prev - 1:
                        print(f"INCONSISTENT {symbol}: prev seq {prev}, got seq {seq} "
                              f"skipped {msg['skipped']}", file=sys.stderr)
                        return 1
                    last_seq[symbol] = seq
                    missed += msg["skipped"]
                    bid, ask = decimal_or_none(msg["bid"]), decimal_or_none(msg["ask"])
                    spread = ask - bid if bid is not None and ask is not None else None
                    latency_ms = (time.time_ns() - msg["ingest_ts_ns"]) / 1e6
                    print(f"{symbol:<16} seq={seq:<8} bid={msg['bid']} ask={msg['ask']} "
                          f"spread={spread} last={msg['last']} skipped={msg['skipped']}"
                          f"{' snapshot' if msg['snapshot'] else ''} "
                          f"age={latency_ms:.1f}ms")
                    tickers += 1
                    if count is not None and tickers >= count:
                        print(f"# {tickers} tickers, {missed} versions conflated away",
                              file=sys.stderr)
                        return 0
                elif kind == "error":
                    print(f"# error {msg['code']}: {msg['message']} {msg.get('symbols', '')}",
                          file=sys.stderr)
                    # Errors for refused symbols follow the `subscribed` reply:
                    # when it accepted none, nothing will ever arrive.
                    if msg.get("id") == 1 and accepted == []:
                        print("# nothing subscribed", file=sys.stderr)
                        return 1
                elif kind == "subscribed" and msg.get("id") == 1:
                    accepted = msg["symbols"]
                    print(f"# {raw}", file=sys.stderr)
                else:  # subscribed, unsubscribed, symbols, pong, status, ...
                    print(f"# {raw}", file=sys.stderr)
        except websockets.ConnectionClosed:
            pass
        # The iterator ends on a normal close (1000/1001); ConnectionClosed otherwise.
        code = ws.close_code
        reason = ws.close_reason
    if code == 1001:
        print(f"# server shutting down (1001 {reason!r}); reconnect later", file=sys.stderr)
        return 0
    print(f"# connection closed: {code} {reason!r}", file=sys.stderr)
    return 0 if code == 1000 else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="e.g. ws://127.0.0.1:8080/ws")
    parser.add_argument("symbols", nargs="+", help="e.g. spot:BTCUSDT usdm:BTCUSDT")
    parser.add_argument("--count", type=int, help="exit after this many tickers")
    parser.add_argument("--max-rate-hz", type=float, help="per-symbol delivery cap")
    args = parser.parse_args()
    try:
        sys.exit(asyncio.run(run(args.url, args.symbols, args.count, args.max_rate_hz)))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
