#!/usr/bin/env bash
# Builds shoal as a static binary and the FROM-scratch image around it.
#
#   docker/build.sh                    # -> image shoal:latest
#   SHOAL_IMAGE=shoal:dev docker/build.sh
#
# The static build has its own target directory, so it neither disturbs nor waits on the usual one.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${SHOAL_IMAGE:-shoal:latest}
TARGET_DIR=${SHOAL_STATIC_TARGET_DIR:-$ROOT/target/static}
# This machine's own target (x86_64-unknown-linux-gnu, aarch64-unknown-linux-gnu, ...): the image runs where
# it is built, and docker labels it with this machine's architecture.
TARGET=${SHOAL_TARGET:-$(rustc -vV | sed -n 's/^host: //p')}

RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$TARGET_DIR" \
  cargo build --quiet --release --locked --target "$TARGET" --manifest-path "$ROOT/Cargo.toml"

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$TARGET_DIR/$TARGET/release/shoal" "$context/shoal"
strip "$context/shoal"
# Runnable by any user (an app run as another with `--app-user` runs /shoal too), whatever the umask.
chmod 0755 "$context/shoal"
cp "$ROOT/docker/Dockerfile" "$context/Dockerfile"
docker build --quiet --tag "$IMAGE" "$context" >/dev/null
echo "$IMAGE"
