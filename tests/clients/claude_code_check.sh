#!/usr/bin/env bash
# Claude Code itself (npm @anthropic-ai/claude-code, a host we did not write)
# loads a settings.json written by `iai-mcp hooks install` and reports our MCP
# server connected. Runs in a throwaway HOME and IAI_MCP_HOME.
# Usage: tests/clients/claude_code_check.sh /path/to/iai-mcp
set -euo pipefail
bin="$(realpath "$1")"
work="$(mktemp -d)"
trap 'IAI_MCP_HOME="$work/iai" "$bin" lock >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

for try in 1 2 3; do
  if (cd "$work" && npm install --silent --no-audit --no-fund --prefix "$work/npm" @anthropic-ai/claude-code@2.1.332 >/dev/null 2>&1); then
    break
  fi
  [ "$try" = 3 ] && { echo "could not install @anthropic-ai/claude-code from npm" >&2; exit 1; }
  sleep 5
done
claude="$work/npm/node_modules/.bin/claude"

export HOME="$work/home" IAI_MCP_HOME="$work/iai" IAI_MCP_PASSPHRASE="claude code check passphrase"
mkdir -p "$HOME"
"$bin" init >/dev/null
"$bin" unlock >/dev/null
unset IAI_MCP_PASSPHRASE
"$bin" hooks install --target claude >/dev/null
grep -q '"UserPromptSubmit"' "$HOME/.claude/settings.json"
"$claude" mcp add --scope user iai-mcp -- "$bin" mcp >/dev/null
out="$(cd "$HOME" && timeout 120 "$claude" mcp list 2>&1)"
echo "$out"
if echo "$out" | grep -q "iai-mcp: .*Connected"; then
  echo "1 passed, 0 failed"
else
  echo "0 passed, 1 failed"
  exit 1
fi
