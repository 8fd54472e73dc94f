//! Every size limit of iai-mcp, derived in one place from one frame size.
//!
//! A limit one side enforces that the other side's own output can exceed is a
//! silent failure waiting to happen (a reply that cannot be framed vanishes; a
//! hook batch over the frame stalls its transcript forever). So every
//! producer sizes what it sends from the numbers here, and the derivations
//! are checked at compile time and by the tests below:
//!
//! - a field's worst case is its byte limit times [`JSON_WORST_EXPANSION`]
//!   (serde_json writes a control character as `\u0001`);
//! - the largest capture request and the largest recall hit each fit in one
//!   frame with room to spare, so a capture, a batch item or a hit is never
//!   refused for its encoding;
//! - replies and batches are filled up to [`REPLY_BUDGET`] / [`BATCH_BUDGET`]
//!   and the rest is left for the next page or batch, never dropped;
//! - what reaches a host (an MCP tool result, a session-start context) stays
//!   under the limit past which that host writes the text to a file of its own
//!   ([`HOST_TOOL_RESULT_BYTES`], [`HOST_HOOK_CONTEXT_BYTES`]).

/// Largest frame body accepted in either direction on the storer socket.
pub const MAX_FRAME: usize = 4 << 20;
/// Largest memory text (bytes of UTF-8).
pub const MAX_TEXT: usize = 256 * 1024;
/// Largest cue (capture's optional cue, recall's query).
pub const MAX_CUE: usize = 4096;
pub const MAX_TAGS: usize = 32;
pub const MAX_TAG: usize = 128;
pub const MAX_SESSION: usize = 256;
pub const MAX_PROVENANCE: usize = 1024;
pub const MAX_PROJECT: usize = 1024;
/// Most records in one `capture_batch` (it must also fit [`BATCH_BUDGET`]).
pub const MAX_BATCH: usize = 256;
pub const MAX_CURSOR_KEY: usize = 512;
pub const MAX_CURSOR_VALUE: usize = 4096;

/// A string's worst growth in JSON: one byte becomes `\u00XX`.
pub const JSON_WORST_EXPANSION: usize = 6;
/// Room kept for a reply's or request's envelope around its items.
pub const ENVELOPE: usize = 64 * 1024;
/// What a reply may fill with results (hits, events).
pub const REPLY_BUDGET: usize = MAX_FRAME - ENVELOPE;
/// What one `capture_batch` request may fill with items.
pub const BATCH_BUDGET: usize = MAX_FRAME - ENVELOPE;

/// Field names, ids, numbers and punctuation of one record, generously.
const RECORD_FIXED: usize = 1024;

/// The largest JSON a single record can take, as a capture request or as a
/// recall hit: every text field at its limit, every byte escaped.
pub const WORST_RECORD_JSON: usize = RECORD_FIXED
    + JSON_WORST_EXPANSION * (MAX_TEXT + MAX_CUE + MAX_TAGS * MAX_TAG + MAX_SESSION + MAX_PROVENANCE + MAX_PROJECT)
    + MAX_TAGS * 3;

const _: () = assert!(WORST_RECORD_JSON <= BATCH_BUDGET, "one capture must always fit a batch");
const _: () = assert!(WORST_RECORD_JSON <= REPLY_BUDGET, "one hit must always fit a reply");

/// What an MCP tool result's JSON may take, in bytes of UTF-8. Claude Code
/// saves a result of more than 100,000 characters (JavaScript length: UTF-16
/// units, never more than UTF-8 bytes) to a file and shows the model a
/// preview; our result carries its JSON twice (structured content and the
/// text copy), 72,000 at most together. Codex cuts the middle out of a tool
/// output over its model's limit (10,000 estimated tokens of 4 bytes for
/// every model it ships), so one copy stays under 40,000 bytes with room for
/// the header Codex adds.
pub const HOST_TOOL_RESULT_BYTES: usize = 36_000;
/// Characters per token in the hosts' own estimates (Claude Code and Codex
/// both count four).
pub const HOST_CHARS_PER_TOKEN: usize = 4;
/// Claude Code writes a hook's context of more than 10,000 characters to a
/// file; Codex writes one of more than 2,500 estimated tokens (10,000 bytes)
/// to `hook_outputs/`. 8,000 bytes of UTF-8 stays under both (a UTF-16 unit
/// never takes less than one UTF-8 byte).
pub const HOST_HOOK_CONTEXT_BYTES: usize = 8_000;

/// Bytes `v` takes as JSON, without building the string.
pub fn json_len<T: serde::Serialize + ?Sized>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    match serde_json::to_writer(&mut c, v) {
        Ok(()) => c.0,
        Err(_) => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{self, CaptureRequest, Hit, Request, Role, Tier};

    /// Every field at its limit, made of the character JSON escapes worst.
    fn worst(n: usize) -> String {
        "\u{1}".repeat(n)
    }

    #[test]
    fn the_worst_record_fits_the_formula_a_batch_and_a_reply() {
        let req = CaptureRequest {
            text: worst(MAX_TEXT),
            cue: Some(worst(MAX_CUE)),
            tier: Tier::Procedural,
            role: Role::Assistant,
            session: Some(worst(MAX_SESSION)),
            tags: vec![worst(MAX_TAG); MAX_TAGS],
            provenance: Some(worst(MAX_PROVENANCE)),
            project: Some(worst(MAX_PROJECT)),
            created_at: Some(i64::MAX),
        };
        let encoded = proto::encode_request(&Request::Capture(req.clone())).len();
        assert!(encoded <= WORST_RECORD_JSON, "{encoded} > {WORST_RECORD_JSON}");
        let hit = Hit {
            id: "01234567-89ab-cdef-0123-456789abcdef".into(),
            score: f64::MAX,
            created_at: i64::MIN,
            tier: req.tier,
            role: req.role,
            text: req.text,
            cue: req.cue,
            tags: req.tags,
            session: req.session,
            reinforced: u32::MAX,
            superseded_by: Some("01234567-89ab-cdef-0123-456789abcdef".into()),
            project: req.project,
        };
        assert!(json_len(&hit) <= WORST_RECORD_JSON, "{} > {WORST_RECORD_JSON}", json_len(&hit));
    }

    #[test]
    fn json_len_counts_what_serde_writes() {
        let v = serde_json::json!({"a": "\u{1}é\"", "b": [1, 2]});
        assert_eq!(json_len(&v), serde_json::to_vec(&v).map(|b| b.len()).unwrap_or(0));
    }
}
