//! How the MCP shim reaches the storer without being able to reach anything
//! else (issue 10.1).
//!
//! The shim parses untrusted input from its host. If it could call `socket`
//! and `connect`, a compromised shim could reach every UNIX socket on the
//! machine (the session bus, and through it `systemd-run`; docker.sock; the
//! ssh agent): Landlock up to ABI 7 does not govern connecting to a pathname
//! socket. So the shim has neither call. A tiny connector process, started
//! from the same binary before the shim locks itself down, holds the one path
//! it was started with; for each one-byte request it connects to that path
//! and passes the connected descriptor back with SCM_RIGHTS. It reads nothing
//! else from the shim, so a compromised shim can ask it for exactly one thing:
//! another connection to the storer.
//!
//! Reply: one status byte (0 connected, the descriptor attached; 1 locked:
//! nothing listens; 2 failed, followed by the errno as 4 bytes LE).

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

use iai_policy::{Home, Options, Sandbox};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::client::{Client, ClientError};

const REQUEST: u8 = b'c';
const CONNECTED: u8 = 0;
const LOCKED: u8 = 1;
const FAILED: u8 = 2;
/// How long one storer request may take before the client gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The connector role (`iai-mcp __connector`): serves connection requests on
/// `fd` until the shim closes its end; returns the exit code.
pub fn run(home: Home, fd: i32, opts: Options) -> i32 {
    if let Err(e) = iai_policy::harden_process() {
        iai_policy::log!("connector: {e}");
        return 2;
    }
    let channel = match crate::sys::adopt_socket(fd) {
        Ok(fd) => UnixStream::from(fd),
        Err(e) => {
            iai_policy::log!("connector: descriptor {fd}: {e}");
            return 2;
        }
    };
    match iai_policy::apply(&Sandbox::connector(), &[channel.as_raw_fd()], opts) {
        Ok(applied) => {
            for d in &applied.degraded {
                iai_policy::log!("connector: WARNING: sandbox degraded: {d}");
            }
        }
        Err(e) => {
            iai_policy::log!("connector: refusing to start without its sandbox: {e}");
            return 2;
        }
    }
    serve(&home, channel)
}

fn serve(home: &Home, mut channel: UnixStream) -> i32 {
    let socket = home.socket();
    loop {
        let mut req = [0u8; 1];
        match channel.read(&mut req) {
            Ok(0) => return 0,
            Ok(_) if req[0] == REQUEST => {}
            Ok(_) => {
                iai_policy::log!("connector: an unknown request; closing");
                return 3;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return 3,
        }
        let sent = match UnixStream::connect(&socket) {
            Ok(stream) => {
                let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
                let fds = [stream.as_raw_fd()];
                let cmsg = [ControlMessage::ScmRights(&fds)];
                sendmsg::<()>(channel.as_raw_fd(), &[IoSlice::new(&[CONNECTED])], &cmsg, MsgFlags::empty(), None)
                    .map(|_| ())
                // `stream` closes here: the shim holds its own copy now.
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
                channel.write_all(&[LOCKED]).map_err(|_| nix::errno::Errno::EPIPE)
            }
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(0);
                let mut reply = [FAILED, 0, 0, 0, 0];
                reply[1..].copy_from_slice(&errno.to_le_bytes());
                channel.write_all(&reply).map_err(|_| nix::errno::Errno::EPIPE)
            }
        };
        if sent.is_err() {
            return 0;
        }
    }
}

/// The shim's end: asks for connections to the storer.
pub struct Connector {
    channel: Mutex<UnixStream>,
}

impl Connector {
    /// Adopts the inherited descriptor `fd` (the shim's end of the pair).
    pub fn adopt(fd: i32) -> std::io::Result<Connector> {
        Ok(Connector { channel: Mutex::new(UnixStream::from(crate::sys::adopt_socket(fd)?)) })
    }

    /// A fresh connection to the storer, or why there is none.
    pub fn connect(&self) -> Result<Client, ClientError> {
        let gone = |e: std::io::Error| ClientError::Connect { path: "the shim's connector".into(), source: e };
        let channel = self.channel.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (&*channel).write_all(&[REQUEST]).map_err(gone)?;
        let mut reply = [0u8; 5];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let (n, fd) = {
            let mut iov = [IoSliceMut::new(&mut reply)];
            let msg = recvmsg::<()>(channel.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
                .map_err(|e| gone(e.into()))?;
            let mut fd: Option<OwnedFd> = None;
            for c in msg.cmsgs().map_err(|e| gone(e.into()))? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    for raw in fds {
                        let owned = crate::sys::adopt_received(raw);
                        if fd.is_none() {
                            fd = Some(owned);
                        }
                    }
                }
            }
            (msg.bytes, fd)
        };
        match (n, reply[0], fd) {
            (0, _, _) => Err(gone(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the connector has exited"))),
            (_, CONNECTED, Some(fd)) => Ok(Client::from_stream(UnixStream::from(fd))),
            (_, LOCKED, _) => Err(ClientError::Locked),
            (_, FAILED, _) => {
                // The errno follows in the same message (or the next read).
                let mut rest = [0u8; 4];
                let have = n.saturating_sub(1).min(4);
                rest[..have].copy_from_slice(&reply[1..1 + have]);
                if have < 4 {
                    let _ = (&*channel).read_exact(&mut rest[have..]);
                }
                let errno = i32::from_le_bytes(rest);
                Err(ClientError::Connect {
                    path: "the storer's socket".into(),
                    source: std::io::Error::from_raw_os_error(errno),
                })
            }
            _ => Err(gone(std::io::Error::new(std::io::ErrorKind::InvalidData, "the connector answered nonsense"))),
        }
    }
}
