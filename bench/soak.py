#!/usr/bin/env python3
"""Soak: shoal under mixed load for a long while, with node churn and hostile clients, sampling its RSS,
descriptors and the normal client's p99. Not in CI (30 minutes by default).

- A proxy (release build, 2 threads) and three nodes, each `shoal agent` supervising a `shoal webapp`.
- Normal load: `oha -c16 -q1000 -z10s` windows back to back (a rate, not flat out: the two cores are shared).
- Churn: every 30 s one node (agent and app) is SIGKILLed and started again under the same name.
- Hostile clients, kept at a steady count: 500 slowloris connections (a header line every 5 s; the proxy's
  head timeout closes them, and they come back) and 200 slow POSTs (100 bytes every 2 s of a 60 KB body).
- Every 10 s: RSS (VmRSS), open descriptors, and the last window's p99 and failures.

Output: bench/out/soak.csv, bench/soak.png (needs matplotlib: Debian's python3-matplotlib, so run it with
/usr/bin/python3), and a summary on stdout: after the warm-up, each curve's spread ((max - min) / min).

Usage: /usr/bin/python3 bench/soak.py [--minutes 30] [--warmup 5]
"""
import argparse
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from benchlib import Proc, free_port, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOAL = os.path.join(ROOT, "target", "release", "shoal")
OUT = os.path.join(ROOT, "bench", "out")
# Under the webapp's 64 KiB limit, so a slow POST stays open; --post-length above it makes them early 413s.
POST_LENGTH = 60000


class Node:
    """An agent supervising a webapp, in a process group of its own so both die together."""

    def __init__(self, name, seed):
        self.name, self.seed, self.port = name, seed, free_port()
        self.start()

    def start(self):
        self.p = subprocess.Popen(
            [SHOAL, "agent", "--service", "127.0.0.1:%d" % self.port, "--gossip", "127.0.0.1:0", "--join",
             self.seed, "--name", self.name, "--check-path", "/", "--check-interval", "1s", "--", SHOAL, "webapp",
             "--listen", "127.0.0.1:%d" % self.port, "--name", self.name],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def kill(self):
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait()


class Hostile(threading.Thread):
    """Slowloris and slow-POST connections, replaced as the proxy closes them, until `stop` is set."""

    def __init__(self, port, loris, posts, stop):
        super().__init__(daemon=True)
        self.port, self.want, self.stop = port, {"loris": loris, "post": posts}, stop
        self.sel = selectors.DefaultSelector()
        self.conns = {}  # socket -> (kind, next send time)

    def open(self, kind):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", self.port))
        except BlockingIOError:
            pass
        first = (b"GET / HTTP/1.1\r\nHost: soak\r\n" if kind == "loris" else
                 (b"POST /upload HTTP/1.1\r\nHost: soak\r\nContent-Length: %d\r\n\r\n" % POST_LENGTH))
        self.conns[s] = [kind, time.monotonic(), first]
        self.sel.register(s, selectors.EVENT_READ)

    def close(self, s):
        self.sel.unregister(s)
        del self.conns[s]
        s.close()

    def run(self):
        while not self.stop.is_set():
            for kind, n in self.want.items():
                for _ in range(n - sum(1 for c in self.conns.values() if c[0] == kind)):
                    self.open(kind)
            now = time.monotonic()
            for s, c in list(self.conns.items()):
                if now >= c[1]:
                    data = c[2] or (b"X-Soak: 1\r\n" if c[0] == "loris" else b"x" * 100)
                    try:
                        s.send(data)
                        c[2], c[1] = None, now + (5 if c[0] == "loris" else 2)
                    except BlockingIOError:
                        pass
                    except OSError:
                        self.close(s)
            for key, _ in self.sel.select(0.2):
                try:
                    if not key.fileobj.recv(4096):
                        self.close(key.fileobj)
                except BlockingIOError:
                    pass
                except OSError:
                    self.close(key.fileobj)
        for s in list(self.conns):
            self.close(s)


def load_windows(port, stop, windows):
    while not stop.is_set():
        out = subprocess.run(["oha", "-c16", "-q1000", "-z10s", "--no-tui", "--output-format", "json",
                              "http://127.0.0.1:%d/" % port], capture_output=True, text=True, timeout=60).stdout
        try:
            r = json.loads(out)
        except ValueError:
            continue
        ok = r["statusCodeDistribution"].get("200", 0)
        # oha cuts the requests in flight when its window ends: not failures of the proxy.
        errors = {k: v for k, v in r["errorDistribution"].items() if k != "aborted due to deadline"}
        total = sum(r["statusCodeDistribution"].values()) + sum(errors.values())
        windows.append((time.monotonic(), (r["latencyPercentiles"]["p99"] or 0) * 1e3, ok, total - ok))
        if total - ok:
            print("failures: %s %s" % ({k: v for k, v in r["statusCodeDistribution"].items() if k != "200"},
                                       errors), file=sys.stderr, flush=True)


def csv(admin):
    return urllib.request.urlopen("http://127.0.0.1:%d/;csv" % admin, timeout=5).read().decode().splitlines()


def sample(pid):
    with open("/proc/%d/status" % pid) as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    return rss, len(os.listdir("/proc/%d/fd" % pid))


def spread(values):
    return 100.0 * (max(values) - min(values)) / max(min(values), 1)


def drift(values):
    """The mean of the last third against the mean of the first third, in percent: a leak shows here, while
    churn and hostile clients coming and going only widen the range."""
    third = max(len(values) // 3, 1)
    first, last = sum(values[:third]) / third, sum(values[-third:]) / third
    return 100.0 * (last - first) / max(first, 1e-9)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--no-churn", action="store_true")
    ap.add_argument("--loris", type=int, default=500)
    ap.add_argument("--posts", type=int, default=200)
    ap.add_argument("--post-length", type=int, default=60000)
    args = ap.parse_args()
    global POST_LENGTH
    POST_LENGTH = args.post_length
    if not os.path.exists(SHOAL):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    os.makedirs(OUT, exist_ok=True)
    port, admin, gossip = free_port(), free_port(), free_port(socket.SOCK_DGRAM)
    seed = "127.0.0.1:%d" % gossip
    proxy = Proc([SHOAL, "proxy", "--listen", "127.0.0.1:%d" % port, "--admin", "127.0.0.1:%d" % admin,
                  "--gossip", seed, "--runtime-api", "127.0.0.1:0", "--access-log", "off", "--threads", "2"])
    wait_port(port)
    nodes = [Node("n%d" % i, seed) for i in range(3)]
    deadline = time.monotonic() + 30
    while sum(l.split(",")[17] == "UP" for l in csv(admin)[1:] if l.split(",")[1].startswith("n")) < 3:
        if time.monotonic() > deadline:
            raise TimeoutError("the three nodes never came UP")
        time.sleep(0.2)
    stop = threading.Event()
    windows = []
    threading.Thread(target=load_windows, args=(port, stop, windows), daemon=True).start()
    hostile = Hostile(port, args.loris, args.posts, stop)
    hostile.start()
    rows = []
    start = time.monotonic()
    end = start + args.minutes * 60
    next_churn = start + 30
    victim = 0
    kills = 0
    try:
        while time.monotonic() < end:
            time.sleep(10)
            now = time.monotonic()
            if now >= next_churn and not args.no_churn:
                nodes[victim].kill()
                nodes[victim].start()
                victim = (victim + 1) % len(nodes)
                kills += 1
                next_churn = now + 30
            rss, fds = sample(proxy.p.pid)
            p99, ok, failed = windows[-1][1:] if windows else (0.0, 0, 0)
            rows.append(((now - start) / 60, rss, fds, p99, ok, failed))
            print("%.1f min: RSS %.1f MiB, %d fds, p99 %.2f ms, %d ok, %d failed"
                  % (rows[-1][0], rss / 1024, fds, p99, ok, failed), file=sys.stderr, flush=True)
    finally:
        stop.set()
        hostile.join(15)
        time.sleep(11)  # the last oha window ends before the proxy does
        for n in nodes:
            n.kill()
        proxy.stop()
    with open(os.path.join(OUT, "soak-proxy.log"), "w") as f:
        f.writelines("%.1f %s\n" % ((t - start) / 60, line) for t, line in proxy.lines)
    with open(os.path.join(OUT, "soak.csv"), "w") as f:
        f.write("minutes,rss_kib,fds,p99_ms,ok,failed\n")
        for r in rows:
            f.write("%.2f,%d,%d,%.3f,%d,%d\n" % r)
    steady = [r for r in rows if r[0] >= args.warmup] or rows
    total_ok = sum(w[2] for w in windows)
    total_failed = sum(w[3] for w in windows)
    print("Soak: %g minutes, %d samples after a %g-minute warm-up; %d node kills; normal load %d requests, "
          "%d failed" % (args.minutes, len(steady), args.warmup, kills, total_ok, total_failed))
    print("\n| after warm-up | min | max | range | drift: last third vs first third (means) |\n|---|---|---|---|---|")
    rss = [r[1] / 1024 for r in steady]
    fds = [r[2] for r in steady]
    p99 = [r[3] for r in steady]
    print("| RSS (MiB) | %.1f | %.1f | %.1f %% | %+.1f %% |" % (min(rss), max(rss), spread(rss), drift(rss)))
    print("| open descriptors | %d | %d | %.1f %% | %+.1f %% |" % (min(fds), max(fds), spread(fds), drift(fds)))
    print("| p99 of the normal client (ms, per 10 s window) | %.2f | %.2f | | %+.1f %% |"
          % (min(p99), max(p99), drift(p99)))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no matplotlib: bench/soak.png not drawn)", file=sys.stderr)
        return
    minutes = [r[0] for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for ax, values, label in zip(axes, ([r[1] / 1024 for r in rows], [r[2] for r in rows], [r[3] for r in rows]),
                                 ("RSS (MiB)", "open descriptors", "p99 (ms)")):
        ax.plot(minutes, values)
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.axvline(args.warmup, color="grey", linestyle=":")
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("minutes")
    axes[0].set_title("shoal soak: oha -q1000, a node killed every 30 s, 500 slowloris + 200 slow POST clients")
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, "bench", "soak.png"), dpi=80)


if __name__ == "__main__":
    main()
