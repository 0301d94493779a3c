//! Fuzz target: the OCI state JSON a runtime pipes to a hook (`engine::oci::parse_state`); it must not touch files.
//!
//! Properties: never panics (a panicking hook fails the container start with no log); an accepted
//! state has a container id and an absolute bundle path; every error is one line (hooks log it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use migrun::engine::oci::parse_state;

fuzz_target!(|data: &[u8]| {
    match parse_state(data, "prestart") {
        Ok(state) => {
            assert!(!state.id.is_empty());
            assert!(state.bundle.is_absolute(), "{:?}", state.bundle);
            assert!(state.pid.is_none_or(|p| p > 0));
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                !msg.contains(['\n', '\r']),
                "error is not one line: {msg:?}"
            );
        }
    }
});
