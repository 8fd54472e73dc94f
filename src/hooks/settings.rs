//! Installing our hook entries into a host's settings file, and removing
//! exactly them again. Claude Code (`~/.claude/settings.json`) and Codex
//! (`~/.codex/hooks.json`) share one shape:
//! `{"hooks": {"<Event>": [{"matcher"?: "...", "hooks": [{"type": "command", "command": "...", "timeout": N}]}]}}`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};

/// Seconds the host waits for a hook; ours finish well within it.
pub const HOST_TIMEOUT_S: u64 = 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    Claude,
    Codex,
}

impl Host {
    pub fn name(self) -> &'static str {
        match self {
            Host::Claude => "claude",
            Host::Codex => "codex",
        }
    }

    pub fn settings_path(self, user_home: &Path) -> PathBuf {
        match self {
            Host::Claude => user_home.join(".claude").join("settings.json"),
            Host::Codex => user_home.join(".codex").join("hooks.json"),
        }
    }

    /// (event, matcher, our subcommand). SessionStart has no matcher: every
    /// source a host sends (Claude Code: startup, resume, clear, compact,
    /// fork; Codex: startup, resume, clear, compact) and any it adds later
    /// gets the memory prefix.
    pub fn entries(self) -> [(&'static str, Option<&'static str>, &'static str); 3] {
        [("SessionStart", None, "session-start"), ("UserPromptSubmit", None, "capture"), ("Stop", None, "capture")]
    }
}

/// The command line of one of our hooks.
pub fn command(bin: &Path, sub: &str) -> String {
    let b = bin.display().to_string();
    let quoted = if b.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c)) {
        b
    } else {
        format!("'{}'", b.replace('\'', r"'\''"))
    };
    format!("{quoted} hook {sub}")
}

/// The program path of a hook command if it is one of ours.
pub fn ours(command: &str) -> Option<(String, String)> {
    let (prog, rest) = if let Some(q) = command.strip_prefix('\'') {
        let end = q.find('\'')?;
        (q[..end].to_string(), q[end + 1..].trim_start())
    } else {
        let (p, r) = command.split_once(' ')?;
        (p.to_string(), r)
    };
    let sub = rest.strip_prefix("hook ")?;
    (prog.ends_with("/iai-mcp") && ["capture", "session-start"].contains(&sub)).then(|| (prog, sub.to_string()))
}

fn hooks_obj(doc: &mut Value) -> Result<&mut Map<String, Value>> {
    let root = doc.as_object_mut().ok_or_else(|| anyhow!("the file is JSON but not an object"))?;
    let hooks = root.entry("hooks").or_insert_with(|| json!({}));
    hooks.as_object_mut().ok_or_else(|| anyhow!("\"hooks\" is not an object"))
}

/// Adds our entries (or updates their binary path). Returns whether the
/// document changed.
pub fn install(doc: &mut Value, host: Host, bin: &Path) -> Result<bool> {
    let hooks = hooks_obj(doc)?;
    let mut changed = false;
    for (event, matcher, sub) in host.entries() {
        let want = command(bin, sub);
        let groups = hooks.entry(event).or_insert_with(|| json!([]));
        let groups = groups.as_array_mut().ok_or_else(|| anyhow!("\"hooks.{event}\" is not a list"))?;
        let mut present = false;
        // Entries of other shapes are the user's or the host's business: left as they are.
        for g in groups.iter_mut().filter_map(Value::as_object_mut) {
            let mut ours_here = 0;
            let mut others_here = 0;
            for h in g.get_mut("hooks").and_then(Value::as_array_mut).into_iter().flatten() {
                let Some(h) = h.as_object_mut() else {
                    others_here += 1;
                    continue;
                };
                match h.get("command").and_then(Value::as_str) {
                    Some(cmd) if ours(cmd).is_some_and(|(_, s)| s == sub) => {
                        present = true;
                        ours_here += 1;
                        if cmd != want {
                            h.insert("command".into(), json!(want));
                            changed = true;
                        }
                    }
                    _ => others_here += 1,
                }
            }
            // A group of ours alone follows our matcher (older installs had one).
            if ours_here > 0 && others_here == 0 {
                let current = g.get("matcher").and_then(Value::as_str).map(String::from);
                if current.as_deref() != matcher {
                    match matcher {
                        Some(m) => g.insert("matcher".into(), json!(m)),
                        None => g.remove("matcher"),
                    };
                    changed = true;
                }
            }
        }
        if !present {
            let mut group = Map::new();
            if let Some(m) = matcher {
                group.insert("matcher".into(), json!(m));
            }
            group.insert("hooks".into(), json!([{"type": "command", "command": want, "timeout": HOST_TIMEOUT_S}]));
            groups.push(Value::Object(group));
            changed = true;
        }
    }
    Ok(changed)
}

/// Removes our entries, and any group, event list or `hooks` object that is
/// left empty by that. Returns whether the document changed.
pub fn uninstall(doc: &mut Value) -> Result<bool> {
    let Some(root) = doc.as_object_mut() else { bail!("the file is JSON but not an object") };
    let Some(hooks) = root.get_mut("hooks").and_then(Value::as_object_mut) else { return Ok(false) };
    let mut changed = false;
    let mut emptied_events = Vec::new();
    for (event, groups) in hooks.iter_mut() {
        let Some(groups) = groups.as_array_mut() else { continue };
        let mut emptied = Vec::new();
        for (i, g) in groups.iter_mut().enumerate() {
            if let Some(list) = g.get_mut("hooks").and_then(Value::as_array_mut) {
                let before = list.len();
                list.retain(|h| h.get("command").and_then(Value::as_str).is_none_or(|c| ours(c).is_none()));
                if list.len() != before {
                    changed = true;
                    if list.is_empty() {
                        emptied.push(i);
                    }
                }
            }
        }
        // Only groups we emptied go; anything else stays as the user wrote it.
        let ours_gone = !emptied.is_empty();
        for i in emptied.into_iter().rev() {
            groups.remove(i);
        }
        if ours_gone && groups.is_empty() {
            emptied_events.push(event.clone());
        }
    }
    // Likewise only the event lists and the `hooks` object we emptied.
    for event in &emptied_events {
        hooks.remove(event);
    }
    if !emptied_events.is_empty() && hooks.is_empty() {
        root.remove("hooks");
    }
    Ok(changed)
}

/// Our entries in a document: (event, subcommand, binary path).
pub fn installed(doc: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let Some(hooks) = doc.get("hooks").and_then(Value::as_object) else { return out };
    for (event, groups) in hooks {
        for g in groups.as_array().into_iter().flatten() {
            for h in g.get("hooks").and_then(Value::as_array).into_iter().flatten() {
                if let Some((prog, sub)) = h.get("command").and_then(Value::as_str).and_then(ours) {
                    out.push((event.clone(), sub, prog));
                }
            }
        }
    }
    out
}

/// Reads a settings file: `{}` when absent; an error (and nothing written)
/// when it does not parse.
pub fn read(path: &Path) -> Result<(Value, Option<Vec<u8>>)> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let v = serde_json::from_slice(&bytes).map_err(|e| {
                anyhow!(
                    "{} does not parse as JSON ({e}); nothing was changed — fix or move the file, then run this again",
                    path.display()
                )
            })?;
            Ok((v, Some(bytes)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((json!({}), None)),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The file a settings path stands for: a symbolic link (dotfile managers
/// keep settings in a repository and link them) is written through, so the
/// link stays a link.
pub fn real_path(path: &Path) -> Result<PathBuf> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path)
            .with_context(|| format!("{} is a symbolic link that does not resolve; fix or remove it", path.display())),
        _ => Ok(path.to_path_buf()),
    }
}

/// Reads, changes and writes a settings file. The change is applied to what
/// is on disk at the moment of writing: if the host (or the user) changed the
/// file while we worked, we start again from their version rather than
/// overwrite it, and give up with a clear error if it keeps changing.
/// Returns what `change` returned for the version that was written.
pub fn edit<T>(path: &Path, mut change: impl FnMut(&mut Value) -> Result<Option<T>>) -> Result<Option<T>> {
    let real = real_path(path)?;
    for _ in 0..5 {
        let (mut doc, previous) = read(&real)?;
        let Some(out) = change(&mut doc)? else { return Ok(None) };
        match write(&real, &doc, previous.as_deref())? {
            true => return Ok(Some(out)),
            false => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    bail!(
        "{} keeps changing while iai-mcp edits it (is the host writing it?); nothing was changed — try again",
        path.display()
    )
}

/// Writes `doc` atomically (temporary file, fsync, rename), keeping the
/// previous content as `<file>.iai-mcp-backup` and the file's mode. Returns
/// false, writing nothing, if the file no longer holds `previous`.
fn write(path: &Path, doc: &Value, previous: Option<&[u8]>) -> Result<bool> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().ok_or_else(|| anyhow!("{} has no parent directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0o600);
    let tmp = dir.join(format!(
        ".{}.iai-mcp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("settings"),
        std::process::id()
    ));
    let mut text = serde_json::to_string_pretty(doc)?;
    text.push('\n');
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let written = f.write_all(text.as_bytes()).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", tmp.display()));
    }
    // The last look before the rename: a concurrent edit is not overwritten.
    let now = std::fs::read(path).ok();
    if now.as_deref() != previous {
        let _ = std::fs::remove_file(&tmp);
        return Ok(false);
    }
    if let Some(prev) = previous {
        let backup = PathBuf::from(format!("{}.iai-mcp-backup", path.display()));
        std::fs::write(&backup, prev).with_context(|| format!("cannot write the backup {}", backup.display()))?;
        std::fs::set_permissions(&backup, std::fs::Permissions::from_mode(mode))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).ok();
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_is_idempotent_and_uninstall_restores_the_document() {
        let original = json!({
            "model": "opus",
            "hooks": {"Stop": [{"hooks": [{"type": "command", "command": "notify-send done"}]}],
                      "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "audit.sh"}]}]},
            "permissions": {"allow": ["Bash(ls)"]}
        });
        let bin = Path::new("/opt/bin/iai-mcp");
        let mut doc = original.clone();
        assert!(install(&mut doc, Host::Claude, bin).expect("install"));
        let once = doc.clone();
        assert!(!install(&mut doc, Host::Claude, bin).expect("again"));
        assert_eq!(doc, once);
        assert_eq!(installed(&doc).len(), 3);
        assert!(uninstall(&mut doc).expect("uninstall"));
        assert_eq!(doc, original);
        let mut empty = json!({});
        install(&mut empty, Host::Codex, bin).expect("install");
        uninstall(&mut empty).expect("uninstall");
        assert_eq!(empty, json!({}));
    }

    #[test]
    fn commands_are_recognised_and_quoted() {
        assert_eq!(command(Path::new("/a b/iai-mcp"), "capture"), "'/a b/iai-mcp' hook capture");
        assert_eq!(ours("'/a b/iai-mcp' hook capture"), Some(("/a b/iai-mcp".into(), "capture".into())));
        assert_eq!(ours("/usr/bin/iai-mcp hook session-start").map(|o| o.1), Some("session-start".into()));
        assert_eq!(ours("/usr/bin/other hook capture"), None);
        assert_eq!(ours("/usr/bin/iai-mcp recall x"), None);
    }

    #[test]
    fn a_moved_binary_is_updated_in_place() {
        let mut doc = json!({});
        install(&mut doc, Host::Claude, Path::new("/old/iai-mcp")).expect("install");
        assert!(install(&mut doc, Host::Claude, Path::new("/new/iai-mcp")).expect("reinstall"));
        let paths: Vec<String> = installed(&doc).into_iter().map(|e| e.2).collect();
        assert_eq!(paths, vec!["/new/iai-mcp"; 3]);
    }

    /// Issue 9.11: a hooks group that is not an object panicked `hooks install`.
    #[test]
    fn odd_shapes_in_the_hosts_file_are_left_alone_not_a_panic() {
        let bin = Path::new("/opt/bin/iai-mcp");
        let mut doc =
            json!({"hooks": {"Stop": [7, "text", null, [1], {"hooks": "not a list"}, {"hooks": [3, {"command": 5}]}]}});
        assert!(install(&mut doc, Host::Claude, bin).expect("install"));
        assert_eq!(installed(&doc).len(), 3);
        let stop = doc["hooks"]["Stop"].as_array().expect("list");
        assert_eq!(
            &stop[..6],
            &json!([7, "text", null, [1], {"hooks": "not a list"}, {"hooks": [3, {"command": 5}]}])
                .as_array()
                .expect("list")[..]
        );
        assert!(uninstall(&mut doc).expect("uninstall"));
        assert_eq!(
            doc,
            json!({"hooks": {"Stop": [7, "text", null, [1], {"hooks": "not a list"}, {"hooks": [3, {"command": 5}]}]}})
        );
    }

    #[test]
    fn an_old_session_start_matcher_is_dropped_so_every_source_is_covered() {
        let bin = Path::new("/opt/bin/iai-mcp");
        let mut doc = json!({"hooks": {"SessionStart": [{"matcher": "startup|resume|clear", "hooks": [{"type": "command", "command": "/opt/bin/iai-mcp hook session-start"}]}]}});
        assert!(install(&mut doc, Host::Codex, bin).expect("install"));
        assert!(doc["hooks"]["SessionStart"][0].get("matcher").is_none(), "{doc}");
    }

    /// Issue 9.11: a symlinked settings.json (dotfile managers) was replaced
    /// by a regular file.
    #[test]
    fn a_symlinked_settings_file_is_written_through_and_stays_a_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("dotfiles");
        std::fs::create_dir(&repo).expect("mkdir");
        let target = repo.join("settings.json");
        std::fs::write(&target, "{\"model\": \"opus\"}").expect("write");
        let link = dir.path().join("settings.json");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let bin = Path::new("/opt/bin/iai-mcp");
        edit(&link, |doc| Ok(install(doc, Host::Claude, bin)?.then_some(()))).expect("edit");
        assert!(std::fs::symlink_metadata(&link).expect("meta").file_type().is_symlink(), "still a link");
        let (doc, _) = read(&target).expect("read");
        assert_eq!(doc["model"], "opus");
        assert_eq!(installed(&doc).len(), 3);
    }

    /// Issue 9.11: an edit by the host between our read and our rename was lost.
    #[test]
    fn a_concurrent_edit_by_the_host_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("settings.json");
        std::fs::write(&path, "{\"a\": 1}").expect("write");
        let bin = Path::new("/opt/bin/iai-mcp");
        let mut first = true;
        edit(&path, |doc| {
            if first {
                // The host writes while we are between read and rename.
                first = false;
                std::fs::write(&path, "{\"a\": 1, \"hostWrote\": true}").expect("host write");
            }
            Ok(install(doc, Host::Claude, bin)?.then_some(()))
        })
        .expect("edit");
        let (doc, _) = read(&path).expect("read");
        assert_eq!(doc["hostWrote"], true, "the host's change survives: {doc}");
        assert_eq!(installed(&doc).len(), 3, "and ours is in: {doc}");
    }
}
