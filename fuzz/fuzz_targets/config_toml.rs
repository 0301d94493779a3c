//! Fuzz target: the policy file (`config::Config::parse`); it must not read files.
//!
//! Properties: never panics; an error is one non-empty line (it ends up in a one-line CLI error);
//! an accepted config written back as TOML parses back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use migrun::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Ok(cfg) => {
            let written = toml::to_string(&cfg).expect("a Config always serialises to TOML");
            let again = Config::parse(&written)
                .unwrap_or_else(|e| panic!("written config does not parse: {e}\n{written}"));
            assert_eq!(again, cfg, "{written}");
        }
        Err(msg) => {
            assert!(
                !msg.trim().is_empty(),
                "empty error for {text:?}; toml said: {:?}",
                toml::from_str::<Config>(text)
                    .map(|_| ())
                    .unwrap_err()
                    .to_string()
            );
            assert!(
                !msg.contains(['\n', '\r']),
                "error for {text:?} is not one line: {msg:?}"
            );
        }
    }
});
