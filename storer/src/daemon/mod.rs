//! The storer process (`iai-mcp __storer`), started by the keyholder: its
//! start-up (this file), the connections it serves (`connections`), the
//! requests (`handlers`), what they have sealed (`sealing`), the audit trail
//! and per-record state that make tampering visible (`trail`), the checks
//! that load the store at unlock (`load`), and the one-time conversion of a
//! format-1 store (`upgrade`).

use std::collections::HashMap;
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
    EventsResult, ExportRequest, ExportResult, ForgetResult, Frame, Hit, ImportItemResult, ImportRequest, ImportResult,
    ImportStatus, MemoryRecord, RecallRequest, RecallResult, RecentRequest, ReinforceResult, Request, Role, Stats,
    Tier, TierCount,
};

mod connections;
mod handlers;
mod load;
mod rotate;
mod sealing;
mod snapshot;
mod trail;
mod upgrade;

use connections::*;
use handlers::*;
use sealing::*;
use trail::*;

/// Concurrent client connections; past this the longest-idle one is closed
/// (a new one is refused with `busy` only when every one is mid-request).
const MAX_CONNECTIONS: usize = 64;
/// Longest wait for one keyholder answer before it counts as gone.
const KEYHOLDER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Records unsealed per keyholder round trip while building the index.
const LOAD_BATCH: usize = 512;
const DUP_TAG_DOMAIN: &[u8] = b"iai-mcp duplicate v1\0";

/// The sealed body of a record: the memory and every fact about it that
/// never changes. Its place in capture order and its duplicate tag are
/// copied here so that the clear columns holding them can be checked.
#[derive(Serialize, Deserialize)]
struct Body {
    text: String,
    created_at: i64,
    tier: Tier,
    role: Role,
    /// `records.seq`: the record's place in capture order.
    seq: i64,
    /// `records.dup_tag`, hex.
    dup_tag: String,
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
    /// Everything the store knows about the record, as clients see it.
    fn into_record(self, id: &[u8; 16], reinforced: u32, superseded_by: Option<[u8; 16]>) -> MemoryRecord {
        MemoryRecord {
            id: uuid_str(id),
            created_at: self.created_at,
            tier: self.tier,
            role: self.role,
            text: self.text,
            cue: self.cue,
            tags: self.tags,
            session: self.session,
            project: self.project,
            provenance: self.provenance,
            reinforced,
            superseded_by: superseded_by.as_ref().map(uuid_str),
        }
    }

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
    /// The audit trail's events (time, kind), verified at unlock.
    trail: Trail,
    /// `records.seq` of the next new record.
    next_record_seq: i64,
    /// What was found changed outside iai-mcp.
    integrity: Integrity,
    unreadable: u64,
    degraded: Vec<String>,
    keyholder_pid: u32,
    memory_locked: bool,
    /// A key rotation under way (the keyholder holds the previous key).
    rotation: Option<rotate::Rotation>,
    /// How this unlock loaded the store.
    load: load::LoadInfo,
    /// The index snapshot's bookkeeping.
    snap: snapshot::Book,
    /// Why the installed embedding model could not be loaded (recall then
    /// works without it, and `status` says so).
    model_error: Option<String>,
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
        Ok((listener, state)) => {
            // Building the index unsealed every memory on this thread's stack.
            iai_policy::wipe::stack();
            serve(listener, state)
        }
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
    // The embedding model's files are read before the sandbox closes the
    // home to us, and parsed (untrusted input) only once it is closed.
    let model_files = crate::embed::read_installed(&crate::embed::model_dir(&home));
    let keep = [kh_stream.as_raw_fd(), listener.as_raw_fd(), pid_lock.as_raw_fd(), devnull.as_raw_fd()];
    let applied = iai_policy::apply(&Sandbox::storer(&home), &keep, opts).map_err(|e| fail("sandbox", e))?;
    let (model, model_error) = match model_files.and_then(|f| f.map(|f| f.parse()).transpose()) {
        Ok(m) => (m, None),
        Err(why) => {
            iai_policy::log!("storer: the embedding model was not loaded ({why}); recall works without it");
            (None, Some(why))
        }
    };

    let db = Db::open(&home.db()).map_err(|e| fail("storer", format!("cannot open the database: {e}")))?;
    let counter = db.counter().map_err(|e| fail("storer", format!("cannot read the database: {e}")))?;
    let kh = KeyholderClient::hello(kh_stream, counter).map_err(|e| fail("storer", format!("keyholder: {e}")))?;
    let mut degraded: Vec<String> = applied.degraded.iter().map(|d| format!("storer {d}")).collect();
    if kh.info().degraded {
        degraded.push("keyholder sandbox degraded".into());
    }
    let mut state = State {
        home,
        db,
        kh,
        index: Index::default(),
        trail: Trail::default(),
        next_record_seq: 1,
        integrity: Integrity::default(),
        unreadable: 0,
        degraded,
        keyholder_pid,
        memory_locked,
        rotation: None,
        load: load::LoadInfo::default(),
        snap: snapshot::Book::default(),
        model_error,
    };
    state.index.set_model(model.map(Box::new));
    if state.db.version().map_err(|e| fail("storer", format!("cannot read the database: {e}")))? == 1 {
        upgrade::run(&mut state).map_err(|e| fail("storer", format!("upgrading the store: {}", e.message)))?;
    }
    load::run(&mut state).map_err(|e| fail("storer", e.message))?;
    rotate::resume(&mut state).map_err(|e| fail("storer", e.message))?;
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

impl From<rusqlite::Error> for ErrorBody {
    fn from(e: rusqlite::Error) -> Self {
        storage(e)
    }
}

fn meta_of(id: [u8; 16], body: &Body, reinforced: u32) -> DocMeta {
    DocMeta {
        id,
        created_at: body.created_at,
        tier: body.tier.code(),
        role: body.role.code(),
        session: body.session.clone(),
        project: body.project.clone(),
        reinforced,
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
            "this data key has sealed as many values as is safe; nothing was stored. Give the store a new key with \
             `iai-mcp rotate` (the store stays usable while it runs)",
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

/// Parses a record id as users see it (a hyphenated UUID).
pub fn parse_id(id: &str) -> Result<[u8; 16], ErrorBody> {
    uuid::Uuid::parse_str(id.trim())
        .map(|u| *u.as_bytes())
        .map_err(|_| invalid(format!("{id:?} is not a record id (expected a UUID such as 0190f5a2-…)")))
}
