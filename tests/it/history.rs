//! Issue 12.1 and 12.2: nothing missed while locked (the catch-up `unlock`
//! starts), and a history of existing transcripts imported on day one, both
//! with exactly the hooks' rules and positions.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::support::{all_records, assert_ok, stderr, stdout, TestHome, PASS};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/transcripts");

/// A store and a user home with the hosts' transcript directories and our hooks installed.
struct Env {
    h: TestHome,
    user: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let user = tempfile::Builder::new().prefix("iai-user").tempdir_in("/tmp").expect("user home");
        std::fs::create_dir_all(user.path().join(".claude/projects/-work-app")).expect("mkdir");
        std::fs::create_dir_all(user.path().join(".codex/sessions/2026/10/02")).expect("mkdir");
        let env = Env { h: TestHome::init_unlocked(), user };
        assert_ok(&env.run(&["hooks", "install", "--target", "all"]), "hooks install");
        env
    }

    fn run(&self, args: &[&str]) -> Output {
        self.h.cmd(args).env("HOME", self.user.path()).env_remove("CLAUDE_PROJECT_DIR").output().expect("run")
    }

    fn unlock(&self) -> Output {
        self.h
            .cmd(&["unlock"])
            .env("HOME", self.user.path())
            .env("IAI_MCP_PASSPHRASE", PASS)
            .env_remove("CLAUDE_PROJECT_DIR")
            .output()
            .expect("unlock")
    }

    fn hook(&self, h: &TestHome, input: &Value) -> Output {
        self.spawn(h, &["hook", "capture"], input).wait_with_output().expect("hook")
    }

    /// `args` against store `h`, as this user, with `input` on stdin.
    fn spawn(&self, h: &TestHome, args: &[&str], input: &Value) -> std::process::Child {
        let mut child = h
            .cmd(args)
            .env("HOME", self.user.path())
            .env_remove("CLAUDE_PROJECT_DIR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let _ = child.stdin.take().expect("stdin").write_all(input.to_string().as_bytes());
        child
    }

    fn claude(&self, name: &str) -> PathBuf {
        self.user.path().join(format!(".claude/projects/-work-app/{name}.jsonl"))
    }

    fn codex(&self, name: &str) -> PathBuf {
        self.user.path().join(format!(".codex/sessions/2026/10/02/rollout-{name}.jsonl"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.h.home().run_dir().join("hooks.log")).unwrap_or_default()
    }
}

/// What a record is, apart from its id: text, role, session, project, provenance, date.
type Facts = (String, String, Option<String>, Option<String>, Option<String>, i64);

fn facts(h: &TestHome) -> Vec<Facts> {
    let mut out: Vec<Facts> = all_records(&mut h.client())
        .into_iter()
        .map(|r| (r.text, r.role.name().to_string(), r.session, r.project, r.provenance, r.created_at))
        .collect();
    out.sort();
    out
}

/// A Claude Code transcript of `turns` user/assistant turns carrying `token`.
fn claude_lines(session: &str, token: &str, turns: usize) -> String {
    let mut s = String::new();
    for i in 0..turns {
        let line = if i % 2 == 0 {
            json!({"type": "user", "uuid": format!("{session}-u{i}"), "sessionId": session, "cwd": "/work/app",
                   "timestamp": "2026-10-01T09:00:00.000Z", "message": {"role": "user", "content": format!("{token} turn {i} from the user")}})
        } else {
            json!({"type": "assistant", "uuid": format!("{session}-a{i}"), "sessionId": session, "cwd": "/work/app",
                   "timestamp": "2026-10-01T09:00:05.000Z",
                   "message": {"id": format!("{session}-m{i}"), "role": "assistant", "content": [{"type": "text", "text": format!("{token} turn {i} from the assistant")}]}})
        };
        s.push_str(&line.to_string());
        s.push('\n');
    }
    s
}

/// A Codex rollout of `turns` turns carrying `token`.
fn codex_lines(session: &str, token: &str, turns: usize) -> String {
    let mut s = json!({"timestamp": "2026-10-02T10:00:00.000Z", "type": "session_meta", "payload": {"id": session, "cwd": "/work/lib"}})
        .to_string();
    s.push('\n');
    for i in 0..turns {
        let (role, kind) = if i % 2 == 0 { ("user", "input_text") } else { ("assistant", "output_text") };
        let line = json!({"timestamp": "2026-10-02T10:00:02.000Z", "type": "response_item",
                          "payload": {"type": "message", "role": role, "content": [{"type": kind, "text": format!("{token} turn {i} by {role}")}]}});
        s.push_str(&line.to_string());
        s.push('\n');
    }
    s
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            files_under(&e.path(), out);
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
}

#[test]
fn a_session_written_while_locked_is_captured_after_unlock_exactly_as_the_hooks_would_have() {
    let env = Env::new();
    // The same transcripts captured by the hooks into a store that was never locked.
    let reference = TestHome::init_unlocked();
    assert_ok(&env.h.run(&["lock"]), "lock");
    let locked_at = SystemTime::now();

    let claude = env.claude("locked-session");
    // The fixture ends with an incomplete line (a session cut short), so it goes last.
    let fixture = std::fs::read_to_string(Path::new(FIXTURES).join("claude.jsonl")).expect("fixture");
    let mut text = claude_lines("locked-session", "lockedcanary7731", 6);
    text.push_str(&fixture.replace("\"sessionId\":\"s1\"", "\"sessionId\":\"locked-session\""));
    std::fs::write(&claude, &text).expect("write");
    let codex = env.codex("locked-codex");
    std::fs::copy(Path::new(FIXTURES).join("codex.jsonl"), &codex).expect("copy");
    let inputs = [
        json!({"session_id": "locked-session", "transcript_path": claude, "cwd": "/work/app", "hook_event_name": "Stop"}),
        json!({"session_id": "sess-codex", "transcript_path": codex, "cwd": "/work/lib", "hook_event_name": "Stop"}),
    ];
    // The hosts run the hooks while locked: nothing is captured, nothing kept aside.
    for input in &inputs {
        let out = env.hook(&env.h, input);
        assert_eq!(out.status.code(), Some(0));
    }
    assert!(env.log().lines().last().is_some_and(|l| l.contains("locked: nothing captured")), "{}", env.log());
    // No file of ours holds the session's text: not the home, not a temporary file.
    let mut files = env.h.files();
    let mut tmp = Vec::new();
    files_under(&std::env::temp_dir(), &mut tmp);
    files.extend(tmp.into_iter().filter(|p| {
        !p.starts_with(env.user.path()) && std::fs::metadata(p).and_then(|m| m.modified()).is_ok_and(|t| t >= locked_at)
    }));
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_default();
        assert!(
            !bytes.windows(16).any(|w| w == b"lockedcanary7731"),
            "{} holds text of a session written while locked",
            f.display()
        );
    }

    let out = env.unlock();
    assert_ok(&out, "unlock");
    assert!(stdout(&out).contains("catching up"), "{}", stdout(&out));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !env.log().contains("catch-up: ") {
        assert!(Instant::now() < deadline, "no catch-up after unlock: {}", env.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    for input in &inputs {
        env.hook(&reference, input);
    }
    let got = facts(&env.h);
    assert!(got.iter().filter(|f| f.0.contains("lockedcanary7731")).count() == 6, "{got:?}");
    assert_eq!(got, facts(&reference), "the catch-up captured exactly what the hooks would have");

    // Again: nothing twice, whether by another catch-up or by the next hook run.
    let out = env.run(&["history", "catch-up"]);
    assert_ok(&out, "catch-up again");
    assert!(stdout(&out).contains(" 0 new"), "{}", stdout(&out));
    for input in &inputs {
        env.hook(&env.h, input);
        assert!(env.log().lines().last().is_some_and(|l| l.contains(": 0 new")), "{}", env.log());
    }
    assert_eq!(facts(&env.h).len(), got.len());
    let status = env.run(&["status"]);
    assert!(stdout(&status).contains("last catch-up of transcripts"), "{}", stdout(&status));
}

#[test]
fn history_import_counts_exactly_refuses_outside_links_and_hooks_carry_on() {
    let env = Env::new();
    let mut expected = 0usize;
    // 30 Claude Code sessions and 20 Codex sessions, real-shaped.
    for i in 0..30 {
        let turns = 2 + i % 5;
        std::fs::write(
            env.claude(&format!("c{i:02}")),
            claude_lines(&format!("c{i:02}"), &format!("histc{i:02}x"), turns),
        )
        .expect("write");
        expected += turns;
    }
    for i in 0..20 {
        let turns = 1 + i % 4;
        std::fs::write(
            env.codex(&format!("x{i:02}")),
            codex_lines(&format!("x{i:02}"), &format!("histx{i:02}x"), turns),
        )
        .expect("write");
        expected += turns;
    }
    // A session cut short: its last line is incomplete (and is not taken).
    let mut cut = claude_lines("cut", "histcut", 3);
    cut.push_str(r#"{"type":"user","uuid":"cut-u9","message":{"role":"user","content":"histcut never complete"#);
    std::fs::write(env.claude("cut"), cut).expect("write");
    expected += 3;
    // A link to a file outside the hosts' directories: refused.
    let outside = tempfile::Builder::new().prefix("iai-outside").tempdir_in("/tmp").expect("dir");
    std::fs::write(outside.path().join("secret.jsonl"), claude_lines("out", "histoutside", 2)).expect("write");
    std::os::unix::fs::symlink(outside.path().join("secret.jsonl"), env.claude("link-out")).expect("symlink");
    // A 50 MB transcript: large tool results, as real ones have, and some turns.
    let big = env.claude("big");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&big).expect("create"));
    let blob = "y".repeat(900 * 1024);
    let (mut size, mut i) = (0usize, 0usize);
    while size < 50 << 20 {
        let line = if i % 10 == 9 {
            json!({"type": "user", "uuid": format!("r{i}"), "sessionId": "big", "cwd": "/work/app", "message": {"content": [{"type": "tool_result", "content": blob}]}})
        } else {
            expected += 1;
            json!({"type": "user", "uuid": format!("u{i}"), "sessionId": "big", "cwd": "/work/app", "message": {"content": format!("histbig{i} words about the build")}})
        };
        let s = line.to_string();
        size += s.len() + 1;
        writeln!(f, "{s}").expect("write");
        i += 1;
    }
    drop(f);
    // Old sessions: only the newer ones with --since.
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000); // 2020-09-13
    for i in 0..10 {
        let f = std::fs::File::options().append(true).open(env.claude(&format!("c{i:02}"))).expect("open");
        f.set_modified(old).expect("set mtime");
    }
    let old_turns: usize = (0..10).map(|i| 2 + i % 5).sum();

    // Bad input is refused clearly, nothing imported.
    let out = env.run(&["history", "import", "--since", "last tuesday"]);
    assert!(!out.status.success() && stderr(&out).contains("--since"), "{}", stderr(&out));
    let out = env.run(&["history", "import", "--project", "/no/such/dir"]);
    assert!(!out.status.success() && stderr(&out).contains("no such directory"), "{}", stderr(&out));
    assert_eq!(env.h.client().stats().expect("stats").records, 0);

    let out = env.run(&["history", "import", "--since", "2025-01-01"]);
    assert_ok(&out, "import --since");
    assert!(stdout(&out).contains(&format!(" {} new,", expected - old_turns)), "{}", stdout(&out));
    let out = env.run(&["history", "import"]);
    assert_ok(&out, "import");
    let text = stdout(&out);
    assert!(text.contains(&format!(" {old_turns} new, 0 already known")), "{text}");
    assert!(text.contains("1 skipped") && text.contains("link-out.jsonl"), "{text}");
    assert_eq!(env.h.client().stats().expect("stats").records as usize, expected);
    let hits =
        env.h.client().recall(iai_storer::proto::RecallRequest { cue: "histoutside".into(), ..Default::default() });
    assert!(hits.expect("recall").hits.is_empty(), "a file outside the hosts' directories was read");

    // Again: nothing twice.
    let out = env.run(&["history", "import"]);
    assert!(stdout(&out).contains(" 0 new, 0 already known"), "{}", stdout(&out));
    // The hooks carry on exactly where the import stopped: only the new turn.
    let path = env.codex("x03");
    let mut f = std::fs::File::options().append(true).open(&path).expect("open");
    f.write_all(
        codex_lines("x03", "histnewturn", 1).lines().nth(1).map(|l| format!("{l}\n")).expect("line").as_bytes(),
    )
    .expect("append");
    drop(f);
    let out = env.hook(
        &env.h,
        &json!({"session_id": "x03", "transcript_path": path, "cwd": "/work/lib", "hook_event_name": "Stop"}),
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(env.log().lines().last().is_some_and(|l| l.contains(": 1 new, 0 already known")), "{}", env.log());
    assert_eq!(env.h.client().stats().expect("stats").records as usize, expected + 1);

    // A locked store: a clear error.
    assert_ok(&env.h.run(&["lock"]), "lock");
    let out = env.run(&["history", "import"]);
    assert!(!out.status.success() && stderr(&out).contains("locked"), "{}", stderr(&out));
}

/// Captures of one transcript running at once (hooks beside an import or a
/// catch-up) take each turn exactly once: a batch moves the position only
/// from where it found it, and the loser reads on from the new position.
#[test]
fn captures_of_one_transcript_at_the_same_time_take_each_turn_once() {
    let env = Env::new();
    let path = env.claude("busy");
    std::fs::write(&path, claude_lines("busy", "concurrentturn", 3000)).expect("write");
    let input = json!({"session_id": "busy", "transcript_path": path, "cwd": "/work/app", "hook_event_name": "Stop"});
    let mut children = Vec::new();
    for i in 0..8 {
        let args: &[&str] = if i % 2 == 0 { &["history", "import"] } else { &["hook", "capture"] };
        children.push(env.spawn(&env.h, args, &input));
    }
    for c in children {
        let out = c.wait_with_output().expect("wait");
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // Whatever a hook left for later (its deadline) is taken by one more run.
    assert_ok(&env.run(&["history", "import"]), "import");
    let all = all_records(&mut env.h.client());
    assert_eq!(all.len(), 3000, "each turn stored once");
    let twice: Vec<&str> = all.iter().filter(|r| r.reinforced > 0).map(|r| r.text.as_str()).take(5).collect();
    assert!(twice.is_empty(), "turns captured twice (reinforced as duplicates): {twice:?}");
}
