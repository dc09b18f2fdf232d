#!/usr/bin/env python3
"""Hostile clients against shoal and HAProxy in turn: Debian's slowhttptest holds 2,000 slowloris
connections (headers a line at a time) and 2,000 slow-body connections (R-U-Dead-Yet, 60,000-byte bodies:
under the webapp's 64 KiB limit, so each is held to the end) open, while a normal
client (`oha -c8 -q200`, a new request every 40 ms per connection) keeps asking. Reported per proxy: the
normal client's success rate, p50, p99 and max, and the proxy's RSS: peak (VmHWM) and at the end of the
attack, with the number of connections it held.

Both proxies: the same `shoal webapp` backend, HTTP mode, keep-alive, 1 thread, no access log, request-head
timeout 10 s and client/server timeouts 50 s (HAProxy's `timeout http-request 10s`, `timeout client 50s`,
`timeout server 50s`; shoal's defaults).

Usage: python3 bench/hostile.py [--duration 40] [--conns 2000]. Needs slowhttptest, haproxy (Debian
packages), oha (cargo install oha) and target/release/shoal.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchlib import Proc, free_port, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOAL = os.path.join(ROOT, "target", "release", "shoal")


def status(pid, field):
    with open("/proc/%d/status" % pid) as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":"))


def start_shoal(port, backend):
    p = Proc([SHOAL, "proxy", "--listen", "127.0.0.1:%d" % port, "--gossip", "127.0.0.1:0", "--admin", "off",
              "--runtime-api", "off", "--access-log", "off", "--threads", "1", "--backend",
              "127.0.0.1:%d" % backend])
    wait_port(port)
    return p


def start_haproxy(port, backend):
    cfg = tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False)
    cfg.write("""global
  nbthread 1
  maxconn 9000
defaults
  mode http
  option http-keep-alive
  timeout http-request 10s
  timeout connect 5s
  timeout client 50s
  timeout server 50s
frontend fe
  bind 127.0.0.1:%d
  default_backend be
backend be
  server s1 127.0.0.1:%d
""" % (port, backend))
    cfg.close()
    p = Proc(["haproxy", "-db", "-f", cfg.name])
    wait_port(port)
    return p


def attack(name, start, backend, duration, conns):
    port = free_port()
    proxy = start(port, backend)
    pid = proxy.p.pid
    base = status(pid, "VmRSS")
    url = "http://127.0.0.1:%d/" % port
    common = ["-c", str(conns), "-r", "500", "-i", "10", "-l", str(duration), "-x", "24", "-p", "3"]
    slow = [subprocess.Popen(["slowhttptest", "-H", "-u", url] + common, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL),
            subprocess.Popen(["slowhttptest", "-B", "-s", "60000", "-u", url + "upload"] + common,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    time.sleep(min(10, duration / 3))  # the attack ramps up at 500 connections a second
    held = len(os.listdir("/proc/%d/fd" % pid))
    out = subprocess.run(["oha", "-c8", "-q200", "-z%ds" % max(duration - 15, 5), "--no-tui", "--output-format",
                          "json", url], capture_output=True, text=True, timeout=duration + 30).stdout
    rss_end = status(pid, "VmRSS")
    held = max(held, len(os.listdir("/proc/%d/fd" % pid)))
    for s in slow:
        s.wait(timeout=duration + 30)
    peak = status(pid, "VmHWM")
    proxy.stop()
    r = json.loads(out)
    # Requests oha cuts when its window ends are the load generator's, not failures.
    errors = {k: v for k, v in r["errorDistribution"].items() if k != "aborted due to deadline"}
    total = sum(r["statusCodeDistribution"].values()) + sum(errors.values())
    ok = r["statusCodeDistribution"].get("200", 0)
    lat = r["latencyPercentiles"]
    row = (name, ok, total, lat["p50"] * 1e3, lat["p99"] * 1e3, r["summary"]["slowest"] * 1e3, base / 1024,
           rss_end / 1024, peak / 1024, held)
    print("%s: %d/%d ok, p99 %.2f ms, RSS %.1f -> %.1f MiB (peak %.1f), %d descriptors" %
          (name, ok, total, row[4], row[6], row[7], row[8], held), file=sys.stderr)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=40)
    ap.add_argument("--conns", type=int, default=2000)
    args = ap.parse_args()
    backend = free_port()
    app = Proc([SHOAL, "webapp", "--listen", "127.0.0.1:%d" % backend, "--name", "app"])
    wait_port(backend)
    try:
        rows = [attack(n, s, backend, args.duration, args.conns)
                for n, s in (("shoal", start_shoal), ("HAProxy 2.6", start_haproxy))]
    finally:
        app.stop()
    print("slowhttptest: %d slowloris + %d slow-body connections for %d s; normal client `oha -c8 -q200`.\n"
          % (args.conns, args.conns, args.duration))
    print("| proxy | normal requests ok | p50 | p99 | max | RSS at start | RSS under attack | peak RSS | "
          "descriptors held |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| %s | %d / %d | %.2f ms | %.2f ms | %.1f ms | %.1f MiB | %.1f MiB | %.1f MiB | %d |" % r)
    s, h = rows
    print("\nshoal's peak RSS is %.2fx HAProxy's; above their start, %.2fx." %
          (s[8] / h[8], (s[8] - s[6]) / max(h[8] - h[6], 0.1)))


if __name__ == "__main__":
    main()
