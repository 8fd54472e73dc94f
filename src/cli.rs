//! The command line.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use iai_keyholder::keyfile::SlotKind;
use iai_keyholder::startup::{self, Startup};
use iai_keyholder::{KdfParams, KeyFile, KeyFileError, Passphrase};
use iai_policy::Home;
use iai_storer::client::{Client, ClientError};
use iai_storer::proto::{
    CaptureRequest, CaptureStatus, ContradictRequest, EventKind, EventsRequest, RecallRequest, Role, Tier,
};

use crate::passphrase;
use iai_policy::procs;

const AFTER_HELP: &str = "\
Files live in ~/.iai-mcp (or $IAI_MCP_HOME). Exit status: 0 success, 1 error, 3 the store is locked.
Passphrases are read from --passphrase-fd N, else $IAI_MCP_PASSPHRASE (weaker: visible to the
user's other processes), else a no-echo prompt.";

#[derive(Parser)]
#[command(name = "iai-mcp", version, about = "Local, encrypted long-term memory for AI coding assistants", after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum HistoryAction {
    /// Capture existing Claude Code and Codex transcripts, with the hooks' rules and positions: the hooks carry
    /// on where it stops, and running it again captures nothing twice.
    Import {
        /// Only transcripts written on or after this day or time (2026-01-31, or RFC 3339).
        #[arg(long, value_name = "DATE")]
        since: Option<String>,
        /// Only sessions that ran in this directory (or below it).
        #[arg(long, value_name = "DIR")]
        project: Option<std::path::PathBuf>,
        #[arg(long, value_enum, default_value_t = Target::All)]
        target: Target,
    },
    /// Capture what the hooks could not while the store was locked (`unlock` starts this by itself).
    CatchUp {
        /// Run quietly, writing the summary to run/hooks.log (what `unlock` starts).
        #[arg(long, hide = true)]
        background: bool,
    },
}

#[derive(Subcommand)]
enum ServiceAction {
    /// Write a hardened systemd user unit that unlocks the store at login from the keyring (needs `keyring enable`).
    Install,
    /// Remove exactly the unit `install` wrote (never a changed one, never your drop-ins).
    Uninstall,
    /// Say whether the unit is installed and what systemd says of it.
    Status,
}

#[derive(Subcommand)]
enum KeyringAction {
    /// Keep a random secret (never your passphrase) in your login keyring that unlocks the store.
    Enable {
        /// Read the passphrase from this open file descriptor (first line).
        #[arg(long, value_name = "N")]
        passphrase_fd: Option<i32>,
    },
    /// Remove the keyring's key slot, then its secret from the keyring.
    Disable,
    /// Say whether unlocking from the keyring is enabled.
    Status,
}

#[derive(Subcommand)]
enum ModelAction {
    /// Check a static embedding model (safetensors weights and a tokenizer.json) and install it for semantic recall.
    Install {
        /// The weights: a safetensors file holding one table [tokens, values] (F32, F16 or BF16).
        weights: std::path::PathBuf,
        /// The Hugging Face tokenizer.json that goes with the weights.
        tokenizer: std::path::PathBuf,
    },
    /// Remove the installed model: recall uses words only from the next unlock.
    Remove,
    /// Say whether a model is installed and whether it can be used.
    Status,
}

#[derive(Subcommand)]
enum RecoveryAction {
    /// Make a new recovery code (replacing any earlier one) and show it once.
    Add {
        /// Read the passphrase from this open file descriptor (first line).
        #[arg(long, value_name = "N")]
        passphrase_fd: Option<i32>,
    },
    /// Remove the recovery code: afterwards only the passphrase unlocks.
    Remove {
        /// Read the passphrase from this open file descriptor (first line).
        #[arg(long, value_name = "N")]
        passphrase_fd: Option<i32>,
    },
    /// Say whether a recovery code is set.
    Status,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the home directory and a new key protected by a passphrase.
    Init {
        /// Read the passphrase from this open file descriptor (first line).
        #[arg(long, value_name = "N")]
        passphrase_fd: Option<i32>,
    },
    /// Start the keyholder and storer; returns when memories can be used.
    Unlock {
        /// Read the passphrase from this open file descriptor (first line).
        #[arg(long, value_name = "N")]
        passphrase_fd: Option<i32>,
        /// Unlock with the recovery code instead of the passphrase.
        #[arg(long, conflicts_with = "keyring")]
        recovery_code: bool,
        /// Unlock with the secret in your login keyring (`iai-mcp keyring enable`), no passphrase asked.
        #[arg(long)]
        keyring: bool,
        /// Stay in the foreground until the store is locked or stops (for a service manager: exits 0 after
        /// `lock`, non-zero if the daemon pair failed).
        #[arg(long)]
        foreground: bool,
        /// Run even if the kernel cannot enforce the sandbox (Landlock, seccomp). Not recommended.
        #[arg(long)]
        allow_degraded_sandbox: bool,
    },
    /// Stop the keyholder and storer; the key leaves memory.
    Lock,
    /// Change the passphrase. Only the key file changes (no memory is touched); works locked or unlocked.
    Passwd {
        /// Prove it is you with the recovery code instead of the current passphrase.
        #[arg(long)]
        recovery_code: bool,
        /// Read the current passphrase (or recovery code) from this open file descriptor (first line).
        #[arg(long, value_name = "N")]
        passphrase_fd: Option<i32>,
        /// Read the new passphrase from this open file descriptor (first line); else $IAI_MCP_NEW_PASSPHRASE, else a prompt.
        #[arg(long, value_name = "N")]
        new_passphrase_fd: Option<i32>,
    },
    /// Give the store a new data key: every sealed value is re-sealed under it while the store stays in use,
    /// then the old key is destroyed. Safe to interrupt: run it again to carry on.
    Rotate {
        /// Read the passphrase from this open file descriptor (first line).
        #[arg(long, value_name = "N")]
        passphrase_fd: Option<i32>,
        /// Read the recovery code from this open file descriptor; else $IAI_MCP_RECOVERY_CODE, else a prompt.
        #[arg(long, value_name = "N")]
        recovery_code_fd: Option<i32>,
        /// Do not wrap the new key for the recovery code: the recovery code stops working.
        #[arg(long)]
        drop_recovery_code: bool,
        /// Values re-sealed per step (one transaction each; other requests wait at most one step).
        #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1000))]
        batch: u32,
        /// Run even if the kernel cannot enforce the sandbox (Landlock, seccomp). Not recommended.
        #[arg(long)]
        allow_degraded_sandbox: bool,
    },
    /// Copy the store and its key into DEST (a new directory), sealed as at rest; captures carry on meanwhile.
    Backup {
        /// A directory that does not exist yet (outside the home).
        dest: std::path::PathBuf,
    },
    /// Fill an empty home ($IAI_MCP_HOME) from a backup made by `iai-mcp backup`.
    Restore {
        /// The backup's directory.
        src: std::path::PathBuf,
    },
    /// Write every memory with its metadata to an age-encrypted file (open it with `age -d`, or import it).
    Export {
        /// The new file to write (never over an existing one); without it, standard output.
        #[arg(long, value_name = "FILE")]
        to: Option<std::path::PathBuf>,
        /// Encrypt to this age public key (age1…) instead of a passphrase; repeatable.
        #[arg(long, value_name = "AGE_RECIPIENT")]
        recipient: Vec<String>,
        /// Read the export's passphrase from this open file descriptor; else $IAI_MCP_EXPORT_PASSPHRASE, else a prompt.
        #[arg(long, value_name = "N")]
        passphrase_fd: Option<i32>,
    },
    /// Add the memories of an export to this store, ids and dates kept; duplicates are recognised.
    Import {
        /// The export (an age file written by `iai-mcp export`).
        file: std::path::PathBuf,
        /// An age identity file, for an export encrypted to a key.
        #[arg(long, value_name = "FILE")]
        identity: Option<std::path::PathBuf>,
        /// Read the export's passphrase from this open file descriptor; else $IAI_MCP_EXPORT_PASSPHRASE, else a prompt.
        #[arg(long, value_name = "N")]
        passphrase_fd: Option<i32>,
    },
    /// Unlock at login, opt-in: a secret in your login keyring (Secret Service) that unlocks the store.
    Keyring {
        #[command(subcommand)]
        action: KeyringAction,
    },
    /// A systemd user service that unlocks at login from the keyring and keeps the store running.
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// A recovery code: a random code, shown once, that unlocks like the passphrase if you forget it.
    RecoveryCode {
        #[command(subcommand)]
        action: RecoveryAction,
    },
    /// The embedding model for semantic recall (a local file you install; nothing is downloaded).
    Model {
        #[command(subcommand)]
        action: ModelAction,
    },
    /// Say whether the store is locked or unlocked, with process ids and counts.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Store a memory. TEXT, or `-` (or nothing) to read it from stdin.
    Capture {
        text: Option<String>,
        #[arg(long, value_enum, default_value_t = Tier::Episodic)]
        tier: Tier,
        #[arg(long, value_enum, default_value_t = Role::User)]
        role: Role,
        /// Session id to file the memory under.
        #[arg(long)]
        session: Option<String>,
        /// A short cue that should bring this memory back.
        #[arg(long)]
        cue: Option<String>,
        /// A tag (repeatable).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// The project (directory) the memory belongs to.
        #[arg(long)]
        project: Option<String>,
        /// When it was said (RFC 3339, e.g. 2023-05-08T13:56:00Z), for imports that keep original dates.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
    /// Find the memories that best match CUE.
    Recall {
        cue: String,
        #[arg(long, default_value_t = 10)]
        limit: u32,
        #[arg(long, value_enum)]
        tier: Option<Tier>,
        #[arg(long, value_enum)]
        role: Option<Role>,
        #[arg(long)]
        session: Option<String>,
        /// Only memories of this project (directory).
        #[arg(long)]
        project: Option<String>,
        /// Print JSON.
        #[arg(long, conflicts_with = "raw")]
        json: bool,
        /// Print only the texts, byte for byte as stored, each followed by a NUL byte.
        #[arg(long)]
        raw: bool,
    },
    /// Delete a memory by id, leaving none of its bytes in the database files.
    Forget { id: String },
    /// Record that TEXT replaces memory ID; the old memory is kept and flagged as superseded.
    Contradict {
        id: String,
        /// The new fact, or `-` to read it from stdin.
        text: String,
        #[arg(long, value_enum, default_value_t = Tier::Episodic)]
        tier: Tier,
    },
    /// Strengthen memories that were useful together (2 to 32 ids).
    Reinforce {
        #[arg(required = true, num_args = 1..=32)]
        ids: Vec<String>,
    },
    /// Check that files, running processes and the kernel are as safe as designed.
    ///
    /// One line per check (PASS, WARN or FAIL, with a fix under each non-PASS).
    /// Exit status: 0 nothing failed, 1 something failed, 2 the audit could not run.
    Audit {
        /// Print JSON: {"version": 1, "home", "checks": [{"id", "status", "detail", "fix"}], "summary"}.
        #[arg(long)]
        json: bool,
    },
    /// Your history on day one: import existing transcripts, or catch up what was written while locked.
    History {
        #[command(subcommand)]
        action: HistoryAction,
    },
    /// Install, remove or show the Claude Code and Codex hooks that capture every turn.
    Hooks {
        #[command(subcommand)]
        action: HooksAction,
    },
    /// Run one hook (called by Claude Code or Codex with the hook's JSON on stdin; always exits 0).
    Hook {
        #[arg(value_enum)]
        event: HookEvent,
    },
    /// Serve MCP on stdin/stdout for an MCP host (Claude Code, Codex, …).
    Mcp {
        /// Run even if the kernel cannot enforce the sandbox (Landlock, seccomp). Not recommended.
        #[arg(long)]
        allow_degraded_sandbox: bool,
    },
    /// Show the audit trail of operations, newest first.
    Events {
        /// Only events at or after this time (RFC 3339, e.g. 2026-11-28T09:00:00Z).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, value_enum)]
        kind: Option<EventKind>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum HooksAction {
    /// Add the hooks (keeps every other setting; backs up the old file; idempotent).
    Install {
        #[arg(long, value_enum, default_value_t = Target::All)]
        target: Target,
    },
    /// Remove exactly the hooks `install` added.
    Uninstall {
        #[arg(long, value_enum, default_value_t = Target::All)]
        target: Target,
    },
    /// Show what is installed and whether the binary it runs still exists.
    Status {
        #[arg(long, value_enum, default_value_t = Target::All)]
        target: Target,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Target {
    Claude,
    Codex,
    All,
}

impl Target {
    fn hosts(self) -> Vec<crate::hooks::settings::Host> {
        crate::hooks::hosts(match self {
            Target::Claude => "claude",
            Target::Codex => "codex",
            Target::All => "all",
        })
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum HookEvent {
    /// UserPromptSubmit and Stop: capture the new turns of the transcript.
    Capture,
    /// SessionStart: print a short memory prefix for the host.
    SessionStart,
}

pub fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Audit { json } => return audit(json),
        Cmd::Hook { event } => {
            crate::hooks::run_hook(match event {
                HookEvent::Capture => "capture",
                HookEvent::SessionStart => "session-start",
            });
            return ExitCode::SUCCESS;
        }
        Cmd::Hooks { action } => {
            let r = match action {
                HooksAction::Install { target } => crate::hooks::install(&target.hosts()),
                HooksAction::Uninstall { target } => crate::hooks::uninstall(&target.hosts()),
                HooksAction::Status { target } => crate::hooks::status(&target.hosts()),
            };
            return match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("iai-mcp: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(ClientError::Locked) = e.downcast_ref::<ClientError>() {
                eprintln!("{e}");
                return ExitCode::from(3);
            }
            eprintln!("iai-mcp: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    let home = Home::from_env()?;
    match cmd {
        Cmd::Init { passphrase_fd } => {
            holds_secrets()?;
            init(&home, passphrase_fd)
        }
        Cmd::Unlock { passphrase_fd, recovery_code, keyring, foreground, allow_degraded_sandbox } => {
            holds_secrets()?;
            let secret = match (recovery_code, keyring) {
                (true, _) => SlotKind::RecoveryCode,
                (_, true) => SlotKind::Keyring,
                _ => SlotKind::Passphrase,
            };
            unlock(&home, passphrase_fd, secret, allow_degraded_sandbox, foreground)
        }
        Cmd::Service { action } => match action {
            ServiceAction::Install => crate::service::install(&home),
            ServiceAction::Uninstall => crate::service::uninstall(),
            ServiceAction::Status => crate::service::status(&home),
        },
        Cmd::Keyring { action } => {
            holds_secrets()?;
            match action {
                KeyringAction::Enable { passphrase_fd } => crate::keyring::enable(&home, passphrase_fd),
                KeyringAction::Disable => crate::keyring::disable(&home),
                KeyringAction::Status => crate::keyring::status(&home),
            }
        }
        Cmd::Lock => lock(&home),
        Cmd::Passwd { recovery_code, passphrase_fd, new_passphrase_fd } => {
            holds_secrets()?;
            crate::keys::passwd(&home, recovery_code, passphrase_fd, new_passphrase_fd)
        }
        Cmd::Rotate { passphrase_fd, recovery_code_fd, drop_recovery_code, batch, allow_degraded_sandbox } => {
            holds_secrets()?;
            let opts = crate::rotate::Options {
                passphrase_fd,
                recovery_code_fd,
                drop_recovery_code,
                batch,
                allow_degraded: allow_degraded_sandbox,
            };
            crate::rotate::rotate(&home, &opts)
        }
        Cmd::Model { action } => match action {
            ModelAction::Install { weights, tokenizer } => crate::model::install(&home, &weights, &tokenizer),
            ModelAction::Remove => crate::model::remove(&home),
            ModelAction::Status => crate::model::status(&home),
        },
        Cmd::Backup { dest } => crate::backup::backup(&home, &dest),
        Cmd::History { action } => match action {
            HistoryAction::Import { since, project, target } => {
                let since_ms = since.as_deref().map(|s| parse_day_or_time("--since", s)).transpose()?;
                let project = project
                    .map(|p| p.canonicalize().with_context(|| format!("--project {}: no such directory", p.display())))
                    .transpose()?;
                let scope = crate::hooks::history::Scope { hosts: target.hosts(), since_ms, project };
                crate::hooks::history::import(&home, &scope)
            }
            HistoryAction::CatchUp { background } => crate::hooks::history::catch_up(&home, background),
        },
        Cmd::Export { to, recipient, passphrase_fd } => {
            holds_secrets()?;
            crate::export::export(&home, to.as_deref(), &recipient, passphrase_fd)
        }
        Cmd::Import { file, identity, passphrase_fd } => {
            holds_secrets()?;
            crate::export::import(&home, &file, identity.as_deref(), passphrase_fd)
        }
        Cmd::Restore { src } => crate::backup::restore(&home, &src),
        Cmd::RecoveryCode { action } => {
            holds_secrets()?;
            match action {
                RecoveryAction::Add { passphrase_fd } => crate::keys::recovery_add(&home, passphrase_fd),
                RecoveryAction::Remove { passphrase_fd } => crate::keys::recovery_remove(&home, passphrase_fd),
                RecoveryAction::Status => crate::keys::recovery_status(&home),
            }
        }
        Cmd::Audit { .. } | Cmd::Hook { .. } | Cmd::Hooks { .. } => {
            unreachable!("handled in main for their own exit codes")
        }
        Cmd::Mcp { allow_degraded_sandbox } => start_mcp(&home, allow_degraded_sandbox),
        Cmd::Status { json } => status(&home, json),
        Cmd::Capture { text, tier, role, session, cue, tags, project, at } => {
            let text = text_arg(text)?;
            let created_at = at.as_deref().map(|s| parse_time("--at", s)).transpose()?;
            let req =
                CaptureRequest { text, cue, tier, role, session, tags, project, created_at, ..Default::default() };
            let now =
                std::time::SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
            req.validate(now).map_err(|e| anyhow!("{}; nothing was stored", e.message))?;
            let r = Client::connect(&home)?.capture(req)?;
            match r.status {
                CaptureStatus::Inserted => println!("{} inserted", r.id),
                CaptureStatus::Reinforced => {
                    println!("{} reinforced (an identical memory already existed)", r.id)
                }
            }
            Ok(())
        }
        Cmd::Recall { cue, limit, tier, role, session, project, json, raw } => {
            let req = RecallRequest { cue, limit: Some(limit), tier, role, session, project, ..Default::default() };
            let r = Client::connect(&home)?.recall_paged(req)?;
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &r)?;
                writeln!(out)?;
            } else if raw {
                for h in &r.hits {
                    out.write_all(h.text.as_bytes())?;
                    out.write_all(b"\0")?;
                }
            } else if r.hits.is_empty() {
                writeln!(out, "no memories match")?;
            } else {
                for h in &r.hits {
                    writeln!(
                        out,
                        "{}  {}  {}/{}  score {:.3}",
                        h.id,
                        date(h.created_at),
                        h.tier.name(),
                        h.role.name(),
                        h.score
                    )?;
                    if let Some(by) = &h.superseded_by {
                        writeln!(out, "    (superseded by {by})")?;
                    }
                    for line in h.text.lines() {
                        writeln!(out, "    {}", printable(line))?;
                    }
                }
            }
            Ok(())
        }
        Cmd::Forget { id } => {
            let r = Client::connect(&home)?.forget(&id)?;
            if r.erased {
                println!("{} forgotten: removed from the database and its journal", r.id);
            } else {
                println!("{} forgotten: removed from the database", r.id);
                eprintln!(
                    "iai-mcp: WARNING: the disk is full, so its old bytes stay in the database file until \
                     space is freed and the next write checkpoints it"
                );
            }
            Ok(())
        }
        Cmd::Contradict { id, text, tier } => {
            let text = text_arg(Some(text))?;
            let req = ContradictRequest { id, text, tier, ..Default::default() };
            let r = Client::connect(&home)?.contradict(req)?;
            println!("{} supersedes {}", r.id, r.supersedes);
            Ok(())
        }
        Cmd::Reinforce { ids } => {
            let r = Client::connect(&home)?.reinforce(ids)?;
            println!("reinforced {} memories together", r.ids.len());
            Ok(())
        }
        Cmd::Events { since, kind, limit, json } => {
            let since = since.as_deref().map(|s| parse_time("--since", s)).transpose()?;
            let req = EventsRequest { since, kind, limit: Some(limit) };
            let r = Client::connect(&home)?.events(req)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else if r.events.is_empty() {
                println!("no events");
            } else {
                for e in &r.events {
                    let kind = serde_json::to_value(e.kind)?;
                    println!("{}  {:<10}  {}", date(e.at), kind.as_str().unwrap_or("?"), e.records.join(" "));
                }
            }
            Ok(())
        }
    }
}

/// `iai-mcp status | head -1`: when the reader of our output goes away, stop
/// quietly as other command-line tools do (exit 141, as if by SIGPIPE), not
/// with a panic and a backtrace. Rust ignores SIGPIPE, so `println!` panics
/// on the closed pipe; SIGPIPE is left ignored on purpose, so that a write to
/// a storer that went away stays an error we report.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to std") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn audit(json: bool) -> ExitCode {
    let report = Home::from_env()
        .map_err(|e| iai_audit::AuditError(e.to_string()))
        .and_then(|home| iai_audit::run(&home, std::env::var_os(passphrase::ENV).is_some()));
    match report {
        Err(e) => {
            eprintln!("iai-mcp audit: could not run: {e}");
            ExitCode::from(2)
        }
        Ok(r) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&r.to_json()).unwrap_or_default());
            } else {
                print!("{}", r.to_text());
            }
            if r.failed() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

/// `iai-mcp mcp`: starts the connector, then becomes the shim. Both are this
/// binary re-executed with an empty environment (the host's, which may hold
/// `IAI_MCP_PASSPHRASE` or anything else, goes no further): the connector
/// gets one end of a socketpair and the storer's path; this process keeps its
/// pid and stdio for the host and becomes `__shim` with the other end.
fn start_mcp(home: &Home, allow_degraded: bool) -> Result<()> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    let (shim_end, connector_end) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
        .context("cannot create the connector's socketpair")?;
    inheritable(&connector_end)?;
    let mut connector = Command::new("/proc/self/exe");
    connector.arg("__connector").arg("--home").arg(home.root());
    connector.arg("--connector-fd").arg(connector_end.as_raw_fd().to_string());
    if allow_degraded {
        connector.arg("--allow-degraded-sandbox");
    }
    connector.env_clear().stdin(Stdio::null()).stdout(Stdio::null()).spawn().context("cannot start the connector")?;
    drop(connector_end);
    inheritable(&shim_end)?;
    let mut shim = Command::new("/proc/self/exe");
    shim.arg("__shim").arg("--home").arg(home.root());
    shim.arg("--connector-fd").arg(shim_end.as_raw_fd().to_string());
    if allow_degraded {
        shim.arg("--allow-degraded-sandbox");
    }
    // Only returns on failure.
    let err = shim.env_clear().exec();
    Err(err).context("cannot start the MCP server")
}

fn inheritable(fd: &std::os::fd::OwnedFd) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).context("cannot pass a descriptor to a child")?;
    Ok(())
}

/// The `__shim` role: locked down before its runtime or any thread exists.
/// It parses the host's input and needs no file and no socket of its own.
pub fn shim_role(_home: Home, connector_fd: i32, opts: iai_policy::Options) -> i32 {
    let connector = match iai_storer::connector::Connector::adopt(connector_fd) {
        Ok(c) => c,
        Err(e) => {
            iai_policy::log!("iai-mcp mcp: the connector's descriptor: {e}");
            return 2;
        }
    };
    match iai_policy::apply(&iai_policy::Sandbox::shim(), &[connector_fd], opts) {
        Ok(applied) => {
            for d in &applied.degraded {
                iai_policy::log!("iai-mcp mcp: WARNING: sandbox degraded: {d}");
            }
        }
        Err(e) => {
            iai_policy::log!("iai-mcp mcp: the MCP server refuses to start without its sandbox: {e}");
            return 1;
        }
    }
    iai_shim::run(connector)
}

/// `init` and `unlock` hold the passphrase (and `init` the new data key):
/// from here on this process cannot be traced or read through `/proc` by
/// other processes of the user, and never writes a core dump.
fn holds_secrets() -> Result<()> {
    iai_policy::harden_process().context("cannot protect this process while it holds the passphrase")
}

/// An RFC 3339 time as milliseconds since the epoch.
/// A day (`2026-01-31`, midnight UTC) or an RFC 3339 time.
fn parse_day_or_time(flag: &str, s: &str) -> Result<i64> {
    let t = s.trim();
    if t.len() == 10 && t.as_bytes()[4] == b'-' && t.as_bytes()[7] == b'-' {
        return parse_time(flag, &format!("{t}T00:00:00Z"));
    }
    parse_time(flag, t)
}

fn parse_time(flag: &str, s: &str) -> Result<i64> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| anyhow!("{flag} {s:?}: {e} (use e.g. 2026-11-28T09:00:00Z)"))
        .map(|t| t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0))
}

/// The text argument, or stdin for `-` or none.
fn text_arg(text: Option<String>) -> Result<String> {
    match text.as_deref() {
        Some("-") | None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .take(iai_storer::proto::MAX_TEXT as u64 + 1)
                .read_to_end(&mut buf)
                .context("cannot read the memory from stdin")?;
            if buf.len() > iai_storer::proto::MAX_TEXT {
                bail!(
                    "the memory on stdin is more than {} bytes, the maximum; nothing was stored",
                    iai_storer::proto::MAX_TEXT
                );
            }
            String::from_utf8(buf).map_err(|_| anyhow!("the text on stdin is not valid UTF-8"))
        }
        Some(_) => Ok(text.unwrap_or_default()),
    }
}

/// Shows every character the one neutraliser counts as hidden (controls,
/// format and default-ignorable characters, separators) as a visible
/// `\u{…}` escape on the terminal; the rest is printed as it is.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if iai_shim::is_hidden(c) || c == '\t' { c.escape_unicode().to_string() } else { c.to_string() })
        .collect()
}

fn date(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Creates `dir` with mode 0700, or checks an existing one is ours and not a link.
fn ensure_private_dir(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => {
            bail!("{} is a symbolic link; iai-mcp needs a real directory", dir.display())
        }
        Ok(m) if !m.is_dir() => bail!("{} exists and is not a directory", dir.display()),
        Ok(m) => {
            let me = nix::unistd::getuid().as_raw();
            if m.uid() != me {
                bail!("{} is owned by uid {}, not by you (uid {me})", dir.display(), m.uid());
            }
            if m.mode() & 0o777 != 0o700 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .with_context(|| format!("cannot make {} private (chmod 700)", dir.display()))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            DirBuilder::new().mode(0o700).create(dir).with_context(|| format!("cannot create {}", dir.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot inspect {}", dir.display())),
    }
}

/// The home and its `store/` and `run/`, private (0700), created if missing.
pub(crate) fn ensure_home_dirs(home: &Home) -> Result<()> {
    for dir in [home.root().to_path_buf(), home.store_dir(), home.run_dir()] {
        ensure_private_dir(&dir)?;
    }
    Ok(())
}

fn init(home: &Home, passphrase_fd: Option<i32>) -> Result<()> {
    let key = home.key();
    if std::fs::symlink_metadata(&key).is_ok() {
        bail!(
            "{} already exists; iai-mcp never overwrites a key file. To start over, lock, move the whole directory away, then init",
            key.display()
        );
    }
    ensure_home_dirs(home)?;
    let pass = passphrase::obtain(passphrase_fd, true)?;
    let (kf, _dek) = KeyFile::create(&pass, KdfParams::DEFAULT).map_err(|e| match e {
        KeyFileError::PassphraseTooShort => {
            anyhow!("the passphrase is too short: use at least 8 characters")
        }
        other => anyhow!("cannot create the key: {other}"),
    })?;
    drop(pass);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&key)
        .with_context(|| format!("cannot create {}", key.display()))?;
    f.write_all(&kf.to_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", key.display()))?;
    std::fs::File::open(home.root()).and_then(|d| d.sync_all()).ok();
    println!("initialised {}; run `iai-mcp unlock` to start", home.root().display());
    Ok(())
}

/// Longest time `unlock` waits for the daemon pair (Argon2 plus loading a large store).
const UNLOCK_TIMEOUT: Duration = Duration::from_secs(300);

fn unlock(
    home: &Home,
    passphrase_fd: Option<i32>,
    secret: SlotKind,
    allow_degraded: bool,
    foreground: bool,
) -> Result<()> {
    if std::fs::symlink_metadata(home.key()).is_err() {
        bail!("{} is not initialised: run `iai-mcp init` first", home.root().display());
    }
    // The same check `audit` reports: nothing it would FAIL is ever used.
    let problems = iai_policy::home_check::check(home, nix::unistd::getuid().as_raw());
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| format!("  {}\n    fix: {}", p.what, p.fix)).collect();
        bail!("refusing to unlock a home that is not safe to use; nothing was started:\n{}", list.join("\n"));
    }
    if let Ok(mut c) = Client::connect(home) {
        if let Ok(s) = c.set_timeout(ANSWER_WITHIN).and_then(|()| c.stats()) {
            println!("iai-mcp is already unlocked (storer pid {}, {} memories)", s.storer_pid, s.records);
            if foreground {
                // Not our child: stay until it is gone.
                while procs::alive(s.storer_pid) {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            return Ok(());
        }
    }
    if let Some(r) = procs::running(home) {
        bail!(
            "iai-mcp is already running (storer pid {}) but does not answer; run `iai-mcp lock` to stop it, then unlock",
            r.storer
        );
    }
    let pass = match secret {
        SlotKind::RecoveryCode => passphrase::obtain_recovery_code(passphrase_fd)?,
        SlotKind::Keyring => crate::keyring::fetch(home).map_err(|e| anyhow!("{e:#}; the store stays locked"))?,
        _ => passphrase::obtain(passphrase_fd, false)?,
    };
    let keyholder = start_pair(home, pass, secret, allow_degraded)?;
    if !foreground {
        return Ok(());
    }
    let Some(mut keyholder) = keyholder else {
        // Another unlock won the race: stay while its pair runs.
        while procs::running(home).is_some() {
            std::thread::sleep(Duration::from_secs(1));
        }
        return Ok(());
    };
    let status = keyholder.wait().context("cannot wait for the keyholder")?;
    if status.success() {
        println!("the store was locked; exiting");
        return Ok(());
    }
    bail!(
        "the daemon pair stopped by itself ({}); see {}",
        unexpected_end(home).unwrap_or_else(|| format!("keyholder {status}")),
        home.log_file().display()
    )
}

/// Starts the keyholder (which starts the storer) with `pass`; returns once
/// the storer serves, with the keyholder (the caller may wait for it; none
/// when another unlock started the pair first).
pub(crate) fn start_pair(
    home: &Home,
    pass: Passphrase,
    secret: SlotKind,
    allow_degraded: bool,
) -> Result<Option<std::process::Child>> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(home.log_file())
        .with_context(|| format!("cannot open the daemon log {}", home.log_file().display()))?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("__keyholder").arg("--home").arg(home.root());
    match secret {
        SlotKind::RecoveryCode => {
            cmd.arg("--recovery-code");
        }
        SlotKind::Keyring => {
            cmd.arg("--keyring");
        }
        _ => {}
    }
    if allow_degraded {
        cmd.arg("--allow-degraded-sandbox");
    }
    let mut child = cmd
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        // Its own process group: the daemon outlives this terminal command.
        .process_group(0)
        .spawn()
        .context("cannot start the keyholder")?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("keyholder stdin missing"))?;
    let wrote = stdin.write_all(pass.expose());
    drop(stdin);
    drop(pass);
    wrote.context("cannot hand the passphrase to the keyholder")?;

    let stdout = child.stdout.take().ok_or_else(|| anyhow!("keyholder stdout missing"))?;
    let line = read_line_with_timeout(stdout, UNLOCK_TIMEOUT)?;
    match line.as_deref().and_then(startup::parse) {
        Some(Startup::Ready { storer_pid }) => {
            let stats = Client::connect(home)?.stats().context("the storer started but does not answer")?;
            if stats.storer_pid != storer_pid {
                bail!("another storer answered on the socket (pid {}, expected {storer_pid})", stats.storer_pid);
            }
            println!(
                "unlocked: {} memories (storer pid {}, keyholder pid {})",
                stats.records, stats.storer_pid, stats.keyholder_pid
            );
            for d in &stats.degraded {
                eprintln!("iai-mcp: WARNING: sandbox degraded: {d}");
            }
            start_catch_up(home);
            Ok(Some(child))
        }
        Some(Startup::Failed { stage, message }) => {
            let _ = child.wait();
            match stage.as_str() {
                "passphrase" => bail!("{message}; the store stays locked"),
                "busy" if procs::running(home).is_some() => {
                    println!("{message}");
                    Ok(None)
                }
                "busy" => {
                    let holder = iai_policy::home_check::flock_holder(&home.pid_file())
                        .map(|p| format!(" (pid {p})"))
                        .unwrap_or_default();
                    bail!(
                        "{} is locked by a process that is not this home's iai-mcp storer{holder}; nothing was \
                         started. Stop that process, or remove the file if no iai-mcp runs",
                        home.pid_file().display()
                    )
                }
                _ => bail!("unlock failed ({stage}): {message}"),
            }
        }
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the daemon exited without saying why; see {}", home.log_file().display())
        }
    }
}

/// Starts the background catch-up of transcripts written while the store was
/// locked, when a host has capture hooks; `unlock` does not wait for it.
fn start_catch_up(home: &Home) {
    let Ok(user_home) = crate::hooks::user_home() else { return };
    if crate::hooks::history::hosts_with_hooks(&user_home).is_empty() {
        return;
    }
    let spawned = Command::new("/proc/self/exe")
        .args(["history", "catch-up", "--background"])
        .env("IAI_MCP_HOME", home.root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    match spawned {
        Ok(_) => println!(
            "catching up, in the background, the transcripts written while locked (`iai-mcp status` says when it is done)"
        ),
        Err(e) => eprintln!(
            "iai-mcp: WARNING: could not start the catch-up of transcripts written while locked ({e}); run \
             `iai-mcp history catch-up`"
        ),
    }
}

fn read_line_with_timeout(pipe: std::process::ChildStdout, timeout: Duration) -> Result<Option<String>> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + timeout;
    {
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX);
        if poll(&mut fds, ms)? == 0 {
            bail!("the daemon did not start within {} s", timeout.as_secs());
        }
    }
    let mut line = String::new();
    let n = BufReader::new(pipe).take(64 * 1024).read_line(&mut line)?;
    Ok(if n == 0 { None } else { Some(line) })
}

/// How long `lock` and `status` wait for the storer to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// How long `lock` waits for the pair to exit before killing it.
const STOP_GRACE: Duration = Duration::from_secs(5);

pub(crate) fn lock(home: &Home) -> Result<()> {
    let running = procs::running(home);
    let answered = match Client::connect(home) {
        Ok(mut c) => {
            c.set_timeout(ANSWER_WITHIN)?;
            // The kernel names the pids; ask the storer only when it cannot
            // (stats waits behind a request stuck on a hung keyholder).
            let pids = match running {
                Some(_) => None,
                None => c.stats().ok().map(|s| (s.storer_pid, s.keyholder_pid)),
            };
            match c.shutdown() {
                Ok(_) => Ok(pids),
                Err(e) => Err(e.to_string()),
            }
        }
        Err(ClientError::Locked) if running.is_none() => {
            println!("iai-mcp is already locked");
            return Ok(());
        }
        Err(e) => Err(e.to_string()),
    };
    // Which processes must be gone: what the kernel says, else what the storer said.
    let (storer, keyholder) = match (running, &answered) {
        (Some(r), _) => (Some(r.storer), r.keyholder),
        (None, Ok(Some((s, k)))) => (Some(*s), Some(*k)),
        _ => (None, None),
    };
    let pids: Vec<u32> = storer.into_iter().chain(keyholder).collect();
    // A storer that acknowledged gets the grace period; one that did not
    // answer has already had its chance.
    let grace = if answered.is_ok() { STOP_GRACE } else { Duration::from_millis(200) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && pids.iter().any(|&p| procs::alive(p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<u32> = pids.iter().copied().filter(|&p| procs::alive(p)).collect();
    if left.is_empty() {
        if answered.is_err() && pids.is_empty() {
            bail!(
                "could not reach the storer ({}) and found no iai-mcp process to stop",
                answered.err().unwrap_or_default()
            );
        }
        note_in_log(home, "cli: locked");
        println!("locked");
        return Ok(());
    }
    let why = match &answered {
        Ok(_) => format!("it was asked to stop but did not exit within {} s", STOP_GRACE.as_secs()),
        Err(e) => format!("it did not answer ({e})"),
    };
    for &pid in &left {
        let role = if Some(pid) == storer { "__storer" } else { "__keyholder" };
        // Only a process that is still this home's role: a pid can be reused.
        if procs::is_role(pid, role, home.root()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && left.iter().any(|&p| procs::alive(p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let still: Vec<String> = left.iter().filter(|&&p| procs::alive(p)).map(u32::to_string).collect();
    if !still.is_empty() {
        bail!("the daemon is hung ({why}) and pid(s) {} survived SIGKILL", still.join(", "));
    }
    let shown: Vec<String> = left.iter().map(u32::to_string).collect();
    note_in_log(home, &format!("cli: locked (the daemon was hung: {why}; stopped with SIGKILL)"));
    println!(
        "locked: the daemon was hung ({why}); stopped pid(s) {} with SIGKILL (the key left memory with them)",
        shown.join(", ")
    );
    Ok(())
}

/// The catch-up after the last unlock: running, or its summary.
fn last_catch_up(home: &Home) -> Option<String> {
    let running = std::fs::read_dir("/proc").ok()?.flatten().any(|e| {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        args.windows(3).any(|w| w == [&b"history"[..], b"catch-up", b"--background"])
            && std::fs::read(e.path().join("environ")).is_ok_and(|env| {
                env.split(|b| *b == 0).any(|v| v == format!("IAI_MCP_HOME={}", home.root().display()).as_bytes())
            })
    });
    if running {
        return Some("catching up transcripts written while locked (in the background)".into());
    }
    // The log's tail only: it grows with every hook run.
    let mut f = std::fs::File::open(home.run_dir().join("hooks.log")).ok()?;
    let len = f.metadata().ok()?.len();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(len.saturating_sub(64 * 1024))).ok()?;
    let mut tail = Vec::new();
    f.take(64 * 1024).read_to_end(&mut tail).ok()?;
    let log = String::from_utf8_lossy(&tail);
    let last = log.lines().rev().find(|l| l.contains(" catch-up: "))?;
    Some(format!("last catch-up of transcripts: {}", printable(last)))
}

/// Whether recall understands meaning, in a line.
fn semantic_line(i: &iai_storer::proto::IndexStats) -> String {
    match (&i.model, &i.model_error) {
        (_, Some(why)) => format!(
            "semantic recall: OFF, the installed model cannot be used ({}); recall uses words only. \
             Reinstall it with `iai-mcp model install`",
            printable(why)
        ),
        (Some(m), None) if i.missing_vectors > 0 => format!(
            "semantic recall: on (model {}, {} values); {} memories get their vectors at the next unlock",
            m.id, m.dim, i.missing_vectors
        ),
        (Some(m), None) => format!("semantic recall: on (model {}, {} values)", m.id, m.dim),
        (None, None) => "semantic recall: off (no model installed; see `iai-mcp model install`)".into(),
    }
}

/// How the last unlock loaded the recall index, in a line.
fn index_line(i: &iai_storer::proto::IndexStats) -> String {
    let how = if i.from_snapshot {
        format!("loaded from its sealed snapshot in {} ms ({} memories checked one by one)", i.load_ms, i.checked)
    } else {
        format!("rebuilt from every memory in {} ms", i.load_ms)
    };
    let mut line = format!("index: {how}");
    if let Some(why) = &i.snapshot_not_used {
        line.push_str(&format!("; the snapshot was not used: {}", printable(why)));
    }
    if let Some(why) = &i.snapshot_off {
        line.push_str(&format!("; no new snapshot is written in this session: {}", printable(why)));
    } else if let Some(why) = &i.snapshot_error {
        line.push_str(&format!(
            "; the last snapshot could not be written ({}): the next unlock takes longer",
            printable(why)
        ));
    }
    line
}

/// Says when a key rotation is unfinished (the key file still holds the old key).
fn rotation_note(home: &Home, s: &iai_storer::proto::Stats) -> Option<String> {
    let file = crate::backup::read_key(&home.key()).ok().and_then(|b| KeyFile::parse(&b).ok())?;
    file.previous_id()?;
    Some(if s.previous_key_id.is_some() {
        format!(
            "NOTE: a key rotation is unfinished: {} values are still under the old key; run `iai-mcp rotate` to finish it",
            s.old_key_values
        )
    } else {
        "NOTE: a key rotation is unfinished (the running pair does not use the new key yet); run `iai-mcp rotate` to \
         finish it"
            .to_string()
    })
}

/// Appends a line to the daemon log (so `status` can tell a lock from a crash).
fn note_in_log(home: &Home, line: &str) {
    let secs = std::time::SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if let Ok(mut f) = OpenOptions::new()
        .append(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(home.log_file())
    {
        if f.metadata().is_ok_and(|m| m.is_file()) {
            let _ = writeln!(f, "{} {line}", iai_policy::log::utc(secs));
        }
    }
}

/// How the last session ended, if not by `lock`: read from the daemon log,
/// where the keyholder records how its storer ended.
fn unexpected_end(home: &Home) -> Option<String> {
    use std::io::{Seek, SeekFrom};
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(home.log_file())
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024))).ok()?;
    let mut tail = Vec::new();
    f.take(64 * 1024).read_to_end(&mut tail).ok()?;
    let tail = String::from_utf8_lossy(&tail);
    let mut last: Option<String> = None;
    for line in tail.lines() {
        if line.contains("storer: ready") || line.contains("cli: locked") || line.contains("lock requested") {
            last = None;
        } else if let Some(i) = line.find(iai_keyholder::daemon::SESSION_ENDED) {
            let how = &line[i + iai_keyholder::daemon::SESSION_ENDED.len()..];
            last = (how != "exited normally")
                .then(|| format!("the storer {how} ({})", line.split_whitespace().next().unwrap_or("?")));
        } else if line.contains("the keyholder has gone away") {
            last =
                Some(format!("the keyholder stopped unexpectedly ({})", line.split_whitespace().next().unwrap_or("?")));
        }
    }
    last
}

/// What `status` reports when the storer cannot answer for itself.
fn unanswered_state(running: Option<procs::Running>, socket: bool, why: &str) -> (&'static str, String) {
    match running {
        Some(r) if socket => (
            "unresponsive",
            format!(
                "unlocked but not answering ({why}): storer pid {}{}; `iai-mcp lock` stops it",
                r.storer,
                r.keyholder.map(|k| format!(", keyholder pid {k}")).unwrap_or_default()
            ),
        ),
        Some(r) => ("changing", format!("starting or stopping (storer pid {})", r.storer)),
        None => ("locked", "locked".to_string()),
    }
}

fn locked_text(home: &Home) -> (String, Option<String>) {
    match unexpected_end(home) {
        Some(why) => (
            format!(
                "locked: the last session did not end by `iai-mcp lock`: {why}; nothing is being captured. \
                 Run `iai-mcp unlock`; details in {}",
                home.log_file().display()
            ),
            Some(why),
        ),
        None => ("locked".to_string(), None),
    }
}

fn status(home: &Home, json: bool) -> Result<()> {
    let running = procs::running(home);
    let answer = match Client::connect(home) {
        Ok(mut c) => c.set_timeout(ANSWER_WITHIN).and_then(|()| c.stats()).map(Some),
        Err(ClientError::Locked) => Ok(None),
        Err(e) => Err(e),
    };
    let stats = match answer {
        Ok(Some(s)) => s,
        Ok(None) | Err(_) => {
            let why = match &answer {
                Err(e) => e.to_string(),
                _ => "no socket".to_string(),
            };
            let socket = home.socket().exists() && answer.is_err();
            let (state, mut text) = unanswered_state(running, socket, &why);
            let mut ended = None;
            if state == "locked" {
                (text, ended) = locked_text(home);
            }
            if json {
                let mut v = serde_json::json!({"state": state, "home": home.root()});
                if let Some(why) = ended {
                    v["unexpected_end"] = why.into();
                }
                if let Some(r) = running {
                    v["storer_pid"] = r.storer.into();
                    v["keyholder_pid"] = r.keyholder.into();
                }
                if state != "locked" {
                    v["detail"] = text.into();
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{text} ({})", home.root().display());
            }
            return Ok(());
        }
    };
    if json {
        let mut v = serde_json::to_value(&stats)?;
        v["unencrypted_swap"] = serde_json::to_value(iai_policy::swap::unencrypted())?;
        v["state"] = "unlocked".into();
        v["home"] = serde_json::to_value(home.root())?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let s = stats;
    println!("unlocked ({})", home.root().display());
    println!("  storer pid {}, keyholder pid {}", s.storer_pid, s.keyholder_pid);
    let tiers: Vec<String> = s.per_tier.iter().map(|t| format!("{} {}", t.tier.name(), t.records)).collect();
    println!("  memories: {} ({})", s.records, tiers.join(", "));
    println!("  store size: {} bytes", s.store_bytes);
    println!("  {}", index_line(&s.index));
    println!("  {}", semantic_line(&s.index));
    println!(
        "  seals: {} of at most {} for this key ({})",
        s.seal_count,
        s.seal_limit,
        s.key_id.get(..8).unwrap_or("unknown")
    );
    if let Some(note) = rotation_note(home, &s) {
        println!("  {note}");
    }
    if let Some(line) = last_catch_up(home) {
        println!("  {line}");
    }
    if !s.memory_locked {
        let swaps = iai_policy::swap::unencrypted();
        if !swaps.is_empty() {
            println!(
                "  WARNING: unencrypted swap is on ({}) and the storer's memory is not locked (memlock limit): \
                 memories it holds while unlocked may be written to that disk; encrypt swap or raise the limit",
                swaps.join(", ")
            );
        }
    }
    if s.disk_full {
        println!(
            "  WARNING: the disk holding the store is full: new memories are NOT being stored until space is freed"
        );
    }
    if s.integrity_problems > 0 {
        println!(
            "  WARNING: the store's files were changed outside iai-mcp: {} problems found, {} memories left out of \
             recall; what was changed is not trusted:",
            s.integrity_problems, s.unreadable
        );
        for p in &s.integrity {
            println!("    - {}", printable(p));
        }
        let more = s.integrity_problems.saturating_sub(s.integrity.len() as u64);
        if more > 0 {
            println!("    - and {more} more (see {})", home.root().join("run/daemon.log").display());
        }
    } else if s.unreadable > 0 {
        println!("  WARNING: {} records did not authenticate and are not served", s.unreadable);
    }
    for d in &s.degraded {
        println!("  WARNING: sandbox degraded: {d}");
    }
    Ok(())
}
