//! `backup` and `restore` (issue 11): a consistent copy taken while captures
//! carry on, sealed as at rest, restorable into an empty home; bad input
//! refused with nothing changed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use iai_storer::proto::{CaptureRequest, RecallRequest};

use crate::support::{assert_ok, stderr, TestHome};

/// A home at `root` (not created) for `restore`.
fn home_at(h: &TestHome, args: &[&str], root: &std::path::Path) -> std::process::Output {
    h.cmd(args).env("IAI_MCP_HOME", root).output().expect("run")
}

#[test]
fn a_backup_during_a_capture_burst_restores_every_acknowledged_memory() {
    let h = TestHome::init_unlocked();
    let mut c = h.client();
    for i in 0..200 {
        c.capture(CaptureRequest { text: format!("settled memory {i} zqx{i}zqx"), ..Default::default() })
            .expect("capture");
    }
    let acked: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let burst = {
        let (home, acked, stop) = (h.home(), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut c = iai_storer::client::Client::connect(&home).expect("connect");
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let text = format!("burst memory {i} qvw{i}qvw with a payload {}", "p".repeat(i % 300));
                c.capture(CaptureRequest { text: text.clone(), ..Default::default() }).expect("capture during backup");
                acked.lock().expect("lock").push((text, Instant::now()));
                i += 1;
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let dir = tempfile::Builder::new().prefix("iai-backup").tempdir_in("/tmp").expect("tempdir");
    let dest = dir.path().join("b");
    let started = Instant::now();
    let out = h.run(&["backup", dest.to_str().expect("utf8")]);
    assert_ok(&out, "backup during a burst");
    std::thread::sleep(std::time::Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    burst.join().expect("burst");
    let acked = acked.lock().expect("lock").clone();
    let before: Vec<&String> = acked.iter().filter(|(_, at)| *at < started).map(|(t, _)| t).collect();
    let after = acked.len() - before.len();
    assert!(before.len() > 20 && after > 0, "{} captures before the backup, {after} during or after", before.len());

    // Sealed as at rest: no text in any byte of the backup.
    let mut bytes = Vec::new();
    for f in ["store/memory.db", ".key"] {
        bytes.extend(std::fs::read(dest.join(f)).expect("backup file"));
    }
    for t in before.iter().take(50) {
        assert!(!bytes.windows(t.len()).any(|w| w == t.as_bytes()), "plaintext in the backup");
    }

    let target = TestHome::new();
    assert_ok(&home_at(&h, &["restore", dest.to_str().expect("utf8")], &target.root), "restore");
    target.unlock();
    let s = target.status();
    assert_eq!(s["integrity_problems"], 0, "{s}");
    let mut c = target.client();
    for (i, t) in before.iter().enumerate() {
        let token = t.split_whitespace().nth(3).expect("token");
        let hits = c.recall(RecallRequest { cue: token.into(), limit: Some(3), ..Default::default() }).expect("recall");
        assert!(hits.hits.iter().any(|x| &x.text == *t), "capture {i} acknowledged before the backup is missing: {t}");
    }
    for i in 0..200 {
        let hits =
            c.recall(RecallRequest { cue: format!("zqx{i}zqx"), limit: Some(1), ..Default::default() }).expect("r");
        assert_eq!(hits.hits.first().map(|x| x.text.clone()), Some(format!("settled memory {i} zqx{i}zqx")));
    }
    eprintln!(
        "backup during a burst: {} acknowledged before it began, all restored; {after} more during/after",
        before.len()
    );
}

#[test]
fn backup_and_restore_refuse_bad_input_and_change_nothing() {
    let h = TestHome::init_unlocked();
    h.client().capture(CaptureRequest { text: "one memory".into(), ..Default::default() }).expect("capture");
    let dir = tempfile::Builder::new().prefix("iai-backup").tempdir_in("/tmp").expect("tempdir");
    let p = |name: &str| dir.path().join(name);
    let s = |path: &std::path::Path| path.to_str().expect("utf8").to_string();

    std::fs::create_dir(p("exists")).expect("mkdir");
    let out = h.run(&["backup", &s(&p("exists"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already there"), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(p("exists")).expect("dir").count(), 0, "nothing written into it");

    std::os::unix::fs::symlink(p("elsewhere"), p("link")).expect("symlink");
    let out = h.run(&["backup", &s(&p("link"))]);
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    assert!(!p("elsewhere").exists());

    let out = h.run(&["backup", &s(&h.root.join("inside"))]);
    assert!(stderr(&out).contains("inside the home"), "{}", stderr(&out));
    let out = h.run(&["backup", &s(&p("no/such/parent"))]);
    assert!(stderr(&out).contains("not a directory"), "{}", stderr(&out));

    // Locked or unlocked alike.
    assert_ok(&h.run(&["lock"]), "lock");
    assert_ok(&h.run(&["backup", &s(&p("good"))]), "backup while locked");

    // Restore: never over an initialised home.
    let out = h.run(&["restore", &s(&p("good"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("restore only fills an empty home"), "{}", stderr(&out));

    // A damaged database or key, or missing files: refused, the home left empty.
    let target = TestHome::new();
    std::fs::create_dir_all(p("bad/store")).expect("mkdir");
    std::fs::copy(p("good/.key"), p("bad/.key")).expect("copy");
    std::fs::write(p("bad/store/memory.db"), b"this is not a database at all, just some bytes").expect("write");
    let out = home_at(&h, &["restore", &s(&p("bad"))], &target.root);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nothing was changed"), "{}", stderr(&out));
    let mut db = std::fs::read(p("good/store/memory.db")).expect("db");
    db.truncate(db.len() / 2);
    std::fs::write(p("bad/store/memory.db"), &db).expect("write");
    let out = home_at(&h, &["restore", &s(&p("bad"))], &target.root);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    std::fs::write(p("bad/.key"), b"IAIMCPK\0 not a key").expect("write");
    std::fs::copy(p("good/store/memory.db"), p("bad/store/memory.db")).expect("copy");
    let out = home_at(&h, &["restore", &s(&p("bad"))], &target.root);
    assert!(stderr(&out).contains("not a usable key file"), "{}", stderr(&out));
    let out = home_at(&h, &["restore", &s(&p("missing"))], &target.root);
    assert_eq!(out.status.code(), Some(1));
    assert!(!target.root.join(".key").exists() && !target.root.join("store/memory.db").exists());

    assert_ok(&home_at(&h, &["restore", &s(&p("good"))], &target.root), "restore of the good backup");
    target.unlock();
    assert_eq!(target.status()["records"], 1);
}
