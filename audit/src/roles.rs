//! Checks of the running roles, read from `/proc` and compared with the
//! sandbox each role declares in `iai_policy`.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;

use iai_policy::{Home, Role, Sandbox};
use iai_storer::client::{Client, ClientError};

use crate::Check;

/// What `/proc` tells about one process.
#[derive(Clone, Debug, Default)]
pub struct RoleFacts {
    pub uid: u32,
    pub no_new_privs: Option<bool>,
    pub seccomp: Option<u8>,
    /// CapInh, CapPrm, CapEff, CapAmb.
    pub caps: Vec<(String, u64)>,
    /// Owner of `/proc/PID/fd`: root for a non-dumpable process.
    pub proc_owner: u32,
    pub core_limit: Option<(String, String)>,
    /// Socket inodes among its descriptors; None when they cannot be read.
    pub socket_inodes: Option<Vec<u64>>,
    /// Its environment; None when it cannot be read.
    pub environ: Option<Vec<u8>>,
}

fn read_facts(pid: u32) -> Option<RoleFacts> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
    let uid = field("Uid:")?.split_whitespace().next()?.parse().ok()?;
    let caps = ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"]
        .iter()
        .filter_map(|k| {
            field(k).and_then(|v| u64::from_str_radix(v, 16).ok()).map(|v| (k.trim_end_matches(':').to_string(), v))
        })
        .collect();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let core_limit = limits.lines().find(|l| l.starts_with("Max core file size")).and_then(|l| {
        let mut w = l.split_whitespace().skip(4);
        Some((w.next()?.to_string(), w.next()?.to_string()))
    });
    let socket_inodes = std::fs::read_dir(format!("/proc/{pid}/fd")).ok().map(|rd| {
        rd.flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter_map(|t| t.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
            .collect()
    });
    Some(RoleFacts {
        uid,
        no_new_privs: field("NoNewPrivs:").map(|v| v == "1"),
        seccomp: field("Seccomp:").and_then(|v| v.parse().ok()),
        caps,
        proc_owner: std::fs::metadata(format!("/proc/{pid}/fd")).map(|m| m.uid()).unwrap_or(u32::MAX),
        core_limit,
        socket_inodes,
        environ: std::fs::read(format!("/proc/{pid}/environ")).ok(),
    })
}

/// Inodes of every TCP, UDP and raw socket in this network namespace.
fn network_inodes() -> HashSet<u64> {
    let mut out = HashSet::new();
    for f in ["tcp", "tcp6", "udp", "udp6", "udplite", "udplite6", "raw", "raw6"] {
        let Ok(s) = std::fs::read_to_string(format!("/proc/net/{f}")) else { continue };
        for line in s.lines().skip(1) {
            if let Some(inode) = line.split_whitespace().nth(9).and_then(|v| v.parse().ok()) {
                out.insert(inode);
            }
        }
    }
    out
}

/// Pure: one role's process against its declared sandbox.
pub fn role_checks(name: &str, pid: u32, f: &RoleFacts, sandbox: &Sandbox, net: &HashSet<u64>) -> Vec<Check> {
    let id = |k: &str| format!("role.{name}.{k}");
    let restart = "run `iai-mcp lock` then `iai-mcp unlock` (an older or modified binary may be running)";
    let mut out = Vec::new();
    out.push(match f.no_new_privs {
        Some(true) => Check::pass(id("no_new_privs"), format!("pid {pid}: NoNewPrivs 1")),
        _ => Check::fail(id("no_new_privs"), format!("pid {pid}: NoNewPrivs is not set"), restart),
    });
    out.push(match f.seccomp {
        Some(2) => Check::pass(id("seccomp"), format!("pid {pid}: seccomp filter mode (2)")),
        other => Check::fail(id("seccomp"), format!("pid {pid}: seccomp mode {other:?}, expected 2 (filter)"), restart),
    });
    let held: Vec<String> = f.caps.iter().filter(|(_, v)| *v != 0).map(|(k, v)| format!("{k} {v:016x}")).collect();
    out.push(if held.is_empty() && f.caps.len() == 4 {
        Check::pass(id("capabilities"), format!("pid {pid}: no capabilities"))
    } else {
        Check::fail(id("capabilities"), format!("pid {pid}: holds capabilities ({})", held.join(", ")), restart)
    });
    out.push(if f.uid == 0 {
        Check::warn(
            id("dumpable"),
            format!(
                "pid {pid} runs as root, so /proc cannot show whether it is dumpable (roles set PR_SET_DUMPABLE 0)"
            ),
            "run iai-mcp as an ordinary user, not root",
        )
    } else if f.proc_owner == 0 {
        Check::pass(id("dumpable"), format!("pid {pid}: not dumpable (its /proc entries belong to root)"))
    } else {
        Check::fail(id("dumpable"), format!("pid {pid}: dumpable; your other processes could read its memory"), restart)
    });
    out.push(match &f.core_limit {
        Some((soft, hard)) if soft == "0" && hard == "0" => {
            Check::pass(id("core_limit"), format!("pid {pid}: core files disabled"))
        }
        other => Check::fail(id("core_limit"), format!("pid {pid}: core file limit {other:?}, expected 0"), restart),
    });
    out.push(match &f.socket_inodes {
        Some(socks) => match socks.iter().filter(|i| net.contains(i)).count() {
            0 => Check::pass(id("network"), format!("pid {pid}: no TCP/UDP/raw socket among its descriptors")),
            n => Check::fail(
                id("network"),
                format!("pid {pid}: {n} network socket(s) open"),
                "stop it now (`iai-mcp lock`) and report this as a security bug",
            ),
        },
        None if f.seccomp == Some(2) && !sandbox.allows_network_sockets() => Check::pass(
            id("network"),
            format!("pid {pid}: no network socket can exist (seccomp allows AF_UNIX sockets only; descriptors are private to the non-dumpable process)"),
        ),
        None => Check::warn(
            id("network"),
            format!("pid {pid}: cannot list its descriptors"),
            "run `iai-mcp audit` as root to inspect them",
        ),
    });
    out.push(match &f.environ {
        Some(env) if env.split(|&b| b == 0).any(|v| v.starts_with(b"IAI_MCP_PASSPHRASE=")) => Check::warn(
            id("environment"),
            format!("pid {pid}: IAI_MCP_PASSPHRASE is in its environment"),
            "restart it from a shell without IAI_MCP_PASSPHRASE set",
        ),
        Some(env) if env.iter().all(|&b| b == 0) => {
            Check::pass(id("environment"), format!("pid {pid}: its environment is empty"))
        }
        Some(_) => Check::pass(id("environment"), format!("pid {pid}: no passphrase in its environment")),
        // Not seen, so not passed: the roles clear their environment, but
        // this audit could not read it to check.
        None => Check::warn(
            id("environment"),
            format!("pid {pid}: its environment cannot be read (the process is not dumpable)"),
            "run `iai-mcp audit` as root to check it",
        ),
    });
    out.push(if f.uid == 0 {
        Check::warn(id("user"), format!("pid {pid} runs as root"), "run iai-mcp as an ordinary user, not root")
    } else {
        Check::pass(id("user"), format!("pid {pid} runs as uid {}", f.uid))
    });
    out
}

/// Whether the storer's plaintext can reach a disk through unencrypted swap:
/// from `/proc/swaps` and the storer's own `VmLck` against its `VmRSS`.
fn swap_check(storer: u32) -> Check {
    let unencrypted = iai_policy::swap::unencrypted();
    let (locked, rss) =
        (iai_policy::procs::status_kib(storer, "VmLck:"), iai_policy::procs::status_kib(storer, "VmRSS:"));
    let all_locked = rss > 0 && locked * 10 >= rss * 9;
    if unencrypted.is_empty() {
        Check::pass(
            "memory.swap",
            "no unencrypted swap is on: memories held in RAM cannot be swapped to a disk in the clear",
        )
    } else if all_locked {
        Check::pass("memory.swap", format!("the storer's memory is locked in RAM ({locked} kB); swap cannot take it"))
    } else {
        Check::warn(
            "memory.swap",
            format!(
                "unencrypted swap is on ({}) and the storer's memory is not locked ({locked} of {rss} kB): memories it \
                 holds while unlocked may be written to that disk",
                unencrypted.join(", ")
            ),
            "encrypt swap (or use zram), or raise the memlock limit to unlimited for iai-mcp (`ulimit -l unlimited`) and unlock again",
        )
    }
}

/// What the storer found changed in the files (it checks every sealed value
/// against the audit trail at unlock, and duplicates and events as it serves).
fn integrity(s: &iai_storer::proto::Stats) -> Check {
    if s.integrity_problems == 0 {
        return Check::pass(
            "store.integrity",
            format!(
                "every memory, record state and event of the audit trail was verified at unlock ({} memories, {} events)",
                s.records, s.events
            ),
        );
    }
    let more = s.integrity_problems.saturating_sub(s.integrity.len() as u64);
    Check::fail(
        "store.integrity",
        format!(
            "the store's files were changed outside iai-mcp ({} problems; {} memories left out): {}{}",
            s.integrity_problems,
            s.unreadable,
            s.integrity.join("; "),
            if more > 0 { format!("; and {more} more (see run/daemon.log)") } else { String::new() }
        ),
        "find out what wrote to the store (it needs no passphrase to delete or put back rows); restore the store from a \
         backup you trust, or `iai-mcp forget` the memories named",
    )
}

/// The running roles of this home, taken from the kernel (the pid file's
/// lock, `/proc/PID/cmdline` and `PPid`), never from the storer's own report;
/// the storer's report is compared with them.
pub fn check(home: &Home) -> Vec<Check> {
    let mut out = Vec::new();
    let net = network_inodes();
    let running = iai_policy::procs::running(home);
    let stats = match Client::connect(home).and_then(|mut c| {
        c.set_timeout(std::time::Duration::from_secs(5))?;
        c.stats()
    }) {
        Ok(s) => Some(s),
        Err(ClientError::Locked) => None,
        Err(e) => {
            out.push(Check::warn("daemon.state", format!("the daemon does not answer: {e}"), "run `iai-mcp status`"));
            None
        }
    };
    match running {
        None => {
            out.push(Check::pass("daemon.state", "locked: no process holds the key (no storer holds the home's lock)"))
        }
        Some(r) => {
            let kh = r.keyholder;
            out.push(Check::pass(
                "daemon.state",
                format!(
                    "unlocked: storer pid {}{} (from the kernel: the pid file's lock and /proc)",
                    r.storer,
                    kh.map(|k| format!(", keyholder pid {k}")).unwrap_or_default()
                ),
            ));
            if let Some(s) = &stats {
                out.push(integrity(s));
                if s.storer_pid != r.storer || Some(s.keyholder_pid) != kh {
                    out.push(Check::fail(
                        "daemon.identity",
                        format!(
                            "the process answering on the socket says it is storer {} with keyholder {}, but the kernel \
                             shows storer {}{}",
                            s.storer_pid,
                            s.keyholder_pid,
                            r.storer,
                            kh.map(|k| format!(" with keyholder {k}")).unwrap_or_default()
                        ),
                        "`iai-mcp lock`, then `iai-mcp unlock`; find out what else listens on the socket",
                    ));
                }
            }
            // Degraded mode as the kernel knows it: the flag the roles were started with.
            let pids: Vec<u32> = std::iter::once(r.storer).chain(kh).collect();
            let degraded: Vec<u32> = pids
                .iter()
                .copied()
                .filter(|&p| iai_policy::procs::cmdline(p).iter().any(|a| a == "--allow-degraded-sandbox"))
                .collect();
            let reported = stats.as_ref().map(|s| s.degraded.clone()).unwrap_or_default();
            out.push(if degraded.is_empty() && reported.is_empty() {
                Check::pass("daemon.degraded", "keyholder and storer were started with their full sandbox")
            } else {
                Check::fail(
                    "daemon.degraded",
                    format!("started with --allow-degraded-sandbox (pids {degraded:?}): {}", reported.join("; ")),
                    "`iai-mcp lock`, then `iai-mcp unlock` without --allow-degraded-sandbox on a kernel with Landlock ABI 6",
                )
            });
            out.push(swap_check(r.storer));
            let roles = [(Role::Storer, Some(r.storer)), (Role::Keyholder, kh)];
            for (role, pid) in roles {
                match pid.and_then(|p| read_facts(p).map(|f| (p, f))) {
                    Some((p, f)) => out.extend(role_checks(role.name(), p, &f, &Sandbox::of(role, home), &net)),
                    None => out.push(Check::fail(
                        format!("role.{}.running", role.name()),
                        format!("the {} of this home is not running", role.name()),
                        "run `iai-mcp status`; `iai-mcp lock` and unlock again if needed",
                    )),
                }
            }
        }
    }
    // The MCP servers and their connectors serving this home (not another's).
    for (role, arg) in [(Role::Shim, "__shim"), (Role::Connector, "__connector")] {
        for pid in iai_policy::procs::role_pids(arg, home.root()) {
            if let Some(f) = read_facts(pid) {
                out.extend(role_checks(role.name(), pid, &f, &Sandbox::of(role, home), &net));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hardened() -> RoleFacts {
        RoleFacts {
            uid: 1000,
            no_new_privs: Some(true),
            seccomp: Some(2),
            caps: ["CapInh", "CapPrm", "CapEff", "CapAmb"].iter().map(|k| (k.to_string(), 0)).collect(),
            proc_owner: 0,
            core_limit: Some(("0".into(), "0".into())),
            socket_inodes: None,
            environ: Some(Vec::new()),
        }
    }

    fn statuses(f: &RoleFacts) -> Vec<(String, crate::Status)> {
        let net = HashSet::from([42]);
        role_checks("keyholder", 7, f, &Sandbox::keyholder(), &net).into_iter().map(|c| (c.id, c.status)).collect()
    }

    #[test]
    fn a_hardened_role_passes_everything() {
        assert!(statuses(&hardened()).iter().all(|(_, s)| *s == crate::Status::Pass), "{:?}", statuses(&hardened()));
    }

    /// Issue 10.3: what the audit could not see is not passed.
    #[test]
    fn an_environment_that_cannot_be_read_is_not_passed() {
        let mut f = hardened();
        f.environ = None;
        assert!(statuses(&f).iter().any(|(i, s)| i == "role.keyholder.environment" && *s == crate::Status::Warn));
    }

    #[test]
    fn each_weakness_is_caught() {
        type Weaken = fn(&mut RoleFacts);
        let cases: Vec<(&str, Weaken)> = vec![
            ("role.keyholder.no_new_privs", |f| f.no_new_privs = Some(false)),
            ("role.keyholder.seccomp", |f| f.seccomp = Some(0)),
            ("role.keyholder.capabilities", |f| f.caps[2].1 = 1 << 21),
            ("role.keyholder.dumpable", |f| f.proc_owner = 1000),
            ("role.keyholder.core_limit", |f| f.core_limit = Some(("unlimited".into(), "unlimited".into()))),
            ("role.keyholder.network", |f| f.socket_inodes = Some(vec![41, 42])),
        ];
        for (id, mutate) in cases {
            let mut f = hardened();
            mutate(&mut f);
            let s = statuses(&f);
            assert!(s.iter().any(|(i, st)| i == id && *st == crate::Status::Fail), "{id} not caught: {s:?}");
        }
        let mut f = hardened();
        f.environ = Some(b"A=1\0IAI_MCP_PASSPHRASE=x\0".to_vec());
        assert!(statuses(&f).iter().any(|(i, s)| i == "role.keyholder.environment" && *s == crate::Status::Warn));
    }
}
