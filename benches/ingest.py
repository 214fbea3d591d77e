#!/usr/bin/env python3
"""S5, replay ingest without clients: starts `tickwire serve --replay ...
--speed max` (no loop), waits until every replay has ended, and reports the
feed messages parsed per second of wall time and per server CPU-second, from
the server's own /metrics and /proc/PID/stat. Two figures: the whole process
from exec to the end (start-up included: it reads every file once to declare
its symbols before the replay starts), and the steady replay alone, from the
first poll that sees messages flowing to the end (Δ messages ÷ Δ CPU).

    ingest.py --tickwire BIN --json OUT.json PREFIX=PATH [PREFIX=PATH ...]
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        page = r.read().decode()
    series = {}
    for line in page.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        try:
            series[name] = float(value)
        except ValueError:
            pass
    return series


def total(series, prefix):
    return sum(v for k, v in series.items() if k == prefix or k.startswith(prefix + "{"))


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tickwire", required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("replays", nargs="+")
    args = parser.parse_args()
    port = free_port()
    command = [args.tickwire, "serve", "--listen", f"127.0.0.1:{port}", "--speed", "max"]
    for replay in args.replays:
        command += ["--replay", replay]
    started = time.monotonic()
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, "RUST_LOG": "warn"})
    try:
        series = None
        flowing = None  # (messages, cpu seconds) when the replay was first seen running
        while time.monotonic() - started < 600:
            if server.poll() is not None:
                sys.exit(f"tickwire exited: {server.stderr.read().decode()}")
            try:
                series = metrics(port)
            except OSError:
                series = None
            ended = [v for k, v in (series or {}).items() if k.startswith("tickwire_feed_ended")]
            if ended and all(v >= 1 for v in ended):
                break
            if series and flowing is None and total(series, "tickwire_feed_messages_total") > 0:
                flowing = (total(series, "tickwire_feed_messages_total"), cpu_secs(server.pid))
            time.sleep(0.005)
        else:
            sys.exit("the replay did not end within 10 minutes")
        wall = time.monotonic() - started
        cpu = cpu_secs(server.pid)
    finally:
        server.terminate()
        server.wait()
    messages = total(series, "tickwire_feed_messages_total")
    steady = None
    if flowing is not None and cpu > flowing[1]:
        steady = (messages - flowing[0]) / (cpu - flowing[1])
    report = {
        "replays": args.replays,
        "messages": messages,
        "ticks": total(series, "tickwire_feed_ticks_total"),
        "malformed": total(series, "tickwire_feed_malformed_total"),
        "book_updates": total(series, "tickwire_book_updates_total"),
        "wall_secs": wall,
        "cpu_secs": cpu,
        "messages_per_sec": messages / wall if wall else None,
        "messages_per_cpu_sec": messages / cpu if cpu else None,
        "steady_messages_per_cpu_sec": steady,
    }
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"{messages:,.0f} messages ({report['ticks']:,.0f} ticks) in {wall:.2f} s wall, "
          f"{cpu:.2f} s CPU: {report['messages_per_sec']:,.0f}/s, "
          f"{report['messages_per_cpu_sec']:,.0f} per CPU-second; steady replay "
          f"{steady or 0:,.0f} per CPU-second")


if __name__ == "__main__":
    main()
