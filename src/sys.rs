//! The binary's only unsafe code: reading a passphrase from a descriptor the
//! user handed us by number (`--passphrase-fd N`).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};

/// Duplicates inherited descriptor `fd` into a `File` we own, after checking
/// that it is open. The original descriptor is left as it was.
pub fn dup_inherited(fd: RawFd) -> io::Result<File> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(nix::libc::EBADF));
    }
    // SAFETY: F_GETFD only reads the descriptor flags; it fails with EBADF for
    // a descriptor that is not open.
    if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (checked above), and this single-threaded
    // command does not close it while the borrow lives: the borrow is used only
    // to duplicate it, on the next line.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    Ok(File::from(borrowed.try_clone_to_owned()?))
}
