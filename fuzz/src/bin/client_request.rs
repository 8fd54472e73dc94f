//! The storer's client protocol: frames from the socket, then requests.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let mut cursor = std::io::Cursor::new(data);
        while let Ok(iai_storer::proto::Frame::Body(body)) = iai_storer::proto::read_frame(&mut cursor) {
            if let Ok(iai_storer::proto::Request::Capture(c)) = iai_storer::proto::parse_request(&body) {
                let _ = c.validate(0);
            }
        }
        let _ = iai_storer::proto::parse_request(data);
        let _ = iai_storer::proto::decode_reply(data);
    });
}
