//! `iai-mcp audit`: a clean setup passes, and each planted misconfiguration
//! is found with the right severity and fix. Also: fail closed when the kernel
//! cannot enforce the sandbox, and a degraded start is visible.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use serde_json::Value;

use crate::support::{assert_ok, stderr, stdout, TestHome, BIN, PASS};

const NOBODY: u32 = 65534;

fn audit(h: &TestHome) -> (Option<i32>, Value) {
    let out = h.run(&["audit", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("audit json: {e}: {}", stderr(&out)));
    (out.status.code(), v)
}

fn find<'a>(report: &'a Value, id: &str, status: &str) -> Option<&'a Value> {
    report["checks"].as_array()?.iter().find(|c| c["id"] == id && c["status"] == status)
}

/// Asserts one check with `status`, whose fix mentions `fix`.
fn expect(report: &Value, id: &str, status: &str, fix: &str) {
    let c = find(report, id, status).unwrap_or_else(|| panic!("no {status} {id} in {report:#}"));
    assert!(c["fix"].as_str().unwrap_or_default().contains(fix), "{id}: fix {:?} lacks {fix:?}", c["fix"]);
}

fn nobody_home() -> TestHome {
    let h = TestHome::new_as(NOBODY);
    h.init();
    h
}

fn chmod(p: &std::path::Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn a_clean_setup_passes_every_check_with_stable_json() {
    let h = nobody_home();
    h.unlock();
    let (code, r) = audit(&h);
    // As the user, a role's environment cannot be read (non-dumpable): the
    // audit says so and does not claim what it did not see (issue 10.3).
    let bad: Vec<&Value> = r["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["status"] != "pass")
        .filter(|c| {
            let unseen_env = c["id"].as_str().is_some_and(|i| i.ends_with(".environment"))
                && c["status"] == "warn"
                && c["fix"].as_str().is_some_and(|f| f.contains("as root"));
            !unseen_env
        })
        .collect();
    assert!(bad.is_empty(), "clean setup has findings: {bad:#?}");
    assert_eq!(code, Some(0));
    // As root, which can read it, the same home's roles pass it for real.
    let root_audit = std::os::unix::process::CommandExt::gid(
        std::os::unix::process::CommandExt::uid(&mut h.cmd(&["audit", "--json"]), 0),
        0,
    )
    .output()
    .expect("audit as root");
    let rr: Value = serde_json::from_slice(&root_audit.stdout).expect("json");
    for role in ["keyholder", "storer"] {
        assert!(find(&rr, &format!("role.{role}.environment"), "pass").is_some(), "{role}: {rr:#}");
    }
    assert_eq!(r["version"], 1);
    assert_eq!(r["summary"]["fail"], 0);
    let ids: BTreeSet<&str> = r["checks"].as_array().expect("checks").iter().filter_map(|c| c["id"].as_str()).collect();
    for id in [
        "home.exists",
        "home.mode",
        "key.file",
        "key.header",
        "key.kdf",
        "store.mode",
        "run.mode",
        "files.private",
        "files.symlinks",
        "files.unexpected",
        "env.passphrase",
        "kernel.landlock",
        "kernel.seccomp",
        "daemon.state",
        "daemon.degraded",
        "binary.writable",
    ] {
        assert!(ids.contains(id), "missing check {id}");
    }
    for role in ["keyholder", "storer"] {
        for k in ["no_new_privs", "seccomp", "capabilities", "dumpable", "core_limit", "network", "environment", "user"]
        {
            assert!(ids.contains(format!("role.{role}.{k}").as_str()), "missing role.{role}.{k}");
        }
    }
    for c in r["checks"].as_array().expect("checks").iter().filter(|c| c["status"] == "pass") {
        assert!(c["fix"].is_null(), "a PASS has no fix: {c}");
    }
    // The text form: one line per check and the closing count (the two
    // unseen environments are the only warnings).
    let text = stdout(&h.run(&["audit"]));
    let lines = text.lines().filter(|l| l.starts_with("PASS  ") || l.starts_with("WARN  ")).count();
    assert!(lines == ids.len(), "{text}");
    assert!(text.contains(" passed, 2 warnings, 0 failed"), "{text}");
}

/// Each case plants one misconfiguration in a fresh, locked home of `nobody`.
#[test]
fn planted_misconfigurations_are_each_found() {
    type Plant = fn(&TestHome);
    let cases: Vec<(&str, Plant, &str, &str, &str)> = vec![
        ("key mode 0644", |h| chmod(&h.home().key(), 0o644), "key.file", "fail", "chmod 600"),
        (
            "key owned by another user",
            |h| std::os::unix::fs::chown(h.home().key(), Some(0), Some(0)).expect("chown"),
            "key.file",
            "fail",
            "chown",
        ),
        (
            "key a symlink",
            |h| {
                let key = h.home().key();
                let real = h.root.join("store").join("real.key");
                std::fs::rename(&key, &real).expect("mv");
                std::os::unix::fs::symlink(&real, &key).expect("ln");
            },
            "key.file",
            "fail",
            "replace",
        ),
        (
            "key with two links",
            |h| std::fs::hard_link(h.home().key(), h.root.join("run").join("copy")).expect("ln"),
            "key.file",
            "fail",
            "samefile",
        ),
        ("key missing", |h| std::fs::remove_file(h.home().key()).expect("rm"), "key.file", "fail", "iai-mcp init"),
        (
            "key header hostile",
            |h| {
                let mut b = std::fs::read(h.home().key()).expect("read");
                // The passphrase slot's m_cost (key file version 2).
                b[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
                std::fs::write(h.home().key(), b).expect("write");
            },
            "key.header",
            "fail",
            "backup",
        ),
        (
            "weak KDF parameters",
            |h| {
                let weak = iai_keyholder::KdfParams::new(iai_keyholder::keyfile::MIN_M_KIB, 1, 1).expect("legal");
                let (kf, _) =
                    iai_keyholder::KeyFile::create(&iai_keyholder::Passphrase::new(PASS.into()), weak).expect("key");
                std::fs::write(h.home().key(), kf.to_bytes()).expect("write");
            },
            "key.kdf",
            "warn",
            "iai-mcp passwd",
        ),
        ("home 0755", |h| chmod(&h.root, 0o755), "home.mode", "fail", "chmod 700"),
        (
            "home owned by root",
            |h| std::os::unix::fs::chown(&h.root, Some(0), Some(0)).expect("chown"),
            "home.mode",
            "fail",
            "chown",
        ),
        ("store 0755", |h| chmod(&h.home().store_dir(), 0o755), "store.mode", "fail", "chmod 700"),
        ("run 0750", |h| chmod(&h.home().run_dir(), 0o750), "run.mode", "fail", "chmod 700"),
        (
            "world-readable WAL",
            |h| {
                let wal = h.home().store_dir().join("memory.db-wal");
                std::fs::write(&wal, b"\x37\x7f\x06\x82").expect("wal");
                std::os::unix::fs::chown(&wal, Some(NOBODY), Some(NOBODY)).expect("chown");
                chmod(&wal, 0o644);
            },
            "files.private",
            "fail",
            "chmod go-rwx",
        ),
        (
            "group-writable log",
            |h| {
                let log = h.home().log_file();
                std::fs::write(&log, b"storer: started\n").expect("log");
                std::os::unix::fs::chown(&log, Some(NOBODY), Some(NOBODY)).expect("chown");
                chmod(&log, 0o660);
            },
            "files.private",
            "fail",
            "chmod go-rwx",
        ),
        (
            "stray plaintext file",
            |h| {
                let p = h.root.join("notes.txt");
                std::fs::write(&p, "my bank PIN is 4421 and the staging password is hunter2\n").expect("write");
                std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).expect("chown");
                chmod(&p, 0o600);
            },
            "files.unexpected",
            "fail",
            "shred",
        ),
        (
            "stray binary export",
            |h| {
                let p = h.root.join("export.bin");
                std::fs::write(
                    &p,
                    (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<u8>>(),
                )
                .expect("write");
                std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).expect("chown");
                chmod(&p, 0o600);
            },
            "files.unexpected",
            "warn",
            "move",
        ),
        (
            "symlink inside store",
            |h| std::os::unix::fs::symlink("/etc/passwd", h.home().store_dir().join("memory.db")).expect("ln"),
            "files.symlinks",
            "fail",
            "rm ",
        ),
    ];
    assert!(cases.len() >= 15);
    for (name, plant, id, status, fix) in cases {
        let h = nobody_home();
        plant(&h);
        let (code, r) = audit(&h);
        expect(&r, id, status, fix);
        let want = if status == "fail" { Some(1) } else { Some(0) };
        assert_eq!(code, want, "{name}: exit status");
    }
}

#[test]
fn passphrase_in_the_callers_environment_is_a_warning() {
    let h = nobody_home();
    let out = h.cmd(&["audit", "--json"]).env("IAI_MCP_PASSPHRASE", "x").output().expect("audit");
    let r: Value = serde_json::from_slice(&out.stdout).expect("json");
    expect(&r, "env.passphrase", "warn", "unset IAI_MCP_PASSPHRASE");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_binary_writable_by_others_fails() {
    let h = nobody_home();
    let dir = tempfile::tempdir_in("/tmp").expect("dir");
    chmod(dir.path(), 0o755);
    let copy = dir.path().join("iai-mcp");
    std::fs::copy(BIN, &copy).expect("copy");
    chmod(&copy, 0o777);
    let out = Command::new(&copy).args(["audit", "--json"]).env("IAI_MCP_HOME", &h.root).output().expect("run");
    let r: Value = serde_json::from_slice(&out.stdout).expect("json");
    expect(&r, "binary.writable", "fail", "chmod go-w");
}

#[test]
fn audit_that_cannot_run_exits_2() {
    let out = Command::new(BIN).args(["audit"]).env("IAI_MCP_HOME", "relative/path").output().expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("absolute"), "{}", stderr(&out));
}

/// Runs `args` with Landlock made to look absent: a seccomp filter inherited
/// across exec answers `landlock_create_ruleset` with ENOSYS, as an old kernel would.
fn without_landlock(h: &TestHome, args: &[&str]) -> std::process::Output {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let filter = seccompiler::SeccompFilter::new(
        std::collections::BTreeMap::from([(libc::SYS_landlock_create_ruleset, Vec::new())]),
        seccompiler::SeccompAction::Allow,
        seccompiler::SeccompAction::Errno(libc::ENOSYS as u32),
        std::env::consts::ARCH.try_into().expect("arch"),
    )
    .expect("filter");
    let program: seccompiler::BpfProgram = filter.try_into().expect("bpf");
    let mut cmd = h.cmd(args);
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec; it only issues prctl and
    // seccomp on a program compiled before the fork, allocating nothing.
    unsafe {
        cmd.pre_exec(move || seccompiler::apply_filter(&program).map_err(|e| std::io::Error::other(e.to_string())));
    }
    let mut child = cmd.spawn().expect("spawn");
    let _ = child.stdin.take().expect("stdin").write_all(format!("{PASS}\n").as_bytes());
    child.wait_with_output().expect("wait")
}

#[test]
fn without_landlock_roles_fail_closed_unless_degraded_mode_is_chosen_and_then_audit_fails() {
    let h = nobody_home();
    let refused = without_landlock(&h, &["unlock", "--passphrase-fd", "0"]);
    assert_eq!(refused.status.code(), Some(1));
    let msg = stderr(&refused);
    assert!(msg.contains("Landlock") && msg.contains("--allow-degraded-sandbox"), "{msg}");
    assert_eq!(h.status()["state"], "locked", "nothing runs after a refusal");

    let shim = without_landlock(&h, &["mcp"]);
    assert_eq!(shim.status.code(), Some(1));
    assert!(stderr(&shim).contains("Landlock"), "{}", stderr(&shim));

    let degraded = without_landlock(&h, &["unlock", "--passphrase-fd", "0", "--allow-degraded-sandbox"]);
    assert_ok(&degraded, "degraded unlock");
    assert!(stderr(&degraded).contains("degraded"), "the user is warned: {}", stderr(&degraded));
    let s = h.status();
    assert!(s["degraded"].as_array().is_some_and(|d| !d.is_empty()), "status shows it: {s}");
    assert!(stdout(&h.run(&["status"])).contains("degraded"));
    let (code, r) = audit(&h);
    expect(&r, "daemon.degraded", "fail", "without --allow-degraded-sandbox");
    assert_eq!(code, Some(1));
    // Seccomp still applies to the degraded roles.
    let (kh, _) = h.pids();
    let status = std::fs::read_to_string(format!("/proc/{kh}/status")).expect("status");
    assert!(status.lines().any(|l| l.starts_with("Seccomp:") && l.ends_with('2')));
}

/// Issue 10.3: the audit passed "roles start with an empty environment" for a
/// shim whose environment held IAI_MCP_PASSPHRASE (from its host), and counted
/// a shim of another home as this home's.
#[test]
fn the_shim_scrubs_its_environment_and_audit_sees_only_this_homes_roles() {
    let h = TestHome::init_unlocked();
    let other = TestHome::init_unlocked();
    let mut mine = h.cmd(&["mcp"]);
    mine.env("IAI_MCP_PASSPHRASE", "leaked from the host").env("HOST_SECRET", "x");
    let mut mine = mine.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().expect("shim");
    let theirs = other.cmd(&["mcp"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn();
    let mut theirs = theirs.expect("other shim");
    std::thread::sleep(std::time::Duration::from_millis(500));
    // The host's pid is the shim itself, re-executed with an empty environment.
    let env = std::fs::read(format!("/proc/{}/environ", mine.id())).expect("environ (as root)");
    assert!(env.is_empty(), "the shim's environment: {:?}", String::from_utf8_lossy(&env));
    let (_, r) = audit(&h);
    let shim_checks: Vec<&Value> = r["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["id"].as_str().is_some_and(|i| i.starts_with("role.shim.")))
        .collect();
    assert!(!shim_checks.is_empty(), "the shim of this home is audited");
    let detail: String = shim_checks.iter().filter_map(|c| c["detail"].as_str()).collect::<Vec<_>>().join("\n");
    assert!(detail.contains(&format!("pid {}", mine.id())), "{detail}");
    assert!(!detail.contains(&format!("pid {}:", theirs.id())), "another home's shim is not this home's: {detail}");
    assert!(find(&r, "role.shim.environment", "pass").is_some(), "{r:#}");
    assert!(
        r["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .any(|c| c["id"] == "role.connector.seccomp" && c["status"] == "pass"),
        "the connector is audited too: {r:#}"
    );
    let _ = mine.kill();
    let _ = theirs.kill();
    let _ = mine.wait();
    let _ = theirs.wait();
}

/// `iai-mcp audit | head -1`: a reader that goes away ends the command
/// quietly (exit 141, as by SIGPIPE), never with a panic and a backtrace.
#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let h = crate::support::TestHome::new();
    h.init();
    let (read, write) = nix::unistd::pipe().expect("pipe");
    drop(read);
    let out = h
        .cmd(&["audit"])
        .stdout(std::process::Stdio::from(write))
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("audit");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
