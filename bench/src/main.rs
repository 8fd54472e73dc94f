//! `iai-bench`: measures iai-mcp through its real processes.
//!
//! ```text
//! iai-bench seal  [--iters N]                       seal+unseal: socketpair vs in-process
//! iai-bench store [--records N] [--queries Q] [--json]   capture/recall latency, unlock time, RSS
//! iai-bench forget [--records N] [--forgets F] [--json]  erasing forget vs a capture, same store
//! ```
//!
//! Figures are medians and percentiles of many runs, and each comparison has
//! its baseline measured in the same run: these machines are shared and noisy.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use iai_keyholder::client::KeyholderClient;
use iai_keyholder::wire::{SealItem, UnsealItem};
use iai_keyholder::{Dek, Field, KeyFile, KeyId, Passphrase, RowId, Sealer};
use iai_storer::client::Client;
use iai_storer::proto::{CaptureRequest, RecallRequest};

const PASS: &str = "benchmark passphrase";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse().unwrap_or_else(|_| die(&format!("{name} needs a number"))))
            .unwrap_or(default)
    };
    let json = args.iter().any(|a| a == "--json");
    match args.first().map(String::as_str) {
        Some("seal") => seal(flag("--iters", 20_000), json),
        Some("store") => {
            let corpus = match args.iter().position(|a| a == "--corpus").and_then(|i| args.get(i + 1)) {
                None => Corpus::Synthetic,
                Some(c) if c == "synthetic" => Corpus::Synthetic,
                Some(c) if c == "realistic" => Corpus::realistic(),
                Some(c) => die(&format!("--corpus {c}: use synthetic or realistic")),
            };
            let keep = args.iter().any(|a| a == "--keep");
            let model = args.iter().position(|a| a == "--model").and_then(|i| args.get(i + 1)).map(PathBuf::from);
            store(flag("--records", 10_000), flag("--queries", 1_000), &corpus, model.as_deref(), json, keep)
        }
        Some("mcp") => mcp(flag("--records", 10_000), flag("--queries", 1_000), json),
        Some("hooks") => hooks(flag("--records", 10_000), flag("--runs", 200), json),
        Some("forget") => forget(flag("--records", 10_000), flag("--forgets", 50), json),
        Some("lifecycle") => lifecycle(flag("--records", 10_000), flag("--runs", 3), json),
        Some("history") => history(flag("--transcripts", 200), flag("--turns", 100), json),
        Some("locomo") => {
            let dir =
                args.get(1).filter(|a| !a.starts_with("--")).unwrap_or_else(|| die("locomo needs the data directory"));
            let model = args.iter().position(|a| a == "--model").and_then(|i| args.get(i + 1)).map(PathBuf::from);
            let sessions = !args.iter().any(|a| a == "--no-sessions");
            locomo(Path::new(dir), model.as_deref(), sessions, json)
        }
        Some("sandbox-cost") => {
            let other =
                args.iter().position(|a| a == "--unsandboxed-bin").and_then(|i| args.get(i + 1)).unwrap_or_else(|| {
                    die("sandbox-cost needs --unsandboxed-bin PATH (see scripts/bench-sandbox-cost.sh)")
                });
            sandbox_cost(Path::new(other), flag("--records", 10_000), flag("--queries", 1_000), json)
        }
        _ => {
            eprintln!(
                "usage: iai-bench seal [--iters N] [--json] | iai-bench store [--records N] [--queries Q] [--json]"
            );
            std::process::exit(2);
        }
    }
}

fn die(msg: &str) -> ! {
    eprintln!("iai-bench: {msg}");
    std::process::exit(2)
}

/// Percentiles of a sample, in microseconds.
struct Summary {
    p50: f64,
    p95: f64,
    p99: f64,
    n: usize,
}

fn summarize(mut xs: Vec<Duration>) -> Summary {
    xs.sort();
    let at = |q: f64| xs[((xs.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e6;
    Summary { p50: at(0.50), p95: at(0.95), p99: at(0.99), n: xs.len() }
}

/// Seeded SplitMix64, so every run generates the same text.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const VOCAB: &[&str] = &[
    "deploy",
    "staging",
    "production",
    "rollback",
    "migration",
    "schema",
    "index",
    "latency",
    "budget",
    "invoice",
    "customer",
    "ticket",
    "kernel",
    "driver",
    "compiler",
    "linker",
    "tokio",
    "runtime",
    "thread",
    "mutex",
    "vault",
    "secret",
    "rotate",
    "password",
    "certificate",
    "renewal",
    "meeting",
    "Thursday",
    "decision",
    "review",
    "merge",
    "branch",
    "release",
    "changelog",
    "benchmark",
    "regression",
    "profile",
    "allocation",
    "cache",
    "eviction",
    "Zürich",
    "naïve",
    "café",
    "Москва",
    "данные",
    "сервер",
    "東京",
    "会議",
    "データ",
    "서버",
    "데이터",
    "مرحبا",
    "خادم",
    "Αθήνα",
    "δεδομένα",
    "שרת",
    "नमस्ते",
    "सर्वर",
    "🚀",
    "✅",
];

/// A memory of 20 B to 4 KiB, skewed towards short ones, in mixed scripts.
fn memory_text(rng: &mut Rng, i: usize) -> String {
    let target = match rng.below(10) {
        0..=5 => 20 + rng.below(200),
        6..=8 => 200 + rng.below(1000),
        _ => 1200 + rng.below(2800),
    };
    let mut s = format!("note {i}:");
    while s.len() < target {
        s.push(' ');
        s.push_str(VOCAB[rng.below(VOCAB.len())]);
    }
    let mut cut = target.min(4096);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s
}

fn seal(iters: usize, json: bool) {
    let dek = Dek::from_bytes([7; 32]);
    let key_id = KeyId([1; 16]);
    let mut rows = Vec::new();
    for &(size, batch) in &[(200usize, 1usize), (200, 64), (4096, 1), (4096, 64)] {
        let plain = vec![b'x'; size];
        let ops = (iters / batch).max(10) * batch;

        // Baseline: the same AES-GCM work in-process (seal then open).
        let aead = Aes256Gcm::new((&[7u8; 32]).into());
        let nonce = [3u8; 12];
        let ad = [0u8; 51];
        let t = Instant::now();
        for _ in 0..ops {
            let ct = aead.encrypt(Nonce::from_slice(&nonce), Payload { msg: &plain, aad: &ad }).expect("seal");
            let pt = aead.decrypt(Nonce::from_slice(&nonce), Payload { msg: &ct, aad: &ad }).expect("open");
            std::hint::black_box(pt);
        }
        let local = ops as f64 / t.elapsed().as_secs_f64();

        // The real keyholder serve loop at the far end of a real socketpair.
        let (mine, theirs) = UnixStream::pair().expect("socketpair");
        let keys = iai_keyholder::daemon::Keys { current: Sealer::new(&dek, key_id), previous: None };
        let server = std::thread::spawn(move || iai_keyholder::daemon::serve(theirs, keys, false));
        let mut kh = KeyholderClient::hello(mine, None).expect("hello");
        let t = Instant::now();
        for _ in 0..ops / batch {
            let items = (0..batch)
                .map(|_| SealItem { field: Field::RecordBody, row: RowId([5; 16]), plain: plain.clone() })
                .collect();
            let (blobs, _) = kh.seal(items).expect("seal");
            let items = blobs
                .into_iter()
                .map(|blob| UnsealItem { field: Field::RecordBody, row: RowId([5; 16]), blob })
                .collect();
            std::hint::black_box(kh.unseal(items).expect("unseal"));
        }
        let remote = ops as f64 / t.elapsed().as_secs_f64();
        drop(kh);
        let _ = server.join();
        rows.push((size, batch, local, remote));
    }
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|&(size, batch, local, remote)| serde_json::json!({"bytes": size, "batch": batch, "in_process_per_s": local, "socketpair_per_s": remote, "ratio": local / remote}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return;
    }
    println!("seal+unseal round trips per second ({iters} ops per row)");
    println!("{:>6} {:>6} {:>16} {:>16} {:>8}", "bytes", "batch", "in-process/s", "socketpair/s", "ratio");
    for (size, batch, local, remote) in rows {
        println!("{size:>6} {batch:>6} {local:>16.0} {remote:>16.0} {:>7.1}x", local / remote);
    }
}

fn iai_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe.with_file_name("iai-mcp");
    if !bin.exists() {
        die(&format!("{} not found: build it with `cargo build --release` first", bin.display()));
    }
    bin
}

fn run(bin: &Path, home: &Path, args: &[&str], pass: bool) -> Duration {
    let t = Instant::now();
    let mut all: Vec<&str> = args.to_vec();
    if pass {
        all.extend(["--passphrase-fd", "0"]);
    }
    let mut child = Command::new(bin)
        .args(&all)
        .env("IAI_MCP_HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn iai-mcp");
    if pass {
        let _ = child.stdin.take().expect("stdin").write_all(format!("{PASS}\n").as_bytes());
    }
    let status = child.wait().expect("wait");
    if !status.success() {
        die(&format!("iai-mcp {args:?} failed"));
    }
    t.elapsed()
}

/// A fresh home under /tmp, initialised and unlocked by `bin`, with a client
/// of its storer. The directory goes away when the returned guard drops.
fn unlocked_store(bin: &Path) -> (tempfile::TempDir, PathBuf, Client) {
    unlocked_store_with(bin, None)
}

/// [`unlocked_store`] with the embedding model in `model` (a directory with
/// `weights.safetensors` and `tokenizer.json`) installed before unlock.
fn unlocked_store_with(bin: &Path, model: Option<&Path>) -> (tempfile::TempDir, PathBuf, Client) {
    let dir = tempfile::Builder::new().prefix("iai-bench").tempdir_in("/tmp").expect("tempdir");
    let home = dir.path().join("h");
    run(bin, &home, &["init"], true);
    if let Some(m) = model {
        let (w, t) = (m.join("weights.safetensors"), m.join("tokenizer.json"));
        let (w, t) = (w.to_str().expect("utf-8 path"), t.to_str().expect("utf-8 path"));
        run(bin, &home, &["model", "install", w, t], false);
    }
    run(bin, &home, &["unlock"], true);
    let client = Client::connect(&iai_policy::Home::new(home.clone()).expect("home")).expect("connect");
    (dir, home, client)
}

/// Peak resident set (VmHWM) of a process, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<f64>().ok()))
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Captures `records` synthetic memories in batches of 200.
fn fill(client: &mut Client, rng: &mut Rng, records: usize) {
    let mut i = 0;
    while i < records {
        let n = (records - i).min(200);
        let items = (0..n).map(|k| CaptureRequest { text: memory_text(rng, i + k), ..Default::default() }).collect();
        client.capture_batch(iai_storer::proto::CaptureBatchRequest { items, cursor: None }).expect("capture batch");
        i += n;
    }
}

/// The cost of an erasing forget (delete, rebuild of the file, WAL
/// truncated) in a store of `records`, against a durable capture into the
/// same store, interleaved so both see the same machine.
fn forget(records: usize, forgets: usize, json: bool) {
    let bin = iai_bin();
    let (_dir, home, mut client) = unlocked_store(&bin);
    let mut rng = Rng(7);
    fill(&mut client, &mut rng, records);
    let db_mib = std::fs::metadata(iai_policy::Home::new(home.clone()).expect("home").db())
        .map(|m| m.len() as f64 / (1 << 20) as f64)
        .unwrap_or(f64::NAN);
    let (mut erase, mut capture) = (Vec::new(), Vec::new());
    for k in 0..forgets {
        let t = Instant::now();
        let id = client
            .capture(CaptureRequest {
                text: format!("to be forgotten {k} {}", memory_text(&mut rng, k)),
                ..Default::default()
            })
            .expect("capture")
            .id;
        capture.push(t.elapsed());
        let t = Instant::now();
        let r = client.forget(&id).expect("forget");
        erase.push(t.elapsed());
        assert!(r.erased, "forget did not erase");
    }
    drop(client);
    run(&bin, &home, &["lock"], false);
    let (e, c) = (summarize(erase), summarize(capture));
    if json {
        let s = |x: &Summary| serde_json::json!({"p50_us": x.p50, "p95_us": x.p95, "p99_us": x.p99, "n": x.n});
        let v = serde_json::json!({"records": records, "db_mib": db_mib, "forget": s(&e), "capture": s(&c),
                                   "forget_over_capture_p50": e.p50 / c.p50});
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return;
    }
    println!("erasing forget in a store of {records} records ({db_mib:.1} MiB database)");
    println!("{:<28} {:>10} {:>10} {:>10} {:>8}", "", "p50", "p95", "p99", "n");
    for (name, x) in [("forget latency (ms)", &e), ("capture latency (ms)", &c)] {
        println!("{name:<28} {:>10.2} {:>10.2} {:>10.2} {:>8}", x.p50 / 1e3, x.p95 / 1e3, x.p99 / 1e3, x.n);
    }
    println!("forget / capture (p50)       {:>10.1}x", e.p50 / c.p50);
}

/// The texts a store benchmark captures and the cues it recalls with.
enum Corpus {
    /// The 60-word vocabulary: small, and kind to memory.
    Synthetic,
    /// Zipf-distributed words from a real dictionary, with identifiers.
    Realistic(Realistic),
}

/// Words of a dictionary a Debian package ships (`wamerican`:
/// /usr/share/dict/words), drawn by a Zipf law (s = 1.07, as word counts of
/// English text follow), in turns of realistic lengths; one turn in five
/// carries identifiers as transcripts do (paths, hashes, UUIDs, code, URLs),
/// about 3 % of all tokens.
struct Realistic {
    words: Vec<String>,
    /// Cumulative Zipf weights, for drawing a rank by binary search.
    cdf: Vec<f64>,
}

const DICTIONARY: &str = "/usr/share/dict/words";

impl Corpus {
    fn realistic() -> Corpus {
        let text = std::fs::read_to_string(DICTIONARY).unwrap_or_else(|e| {
            die(&format!("{DICTIONARY}: {e} (install the Debian package wamerican; .ci/run does)"))
        });
        let mut words: Vec<String> = text
            .lines()
            .filter(|w| w.len() > 1 && w.bytes().all(|b| b.is_ascii_lowercase()))
            .map(str::to_string)
            .collect();
        words.sort();
        words.dedup();
        // A fixed shuffle: rank is not alphabetical order.
        let mut rng = Rng(7);
        for i in (1..words.len()).rev() {
            words.swap(i, rng.below(i + 1));
        }
        let mut cdf = Vec::with_capacity(words.len());
        let mut total = 0.0;
        for rank in 1..=words.len() {
            total += 1.0 / (rank as f64).powf(1.07);
            cdf.push(total);
        }
        Corpus::Realistic(Realistic { words, cdf })
    }

    fn name(&self) -> &'static str {
        match self {
            Corpus::Synthetic => "synthetic",
            Corpus::Realistic(_) => "realistic",
        }
    }

    fn text(&self, rng: &mut Rng, i: usize) -> String {
        match self {
            Corpus::Synthetic => memory_text(rng, i),
            Corpus::Realistic(r) => r.text(rng, i),
        }
    }

    /// A two-word cue: mid-frequency words, as people search.
    fn cue(&self, rng: &mut Rng) -> String {
        match self {
            Corpus::Synthetic => format!("{} {}", VOCAB[rng.below(VOCAB.len())], VOCAB[rng.below(VOCAB.len())]),
            Corpus::Realistic(r) => {
                let mut pick = || r.words[(100 + rng.below(4_900)).min(r.words.len() - 1)].clone();
                format!("{} {}", pick(), pick())
            }
        }
    }
}

impl Realistic {
    fn word(&self, rng: &mut Rng) -> &str {
        let total = *self.cdf.last().expect("words");
        let x = (rng.next() as f64 / u64::MAX as f64) * total;
        let rank = self.cdf.partition_point(|&c| c < x).min(self.words.len() - 1);
        &self.words[rank]
    }

    fn identifier(&self, rng: &mut Rng) -> String {
        let hex = |rng: &mut Rng, n: usize| (0..n).map(|_| format!("{:x}", rng.below(16))).collect::<String>();
        match rng.below(5) {
            0 => format!("src/{}/{}.rs", self.word(rng), self.word(rng)),
            1 => hex(rng, 40),
            2 => format!("{}-{}-4{}-a{}-{}", hex(rng, 8), hex(rng, 4), hex(rng, 3), hex(rng, 3), hex(rng, 12)),
            3 => format!("fn {}_{}(x: u32) -> Result<(), Error>", self.word(rng), self.word(rng)),
            _ => format!("https://{}.example.com/{}?id={}", self.word(rng), self.word(rng), rng.below(100_000)),
        }
    }

    fn text(&self, rng: &mut Rng, i: usize) -> String {
        // Turns: most short, some long, a few very long (tool output pasted back).
        let words = match rng.below(10) {
            0..=5 => 5 + rng.below(35),
            6..=8 => 40 + rng.below(160),
            _ => 200 + rng.below(600),
        };
        let identifiers = if rng.below(5) == 0 { 1 + rng.below(3) } else { 0 };
        let mut s = format!("turn {i}:");
        for w in 0..words {
            s.push(' ');
            if identifiers > 0
                && w % (words / identifiers).max(1) == 0
                && w / (words / identifiers).max(1) < identifiers
            {
                s.push_str(&self.identifier(rng));
            } else {
                s.push_str(self.word(rng));
            }
        }
        s
    }
}

/// Resident set (VmRSS) of a process now, in MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<f64>().ok()))
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// `keep`: leave the (locked) store behind for profiling, and say where.
fn store(records: usize, queries: usize, corpus: &Corpus, model: Option<&Path>, json: bool, keep: bool) {
    let bin = iai_bin();
    let (dir, home, mut client) = unlocked_store_with(&bin, model);
    if keep {
        eprintln!("keeping the store: IAI_MCP_HOME={} (passphrase {PASS:?})", home.display());
        let _ = dir.keep();
    }
    let ihome = iai_policy::Home::new(home.clone()).expect("home");
    let mut rng = Rng(42);

    let mut capture = Vec::with_capacity(records);
    let mut text_bytes = 0usize;
    let started = Instant::now();
    for i in 0..records {
        let text = corpus.text(&mut rng, i);
        text_bytes += text.len();
        let t = Instant::now();
        client.capture(CaptureRequest { text, ..Default::default() }).expect("capture");
        capture.push(t.elapsed());
        if !json && (i + 1) % 10_000 == 0 {
            eprintln!("  captured {} of {records} ({:.0} s)", i + 1, started.elapsed().as_secs_f64());
        }
    }
    let sustained = records as f64 / started.elapsed().as_secs_f64();

    let mut recall = Vec::with_capacity(queries);
    let mut hits = 0usize;
    for _ in 0..queries {
        let cue = corpus.cue(&mut rng);
        let t = Instant::now();
        let r = client.recall(RecallRequest { cue, limit: Some(10), ..Default::default() }).expect("recall");
        recall.push(t.elapsed());
        hits += r.hits.len();
    }
    let stats = client.stats().expect("stats");
    let (storer_rss, keyholder_rss) = (peak_rss_mib(stats.storer_pid), peak_rss_mib(stats.keyholder_pid));
    drop(client);
    run(&bin, &home, &["lock"], false);

    // Unlock to ready, three times from the index snapshot and three times
    // rebuilding the index (the snapshot dropped first), alternated so both
    // see the same machine load; Argon2 alone measured in-process. The
    // storer's resident set right after unlock (both ways), and after 1,000
    // recalls on a store loaded from the snapshot.
    let (mut unlock, mut rebuild) = (Vec::new(), Vec::new());
    let (mut load_snapshot, mut load_rebuild) = (Vec::new(), Vec::new());
    let (mut rss_unlocked, mut rss_rebuilt, mut rss_recalled) = (f64::NAN, f64::NAN, f64::NAN);
    for round in 0..6 {
        let rebuilt = round % 2 == 1;
        if rebuilt {
            rusqlite::Connection::open(ihome.db())
                .and_then(|c| c.execute_batch("DROP TABLE IF EXISTS index_snapshot"))
                .expect("drop the snapshot");
        }
        let took = run(&bin, &home, &["unlock"], true);
        let mut c = Client::connect(&ihome).expect("connect");
        let s = c.stats().expect("stats");
        assert_eq!(s.records as usize, records);
        assert_eq!(s.index.from_snapshot, !rebuilt, "round {round}: {:?}", s.index);
        let load = Duration::from_millis(s.index.load_ms);
        if rebuilt {
            rebuild.push(took);
            load_rebuild.push(load);
            rss_rebuilt = rss_mib(s.storer_pid);
        } else {
            unlock.push(took);
            load_snapshot.push(load);
        }
        if round == 4 {
            rss_unlocked = rss_mib(s.storer_pid);
            for _ in 0..1_000 {
                let cue = corpus.cue(&mut rng);
                c.recall(RecallRequest { cue, limit: Some(10), ..Default::default() }).expect("recall");
            }
            rss_recalled = rss_mib(s.storer_pid);
        }
        drop(c);
        run(&bin, &home, &["lock"], false);
    }
    let (rb, ls, lr) = (summarize(rebuild), summarize(load_snapshot), summarize(load_rebuild));
    let kf = KeyFile::parse(&std::fs::read(ihome.key()).expect("key")).expect("parse key");
    let mut argon = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        kf.unwrap(&Passphrase::new(PASS.into())).expect("unwrap");
        argon.push(t.elapsed());
    }
    let (c, r, u, a) = (summarize(capture), summarize(recall), summarize(unlock), summarize(argon));
    if json {
        let s = |x: &Summary| serde_json::json!({"p50_us": x.p50, "p95_us": x.p95, "p99_us": x.p99, "n": x.n});
        let v = serde_json::json!({
            "records": records, "corpus": corpus.name(), "text_mb": text_bytes as f64 / 1e6,
            "model": model.is_some(),
            "capture": s(&c), "captures_per_s": sustained, "recall": s(&r),
            "recall_hits_mean": hits as f64 / queries.max(1) as f64,
            "unlock_total": s(&u), "argon2": s(&a), "unlock_minus_argon2_p50_ms": (u.p50 - a.p50) / 1e3,
            "unlock_rebuilding_total": s(&rb), "unlock_rebuilding_minus_argon2_p50_ms": (rb.p50 - a.p50) / 1e3,
            "storer_load_from_snapshot_p50_ms": ls.p50 / 1e3, "storer_load_rebuilding_p50_ms": lr.p50 / 1e3,
            "rebuild_over_snapshot_unlock": (rb.p50 - a.p50) / (u.p50 - a.p50),
            "storer_rss_after_rebuilding_unlock_mib": rss_rebuilt,
            "storer_peak_rss_mib": storer_rss, "keyholder_peak_rss_mib": keyholder_rss,
            "storer_rss_after_unlock_mib": rss_unlocked, "storer_rss_after_1000_recalls_mib": rss_recalled,
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return;
    }
    println!(
        "store of {records} records, {} corpus, {:.1} MB of text (real keyholder + storer, durable captures), {}",
        corpus.name(),
        text_bytes as f64 / 1e6,
        if model.is_some() { "with the embedding model" } else { "no embedding model" }
    );
    println!("{:<28} {:>10} {:>10} {:>10} {:>8}", "", "p50", "p95", "p99", "n");
    for (name, s) in [("capture latency (µs)", &c), ("recall latency (µs)", &r)] {
        println!("{name:<28} {:>10.0} {:>10.0} {:>10.0} {:>8}", s.p50, s.p95, s.p99, s.n);
    }
    for (name, s) in [
        ("unlock to ready (ms)", &u),
        ("  rebuilding the index (ms)", &rb),
        ("  of which Argon2id (ms)", &a),
        ("storer load, snapshot (ms)", &ls),
        ("storer load, rebuild (ms)", &lr),
    ] {
        println!("{name:<28} {:>10.1} {:>10.1} {:>10.1} {:>8}", s.p50 / 1e3, s.p95 / 1e3, s.p99 / 1e3, s.n);
    }
    println!("sustained captures/s         {sustained:>10.0}");
    println!(
        "unlock minus Argon2 (p50)    {:>10.1} ms from the snapshot, {:.1} ms rebuilding ({:.1}x)",
        (u.p50 - a.p50) / 1e3,
        (rb.p50 - a.p50) / 1e3,
        (rb.p50 - a.p50) / (u.p50 - a.p50)
    );
    println!("peak RSS storer / keyholder  {storer_rss:>10.1} / {keyholder_rss:.1} MiB");
    println!(
        "storer RSS after unlock      {rss_unlocked:>10.1} MiB (rebuilding: {rss_rebuilt:.1}); after 1,000 recalls \
         {rss_recalled:.1} MiB"
    );
    println!("mean hits per recall         {:>10.1}", hits as f64 / queries.max(1) as f64);
}

/// The same captures and recalls through the storer socket and through the
/// MCP shim (rmcp's client over `iai-mcp mcp`), interleaved so both see the
/// same machine load; reports the shim's overhead as a ratio.
fn mcp(records: usize, queries: usize, json: bool) {
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::TokioChildProcess;
    use rmcp::ServiceExt;

    let bin = iai_bin();
    let (_dir, home, mut client) = unlocked_store(&bin);
    let mut rng = Rng(42);
    for i in 0..records {
        client.capture(CaptureRequest { text: memory_text(&mut rng, i), ..Default::default() }).expect("capture");
        if !json && (i + 1) % 10_000 == 0 {
            eprintln!("  captured {} of {records}", i + 1);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (direct_c, shim_c, direct_r, shim_r) = rt.block_on(async {
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.arg("mcp").env("IAI_MCP_HOME", &home);
        let session = ().serve(TokioChildProcess::new(cmd).expect("spawn shim")).await.expect("mcp session");
        let (mut dc, mut sc, mut dr, mut sr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..queries {
            let text = memory_text(&mut rng, records + 2 * i);
            let t = Instant::now();
            client.capture(CaptureRequest { text, ..Default::default() }).expect("capture");
            dc.push(t.elapsed());
            let text = memory_text(&mut rng, records + 2 * i + 1);
            let args = serde_json::json!({"text": text}).as_object().cloned().expect("args");
            let t = Instant::now();
            session
                .call_tool(CallToolRequestParams::new("memory_capture").with_arguments(args))
                .await
                .expect("mcp capture");
            sc.push(t.elapsed());

            let cue = format!("{} {}", VOCAB[rng.below(VOCAB.len())], VOCAB[rng.below(VOCAB.len())]);
            let t = Instant::now();
            client.recall(RecallRequest { cue: cue.clone(), limit: Some(10), ..Default::default() }).expect("recall");
            dr.push(t.elapsed());
            let args = serde_json::json!({"cue": cue, "limit": 10}).as_object().cloned().expect("args");
            let t = Instant::now();
            session
                .call_tool(CallToolRequestParams::new("memory_recall").with_arguments(args))
                .await
                .expect("mcp recall");
            sr.push(t.elapsed());
        }
        let _ = session.cancel().await;
        (dc, sc, dr, sr)
    });
    drop(client);
    run(&bin, &home, &["lock"], false);
    let rows = [
        ("capture, storer socket", summarize(direct_c)),
        ("capture, MCP shim", summarize(shim_c)),
        ("recall, storer socket", summarize(direct_r)),
        ("recall, MCP shim", summarize(shim_r)),
    ];
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(n, s)| serde_json::json!({"path": n, "p50_us": s.p50, "p95_us": s.p95, "p99_us": s.p99, "n": s.n}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"records": records, "rows": v})).expect("json")
        );
        return;
    }
    println!("MCP shim vs storer socket at {records} records (same run, interleaved)");
    println!("{:<26} {:>10} {:>10} {:>10} {:>8}", "latency (µs)", "p50", "p95", "p99", "n");
    for (n, s) in &rows {
        println!("{n:<26} {:>10.0} {:>10.0} {:>10.0} {:>8}", s.p50, s.p95, s.p99, s.n);
    }
    println!(
        "shim/socket ratio p50: capture {:.2}x, recall {:.2}x",
        rows[1].1.p50 / rows[0].1.p50,
        rows[3].1.p50 / rows[2].1.p50
    );
}

/// Capture and recall with and without the sandbox, interleaved in one run:
/// two homes, one served by the normal binary and one by a build with the
/// `unsandboxed-bench` feature.
fn sandbox_cost(unsandboxed: &Path, records: usize, queries: usize, json: bool) {
    let bins = [iai_bin(), unsandboxed.to_path_buf()];
    let mut homes = Vec::new();
    let mut clients = Vec::new();
    for bin in &bins {
        let (dir, home, mut c) = unlocked_store(bin);
        let degraded = !c.stats().expect("stats").degraded.is_empty();
        if degraded != (bin == unsandboxed) {
            die(&format!("{} is not the build expected (degraded: {degraded})", bin.display()));
        }
        homes.push((dir, home));
        clients.push(c);
    }
    let mut rng = Rng(7);
    for i in 0..records {
        let text = memory_text(&mut rng, i);
        for c in &mut clients {
            c.capture(CaptureRequest { text: text.clone(), ..Default::default() }).expect("capture");
        }
    }
    let mut cap = [Vec::new(), Vec::new()];
    let mut rec = [Vec::new(), Vec::new()];
    for i in 0..queries {
        let text = memory_text(&mut rng, records + i);
        let cue = format!("{} {}", VOCAB[rng.below(VOCAB.len())], VOCAB[rng.below(VOCAB.len())]);
        // Alternate which build goes first so neither always runs on a warmer cache.
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            let t = Instant::now();
            clients[k].capture(CaptureRequest { text: text.clone(), ..Default::default() }).expect("capture");
            cap[k].push(t.elapsed());
            let t = Instant::now();
            clients[k]
                .recall(RecallRequest { cue: cue.clone(), limit: Some(10), ..Default::default() })
                .expect("recall");
            rec[k].push(t.elapsed());
        }
    }
    drop(clients);
    for (bin, (_, home)) in bins.iter().zip(&homes) {
        run(bin, home, &["lock"], false);
    }
    let [cs, cu] = cap.map(summarize);
    let [rs, ru] = rec.map(summarize);
    if json {
        let s = |x: &Summary| serde_json::json!({"p50_us": x.p50, "p95_us": x.p95, "n": x.n});
        let v = serde_json::json!({"records": records, "capture": {"sandboxed": s(&cs), "unsandboxed": s(&cu)},
            "recall": {"sandboxed": s(&rs), "unsandboxed": s(&ru)}});
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return;
    }
    println!("sandbox cost at {records} records (same run, interleaved)");
    println!("{:<24} {:>10} {:>10} {:>14}", "latency (µs)", "p50", "p95", "ratio p50/p95");
    for (name, s, u) in [("capture", &cs, &cu), ("recall", &rs, &ru)] {
        println!("{:<24} {:>10.0} {:>10.0}", format!("{name}, sandboxed"), s.p50, s.p95);
        println!(
            "{:<24} {:>10.0} {:>10.0} {:>7.2} / {:.2}",
            format!("{name}, unsandboxed"),
            u.p50,
            u.p95,
            s.p50 / u.p50,
            s.p95 / u.p95
        );
    }
}

/// "1:56 pm on 8 May, 2023" → milliseconds since the epoch (UTC).
fn locomo_date(s: &str) -> Option<i64> {
    let (time, date) = s.split_once(" on ")?;
    let (hm, ampm) = time.trim().split_once(' ')?;
    let (h, m) = hm.split_once(':')?;
    let (mut h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    match ampm.to_ascii_lowercase().as_str() {
        "pm" if h != 12 => h += 12,
        "am" if h == 12 => h = 0,
        _ => {}
    }
    // The day as a recall cue's date is read (storer/src/cue.rs).
    let [days] = iai_storer::cue::days(date)[..] else { return None };
    Some(((days * 24 + h) * 60 + m) * 60_000)
}

#[derive(Default, Clone, Copy)]
struct Score {
    n: usize,
    hit5: f64,
    hit10: f64,
    rec5: f64,
    rec10: f64,
}

impl Score {
    fn add(&mut self, o: &Score) {
        self.n += o.n;
        self.hit5 += o.hit5;
        self.hit10 += o.hit10;
        self.rec5 += o.rec5;
        self.rec10 += o.rec10;
    }
    fn json(&self) -> serde_json::Value {
        let n = self.n.max(1) as f64;
        serde_json::json!({"questions": self.n, "hit@5": self.hit5 / n, "hit@10": self.hit10 / n,
            "recall@5": self.rec5 / n, "recall@10": self.rec10 / n})
    }
    fn row(&self, name: &str) -> String {
        let n = self.n.max(1) as f64;
        format!(
            "{name:<14} {:>5} {:>7.3} {:>7.3} {:>9.3} {:>9.3}",
            self.n,
            self.hit5 / n,
            self.hit10 / n,
            self.rec5 / n,
            self.rec10 / n
        )
    }
}

/// LoCoMo recall quality, following the protocol in the data's README: one
/// fresh store per conversation, every turn captured in order as
/// "<speaker>: <text>" (plus the image caption) at its session's date, each
/// question of category 1-4 with evidence recalled by its text.
fn locomo(dir: &Path, model: Option<&Path>, with_sessions: bool, json: bool) {
    let bin = iai_bin();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| die(&format!("{}: {e}", dir.display())))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        die(&format!("no conversation files (*.json) in {}", dir.display()));
    }
    let mut total = Score::default();
    let mut per_cat = [Score::default(); 5];
    let mut rows = Vec::new();
    for file in &files {
        let name = file.file_stem().and_then(|s| s.to_str()).unwrap_or("?").to_string();
        if !json {
            eprintln!("  {name}: ingesting");
        }
        let conv: serde_json::Value = serde_json::from_slice(&std::fs::read(file).expect("read conversation"))
            .unwrap_or_else(|e| die(&format!("{}: {e}", file.display())));
        let (_tmp, home, mut client) = unlocked_store_with(&bin, model);
        let mut id_to_dia: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
        let obj = conv.as_object().expect("conversation object");
        let mut sessions: Vec<usize> = obj.keys().filter_map(|k| k.strip_prefix("session_")?.parse().ok()).collect();
        sessions.sort_unstable();
        sessions.dedup();
        for s in sessions {
            let Some(turns) = obj.get(&format!("session_{s}")).and_then(|v| v.as_array()) else { continue };
            let at = obj.get(&format!("session_{s}_date_time")).and_then(|v| v.as_str()).and_then(locomo_date);
            let mut items = Vec::new();
            let mut dias = Vec::new();
            for t in turns {
                let mut text =
                    format!("{}: {}", t["speaker"].as_str().unwrap_or("?"), t["text"].as_str().unwrap_or(""));
                if let Some(c) = t["blip_caption"].as_str() {
                    text.push_str(&format!(" [shared an image: {c}]"));
                }
                items.push(CaptureRequest {
                    text,
                    session: with_sessions.then(|| format!("{name}/session_{s}")),
                    created_at: at,
                    ..Default::default()
                });
                dias.push(t["dia_id"].as_str().unwrap_or("").to_string());
            }
            for (chunk, chunk_dias) in items.chunks(200).zip(dias.chunks(200)) {
                let r = client
                    .capture_batch(iai_storer::proto::CaptureBatchRequest { items: chunk.to_vec(), cursor: None })
                    .expect("capture batch");
                for (res, dia) in r.results.into_iter().zip(chunk_dias) {
                    id_to_dia.entry(res.id).or_default().push(dia.clone());
                }
            }
        }
        let mut conv_score = Score::default();
        for q in conv["qa"].as_array().into_iter().flatten() {
            let cat = q["category"].as_u64().unwrap_or(0) as usize;
            let evidence: Vec<String> = q["evidence"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str())
                .flat_map(|e| e.split(';').map(|s| s.trim().to_string()))
                .filter(|e| !e.is_empty())
                .collect();
            if !(1..=4).contains(&cat) || evidence.is_empty() {
                continue;
            }
            let cue = q["question"].as_str().unwrap_or("").to_string();
            let hits =
                client.recall(RecallRequest { cue, limit: Some(10), ..Default::default() }).expect("recall").hits;
            let ranked: Vec<&Vec<String>> = hits.iter().filter_map(|h| id_to_dia.get(&h.id)).collect();
            let found = |k: usize| -> usize {
                evidence.iter().filter(|e| ranked.iter().take(k).any(|d| d.contains(e))).count()
            };
            let (f5, f10) = (found(5), found(10));
            let s = Score {
                n: 1,
                hit5: f64::from(u8::from(f5 > 0)),
                hit10: f64::from(u8::from(f10 > 0)),
                rec5: f5 as f64 / evidence.len() as f64,
                rec10: f10 as f64 / evidence.len() as f64,
            };
            conv_score.add(&s);
            per_cat[cat].add(&s);
        }
        drop(client);
        run(&bin, &home, &["lock"], false);
        total.add(&conv_score);
        rows.push((name, conv_score));
    }
    if json {
        let v = serde_json::json!({
            "model": model.is_some(), "sessions": with_sessions,
            "overall": total.json(),
            "per_category": (1..=4).map(|c| (c.to_string(), per_cat[c].json())).collect::<serde_json::Map<_, _>>(),
            "per_conversation": rows.iter().map(|(n, s)| (n.clone(), s.json())).collect::<serde_json::Map<_, _>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return;
    }
    println!(
        "LoCoMo recall quality ({} conversations; {}, {})",
        rows.len(),
        if model.is_some() { "with the embedding model" } else { "no embedding model" },
        if with_sessions { "session ids passed" } else { "no session ids" }
    );
    println!("{:<14} {:>5} {:>7} {:>7} {:>9} {:>9}", "", "n", "hit@5", "hit@10", "recall@5", "recall@10");
    println!("{}", total.row("overall"));
    for (c, s) in per_cat.iter().enumerate().skip(1) {
        println!("{}", s.row(&format!("category {c}")));
    }
    for (n, s) in &rows {
        println!("{}", s.row(n));
    }
}

/// Hook latency, process start to exit: `iai-mcp hook capture` with one new
/// turn in the transcript, and `iai-mcp hook session-start`, on a store of
/// `records` memories.
fn hooks(records: usize, runs: usize, json: bool) {
    use std::io::Write as _;
    let bin = iai_bin();
    let (dir, home, mut client) = unlocked_store(&bin);
    let mut rng = Rng(11);
    let mut i = 0;
    while i < records {
        let items: Vec<CaptureRequest> = (i..(i + 200).min(records))
            .map(|k| CaptureRequest {
                text: memory_text(&mut rng, k),
                project: Some("/work/app".into()),
                ..Default::default()
            })
            .collect();
        i += items.len();
        client.capture_batch(iai_storer::proto::CaptureBatchRequest { items, cursor: None }).expect("batch");
    }
    let user = dir.path().join("user");
    let projects = user.join(".claude/projects/-work-app");
    std::fs::create_dir_all(&projects).expect("mkdir");
    let transcript = projects.join("s.jsonl");
    std::fs::write(&transcript, b"").expect("transcript");
    let hook = |event: &str, input: &serde_json::Value| -> Duration {
        let t = Instant::now();
        let mut child = Command::new(&bin)
            .args(["hook", event])
            .env("IAI_MCP_HOME", &home)
            .env("HOME", &user)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("hook");
        let _ = child.stdin.take().expect("stdin").write_all(input.to_string().as_bytes());
        child.wait().expect("wait");
        t.elapsed()
    };
    let input = serde_json::json!({"session_id": "s", "transcript_path": transcript, "cwd": "/work/app", "hook_event_name": "Stop"});
    let mut capture = Vec::new();
    for r in 0..runs {
        let line = serde_json::json!({"type": "user", "uuid": format!("u{r}"), "message": {"content": memory_text(&mut rng, records + r)}});
        let mut f = std::fs::OpenOptions::new().append(true).open(&transcript).expect("open");
        writeln!(f, "{line}").expect("append");
        drop(f);
        capture.push(hook("capture", &input));
    }
    let start_input = serde_json::json!({"session_id": "s", "cwd": "/work/app", "source": "startup"});
    let start: Vec<Duration> = (0..runs).map(|_| hook("session-start", &start_input)).collect();
    let stored = client.stats().expect("stats").records as usize;
    drop(client);
    run(&bin, &home, &["lock"], false);
    if stored != records + runs {
        die(&format!("expected {} records after the capture hooks, found {stored}", records + runs));
    }
    let (c, s) = (summarize(capture), summarize(start));
    if json {
        let f = |x: &Summary| serde_json::json!({"p50_us": x.p50, "p95_us": x.p95, "p99_us": x.p99, "n": x.n});
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"records": records, "capture": f(&c), "session_start": f(&s)})
            )
            .expect("json")
        );
        return;
    }
    println!("hook latency, process start to exit, at {records} records");
    println!("{:<30} {:>10} {:>10} {:>10} {:>6}", "(ms)", "p50", "p95", "p99", "n");
    for (n, x) in [("capture of one new turn", &c), ("session start", &s)] {
        println!("{n:<30} {:>10.1} {:>10.1} {:>10.1} {:>6}", x.p50 / 1e3, x.p95 / 1e3, x.p99 / 1e3, x.n);
    }
}

/// Runs `bin args` with `line` on stdin and `env`, failing loudly.
fn run_with(bin: &Path, home: &Path, args: &[&str], line: &str, env: &[(&str, &str)]) -> Duration {
    let t = Instant::now();
    let mut cmd = Command::new(bin);
    cmd.args(args).env("IAI_MCP_HOME", home).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn iai-mcp");
    let _ = child.stdin.take().expect("stdin").write_all(format!("{line}\n").as_bytes());
    if !child.wait().expect("wait").success() {
        die(&format!("iai-mcp {args:?} failed"));
    }
    t.elapsed()
}

/// The key lifecycle's costs on a store of `records`: passwd against the
/// unlock it is made of (both Argon2-bound), backup, export, import and
/// rotate throughput; medians of `runs`, interleaved.
fn lifecycle(records: usize, runs: usize, json: bool) {
    let bin = iai_bin();
    let (_dir, home, mut client) = unlocked_store(&bin);
    fill(&mut client, &mut Rng(11), records);
    drop(client);
    let work = tempfile::Builder::new().prefix("iai-bench-lc").tempdir_in("/tmp").expect("tempdir");
    let export_pass = [("IAI_MCP_EXPORT_PASSPHRASE", "benchmark export passphrase")];
    let (mut passwd, mut unlock, mut backup, mut export, mut import) = (vec![], vec![], vec![], vec![], vec![]);
    let mut rotate = vec![];
    let mut export_bytes = 0u64;
    for r in 0..runs {
        let t = run_with(
            &bin,
            &home,
            &["passwd", "--passphrase-fd", "0"],
            PASS,
            &[("IAI_MCP_NEW_PASSPHRASE", "x-benchmark passphrase")],
        );
        passwd.push(t);
        run_with(
            &bin,
            &home,
            &["passwd", "--passphrase-fd", "0"],
            "x-benchmark passphrase",
            &[("IAI_MCP_NEW_PASSPHRASE", PASS)],
        );
        run(&bin, &home, &["lock"], false);
        unlock.push(run(&bin, &home, &["unlock"], true));
        let dest = work.path().join(format!("backup-{r}"));
        backup.push(run(&bin, &home, &["backup", dest.to_str().expect("utf8")], false));
        let file = work.path().join(format!("export-{r}.age"));
        export.push(run_with(&bin, &home, &["export", "--to", file.to_str().expect("utf8")], "", &export_pass));
        export_bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let (_d, target, _c) = unlocked_store(&bin);
        import.push(run_with(&bin, &target, &["import", file.to_str().expect("utf8")], "", &export_pass));
        run(&bin, &target, &["lock"], false);
        // A whole rotation of the unlocked store: new key, restart, every value re-sealed, old bytes erased.
        rotate.push(run_with(&bin, &home, &["rotate", "--passphrase-fd", "0"], PASS, &[]));
    }
    run(&bin, &home, &["lock"], false);
    let med = |xs: &mut Vec<Duration>| -> f64 {
        xs.sort();
        xs[xs.len() / 2].as_secs_f64()
    };
    let (pw, ul, bk, ex, im) =
        (med(&mut passwd), med(&mut unlock), med(&mut backup), med(&mut export), med(&mut import));
    let ro = med(&mut rotate);
    let mib = export_bytes as f64 / (1 << 20) as f64;
    let v = serde_json::json!({
        "records": records, "runs": runs,
        "passwd_s": pw, "unlock_s": ul, "passwd_over_unlock": pw / ul,
        "backup_s": bk, "backup_records_per_s": records as f64 / bk,
        "export_s": ex, "export_records_per_s": records as f64 / ex, "export_mib": mib, "export_mib_per_s": mib / ex,
        "import_s": im, "import_records_per_s": records as f64 / im,
        "rotate_s": ro, "rotate_records_per_s": records as f64 / ro, "rotate_minus_unlock_s": ro - ul,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        println!("key lifecycle on {records} records (median of {runs})");
        println!("passwd {pw:.2} s; unlock {ul:.2} s (passwd / unlock {:.2})", pw / ul);
        println!("backup {bk:.2} s ({:.0} records/s)", records as f64 / bk);
        println!("export {ex:.2} s ({:.0} records/s, {mib:.1} MiB, {:.1} MiB/s)", records as f64 / ex, mib / ex);
        println!("import {im:.2} s ({:.0} records/s)", records as f64 / im);
        println!("rotate {ro:.2} s ({:.0} records/s; {:.2} s beyond one unlock)", records as f64 / ro, ro - ul);
    }
}

/// `iai-mcp history import` of `transcripts` Claude Code and Codex
/// transcripts of `turns` turns each (synthetic text), against capturing the
/// same transcripts one hook run each into another store, in the same run.
fn history(transcripts: usize, turns: usize, json: bool) {
    let bin = iai_bin();
    let user = tempfile::Builder::new().prefix("iai-bench-user").tempdir_in("/tmp").expect("tempdir");
    let claude = user.path().join(".claude/projects/-work-app");
    let codex = user.path().join(".codex/sessions/2026/10/02");
    std::fs::create_dir_all(&claude).expect("mkdir");
    std::fs::create_dir_all(&codex).expect("mkdir");
    let mut rng = Rng(21);
    let mut paths = Vec::new();
    let mut bytes = 0u64;
    for t in 0..transcripts {
        let mut out = String::new();
        let (path, session) = if t % 2 == 0 {
            (claude.join(format!("s{t}.jsonl")), format!("s{t}"))
        } else {
            out.push_str(
                &serde_json::json!({"type": "session_meta", "payload": {"id": format!("x{t}"), "cwd": "/work/lib"}})
                    .to_string(),
            );
            out.push('\n');
            (codex.join(format!("rollout-x{t}.jsonl")), format!("x{t}"))
        };
        for i in 0..turns {
            let text = memory_text(&mut rng, t * turns + i);
            let line = if t % 2 == 0 {
                serde_json::json!({"type": if i % 2 == 0 { "user" } else { "assistant" }, "uuid": format!("{t}-{i}"),
                    "sessionId": session, "cwd": "/work/app", "timestamp": "2026-10-01T09:00:00.000Z",
                    "message": {"id": format!("m{t}-{i}"), "role": if i % 2 == 0 { "user" } else { "assistant" },
                                "content": [{"type": "text", "text": text}]}})
            } else {
                let (role, kind) = if i % 2 == 0 { ("user", "input_text") } else { ("assistant", "output_text") };
                serde_json::json!({"timestamp": "2026-10-02T10:00:02.000Z", "type": "response_item",
                    "payload": {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}})
            };
            out.push_str(&line.to_string());
            out.push('\n');
        }
        bytes += out.len() as u64;
        std::fs::write(&path, out).expect("write transcript");
        paths.push((path, session));
    }
    let env_run = |home: &Path, args: &[&str], input: Option<String>| -> Duration {
        let t = Instant::now();
        let mut child = Command::new(&bin)
            .args(args)
            .env("IAI_MCP_HOME", home)
            .env("HOME", user.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn");
        let _ = child.stdin.take().expect("stdin").write_all(input.unwrap_or_default().as_bytes());
        if !child.wait().expect("wait").success() {
            die(&format!("iai-mcp {args:?} failed"));
        }
        t.elapsed()
    };
    let (_a, import_home, mut import_client) = unlocked_store(&bin);
    let import = env_run(&import_home, &["history", "import"], None);
    let imported = import_client.stats().expect("stats").records as usize;
    let (_b, hook_home, mut hook_client) = unlocked_store(&bin);
    let t = Instant::now();
    for (path, session) in &paths {
        let input = serde_json::json!({"session_id": session, "transcript_path": path, "cwd": "/work/app", "hook_event_name": "Stop"});
        env_run(&hook_home, &["hook", "capture"], Some(input.to_string()));
    }
    let hooks = t.elapsed();
    let hooked = hook_client.stats().expect("stats").records as usize;
    drop((import_client, hook_client));
    run(&bin, &import_home, &["lock"], false);
    run(&bin, &hook_home, &["lock"], false);
    if imported != transcripts * turns || hooked != imported {
        die(&format!("expected {} turns; import stored {imported}, hooks {hooked}", transcripts * turns));
    }
    let (i, h) = (import.as_secs_f64(), hooks.as_secs_f64());
    let mb = bytes as f64 / 1e6;
    let v = serde_json::json!({
        "transcripts": transcripts, "turns": transcripts * turns, "mb": mb,
        "import_s": i, "import_turns_per_s": imported as f64 / i, "import_mb_per_s": mb / i,
        "hooks_s": h, "hooks_turns_per_s": hooked as f64 / h, "import_over_hooks": h / i,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        println!("history import of {transcripts} transcripts, {} turns, {mb:.1} MB", transcripts * turns);
        println!("import {i:.2} s ({:.0} turns/s, {:.1} MB/s)", imported as f64 / i, mb / i);
        println!(
            "one hook run per transcript {h:.2} s ({:.0} turns/s); import is {:.1}x faster",
            hooked as f64 / h,
            h / i
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn locomo_dates() {
        // 2023-05-08 13:56 UTC
        assert_eq!(super::locomo_date("1:56 pm on 8 May, 2023"), Some(1_683_554_160_000));
        assert_eq!(super::locomo_date("12:05 am on 1 January, 2024"), Some(1_704_067_500_000));
        assert_eq!(super::locomo_date("nonsense"), None);
    }
}
