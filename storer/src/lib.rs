//! The iai-mcp storer: the encrypted database, the in-memory recall index and
//! the client socket.
//!
//! It never holds key material. Every value derived from a memory is sealed by
//! the keyholder (over the socketpair the storer was started with) before it
//! reaches SQLite, and unsealed only in memory. The recall index is built in
//! RAM at unlock and is never written out.
//!
//! It trusts the keyholder's answers and the kernel's peer credentials. It
//! does not trust its clients: every connection's peer uid must be the
//! storer's own, every frame is size-checked, and every request is typed and
//! validated. It must never read `.key`, open a network socket, or execute a
//! program.
#![deny(unsafe_code)]

pub mod client;
pub mod connector;
pub mod cue;
pub mod daemon;
pub mod db;
pub mod embed;
pub mod index;
pub mod limits;
pub mod proto;
mod sys;
