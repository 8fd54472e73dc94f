//! Where iai-mcp keeps its files. Every role and the audit derive paths from
//! [`Home`], so the layout the sandbox grants is the layout the code uses.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The environment variable that moves the home away from `~/.iai-mcp`.
pub const HOME_ENV: &str = "IAI_MCP_HOME";

/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// A validated iai-mcp home directory: absolute, and short enough that the
/// storer's socket path fits in `sun_path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

/// Why a home path cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    #[error("neither IAI_MCP_HOME nor HOME is set; set IAI_MCP_HOME to the directory iai-mcp should use")]
    NoHome,
    #[error("the iai-mcp home must be an absolute path, got {0:?}")]
    NotAbsolute(PathBuf),
    #[error("the iai-mcp home {0:?} is too long for a UNIX socket path ({1} bytes for the socket, at most 107); choose a shorter IAI_MCP_HOME")]
    TooLong(PathBuf, usize),
}

impl Home {
    /// The home named by `IAI_MCP_HOME`, or `$HOME/.iai-mcp`.
    pub fn from_env() -> Result<Self, LayoutError> {
        Self::from_vars(std::env::var_os(HOME_ENV), std::env::var_os("HOME"))
    }

    /// Pure form of [`Home::from_env`], for tests.
    pub fn from_vars(iai_home: Option<OsString>, home: Option<OsString>) -> Result<Self, LayoutError> {
        let root = match (iai_home, home) {
            (Some(p), _) if !p.is_empty() => PathBuf::from(p),
            (_, Some(h)) if !h.is_empty() => PathBuf::from(h).join(".iai-mcp"),
            _ => return Err(LayoutError::NoHome),
        };
        Self::new(root)
    }

    /// Validates `root` as a home directory path (it need not exist yet).
    pub fn new(root: PathBuf) -> Result<Self, LayoutError> {
        if !root.is_absolute() {
            return Err(LayoutError::NotAbsolute(root));
        }
        let home = Home { root };
        let len = home.socket().as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(LayoutError::TooLong(home.root, len));
        }
        Ok(home)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The wrapped data key. Only the keyholder reads it.
    pub fn key(&self) -> PathBuf {
        self.root.join(".key")
    }
    /// The storer's whole persistent view.
    pub fn store_dir(&self) -> PathBuf {
        self.root.join("store")
    }
    pub fn db(&self) -> PathBuf {
        self.store_dir().join("memory.db")
    }
    /// The storer's socket, pid file and log.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("iai-mcp.sock")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.run_dir().join("iai-mcp.pid")
    }
    /// Operational log of the daemon pair. It never receives memory content.
    pub fn log_file(&self) -> PathBuf {
        self.run_dir().join("daemon.log")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_override_wins_over_home() {
        let h = Home::from_vars(Some("/x/y".into()), Some("/home/u".into())).expect("valid");
        assert_eq!(h.root(), Path::new("/x/y"));
        assert_eq!(h.socket(), Path::new("/x/y/run/iai-mcp.sock"));
        let h = Home::from_vars(None, Some("/home/u".into())).expect("valid");
        assert_eq!(h.key(), Path::new("/home/u/.iai-mcp/.key"));
    }

    #[test]
    fn relative_and_overlong_homes_are_refused() {
        assert!(matches!(Home::new("rel".into()), Err(LayoutError::NotAbsolute(_))));
        let long = format!("/{}", "a".repeat(100));
        assert!(matches!(Home::new(long.into()), Err(LayoutError::TooLong(..))));
        assert!(matches!(Home::from_vars(None, None), Err(LayoutError::NoHome)));
    }
}
