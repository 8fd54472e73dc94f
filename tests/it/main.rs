//! Integration tests: the real `iai-mcp` binary, its real keyholder and storer
//! processes, a real SQLite file, in temporary homes.

mod audit;
mod backup;
mod export;
mod history;
mod homes;
mod hooks;
mod integrity;
mod keyfile;
mod keyring;
mod keys;
mod lifecycle;
mod mcp;
mod ordinary;
mod plaintext;
mod protocol;
mod rotate;
mod secrets;
mod semantic;
mod snapshot;
mod support;
mod uid;
