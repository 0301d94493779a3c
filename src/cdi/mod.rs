//! CDI (Container Device Interface) specs for MIG slices: build, store, read the NVIDIA toolkit's spec, apply to a bundle; it must not allocate, release or know engines.
//!
//! One spec file per lease, kind [`spec::KIND`] (`migrun.io/mig`), in a CDI spec directory
//! ([`store::DYNAMIC_DIR`] normally). Its devices are the same slice under every name a user may
//! give: the lease id, the lease's name, and the MIG UUID, so `--device migrun.io/mig=7` works in
//! any CDI-aware engine. migrun never declares `nvidia.com/gpu`: two spec files in one directory
//! declaring the same device are both dropped by the engines, so sharing the toolkit's kind would
//! break the toolkit's own devices. See docs/cdi.md.
//!
//! Every CDI type here is the `container-device-interface` crate's; migrun adds only what the
//! crate does not do (MIG device numbering, atomic files, a JSON-preserving apply).

pub mod apply;
pub mod cache;
pub mod spec;
pub mod store;
pub mod toolkit;

pub use apply::{apply_edits, ApplyError};
pub use spec::{build, build_from, edits_for, Slice, SliceNodes, SpecError, KIND};
pub use store::{StoreError, DYNAMIC_DIR, STATIC_DIR};
pub use toolkit::ToolkitError;

/// The crate's on-disk CDI types (`Spec`, `ContainerEdits`, …), re-exported so callers need not name the crate.
pub use container_device_interface::specs::config as types;

/// Recognises this module's errors for [`crate::exit::code_for`].
pub fn exit_code_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    use crate::exit::ExitCodeOf;
    if let Some(e) = e.downcast_ref::<SpecError>() {
        return Some(e.exit_code());
    }
    if let Some(e) = e.downcast_ref::<StoreError>() {
        return Some(e.exit_code());
    }
    if let Some(e) = e.downcast_ref::<ToolkitError>() {
        return Some(e.exit_code());
    }
    if let Some(e) = e.downcast_ref::<ApplyError>() {
        return Some(e.exit_code());
    }
    crate::gpu::hostfacts::exit_code_of(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_knows_its_exit_code() {
        let e = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let dir = std::path::PathBuf::from("/var/run/cdi");
        let cases: Vec<(Box<dyn std::error::Error>, i32)> = vec![
            (
                Box::new(SpecError::BadName {
                    name: "a b".into(),
                    why: "x",
                }),
                crate::exit::USAGE,
            ),
            (
                Box::new(StoreError::Io {
                    op: "write a spec in",
                    dir: dir.clone(),
                    err: e,
                }),
                crate::exit::FAILED,
            ),
            (
                Box::new(StoreError::Symlink { path: dir }),
                crate::exit::USAGE,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(exit_code_of(err.as_ref()), Some(code), "{err}");
        }
        assert_eq!(exit_code_of(&std::fmt::Error), None);
    }
}
