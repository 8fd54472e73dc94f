//! The keyholder's only unsafe code: pinning secret pages in RAM and out of
//! core dumps.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::ptr::NonNull;

use nix::sys::mman::{madvise, mlock, MmapAdvise};

/// Locks the pages holding `len` bytes at `ptr` into RAM (never swapped) and
/// marks them excluded from core dumps.
pub fn pin_secret(ptr: *const u8, len: usize) -> nix::Result<()> {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| usize::try_from(p).ok())
        .unwrap_or(4096);
    let start = (ptr as usize) & !(page - 1);
    let end = (ptr as usize).saturating_add(len).div_ceil(page) * page;
    let Some(base) = NonNull::new(start as *mut c_void) else {
        return Err(nix::errno::Errno::EINVAL);
    };
    // SAFETY: mlock and madvise(MADV_DONTDUMP) change only the paging
    // attributes of the whole pages around a live object the caller owns; they
    // neither read nor write the memory and cannot invalidate any reference.
    unsafe {
        mlock(base, end - start)?;
        madvise(base, end - start, MmapAdvise::MADV_DONTDUMP)?;
    }
    Ok(())
}
