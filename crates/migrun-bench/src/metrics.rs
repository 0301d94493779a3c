//! The `migrun metrics` benchmark: on an 8-GPU simulated (or fake-NVML) H100 machine holding 56 leases, `migrun
//! metrics` against `migrun status --json` on the same state, paired and alternating; it prints figures and
//! must not judge them beyond saying where the 20 ms budget stands.

use crate::overhead::{median, quantile, run_pairs, timed, Machine, OverheadError, Paired, Result};

/// The machine and its load: 7 leases of 1g.10gb on each of 8 H100s (every 1g slot taken).
pub const SPEC: &str = "h100-80gb:8";
pub const LEASES: usize = 56;
/// The budget the issue sets for one `migrun metrics` on that machine.
pub const BUDGET_MS: f64 = 20.0;

/// Fill the machine with [`LEASES`] manual leases; the ledger goes into the machine's own directory.
pub fn load(m: &Machine) -> Result<std::path::PathBuf> {
    let config = m.config(
        "metrics-bench.toml",
        &format!("ledger = \"{}\"\n", m.dir().join("ledger.jsonl").display()),
    )?;
    for _ in 0..LEASES {
        timed(
            m.migrun()
                .env("MIGRUN_CONFIG", &config)
                .args(["alloc", "--profile", "1g.10gb"]),
        )?;
    }
    m.expect("after loading the metrics machine", LEASES, LEASES)?;
    Ok(config)
}

/// Paired runs of `migrun metrics` (the `migrun` side) and `migrun status --json` (the baseline).
pub fn run(m: &Machine, pairs: usize, warmup: usize) -> Result<Paired> {
    let config = load(m)?;
    let p = run_pairs(
        pairs,
        warmup,
        || timed(m.migrun().env("MIGRUN_CONFIG", &config).arg("metrics")),
        || {
            timed(
                m.migrun()
                    .env("MIGRUN_CONFIG", &config)
                    .args(["status", "--json"]),
            )
        },
    )?;
    if p.migrun.is_empty() {
        return Err(OverheadError::Input("no pairs measured".into()));
    }
    Ok(p)
}

/// The line under the table: median and 90th percentile of `migrun metrics` against the budget.
pub fn verdict(p: &Paired, backend: &str) -> String {
    let (med, p90) = (median(&p.migrun), quantile(&p.migrun, 0.9));
    format!(
        "{backend}: migrun metrics median {med:.2} ms, p90 {p90:.2} ms, {LEASES} leases on {SPEC}: {} the {BUDGET_MS} ms budget",
        if p90 < BUDGET_MS { "within" } else { "OVER" }
    )
}
