//! `iai-mcp export` and `iai-mcp import`: every memory with its metadata in a
//! documented, versioned format (README.md, "Export format"), inside an age
//! file (age-encryption.org/v1) that the user can open without us: `age -d`
//! or rage, with the export passphrase or an X25519 identity.

use std::fs::OpenOptions;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::SecretString;
use anyhow::{anyhow, bail, Context, Result};
use iai_policy::Home;
use iai_storer::client::{Client, ClientError};
use iai_storer::proto::{ExportRequest, ImportStatus, MemoryRecord};
use serde::{Deserialize, Serialize};

use crate::passphrase;

/// The format this iai-mcp writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT_NAME: &str = "iai-mcp export";
/// `import`'s passphrase for an export, for automation.
const EXPORT_ENV: &str = "IAI_MCP_EXPORT_PASSPHRASE";

/// One line of the decrypted export (JSON Lines).
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line {
    /// First line.
    Header {
        format: String,
        version: u32,
        exported_at: i64,
    },
    Memory(MemoryRecord),
    /// Last line: what came before it, so a cut file is recognised.
    End {
        memories: u64,
    },
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn connect(home: &Home) -> Result<Client> {
    Client::connect(home).map_err(|e| match e {
        ClientError::Locked => anyhow!("the store is locked: `iai-mcp unlock` first"),
        other => anyhow!("{other}"),
    })
}

/// The export passphrase: `--passphrase-fd N`, `IAI_MCP_EXPORT_PASSPHRASE`, a prompt.
fn export_passphrase(fd: Option<i32>, new: bool) -> Result<SecretString> {
    if fd.is_none() {
        if let Some(v) = std::env::var_os(EXPORT_ENV) {
            std::env::remove_var(EXPORT_ENV);
            let v = v.into_string().map_err(|_| anyhow!("{EXPORT_ENV} is not valid UTF-8"))?;
            return Ok(SecretString::from(v));
        }
    }
    let pass = passphrase::obtain(fd, new)?;
    let text = std::str::from_utf8(pass.expose()).map_err(|_| anyhow!("the export passphrase must be valid UTF-8"))?;
    Ok(SecretString::from(text.to_owned()))
}

pub fn export(home: &Home, to: Option<&Path>, recipients: &[String], fd: Option<i32>) -> Result<()> {
    let mut client = connect(home)?;
    let encryptor = if recipients.is_empty() {
        age::Encryptor::with_user_passphrase(export_passphrase(fd, true)?)
    } else {
        let parsed = recipients
            .iter()
            .map(|r| {
                age::x25519::Recipient::from_str(r).map_err(|e| anyhow!("{r:?} is not an age recipient (age1…): {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| anyhow!("cannot encrypt to those recipients: {e}"))?
    };
    let (out, partial): (Box<dyn Write>, Option<PathBuf>) = match to {
        Some(path) => {
            if std::fs::symlink_metadata(path).is_ok() {
                bail!("{} already exists: an export never writes over a file", path.display());
            }
            let mut name = path.file_name().ok_or_else(|| anyhow!("{} names no file", path.display()))?.to_os_string();
            name.push(".iai-mcp-partial");
            let partial = path.with_file_name(name);
            if std::fs::symlink_metadata(&partial).is_ok() {
                bail!(
                    "{} exists: an interrupted export left it behind, or another export is writing it; remove it \
                     if no export is running",
                    partial.display()
                );
            }
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&partial)
                .with_context(|| format!("cannot create {}", partial.display()))?;
            (Box::new(f), Some(partial))
        }
        None if std::io::stdout().is_terminal() => {
            bail!("an export is binary: give --to FILE, or redirect the output to a file")
        }
        None => (Box::new(std::io::stdout().lock()), None),
    };
    let written = write_export(&mut client, encryptor, out);
    match (written, partial, to) {
        (Ok(n), Some(partial), Some(path)) => {
            std::fs::File::open(&partial).and_then(|f| f.sync_all())?;
            std::fs::rename(&partial, path).with_context(|| format!("cannot create {}", path.display()))?;
            eprintln!("exported {n} memories to {}", path.display());
            Ok(())
        }
        (Ok(n), _, _) => {
            eprintln!("exported {n} memories");
            Ok(())
        }
        (Err(e), partial, _) => {
            if let Some(p) = partial {
                let _ = std::fs::remove_file(p);
            }
            Err(e.context("the export was not written"))
        }
    }
}

fn write_export(client: &mut Client, encryptor: age::Encryptor, out: Box<dyn Write>) -> Result<u64> {
    let mut w = encryptor.wrap_output(out).context("cannot start the age file")?;
    let progress = std::io::stderr().is_terminal();
    let line = |w: &mut dyn Write, l: &Line| -> Result<()> {
        serde_json::to_writer(&mut *w, l)?;
        w.write_all(b"\n")?;
        Ok(())
    };
    line(&mut w, &Line::Header { format: FORMAT_NAME.into(), version: FORMAT_VERSION, exported_at: now_ms() })?;
    let mut after = None;
    let mut n = 0u64;
    loop {
        let page = client.export(ExportRequest { after, limit: None }).map_err(|e| anyhow!("{e}"))?;
        for r in page.records {
            line(&mut w, &Line::Memory(r))?;
            n += 1;
        }
        if progress {
            eprint!("\rexporting: {n} memories");
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    if progress {
        eprintln!();
    }
    line(&mut w, &Line::End { memories: n })?;
    w.finish().and_then(|mut inner| inner.flush()).context("cannot finish the age file")?;
    Ok(n)
}

/// Decrypts and checks a whole export before anything is imported.
fn read_export(file: &Path, identity: Option<&Path>, fd: Option<i32>) -> Result<Vec<MemoryRecord>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(file)
        .with_context(|| format!("cannot open {}", file.display()))?;
    let decryptor = age::Decryptor::new(std::io::BufReader::new(f))
        .map_err(|e| anyhow!("{} is not an age file, or is damaged: {e}", file.display()))?;
    let wrong = |e: age::DecryptError| match e {
        age::DecryptError::DecryptionFailed
        | age::DecryptError::NoMatchingKeys
        | age::DecryptError::KeyDecryptionFailed
        | age::DecryptError::InvalidMac => anyhow!("wrong passphrase or identity for {}", file.display()),
        other => anyhow!("cannot decrypt {}: {other}", file.display()),
    };
    let mut reader = if decryptor.is_scrypt() {
        let identity = age::scrypt::Identity::new(export_passphrase(fd, false)?);
        decryptor.decrypt(std::iter::once(&identity as &dyn age::Identity)).map_err(wrong)?
    } else {
        let path = identity.ok_or_else(|| anyhow!("{} is encrypted to a key: give --identity FILE", file.display()))?;
        let ids = age::IdentityFile::from_file(path.to_string_lossy().into_owned())
            .and_then(|f| f.into_identities().map_err(|e| std::io::Error::other(e.to_string())))
            .with_context(|| format!("cannot read the identity file {}", path.display()))?;
        decryptor.decrypt(ids.iter().map(|i| i.as_ref())).map_err(wrong)?
    };
    let mut plain = zeroize::Zeroizing::new(Vec::new());
    reader
        .read_to_end(&mut plain)
        .map_err(|e| anyhow!("{} is damaged or cut short ({e}); nothing was imported", file.display()))?;
    let mut lines = plain.lines().enumerate();
    let damaged =
        |n: usize, why: String| anyhow!("{} is damaged at line {}: {why}; nothing was imported", file.display(), n + 1);
    match lines.next() {
        Some((n, l)) => match serde_json::from_str::<Line>(&l?) {
            Ok(Line::Header { format, version, .. }) if format == FORMAT_NAME => {
                if version > FORMAT_VERSION {
                    bail!(
                        "{} is export format {version}, newer than this iai-mcp reads ({FORMAT_VERSION})",
                        file.display()
                    );
                }
            }
            _ => return Err(damaged(n, "it does not start with an iai-mcp export header".into())),
        },
        None => bail!("{} is empty; nothing was imported", file.display()),
    }
    let now = now_ms();
    let mut records = Vec::new();
    let mut ended = false;
    for (n, l) in lines {
        let l = l?;
        if ended {
            return Err(damaged(n, "text after the end line".into()));
        }
        match serde_json::from_str::<Line>(&l).map_err(|e| damaged(n, e.to_string()))? {
            Line::Memory(m) => {
                iai_storer::daemon::parse_id(&m.id).map_err(|e| damaged(n, e.message))?;
                m.as_capture().validate(now).map_err(|e| damaged(n, e.message))?;
                records.push(m);
            }
            Line::End { memories } if memories == records.len() as u64 => ended = true,
            Line::End { memories } => {
                return Err(damaged(n, format!("it says {memories} memories, but holds {}", records.len())))
            }
            Line::Header { .. } => return Err(damaged(n, "a second header".into())),
        }
    }
    if !ended {
        bail!("{} is cut short (no end line); nothing was imported", file.display());
    }
    Ok(records)
}

pub fn import(home: &Home, file: &Path, identity: Option<&Path>, fd: Option<i32>) -> Result<()> {
    let mut client = connect(home)?;
    let records = read_export(file, identity, fd)?;
    let total = records.len();
    let progress = std::io::stderr().is_terminal();
    let (mut inserted, mut duplicates) = (0usize, 0usize);
    for batch in batches(records) {
        let result = client.import(batch).map_err(|e| anyhow!("{e}; {inserted} memories were imported before this"))?;
        for r in result.results {
            match r.status {
                ImportStatus::Inserted => inserted += 1,
                ImportStatus::Duplicate => duplicates += 1,
            }
        }
        if progress {
            eprint!("\rimporting: {} of {total}", inserted + duplicates);
        }
    }
    if progress {
        eprintln!();
    }
    println!("imported {inserted} memories from {}; {duplicates} were already in this store", file.display());
    Ok(())
}

/// Splits records into import requests that fit a frame.
fn batches(records: Vec<MemoryRecord>) -> Vec<Vec<MemoryRecord>> {
    let mut out: Vec<Vec<MemoryRecord>> = Vec::new();
    let mut used = 0usize;
    for r in records {
        let n = iai_storer::limits::json_len(&r).saturating_add(1);
        let full = out
            .last()
            .is_none_or(|b| b.len() >= iai_storer::limits::MAX_BATCH || used + n > iai_storer::limits::BATCH_BUDGET);
        if full {
            out.push(Vec::new());
            used = 0;
        }
        used += n;
        if let Some(b) = out.last_mut() {
            b.push(r);
        }
    }
    out
}
