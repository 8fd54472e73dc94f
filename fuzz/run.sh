#!/usr/bin/env bash
# Runs every fuzz target for a bounded time with AFL++ on stable Rust, from
# the corpus in fuzz/corpus/, and fails on any crash or hang. Prints the
# executions per target. Usage: fuzz/run.sh [SECONDS_PER_TARGET]
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
if ! cargo afl --version >/dev/null 2>&1; then
  for try in 1 2 3; do
    if cargo install --locked cargo-afl --version 0.18.2; then break; fi
    [ "$try" = 3 ] && { echo "could not install cargo-afl from crates.io" >&2; exit 1; }
    sleep 10
  done
fi
cargo afl build --release --locked
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
passed=0; failed=0
for target in keyholder_request keyholder_response keyfile client_request transcript_line settings_merge model_files recall_cue; do
  timeout $((seconds + 60)) cargo afl fuzz -i "corpus/$target" -o "$out/$target" -V "$seconds" \
    "target/release/$target" >"$out/$target.log" 2>&1 || true
  stats="$out/$target/default/fuzzer_stats"
  if [ ! -f "$stats" ]; then
    echo "FAIL $target: the fuzzer did not run"; tail -20 "$out/$target.log"; failed=$((failed+1)); continue
  fi
  execs=$(awk -F': ' '/^execs_done/{print $2}' "$stats")
  crashes=$(awk -F': ' '/^saved_crashes/{print $2}' "$stats")
  hangs=$(awk -F': ' '/^saved_hangs/{print $2}' "$stats")
  if [ "$crashes" = 0 ] && [ "$hangs" = 0 ]; then
    echo "PASS $target: $execs executions in ${seconds}s, 0 crashes, 0 hangs"
    passed=$((passed+1))
  else
    echo "FAIL $target: $crashes crashes, $hangs hangs in $execs executions; inputs:"
    ls "$out/$target/default/crashes" "$out/$target/default/hangs"
    for f in "$out/$target"/default/crashes/id*; do [ -f "$f" ] && base64 -w0 "$f" && echo; done
    failed=$((failed+1))
  fi
done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
