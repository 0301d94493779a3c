//! Fuzz target: profile parsing (`profile::ProfileSpec` FromStr/Display); it must not touch the GPU or the state dir.
//!
//! Properties: parsing never panics; a parsed spec's Display re-parses to the same spec (so a profile
//! that migrun prints in a message or a lease can always be typed back in); every error is one line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use migrun::profile::{ProfileName, ProfileSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match s.parse::<ProfileSpec>() {
        Ok(spec) => {
            let shown = spec.to_string();
            let again: ProfileSpec = shown.parse().unwrap_or_else(|e| {
                panic!("{s:?} parsed to {spec:?}, whose Display {shown:?} does not parse: {e}")
            });
            assert_eq!(again, spec, "{s:?} -> {shown:?} re-parses differently");
            if let ProfileSpec::Name(n) = spec {
                assert_eq!(s.parse::<ProfileName>(), Ok(n));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                !msg.contains(['\n', '\r']),
                "error for {s:?} is not one line: {msg:?}"
            );
        }
    }
});
