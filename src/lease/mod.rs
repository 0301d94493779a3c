//! Lease records and holder liveness: [`Lease`], [`Holder`], `Intent`, `CreatedRecord`, `Ticket`, the field
//! checks every record passes when read, and whether a recorded process still runs; it must not call NVML.
//!
//! The records are plain data: the pure planner (`policy`) reads leases without touching the state dir. Where
//! they are kept, under lock, is `registry`: the on-disk `Registry` of one state dir (docs/leases.md).
//!
//! Every reader refuses a malformed record with an error naming the file, instead of guessing: a lease
//! registry that cannot be read must stop allocation, or the same instance could be handed out twice.

pub mod counters;
pub mod ledger;
mod name;
mod registry;
mod slurm;

pub use name::{LeaseName, NameError};
pub(crate) use registry::Registry;
pub use slurm::SlurmStep;

use crate::gpu::Placement;
use crate::profile::CiProfileName;
use crate::statedir::StateDirError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// A lease id (small integers, printed as `lease 7`).
pub type LeaseId = u64;

/// Who holds a lease; gc releases leases whose holder is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Holder {
    /// A process: alive while `pid` exists with the same start time (guards against pid reuse).
    Process { pid: u32, start_time: u64 },
    /// A container: alive while its engine still knows it (and, when known, its init process lives).
    Container {
        id: String,
        /// `docker`, `podman`, `runc`, `containerd`, `cri-o` …
        engine: String,
        /// Init pid and its start time, when the engine told us (prestart state JSON).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<(u32, u64)>,
    },
    /// The docker launcher until docker writes the container's id: alive while the launcher runs, while the docker
    /// client it started runs, or while the engine holds a live container labelled with this launch.
    Launcher {
        pid: u32,
        start_time: u64,
        /// The docker client (pid, start time), recorded before it may reach the daemon; `None` until it starts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<(u32, u64)>,
        /// The docker endpoint, as for container holders (`docker|host=…|cli=…`).
        engine: String,
        /// The container's `migrun.launch` label, which tells this launch's container from any other.
        launch: String,
    },
    /// A Slurm job step (the SPANK plugin's `migrun alloc --slurm-step`, root only): alive while the slurmstepd
    /// that ran `migrun alloc` (pid and start time recorded by migrun itself) runs, or while Slurm reports the step.
    Slurm {
        #[serde(flatten)]
        step: SlurmStep,
        pid: u32,
        start_time: u64,
    },
    /// `migrun alloc` without `--holder-pid`: released only by `migrun release`.
    Manual,
}

impl Holder {
    /// A process holder for `pid`, with its start time read now from `/proc`.
    pub(crate) fn process(pid: u32) -> Result<Holder, LeaseError> {
        let start_time = process_start_time(pid).ok_or(LeaseError::NoSuchProcess { pid })?;
        Ok(Holder::Process { pid, start_time })
    }

    /// A Slurm step holder whose step daemon is `pid` (the process that ran `migrun alloc`), start time read now.
    pub(crate) fn slurm(step: SlurmStep, pid: u32) -> Result<Holder, LeaseError> {
        let start_time = process_start_time(pid).ok_or(LeaseError::NoSuchProcess { pid })?;
        Ok(Holder::Slurm {
            step,
            pid,
            start_time,
        })
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Process { pid, .. } => write!(f, "pid {pid}"),
            Holder::Container { id, engine, .. } => {
                let short: String = id.chars().take(12).collect();
                // The engine string may carry the endpoint (`docker|host=…`); people need only the engine.
                let family = engine.split('|').next().unwrap_or(engine);
                write!(f, "{family} container {short}")
            }
            Holder::Launcher { pid, .. } => write!(f, "launcher pid {pid}"),
            Holder::Slurm { step, .. } => write!(f, "slurm job {step}"),
            Holder::Manual => f.write_str("manual"),
        }
    }
}

/// The life stage of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseState {
    Active,
    /// Released, but the instance is not destroyed yet (busy, or a release was interrupted); gc finishes destroying it.
    Draining,
}

/// One lease record (`leases/<id>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub id: LeaseId,
    /// The name given at `alloc --name`: a CDI device name and a release target, unique among active
    /// leases (checked under the lock). Absent in records written before names existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<LeaseName>,
    pub holder: Holder,
    /// The uid the lease is charged to (SUDO_UID when run under sudo).
    pub uid: u32,
    pub gpu_index: u32,
    pub gpu_uuid: String,
    pub gi: u32,
    pub ci: u32,
    pub profile_id: u32,
    /// Short profile name, for people (`3g.40gb`).
    pub profile: String,
    pub placement: Placement,
    pub mig_uuid: String,
    /// Set when the lease holds one compute instance (`ci`, of this CI profile) of a GPU instance migrun
    /// created for sharing (issue 22, docs/leases.md "Compute-instance slices"); `profile_id`, `profile`
    /// and `placement` are then the GPU instance's. `None`: the lease holds the whole GPU instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_profile: Option<CiProfileName>,
    /// True when migrun created the instance (only then may migrun destroy it).
    pub created: bool,
    /// Keep the instance when the lease ends, instead of destroying it.
    pub keep: bool,
    pub state: LeaseState,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    pub updated_at: u64,
}

/// An allocation in flight (`intents/<lease>.json`): written before the GPU instance is created, so a
/// crash between "created" and "recorded" leaves a trail gc can follow back to the instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Intent {
    /// The lease this allocation will become.
    pub lease: LeaseId,
    pub gpu_index: u32,
    pub gpu_uuid: String,
    pub profile_id: u32,
    pub profile: String,
    pub placement: Placement,
    /// The GI id, journaled as soon as the driver returned it.
    pub gi: Option<u32>,
    /// A compute instance in a sharing GPU instance (issue 22): what is created in the GI above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci: Option<CiIntent>,
    pub pid: u32,
    pub created_at: u64,
    /// The start time of `pid` when the driver work runs outside the lock (issue 23): while that process lives,
    /// the intent is a reservation in flight that gc leaves alone and planners count as taken. Absent in
    /// intents written wholly under the lock (and in those of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
    /// What the lease will be (a reservation's uid, name and holder count against the limits and the names of
    /// later requests while it is in flight). Absent in a destroy's claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<LeaseName>,
    /// A destroy outside the lock (a release's claim on its draining lease), not a create.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub destroy: bool,
}

impl Intent {
    /// The process doing this intent's driver work outside the lock still runs.
    pub(crate) fn in_flight(&self) -> bool {
        self.start_time
            .is_some_and(|st| process_alive(self.pid, st))
    }
}

/// The compute-instance part of an [`Intent`]: journaled before the compute instance is created, its id
/// as soon as the driver returned it, so gc can destroy what a crashed allocation left (docs/leases.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CiIntent {
    /// This allocation created the GPU instance too (then gc destroys it again once it holds nothing).
    pub new_gi: bool,
    /// The CI profile ID and start (compute slices of the GI), once chosen.
    #[serde(default)]
    pub profile_id: Option<u32>,
    #[serde(default)]
    pub start: Option<u32>,
    /// The CI id, journaled as soon as the driver returned it.
    #[serde(default)]
    pub id: Option<u32>,
}

/// An instance migrun created and has not destroyed (`created/<gpu-uuid>-<gi>.json`). It outlives
/// the lease when the instance is kept warm, so teardown and reuse can tell migrun's instances from an
/// admin's. Before any destroy it is cross-checked against the device (profile, placement, MIG UUID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreatedRecord {
    pub gpu_index: u32,
    pub gpu_uuid: String,
    pub gi: u32,
    pub profile_id: u32,
    pub profile: String,
    pub placement: Placement,
    /// The MIG UUID of its compute instance; empty for a sharing GPU instance, whose compute instances
    /// come and go with their leases (each lease names its own).
    pub mig_uuid: String,
    /// Created for compute-instance sharing (issue 22): only such a GPU instance takes compute-instance
    /// leases, and it is never handed out whole.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
    pub created_at: u64,
    /// When its last lease ended and it was kept (`release = "keep"`); `keep_idle_s` counts from here (from
    /// `created_at` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<u64>,
}

impl CreatedRecord {
    fn file_name(gpu_uuid: &str, gi: u32) -> String {
        format!("{gpu_uuid}-{gi}.json")
    }
}

/// A place in the wait queue (`queue/<ticket>.json`); only the lowest live ticket may allocate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Ticket {
    pub ticket: u64,
    /// The waiting process; a ticket whose process is gone is skipped and removed.
    pub pid: u32,
    pub start_time: u64,
    /// What it waits for, for `migrun status` (`3g.40gb`, `--min-mem 20g`).
    pub want: String,
    pub uid: u32,
    pub created_at: u64,
    /// When the waiter gives up (unix seconds); `None` waits as long as it takes. A ticket past its
    /// deadline holds nothing, even if its process hangs on.
    #[serde(default)]
    pub deadline: Option<u64>,
    /// The GPU this waiter holds back for itself (`policy::plan::reservation`); others may use the rest.
    #[serde(default)]
    pub reserved_gpu: Option<u32>,
}

/// A GPU UUID as NVML prints it (`GPU-` then hex digits and dashes). Record fields that become part of a
/// file name (`created/<gpu-uuid>-<gi>.json`) must pass this, or a crafted `../../x` would point migrun's
/// removes anywhere on the host.
pub(crate) fn valid_gpu_uuid(s: &str) -> bool {
    s.len() <= 96
        && s.strip_prefix("GPU-").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        })
}

/// A MIG device UUID: `MIG-<hex and dashes>`, or the older `MIG-GPU-<uuid>/<gi>/<ci>` form.
pub(crate) fn valid_mig_uuid(s: &str) -> bool {
    s.len() <= 128
        && s.strip_prefix("MIG-").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'/')
        })
}

/// Free text a record carries for people (a profile name, a container id): printed in messages, so no
/// control characters (a crafted record must not rewrite the terminal) and of sane length.
fn valid_text(s: &str, max: usize) -> bool {
    s.len() <= max && !s.chars().any(char::is_control)
}

/// Field checks every record passes when read, beyond its JSON shape.
trait Fields {
    /// `Err(why)` names the first bad field.
    fn check(&self) -> Result<(), String>;
}

fn check_gpu_uuid(v: &str) -> Result<(), String> {
    if valid_gpu_uuid(v) {
        Ok(())
    } else {
        Err(format!(
            "gpu_uuid {v:?} is not a GPU UUID (GPU- and hex digits)"
        ))
    }
}

fn check_text(field: &str, v: &str, max: usize) -> Result<(), String> {
    if valid_text(v, max) {
        Ok(())
    } else {
        Err(format!(
            "{field} {:?} has control characters or is longer than {max} bytes",
            v.chars().take(40).collect::<String>()
        ))
    }
}

fn check_mig_uuid(v: &str) -> Result<(), String> {
    if valid_mig_uuid(v) {
        Ok(())
    } else {
        Err(format!("mig_uuid {v:?} is not a MIG UUID"))
    }
}

impl Fields for Lease {
    fn check(&self) -> Result<(), String> {
        check_gpu_uuid(&self.gpu_uuid)?;
        check_mig_uuid(&self.mig_uuid)?;
        check_text("profile", &self.profile, 64)?;
        if let Some(n) = &self.name {
            LeaseName::check(n.as_str()).map_err(|e| format!("name: {e}"))?;
        }
        if let Holder::Container { id, engine, .. } = &self.holder {
            check_text("holder id", id, 256)?;
            check_text("holder engine", engine, 4096)?;
        }
        if let Holder::Slurm { step, .. } = &self.holder {
            if !step.valid() {
                return Err(format!("holder {step:?} is not a Slurm job step"));
            }
        }
        Ok(())
    }
}

impl Fields for Intent {
    fn check(&self) -> Result<(), String> {
        check_gpu_uuid(&self.gpu_uuid)?;
        if let Some(n) = &self.name {
            LeaseName::check(n.as_str()).map_err(|e| format!("name: {e}"))?;
        }
        check_text("profile", &self.profile, 64)
    }
}

impl Fields for CreatedRecord {
    fn check(&self) -> Result<(), String> {
        check_gpu_uuid(&self.gpu_uuid)?;
        if !(self.shared && self.mig_uuid.is_empty()) {
            check_mig_uuid(&self.mig_uuid)?;
        }
        check_text("profile", &self.profile, 64)
    }
}

impl Fields for Ticket {
    fn check(&self) -> Result<(), String> {
        check_text("want", &self.want, 256)
    }
}

/// Errors of the lease registry.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    #[error("{path} is not a valid migrun record ({why}); nothing was changed. Inspect it: if its instance is gone, remove the file and run `migrun gc`")]
    Malformed { path: PathBuf, why: String },
    /// A record whose JSON is fine but whose fields cannot be migrun's (a path in a UUID, control characters).
    /// Listings skip it (it names no GPU, so it stands for no instance); a lookup by its id fails with this.
    #[error(
        "{path} is not a record migrun wrote ({why}); migrun ignores it. Inspect and remove it"
    )]
    BadField { path: PathBuf, why: String },
    #[error("no lease {target}; `migrun status` lists the leases (by lease id, name or MIG UUID)")]
    Unknown { target: String },
    #[error(transparent)]
    BadName(#[from] NameError),
    /// `alloc --name` with a name an active lease already has.
    #[error("lease name \"{name}\" is taken by lease {holder} ({holder_desc}); release it (`migrun release {name}`) or pick another --name")]
    NameTaken {
        name: LeaseName,
        holder: LeaseId,
        holder_desc: String,
    },
    #[error("process {pid} does not exist; --holder-pid must name a running process")]
    NoSuchProcess { pid: u32 },
}

/// Exit codes for this module's errors (see `exit`).
pub(crate) fn exit_code_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    use crate::exit::ExitCodeOf;
    e.downcast_ref::<LeaseError>().map(|e| match e {
        LeaseError::StateDir(s) => s.exit_code(),
        LeaseError::Malformed { .. }
        | LeaseError::BadField { .. }
        | LeaseError::Unknown { .. }
        | LeaseError::BadName(_)
        | LeaseError::NameTaken { .. } => crate::exit::USAGE,
        LeaseError::NoSuchProcess { .. } => crate::exit::USAGE,
    })
}

/// Environment variable that sets the clock (Unix seconds) in debug builds, so a test can check the usage
/// ledger's slice-hours to the second. A release build never reads it.
pub const TEST_NOW_ENV: &str = "MIGRUN_TEST_NOW";

/// Seconds since the Unix epoch (in a debug build, [`TEST_NOW_ENV`] when set).
pub(crate) fn now() -> u64 {
    if cfg!(debug_assertions) {
        if let Some(t) = std::env::var(TEST_NOW_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
        {
            return t;
        }
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot), or `None` when the process
/// is gone or a zombie: a zombie's work is over even before its parent reaps it.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// Parse a `/proc/<pid>/stat` line. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?; // field 3
    if state == "Z" || state == "X" {
        return None;
    }
    // Fields 4..=21 are skipped; field 22 is the start time.
    fields.nth(18)?.parse().ok()
}

/// True while `pid` runs and is the same process (same start time) as when recorded.
pub(crate) fn process_alive(pid: u32, start_time: u64) -> bool {
    process_start_time(pid) == Some(start_time)
}

impl Ticket {
    /// The waiting process still runs.
    pub(crate) fn alive(&self) -> bool {
        process_alive(self.pid, self.start_time)
    }

    /// Does this ticket still hold its place? Its process runs and is not stopped (a waiter
    /// stopped with ^Z or SIGSTOP looks at nothing and must not hold GPUs back forever), and its
    /// deadline, if any, has not passed.
    pub(crate) fn holds(&self, now: u64) -> bool {
        self.deadline.is_none_or(|d| now < d) && self.alive() && !process_stopped(self.pid)
    }
}

/// Is `pid` stopped (state `T` or `t` in /proc/PID/stat)? Unknown counts as not stopped.
pub(crate) fn process_stopped(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may contain anything.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state == "T" || state == "t")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let line = "4242 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 19 20";
        assert_eq!(parse_stat(line), Some(987654));
        let zombie = "4242 (x) Z 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 19";
        assert_eq!(parse_stat(zombie), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_alive_and_a_changed_start_time_is_not() {
        let me = std::process::id();
        let st = process_start_time(me).expect("own start time");
        assert!(process_alive(me, st));
        assert!(!process_alive(me, st + 1), "pid reuse must be detected");
        assert!(matches!(
            Holder::process(u32::MAX - 1),
            Err(LeaseError::NoSuchProcess { .. })
        ));
    }
}
