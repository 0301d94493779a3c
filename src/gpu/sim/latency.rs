//! The simulated driver's latency model: how long each driver operation takes, kept in the simulated machine's
//! state file; it only says how long, the callers (the `--simulate` backend, the fake NVML library) sleep, and it
//! must not do I/O.
//!
//! Real MIG driver calls are slow (creating a GPU instance takes hundreds of milliseconds, destroying one is
//! documented as "O(1 s)"), while the simulator answers in microseconds; code tuned on the simulator alone would
//! hold locks across calls that cost seconds on a GPU. The model is off on a fresh machine (functional tests stay
//! fast) and set with `migrun --simulate SPEC sim latency model` (the benchmarks). Each default's source is in
//! docs/benchmarks.md ("Driver latency model").
//!
//! The delay is slept *outside* the simulator's file lock, so two processes' driver calls overlap, as calls on
//! different instances of a real GPU are assumed to (NVIDIA does not document whether the driver serialises them;
//! the figures say which way they were taken).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A driver operation the model times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverOp {
    /// `nvmlInit` in a fresh process (the simulator: opening the backend).
    Init,
    /// One listing of the GPUs' instances (a snapshot).
    List,
    CreateGi,
    CreateCi,
    DestroyCi,
    DestroyGi,
    /// Setting MIG mode.
    MigMode,
}

impl DriverOp {
    /// Every operation with its name in the `sim latency` grammar.
    pub const ALL: [(DriverOp, &'static str); 7] = [
        (DriverOp::Init, "init"),
        (DriverOp::List, "list"),
        (DriverOp::CreateGi, "create-gi"),
        (DriverOp::CreateCi, "create-ci"),
        (DriverOp::DestroyCi, "destroy-ci"),
        (DriverOp::DestroyGi, "destroy-gi"),
        (DriverOp::MigMode, "mig-mode"),
    ];
}

/// Milliseconds per driver operation. All zero is "off".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    pub init_ms: u32,
    pub list_ms: u32,
    pub create_gi_ms: u32,
    pub create_ci_ms: u32,
    pub destroy_ci_ms: u32,
    pub destroy_gi_ms: u32,
    pub mig_mode_ms: u32,
}

/// The longest delay one operation may be given (a typo such as `create-gi=80000000` must not hang a test host).
pub const MAX_MS: u32 = 120_000;

impl Latency {
    /// The model's defaults; docs/benchmarks.md names the evidence behind each figure.
    pub const MODEL: Latency = Latency {
        // nvmlInit in a fresh process: 10-15 ms measured on an H100 (issue 23).
        init_ms: 12,
        // One instance listing: a few NVML queries, ~1 ms (nvidia-smi mig -lgi is 20-30 ms wall, mostly its own init).
        list_ms: 1,
        // No controlled published figure; chosen so that a GI plus its CI is ~1 s, the order of the destroy figure.
        create_gi_ms: 600,
        create_ci_ms: 300,
        // NVIDIA's k8s DRA driver documents destroy as "O(1 s)": split between the CI and the GI.
        destroy_ci_ms: 300,
        destroy_gi_ms: 700,
        // Enabling MIG is a driver reconfiguration (and a reset on A100); seconds.
        mig_mode_ms: 2_000,
    };

    pub fn is_off(&self) -> bool {
        *self == Latency::default()
    }

    fn slot(&mut self, op: DriverOp) -> &mut u32 {
        match op {
            DriverOp::Init => &mut self.init_ms,
            DriverOp::List => &mut self.list_ms,
            DriverOp::CreateGi => &mut self.create_gi_ms,
            DriverOp::CreateCi => &mut self.create_ci_ms,
            DriverOp::DestroyCi => &mut self.destroy_ci_ms,
            DriverOp::DestroyGi => &mut self.destroy_gi_ms,
            DriverOp::MigMode => &mut self.mig_mode_ms,
        }
    }

    /// How long `op` takes under this model.
    pub fn of(&self, op: DriverOp) -> Duration {
        let mut copy = *self;
        Duration::from_millis(u64::from(*copy.slot(op)))
    }

    /// Sleep as long as `op` takes (nothing when the model is off).
    pub fn wait(&self, op: DriverOp) {
        let d = self.of(op);
        if !d.is_zero() {
            std::thread::sleep(d);
        }
    }
}

/// A `sim latency` setting that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad latency setting {given:?}: {why}; the form is `off`, `model`, or `[model,]OP=MS,...` with OP one of init, list, create-gi, create-ci, destroy-ci, destroy-gi, mig-mode (e.g. `model,destroy-gi=2000`)")]
pub struct LatencyError {
    pub given: String,
    pub why: String,
}

impl crate::exit::ExitCodeOf for LatencyError {
    fn exit_code(&self) -> i32 {
        crate::exit::USAGE
    }
}

impl FromStr for Latency {
    type Err = LatencyError;
    /// `off`, `model`, or a list of `OP=MS` starting from off (or from the model when the first item is `model`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| LatencyError {
            given: s.escape_debug().to_string(),
            why,
        };
        let mut out = Latency::default();
        for (i, item) in s.split(',').map(str::trim).enumerate() {
            match item {
                "off" if i == 0 => out = Latency::default(),
                "model" if i == 0 => out = Latency::MODEL,
                "" => return Err(bad("an empty item".into())),
                _ => {
                    let (op, ms) = item.split_once('=').ok_or_else(|| {
                        bad(format!(
                            "{:?} is not OP=MS",
                            item.escape_debug().to_string()
                        ))
                    })?;
                    let op = DriverOp::ALL
                        .iter()
                        .find(|(_, n)| *n == op.trim())
                        .map(|(o, _)| *o)
                        .ok_or_else(|| {
                            bad(format!(
                                "unknown operation {:?}",
                                op.escape_debug().to_string()
                            ))
                        })?;
                    let ms: u32 =
                        ms.trim()
                            .parse()
                            .ok()
                            .filter(|m| *m <= MAX_MS)
                            .ok_or_else(|| {
                                bad(format!(
                                    "{:?} is not a whole number of milliseconds up to {MAX_MS}",
                                    ms.escape_debug().to_string()
                                ))
                            })?;
                    *out.slot(op) = ms;
                }
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_off() {
            return f.write_str("off");
        }
        let mut first = true;
        for (op, name) in DriverOp::ALL {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{name}={}", self.of(op).as_millis())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_print_back() {
        assert!("off".parse::<Latency>().unwrap().is_off());
        assert_eq!("model".parse::<Latency>().unwrap(), Latency::MODEL);
        let l: Latency = "model, destroy-gi=2000".parse().unwrap();
        assert_eq!(l.destroy_gi_ms, 2000);
        assert_eq!(l.create_gi_ms, Latency::MODEL.create_gi_ms);
        let only: Latency = "create-gi=5".parse().unwrap();
        assert_eq!(only.of(DriverOp::CreateGi), Duration::from_millis(5));
        assert_eq!(only.of(DriverOp::Init), Duration::ZERO);
        assert_eq!(
            Latency::MODEL.to_string().parse::<Latency>().unwrap(),
            Latency::MODEL
        );
        for bad in [
            "",
            "fast",
            "create-gi",
            "make-gi=3",
            "create-gi=-1",
            "create-gi=999999999",
            "create-gi=1,model",
        ] {
            let e = bad.parse::<Latency>().unwrap_err().to_string();
            assert!(
                e.contains("bad latency setting") && !e.contains('\n'),
                "{bad}: {e}"
            );
        }
    }
}
