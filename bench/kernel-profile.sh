#!/usr/bin/env bash
# Where each proxy's CPU goes, the kernel's part included: perf samples one proxy at a time (cpu-clock, which
# needs no hardware counters, so it works in this VM) under compare.sh's loads, and bench/kernel_profile.py
# sorts the samples by what they were doing (waking the receiver, waiting for a lock, copying, pacing timers).
#
#   bench/kernel-profile.sh                                    # shoal and HAProxy, small GETs and 1 MiB
#   PROXIES="shoal shoal-splice" SCENARIOS=1mib bench/kernel-profile.sh
#   CONGESTION=cubic SCENARIOS=1mib bench/kernel-profile.sh   # under another TCP congestion control
#
# One thread per proxy, DURATION (6) seconds each, sampled at FREQ (999) Hz, then 3 seconds more to count system calls. Sampling in a VM costs: the
# proxies run slower while profiled, so read the shares, not the rates. Writes bench/out/profile/*.data and
# prints the tables, each headed by the proxy's sleeps (voluntary context switches), system calls and the TCP
# segments on loopback (every process's: client, proxy and backend) per request.
set -euo pipefail
# Ours before compare.sh gives them its own defaults.
DURATION=${DURATION:-6}
FREQ=${FREQ:-999}
PROXIES=${PROXIES:-"shoal haproxy"}
SCENARIOS=${SCENARIOS:-"small 1mib"}
# shellcheck source=bench/compare.sh
source "$(dirname "$0")/compare.sh"

# Voluntary context switches of every thread of the proxy's processes: how often it ran out of work and slept.
sleeps() {
  local p f n=0
  for p in $(pid_tree "$1"); do
    for f in /proc/"$p"/task/*/status; do
      n=$((n + $(awk '/^voluntary_ctxt_switches/ {print $2}' "$f" 2>/dev/null || echo 0)))
    done
  done
  echo "$n"
}

# TCP segments sent on this machine so far (all of loopback's traffic).
segments() {
  awk '/^Tcp:/ && ++n == 2 {print $12}' /proc/net/snmp
}

profile_main() {
  install
  command -v perf >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf
  start_backend
  mkdir -p "$OUT/profile"
  echo "TCP congestion control: $(sysctl -n net.ipv4.tcp_congestion_control)"
  local scenario proxy pid data
  for scenario in $SCENARIOS; do
    for proxy in $PROXIES; do
      pid=$(start_proxy "$proxy" 1)
      DURATION=1 generate "$scenario" "$PROXY_PORT" "$OUT/profile/warmup.log"
      data="$OUT/profile/$proxy-$scenario.data"
      perf record --quiet -F "$FREQ" -g -e cpu-clock -p "$(pid_tree "$pid" | paste -sd,)" -o "$data" -- sleep "$((DURATION - 1))" 2>/dev/null &
      local perf_pid=$!
      local t0 t1 s0 s1 g0 g1 rps p50 p99 errors client cpu per_request sleeps syscalls segs
      t0=$(cpu_ticks "$pid")
      s0=$(sleeps "$pid")
      g0=$(segments)
      read -r rps p50 p99 errors client < <(load "$scenario" "$PROXY_PORT" "$OUT/profile/$proxy-$scenario.log")
      t1=$(cpu_ticks "$pid")
      s1=$(sleeps "$pid")
      g1=$(segments)
      wait "$perf_pid"
      # System calls are counted apart, over a shorter load: tracing them slows every call of the sampled one.
      perf stat -x, -e raw_syscalls:sys_enter -o "$data.stat" -p "$(pid_tree "$pid" | paste -sd,)" -- sleep 2 &
      local stat_pid=$! counted
      counted=$(DURATION=3 load "$scenario" "$PROXY_PORT" "$OUT/profile/$proxy-$scenario.count.log" | awk '{print $1}')
      wait "$stat_pid"
      stop_proxy "$pid"
      read -r cpu _ _ < <(seconds "$t0" "$t1")
      per_request=$(awk -v c="$cpu" -v r="$rps" -v d="$DURATION" 'BEGIN {printf "%.1f", c * 1e6 / (r * d)}')
      sleeps=$(awk -v a="$s0" -v b="$s1" -v r="$rps" -v d="$DURATION" 'BEGIN {printf "%.2f", (b - a) / (r * d)}')
      syscalls=$(awk -F, -v r="$counted" '/raw_syscalls/ {printf "%.2f", $1 / (r * 2)}' "$data.stat")
      segs=$(awk -v a="$g0" -v b="$g1" -v r="$rps" -v d="$DURATION" 'BEGIN {printf "%.2f", (b - a) / (r * d)}')
      perf script -i "$data" -F ip,sym 2>/dev/null | python3 "$ROOT/bench/kernel_profile.py" \
        "$proxy, $scenario ($rps requests/s, p99 $p99 ms, $per_request us of CPU per request while sampled; per request: $sleeps sleeps, $syscalls system calls, $segs TCP segments)" "$per_request"
    done
  done
}

profile_main
