//! The storer ⇄ keyholder protocol, over the socketpair the keyholder created.
//!
//! Frame (`iai_policy::frame`, shared with the client socket): `length u32 LE
//! | version u8 | kind u8 | payload`, length capped at [`MAX_FRAME`], batches capped at [`MAX_BATCH`] items. Every length read from
//! the peer is checked against what is left of the frame before anything is
//! allocated. A frame that does not decode ends the connection (and so the
//! keyholder); a request the keyholder will not serve is an ordinary
//! [`Response::Refused`].

use std::io::{self, Read, Write};

use iai_policy::frame::{self, Frame};

use crate::seal::{Field, RowId, SealError};
use iai_keyfile::KeyId;

pub const WIRE_VERSION: u8 = 1;
/// Largest frame either side accepts (body bytes, excluding the length prefix).
pub const MAX_FRAME: usize = 16 << 20;
/// Most items in one batch.
pub const MAX_BATCH: usize = 4096;
/// Most records one unseal may name once the storer is serving: the largest
/// real operation (an events page of 1,000); only loading the index needs more.
pub const SERVING_MAX_UNSEAL: usize = 1000;

mod kind {
    pub const HELLO: u8 = 0x01;
    pub const SEAL: u8 = 0x02;
    pub const UNSEAL: u8 = 0x03;
    pub const TAG: u8 = 0x04;
    pub const READY: u8 = 0x05;
    pub const RESEAL: u8 = 0x06;
    pub const FORGET_PREVIOUS: u8 = 0x07;
    pub const HELLO_OK: u8 = 0x81;
    pub const SEALED: u8 = 0x82;
    pub const UNSEALED: u8 = 0x83;
    pub const TAGGED: u8 = 0x84;
    pub const READY_OK: u8 = 0x85;
    pub const RESEALED: u8 = 0x86;
    pub const FORGOT_PREVIOUS: u8 = 0x87;
    pub const REFUSED: u8 = 0xff;
}

pub struct SealItem {
    pub field: Field,
    pub row: RowId,
    pub plain: Vec<u8>,
}

pub struct UnsealItem {
    pub field: Field,
    pub row: RowId,
    pub blob: Vec<u8>,
}

pub enum Request {
    /// First request: hands back the counter blob the storer kept, if any.
    Hello {
        counter: Option<Vec<u8>>,
    },
    Seal(Vec<SealItem>),
    Unseal(Vec<UnsealItem>),
    /// Keyed duplicate tags of each input.
    Tag(Vec<Vec<u8>>),
    /// The index is built: from now on only batches the size of real
    /// operations are served (see [`SERVING_MAX_UNSEAL`]). Once.
    Ready,
    /// Key rotation: each blob (sealed under the previous data key) unsealed
    /// and sealed again under the current one, its plaintext never leaving
    /// the keyholder.
    Reseal(Vec<UnsealItem>),
    /// Key rotation is finished: the previous data key is wiped.
    ForgetPrevious,
    /// A request kind this keyholder does not know.
    Unknown(u8),
}

pub enum Response {
    Hello {
        key_id: KeyId,
        /// The data key before a rotation still under way.
        previous: Option<KeyId>,
        count: u64,
        limit: u64,
        degraded: bool,
    },
    /// The blobs in request order, and the counter blob to store with them.
    Sealed {
        counter: Vec<u8>,
        blobs: Vec<Vec<u8>>,
    },
    /// One result per item: a bad blob does not fail its neighbours.
    Unsealed(Vec<Result<Vec<u8>, SealError>>),
    Tagged(Vec<[u8; 32]>),
    Ready,
    /// One result per item, and the counter blob to store with them.
    Resealed {
        counter: Vec<u8>,
        blobs: Vec<Result<Vec<u8>, SealError>>,
    },
    ForgotPrevious,
    Refused(Refusal),
}

/// Why the keyholder would not serve a well-formed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("unknown request")]
    UnknownRequest,
    #[error("the first request must be hello")]
    HelloFirst,
    #[error("hello was already received")]
    HelloTwice,
    #[error("the stored seal counter does not authenticate")]
    BadCounter,
    #[error("the seal limit of this data key is reached; rotate the key")]
    LimitReached,
    #[error("the random number generator failed")]
    Random,
    #[error("the index is already built (ready was already received)")]
    ReadyTwice,
    #[error("more records in one request than a serving storer ever needs")]
    TooManyItems,
    #[error("no key rotation is under way (there is no previous data key)")]
    NoPreviousKey,
}

impl Refusal {
    fn code(self) -> u8 {
        match self {
            Refusal::UnknownRequest => 1,
            Refusal::HelloFirst => 2,
            Refusal::HelloTwice => 3,
            Refusal::BadCounter => 4,
            Refusal::LimitReached => 5,
            Refusal::Random => 6,
            Refusal::ReadyTwice => 7,
            Refusal::TooManyItems => 8,
            Refusal::NoPreviousKey => 9,
        }
    }
    fn from_code(c: u8) -> Result<Refusal, WireError> {
        Ok(match c {
            1 => Refusal::UnknownRequest,
            2 => Refusal::HelloFirst,
            3 => Refusal::HelloTwice,
            4 => Refusal::BadCounter,
            5 => Refusal::LimitReached,
            6 => Refusal::Random,
            7 => Refusal::ReadyTwice,
            8 => Refusal::TooManyItems,
            9 => Refusal::NoPreviousKey,
            _ => return Err(WireError::Malformed("unknown refusal code")),
        })
    }
}

/// A frame that cannot be used; the connection ends.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("i/o error on the keyholder channel: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes exceeds the maximum of {MAX_FRAME}")]
    FrameTooLarge(usize),
    #[error("unsupported wire version {0}")]
    Version(u8),
    #[error("batch of {0} items exceeds the maximum of {MAX_BATCH}")]
    BatchTooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

/// Reads one frame body; `Ok(None)` on a clean end of stream between frames.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Vec<u8>>, WireError> {
    match frame::read(r, MAX_FRAME) {
        Ok(Frame::Body(body)) => Ok(Some(body)),
        Ok(Frame::Eof) => Ok(None),
        Ok(Frame::TooLarge(n)) => Err(WireError::FrameTooLarge(n)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Err(WireError::Malformed(if e.to_string() == frame::CUT_IN_PREFIX {
                frame::CUT_IN_PREFIX
            } else {
                frame::CUT_IN_BODY
            }))
        }
        Err(e) => Err(WireError::Io(e)),
    }
}

pub fn write_frame(w: &mut impl Write, body: &[u8]) -> Result<(), WireError> {
    if body.len() > MAX_FRAME {
        return Err(WireError::FrameTooLarge(body.len()));
    }
    frame::write(w, body, MAX_FRAME)?;
    Ok(())
}

struct Writer(Vec<u8>);

impl Writer {
    fn new(kind: u8) -> Writer {
        Writer(vec![WIRE_VERSION, kind])
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn raw(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.raw(b);
    }
    fn count(&mut self, n: usize) {
        self.u32(n as u32);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError::Malformed("length runs past the end of the frame"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn bytes(&mut self) -> Result<Vec<u8>, WireError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    /// A batch count, capped, and plausible for the bytes left (each item
    /// takes at least `min_item` bytes), so no allocation is sized by the peer.
    fn count(&mut self, min_item: usize) -> Result<usize, WireError> {
        let n = self.u32()? as usize;
        if n > MAX_BATCH {
            return Err(WireError::BatchTooLarge(n));
        }
        if n.saturating_mul(min_item) > self.buf.len() {
            return Err(WireError::Malformed("batch count runs past the end of the frame"));
        }
        Ok(n)
    }
    fn field(&mut self) -> Result<Field, WireError> {
        Field::from_code(self.u8()?).ok_or(WireError::Malformed("unknown field"))
    }
    fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed("trailing bytes after the message"))
        }
    }
}

/// An unseal or reseal request: items naming a field, a row and a blob.
fn blob_items(kind: u8, items: &[UnsealItem]) -> Vec<u8> {
    let mut w = Writer::new(kind);
    w.count(items.len());
    for it in items {
        w.u8(it.field as u8);
        w.raw(&it.row.0);
        w.bytes(&it.blob);
    }
    w.0
}

impl Writer {
    /// One result per item: `0 | bytes`, or an error code and its detail.
    fn results(&mut self, items: &[Result<Vec<u8>, SealError>]) {
        self.count(items.len());
        for it in items {
            match it {
                Ok(p) => {
                    self.u8(0);
                    self.bytes(p);
                }
                Err(e) => {
                    let (c, x) = seal_error_code(*e);
                    self.u8(c);
                    self.u8(x);
                }
            }
        }
    }
}

impl Reader<'_> {
    fn blob_items(&mut self) -> Result<Vec<UnsealItem>, WireError> {
        let n = self.count(1 + 16 + 4)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(UnsealItem { field: self.field()?, row: RowId(self.array()?), blob: self.bytes()? });
        }
        Ok(items)
    }
    fn results(&mut self) -> Result<Vec<Result<Vec<u8>, SealError>>, WireError> {
        let n = self.count(2)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            let code = self.u8()?;
            items.push(if code == 0 { Ok(self.bytes()?) } else { Err(seal_error_from(code, self.u8()?)?) });
        }
        Ok(items)
    }
}

fn open(body: &[u8]) -> Result<(u8, Reader<'_>), WireError> {
    let mut r = Reader { buf: body };
    let version = r.u8()?;
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let kind = r.u8()?;
    Ok((kind, r))
}

fn seal_error_code(e: SealError) -> (u8, u8) {
    match e {
        SealError::Truncated => (1, 0),
        SealError::UnknownVersion(v) => (2, v),
        SealError::WrongKey => (3, 0),
        SealError::BadTag => (4, 0),
        SealError::LimitReached => (5, 0),
        SealError::Random => (6, 0),
    }
}

fn seal_error_from(code: u8, extra: u8) -> Result<SealError, WireError> {
    Ok(match code {
        1 => SealError::Truncated,
        2 => SealError::UnknownVersion(extra),
        3 => SealError::WrongKey,
        4 => SealError::BadTag,
        5 => SealError::LimitReached,
        6 => SealError::Random,
        _ => return Err(WireError::Malformed("unknown unseal error code")),
    })
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Hello { counter } => {
                let mut w = Writer::new(kind::HELLO);
                match counter {
                    None => w.u8(0),
                    Some(c) => {
                        w.u8(1);
                        w.bytes(c);
                    }
                }
                w.0
            }
            Request::Seal(items) => {
                let mut w = Writer::new(kind::SEAL);
                w.count(items.len());
                for it in items {
                    w.u8(it.field as u8);
                    w.raw(&it.row.0);
                    w.bytes(&it.plain);
                }
                w.0
            }
            Request::Unseal(items) => blob_items(kind::UNSEAL, items),
            Request::Reseal(items) => blob_items(kind::RESEAL, items),
            Request::ForgetPrevious => Writer::new(kind::FORGET_PREVIOUS).0,
            Request::Tag(items) => {
                let mut w = Writer::new(kind::TAG);
                w.count(items.len());
                for it in items {
                    w.bytes(it);
                }
                w.0
            }
            Request::Ready => Writer::new(kind::READY).0,
            Request::Unknown(k) => Writer::new(*k).0,
        }
    }

    pub fn decode(body: &[u8]) -> Result<Request, WireError> {
        let (k, mut r) = open(body)?;
        let req = match k {
            kind::HELLO => match r.u8()? {
                0 => Request::Hello { counter: None },
                1 => Request::Hello { counter: Some(r.bytes()?) },
                _ => return Err(WireError::Malformed("bad hello flag")),
            },
            kind::SEAL => {
                let n = r.count(1 + 16 + 4)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(SealItem { field: r.field()?, row: RowId(r.array()?), plain: r.bytes()? });
                }
                Request::Seal(items)
            }
            kind::UNSEAL => Request::Unseal(r.blob_items()?),
            kind::RESEAL => Request::Reseal(r.blob_items()?),
            kind::FORGET_PREVIOUS => Request::ForgetPrevious,
            kind::TAG => {
                let n = r.count(4)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(r.bytes()?);
                }
                Request::Tag(items)
            }
            kind::READY => Request::Ready,
            other => return Ok(Request::Unknown(other)),
        };
        r.finish()?;
        Ok(req)
    }
}

impl Response {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Response::Hello { key_id, previous, count, limit, degraded } => {
                let mut w = Writer::new(kind::HELLO_OK);
                w.raw(&key_id.0);
                match previous {
                    None => w.u8(0),
                    Some(p) => {
                        w.u8(1);
                        w.raw(&p.0);
                    }
                }
                w.u64(*count);
                w.u64(*limit);
                w.u8(u8::from(*degraded));
                w.0
            }
            Response::Sealed { counter, blobs } => {
                let mut w = Writer::new(kind::SEALED);
                w.bytes(counter);
                w.count(blobs.len());
                for b in blobs {
                    w.bytes(b);
                }
                w.0
            }
            Response::Unsealed(items) => {
                let mut w = Writer::new(kind::UNSEALED);
                w.results(items);
                w.0
            }
            Response::Resealed { counter, blobs } => {
                let mut w = Writer::new(kind::RESEALED);
                w.bytes(counter);
                w.results(blobs);
                w.0
            }
            Response::ForgotPrevious => Writer::new(kind::FORGOT_PREVIOUS).0,
            Response::Tagged(tags) => {
                let mut w = Writer::new(kind::TAGGED);
                w.count(tags.len());
                for t in tags {
                    w.raw(t);
                }
                w.0
            }
            Response::Ready => Writer::new(kind::READY_OK).0,
            Response::Refused(r) => {
                let mut w = Writer::new(kind::REFUSED);
                w.u8(r.code());
                w.0
            }
        }
    }

    pub fn decode(body: &[u8]) -> Result<Response, WireError> {
        let (k, mut r) = open(body)?;
        let resp = match k {
            kind::HELLO_OK => {
                let key_id = KeyId(r.array()?);
                let previous = match r.u8()? {
                    0 => None,
                    1 => Some(KeyId(r.array()?)),
                    _ => return Err(WireError::Malformed("bad previous-key flag")),
                };
                Response::Hello { key_id, previous, count: r.u64()?, limit: r.u64()?, degraded: r.u8()? != 0 }
            }
            kind::SEALED => {
                let counter = r.bytes()?;
                let n = r.count(4)?;
                let mut blobs = Vec::with_capacity(n);
                for _ in 0..n {
                    blobs.push(r.bytes()?);
                }
                Response::Sealed { counter, blobs }
            }
            kind::UNSEALED => Response::Unsealed(r.results()?),
            kind::RESEALED => Response::Resealed { counter: r.bytes()?, blobs: r.results()? },
            kind::FORGOT_PREVIOUS => Response::ForgotPrevious,
            kind::TAGGED => {
                let n = r.count(32)?;
                let mut tags = Vec::with_capacity(n);
                for _ in 0..n {
                    tags.push(r.array()?);
                }
                Response::Tagged(tags)
            }
            kind::READY_OK => Response::Ready,
            kind::REFUSED => Response::Refused(Refusal::from_code(r.u8()?)?),
            _ => return Err(WireError::Malformed("unknown response kind")),
        };
        r.finish()?;
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let req =
            Request::Seal(vec![SealItem { field: Field::RecordBody, row: RowId([3; 16]), plain: b"abc".to_vec() }]);
        match Request::decode(&req.encode()).expect("decodes") {
            Request::Seal(items) => {
                assert_eq!(items.len(), 1);
                assert_eq!(items[0].plain, b"abc");
                assert_eq!(items[0].row, RowId([3; 16]));
            }
            _ => panic!("wrong kind"),
        }
    }

    #[test]
    fn hostile_frames_are_errors_not_panics() {
        // A batch count that promises more items than the frame holds.
        let mut body = vec![WIRE_VERSION, kind::TAG];
        body.extend_from_slice(&(MAX_BATCH as u32).to_le_bytes());
        assert!(matches!(Request::decode(&body), Err(WireError::Malformed(_))));
        body[2..6].copy_from_slice(&(u32::MAX).to_le_bytes());
        assert!(matches!(Request::decode(&body), Err(WireError::BatchTooLarge(_))));
        // A length that runs past the end.
        let mut body = vec![WIRE_VERSION, kind::TAG, 1, 0, 0, 0];
        body.extend_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(Request::decode(&body), Err(WireError::Malformed(_))));
        assert!(matches!(Request::decode(&[9, kind::TAG]), Err(WireError::Version(9))));
        assert!(matches!(Request::decode(&[]), Err(WireError::Malformed(_))));
        assert!(matches!(Request::decode(&[WIRE_VERSION, 0x42]), Ok(Request::Unknown(0x42))));
        // Trailing garbage.
        let mut hello = Request::Hello { counter: None }.encode();
        hello.push(0);
        assert!(matches!(Request::decode(&hello), Err(WireError::Malformed(_))));
        // Every prefix of a valid frame fails cleanly.
        let full =
            Request::Unseal(vec![UnsealItem { field: Field::MetaValue, row: RowId([1; 16]), blob: vec![1; 50] }])
                .encode();
        for cut in 0..full.len() {
            assert!(Request::decode(&full[..cut]).is_err());
        }
    }

    #[test]
    fn oversized_length_prefix_is_refused_before_allocation() {
        let mut stream: &[u8] = &(u32::MAX).to_le_bytes();
        assert!(matches!(read_frame(&mut stream), Err(WireError::FrameTooLarge(_))));
        let mut empty: &[u8] = &[];
        assert!(matches!(read_frame(&mut empty), Ok(None)));
        let mut partial: &[u8] = &[1, 0];
        assert!(matches!(read_frame(&mut partial), Err(WireError::Malformed(_))));
    }
}
