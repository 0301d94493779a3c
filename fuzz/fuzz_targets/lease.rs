//! Fuzz target: lease records (`lease::Lease` through serde_json); it must not touch the state dir.
//!
//! Properties: deserialising arbitrary bytes never panics; a record that parses re-serialises to
//! JSON that parses back equal (gc and `migrun list` re-read what alloc wrote).
#![no_main]

use libfuzzer_sys::fuzz_target;
use migrun::lease::Lease;

fuzz_target!(|data: &[u8]| {
    let Ok(lease) = serde_json::from_slice::<Lease>(data) else {
        return;
    };
    let bytes = serde_json::to_vec_pretty(&lease).expect("a lease always serialises");
    let again: Lease = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "re-serialised lease does not parse: {e}\n{}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_eq!(again, lease);
});
