//! A blocking client of the storer socket, used by the CLI (and the shim).

use std::io;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use iai_policy::Home;
use serde::de::DeserializeOwned;

use crate::proto::{
    self, Ack, CaptureBatchRequest, CaptureBatchResult, CaptureRequest, CaptureResult, ContradictRequest,
    ContradictResult, CursorValue, ErrorBody, EventsRequest, EventsResult, ForgetResult, Frame, RecallRequest,
    RecallResult, RecentRequest, ReinforceResult, Request, Stats,
};

/// Why a request did not produce a result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing is listening: the store is locked (or was never unlocked).
    #[error("iai-mcp is locked: run `iai-mcp unlock` first")]
    Locked,
    #[error("cannot reach the iai-mcp storer at {path}: {source}")]
    Connect { path: String, source: io::Error },
    #[error("lost the connection to the storer: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Protocol(String),
    /// The storer refused the request; the code says why.
    #[error("{0}")]
    Refused(ErrorBody),
}

pub struct Client {
    stream: UnixStream,
}

impl Client {
    pub fn connect(home: &Home) -> Result<Client, ClientError> {
        let path = home.socket();
        match UnixStream::connect(&path) {
            Ok(stream) => {
                stream.set_read_timeout(Some(Duration::from_secs(120)))?;
                Ok(Client { stream })
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => {
                Err(ClientError::Locked)
            }
            Err(source) => Err(ClientError::Connect { path: path.display().to_string(), source }),
        }
    }

    /// A client on a stream already connected to the storer (the shim gets
    /// its connections from its connector).
    pub fn from_stream(stream: UnixStream) -> Client {
        Client { stream }
    }

    /// Bounds how long one request may wait for its answer.
    pub fn set_timeout(&mut self, d: Duration) -> Result<(), ClientError> {
        self.stream.set_read_timeout(Some(d))?;
        self.stream.set_write_timeout(Some(d))?;
        Ok(())
    }

    /// Sends a raw frame body and returns the raw reply body (protocol tests).
    pub fn raw(&mut self, body: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        if let Err(e) = proto::write_frame(&mut self.stream, body) {
            // The storer may have refused the connection (and closed it)
            // before our request went out: its reason is waiting to be read.
            if !matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) {
                return Err(e.into());
            }
            return match proto::read_frame(&mut self.stream) {
                Ok(Frame::Body(b)) => Ok(Some(b)),
                _ => Err(e.into()),
            };
        }
        match proto::read_frame(&mut self.stream)? {
            Frame::Body(b) => Ok(Some(b)),
            Frame::Eof => Ok(None),
            Frame::TooLarge(n) => Err(ClientError::Protocol(format!("reply of {n} bytes is over the limit"))),
        }
    }

    pub fn request<T: DeserializeOwned>(&mut self, req: &Request) -> Result<T, ClientError> {
        let body = self
            .raw(&proto::encode_request(req))?
            .ok_or_else(|| ClientError::Protocol("the storer closed the connection".into()))?;
        match proto::decode_reply(&body).map_err(ClientError::Protocol)? {
            Ok(v) => serde_json::from_str(v.get()).map_err(|e| ClientError::Protocol(format!("unexpected reply: {e}"))),
            Err(e) => Err(ClientError::Refused(e)),
        }
    }

    pub fn capture(&mut self, c: CaptureRequest) -> Result<CaptureResult, ClientError> {
        self.request(&Request::Capture(c))
    }
    pub fn recall(&mut self, r: RecallRequest) -> Result<RecallResult, ClientError> {
        self.request(&Request::Recall(r))
    }
    /// Recalls up to `r.limit` results, following the storer's pages: a
    /// reply holds what fits one frame, and says when there is more.
    pub fn recall_paged(&mut self, mut r: RecallRequest) -> Result<RecallResult, ClientError> {
        let want = r.limit.unwrap_or(proto::DEFAULT_RECALL_LIMIT) as usize;
        let page_max = proto::MAX_RECALL_LIMIT as usize;
        r.limit = Some(want.min(page_max) as u32);
        let mut all = RecallResult { hits: Vec::new(), more: false };
        loop {
            let page = self.recall(r.clone())?;
            let got = page.hits.len();
            all.hits.extend(page.hits);
            all.more = page.more;
            if !page.more || got == 0 || all.hits.len() >= want {
                return Ok(all);
            }
            r.offset = Some(r.offset.unwrap_or(0).saturating_add(u32::try_from(got).unwrap_or(u32::MAX)));
            r.limit = Some((want - all.hits.len()).min(page_max) as u32);
        }
    }
    pub fn forget(&mut self, id: &str) -> Result<ForgetResult, ClientError> {
        self.request(&Request::Forget { id: id.to_string() })
    }
    pub fn contradict(&mut self, c: ContradictRequest) -> Result<ContradictResult, ClientError> {
        self.request(&Request::Contradict(c))
    }
    pub fn reinforce(&mut self, ids: Vec<String>) -> Result<ReinforceResult, ClientError> {
        self.request(&Request::Reinforce { ids })
    }
    pub fn events(&mut self, e: EventsRequest) -> Result<EventsResult, ClientError> {
        self.request(&Request::Events(e))
    }
    pub fn export(&mut self, e: proto::ExportRequest) -> Result<proto::ExportResult, ClientError> {
        self.request(&Request::Export(e))
    }
    pub fn import(&mut self, items: Vec<proto::MemoryRecord>) -> Result<proto::ImportResult, ClientError> {
        self.request(&Request::Import(proto::ImportRequest { items }))
    }
    pub fn rotate(&mut self, r: proto::RotateRequest) -> Result<proto::RotateResult, ClientError> {
        self.request(&Request::Rotate(r))
    }
    pub fn capture_batch(&mut self, b: CaptureBatchRequest) -> Result<CaptureBatchResult, ClientError> {
        self.request(&Request::CaptureBatch(b))
    }
    pub fn recent(&mut self, r: RecentRequest) -> Result<RecallResult, ClientError> {
        self.request(&Request::Recent(r))
    }
    pub fn get_cursor(&mut self, key: &str) -> Result<Option<String>, ClientError> {
        self.request::<CursorValue>(&Request::GetCursor { key: key.to_string() }).map(|c| c.value)
    }
    pub fn stats(&mut self) -> Result<Stats, ClientError> {
        self.request(&Request::Stats)
    }
    pub fn shutdown(&mut self) -> Result<Ack, ClientError> {
        self.request(&Request::Shutdown)
    }
}
