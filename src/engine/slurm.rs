//! Whether Slurm still lists a job step, for gc's liveness check of Slurm holders (`squeue --steps`); it must not
//! allocate, release or trust anything the job itself wrote.
//!
//! Asked only when the slurmstepd migrun recorded is gone, so a live step costs no Slurm RPC. Any doubt (no squeue,
//! an untrusted squeue, a controller that does not answer in time) answers "unknown", and gc then trusts the
//! recorded process alone.

use crate::lease::SlurmStep;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian and source installs put Slurm's client commands; PATH is not consulted (root acts on it).
const SQUEUE: &[&str] = &["/usr/bin/squeue", "/usr/local/bin/squeue"];

/// How long gc waits for slurmctld before it calls the answer unknown.
const TIMEOUT: Duration = Duration::from_secs(10);

/// `Some(true)` Slurm lists the step, `Some(false)` it does not (or no longer knows the job), `None` cannot tell.
pub fn step_alive(step: &SlurmStep) -> Option<bool> {
    let squeue = SQUEUE.iter().map(Path::new).find(|p| p.is_file())?;
    if let Err(why) = crate::caller::trusted_program(squeue) {
        tracing::warn!(squeue = %squeue.display(), why, "not asking an untrusted squeue");
        return None;
    }
    let mut child = Command::new(squeue)
        .args(["--noheader", "--format=%i"])
        .arg(format!("--steps={step}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < TIMEOUT => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let mut out = String::new();
    let mut err = String::new();
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    child.stderr.take()?.read_to_string(&mut err).ok()?;
    answer(status.success(), &out, &err, step)
}

/// Read squeue's answer: the step's own line means alive; success without it, or "Invalid job id", means gone.
fn answer(success: bool, out: &str, err: &str, step: &SlurmStep) -> Option<bool> {
    let want = step.to_string();
    if success {
        return Some(out.lines().any(|l| l.trim() == want));
    }
    // The controller forgot the job (MinJobAge passed): the step is certainly over.
    err.contains("Invalid job id").then_some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_answers_are_read_strictly() {
        let s: SlurmStep = "42.0".parse().unwrap();
        assert_eq!(answer(true, "42.0\n", "", &s), Some(true));
        assert_eq!(answer(true, "42.1\n142.0\n", "", &s), Some(false));
        assert_eq!(answer(true, "", "", &s), Some(false));
        let gone = "slurm_load_jobs error: Invalid job id specified\n";
        assert_eq!(answer(false, "", gone, &s), Some(false));
        assert_eq!(
            answer(false, "", "Unable to contact slurm controller", &s),
            None
        );
    }
}
