//! The keyholder's parsing of what the storer sends it.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(req) = iai_keyholder::wire::Request::decode(data) {
            // What decodes, encodes back to a frame that decodes the same way.
            let again = req.encode();
            assert!(iai_keyholder::wire::Request::decode(&again).is_ok());
        }
    });
}
