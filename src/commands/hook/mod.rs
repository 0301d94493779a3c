//! Handlers for `hook` and `runtime`: stdin/stdout, logging, the timeout and the panic guard around the flows in `engine::oci`; no spec logic here.
//!
//! Runtimes swallow a hook's stderr and discard its stdout (except precreate's), so every hook and
//! the shim log through `tracing` to a file under the state dir (or journald, or a path: Config.log).
//! The log file is opened on the first event only, so a container that asks for nothing never
//! touches the state dir. Errors still go to stderr as one line (main prints them) for the engines
//! that do show it.

use super::Ctx;
use crate::alloc::ReleaseOutcome;
use crate::cli::{HookArgs, HookStage};
use crate::config::LogTarget;
use crate::engine::oci::{self, Outcome};
use crate::engine::runtime;
use crate::lease::Holder;
use crate::statedir::{StateDir, DEFAULT_STATE_DIR};
use anyhow::Result;
use ops::CtxOps;
use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Most bytes a hook reads from stdin (a config.json is a few KiB; this only stops a runaway pipe).
const MAX_INPUT: u64 = 16 << 20;

mod ops;
pub(crate) use ops::{handover_rel, parse_handover, record_handover};

/// Errors of the hook wiring itself.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("migrun hook {stage} timed out after {secs} s (hook_timeout_s in the migrun config); the container was not started")]
    Timeout { stage: String, secs: u64 },
    #[error("internal error in migrun hook {stage}: {message}; this is a bug, please report it with the log")]
    Panic { stage: String, message: String },
    #[error("cannot read stdin: {0}")]
    Stdin(#[source] std::io::Error),
}

// ---------------------------------------------------------------------------------------------
// Logging
// ---------------------------------------------------------------------------------------------

/// The log file, opened on the first event through [`runtime::open_log_file`] (append, 0600, no
/// symlink, a regular file only: a FIFO or a device at the log path is not written to).
struct LazyFile {
    path: PathBuf,
    /// The state dir to create first when the log lives there.
    state_dir: Option<PathBuf>,
    file: OnceLock<Option<Mutex<File>>>,
}

impl LazyFile {
    fn get(&self) -> Option<&Mutex<File>> {
        self.file
            .get_or_init(|| {
                if let Some(d) = &self.state_dir {
                    // Creates the dir 0700 if missing and refuses an unsafe one.
                    StateDir::open(d).ok()?;
                }
                runtime::open_log_file(&self.path).ok().map(Mutex::new)
            })
            .as_ref()
    }
}

struct LogWriter(&'static LazyFile);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.get() {
            Some(f) => f.lock().unwrap_or_else(|p| p.into_inner()).write(buf),
            // Nowhere to log: stderr, which the runtime may show.
            None => std::io::stderr().write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static LOG_FILE: OnceLock<LazyFile> = OnceLock::new();

/// Where the log goes for this context (for messages).
pub fn log_path(ctx: &Ctx) -> PathBuf {
    match &ctx.config.log {
        LogTarget::Path(p) => p.clone(),
        LogTarget::File | LogTarget::Journald => ctx
            .state_dir_path()
            .unwrap_or_else(|_| DEFAULT_STATE_DIR.into())
            .join("migrun.log"),
    }
}

/// Install the hook/shim logger once (cheap: nothing is opened until the first event).
fn init_logging(ctx: &Ctx) {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // MIGRUN_LOG takes EnvFilter directives. Without it a plain level does: parsing even "info" as a
    // directive compiles EnvFilter's regular expressions, a measurable part of a hook's start.
    let directives = std::env::var_os("MIGRUN_LOG")
        .and_then(|_| tracing_subscriber::EnvFilter::try_from_env("MIGRUN_LOG").ok());
    let level = directives.is_none().then_some(match ctx.global.verbose {
        0 => LevelFilter::INFO,
        _ => LevelFilter::DEBUG,
    });
    let journald = match ctx.config.log {
        LogTarget::Journald => tracing_journald::layer()
            .ok()
            .map(|l| l.with_syslog_identifier("migrun".into())),
        _ => None,
    };
    let file = if journald.is_none() {
        let lazy = LOG_FILE.get_or_init(|| LazyFile {
            path: log_path(ctx),
            state_dir: match ctx.config.log {
                LogTarget::Path(_) => None,
                _ => Some(
                    ctx.state_dir_path()
                        .unwrap_or_else(|_| DEFAULT_STATE_DIR.into()),
                ),
            },
            file: OnceLock::new(),
        });
        Some(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_target(false)
                .with_writer(move || LogWriter(lazy)),
        )
    } else {
        None
    };
    let _ = tracing_subscriber::registry()
        .with(directives)
        .with(level)
        .with(journald)
        .with(file)
        .try_init();
    // A panic is logged (the runtime would swallow stderr) and then turned into an error below.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("panic: {info}");
    }));
}

// ---------------------------------------------------------------------------------------------
// Timeout and panic guard
// ---------------------------------------------------------------------------------------------

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Run `f` on this thread, catching panics, while a watchdog thread enforces `hook_timeout_s` (0 = none).
///
/// On timeout the process exits at once with a one-line error: a hook that hangs must fail the
/// container rather than start it without its slice. Anything half-done is safe by construction:
/// config.json is replaced atomically, an allocation interrupted mid-way is repaired by gc from its
/// intent journal, and a lease already made is held by the container id (poststop or gc frees it).
///
/// The work stays on the calling thread and the watchdog only sleeps: the caller never waits for a
/// new thread to be scheduled, which on a busy host costs more than the hook's own work.
fn guarded<T>(ctx: &Ctx, stage: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let secs = ctx.config.hook_timeout_s;
    let (done, watched) = std::sync::mpsc::channel::<()>();
    if secs > 0 {
        let stage = stage.to_string();
        let span = tracing::Span::current();
        let spawned = std::thread::Builder::new()
            .name("migrun-watchdog".into())
            .spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    watched.recv_timeout(Duration::from_secs(secs))
                {
                    let _enter = span.enter();
                    let e = HookError::Timeout { stage, secs };
                    tracing::error!("{e}");
                    crate::errln!("migrun: {e}");
                    std::process::exit(crate::exit::FAILED);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the hook watchdog ({e}); running without hook_timeout_s");
        }
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    // The watchdog stands down (its receiver sees the sender dropped); an exit racing it is harmless.
    drop(done);
    match r {
        Ok(r) => r,
        Err(p) => Err(HookError::Panic {
            stage: stage.into(),
            message: panic_message(p.as_ref()),
        }
        .into()),
    }
}

fn stage_name(s: HookStage) -> &'static str {
    match s {
        HookStage::Precreate => "precreate",
        HookStage::Prestart => "prestart",
        HookStage::CreateRuntime => "createRuntime",
        HookStage::Poststop => "poststop",
    }
}

fn read_stdin() -> Result<Vec<u8>, HookError> {
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_INPUT)
        .read_to_end(&mut buf)
        .map_err(HookError::Stdin)?;
    Ok(buf)
}

/// The container id in a state JSON, for the log line (best effort).
fn id_hint(input: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(input)
        .ok()?
        .get("id")?
        .as_str()
        .map(str::to_string)
}

fn log_outcome(o: &Outcome) {
    match o {
        Outcome::PassThrough | Outcome::Released(ReleaseOutcome::NoLease) => {
            tracing::debug!("{o}")
        }
        _ => tracing::info!("{o}"),
    }
}

/// `migrun hook <stage>`: the state (or, for precreate, the config) JSON comes on stdin.
pub fn hook(ctx: &Ctx, a: &HookArgs) -> Result<i32> {
    init_logging(ctx);
    let stage = stage_name(a.stage);
    let input = read_stdin()?;
    let span = tracing::info_span!("hook", stage, id = tracing::field::Empty);
    if a.stage != HookStage::Precreate {
        if let Some(id) = id_hint(&input) {
            span.record("id", id.as_str());
        }
    }
    let _enter = span.enter();
    let result = guarded(ctx, stage, || {
        let mut ops = CtxOps::new(ctx);
        let out = match a.stage {
            HookStage::Precreate => {
                // No container yet: the engine process (our parent) holds the lease until prestart.
                let ppid = nix::unistd::getppid().as_raw() as u32;
                let holder = Holder::Process {
                    pid: ppid,
                    start_time: crate::lease::process_start_time(ppid).unwrap_or(0),
                };
                let mut stdout = std::io::stdout().lock();
                oci::precreate(&input, &mut ops, holder, &mut |b| {
                    stdout.write_all(b)?;
                    stdout.flush()
                })?
            }
            HookStage::Prestart | HookStage::CreateRuntime => {
                let engine = std::env::var(oci::ENV_ENGINE).ok();
                oci::prestart(&input, &mut ops, engine.as_deref())?
            }
            HookStage::Poststop => oci::poststop(&input, &mut ops)?,
        };
        Ok(out)
    });
    match result {
        Ok(o) => {
            log_outcome(&o);
            Ok(0)
        }
        Err(e) => Ok(fail_line(&e)),
    }
}

/// An error chain as one line: messages that carry a slot map or hints on further lines are joined,
/// because runtimes show (at most) one line of a hook's stderr.
pub fn flatten(e: &anyhow::Error) -> String {
    format!("{e:#}")
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Report a failed hook or shim: the same one line in the log and on stderr; returns the exit code.
fn fail_line(e: &anyhow::Error) -> i32 {
    let line = flatten(e);
    tracing::error!("{line}");
    crate::errln!("migrun: {line}");
    super::exit_code_for(e)
}

mod shim;
pub use shim::{runtime, shim_fast_path};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_one_line_and_keep_their_exit_code() {
        let e = anyhow::Error::new(crate::profile::ProfileError::Empty)
            .context("no room for 1g.10gb on GPU 0\n  GPU 0 |7g.80gb      |\n  (use --wait)");
        let line = flatten(&e);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with(
                "no room for 1g.10gb on GPU 0; GPU 0 |7g.80gb |; (use --wait): empty profile name"
            ),
            "{line}"
        );
        assert_eq!(crate::commands::exit_code_for(&e), crate::exit::USAGE);
    }
}
