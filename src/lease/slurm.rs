//! The Slurm job step a lease can be held by ([`SlurmStep`]): parsing `JOB.STEP` as the SPANK plugin passes it and
//! printing it as people know it (`42.0`, `42.batch`); it must not ask Slurm anything (the engine's probe does).

use serde::{Deserialize, Serialize};

/// Slurm's reserved step ids (slurm.h, 22.05): the batch script, the interactive step of `salloc`, the extern step.
const BATCH: u32 = 0xffff_fffb;
const INTERACTIVE: u32 = 0xffff_fffa;
const EXTERN: u32 = 0xffff_fffc;

/// A job step: job id and step id (a number, or one of Slurm's named steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmStep {
    pub job: u32,
    /// Slurm's step id; the batch, interactive and extern steps use reserved values near u32::MAX.
    pub step: u32,
}

impl SlurmStep {
    /// The step's name after the dot, as `squeue --steps` and `scontrol` spell it.
    pub fn step_name(&self) -> String {
        match self.step {
            BATCH => "batch".into(),
            INTERACTIVE => "interactive".into(),
            EXTERN => "extern".into(),
            n => n.to_string(),
        }
    }

    /// Job id 0 or a step id Slurm never hands out is not a step; records carrying one are refused.
    pub fn valid(&self) -> bool {
        self.job > 0
            && (self.step < 0xffff_fff0 || matches!(self.step, BATCH | INTERACTIVE | EXTERN))
    }
}

impl std::fmt::Display for SlurmStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.job, self.step_name())
    }
}

impl std::str::FromStr for SlurmStep {
    type Err = String;

    /// `42.0`, `42.batch`, `42.interactive`, `42.extern`, or Slurm's raw numeric step id.
    fn from_str(s: &str) -> Result<SlurmStep, String> {
        let bad = || {
            format!("bad Slurm step {s:?}: expected JOB.STEP, e.g. 42.0 or 42.batch (job id, then step id or batch)")
        };
        let (job, step) = s.split_once('.').ok_or_else(bad)?;
        let job: u32 = job.parse().map_err(|_| bad())?;
        let step = match step {
            "batch" => BATCH,
            "interactive" => INTERACTIVE,
            "extern" => EXTERN,
            n => n.parse().map_err(|_| bad())?,
        };
        let st = SlurmStep { job, step };
        if st.valid() {
            Ok(st)
        } else {
            Err(bad())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_and_print_as_slurm_spells_them() {
        for s in ["42.0", "42.17", "7.batch", "7.interactive", "7.extern"] {
            assert_eq!(s.parse::<SlurmStep>().unwrap().to_string(), s);
        }
        assert_eq!(
            "9.4294967291".parse::<SlurmStep>().unwrap().to_string(),
            "9.batch"
        );
        for bad in [
            "",
            "42",
            "0.0",
            "x.0",
            "42.x",
            "42.-1",
            "42.4294967295",
            "42.0.1",
            " 42.0",
        ] {
            assert!(bad.parse::<SlurmStep>().is_err(), "{bad:?} must be refused");
        }
    }
}
