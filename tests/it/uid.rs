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
