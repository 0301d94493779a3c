//! MIG mode changes: what blocks them, how to request them, and what completes a pending change; it must never reset a GPU.
//!
//! Changing MIG mode only ever becomes *pending* on the device; a GPU reset (or reboot) applies it.
//! migrun checks the blockers an admin would otherwise learn from a failed reset, requests the
//! change through the hardware trait, and says exactly what to do next.

use crate::gpu::{Backend, GpuError, GpuInfo, MigMode};
use crate::lease::Lease;
use serde::Serialize;

/// Something that stops a mode change on one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Blocker {
    /// Compute processes run on the GPU.
    Processes { count: u32 },
    /// migrun leases exist on the GPU.
    Leases { ids: Vec<u64> },
    /// MIG instances exist (they must be destroyed before MIG can be disabled).
    Instances { count: usize },
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Blocker::Processes { count } => write!(f, "{count} compute process(es) run on it (stop them first; `nvidia-smi` lists them)"),
            Blocker::Leases { ids } => write!(
                f,
                "migrun holds lease(s) {} on it (release them: `migrun release ID`)",
                ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
            ),
            Blocker::Instances { count } => write!(f, "{count} MIG instance(s) exist on it (remove them first: `migrun teardown --gpu N`, and `--include-foreign` for ones migrun did not create)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigModeError {
    #[error("refusing to {action} MIG mode on {gpu}: {}", .blockers.iter().map(|b| b.to_string()).collect::<Vec<_>>().join("; "))]
    Blocked {
        action: &'static str,
        gpu: String,
        blockers: Vec<Blocker>,
    },
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

/// The outcome for one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModeReport {
    pub index: u32,
    pub uuid: String,
    pub mig_mode: MigMode,
    /// False when the GPU was already in (or already pending) the requested mode and nothing was asked of NVML.
    pub changed: bool,
    /// What completes a pending change, if one is pending.
    pub next_step: Option<String>,
}

/// What blocks a change to `enable` on `gpu`. Pure: the caller gathers processes, leases and instances.
pub fn blockers(
    enable: bool,
    gpu: u32,
    processes: u32,
    leases: &[Lease],
    instances: usize,
) -> Vec<Blocker> {
    let mut out = Vec::new();
    if processes > 0 {
        out.push(Blocker::Processes { count: processes });
    }
    let ids: Vec<u64> = leases
        .iter()
        .filter(|l| l.gpu_index == gpu)
        .map(|l| l.id)
        .collect();
    if !ids.is_empty() {
        out.push(Blocker::Leases { ids });
    }
    if !enable && instances > 0 {
        out.push(Blocker::Instances { count: instances });
    }
    out
}

/// What an admin must do to apply a pending mode on GPU `index`. `simulated` names the simulator's stand-in.
pub fn next_step(index: u32, mode: MigMode, simulated: Option<&str>) -> Option<String> {
    if !mode.change_pending() {
        return None;
    }
    if let Some(spec) = simulated {
        return Some(format!(
            "simulated GPU: apply it with `migrun --simulate {spec} sim reset-gpu {index}` (refused while instances or leases exist, as a real reset is)"
        ));
    }
    Some(format!(
        "reset the GPU with nothing running on it: `sudo nvidia-smi -r -i {index}`. Stop what keeps it open first: \
         nvidia-persistenced (`systemctl stop nvidia-persistenced`), DCGM / nv-hostengine (`systemctl stop nvidia-dcgm` or `dcgm`), \
         and the nvidia_drm module if a display stack loaded it (`modprobe -r nvidia_drm`). Where a reset is impossible \
         (some VMs and cloud instances), reboot instead. migrun never resets a GPU itself"
    ))
}

/// Request MIG mode `enable` on one GPU after checking blockers. Never resets the GPU.
pub fn set_mode(
    backend: &mut dyn Backend,
    info: &GpuInfo,
    enable: bool,
    leases: &[Lease],
    simulated: Option<&str>,
) -> Result<ModeReport, MigModeError> {
    let mode = info.mig.ok_or_else(|| GpuError::NotMigCapable {
        gpu: info.label(),
        name: info.name.clone(),
    })?;
    if mode.pending == enable {
        // Already there (or already pending): asking NVML again would change nothing.
        return Ok(ModeReport {
            index: info.index,
            uuid: info.uuid.clone(),
            mig_mode: mode,
            changed: false,
            next_step: next_step(info.index, mode, simulated),
        });
    }
    let processes = backend.gpu_processes(info.index)?;
    let instances = if mode.current {
        backend.instances(info.index)?.len()
    } else {
        0
    };
    let found = blockers(enable, info.index, processes, leases, instances);
    if !found.is_empty() {
        return Err(MigModeError::Blocked {
            action: if enable { "enable" } else { "disable" },
            gpu: info.label(),
            blockers: found,
        });
    }
    let mode = backend.set_mig_mode(info.index, enable)?;
    Ok(ModeReport {
        index: info.index,
        uuid: info.uuid.clone(),
        mig_mode: mode,
        changed: true,
        next_step: next_step(info.index, mode, simulated),
    })
}

/// Exit codes for this module's errors (see `exit`).
pub fn exit_code_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    match e.downcast_ref::<MigModeError>()? {
        MigModeError::Blocked { .. } => Some(crate::exit::FAILED),
        MigModeError::Gpu(g) => Some(crate::exit::ExitCodeOf::exit_code(g)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::sim::SimMachine;

    #[test]
    fn blockers_table() {
        let none: Vec<Lease> = Vec::new();
        assert!(blockers(true, 0, 0, &none, 0).is_empty());
        assert_eq!(
            blockers(true, 0, 2, &none, 0),
            vec![Blocker::Processes { count: 2 }]
        );
        // Instances only block disabling.
        assert!(blockers(true, 0, 0, &none, 3).is_empty());
        assert_eq!(
            blockers(false, 0, 0, &none, 3),
            vec![Blocker::Instances { count: 3 }]
        );
    }

    #[test]
    fn next_step_names_reset_and_blockers() {
        let pending = MigMode {
            current: false,
            pending: true,
        };
        let s = next_step(3, pending, None).unwrap();
        for needle in [
            "nvidia-smi -r -i 3",
            "nvidia-persistenced",
            "nv-hostengine",
            "nvidia_drm",
            "reboot",
        ] {
            assert!(s.contains(needle), "{needle}: {s}");
        }
        assert!(next_step(
            0,
            MigMode {
                current: true,
                pending: true
            },
            None
        )
        .is_none());
        let m = SimMachine::new(&"h100-80gb".parse().unwrap());
        assert!(m.gpu_infos()[0].mig.unwrap().current);
    }
}
