//! Building the planner's input from a request: resolve `--gpu`, intersect it with the config's `gpus`, parse
//! `allowed_profiles`, list kept instances; the config's lease limits; the clearest error for a request that
//! could never fit. It must not touch the device or the registry's files.

use super::{AllocError, AllocRequest};
use crate::config::{Config, GpuRef};
use crate::gpu::{GpuError, MigState};
use crate::lease::{CreatedRecord, Lease, LeaseError, LeaseName, LeaseState};
use crate::policy::plan::CiContext;
use crate::policy::{NoRoom, PlanRequest, Want};
use crate::profile::ProfileError;

fn known_gpus(state: &MigState) -> String {
    if state.gpus.is_empty() {
        return "no GPUs".into();
    }
    state
        .gpus
        .iter()
        .map(|g| format!("{} ({})", g.info.index, g.info.uuid))
        .collect::<Vec<_>>()
        .join(", ")
}

fn resolve_gpu(state: &MigState, given: &str) -> Result<u32, AllocError> {
    let t = given.trim();
    let found = state.gpus.iter().find(|g| {
        g.info.uuid.eq_ignore_ascii_case(t) || t.parse::<u32>().is_ok_and(|n| n == g.info.index)
    });
    found
        .map(|g| g.info.index)
        .ok_or_else(|| AllocError::BadGpu {
            given: given.into(),
            known: format!("GPUs {}", known_gpus(state)),
        })
}

/// The planner's input from a request, the config and the registry.
pub(crate) fn plan_request(
    state: &MigState,
    config: &Config,
    req: &AllocRequest,
    created: &[CreatedRecord],
    leases: &[Lease],
) -> Result<PlanRequest, AllocError> {
    let managed: Option<Vec<u32>> = config.gpus.as_ref().map(|refs| {
        refs.iter()
            .filter_map(|r| match r {
                GpuRef::Index(i) => state.gpu(*i).map(|g| g.info.index),
                GpuRef::Uuid(u) => state
                    .gpus
                    .iter()
                    .find(|g| g.info.uuid.eq_ignore_ascii_case(u))
                    .map(|g| g.info.index),
            })
            .collect()
    });
    if managed.as_ref().is_some_and(|m| m.is_empty()) {
        return Err(AllocError::NotManaged {
            gpu: "any".into(),
            allowed: "no GPU present on this machine".into(),
        });
    }
    let gpus = match (&req.gpu, managed) {
        (None, m) => m,
        (Some(given), m) => {
            let i = resolve_gpu(state, given)?;
            if let Some(m) = &m {
                if !m.contains(&i) {
                    return Err(AllocError::NotManaged {
                        gpu: given.clone(),
                        allowed: if m.is_empty() {
                            "none present".into()
                        } else {
                            m.iter()
                                .map(|i| i.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        },
                    });
                }
            }
            Some(vec![i])
        }
    };
    // An entry is a GPU-instance profile (name or ID) or a compute-instance profile (`1c.3g.40gb`).
    let mut allowed_ci = Vec::new();
    let allowed = match &config.allowed_profiles {
        None => None,
        Some(list) => {
            let mut specs = Vec::new();
            for s in list {
                let bad = |e: ProfileError| AllocError::BadConfig {
                    entry: s.clone(),
                    why: e.to_string(),
                };
                match Want::parse_profile(s).map_err(bad)? {
                    Want::Ci(ci) => allowed_ci.push(ci),
                    Want::Profile(spec) => specs.push(spec),
                    Want::MinMemMib(_) => {}
                }
            }
            Some(specs)
        }
    };
    let kept = created
        .iter()
        .filter(|r| {
            !leases
                .iter()
                .any(|l| l.gpu_uuid == r.gpu_uuid && l.gi == r.gi)
        })
        .map(|r| (r.gpu_uuid.clone(), r.gi))
        .collect();
    Ok(PlanRequest {
        want: req.want.clone(),
        gpus,
        allowed,
        kept,
        ci: CiContext {
            allowed: allowed_ci,
            sharing: created
                .iter()
                .filter(|r| r.shared)
                .filter_map(|r| {
                    let g = state.gpus.iter().find(|g| g.info.uuid == r.gpu_uuid)?;
                    Some((g.info.index, r.gi))
                })
                .collect(),
            shared: Vec::new(),
            user: req.uid.to_string(),
            share_across_users: config.share_gi_across_users,
        },
    })
}

/// Turn a hopeless no-room into the clearest error: an unknown profile or disabled MIG by name.
pub(super) fn unsatisfiable(state: &MigState, req: &PlanRequest, nr: NoRoom) -> AllocError {
    use crate::policy::Why;
    if nr.gpus.is_empty() {
        return AllocError::NoGpus;
    }
    if nr.gpus.iter().all(|g| g.why == Why::NoSuchProfile) {
        if let (Want::Profile(spec), Some(g)) = (&req.want, state.gpu(nr.gpus[0].index)) {
            if let Err(e) =
                crate::gpu::names::resolve(spec, &g.profiles, &g.info.label(), &g.info.name)
            {
                return e.into();
            }
        }
        if let (Want::Ci(ci), Some(g)) = (&req.want, state.gpu(nr.gpus[0].index)) {
            if let Err(e) =
                crate::gpu::ci_tables::resolve(ci, &g.profiles, &g.info.label(), &g.info.name)
            {
                return AllocError::CiProfile(Box::new(e));
            }
        }
    }
    if nr.gpus.iter().all(|g| g.why == Why::MigDisabled) {
        let g = &nr.gpus[0];
        return GpuError::MigDisabled {
            gpu: format!("GPU {} ({})", g.index, g.uuid),
            index: g.index,
        }
        .into();
    }
    AllocError::Unsatisfiable(Box::new(nr))
}

/// The config's `max_leases_per_user` and `max_leases_total`, against the leases that exist now.
pub(crate) fn check_limits(config: &Config, leases: &[Lease], uid: u32) -> Result<(), AllocError> {
    let ids = |ls: Vec<&Lease>| {
        ls.iter()
            .map(|l| l.id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(limit) = config.max_leases_total {
        if leases.len() as u64 >= u64::from(limit) {
            return Err(AllocError::LimitReached {
                rule: "max_leases_total",
                limit,
                held: format!(
                    "{} lease(s) exist (leases {})",
                    leases.len(),
                    ids(leases.iter().collect())
                ),
            });
        }
    }
    if let Some(limit) = config.max_leases_per_user {
        let mine: Vec<&Lease> = leases.iter().filter(|l| l.uid == uid).collect();
        if mine.len() as u64 >= u64::from(limit) {
            return Err(AllocError::LimitReached {
                rule: "max_leases_per_user",
                limit,
                held: format!(
                    "uid {uid} holds {} lease(s) (leases {})",
                    mine.len(),
                    ids(mine)
                ),
            });
        }
    }
    Ok(())
}

/// `alloc --name`: refused while an active lease has the name (under the lock, after the sweep freed
/// dead holders' leases, so of two racing requests for one name exactly one gets it). A draining lease
/// has ended and its spec is gone, so its name is free again.
pub(crate) fn check_name(leases: &[Lease], name: Option<&LeaseName>) -> Result<(), AllocError> {
    let Some(name) = name else { return Ok(()) };
    match leases
        .iter()
        .find(|l| l.state == LeaseState::Active && l.name.as_ref() == Some(name))
    {
        None => Ok(()),
        Some(l) => Err(LeaseError::NameTaken {
            name: name.clone(),
            holder: l.id,
            holder_desc: format!(
                "{} {}, held by {}, uid {}",
                l.profile, l.mig_uuid, l.holder, l.uid
            ),
        }
        .into()),
    }
}
