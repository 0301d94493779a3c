//! Hand-built snapshots and leases for the policy room's table tests.

use super::no_room::short;
use super::plan::{PlanRequest, Want};
use crate::gpu::sim::{SimMachine, SimSpec};
use crate::gpu::{GpuState, MigState};
use crate::lease::{Holder, Lease, LeaseId, LeaseState};

/// A hand-built snapshot: `spec` GPUs with `(gpu, profile id, start)` instances, each with a CI.
pub(super) fn snapshot(spec: &str, insts: &[(u32, u32, u32)]) -> MigState {
    let mut m = SimMachine::new(&spec.parse::<SimSpec>().unwrap());
    for &(gpu, id, start) in insts {
        let gi = m.create_gi(gpu, id, start).unwrap();
        m.create_default_ci(gpu, gi).unwrap();
    }
    state_of(&m)
}

pub(super) fn state_of(m: &SimMachine) -> MigState {
    MigState {
        gpus: m
            .gpu_infos()
            .into_iter()
            .map(|info| GpuState {
                profiles: m.profiles(info.index).unwrap(),
                instances: m.instances(info.index).unwrap(),
                info,
            })
            .collect(),
    }
}

pub(super) fn lease_on(state: &MigState, id: LeaseId, gpu: u32, start: u32) -> Lease {
    let g = state.gpu(gpu).unwrap();
    let i = g
        .instances
        .iter()
        .find(|i| i.placement.start == start)
        .unwrap();
    Lease {
        id,
        name: None,
        holder: Holder::Manual,
        uid: 0,
        gpu_index: gpu,
        gpu_uuid: g.info.uuid.clone(),
        gi: i.id,
        ci: 0,
        profile_id: i.profile_id,
        profile: short(g, i.profile_id),
        placement: i.placement,
        mig_uuid: i.mig_uuid().unwrap().into(),
        ci_profile: None,
        created: true,
        keep: false,
        state: LeaseState::Active,
        created_at: 0,
        updated_at: 0,
    }
}

pub(super) fn want(p: &str) -> PlanRequest {
    PlanRequest::new(Want::Profile(p.parse().unwrap()))
}

pub(super) fn on(p: &str, gpus: &[u32]) -> PlanRequest {
    PlanRequest {
        gpus: Some(gpus.to_vec()),
        ..want(p)
    }
}
