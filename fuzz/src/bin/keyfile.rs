//! The `.key` header parser (a hostile header must be refused, never panic
//! or ask for unbounded work).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(kf) = iai_keyholder::KeyFile::parse(data) {
            assert_eq!(iai_keyholder::KeyFile::parse(&kf.to_bytes()).map(|k| k.to_bytes()).ok(), Some(kf.to_bytes()));
        }
    });
}
