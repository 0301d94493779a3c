//! Replays a request stream through migrun's own placement code over a simulated `MigState`; it must not decide placements itself.
//!
//! Each arrival calls `placement::choose` exactly as the allocator does, checks the choice with
//! `gpu::rules::fits` (the driver's rules) and adds the instance to the snapshot; departures
//! remove it. Nothing here ranks candidates, so the figures measure the product's policy.

use super::stream::{Arrival, Kind};
use super::BenchError;
use migrun::gpu::rules::{self, Occupant};
use migrun::gpu::{GpuInstance, MigState};
use migrun::policy::placement::{self, Policy};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Per-kind request counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KindStats {
    pub profile: String,
    pub requests: u64,
    pub accepted: u64,
}

/// What one policy did with one stream.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    pub policy: String,
    pub requests: u64,
    pub accepted: u64,
    pub requested_slices: u64,
    pub accepted_slices: u64,
    /// accepted / requests.
    pub acceptance: f64,
    /// accepted memory slices / requested memory slices.
    pub slice_acceptance: f64,
    /// Rejections while the machine had at least as many free memory slices as the request needed.
    pub fragmentation_rejections: u64,
    /// Mean wall time of one `placement::choose` call in microseconds (policies only; the oracle has none).
    pub choose_us: Option<f64>,
    pub per_profile: Vec<KindStats>,
}

impl Stats {
    pub fn new(policy: &str, kinds: &[Kind]) -> Stats {
        Stats {
            policy: policy.to_string(),
            per_profile: kinds
                .iter()
                .map(|k| KindStats {
                    profile: k.label.clone(),
                    ..KindStats::default()
                })
                .collect(),
            ..Stats::default()
        }
    }

    /// Count one request (only called past the warm-up).
    pub fn record(&mut self, kind: usize, slices: u32, accepted: bool, free_slices: u64) {
        self.requests += 1;
        self.requested_slices += slices as u64;
        self.per_profile[kind].requests += 1;
        if accepted {
            self.accepted += 1;
            self.accepted_slices += slices as u64;
            self.per_profile[kind].accepted += 1;
        } else if free_slices >= slices as u64 {
            self.fragmentation_rejections += 1;
        }
    }

    pub fn finish(&mut self) {
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        self.acceptance = ratio(self.accepted, self.requests);
        self.slice_acceptance = ratio(self.accepted_slices, self.requested_slices);
    }
}

/// A departure, ordered by time (positive f64 bit patterns order like the values).
type Departure = Reverse<(u64, u64, u32, u32)>;

/// Free memory slices on the GPUs that can take instances.
fn free_slices(state: &MigState) -> u64 {
    state
        .gpus
        .iter()
        .filter(|g| g.info.mig.is_some_and(|m| m.current))
        .map(|g| {
            let used: u32 = g.instances.iter().map(|i| i.placement.size).sum();
            g.slots().saturating_sub(used) as u64
        })
        .sum()
}

/// Refresh the `remaining` column of one GPU, so the snapshot reads as the driver would report it.
fn refresh_remaining(state: &mut MigState, gpu: usize) {
    let g = &mut state.gpus[gpu];
    let occ: Vec<Occupant> = g.instances.iter().map(Occupant::from).collect();
    rules::fill_remaining(&mut g.profiles, &occ);
}

/// Replay `stream` through `policy` starting from `initial`; the first `warmup` arrivals are not counted.
pub fn replay(
    initial: &MigState,
    kinds: &[Kind],
    stream: &[Arrival],
    warmup: usize,
    policy: Policy,
) -> Result<Stats, BenchError> {
    let name = match policy {
        Policy::Migrun => "migrun",
        Policy::FirstFit => "first-fit",
    };
    let mut stats = Stats::new(name, kinds);
    let mut state = initial.clone();
    let mut departures: BinaryHeap<Departure> = BinaryHeap::new();
    let mut next_id: u32 = 1;
    let mut choose_time = std::time::Duration::ZERO;
    for (n, a) in stream.iter().enumerate() {
        while let Some(Reverse((t, _, gpu, id))) = departures.peek().copied() {
            if f64::from_bits(t) > a.t {
                break;
            }
            departures.pop();
            let g = &mut state.gpus[gpu as usize];
            let pos = g
                .instances
                .iter()
                .position(|i| i.id == id)
                .expect("a departing instance is in the snapshot");
            g.instances.remove(pos);
            refresh_remaining(&mut state, gpu as usize);
        }
        let kind = &kinds[a.kind];
        let free = free_slices(&state);
        let started = std::time::Instant::now();
        let choice = placement::choose(&state, &kind.spec, None, policy);
        choose_time += started.elapsed();
        if let Some(c) = choice {
            let gi = state
                .gpus
                .iter()
                .position(|g| g.info.index == c.gpu)
                .ok_or_else(|| {
                    BenchError::Bug(format!("{name} chose GPU {} which does not exist", c.gpu))
                })?;
            let g = &mut state.gpus[gi];
            let occ: Vec<Occupant> = g.instances.iter().map(Occupant::from).collect();
            let legal = g
                .profile_by_id(c.profile_id)
                .is_some_and(|p| rules::fits(&g.profiles, &occ, p, &c.placement));
            if !legal {
                return Err(BenchError::Bug(format!(
                    "{name} chose profile {} at {} on GPU {}, which the MIG rules refuse",
                    c.profile_id, c.placement, c.gpu
                )));
            }
            let id = next_id;
            next_id = next_id.wrapping_add(1).max(1);
            g.instances.push(GpuInstance {
                id,
                profile_id: c.profile_id,
                placement: c.placement,
                compute_instances: Vec::new(),
                processes: 0,
            });
            refresh_remaining(&mut state, gi);
            let end = a.t + a.life;
            departures.push(Reverse((end.to_bits(), n as u64, gi as u32, id)));
        }
        if n >= warmup {
            stats.record(a.kind, kind.slices, choice.is_some(), free);
        }
    }
    stats.finish();
    stats.choose_us = Some(choose_time.as_secs_f64() * 1e6 / stream.len().max(1) as f64);
    Ok(stats)
}
