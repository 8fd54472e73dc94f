//! The embedding model's files as `iai-mcp model install` and the storer read
//! them (a safetensors table and a Hugging Face tokenizer.json): damaged or
//! hostile files must be refused with a reason, never panic; a model that is
//! accepted must embed any text without panicking.
//!
//! Input: a little-endian u32 length, that many bytes of weights, then the
//! tokenizer's bytes.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((len, rest)) = data.split_first_chunk::<4>() else { return };
        let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
        let (weights, tokenizer) = rest.split_at(len);
        if let Ok(model) = iai_storer::embed::Model::from_bytes(weights, tokenizer) {
            let text = String::from_utf8_lossy(tokenizer);
            let _ = model.embed(&text);
            let _ = model.embed("plain words, then ünïcödé and 東京 and 🔑");
        }
    });
}
