//! Metadata is authenticated: someone who can write the store's files but has
//! no passphrase edits, deletes, moves or puts back rows with SQLite while the
//! store is locked; at unlock every change is reported (`status`, `audit`) and
//! what was changed is left out of recall, never trusted. A stolen copy shows
//! no times, tiers or roles. A format-1 store (the first release) is upgraded.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use iai_storer::proto::{
    CaptureBatchRequest, CaptureRequest, ContradictRequest, Cursor, EventsRequest, RecallRequest, Role, Tier,
};
use rusqlite::{params, Connection};
use serde_json::Value;

use crate::support::{assert_ok, stdout, TestHome};

/// The store every case starts from, and the ids in it.
struct Base {
    home: PathBuf,
    /// The database as it was after the first four captures.
    early: PathBuf,
    a: String,
    b: String,
    c: String,
    c2: String,
    d: String,
    e: String,
}

const A: &str = "alpha: the build server is called hermes";
const B: &str = "bravo: deploys go out on tuesdays";
const C: &str = "charlie: the office is on floor three";
const C2: &str = "charlie: the office moved to floor five";
const D: &str = "delta: a temporary note to forget";
const E: &str = "echo: the staging database is called nyx";

fn capture(h: &TestHome, text: &str, tier: Tier) -> String {
    let r = CaptureRequest { text: text.into(), tier, session: Some("s1".into()), ..Default::default() };
    h.client().capture(r).expect("capture").id
}

/// Copies a locked home's key and database (with its WAL) to `to`.
fn copy_home(from: &Path, to: &Path) {
    for dir in [to.to_path_buf(), to.join("store"), to.join("run")] {
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    for f in [".key", "store/memory.db", "store/memory.db-wal"] {
        if from.join(f).exists() {
            std::fs::copy(from.join(f), to.join(f)).expect("copy");
            std::fs::set_permissions(to.join(f), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
    }
}

fn lock(h: &TestHome) {
    assert_ok(&h.run(&["lock"]), "lock");
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let h = TestHome::init_unlocked();
        let a = capture(&h, A, Tier::Semantic);
        let b = capture(&h, B, Tier::Episodic);
        let c = capture(&h, C, Tier::Semantic);
        let d = capture(&h, D, Tier::Working);
        lock(&h);
        let keep = tempfile::Builder::new().prefix("iai-early").tempdir_in("/tmp").expect("tempdir").keep();
        copy_home(&h.root, &keep);
        h.unlock();
        let mut cl = h.client();
        assert_eq!(capture(&h, A, Tier::Semantic), a, "a duplicate reinforces");
        cl.reinforce(vec![a.clone(), b.clone()]).expect("reinforce");
        let c2 = cl
            .contradict(ContradictRequest {
                id: c.clone(),
                text: C2.into(),
                tier: Tier::Semantic,
                ..Default::default()
            })
            .expect("contradict")
            .id;
        cl.forget(&d).expect("forget");
        let item = |t: &str| CaptureRequest { text: t.into(), session: Some("s2".into()), ..Default::default() };
        let res = cl
            .capture_batch(CaptureBatchRequest {
                items: vec![item(E), item(E), item(A)],
                cursor: Some(Cursor { key: "transcript".into(), value: "42".into(), from: None }),
            })
            .expect("batch");
        let e = res.results[0].id.clone();
        assert_eq!(res.results[1].id, e);
        assert_eq!(res.results[2].id, a);
        lock(&h);
        let home = tempfile::Builder::new().prefix("iai-base").tempdir_in("/tmp").expect("tempdir").keep();
        copy_home(&h.root, &home);
        Base { home, early: keep.join("store/memory.db"), a, b, c, c2, d, e }
    })
}

/// A fresh copy of the base store, locked.
fn fresh() -> TestHome {
    let h = TestHome::new();
    copy_home(&base().home, &h.root);
    h
}

fn db(h: &TestHome) -> Connection {
    Connection::open(h.root.join("store/memory.db")).expect("open the database")
}

fn blob(conn: &Connection, sql: &str, id: &str) -> Vec<u8> {
    conn.query_row(sql, params![uuid_bytes(id)], |r| r.get(0)).expect("read")
}

fn uuid_bytes(id: &str) -> Vec<u8> {
    uuid::Uuid::parse_str(id).expect("uuid").as_bytes().to_vec()
}

/// Unlocks and returns `status --json`.
fn unlocked_status(h: &TestHome) -> Value {
    h.unlock();
    h.status()
}

/// The problems `status` reports, joined.
fn problems(s: &Value) -> String {
    s["integrity"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" | "))
        .unwrap_or_default()
}

/// Ids recall returns for `cue`.
fn recalled(h: &TestHome, cue: &str) -> Vec<String> {
    let r =
        h.client().recall(RecallRequest { cue: cue.into(), limit: Some(50), ..Default::default() }).expect("recall");
    r.hits.into_iter().map(|h| h.id).collect()
}

/// The untouched store: no problem at all, every fact as written, and the
/// audit passes the check.
#[test]
fn an_untouched_store_verifies_clean_and_keeps_every_fact() {
    let base = base();
    let h = fresh();
    let s = unlocked_status(&h);
    assert_eq!(s["integrity_problems"], 0, "{}", problems(&s));
    assert_eq!(s["unreadable"], 0);
    assert_eq!(s["records"], 5, "{s:#}");
    assert_eq!(s["index"]["from_snapshot"], true, "{s:#}");
    assert_eq!(s["index"]["checked"], 0, "the snapshot vouches for every record: {s:#}");
    let hits = h.client().recall(RecallRequest { cue: "hermes".into(), ..Default::default() }).expect("recall").hits;
    let a = hits.iter().find(|x| x.id == base.a).expect("A recalled");
    assert_eq!(a.reinforced, 3, "duplicate + reinforce + batch duplicate");
    assert_eq!(a.tier, Tier::Semantic);
    let c = h.client().recall(RecallRequest { cue: "office floor".into(), ..Default::default() }).expect("recall").hits;
    let old = c.iter().find(|x| x.id == base.c).expect("C recalled");
    assert_eq!(old.superseded_by.as_deref(), Some(base.c2.as_str()));
    assert_eq!(h.client().get_cursor("transcript").expect("cursor"), Some("42".into()));
    let out = h.run(&["audit", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("audit json");
    let check = report["checks"].as_array().expect("checks").iter().find(|c| c["id"] == "store.integrity").cloned();
    assert_eq!(check.expect("store.integrity check")["status"], "pass", "{report:#}");
    // And again after another lock/unlock cycle with more writes.
    h.client().reinforce(vec![base.b.clone(), base.e.clone()]).expect("reinforce");
    lock(&h);
    let s = unlocked_status(&h);
    assert_eq!(s["integrity_problems"], 0, "{}", problems(&s));
}

/// One tampering of the files: what it does, and what must be reported.
struct Case {
    name: &'static str,
    tamper: fn(&Connection, &Base),
    /// Words of the problem `status` must report.
    reported: &'static str,
    /// Memories that must no longer come back from recall (cue, id).
    left_out: fn(&Base) -> Vec<(&'static str, String)>,
}

fn none(_: &Base) -> Vec<(&'static str, String)> {
    Vec::new()
}

fn exec(conn: &Connection, sql: &str, p: impl rusqlite::Params) {
    let n = conn.execute(sql, p).expect(sql);
    assert!(n > 0, "{sql} changed nothing");
}

fn early(base: &Base) -> Connection {
    Connection::open(&base.early).expect("open the early copy")
}

const CASES: &[Case] = &[
    Case {
        name: "a byte of a body flipped",
        tamper: |c, b| {
            let mut body = blob(c, "SELECT body FROM records WHERE id = ?1", &b.a);
            let mid = body.len() / 2;
            body[mid] ^= 1;
            exec(c, "UPDATE records SET body = ?2 WHERE id = ?1", params![uuid_bytes(&b.a), body]);
        },
        reported: "sealed body does not authenticate",
        left_out: |b| vec![("hermes", b.a.clone())],
    },
    Case {
        name: "two bodies swapped",
        tamper: |c, b| {
            let (x, y) = (
                blob(c, "SELECT body FROM records WHERE id = ?1", &b.a),
                blob(c, "SELECT body FROM records WHERE id = ?1", &b.b),
            );
            exec(c, "UPDATE records SET body = ?2 WHERE id = ?1", params![uuid_bytes(&b.a), y]);
            exec(c, "UPDATE records SET body = ?2 WHERE id = ?1", params![uuid_bytes(&b.b), x]);
        },
        reported: "sealed body does not authenticate",
        left_out: |b| vec![("hermes", b.a.clone()), ("deploys", b.b.clone())],
    },
    Case {
        name: "a state emptied",
        tamper: |c, b| exec(c, "UPDATE records SET state = x'' WHERE id = ?1", params![uuid_bytes(&b.a)]),
        reported: "sealed state is missing",
        left_out: |b| vec![("hermes", b.a.clone())],
    },
    Case {
        name: "two states swapped",
        tamper: |c, b| {
            let (x, y) = (
                blob(c, "SELECT state FROM records WHERE id = ?1", &b.a),
                blob(c, "SELECT state FROM records WHERE id = ?1", &b.b),
            );
            exec(c, "UPDATE records SET state = ?2 WHERE id = ?1", params![uuid_bytes(&b.a), y]);
            exec(c, "UPDATE records SET state = ?2 WHERE id = ?1", params![uuid_bytes(&b.b), x]);
        },
        reported: "sealed state is missing or does not authenticate",
        left_out: |b| vec![("hermes", b.a.clone()), ("deploys", b.b.clone())],
    },
    Case {
        name: "a reinforcement count rolled back to an earlier sealed state",
        tamper: |c, b| {
            let old = blob(&early(b), "SELECT state FROM records WHERE id = ?1", &b.a);
            exec(c, "UPDATE records SET state = ?2 WHERE id = ?1", params![uuid_bytes(&b.a), old]);
        },
        reported: "an earlier copy was put back",
        left_out: |b| vec![("hermes", b.a.clone())],
    },
    Case {
        name: "a superseded fact made current again (its state before the contradiction)",
        tamper: |c, b| {
            let old = blob(&early(b), "SELECT state FROM records WHERE id = ?1", &b.c);
            exec(c, "UPDATE records SET state = ?2 WHERE id = ?1", params![uuid_bytes(&b.c), old]);
        },
        reported: "an earlier copy was put back",
        left_out: |b| vec![("office floor three", b.c.clone())],
    },
    Case {
        name: "two records swapped in capture order",
        tamper: |c, b| {
            // A was captured first (row 1), B second (row 2).
            exec(c, "UPDATE records SET seq = -1 WHERE id = ?1", params![uuid_bytes(&b.a)]);
            exec(c, "UPDATE records SET seq = 1 WHERE id = ?1", params![uuid_bytes(&b.b)]);
            exec(c, "UPDATE records SET seq = 2 WHERE id = ?1", params![uuid_bytes(&b.a)]);
        },
        reported: "moved in capture order",
        left_out: |b| vec![("hermes", b.a.clone()), ("deploys", b.b.clone())],
    },
    Case {
        name: "a record's id changed",
        tamper: |c, b| exec(c, "UPDATE records SET id = randomblob(16) WHERE id = ?1", params![uuid_bytes(&b.b)]),
        reported: "is missing from the file",
        left_out: |b| vec![("deploys", b.b.clone())],
    },
    Case {
        name: "a record's id replaced by text",
        tamper: |c, b| exec(c, "UPDATE records SET id = 'not an id' WHERE id = ?1", params![uuid_bytes(&b.b)]),
        reported: "sealed body does not authenticate",
        left_out: |b| vec![("deploys", b.b.clone())],
    },
    Case {
        name: "a record deleted",
        tamper: |c, b| exec(c, "DELETE FROM records WHERE id = ?1", params![uuid_bytes(&b.e)]),
        reported: "is missing from the file",
        left_out: none,
    },
    Case {
        name: "a forgotten record put back from an earlier copy",
        tamper: |c, b| {
            let row: (i64, Vec<u8>, Vec<u8>, Vec<u8>) = early(b)
                .query_row(
                    "SELECT seq, dup_tag, body, state FROM records WHERE id = ?1",
                    params![uuid_bytes(&b.d)],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .expect("D in the early copy");
            exec(
                c,
                "INSERT INTO records(seq, id, dup_tag, body, state) VALUES(?1, ?2, ?3, ?4, ?5)",
                params![row.0, uuid_bytes(&b.d), row.1, row.2, row.3],
            );
        },
        reported: "was forgotten and has been put back",
        left_out: |b| vec![("temporary note", b.d.clone())],
    },
    Case {
        name: "a duplicate tag copied from another record",
        tamper: |c, b| {
            let tag = blob(c, "SELECT dup_tag FROM records WHERE id = ?1", &b.a);
            exec(c, "UPDATE records SET dup_tag = ?2 WHERE id = ?1", params![uuid_bytes(&b.b), tag]);
        },
        reported: "duplicate-tag column was changed",
        left_out: none,
    },
    Case {
        name: "an event deleted from the middle of the trail",
        tamper: |c, _| exec(c, "DELETE FROM events WHERE seq = 3", []),
        reported: "event at place 3 is missing",
        left_out: none,
    },
    Case {
        name: "the newest events cut from the end of the trail",
        tamper: |c, _| exec(c, "DELETE FROM events WHERE seq > (SELECT max(seq) - 2 FROM events)", []),
        reported: "are missing (deleted from the file)",
        left_out: none,
    },
    Case {
        name: "two events swapped in the trail",
        tamper: |c, _| {
            exec(c, "UPDATE events SET seq = -1 WHERE seq = 2", []);
            exec(c, "UPDATE events SET seq = 2 WHERE seq = 3", []);
            exec(c, "UPDATE events SET seq = 3 WHERE seq = -1", []);
        },
        reported: "was moved from place",
        left_out: none,
    },
    Case {
        name: "an event's detail flipped",
        tamper: |c, _| exec(c, "UPDATE events SET detail = detail || x'00' WHERE seq = 4", []),
        reported: "event at place 4 does not authenticate",
        left_out: none,
    },
    Case {
        name: "the trail's head deleted",
        tamper: |c, _| exec(c, "DELETE FROM meta WHERE k = 'event_head'", []),
        reported: "head of the audit trail is missing",
        left_out: none,
    },
    Case {
        name: "the trail rolled back to an earlier head, newer events deleted",
        tamper: |c, b| {
            let (head, last): (Vec<u8>, i64) = early(b)
                .query_row(
                    "SELECT (SELECT v FROM meta WHERE k = 'event_head'), (SELECT max(seq) FROM events)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .expect("early head");
            exec(c, "UPDATE meta SET v = ?1 WHERE k = 'event_head'", params![head]);
            exec(c, "DELETE FROM events WHERE seq > ?1", params![last]);
        },
        reported: "names an event the audit trail has lost",
        left_out: none,
    },
];

/// How the index snapshot stands when the tampered store is unlocked: each
/// case is caught whether unlock checks every record, or only those the
/// snapshot does not vouch for.
#[derive(Clone, Copy, Debug)]
enum SnapshotMode {
    /// The one written at the last lock.
    Current,
    /// None: the index is rebuilt.
    Absent,
    /// The one written at an earlier lock, put back.
    Older,
}

fn set_snapshot(conn: &Connection, base: &Base, mode: SnapshotMode) {
    match mode {
        SnapshotMode::Current => {}
        SnapshotMode::Absent => conn.execute_batch("DROP TABLE index_snapshot").expect("drop the snapshot"),
        SnapshotMode::Older => {
            let rows: Vec<(i64, Vec<u8>, Vec<u8>)> = early(base)
                .prepare("SELECT part, snap, blob FROM index_snapshot")
                .expect("the early copy has a snapshot")
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .expect("parts")
                .map(|p| p.expect("part"))
                .collect();
            conn.execute_batch("DELETE FROM index_snapshot").expect("empty");
            for (part, snap, blob) in rows {
                exec(
                    conn,
                    "INSERT INTO index_snapshot(part, snap, blob) VALUES(?1, ?2, ?3)",
                    params![part, snap, blob],
                );
            }
        }
    }
}

#[test]
fn every_tampering_of_the_files_is_reported_and_not_trusted() {
    let base = base();
    let mut failures = Vec::new();
    let runs =
        CASES.iter().flat_map(|c| [SnapshotMode::Current, SnapshotMode::Absent, SnapshotMode::Older].map(|m| (c, m)));
    for (case, mode) in runs {
        let h = fresh();
        set_snapshot(&db(&h), base, mode);
        (case.tamper)(&db(&h), base);
        let s = unlocked_status(&h);
        let name = format!("{} ({mode:?} snapshot)", case.name);
        let count = s["integrity_problems"].as_u64().unwrap_or(0);
        if count == 0 || !problems(&s).contains(case.reported) {
            failures.push(format!("{}: expected {:?}, status said: {}", name, case.reported, problems(&s)));
            continue;
        }
        for (cue, id) in (case.left_out)(base) {
            if recalled(&h, cue).contains(&id) {
                failures.push(format!("{}: memory {id} still recalled for {cue:?}", name));
            }
        }
        let text = stdout(&h.run(&["status"]));
        if !text.contains("changed outside iai-mcp") {
            failures.push(format!("{}: `status` does not warn: {text}", name));
        }
        let out = h.run(&["audit", "--json"]);
        let report: Value = serde_json::from_slice(&out.stdout).expect("audit json");
        let check = report["checks"].as_array().and_then(|c| c.iter().find(|c| c["id"] == "store.integrity").cloned());
        if check.as_ref().map(|c| c["status"].clone()) != Some("fail".into()) || out.status.code() == Some(0) {
            failures.push(format!("{}: audit did not FAIL store.integrity: {check:?}", name));
        }
        eprintln!("{}: reported ({count} problems)", name);
    }
    assert!(failures.is_empty(), "{} of {} runs not caught:\n{}", failures.len(), CASES.len() * 3, failures.join("\n"));
}

/// After a duplicate tag was planted on another record, capturing that text
/// again reinforces the record that really holds it, not the impostor.
#[test]
fn a_planted_duplicate_tag_is_not_followed() {
    let base = base();
    let h = fresh();
    let tag = blob(&db(&h), "SELECT dup_tag FROM records WHERE id = ?1", &base.a);
    exec(&db(&h), "UPDATE records SET dup_tag = ?2 WHERE id = ?1", params![uuid_bytes(&base.b), tag]);
    h.unlock();
    assert_eq!(capture(&h, A, Tier::Semantic), base.a);
    let hits =
        h.client().recall(RecallRequest { cue: "deploys tuesdays".into(), ..Default::default() }).expect("recall");
    let b = hits.hits.iter().find(|x| x.id == base.b).expect("B recalled");
    assert_eq!(b.reinforced, 1, "B was not reinforced by A's text");
}

/// What a stolen copy of the files shows: random ids, row numbers, sizes and
/// sealed blobs; no column holds a time, tier, role, count or relation (the
/// index snapshot shows only its parts' numbers and a random id).
#[test]
fn a_stolen_copy_shows_no_times_tiers_or_roles() {
    let base = base();
    let h = fresh();
    let conn = db(&h);
    let mut columns = Vec::new();
    for table in ["records", "events", "cursors", "meta", "index_snapshot"] {
        let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})")).expect("table_info");
        let names: Vec<String> = stmt.query_map([], |r| r.get(1)).expect("cols").map(|c| c.expect("col")).collect();
        columns.push(format!("{table}({})", names.join(", ")));
    }
    assert_eq!(
        columns,
        [
            "records(seq, id, dup_tag, body, state)",
            "events(seq, id, detail)",
            "cursors(id, value)",
            "meta(k, v)",
            "index_snapshot(part, snap, blob)"
        ]
    );
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .expect("tables")
        .query_map([], |r| r.get(0))
        .expect("tables")
        .map(|t| t.expect("t"))
        .collect();
    assert_eq!(tables, ["cursors", "events", "index_snapshot", "meta", "records"]);
    let keys: Vec<String> = conn
        .prepare("SELECT k FROM meta ORDER BY k")
        .expect("meta")
        .query_map([], |r| r.get(0))
        .expect("meta")
        .map(|k| k.expect("k"))
        .collect();
    assert_eq!(keys, ["event_head", "schema_version", "seal_counter"]);
    // Ids are random (UUIDv4), not time-ordered (v7 would carry the capture time).
    for id in [&base.a, &base.b, &base.c, &base.e] {
        assert_eq!(uuid::Uuid::parse_str(id).expect("uuid").get_version_num(), 4, "{id}");
    }
    let event_ids: Vec<Vec<u8>> = conn
        .prepare("SELECT id FROM events")
        .expect("ids")
        .query_map([], |r| r.get(0))
        .expect("ids")
        .map(|i| i.expect("i"))
        .collect();
    for id in event_ids {
        assert_eq!(uuid::Uuid::from_slice(&id).expect("uuid").get_version_num(), 4);
    }
}

/// A store written by the first release (format 1, `tests/fixtures/v1-home`,
/// made by `tests/fixtures/make-v1-home.sh`) is upgraded at unlock: every
/// memory and fact kept, the clear columns gone from the files, and no problem
/// reported; the upgrade happens once.
#[test]
fn a_first_release_store_is_upgraded_with_every_fact_kept() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let ids: Vec<String> =
        std::fs::read_to_string(fixture.join("v1-home.ids")).expect("ids").lines().map(str::to_owned).collect();
    let h = TestHome::new();
    copy_home(&fixture.join("v1-home"), &h.root);
    // What format 1 kept in the clear: time-ordered event ids and times.
    let (event_ids, times): (Vec<Vec<u8>>, Vec<i64>) = {
        let conn = db(&h);
        let ids = conn
            .prepare("SELECT id FROM events")
            .expect("q")
            .query_map([], |r| r.get(0))
            .expect("q")
            .map(|i| i.expect("i"))
            .collect();
        let times = conn
            .prepare("SELECT created_at FROM records")
            .expect("q")
            .query_map([], |r| r.get(0))
            .expect("q")
            .map(|i| i.expect("i"))
            .collect();
        (ids, times)
    };
    assert_eq!(event_ids.len(), 9);
    let out = h.run_with_pass(&["unlock"], "fixture passphrase");
    assert_ok(&out, "unlock of a format-1 store");
    let s = h.status();
    assert_eq!(s["integrity_problems"], 0, "{}", problems(&s));
    assert_eq!(s["records"], 4, "A, B, C and C's replacement; D was forgotten");
    let mut cl = h.client();
    let hits = cl.recall(RecallRequest { cue: "hermes".into(), ..Default::default() }).expect("recall").hits;
    let a = hits.iter().find(|x| x.text.contains("rack 4")).expect("A");
    assert_eq!((a.tier, a.role, a.created_at, a.reinforced), (Tier::Semantic, Role::User, 1683554160000, 2));
    assert_eq!(a.cue.as_deref(), Some("build host"));
    assert_eq!(a.project.as_deref(), Some("/src/app"));
    let b = hits.iter().find(|x| x.text.contains("restarted")).expect("B");
    assert_eq!((b.tier, b.role, b.created_at, b.reinforced), (Tier::Episodic, Role::Assistant, 1683554220000, 1));
    let c = cl.recall(RecallRequest { cue: "deploys".into(), ..Default::default() }).expect("recall").hits;
    let old = c.iter().find(|x| x.text.contains("Tuesdays only")).expect("C");
    assert_eq!((old.tier, old.role), (Tier::Procedural, Role::System));
    let by = old.superseded_by.clone().expect("C stays superseded");
    assert!(c.iter().any(|x| x.id == by && x.text.contains("Thursdays")));
    let forgotten = cl.recall(RecallRequest { cue: "temporary note".into(), ..Default::default() }).expect("r").hits;
    assert!(forgotten.iter().all(|x| !x.text.contains("Temporary")), "D was forgotten in format 1");
    // Format-1 ids told the capture time: every memory has a new random id.
    for hit in hits.iter().chain(&c) {
        assert!(!ids.contains(&hit.id), "{} kept its time-ordered id", hit.id);
        assert_eq!(uuid::Uuid::parse_str(&hit.id).expect("uuid").get_version_num(), 4);
    }
    let events = cl.events(EventsRequest { limit: Some(100), ..Default::default() }).expect("events").events;
    assert_eq!(events.len(), 10, "9 events of the first release and this unlock: {events:?}");
    drop(cl);
    // The old clear columns are gone from every byte of the files.
    lock(&h);
    let conn = db(&h);
    let cols: Vec<String> = conn
        .prepare("PRAGMA table_info(records)")
        .expect("info")
        .query_map([], |r| r.get(1))
        .expect("q")
        .map(|c| c.expect("c"))
        .collect();
    assert_eq!(cols, ["seq", "id", "dup_tag", "body", "state"]);
    drop(conn);
    let mut bytes = Vec::new();
    for f in h.files() {
        bytes.extend(std::fs::read(&f).expect("read"));
    }
    for id in &event_ids {
        assert!(!bytes.windows(16).any(|w| w == id.as_slice()), "a format-1 event id is still in the files");
    }
    for t in &times {
        // SQLite stores such an integer as 6 big-endian bytes.
        let be = &t.to_be_bytes()[2..];
        assert!(!bytes.windows(6).any(|w| w == be), "a format-1 creation time {t} is still in the files");
    }
    // Unlocking again neither upgrades again nor reports anything.
    assert_ok(&h.run_with_pass(&["unlock"], "fixture passphrase"), "second unlock");
    let s = h.status();
    assert_eq!(s["integrity_problems"], 0, "{}", problems(&s));
    assert_eq!(s["records"], 4);
    let log = std::fs::read_to_string(h.root.join("run/daemon.log")).unwrap_or_default();
    assert_eq!(log.matches("upgraded the store to format 2").count(), 1, "{log}");
}
