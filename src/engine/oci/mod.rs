//! OCI state/config parsing, spec modifiers (env, hooks, annotations) and hook entry points; it must not lose unknown JSON fields.
//!
//! Everything here works on `serde_json::Value`, never on `oci_spec::runtime::Spec`, because a typed
//! round trip drops the fields oci-spec does not know (and a runtime, an NVIDIA hook or a future spec
//! version may need them). oci-spec is used only to read the typed `State` a runtime hands a hook.
//!
//! The hook flows ([`precreate`], [`prestart`], [`poststop`], [`shim_create`]) take their lease
//! operations through [`LeaseOps`], so this module never opens NVML or the state dir itself: the
//! caller opens them lazily, only once a container has actually asked for a slice. A container that
//! asks for nothing costs one JSON parse.
//!
//! Parts: [`modifiers`] (config edits), [`config`] (what a config or a state asks for), [`binding`]
//! (what ties a lease to its container), [`flows`] (the hook stages and the shim's create); liveness
//! for gc is here.

use crate::lease::LeaseId;
use std::path::{Path, PathBuf};

pub mod binding;
pub mod config;
pub mod flows;
pub mod modifiers;
#[cfg(test)]
pub(crate) mod test_support;

pub use binding::{ANNOTATION_HANDOVER, ENV_HANDOVER};
pub use config::*;
pub use flows::*;
pub use modifiers::*;

/// Annotation a container sets to ask for a slice (`migrun.profile=3g.40gb`).
pub const ANNOTATION_PROFILE: &str = "migrun.profile";
/// Annotation that pins the request to one GPU (index or GPU-UUID).
pub const ANNOTATION_GPU: &str = "migrun.gpu";
/// Marker migrun writes into the config: the lease that belongs to this container.
pub const ANNOTATION_LEASE: &str = "migrun.lease";
/// Env a container sets to ask for a slice (`MIGRUN_PROFILE=3g.40gb`).
pub const ENV_PROFILE: &str = "MIGRUN_PROFILE";
/// Env that pins the request to one GPU.
pub const ENV_GPU: &str = "MIGRUN_GPU";
/// Marker env migrun writes: the lease id (also visible to the workload, for `migrun status`).
pub const ENV_LEASE: &str = "MIGRUN_LEASE";
/// The NVIDIA toolkit's device request.
pub const NVIDIA_VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";
/// The value that tells the NVIDIA toolkit "no devices, act like runc".
pub const NVIDIA_NO_DEVICES: &str = "void";
/// NVIDIA env vars that grant MIG management devices; a container never brings its own.
pub const NVIDIA_MIG_ENV: [&str; 2] = ["NVIDIA_MIG_CONFIG_DEVICES", "NVIDIA_MIG_MONITOR_DEVICES"];
/// migrun's own env, passed from the shim into the hooks it adds (runc gives hooks only `hook.env`).
pub const PASS_ENV: [&str; 5] = [
    "MIGRUN_SIMULATE",
    "MIGRUN_STATE_DIR",
    "MIGRUN_CONFIG",
    "MIGRUN_NVML_LIB",
    "MIGRUN_LOG",
];
/// Env naming the engine, set by the shim on the hooks it adds.
pub const ENV_ENGINE: &str = "MIGRUN_ENGINE";

/// Errors of the hook flows and of config rewriting.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(
        "no {what} on stdin: the runtime must pipe it to `migrun hook {stage}` (see docs/hooks.md)"
    )]
    EmptyInput {
        what: &'static str,
        stage: &'static str,
    },
    #[error("bad OCI state JSON on stdin: {reason}; `migrun hook {stage}` expects the runtime-spec state ({{\"id\",\"pid\",\"bundle\",…}})")]
    BadState { stage: &'static str, reason: String },
    #[error("bundle {path} does not exist or is not a directory: {reason}; the runtime passed a bundle path that cannot be used")]
    MissingBundle { path: PathBuf, reason: String },
    #[error("cannot read {path}: {source}; check the bundle's config.json")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid OCI config {path}: {reason}; fix the container's config.json (runtime-spec)")]
    BadConfig { path: PathBuf, reason: String },
    #[error("bad slice request in {where_}: {reason}")]
    BadRequest { where_: String, reason: String },
    #[error("cannot write {path}: {source}; config.json was left as it was")]
    WriteConfig {
        path: PathBuf,
        #[source]
        source: crate::statedir::StateDirError,
    },
    #[error("{context}")]
    Lease {
        context: String,
        #[source]
        source: OpsError,
    },
    #[error("{path} names lease {lease}, which {reason}; refusing to start the container without its slice (recreate it)")]
    StaleMarker {
        path: PathBuf,
        lease: LeaseId,
        reason: String,
    },
    #[error("cannot write the modified config to stdout: {0}; the lease was released")]
    Emit(#[source] std::io::Error),
}

/// Exit codes for this module's errors: bad input is 2; lease errors defer to their cause (alloc, profile).
pub fn exit_code_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    match e.downcast_ref::<OciError>()? {
        OciError::EmptyInput { .. }
        | OciError::BadState { .. }
        | OciError::MissingBundle { .. }
        | OciError::ReadConfig { .. }
        | OciError::BadConfig { .. }
        | OciError::BadRequest { .. } => Some(crate::exit::USAGE),
        OciError::Lease { .. } => None,
        OciError::StaleMarker { .. } | OciError::WriteConfig { .. } | OciError::Emit(_) => {
            Some(crate::exit::FAILED)
        }
    }
}

/// The error type lease operations hand back (alloc's, state dir's, GPU's errors, kept as the cause).
pub type OpsError = Box<dyn std::error::Error + Send + Sync + 'static>;

// ---------------------------------------------------------------------------------------------
// Holder liveness for gc (the engine arms behind `alloc::HolderProbe`)
// ---------------------------------------------------------------------------------------------

/// Does runc (or a runc under an engine) still keep state for container `id` under `root`?
fn runc_state_exists(root: &Path, id: &str) -> bool {
    root.join(id).join("state.json").is_file()
}

/// Is the container still known to its engine? `None` when migrun cannot tell.
///
/// Only cheap, positive evidence is given: runc's state for the container in the default runtime
/// roots. Absence proves nothing (the engine may use another `--root`, as test engines and
/// rootless setups do), so then the answer is `None` and gc falls back to the container's init pid,
/// which prestart records for every hook-made lease. Nothing is spawned: gc runs this for every
/// container lease on every allocation. Docker's arm belongs to the launcher (`engine::docker`).
pub fn container_alive(id: &str, engine: &str) -> Option<bool> {
    // Ids become path components below: never let one walk out of the runtime root.
    if id.is_empty() || id.contains('/') || id == "." || id == ".." {
        return None;
    }
    let found = match engine {
        // podman and CRI-O run runc with its default root.
        "runc" | "podman" | "cri-o" => runc_state_exists(Path::new("/run/runc"), id),
        // /run/containerd/runc/<namespace>/<id>
        "containerd" => std::fs::read_dir("/run/containerd/runc")
            .map(|nss| nss.flatten().any(|ns| runc_state_exists(&ns.path(), id)))
            .unwrap_or(false),
        _ => false,
    };
    found.then_some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_is_only_ever_positive_evidence() {
        // No runc state for this id anywhere: unknown (the init pid decides), never "gone".
        for e in ["runc", "podman", "cri-o", "containerd", "rkt"] {
            assert_eq!(container_alive("migrun-no-such-container", e), None);
        }
        assert_eq!(container_alive("../etc", "runc"), None);
        assert_eq!(container_alive("", "runc"), None);
    }
}
