//! The fake's C contract, called as C callers would: init/shutdown, two-phase lists, short buffers, struct versions, bad handles; it must not test migrun itself.
#![allow(clippy::undocumented_unsafe_blocks)]

use super::*;
use std::ptr::null_mut;

static ENV: Mutex<()> = Mutex::new(());

/// A session on a fresh machine; `extra` sets more MIGRUN_FAKE_NVML_* variables.
struct Fixture {
    _dir: tempfile::TempDir,
    _guard: MutexGuard<'static, ()>,
}

impl Fixture {
    fn new(spec: &str, extra: &[(&str, &str)]) -> Fixture {
        let guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        for k in [
            "MIGRUN_FAKE_NVML_FAIL",
            "MIGRUN_FAKE_NVML_COUNT",
            "MIGRUN_FAKE_NVML_NONROOT",
            "MIGRUN_FAKE_NVML_NOMIG",
        ] {
            std::env::remove_var(k);
        }
        std::env::set_var("MIGRUN_FAKE_NVML", spec);
        std::env::set_var("MIGRUN_FAKE_NVML_STATE", dir.path().join("m.json"));
        for (k, v) in extra {
            std::env::set_var(k, v);
        }
        assert_eq!(nvmlInit_v2(), SUCCESS);
        Fixture {
            _dir: dir,
            _guard: guard,
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        while nvmlShutdown() == SUCCESS {}
    }
}

fn dev(i: u32) -> nvmlDevice_t {
    let mut d = null_mut();
    assert_eq!(unsafe { nvmlDeviceGetHandleByIndex_v2(i, &mut d) }, SUCCESS);
    d
}

#[test]
fn calls_before_init_and_after_shutdown_are_uninitialized() {
    let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let mut n = 0;
    assert_eq!(unsafe { nvmlDeviceGetCount_v2(&mut n) }, UNINITIALIZED);
    assert_eq!(nvmlShutdown(), UNINITIALIZED);
    std::env::remove_var("MIGRUN_FAKE_NVML");
    assert_eq!(nvmlInit_v2(), DRIVER_NOT_LOADED, "unconfigured");
}

#[test]
fn init_is_reference_counted() {
    let _f = Fixture::new("h100-80gb:2", &[]);
    assert_eq!(nvmlInitWithFlags(0), SUCCESS);
    assert_eq!(nvmlShutdown(), SUCCESS);
    let mut n = 0;
    assert_eq!(unsafe { nvmlDeviceGetCount_v2(&mut n) }, SUCCESS);
    assert_eq!(n, 2);
    assert_eq!(nvmlShutdown(), SUCCESS);
    assert_eq!(unsafe { nvmlDeviceGetCount_v2(&mut n) }, UNINITIALIZED);
}

#[test]
fn strings_need_room_for_their_nul() {
    let _f = Fixture::new("h100-80gb", &[]);
    let d = dev(0);
    let name = "NVIDIA H100 80GB HBM3";
    let mut buf = [0 as c_char; 64];
    let short = name.len() as c_uint;
    assert_eq!(
        unsafe { nvmlDeviceGetName(d, buf.as_mut_ptr(), short) },
        INSUFFICIENT_SIZE
    );
    assert_eq!(
        unsafe { nvmlDeviceGetName(d, buf.as_mut_ptr(), short + 1) },
        SUCCESS
    );
    assert_eq!(
        unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap(),
        name
    );
    assert_eq!(
        unsafe { nvmlDeviceGetName(d, null_mut(), 64) },
        INVALID_ARGUMENT
    );
    let mut v = [0 as c_char; 80];
    assert_eq!(
        unsafe { nvmlSystemGetDriverVersion(v.as_mut_ptr(), 80) },
        SUCCESS
    );
    assert!(!nvmlErrorString(23).is_null());
}

#[test]
fn lists_are_two_phase_and_short_buffers_say_so() {
    let _f = Fixture::new("h100-80gb", &[]);
    let d = dev(0);
    // Placements of 1g.10gb (ID 19): NULL returns the count.
    let mut n: c_uint = 0;
    let call = |arr: *mut nvmlGpuInstancePlacement_t, n: *mut c_uint| unsafe {
        nvmlDeviceGetGpuInstancePossiblePlacements_v2(d, 19, arr, n)
    };
    assert_eq!(call(null_mut(), &mut n), SUCCESS);
    assert_eq!(n, 7);
    let mut buf = vec![nvmlGpuInstancePlacement_t { start: 0, size: 0 }; 7];
    let mut short: c_uint = 3;
    assert_eq!(call(buf.as_mut_ptr(), &mut short), INSUFFICIENT_SIZE);
    assert_eq!(short, 7, "the needed size comes back");
    let mut full: c_uint = 7;
    assert_eq!(call(buf.as_mut_ptr(), &mut full), SUCCESS);
    assert_eq!((buf[6].start, buf[6].size), (6, 1));
    assert_eq!(call(buf.as_mut_ptr(), null_mut()), INVALID_ARGUMENT);

    // GPU instances: same two phases.
    let mut gi = null_mut();
    let p = nvmlGpuInstancePlacement_t { start: 4, size: 4 };
    assert_eq!(
        unsafe { nvmlDeviceCreateGpuInstanceWithPlacement(d, 9, &p, &mut gi) },
        SUCCESS
    );
    let mut n: c_uint = 0;
    assert_eq!(
        unsafe { nvmlDeviceGetGpuInstances(d, 9, null_mut(), &mut n) },
        SUCCESS
    );
    assert_eq!(n, 1);
    let mut h = [null_mut(); 2];
    let mut zero: c_uint = 0;
    assert_eq!(
        unsafe { nvmlDeviceGetGpuInstances(d, 9, h.as_mut_ptr(), &mut zero) },
        INSUFFICIENT_SIZE
    );
    let mut two: c_uint = 2;
    assert_eq!(
        unsafe { nvmlDeviceGetGpuInstances(d, 9, h.as_mut_ptr(), &mut two) },
        SUCCESS
    );
    assert_eq!((two, h[0]), (1, gi));

    // Processes: NVML's own convention, INSUFFICIENT_SIZE with the count when anything runs.
    let mut n: c_uint = 0;
    assert_eq!(
        unsafe { nvmlDeviceGetComputeRunningProcesses_v3(d, &mut n, null_mut()) },
        SUCCESS
    );
    assert_eq!(n, 0);
    let id = Handle::from_ptr(gi).unwrap().gi;
    let store = SimStore::new(session().as_ref().unwrap().cfg.state.clone());
    let spec = session().as_ref().unwrap().cfg.spec.clone();
    store
        .update(&spec, |m| m.set_processes(0, id, 2).unwrap())
        .unwrap();
    assert_eq!(
        unsafe { nvmlDeviceGetComputeRunningProcesses_v3(d, &mut n, null_mut()) },
        INSUFFICIENT_SIZE
    );
    assert_eq!(n, 2);
    let mut infos = vec![
        nvmlProcessInfo_t {
            pid: 0,
            usedGpuMemory: 0,
            gpuInstanceId: 0,
            computeInstanceId: 0
        };
        2
    ];
    assert_eq!(
        unsafe { nvmlDeviceGetComputeRunningProcesses_v3(d, &mut n, infos.as_mut_ptr()) },
        SUCCESS
    );
    assert!(infos.iter().all(|p| p.gpuInstanceId == id));
}

#[test]
fn struct_versions_are_checked() {
    let _f = Fixture::new("h100-80gb", &[]);
    let d = dev(0);
    let mut info: nvmlGpuInstanceProfileInfo_v2_t = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { nvmlDeviceGetGpuInstanceProfileInfoV(d, 2, &mut info) },
        VERSION_MISMATCH
    );
    info.version = struct_version::<nvmlGpuInstanceProfileInfo_v2_t>(2);
    assert_eq!(
        unsafe { nvmlDeviceGetGpuInstanceProfileInfoV(d, 2, &mut info) },
        SUCCESS
    );
    assert_eq!((info.id, info.sliceCount, info.memorySizeMB), (9, 3, 40448));
    assert_eq!(
        unsafe { CStr::from_ptr(info.name.as_ptr()) }
            .to_str()
            .unwrap(),
        "MIG 3g.40gb"
    );
    let mut v3: nvmlGpuInstanceProfileInfo_v3_t = unsafe { std::mem::zeroed() };
    v3.version = struct_version::<nvmlGpuInstanceProfileInfo_v3_t>(3);
    let p = (&mut v3 as *mut nvmlGpuInstanceProfileInfo_v3_t).cast();
    assert_eq!(
        unsafe { nvmlDeviceGetGpuInstanceProfileInfoV(d, 4, p) },
        SUCCESS
    );
    assert_eq!((v3.id, v3.sliceCount), (0, 7));
    // Index 5 is not an H100 profile; 17 is past nvml.h's table.
    assert_eq!(
        unsafe { nvmlDeviceGetGpuInstanceProfileInfoV(d, 5, &mut info) },
        NOT_SUPPORTED
    );
    assert_eq!(
        unsafe { nvmlDeviceGetGpuInstanceProfileInfoV(d, 17, &mut info) },
        INVALID_ARGUMENT
    );
    let mut mem: nvmlMemory_v2_t = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { nvmlDeviceGetMemoryInfo_v2(d, &mut mem) },
        VERSION_MISMATCH
    );
}

#[test]
fn garbage_and_stale_handles_are_refused_not_trusted() {
    let _f = Fixture::new("h100-80gb", &[]);
    let mut mode = (0, 0);
    let garbage = 0xdead_beef_usize as nvmlDevice_t;
    for h in [null_mut(), garbage] {
        assert_eq!(
            unsafe { nvmlDeviceGetMigMode(h, &mut mode.0, &mut mode.1) },
            INVALID_ARGUMENT
        );
    }
    let d = dev(0);
    assert_eq!(
        unsafe { nvmlDeviceGetMigMode(d, null_mut(), &mut mode.1) },
        INVALID_ARGUMENT
    );
    let mut gi = null_mut();
    assert_eq!(
        unsafe { nvmlDeviceCreateGpuInstance(d, 0, &mut gi) },
        SUCCESS
    );
    assert_eq!(unsafe { nvmlGpuInstanceDestroy(gi) }, SUCCESS);
    let mut info: nvmlGpuInstanceInfo_t = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { nvmlGpuInstanceGetInfo(gi, &mut info) },
        INVALID_ARGUMENT,
        "stale"
    );
    assert_eq!(
        unsafe { nvmlGpuInstanceDestroy(d.cast()) },
        INVALID_ARGUMENT,
        "wrong kind"
    );
}

#[test]
fn compute_instances_at_placements_inside_a_gi() {
    let _f = Fixture::new("a100-80gb", &[]);
    let d = dev(0);
    let mut gi = null_mut();
    // A100-80GB 3g.40gb is ID 9 at {0,4}:4; its 1c.3g.40gb is CI profile ID 0, three of them.
    let p = nvmlGpuInstancePlacement_t { start: 0, size: 4 };
    assert_eq!(
        unsafe { nvmlDeviceCreateGpuInstanceWithPlacement(d, 9, &p, &mut gi) },
        SUCCESS
    );
    let mut count = 0;
    let list = nvmlGpuInstanceGetComputeInstancePossiblePlacements;
    assert_eq!(unsafe { list(gi, 0, null_mut(), &mut count) }, SUCCESS);
    assert_eq!(count, 3);
    let empty = nvmlComputeInstancePlacement_t { start: 0, size: 0 };
    let mut buf = [empty; 3];
    let mut short = 2;
    assert_eq!(
        unsafe { list(gi, 0, buf.as_mut_ptr(), &mut short) },
        INSUFFICIENT_SIZE
    );
    assert_eq!(
        unsafe { list(gi, 0, buf.as_mut_ptr(), &mut count) },
        SUCCESS
    );
    let got: Vec<(u32, u32)> = buf.iter().map(|p| (p.start, p.size)).collect();
    assert_eq!(got, [(0, 1), (1, 1), (2, 1)]);
    assert_eq!(
        unsafe { list(gi, 9, null_mut(), &mut count) },
        INVALID_ARGUMENT
    );

    let create = nvmlGpuInstanceCreateComputeInstanceWithPlacement;
    let mut ci = null_mut();
    let at = |start, size| nvmlComputeInstancePlacement_t { start, size };
    assert_eq!(
        unsafe { create(gi, 0, std::ptr::null(), &mut ci) },
        INVALID_ARGUMENT
    );
    assert_eq!(
        unsafe { create(gi, 0, &at(1, 2), &mut ci) },
        INVALID_ARGUMENT
    );
    assert_eq!(unsafe { create(gi, 0, &at(1, 1), &mut ci) }, SUCCESS);
    let mut info: nvmlComputeInstanceInfo_t = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { nvmlComputeInstanceGetInfo_v2(ci, &mut info) },
        SUCCESS
    );
    assert_eq!(
        (
            info.id,
            info.profileId,
            info.placement.start,
            info.placement.size
        ),
        (0, 0, 1, 1)
    );
    let mut left = 0;
    let remaining = nvmlGpuInstanceGetComputeInstanceRemainingCapacity;
    assert_eq!(unsafe { remaining(gi, 0, &mut left) }, SUCCESS);
    assert_eq!(left, 2);
    // The 2c (0:2) overlaps slice 1.
    assert_eq!(
        unsafe { create(gi, 1, &at(0, 2), &mut ci.clone()) },
        nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES
    );
    let mut any = null_mut();
    assert_eq!(
        unsafe { nvmlGpuInstanceCreateComputeInstance(gi, 0, &mut any) },
        SUCCESS
    );
    // Listing by profile: two 1c, no full one.
    let mut n = 0;
    let cis = nvmlGpuInstanceGetComputeInstances;
    assert_eq!(unsafe { cis(gi, 0, null_mut(), &mut n) }, SUCCESS);
    assert_eq!(n, 2);
    assert_eq!(unsafe { cis(gi, 2, null_mut(), &mut n) }, SUCCESS);
    assert_eq!(n, 0);
    assert_eq!(
        unsafe { nvmlGpuInstanceDestroy(gi) },
        nvmlReturn_enum_NVML_ERROR_IN_USE
    );
    assert_eq!(unsafe { nvmlComputeInstanceDestroy(ci) }, SUCCESS);
    assert_eq!(unsafe { nvmlComputeInstanceDestroy(any) }, SUCCESS);
    assert_eq!(unsafe { nvmlGpuInstanceDestroy(gi) }, SUCCESS);
}

#[test]
fn mig_devices_lead_back_to_their_instances() {
    let _f = Fixture::new("a100-40gb", &[]);
    let d = dev(0);
    let mut gi = null_mut();
    let p = nvmlGpuInstancePlacement_t { start: 4, size: 4 };
    // A100-40GB 3g.20gb is ID 9 at {0,4}:4.
    assert_eq!(
        unsafe { nvmlDeviceCreateGpuInstanceWithPlacement(d, 9, &p, &mut gi) },
        SUCCESS
    );
    let mut cip: nvmlComputeInstanceProfileInfo_t = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, 2, 0, &mut cip) },
        SUCCESS
    );
    assert_eq!((cip.sliceCount, cip.instanceCount), (3, 1));
    let mut ci = null_mut();
    // The tables know no smaller CI of an A100-40GB: only the full-GI one is offered.
    assert_eq!(
        unsafe { nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, 0, 0, &mut cip.clone()) },
        NOT_SUPPORTED
    );
    assert_eq!(
        unsafe { nvmlGpuInstanceCreateComputeInstance(gi, 0, &mut ci) },
        INVALID_ARGUMENT
    );
    assert_eq!(
        unsafe { nvmlGpuInstanceCreateComputeInstance(gi, cip.id, &mut ci) },
        SUCCESS
    );
    let mut mig = null_mut();
    assert_eq!(
        unsafe { nvmlDeviceGetMigDeviceHandleByIndex(d, 0, &mut mig) },
        SUCCESS
    );
    assert_eq!(
        unsafe { nvmlDeviceGetMigDeviceHandleByIndex(d, 1, &mut mig.clone()) },
        NOT_FOUND
    );
    let (mut g, mut c, mut is) = (0, 0, 0);
    unsafe {
        assert_eq!(nvmlDeviceGetGpuInstanceId(mig, &mut g), SUCCESS);
        assert_eq!(nvmlDeviceGetComputeInstanceId(mig, &mut c), SUCCESS);
        assert_eq!(nvmlDeviceIsMigDeviceHandle(mig, &mut is), SUCCESS);
        assert_eq!(nvmlDeviceGetGpuInstanceId(d, &mut g.clone()), NOT_SUPPORTED);
    }
    let mut info: nvmlGpuInstanceInfo_t = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { nvmlGpuInstanceGetInfo(gi, &mut info) }, SUCCESS);
    assert_eq!(
        (g, c, is, info.id, info.placement.start),
        (info.id, 0, 1, info.id, 4)
    );
    let mut parent = null_mut();
    assert_eq!(
        unsafe { nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig, &mut parent) },
        SUCCESS
    );
    assert_eq!(parent, d);
    let mut name = [0 as c_char; 96];
    assert_eq!(
        unsafe { nvmlDeviceGetName(mig, name.as_mut_ptr(), 96) },
        SUCCESS
    );
    assert_eq!(
        unsafe { CStr::from_ptr(name.as_ptr()) }.to_str().unwrap(),
        "NVIDIA A100-SXM4-40GB MIG 3g.20gb"
    );
    assert_eq!(
        unsafe { nvmlGpuInstanceDestroy(gi) },
        nvmlReturn_enum_NVML_ERROR_IN_USE
    );
    assert_eq!(unsafe { nvmlComputeInstanceDestroy(ci) }, SUCCESS);
    assert_eq!(unsafe { nvmlGpuInstanceDestroy(gi) }, SUCCESS);
}

#[test]
fn permission_mig_off_and_non_mig_gpus() {
    let _f = Fixture::new(
        "h100-80gb:2:mig-off",
        &[
            ("MIGRUN_FAKE_NVML_NOMIG", "1"),
            ("MIGRUN_FAKE_NVML_NONROOT", "1"),
        ],
    );
    let (d0, d1) = (dev(0), dev(1));
    let (mut cur, mut pend) = (9, 9);
    assert_eq!(
        unsafe { nvmlDeviceGetMigMode(d0, &mut cur, &mut pend) },
        SUCCESS
    );
    assert_eq!((cur, pend), (0, 0));
    assert_eq!(
        unsafe { nvmlDeviceGetMigMode(d1, &mut cur, &mut pend) },
        NOT_SUPPORTED
    );
    let mut gi = null_mut();
    assert_eq!(
        unsafe { nvmlDeviceCreateGpuInstance(d0, 9, &mut gi) },
        NO_PERMISSION
    );
    let mut status = 0;
    assert_eq!(
        unsafe { nvmlDeviceSetMigMode(d0, 1, &mut status) },
        NO_PERMISSION
    );
    drop(_f);
    let _f = Fixture::new("h100-80gb:1:mig-off", &[]);
    let d0 = dev(0);
    assert_eq!(
        unsafe { nvmlDeviceCreateGpuInstance(d0, 9, &mut gi) },
        NOT_SUPPORTED
    );
    assert_eq!(unsafe { nvmlDeviceSetMigMode(d0, 1, &mut status) }, SUCCESS);
    assert_eq!(status, RESET_REQUIRED);
    assert_eq!(
        unsafe { nvmlDeviceGetMigMode(d0, &mut cur, &mut pend) },
        SUCCESS
    );
    assert_eq!((cur, pend), (0, 1));
}

#[test]
fn injected_failures_count_across_sessions() {
    let f = Fixture::new(
        "h100-80gb",
        &[(
            "MIGRUN_FAKE_NVML_FAIL",
            "nvmlDeviceGetCount_v2:GPU_IS_LOST:2-3,nvmlInit_v2:9:3",
        )],
    );
    let mut n = 0;
    assert_eq!(unsafe { nvmlDeviceGetCount_v2(&mut n) }, SUCCESS);
    assert_eq!(unsafe { nvmlDeviceGetCount_v2(&mut n) }, 15);
    // A new session (a new process, as far as the counters know) keeps counting.
    assert_eq!(nvmlShutdown(), SUCCESS);
    assert_eq!(nvmlInit_v2(), SUCCESS);
    assert_eq!(unsafe { nvmlDeviceGetCount_v2(&mut n) }, 15);
    assert_eq!(unsafe { nvmlDeviceGetCount_v2(&mut n) }, SUCCESS);
    assert_eq!(nvmlShutdown(), SUCCESS);
    assert_eq!(nvmlInit_v2(), DRIVER_NOT_LOADED, "third init injected");
    assert_eq!(nvmlInit_v2(), SUCCESS);
    drop(f);
}
