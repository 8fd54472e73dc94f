//! Semantic recall: a static embedding model (one vector per vocabulary
//! token, WordLlama/Model2Vec style) that the user installs from a local file
//! (`iai-mcp model install`). A text's vector is the mean of its tokens'
//! vectors, L2-normalised, kept as `i8` beside the index in the storer's
//! memory and sealed with the index snapshot; it never reaches the disk in
//! the clear. Nothing is fetched, ever: without an installed model recall is
//! exactly BM25 as before.
//!
//! Static embeddings cost microseconds per text (a table lookup per token),
//! which is what lets a capture stay inside its 2 ms budget with the vector
//! computed before the acknowledgement (BENCHMARKS.md compares them with a
//! small transformer).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Largest weights file accepted (a static model of 256 k tokens × 1024 f16).
pub const MAX_WEIGHTS_BYTES: u64 = 600 << 20;
/// Largest tokenizer file accepted.
pub const MAX_TOKENIZER_BYTES: u64 = 32 << 20;
/// Vector widths accepted; the index keeps at most [`MAX_DIM`] of them
/// (Matryoshka-trained static models keep their meaning when cut).
const MIN_DIM: usize = 16;
pub const MAX_DIM: usize = 128;
const MAX_ROWS: usize = 1 << 20;
/// Words of a text that count towards its vector: the gist of a long memory
/// is in its opening, and the cost of a capture stays bounded.
pub const MAX_WORDS: usize = 1024;
/// Longest word looked up whole; longer runs (base64, hashes) are cut.
const MAX_WORD_BYTES: usize = 64;
/// Most distinct words whose token ids are remembered (about 3 MB when
/// full; then it starts again, and the frequent words are back within a few
/// turns). Looking a word up is ~50 ns; tokenizing it, microseconds.
const WORD_CACHE: usize = 100_000;

/// Token ids of words seen before, keyed by a keyed hash of the word (a
/// random key per process, so nobody can craft a word that collides with
/// another and poison its ids), all ids in one arena: two allocations in all.
#[derive(Default)]
struct WordCache {
    key: std::collections::hash_map::RandomState,
    slots: HashMap<u64, (u32, u16), std::hash::BuildHasherDefault<Prehashed>>,
    ids: Vec<u32>,
}

/// The map's hasher for keys that are hashes already.
#[derive(Default)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Names of the installed model's files inside its directory.
pub const WEIGHTS_FILE: &str = "weights.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The model directory of a home.
pub fn model_dir(home: &iai_policy::Home) -> PathBuf {
    home.root().join("model")
}

/// An embedding model in memory.
pub struct Model {
    tokenizer: tokenizers::Tokenizer,
    /// Token vectors, row-major, cut to `dim`, each row quantised to `i8`
    /// with its own scale: a quarter of the memory of `f32`, and averaging
    /// many rows washes out the rounding.
    table: Vec<i8>,
    scales: Vec<f32>,
    rows: usize,
    dim: usize,
    /// SHA-256 of the weights and tokenizer files: vectors made by another
    /// model are never mixed with this one's.
    id: [u8; 16],
    words: RefCell<WordCache>,
}

/// What `status` says about the model.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelInfo {
    pub dim: usize,
    pub tokens: usize,
    pub id: String,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("rows", &self.rows).field("dim", &self.dim).finish()
    }
}

impl Model {
    /// Reads and checks a model from its two files. Every way they can be
    /// wrong is a plain sentence, never a panic.
    pub fn from_files(weights: &Path, tokenizer: &Path) -> Result<Model, String> {
        let w = read_bounded(weights, MAX_WEIGHTS_BYTES, "weights")?;
        let t = read_bounded(tokenizer, MAX_TOKENIZER_BYTES, "tokenizer")?;
        Model::from_bytes(&w, &t)
    }

    /// The model installed in `dir`, if any (`Ok(None)`: none installed).
    pub fn installed(dir: &Path) -> Result<Option<Model>, String> {
        match read_installed(dir)? {
            None => Ok(None),
            Some(files) => files.parse().map(Some),
        }
    }

    pub fn from_bytes(weights: &[u8], tokenizer: &[u8]) -> Result<Model, String> {
        check_tokenizer_json(tokenizer)?;
        let tok = tokenizers::Tokenizer::from_bytes(tokenizer)
            .map_err(|e| format!("the tokenizer is not a Hugging Face tokenizer.json this build can read: {e}"))?;
        let st = safetensors::SafeTensors::deserialize(weights)
            .map_err(|e| format!("the weights are not a valid safetensors file: {e}"))?;
        let names = st.names();
        let name = match names.as_slice() {
            [one] => one.to_string(),
            _ => names
                .iter()
                .find(|n| ["embedding", "embeddings", "embedding.weight", "embeddings.weight"].contains(n))
                .map(|n| n.to_string())
                .ok_or_else(|| {
                    format!(
                        "the weights hold {} tensors and none is named \"embeddings\": not a static embedding model",
                        names.len()
                    )
                })?,
        };
        let view = st.tensor(&name).map_err(|e| format!("tensor {name:?}: {e}"))?;
        let shape = view.shape();
        let [rows, width] = *shape else {
            return Err(format!("tensor {name:?} has shape {shape:?}; a static model is one table [tokens, width]"));
        };
        if !(1000..=MAX_ROWS).contains(&rows) || width < MIN_DIM {
            return Err(format!(
                "tensor {name:?} is [{rows}, {width}]; expected 1,000 to {MAX_ROWS} tokens of at least {MIN_DIM} values"
            ));
        }
        let vocab = tok.get_vocab_size(true);
        if vocab > rows {
            return Err(format!("the tokenizer knows {vocab} tokens but the weights have rows for only {rows}"));
        }
        let dim = width.min(MAX_DIM);
        let data = view.data();
        let mut table = Vec::with_capacity(rows * dim);
        let mut scales = Vec::with_capacity(rows);
        let mut row = vec![0f32; dim];
        use safetensors::Dtype;
        let size = match view.dtype() {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => return Err(format!("tensor {name:?} holds {other:?}; expected F32, F16 or BF16")),
        };
        for r in 0..rows {
            for (c, slot) in row.iter_mut().enumerate() {
                let at = (r * width + c) * size;
                let b = &data[at..at + size];
                let v = match view.dtype() {
                    Dtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                    Dtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                    _ => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                };
                if !v.is_finite() {
                    return Err(format!("tensor {name:?} holds a value that is not a finite number (row {r})"));
                }
                *slot = v;
            }
            let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
            let k = if max > 0.0 { 127.0 / max } else { 0.0 };
            table.extend(row.iter().map(|x| (x * k).round() as i8));
            scales.push(if max > 0.0 { max / 127.0 } else { 0.0 });
        }
        let mut h = Sha256::new();
        h.update(weights);
        h.update(tokenizer);
        let mut id = [0u8; 16];
        id.copy_from_slice(&h.finalize()[..16]);
        let model = Model { tokenizer: tok, table, scales, rows, dim, id, words: RefCell::default() };
        match model.embed("a memory that checks the model works") {
            Some(_) => Ok(model),
            None => Err("the model gives no usable vector for plain English text".into()),
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn id(&self) -> [u8; 16] {
        self.id
    }
    pub fn info(&self) -> ModelInfo {
        ModelInfo { dim: self.dim, tokens: self.rows, id: self.id.iter().take(6).map(|b| format!("{b:02x}")).collect() }
    }

    /// The text's unit vector, quantised to `i8` (`None`: no token has a
    /// vector, e.g. empty text).
    pub fn embed(&self, text: &str) -> Option<Vec<i8>> {
        let mut sum = vec![0f32; self.dim];
        let mut n = 0usize;
        let mut guard = self.words.borrow_mut();
        let words = &mut *guard;
        for word in text.split_whitespace().take(MAX_WORDS) {
            let word = cut(word, MAX_WORD_BYTES);
            let key = std::hash::BuildHasher::hash_one(&words.key, word);
            let (at, len) = match words.slots.get(&key) {
                Some(&e) => e,
                None => {
                    // Each word alone: SentencePiece pieces never cross a
                    // space, so this is how the whole text would split, and
                    // a word repeats often enough to be looked up once.
                    let enc = self.tokenizer.encode(word, false);
                    let ids = enc.as_ref().map_or(&[][..], |e| e.get_ids());
                    if words.slots.len() >= WORD_CACHE {
                        words.slots.clear();
                        words.ids.clear();
                    }
                    let e = (words.ids.len() as u32, ids.len().min(usize::from(u16::MAX)) as u16);
                    words.ids.extend_from_slice(&ids[..usize::from(e.1)]);
                    words.slots.insert(key, e);
                    e
                }
            };
            let ids = &words.ids[at as usize..at as usize + usize::from(len)];
            for &id in ids.iter() {
                let id = id as usize;
                if id < self.rows {
                    let row = &self.table[id * self.dim..(id + 1) * self.dim];
                    let k = self.scales[id];
                    for (s, &v) in sum.iter_mut().zip(row) {
                        *s += k * f32::from(v);
                    }
                    n += 1;
                }
            }
        }
        if n == 0 {
            return None;
        }
        quantise(&sum)
    }
}

/// What the `tokenizers` crate would panic on rather than refuse (found by
/// `fuzz/src/bin/model_files.rs`): JSON that does not parse inside some
/// fields (its decoder field is read with `expect`), and the `Precompiled`
/// normalizer, whose binary char map is decoded with `expect`. Refused here
/// first, with a reason; a static model's tokenizer never needs either.
fn check_tokenizer_json(bytes: &[u8]) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("the tokenizer is not a Hugging Face tokenizer.json this build can read: {e}"))?;
    let mut stack = vec![&v];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(m) => {
                if m.get("type").and_then(|t| t.as_str()) == Some("Precompiled") {
                    return Err("the tokenizer uses a \"Precompiled\" normalizer (a SentencePiece char map), which \
                                this build does not read"
                        .into());
                }
                stack.extend(m.values());
            }
            serde_json::Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    Ok(())
}

/// Unit-length `v` scaled so its largest component is ±127.
fn quantise(v: &[f32]) -> Option<Vec<i8>> {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if !(max.is_finite() && max > 0.0) {
        return None;
    }
    let k = 127.0 / max;
    Some(v.iter().map(|x| (x * k).round().clamp(-127.0, 127.0) as i8).collect())
}

/// Cosine of two quantised vectors given their norms.
pub fn cosine(a: &[i8], b: &[i8], norm_a: f32, norm_b: f32) -> f32 {
    dot(a, b) as f32 / (norm_a * norm_b)
}

/// In lanes of 16 so that the compiler keeps it in vector registers (every
/// recall runs it once per memory).
fn dot(a: &[i8], b: &[i8]) -> i32 {
    let mut lanes = [0i32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: i32 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            lanes[i] += i32::from(i16::from(x[i]) * i16::from(y[i]));
        }
    }
    lanes.iter().sum::<i32>() + tail
}

pub fn norm(v: &[i8]) -> f32 {
    (v.iter().map(|&x| i32::from(x) * i32::from(x)).sum::<i32>() as f32).sqrt()
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The installed model's files, read but not parsed: the storer reads them
/// before its sandbox closes the home and parses them after, inside it.
pub struct ModelFiles {
    weights: Vec<u8>,
    tokenizer: Vec<u8>,
}

impl ModelFiles {
    pub fn parse(self) -> Result<Model, String> {
        Model::from_bytes(&self.weights, &self.tokenizer)
    }
}

/// The files of the model installed in `dir` (`Ok(None)`: none installed).
pub fn read_installed(dir: &Path) -> Result<Option<ModelFiles>, String> {
    let (w, t) = (dir.join(WEIGHTS_FILE), dir.join(TOKENIZER_FILE));
    if !w.exists() && !t.exists() {
        return Ok(None);
    }
    let weights = read_bounded(&w, MAX_WEIGHTS_BYTES, "weights")?;
    let tokenizer = read_bounded(&t, MAX_TOKENIZER_BYTES, "tokenizer")?;
    Ok(Some(ModelFiles { weights, tokenizer }))
}

/// A model file, at most `max` bytes. Opened without blocking, so a FIFO or
/// device put in its place is refused instead of hanging unlock or install.
pub fn read_bounded(path: &Path, max: u64, what: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::File::options()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read the {what} file {}: {e}", path.display()))?;
    let meta = f.metadata().map_err(|e| format!("cannot inspect {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let len = meta.len();
    if len > max {
        return Err(format!(
            "the {what} file {} is {} MB; at most {} MB is accepted",
            path.display(),
            len >> 20,
            max >> 20
        ));
    }
    let mut out = Vec::with_capacity(len as usize);
    f.take(max + 1).read_to_end(&mut out).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if out.len() as u64 > max {
        return Err(format!("the {what} file {} grew past {} MB while read", path.display(), max >> 20));
    }
    Ok(out)
}

/// A tiny model for tests: a word-level vocabulary whose words come in
/// pairs of synonyms (close vectors), each pair far from the others.
#[cfg(test)]
pub(crate) fn synonyms_model(seed: f32) -> Model {
    const WORDS: &[&str] = &["dog", "puppy", "beach", "seaside", "tax", "invoice", "kernel", "driver"];
    let mut vocab = String::from("\"[UNK]\":0");
    for (i, w) in WORDS.iter().enumerate() {
        vocab.push_str(&format!(",\"{w}\":{}", i + 1));
    }
    let tok = format!(
        r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
        "pre_tokenizer":{{"type":"Whitespace"}},"post_processor":null,"decoder":null,
        "model":{{"type":"WordLevel","vocab":{{{vocab}}},"unk_token":"[UNK]"}}}}"#
    );
    let (rows, dim) = (1000, 16);
    let mut table = vec![0f32; rows * dim];
    for r in 0..rows {
        let row = &mut table[r * dim..(r + 1) * dim];
        match r {
            0 => row.fill(0.01),
            1..=8 => {
                // Synonym pairs share an axis; the second word leans a little.
                row[(r - 1) / 2] = 1.0;
                row[8 + (r - 1) % 8] = 0.2 + seed;
            }
            _ => row[r % dim] = 0.5,
        }
    }
    let data: Vec<u8> = table.iter().flat_map(|v| v.to_le_bytes()).collect();
    Model::from_bytes(&tests::st("F32", &[rows, dim], &data), tok.as_bytes()).expect("test model")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The CI model, when `.ci/run` (or a developer) put it here.
    pub fn test_model() -> Option<Model> {
        let dir = std::env::var_os("IAI_MCP_TEST_MODEL")?;
        let dir = PathBuf::from(dir);
        Some(Model::from_files(&dir.join(WEIGHTS_FILE), &dir.join(TOKENIZER_FILE)).expect("test model loads"))
    }

    #[test]
    fn dot_products_are_exact() {
        let mut r = 7u32;
        let mut next = || {
            r = r.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (r >> 16) as i8
        };
        for len in [0, 1, 15, 16, 17, 128, 131] {
            let a: Vec<i8> = (0..len).map(|_| next()).collect();
            let b: Vec<i8> = (0..len).map(|_| next()).collect();
            let want: i32 = a.iter().zip(&b).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum();
            assert_eq!(dot(&a, &b), want, "{len}");
        }
        let full = vec![-128i8; 256];
        assert_eq!(dot(&full, &full), 256 * 128 * 128);
        let t = std::time::Instant::now();
        let rows: Vec<i8> = (0..100_000 * 128).map(|_| next()).collect();
        let q: Vec<i8> = (0..128).map(|_| next()).collect();
        let t1 = std::time::Instant::now();
        let s: i64 = rows.chunks_exact(128).map(|r| i64::from(dot(&q, r))).sum();
        eprintln!("100k dots of 128: {:?} (setup {:?}) {s}", t1.elapsed(), t1 - t);
    }

    #[test]
    fn paraphrases_are_closer_than_unrelated_text() {
        let Some(m) = test_model() else {
            eprintln!("IAI_MCP_TEST_MODEL not set: skipped");
            return;
        };
        let t = std::time::Instant::now();
        let a = m.embed("My dog loves running on the beach").expect("vector");
        let b = m.embed("the puppy enjoys sprinting along the seaside").expect("vector");
        let c = m.embed("quarterly tax filing deadline for the accounting department").expect("vector");
        eprintln!("3 embeds: {:?}", t.elapsed());
        let (na, nb, nc) = (norm(&a), norm(&b), norm(&c));
        let ab = cosine(&a, &b, na, nb);
        let ac = cosine(&a, &c, na, nc);
        eprintln!("ab {ab} ac {ac}");
        assert!(ab > ac + 0.1, "paraphrase {ab} vs unrelated {ac}");
    }

    /// A safetensors file with one tensor.
    pub(crate) fn st(dtype: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
        let head = format!(r#"{{"emb":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[0,{}]}}}}"#, data.len());
        let mut out = (head.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn bad_model_files_are_refused_with_a_reason() {
        let tok = MINI_TOKENIZER.as_bytes();
        let table = |rows: usize, cols: usize, v: f32| -> Vec<u8> {
            (0..rows * cols).flat_map(|i| (v + i as f32 * 1e-3).to_le_bytes()).collect()
        };
        let good = st("F32", &[1000, 16], &table(1000, 16, 0.5));
        assert!(Model::from_bytes(&good, tok).is_ok());
        let cases: Vec<(Vec<u8>, &[u8], &str)> = vec![
            (good.clone(), br#"{"not": "a tokenizer"}"#, "not a Hugging Face tokenizer.json"),
            (good.clone(), b"\xff\xfe", "not a Hugging Face tokenizer.json"),
            (Vec::new(), tok, "not a valid safetensors file"),
            (b"\xff\xff\xff\xff\xff\xff\xff\x7f".to_vec(), tok, "not a valid safetensors file"),
            (good[..good.len() - 1].to_vec(), tok, "not a valid safetensors file"),
            (b"\x02\x00\x00\x00\x00\x00\x00\x00{}".to_vec(), tok, "hold 0 tensors"),
            (st("F32", &[16000], &table(1000, 16, 0.5)), tok, "is one table"),
            (st("F32", &[10, 16], &table(10, 16, 0.5)), tok, "expected 1,000"),
            (st("F32", &[1000, 8], &table(1000, 8, 0.5)), tok, "expected 1,000"),
            (st("I32", &[1000, 16], &table(1000, 16, 0.5)), tok, "expected F32, F16 or BF16"),
            (st("F32", &[1000, 16], &table(1000, 16, f32::NAN)), tok, "not a finite number"),
            (st("F32", &[1000, 16], &table(1000, 16, 0.0)[..]).iter().map(|_| 0).collect(), tok, "safetensors"),
        ];
        for (i, (w, t, want)) in cases.into_iter().enumerate() {
            let e = Model::from_bytes(&w, t).expect_err("refused");
            assert!(e.contains(want), "case {i}: {e}");
        }
        // What the tokenizers crate would panic on (found by fuzzing) is refused first.
        let bad_decoder = MINI_TOKENIZER.replace(r#""decoder":null"#, r#""decoder":eull"#);
        let e = Model::from_bytes(&good, bad_decoder.as_bytes()).expect_err("refused");
        assert!(e.contains("not a Hugging Face tokenizer.json"), "{e}");
        let precompiled = MINI_TOKENIZER
            .replace(r#""normalizer":null"#, r#""normalizer":{"type":"Precompiled","precompiled_charsmap":"AAAA"}"#);
        let e = Model::from_bytes(&good, precompiled.as_bytes()).expect_err("refused");
        assert!(e.contains("Precompiled"), "{e}");
        // All-zero vectors: nothing to rank with.
        let zero = st("F32", &[1000, 16], &vec![0u8; 1000 * 16 * 4]);
        assert!(Model::from_bytes(&zero, tok).expect_err("refused").contains("no usable vector"));
    }

    /// A word-level tokenizer.json: enough to exercise the checks.
    const MINI_TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
        "model":{"type":"WordLevel","vocab":{"[UNK]":0,"dog":1,"cat":2},"unk_token":"[UNK]"}}"#;
}
