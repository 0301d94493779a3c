//! Handlers for `migrun sim ...`, the simulator controls used by tests and demos.

use super::{Ctx, InputError};
use crate::cli::SimAction;
use crate::gpu::sim::{SimStore, SIM_FILE};
use crate::gpu::Backend;
use crate::profile::ProfileSpec;
use anyhow::Result;

pub fn sim(ctx: &Ctx, action: &SimAction) -> Result<i32> {
    if let SimAction::Reset = action {
        // Reset must work when the stored machine differs from --simulate: that is what it is for.
        ctx.sim_spec()?
            .ok_or_else(|| InputError::Other("`migrun sim reset` needs --simulate SPEC".into()))?;
        let dir = ctx.state_dir()?;
        let leases = crate::alloc::leases(&dir)?;
        if !leases.is_empty() {
            return Err(InputError::Other(format!(
                "{} lease(s) exist in {}; release them first (`migrun release ID`, see `migrun status`)",
                leases.len(),
                dir.path().display()
            ))
            .into());
        }
        // Refused on a state dir for real GPUs; otherwise the state dir was for that machine, and the next
        // spec may bind it afresh.
        crate::alloc::binding::forget_simulator(&dir)?;
        SimStore::new(dir.join(SIM_FILE)).reset()?;
        crate::outln!("simulated machine in {} forgotten", dir.path().display());
        return Ok(0);
    }
    let mut sim = ctx.sim_backend()?;
    match action {
        SimAction::Reset => unreachable!("handled above"),
        SimAction::ResetGpu { gpu } => {
            let gpu = *gpu;
            let count = sim.gpus()?.len() as u32;
            if gpu >= count {
                return Err(crate::gpu::GpuError::NoSuchGpu { index: gpu, count }.into());
            }
            // A real reset fails while anything uses the GPU; migrun's own leases count as use.
            let held: Vec<u64> = crate::alloc::leases(&ctx.state_dir()?)?
                .iter()
                .filter(|l| l.gpu_index == gpu)
                .map(|l| l.id)
                .collect();
            if !held.is_empty() {
                return Err(InputError::Other(format!(
                    "cannot reset GPU {gpu}: migrun leases {held:?} are on it; release them first"
                ))
                .into());
            }
            let mode = sim.with_machine(|m| m.reset_gpu(gpu))?.map_err(|code| {
                crate::gpu::GpuError::Nvml {
                    op: "resetting the GPU".into(),
                    gpu,
                    code,
                    detail:
                        "instances or processes still exist; destroy them first (migrun teardown)"
                            .into(),
                }
            })?;
            crate::outln!("GPU {gpu} reset: MIG mode {mode}");
        }
        SimAction::CreateForeign { gpu, profile } => {
            let gpus = sim.gpus()?;
            let info = gpus
                .iter()
                .find(|g| g.index == *gpu)
                .ok_or(crate::gpu::GpuError::NoSuchGpu {
                    index: *gpu,
                    count: gpus.len() as u32,
                })?
                .clone();
            let spec: ProfileSpec = profile.parse()?;
            let profiles = sim.profiles(*gpu)?;
            let p = crate::gpu::names::resolve(&spec, &profiles, &info.label(), &info.name)?;
            let (id, gpu) = (p.id, *gpu);
            let out = sim.with_machine(|m| {
                let gi = m.create_gi_anywhere(gpu, id)?;
                let ci = m.create_default_ci(gpu, gi)?;
                Ok::<_, crate::gpu::Code>((gi, ci))
            })?;
            let (gi, ci) = out.map_err(|code| {
                crate::gpu::GpuError::nvml("creating a foreign instance", gpu, code)
            })?;
            crate::outln!("GPU {gpu} GI {gi} {} {}", p.short_name(), ci.mig_uuid);
        }
        SimAction::Latency { setting } => {
            let now = match setting {
                Some(l) => {
                    let l = *l;
                    sim.with_machine(|m| m.latency = l)?;
                    l
                }
                None => sim.with_machine(|m| m.latency)?,
            };
            crate::outln!("simulated driver latency (ms): {now}");
        }
        SimAction::SetProcesses { gpu, gi, count } => {
            let (gpu, gi, count) = (*gpu, *gi, *count);
            sim.with_machine(|m| match gi {
                Some(gi) => m.set_processes(gpu, gi, count),
                None => m.set_gpu_processes(gpu, count),
            })?
            .map_err(|_| {
                InputError::Other(format!(
                    "GPU {gpu} has no GPU instance {}; see `migrun status`",
                    gi.map_or("(none given)".into(), |g| g.to_string())
                ))
            })?;
        }
    }
    Ok(0)
}
