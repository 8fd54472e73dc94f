//! The seccomp allow-lists, as data. `policy/snapshots/<role>.txt` is the
//! reviewable rendering of these tables; a test fails when they drift apart.

/// A condition on one syscall argument. Everything not listed is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgRule {
    /// Any arguments.
    Any,
    /// `args[i] & PROT_EXEC == 0`: memory can never become executable.
    NoExec(u8),
    /// `args[i] & mask == 0`.
    MaskClear(u8, u64),
    /// `args[i] & mask == mask`.
    MaskSet(u8, u64),
    /// `args[i] == value`.
    Eq(u8, u64),
    /// `args[i]` is this process's own pid (a self-signal, e.g. abort).
    SelfPid(u8),
}

/// One allowed syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syscall {
    ident: &'static str,
    pub nr: i64,
    pub rule: ArgRule,
}

impl Syscall {
    /// The syscall's name, e.g. `read`.
    pub fn name(&self) -> &'static str {
        self.ident.trim_start_matches("SYS_")
    }
}

/// One syscall answered with an errno instead of running (and instead of a kill).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub call: Syscall,
    pub errno: i32,
    pub why: &'static str,
}

macro_rules! sc {
    ($sys:ident) => {
        Syscall { ident: stringify!($sys), nr: libc::$sys, rule: ArgRule::Any }
    };
    ($sys:ident, $rule:expr) => {
        Syscall { ident: stringify!($sys), nr: libc::$sys, rule: $rule }
    };
}

/// The clone flags a thread (never a new process) is created with; the storer
/// may create threads, and nothing else.
const CLONE_THREAD: u64 = libc::CLONE_THREAD as u64;

/// What every Rust role needs to run at all: memory, signals for its own
/// aborts, futexes, time and randomness; and what the kernel and the runtime
/// use on paths a role does not choose: `restart_syscall` resumes a sleeping
/// call interrupted by a stop (SIGSTOP/SIGCONT, a debugger or strace attach,
/// the cgroup freezer, system suspend); `pause` is where std parks a thread
/// that calls `exit` while another thread is already exiting.
const RUNTIME: &[Syscall] = &[
    sc!(SYS_restart_syscall),
    sc!(SYS_pause),
    sc!(SYS_brk),
    sc!(SYS_mmap, ArgRule::NoExec(2)),
    sc!(SYS_mprotect, ArgRule::NoExec(2)),
    sc!(SYS_munmap),
    sc!(SYS_mremap),
    sc!(SYS_madvise),
    sc!(SYS_futex),
    sc!(SYS_getrandom),
    sc!(SYS_clock_gettime),
    sc!(SYS_rt_sigreturn),
    sc!(SYS_rt_sigprocmask),
    sc!(SYS_sigaltstack),
    sc!(SYS_sched_yield),
    sc!(SYS_getpid),
    sc!(SYS_gettid),
    sc!(SYS_tgkill, ArgRule::SelfPid(0)),
    sc!(SYS_close),
    sc!(SYS_exit),
    sc!(SYS_exit_group),
];

/// Starting threads (never processes) and naming them: the storer and shim
/// need worker threads; std tries `clone3` first (refused with ENOSYS below).
const THREADS: &[Syscall] = &[
    sc!(SYS_clone, ArgRule::MaskSet(0, CLONE_THREAD)),
    sc!(SYS_clone3),
    sc!(SYS_set_robust_list),
    sc!(SYS_rseq),
    sc!(SYS_sched_getaffinity),
    sc!(SYS_prctl, ArgRule::Eq(0, libc::PR_SET_NAME as u64)),
    sc!(SYS_rt_sigaction),
];

/// The keyholder after lock-down: a blocking loop over one already-open
/// socketpair. It opens nothing, creates nothing, executes nothing.
const KEYHOLDER: &[Syscall] = &[
    sc!(SYS_read),
    sc!(SYS_write),
    sc!(SYS_recvfrom),
    sc!(SYS_sendto),
    sc!(SYS_munlock),
    // Reaping its one child, the storer, to log how it ended.
    sc!(SYS_wait4),
    // std checks a descriptor is open before closing it (debug builds).
    sc!(SYS_fcntl, ArgRule::Eq(1, libc::F_GETFD as u64)),
];

/// The storer after lock-down: SQLite files beneath `store/` (Landlock decides
/// which paths), accepting on its already-bound UNIX socket, threads.
const STORER: &[Syscall] = &[
    sc!(SYS_read),
    sc!(SYS_write),
    sc!(SYS_pread64),
    sc!(SYS_pwrite64),
    sc!(SYS_writev),
    sc!(SYS_lseek),
    sc!(SYS_openat),
    sc!(SYS_fstat),
    sc!(SYS_newfstatat),
    sc!(SYS_statx),
    // Free space on the store's disk, before writing the index snapshot.
    sc!(SYS_fstatfs),
    sc!(SYS_fcntl),
    sc!(SYS_flock),
    sc!(SYS_fsync),
    sc!(SYS_fdatasync),
    sc!(SYS_ftruncate),
    sc!(SYS_unlink),
    sc!(SYS_unlinkat),
    sc!(SYS_getcwd),
    sc!(SYS_readlink),
    sc!(SYS_access),
    sc!(SYS_faccessat2),
    sc!(SYS_accept4),
    sc!(SYS_recvfrom),
    sc!(SYS_sendto),
    sc!(SYS_recvmsg),
    sc!(SYS_sendmsg),
    sc!(SYS_getsockopt),
    sc!(SYS_shutdown),
    sc!(SYS_poll),
    sc!(SYS_ppoll),
    sc!(SYS_clock_nanosleep),
    sc!(SYS_nanosleep),
    sc!(SYS_getuid),
    sc!(SYS_geteuid),
    sc!(SYS_getppid),
    sc!(SYS_fchown),
    sc!(SYS_dup2),
    sc!(SYS_getdents64),
    sc!(SYS_dup3),
];

/// The MCP shim: stdio, connections to the storer that its connector makes
/// and passes over (`recvmsg` with SCM_RIGHTS): no `socket`, no `connect`, so
/// it can reach no socket on the machine by itself. A small async runtime
/// with worker threads. Landlock denies every file, so `openat` can only fail
/// with EACCES.
const SHIM: &[Syscall] = &[
    sc!(SYS_read),
    sc!(SYS_write),
    sc!(SYS_readv),
    sc!(SYS_writev),
    sc!(SYS_recvfrom),
    sc!(SYS_sendto),
    sc!(SYS_recvmsg),
    sc!(SYS_sendmsg),
    // The runtime's signal driver makes an unnamed pair; a pair reaches nothing.
    sc!(SYS_socketpair, ArgRule::Eq(0, libc::AF_UNIX as u64)),
    sc!(SYS_getsockopt),
    sc!(SYS_setsockopt),
    sc!(SYS_shutdown),
    sc!(SYS_openat),
    sc!(SYS_fstat),
    sc!(SYS_newfstatat),
    sc!(SYS_statx),
    sc!(SYS_fcntl),
    sc!(SYS_ioctl, ArgRule::Eq(1, libc::FIONBIO)),
    sc!(SYS_lseek),
    sc!(SYS_epoll_create1),
    sc!(SYS_epoll_ctl),
    sc!(SYS_epoll_wait),
    sc!(SYS_epoll_pwait),
    sc!(SYS_epoll_pwait2),
    sc!(SYS_eventfd2),
    sc!(SYS_pipe2),
    sc!(SYS_poll),
    sc!(SYS_ppoll),
    sc!(SYS_clock_nanosleep),
    sc!(SYS_nanosleep),
    sc!(SYS_getuid),
];

/// The connector: a blocking loop over its socketpair with the shim. Per
/// request it makes one AF_UNIX socket, connects it to the storer's path and
/// passes it over with SCM_RIGHTS. No threads, no files, no exec.
const CONNECTOR: &[Syscall] = &[
    sc!(SYS_read),
    sc!(SYS_write),
    sc!(SYS_recvfrom),
    sc!(SYS_sendto),
    sc!(SYS_sendmsg),
    sc!(SYS_socket, ArgRule::Eq(0, libc::AF_UNIX as u64)),
    sc!(SYS_connect),
    sc!(SYS_setsockopt),
    sc!(SYS_fcntl),
];

/// The keyholder's full allow-list: runtime plus its own calls.
pub fn keyholder() -> Vec<Syscall> {
    RUNTIME.iter().chain(KEYHOLDER).copied().collect()
}

pub fn storer() -> Vec<Syscall> {
    RUNTIME.iter().chain(THREADS).chain(STORER).copied().collect()
}

pub fn shim() -> Vec<Syscall> {
    RUNTIME.iter().chain(THREADS).chain(SHIM).copied().collect()
}

pub fn connector() -> Vec<Syscall> {
    RUNTIME.iter().chain(CONNECTOR).copied().collect()
}

/// The shim starts threads like the storer.
pub fn shim_refusals() -> Vec<Refusal> {
    vec![Refusal {
        call: sc!(SYS_clone3),
        errno: libc::ENOSYS,
        why: "clone3 passes its flags in memory seccomp cannot inspect; std falls back to clone",
    }]
}

/// Calls refused with an errno rather than a kill, so the runtime can fall
/// back: std tries `clone3` for threads and uses `clone` on ENOSYS.
pub fn storer_refusals() -> Vec<Refusal> {
    vec![
        Refusal {
            call: sc!(SYS_clone3),
            errno: libc::ENOSYS,
            why: "clone3 passes its flags in memory seccomp cannot inspect; std falls back to clone",
        },
        Refusal {
            call: sc!(SYS_fchown),
            errno: libc::EPERM,
            why: "SQLite running as root tries to chown its journal; it ignores the failure",
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_strip_the_sys_prefix() {
        assert_eq!(sc!(SYS_read).name(), "read");
    }

    #[test]
    fn no_list_allows_a_dangerous_call() {
        let forbidden = [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_keyctl,
            libc::SYS_bpf,
            libc::SYS_io_uring_setup,
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_bind,
            libc::SYS_listen,
        ];
        for list in [keyholder(), storer(), shim(), connector()] {
            for call in &list {
                assert!(!forbidden.contains(&call.nr), "{} must not be allowed", call.name());
                if call.nr == libc::SYS_socket {
                    assert_eq!(call.rule, ArgRule::Eq(0, libc::AF_UNIX as u64), "sockets other than AF_UNIX");
                }
            }
        }
        // Only the connector may make a connection; the shim, which parses
        // the host's input, cannot reach any socket by itself.
        for list in [keyholder(), storer(), shim()] {
            assert!(!list.iter().any(|c| [libc::SYS_socket, libc::SYS_connect].contains(&c.nr)));
        }
        for call in keyholder() {
            assert!(
                ![libc::SYS_openat, libc::SYS_clone, libc::SYS_clone3].contains(&call.nr),
                "the keyholder must not be allowed {}",
                call.name()
            );
        }
    }
}
