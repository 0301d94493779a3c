//! Finds and reads the NVIDIA Container Toolkit's own CDI spec and extracts the common edits migrun copies (driver mounts, hooks, env); it must not write anything.
//!
//! `nvidia-ctk cdi generate` knows where this host's driver libraries and binaries are and which
//! hooks (ldcache, symlinks) a container needs; migrun does not redo that work. It copies the
//! spec's top-level `containerEdits` mounts, hooks and env into its own specs, except
//! `NVIDIA_VISIBLE_DEVICES` (the toolkit sets it to `void`; migrun's devices set the MIG UUID) and
//! the device nodes (path-only there; migrun writes every node it needs with its numbers).

use super::types::{ContainerEdits, Spec};
use container_device_interface::schema;
use std::path::{Path, PathBuf};

/// The toolkit's kind.
pub const TOOLKIT_KIND: &str = "nvidia.com/gpu";

/// Where the toolkit's spec usually is, dynamic dir first, as CDI ranks them (`/var/run/cdi` wins
/// over `/etc/cdi`): the toolkit's refresh service writes the former, its docs suggest the latter.
pub const DEFAULT_PATHS: &[&str] = &[
    "/var/run/cdi/nvidia.yaml",
    "/var/run/cdi/nvidia.json",
    "/etc/cdi/nvidia.yaml",
    "/etc/cdi/nvidia.json",
];

#[derive(Debug, thiserror::Error)]
pub enum ToolkitError {
    #[error("cannot read the NVIDIA toolkit's CDI spec {path}: {err}; fix its permissions, or regenerate it with `nvidia-ctk cdi generate --output={path}`")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("the NVIDIA toolkit's CDI spec {path} is not usable: {reason}; regenerate it with `nvidia-ctk cdi generate --output={path}`")]
    Invalid { path: PathBuf, reason: String },
}

impl crate::exit::ExitCodeOf for ToolkitError {
    fn exit_code(&self) -> i32 {
        match self {
            ToolkitError::Read { .. } => crate::exit::FAILED,
            // A broken file on the host is a configuration problem, like a bad migrun config.
            ToolkitError::Invalid { .. } => crate::exit::USAGE,
        }
    }
}

/// [`DEFAULT_PATHS`] as paths.
pub fn default_paths() -> Vec<PathBuf> {
    DEFAULT_PATHS.iter().map(PathBuf::from).collect()
}

/// The first of `paths` that exists (a dangling symlink counts, so that reading it reports the problem).
pub fn find(paths: &[PathBuf]) -> Option<PathBuf> {
    paths.iter().find(|p| p.symlink_metadata().is_ok()).cloned()
}

/// The common edits migrun copies from a toolkit spec (pure): env without `NVIDIA_VISIBLE_DEVICES`,
/// mounts and hooks; nothing else.
pub fn common_edits(spec: &Spec) -> ContainerEdits {
    let mut out = ContainerEdits::default();
    if let Some(edits) = &spec.container_edits {
        out.env = edits
            .env
            .as_ref()
            .map(|env| {
                env.iter()
                    .filter(|e| e.split('=').next() != Some("NVIDIA_VISIBLE_DEVICES"))
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .filter(|env| !env.is_empty());
        out.mounts = edits.mounts.clone().filter(|m| !m.is_empty());
        out.hooks = edits.hooks.clone().filter(|h| !h.is_empty());
    }
    out
}

/// Parses (YAML or JSON) a toolkit spec with the crate and runs the crate's checks on it (all but the
/// JSON-schema pass: see [`super::spec::check`]); `Err` is the reason on one line.
fn parse(bytes: &[u8]) -> Result<Spec, String> {
    let doc = schema::document_value(bytes).map_err(|e| format!("{e:#}"))?;
    let kind = doc["kind"].as_str().unwrap_or_default().to_string();
    let raw: Spec = serde_json::from_value(doc).map_err(|e| e.to_string())?;
    super::spec::check(&raw)?;
    if kind != TOOLKIT_KIND {
        return Err(format!("it declares kind {kind}, not {TOOLKIT_KIND}"));
    }
    Ok(raw)
}

/// Reads the toolkit spec at `path` and returns its [`common_edits`].
pub fn load(path: &Path) -> Result<ContainerEdits, ToolkitError> {
    let bytes = std::fs::read(path).map_err(|err| ToolkitError::Read {
        path: path.to_path_buf(),
        err,
    })?;
    let spec = parse(&bytes).map_err(|reason| ToolkitError::Invalid {
        path: path.to_path_buf(),
        // Parser messages can span lines (YAML positions); the error stays on one.
        reason: reason.replace('\n', " "),
    })?;
    Ok(common_edits(&spec))
}

/// The toolkit spec found first among `paths` and its common edits; `None` when there is none
/// (then migrun's specs carry device nodes and env only).
pub fn discover(paths: &[PathBuf]) -> Result<Option<(PathBuf, ContainerEdits)>, ToolkitError> {
    match find(paths) {
        None => Ok(None),
        Some(path) => load(&path).map(|edits| Some((path, edits))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::fs;

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/toolkit-cdi/nvidia.yaml"
    );

    fn as_json(e: &ContainerEdits) -> Value {
        serde_json::to_value(e).unwrap()
    }

    #[test]
    fn the_fixture_s_common_edits_are_copied_without_nodes_or_visible_devices() {
        let e = as_json(&load(Path::new(FIXTURE)).unwrap());
        assert_eq!(
            e["env"],
            json!(["NVIDIA_CTK_LIBCUDA_DIR=/usr/lib/x86_64-linux-gnu"])
        );
        assert_eq!(e["mounts"].as_array().unwrap().len(), 2);
        assert_eq!(e["mounts"][1]["containerPath"], "/usr/bin/nvidia-smi");
        assert_eq!(e["hooks"].as_array().unwrap().len(), 2);
        assert_eq!(e["hooks"][0]["hookName"], "createContainer");
        assert_eq!(e["hooks"][1]["args"][1], "update-ldcache");
        assert!(e.get("deviceNodes").is_none(), "{e}");
    }

    /// (file name, content, words the one-line error must contain; empty = loads)
    #[test]
    fn toolkit_spec_table() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "ok.json",
                r#"{"cdiVersion":"0.5.0","kind":"nvidia.com/gpu","devices":[{"name":"all","containerEdits":{"env":["A=1"]}}],
                   "containerEdits":{"env":["NVIDIA_VISIBLE_DEVICES=void","B=2"]}}"#,
                &[],
            ),
            (
                "no-common.yaml",
                "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: all\n  containerEdits:\n    env: [A=1]\n",
                &[],
            ),
            ("garbage.yaml", "{[", &["garbage.yaml", "not usable", "nvidia-ctk cdi generate"]),
            (
                "unknown-field.json",
                r#"{"cdiVersion":"0.5.0","kind":"nvidia.com/gpu","devices":[],"bogus":1}"#,
                &["unknown-field.json", "bogus"],
            ),
            (
                "no-devices.json",
                r#"{"cdiVersion":"0.5.0","kind":"nvidia.com/gpu","devices":[]}"#,
                &["no-devices.json", "no devices"],
            ),
            (
                "other-kind.json",
                r#"{"cdiVersion":"0.5.0","kind":"vendor.com/thing","devices":[{"name":"a","containerEdits":{"env":["A=1"]}}]}"#,
                &["declares kind vendor.com/thing, not nvidia.com/gpu"],
            ),
            (
                "bad-version.json",
                r#"{"cdiVersion":"9.9.9","kind":"nvidia.com/gpu","devices":[{"name":"a","containerEdits":{"env":["A=1"]}}]}"#,
                &["bad-version.json", "9.9.9"],
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        for &(name, content, words) in cases {
            let path = dir.path().join(name);
            fs::write(&path, content).unwrap();
            match load(&path) {
                Ok(e) if words.is_empty() => {
                    assert!(
                        !e.env
                            .iter()
                            .flatten()
                            .any(|v| v.starts_with("NVIDIA_VISIBLE")),
                        "{name}"
                    );
                }
                Ok(e) => panic!("{name}: loaded {e:?}"),
                Err(err) => {
                    let msg = err.to_string();
                    assert!(!words.is_empty(), "{name}: {msg}");
                    assert!(!msg.contains('\n'), "{name}: one line: {msg}");
                    for w in words {
                        assert!(msg.contains(w), "{name}: {w:?} missing from: {msg}");
                    }
                }
            }
        }
    }

    #[test]
    fn an_unreadable_spec_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: unreadable even for root.
        let path = dir.path().join("nvidia.yaml");
        fs::create_dir(&path).unwrap();
        let msg = discover(std::slice::from_ref(&path))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("cannot read the NVIDIA toolkit's CDI spec"),
            "{msg}"
        );
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }

    #[test]
    fn discover_takes_the_first_that_exists() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run/nvidia.yaml");
        let etc = dir.path().join("etc/nvidia.yaml");
        let paths = vec![run.clone(), etc.clone()];
        assert!(discover(&paths).unwrap().is_none());
        fs::create_dir_all(etc.parent().unwrap()).unwrap();
        fs::copy(FIXTURE, &etc).unwrap();
        assert_eq!(discover(&paths).unwrap().unwrap().0, etc);
        fs::create_dir_all(run.parent().unwrap()).unwrap();
        fs::copy(FIXTURE, &run).unwrap();
        assert_eq!(discover(&paths).unwrap().unwrap().0, run);
        assert_eq!(
            default_paths()[0],
            PathBuf::from("/var/run/cdi/nvidia.yaml")
        );
    }
}
