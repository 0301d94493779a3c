//! The `slurm-bench` binary: starts a private Slurm cluster (the integration tests' harness,
//! tests/slurm_support/) with migrun's SPANK plugin and prints what `--mig` adds to a step and what the
//! plugin costs a step without it; it must not touch the host's own Slurm.
//!
//! Rows (paired, alternating, as overhead-bench does; docs/benchmarks.md "Slurm"):
//! - `srun --mig=1g.10gb true` against `srun true`, the plugin loaded for both;
//! - `srun true` with the plugin in plugstack.conf against `srun true` with an empty plugstack.conf (the file is
//!   rewritten between runs; srun and slurmstepd read it at every start).

#[path = "../../../../tests/slurm_support/mod.rs"]
mod slurm_support;

use clap::Parser;
use migrun_bench::overhead::{run_pairs, timed, OverheadError, PAIRED_HEADER};
use slurm_support::{Cluster, Node};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "slurm-bench",
    about = "What the migrun SPANK plugin adds to a Slurm job step (needs root)"
)]
struct Args {
    /// migrun binary the nodes run (default: `migrun` next to this program)
    #[arg(long)]
    migrun: Option<PathBuf>,
    /// The plugin (default: `libmigrun_spank.so` next to this program)
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// Measured pairs per row
    #[arg(long, default_value_t = 30)]
    pairs: usize,
    /// Unmeasured pairs first
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Where the cluster's files and the node's migrun state dir go (tmpfs, like production's /run)
    #[arg(long, default_value = "/dev/shm")]
    work_dir: PathBuf,
    /// Say that this run only checks the program works (CI): its figures are no measurement
    #[arg(long)]
    smoke: bool,
}

fn next_to_me(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slurm-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let migrun = args.migrun.clone().unwrap_or_else(|| next_to_me("migrun"));
    let plugin = args
        .plugin
        .clone()
        .unwrap_or_else(|| next_to_me("libmigrun_spank.so"));
    for p in [&migrun, &plugin] {
        if !p.is_file() {
            return Err(format!(
                "{} not found; build them (cargo build --release -p migrun -p migrun-spank) or pass --migrun/--plugin",
                p.display()
            ));
        }
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let c = Cluster::start(
        &repo,
        &plugin,
        &migrun,
        &args.work_dir,
        vec![Node {
            name: "node1",
            simulate: "h100-80gb:1",
            gres: 7,
        }],
    );
    println!(
        "slurm-bench: {} pairs (+{} warm-up), alternating; one slurmd (h100-80gb:1, simulated); files under {}; migrun {}; plugin {}{}",
        args.pairs,
        args.warmup,
        args.work_dir.display(),
        migrun.display(),
        plugin.display(),
        if args.smoke { " (SMOKE RUN: not a measurement)" } else { "" }
    );
    let limit = Duration::from_secs(60);
    let srun = |extra: &[&str]| {
        let mut a = vec!["srun", "-w", "node1"];
        a.extend_from_slice(extra);
        a.push("true");
        timed(&mut c.slurm(limit, &a))
    };
    let mig = run_pairs(
        args.pairs,
        args.warmup,
        || srun(&["--mig=1g.10gb"]),
        || srun(&[]),
    )
    .map_err(|e| e.to_string())?;
    let leases = c.leases("node1");
    if !leases.is_empty() || c.instances("node1") != 0 {
        return Err(format!("leases or instances left behind: {leases:?}"));
    }

    let stack = c.dir().join("plugstack.conf");
    let loaded = std::fs::read_to_string(&stack).map_err(|e| e.to_string())?;
    let set = |body: &str| std::fs::write(&stack, body).map_err(|e| e.to_string());
    let plain = run_pairs(
        args.pairs,
        args.warmup,
        || {
            set(&loaded).map_err(OverheadError::Failed)?;
            srun(&[])
        },
        || {
            set("").map_err(OverheadError::Failed)?;
            srun(&[])
        },
    )
    .map_err(|e| e.to_string())?;
    set(&loaded)?;

    println!("\n{PAIRED_HEADER}");
    println!(
        "{}",
        mig.row("`srun --mig=1g.10gb true` vs `srun true`", "sim")
    );
    println!(
        "{}",
        plain.row("`srun true`, plugin loaded vs not loaded", "sim")
    );
    Ok(())
}
