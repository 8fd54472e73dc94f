//! Bad input on the storer socket: a precise error each, the daemon survives,
//! and nothing stored is damaged.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use iai_storer::client::ClientError;
use iai_storer::proto::{self, CaptureRequest, ErrorCode, RecallRequest, MAX_FRAME, MAX_TEXT};

use crate::support::TestHome;

fn error_code(reply: &[u8]) -> ErrorCode {
    match proto::decode_reply(reply).expect("well-formed reply") {
        Err(e) => e.code,
        Ok(v) => panic!("expected an error, got {v}"),
    }
}

#[test]
fn malformed_requests_get_precise_errors_and_the_connection_survives() {
    let h = TestHome::init_unlocked();
    let mut c = h.client();
    let kept = c
        .capture(CaptureRequest { text: "kept safe through the abuse".into(), ..Default::default() })
        .expect("capture")
        .id;

    let cases: &[(&[u8], ErrorCode)] = &[
        (b"\xc3\x28 not utf-8", ErrorCode::InvalidUtf8),
        (b"{\"v\":1,\"type\":", ErrorCode::MalformedJson),
        (b"\"just a string\"", ErrorCode::MalformedJson),
        (br#"{"type":"stats"}"#, ErrorCode::UnsupportedVersion),
        (br#"{"v":2,"type":"stats"}"#, ErrorCode::UnsupportedVersion),
        (br#"{"v":1,"type":"format_disk"}"#, ErrorCode::UnknownRequest),
        (br#"{"v":1}"#, ErrorCode::UnknownRequest),
        (br#"{"v":1,"type":"capture","text":""}"#, ErrorCode::InvalidArgument),
        (br#"{"v":1,"type":"capture","text":"x","tier":"cosmic"}"#, ErrorCode::InvalidArgument),
        (br#"{"v":1,"type":"recall","cue":"x","limit":0}"#, ErrorCode::InvalidArgument),
        (br#"{"v":1,"type":"recall","cue":"x","limit":100000}"#, ErrorCode::InvalidArgument),
        (br#"{"v":1,"type":"forget","id":"../../etc/passwd"}"#, ErrorCode::InvalidArgument),
        (br#"{"v":1,"type":"forget","id":"00000000-0000-7000-8000-000000000000"}"#, ErrorCode::NotFound),
        (br#"{"v":1,"type":"capture","text":"x","created_at":-5}"#, ErrorCode::InvalidArgument),
    ];
    for (body, want) in cases {
        let reply = c.raw(body).expect("reply").expect("connection stays open");
        assert_eq!(error_code(&reply), *want, "for {:?}", String::from_utf8_lossy(body));
    }
    let too_many_tags = serde_json::json!({"v":1,"type":"capture","text":"x","tags": vec!["t"; 33]});
    let reply = c.raw(too_many_tags.to_string().as_bytes()).expect("reply").expect("open");
    assert_eq!(error_code(&reply), ErrorCode::InvalidArgument);

    // The same connection still works.
    assert_eq!(c.stats().expect("stats").records, 1);
    let hits = c.recall(RecallRequest { cue: "abuse".into(), ..Default::default() }).expect("recall").hits;
    assert_eq!(hits[0].id, kept);
}

#[test]
fn text_limits_are_exact() {
    let h = TestHome::init_unlocked();
    let mut c = h.client();
    // 64 KiB of multi-byte text must work and come back byte for byte.
    let big: String = "é漢🙂a".repeat(64 * 1024 / 10);
    assert!(big.len() >= 64 * 1024 - 16);
    let id = c.capture(CaptureRequest { text: big.clone(), ..Default::default() }).expect("64 KiB capture").id;
    let at_max = "z".repeat(MAX_TEXT);
    c.capture(CaptureRequest { text: at_max, ..Default::default() }).expect("capture at the maximum");
    match c.capture(CaptureRequest { text: "z".repeat(MAX_TEXT + 1), ..Default::default() }) {
        Err(ClientError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::TextTooLarge);
            assert!(e.message.contains(&MAX_TEXT.to_string()), "{}", e.message);
        }
        other => panic!("expected text_too_large, got {other:?}"),
    }
    let hits = c.recall(RecallRequest { cue: "漢".into(), limit: Some(1), ..Default::default() }).expect("recall").hits;
    assert_eq!(hits[0].id, id);
    assert_eq!(hits[0].text.as_bytes(), big.as_bytes());
    assert_eq!(c.stats().expect("stats").records, 2);
}

#[test]
fn an_oversized_frame_closes_only_that_connection() {
    let h = TestHome::init_unlocked();
    h.client()
        .capture(CaptureRequest { text: "still here after a huge frame".into(), ..Default::default() })
        .expect("capture");
    let mut s = UnixStream::connect(h.home().socket()).expect("connect");
    s.write_all(&((MAX_FRAME as u32) + 1).to_le_bytes()).expect("write length");
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("error frame length");
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).expect("error frame");
    assert_eq!(error_code(&body), ErrorCode::FrameTooLarge);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("eof");
    assert!(rest.is_empty(), "the connection is closed after an oversized frame");

    // A frame cut off mid-body is dropped without harm.
    let mut s = UnixStream::connect(h.home().socket()).expect("connect");
    s.write_all(&100u32.to_le_bytes()).expect("len");
    s.write_all(b"{\"v\":1").expect("partial");
    drop(s);

    let mut c = h.client();
    assert_eq!(c.stats().expect("daemon survives").records, 1);
    let hits = c.recall(RecallRequest { cue: "huge frame".into(), ..Default::default() }).expect("recall").hits;
    assert_eq!(hits.len(), 1);
}
