#!/usr/bin/env bash
# Side-by-side benchmark of shoal, HAProxy and nginx as HTTP proxies in front of the same nginx backend.
#
#   bench/compare.sh                 # full run: every scenario, 1 and 2 threads, 3 alternating runs
#   DURATION=5 RUNS=3 bench/compare.sh
#   SCENARIOS="small close" THREADS=1 bench/compare.sh
#   SCENARIOS="tls-small tls-close tls-idle10k" PROXIES="shoal haproxy nginx" bench/compare.sh
#   SHOAL_BASE=/path/to/older/shoal PROXIES="shoal shoal-base haproxy" SCENARIOS="small close" bench/compare.sh
#   PROXIES="shoal shoal-log haproxy" SCENARIOS="small close" bench/compare.sh   # the access log's cost
#   IDLE_CONNS=18000 MAXCONN=19000 SCENARIOS=idle10k THREADS=1 bench/compare.sh   # as many as 20,000 fds allow
#   CONGESTION=cubic SCENARIOS=1mib bench/compare.sh   # every proxy under another TCP congestion control
#
# CONGESTION sets net.ipv4.tcp_congestion_control for the run and puts the machine's back at the end. It
# matters for large bodies: BBR without the fq qdisc paces each socket with its own timers, which cost every
# proxy about 300 us per 1 MiB response here and took splice(2)'s saving away (bench/README.md).
#
# shoal-base runs another shoal binary (an older build, say) with the plain listener only, to compare two
# versions in one run.
#
# shoal-splice is shoal with `--splice-min ${SPLICE_MIN:-262144}` (1mib and post64k only), to compare its splice(2)
# path with copying in the same run.
#
# Installs what it needs (HAProxy, nginx, wrk from Debian; oha from crates.io), builds shoal in release mode,
# prints a table and writes it to bench/RESULTS.md. Every load is bounded in time (DURATION seconds) or count.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/bench/out}
RESULTS=${RESULTS:-$ROOT/bench/RESULTS.md}
# Builds that check the descriptor budget need HAProxy's `no strict-limits` for 12,000 connections under a
# 20,000-descriptor limit; older ones do not know the flag.
base_strict_limits() {
  "$SHOAL_BASE" proxy --help 2>/dev/null | grep -q -- --strict-limits && echo "--strict-limits off"
}
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
THREADS=${THREADS:-"1 2"}
PROXIES=${PROXIES:-"shoal shoal-splice haproxy nginx"}
SCENARIOS=${SCENARIOS:-"small close 1mib post64k idle10k tls-small tls-close tls-idle10k"}
IDLE_CONNS=${IDLE_CONNS:-10000}
# shoal gives back the spares of the burst that opened the connections after a second without use, and the
# allocator returns them at the next second's collection: up to 3 s after the burst.
IDLE_SETTLE=${IDLE_SETTLE:-4}
# Client connections each proxy accepts; the idle scenario needs IDLE_CONNS of them, below the descriptor limit.
MAXCONN=${MAXCONN:-12000}
# A timed load during which the hypervisor took more than STEAL_MAX percent of the CPU time is run again, at
# most STEAL_RETRIES times; the last attempt is kept either way, and its steal is in the tables.
STEAL_MAX=${STEAL_MAX:-2}
STEAL_RETRIES=${STEAL_RETRIES:-2}
BACKEND_PORT=18100
PROXY_PORT=18080
# Every proxy also terminates TLS here, on one ECDSA P-256 certificate (cert and key in one PEM file).
TLS_PORT=18443
export PATH="$HOME/.cargo/bin:$PATH"

install() {
  local missing=()
  command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
  command -v wrk >/dev/null || missing+=(wrk)
  command -v python3 >/dev/null || missing+=(python3)
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  command -v oha >/dev/null || cargo install oha --locked --version 1.16.0
  (cd "$ROOT" && cargo build --release --quiet)
}

wait_port() {
  local port=$1 i
  for i in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on $port" >&2
  return 1
}

# Ticks the hypervisor ran something else while this VM's CPUs wanted to run ("steal", /proc/stat).
steal_ticks() { awk '/^cpu / {print $9}' /proc/stat; }

# The share of the machine's CPU time stolen between two `steal_ticks` readings, over DURATION seconds.
steal_percent() { awk -v a="$1" -v b="$2" -v n="$(nproc)" -v d="$DURATION" 'BEGIN {printf "%.1f", (b - a) / (n * d)}'; }

# The pid and its children (nginx workers).
pid_tree() { echo "$1"; pgrep -P "$1" || true; }

# CPU ticks of the tree so far: "user system".
cpu_ticks() {
  local user=0 sys=0 p u s
  for p in $(pid_tree "$1"); do
    read -r u s < <(awk '{print $14, $15}' "/proc/$p/stat" 2>/dev/null || echo "0 0")
    user=$((user + u)) sys=$((sys + s))
  done
  echo "$user $sys"
}

# CPU seconds between two cpu_ticks readings: "total user system".
seconds() {
  awk -v a="$1" -v b="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN {
    split(a, x, " "); split(b, y, " ");
    printf "%.2f %.2f %.2f\n", (y[1] + y[2] - x[1] - x[2]) / hz, (y[1] - x[1]) / hz, (y[2] - x[2]) / hz }'
}

# Peak (VmHWM) or current (VmRSS) resident memory of the tree, in KiB.
mem_kib() {
  local field=$2 total=0 p v
  for p in $(pid_tree "$1"); do
    v=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

write_certificate() {
  mkdir -p "$OUT/tls"
  [ -s "$OUT/tls/site.pem" ] && return
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 -subj /CN=bench.test \
    -addext subjectAltName=DNS:bench.test -keyout "$OUT/tls/key.pem" -out "$OUT/tls/cert.pem" 2>/dev/null
  cat "$OUT/tls/cert.pem" "$OUT/tls/key.pem" >"$OUT/tls/site.pem"
}

write_backend() {
  mkdir -p "$OUT/backend/www"
  printf 'hello world\n' >"$OUT/backend/www/index.html"
  head -c 1048576 /dev/zero | tr '\0' 'x' >"$OUT/backend/www/1m"
  cat >"$OUT/backend/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $OUT/backend/nginx.pid; error_log $OUT/backend/error.log;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000; keepalive_timeout 120s;
  client_body_temp_path $OUT/backend/body; proxy_temp_path $OUT/backend/proxy;
  fastcgi_temp_path $OUT/backend/fcgi; uwsgi_temp_path $OUT/backend/uwsgi; scgi_temp_path $OUT/backend/scgi;
  server {
    listen 127.0.0.1:$BACKEND_PORT backlog=4096; root $OUT/backend/www;
    location /upload { client_max_body_size 1m; client_body_buffer_size 128k; return 200 "ok\n"; }
  }
}
CONF
}

# Writes the proxy's config for $2 threads and starts it; prints its pid.
start_proxy() {
  local proxy=$1 threads=$2 dir="$OUT/$1"
  mkdir -p "$dir"
  case $proxy in
    shoal | shoal-splice | shoal-log)
      # shoal-splice: the same with splice(2) for bodies of 256 KiB and more (shoal copies, its default).
      # shoal-log: the same with its access log on (one line per request, to a file), to measure its cost.
      local splice=0 log=off
      [ "$proxy" = shoal-splice ] && splice=${SPLICE_MIN:-262144}
      [ "$proxy" = shoal-log ] && log=on
      "$ROOT/target/release/shoal" proxy --listen "127.0.0.1:$PROXY_PORT" --backend "s1=127.0.0.1:$BACKEND_PORT" \
        --tls-listen "127.0.0.1:$TLS_PORT" --tls-cert "$OUT/tls/site.pem" --gossip 127.0.0.1:0 \
        --threads "$threads" --access-log "$log" --max-connections $MAXCONN --strict-limits off --splice-min "$splice" >"$dir/out.log" 2>&1 &
      ;;
    shoal-base)
      "${SHOAL_BASE:?set SHOAL_BASE to the binary to compare}" proxy --listen "127.0.0.1:$PROXY_PORT" \
        --backend "s1=127.0.0.1:$BACKEND_PORT" --gossip 127.0.0.1:0 --threads "$threads" --access-log off \
        --max-connections $MAXCONN $(base_strict_limits) >"$dir/out.log" 2>&1 &
      ;;
    haproxy)
      cat >"$dir/haproxy.cfg" <<CONF
global
  nbthread $threads
  maxconn $MAXCONN
  # The hard fd limit (20000 here) is below HAProxy's 2-per-connection budget for maxconn 12000; idle client
  # connections need one each, so run with the limit HAProxy can get instead of refusing to start.
  no strict-limits
defaults
  mode http
  timeout connect 5s
  timeout client 50s
  timeout server 50s
  option http-keep-alive
  option forwardfor
frontend fe
  bind 127.0.0.1:$PROXY_PORT
  bind 127.0.0.1:$TLS_PORT ssl crt $OUT/tls/site.pem alpn http/1.1
  maxconn $MAXCONN
  http-request set-header X-Forwarded-Proto https if { ssl_fc }
  http-request set-header X-Forwarded-Proto http unless { ssl_fc }
  http-request set-header X-Forwarded-Port %[dst_port]
  default_backend nodes
backend nodes
  server s1 127.0.0.1:$BACKEND_PORT
CONF
      haproxy -db -f "$dir/haproxy.cfg" >"$dir/out.log" 2>&1 &
      ;;
    nginx)
      cat >"$dir/nginx.conf" <<CONF
daemon off; worker_processes $threads; worker_rlimit_nofile 20000; pid $dir/nginx.pid; error_log $dir/error.log;
events { worker_connections $MAXCONN; }
http {
  access_log off; keepalive_requests 1000000; keepalive_timeout 50s;
  client_body_temp_path $dir/body; proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fcgi; uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
  upstream nodes { server 127.0.0.1:$BACKEND_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$PROXY_PORT reuseport backlog=4096;
    listen 127.0.0.1:$TLS_PORT ssl reuseport backlog=4096;
    ssl_certificate $OUT/tls/site.pem; ssl_certificate_key $OUT/tls/site.pem;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m;
    client_max_body_size 1m; client_body_buffer_size 128k;
    location / {
      proxy_pass http://nodes; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_buffering off;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme; proxy_set_header X-Forwarded-Port \$server_port;
    }
  }
}
CONF
      nginx -c "$dir/nginx.conf" -p "$dir" >"$dir/out.log" 2>&1 &
      ;;
    direct) echo 0; return ;;
  esac
  local pid=$!
  wait_port "$PROXY_PORT"
  echo "$pid"
}

stop_proxy() {
  [ "$1" = 0 ] && return
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# wrk's latency figure in milliseconds.
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v} else if (v ~ /s$/) {sub(/s$/,"",v); print v*1000} else print v}' <<<"$1"; }

# Starts the load generator for one timed load, its output to $3.
generate() {
  local scenario=$1 port=$2 log=$3
  case $scenario in
    small) wrk -t1 -c64 -d"${DURATION}s" --latency "http://127.0.0.1:$port/" >"$log" ;;
    1mib) wrk -t1 -c8 -d"${DURATION}s" --latency "http://127.0.0.1:$port/1m" >"$log" ;;
    post64k) wrk -t1 -c16 -d"${DURATION}s" --latency -s "$ROOT/bench/post64k.lua" "http://127.0.0.1:$port/upload" >"$log" ;;
    close) oha -z "${DURATION}s" -c 64 --disable-keepalive --no-tui --output-format json "http://127.0.0.1:$port/" >"$log" ;;
    # TLS: the same loads over https to the TLS listener (the backend is the same plain nginx).
    tls-small) wrk -t1 -c64 -d"${DURATION}s" --latency "https://127.0.0.1:$TLS_PORT/" >"$log" ;;
    tls-close) oha -z "${DURATION}s" -c 64 --disable-keepalive --insecure --no-tui --output-format json \
      "https://127.0.0.1:$TLS_PORT/" >"$log" ;;
  esac
}

# Runs one timed load; prints "rps p50_ms p99_ms errors client_cpu_s", the last being the CPU time the load
# generator itself used (user + system), so the table can show how the two cores were shared.
load() {
  local scenario=$1 port=$2 log=$3 client_cpu
  local TIMEFORMAT='%3U %3S'
  { time generate "$scenario" "$port" "$log"; } 2>"$log.cpu"
  client_cpu=$(awk '{printf "%.2f", $1 + $2}' "$log.cpu")
  case $scenario in
    close | tls-close)
      python3 - "$log" "$client_cpu" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
codes = d.get("statusCodeDistribution", {})
# oha -z counts the requests it cuts off at the deadline as errors; they say nothing about the proxy.
errors = sum(v for k, v in d.get("errorDistribution", {}).items() if "deadline" not in k)
errors += sum(v for k, v in codes.items() if k != "200")
lat = d["latencyPercentiles"]
print(f'{d["summary"]["requestsPerSec"]:.0f} {lat["p50"]*1000:.3f} {lat["p99"]*1000:.3f} {errors} {sys.argv[2]}')
PY
      return
      ;;
  esac
  local rps p50 p99 errors
  rps=$(awk '/Requests\/sec/ {print $2}' "$log")
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$log")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$log")")
  errors=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$log")
  echo "$rps $p50 $p99 $errors $client_cpu"
}

# Opens IDLE_CONNS keep-alive connections, each answered once; prints "0 - - failures" plus memory columns.
idle() {
  local pid=$1 port=$2 log=$3 base fifo
  base=$(mem_kib "$pid" VmRSS)
  fifo="$OUT/idle.fifo"
  rm -f "$fifo"; mkfifo "$fifo"
  python3 "$ROOT/bench/idle_conns.py" 127.0.0.1 "$port" -n "$IDLE_CONNS" --hold 120 ${4:-} <"$fifo" >"$log" 2>&1 &
  local client=$!
  exec 4>"$fifo"
  local i
  for i in $(seq 1 1200); do grep -q '^ready' "$log" && break; sleep 0.1; done
  # Held memory is read once the proxy has been quiet for IDLE_SETTLE seconds, for every proxy alike: what
  # idle connections cost over time, not the garbage of the burst that opened them (shoal hands its spares
  # and freed pages back within 3 s; HAProxy's and nginx's figures do not move).
  sleep "$IDLE_SETTLE"
  local held peak failed
  held=$(mem_kib "$pid" VmRSS)
  peak=$(mem_kib "$pid" VmHWM)
  failed=$(awk '/^ready/ {print $4}' "$log")
  echo >&4; exec 4>&-
  wait "$client" || true
  rm -f "$fifo"
  echo "$base $held $peak ${failed:-$IDLE_CONNS}"
}

machine() {
  echo "- CPU: $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2}'), $(nproc) cores; $(free -g | awk '/Mem:/ {print $2}') GiB RAM"
  echo "- Kernel: $(uname -r); $(. /etc/os-release && echo "$PRETTY_NAME"); TCP congestion control $(sysctl -n net.ipv4.tcp_congestion_control), loopback qdisc $(tc qdisc show dev lo | awk '{print $2; exit}')"
  echo "- $(haproxy -v | head -1 | cut -d' ' -f1-3); $(nginx -v 2>&1 | cut -d' ' -f3); wrk $(wrk -v 2>&1 | head -1 | cut -d' ' -f2); $(oha --version)"
  echo "- shoal $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet || echo '+dirty'), release build"
}

# Switches every socket opened from now on to $CONGESTION; prints the setting to restore.
set_congestion() {
  local was
  was=$(sysctl -n net.ipv4.tcp_congestion_control)
  if ! sysctl -qw net.ipv4.tcp_congestion_control="$CONGESTION"; then
    echo "CONGESTION=$CONGESTION: not one of $(sysctl -n net.ipv4.tcp_available_congestion_control)" >&2
    return 1
  fi
  echo "$was"
}

restore_congestion() {
  [ -z "${1:-}" ] || sysctl -qw net.ipv4.tcp_congestion_control="$1"
}

# One timed load of $3 on port $6 (proxy pid $5) after a warm-up; prints its row of raw.tsv.
measure() {
  local scenario=$1 threads=$2 proxy=$3 run=$4 pid=$5 port=$6
  local t0 t1 b0 b1 s0 s1 res cpu user sys backend_cpu peak rps p50 p99 errors client_cpu
  # Warm up pools and caches, then measure.
  DURATION=1 load "$scenario" "$port" "$OUT/warmup.log" >/dev/null
  t0=$(cpu_ticks "$pid")
  b0=$(cpu_ticks "$backend")
  s0=$(steal_ticks)
  res=$(load "$scenario" "$port" "$OUT/last.log")
  s1=$(steal_ticks)
  t1=$(cpu_ticks "$pid")
  b1=$(cpu_ticks "$backend")
  read -r cpu user sys < <(seconds "$t0" "$t1")
  read -r backend_cpu _ _ < <(seconds "$b0" "$b1")
  peak=$(mem_kib "$pid" VmHWM)
  read -r rps p50 p99 errors client_cpu <<<"$res"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t-\t-\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$threads" "$proxy" "$run" "$rps" "$p50" "$p99" "$errors" "$cpu" "$peak" "$client_cpu" "$backend_cpu" "$user" "$sys" "$(steal_percent "$s0" "$s1")"
}

# `measure`, repeated (STEAL_RETRIES times at most) while the host took more than STEAL_MAX percent of the
# CPU time during the load: such a run measures the host's other guests, not the proxy (bench/README.md).
measure_again_after_steal() {
  local row steal attempt
  for attempt in $(seq 0 "$STEAL_RETRIES"); do
    row=$(measure "$@")
    steal=${row##*$'\t'}
    awk -v s="$steal" -v m="$STEAL_MAX" 'BEGIN {exit !(s <= m)}' && break
    [ "$attempt" -lt "$STEAL_RETRIES" ] && echo "  the host took $steal % of the CPU time (steal): measured again" >&2
  done
  printf '%s\n' "$row"
}

# Sets the congestion control, starts the nginx backend (its pid in $backend) and undoes both at exit.
start_backend() {
  mkdir -p "$OUT"
  write_certificate
  write_backend
  # Before any listener opens: accepted connections take their listener's congestion control.
  local congestion_was=""
  if [ -n "${CONGESTION:-}" ]; then congestion_was=$(set_congestion) || exit 1; fi
  nginx -c "$OUT/backend/nginx.conf" -p "$OUT/backend" &
  backend=$!
  trap 'kill -TERM '"$backend"' 2>/dev/null || true; restore_congestion '"$congestion_was" EXIT
  wait_port "$BACKEND_PORT"
}

# Every proxy here binds with SO_REUSEPORT, so a stray listener on one of these ports (a proxy left over from
# another experiment) would silently take a share of the load: refuse to start instead.
ports_free() {
  local port busy
  for port in "$BACKEND_PORT" "$PROXY_PORT" "$TLS_PORT"; do
    busy=$(ss -Hltnp "sport = :$port")
    if [ -n "$busy" ]; then
      echo "compare.sh: port $port is already in use; stop what listens there first:" >&2
      echo "$busy" >&2
      exit 1
    fi
  done
}

main() {
  install
  ports_free
  start_backend
  local raw="$OUT/raw.tsv"
  printf 'scenario\tthreads\tproxy\trun\trps\tp50_ms\tp99_ms\terrors\tcpu_s\tpeak_rss_kib\tidle_base_kib\tidle_held_kib\tclient_cpu_s\tbackend_cpu_s\tuser_s\tsys_s\tsteal_pct\n' >"$raw"
  local run threads scenario proxy pid
  for run in $(seq 1 "$RUNS"); do
    for scenario in $SCENARIOS; do
      for threads in $THREADS; do
        local order=$PROXIES
        case $scenario in
          idle10k | tls-*) ;;
          *) [ "$threads" = "$(echo "$THREADS" | awk '{print $1}')" ] && order="direct $PROXIES" ;;
        esac
        for proxy in $order; do
          # Only large bodies are spliced: elsewhere shoal-splice would be shoal again.
          if [ "$proxy" = shoal-splice ] && [ "$scenario" != 1mib ] && [ "$scenario" != post64k ]; then continue; fi
          pid=$(start_proxy "$proxy" "$threads")
          local port=$PROXY_PORT
          [ "$proxy" = direct ] && port=$BACKEND_PORT && pid=$backend
          echo "run $run: $scenario, $threads thread(s), $proxy" >&2
          if [ "$scenario" = idle10k ] || [ "$scenario" = tls-idle10k ]; then
            local tls_flag=""
            [ "$scenario" = tls-idle10k ] && port=$TLS_PORT && tls_flag=--tls
            read -r base held peak failed < <(idle "$pid" "$port" "$OUT/last.log" "$tls_flag")
            printf '%s\t%s\t%s\t%s\t0\t-\t-\t%s\t0\t%s\t%s\t%s\t-\t-\t-\t-\t-\n' "$scenario" "$threads" "$proxy" "$run" "$failed" "$peak" "$base" "$held" >>"$raw"
          else
            measure_again_after_steal "$scenario" "$threads" "$proxy" "$run" "$pid" "$port" >>"$raw"
          fi
          [ "$proxy" != direct ] && stop_proxy "$pid"
        done
      done
    done
  done
  # Described before tee truncates RESULTS.md, which would otherwise make the tree look modified.
  local description
  description=$(machine)
  STEAL_MAX=$STEAL_MAX python3 "$ROOT/bench/summarize.py" "$raw" "$DURATION" "$RUNS" "$IDLE_CONNS" "$description" | tee "$RESULTS"
}

# bench/kernel-profile.sh sources this file for its functions.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
