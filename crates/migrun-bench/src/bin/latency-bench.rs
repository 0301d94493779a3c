//! The `latency-bench` binary: starts a private runc (the integration tests' engine harness, tests/common/engines.rs),
//! switches the simulated driver's latency model on, and prints the burst, warm-start and contention figures
//! (`migrun_bench::latency`); it must not touch the host's own engines or state.

#[path = "../../../../tests/common/engines.rs"]
mod engines;

use clap::Parser;
use migrun_bench::latency::{self as lat, Args, What};
use migrun_bench::overhead::{self as ov, Machine, OverheadError, RuncTarget};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("latency-bench: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn run(args: &Args) -> Result<(), OverheadError> {
    let (migrun, lib) = lat::resolve(args)?;
    let model = args.model();
    let (n, rounds, pairs, warmup, secs) = args.counts();
    let wants = |w: What| args.what == w || args.what == What::All;
    println!(
        "latency-bench: driver latency model (ms) {model}; one create (GI + CI) {:.0} ms, one destroy (CI + GI) {:.0} ms; migrun {}{}",
        lat::single_create(&model).as_secs_f64() * 1e3,
        lat::single_destroy(&model).as_secs_f64() * 1e3,
        migrun.display(),
        if args.smoke { " (SMOKE RUN: delays / 10, not a measurement)" } else { "" }
    );
    let machine = |b, spec: &str| -> Result<Machine, OverheadError> {
        let m = Machine::new(b, spec, &migrun, lib.as_deref(), &args.work_dir)?;
        lat::set_model(&m, model)?;
        Ok(m)
    };
    if wants(What::Burst) || wants(What::Warm) || wants(What::End) {
        let runc = engines::Runc::new();
        let dir = tempfile::Builder::new()
            .prefix("migrun-latency-bundle-")
            .tempdir_in(&args.work_dir)
            .map_err(|e| OverheadError::Failed(format!("temp dir: {e}")))?;
        let bundle = engines::busybox_bundle(&dir.path().join("bundle"), &["true"]);
        let target = RuncTarget {
            runc: runc.bin().to_path_buf(),
            root: runc.root(),
            bundle,
        };
        if wants(What::Burst) {
            println!("### {n} runc containers created at once, each with migrun's hooks asking for 1g.10gb, h100-80gb:8\n\n{}", lat::BURST_HEADER);
            for &b in &args.backend {
                for r in lat::bursts(&machine(b, "h100-80gb:8")?, &target, n, rounds)? {
                    println!("{r}");
                }
            }
            println!();
        }
        if wants(What::End) {
            let mut rows = Vec::new();
            for &b in &args.backend {
                rows.extend(lat::end_wait(
                    &machine(b, "h100-80gb:8")?,
                    &target,
                    pairs,
                    warmup,
                )?);
            }
            println!(
                "{}",
                ov::paired_table(
                    "### what a container's end waits for migrun, h100-80gb:8",
                    &rows
                )
            );
        }
        if wants(What::Warm) {
            let mut rows = Vec::new();
            for &b in &args.backend {
                rows.push(lat::warm(
                    &machine(b, "h100-80gb:1")?,
                    &target,
                    pairs,
                    warmup,
                )?);
            }
            println!(
                "{}",
                ov::paired_table("### start on a warm instance, h100-80gb:1", &rows)
            );
        }
    }
    if wants(What::Contention) {
        // Compute-instance slices are tabled for the A100 80GB (migrun profiles --ci); whole instances on the H100.
        let ci = matches!(
            args.profile.parse::<migrun::profile::Requested>(),
            Ok(migrun::profile::Requested::Ci(_))
        );
        let spec = if ci { "a100-80gb:8" } else { "h100-80gb:8" };
        let mut rows = Vec::new();
        for &b in &args.backend {
            let c = ov::contention_of(&machine(b, spec)?, args.loops, secs, &args.profile)?;
            if let Some(e) = c.errors.first() {
                return Err(OverheadError::Failed(format!(
                    "alloc/release loops failed: {e}"
                )));
            }
            rows.extend(c.rows(b.name(), args.loops));
        }
        println!(
            "### alloc/release under contention with the latency model, {spec}, profile {}\n\n{}",
            args.profile,
            ov::CONTENTION_HEADER
        );
        for r in &rows {
            println!("{r}");
        }
    }
    Ok(())
}
