//! Secrets in memory (issue 10.5): the passphrase must not outlive its use in
//! any process, and the CLI that holds it must not be traceable.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::time::Duration;

use iai_keyholder::KeyFile;
use iai_storer::proto::CaptureRequest;

use crate::support::{TestHome, PASS};

/// Every readable, writable mapping of `pid` (as root, which may read a
/// non-dumpable process's memory).
fn memory_of(pid: u32) -> Vec<u8> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("mem");
    let mut all = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else { continue };
        if !perms.starts_with("rw") {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else { continue };
        let (a, b) = (u64::from_str_radix(a, 16).expect("hex"), u64::from_str_radix(b, 16).expect("hex"));
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_ok() && mem.read_exact(&mut buf).is_ok() {
            all.extend_from_slice(&buf);
        }
    }
    all
}

/// The keyholder read its passphrase through std's stdin, whose process-wide
/// buffer kept a copy for the keyholder's whole life.
#[test]
fn the_passphrase_is_nowhere_in_the_keyholders_memory_after_unlock() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: reading another process's memory needs root");
        return;
    }
    let h = TestHome::init_unlocked();
    let (kh, st) = h.pids();
    for (name, pid) in [("keyholder", kh), ("storer", st)] {
        let mem = memory_of(pid);
        assert!(mem.len() > 100_000, "read {} bytes of the {name}", mem.len());
        let found = mem.windows(PASS.len()).any(|w| w == PASS.as_bytes());
        assert!(!found, "the passphrase is still in the {name}'s memory");
    }
}

/// `unlock` holds the passphrase: it must be non-dumpable (no ptrace, no
/// /proc reads by the user's other processes) and write no core file.
#[test]
fn unlock_is_not_traceable_while_it_holds_the_passphrase() {
    let h = TestHome::new_as(65534);
    h.init();
    // unlock waits for its passphrase on a pipe we keep open and silent.
    let mut child = h
        .cmd(&["unlock", "--passphrase-fd", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn unlock");
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(300));
    // Non-dumpable: the kernel makes /proc/PID/* root's.
    let meta = std::fs::metadata(format!("/proc/{pid}/environ")).expect("environ");
    assert_eq!(meta.uid(), 0, "unlock (uid 65534) must be non-dumpable while it reads the passphrase");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).expect("core line");
    assert_eq!(core.split_whitespace().nth(4), Some("0"), "{core}");
    // Then it finishes its job normally.
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), format!("{PASS}\n").as_bytes()).expect("write");
    assert!(child.wait().expect("wait").success());
}

/// Issue 10.6: the storer holds plaintext while unlocked; where the memlock
/// limit allows, its memory is locked (never swapped), and `status` says which.
#[test]
fn the_storer_locks_its_memory_when_the_limit_allows_and_says_so() {
    let h = TestHome::init_unlocked();
    // With the usual finite limit it stays unlocked, and says so, with the swap areas to worry about.
    let s = h.status();
    assert_eq!(s["memory_locked"], false, "{s}");
    assert!(s["unencrypted_swap"].is_array(), "{s}");
    crate::support::assert_ok(&h.run(&["lock"]), "lock");
    let unlimited = nix::sys::resource::RLIM_INFINITY;
    let can_raise =
        std::process::Command::new("sh").args(["-c", "ulimit -l unlimited"]).status().is_ok_and(|s| s.success());
    if !can_raise {
        eprintln!("SKIPPED (locked half): this machine does not allow an unlimited memlock limit");
        return;
    }
    let mut unlock = h.cmd(&["unlock", "--passphrase-fd", "0"]);
    #[allow(unsafe_code)]
    // SAFETY: between fork and exec; setrlimit only, no allocation.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut unlock, move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK, unlimited, unlimited)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = unlock.stdin(Stdio::piped()).stdout(Stdio::null()).spawn().expect("unlock");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), format!("{PASS}\n").as_bytes()).expect("write");
    assert!(child.wait().expect("wait").success());
    let s = h.status();
    assert_eq!(s["memory_locked"], true, "{s}");
    let st = s["storer_pid"].as_u64().expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{st}/status")).expect("status");
    let kib = |k: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    assert!(kib("VmLck:") * 10 >= kib("VmRSS:") * 9, "VmLck {} of VmRSS {}", kib("VmLck:"), kib("VmRSS:"));
}

/// Issue 10.6: a memory passes through the storer (request frame, parsed
/// request, sealed body's plaintext, keyholder frames, recall reply) and the
/// keyholder (seal and unseal). Once the capture and a recall of it are
/// answered, no copy of the whole text may remain in either process: the
/// index keeps words, never the text, and every freed buffer is wiped.
#[test]
fn a_memory_leaves_no_copy_in_the_daemons_once_answered() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: reading another process's memory needs root");
        return;
    }
    let h = TestHome::init_unlocked();
    let (kh, st) = h.pids();
    let mut texts = Vec::new();
    for i in 0..20 {
        let text = format!(
            "Remember that vault {i} opens with 4815{i}623 and the guard called Wilhelmina{i} keeps its spare key"
        );
        let r = iai_storer::proto::CaptureRequest { text: text.clone(), ..Default::default() };
        h.client().capture(r).expect("capture");
        texts.push(text);
    }
    let recall =
        iai_storer::proto::RecallRequest { cue: "vault guard spare key".into(), limit: Some(20), ..Default::default() };
    let hits = h.client().recall(recall).expect("recall").hits;
    assert_eq!(hits.len(), 20, "every canary comes back");
    // The reply reaches us just before the storer's thread drops its buffer.
    std::thread::sleep(std::time::Duration::from_millis(300));
    no_whole_text(&texts, [("storer", st), ("keyholder", kh)], "after capture and recall");
    // At unlock the storer unseals every memory to build its index.
    assert!(h.run(&["lock"]).status.success());
    h.unlock();
    let (kh, st) = h.pids();
    std::thread::sleep(std::time::Duration::from_millis(300));
    no_whole_text(&texts, [("storer", st), ("keyholder", kh)], "after the index was built at unlock");
}

/// No text whole in either process. A loaded machine may take a moment to
/// schedule the thread that drops a reply after sending it, so each process
/// gets up to three seconds to get there; a copy that stays is a failure.
fn no_whole_text(texts: &[String], procs: [(&str, u32); 2], when: &str) {
    for (name, pid) in procs {
        let mut left = texts.len();
        for _ in 0..10 {
            let mem = memory_of(pid);
            assert!(mem.len() > 100_000, "read {} bytes of the {name}", mem.len());
            left = texts.iter().filter(|t| mem.windows(t.len()).any(|w| w == t.as_bytes())).count();
            if left == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        assert_eq!(left, 0, "{left} of {} texts still whole in the {name}'s memory {when}", texts.len());
    }
}

/// Issue 11.3: the keyholder holds the previous data key only during a
/// rotation. After `rotate` finished, the keyholder that did it (and wiped
/// the old key) has no copy of the old key's bytes anywhere in its memory,
/// while the new key's are there (the scan finds a key when there is one).
#[test]
fn after_a_rotation_the_old_data_key_is_nowhere_in_the_keyholders_memory() {
    let h = TestHome::init_unlocked();
    for i in 0..50 {
        h.client()
            .capture(CaptureRequest { text: format!("rotation memory scan {i}"), ..Default::default() })
            .expect("c");
    }
    let pass = iai_keyholder::Passphrase::from_slice(PASS.as_bytes());
    let key = |h: &TestHome| KeyFile::parse(&std::fs::read(h.root.join(".key")).expect("key")).expect("parse");
    let old = key(&h).unwrap(&pass).expect("old key");
    let out = h.cmd(&["rotate"]).env("IAI_MCP_PASSPHRASE", PASS).output().expect("rotate");
    crate::support::assert_ok(&out, "rotate");
    let new = key(&h).unwrap(&pass).expect("new key");
    let (keyholder, _) = h.pids();
    let mem = memory_of(keyholder);
    let holds = |k: &[u8; 32]| mem.windows(32).any(|w| w == k);
    assert!(holds(new.expose()), "the scan must find the key the keyholder uses");
    assert!(!holds(old.expose()), "the old data key is still in the keyholder's memory after the rotation");
}
