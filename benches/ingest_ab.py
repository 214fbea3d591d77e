#!/usr/bin/env python3
"""Compares the replay ingest of two tickwire builds on the same machine at
the same time: each round starts both, each looping a `--speed max` replay of
the same files and pinned to a core of its own (the cores swapped every
round), and reads Δ messages ÷ Δ CPU-seconds of each over the same window.

A shared VM's speed drifts by ±10 % from minute to minute, more than most
changes to the parser are worth; builds measured one after the other see
different phases of it, while two measured side by side see the same one.
Run with the same build twice, the ratio's median stays within about 1 %
and single rounds within 2.5 %.

    ingest_ab.py --base BIN --candidate BIN [--rounds 6] [--window 5] PREFIX=PATH [PREFIX=PATH ...]

The files are best uncompressed (gzip costs more than the parser does) and
the machine otherwise idle: a build running beside the two slows both, but
not alike.
"""
import argparse
import os
import statistics
import subprocess
import time

from ingest import free_port, sample, wait_until_flowing


def start(binary, core, replays):
    """A looping max-speed replay of `replays` pinned to `core`, and its port."""
    port = free_port()
    command = ["taskset", "-c", str(core), binary, "serve", "--listen", f"127.0.0.1:{port}",
               "--speed", "max", "--loop"]
    for replay in replays:
        command += ["--replay", replay]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, "RUST_LOG": "warn"})
    return server, port


def stop(servers):
    for server, _ in servers:
        server.terminate()
    for server, _ in servers:
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def one_round(args, cores, swap):
    if swap:
        cores = cores[::-1]
    servers = []
    try:
        for binary, core in zip([args.base, args.candidate], cores):
            servers.append(start(binary, core, args.replays))
        # Start-up reads every file once to declare its symbols; the window
        # begins once both have been looping for a while.
        for server, port in servers:
            wait_until_flowing(server, port)
        time.sleep(args.settle)
        before = [sample(server, port) for server, port in servers]
        time.sleep(args.window)
        after = [sample(server, port) for server, port in servers]
    finally:
        stop(servers)
    rates = []
    for (messages_after, cpu_after), (messages_before, cpu_before) in zip(after, before):
        cpu = cpu_after - cpu_before
        if cpu <= 0 or messages_after <= messages_before:
            raise SystemExit("a server read nothing over the window")
        rates.append((messages_after - messages_before) / cpu)
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the build to compare against")
    parser.add_argument("--candidate", required=True, help="the build being tried")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--window", type=float, default=5.0, help="seconds measured per round")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds between both replays flowing and the window")
    parser.add_argument("replays", nargs="+")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))[:2]
    if len(cores) < 2:
        raise SystemExit("needs two cores: the builds run side by side")
    ratios = []
    for round_no in range(args.rounds):
        base, candidate = one_round(args, cores, swap=round_no % 2 == 1)
        ratios.append(candidate / base)
        print(f"round {round_no + 1}: base {base:,.0f}, candidate {candidate:,.0f} "
              f"lines per CPU-second, candidate/base {candidate / base:.3f}", flush=True)
    print(f"candidate/base: median {statistics.median(ratios):.3f}, "
          f"range {min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} rounds")


if __name__ == "__main__":
    main()
