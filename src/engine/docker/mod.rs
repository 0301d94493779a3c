//! The docker launcher's engine side: read `docker run` options, refuse device choices, build the argv with the MIG
//! device injected, detect the NVIDIA toolkit, run and supervise the docker CLI (signals, cidfile), wait for detached
//! containers, and tell gc whether a container lives (`docker inspect`); it must not allocate or release by itself.
//!
//! The caller (commands::launch) owns the lease: this module hands it the container id through a callback as soon as
//! docker writes the cidfile, and returns docker's exit code, so "release on every path" stays in one place.
//!
//! Files: `options` (docker run's options and IMAGE), `check` (what is refused), `envfile` (env files read once, as
//! docker reads them), `hostpath` (where a host path leads), `toolkit` (choosing `--inject`), `supervise` (running
//! docker) and `gate` (docker held back until its pid is in the lease); this file holds the errors, the injected
//! options, the CLI and its endpoint, and liveness.

use crate::alloc::HolderProbe;
use crate::config::InjectMode;
use crate::lease::LeaseId;
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variables that choose GPUs for the NVIDIA toolkit; a container may not set them itself.
pub const DEVICE_ENV: &[&str] = &[
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_MIG_CONFIG_DEVICES",
    "NVIDIA_MIG_MONITOR_DEVICES",
];

/// Labels migrun puts on every container it launches (gc and people find the lease through them).
pub const LABEL_LEASE: &str = "migrun.lease";
pub const LABEL_PROFILE: &str = "migrun.profile";
pub const LABEL_UUID: &str = "migrun.uuid";
/// A random id per launch, recorded in the lease before docker runs: gc finds the container a killed launcher's docker
/// went on to start by it (`migrun.lease` alone repeats across state dirs and after a reboot empties /run/migrun).
pub const LABEL_LAUNCH: &str = "migrun.launch";

/// Exit code docker uses for its own failures (daemon errors, bad options).
pub const DOCKER_FAILED: i32 = 125;

/// Errors of the docker launcher. Each message says what was wrong and what to do next.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("docker option {option} needs a value; write `{option} VALUE` before the IMAGE")]
    MissingValue { option: String },
    #[error("unknown docker run option {option}: migrun cannot tell where IMAGE starts; write it as {option}=VALUE (or {option}=true for a switch), or put migrun's flags first and check the spelling against `docker run --help`")]
    UnknownOption { option: String },
    #[error("no IMAGE given: usage is `migrun --profile P [docker run options] IMAGE [CMD...]`")]
    NoImage,
    #[error("{option} does not go to docker through migrun: use `docker run --help` for docker's options and `migrun run --help` for migrun's")]
    Help { option: String },
    #[error("refusing {given}: a container cannot choose its own GPU; migrun gives it the leased MIG device itself (drop the option and pick the slice with --profile / --gpu)")]
    DeviceChoice { given: String },
    #[error("refusing {given}: {why}, so the container could reach GPUs beyond its slice; a container cannot choose its own GPU (drop the option: migrun gives the container its leased MIG device itself)")]
    DeviceReach { given: String, why: String },
    #[error("cannot read {given}: {why}; docker would not read it either, so fix the value (see `docker run --help`)")]
    BadMount { given: String, why: String },
    #[error("refusing --volumes-from {container}: cannot learn which host paths it mounts ({why}), and migrun must check them for NVIDIA device nodes; name an existing container or drop the option")]
    VolumesFrom { container: String, why: String },
    #[error("cannot read --env-file {path}: {source}; fix the path (migrun checks env files for {vars})", vars = DEVICE_ENV.join(", "))]
    EnvFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing --env-file {path}: it is {kind}, not a regular file; migrun reads an env file once and hands docker exactly what it checked, so give it a regular file")]
    EnvFileKind { path: PathBuf, kind: &'static str },
    #[error("refusing --env-file {path}: it holds {size} bytes, more than the {max} migrun reads; split it, or pass the variables with -e", max = envfile::MAX_BYTES)]
    EnvFileTooBig { path: PathBuf, size: u64 },
    #[error(
        "--env-file {path} line {line}: {why}; docker refuses such a file too, so fix that line"
    )]
    EnvFileLine {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("cannot hand docker the checked copy of --env-file {path}: {source}")]
    EnvFileCopy {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--runtime {given} conflicts with --inject nvidia-runtime, which runs the container with --runtime nvidia; drop --runtime or choose another --inject mode")]
    RuntimeConflict { given: String },
    #[error("no NVIDIA container toolkit found ({looked}); install nvidia-container-toolkit, choose a mode with --inject gpus|nvidia-runtime|cdi, or pass --inject env to only set NVIDIA_VISIBLE_DEVICES (plain runtimes, tests)")]
    NoToolkit { looked: String },
    #[error("docker resolves CDI devices (and so --gpus) from {docker}, but migrun writes lease specs to {ours}; set `cdi_dir` in the migrun config to one of docker's directories (or add {ours} to `cdi-spec-dirs` in /etc/docker/daemon.json), or choose a mode with --inject")]
    CdiDirs { docker: String, ours: PathBuf },
    #[error("docker CLI {0} not found or not executable; install docker (docker.io / docker-ce-cli) or point --docker / MIGRUN_DOCKER / `docker` in the config at it")]
    NoCli(String),
    #[error("cannot run {cli}: {source}")]
    Spawn {
        cli: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--cidfile {0} already exists; docker would refuse it, and migrun would read another container's id from it: remove it or choose a new path")]
    CidfileExists(PathBuf),
    #[error("cannot set up signal forwarding for docker: {0}")]
    Signals(#[source] std::io::Error),
    #[error("cannot record the docker client's pid in the lease before it runs ({0}), so docker was not started; check the state dir and try again")]
    Hold(String),
}

impl DockerError {
    /// Bad input and refusals are usage errors (2); failing to run docker is a failure (1).
    pub fn exit_code(&self) -> i32 {
        match self {
            DockerError::Spawn { .. }
            | DockerError::Signals(_)
            | DockerError::Hold(_)
            | DockerError::EnvFileCopy { .. } => crate::exit::FAILED,
            _ => crate::exit::USAGE,
        }
    }
}

mod check;
mod envfile;
mod gate;
mod hostpath;
mod options;
mod supervise;
mod toolkit;

pub use check::Checked;
pub use options::{is_docker_option, option_kind, short_option, DockerOpt, OptionKind, RunLine};
pub use supervise::{
    exit_code, read_cidfile, run_supervised, should_forward, Finished, SignalGuard, FORWARDED,
};
pub use toolkit::{choose_mode, detect, docker_info, from_docker_info, Detected, ToolkitFacts};

/// The options that hand lease `lease`'s MIG device to the container in `mode`. CDI names migrun's
/// own device of the lease (its spec is written when the lease is granted), not the toolkit's.
pub fn inject_args(mode: InjectMode, lease: &str, mig_uuid: &str) -> Vec<String> {
    let env = format!("NVIDIA_VISIBLE_DEVICES={mig_uuid}");
    match mode {
        InjectMode::Gpus => vec!["--gpus".into(), format!("device={mig_uuid}")],
        InjectMode::NvidiaRuntime => {
            vec!["--runtime".into(), "nvidia".into(), "-e".into(), env]
        }
        InjectMode::Cdi => vec!["--device".into(), crate::cdi::spec::qualified_name(lease)],
        InjectMode::Env => vec!["-e".into(), env],
    }
}

/// The `--label` options naming the lease, profile and MIG UUID.
pub fn label_args(lease: &str, profile: &str, mig_uuid: &str) -> Vec<String> {
    vec![
        "--label".into(),
        format!("{LABEL_LEASE}={lease}"),
        "--label".into(),
        format!("{LABEL_PROFILE}={profile}"),
        "--label".into(),
        format!("{LABEL_UUID}={mig_uuid}"),
    ]
}

/// The `--label` option naming the launch (see [`LABEL_LAUNCH`]).
pub fn launch_label_args(launch: &str) -> Vec<String> {
    vec!["--label".into(), format!("{LABEL_LAUNCH}={launch}")]
}

/// The kebab-case name of a mode, as `--inject` takes it.
pub fn mode_name(mode: InjectMode) -> &'static str {
    match mode {
        InjectMode::Gpus => "gpus",
        InjectMode::NvidiaRuntime => "nvidia-runtime",
        InjectMode::Cdi => "cdi",
        InjectMode::Env => "env",
    }
}

/// Quote a word for a POSIX shell, so a printed command can be pasted back.
pub fn shell_quote(w: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c);
    if !w.is_empty() && w.chars().all(safe) {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

/// A command line as a shell would print it.
pub fn shell_line<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| shell_quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// The docker CLI and its endpoint
// ---------------------------------------------------------------------------------------------

/// Which docker CLI to run, and which daemon it talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerCli {
    pub path: PathBuf,
    /// DOCKER_HOST when it was set; `None` = the CLI's default endpoint.
    pub host: Option<String>,
    /// The CLI was chosen explicitly (--docker, MIGRUN_DOCKER, the config), not found as `docker` on PATH.
    pub explicit: bool,
}

/// The first executable `name` on `path_env` (PATH semantics); a name with a slash is taken as a path.
pub fn find_executable(name: &OsStr, path_env: Option<&OsStr>) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if Path::new(name).components().count() > 1 || name.as_encoded_bytes().contains(&b'/') {
        let p = PathBuf::from(name);
        return is_exec(&p).then_some(p);
    }
    std::env::split_paths(path_env?)
        .map(|d| d.join(name))
        .find(|p| is_exec(p))
}

/// Separator of the fields in a docker holder's engine tag (never found in a socket address or a path we accept).
const TAG_SEP: char = '|';

impl DockerCli {
    /// `explicit` (from --docker / MIGRUN_DOCKER / the config) or `docker` on PATH; DOCKER_HOST from the environment.
    pub fn resolve(explicit: Option<&Path>) -> Result<DockerCli, DockerError> {
        let name: OsString = explicit.map_or("docker".into(), |p| p.as_os_str().to_owned());
        let path_env = std::env::var_os("PATH");
        let path = find_executable(&name, path_env.as_deref())
            .ok_or_else(|| DockerError::NoCli(name.to_string_lossy().into_owned()))?;
        let host = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty());
        Ok(DockerCli {
            path,
            host,
            explicit: explicit.is_some(),
        })
    }

    /// A `docker` command aimed at this CLI's daemon.
    pub fn command(&self) -> Command {
        self.command_of(&self.path)
    }

    /// `program` with the environment that aims this CLI at its daemon (for a program that execs the CLI).
    pub fn command_of(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        if let Some(h) = &self.host {
            c.env("DOCKER_HOST", h);
        }
        c
    }

    /// The holder's engine string: `docker`, followed by `|host=…` (DOCKER_HOST) and `|cli=…` (an explicitly
    /// chosen CLI) when they were set, so gc, run later from another environment, asks the same daemon with the
    /// same CLI. Plain `docker` means the default daemon through `docker` on PATH.
    pub fn engine_tag(&self) -> String {
        let mut tag = String::from("docker");
        if let Some(h) = &self.host {
            tag.push_str(&format!("{TAG_SEP}host={h}"));
        }
        if self.explicit {
            tag.push_str(&format!("{TAG_SEP}cli={}", self.path.display()));
        }
        tag
    }

    /// Read an engine tag written by [`DockerCli::engine_tag`]; `None` when it is not docker's.
    pub fn from_engine_tag(tag: &str) -> Option<DockerCli> {
        let mut parts = tag.split(TAG_SEP);
        if parts.next()? != "docker" {
            return None;
        }
        let mut cli = DockerCli {
            path: PathBuf::from("docker"),
            host: None,
            explicit: false,
        };
        for p in parts {
            match p.split_once('=') {
                Some(("host", h)) => cli.host = Some(h.to_string()),
                Some(("cli", c)) => {
                    // gc runs this as root, possibly long after the lease was written: a program
                    // anyone but root could have placed or replaced is never run (then the
                    // container's state is unknown and the lease is kept).
                    crate::caller::trusted_program(Path::new(c)).ok()?;
                    cli.path = PathBuf::from(c);
                    cli.explicit = true;
                }
                _ => {}
            }
        }
        if cli.path == Path::new("docker") {
            cli.path = find_executable(OsStr::new("docker"), std::env::var_os("PATH").as_deref())
                .unwrap_or(cli.path);
        }
        Some(cli)
    }
}

// ---------------------------------------------------------------------------------------------
// Container liveness
// ---------------------------------------------------------------------------------------------

/// Is the container alive? From `docker inspect`'s `.State`: running, paused, restarting or just created (and not
/// failed to start) counts as alive; exited, dead, removing or unknown to the daemon as gone.
/// `None` when the daemon cannot be asked (gc then keeps the lease).
pub fn container_alive(cli: &DockerCli, id: &str) -> Option<bool> {
    let out = cli
        .command()
        .args([
            "inspect",
            "--type",
            "container",
            "--format",
            "{{json .State}}",
            id,
        ])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
        return if err.contains("no such container") || err.contains("no such object") {
            Some(false)
        } else {
            None
        };
    }
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(state_alive(&state))
}

/// The host paths container `id` bind-mounts (`docker inspect`'s `.Mounts` of type `bind`), for `--volumes-from`.
pub fn bind_sources(cli: &DockerCli, id: &str) -> Result<Vec<String>, String> {
    let out = cli
        .command()
        .args([
            "inspect",
            "--type",
            "container",
            "--format",
            "{{json .Mounts}}",
            id,
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cli.path.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err
            .trim()
            .lines()
            .next()
            .unwrap_or("docker inspect failed")
            .to_string());
    }
    let mounts: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("docker inspect answered something else than mounts: {e}"))?;
    Ok(mounts
        .iter()
        .filter(|m| m.get("Type").and_then(|t| t.as_str()) == Some("bind"))
        .filter_map(|m| m.get("Source").and_then(|s| s.as_str()).map(String::from))
        .collect())
}

/// The liveness rule over docker's `.State` JSON.
pub fn state_alive(state: &serde_json::Value) -> bool {
    let status = state.get("Status").and_then(|s| s.as_str()).unwrap_or("");
    let error = state.get("Error").and_then(|s| s.as_str()).unwrap_or("");
    match status {
        "running" | "paused" | "restarting" => true,
        "created" => error.is_empty(),
        _ => false,
    }
}

/// gc's probe for docker holders.
#[derive(Debug, Clone, Copy, Default)]
pub struct DockerProbe;

impl HolderProbe for DockerProbe {
    fn container_alive(&self, id: &str, engine: &str) -> Option<bool> {
        container_alive(&DockerCli::from_engine_tag(engine)?, id)
    }

    fn launched_alive(&self, lease: LeaseId, launch: &str, engine: &str) -> Option<bool> {
        launched_alive(&DockerCli::from_engine_tag(engine)?, lease, launch)
    }
}

/// Does the daemon hold a live container labelled `migrun.lease=<lease>` and `migrun.launch=<launch>` (one a launcher
/// started but never recorded, because it was killed before docker wrote the cidfile)? Asks the endpoint recorded in
/// the lease (`docker ps -a` with both labels, then each container's state); `None` when the daemon cannot be asked.
pub fn launched_alive(cli: &DockerCli, lease: LeaseId, launch: &str) -> Option<bool> {
    let out = cli
        .command()
        .args(["ps", "--all", "--quiet", "--no-trunc"])
        .arg("--filter")
        .arg(format!("label={LABEL_LEASE}={lease}"))
        .arg("--filter")
        .arg(format!("label={LABEL_LAUNCH}={launch}"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mut any_unknown = false;
    for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        match container_alive(cli, id) {
            Some(true) => return Some(true),
            Some(false) => {}
            None => any_unknown = true,
        }
    }
    (!any_unknown).then_some(false)
}

/// Block until the container is gone for good (`docker wait`, then a look at its state, since a restart policy
/// brings it back). Returns `Some(code)` / `Some(None)` when gone, `None` when docker stayed unreachable for `give_up`.
pub fn wait_gone(cli: &DockerCli, id: &str, give_up: Duration) -> Option<Option<i32>> {
    let mut unreachable_since: Option<Instant> = None;
    loop {
        let out = cli
            .command()
            .args(["wait", id])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        let code = out.ok().filter(|o| o.status.success()).and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<i32>()
                .ok()
        });
        match container_alive(cli, id) {
            Some(false) => return Some(code),
            Some(true) => {
                unreachable_since = None;
                if code.is_none() {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            None => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= give_up {
                    return None;
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injection_per_mode() {
        let u = "MIG-2f4a3a5e-0000-4000-8000-000000000001";
        let table = [
            (InjectMode::Gpus, format!("--gpus device={u}")),
            (
                InjectMode::NvidiaRuntime,
                format!("--runtime nvidia -e NVIDIA_VISIBLE_DEVICES={u}"),
            ),
            (InjectMode::Cdi, "--device migrun.io/mig=7".to_string()),
            (InjectMode::Env, format!("-e NVIDIA_VISIBLE_DEVICES={u}")),
        ];
        for (mode, want) in table {
            assert_eq!(inject_args(mode, "7", u).join(" "), want, "{mode:?}");
            // What migrun injects must pass its own check, or no mode could ever run.
            let mut line = inject_args(mode, "7", u);
            line.push("img".into());
            let r = RunLine::parse(&line).unwrap();
            assert!(
                r.opts
                    .iter()
                    .all(|o| o.name != "gpus" || mode == InjectMode::Gpus),
                "{mode:?}"
            );
        }
        let line = RunLine::parse(&["--rm", "--", "img", "true"].map(String::from)).unwrap();
        let mut ours = label_args("7", "3g.40gb", u);
        ours.extend(inject_args(InjectMode::Env, "7", u));
        assert_eq!(
            line.argv(&ours).join(" "),
            format!("run --rm --label migrun.lease=7 --label migrun.profile=3g.40gb --label migrun.uuid={u} -e NVIDIA_VISIBLE_DEVICES={u} -- img true")
        );
    }

    #[test]
    fn engine_tags_round_trip() {
        let cli = DockerCli {
            path: "/usr/bin/docker".into(),
            host: Some("unix:///tmp/d/docker.sock".into()),
            explicit: true,
        };
        assert_eq!(
            cli.engine_tag(),
            "docker|host=unix:///tmp/d/docker.sock|cli=/usr/bin/docker"
        );
        assert_eq!(DockerCli::from_engine_tag(&cli.engine_tag()), Some(cli));
        let default = DockerCli {
            path: "/usr/bin/docker".into(),
            host: None,
            explicit: false,
        };
        assert_eq!(default.engine_tag(), "docker");
        assert_eq!(DockerCli::from_engine_tag("podman"), None);
        assert!(DockerCli::from_engine_tag("docker").is_some());
    }

    #[test]
    fn liveness_from_state() {
        let s = |j: &str| state_alive(&serde_json::from_str(j).unwrap());
        assert!(s(r#"{"Status":"running"}"#));
        assert!(s(r#"{"Status":"restarting"}"#));
        assert!(s(r#"{"Status":"paused"}"#));
        assert!(s(r#"{"Status":"created","Error":""}"#));
        assert!(!s(
            r#"{"Status":"created","Error":"exec: \"nope\": not found"}"#
        ));
        assert!(!s(r#"{"Status":"exited"}"#));
        assert!(!s(r#"{"Status":"dead"}"#));
        assert!(!s(r#"{"Status":"removing"}"#));
    }

    #[test]
    fn quoting_for_the_printed_command() {
        assert_eq!(shell_quote("busybox"), "busybox");
        assert_eq!(
            shell_quote("NVIDIA_VISIBLE_DEVICES=MIG-1"),
            "NVIDIA_VISIBLE_DEVICES=MIG-1"
        );
        assert_eq!(shell_quote("exit 7"), "'exit 7'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_line(&["sh", "-c", "echo $X"]), "sh -c 'echo $X'");
    }

    #[test]
    fn finds_executables_on_a_path() {
        let d = tempfile::tempdir().unwrap();
        let exe = d.path().join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::write(d.path().join("plain"), "").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([Path::new("/nonexistent"), d.path()]).unwrap();
        assert_eq!(
            find_executable(OsStr::new("tool"), Some(&path)),
            Some(exe.clone())
        );
        assert_eq!(find_executable(OsStr::new("plain"), Some(&path)), None);
        assert_eq!(find_executable(exe.as_os_str(), None), Some(exe));
    }
}
