//! The storer process (`iai-mcp __storer`), started by the keyholder.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use iai_keyholder::client::{ClientError, KeyholderClient};
use iai_keyholder::startup::{error_line, ready_line};
use iai_keyholder::wire::{Refusal, SealItem, UnsealItem};
use iai_keyholder::{Field, RowId};
use iai_policy::{Home, Options, Sandbox};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::db::{self, Db, EventRow, Row};
use crate::index::{DocMeta, Filter, Index};
use crate::proto::{
    self, Ack, CaptureBatchRequest, CaptureBatchResult, CaptureRequest, CaptureResult, CaptureStatus,
    ContradictRequest, ContradictResult, Cursor, CursorValue, ErrorBody, ErrorCode, Event, EventKind, EventsRequest,
    EventsResult, ForgetResult, Frame, Hit, RecallRequest, RecallResult, RecentRequest, ReinforceResult, Request, Role,
    Stats, Tier, TierCount,
};

/// Concurrent client connections; past this the longest-idle one is closed
/// (a new one is refused with `busy` only when every one is mid-request).
const MAX_CONNECTIONS: usize = 64;
/// Longest wait for one keyholder answer before it counts as gone.
const KEYHOLDER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Records unsealed per keyholder round trip while building the index.
const LOAD_BATCH: usize = 512;
const DUP_TAG_DOMAIN: &[u8] = b"iai-mcp duplicate v1\0";

/// The sealed body of a record: everything derived from the memory.
#[derive(Serialize, Deserialize)]
struct Body {
    text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cue: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provenance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    project: Option<String>,
}

impl Body {
    /// What the index sees of a record.
    fn searchable(&self) -> String {
        let mut s = self.text.clone();
        for extra in self.cue.iter().chain(self.tags.iter()) {
            s.push('\n');
            s.push_str(extra);
        }
        s
    }
}

struct State {
    home: Home,
    db: Db,
    kh: KeyholderClient,
    index: Index,
    unreadable: u64,
    degraded: Vec<String>,
    keyholder_pid: u32,
    memory_locked: bool,
}

struct Fail {
    stage: &'static str,
    message: String,
}

fn fail(stage: &'static str, message: impl std::fmt::Display) -> Fail {
    Fail { stage, message: message.to_string() }
}

/// Runs the storer; returns the exit code.
pub fn run(home: Home, keyholder_fd: i32, opts: Options) -> i32 {
    match start(home, keyholder_fd, opts) {
        Ok((listener, state)) => serve(listener, state),
        Err(f) => {
            let mut out = std::io::stdout();
            let _ = out.write_all(error_line(f.stage, &f.message).as_bytes());
            let _ = out.flush();
            iai_policy::log!("storer: {}: {}", f.stage, f.message);
            2
        }
    }
}

fn start(home: Home, keyholder_fd: i32, opts: Options) -> Result<(UnixListener, Arc<Mutex<State>>), Fail> {
    iai_policy::harden_process().map_err(|e| fail("sandbox", e))?;
    let kh_stream = UnixStream::from(
        crate::sys::adopt_socket(keyholder_fd).map_err(|e| fail("storer", format!("keyholder descriptor: {e}")))?,
    );
    // A keyholder that stops answering (stopped, hung) must not hang every
    // client behind it: past this the storer treats it as gone and exits,
    // which `status` and clients then see as locked.
    kh_stream
        .set_read_timeout(Some(KEYHOLDER_TIMEOUT))
        .and_then(|()| kh_stream.set_write_timeout(Some(KEYHOLDER_TIMEOUT)))
        .map_err(|e| fail("storer", format!("keyholder descriptor: {e}")))?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let keyholder_pid = nix::unistd::getppid().as_raw() as u32;
    // The shared layout check (its `.key` entry is the keyholder's business).
    let key = home.key();
    let uid = nix::unistd::getuid().as_raw();
    if let Some(p) = iai_policy::home_check::check(&home, uid).into_iter().find(|p| p.path != key) {
        return Err(fail("home", format!("{}; fix: {}", p.what, p.fix)));
    }

    // The pid file's lock is what makes a daemon live: a socket left behind by
    // a crashed storer is stale only if nobody holds this lock.
    let pid_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(home.pid_file())
        .map_err(|e| fail("storer", format!("cannot open {}: {e}", home.pid_file().display())))?;
    if !pid_file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(fail("home", format!("{} is not a regular file; move it away", home.pid_file().display())));
    }
    let pid_lock = Flock::lock(pid_file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| fail("busy", "iai-mcp is already unlocked (another storer holds the lock)"))?;
    // Written in place at a fixed width, so a restart on a full disk needs
    // no new space for it.
    let pid_line = format!("{:<10}\n", std::process::id());
    std::os::unix::fs::FileExt::write_all_at(&*pid_lock, pid_line.as_bytes(), 0)
        .and_then(|()| pid_lock.set_len(pid_line.len() as u64))
        .map_err(|e| fail("storer", format!("cannot write {}: {e}", home.pid_file().display())))?;

    let socket = home.socket();
    match std::fs::remove_file(&socket) {
        Ok(()) => iai_policy::log!("storer: removed a stale socket left by an earlier storer"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("storer", format!("cannot remove stale socket {}: {e}", socket.display()))),
    }
    let listener = UnixListener::bind(&socket)
        .map_err(|e| fail("storer", format!("cannot listen on {}: {e}", socket.display())))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).map_err(|e| fail("storer", e))?;
    let devnull = File::options().write(true).open("/dev/null").map_err(|e| fail("storer", e))?;

    // Plaintext lives here while unlocked: keep it out of swap where the
    // memlock limit allows (status says when it does not).
    let memory_locked = iai_policy::swap::lock_all_memory();
    let keep = [kh_stream.as_raw_fd(), listener.as_raw_fd(), pid_lock.as_raw_fd(), devnull.as_raw_fd()];
    let applied = iai_policy::apply(&Sandbox::storer(&home), &keep, opts).map_err(|e| fail("sandbox", e))?;

    let db = Db::open(&home.db()).map_err(|e| fail("storer", format!("cannot open the database: {e}")))?;
    let counter = db.counter().map_err(|e| fail("storer", format!("cannot read the database: {e}")))?;
    let kh = KeyholderClient::hello(kh_stream, counter).map_err(|e| fail("storer", format!("keyholder: {e}")))?;
    let mut degraded: Vec<String> = applied.degraded.iter().map(|d| format!("storer {d}")).collect();
    if kh.info().degraded {
        degraded.push("keyholder sandbox degraded".into());
    }
    let mut state =
        State { home, db, kh, index: Index::default(), unreadable: 0, degraded, keyholder_pid, memory_locked };
    load_index(&mut state).map_err(|e| fail("storer", e.message))?;
    for (new, old) in state.db.contradictions().map_err(|e| fail("storer", e))? {
        state.index.supersede(&old, new);
    }
    log_unlock(&mut state).map_err(|e| fail("storer", e.message))?;
    // The index is built: the keyholder narrows what it serves from here on.
    state.kh.ready().map_err(|e| fail("storer", format!("keyholder: {e}")))?;

    watch_keyholder(&state)?;
    let mut out = std::io::stdout();
    iai_policy::log!("storer: ready, serving {} memories", state.index.len());
    let _ = out.write_all(ready_line(std::process::id()).as_bytes());
    let _ = out.flush();
    let _ = nix::unistd::dup2_stdout(&devnull);
    drop(devnull);
    // The lock lives as long as the process.
    std::mem::forget(pid_lock);
    Ok((listener, Arc::new(Mutex::new(state))))
}

/// Builds the in-memory index from every record, unsealing in batches.
fn load_index(state: &mut State) -> Result<(), ErrorBody> {
    let State { db, kh, index, unreadable, .. } = state;
    db.for_each_batch(LOAD_BATCH, |rows| {
        let items = rows
            .iter()
            .map(|r| UnsealItem { field: Field::RecordBody, row: RowId(r.id), blob: r.body.clone() })
            .collect();
        let plain = kh.unseal(items).map_err(keyholder_error)?;
        for (row, p) in rows.into_iter().zip(plain) {
            match p.ok().and_then(|p| serde_json::from_slice::<Body>(&p).ok()) {
                Some(body) => index.add(meta_of(&row, &body), &body.searchable()),
                None => {
                    *unreadable += 1;
                    iai_policy::log!("storer: record {} does not authenticate; it is skipped", uuid_str(&row.id));
                }
            }
        }
        Ok(())
    })
}

impl From<rusqlite::Error> for ErrorBody {
    fn from(e: rusqlite::Error) -> Self {
        storage(e)
    }
}

fn meta_of(row: &Row, body: &Body) -> DocMeta {
    DocMeta {
        id: row.id,
        created_at: row.created_at,
        tier: u8::try_from(row.tier).unwrap_or(0),
        role: u8::try_from(row.role).unwrap_or(0),
        session: body.session.clone(),
        project: body.project.clone(),
        reinforced: u32::try_from(row.reinforced).unwrap_or(u32::MAX),
        superseded_by: None,
    }
}

/// Exits as soon as the keyholder goes away: without it nothing can be
/// sealed or unsealed, so the storer stops serving.
fn watch_keyholder(state: &State) -> Result<(), Fail> {
    let fd = state.kh.watch_handle().map_err(|e| fail("storer", e))?;
    let socket = state.home.socket();
    std::thread::Builder::new()
        .name("keyholder-watch".into())
        .spawn(move || {
            use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
            use std::os::fd::AsFd;
            loop {
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::empty())];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {
                        let hung =
                            fds[0].revents().is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR));
                        if hung {
                            break;
                        }
                    }
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => break,
                }
            }
            iai_policy::log!("storer: the keyholder has gone away; stopping");
            let _ = std::fs::remove_file(&socket);
            std::process::exit(0);
        })
        .map(|_| ())
        .map_err(|e| fail("storer", e))
}

/// The open client connections, so that a new client is never starved by
/// idle ones: at the cap, the connection idle the longest is closed.
#[derive(Default)]
struct Conns {
    next: u64,
    open: std::collections::HashMap<u64, ConnEntry>,
}

struct ConnEntry {
    /// A second handle on the socket, to shut it down from outside.
    handle: UnixStream,
    last_active: Instant,
    busy: bool,
}

impl Conns {
    /// Makes room for one more connection; false if every one is mid-request.
    fn make_room(&mut self) -> bool {
        if self.open.len() < MAX_CONNECTIONS {
            return true;
        }
        let idle = self.open.iter().filter(|(_, c)| !c.busy).min_by_key(|(_, c)| c.last_active).map(|(id, _)| *id);
        match idle.and_then(|id| self.open.remove(&id)) {
            Some(c) => {
                let _ = c.handle.shutdown(std::net::Shutdown::Both);
                true
            }
            None => false,
        }
    }

    fn mark(&mut self, id: u64, busy: bool) {
        if let Some(c) = self.open.get_mut(&id) {
            c.busy = busy;
            c.last_active = Instant::now();
        }
    }
}

fn lock_conns(conns: &Mutex<Conns>) -> MutexGuard<'_, Conns> {
    conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn serve(listener: UnixListener, state: Arc<Mutex<State>>) -> i32 {
    let conns = Arc::new(Mutex::new(Conns::default()));
    let socket: Arc<std::path::Path> = Arc::from(lock(&state).home.socket().as_path());
    let my_uid = nix::unistd::getuid().as_raw();
    for conn in listener.incoming() {
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                iai_policy::log!("storer: accept failed: {e}");
                continue;
            }
        };
        let peer = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials);
        match peer {
            Ok(cred) if cred.uid() == my_uid => {}
            Ok(cred) => {
                iai_policy::log!("storer: refused a client with uid {} (storer uid {my_uid})", cred.uid());
                let err = ErrorBody::new(
                    ErrorCode::PeerRefused,
                    format!("refused: this storer serves only uid {my_uid}, the client runs as uid {}", cred.uid()),
                );
                let _ = proto::write_frame(&mut stream, &proto::encode_err(&err));
                continue;
            }
            Err(e) => {
                iai_policy::log!("storer: could not read peer credentials: {e}");
                continue;
            }
        }
        let handle = match stream.try_clone() {
            Ok(h) => h,
            Err(e) => {
                iai_policy::log!("storer: could not track a connection: {e}");
                continue;
            }
        };
        let id = {
            let mut c = lock_conns(&conns);
            if !c.make_room() {
                drop(c);
                let err = ErrorBody::new(
                    ErrorCode::Busy,
                    format!("all {MAX_CONNECTIONS} connections are in the middle of a request; try again"),
                );
                let _ = proto::write_frame(&mut stream, &proto::encode_err(&err));
                continue;
            }
            c.next += 1;
            let id = c.next;
            c.open.insert(id, ConnEntry { handle, last_active: Instant::now(), busy: false });
            id
        };
        let (state, conns_c, socket) = (Arc::clone(&state), Arc::clone(&conns), Arc::clone(&socket));
        let spawned = std::thread::Builder::new().name("client".into()).spawn(move || {
            connection(stream, &state, &socket, |busy| lock_conns(&conns_c).mark(id, busy));
            lock_conns(&conns_c).open.remove(&id);
        });
        if let Err(e) = spawned {
            lock_conns(&conns).open.remove(&id);
            iai_policy::log!("storer: could not start a connection thread: {e}");
        }
    }
    0
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic in one connection must not take the store down with it.
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn connection(mut stream: UnixStream, state: &Mutex<State>, socket: &std::path::Path, mark: impl Fn(bool)) {
    loop {
        let body = match proto::read_frame(&mut stream) {
            Ok(Frame::Body(b)) => {
                mark(true);
                b
            }
            Ok(Frame::Eof) | Err(_) => return,
            Ok(Frame::TooLarge(n)) => {
                let err = ErrorBody::new(
                    ErrorCode::FrameTooLarge,
                    format!(
                        "frame of {n} bytes exceeds the maximum of {} bytes; closing the connection",
                        proto::MAX_FRAME
                    ),
                );
                let _ = proto::write_frame(&mut stream, &proto::encode_err(&err));
                return;
            }
        };
        let reply = match proto::parse_request(&body) {
            Err(e) => proto::encode_err(&e),
            Ok(Request::Shutdown) => {
                // Not behind the state lock: a request stuck on a hung
                // keyholder must not keep `lock` from stopping the store.
                let _ = proto::write_frame(&mut stream, &proto::encode_ok(&Ack { done: true }));
                iai_policy::log!("storer: lock requested; stopping");
                let _ = std::fs::remove_file(socket);
                std::process::exit(0);
            }
            Ok(req) => {
                let mut st = lock(state);
                let result = handle(&mut st, req);
                if let Err(e) = &result {
                    if e.code == ErrorCode::KeyholderUnavailable {
                        let _ = std::fs::remove_file(st.home.socket());
                        let _ = proto::write_frame(&mut stream, &proto::encode_err(e));
                        std::process::exit(0);
                    }
                }
                match result {
                    Ok(v) => proto::encode_ok(&v),
                    Err(e) => proto::encode_err(&e),
                }
            }
        };
        let reply = if reply.len() > proto::MAX_FRAME {
            iai_policy::log!("storer: a reply of {} bytes would not fit a frame; answered with an error", reply.len());
            proto::encode_err(&ErrorBody::new(
                ErrorCode::ReplyTooLarge,
                format!(
                    "the reply ({} bytes) is over the {}-byte frame; ask for fewer results",
                    reply.len(),
                    proto::MAX_FRAME
                ),
            ))
        } else {
            reply
        };
        let written = proto::write_frame(&mut stream, &reply);
        mark(false);
        if written.is_err() {
            return;
        }
    }
}

fn handle(st: &mut State, req: Request) -> Result<serde_json::Value, ErrorBody> {
    match req {
        Request::Capture(c) => to_value(capture(st, c)),
        Request::Recall(r) => to_value(recall(st, r)),
        Request::Forget { id } => to_value(forget(st, &id)),
        Request::Contradict(c) => to_value(contradict(st, c)),
        Request::Reinforce { ids } => to_value(reinforce(st, &ids)),
        Request::Events(e) => to_value(events(st, e)),
        Request::Recent(r) => to_value(recent(st, r)),
        Request::CaptureBatch(b) => to_value(capture_batch(st, b)),
        Request::GetCursor { key } => to_value(get_cursor(st, &key)),
        Request::Stats => to_value(stats(st)),
        Request::Shutdown => Err(internal("shutdown is handled by the connection")),
    }
}

fn to_value<T: Serialize>(v: Result<T, ErrorBody>) -> Result<serde_json::Value, ErrorBody> {
    v.and_then(|x| serde_json::to_value(x).map_err(internal))
}

fn invalid(msg: impl Into<String>) -> ErrorBody {
    ErrorBody::new(ErrorCode::InvalidArgument, msg)
}

fn internal(e: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(ErrorCode::Storage, format!("internal error: {e}"))
}

fn storage(e: rusqlite::Error) -> ErrorBody {
    iai_policy::log!("storer: database error: {e}");
    if db::is_disk_full(&e) {
        return ErrorBody::new(
            ErrorCode::DiskFull,
            "the disk holding the iai-mcp store is full: nothing was stored. Free some space on it; \
             recall and status keep working meanwhile",
        );
    }
    ErrorBody::new(ErrorCode::Storage, format!("database error: {e}; nothing was changed"))
}

fn keyholder_error(e: ClientError) -> ErrorBody {
    match e {
        ClientError::Refused(Refusal::LimitReached) => ErrorBody::new(
            ErrorCode::SealLimit,
            "this data key has sealed as many values as is safe; nothing was stored (key rotation is needed)",
        ),
        other => {
            iai_policy::log!("storer: keyholder failure: {other}");
            ErrorBody::new(ErrorCode::KeyholderUnavailable, "the keyholder is gone; run `iai-mcp unlock` again")
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn uuid_str(id: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*id).hyphenated().to_string()
}

fn check_len(what: &str, s: &str, max: usize) -> Result<(), ErrorBody> {
    proto::check_len(what, s, max)
}

fn validate(r: &CaptureRequest) -> Result<(), ErrorBody> {
    r.validate(now_ms())
}

/// The sealed detail of an event: the records it touched.
#[derive(Serialize, Deserialize)]
struct EventDetail {
    records: Vec<String>,
}

fn new_id(at_ms: i64) -> [u8; 16] {
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, (at_ms / 1000) as u64, ((at_ms % 1000) * 1_000_000) as u32);
    *uuid::Uuid::new_v7(ts).as_bytes()
}

/// An event row id and the item that seals its detail.
fn event_item(records: &[[u8; 16]]) -> Result<([u8; 16], SealItem), ErrorBody> {
    let id = new_id(now_ms());
    let detail = EventDetail { records: records.iter().map(uuid_str).collect() };
    let plain = serde_json::to_vec(&detail).map_err(internal)?;
    Ok((id, SealItem { field: Field::EventDetail, row: RowId(id), plain }))
}

fn event_row(id: [u8; 16], kind: EventKind, detail: Vec<u8>) -> EventRow {
    EventRow { id, at: now_ms(), kind: i64::from(kind.code()), detail }
}

/// What one write needs sealed: the blobs in request order, the event that
/// records the write, and the keyholder's counter to store with them.
struct Sealed {
    blobs: Vec<Vec<u8>>,
    event: EventRow,
    counter: Vec<u8>,
}

/// Seals `items` plus the detail of one event.
fn seal_with_event(
    st: &mut State,
    mut items: Vec<SealItem>,
    kind: EventKind,
    records: &[[u8; 16]],
) -> Result<Sealed, ErrorBody> {
    let (event_id, item) = event_item(records)?;
    items.push(item);
    let (mut blobs, counter) = st.kh.seal(items).map_err(keyholder_error)?;
    let detail = blobs.pop().ok_or_else(|| internal("no sealed event"))?;
    Ok(Sealed { blobs, event: event_row(event_id, kind, detail), counter })
}

fn dup_tag(st: &mut State, text: &str) -> Result<[u8; 32], ErrorBody> {
    let mut input = DUP_TAG_DOMAIN.to_vec();
    input.extend_from_slice(text.as_bytes());
    st.kh.tag(vec![input]).map_err(keyholder_error)?.pop().ok_or_else(|| internal("no tag"))
}

/// A new record's row (body still to be sealed), its body, and the item
/// that seals the body.
fn new_record(r: CaptureRequest, now: i64) -> Result<(Row, Body, SealItem), ErrorBody> {
    let created_at = r.created_at.unwrap_or(now);
    let id = new_id(created_at);
    let row = Row {
        id,
        created_at,
        tier: i64::from(r.tier.code()),
        role: i64::from(r.role.code()),
        reinforced: 0,
        body: Vec::new(),
    };
    let body = Body {
        text: r.text,
        cue: r.cue,
        tags: r.tags,
        session: r.session,
        provenance: r.provenance,
        project: r.project,
    };
    let plain = serde_json::to_vec(&body).map_err(internal)?;
    Ok((row, body, SealItem { field: Field::RecordBody, row: RowId(id), plain }))
}

/// Inserts a record, or reinforces the identical one. `supersedes` adds a
/// contradiction edge from the new record to that one in the same transaction.
fn store_record(
    st: &mut State,
    r: CaptureRequest,
    supersedes: Option<[u8; 16]>,
) -> Result<([u8; 16], CaptureStatus), ErrorBody> {
    validate(&r)?;
    let tag = dup_tag(st, &r.text)?;
    if let Some(id) = st.db.find_by_tag(&tag).map_err(storage)? {
        if supersedes == Some(id) {
            return Err(invalid("the new fact is identical to the memory it contradicts"));
        }
        let kind = if supersedes.is_some() { EventKind::Contradict } else { EventKind::Reinforce };
        let touched: Vec<[u8; 16]> = std::iter::once(id).chain(supersedes).collect();
        let Sealed { event, counter, .. } = seal_with_event(st, Vec::new(), kind, &touched)?;
        st.db
            .write(Some(&counter), |tx| {
                db::reinforce(tx, &id, 1)?;
                if let Some(old) = supersedes {
                    db::add_edge(tx, &id, &old, db::EDGE_CONTRADICTS, 1)?;
                }
                db::insert_event(tx, &event)
            })
            .map_err(storage)?;
        st.index.reinforce(&id, 1);
        if let Some(old) = supersedes {
            st.index.supersede(&old, id);
        }
        return Ok((id, CaptureStatus::Reinforced));
    }

    let (mut row, body, item) = new_record(r, now_ms())?;
    let id = row.id;
    let kind = if supersedes.is_some() { EventKind::Contradict } else { EventKind::Capture };
    let touched: Vec<[u8; 16]> = std::iter::once(id).chain(supersedes).collect();
    let Sealed { mut blobs, event, counter } = seal_with_event(st, vec![item], kind, &touched)?;
    row.body = blobs.pop().ok_or_else(|| internal("no sealed blob"))?;
    st.db
        .write(Some(&counter), |tx| {
            db::insert_record(tx, &row, &tag)?;
            if let Some(old) = supersedes {
                db::add_edge(tx, &id, &old, db::EDGE_CONTRADICTS, 1)?;
            }
            db::insert_event(tx, &event)
        })
        .map_err(storage)?;
    st.index.add(meta_of(&row, &body), &body.searchable());
    if let Some(old) = supersedes {
        st.index.supersede(&old, id);
    }
    Ok((id, CaptureStatus::Inserted))
}

fn capture(st: &mut State, c: CaptureRequest) -> Result<CaptureResult, ErrorBody> {
    let (id, status) = store_record(st, c, None)?;
    Ok(CaptureResult { id: uuid_str(&id), status })
}

const CURSOR_DOMAIN: &[u8] = b"iai-mcp cursor v1\0";

/// A cursor's row id: a keyed tag of its name, so names are not stored.
fn cursor_id(st: &mut State, key: &str) -> Result<[u8; 16], ErrorBody> {
    let mut input = CURSOR_DOMAIN.to_vec();
    input.extend_from_slice(key.as_bytes());
    let tag = st.kh.tag(vec![input]).map_err(keyholder_error)?.pop().ok_or_else(|| internal("no tag"))?;
    let mut id = [0u8; 16];
    id.copy_from_slice(&tag[..16]);
    Ok(id)
}

fn check_cursor(c: &Cursor) -> Result<(), ErrorBody> {
    if c.key.is_empty() {
        return Err(invalid("cursor key is empty"));
    }
    check_len("cursor key", &c.key, proto::MAX_CURSOR_KEY)?;
    check_len("cursor value", &c.value, proto::MAX_CURSOR_VALUE)
}

fn get_cursor(st: &mut State, key: &str) -> Result<CursorValue, ErrorBody> {
    check_len("cursor key", key, proto::MAX_CURSOR_KEY)?;
    let id = cursor_id(st, key)?;
    let Some(blob) = st.db.cursor(&id).map_err(storage)? else { return Ok(CursorValue { value: None }) };
    let plain =
        st.kh.unseal(vec![UnsealItem { field: Field::MetaValue, row: RowId(id), blob }]).map_err(keyholder_error)?;
    let value = plain.into_iter().next().and_then(|p| p.ok()).and_then(|p| String::from_utf8(p).ok());
    match value {
        Some(v) => Ok(CursorValue { value: Some(v) }),
        None => Err(internal("a stored cursor does not authenticate")),
    }
}

/// One item of a batch: a new record (row and body), or the id it duplicates.
struct Planned {
    new: Option<(Row, Body)>,
    id: [u8; 16],
}

/// Captures many records in one transaction (one fsync), with the cursor.
fn capture_batch(st: &mut State, b: CaptureBatchRequest) -> Result<CaptureBatchResult, ErrorBody> {
    if b.items.len() > proto::MAX_BATCH {
        return Err(invalid(format!("{} items; a batch holds at most {}", b.items.len(), proto::MAX_BATCH)));
    }
    if let Some(c) = &b.cursor {
        check_cursor(c)?;
    }
    let records = b.items;
    for (i, r) in records.iter().enumerate() {
        validate(r).map_err(|e| ErrorBody::new(e.code, format!("item {i}: {}", e.message)))?;
    }
    let inputs = records
        .iter()
        .map(|r| {
            let mut input = DUP_TAG_DOMAIN.to_vec();
            input.extend_from_slice(r.text.as_bytes());
            input
        })
        .collect();
    let tags = if records.is_empty() { Vec::new() } else { st.kh.tag(inputs).map_err(keyholder_error)? };
    let cursor_row = match &b.cursor {
        Some(c) => Some(cursor_id(st, &c.key)?),
        None => None,
    };

    // Decide per item: reinforce an existing record (or an earlier item), or insert.
    let now = now_ms();
    let mut plan: Vec<Planned> = Vec::with_capacity(records.len());
    let mut seen: Vec<([u8; 32], [u8; 16])> = Vec::new();
    let mut items = Vec::new();
    for (r, tag) in records.into_iter().zip(&tags) {
        let existing = match seen.iter().find(|(t, _)| t == tag) {
            Some((_, id)) => Some(*id),
            None => st.db.find_by_tag(tag).map_err(storage)?,
        };
        if let Some(id) = existing {
            plan.push(Planned { new: None, id });
            continue;
        }
        let (row, body, item) = new_record(r, now)?;
        let id = row.id;
        items.push(item);
        seen.push((*tag, id));
        plan.push(Planned { new: Some((row, body)), id });
    }
    let inserted = items.len();
    if let (Some(c), Some(row)) = (&b.cursor, cursor_row) {
        let item = SealItem { field: Field::MetaValue, row: RowId(row), plain: c.value.clone().into_bytes() };
        if plan.is_empty() {
            // Only the position moved (lines with no turn in them): no event for that.
            let (mut blobs, counter) = st.kh.seal(vec![item]).map_err(keyholder_error)?;
            let blob = blobs.pop().ok_or_else(|| internal("missing sealed cursor"))?;
            st.db.write(Some(&counter), |tx| db::set_cursor(tx, &row, &blob)).map_err(storage)?;
            return Ok(CaptureBatchResult { results: Vec::new() });
        }
        items.push(item);
    }
    if plan.is_empty() {
        return Ok(CaptureBatchResult { results: Vec::new() });
    }
    let touched: Vec<[u8; 16]> = plan.iter().map(|p| p.id).collect();
    let Sealed { blobs, event, counter } = seal_with_event(st, items, EventKind::Capture, &touched)?;
    let mut blobs = blobs.into_iter();
    for p in plan.iter_mut() {
        if let Some((row, _)) = &mut p.new {
            row.body = blobs.next().ok_or_else(|| internal("missing sealed blob"))?;
        }
    }
    let sealed_cursor = if cursor_row.is_some() { blobs.next() } else { None };
    debug_assert_eq!(plan.iter().filter(|p| p.new.is_some()).count(), inserted);
    st.db
        .write(Some(&counter), |tx| {
            for (p, tag) in plan.iter().zip(&tags) {
                match &p.new {
                    Some((row, _)) => db::insert_record(tx, row, tag)?,
                    None => {
                        db::reinforce(tx, &p.id, 1)?;
                    }
                }
            }
            if let (Some(id), Some(blob)) = (cursor_row, &sealed_cursor) {
                db::set_cursor(tx, &id, blob)?;
            }
            db::insert_event(tx, &event)
        })
        .map_err(storage)?;
    let mut results = Vec::with_capacity(plan.len());
    for p in plan {
        let status = match p.new {
            Some((row, body)) => {
                st.index.add(meta_of(&row, &body), &body.searchable());
                CaptureStatus::Inserted
            }
            None => {
                st.index.reinforce(&p.id, 1);
                CaptureStatus::Reinforced
            }
        };
        results.push(CaptureResult { id: uuid_str(&p.id), status });
    }
    Ok(CaptureBatchResult { results })
}

/// The newest memories (the project's first), unsealed.
fn recent(st: &mut State, r: RecentRequest) -> Result<RecallResult, ErrorBody> {
    let limit = r.limit.unwrap_or(proto::DEFAULT_RECALL_LIMIT);
    if limit == 0 || limit > proto::MAX_RECALL_LIMIT {
        return Err(invalid(format!("limit must be between 1 and {}", proto::MAX_RECALL_LIMIT)));
    }
    let metas = st.index.recent(r.project.as_deref(), limit as usize);
    hits_for(st, metas.into_iter().map(|m| (m, 0.0)).collect(), false)
}

fn contradict(st: &mut State, c: ContradictRequest) -> Result<ContradictResult, ErrorBody> {
    let old = parse_id(&c.id)?;
    if !st.db.exists(&old).map_err(storage)? {
        return Err(ErrorBody::new(ErrorCode::NotFound, format!("no memory with id {}", uuid_str(&old))));
    }
    let r = CaptureRequest {
        text: c.text,
        cue: c.cue,
        tier: c.tier,
        role: c.role,
        session: c.session,
        tags: c.tags,
        ..Default::default()
    };
    let (id, status) = store_record(st, r, Some(old))?;
    Ok(ContradictResult { id: uuid_str(&id), status, supersedes: uuid_str(&old) })
}

fn reinforce(st: &mut State, ids: &[String]) -> Result<ReinforceResult, ErrorBody> {
    if ids.is_empty() || ids.len() > proto::MAX_REINFORCE_IDS {
        return Err(invalid(format!("give between 1 and {} ids", proto::MAX_REINFORCE_IDS)));
    }
    let mut parsed = Vec::with_capacity(ids.len());
    for id in ids {
        let p = parse_id(id)?;
        if !parsed.contains(&p) {
            parsed.push(p);
        }
    }
    let missing: Vec<String> = parsed.iter().filter(|id| !st.db.exists(id).unwrap_or(false)).map(uuid_str).collect();
    if !missing.is_empty() {
        return Err(ErrorBody::new(ErrorCode::NotFound, format!("no memory with id {}", missing.join(", "))));
    }
    let Sealed { event, counter, .. } = seal_with_event(st, Vec::new(), EventKind::Reinforce, &parsed)?;
    st.db
        .write(Some(&counter), |tx| {
            for (i, a) in parsed.iter().enumerate() {
                db::reinforce(tx, a, 1)?;
                for b in &parsed[i + 1..] {
                    db::add_edge(tx, a, b, db::EDGE_REINFORCED, 1)?;
                }
            }
            db::insert_event(tx, &event)
        })
        .map_err(storage)?;
    for id in &parsed {
        st.index.reinforce(id, 1);
    }
    Ok(ReinforceResult { ids: parsed.iter().map(uuid_str).collect() })
}

fn recall(st: &mut State, r: RecallRequest) -> Result<RecallResult, ErrorBody> {
    if r.cue.trim().is_empty() {
        return Err(invalid("cue is empty"));
    }
    check_len("cue", &r.cue, proto::MAX_CUE)?;
    let limit = r.limit.unwrap_or(proto::DEFAULT_RECALL_LIMIT);
    if limit == 0 || limit > proto::MAX_RECALL_LIMIT {
        return Err(invalid(format!("limit must be between 1 and {}", proto::MAX_RECALL_LIMIT)));
    }
    let offset = r.offset.unwrap_or(0);
    if offset.saturating_add(limit) > proto::MAX_RECALL_DEPTH {
        return Err(invalid(format!("offset + limit must be at most {}", proto::MAX_RECALL_DEPTH)));
    }
    if let (Some(a), Some(b)) = (r.since, r.until) {
        if a >= b {
            return Err(invalid("since must be before until"));
        }
    }
    let filter = Filter {
        tier: r.tier.map(Tier::code),
        role: r.role.map(Role::code),
        session: r.session,
        since: r.since,
        until: r.until,
        project: r.project,
    };
    let (ranked, more) = st.index.search(&r.cue, offset as usize, limit as usize, &filter, now_ms());
    hits_for(st, ranked, more)
}

/// Unseals the records behind ranked index entries into hits.
fn hits_for(st: &mut State, ranked: Vec<(DocMeta, f64)>, more: bool) -> Result<RecallResult, ErrorBody> {
    let mut rows = Vec::with_capacity(ranked.len());
    for (meta, score) in ranked {
        if let Some(row) = st.db.get(&meta.id).map_err(storage)? {
            rows.push((row, meta, score));
        }
    }
    let items = rows
        .iter()
        .map(|(row, _, _)| UnsealItem { field: Field::RecordBody, row: RowId(row.id), blob: row.body.clone() })
        .collect();
    let plain = st.kh.unseal(items).map_err(keyholder_error)?;
    let mut hits = Vec::with_capacity(rows.len());
    for ((row, meta, score), p) in rows.into_iter().zip(plain) {
        let Some(body) = p.ok().and_then(|p| serde_json::from_slice::<Body>(&p).ok()) else {
            iai_policy::log!("storer: record {} does not authenticate; left out of the results", uuid_str(&row.id));
            continue;
        };
        hits.push(Hit {
            id: uuid_str(&row.id),
            score,
            created_at: row.created_at,
            tier: Tier::from_code(row.tier).unwrap_or_default(),
            role: Role::from_code(row.role).unwrap_or_default(),
            text: body.text,
            cue: body.cue,
            tags: body.tags,
            session: body.session,
            reinforced: meta.reinforced,
            superseded_by: meta.superseded_by.as_ref().map(uuid_str),
            project: body.project,
        });
    }
    let more = fit_reply(&mut hits) || more;
    Ok(RecallResult { hits, more })
}

/// Keeps the longest prefix of `items` whose JSON fits [`REPLY_BUDGET`]
/// (always at least one: a single record fits by construction); true if
/// any were left out, for the next page.
fn fit_reply<T: Serialize>(items: &mut Vec<T>) -> bool {
    let mut used = 0usize;
    let mut keep = 0usize;
    for item in items.iter() {
        let n = crate::limits::json_len(item).saturating_add(1);
        if keep > 0 && used.saturating_add(n) > crate::limits::REPLY_BUDGET {
            break;
        }
        used = used.saturating_add(n);
        keep += 1;
    }
    let cut = keep < items.len();
    items.truncate(keep);
    cut
}

/// Parses a record id as users see it (a hyphenated UUID).
pub fn parse_id(id: &str) -> Result<[u8; 16], ErrorBody> {
    uuid::Uuid::parse_str(id.trim())
        .map(|u| *u.as_bytes())
        .map_err(|_| invalid(format!("{id:?} is not a record id (expected a UUID such as 0190f5a2-…)")))
}

fn forget(st: &mut State, id: &str) -> Result<ForgetResult, ErrorBody> {
    let id = parse_id(id)?;
    let Some(row) = st.db.get(&id).map_err(storage)? else {
        return Err(ErrorBody::new(ErrorCode::NotFound, format!("no memory with id {}", uuid_str(&id))));
    };
    let plain = st
        .kh
        .unseal(vec![UnsealItem { field: Field::RecordBody, row: RowId(id), blob: row.body }])
        .map_err(keyholder_error)?;
    let body = plain.into_iter().next().and_then(|p| p.ok()).and_then(|p| serde_json::from_slice::<Body>(&p).ok());
    let Sealed { event, counter, .. } = seal_with_event(st, Vec::new(), EventKind::Forget, &[id])?;
    let (_, erased) = st.db.delete(&id, &event, &counter).map_err(|e| match storage(e) {
        full if full.code == ErrorCode::DiskFull => ErrorBody::new(
            ErrorCode::DiskFull,
            "the disk holding the iai-mcp store is full and its space reserve is used up: nothing was \
             forgotten. Free some space on it, then forget again",
        ),
        other => other,
    })?;
    if !erased {
        iai_policy::log!("storer: a forgotten record's old pages wait for a checkpoint (the disk is full)");
    }
    if let Some(body) = body {
        st.index.remove(&id, &body.searchable());
    }
    Ok(ForgetResult { id: uuid_str(&id), forgotten: true, erased })
}

fn events(st: &mut State, e: EventsRequest) -> Result<EventsResult, ErrorBody> {
    let limit = e.limit.unwrap_or(proto::DEFAULT_EVENTS_LIMIT);
    if limit == 0 || limit > proto::MAX_EVENTS_LIMIT {
        return Err(invalid(format!("limit must be between 1 and {}", proto::MAX_EVENTS_LIMIT)));
    }
    let rows = st.db.events(e.since.unwrap_or(0), e.kind.map(|k| i64::from(k.code())), limit).map_err(storage)?;
    let items = rows
        .iter()
        .map(|r| UnsealItem { field: Field::EventDetail, row: RowId(r.id), blob: r.detail.clone() })
        .collect();
    let plain = st.kh.unseal(items).map_err(keyholder_error)?;
    let mut events = Vec::with_capacity(rows.len());
    for (row, p) in rows.into_iter().zip(plain) {
        let Some(kind) = EventKind::from_code(row.kind) else { continue };
        let records = p.ok().and_then(|p| serde_json::from_slice::<EventDetail>(&p).ok()).map(|d| d.records);
        let Some(records) = records else {
            iai_policy::log!("storer: event {} does not authenticate; left out", uuid_str(&row.id));
            continue;
        };
        events.push(Event { id: uuid_str(&row.id), at: row.at, kind, records });
    }
    let more = fit_reply(&mut events);
    Ok(EventsResult { events, more })
}

/// Records that the store was unlocked. On a full disk the event is left
/// out (and said so in the log and in `status`): memories must stay readable.
fn log_unlock(st: &mut State) -> Result<(), ErrorBody> {
    let Sealed { event, counter, .. } = seal_with_event(st, Vec::new(), EventKind::Unlock, &[])?;
    match st.db.write(Some(&counter), |tx| db::insert_event(tx, &event)) {
        Err(e) if db::is_disk_full(&e) => {
            iai_policy::log!("storer: the disk is full: unlocked without recording an unlock event");
            Ok(())
        }
        other => other.map_err(storage),
    }
}

fn stats(st: &mut State) -> Result<Stats, ErrorBody> {
    let counts = st.index.tier_counts();
    let per_tier = Tier::ALL
        .into_iter()
        .map(|t| TierCount { tier: t, records: counts.get(&t.code()).copied().unwrap_or(0) })
        .collect();
    let store_bytes = std::fs::read_dir(st.home.store_dir())
        .map(|rd| rd.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0);
    let info = st.kh.info();
    Ok(Stats {
        version: env!("CARGO_PKG_VERSION").to_string(),
        records: st.index.len(),
        per_tier,
        events: st.db.event_count().map_err(storage)?,
        unreadable: st.unreadable,
        store_bytes,
        storer_pid: std::process::id(),
        keyholder_pid: st.keyholder_pid,
        seal_count: info.seal_count,
        seal_limit: info.seal_limit,
        degraded: st.degraded.clone(),
        disk_full: st.db.disk_full(),
        memory_locked: st.memory_locked,
    })
}
