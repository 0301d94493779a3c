//! The warm pool's background refill (issue 23): when an allocation takes an instance migrun kept idle for the `warm`
//! setting, a detached worker (`migrun __refill-warm`) makes the pool whole again, so the next request finds one ready
//! without anyone running gc. It must not spawn processes itself (an allocation says the pool is one short,
//! `Granted::refill`, and the session starts the worker) and never makes anything while a request waits in the queue
//! (`idle::warm_up`).

use super::account::registry;
use super::{idle, AllocError, GcReport, HolderProbe};
use crate::config::Config;
use crate::gpu::{Backend, MigState};
use crate::lease::{Lease, LeaseError};
use crate::statedir::StateDir;

/// Lock file that makes refills of one state dir run one after another (two at once would each count the pool short
/// and make too many).
const REFILL_LOCK: &str = "warm.lock";

/// Did this grant take an idle instance migrun keeps for the `warm` setting (one of its own, whole, of a profile the
/// setting names)? Then the pool is one short.
pub(super) fn took_warm(config: &Config, state: &MigState, lease: &Lease) -> bool {
    if config.warm.is_empty() || !lease.created || lease.ci_profile.is_some() {
        return false;
    }
    let Some(p) = state
        .gpu(lease.gpu_index)
        .and_then(|g| g.profile_by_id(lease.profile_id))
    else {
        return false;
    };
    idle::check(config)
        .is_ok_and(|specs| specs.iter().any(|spec| crate::gpu::names::matches(spec, p)))
}

/// `migrun __refill-warm`: make the idle instances the `warm` setting asks for, outside the allocation lock as every
/// create is, one refill at a time; nothing while any request waits.
pub(crate) fn refill_warm(
    backend: &mut dyn Backend,
    dir: &StateDir,
    config: &Config,
    probe: &dyn HolderProbe,
) -> Result<GcReport, AllocError> {
    idle::check(config)?;
    let reg = registry(dir, config, backend)?;
    let _one = reg.dir().lock(REFILL_LOCK).map_err(LeaseError::from)?;
    let mut report = GcReport::default();
    idle::warm_up(backend, dir, config, probe, &mut report)?;
    Ok(report)
}
