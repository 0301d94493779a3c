//! The warm pool (issue 23): `migrun gc` destroys instances migrun kept warm once they have been idle `keep_idle_s`,
//! and makes the idle instances `warm` asks for; it must not touch a leased, busy, foreign or in-flight instance.
//!
//! Each expiry is claimed under the lock (an intent naming the instance, `destroy`, with this process's start time,
//! so planners hide the instance and gc leaves it to this process), destroyed outside the lock, and its records
//! dropped under it again; a crash after the claim leaves an intent that gc repairs (it destroys the instance, which
//! no lease holds).

use super::drain::{claim_orphan, Purpose};
use super::reconcile::record_matches;
use super::testhook::crash_point;
use super::{AllocError, AllocRequest, GcReport, HolderProbe, ReleaseOutcome};
use crate::config::Config;
use crate::gpu::Backend;
use crate::lease::{self, Registry};
use crate::policy::plan::Want;
use crate::profile::ProfileSpec;
use crate::statedir::StateDir;

/// Destroy kept instances idle for `keep_idle_s` or longer (nothing when the setting is absent).
pub(super) fn expire(
    backend: &mut dyn Backend,
    reg: &Registry,
    config: &Config,
    report: &mut GcReport,
) -> Result<(), AllocError> {
    let Some(limit) = config.keep_idle_s else {
        return Ok(());
    };
    let now = lease::now();
    let mut jobs = Vec::new();
    {
        let _lock = reg.lock()?;
        let state = backend.snapshot()?;
        let leases = reg.leases()?;
        let intents = reg.intents()?;
        for r in reg.created()? {
            let leased = leases
                .iter()
                .any(|l| l.gpu_uuid == r.gpu_uuid && l.gi == r.gi);
            let claimed = intents
                .iter()
                .any(|i| i.in_flight() && i.gpu_uuid == r.gpu_uuid && i.placement == r.placement);
            if leased || claimed || !record_matches(&state, &r) {
                continue;
            }
            if now.saturating_sub(r.idle_since.unwrap_or(r.created_at)) < limit {
                continue;
            }
            let Some(g) = state.gpus.iter().find(|g| g.info.uuid == r.gpu_uuid) else {
                continue;
            };
            let Some(i) = g.instances.iter().find(|i| i.id == r.gi) else {
                continue;
            };
            // A sharing GPU instance goes only while it holds no compute instance (as in `apply::claim_evictions`): one
            // left in it is not a kept one of migrun's.
            if i.processes > 0 || (r.shared && !i.compute_instances.is_empty()) {
                continue;
            }
            let what = format!(
                "GPU {} GI {} ({} at {}), kept idle for {limit} s or more (keep_idle_s)",
                g.info.index, i.id, r.profile, r.placement
            );
            jobs.push(claim_orphan(reg, g, i, Some(&r), Purpose::Expire(what))?);
            crash_point("expire-after-claim");
        }
    }
    super::drain::run(backend, reg, jobs, report)
}

/// The `warm` setting's profiles, parsed (checked before gc changes anything).
pub(super) fn check(config: &Config) -> Result<Vec<ProfileSpec>, AllocError> {
    config
        .warm
        .keys()
        .map(|profile| {
            profile
                .parse()
                .map_err(|e: crate::profile::ProfileError| AllocError::BadWarm {
                    entry: profile.clone(),
                    why: e.to_string(),
                })
        })
        .collect()
}

/// Make the idle instances the `warm` setting asks for (nothing while any request waits: the pool never takes room a
/// waiting request needs). Each profile is allocated N times at once (reusing idle instances first, creating the
/// rest, outside the lock as every create is), then every lease is released with keep: N idle instances of migrun's.
pub(super) fn warm_up(
    backend: &mut dyn Backend,
    dir: &StateDir,
    config: &Config,
    probe: &dyn HolderProbe,
    report: &mut GcReport,
) -> Result<(), AllocError> {
    if config.warm.is_empty() {
        return Ok(());
    }
    let reg = Registry::open(dir)?;
    let waiting = || -> Result<bool, AllocError> {
        let now = lease::now();
        Ok(reg.tickets()?.iter().any(|t| t.holds(now)))
    };
    const WAITING: &str = "warm pool: requests are waiting, so no instance is made ready now";
    if waiting()? {
        report.notes.push(WAITING.into());
        return Ok(());
    }
    for ((profile, &n), spec) in config.warm.iter().zip(check(config)?) {
        let mut held = Vec::new();
        let mut stopped = None;
        for _ in 0..n {
            // Looked at again before every instance: a request that started waiting meanwhile gets the room.
            if waiting()? {
                report.notes.push(WAITING.into());
                break;
            }
            let mut req = AllocRequest::new(Want::Profile(spec));
            req.keep = true;
            match super::allocate::allocate_quiet(backend, dir, config, &req, probe) {
                Ok(g) => held.push(g.lease),
                Err(e) => {
                    stopped = Some(e);
                    break;
                }
            }
        }
        let mut ready = 0;
        for l in &held {
            let out = super::release(backend, dir, config, &l.id.to_string(), None)?;
            // A found (foreign) instance it reused is not migrun's to keep ready.
            if l.created && matches!(out, ReleaseOutcome::Kept { .. }) {
                ready += 1;
            }
        }
        report.notes.push(match stopped {
            None => {
                format!("warm pool: {ready} idle {profile} instance(s) of migrun's ready (of {n})")
            }
            Some(e) => {
                format!("warm pool: {ready} idle {profile} instance(s) ready of {n} asked: {e}")
            }
        });
    }
    Ok(())
}
