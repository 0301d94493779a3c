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
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineProbe;

/// The probe to use for gc and allocation.
pub fn probe() -> EngineProbe {
    EngineProbe
}

/// The engine family of a holder's engine string (`docker|host=…` -> `docker`).
pub fn engine_family(engine: &str) -> &str {
    engine.split('|').next().unwrap_or(engine)
}

impl HolderProbe for EngineProbe {
    fn container_alive(&self, id: &str, engine: &str) -> Option<bool> {
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
        assert_eq!(probe().container_alive("abc", "rkt"), None);
        assert_eq!(engine_family("docker|host=unix:///x|cli=/d"), "docker");
        assert_eq!(engine_family("podman"), "podman");
    }
}
