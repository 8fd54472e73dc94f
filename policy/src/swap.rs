//! Whether the plaintext a storer holds in RAM can reach a disk through swap.
//! The storer locks its memory when the memlock limit allows it; where it
//! does not, `status` and `audit` say whether an unencrypted swap is on,
//! instead of implying that nothing ever reaches the disk.

/// One active swap area and whether its contents stay off a disk in the clear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwapArea {
    pub name: String,
    pub safe: Safety,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Safety {
    /// Compressed RAM (zram): never written to a disk.
    InMemory,
    /// A dm-crypt device.
    Encrypted,
    /// A plain partition or file, or one we cannot tell: treat as unencrypted.
    Unencrypted,
}

/// The swap areas of `/proc/swaps`, each classified with `dm_uuid`, which
/// gives a device-mapper device's UUID (`/sys/block/dm-N/dm/uuid`).
pub fn classify(proc_swaps: &str, dm_uuid: impl Fn(&str) -> Option<String>) -> Vec<SwapArea> {
    proc_swaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(|name| {
            let dev = name.rsplit('/').next().unwrap_or(name);
            let safe = if dev.starts_with("zram") {
                Safety::InMemory
            } else if dev.starts_with("dm-") && dm_uuid(dev).is_some_and(|u| u.starts_with("CRYPT-")) {
                Safety::Encrypted
            } else {
                Safety::Unencrypted
            };
            SwapArea { name: name.to_string(), safe }
        })
        .collect()
}

/// The active swap areas of this machine.
pub fn areas() -> Vec<SwapArea> {
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    classify(&swaps, |dev| std::fs::read_to_string(format!("/sys/block/{dev}/dm/uuid")).ok())
}

/// Unencrypted swap areas, by name.
pub fn unencrypted() -> Vec<String> {
    areas().into_iter().filter(|a| a.safe == Safety::Unencrypted).map(|a| a.name).collect()
}

/// Locks all of this process's memory, present and future, if the memlock
/// limit is unlimited; with a finite limit a growing process would see its
/// allocations fail, so it is left unlocked. Returns whether it is locked.
/// Call before the sandbox (it needs `mlockall`).
pub fn lock_all_memory() -> bool {
    use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
    match getrlimit(Resource::RLIMIT_MEMLOCK) {
        Ok((soft, _)) if soft == RLIM_INFINITY => nix::sys::mman::mlockall(
            nix::sys::mman::MlockAllFlags::MCL_CURRENT | nix::sys::mman::MlockAllFlags::MCL_FUTURE,
        )
        .is_ok(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_areas_are_told_apart() {
        let swaps = "Filename\tType\tSize\tUsed\tPriority\n\
                     /dev/sda2 partition 8388604 0 -2\n\
                     /swapfile file 1048572 0 -3\n\
                     /dev/zram0 partition 4194300 0 100\n\
                     /dev/dm-1 partition 8388604 0 -4\n\
                     /dev/dm-2 partition 8388604 0 -5\n";
        let uuid = |dev: &str| match dev {
            "dm-1" => Some("CRYPT-LUKS2-abc-cryptswap".to_string()),
            "dm-2" => Some("LVM-xyz".to_string()),
            _ => None,
        };
        let got: Vec<(String, Safety)> = classify(swaps, uuid).into_iter().map(|a| (a.name, a.safe)).collect();
        assert_eq!(
            got,
            vec![
                ("/dev/sda2".into(), Safety::Unencrypted),
                ("/swapfile".into(), Safety::Unencrypted),
                ("/dev/zram0".into(), Safety::InMemory),
                ("/dev/dm-1".into(), Safety::Encrypted),
                ("/dev/dm-2".into(), Safety::Unencrypted),
            ]
        );
        assert!(classify("Filename\tType\tSize\tUsed\tPriority\n", |_| None).is_empty());
    }
}
