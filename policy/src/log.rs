//! The roles' log lines. A daemon's stderr is `run/daemon.log` (the shim's is
//! its host's pipe); when that write fails — a full disk, a closed pipe — the
//! line is lost, never the process: `eprintln!` would panic, and under
//! `panic = "abort"` a full disk would take the store down with it.

use std::fmt;
use std::io::Write;

/// Writes one line to stderr, ignoring every error.
pub fn line(args: fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args);
    let _ = err.write_all(b"\n");
}

/// `eprintln!` that cannot panic: see [`line`].
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log::line(format_args!($($arg)*))
    };
}
