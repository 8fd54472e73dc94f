//! Accepting clients: the peer-uid check, the connection cap with eviction
//! of the longest-idle connection, and each connection's request loop.

use super::*;

/// The open client connections, so that a new client is never starved by
/// idle ones: at the cap, the connection idle the longest is closed.
#[derive(Default)]
pub(super) struct Conns {
    pub(super) next: u64,
    pub(super) open: std::collections::HashMap<u64, ConnEntry>,
}

pub(super) struct ConnEntry {
    /// A second handle on the socket, to shut it down from outside.
    pub(super) handle: UnixStream,
    pub(super) last_active: Instant,
    pub(super) busy: bool,
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

pub(super) fn lock_conns(conns: &Mutex<Conns>) -> MutexGuard<'_, Conns> {
    conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes the index snapshot once the storer has been idle a while after
/// enough changes (a store killed later still has a recent one).
fn snapshot_when_idle(state: Arc<Mutex<State>>) {
    let spawned = std::thread::Builder::new().name("snapshot".into()).spawn(move || loop {
        std::thread::sleep(snapshot::IDLE_CHECK);
        let mut st = lock(&state);
        if st.snap.last_request.elapsed() >= snapshot::IDLE {
            snapshot::write_if_due(&mut st, false);
        }
    });
    if let Err(e) = spawned {
        iai_policy::log!("storer: could not start the snapshot writer: {e}");
    }
}

/// At lock: the snapshot is brought up to date, unless a request holds the
/// store for longer than [`EXIT_SNAPSHOT_WAIT`] (`lock` waits 5 s in all).
fn snapshot_before_exit(state: &Mutex<State>) {
    let deadline = Instant::now() + EXIT_SNAPSHOT_WAIT;
    loop {
        match state.try_lock() {
            Ok(mut st) => return snapshot::write_if_due(&mut st, true),
            Err(std::sync::TryLockError::Poisoned(p)) => return snapshot::write_if_due(&mut p.into_inner(), true),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(std::sync::TryLockError::WouldBlock) => {
                return iai_policy::log!("storer: the store stayed busy; stopping without a new index snapshot")
            }
        }
    }
}

const EXIT_SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

pub(super) fn serve(listener: UnixListener, state: Arc<Mutex<State>>) -> i32 {
    snapshot_when_idle(Arc::clone(&state));
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

pub(super) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic in one connection must not take the store down with it.
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(super) fn connection(mut stream: UnixStream, state: &Mutex<State>, socket: &std::path::Path, mark: impl Fn(bool)) {
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
                // No new client from here on (they see a locked store), while
                // the index snapshot is brought up to date.
                let _ = std::fs::remove_file(socket);
                snapshot_before_exit(state);
                std::process::exit(0);
            }
            Ok(req) => {
                let mut st = lock(state);
                // A status poll does not keep the storer from counting as idle.
                let busy = !matches!(req, Request::Stats);
                let result = handle(&mut st, req);
                if busy {
                    st.snap.last_request = Instant::now();
                }
                if let Err(e) = &result {
                    if e.code == ErrorCode::KeyholderUnavailable {
                        let _ = std::fs::remove_file(st.home.socket());
                        let _ = proto::write_frame(&mut stream, &proto::encode_err(e));
                        std::process::exit(0);
                    }
                }
                match result {
                    Ok(reply) => reply,
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
        drop((body, reply));
        // Parsers, ciphers' callers and encoders leave plaintext in stack
        // frames below this one; the heap is wiped as it is freed.
        iai_policy::wipe::stack();
        mark(false);
        if written.is_err() {
            return;
        }
    }
}
