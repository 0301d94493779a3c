//! Clap definitions and help text for every command; it must not touch the system or hold validated settings (see `config`).
//!
//! `migrun [launcher flags] [docker run options] IMAGE [CMD...]` has no subcommand word, so
//! [`normalize_args`] inserts `run` when the first word after the global flags is not a subcommand,
//! and [`split_launcher_args`] separates migrun's own launcher flags from docker's.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Examples:
  migrun --profile 3g.40gb -it --rm nvcr.io/nvidia/pytorch:24.05-py3 python
  migrun --profile 1g.10gb --wait=300 -d -p 8888:8888 jupyter/base-notebook
  migrun alloc --profile 3g.40gb --json        # for JupyterHub spawners and scripts
  migrun release 7
  migrun --simulate h100-80gb:8 status         # try it without a GPU

Exit codes: 0 ok; 1 operation failed; 2 bad input or usage; 3 no room for the profile;
4 needs privilege. The launcher exits with the container's own code (125-127 for docker's failures).";

// The launcher's synopsis, shared by `--help`, the man page and (by a test) the README, so that
// none of them can lose a flag the others have. A macro, because `concat!` takes no consts.
macro_rules! launcher_synopsis {
    () => {
        "migrun [GLOBAL OPTIONS] [--profile P | --min-mem SIZE] [--gpu N] [--wait[=S]] [--keep] [--inject MODE] [--dry-run] [--docker PATH] [docker run options] IMAGE [CMD...]"
    };
}
pub const LAUNCHER_SYNOPSIS: &str = launcher_synopsis!();
const USAGE: &str = concat!(
    launcher_synopsis!(),
    "\n       migrun [GLOBAL OPTIONS] <COMMAND>"
);

/// migrun: give a container a MIG slice of an NVIDIA GPU, and give it back when the container ends.
#[derive(Debug, Parser)]
#[command(
    name = "migrun",
    version,
    about,
    override_usage = USAGE,
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Args, Clone, Default)]
pub struct GlobalArgs {
    /// Use simulated GPUs instead of the driver: MODEL[:COUNT][:mig-off],... e.g. h100-80gb:8
    #[arg(long, global = true, env = "MIGRUN_SIMULATE", value_name = "SPEC")]
    pub simulate: Option<String>,
    /// Directory for leases, locks and simulator state (default /run/migrun; with --simulate, one per spec)
    #[arg(long, global = true, env = "MIGRUN_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Policy file (default /etc/migrun/config.toml; missing default file = built-in defaults)
    #[arg(long, global = true, env = "MIGRUN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Say more about what migrun decides (repeat for debug output)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

// `defer`: a subcommand's flags are built only when that subcommand is parsed. A hook or the shim
// is a fresh process per container start, and building every subcommand's flags was a third of a
// hook's instructions (docs/benchmarks.md, "start-up overhead"). Help, completions and the man
// page build the whole tree as before. `mig` and `sim` are nested subcommand variants (built
// eagerly), so the `help` subcommand and completions still know `mig enable`. Because deferred flags are added after the subcommand's own
// about, the `Args` structs below carry plain comments, not doc comments, which would replace it.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Run a container on a MIG slice (the default when no command word is given)
    Run(RunArgs),
    /// List GPU-instance profiles per GPU with free/total counts (like `nvidia-smi mig -lgip`); --ci: compute-instance profiles (like -lcip)
    Profiles(ProfilesArgs),
    /// List the possible placements of every profile (like `nvidia-smi mig -lgipp`)
    Placements(ListArgs),
    /// Show GPUs, MIG mode, instances, a slot map and leases
    Status(ListArgs),
    /// Allocate a MIG instance and print its UUID and lease id (for Slurm / JupyterHub)
    Alloc(AllocArgs),
    /// Release a lease (by lease id or MIG UUID)
    Release(ReleaseArgs),
    /// Release leases whose holder is gone and finish draining instances
    Gc(GcArgs),
    /// OCI hook entry points (podman/CRI-O hooks.d, runc hooks)
    Hook(HookArgs),
    /// runc-compatible runtime shim (also reached as `migrun-runtime`)
    #[command(disable_help_flag = true)]
    Runtime(RuntimeArgs),
    /// Enable or disable MIG mode on GPUs (never resets the GPU itself)
    #[command(subcommand)]
    Mig(MigAction),
    /// Destroy every unleased instance migrun created (clean slate before stopping a VM)
    Teardown(TeardownArgs),
    /// Slice-hours per user, profile or GPU from the usage ledger, with waits and refusals
    Usage(UsageArgs),
    /// Print leases, free instances and slices, allocations, waits and gc work in the Prometheus text format
    Metrics,
    /// Simulator controls for tests and demos (needs --simulate)
    #[command(subcommand)]
    Sim(SimAction),
    /// Print shell completions
    Completions(CompletionsArgs),
    /// Print the man page (roff) to stdout
    Man,
    /// Internal: wait for a detached (`-d`) container, then release its lease; started by the launcher
    #[command(name = "__watch", hide = true)]
    Watch(WatchArgs),
    /// Internal: destroy the instance of a lease a container's end left releasing; started by hooks, shim, launcher
    #[command(name = "__finish-release", hide = true)]
    FinishRelease(FinishArgs),
    /// Internal: make the idle instances the `warm` setting asks for; started when an allocation took one
    #[command(name = "__refill-warm", hide = true)]
    RefillWarm,
}

// The background destroy's arguments (hidden; a release fills them in).
#[derive(Debug, Args, Clone)]
pub struct FinishArgs {
    /// The releasing (draining) lease whose instance to destroy
    #[arg(long, value_name = "ID")]
    pub lease: u64,
}

/// Names of every subcommand word, for [`normalize_args`].
pub const SUBCOMMANDS: &[&str] = &[
    "run",
    "profiles",
    "placements",
    "status",
    "alloc",
    "release",
    "gc",
    "hook",
    "runtime",
    "mig",
    "teardown",
    "usage",
    "metrics",
    "sim",
    "completions",
    "man",
    "help",
    "__watch",
    "__finish-release",
    "__refill-warm",
];

// How the MIG UUID reaches the container: defined with the settings (config), used here for `--inject`.
pub use crate::config::InjectMode;

// What to ask for: a profile or an amount of memory.
#[derive(Debug, Args, Clone, Default)]
pub struct RequestArgs {
    /// MIG profile: ID (9), name (3g.40gb), full name ("MIG 3g.40gb"), variant (1g.10gb+me) or compute instance (1c.3g.40gb)
    #[arg(long, value_name = "P", conflicts_with = "min_mem")]
    pub profile: Option<String>,
    /// Smallest plain profile with at least this much memory, e.g. 20g or 20000m
    #[arg(long, value_name = "SIZE")]
    pub min_mem: Option<String>,
    /// Only use this GPU (NVML index or GPU-UUID)
    #[arg(long, value_name = "N")]
    pub gpu: Option<String>,
    /// When there is no room, wait (first come, first served) up to S seconds (no value: forever)
    #[arg(long, value_name = "S", num_args = 0..=1, require_equals = true, default_missing_value = "0")]
    pub wait: Option<u64>,
    /// Keep an instance migrun created when the lease ends, for reuse, instead of destroying it
    #[arg(long)]
    pub keep: bool,
}

// The launcher: migrun's own flags, then docker's options, image and command.
#[derive(Debug, Args, Clone, Default)]
pub struct RunArgs {
    #[command(flatten)]
    pub request: RequestArgs,
    /// How the device reaches the container (default: detect the NVIDIA toolkit)
    #[arg(long, value_enum, value_name = "MODE")]
    pub inject: Option<InjectMode>,
    /// Print the plan and the exact docker command; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// docker CLI to use (default: `docker` on PATH)
    #[arg(long, env = "MIGRUN_DOCKER", value_name = "PATH")]
    pub docker: Option<PathBuf>,
    /// docker run options, IMAGE and CMD, passed to `docker run` unchanged
    #[arg(
        value_name = "DOCKER_ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        num_args = 1..,
        required = true
    )]
    pub docker_args: Vec<String>,
}

// Options of the read-only listing commands.
#[derive(Debug, Args, Clone, Default)]
pub struct ListArgs {
    /// Only this GPU (NVML index)
    #[arg(long, value_name = "N")]
    pub gpu: Option<String>,
    /// Machine-readable output (schema in docs/json.md)
    #[arg(long)]
    pub json: bool,
}

// Options of `profiles`.
#[derive(Debug, Args, Clone, Default)]
pub struct ProfilesArgs {
    #[command(flatten)]
    pub list: ListArgs,
    /// Compute-instance profiles per GPU-instance profile (like `nvidia-smi mig -lcip`), from migrun's tables
    #[arg(long)]
    pub ci: bool,
}

#[derive(Debug, Args, Clone, Default)]
pub struct AllocArgs {
    #[command(flatten)]
    pub request: RequestArgs,
    /// Tie the lease to this process (released when it dies); default: a manual lease with no holder
    #[arg(long, value_name = "PID")]
    pub holder_pid: Option<u32>,
    // Held by this Slurm job step, with the calling slurmstepd recorded as its daemon; root only (the SPANK plugin)
    /// Tie the lease to Slurm job step JOB.STEP (42.0, 42.batch) and to the calling process (slurmstepd); plain root only, for the migrun SPANK plugin
    #[arg(long, value_name = "JOB.STEP", conflicts_with = "holder_pid")]
    pub slurm_step: Option<crate::lease::SlurmStep>,
    /// Charge the lease to this user (per-user limits, who may release it); root only, for the Slurm plugin and JupyterHub spawners
    #[arg(long, value_name = "UID")]
    pub for_uid: Option<u32>,
    /// Record a one-time hand-over token for the lease and print it (JSON): a container whose config carries the lease and the token takes the lease over (`MIGRUN_LEASE` + `MIGRUN_HANDOVER`); plain root only, for JupyterHub spawners (docs/leases.md)
    #[arg(long)]
    pub handover: bool,
    /// Name the lease: its CDI device `migrun.io/mig=NAME` and a `release` target; unique among live leases
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone, Default)]
pub struct ReleaseArgs {
    /// Lease id (as printed by alloc/status), the lease's name, or the MIG-… UUID
    #[arg(value_name = "LEASE|NAME|MIG-UUID")]
    pub target: String,
    /// Release only while the lease's `alloc --handover` is pending (still held by the process it
    /// names); a lease a container took over is kept (exit 0, saying who holds it). Root only, for spawners
    #[arg(long)]
    pub if_handover_pending: bool,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

// Options of `migrun usage`.
#[derive(Debug, Args, Clone, Default)]
pub struct UsageArgs {
    /// Only the last DURATION: a number and s, m, h, d or w (e.g. 7d, 12h); default: everything in the ledger
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    /// Group by user (default), profile or gpu
    #[arg(long, value_enum, default_value_t = UsageBy::User)]
    pub by: UsageBy,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

/// How `migrun usage` groups its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum UsageBy {
    #[default]
    User,
    Profile,
    Gpu,
}

#[derive(Debug, Args, Clone, Default)]
pub struct GcArgs {
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct HookArgs {
    /// Hook stage
    #[arg(value_enum)]
    pub stage: HookStage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HookStage {
    /// podman's precreate: config JSON on stdin, modified config on stdout
    Precreate,
    /// OCI prestart: state JSON on stdin; rewrites <bundle>/config.json
    Prestart,
    /// OCI createRuntime: same as prestart
    #[value(name = "createRuntime", alias = "create-runtime")]
    CreateRuntime,
    /// OCI poststop: releases the container's lease
    Poststop,
}

#[derive(Debug, Args, Clone)]
pub struct RuntimeArgs {
    /// runc arguments, passed through (a `create` gets the MIG slice first)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<OsString>,
}

#[derive(Debug, Subcommand, Clone)]
pub enum MigAction {
    /// Request MIG mode on (takes effect after a GPU reset or reboot)
    Enable(GpuSelect),
    /// Request MIG mode off (refused while instances exist)
    Disable(GpuSelect),
}

#[derive(Debug, Args, Clone, Default)]
pub struct GpuSelect {
    /// This GPU (NVML index)
    #[arg(
        long,
        value_name = "N",
        conflicts_with = "all",
        required_unless_present = "all"
    )]
    pub gpu: Option<String>,
    /// Every GPU migrun may manage
    #[arg(long)]
    pub all: bool,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone, Default)]
pub struct TeardownArgs {
    /// This GPU only (NVML index)
    #[arg(long, value_name = "N", conflicts_with = "all")]
    pub gpu: Option<String>,
    /// Every GPU migrun may manage (the default)
    #[arg(long)]
    pub all: bool,
    /// Release stale leases first
    #[arg(long)]
    pub force: bool,
    /// Also destroy unleased instances migrun did not create (only with an explicit --gpu)
    #[arg(long, requires = "gpu")]
    pub include_foreign: bool,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand, Clone)]
pub enum SimAction {
    /// Forget the simulated machine in this state dir (refused while leases exist)
    Reset,
    /// Simulate a GPU reset: apply a pending MIG mode change (refused while instances or leases exist)
    ResetGpu {
        /// GPU index
        gpu: u32,
    },
    /// Create an instance outside migrun, as an admin or mig-parted would (placement chosen like the driver does)
    CreateForeign {
        /// GPU index
        #[arg(long)]
        gpu: u32,
        /// Profile to create
        #[arg(long)]
        profile: String,
    },
    /// Show or set the simulated driver's latency per operation (`off`, `model`, or `[model,]OP=MS,...`; docs/benchmarks.md)
    Latency {
        /// New setting; without it the current one is printed
        setting: Option<crate::gpu::sim::Latency>,
    },
    /// Pretend N compute processes run on a GPU instance (0 ends them)
    SetProcesses {
        /// GPU index
        #[arg(long)]
        gpu: u32,
        /// GPU-instance id (omit for processes on the whole GPU, as with MIG off)
        #[arg(long)]
        gi: Option<u32>,
        /// Number of processes
        #[arg(long)]
        count: u32,
    },
}

// The detached-container watcher's arguments (hidden; the launcher fills them in).
#[derive(Debug, Args, Clone)]
pub struct WatchArgs {
    /// Lease to release when the container is gone
    #[arg(long, value_name = "ID")]
    pub lease: u64,
    /// Container id (docker's full id)
    #[arg(long, value_name = "ID")]
    pub container: String,
    /// The lease holder's engine string, naming the docker CLI and daemon (`docker|host=…|cli=…`)
    #[arg(long, value_name = "TAG")]
    pub engine: String,
}

#[derive(Debug, Args, Clone)]
pub struct CompletionsArgs {
    /// Shell to generate completions for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `-v` is both migrun's `--verbose` and docker's `--volume`. It is docker's when the word after
/// it is a volume: an absolute path (`-v /data`) or `SRC:/DST` (`-v /data:/data`, `-v vol:/data`);
/// an image name is never either, so `migrun -v IMAGE` stays verbose.
fn is_docker_volume(flag: &str, next: Option<&OsString>) -> bool {
    flag == "-v"
        && next.is_some_and(|n| {
            let n = n.to_string_lossy();
            n.starts_with('/') || n.contains(":/")
        })
}

/// True for flags of [`GlobalArgs`] that take a separate value.
fn global_flag_takes_value(arg: &str) -> bool {
    matches!(arg, "--simulate" | "--state-dir" | "--config")
}

/// Insert `run` when the first word after global flags is not a subcommand, so
/// `migrun --profile 3g.40gb -it IMAGE` means `migrun run --profile 3g.40gb -it IMAGE`.
pub fn normalize_args(args: Vec<OsString>) -> Vec<OsString> {
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if global_flag_takes_value(&a) {
            i += 2;
            continue;
        }
        if a.starts_with("--simulate=")
            || a.starts_with("--state-dir=")
            || a.starts_with("--config=")
            || (a == "-v" && !is_docker_volume(&a, args.get(i + 1)))
            || a == "-vv"
            || a == "--verbose"
        {
            i += 1;
            continue;
        }
        if matches!(&*a, "-h" | "--help" | "-V" | "--version") || SUBCOMMANDS.contains(&&*a) {
            return args;
        }
        let mut out = args;
        out.insert(i, "run".into());
        return out;
    }
    args
}

/// Launcher flags of migrun that take a value (given as `--flag V` or `--flag=V`).
const RUN_VALUE_FLAGS: &[&str] = &["--profile", "--min-mem", "--gpu", "--inject", "--docker"];
/// Launcher flags of migrun without a value (`--wait` takes only `--wait=S`).
/// `--help` is migrun's here (`-h` is docker's `--hostname`).
const RUN_BOOL_FLAGS: &[&str] = &["--keep", "--dry-run", "--wait", "--help"];

/// Split the words after `run` into migrun's launcher flags and docker's part (options, IMAGE, CMD).
/// migrun's flags must come first: the first word that is not one of them starts docker's part,
/// so a docker option that happens to share a name (`--gpu` vs `--gpus`) is never taken by migrun.
pub fn split_launcher_args(words: &[OsString]) -> (Vec<OsString>, Vec<OsString>) {
    let mut ours = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i].to_string_lossy();
        let name = w.split_once('=').map_or(&*w, |(n, _)| n);
        if RUN_VALUE_FLAGS.contains(&name) {
            ours.push(words[i].clone());
            if !w.contains('=') {
                if let Some(v) = words.get(i + 1) {
                    ours.push(v.clone());
                    i += 1;
                }
            }
        } else if RUN_BOOL_FLAGS.contains(&name)
            || (global_flag_takes_value(name)
                || matches!(name, "-vv" | "--verbose")
                || (name == "-v" && !is_docker_volume(name, words.get(i + 1))))
        {
            ours.push(words[i].clone());
            if global_flag_takes_value(name) && !w.contains('=') {
                if let Some(v) = words.get(i + 1) {
                    ours.push(v.clone());
                    i += 1;
                }
            }
        } else if w == "--" {
            i += 1;
            break;
        } else {
            break;
        }
        i += 1;
    }
    (ours, words[i..].to_vec())
}

/// Why a command line was refused: clap's own errors, and the near misses migrun answers itself.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error("'{given}' is not a migrun command; did you mean '{nearest}'? (to run an image named {given}: migrun run {given})")]
    NotACommand { given: String, nearest: String },
    #[error("'{given}' after {flags} is read as the IMAGE to run; a command's flags go after its name: migrun {given} {flags} (to run an image named {given}: migrun run {flags} {given})")]
    CommandAfterLauncherFlags { given: String, flags: String },
    #[error("unknown option '{given}'; did you mean '{nearest}'? (migrun's own flags come first, docker run's options after them)")]
    NearMissFlag { given: String, nearest: String },
}

impl CliError {
    /// Usage errors exit 2; clap's help and version output exit 0.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Clap(e) if !e.use_stderr() => crate::exit::OK,
            _ => crate::exit::USAGE,
        }
    }
}

/// The command a mistyped first word was meant to be: one edit away for short names, two for
/// names of six letters or more. Names of three letters or fewer (`gc`, `man`, `sim`) are never
/// guessed, since images such as `gcc` or `rum` sit one edit from them; neither is anything that
/// looks like an image reference (`/`, `:`, `.`, `@`).
pub fn nearest_command(word: &str) -> Option<&'static str> {
    if word.contains(['/', ':', '.', '@']) || word.starts_with('-') {
        return None;
    }
    SUBCOMMANDS
        .iter()
        .filter(|c| c.len() > 3 && !c.starts_with("__"))
        .map(|c| (*c, strsim::osa_distance(word, c)))
        .filter(|(c, d)| *d > 0 && *d <= if c.len() >= 6 { 2 } else { 1 })
        .min_by_key(|(_, d)| *d)
        .map(|(c, _)| c)
}

/// The launcher flag a near-miss `--word` was meant to be, unless docker itself knows the word.
fn nearest_launcher_flag(word: &str) -> Option<&'static str> {
    let name = word.split_once('=').map_or(word, |(n, _)| n);
    let bare = name.strip_prefix("--")?;
    if crate::engine::docker::is_docker_option(bare) {
        return None;
    }
    RUN_VALUE_FLAGS
        .iter()
        .chain(RUN_BOOL_FLAGS)
        .filter(|f| **f != "--help")
        .map(|f| (*f, strsim::osa_distance(name, f)))
        .filter(|(_, d)| *d > 0 && *d <= 2)
        .min_by_key(|(_, d)| *d)
        .map(|(f, _)| f)
}

/// Refuse near misses that would otherwise become an image name or an unknown docker option.
/// Only an implicit launcher (no `run` word typed) is checked: `migrun run statsu` means the image.
fn check_launcher_words(ours: &[OsString], docker: &[OsString]) -> Result<(), CliError> {
    let Some(first) = docker.first().map(|w| w.to_string_lossy().into_owned()) else {
        return Ok(());
    };
    if let Some(nearest) = nearest_launcher_flag(&first) {
        return Err(CliError::NearMissFlag {
            given: first
                .split_once('=')
                .map_or(&*first, |(n, _)| n)
                .to_string(),
            nearest: nearest.to_string(),
        });
    }
    if ours.is_empty() {
        if let Some(nearest) = nearest_command(&first) {
            return Err(CliError::NotACommand {
                given: first,
                nearest: nearest.to_string(),
            });
        }
    } else if SUBCOMMANDS.contains(&first.as_str()) && docker.len() == 1 {
        // `migrun --gpu 3 profiles`: a command word after launcher flags, nothing after it.
        return Err(CliError::CommandAfterLauncherFlags {
            given: first,
            flags: ours
                .iter()
                .map(|w| w.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
        });
    }
    Ok(())
}

/// Parse a full argv (argv[0] included) the way `main` does.
pub fn parse(args: Vec<OsString>) -> Result<Cli, CliError> {
    if let Some(cli) = parse_hook(&args) {
        return Ok(cli);
    }
    let typed = args.len();
    let args = normalize_args(args);
    let implicit_run = args.len() != typed;
    // Find `run` and split its words so docker's options never reach clap's flag parser.
    let run_at = args.iter().position(|a| a == "run");
    let Some(run_at) = run_at.filter(|&p| {
        args[1..p]
            .iter()
            .all(|a| !SUBCOMMANDS.contains(&&*a.to_string_lossy()))
    }) else {
        return Ok(Cli::try_parse_from(args)?);
    };
    let (ours, docker) = split_launcher_args(&args[run_at + 1..]);
    if ours.iter().any(|a| a == "-h" || a == "--help") || docker.is_empty() {
        let mut argv = args[..=run_at].to_vec();
        argv.extend(ours);
        argv.extend(docker);
        return Ok(Cli::try_parse_from(argv)?);
    }
    if implicit_run {
        check_launcher_words(&ours, &docker)?;
    } else if let Some(nearest) = docker
        .first()
        .and_then(|w| nearest_launcher_flag(&w.to_string_lossy()))
    {
        // `migrun run --proflie ...`: the explicit form gets the same flag suggestion.
        let first = docker[0].to_string_lossy();
        return Err(CliError::NearMissFlag {
            given: first
                .split_once('=')
                .map_or(&*first, |(n, _)| n)
                .to_string(),
            nearest: nearest.to_string(),
        });
    }
    let mut argv = args[..=run_at].to_vec();
    argv.extend(ours);
    argv.push("--".into());
    argv.extend(docker);
    Ok(Cli::try_parse_from(argv)?)
}

mod hook_argv;
use hook_argv::parse_hook;

#[cfg(test)]
mod tests;
