//! Promise 1: nothing derived from a memory is on disk in plaintext.

use std::collections::HashSet;

use iai_storer::proto::{CaptureRequest, CaptureStatus, RecallRequest, Role, Tier};

use crate::support::{assert_ok, Rng, TestHome};

const WORDS: &[&str] = &[
    "deploy",
    "staging",
    "vault",
    "rotate",
    "kernel",
    "budget",
    "Zürich",
    "café",
    "naïve",
    "Москва",
    "пароль",
    "данные",
    "東京",
    "会議",
    "秘密",
    "データ",
    "서울",
    "비밀",
    "مرحبا",
    "سري",
    "Αθήνα",
    "κλειδί",
    "שלום",
    "नमस्ते",
    "🔑",
    "🐤",
    "migration",
    "postgres",
    "customer",
    "invoice",
    "latency",
    "tokenizer",
];

struct Canary {
    text: String,
    cue: String,
    tag: String,
    session: String,
    find_by: String,
}

fn canaries() -> Vec<Canary> {
    let bodies = [
        ("CANARYLATIN7f3a9", "CANARYLATIN7f3a9 the prod api key is sk_live_51HqzTt9 do not share"),
        ("канарейкасекрет4411", "канарейкасекрет4411: пароль от базы — Тигр-Лес-2024"),
        ("金丝雀秘密令牌九八七", "金丝雀秘密令牌九八七 客户的电话号码是一三八零零"),
        ("قناريسري٣٣٢", "قناريسري٣٣٢ رقم الحساب المصرفي للعميل"),
        ("カナリア秘密トークン", "カナリア秘密トークン 顧客の住所は東京都港区"),
        ("CANARYEMOJI2291", "🐤 CANARYEMOJI2291 🔑 personal fact: allergic to penicillin"),
    ];
    bodies
        .iter()
        .enumerate()
        .map(|(i, (token, text))| Canary {
            text: text.to_string(),
            cue: format!("cue-canary-{i}-QXJ"),
            tag: format!("tag-canary-{i}-ZKV"),
            session: format!("session-canary-{i}-MWP"),
            find_by: token.to_string(),
        })
        .collect()
}

fn generated(rng: &mut Rng, i: usize) -> String {
    let n = 8 + (rng.next() % 40) as usize;
    let mut words: Vec<String> = (0..n).map(|_| rng.pick(WORDS).to_string()).collect();
    words.insert((rng.next() % n as u64) as usize, format!("uniq{i:04}x{:08x}", rng.next() as u32));
    words.join(" ")
}

/// Every 16-byte window of every needle, and the short needles whole.
struct Needles {
    windows: HashSet<[u8; 16]>,
    whole: Vec<Vec<u8>>,
}

impl Needles {
    fn find_in(&self, hay: &[u8]) -> Option<String> {
        for w in hay.windows(16) {
            let mut a = [0u8; 16];
            a.copy_from_slice(w);
            if self.windows.contains(&a) {
                return Some(String::from_utf8_lossy(w).into_owned());
            }
        }
        for n in &self.whole {
            if hay.windows(n.len()).any(|w| w == n.as_slice()) {
                return Some(String::from_utf8_lossy(n).into_owned());
            }
        }
        None
    }
}

fn scan(h: &TestHome, needles: &Needles, when: &str) -> usize {
    let files = h.files();
    for f in &files {
        let bytes = std::fs::read(f).expect("read file");
        if let Some(hit) = needles.find_in(&bytes) {
            panic!("{when}: plaintext {hit:?} found in {}", f.display());
        }
    }
    files.len()
}

#[test]
fn thousand_memories_come_back_byte_exact_and_never_touch_disk_in_plaintext() {
    let h = TestHome::init_unlocked();
    let mut client = h.client();
    let mut rng = Rng(0x1a1_3c9);
    let mut needles = Needles { windows: HashSet::new(), whole: Vec::new() };
    let add_text = |needles: &mut Needles, t: &str| {
        for w in t.as_bytes().windows(16) {
            let mut a = [0u8; 16];
            a.copy_from_slice(w);
            needles.windows.insert(a);
        }
    };

    let canaries = canaries();
    for c in &canaries {
        let r = client
            .capture(CaptureRequest {
                text: c.text.clone(),
                cue: Some(c.cue.clone()),
                tags: vec![c.tag.clone()],
                session: Some(c.session.clone()),
                tier: Tier::Semantic,
                role: Role::User,
                ..Default::default()
            })
            .expect("capture canary");
        assert_eq!(r.status, CaptureStatus::Inserted);
        add_text(&mut needles, &c.text);
        for s in [&c.cue, &c.tag, &c.session, &c.find_by] {
            needles.whole.push(s.as_bytes().to_vec());
        }
    }
    let mut texts = Vec::new();
    for i in 0..(1000 - canaries.len()) {
        let text = generated(&mut rng, i);
        client.capture(CaptureRequest { text: text.clone(), ..Default::default() }).expect("capture");
        add_text(&mut needles, &text);
        texts.push(text);
    }
    assert_eq!(client.stats().expect("stats").records, 1000);

    for c in &canaries {
        let hits = client
            .recall(RecallRequest { cue: c.find_by.clone(), limit: Some(5), ..Default::default() })
            .expect("recall")
            .hits;
        let top = hits.first().unwrap_or_else(|| panic!("no hit for {}", c.find_by));
        assert_eq!(top.text.as_bytes(), c.text.as_bytes(), "verbatim text");
        assert_eq!(top.cue.as_deref(), Some(c.cue.as_str()));
        assert_eq!(top.tags, vec![c.tag.clone()]);
        assert_eq!(top.session.as_deref(), Some(c.session.as_str()));
    }
    for (i, t) in texts.iter().enumerate().step_by(97) {
        let token = t.split(' ').find(|w| w.starts_with(&format!("uniq{i:04}x"))).expect("token");
        let hits = client
            .recall(RecallRequest { cue: token.to_string(), limit: Some(1), ..Default::default() })
            .expect("recall")
            .hits;
        assert_eq!(hits[0].text, *t);
    }

    let n = scan(&h, &needles, "while unlocked");
    assert!(n >= 4, "expected .key, the database and its WAL, got {n} files");
    drop(client);
    assert_ok(&h.run(&["lock"]), "lock");
    scan(&h, &needles, "after lock");
}

#[test]
fn forget_leaves_no_ciphertext_in_any_file() {
    let h = TestHome::init_unlocked();
    let mut client = h.client();
    for i in 0..20 {
        client
            .capture(CaptureRequest { text: format!("filler memory number {i} about rotation"), ..Default::default() })
            .expect("capture");
    }
    let secret = "FORGETME-canary: the customer's card ends 4242";
    let id = client.capture(CaptureRequest { text: secret.into(), ..Default::default() }).expect("capture").id;
    let raw_id = *uuid_bytes(&id);
    let db = rusqlite::Connection::open_with_flags(h.home().db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open db");
    let blob: Vec<u8> = db
        .query_row("SELECT body FROM records WHERE id = ?1", [&raw_id[..]], |r| r.get(0))
        .expect("sealed row present");
    drop(db);
    let ciphertext = &blob[29..];
    assert!(ciphertext.len() > 32);

    let out = h.run(&["forget", &id]);
    assert_ok(&out, "forget");
    let hits = client.recall(RecallRequest { cue: "FORGETME".into(), ..Default::default() }).expect("recall").hits;
    assert!(hits.is_empty(), "forgotten memory still recalled");
    for f in h.files() {
        let bytes = std::fs::read(&f).expect("read");
        for w in ciphertext.windows(24) {
            assert!(
                !bytes.windows(24).any(|b| b == w),
                "ciphertext of the forgotten record remains in {}",
                f.display()
            );
        }
    }
    let again = h.run(&["forget", &id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(crate::support::stderr(&again).contains("no memory with id"), "{}", crate::support::stderr(&again));
}

fn uuid_bytes(id: &str) -> Box<[u8; 16]> {
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    Box::new(out)
}
