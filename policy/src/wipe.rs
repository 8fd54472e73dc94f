//! Wiping what a request leaves on the stack. Heap blocks are wiped when
//! freed (the binary's global allocator); the stack is not freed, and
//! functions deep in a request (ciphers, parsers, formatters) leave copies of
//! what they handled in frames below the caller, until something else
//! happens to overwrite them. Each role's serve loop calls [`stack`] after
//! every request.

use zeroize::Zeroize;

/// Bytes of stack overwritten below the caller: far deeper than any request
/// goes (the deepest, a seal or a recall, uses a few KiB), and small enough
/// for every thread's stack.
pub const STACK_WIPE_BYTES: usize = 64 * 1024;

/// Overwrites the [`STACK_WIPE_BYTES`] of stack below the caller's frame.
#[inline(never)]
pub fn stack() {
    let mut area = [0xA5u8; STACK_WIPE_BYTES];
    area.zeroize();
    std::hint::black_box(&area);
}
