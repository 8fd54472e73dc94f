#!/usr/bin/env bash
# End-to-end demo in a throwaway home: init, unlock, capture, recall, forget,
# lock, and a scan showing no memory text reached the disk in plaintext.
# Everything runs through the real keyholder and storer processes.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --quiet
bin="$PWD/target/release/iai-mcp"

export IAI_MCP_HOME="$(mktemp -d /tmp/iai-demo.XXXXXX)/home"
trap '"$bin" lock >/dev/null 2>&1 || true; rm -rf "$(dirname "$IAI_MCP_HOME")"' EXIT
pass_file="$(dirname "$IAI_MCP_HOME")/pass"
(umask 077; echo "demo passphrase $(date +%s%N)" > "$pass_file")

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

step "$bin" init --passphrase-fd 3 3<"$pass_file"
step "$bin" unlock --passphrase-fd 3 3<"$pass_file"
step "$bin" capture --tier semantic --tag infra "The staging database password rotates every 30 days; ask Dana for the vault path."
step "$bin" capture --role assistant "Decided: use rusqlite with the bundled SQLite so every machine gets the same version."
step "$bin" capture "会議は毎週木曜日の午前10時です (weekly sync: Thursdays 10:00)"
step "$bin" capture "The staging database password rotates every 30 days; ask Dana for the vault path."
step "$bin" recall "staging password"
step "$bin" recall "木曜日"
step "$bin" status

id=$("$bin" recall "rusqlite" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["hits"][0]["id"])')
step "$bin" forget "$id"

# As root, audit warns that the roles run as root: run iai-mcp as your own user.
step "$bin" audit

printf '\n\033[1m$ grep for the captured text in every file under the home\033[0m\n'
if grep -rl -e "staging database" -e "rusqlite" -e "木曜日" "$IAI_MCP_HOME"; then
  echo "FOUND PLAINTEXT ON DISK" >&2
  exit 1
fi
echo "no plaintext found in: $(find "$IAI_MCP_HOME" -type f | sed "s|$IAI_MCP_HOME/||" | tr '\n' ' ')"

step "$bin" lock
step "$bin" status
