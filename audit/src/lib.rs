//! `iai-mcp audit`: checks that a user's setup is what the design promises.
//!
//! It inspects the files of the home, the running roles (from `/proc`), and
//! the kernel, and reports one line per check: PASS, WARN or FAIL, with a
//! one-line fix for anything that is not a PASS. The role checks reuse the
//! declarations in `iai_policy`, so what is checked is what is enforced.
//!
//! It trusts `/proc` and the filesystem; it reads no secret and never unseals
//! anything. The checks are pure functions over gathered facts, so they are
//! tested without root.
#![forbid(unsafe_code)]

mod files;
mod roles;

use serde::Serialize;

use iai_policy::Home;

/// Version of the `--json` format.
pub const JSON_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One finding. `id` is stable across releases (documented in SECURITY.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub id: String,
    pub status: Status,
    pub detail: String,
    /// What to do, for anything that is not a PASS.
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(id: impl Into<String>, detail: impl Into<String>) -> Check {
        Check { id: id.into(), status: Status::Pass, detail: detail.into(), fix: None }
    }
    pub fn warn(id: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { id: id.into(), status: Status::Warn, detail: detail.into(), fix: Some(fix.into()) }
    }
    pub fn fail(id: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { id: id.into(), status: Status::Fail, detail: detail.into(), fix: Some(fix.into()) }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub version: u32,
    pub home: String,
    pub checks: Vec<Check>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub pass: usize,
    pub warn: usize,
    pub fail: usize,
}

impl Report {
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for c in &self.checks {
            match c.status {
                Status::Pass => s.pass += 1,
                Status::Warn => s.warn += 1,
                Status::Fail => s.fail += 1,
            }
        }
        s
    }

    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// One line per check, a fix line under each non-PASS.
    pub fn to_text(&self) -> String {
        let width = self.checks.iter().map(|c| c.id.len()).max().unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!("{}  {:<width$}  {}\n", c.status.label(), c.id, c.detail));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("      fix: {fix}\n"));
            }
        }
        let s = self.summary();
        out.push_str(&format!("\n{} passed, {} warnings, {} failed\n", s.pass, s.warn, s.fail));
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "version": self.version,
            "home": self.home,
            "checks": self.checks,
            "summary": self.summary(),
        })
    }
}

/// The audit could not run at all (exit status 2).
#[derive(Debug)]
pub struct AuditError(pub String);

impl std::fmt::Display for AuditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AuditError {}

/// Runs every check. `caller_env_has_passphrase`: whether the process that
/// asked for the audit has `IAI_MCP_PASSPHRASE` set.
pub fn run(home: &Home, caller_env_has_passphrase: bool) -> Result<Report, AuditError> {
    if std::fs::metadata("/proc/self/status").is_err() {
        return Err(AuditError("/proc is not available; the audit needs it to inspect processes".into()));
    }
    let uid = nix::unistd::getuid().as_raw();
    let mut checks = Vec::new();
    checks.extend(files::check(home, uid));
    checks.push(if caller_env_has_passphrase {
        Check::warn(
            "env.passphrase",
            "IAI_MCP_PASSPHRASE is set in this shell; other processes of your user can read it",
            "unset IAI_MCP_PASSPHRASE, and pass the passphrase with --passphrase-fd or the prompt",
        )
    } else {
        Check::pass("env.passphrase", "IAI_MCP_PASSPHRASE is not set in this shell")
    });
    checks.extend(kernel_checks(&iai_policy::KernelFeatures::probe()));
    checks.extend(roles::check(home));
    checks.push(binary_check(uid));
    Ok(Report { version: JSON_VERSION, home: home.root().display().to_string(), checks })
}

/// Pure: what the kernel offers against what the roles need.
pub fn kernel_checks(k: &iai_policy::KernelFeatures) -> Vec<Check> {
    let need = iai_policy::LANDLOCK_ABI as i32;
    let landlock = match &k.landlock {
        Ok(v) if *v >= need => Check::pass("kernel.landlock", format!("Landlock ABI {v} (roles need {need})")),
        Ok(v) => Check::fail(
            "kernel.landlock",
            format!("Landlock ABI {v}, roles need {need}: they refuse to start without --allow-degraded-sandbox"),
            "use Linux 6.12 or later",
        ),
        Err(why) => Check::fail(
            "kernel.landlock",
            format!("{why}: roles refuse to start without --allow-degraded-sandbox"),
            "enable Landlock (CONFIG_SECURITY_LANDLOCK and lsm=…,landlock) or use a kernel that has it",
        ),
    };
    let needed = ["kill_process", "errno", "allow"];
    let missing: Vec<&str> = needed.iter().copied().filter(|a| !k.seccomp_actions.iter().any(|s| s == a)).collect();
    let seccomp = if missing.is_empty() {
        Check::pass("kernel.seccomp", format!("seccomp actions: {}", k.seccomp_actions.join(" ")))
    } else {
        Check::fail(
            "kernel.seccomp",
            format!("seccomp lacks {}", missing.join(", ")),
            "use a kernel with seccomp filters (CONFIG_SECCOMP_FILTER)",
        )
    };
    vec![landlock, seccomp]
}

/// The binary every role runs must not be writable by other users.
fn binary_check(uid: u32) -> Check {
    use std::os::unix::fs::MetadataExt;
    let Ok(path) = std::fs::read_link("/proc/self/exe") else {
        return Check::warn("binary.writable", "cannot find this binary", "check the installed iai-mcp by hand");
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.mode() & 0o022 != 0 => Check::fail(
            "binary.writable",
            format!("{} is writable by group or others (mode {:04o})", path.display(), m.mode() & 0o7777),
            format!("chmod go-w {}", path.display()),
        ),
        Ok(m) if m.uid() != 0 && m.uid() != uid => Check::fail(
            "binary.writable",
            format!("{} is owned by uid {}, who can replace it", path.display(), m.uid()),
            format!("reinstall iai-mcp so that you or root own {}", path.display()),
        ),
        Ok(_) => Check::pass("binary.writable", format!("{} is writable only by its owner", path.display())),
        Err(e) => {
            Check::warn("binary.writable", format!("cannot inspect {}: {e}", path.display()), "reinstall iai-mcp")
        }
    }
}
