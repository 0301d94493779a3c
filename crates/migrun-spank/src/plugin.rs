//! The SPANK callbacks: register `--mig*` in every context, check them where the user typed them (srun, sbatch,
//! salloc), allocate through the `migrun` binary in slurmstepd before the tasks start, fail the tasks with one line
//! when there is no slice, release at step exit. It must not decide placement or touch migrun's state itself.
//!
//! Why the binary and not the library: migrun's state dir, its lock and its root-only checks then live in one
//! program, the one admins already run and gc already trusts; slurmstepd loads only this small object (no NVML, no
//! engine code, no threads), and a migrun upgrade needs no plugin rebuild (docs/slurm.md).

use crate::request::{self, Granted, Request};
use slurm_spank::{spank_log, Context, LogLevel, SpankHandle, SpankOption};
use std::error::Error;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the Debian package puts migrun; plugstack.conf's `migrun=PATH` overrides it.
const DEFAULT_MIGRUN: &str = "/usr/bin/migrun";

/// Headroom over the user's wait before a `migrun alloc` that does not return is killed (a hung GPU driver must
/// not hang slurmstepd forever).
const ALLOC_GRACE: Duration = Duration::from_secs(120);

/// How long `run` polls migrun every millisecond before it slows down (a `--mig-wait` may last minutes).
const POLL_FINE: Duration = Duration::from_millis(500);

/// The plugin's state in one slurmstepd (one job step on one node).
#[derive(Default)]
pub struct MigrunSpank {
    migrun: Option<PathBuf>,
    default_wait: Duration,
    /// The lease this step holds on this node, released at exit.
    granted: Option<Granted>,
    /// Why this step has no slice though it asked for one: the line every task prints before failing.
    refused: Option<String>,
    /// Tasks of this step on this node that have exited so far.
    exited: u32,
}

impl MigrunSpank {
    /// Read plugstack.conf's arguments: `migrun=PATH`, `wait=SECONDS` (the default `--mig-wait`).
    fn configure(&mut self, spank: &SpankHandle) -> Result<(), Box<dyn Error>> {
        for arg in spank.plugin_argv()? {
            match arg.split_once('=') {
                Some(("migrun", p)) if p.starts_with('/') => self.migrun = Some(PathBuf::from(p)),
                Some(("wait", s)) => {
                    self.default_wait = Duration::from_secs(s.parse().map_err(|_| {
                        format!("plugstack.conf: migrun plugin argument {arg:?}: wait= takes seconds, e.g. wait=60")
                    })?)
                }
                _ => {
                    return Err(format!(
                        "plugstack.conf: unknown migrun plugin argument {arg:?}; it takes migrun=/ABSOLUTE/PATH and wait=SECONDS"
                    )
                    .into())
                }
            }
        }
        Ok(())
    }

    fn migrun(&self) -> PathBuf {
        self.migrun
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_MIGRUN))
    }

    /// What the step asked for, from the options Slurm collected.
    fn request(&self, spank: &SpankHandle) -> Result<Option<Request>, String> {
        let get = |name: &str| spank.get_option_value_lossy(name).map(|v| v.into_owned());
        let (p, m, w) = (
            get(request::OPT_PROFILE),
            get(request::OPT_MIN_MEM),
            get(request::OPT_WAIT),
        );
        request::parse(p.as_deref(), m.as_deref(), w.as_deref(), self.default_wait)
    }

    /// In slurmstepd, before any task: allocate and put the slice into the job's environment, or remember why not.
    fn allocate(&mut self, spank: &SpankHandle, req: &Request) -> Result<(), Box<dyn Error>> {
        let Some(step) = request::step_spec(spank.job_id()?, spank.job_stepid()?) else {
            return Ok(());
        };
        let job = spank.job_id()?;
        if let Some(g) = self.batch_slice(spank, job, &step, req) {
            for (k, v) in g.env() {
                spank.setenv(k, v, true)?;
            }
            // Not ours to release: the batch step holds it and gives it back when the job script ends.
            return Ok(());
        }
        let args = request::alloc_args(req, &step, spank.job_uid()?);
        match run(&self.migrun(), &args, req.wait + ALLOC_GRACE) {
            Ok(out) if out.ok => match request::granted(&out.stdout) {
                Ok(g) => {
                    for (k, v) in g.env() {
                        spank.setenv(k, v, true)?;
                    }
                    spank_log(
                        LogLevel::Verbose,
                        &format!(
                            "migrun: step {step}: lease {} = {} {}",
                            g.lease, g.profile, g.mig_uuid
                        ),
                    );
                    self.granted = Some(g);
                }
                Err(e) => {
                    // migrun succeeded but its answer is unreadable: the lease exists; gc ends it with this step.
                    self.refused = Some(format!("migrun: {e}"));
                }
            },
            Ok(out) => {
                spank_log(
                    LogLevel::Info,
                    &format!(
                        "migrun: step {step}: migrun alloc failed ({}): {}",
                        out.status,
                        out.stderr.trim()
                    ),
                );
                self.refused = Some(request::refusal_line(&out.stderr, &out.status));
            }
            Err(e) => self.refused = Some(format!("migrun: {e}")),
        }
        Ok(())
    }
}

impl MigrunSpank {
    /// A step of an `sbatch --mig` job on the batch node shares the batch step's slice (`srun` in the script inherits
    /// the option). Only when the job's environment hints at a lease (MIGRUN_LEASE) is migrun asked, so a step of a
    /// job without one pays nothing extra.
    fn batch_slice(
        &self,
        spank: &SpankHandle,
        job: u32,
        step: &str,
        req: &Request,
    ) -> Option<Granted> {
        if step.ends_with(".batch") {
            return None;
        }
        let hint: u64 = spank.getenv("MIGRUN_LEASE").ok().flatten()?.parse().ok()?;
        let out = run(
            &self.migrun(),
            &["status".to_string(), "--json".to_string()],
            ALLOC_GRACE,
        )
        .ok()?;
        let g = request::batch_slice(&out.stdout, hint, job, &req.want)?;
        spank_log(
            LogLevel::Verbose,
            &format!(
                "migrun: step {step} shares the batch step's lease {} ({})",
                g.lease, g.mig_uuid
            ),
        );
        Some(g)
    }
}

/// What a finished migrun run said.
struct Output {
    ok: bool,
    status: String,
    stdout: String,
    stderr: String,
}

/// Run migrun with slurmstepd's own environment (never the job's), killing it after `limit`.
fn run(migrun: &PathBuf, args: &[String], limit: Duration) -> Result<Output, String> {
    let mut child = Command::new(migrun)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot run {} ({e}); the admin sets migrun=PATH in plugstack.conf",
                migrun.display()
            )
        })?;
    // Read both pipes on threads so a chatty migrun cannot block on a full pipe while we wait for it.
    let mut so = child.stdout.take();
    let mut se = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = so.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = se.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            // Poll finely at first: migrun usually answers within a few milliseconds, and every step waits on it.
            Ok(None) if start.elapsed() < limit => {
                std::thread::sleep(if start.elapsed() < POLL_FINE {
                    Duration::from_millis(1)
                } else {
                    Duration::from_millis(20)
                })
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                // The pipes close with the killed process: join the readers, so no thread of ours outlives this call.
                let _ = (out_t.join(), err_t.join());
                return Err(format!(
                    "{} did not answer within {}s; see `migrun status` on the node",
                    migrun.display(),
                    limit.as_secs()
                ));
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = (out_t.join(), err_t.join());
                return Err(format!("waiting for {} failed: {e}", migrun.display()));
            }
        }
    };
    Ok(Output {
        ok: status.success(),
        status: status.to_string(),
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

impl MigrunSpank {
    pub fn init(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        self.configure(spank)?;
        // Registered in every context (srun, sbatch, salloc, slurmstepd), as spank(7) requires.
        spank.register_option(
            SpankOption::new(request::OPT_PROFILE)
                .takes_value("PROFILE")
                .usage("migrun: give each task of this step a MIG slice of this profile (e.g. 1g.10gb, 3g.40gb)"),
        )?;
        spank.register_option(
            SpankOption::new(request::OPT_MIN_MEM)
                .takes_value("SIZE")
                .usage("migrun: the smallest MIG slice with at least this much memory on the node (e.g. 20g)"),
        )?;
        spank.register_option(
            SpankOption::new(request::OPT_WAIT)
                .takes_value("SECONDS")
                .usage("migrun: wait up to this long for room on the node before failing the step"),
        )?;
        Ok(())
    }

    pub fn init_post_opt(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        let req = match self.request(spank) {
            Ok(Some(r)) => r,
            // No --mig: nothing to do, in any context.
            Ok(None) => return Ok(()),
            // srun/sbatch/salloc: refuse the submission itself; in slurmstepd the tasks fail with the line.
            Err(e) if spank.context()? == Context::Remote => {
                self.refused = Some(format!("migrun: {e}"));
                return Ok(());
            }
            Err(e) => return Err(format!("migrun: {e}").into()),
        };
        if spank.context()? == Context::Remote {
            self.allocate(spank, &req)?;
        }
        Ok(())
    }

    /// In each task, before exec: a step that asked for a slice and got none ends here. The error goes through
    /// Slurm's logger, which in a task writes to the user's terminal as `slurmstepd-NODE: error: migrun: …` (the
    /// node named by Slurm); only the node's first task carries migrun's reason, so a many-task step prints it
    /// once per node. Failing the task, not `init_post_opt`, is what makes srun exit non-zero with the line on the
    /// user's terminal (a failing remote `init_post_opt` makes srun print "launch failed" and exit 0); neither
    /// path drains the node (docs/slurm.md).
    pub fn task_init(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        let Some(line) = &self.refused else {
            return Ok(());
        };
        if spank.task_id().unwrap_or(0) == 0 {
            Err(line.clone().into())
        } else {
            Err("migrun: no MIG slice for this step (the node's first task says why)".into())
        }
    }

    /// A task of the step ended. When the node's last one has, release now: slurmstepd reports the exits to srun
    /// after this callback, so by the time `srun` returns the slice is free for the next step.
    pub fn task_exit(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        self.exited += 1;
        if self.exited >= spank.job_local_task_count().unwrap_or(1) {
            self.release();
        }
        Ok(())
    }

    /// slurmstepd is about to exit (after the tasks, or without them: cancelled, time limit, launch failure): give
    /// back whatever `task_exit` did not.
    pub fn exit(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        if spank.context()? == Context::Remote {
            self.release();
        }
        Ok(())
    }

    /// `migrun release` of this step's lease, once. A failure is logged, not returned: the step is over either way,
    /// and `migrun gc` releases a lease whose recorded slurmstepd is gone and whose step Slurm no longer lists.
    fn release(&mut self) {
        let Some(g) = self.granted.take() else {
            return;
        };
        let args = ["release".to_string(), g.lease.to_string()];
        let why = match run(&self.migrun(), &args, ALLOC_GRACE) {
            Ok(out) if out.ok => return,
            Ok(out) => format!("{}: {}", out.status, out.stderr.trim()),
            Err(e) => e,
        };
        spank_log(
            LogLevel::Error,
            &format!(
                "migrun: releasing lease {} ({}) failed ({why}); `migrun gc` will release it",
                g.lease, g.mig_uuid
            ),
        );
    }
}
