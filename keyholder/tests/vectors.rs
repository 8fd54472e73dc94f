//! Known-answer vectors for `.key` files and sealed blobs. Each directory has
//! an `EXPECT` file naming every vector and the outcome it must produce; the
//! vectors themselves are committed bytes, so a format change that breaks old
//! files fails here. `keyfile/` holds version-1 files (the first release's
//! format, frozen: nothing writes version 1 any more); `keyfile-v2/` the
//! current format. Regenerate the current ones (after a deliberate format
//! change only) with
//! `IAI_MCP_BLESS=1 cargo test -p iai-keyholder --test vectors -- --ignored`.

use std::path::PathBuf;

use iai_keyholder::keyfile::SlotKind;
use iai_keyholder::{Dek, Field, KdfParams, KeyFile, KeyFileError, KeyId, Passphrase, RowId, SealError, Sealer};

const PASS: &str = "vector passphrase 1";
/// The secret of the version-2 vectors' recovery slot.
const RECOVERY: &str = "VECTORRECOVERYCODE0000000000000";
const PLAIN: &str = "known answer: sealed text ✓ 東京";

fn dir(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors").join(sub)
}

fn dek_bytes() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}

fn key_id() -> KeyId {
    KeyId(std::array::from_fn(|i| 0xa0 + i as u8))
}

/// The rotation vectors' previous data key and its id.
fn previous_bytes() -> [u8; 32] {
    std::array::from_fn(|i| 0x80 + i as u8)
}

fn previous_id() -> KeyId {
    KeyId(std::array::from_fn(|i| 0x10 + i as u8))
}

/// Every file in a vector directory must be named in its EXPECT.
fn assert_all_listed(sub: &str, expect: &str) {
    for e in std::fs::read_dir(dir(sub)).expect("dir").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name != "EXPECT" {
            assert!(
                expect.lines().any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}:"))),
                "{sub}/{name} has no expected outcome"
            );
        }
    }
}

fn outcome(r: Result<KeyFile, KeyFileError>) -> String {
    match r {
        Ok(_) => "parses".into(),
        Err(KeyFileError::Truncated(_)) => "truncated".into(),
        Err(KeyFileError::TrailingData(_)) => "trailing-data".into(),
        Err(KeyFileError::BadMagic) => "bad-magic".into(),
        Err(KeyFileError::UnsupportedVersion(_)) => "unsupported-version".into(),
        Err(KeyFileError::UnknownKdf(_)) => "unknown-kdf".into(),
        Err(KeyFileError::HostileKdf(_)) => "hostile-kdf".into(),
        Err(KeyFileError::HostileSlots(_)) => "hostile-slots".into(),
        Err(KeyFileError::UnknownSlotKind(_)) => "unknown-slot-kind".into(),
        Err(other) => format!("unexpected {other}"),
    }
}

#[test]
fn keyfile_vectors() {
    let seen = keyfile_dir("keyfile");
    assert!(seen >= 12, "only {seen} version-1 key file vectors");
    let seen = keyfile_dir("keyfile-v2");
    assert!(seen >= 30, "only {seen} version-2 key file vectors");
}

/// Checks every vector of `sub` against its EXPECT; returns how many.
fn keyfile_dir(sub: &str) -> usize {
    let expect = std::fs::read_to_string(dir(sub).join("EXPECT")).expect("EXPECT");
    assert_all_listed(sub, &expect);
    let mut seen = 0;
    for line in expect.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let (file, want) = line.split_once(':').expect("file: outcome");
        let want = want.split('#').next().unwrap_or_default().trim();
        let bytes = std::fs::read(dir(sub).join(file.trim())).expect("vector file");
        let parsed = KeyFile::parse(&bytes);
        match want {
            "ok" => {
                let kf = parsed.expect("valid vector parses");
                let dek = kf.unwrap(&Passphrase::new(PASS.into())).expect("right passphrase unwraps");
                assert_eq!(*dek.expose(), dek_bytes(), "{file}: unwrapped DEK");
                assert_eq!(kf.key_id(), key_id());
                assert_eq!(
                    kf.unwrap(&Passphrase::new(b"vector passphrase 2".to_vec())).err(),
                    Some(KeyFileError::WrongPassphrase)
                );
                if kf.slot(SlotKind::RecoveryCode).is_some() {
                    let rec = kf.unwrap_with(SlotKind::RecoveryCode, &Passphrase::new(RECOVERY.into()));
                    assert_eq!(*rec.expect("the recovery slot unwraps").expose(), dek_bytes(), "{file}");
                }
                // What parses re-encodes to the same bytes, whatever its version.
                assert_eq!(kf.to_bytes(), bytes, "{file}");
            }
            "rotation-ok" => {
                let kf = parsed.expect("valid vector parses");
                let dek = kf.unwrap(&Passphrase::new(PASS.into())).expect("right passphrase unwraps");
                assert_eq!(*dek.expose(), dek_bytes(), "{file}: unwrapped DEK");
                let (id, old) = kf.previous(&dek).expect("opens").expect("a previous key");
                assert_eq!((id, *old.expose()), (previous_id(), previous_bytes()), "{file}");
                let tag = kf.tag_key(&dek).expect("tag key");
                let want = iai_keyholder::keyfile::TagKey::derive(&old, &id);
                assert_eq!(tag.expose(), want.expose(), "{file}: the first key's tag key");
                assert_eq!(kf.to_bytes(), bytes, "{file}");
            }
            "bad-inner-slot" => {
                let kf = parsed.unwrap_or_else(|e| panic!("{file} must parse, got {e}"));
                let dek = kf.unwrap(&Passphrase::new(PASS.into())).expect("right passphrase unwraps");
                assert!(
                    matches!(
                        (kf.previous(&dek), kf.tag_key(&dek)),
                        (Err(KeyFileError::BadInnerSlot(_)), _) | (_, Err(KeyFileError::BadInnerSlot(_)))
                    ),
                    "{file}"
                );
            }
            "wrong-passphrase" => {
                let kf = parsed.unwrap_or_else(|e| panic!("{file} must parse, got {e}"));
                assert_eq!(
                    kf.unwrap(&Passphrase::new(PASS.into())).err(),
                    Some(KeyFileError::WrongPassphrase),
                    "{file}"
                );
            }
            other => assert_eq!(outcome(parsed), other, "{sub}/{file}"),
        }
        seen += 1;
    }
    seen
}

fn field(name: &str) -> Field {
    match name {
        "record_body" => Field::RecordBody,
        "event_detail" => Field::EventDetail,
        "meta_value" => Field::MetaValue,
        other => panic!("unknown field {other}"),
    }
}

#[test]
fn blob_vectors() {
    let sealer = Sealer::new(&Dek::from_bytes(dek_bytes()), key_id());
    let expect = std::fs::read_to_string(dir("blob").join("EXPECT")).expect("EXPECT");
    assert_all_listed("blob", &expect);
    let mut seen = 0;
    for line in expect.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        // file field row-byte: outcome
        let (left, want) = line.split_once(':').expect("left: outcome");
        let parts: Vec<&str> = left.split_whitespace().collect();
        let [file, f, row] = parts[..] else { panic!("bad line {line}") };
        let row = RowId([u8::from_str_radix(row, 16).expect("row byte"); 16]);
        let blob = std::fs::read(dir("blob").join(file)).expect("vector");
        let got = sealer.unseal(field(f), row, &blob);
        match want.trim() {
            "ok" => assert_eq!(got.expect(file), PLAIN.as_bytes(), "{file}"),
            w => {
                let err = got.expect_err(file);
                let name = match err {
                    SealError::Truncated => "truncated",
                    SealError::UnknownVersion(_) => "unknown-version",
                    SealError::WrongKey => "wrong-key",
                    SealError::BadTag => "bad-tag",
                    _ => "other",
                };
                assert_eq!(name, w, "{line}");
            }
        }
        seen += 1;
    }
    assert!(seen >= 8, "only {seen} blob vectors");
}

#[test]
#[ignore = "writes the vector files; run only after a deliberate format change"]
fn regenerate_vectors() {
    if std::env::var_os("IAI_MCP_BLESS").is_none() {
        return;
    }
    let params = KdfParams::new(iai_keyholder::keyfile::MIN_M_KIB, 1, 1).expect("params");
    let dek = Dek::from_bytes(dek_bytes());
    let pass = Passphrase::new(PASS.into());
    let kf = KeyFile::wrap(&pass, params, [0x5a; 32], key_id(), &dek)
        .and_then(|k| k.with_slot(&dek, SlotKind::RecoveryCode, &Passphrase::new(RECOVERY.into()), params, None))
        .expect("wrap");
    let valid = kf.to_bytes();
    let kdir = dir("keyfile-v2");
    std::fs::create_dir_all(&kdir).expect("mkdir");
    let write = |name: &str, bytes: &[u8]| std::fs::write(kdir.join(name), bytes).expect("write");
    let edit = |at: usize, with: &[u8]| {
        let mut b = valid.clone();
        b[at..at + with.len()].copy_from_slice(with);
        b
    };
    // Offsets: header 28 bytes (count at 26); slots of 108 from 28 and 136;
    // in a slot: kind 0, kdf 1, reserved 2..4, m 4, t 8, p 12, salt 16,
    // nonce 48, wrapped 60.
    let (s0, s1) = (28, 136);
    let one_slot = {
        let mut b = valid[..s1].to_vec();
        b[26] = 1;
        b
    };
    write("valid.key", &valid);
    write("one-slot.key", &one_slot);
    write("empty.key", &[]);
    write("truncated.key", &valid[..200]);
    write("header-only.key", &valid[..20]);
    write("trailing.key", &[valid.as_slice(), &[0]].concat());
    write("zero-slots.key", &edit(26, &[0]));
    write("too-many-slots.key", &edit(26, &[7]));
    write("count-says-more.key", &edit(26, &[3]));
    write("reserved.key", &edit(27, &[1]));
    write("slot-reserved.key", &edit(s0 + 2, &[1]));
    write("unknown-kind.key", &edit(s1, &[9]));
    write("unknown-kdf.key", &edit(s0 + 1, &[7]));
    write("duplicate-kind.key", &edit(s1, &[1]));
    write("no-passphrase-slot.key", &edit(s0, &[2]));
    let mut swapped = edit(s0, &[2]);
    swapped[s1] = 1;
    write("swapped-kinds.key", &swapped);
    write("hostile-memory.key", &edit(s1 + 4, &u32::MAX.to_le_bytes()));
    write("hostile-lanes.key", &edit(s0 + 12, &0u32.to_le_bytes()));
    write("edited-key-id.key", &edit(12, &[valid[12] ^ 1]));
    write("edited-passes.key", &edit(s0 + 8, &2u32.to_le_bytes()));
    write("edited-salt.key", &edit(s0 + 20, &[valid[s0 + 20] ^ 0xff]));
    write("bad-tag.key", &edit(s1 - 1, &[valid[s1 - 1] ^ 1]));

    rotation_vectors();

    let mut sealer = Sealer::new(&dek, key_id());
    let blob = sealer.seal(Field::RecordBody, RowId([0x11; 16]), PLAIN.as_bytes()).expect("seal");
    let bdir = dir("blob");
    let bwrite = |name: &str, bytes: &[u8]| std::fs::write(bdir.join(name), bytes).expect("write");
    bwrite("valid.blob", &blob);
    bwrite("empty.blob", &[]);
    bwrite("truncated.blob", &blob[..40]);
    let mut bad = blob.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    bwrite("bad-tag.blob", &bad);
    let mut v = blob.clone();
    v[0] = 9;
    bwrite("unknown-version.blob", &v);
    let mut k = blob.clone();
    k[1] ^= 0xff;
    bwrite("other-key.blob", &k);
    let mut n = blob;
    n[20] ^= 1;
    bwrite("bad-nonce.blob", &n);
}

/// A key file in the middle of a rotation (passphrase, previous-key and
/// tag-key slots) and its hostile variants. Written separately, so adding
/// them did not change the older vectors' bytes.
fn rotation_vectors() {
    let params = KdfParams::new(iai_keyholder::keyfile::MIN_M_KIB, 1, 1).expect("params");
    let dek = Dek::from_bytes(dek_bytes());
    let old = Dek::from_bytes(previous_bytes());
    let tag = iai_keyholder::keyfile::TagKey::derive(&old, &previous_id());
    let kf = KeyFile::wrap(&Passphrase::new(PASS.into()), params, [0x5a; 32], key_id(), &dek)
        .and_then(|k| k.with_rotation_slots(&dek, Some((previous_id(), &old)), &tag))
        .expect("wrap");
    let valid = kf.to_bytes();
    let kdir = dir("keyfile-v2");
    let write = |name: &str, bytes: &[u8]| std::fs::write(kdir.join(name), bytes).expect("write");
    let edit = |at: usize, with: &[u8]| {
        let mut b = valid.clone();
        b[at..at + with.len()].copy_from_slice(with);
        b
    };
    // Slots: passphrase at 28, previous key at 136, tag key at 244.
    let (prev, tag_at) = (136, 244);
    write("rotation.key", &valid);
    write("rotation-previous-argon.key", &edit(prev + 1, &[1]));
    write("rotation-previous-params.key", &edit(prev + 4, &[1]));
    write("rotation-previous-salt-tail.key", &edit(prev + 40, &[1]));
    write("rotation-previous-same-id.key", &edit(prev + 16, &key_id().0));
    write("rotation-previous-edited-id.key", &edit(prev + 16, &[valid[prev + 16] ^ 1]));
    write("rotation-tag-salt.key", &edit(tag_at + 16, &[1]));
    write("rotation-tag-bad-tag.key", &edit(tag_at + 107, &[valid[tag_at + 107] ^ 1]));
    write("rotation-two-tag-slots.key", &edit(prev, &[4]));
}

#[test]
#[ignore = "writes the rotation vector files; run only after a deliberate format change"]
fn regenerate_rotation_vectors() {
    if std::env::var_os("IAI_MCP_BLESS").is_some() {
        rotation_vectors();
    }
}
