//! Teardown: destroy every unleased instance migrun created on the chosen GPUs (clean slate before stopping a VM); it must never destroy a leased, busy or foreign instance unless told to for the foreign one.
//!
//! Cloud guides warn that on some GPUs (A30) MIG configurations outlive the VM, so admins clean up
//! before stopping it. Teardown is the bulk form of release: same lock, same cross-checked records,
//! same CI-then-GI destroy, and it reports what it left and why.

use super::reconcile::{destroy, forget, record_matches, sweep, DestroyError};
use super::{AllocError, GcReport, HolderProbe};
use crate::config::Config;
use crate::gpu::Backend;
use crate::statedir::StateDir;
use serde::Serialize;

/// One instance teardown looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct TornItem {
    pub gpu: u32,
    pub gpu_uuid: String,
    pub gi: u32,
    pub profile: String,
    pub mig_uuid: Option<String>,
    /// Why it was left (empty for destroyed ones).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub why: String,
}

/// What teardown did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct TeardownReport {
    pub destroyed: Vec<TornItem>,
    pub left: Vec<TornItem>,
    /// What `--force`'s gc pass released first.
    pub gc: Option<GcReport>,
}

/// How teardown is asked to behave.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TeardownOptions {
    /// Release stale leases (dead holders) first, through the same sweep as `migrun gc`.
    pub force: bool,
    /// Also destroy unleased, idle instances migrun did not create (the caller allows it only on an explicit GPU).
    pub include_foreign: bool,
}

/// Tear down the instances on `gpus` (NVML indices, already filtered by the policy's managed GPUs).
pub(crate) fn teardown(
    backend: &mut dyn Backend,
    dir: &StateDir,
    config: &Config,
    probe: &dyn HolderProbe,
    gpus: &[u32],
    opts: TeardownOptions,
) -> Result<TeardownReport, AllocError> {
    let reg = super::registry(dir, config, backend)?;
    let _lock = reg.lock()?;
    let mut report = TeardownReport::default();
    let mut state = if opts.force {
        let mut gc = GcReport::default();
        let (_, jobs) = sweep(backend, &reg, config, probe, &mut gc)?;
        // Teardown destroys under the lock on purpose (nothing may be allocated on these GPUs meanwhile).
        let drained = super::drain::run_locked(backend, &reg, jobs, &mut gc);
        super::account::gc(&reg, &gc);
        report.gc = Some(gc);
        drained?;
        backend.snapshot()?
    } else {
        let state = backend.snapshot()?;
        super::binding::bind(dir, &backend.kind(), &state, config)?;
        state
    };
    let leases = reg.leases()?;
    let created = reg.created()?;
    let targets: Vec<_> = state
        .gpus
        .iter()
        .filter(|g| gpus.contains(&g.info.index))
        .flat_map(|g| g.instances.iter().map(move |i| (g.clone(), i.clone())))
        .collect();
    for (g, i) in targets {
        let mut item = TornItem {
            gpu: g.info.index,
            gpu_uuid: g.info.uuid.clone(),
            gi: i.id,
            profile: g
                .profile_by_id(i.profile_id)
                .map_or(format!("profile {}", i.profile_id), |p| {
                    p.short_name().to_string()
                }),
            mig_uuid: i.mig_uuid().map(str::to_string),
            why: String::new(),
        };
        if let Some(l) = leases
            .iter()
            .find(|l| l.gpu_uuid == g.info.uuid && l.gi == i.id)
        {
            item.why = format!("leased (lease {}, {:?})", l.id, l.state).to_lowercase();
            report.left.push(item);
            continue;
        }
        if i.processes > 0 {
            item.why = format!("busy: {} compute process(es) run on it", i.processes);
            report.left.push(item);
            continue;
        }
        let record = created
            .iter()
            .find(|r| r.gpu_uuid == g.info.uuid && r.gi == i.id && record_matches(&state, r));
        if record.is_none() && !opts.include_foreign {
            item.why = format!(
                "not created by migrun (destroy it with `migrun teardown --gpu {} --include-foreign`, or nvidia-smi)",
                g.info.index
            );
            report.left.push(item);
            continue;
        }
        match destroy(backend, &g, &i, false) {
            Ok(()) => {
                forget(&mut state, &g.info.uuid, i.id);
                if record.is_some() {
                    reg.remove_created(&g.info.uuid, i.id)?;
                }
                report.destroyed.push(item);
            }
            Err(DestroyError::Busy) => {
                item.why = "busy: the driver answered IN_USE".into();
                report.left.push(item);
            }
            Err(DestroyError::Other(e)) => return Err(e.into()),
        }
    }
    Ok(report)
}
