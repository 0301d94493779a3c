//! The fake NVML library for integration tests: builds `libnvidia_ml.so` once and runs `migrun` (or the NVML backend in-process) against a private simulated machine; it must not touch a real driver or the host's state.
//!
//! ```ignore
//! mod common;
//! use common::fake_nvml::FakeNvml;
//!
//! let fake = FakeNvml::new("h100-80gb:2");           // two simulated H100s, state in a temp dir
//! fake.command().args(["status", "--json"]).assert().success();
//! let fake = FakeNvml::new("h100-80gb").fail("nvmlGpuInstanceDestroy:IN_USE:1");
//! fake.update(|m| m.set_processes(0, 1, 2)).unwrap(); // tamper with the machine directly
//! let mut b = fake.backend();                         // in-process NvmlBackend (serialised, see below)
//! ```
//!
//! The library is built with `cargo build -p fake-nvml` into the target dir this test binary
//! lives in, once per test binary. It panics (never skips) when it cannot be built or found.
#![allow(dead_code)]

use migrun::gpu::nvml::NvmlBackend;
use migrun::gpu::sim::{SimMachine, SimSpec, SimStore};
use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use std::sync::{Mutex, MutexGuard, OnceLock};
use tempfile::TempDir;

/// Variables the fake library reads; `command()` and `backend()` clear any the test did not set,
/// so an outer environment cannot leak into a test.
pub const FAKE_VARS: &[&str] = &[
    "MIGRUN_FAKE_NVML",
    "MIGRUN_FAKE_NVML_STATE",
    "MIGRUN_FAKE_NVML_FAIL",
    "MIGRUN_FAKE_NVML_COUNT",
    "MIGRUN_FAKE_NVML_NONROOT",
    "MIGRUN_FAKE_NVML_NOMIG",
];

const SETUP_HINT: &str =
    "the fake NVML library is part of this workspace (tests/fake-nvml); check that the workspace \
     builds (`cargo build -p fake-nvml`) and that scripts/setup-test-host.sh ran on this host";

/// The path of the fake `libnvidia_ml.so`, built on first use.
pub fn fake_nvml_lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(build_fake_nvml)
}

fn build_fake_nvml() -> PathBuf {
    // A test binary lives in <target>[/<triple>]/<profile>/deps/; the library goes to <profile>/.
    let exe = std::env::current_exe().expect("the test binary's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()))
        .to_path_buf();
    let profile = profile_dir
        .file_name()
        .and_then(|s| s.to_str())
        .expect("profile dir name")
        .to_string();
    let above = profile_dir.parent().expect("target dir").to_path_buf();
    // Cargo marks the target dir root with CACHEDIR.TAG; one level higher means a --target triple dir.
    let (target_dir, triple) = if above.join("CACHEDIR.TAG").exists() {
        (above, None)
    } else {
        let triple = above.file_name().and_then(|s| s.to_str()).map(String::from);
        (above.parent().expect("target dir").to_path_buf(), triple)
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = StdCommand::new(&cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "-p", "fake-nvml", "--lib"])
        .env("CARGO_TARGET_DIR", &target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    if let Some(t) = &triple {
        cmd.args(["--target", t]);
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {} to build the fake NVML library: {e}; {SETUP_HINT}",
            Path::new(&cargo).display()
        )
    });
    if !out.status.success() {
        panic!(
            "building the fake NVML library failed (cargo build -p fake-nvml, target dir {}):\n{}\n{SETUP_HINT}",
            target_dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let so = profile_dir.join("libnvidia_ml.so");
    assert!(
        so.is_file(),
        "cargo built fake-nvml but {} is missing; {SETUP_HINT}",
        so.display()
    );
    so
}

/// A private simulated machine behind the fake NVML library.
pub struct FakeNvml {
    dir: TempDir,
    spec: SimSpec,
    vars: BTreeMap<String, String>,
}

impl FakeNvml {
    /// A fresh machine of `spec` (the `--simulate` grammar, e.g. `h100-80gb:2` or `a30-24gb:1:mig-off`).
    pub fn new(spec: &str) -> FakeNvml {
        let parsed: SimSpec = spec
            .parse()
            .unwrap_or_else(|e| panic!("bad fake NVML spec {spec:?}: {e}"));
        let dir = tempfile::Builder::new()
            .prefix("migrun-fake-nvml")
            .tempdir()
            .expect("temp dir for the fake NVML machine");
        let mut vars = BTreeMap::new();
        vars.insert("MIGRUN_FAKE_NVML".to_string(), spec.to_string());
        let state = dir.path().join("fake-nvml.json");
        vars.insert(
            "MIGRUN_FAKE_NVML_STATE".to_string(),
            state.display().to_string(),
        );
        // Fake GPUs have the same UUIDs in every test: each machine claims its GPUs in its own place, not in
        // the host's /run/migrun-gpus (debug builds honour this; see alloc::binding).
        vars.insert(
            migrun::alloc::binding::CLAIMS_ENV.to_string(),
            dir.path().join("gpu-claims").display().to_string(),
        );
        // The driver's /proc files for these GPUs (what the simulator serves as its host facts), under
        // a host root of the machine's own: the NVML backend reads them there (debug builds honour
        // MIGRUN_HOST_ROOT), and writes lease specs to `<host root>/var/run/cdi`, not the host's.
        let host = dir.path().join("host");
        for (rel, text) in migrun::gpu::sim::procfs::files(&SimMachine::new(&parsed)) {
            let p = host.join(rel);
            std::fs::create_dir_all(p.parent().expect("a file in a dir"))
                .and_then(|()| std::fs::write(&p, text))
                .unwrap_or_else(|e| panic!("laying out the fake /proc at {}: {e}", p.display()));
        }
        vars.insert(
            migrun::gpu::hostfacts::HOST_ROOT_ENV.to_string(),
            host.display().to_string(),
        );
        FakeNvml {
            dir,
            spec: parsed,
            vars,
        }
    }

    /// Fault injection: `SYMBOL:CODE[:USES],...` (tests/fake-nvml/README.md), e.g.
    /// `nvmlGpuInstanceCreateComputeInstance:INSUFFICIENT_RESOURCES:1`.
    pub fn fail(self, rules: &str) -> FakeNvml {
        self.with_var("MIGRUN_FAKE_NVML_FAIL", rules)
    }

    /// Count calls of these symbols (comma-separated, `*` = all), readable with [`FakeNvml::calls`].
    pub fn count(self, symbols: &str) -> FakeNvml {
        self.with_var("MIGRUN_FAKE_NVML_COUNT", symbols)
    }

    /// Behave as for a non-root caller: GI/CI management and MIG mode changes answer NO_PERMISSION.
    pub fn nonroot(self) -> FakeNvml {
        self.with_var("MIGRUN_FAKE_NVML_NONROOT", "1")
    }

    /// Present these GPUs as not MIG-capable (GetMigMode and every MIG call answer NOT_SUPPORTED).
    pub fn nomig(self, gpus: &[u32]) -> FakeNvml {
        let list: Vec<String> = gpus.iter().map(|g| g.to_string()).collect();
        self.with_var("MIGRUN_FAKE_NVML_NOMIG", &list.join(","))
    }

    /// Set any other variable for `command()`, `backend()` and `env()`.
    pub fn with_var(mut self, key: &str, value: &str) -> FakeNvml {
        self.vars.insert(key.to_string(), value.to_string());
        self
    }

    /// The fake library (built on first use).
    pub fn lib(&self) -> &'static Path {
        fake_nvml_lib()
    }

    /// The temp dir holding everything of this machine.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The simulated machine's state file (MIGRUN_FAKE_NVML_STATE).
    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("fake-nvml.json")
    }

    /// The host root the NVML backend reads the driver's /proc files under (MIGRUN_HOST_ROOT).
    pub fn host_root(&self) -> PathBuf {
        self.dir.path().join("host")
    }

    /// Where the NVML backend writes lease specs by default: `/var/run/cdi` under [`FakeNvml::host_root`].
    pub fn cdi_dir(&self) -> PathBuf {
        self.host_root().join("var/run/cdi")
    }

    /// The private migrun state dir `command()` uses (MIGRUN_STATE_DIR).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("migrun-state")
    }

    /// The simulation spec.
    pub fn spec(&self) -> &SimSpec {
        &self.spec
    }

    /// What a process needs to see this machine through the fake library: MIGRUN_NVML_LIB,
    /// MIGRUN_FAKE_NVML, MIGRUN_FAKE_NVML_STATE, plus any fault/counter/root/no-MIG settings.
    /// (Not MIGRUN_STATE_DIR: pass `state_dir()` yourself where a hook or runtime needs it.)
    pub fn env(&self) -> Vec<(String, String)> {
        let mut v = vec![(
            "MIGRUN_NVML_LIB".to_string(),
            self.lib().display().to_string(),
        )];
        v.extend(self.vars.iter().map(|(k, v)| (k.clone(), v.clone())));
        v
    }

    /// The `migrun` binary with `env()`, a private state dir and no `--simulate`.
    pub fn command(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::cargo_bin("migrun").expect("the migrun binary");
        for k in FAKE_VARS {
            c.env_remove(k);
        }
        c.env_remove("MIGRUN_SIMULATE").env_remove("MIGRUN_CONFIG");
        c.envs(self.env());
        c.env("MIGRUN_STATE_DIR", self.state_dir());
        c
    }

    /// Run `f` on the simulated machine under its lock (e.g. add processes, reset a GPU).
    pub fn update<R>(&self, f: impl FnOnce(&mut SimMachine) -> R) -> R {
        SimStore::new(self.state_file())
            .update(&self.spec, f)
            .unwrap_or_else(|e| panic!("fake NVML machine: {e}"))
    }

    /// A copy of the simulated machine as it is now.
    pub fn machine(&self) -> SimMachine {
        self.update(|m| m.clone())
    }

    /// Calls counted so far of `symbol` (symbols named in `fail` or `count` rules only).
    pub fn calls(&self, symbol: &str) -> u64 {
        let path = PathBuf::from(format!("{}.calls", self.state_file().display()));
        match std::fs::read(&path) {
            Ok(bytes) => {
                let map: BTreeMap<String, u64> = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                map.get(symbol).copied().unwrap_or(0)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }

    /// Open the NVML backend in this process on the fake library.
    ///
    /// The library reads its configuration from the process environment at `nvmlInit`, and one
    /// process has one environment, so in-process sessions are serialised: the returned guard
    /// holds a process-wide lock until dropped. Panics when the backend cannot be opened.
    pub fn backend(&self) -> InProcess {
        self.try_backend()
            .unwrap_or_else(|e| panic!("opening the NVML backend on the fake library: {e}"))
    }

    /// Like [`FakeNvml::backend`], returning the open error instead of panicking.
    pub fn try_backend(&self) -> Result<InProcess, migrun::gpu::GpuError> {
        let lib = self.lib();
        let guard = env_lock();
        for k in FAKE_VARS {
            std::env::remove_var(k);
        }
        for (k, v) in self.env() {
            std::env::set_var(k, v);
        }
        let backend = NvmlBackend::open(lib.to_path_buf())?;
        Ok(InProcess {
            backend,
            _guard: guard,
        })
    }
}

fn env_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A test that panicked while holding the lock left nothing half-done in the environment we rely on.
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// An in-process NVML backend on the fake library; derefs to [`NvmlBackend`].
pub struct InProcess {
    // Field order matters: the backend (and its nvmlShutdown) goes before the lock is released.
    backend: NvmlBackend,
    _guard: MutexGuard<'static, ()>,
}

impl Deref for InProcess {
    type Target = NvmlBackend;
    fn deref(&self) -> &NvmlBackend {
        &self.backend
    }
}

impl DerefMut for InProcess {
    fn deref_mut(&mut self) -> &mut NvmlBackend {
        &mut self.backend
    }
}
