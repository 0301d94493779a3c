//! Why a request fits nowhere now, told for people: per GPU what the profile needs, who holds it and what
//! would fit instead ([`NoRoom`]); it must not do I/O.
//!
//! The planner (`plan`) asks `gpu_unusable` of every GPU it considers, `explain` of each where the
//! profile exists but does not fit, and `suggestions` for what fits now; the allocator decides from
//! [`NoRoom::can_wait`] whether waiting could help.

use super::plan::{allowed, fits_now, is_plain, owner, Owner, PlanRequest};
use crate::gpu::rules::{self, Occupant};
use crate::gpu::{GiProfile, GpuInstance, GpuState, MigState, Placement};
use crate::lease::Lease;
use crate::profile::Variant;
use serde::Serialize;
use std::fmt;

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

/// Why a GPU cannot take any request at all (MIG off, not capable).
pub(super) fn gpu_unusable(g: &GpuState) -> Option<Why> {
    match g.info.mig {
        None => Some(Why::NotMigCapable),
        Some(m) if !m.current => Some(Why::MigDisabled),
        Some(m) if !m.pending => Some(Why::MigDisablePending),
        Some(_) => None,
    }
}

pub(super) fn short(g: &GpuState, profile_id: u32) -> String {
    g.profile_by_id(profile_id)
        .map_or(format!("profile {profile_id}"), |p| {
            p.short_name().to_string()
        })
}

/// Why `p` cannot be created on `g` now (assumes it indeed cannot).
pub(super) fn explain(
    g: &GpuState,
    p: &GiProfile,
    leases: &[Lease],
    kept: &[(String, u32)],
) -> Why {
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

/// Plain, allowed profiles smaller than `below_mib` that fit now, largest first.
pub(super) fn suggestions(
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
                && fits_now(state, g, p, leases, &req.ci)
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

#[cfg(test)]
mod tests {
    use crate::policy::plan::plan;
    use crate::policy::test_support::{lease_on, snapshot, want};

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
}
