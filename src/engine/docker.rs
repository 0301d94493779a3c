//! The docker launcher's engine side: read `docker run` options, refuse device choices, build the argv with the MIG
//! device injected, detect the NVIDIA toolkit, run and supervise the docker CLI (signals, cidfile), wait for detached
//! containers, and tell gc whether a container lives (`docker inspect`); it must not allocate or release by itself.
//!
//! The caller (commands::launch) owns the lease: this module hands it the container id through a callback as soon as
//! docker writes the cidfile, and returns docker's exit code, so "release on every path" stays in one place.

use crate::alloc::HolderProbe;
use crate::cli::InjectMode;
use signal_hook::iterator::exfiltrator::origin::WithOrigin;
use signal_hook::iterator::SignalsInfo;
use signal_hook::low_level::siginfo::{Cause, Origin};
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
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

/// Where CDI specs live (the CDI spec's standard directories).
pub const CDI_DIRS: &[&str] = &["/etc/cdi", "/var/run/cdi"];

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
    #[error("cannot read --env-file {path}: {source}; fix the path (migrun checks env files for {vars})", vars = DEVICE_ENV.join(", "))]
    EnvFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--runtime {given} conflicts with --inject nvidia-runtime, which runs the container with --runtime nvidia; drop --runtime or choose another --inject mode")]
    RuntimeConflict { given: String },
    #[error("no NVIDIA container toolkit found ({looked}); install nvidia-container-toolkit, choose a mode with --inject gpus|nvidia-runtime|cdi, or pass --inject env to only set NVIDIA_VISIBLE_DEVICES (plain runtimes, tests)")]
    NoToolkit { looked: String },
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
}

impl DockerError {
    /// Bad input and refusals are usage errors (2); failing to run docker is a failure (1).
    pub fn exit_code(&self) -> i32 {
        match self {
            DockerError::Spawn { .. } | DockerError::Signals(_) => crate::exit::FAILED,
            _ => crate::exit::USAGE,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// docker run's options
// ---------------------------------------------------------------------------------------------

/// docker run's options that take a value (docker 28 `docker run --help`, plus hidden and Windows-only ones,
/// which docker still parses). Knowing them is how migrun finds the IMAGE: docker's parser (pflag) stops at
/// the first word that is neither an option nor an option's value.
const VALUE_OPTIONS: &[&str] = &[
    "add-host",
    "annotation",
    "attach",
    "blkio-weight",
    "blkio-weight-device",
    "cap-add",
    "cap-drop",
    "cgroup-parent",
    "cgroupns",
    "cidfile",
    "cpu-count",
    "cpu-percent",
    "cpu-period",
    "cpu-quota",
    "cpu-rt-period",
    "cpu-rt-runtime",
    "cpu-shares",
    "cpus",
    "cpuset-cpus",
    "cpuset-mems",
    "credentialspec",
    "detach-keys",
    "device",
    "device-cgroup-rule",
    "device-read-bps",
    "device-read-iops",
    "device-write-bps",
    "device-write-iops",
    "dns",
    "dns-option",
    "dns-search",
    "domainname",
    "entrypoint",
    "env",
    "env-file",
    "expose",
    "gpus",
    "group-add",
    "health-cmd",
    "health-interval",
    "health-retries",
    "health-start-interval",
    "health-start-period",
    "health-timeout",
    "hostname",
    "io-maxbandwidth",
    "io-maxiops",
    "ip",
    "ip6",
    "ipc",
    "isolation",
    "kernel-memory",
    "label",
    "label-file",
    "link",
    "link-local-ip",
    "log-driver",
    "log-opt",
    "mac-address",
    "memory",
    "memory-reservation",
    "memory-swap",
    "memory-swappiness",
    "mount",
    "name",
    "network",
    "network-alias",
    "oom-score-adj",
    "pid",
    "pids-limit",
    "platform",
    "publish",
    "pull",
    "restart",
    "runtime",
    "security-opt",
    "shm-size",
    "stop-signal",
    "stop-timeout",
    "storage-opt",
    "sysctl",
    "tmpfs",
    "ulimit",
    "user",
    "userns",
    "uts",
    "volume",
    "volume-driver",
    "volumes-from",
    "workdir",
];

/// docker run's switches (no value, or `--switch=false`).
const BOOL_OPTIONS: &[&str] = &[
    "detach",
    "disable-content-trust",
    "help",
    "init",
    "interactive",
    "no-healthcheck",
    "oom-kill-disable",
    "privileged",
    "publish-all",
    "quiet",
    "read-only",
    "rm",
    "sig-proxy",
    "tty",
    "use-api-socket",
];

/// Short forms.
const SHORT_OPTIONS: &[(char, &str)] = &[
    ('a', "attach"),
    ('c', "cpu-shares"),
    ('d', "detach"),
    ('e', "env"),
    ('h', "hostname"),
    ('i', "interactive"),
    ('l', "label"),
    ('m', "memory"),
    ('p', "publish"),
    ('P', "publish-all"),
    ('q', "quiet"),
    ('t', "tty"),
    ('u', "user"),
    ('v', "volume"),
    ('w', "workdir"),
];

/// Old spellings docker still accepts.
const ALIASES: &[(&str, &str)] = &[
    ("net", "network"),
    ("net-alias", "network-alias"),
    ("dns-opt", "dns-option"),
];

fn canonical(long: &str) -> &str {
    ALIASES
        .iter()
        .find(|(a, _)| *a == long)
        .map_or(long, |(_, c)| c)
}

/// Is `--name` (without dashes) one of docker run's long options? The command line uses it so a
/// near miss of migrun's own flags is suggested only when docker would not take it (`--pid` is
/// docker's, `--proflie` is nobody's).
pub fn is_docker_option(name: &str) -> bool {
    let c = canonical(name);
    VALUE_OPTIONS.contains(&c) || BOOL_OPTIONS.contains(&c)
}

/// pflag's boolean spellings (Go's strconv.ParseBool).
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// One docker option as given: canonical long name and its value (`None` for a bare switch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerOpt {
    pub name: String,
    pub value: Option<String>,
    /// How the user wrote it (for messages), e.g. `-e` or `--env`.
    pub spelled: String,
}

/// A `docker run` line split the way docker splits it: options, IMAGE, command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLine {
    /// The option words exactly as given, before IMAGE (passed through unchanged).
    pub words: Vec<String>,
    /// The options those words hold.
    pub opts: Vec<DockerOpt>,
    pub image: String,
    pub command: Vec<String>,
    /// The user ended the options with `--`.
    dashdash: bool,
}

impl RunLine {
    /// Split docker's part of the command line (everything after migrun's own flags).
    pub fn parse(args: &[String]) -> Result<RunLine, DockerError> {
        let mut opts = Vec::new();
        let mut i = 0;
        let mut dashdash = false;
        while i < args.len() {
            let a = &args[i];
            if a == "--" {
                dashdash = true;
                i += 1;
                break;
            }
            if let Some(body) = a.strip_prefix("--") {
                let (name, inline) = match body.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_string())),
                    None => (body, None),
                };
                let name = canonical(name);
                if BOOL_OPTIONS.contains(&name) {
                    opts.push(DockerOpt {
                        name: name.into(),
                        value: inline,
                        spelled: format!("--{name}"),
                    });
                } else if VALUE_OPTIONS.contains(&name) {
                    let value = match inline {
                        Some(v) => v,
                        None => {
                            i += 1;
                            args.get(i)
                                .cloned()
                                .ok_or_else(|| DockerError::MissingValue { option: a.clone() })?
                        }
                    };
                    opts.push(DockerOpt {
                        name: name.into(),
                        value: Some(value),
                        spelled: format!("--{name}"),
                    });
                } else if let Some(v) = inline {
                    // Unknown, but unambiguous: its value is attached. Pass it through for docker to judge.
                    opts.push(DockerOpt {
                        name: name.into(),
                        value: Some(v),
                        spelled: format!("--{name}"),
                    });
                } else {
                    return Err(DockerError::UnknownOption { option: a.clone() });
                }
                i += 1;
                continue;
            }
            if a.len() > 1 && a.starts_with('-') {
                // A group of short options (`-it`, `-dp 80:80`, `-eX=1`): switches until one takes a value,
                // which is the rest of the word or, when nothing is left, the next word (pflag's rules).
                let chars: Vec<char> = a[1..].chars().collect();
                let mut k = 0;
                while k < chars.len() {
                    let c = chars[k];
                    let Some((_, long)) = SHORT_OPTIONS.iter().find(|(s, _)| *s == c) else {
                        return Err(DockerError::UnknownOption {
                            option: format!("-{c}"),
                        });
                    };
                    let rest: String = chars[k + 1..].iter().collect();
                    if BOOL_OPTIONS.contains(long) {
                        if let Some(v) = rest.strip_prefix('=') {
                            opts.push(DockerOpt {
                                name: (*long).into(),
                                value: Some(v.into()),
                                spelled: format!("-{c}"),
                            });
                            break;
                        }
                        opts.push(DockerOpt {
                            name: (*long).into(),
                            value: None,
                            spelled: format!("-{c}"),
                        });
                        k += 1;
                        continue;
                    }
                    let value = if !rest.is_empty() {
                        rest.strip_prefix('=').unwrap_or(&rest).to_string()
                    } else {
                        i += 1;
                        args.get(i)
                            .cloned()
                            .ok_or_else(|| DockerError::MissingValue {
                                option: format!("-{c}"),
                            })?
                    };
                    opts.push(DockerOpt {
                        name: (*long).into(),
                        value: Some(value),
                        spelled: format!("-{c}"),
                    });
                    break;
                }
                i += 1;
                continue;
            }
            break;
        }
        let words_end = if dashdash { i - 1 } else { i };
        let Some(image) = args.get(i).cloned() else {
            return Err(DockerError::NoImage);
        };
        Ok(RunLine {
            words: args[..words_end].to_vec(),
            opts,
            image,
            command: args[i + 1..].to_vec(),
            dashdash,
        })
    }

    /// Values of every occurrence of option `name` (canonical long name).
    pub fn values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let name = name.to_string();
        self.opts
            .iter()
            .filter(move |o| o.name == name)
            .filter_map(|o| o.value.as_deref())
    }

    /// The last value of `name` (docker keeps the last one of a single-valued option).
    pub fn last(&self, name: &str) -> Option<&str> {
        self.values(name).last()
    }

    /// Is switch `name` on? A bare switch is on; `--name=false` turns it off again.
    pub fn switch(&self, name: &str) -> bool {
        self.opts.iter().rfind(|o| o.name == name).is_some_and(|o| {
            o.value
                .as_deref()
                .map_or(true, |v| parse_bool(v) == Some(true))
        })
    }

    /// `-d` / `--detach`.
    pub fn detach(&self) -> bool {
        self.switch("detach")
    }

    /// The user's own `--cidfile`, if any.
    pub fn cidfile(&self) -> Option<&str> {
        self.last("cidfile")
    }

    /// A user's `--cidfile` must not exist yet: docker refuses it, and its old content would name another container.
    pub fn check_cidfile(&self) -> Result<(), DockerError> {
        match self.cidfile() {
            Some(p) if std::fs::symlink_metadata(p).is_ok() => {
                Err(DockerError::CidfileExists(PathBuf::from(p)))
            }
            _ => Ok(()),
        }
    }

    /// Refuse what would let the container pick its own GPU, and options that conflict with `mode`.
    /// `read_file` reads `--env-file`s (a parameter so the check stays testable without files).
    pub fn check(
        &self,
        mode: InjectMode,
        read_file: &dyn Fn(&Path) -> std::io::Result<String>,
    ) -> Result<(), DockerError> {
        for o in &self.opts {
            let v = o.value.as_deref().unwrap_or("");
            match o.name.as_str() {
                "help" => {
                    return Err(DockerError::Help {
                        option: o.spelled.clone(),
                    })
                }
                "gpus" => {
                    return Err(DockerError::DeviceChoice {
                        given: format!("{} {v}", o.spelled),
                    })
                }
                "env" => {
                    if let Some(var) = device_env_name(v) {
                        return Err(DockerError::DeviceChoice {
                            given: format!("{} {var}", o.spelled),
                        });
                    }
                }
                "env-file" => {
                    let text = read_file(Path::new(v)).map_err(|source| DockerError::EnvFile {
                        path: v.into(),
                        source,
                    })?;
                    for line in text.lines() {
                        let line = line.trim_start_matches('\u{feff}').trim_start();
                        if line.starts_with('#') {
                            continue;
                        }
                        if let Some(var) = device_env_name(line) {
                            return Err(DockerError::DeviceChoice {
                                given: format!("{var} in --env-file {v}"),
                            });
                        }
                    }
                }
                "device" if is_gpu_device(v) => {
                    return Err(DockerError::DeviceChoice {
                        given: format!("{} {v}", o.spelled),
                    })
                }
                "runtime" if mode == InjectMode::NvidiaRuntime && v != "nvidia" => {
                    return Err(DockerError::RuntimeConflict { given: v.into() })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Warnings about options that weaken the isolation migrun sets up (shown, not refused).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.switch("privileged") {
            out.push("--privileged exposes every /dev/nvidia* node to the container, so it can reach GPUs beyond its slice".to_string());
        }
        out
    }

    /// `docker run` argv: the user's options unchanged, then migrun's (last, so they win), then IMAGE and CMD.
    pub fn argv(&self, ours: &[String]) -> Vec<String> {
        let mut v = Vec::with_capacity(self.words.len() + ours.len() + self.command.len() + 3);
        v.push("run".to_string());
        v.extend(self.words.iter().cloned());
        v.extend(ours.iter().cloned());
        if self.dashdash {
            v.push("--".into());
        }
        v.push(self.image.clone());
        v.extend(self.command.iter().cloned());
        v
    }
}

/// The device-choosing variable an `-e` value / env-file line sets, if any (`NAME=V`, or bare `NAME` which copies the host's).
fn device_env_name(entry: &str) -> Option<&'static str> {
    let name = entry.trim_start().split('=').next().unwrap_or("");
    DEVICE_ENV.iter().copied().find(|v| *v == name)
}

/// `--device` values that pick an NVIDIA GPU: a CDI name of vendor nvidia.com, or an NVIDIA device node.
fn is_gpu_device(v: &str) -> bool {
    let host = v.split(':').next().unwrap_or("");
    v.starts_with("nvidia.com/") || host.starts_with("/dev/nvidia")
}

/// The options that hand the MIG device to the container in `mode`.
pub fn inject_args(mode: InjectMode, mig_uuid: &str) -> Vec<String> {
    let env = format!("NVIDIA_VISIBLE_DEVICES={mig_uuid}");
    match mode {
        InjectMode::Gpus => vec!["--gpus".into(), format!("device={mig_uuid}")],
        InjectMode::NvidiaRuntime => {
            vec!["--runtime".into(), "nvidia".into(), "-e".into(), env]
        }
        InjectMode::Cdi => vec!["--device".into(), format!("nvidia.com/gpu={mig_uuid}")],
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
        let mut c = Command::new(&self.path);
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
// Toolkit detection
// ---------------------------------------------------------------------------------------------

/// What the machine offers for getting a GPU into a docker container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolkitFacts {
    /// `nvidia-container-runtime-hook` on PATH: dockerd's `--gpus` driver uses it.
    pub hook: Option<PathBuf>,
    /// `nvidia-container-runtime` on PATH.
    pub runtime: Option<PathBuf>,
    /// Runtimes `docker info` lists; `None` when it was not asked or did not answer.
    pub docker_runtimes: Option<Vec<String>>,
    /// CDI spec files that declare `nvidia.com/gpu` devices.
    pub cdi_specs: Vec<PathBuf>,
}

/// The chosen mode and why (shown with --verbose).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub mode: InjectMode,
    pub why: String,
}

/// Pick an injection mode from what was found. Order: `--gpus` (the toolkit's documented way), the registered
/// nvidia runtime, CDI, then an nvidia-container-runtime whose registration could not be checked.
pub fn choose_mode(f: &ToolkitFacts) -> Result<Detected, DockerError> {
    if let Some(h) = &f.hook {
        return Ok(Detected {
            mode: InjectMode::Gpus,
            why: format!("{} is installed, so docker's --gpus works", h.display()),
        });
    }
    let registered = f
        .docker_runtimes
        .as_ref()
        .is_some_and(|r| r.iter().any(|x| x == "nvidia"));
    if registered {
        return Ok(Detected {
            mode: InjectMode::NvidiaRuntime,
            why: "`docker info` lists the nvidia runtime".into(),
        });
    }
    if let Some(spec) = f.cdi_specs.first() {
        return Ok(Detected {
            mode: InjectMode::Cdi,
            why: format!(
                "CDI spec {} declares nvidia.com/gpu devices",
                spec.display()
            ),
        });
    }
    if let (Some(r), None) = (&f.runtime, &f.docker_runtimes) {
        return Ok(Detected {
            mode: InjectMode::NvidiaRuntime,
            why: format!(
                "{} is installed (docker did not say which runtimes it has)",
                r.display()
            ),
        });
    }
    let mut looked = vec![
        "no nvidia-container-runtime-hook on PATH".to_string(),
        match (&f.runtime, &f.docker_runtimes) {
            (Some(r), Some(_)) => format!(
                "{} is installed but docker does not list it as a runtime (register it: nvidia-ctk runtime configure --runtime=docker)",
                r.display()
            ),
            (None, Some(_)) => "no nvidia runtime in `docker info`".to_string(),
            _ => "no nvidia-container-runtime on PATH".to_string(),
        },
    ];
    looked.push(format!(
        "no nvidia.com/gpu CDI spec in {}",
        CDI_DIRS.join(" or ")
    ));
    Err(DockerError::NoToolkit {
        looked: looked.join(", "),
    })
}

/// CDI spec files in `dirs` that mention the `nvidia.com/gpu` kind.
pub fn cdi_specs(dirs: &[&Path]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in dirs {
        let Ok(entries) = std::fs::read_dir(d) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !matches!(ext, "json" | "yaml" | "yml") {
                continue;
            }
            if std::fs::read_to_string(&f).is_ok_and(|t| t.contains("nvidia.com/gpu")) {
                out.push(f);
            }
        }
    }
    out
}

/// The runtimes the daemon knows (`docker info`), or `None` when it does not answer.
pub fn docker_runtimes(cli: &DockerCli) -> Option<Vec<String>> {
    let out = cli
        .command()
        .args(["info", "--format", "{{json .Runtimes}}"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v.as_object()?.keys().cloned().collect())
}

/// Look at this machine and choose a mode (asks docker only when PATH did not already decide).
pub fn detect(cli: &DockerCli) -> Result<Detected, DockerError> {
    let path_env = std::env::var_os("PATH");
    let mut facts = ToolkitFacts {
        hook: find_executable(
            OsStr::new("nvidia-container-runtime-hook"),
            path_env.as_deref(),
        ),
        runtime: find_executable(OsStr::new("nvidia-container-runtime"), path_env.as_deref()),
        ..Default::default()
    };
    if facts.hook.is_none() {
        facts.docker_runtimes = docker_runtimes(cli);
        let dirs: Vec<&Path> = CDI_DIRS.iter().map(Path::new).collect();
        facts.cdi_specs = cdi_specs(&dirs);
    }
    choose_mode(&facts)
}

// ---------------------------------------------------------------------------------------------
// Running docker
// ---------------------------------------------------------------------------------------------

/// Signals migrun passes on to the docker CLI, which passes them on to the container (its sig-proxy).
pub const FORWARDED: &[i32] = &[
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGHUP,
    signal_hook::consts::SIGQUIT,
    signal_hook::consts::SIGUSR1,
    signal_hook::consts::SIGUSR2,
];

/// Should a signal with this origin be forwarded? Not when the kernel sent it: a terminal's Ctrl-C or hang-up goes
/// to the whole foreground process group, so docker got it already, and a second copy would hit the container twice.
pub fn should_forward(cause: Cause) -> bool {
    !matches!(cause, Cause::Kernel)
}

/// How a docker child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// docker's exit code (128+N when docker itself died of signal N).
    pub code: i32,
    /// The container id from the cidfile, when docker got as far as creating one.
    pub container: Option<String>,
    /// Signals forwarded to docker, for --verbose.
    pub forwarded: Vec<i32>,
}

/// The exit code a shell would show for `status`.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(crate::exit::FAILED)
}

/// The container id in a cidfile, once docker has written it whole.
pub fn read_cidfile(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let id = text.trim();
    (id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

/// Run `docker <argv>` with the terminal inherited, forward signals to it, and report the container id through
/// `on_container` as soon as `cidfile` holds it. Returns when docker exits. Signals stay caught until the caller
/// drops the returned guard, so migrun cannot be interrupted between docker's exit and the release.
pub fn run_supervised(
    cli: &DockerCli,
    argv: &[String],
    cidfile: &Path,
    on_container: &mut dyn FnMut(&str),
) -> Result<(Finished, SignalGuard), DockerError> {
    let mut wanted: Vec<i32> = FORWARDED.to_vec();
    wanted.push(signal_hook::consts::SIGCHLD);
    // Registered before the spawn: a signal or the child's exit can never slip in unnoticed.
    let mut signals = SignalsInfo::<WithOrigin>::new(&wanted).map_err(DockerError::Signals)?;
    let mut child = cli
        .command()
        .args(argv)
        .spawn()
        .map_err(|source| DockerError::Spawn {
            cli: cli.path.clone(),
            source,
        })?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut container: Option<String> = None;
    let mut forwarded = Vec::new();
    let mut batch: Vec<Origin> = Vec::new();
    let status = loop {
        batch.extend(signals.pending());
        for o in batch.drain(..) {
            if o.signal != signal_hook::consts::SIGCHLD && should_forward(o.cause) {
                // The child is not reaped before try_wait below, so `pid` is still ours.
                if let Ok(sig) = nix::sys::signal::Signal::try_from(o.signal) {
                    let _ = nix::sys::signal::kill(pid, sig);
                    forwarded.push(o.signal);
                }
            }
        }
        if container.is_none() {
            if let Some(id) = read_cidfile(cidfile) {
                on_container(&id);
                container = Some(id);
            }
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => {
                return Err(DockerError::Spawn {
                    cli: cli.path.clone(),
                    source,
                })
            }
        }
        if container.is_some() {
            // Nothing to poll for any more: sleep until a signal (SIGCHLD included) arrives; the loop's top
            // forwards what came.
            batch.extend(signals.wait());
        } else {
            // Poll the cidfile often, to shorten the window in which the lease still names migrun's pid.
            // Signals that arrive meanwhile are picked up at the loop's top.
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    if container.is_none() {
        if let Some(id) = read_cidfile(cidfile) {
            on_container(&id);
            container = Some(id);
        }
    }
    Ok((
        Finished {
            code: exit_code(status),
            container,
            forwarded,
        },
        SignalGuard { _signals: signals },
    ))
}

/// Keeps SIGINT/SIGTERM/... caught (so they do not kill migrun) while it is alive.
pub struct SignalGuard {
    _signals: SignalsInfo<WithOrigin>,
}

impl SignalGuard {
    /// Catch the forwarded signals without acting on them (for the release after a docker child has ended).
    pub fn catch() -> Result<SignalGuard, DockerError> {
        Ok(SignalGuard {
            _signals: SignalsInfo::<WithOrigin>::new(FORWARDED).map_err(DockerError::Signals)?,
        })
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

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn parse(s: &str) -> RunLine {
        RunLine::parse(&words(s)).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn no_files(_: &Path) -> std::io::Result<String> {
        Err(std::io::Error::from(std::io::ErrorKind::NotFound))
    }

    #[test]
    fn finds_the_image_after_options_with_values() {
        let table: &[(&str, &str, &[&str])] = &[
            ("busybox", "busybox", &[]),
            ("-it --rm busybox sh", "busybox", &["sh"]),
            ("-e X=1 -v /a:/b --name n img", "img", &[]),
            (
                "--env=X=1 --shm-size 1g img -c true",
                "img",
                &["-c", "true"],
            ),
            ("-dp 8080:80 img", "img", &[]),
            ("-itd img", "img", &[]),
            ("-eX=1 img", "img", &[]),
            ("-e=X=1 img", "img", &[]),
            ("--rm=false --sig-proxy=false img", "img", &[]),
            ("-d=true img", "img", &[]),
            ("--net host --dns-opt x img", "img", &[]),
            ("-h myhost -w /tmp img pwd", "img", &["pwd"]),
            ("-e -it img", "img", &[]),
            ("--rm -- img -it", "img", &["-it"]),
            ("--new-thing=3 img", "img", &[]),
            ("img --rm -e X", "img", &["--rm", "-e", "X"]),
        ];
        for (line, image, cmd) in table {
            let r = parse(line);
            assert_eq!(&r.image, image, "{line}");
            assert_eq!(r.command, cmd.to_vec(), "{line}");
            assert_eq!(r.argv(&[])[1..].join(" "), line.to_string(), "{line}");
        }
        assert!(parse("-itd img").detach());
        assert!(!parse("-d=false img").detach());
        assert!(parse("--detach img").detach());
        assert!(!parse("-it img").detach());
        assert_eq!(
            parse("-e -it img").values("env").collect::<Vec<_>>(),
            ["-it"]
        );
        assert_eq!(parse("--cidfile /x img").cidfile(), Some("/x"));
        let d = tempfile::tempdir().unwrap();
        let old = d.path().join("cid");
        let line = parse(&format!("--cidfile {} img", old.display()));
        assert!(line.check_cidfile().is_ok());
        std::fs::write(&old, "0123456789ab").unwrap();
        assert!(matches!(
            line.check_cidfile(),
            Err(DockerError::CidfileExists(_))
        ));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let err = |s: &str| RunLine::parse(&words(s)).unwrap_err().to_string();
        assert!(err("--rm").contains("no IMAGE"));
        assert!(err("").contains("no IMAGE"));
        assert!(err("--name").contains("--name needs a value"));
        assert!(err("-it -e").contains("-e needs a value"));
        let e = err("--frobnicate img");
        assert!(e.contains("--frobnicate=VALUE"), "{e}");
        assert!(err("-Z img").contains("-Z"));
    }

    #[test]
    fn refuses_every_way_of_choosing_a_gpu() {
        let refused = [
            "-e NVIDIA_VISIBLE_DEVICES=all img",
            "--env NVIDIA_VISIBLE_DEVICES=0 img",
            "--env=NVIDIA_VISIBLE_DEVICES img",
            "-eNVIDIA_MIG_CONFIG_DEVICES=all img",
            "-e NVIDIA_MIG_MONITOR_DEVICES=all img",
            "--gpus all img",
            "--gpus=device=0 img",
            "--device nvidia.com/gpu=0 img",
            "--device=nvidia.com/gpu=all img",
            "--device nvidia.com/mig=0:1 img",
            "--device /dev/nvidia0 img",
            "--device /dev/nvidia-caps/nvidia-cap12:/dev/x img",
        ];
        for line in refused {
            let e = parse(line).check(InjectMode::Env, &no_files).unwrap_err();
            assert!(matches!(e, DockerError::DeviceChoice { .. }), "{line}: {e}");
            assert_eq!(e.exit_code(), crate::exit::USAGE);
            assert!(e.to_string().contains("cannot choose its own GPU"), "{e}");
        }
        let allowed = [
            "-e CUDA_VISIBLE_DEVICES=0 img",
            "-e NVIDIA_DRIVER_CAPABILITIES=all img",
            "--device /dev/fuse img",
            "img -e NVIDIA_VISIBLE_DEVICES=all",
            "--runtime nvidia img",
        ];
        for line in allowed {
            parse(line)
                .check(InjectMode::Env, &no_files)
                .unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }

    #[test]
    fn env_files_are_read_like_docker_reads_them() {
        let files = |p: &Path| -> std::io::Result<String> {
            match p.to_str().unwrap() {
                "bad" => {
                    Ok("# NVIDIA_VISIBLE_DEVICES=x\nA=1\n  NVIDIA_VISIBLE_DEVICES=all\n".into())
                }
                "bare" => Ok("\u{feff}NVIDIA_MIG_CONFIG_DEVICES\n".into()),
                "ok" => Ok("# NVIDIA_VISIBLE_DEVICES=all\nA=NVIDIA_VISIBLE_DEVICES=1\n".into()),
                _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
            }
        };
        assert!(parse("--env-file ok img")
            .check(InjectMode::Env, &files)
            .is_ok());
        for f in ["bad", "bare"] {
            let e = parse(&format!("--env-file {f} img"))
                .check(InjectMode::Env, &files)
                .unwrap_err();
            assert!(e.to_string().contains(&format!("--env-file {f}")), "{e}");
        }
        let e = parse("--env-file missing img")
            .check(InjectMode::Env, &files)
            .unwrap_err();
        assert!(matches!(e, DockerError::EnvFile { .. }), "{e}");
    }

    #[test]
    fn help_and_runtime_conflicts() {
        let e = parse("-it --help img")
            .check(InjectMode::Env, &no_files)
            .unwrap_err();
        assert!(matches!(e, DockerError::Help { .. }));
        let e = parse("--runtime runc img")
            .check(InjectMode::NvidiaRuntime, &no_files)
            .unwrap_err();
        assert!(matches!(e, DockerError::RuntimeConflict { .. }));
        assert!(parse("--runtime nvidia img")
            .check(InjectMode::NvidiaRuntime, &no_files)
            .is_ok());
        assert!(parse("--runtime runc img")
            .check(InjectMode::Env, &no_files)
            .is_ok());
        assert_eq!(parse("--privileged img").warnings().len(), 1);
        assert!(parse("--privileged=false img").warnings().is_empty());
    }

    #[test]
    fn injection_per_mode() {
        let u = "MIG-2f4a3a5e-0000-4000-8000-000000000001";
        let table = [
            (InjectMode::Gpus, format!("--gpus device={u}")),
            (
                InjectMode::NvidiaRuntime,
                format!("--runtime nvidia -e NVIDIA_VISIBLE_DEVICES={u}"),
            ),
            (InjectMode::Cdi, format!("--device nvidia.com/gpu={u}")),
            (InjectMode::Env, format!("-e NVIDIA_VISIBLE_DEVICES={u}")),
        ];
        for (mode, want) in table {
            assert_eq!(inject_args(mode, u).join(" "), want, "{mode:?}");
            // What migrun injects must pass its own check, or no mode could ever run.
            let mut line = inject_args(mode, u);
            line.push("img".into());
            let r = RunLine::parse(&line).unwrap();
            assert!(
                r.opts
                    .iter()
                    .all(|o| o.name != "gpus" || mode == InjectMode::Gpus),
                "{mode:?}"
            );
        }
        let line = parse("--rm -- img true");
        let mut ours = label_args("7", "3g.40gb", u);
        ours.extend(inject_args(InjectMode::Env, u));
        assert_eq!(
            line.argv(&ours).join(" "),
            format!("run --rm --label migrun.lease=7 --label migrun.profile=3g.40gb --label migrun.uuid={u} -e NVIDIA_VISIBLE_DEVICES={u} -- img true")
        );
    }

    #[test]
    fn toolkit_detection_order() {
        let hook = ToolkitFacts {
            hook: Some("/usr/bin/nvidia-container-runtime-hook".into()),
            runtime: Some("/usr/bin/nvidia-container-runtime".into()),
            docker_runtimes: Some(vec!["runc".into(), "nvidia".into()]),
            cdi_specs: vec!["/etc/cdi/nvidia.yaml".into()],
        };
        assert_eq!(choose_mode(&hook).unwrap().mode, InjectMode::Gpus);
        let runtime = ToolkitFacts {
            hook: None,
            ..hook.clone()
        };
        assert_eq!(
            choose_mode(&runtime).unwrap().mode,
            InjectMode::NvidiaRuntime
        );
        let cdi = ToolkitFacts {
            docker_runtimes: Some(vec!["runc".into()]),
            ..runtime.clone()
        };
        assert_eq!(choose_mode(&cdi).unwrap().mode, InjectMode::Cdi);
        let unknown_docker = ToolkitFacts {
            docker_runtimes: None,
            cdi_specs: vec![],
            ..runtime.clone()
        };
        assert_eq!(
            choose_mode(&unknown_docker).unwrap().mode,
            InjectMode::NvidiaRuntime
        );
        let unregistered = ToolkitFacts {
            docker_runtimes: Some(vec!["runc".into()]),
            cdi_specs: vec![],
            ..runtime
        };
        let e = choose_mode(&unregistered).unwrap_err().to_string();
        assert!(e.contains("nvidia-ctk runtime configure"), "{e}");
        let e = choose_mode(&ToolkitFacts::default()).unwrap_err();
        assert_eq!(e.exit_code(), crate::exit::USAGE);
        assert!(e.to_string().contains("--inject env"), "{e}");
    }

    #[test]
    fn cdi_specs_are_found_by_kind() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("nvidia.yaml"),
            "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\n",
        )
        .unwrap();
        std::fs::write(d.path().join("other.json"), r#"{"kind":"vendor.com/fpga"}"#).unwrap();
        std::fs::write(d.path().join("notes.txt"), "nvidia.com/gpu").unwrap();
        let found = cdi_specs(&[d.path(), Path::new("/nonexistent/cdi")]);
        assert_eq!(found, vec![d.path().join("nvidia.yaml")]);
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
    fn cidfile_is_read_only_when_whole() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cid");
        assert_eq!(read_cidfile(&p), None);
        std::fs::write(&p, "").unwrap();
        assert_eq!(read_cidfile(&p), None);
        let id = "0123456789abcdef".repeat(4);
        std::fs::write(&p, &id).unwrap();
        assert_eq!(read_cidfile(&p), Some(id));
    }

    #[test]
    fn terminal_signals_are_not_forwarded_twice() {
        use signal_hook::low_level::siginfo::Sent;
        assert!(!should_forward(Cause::Kernel));
        assert!(should_forward(Cause::Sent(Sent::User)));
        assert!(should_forward(Cause::Unknown));
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
