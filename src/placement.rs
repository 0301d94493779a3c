//! Pure placement policy: (snapshot, request) -> choice, plus the first-fit baseline; it must not do I/O.
//!
//! The policy (documented in docs/placement.md) is filled in by the allocator work; the signatures
//! here are what the allocator, the benchmark and the launcher call.

use crate::gpu::rules::{self, Occupant};
use crate::gpu::{MigState, Placement};
use crate::profile::{self, ProfileSpec};

/// Which placement policy to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// migrun's own policy: keep room for large profiles.
    Migrun,
    /// The lowest free placement on the lowest-index GPU (the baseline).
    FirstFit,
}

/// Where to create an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub gpu: u32,
    pub profile_id: u32,
    pub placement: Placement,
}

/// Every feasible (gpu, profile, placement) for `spec` on the allowed GPUs, in GPU then start order.
pub fn candidates(state: &MigState, spec: &ProfileSpec, gpus: Option<&[u32]>) -> Vec<Choice> {
    let mut out = Vec::new();
    for g in &state.gpus {
        if gpus.is_some_and(|allowed| !allowed.contains(&g.info.index)) {
            continue;
        }
        if !g.info.mig.is_some_and(|m| m.current) {
            continue;
        }
        let Some(profile) = g.profiles.iter().find(|p| profile::matches(spec, p)) else {
            continue;
        };
        let occ: Vec<Occupant> = g.instances.iter().map(Occupant::from).collect();
        for placement in rules::free_placements(&g.profiles, &occ, profile) {
            out.push(Choice {
                gpu: g.info.index,
                profile_id: profile.id,
                placement,
            });
        }
    }
    out
}

/// The baseline: lowest free placement on the lowest-index GPU.
pub fn first_fit(state: &MigState, spec: &ProfileSpec, gpus: Option<&[u32]>) -> Option<Choice> {
    candidates(state, spec, gpus).into_iter().next()
}

/// Choose where to create `spec`; `None` only when it fits nowhere.
pub fn choose(
    state: &MigState,
    spec: &ProfileSpec,
    gpus: Option<&[u32]>,
    policy: Policy,
) -> Option<Choice> {
    match policy {
        Policy::FirstFit => first_fit(state, spec, gpus),
        // Replaced by the real policy in the allocator work.
        Policy::Migrun => first_fit(state, spec, gpus),
    }
}
