//! Container engines: the docker launcher, OCI hooks and config rewriting, the runtime shim; they must not allocate by themselves.

pub mod docker;
pub mod oci;
pub mod runtime;

/// Exit codes for this module's errors (see `exit`).
pub fn exit_code_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    oci::exit_code_of(e).or_else(|| runtime::exit_code_of(e))
}

/// Tells gc whether a container holding a lease still exists, by asking its engine.
/// (The launcher's branch adds the docker arm; the two merge into one dispatching probe.)
pub struct HookProbe;

/// The probe to use for gc and allocation.
pub fn probe() -> HookProbe {
    HookProbe
}

impl crate::alloc::HolderProbe for HookProbe {
    fn container_alive(&self, id: &str, engine: &str) -> Option<bool> {
        oci::container_alive(id, engine)
    }
}
