//! Container engines: the docker launcher, OCI hooks and config rewriting, the runtime shim; they must not allocate by themselves.

pub mod docker;
pub mod oci;
pub mod runtime;

/// Exit codes for this module's errors (see `exit`).
pub fn exit_code_of(_e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    None
}
