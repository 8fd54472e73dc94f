//! The storer's parsing of what the keyholder answers.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(resp) = iai_keyholder::wire::Response::decode(data) {
            assert!(iai_keyholder::wire::Response::decode(&resp.encode()).is_ok());
        }
    });
}
