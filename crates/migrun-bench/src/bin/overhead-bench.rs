//! The `overhead-bench` binary: starts a private dockerd and runc (the integration tests' engine harness,
//! tests/common/engines.rs), then runs the start-up overhead benchmark (`migrun_bench::overhead`) and prints
//! its tables; it must not touch the host's own engines or state.

#[path = "../../../../tests/common/engines.rs"]
mod engines;

use clap::Parser;
use migrun_bench::overhead::{self as ov, Args, BackendKind, Machine, OverheadError, What};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overhead-bench: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn run(args: &Args) -> Result<(), OverheadError> {
    let (migrun, lib) = args.resolve()?;
    let (pairs, warmup, secs) = args.counts();
    let wants = |w: What| args.what == w || args.what == What::All;
    println!(
        "overhead-bench: {} pairs (+{} warm-up), alternating; {} CPUs, {}; state dirs under {}; migrun {}{}",
        pairs,
        warmup,
        sh("nproc"),
        sh("lscpu | sed -n 's/^Model name: *//p'"),
        args.work_dir.display(),
        migrun.display(),
        if args.smoke { " (SMOKE RUN: not a measurement)" } else { "" }
    );
    let machine =
        |b: BackendKind, spec: &str| Machine::new(b, spec, &migrun, lib.as_deref(), &args.work_dir);

    if wants(What::Docker) {
        let docker = engines::PrivateDockerd::start();
        let image = engines::busybox_image(&docker);
        let target = ov::DockerTarget {
            cli: engines::docker_cli(),
            host: docker.host().to_string(),
            config_dir: docker.dir().join("cli-config"),
            image,
        };
        println!(
            "docker: {} (private dockerd {})",
            version(&target.cli),
            docker.host()
        );
        let mut rows = Vec::new();
        for &b in &args.backend {
            rows.extend(ov::docker(
                &target,
                &machine(b, "h100-80gb:1")?,
                pairs,
                warmup,
            )?);
        }
        println!(
            "{}",
            ov::paired_table("### docker launcher, h100-80gb:1", &rows)
        );
    }

    if wants(What::Runc) || wants(What::Shim) || wants(What::Cdi) {
        let runc = engines::Runc::new();
        let dir = tempfile::Builder::new()
            .prefix("migrun-overhead-bundle-")
            .tempdir_in(&args.work_dir)
            .map_err(|e| OverheadError::Failed(format!("temp dir: {e}")))?;
        let bundle = engines::busybox_bundle(&dir.path().join("bundle"), &["true"]);
        let target = ov::RuncTarget {
            runc: runc.bin().to_path_buf(),
            root: runc.root(),
            bundle,
        };
        println!("runc: {}", version(&target.runc));
        if wants(What::Runc) {
            let mut rows = Vec::new();
            for &b in &args.backend {
                rows.extend(ov::runc_hooks(
                    &target,
                    &machine(b, "h100-80gb:1")?,
                    pairs,
                    warmup,
                )?);
            }
            println!(
                "{}",
                ov::paired_table("### runc run, hooks against none, h100-80gb:1", &rows)
            );
        }
        if wants(What::Shim) {
            let mut rows = Vec::new();
            for &b in &args.backend {
                rows.extend(ov::shim(
                    &target,
                    &machine(b, "h100-80gb:1")?,
                    pairs,
                    warmup,
                )?);
            }
            println!(
                "{}",
                ov::paired_table("### runtime shim against runc, no profile asked", &rows)
            );
        }
        if wants(What::Cdi) {
            let mut rows = Vec::new();
            for &b in &args.backend {
                let m = machine(b, "h100-80gb:1")?;
                // The hooks the shim adds carry migrun's own variables only (docs/hooks.md), not the
                // fake library's MIGRUN_FAKE_NVML*, so runc's hooks could not reach a fake machine.
                if b == BackendKind::Sim {
                    rows.extend(ov::cdi::shim(&target, &m, pairs, warmup)?);
                }
                rows.extend(ov::cdi::precreate(&m, pairs, warmup)?);
            }
            println!(
                "{}",
                ov::paired_table(
                    "### CDI: the shim and the precreate hook injecting a slice, h100-80gb:1",
                    &rows
                )
            );
            let spec_pairs = if args.smoke { pairs } else { pairs.max(200) };
            let rows = ov::cdi::spec_write(&args.work_dir, spec_pairs, warmup)?;
            println!(
                "{}",
                ov::paired_table(
                    &format!("### CDI: one lease spec written, in-process, {spec_pairs} pairs (a lease record's write is the baseline)"),
                    &rows
                )
            );
            println!("### CDI: where a spec's build goes (in-process, median of {spec_pairs})\n\n| step | median (µs) |\n|---|---|");
            for (step, us) in ov::cdi::steps(spec_pairs)? {
                println!("| {step} | {us:.0} |");
            }
            println!();
        }
    }

    if wants(What::Metrics) {
        let mut rows = Vec::new();
        let mut verdicts = Vec::new();
        for &b in &args.backend {
            let m = machine(b, migrun_bench::metrics::SPEC)?;
            let p = migrun_bench::metrics::run(&m, pairs, warmup)?;
            rows.push(p.row("migrun metrics vs status --json, 56 leases", b.name()));
            verdicts.push(migrun_bench::metrics::verdict(&p, b.name()));
        }
        println!(
            "{}\n{}\n",
            ov::paired_table(
                "### migrun metrics against migrun status --json, h100-80gb:8 with 56 leases",
                &rows
            ),
            verdicts.join("\n")
        );
    }

    if wants(What::Contention) {
        let mut rows = Vec::new();
        let mut errors = Vec::new();
        for &b in &args.backend {
            let m = machine(b, "h100-80gb:8")?;
            let c = ov::contention(&m, args.loops, secs)?;
            rows.extend(c.rows(b.name(), args.loops));
            errors.extend(
                c.errors
                    .iter()
                    .take(3)
                    .map(|e| format!("{}: {e}", b.name())),
            );
        }
        println!(
            "### alloc/release under contention, h100-80gb:8, profile 1g.10gb\n\n{}",
            ov::CONTENTION_HEADER
        );
        for r in &rows {
            println!("{r}");
        }
        if !errors.is_empty() {
            return Err(OverheadError::Failed(format!(
                "alloc/release loops failed: {}",
                errors.join("; ")
            )));
        }
    }
    Ok(())
}

fn version(bin: &Path) -> String {
    let out = Command::new(bin).arg("--version").output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let first = text.lines().next().unwrap_or("?").to_string();
    format!("{} ({first})", PathBuf::from(bin).display())
}
