//! Hostile homes (issue 10.2): every layout that `audit` FAILs, `unlock`
//! refuses, quickly, with what is wrong and how to fix it; nothing is started.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{stderr, TestHome, PASS};

const OTHER: u32 = 65534;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn fifo(p: &Path) {
    let _ = std::fs::remove_file(p);
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
}

fn replace_dir_with_link(dir: &Path, target: &Path) {
    std::fs::rename(dir, dir.with_extension("moved")).expect("move away");
    std::os::unix::fs::symlink(target, dir).expect("symlink");
}

type Make = fn(&TestHome);

/// (name, what to break, a word the refusal must name)
fn catalogue() -> Vec<(&'static str, Make, &'static str)> {
    vec![
        ("home mode 0755", |h| chmod(&h.root, 0o755), "0755"),
        (
            "home owned by another uid",
            |h| std::os::unix::fs::chown(&h.root, Some(OTHER), None).expect("chown"),
            "uid 65534",
        ),
        (
            "store/ a link elsewhere",
            |h| {
                let elsewhere = h.root.parent().expect("parent").join("elsewhere");
                std::fs::create_dir(&elsewhere).expect("mkdir");
                replace_dir_with_link(&h.home().store_dir(), &elsewhere)
            },
            "symbolic link",
        ),
        (
            "store/ a link to the home (would grant .key)",
            |h| replace_dir_with_link(&h.home().store_dir(), &h.root),
            "symbolic link",
        ),
        (
            "run/ a link",
            |h| {
                let elsewhere = h.root.parent().expect("parent").join("run-elsewhere");
                std::fs::create_dir(&elsewhere).expect("mkdir");
                replace_dir_with_link(&h.home().run_dir(), &elsewhere)
            },
            "symbolic link",
        ),
        ("run/ mode 0777", |h| chmod(&h.home().run_dir(), 0o777), "0777"),
        (
            "run/ owned by another uid",
            |h| std::os::unix::fs::chown(h.home().run_dir(), Some(OTHER), None).expect("chown"),
            "uid 65534",
        ),
        ("store/ mode 0755", |h| chmod(&h.home().store_dir(), 0o755), "0755"),
        (
            "store/ a regular file",
            |h| {
                std::fs::remove_dir_all(h.home().store_dir()).expect("rm");
                std::fs::write(h.home().store_dir(), b"x").expect("write");
            },
            "regular file",
        ),
        ("run/ missing", |h| std::fs::remove_dir_all(h.home().run_dir()).expect("rm"), "missing"),
        (
            ".key a symbolic link",
            |h| {
                let k = h.home().key();
                std::fs::rename(&k, h.root.join("real-key")).expect("mv");
                std::os::unix::fs::symlink(h.root.join("real-key"), &k).expect("symlink");
            },
            "symbolic link",
        ),
        (".key a FIFO", |h| fifo(&h.home().key()), "FIFO"),
        (".key mode 0644", |h| chmod(&h.home().key(), 0o644), "0644"),
        (
            ".key owned by another uid",
            |h| std::os::unix::fs::chown(h.home().key(), Some(OTHER), None).expect("chown"),
            "uid 65534",
        ),
        (
            ".key with a second hard link",
            |h| std::fs::hard_link(h.home().key(), h.root.join("key-copy")).expect("link"),
            "hard links",
        ),
        (
            ".key a directory",
            |h| {
                std::fs::remove_file(h.home().key()).expect("rm");
                std::fs::create_dir(h.home().key()).expect("mkdir");
            },
            "directory",
        ),
        ("pid file a FIFO", |h| fifo(&h.home().pid_file()), "FIFO"),
        (
            "pid file a symbolic link",
            |h| {
                let _ = std::fs::remove_file(h.home().pid_file());
                std::os::unix::fs::symlink("/tmp/elsewhere.pid", h.home().pid_file()).expect("symlink")
            },
            "symbolic link",
        ),
        (
            "pid file a directory",
            |h| {
                let _ = std::fs::remove_file(h.home().pid_file());
                std::fs::create_dir(h.home().pid_file()).expect("mkdir")
            },
            "directory",
        ),
        ("memory.db a FIFO", |h| fifo(&h.home().db()), "FIFO"),
        (
            "memory.db a symbolic link",
            |h| {
                let db = h.home().db();
                std::fs::rename(&db, h.root.join("db-moved")).expect("mv");
                std::os::unix::fs::symlink(h.root.join("db-moved"), &db).expect("symlink");
            },
            "symbolic link",
        ),
        (
            "memory.db-wal a symbolic link",
            |h| {
                let wal = h.root.join("store/memory.db-wal");
                let _ = std::fs::remove_file(&wal);
                std::os::unix::fs::symlink("/tmp/elsewhere-wal", wal).expect("symlink")
            },
            "symbolic link",
        ),
        ("memory.db readable by others", |h| chmod(&h.home().db(), 0o644), "group or others"),
        (
            "daemon.log a symbolic link",
            |h| {
                let _ = std::fs::remove_file(h.home().log_file());
                std::os::unix::fs::symlink("/tmp/elsewhere.log", h.home().log_file()).expect("symlink");
            },
            "symbolic link",
        ),
        (
            "the socket path a regular file",
            |h| {
                let _ = std::fs::remove_file(h.home().socket());
                std::fs::write(h.home().socket(), b"x").expect("write")
            },
            "regular file",
        ),
    ]
}

/// Runs `unlock` with a hard time limit: a hostile home must never hang it.
fn unlock_within(h: &TestHome, limit: Duration) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut child = h
        .cmd(&["unlock", "--passphrase-fd", "0"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn unlock");
    let _ = std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), format!("{PASS}\n").as_bytes());
    loop {
        if let Some(_status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            return (out.status.code(), stderr(&out), started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            return (None, format!("HUNG: {}", stderr(&out)), started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_hostile_layout_is_refused_by_unlock_and_failed_by_audit() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: building layouts owned by another uid needs root");
        return;
    }
    let mut refused = 0;
    let cases = catalogue();
    for (name, make, word) in &cases {
        let h = TestHome::init_unlocked();
        crate::support::assert_ok(&h.run(&["lock"]), "lock");
        make(&h);
        let (code, err, took) = unlock_within(&h, Duration::from_secs(20));
        assert_eq!(code, Some(1), "{name}: unlock must refuse (exit 1), got {code:?}: {err}");
        assert!(err.contains(word), "{name}: the refusal names the problem ({word:?}): {err}");
        assert!(
            err.contains("fix") || err.contains("chmod") || err.contains("move") || err.contains("remove"),
            "{name}: {err}"
        );
        assert!(took < Duration::from_secs(10), "{name}: unlock took {took:?}");
        assert!(crate::support::procs_of(&h).is_empty(), "{name}: nothing may keep running");
        let audit = h.run(&["audit", "--json"]);
        let r: serde_json::Value = serde_json::from_slice(&audit.stdout).expect("audit json");
        let fails: Vec<&serde_json::Value> =
            r["checks"].as_array().expect("checks").iter().filter(|c| c["status"] == "fail").collect();
        assert!(fails.iter().any(|c| c["id"] == "home.layout"), "{name}: audit FAILs it: {r:#}");
        assert_eq!(audit.status.code(), Some(1), "{name}");
        refused += 1;
    }
    eprintln!("hostile layouts refused by unlock and FAILed by audit: {refused} of {}", cases.len());
}

/// A pid file locked by an unrelated process made `unlock` claim "already
/// unlocked" and exit 0.
#[test]
fn a_pid_file_locked_by_another_process_is_not_an_unlocked_store() {
    let h = TestHome::init_unlocked();
    crate::support::assert_ok(&h.run(&["lock"]), "lock");
    let mut holder = std::process::Command::new("flock")
        .arg(h.home().pid_file())
        .args(["sleep", "30"])
        .spawn()
        .expect("flock(1) holds the pid file");
    std::thread::sleep(Duration::from_millis(300));
    let (code, err, _) = unlock_within(&h, Duration::from_secs(20));
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not this home's iai-mcp storer"), "{err}");
}
