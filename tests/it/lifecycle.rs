//! Unlock, lock, crashes of either process, and what survives them.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iai_storer::proto::{CaptureRequest, RecallRequest};

use crate::support::{alive, assert_ok, kill9, stderr, stdout, wait_gone, TestHome, BIN, PASS};

#[test]
fn wrong_passphrase_fails_clearly_and_the_right_one_brings_memories_back() {
    let h = TestHome::init_unlocked();
    let id = h
        .client()
        .capture(CaptureRequest { text: "the boiler code is 7741".into(), ..Default::default() })
        .expect("capture")
        .id;
    assert_ok(&h.run(&["lock"]), "lock");
    assert_eq!(h.status()["state"], "locked");

    let bad = h.run_with_pass(&["unlock"], "correct horse battery stapler");
    assert_eq!(bad.status.code(), Some(1));
    let msg = stderr(&bad);
    assert!(msg.contains("wrong passphrase"), "{msg}");
    assert!(!msg.contains("stapler") && !msg.contains(PASS), "the passphrase must never be echoed: {msg}");
    assert_eq!(h.status()["state"], "locked");

    // A command that needs the daemon says so, with its own exit status.
    let locked = h.run(&["recall", "boiler"]);
    assert_eq!(locked.status.code(), Some(3));
    assert!(stderr(&locked).contains("iai-mcp unlock"), "{}", stderr(&locked));

    h.unlock();
    let hits =
        h.client().recall(RecallRequest { cue: "boiler code".into(), ..Default::default() }).expect("recall").hits;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].id, id);
    assert_eq!(hits[0].text, "the boiler code is 7741");
}

#[test]
fn environment_passphrase_works_and_never_reaches_the_daemons() {
    let h = TestHome::new();
    h.init();
    let out = h.cmd(&["unlock"]).env("IAI_MCP_PASSPHRASE", PASS).output().expect("unlock");
    assert_ok(&out, "unlock from the environment");
    let (kh, st) = h.pids();
    for pid in [kh, st] {
        // Non-dumpable processes' environ is unreadable to their user; as root we can check it is empty.
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
            assert!(
                !String::from_utf8_lossy(&env).contains("IAI_MCP_PASSPHRASE"),
                "pid {pid} inherited the passphrase"
            );
        }
    }
}

#[test]
fn unlock_twice_keeps_the_running_daemon() {
    let h = TestHome::init_unlocked();
    let before = h.pids();
    let again = h.run_with_pass(&["unlock"], PASS);
    assert_ok(&again, "second unlock");
    assert!(stdout(&again).contains("already unlocked"), "{}", stdout(&again));
    assert_eq!(h.pids(), before);

    // A second keyholder started by hand must not hijack the live storer's socket.
    let mut kh = std::process::Command::new(BIN)
        .args(["__keyholder", "--home"])
        .arg(&h.root)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn keyholder");
    kh.stdin.take().expect("stdin").write_all(PASS.as_bytes()).expect("passphrase");
    let mut line = String::new();
    BufReader::new(kh.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
    assert!(line.starts_with("ERR busy"), "second storer must refuse: {line:?}");
    let _ = kh.wait();
    assert_eq!(h.pids(), before, "the live daemon still answers");
}

#[test]
fn daemons_are_hardened_as_seen_from_outside() {
    let h = TestHome::init_unlocked();
    let (kh, st) = h.pids();
    for (name, pid) in [("keyholder", kh), ("storer", st)] {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(str::trim)
                .unwrap_or_else(|| panic!("{k} missing"))
                .to_string()
        };
        assert_eq!(field("NoNewPrivs:"), "1", "{name}");
        assert_eq!(field("Seccomp:"), "2", "{name}");
        for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            assert_eq!(field(cap), "0000000000000000", "{name} {cap}");
        }
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
        let core = limits.lines().find(|l| l.starts_with("Max core file size")).expect("core line");
        assert!(core.split_whitespace().nth(4) == Some("0"), "{name}: {core}");
        // Non-dumpable: the kernel makes /proc/PID/* root-owned.
        let meta = std::fs::metadata(format!("/proc/{pid}/mem")).expect("mem");
        assert_eq!(meta.uid(), 0, "{name}");
    }
    // Its key material is locked in RAM (never swapped): mlock shows as VmLck.
    let status = std::fs::read_to_string(format!("/proc/{kh}/status")).expect("status");
    let locked_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmLck");
    assert!(locked_kib >= 4, "the keyholder has {locked_kib} kB locked; its key pages must be mlocked");
    // The keyholder holds nothing open but its socketpair (and stdio, which it closed or pointed at the log).
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{kh}/fd"))
        .expect("fd dir")
        .flatten()
        .map(|e| std::fs::read_link(e.path()).map(|p| p.display().to_string()).unwrap_or_default())
        .collect();
    assert!(fds.iter().all(|f| f.starts_with("socket:") || f.ends_with("daemon.log")), "keyholder fds: {fds:?}");
    assert!(!fds.iter().any(|f| f.ends_with(".key")), "the keyholder must not keep .key open");
}

#[test]
fn killing_the_storer_stops_the_keyholder_and_nothing_is_lost() {
    let h = TestHome::init_unlocked();
    let id = h
        .client()
        .capture(CaptureRequest { text: "survives a storer crash".into(), ..Default::default() })
        .expect("capture")
        .id;
    let (kh, st) = h.pids();
    kill9(st);
    assert!(wait_gone(kh, Duration::from_secs(5)), "keyholder {kh} must exit when the storer dies");
    assert_eq!(h.status()["state"], "locked", "a stale socket is not an unlocked store");
    h.unlock();
    let hits =
        h.client().recall(RecallRequest { cue: "storer crash".into(), ..Default::default() }).expect("recall").hits;
    assert_eq!(hits[0].id, id);
}

#[test]
fn killing_the_keyholder_stops_the_storer() {
    let h = TestHome::init_unlocked();
    h.client()
        .capture(CaptureRequest { text: "survives a keyholder crash".into(), ..Default::default() })
        .expect("capture");
    let (kh, st) = h.pids();
    kill9(kh);
    assert!(wait_gone(st, Duration::from_secs(5)), "storer {st} must stop serving when the keyholder dies");
    assert!(!h.home().socket().exists(), "the storer removes its socket on the way out");
    h.unlock();
    let hits =
        h.client().recall(RecallRequest { cue: "keyholder crash".into(), ..Default::default() }).expect("recall").hits;
    assert_eq!(hits.len(), 1);
}

/// kill -9 in the middle of a burst of CLI captures: every capture that
/// printed an id is there after the next unlock.
#[test]
fn kill_during_a_capture_burst_loses_no_acknowledged_capture() {
    let h = Arc::new(TestHome::init_unlocked());
    let (_, storer) = h.pids();
    let acked = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (h, acked, stop) = (Arc::clone(&h), Arc::clone(&acked), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut failures = 0;
                for i in 0..10_000 {
                    if stop.load(Ordering::SeqCst) && failures > 3 {
                        break;
                    }
                    let token = format!("burst{w}n{i:05}");
                    let out = h.run(&["capture", &format!("{token} captured during the burst")]);
                    if out.status.success() {
                        let id = stdout(&out).split_whitespace().next().expect("id").to_string();
                        acked.lock().expect("lock").push((token, id));
                    } else {
                        failures += 1;
                    }
                }
            })
        })
        .collect();
    while acked.lock().expect("lock").len() < 40 {
        std::thread::sleep(Duration::from_millis(5));
    }
    kill9(storer);
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().expect("writer");
    }
    h.unlock();
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= 40);
    crate::support::assert_all_recalled(&h, &acked);
    assert!(!alive(storer));
}

#[test]
fn cli_round_trip_with_stdin_duplicates_and_raw_output() {
    let h = TestHome::init_unlocked();
    let mut child = h
        .cmd(&["capture", "-", "--tier", "procedural", "--role", "assistant", "--session", "s-42", "--tag", "build"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let text = "To release: cargo build --release\n\tthen tag v1 — ✓ \u{202e}rtl\u{1b}[2J";
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_ok(&out, "capture from stdin");
    let id = stdout(&out).split_whitespace().next().expect("id").to_string();
    assert!(stdout(&out).contains("inserted"));

    let dup = h.cmd(&["capture", text]).output().expect("dup");
    assert!(stdout(&dup).starts_with(&id) && stdout(&dup).contains("reinforced"), "{}", stdout(&dup));

    let raw = h.run(&["recall", "release", "--raw"]);
    assert_ok(&raw, "recall --raw");
    assert_eq!(raw.stdout, [text.as_bytes(), b"\0"].concat(), "raw output is the stored bytes");

    let human = h.run(&["recall", "release"]);
    let shown = stdout(&human);
    assert!(!shown.contains('\u{1b}') && !shown.contains('\u{202e}'), "terminal output escapes controls: {shown:?}");

    let json: serde_json::Value =
        serde_json::from_slice(&h.run(&["recall", "release", "--json"]).stdout).expect("json");
    assert_eq!(json["hits"][0]["tier"], "procedural");
    assert_eq!(json["hits"][0]["role"], "assistant");
    assert_eq!(json["hits"][0]["session"], "s-42");
    assert_eq!(json["hits"][0]["reinforced"], 1);

    let filtered: serde_json::Value =
        serde_json::from_slice(&h.run(&["recall", "release", "--json", "--session", "other"]).stdout).expect("json");
    assert_eq!(filtered["hits"].as_array().map(Vec::len), Some(0));

    let version = h.run(&["--version"]);
    assert!(stdout(&version).starts_with("iai-mcp "), "{}", stdout(&version));
}
