//! The pure allocation planner: (snapshot, leases, request) -> reuse this instance, create at this placement, or a no-room explanation; it must not do I/O.
//!
//! Where to *create* is the placement policy's decision ([`placement::choose`]); this module decides
//! reuse versus create, applies the `--gpu`/config filters, sizes `--min-mem` requests and says who owns
//! an instance. Why a request does not fit is told by `no_room`. Everything here is a function of its
//! arguments, so it is tested with tables over hand-built `MigState`s.

use super::ci_plan::SharedGi;
use super::no_room::{explain, gpu_unusable, suggestions, GpuNoRoom, NoRoom, Why};
use super::placement::{self, Choice, Policy};
use crate::gpu::rules::{self, Occupant};
use crate::gpu::{GiProfile, GpuInstance, GpuState, MigState, Placement};
use crate::lease::{Lease, LeaseId, LeaseState};
use crate::profile::{CiProfileName, ProfileError, ProfileName, ProfileSpec, Requested, Variant};
use serde::Serialize;
use std::fmt;

/// What to allocate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Want {
    Profile(ProfileSpec),
    /// Smallest plain profile with at least this many MiB (`--min-mem`).
    MinMemMib(u64),
    /// A compute instance of a GPU instance shared with other such leases (issue 22, `ci_plan`).
    Ci(CiProfileName),
}

impl Want {
    /// A `--profile` argument: a compute-instance name (`1c.3g.40gb`) asks for a compute instance, any
    /// other form (a GPU-instance name or ID, or `3c.3g.40gb`, the full one) for a whole GPU instance.
    pub(crate) fn parse_profile(given: &str) -> Result<Want, ProfileError> {
        given.parse::<Requested>().map(Want::from)
    }
}

impl From<Requested> for Want {
    fn from(r: Requested) -> Want {
        match r {
            Requested::Gi(spec) => Want::Profile(spec),
            Requested::Ci(ci) => Want::Ci(ci),
        }
    }
}

impl std::fmt::Display for Want {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Want::Profile(p) => p.fmt(f),
            Want::MinMemMib(m) => write!(f, "--min-mem {m}MiB"),
            Want::Ci(c) => c.fmt(f),
        }
    }
}

/// The planner's input besides the snapshot and the leases.
#[derive(Debug, Clone)]
pub(crate) struct PlanRequest {
    pub want: Want,
    /// GPUs the request may use (`--gpu` intersected with the config's `gpus`); `None` = all.
    pub gpus: Option<Vec<u32>>,
    /// The config's `allowed_profiles`; `None` = all.
    pub allowed: Option<Vec<ProfileSpec>>,
    /// Unleased instances migrun created (kept warm), as (GPU UUID, GI id): reuse prefers them over found ones, and
    /// the explanations say who holds a placement.
    pub kept: Vec<(String, u32)>,
    /// What compute-instance requests need, and which GPU instances are migrun's sharing ones.
    pub ci: CiContext,
}

/// The compute-instance side of a [`PlanRequest`] (issue 22).
#[derive(Debug, Clone, Default)]
pub(crate) struct CiContext {
    /// CI profiles the config's `allowed_profiles` names itself (a listed GPU-instance profile allows its CIs too).
    pub allowed: Vec<CiProfileName>,
    /// GPU instances migrun created for sharing, as (GPU index, GI id) from its records: never handed
    /// out whole, only filled with compute instances.
    pub sharing: Vec<(u32, u32)>,
    /// The same with what the device says of their compute instances (listed for compute-instance requests only).
    pub shared: Vec<SharedGi>,
    /// Who asks (the uid, as text), and whether the config lets users share a GPU instance.
    pub user: String,
    pub share_across_users: bool,
}

impl CiContext {
    /// Is GI `gi` of GPU `gpu` one of migrun's sharing GPU instances?
    pub(crate) fn is_shared(&self, gpu: u32, gi: u32) -> bool {
        self.sharing.contains(&(gpu, gi)) || self.shared.iter().any(|s| s.gpu == gpu && s.gi == gi)
    }
}

impl PlanRequest {
    /// A request for `want` on every GPU, any profile, nothing kept (the tables build theirs from it).
    #[cfg(test)]
    pub(crate) fn new(want: Want) -> PlanRequest {
        PlanRequest {
            want,
            gpus: None,
            allowed: None,
            kept: Vec::new(),
            ci: CiContext::default(),
        }
    }
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Hand out an existing free instance (no lease, no processes).
    Reuse {
        gpu: u32,
        gi: u32,
        ci: u32,
        mig_uuid: String,
        profile_id: u32,
        /// Short profile name (`3g.40gb`).
        profile: String,
        placement: Placement,
    },
    /// Create a GI (plus its default CI) where the placement policy chose.
    Create(Choice),
    /// Create a compute instance of `ci` (CI profile ID `profile_id`, at compute slice `start`) in
    /// migrun's sharing GPU instance `gi`.
    IntoShared {
        gpu: u32,
        gi: u32,
        profile_id: u32,
        start: u32,
        ci: CiProfileName,
    },
    /// Create a sharing GPU instance where the placement policy chose, then a compute instance of `ci` in it.
    NewShared { choice: Choice, ci: CiProfileName },
}

impl Plan {
    pub(crate) fn gpu(&self) -> u32 {
        match self {
            Plan::Reuse { gpu, .. } | Plan::IntoShared { gpu, .. } => *gpu,
            Plan::Create(c) | Plan::NewShared { choice: c, .. } => c.gpu,
        }
    }
}

/// Who owns an existing instance, as status and the explanations show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Owner {
    /// Held by a lease.
    Lease { id: LeaseId, draining: bool },
    /// migrun's sharing GPU instance: these leases hold its compute instances (issue 22).
    Shared { leases: Vec<LeaseId> },
    /// Created by migrun and kept warm, not leased: free for reuse (or teardown).
    Kept,
    /// Not migrun's (an admin, mig-parted); `processes` > 0 means busy.
    Foreign { processes: u32 },
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Lease {
                id,
                draining: false,
            } => write!(f, "lease {id}"),
            Owner::Lease { id, draining: true } => write!(f, "lease {id}, draining"),
            Owner::Shared { leases } => write!(
                f,
                "shared by lease{} {}",
                if leases.len() == 1 { "" } else { "s" },
                leases
                    .iter()
                    .map(|l| l.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Owner::Kept => f.write_str("migrun's, kept idle"),
            Owner::Foreign { processes: 0 } => f.write_str("not migrun's"),
            Owner::Foreign { .. } => f.write_str("not migrun's, busy"),
        }
    }
}

/// The lease on an instance, if any: same GPU and GI id (the registry is reconciled with the device
/// before planning, so a lease on that GI means it is taken).
pub(crate) fn lease_of<'a>(leases: &'a [Lease], gpu_uuid: &str, gi: u32) -> Option<&'a Lease> {
    leases.iter().find(|l| l.gpu_uuid == gpu_uuid && l.gi == gi)
}

/// Who owns `inst` on `g`.
pub(crate) fn owner(
    g: &GpuState,
    inst: &GpuInstance,
    leases: &[Lease],
    kept: &[(String, u32)],
) -> Owner {
    // A sharing GPU instance is one lease group: every compute-instance lease in it.
    let sharing: Vec<LeaseId> = leases
        .iter()
        .filter(|l| l.gpu_uuid == g.info.uuid && l.gi == inst.id && l.ci_profile.is_some())
        .map(|l| l.id)
        .collect();
    if !sharing.is_empty() {
        return Owner::Shared { leases: sharing };
    }
    if let Some(l) = lease_of(leases, &g.info.uuid, inst.id) {
        return Owner::Lease {
            id: l.id,
            draining: l.state == LeaseState::Draining,
        };
    }
    if kept
        .iter()
        .any(|(u, gi)| *u == g.info.uuid && *gi == inst.id)
    {
        return Owner::Kept;
    }
    Owner::Foreign {
        processes: inst.processes,
    }
}

/// Is `p` allowed by the config's profile list?
pub(super) fn allowed(req: &PlanRequest, p: &GiProfile) -> bool {
    req.allowed
        .as_ref()
        .is_none_or(|specs| specs.iter().any(|s| crate::gpu::names::matches(s, p)))
}

pub(super) fn considered<'a>(state: &'a MigState, req: &PlanRequest) -> Vec<&'a GpuState> {
    state
        .gpus
        .iter()
        .filter(|g| {
            req.gpus
                .as_ref()
                .is_none_or(|allowed| allowed.contains(&g.info.index))
        })
        .collect()
}

/// The GPU a waiting request holds back for itself while it waits: of the GPUs it may use that no
/// earlier waiter holds (`taken`), the usable one with the most memory slices free now, where it is
/// closest to fitting (lowest index on a tie). Only that GPU is held back; requests that fit on
/// the others go ahead of the waiter (docs/leases.md, "--wait"). `None`: every GPU it may use is
/// held by someone earlier, so it holds nothing of its own yet.
pub(crate) fn reservation(state: &MigState, req: &PlanRequest, taken: &[u32]) -> Option<u32> {
    considered(state, req)
        .into_iter()
        .filter(|g| gpu_unusable(g).is_none() && !taken.contains(&g.info.index))
        .filter(|g| match &req.want {
            Want::Profile(spec) => g
                .profiles
                .iter()
                .any(|p| crate::gpu::names::matches(spec, p)),
            Want::MinMemMib(mib) => g.profiles.iter().any(|p| p.memory_mib >= *mib),
            Want::Ci(ci) => g
                .profiles
                .iter()
                .any(|p| crate::gpu::names::matches(&ProfileSpec::Name(ci.gi), p)),
        })
        .max_by_key(|g| {
            let used: u32 = g.instances.iter().map(|i| i.placement.size).sum();
            (
                g.slots().saturating_sub(used),
                std::cmp::Reverse(g.info.index),
            )
        })
        .map(|g| g.info.index)
}

/// The free instances of `p` on `g`, lowest placement first: each has a compute instance, no processes, no lease,
/// and is not one of migrun's sharing GPU instances (those are never handed out whole).
fn reusable<'a>(
    g: &'a GpuState,
    p: &GiProfile,
    leases: &[Lease],
    ci: &CiContext,
) -> Vec<&'a GpuInstance> {
    let mut insts: Vec<&GpuInstance> = g
        .instances
        .iter()
        .filter(|i| {
            i.profile_id == p.id
                && i.processes == 0
                && i.compute_instances.len() == 1
                && lease_of(leases, &g.info.uuid, i.id).is_none()
                && !ci.is_shared(g.info.index, i.id)
        })
        .collect();
    insts.sort_by_key(|i| i.placement.start);
    insts
}

/// Does `p` fit on `g` right now (reuse or create)?
pub(super) fn fits_now(
    state: &MigState,
    g: &GpuState,
    p: &GiProfile,
    leases: &[Lease],
    ci: &CiContext,
) -> bool {
    !reusable(g, p, leases, ci).is_empty()
        || !placement::candidates(state, &ProfileSpec::Id(p.id), Some(&[g.info.index])).is_empty()
}

pub(super) fn is_plain(p: &GiProfile) -> bool {
    p.parsed_name().is_some_and(|n| n.variant == Variant::Plain)
}

/// Plan a request. Pure: the caller has reconciled `leases` with `state` and holds the allocation lock.
pub(crate) fn plan(state: &MigState, leases: &[Lease], req: &PlanRequest) -> Result<Plan, NoRoom> {
    match &req.want {
        Want::Profile(spec) => plan_profile(state, leases, req, spec),
        Want::MinMemMib(mib) => plan_min_mem(state, leases, req, *mib),
        Want::Ci(ci) => super::ci_plan::plan_want(state, leases, req, ci),
    }
}

fn plan_profile(
    state: &MigState,
    leases: &[Lease],
    req: &PlanRequest,
    spec: &ProfileSpec,
) -> Result<Plan, NoRoom> {
    let gpus = considered(state, req);
    let mut eligible: Vec<(&GpuState, &GiProfile)> = Vec::new();
    let mut report: Vec<GpuNoRoom> = Vec::new();
    let gpu_report = |g: &GpuState, why: Why| GpuNoRoom {
        index: g.info.index,
        uuid: g.info.uuid.clone(),
        slot_map: g.slot_map(),
        why,
    };
    for g in &gpus {
        if let Some(why) = gpu_unusable(g) {
            report.push(gpu_report(g, why));
            continue;
        }
        let Some(p) = g
            .profiles
            .iter()
            .find(|p| crate::gpu::names::matches(spec, p))
        else {
            report.push(gpu_report(g, Why::NoSuchProfile));
            continue;
        };
        if !allowed(req, p) {
            report.push(gpu_report(
                g,
                Why::NotAllowed {
                    profile: p.short_name().into(),
                },
            ));
            continue;
        }
        eligible.push((g, p));
    }
    // 1. Reuse: a free existing instance of exactly this profile. One migrun keeps warm (its own, idle: `req.kept`)
    // before one it found (an admin's, mig-parted's), so the warm pool is what requests get and a found instance
    // stays where its owner may want it; then lowest GPU, then lowest placement.
    let warm = |g: &GpuState, i: &GpuInstance| {
        req.kept
            .iter()
            .any(|(u, gi)| *u == g.info.uuid && *gi == i.id)
    };
    let best = eligible
        .iter()
        .flat_map(|(g, p)| {
            reusable(g, p, leases, &req.ci)
                .into_iter()
                .map(move |i| (*g, *p, i))
        })
        .min_by_key(|(g, _, i)| (!warm(g, i), g.info.index, i.placement.start));
    if let Some((g, p, i)) = best {
        let ci = &i.compute_instances[0];
        return Ok(Plan::Reuse {
            gpu: g.info.index,
            gi: i.id,
            ci: ci.id,
            mig_uuid: ci.mig_uuid.clone(),
            profile_id: p.id,
            profile: p.short_name().into(),
            placement: i.placement,
        });
    }
    // 2. Create where migrun's placement policy says.
    let indices: Vec<u32> = eligible.iter().map(|(g, _)| g.info.index).collect();
    if !indices.is_empty() {
        if let Some(choice) = placement::choose(state, spec, Some(&indices), Policy::Migrun) {
            return Ok(Plan::Create(choice));
        }
    }
    // 3. No room: explain per GPU, in GPU order.
    for (g, p) in &eligible {
        report.push(gpu_report(g, explain(g, p, leases, &req.kept)));
    }
    report.sort_by_key(|r| r.index);
    let below = eligible
        .iter()
        .map(|(_, p)| p.memory_mib)
        .max()
        .unwrap_or(0);
    Err(NoRoom {
        want: eligible
            .first()
            .map_or(spec.to_string(), |(_, p)| p.short_name().to_string()),
        fits_now: suggestions(state, &gpus, leases, req, below),
        gpus: report,
        note: None,
    })
}

/// The plain, allowed profiles of `g` with at least `mib`, smallest first (memory, then slices).
fn big_enough<'a>(g: &'a GpuState, req: &PlanRequest, mib: u64) -> Vec<&'a GiProfile> {
    let mut v: Vec<&GiProfile> = g
        .profiles
        .iter()
        .filter(|p| is_plain(p) && allowed(req, p) && p.memory_mib >= mib)
        .collect();
    v.sort_by_key(|p| (p.memory_mib, p.slice_count, p.id));
    v
}

fn plan_min_mem(
    state: &MigState,
    leases: &[Lease],
    req: &PlanRequest,
    mib: u64,
) -> Result<Plan, NoRoom> {
    let gpus = considered(state, req);
    // Per GPU, the smallest big-enough profile that fits now.
    let mut best: Vec<(u64, u32, ProfileName, u32)> = Vec::new();
    for g in &gpus {
        if gpu_unusable(g).is_some() {
            continue;
        }
        if let Some(p) = big_enough(g, req, mib)
            .into_iter()
            .find(|p| fits_now(state, g, p, leases, &req.ci))
        {
            if let Some(name) = p.parsed_name() {
                best.push((p.memory_mib, p.slice_count, name, g.info.index));
            }
        }
    }
    best.sort_by_key(|(m, s, _, gpu)| (*m, *s, *gpu));
    if let Some((m, s, name, _)) = best.first().cloned() {
        // Every GPU where the same smallest profile fits competes, so the policy picks among them.
        let on: Vec<u32> = best
            .iter()
            .filter(|(m2, s2, n2, _)| (*m2, *s2, *n2) == (m, s, name))
            .map(|(_, _, _, gpu)| *gpu)
            .collect();
        let sub = PlanRequest {
            want: Want::Profile(ProfileSpec::Name(name)),
            gpus: Some(on),
            allowed: req.allowed.clone(),
            kept: req.kept.clone(),
            ci: req.ci.clone(),
        };
        return plan(state, leases, &sub);
    }
    // Nothing fits: explain each GPU for its smallest big-enough profile.
    let mut report = Vec::new();
    for g in &gpus {
        let why = match gpu_unusable(g) {
            Some(why) => why,
            None => match big_enough(g, req, mib).first() {
                Some(p) => explain(g, p, leases, &req.kept),
                None => Why::TooBig {
                    largest: g
                        .profiles
                        .iter()
                        .filter(|p| is_plain(p) && allowed(req, p))
                        .max_by_key(|p| p.memory_mib)
                        .map(|p| format!("{} with {} MiB", p.short_name(), p.memory_mib)),
                    mib,
                },
            },
        };
        report.push(GpuNoRoom {
            index: g.info.index,
            uuid: g.info.uuid.clone(),
            slot_map: g.slot_map(),
            why,
        });
    }
    Err(NoRoom {
        want: format!("a profile with at least {mib} MiB"),
        fits_now: suggestions(state, &gpus, leases, req, mib),
        gpus: report,
        note: None,
    })
}

/// When nothing fits, would destroying idle instances migrun kept warm (`--keep`, `release = "keep"`)
/// make room? Returns the (GPU index, GI id) to destroy, fewest first: those overlapping the placement
/// the policy picks once they are gone, or every kept one on that GPU when a count limit needs it.
/// Instances that are leased, busy or not migrun's are never candidates.
pub(crate) fn evictions(
    state: &MigState,
    leases: &[Lease],
    req: &PlanRequest,
) -> Option<Vec<(u32, u32)>> {
    // A sharing GPU instance is evicted only while it holds no compute instance at all.
    let idle_kept = |g: &GpuState, i: &GpuInstance| {
        i.processes == 0
            && (i.compute_instances.is_empty() || !req.ci.is_shared(g.info.index, i.id))
            && lease_of(leases, &g.info.uuid, i.id).is_none()
            && req
                .kept
                .iter()
                .any(|(u, gi)| *u == g.info.uuid && *gi == i.id)
    };
    let mut reduced = state.clone();
    let mut any = false;
    for g in &mut reduced.gpus {
        let before = g.instances.len();
        let gs = g.clone();
        g.instances.retain(|i| !idle_kept(&gs, i));
        any |= g.instances.len() != before;
    }
    if !any {
        return None;
    }
    let sub = PlanRequest {
        kept: Vec::new(),
        ..req.clone()
    };
    // A compute-instance request may need room for a new sharing GPU instance just the same.
    let (Ok(Plan::Create(c)) | Ok(Plan::NewShared { choice: c, .. })) =
        plan(&reduced, leases, &sub)
    else {
        return None;
    };
    let g = state.gpu(c.gpu)?;
    let p = g.profile_by_id(c.profile_id)?;
    let kept_here: Vec<&GpuInstance> = g.instances.iter().filter(|i| idle_kept(g, i)).collect();
    let overlapping: Vec<&GpuInstance> = kept_here
        .iter()
        .copied()
        .filter(|i| i.placement.overlaps(&c.placement))
        .collect();
    let rest: Vec<Occupant> = g
        .instances
        .iter()
        .filter(|i| !overlapping.iter().any(|o| o.id == i.id))
        .map(Occupant::from)
        .collect();
    let chosen = if rules::fits(&g.profiles, &rest, p, &c.placement) {
        overlapping
    } else {
        kept_here
    };
    Some(chosen.iter().map(|i| (c.gpu, i.id)).collect())
}

#[cfg(test)]
mod tests;
