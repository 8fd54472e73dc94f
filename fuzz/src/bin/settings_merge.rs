//! Merging our hooks into a host's settings file and removing them again:
//! never a panic; afterwards none of ours remain, every other key is as it
//! was, and every event list that held someone else's hooks is intact.
#[path = "../../../src/hooks/settings.rs"]
#[allow(dead_code)]
mod settings;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(original) = serde_json::from_slice::<serde_json::Value>(data) else { return };
        if !settings::installed(&original).is_empty() {
            return;
        }
        let bin = std::path::Path::new("/opt/bin/iai-mcp");
        for host in [settings::Host::Claude, settings::Host::Codex] {
            let mut doc = original.clone();
            if settings::install(&mut doc, host, bin).is_err() {
                continue;
            }
            assert_eq!(settings::installed(&doc).len(), 3);
            settings::uninstall(&mut doc).expect("uninstall after install");
            assert!(settings::installed(&doc).is_empty());
            let (Some(before), Some(after)) = (original.as_object(), doc.as_object()) else { continue };
            for (k, v) in before {
                if k != "hooks" {
                    assert_eq!(after.get(k), Some(v), "key {k} changed");
                }
            }
            if let Some(hooks) = before.get("hooks").and_then(|h| h.as_object()) {
                for (event, list) in hooks {
                    if list.as_array().is_some_and(|l| !l.is_empty()) {
                        assert_eq!(doc["hooks"].get(event), Some(list), "event {event} changed");
                    }
                }
            }
        }
    });
}
