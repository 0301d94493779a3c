//! The placement benchmark (issue 7): replays request streams through migrun's placement code over simulated GPUs; it must not change the product's behaviour.
//!
//! `placement-bench` (src/bin/placement-bench.rs) only parses flags and calls [`run`]. A stream is
//! either generated ([`stream::generate`]: Poisson arrivals, exponential lifetimes) or read from a
//! JSON-lines trace. Every stream is replayed three times: through `placement::choose` with
//! `Policy::Migrun` and with `Policy::FirstFit` ([`replay`]), and through the exact repacking
//! bound ([`oracle`]). [`sweep`] repeats that over seeds, mixes and loads.

pub mod args;
pub mod oracle;
pub mod replay;
pub mod stream;
pub mod sweep;

pub use args::Args;

use migrun::gpu::sim::{SimMachine, SimSpec};
use migrun::gpu::{GpuState, MigState};
use migrun::policy::placement::Policy;
use replay::Stats;
use std::fmt::Write as _;
use std::path::PathBuf;
use stream::{Generated, Kind, Mix};

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Input(String),
    /// A policy broke the MIG rules: a bug in migrun, never bad input.
    #[error("bug: {0}")]
    Bug(String),
}

impl BenchError {
    /// Exit code (see `migrun::exit`).
    pub fn exit_code(&self) -> i32 {
        match self {
            BenchError::Input(_) => migrun::exit::USAGE,
            BenchError::Bug(_) => migrun::exit::FAILED,
        }
    }
}

/// What to run, validated.
#[derive(Debug, Clone)]
pub enum Mode {
    Generated(Generated),
    Trace(PathBuf),
    Sweep(sweep::SweepSpec),
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub gpus: SimSpec,
    pub mode: Mode,
    pub warmup: usize,
    pub json: bool,
}

fn check_load(l: f64) -> Result<f64, BenchError> {
    if l.is_finite() && l > 0.0 && l <= 100.0 {
        Ok(l)
    } else {
        Err(BenchError::Input(format!(
            "load {l} is out of range: give a fraction of all memory slices above 0, e.g. 0.9"
        )))
    }
}

impl Config {
    pub fn from_args(a: &Args) -> Result<Config, BenchError> {
        let gpus: SimSpec = a
            .gpus
            .parse()
            .map_err(|e: migrun::gpu::sim::SpecError| BenchError::Input(format!("--gpus: {e}")))?;
        if a.arrivals == 0 {
            return Err(BenchError::Input(
                "--arrivals must be at least 1".to_string(),
            ));
        }
        let default_warmup = a.arrivals / 10;
        let mode = if let Some(path) = &a.trace {
            if a.sweep || a.mix.is_some() || a.load.is_some() {
                return Err(BenchError::Input(
                    "--trace replays a file: drop --mix, --load and --sweep".into(),
                ));
            }
            Mode::Trace(path.clone())
        } else if a.sweep {
            if a.mix.is_some() || a.load.is_some() {
                return Err(BenchError::Input(
                    "--sweep takes --mixes and --loads (lists), not --mix and --load".into(),
                ));
            }
            if a.seeds < 2 {
                return Err(BenchError::Input(
                    "--seeds must be at least 2 for a confidence interval".into(),
                ));
            }
            let mixes = a
                .mixes
                .iter()
                .map(|m| m.parse::<Mix>())
                .collect::<Result<Vec<_>, _>>()?;
            let loads = a
                .loads
                .iter()
                .map(|&l| check_load(l))
                .collect::<Result<Vec<_>, _>>()?;
            if mixes.is_empty() || loads.is_empty() {
                return Err(BenchError::Input(
                    "--sweep needs at least one mix and one load".into(),
                ));
            }
            if a.threads == Some(0) {
                return Err(BenchError::Input("--threads must be at least 1".into()));
            }
            Mode::Sweep(sweep::SweepSpec {
                mixes,
                loads,
                seeds: a.seeds,
                arrivals: a.arrivals,
                threads: a.threads,
            })
        } else {
            let (Some(mix), Some(load)) = (&a.mix, a.load) else {
                return Err(BenchError::Input(
                    "say what to replay: --mix MIX --load L (generated), --trace FILE, or --sweep"
                        .into(),
                ));
            };
            Mode::Generated(Generated {
                mix: mix.parse()?,
                load: check_load(load)?,
                seed: a.seed,
                arrivals: a.arrivals,
            })
        };
        let warmup = match (&mode, a.warmup) {
            (_, Some(w)) => w,
            (Mode::Trace(_), None) => 0,
            _ => default_warmup,
        };
        if !matches!(mode, Mode::Trace(_)) && warmup >= a.arrivals {
            return Err(BenchError::Input(format!(
                "--warmup {warmup} leaves nothing to count out of --arrivals {}",
                a.arrivals
            )));
        }
        Ok(Config {
            gpus,
            mode,
            warmup,
            json: a.json,
        })
    }
}

/// The snapshot of a fresh simulated machine, as `gpu::Backend::snapshot` would read it.
pub fn fresh_state(spec: &SimSpec) -> MigState {
    let m = SimMachine::new(spec);
    let gpus = m
        .gpu_infos()
        .into_iter()
        .map(|info| {
            let profiles = m.profiles(info.index).unwrap_or_default();
            GpuState {
                info,
                profiles,
                instances: Vec::new(),
            }
        })
        .collect();
    MigState { gpus }
}

/// The policies over one stream: migrun, first-fit, oracle, repack-in-gpu (in that order).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    pub gpus: String,
    pub source: String,
    pub requests: usize,
    pub warmup: usize,
    pub policies: Vec<Stats>,
}

/// Replay one stream through migrun, first-fit, the oracle and the repack-in-gpu reference.
pub fn run_stream(
    state: &MigState,
    kinds: &[Kind],
    stream: &[stream::Arrival],
    warmup: usize,
    oracle: &mut oracle::Oracle,
) -> Result<Vec<Stats>, BenchError> {
    let total = stream::total_slices(state);
    Ok(vec![
        replay::replay(state, kinds, stream, warmup, Policy::Migrun)?,
        replay::replay(state, kinds, stream, warmup, Policy::FirstFit)?,
        oracle::replay(oracle, kinds, stream, warmup, total),
        oracle::replay_in_gpu(oracle, kinds, stream, warmup, total),
    ])
}

/// Kinds of a generated stream: the classes the machine has (absent ones are never drawn).
pub fn generated_kinds(state: &MigState) -> Result<Vec<Kind>, BenchError> {
    let classes = stream::class_kinds(state)?;
    // Absent classes keep a placeholder so that kind indices stay class indices; they are never drawn.
    Ok(classes
        .iter()
        .zip(stream::Class::ALL)
        .map(|(k, c)| {
            k.clone().unwrap_or(Kind {
                label: format!("{} (absent)", c.label()),
                spec: migrun::profile::ProfileSpec::Id(u32::MAX),
                slices: 0,
            })
        })
        .collect())
}

/// Run what `config` says and return the text to print.
pub fn run(config: &Config) -> Result<String, BenchError> {
    let state = fresh_state(&config.gpus);
    if stream::total_slices(&state) == 0 {
        return Err(BenchError::Input(format!(
            "--gpus {}: no GPU has MIG on, so nothing can be placed; drop :mig-off",
            config.gpus
        )));
    }
    match &config.mode {
        Mode::Sweep(spec) => {
            let report = sweep::run(&state, &config.gpus, spec, config.warmup)?;
            Ok(if config.json {
                serde_json::to_string_pretty(&report).expect("report serialises") + "\n"
            } else {
                sweep::table(&report)
            })
        }
        Mode::Generated(gen) => {
            let classes = stream::class_kinds(&state)?;
            let kinds = generated_kinds(&state)?;
            let arrivals = stream::generate(gen, &classes, stream::total_slices(&state))?;
            let mut oracle = oracle::Oracle::new(&state, &kinds);
            let policies = run_stream(&state, &kinds, &arrivals, config.warmup, &mut oracle)?;
            let report = RunReport {
                gpus: config.gpus.to_string(),
                source: format!(
                    "mix {} load {} seed {} arrivals {}",
                    gen.mix.label(),
                    gen.load,
                    gen.seed,
                    gen.arrivals
                ),
                requests: arrivals.len(),
                warmup: config.warmup,
                policies,
            };
            Ok(render(&report, config.json))
        }
        Mode::Trace(path) => {
            let (kinds, arrivals) = stream::read_trace(path, &state)?;
            if config.warmup >= arrivals.len() {
                return Err(BenchError::Input(format!(
                    "--warmup {} leaves nothing to count: the trace has {} requests",
                    config.warmup,
                    arrivals.len()
                )));
            }
            let mut oracle = oracle::Oracle::new(&state, &kinds);
            let policies = run_stream(&state, &kinds, &arrivals, config.warmup, &mut oracle)?;
            let report = RunReport {
                gpus: config.gpus.to_string(),
                source: format!("trace {}", path.display()),
                requests: arrivals.len(),
                warmup: config.warmup,
                policies,
            };
            Ok(render(&report, config.json))
        }
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// JSON or a table of one run.
pub fn render(report: &RunReport, json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(report).expect("report serialises") + "\n";
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "placement-bench: {} on {}; {} requests, first {} not counted",
        report.source, report.gpus, report.requests, report.warmup
    );
    let _ = writeln!(
        s,
        "{:<14} {:>9} {:>9} {:>10} {:>10} {:>16} {:>11}",
        "policy", "requests", "accepted", "count-acc", "slice-acc", "frag-rejections", "us/choose"
    );
    for p in &report.policies {
        let _ = writeln!(
            s,
            "{:<14} {:>9} {:>9} {:>10} {:>10} {:>16} {:>11}",
            p.policy,
            p.requests,
            p.accepted,
            pct(p.acceptance),
            pct(p.slice_acceptance),
            p.fragmentation_rejections,
            p.choose_us.map_or("-".to_string(), |us| format!("{us:.1}"))
        );
    }
    let _ = writeln!(s, "accepted per profile (accepted/requests):");
    let _ = write!(s, "{:<14}", "policy");
    let shown: Vec<usize> = (0..report.policies[0].per_profile.len())
        .filter(|&k| report.policies[0].per_profile[k].requests > 0)
        .collect();
    for &k in &shown {
        let _ = write!(s, " {:>13}", report.policies[0].per_profile[k].profile);
    }
    let _ = writeln!(s);
    for p in &report.policies {
        let _ = write!(s, "{:<14}", p.policy);
        for &k in &shown {
            let ks = &p.per_profile[k];
            let _ = write!(s, " {:>13}", format!("{}/{}", ks.accepted, ks.requests));
        }
        let _ = writeln!(s);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::io::Write as _;

    fn args(line: &str) -> Args {
        Args::try_parse_from(std::iter::once("placement-bench").chain(line.split_whitespace()))
            .unwrap()
    }

    fn config(line: &str) -> Result<Config, BenchError> {
        Config::from_args(&args(line))
    }

    fn sample_trace() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/traces/sample.jsonl")
    }

    fn h100(n: u32) -> MigState {
        fresh_state(&format!("h100-80gb:{n}").parse().unwrap())
    }

    #[test]
    fn replays_the_sample_trace() {
        let state = h100(1);
        let (kinds, arrivals) = stream::read_trace(&sample_trace(), &state).unwrap();
        assert_eq!(arrivals.len(), 60);
        // `9` stays its own kind (handed to the policy as an ID); `MIG 1g.10gb` is 1g.10gb.
        let labels: Vec<&str> = kinds.iter().map(|k| k.label.as_str()).collect();
        assert!(labels.contains(&"9=3g.40gb"), "{labels:?}");
        assert_eq!(
            labels.iter().filter(|l| l.starts_with("1g.10gb")).count(),
            1
        );
        let mut oracle = oracle::Oracle::new(&state, &kinds);
        let stats = run_stream(&state, &kinds, &arrivals, 0, &mut oracle).unwrap();
        let [mg, ff, or, ig] = [&stats[0], &stats[1], &stats[2], &stats[3]];
        assert_eq!(
            [mg.policy.as_str(), &ff.policy, &or.policy, &ig.policy],
            ["migrun", "first-fit", "oracle", "repack-in-gpu"]
        );
        for s in &stats {
            assert_eq!(s.requests, 60);
            assert_eq!(s.requested_slices, mg.requested_slices);
            assert!(s.accepted <= s.requests && s.accepted_slices <= s.requested_slices);
            let per: u64 = s.per_profile.iter().map(|k| k.accepted).sum();
            assert_eq!(per, s.accepted);
        }
        // The trace opens with the guide's order (all four fit) and then a 3g followed by a
        // 4g on an idle GPU, which first-fit cannot place (its 3g takes slices 0-3).
        let four = kinds.iter().position(|k| k.label == "4g.40gb").unwrap();
        assert!(mg.per_profile[four].accepted > ff.per_profile[four].accepted);
        assert!(mg.accepted_slices > ff.accepted_slices);
        assert!(or.accepted_slices >= mg.accepted_slices);
        // The same through the command-line entry point, as JSON.
        let out = run(&config(&format!(
            "--gpus h100-80gb:1 --trace {} --json",
            sample_trace().display()
        ))
        .unwrap())
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["policies"][0]["accepted"], mg.accepted);
        assert_eq!(
            v["policies"][1]["fragmentation_rejections"],
            ff.fragmentation_rejections
        );
    }

    #[test]
    fn bad_traces_are_refused_with_the_line() {
        let state = h100(1);
        let cases = [
            ("{\"t\": 0.1, \"profile\": \"3g.40gb\"}\n", "line 1"),
            ("{\"t\": 1, \"profile\": \"3g.40gb\", \"life\": 1}\n{\"t\": 0.5, \"profile\": \"3g.40gb\", \"life\": 1}\n", "line 2: t = 0.5 is earlier"),
            ("{\"t\": 0, \"profile\": \"5g.50gb\", \"life\": 1}\n", "exists on no simulated GPU"),
            ("{\"t\": 0, \"profile\": \"3g.40gb\", \"life\": 0}\n", "life = 0"),
            ("{\"t\": 0, \"profile\": \"three\", \"life\": 1}\n", "bad profile"),
            ("\n", "has no requests"),
        ];
        for (text, want) in cases {
            let mut f = tempfile::NamedTempFile::new().unwrap();
            f.write_all(text.as_bytes()).unwrap();
            let e = stream::read_trace(f.path(), &state).unwrap_err();
            assert!(e.to_string().contains(want), "{text:?}: {e}");
            assert_eq!(e.exit_code(), migrun::exit::USAGE);
        }
        let e = stream::read_trace(Path::new("/nonexistent/trace.jsonl"), &state).unwrap_err();
        assert!(e.to_string().contains("cannot read trace"), "{e}");
    }

    use std::path::Path;

    #[test]
    fn oracle_knows_what_fits() {
        let state = h100(1);
        let names = [
            "1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb",
        ];
        let kinds: Vec<Kind> = names
            .iter()
            .map(|n| Kind {
                label: n.to_string(),
                spec: n.parse().unwrap(),
                slices: 0,
            })
            .collect();
        let mut one = oracle::Oracle::new(&state, &kinds);
        // counts of [1g, 1g.20gb, 2g, 3g, 4g, 7g]
        let table: &[([u16; 6], bool)] = &[
            ([7, 0, 0, 0, 0, 0], true),
            ([8, 0, 0, 0, 0, 0], false),
            ([2, 0, 1, 1, 0, 0], true),
            ([0, 0, 0, 1, 1, 0], true),
            ([0, 0, 0, 2, 0, 0], true),
            ([0, 0, 0, 0, 2, 0], false),
            ([0, 4, 0, 0, 0, 0], true),
            ([0, 1, 3, 0, 0, 0], true),
            ([1, 0, 3, 0, 0, 0], true),
            ([2, 0, 3, 0, 0, 0], false), // no 1g placement reaches the last slice
            ([3, 0, 0, 0, 1, 0], true),
            ([4, 0, 0, 0, 1, 0], false),
            ([0, 0, 0, 0, 0, 1], true),
            ([1, 0, 0, 0, 0, 1], false),
        ];
        for (counts, fits) in table {
            assert_eq!(one.fits(counts), *fits, "{counts:?} on one H100");
        }
        let mut two = oracle::Oracle::new(&h100(2), &kinds);
        let table: &[([u16; 6], bool)] = &[
            ([0, 0, 0, 0, 0, 2], true),
            ([1, 0, 0, 0, 0, 2], false),
            ([0, 0, 0, 2, 2, 0], true),
            ([0, 0, 0, 1, 3, 0], false),
            ([0, 0, 0, 3, 0, 1], false),
            ([3, 0, 0, 1, 0, 1], true),
            ([14, 0, 0, 0, 0, 0], true),
            ([1, 1, 3, 1, 1, 0], false),
            ([0, 1, 3, 1, 1, 0], true),
            ([4, 0, 2, 1, 0, 0], true),
            ([7, 0, 0, 0, 0, 1], true),
            ([8, 0, 0, 0, 0, 1], false),
        ];
        for (counts, fits) in table {
            assert_eq!(two.fits(counts), *fits, "{counts:?} on two H100s");
        }
        // Against brute force: M fits two GPUs iff some split A + (M - A) fits one GPU each.
        let mut x: u64 = 12345;
        for _ in 0..300 {
            let m: Vec<u16> = (0..6)
                .map(|k| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((x >> 33) % [5, 3, 3, 3, 2, 2][k]) as u16
                })
                .collect();
            let mut brute = false;
            let mut a = vec![0u16; 6];
            'split: loop {
                let rest: Vec<u16> = m.iter().zip(&a).map(|(x, y)| x - y).collect();
                if one.fits(&a) && one.fits(&rest) {
                    brute = true;
                    break;
                }
                for k in 0..6 {
                    if a[k] < m[k] {
                        a[k] += 1;
                        continue 'split;
                    }
                    a[k] = 0;
                }
                break;
            }
            assert_eq!(two.fits(&m), brute, "{m:?}");
        }
    }

    #[test]
    fn generated_streams_are_reproducible_and_at_the_asked_load() {
        let state = h100(8);
        let classes = stream::class_kinds(&state).unwrap();
        let labels: Vec<String> = classes
            .iter()
            .map(|k| k.as_ref().unwrap().label.clone())
            .collect();
        assert_eq!(
            labels,
            ["1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"]
        );
        let gen = Generated {
            mix: Mix::SmallHeavy,
            load: 0.9,
            seed: 5,
            arrivals: 20_000,
        };
        let a = stream::generate(&gen, &classes, 64).unwrap();
        assert_eq!(a, stream::generate(&gen, &classes, 64).unwrap());
        assert_ne!(
            a,
            stream::generate(&Generated { seed: 6, ..gen }, &classes, 64).unwrap()
        );
        // rate = 0.9 * 64 / (25 / 11.5) slices per unit of time, lifetimes of mean 1.
        let rate = a.len() as f64 / a.last().unwrap().t;
        assert!(
            (rate / (0.9 * 64.0 * 11.5 / 25.0) - 1.0).abs() < 0.03,
            "rate {rate}"
        );
        let life = a.iter().map(|x| x.life).sum::<f64>() / a.len() as f64;
        assert!((life - 1.0).abs() < 0.03, "mean life {life}");
        let ones = a.iter().filter(|x| x.kind == 0).count() as f64 / a.len() as f64;
        assert!((ones - 5.0 / 11.5).abs() < 0.02, "1g share {ones}");
        assert!(a.windows(2).all(|w| w[0].t <= w[1].t));
    }

    #[test]
    fn classes_resolve_per_model() {
        // A30 has no 1g double-memory, 3g or 7g profile: those classes are absent, never guessed.
        let a30 = fresh_state(&"a30-24gb:2".parse().unwrap());
        let got: Vec<Option<String>> = stream::class_kinds(&a30)
            .unwrap()
            .into_iter()
            .map(|k| k.map(|k| k.label))
            .collect();
        let want = [
            Some("1g.6gb"),
            None,
            Some("2g.12gb"),
            None,
            Some("4g.24gb"),
            None,
        ];
        assert_eq!(got, want.map(|w| w.map(String::from)));
        let out =
            run(&config("--gpus a30-24gb:2 --mix uniform --load 0.9 --arrivals 300").unwrap())
                .unwrap();
        assert!(out.contains("1g.6gb") && !out.contains("3g"), "{out}");
        // Mixed families where a class is a different profile: refused, with the way out.
        let e = run(&config("--gpus a30-24gb,h100-80gb --mix uniform --load 0.9").unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("--trace"), "{e}");
        // Same family, other memory: 1g.10gb and 1g.18gb are different profiles, so also refused.
        assert!(
            run(&config("--gpus h100-80gb,h200-141gb --mix uniform --load 0.9").unwrap()).is_err()
        );
        // A MIG-off GPU takes no part in class resolution.
        let out = run(&config(
            "--gpus h100-80gb:1:mig-off,h100-80gb:2 --mix uniform --load 0.9 --arrivals 300",
        )
        .unwrap())
        .unwrap();
        assert!(out.contains("7g.80gb"), "{out}");
    }

    #[test]
    fn bad_flags_say_what_to_do() {
        for (line, want) in [
            ("", "say what to replay"),
            ("--mix uniform", "say what to replay"),
            ("--mix lots --load 0.9", "unknown --mix"),
            ("--mix uniform --load=-1", "out of range"),
            ("--mix uniform --load 0.9 --arrivals 0", "at least 1"),
            (
                "--mix uniform --load 0.9 --arrivals 10 --warmup 10",
                "leaves nothing",
            ),
            ("--trace x.jsonl --mix uniform", "drop --mix"),
            ("--sweep --load 0.9", "--loads"),
            ("--sweep --seeds 1", "at least 2"),
            ("--sweep --loads 0.9,0", "out of range"),
            ("--gpus h100-80gb:0 --mix uniform --load 0.9", "--gpus"),
        ] {
            let e = config(line).unwrap_err();
            assert!(e.to_string().contains(want), "{line:?}: {e}");
            assert_eq!(e.exit_code(), migrun::exit::USAGE);
        }
        let e = run(&config("--gpus h100-80gb:1:mig-off --mix uniform --load 0.9").unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("mig-off"), "{e}");
    }

    #[test]
    fn a_small_sweep_reports_paired_differences() {
        let c = config("--gpus h100-80gb:2 --sweep --seeds 3 --arrivals 300 --loads 0.9 --mixes uniform --threads 2").unwrap();
        let Mode::Sweep(spec) = &c.mode else {
            panic!("not a sweep")
        };
        let report = sweep::run(&fresh_state(&c.gpus), &c.gpus, spec, c.warmup).unwrap();
        assert_eq!(report.cells.len(), 1);
        let cell = &report.cells[0];
        let d = cell.migrun.slice_acceptance - cell.first_fit.slice_acceptance;
        assert!((cell.diff_slices.mean - d).abs() < 1e-9);
        assert!(
            cell.diff_slices.min <= cell.diff_slices.mean
                && cell.diff_slices.mean <= cell.diff_slices.max
        );
        assert!(sweep::table(&report).contains("| uniform | 0.90 |"));
        // Student's t quantiles (two-sided 95%).
        for (df, t) in [(4, 2.776), (9, 2.262), (49, 2.010), (1000, 1.962)] {
            assert!(
                (sweep::t975(df) - t).abs() < 0.01,
                "df {df}: {}",
                sweep::t975(df)
            );
        }
    }
}
