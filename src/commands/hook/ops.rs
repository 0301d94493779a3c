//! The hooks' and the shim's lease operations ([`LeaseOps`]) over the real state dir and GPU backend, opened on first use, and the hand-over records (precreate's and `migrun alloc --handover`'s).

use super::Ctx;
use crate::alloc::{self, AllocRequest, ReleaseOutcome};
use crate::cdi::types::ContainerEdits;
use crate::commands::session::Session;
use crate::engine::oci::binding::{bound_to, shim_record_rel, Handover, ShimRecord, SHIM_DIR};
use crate::engine::oci::{LeaseCheck, LeaseOps, OpsError, Request};
use crate::lease::{Holder, Lease, LeaseId, Registry};
use crate::policy::Want;
use crate::statedir::StateDir;

/// Sub-directory of the state dir holding precreate's hand-over records, `<lease>.json` each.
const HANDOVER_DIR: &str = "handover";

/// Errors of the hand-over records (exit 1, the default: the container start fails; state-dir errors
/// pass through as [`crate::statedir::StateDirError`] with their own codes).
#[derive(Debug, thiserror::Error)]
pub enum OpsRecordError {
    #[error("{path} is not a valid migrun hand-over record ({why}); remove it (the lease stays with podman's process until gc)")]
    Malformed {
        path: std::path::PathBuf,
        why: String,
    },
    #[error("{path} is not a valid record of migrun's runtime shim ({why}); remove it, then run `migrun gc` (the container's lease is released when the container is gone)")]
    MalformedShim {
        path: std::path::PathBuf,
        why: String,
    },
    #[error(
        "container id {0:?} cannot name a shim record; this is a migrun bug: please report it"
    )]
    BadShimId(String),
}

pub(super) struct CtxOps<'a> {
    ctx: &'a Ctx,
    /// The state dir, opened on first use: a container that asks for no slice never touches it.
    dir: Option<StateDir>,
    /// The composition root's lease session over it, opened only for what needs the GPU backend
    /// (allocate, release, a spec to write): a prestart that only hands a lease to its container
    /// reads and writes lease records, and so never loads NVML.
    opened: Option<Session<'a>>,
}

impl<'a> CtxOps<'a> {
    pub(super) fn new(ctx: &'a Ctx) -> Self {
        CtxOps {
            ctx,
            dir: None,
            opened: None,
        }
    }

    fn dir(&mut self) -> Result<&StateDir, OpsError> {
        if self.dir.is_none() {
            // Runtimes run hooks as root; a rootless engine reaching here gets the privilege guidance, not an NVML error.
            crate::caller::require_root(
                "a hook's MIG allocation or release",
                self.ctx.global.simulate.is_some(),
            )
            .map_err(|e| into_ops(e.into()))?;
            let dir = self.ctx.state_dir().map_err(into_ops)?;
            // The same refusal the session gives a state dir of another backend.
            self.ctx.check_backend_kind(&dir).map_err(into_ops)?;
            self.dir = Some(dir);
        }
        Ok(self.dir.as_ref().expect("just opened"))
    }

    fn open(&mut self) -> Result<&mut Session<'a>, OpsError> {
        if self.opened.is_none() {
            let dir = self.dir()?.clone();
            self.opened = Some(self.ctx.session_in(dir).map_err(into_ops)?);
        }
        Ok(self.opened.as_mut().expect("just opened"))
    }

    fn handover_rel(lease: LeaseId) -> String {
        format!("{HANDOVER_DIR}/{lease}.json")
    }

    /// Remove hand-over records whose lease is gone or no longer held by the recorded process (its
    /// container took it, or gc released it): each is one small file a failed or killed podman left.
    ///
    /// Each lease is read after its record: a concurrent precreate writes its record only after its
    /// lease, so a record seen here always finds its lease (a snapshot of the leases taken before
    /// listing could miss it and remove a hand-over that is still to come).
    fn prune_handovers(dir: &StateDir) {
        let Ok(rd) = std::fs::read_dir(dir.join(HANDOVER_DIR)) else {
            return;
        };
        let Ok(reg) = Registry::open(dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name
                .strip_suffix(".json")
                .and_then(|n| n.parse::<LeaseId>().ok())
            else {
                continue;
            };
            let rec: Option<Handover> = dir
                .read(&Self::handover_rel(id))
                .ok()
                .flatten()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let Some(rec) = rec else {
                continue;
            };
            match reg.lease(id) {
                Ok(Some(l)) if l.holder == rec.holder => {}
                Ok(_) => {
                    let _ = std::fs::remove_file(e.path());
                }
                // Unreadable: leave it; a malformed lease stops allocation anyway.
                Err(_) => {}
            }
        }
    }
}

/// Write a hand-over record under `dir` (root's 0700 state dir, temp file + rename), then drop the
/// stale ones. Shared by podman's precreate and `migrun alloc --handover`, so prestart and the shim
/// find both the same way.
pub(crate) fn record_handover(
    dir: &StateDir,
    h: &Handover,
) -> Result<(), crate::statedir::StateDirError> {
    dir.subdir(HANDOVER_DIR)?;
    let mut json = serde_json::to_vec_pretty(h).expect("records serialise");
    json.push(b'\n');
    dir.write(&CtxOps::handover_rel(h.lease), &json)?;
    CtxOps::prune_handovers(dir);
    Ok(())
}

/// Where the hand-over record of `lease` lives, relative to the state dir.
pub(crate) fn handover_rel(lease: LeaseId) -> String {
    CtxOps::handover_rel(lease)
}

/// The hand-over record of `lease` out of `bytes` (read from [`handover_rel`]), checked to be that
/// lease's: a record under another lease's name is refused, never followed.
pub(crate) fn parse_handover(
    dir: &StateDir,
    lease: LeaseId,
    bytes: &[u8],
) -> Result<Handover, OpsRecordError> {
    let bad = |why: String| OpsRecordError::Malformed {
        path: dir.join(&CtxOps::handover_rel(lease)),
        why,
    };
    let h: Handover = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if h.lease != lease {
        return Err(bad(format!("it records lease {}, not {lease}", h.lease)));
    }
    Ok(h)
}

fn into_ops(e: anyhow::Error) -> OpsError {
    e.into()
}

impl LeaseOps for CtxOps<'_> {
    fn allocate(&mut self, req: &Request, holder: Holder) -> Result<Lease, OpsError> {
        // Charged to the uid the hook runs as (root): neither the engine nor the container tells who
        // started the container in a way the container cannot choose (docs/security.md).
        let areq = AllocRequest {
            want: Want::from(req.profile),
            gpu: req.gpu.clone(),
            wait: None,
            keep: false,
            holder,
            uid: nix::unistd::getuid().as_raw(),
            name: None,
        };
        Ok(self.open()?.allocate(&areq)?)
    }

    fn lease(&mut self, id: LeaseId) -> Result<Option<Lease>, OpsError> {
        let dir = self.dir()?.clone();
        Ok(Registry::open(&dir)?.lease(id)?)
    }

    fn leases_of_container(&mut self, id: &str) -> Result<Vec<Lease>, OpsError> {
        let dir = self.dir()?.clone();
        Ok(alloc::leases(&dir)?
            .into_iter()
            .filter(|l| matches!(&l.holder, Holder::Container { id: c, .. } if c == id))
            .collect())
    }

    fn set_holder_if(
        &mut self,
        id: LeaseId,
        check: LeaseCheck,
        to: Holder,
    ) -> Result<bool, OpsError> {
        let dir = self.dir()?.clone();
        Ok(alloc::set_holder_if(&dir, id, check, to)?)
    }

    fn release(&mut self, id: LeaseId) -> Result<ReleaseOutcome, OpsError> {
        Ok(self.open()?.release(&id.to_string(), None)?)
    }

    fn release_if(&mut self, id: LeaseId, check: LeaseCheck) -> Result<ReleaseOutcome, OpsError> {
        // A container's end: from migrun's records alone when they decide it, so the end never opens the driver
        // (`Ctx::end_container`); otherwise through the session.
        if self.opened.is_none() {
            let dir = self.dir()?.clone();
            if let Some(out) = self.ctx.end_container(&dir, id, check).map_err(into_ops)? {
                return Ok(out);
            }
        }
        Ok(self.open()?.release_if(id, check)?)
    }

    fn cdi_edits(&mut self, lease: &Lease) -> Result<Option<ContainerEdits>, OpsError> {
        let path = std::env::var_os("PATH");
        if !crate::engine::runtime::hook_injects_cdi(&self.ctx.config, path.as_deref()) {
            return Ok(None);
        }
        Ok(Some(self.open()?.cdi_edits(lease)?))
    }

    fn record_handover(&mut self, h: &Handover) -> Result<(), OpsError> {
        let dir = self.dir()?.clone();
        Ok(record_handover(&dir, h)?)
    }

    fn handover(&mut self, lease: LeaseId) -> Result<Option<Handover>, OpsError> {
        let dir = self.dir()?.clone();
        let rel = Self::handover_rel(lease);
        let Some(bytes) = dir.read(&rel)? else {
            return Ok(None);
        };
        Ok(Some(parse_handover(&dir, lease, &bytes)?))
    }

    fn drop_handover(&mut self, lease: LeaseId) -> Result<(), OpsError> {
        let dir = self.dir()?.clone();
        match std::fs::remove_file(dir.join(&Self::handover_rel(lease))) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn record_shim(&mut self, r: &ShimRecord) -> Result<(), OpsError> {
        let dir = self.dir()?.clone();
        let rel = shim_record_rel(&r.id).ok_or_else(|| OpsRecordError::BadShimId(r.id.clone()))?;
        dir.subdir(SHIM_DIR)?;
        prune_shim_records(&dir);
        let mut json = serde_json::to_vec_pretty(r).expect("records serialise");
        json.push(b'\n');
        Ok(dir.write(&rel, &json)?)
    }

    fn shim_record(&mut self, id: &str) -> Result<Option<ShimRecord>, OpsError> {
        let dir = self.dir()?.clone();
        Ok(read_shim_record(&dir, id)?)
    }

    fn drop_shim_record(&mut self, id: &str) -> Result<(), OpsError> {
        let dir = self.dir()?.clone();
        let Some(rel) = shim_record_rel(id) else {
            return Ok(());
        };
        match std::fs::remove_file(dir.join(&rel)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The shim's record of container `id` under `dir`; `None` when there is none (or `id` cannot name one).
pub(crate) fn read_shim_record(
    dir: &StateDir,
    id: &str,
) -> Result<Option<ShimRecord>, OpsRecordError> {
    let Some(rel) = shim_record_rel(id) else {
        return Ok(None);
    };
    let bad = |why: String| OpsRecordError::MalformedShim {
        path: dir.join(&rel),
        why,
    };
    let Some(bytes) = dir.read(&rel).map_err(|e| bad(e.to_string()))? else {
        return Ok(None);
    };
    let r: ShimRecord = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if r.id != id {
        return Err(bad(format!("it records container {}, not {id}", r.id)));
    }
    Ok(Some(r))
}

/// Remove the shim's records whose lease is gone or no longer bound to the recorded container (gc
/// collected it after the engine deleted the container with another runtime, or never deleted it).
fn prune_shim_records(dir: &StateDir) {
    let Ok(rd) = std::fs::read_dir(dir.join(SHIM_DIR)) else {
        return;
    };
    let Ok(reg) = Registry::open(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".json") else {
            continue;
        };
        let Ok(Some(rec)) = read_shim_record(dir, id) else {
            continue;
        };
        match reg.lease(rec.lease) {
            Ok(Some(l)) if bound_to(&l, &rec.id, &rec.bundle) => {}
            Ok(_) => {
                let _ = std::fs::remove_file(e.path());
            }
            // Unreadable: leave it; a malformed lease stops allocation anyway.
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::oci::test_support::lease;

    #[test]
    fn only_hand_overs_still_pending_are_kept() {
        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::open(t.path().join("s")).unwrap();
        let reg = Registry::open(&dir).unwrap();
        dir.subdir(HANDOVER_DIR).unwrap();
        let podman = Holder::Process {
            pid: 1,
            start_time: 1,
        };
        let record = |id: LeaseId| {
            let h = Handover {
                lease: id,
                token: "00".into(),
                holder: podman.clone(),
                created_at: 0,
            };
            dir.write(&CtxOps::handover_rel(id), &serde_json::to_vec(&h).unwrap())
                .unwrap();
        };
        // 1: still podman's (pending); 2: taken by its container; 3: lease gone.
        reg.write_lease(&lease(1, "MIG-1", podman.clone())).unwrap();
        reg.write_lease(&lease(2, "MIG-2", Holder::Manual)).unwrap();
        for id in [1, 2, 3] {
            record(id);
        }
        CtxOps::prune_handovers(&dir);
        let left: Vec<bool> = [1, 2, 3]
            .iter()
            .map(|&id| dir.join(&CtxOps::handover_rel(id)).exists())
            .collect();
        assert_eq!(left, [true, false, false]);
    }
}
