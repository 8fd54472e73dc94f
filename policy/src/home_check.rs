//! The one check of a home's files, used by `unlock` (which refuses what it
//! finds), by the roles at start, and by `audit` (which reports it as FAIL).
//!
//! Every entry is opened without following links and without blocking
//! (`O_PATH | O_NOFOLLOW`: a FIFO or a device is never opened for reading, a
//! symbolic link is seen as a link), and its type, owner, mode and link count
//! are taken from the open descriptor. Each problem says what is wrong and how
//! to fix it.

use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::Home;

/// What kind of entry a path is, seen without following it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Socket,
    Fifo,
    Symlink,
    Other,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Dir => "a directory",
            Kind::File => "a regular file",
            Kind::Socket => "a socket",
            Kind::Fifo => "a FIFO (named pipe)",
            Kind::Symlink => "a symbolic link",
            Kind::Other => "a device or special file",
        }
    }
}

/// An entry as its descriptor describes it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub path: PathBuf,
    pub kind: Kind,
    pub uid: u32,
    pub mode: u32,
    pub nlink: u64,
}

/// Opens `path` with `O_PATH | O_NOFOLLOW` and describes it; None if absent.
pub fn entry(path: &Path) -> std::io::Result<Option<Entry>> {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let st = nix::sys::stat::fstat(file.as_fd()).map_err(std::io::Error::from)?;
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFREG => Kind::File,
        libc::S_IFSOCK => Kind::Socket,
        libc::S_IFIFO => Kind::Fifo,
        libc::S_IFLNK => Kind::Symlink,
        _ => Kind::Other,
    };
    Ok(Some(Entry { path: path.to_path_buf(), kind, uid: st.st_uid, mode: st.st_mode & 0o7777, nlink: st.st_nlink }))
}

/// One thing wrong with the home.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub what: String,
    pub fix: String,
}

/// What an entry of the layout must be.
struct Rule {
    rel: &'static str,
    kind: Kind,
    /// Exact mode, or only "no access for group and others".
    mode: Mode,
    required: bool,
    /// A hard link elsewhere would be a second name for the key.
    single_link: bool,
}

#[derive(Clone, Copy)]
enum Mode {
    Exact(u32),
    Private,
}

const LAYOUT: &[Rule] = &[
    Rule { rel: "", kind: Kind::Dir, mode: Mode::Exact(0o700), required: true, single_link: false },
    Rule { rel: ".key", kind: Kind::File, mode: Mode::Exact(0o600), required: true, single_link: true },
    Rule { rel: "store", kind: Kind::Dir, mode: Mode::Exact(0o700), required: true, single_link: false },
    Rule { rel: "run", kind: Kind::Dir, mode: Mode::Exact(0o700), required: true, single_link: false },
    Rule { rel: "store/memory.db", kind: Kind::File, mode: Mode::Private, required: false, single_link: true },
    Rule { rel: "store/memory.db-wal", kind: Kind::File, mode: Mode::Private, required: false, single_link: true },
    Rule { rel: "store/memory.db-shm", kind: Kind::File, mode: Mode::Private, required: false, single_link: true },
    Rule { rel: "store/memory.db-journal", kind: Kind::File, mode: Mode::Private, required: false, single_link: true },
    Rule { rel: "store/space-reserve", kind: Kind::File, mode: Mode::Private, required: false, single_link: false },
    Rule { rel: "run/iai-mcp.pid", kind: Kind::File, mode: Mode::Private, required: false, single_link: false },
    Rule { rel: "run/iai-mcp.sock", kind: Kind::Socket, mode: Mode::Private, required: false, single_link: false },
    Rule { rel: "run/daemon.log", kind: Kind::File, mode: Mode::Private, required: false, single_link: false },
    Rule { rel: "model", kind: Kind::Dir, mode: Mode::Exact(0o700), required: false, single_link: false },
    Rule {
        rel: "model/weights.safetensors",
        kind: Kind::File,
        mode: Mode::Private,
        required: false,
        single_link: false,
    },
    Rule { rel: "model/tokenizer.json", kind: Kind::File, mode: Mode::Private, required: false, single_link: false },
    Rule { rel: "run/hooks.log", kind: Kind::File, mode: Mode::Private, required: false, single_link: false },
];

/// Every problem of the home's layout, for the user `uid`. Empty: safe to use.
pub fn check(home: &Home, uid: u32) -> Vec<Problem> {
    let mut out = Vec::new();
    for rule in LAYOUT {
        let path = if rule.rel.is_empty() { home.root().to_path_buf() } else { home.root().join(rule.rel) };
        let shown = path.display().to_string();
        let problem = |what: String, fix: String| Problem { path: path.clone(), what, fix };
        let e = match entry(&path) {
            Ok(Some(e)) => e,
            Ok(None) if rule.required => {
                let fix = match rule.kind {
                    Kind::Dir => format!("mkdir -m 700 {shown}"),
                    _ => "run `iai-mcp init` (or restore .key from your backup)".to_string(),
                };
                out.push(problem(format!("{shown} is missing"), fix));
                if rule.rel.is_empty() {
                    return out;
                }
                continue;
            }
            Ok(None) => continue,
            Err(err) => {
                out.push(problem(
                    format!("{shown} cannot be inspected: {err}"),
                    format!("check the permissions of {shown}"),
                ));
                continue;
            }
        };
        if e.kind != rule.kind {
            let fix = match e.kind {
                Kind::Symlink => format!(
                    "replace the link {shown} with a real {} (iai-mcp never follows links in its home)",
                    if rule.kind == Kind::Dir { "directory" } else { "file" }
                ),
                _ => format!("move {shown} away; iai-mcp needs {} there", rule.kind.name()),
            };
            out.push(problem(format!("{shown} is {}, not {}", e.kind.name(), rule.kind.name()), fix));
            continue;
        }
        if e.uid != uid {
            out.push(problem(
                format!("{shown} is owned by uid {}, not by you (uid {uid})", e.uid),
                format!("chown {uid} {shown}"),
            ));
        }
        match rule.mode {
            Mode::Exact(m) if e.mode & 0o7777 != m => out.push(problem(
                format!("{shown} has mode {:04o}; it must be {m:04o}", e.mode),
                format!("chmod {m:o} {shown}"),
            )),
            Mode::Private if e.mode & 0o077 != 0 => out.push(problem(
                format!("{shown} is accessible to group or others (mode {:04o})", e.mode),
                format!("chmod go-rwx {shown}"),
            )),
            _ => {}
        }
        if rule.single_link && e.nlink != 1 {
            out.push(problem(
                format!("{shown} has {} hard links; another name for it may be readable elsewhere", e.nlink),
                format!("find the other names with `find / -samefile {shown}` and remove them"),
            ));
        }
    }
    out
}

/// The pid of the process holding a `flock` on `path`, from `/proc/locks`.
pub fn flock_holder(path: &Path) -> Option<u32> {
    let ino = std::fs::symlink_metadata(path).ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF"
        let at = f.iter().position(|w| *w == "FLOCK")?;
        let pid: u32 = f.get(at + 3)?.parse().ok()?;
        let dev_ino = f.get(at + 4)?;
        (dev_ino.rsplit(':').next()?.parse::<u64>().ok()? == ino).then_some(pid)
    })
}
