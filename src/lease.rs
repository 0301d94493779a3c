//! The lease registry in the state dir: lock, intent journal, atomic lease records, created-instance records, the wait queue and holder liveness; it must not call NVML.
//!
//! Layout (all files 0600 inside the 0700 state dir, each written atomically; see docs/leases.md):
//! - `alloc.lock`: one lock serialises every allocation, release and gc;
//! - `next-id`: the next lease id;
//! - `leases/<id>.json`: one [`Lease`] per lease;
//! - `intents/<id>.json`: an [`Intent`] journaled before a GPU instance is created, removed once its lease is written;
//! - `created/<gpu-uuid>-<gi>.json`: a [`CreatedRecord`] for every instance migrun created and has not destroyed
//!   (leased or kept warm), so migrun only ever destroys what it made;
//! - `queue/<ticket>.json` and `next-ticket`: the first-come-first-served wait queue ([`Ticket`]);
//! - `generation`: bumped whenever room may have appeared, so waiters know when to look again.
//!
//! Every reader refuses a malformed record with an error naming the file, instead of guessing: a lease
//! registry that cannot be read must stop allocation, or the same instance could be handed out twice.

use crate::gpu::Placement;
use crate::statedir::{self, Lock, StateDir, StateDirError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
    /// `migrun alloc` without `--holder-pid`: released only by `migrun release`.
    Manual,
}

impl Holder {
    /// A process holder for `pid`, with its start time read now from `/proc`.
    pub fn process(pid: u32) -> Result<Holder, LeaseError> {
        let start_time = process_start_time(pid).ok_or(LeaseError::NoSuchProcess { pid })?;
        Ok(Holder::Process { pid, start_time })
    }

    /// The calling process as a holder.
    pub fn this_process() -> Result<Holder, LeaseError> {
        Holder::process(std::process::id())
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
pub struct Intent {
    /// The lease this allocation will become.
    pub lease: LeaseId,
    pub gpu_index: u32,
    pub gpu_uuid: String,
    pub profile_id: u32,
    pub profile: String,
    pub placement: Placement,
    /// The GI id, journaled as soon as the driver returned it.
    pub gi: Option<u32>,
    pub pid: u32,
    pub created_at: u64,
}

/// An instance migrun created and has not destroyed (`created/<gpu-uuid>-<gi>.json`). It outlives
/// the lease when the instance is kept warm, so teardown and reuse can tell migrun's instances from an
/// admin's. Before any destroy it is cross-checked against the device (profile, placement, MIG UUID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatedRecord {
    pub gpu_index: u32,
    pub gpu_uuid: String,
    pub gi: u32,
    pub profile_id: u32,
    pub profile: String,
    pub placement: Placement,
    pub mig_uuid: String,
    pub created_at: u64,
}

impl CreatedRecord {
    fn file_name(gpu_uuid: &str, gi: u32) -> String {
        format!("{gpu_uuid}-{gi}.json")
    }
}

/// A place in the wait queue (`queue/<ticket>.json`); only the lowest live ticket may allocate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ticket {
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
    /// The GPU this waiter holds back for itself (`plan::reservation`); others may use the rest.
    #[serde(default)]
    pub reserved_gpu: Option<u32>,
}

/// A GPU UUID as NVML prints it (`GPU-` then hex digits and dashes). Record fields that become part of a
/// file name (`created/<gpu-uuid>-<gi>.json`) must pass this, or a crafted `../../x` would point migrun's
/// removes anywhere on the host.
pub fn valid_gpu_uuid(s: &str) -> bool {
    s.len() <= 96
        && s.strip_prefix("GPU-").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        })
}

/// A MIG device UUID: `MIG-<hex and dashes>`, or the older `MIG-GPU-<uuid>/<gi>/<ci>` form.
pub fn valid_mig_uuid(s: &str) -> bool {
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
        if let Holder::Container { id, engine, .. } = &self.holder {
            check_text("holder id", id, 256)?;
            check_text("holder engine", engine, 4096)?;
        }
        Ok(())
    }
}

impl Fields for Intent {
    fn check(&self) -> Result<(), String> {
        check_gpu_uuid(&self.gpu_uuid)?;
        check_text("profile", &self.profile, 64)
    }
}

impl Fields for CreatedRecord {
    fn check(&self) -> Result<(), String> {
        check_gpu_uuid(&self.gpu_uuid)?;
        check_mig_uuid(&self.mig_uuid)?;
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
    #[error("no lease {target}; `migrun status` lists the leases (by lease id or MIG UUID)")]
    Unknown { target: String },
    #[error("process {pid} does not exist; --holder-pid must name a running process")]
    NoSuchProcess { pid: u32 },
}

/// Exit codes for this module's errors (see `exit`).
pub fn exit_code_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    use crate::exit::ExitCodeOf;
    e.downcast_ref::<LeaseError>().map(|e| match e {
        LeaseError::StateDir(s) => s.exit_code(),
        LeaseError::Malformed { .. } | LeaseError::BadField { .. } | LeaseError::Unknown { .. } => {
            crate::exit::USAGE
        }
        LeaseError::NoSuchProcess { .. } => crate::exit::USAGE,
    })
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot), or `None` when the process
/// is gone or a zombie: a zombie's work is over even before its parent reaps it.
pub fn process_start_time(pid: u32) -> Option<u64> {
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
pub fn process_alive(pid: u32, start_time: u64) -> bool {
    process_start_time(pid) == Some(start_time)
}

const LEASES: &str = "leases";
const INTENTS: &str = "intents";
const CREATED: &str = "created";
const QUEUE: &str = "queue";
const LOCK: &str = "alloc.lock";
const NEXT_ID: &str = "next-id";
const NEXT_TICKET: &str = "next-ticket";
const GENERATION: &str = "generation";

/// The registry of one state dir. Methods that change records expect the caller to hold [`Registry::lock`].
#[derive(Debug, Clone)]
pub struct Registry {
    dir: StateDir,
    /// Records listings skipped because a field cannot be migrun's ([`LeaseError::BadField`]), as messages
    /// for gc's report; shared by clones, drained by [`Registry::take_skipped`].
    skipped: Arc<Mutex<Vec<String>>>,
}

impl Registry {
    /// Open the registry, creating its sub-directories (0700) when missing.
    pub fn open(dir: &StateDir) -> Result<Registry, LeaseError> {
        for sub in [LEASES, INTENTS, CREATED, QUEUE] {
            dir.subdir(sub)?;
        }
        Ok(Registry {
            dir: dir.clone(),
            skipped: Arc::default(),
        })
    }

    /// What listings skipped since the last call (each once), for gc's report.
    pub fn take_skipped(&self) -> Vec<String> {
        let mut v = std::mem::take(&mut *self.skipped.lock().unwrap_or_else(|e| e.into_inner()));
        v.dedup();
        v
    }

    /// Skip a record a listing cannot use (say so in the log and in gc's report); other errors stand.
    fn skip_bad<T>(&self, r: Result<Option<T>, LeaseError>) -> Result<Option<T>, LeaseError> {
        match r {
            Err(e @ LeaseError::BadField { .. }) => {
                tracing::warn!("{e}");
                let mut s = self.skipped.lock().unwrap_or_else(|e| e.into_inner());
                let msg = e.to_string();
                if !s.contains(&msg) {
                    s.push(msg);
                }
                Ok(None)
            }
            other => other,
        }
    }

    pub fn dir(&self) -> &StateDir {
        &self.dir
    }

    /// Take the allocation lock (blocks until free; the kernel drops it if the holder dies).
    pub fn lock(&self) -> Result<Lock, LeaseError> {
        Ok(self.dir.lock(LOCK)?)
    }

    fn read_counter(&self, name: &str) -> Result<u64, LeaseError> {
        match self.dir.read(name)? {
            None => Ok(1),
            Some(b) => {
                let text = String::from_utf8_lossy(&b);
                text.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| LeaseError::Malformed {
                        path: self.dir.join(name),
                        why: format!("expected a positive number, found {:?}", text.trim()),
                    })
            }
        }
    }

    /// Take the next number of a counter file (under the lock).
    fn take_counter(&self, name: &str) -> Result<u64, LeaseError> {
        let n = self.read_counter(name)?;
        self.dir.write(name, format!("{}\n", n + 1).as_bytes())?;
        Ok(n)
    }

    /// Reserve a new lease id (under the lock). Ids are never reused within one state dir.
    pub fn next_lease_id(&self) -> Result<LeaseId, LeaseError> {
        self.take_counter(NEXT_ID)
    }

    fn rel(sub: &str, name: &str) -> String {
        format!("{sub}/{name}")
    }

    fn read_json<T: DeserializeOwned + Fields>(&self, rel: &str) -> Result<Option<T>, LeaseError> {
        let Some(bytes) = self.dir.read(rel)? else {
            return Ok(None);
        };
        let rec: T = serde_json::from_slice(&bytes).map_err(|e| LeaseError::Malformed {
            path: self.dir.join(rel),
            why: e.to_string(),
        })?;
        rec.check().map_err(|why| LeaseError::BadField {
            path: self.dir.join(rel),
            why,
        })?;
        Ok(Some(rec))
    }

    fn write_json<T: Serialize>(&self, rel: &str, value: &T) -> Result<(), LeaseError> {
        let mut json = serde_json::to_vec_pretty(value).expect("records serialise");
        json.push(b'\n');
        Ok(self.dir.write(rel, &json)?)
    }

    /// Remove a record; true when it existed.
    fn remove(&self, rel: &str) -> Result<bool, LeaseError> {
        Ok(statedir::remove(&self.dir.join(rel))?)
    }

    /// Remove a record whose end may have freed room (a lease, an intent, a created instance), and
    /// tell waiters so by bumping the generation.
    fn remove_and_bump(&self, rel: &str) -> Result<(), LeaseError> {
        if self.remove(rel)? {
            let next = self.generation()?.wrapping_add(1);
            self.dir.write(GENERATION, format!("{next}\n").as_bytes())?;
        }
        Ok(())
    }

    /// A counter bumped (under the lock) whenever a lease, intent or created record goes away, so a
    /// waiter re-plans right after a release instead of polling the GPU. Reading needs no lock.
    pub fn generation(&self) -> Result<u64, LeaseError> {
        Ok(match self.dir.read(GENERATION)? {
            None => 0,
            Some(b) => String::from_utf8_lossy(&b).trim().parse().unwrap_or(0),
        })
    }

    /// Names of the `*.json` records in a sub-directory, sorted (temp files of atomic writes are skipped).
    fn list(&self, sub: &str) -> Result<Vec<String>, LeaseError> {
        let mut names: Vec<String> = statedir::list_dir(&self.dir.join(sub))?
            .into_iter()
            .filter(|name| name.ends_with(".json") && !name.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Records named `<number>.json`, checked against the number inside, sorted by number.
    fn numbered<T: DeserializeOwned + Fields>(
        &self,
        sub: &str,
        id_of: impl Fn(&T) -> u64,
    ) -> Result<Vec<T>, LeaseError> {
        let mut out = Vec::new();
        for name in self.list(sub)? {
            let rel = Self::rel(sub, &name);
            let malformed = |why: String| LeaseError::Malformed {
                path: self.dir.join(&rel),
                why,
            };
            let stem = name.trim_end_matches(".json");
            let n: u64 = stem
                .parse()
                .map_err(|_| malformed("the file name is not <number>.json".into()))?;
            // None: removed between listing and reading, or skipped as not migrun's.
            let Some(rec) = self.skip_bad(self.read_json::<T>(&rel))? else {
                continue;
            };
            if id_of(&rec) != n {
                return Err(malformed(format!(
                    "it records number {}, but its file name says {n}",
                    id_of(&rec)
                )));
            }
            out.push((n, rec));
        }
        out.sort_by_key(|(n, _)| *n);
        Ok(out.into_iter().map(|(_, r)| r).collect())
    }

    // ---- leases ----

    /// Every lease, by id. A malformed lease file is an error naming it.
    pub fn leases(&self) -> Result<Vec<Lease>, LeaseError> {
        self.numbered(LEASES, |l: &Lease| l.id)
    }

    pub fn lease(&self, id: LeaseId) -> Result<Option<Lease>, LeaseError> {
        let rel = Self::rel(LEASES, &format!("{id}.json"));
        let lease: Option<Lease> = self.read_json(&rel)?;
        if let Some(l) = &lease {
            if l.id != id {
                return Err(LeaseError::Malformed {
                    path: self.dir.join(&rel),
                    why: format!("it records lease {}, not {id}", l.id),
                });
            }
        }
        Ok(lease)
    }

    pub fn write_lease(&self, lease: &Lease) -> Result<(), LeaseError> {
        self.write_json(&Self::rel(LEASES, &format!("{}.json", lease.id)), lease)
    }

    pub fn remove_lease(&self, id: LeaseId) -> Result<(), LeaseError> {
        self.remove_and_bump(&Self::rel(LEASES, &format!("{id}.json")))
    }

    // ---- intents ----

    pub fn intents(&self) -> Result<Vec<Intent>, LeaseError> {
        self.numbered(INTENTS, |i: &Intent| i.lease)
    }

    pub fn write_intent(&self, intent: &Intent) -> Result<(), LeaseError> {
        self.write_json(
            &Self::rel(INTENTS, &format!("{}.json", intent.lease)),
            intent,
        )
    }

    pub fn remove_intent(&self, lease: LeaseId) -> Result<(), LeaseError> {
        self.remove_and_bump(&Self::rel(INTENTS, &format!("{lease}.json")))
    }

    /// Drop the intent of an allocation that completed: its lease now stands for the instance and no room was
    /// freed, so waiters are not woken (one generation write less in every container start).
    pub fn complete_intent(&self, lease: LeaseId) -> Result<(), LeaseError> {
        self.remove(&Self::rel(INTENTS, &format!("{lease}.json")))?;
        Ok(())
    }

    // ---- created-instance records ----

    pub fn created(&self) -> Result<Vec<CreatedRecord>, LeaseError> {
        let mut out = Vec::new();
        for name in self.list(CREATED)? {
            let rel = Self::rel(CREATED, &name);
            let Some(rec) = self.skip_bad(self.read_json::<CreatedRecord>(&rel))? else {
                continue;
            };
            if CreatedRecord::file_name(&rec.gpu_uuid, rec.gi) != name {
                return Err(LeaseError::Malformed {
                    path: self.dir.join(&rel),
                    why: format!(
                        "it records GI {} on {}, which does not match its file name",
                        rec.gi, rec.gpu_uuid
                    ),
                });
            }
            out.push(rec);
        }
        Ok(out)
    }

    pub fn write_created(&self, rec: &CreatedRecord) -> Result<(), LeaseError> {
        let name = self.created_name(&rec.gpu_uuid, rec.gi)?;
        self.write_json(&Self::rel(CREATED, &name), rec)
    }

    pub fn remove_created(&self, gpu_uuid: &str, gi: u32) -> Result<(), LeaseError> {
        let name = self.created_name(gpu_uuid, gi)?;
        self.remove_and_bump(&Self::rel(CREATED, &name))
    }

    /// The file name of a created record; refuses a UUID that is not one, whoever passed it (records are
    /// checked when read; this keeps any other path from turning a UUID into a path).
    fn created_name(&self, gpu_uuid: &str, gi: u32) -> Result<String, LeaseError> {
        check_gpu_uuid(gpu_uuid).map_err(|why| LeaseError::BadField {
            path: self.dir.join(CREATED),
            why,
        })?;
        Ok(CreatedRecord::file_name(gpu_uuid, gi))
    }

    // ---- wait queue ----

    /// Take a ticket at the end of the queue (under the lock).
    pub fn take_ticket(
        &self,
        want: &str,
        uid: u32,
        deadline: Option<u64>,
        reserved_gpu: Option<u32>,
    ) -> Result<Ticket, LeaseError> {
        let pid = std::process::id();
        let ticket = Ticket {
            ticket: self.take_counter(NEXT_TICKET)?,
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
            want: want.to_string(),
            uid,
            created_at: now(),
            deadline,
            reserved_gpu,
        };
        self.write_ticket(&ticket)?;
        Ok(ticket)
    }

    /// Write (or rewrite, when its reservation moves) a ticket; the caller holds the lock.
    pub fn write_ticket(&self, ticket: &Ticket) -> Result<(), LeaseError> {
        self.write_json(
            &Self::rel(QUEUE, &format!("{}.json", ticket.ticket)),
            ticket,
        )
    }

    /// Every ticket in queue order, live or not.
    pub fn tickets(&self) -> Result<Vec<Ticket>, LeaseError> {
        self.numbered(QUEUE, |t: &Ticket| t.ticket)
    }

    pub fn remove_ticket(&self, ticket: u64) -> Result<(), LeaseError> {
        self.remove(&Self::rel(QUEUE, &format!("{ticket}.json")))
            .map(|_| ())
    }

    /// Where a record of a sub-directory lives (for messages).
    pub fn path_of(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}

impl Ticket {
    /// The waiting process still runs.
    pub fn alive(&self) -> bool {
        process_alive(self.pid, self.start_time)
    }

    /// Does this ticket still hold its place? Its process runs and is not stopped (a waiter
    /// stopped with ^Z or SIGSTOP looks at nothing and must not hold GPUs back forever), and its
    /// deadline, if any, has not passed.
    pub fn holds(&self, now: u64) -> bool {
        self.deadline.map_or(true, |d| now < d) && self.alive() && !process_stopped(self.pid)
    }
}

/// Is `pid` stopped (state `T` or `t` in /proc/PID/stat)? Unknown counts as not stopped.
pub fn process_stopped(pid: u32) -> bool {
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

    fn lease(id: LeaseId) -> Lease {
        Lease {
            id,
            holder: Holder::Manual,
            uid: 0,
            gpu_index: 0,
            gpu_uuid: "GPU-0a1b".into(),
            gi: 1,
            ci: 0,
            profile_id: 19,
            profile: "1g.10gb".into(),
            placement: Placement { start: 0, size: 1 },
            mig_uuid: "MIG-x".into(),
            created: true,
            keep: false,
            state: LeaseState::Active,
            created_at: 1,
            updated_at: 1,
        }
    }

    #[test]
    fn records_round_trip_and_malformed_files_are_named() {
        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::open(t.path().join("s")).unwrap();
        let reg = Registry::open(&dir).unwrap();
        assert_eq!(reg.next_lease_id().unwrap(), 1);
        assert_eq!(reg.next_lease_id().unwrap(), 2);
        reg.write_lease(&lease(2)).unwrap();
        reg.write_lease(&lease(10)).unwrap();
        let ids: Vec<_> = reg.leases().unwrap().iter().map(|l| l.id).collect();
        assert_eq!(ids, vec![2, 10]);
        reg.remove_lease(2).unwrap();
        reg.remove_lease(2).unwrap();
        assert!(reg.lease(2).unwrap().is_none());

        std::fs::write(dir.join("leases/11.json"), "{not json").unwrap();
        let e = reg.leases().unwrap_err();
        assert!(e.to_string().contains("leases/11.json"), "{e}");
        std::fs::remove_file(dir.join("leases/11.json")).unwrap();

        let mut l = lease(12);
        l.id = 13;
        reg.write_json("leases/12.json", &l).unwrap();
        assert!(matches!(reg.leases(), Err(LeaseError::Malformed { .. })));
    }

    #[test]
    fn record_fields_that_become_paths_are_checked_and_bad_records_skipped() {
        assert!(valid_gpu_uuid("GPU-0485b1a2-9c3d-5e4f-8a6b-7c8d9e0f1a2b"));
        for bad in [
            "GPU-",
            "../../../root/x/db",
            "GPU-../x",
            "GPU-ab/cd",
            "gpu-ab",
            "GPU-ab\n",
        ] {
            assert!(!valid_gpu_uuid(bad), "{bad:?}");
        }
        assert!(valid_mig_uuid("MIG-GPU-0a1b/1/0") && valid_mig_uuid("MIG-0a1b-2c"));
        assert!(!valid_mig_uuid("MIG-a b") && !valid_mig_uuid("GPU-0a"));

        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::open(t.path().join("s")).unwrap();
        let reg = Registry::open(&dir).unwrap();
        reg.write_lease(&lease(1)).unwrap();
        let mut bad = lease(2);
        bad.gpu_uuid = "../../../victim/db".into();
        reg.write_json("leases/2.json", &bad).unwrap();
        let mut evil = lease(3);
        evil.profile = "1g.10gb\u{1b}[2J".into();
        reg.write_json("leases/3.json", &evil).unwrap();
        // Listed: skipped and reported, never used.
        let ids: Vec<_> = reg.leases().unwrap().iter().map(|l| l.id).collect();
        assert_eq!(ids, vec![1]);
        let skipped = reg.take_skipped();
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[0].contains("leases/2.json") && skipped[0].contains("is not a GPU UUID"));
        // Looked up: an error naming the file.
        assert!(matches!(reg.lease(2), Err(LeaseError::BadField { .. })));
        // And no caller can turn a UUID into a path.
        assert!(matches!(
            reg.remove_created("../../../victim/db", 1),
            Err(LeaseError::BadField { .. })
        ));
    }
}
