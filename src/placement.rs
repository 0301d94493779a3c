//! Pure placement policy: (snapshot, request) -> choice, plus the first-fit baseline; it must not do I/O.
//!
//! docs/placement.md explains the policy and why. In short, [`Policy::Migrun`] scores every feasible
//! (GPU, placement) by the future capacity it would destroy on that GPU, plus how much it would delay
//! occupied large blocks (the whole GPU, a half) from coming free, and takes the cheapest.
//! Feasibility always comes from [`candidates`] (the shared `gpu::rules`), so the policy can only
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
    !gpus.is_some_and(|allowed| !allowed.contains(&g.info.index))
        && g.info.mig.is_some_and(|m| m.current)
}

/// Every feasible (gpu, profile, placement) for `spec` on the allowed GPUs, in GPU then start order.
pub fn candidates(state: &MigState, spec: &ProfileSpec, gpus: Option<&[u32]>) -> Vec<Choice> {
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
            if best.as_ref().map_or(true, |(c, _)| cost < *c - 1e-9) {
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
    /// reach is dead). Interval scheduling over the free placements of every creatable profile.
    fn fillable(&self, occ: u64, flags: &Flags, extra: Option<usize>) -> u32 {
        let n = self.slots as usize;
        let mut best = vec![0u32; n + 1];
        let creatable: Vec<usize> = (0..self.profs.len())
            .filter(|&k| self.can_create(k, flags, extra))
            .collect();
        for start in (0..n).rev() {
            let mut b = best[start + 1];
            for &k in &creatable {
                for m in &self.profs[k].masks {
                    if m.trailing_zeros() as usize == start && occ & m == 0 {
                        let end = 64 - m.leading_zeros() as usize;
                        b = b.max(m.count_ones() + best[end.min(n)]);
                    }
                }
            }
            best[start] = b;
        }
        best[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::sim::SimMachine;
    use crate::gpu::Code;
    use std::str::FromStr;

    fn spec(s: &str) -> ProfileSpec {
        ProfileSpec::from_str(s).unwrap()
    }

    fn machine(s: &str) -> SimMachine {
        SimMachine::new(&s.parse().unwrap())
    }

    /// The snapshot `gpu::Backend::snapshot` would read from the machine.
    fn snapshot(m: &SimMachine) -> MigState {
        let gpus = m
            .gpu_infos()
            .into_iter()
            .map(|info| {
                let on = info.mig.is_some_and(|x| x.current);
                GpuState {
                    profiles: m.profiles(info.index).unwrap(),
                    instances: if on {
                        m.instances(info.index).unwrap()
                    } else {
                        Vec::new()
                    },
                    info,
                }
            })
            .collect();
        MigState { gpus }
    }

    fn id(m: &SimMachine, gpu: u32, name: &str) -> u32 {
        m.profiles(gpu)
            .unwrap()
            .iter()
            .find(|p| crate::gpu::names::matches(&spec(name), p))
            .unwrap_or_else(|| panic!("{name} not on GPU {gpu}"))
            .id
    }

    /// Ask `policy` for `profile`, create it in the machine, return (gpu, start).
    fn place(m: &mut SimMachine, profile: &str, policy: Policy) -> Option<(u32, u32)> {
        let c = choose(&snapshot(m), &spec(profile), None, policy)?;
        m.create_gi(c.gpu, c.profile_id, c.placement.start)
            .expect("the policy only picks placements the driver accepts");
        Some((c.gpu, c.placement.start))
    }

    /// Create instances at fixed places: (gpu, profile, start).
    fn with(m: &mut SimMachine, at: &[(u32, &str, u32)]) {
        for &(g, p, s) in at {
            let pid = id(m, g, p);
            m.create_gi(g, pid, s).unwrap();
        }
    }

    /// What the driver does when no placement is given, as NVIDIA's guide shows it: the 1g
    /// instances of `-cgi 19,19,14,9` land at the top of the GPU (the highest free placement).
    fn driver_top_down(m: &mut SimMachine, profile: &str) -> Result<u32, Code> {
        let pid = id(m, 0, profile);
        let p = m
            .profiles(0)
            .unwrap()
            .into_iter()
            .find(|p| p.id == pid)
            .unwrap();
        for pl in p.placements.iter().rev() {
            if m.create_gi(0, pid, pl.start).is_ok() {
                return Ok(pl.start);
            }
        }
        Err(Code::InsufficientResources)
    }

    #[test]
    fn user_guide_creation_order_fits_where_the_driver_order_fails() {
        let order = ["1g.10gb", "1g.10gb", "2g.20gb", "3g.40gb"];
        let mut m = machine("h100-80gb");
        let got: Vec<_> = order
            .iter()
            .map(|p| place(&mut m, p, Policy::Migrun).map(|(_, s)| s))
            .collect();
        assert_eq!(got, vec![Some(0), Some(1), Some(2), Some(4)]);

        let mut driver = machine("h100-80gb");
        let got: Vec<_> = order
            .iter()
            .map(|p| driver_top_down(&mut driver, p))
            .collect();
        assert_eq!(
            got,
            vec![Ok(6), Ok(5), Ok(2), Err(Code::InsufficientResources)],
            "the driver's own choice strands the 3g"
        );
    }

    #[test]
    fn keeps_the_4g_block_where_first_fit_takes_it() {
        for (order, ff_fails_at) in [
            (&["3g.40gb", "4g.40gb"][..], 1),
            (&["2g.20gb", "4g.40gb"][..], 1),
            (&["1g.20gb", "2g.20gb", "4g.40gb"][..], 2),
        ] {
            let mut m = machine("h100-80gb");
            for p in order {
                assert!(place(&mut m, p, Policy::Migrun).is_some(), "{order:?}: {p}");
            }
            let mut ff = machine("h100-80gb");
            let placed: Vec<bool> = order
                .iter()
                .map(|p| place(&mut ff, p, Policy::FirstFit).is_some())
                .collect();
            assert!(!placed[ff_fails_at], "{order:?}: first-fit placed them all");
        }
    }

    #[test]
    fn seven_1g_fill_an_h100_and_an_eighth_is_refused() {
        let mut m = machine("h100-80gb");
        let mut starts: Vec<u32> = (0..7)
            .map(|_| place(&mut m, "1g.10gb", Policy::Migrun).unwrap().1)
            .collect();
        starts.sort();
        assert_eq!(starts, (0..7).collect::<Vec<_>>());
        assert_eq!(place(&mut m, "1g.10gb", Policy::Migrun), None);
        assert!(candidates(&snapshot(&m), &spec("1g.10gb"), None).is_empty());
    }

    #[test]
    fn table_of_single_choices() {
        // (machine, existing instances, request, expected (gpu, start); None = no room)
        type Row = (
            &'static str,
            &'static [(u32, &'static str, u32)],
            &'static str,
            Option<(u32, u32)>,
        );
        let rows: &[Row] = &[
            // Ties go to the lowest GPU; a 3g takes the upper half and keeps [0,4) for a 4g.
            ("h100-80gb:8", &[], "3g.40gb", Some((0, 4))),
            ("h100-80gb:8", &[], "7g.80gb", Some((0, 0))),
            // Release delay, whole GPU: same capacity lost on GPU 0 (one instance) and GPU 1
            // (three); GPU 1 takes it, so GPU 0 can empty when its one instance leaves.
            (
                "h100-80gb:2",
                &[
                    (0, "4g.40gb", 0),
                    (1, "2g.20gb", 0),
                    (1, "1g.10gb", 2),
                    (1, "1g.10gb", 3),
                ],
                "1g.20gb",
                Some((1, 6)),
            ),
            // Release delay, halves: the lower half holds one instance and comes free for a 4g
            // when it leaves; the 1g joins the upper half, which holds two (without the half
            // term it would take 2).
            (
                "h100-80gb",
                &[(0, "2g.20gb", 0), (0, "1g.10gb", 4), (0, "1g.10gb", 5)],
                "1g.10gb",
                Some((0, 6)),
            ),
            // Small instances go to a GPU already in use rather than break an empty one (best fit).
            ("h100-80gb:2", &[(1, "3g.40gb", 4)], "1g.10gb", Some((1, 0))),
            ("h100-80gb:2", &[(0, "7g.80gb", 0)], "2g.20gb", Some((1, 4))),
            // Pack with the neighbour: the half-used pair, not a fresh one.
            ("h100-80gb", &[(0, "1g.10gb", 4)], "1g.10gb", Some((0, 5))),
            // The 1g double-memory profile is the one that can use the last pair of the upper half.
            (
                "h100-80gb",
                &[(0, "4g.40gb", 0), (0, "2g.20gb", 4)],
                "1g.20gb",
                Some((0, 6)),
            ),
            ("h100-80gb", &[], "1g.20gb", Some((0, 6))),
            // A 4g only fits at 0; a second 3g after a 3g at 4 goes to 0.
            ("h100-80gb", &[(0, "3g.40gb", 4)], "4g.40gb", Some((0, 0))),
            (
                "h100-80gb",
                &[(0, "4g.40gb", 0), (0, "3g.40gb", 4)],
                "1g.10gb",
                None,
            ),
            // A 3g next to a 4g: the 7g and whole-GPU capacity are gone already, so the used GPU wins.
            ("h100-80gb:2", &[(1, "4g.40gb", 0)], "3g.40gb", Some((1, 4))),
            // +me: only one media-extension instance per GPU, so it goes to the other GPU.
            (
                "h100-80gb:2",
                &[(0, "1g.10gb+me", 0), (0, "3g.40gb", 4)],
                "1g.10gb+me",
                Some((1, 0)),
            ),
            // A30 (4 slices): keep the free 2g pair whole.
            ("a30-24gb", &[(0, "1g.6gb", 2)], "1g.6gb", Some((0, 3))),
            ("a30-24gb", &[(0, "2g.12gb", 0)], "4g.24gb", None),
            // RTX PRO 6000 (12 slices, 3 per 1g): keep a 2g half whole; +me.all blocks all but -me.
            (
                "rtx-pro-6000",
                &[(0, "1g.24gb", 6)],
                "1g.24gb",
                Some((0, 9)),
            ),
            ("rtx-pro-6000", &[(0, "1g.24gb+me.all", 0)], "1g.24gb", None),
            (
                "rtx-pro-6000",
                &[(0, "1g.24gb+me.all", 0)],
                "1g.24gb-me",
                Some((0, 3)),
            ),
            // MIG-off GPUs are never chosen, even when they are empty and first.
            (
                "h100-80gb:1:mig-off,h100-80gb:1",
                &[],
                "1g.10gb",
                Some((1, 0)),
            ),
            ("a30-24gb:1:mig-off", &[], "1g.6gb", None),
            // A profile no GPU has.
            ("a30-24gb", &[], "3g.40gb", None),
        ];
        for (spec_s, existing, request, want) in rows {
            let mut m = machine(spec_s);
            with(&mut m, existing);
            let state = snapshot(&m);
            let got = choose(&state, &spec(request), None, Policy::Migrun)
                .map(|c| (c.gpu, c.placement.start));
            assert_eq!(got, *want, "{spec_s} {existing:?} + {request}");
        }
    }

    #[test]
    fn respects_the_gpu_filter_and_profile_ids() {
        let mut m = machine("h100-80gb:3");
        with(&mut m, &[(2, "3g.40gb", 4)]);
        let state = snapshot(&m);
        let one = spec("1g.10gb");
        // Unfiltered, the used GPU 2 is best; filtered, only the allowed GPUs count.
        assert_eq!(choose(&state, &one, None, Policy::Migrun).unwrap().gpu, 2);
        assert_eq!(
            choose(&state, &one, Some(&[0, 1]), Policy::Migrun)
                .unwrap()
                .gpu,
            0
        );
        assert_eq!(
            choose(&state, &one, Some(&[1]), Policy::Migrun)
                .unwrap()
                .gpu,
            1
        );
        assert_eq!(choose(&state, &one, Some(&[]), Policy::Migrun), None);
        assert_eq!(choose(&state, &one, Some(&[7]), Policy::Migrun), None);
        assert_eq!(
            choose(&state, &one, Some(&[1]), Policy::FirstFit)
                .unwrap()
                .gpu,
            1
        );
        // An ID and a name of the same profile choose the same.
        assert_eq!(
            choose(&state, &spec("19"), None, Policy::Migrun),
            choose(&state, &one, None, Policy::Migrun)
        );
        assert_eq!(
            choose(&state, &spec("19"), None, Policy::Migrun)
                .unwrap()
                .profile_id,
            19
        );
    }

    /// A small deterministic generator for the property tests (no dependency needed for a test).
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n.max(1)
        }
    }

    /// Random reachable states: random creates (any legal placement) and destroys.
    fn random_states(machine_spec: &str, seed: u64, count: usize) -> Vec<SimMachine> {
        let mut rng = Lcg(seed);
        let mut m = machine(machine_spec);
        let mut out = Vec::new();
        for _ in 0..count {
            let state = snapshot(&m);
            let g = rng.below(state.gpus.len());
            let gs = &state.gpus[g];
            if !gs.instances.is_empty() && rng.below(3) == 0 {
                let gi = gs.instances[rng.below(gs.instances.len())].id;
                m.destroy_gi(g as u32, gi).unwrap();
            } else if !gs.profiles.is_empty() {
                let p = &gs.profiles[rng.below(gs.profiles.len())];
                let pl = p.placements[rng.below(p.placements.len())];
                let _ = m.create_gi(g as u32, p.id, pl.start);
            }
            out.push(m.clone());
        }
        out
    }

    #[test]
    fn never_refuses_a_request_that_fits_and_only_picks_candidates() {
        for (i, ms) in [
            "h100-80gb:3",
            "a100-40gb:1,h100-80gb:1:mig-off,h200-141gb:1",
            "a30-24gb:2",
            "rtx-pro-6000:2",
        ]
        .iter()
        .enumerate()
        {
            for m in random_states(ms, 17 + i as u64, 150) {
                let state = snapshot(&m);
                let mut names: Vec<String> = state
                    .gpus
                    .iter()
                    .flat_map(|g| g.profiles.iter().map(|p| p.short_name().to_string()))
                    .collect();
                names.sort();
                names.dedup();
                names.push("3g.40gb".into());
                names.push("5".into());
                for n in &names {
                    let sp = spec(n);
                    for filter in [None, Some(&[0u32][..]), Some(&[1u32][..])] {
                        let cands = candidates(&state, &sp, filter);
                        let got = choose(&state, &sp, filter, Policy::Migrun);
                        assert_eq!(got.is_some(), !cands.is_empty(), "{ms} {n} {filter:?}");
                        if let Some(c) = got {
                            assert!(cands.contains(&c), "{ms} {n}: {c:?} is not a candidate");
                        }
                        assert_eq!(first_fit(&state, &sp, filter), cands.first().copied());
                    }
                }
            }
        }
    }

    #[test]
    fn fast_view_agrees_with_the_shared_rules() {
        for (i, ms) in [
            "h100-80gb:2",
            "a30-24gb:1",
            "rtx-pro-6000:1",
            "b200-180gb:1",
        ]
        .iter()
        .enumerate()
        {
            for m in random_states(ms, 99 + i as u64, 120) {
                for g in &snapshot(&m).gpus {
                    let view = GpuView::new(g);
                    let occ: Vec<Occupant> = g.instances.iter().map(Occupant::from).collect();
                    for (k, p) in g.profiles.iter().enumerate() {
                        assert_eq!(
                            view.can_create(k, &view.flags, None),
                            rules::can_create(&g.profiles, &occ, p),
                            "{ms} {}",
                            p.name
                        );
                        assert_eq!(
                            view.remaining(k, view.occ, &view.flags, None),
                            rules::remaining(&g.profiles, &occ, p),
                            "{ms} {}",
                            p.name
                        );
                    }
                }
            }
        }
    }
}
