//! Pure placement policy: (snapshot, request) -> choice, plus the first-fit baseline; it must not do I/O.
//!
//! docs/placement.md explains the policy and why. In short, [`Policy::Migrun`] scores every feasible
//! (GPU, placement) by the future capacity it would destroy on that GPU, plus how much it would delay
//! occupied large blocks (the whole GPU, a half) from coming free, and takes the cheapest.
//! Feasibility always comes from `candidates` (the shared `gpu::rules`), so the policy can only
//! *rank* what the driver would accept: it never plans an illegal instance and never refuses a
//! request that fits somewhere.

use crate::gpu::rules::{self, Occupant};
use crate::gpu::{GiProfile, GpuInstance, GpuState, MigState, Placement};
use crate::profile::{ProfileSpec, Variant};

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

/// Is this GPU one the request may use? MIG must be on now (a pending enable does not count).
fn usable(g: &GpuState, gpus: Option<&[u32]>) -> bool {
    gpus.is_none_or(|allowed| allowed.contains(&g.info.index))
        && g.info.mig.is_some_and(|m| m.current)
}

/// Every feasible (gpu, profile, placement) for `spec` on the allowed GPUs, in GPU then start order.
pub(crate) fn candidates(
    state: &MigState,
    spec: &ProfileSpec,
    gpus: Option<&[u32]>,
) -> Vec<Choice> {
    let mut out = Vec::new();
    for g in state.gpus.iter().filter(|g| usable(g, gpus)) {
        let Some(profile) = g
            .profiles
            .iter()
            .find(|p| crate::gpu::names::matches(spec, p))
        else {
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
pub(crate) fn first_fit(
    state: &MigState,
    spec: &ProfileSpec,
    gpus: Option<&[u32]>,
) -> Option<Choice> {
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
        Policy::Migrun => migrun(state, spec, gpus),
    }
}

/// Cost of one memory slice that no profile can use any more (it stays dead until a neighbour leaves).
const DEAD_SLICE_COST: f64 = 4.0;

/// Weight of the release-delay term, as a fraction of a block's size² weight.
///
/// A block of a large shape (the whole GPU, a half) that already holds k instances comes free
/// when the last of them leaves; with lifetimes of one distribution and no memory that takes
/// H_k = 1 + 1/2 + … + 1/k mean lifetimes, so one more instance inside it delays it by 1/(k+1).
/// The sweep put the weight at 0.2 (0.12 and 0.16 were no better; docs/placement.md).
const RELEASE_DELAY_WEIGHT: f64 = 0.2;

/// migrun's policy (docs/placement.md): the feasible (GPU, placement) that destroys the least
/// future capacity, weighted by size and by how scarce that capacity is machine-wide, and delays
/// the release of occupied large blocks the least.
fn migrun(state: &MigState, spec: &ProfileSpec, gpus: Option<&[u32]>) -> Option<Choice> {
    let views: Vec<Option<GpuView>> = state
        .gpus
        .iter()
        .map(|g| {
            g.info
                .mig
                .is_some_and(|m| m.current)
                .then(|| GpuView::new(g))
        })
        .collect();
    // How many more instances of each shape the whole machine could take now. Losing one of 20
    // 1g spots costs little; losing the last empty GPU costs the whole 7g weight.
    let mut shapes: Vec<(&[Placement], u32)> = Vec::new();
    let view_keys: Vec<Vec<usize>> = views
        .iter()
        .map(|v| {
            let Some(v) = v else { return Vec::new() };
            let cap = v.capacity(v.occ, &v.flags, None);
            v.shapes
                .iter()
                .zip(cap)
                .map(|(shape, c)| {
                    match shapes
                        .iter()
                        .position(|(pl, _)| *pl == shape.placements.as_slice())
                    {
                        Some(i) => {
                            shapes[i].1 += c;
                            i
                        }
                        None => {
                            shapes.push((shape.placements.as_slice(), c));
                            shapes.len() - 1
                        }
                    }
                })
                .collect()
        })
        .collect();

    let mut best: Option<(f64, Choice)> = None;
    for ((g, view), keys) in state.gpus.iter().zip(&views).zip(&view_keys) {
        let Some(view) = view else { continue };
        if !usable(g, gpus) {
            continue;
        }
        let Some(req) = g
            .profiles
            .iter()
            .position(|p| crate::gpu::names::matches(spec, p))
        else {
            continue;
        };
        // Feasibility comes from the shared rules, never from the fast view.
        let occ: Vec<Occupant> = g.instances.iter().map(Occupant::from).collect();
        let mut free = rules::free_placements(&g.profiles, &occ, &g.profiles[req]);
        view.fresh_gpu_rule(req, &mut free);
        if free.is_empty() {
            continue;
        }
        let busy = view.busy_blocks(&g.instances);
        let before = view.capacity(view.occ, &view.flags, None);
        let before_fill = view.fillable(view.occ, &view.flags, None);
        let after_flags = view.flags.with(&view.profs[req]);
        for placement in free {
            let occ_after = view.occ | span_mask(&placement);
            let after = view.capacity(occ_after, &after_flags, Some(req));
            let mut cost = 0.0;
            for (s, shape) in view.shapes.iter().enumerate() {
                let lost = before[s].saturating_sub(after[s]);
                if lost > 0 {
                    let size = shape.size as f64;
                    let machine_wide = shapes[keys[s]].1.max(1) as f64;
                    cost += lost as f64 * size * size / machine_wide;
                }
            }
            let after_fill = view.fillable(occ_after, &after_flags, Some(req));
            let dead = before_fill.saturating_sub(after_fill + placement.size);
            cost += DEAD_SLICE_COST * dead as f64;
            let span = span_mask(&placement);
            cost += busy
                .iter()
                .filter(|(block, _)| block & span != 0)
                .map(|(_, delay)| delay)
                .sum::<f64>();
            let choice = Choice {
                gpu: g.info.index,
                profile_id: g.profiles[req].id,
                placement,
            };
            // Strictly cheaper only, so ties keep the lower GPU and the lower start.
            if best.as_ref().is_none_or(|(c, _)| cost < *c - 1e-9) {
                best = Some((cost, choice));
            }
        }
    }
    best.map(|(_, c)| c)
}

fn span_mask(p: &Placement) -> u64 {
    if p.size >= 64 {
        u64::MAX
    } else {
        ((1u64 << p.size) - 1) << p.start
    }
}

/// One profile of a GPU, preprocessed for bit operations.
#[derive(Debug, Clone)]
struct Prof {
    id: u32,
    variant: Variant,
    instance_count: u32,
    /// Index into `GpuView::shapes`.
    shape: usize,
    /// Placement masks in the profile's own order (sorted by start, as NVML lists them).
    masks: Vec<u64>,
}

/// A distinct placement grid (profiles that share one are the same shape, e.g. 3g and 4g are not).
#[derive(Debug, Clone)]
struct Shape {
    size: u32,
    placements: Vec<Placement>,
}

/// Which media-engine rules are in force on a GPU (mirrors `rules::can_create`).
#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    media: bool,
    me_all: bool,
    not_no_me: bool,
}

impl Flags {
    fn with(&self, p: &Prof) -> Flags {
        Flags {
            media: self.media || p.variant.has_media_extensions(),
            me_all: self.me_all || p.variant == Variant::MeAll,
            not_no_me: self.not_no_me || p.variant != Variant::NoMe,
        }
    }
}

/// A GPU's profiles and occupancy as bit masks, so scoring a candidate costs a few hundred bit operations.
struct GpuView {
    profs: Vec<Prof>,
    shapes: Vec<Shape>,
    /// Instances of each profile (same order as `profs`).
    counts: Vec<u32>,
    occ: u64,
    flags: Flags,
    slots: u32,
    /// Every placement of every profile, highest start first ([`spans_of`]).
    spans: Vec<Span>,
}

fn variant_of(p: &GiProfile) -> Variant {
    p.parsed_name().map_or(Variant::Plain, |n| n.variant)
}

impl GpuView {
    fn new(g: &GpuState) -> GpuView {
        let mut shapes: Vec<Shape> = Vec::new();
        let profs: Vec<Prof> = g
            .profiles
            .iter()
            .map(|p| {
                let shape = match shapes.iter().position(|s| s.placements == p.placements) {
                    Some(i) => i,
                    None => {
                        shapes.push(Shape {
                            size: p.placement_size(),
                            placements: p.placements.clone(),
                        });
                        shapes.len() - 1
                    }
                };
                Prof {
                    id: p.id,
                    variant: variant_of(p),
                    instance_count: p.instance_count,
                    shape,
                    masks: p.placements.iter().map(span_mask).collect(),
                }
            })
            .collect();
        let mut counts = vec![0; profs.len()];
        let mut occ = 0u64;
        let mut flags = Flags::default();
        for i in &g.instances {
            occ |= span_mask(&i.placement);
            match profs.iter().position(|p| p.id == i.profile_id) {
                Some(k) => {
                    counts[k] += 1;
                    flags = flags.with(&profs[k]);
                }
                // An unknown profile counts as plain, as in `rules::can_create`.
                None => flags.not_no_me = true,
            }
        }
        GpuView {
            spans: spans_of(&profs),
            profs,
            shapes,
            counts,
            occ,
            flags,
            slots: g.slots(),
        }
    }

    /// The fresh-GPU rule: on an empty GPU, a one-slice profile that cannot fill the upper half by
    /// itself starts in the lower half, where it packs without waste.
    ///
    /// On 8-slice GPUs no 1g.10gb-class placement reaches the last slice, so 1g instances that open a
    /// GPU high strand that slice and break the upper half, the only place a 3g can still go once
    /// small instances share the GPU. NVIDIA's guide shows the cost: `-cgi 19,19,14,9` fails when
    /// the driver puts the 1g instances high. The 2g profile is left to the cost function: the
    /// sweep measured the rule about 0.2 points worse when applied to it too (docs/placement.md).
    fn fresh_gpu_rule(&self, k: usize, free: &mut Vec<Placement>) {
        let half = self.slots / 2;
        let size = free.first().map_or(0, |p| p.size);
        if self.occ != 0 || size != 1 {
            return;
        }
        let upper = self.profs[k]
            .masks
            .iter()
            .filter(|m| m.trailing_zeros() >= half)
            .count() as u32;
        if upper.min(self.profs[k].instance_count) * size >= half {
            return;
        }
        if free.iter().any(|p| p.end() <= half) {
            free.retain(|p| p.end() <= half);
        }
    }

    /// The occupied blocks of the large shapes (at least half the GPU: the whole GPU, the halves)
    /// with what one more instance inside each costs: it delays the block's release
    /// (`RELEASE_DELAY_WEIGHT`). For the whole GPU this prefers GPUs holding more instances, so
    /// GPUs with one or two left can empty for a full-GPU profile; for a half it prefers halves
    /// already crowded, so a half with one small instance left can come free for a 4g or a 3g.
    fn busy_blocks(&self, instances: &[GpuInstance]) -> Vec<(u64, f64)> {
        let masks: Vec<u64> = instances.iter().map(|i| span_mask(&i.placement)).collect();
        let mut out = Vec::new();
        for shape in self.shapes.iter().filter(|s| s.size * 2 >= self.slots) {
            let weight = RELEASE_DELAY_WEIGHT * (shape.size as f64).powi(2);
            for p in &shape.placements {
                let block = span_mask(p);
                let k = masks.iter().filter(|m| *m & block != 0).count();
                if k > 0 {
                    out.push((block, weight / (k as f64 + 1.0)));
                }
            }
        }
        out
    }

    /// `rules::can_create` for profile `k`, with one more instance of `extra` counted.
    fn can_create(&self, k: usize, flags: &Flags, extra: Option<usize>) -> bool {
        let p = &self.profs[k];
        let same = self.counts[k] + u32::from(extra == Some(k));
        if same >= p.instance_count {
            return false;
        }
        if p.variant.has_media_extensions() && flags.media {
            return false;
        }
        if flags.me_all && p.variant != Variant::NoMe {
            return false;
        }
        if p.variant == Variant::MeAll && flags.not_no_me {
            return false;
        }
        true
    }

    /// `rules::remaining` for profile `k` over occupancy `occ`.
    fn remaining(&self, k: usize, occ: u64, flags: &Flags, extra: Option<usize>) -> u32 {
        if !self.can_create(k, flags, extra) {
            return 0;
        }
        let p = &self.profs[k];
        let same = self.counts[k] + u32::from(extra == Some(k));
        let mut left = p.instance_count - same;
        if p.variant.has_media_extensions() {
            left = left.min(1);
        }
        let mut taken = occ;
        let mut n = 0;
        for m in &p.masks {
            if taken & m == 0 {
                taken |= m;
                n += 1;
            }
        }
        left.min(n)
    }

    /// How many more instances of each shape fit (the best profile of the shape counts).
    fn capacity(&self, occ: u64, flags: &Flags, extra: Option<usize>) -> Vec<u32> {
        let mut cap = vec![0; self.shapes.len()];
        for (k, p) in self.profs.iter().enumerate() {
            let r = self.remaining(k, occ, flags, extra);
            cap[p.shape] = cap[p.shape].max(r);
        }
        cap
    }

    /// The most free slices that instances could still cover (a slice no creatable placement can
    /// reach is dead). Interval scheduling over the free placements of every creatable profile:
    /// `best[s]` is the most slices coverable at or after slice `s`, from the last slice down, over
    /// [`GpuView::spans`] (every placement once, highest start first). It runs for every candidate
    /// of every GPU on each allocation, so it walks each placement once rather than every
    /// placement for every start.
    fn fillable(&self, occ: u64, flags: &Flags, extra: Option<usize>) -> u32 {
        let n = self.slots as usize;
        let creatable: Vec<bool> = (0..self.profs.len())
            .map(|k| self.can_create(k, flags, extra))
            .collect();
        let mut best = vec![0u32; n + 1];
        let mut spans = self.spans.iter().peekable();
        for start in (0..n).rev() {
            let mut b = best[start + 1];
            while let Some(sp) = spans.next_if(|sp| sp.start >= start) {
                if sp.start == start && creatable[sp.prof] && occ & sp.mask == 0 {
                    b = b.max(sp.mask.count_ones() + best[sp.end.min(n)]);
                }
            }
            best[start] = b;
        }
        best[0]
    }
}

/// One placement of one profile, for [`GpuView::fillable`]: its mask, first slice and end.
#[derive(Debug, Clone, Copy)]
struct Span {
    prof: usize,
    mask: u64,
    start: usize,
    end: usize,
}

/// Every placement of every profile, highest start first.
fn spans_of(profs: &[Prof]) -> Vec<Span> {
    let mut spans: Vec<Span> = profs
        .iter()
        .enumerate()
        .flat_map(|(k, p)| {
            p.masks.iter().filter(|m| **m != 0).map(move |&m| Span {
                prof: k,
                mask: m,
                start: m.trailing_zeros() as usize,
                end: 64 - m.leading_zeros() as usize,
            })
        })
        .collect();
    spans.sort_unstable_by_key(|s| std::cmp::Reverse(s.start));
    spans
}

#[cfg(test)]
mod tests;
