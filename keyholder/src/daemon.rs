//! The keyholder process (`iai-mcp __keyholder`), started by `iai-mcp unlock`.
//!
//! Order matters: non-dumpable first; then the passphrase (stdin) and `.key`;
//! the DEK is unwrapped, turned into the sealing state, pinned in RAM, and the
//! passphrase, KEK and raw DEK are wiped; the storer is spawned with its end of
//! a socketpair; only then does the keyholder lock itself down (no files, no
//! sockets, no exec) and serve the storer until the storer goes away.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

use iai_policy::{Home, Options, Sandbox};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use crate::seal::{Field, RowId, SealError, Sealer};
use crate::startup::error_line;
use crate::wire::{read_frame, write_frame, Refusal, Request, Response, SERVING_MAX_UNSEAL};
use iai_keyfile::{KeyFile, KeyFileError, Passphrase, SlotKind, MAX_KEYFILE_LEN, MAX_PASSPHRASE_BYTES};

/// A startup failure, reported to `unlock` as `ERR <stage> <message>`.
struct Fail {
    stage: &'static str,
    message: String,
}

fn fail(stage: &'static str, message: impl Into<String>) -> Fail {
    Fail { stage, message: message.into() }
}

/// Runs the keyholder; returns the process exit code.
pub fn run(home: Home, opts: Options, secret: SlotKind) -> i32 {
    match start(&home, opts, secret) {
        Ok((stream, sealer, degraded, mut storer)) => {
            let code = serve(stream, sealer, degraded);
            // Why the store stopped serving goes to the log, where `status`
            // finds it: a storer killed by a signal must not look like a lock.
            let (ended, clean) = match storer.wait() {
                Ok(status) => (describe_exit(status), status.success()),
                Err(e) => (format!("could not be waited for ({e})"), false),
            };
            iai_policy::log!("{SESSION_ENDED}{ended}");
            // A storer that did not end by `lock` is a failure of the pair
            // (what a service manager restarts on).
            if code == 0 && !clean {
                4
            } else {
                code
            }
        }
        Err(f) => {
            let mut out = std::io::stdout();
            let _ = out.write_all(error_line(f.stage, &f.message).as_bytes());
            let _ = out.flush();
            iai_policy::log!("keyholder: {}: {}", f.stage, f.message);
            2
        }
    }
}

/// The log line `status` looks for: how the last storer ended.
pub const SESSION_ENDED: &str = "keyholder: the storer ended: ";

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => "exited normally".to_string(),
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) if sig == nix::libc::SIGSYS => format!(
            "killed by signal {sig} (SIGSYS: a system call its sandbox does not allow; this is a bug in iai-mcp, \
             please report it with this log)"
        ),
        (None, Some(sig)) => {
            let name = nix::sys::signal::Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("unknown");
            format!("killed by signal {sig} ({name})")
        }
        (None, None) => "ended for an unknown reason".to_string(),
    }
}

fn start(home: &Home, opts: Options, secret: SlotKind) -> Result<(UnixStream, Keys, bool, std::process::Child), Fail> {
    iai_policy::harden_process().map_err(|e| fail("sandbox", e.to_string()))?;
    // The shared layout check, again at start: `unlock` ran it, but the home
    // may have changed since.
    if let Some(p) = iai_policy::home_check::check(home, nix::unistd::getuid().as_raw()).first() {
        return Err(fail("home", format!("{}; fix: {}", p.what, p.fix)));
    }
    let pass = read_passphrase()?;
    let keyfile = load_keyfile(home)?;
    let dek = keyfile.unwrap_with(secret, &pass).map_err(|e| match e {
        KeyFileError::WrongPassphrase => {
            fail("passphrase", format!("wrong {} (or the key file was modified)", secret.name()))
        }
        KeyFileError::NoSuchSlot(_) if secret == SlotKind::RecoveryCode => {
            fail("passphrase", "this store has no recovery code (`iai-mcp recovery-code add` makes one)")
        }
        KeyFileError::NoSuchSlot(_) if secret == SlotKind::Keyring => {
            fail("passphrase", "unlocking from the keyring is not enabled (`iai-mcp keyring enable` enables it)")
        }
        other => fail("key", other.to_string()),
    })?;
    drop(pass);
    let tag = keyfile.tag_key(&dek).map_err(|e| fail("key", e.to_string()))?;
    let previous = keyfile.previous(&dek).map_err(|e| fail("key", e.to_string()))?;
    let sealer = Keys {
        current: Sealer::with_tag_key(&dek, keyfile.key_id(), &tag),
        // Only while a rotation is under way: unseals what is not re-sealed yet.
        previous: previous.map(|(id, old)| Sealer::with_tag_key(&old, id, &tag)),
    };
    drop((dek, tag));
    for (ptr, len) in sealer.secret_regions() {
        crate::sys::pin_secret(ptr, len).map_err(|e| {
            fail(
                "sandbox",
                format!("could not lock the key in memory (mlock: {e}); raise the memlock limit (ulimit -l)"),
            )
        })?;
    }

    let (mine, theirs) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| fail("storer", format!("socketpair: {e}")))?;
    fcntl(&theirs, FcntlArg::F_SETFD(FdFlag::empty())).map_err(|e| fail("storer", format!("fcntl: {e}")))?;
    let mut storer = Command::new("/proc/self/exe");
    storer.arg("__storer").arg("--home").arg(home.root()).arg("--keyholder-fd").arg(theirs.as_raw_fd().to_string());
    if opts.allow_degraded {
        storer.arg("--allow-degraded-sandbox");
    }
    let child = storer
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| fail("storer", format!("could not start the storer: {e}")))?;
    drop(theirs);

    let stream = UnixStream::from(mine);
    let applied = iai_policy::apply(&Sandbox::keyholder(), &[stream.as_raw_fd()], opts)
        .map_err(|e| fail("sandbox", e.to_string()))?;
    for d in &applied.degraded {
        iai_policy::log!("keyholder: running with a degraded sandbox: {d}");
    }
    // From here on the storer owns the report to `unlock`; stdin is spent.
    let _ = nix::unistd::close(1);
    let _ = nix::unistd::close(0);
    Ok((stream, sealer, !applied.degraded.is_empty(), child))
}

/// Reads the passphrase from stdin unbuffered, into a fixed buffer pinned in
/// RAM and wiped on drop: std's stdin would keep a copy in its process-wide
/// buffer for the keyholder's whole life.
fn read_passphrase() -> Result<Passphrase, Fail> {
    let mut buf = zeroize::Zeroizing::new([0u8; MAX_PASSPHRASE_BYTES + 1]);
    // Best effort: a buffer that cannot be pinned is still wiped.
    let _ = crate::sys::pin_secret(buf.as_ptr(), buf.len());
    let mut len = 0;
    while len < buf.len() {
        match nix::unistd::read(std::io::stdin(), &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(fail("passphrase", format!("could not read the passphrase: {e}"))),
        }
    }
    if len > MAX_PASSPHRASE_BYTES {
        return Err(fail("passphrase", format!("the passphrase is longer than {MAX_PASSPHRASE_BYTES} bytes")));
    }
    Ok(Passphrase::from_slice(&buf[..len]))
}

/// Opens `.key` without following links and checks it is what `init` made.
fn load_keyfile(home: &Home) -> Result<KeyFile, Fail> {
    let path = home.key();
    let shown = path.display();
    let file =
        std::fs::OpenOptions::new().read(true).custom_flags(libc_o_nofollow()).open(&path).map_err(|e| {
            match e.raw_os_error() {
                Some(nix::libc::ELOOP) => fail(
                    "key",
                    format!(
                        "refusing to use {shown}: it is a symbolic link; replace it with the regular file it points to"
                    ),
                ),
                Some(nix::libc::ENOENT) => fail("key", format!("no key file at {shown}; run `iai-mcp init` first")),
                _ => fail("key", format!("cannot open {shown}: {e}")),
            }
        })?;
    let meta = file.metadata().map_err(|e| fail("key", format!("cannot stat {shown}: {e}")))?;
    let uid = nix::unistd::getuid().as_raw();
    if !meta.file_type().is_file() {
        return Err(fail("key", format!("refusing to use {shown}: it is not a regular file")));
    }
    if meta.uid() != uid {
        return Err(fail(
            "key",
            format!(
                "refusing to use {shown}: it is owned by uid {}, not by you (uid {uid}); fix with: chown {uid} {shown}",
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o7777 != 0o600 {
        return Err(fail(
            "key",
            format!(
                "refusing to use {shown}: its mode is {:04o}, it must be 0600; fix with: chmod 600 {shown}",
                meta.mode() & 0o7777
            ),
        ));
    }
    if meta.nlink() != 1 {
        return Err(fail(
            "key",
            format!(
                "refusing to use {shown}: it has {} hard links; remove the other names so only {shown} remains",
                meta.nlink()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(MAX_KEYFILE_LEN + 1);
    file.take(MAX_KEYFILE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail("key", format!("cannot read {shown}: {e}")))?;
    KeyFile::parse(&bytes).map_err(|e| fail("key", format!("{shown}: {e}")))
}

/// Never follow a link, never block on a FIFO or a device, never take a terminal.
fn libc_o_nofollow() -> i32 {
    nix::libc::O_NOFOLLOW | nix::libc::O_NOCTTY | nix::libc::O_NONBLOCK
}

/// Serves the storer until it hangs up; the sealer (and so the key) is
/// dropped and wiped before the process exits. Public so benchmarks can put
/// the real serve loop at the far end of a socketpair.
pub fn serve(mut stream: UnixStream, mut sealer: Keys, degraded: bool) -> i32 {
    let mut phase = Phase::New;
    loop {
        let body = match read_frame(&mut stream) {
            Ok(Some(body)) => body,
            Ok(None) => return 0,
            Err(e) => {
                iai_policy::log!("keyholder: closing the channel: {e}");
                return 3;
            }
        };
        let request = match Request::decode(&body) {
            Ok(r) => r,
            Err(e) => {
                iai_policy::log!("keyholder: closing the channel on a malformed request: {e}");
                return 3;
            }
        };
        let response = handle(&mut sealer, &mut phase, degraded, request);
        let sent = write_frame(&mut stream, &response.encode());
        drop((body, response));
        // Ciphers and encoders leave plaintext in stack frames below this one.
        iai_policy::wipe::stack();
        if sent.is_err() {
            return 0;
        }
    }
}

/// The data key, and during a rotation the one before it (unseal and
/// reseal only).
pub struct Keys {
    pub current: Sealer,
    pub previous: Option<Sealer>,
}

impl Keys {
    fn secret_regions(&self) -> Vec<(*const u8, usize)> {
        self.previous.iter().chain([&self.current]).flat_map(Sealer::secret_regions).collect()
    }

    /// Unseals with whichever key the blob names.
    fn unseal(&self, field: Field, row: RowId, blob: &[u8]) -> Result<Vec<u8>, SealError> {
        match &self.previous {
            Some(old) if Sealer::blob_key_id(blob) == Some(old.key_id()) => old.unseal(field, row, blob),
            _ => self.current.unseal(field, row, blob),
        }
    }
}

/// When each request is allowed, as OpenSSH's monitor says of its own:
///
/// | request | New | Loading (building the index) | Serving |
/// |---|---|---|---|
/// | hello | once | refused | refused |
/// | seal, tag | refused | any batch | any batch |
/// | unseal, reseal | refused | any batch (the whole store) | at most [`SERVING_MAX_UNSEAL`] records |
/// | ready | refused | once, to Serving | refused |
/// | forget previous | refused | during a rotation | during a rotation |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    New,
    Loading,
    Serving,
}

fn handle(keys: &mut Keys, phase: &mut Phase, degraded: bool, request: Request) -> Response {
    let refuse = Response::Refused;
    let sealer = &mut keys.current;
    match (request, *phase) {
        (Request::Unknown(_), _) => refuse(Refusal::UnknownRequest),
        (Request::Hello { counter }, Phase::New) => {
            if let Some(blob) = counter {
                // A counter from before a rotation counts the previous key's
                // seals; the new key starts from zero.
                let restored = match &mut keys.previous {
                    Some(old) if Sealer::blob_key_id(&blob) == Some(old.key_id()) => old.restore_counter(&blob),
                    _ => sealer.restore_counter(&blob),
                };
                if restored.is_err() {
                    return refuse(Refusal::BadCounter);
                }
            }
            *phase = Phase::Loading;
            Response::Hello {
                key_id: sealer.key_id(),
                previous: keys.previous.as_ref().map(Sealer::key_id),
                count: sealer.count(),
                limit: sealer.limit(),
                degraded,
            }
        }
        (Request::Hello { .. }, _) => refuse(Refusal::HelloTwice),
        (_, Phase::New) => refuse(Refusal::HelloFirst),
        (Request::Ready, Phase::Loading) => {
            *phase = Phase::Serving;
            Response::Ready
        }
        (Request::Ready, _) => refuse(Refusal::ReadyTwice),
        (Request::Seal(items), _) => {
            let mut blobs = Vec::with_capacity(items.len());
            for item in items {
                match sealer.seal(item.field, item.row, &item.plain) {
                    Ok(b) => blobs.push(b),
                    Err(e) => return refuse(seal_refusal(e)),
                }
            }
            match sealer.counter_blob() {
                Ok(counter) => Response::Sealed { counter, blobs },
                Err(e) => refuse(seal_refusal(e)),
            }
        }
        (Request::Unseal(items) | Request::Reseal(items), Phase::Serving) if items.len() > SERVING_MAX_UNSEAL => {
            refuse(Refusal::TooManyItems)
        }
        (Request::Unseal(items), _) => {
            Response::Unsealed(items.iter().map(|i| keys.unseal(i.field, i.row, &i.blob)).collect())
        }
        (Request::Reseal(items), _) => {
            let Some(old) = &keys.previous else { return refuse(Refusal::NoPreviousKey) };
            let mut blobs = Vec::with_capacity(items.len());
            for i in &items {
                match sealer.reseal(old, i.field, i.row, &i.blob) {
                    Err(SealError::LimitReached) => return refuse(Refusal::LimitReached),
                    r => blobs.push(r),
                }
            }
            match sealer.counter_blob() {
                Ok(counter) => Response::Resealed { counter, blobs },
                Err(e) => refuse(seal_refusal(e)),
            }
        }
        (Request::ForgetPrevious, _) => match keys.previous.take() {
            // Dropping the sealer wipes the key.
            Some(_) => Response::ForgotPrevious,
            None => refuse(Refusal::NoPreviousKey),
        },
        (Request::Tag(items), _) => Response::Tagged(items.iter().map(|i| sealer.tag(i)).collect()),
    }
}

fn seal_refusal(e: SealError) -> Refusal {
    match e {
        SealError::LimitReached => Refusal::LimitReached,
        _ => Refusal::Random,
    }
}

impl From<Fail> for String {
    fn from(f: Fail) -> String {
        format!("{}: {}", f.stage, f.message)
    }
}

/// Describes a key-file problem as `unlock` and `audit` show it.
pub fn check_keyfile(home: &Home) -> Result<KeyFile, String> {
    load_keyfile(home).map_err(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{SealItem, UnsealItem};
    use crate::{Field, RowId};
    use iai_keyfile::{Dek, KeyId};

    fn sealer() -> Sealer {
        Sealer::new(&Dek::from_bytes([9; 32]), KeyId([1; 16]))
    }

    fn keys(current: Sealer) -> Keys {
        Keys { current, previous: None }
    }

    fn refused(r: Response) -> Option<Refusal> {
        match r {
            Response::Refused(x) => Some(x),
            _ => None,
        }
    }

    #[test]
    fn requests_before_hello_unknown_kinds_and_forged_counters_are_refused() {
        let mut s = keys(sealer());
        let mut phase = Phase::New;
        assert_eq!(
            refused(handle(&mut s, &mut phase, false, Request::Tag(vec![b"x".to_vec()]))),
            Some(Refusal::HelloFirst)
        );
        let forged = Request::Hello { counter: Some(vec![1; 60]) };
        assert_eq!(refused(handle(&mut s, &mut phase, false, forged)), Some(Refusal::BadCounter));
        assert!(matches!(handle(&mut s, &mut phase, false, Request::Hello { counter: None }), Response::Hello { .. }));
        assert_eq!(
            refused(handle(&mut s, &mut phase, false, Request::Hello { counter: None })),
            Some(Refusal::HelloTwice)
        );
        assert_eq!(refused(handle(&mut s, &mut phase, false, Request::Unknown(0x42))), Some(Refusal::UnknownRequest));
        let seal =
            Request::Seal(vec![SealItem { field: Field::RecordBody, row: RowId([2; 16]), plain: b"p".to_vec() }]);
        match handle(&mut s, &mut phase, false, seal) {
            Response::Sealed { counter, blobs } => {
                assert_eq!(blobs.len(), 1);
                // The counter it hands out restores in a fresh keyholder.
                let mut fresh = sealer();
                fresh.restore_counter(&counter).expect("counter authenticates");
                assert_eq!(fresh.count(), 2);
            }
            _ => panic!("seal refused"),
        }
    }

    #[test]
    fn seal_limit_refuses_the_batch() {
        let mut s = keys(sealer().with_limit(2));
        let mut phase = Phase::New;
        handle(&mut s, &mut phase, false, Request::Hello { counter: None });
        let item = || SealItem { field: Field::RecordBody, row: RowId([2; 16]), plain: b"p".to_vec() };
        assert!(matches!(handle(&mut s, &mut phase, false, Request::Seal(vec![item()])), Response::Sealed { .. }));
        assert_eq!(
            refused(handle(&mut s, &mut phase, false, Request::Seal(vec![item()]))),
            Some(Refusal::LimitReached)
        );
    }

    /// Issue 10.8: a storer may unseal the whole store only while it builds
    /// its index; once ready, no request may name more records than a real
    /// operation needs, and the phase cannot be reset.
    #[test]
    fn once_ready_the_keyholder_serves_only_batches_real_operations_need() {
        let mut s = keys(sealer());
        let mut phase = Phase::New;
        assert_eq!(refused(handle(&mut s, &mut phase, false, Request::Ready)), Some(Refusal::HelloFirst));
        handle(&mut s, &mut phase, false, Request::Hello { counter: None });
        let blob = match handle(
            &mut s,
            &mut phase,
            false,
            Request::Seal(vec![SealItem { field: Field::RecordBody, row: RowId([3; 16]), plain: b"p".to_vec() }]),
        ) {
            Response::Sealed { mut blobs, .. } => blobs.pop().expect("blob"),
            _ => panic!("seal refused"),
        };
        let many = |n: usize| {
            Request::Unseal(
                (0..n)
                    .map(|_| UnsealItem { field: Field::RecordBody, row: RowId([3; 16]), blob: blob.clone() })
                    .collect(),
            )
        };
        // Loading: the whole store may be unsealed.
        assert!(matches!(handle(&mut s, &mut phase, false, many(4096)), Response::Unsealed(r) if r.len() == 4096));
        assert!(matches!(handle(&mut s, &mut phase, false, Request::Ready), Response::Ready));
        assert_eq!(phase, Phase::Serving);
        assert!(matches!(handle(&mut s, &mut phase, false, many(SERVING_MAX_UNSEAL)), Response::Unsealed(_)));
        assert_eq!(
            refused(handle(&mut s, &mut phase, false, many(SERVING_MAX_UNSEAL + 1))),
            Some(Refusal::TooManyItems)
        );
        assert_eq!(refused(handle(&mut s, &mut phase, false, Request::Ready)), Some(Refusal::ReadyTwice));
        assert_eq!(
            refused(handle(&mut s, &mut phase, false, Request::Hello { counter: None })),
            Some(Refusal::HelloTwice)
        );
        assert_eq!(phase, Phase::Serving, "nothing resets the phase");
    }

    /// Issue 11.3: during a rotation the keyholder unseals with the key each
    /// blob names, re-seals old blobs under the new key without handing out
    /// their plaintext, and forgets the old key when told.
    #[test]
    fn during_a_rotation_old_blobs_unseal_and_reseal_and_the_old_key_is_forgotten() {
        let mut old = Sealer::new(&Dek::from_bytes([9; 32]), KeyId([1; 16]));
        let row = RowId([5; 16]);
        let old_blob = old.seal(Field::RecordBody, row, b"kept across keys").expect("seal");
        let old_counter = old.counter_blob().expect("counter");
        let tag = iai_keyfile::TagKey::derive(&Dek::from_bytes([9; 32]), &KeyId([1; 16]));
        let mut s = Keys {
            current: Sealer::with_tag_key(&Dek::from_bytes([7; 32]), KeyId([2; 16]), &tag),
            previous: Some(Sealer::new(&Dek::from_bytes([9; 32]), KeyId([1; 16]))),
        };
        assert_eq!(s.current.tag(b"t"), old.tag(b"t"), "the tag key is carried over");
        let mut phase = Phase::New;
        // The stored counter is the old key's: accepted, the new key counts from zero.
        match handle(&mut s, &mut phase, false, Request::Hello { counter: Some(old_counter) }) {
            Response::Hello { key_id, previous, count, .. } => {
                assert_eq!((key_id, previous, count), (KeyId([2; 16]), Some(KeyId([1; 16])), 0));
            }
            _ => panic!("hello refused"),
        }
        let item = |blob: &[u8]| UnsealItem { field: Field::RecordBody, row, blob: blob.to_vec() };
        let mut flipped = old_blob.clone();
        *flipped.last_mut().expect("byte") ^= 1;
        let new_blob = match handle(&mut s, &mut phase, false, Request::Reseal(vec![item(&old_blob), item(&flipped)])) {
            Response::Resealed { blobs, .. } => {
                assert_eq!(blobs[1], Err(SealError::BadTag), "a damaged blob is not re-sealed");
                blobs[0].clone().expect("re-sealed")
            }
            _ => panic!("reseal refused"),
        };
        assert_eq!(Sealer::blob_key_id(&new_blob), Some(KeyId([2; 16])));
        match handle(&mut s, &mut phase, false, Request::Unseal(vec![item(&old_blob), item(&new_blob)])) {
            Response::Unsealed(r) => {
                assert_eq!(r[0].as_deref(), Ok(&b"kept across keys"[..]));
                assert_eq!(r[1].as_deref(), Ok(&b"kept across keys"[..]));
            }
            _ => panic!("unseal refused"),
        }
        assert!(matches!(handle(&mut s, &mut phase, false, Request::ForgetPrevious), Response::ForgotPrevious));
        assert_eq!(refused(handle(&mut s, &mut phase, false, Request::ForgetPrevious)), Some(Refusal::NoPreviousKey));
        assert_eq!(
            refused(handle(&mut s, &mut phase, false, Request::Reseal(vec![item(&old_blob)]))),
            Some(Refusal::NoPreviousKey)
        );
        match handle(&mut s, &mut phase, false, Request::Unseal(vec![item(&old_blob)])) {
            Response::Unsealed(r) => assert_eq!(r[0], Err(SealError::WrongKey), "the old key is gone"),
            _ => panic!("unseal refused"),
        }
    }
}
