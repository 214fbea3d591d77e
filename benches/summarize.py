#!/usr/bin/env python3
"""Turns a benches/scenarios.sh results folder into Markdown: every scenario's
table exactly as the reports give it (medians over rounds), the comparisons,
and each target of BENCHMARKS.md with the measured figure next to it.

    summarize.py RESULTS_DIR > results.md
"""
import contextlib
import glob
import io
import json
import os
import platform
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))
import table  # noqa: E402  (benches/peers/table.py)

SERVERS = ["tickwire", "bun", "node-ws", "naive-rust"]
# S2's clients, each subscribed to every symbol: a step offers rate × this.
S2_CLIENTS = 100
# BENCHMARKS.md's bars against the common choices: (peer, tickwire's
# deliveries per CPU-second at least this many times the peer's, the peer's
# p99 at least this many times tickwire's).
PEER_BARS = (("node-ws", 10, 3), ("naive-rust", 5, 2))


def tables(folder):
    """table.py's Markdown output for one run.sh folder."""
    out = io.StringIO()
    argv = sys.argv
    sys.argv = ["table.py", "--markdown", folder] + SERVERS
    try:
        with contextlib.redirect_stdout(out):
            table.main()
    finally:
        sys.argv = argv
    return out.getvalue().strip()


def rows(folder):
    loaded, _ = table.load_rows(folder, SERVERS)
    return {row["name"]: row for row, _ in loaded}


def load(path):
    return table.load(path)


def fmt(x, digits=0):
    return table.fmt(x, digits)


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
    except (OSError, AttributeError):
        pass
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = float("nan")
    return (f"{os.cpu_count()} vCPU ({model}), Linux {platform.release()}, "
            f"load average {load1:.2f} when summarized")


def recorded(out, scenario, name):
    """What scenarios.sh recorded about a scenario's run, or None."""
    try:
        with open(os.path.join(out, scenario, name)) as f:
            return f.read().strip() or None
    except OSError:
        return None


def heading(out, scenario, title):
    """The scenario's section heading, the commit its run measured and
    tickwire's worker threads."""
    commit = recorded(out, scenario, "commit") or "?"
    workers = recorded(out, scenario, "workers")
    print(f"## {scenario} {title}")
    print()
    setting = f", `--workers {workers}`" if workers else ""
    print(f"Run at tickwire `{commit}`{setting}.")


def target_line(what, measured, target, ok):
    mark = "met" if ok else "**missed**"
    return f"| {what} | {measured} | {target} | {mark} |"


def main():
    out = sys.argv[1]
    print("<!-- Written by benches/summarize.py from the reports of benches/scenarios.sh runs in one folder; "
          "do not edit by hand. -->")
    print()
    print("# Benchmark results")
    print()
    print(f"Machine: {machine()}. Results folder: `{os.path.relpath(out)}`.")
    print()
    targets = []

    s1 = rows(os.path.join(out, "S1")) if os.path.isdir(os.path.join(out, "S1")) else {}
    loop = load(os.path.join(out, "S1", "loopback.json"))
    if s1:
        heading(out, "S1", "dashboards")
        print()
        print(tables(os.path.join(out, "S1")))
        print()
        print("![S1 latency by percentile](bench/S1-latency.svg)")
        print()
        t = s1.get("tickwire")
        if t:
            targets.append(target_line("S1 p50 / p99 / p99.9",
                                       f"{fmt(t['p50'])} / {fmt(t['p99'])} / {fmt(t['p999'])} µs",
                                       "≤ 100 / 1,000 / 3,000 µs",
                                       t["p50"] <= 100 and t["p99"] <= 1000 and t["p999"] <= 3000))
            if loop and loop["one_way_us"]["p999"]:
                ratio = t["p999"] / loop["one_way_us"]["p999"]
                targets.append(target_line("S1 p99.9 ÷ loopback one-way p99.9", f"{ratio:.1f}×",
                                           "≤ 2×", ratio <= 2))
            targets.append(target_line("S1 max", f"{fmt(t['max'])} µs", "≤ 25,000 µs",
                                       t["max"] <= 25000))
            for peer, factor, p99_factor in PEER_BARS:
                p = s1.get(peer)
                if p and p["per_cpu_s"] and t["per_cpu_s"]:
                    eff = t["per_cpu_s"] / p["per_cpu_s"]
                    lat = p["p99"] / t["p99"] if t["p99"] else 0
                    targets.append(target_line(
                        f"S1 vs {peer}: deliveries/CPU-s, p99", f"{eff:.2f}×, {lat:.2f}×",
                        f"≥ {factor}×, ≥ {p99_factor}× (p99 ≤ 1/{p99_factor})",
                        eff >= factor and lat >= p99_factor))

    steps = sorted(glob.glob(os.path.join(out, "S2", "rate-*")),
                   key=lambda d: int(d.rsplit("-", 1)[1]))
    if steps:
        heading(out, "S2", "firehose")
        print()
        print("100 clients × all 100 symbols; the feed rate is stepped up. Each cell: delivered/s, "
              "deliveries per server CPU-second, p99 µs (from intended time).")
        print()
        head = ["feed updates/s"] + SERVERS
        lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(SERVERS)]
        best = {}
        by_step = []
        for step in steps:
            rate = int(step.rsplit("-", 1)[1])
            r = rows(step)
            by_step.append((rate, r))
            cells = [f"{rate:,}"]
            for name in SERVERS:
                x = r.get(name)
                if not x:
                    cells.append("-")
                    continue
                cells.append(f"{fmt(x['delivered_s'])}/s, {fmt(x['per_cpu_s'])}/CPU-s, "
                             f"p99 {fmt(x['p99'])}")
                if x["per_cpu_s"] and x["per_cpu_s"] > best.get(name, (0, 0))[0]:
                    best[name] = (x["per_cpu_s"], x["delivered_s"])
            lines.append("| " + " | ".join(cells) + " |")
        print("\n".join(lines))
        print()
        if "tickwire" in best:
            t_eff = best["tickwire"][0]
            others = ", ".join(f"{name} {fmt(best[name][0])} ({t_eff / best[name][0]:.2f}×)"
                               for name in SERVERS[1:] if name in best)
            print(f"Best step against best step (each server at its own load): tickwire "
                  f"{fmt(t_eff)} deliveries per CPU-second; {others}.")
            print()
            targets.append(target_line("S2 deliveries per server CPU-second (best step)",
                                       fmt(t_eff), "≥ 4,000,000", t_eff >= 4_000_000))
            if "bun" in best:
                ratio = t_eff / best["bun"][0]
                targets.append(target_line("S2 efficiency vs Bun (best steps)", f"{ratio:.2f}×",
                                           "≥ 1×", ratio >= 1))
        # S1's bars against the peers, on the throughput scenario: at the
        # highest step both servers kept up with (delivered at least 95 % of
        # what the step offered), so that both carry the same load.
        for peer, factor, p99_factor in PEER_BARS:
            what = f"S2 vs {peer}: deliveries/CPU-s, p99 at the highest step both kept up with"
            bar = f"≥ {factor}×, ≥ {p99_factor}× (p99 ≤ 1/{p99_factor})"
            common = [(rate, r["tickwire"], r[peer]) for rate, r in by_step
                      if "tickwire" in r and peer in r
                      and all(x["delivered_s"] >= 0.95 * rate * S2_CLIENTS
                              for x in (r["tickwire"], r[peer]))]
            if not common:
                targets.append(target_line(what, "no such step", bar, False))
                continue
            rate, t, p = common[-1]
            eff = t["per_cpu_s"] / p["per_cpu_s"] if p["per_cpu_s"] else 0
            lat = p["p99"] / t["p99"] if t["p99"] else 0
            targets.append(target_line(what, f"{eff:.2f}×, {lat:.2f}× at {rate:,}/s", bar,
                                       eff >= factor and lat >= p99_factor))

    s3 = rows(os.path.join(out, "S3")) if os.path.isdir(os.path.join(out, "S3")) else {}
    if s3:
        heading(out, "S3", "slow consumers")
        print()
        print("S1 plus 100 clients that never read and 100 that read one message a second; "
              "latency columns are the 1,000 healthy clients.")
        print()
        print(tables(os.path.join(out, "S3")))
        print()
        print("![S3 latency by percentile](bench/S3-latency.svg)")
        print()
        t3, t1 = s3.get("tickwire"), s1.get("tickwire")
        if t3 and t1:
            r99, r999 = t3["p99"] / t1["p99"], t3["p999"] / t1["p999"]
            targets.append(target_line("S3 healthy p99, p99.9 ÷ S1", f"{r99:.2f}×, {r999:.2f}×",
                                       "≤ 1.1×", r99 <= 1.1 and r999 <= 1.1))
            # Peak, not end-of-window, RSS: a server may drop the slow and
            # stalled clients before the window ends (see `conns`).
            peak3, peak1 = t3.get("peak_rss_mib"), t1.get("peak_rss_mib")
            if peak3 is not None and peak1 is not None:
                growth = peak3 - peak1
                targets.append(target_line("S3 server peak RSS − S1's", f"{growth:+.1f} MiB",
                                           "≤ 20 MiB", growth <= 20))

    s4 = rows(os.path.join(out, "S4")) if os.path.isdir(os.path.join(out, "S4")) else {}
    if s4:
        heading(out, "S4", "connections")
        print()
        print(f"{rows(os.path.join(out, 'S4')).get('tickwire', {}).get('requested', 20000):,.0f} "
              "connections × 5 subscriptions (feed at 100 updates/s), then 1,000 "
              "connect-subscribe-disconnect cycles per second through the window. `KiB/conn` is "
              "the server's RSS growth while they connected, per connection; `connects/s` "
              "their handshake rate; `RSS MiB` is at the end of the churn; `RSS after close` "
              "once every connection had closed and the server's RSS stopped falling, and "
              "`% of growth kept` how much of what connecting took it still held then.")
        print()
        print(tables(os.path.join(out, "S4")))
        print()
        t = s4.get("tickwire")
        if t:
            if t["kib_per_conn"] is not None:
                targets.append(target_line("S4 RSS per idle connection",
                                           f"{t['kib_per_conn']:.1f} KiB", "≤ 4 KiB",
                                           t["kib_per_conn"] <= 4))
            if t["churn_s"] is not None:
                targets.append(target_line("S4 churn cycles per second (target 1,000/s)",
                                           f"{fmt(t['churn_s'])}/s, {t['churn_failed'] or 0:.0f} failed",
                                           "1,000/s", t["churn_s"] >= 990))
            if t["handshakes_s"] is not None:
                targets.append(target_line("S4 handshakes per second (initial connect)",
                                           fmt(t["handshakes_s"]), "≥ 10,000",
                                           t["handshakes_s"] >= 10_000))
            if t["kept_pct"] is not None:
                targets.append(target_line(
                    "S4 RSS back to baseline after churn (share of the connections' growth "
                    "still held once they all closed)",
                    f"{t['kept_pct']:.0f}%: {t['rss_closed_mib']:.1f} MiB against "
                    f"{t['rss_before_mib']:.1f} before", "≤ 10%", t["kept_pct"] <= 10))

    s5 = os.path.join(out, "S5")
    if os.path.isdir(s5):
        heading(out, "S5", "replay ingest")
        windows = {r.get("steady_window_secs") for r in
                   (load(p) for p in glob.glob(os.path.join(s5, "*.r*.json"))) if r}
        window = " / ".join(f"{w:g} s" for w in sorted(w for w in windows if w)) or "a window"
        print()
        print("The full Binance spot and USD-M captures of 2024-08-08 (135,203 lines, 39 MB "
              "uncompressed) at `--speed max`, no clients (`benches/ingest.py`); medians of rounds. "
              f"`steady` is the replay alone: Δ messages ÷ Δ CPU over {window} of a server "
              "looping over the same files, from a second after it starts; `whole process` is "
              "one pass, start-up included, which reads every file once to declare its "
              "symbols.")
        print()
        print("| input | messages | wall s | msgs/s | msgs per CPU-s, whole process | "
              "msgs per CPU-s, steady |")
        print("|---|---:|---:|---:|---:|---:|")
        steady_best = 0
        for kind in ("gzip", "plain"):
            reports = [r for r in (load(p) for p in sorted(glob.glob(os.path.join(s5, f"{kind}.r*.json"))))
                       if r]
            if not reports:
                continue
            med = {k: table.median([r.get(k) for r in reports]) for k in
                   ("messages", "wall_secs", "messages_per_sec", "messages_per_cpu_sec",
                    "steady_messages_per_cpu_sec")}
            steady_best = max(steady_best, med["steady_messages_per_cpu_sec"] or 0)
            print(f"| {kind} | {fmt(med['messages'])} | {med['wall_secs']:.2f} | "
                  f"{fmt(med['messages_per_sec'])} | {fmt(med['messages_per_cpu_sec'])} | "
                  f"{fmt(med['steady_messages_per_cpu_sec'])} |")
        print()
        clients = load(os.path.join(s5, "clients.json"))
        if clients:
            m = clients.get("server_metrics") or {}
            p = clients.get("server_process") or {}
            print(f"With 100 clients subscribed to both symbols, looping at `--speed max`: "
                  f"{fmt(m.get('book_updates_per_sec'))} book updates/s, "
                  f"{fmt(clients['delivered_per_sec'])} deliveries/s "
                  f"({clients['skipped_share'] * 100:.1f}% of versions conflated), server "
                  f"{fmt(p.get('cpu_cores'), 2)} cores, {fmt(p.get('deliveries_per_cpu_sec'))} "
                  f"deliveries per CPU-second, p99 {fmt(clients['latency_us']['p99'])} µs.")
            print()
        targets.append(target_line("S5 replay ingest per core (steady, best input)",
                                   fmt(steady_best), "≥ 2,000,000", steady_best >= 2_000_000))

    if targets:
        print("## Targets")
        print()
        print("| target | measured | bar | |")
        print("|---|---|---|---|")
        print("\n".join(targets))
        print()


if __name__ == "__main__":
    main()
