#!/usr/bin/env bash
# Puts the small static embedding model the tests and benchmarks use into a
# directory (default: target/test-model), ready for `iai-mcp model install`:
#   weights.safetensors  token vectors, F16 [32000, 256]
#   tokenizer.json       the matching Hugging Face tokenizer (BPE, 32,000 tokens)
# Both come from the WordLlama wheel on PyPI (wordllama 0.4.0.post1, MIT
# licence), which bundles them; no model hub is contacted. The files are
# checked against pinned SHA-256 digests. Prints the directory.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/test-model}"
weights_sha=64b47a2dc493cb8e85944076601189739852d7b64e0e1eedcb1937a251cd9fd5
tokenizer_sha=93248f2a9ec36c7b35f700a033d5f36228aae48db61aee31007fa49062cdeb68

ok() {
  [ -f "$out/weights.safetensors" ] && [ -f "$out/tokenizer.json" ] \
    && echo "$weights_sha  $out/weights.safetensors" | sha256sum --quiet -c - 2>/dev/null \
    && echo "$tokenizer_sha  $out/tokenizer.json" | sha256sum --quiet -c - 2>/dev/null
}

if ! ok; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  for try in 1 2 3; do
    if python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --python-version 3.11 --platform manylinux2014_x86_64 'wordllama==0.4.0.post1' -d "$tmp" >&2; then
      break
    fi
    [ "$try" = 3 ] && { echo "could not download the wordllama wheel from PyPI" >&2; exit 1; }
    sleep 5
  done
  python3 - "$tmp" "$out" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, out = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "wordllama-*.whl"))[0]
os.makedirs(out, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for member, name in [("wordllama/weights/l2_supercat_256.safetensors", "weights.safetensors"),
                         ("wordllama/tokenizers/l2_supercat_tokenizer_config.json", "tokenizer.json")]:
        with z.open(member) as src, open(os.path.join(out, name), "wb") as dst:
            shutil.copyfileobj(src, dst)
PY
  ok || { echo "the model files from the wordllama wheel do not have the pinned digests" >&2; exit 1; }
fi
cd "$out" && pwd
