//! Changing the key file: `passwd` and `recovery-code`. Only the wrapped
//! copies of the data key change, never a memory, so all of it works locked
//! or unlocked. Every change is written to `.key.new`, synced, checked by
//! opening it with the new secret, renamed over `.key`, and the directory
//! synced: a kill at any moment leaves a key file that opens with the old
//! secret or with the new one, never neither.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{anyhow, bail, Context, Result};
use iai_keyholder::keyfile::{SlotKind, MAX_KEYFILE_LEN, MIN_M_KIB};
use iai_keyholder::{Dek, KdfParams, KeyFile, KeyFileError, Passphrase};
use iai_policy::Home;
use nix::fcntl::{Flock, FlockArg};

use crate::passphrase;

/// Random bytes in a recovery code: 160 bits, far beyond guessing, so its
/// slot needs no costly key stretching (the cheapest legal Argon2id).
const RECOVERY_BYTES: usize = 20;

/// Crockford's base32: no I, L, O or U; read back case-insensitively, with
/// O read as 0 and I, L as 1, dashes and spaces ignored.
fn crockford() -> data_encoding::Encoding {
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str("0123456789ABCDEFGHJKMNPQRSTVWXYZ");
    spec.translate.from.push_str("abcdefghjkmnpqrstvwxyzOoIiLl");
    spec.translate.to.push_str("ABCDEFGHJKMNPQRSTVWXYZ001111");
    spec.ignore.push_str("- ");
    spec.encoding().expect("a valid base32 specification")
}

/// The canonical form of a recovery code (what its slot is wrapped with),
/// or a clear error for something that is not one.
pub fn normalize_recovery_code(raw: &[u8]) -> Result<Passphrase> {
    let trimmed = raw.trim_ascii();
    let bytes = zeroize::Zeroizing::new(
        crockford()
            .decode(trimmed)
            .map_err(|_| anyhow!("that is not a recovery code (32 letters and digits, in groups of four)"))?,
    );
    if bytes.len() != RECOVERY_BYTES {
        bail!("that is not a recovery code: it has {} characters instead of 32", crockford().encode_len(bytes.len()));
    }
    Ok(Passphrase::new(crockford().encode(&bytes).into_bytes()))
}

/// A new random recovery code, as shown to the user (groups of four).
fn new_recovery_code() -> Result<(Passphrase, zeroize::Zeroizing<String>)> {
    let mut bytes = zeroize::Zeroizing::new([0u8; RECOVERY_BYTES]);
    getrandom::getrandom(bytes.as_mut()).map_err(|_| anyhow!("the system's random number generator failed"))?;
    let plain = zeroize::Zeroizing::new(crockford().encode(bytes.as_ref()));
    let shown: String =
        plain.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("-");
    Ok((Passphrase::from_slice(plain.as_bytes()), zeroize::Zeroizing::new(shown)))
}

/// Locks the home directory (`flock`): key changes exclusively, backups
/// shared. The directory, not `.key`, because every change replaces `.key`
/// by a rename, and a lock on a replaced file would guard nothing. Waits up
/// to `wait` for the lock.
pub(crate) fn lock_home(home: &Home, how: FlockArg, wait: std::time::Duration) -> Result<Flock<std::fs::File>> {
    let mut dir = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
        .open(home.root())
        .with_context(|| format!("cannot open {}", home.root().display()))?;
    let deadline = std::time::Instant::now() + wait;
    loop {
        match Flock::lock(dir, how) {
            Ok(lock) => return Ok(lock),
            Err((back, _)) if std::time::Instant::now() < deadline => {
                dir = back;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err((_, e)) => bail!("{} is locked ({e})", home.root().display()),
        }
    }
}

/// The key file, held for a change: read under an exclusive lock on the
/// home (two changes never interleave, and no backup copies the key
/// meanwhile), with any `.key.new` a killed change left behind removed.
pub(crate) struct Change {
    home: Home,
    pub(crate) file: KeyFile,
    _lock: Flock<std::fs::File>,
}

pub(crate) fn begin(home: &Home) -> Result<Change> {
    begin_within(home, std::time::Duration::ZERO)
}

/// [`begin`], waiting up to `wait` for another change or a backup to finish.
pub(crate) fn begin_within(home: &Home, wait: std::time::Duration) -> Result<Change> {
    let key = home.key();
    let problems = iai_policy::home_check::check(home, nix::unistd::getuid().as_raw());
    if let Some(p) = problems.first() {
        bail!("refusing to change the key of a home that is not safe to use: {}; fix: {}", p.what, p.fix);
    }
    let lock = lock_home(home, FlockArg::LockExclusiveNonblock, wait).map_err(|e| {
        e.context(format!(
            "another change of {} (or a backup) is in progress; try again when it has finished",
            key.display()
        ))
    })?;
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&key)
        .with_context(|| format!("cannot open {} (run `iai-mcp init` first?)", key.display()))?;
    let mut bytes = Vec::with_capacity(MAX_KEYFILE_LEN + 1);
    (&mut file).take(MAX_KEYFILE_LEN as u64 + 1).read_to_end(&mut bytes).context("cannot read the key file")?;
    let file = KeyFile::parse(&bytes).with_context(|| format!("{} is not usable", key.display()))?;
    let stale = staging(home);
    match std::fs::symlink_metadata(&stale) {
        Ok(m) if m.is_file() => std::fs::remove_file(&stale)
            .with_context(|| format!("cannot remove {} left by an interrupted change", stale.display()))?,
        Ok(_) => bail!("{} is not a regular file; move it away", stale.display()),
        Err(_) => {}
    }
    Ok(Change { home: home.clone(), file, _lock: lock })
}

fn staging(home: &Home) -> std::path::PathBuf {
    home.root().join(".key.new")
}

impl Change {
    /// Opens the data key with the current passphrase, or the recovery code.
    fn open(&self, recovery: bool, fd: Option<i32>) -> Result<Dek> {
        let (kind, secret) = if recovery {
            (SlotKind::RecoveryCode, passphrase::obtain_recovery_code(fd)?)
        } else {
            (SlotKind::Passphrase, passphrase::obtain(fd, false)?)
        };
        self.file.unwrap_with(kind, &secret).map_err(|e| match e {
            KeyFileError::WrongPassphrase => anyhow!("wrong {}; nothing was changed", kind.name()),
            KeyFileError::NoSuchSlot(_) => {
                anyhow!("this store has no recovery code (`iai-mcp recovery-code add` makes one); nothing was changed")
            }
            other => anyhow!("{other}; nothing was changed"),
        })
    }

    /// Writes `new` in place of `.key`, after checking that `kind` opens it
    /// with `secret` to the data key `dek`.
    pub(crate) fn commit(self, new: &KeyFile, check: Option<(SlotKind, &Passphrase, &Dek)>) -> Result<()> {
        let bytes = new.to_bytes();
        let reread = KeyFile::parse(&bytes).context("the new key file does not parse (a bug; nothing was changed)")?;
        if let Some((kind, secret, dek)) = check {
            let opened = reread
                .unwrap_with(kind, secret)
                .context("the new key file does not open (a bug; nothing was changed)")?;
            if opened.expose() != dek.expose() {
                bail!("the new key file holds another key (a bug; nothing was changed)");
            }
        }
        let path = staging(&self.home);
        crate::backup::write_new_mode(&path, &bytes, 0o600).context("nothing was changed")?;
        std::fs::rename(&path, self.home.key())
            .with_context(|| format!("cannot replace {}", self.home.key().display()))?;
        std::fs::File::open(self.home.root())
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", self.home.root().display()))?;
        Ok(())
    }
}

/// The KDF cost of a new passphrase slot: the old one's, or the default if
/// the old one was weaker.
pub(crate) fn passphrase_params(old: &KeyFile) -> KdfParams {
    let p = old.params();
    if p.at_least_default() {
        p
    } else {
        KdfParams::DEFAULT
    }
}

pub fn passwd(home: &Home, recovery: bool, fd: Option<i32>, new_fd: Option<i32>) -> Result<()> {
    let change = begin(home)?;
    let dek = change.open(recovery, fd)?;
    let new_pass = passphrase::obtain_new(new_fd)?;
    let params = passphrase_params(&change.file);
    let new = change
        .file
        .with_slot(&dek, SlotKind::Passphrase, &new_pass, params, None)
        .map_err(|e| anyhow!("cannot wrap the key: {e}; nothing was changed"))?;
    let upgraded = change.file.version() < new.version();
    change.commit(&new, Some((SlotKind::Passphrase, &new_pass, &dek)))?;
    println!("the passphrase is changed{}", if upgraded { " (the key file is now version 2)" } else { "" });
    if new.slot(SlotKind::RecoveryCode).is_some() {
        println!("the recovery code still works");
    }
    Ok(())
}

pub fn recovery_add(home: &Home, fd: Option<i32>) -> Result<()> {
    let change = begin(home)?;
    let pass = passphrase::obtain(fd, false)?;
    let dek = change.file.unwrap(&pass).map_err(|e| match e {
        KeyFileError::WrongPassphrase => anyhow!("wrong passphrase; nothing was changed"),
        other => anyhow!("{other}; nothing was changed"),
    })?;
    let (code, shown) = new_recovery_code()?;
    let params = KdfParams::new(MIN_M_KIB, 1, 1).map_err(|e| anyhow!("{e}"))?;
    let replaced = change.file.slot(SlotKind::RecoveryCode).is_some();
    let new = change
        .file
        .with_slot(&dek, SlotKind::RecoveryCode, &code, params, Some(&pass))
        .map_err(|e| anyhow!("cannot wrap the key: {e}; nothing was changed"))?;
    drop(pass);
    change.commit(&new, Some((SlotKind::RecoveryCode, &code, &dek)))?;
    // Shown only once it is on disk: a code shown but not saved would be worse than none.
    println!("Recovery code (shown once; write it down and keep it apart from this computer):\n\n    {}\n", *shown);
    println!(
        "It unlocks like your passphrase: `iai-mcp unlock --recovery-code`, and `iai-mcp passwd --recovery-code` \
         sets a new passphrase with it.{}",
        if replaced { " The previous recovery code no longer works." } else { "" }
    );
    Ok(())
}

pub fn recovery_remove(home: &Home, fd: Option<i32>) -> Result<()> {
    let change = begin(home)?;
    if change.file.slot(SlotKind::RecoveryCode).is_none() {
        bail!("this store has no recovery code; nothing was changed");
    }
    // Only the owner of the passphrase removes the way back in.
    let dek = change.open(false, fd)?;
    let new = change.file.without_slot(SlotKind::RecoveryCode).map_err(|e| anyhow!("{e}"))?;
    drop(dek);
    change.commit(&new, None)?;
    println!("the recovery code is removed: only the passphrase unlocks this store now");
    Ok(())
}

pub fn recovery_status(home: &Home) -> Result<()> {
    let file = KeyFile::parse(&crate::backup::read_key(&home.key())?).context("the key file does not parse")?;
    match file.slot(SlotKind::RecoveryCode) {
        Some(_) => println!("a recovery code is set (key file version {})", file.version()),
        None => println!("no recovery code is set (key file version {})", file.version()),
    }
    Ok(())
}
