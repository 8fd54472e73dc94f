//! `iai-mcp`: the one binary. Role dispatch happens first, before clap, any
//! thread or any runtime exists: `__keyholder` and `__storer` are entered only
//! by re-executing `/proc/self/exe`.
#![deny(unsafe_code)]

mod cli;
mod hooks;
mod passphrase;
mod roles;
mod sys;

use std::process::ExitCode;

fn main() -> ExitCode {
    if let Some(code) = roles::dispatch() {
        return ExitCode::from(code);
    }
    cli::main()
}
