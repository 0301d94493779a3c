//! The runc-compatible shim: rewrite the bundle on `create`, run or exec the next runtime; it must not change other subcommands.
//!
//! dockerd and containerd call a runtime with runc's CLI: global flags first (`--root`, `--log`,
//! `--log-format`, `--systemd-cgroup`, …), then the subcommand and its flags, then the container id.
//! The shim reads them exactly as runc does ([`args`]). For `create` (and `run`) it lets
//! [`crate::engine::oci::shim_create`] give the container its slice, then runs the next runtime with
//! the arguments exactly as they came: as a child it waits for when it made a lease (so that a create
//! that fails before any hook runs gives the lease back, [`supervise_runtime`]), else by `execv`, so
//! pid, exit status, stdio and signals are the runtime's own. Every other subcommand (`start`,
//! `delete`, `state`, `features`, `--version` …) is handed over untouched.

use crate::config::Config;
use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// True when the binary was started as `migrun-runtime` (argv[0] switch).
pub fn invoked_as_shim(argv0: Option<&OsString>) -> bool {
    argv0
        .and_then(|a| Path::new(a).file_name().map(|f| f.to_owned()))
        .is_some_and(|f| f == "migrun-runtime")
}

/// Errors of the shim itself (finding and starting the next runtime).
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("no runtime to hand the container to: {looked}; install runc (or the NVIDIA container toolkit), or set `runtime = \"/path/to/runc\"` in /etc/migrun/config.toml")]
    NoRuntime { looked: String },
    #[error(
        "configured runtime {path} is not an executable file; fix `runtime` in the migrun config"
    )]
    BadRuntime { path: PathBuf },
    #[error("configured runtime {path} is migrun itself; point `runtime` at runc or nvidia-container-runtime")]
    RuntimeIsSelf { path: PathBuf },
    #[error("cannot exec {path}: {errno}")]
    Exec { path: PathBuf, errno: nix::Error },
    #[error("bad runtime arguments: {0}")]
    Args(String),
    #[error("cannot read runc's `{subcommand}` arguments: {reason}; migrun-runtime passes a create on only when it reads it exactly as runc does (see docs/hooks.md)")]
    Unreadable { subcommand: String, reason: String },
    #[error("cannot start {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot catch signals to forward them to the runtime: {0}")]
    Signals(#[source] std::io::Error),
}

/// Exit codes for this module's errors.
pub fn exit_code_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    match e.downcast_ref::<ShimError>()? {
        ShimError::Args(_)
        | ShimError::Unreadable { .. }
        | ShimError::BadRuntime { .. }
        | ShimError::RuntimeIsSelf { .. } => Some(crate::exit::USAGE),
        ShimError::NoRuntime { .. }
        | ShimError::Exec { .. }
        | ShimError::Spawn { .. }
        | ShimError::Signals(_) => Some(crate::exit::FAILED),
    }
}

pub mod args;

pub use args::{parse_invocation, Invocation};

/// The shim's fast path, taken before migrun parses its own command line: when the call needs
/// nothing from migrun ([`Invocation::hands_over_untouched`]) and the next runtime resolves,
/// `execv` it with `args` (without argv[0]) exactly as they came. Returns only when it did not
/// hand over, and then the full shim (`migrun runtime`) decides and reports every error itself.
///
/// Why: most runtime calls on a host (`start`, `state`, `delete`, `kill`, and the `create` of every
/// container that asks for nothing) need nothing from migrun, and each is a fresh process, so the
/// cost of building migrun's whole command line and context for them is pure overhead
/// (docs/benchmarks.md, "start-up overhead"). Any doubt (unreadable config, no runtime found, a
/// failed exec) falls back, so both paths decide alike.
pub fn hand_over_untouched(args: &[OsString]) {
    hand_over_untouched_as(&parse_invocation(args), args)
}

/// [`hand_over_untouched`] for a call already parsed into `inv`.
pub fn hand_over_untouched_as(inv: &Invocation, args: &[OsString]) {
    if !inv.hands_over_untouched() {
        return;
    }
    // The same config the full shim reads: `MIGRUN_CONFIG` (as `--config`'s env) or the default file.
    let explicit = std::env::var_os("MIGRUN_CONFIG").map(PathBuf::from);
    let Ok(config) = Config::load(explicit.as_deref()) else {
        return;
    };
    let Ok(self_exe) = std::env::current_exe() else {
        return;
    };
    if let Ok(next) = next_runtime(&config, std::env::var_os("PATH").as_deref(), &self_exe) {
        // Returns only if the exec failed; the full shim then reports it with the runtime log.
        let _ = exec_runtime(&next, args);
    }
}

/// Which engine calls us, from the runtime root it uses (for the lease's holder record).
pub fn engine_of(root: Option<&Path>) -> &'static str {
    let Some(root) = root else {
        return "runc";
    };
    let s = root.to_string_lossy();
    if s.contains("/docker/") || s.ends_with("/moby") {
        "docker"
    } else if s.contains("/containerd/") || s.contains("k8s.io") {
        "containerd"
    } else if s.contains("crio") || s.contains("cri-o") {
        "cri-o"
    } else {
        "runc"
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Directories searched after `$PATH`: engines often start runtimes with a minimal environment.
const FALLBACK_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// NVIDIA's `nvidia-container-runtime-hook`, looked for in `$PATH` then [`FALLBACK_DIRS`] (runc runs
/// hooks with no `PATH` at all).
pub fn nvidia_hook(path_env: Option<&OsStr>) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = path_env
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    dirs.extend(FALLBACK_DIRS.iter().map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("nvidia-container-runtime-hook"))
        .find(|c| is_executable(c))
}

/// Whether the hooks and the shim write the lease's CDI edits into config.json (`hook_inject`):
/// `cdi` and `env` as configured; `auto` chooses CDI unless NVIDIA's hook is installed, which then
/// mounts the device from `NVIDIA_VISIBLE_DEVICES` (both at once would give the container its
/// device nodes twice).
pub fn hook_injects_cdi(config: &Config, path_env: Option<&OsStr>) -> bool {
    match config.hook_inject {
        crate::config::HookInject::Cdi => true,
        crate::config::HookInject::Env => false,
        crate::config::HookInject::Auto => nvidia_hook(path_env).is_none(),
    }
}

/// The runtime to exec: `config.runtime`, else nvidia-container-runtime, else runc (never migrun itself).
pub fn next_runtime(
    config: &Config,
    path_env: Option<&OsStr>,
    self_exe: &Path,
) -> Result<PathBuf, ShimError> {
    if let Some(p) = &config.runtime {
        if !is_executable(p) {
            return Err(ShimError::BadRuntime { path: p.clone() });
        }
        if same_file(p, self_exe) {
            return Err(ShimError::RuntimeIsSelf { path: p.clone() });
        }
        return Ok(p.clone());
    }
    let mut dirs: Vec<PathBuf> = path_env
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    dirs.extend(FALLBACK_DIRS.iter().map(PathBuf::from));
    for name in ["nvidia-container-runtime", "runc"] {
        for d in &dirs {
            let c = d.join(name);
            if is_executable(&c) && !same_file(&c, self_exe) {
                return Ok(c);
            }
        }
    }
    Err(ShimError::NoRuntime {
        looked: format!(
            "neither nvidia-container-runtime nor runc in $PATH or {}",
            FALLBACK_DIRS.join(":")
        ),
    })
}

/// Replace this process with `runtime`, passing `args` (without argv[0]) unchanged. Returns only on failure.
pub fn exec_runtime(runtime: &Path, args: &[OsString]) -> ShimError {
    let to_c = |s: &OsStr| CString::new(s.as_bytes());
    let Ok(path) = to_c(runtime.as_os_str()) else {
        return ShimError::Args(format!("runtime path {runtime:?} holds a NUL byte"));
    };
    let mut argv = vec![path.clone()];
    for a in args {
        match to_c(a) {
            Ok(c) => argv.push(c),
            Err(_) => return ShimError::Args(format!("argument {a:?} holds a NUL byte")),
        }
    }
    match nix::unistd::execv(&path, &argv) {
        Ok(never) => match never {},
        Err(errno) => ShimError::Exec {
            path: runtime.to_path_buf(),
            errno,
        },
    }
}

/// Run `runtime` with `args` (without argv[0]) as a child with this process's stdio, environment and
/// working directory, forward the signals an engine or a user sends, and return its exit code (128+N
/// when it died of signal N).
///
/// Used for a `create`/`run` for which the shim made a lease, instead of `execv`: runc can fail before
/// it runs any hook (a relative `process.cwd`, a duplicate container id), and then no poststop ever
/// frees the lease, so the shim must see the exit status to give it back. The alternative, leaving the
/// lease to gc and having gc ask `runc --root R state ID`, was not taken: during a create the container
/// does not exist yet either (gc would have to guess a grace period), and a duplicate id makes the
/// runtime answer for the *other* container. Waiting costs one process that lives as long as `runc
/// create` (milliseconds; for a foreground `run`, as long as the container).
///
/// Signals that the kernel sent (a terminal's Ctrl-C, a hang-up) already reached runc in the same
/// process group and are not sent twice. The signals stay caught until the returned guard is dropped,
/// so the shim is not killed between the runtime's exit and the release.
pub fn supervise_runtime(
    runtime: &Path,
    args: &[OsString],
) -> Result<(i32, SignalsCaught), ShimError> {
    use crate::engine::docker::{exit_code, should_forward, FORWARDED};
    use signal_hook::iterator::exfiltrator::origin::WithOrigin;
    use signal_hook::iterator::SignalsInfo;
    let mut wanted: Vec<i32> = FORWARDED.to_vec();
    wanted.extend([signal_hook::consts::SIGWINCH, signal_hook::consts::SIGCHLD]);
    // Registered before the spawn, so neither a signal nor the child's exit slips by.
    let mut signals = SignalsInfo::<WithOrigin>::new(&wanted).map_err(ShimError::Signals)?;
    let mut child = std::process::Command::new(runtime)
        .args(args)
        .spawn()
        .map_err(|source| ShimError::Spawn {
            path: runtime.to_path_buf(),
            source,
        })?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => {
                return Err(ShimError::Spawn {
                    path: runtime.to_path_buf(),
                    source,
                })
            }
        }
        for o in signals.wait() {
            if o.signal != signal_hook::consts::SIGCHLD && should_forward(o.cause) {
                // Not reaped before the try_wait above, so `pid` is still the runtime's.
                if let Ok(sig) = nix::sys::signal::Signal::try_from(o.signal) {
                    let _ = nix::sys::signal::kill(pid, sig);
                }
            }
        }
    };
    Ok((exit_code(status), SignalsCaught(signals)))
}

/// Keeps the forwarded signals caught (so they do not kill the shim) while it is alive.
pub struct SignalsCaught(
    #[allow(dead_code)]
    signal_hook::iterator::SignalsInfo<signal_hook::iterator::exfiltrator::origin::WithOrigin>,
);

/// Open a log file for appending, as root, without being led anywhere: never through a symlink
/// (`O_NOFOLLOW`), never a device, FIFO or socket (checked before opening, since opening one can block
/// or have effects, and again on the open file), created 0600, closed on exec.
///
/// Both the engine's runtime log (`--log`, which whoever calls the shim chooses) and migrun's own log
/// go through here.
pub fn open_log_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let not_regular = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        )
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => return Err(not_regular()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !f.metadata()?.file_type().is_file() {
        return Err(not_regular());
    }
    Ok(f)
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm), for RFC 3339 log times.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Now as RFC 3339 UTC (`2024-05-01T12:00:00.123456789Z`), the format runc writes into its log.
pub fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        now.subsec_nanos()
    )
}

/// Append an error to the runtime log the engine gave (`--log`), in runc's format: containerd and
/// dockerd read a failed runtime's message from there, not from its stderr.
pub fn write_runtime_log(inv: &Invocation, msg: &str) {
    let Some(log) = &inv.log else {
        return;
    };
    let line = if inv.log_format.as_deref() == Some("json") {
        let mut v = serde_json::Map::new();
        v.insert("level".into(), "error".into());
        v.insert("msg".into(), msg.into());
        v.insert("time".into(), rfc3339_now().into());
        format!("{}\n", serde_json::Value::Object(v))
    } else {
        format!(
            "time=\"{}\" level=error msg={:?}\n",
            rfc3339_now(),
            msg.replace('\n', " ")
        )
    };
    use std::io::Write;
    match open_log_file(log) {
        Ok(mut f) => {
            let _ = f.write_all(line.as_bytes());
        }
        Err(e) => tracing::warn!("not writing the runtime log {}: {e}", log.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn only_a_create_of_a_bundle_that_asks_goes_past_the_fast_path() {
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path().display().to_string();
        let write = |v: serde_json::Value| {
            std::fs::write(dir.path().join("config.json"), v.to_string()).unwrap()
        };
        write(serde_json::json!({"process": {"env": ["PATH=/bin"]}}));
        for (call, untouched) in [
            (format!("--root /r create --bundle {b} c1"), true),
            (format!("--root /r run -b {b} c1"), true),
            // No id: runc would refuse it, and so does the shim, never passing it on unexamined.
            (format!("--root /r create --bundle {b}"), false),
            ("--root /r start c1".to_string(), true),
            ("--root /r delete --force c1".to_string(), true),
            ("--version".to_string(), true),
        ] {
            assert_eq!(
                parse_invocation(&args(&call)).hands_over_untouched(),
                untouched,
                "{call}"
            );
        }
        write(serde_json::json!({"annotations": {"migrun.profile": "1g.10gb"}}));
        let create = parse_invocation(&args(&format!("--root /r create --bundle {b} c1")));
        assert!(
            !create.hands_over_untouched(),
            "a bundle that asks for a slice"
        );
        assert!(parse_invocation(&args("--root /r start c1")).hands_over_untouched());
        // A bundle the shim cannot read is the full shim's to report, never handed over silently.
        std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
        assert!(!create.hands_over_untouched());
        // An NVIDIA_VISIBLE_DEVICES grant needs the guard even without a profile.
        write(serde_json::json!({"process": {"env": ["NVIDIA_VISIBLE_DEVICES=all"]}}));
        assert!(!create.hands_over_untouched());
    }

    #[test]
    fn the_engine_is_told_by_the_runtime_root_it_passes() {
        for (root, engine) in [
            ("/var/run/docker/runtime-runc/moby", "docker"),
            ("/run/containerd/runc/default", "containerd"),
            ("/run/containerd/runc/k8s.io", "containerd"),
            ("/run/crio/runc", "cri-o"),
            ("/run/runc", "runc"),
        ] {
            assert_eq!(engine_of(Some(Path::new(root))), engine, "{root}");
        }
        assert_eq!(engine_of(None), "runc");
    }

    #[test]
    fn next_runtime_prefers_config_then_nvidia_then_runc_and_never_itself() {
        let t = tempfile::tempdir().unwrap();
        let me = t.path().join("migrun");
        std::fs::write(&me, "#!/bin/sh\n").unwrap();
        let mk = |name: &str| {
            use std::os::unix::fs::PermissionsExt;
            let p = t.path().join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let runc = mk("runc");
        let path = t.path().as_os_str();
        let cfg = Config::default();
        assert_eq!(next_runtime(&cfg, Some(path), &me).unwrap(), runc);
        // An nvidia-container-runtime that is really migrun (a symlink) is skipped.
        std::os::unix::fs::symlink(&me, t.path().join("nvidia-container-runtime")).unwrap();
        assert_eq!(next_runtime(&cfg, Some(path), &me).unwrap(), runc);
        std::fs::remove_file(t.path().join("nvidia-container-runtime")).unwrap();
        let nv = mk("nvidia-container-runtime");
        assert_eq!(next_runtime(&cfg, Some(path), &me).unwrap(), nv);
        let custom = mk("my-runc");
        let cfg = Config {
            runtime: Some(custom.clone()),
            ..Config::default()
        };
        assert_eq!(next_runtime(&cfg, Some(path), &me).unwrap(), custom);
        let cfg = Config {
            runtime: Some(t.path().join("missing")),
            ..Config::default()
        };
        assert!(matches!(
            next_runtime(&cfg, Some(path), &me),
            Err(ShimError::BadRuntime { .. })
        ));
        let cfg = Config {
            runtime: Some(me.clone()),
            ..Config::default()
        };
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&me, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            next_runtime(&cfg, Some(path), &me),
            Err(ShimError::RuntimeIsSelf { .. })
        ));
    }

    #[test]
    fn log_files_are_regular_files_opened_without_following_links() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        // A new file is created 0600.
        let fresh = t.path().join("new.log");
        open_log_file(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A symlink (to an existing file or to a place to create) is refused; its target stays as it was.
        let target = t.path().join("root-owned");
        std::fs::write(&target, "keep\n").unwrap();
        let link = t.path().join("link.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let dangling = t.path().join("dangling.log");
        std::os::unix::fs::symlink(t.path().join("created-through-link"), &dangling).unwrap();
        // A FIFO with no reader (opening it for writing would block) and a device are refused too.
        let fifo = t.path().join("fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        for bad in [&link, &dangling, &fifo, Path::new("/dev/null"), t.path()] {
            assert!(open_log_file(bad).is_err(), "{bad:?}");
            let inv = Invocation {
                log: Some(bad.to_path_buf()),
                log_format: Some("text".into()),
                ..Invocation::default()
            };
            write_runtime_log(&inv, "migrun: text the caller chose");
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep\n");
        assert!(!t.path().join("created-through-link").exists());
    }

    #[test]
    fn runtime_log_lines_are_what_containerd_parses() {
        let t = tempfile::tempdir().unwrap();
        let log = t.path().join("log.json");
        let inv = Invocation {
            log: Some(log.clone()),
            log_format: Some("json".into()),
            ..Invocation::default()
        };
        write_runtime_log(&inv, "migrun: no room for 7g.80gb");
        let line = std::fs::read_to_string(&log).unwrap();
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "migrun: no room for 7g.80gb");
        let t = v["time"].as_str().unwrap();
        assert!(t.len() == 30 && t.ends_with('Z') && &t[4..5] == "-", "{t}");
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(19_782), (2024, 2, 29));
    }
}
