//! `iai-mcp backup DEST` and `iai-mcp restore SRC`. A backup is a home of its
//! own, sealed as the store is at rest: `DEST/.key` and `DEST/store/memory.db`.
//! It is taken by this process reading the database alongside the storer (a
//! SQLite read transaction), so captures carry on while it runs and the key
//! is never needed; locked or unlocked alike.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use iai_keyholder::keyfile::MAX_KEYFILE_LEN;
use iai_keyholder::KeyFile;
use iai_policy::Home;

/// Reads a key file without following a link or blocking, and checks it.
pub(crate) fn read_key(path: &Path) -> Result<Vec<u8>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot open {} (it must be a regular file, not a link)", path.display()))?;
    if !f.metadata()?.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let mut bytes = Vec::new();
    f.take(MAX_KEYFILE_LEN as u64 + 1).read_to_end(&mut bytes)?;
    KeyFile::parse(&bytes).with_context(|| format!("{} is not a usable key file", path.display()))?;
    Ok(bytes)
}

/// Writes `bytes` to the new file `path` (0600, never through a link), synced.
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    write_new_mode(path, bytes, 0o600)
}

/// Writes `bytes` to the new file `path` with `mode` (never through a link,
/// never over anything), synced. A file left half-written is removed.
pub(crate) fn write_new_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written.with_context(|| format!("cannot write {}", path.display()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync {}", dir.display()))
}

fn sync_file(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).with_context(|| format!("cannot sync {}", path.display()))
}

fn private_dir(dir: &Path) -> Result<()> {
    DirBuilder::new().mode(0o700).create(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// Takes a consistent database copy into `dir/store/memory.db` and the key
/// into `dir/.key`; returns the number of records.
fn copy_store(home: &Home, dir: &Path) -> Result<u64> {
    // Key changes (passwd, recovery-code, rotate) hold this lock exclusively
    // while they write `.key`: the copied key then always opens the copied
    // database (a rotation never writes a value under a key the file lacks).
    let _key_lock = crate::keys::lock_home(
        home,
        nix::fcntl::FlockArg::LockSharedNonblock,
        std::time::Duration::from_secs(30),
    )
    .context("the key file is being changed (passwd, recovery-code or rotate is waiting or running); try again when it has finished")?;
    private_dir(&dir.join("store"))?;
    let partial = dir.join("store/memory.db.partial");
    iai_storer::db::snapshot(&home.db(), &partial)
        .with_context(|| format!("cannot copy the database {}", home.db().display()))?;
    std::fs::set_permissions(&partial, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    sync_file(&partial)?;
    let (_, records) = iai_storer::db::inspect(&partial).map_err(|e| anyhow!("the copy does not check out: {e}"))?;
    let db = dir.join("store/memory.db");
    std::fs::rename(&partial, &db)?;
    sync_dir(&dir.join("store"))?;
    write_new(&dir.join(".key"), &read_key(&home.key())?)?;
    sync_dir(dir)?;
    Ok(records)
}

pub fn backup(home: &Home, dest: &Path) -> Result<()> {
    if std::fs::symlink_metadata(home.key()).is_err() {
        bail!("{} is not initialised: there is nothing to back up", home.root().display());
    }
    if let Ok(m) = std::fs::symlink_metadata(dest) {
        let what = if m.file_type().is_symlink() { "a symbolic link" } else { "already there" };
        bail!(
            "{} is {what}: a backup goes to a new directory, never over something; nothing was written",
            dest.display()
        );
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        bail!("{} is not a directory; nothing was written", parent.display());
    }
    if dest.canonicalize().ok().or_else(|| parent.canonicalize().ok()).is_some_and(|p| p.starts_with(home.root())) {
        bail!(
            "a backup inside the home it copies would be lost with it; choose a place outside {}",
            home.root().display()
        );
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    private_dir(dest)?;
    match copy_store(home, dest) {
        Ok(records) => {
            sync_dir(&parent)?;
            println!("backed up {records} memories to {}, sealed as they are at rest", dest.display());
            println!(
                "It opens with the passphrase (or recovery code) the store has now; restore it with \
                 `IAI_MCP_HOME=<empty home> iai-mcp restore {}`.",
                dest.display()
            );
            Ok(())
        }
        Err(e) => {
            // Only what this command created goes.
            let _ = std::fs::remove_file(dest.join("store/memory.db.partial"));
            let _ = std::fs::remove_file(dest.join("store/memory.db"));
            let _ = std::fs::remove_file(dest.join(".key"));
            let _ = std::fs::remove_dir(dest.join("store"));
            let _ = std::fs::remove_dir(dest);
            Err(e.context("the backup was not made"))
        }
    }
}

pub fn restore(home: &Home, src: &Path) -> Result<()> {
    for taken in [home.key(), home.db()] {
        if std::fs::symlink_metadata(&taken).is_ok() {
            bail!(
                "{} already exists: restore only fills an empty home. Set IAI_MCP_HOME to a new directory, or move \
                 this home away; nothing was changed",
                taken.display()
            );
        }
    }
    let key = read_key(&src.join(".key"))?;
    let db = src.join("store/memory.db");
    let meta = std::fs::symlink_metadata(&db).with_context(|| format!("{} is missing", db.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file; nothing was changed", db.display());
    }
    let (version, records) =
        iai_storer::db::inspect(&db).map_err(|e| anyhow!("{}: {e}; nothing was changed", db.display()))?;
    crate::cli::ensure_home_dirs(home)?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let partial = home.store_dir().join("memory.db.partial");
    let _ = std::fs::remove_file(&partial);
    let copied = (|| -> Result<()> {
        let mut from = OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW).open(&db)?;
        let mut to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&partial)?;
        std::io::copy(&mut from, &mut to)?;
        to.sync_all()?;
        std::fs::rename(&partial, home.db())?;
        sync_dir(&home.store_dir())?;
        // The key last: a home with a key is an initialised home.
        write_new(&home.key(), &key)?;
        sync_dir(home.root())
    })();
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&partial);
        let _ = std::fs::remove_file(home.db());
        return Err(e.context("the restore did not finish; the home was left empty"));
    }
    println!(
        "restored {records} memories (store format {version}) into {}; `iai-mcp unlock` with the backup's passphrase",
        home.root().display()
    );
    Ok(())
}
