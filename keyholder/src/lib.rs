//! The iai-mcp keyholder: the only process that ever holds the data key.
//!
//! It reads `.key`, receives the passphrase on a pipe, unwraps the DEK, starts
//! the storer with one end of a socketpair and locks itself down to that one
//! descriptor. It then seals, unseals and tags values for the storer, building
//! the associated data itself from typed fields.
//!
//! It trusts the kernel and the passphrase pipe from `iai-mcp unlock`. It does
//! not trust the storer: every frame is length-checked before allocation, every
//! request is typed, and a malformed frame ends the connection (and so the
//! keyholder, which fails closed). It must never open a file after start,
//! create a socket, execute a program, or let key material reach a log, an
//! error message, a core dump or swap.
#![deny(unsafe_code)]

pub mod client;
pub mod daemon;
/// The `.key` format (its own crate, `keyfile/`).
pub use iai_keyfile as keyfile;
pub mod seal;
pub mod startup;
mod sys;
pub mod wire;

pub use keyfile::{Dek, KdfParams, KeyFile, KeyFileError, KeyId, Passphrase};
pub use seal::{Field, RowId, SealError, Sealer, SEAL_LIMIT};
