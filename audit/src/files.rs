//! Checks of the files under the home.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use iai_keyholder::{KdfParams, KeyFile};
use iai_policy::Home;

use crate::Check;

/// What the audit knows about one path (from `lstat`).
#[derive(Clone, Debug)]
pub struct Facts {
    pub path: PathBuf,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub nlink: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Socket,
    Other,
}

fn facts(path: &Path) -> Option<Facts> {
    let m = std::fs::symlink_metadata(path).ok()?;
    let ft = m.file_type();
    let kind = if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else if std::os::unix::fs::FileTypeExt::is_socket(&ft) {
        Kind::Socket
    } else {
        Kind::Other
    };
    Some(Facts { path: path.to_path_buf(), kind, mode: m.mode() & 0o7777, uid: m.uid(), nlink: m.nlink() })
}

/// The files iai-mcp itself creates, relative to the home.
const EXPECTED: &[&str] = &[
    ".key",
    // A key change (`passwd`, `recovery-code`) killed before its rename; the
    // next change removes it. It opens only with the new secret.
    ".key.new",
    "store",
    "store/memory.db",
    "store/memory.db-wal",
    "store/memory.db-shm",
    "store/memory.db-journal",
    // A restore killed before its rename (sealed, like the database); the
    // next restore removes it.
    "store/memory.db.partial",
    // Zeros the storer gives back when the disk is full, so forget still works.
    "store/space-reserve",
    "run",
    "run/iai-mcp.sock",
    "run/iai-mcp.pid",
    "run/daemon.log",
    "run/hooks.log",
    // The embedding model `iai-mcp model install` copied in: public files
    // (token vectors and vocabulary), nothing derived from a memory.
    "model",
    "model/weights.safetensors",
    "model/tokenizer.json",
    // An install killed before its rename; the next install removes it.
    ".model.new",
    ".model.new/weights.safetensors",
    ".model.new/tokenizer.json",
];

pub fn check(home: &Home, uid: u32) -> Vec<Check> {
    let mut out = Vec::new();
    let root = home.root();
    let Some(h) = facts(root) else {
        out.push(Check::fail("home.exists", format!("{} does not exist", root.display()), "run `iai-mcp init`"));
        return out;
    };
    out.push(Check::pass("home.exists", format!("{} exists", root.display())));
    out.push(dir_check("home", &h, uid));
    if h.kind != Kind::Dir {
        return out;
    }
    out.extend(key_checks(home, uid));
    for (name, dir) in [("store", home.store_dir()), ("run", home.run_dir())] {
        match facts(&dir) {
            Some(f) => out.push(dir_check(name, &f, uid)),
            None => out.push(Check::fail(
                format!("{name}.mode"),
                format!("{} is missing", dir.display()),
                format!("mkdir -m 700 {}", dir.display()),
            )),
        }
    }
    let mut all = Vec::new();
    walk(root, &mut all);
    out.extend(tree_checks(root, &all, uid));
    // The check `unlock` and the roles run: whatever it finds, they refuse.
    let layout = iai_policy::home_check::check(home, uid);
    if layout.is_empty() {
        out.push(Check::pass(
            "home.layout",
            "every file and directory is what iai-mcp expects (unlock would accept it)",
        ));
    }
    for p in layout {
        out.push(Check::fail("home.layout", format!("{} (unlock refuses this home)", p.what), p.fix));
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<Facts>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if let Some(f) = facts(&e.path()) {
            let is_dir = f.kind == Kind::Dir;
            out.push(f);
            if is_dir {
                walk(&e.path(), out);
            }
        }
    }
}

/// Pure: a directory of the home must be a real directory, ours, 0700.
pub fn dir_check(name: &str, f: &Facts, uid: u32) -> Check {
    let p = f.path.display();
    if f.kind == Kind::Symlink {
        return Check::fail(
            format!("{name}.mode"),
            format!("{p} is a symbolic link"),
            format!("replace {p} with a real directory (mode 0700)"),
        );
    }
    if f.kind != Kind::Dir {
        return Check::fail(
            format!("{name}.mode"),
            format!("{p} is not a directory"),
            format!("move {p} away and run `iai-mcp init`"),
        );
    }
    if f.uid != uid {
        return Check::fail(
            format!("{name}.mode"),
            format!("{p} is owned by uid {}, not by you (uid {uid})", f.uid),
            format!("chown {uid} {p}"),
        );
    }
    if f.mode & 0o777 != 0o700 {
        return Check::fail(
            format!("{name}.mode"),
            format!("{p} has mode {:04o}; it must be 0700", f.mode),
            format!("chmod 700 {p}"),
        );
    }
    Check::pass(format!("{name}.mode"), format!("{p} is yours and 0700"))
}

/// Pure: the `.key` file's type, links, owner and mode.
pub fn key_file_check(f: Option<&Facts>, key: &Path, uid: u32) -> Check {
    let p = key.display();
    let Some(f) = f else {
        return Check::fail(
            "key.file",
            format!("{p} is missing: this home has no key"),
            "run `iai-mcp init` (or restore .key from your backup)",
        );
    };
    match f.kind {
        Kind::Symlink => {
            return Check::fail(
                "key.file",
                format!("{p} is a symbolic link"),
                format!("replace {p} with the file it points to"),
            )
        }
        Kind::File => {}
        _ => return Check::fail("key.file", format!("{p} is not a regular file"), "restore .key from your backup"),
    }
    if f.nlink != 1 {
        return Check::fail(
            "key.file",
            format!("{p} has {} hard links; a copy may be readable elsewhere", f.nlink),
            format!("find the other names with `find / -samefile {p}` and remove them"),
        );
    }
    if f.uid != uid {
        return Check::fail(
            "key.file",
            format!("{p} is owned by uid {}, not by you (uid {uid})", f.uid),
            format!("chown {uid} {p}"),
        );
    }
    if f.mode & 0o777 != 0o600 {
        return Check::fail(
            "key.file",
            format!("{p} has mode {:04o}; it must be 0600", f.mode),
            format!("chmod 600 {p}"),
        );
    }
    Check::pass("key.file", format!("{p} is a regular file, one link, yours, 0600"))
}

/// Pure: the key header and its KDF strength.
pub fn key_header_checks(bytes: Option<&[u8]>, key: &Path) -> Vec<Check> {
    let p = key.display();
    let Some(bytes) = bytes else { return Vec::new() };
    match KeyFile::parse(bytes) {
        Err(e) => vec![Check::fail(
            "key.header",
            format!("{p} is not usable: {e}"),
            "restore .key from your backup; an edited header can never unlock",
        )],
        Ok(kf) => {
            let k = kf.params();
            let d = KdfParams::DEFAULT;
            let slots: Vec<&str> =
                kf.slots().iter().filter(|s| s.kind().is_secret()).map(|s| s.kind().name()).collect();
            let header = Check::pass(
                "key.header",
                format!("{p} is a version {} key file; it opens with: {}", kf.version(), slots.join(", ")),
            );
            let kdf = if k.at_least_default() {
                Check::pass("key.kdf", format!("Argon2id m={} KiB t={} p={}", k.m_kib(), k.t(), k.p()))
            } else {
                Check::warn(
                    "key.kdf",
                    format!(
                        "Argon2id m={} KiB t={} p={} is weaker than the default m={} KiB t={} p={}",
                        k.m_kib(),
                        k.t(),
                        k.p(),
                        d.m_kib(),
                        d.t(),
                        d.p()
                    ),
                    "`iai-mcp passwd` rewraps the key at the default cost (weaker costs make a passphrase easier to guess)",
                )
            };
            let rotation = match kf.previous_id() {
                None => Check::pass("key.rotation", "no key rotation is under way"),
                Some(_) => Check::warn(
                    "key.rotation",
                    format!("a key rotation is unfinished: {p} still holds the previous data key"),
                    "run `iai-mcp rotate`: it carries on where it stopped, then destroys the old key",
                ),
            };
            let keyring = match kf.slot(iai_keyholder::keyfile::SlotKind::Keyring) {
                None => Check::pass("key.keyring", "unlocking from the login keyring is not enabled"),
                Some(_) => Check::warn(
                    "key.keyring",
                    "unlocking from the login keyring is enabled: any program running as you that can reach your \
                     unlocked keyring (Secret Service) can unlock the store, as it can read the keyring's other \
                     secrets",
                    "keep it if that is the trade you want (no passphrase at login); `iai-mcp keyring disable` ends it",
                ),
            };
            vec![header, kdf, rotation, keyring]
        }
    }
}

fn key_checks(home: &Home, uid: u32) -> Vec<Check> {
    let key = home.key();
    let f = facts(&key);
    let file = key_file_check(f.as_ref(), &key, uid);
    let readable = f.as_ref().is_some_and(|f| f.kind == Kind::File);
    // Never follow a link or read something huge: the parser needs a few hundred bytes.
    let bytes = if readable {
        use std::io::Read;
        std::fs::File::open(&key).ok().and_then(|f| {
            let mut b = Vec::new();
            f.take(4096).read_to_end(&mut b).ok().map(|_| b)
        })
    } else {
        None
    };
    let mut out = vec![file];
    out.extend(key_header_checks(bytes.as_deref(), &key));
    out
}

/// Pure: every entry under the home is private, not a link, and expected.
pub fn tree_checks(root: &Path, all: &[Facts], uid: u32) -> Vec<Check> {
    let mut out = Vec::new();
    let mut exposed = 0;
    let mut links = 0;
    let mut strays = 0;
    for f in all {
        let rel = f.path.strip_prefix(root).unwrap_or(&f.path);
        let p = f.path.display();
        if f.kind == Kind::Symlink {
            links += 1;
            out.push(Check::fail(
                "files.symlinks",
                format!("{p} is a symbolic link; it can redirect what iai-mcp reads or writes"),
                format!("rm {p}"),
            ));
            continue;
        }
        if f.mode & 0o077 != 0 {
            exposed += 1;
            out.push(Check::fail(
                "files.private",
                format!("{p} is accessible to group or others (mode {:04o})", f.mode),
                format!("chmod go-rwx {p}"),
            ));
        } else if f.uid != uid {
            exposed += 1;
            out.push(Check::fail(
                "files.private",
                format!("{p} is owned by uid {}", f.uid),
                format!("chown {uid} {p}"),
            ));
        }
        if !EXPECTED.iter().any(|e| Path::new(e) == rel) {
            strays += 1;
            if f.kind == Kind::File && looks_like_text(&f.path) {
                out.push(Check::fail(
                    "files.unexpected",
                    format!("{p} is not an iai-mcp file and holds readable text (plaintext memories or an export?)"),
                    format!("move {p} out of the iai-mcp home, or delete it securely (shred -u {p})"),
                ));
            } else {
                out.push(Check::warn(
                    "files.unexpected",
                    format!("{p} is not an iai-mcp file"),
                    format!("move {p} out of the iai-mcp home if you do not know what it is"),
                ));
            }
        }
    }
    if exposed == 0 {
        out.push(Check::pass("files.private", format!("all {} entries under the home are private", all.len())));
    }
    if links == 0 {
        out.push(Check::pass("files.symlinks", "no symbolic links under the home"));
    }
    if strays == 0 {
        out.push(Check::pass("files.unexpected", "only iai-mcp's own files are in the home"));
    }
    out
}

/// Mostly printable UTF-8 in its first 4 KiB: possibly plaintext.
fn looks_like_text(path: &Path) -> bool {
    use std::io::Read;
    let mut buf = Vec::new();
    let Ok(f) = std::fs::File::open(path) else { return false };
    if f.take(4096).read_to_end(&mut buf).is_err() || buf.is_empty() {
        return false;
    }
    let text = String::from_utf8_lossy(&buf);
    let printable = text.chars().filter(|c| !c.is_control() || c.is_whitespace()).count();
    let replaced = text.chars().filter(|&c| c == '\u{fffd}').count();
    replaced * 20 < text.chars().count() && printable * 10 >= text.chars().count() * 9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str, kind: Kind, mode: u32, uid: u32) -> Facts {
        Facts { path: PathBuf::from(path), kind, mode, uid, nlink: 1 }
    }

    #[test]
    fn directory_rules() {
        assert_eq!(dir_check("home", &f("/h", Kind::Dir, 0o700, 5), 5).status, crate::Status::Pass);
        let c = dir_check("home", &f("/h", Kind::Dir, 0o755, 5), 5);
        assert_eq!(c.status, crate::Status::Fail);
        assert_eq!(c.fix.as_deref(), Some("chmod 700 /h"));
        assert_eq!(dir_check("home", &f("/h", Kind::Dir, 0o700, 6), 5).status, crate::Status::Fail);
        assert_eq!(dir_check("home", &f("/h", Kind::Symlink, 0o777, 5), 5).status, crate::Status::Fail);
    }

    #[test]
    fn key_rules() {
        let key = Path::new("/h/.key");
        assert_eq!(key_file_check(Some(&f("/h/.key", Kind::File, 0o600, 5)), key, 5).status, crate::Status::Pass);
        assert_eq!(
            key_file_check(Some(&f("/h/.key", Kind::File, 0o644, 5)), key, 5).fix.as_deref(),
            Some("chmod 600 /h/.key")
        );
        let mut two = f("/h/.key", Kind::File, 0o600, 5);
        two.nlink = 2;
        assert_eq!(key_file_check(Some(&two), key, 5).status, crate::Status::Fail);
        assert_eq!(key_file_check(None, key, 5).status, crate::Status::Fail);
        assert_eq!(key_header_checks(Some(b"garbage"), key)[0].status, crate::Status::Fail);
    }
}
