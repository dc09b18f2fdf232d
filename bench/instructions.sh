#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind: unlike CPU time on shared
# cores, the count moves by under 0.5 % from run to run for the same binary and load, so a change of 1 % shows.
#
#   bench/instructions.sh [BINARY...]        (default: target/release/shoal)
#   SCENARIO=close bench/instructions.sh /tmp/old-shoal target/release/shoal
#
# For each binary: shoal proxy (1 thread, access log off; ACCESS_LOG=on to count it) under callgrind in front of a plain nginx, N and 2N
# requests (SCENARIO small: keep-alive, 4 connections; close: a new connection each); the difference divided
# by N cancels start-up and shutdown. Prints instructions per request and, with --profile, the top functions.
# Kernel time (system calls, TCP) is not counted: it is the same for builds that make the same system calls.
# Needs valgrind, nginx and oha.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/bench/out/instructions"
N=${N:-4000}
SCENARIO=${SCENARIO:-small}
BACKEND_PORT=18200
PROXY_PORT=18201
mkdir -p "$OUT/www"
printf 'hello world\n' >"$OUT/www/index.html"
cat >"$OUT/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $OUT/nginx.pid; error_log $OUT/error.log;
events { worker_connections 1024; }
http {
  access_log off; keepalive_requests 1000000;
  client_body_temp_path $OUT/body; proxy_temp_path $OUT/proxy;
  fastcgi_temp_path $OUT/fcgi; uwsgi_temp_path $OUT/uwsgi; scgi_temp_path $OUT/scgi;
  server { listen 127.0.0.1:$BACKEND_PORT; root $OUT/www; }
}
CONF
nginx -c "$OUT/nginx.conf" -p "$OUT" &
nginx_pid=$!
trap 'kill $nginx_pid 2>/dev/null || true' EXIT

wait_port() {
  for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 never opened" >&2
  return 1
}
wait_port "$BACKEND_PORT"

# Total instructions of one proxy run that serves $2 requests.
count() {
  local binary=$1 n=$2 file="$OUT/callgrind.$3.out"
  valgrind --tool=callgrind --callgrind-out-file="$file" "$binary" proxy --listen "127.0.0.1:$PROXY_PORT" \
    --backend "s1=127.0.0.1:$BACKEND_PORT" --gossip 127.0.0.1:0 --admin off --runtime-api off --threads 1 \
    --access-log "${ACCESS_LOG:-off}" >"$OUT/proxy.log" 2>&1 &
  local pid=$!
  wait_port "$PROXY_PORT"
  if [ "$n" -gt 0 ]; then
    local keepalive=()
    [ "$SCENARIO" = close ] && keepalive=(--disable-keepalive)
    oha --no-tui -n "$n" -c 4 "${keepalive[@]}" "http://127.0.0.1:$PROXY_PORT/" >"$OUT/oha.log"
    grep -q "\[200\] $n responses" "$OUT/oha.log" || { echo "not every request got 200:" >&2; cat "$OUT/oha.log" >&2; exit 1; }
  fi
  kill -TERM "$pid"
  wait "$pid" || true
  callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print $1; done = 1}'
}

[ $# -eq 0 ] && set -- "$ROOT/target/release/shoal"
for binary in "$@"; do
  one=$(count "$binary" "$N" one)
  two=$(count "$binary" $((2 * N)) two)
  echo "$binary ($SCENARIO): $(( (two - one) / N )) instructions per request (N=$N: $one, 2N: $two)"
  if [ "${PROFILE:-0}" = 1 ]; then
    callgrind_annotate --inclusive=no "$OUT/callgrind.two.out" 2>/dev/null | awk 'NR <= 40 && !/^--/'
  fi
done
