#!/usr/bin/env python3
"""S5, replay ingest without clients: starts `tickwire serve --replay ...
--speed max` and reports the feed messages parsed per second of wall time
and per server CPU-second, from the server's own /metrics and
/proc/PID/stat. Two figures:

- whole process: one pass over the files (no loop), from exec until every
  replay has ended, start-up included (it reads every file once to declare
  its symbols before the replay starts);
- steady: the replay alone, a second server looping over the same files,
  Δ messages ÷ Δ CPU over a window (`--window`, 5 s) that starts a second
  after the messages are first seen flowing. A single pass lasts a fraction
  of a second, too short for CPU time that /proc counts in 10 ms ticks.

    ingest.py --tickwire BIN --json OUT.json [--window SECS] PREFIX=PATH [PREFIX=PATH ...]
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


def start(args, port, looped):
    command = [args.tickwire, "serve", "--listen", f"127.0.0.1:{port}", "--speed", "max"]
    if looped:
        command.append("--loop")
    for replay in args.replays:
        command += ["--replay", replay]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "RUST_LOG": "warn"})


def poll(server, port):
    """The server's metrics, or None while it is not answering yet."""
    if server.poll() is not None:
        sys.exit(f"tickwire exited: {server.stderr.read().decode()}")
    try:
        return metrics(port)
    except OSError:
        return None


def one_pass(args):
    """Plays the files once; the whole process's figures."""
    port = free_port()
    started = time.monotonic()
    server = start(args, port, looped=False)
    try:
        while time.monotonic() - started < 600:
            series = poll(server, port)
            ended = [v for k, v in (series or {}).items() if k.startswith("tickwire_feed_ended")]
            if ended and all(v >= 1 for v in ended):
                break
            time.sleep(0.005)
        else:
            sys.exit("the replay did not end within 10 minutes")
        wall = time.monotonic() - started
        cpu = cpu_secs(server.pid)
    finally:
        server.terminate()
        server.wait()
    return series, wall, cpu


def wait_until_flowing(server, port):
    """Returns once the server's replay has read its first messages."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        series = poll(server, port)
        if series and total(series, "tickwire_feed_messages_total") > 0:
            return
        time.sleep(0.05)
    sys.exit("the replay did not start within a minute")


def steady(args):
    """Δ messages ÷ Δ CPU-seconds over a window of a looping replay."""
    port = free_port()
    server = start(args, port, looped=True)
    try:
        wait_until_flowing(server, port)
        time.sleep(1)
        before = sample(server, port)
        time.sleep(args.window)
        after = sample(server, port)
    finally:
        server.terminate()
        server.wait()
    cpu = after[1] - before[1]
    if cpu <= 0:
        sys.exit(f"the server used no CPU over the {args.window:g} s window")
    return (after[0] - before[0]) / cpu


def sample(server, port):
    """(messages read, CPU-seconds) now; the metrics asked for up to 5 times."""
    for _ in range(5):
        series = poll(server, port)
        if series is not None:
            return total(series, "tickwire_feed_messages_total"), cpu_secs(server.pid)
        time.sleep(0.2)
    sys.exit("the server's metrics did not answer")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tickwire", required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--window", type=float, default=5.0,
                        help="seconds of looping replay behind the steady figure")
    parser.add_argument("replays", nargs="+")
    args = parser.parse_args()
    series, wall, cpu = one_pass(args)
    steady_rate = steady(args)
    messages = total(series, "tickwire_feed_messages_total")
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
        "steady_window_secs": args.window,
        "steady_messages_per_cpu_sec": steady_rate,
    }
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"{messages:,.0f} messages ({report['ticks']:,.0f} ticks) in {wall:.2f} s wall, "
          f"{cpu:.2f} s CPU: {report['messages_per_sec']:,.0f}/s, "
          f"{report['messages_per_cpu_sec']:,.0f} per CPU-second; steady replay "
          f"{steady_rate:,.0f} per CPU-second over {args.window:g} s")


if __name__ == "__main__":
    main()
