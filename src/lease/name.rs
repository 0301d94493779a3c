//! Lease names (`migrun alloc --name trainer`): the parsed [`LeaseName`] and its rules; it must not read or write the registry.
//!
//! A lease name is also a CDI device name (`migrun.io/mig=trainer`) declared in a spec directory shared by
//! every lease, and a `migrun release` target. So it must be a name CDI accepts (asked of the
//! `container-device-interface` crate itself, whose own check is private to it), and it must not look like
//! the other two kinds of target: a lease id (all digits) or a MIG UUID (`MIG-…`).

use container_device_interface::device::new_device;
use container_device_interface::spec::Spec as CheckedSpec;
use container_device_interface::specs::config::Device;
use serde::{Deserialize, Serialize};

/// The longest name accepted: printed in status lines and part of spec file contents, never of a path.
pub const MAX_LEN: usize = 64;

/// A lease's name, checked by [`LeaseName::parse`]. Records hold it as a plain string in JSON; the
/// registry checks it again when it reads one ([`LeaseName::check`]), as every other record field.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseName(String);

/// Why a string is not a lease name; the message is one line with the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad lease name {name:?}: {why}; pick another --name")]
pub struct NameError {
    pub name: String,
    pub why: &'static str,
}

impl crate::exit::ExitCodeOf for NameError {
    fn exit_code(&self) -> i32 {
        crate::exit::USAGE
    }
}

/// Whether the CDI crate takes `name` as a device name: a one-device probe through the crate's
/// public `new_device`, which runs its device-name check (no JSON schema, no I/O). The crate keeps
/// `Device`'s fields to itself, so the probe is made from JSON.
fn cdi_accepts(name: &str) -> bool {
    let probe = serde_json::json!({
        "name": name,
        "containerEdits": { "env": ["MIGRUN_NAME_CHECK=1"] },
    });
    serde_json::from_value::<Device>(probe)
        .is_ok_and(|d| new_device(&CheckedSpec::default(), &d).is_ok())
}

impl LeaseName {
    /// Checks `s` against every rule; `Err` names the first one it breaks.
    pub fn parse(s: &str) -> Result<LeaseName, NameError> {
        Self::check(s)?;
        Ok(LeaseName(s.to_string()))
    }

    /// The rules, for a name read back from a record.
    pub fn check(s: &str) -> Result<(), NameError> {
        let bad = |why| {
            Err(NameError {
                name: s.chars().take(MAX_LEN + 8).collect(),
                why,
            })
        };
        if s.is_empty() {
            return bad("a name cannot be empty");
        }
        if s.len() > MAX_LEN {
            return bad("longer than 64 bytes");
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return bad("all digits would collide with a lease id");
        }
        if s.len() >= 4 && s.as_bytes()[..4].eq_ignore_ascii_case(b"MIG-") {
            return bad("a name starting with MIG- would collide with a MIG UUID");
        }
        if !cdi_accepts(s) {
            return bad(
                "CDI device names use letters, digits, '-', '_', '.' or ':', starting and ending with a letter or digit",
            );
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for LeaseName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LeaseName::parse(s)
    }
}

impl std::fmt::Display for LeaseName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_table() {
        // (name, Ok or words of the refusal)
        let long = "a".repeat(MAX_LEN + 1);
        let cases: &[(&str, Result<(), &str>)] = &[
            ("trainer", Ok(())),
            ("job-1.a:b_c", Ok(())),
            ("7b", Ok(())),
            ("A", Ok(())),
            (&long[1..], Ok(())),
            (&long, Err("longer than 64")),
            ("", Err("empty")),
            ("12", Err("lease id")),
            ("MIG-x", Err("MIG UUID")),
            ("mig-x", Err("MIG UUID")),
            ("a b", Err("letters, digits")),
            ("-x", Err("starting and ending")),
            ("x.", Err("starting and ending")),
            ("a/b", Err("letters, digits")),
            ("../x", Err("letters, digits")),
            ("trainé", Err("letters, digits")),
            ("a\nb", Err("letters, digits")),
            ("a=b", Err("letters, digits")),
        ];
        for (name, want) in cases {
            match (LeaseName::parse(name), want) {
                (Ok(n), Ok(())) => assert_eq!(n.as_str(), *name),
                (Err(e), Err(words)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(words), "{name:?}: {msg}");
                    assert!(!msg.contains('\n'), "one line: {msg}");
                    assert!(msg.ends_with("pick another --name"), "{msg}");
                }
                (got, want) => panic!("{name:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn names_round_trip_as_plain_strings() {
        let n = LeaseName::parse("trainer").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"trainer\"");
        let back: LeaseName = serde_json::from_str("\"trainer\"").unwrap();
        assert_eq!(back, n);
    }
}
