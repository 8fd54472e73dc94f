//! The sealed index snapshot: unlock loads it instead of rebuilding the
//! index, and recall is the same either way; a snapshot that is missing,
//! stale, damaged, mixed or from another store costs only time; a forget
//! takes the snapshot with the record.

use rusqlite::{params, Connection};
use serde_json::Value;

use iai_storer::client::Client;
use iai_storer::proto::{CaptureBatchRequest, CaptureRequest, ContradictRequest, RecallRequest, Role, Tier};

use crate::support::{assert_ok, kill9, wait_gone, Rng, TestHome};

const WORDS: &[&str] = &[
    "kernel",
    "parser",
    "socket",
    "ledger",
    "invoice",
    "cluster",
    "sandbox",
    "rollback",
    "latency",
    "schema",
    "migration",
    "tenant",
    "billing",
    "cache",
    "replica",
    "quorum",
    "payload",
    "webhook",
    "cursor",
    "tokenizer",
];

fn text(rng: &mut Rng, i: usize) -> String {
    let mut t = format!("note{i} about");
    for _ in 0..(20 + rng.next() % 40) {
        t.push(' ');
        t.push_str(rng.pick(WORDS));
    }
    t
}

/// A store with 600 memories in three sessions, some reinforced, one
/// contradicted, two forgotten; locked (which writes the snapshot).
fn store() -> (TestHome, Vec<String>) {
    let h = TestHome::init_unlocked();
    let mut c = h.client();
    let mut rng = Rng(0x5a9);
    let mut ids = Vec::new();
    for chunk in 0..6 {
        let items = (0..100)
            .map(|j| {
                let i = chunk * 100 + j;
                CaptureRequest {
                    text: text(&mut rng, i),
                    session: Some(format!("session-{}", i % 3)),
                    project: (i % 2 == 0).then(|| "/work/app".to_string()),
                    role: if i % 2 == 0 { Role::User } else { Role::Assistant },
                    ..Default::default()
                }
            })
            .collect();
        let r = c.capture_batch(CaptureBatchRequest { items, cursor: None }).expect("batch");
        ids.extend(r.results.into_iter().map(|r| r.id));
    }
    c.reinforce(ids[10..20].to_vec()).expect("reinforce");
    c.contradict(ContradictRequest {
        id: ids[3].clone(),
        text: "note3 was wrong: the quorum is five".into(),
        tier: Tier::Semantic,
        ..Default::default()
    })
    .expect("contradict");
    c.forget(&ids[7]).expect("forget");
    c.forget(&ids[8]).expect("forget");
    drop(c);
    assert_ok(&h.run(&["lock"]), "lock");
    (h, ids)
}

const CUES: &[&str] = &["quorum", "kernel parser", "note3", "webhook replica latency", "note7", "note250 invoice"];

/// What recall answers for every cue (scores rounded: recency moves with the clock).
/// (id, score × 1000, reinforced, superseded by, session) of each hit, per cue.
type Answers = Vec<Vec<(String, i64, u32, Option<String>, Option<String>)>>;

fn answers(c: &mut Client) -> Answers {
    CUES.iter()
        .map(|cue| {
            let r =
                c.recall(RecallRequest { cue: (*cue).into(), limit: Some(30), ..Default::default() }).expect("recall");
            r.hits
                .into_iter()
                .map(|h| (h.id, (h.score * 1e3).round() as i64, h.reinforced, h.superseded_by, h.session))
                .collect()
        })
        .collect()
}

fn db(h: &TestHome) -> Connection {
    Connection::open(h.root.join("store/memory.db")).expect("open the database")
}

/// (part, snapshot id, sealed bytes)
type Part = (i64, Vec<u8>, Vec<u8>);

fn parts(h: &TestHome) -> Vec<Part> {
    let conn = db(h);
    let mut stmt = conn.prepare("SELECT part, snap, blob FROM index_snapshot ORDER BY part").expect("snapshot table");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).expect("parts").map(|p| p.expect("part")).collect()
}

fn has_snapshot(h: &TestHome) -> bool {
    db(h)
        .query_row("SELECT count(*) FROM sqlite_master WHERE name = 'index_snapshot'", [], |r| r.get::<_, i64>(0))
        .expect("schema")
        > 0
}

fn index(s: &Value) -> &Value {
    &s["index"]
}

#[test]
fn unlock_loads_the_snapshot_and_recall_is_the_same_as_after_a_rebuild() {
    let (h, _) = store();
    assert!(parts(&h).len() >= 2, "the test store's snapshot should span several parts");
    // Rebuilt (no snapshot): the reference answers.
    db(&h).execute_batch("DROP TABLE index_snapshot").expect("drop");
    h.unlock();
    let s = h.status();
    assert_eq!(index(&s)["from_snapshot"], false, "{s:#}");
    assert_eq!(index(&s)["checked"], 599);
    let rebuilt = answers(&mut h.client());
    for (i, a) in rebuilt.iter().enumerate() {
        // note7 was forgotten.
        assert_eq!(a.is_empty(), CUES[i] == "note7", "{}: {a:?}", CUES[i]);
    }
    assert_ok(&h.run(&["lock"]), "lock");
    assert!(has_snapshot(&h), "lock writes a snapshot");

    h.unlock();
    let s = h.status();
    assert_eq!(index(&s)["from_snapshot"], true, "{s:#}");
    assert_eq!(index(&s)["checked"], 0, "nothing changed since the snapshot: {s:#}");
    assert_eq!(s["records"], 599);
    assert_eq!(s["integrity_problems"], 0);
    assert_eq!(answers(&mut h.client()), rebuilt, "recall from the snapshot equals recall after a rebuild");
    let text = String::from_utf8_lossy(&h.run(&["status"]).stdout).to_string();
    assert!(text.contains("index: loaded from its sealed snapshot"), "{text}");

    // Nothing but unlocks since: locking does not write the same snapshot
    // again (the unlocks' events are read from the file at the next unlock).
    let before = parts(&h);
    assert_ok(&h.run(&["lock"]), "lock");
    assert!(parts(&h) == before, "an unchanged snapshot is not rewritten");
    h.unlock();
    let s = h.status();
    assert_eq!((index(&s)["from_snapshot"].clone(), index(&s)["checked"].clone()), (true.into(), 0.into()), "{s:#}");
    assert_eq!(answers(&mut h.client()), rebuilt);
    // One capture is a change: the next lock writes a new snapshot, and the
    // unlock after it loads that one with nothing to unseal.
    let mut c = h.client();
    c.capture(CaptureRequest { text: "one more note about the quorum".into(), ..Default::default() }).expect("capture");
    drop(c);
    assert_ok(&h.run(&["lock"]), "lock");
    assert!(parts(&h)[0].1 != before[0].1, "a changed store's snapshot is written again");
    h.unlock();
    let s = h.status();
    assert_eq!((index(&s)["from_snapshot"].clone(), index(&s)["checked"].clone()), (true.into(), 0.into()), "{s:#}");
    assert_eq!(s["records"], 600);
}

/// Damaged, mixed, cut, foreign: never used, said so, nothing else reported,
/// recall unchanged.
#[test]
fn a_damaged_or_foreign_snapshot_is_not_used_and_recall_is_unchanged() {
    let (h, _) = store();
    let good = parts(&h);
    assert!(good.len() >= 2);
    // Another store's snapshot (another key).
    let (other, _) = store();
    let foreign = parts(&other);
    drop(other);
    // An older snapshot of this store, to mix parts with.
    h.unlock();
    h.client()
        .capture(CaptureRequest { text: "one more note about the kernel".into(), ..Default::default() })
        .expect("c");
    assert_ok(&h.run(&["lock"]), "lock");
    let newer = parts(&h);
    assert_ne!(newer[0].1, good[0].1, "a new snapshot has a new id");
    let reference_newer = {
        h.unlock();
        let a = answers(&mut h.client());
        assert_ok(&h.run(&["lock"]), "lock");
        a
    };

    let put = |h: &TestHome, rows: &[Part]| {
        let conn = db(h);
        conn.execute("DELETE FROM index_snapshot", []).expect("empty");
        for (part, snap, blob) in rows {
            conn.execute("INSERT INTO index_snapshot(part, snap, blob) VALUES(?1, ?2, ?3)", params![part, snap, blob])
                .expect("insert");
        }
    };
    let mut flipped = newer.clone();
    let mid = flipped[1].2.len() / 2;
    flipped[1].2[mid] ^= 1;
    let mut mixed = newer.clone();
    mixed[1] = (good[1].0, newer[1].1.clone(), good[1].2.clone());
    let mut relabelled = newer.clone();
    relabelled[0].1 = good[0].1.clone();
    let mut swapped = newer.clone();
    swapped.swap(0, 1);
    for (i, p) in swapped.iter_mut().enumerate() {
        p.0 = i as i64;
    }
    let cut = newer[..newer.len() - 1].to_vec();
    let cases: Vec<(&str, Vec<Part>, &str)> = vec![
        ("a byte of a part flipped", flipped, "does not authenticate"),
        ("a part of an older snapshot put in", mixed, "does not authenticate"),
        ("the parts' id changed", relabelled, "not those of one snapshot"),
        ("two parts swapped", swapped, "does not authenticate"),
        ("the last part cut off", cut, "does not authenticate"),
        ("another store's snapshot", foreign, "does not authenticate"),
    ];
    for (name, rows, why) in cases {
        put(&h, &rows);
        h.unlock();
        let s = h.status();
        assert_eq!(index(&s)["from_snapshot"], false, "{name}: {s:#}");
        let said = index(&s)["snapshot_not_used"].as_str().unwrap_or_default().to_string();
        assert!(said.contains(why), "{name}: said {said:?}");
        assert_eq!(s["integrity_problems"], 0, "{name}: {s:#}");
        assert_eq!(answers(&mut h.client()), reference_newer, "{name}: recall changed");
        assert_ok(&h.run(&["lock"]), "lock");
        // The lock wrote a good one again.
        h.unlock();
        assert_eq!(index(&h.status())["from_snapshot"], true, "{name}: a good snapshot follows");
        assert_ok(&h.run(&["lock"]), "lock");
    }
}

/// A snapshot older than the file (the store was killed, or an old one put
/// back): the records it does not vouch for are checked one by one, and the
/// store is exactly what a rebuild gives.
#[test]
fn a_stale_snapshot_is_completed_from_the_file() {
    let (h, ids) = store();
    let early = parts(&h);
    h.unlock();
    let mut c = h.client();
    let mut added = Vec::new();
    for i in 0..40 {
        let r = c
            .capture(CaptureRequest { text: format!("late note{i} about the replica quorum"), ..Default::default() })
            .expect("capture");
        added.push(r.id);
    }
    c.reinforce(ids[100..105].to_vec()).expect("reinforce");
    c.contradict(ContradictRequest { id: ids[200].clone(), text: "note200 is outdated".into(), ..Default::default() })
        .expect("contradict");
    drop(c);
    // Killed: no snapshot at exit (and too few changes for the idle writer).
    let (kh, storer) = h.pids();
    kill9(storer);
    kill9(kh);
    assert!(wait_gone(storer, std::time::Duration::from_secs(5)));
    assert_eq!(parts(&h)[0].1, early[0].1, "the snapshot is the one written before these changes");
    h.unlock();
    let s = h.status();
    assert_eq!(index(&s)["from_snapshot"], true, "{s:#}");
    // 40 new, 5 reinforced, the contradicted one and its new fact.
    assert_eq!(index(&s)["checked"], 40 + 5 + 2, "{s:#}");
    assert_eq!(s["records"], 599 + 41);
    assert_eq!(s["integrity_problems"], 0, "{s:#}");
    let from_stale = answers(&mut h.client());
    let hits = h.client().recall(RecallRequest { cue: "late note7".into(), limit: Some(3), ..Default::default() });
    assert_eq!(hits.expect("recall").hits[0].id, added[7]);
    assert_ok(&h.run(&["lock"]), "lock");

    // The same store rebuilt gives the same answers.
    db(&h).execute_batch("DROP TABLE index_snapshot").expect("drop");
    h.unlock();
    assert_eq!(index(&h.status())["from_snapshot"], false);
    assert_eq!(answers(&mut h.client()), from_stale);
    assert_ok(&h.run(&["lock"]), "lock");

    // The first snapshot put back: just as stale, same result.
    let conn = db(&h);
    conn.execute_batch("DELETE FROM index_snapshot").expect("empty");
    for (part, snap, blob) in &early {
        conn.execute("INSERT INTO index_snapshot(part, snap, blob) VALUES(?1, ?2, ?3)", params![part, snap, blob])
            .expect("insert");
    }
    drop(conn);
    h.unlock();
    let s = h.status();
    assert_eq!(index(&s)["from_snapshot"], true, "{s:#}");
    assert_eq!(s["integrity_problems"], 0, "{s:#}");
    assert_eq!(answers(&mut h.client()), from_stale);
}

/// A forget removes the snapshot in the same write as the record (so the
/// erasure takes its words too); the next one is written without them.
#[test]
fn a_forget_takes_the_snapshot_with_the_record() {
    let (h, _) = store();
    h.unlock();
    let mut c = h.client();
    let id = c
        .capture(CaptureRequest { text: "zygomorphic-canary appears once".into(), ..Default::default() })
        .expect("capture")
        .id;
    drop(c);
    assert_ok(&h.run(&["lock"]), "lock");
    assert!(has_snapshot(&h));
    h.unlock();
    h.client().forget(&id).expect("forget");
    assert!(!has_snapshot(&h), "the snapshot left the file with the forgotten record");
    assert_eq!(index(&h.status())["snapshot_bytes"], 0);
    assert_ok(&h.run(&["lock"]), "lock");
    assert!(has_snapshot(&h), "lock wrote a new one");
    h.unlock();
    let s = h.status();
    assert_eq!(index(&s)["from_snapshot"], true, "{s:#}");
    let r = h.client().recall(RecallRequest { cue: "zygomorphic".into(), ..Default::default() }).expect("recall");
    assert!(r.hits.is_empty(), "the forgotten word is not in the new snapshot: {:?}", r.hits);
}

/// A storer that stays idle after enough changes writes a snapshot by
/// itself: a store killed later (never locked) still unlocks from one.
#[test]
fn an_idle_storer_writes_the_snapshot_before_it_is_ever_locked() {
    let h = TestHome::init_unlocked();
    let mut c = h.client();
    for i in 0..80 {
        c.capture(CaptureRequest { text: format!("idle note{i} about the cluster"), ..Default::default() })
            .expect("capture");
    }
    drop(c);
    assert!(!has_snapshot(&h), "no snapshot yet: the storer was busy");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !has_snapshot(&h) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert!(has_snapshot(&h), "the idle storer wrote a snapshot within 30 s");
    let (kh, storer) = h.pids();
    kill9(storer);
    kill9(kh);
    assert!(wait_gone(storer, std::time::Duration::from_secs(5)));
    h.unlock();
    let s = h.status();
    assert_eq!(index(&s)["from_snapshot"], true, "{s:#}");
    assert_eq!(index(&s)["checked"], 0, "the snapshot held all 80: {s:#}");
    assert_eq!(s["records"], 80);
}

/// Killed while writing the snapshot (at lock), again and again: every
/// acknowledged capture is there at the next unlock, no problem is
/// reported, and a snapshot in the file is always usable (one write, or none).
#[test]
fn a_kill_while_the_snapshot_is_written_loses_nothing() {
    let h = TestHome::init_unlocked();
    let mut rng = Rng(0x7a11);
    let mut total = 0u64;
    let (mut used, mut kept) = (0, 0);
    for round in 0..20 {
        let before = has_snapshot(&h).then(|| parts(&h)[0].1.clone());
        let mut c = h.client();
        let items =
            (0..250).map(|i| CaptureRequest { text: text(&mut rng, round * 1000 + i), ..Default::default() }).collect();
        c.capture_batch(CaptureBatchRequest { items, cursor: None }).expect("batch");
        total += 250;
        drop(c);
        let (kh, storer) = h.pids();
        let lock = h.cmd(&["lock"]).stdout(std::process::Stdio::null()).spawn().expect("lock");
        std::thread::sleep(std::time::Duration::from_millis(rng.next() % 40));
        // Either may have finished stopping already.
        for pid in [storer, kh] {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = lock.wait_with_output();
        assert!(wait_gone(storer, std::time::Duration::from_secs(5)));
        if has_snapshot(&h).then(|| parts(&h)[0].1.clone()) == before {
            kept += 1;
        }
        h.unlock();
        let s = h.status();
        assert_eq!(s["records"], total, "round {round}: {s:#}");
        assert_eq!(s["integrity_problems"], 0, "round {round}: {s:#}");
        assert!(index(&s)["snapshot_not_used"].is_null(), "round {round}: a snapshot in the file is whole: {s:#}");
        if index(&s)["from_snapshot"] == true {
            used += 1;
        }
    }
    eprintln!("killed at lock 20 times: {kept} before the new snapshot committed; {used} unlocks came from a snapshot");
}
