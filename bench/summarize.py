#!/usr/bin/env python3
"""Turns bench/compare.sh's raw runs into the Markdown table: medians per (scenario, threads, proxy), and the
ratio of each proxy to HAProxy at the same thread count."""
import csv
import os
import statistics
import sys
from collections import defaultdict

raw, duration, runs, idle_conns, machine = sys.argv[1:6]
rows = list(csv.DictReader(open(raw), delimiter="\t"))
groups = defaultdict(list)
for r in rows:
    groups[(r["scenario"], r["threads"], r["proxy"])].append(r)


def med(rs, key):
    vals = [float(r[key]) for r in rs if r[key] not in ("-", "")]
    return statistics.median(vals) if vals else None


TITLES = {
    "small": "Small GETs, keep-alive, 64 connections (wrk -t1 -c64)",
    "close": "New connection per request, 64 concurrent (oha --disable-keepalive -c64)",
    "1mib": "1 MiB responses, keep-alive, 8 connections (wrk -t1 -c8)",
    "post64k": "64 KiB POST uploads, keep-alive, 16 connections (wrk -t1 -c16)",
    "tls-small": "TLS: small GETs over https, keep-alive, 64 connections (wrk -t1 -c64)",
    "tls-close": "TLS: a new TLS connection per request, 64 concurrent (oha --disable-keepalive -c64); CPU us/req is per handshake",
}

out = ["# Benchmark results", "", "Produced by `bench/compare.sh`; medians of %s alternating runs of %s s each." % (runs, duration), ""]
out += ["Machine:", "", machine, ""]
ORDER = {"direct": 0, "shoal": 1, "shoal-base": 2, "shoal-log": 3, "shoal-splice": 4, "haproxy": 5, "nginx": 6}
scenarios = []
for r in rows:
    if r["scenario"] not in scenarios:
        scenarios.append(r["scenario"])
for sc in scenarios:
    if sc in ("idle10k", "tls-idle10k"):
        what = "TLS connections" if sc == "tls-idle10k" else "keep-alive connections"
        out += ["## %s idle %s (one request each, then held)" % (idle_conns, what), ""]
        out += ["| threads | proxy | failed | RSS before (MiB) | RSS held (MiB) | per connection (KiB) | peak RSS (MiB) | peak vs HAProxy |",
                "|---|---|---|---|---|---|---|---|"]
        for (s, th, px), rs in sorted(groups.items()):
            if s != sc:
                continue
            base, held, peak = med(rs, "idle_base_kib"), med(rs, "idle_held_kib"), med(rs, "peak_rss_kib")
            hp = med(groups.get((s, th, "haproxy"), []), "peak_rss_kib")
            ratio = "%.2fx" % (peak / hp) if hp and peak else "-"
            per = (held - base) / int(idle_conns)
            out.append("| %s | %s | %d | %.1f | %.1f | %.2f | %.1f | %s |" % (
                th, px, med(rs, "errors"), base / 1024, held / 1024, per, peak / 1024, ratio))
        out.append("")
        continue
    out += ["## " + TITLES.get(sc, sc), ""]
    out += ["| threads | proxy | requests/s | vs HAProxy | p50 ms | p99 ms | CPU s | CPU us/req | CPU vs HAProxy | user us/req | system us/req | peak RSS MiB | errors | steal % |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted(k for k in groups if k[0] == sc)
    keys.sort(key=lambda k: (int(k[1]), ORDER.get(k[2], 9)))
    for (s, th, px) in keys:
        rs = groups[(s, th, px)]
        rps, p50, p99, cpu, rss, err = (med(rs, k) for k in ("rps", "p50_ms", "p99_ms", "cpu_s", "peak_rss_kib", "errors"))
        user, system = (med(rs, k) if k in rs[0] else None for k in ("user_s", "sys_s"))
        per_req = lambda sec: "%.1f" % (sec / (rps * float(duration)) * 1e6) if sec is not None and rps and px != "direct" else "-"
        hp = med(groups.get((s, th, "haproxy"), []), "rps")
        ratio = "%.2fx" % (rps / hp) if hp and rps and px != "haproxy" else ("1.00x" if px == "haproxy" else "-")
        us = (cpu / (rps * float(duration)) * 1e6) if rps and cpu and px != "direct" else None
        hrs = groups.get((s, th, "haproxy"), [])
        h_cpu = med(hrs, "cpu_s") if hrs else None
        h_us = (h_cpu / (hp * float(duration)) * 1e6) if hp and h_cpu else None
        label = "backend direct" if px == "direct" else px
        steal = med(rs, "steal_pct") if "steal_pct" in rs[0] else None
        out.append("| %s | %s | %.0f | %s | %.2f | %.2f | %s | %s | %s | %s | %s | %s | %d | %s |" % (
            th, label, rps, ratio, p50, p99,
            "%.2f" % cpu if px != "direct" else "-",
            "%.1f" % us if us else "-",
            "%.2fx" % (us / h_us) if us and h_us else "-",
            per_req(user), per_req(system),
            "%.1f" % (rss / 1024) if px != "direct" else "-",
            err, "-" if steal is None else "%.1f" % steal))
    out.append("")
out += ["## How the two cores were shared", "",
        "CPU microseconds per request of the load generator, the backend and the proxy (medians), their sum, and",
        "how many of the machine's cores the three kept busy. The proxy's share is all any proxy can change.", "",
        "| scenario | threads | proxy | requests/s | generator us/req | backend us/req | proxy us/req | total us/req | cores busy |",
        "|---|---|---|---|---|---|---|---|---|"]
for (s, th, px) in sorted((k for k in groups if not k[0].endswith("idle10k")),
                          key=lambda k: (scenarios.index(k[0]), int(k[1]), ORDER.get(k[2], 9))):
    rs = groups[(s, th, px)]
    rps, cpu, client, backend = (med(rs, k) for k in ("rps", "cpu_s", "client_cpu_s", "backend_cpu_s"))
    if not rps or client is None or backend is None:
        continue
    per = lambda sec: sec / (rps * float(duration)) * 1e6
    proxy_cpu = 0.0 if px == "direct" else cpu
    total = client + backend + proxy_cpu
    out.append("| %s | %s | %s | %.0f | %.1f | %.1f | %s | %.1f | %.2f |" % (
        s, th, "backend direct" if px == "direct" else px, rps, per(client), per(backend),
        "-" if px == "direct" else "%.1f" % per(proxy_cpu), per(total), total / float(duration)))
out.append("")

# The machine drifts during a long run (a fifth slower from the first round to the last, seen here), and the
# medians above come from different rounds for each proxy: a ratio of medians can move by more than the
# difference it measures. Each round runs every proxy back to back, so the ratio within a round is paired.
def cpu_per_request(r):
    try:
        return float(r["cpu_s"]) / float(r["rps"])
    except (ValueError, ZeroDivisionError):
        return None


# On a shared host the hypervisor sometimes runs other guests while this one's CPUs want to run ("steal"). A
# round with steal stalls every connection whose peer's CPU was taken away, and TCP's loss probes (10 ms at
# least) turn those stalls into spurious retransmissions and a p99 of tens of milliseconds, worst for the
# proxy that leaves its CPU idle most (bench/README.md). The second table keeps only the rounds where both
# runs of a pair lost at most STEAL_MAX percent (compare.sh's setting, which also measures such runs again).
STEAL_MAX = float(os.environ.get("STEAL_MAX", "2"))


def quiet(r):
    try:
        return float(r.get("steal_pct", "-")) <= STEAL_MAX
    except ValueError:
        return False


def paired(rs, against, value, keep=lambda r: True):
    """Median over rounds of value(r) / value(the `against` row of the same round), for the rounds where
    `keep` holds for both rows."""
    by_run = {r["run"]: r for r in against}
    ratios = []
    for r in rs:
        o = by_run.get(r["run"])
        if not o or not (keep(r) and keep(o)):
            continue
        a, b = value(r), value(o)
        if a and b:
            ratios.append(a / b)
    if not ratios:
        return "-"
    return "%.2fx (%.2f-%.2f, %d)" % (statistics.median(ratios), min(ratios), max(ratios), len(ratios))


def paired_rows(keep):
    rows_ = []
    for (s, th, px) in sorted((k for k in groups if not k[0].endswith("idle10k") and k[2] not in ("direct", "haproxy")),
                              key=lambda k: (scenarios.index(k[0]), int(k[1]), ORDER.get(k[2], 9))):
        rs = groups[(s, th, px)]
        hrs = groups.get((s, th, "haproxy"), [])
        srs = groups.get((s, th, "shoal"), []) if px.startswith("shoal-") else []
        rows_.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            s, th, px, paired(rs, hrs, cpu_per_request, keep), paired(rs, hrs, lambda r: float(r["rps"]), keep),
            paired(rs, hrs, lambda r: float(r["p99_ms"]), keep),
            paired(rs, srs, cpu_per_request, keep) if srs else "-"))
    return rows_


HEADER = ["| scenario | threads | proxy | CPU us/req vs HAProxy | requests/s vs HAProxy | p99 vs HAProxy | CPU us/req vs shoal |",
          "|---|---|---|---|---|---|---|"]
all_rounds = paired_rows(lambda r: True)
if all_rounds:
    out += ["## Paired ratios", "",
            "Medians (range, rounds) of the ratio within each round, where every proxy ran back to back: robust",
            "to the machine's drift over a run, which the ratios of medians above are not.", ""]
    out += HEADER + all_rounds + [""]
    if any("steal_pct" in r for r in rows):
        out += ["### Rounds without steal (at most %.0f%% of the CPU time taken by the host in both runs of a pair)" % STEAL_MAX, ""]
        out += HEADER + paired_rows(quiet) + [""]
print("\n".join(out))
