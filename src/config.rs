//! Validated settings from `/etc/migrun/config.toml` (or `--config` / `MIGRUN_CONFIG`); it must not talk to NVML or engines.
//!
//! The schema is documented in docs/config.md. Unknown keys are an error that names the key, so a
//! typo never silently turns a policy off.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How the MIG UUID reaches the container.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum InjectMode {
    /// `--gpus device=MIG-…` (Docker with the NVIDIA container toolkit)
    Gpus,
    /// `--runtime nvidia -e NVIDIA_VISIBLE_DEVICES=MIG-…`
    NvidiaRuntime,
    /// `--device migrun.io/mig=<lease>` (CDI, from migrun's own spec of the lease)
    Cdi,
    /// only `-e NVIDIA_VISIBLE_DEVICES=MIG-…` (plain runtimes, tests)
    Env,
}

/// How migrun's hooks and runtime shim hand the slice to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookInject {
    /// `cdi` when no `nvidia-container-runtime-hook` is installed, else `env`.
    #[default]
    Auto,
    /// Write the lease's CDI edits (device nodes, cgroup rules, mounts, env, hooks) into config.json
    /// itself: works with plain runc, no NVIDIA runtime needed.
    Cdi,
    /// Only `NVIDIA_VISIBLE_DEVICES=<MIG UUID>`: NVIDIA's hook mounts the device.
    Env,
}

/// Default policy file; a missing default file means built-in defaults.
pub const DEFAULT_CONFIG: &str = "/etc/migrun/config.toml";

/// What happens to an instance migrun created when its lease ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReleasePolicy {
    /// Destroy the CI and GI (the default: the memory goes back to the pool).
    #[default]
    Destroy,
    /// Keep it warm for the next request of the same profile.
    Keep,
}

/// Where hooks and the shim log, since runtimes swallow their stderr.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogTarget {
    /// `<state-dir>/migrun.log`
    #[default]
    File,
    /// the systemd journal (falls back to the file when journald is absent)
    Journald,
    /// A file path of the admin's choosing.
    #[serde(untagged)]
    Path(PathBuf),
}

/// A GPU named in the config: an NVML index or a `GPU-…` UUID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GpuRef {
    Index(u32),
    Uuid(String),
}

/// The policy file, as written (see docs/config.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// GPUs migrun may manage; `None` = all. Others (Kubernetes', mig-parted's) are never touched.
    pub gpus: Option<Vec<GpuRef>>,
    /// Profiles that may be requested; `None` = all.
    pub allowed_profiles: Option<Vec<String>>,
    /// Most concurrent leases one user (uid) may hold.
    pub max_leases_per_user: Option<u32>,
    /// Most concurrent leases in total.
    pub max_leases_total: Option<u32>,
    /// Default injection mode of the launcher; `None` = detect the NVIDIA toolkit.
    pub inject: Option<InjectMode>,
    /// Destroy or keep created instances when a lease ends.
    pub release: ReleasePolicy,
    /// Let compute-instance leases of different users share one GPU instance (they share its memory
    /// and engines, so one user's job could read or starve another's); off: only leases of one uid share.
    pub share_gi_across_users: bool,
    /// Seconds a hook may take (allocation included, waiting excluded) before it fails the container start.
    pub hook_timeout_s: u64,
    /// Where hooks and the shim log.
    pub log: LogTarget,
    /// The runtime the shim execs after rewriting the bundle; `None` = nvidia-container-runtime if found, else runc.
    pub runtime: Option<PathBuf>,
    /// docker CLI for the launcher; `None` = `docker` on PATH.
    pub docker: Option<PathBuf>,
    /// Where each lease's CDI spec is written; `None` = `/var/run/cdi` (the simulator: `<state dir>/cdi`).
    pub cdi_dir: Option<PathBuf>,
    /// The NVIDIA toolkit's CDI spec whose mounts, hooks and env every lease's spec copies; `None` =
    /// the first of `/var/run/cdi/nvidia.{yaml,json}`, `/etc/cdi/nvidia.{yaml,json}` that exists.
    pub cdi_toolkit_spec: Option<PathBuf>,
    /// How the hooks and the shim hand the slice over.
    pub hook_inject: HookInject,
    /// The usage ledger (docs/operations.md); `None` = `/var/lib/migrun/ledger.jsonl` (the simulator:
    /// `<state dir>/ledger.jsonl`). Never under `/run`: a reboot would empty it.
    pub ledger: Option<PathBuf>,
    /// Size in bytes at which the ledger is rotated to `<ledger>.1`.
    pub ledger_rotate_bytes: u64,
    /// Rotated ledger files kept (`.1` … `.N`); `migrun usage` reads them all.
    pub ledger_keep: u32,
    /// A node-exporter textfile-collector file (`….prom`) rewritten atomically after every change; `None` = none.
    pub metrics_textfile: Option<PathBuf>,
    /// How long a container's end (poststop, the shim, the launcher) waits for the background destroy of its
    /// instance before it returns and leaves the rest to the worker (issue 23; 0 = never wait).
    pub release_wait_ms: u64,
    /// Kept instances (`release = "keep"`, `--keep`) idle this long are destroyed by `migrun gc`; `None` = kept forever.
    pub keep_idle_s: Option<u64>,
    /// Warm pool: profile -> idle instances `migrun gc` keeps ready (made in the background, only while no request
    /// waits); e.g. `warm = { "1g.10gb" = 2 }`.
    pub warm: std::collections::BTreeMap<String, u32>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            gpus: None,
            allowed_profiles: None,
            max_leases_per_user: None,
            max_leases_total: None,
            inject: None,
            release: ReleasePolicy::Destroy,
            share_gi_across_users: false,
            hook_timeout_s: 30,
            log: LogTarget::File,
            runtime: None,
            docker: None,
            cdi_dir: None,
            cdi_toolkit_spec: None,
            hook_inject: HookInject::Auto,
            ledger: None,
            ledger_rotate_bytes: crate::lease::ledger::DEFAULT_ROTATE_BYTES,
            ledger_keep: crate::lease::ledger::DEFAULT_KEEP,
            metrics_textfile: None,
            release_wait_ms: 0,
            keep_idle_s: None,
            warm: std::collections::BTreeMap::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}; fix the path given by --config / MIGRUN_CONFIG")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}; see docs/config.md for the schema")]
    Parse { path: PathBuf, message: String },
}

impl Config {
    /// Load the policy. `explicit` is `--config`/`MIGRUN_CONFIG`; without it a missing default file means defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let path = explicit.unwrap_or(Path::new(DEFAULT_CONFIG));
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if explicit.is_none() && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.into(),
            message,
        })
    }

    /// May migrun manage this GPU? (`gpus` unset = every GPU.)
    pub fn manages(&self, index: u32, uuid: &str) -> bool {
        match &self.gpus {
            None => true,
            Some(list) => list.iter().any(|g| match g {
                GpuRef::Index(i) => *i == index,
                GpuRef::Uuid(u) => u.eq_ignore_ascii_case(uuid),
            }),
        }
    }

    /// Parse TOML text; the error is one line naming the offending key.
    pub fn parse(text: &str) -> Result<Config, String> {
        let c: Config = Self::parse_toml(text)?;
        for (key, path) in [
            ("ledger", &c.ledger),
            ("metrics_textfile", &c.metrics_textfile),
        ] {
            if let Some(p) = path {
                if !p.is_absolute() || p.file_name().is_none() {
                    return Err(format!(
                        "{key} = {:?} must be an absolute path to a file",
                        p.display().to_string()
                    ));
                }
            }
        }
        if c.ledger_rotate_bytes < 1024 {
            return Err(format!(
                "ledger_rotate_bytes = {} is too small (at least 1024)",
                c.ledger_rotate_bytes
            ));
        }
        if c.ledger_keep == 0 {
            return Err("ledger_keep = 0: keep at least one rotated file".into());
        }
        for profile in c.warm.keys() {
            if let Err(e) = profile.parse::<crate::profile::ProfileSpec>() {
                return Err(format!(
                    "warm entry {profile:?}: {e}; name a profile such as \"1g.10gb\""
                ));
            }
        }
        Ok(c)
    }

    fn parse_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| {
            let msg = e.message().trim();
            let msg = if msg.is_empty() {
                // toml gives no message for some syntax errors (a control character in a comment);
                // its report's first line still says where, and the span says what.
                let at = e.to_string().lines().next().unwrap_or_default().to_string();
                match e
                    .span()
                    .and_then(|s| text.get(s.start..).and_then(|t| t.chars().next()))
                {
                    Some(c) => format!("{at}: unexpected character {c:?}"),
                    None => format!("{at}: syntax error"),
                }
            } else {
                msg.to_string()
            };
            // Keys and values are quoted raw; a newline or carriage return would split the one-line error.
            msg.replace(['\n', '\r'], " ")
        })
    }
}

/// Exit codes for this module's errors (see `exit`).
pub fn exit_code_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    e.downcast_ref::<ConfigError>().map(|_| crate::exit::USAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse("max_leases_totl = 3").unwrap_err();
        assert!(e.contains("max_leases_totl"), "{e}");
        let c =
            Config::parse("gpus = [0, \"GPU-abc\"]\nrelease = \"keep\"\ninject = \"env\"").unwrap();
        assert_eq!(c.release, ReleasePolicy::Keep);
        assert_eq!(c.gpus.unwrap()[1], GpuRef::Uuid("GPU-abc".into()));
        let c = Config::parse(
            "cdi_dir = \"/run/cdi\"\ncdi_toolkit_spec = \"/etc/cdi/nvidia.yaml\"\nhook_inject = \"env\"",
        )
        .unwrap();
        assert_eq!(c.cdi_dir, Some(PathBuf::from("/run/cdi")));
        assert_eq!(c.hook_inject, HookInject::Env);
        let e = Config::parse("hook_inject = \"nvidia\"").unwrap_err();
        assert!(e.contains("auto") && e.contains("cdi"), "{e}");
    }

    /// Found by fuzz/fuzz_targets/config_toml.rs: toml's message was empty (control character in a
    /// comment) or carried a raw carriage return (quoted key), so the CLI error was blank or broken.
    #[test]
    fn errors_are_one_nonempty_line() {
        let e = Config::parse("# policy\u{e}file\nrelease = \"keep\"").unwrap_err();
        assert!(e.contains("line 1, column 9"), "{e}");
        assert!(e.contains("'\\u{e}'"), "{e}");
        let e = Config::parse("\"a\\rb\" = 1").unwrap_err();
        assert!(
            !e.contains(['\n', '\r']) && e.contains("unknown field"),
            "{e:?}"
        );
    }
}
