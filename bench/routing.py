#!/usr/bin/env python3
"""Routing, measured: p99 through each balancing algorithm when one of three nodes is slowed, against HAProxy's
leastconn and random on the same nodes and load; and how long a capacity an agent check reports takes to reach
the proxy.

Slowed node: three `shoal webapp` nodes as static servers, one told `POST /delay {"delay": D}`; for each proxy
configuration, `oha -c16 -z$DURATION` through it; median of RUNS runs of p50, p99 and requests/s,
p99.9 (where a slow node's share under 1 % shows), and the share of requests the slow node answered (from the proxy's CSV, or HAProxy's).

Agent check: a proxy and two agents, one with `--agent-check "cat FILE" --agent-inter 100ms`; N trials of
writing `50%` or `100%` to FILE, timing (1) the agent's log line saying it read the new answer to the proxy's
log line publishing the new set (gossip and publication), and (2) the write to the new weight in the proxy's CSV.

Usage: bench/routing.py [--delay MS] [--duration S] [--runs N] [--trials N]. Needs target/release/shoal (built
if missing), oha (cargo install oha) and haproxy (Debian packages). Prints Markdown tables; bench/README.md says how to read them.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchlib import BOUND, Proc, free_port, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOAL = os.path.join(ROOT, "target", "release", "shoal")


def webapp(name):
    port = free_port()
    app = Proc([SHOAL, "webapp", "--listen", "127.0.0.1:%d" % port, "--name", name])
    wait_port(port)
    return app, port


def csv_rows(url):
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    lines = text.splitlines()
    header = lines[0].lstrip("# ").split(",")
    return [dict(zip(header, l.split(","))) for l in lines[1:]]


def load(port, duration):
    """oha, 16 connections, keep-alive: (p50 ms, p99 ms, p99.9 ms, requests/s). oha times each request from its own send;
    wrk's percentiles came out near 50 ms at p99 here with 0.2 % of requests on the slow node, so it is not used."""
    out = subprocess.run(["oha", "-c16", "-z%ds" % duration, "--no-tui", "--output-format", "json",
                          "http://127.0.0.1:%d/" % port], capture_output=True, text=True, timeout=duration + 30).stdout
    report = json.loads(out)
    pct = report["latencyPercentiles"]
    return pct["p50"] * 1e3, pct["p99"] * 1e3, pct["p99.9"] * 1e3, report["summary"]["requestsPerSec"]


def shoal_proxy(args, backends):
    port, admin = free_port(), free_port()
    argv = [SHOAL, "proxy", "--listen", "127.0.0.1:%d" % port, "--admin", "127.0.0.1:%d" % admin, "--gossip",
            "127.0.0.1:0", "--runtime-api", "127.0.0.1:0", "--access-log", "off", "--threads", "1"] + args
    for name, bport in backends:
        argv += ["--backend", "%s=127.0.0.1:%d" % (name, bport)]
    proc = Proc(argv)
    proc.wait_line(lambda l: "listening on" in l)
    return proc, port, "http://127.0.0.1:%d/;csv" % admin


def haproxy(algorithm, backends):
    port, stats = free_port(), free_port()
    servers = "\n".join("  server %s 127.0.0.1:%d" % (n, p) for n, p in backends)
    cfg = tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False)
    cfg.write("""global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 50s
  timeout server 50s
frontend fe
  bind 127.0.0.1:%d
  default_backend nodes
listen stats
  bind 127.0.0.1:%d
  stats enable
  stats uri /
backend nodes
  balance %s
%s
""" % (port, stats, algorithm, servers))
    cfg.close()
    proc = Proc(["haproxy", "-db", "-f", cfg.name])
    wait_port(port)
    return proc, port, "http://127.0.0.1:%d/;csv" % stats


def slow_share(csv_url):
    rows = [r for r in csv_rows(csv_url) if r["svname"] in ("fast1", "fast2", "slow")]
    total = sum(int(r["stot"]) for r in rows)
    slow = sum(int(r["stot"]) for r in rows if r["svname"] == "slow")
    return 100.0 * slow / max(total, 1)


def slowed_node(delay, duration, runs):
    apps = [webapp(n) for n in ("fast1", "fast2", "slow")]
    backends = [(n, p) for n, (_, p) in zip(("fast1", "fast2", "slow"), apps)]
    body = b'{"delay": %d}' % delay
    req = urllib.request.Request("http://127.0.0.1:%d/delay" % backends[2][1], data=body, method="POST")
    urllib.request.urlopen(req, timeout=5).read()
    configs = [
        ("shoal roundrobin", lambda: shoal_proxy(["--balance", "roundrobin"], backends)),
        ("shoal leastconn", lambda: shoal_proxy(["--balance", "leastconn"], backends)),
        ("shoal leastconn --latency-aware", lambda: shoal_proxy(["--balance", "leastconn", "--latency-aware", "on"],
                                                                 backends)),
        ("shoal random", lambda: shoal_proxy(["--balance", "random"], backends)),
        ("shoal random --latency-aware", lambda: shoal_proxy(["--balance", "random", "--latency-aware", "on"],
                                                              backends)),
        ("HAProxy leastconn", lambda: haproxy("leastconn", backends)),
        ("HAProxy random", lambda: haproxy("random", backends)),
    ]
    results = {name: [] for name, _ in configs}
    try:
        for run in range(runs):
            for name, start in configs:
                proc, port, csv_url = start()
                try:
                    p50, p99, p999, rate = load(port, duration)
                    results[name].append((p50, p99, p999, rate, slow_share(csv_url)))
                finally:
                    proc.stop()
                print("run %d %s: p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, %.0f req/s, slow node %.1f%%"
                      % (run + 1, name, *results[name][-1]), file=sys.stderr)
    finally:
        for app, _ in apps:
            app.stop()
    print("One of three nodes answers every request %d ms late; `oha -c16 -z%ds`, median of %d runs.\n"
          % (delay, duration, runs))
    print("| proxy, algorithm | requests/s | p50 | p99 | p99.9 | share of requests on the slow node |")
    print("|---|---|---|---|---|---|")
    for name, _ in configs:
        med = lambda i: statistics.median(r[i] for r in results[name])
        print("| %s | %.0f | %.2f ms | %.2f ms | %.2f ms | %.1f %% |" % (name, med(3), med(0), med(1), med(2), med(4)))


def agent_check(trials):
    port, gossip, admin = free_port(), free_port(socket.SOCK_DGRAM), free_port()
    seed = "127.0.0.1:%d" % gossip
    proxy = Proc([SHOAL, "proxy", "--listen", "127.0.0.1:%d" % port, "--gossip", seed, "--admin",
                  "127.0.0.1:%d" % admin, "--runtime-api", "127.0.0.1:0", "--access-log", "off"])
    proxy.wait_line(lambda l: "listening on" in l)
    report = tempfile.NamedTemporaryFile("w", suffix=".agent", delete=False)
    report.write("100%\n")
    report.close()
    apps = [webapp("a"), webapp("b")]
    agents = [
        Proc([SHOAL, "agent", "--service", "127.0.0.1:%d" % apps[0][1], "--gossip", "127.0.0.1:0", "--join", seed,
              "--name", "a", "--agent-check", "cat %s" % report.name, "--agent-inter", "100ms"]),
        Proc([SHOAL, "agent", "--service", "127.0.0.1:%d" % apps[1][1], "--gossip", "127.0.0.1:0", "--join", seed,
              "--name", "b"]),
    ]
    csv_url = "http://127.0.0.1:%d/;csv" % admin

    def weight():
        return next((int(r["weight"]) for r in csv_rows(csv_url) if r["svname"] == "a" and r["status"] == "UP"), None)

    deadline = time.monotonic() + BOUND
    while weight() != 100:
        if time.monotonic() > deadline:
            raise TimeoutError("node a never UP at weight 100")
    spread, end_to_end = [], []
    try:
        for i in range(trials):
            answer, want = ("50%", 50) if i % 2 == 0 else ("100%", 100)
            with open(report.name + ".tmp", "w") as f:
                f.write(answer + "\n")
            t0 = time.monotonic()
            os.rename(report.name + ".tmp", report.name)
            while weight() != want:
                if time.monotonic() - t0 > BOUND:
                    raise TimeoutError("weight %d never applied" % want)
            end_to_end.append(time.monotonic() - t0)
            read = agents[0].wait_line(lambda l: "agent check: " in l and ("Some(%d)" % want) in l, after=t0)
            published = proxy.wait_line(lambda l: "backend set now has" in l, after=read)
            spread.append(published - read)
            print("trial %d: %s read to published %.1f ms, written to applied %.0f ms"
                  % (i, answer, spread[-1] * 1000, end_to_end[-1] * 1000), file=sys.stderr)
    finally:
        for p in agents + [a for a, _ in apps] + [proxy]:
            p.stop()
        os.unlink(report.name)
    ms = lambda v: "%.1f ms" % (v * 1000)
    print("\nAgent check (`--agent-inter 100ms`), %d trials alternating `50%%` and `100%%`:\n" % trials)
    print("| measurement | median | max |")
    print("|---|---|---|")
    print("| agent read the answer -> proxy published the new weight (gossip) | %s | %s |"
          % (ms(statistics.median(spread)), ms(max(spread))))
    print("| answer written -> new weight in the proxy's CSV (includes up to 100 ms to the next check) | %s | %s |"
          % (ms(statistics.median(end_to_end)), ms(max(end_to_end))))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay", type=int, default=50)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    if not os.path.exists(SHOAL):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    slowed_node(args.delay, args.duration, args.runs)
    agent_check(args.trials)


if __name__ == "__main__":
    main()
