#!/usr/bin/env python3
"""Prints the comparison table of a run.sh results directory: one row per
server from its `tickwire bench --json` report, then tickwire vs each peer.

    table.py RESULTS_DIR [NAME ...]
"""
import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fmt(x, digits=0):
    if x is None:
        return "-"
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def row_of(name, r):
    lat = r["latency_us"]
    proc = r.get("server_process") or {}
    metrics = r.get("server_metrics") or {}
    rss = proc.get("rss_bytes")
    return {
        "name": name,
        "p50": lat["p50"],
        "p99": lat["p99"],
        "p999": lat["p999"],
        "max": lat["max"],
        "n": lat["count"],
        "delivered_s": r["delivered_per_sec"],
        "updates_s": metrics.get("book_updates_per_sec"),
        "cores": proc.get("cpu_cores"),
        "per_cpu_s": proc.get("deliveries_per_cpu_sec"),
        "rss_mib": rss / 1048576 if rss is not None else None,
        "conn": f'{r["connections"]["connected"]}/{r["connections"]["requested"]}',
        "closed": r["connections"]["closed_early"],
        "seqv": r["seq_violations"],
        "skipped": r["skipped"],
    }


def main():
    out = sys.argv[1]
    names = sys.argv[2:] or ["tickwire", "bun", "node-ws", "naive-rust"]
    rows, missing = [], []
    for name in names:
        r = load(os.path.join(out, f"{name}.json"))
        if r is None:
            missing.append(name)
        else:
            rows.append(row_of(name, r))

    loop = load(os.path.join(out, "loopback.json"))
    if rows:
        r0 = load(os.path.join(out, f"{rows[0]['name']}.json"))
        print(
            f"scenario: {r0['connections']['requested']} connections x {r0['symbols_per_connection']} of "
            f"{r0['symbols']} symbols (zipf {r0['zipf']}), {r0['window_secs']:.0f} s window after "
            f"{r0['warmup_secs']:.0f} s warm-up, {r0['threads']} load thread(s)"
        )
    head = ("server", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "samples", "delivered/s",
            "feed/s", "srv cores", "deliv/CPU-s", "RSS MiB", "conns", "seq viol", "skipped")
    table = [head]
    for r in rows:
        table.append((
            r["name"], fmt(r["p50"]), fmt(r["p99"]), fmt(r["p999"]), fmt(r["max"]), fmt(r["n"]),
            fmt(r["delivered_s"]), fmt(r["updates_s"]), fmt(r["cores"], 2), fmt(r["per_cpu_s"]),
            fmt(r["rss_mib"], 1), r["conn"] + (f" ({r['closed']} closed)" if r["closed"] else ""),
            str(r["seqv"]), fmt(r["skipped"]),
        ))
    if loop:
        o = loop["one_way_us"]
        table.append(("loopback 1-way", fmt(o["p50"], 1), fmt(o["p99"], 1), fmt(o["p999"], 1),
                      fmt(o["max"]), fmt(loop["count"]), "", "", "", "", "", "", "", ""))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for i, row in enumerate(table):
        print("  ".join(str(c).ljust(w) if j == 0 else str(c).rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))

    base = next((r for r in rows if r["name"] == "tickwire"), None)
    peers = [r for r in rows if r["name"] != "tickwire"]
    if base and peers:
        print()
        print("tickwire vs peer (latency: peer / tickwire, >1 means tickwire is faster;")
        print("                  efficiency: tickwire / peer deliveries per server CPU-second, >1 means tickwire is cheaper)")

        def ratio(a, b):
            return f"{a / b:.2f}x" if a and b else "-"

        head2 = ("peer", "p50", "p99", "p99.9", "deliv/CPU-s", "RSS (peer/tickwire)")
        t2 = [head2]
        for p in peers:
            t2.append((p["name"], ratio(p["p50"], base["p50"]), ratio(p["p99"], base["p99"]),
                       ratio(p["p999"], base["p999"]), ratio(base["per_cpu_s"], p["per_cpu_s"]),
                       ratio(p["rss_mib"], base["rss_mib"])))
        w2 = [max(len(row[i]) for row in t2) for i in range(len(head2))]
        for i, row in enumerate(t2):
            print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, w2))))
            if i == 0:
                print("  ".join("-" * w for w in w2))
    if base and loop:
        floor = loop["one_way_us"]["p999"]
        print()
        print(f"tickwire p99.9 / loopback one-way p99.9 = {base['p999'] / floor:.1f}x (target: <= 2x)" if floor else "")
    if missing:
        print(f"\nmissing results: {', '.join(missing)} (see their .log files in {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
