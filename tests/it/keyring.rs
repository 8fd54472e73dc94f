//! Issue 12.3: unlock at login, opt-in, against a real Secret Service
//! (gnome-keyring on a private D-Bus session bus, started here).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use iai_keyholder::keyfile::SlotKind;
use iai_keyholder::KeyFile;
use iai_storer::proto::{CaptureRequest, RecallRequest};

use crate::support::{assert_ok, stderr, stdout, TestHome, PASS};

/// A session bus and a gnome-keyring on it, with its own home; both are
/// stopped on drop.
struct Keyring {
    bus: Child,
    daemon: Child,
    address: String,
    dir: tempfile::TempDir,
}

fn need(program: &str) {
    let found = Command::new("sh").args(["-c", &format!("command -v {program}")]).output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "{program} is missing: the keyring tests need gnome-keyring, libsecret-tools and dbus-daemon \
         (Debian packages; .ci/run installs them)"
    );
}

impl Keyring {
    fn start() -> Keyring {
        for p in ["dbus-daemon", "gnome-keyring-daemon", "secret-tool"] {
            need(p);
        }
        let dir = tempfile::Builder::new().prefix("iai-keyring").tempdir_in("/tmp").expect("tempdir");
        std::fs::create_dir_all(dir.path().join("home")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("run")).expect("mkdir");
        let private = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700);
        std::fs::set_permissions(dir.path().join("run"), private).expect("chmod");
        let mut bus = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon");
        let mut line = String::new();
        BufReader::new(bus.stdout.take().expect("stdout")).read_line(&mut line).expect("bus address");
        let address = line.trim().to_string();
        assert!(address.starts_with("unix:"), "dbus-daemon printed {address:?}");
        let mut daemon = Command::new("gnome-keyring-daemon")
            .args(["--foreground", "--unlock", "--components=secrets"])
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .env("HOME", dir.path().join("home"))
            .env("XDG_RUNTIME_DIR", dir.path().join("run"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gnome-keyring-daemon");
        // The login keyring's own password, on stdin: created and unlocked.
        let _ = daemon.stdin.take().expect("stdin").write_all(b"keyring password");
        let k = Keyring { bus, daemon, address, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !k.secret_tool(&["search", "--all", "application", "nothing"]).status.success() {
            assert!(Instant::now() < deadline, "gnome-keyring did not come up on the private bus");
            std::thread::sleep(Duration::from_millis(100));
        }
        k
    }

    fn env(&self, c: &mut Command) {
        c.env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .env("XDG_RUNTIME_DIR", self.dir.path().join("run"))
            .env("HOME", self.dir.path().join("home"));
    }

    fn secret_tool(&self, args: &[&str]) -> Output {
        let mut c = Command::new("secret-tool");
        c.args(args);
        self.env(&mut c);
        c.output().expect("secret-tool")
    }

    /// Every secret iai-mcp keeps in this keyring.
    fn our_secrets(&self) -> Vec<String> {
        let out = self.secret_tool(&["search", "--all", "--unlock", "application", "iai-mcp"]);
        let text = format!("{}{}", stdout(&out), stderr(&out));
        text.lines().filter_map(|l| l.strip_prefix("secret = ")).map(str::to_string).collect()
    }

    fn run(&self, h: &TestHome, args: &[&str]) -> Output {
        let mut c = h.cmd(args);
        self.env(&mut c);
        c.output().expect("run")
    }

    fn run_with_pass(&self, h: &TestHome, args: &[&str]) -> Output {
        let mut c = h.cmd(args);
        self.env(&mut c);
        c.env("IAI_MCP_PASSPHRASE", PASS).output().expect("run")
    }
}

impl Drop for Keyring {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

fn key_file(h: &TestHome) -> KeyFile {
    KeyFile::parse(&std::fs::read(h.root.join(".key")).expect("read .key")).expect("parse .key")
}

#[test]
fn keyring_enable_unlocks_without_a_passphrase_and_disable_takes_it_back() {
    let ring = Keyring::start();
    let h = TestHome::new();
    h.init();
    assert!(stdout(&ring.run(&h, &["keyring", "status"])).contains("not enabled"));

    // A wrong passphrase changes nothing, in the key file or in the keyring.
    let before = std::fs::read(h.root.join(".key")).expect("key");
    let mut c = h.cmd(&["keyring", "enable"]);
    ring.env(&mut c);
    let out = c.env("IAI_MCP_PASSPHRASE", "not the passphrase").output().expect("enable");
    assert!(!out.status.success() && stderr(&out).contains("wrong passphrase"), "{}", stderr(&out));
    assert_eq!(std::fs::read(h.root.join(".key")).expect("key"), before);
    assert!(ring.our_secrets().is_empty());

    let out = ring.run_with_pass(&h, &["keyring", "enable"]);
    assert_ok(&out, "keyring enable");
    assert!(stdout(&out).contains("the trade"), "{}", stdout(&out));
    assert!(key_file(&h).slot(SlotKind::Keyring).is_some());
    let secrets = ring.our_secrets();
    assert_eq!(secrets.len(), 1, "one secret for this store");
    assert!(
        !secrets[0].contains(PASS) && secrets[0].len() >= 50,
        "the keyring holds a random secret, not the passphrase"
    );
    let audit = ring.run(&h, &["audit"]);
    assert!(stdout(&audit).contains("WARN  key.keyring"), "{}", stdout(&audit));

    // Unlock with no passphrase anywhere (no terminal, no variable, no descriptor).
    let out = ring.run(&h, &["unlock", "--keyring"]);
    assert_ok(&out, "unlock --keyring");
    h.client().capture(CaptureRequest { text: "keyring unlocked memory".into(), ..Default::default() }).expect("c");
    assert_ok(&h.run(&["lock"]), "lock");

    // A rotation keeps the keyring working (the new key is wrapped for its secret).
    let out = ring.run_with_pass(&h, &["rotate"]);
    assert_ok(&out, "rotate with the keyring enabled");
    assert!(key_file(&h).slot(SlotKind::Keyring).is_some());
    let out = ring.run(&h, &["unlock", "--keyring"]);
    assert_ok(&out, "unlock --keyring after a rotation");
    let hits = h.client().recall(RecallRequest { cue: "keyring unlocked".into(), ..Default::default() });
    assert_eq!(hits.expect("recall").hits.len(), 1);
    assert_ok(&h.run(&["lock"]), "lock");

    let out = ring.run(&h, &["keyring", "disable"]);
    assert_ok(&out, "keyring disable");
    assert!(key_file(&h).slot(SlotKind::Keyring).is_none(), "the slot is destroyed");
    assert!(ring.our_secrets().is_empty(), "the secret is gone from the keyring");
    let out = ring.run(&h, &["unlock", "--keyring"]);
    assert!(!out.status.success(), "unlock --keyring after disable must be refused");
    assert!(stderr(&out).contains("the store stays locked"), "{}", stderr(&out));
    assert_eq!(h.status()["state"], "locked");
    let audit = ring.run(&h, &["audit"]);
    assert!(stdout(&audit).contains("PASS  key.keyring"), "{}", stdout(&audit));
    let out = ring.run(&h, &["keyring", "disable"]);
    assert!(!out.status.success() && stderr(&out).contains("was not enabled"), "{}", stderr(&out));
}

#[test]
fn without_a_secret_service_keyring_commands_say_so_and_change_nothing() {
    let h = TestHome::new();
    h.init();
    let before = std::fs::read(h.root.join(".key")).expect("key");
    let nowhere: PathBuf = h.root.join("no-bus");
    let bus = format!("unix:path={}", nowhere.display());
    let out = h
        .cmd(&["keyring", "enable"])
        .env("DBUS_SESSION_BUS_ADDRESS", &bus)
        .env("IAI_MCP_PASSPHRASE", PASS)
        .output()
        .expect("enable");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no Secret Service is reachable"), "{}", stderr(&out));
    assert_eq!(std::fs::read(h.root.join(".key")).expect("key"), before, "nothing was changed");
    let out = h.cmd(&["unlock", "--keyring"]).env("DBUS_SESSION_BUS_ADDRESS", &bus).output().expect("unlock");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no Secret Service is reachable"), "{}", stderr(&out));
    assert_eq!(h.status()["state"], "locked");
}

/// Issue 12.4: the user unit is ours alone, passes `systemd-analyze verify`,
/// scores below 2.0 on `systemd-analyze security`, and the foreground unlock
/// it runs exits 0 after `lock` and non-zero when the pair fails (what
/// `Restart=on-failure` acts on).
#[test]
fn the_service_unit_verifies_scores_below_2_and_is_ours_alone() {
    let ring = Keyring::start();
    let h = TestHome::new();
    h.init();
    let config = tempfile::Builder::new().prefix("iai-config").tempdir_in("/tmp").expect("config");
    let service = |args: &[&str]| {
        let mut c = h.cmd(args);
        ring.env(&mut c);
        c.env("XDG_CONFIG_HOME", config.path()).output().expect("service")
    };
    let unit = config.path().join("systemd/user/iai-mcp.service");
    let out = service(&["service", "install"]);
    assert!(!out.status.success() && stderr(&out).contains("keyring enable"), "{}", stderr(&out));
    assert!(!unit.exists());
    assert_ok(&ring.run_with_pass(&h, &["keyring", "enable"]), "keyring enable");
    assert_ok(&service(&["service", "install"]), "service install");
    let text = std::fs::read_to_string(&unit).expect("unit");
    for d in ["ExecStart=", "unlock --keyring --foreground", "RestrictAddressFamilies=AF_UNIX", "NoNewPrivileges=yes"] {
        assert!(text.contains(d), "the unit lacks {d}");
    }
    let out = service(&["service", "install"]);
    assert!(stdout(&out).contains("already installed"), "{}", stdout(&out));
    assert_eq!(std::fs::read_to_string(&unit).expect("unit"), text, "install is idempotent");

    let verify = Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("systemd-analyze");
    assert!(verify.status.success(), "systemd-analyze verify: {}{}", stdout(&verify), stderr(&verify));
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze security");
    let report = stdout(&security);
    let score: f64 = report
        .lines()
        .find_map(|l| l.split("iai-mcp.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {report}"));
    eprintln!("systemd-analyze security --offline=true: exposure {score}");
    assert!(score < 2.0, "exposure {score}:\n{report}");

    // A user's edit is never overwritten or removed; drop-ins are left alone.
    std::fs::write(&unit, text.replace("RestartSec=5", "RestartSec=9")).expect("edit");
    let out = service(&["service", "install"]);
    assert!(!out.status.success() && stderr(&out).contains("drop-in"), "{}", stderr(&out));
    let out = service(&["service", "uninstall"]);
    assert!(!out.status.success() && unit.exists(), "{}", stderr(&out));
    std::fs::write(&unit, &text).expect("restore");
    let dropin = config.path().join("systemd/user/iai-mcp.service.d/override.conf");
    std::fs::create_dir_all(dropin.parent().expect("dir")).expect("mkdir");
    std::fs::write(&dropin, "[Service]\nNice=5\n").expect("drop-in");
    assert_ok(&service(&["service", "uninstall"]), "service uninstall");
    assert!(!unit.exists() && dropin.exists(), "exactly what install wrote is gone");

    // What the unit runs: in the foreground until the store is locked (0) or fails (non-zero).
    let fg = || {
        let mut c = h.cmd(&["unlock", "--keyring", "--foreground"]);
        ring.env(&mut c);
        c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("unlock --foreground")
    };
    let wait_unlocked = || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while h.status()["state"] != "unlocked" {
            assert!(Instant::now() < deadline, "the foreground unlock did not unlock");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let child = fg();
    wait_unlocked();
    assert_ok(&h.run(&["lock"]), "lock");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let child = fg();
    wait_unlocked();
    let (_, storer) = h.pids();
    crate::support::kill9(storer);
    let out = child.wait_with_output().expect("wait");
    assert_ne!(out.status.code(), Some(0), "a failed pair must fail the unit");
    assert!(stderr(&out).contains("stopped by itself"), "{}", stderr(&out));
}

/// A home (or binary) path that a unit file would read differently (a
/// space, a `%` specifier) is refused before anything is written.
#[test]
fn service_install_refuses_a_path_a_unit_file_would_misread() {
    let outer = tempfile::Builder::new().prefix("iai with space").tempdir_in("/tmp").expect("dir");
    let h = TestHome::new_in(outer.path());
    h.init();
    let config = tempfile::Builder::new().prefix("iai-config").tempdir_in("/tmp").expect("config");
    let out = h.cmd(&["service", "install"]).env("XDG_CONFIG_HOME", config.path()).output().expect("install");
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("contains ' '") && stderr(&out).contains("nothing was installed"),
        "{}",
        stderr(&out)
    );
    assert!(!config.path().join("systemd").exists(), "nothing was written");
}
