//! The lease registry in the state dir: lock, intent journal, atomic lease records, created-instance records and the wait queue; it must not call NVML.
//!
//! Layout (all files 0600 inside the 0700 state dir, each written atomically; see docs/leases.md):
//! - `alloc.lock`: one lock serialises every allocation, release and gc;
//! - `next-id`: the next lease id;
//! - `leases/<id>.json`: one [`Lease`] per lease;
//! - `intents/<id>.json`: an [`Intent`] journaled before a GPU instance is created, removed once its lease is written;
//! - `created/<gpu-uuid>-<gi>.json`: a [`CreatedRecord`] for every instance migrun created and has not destroyed
//!   (leased or kept warm), so migrun only ever destroys what it made;
//! - `queue/<ticket>.json` and `next-ticket`: the first-come-first-served wait queue ([`Ticket`]);
//! - `generation`: bumped whenever room may have appeared, so waiters know when to look again;
//! - `counters.json`: the metrics counters ([`Counters`]).
//!
//! A registry may carry the usage [`Ledger`] (`with_ledger`): lease grants and ends are then appended to it as
//! they are recorded here. A ledger that cannot be written is logged and counted, never fatal: accounting must
//! not fail a container start or keep a slice from being given back.
//!
//! Every reader refuses a malformed record with an error naming the file, instead of guessing: a lease
//! registry that cannot be read must stop allocation, or the same instance could be handed out twice.

use super::counters::Counters;
use super::ledger::{EndReason, Event, LeaseFacts, Ledger};
use super::{
    check_gpu_uuid, now, process_start_time, CreatedRecord, Fields, Intent, Lease, LeaseError,
    LeaseId, Ticket,
};
use crate::statedir::{self, Lock, StateDir};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::{Arc, Mutex};

const LEASES: &str = "leases";
const INTENTS: &str = "intents";
const CREATED: &str = "created";
const QUEUE: &str = "queue";
const LOCK: &str = "alloc.lock";
const NEXT_ID: &str = "next-id";
const NEXT_TICKET: &str = "next-ticket";
const GENERATION: &str = "generation";
const COUNTERS: &str = "counters.json";

/// The registry of one state dir. Methods that change records expect the caller to hold [`Registry::lock`].
#[derive(Debug, Clone)]
pub(crate) struct Registry {
    dir: StateDir,
    /// Records listings skipped because a field cannot be migrun's ([`LeaseError::BadField`]), as messages
    /// for gc's report; shared by clones, drained by [`Registry::take_skipped`].
    skipped: Arc<Mutex<Vec<String>>>,
    ledger: Option<Ledger>,
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
            ledger: None,
        })
    }

    /// The same registry, appending grants, ends, waits and refusals to `ledger`.
    pub fn with_ledger(mut self, ledger: Option<Ledger>) -> Registry {
        self.ledger = ledger;
        self
    }

    /// Append an event to the ledger, if there is one. A failure is logged and counted (the caller holds the lock).
    pub fn log(&self, event: &Event) {
        let Some(ledger) = &self.ledger else { return };
        if let Err(e) = ledger.append(event) {
            tracing::warn!("{e}");
            let _ = self.update_counters(|c| c.ledger_write_errors += 1);
        }
    }

    /// Log that lease `l` ends now (before its record changes, so a crash never loses the end; a repeated
    /// end is counted once by readers).
    pub fn log_end(&self, l: &Lease, reason: EndReason) {
        self.log(&Event::End {
            at: now(),
            lease: LeaseFacts::of(l),
            reason,
        });
    }

    /// The metrics counters; a missing file is all zeros, a malformed one an error naming it.
    pub fn counters(&self) -> Result<Counters, LeaseError> {
        match self.dir.read(COUNTERS)? {
            None => Ok(Counters::default()),
            Some(b) => serde_json::from_slice(&b).map_err(|e| LeaseError::Malformed {
                path: self.dir.join(COUNTERS),
                why: e.to_string(),
            }),
        }
    }

    /// Change the counters (the caller holds the lock). A malformed file starts again from zero: counters
    /// are for graphs, and a reset is what Prometheus expects of a restarted counter.
    pub fn update_counters(&self, f: impl FnOnce(&mut Counters)) -> Result<(), LeaseError> {
        let mut c = self.counters().unwrap_or_default();
        f(&mut c);
        let json = serde_json::to_vec(&c).expect("counters serialise");
        Ok(self.dir.write(COUNTERS, &json)?)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::Placement;
    use crate::lease::{valid_gpu_uuid, valid_mig_uuid, Holder, LeaseState};

    fn lease(id: LeaseId) -> Lease {
        Lease {
            id,
            name: None,
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
            ci_profile: None,
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
        // A name is checked like every other field; records from before names read as unnamed.
        let mut named = lease(4);
        named.name = Some(crate::lease::LeaseName::parse("trainer").unwrap());
        reg.write_lease(&named).unwrap();
        let mut v = serde_json::to_value(lease(5)).unwrap();
        assert!(v.get("name").is_none(), "no name, no key");
        v["name"] = serde_json::json!("../../x");
        reg.write_json("leases/5.json", &v).unwrap();
        let ids: Vec<_> = reg.leases().unwrap().iter().map(|l| l.id).collect();
        assert_eq!(ids, vec![1, 4]);
        assert_eq!(reg.lease(4).unwrap().unwrap().name, named.name);
        assert!(reg
            .take_skipped()
            .iter()
            .any(|m| m.contains("leases/5.json")));
        // Looked up: an error naming the file.
        assert!(matches!(reg.lease(2), Err(LeaseError::BadField { .. })));
        // And no caller can turn a UUID into a path.
        assert!(matches!(
            reg.remove_created("../../../victim/db", 1),
            Err(LeaseError::BadField { .. })
        ));
    }
}
