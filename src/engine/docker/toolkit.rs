//! Which way a docker container takes the device on this machine (`--inject`'s detection): migrun's own CDI spec when docker
//! resolves CDI devices, else the NVIDIA toolkit's runtime hook or registered runtime; it only looks, it never changes docker's
//! configuration.

use super::{find_executable, DockerCli, DockerError};
use crate::config::InjectMode;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// What the machine offers for getting a GPU into a docker container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolkitFacts {
    /// `nvidia-container-runtime-hook` on PATH: dockerd's `--gpus` driver uses it.
    pub hook: Option<PathBuf>,
    /// `nvidia-container-runtime` on PATH.
    pub runtime: Option<PathBuf>,
    /// Runtimes `docker info` lists; `None` when it was not asked or did not answer.
    pub docker_runtimes: Option<Vec<String>>,
    /// The CDI spec dirs `docker info` reports (`CDISpecDirs`, Docker 25 and newer): empty while the
    /// daemon's CDI is off; `None` when docker does not report them (older than 25, or no answer).
    pub docker_cdi_dirs: Option<Vec<PathBuf>>,
}

/// The chosen mode and why (shown with --verbose).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub mode: InjectMode,
    pub why: String,
}

fn list(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Pick an injection mode from what was found; `spec_dir` is where migrun writes lease specs.
///
/// A docker that resolves CDI devices gets migrun's own device (`--device migrun.io/mig=<lease>`),
/// hook or no hook: such a docker (28.3 and newer, with the toolkit's `nvidia-cdi-hook`) also turns
/// `--gpus device=MIG-…` into the toolkit's CDI device `nvidia.com/gpu=MIG-…`, which the toolkit's
/// spec names only if it was generated after that MIG instance was made. Otherwise: `--gpus` (the
/// toolkit's documented way), the registered nvidia runtime, then an nvidia-container-runtime whose
/// registration could not be checked.
pub fn choose_mode(f: &ToolkitFacts, spec_dir: &Path) -> Result<Detected, DockerError> {
    if let Some(dirs) = f.docker_cdi_dirs.as_ref().filter(|d| !d.is_empty()) {
        if !dirs.iter().any(|d| d == spec_dir) {
            return Err(DockerError::CdiDirs {
                docker: list(dirs),
                ours: spec_dir.to_path_buf(),
            });
        }
        return Ok(Detected {
            mode: InjectMode::Cdi,
            why: format!(
                "docker resolves CDI devices from {}, which holds migrun's lease specs",
                list(dirs)
            ),
        });
    }
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
    if let (Some(r), None) = (&f.runtime, &f.docker_runtimes) {
        return Ok(Detected {
            mode: InjectMode::NvidiaRuntime,
            why: format!(
                "{} is installed (docker did not say which runtimes it has)",
                r.display()
            ),
        });
    }
    let looked = [
        "no nvidia-container-runtime-hook on PATH".to_string(),
        match (&f.runtime, &f.docker_runtimes) {
            (Some(r), Some(_)) => format!(
                "{} is installed but docker does not list it as a runtime (register it: nvidia-ctk runtime configure --runtime=docker)",
                r.display()
            ),
            (None, Some(_)) => "no nvidia runtime in `docker info`".to_string(),
            _ => "no nvidia-container-runtime on PATH".to_string(),
        },
        "docker resolves no CDI devices (Docker 25 or newer with its `cdi` feature on)".to_string(),
    ];
    Err(DockerError::NoToolkit {
        looked: looked.join(", "),
    })
}

/// What `docker info` says about runtimes and CDI, from its JSON (pure).
pub fn from_docker_info(info: &serde_json::Value) -> (Option<Vec<String>>, Option<Vec<PathBuf>>) {
    let runtimes = info
        .get("Runtimes")
        .and_then(|r| r.as_object())
        .map(|r| r.keys().cloned().collect());
    let cdi = info.get("CDISpecDirs").map(|d| {
        d.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(PathBuf::from))
                    .collect()
            })
            .unwrap_or_default()
    });
    (runtimes, cdi)
}

/// `docker info` as JSON, or `None` when it does not answer.
pub fn docker_info(cli: &DockerCli) -> Option<serde_json::Value> {
    let out = cli
        .command()
        .args(["info", "--format", "{{json .}}"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// `p` with symlinks resolved where it exists (`/var/run/cdi` and `/run/cdi` are one directory).
fn resolved(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Look at this machine and choose a mode (`docker info` is asked every time: whether docker
/// resolves CDI decides even where the toolkit's hook is installed).
pub fn detect(cli: &DockerCli, spec_dir: &Path) -> Result<Detected, DockerError> {
    let path_env = std::env::var_os("PATH");
    let (docker_runtimes, docker_cdi_dirs) = docker_info(cli)
        .map(|i| from_docker_info(&i))
        .unwrap_or_default();
    let facts = ToolkitFacts {
        hook: find_executable(
            OsStr::new("nvidia-container-runtime-hook"),
            path_env.as_deref(),
        ),
        runtime: find_executable(OsStr::new("nvidia-container-runtime"), path_env.as_deref()),
        docker_runtimes,
        docker_cdi_dirs: docker_cdi_dirs.map(|d| d.iter().map(|p| resolved(p)).collect()),
    };
    choose_mode(&facts, &resolved(spec_dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OURS: &str = "/var/run/cdi";

    /// (hook, runtime, docker runtimes, docker CDI dirs) -> the mode, or words of the error.
    #[test]
    fn detection_table() {
        let hook = || Some(PathBuf::from("/usr/bin/nvidia-container-runtime-hook"));
        let rt = || Some(PathBuf::from("/usr/bin/nvidia-container-runtime"));
        let runtimes = |n: &[&str]| Some(n.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let dirs = |d: &[&str]| Some(d.iter().map(PathBuf::from).collect::<Vec<_>>());
        type Row = (
            Option<PathBuf>,
            Option<PathBuf>,
            Option<Vec<String>>,
            Option<Vec<PathBuf>>,
            Result<InjectMode, &'static str>,
        );
        let rows: Vec<Row> = vec![
            // Docker 25+ with CDI on: never --gpus, whatever else is installed.
            (
                hook(),
                rt(),
                runtimes(&["runc", "nvidia"]),
                dirs(&["/etc/cdi", OURS]),
                Ok(InjectMode::Cdi),
            ),
            (
                None,
                None,
                runtimes(&["runc"]),
                dirs(&[OURS]),
                Ok(InjectMode::Cdi),
            ),
            // ... but only when it reads the dir migrun writes to.
            (
                hook(),
                None,
                runtimes(&["runc"]),
                dirs(&["/etc/cdi"]),
                Err("cdi_dir"),
            ),
            // Docker 25+ with CDI off (an empty list), and Docker 20.10 (no CDISpecDirs at all): as before.
            (
                hook(),
                rt(),
                runtimes(&["runc", "nvidia"]),
                dirs(&[]),
                Ok(InjectMode::Gpus),
            ),
            (
                hook(),
                None,
                runtimes(&["runc"]),
                None,
                Ok(InjectMode::Gpus),
            ),
            (
                None,
                rt(),
                runtimes(&["runc", "nvidia"]),
                None,
                Ok(InjectMode::NvidiaRuntime),
            ),
            (None, rt(), None, None, Ok(InjectMode::NvidiaRuntime)),
            (
                None,
                rt(),
                runtimes(&["runc"]),
                dirs(&[]),
                Err("nvidia-ctk runtime configure"),
            ),
            (None, None, runtimes(&["runc"]), None, Err("--inject env")),
            (None, None, None, None, Err("no NVIDIA container toolkit")),
        ];
        for (hook, runtime, docker_runtimes, docker_cdi_dirs, want) in rows {
            let f = ToolkitFacts {
                hook,
                runtime,
                docker_runtimes,
                docker_cdi_dirs,
            };
            match (choose_mode(&f, Path::new(OURS)), want) {
                (Ok(d), Ok(m)) => assert_eq!(d.mode, m, "{f:?}"),
                (Err(e), Err(words)) => {
                    assert!(e.to_string().contains(words), "{f:?}: {e}");
                    assert_eq!(e.exit_code(), crate::exit::USAGE);
                }
                (got, want) => panic!("{f:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn docker_info_fields() {
        // Docker 28 with CDI on, 25+ with it off, and 20.10, which has no CDISpecDirs.
        let on = json!({"Runtimes": {"runc": {}, "nvidia": {}}, "CDISpecDirs": ["/etc/cdi", "/var/run/cdi"]});
        let off = json!({"Runtimes": {"runc": {}}, "CDISpecDirs": []});
        let old = json!({"Runtimes": {"runc": {}}});
        assert_eq!(
            from_docker_info(&on),
            (
                Some(vec!["runc".into(), "nvidia".into()]),
                Some(vec!["/etc/cdi".into(), "/var/run/cdi".into()])
            )
        );
        assert_eq!(from_docker_info(&off).1, Some(vec![]));
        assert_eq!(from_docker_info(&old).1, None);
        assert_eq!(
            from_docker_info(&json!({"CDISpecDirs": null})).1,
            Some(vec![])
        );
    }
}
