//! NVML's rules for which GPU instances can coexist on one GPU; pure functions shared by the simulator and the placement policy.
//!
//! Keeping them in one place means the policy never plans what the (simulated or real) driver
//! would refuse: overlap, instance-count limits, one `+me` per GPU, `+me.all` exclusivity.

use super::{GiProfile, GpuInstance, Placement};
use crate::profile::Variant;

/// An instance as the rules see it: which profile, where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupant {
    pub profile_id: u32,
    pub placement: Placement,
}

impl From<&GpuInstance> for Occupant {
    fn from(i: &GpuInstance) -> Self {
        Occupant {
            profile_id: i.profile_id,
            placement: i.placement,
        }
    }
}

fn variant_of(profiles: &[GiProfile], profile_id: u32) -> Variant {
    profiles
        .iter()
        .find(|p| p.id == profile_id)
        .and_then(|p| p.parsed_name())
        .map_or(Variant::Plain, |n| n.variant)
}

/// No existing instance overlaps `p`.
pub fn placement_free(existing: &[Occupant], p: &Placement) -> bool {
    existing.iter().all(|o| !o.placement.overlaps(p))
}

/// Instance-count and media-engine rules, independent of placement.
pub fn can_create(profiles: &[GiProfile], existing: &[Occupant], profile: &GiProfile) -> bool {
    let same = existing
        .iter()
        .filter(|o| o.profile_id == profile.id)
        .count() as u32;
    if same >= profile.instance_count {
        return false;
    }
    let variant = profile.parsed_name().map_or(Variant::Plain, |n| n.variant);
    let variants: Vec<Variant> = existing
        .iter()
        .map(|o| variant_of(profiles, o.profile_id))
        .collect();
    // Only one instance with media extensions per GPU.
    if variant.has_media_extensions() && variants.iter().any(|v| v.has_media_extensions()) {
        return false;
    }
    // An _ALL_ME instance blocks every other profile except _NO_ME (nvml.h), and needs the same of what exists.
    if variants.contains(&Variant::MeAll) && variant != Variant::NoMe {
        return false;
    }
    if variant == Variant::MeAll && variants.iter().any(|v| *v != Variant::NoMe) {
        return false;
    }
    true
}

/// Can `profile` be created at `placement` (one of its own placements) next to `existing`?
pub fn fits(
    profiles: &[GiProfile],
    existing: &[Occupant],
    profile: &GiProfile,
    placement: &Placement,
) -> bool {
    profile.placements.contains(placement)
        && placement_free(existing, placement)
        && can_create(profiles, existing, profile)
}

/// The placements of `profile` where it could be created now.
pub fn free_placements(
    profiles: &[GiProfile],
    existing: &[Occupant],
    profile: &GiProfile,
) -> Vec<Placement> {
    if !can_create(profiles, existing, profile) {
        return Vec::new();
    }
    profile
        .placements
        .iter()
        .filter(|p| placement_free(existing, p))
        .copied()
        .collect()
}

/// Set every profile's `remaining` from the instances that exist now ([`remaining`] over the table itself):
/// what the driver's per-profile query would answer, for the simulator, a snapshot and the benchmark alike.
pub fn fill_remaining(profiles: &mut [GiProfile], existing: &[Occupant]) {
    let left: Vec<u32> = profiles
        .iter()
        .map(|p| remaining(profiles, existing, p))
        .collect();
    for (p, r) in profiles.iter_mut().zip(left) {
        p.remaining = r;
    }
}

/// nvmlDeviceGetGpuInstanceRemainingCapacity: how many more of `profile` fit now.
pub fn remaining(profiles: &[GiProfile], existing: &[Occupant], profile: &GiProfile) -> u32 {
    if !can_create(profiles, existing, profile) {
        return 0;
    }
    let same = existing
        .iter()
        .filter(|o| o.profile_id == profile.id)
        .count() as u32;
    let mut left = profile.instance_count - same;
    if profile
        .parsed_name()
        .is_some_and(|n| n.variant.has_media_extensions())
    {
        left = left.min(1);
    }
    left.min(disjoint_free(&profile.placements, existing))
}

/// How many of `placements` (one profile's, all one size, sorted by start) can be taken at once beside
/// `existing`: taking each free one greedily is optimal (earliest end first). The same slot arithmetic
/// serves GPU instances on a GPU and compute instances inside a GPU instance (`sim::ci`).
pub fn disjoint_free(placements: &[Placement], existing: &[Occupant]) -> u32 {
    let mut taken: Vec<Placement> = Vec::new();
    for p in placements {
        if placement_free(existing, p) && taken.iter().all(|t| !t.overlaps(p)) {
            taken.push(*p);
        }
    }
    taken.len() as u32
}

/// The lowest id from `first` on that no existing instance has: how the driver numbers a new GPU instance
/// (from 1) or compute instance (from 0 within its GPU instance).
pub fn lowest_free_id(first: u32, ids: impl Iterator<Item = u32> + Clone) -> u32 {
    (first..)
        .find(|id| ids.clone().all(|i| i != *id))
        .unwrap_or(first)
}
