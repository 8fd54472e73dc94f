//! The storer's side of the keyholder channel.

use std::os::unix::net::UnixStream;

use crate::seal::SealError;
use crate::wire::{
    read_frame, write_frame, Refusal, Request, Response, SealItem, UnsealItem, WireError, MAX_BATCH, SERVING_MAX_UNSEAL,
};
use iai_keyfile::KeyId;

/// Bytes of payload per batch, well inside [`crate::wire::MAX_FRAME`].
const BATCH_BYTES: usize = 8 << 20;

/// What the keyholder said at hello.
#[derive(Clone, Copy, Debug)]
pub struct KeyInfo {
    pub key_id: KeyId,
    /// The data key before a rotation still under way (the keyholder
    /// unseals with it, and re-seals what it sealed).
    pub previous: Option<KeyId>,
    pub seal_count: u64,
    pub seal_limit: u64,
    /// The keyholder runs with a degraded sandbox (the user allowed it).
    pub degraded: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("keyholder channel failed: {0}")]
    Wire(#[from] WireError),
    #[error("the keyholder has gone away")]
    Gone,
    #[error("the keyholder refused: {0}")]
    Refused(Refusal),
    #[error("the keyholder answered with the wrong message")]
    Unexpected,
}

pub struct KeyholderClient {
    stream: UnixStream,
    info: KeyInfo,
    /// Most records per unseal: the keyholder serves the whole store in one
    /// go only while the index is built.
    max_unseal: usize,
}

impl KeyholderClient {
    /// Says hello, handing back the sealed counter the storer kept.
    pub fn hello(mut stream: UnixStream, counter: Option<Vec<u8>>) -> Result<KeyholderClient, ClientError> {
        match round_trip(&mut stream, &Request::Hello { counter })? {
            Response::Hello { key_id, previous, count, limit, degraded } => {
                let info = KeyInfo { key_id, previous, seal_count: count, seal_limit: limit, degraded };
                Ok(KeyholderClient { stream, info, max_unseal: MAX_BATCH })
            }
            Response::Refused(r) => Err(ClientError::Refused(r)),
            _ => Err(ClientError::Unexpected),
        }
    }

    pub fn info(&self) -> KeyInfo {
        self.info
    }

    /// Seals every item; returns the blobs in order and the newest counter blob.
    pub fn seal(&mut self, items: Vec<SealItem>) -> Result<(Vec<Vec<u8>>, Vec<u8>), ClientError> {
        let mut out = Vec::with_capacity(items.len());
        let mut counter = Vec::new();
        for chunk in chunks(items, MAX_BATCH, |i| i.plain.len()) {
            let n = chunk.len();
            match round_trip(&mut self.stream, &Request::Seal(chunk))? {
                Response::Sealed { counter: c, blobs } if blobs.len() == n => {
                    self.info.seal_count += n as u64 + 1;
                    out.extend(blobs);
                    counter = c;
                }
                Response::Refused(r) => return Err(ClientError::Refused(r)),
                _ => return Err(ClientError::Unexpected),
            }
        }
        Ok((out, counter))
    }

    /// Tells the keyholder the index is built: from now on it unseals at
    /// most [`SERVING_MAX_UNSEAL`] records per request.
    pub fn ready(&mut self) -> Result<(), ClientError> {
        match round_trip(&mut self.stream, &Request::Ready)? {
            Response::Ready => {
                self.max_unseal = SERVING_MAX_UNSEAL;
                Ok(())
            }
            Response::Refused(r) => Err(ClientError::Refused(r)),
            _ => Err(ClientError::Unexpected),
        }
    }

    pub fn unseal(&mut self, items: Vec<UnsealItem>) -> Result<Vec<Result<Vec<u8>, SealError>>, ClientError> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in chunks(items, self.max_unseal, |i| i.blob.len()) {
            let n = chunk.len();
            match round_trip(&mut self.stream, &Request::Unseal(chunk))? {
                Response::Unsealed(r) if r.len() == n => out.extend(r),
                Response::Refused(r) => return Err(ClientError::Refused(r)),
                _ => return Err(ClientError::Unexpected),
            }
        }
        Ok(out)
    }

    /// Key rotation: blobs of the previous data key sealed again under the
    /// current one (one result per item: a blob that does not authenticate
    /// stays as it is); returns them and the newest counter blob.
    #[allow(clippy::type_complexity)]
    pub fn reseal(
        &mut self,
        items: Vec<UnsealItem>,
    ) -> Result<(Vec<Result<Vec<u8>, SealError>>, Vec<u8>), ClientError> {
        let mut out = Vec::with_capacity(items.len());
        let mut counter = Vec::new();
        for chunk in chunks(items, self.max_unseal, |i| i.blob.len()) {
            let n = chunk.len();
            match round_trip(&mut self.stream, &Request::Reseal(chunk))? {
                Response::Resealed { counter: c, blobs } if blobs.len() == n => {
                    self.info.seal_count += blobs.iter().filter(|b| b.is_ok()).count() as u64 + 1;
                    out.extend(blobs);
                    counter = c;
                }
                Response::Refused(r) => return Err(ClientError::Refused(r)),
                _ => return Err(ClientError::Unexpected),
            }
        }
        Ok((out, counter))
    }

    /// Seals nothing: only the keyholder's current counter blob.
    pub fn seal_nothing(&mut self) -> Result<(Vec<Vec<u8>>, Vec<u8>), ClientError> {
        match round_trip(&mut self.stream, &Request::Seal(Vec::new()))? {
            Response::Sealed { counter, blobs } if blobs.is_empty() => {
                self.info.seal_count += 1;
                Ok((blobs, counter))
            }
            Response::Refused(r) => Err(ClientError::Refused(r)),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Key rotation finished: the keyholder wipes the previous data key.
    pub fn forget_previous(&mut self) -> Result<(), ClientError> {
        match round_trip(&mut self.stream, &Request::ForgetPrevious)? {
            Response::ForgotPrevious => {
                self.info.previous = None;
                Ok(())
            }
            Response::Refused(r) => Err(ClientError::Refused(r)),
            _ => Err(ClientError::Unexpected),
        }
    }

    pub fn tag(&mut self, items: Vec<Vec<u8>>) -> Result<Vec<[u8; 32]>, ClientError> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in chunks(items, MAX_BATCH, Vec::len) {
            let n = chunk.len();
            match round_trip(&mut self.stream, &Request::Tag(chunk))? {
                Response::Tagged(t) if t.len() == n => out.extend(t),
                Response::Refused(r) => return Err(ClientError::Refused(r)),
                _ => return Err(ClientError::Unexpected),
            }
        }
        Ok(out)
    }

    /// Sends raw bytes as one frame and returns the answer (protocol tests).
    pub fn raw(&mut self, request: &Request) -> Result<Response, ClientError> {
        round_trip(&mut self.stream, request)
    }
}

fn round_trip(stream: &mut UnixStream, req: &Request) -> Result<Response, ClientError> {
    write_frame(stream, &req.encode()).map_err(gone)?;
    match read_frame(stream).map_err(gone)? {
        Some(body) => Ok(Response::decode(&body)?),
        None => Err(ClientError::Gone),
    }
}

fn gone(e: WireError) -> ClientError {
    match e {
        WireError::Io(_) => ClientError::Gone,
        other => ClientError::Wire(other),
    }
}

/// Splits a batch so no frame exceeds the item or byte limits.
fn chunks<T>(items: Vec<T>, max_items: usize, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    for it in items {
        let s = size(&it) + 64;
        if !cur.is_empty() && (cur.len() == max_items || bytes + s > BATCH_BYTES) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += s;
        cur.push(it);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

impl KeyholderClient {
    /// A second handle on the channel, to notice when the keyholder hangs up.
    pub fn watch_handle(&self) -> std::io::Result<UnixStream> {
        self.stream.try_clone()
    }
}
