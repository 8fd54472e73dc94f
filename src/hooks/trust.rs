//! Whether Codex will run our hooks. Codex keeps a user's hooks untrusted
//! until the user reviews them, and records that trust itself; rather than
//! recompute its hashes, we ask the `codex` on PATH through its own
//! app-server (`hooks/list`), which reports each hook's trust status.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// One hook as Codex lists it.
pub struct HookTrust {
    pub event: String,
    pub command: String,
    /// `trusted`, `untrusted`, `modified` or `managed`.
    pub status: String,
}

const ASK_WITHIN: Duration = Duration::from_secs(20);

pub fn codex_trust() -> Result<Vec<HookTrust>> {
    let mut child = Command::new("codex")
        .arg("app-server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("`codex` is not on PATH")?;
    let result = ask(&mut child);
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn ask(child: &mut std::process::Child) -> Result<Vec<HookTrust>> {
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    // A reader thread, so a silent app-server cannot hang `hooks status`.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let send = |stdin: &mut std::process::ChildStdin, v: Value| -> Result<()> {
        writeln!(stdin, "{v}").and_then(|()| stdin.flush()).context("codex app-server closed its input")
    };
    let deadline = Instant::now() + ASK_WITHIN;
    let wait_for = |id: u64| -> Result<Value> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).map_err(|_| anyhow!("codex app-server did not answer in time"))?;
            let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    bail!("codex app-server refused: {e}");
                }
                return Ok(v["result"].clone());
            }
        }
    };
    let version = env!("CARGO_PKG_VERSION");
    send(
        &mut stdin,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"clientInfo": {"name": "iai-mcp", "version": version}}}),
    )?;
    wait_for(1)?;
    send(&mut stdin, json!({"jsonrpc": "2.0", "method": "initialized"}))?;
    send(&mut stdin, json!({"jsonrpc": "2.0", "id": 2, "method": "hooks/list", "params": {}}))?;
    let listed = wait_for(2)?;
    Ok(parse_hooks_list(&listed))
}

/// The hooks of a `hooks/list` result, across the working directories it covers.
pub fn parse_hooks_list(result: &Value) -> Vec<HookTrust> {
    let mut out = Vec::new();
    for dir in result["data"].as_array().into_iter().flatten() {
        for h in dir["hooks"].as_array().into_iter().flatten() {
            let (Some(command), Some(status)) = (h["command"].as_str(), h["trustStatus"].as_str()) else { continue };
            out.push(HookTrust {
                event: h["eventName"].as_str().unwrap_or("?").to_string(),
                command: command.to_string(),
                status: status.to_string(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hooks_list_result_is_read_as_codex_0_171_writes_it() {
        let v = json!({"data": [{"cwd": "/w", "hooks": [
            {"key": "/h/.codex/hooks.json:stop:0:0", "eventName": "stop", "command": "/b/iai-mcp hook capture", "trustStatus": "untrusted"},
            {"eventName": "sessionStart", "command": "/b/iai-mcp hook session-start", "trustStatus": "trusted"},
            {"eventName": "stop", "trustStatus": "trusted"}
        ], "warnings": [], "errors": []}]});
        let got = parse_hooks_list(&v);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].event.as_str(), got[0].status.as_str()), ("stop", "untrusted"));
        assert_eq!(got[1].status, "trusted");
    }
}
