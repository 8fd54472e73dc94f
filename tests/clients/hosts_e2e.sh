#!/usr/bin/env bash
# The real hosts end to end (issue 9): Claude Code and the Codex CLI from npm,
# pinned, each driven through a short session against a stand-in model API
# that hosts_e2e.py serves on 127.0.0.1. Usage: hosts_e2e.sh /path/to/iai-mcp
set -euo pipefail
bin="$(realpath "$1")"
here="$(cd "$(dirname "$0")" && pwd)"
prefix="$(mktemp -d)"
trap 'rm -rf "$prefix"' EXIT
for try in 1 2 3; do
  if npm install --silent --no-audit --no-fund --prefix "$prefix" \
       @anthropic-ai/claude-code@2.1.332 @openai/codex@0.171.0 >/dev/null 2>&1; then
    break
  fi
  [ "$try" = 3 ] && { echo "could not install Claude Code and Codex from npm" >&2; exit 1; }
  sleep 5
done
python3 "$here/hosts_e2e.py" "$bin" "$prefix/node_modules/.bin/claude" "$prefix/node_modules/.bin/codex"
