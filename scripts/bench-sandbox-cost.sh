#!/usr/bin/env bash
# Measures what the sandbox costs: builds a second iai-mcp WITHOUT Landlock
# and seccomp (benchmark-only feature, in its own target directory, never
# installed), then times the same captures and recalls against both, interleaved.
# Usage: scripts/bench-sandbox-cost.sh [--records N] [--queries Q] [--json]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet -p iai-mcp -p iai-bench
RUSTFLAGS="--cfg iai_bench_build" cargo build --release --locked --quiet -p iai-mcp \
  --features iai-policy/unsandboxed-bench --target-dir target/unsandboxed-bench
exec target/release/iai-bench sandbox-cost --unsandboxed-bin target/unsandboxed-bench/release/iai-mcp "$@"
