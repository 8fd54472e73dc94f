//! `iai-mcp rotate`: a new data key, every sealed value re-sealed under it
//! while the store stays in use, then the old key destroyed.
//!
//! 1. `.key` is rewritten (atomically, like `passwd`) with a new data key
//!    behind the same passphrase (and recovery code, if kept), the old key in
//!    a previous-key slot opened by the new one, and the tag key carried over.
//! 2. The daemon pair is restarted with it: the keyholder seals under the new
//!    key and still unseals the old one's values.
//! 3. The storer re-seals, step by step, whatever is still under the old key
//!    (each step one transaction; captures and recalls go on in between),
//!    erases the old bytes from the files, and the keyholder wipes the old key.
//! 4. The previous-key slot is removed from `.key`.
//!
//! A kill at any point leaves a store that unlocks and serves every memory;
//! running `rotate` again carries on from the values themselves (each names
//! its key), so nothing is re-done and nothing is skipped.

use std::io::IsTerminal;

use anyhow::{anyhow, bail, Context, Result};
use iai_keyholder::keyfile::SlotKind;
use iai_keyholder::{KeyFileError, KeyId, Passphrase};
use iai_policy::Home;
use iai_storer::client::Client;
use iai_storer::proto::{RotateRequest, RotateResult, Stats};

use crate::passphrase;

pub struct Options {
    pub passphrase_fd: Option<i32>,
    pub recovery_code_fd: Option<i32>,
    pub drop_recovery_code: bool,
    pub batch: u32,
    pub allow_degraded: bool,
}

fn hex(id: &KeyId) -> String {
    id.0.iter().map(|b| format!("{b:02x}")).collect()
}

fn running_stats(home: &Home) -> Option<Stats> {
    let mut c = Client::connect(home).ok()?;
    c.set_timeout(std::time::Duration::from_secs(30)).ok()?;
    c.stats().ok()
}

pub fn rotate(home: &Home, opts: &Options) -> Result<()> {
    if std::fs::symlink_metadata(home.key()).is_err() {
        bail!("{} is not initialised: there is no key to rotate", home.root().display());
    }
    let was_running = running_stats(home).is_some();
    let change = crate::keys::begin(home)?;
    let mut pass = None;
    let new_id = match change.file.previous_id() {
        Some(old) => {
            eprintln!("carrying on with the key rotation begun earlier (old key {})", &hex(&old)[..8]);
            let id = change.file.key_id();
            drop(change);
            id
        }
        None => {
            let p = passphrase::obtain(opts.passphrase_fd, false)?;
            let dek = change.file.unwrap(&p).map_err(|e| match e {
                KeyFileError::WrongPassphrase => anyhow!("wrong passphrase; nothing was changed"),
                other => anyhow!("{other}; nothing was changed"),
            })?;
            let code = recovery_code(&change.file, &dek, opts)?;
            let ring = crate::keyring::secret_for_rotation(home, &change.file, &dek);
            let keep: Vec<(SlotKind, &Passphrase)> = code
                .iter()
                .map(|c| (SlotKind::RecoveryCode, c))
                .chain(ring.iter().map(|r| (SlotKind::Keyring, r)))
                .collect();
            let params = crate::keys::passphrase_params(&change.file);
            let (new, new_dek) = change
                .file
                .rotated(&dek, &p, params, &keep)
                .map_err(|e| anyhow!("cannot make the new key: {e}; nothing was changed"))?;
            drop(keep);
            drop((dek, code, ring));
            let id = new.key_id();
            change.commit(&new, Some((SlotKind::Passphrase, &p, &new_dek)))?;
            drop(new_dek);
            eprintln!(
                "a new data key ({}) is in {}; re-sealing every value under it",
                &hex(&id)[..8],
                home.key().display()
            );
            pass = Some(p);
            id
        }
    };

    // The pair must hold the new key (and the old one, to read what is not re-sealed yet).
    let current = running_stats(home);
    if current.as_ref().map(|s| s.key_id.as_str()) != Some(hex(&new_id).as_str()) {
        if current.is_some() {
            eprintln!("restarting the daemon pair with the new key");
            crate::cli::lock(home)?;
        }
        let p = match pass.take() {
            Some(p) => p,
            None => passphrase::obtain(opts.passphrase_fd, false)?,
        };
        crate::cli::start_pair(home, p, SlotKind::Passphrase, opts.allow_degraded)?;
    }
    drop(pass);

    let resealed = reseal_all(home, opts.batch)?;

    // Nothing is under the old key any more: its slot goes last (after any
    // backup that is copying the key file right now).
    let change = crate::keys::begin_within(home, std::time::Duration::from_secs(120))?;
    if change.file.key_id() != new_id {
        bail!(
            "{} changed while the rotation ran (another rotation?); run `iai-mcp rotate` again",
            home.key().display()
        );
    }
    if change.file.previous_id().is_some() {
        let new = change.file.without_slot(SlotKind::PreviousKey).map_err(|e| anyhow!("{e}"))?;
        change.commit(&new, None)?;
    } else {
        drop(change);
    }
    if !was_running {
        crate::cli::lock(home)?;
    }
    println!(
        "rotated: {resealed} values re-sealed under the new data key {}; the old key is destroyed (its slot is gone \
         from {}, its sealed bytes erased from the database)",
        &hex(&new_id)[..8],
        home.key().display()
    );
    println!(
        "backups made before this still hold the old key (and open with the passphrase they were made with): \
         delete them if the old key must be gone everywhere"
    );
    Ok(())
}

/// The recovery code, when the store has one and it is to be kept: the new
/// key must be wrapped for it too. Checked against the old key file.
fn recovery_code(
    file: &iai_keyholder::KeyFile,
    dek: &iai_keyholder::Dek,
    opts: &Options,
) -> Result<Option<Passphrase>> {
    if file.slot(SlotKind::RecoveryCode).is_none() {
        return Ok(None);
    }
    if opts.drop_recovery_code {
        eprintln!("the recovery code will no longer work (`iai-mcp recovery-code add` makes a new one)");
        return Ok(None);
    }
    if opts.recovery_code_fd.is_none()
        && std::env::var_os(passphrase::RECOVERY_ENV).is_none()
        && !std::io::stdin().is_terminal()
    {
        bail!(
            "this store has a recovery code, and the new key must be wrapped for it too: give it with \
             --recovery-code-fd N or ${}, or pass --drop-recovery-code to remove it (make a new one afterwards \
             with `iai-mcp recovery-code add`); nothing was changed",
            passphrase::RECOVERY_ENV
        );
    }
    if opts.recovery_code_fd.is_none() && std::env::var_os(passphrase::RECOVERY_ENV).is_none() {
        eprintln!("this store has a recovery code; the new key is wrapped for it too");
    }
    let code = passphrase::obtain_recovery_code_from(opts.recovery_code_fd, "--recovery-code-fd")?;
    match file.unwrap_with(SlotKind::RecoveryCode, &code) {
        Ok(d) if d.expose() == dek.expose() => Ok(Some(code)),
        Ok(_) | Err(KeyFileError::WrongPassphrase) => {
            bail!("wrong recovery code; nothing was changed (pass --drop-recovery-code to rotate without keeping it)")
        }
        Err(e) => bail!("{e}; nothing was changed"),
    }
}

/// Runs rotation steps until every value is under the new key; returns how
/// many were re-sealed.
fn reseal_all(home: &Home, batch: u32) -> Result<u64> {
    let mut client = Client::connect(home).context("the store is not reachable")?;
    client.set_timeout(std::time::Duration::from_secs(600))?;
    let progress = std::io::stderr().is_terminal();
    let mut done = 0u64;
    let mut total = None;
    loop {
        let r: RotateResult =
            client.rotate(RotateRequest { limit: Some(batch) }).map_err(|e| anyhow!("re-sealing failed: {e}"))?;
        done += r.resealed;
        let total = *total.get_or_insert(r.remaining + r.resealed);
        if progress {
            let pct = if total == 0 { 100 } else { (done * 100 / total.max(done)).min(100) };
            eprint!("\rre-sealing: {done} of {} values ({pct} %)", total.max(done));
        }
        if r.finished {
            if progress {
                eprintln!();
            }
            return Ok(done);
        }
        if !r.damaged.is_empty() {
            if progress {
                eprintln!();
            }
            let shown: Vec<String> = r.damaged.iter().take(20).map(|d| format!("  {d}")).collect();
            bail!(
                "{} values under the old key do not authenticate (they were changed outside iai-mcp), so they cannot \
                 be re-sealed and the old key is kept:\n{}\n`iai-mcp forget ID` removes a damaged memory; then run \
                 `iai-mcp rotate` again. `iai-mcp status` lists what else was found changed.",
                r.damaged.len(),
                shown.join("\n")
            );
        }
    }
}
