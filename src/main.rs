//! `iai-mcp`: the one binary. Role dispatch happens first, before clap, any
//! thread or any runtime exists: `__keyholder` and `__storer` are entered only
//! by re-executing `/proc/self/exe`.
#![deny(unsafe_code)]

mod backup;
mod cli;
mod export;
mod hooks;
mod keyring;
mod keys;
mod model;
mod passphrase;
mod roles;
mod rotate;
mod service;
mod sys;

use std::process::ExitCode;

/// Every heap block is wiped when freed, in every role: memories, cues and
/// passphrases pass through buffers that no code could reliably wipe by hand
/// (parsers, growing vectors, reply encoders). SECURITY.md, "Plaintext in the
/// storer's memory".
#[global_allocator]
static ALLOC: zeroizing_alloc::ZeroAlloc<std::alloc::System> = zeroizing_alloc::ZeroAlloc(std::alloc::System);

fn main() -> ExitCode {
    if let Some(code) = roles::dispatch() {
        return ExitCode::from(code);
    }
    cli::main()
}
