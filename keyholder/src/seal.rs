//! Sealed blobs, the keyed duplicate tag, and the per-key seal counter.
//!
//! Blob layout (version 1): `version u8 | key id [16] | nonce [12] | ciphertext | tag [16]`.
//!
//! The associated data is built here, from typed fields, never from bytes the
//! caller chose: `"iai-mcp seal v1\0" | table u8 | column u8 | record id [16] |
//! key id [16] | blob version u8`. A blob moved to another row, column or table
//! fails authentication.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox};
use sha2::Sha256;

use iai_keyfile::{Dek, KeyId, TagKey};

pub const BLOB_VERSION: u8 = 1;
pub const BLOB_OVERHEAD: usize = 1 + 16 + 12 + 16;
const AD_LABEL: &[u8; 16] = b"iai-mcp seal v1\0";

/// Seals allowed per data key. Random 96-bit nonces must stay well below 2^32
/// uses per key (NIST SP 800-38D, 8.3); we stop at 2^28 and ask for rotation.
pub const SEAL_LIMIT: u64 = 1 << 28;

/// Where a sealed value lives. Only these combinations exist; the storer names
/// one of them and the keyholder builds the associated data from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Field {
    /// `records.body`: text, cue, tags, session and provenance of one memory.
    RecordBody = 1,
    /// `events.detail`: details of one audit-trail event.
    EventDetail = 2,
    /// `meta.value`: a storer setting that derives from memories (e.g. a transcript position).
    MetaValue = 3,
    /// `records.state`: what changes after capture (reinforcement, superseded
    /// by, the last event that touched the record).
    RecordState = 4,
    /// `meta.event_head`: the newest event of the audit trail, so that events
    /// cut from its end are noticed.
    EventHead = 5,
    /// `index_snapshot.blob`: one part of the sealed recall index, so that
    /// unlock need not rebuild it from every record.
    IndexSnapshot = 6,
}

impl Field {
    pub fn from_code(code: u8) -> Option<Field> {
        match code {
            1 => Some(Field::RecordBody),
            2 => Some(Field::EventDetail),
            3 => Some(Field::MetaValue),
            4 => Some(Field::RecordState),
            5 => Some(Field::EventHead),
            6 => Some(Field::IndexSnapshot),
            _ => None,
        }
    }
    /// (table, column) codes written into the associated data.
    fn table_column(self) -> (u8, u8) {
        match self {
            Field::RecordBody => (1, 1),
            Field::EventDetail => (2, 1),
            Field::MetaValue => (3, 1),
            Field::RecordState => (1, 2),
            Field::EventHead => (4, 1),
            Field::IndexSnapshot => (5, 1),
        }
    }
}

/// The keyholder's own counter blob lives in a table the storer cannot name.
const COUNTER_TABLE_COLUMN: (u8, u8) = (0xff, 0xff);

/// The id of the row a blob belongs to (a record's UUID, an event's id…).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowId(pub [u8; 16]);

/// Why a seal or unseal was refused.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealError {
    #[error("sealed blob is truncated")]
    Truncated,
    #[error("sealed blob has unknown version {0}")]
    UnknownVersion(u8),
    #[error("sealed blob belongs to another data key")]
    WrongKey,
    #[error("sealed blob failed authentication (modified, or moved from another row or column)")]
    BadTag,
    #[error("this data key has sealed its limit of values; rotate the key")]
    LimitReached,
    #[error("the operating system's random number generator failed")]
    Random,
}

/// The AES key schedule inside [`Aes256Gcm`] is wiped on drop only with the
/// `aes` crate's `zeroize` feature; this fails to compile without it.
const _: fn() = || {
    fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    wiped_on_drop::<aes::Aes256>();
};

/// Holds the data key's working forms: the AES key schedule and the tag
/// subkey. No Debug; every part is wiped on drop (the AES schedule by the
/// `aes` crate's `zeroize` feature, checked above and in CI with GHASH's).
pub struct Sealer {
    key_id: KeyId,
    aead: Box<Aes256Gcm>,
    tag_key: SecretBox<[u8; 32]>,
    count: u64,
    limit: u64,
}

impl Sealer {
    /// A sealer whose tags use the tag key derived from `dek` (a store
    /// that never rotated its key).
    pub fn new(dek: &Dek, key_id: KeyId) -> Sealer {
        Sealer::with_tag_key(dek, key_id, &TagKey::derive(dek, &key_id))
    }

    /// A sealer with the tag key the key file holds.
    pub fn with_tag_key(dek: &Dek, key_id: KeyId, tag: &TagKey) -> Sealer {
        let aead = Box::new(Aes256Gcm::new(dek.expose().into()));
        let mut tag_key = SecretBox::new(Box::new([0u8; 32]));
        secrecy::ExposeSecretMut::expose_secret_mut(&mut tag_key).copy_from_slice(tag.expose());
        Sealer { key_id, aead, tag_key, count: 0, limit: SEAL_LIMIT }
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }
    pub fn count(&self) -> u64 {
        self.count
    }
    pub fn limit(&self) -> u64 {
        self.limit
    }
    /// Lowers the limit (tests of the refusal path).
    pub fn with_limit(mut self, limit: u64) -> Sealer {
        self.limit = limit.min(SEAL_LIMIT);
        self
    }

    /// Addresses of the secret state, so the caller can lock them in RAM.
    pub fn secret_regions(&self) -> [(*const u8, usize); 2] {
        [
            (std::ptr::from_ref::<Aes256Gcm>(&self.aead).cast::<u8>(), std::mem::size_of::<Aes256Gcm>()),
            (self.tag_key.expose_secret().as_ptr(), 32),
        ]
    }

    fn ad(&self, (table, column): (u8, u8), row: RowId) -> [u8; 16 + 2 + 16 + 16 + 1] {
        let mut ad = [0u8; 51];
        ad[..16].copy_from_slice(AD_LABEL);
        ad[16] = table;
        ad[17] = column;
        ad[18..34].copy_from_slice(&row.0);
        ad[34..50].copy_from_slice(&self.key_id.0);
        ad[50] = BLOB_VERSION;
        ad
    }

    fn seal_at(&mut self, place: (u8, u8), row: RowId, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        if self.count >= self.limit {
            return Err(SealError::LimitReached);
        }
        let mut nonce = [0u8; 12];
        getrandom::getrandom(&mut nonce).map_err(|_| SealError::Random)?;
        self.count += 1;
        let ad = self.ad(place, row);
        let ct = self
            .aead
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad: &ad })
            .map_err(|_| SealError::Random)?;
        let mut blob = Vec::with_capacity(BLOB_OVERHEAD + plain.len());
        blob.push(BLOB_VERSION);
        blob.extend_from_slice(&self.key_id.0);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ct);
        Ok(blob)
    }

    fn unseal_at(&self, place: (u8, u8), row: RowId, blob: &[u8]) -> Result<Vec<u8>, SealError> {
        let Some(&version) = blob.first() else {
            return Err(SealError::Truncated);
        };
        if version != BLOB_VERSION {
            return Err(SealError::UnknownVersion(version));
        }
        if blob.len() < BLOB_OVERHEAD {
            return Err(SealError::Truncated);
        }
        if blob[1..17] != self.key_id.0 {
            return Err(SealError::WrongKey);
        }
        let ad = self.ad(place, row);
        self.aead
            .decrypt(Nonce::from_slice(&blob[17..29]), Payload { msg: &blob[29..], aad: &ad })
            .map_err(|_| SealError::BadTag)
    }

    /// Key rotation: `blob`, sealed by `old`, sealed again by this sealer
    /// for the same place. The plaintext is wiped before this returns.
    pub fn reseal(&mut self, old: &Sealer, field: Field, row: RowId, blob: &[u8]) -> Result<Vec<u8>, SealError> {
        let plain = zeroize::Zeroizing::new(old.unseal(field, row, blob)?);
        self.seal(field, row, &plain)
    }

    /// The id of the data key a blob was sealed under, if it has one.
    pub fn blob_key_id(blob: &[u8]) -> Option<KeyId> {
        blob.get(1..17).map(|b| KeyId(b.try_into().expect("16 bytes")))
    }

    pub fn seal(&mut self, field: Field, row: RowId, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        self.seal_at(field.table_column(), row, plain)
    }

    pub fn unseal(&self, field: Field, row: RowId, blob: &[u8]) -> Result<Vec<u8>, SealError> {
        self.unseal_at(field.table_column(), row, blob)
    }

    /// HMAC-SHA256 under the tag subkey: equal inputs give equal tags, and
    /// nothing about the input can be learned without the key.
    pub fn tag(&self, data: &[u8]) -> [u8; 32] {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(self.tag_key.expose_secret()).expect("HMAC accepts any key length");
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// Seals the current count, for the storer to keep with its data. The
    /// counter seal is counted too.
    pub fn counter_blob(&mut self) -> Result<Vec<u8>, SealError> {
        let next = self.count + 1;
        self.seal_at(COUNTER_TABLE_COLUMN, RowId([0; 16]), &next.to_le_bytes())
    }

    /// Resumes counting from a blob made by [`Sealer::counter_blob`].
    pub fn restore_counter(&mut self, blob: &[u8]) -> Result<(), SealError> {
        let plain = self.unseal_at(COUNTER_TABLE_COLUMN, RowId([0; 16]), blob)?;
        let bytes: [u8; 8] = plain.as_slice().try_into().map_err(|_| SealError::Truncated)?;
        self.count = self.count.max(u64::from_le_bytes(bytes));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        let dek = Dek::random().expect("random");
        Sealer::new(&dek, KeyId([7; 16]))
    }

    #[test]
    fn seal_unseal_round_trip_and_binding() {
        let mut s = sealer();
        let row = RowId([1; 16]);
        let blob = s.seal(Field::RecordBody, row, "héllo 世界".as_bytes()).expect("seal");
        assert_eq!(s.unseal(Field::RecordBody, row, &blob).expect("unseal"), "héllo 世界".as_bytes());
        assert_eq!(s.unseal(Field::RecordBody, RowId([2; 16]), &blob), Err(SealError::BadTag));
        assert_eq!(s.unseal(Field::EventDetail, row, &blob), Err(SealError::BadTag));
        let mut flipped = blob.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(s.unseal(Field::RecordBody, row, &flipped), Err(SealError::BadTag));
        assert_eq!(s.unseal(Field::RecordBody, row, &blob[..BLOB_OVERHEAD - 1]), Err(SealError::Truncated));
        assert_eq!(s.unseal(Field::RecordBody, row, &[]), Err(SealError::Truncated));
        let mut v2 = blob.clone();
        v2[0] = 2;
        assert_eq!(s.unseal(Field::RecordBody, row, &v2), Err(SealError::UnknownVersion(2)));
        let mut other_key = blob;
        other_key[1] ^= 1;
        assert_eq!(s.unseal(Field::RecordBody, row, &other_key), Err(SealError::WrongKey));
    }

    #[test]
    fn limit_is_enforced_and_counter_survives_restart() {
        let dek = Dek::random().expect("random");
        let mut s = Sealer::new(&dek, KeyId([7; 16])).with_limit(3);
        s.seal(Field::RecordBody, RowId([0; 16]), b"a").expect("1");
        let counter = s.counter_blob().expect("2");
        s.seal(Field::RecordBody, RowId([0; 16]), b"b").expect("3");
        assert_eq!(s.seal(Field::RecordBody, RowId([0; 16]), b"c"), Err(SealError::LimitReached));

        let mut resumed = Sealer::new(&dek, KeyId([7; 16])).with_limit(3);
        resumed.restore_counter(&counter).expect("restore");
        assert_eq!(resumed.count(), 2);
        // A counter blob cannot be passed off as a record, nor a record as a counter.
        assert_eq!(resumed.unseal(Field::MetaValue, RowId([0; 16]), &counter), Err(SealError::BadTag));
        let rec = resumed.seal(Field::MetaValue, RowId([0; 16]), &5u64.to_le_bytes()).expect("seal");
        assert_eq!(resumed.restore_counter(&rec), Err(SealError::BadTag));
    }

    #[test]
    fn tags_are_deterministic_and_keyed() {
        let a = sealer();
        let b = sealer();
        assert_eq!(a.tag(b"same"), a.tag(b"same"));
        assert_ne!(a.tag(b"same"), a.tag(b"other"));
        assert_ne!(a.tag(b"same"), b.tag(b"same"));
    }
}
