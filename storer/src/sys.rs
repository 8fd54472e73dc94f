//! The storer's only unsafe code: adopting the socketpair descriptor the
//! keyholder passed by number.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Takes ownership of inherited descriptor `fd` after checking it is an open
/// socket. Call once per descriptor.
pub fn adopt_socket(fd: RawFd) -> io::Result<OwnedFd> {
    if fd <= 2 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "descriptor number must be above 2"));
    }
    let mut st = std::mem::MaybeUninit::<nix::libc::stat>::uninit();
    // SAFETY: fstat only writes into the stat buffer we own; an invalid fd
    // makes it fail with EBADF, which we report.
    let rc = unsafe { nix::libc::fstat(fd, st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat returned 0, so it filled the buffer.
    let st = unsafe { st.assume_init() };
    if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFSOCK {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "descriptor is not a socket"));
    }
    // SAFETY: fd is open (fstat succeeded), is a socket, was handed to this
    // process by its parent for this purpose, and nothing else in the process
    // owns it: the role adopts it exactly once, first thing.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes ownership of a descriptor the kernel just installed in this process
/// from an SCM_RIGHTS message.
pub fn adopt_received(fd: RawFd) -> OwnedFd {
    // SAFETY: recvmsg returned this descriptor in an SCM_RIGHTS control
    // message: the kernel installed it in our table a moment ago and no other
    // owner exists; it is adopted exactly once, right after recvmsg.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Gives the heap's free pages back to the system: loading the store and
/// writing the index snapshot free tens of megabytes at once, which glibc
/// would otherwise keep (the resident set would stay as if still in use).
pub fn give_back_free_memory() {
    // SAFETY: malloc_trim only releases free memory of glibc's own heap; it
    // takes no pointer and is safe to call at any time from any thread.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
