//! Sandbox cases, one process per case. Without arguments this binary runs
//! every case by re-executing itself with `--case NAME HOME [--as-nobody]`;
//! the child applies the real role sandbox (the same `iai_policy::apply` the
//! roles call) and then tries one thing. The parent asserts the exact outcome
//! from outside: a SIGSYS kill, or the errno the child exits with.

use std::ffi::CString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use iai_policy::{FsView, Home, Options, Sandbox};

const NOBODY: u32 = 65534;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Killed by seccomp.
    Sigsys,
    /// Exited with this errno.
    Errno(i32),
    /// Exited 0: the sandbox allows what the role needs.
    Allowed,
}

struct Case {
    name: &'static str,
    nobody: bool,
    expect: Expect,
}

const fn case(name: &'static str, nobody: bool, expect: Expect) -> Case {
    Case { name, nobody, expect }
}

const CASES: &[Case] = &[
    case("keyholder-open-file", false, Expect::Sigsys),
    case("keyholder-open-file", true, Expect::Sigsys),
    case("keyholder-open-key", true, Expect::Sigsys),
    case("keyholder-unix-socket", false, Expect::Sigsys),
    case("keyholder-tcp-socket", true, Expect::Sigsys),
    case("keyholder-exec", false, Expect::Sigsys),
    case("keyholder-fork", false, Expect::Sigsys),
    case("keyholder-ptrace-sibling", true, Expect::Sigsys),
    case("keyholder-exec-memory", false, Expect::Sigsys),
    case("keyholder-landlock-open", false, Expect::Errno(libc::EACCES)),
    case("keyholder-landlock-open", true, Expect::Errno(libc::EACCES)),
    case("keyholder-socketpair-io", false, Expect::Allowed),
    case("storer-open-key", false, Expect::Errno(libc::EACCES)),
    case("storer-open-key", true, Expect::Errno(libc::EACCES)),
    case("storer-open-outside", true, Expect::Errno(libc::EACCES)),
    case("storer-tcp-connect", false, Expect::Sigsys),
    case("storer-exec", true, Expect::Sigsys),
    case("storer-ptrace-sibling", true, Expect::Sigsys),
    case("storer-store-and-threads", true, Expect::Allowed),
    case("shim-open-file", false, Expect::Errno(libc::EACCES)),
    case("shim-open-key", true, Expect::Errno(libc::EACCES)),
    case("shim-tcp-socket", true, Expect::Sigsys),
    case("shim-exec", false, Expect::Sigsys),
    case("shim-fork", true, Expect::Sigsys),
    case("shim-ptrace-sibling", true, Expect::Sigsys),
    // Issue 10.1: the shim cannot reach any socket by itself, not even the
    // storer's; a listener outside the home stands for the session bus.
    case("shim-unix-connect-elsewhere", false, Expect::Sigsys),
    case("shim-unix-connect-elsewhere", true, Expect::Sigsys),
    case("shim-unix-connect-storer", true, Expect::Sigsys),
    case("shim-receive-connection-and-threads", true, Expect::Allowed),
    case("connector-connect-storer", true, Expect::Allowed),
    case("connector-open-file", true, Expect::Sigsys),
    case("connector-tcp-socket", false, Expect::Sigsys),
    case("connector-exec", true, Expect::Sigsys),
    case("connector-fork", false, Expect::Sigsys),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--case") {
        let nobody = args.iter().any(|a| a == "--as-nobody");
        let sibling: Option<i32> =
            args.iter().position(|a| a == "--sibling").and_then(|i| args.get(i + 1)?.parse().ok());
        child(&args[2], Path::new(&args[3]), nobody, sibling);
    }
    // libtest's own flags (e.g. --nocapture, a filter) are accepted and ignored.
    let mut passed = 0;
    let mut failed = 0;
    for c in CASES {
        let home = fixture(c.nobody);
        let mut sibling = Command::new("sleep").arg("30").spawn().expect("sibling");
        let mut cmd = Command::new(std::env::current_exe().expect("exe"));
        cmd.args(["--case", c.name]).arg(home.path().join("h")).args(["--sibling", &sibling.id().to_string()]);
        if c.nobody {
            cmd.arg("--as-nobody");
        }
        let status = cmd.status().expect("run case");
        let _ = sibling.kill();
        let _ = sibling.wait();
        let got = observed(status);
        let who = if c.nobody { "as nobody" } else { "as root" };
        if got == Some(c.expect) {
            passed += 1;
            println!("sandbox {} ({who}) ... ok: {:?}", c.name, c.expect);
        } else {
            failed += 1;
            println!("sandbox {} ({who}) ... FAILED: expected {:?}, got {status:?}", c.name, c.expect);
        }
    }
    println!("\n{passed} passed, {failed} failed");
    std::process::exit(i32::from(failed > 0));
}

fn observed(status: ExitStatus) -> Option<Expect> {
    if status.signal() == Some(libc::SIGSYS) {
        return Some(Expect::Sigsys);
    }
    match status.code()? {
        0 => Some(Expect::Allowed),
        n => Some(Expect::Errno(n)),
    }
}

/// A home with `.key`, `store/` and `run/`, owned by the uid the case runs as.
fn fixture(nobody: bool) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("iai-sb").tempdir_in("/tmp").expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let h = dir.path().join("h");
    for d in [h.clone(), h.join("store"), h.join("run")] {
        std::fs::create_dir(&d).expect("mkdir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    // Somewhere outside the home where any uid may bind a socket.
    std::fs::create_dir(dir.path().join("elsewhere")).expect("mkdir");
    std::fs::set_permissions(dir.path().join("elsewhere"), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::write(h.join(".key"), b"not a real key").expect("key");
    std::fs::set_permissions(h.join(".key"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    if nobody {
        for p in [h.clone(), h.join("store"), h.join("run"), h.join(".key")] {
            std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).expect("chown");
        }
    }
    dir
}

/// Exits with the errno of a failed operation, or 0 when it succeeded.
fn exit_with<T>(r: std::io::Result<T>) -> ! {
    match r {
        Ok(_) => std::process::exit(0),
        Err(e) => std::process::exit(e.raw_os_error().unwrap_or(250)),
    }
}

fn child(name: &str, root: &Path, nobody: bool, sibling: Option<i32>) -> ! {
    if nobody {
        let id = nix::unistd::Uid::from_raw(NOBODY);
        let gid = nix::unistd::Gid::from_raw(NOBODY);
        nix::unistd::setgroups(&[]).expect("setgroups");
        nix::unistd::setresgid(gid, gid, gid).expect("setresgid");
        nix::unistd::setresuid(id, id, id).expect("setresuid");
    }
    let home = Home::new(root.to_path_buf()).expect("home");
    let (role, op) = name.split_once('-').expect("role-op");
    if op == "landlock-open" {
        iai_policy::restrict_filesystem(&FsView::Nothing).expect("landlock");
        exit_with(std::fs::File::open(home.key()));
    }
    let sandbox = match role {
        "keyholder" => Sandbox::keyholder(),
        "storer" => Sandbox::storer(&home),
        "shim" => Sandbox::shim(),
        "connector" => Sandbox::connector(),
        other => panic!("unknown role {other}"),
    };
    // The keyholder keeps one end of a socketpair, as in production; the
    // shim's storer is a listener bound before the sandbox.
    let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
    let listener = std::os::unix::net::UnixListener::bind(home.socket()).expect("bind");
    // Outside the home, as the session bus or docker.sock would be.
    let bus_path = root.parent().expect("parent").join("elsewhere").join("bus.sock");
    let bus = std::os::unix::net::UnixListener::bind(&bus_path).expect("bind the stand-in bus");
    // A connection made before the sandbox, to hand over as the connector does.
    let made = std::os::unix::net::UnixStream::connect(home.socket()).expect("connect before the sandbox");
    use std::os::fd::AsRawFd;
    let keep = [a.as_raw_fd(), b.as_raw_fd(), listener.as_raw_fd(), bus.as_raw_fd(), made.as_raw_fd()];
    iai_policy::apply(&sandbox, &keep, Options::default()).expect("apply sandbox");
    match op {
        "open-file" | "open-outside" => exit_with(std::fs::File::open("/etc/hostname")),
        "open-key" => exit_with(std::fs::File::open(home.key())),
        "unix-socket" => exit_with(std::os::unix::net::UnixStream::connect(home.run_dir().join("x.sock"))),
        "tcp-socket" | "tcp-connect" => exit_with(std::net::TcpStream::connect("127.0.0.1:9")),
        "exec" => {
            let prog = CString::new("/bin/true").expect("cstring");
            exit_with(nix::unistd::execv(&prog, &[&prog]).map_err(std::io::Error::from))
        }
        "fork" => exit_with(std::process::Command::new("/bin/true").status()),
        "ptrace-sibling" => {
            let pid = nix::unistd::Pid::from_raw(sibling.expect("sibling pid"));
            exit_with(nix::sys::ptrace::attach(pid).map_err(std::io::Error::from))
        }
        "exec-memory" => {
            // Asking for executable memory is a kill, not an error.
            let len = std::num::NonZeroUsize::new(4096).expect("len");
            let prot = nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_EXEC;
            let flags = nix::sys::mman::MapFlags::MAP_PRIVATE | nix::sys::mman::MapFlags::MAP_ANONYMOUS;
            exit_with(map_anonymous(len, prot, flags))
        }
        "socketpair-io" => {
            use std::io::{Read, Write};
            let (mut a, mut b) = (a, b);
            a.write_all(b"ping").expect("write");
            let mut buf = [0u8; 4];
            b.read_exact(&mut buf).expect("read");
            std::process::exit(if &buf == b"ping" { 0 } else { 1 })
        }
        "unix-connect-elsewhere" => exit_with(std::os::unix::net::UnixStream::connect(&bus_path)),
        "unix-connect-storer" => exit_with(std::os::unix::net::UnixStream::connect(home.socket())),
        "connect-storer" => {
            // The connector's job: connect by the one path, pass it on.
            let s = std::os::unix::net::UnixStream::connect(home.socket());
            drop(listener);
            exit_with(s)
        }
        "receive-connection-and-threads" => {
            // The shim's side: a connection arrives over SCM_RIGHTS, on a thread.
            use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
            let fds = [made.as_raw_fd()];
            let sent = sendmsg::<()>(
                a.as_raw_fd(),
                &[std::io::IoSlice::new(&[0])],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            );
            let t = std::thread::spawn(move || {
                let mut byte = [0u8; 1];
                let mut iov = [std::io::IoSliceMut::new(&mut byte)];
                let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
                let msg = recvmsg::<()>(b.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
                    .expect("recvmsg");
                let got =
                    msg.cmsgs().expect("cmsgs").any(|c| matches!(c, ControlMessageOwned::ScmRights(f) if f.len() == 1));
                got
            });
            let received = t.join().expect("thread");
            std::process::exit(if sent.is_ok() && received { 0 } else { 1 })
        }
        "store-and-threads" => {
            let path: PathBuf = home.store_dir().join("probe.db");
            std::fs::write(&path, b"x").expect("write inside store/");
            let t = std::thread::spawn(|| 7).join().expect("thread");
            std::process::exit(if t == 7 { 0 } else { 1 })
        }
        other => panic!("unknown case {other}"),
    }
}

#[allow(unsafe_code)]
fn map_anonymous(
    len: std::num::NonZeroUsize,
    prot: nix::sys::mman::ProtFlags,
    flags: nix::sys::mman::MapFlags,
) -> std::io::Result<std::ptr::NonNull<std::ffi::c_void>> {
    // SAFETY: a fresh anonymous private mapping aliases no existing memory;
    // it is never dereferenced (the process exits right after).
    unsafe { nix::sys::mman::mmap_anonymous(None, len, prot, flags) }.map_err(std::io::Error::from)
}
