//! Handlers of `migrun usage` and `migrun metrics`, and the node-exporter textfile the session rewrites after
//! every change; the figures themselves are computed in `ops`.

use super::Ctx;
use crate::cli::{UsageArgs, UsageBy};
use crate::gpu::Backend;
use crate::lease::Registry;
use crate::ops::metrics::Figures;
use crate::ops::usage::{self, By};
use crate::statedir::StateDir;
use anyhow::{Context, Result};

/// `migrun usage [--since D] [--by user|profile|gpu] [--json]`.
pub fn usage(ctx: &Ctx, a: &UsageArgs) -> Result<i32> {
    let since = a.since.as_deref().map(usage::parse_since).transpose()?;
    let ledger = crate::alloc::ledger_of(
        &ctx.state_dir_path()?,
        &ctx.config,
        ctx.sim_spec()?.is_some(),
    );
    let (events, skipped) = ledger.read_all()?;
    let to = crate::lease::now();
    let from = since.map_or(0, |s| to.saturating_sub(s));
    let by = match a.by {
        UsageBy::User => By::User,
        UsageBy::Profile => By::Profile,
        UsageBy::Gpu => By::Gpu,
    };
    let report = usage::report(&events, by, from, to, skipped);
    if a.json {
        let mut doc = serde_json::to_value(&report)?;
        doc["schema"] = crate::commands::list::SCHEMA_VERSION.into();
        doc["ledger"] = ledger.path.display().to_string().into();
        crate::outln!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    let head = match a.by {
        UsageBy::User => "USER",
        UsageBy::Profile => "PROFILE",
        UsageBy::Gpu => "GPU",
    };
    let window = match since {
        None => "since the ledger began".to_string(),
        Some(_) => format!(
            "for the last {}",
            a.since.as_deref().unwrap_or_default().trim()
        ),
    };
    crate::outln!(
        "usage {window} ({}){}",
        ledger.path.display(),
        if report.rows.is_empty() {
            ": nothing recorded"
        } else {
            ":"
        }
    );
    if !report.rows.is_empty() {
        crate::outln!(
            "{:<16} {:>12} {:>7} {:>5} {:>6} {:>9}  REFUSED no-room/policy/never",
            head,
            "SLICE-HOURS",
            "LEASES",
            "OPEN",
            "WAITS",
            "WAITED-S"
        );
    }
    for r in &report.rows {
        let key = match &r.user {
            Some(u) => format!("{u} ({})", r.key),
            None => r.key.clone(),
        };
        crate::outln!(
            "{:<16} {:>12.3} {:>7} {:>5} {:>6} {:>9}  {}/{}/{}",
            key,
            r.slice_hours,
            r.leases,
            r.open,
            r.waits,
            r.wait_seconds,
            r.refused_no_room,
            r.refused_policy,
            r.refused_unsatisfiable
        );
    }
    if skipped > 0 {
        crate::errln!(
            "migrun: {skipped} ledger line(s) did not parse and were skipped (a line cut short by a full disk, or one from a newer migrun)"
        );
    }
    Ok(0)
}

/// Gather the figures under the allocation lock, so device and records agree. Without a state dir there
/// are no leases and no counters yet.
fn figures(backend: &mut dyn Backend, dir: Option<&StateDir>) -> Result<Figures> {
    let reg = dir.map(Registry::open).transpose()?;
    let _lock = reg.as_ref().map(Registry::lock).transpose()?;
    let state = backend.snapshot()?;
    let (leases, counters) = match &reg {
        Some(r) => (r.leases()?, r.counters()?),
        None => Default::default(),
    };
    Ok(Figures::gather(&state, &leases, counters))
}

/// `migrun metrics`: the Prometheus text format on stdout.
pub fn metrics(ctx: &Ctx) -> Result<i32> {
    let dir = ctx.existing_state_dir()?;
    let mut backend = ctx.read_backend()?;
    let text = figures(&mut *backend, dir.as_ref())?.render();
    crate::out::write_bytes(text.as_bytes())?;
    Ok(0)
}

/// Rewrite the config's `metrics_textfile` (temp file + rename, 0644), if it names one. Called by the session
/// after every change; a failure is logged, never fatal (the change itself is done).
pub(crate) fn refresh_textfile(ctx: &Ctx, backend: &mut dyn Backend, dir: &StateDir) {
    let Some(path) = &ctx.config.metrics_textfile else {
        return;
    };
    let written = figures(backend, Some(dir)).and_then(|f| {
        crate::statedir::write_atomic(path, f.render().as_bytes(), 0o644)
            .with_context(|| format!("metrics_textfile {}", path.display()))
    });
    if let Err(e) = written {
        tracing::warn!("could not rewrite the metrics textfile: {e:#}");
    }
}
