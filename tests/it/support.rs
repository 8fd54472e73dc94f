//! Test homes with the real `iai-mcp` binary and its real daemons.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use iai_policy::Home;
use iai_storer::client::Client;

pub const PASS: &str = "correct horse battery staple";
pub const BIN: &str = env!("CARGO_BIN_EXE_iai-mcp");

/// A temporary `IAI_MCP_HOME`. Dropping it locks the store, so no daemon
/// outlives its test.
pub struct TestHome {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    /// Run commands as this uid/gid instead of the test's own.
    pub uid: Option<u32>,
}

impl TestHome {
    pub fn new() -> TestHome {
        let dir = tempfile::Builder::new().prefix("iai").tempdir_in("/tmp").expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let root = dir.path().join("h");
        TestHome { _dir: dir, root, uid: None }
    }

    /// A home at `dir/h` (the directory must exist and outlive the home).
    pub fn new_in(dir: &Path) -> TestHome {
        let holder = tempfile::Builder::new().prefix("iai").tempdir_in(dir).expect("tempdir");
        let root = holder.path().join("h");
        TestHome { _dir: holder, root, uid: None }
    }

    /// A home whose commands (and so daemons) run as `nobody`.
    pub fn new_as(uid: u32) -> TestHome {
        let mut h = TestHome::new();
        std::os::unix::fs::chown(h._dir.path(), Some(uid), Some(uid)).expect("chown");
        h.uid = Some(uid);
        h
    }

    pub fn home(&self) -> Home {
        Home::new(self.root.clone()).expect("valid home")
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args).env("IAI_MCP_HOME", &self.root).env_remove("IAI_MCP_PASSPHRASE").stdin(Stdio::null());
        if let Some(uid) = self.uid {
            c.uid(uid).gid(uid);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run iai-mcp")
    }

    /// Runs with `pass` on stdin, given as `--passphrase-fd 0`.
    pub fn run_with_pass(&self, args: &[&str], pass: &str) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--passphrase-fd", "0"]);
        let mut child =
            self.cmd(&all).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        // A command that refuses before reading its passphrase closes the pipe early.
        match stdin.write_all(format!("{pass}\n").as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("write passphrase: {e}"),
            _ => {}
        }
        drop(stdin);
        child.wait_with_output().expect("wait")
    }

    pub fn init(&self) {
        let out = self.run_with_pass(&["init"], PASS);
        assert_ok(&out, "init");
    }

    pub fn unlock(&self) {
        let out = self.run_with_pass(&["unlock"], PASS);
        assert_ok(&out, "unlock");
    }

    pub fn init_unlocked() -> TestHome {
        let h = TestHome::new();
        h.init();
        h.unlock();
        h
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.home()).expect("storer answers")
    }

    /// `status --json` as a value.
    pub fn status(&self) -> serde_json::Value {
        let out = self.run(&["status", "--json"]);
        assert_ok(&out, "status");
        serde_json::from_slice(&out.stdout).expect("status json")
    }

    pub fn pids(&self) -> (u32, u32) {
        let s = self.status();
        assert_eq!(s["state"], "unlocked", "{s}");
        (s["keyholder_pid"].as_u64().expect("pid") as u32, s["storer_pid"].as_u64().expect("pid") as u32)
    }

    /// Every regular file beneath the home, recursively.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let ft = e.file_type().expect("file type");
        if ft.is_dir() {
            walk(&e.path(), out);
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
}

impl Drop for TestHome {
    fn drop(&mut self) {
        let s = self.run(&["status", "--json"]);
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&s.stdout) {
            if v["state"] != "locked" {
                let _ = self.run(&["lock"]);
            }
        }
    }
}

pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

pub fn wait_gone(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !alive(pid)
}

pub fn kill9(pid: u32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
}

/// A seeded, reproducible generator (SplitMix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// An `iai-mcp mcp` process spoken to in raw JSON-RPC lines, so a test sees
/// exactly the bytes a host receives.
pub struct RawMcp {
    pub child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    next_id: u64,
}

impl RawMcp {
    pub fn start(h: &TestHome) -> RawMcp {
        let mut child = h
            .cmd(&["mcp"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn iai-mcp mcp");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut m = RawMcp { child, stdin, stdout, next_id: 0 };
        let init = m.request(
            "initialize",
            serde_json::json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "it", "version": "1"}}),
        );
        assert!(init.0["result"]["serverInfo"].is_object(), "initialize: {}", init.1);
        m.send(&serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        m
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn send(&mut self, v: &serde_json::Value) {
        let mut line = serde_json::to_vec(v).expect("json");
        line.push(b'\n');
        self.stdin.write_all(&line).expect("write to the shim");
        self.stdin.flush().expect("flush");
    }

    /// Sends a request; returns the parsed reply and the raw line as received.
    pub fn request(&mut self, method: &str, params: serde_json::Value) -> (serde_json::Value, String) {
        use std::io::BufRead;
        self.next_id += 1;
        let id = self.next_id;
        self.send(&serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).expect("read from the shim");
            assert!(n > 0, "the shim closed stdout while a request was pending");
            let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON-RPC line");
            if v["id"] == id {
                return (v, line);
            }
        }
    }

    /// Calls a tool; returns the reply and the raw line.
    pub fn call(&mut self, tool: &str, args: serde_json::Value) -> (serde_json::Value, String) {
        self.request("tools/call", serde_json::json!({"name": tool, "arguments": args}))
    }
}

impl Drop for RawMcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("kill");
}

/// Every acknowledged (token, id) is the top hit for its token: nothing acknowledged was lost.
pub fn assert_all_recalled(h: &TestHome, acked: &[(String, String)]) {
    let mut client = h.client();
    for (token, id) in acked {
        let hits = client
            .recall(iai_storer::proto::RecallRequest { cue: token.clone(), limit: Some(1), ..Default::default() })
            .expect("recall")
            .hits;
        assert_eq!(hits.first().map(|h| h.id.as_str()), Some(id.as_str()), "acknowledged capture {token} was lost");
    }
}

/// Every live memory with everything the store knows about it, by id
/// (`export` page by page).
pub fn all_records(c: &mut Client) -> Vec<iai_storer::proto::MemoryRecord> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = c.export(iai_storer::proto::ExportRequest { after, limit: None }).expect("export page");
        out.extend(page.records);
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Pids of processes running a role for this home.
pub fn procs_of(h: &TestHome) -> Vec<u32> {
    let root = h.root.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<String> = cmd.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.iter().any(|a| a.starts_with("__")) && args.contains(&root) && alive(pid) {
            out.push(pid);
        }
    }
    out
}
