//! The pure allocation planner: (snapshot, leases, request) -> reuse this instance, create at this placement, or a no-room explanation; it must not do I/O.
//!
//! Where to *create* is the placement policy's decision (`placement::choose`); this module decides
//! reuse versus create, applies the `--gpu`/config filters, sizes `--min-mem` requests and explains
//! why a profile does not fit. Everything here is a function of its arguments, so it is tested with
//! tables over hand-built `MigState`s.

use super::Want;
use crate::gpu::rules::{self, Occupant};
use crate::gpu::{GiProfile, GpuInstance, GpuState, MigState, Placement};
use crate::lease::{Lease, LeaseId, LeaseState};
use crate::placement::{self, Choice, Policy};
use crate::profile::{ProfileName, ProfileSpec, Variant};
use serde::Serialize;
use std::fmt;

/// The planner's input besides the snapshot and the leases.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    pub want: Want,
    /// GPUs the request may use (`--gpu` intersected with the config's `gpus`); `None` = all.
    pub gpus: Option<Vec<u32>>,
    /// The config's `allowed_profiles`; `None` = all.
    pub allowed: Option<Vec<ProfileSpec>>,
    /// Unleased instances migrun created (kept warm), as (GPU UUID, GI id); only used to explain who holds a placement.
    pub kept: Vec<(String, u32)>,
}

impl PlanRequest {
    pub fn new(want: Want) -> PlanRequest {
        PlanRequest {
            want,
            gpus: None,
            allowed: None,
            kept: Vec::new(),
        }
    }
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
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
}

impl Plan {
    pub fn gpu(&self) -> u32 {
        match self {
            Plan::Reuse { gpu, .. } => *gpu,
            Plan::Create(c) => c.gpu,
        }
    }
}

/// Who owns an existing instance, as status and the explanations show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Owner {
    /// Held by a lease.
    Lease { id: LeaseId, draining: bool },
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
            Owner::Kept => f.write_str("migrun's, kept idle"),
            Owner::Foreign { processes: 0 } => f.write_str("not migrun's"),
            Owner::Foreign { .. } => f.write_str("not migrun's, busy"),
        }
    }
}

/// The lease on an instance, if any: same GPU and GI id (the registry is reconciled with the device
/// before planning, so a lease on that GI means it is taken).
pub fn lease_of<'a>(leases: &'a [Lease], gpu_uuid: &str, gi: u32) -> Option<&'a Lease> {
    leases.iter().find(|l| l.gpu_uuid == gpu_uuid && l.gi == gi)
}

/// Who owns `inst` on `g`.
pub fn owner(g: &GpuState, inst: &GpuInstance, leases: &[Lease], kept: &[(String, u32)]) -> Owner {
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

/// An instance that blocks a placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Occupier {
    pub gi: u32,
    pub profile: String,
    pub owner: Owner,
}

impl fmt::Display for Occupier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.profile, self.owner)
    }
}

/// Why a request cannot be placed on one GPU now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Why {
    NotMigCapable,
    MigDisabled,
    /// MIG is on, but disabling it is pending (applied by the next GPU reset): an instance made now would
    /// be lost at that reset, and would block it.
    MigDisablePending,
    /// The GPU model has no such profile.
    NoSuchProfile,
    /// The config's `allowed_profiles` excludes it.
    NotAllowed {
        profile: String,
    },
    /// `--min-mem`: no plain profile on this GPU has that much memory.
    TooBig {
        largest: Option<String>,
        mib: u64,
    },
    /// Every placement of the profile overlaps an existing instance.
    Full {
        profile: String,
        needs: Vec<Placement>,
        /// For each needed placement, in order, the instances that overlap it.
        held: Vec<(Placement, Vec<Occupier>)>,
    },
    /// The GPU already holds as many instances of the profile as it can.
    Limit {
        profile: String,
        count: u32,
        by: Vec<Occupier>,
    },
    /// Only one instance with media extensions may exist per GPU, and one does.
    MediaExtensions {
        profile: String,
        by: Occupier,
    },
    /// A `+me.all` instance holds every media engine; only `-me` profiles fit beside it.
    Exclusive {
        profile: String,
        by: Occupier,
    },
}

impl Why {
    /// Could this GPU fit the request later, once something is released?
    pub fn can_clear(&self) -> bool {
        matches!(
            self,
            Why::Full { .. }
                | Why::Limit { .. }
                | Why::MediaExtensions { .. }
                | Why::Exclusive { .. }
        )
    }
}

/// One GPU's part of a no-room explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuNoRoom {
    pub index: u32,
    pub uuid: String,
    pub slot_map: String,
    pub why: Why,
}

/// Why a request fits nowhere now, with what it needs, who holds it and what would fit instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NoRoom {
    /// What was asked for, for people (`3g.40gb`, `a profile with at least 19074 MiB`).
    pub want: String,
    pub gpus: Vec<GpuNoRoom>,
    /// Smaller plain profiles that fit now, as (GPU index, profile), best first.
    pub fits_now: Vec<(u32, String)>,
    /// A note added by the caller (queue position, time waited).
    pub note: Option<String>,
}

impl NoRoom {
    /// True when a release could make room (otherwise waiting is pointless).
    pub fn can_wait(&self) -> bool {
        self.gpus.iter().any(|g| g.why.can_clear())
    }
}

fn or_list<T: fmt::Display>(items: &[T]) -> String {
    let s: Vec<String> = items.iter().map(|i| i.to_string()).collect();
    match s.len() {
        0 => String::new(),
        1 => s[0].clone(),
        n => format!("{} or {}", s[..n - 1].join(", "), s[n - 1]),
    }
}

fn and_list<T: fmt::Display>(items: &[T]) -> String {
    let s: Vec<String> = items.iter().map(|i| i.to_string()).collect();
    match s.len() {
        0 => String::new(),
        1 => s[0].clone(),
        n => format!("{} and {}", s[..n - 1].join(", "), s[n - 1]),
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::NotMigCapable => f.write_str("not MIG-capable"),
            Why::MigDisabled => f.write_str("MIG mode is disabled (`migrun mig enable`)"),
            Why::MigDisablePending => f.write_str(
                "disabling MIG mode is pending on it (a GPU reset applies it; `migrun mig enable` cancels it)",
            ),
            Why::NoSuchProfile => f.write_str("this GPU model has no such profile"),
            Why::NotAllowed { profile } => {
                write!(f, "{profile} is not in the config's allowed_profiles")
            }
            Why::TooBig { largest, mib } => match largest {
                Some(l) => write!(f, "no profile has {mib} MiB (the largest is {l})"),
                None => write!(f, "no profile has {mib} MiB"),
            },
            Why::Full { needs, held, .. } => {
                let starts: Vec<u32> = needs.iter().map(|p| p.start).collect();
                write!(
                    f,
                    "needs placement {}",
                    or_list(&starts)
                )?;
                // Neighbouring placements held by the same instances are told once: `0 to 3 are held by …`.
                let mut groups: Vec<(Vec<u32>, &Vec<Occupier>)> = Vec::new();
                for (p, by) in held {
                    match groups.last_mut() {
                        Some((starts, prev)) if *prev == by => starts.push(p.start),
                        _ => groups.push((vec![p.start], by)),
                    }
                }
                for (i, (starts, by)) in groups.iter().enumerate() {
                    let sep = if i == 0 { "; " } else { ", " };
                    let which = match starts.as_slice() {
                        [one] => format!("{one} is"),
                        [a, b] => format!("{a} and {b} are"),
                        [a, .., b] => format!("{a} to {b} are"),
                        [] => continue,
                    };
                    write!(f, "{sep}{which} held by {}", and_list(by))?;
                }
                Ok(())
            }
            Why::Limit { profile, count, by } => {
                let gis: Vec<String> = by.iter().map(|o| format!("GI {} ({})", o.gi, o.owner)).collect();
                write!(
                    f,
                    "already holds {count} {profile} instance(s), the most it can: {}",
                    and_list(&gis)
                )
            }
            Why::MediaExtensions { profile, by } => write!(
                f,
                "{profile} needs the media extensions, which only one instance per GPU may have, and GI {} {by} has them",
                by.gi
            ),
            Why::Exclusive { profile, by } => write!(
                f,
                "GI {} {by} takes every media engine, so only -me profiles fit beside it, not {profile}",
                by.gi
            ),
        }
    }
}

impl fmt::Display for NoRoom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A policy refusal is not a matter of room: one line naming the rule, no slot maps.
        if let Some(Why::NotAllowed { profile }) = self.gpus.first().map(|g| &g.why) {
            if self
                .gpus
                .iter()
                .all(|g| matches!(g.why, Why::NotAllowed { .. }))
            {
                return write!(
                    f,
                    "refused by policy: {profile} is not in the config's allowed_profiles; ask for an allowed profile (docs/config.md)"
                );
            }
        }
        let suggestion = match self.fits_now.first() {
            Some((gpu, p)) if self.gpus.len() > 1 => format!("{p} fits now on GPU {gpu}"),
            Some((_, p)) => format!("{p} fits now"),
            None if self.gpus.iter().any(|g| g.why.can_clear()) => {
                "nothing smaller fits now".to_string()
            }
            None => String::new(),
        };
        let hint = if self.can_wait() {
            "use --wait to queue for it; `migrun status` lists the leases"
        } else {
            "waiting would not help"
        };
        match self.gpus.as_slice() {
            [g] => {
                write!(
                    f,
                    "no room for {} on GPU {} ({}): {}",
                    self.want, g.index, g.uuid, g.why
                )?;
                if !suggestion.is_empty() {
                    write!(f, "; {suggestion}")?;
                }
                if let Some(n) = &self.note {
                    write!(f, "; {n}")?;
                }
                write!(f, "\n  GPU {} {}  ({hint})", g.index, g.slot_map)
            }
            gpus => {
                write!(f, "no room for {} on {} GPUs", self.want, gpus.len())?;
                if !suggestion.is_empty() {
                    write!(f, "; {suggestion}")?;
                }
                if let Some(n) = &self.note {
                    write!(f, "; {n}")?;
                }
                write!(f, " ({hint})")?;
                for g in gpus {
                    write!(
                        f,
                        "\n  GPU {} ({}) {}: {}",
                        g.index, g.uuid, g.slot_map, g.why
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// Is `p` allowed by the config's profile list?
fn allowed(req: &PlanRequest, p: &GiProfile) -> bool {
    req.allowed.as_ref().map_or(true, |specs| {
        specs.iter().any(|s| crate::gpu::names::matches(s, p))
    })
}

fn considered<'a>(state: &'a MigState, req: &PlanRequest) -> Vec<&'a GpuState> {
    state
        .gpus
        .iter()
        .filter(|g| {
            req.gpus
                .as_ref()
                .map_or(true, |allowed| allowed.contains(&g.info.index))
        })
        .collect()
}

/// The GPU a waiting request holds back for itself while it waits: of the GPUs it may use that no
/// earlier waiter holds (`taken`), the usable one with the most memory slices free now, where it is
/// closest to fitting (lowest index on a tie). Only that GPU is held back; requests that fit on
/// the others go ahead of the waiter (docs/leases.md, "--wait"). `None`: every GPU it may use is
/// held by someone earlier, so it holds nothing of its own yet.
pub fn reservation(state: &MigState, req: &PlanRequest, taken: &[u32]) -> Option<u32> {
    considered(state, req)
        .into_iter()
        .filter(|g| gpu_unusable(g).is_none() && !taken.contains(&g.info.index))
        .filter(|g| match &req.want {
            Want::Profile(spec) => g
                .profiles
                .iter()
                .any(|p| crate::gpu::names::matches(spec, p)),
            Want::MinMemMib(mib) => g.profiles.iter().any(|p| p.memory_mib >= *mib),
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

/// Why a GPU cannot take any request at all (MIG off, not capable).
fn gpu_unusable(g: &GpuState) -> Option<Why> {
    match g.info.mig {
        None => Some(Why::NotMigCapable),
        Some(m) if !m.current => Some(Why::MigDisabled),
        Some(m) if !m.pending => Some(Why::MigDisablePending),
        Some(_) => None,
    }
}

/// A free instance of `p` on `g`: has a compute instance, no processes, no lease.
fn reusable<'a>(g: &'a GpuState, p: &GiProfile, leases: &[Lease]) -> Option<&'a GpuInstance> {
    let mut insts: Vec<&GpuInstance> = g
        .instances
        .iter()
        .filter(|i| {
            i.profile_id == p.id
                && i.processes == 0
                && i.compute_instances.len() == 1
                && lease_of(leases, &g.info.uuid, i.id).is_none()
        })
        .collect();
    insts.sort_by_key(|i| i.placement.start);
    insts.first().copied()
}

fn short(g: &GpuState, profile_id: u32) -> String {
    g.profile_by_id(profile_id)
        .map_or(format!("profile {profile_id}"), |p| {
            p.short_name().to_string()
        })
}

/// Why `p` cannot be created on `g` now (assumes it indeed cannot).
fn explain(g: &GpuState, p: &GiProfile, leases: &[Lease], kept: &[(String, u32)]) -> Why {
    let occ: Vec<Occupant> = g.instances.iter().map(Occupant::from).collect();
    let occupier = |i: &GpuInstance| Occupier {
        gi: i.id,
        profile: short(g, i.profile_id),
        owner: owner(g, i, leases, kept),
    };
    let name = p.short_name().to_string();
    if !rules::can_create(&g.profiles, &occ, p) {
        let variant_of = |i: &GpuInstance| {
            g.profile_by_id(i.profile_id)
                .and_then(|q| q.parsed_name())
                .map_or(Variant::Plain, |n| n.variant)
        };
        let variant = p.parsed_name().map_or(Variant::Plain, |n| n.variant);
        // `+me.all` takes every media engine: nothing but `-me` profiles may sit next to it.
        if let Some(i) = g.instances.iter().find(|i| variant_of(i) == Variant::MeAll) {
            if variant != Variant::NoMe {
                return Why::Exclusive {
                    profile: name,
                    by: occupier(i),
                };
            }
        }
        if variant.has_media_extensions() {
            if let Some(i) = g
                .instances
                .iter()
                .find(|i| variant_of(i).has_media_extensions() || variant == Variant::MeAll)
            {
                return Why::MediaExtensions {
                    profile: name,
                    by: occupier(i),
                };
            }
        }
        let by: Vec<Occupier> = g
            .instances
            .iter()
            .filter(|i| i.profile_id == p.id)
            .map(occupier)
            .collect();
        return Why::Limit {
            profile: name,
            count: by.len() as u32,
            by,
        };
    }
    let held = p
        .placements
        .iter()
        .map(|pl| {
            let by: Vec<Occupier> = g
                .instances
                .iter()
                .filter(|i| i.placement.overlaps(pl))
                .map(occupier)
                .collect();
            (*pl, by)
        })
        .collect();
    Why::Full {
        profile: name,
        needs: p.placements.clone(),
        held,
    }
}

/// Does `p` fit on `g` right now (reuse or create)?
fn fits_now(state: &MigState, g: &GpuState, p: &GiProfile, leases: &[Lease]) -> bool {
    reusable(g, p, leases).is_some()
        || !placement::candidates(state, &ProfileSpec::Id(p.id), Some(&[g.info.index])).is_empty()
}

fn is_plain(p: &GiProfile) -> bool {
    p.parsed_name().is_some_and(|n| n.variant == Variant::Plain)
}

/// Plain, allowed profiles smaller than `below_mib` that fit now, largest first.
fn suggestions(
    state: &MigState,
    gpus: &[&GpuState],
    leases: &[Lease],
    req: &PlanRequest,
    below_mib: u64,
) -> Vec<(u32, String)> {
    let mut out: Vec<(u64, u32, u32, String)> = Vec::new();
    for g in gpus {
        if gpu_unusable(g).is_some() {
            continue;
        }
        for p in &g.profiles {
            if is_plain(p)
                && allowed(req, p)
                && p.memory_mib < below_mib
                && fits_now(state, g, p, leases)
            {
                out.push((
                    p.memory_mib,
                    p.slice_count,
                    g.info.index,
                    p.short_name().into(),
                ));
            }
        }
    }
    // The biggest that fits: most memory, then most compute slices, then lowest GPU.
    out.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    out.into_iter()
        .map(|(_, _, gpu, name)| (gpu, name))
        .collect()
}

/// Plan a request. Pure: the caller has reconciled `leases` with `state` and holds the allocation lock.
pub fn plan(state: &MigState, leases: &[Lease], req: &PlanRequest) -> Result<Plan, NoRoom> {
    match &req.want {
        Want::Profile(spec) => plan_profile(state, leases, req, spec),
        Want::MinMemMib(mib) => plan_min_mem(state, leases, req, *mib),
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
    // 1. Reuse: a free existing instance of exactly this profile, lowest GPU then lowest placement.
    for (g, p) in &eligible {
        if let Some(i) = reusable(g, p, leases) {
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
            .find(|p| fits_now(state, g, p, leases))
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
pub fn evictions(state: &MigState, leases: &[Lease], req: &PlanRequest) -> Option<Vec<(u32, u32)>> {
    let idle_kept = |g: &GpuState, i: &GpuInstance| {
        i.processes == 0
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
    let Ok(Plan::Create(c)) = plan(&reduced, leases, &sub) else {
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

/// Errors from parsing a `--min-mem` size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad --min-mem {given:?}: {why}; give a number with a unit: 20g or 20gb (GB, 10^9 bytes, the unit of profile names), 20gib (GiB, 2^30), 20000m / 20000mb (MB), 19074mib (MiB)")]
pub struct SizeError {
    pub given: String,
    pub why: String,
}

/// Parse a `--min-mem` size into MiB, rounding up. Units (case-insensitive): `k`/`kb`, `m`/`mb`,
/// `g`/`gb`, `t`/`tb` are decimal (10^3..10^12 bytes, as in profile names like `3g.40gb`);
/// `ki`/`kib`, `mi`/`mib`, `gi`/`gib`, `ti`/`tib` are binary. A bare number is refused as ambiguous.
pub fn parse_size_mib(given: &str) -> Result<u64, SizeError> {
    let err = |why: &str| SizeError {
        given: given.to_string(),
        why: why.to_string(),
    };
    let s = given.trim().to_ascii_lowercase();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| err("no unit"))?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(err("no number"));
    }
    let value: f64 = num.parse().map_err(|_| err("not a number"))?;
    let unit = unit.trim();
    let bytes_per: f64 = match unit {
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024.0f64.powi(4),
        _ => return Err(err(&format!("unknown unit {unit:?}"))),
    };
    let mib = (value * bytes_per / (1024.0 * 1024.0)).ceil();
    if !(mib.is_finite() && mib >= 1.0) {
        return Err(err("must be more than zero"));
    }
    if mib > 1e12 {
        return Err(err("too large"));
    }
    Ok(mib as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::sim::{SimMachine, SimSpec};
    use crate::lease::Holder;

    /// A hand-built snapshot: `spec` GPUs with `(gpu, profile id, start)` instances, each with a CI.
    fn snapshot(spec: &str, insts: &[(u32, u32, u32)]) -> MigState {
        let mut m = SimMachine::new(&spec.parse::<SimSpec>().unwrap());
        for &(gpu, id, start) in insts {
            let gi = m.create_gi(gpu, id, start).unwrap();
            m.create_default_ci(gpu, gi).unwrap();
        }
        state_of(&m)
    }

    fn state_of(m: &SimMachine) -> MigState {
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

    fn lease_on(state: &MigState, id: LeaseId, gpu: u32, start: u32) -> Lease {
        let g = state.gpu(gpu).unwrap();
        let i = g
            .instances
            .iter()
            .find(|i| i.placement.start == start)
            .unwrap();
        Lease {
            id,
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
            created: true,
            keep: false,
            state: LeaseState::Active,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn want(p: &str) -> PlanRequest {
        PlanRequest::new(Want::Profile(p.parse().unwrap()))
    }

    fn on(p: &str, gpus: &[u32]) -> PlanRequest {
        PlanRequest {
            gpus: Some(gpus.to_vec()),
            ..want(p)
        }
    }

    /// What a plan boils down to for the tables: reuse of (gpu, start) or create on gpu (placement is the policy's).
    #[derive(Debug, PartialEq)]
    enum Outcome {
        Reuse(u32, u32),
        Create(u32, u32),
        NoRoom,
    }

    fn outcome(state: &MigState, leases: &[Lease], req: &PlanRequest) -> Outcome {
        match plan(state, leases, req) {
            Ok(Plan::Reuse { gpu, placement, .. }) => Outcome::Reuse(gpu, placement.start),
            Ok(Plan::Create(c)) => {
                // Whatever the policy picks must be a real free placement of the asked profile on that GPU.
                let g = state.gpu(c.gpu).unwrap();
                let p = g.profile_by_id(c.profile_id).unwrap();
                let occ: Vec<Occupant> = g.instances.iter().map(Occupant::from).collect();
                assert!(rules::fits(&g.profiles, &occ, p, &c.placement), "{c:?}");
                if let Want::Profile(spec) = &req.want {
                    assert!(crate::gpu::names::matches(spec, p));
                }
                Outcome::Create(c.gpu, c.profile_id)
            }
            Err(_) => Outcome::NoRoom,
        }
    }

    #[test]
    fn plan_table() {
        use Outcome::*;
        // (case, spec, instances (gpu, profile id, start), leases on (gpu, start), busy (gpu, start), request, expected)
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a [(u32, u32, u32)],
            &'a [(u32, u32)],
            &'a [(u32, u32)],
            PlanRequest,
            Outcome,
        );
        let cases: Vec<Case> = vec![
            (
                "empty GPU: create",
                "h100-80gb",
                &[],
                &[],
                &[],
                want("1g.10gb"),
                Create(0, 19),
            ),
            (
                "free 3g exists: reuse it",
                "h100-80gb",
                &[(0, 9, 4)],
                &[],
                &[],
                want("3g.40gb"),
                Reuse(0, 4),
            ),
            (
                "reuse by profile id",
                "h100-80gb",
                &[(0, 9, 4)],
                &[],
                &[],
                want("9"),
                Reuse(0, 4),
            ),
            (
                "leased 3g is skipped: create the other",
                "h100-80gb",
                &[(0, 9, 4)],
                &[(0, 4)],
                &[],
                want("3g.40gb"),
                Create(0, 9),
            ),
            (
                "busy 3g is skipped: create the other",
                "h100-80gb",
                &[(0, 9, 0)],
                &[],
                &[(0, 0)],
                want("3g.40gb"),
                Create(0, 9),
            ),
            (
                "lowest free one is reused",
                "h100-80gb",
                &[(0, 19, 6), (0, 19, 2)],
                &[],
                &[],
                want("1g.10gb"),
                Reuse(0, 2),
            ),
            (
                "other profile is not reused",
                "h100-80gb",
                &[(0, 14, 0)],
                &[],
                &[],
                want("1g.20gb"),
                Create(0, 15),
            ),
            (
                "both 3g leased: no room",
                "h100-80gb",
                &[(0, 9, 0), (0, 9, 4)],
                &[(0, 0), (0, 4)],
                &[],
                want("3g.40gb"),
                NoRoom,
            ),
            (
                "busy and leased: no room",
                "h100-80gb",
                &[(0, 9, 0), (0, 9, 4)],
                &[(0, 0)],
                &[(0, 4)],
                want("3g.40gb"),
                NoRoom,
            ),
            (
                "--gpu 1 reuses there, not on 0",
                "h100-80gb:2",
                &[(0, 9, 0), (1, 9, 0)],
                &[],
                &[],
                on("3g.40gb", &[1]),
                Reuse(1, 0),
            ),
            (
                "--gpu 1 full while GPU 0 is free: no room",
                "h100-80gb:2",
                &[(1, 0, 0)],
                &[(1, 0)],
                &[],
                on("1g.10gb", &[1]),
                NoRoom,
            ),
            (
                "--gpu 1 creates on 1",
                "h100-80gb:2",
                &[],
                &[],
                &[],
                on("7g.80gb", &[1]),
                Create(1, 0),
            ),
            (
                "full GPU 0 leased: create on 1",
                "h100-80gb:2",
                &[(0, 0, 0)],
                &[(0, 0)],
                &[],
                want("7g.80gb"),
                Create(1, 0),
            ),
            (
                "MIG off GPU is skipped",
                "h100-80gb:1:mig-off,h100-80gb:1",
                &[],
                &[],
                &[],
                want("3g.40gb"),
                Create(1, 9),
            ),
            (
                "unknown profile on this model",
                "a30-24gb",
                &[],
                &[],
                &[],
                want("3g.40gb"),
                NoRoom,
            ),
            (
                "mixed models: name resolves per GPU",
                "a30-24gb,h100-80gb",
                &[],
                &[],
                &[],
                want("2g.20gb"),
                Create(1, 14),
            ),
            (
                "+me limit",
                "h100-80gb",
                &[(0, 20, 0)],
                &[(0, 0)],
                &[],
                want("1g.10gb+me"),
                NoRoom,
            ),
            (
                "7 leased 1g: no eighth",
                "h100-80gb",
                &[
                    (0, 19, 0),
                    (0, 19, 1),
                    (0, 19, 2),
                    (0, 19, 3),
                    (0, 19, 4),
                    (0, 19, 5),
                    (0, 19, 6),
                ],
                &[(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (0, 6)],
                &[],
                want("1g.10gb"),
                NoRoom,
            ),
        ];
        for (name, spec, insts, leased, busy, req, expected) in cases {
            let mut m = SimMachine::new(&spec.parse::<SimSpec>().unwrap());
            for &(gpu, id, start) in insts {
                let gi = m.create_gi(gpu, id, start).unwrap();
                m.create_default_ci(gpu, gi).unwrap();
                if busy.contains(&(gpu, start)) {
                    m.set_processes(gpu, gi, 1).unwrap();
                }
            }
            let state = state_of(&m);
            let leases: Vec<Lease> = leased
                .iter()
                .enumerate()
                .map(|(i, &(gpu, start))| lease_on(&state, i as u64 + 1, gpu, start))
                .collect();
            assert_eq!(outcome(&state, &leases, &req), expected, "case {name:?}");
        }
    }

    #[test]
    fn config_filters_profiles_and_gpus() {
        let state = snapshot("h100-80gb:2", &[]);
        let mut req = want("3g.40gb");
        req.allowed = Some(vec!["1g.10gb".parse().unwrap(), "2g.20gb".parse().unwrap()]);
        let e = plan(&state, &[], &req).unwrap_err();
        assert!(!e.can_wait(), "a forbidden profile never fits: {e}");
        assert!(e.to_string().contains("allowed_profiles"), "{e}");
        // min-mem only considers allowed profiles: 15g -> 2g.20gb (1g.20gb is not allowed).
        req.want = Want::MinMemMib(15000);
        let Ok(Plan::Create(c)) = plan(&state, &[], &req) else {
            panic!()
        };
        assert_eq!(c.profile_id, 14);
        // A GPU outside the allowed set is not used even when it is the only free one.
        let full = snapshot("h100-80gb:2", &[(0, 0, 0)]);
        let l = lease_on(&full, 1, 0, 0);
        let mut req = want("1g.10gb");
        req.gpus = Some(vec![0]);
        assert!(plan(&full, &[l], &req).is_err());
    }

    #[test]
    fn min_mem_picks_the_smallest_plain_profile_that_fits_now() {
        let st = snapshot("h100-80gb", &[]);
        let create_id = |state: &MigState, leases: &[Lease], mib| match plan(
            state,
            leases,
            &PlanRequest::new(Want::MinMemMib(mib)),
        ) {
            Ok(Plan::Create(c)) => c.profile_id,
            Ok(Plan::Reuse { profile_id, .. }) => profile_id,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(create_id(&st, &[], 5000), 19, "1g.10gb, never 1g.10gb+me");
        assert_eq!(create_id(&st, &[], 9984), 19);
        assert_eq!(
            create_id(&st, &[], 9985),
            15,
            "1g.20gb: same memory as 2g.20gb, fewer slices"
        );
        assert_eq!(create_id(&st, &[], 30000), 9, "3g.40gb before 4g.40gb");
        assert_eq!(create_id(&st, &[], 50000), 0);
        // Counting what is free now: 1g.20gb's four placements are blocked, 2g.20gb still fits? No:
        // with 1g.10gb at 0, 2, 4 and 6 every 2-slice placement is blocked, so 3g.40gb is next... also blocked at 0 and 4.
        let st = snapshot("h100-80gb", &[(0, 19, 0), (0, 19, 2), (0, 19, 5)]);
        // 1g.20gb at 6 is free (6-7), so it fits.
        assert_eq!(create_id(&st, &[], 15000), 15);
        let st = snapshot(
            "h100-80gb",
            &[(0, 19, 0), (0, 19, 2), (0, 19, 4), (0, 19, 6)],
        );
        let e = plan(&st, &[], &PlanRequest::new(Want::MinMemMib(15000))).unwrap_err();
        assert!(e.to_string().contains("at least 15000 MiB"), "{e}");
        assert_eq!(e.fits_now.first().map(|s| s.1.as_str()), Some("1g.10gb"));
        // Too big for any profile: waiting would not help.
        let e = plan(
            &snapshot("h100-80gb", &[]),
            &[],
            &PlanRequest::new(Want::MinMemMib(200_000)),
        )
        .unwrap_err();
        assert!(!e.can_wait());
        assert!(e.to_string().contains("7g.80gb"), "{e}");
        // Reuse counts as fitting: a free 3g.40gb is used for 30000 MiB.
        let st = snapshot("h100-80gb", &[(0, 9, 4)]);
        assert!(matches!(
            plan(&st, &[], &PlanRequest::new(Want::MinMemMib(30000))),
            Ok(Plan::Reuse { profile_id: 9, .. })
        ));
    }

    #[test]
    fn no_room_explains_placements_holders_and_what_fits() {
        // The example: 1g.10gb (lease 3) at 0 and 3g.40gb (lease 7) at 4.
        let st = snapshot("h100-80gb", &[(0, 19, 0), (0, 9, 4)]);
        let leases = vec![lease_on(&st, 3, 0, 0), lease_on(&st, 7, 0, 4)];
        let e = plan(&st, &leases, &want("3g.40gb")).unwrap_err();
        let uuid = &st.gpus[0].info.uuid;
        let first = e.to_string().lines().next().unwrap().to_string();
        assert_eq!(
            first,
            format!("no room for 3g.40gb on GPU 0 ({uuid}): needs placement 0 or 4; 0 is held by 1g.10gb (lease 3), 4 is held by 3g.40gb (lease 7); 2g.20gb fits now")
        );
        assert!(
            e.to_string().contains("|1g |.. |.. |.. |3g.40gb        |"),
            "{e}"
        );
        assert!(e.can_wait());

        // A foreign (busy) instance and a kept one are named as such.
        let st = snapshot("h100-80gb", &[(0, 19, 1), (0, 19, 5)]);
        let mut req = want("3g.40gb");
        req.kept = vec![(uuid.clone(), st.gpus[0].instances[1].id)];
        let e = plan(&st, &[], &req).unwrap_err().to_string();
        assert!(
            e.contains(
                "0 is held by 1g.10gb (not migrun's), 4 is held by 1g.10gb (migrun's, kept idle)"
            ),
            "{e}"
        );

        // Multi-GPU: one line per GPU.
        let st = snapshot("h100-80gb:2", &[(0, 0, 0), (1, 0, 0)]);
        let leases = vec![lease_on(&st, 1, 0, 0), lease_on(&st, 2, 1, 0)];
        let e = plan(&st, &leases, &want("1g.10gb"))
            .unwrap_err()
            .to_string();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 3, "{e}");
        assert!(
            lines[0].starts_with("no room for 1g.10gb on 2 GPUs; nothing smaller fits now"),
            "{e}"
        );
        assert!(
            lines[2].starts_with("  GPU 1 (")
                && lines[2].ends_with(
                    "needs placement 0, 1, 2, 3, 4, 5 or 6; 0 to 6 are held by 7g.80gb (lease 2)"
                ),
            "{e}"
        );

        // Instance limit and media extensions.
        let st = snapshot("h100-80gb", &[(0, 20, 3)]);
        let e = plan(&st, &[lease_on(&st, 4, 0, 3)], &want("1g.10gb+me"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("GI 1 1g.10gb+me (lease 4) has them"), "{e}");
    }

    /// Requests `ids` one after another on one GPU: migrun (plan, then create where it says) versus a
    /// driver that picks the placement itself (`pick` chooses among the free ones). Returns the placements made.
    fn sequence(
        spec: &str,
        ids: &[u32],
        driver: Option<fn(&[Placement]) -> Placement>,
    ) -> Result<Vec<Placement>, u32> {
        let mut m = SimMachine::new(&spec.parse::<SimSpec>().unwrap());
        let mut placed = Vec::new();
        let mut leases = Vec::new();
        for &id in ids {
            let placement = match driver {
                None => match plan(
                    &state_of(&m),
                    &leases,
                    &PlanRequest::new(Want::Profile(ProfileSpec::Id(id))),
                ) {
                    Ok(Plan::Create(c)) => c.placement,
                    _ => return Err(id),
                },
                Some(pick) => {
                    let g = &state_of(&m).gpus[0];
                    let p = g.profile_by_id(id).unwrap();
                    let occ: Vec<Occupant> = g.instances.iter().map(Occupant::from).collect();
                    let free = rules::free_placements(&g.profiles, &occ, p);
                    if free.is_empty() {
                        return Err(id);
                    }
                    pick(&free)
                }
            };
            let gi = m.create_gi(0, id, placement.start).map_err(|_| id)?;
            m.create_default_ci(0, gi).unwrap();
            placed.push(placement);
            // Each requester keeps what it got.
            leases.push(lease_on(
                &state_of(&m),
                placed.len() as u64,
                0,
                placement.start,
            ));
        }
        Ok(placed)
    }

    #[test]
    fn user_guide_order_1g_1g_2g_3g() {
        // migrun, asked for 1g.10gb, 1g.10gb, 2g.20gb, 3g.40gb one after another on one H100 (each
        // requester keeping what it got), places all four: it picks every placement itself.
        let ids = [19, 19, 14, 9];
        let placed = sequence("h100-80gb", &ids, None).expect("migrun places all four");
        assert_eq!(placed.len(), 4);
        assert!(
            placed
                .iter()
                .enumerate()
                .all(|(i, a)| placed[i + 1..].iter().all(|b| !a.overlaps(b))),
            "{placed:?}"
        );

        // `nvidia-smi mig -cgi 19,19,14,9` leaves each placement to the driver, and NVIDIA's guide
        // shows it failing with Insufficient Resources: the small instances land where 3g.40gb needs
        // room. A driver that puts each instance at its highest free placement does exactly that here
        // (1g at 6 and 5, 2g at 2; then 3g.40gb overlaps something at both 0 and 4).
        let highest_first: fn(&[Placement]) -> Placement = |free| *free.last().unwrap();
        assert_eq!(sequence("h100-80gb", &ids, Some(highest_first)), Err(9));

        // The simulator's own driver stand-in, `create_gi_anywhere`, takes the *lowest* free placement;
        // with that rule this particular order happens to fit (1g at 0 and 1, 2g at 2, 3g at 4) ...
        let lowest_first: fn(&[Placement]) -> Placement = |free| free[0];
        assert!(sequence("h100-80gb", &ids, Some(lowest_first)).is_ok());
        let mut m = SimMachine::new(&"h100-80gb".parse::<SimSpec>().unwrap());
        for id in ids {
            m.create_gi_anywhere(0, id)
                .expect("lowest-first survives 19,19,14,9");
        }
        // ... and fails other orders instead, e.g. `-cgi 19,14,5`: 1g.10gb at 0 blocks 4g.40gb's only placement.
        assert_eq!(
            sequence("h100-80gb", &[19, 14, 5], Some(lowest_first)),
            Err(5)
        );
        let mut m = SimMachine::new(&"h100-80gb".parse::<SimSpec>().unwrap());
        m.create_gi_anywhere(0, 19).unwrap();
        m.create_gi_anywhere(0, 14).unwrap();
        assert_eq!(
            m.create_gi_anywhere(0, 5),
            Err(crate::gpu::Code::InsufficientResources)
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_mib("20g").unwrap(), 19074);
        assert_eq!(parse_size_mib("20gb").unwrap(), 19074);
        assert_eq!(parse_size_mib("20GB").unwrap(), 19074);
        assert_eq!(parse_size_mib("20GiB").unwrap(), 20480);
        assert_eq!(parse_size_mib("20gi").unwrap(), 20480);
        assert_eq!(parse_size_mib("20000m").unwrap(), 19074);
        assert_eq!(parse_size_mib("9984MiB").unwrap(), 9984);
        assert_eq!(parse_size_mib("1.5t").unwrap(), 1430512);
        for bad in ["", "20", "g", "20x", "0g", "-1g", "1e99tb", "20 g b"] {
            assert!(parse_size_mib(bad).is_err(), "{bad:?} accepted");
        }
        // Every H100 profile named Ngb is found by --min-mem Ng.
        let st = snapshot("h100-80gb", &[]);
        for p in &st.gpus[0].profiles {
            let n = p.parsed_name().unwrap();
            assert!(
                parse_size_mib(&format!("{}g", n.mem_gb)).unwrap() <= p.memory_mib,
                "{}",
                p.name
            );
        }
    }
}
