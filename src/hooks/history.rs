//! Transcripts the hooks did not see: the ones written while the store was
//! locked (caught up after `unlock`, in the background), and the history
//! from before iai-mcp (`iai-mcp history import`).
//!
//! Both read each transcript with the hooks' own code
//! ([`super::capture_transcript`]): the same parsing, `<private>` stripping,
//! redaction, roles, dates and the same sealed position, so a hook carries on
//! exactly where they stopped and nothing is captured twice. Nothing of ours
//! is written while locked: which transcripts need catching up is derived
//! from the hosts' own files (modified since the store was last unlocked),
//! and the positions are sealed in the store.

use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use iai_policy::Home;
use iai_storer::client::{Client, ClientError};
use iai_storer::proto::{EventKind, EventsRequest};
use serde_json::Value;

use super::settings::{self, Host};
use super::{allowed_transcript, capture_transcript, cursor_key, Captured, Source};

/// The most a catch-up after unlock works before it stops (it carries on at
/// the next unlock or `iai-mcp history catch-up`).
pub const CATCH_UP_BUDGET: Duration = Duration::from_secs(600);
/// How far into a transcript its session id and directory are looked for.
const IDENTITY_BYTES: u64 = 256 * 1024;
/// Directories below a host's root that are visited, at most (a bound on a
/// hostile or looping tree).
const MAX_DEPTH: usize = 8;

/// Which transcripts to read.
pub struct Scope {
    pub hosts: Vec<Host>,
    /// Only transcripts modified at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Only transcripts whose session ran in this directory (or below it).
    pub project: Option<PathBuf>,
}

/// A transcript found under a host's directory.
struct Found {
    path: PathBuf,
    host: Host,
    modified_ms: i64,
    len: u64,
}

/// What a run did, for its summary.
#[derive(Default)]
pub struct Report {
    pub transcripts: usize,
    /// Transcripts that had turns to capture.
    pub read: usize,
    pub bytes: u64,
    pub captured: Captured,
    /// Transcripts left alone, and why.
    pub skipped: Vec<(PathBuf, String)>,
    /// Transcripts whose end was not reached within the time allowed.
    pub unfinished: usize,
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Every `.jsonl` beneath the hosts' roots, oldest first. A link is followed
/// only if it resolves inside a host's root; others are skipped, and said so.
fn find(user_home: &Path, scope: &Scope, report: &mut Report) -> Vec<Found> {
    let mut out = Vec::new();
    for &host in &scope.hosts {
        let root = match host {
            Host::Claude => user_home.join(".claude/projects"),
            Host::Codex => user_home.join(".codex/sessions"),
        };
        walk(&root, 0, host, user_home, &mut out, report);
    }
    out.retain(|f| scope.since_ms.is_none_or(|s| f.modified_ms >= s));
    out.sort_by_key(|f| f.modified_ms);
    out
}

fn walk(dir: &Path, depth: usize, host: Host, user_home: &Path, out: &mut Vec<Found>, report: &mut Report) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            if depth < MAX_DEPTH {
                walk(&path, depth + 1, host, user_home, out, report);
            }
            continue;
        }
        if path.extension().and_then(|x| x.to_str()) != Some("jsonl") {
            continue;
        }
        if !(ft.is_file() || ft.is_symlink()) {
            continue;
        }
        // The hooks' own rule: the real file must lie beneath a host's directory.
        match allowed_transcript(&path.to_string_lossy(), user_home) {
            Ok((real, _)) => {
                let Ok(meta) = std::fs::metadata(&real) else { continue };
                let modified_ms = meta.modified().map(ms).unwrap_or(0);
                out.push(Found { path: real, host, modified_ms, len: meta.len() });
            }
            Err(_) => report
                .skipped
                .push((path, "a link to a file outside ~/.claude/projects and ~/.codex/sessions (refused)".into())),
        }
    }
}

/// The session id and working directory a transcript records, as the hooks
/// would have been told them: Claude Code lines carry `sessionId` and `cwd`,
/// Codex's first line (`session_meta`) its `id` and `cwd`.
fn identity(path: &Path, host: Host) -> (Option<String>, Option<String>) {
    let Ok(f) = std::fs::File::open(path) else { return (None, None) };
    let mut reader = BufReader::new(f.take(IDENTITY_BYTES));
    let (mut session, mut cwd) = (None, None);
    let mut line = Vec::new();
    while session.is_none() || cwd.is_none() {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let Ok(v) = serde_json::from_slice::<Value>(&line) else { continue };
        let (s, c) = match host {
            Host::Claude => (v["sessionId"].as_str(), v["cwd"].as_str()),
            Host::Codex if v["type"] == "session_meta" => (v["payload"]["id"].as_str(), v["payload"]["cwd"].as_str()),
            Host::Codex => (None, None),
        };
        session = session.or(s.map(String::from));
        cwd = cwd.or(c.map(String::from));
    }
    (session, cwd)
}

/// Reads every transcript in `scope` that has complete lines after its saved
/// position, until `deadline`. `progress` shows a line on the terminal.
pub fn run(client: &mut Client, scope: &Scope, deadline: Instant, progress: bool) -> Result<Report> {
    let user_home = super::user_home()?;
    let mut report = Report::default();
    let found = find(&user_home, scope, &mut report);
    report.transcripts = found.len();
    let total_bytes: u64 = found.iter().map(|f| f.len).sum();
    let mut seen_bytes = 0u64;
    for (i, f) in found.iter().enumerate() {
        seen_bytes += f.len;
        if Instant::now() >= deadline {
            report.unfinished += found.len() - i;
            break;
        }
        // Cheap first: a transcript read to its end has nothing after its
        // position, and its first lines need not be read either.
        let position: u64 = client.get_cursor(&cursor_key(&f.path))?.and_then(|v| v.parse().ok()).unwrap_or(0);
        if position >= f.len {
            continue;
        }
        let (session, cwd) = identity(&f.path, f.host);
        if let Some(want) = &scope.project {
            if !cwd.as_deref().is_some_and(|c| Path::new(c).starts_with(want)) {
                continue;
            }
        }
        let project = std::env::var("CLAUDE_PROJECT_DIR").ok().filter(|p| !p.is_empty()).or(cwd);
        let source = Source { transcript: &f.path, host: f.host, session, project };
        let c =
            capture_transcript(client, &source, deadline).with_context(|| format!("reading {}", f.path.display()))?;
        if c.inserted + c.known > 0 {
            report.read += 1;
            report.bytes += f.len - position;
        }
        if c.unfinished {
            report.unfinished += 1;
        }
        report.captured += c;
        if progress {
            let pct = (seen_bytes * 100).checked_div(total_bytes).unwrap_or(100);
            eprint!(
                "\r{} of {} transcripts ({pct} %), {} turns captured",
                i + 1,
                found.len(),
                report.captured.inserted
            );
        }
    }
    if progress && !found.is_empty() {
        eprintln!();
    }
    Ok(report)
}

/// The hosts whose capture hooks are installed.
pub fn hosts_with_hooks(user_home: &Path) -> Vec<Host> {
    [Host::Claude, Host::Codex]
        .into_iter()
        .filter(|h| {
            let path = settings::real_path(&h.settings_path(user_home)).unwrap_or_default();
            settings::read(&path)
                .is_ok_and(|(doc, _)| settings::installed(&doc).iter().any(|(_, sub, _)| sub == "capture"))
        })
        .collect()
}

/// When the store was unlocked before this unlock (the audit trail's
/// second-newest unlock), else when its key was made: sessions written
/// since then may have found it locked.
fn locked_since(client: &mut Client, home: &Home) -> Result<i64> {
    let unlocks = client.events(EventsRequest { kind: Some(EventKind::Unlock), limit: Some(2), since: None })?.events;
    if let Some(previous) = unlocks.get(1) {
        return Ok(previous.at);
    }
    let made = std::fs::symlink_metadata(home.key()).and_then(|m| m.modified()).map(ms).unwrap_or(0);
    Ok(made)
}

/// `iai-mcp history catch-up`: the transcripts of the hosts with hooks that
/// were written while the store was locked. `background` is the run `unlock`
/// starts: no terminal, a summary in `run/hooks.log`.
pub fn catch_up(home: &Home, background: bool) -> Result<()> {
    let user_home = super::user_home()?;
    let hosts = hosts_with_hooks(&user_home);
    if hosts.is_empty() {
        if !background {
            println!("no capture hooks are installed (`iai-mcp hooks install`): nothing to catch up");
        }
        return Ok(());
    }
    let mut client = match Client::connect(home) {
        Ok(c) => c,
        Err(ClientError::Locked) => {
            anyhow::bail!("the store is locked: run `iai-mcp unlock` (it catches up by itself)")
        }
        Err(e) => return Err(e.into()),
    };
    let since = locked_since(&mut client, home)?;
    let scope = Scope { hosts, since_ms: Some(since), project: None };
    let started = Instant::now();
    let progress = !background && std::io::stderr().is_terminal();
    let outcome = run(&mut client, &scope, started + CATCH_UP_BUDGET, progress);
    let line = match &outcome {
        Ok(r) => format!("catch-up: {}", summary(r, started.elapsed())),
        Err(e) => format!("catch-up: stopped: {e:#}"),
    };
    super::log(home, &line);
    if !background {
        println!("{line}");
        if let Ok(r) = &outcome {
            print_skipped(r);
        }
    }
    outcome.map(|_| ())
}

/// `iai-mcp history import`: existing transcripts, all or some.
pub fn import(home: &Home, scope: &Scope) -> Result<()> {
    let mut client = Client::connect(home).map_err(|e| match e {
        ClientError::Locked => anyhow::anyhow!("the store is locked: run `iai-mcp unlock` first"),
        other => other.into(),
    })?;
    let started = Instant::now();
    // No time limit: an import runs until it is done (a kill loses nothing:
    // each batch moved its transcript's position, and a re-run carries on).
    let report =
        run(&mut client, scope, started + Duration::from_secs(100 * 365 * 86_400), std::io::stderr().is_terminal())?;
    let line = summary(&report, started.elapsed());
    super::log(home, &format!("history import: {line}"));
    println!("history import: {line}");
    print_skipped(&report);
    Ok(())
}

fn summary(r: &Report, took: Duration) -> String {
    let secs = took.as_secs_f64().max(1e-3);
    format!(
        "{} transcripts found, {} with turns not yet captured; {} ({:.1} MB in {:.1} s, {:.0} turns/s){}{}",
        r.transcripts,
        r.read,
        r.captured,
        r.bytes as f64 / 1e6,
        secs,
        (r.captured.inserted + r.captured.known) as f64 / secs,
        if r.unfinished > 0 {
            format!("; {} not finished in time (carried on next run)", r.unfinished)
        } else {
            String::new()
        },
        if r.skipped.is_empty() { String::new() } else { format!("; {} skipped", r.skipped.len()) },
    )
}

fn print_skipped(r: &Report) {
    for (path, why) in r.skipped.iter().take(20) {
        println!("  skipped {}: {why}", path.display());
    }
    if r.skipped.len() > 20 {
        println!("  and {} more skipped", r.skipped.len() - 20);
    }
}
