//! The pure compute-instance planner: (snapshot, migrun's sharing GPU instances, request) -> a compute instance in a sharing GPU instance with room, or a new GPU instance at the placement policy's choice, or why not; it must not do I/O (issue 22).
//!
//! Only GPU instances the caller lists as migrun's, created for sharing ([`SharedGi`]), are ever
//! filled: a GPU instance held whole by a lease, kept warm for whole use, or not migrun's never is,
//! because it is not in that list. Among those with room it packs (the fullest first), so that
//! sharing GPU instances empty out and their memory comes back. Leases of another user share a GPU
//! instance only when the config allows it, since compute instances share its memory. A new GPU
//! instance goes where migrun's placement policy puts the GPU-instance profile.

use super::no_room::{explain, gpu_unusable, GpuNoRoom, NoRoom, Why};
use super::placement::{self, Choice, Policy};
use super::plan::{considered, Plan, PlanRequest};
use crate::gpu::{ci_tables, CiProfile, GiProfile, GpuState, MigState, Placement};
use crate::lease::Lease;
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

/// May `ci` be asked for? The config's `allowed_profiles` names it, or its GPU-instance profile `gi`
/// (whose compute instances it then allows too); no list allows everything.
fn ci_allowed(req: &PlanRequest, ci: &CiProfileName, gi: &GiProfile) -> bool {
    req.allowed.is_none() || req.ci.allowed.contains(ci) || super::plan::allowed(req, gi)
}

/// Does `g` offer `ci` at all: its GPU-instance profile exists there and migrun's tables list `ci`
/// in it (the device itself says which CI profile IDs it has only once a GPU instance exists).
fn offered(g: &GpuState, ci: &CiProfileName) -> bool {
    ci_tables::resolve(ci, &g.profiles, &g.info.label(), &g.info.name).is_ok()
}

/// [`plan_ci`] as the allocator's planner step: the `--gpu`/config filters, the tables and
/// `allowed_profiles` first, then a compute instance in a sharing GPU instance or a new one, else
/// a per-GPU explanation like a GPU-instance request's (why a new GPU instance does not fit).
pub(crate) fn plan_want(
    state: &MigState,
    leases: &[Lease],
    req: &PlanRequest,
    ci: &CiProfileName,
) -> Result<Plan, NoRoom> {
    let spec = ProfileSpec::Name(ci.gi);
    let gpu_report = |g: &GpuState, why: Why| GpuNoRoom {
        index: g.info.index,
        uuid: g.info.uuid.clone(),
        slot_map: g.slot_map(),
        why,
    };
    let mut report = Vec::new();
    let mut eligible: Vec<(&GpuState, &GiProfile)> = Vec::new();
    for g in considered(state, req) {
        if let Some(why) = gpu_unusable(g) {
            report.push(gpu_report(g, why));
            continue;
        }
        let profile = g
            .profiles
            .iter()
            .find(|p| crate::gpu::names::matches(&spec, p));
        let Some(p) = profile.filter(|_| offered(g, ci)) else {
            report.push(gpu_report(g, Why::NoSuchProfile));
            continue;
        };
        if !ci_allowed(req, ci, p) {
            report.push(gpu_report(
                g,
                Why::NotAllowed {
                    profile: format!("{ci} (nor its GPU-instance profile {})", ci.gi),
                },
            ));
            continue;
        }
        eligible.push((g, p));
    }
    let mut others_only = false;
    if !eligible.is_empty() {
        let creq = CiRequest {
            ci: *ci,
            user: req.ci.user.clone(),
            share_across_users: req.ci.share_across_users,
            gpus: Some(eligible.iter().map(|(g, _)| g.info.index).collect()),
        };
        match plan_ci(state, &req.ci.shared, &creq) {
            Ok(CiPlan::Into {
                gpu,
                gi,
                profile_id,
                start,
            }) => {
                return Ok(Plan::IntoShared {
                    gpu,
                    gi,
                    profile_id,
                    start,
                    ci: *ci,
                })
            }
            Ok(CiPlan::NewGi(choice)) => return Ok(Plan::NewShared { choice, ci: *ci }),
            Err(e) => others_only = e.others_only,
        }
    }
    for (g, p) in &eligible {
        report.push(gpu_report(g, explain(g, p, leases, &req.kept)));
    }
    report.sort_by_key(|r| r.index);
    let others = if others_only {
        "; sharing GPU instances with room hold other users' compute instances, and the config's share_gi_across_users is off"
    } else {
        ""
    };
    Err(NoRoom {
        want: format!(
            "{ci} (a compute instance: no sharing {} GPU instance has a free one{others})",
            ci.gi
        ),
        fits_now: Vec::new(),
        gpus: report,
        note: None,
    })
}

#[cfg(test)]
mod tests;
