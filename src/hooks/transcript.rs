//! Reading host transcripts (JSONL) incrementally: only complete lines after
//! a saved byte offset, in bounded memory and time.
//!
//! Claude Code lines: `{"type": "user"|"assistant", "message": {"id"?, "role",
//! "content": "text" | [{"type": "text", "text"}, {"type": "thinking"}, {"type":
//! "tool_use"}, {"type": "tool_result"}, …]}, "uuid", "timestamp", "isMeta"?}`;
//! other types (summary, system, …) are skipped. Codex rollout lines:
//! `{"timestamp", "type": "response_item", "payload": {"type": "message",
//! "role", "content": [{"type": "input_text"|"output_text", "text"}]}}`;
//! reasoning, function calls and context injected by Codex are skipped.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Instant;

use iai_storer::proto::Role;
use serde_json::Value;

/// Lines longer than this (huge tool outputs) are skipped without being held in memory.
pub const MAX_LINE: usize = 4 << 20;

/// One captured turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Turn {
    pub role: Role,
    pub text: String,
    /// Message id (Claude assistant), line uuid (Claude user), or the byte offset.
    pub id: String,
    pub created_at: Option<i64>,
    /// Byte offset just past the line that completed this turn.
    pub end: u64,
}

fn text_blocks(content: &Value, kinds: &[&str]) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"].as_str().is_some_and(|t| kinds.contains(&t)))
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn timestamp(v: &Value) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(v["timestamp"].as_str()?.trim_end_matches('Z')).ok()?;
    t.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_millis() as i64)
}

/// Context Codex injects as "user" messages: not something the user said.
fn injected(text: &str) -> bool {
    let t = text.trim_start();
    ["<environment_context>", "<user_instructions>", "<permissions", "<user_shell_command>"]
        .iter()
        .any(|p| t.starts_with(p))
}

/// Parses one line; None for lines that carry no user or assistant text.
pub fn parse_line(line: &[u8], offset: u64, end: u64) -> Option<Turn> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let created_at = timestamp(&v);
    if let Some(p) = v.get("payload") {
        // Codex
        if v["type"] != "response_item" || p["type"] != "message" {
            return None;
        }
        let role = match p["role"].as_str()? {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            _ => return None,
        };
        let text = text_blocks(&p["content"], &["input_text", "output_text", "text"]);
        if text.trim().is_empty() || (role == Role::User && injected(&text)) {
            return None;
        }
        return Some(Turn { role, text, id: format!("@{offset}"), created_at, end });
    }
    // Claude Code
    if v["isMeta"].as_bool() == Some(true) {
        return None;
    }
    let (role, id) = match v["type"].as_str()? {
        "user" => (Role::User, v["uuid"].as_str().map(String::from)),
        "assistant" => (Role::Assistant, v["message"]["id"].as_str().or(v["uuid"].as_str()).map(String::from)),
        _ => return None,
    };
    let text = text_blocks(&v["message"]["content"], &["text"]);
    if text.trim().is_empty() {
        return None;
    }
    Some(Turn { role, text, id: id.unwrap_or_else(|| format!("@{offset}")), created_at, end })
}

/// What one read found.
pub struct Scan {
    pub turns: Vec<Turn>,
    /// Offset just past the last complete line examined.
    pub end: u64,
    /// Lines skipped for being longer than [`MAX_LINE`].
    pub oversized: usize,
    /// The deadline stopped the scan before the end of the file.
    pub stopped_early: bool,
}

/// Reads complete lines from `start`, merging consecutive lines of the same
/// message id into one turn. Stops at `deadline`; a partial last line (being
/// written) is left for next time.
pub fn scan(path: &Path, start: u64, deadline: Instant, max_turns: usize) -> std::io::Result<Scan> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let start = if start > len { 0 } else { start };
    file.seek(SeekFrom::Start(start))?;
    let mut reader = BufReader::with_capacity(64 * 1024, file.take(len - start));
    let mut out = Scan { turns: Vec::new(), end: start, oversized: 0, stopped_early: false };
    let mut line = Vec::new();
    let mut consumed: u64 = 0;
    let mut line_start = start;
    let mut skipping = false;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        let (take, complete) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if !skipping {
            line.extend_from_slice(&chunk[..take]);
            if line.len() > MAX_LINE {
                skipping = true;
                line = Vec::new();
            }
        }
        reader.consume(take);
        consumed += take as u64;
        if !complete {
            continue;
        }
        let end = start + consumed;
        if skipping {
            out.oversized += 1;
        } else if let Some(t) = parse_line(&line, line_start, end) {
            match out.turns.last_mut() {
                Some(last) if last.id == t.id && last.role == t.role && !t.id.starts_with('@') => {
                    last.text.push('\n');
                    last.text.push_str(&t.text);
                    last.end = t.end;
                }
                _ => out.turns.push(t),
            }
        }
        out.end = end;
        line_start = end;
        line.clear();
        skipping = false;
        if Instant::now() >= deadline || out.turns.len() >= max_turns {
            out.stopped_early = out.end < len;
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn far() -> Instant {
        Instant::now() + std::time::Duration::from_secs(60)
    }

    #[test]
    fn claude_shapes() {
        let user_str = br#"{"type":"user","uuid":"u1","message":{"role":"user","content":"hello there"}}"#;
        let t = parse_line(user_str, 0, 10).expect("turn");
        assert_eq!((t.role, t.text.as_str(), t.id.as_str()), (Role::User, "hello there", "u1"));
        let tool_result = br#"{"type":"user","uuid":"u2","message":{"role":"user","content":[{"type":"tool_result","content":"ls output"}]}}"#;
        assert!(parse_line(tool_result, 0, 1).is_none());
        let thinking =
            br#"{"type":"assistant","message":{"id":"m1","content":[{"type":"thinking","thinking":"hmm"}]}}"#;
        assert!(parse_line(thinking, 0, 1).is_none());
        let meta = br#"{"type":"user","isMeta":true,"message":{"content":"<command-name>"}}"#;
        assert!(parse_line(meta, 0, 1).is_none());
        assert!(parse_line(br#"{"type":"summary","summary":"x"}"#, 0, 1).is_none());
        assert!(parse_line(b"not json", 0, 1).is_none());
    }

    #[test]
    fn codex_shapes() {
        let user = br#"{"timestamp":"2026-11-01T10:00:00.000Z","type":"response_item","payload":{"type":"message","role":"user","content":[{"type":"input_text","text":"fix the build"}]}}"#;
        let t = parse_line(user, 5, 9).expect("turn");
        assert_eq!((t.role, t.text.as_str()), (Role::User, "fix the build"));
        assert!(t.created_at.is_some());
        let env = br#"{"type":"response_item","payload":{"type":"message","role":"user","content":[{"type":"input_text","text":"<environment_context>cwd</environment_context>"}]}}"#;
        assert!(parse_line(env, 0, 1).is_none());
        let reasoning = br#"{"type":"response_item","payload":{"type":"reasoning","summary":[]}}"#;
        assert!(parse_line(reasoning, 0, 1).is_none());
    }

    #[test]
    fn scan_merges_message_blocks_skips_partial_and_oversized_lines() {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("t.jsonl");
        let mut f = std::fs::File::create(&p).expect("create");
        writeln!(
            f,
            r#"{{"type":"assistant","message":{{"id":"m1","content":[{{"type":"text","text":"part one"}}]}}}}"#
        )
        .expect("w");
        writeln!(
            f,
            r#"{{"type":"assistant","message":{{"id":"m1","content":[{{"type":"text","text":"part two"}}]}}}}"#
        )
        .expect("w");
        writeln!(
            f,
            "{{\"type\":\"user\",\"uuid\":\"big\",\"message\":{{\"content\":\"{}\"}}}}",
            "x".repeat(MAX_LINE + 10)
        )
        .expect("w");
        writeln!(f, r#"{{"type":"user","uuid":"u9","message":{{"content":"after the big one"}}}}"#).expect("w");
        let complete = f.metadata().expect("len").len();
        write!(f, r#"{{"type":"user","uuid":"u10","message":{{"content":"still being wri"#).expect("w");
        drop(f);
        let s = scan(&p, 0, far(), 1000).expect("scan");
        assert_eq!(s.turns.len(), 2);
        assert_eq!(s.turns[0].text, "part one\npart two");
        assert_eq!(s.turns[1].text, "after the big one");
        assert_eq!(s.oversized, 1);
        assert_eq!(s.end, complete, "the partial line is left for next time");
        let again = scan(&p, s.end, far(), 1000).expect("scan");
        assert!(again.turns.is_empty());
        assert_eq!(again.end, complete);
    }
}
