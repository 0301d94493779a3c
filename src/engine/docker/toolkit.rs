//! Which way the NVIDIA container toolkit takes a device on this machine (`--inject`'s detection): the runtime hook,
//! a registered nvidia runtime, or a CDI spec; it only looks, it never changes docker's configuration.

use super::{find_executable, DockerCli, DockerError, CDI_DIRS};
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
