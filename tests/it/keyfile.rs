//! `init` and the checks the keyholder makes on `.key` before trusting it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::support::{assert_ok, stderr, TestHome, PASS};

#[test]
fn init_creates_private_files_and_never_overwrites_a_key() {
    let h = TestHome::new();
    h.init();
    let mode = |p: &std::path::Path| std::fs::symlink_metadata(p).expect("stat").mode() & 0o7777;
    let home = h.home();
    assert_eq!(mode(home.root()), 0o700);
    assert_eq!(mode(&home.store_dir()), 0o700);
    assert_eq!(mode(&home.run_dir()), 0o700);
    assert_eq!(mode(&home.key()), 0o600);
    let key_before = std::fs::read(home.key()).expect("key");
    // Version 2, one passphrase slot.
    assert_eq!(key_before.len(), 136);
    assert_eq!(key_before[8..10], 2u16.to_le_bytes());

    let again = h.run_with_pass(&["init"], "another long passphrase");
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("never overwrites"), "{}", stderr(&again));
    assert_eq!(std::fs::read(home.key()).expect("key"), key_before);
}

#[test]
fn init_refuses_short_or_missing_passphrases() {
    let h = TestHome::new();
    let short = h.run_with_pass(&["init"], "1234567");
    assert_eq!(short.status.code(), Some(1));
    assert!(stderr(&short).contains("at least 8 characters"), "{}", stderr(&short));
    assert!(!h.home().key().exists());

    // No fd, no environment, no terminal: a clear message, not a hang.
    let none = h.run(&["init"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(stderr(&none).contains("--passphrase-fd"), "{}", stderr(&none));

    let bad_fd = h.run(&["init", "--passphrase-fd", "77"]);
    assert_eq!(bad_fd.status.code(), Some(1));
    assert!(stderr(&bad_fd).contains("descriptor is not open"), "{}", stderr(&bad_fd));
}

#[test]
fn unlock_refuses_a_key_file_that_is_not_private_and_says_how_to_fix_it() {
    let h = TestHome::new();
    h.init();
    let key = h.home().key();

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = h.run_with_pass(&["unlock"], PASS);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    let real = h.root.join("real.key");
    std::fs::rename(&key, &real).expect("move");
    std::os::unix::fs::symlink(&real, &key).expect("symlink");
    let out = h.run_with_pass(&["unlock"], PASS);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    std::fs::remove_file(&key).expect("unlink");

    std::fs::hard_link(&real, &key).expect("hard link");
    let out = h.run_with_pass(&["unlock"], PASS);
    assert!(stderr(&out).contains("hard links"), "{}", stderr(&out));
    std::fs::remove_file(&real).expect("unlink");

    let mut bytes = std::fs::read(&key).expect("read");
    bytes.truncate(100);
    std::fs::write(&key, &bytes).expect("truncate");
    let out = h.run_with_pass(&["unlock"], PASS);
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));

    std::fs::remove_file(&key).expect("unlink");
    let out = h.run_with_pass(&["unlock"], PASS);
    assert!(stderr(&out).contains("iai-mcp init"), "{}", stderr(&out));
    assert_eq!(h.status()["state"], "locked");
}

#[test]
fn a_hostile_work_factor_is_refused_before_any_work() {
    let h = TestHome::new();
    h.init();
    let key = h.home().key();
    let mut bytes = std::fs::read(&key).expect("read");
    // The passphrase slot's m_cost = 0xffffffff KiB: far beyond the accepted bound.
    bytes[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&key, &bytes).expect("write");
    let started = std::time::Instant::now();
    let out = h.run_with_pass(&["unlock"], PASS);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("hostile key file header"), "{}", stderr(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_ok(&h.run(&["status"]), "status still works");
}
