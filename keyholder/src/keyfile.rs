//! The `.key` file: the data key (DEK) wrapped under a passphrase-derived key.
//!
//! Layout (version 1, integers little-endian, 132 bytes in all):
//!
//! ```text
//! magic "IAIMCPK\0" | version u16 | kdf u8 (1 = Argon2id v1.3) | reserved u8 (0)
//! m_cost KiB u32 | t_cost u32 | p_cost u32 | salt [32] | key id [16] | nonce [12]
//! AES-256-GCM(KEK, DEK) [32 + 16 tag]      -- associated data: every byte before it
//! ```
//!
//! Every header field is authenticated, so a header edited to weaken the KDF
//! fails like a wrong passphrase; parameters outside sane bounds are refused
//! before any work is done, so a hostile header cannot make us allocate
//! gigabytes or spin for hours.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use secrecy::{ExposeSecret, SecretBox};
use zeroize::Zeroizing;

pub const MAGIC: [u8; 8] = *b"IAIMCPK\0";
pub const VERSION: u16 = 1;
pub const KDF_ARGON2ID: u8 = 1;
pub const HEADER_LEN: usize = 8 + 2 + 1 + 1 + 4 + 4 + 4 + 32 + 16 + 12;
pub const KEYFILE_LEN: usize = HEADER_LEN + 32 + 16;

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

/// A parsed `.key` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFile {
    params: KdfParams,
    salt: [u8; 32],
    key_id: KeyId,
    nonce: [u8; 12],
    wrapped: [u8; 48],
}

/// Why a `.key` could not be read or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyFileError {
    #[error("the key file is truncated ({0} bytes, expected {KEYFILE_LEN})")]
    Truncated(usize),
    #[error("the key file has {0} unexpected trailing bytes")]
    TrailingData(usize),
    #[error("this is not an iai-mcp key file (bad magic)")]
    BadMagic,
    #[error("unsupported key file version {0} (this iai-mcp reads version {VERSION})")]
    UnsupportedVersion(u16),
    #[error("unknown key derivation function id {0}")]
    UnknownKdf(u8),
    #[error("hostile key file header: {0}")]
    HostileKdf(String),
    #[error("wrong passphrase, or the key file was modified")]
    WrongPassphrase,
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

impl KeyFile {
    /// Wraps a fresh random DEK under `pass`. Returns the file and the DEK.
    pub fn create(pass: &Passphrase, params: KdfParams) -> Result<(KeyFile, Dek), KeyFileError> {
        if pass.chars() < MIN_PASSPHRASE_CHARS {
            return Err(KeyFileError::PassphraseTooShort);
        }
        let dek = Dek::random()?;
        let mut salt = [0u8; 32];
        let mut key_id = [0u8; 16];
        getrandom::getrandom(&mut salt).map_err(|_| KeyFileError::Random)?;
        getrandom::getrandom(&mut key_id).map_err(|_| KeyFileError::Random)?;
        let kf = KeyFile::wrap(pass, params, salt, KeyId(key_id), &dek)?;
        Ok((kf, dek))
    }

    /// Wraps `dek` with explicit salt and key id (fresh nonce). Used by
    /// `create`, by passphrase changes, and by the known-answer vectors.
    pub fn wrap(
        pass: &Passphrase,
        params: KdfParams,
        salt: [u8; 32],
        key_id: KeyId,
        dek: &Dek,
    ) -> Result<KeyFile, KeyFileError> {
        let mut nonce = [0u8; 12];
        getrandom::getrandom(&mut nonce).map_err(|_| KeyFileError::Random)?;
        let mut kf = KeyFile { params, salt, key_id, nonce, wrapped: [0u8; 48] };
        let kek = derive_kek(pass, &params, &salt)?;
        let aead = Aes256Gcm::new_from_slice(kek.as_ref()).map_err(|_| KeyFileError::Random)?;
        let header = kf.header();
        let ct = aead
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: dek.expose(), aad: &header })
            .map_err(|_| KeyFileError::Random)?;
        kf.wrapped.copy_from_slice(&ct);
        Ok(kf)
    }

    /// Derives the KEK from `pass` and unwraps the DEK. The KEK is wiped
    /// before this returns.
    pub fn unwrap(&self, pass: &Passphrase) -> Result<Dek, KeyFileError> {
        let kek = derive_kek(pass, &self.params, &self.salt)?;
        let aead = Aes256Gcm::new_from_slice(kek.as_ref()).map_err(|_| KeyFileError::WrongPassphrase)?;
        let header = self.header();
        let plain = Zeroizing::new(
            aead.decrypt(Nonce::from_slice(&self.nonce), Payload { msg: &self.wrapped, aad: &header })
                .map_err(|_| KeyFileError::WrongPassphrase)?,
        );
        let mut key = SecretBox::new(Box::new([0u8; 32]));
        secrecy::ExposeSecretMut::expose_secret_mut(&mut key).copy_from_slice(&plain);
        Ok(Dek(key))
    }

    pub fn params(&self) -> KdfParams {
        self.params
    }
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    fn header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            h[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&MAGIC);
        put(&VERSION.to_le_bytes());
        put(&[KDF_ARGON2ID, 0]);
        put(&self.params.m_kib.to_le_bytes());
        put(&self.params.t.to_le_bytes());
        put(&self.params.p.to_le_bytes());
        put(&self.salt);
        put(&self.key_id.0);
        put(&self.nonce);
        h
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(KEYFILE_LEN);
        out.extend_from_slice(&self.header());
        out.extend_from_slice(&self.wrapped);
        out
    }

    /// Parses and validates a key file. Never panics, whatever the bytes.
    pub fn parse(bytes: &[u8]) -> Result<KeyFile, KeyFileError> {
        if bytes.len() >= MAGIC.len() && bytes[..MAGIC.len()] != MAGIC {
            return Err(KeyFileError::BadMagic);
        }
        if bytes.len() >= 10 {
            let version = u16::from_le_bytes([bytes[8], bytes[9]]);
            if version != VERSION {
                return Err(KeyFileError::UnsupportedVersion(version));
            }
        }
        if bytes.len() < KEYFILE_LEN {
            return Err(KeyFileError::Truncated(bytes.len()));
        }
        if bytes.len() > KEYFILE_LEN {
            return Err(KeyFileError::TrailingData(bytes.len() - KEYFILE_LEN));
        }
        if bytes[10] != KDF_ARGON2ID {
            return Err(KeyFileError::UnknownKdf(bytes[10]));
        }
        if bytes[11] != 0 {
            return Err(KeyFileError::HostileKdf(format!("reserved byte is {}", bytes[11])));
        }
        let u32_at = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let params = KdfParams::new(u32_at(12), u32_at(16), u32_at(20))?;
        let mut kf = KeyFile { params, salt: [0; 32], key_id: KeyId([0; 16]), nonce: [0; 12], wrapped: [0; 48] };
        kf.salt.copy_from_slice(&bytes[24..56]);
        kf.key_id.0.copy_from_slice(&bytes[56..72]);
        kf.nonce.copy_from_slice(&bytes[72..84]);
        kf.wrapped.copy_from_slice(&bytes[84..132]);
        Ok(kf)
    }
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
