//! The one frame codec of every channel: `length u32 LE | body`, the body at
//! most a limit the channel chooses (the client socket's JSON frames, the
//! keyholder's binary frames). A length over the limit is reported before
//! anything is allocated or read past the prefix.

use std::io::{self, Read, Write};

/// One read: a body, a clean end of stream between frames, or a length over
/// the limit (the channel cannot continue after it: the body was not read).
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Body(Vec<u8>),
    Eof,
    TooLarge(usize),
}

/// The end of stream inside a length prefix or a body (`UnexpectedEof`).
pub const CUT_IN_PREFIX: &str = "end of stream inside a length prefix";
pub const CUT_IN_BODY: &str = "end of stream inside a frame";

pub fn read(r: &mut impl Read, max: usize) -> io::Result<Frame> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(Frame::Eof),
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, CUT_IN_PREFIX)),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Ok(Frame::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => io::Error::new(io::ErrorKind::UnexpectedEof, CUT_IN_BODY),
        _ => e,
    })?;
    Ok(Frame::Body(body))
}

/// Writes one frame in one write (prefix and body together); a body over
/// `max` is refused with `InvalidInput` and nothing is written.
pub fn write(w: &mut impl Write, body: &[u8], max: usize) -> io::Result<()> {
    if body.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a frame of {} bytes is over {max}", body.len()),
        ));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(body);
    w.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_every_cut_is_named() {
        let mut wire = Vec::new();
        write(&mut wire, b"hello", 16).expect("write");
        write(&mut wire, b"", 16).expect("write");
        let mut r = &wire[..];
        assert_eq!(read(&mut r, 16).expect("read"), Frame::Body(b"hello".to_vec()));
        assert_eq!(read(&mut r, 16).expect("read"), Frame::Body(Vec::new()));
        assert_eq!(read(&mut r, 16).expect("read"), Frame::Eof);
        assert_eq!(read(&mut &wire[..], 4).expect("read"), Frame::TooLarge(5));
        let e = read(&mut &wire[..2], 16).expect_err("cut prefix");
        assert_eq!((e.kind(), e.to_string()), (io::ErrorKind::UnexpectedEof, CUT_IN_PREFIX.to_string()));
        let e = read(&mut &wire[..6], 16).expect_err("cut body");
        assert_eq!((e.kind(), e.to_string()), (io::ErrorKind::UnexpectedEof, CUT_IN_BODY.to_string()));
        assert_eq!(write(&mut Vec::new(), &[0; 17], 16).expect_err("too big").kind(), io::ErrorKind::InvalidInput);
    }
}
