//! The `.key` file: the data key (DEK) wrapped under keys derived from the
//! secrets that may open the store, one *slot* per secret (like LUKS).
//!
//! Version 2 (written by this iai-mcp; integers little-endian):
//!
//! ```text
//! magic "IAIMCPK\0" | version u16 (2) | key id [16] | slot count u8 (1..=4) | reserved u8 (0)
//! per slot, 108 bytes:
//!   kind u8 | kdf u8 | reserved u16 (0)
//!   m_cost KiB u32 | t_cost u32 | p_cost u32 | salt [32] | nonce [12]
//!   AES-256-GCM(wrapping key, secret) [32 + 16 tag]
//!     -- associated data: magic | version | key id | the slot's first 60 bytes
//! ```
//!
//! Slot kinds:
//! - 1 passphrase, 2 recovery code, 5 keyring secret: the data key, wrapped
//!   under a key derived from the secret with Argon2id (kdf 1, its parameters
//!   and salt).
//! - 3 previous data key: only while `iai-mcp rotate` runs. The data key the
//!   store had before, wrapped under a key derived (HKDF-SHA256) from this
//!   file's data key; kdf 0, parameters 0, salt = that key's id and 16 zero
//!   bytes. Whoever opens the file opens both, so values not yet re-sealed
//!   stay readable; the slot is removed when none is left.
//! - 4 tag key: the key of the keyed tags (duplicate detection, cursor ids),
//!   wrapped the same way (salt all zero). A store that never rotated has
//!   none: its tag key is derived from its data key ([`TagKey::derive`]).
//!   Rotation writes it, so tags made under the first key keep matching.
//!
//! Each slot authenticates the file's identity and its own header, so a slot
//! edited to weaken its KDF, or moved to another file, fails like a wrong
//! secret; slots are independent, so one can be added or removed without the
//! others' secrets. At most one slot of each kind.
//!
//! Version 1 (the first release, 132 bytes, one passphrase):
//!
//! ```text
//! magic "IAIMCPK\0" | version u16 (1) | kdf u8 (1) | reserved u8 (0)
//! m_cost KiB u32 | t_cost u32 | p_cost u32 | salt [32] | key id [16] | nonce [12]
//! AES-256-GCM(KEK, DEK) [32 + 16 tag]      -- associated data: every byte before it
//! ```
//!
//! is still read; any change to the key (`passwd`, `recovery-code`) writes
//! version 2. Parameters outside sane bounds, unknown kinds, duplicate kinds
//! and counts that do not match the length are refused before any work is
//! done, so a hostile header cannot make us allocate gigabytes or spin for
//! hours.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use secrecy::{ExposeSecret, SecretBox};
use zeroize::Zeroizing;

pub const MAGIC: [u8; 8] = *b"IAIMCPK\0";
/// The version this iai-mcp writes.
pub const VERSION: u16 = 2;
pub const VERSION_1: u16 = 1;
pub const KDF_ARGON2ID: u8 = 1;
/// The slot is wrapped under the file's data key, not under a person's secret.
pub const KDF_NONE: u8 = 0;
/// Version 1: the header every byte of which is authenticated, and the file.
pub const V1_HEADER_LEN: usize = 8 + 2 + 1 + 1 + 4 + 4 + 4 + 32 + 16 + 12;
pub const V1_LEN: usize = V1_HEADER_LEN + 32 + 16;
/// Version 2: the file header, one slot's header, one slot.
pub const V2_HEADER_LEN: usize = 8 + 2 + 16 + 1 + 1;
const SLOT_HEADER_LEN: usize = 1 + 1 + 2 + 4 + 4 + 4 + 32 + 12;
pub const SLOT_LEN: usize = SLOT_HEADER_LEN + 32 + 16;
/// Most slots in one file (one per kind, room for the kinds to come).
pub const MAX_SLOTS: usize = 6;
/// The longest key file of any version: what a reader needs to read.
pub const MAX_KEYFILE_LEN: usize = V2_HEADER_LEN + MAX_SLOTS * SLOT_LEN;

/// The shortest passphrase `init` accepts.
pub const MIN_PASSPHRASE_CHARS: usize = 8;
/// The longest passphrase read from any source.
pub const MAX_PASSPHRASE_BYTES: usize = 4096;

/// A passphrase, wiped on drop, never printed.
pub struct Passphrase(SecretBox<[u8]>);

impl Passphrase {
    /// Takes the bytes as they are (no trimming). The vector is wiped.
    pub fn new(mut bytes: Vec<u8>) -> Self {
        let pass = Self::from_slice(&bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
        pass
    }
    /// Copies the bytes into one allocation of exactly their size (no
    /// reallocation can leave an unwiped copy behind).
    pub fn from_slice(bytes: &[u8]) -> Self {
        Passphrase(SecretBox::new(Box::from(bytes)))
    }
    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }
    /// Length in characters (Unicode scalar values when the bytes are UTF-8).
    pub fn chars(&self) -> usize {
        match std::str::from_utf8(self.expose()) {
            Ok(s) => s.chars().count(),
            Err(_) => self.expose().len(),
        }
    }
}

/// Argon2id cost parameters, validated on construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    m_kib: u32,
    t: u32,
    p: u32,
}

/// Bounds outside of which a header is treated as hostile.
pub const MIN_M_KIB: u32 = 19 * 1024;
pub const MAX_M_KIB: u32 = 2 * 1024 * 1024;
pub const MAX_T: u32 = 16;
pub const MAX_P: u32 = 16;

impl KdfParams {
    /// RFC 9106's second recommended option: 64 MiB, 3 passes, 4 lanes.
    pub const DEFAULT: KdfParams = KdfParams { m_kib: 64 * 1024, t: 3, p: 4 };
    /// The parameters of a slot opened by the data key (no KDF).
    const NONE: KdfParams = KdfParams { m_kib: 0, t: 0, p: 0 };

    pub fn new(m_kib: u32, t: u32, p: u32) -> Result<Self, KeyFileError> {
        let hostile = |why: String| Err(KeyFileError::HostileKdf(why));
        if !(MIN_M_KIB..=MAX_M_KIB).contains(&m_kib) {
            return hostile(format!("memory {m_kib} KiB is outside {MIN_M_KIB}..={MAX_M_KIB} KiB"));
        }
        if !(1..=MAX_T).contains(&t) {
            return hostile(format!("{t} passes is outside 1..={MAX_T}"));
        }
        if !(1..=MAX_P).contains(&p) {
            return hostile(format!("{p} lanes is outside 1..={MAX_P}"));
        }
        Ok(KdfParams { m_kib, t, p })
    }
    pub fn m_kib(&self) -> u32 {
        self.m_kib
    }
    pub fn t(&self) -> u32 {
        self.t
    }
    pub fn p(&self) -> u32 {
        self.p
    }
    /// True when every parameter is at least the default (what `audit` wants).
    pub fn at_least_default(&self) -> bool {
        self.m_kib >= Self::DEFAULT.m_kib && self.t >= Self::DEFAULT.t && self.p >= Self::DEFAULT.p
    }
}

/// Identifies one data key; written into every sealed blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyId(pub [u8; 16]);

/// The 256-bit data key. No Debug, wiped on drop.
pub struct Dek(SecretBox<[u8; 32]>);

impl Dek {
    pub fn random() -> Result<Self, KeyFileError> {
        let mut key = SecretBox::new(Box::new([0u8; 32]));
        getrandom::getrandom(secrecy::ExposeSecretMut::expose_secret_mut(&mut key))
            .map_err(|_| KeyFileError::Random)?;
        Ok(Dek(key))
    }
    /// A DEK from known bytes (known-answer vectors, key import).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let mut bytes = zeroize::Zeroizing::new(bytes);
        let mut key = SecretBox::new(Box::new([0u8; 32]));
        secrecy::ExposeSecretMut::expose_secret_mut(&mut key).copy_from_slice(bytes.as_ref());
        zeroize::Zeroize::zeroize(&mut *bytes);
        Dek(key)
    }
    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}

/// What a slot's secret is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotKind {
    Passphrase = 1,
    /// A random code shown once (`iai-mcp recovery-code add`).
    RecoveryCode = 2,
    /// The data key before `iai-mcp rotate`, while values are re-sealed.
    PreviousKey = 3,
    /// The key of the keyed tags, once the data key has been rotated.
    TagKey = 4,
    /// A random secret kept in the user's login keyring (`iai-mcp keyring enable`).
    Keyring = 5,
}

impl SlotKind {
    fn from_code(c: u8) -> Option<SlotKind> {
        match c {
            1 => Some(SlotKind::Passphrase),
            2 => Some(SlotKind::RecoveryCode),
            3 => Some(SlotKind::PreviousKey),
            4 => Some(SlotKind::TagKey),
            5 => Some(SlotKind::Keyring),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            SlotKind::Passphrase => "passphrase",
            SlotKind::RecoveryCode => "recovery code",
            SlotKind::PreviousKey => "previous data key",
            SlotKind::TagKey => "tag key",
            SlotKind::Keyring => "keyring secret",
        }
    }
    /// Opened by a person's secret (Argon2id); the others by the data key.
    pub fn is_secret(self) -> bool {
        matches!(self, SlotKind::Passphrase | SlotKind::RecoveryCode | SlotKind::Keyring)
    }
    fn kdf(self) -> u8 {
        if self.is_secret() {
            KDF_ARGON2ID
        } else {
            KDF_NONE
        }
    }
    /// HKDF info of the wrapping key of a slot opened by the data key.
    fn inner_info(self) -> &'static [u8] {
        match self {
            SlotKind::PreviousKey => b"iai-mcp previous data key v1",
            _ => b"iai-mcp tag key v1",
        }
    }
}

/// The key of the keyed tags (HMAC-SHA256). No Debug, wiped on drop.
pub struct TagKey(SecretBox<[u8; 32]>);

impl TagKey {
    /// A store's first tag key: HKDF-SHA256 of its first data key.
    pub fn derive(dek: &Dek, key_id: &KeyId) -> TagKey {
        let mut key = SecretBox::new(Box::new([0u8; 32]));
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&key_id.0), dek.expose());
        // Expanding 32 bytes from SHA-256 HKDF cannot fail (limit is 255 * 32).
        let _ = hk.expand(b"iai-mcp duplicate tag v1", secrecy::ExposeSecretMut::expose_secret_mut(&mut key));
        TagKey(key)
    }
    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
    fn from_bytes(bytes: &[u8; 32]) -> TagKey {
        let mut key = SecretBox::new(Box::new([0u8; 32]));
        secrecy::ExposeSecretMut::expose_secret_mut(&mut key).copy_from_slice(bytes);
        TagKey(key)
    }
}

/// One wrapped copy of the DEK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    kind: SlotKind,
    params: KdfParams,
    salt: [u8; 32],
    nonce: [u8; 12],
    wrapped: [u8; 48],
}

/// A parsed `.key` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFile {
    version: u16,
    key_id: KeyId,
    slots: Vec<Slot>,
}

/// Why a `.key` could not be read or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyFileError {
    #[error("the key file is truncated ({0} bytes)")]
    Truncated(usize),
    #[error("the key file has {0} unexpected trailing bytes")]
    TrailingData(usize),
    #[error("hostile key file header: {0}")]
    HostileSlots(String),
    #[error("unknown key slot kind {0} (was the key file written by a newer iai-mcp?)")]
    UnknownSlotKind(u8),
    #[error("the key file has no {0} slot")]
    NoSuchSlot(&'static str),
    #[error("this is not an iai-mcp key file (bad magic)")]
    BadMagic,
    #[error("unsupported key file version {0} (this iai-mcp reads versions 1 and {VERSION})")]
    UnsupportedVersion(u16),
    #[error("unknown key derivation function id {0}")]
    UnknownKdf(u8),
    #[error("hostile key file header: {0}")]
    HostileKdf(String),
    #[error("wrong passphrase, or the key file was modified")]
    WrongPassphrase,
    #[error("the key file's {0} slot does not open with its data key (the file was modified)")]
    BadInnerSlot(&'static str),
    #[error("a key rotation is already under way (run `iai-mcp rotate` to finish it)")]
    RotationPending,
    #[error("the operating system's random number generator failed")]
    Random,
    #[error("the passphrase is shorter than {MIN_PASSPHRASE_CHARS} characters")]
    PassphraseTooShort,
}

fn derive_kek(pass: &Passphrase, params: &KdfParams, salt: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    let argon_params = argon2::Params::new(params.m_kib, params.t, params.p, Some(32))
        .map_err(|e| KeyFileError::HostileKdf(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, argon_params);
    let mut kek = Zeroizing::new([0u8; 32]);
    argon.hash_password_into(pass.expose(), salt, kek.as_mut()).map_err(|e| KeyFileError::HostileKdf(e.to_string()))?;
    Ok(kek)
}

/// The key that wraps a slot opened by the data key.
fn inner_aead(kind: SlotKind, key_id: &KeyId, dek: &Dek) -> Result<Aes256Gcm, KeyFileError> {
    let mut key = Zeroizing::new([0u8; 32]);
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&key_id.0), dek.expose());
    hk.expand(kind.inner_info(), key.as_mut()).map_err(|_| KeyFileError::Random)?;
    Aes256Gcm::new_from_slice(key.as_ref()).map_err(|_| KeyFileError::Random)
}

fn random<const N: usize>() -> Result<[u8; N], KeyFileError> {
    let mut out = [0u8; N];
    getrandom::getrandom(&mut out).map_err(|_| KeyFileError::Random)?;
    Ok(out)
}

impl Slot {
    fn header(&self) -> [u8; SLOT_HEADER_LEN] {
        let mut h = [0u8; SLOT_HEADER_LEN];
        let mut w = Put::new(&mut h);
        w.put(&[self.kind as u8, self.kind.kdf(), 0, 0]);
        w.put(&self.params.m_kib.to_le_bytes());
        w.put(&self.params.t.to_le_bytes());
        w.put(&self.params.p.to_le_bytes());
        w.put(&self.salt);
        w.put(&self.nonce);
        h
    }

    /// The associated data: the file's identity and this slot's header.
    fn ad(&self, key_id: &KeyId) -> Vec<u8> {
        [&MAGIC[..], &VERSION.to_le_bytes(), &key_id.0, &self.header()].concat()
    }

    fn wrap(
        kind: SlotKind,
        secret: &Passphrase,
        params: KdfParams,
        salt: [u8; 32],
        key_id: &KeyId,
        dek: &Dek,
    ) -> Result<Slot, KeyFileError> {
        let mut slot = Slot { kind, params, salt, nonce: random()?, wrapped: [0u8; 48] };
        let kek = derive_kek(secret, &params, &salt)?;
        let aead = Aes256Gcm::new_from_slice(kek.as_ref()).map_err(|_| KeyFileError::Random)?;
        let ct = aead
            .encrypt(Nonce::from_slice(&slot.nonce), Payload { msg: dek.expose(), aad: &slot.ad(key_id) })
            .map_err(|_| KeyFileError::Random)?;
        slot.wrapped.copy_from_slice(&ct);
        Ok(slot)
    }

    /// A slot opened by the data key `dek` of the file `key_id`, holding `secret`.
    fn wrap_inner(
        kind: SlotKind,
        salt: [u8; 32],
        key_id: &KeyId,
        dek: &Dek,
        secret: &[u8; 32],
    ) -> Result<Slot, KeyFileError> {
        let mut slot = Slot { kind, params: KdfParams::NONE, salt, nonce: random()?, wrapped: [0u8; 48] };
        let aead = inner_aead(kind, key_id, dek)?;
        let ct = aead
            .encrypt(Nonce::from_slice(&slot.nonce), Payload { msg: secret, aad: &slot.ad(key_id) })
            .map_err(|_| KeyFileError::Random)?;
        slot.wrapped.copy_from_slice(&ct);
        Ok(slot)
    }

    fn open_inner(&self, key_id: &KeyId, dek: &Dek) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
        let bad = || KeyFileError::BadInnerSlot(self.kind.name());
        let aead = inner_aead(self.kind, key_id, dek)?;
        let plain = Zeroizing::new(
            aead.decrypt(Nonce::from_slice(&self.nonce), Payload { msg: &self.wrapped, aad: &self.ad(key_id) })
                .map_err(|_| bad())?,
        );
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(plain.get(..32).ok_or_else(bad)?);
        Ok(out)
    }

    pub fn kind(&self) -> SlotKind {
        self.kind
    }
    pub fn params(&self) -> KdfParams {
        self.params
    }
    fn previous_id(&self) -> KeyId {
        KeyId(array(&self.salt[..16]))
    }
}

/// Writes consecutive byte strings into a fixed buffer.
struct Put<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl<'a> Put<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Put { buf, at: 0 }
    }
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
}

impl KeyFile {
    /// A new key file: a fresh random DEK behind one passphrase slot.
    pub fn create(pass: &Passphrase, params: KdfParams) -> Result<(KeyFile, Dek), KeyFileError> {
        if pass.chars() < MIN_PASSPHRASE_CHARS {
            return Err(KeyFileError::PassphraseTooShort);
        }
        let dek = Dek::random()?;
        let key_id = KeyId(random()?);
        let slot = Slot::wrap(SlotKind::Passphrase, pass, params, random()?, &key_id, &dek)?;
        Ok((KeyFile { version: VERSION, key_id, slots: vec![slot] }, dek))
    }

    /// A version-2 file holding `dek` behind one passphrase slot with
    /// explicit salt and key id (fresh nonce): the known-answer vectors.
    pub fn wrap(
        pass: &Passphrase,
        params: KdfParams,
        salt: [u8; 32],
        key_id: KeyId,
        dek: &Dek,
    ) -> Result<KeyFile, KeyFileError> {
        let slot = Slot::wrap(SlotKind::Passphrase, pass, params, salt, &key_id, dek)?;
        Ok(KeyFile { version: VERSION, key_id, slots: vec![slot] })
    }

    /// Derives the KEK of the `kind` slot from `secret` and unwraps the DEK.
    /// The KEK is wiped before this returns.
    pub fn unwrap_with(&self, kind: SlotKind, secret: &Passphrase) -> Result<Dek, KeyFileError> {
        let slot = self.slot(kind).filter(|s| s.kind.is_secret()).ok_or(KeyFileError::NoSuchSlot(kind.name()))?;
        let kek = derive_kek(secret, &slot.params, &slot.salt)?;
        let aead = Aes256Gcm::new_from_slice(kek.as_ref()).map_err(|_| KeyFileError::WrongPassphrase)?;
        let ad = match self.version {
            VERSION_1 => self.v1_header().to_vec(),
            _ => slot.ad(&self.key_id),
        };
        let plain = Zeroizing::new(
            aead.decrypt(Nonce::from_slice(&slot.nonce), Payload { msg: &slot.wrapped, aad: &ad })
                .map_err(|_| KeyFileError::WrongPassphrase)?,
        );
        let bytes: [u8; 32] = plain.as_slice().try_into().map_err(|_| KeyFileError::WrongPassphrase)?;
        Ok(Dek::from_bytes(bytes))
    }

    /// [`KeyFile::unwrap_with`] the passphrase slot.
    pub fn unwrap(&self, pass: &Passphrase) -> Result<Dek, KeyFileError> {
        self.unwrap_with(SlotKind::Passphrase, pass)
    }

    /// This file with the `kind` slot (re)made for `secret`, as version 2.
    /// The other slots are kept; a version-1 file's passphrase slot cannot
    /// be carried over (its associated data is the old header), so it must
    /// be the slot being made, or be remade with `keep_pass`.
    pub fn with_slot(
        &self,
        dek: &Dek,
        kind: SlotKind,
        secret: &Passphrase,
        params: KdfParams,
        keep_pass: Option<&Passphrase>,
    ) -> Result<KeyFile, KeyFileError> {
        if kind == SlotKind::Passphrase && secret.chars() < MIN_PASSPHRASE_CHARS {
            return Err(KeyFileError::PassphraseTooShort);
        }
        let mut slots = Vec::new();
        for s in &self.slots {
            if s.kind == kind {
                continue;
            }
            if self.version == VERSION_1 {
                // Only a passphrase slot exists in version 1.
                let pass = keep_pass.ok_or(KeyFileError::NoSuchSlot("passphrase"))?;
                slots.push(Slot::wrap(s.kind, pass, s.params, random()?, &self.key_id, dek)?);
            } else {
                slots.push(s.clone());
            }
        }
        slots.push(Slot::wrap(kind, secret, params, random()?, &self.key_id, dek)?);
        slots.sort_by_key(|s| s.kind as u8);
        Ok(KeyFile { version: VERSION, key_id: self.key_id, slots })
    }

    /// This file without its `kind` slot (never the passphrase slot), as
    /// version 2 (a version-1 file has nothing else to remove).
    pub fn without_slot(&self, kind: SlotKind) -> Result<KeyFile, KeyFileError> {
        if matches!(kind, SlotKind::Passphrase | SlotKind::TagKey) {
            return Err(KeyFileError::HostileSlots(format!("the {} slot cannot be removed", kind.name())));
        }
        if self.slot(kind).is_none() {
            return Err(KeyFileError::NoSuchSlot(kind.name()));
        }
        let slots = self.slots.iter().filter(|s| s.kind != kind).cloned().collect();
        Ok(KeyFile { version: self.version, key_id: self.key_id, slots })
    }

    /// The tag key: the tag-key slot's, or (a store that never rotated)
    /// the one derived from the data key.
    pub fn tag_key(&self, dek: &Dek) -> Result<TagKey, KeyFileError> {
        match self.slot(SlotKind::TagKey) {
            Some(s) => Ok(TagKey::from_bytes(&*s.open_inner(&self.key_id, dek)?)),
            None => Ok(TagKey::derive(dek, &self.key_id)),
        }
    }

    /// The data key before a rotation still under way, and its id.
    pub fn previous(&self, dek: &Dek) -> Result<Option<(KeyId, Dek)>, KeyFileError> {
        let Some(s) = self.slot(SlotKind::PreviousKey) else { return Ok(None) };
        let key = s.open_inner(&self.key_id, dek)?;
        Ok(Some((s.previous_id(), Dek::from_bytes(*key))))
    }

    /// The id of the data key before a rotation still under way.
    pub fn previous_id(&self) -> Option<KeyId> {
        self.slot(SlotKind::PreviousKey).map(Slot::previous_id)
    }

    /// The first step of a rotation: a new data key and key id behind the
    /// same secrets (`pass`, and those of `keep`: the other secret slots to
    /// keep, each with its secret; the rest are dropped), with the old key in
    /// a previous-key slot and the tag key carried over. `dek` is this
    /// file's data key.
    pub fn rotated(
        &self,
        dek: &Dek,
        pass: &Passphrase,
        pass_params: KdfParams,
        keep: &[(SlotKind, &Passphrase)],
    ) -> Result<(KeyFile, Dek), KeyFileError> {
        if self.slot(SlotKind::PreviousKey).is_some() {
            return Err(KeyFileError::RotationPending);
        }
        let tag = self.tag_key(dek)?;
        let new_dek = Dek::random()?;
        let key_id = KeyId(random()?);
        let mut slots = vec![Slot::wrap(SlotKind::Passphrase, pass, pass_params, random()?, &key_id, &new_dek)?];
        for &(kind, secret) in keep {
            if let Some(old) = self.slot(kind).filter(|s| s.kind.is_secret() && s.kind != SlotKind::Passphrase) {
                slots.push(Slot::wrap(kind, secret, old.params, random()?, &key_id, &new_dek)?);
            }
        }
        let file = KeyFile { version: VERSION, key_id, slots }.with_rotation_slots(
            &new_dek,
            Some((self.key_id, dek)),
            &tag,
        )?;
        Ok((file, new_dek))
    }

    /// This file (whose data key is `dek`) with a previous-key slot holding
    /// `previous` (or none) and a tag-key slot holding `tag`, replacing any.
    pub fn with_rotation_slots(
        &self,
        dek: &Dek,
        previous: Option<(KeyId, &Dek)>,
        tag: &TagKey,
    ) -> Result<KeyFile, KeyFileError> {
        if self.version == VERSION_1 {
            return Err(KeyFileError::UnsupportedVersion(VERSION_1));
        }
        let mut slots: Vec<Slot> = self.slots.iter().filter(|s| s.kind.is_secret()).cloned().collect();
        if let Some((id, old)) = previous {
            if id == self.key_id {
                return Err(KeyFileError::HostileSlots("the previous data key has the current key's id".into()));
            }
            let mut salt = [0u8; 32];
            salt[..16].copy_from_slice(&id.0);
            slots.push(Slot::wrap_inner(SlotKind::PreviousKey, salt, &self.key_id, dek, old.expose())?);
        }
        slots.push(Slot::wrap_inner(SlotKind::TagKey, [0; 32], &self.key_id, dek, tag.expose())?);
        Ok(KeyFile { version: VERSION, key_id: self.key_id, slots })
    }

    pub fn slot(&self, kind: SlotKind) -> Option<&Slot> {
        self.slots.iter().find(|s| s.kind == kind)
    }
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The passphrase slot's KDF parameters (every file has that slot).
    pub fn params(&self) -> KdfParams {
        self.slot(SlotKind::Passphrase).map_or(KdfParams::DEFAULT, |s| s.params)
    }
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    fn v1_header(&self) -> [u8; V1_HEADER_LEN] {
        let s = &self.slots[0];
        let mut h = [0u8; V1_HEADER_LEN];
        let mut w = Put::new(&mut h);
        w.put(&MAGIC);
        w.put(&VERSION_1.to_le_bytes());
        w.put(&[KDF_ARGON2ID, 0]);
        w.put(&s.params.m_kib.to_le_bytes());
        w.put(&s.params.t.to_le_bytes());
        w.put(&s.params.p.to_le_bytes());
        w.put(&s.salt);
        w.put(&self.key_id.0);
        w.put(&s.nonce);
        h
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        if self.version == VERSION_1 {
            return [&self.v1_header()[..], &self.slots[0].wrapped].concat();
        }
        let mut out = Vec::with_capacity(V2_HEADER_LEN + self.slots.len() * SLOT_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.key_id.0);
        out.extend_from_slice(&[self.slots.len() as u8, 0]);
        for s in &self.slots {
            out.extend_from_slice(&s.header());
            out.extend_from_slice(&s.wrapped);
        }
        out
    }

    /// Parses and validates a key file of either version. Never panics,
    /// whatever the bytes.
    pub fn parse(bytes: &[u8]) -> Result<KeyFile, KeyFileError> {
        if bytes.len() >= MAGIC.len() && bytes[..MAGIC.len()] != MAGIC {
            return Err(KeyFileError::BadMagic);
        }
        if bytes.len() < 10 {
            return Err(KeyFileError::Truncated(bytes.len()));
        }
        match u16::from_le_bytes([bytes[8], bytes[9]]) {
            VERSION_1 => Self::parse_v1(bytes),
            VERSION => Self::parse_v2(bytes),
            v => Err(KeyFileError::UnsupportedVersion(v)),
        }
    }

    fn parse_v1(bytes: &[u8]) -> Result<KeyFile, KeyFileError> {
        if bytes.len() < V1_LEN {
            return Err(KeyFileError::Truncated(bytes.len()));
        }
        if bytes.len() > V1_LEN {
            return Err(KeyFileError::TrailingData(bytes.len() - V1_LEN));
        }
        if bytes[10] != KDF_ARGON2ID {
            return Err(KeyFileError::UnknownKdf(bytes[10]));
        }
        if bytes[11] != 0 {
            return Err(KeyFileError::HostileKdf(format!("reserved byte is {}", bytes[11])));
        }
        let params = KdfParams::new(u32_at(bytes, 12), u32_at(bytes, 16), u32_at(bytes, 20))?;
        let slot = Slot {
            kind: SlotKind::Passphrase,
            params,
            salt: array(&bytes[24..56]),
            nonce: array(&bytes[72..84]),
            wrapped: array(&bytes[84..132]),
        };
        Ok(KeyFile { version: VERSION_1, key_id: KeyId(array(&bytes[56..72])), slots: vec![slot] })
    }

    fn parse_v2(bytes: &[u8]) -> Result<KeyFile, KeyFileError> {
        if bytes.len() < V2_HEADER_LEN {
            return Err(KeyFileError::Truncated(bytes.len()));
        }
        let count = usize::from(bytes[26]);
        if bytes[27] != 0 {
            return Err(KeyFileError::HostileSlots(format!("reserved byte is {}", bytes[27])));
        }
        if !(1..=MAX_SLOTS).contains(&count) {
            return Err(KeyFileError::HostileSlots(format!("{count} slots; a key file has 1 to {MAX_SLOTS}")));
        }
        let want = V2_HEADER_LEN + count * SLOT_LEN;
        if bytes.len() < want {
            return Err(KeyFileError::Truncated(bytes.len()));
        }
        if bytes.len() > want {
            return Err(KeyFileError::TrailingData(bytes.len() - want));
        }
        let mut slots: Vec<Slot> = Vec::with_capacity(count);
        for raw in bytes[V2_HEADER_LEN..].chunks_exact(SLOT_LEN) {
            let kind = SlotKind::from_code(raw[0]).ok_or(KeyFileError::UnknownSlotKind(raw[0]))?;
            if raw[1] != kind.kdf() {
                return Err(KeyFileError::UnknownKdf(raw[1]));
            }
            if raw[2] != 0 || raw[3] != 0 {
                return Err(KeyFileError::HostileSlots("a slot's reserved bytes are not zero".into()));
            }
            if slots.iter().any(|s| s.kind == kind) {
                return Err(KeyFileError::HostileSlots(format!("two {} slots", kind.name())));
            }
            let params = if kind.is_secret() {
                KdfParams::new(u32_at(raw, 4), u32_at(raw, 8), u32_at(raw, 12))?
            } else {
                // Opened by the data key: no parameters, and the salt holds
                // only the previous key's id (previous-key slot) or nothing.
                let salt_used = if kind == SlotKind::PreviousKey { 16 } else { 0 };
                if raw[4..16].iter().any(|&b| b != 0) || raw[16 + salt_used..48].iter().any(|&b| b != 0) {
                    return Err(KeyFileError::HostileSlots(format!("the {} slot has parameters", kind.name())));
                }
                if kind == SlotKind::PreviousKey && raw[16..32] == bytes[10..26] {
                    return Err(KeyFileError::HostileSlots("the previous data key has the current key's id".into()));
                }
                KdfParams::NONE
            };
            slots.push(Slot {
                kind,
                params,
                salt: array(&raw[16..48]),
                nonce: array(&raw[48..60]),
                wrapped: array(&raw[60..108]),
            });
        }
        if !slots.iter().any(|s| s.kind == SlotKind::Passphrase) {
            return Err(KeyFileError::HostileSlots("no passphrase slot".into()));
        }
        Ok(KeyFile { version: VERSION, key_id: KeyId(array(&bytes[10..26])), slots })
    }
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(b);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.as_bytes().to_vec())
    }

    /// Small but legal parameters keep unit tests fast; the bounds are tested separately.
    fn fast() -> KdfParams {
        KdfParams::new(MIN_M_KIB, 1, 1).expect("legal")
    }

    #[test]
    fn round_trip_and_wrong_passphrase() {
        let (kf, dek) = KeyFile::create(&pass("correct horse"), fast()).expect("create");
        let parsed = KeyFile::parse(&kf.to_bytes()).expect("parse");
        assert_eq!(parsed, kf);
        assert_eq!(parsed.unwrap(&pass("correct horse")).expect("unwrap").expose(), dek.expose());
        assert!(matches!(parsed.unwrap(&pass("correct horsf")), Err(KeyFileError::WrongPassphrase)));
    }

    #[test]
    fn slots_are_added_and_removed_without_the_other_secrets() {
        let (kf, dek) = KeyFile::create(&pass("correct horse"), fast()).expect("create");
        let with = kf.with_slot(&dek, SlotKind::RecoveryCode, &pass("RECOVERY"), fast(), None).expect("add");
        let parsed = KeyFile::parse(&with.to_bytes()).expect("parse");
        assert_eq!(parsed.slots().len(), 2);
        assert_eq!(parsed.unwrap(&pass("correct horse")).expect("passphrase").expose(), dek.expose());
        let rec = parsed.unwrap_with(SlotKind::RecoveryCode, &pass("RECOVERY")).expect("recovery");
        assert_eq!(rec.expose(), dek.expose());
        // A new passphrase keeps the recovery slot byte for byte.
        let changed =
            parsed.with_slot(&dek, SlotKind::Passphrase, &pass("battery staple"), fast(), None).expect("passwd");
        assert_eq!(changed.slot(SlotKind::RecoveryCode), parsed.slot(SlotKind::RecoveryCode));
        assert_eq!(changed.unwrap(&pass("correct horse")).err(), Some(KeyFileError::WrongPassphrase));
        let without = changed.without_slot(SlotKind::RecoveryCode).expect("remove");
        let parsed = KeyFile::parse(&without.to_bytes()).expect("parse");
        assert_eq!(parsed.slots().len(), 1);
        assert_eq!(
            parsed.unwrap_with(SlotKind::RecoveryCode, &pass("RECOVERY")).err(),
            Some(KeyFileError::NoSuchSlot("recovery code"))
        );
        assert!(parsed.without_slot(SlotKind::Passphrase).is_err(), "the passphrase slot stays");
        assert_eq!(
            parsed.with_slot(&dek, SlotKind::Passphrase, &pass("short"), fast(), None).err(),
            Some(KeyFileError::PassphraseTooShort)
        );
    }

    #[test]
    fn rotation_keeps_the_old_key_until_its_slot_goes_and_carries_the_tag_key() {
        let (kf, dek) = KeyFile::create(&pass("correct horse"), fast()).expect("create");
        let kf = kf.with_slot(&dek, SlotKind::RecoveryCode, &pass("RECOVERY"), fast(), None).expect("add");
        let first_tag = kf.tag_key(&dek).expect("tag").expose().to_vec();
        assert_eq!(first_tag, TagKey::derive(&dek, &kf.key_id()).expose().to_vec());

        let (rot, new_dek) = kf
            .rotated(&dek, &pass("correct horse"), fast(), &[(SlotKind::RecoveryCode, &pass("RECOVERY"))])
            .expect("rotate");
        let rot = KeyFile::parse(&rot.to_bytes()).expect("parse");
        assert_ne!(rot.key_id(), kf.key_id());
        assert_ne!(new_dek.expose(), dek.expose());
        assert_eq!(rot.unwrap(&pass("correct horse")).expect("pass").expose(), new_dek.expose());
        let rec = rot.unwrap_with(SlotKind::RecoveryCode, &pass("RECOVERY")).expect("recovery kept");
        assert_eq!(rec.expose(), new_dek.expose());
        let (old_id, old) = rot.previous(&new_dek).expect("opens").expect("present");
        assert_eq!(old_id, kf.key_id());
        assert_eq!(old.expose(), dek.expose());
        assert_eq!(rot.previous_id(), Some(kf.key_id()));
        assert_eq!(rot.tag_key(&new_dek).expect("tag").expose().to_vec(), first_tag);
        // Not a secret's slot: no passphrase opens it.
        assert!(matches!(rot.unwrap_with(SlotKind::PreviousKey, &pass("x")), Err(KeyFileError::NoSuchSlot(_))));
        // The wrong data key does not open the inner slots.
        assert!(matches!(rot.previous(&dek), Err(KeyFileError::BadInnerSlot("previous data key"))));
        assert!(matches!(
            rot.rotated(&new_dek, &pass("correct horse"), fast(), &[]),
            Err(KeyFileError::RotationPending)
        ));
        // A passphrase change in between keeps both inner slots byte for byte.
        let changed = rot.with_slot(&new_dek, SlotKind::Passphrase, &pass("battery staple"), fast(), None).expect("pw");
        assert_eq!(changed.slot(SlotKind::PreviousKey), rot.slot(SlotKind::PreviousKey));

        let done = KeyFile::parse(&rot.without_slot(SlotKind::PreviousKey).expect("drop").to_bytes()).expect("parse");
        assert!(done.previous(&new_dek).expect("no slot is no error").is_none());
        assert!(done.without_slot(SlotKind::TagKey).is_err(), "the tag key stays");
        // A second rotation, without the recovery code: its slot is dropped,
        // and the tag key still is the first one.
        let (again, third) = done.rotated(&new_dek, &pass("correct horse"), fast(), &[]).expect("again");
        assert!(again.slot(SlotKind::RecoveryCode).is_none());
        assert_eq!(again.tag_key(&third).expect("tag").expose().to_vec(), first_tag);
    }

    #[test]
    fn hostile_inner_slots_are_refused() {
        let (kf, dek) = KeyFile::create(&pass("correct horse"), fast()).expect("create");
        let (rot, _) = kf.rotated(&dek, &pass("correct horse"), fast(), &[]).expect("rotate");
        let bytes = rot.to_bytes();
        let slot_at =
            |kind: SlotKind| V2_HEADER_LEN + SLOT_LEN * rot.slots().iter().position(|s| s.kind == kind).expect("slot");
        let prev = slot_at(SlotKind::PreviousKey);
        let mut argon = bytes.clone();
        argon[prev + 1] = KDF_ARGON2ID;
        assert_eq!(KeyFile::parse(&argon).err(), Some(KeyFileError::UnknownKdf(KDF_ARGON2ID)));
        let mut params = bytes.clone();
        params[prev + 4] = 1;
        assert!(matches!(KeyFile::parse(&params), Err(KeyFileError::HostileSlots(_))));
        let mut salt_tail = bytes.clone();
        salt_tail[prev + 40] = 1;
        assert!(matches!(KeyFile::parse(&salt_tail), Err(KeyFileError::HostileSlots(_))));
        let mut same_id = bytes.clone();
        same_id.copy_within(10..26, prev + 16);
        assert!(matches!(KeyFile::parse(&same_id), Err(KeyFileError::HostileSlots(_))));
        let tag = slot_at(SlotKind::TagKey);
        let mut tag_salt = bytes.clone();
        tag_salt[tag + 16] = 1;
        assert!(matches!(KeyFile::parse(&tag_salt), Err(KeyFileError::HostileSlots(_))));
        // Another previous key id: parses, but the slot no longer opens.
        let mut other_id = bytes.clone();
        other_id[prev + 16] ^= 1;
        let dek2 = rot.unwrap(&pass("correct horse")).expect("pass");
        let parsed = KeyFile::parse(&other_id).expect("parses");
        assert!(matches!(parsed.previous(&dek2), Err(KeyFileError::BadInnerSlot("previous data key"))));
    }

    #[test]
    fn short_passphrases_are_refused_by_characters_not_bytes() {
        assert_eq!(KeyFile::create(&pass("1234567"), fast()).err(), Some(KeyFileError::PassphraseTooShort));
        // Eight characters, sixteen bytes.
        assert!(KeyFile::create(&pass("пароль12"), fast()).is_ok());
    }

    #[test]
    fn edited_header_fails_like_a_wrong_passphrase() {
        let (kf, _) = KeyFile::create(&pass("correct horse"), fast()).expect("create");
        let mut bytes = kf.to_bytes();
        bytes[16] = 2; // t_cost 1 -> 2, still legal
        let edited = KeyFile::parse(&bytes).expect("still parses");
        assert_eq!(edited.unwrap(&pass("correct horse")).err(), Some(KeyFileError::WrongPassphrase));
    }

    #[test]
    fn bounds() {
        assert!(KdfParams::new(MIN_M_KIB - 1, 3, 4).is_err());
        assert!(KdfParams::new(MAX_M_KIB + 1, 3, 4).is_err());
        assert!(KdfParams::new(65536, 0, 4).is_err());
        assert!(KdfParams::new(65536, MAX_T + 1, 4).is_err());
        assert!(KdfParams::new(65536, 3, 0).is_err());
        assert!(KdfParams::new(65536, 3, MAX_P + 1).is_err());
        assert!(KdfParams::DEFAULT.at_least_default());
    }
}
