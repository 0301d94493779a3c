//! The repacking oracle of the placement benchmark: accept a request when all running requests plus it fit the GPUs in SOME arrangement; it must not be used to place real instances.
//!
//! Exact, not heuristic. For each GPU model, every multiset of request kinds that fits on one GPU
//! is enumerated once by backtracking over placements with `gpu::rules::fits` (so the same
//! overlap, instance-count and media-engine rules apply). A multiset of running requests then fits
//! the machine when it can be covered by at most as many of those per-GPU multisets as there are
//! GPUs of each model. That is a small bin-covering search: take the largest kind present, try each
//! maximal per-GPU multiset holding it (clipped to what is left, dominated ones dropped), recurse,
//! memoise every answer.

use super::replay::Stats;
use super::stream::{Arrival, Kind};
use migrun::gpu::rules::{self, Occupant};
use migrun::gpu::{GiProfile, GpuState, MigState, Placement};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

/// Counts per kind.
type Counts = Vec<u16>;

/// GPUs that share one profile table (one model).
#[derive(Debug)]
struct Group {
    gpus: u16,
    slots: u32,
    /// Every multiset of kinds that fits on one GPU of this model.
    feasible: HashSet<Counts>,
    /// The feasible multisets nothing more can be added to.
    maximal: Vec<Counts>,
    /// Placement size of each kind on this model (`None`: the model lacks it).
    size: Vec<Option<u32>>,
}

/// Memo entries kept before the cache is dropped (bounds memory on very long runs).
const MEMO_LIMIT: usize = 4_000_000;

/// The exact repacking bound for one machine and one list of kinds.
#[derive(Debug)]
pub struct Oracle {
    groups: Vec<Group>,
    /// The group of each MIG-on GPU, in index order.
    gpu_group: Vec<usize>,
    /// Kinds in the order the search places them: largest placement first.
    pivot_order: Vec<usize>,
    memo: HashMap<Vec<u16>, bool>,
}

fn one_gpu_multisets(profiles: &[GiProfile], kinds: &[Kind]) -> HashSet<Counts> {
    let mut items: Vec<(usize, &GiProfile, Placement)> = Vec::new();
    for (k, kind) in kinds.iter().enumerate() {
        if let Some(p) = profiles
            .iter()
            .find(|p| migrun::gpu::names::matches(&kind.spec, p))
        {
            items.extend(p.placements.iter().map(|pl| (k, p, *pl)));
        }
    }
    let mut out = HashSet::new();
    let mut occ: Vec<Occupant> = Vec::new();
    let mut counts: Counts = vec![0; kinds.len()];
    fn dfs(
        from: usize,
        items: &[(usize, &GiProfile, Placement)],
        profiles: &[GiProfile],
        occ: &mut Vec<Occupant>,
        counts: &mut Counts,
        out: &mut HashSet<Counts>,
    ) {
        out.insert(counts.clone());
        for j in from..items.len() {
            let (k, p, pl) = items[j];
            if rules::fits(profiles, occ, p, &pl) {
                occ.push(Occupant {
                    profile_id: p.id,
                    placement: pl,
                });
                counts[k] += 1;
                dfs(j + 1, items, profiles, occ, counts, out);
                counts[k] -= 1;
                occ.pop();
            }
        }
    }
    dfs(0, &items, profiles, &mut occ, &mut counts, &mut out);
    out
}

impl Oracle {
    /// Build the per-model tables for the MIG-on GPUs of `state`.
    pub fn new(state: &MigState, kinds: &[Kind]) -> Oracle {
        let mut models: Vec<(&GpuState, u16)> = Vec::new();
        let mut gpu_group = Vec::new();
        for g in state
            .gpus
            .iter()
            .filter(|g| g.info.mig.is_some_and(|m| m.current))
        {
            let same_model = |o: &GpuState| {
                o.profiles.len() == g.profiles.len()
                    && o.profiles.iter().zip(&g.profiles).all(|(a, b)| {
                        a.id == b.id && a.name == b.name && a.placements == b.placements
                    })
            };
            match models.iter().position(|(o, _)| same_model(o)) {
                Some(i) => {
                    models[i].1 += 1;
                    gpu_group.push(i);
                }
                None => {
                    gpu_group.push(models.len());
                    models.push((g, 1));
                }
            }
        }
        let groups: Vec<Group> = models
            .into_iter()
            .map(|(g, n)| {
                let feasible = one_gpu_multisets(&g.profiles, kinds);
                let maximal = feasible
                    .iter()
                    .filter(|c| {
                        (0..kinds.len()).all(|k| {
                            let mut up = (*c).clone();
                            up[k] += 1;
                            !feasible.contains(&up)
                        })
                    })
                    .cloned()
                    .collect::<Vec<_>>();
                let mut maximal = maximal;
                maximal.sort();
                let size = kinds
                    .iter()
                    .map(|k| {
                        g.profiles
                            .iter()
                            .find(|p| migrun::gpu::names::matches(&k.spec, p))
                            .map(|p| p.placement_size())
                    })
                    .collect();
                Group {
                    gpus: n,
                    slots: g.slots(),
                    feasible,
                    maximal,
                    size,
                }
            })
            .collect();
        let biggest = |k: usize| groups.iter().filter_map(|g| g.size[k]).max().unwrap_or(0);
        let mut pivot_order: Vec<usize> = (0..kinds.len()).collect();
        pivot_order.sort_by_key(|&k| (Reverse(biggest(k)), k));
        Oracle {
            groups,
            gpu_group,
            pivot_order,
            memo: HashMap::new(),
        }
    }

    /// Do the requests counted in `running` all fit the machine at once, in some arrangement?
    pub fn fits(&mut self, running: &[u16]) -> bool {
        let mut avail: Vec<u16> = self.groups.iter().map(|g| g.gpus).collect();
        let mut m = running.to_vec();
        self.search(&mut m, &mut avail)
    }

    fn search(&mut self, m: &mut Counts, avail: &mut Vec<u16>) -> bool {
        let Some(&pivot) = self.pivot_order.iter().find(|&&k| m[k] > 0) else {
            return true;
        };
        // Cheap refusals first: not enough slices, or a kind no remaining GPU has.
        let capacity: u64 = self
            .groups
            .iter()
            .zip(avail.iter())
            .map(|(g, &n)| g.slots as u64 * n as u64)
            .sum();
        let mut need = 0u64;
        for (k, &c) in m.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let smallest = self
                .groups
                .iter()
                .zip(avail.iter())
                .filter(|(_, &n)| n > 0)
                .filter_map(|(g, _)| g.size[k])
                .min();
            match smallest {
                Some(s) => need += s as u64 * c as u64,
                None => return false,
            }
        }
        if need > capacity {
            return false;
        }
        let total: u32 = avail.iter().map(|&n| n as u32).sum();
        if total == 1 {
            let g = avail.iter().position(|&n| n == 1).expect("one GPU left");
            return self.groups[g].feasible.contains(m);
        }
        let mut key = m.clone();
        key.extend_from_slice(avail);
        if let Some(&hit) = self.memo.get(&key) {
            return hit;
        }
        // Candidate contents of the GPU that takes one `pivot` request.
        let mut options: Vec<(usize, Counts)> = Vec::new();
        for (gi, g) in self.groups.iter().enumerate() {
            if avail[gi] == 0 {
                continue;
            }
            let mut mine: Vec<Counts> = Vec::new();
            for c in g.maximal.iter().filter(|c| c[pivot] > 0) {
                let s: Counts = c.iter().zip(m.iter()).map(|(a, b)| *a.min(b)).collect();
                if !mine.contains(&s) {
                    mine.push(s);
                }
            }
            // A GPU content contained in another one is never better (feasibility is downward closed).
            let dominated = |s: &Counts, all: &[Counts]| {
                all.iter()
                    .any(|o| o != s && o.iter().zip(s.iter()).all(|(a, b)| a >= b))
            };
            let keep: Vec<Counts> = mine
                .iter()
                .filter(|s| !dominated(s, &mine))
                .cloned()
                .collect();
            options.extend(keep.into_iter().map(|s| (gi, s)));
        }
        let mut found = false;
        for (gi, s) in options {
            for (a, b) in m.iter_mut().zip(&s) {
                *a -= b;
            }
            avail[gi] -= 1;
            found = self.search(m, avail);
            avail[gi] += 1;
            for (a, b) in m.iter_mut().zip(&s) {
                *a += b;
            }
            if found {
                break;
            }
        }
        if self.memo.len() >= MEMO_LIMIT {
            self.memo.clear();
        }
        self.memo.insert(key, found);
        found
    }
}

/// Replay `stream` with free repacking: accept whenever everything running plus the new request fits.
pub fn replay(
    oracle: &mut Oracle,
    kinds: &[Kind],
    stream: &[Arrival],
    warmup: usize,
    total_slices: u32,
) -> Stats {
    let mut stats = Stats::new("oracle", kinds);
    let mut running: Counts = vec![0; kinds.len()];
    let mut used: u64 = 0;
    let mut departures: BinaryHeap<Reverse<(u64, u64, usize)>> = BinaryHeap::new();
    for (n, a) in stream.iter().enumerate() {
        while let Some(Reverse((t, _, k))) = departures.peek().copied() {
            if f64::from_bits(t) > a.t {
                break;
            }
            departures.pop();
            running[k] -= 1;
            used -= kinds[k].slices as u64;
        }
        let free = (total_slices as u64).saturating_sub(used);
        running[a.kind] += 1;
        let ok = oracle.fits(&running);
        if ok {
            used += kinds[a.kind].slices as u64;
            departures.push(Reverse(((a.t + a.life).to_bits(), n as u64, a.kind)));
        } else {
            running[a.kind] -= 1;
        }
        if n >= warmup {
            stats.record(a.kind, kinds[a.kind].slices, ok, free);
        }
    }
    stats.finish();
    stats
}

/// Replay with free repacking inside each GPU but no moves between GPUs: a request goes to the
/// GPU with the most used slices whose running requests plus it still fit on that GPU in some
/// arrangement. A reference for how much a placement policy could gain by arranging instances
/// within a GPU perfectly (it is not a bound: its GPU choice is a heuristic).
pub fn replay_in_gpu(
    oracle: &Oracle,
    kinds: &[Kind],
    stream: &[Arrival],
    warmup: usize,
    total_slices: u32,
) -> Stats {
    let mut stats = Stats::new("repack-in-gpu", kinds);
    let n_gpus = oracle.gpu_group.len();
    let mut per: Vec<Counts> = vec![vec![0; kinds.len()]; n_gpus];
    let mut used: u64 = 0;
    let mut departures: BinaryHeap<Reverse<(u64, u64, usize, usize)>> = BinaryHeap::new();
    for (n, a) in stream.iter().enumerate() {
        while let Some(Reverse((t, _, k, gpu))) = departures.peek().copied() {
            if f64::from_bits(t) > a.t {
                break;
            }
            departures.pop();
            per[gpu][k] -= 1;
            used -= kinds[k].slices as u64;
        }
        let free = (total_slices as u64).saturating_sub(used);
        let mut best: Option<(u64, usize)> = None;
        for (gpu, counts) in per.iter_mut().enumerate() {
            let group = &oracle.groups[oracle.gpu_group[gpu]];
            counts[a.kind] += 1;
            if group.feasible.contains(counts) {
                let slices: u64 = counts
                    .iter()
                    .zip(&group.size)
                    .map(|(c, s)| *c as u64 * s.unwrap_or(0) as u64)
                    .sum();
                if best.is_none_or(|(b, _)| slices > b) {
                    best = Some((slices, gpu));
                }
            }
            counts[a.kind] -= 1;
        }
        if let Some((_, gpu)) = best {
            per[gpu][a.kind] += 1;
            used += kinds[a.kind].slices as u64;
            departures.push(Reverse(((a.t + a.life).to_bits(), n as u64, a.kind, gpu)));
        }
        if n >= warmup {
            stats.record(a.kind, kinds[a.kind].slices, best.is_some(), free);
        }
    }
    stats.finish();
    stats
}
