#!/usr/bin/env bash
# The kernel's floor under a proxied keep-alive small GET on this machine (bench/floor.c): one thread plays
# both ends of a loopback connection, sending an 80-byte request one way and a 250-byte response back and
# receiving each, which are the four system calls a proxy makes per request (on loopback each send also runs
# the receiver's TCP, as the proxy's sends do). Nothing sleeps and caches stay warm, so this is the least CPU
# per request any proxy can spend here; compare.sh's figures above it are epoll, sleeping and waking, waking
# the peers, and the proxy's own user-space work.
#
#   bench/floor.sh            # ROUNDS (5) rounds of N (200000) exchanges; REQUEST / RESPONSE set the sizes
#
# Needs a C compiler.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/bench/out"
mkdir -p "$OUT"
cc -O2 -o "$OUT/floor" "$ROOT/bench/floor.c"
for _ in $(seq 1 "${ROUNDS:-5}"); do
  "$OUT/floor" "${N:-200000}" "${REQUEST:-80}" "${RESPONSE:-250}"
done
