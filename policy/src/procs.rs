//! The roles running for a home, as the kernel reports them: the pid-file
//! lock the storer holds, `/proc/PID/cmdline` and `/proc/PID/status`. Used
//! when the storer cannot answer for itself (hung, busy, stopping), so that
//! `lock` can still stop it and `status` can still say what is going on.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::Home;

/// This home's daemon pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Running {
    pub storer: u32,
    /// None once the keyholder has exited (or is not ours).
    pub keyholder: Option<u32>,
}

/// The storer holding this home's pid-file lock, and its keyholder.
pub fn running(home: &Home) -> Option<Running> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(home.pid_file())
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    // Nobody holds the lock: no storer runs, whatever the file says.
    let mut file = match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
        Ok(_unlocked_on_drop) => return None,
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => file,
        Err(_) => return None,
    };
    let mut text = String::new();
    (&mut file).take(64).read_to_string(&mut text).ok()?;
    let storer: u32 = text.trim().parse().ok()?;
    if !is_role(storer, "__storer", home.root()) {
        return None;
    }
    let keyholder = parent(storer).filter(|&p| is_role(p, "__keyholder", home.root()));
    Some(Running { storer, keyholder })
}

/// Processes of this uid running `role` (`__shim`, `__connector`) for the
/// home at `root`, by their command line.
pub fn role_pids(role: &str, root: &Path) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out: Vec<u32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|&pid| is_role(pid, role, root))
        .collect();
    out.sort_unstable();
    out
}

/// The arguments `pid` was started with, as the kernel keeps them.
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
        })
        .unwrap_or_default()
}

/// True if `pid` is alive, runs as the owner of the home at `root`, and runs
/// `role` for that home.
pub fn is_role(pid: u32, role: &str, root: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(owner) = std::fs::metadata(root).map(|m| m.uid()) else { return false };
    if !alive(pid) || uid(pid) != Some(owner) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let home = args.iter().position(|a| *a == b"--home").and_then(|i| args.get(i + 1));
    args.get(1) == Some(&role.as_bytes()) && home.is_some_and(|h| Path::new(std::ffi::OsStr::from_bytes(h)) == root)
}

/// A field of `/proc/PID/status`, trimmed (e.g. `VmLck:` → `"1234 kB"`).
pub fn status_field(pid: u32, key: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_string())
}

/// A `kB` field of `/proc/PID/status` (`VmRSS:`, `VmLck:`), 0 when absent.
pub fn status_kib(pid: u32, key: &str) -> u64 {
    status_field(pid, key).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

fn uid(pid: u32) -> Option<u32> {
    status_field(pid, "Uid:")?.split_whitespace().next()?.parse().ok()
}

fn parent(pid: u32) -> Option<u32> {
    status_field(pid, "PPid:")?.parse().ok()
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}
