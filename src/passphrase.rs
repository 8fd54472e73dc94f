//! Where a passphrase comes from, in order: `--passphrase-fd N`, the
//! `IAI_MCP_PASSPHRASE` environment variable (weaker: other processes of the
//! user may read it), then a no-echo prompt on the terminal.

use std::io::Read;

use anyhow::{bail, Context, Result};
use iai_keyholder::keyfile::{MAX_PASSPHRASE_BYTES, MIN_PASSPHRASE_CHARS};
use iai_keyholder::Passphrase;
use zeroize::Zeroizing;

pub const ENV: &str = "IAI_MCP_PASSPHRASE";
/// `iai-mcp passwd`'s new passphrase, for automation.
pub const NEW_ENV: &str = "IAI_MCP_NEW_PASSPHRASE";
/// A recovery code, for automation.
pub const RECOVERY_ENV: &str = "IAI_MCP_RECOVERY_CODE";

/// Gets the passphrase. With `new`, it is checked for length and, when
/// prompted, asked twice.
pub fn obtain(fd: Option<i32>, new: bool) -> Result<Passphrase> {
    obtain_from(fd, ENV, new)
}

/// Gets `passwd`'s new passphrase: `--new-passphrase-fd N`, then
/// `IAI_MCP_NEW_PASSPHRASE`, then a prompt (twice).
pub fn obtain_new(fd: Option<i32>) -> Result<Passphrase> {
    obtain_from(fd, NEW_ENV, true)
}

/// Gets a recovery code (`--passphrase-fd N`, `IAI_MCP_RECOVERY_CODE`, a
/// prompt), normalised: case, spaces and dashes do not matter, and letters
/// that look like digits (O, I, L) are read as the digits.
pub fn obtain_recovery_code(fd: Option<i32>) -> Result<Passphrase> {
    obtain_recovery_code_from(fd, "--passphrase-fd")
}

/// [`obtain_recovery_code`], the descriptor given by the option `flag`.
pub fn obtain_recovery_code_from(fd: Option<i32>, flag: &str) -> Result<Passphrase> {
    let raw = if let Some(fd) = fd {
        from_fd(fd, flag)?
    } else if let Some(v) = take_env(RECOVERY_ENV) {
        v
    } else {
        let code = rpassword::prompt_password("Recovery code: ").map(Zeroizing::new).map_err(|_| {
            anyhow::anyhow!("no recovery code given: run in a terminal, pass {flag} N, or set {RECOVERY_ENV}")
        })?;
        Passphrase::from_slice(code.as_bytes())
    };
    crate::keys::normalize_recovery_code(raw.expose())
}

fn take_env(name: &str) -> Option<Passphrase> {
    let v = std::env::var_os(name)?;
    // Children never see it: every role is started with a cleared environment.
    std::env::remove_var(name);
    Some(Passphrase::new(std::os::unix::ffi::OsStringExt::into_vec(v)))
}

fn obtain_from(fd: Option<i32>, env: &str, new: bool) -> Result<Passphrase> {
    let pass = if let Some(fd) = fd {
        from_fd(fd, "--passphrase-fd")?
    } else if let Some(v) = take_env(env) {
        v
    } else {
        prompt(new)?
    };
    if pass.expose().is_empty() {
        bail!("the passphrase is empty");
    }
    if pass.expose().len() > MAX_PASSPHRASE_BYTES {
        bail!("the passphrase is longer than {MAX_PASSPHRASE_BYTES} bytes");
    }
    if new && pass.chars() < MIN_PASSPHRASE_CHARS {
        bail!("the passphrase is too short: use at least {MIN_PASSPHRASE_CHARS} characters");
    }
    Ok(pass)
}

/// Reads the first line from descriptor `fd` (a pipe or file the caller opened).
fn from_fd(fd: i32, flag: &str) -> Result<Passphrase> {
    let file = crate::sys::dup_inherited(fd).with_context(|| format!("{flag} {fd}: descriptor is not open"))?;
    // Stop at the first newline: a pipe that stays open must not block us.
    // A fixed buffer: a growing one would leave unwiped copies behind.
    let mut buf = Zeroizing::new([0u8; MAX_PASSPHRASE_BYTES + 2]);
    let mut len = 0;
    let mut file = file;
    while len < buf.len() && !buf[..len].contains(&b'\n') {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("{flag} {fd}: cannot read")),
        }
    }
    let mut end = buf[..len].iter().position(|&b| b == b'\n').unwrap_or(len);
    if end > 0 && buf[end - 1] == b'\r' {
        end -= 1;
    }
    Ok(Passphrase::from_slice(&buf[..end]))
}

fn prompt(new: bool) -> Result<Passphrase> {
    let ask = |label: &str| -> Result<Zeroizing<String>> {
        rpassword::prompt_password(label).map(Zeroizing::new).map_err(|_| {
            anyhow::anyhow!(
                "no passphrase given: run in a terminal, pass --passphrase-fd N, or set {ENV} (weaker; for automation)"
            )
        })
    };
    let first = ask(if new { "New passphrase: " } else { "Passphrase: " })?;
    if new {
        let second = ask("Repeat passphrase: ")?;
        if *first != *second {
            bail!("the two passphrases differ; nothing was changed");
        }
    }
    Ok(Passphrase::from_slice(first.as_bytes()))
}
