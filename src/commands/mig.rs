//! Handlers for `mig enable|disable` and `teardown`.

use super::{select_gpu, Ctx, InputError};
use crate::cli::{GpuSelect, MigAction, TeardownArgs};
use crate::gpu::GpuInfo;
use crate::migmode::{self, ModeReport};
use anyhow::Result;

/// The GPUs a `--gpu N | --all` selection names; `--all` means every GPU the policy lets migrun manage.
pub(super) fn targets(ctx: &Ctx, gpus: &[GpuInfo], sel_gpu: Option<&str>) -> Result<Vec<GpuInfo>> {
    match sel_gpu {
        Some(g) => {
            let i = select_gpu(g, gpus)?;
            let info = gpus
                .iter()
                .find(|x| x.index == i)
                .cloned()
                .expect("selected");
            if !ctx.config.manages(info.index, &info.uuid) {
                return Err(InputError::Other(format!(
                    "{} is not managed by migrun (see `gpus` in the config file); refusing to touch it",
                    info.label()
                ))
                .into());
            }
            Ok(vec![info])
        }
        None => Ok(gpus
            .iter()
            .filter(|g| ctx.config.manages(g.index, &g.uuid))
            .cloned()
            .collect()),
    }
}

pub fn mig(ctx: &Ctx, action: &MigAction) -> Result<i32> {
    let (enable, sel): (bool, &GpuSelect) = match action {
        MigAction::Enable(s) => (true, s),
        MigAction::Disable(s) => (false, s),
    };
    let mut session = ctx.session()?;
    let dir = session.dir().clone();
    // Under the allocation lock from the first look at the modes to the request: otherwise an allocation
    // could create an instance (or take a lease) between the blocker check and the mode change.
    let reg = crate::lease::Registry::open(&dir)?;
    let _lock = reg.lock()?;
    let gpus = session.gpus()?;
    let targets = targets(ctx, &gpus, sel.gpu.as_deref())?;
    let leases = reg.leases()?;
    let simulated = ctx.global.simulate.clone();
    let mut reports: Vec<ModeReport> = Vec::new();
    let mut first_err = None;
    for info in &targets {
        match session
            .with_backend(|b| migmode::set_mode(b, info, enable, &leases, simulated.as_deref()))
        {
            Ok(r) => reports.push(r),
            // With --all, report every GPU before failing; a single GPU fails at once.
            Err(e) if sel.all => {
                crate::errln!("migrun: {e}");
                first_err.get_or_insert(e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    if sel.json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "schema": 1, "gpus": reports }))?
        );
    } else {
        for r in &reports {
            let what = if r.changed { "requested" } else { "unchanged" };
            crate::outln!(
                "GPU {} ({}): MIG mode {} ({what})",
                r.index,
                r.uuid,
                r.mig_mode
            );
            if let Some(step) = &r.next_step {
                crate::outln!("  pending: {step}");
            }
        }
    }
    match first_err {
        Some(e) => Err(e.into()),
        None => Ok(0),
    }
}

pub fn teardown(ctx: &Ctx, a: &TeardownArgs) -> Result<i32> {
    let mut session = ctx.session()?;
    let gpus = session.gpus()?;
    let targets: Vec<u32> = targets(ctx, &gpus, a.gpu.as_deref())?
        .iter()
        .map(|g| g.index)
        .collect();
    let report = session.teardown(
        &targets,
        crate::alloc::TeardownOptions {
            force: a.force,
            include_foreign: a.include_foreign,
        },
    )?;
    if a.json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "schema": 1, "teardown": report }))?
        );
        return Ok(0);
    }
    if let Some(gc) = &report.gc {
        for r in &gc.released {
            crate::outln!("released first: {r}");
        }
    }
    for d in &report.destroyed {
        crate::outln!(
            "destroyed GPU {} GI {} {} {}",
            d.gpu,
            d.gi,
            d.profile,
            d.mig_uuid.as_deref().unwrap_or("")
        );
    }
    for l in &report.left {
        crate::outln!(
            "left      GPU {} GI {} {} {}: {}",
            l.gpu,
            l.gi,
            l.profile,
            l.mig_uuid.as_deref().unwrap_or(""),
            l.why
        );
    }
    crate::outln!(
        "teardown: {} destroyed, {} left",
        report.destroyed.len(),
        report.left.len()
    );
    Ok(0)
}
