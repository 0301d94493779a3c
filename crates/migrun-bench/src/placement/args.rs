//! Command-line flags of `placement-bench` (clap definitions only; validation lives in `Config::from_args`).

use clap::Parser;
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Examples:
  placement-bench --gpus h100-80gb:8 --mix uniform --load 0.9 --seed 1 --arrivals 4000
  placement-bench --gpus h100-80gb:8 --trace examples/traces/sample.jsonl --json
  placement-bench --gpus h100-80gb:8 --sweep --seeds 50 --arrivals 4000
  (scripts/placement-sweep.sh runs the documented sweep)

Compared on the same stream: migrun (placement::choose, Policy::Migrun), first-fit (lowest free
placement on the lowest-index GPU), oracle (free repacking of every running instance; exact,
reported only) and repack-in-gpu (free rearrangement inside each GPU only; a reference).
See docs/benchmarks.md.";

/// Replay MIG request streams through migrun's placement policy and compare it with first-fit and a repacking oracle.
#[derive(Debug, Parser)]
#[command(name = "placement-bench", after_help = AFTER_HELP)]
pub struct Args {
    /// Simulated GPUs in the --simulate grammar: MODEL[:COUNT][:mig-off],... e.g. h100-80gb:8
    #[arg(long, value_name = "SPEC", default_value = "h100-80gb:8")]
    pub gpus: String,
    /// Generated request mix: uniform (1g, 1g double-memory, 2g, 3g, 4g, 7g equally often) or small-heavy (weights 5, 2, 2, 1, 1, 0.5)
    #[arg(long, value_name = "MIX")]
    pub mix: Option<String>,
    /// Offered memory load of a generated stream, as a fraction of all memory slices (e.g. 0.9)
    #[arg(long, value_name = "L")]
    pub load: Option<f64>,
    /// Seed of a generated stream (the same seed gives the same stream for every policy)
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub seed: u64,
    /// Requests in each generated stream
    #[arg(long, value_name = "N", default_value_t = 4000)]
    pub arrivals: usize,
    /// Requests at the start of a stream that are replayed but not counted, because the GPUs start empty (default: a tenth of --arrivals for generated streams, 0 for traces)
    #[arg(long, value_name = "N")]
    pub warmup: Option<usize>,
    /// Replay a JSON-lines trace instead of generating a stream: {"t": 0.13, "profile": "3g.40gb", "life": 0.8} per line
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Run every mix at every load over seeds 1..=--seeds and print paired differences with 95% confidence intervals
    #[arg(long)]
    pub sweep: bool,
    /// Seeds per cell of --sweep
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub seeds: u64,
    /// Loads of --sweep, comma separated
    #[arg(
        long,
        value_name = "L,...",
        value_delimiter = ',',
        default_value = "0.7,0.9,1.1"
    )]
    pub loads: Vec<f64>,
    /// Mixes of --sweep, comma separated
    #[arg(
        long,
        value_name = "MIX,...",
        value_delimiter = ',',
        default_value = "uniform,small-heavy"
    )]
    pub mixes: Vec<String>,
    /// Worker threads for --sweep (default: every available core)
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Print JSON instead of tables
    #[arg(long)]
    pub json: bool,
}
