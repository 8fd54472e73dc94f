//! The roles' log lines. A daemon's stderr is `run/daemon.log` (the shim's is
//! its host's pipe); when that write fails — a full disk, a closed pipe — the
//! line is lost, never the process: `eprintln!` would panic, and under
//! `panic = "abort"` a full disk would take the store down with it.

use std::fmt;
use std::io::Write;

/// Writes one line to stderr, stamped with the UTC time, ignoring every error.
pub fn line(args: fmt::Arguments<'_>) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{} ", utc(secs));
    let _ = err.write_fmt(args);
    let _ = err.write_all(b"\n");
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch (the civil-from-days
/// algorithm; the roles carry no date library).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `eprintln!` that cannot panic: see [`line`].
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log::line(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_matches_known_dates() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::utc(1_795_967_535), "2026-11-29T15:52:15Z");
        assert_eq!(super::utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
