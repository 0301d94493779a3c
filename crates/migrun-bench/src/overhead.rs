//! The start-up overhead benchmark (issue 7): times migrun's docker launcher, OCI hooks, runtime shim and
//! alloc/release against the same engine without migrun; it must not change the product's behaviour, and it
//! only drives engines it is handed (the `overhead-bench` binary starts private ones).
//!
//! Method: every comparison is a list of *pairs*, run alternately (pair i runs migrun first when i is
//! even, the baseline first when it is odd) after a few unmeasured warm-up pairs, so drift and cache
//! effects hit both sides alike. Reported: the median of each side, the difference and the ratio of
//! the medians, and the median of the per-pair differences and ratios. Wall time is taken around the
//! whole client process (spawn to exit), which is what a user waits for.

use clap::{Parser, Subcommand, ValueEnum};
use migrun::statedir::StateDir;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum OverheadError {
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Failed(String),
}

impl OverheadError {
    /// Exit code (see `migrun::exit`).
    pub fn exit_code(&self) -> i32 {
        match self {
            OverheadError::Input(_) => migrun::exit::USAGE,
            OverheadError::Failed(_) => migrun::exit::FAILED,
        }
    }
}

pub mod cdi;

pub type Result<T> = std::result::Result<T, OverheadError>;

pub(crate) fn failed(what: impl std::fmt::Display) -> OverheadError {
    OverheadError::Failed(what.to_string())
}

/// `overhead-bench`: start-up overhead of migrun against the same engine without it.
#[derive(Debug, Parser)]
#[command(name = "overhead-bench", version)]
pub struct Args {
    /// What to measure
    #[command(subcommand)]
    pub what: What,
    /// Backends to measure on, comma-separated
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sim,fake-nvml",
        global = true
    )]
    pub backend: Vec<BackendKind>,
    /// The fake libnvidia-ml.so for `--backend fake-nvml` (default: libnvidia_ml.so next to this program; build it with `cargo build -p fake-nvml`)
    #[arg(long, value_name = "PATH", global = true)]
    pub fake_nvml_lib: Option<PathBuf>,
    /// The migrun binary to measure (default: migrun next to this program)
    #[arg(long, value_name = "PATH", global = true)]
    pub migrun: Option<PathBuf>,
    /// Measured pairs per comparison (the issue asks for at least 20)
    #[arg(long, default_value_t = 30, global = true)]
    pub pairs: usize,
    /// Unmeasured pairs run first
    #[arg(long, default_value_t = 3, global = true)]
    pub warmup: usize,
    /// Contention: concurrent alloc/release loops
    #[arg(long, default_value_t = 16, global = true)]
    pub loops: usize,
    /// Contention: seconds to run
    #[arg(long, default_value_t = 30.0, global = true)]
    pub duration: f64,
    /// Tiny counts for CI (3 pairs, 1 warm-up, 2 s of contention): checks the programs run, measures nothing
    #[arg(long, global = true)]
    pub smoke: bool,
    /// Directory for state dirs, bundles and the fake machine (tmpfs, like production's /run)
    #[arg(long, value_name = "DIR", default_value = "/dev/shm", global = true)]
    pub work_dir: PathBuf,
}

/// The comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum What {
    /// `migrun --inject env --profile 1g.10gb IMAGE true` against `docker run --rm -e NVIDIA_VISIBLE_DEVICES=X IMAGE true`
    Docker,
    /// `runc run` of a busybox bundle with migrun's prestart+poststop hooks against the same bundle without
    Runc,
    /// `migrun-runtime run` (the shim) of a bundle that asks for no profile against `runc run`
    Shim,
    /// CDI: the shim injecting by CDI against plain runc, the precreate hook with CDI edits, one lease spec's write
    Cdi,
    /// Concurrent `migrun alloc` / `migrun release` loops on h100-80gb:8
    Contention,
    /// `migrun metrics` against `migrun status --json` on h100-80gb:8 with 56 leases (budget: 20 ms)
    Metrics,
    /// All of the above, in that order
    All,
}

/// Where the GPUs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// The simulator (`MIGRUN_SIMULATE`)
    Sim,
    /// The NVML backend on the fake libnvidia-ml.so (`MIGRUN_NVML_LIB`)
    FakeNvml,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Sim => "sim",
            BackendKind::FakeNvml => "fake-nvml",
        }
    }
}

impl Args {
    /// Pairs, warm-up pairs, contention seconds, after `--smoke`.
    pub fn counts(&self) -> (usize, usize, f64) {
        if self.smoke {
            (3, 1, 2.0)
        } else {
            (self.pairs, self.warmup, self.duration)
        }
    }

    /// Checks the numbers and resolves the migrun binary and the fake library.
    pub fn resolve(&self) -> Result<(PathBuf, Option<PathBuf>)> {
        if self.pairs == 0 || self.loops == 0 || !self.duration.is_finite() || self.duration <= 0.0
        {
            return Err(OverheadError::Input(
                "--pairs, --loops and --duration must be positive".into(),
            ));
        }
        if self.backend.is_empty() {
            return Err(OverheadError::Input(
                "--backend needs at least one of sim, fake-nvml".into(),
            ));
        }
        let here = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let migrun = self.migrun.clone().unwrap_or_else(|| here.join("migrun"));
        if !migrun.is_file() {
            return Err(OverheadError::Input(format!(
                "migrun binary {} not found: build it (`cargo build --release --bin migrun`) or pass --migrun PATH",
                migrun.display()
            )));
        }
        let lib = if self.backend.contains(&BackendKind::FakeNvml) {
            let lib = self
                .fake_nvml_lib
                .clone()
                .unwrap_or_else(|| here.join("libnvidia_ml.so"));
            if !lib.is_file() {
                return Err(OverheadError::Input(format!(
                    "fake NVML library {} not found: build it with `cargo build -p fake-nvml` (add --release for a release run) or pass --fake-nvml-lib PATH, or use --backend sim",
                    lib.display()
                )));
            }
            Some(lib)
        } else {
            None
        };
        if !self.work_dir.is_dir() {
            return Err(OverheadError::Input(format!(
                "--work-dir {} is not a directory",
                self.work_dir.display()
            )));
        }
        Ok((migrun, lib))
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

/// The q-quantile (0..=1) of `xs` by linear interpolation between order statistics (R's type 7);
/// `q = 0.5` is the usual median. NaN for an empty slice.
pub fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let h = (v.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    v[lo] + (h - lo as f64) * (v[hi] - v[lo])
}

pub fn median(xs: &[f64]) -> f64 {
    quantile(xs, 0.5)
}

/// A distribution-free 95% confidence interval for the median: the order statistics
/// `x(j+1)` and `x(n-j)` with `j = floor((n - 1.96 sqrt(n)) / 2)` (the normal approximation to the
/// binomial count of samples below the median). It needs no assumption about the shape of this
/// VM's timing noise, which is skewed and heavy-tailed. `None` below 6 samples, where no such
/// interval reaches 95%.
pub fn median_ci95(xs: &[f64]) -> Option<(f64, f64)> {
    let n = xs.len();
    if n < 6 {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let j = ((n as f64 - 1.96 * (n as f64).sqrt()) / 2.0)
        .floor()
        .max(0.0) as usize;
    Some((v[j], v[n - 1 - j]))
}

/// Paired wall times in milliseconds: `migrun[i]` and `base[i]` ran back to back.
#[derive(Debug, Default, Clone)]
pub struct Paired {
    pub migrun: Vec<f64>,
    pub base: Vec<f64>,
}

impl Paired {
    pub fn ratios(&self) -> Vec<f64> {
        self.migrun
            .iter()
            .zip(&self.base)
            .map(|(a, b)| a / b)
            .collect()
    }

    pub fn diffs(&self) -> Vec<f64> {
        self.migrun
            .iter()
            .zip(&self.base)
            .map(|(a, b)| a - b)
            .collect()
    }

    /// One markdown table row: case, backend, pairs, median base, median migrun, added (difference
    /// of medians), median of paired differences with its 95% interval, ratio of medians, median of
    /// paired ratios.
    pub fn row(&self, case: &str, backend: &str) -> String {
        let (mb, mm) = (median(&self.base), median(&self.migrun));
        let diffs = self.diffs();
        let ci = match median_ci95(&diffs) {
            Some((lo, hi)) => format!("{lo:+.2} to {hi:+.2}"),
            None => "n/a".into(),
        };
        format!(
            "| {case} | {backend} | {} | {mb:.2} | {mm:.2} | {:+.2} | {:+.2} | {ci} | {:.3} | {:.3} |",
            self.migrun.len(),
            mm - mb,
            median(&diffs),
            mm / mb,
            median(&self.ratios()),
        )
    }
}

/// Header of [`Paired::row`] tables.
pub const PAIRED_HEADER: &str = "| case | backend | pairs | baseline median (ms) | migrun median (ms) | added: diff. of medians (ms) | added: median paired diff. (ms) | its 95% interval (ms) | ratio of medians | median paired ratio |\n|---|---|---|---|---|---|---|---|---|---|";

/// Runs `warmup` unmeasured then `pairs` measured pairs, alternating which side goes first.
pub fn run_pairs(
    pairs: usize,
    warmup: usize,
    mut migrun: impl FnMut() -> Result<Duration>,
    mut base: impl FnMut() -> Result<Duration>,
) -> Result<Paired> {
    let [p] = run_pairs_of(pairs, warmup, || Ok([migrun()?]), || Ok([base()?]))?;
    Ok(p)
}

/// [`run_pairs`] of sides that each time `N` steps in one run (the engine calls of one container):
/// one [`Paired`] per step, step `k` of a migrun run paired with step `k` of the base run next to it.
pub fn run_pairs_of<const N: usize>(
    pairs: usize,
    warmup: usize,
    mut migrun: impl FnMut() -> Result<[Duration; N]>,
    mut base: impl FnMut() -> Result<[Duration; N]>,
) -> Result<[Paired; N]> {
    let mut p: [Paired; N] = std::array::from_fn(|_| Paired::default());
    for i in 0..warmup + pairs {
        let (m, b) = if i % 2 == 0 {
            let m = migrun()?;
            (m, base()?)
        } else {
            let b = base()?;
            (migrun()?, b)
        };
        if i >= warmup {
            for (k, step) in p.iter_mut().enumerate() {
                step.migrun.push(m[k].as_secs_f64() * 1e3);
                step.base.push(b[k].as_secs_f64() * 1e3);
            }
        }
    }
    Ok(p)
}

/// Runs `cmd` to completion (stdout/stderr captured) and returns its wall time; a non-zero exit is
/// an error carrying its stderr.
pub fn timed(cmd: &mut Command) -> Result<Duration> {
    cmd.stdin(Stdio::null());
    let t0 = Instant::now();
    let out = cmd
        .output()
        .map_err(|e| failed(format!("cannot run {cmd:?}: {e}")))?;
    let dt = t0.elapsed();
    if !out.status.success() {
        return Err(failed(format!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(dt)
}

// ---------------------------------------------------------------------------------------------
// A machine: a backend, a GPU spec and a private state dir on tmpfs
// ---------------------------------------------------------------------------------------------

/// Every MIGRUN_* variable a benchmark machine sets or must not inherit.
const MACHINE_VARS: &[&str] = &[
    "MIGRUN_SIMULATE",
    "MIGRUN_STATE_DIR",
    "MIGRUN_CONFIG",
    "MIGRUN_NVML_LIB",
    "MIGRUN_LOG",
    "MIGRUN_DOCKER",
    "MIGRUN_PROFILE",
    "MIGRUN_GPU",
    "MIGRUN_FAKE_NVML",
    "MIGRUN_FAKE_NVML_STATE",
    "MIGRUN_FAKE_NVML_FAIL",
    "MIGRUN_FAKE_NVML_COUNT",
    "MIGRUN_FAKE_NVML_NONROOT",
    "MIGRUN_FAKE_NVML_NOMIG",
];

/// A private simulated machine: the state dir (and the fake library's machine file) live in a
/// temporary directory under the work dir, removed on drop.
pub struct Machine {
    pub backend: BackendKind,
    pub spec: String,
    pub migrun: PathBuf,
    lib: Option<PathBuf>,
    tmp: tempfile::TempDir,
}

impl Machine {
    pub fn new(
        backend: BackendKind,
        spec: &str,
        migrun: &Path,
        lib: Option<&Path>,
        work_dir: &Path,
    ) -> Result<Machine> {
        let tmp = tempfile::Builder::new()
            .prefix("migrun-overhead-")
            .tempdir_in(work_dir)
            .map_err(|e| {
                failed(format!(
                    "cannot create a temp dir in {}: {e}",
                    work_dir.display()
                ))
            })?;
        let lib = match backend {
            BackendKind::Sim => None,
            BackendKind::FakeNvml => Some(lib.map(Path::to_path_buf).ok_or_else(|| {
                OverheadError::Input("--backend fake-nvml needs --fake-nvml-lib".into())
            })?),
        };
        if lib.is_some() {
            // The driver's /proc files for these GPUs under a host root of the machine's own, as the
            // tests' fake-NVML helper lays them out: the NVML backend reads its host facts there
            // (debug builds honour MIGRUN_HOST_ROOT) and writes lease specs below it.
            let parsed = spec
                .parse()
                .map_err(|e| OverheadError::Input(format!("bad machine spec {spec}: {e}")))?;
            let machine = migrun::gpu::sim::SimMachine::new(&parsed);
            for (rel, text) in migrun::gpu::sim::procfs::files(&machine) {
                let p = tmp.path().join("host").join(rel);
                std::fs::create_dir_all(p.parent().unwrap_or(tmp.path()))
                    .and_then(|()| std::fs::write(&p, text))
                    .map_err(|e| failed(format!("laying out {}: {e}", p.display())))?;
            }
        }
        Ok(Machine {
            backend,
            spec: spec.to_string(),
            migrun: migrun.to_path_buf(),
            lib,
            tmp,
        })
    }

    /// The machine's private directory (bundles and configs may go here too).
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// The variables that point migrun at this machine.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![(
            "MIGRUN_STATE_DIR".to_string(),
            self.state_dir().display().to_string(),
        )];
        match &self.lib {
            None => env.push(("MIGRUN_SIMULATE".into(), self.spec.clone())),
            Some(lib) => {
                env.push(("MIGRUN_NVML_LIB".into(), lib.display().to_string()));
                env.push(("MIGRUN_FAKE_NVML".into(), self.spec.clone()));
                env.push((
                    "MIGRUN_FAKE_NVML_STATE".into(),
                    self.dir().join("fake-gpus.json").display().to_string(),
                ));
                env.push((
                    migrun::gpu::hostfacts::HOST_ROOT_ENV.into(),
                    self.dir().join("host").display().to_string(),
                ));
                // Fake GPUs share their UUIDs with every other fake machine: claim them here, not in
                // the host's /run/migrun-gpus (debug builds honour this; see alloc::binding).
                env.push((
                    migrun::alloc::binding::CLAIMS_ENV.into(),
                    self.dir().join("gpu-claims").display().to_string(),
                ));
            }
        }
        env
    }

    /// `migrun` pointed at this machine (no MIGRUN_* variable inherited).
    pub fn migrun(&self) -> Command {
        self.command(&self.migrun)
    }

    /// `program` with this machine's env (no MIGRUN_* variable inherited).
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        for v in MACHINE_VARS {
            c.env_remove(v);
        }
        c.envs(self.env());
        c
    }

    /// Live leases.
    pub fn leases(&self) -> Result<usize> {
        let dir = StateDir::open(self.state_dir()).map_err(failed)?;
        Ok(migrun::alloc::leases(&dir).map_err(failed)?.len())
    }

    /// GPU instances on all GPUs, from `migrun status --json`.
    pub fn instances(&self) -> Result<usize> {
        let out = self
            .migrun()
            .args(["status", "--json"])
            .output()
            .map_err(failed)?;
        if !out.status.success() {
            return Err(failed(format!(
                "migrun status failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(failed)?;
        Ok(doc["gpus"]
            .as_array()
            .map(|g| {
                g.iter()
                    .map(|g| g["instances"].as_array().map_or(0, Vec::len))
                    .sum()
            })
            .unwrap_or(0))
    }

    /// Fails unless the machine holds `leases` leases and `instances` instances.
    /// A container's end returns before its instance's background destroy (`release_wait_ms` is 0 by default), so
    /// this looks again for up to 10 s before it says the counts are wrong.
    pub fn expect(&self, what: &str, leases: usize, instances: usize) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(10);
        let (mut l, mut i) = (self.leases()?, self.instances()?);
        while (l, i) != (leases, instances) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
            (l, i) = (self.leases()?, self.instances()?);
        }
        if (l, i) != (leases, instances) {
            return Err(failed(format!(
                "{what} on {}: expected {leases} lease(s) and {instances} instance(s), found {l} and {i}",
                self.backend.name()
            )));
        }
        Ok(())
    }

    /// Writes a migrun config file with `body` into the machine dir and returns its path.
    pub fn config(&self, name: &str, body: &str) -> Result<PathBuf> {
        let p = self.dir().join(name);
        fs::write(&p, body).map_err(|e| failed(format!("write {}: {e}", p.display())))?;
        Ok(p)
    }
}

// ---------------------------------------------------------------------------------------------
// docker
// ---------------------------------------------------------------------------------------------

/// A docker daemon to run against: the CLI, its `DOCKER_HOST`, a private `DOCKER_CONFIG`, and an
/// image that is already there (run with no pull).
pub struct DockerTarget {
    pub cli: PathBuf,
    pub host: String,
    pub config_dir: PathBuf,
    pub image: String,
}

impl DockerTarget {
    fn env(&self, c: &mut Command) {
        c.env("DOCKER_HOST", &self.host)
            .env("DOCKER_CONFIG", &self.config_dir)
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY");
    }
}

/// Docker launcher: the reuse case (`--keep`, so the instance made in warm-up stays free for the
/// next run) and the create-plus-destroy case, on `h100-80gb:1`. Returns the table rows.
pub fn docker(
    target: &DockerTarget,
    m: &Machine,
    pairs: usize,
    warmup: usize,
) -> Result<Vec<String>> {
    let mut rows = Vec::new();
    for keep in [false, true] {
        let launch = || {
            let mut c = m.migrun();
            target.env(&mut c);
            c.args(["--inject", "env", "--docker"])
                .arg(&target.cli)
                .args(["--profile", "1g.10gb"]);
            if keep {
                c.arg("--keep");
            }
            c.args(["--rm", &target.image, "true"]);
            timed(&mut c)
        };
        let base = || {
            let mut c = Command::new(&target.cli);
            target.env(&mut c);
            c.args(["run", "--rm", "-e"])
                .arg("NVIDIA_VISIBLE_DEVICES=MIG-5c1fd3bf-0000-5000-8000-000000000000")
                .args([&target.image, "true"]);
            timed(&mut c)
        };
        let p = run_pairs(pairs, warmup, launch, base)?;
        let case = if keep {
            m.expect("after the docker reuse runs", 0, 1)?;
            "docker: reuse a free 1g.10gb (--keep)"
        } else {
            m.expect("after the docker create+destroy runs", 0, 0)?;
            "docker: create + destroy 1g.10gb"
        };
        rows.push(p.row(case, m.backend.name()));
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// runc: hooks and the shim
// ---------------------------------------------------------------------------------------------

/// runc with a private `--root`, and a busybox bundle (its `rootfs` is shared by every bundle made
/// here, through an absolute `root.path`).
pub struct RuncTarget {
    pub runc: PathBuf,
    pub root: PathBuf,
    pub bundle: PathBuf,
}

static RUN_ID: AtomicUsize = AtomicUsize::new(0);

/// `migrun-runtime` in the machine's dir: a symlink to migrun, as packaged (made once).
fn shim_link(m: &Machine) -> Result<PathBuf> {
    let link = m.dir().join("migrun-runtime");
    if fs::symlink_metadata(&link).is_err() {
        symlink(&m.migrun, &link).map_err(failed)?;
    }
    Ok(link)
}

/// `migrun-runtime --root R run --bundle B ID` with config `cfg`: the shim as an engine calls it.
fn shim_command(m: &Machine, link: &Path, cfg: &Path, t: &RuncTarget, bundle: &Bundle) -> Command {
    let mut c = m.command(link);
    c.env("MIGRUN_CONFIG", cfg)
        .arg("--root")
        .arg(&t.root)
        .arg("run")
        .arg("--bundle")
        .arg(&bundle.dir)
        .arg(run_id());
    c
}

pub fn run_id() -> String {
    format!(
        "ovh-{}-{}",
        std::process::id(),
        RUN_ID.fetch_add(1, Ordering::SeqCst)
    )
}

/// A bundle dir under `dir/name` whose config.json is `spec` (kept as bytes, to be restored before
/// every run: migrun's prestart hook rewrites config.json, and a used marker must not reach the
/// next run).
pub struct Bundle {
    pub dir: PathBuf,
    config: Vec<u8>,
}

impl Bundle {
    pub fn new(
        base: &RuncTarget,
        dir: &Path,
        name: &str,
        f: impl FnOnce(&mut serde_json::Value),
    ) -> Result<Bundle> {
        let text = fs::read(base.bundle.join("config.json")).map_err(failed)?;
        let mut spec: serde_json::Value = serde_json::from_slice(&text).map_err(failed)?;
        let rootfs = fs::canonicalize(base.bundle.join("rootfs")).map_err(failed)?;
        spec["root"]["path"] = serde_json::json!(rootfs);
        spec["process"]["args"] = serde_json::json!(["true"]);
        f(&mut spec);
        let dir = dir.join(name);
        fs::create_dir_all(&dir).map_err(failed)?;
        let b = Bundle {
            dir,
            config: serde_json::to_vec_pretty(&spec).map_err(failed)?,
        };
        b.restore()?;
        Ok(b)
    }

    pub fn restore(&self) -> Result<()> {
        migrun::statedir::write_atomic(&self.dir.join("config.json"), &self.config, 0o644)
            .map_err(failed)
    }

    /// `<program> --root R run --bundle B <fresh id>`, timed, config.json restored first.
    pub fn run(&self, m: &Machine, program: &Path, root: &Path) -> Result<Duration> {
        self.restore()?;
        let mut c = m.command(program);
        c.arg("--root")
            .arg(root)
            .arg("run")
            .arg("--bundle")
            .arg(&self.dir)
            .arg(run_id());
        timed(&mut c)
    }
}

pub fn hook(m: &Machine, stage: &str, extra_env: &[String]) -> serde_json::Value {
    let mut env: Vec<String> = m.env().iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.extend_from_slice(extra_env);
    serde_json::json!({
        "path": m.migrun,
        "args": ["migrun", "hook", stage],
        "env": env,
    })
}

/// runc hooks: a bundle annotated `migrun.profile=1g.10gb` with migrun's prestart+poststop hooks
/// against the same bundle without hooks; create+destroy, then reuse (`release = "keep"`).
pub fn runc_hooks(t: &RuncTarget, m: &Machine, pairs: usize, warmup: usize) -> Result<Vec<String>> {
    let plain = Bundle::new(t, m.dir(), "bundle-plain", |_| {})?;
    let keep_cfg = m.config("keep.toml", "release = \"keep\"\n")?;
    // `runc run` of `bundle` paired against the same run of the plain bundle.
    let against_plain = |bundle: &Bundle| {
        run_pairs(
            pairs,
            warmup,
            || bundle.run(m, &t.runc, &t.root),
            || plain.run(m, &t.runc, &t.root),
        )
    };
    let mut rows = Vec::new();
    for keep in [false, true] {
        let extra = if keep {
            vec![format!("MIGRUN_CONFIG={}", keep_cfg.display())]
        } else {
            Vec::new()
        };
        let name = if keep {
            "bundle-hooks-keep"
        } else {
            "bundle-hooks"
        };
        let hooked = Bundle::new(t, m.dir(), name, |s| {
            s["annotations"] = serde_json::json!({"migrun.profile": "1g.10gb"});
            s["hooks"] = serde_json::json!({
                "prestart": [hook(m, "prestart", &extra)],
                "poststop": [hook(m, "poststop", &extra)],
            });
        })?;
        let p = against_plain(&hooked)?;
        let case = if keep {
            m.expect("after the runc hook reuse runs", 0, 1)?;
            "runc + hooks: reuse a free 1g.10gb (release = keep)"
        } else {
            m.expect("after the runc hook create+destroy runs", 0, 0)?;
            "runc + hooks: create + destroy 1g.10gb"
        };
        rows.push(p.row(case, m.backend.name()));
    }
    // Two floors under both rows. `migrun --version` as both hooks: runc's own cost of running a
    // hook plus one migrun process start per hook, with no migrun work at all. `true` as both
    // hooks: what runc charges for any hook program; the difference is starting migrun instead.
    // Hooks need an absolute path.
    let true_bin = migrun::engine::docker::find_executable(
        "true".as_ref(),
        std::env::var_os("PATH").as_deref(),
    )
    .ok_or_else(|| OverheadError::Input("`true` not found on $PATH (coreutils)".into()))?;
    let floors = [
        (
            "bundle-hooks-floor",
            serde_json::json!({"path": m.migrun, "args": ["migrun", "--version"]}),
            "floor: runc + two hooks that only start migrun (`migrun --version`)",
        ),
        (
            "bundle-hooks-true",
            serde_json::json!({"path": true_bin, "args": ["true"]}),
            "floor: runc + two hooks running `true` (any hook program)",
        ),
    ];
    for (name, start_only, case) in floors {
        let floor = Bundle::new(t, m.dir(), name, |s| {
            s["hooks"] =
                serde_json::json!({"prestart": [start_only.clone()], "poststop": [start_only]});
        })?;
        rows.push(against_plain(&floor)?.row(case, m.backend.name()));
    }
    Ok(rows)
}

/// The shim: `migrun-runtime --root R run --bundle B ID` (a symlink to migrun, as packaged) of a
/// bundle that asks for nothing, against `runc --root R run --bundle B ID`.
pub fn shim(t: &RuncTarget, m: &Machine, pairs: usize, warmup: usize) -> Result<Vec<String>> {
    let plain = Bundle::new(t, m.dir(), "bundle-shim", |_| {})?;
    let link = shim_link(m)?;
    // The shim must exec runc itself, never another runtime found on PATH.
    let cfg = m.config(
        "shim.toml",
        &format!("runtime = \"{}\"\n", t.runc.display()),
    )?;
    let shim_run = || {
        plain.restore()?;
        timed(&mut shim_command(m, &link, &cfg, t, &plain))
    };
    let p = run_pairs(pairs, warmup, shim_run, || plain.run(m, &t.runc, &t.root))?;
    if plain.config != fs::read(plain.dir.join("config.json")).map_err(failed)? {
        return Err(failed(
            "the shim changed the config.json of a container that asked for nothing",
        ));
    }
    m.expect("after the shim runs", 0, 0)?;
    // The floor any exec'd helper pays: starting the migrun binary at all (`--version` parses
    // its flags and exits), against starting runc the same way.
    let floor = run_pairs(
        pairs,
        warmup,
        || timed(m.migrun().arg("--version")),
        || timed(m.command(&t.runc).arg("--version")),
    )?;
    Ok(vec![
        p.row("shim: no profile asked", m.backend.name()),
        floor.row(
            "process start: `migrun --version` vs `runc --version`",
            m.backend.name(),
        ),
    ])
}

// ---------------------------------------------------------------------------------------------
// Contention
// ---------------------------------------------------------------------------------------------

/// What the alloc/release loops measured.
#[derive(Debug, Default)]
pub struct Contention {
    pub alloc_ms: Vec<f64>,
    pub release_ms: Vec<f64>,
    pub errors: Vec<String>,
    pub elapsed: Duration,
}

/// Header of [`Contention::rows`] tables.
pub const CONTENTION_HEADER: &str = "| backend | loops | seconds | op | count | p50 (ms) | p99 (ms) | ops/s | errors |\n|---|---|---|---|---|---|---|---|---|";

impl Contention {
    pub fn rows(&self, backend: &str, loops: usize) -> Vec<String> {
        let s = self.elapsed.as_secs_f64();
        let row = |op: &str, xs: &[f64], errs: usize| {
            format!(
                "| {backend} | {loops} | {s:.1} | {op} | {} | {:.2} | {:.2} | {:.1} | {errs} |",
                xs.len(),
                quantile(xs, 0.5),
                quantile(xs, 0.99),
                xs.len() as f64 / s
            )
        };
        let mut all = self.alloc_ms.clone();
        all.extend_from_slice(&self.release_ms);
        vec![
            row("alloc", &self.alloc_ms, 0),
            row("release", &self.release_ms, 0),
            row("alloc + release", &all, self.errors.len()),
        ]
    }
}

/// `loops` threads, each allocating `1g.10gb` (a manual lease) and releasing it by lease id, as
/// processes, for `secs` seconds. Every loop finishes its cycle, so no lease is left.
pub fn contention(m: &Machine, loops: usize, secs: f64) -> Result<Contention> {
    contention_of(m, loops, secs, "1g.10gb")
}

/// [`contention`] with loops asking for `profile` (e.g. a compute-instance slice, `1c.3g.40gb`).
pub fn contention_of(m: &Machine, loops: usize, secs: f64, profile: &str) -> Result<Contention> {
    let out = Mutex::new(Contention::default());
    let deadline = Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..loops {
            s.spawn(|| {
                while t0.elapsed() < deadline {
                    let a0 = Instant::now();
                    let r = m.migrun().args(["alloc", "--profile", profile]).output();
                    let alloc = a0.elapsed();
                    let lease = match r {
                        Ok(o) if o.status.success() => {
                            let text = String::from_utf8_lossy(&o.stdout).into_owned();
                            // "MIG-… lease N"
                            match text.split_whitespace().nth(2) {
                                Some(id) => id.to_string(),
                                None => {
                                    out.lock()
                                        .unwrap()
                                        .errors
                                        .push(format!("alloc printed {text:?}"));
                                    continue;
                                }
                            }
                        }
                        Ok(o) => {
                            out.lock().unwrap().errors.push(format!(
                                "alloc: {}",
                                String::from_utf8_lossy(&o.stderr).trim()
                            ));
                            continue;
                        }
                        Err(e) => {
                            out.lock().unwrap().errors.push(format!("alloc: {e}"));
                            continue;
                        }
                    };
                    let r0 = Instant::now();
                    let r = m.migrun().args(["release", &lease]).output();
                    let release = r0.elapsed();
                    let mut o = out.lock().unwrap();
                    o.alloc_ms.push(alloc.as_secs_f64() * 1e3);
                    match r {
                        Ok(r) if r.status.success() => {
                            o.release_ms.push(release.as_secs_f64() * 1e3)
                        }
                        Ok(r) => o.errors.push(format!(
                            "release {lease}: {}",
                            String::from_utf8_lossy(&r.stderr).trim()
                        )),
                        Err(e) => o.errors.push(format!("release {lease}: {e}")),
                    }
                }
            });
        }
    });
    let mut c = out.into_inner().unwrap();
    c.elapsed = t0.elapsed();
    m.expect("after the contention loops", 0, 0)?;
    Ok(c)
}

/// The text block printed for a group of paired rows.
pub fn paired_table(title: &str, rows: &[String]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{title}\n\n{PAIRED_HEADER}");
    for r in rows {
        let _ = writeln!(s, "{r}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_between_order_statistics() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.99), 4.96);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn the_median_interval_takes_order_statistics_around_the_middle() {
        // n = 200: j = floor((200 - 1.96 * 14.14) / 2) = 86, so x(87) and x(114) (1-based).
        let xs: Vec<f64> = (1..=200).rev().map(f64::from).collect();
        assert_eq!(median_ci95(&xs), Some((87.0, 114.0)));
        // n = 30: j = floor((30 - 10.74) / 2) = 9, so x(10) and x(21).
        let xs: Vec<f64> = (1..=30).map(f64::from).collect();
        assert_eq!(median_ci95(&xs), Some((10.0, 21.0)));
        assert_eq!(median_ci95(&[1.0, 2.0, 3.0]), None);
        let p = Paired {
            migrun: vec![2.0; 3],
            base: vec![1.0; 3],
        };
        assert!(
            p.row("c", "sim").contains("| +1.00 | n/a |"),
            "{}",
            p.row("c", "sim")
        );
    }

    #[test]
    fn pairs_alternate_and_skip_warmup() {
        let order = std::cell::RefCell::new(Vec::new());
        let n = std::cell::Cell::new(0u64);
        let mk = |tag: char| {
            let order = &order;
            let n = &n;
            move || {
                order.borrow_mut().push(tag);
                n.set(n.get() + 1);
                Ok(Duration::from_millis(if tag == 'm' { 12 } else { 10 }))
            }
        };
        let p = run_pairs(3, 1, mk('m'), mk('b')).unwrap();
        assert_eq!(
            order.into_inner(),
            vec!['m', 'b', 'b', 'm', 'm', 'b', 'b', 'm']
        );
        assert_eq!(p.migrun.len(), 3);
        assert_eq!(median(&p.diffs()), 2.0);
        assert!((median(&p.ratios()) - 1.2).abs() < 1e-12);
        assert!(p
            .row("c", "sim")
            .starts_with("| c | sim | 3 | 10.00 | 12.00 | +2.00 | +2.00 | n/a | 1.200 | 1.200 |"));
    }
}
