//! Other users: the storer serves only its own uid, and the home keeps others out.

use std::os::unix::process::CommandExt;

use iai_storer::client::{Client, ClientError};
use iai_storer::proto::{CaptureRequest, ErrorCode};

use crate::support::{assert_ok, stderr, TestHome};

const NOBODY: u32 = 65534;

/// The pair runs as `nobody`; root (whose DAC override lets it reach the
/// socket) is still refused by the peer-uid check.
#[test]
fn a_client_of_another_uid_is_refused_by_the_storer() {
    let h = TestHome::new_as(NOBODY);
    h.init();
    h.unlock();
    let (kh, st) = h.pids();
    for pid in [kh, st] {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).expect("uid");
        assert!(uid_line.split_whitespace().skip(1).all(|u| u == "65534"), "{uid_line}");
    }
    let mut root_client = Client::connect(&h.home()).expect("root can reach the socket");
    match root_client.capture(CaptureRequest { text: "sneaky".into(), ..Default::default() }) {
        Err(ClientError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::PeerRefused);
            assert!(e.message.contains("65534"), "{}", e.message);
        }
        other => panic!("root must be refused, got {other:?}"),
    }
    // The owner is still served.
    let out = h.run(&["capture", "owner's memory"]);
    assert_ok(&out, "capture as the owner");
}

/// An unprivileged user cannot even reach another user's socket.
#[test]
fn another_user_cannot_reach_a_private_home() {
    let h = TestHome::init_unlocked();
    let mut intruder = h.cmd(&["recall", "anything"]);
    intruder.uid(NOBODY).gid(NOBODY);
    let out = intruder.output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Permission denied"), "{}", stderr(&out));
}

/// Runs a small Python probe as `nobody` and returns what it printed.
fn probe_as_nobody(code: &str, pid: u32) -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", code, &pid.to_string()])
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Attacker and target share uid 65534: the keyholder is still out of reach,
/// because it is non-dumpable.
#[test]
fn a_process_of_the_same_uid_cannot_ptrace_or_read_the_keyholder() {
    let h = TestHome::new_as(NOBODY);
    h.init();
    h.unlock();
    let (kh, st) = h.pids();
    // PTRACE_ATTACH = 16; prints the return value and errno.
    let ptrace = "import ctypes,sys\nlibc=ctypes.CDLL(None,use_errno=True)\nr=libc.ptrace(16,int(sys.argv[1]),0,0)\nprint(r, ctypes.get_errno())";
    assert_eq!(probe_as_nobody(ptrace, kh), format!("-1 {}", nix::libc::EPERM), "ptrace attach to the keyholder");
    assert_eq!(probe_as_nobody(ptrace, st), format!("-1 {}", nix::libc::EPERM), "ptrace attach to the storer");
    let mem = "import sys\ntry:\n  open('/proc/%s/mem' % sys.argv[1], 'rb').read(1)\n  print('read')\nexcept OSError as e:\n  print(e.errno)";
    assert_eq!(probe_as_nobody(mem, kh), nix::libc::EACCES.to_string(), "/proc/<keyholder>/mem");
    let environ = "import sys\ntry:\n  open('/proc/%s/environ' % sys.argv[1], 'rb').read()\n  print('read')\nexcept OSError as e:\n  print(e.errno)";
    assert_eq!(probe_as_nobody(environ, kh), nix::libc::EACCES.to_string(), "/proc/<keyholder>/environ");
    // The probe itself works on an ordinary process of the same uid.
    let mut sleeper = std::process::Command::new("sleep").arg("30").uid(NOBODY).gid(NOBODY).spawn().expect("sleep");
    let ok = probe_as_nobody(mem, sleeper.id());
    let yama = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").unwrap_or_else(|_| "0".into());
    if yama.trim() == "0" {
        // Without Yama's restriction, only non-dumpability explains the EPERM above.
        assert_eq!(probe_as_nobody(ptrace, sleeper.id()), "0 0", "control: ptrace of a dumpable process works");
    }
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_ne!(ok, nix::libc::EACCES.to_string(), "control: a dumpable process of the same uid is readable");
}
