//! The pure compute-instance planner: (snapshot, migrun's sharing GPU instances, request) -> a compute instance in a sharing GPU instance with room, or a new GPU instance at the placement policy's choice, or why not; it must not do I/O (issue 22, not wired into any request yet).
//!
//! Only GPU instances the caller lists as migrun's, created for sharing ([`SharedGi`]), are ever
//! filled: a GPU instance held whole by a lease, kept warm for whole use, or not migrun's never is,
//! because it is not in that list. Among those with room it packs (the fullest first), so that
//! sharing GPU instances empty out and their memory comes back. Leases of another user share a GPU
//! instance only when the config allows it, since compute instances share its memory. A new GPU
//! instance goes where migrun's placement policy puts the GPU-instance profile.

use super::placement::{self, Choice, Policy};
use crate::gpu::{CiProfile, MigState, Placement};
use crate::profile::{CiProfileName, ProfileSpec};

/// A GPU instance migrun created for compute-instance sharing, as the allocator sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedGi {
    pub gpu: u32,
    pub gi: u32,
    /// The users whose leases hold its compute instances (empty: none now).
    pub users: Vec<String>,
    /// Its compute-instance profiles as the device reports them (`Backend::ci_profiles`).
    pub profiles: Vec<CiProfile>,
    /// The compute-slice ranges its existing compute instances take.
    pub taken: Vec<Placement>,
}

/// A compute-instance request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiRequest {
    pub ci: CiProfileName,
    pub user: String,
    /// The config key that lets leases of different users share one GPU instance (off by default).
    pub share_across_users: bool,
    /// GPUs the request may use; `None` = all.
    pub gpus: Option<Vec<u32>>,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CiPlan {
    /// Create a compute instance of CI profile `profile_id` at compute slice `start` of GI `gi`.
    Into {
        gpu: u32,
        gi: u32,
        profile_id: u32,
        start: u32,
    },
    /// Create a GPU instance of the request's GPU-instance profile here (then the compute instance in it).
    NewGi(Choice),
}

/// Why nothing fits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no room for a {ci} compute instance: no sharing {gi} GPU instance{} has a free {ci}, and no GPU{} has room for a new {gi}; see `migrun status`", if *.others_only { " of yours" } else { "" }, .gpus.as_ref().map_or(String::new(), |g| format!(" of {g:?}")))]
pub struct CiNoRoom {
    pub ci: CiProfileName,
    pub gi: crate::profile::ProfileName,
    /// Some sharing GPU instance had room but held another user's leases.
    pub others_only: bool,
    pub gpus: Option<Vec<u32>>,
}

/// How a sharing GPU instance ranks: (taken compute slices, reversed; GPU; GI), least first.
type Rank = (std::cmp::Reverse<u32>, u32, u32);

/// The first free placement of `ci` in `s`, with its profile ID: a profile of the request's slice
/// count that has remaining capacity and a placement no existing compute instance overlaps.
fn free_slot(s: &SharedGi, ci: &CiProfileName) -> Option<(u32, u32)> {
    let p = s
        .profiles
        .iter()
        .find(|p| p.slice_count == ci.ci_slices && p.remaining > 0)?;
    let mut starts: Vec<&Placement> = p
        .placements
        .iter()
        .filter(|pl| !s.taken.iter().any(|t| t.overlaps(pl)))
        .collect();
    starts.sort();
    starts.first().map(|pl| (p.id, pl.start))
}

/// Plan a compute-instance request. Pure: the caller holds the allocation lock and has listed
/// `shared` from the registry and the device.
pub fn plan_ci(state: &MigState, shared: &[SharedGi], req: &CiRequest) -> Result<CiPlan, CiNoRoom> {
    let on_gpu = |gpu: u32| req.gpus.as_ref().is_none_or(|g| g.contains(&gpu));
    let gi_profile_of = |gpu: u32, gi: u32| {
        let g = state.gpu(gpu)?;
        let inst = g.instances.iter().find(|i| i.id == gi)?;
        g.profile_by_id(inst.profile_id)?.parsed_name()
    };
    let mut others_only = false;
    // The fullest first, then the lowest GPU and GI.
    let mut best: Option<(Rank, CiPlan)> = None;
    for s in shared {
        if !on_gpu(s.gpu) || gi_profile_of(s.gpu, s.gi) != Some(req.ci.gi) {
            continue;
        }
        let Some((profile_id, start)) = free_slot(s, &req.ci) else {
            continue;
        };
        if !req.share_across_users && s.users.iter().any(|u| *u != req.user) {
            others_only = true;
            continue;
        }
        let used: u32 = s.taken.iter().map(|t| t.size).sum();
        let key = (std::cmp::Reverse(used), s.gpu, s.gi);
        if best.as_ref().is_none_or(|(k, _)| key < *k) {
            best = Some((
                key,
                CiPlan::Into {
                    gpu: s.gpu,
                    gi: s.gi,
                    profile_id,
                    start,
                },
            ));
        }
    }
    if let Some((_, plan)) = best {
        return Ok(plan);
    }
    let spec = ProfileSpec::Name(req.ci.gi);
    placement::choose(state, &spec, req.gpus.as_deref(), Policy::Migrun)
        .map(CiPlan::NewGi)
        .ok_or(CiNoRoom {
            ci: req.ci,
            gi: req.ci.gi,
            others_only,
            gpus: req.gpus.clone(),
        })
}

#[cfg(test)]
mod tests;
