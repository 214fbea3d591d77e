#!/usr/bin/env python3
"""Prints the comparison table of a run.sh results directory: one row per
server, each figure the median over that server's rounds (`NAME.rK.json`,
written by `tickwire bench --json`), then tickwire against each peer.

    table.py [--markdown] RESULTS_DIR [NAME ...]

With --markdown the same tables come out as GitHub-flavoured Markdown, which
is how docs/benchmark-results.md is made.
"""
import glob
import json
import os
import statistics
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


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def figures(r):
    """The figures of one round's report, flat."""
    lat = r["latency_us"]
    proc = r.get("server_process") or {}
    metrics = r.get("server_metrics") or {}
    connect = r.get("connect") or {}
    slow = r.get("slow") or {}
    churn = r.get("churn") or {}
    after_close = r.get("after_close") or {}
    age = r.get("staleness_us") or {}
    floor = r.get("staleness_floor_us") or {}
    rss = proc.get("rss_bytes")
    per_conn = connect.get("rss_per_connection")
    return {
        "p50": lat["p50"], "p90": lat["p90"], "p99": lat["p99"], "p999": lat["p999"],
        "p9999": lat["p9999"], "max": lat["max"], "n": lat["count"],
        "delivered_s": r["delivered_per_sec"],
        "updates_s": metrics.get("book_updates_per_sec"),
        "cores": proc.get("cpu_cores"),
        "per_cpu_s": proc.get("deliveries_per_cpu_sec"),
        "rss_mib": rss / 1048576 if rss is not None else None,
        "peak_rss_mib": (proc["peak_rss_bytes"] / 1048576
                         if proc.get("peak_rss_bytes") is not None else None),
        "connected": r["connections"]["connected"],
        "requested": r["connections"]["requested"],
        "closed": r["connections"]["closed_early"],
        "seqv": r["seq_violations"],
        "skipped_share": r["skipped_share"],
        "handshakes_s": connect.get("handshakes_per_sec"),
        "kib_per_conn": per_conn / 1024 if per_conn is not None else None,
        "age_p99": age.get("p99") if age.get("count") else None,
        "floor_p99": floor.get("p99") if floor.get("count") else None,
        "slow_p99": (slow.get("latency_us") or {}).get("p99") if slow else None,
        "slow_age_p99": (slow.get("staleness_us") or {}).get("p99") if slow else None,
        "slow_delivered": slow.get("delivered") if slow else None,
        "churn_s": churn.get("completed_per_sec") if churn else None,
        "churn_failed": churn.get("failed") if churn else None,
        "handshake_p99": (churn.get("handshake_us") or {}).get("p99") if churn else None,
        "subscribed_p99": (churn.get("subscribed_us") or {}).get("p99") if churn else None,
        "rss_before_mib": (connect["server_rss_before"] / 1048576
                           if connect.get("server_rss_before") is not None else None),
        "rss_closed_mib": (after_close["server_rss"] / 1048576
                           if after_close.get("server_rss") is not None else None),
        "kept_pct": (after_close["share_kept"] * 100
                     if after_close.get("share_kept") is not None else None),
    }


def row_of(name, reports):
    rounds = [figures(r) for r in reports]
    row = {key: median([f[key] for f in rounds]) for key in rounds[0]}
    # Violations and closes add up over rounds: one is a finding.
    row["seqv"] = sum(f["seqv"] for f in rounds)
    row["closed"] = sum(f["closed"] for f in rounds)
    row["name"] = name
    row["rounds"] = len(rounds)
    return row


def load_rows(out, names):
    rows, missing = [], []
    for name in names:
        paths = sorted(glob.glob(os.path.join(out, f"{name}.r*.json")))
        reports = [r for r in (load(p) for p in paths) if r is not None]
        if reports:
            rows.append((row_of(name, reports), reports[0]))
        else:
            missing.append(name)
    return rows, missing


def render(table, markdown):
    if markdown:
        lines = ["| " + " | ".join(table[0]) + " |",
                 "|" + "|".join("---" if i == 0 else "---:" for i in range(len(table[0]))) + "|"]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in table[1:]]
        return "\n".join(lines)
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    lines = []
    for i, row in enumerate(table):
        lines.append("  ".join(str(c).ljust(w) if j == 0 else str(c).rjust(w)
                               for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main():
    args = sys.argv[1:]
    markdown = "--markdown" in args
    args = [a for a in args if a != "--markdown"]
    out = args[0]
    names = args[1:] or ["tickwire", "bun", "node-ws", "naive-rust"]
    loaded, missing = load_rows(out, names)
    rows = [row for row, _ in loaded]
    loop = load(os.path.join(out, "loopback.json"))
    if loaded:
        r0 = loaded[0][1]
        print(
            f"{r0['connections']['requested']} connections × {r0['symbols_per_connection']} of "
            f"{r0['symbols']} symbols (zipf {r0['zipf']}), {r0['window_secs']:.0f} s window after "
            f"{r0['warmup_secs']:.0f} s warm-up, latency from {r0.get('clock', 'ingest')} time; "
            f"medians of {rows[0]['rounds']} round(s)"
        )
        print()

    head = ["server", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "p99.99 µs", "max µs", "samples",
            "delivered/s", "feed/s", "srv cores", "deliv/CPU-s", "RSS MiB", "conns", "seq viol",
            "skipped"]
    extras = [
        ("age_p99", "age p99 µs", 0), ("floor_p99", "freshest age p99 µs", 0),
        ("slow_p99", "slow p99 µs", 0), ("slow_age_p99", "slow age p99 µs", 0),
        ("handshakes_s", "connects/s", 0),
        ("kib_per_conn", "KiB/conn", 1), ("churn_s", "churn/s", 0),
        ("handshake_p99", "handshake p99 µs", 0), ("subscribed_p99", "subscribed p99 µs", 0),
        ("rss_closed_mib", "RSS after close MiB", 1), ("kept_pct", "% of growth kept", 0),
    ]
    extras = [e for e in extras if any(r[e[0]] is not None for r in rows)]
    head += [title for _, title, _ in extras]
    table = [head]
    for r in rows:
        conns = f"{r['connected']:.0f}/{r['requested']:.0f}"
        if r["closed"]:
            conns += f" ({r['closed']} closed)"
        table.append([
            r["name"], fmt(r["p50"]), fmt(r["p90"]), fmt(r["p99"]), fmt(r["p999"]), fmt(r["p9999"]),
            fmt(r["max"]), fmt(r["n"]), fmt(r["delivered_s"]), fmt(r["updates_s"]),
            fmt(r["cores"], 2), fmt(r["per_cpu_s"]), fmt(r["rss_mib"], 1), conns, str(r["seqv"]),
            f"{r['skipped_share'] * 100:.1f}%",
        ] + [fmt(r[key], digits) for key, _, digits in extras])
    if loop:
        o = loop["one_way_us"]
        table.append(["loopback 1-way", fmt(o["p50"], 1), "", fmt(o["p99"], 1), fmt(o["p999"], 1),
                      "", fmt(o["max"]), fmt(loop["count"])] + [""] * (len(head) - 8))
    print(render(table, markdown))

    base = next((r for r in rows if r["name"] == "tickwire"), None)
    peers = [r for r in rows if r["name"] != "tickwire"]
    if base and peers:
        print()
        print("tickwire vs each peer: latency is peer ÷ tickwire, efficiency tickwire ÷ peer "
              "(deliveries per server CPU-second), RSS peer ÷ tickwire; above 1× tickwire is better.")
        print()

        def ratio(a, b):
            return f"{a / b:.2f}×" if a and b else "-"

        t2 = [["peer", "p50", "p99", "p99.9", "deliv/CPU-s", "RSS"]]
        for p in peers:
            t2.append([p["name"], ratio(p["p50"], base["p50"]), ratio(p["p99"], base["p99"]),
                       ratio(p["p999"], base["p999"]), ratio(base["per_cpu_s"], p["per_cpu_s"]),
                       ratio(p["rss_mib"], base["rss_mib"])])
        print(render(t2, markdown))
    if base and loop and loop["one_way_us"]["p999"]:
        print()
        print(f"tickwire p99.9 ÷ loopback one-way p99.9 = "
              f"{base['p999'] / loop['one_way_us']['p999']:.1f}× (target ≤ 2×)")
    if missing:
        print(f"\nmissing results: {', '.join(missing)} (see their .log files in {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
