//! Entry points of the daemon roles. Their arguments are written by our own
//! code, never by a user, so they are parsed by hand and strictly.

use std::ffi::OsString;
use std::path::PathBuf;

use iai_keyholder::keyfile::SlotKind;
use iai_policy::{Home, Options};

/// The role arguments: `--home PATH [--keyholder-fd N] [--connector-fd N] [--allow-degraded-sandbox]
/// [--recovery-code | --keyring]`.
struct RoleArgs {
    home: Home,
    keyholder_fd: Option<i32>,
    connector_fd: Option<i32>,
    opts: Options,
    /// Which secret the keyholder reads on stdin: the passphrase, the
    /// recovery code or the keyring's secret.
    secret: SlotKind,
}

fn parse(args: impl Iterator<Item = OsString>) -> Result<RoleArgs, String> {
    let mut home = None;
    let mut keyholder_fd = None;
    let mut connector_fd = None;
    let mut opts = Options::default();
    let mut secret = SlotKind::Passphrase;
    let mut args = args;
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--home") => home = args.next().map(PathBuf::from),
            Some("--keyholder-fd") => {
                keyholder_fd = args.next().and_then(|v| v.to_str().and_then(|s| s.parse().ok()));
                if keyholder_fd.is_none() {
                    return Err("--keyholder-fd needs a number".into());
                }
            }
            Some("--connector-fd") => {
                connector_fd = args.next().and_then(|v| v.to_str().and_then(|s| s.parse().ok()));
                if connector_fd.is_none() {
                    return Err("--connector-fd needs a number".into());
                }
            }
            Some("--allow-degraded-sandbox") => opts.allow_degraded = true,
            Some("--recovery-code") => secret = SlotKind::RecoveryCode,
            Some("--keyring") => secret = SlotKind::Keyring,
            _ => return Err(format!("unexpected role argument {a:?}")),
        }
    }
    let home = Home::new(home.ok_or("--home is required")?).map_err(|e| e.to_string())?;
    Ok(RoleArgs { home, keyholder_fd, connector_fd, opts, secret })
}

/// Runs a daemon role if argv[1] names one; returns its exit code.
pub fn dispatch() -> Option<u8> {
    let mut args = std::env::args_os();
    let role = args.nth(1)?;
    let run: fn(RoleArgs) -> i32 = match role.to_str()? {
        "__keyholder" => |a| iai_keyholder::daemon::run(a.home, a.opts, a.secret),
        "__storer" => |a| match a.keyholder_fd {
            Some(fd) => iai_storer::daemon::run(a.home, fd, a.opts),
            None => {
                iai_policy::log!("iai-mcp: the storer role needs --keyholder-fd");
                2
            }
        },
        "__connector" => |a| match a.connector_fd {
            Some(fd) => iai_storer::connector::run(a.home, fd, a.opts),
            None => {
                iai_policy::log!("iai-mcp: the connector role needs --connector-fd");
                2
            }
        },
        "__shim" => |a| match a.connector_fd {
            Some(fd) => crate::cli::shim_role(a.home, fd, a.opts),
            None => {
                iai_policy::log!("iai-mcp: the shim role needs --connector-fd");
                2
            }
        },
        _ => return None,
    };
    let code = match parse(args) {
        Ok(a) => run(a),
        Err(e) => {
            iai_policy::log!("iai-mcp: {e} (daemon roles are started by `iai-mcp unlock`, not by hand)");
            2
        }
    };
    Some(u8::try_from(code).unwrap_or(1))
}
