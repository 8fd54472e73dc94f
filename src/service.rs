//! `iai-mcp service install|uninstall|status`: a systemd user unit that
//! unlocks the store at login from the keyring slot and keeps the daemon pair
//! running, hardened with every directive our own sandbox tolerates.
//!
//! The unit file is ours alone: it ends with a checksum of what `install`
//! wrote, so `uninstall` removes it only while it is exactly that, and
//! `install` never writes over a file that is not. A user's changes belong in
//! a drop-in (`systemctl --user edit iai-mcp`), which we never touch.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use iai_keyholder::keyfile::SlotKind;
use iai_keyholder::KeyFile;
use iai_policy::Home;
use sha2::{Digest, Sha256};

pub const UNIT_NAME: &str = "iai-mcp.service";
const MARKER: &str = "# Written by `iai-mcp service install`; `iai-mcp service uninstall` removes it.";
const CHECKSUM: &str = "# iai-mcp sha256 ";

/// Where user units live: `$XDG_CONFIG_HOME/systemd/user`, else `~/.config/systemd/user`.
fn unit_dir() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("systemd/user"));
    }
    Ok(crate::hooks::user_home()?.join(".config/systemd/user"))
}

/// The unit for this binary and home. Every directive below was chosen
/// against what the roles do (see SECURITY.md, "The user service").
pub fn unit_text(bin: &Path, home: &Home) -> String {
    let bin = bin.display();
    let root = home.root().display();
    let body = format!(
        "{MARKER}
# Put your own changes in a drop-in (systemctl --user edit iai-mcp), not here.
[Unit]
Description=iai-mcp encrypted memory store, unlocked at login from the keyring
After=dbus.socket
Wants=dbus.socket

[Service]
Type=exec
ExecStart={bin} unlock --keyring --foreground
ExecStop={bin} lock
Environment=IAI_MCP_HOME={root}
Restart=on-failure
RestartSec=5
UMask=0077
# The roles drop these themselves; systemd makes sure of it from the start.
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
# Files: everything read-only but the store's home; transcripts are read.
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths={root}
PrivateTmp=yes
PrivateMounts=yes
PrivateDevices=yes
DevicePolicy=closed
# Network: none. The keyring is reached over the D-Bus session bus, a Unix
# socket on the filesystem, which these leave alone.
PrivateNetwork=yes
IPAddressDeny=any
RestrictAddressFamilies=AF_UNIX
PrivateUsers=yes
PrivateIPC=yes
RemoveIPC=yes
KeyringMode=private
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
SystemCallArchitectures=native
# The roles install their own, narrower seccomp filters and Landlock rules:
# the calls that do so must stay allowed here.
SystemCallFilter=@system-service landlock_create_ruleset landlock_add_rule landlock_restrict_self seccomp
SystemCallFilter=~@obsolete @debug @mount @reboot @swap @cpu-emulation @clock @module @raw-io
SystemCallErrorNumber=EPERM

[Install]
WantedBy=default.target
"
    );
    let sum = hex(&Sha256::digest(body.as_bytes()));
    format!("{body}{CHECKSUM}{sum}\n")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether `text` is a unit `install` wrote and nobody changed since.
fn unchanged(text: &str) -> bool {
    let Some((body, last)) = text.trim_end_matches('\n').rsplit_once('\n') else { return false };
    let Some(sum) = last.strip_prefix(CHECKSUM) else { return false };
    text.starts_with(MARKER) && hex(&Sha256::digest(format!("{body}\n").as_bytes())) == sum
}

fn bin() -> Result<PathBuf> {
    std::env::current_exe().and_then(|p| p.canonicalize()).context("cannot find this binary's path")
}

/// A path the unit can hold as it is: systemd splits these settings at
/// spaces, expands `%` specifiers and unescapes backslashes, so a path with
/// any of those (or a quote, or a control character) would mean another path.
fn plain_path(what: &str, p: &Path) -> Result<()> {
    let s =
        p.to_str().with_context(|| format!("{what} {} is not UTF-8; a systemd unit cannot name it", p.display()))?;
    if let Some(c) =
        s.chars().find(|c| c.is_whitespace() || c.is_control() || matches!(c, '%' | '\\' | '"' | '\'' | '$' | ';'))
    {
        bail!(
            "{what} {s} contains {c:?}, which a systemd unit would read differently; move it to a path without it \
             (nothing was installed)"
        );
    }
    Ok(())
}

pub fn install(home: &Home) -> Result<()> {
    let bin = bin()?;
    plain_path("the binary", &bin)?;
    plain_path("the home", home.root())?;
    let key = crate::backup::read_key(&home.key())
        .with_context(|| format!("{} is not initialised (run `iai-mcp init`)", home.root().display()))?;
    let file = KeyFile::parse(&key).context("the key file does not parse")?;
    if file.slot(SlotKind::Keyring).is_none() {
        bail!(
            "the service unlocks from your keyring, which is not enabled for this store: run `iai-mcp keyring \
             enable` first; nothing was installed"
        );
    }
    let dir = unit_dir()?;
    let path = dir.join(UNIT_NAME);
    let text = unit_text(&bin, home);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if !m.is_file() => bail!("{} is not a regular file; nothing was installed", path.display()),
        Ok(_) => {
            let old = std::fs::read_to_string(&path).unwrap_or_default();
            if old == text {
                println!("already installed: {}", path.display());
                return Ok(());
            }
            if unchanged(&old) {
                // Ours, for another binary path or home: replaced.
                println!("replacing the unit an earlier install wrote");
            } else if old.starts_with(MARKER) {
                bail!(
                    "{} was changed since `iai-mcp service install` wrote it; put your changes in a drop-in \
                     (systemctl --user edit iai-mcp) instead, move the file away, and install again; nothing was \
                     changed",
                    path.display()
                );
            } else {
                bail!("{} exists and was not written by iai-mcp; nothing was changed", path.display());
            }
        }
        Err(_) => {}
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".{UNIT_NAME}.iai-mcp-partial"));
    let _ = std::fs::remove_file(&tmp);
    crate::backup::write_new_mode(&tmp, text.as_bytes(), 0o644)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot install {}", path.display()))?;
    println!("installed {}", path.display());
    println!("start it now and at every login with:");
    println!("  systemctl --user daemon-reload && systemctl --user enable --now {UNIT_NAME}");
    Ok(())
}

pub fn uninstall() -> Result<()> {
    let path = unit_dir()?.join(UNIT_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("not installed ({} does not exist)", path.display());
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if !unchanged(&text) {
        bail!(
            "{} is not exactly what `iai-mcp service install` wrote (it was changed, or is not ours), so it is \
             left as it is; remove it yourself if you mean to",
            path.display()
        );
    }
    std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    println!("removed {}", path.display());
    println!("stop it and forget it with: systemctl --user disable --now {UNIT_NAME}; systemctl --user daemon-reload");
    let dropins = path.with_file_name(format!("{UNIT_NAME}.d"));
    if dropins.exists() {
        println!("your drop-ins in {} are yours and were left alone", dropins.display());
    }
    Ok(())
}

pub fn status(home: &Home) -> Result<()> {
    let path = unit_dir()?.join(UNIT_NAME);
    match std::fs::read_to_string(&path) {
        Err(_) => println!("not installed ({})", path.display()),
        Ok(t) if t == unit_text(&bin()?, home) => println!("installed: {}", path.display()),
        Ok(t) if unchanged(&t) => {
            println!("installed for another binary or home: {} (`iai-mcp service install` updates it)", path.display())
        }
        Ok(_) => println!("{} was changed by hand (or is not ours)", path.display()),
    }
    let active = std::process::Command::new("systemctl").args(["--user", "is-active", UNIT_NAME]).output();
    match active {
        Ok(o) if !o.stdout.is_empty() => {
            println!("systemd says: {}", String::from_utf8_lossy(&o.stdout).trim());
        }
        _ => println!("systemd's user manager is not reachable from here"),
    }
    Ok(())
}
