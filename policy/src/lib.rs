//! Sandbox descriptions for every iai-mcp role, and the one code path that
//! applies them.
//!
//! Each role (keyholder, storer, shim) has a declared [`Sandbox`]: which
//! filesystem paths it may use (Landlock) and which syscalls it may make
//! (seccomp, kill by default). [`apply`] is the only way a role locks itself
//! down, always in the same order: stray file descriptors closed, capabilities
//! dropped, `no_new_privs`, Landlock, then seccomp last (applied to every
//! thread). [`harden_process`] runs first thing in each role, before secrets
//! exist: non-dumpable and no core files.
//!
//! It trusts the kernel and nothing else. It fails closed: if the kernel cannot
//! enforce what a role needs, [`apply`] returns an error unless the user opted
//! into a degraded mode, and the degradation is reported so `status` and
//! `audit` can show it.
#![deny(unsafe_code)]

#[cfg(all(feature = "unsandboxed-bench", not(iai_bench_build)))]
compile_error!(
    "the unsandboxed-bench feature builds iai-mcp WITHOUT its sandbox; it is only for \
     scripts/bench-sandbox-cost.sh, which also sets RUSTFLAGS=--cfg iai_bench_build"
);

pub mod frame;
pub mod home_check;
pub mod layout;
pub mod log;
pub mod procs;
pub mod swap;
mod sys;
pub mod syscalls;
pub mod wipe;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::fd::RawFd;
use std::path::PathBuf;

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, ABI,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

pub use layout::{Home, LayoutError};
use syscalls::{ArgRule, Refusal, Syscall};

/// The Landlock ABI whose rights we require (Linux 6.12): filesystem, TCP, and
/// scoping of abstract UNIX sockets and signals.
pub const LANDLOCK_ABI: ABI = ABI::V6;

/// A process role of the multi-call binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Keyholder,
    Storer,
    Shim,
    /// The shim's only way out: it connects to the storer's socket, by the
    /// one path it was started with, and hands the shim the descriptor.
    Connector,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Keyholder => "keyholder",
            Role::Storer => "storer",
            Role::Shim => "shim",
            Role::Connector => "connector",
        }
    }
}

/// The filesystem a role keeps after lock-down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsView {
    /// No filesystem access at all: every handled right is denied everywhere.
    Nothing,
    /// Full read-write access beneath these directories, nothing elsewhere.
    ReadWriteBeneath(Vec<PathBuf>),
}

/// Everything a role is allowed after lock-down.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub role: Role,
    pub fs: FsView,
    pub allow: Vec<Syscall>,
    pub refuse: Vec<Refusal>,
}

impl Sandbox {
    /// The keyholder: no filesystem, no sockets, no exec, no threads.
    pub fn keyholder() -> Self {
        Sandbox { role: Role::Keyholder, fs: FsView::Nothing, allow: syscalls::keyholder(), refuse: Vec::new() }
    }

    /// The storer: `store/` and `run/` of its home, nothing else.
    pub fn storer(home: &Home) -> Self {
        Sandbox {
            role: Role::Storer,
            fs: FsView::ReadWriteBeneath(vec![home.store_dir(), home.run_dir()]),
            allow: syscalls::storer(),
            refuse: syscalls::storer_refusals(),
        }
    }

    /// The MCP shim: no filesystem, no socket of its own, no exec. It
    /// receives connections to the storer, already made, from its connector
    /// (Landlock ABI 6 does not govern connecting to a pathname socket, so a
    /// shim allowed `connect` could reach any socket on the machine).
    pub fn shim() -> Self {
        Sandbox { role: Role::Shim, fs: FsView::Nothing, allow: syscalls::shim(), refuse: syscalls::shim_refusals() }
    }

    /// The shim's connector: no filesystem, AF_UNIX sockets and `connect`
    /// (to the storer's socket, the one path it holds; it parses nothing but
    /// a one-byte request), `sendmsg` to pass the descriptor, no exec.
    pub fn connector() -> Self {
        Sandbox { role: Role::Connector, fs: FsView::Nothing, allow: syscalls::connector(), refuse: Vec::new() }
    }

    /// The declaration of `role` (the storer's paths derive from `home`).
    pub fn of(role: Role, home: &Home) -> Self {
        match role {
            Role::Keyholder => Sandbox::keyholder(),
            Role::Storer => Sandbox::storer(home),
            Role::Shim => Sandbox::shim(),
            Role::Connector => Sandbox::connector(),
        }
    }

    /// True when this sandbox lets the role create sockets of a family that
    /// can reach a network (anything but AF_UNIX).
    pub fn allows_network_sockets(&self) -> bool {
        self.allow.iter().any(|c| c.nr == libc::SYS_socket && c.rule != ArgRule::Eq(0, libc::AF_UNIX as u64))
    }

    /// A reviewable, stable text form of the declaration. Paths are shown
    /// relative to the home so the snapshot does not depend on the machine.
    pub fn render(&self, home: Option<&Home>) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "role: {}", self.role.name());
        let _ = writeln!(out, "landlock-abi: {}", LANDLOCK_ABI as i32);
        match &self.fs {
            FsView::Nothing => {
                let _ = writeln!(out, "filesystem: none");
            }
            FsView::ReadWriteBeneath(paths) => {
                for p in paths {
                    let shown = home
                        .and_then(|h| p.strip_prefix(h.root()).ok())
                        .map(|r| format!("$IAI_MCP_HOME/{}", r.display()))
                        .unwrap_or_else(|| p.display().to_string());
                    let _ = writeln!(out, "filesystem: read-write beneath {shown}");
                }
            }
        }
        let _ = writeln!(out, "network: none (all TCP bind/connect denied)");
        let _ = writeln!(out, "scope: abstract-unix-sockets signals");
        let _ = writeln!(out, "seccomp-default: kill-process");
        let mut allow: Vec<String> =
            self.allow.iter().map(|c| format!("allow {}{}", c.name(), render_rule(c.rule))).collect();
        allow.sort();
        for line in allow {
            let _ = writeln!(out, "{line}");
        }
        for r in &self.refuse {
            let _ = writeln!(out, "refuse {} errno={} # {}", r.call.name(), r.errno, r.why);
        }
        out
    }
}

fn render_rule(rule: ArgRule) -> String {
    match rule {
        ArgRule::Any => String::new(),
        ArgRule::NoExec(i) => format!(" if arg{i} & PROT_EXEC == 0"),
        ArgRule::MaskClear(i, m) => format!(" if arg{i} & {m:#x} == 0"),
        ArgRule::MaskSet(i, m) => format!(" if arg{i} & {m:#x} == {m:#x}"),
        ArgRule::Eq(i, v) => format!(" if arg{i} == {v}"),
        ArgRule::SelfPid(i) => format!(" if arg{i} == own pid"),
    }
}

/// What the running kernel offers, for `audit` and error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelFeatures {
    /// The Landlock ABI version, or why there is none.
    pub landlock: Result<i32, String>,
    /// Seccomp return actions the kernel supports (`/proc/sys/kernel/seccomp/actions_avail`).
    pub seccomp_actions: Vec<String>,
}

impl KernelFeatures {
    pub fn probe() -> KernelFeatures {
        let seccomp_actions = std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail")
            .map(|s| s.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        KernelFeatures { landlock: sys::landlock_abi(), seccomp_actions }
    }

    /// Everything the roles need: Landlock ABI 6 and seccomp's kill, errno and allow actions.
    pub fn sufficient(&self) -> bool {
        self.landlock.as_ref().is_ok_and(|v| *v >= LANDLOCK_ABI as i32)
            && ["kill_process", "errno", "allow"].iter().all(|a| self.seccomp_actions.iter().any(|s| s == a))
    }
}

/// Options the user controls.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Run even when the kernel cannot enforce the whole sandbox. Off unless the
    /// user asks for it; a degraded role is reported by `status` and `audit`.
    pub allow_degraded: bool,
}

/// What [`apply`] achieved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Protections that could not be enforced (only ever non-empty when
    /// [`Options::allow_degraded`] was set).
    pub degraded: Vec<String>,
}

/// Why a role could not be sandboxed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("could not make the process non-dumpable or disable core files: {0}")]
    Harden(nix::Error),
    #[error("could not close inherited file descriptors: {0}")]
    CloseFds(std::io::Error),
    #[error("could not drop capabilities: {0}")]
    Capabilities(String),
    #[error("could not set no_new_privs: {0}")]
    NoNewPrivs(nix::Error),
    #[error("the kernel cannot enforce the Landlock sandbox this role needs ({0}); use Linux 6.12 or later with Landlock enabled, or start with --allow-degraded-sandbox to run without it")]
    Landlock(String),
    #[error("the kernel cannot enforce the seccomp filter this role needs ({0}); start with --allow-degraded-sandbox to run without it")]
    Seccomp(String),
}

/// First thing in every role, before any secret exists: the process cannot be
/// dumped or ptraced by its user, and writes no core file.
pub fn harden_process() -> Result<(), PolicyError> {
    use nix::sys::resource::{setrlimit, Resource};
    nix::sys::prctl::set_dumpable(false).map_err(PolicyError::Harden)?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(PolicyError::Harden)?;
    Ok(())
}

/// Applies `sandbox` to the calling process. Call it before creating threads:
/// Landlock binds the calling thread (and threads created after), seccomp is
/// synchronised to all threads.
pub fn apply(sandbox: &Sandbox, keep_fds: &[RawFd], opts: Options) -> Result<Applied, PolicyError> {
    #[cfg(feature = "unsandboxed-bench")]
    {
        let _ = (sandbox, keep_fds, opts);
        harden_process()?;
        return Ok(Applied { degraded: vec!["UNSANDBOXED BENCHMARK BUILD: no Landlock, no seccomp".into()] });
    }
    #[allow(unreachable_code)]
    let mut applied = Applied::default();
    harden_process()?;
    close_stray_fds(keep_fds)?;
    drop_capabilities()?;
    nix::sys::prctl::set_no_new_privs().map_err(PolicyError::NoNewPrivs)?;
    if let Err(e) = apply_landlock(&sandbox.fs) {
        if !opts.allow_degraded {
            return Err(e);
        }
        applied.degraded.push(format!("landlock: {e}"));
    }
    if let Err(e) = apply_seccomp(sandbox) {
        if !opts.allow_degraded {
            return Err(e);
        }
        applied.degraded.push(format!("seccomp: {e}"));
    }
    Ok(applied)
}

/// Closes every descriptor above stderr that the role was not explicitly given.
pub fn close_stray_fds(keep: &[RawFd]) -> Result<(), PolicyError> {
    let mut open = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").map_err(PolicyError::CloseFds)? {
        let entry = entry.map_err(PolicyError::CloseFds)?;
        if let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse::<RawFd>().ok()) {
            open.push(fd);
        }
    }
    for fd in open {
        if fd > 2 && !keep.contains(&fd) {
            // The read_dir's own descriptor is listed too and already closed: EBADF is expected.
            match nix::unistd::close(fd) {
                Ok(()) | Err(nix::errno::Errno::EBADF) => {}
                Err(e) => return Err(PolicyError::CloseFds(e.into())),
            }
        }
    }
    Ok(())
}

/// Drops every capability from every set. The bounding set goes first, while
/// CAP_SETPCAP is still held.
pub fn drop_capabilities() -> Result<(), PolicyError> {
    use caps::CapSet;
    let err = |e: caps::errors::CapsError| PolicyError::Capabilities(e.to_string());
    let bounding = caps::read(None, CapSet::Bounding).map_err(err)?;
    if !bounding.is_empty() {
        let permitted = caps::read(None, CapSet::Permitted).map_err(err)?;
        if permitted.contains(&caps::Capability::CAP_SETPCAP) {
            for cap in bounding {
                caps::drop(None, CapSet::Bounding, cap).map_err(err)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(err)?;
    caps::clear(None, CapSet::Inheritable).map_err(err)?;
    caps::clear(None, CapSet::Effective).map_err(err)?;
    caps::clear(None, CapSet::Permitted).map_err(err)?;
    let left = caps::read(None, CapSet::Permitted).map_err(err)?;
    if !left.is_empty() {
        return Err(PolicyError::Capabilities(format!("{} capabilities remain permitted", left.len())));
    }
    Ok(())
}

/// Applies only the Landlock part of a sandbox (tests of that layer alone).
pub fn restrict_filesystem(fs: &FsView) -> Result<(), PolicyError> {
    apply_landlock(fs)
}

fn apply_landlock(fs: &FsView) -> Result<(), PolicyError> {
    let err = |e: landlock::RulesetError| PolicyError::Landlock(e.to_string());
    let abi = LANDLOCK_ABI;
    let mut created = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .handle_access(AccessNet::from_all(abi))
        .map_err(err)?
        .scope(Scope::from_all(abi))
        .map_err(err)?
        .create()
        .map_err(err)?;
    if let FsView::ReadWriteBeneath(paths) = fs {
        created = created.add_rules(path_beneath_rules(paths, AccessFs::from_all(abi))).map_err(err)?;
    }
    let status = created.restrict_self().map_err(err)?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(PolicyError::Landlock(format!("ruleset only {:?}", status.ruleset)));
    }
    Ok(())
}

fn target_arch() -> Result<TargetArch, PolicyError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| PolicyError::Seccomp(e.to_string()))
}

fn condition(rule: ArgRule) -> Result<Option<SeccompCondition>, seccompiler::BackendError> {
    use SeccompCmpArgLen::Qword;
    let c = match rule {
        ArgRule::Any => return Ok(None),
        ArgRule::NoExec(i) => SeccompCondition::new(i, Qword, SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64), 0)?,
        ArgRule::MaskClear(i, m) => SeccompCondition::new(i, Qword, SeccompCmpOp::MaskedEq(m), 0)?,
        ArgRule::MaskSet(i, m) => SeccompCondition::new(i, Qword, SeccompCmpOp::MaskedEq(m), m)?,
        ArgRule::Eq(i, v) => SeccompCondition::new(i, Qword, SeccompCmpOp::Eq, v)?,
        ArgRule::SelfPid(i) => SeccompCondition::new(i, Qword, SeccompCmpOp::Eq, std::process::id() as u64)?,
    };
    Ok(Some(c))
}

/// Compiles the allow-list (default: kill the process) and one errno filter per
/// refusal. The kernel runs every filter and the strictest answer wins, so a
/// refused call must also be on the allow-list to get its errno, not a kill.
pub fn compile(sandbox: &Sandbox) -> Result<Vec<BpfProgram>, PolicyError> {
    let err = |e: seccompiler::BackendError| PolicyError::Seccomp(e.to_string());
    let arch = target_arch()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut unconditional = Vec::new();
    for call in &sandbox.allow {
        match condition(call.rule).map_err(err)? {
            None => unconditional.push(call.nr),
            Some(c) => rules.entry(call.nr).or_default().push(SeccompRule::new(vec![c]).map_err(err)?),
        }
    }
    for nr in unconditional {
        rules.insert(nr, Vec::new());
    }
    let allow = SeccompFilter::new(rules, SeccompAction::KillProcess, SeccompAction::Allow, arch).map_err(err)?;
    let mut programs = vec![BpfProgram::try_from(allow).map_err(err)?];
    for r in &sandbox.refuse {
        let refuse = SeccompFilter::new(
            BTreeMap::from([(r.call.nr, Vec::new())]),
            SeccompAction::Allow,
            SeccompAction::Errno(r.errno as u32),
            arch,
        )
        .map_err(err)?;
        programs.push(BpfProgram::try_from(refuse).map_err(err)?);
    }
    Ok(programs)
}

fn apply_seccomp(sandbox: &Sandbox) -> Result<(), PolicyError> {
    // Installing a filter calls prctl(PR_SET_NO_NEW_PRIVS) first, which the
    // allow-list does not permit: the errno filters go in before it.
    let mut programs = compile(sandbox)?;
    programs.rotate_left(1);
    for program in programs {
        seccompiler::apply_filter_all_threads(&program).map_err(|e| PolicyError::Seccomp(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_compile() {
        let home = Home::new("/tmp/h".into()).expect("valid home");
        for sb in [Sandbox::keyholder(), Sandbox::storer(&home), Sandbox::shim(), Sandbox::connector()] {
            let progs = compile(&sb).expect("compiles");
            assert_eq!(progs.len(), 1 + sb.refuse.len());
            assert!(!sb.allows_network_sockets(), "{:?} may open network sockets", sb.role);
        }
    }

    /// The checked-in snapshots are what a reviewer reads; they must be what is applied.
    #[test]
    fn snapshots_match_the_declarations() {
        let home = Home::new("/h".into()).expect("valid home");
        for (sb, file) in [
            (Sandbox::keyholder(), "keyholder.txt"),
            (Sandbox::storer(&home), "storer.txt"),
            (Sandbox::shim(), "shim.txt"),
            (Sandbox::connector(), "connector.txt"),
        ] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshots").join(file);
            let rendered = sb.render(Some(&home));
            if std::env::var_os("IAI_MCP_BLESS").is_some() {
                std::fs::write(&path, &rendered).expect("write snapshot");
            }
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert_eq!(on_disk, rendered, "{file} is out of date; review the change and rerun with IAI_MCP_BLESS=1");
        }
    }
}
