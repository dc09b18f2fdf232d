#!/usr/bin/env python3
"""Sorts a proxy's CPU samples (from `perf script -F ip,sym`) by what they were doing, kernel included.

Usage: kernel_profile.py LABEL [US_PER_REQUEST] < perf-script-output

A sample's call chain is read leaf first; the first rule that matches names its kind. The kinds are what a
proxy's kernel time is made of on loopback, where a send also runs the receiver's side of TCP (the softirq
that delivers the segment) and so pays for waking the receiving process. A second table sorts the same
samples by the system call they were made in (the function do_syscall_64 called), in microseconds per request
when US_PER_REQUEST (the CPU per request while sampled) is given.
"""

import collections
import sys


def timers(chain):
    """Pacing (BBR without the fq qdisc) arms a timer in tcp_write_xmit; the sample lands where interrupts come
    back on, or in the softirqs that run as the timer's interrupt returns."""
    names = [f[2:] for f in chain]
    if names[0] == "_raw_spin_unlock_irqrestore" and len(names) > 1 and names[1] == "tcp_write_xmit":
        return True
    return any(s in n for n in names for s in ("tcp_pace_kick", "tcp_tsq_handler", "apic_timer_interrupt", "hrtimer_start"))


# (kind, test on the chain of symbols, leaf first). Order matters: the first match wins.
RULES = [
    ("user space", lambda c: not c or not c[0].startswith("k:")),
    ("waiting for a lock (paravirt spinlock slow path)", lambda c: any("spin_lock_slowpath" in f for f in c)),
    (
        "waking another process (socket wake-ups, epoll callbacks)",
        lambda c: any(
            s in f for f in c[:8] for s in ("sock_def_readable", "sock_def_write_space", "ep_poll_callback", "try_to_wake_up")
        ),
    ),
    ("timers: TCP pacing and the softirqs run as a timer interrupt ends", timers),
    ("copying bytes to or from user space", lambda c: any(s in c[0] for s in ("copy_to_iter", "copy_from_iter", "copy_user", "memcpy"))),
    (
        "sleeping and being woken (epoll_wait, the scheduler)",
        lambda c: any(s in f for f in c for s in ("epoll_wait", "schedule", "finish_task_switch", "safe_halt")),
    ),
    ("netfilter (conntrack, iptables)", lambda c: any(s in f for f in c[:3] for s in ("nf_", "ipt_", "conntrack", "iptable"))),
    ("other kernel (TCP/IP, system call entry)", lambda c: True),
]


def samples(lines):
    chain = []
    for line in lines:
        line = line.strip()
        if not line:
            if chain:
                yield chain
            chain = []
            continue
        addr, _, sym = line.partition(" ")
        kernel = addr.startswith("ffffffff")
        chain.append(("k:" if kernel else "u:") + (sym or "?").split("+")[0])
    if chain:
        yield chain


def system_call(chain):
    """The system call a sample was taken in, from the function the syscall entry called (`__x64_sys_sendto`,
    `__sys_sendmsg`: `sendto`, `sendmsg`), or where else it ran."""
    names = [f[2:] for f in chain]
    if "do_syscall_64" in names:
        i = names.index("do_syscall_64")
        if i == 0:
            return "system-call entry and exit"
        name = names[i - 1]
        for prefix in ("__x64_sys_", "__do_sys_", "__sys_", "do_"):
            if name.startswith(prefix):
                return name[len(prefix):]
        return name
    if not chain[0].startswith("k:"):
        return "user space"
    return "interrupts and the rest of the kernel"


def main():
    label = sys.argv[1] if len(sys.argv) > 1 else "profile"
    per_request = float(sys.argv[2]) if len(sys.argv) > 2 else None
    kinds = collections.Counter()
    leaves = collections.Counter()
    calls = collections.Counter()
    total = 0
    for chain in samples(sys.stdin):
        total += 1
        calls[system_call(chain)] += 1
        for kind, test in RULES:
            if test(chain):
                kinds[kind] += 1
                break
        caller = chain[1][2:] if len(chain) > 1 else ""
        leaves[f"{chain[0][2:]} <- {caller}"] += 1
    if not total:
        sys.exit(f"{label}: no samples")
    print(f"### {label}: {total} samples\n")
    print("| share | what the CPU was doing |\n| ---: | --- |")
    for kind, _ in RULES:
        if kinds[kind]:
            print(f"| {100 * kinds[kind] / total:.1f}% | {kind} |")
    print("\nTop leaf functions (<- their caller):\n")
    for leaf, n in leaves.most_common(12):
        print(f"- {100 * n / total:.1f}% {leaf}")
    print("\nBy system call:\n")
    print("| share | us per request | where |\n| ---: | ---: | --- |")
    for where, n in calls.most_common(10):
        us = f"{per_request * n / total:.2f}" if per_request else "-"
        print(f"| {100 * n / total:.1f}% | {us} | {where} |")
    print()


if __name__ == "__main__":
    main()
