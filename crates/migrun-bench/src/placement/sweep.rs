//! The placement sweep: every mix at every load over paired seeds, with means and 95% confidence intervals of the paired differences; it must not place anything itself.

use super::oracle::Oracle;
use super::replay::Stats;
use super::stream::{self, Generated, Mix};
use super::{generated_kinds, run_stream, BenchError};
use migrun::gpu::sim::SimSpec;
use migrun::gpu::MigState;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// What to sweep.
#[derive(Debug, Clone)]
pub struct SweepSpec {
    pub mixes: Vec<Mix>,
    pub loads: Vec<f64>,
    /// Seeds 1..=seeds.
    pub seeds: u64,
    pub arrivals: usize,
    pub threads: Option<usize>,
}

/// Mean and 95% confidence half-width.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Estimate {
    pub mean: f64,
    pub ci95: f64,
    pub min: f64,
    pub max: f64,
}

/// Two-sided 97.5% quantile of Student's t with `df` degrees of freedom (Cornish-Fisher
/// expansion around the normal quantile; within 0.002 of the table for df >= 3).
pub fn t975(df: u64) -> f64 {
    let z: f64 = 1.959_963_985;
    let v = df.max(1) as f64;
    let (z3, z5, z7, z9) = (z.powi(3), z.powi(5), z.powi(7), z.powi(9));
    z + (z3 + z) / (4.0 * v)
        + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * v * v)
        + (3.0 * z7 + 19.0 * z5 + 17.0 * z3 - 15.0 * z) / (384.0 * v.powi(3))
        + (79.0 * z9 + 776.0 * z7 + 1482.0 * z5 - 1920.0 * z3 - 945.0 * z) / (92160.0 * v.powi(4))
}

/// Mean, t-based 95% CI half-width, min and max of `xs` (at least 2 values).
pub fn estimate(xs: &[f64]) -> Estimate {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    Estimate {
        mean,
        ci95: t975(xs.len() as u64 - 1) * (var / n).sqrt(),
        min: xs.iter().copied().fold(f64::INFINITY, f64::min),
        max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}

/// Means of one policy in one cell.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PolicyMeans {
    pub acceptance: f64,
    pub slice_acceptance: f64,
    pub fragmentation_rejections: f64,
}

/// One (mix, load) cell.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Cell {
    pub mix: String,
    pub load: f64,
    pub migrun: PolicyMeans,
    pub first_fit: PolicyMeans,
    pub oracle: PolicyMeans,
    /// Reference: free rearrangement inside each GPU, no moves between GPUs.
    pub repack_in_gpu: PolicyMeans,
    /// migrun - first-fit, count acceptance, paired by seed (fractions, not points).
    pub diff_count: Estimate,
    /// migrun - first-fit, slice-weighted acceptance, paired by seed.
    pub diff_slices: Estimate,
    /// oracle - first-fit, slice-weighted acceptance, paired by seed.
    pub oracle_gap_slices: Estimate,
    /// repack-in-gpu - first-fit, slice-weighted acceptance, paired by seed.
    pub in_gpu_gap_slices: Estimate,
}

/// The whole sweep.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SweepReport {
    pub gpus: String,
    pub seeds: u64,
    pub arrivals: usize,
    pub warmup: usize,
    pub cells: Vec<Cell>,
}

fn means(runs: &[&Stats]) -> PolicyMeans {
    let n = runs.len() as f64;
    PolicyMeans {
        acceptance: runs.iter().map(|s| s.acceptance).sum::<f64>() / n,
        slice_acceptance: runs.iter().map(|s| s.slice_acceptance).sum::<f64>() / n,
        fragmentation_rejections: runs
            .iter()
            .map(|s| s.fragmentation_rejections as f64)
            .sum::<f64>()
            / n,
    }
}

/// Run the sweep on as many threads as allowed; every (mix, load, seed) is one job.
pub fn run(
    state: &MigState,
    gpus: &SimSpec,
    spec: &SweepSpec,
    warmup: usize,
) -> Result<SweepReport, BenchError> {
    let classes = stream::class_kinds(state)?;
    let kinds = generated_kinds(state)?;
    let total = stream::total_slices(state);
    let cells: Vec<(Mix, f64)> = spec
        .mixes
        .iter()
        .flat_map(|&m| spec.loads.iter().map(move |&l| (m, l)))
        .collect();
    let jobs: Vec<(usize, u64)> = (0..cells.len())
        .flat_map(|c| (1..=spec.seeds).map(move |s| (c, s)))
        .collect();
    let threads = spec
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .min(jobs.len())
        .max(1);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Vec<Stats>>>> = Mutex::new(vec![None; jobs.len()]);
    let failure: Mutex<Option<BenchError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                // One oracle per thread: its memo is keyed by absolute counts, so it carries over between jobs.
                let mut oracle = Oracle::new(state, &kinds);
                loop {
                    let j = next.fetch_add(1, Ordering::Relaxed);
                    if j >= jobs.len() || failure.lock().expect("lock").is_some() {
                        break;
                    }
                    let (c, seed) = jobs[j];
                    let (mix, load) = cells[c];
                    let gen = Generated {
                        mix,
                        load,
                        seed,
                        arrivals: spec.arrivals,
                    };
                    let out = stream::generate(&gen, &classes, total).and_then(|arrivals| {
                        run_stream(state, &kinds, &arrivals, warmup, &mut oracle)
                    });
                    match out {
                        Ok(stats) => results.lock().expect("lock")[j] = Some(stats),
                        Err(e) => {
                            *failure.lock().expect("lock") = Some(e);
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().expect("lock") {
        return Err(e);
    }
    let results = results.into_inner().expect("lock");
    let mut out = Vec::new();
    for (c, (mix, load)) in cells.iter().enumerate() {
        let runs: Vec<&Vec<Stats>> = jobs
            .iter()
            .zip(&results)
            .filter(|((jc, _), _)| *jc == c)
            .map(|(_, r)| r.as_ref().expect("every job ran"))
            .collect();
        let pick = |i: usize| runs.iter().map(|r| &r[i]).collect::<Vec<_>>();
        let (mg, ff, or, ig) = (pick(0), pick(1), pick(2), pick(3));
        let paired = |a: &[&Stats], b: &[&Stats], f: fn(&Stats) -> f64| {
            let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| f(x) - f(y)).collect();
            estimate(&d)
        };
        out.push(Cell {
            mix: mix.label().to_string(),
            load: *load,
            migrun: means(&mg),
            first_fit: means(&ff),
            oracle: means(&or),
            repack_in_gpu: means(&ig),
            diff_count: paired(&mg, &ff, |s| s.acceptance),
            diff_slices: paired(&mg, &ff, |s| s.slice_acceptance),
            oracle_gap_slices: paired(&or, &ff, |s| s.slice_acceptance),
            in_gpu_gap_slices: paired(&ig, &ff, |s| s.slice_acceptance),
        });
    }
    Ok(SweepReport {
        gpus: gpus.to_string(),
        seeds: spec.seeds,
        arrivals: spec.arrivals,
        warmup,
        cells: out,
    })
}

/// Percentage points with one decimal.
fn pts(x: f64) -> String {
    format!("{:+.2}", 100.0 * x)
}

/// The sweep as tables (acceptance in %, differences in percentage points).
pub fn table(r: &SweepReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "placement sweep on {}: {} paired seeds per cell, {} arrivals per stream ({} warm-up not counted)",
        r.gpus, r.seeds, r.arrivals, r.warmup
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "Mean acceptance, count / slice-weighted (%):");
    let _ = writeln!(
        s,
        "| mix | load | first-fit | migrun | oracle (bound) | repack-in-gpu (reference) |\n|---|---|---|---|---|---|"
    );
    for c in &r.cells {
        let f = |p: &PolicyMeans| {
            format!(
                "{:.2} / {:.2}",
                100.0 * p.acceptance,
                100.0 * p.slice_acceptance
            )
        };
        let _ = writeln!(
            s,
            "| {} | {:.2} | {} | {} | {} | {} |",
            c.mix,
            c.load,
            f(&c.first_fit),
            f(&c.migrun),
            f(&c.oracle),
            f(&c.repack_in_gpu)
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Paired difference migrun - first-fit, percentage points: mean ± 95% CI [min, max over seeds]:"
    );
    let _ = writeln!(
        s,
        "| mix | load | count | slice-weighted | oracle - first-fit (slices) | repack-in-gpu - first-fit (slices) | fragmentation rejections ff → migrun |\n|---|---|---|---|---|---|---|"
    );
    for c in &r.cells {
        let e = |e: &Estimate| {
            format!(
                "{} ± {:.2} [{}, {}]",
                pts(e.mean),
                100.0 * e.ci95,
                pts(e.min),
                pts(e.max)
            )
        };
        let _ = writeln!(
            s,
            "| {} | {:.2} | {} | {} | {} ± {:.2} | {} ± {:.2} | {:.1} → {:.1} |",
            c.mix,
            c.load,
            e(&c.diff_count),
            e(&c.diff_slices),
            pts(c.oracle_gap_slices.mean),
            100.0 * c.oracle_gap_slices.ci95,
            pts(c.in_gpu_gap_slices.mean),
            100.0 * c.in_gpu_gap_slices.ci95,
            c.first_fit.fragmentation_rejections,
            c.migrun.fragmentation_rejections
        );
    }
    s
}
