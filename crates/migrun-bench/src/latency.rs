//! The driver-latency benchmark (issue 23): with the simulated driver as slow as the latency model says, how long a
//! burst of container starts takes, how long a container's end waits for migrun, what a start on a warm instance
//! adds, and alloc/release under contention; it must not change the product's behaviour, and only drives the
//! private engines it is handed (the `latency-bench` binary starts them).
//!
//! The model is switched on in each benchmark machine's simulated state file (`migrun sim latency`, or the fake
//! library's machine file), never in the functional tests.

use crate::overhead::{
    self as ov, failed, hook, run_id, run_pairs, timed, BackendKind, Bundle, Machine, Result,
    RuncTarget,
};
use clap::{Parser, ValueEnum};
use migrun::gpu::sim::{DriverOp, Latency, SimStore};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

/// `latency-bench`: migrun with the simulated driver as slow as a real one.
#[derive(Debug, Parser)]
#[command(name = "latency-bench", version)]
pub struct Args {
    /// What to measure
    #[arg(value_enum, default_value = "all")]
    pub what: What,
    /// Backends, comma-separated
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sim")]
    pub backend: Vec<BackendKind>,
    /// The driver latency model (`model`, `off`, or `[model,]OP=MS,...`; see `migrun sim latency --help`)
    #[arg(long, default_value = "model")]
    pub latency: Latency,
    /// Containers started at once in the burst
    #[arg(long, default_value_t = 16)]
    pub containers: usize,
    /// Bursts measured (each also runs its baseline burst)
    #[arg(long, default_value_t = 3)]
    pub bursts: usize,
    /// Measured pairs for the warm-start comparison
    #[arg(long, default_value_t = 30)]
    pub pairs: usize,
    /// Unmeasured pairs first
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Contention: loops and seconds
    #[arg(long, default_value_t = 16)]
    pub loops: usize,
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Contention: the profile the loops ask for (`1c.3g.40gb`: compute-instance slices, on a100-80gb:8)
    #[arg(long, default_value = "1g.10gb")]
    pub profile: String,
    /// Tiny counts for CI (4 containers, 1 burst, 3 pairs, 2 s of contention, the model's delays divided by 10):
    /// checks the programs run and leave nothing behind, measures nothing
    #[arg(long)]
    pub smoke: bool,
    /// The fake libnvidia-ml.so (default: next to this program)
    #[arg(long, value_name = "PATH")]
    pub fake_nvml_lib: Option<PathBuf>,
    /// The migrun binary (default: next to this program)
    #[arg(long, value_name = "PATH")]
    pub migrun: Option<PathBuf>,
    /// Directory for state dirs and bundles (tmpfs, like production's /run)
    #[arg(long, value_name = "DIR", default_value = "/dev/shm")]
    pub work_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum What {
    /// N runc containers with migrun's hooks created at once, each asking for 1g.10gb on h100-80gb:8
    Burst,
    /// `runc delete` of one container whose poststop releases a created instance, against a plain `runc delete`
    End,
    /// `runc run` with the hooks on a warm (kept) instance against `runc run` without migrun
    Warm,
    /// Concurrent `migrun alloc`/`release` loops (overhead-bench's contention) with the model on
    Contention,
    /// All of the above
    All,
}

impl Args {
    /// The model as run: `--smoke` divides every delay by 10 (a smoke run checks behaviour, not figures).
    pub fn model(&self) -> Latency {
        let mut l = self.latency;
        if self.smoke {
            for v in [
                &mut l.init_ms,
                &mut l.list_ms,
                &mut l.create_gi_ms,
                &mut l.create_ci_ms,
                &mut l.destroy_ci_ms,
                &mut l.destroy_gi_ms,
                &mut l.mig_mode_ms,
            ] {
                *v /= 10;
            }
        }
        l
    }

    pub fn counts(&self) -> (usize, usize, usize, usize, f64) {
        if self.smoke {
            (self.containers.min(4), 1, 3, 1, 2.0)
        } else {
            (
                self.containers,
                self.bursts,
                self.pairs,
                self.warmup,
                self.duration,
            )
        }
    }
}

/// Switch the latency model on in `m`'s simulated machine (the simulator's state file, or the fake library's).
pub fn set_model(m: &Machine, l: Latency) -> Result<()> {
    match m.backend {
        BackendKind::Sim => {
            let mut c = m.migrun();
            c.args(["sim", "latency", &l.to_string()]);
            timed(&mut c).map(|_| ())
        }
        BackendKind::FakeNvml => {
            let spec = m.spec.parse().map_err(failed)?;
            SimStore::new(m.dir().join("fake-gpus.json"))
                .update(&spec, |s| s.latency = l)
                .map_err(failed)
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One burst: every bundle's `runc create` started at once (prestart runs in create, so a created container is
/// one whose slice is ready), then every container started, and when all have exited every `runc delete` at
/// once (poststop runs in delete: what a container's end waits for).
pub struct Burst {
    /// From the common start to the last `runc create` returning.
    pub all_ready: Duration,
    pub creates: Vec<Duration>,
    pub deletes: Vec<Duration>,
}

fn runc(t: &RuncTarget) -> Command {
    let mut c = Command::new(&t.runc);
    c.arg("--root").arg(&t.root);
    c
}

fn burst(m: &Machine, t: &RuncTarget, bundles: &[Bundle]) -> Result<Burst> {
    for b in bundles {
        b.restore()?;
    }
    let ids: Vec<String> = bundles.iter().map(|_| run_id()).collect();
    let gate = Barrier::new(bundles.len() + 1);
    let creates = Mutex::new(Vec::new());
    let errors = Mutex::new(Vec::new());
    let t0 = Mutex::new(Instant::now());
    let mut last = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = bundles
            .iter()
            .zip(&ids)
            .map(|(b, id)| {
                let (gate, creates, errors) = (&gate, &creates, &errors);
                s.spawn(move || {
                    let mut c = m.command(&t.runc);
                    // The container's init inherits runc's stdio and keeps it open until it exits: a pipe read to
                    // its end would wait for the container, so output goes nowhere and only the status counts.
                    c.arg("--root")
                        .arg(&t.root)
                        .args(["create", "--bundle"])
                        .arg(&b.dir)
                        .arg(id)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null());
                    gate.wait();
                    let start = Instant::now();
                    match c.status() {
                        Ok(st) if st.success() => creates.lock().unwrap().push(start.elapsed()),
                        Ok(st) => errors.lock().unwrap().push(format!(
                            "runc create {id}: {st} (the hooks' log is in the state dir)"
                        )),
                        Err(e) => errors
                            .lock()
                            .unwrap()
                            .push(format!("runc create {id}: {e}")),
                    }
                    Instant::now()
                })
            })
            .collect();
        *t0.lock().unwrap() = Instant::now();
        gate.wait();
        for h in handles {
            if let Ok(end) = h.join() {
                last = last.max(end);
            }
        }
    });
    let all_ready = last.saturating_duration_since(*t0.lock().unwrap());
    let mut errors = errors.into_inner().unwrap();
    for id in &ids {
        if let Err(e) = timed(runc(t).args(["start", id])) {
            errors.push(e.to_string());
        }
    }
    // Wait until each container's `true` has exited, outside the timing.
    for id in &ids {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let out = runc(t).args(["state", id]).output().map_err(failed)?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() || text.contains("\"stopped\"") || Instant::now() > until {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let deletes = Mutex::new(Vec::new());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for id in &ids {
            let (deletes, failures) = (&deletes, &failures);
            s.spawn(move || {
                let mut c = m.command(&t.runc);
                c.arg("--root").arg(&t.root).args(["delete", id]);
                match timed(&mut c) {
                    Ok(d) => deletes.lock().unwrap().push(d),
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
            });
        }
    });
    errors.extend(failures.into_inner().unwrap());
    if !errors.is_empty() {
        for id in &ids {
            let _ = runc(t).args(["delete", "--force", id]).output();
        }
        return Err(failed(format!(
            "the burst failed: {}",
            errors
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    Ok(Burst {
        all_ready,
        creates: creates.into_inner().unwrap(),
        deletes: deletes.into_inner().unwrap(),
    })
}

/// Waits until the machine holds no lease and no instance (a release may finish in the background).
pub fn settle(m: &Machine, what: &str, instances: usize) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        match m.expect(what, 0, instances) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > until => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The burst rows: `bursts` bursts of `n` hooked containers and as many of `n` plain ones.
pub fn bursts(m: &Machine, t: &RuncTarget, n: usize, rounds: usize) -> Result<Vec<String>> {
    let hooked: Vec<Bundle> = (0..n)
        .map(|i| {
            Bundle::new(t, m.dir(), &format!("burst-hooked-{i}"), |s| {
                s["annotations"] = serde_json::json!({"migrun.profile": "1g.10gb"});
                s["hooks"] = serde_json::json!({
                    "prestart": [hook(m, "prestart", &[])],
                    "poststop": [hook(m, "poststop", &[])],
                });
            })
        })
        .collect::<Result<_>>()?;
    let plain: Vec<Bundle> = (0..n)
        .map(|i| Bundle::new(t, m.dir(), &format!("burst-plain-{i}"), |_| {}))
        .collect::<Result<_>>()?;
    let mut rows = Vec::new();
    for r in 0..rounds {
        let b = burst(m, t, &plain)?;
        let h = burst(m, t, &hooked)?;
        settle(m, "after a burst", 0)?;
        rows.push(format!(
            "| {} | {r} | {n} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            m.backend.name(),
            ms(b.all_ready),
            ms(h.all_ready),
            ov::median(&h.creates.iter().map(|d| ms(*d)).collect::<Vec<_>>()),
            ov::median(&b.deletes.iter().map(|d| ms(*d)).collect::<Vec<_>>()),
            ov::median(&h.deletes.iter().map(|d| ms(*d)).collect::<Vec<_>>()),
            h.deletes.iter().map(|d| ms(*d)).fold(0.0, f64::max),
        ));
    }
    Ok(rows)
}

pub const BURST_HEADER: &str = "| backend | burst | containers | all created, no migrun (ms) | all created, migrun (ms) | median create, migrun (ms) | median delete, no migrun (ms) | median delete (poststop), migrun (ms) | slowest delete, migrun (ms) |\n|---|---|---|---|---|---|---|---|---|";

/// A container's end, alone: `runc delete` (poststop) of a hooked container whose instance migrun created, against
/// `runc delete` of a plain one, in pairs. What the end waits for migrun, with the model's destroy latency.
/// Two rows: the default `release_wait_ms` (0: never wait for the worker) and `release_wait_ms = 40` (the default
/// before issue 23's goal was measured: wait up to 40 ms for the worker).
pub fn end_wait(m: &Machine, t: &RuncTarget, pairs: usize, warmup: usize) -> Result<Vec<String>> {
    let mut rows = Vec::new();
    for wait in [None, Some(40)] {
        let extra = match wait {
            None => Vec::new(),
            Some(ms) => {
                let cfg = m.config("wait.toml", &format!("release_wait_ms = {ms}\n"))?;
                vec![format!("MIGRUN_CONFIG={}", cfg.display())]
            }
        };
        let case = match wait {
            None => "runc delete (poststop releases a created 1g.10gb; release_wait_ms default, 0) against runc delete alone".to_string(),
            Some(ms) => format!("runc delete (poststop releases a created 1g.10gb; release_wait_ms = {ms}) against runc delete alone"),
        };
        rows.push(end_wait_one(m, t, pairs, warmup, &extra)?.row(&case, m.backend.name()));
    }
    Ok(rows)
}

fn end_wait_one(
    m: &Machine,
    t: &RuncTarget,
    pairs: usize,
    warmup: usize,
    extra: &[String],
) -> Result<ov::Paired> {
    let hooked = [Bundle::new(t, m.dir(), "end-hooked", |s| {
        s["annotations"] = serde_json::json!({"migrun.profile": "1g.10gb"});
        s["hooks"] = serde_json::json!({
            "prestart": [hook(m, "prestart", extra)],
            "poststop": [hook(m, "poststop", extra)],
        });
    })?];
    let plain = [Bundle::new(t, m.dir(), "end-plain", |_| {})?];
    let delete_of = |b: &[Bundle]| -> Result<Duration> {
        burst(m, t, b)?
            .deletes
            .first()
            .copied()
            .ok_or_else(|| failed("no delete was timed"))
    };
    let p = run_pairs(pairs, warmup, || delete_of(&hooked), || delete_of(&plain))?;
    settle(m, "after the end-wait runs", 0)?;
    Ok(p)
}

/// `runc run` with the hooks on a kept instance (`release = "keep"`) against plain `runc run`, in pairs.
pub fn warm(m: &Machine, t: &RuncTarget, pairs: usize, warmup: usize) -> Result<String> {
    let keep_cfg = m.config("keep.toml", "release = \"keep\"\n")?;
    let extra = vec![format!("MIGRUN_CONFIG={}", keep_cfg.display())];
    let plain = Bundle::new(t, m.dir(), "warm-plain", |_| {})?;
    let hooked = Bundle::new(t, m.dir(), "warm-hooked", |s| {
        s["annotations"] = serde_json::json!({"migrun.profile": "1g.10gb"});
        s["hooks"] = serde_json::json!({
            "prestart": [hook(m, "prestart", &extra)],
            "poststop": [hook(m, "poststop", &extra)],
        });
    })?;
    // The first run creates the instance that every later one reuses.
    hooked.run(m, &t.runc, &t.root)?;
    let p = run_pairs(
        pairs,
        warmup,
        || hooked.run(m, &t.runc, &t.root),
        || plain.run(m, &t.runc, &t.root),
    )?;
    m.expect("after the warm runs", 0, 1)?;
    Ok(p.row(
        "runc + hooks on a warm 1g.10gb (release = keep) against runc alone",
        m.backend.name(),
    ))
}

/// The model's single create: a GPU instance and its default compute instance.
pub fn single_create(l: &Latency) -> Duration {
    l.of(DriverOp::CreateGi) + l.of(DriverOp::CreateCi)
}

/// The model's destroy: the compute instance, then the GPU instance.
pub fn single_destroy(l: &Latency) -> Duration {
    l.of(DriverOp::DestroyCi) + l.of(DriverOp::DestroyGi)
}

/// The migrun binary and fake library, as overhead-bench resolves them.
pub fn resolve(args: &Args) -> Result<(PathBuf, Option<PathBuf>)> {
    let here = std::env::current_exe().map_err(failed)?;
    let dir = here.parent().unwrap_or(Path::new("."));
    let migrun = args.migrun.clone().unwrap_or_else(|| dir.join("migrun"));
    if !migrun.exists() {
        return Err(ov::OverheadError::Input(format!(
            "{} does not exist; build migrun (`cargo build --bin migrun`) or pass --migrun",
            migrun.display()
        )));
    }
    let lib = match &args.fake_nvml_lib {
        Some(p) => Some(p.clone()),
        None => Some(dir.join("libnvidia_ml.so")).filter(|p| p.exists()),
    };
    Ok((migrun, lib))
}
