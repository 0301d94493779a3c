//! Command handlers: turn parsed CLI args into library calls and print results; logic beyond wiring belongs in the rooms they call.

mod alloc;
mod cdi;
mod exit_codes;
mod handback;
pub use exit_codes::exit_code_for;
pub mod delegation;
mod finisher;
mod hook;
pub use hook::shim_fast_path;
mod launch;
pub(crate) mod list;
mod mig;
mod ops;
mod session;
mod sharing;
mod sim;

use crate::cli::{Cli, Command, GlobalArgs};
use crate::config::Config;
use crate::gpu::sim::{SimBackend, SimSpec};
use crate::gpu::{nvml::NvmlBackend, Backend, GpuInfo};
use crate::statedir::{StateDir, DEFAULT_STATE_DIR};
use anyhow::{Context, Result};
use clap::CommandFactory;
use std::path::PathBuf;

/// Bad input found while wiring a command (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("bad --gpu {given:?}: expected a GPU index (0..={max}) or a GPU-… UUID of this machine; see `migrun status`")]
    BadGpu { given: String, max: u32 },
    #[error("no GPU matches --gpu {given:?}; this machine has: {known}")]
    UnknownGpu { given: String, known: String },
    #[error("{0}")]
    Other(String),
}

impl crate::exit::ExitCodeOf for InputError {
    fn exit_code(&self) -> i32 {
        crate::exit::USAGE
    }
}

/// Everything a handler needs: the global flags, the policy, and lazily the state dir and backend.
pub struct Ctx {
    pub global: GlobalArgs,
    pub config: Config,
}

impl Ctx {
    pub fn new(global: GlobalArgs) -> Result<Ctx> {
        let config = Config::load(global.config.as_deref())?;
        Ok(Ctx { global, config })
    }

    /// `--state-dir` when given; otherwise `/run/migrun` for real GPUs, and for `--simulate` a
    /// directory of that spec's own ([`default_sim_dir`]), so trying a second model just works and
    /// a simulated machine never shares records with the real one.
    pub fn state_dir_path(&self) -> Result<PathBuf> {
        if let Some(d) = &self.global.state_dir {
            return Ok(d.clone());
        }
        match self.sim_spec()? {
            Some(spec) => Ok(default_sim_dir(&spec, nix::unistd::geteuid().as_raw())?),
            None => Ok(PathBuf::from(DEFAULT_STATE_DIR)),
        }
    }

    /// Open (and check) the state dir, creating it when missing.
    pub fn state_dir(&self) -> Result<StateDir> {
        Ok(StateDir::open(self.state_dir_path()?)?)
    }

    /// The state dir for a read-only command: checked when it exists, `None` when it does not.
    /// Nothing is created: looking must leave no trace (`migrun status` on a host without a
    /// driver used to create `/run/migrun` before failing).
    pub fn existing_state_dir(&self) -> Result<Option<StateDir>> {
        let path = self.state_dir_path()?;
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            _ => Ok(Some(StateDir::open(path)?)),
        }
    }

    /// The backend for a read-only command ([`Ctx::existing_state_dir`]): a simulated machine
    /// is read from the state dir when one was saved there, else shown fresh from the spec and
    /// not saved; the driver backend reads profile tables from NVML and keeps no copy.
    pub fn read_backend(&self) -> Result<Box<dyn Backend>> {
        if let Some(spec) = self.sim_spec()? {
            let path = self.state_dir_path()?;
            return Ok(Box::new(SimBackend::open_read_only(&path, spec)?));
        }
        Ok(Box::new(NvmlBackend::open_default()?))
    }

    /// The parsed `--simulate` spec, if any.
    pub fn sim_spec(&self) -> Result<Option<SimSpec>> {
        match &self.global.simulate {
            None => Ok(None),
            Some(s) => Ok(Some(s.parse::<SimSpec>()?)),
        }
    }

    /// The hardware backend over an opened state dir: the simulator only when asked for, the driver
    /// otherwise. Only the session ([`Ctx::session`]) builds one for a command that changes things.
    /// Refuses a state dir that is for another kind of backend than this invocation's, without
    /// opening the backend (what [`Ctx::backend_in`] checks first).
    pub(crate) fn check_backend_kind(&self, dir: &StateDir) -> Result<()> {
        let kind = match self.sim_spec()? {
            Some(spec) => Self::sim_kind(&spec),
            None => crate::gpu::BackendKind::Nvml,
        };
        Ok(crate::alloc::binding::check_kind(dir, &kind)?)
    }

    pub(crate) fn backend_in(&self, dir: &StateDir) -> Result<Box<dyn Backend>> {
        // Refused before the simulator writes its machine into a state dir that is for another one.
        self.check_backend_kind(dir)?;
        if let Some(spec) = self.sim_spec()? {
            return Ok(Box::new(SimBackend::open(dir, spec)?));
        }
        let mut backend = NvmlBackend::open_default()?;
        // Profile tables are kept in the state dir between processes (see `keep_tables_in`).
        backend.keep_tables_in(dir.clone());
        Ok(Box::new(backend))
    }

    /// The simulator backend, refusing without `--simulate` (for `migrun sim ...`).
    pub fn sim_backend(&self) -> Result<SimBackend> {
        let spec = self.sim_spec()?.ok_or_else(|| {
            InputError::Other(
                "`migrun sim` needs --simulate SPEC (or MIGRUN_SIMULATE): it only controls simulated GPUs".into(),
            )
        })?;
        let dir = self.state_dir()?;
        crate::alloc::binding::check_kind(&dir, &Self::sim_kind(&spec))?;
        Ok(SimBackend::open(&dir, spec)?)
    }

    fn sim_kind(spec: &SimSpec) -> crate::gpu::BackendKind {
        crate::gpu::BackendKind::Simulator {
            spec: spec.to_string(),
        }
    }
}

/// Where a simulated machine lives when no `--state-dir` is given: one directory per canonical
/// spec (`h100-80gb` and `h100-80gb:1` share one), under `/run/migrun-sim` for root and under the
/// user's runtime dir otherwise (`$XDG_RUNTIME_DIR`, else `/tmp/migrun-UID`; the state dir's
/// owner and mode checks refuse one another user planted there).
pub fn default_sim_dir(spec: &SimSpec, euid: u32) -> Result<PathBuf, InputError> {
    let canonical = spec.to_string();
    let slug: String = canonical
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' => c,
            _ => '_',
        })
        .collect();
    if slug.len() > 200 {
        return Err(InputError::Other(format!(
            "--simulate spec {canonical} is too long to name its default state dir; pass --state-dir DIR"
        )));
    }
    let base = if euid == 0 {
        PathBuf::from("/run/migrun-sim")
    } else {
        match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
            Some(d) if d.is_absolute() && d.is_dir() => d.join("migrun-sim"),
            _ => PathBuf::from(format!("/tmp/migrun-{euid}")).join("sim"),
        }
    };
    Ok(base.join(slug))
}

/// Resolve a `--gpu` value (index or GPU-UUID) against the machine's GPUs.
pub fn select_gpu(given: &str, gpus: &[GpuInfo]) -> Result<u32, InputError> {
    let t = given.trim();
    if let Some(g) = gpus.iter().find(|g| g.uuid.eq_ignore_ascii_case(t)) {
        return Ok(g.index);
    }
    let max = gpus.len().saturating_sub(1) as u32;
    match t.parse::<u32>() {
        Ok(i) if gpus.iter().any(|g| g.index == i) => Ok(i),
        Ok(_) => Err(InputError::BadGpu {
            given: given.into(),
            max,
        }),
        Err(_) if t.starts_with("GPU-") => Err(InputError::UnknownGpu {
            given: given.into(),
            known: gpus
                .iter()
                .map(|g| format!("{} {}", g.index, g.uuid))
                .collect::<Vec<_>>()
                .join(", "),
        }),
        Err(_) => Err(InputError::BadGpu {
            given: given.into(),
            max,
        }),
    }
}

/// Run a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    let Cli { global, command } = cli;
    // Generated documentation needs no config, state or GPU.
    match &command {
        // Both are rendered into memory first: clap_complete panics when its writer fails, and
        // a closed pipe must end quietly (crate::out).
        Command::Completions(a) => {
            let mut buf = Vec::new();
            clap_complete::generate(a.shell, &mut Cli::command(), "migrun", &mut buf);
            crate::out::write_bytes(&buf)?;
            return Ok(0);
        }
        Command::Man => {
            let mut buf = Vec::new();
            crate::man::render(&mut buf).context("rendering the man page")?;
            crate::out::write_bytes(&buf)?;
            return Ok(0);
        }
        _ => {}
    }
    // Before the config is read: under sudo, a path the user names is refused, not opened as root.
    let env: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    delegation::check(&crate::caller::Caller::current(), &global, &command, &env)?;
    let ctx = Ctx::new(global)?;
    // Commands that change GPUs or leases need root on real GPUs; say so before touching anything
    // (the launcher, the hooks and the shim check at their own first mutating step).
    let mutating = match &command {
        Command::Alloc(_) => Some("`migrun alloc`"),
        Command::Release(_) => Some("`migrun release`"),
        Command::Gc(_) => Some("`migrun gc`"),
        Command::Mig(_) => Some("`migrun mig`"),
        Command::Teardown(_) => Some("`migrun teardown`"),
        Command::RefillWarm => Some("`migrun __refill-warm`"),
        _ => None,
    };
    if let Some(what) = mutating {
        crate::caller::require_root(what, ctx.global.simulate.is_some())?;
    }
    match command {
        Command::Run(a) => launch::run(&ctx, a),
        Command::Profiles(a) if a.ci => list::ci_profiles(&ctx, &a.list),
        Command::Profiles(a) => list::profiles(&ctx, &a.list),
        Command::Placements(a) => list::placements(&ctx, &a),
        Command::Status(a) => list::status(&ctx, &a),
        Command::Alloc(a) => alloc::alloc(&ctx, &a),
        Command::Release(a) if a.if_handover_pending => handback::release_if_pending(&ctx, &a),
        Command::Release(a) => alloc::release(&ctx, &a),
        Command::Gc(a) => alloc::gc(&ctx, &a),
        Command::Hook(a) => hook::hook(&ctx, &a),
        Command::Runtime(a) => hook::runtime(&ctx, a),
        Command::Mig(a) => mig::mig(&ctx, &a),
        Command::Teardown(a) => mig::teardown(&ctx, &a),
        Command::Usage(a) => ops::usage(&ctx, &a),
        Command::Metrics => ops::metrics(&ctx),
        Command::Sim(a) => sim::sim(&ctx, &a),
        Command::Watch(a) => launch::watch(&ctx, &a),
        Command::FinishRelease(a) => finisher::finish_release(&ctx, &a),
        Command::RefillWarm => finisher::refill_warm(&ctx),
        Command::Completions(_) | Command::Man => unreachable!("handled above"),
    }
}
