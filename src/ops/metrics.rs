//! `migrun metrics`: leases, free instances, memory slices, allocations by result, waits and gc's work in the
//! Prometheus text format, encoded by the official `prometheus-client` crate; it reads a device snapshot, the
//! lease records and the counters file, and must not change anything.
//!
//! Each figure and its meaning is in docs/operations.md. Gauges come from the device and the lease records at
//! the moment of the call; counters from the state dir's `counters.json`, which the allocator bumps under the
//! allocation lock (`alloc::account`).

use crate::gpu::MigState;
use crate::lease::counters::Counters;
use crate::lease::{Lease, LeaseState};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use std::collections::BTreeMap;

/// Allocation results always exported (zero until they happen), so `rate()` sees every series from the start.
pub const RESULTS: &[&str] = &[
    "created",
    "reused",
    "no_room",
    "refused_policy",
    "unsatisfiable",
    "failed",
];
/// gc actions always exported.
pub const GC_ACTIONS: &[&str] = &["destroyed", "drained", "repaired"];

/// Everything one exposition shows, gathered at one moment (under the allocation lock by the callers).
#[derive(Debug, Clone)]
pub struct Figures {
    /// `(gpu, profile, uid, state)` -> leases.
    pub leases: BTreeMap<(u32, String, u32, &'static str), u64>,
    /// `(gpu, profile)` -> instances of that profile that can still be created (`-lgip`'s Free).
    pub free_instances: BTreeMap<(u32, String), u64>,
    /// gpu -> (memory slices free, memory slices used by instances).
    pub slices: BTreeMap<u32, (u64, u64)>,
    pub counters: Counters,
}

impl Figures {
    /// The figures of a device snapshot, its lease records and the counters.
    pub fn gather(state: &MigState, leases: &[Lease], counters: Counters) -> Figures {
        let mut f = Figures {
            leases: BTreeMap::new(),
            free_instances: BTreeMap::new(),
            slices: BTreeMap::new(),
            counters,
        };
        for l in leases {
            let st = match l.state {
                LeaseState::Active => "active",
                LeaseState::Draining => "draining",
            };
            *f.leases
                .entry((l.gpu_index, l.profile.clone(), l.uid, st))
                .or_default() += 1;
        }
        for g in &state.gpus {
            // A GPU with MIG off has no slices to hand out; one that is not MIG-capable has none at all.
            if !g.info.mig.is_some_and(|m| m.current) {
                continue;
            }
            for p in &g.profiles {
                f.free_instances.insert(
                    (g.info.index, p.short_name().to_string()),
                    p.remaining.into(),
                );
            }
            let used: u64 = g
                .instances
                .iter()
                .map(|i| u64::from(i.placement.size))
                .sum();
            let total = u64::from(g.slots());
            f.slices
                .insert(g.info.index, (total.saturating_sub(used), used));
        }
        f
    }

    /// The exposition in the Prometheus text format (0.0.4), as node-exporter's textfile collector parses it.
    ///
    /// `prometheus-client` encodes OpenMetrics, where a counter family `x` has the sample `x_total` and the
    /// text ends with `# EOF`. The classic text format names the family by its sample: read as OpenMetrics,
    /// node-exporter took `migrun_allocations_total` for an untyped metric of its own, without help. So the
    /// counters' `# HELP`/`# TYPE` lines get the `_total` name and `# EOF` goes; samples are unchanged.
    pub fn render(&self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut open_metrics = String::new();
        // Writing into a String cannot fail; the encoder's own errors are fmt::Error only.
        let _ = prometheus_client::encoding::text::encode(&mut open_metrics, &registry);
        classic_text(&open_metrics)
    }
}

/// OpenMetrics text -> the classic text format: counter families named `<name>_total`, no `# EOF`.
fn classic_text(om: &str) -> String {
    let counters: Vec<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len() + 64);
    for line in om.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

/// A gauge value for `encode_gauge` (i64, as the crate encodes integers).
fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for Figures {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = enc.encode_descriptor(
            "migrun_leases",
            "Leases held, by GPU index, profile, uid and state (active, or draining: released but the instance is still busy)",
            None,
            MetricType::Gauge,
        )?;
        for ((gpu, profile, uid, state), n) in &self.leases {
            let labels = [
                ("gpu", s(gpu)),
                ("profile", profile.clone()),
                ("uid", s(uid)),
                ("state", s(state)),
            ];
            m.encode_family(&labels)?.encode_gauge(&gauge(*n))?;
        }

        let mut m = enc.encode_descriptor(
            "migrun_instances_free",
            "Instances of a profile that can still be created on a GPU now (nvidia-smi mig -lgip's Free)",
            None,
            MetricType::Gauge,
        )?;
        for ((gpu, profile), n) in &self.free_instances {
            let labels = [("gpu", s(gpu)), ("profile", profile.clone())];
            m.encode_family(&labels)?.encode_gauge(&gauge(*n))?;
        }

        let mut m = enc.encode_descriptor(
            "migrun_memory_slices",
            "Memory slices of a GPU with MIG on, free or used by an instance (leased, kept warm or not migrun's)",
            None,
            MetricType::Gauge,
        )?;
        for (gpu, (free, used)) in &self.slices {
            for (state, n) in [("free", free), ("used", used)] {
                let labels = [("gpu", s(gpu)), ("state", s(state))];
                m.encode_family(&labels)?.encode_gauge(&gauge(*n))?;
            }
        }

        let mut m = enc.encode_descriptor(
            "migrun_allocations",
            "Allocation requests by result: created, reused, no_room, refused_policy, unsatisfiable, failed",
            None,
            MetricType::Counter,
        )?;
        for r in RESULTS {
            let n = self.counters.allocations.get(*r).copied().unwrap_or(0);
            let labels = [("result", *r)];
            m.encode_family(&labels)?
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&n, None)?;
        }

        let m = enc.encode_descriptor(
            "migrun_wait_seconds",
            "Time requests spent in the --wait queue, until granted or given up",
            None,
            MetricType::Histogram,
        )?;
        let buckets: Vec<(f64, u64)> = self
            .counters
            .wait_histogram()
            .into_iter()
            .map(|(b, n)| (if b.is_finite() { b } else { f64::MAX }, n))
            .collect();
        let mut m = m;
        m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.counters.wait_sum_s,
            self.counters.wait_count,
            &buckets,
            None,
        )?;

        let mut m = enc.encode_descriptor(
            "migrun_gc_instances",
            "Instances gc took care of: destroyed (a dead holder's lease), drained (a draining lease's instance, once idle), repaired (left by an interrupted allocation)",
            None,
            MetricType::Counter,
        )?;
        for a in GC_ACTIONS {
            let n = self.counters.gc.get(*a).copied().unwrap_or(0);
            let labels = [("action", *a)];
            m.encode_family(&labels)?
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&n, None)?;
        }

        let m = enc.encode_descriptor(
            "migrun_ledger_write_errors",
            "Usage-ledger lines that could not be written (disk full, bad path): usage reports miss them",
            None,
            MetricType::Counter,
        )?;
        let mut m = m;
        m.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
            &self.counters.ledger_write_errors,
            None,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::sim::SimMachine;
    use crate::gpu::GpuState;

    #[test]
    fn exposition_has_every_family() {
        let mut m = SimMachine::new(&"h100-80gb:2".parse().unwrap());
        m.create_gi(0, 9, 0).unwrap();
        let state = MigState {
            gpus: (0..2)
                .map(|i| GpuState {
                    info: m.gpu_infos().remove(i),
                    profiles: m.profiles(i as u32).unwrap(),
                    instances: m.instances(i as u32).unwrap(),
                })
                .collect(),
        };
        let mut c = Counters::default();
        c.bump_allocation("created");
        c.observe_wait(3.0);
        let text = Figures::gather(&state, &[], c).render();
        assert!(
            text.contains("migrun_memory_slices{gpu=\"0\",state=\"used\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("migrun_memory_slices{gpu=\"1\",state=\"free\"} 8"),
            "{text}"
        );
        assert!(
            text.contains("migrun_allocations_total{result=\"created\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("migrun_allocations_total{result=\"no_room\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("migrun_wait_seconds_bucket{le=\"5.0\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("migrun_instances_free{gpu=\"0\",profile=\"3g.40gb\"} 1"),
            "{text}"
        );
    }
}
