//! Which machine a state dir is for: the backend recorded at its first use (`backend.json`), and for real GPUs a host-wide claim per GPU; it must not touch the device.
//!
//! Leases, intents and created records name GPUs by UUID and instances by GI id. Reconciled against another
//! machine (the simulator on a real state dir, or an NVML view that shows fewer GPUs), every live lease looks
//! vanished and is dropped, and its instance is handed out again. So a state dir records what it is for, and
//! is refused to any other backend.
//!
//! Two state dirs on the same real GPUs would each hand out the same instances. So each GPU a state dir
//! manages through NVML is claimed in `/run/migrun-gpus/<GPU-UUID>`, a file naming the state dir by path,
//! device and inode. `/run` is a tmpfs: claims end with the boot, as MIG instances and the default state dir
//! do. A claim whose state dir no longer exists (removed, or another directory now at its path) is stale and
//! taken over: nothing can be leased through a state dir that is gone. The simulator needs neither record nor
//! claims: each simulated machine lives in its own state dir, and its `sim.json` (with the spec) binds it.

use crate::config::Config;
use crate::gpu::sim::SIM_FILE;
use crate::gpu::{BackendKind, MigState};
use crate::lease::valid_gpu_uuid;
use crate::statedir::{self, StateDir, StateDirError};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The backend record's file name in the state dir.
pub(crate) const RECORD: &str = "backend.json";
/// Where real GPUs are claimed, one file per GPU UUID.
pub(crate) const GPU_CLAIMS: &str = "/run/migrun-gpus";
/// Debug builds only: claim GPUs in this directory instead, so tests on fake GPUs (the same UUIDs in every
/// test) do not meet each other or the host's claims.
pub const CLAIMS_ENV: &str = "MIGRUN_TEST_GPU_CLAIMS";

const SIMULATOR: &str = "simulator";
const NVML: &str = "nvml";

/// `backend.json`: what the state dir is for (written for NVML; `simulator` is recognised so a state dir can
/// be reserved for the simulator by hand).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Record {
    pub schema: u32,
    /// `simulator` or `nvml`.
    pub backend: String,
    /// The `--simulate` spec (simulator only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
    /// The GPUs the state dir manages (NVML: each is claimed host-wide).
    #[serde(default)]
    pub gpus: Vec<String>,
}

/// `/run/migrun-gpus/<GPU-UUID>`: which state dir manages that GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Claim {
    state_dir: PathBuf,
    dev: u64,
    ino: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    /// The host-wide claims directory is unusable (its message would otherwise speak of a state dir).
    #[error("the GPU claims directory is unusable: {0}")]
    Claims(StateDirError),
    #[error("{path} is not a valid migrun record ({why}); inspect it, and remove it if it is not migrun's")]
    Malformed { path: PathBuf, why: String },
    #[error("state dir {dir} belongs to {recorded}, not to {running}: its leases name those GPUs, and reconciling them against these would drop every one; {fix}")]
    Mismatch {
        dir: PathBuf,
        recorded: String,
        running: String,
        fix: String,
    },
    #[error("state dir {dir} manages {missing}, which NVML does not show now; migrun will not drop their leases on that account (a GPU hidden from this process, e.g. inside a container, may still be in use); if they left this host, remove {record} and run `migrun gc`")]
    GpusGone {
        dir: PathBuf,
        missing: String,
        record: PathBuf,
    },
    #[error("GPU {gpu} is managed through state dir {owner} (claim {claim}); a second state dir would lease its MIG instances twice: use --state-dir {owner}, or, if that state dir is no longer used, remove {claim}")]
    Claimed {
        gpu: String,
        owner: PathBuf,
        claim: PathBuf,
    },
    #[error("the driver names a GPU {0:?}, which is not a GPU UUID migrun can claim; refusing to manage it")]
    BadUuid(String),
}

/// Exit codes: a state dir used with the wrong machine is a usage error; I/O keeps its own code.
pub(crate) fn exit_code(e: &BindingError) -> i32 {
    match e {
        BindingError::StateDir(s) | BindingError::Claims(s) => {
            crate::exit::ExitCodeOf::exit_code(s)
        }
        _ => crate::exit::USAGE,
    }
}

fn describe(backend: &str, spec: Option<&str>, gpus: &[String]) -> String {
    match (backend, spec) {
        (SIMULATOR, Some(spec)) => format!("the simulator (--simulate {spec})"),
        (SIMULATOR, None) => "the simulator (its machine is in sim.json)".into(),
        _ if gpus.is_empty() => "the NVIDIA driver (NVML)".into(),
        _ => format!("the NVIDIA driver (NVML: {})", gpus.join(", ")),
    }
}

fn fix_for(recorded: &str, spec: Option<&str>) -> String {
    match (recorded, spec) {
        (SIMULATOR, Some(spec)) => format!(
            "use `--simulate {spec}` with it, or give this run its own --state-dir"
        ),
        (SIMULATOR, None) => {
            "use the --simulate spec it was made with, or give this run its own --state-dir".into()
        }
        _ => "run migrun without --simulate (and MIGRUN_SIMULATE) on it, or give the simulator its own --state-dir".into(),
    }
}

fn read_record(dir: &StateDir) -> Result<Option<Record>, BindingError> {
    let Some(bytes) = dir.read(RECORD)? else {
        return Ok(None);
    };
    let rec: Record = serde_json::from_slice(&bytes).map_err(|e| BindingError::Malformed {
        path: dir.join(RECORD),
        why: e.to_string(),
    })?;
    let bad = |why: String| BindingError::Malformed {
        path: dir.join(RECORD),
        why,
    };
    match rec.backend.as_str() {
        SIMULATOR if rec.spec.is_some() => {}
        NVML if rec.spec.is_none() => {}
        other => {
            return Err(bad(format!(
                "backend {other:?} with spec {:?}: expected \"simulator\" with a spec, or \"nvml\"",
                rec.spec
            )))
        }
    }
    if let Some(u) = rec.gpus.iter().find(|u| !valid_gpu_uuid(u)) {
        return Err(bad(format!("{u:?} is not a GPU UUID")));
    }
    Ok(Some(rec))
}

fn write_record(dir: &StateDir, rec: &Record) -> Result<(), BindingError> {
    let mut json = serde_json::to_vec_pretty(rec).unwrap_or_default();
    json.push(b'\n');
    Ok(dir.write(RECORD, &json)?)
}

/// Refuse `rec` to the backend described by (`backend`, `spec`).
fn compare(
    dir: &StateDir,
    rec: &Record,
    backend: &str,
    spec: Option<&str>,
) -> Result<(), BindingError> {
    if rec.backend == backend && rec.spec.as_deref() == spec {
        return Ok(());
    }
    Err(BindingError::Mismatch {
        dir: dir.path().to_path_buf(),
        recorded: describe(&rec.backend, rec.spec.as_deref(), &rec.gpus),
        running: describe(backend, spec, &[]),
        fix: fix_for(&rec.backend, rec.spec.as_deref()),
    })
}

fn parts(kind: &BackendKind) -> (&'static str, Option<&str>) {
    match kind {
        BackendKind::Simulator { spec } => (SIMULATOR, Some(spec.as_str())),
        BackendKind::Nvml => (NVML, None),
    }
}

/// Before a backend is opened on `dir` (the simulator writes its machine there at once): refuse a state dir
/// recorded for another machine. A state dir without a record but with a simulated machine (`sim.json`) is
/// the simulator's. Reads one small file; nothing is written.
pub(crate) fn check_kind(dir: &StateDir, kind: &BackendKind) -> Result<(), BindingError> {
    let (backend, spec) = parts(kind);
    match read_record(dir)? {
        Some(rec) => compare(dir, &rec, backend, spec),
        None if backend == NVML && std::fs::symlink_metadata(dir.join(SIM_FILE)).is_ok() => {
            let spec = simulated_spec(dir);
            Err(BindingError::Mismatch {
                dir: dir.path().to_path_buf(),
                recorded: describe(SIMULATOR, spec.as_deref(), &[]),
                running: describe(NVML, None, &[]),
                fix: fix_for(SIMULATOR, spec.as_deref()),
            })
        }
        None => Ok(()),
    }
}

/// The spec of the simulated machine kept in `dir`, for messages (`None` when it cannot be read).
fn simulated_spec(dir: &StateDir) -> Option<String> {
    #[derive(Deserialize)]
    struct Peek {
        spec: crate::gpu::sim::SimSpec,
    }
    let bytes = dir.read(SIM_FILE).ok()??;
    let peek: Peek = serde_json::from_slice(&bytes).ok()?;
    Some(peek.spec.to_string())
}

/// After a snapshot, under the allocation lock, before any record is acted on: the state dir must be for this
/// machine. The first use records it; with NVML every managed GPU is claimed host-wide, a recorded GPU that
/// NVML does not show stops everything, and a newly managed GPU is added.
pub(crate) fn bind(
    dir: &StateDir,
    kind: &BackendKind,
    state: &MigState,
    config: &Config,
) -> Result<(), BindingError> {
    let (backend, spec) = parts(kind);
    let rec = read_record(dir)?;
    if let Some(r) = &rec {
        compare(dir, r, backend, spec)?;
    } else {
        check_kind(dir, kind)?;
    }
    if backend == SIMULATOR {
        // The simulated machine's own file (sim.json, with its spec) binds the state dir to it from its first
        // use; the simulator refuses another spec, and NVML refuses a state dir that has one (`check_kind`).
        return Ok(());
    }
    let mut gpus = rec.as_ref().map(|r| r.gpus.clone()).unwrap_or_default();
    let missing: Vec<&String> = gpus
        .iter()
        .filter(|u| !state.gpus.iter().any(|g| &g.info.uuid == *u))
        .collect();
    if !missing.is_empty() {
        return Err(BindingError::GpusGone {
            dir: dir.path().to_path_buf(),
            missing: missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            record: dir.join(RECORD),
        });
    }
    let before = gpus.len();
    for g in &state.gpus {
        if config.manages(g.info.index, &g.info.uuid) && !gpus.contains(&g.info.uuid) {
            if !valid_gpu_uuid(&g.info.uuid) {
                return Err(BindingError::BadUuid(g.info.uuid.clone()));
            }
            gpus.push(g.info.uuid.clone());
        }
    }
    claim_all(dir, &gpus)?;
    if rec.is_none() || gpus.len() != before {
        write_record(
            dir,
            &Record {
                schema: 1,
                backend: backend.into(),
                spec: None,
                gpus,
            },
        )?;
    }
    Ok(())
}

/// Forget that `dir` is for a simulated machine (it was reset, so the next spec starts afresh). A state dir
/// for real GPUs is refused: resetting a simulator there must not unbind it.
pub(crate) fn forget_simulator(dir: &StateDir) -> Result<(), BindingError> {
    if let Some(rec) = read_record(dir)? {
        if rec.backend != SIMULATOR {
            return Err(BindingError::Mismatch {
                dir: dir.path().to_path_buf(),
                recorded: describe(&rec.backend, rec.spec.as_deref(), &rec.gpus),
                running: describe(SIMULATOR, None, &[]),
                fix: fix_for(&rec.backend, None),
            });
        }
    }
    statedir::remove(&dir.join(RECORD))?;
    Ok(())
}

fn claims_root() -> PathBuf {
    if cfg!(debug_assertions) {
        if let Some(p) = std::env::var_os(CLAIMS_ENV) {
            return PathBuf::from(p);
        }
    }
    PathBuf::from(GPU_CLAIMS)
}

/// Claim every GPU in `gpus` for `dir`; on a refusal, give back the claims this call took.
fn claim_all(dir: &StateDir, gpus: &[String]) -> Result<(), BindingError> {
    if gpus.is_empty() {
        return Ok(());
    }
    // Checked as the state dir is (root's, 0700, no symlink): a claim is only believed from there.
    let root = StateDir::open(claims_root()).map_err(BindingError::Claims)?;
    let mut taken = Vec::new();
    for gpu in gpus {
        match claim(&root, dir, gpu) {
            Ok(true) => taken.push(gpu),
            Ok(false) => {}
            Err(e) => {
                for t in taken {
                    let _ = statedir::remove(&root.join(t));
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

fn read_claim(root: &StateDir, gpu: &str) -> Result<Option<Claim>, BindingError> {
    let Some(bytes) = root.read(gpu)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| BindingError::Malformed {
            path: root.join(gpu),
            why: e.to_string(),
        })
}

/// Is the state dir a claim names still there (the same directory, not just the same path)?
fn owner_alive(c: &Claim) -> bool {
    std::fs::symlink_metadata(&c.state_dir)
        .is_ok_and(|m| m.is_dir() && m.dev() == c.dev && m.ino() == c.ino)
}

/// Claim `gpu` for `dir`; `Ok(true)` when this call wrote the claim.
fn claim(root: &StateDir, dir: &StateDir, gpu: &str) -> Result<bool, BindingError> {
    if !valid_gpu_uuid(gpu) {
        return Err(BindingError::BadUuid(gpu.into()));
    }
    let (dev, ino) = dir.identity();
    let ours = |c: &Claim| c.dev == dev && c.ino == ino;
    // The common case, every allocation: our own claim, read without the claims lock.
    if read_claim(root, gpu)?.as_ref().is_some_and(ours) {
        return Ok(false);
    }
    // Taking or taking over a claim is serialised host-wide, so two state dirs cannot both take one GPU.
    let _lock = root.lock(".lock")?;
    match read_claim(root, gpu)? {
        Some(c) if ours(&c) => return Ok(false),
        Some(c) if owner_alive(&c) => {
            return Err(BindingError::Claimed {
                gpu: gpu.into(),
                owner: c.state_dir,
                claim: root.join(gpu),
            })
        }
        Some(c) => tracing::warn!(
            gpu,
            stale = %c.state_dir.display(),
            "taking over the claim of a state dir that no longer exists"
        ),
        None => {}
    }
    let claim = Claim {
        state_dir: absolute(dir.path()),
        dev,
        ino,
    };
    let mut json = serde_json::to_vec_pretty(&claim).unwrap_or_default();
    json.push(b'\n');
    root.write(gpu, &json)?;
    Ok(true)
}

/// The state dir's path as others can use it (`--state-dir` may have been relative).
fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_checked_and_kinds_compared() {
        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::open(t.path().join("s")).unwrap();
        let sim = BackendKind::Simulator {
            spec: "h100-80gb:2".into(),
        };
        check_kind(&dir, &sim).unwrap();
        check_kind(&dir, &BackendKind::Nvml).unwrap();
        bind(&dir, &sim, &MigState::default(), &Config::default()).unwrap();
        assert!(
            dir.read(RECORD).unwrap().is_none(),
            "sim.json binds a simulator"
        );
        std::fs::write(dir.join(SIM_FILE), "{}").unwrap();
        let e = check_kind(&dir, &BackendKind::Nvml).unwrap_err();
        assert!(
            e.to_string()
                .contains("use the --simulate spec it was made with"),
            "{e}"
        );
        std::fs::remove_file(dir.join(SIM_FILE)).unwrap();
        crate::gpu::sim::SimBackend::open(&dir, "a30-24gb".parse().unwrap()).unwrap();
        let e = check_kind(&dir, &BackendKind::Nvml).unwrap_err();
        assert!(e.to_string().contains("--simulate a30-24gb"), "{e}");
        std::fs::remove_file(dir.join(SIM_FILE)).unwrap();
        std::fs::write(dir.join(SIM_FILE), "{}").unwrap();
        let e = check_kind(&dir, &BackendKind::Nvml).unwrap_err();
        assert!(
            e.to_string().contains("belongs to the simulator (its machine is in sim.json), not to the NVIDIA driver (NVML)"),
            "{e}"
        );
        write_record(
            &dir,
            &Record {
                schema: 1,
                backend: SIMULATOR.into(),
                spec: Some("h100-80gb:2".into()),
                gpus: vec![],
            },
        )
        .unwrap();
        let e = check_kind(&dir, &BackendKind::Nvml).unwrap_err();
        assert!(
            e.to_string().contains("belongs to the simulator (--simulate h100-80gb:2), not to the NVIDIA driver (NVML)"),
            "{e}"
        );
        let other = BackendKind::Simulator {
            spec: "a30-24gb".into(),
        };
        assert!(matches!(
            check_kind(&dir, &other),
            Err(BindingError::Mismatch { .. })
        ));
        std::fs::write(
            dir.join(RECORD),
            r#"{"schema":1,"backend":"nvml","gpus":["../x"]}"#,
        )
        .unwrap();
        assert!(matches!(
            check_kind(&dir, &BackendKind::Nvml),
            Err(BindingError::Malformed { .. })
        ));
    }
}
