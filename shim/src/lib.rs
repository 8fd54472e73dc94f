//! The iai-mcp MCP server (`iai-mcp mcp`): a thin stdio front for MCP hosts
//! such as Claude Code and Codex.
//!
//! It holds no key, opens no file and makes no connection of its own: every
//! tool call becomes one request on a connection to the storer that its
//! connector made and passed over (see `iai_storer::connector`). It trusts the storer's answers and nothing from the
//! host: tool arguments are typed and bounded, and recalled text goes back as
//! quoted data under a fixed notice, with characters that could hide or
//! restyle text removed. stdout carries only protocol; logs go to stderr.
//! When the store is locked or the daemon is gone, every tool answers with an
//! error result that says what to do, and the shim reconnects by itself on
//! the next call.
#![forbid(unsafe_code)]

mod neutralize;
mod schema;
mod tools;

pub use neutralize::{is_hidden, neutralize};
pub use tools::{Shim, INSTRUCTIONS, RECALL_NOTICE};

/// Serves MCP on stdin/stdout until the host closes the stream; returns the
/// process exit code.
pub fn run(connector: iai_storer::connector::Connector) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            iai_policy::log!("iai-mcp mcp: cannot start the runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(async move {
        use rmcp::ServiceExt;
        let service = match Shim::new(connector).serve(rmcp::transport::stdio()).await {
            Ok(s) => s,
            Err(e) => {
                iai_policy::log!("iai-mcp mcp: the MCP session did not start: {e}");
                return 1;
            }
        };
        match service.waiting().await {
            Ok(_) => 0,
            Err(e) => {
                iai_policy::log!("iai-mcp mcp: {e}");
                1
            }
        }
    })
}
