//! Container engines: the docker launcher, OCI hooks and config rewriting, the runtime shim, and the liveness probe
//! gc uses for container holders; they must not allocate by themselves.
//!
//! [`EngineProbe`] dispatches on a holder's engine string (`docker…`, `podman`, `runc` …). Add an arm per engine;
//! an engine nobody knows answers "unknown", so gc keeps that lease rather than guess.

pub mod docker;
pub mod docker_api;
pub mod oci;
pub mod runtime;
pub mod slurm;

use crate::alloc::HolderProbe;
use crate::lease::LeaseId;

/// The probe the alloc/gc commands hand to [`crate::alloc`]: asks each container's own engine whether it lives.
#[derive(Debug, Clone, Default)]
pub struct EngineProbe {
    /// The state dir, whose shim records name the runtime root of each container the shim binds
    /// itself (`None`: no records are consulted).
    state_dir: Option<std::path::PathBuf>,
}

/// The probe to use for gc and allocation over the state dir `state_dir`.
pub fn probe(state_dir: &std::path::Path) -> EngineProbe {
    EngineProbe {
        state_dir: Some(state_dir.to_path_buf()),
    }
}

impl EngineProbe {
    /// Positive evidence from the shim's record: the runtime root it recorded for container `id`
    /// still holds that container. This covers the moment between the runtime's create and the
    /// shim's binding of the init pid (a shim killed there leaves its own, dead, pid as the holder).
    fn shim_runtime_holds(&self, id: &str) -> bool {
        let Some(dir) = &self.state_dir else {
            return false;
        };
        let Some(rel) = oci::binding::shim_record_rel(id) else {
            return false;
        };
        let rec = crate::statedir::read_nofollow(&dir.join(rel))
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<oci::binding::ShimRecord>(&b).ok());
        rec.is_some_and(|r| r.id == id && oci::binding::runtime_has_container(&r.root, id))
    }
}

/// The engine family of a holder's engine string (`docker|host=…` -> `docker`).
pub fn engine_family(engine: &str) -> &str {
    engine.split('|').next().unwrap_or(engine)
}

impl HolderProbe for EngineProbe {
    fn container_alive(&self, id: &str, engine: &str) -> Option<bool> {
        if self.shim_runtime_holds(id) {
            return Some(true);
        }
        match engine_family(engine) {
            "docker" => docker::DockerProbe.container_alive(id, engine),
            family @ ("runc" | "podman" | "cri-o" | "containerd") => {
                oci::container_alive(id, family)
            }
            _ => None,
        }
    }

    fn launched_alive(&self, lease: LeaseId, launch: &str, engine: &str) -> Option<bool> {
        match engine_family(engine) {
            "docker" => docker::DockerProbe.launched_alive(lease, launch, engine),
            _ => None,
        }
    }

    fn slurm_step_alive(&self, step: &crate::lease::SlurmStep) -> Option<bool> {
        slurm::step_alive(step)
    }
}

/// Exit codes for this module's errors (see `exit`).
pub fn exit_code_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    e.downcast_ref::<docker::DockerError>()
        .map(docker::DockerError::exit_code)
        .or_else(|| oci::exit_code_of(e))
        .or_else(|| runtime::exit_code_of(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_engines_are_unknown_not_dead() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(probe(t.path()).container_alive("abc", "rkt"), None);
        assert_eq!(engine_family("docker|host=unix:///x|cli=/d"), "docker");
        assert_eq!(engine_family("podman"), "podman");
    }
}
