#!/usr/bin/env python3
"""Node churn, measured: how fast a joining node gets traffic, a dead one leaves rotation, and a node cut off by
a partition gets traffic again once the link heals.

shoal: a proxy, a stable node, then N trials of: start a webapp and its agent, time until a request through the
proxy is answered by it (join-to-traffic); SIGKILL agent and webapp, time until the proxy logs the member down
(kill-to-removal). Partitions: a proxy and a health-checked node (`--check-path /`, as in compose) on hosts of
their own (network namespaces on a bridge); N trials of: cut the node's link, wait until the proxy declares it
down, heal the link, time until a request through the proxy is answered by the node (heal-to-traffic).
HAProxy: the same webapps as static servers with `check inter 2s fall 3 rise 2`; SIGKILL the webapp, time until
HAProxy logs the server DOWN, then restart it and wait until it is UP again.

Usage: sudo bench/churn.py [TRIALS] (default 20). Needs target/release/shoal, haproxy, iproute2 and root (for
the namespaces). Prints a Markdown table.
"""
import ctypes
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import BOUND, Proc, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOAL = os.path.join(ROOT, "target", "release", "shoal")


def get(port):
    return get_at("127.0.0.1", port)


def webapp(port, name):
    app = Proc([SHOAL, "webapp", "--listen", "127.0.0.1:%d" % port, "--name", name])
    app.wait_line(lambda l: "webapp listening" in l)
    return app


def shoal_trials(n):
    port, gossip = free_port(), free_port(socket.SOCK_DGRAM)
    seed = "127.0.0.1:%d" % gossip
    proxy = Proc([SHOAL, "proxy", "--listen", "127.0.0.1:%d" % port, "--gossip", seed, "--access-log", "off"])
    proxy.wait_line(lambda l: "listening on" in l)
    stable_port = free_port()
    stable = webapp(stable_port, "stable")
    stable_agent = Proc([SHOAL, "agent", "--service", "127.0.0.1:%d" % stable_port, "--gossip", "127.0.0.1:0",
                         "--join", seed, "--name", "stable"])
    joins, removals = [], []
    try:
        for i in range(n):
            name = "t%d" % i
            app_port = free_port()
            app = webapp(app_port, name)
            t0 = time.monotonic()
            agent = Proc([SHOAL, "agent", "--service", "127.0.0.1:%d" % app_port, "--gossip", "127.0.0.1:0",
                          "--join", seed, "--name", name])
            while '"host":"%s"' % name not in get(port):
                if time.monotonic() - t0 > BOUND:
                    raise TimeoutError("node %s never routed" % name)
            joins.append(time.monotonic() - t0)
            t0 = time.monotonic()
            agent.kill()
            app.kill()
            t1 = proxy.wait_line(lambda l: ("member down: %s " % name) in l, after=t0)
            removals.append(t1 - t0)
            print("shoal trial %d: join %.1f ms, removal %.0f ms" % (i, joins[-1] * 1000, removals[-1] * 1000),
                  file=sys.stderr)
    finally:
        stable_agent.term()
        stable.term()
        proxy.term()
    return joins, removals


def haproxy_trials(n):
    port, victim_port, stable_port = free_port(), free_port(), free_port()
    cfg = tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False)
    cfg.write("""global
  maxconn 1000
defaults
  mode http
  timeout connect 5s
  timeout client 50s
  timeout server 50s
  option httpchk HEAD /
frontend fe
  bind 127.0.0.1:%d
  default_backend nodes
backend nodes
  server victim 127.0.0.1:%d check inter 2s fall 3 rise 2
  server stable 127.0.0.1:%d check inter 2s fall 3 rise 2
""" % (port, victim_port, stable_port))
    cfg.close()
    stable = webapp(stable_port, "stable")
    victim = webapp(victim_port, "victim")
    haproxy = Proc(["haproxy", "-db", "-f", cfg.name])
    removals = []
    try:
        deadline = time.monotonic() + BOUND
        while '"host":"victim"' not in get(port):
            if time.monotonic() > deadline:
                raise TimeoutError("haproxy never routed to the victim")
        for i in range(n):
            t0 = time.monotonic()
            victim.kill()
            t1 = haproxy.wait_line(lambda l: "nodes/victim is DOWN" in l, after=t0)
            removals.append(t1 - t0)
            print("haproxy trial %d: removal %.0f ms" % (i, removals[-1] * 1000), file=sys.stderr)
            up_from = time.monotonic()
            victim = webapp(victim_port, "victim")
            haproxy.wait_line(lambda l: "nodes/victim is UP" in l, after=up_from)
    finally:
        victim.term()
        stable.term()
        haproxy.term()
        os.unlink(cfg.name)
    return removals


LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
CLONE_NEWNET = 0x40000000


def ip(*args):
    subprocess.run(["ip", *args], check=True)


def in_netns(ns, fn):
    """Runs fn() on a thread inside network namespace `ns` (setns moves only the calling thread)."""
    result = {}

    def run():
        with open("/var/run/netns/%s" % ns) as f:
            if LIBC.setns(f.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        result["value"] = fn()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return result.get("value")


def get_at(addr, port):
    try:
        with socket.create_connection((addr, port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data.decode("latin-1")
    except OSError:
        return ""


def heal_trials(n):
    """A proxy on 10.78.0.1 and a node on 10.78.0.2, one bridge; cut, wait for the removal, heal, time."""
    tag = "chb%d" % (os.getpid() % 100000)
    sw, hp, hn = tag + "sw", tag + "p", tag + "n"
    key = subprocess.run([SHOAL, "keygen"], capture_output=True, text=True, check=True).stdout.strip()
    env = dict(os.environ, SHOAL_CLUSTER_KEY=key)
    procs, heals = [], []
    try:
        for ns in (sw, hp, hn):
            ip("netns", "add", ns)
        ip("-n", sw, "link", "add", "br0", "type", "bridge")
        ip("-n", sw, "link", "set", "br0", "up")
        for ns, port, addr in ((hp, "p1", "10.78.0.1/24"), (hn, "p2", "10.78.0.2/24")):
            ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", sw)
            ip("-n", sw, "link", "set", port, "master", "br0")
            ip("-n", sw, "link", "set", port, "up")
            ip("-n", ns, "addr", "add", addr, "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        ns_exec = lambda ns, argv: Proc(["ip", "netns", "exec", ns, *argv], env=env)
        proxy = ns_exec(hp, [SHOAL, "proxy", "--listen", "10.78.0.1:80", "--gossip", "10.78.0.1:7946",
                             "--admin", "10.78.0.1:1936", "--access-log", "off"])
        procs.append(proxy)
        proxy.wait_line(lambda l: "listening on" in l)
        procs.append(ns_exec(hn, [SHOAL, "agent", "--service", "10.78.0.2:3000", "--gossip", "10.78.0.2:7946",
                                  "--join", "10.78.0.1:7946", "--name", "far", "--check-path", "/", "--",
                                  SHOAL, "webapp", "--listen", "10.78.0.2:3000", "--name", "far"]))

        def wait_far():
            deadline = time.monotonic() + BOUND
            while '"host":"far"' not in get_at("10.78.0.1", 80):
                if time.monotonic() > deadline:
                    raise TimeoutError("the node was never routed")
            return time.monotonic()

        in_netns(hp, wait_far)
        for i in range(n):
            t0 = time.monotonic()
            ip("-n", sw, "link", "set", "p2", "down")
            proxy.wait_line(lambda l: "member down: far " in l, after=t0)
            healed = time.monotonic()
            ip("-n", sw, "link", "set", "p2", "up")
            heals.append(in_netns(hp, wait_far) - healed)
            print("heal trial %d: traffic %.0f ms after the heal" % (i, heals[-1] * 1000), file=sys.stderr)
    finally:
        for p in procs:
            p.term()
        for ns in (hp, hn, sw):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
    return heals


def ms(values):
    return "%.0f ms" % (statistics.median(values) * 1000), "%.0f ms" % (max(values) * 1000)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    joins, removals = shoal_trials(n)
    heals = heal_trials(n)
    h_removals = haproxy_trials(n)
    rows = [
        ("shoal: join to first routed request", joins, "agent started, proxy already running"),
        ("shoal: SIGKILL to removal", removals, "probe 400ms / RTT 120ms / suspect 800ms (defaults)"),
        ("shoal: partition healed to first routed request", heals,
         "node health-checked (`--check-path /`), cut until declared down, then healed"),
        ("HAProxy 2.6: SIGKILL to DOWN", h_removals, "check inter 2s fall 3 rise 2"),
    ]
    print("| measurement (%d trials) | median | max | settings |" % n)
    print("|---|---|---|---|")
    for name, values, note in rows:
        med, mx = ms(values)
        print("| %s | %s | %s | %s |" % (name, med, mx, note))
    print("\nHAProxy has no join: a new server needs a config rewrite and a reload (the lab's Serf handlers).")


main()
