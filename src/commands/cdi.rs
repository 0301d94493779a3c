//! CDI at the edge: where this host's lease specs go, which NVIDIA toolkit spec they copy, and the spec of one lease built and written; the CDI core (src/cdi) does the work, the session (`session.rs`) decides when.
//!
//! The spec directory belongs to one lease registry: device names are lease ids, so two registries
//! writing into one directory would declare the same names (and engines drop a name declared
//! twice), and each one's gc would remove the other's specs. Hence a simulated machine writes into
//! its own state dir unless the config says otherwise, and the driver's registry into
//! `/var/run/cdi`, which engines read.

use super::Ctx;
use crate::cdi::cache::{self, SpecCache};
use crate::cdi::{self, store, toolkit, types::ContainerEdits, types::Spec, Slice, SliceNodes};
use crate::cdi::{SpecError, StoreError, ToolkitError};
use crate::gpu::hostfacts::{host_root, HostFacts, HostFactsError};
use crate::lease::{Lease, LeaseId};
use std::path::{Path, PathBuf};

/// A simulator's spec directory inside its state dir, when the config names none.
const SIM_CDI_DIR: &str = "cdi";

/// Why a lease's CDI spec could not be made, read or removed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseSpecError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Toolkit(#[from] ToolkitError),
    #[error(transparent)]
    HostFacts(#[from] HostFactsError),
    #[error("GPU {gpu_uuid} of lease {lease} has no `information` file naming it under {dir}, so its device minor is unknown; is the NVIDIA driver loaded (`nvidia-smi -L` lists it)?")]
    NoGpuMinor {
        lease: LeaseId,
        gpu_uuid: String,
        dir: PathBuf,
    },
}

impl crate::exit::ExitCodeOf for LeaseSpecError {
    fn exit_code(&self) -> i32 {
        let code = match self {
            LeaseSpecError::Spec(e) => cdi::exit_code_of(e),
            LeaseSpecError::Store(e) => cdi::exit_code_of(e),
            LeaseSpecError::Toolkit(e) => cdi::exit_code_of(e),
            LeaseSpecError::HostFacts(e) => cdi::exit_code_of(e),
            LeaseSpecError::NoGpuMinor { .. } => None,
        };
        code.unwrap_or(crate::exit::FAILED)
    }
}

/// `path` (absolute) under the host root the facts are read from (`/` outside debug-build tests).
fn under_host_root(path: &str) -> PathBuf {
    host_root().join(path.trim_start_matches('/'))
}

impl Ctx {
    /// Where lease specs are written: `cdi_dir` from the config; else a simulator's own
    /// `<state dir>/cdi` (see the module header); else `/var/run/cdi`.
    pub fn cdi_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.config.cdi_dir {
            return Ok(d.clone());
        }
        if self.global.simulate.is_some() {
            return Ok(self.state_dir_path()?.join(SIM_CDI_DIR));
        }
        Ok(under_host_root(store::DYNAMIC_DIR))
    }

    /// Where the NVIDIA toolkit's spec is looked for: the config's `cdi_toolkit_spec` alone, or the
    /// toolkit's usual places ([`toolkit::DEFAULT_PATHS`]).
    pub fn toolkit_paths(&self) -> Vec<PathBuf> {
        match &self.config.cdi_toolkit_spec {
            Some(p) => vec![p.clone()],
            None => toolkit::DEFAULT_PATHS
                .iter()
                .map(|p| under_host_root(p))
                .collect(),
        }
    }

    /// The toolkit spec and the edits every lease spec copies from it; `None` when there is none.
    /// A spec the config names must exist: a typo there must not silently drop the driver's mounts.
    pub fn cdi_toolkit(&self) -> Result<Option<(PathBuf, ContainerEdits)>, ToolkitError> {
        match &self.config.cdi_toolkit_spec {
            Some(p) => toolkit::load(p).map(|e| Some((p.clone(), e))),
            None => toolkit::discover(&self.toolkit_paths()),
        }
    }

    /// [`Ctx::cdi_toolkit`], through `cache`: the edits read from the same file with the same stamp
    /// (device, inode, size, mtime, ctime, taken before reading) are not read again.
    pub(crate) fn cdi_toolkit_cached(
        &self,
        cache: &mut SpecCache,
    ) -> Result<Option<(PathBuf, ContainerEdits)>, ToolkitError> {
        let path = match &self.config.cdi_toolkit_spec {
            Some(p) => p.clone(),
            None => match toolkit::find(&self.toolkit_paths()) {
                Some(p) => p,
                None => return Ok(None),
            },
        };
        // Not there (a typo in the config): `load` says so.
        let Some(stamp) = cache::stamp(&path) else {
            return toolkit::load(&path).map(|e| Some((path, e)));
        };
        if let Some(edits) = cache.toolkit(&path, &stamp) {
            return Ok(Some((path, edits)));
        }
        let edits = toolkit::load(&path)?;
        cache.put_toolkit(&path, stamp, edits.clone());
        Ok(Some((path, edits)))
    }
}

/// The slice of `lease` on GPU minor `gpu_minor`.
fn slice_on(lease: &Lease, gpu_minor: u32) -> Slice {
    Slice {
        lease: lease.id,
        name: lease.name.as_ref().map(|n| n.as_str().to_string()),
        mig_uuid: lease.mig_uuid.clone(),
        gpu_minor,
        gi: lease.gi,
        ci: lease.ci,
    }
}

/// The slice of `lease` in the driver's numbers.
pub fn slice_of(lease: &Lease, facts: &HostFacts) -> Result<Slice, LeaseSpecError> {
    let gpu_minor = facts
        .gpu_minor(&lease.gpu_uuid)
        .ok_or_else(|| LeaseSpecError::NoGpuMinor {
            lease: lease.id,
            gpu_uuid: lease.gpu_uuid.clone(),
            dir: under_host_root("/proc/driver/nvidia/gpus"),
        })?;
    Ok(slice_on(lease, gpu_minor))
}

/// The numbers of `lease`'s device nodes in `facts`.
pub fn nodes_of(lease: &Lease, facts: &HostFacts) -> Result<SliceNodes, LeaseSpecError> {
    Ok(SliceNodes::of(&slice_of(lease, facts)?, facts)?)
}

/// Builds the spec of `lease` from its numbers and writes it into `dir`; returns its path and what
/// CDI applies for the lease's device (from the validation the spec passed before it was written).
pub fn write(
    dir: &Path,
    lease: &Lease,
    nodes: &SliceNodes,
    toolkit: Option<&ContainerEdits>,
) -> Result<(PathBuf, ContainerEdits), LeaseSpecError> {
    let (spec, edits) = cdi::build_from(&slice_on(lease, nodes.gpu_minor), nodes, toolkit)?;
    Ok((store::write(dir, lease.id, &spec)?, edits))
}

/// The edits CDI applies for `lease`'s device in `spec`, when that spec describes this lease's
/// slice (a spec left by another registry under the same id does not).
pub fn edits_if_current(spec: &Spec, lease: &Lease) -> Option<ContainerEdits> {
    let edits = cdi::edits_for(spec, &lease.id.to_string()).ok()?;
    let want = format!("NVIDIA_VISIBLE_DEVICES={}", lease.mig_uuid);
    edits
        .env
        .as_ref()
        .is_some_and(|env| env.contains(&want))
        .then_some(edits)
}

/// The one-line note `status` and `alloc -v` give about the toolkit spec's part in lease specs:
/// `found` is the spec used (`Ok(None)`: none found), `looked` where it was looked for.
pub fn toolkit_note(found: Result<Option<&Path>, &ToolkitError>, looked: &[PathBuf]) -> String {
    match found {
        Ok(Some(p)) => format!(
            "with the NVIDIA toolkit's mounts, hooks and env from {}",
            p.display()
        ),
        Ok(None) => format!(
            "with device nodes and env only: no NVIDIA toolkit CDI spec (looked for {}), so the image must bring the driver's libraries",
            looked
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(e) => format!("none can be written until the toolkit spec is fixed: {e}"),
    }
}

/// What `migrun status` shows about CDI: read-only (nothing is created, not even the spec dir).
pub struct CdiStatus {
    dir: PathBuf,
    /// Lease ids that have a spec file, or why the dir could not be listed.
    specs: Result<Vec<LeaseId>, String>,
    toolkit: Result<Option<PathBuf>, ToolkitError>,
    looked: Vec<PathBuf>,
    hooks_cdi: bool,
}

impl CdiStatus {
    pub fn read(ctx: &Ctx) -> anyhow::Result<CdiStatus> {
        let dir = ctx.cdi_dir()?;
        let specs = store::list(&dir)
            .map(|l| l.into_iter().map(|(id, _)| id).collect())
            .map_err(|e| e.to_string());
        let path = std::env::var_os("PATH");
        Ok(CdiStatus {
            specs,
            toolkit: ctx.cdi_toolkit().map(|t| t.map(|(p, _)| p)),
            looked: ctx.toolkit_paths(),
            hooks_cdi: crate::engine::runtime::hook_injects_cdi(&ctx.config, path.as_deref()),
            dir,
        })
    }

    fn note(&self) -> String {
        toolkit_note(self.toolkit.as_ref().map(|t| t.as_deref()), &self.looked)
    }

    fn hook_inject(&self) -> &'static str {
        if self.hooks_cdi {
            "cdi"
        } else {
            "env"
        }
    }

    /// `status --json`'s `cdi` object (docs/json.md).
    pub fn json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "kind": cdi::KIND,
            "dir": self.dir,
            "toolkit_spec": self.toolkit.as_ref().ok().and_then(|t| t.as_ref()),
            "note": self.note(),
            "hook_inject": self.hook_inject(),
        });
        match &self.specs {
            Ok(ids) => v["specs"] = serde_json::json!(ids),
            Err(e) => v["specs_error"] = serde_json::json!(e),
        }
        if let Err(e) = &self.toolkit {
            v["toolkit_error"] = serde_json::json!(e.to_string());
        }
        v
    }

    /// The one line of text `status` prints (the JSON's `note` says where a toolkit spec was looked for).
    pub fn line(&self) -> String {
        let specs = match &self.specs {
            Ok(ids) => format!("{} spec(s)", ids.len()),
            Err(e) => format!("specs unreadable: {e}"),
        };
        let toolkit = match &self.toolkit {
            Ok(Some(p)) => format!("the NVIDIA toolkit's mounts and hooks from {}", p.display()),
            Ok(None) => "no NVIDIA toolkit CDI spec, so device nodes and env only".to_string(),
            Err(e) => format!("none can be written until the toolkit spec is fixed: {e}"),
        };
        format!(
            "CDI: lease devices {}=<lease> from {} ({specs}), {toolkit}; hooks and shim inject by {}",
            cdi::KIND,
            self.dir.display(),
            self.hook_inject()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::GlobalArgs;
    use crate::config::Config;

    fn ctx(simulate: bool, config: &str) -> Ctx {
        Ctx {
            global: GlobalArgs {
                simulate: simulate.then(|| "h100-80gb".to_string()),
                state_dir: Some("/srv/migrun".into()),
                ..Default::default()
            },
            config: Config::parse(config).unwrap(),
        }
    }

    #[test]
    fn where_specs_go_and_which_toolkit_spec_is_read() {
        // (simulated, config, spec dir)
        let cases: &[(bool, &str, &str)] = &[
            (false, "", "/var/run/cdi"),
            (true, "", "/srv/migrun/cdi"),
            (true, "cdi_dir = \"/run/cdi\"", "/run/cdi"),
            (false, "cdi_dir = \"/x/cdi\"", "/x/cdi"),
        ];
        // Debug builds honour MIGRUN_HOST_ROOT; unit tests never set it.
        assert!(std::env::var_os(crate::gpu::hostfacts::HOST_ROOT_ENV).is_none());
        for &(sim, config, want) in cases {
            assert_eq!(
                ctx(sim, config).cdi_dir().unwrap(),
                PathBuf::from(want),
                "{config}"
            );
        }
        assert_eq!(ctx(false, "").toolkit_paths().len(), 4);
        let named = ctx(false, "cdi_toolkit_spec = \"/nonexistent/nvidia.yaml\"");
        assert_eq!(
            named.toolkit_paths(),
            vec![PathBuf::from("/nonexistent/nvidia.yaml")]
        );
        let e = named.cdi_toolkit().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/nvidia.yaml"), "{e}");
    }
}
