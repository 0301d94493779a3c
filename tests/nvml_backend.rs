//! The NVML backend driven in-process through the hardware trait on the fake libnvidia-ml.so: listing, create at a placement, default CI, MIG UUIDs, destroy, NVML's refusals and every injected failure.

mod common;

use common::fake_nvml::FakeNvml;
use migrun::gpu::{Backend, Code, GpuError, Placement};

/// The NVML code of an error, failing the test with the message when there is none.
fn code_of(e: &GpuError) -> Code {
    e.code()
        .unwrap_or_else(|| panic!("expected an NVML error, got: {e}"))
}

#[test]
fn listing_equals_the_simulator() {
    let fake = FakeNvml::new("h100-80gb:2,a30-24gb:1:mig-off");
    // Instances made behind migrun's back (as another tool would) must show up too.
    let made = fake.update(|m| {
        let gi = m.create_gi(1, 9, 4).unwrap();
        m.create_default_ci(1, gi).unwrap();
        m.create_gi(1, 19, 0).unwrap()
    });
    let mut b = fake.backend();
    let m = fake.machine();
    assert_eq!(b.gpus().unwrap(), m.gpu_infos());
    for gpu in 0..3 {
        assert_eq!(
            b.profiles(gpu).unwrap(),
            m.profiles(gpu).unwrap(),
            "GPU {gpu}"
        );
    }
    assert_eq!(b.instances(1).unwrap(), m.instances(1).unwrap());
    assert_eq!(b.instances(1).unwrap()[1].id, made);
    assert!(b.instances(0).unwrap().is_empty());
    assert!(b.instances(2).unwrap().is_empty(), "MIG off: no instances");
    // Remaining capacity is live: the 3g.40gb at 4 and the 1g at 0 leave no room for another 3g.
    let three = b
        .profiles(1)
        .unwrap()
        .into_iter()
        .find(|p| p.id == 9)
        .unwrap();
    assert_eq!(three.remaining, 0);
    assert!(matches!(
        b.profiles(3),
        Err(GpuError::NoSuchGpu { index: 3, count: 3 })
    ));
}

#[test]
fn create_at_a_placement_default_ci_uuid_and_destroy() {
    let fake = FakeNvml::new("h100-80gb:1");
    let mut b = fake.backend();
    let gi = b.create_gi(0, 9, 4).unwrap();
    let inst = b.instances(0).unwrap();
    assert_eq!(inst.len(), 1);
    assert_eq!(inst[0].placement, Placement { start: 4, size: 4 });
    assert_eq!(inst[0].profile_id, 9);
    assert!(inst[0].compute_instances.is_empty());

    let ci = b.create_default_ci(0, gi).unwrap();
    assert!(ci.mig_uuid.starts_with("MIG-"), "{}", ci.mig_uuid);
    // The UUID is the MIG device's, as the driver (here the simulator) reports it.
    let sim_ci = &fake.machine().gpus[0].instances[0].cis[0];
    assert_eq!(
        (ci.id, ci.mig_uuid.as_str()),
        (sim_ci.id, sim_ci.uuid.as_str())
    );
    assert_eq!(
        b.instances(0).unwrap()[0].mig_uuid(),
        Some(ci.mig_uuid.as_str())
    );
    // A second default CI does not fit in the GI.
    assert_eq!(
        code_of(&b.create_default_ci(0, gi).unwrap_err()),
        Code::InsufficientResources
    );

    // The GI still has a CI: NVML refuses with IN_USE, and the message says what to do.
    let e = b.destroy_gi(0, gi).unwrap_err();
    assert_eq!(code_of(&e), Code::InUse);
    assert!(
        e.to_string().contains("destroy its compute instances"),
        "{e}"
    );
    b.destroy_ci(0, gi, ci.id).unwrap();
    b.destroy_gi(0, gi).unwrap();
    assert!(b.instances(0).unwrap().is_empty());
    assert!(fake.machine().gpus[0].instances.is_empty());
    // Gone is gone.
    assert_eq!(code_of(&b.destroy_gi(0, gi).unwrap_err()), Code::NotFound);
}

#[test]
fn overlap_and_limits_are_insufficient_resources() {
    let fake = FakeNvml::new("h100-80gb:1");
    let mut b = fake.backend();
    b.create_gi(0, 9, 0).unwrap();
    // 4g.40gb can only start at 0, which the 3g.40gb holds.
    let e = b.create_gi(0, 5, 0).unwrap_err();
    assert_eq!(code_of(&e), Code::InsufficientResources);
    assert!(e.to_string().contains("GPU 0"), "{e}");
    // One +me instance per GPU.
    b.create_gi(0, 20, 4).unwrap();
    assert_eq!(
        code_of(&b.create_gi(0, 20, 5).unwrap_err()),
        Code::InsufficientResources
    );
    // A start the profile does not have is refused before NVML is asked.
    let e = b.create_gi(0, 9, 2).unwrap_err();
    assert_eq!(code_of(&e), Code::InvalidArgument);
    assert!(e.to_string().contains("0:4, 4:4"), "{e}");
    let e = b.create_gi(0, 77, 0).unwrap_err();
    assert!(
        e.to_string().contains("no GPU instance profile with ID 77"),
        "{e}"
    );
}

#[test]
fn mig_off_not_capable_and_not_root_are_named() {
    let fake = FakeNvml::new("h100-80gb:2:mig-off").nomig(&[1]);
    let mut b = fake.backend();
    let gpus = b.gpus().unwrap();
    assert!(gpus[1].mig.is_none());
    assert_eq!(gpus[1].name, "Fake non-MIG GPU");
    // MIG off: profiles still read (as on the real H100), creation is refused with the exact step.
    assert_eq!(b.profiles(0).unwrap().len(), 7);
    let e = b.create_gi(0, 9, 0).unwrap_err();
    assert!(matches!(e, GpuError::MigDisabled { index: 0, .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&gpus[0].uuid), "{msg}");
    assert!(msg.contains("sudo nvidia-smi -i 0 -mig 1"), "{msg}");
    assert!(msg.contains("reset"), "{msg}");
    // Not MIG-capable at all.
    for e in [
        b.profiles(1).unwrap_err(),
        b.create_gi(1, 9, 0).unwrap_err(),
        b.set_mig_mode(1, true).unwrap_err(),
    ] {
        assert!(matches!(e, GpuError::NotMigCapable { .. }), "{e}");
        assert!(e.to_string().contains("GPU 1"), "{e}");
    }
    drop(b);

    let fake = FakeNvml::new("h100-80gb:1").nonroot();
    fake.update(|m| m.create_gi(0, 9, 0).unwrap());
    let mut b = fake.backend();
    // Reading profiles needs no privilege; managing and listing instances does.
    assert_eq!(b.profiles(0).unwrap(), fake.machine().profiles(0).unwrap());
    for e in [
        b.create_gi(0, 9, 4).unwrap_err(),
        b.instances(0).unwrap_err(),
        b.destroy_gi(0, 1).unwrap_err(),
        b.set_mig_mode(0, false).unwrap_err(),
    ] {
        assert!(matches!(e, GpuError::NoPermission { .. }), "{e}");
        assert!(e.to_string().contains("needs root"), "{e}");
    }
    assert_eq!(fake.machine().gpus[0].instances.len(), 1, "nothing changed");
}

#[test]
fn mig_mode_change_is_pending_until_reset_and_processes_block_destroy() {
    let fake = FakeNvml::new("h100-80gb:1:mig-off");
    let mut b = fake.backend();
    let m = b.set_mig_mode(0, true).unwrap();
    assert!(!m.current && m.pending, "{m:?}");
    assert!(!b.gpus().unwrap()[0].mig.unwrap().current);
    fake.update(|m| m.reset_gpu(0).unwrap());
    assert!(b.gpus().unwrap()[0].mig.unwrap().current);

    let gi = b.create_gi(0, 14, 2).unwrap();
    let ci = b.create_default_ci(0, gi).unwrap();
    fake.update(|m| m.set_processes(0, gi, 2).unwrap());
    assert_eq!(b.instances(0).unwrap()[0].processes, 2);
    assert_eq!(b.gpu_processes(0).unwrap(), 2);
    assert_eq!(
        code_of(&b.destroy_ci(0, gi, ci.id).unwrap_err()),
        Code::InUse
    );
    fake.update(|m| m.set_processes(0, gi, 0).unwrap());
    b.destroy_ci(0, gi, ci.id).unwrap();
    b.destroy_gi(0, gi).unwrap();
}

#[test]
fn processes_are_counted_from_the_whole_gpu_when_a_mig_device_cannot_list_them() {
    // First use is the MIG device's own query: NOT_SUPPORTED sends the backend to the parent's list.
    let fake = FakeNvml::new("h100-80gb:1")
        .fail("nvmlDeviceGetComputeRunningProcesses_v3:NOT_SUPPORTED:1");
    let gi = fake.update(|m| {
        let gi = m.create_gi(0, 9, 0).unwrap();
        m.create_default_ci(0, gi).unwrap();
        m.create_gi(0, 9, 4).unwrap();
        m.set_processes(0, gi, 2).unwrap();
        gi
    });
    let mut b = fake.backend();
    let inst = b.instances(0).unwrap();
    assert_eq!(inst.iter().find(|i| i.id == gi).unwrap().processes, 2);
    assert_eq!(inst.iter().map(|i| i.processes).sum::<u32>(), 2);
    assert!(fake.calls("nvmlDeviceGetComputeRunningProcesses_v3") >= 2);
}

/// One injected failure: the rule, what it breaks, and the code that must come out.
struct Case {
    rule: &'static str,
    code: Code,
    run: fn(&mut dyn Backend) -> Result<(), GpuError>,
}

#[test]
fn injected_failures_surface_with_their_codes() {
    let cases = [
        Case {
            rule: "nvmlDeviceCreateGpuInstanceWithPlacement:INSUFFICIENT_RESOURCES:1",
            code: Code::InsufficientResources,
            run: |b| b.create_gi(0, 9, 0).map(drop),
        },
        Case {
            rule: "nvmlGpuInstanceCreateComputeInstance:23:1",
            code: Code::InsufficientResources,
            run: |b| {
                let gi = b.create_gi(0, 9, 0)?;
                b.create_default_ci(0, gi).map(drop)
            },
        },
        Case {
            rule: "nvmlGpuInstanceDestroy:IN_USE:1",
            code: Code::InUse,
            run: |b| {
                let gi = b.create_gi(0, 19, 3)?;
                b.destroy_gi(0, gi)
            },
        },
        Case {
            rule: "nvmlComputeInstanceDestroy:GPU_IS_LOST:1",
            code: Code::GpuLost,
            run: |b| {
                let gi = b.create_gi(0, 19, 3)?;
                let ci = b.create_default_ci(0, gi)?;
                b.destroy_ci(0, gi, ci.id)
            },
        },
        Case {
            rule: "nvmlDeviceGetGpuInstanceRemainingCapacity:UNKNOWN:1",
            code: Code::Unknown,
            run: |b| b.profiles(0).map(drop),
        },
        Case {
            rule: "nvmlDeviceGetGpuInstances:NO_PERMISSION",
            code: Code::NoPermission,
            run: |b| b.instances(0).map(drop),
        },
        Case {
            rule: "nvmlDeviceGetMigMode:DRIVER_NOT_LOADED:1",
            code: Code::DriverNotLoaded,
            run: |b| b.gpus().map(drop),
        },
        Case {
            rule: "nvmlDeviceSetMigMode:IN_USE",
            code: Code::InUse,
            run: |b| b.set_mig_mode(0, false).map(drop),
        },
        Case {
            rule: "nvmlDeviceGetComputeRunningProcesses_v3:GPU_IS_LOST",
            code: Code::GpuLost,
            run: |b| b.gpu_processes(0).map(drop),
        },
    ];
    for case in cases {
        let fake = FakeNvml::new("h100-80gb:1").fail(case.rule);
        let mut b = fake.backend();
        let e = (case.run)(&mut *b).expect_err(case.rule);
        assert_eq!(e.code(), Some(case.code), "{}: {e}", case.rule);
        assert!(e.to_string().contains("GPU 0"), "{}: {e}", case.rule);
        let symbol = case.rule.split(':').next().unwrap();
        assert!(fake.calls(symbol) >= 1, "{symbol} was never called");
    }
}

#[test]
fn injected_failures_only_hit_the_chosen_uses() {
    let fake = FakeNvml::new("h100-80gb:1").fail("nvmlGpuInstanceDestroy:IN_USE:1-2");
    let mut b = fake.backend();
    let gi = b.create_gi(0, 15, 2).unwrap();
    for _ in 0..2 {
        assert_eq!(code_of(&b.destroy_gi(0, gi).unwrap_err()), Code::InUse);
    }
    b.destroy_gi(0, gi).unwrap();
    assert_eq!(fake.calls("nvmlGpuInstanceDestroy"), 3);
    // An injected failure changes nothing on the device: the instance lived until the third call.
    assert!(fake.machine().gpus[0].instances.is_empty());
}

#[test]
fn failures_after_creation_leave_nothing_behind() {
    // The new GI cannot be read back: it is destroyed again, not leaked without an id.
    let fake = FakeNvml::new("h100-80gb:1").fail("nvmlGpuInstanceGetInfo:UNKNOWN:1");
    let mut b = fake.backend();
    assert_eq!(code_of(&b.create_gi(0, 9, 0).unwrap_err()), Code::Unknown);
    assert!(fake.machine().gpus[0].instances.is_empty());
    drop(b);

    // The new CI cannot be read back, or its MIG device cannot be found: the CI is undone, so
    // the caller's rollback can destroy the GI.
    for rule in [
        "nvmlComputeInstanceGetInfo_v2:UNKNOWN:1",
        "nvmlDeviceGetMigDeviceHandleByIndex:UNKNOWN:1",
        "nvmlDeviceGetUUID:UNKNOWN:1",
    ] {
        let fake = FakeNvml::new("h100-80gb:1").fail(rule);
        fake.update(|m| m.create_gi(0, 9, 4).unwrap());
        let mut b = fake.backend();
        let gi = fake.machine().gpus[0].instances[0].id;
        let e = b.create_default_ci(0, gi).unwrap_err();
        assert_eq!(code_of(&e), Code::Unknown, "{rule}: {e}");
        assert!(
            fake.machine().gpus[0].instances[0].cis.is_empty(),
            "{rule}: CI left behind"
        );
        b.destroy_gi(0, gi).unwrap();
    }
}

#[test]
fn init_failure_is_no_driver_and_sessions_are_reused() {
    let fake = FakeNvml::new("h100-80gb:1").fail("nvmlInit_v2:DRIVER_NOT_LOADED:1");
    let e = fake.try_backend().err().expect("init fails");
    assert!(matches!(e, GpuError::NoDriver { .. }), "{e}");
    assert!(e.to_string().contains("driver is not loaded"), "{e}");

    // One init per backend; the profile table and placements are read once per session,
    // whatever the number of snapshots (a real host snapshots on every allocation).
    let fake = FakeNvml::new("h100-80gb:2").count(
        "nvmlInit_v2,nvmlDeviceGetGpuInstanceProfileInfoV,nvmlDeviceGetGpuInstancePossiblePlacements_v2,nvmlDeviceGetGpuInstanceRemainingCapacity",
    );
    let mut b = fake.backend();
    let first = b.snapshot().unwrap();
    let probes = fake.calls("nvmlDeviceGetGpuInstanceProfileInfoV");
    for _ in 0..3 {
        assert_eq!(b.snapshot().unwrap(), first);
    }
    assert_eq!(fake.calls("nvmlInit_v2"), 1);
    assert_eq!(fake.calls("nvmlDeviceGetGpuInstanceProfileInfoV"), probes);
    // 17 NVML profile indices probed plus the first INVALID_ARGUMENT past them, per GPU.
    assert_eq!(probes, 2 * 18);
    assert_eq!(
        fake.calls("nvmlDeviceGetGpuInstancePossiblePlacements_v2"),
        2 * 7
    );
    // The snapshot derives remaining capacity from the instances (the placement rules) instead of asking NVML
    // once per profile; `profiles()` still asks.
    assert_eq!(fake.calls("nvmlDeviceGetGpuInstanceRemainingCapacity"), 0);
    let m = fake.machine();
    assert_eq!(first.gpus[1].profiles, m.profiles(1).unwrap());
    b.profiles(0).unwrap();
    assert_eq!(fake.calls("nvmlDeviceGetGpuInstanceRemainingCapacity"), 7);
}

#[test]
fn the_snapshot_equals_the_per_call_listing_with_live_remaining_capacity() {
    // Instances of several shapes on two H100s, one with a +me profile, and a GPU with MIG off.
    let fake = FakeNvml::new("h100-80gb:2,a30-24gb:1:mig-off");
    let mut b = fake.backend();
    let steps: &[&[(u32, u32, u32)]] = &[
        &[],
        &[(1, 9, 4)],
        &[(0, 19, 0), (0, 19, 1), (0, 14, 2)],
        &[(0, 20, 6), (1, 5, 0)],
    ];
    for step in steps {
        for &(gpu, profile, start) in *step {
            let gi = b.create_gi(gpu, profile, start).unwrap();
            b.create_default_ci(gpu, gi).unwrap();
        }
        let snap = b.snapshot().unwrap();
        let gpus = b.gpus().unwrap();
        assert_eq!(snap.gpus.len(), gpus.len());
        for (g, info) in snap.gpus.iter().zip(gpus) {
            assert_eq!(g.info, info);
            // What NVML answers, profile by profile (remaining capacity included).
            assert_eq!(
                g.profiles,
                b.profiles(info.index).unwrap(),
                "GPU {} after {step:?}",
                info.index
            );
            assert_eq!(g.instances, b.instances(info.index).unwrap());
        }
    }
}

#[test]
fn profile_tables_are_kept_between_sessions_for_the_same_driver_only() {
    let fake = FakeNvml::new("h100-80gb:2").count("nvmlDeviceGetGpuInstanceProfileInfoV");
    let t = tempfile::tempdir().unwrap();
    let dir = migrun::statedir::StateDir::open(t.path().join("state")).unwrap();
    let first = {
        let mut b = fake.backend();
        b.keep_tables_in(dir.clone());
        b.snapshot().unwrap()
    };
    let probed = fake.calls("nvmlDeviceGetGpuInstanceProfileInfoV");
    assert_eq!(
        probed,
        2 * 18,
        "the first session probes every profile index"
    );
    let kept: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("nvml-profiles-GPU-"))
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");

    // A new session (a new process, in production) reads the kept tables: no probing, the same answers.
    {
        let mut b = fake.backend();
        b.keep_tables_in(dir.clone());
        assert_eq!(b.snapshot().unwrap(), first);
    }
    assert_eq!(fake.calls("nvmlDeviceGetGpuInstanceProfileInfoV"), probed);

    // Another driver version, a malformed file: that GPU is probed again (and its table rewritten).
    let path = dir.path().join(&kept[0]);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["driver"] = "1.2.3".into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    std::fs::write(dir.path().join(&kept[1]), b"{not json").unwrap();
    {
        let mut b = fake.backend();
        b.keep_tables_in(dir.clone());
        assert_eq!(b.snapshot().unwrap(), first);
    }
    assert_eq!(
        fake.calls("nvmlDeviceGetGpuInstanceProfileInfoV"),
        2 * probed
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_ne!(v["driver"], "1.2.3", "rewritten for the running driver");
}
