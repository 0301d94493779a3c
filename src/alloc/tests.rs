//! In-process tests of apply/release/gc over the simulator backend (the CLI-level tests are in tests/alloc_*.rs).

use super::reconcile::lease_whole;
use super::testhook::{FaultInjector, Op};
use super::*;
use crate::config::{GpuRef, ReleasePolicy};
use crate::gpu::sim::{SimBackend, SimSpec};
use crate::gpu::{Code, GpuInstance, MigState};
use crate::lease::LeaseState;
use crate::policy::plan;
use std::cell::Cell;
use std::time::Instant;

struct Env {
    _tmp: tempfile::TempDir,
    dir: StateDir,
    sim: SimBackend,
    config: Config,
}

fn env(spec: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = StateDir::open(tmp.path().join("state")).unwrap();
    let sim = SimBackend::open(&dir, spec.parse::<SimSpec>().unwrap()).unwrap();
    Env {
        _tmp: tmp,
        dir,
        sim,
        config: Config::default(),
    }
}

fn want(p: &str) -> AllocRequest {
    AllocRequest {
        uid: 1000,
        ..AllocRequest::new(Want::Profile(p.parse().unwrap()))
    }
}

/// A probe with a fixed answer for every container.
struct Probe(Option<bool>, Cell<u32>);

impl HolderProbe for Probe {
    fn container_alive(&self, _id: &str, _engine: &str) -> Option<bool> {
        self.1.set(self.1.get() + 1);
        self.0
    }
}

/// The lease held by container `id`, if any.
fn lease_of_container(dir: &StateDir, container_id: &str) -> Result<Option<Lease>, AllocError> {
    let reg = Registry::open(dir)?;
    Ok(reg
        .leases()?
        .into_iter()
        .find(|l| matches!(&l.holder, Holder::Container { id, .. } if id == container_id)))
}

fn probe() -> Probe {
    Probe(None, Cell::new(0))
}

impl Env {
    fn alloc(&mut self, req: &AllocRequest) -> Result<Lease, AllocError> {
        allocate(&mut self.sim, &self.dir, &self.config, req, &probe())
    }
    fn release(&mut self, target: &str) -> Result<ReleaseOutcome, AllocError> {
        release(&mut self.sim, &self.dir, &self.config, target, None)
    }
    fn gc(&mut self) -> GcReport {
        gc(&mut self.sim, &self.dir, &self.config, &probe()).unwrap()
    }
    fn state(&mut self) -> MigState {
        self.sim.snapshot().unwrap()
    }
    fn leases(&self) -> Vec<Lease> {
        leases(&self.dir).unwrap()
    }
    fn instance_count(&mut self) -> usize {
        self.state().gpus.iter().map(|g| g.instances.len()).sum()
    }
    fn set_processes(&mut self, gpu: u32, gi: u32, n: u32) {
        self.sim
            .with_machine(|m| m.set_processes(gpu, gi, n))
            .unwrap()
            .unwrap();
    }
    fn foreign(&mut self, gpu: u32, profile_id: u32) -> (u32, String) {
        self.sim
            .with_machine(|m| {
                let gi = m.create_gi_anywhere(gpu, profile_id).unwrap();
                (gi, m.create_default_ci(gpu, gi).unwrap().mig_uuid)
            })
            .unwrap()
    }
    /// Every lease points at a whole instance, and no instance has two leases.
    fn assert_consistent(&mut self) {
        let state = self.state();
        let leases = self.leases();
        for l in &leases {
            assert!(
                lease_whole(&state, l),
                "lease {} points at a missing instance",
                l.id
            );
        }
        let mut seen = std::collections::HashSet::new();
        for l in &leases {
            assert!(
                seen.insert((l.gpu_uuid.clone(), l.gi)),
                "GI {} leased twice",
                l.gi
            );
        }
    }
}

#[test]
fn create_then_release_destroys_ci_and_gi() {
    let mut e = env("h100-80gb");
    let l = e.alloc(&want("3g.40gb")).unwrap();
    assert!(l.created && l.mig_uuid.starts_with("MIG-") && l.uid == 1000);
    assert_eq!(
        e.state().gpus[0].instances[0].mig_uuid(),
        Some(&*l.mig_uuid)
    );
    assert_eq!(created_instances(&e.dir).unwrap().len(), 1);
    let out = e.release(&l.id.to_string()).unwrap();
    assert_eq!(
        out,
        ReleaseOutcome::Destroyed {
            lease: l.id,
            mig_uuid: l.mig_uuid.clone()
        }
    );
    assert_eq!(e.instance_count(), 0);
    assert!(e.leases().is_empty());
    assert!(created_instances(&e.dir).unwrap().is_empty());
    // Releasing again is a clear error, and so is an unknown target.
    let err = e.release(&l.id.to_string()).unwrap_err();
    assert!(err.to_string().contains("no lease 1"), "{err}");
    assert_eq!(exit_code_of(&err), Some(crate::exit::USAGE));
    assert!(e.release("bogus").is_err());
}

#[test]
fn release_by_mig_uuid_and_owner_check() {
    let mut e = env("h100-80gb");
    let l = e.alloc(&want("1g.10gb")).unwrap();
    let err = release(&mut e.sim, &e.dir, &e.config, &l.mig_uuid, Some(1001)).unwrap_err();
    assert!(
        matches!(
            err,
            AllocError::NotYours {
                owner: 1000,
                caller: 1001,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(exit_code_of(&err), Some(crate::exit::PRIVILEGE));
    assert_eq!(e.leases().len(), 1, "nothing changed");
    let out = release(
        &mut e.sim,
        &e.dir,
        &e.config,
        &l.mig_uuid.to_lowercase().replace("mig-", "MIG-"),
        Some(1000),
    )
    .unwrap();
    assert!(matches!(out, ReleaseOutcome::Destroyed { .. }));
}

#[test]
fn foreign_instance_is_reused_and_never_destroyed() {
    let mut e = env("h100-80gb");
    let (gi, uuid) = e.foreign(0, 9);
    let l = e.alloc(&want("3g.40gb")).unwrap();
    assert_eq!((l.gi, l.created, &*l.mig_uuid), (gi, false, &*uuid));
    let out = e.release(&l.id.to_string()).unwrap();
    assert!(matches!(out, ReleaseOutcome::Kept { .. }), "{out:?}");
    assert_eq!(e.state().gpus[0].instances[0].mig_uuid(), Some(&*uuid));
    // gc never touches it either, and it is handed out again.
    assert!(e.gc().released.is_empty());
    assert_eq!(e.instance_count(), 1);
    assert_eq!(e.alloc(&want("3g.40gb")).unwrap().gi, gi);
}

#[test]
fn busy_instance_is_neither_handed_out_nor_destroyed() {
    let mut e = env("h100-80gb");
    let (gi, _) = e.foreign(0, 0); // 7g.80gb: the whole GPU
    e.set_processes(0, gi, 2);
    let err = e.alloc(&want("7g.80gb")).unwrap_err();
    assert!(matches!(err, AllocError::NoRoom(_)), "{err}");
    assert!(err.to_string().contains("not migrun's, busy"), "{err}");
    e.set_processes(0, gi, 0);
    let l = e.alloc(&want("7g.80gb")).unwrap();
    assert_eq!(l.gi, gi);

    // A created instance whose processes outlive the lease drains, and gc destroys it once idle.
    let mut e = env("h100-80gb");
    let l = e.alloc(&want("2g.20gb")).unwrap();
    e.set_processes(0, l.gi, 1);
    let t = Instant::now();
    let out = e.release(&l.id.to_string()).unwrap();
    assert!(matches!(out, ReleaseOutcome::Draining { .. }), "{out:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(700),
        "retried with backoff"
    );
    assert_eq!(e.leases()[0].state, LeaseState::Draining);
    // Draining is not handed out, even to the same profile.
    let other = e.alloc(&want("2g.20gb")).unwrap();
    assert_ne!(other.gi, l.gi);
    let report = e.gc();
    assert!(
        report.notes.iter().any(|n| n.contains("still in use")),
        "{report:?}"
    );
    assert_eq!(e.instance_count(), 2);
    e.set_processes(0, l.gi, 0);
    let report = e.gc();
    assert!(report.released.contains(&ReleaseOutcome::Destroyed {
        lease: l.id,
        mig_uuid: l.mig_uuid.clone()
    }));
    assert_eq!(e.instance_count(), 1);
    e.assert_consistent();
}

#[test]
fn keep_leaves_the_instance_warm_and_reuse_keeps_it_migruns() {
    let mut e = env("h100-80gb");
    let req = AllocRequest {
        keep: true,
        ..want("1g.10gb")
    };
    let l = e.alloc(&req).unwrap();
    let out = e.release(&l.id.to_string()).unwrap();
    assert!(matches!(out, ReleaseOutcome::Kept { .. }), "{out:?}");
    assert_eq!(e.instance_count(), 1);
    assert_eq!(
        created_instances(&e.dir).unwrap().len(),
        1,
        "still recorded as migrun's"
    );
    // Reused without --keep: it is migrun's, so this release destroys it.
    let again = e.alloc(&want("1g.10gb")).unwrap();
    assert_eq!((again.gi, again.created), (l.gi, true));
    assert!(matches!(
        e.release(&again.id.to_string()).unwrap(),
        ReleaseOutcome::Destroyed { .. }
    ));
    assert_eq!(e.instance_count(), 0);

    // The config setting keeps every created instance.
    e.config.release = ReleasePolicy::Keep;
    let l = e.alloc(&want("1g.10gb")).unwrap();
    assert!(matches!(
        e.release(&l.id.to_string()).unwrap(),
        ReleaseOutcome::Kept { .. }
    ));
    assert_eq!(e.instance_count(), 1);
}

#[test]
fn ci_failure_rolls_back_the_gi_and_says_so() {
    let mut e = env("h100-80gb");
    let err = {
        let mut f = FaultInjector {
            inner: &mut e.sim,
            faults: vec![(Op::CreateCi, Code::InsufficientResources)],
        };
        allocate(&mut f, &e.dir, &e.config, &want("3g.40gb"), &probe()).unwrap_err()
    };
    let msg = err.to_string();
    assert!(
        msg.contains("creating the default compute instance in GI 1 (3g.40gb at placement"),
        "{msg}"
    );
    assert!(msg.contains("INSUFFICIENT_RESOURCES"), "{msg}");
    assert!(
        msg.contains("the GPU instance was destroyed again, nothing is left behind"),
        "{msg}"
    );
    assert_eq!(exit_code_of(&err), Some(crate::exit::FAILED));
    assert_eq!(e.instance_count(), 0);
    assert!(e.leases().is_empty());
    assert!(Registry::open(&e.dir)
        .unwrap()
        .intents()
        .unwrap()
        .is_empty());

    // When the rollback fails too, the GI stays journaled and gc destroys it.
    let err = {
        let mut f = FaultInjector {
            inner: &mut e.sim,
            faults: vec![
                (Op::CreateCi, Code::Unknown),
                (Op::DestroyGi, Code::Unknown),
            ],
        };
        allocate(&mut f, &e.dir, &e.config, &want("3g.40gb"), &probe()).unwrap_err()
    };
    assert!(err.to_string().contains("also failed"), "{err}");
    assert!(err.to_string().contains("`migrun gc` destroys it"), "{err}");
    assert_eq!(e.instance_count(), 1);
    let report = e.gc();
    assert_eq!(report.repaired.len(), 1, "{report:?}");
    assert_eq!(e.instance_count(), 0);
    assert!(Registry::open(&e.dir)
        .unwrap()
        .intents()
        .unwrap()
        .is_empty());
}

#[test]
fn dead_and_reused_pids_are_stale() {
    let mut e = env("h100-80gb");
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    let holder = Holder::process(pid).unwrap_or(Holder::Process { pid, start_time: 1 });
    child.wait().unwrap();
    let dead = e
        .alloc(&AllocRequest {
            holder,
            ..want("1g.10gb")
        })
        .unwrap();
    let me = std::process::id();
    let st = lease::process_start_time(me).unwrap();
    let reused = e
        .alloc(&AllocRequest {
            holder: Holder::Process {
                pid: me,
                start_time: st + 7,
            },
            ..want("1g.10gb")
        })
        .unwrap();
    let alive = e
        .alloc(&AllocRequest {
            holder: Holder::process(std::process::id()).unwrap(),
            ..want("1g.10gb")
        })
        .unwrap();
    // Each allocation first released the stale leases before it: only the live one remains.
    let ids: Vec<LeaseId> = e.leases().iter().map(|l| l.id).collect();
    assert_eq!(ids, vec![alive.id]);
    assert_eq!(e.instance_count(), 1);
    let _ = (dead, reused);
    e.assert_consistent();
}

#[test]
fn container_holders_follow_the_probe() {
    let mut e = env("h100-80gb");
    let container = |id: &str, pid| Holder::Container {
        id: id.into(),
        engine: "docker".into(),
        pid,
    };
    let a = e
        .alloc(&AllocRequest {
            holder: container("aaa", None),
            ..want("1g.10gb")
        })
        .unwrap();
    let b = e
        .alloc(&AllocRequest {
            holder: container("bbb", Some((std::process::id(), 1))),
            ..want("1g.10gb")
        })
        .unwrap();
    // Probe unknown: a recorded init pid decides (b's start time is wrong, so it is gone); a is kept.
    let p = probe();
    let r = gc(&mut e.sim, &e.dir, &e.config, &p).unwrap();
    assert_eq!(r.released.len(), 1, "{r:?}");
    assert!(p.1.get() >= 2, "the probe was asked");
    assert_eq!(
        e.leases().iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![a.id]
    );
    // The engine says alive: kept; says gone: released.
    gc(
        &mut e.sim,
        &e.dir,
        &e.config,
        &Probe(Some(true), Cell::new(0)),
    )
    .unwrap();
    assert_eq!(e.leases().len(), 1);
    gc(
        &mut e.sim,
        &e.dir,
        &e.config,
        &Probe(Some(false), Cell::new(0)),
    )
    .unwrap();
    assert!(e.leases().is_empty());
    assert_eq!(e.instance_count(), 0);
    let _ = b;

    // release_container and set_holder.
    let l = e.alloc(&want("1g.10gb")).unwrap();
    set_holder(&e.dir, l.id, container("ccc", None)).unwrap();
    assert_eq!(lease_of_container(&e.dir, "ccc").unwrap().unwrap().id, l.id);
    let out = release_container(&mut e.sim, &e.dir, &e.config, "ccc", false).unwrap();
    assert!(matches!(out, ReleaseOutcome::Destroyed { .. }));
    assert_eq!(
        release_container(&mut e.sim, &e.dir, &e.config, "ccc", false).unwrap(),
        ReleaseOutcome::NoLease
    );
    assert!(set_holder(&e.dir, 999, Holder::Manual).is_err());
}

#[test]
fn leases_of_vanished_instances_are_dropped_not_destroyed() {
    let mut e = env("h100-80gb");
    let l = e.alloc(&want("2g.20gb")).unwrap();
    // An admin destroys it and makes a new one with the same GI id at the same place.
    e.sim
        .with_machine(|m| {
            m.destroy_ci(0, l.gi, 0).unwrap();
            m.destroy_gi(0, l.gi).unwrap();
            let gi = m.create_gi(0, l.profile_id, l.placement.start).unwrap();
            m.create_default_ci(0, gi).unwrap();
        })
        .unwrap();
    let r = e.gc();
    assert!(
        matches!(r.released[..], [ReleaseOutcome::Gone { .. }]),
        "{r:?}"
    );
    assert!(e.leases().is_empty());
    assert_eq!(
        e.instance_count(),
        1,
        "the admin's new instance is not migrun's to destroy"
    );
    assert!(created_instances(&e.dir).unwrap().is_empty());
}

#[test]
fn malformed_registry_stops_allocation_and_changes_nothing() {
    let mut e = env("h100-80gb");
    let l = e.alloc(&want("1g.10gb")).unwrap();
    std::fs::write(e.dir.join("leases/9.json"), "{\"id\": 9").unwrap();
    let before = std::fs::read(e.dir.join("sim.json")).unwrap();
    for err in [
        e.alloc(&want("1g.10gb")).unwrap_err(),
        e.release("9").unwrap_err(),
        e.release(&l.mig_uuid).unwrap_err(),
        gc(&mut e.sim, &e.dir, &e.config, &probe()).unwrap_err(),
    ] {
        assert!(err.to_string().contains("leases/9.json"), "{err}");
        assert_eq!(exit_code_of(&err), Some(crate::exit::USAGE));
    }
    assert_eq!(std::fs::read(e.dir.join("sim.json")).unwrap(), before);
    assert!(e.dir.join("leases/1.json").exists());
    // A good lease named by id can still be released: it cannot be confused with the broken record.
    assert!(matches!(
        e.release(&l.id.to_string()).unwrap(),
        ReleaseOutcome::Destroyed { .. }
    ));
}

#[test]
fn config_gpus_and_allowed_profiles() {
    let mut e = env("h100-80gb:3");
    e.config.gpus = Some(vec![GpuRef::Index(2)]);
    assert_eq!(e.alloc(&want("7g.80gb")).unwrap().gpu_index, 2);
    let err = e.alloc(&want("7g.80gb")).unwrap_err();
    assert!(
        matches!(err, AllocError::NoRoom(_)),
        "GPUs 0 and 1 are not migrun's: {err}"
    );
    let err = e
        .alloc(&AllocRequest {
            gpu: Some("0".into()),
            ..want("1g.10gb")
        })
        .unwrap_err();
    assert!(matches!(err, AllocError::NotManaged { .. }), "{err}");
    let err = e
        .alloc(&AllocRequest {
            gpu: Some("7".into()),
            ..want("1g.10gb")
        })
        .unwrap_err();
    assert!(matches!(err, AllocError::BadGpu { .. }), "{err}");
    assert_eq!(exit_code_of(&err), Some(crate::exit::USAGE));

    e.config.gpus = None;
    e.config.allowed_profiles = Some(vec!["1g.10gb".into()]);
    let err = e.alloc(&want("3g.40gb")).unwrap_err();
    assert!(matches!(err, AllocError::Unsatisfiable(_)), "{err}");
    assert_eq!(exit_code_of(&err), Some(crate::exit::USAGE));
    e.alloc(&want("1g.10gb")).unwrap();
    e.config.allowed_profiles = Some(vec!["3g.bogus".into()]);
    assert!(matches!(
        e.alloc(&want("1g.10gb")).unwrap_err(),
        AllocError::BadConfig { .. }
    ));
}

#[test]
fn unknown_profile_and_mig_off_are_named() {
    let mut e = env("a30-24gb");
    let err = e.alloc(&want("3g.40gb")).unwrap_err();
    assert!(err.to_string().contains("does not exist on GPU 0"), "{err}");
    assert_eq!(exit_code_of(&err), Some(crate::exit::USAGE));
    let mut e = env("h100-80gb:1:mig-off");
    let err = e
        .alloc(&AllocRequest {
            wait: Some(None),
            ..want("1g.10gb")
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("MIG mode is disabled on GPU 0"),
        "{err}"
    );
}

#[test]
fn queue_is_first_come_first_served() {
    let mut e = env("h100-80gb");
    let reg = Registry::open(&e.dir).unwrap();
    // A live waiter (this process) holds ticket 1: a newcomer without --wait is refused, even with room.
    let t = reg.take_ticket("7g.80gb", 0, None, Some(0)).unwrap();
    let err = e.alloc(&want("1g.10gb")).unwrap_err();
    assert!(matches!(err, AllocError::Queued { ahead: 1, .. }), "{err}");
    assert_eq!(exit_code_of(&err), Some(crate::exit::NO_ROOM));
    // With a short --wait it gives up, and says so.
    let err = e
        .alloc(&AllocRequest {
            wait: Some(Some(Duration::from_millis(300))),
            ..want("1g.10gb")
        })
        .unwrap_err();
    assert!(err.to_string().contains("gave up after waiting"), "{err}");
    assert_eq!(
        reg.tickets().unwrap().len(),
        1,
        "the waiter's own ticket is gone"
    );
    // A dead waiter's ticket is skipped.
    reg.remove_ticket(t.ticket).unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let dead = lease::Ticket {
        ticket: 50,
        pid,
        start_time: 1,
        want: "7g.80gb".into(),
        uid: 0,
        created_at: 0,
        deadline: None,
        reserved_gpu: Some(0),
    };
    std::fs::write(
        e.dir.join("queue/50.json"),
        serde_json::to_vec(&dead).unwrap(),
    )
    .unwrap();
    e.alloc(&want("1g.10gb")).unwrap();
    assert!(reg.tickets().unwrap().is_empty(), "dead ticket removed");
}

#[test]
fn a_waiter_holds_back_only_its_gpu_and_only_until_its_deadline() {
    let mut e = env("h100-80gb:2");
    let reg = Registry::open(&e.dir).unwrap();
    // A live waiter (this process) holds GPU 0 back: a newcomer that fits goes to GPU 1.
    let t = reg.take_ticket("7g.80gb", 0, None, Some(0)).unwrap();
    let l = e.alloc(&want("1g.10gb")).unwrap();
    assert_eq!(l.gpu_index, 1, "the free GPU, not the one held back");
    // Asking for GPU 0 itself waits behind the waiter.
    let err = e
        .alloc(&AllocRequest {
            gpu: Some("0".into()),
            ..want("1g.10gb")
        })
        .unwrap_err();
    assert!(matches!(err, AllocError::Queued { ahead: 1, .. }), "{err}");
    // Past its deadline the same ticket holds nothing, though its process lives on.
    reg.remove_ticket(t.ticket).unwrap();
    let late = reg
        .take_ticket("7g.80gb", 0, Some(lease::now() - 1), Some(0))
        .unwrap();
    let l = e
        .alloc(&AllocRequest {
            gpu: Some("0".into()),
            ..want("1g.10gb")
        })
        .unwrap();
    assert_eq!(l.gpu_index, 0);
    reg.remove_ticket(late.ticket).unwrap();
}

#[test]
fn the_reserved_gpu_is_where_the_waiter_is_closest_to_fitting() {
    let mut e = env("h100-80gb:3");
    e.alloc(&AllocRequest {
        gpu: Some("0".into()),
        ..want("3g.40gb")
    })
    .unwrap();
    e.alloc(&AllocRequest {
        gpu: Some("2".into()),
        ..want("1g.10gb")
    })
    .unwrap();
    let state = e.state();
    let req = plan::PlanRequest::new(Want::Profile("7g.80gb".parse().unwrap()));
    // (GPUs earlier waiters hold, the GPU this waiter holds back)
    for (taken, expect) in [
        (&[][..], Some(1)),
        (&[1][..], Some(2)),
        (&[1, 2][..], Some(0)),
        (&[0, 1, 2][..], None),
    ] {
        assert_eq!(plan::reservation(&state, &req, taken), expect, "{taken:?}");
    }
    let only0 = plan::PlanRequest {
        gpus: Some(vec![0]),
        ..req.clone()
    };
    assert_eq!(plan::reservation(&state, &only0, &[]), Some(0));
}

/// A backend where an "admin" grabs the chosen placement just before migrun's first create.
struct Racer<'a> {
    sim: &'a mut SimBackend,
    raced: bool,
}

impl Backend for Racer<'_> {
    fn kind(&self) -> crate::gpu::BackendKind {
        self.sim.kind()
    }
    fn gpus(&mut self) -> Result<Vec<crate::gpu::GpuInfo>, GpuError> {
        self.sim.gpus()
    }
    fn profiles(&mut self, gpu: u32) -> Result<Vec<crate::gpu::GiProfile>, GpuError> {
        self.sim.profiles(gpu)
    }
    fn instances(&mut self, gpu: u32) -> Result<Vec<GpuInstance>, GpuError> {
        self.sim.instances(gpu)
    }
    fn create_gi(&mut self, gpu: u32, profile_id: u32, start: u32) -> Result<u32, GpuError> {
        if !self.raced {
            self.raced = true;
            self.sim.create_gi(gpu, profile_id, start)?;
        }
        self.sim.create_gi(gpu, profile_id, start)
    }
    fn create_default_ci(
        &mut self,
        gpu: u32,
        gi: u32,
    ) -> Result<crate::gpu::ComputeInstance, GpuError> {
        self.sim.create_default_ci(gpu, gi)
    }
    fn ci_profiles(&mut self, gpu: u32, gi: u32) -> Result<Vec<crate::gpu::CiProfile>, GpuError> {
        self.sim.ci_profiles(gpu, gi)
    }
    fn create_ci(
        &mut self,
        gpu: u32,
        gi: u32,
        profile_id: u32,
        start: u32,
    ) -> Result<crate::gpu::ComputeInstance, GpuError> {
        self.sim.create_ci(gpu, gi, profile_id, start)
    }
    fn ci_placements(
        &mut self,
        gpu: u32,
        gi: u32,
    ) -> Result<Vec<crate::gpu::CiPlacement>, GpuError> {
        self.sim.ci_placements(gpu, gi)
    }
    fn destroy_ci(&mut self, gpu: u32, gi: u32, ci: u32) -> Result<(), GpuError> {
        self.sim.destroy_ci(gpu, gi, ci)
    }
    fn destroy_gi(&mut self, gpu: u32, gi: u32) -> Result<(), GpuError> {
        self.sim.destroy_gi(gpu, gi)
    }
    fn set_mig_mode(&mut self, gpu: u32, enable: bool) -> Result<crate::gpu::MigMode, GpuError> {
        self.sim.set_mig_mode(gpu, enable)
    }
    fn gpu_processes(&mut self, gpu: u32) -> Result<u32, GpuError> {
        self.sim.gpu_processes(gpu)
    }
}

#[test]
fn a_placement_taken_meanwhile_is_planned_again() {
    let mut e = env("h100-80gb:2");
    let l = {
        let mut r = Racer {
            sim: &mut e.sim,
            raced: false,
        };
        allocate(&mut r, &e.dir, &e.config, &want("3g.40gb"), &probe()).unwrap()
    };
    let state = e.state();
    assert_eq!(
        state.gpus[l.gpu_index as usize].instances.len(),
        2,
        "the admin's and migrun's"
    );
    assert!(lease_whole(&state, &l));
    assert!(Registry::open(&e.dir)
        .unwrap()
        .intents()
        .unwrap()
        .is_empty());
    // A create that keeps failing is reported, with nothing left behind.
    let err = {
        let mut f = FaultInjector {
            inner: &mut e.sim,
            faults: vec![(Op::CreateGi, Code::InsufficientResources)],
        };
        allocate(&mut f, &e.dir, &e.config, &want("1g.10gb"), &probe()).unwrap_err()
    };
    assert!(err.to_string().contains("INSUFFICIENT_RESOURCES"), "{err}");
    assert!(Registry::open(&e.dir)
        .unwrap()
        .intents()
        .unwrap()
        .is_empty());
    assert_eq!(e.leases().len(), 1);
}

#[test]
fn idle_kept_instances_make_room_but_leased_busy_and_foreign_ones_do_not() {
    let mut e = env("h100-80gb");
    e.config.release = ReleasePolicy::Keep;
    // Seven 1g.10gb, kept warm after release, fill the GPU.
    let ls: Vec<Lease> = (0..7).map(|_| e.alloc(&want("1g.10gb")).unwrap()).collect();
    for l in &ls[..6] {
        e.release(&l.id.to_string()).unwrap();
    }
    assert_eq!(e.instance_count(), 7);
    // One kept instance is busy, one is still leased: neither may go.
    let busy_gi = ls[5].gi;
    e.set_processes(0, busy_gi, 1);
    let before = e.state();
    let big = e.alloc(&want("3g.40gb")).unwrap();
    assert!(big.created);
    // Exactly the idle kept instances under the new 3g.40gb are gone; the busy and the leased one stay.
    let under: Vec<u32> = before.gpus[0]
        .instances
        .iter()
        .filter(|i| i.placement.overlaps(&big.placement))
        .map(|i| i.id)
        .collect();
    assert!(
        !under.contains(&busy_gi) && !under.contains(&ls[6].gi),
        "{under:?}"
    );
    assert!(!under.is_empty());
    let gis: Vec<u32> = e.state().gpus[0].instances.iter().map(|i| i.id).collect();
    assert!(gis.contains(&busy_gi) && gis.contains(&ls[6].gi), "{gis:?}");
    assert_eq!(e.instance_count(), 7 - under.len() + 1);
    assert_eq!(
        created_instances(&e.dir).unwrap().len(),
        7 - under.len() + 1
    );
    e.assert_consistent();
    // A foreign instance is never evicted.
    let mut e = env("h100-80gb");
    e.foreign(0, 0);
    assert!(matches!(
        e.alloc(&want("1g.10gb")).unwrap_err(),
        AllocError::NoRoom(_)
    ));
}

#[test]
fn a_pending_mig_disable_refuses_allocation() {
    let mut e = env("h100-80gb:2");
    // Pending until a GPU reset; an instance made now would block that reset and die with it.
    e.sim.set_mig_mode(0, false).unwrap();
    let err = e
        .alloc(&AllocRequest {
            gpu: Some("0".into()),
            wait: Some(None),
            ..want("1g.10gb")
        })
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("disabling MIG mode is pending on it"),
        "{err}"
    );
    assert_eq!(exit_code_of(&err), Some(crate::exit::USAGE));
    // The other GPU is used instead when the request does not name one.
    let l = e.alloc(&want("1g.10gb")).unwrap();
    assert_eq!(l.gpu_index, 1);
    assert!(e.state().gpus[0].instances.is_empty());
}

#[test]
fn a_release_target_that_is_not_ascii_is_unknown_not_a_panic() {
    let mut e = env("h100-80gb:1");
    for target in ["MI€-x", "€€€€€", "MIG€", "MIG-€"] {
        let err = e.release(target).unwrap_err();
        assert!(err.to_string().contains("no lease"), "{target}: {err}");
    }
}
