//! The policy crate's only unsafe code: asking the kernel for its Landlock ABI
//! version (the binding keeps that query private).
#![allow(unsafe_code)]

const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;

/// The kernel's Landlock ABI version, or why Landlock is unavailable.
pub fn landlock_abi() -> Result<i32, String> {
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag, the
    // kernel only returns the ABI version (or an error); no memory is read or
    // written and no descriptor is created.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v >= 0 {
        return i32::try_from(v).map_err(|_| "implausible Landlock version".to_string());
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EOPNOTSUPP) => {
            Err("Landlock is built into the kernel but disabled at boot (add landlock to lsm=)".into())
        }
        Some(libc::ENOSYS) => Err("the kernel has no Landlock support".into()),
        other => Err(format!("Landlock version query failed (errno {other:?})")),
    }
}
