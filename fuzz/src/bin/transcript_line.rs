//! A line of a host transcript (Claude Code or Codex JSONL) and a hook's
//! JSON input, as the hook process parses them.
#[path = "../../../src/hooks/transcript.rs"]
#[allow(dead_code)]
mod transcript;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let _ = transcript::parse_line(data, 0, data.len() as u64);
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
            let _ = v["transcript_path"].as_str();
            let _ = v["session_id"].as_str();
            let _ = v["hook_event_name"].as_str();
        }
    });
}
