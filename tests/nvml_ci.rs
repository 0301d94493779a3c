//! Compute instances through the real NVML backend on the fake libnvidia-ml.so: a GPU instance's CI profiles and placements, three `1c.3g.40gb` in one `3g.40gb` with their own MIG UUIDs, NVML's refusals (overlap, count, bad placement, IN_USE), all equal to the simulator's answers.

mod common;

use common::fake_nvml::FakeNvml;
use migrun::gpu::{Backend, Code, GpuError};

fn code_of(e: &GpuError) -> Code {
    e.code()
        .unwrap_or_else(|| panic!("expected an NVML error, got: {e}"))
}

/// The ID of GPU 0's GI profile `name`.
fn gi_profile(b: &mut dyn Backend, name: &str) -> u32 {
    b.profiles(0)
        .unwrap()
        .iter()
        .find(|p| p.short_name() == name)
        .unwrap_or_else(|| panic!("{name}"))
        .id
}

#[test]
fn three_1c_in_one_3g_through_nvml() {
    let fake = FakeNvml::new("a100-80gb:1");
    let mut b = fake.backend();
    let three = gi_profile(&mut *b, "3g.40gb");
    let gi = b.create_gi(0, three, 0).unwrap();

    // The CI profiles NVML reports are the simulator's (from the tables), with placements inside the GI.
    let profiles = b.ci_profiles(0, gi).unwrap();
    assert_eq!(profiles, fake.machine().ci_profiles(0, gi).unwrap());
    let one = profiles.iter().find(|p| p.slice_count == 1).unwrap();
    assert_eq!((one.instance_count, one.remaining), (3, 3));
    let starts: Vec<u32> = one.placements.iter().map(|p| p.start).collect();
    assert_eq!(starts, [0, 1, 2]);
    let one = one.id;

    let mut made = Vec::new();
    for start in [2, 0, 1] {
        let ci = b.create_ci(0, gi, one, start).unwrap();
        assert!(ci.mig_uuid.starts_with("MIG-"), "{}", ci.mig_uuid);
        made.push(ci);
    }
    // Each is its own MIG device, listed with its GI under the UUID the driver reports.
    let listed = b.compute_instances(0, gi).unwrap();
    assert_eq!(listed.len(), 3);
    let mut uuids: Vec<&str> = listed.iter().map(|c| c.mig_uuid.as_str()).collect();
    uuids.sort();
    uuids.dedup();
    assert_eq!(uuids.len(), 3);
    for c in &made {
        assert!(listed.contains(c), "{c:?} in {listed:?}");
    }
    assert_eq!(
        b.instances(0).unwrap(),
        fake.machine().instances(0).unwrap()
    );
    // Where each sits, as NVML's compute-instance info reports it.
    let placed = b.ci_placements(0, gi).unwrap();
    assert_eq!(placed, fake.machine().ci_placements(0, gi).unwrap());
    let slices: Vec<(u32, u32)> = placed
        .iter()
        .map(|c| (c.placement.start, c.placement.size))
        .collect();
    assert_eq!(
        slices,
        [(2, 1), (0, 1), (1, 1)],
        "by CI id, in creation order"
    );
    assert!(b
        .ci_profiles(0, gi)
        .unwrap()
        .iter()
        .all(|p| p.remaining == 0));

    // Full: a fourth 1c, the full CI, a taken slice all fail as NVML does.
    let e = b.create_ci(0, gi, one, 1).unwrap_err();
    assert_eq!(code_of(&e), Code::InsufficientResources);
    assert!(e.to_string().contains("GPU instance"), "{e}");
    assert_eq!(
        code_of(&b.create_default_ci(0, gi).unwrap_err()),
        Code::InsufficientResources
    );
    // Not a placement, not a profile: refused before NVML, naming what is valid.
    let e = b.create_ci(0, gi, one, 5).unwrap_err();
    assert_eq!(code_of(&e), Code::InvalidArgument);
    assert!(e.to_string().contains("0:1, 1:1, 2:1"), "{e}");
    assert_eq!(
        code_of(&b.create_ci(0, gi, 77, 0).unwrap_err()),
        Code::InvalidArgument
    );

    // IN_USE: the GI while it holds compute instances, a CI while a process runs on it.
    assert_eq!(code_of(&b.destroy_gi(0, gi).unwrap_err()), Code::InUse);
    let busy = made[0].id;
    fake.update(|m| m.set_ci_processes(0, gi, busy, 1).unwrap());
    let procs: Vec<(u32, u32)> = b
        .compute_instances(0, gi)
        .unwrap()
        .iter()
        .map(|c| (c.id, c.processes))
        .collect();
    assert!(
        procs.contains(&(busy, 1)) && procs.iter().map(|p| p.1).sum::<u32>() == 1,
        "{procs:?}"
    );
    assert_eq!(
        code_of(&b.destroy_ci(0, gi, busy).unwrap_err()),
        Code::InUse
    );
    for c in &made[1..] {
        b.destroy_ci(0, gi, c.id).unwrap();
    }
    fake.update(|m| m.set_ci_processes(0, gi, busy, 0).unwrap());
    b.destroy_ci(0, gi, busy).unwrap();
    b.destroy_gi(0, gi).unwrap();
    assert!(b.instances(0).unwrap().is_empty());
    assert_eq!(
        code_of(&b.compute_instances(0, gi).unwrap_err()),
        Code::NotFound
    );
}

#[test]
fn a_model_without_ci_rows_offers_only_the_full_ci() {
    // H100: the tables know 1c.3g.40gb exists, not its ID or count: nothing smaller is served.
    let fake = FakeNvml::new("h100-80gb:1");
    let mut b = fake.backend();
    let three = gi_profile(&mut *b, "3g.40gb");
    let gi = b.create_gi(0, three, 4).unwrap();
    let profiles = b.ci_profiles(0, gi).unwrap();
    assert_eq!(profiles.len(), 1, "{profiles:?}");
    assert_eq!(profiles[0].slice_count, 3);
    let ci = b.create_ci(0, gi, profiles[0].id, 0).unwrap();
    assert_eq!(b.compute_instances(0, gi).unwrap(), vec![ci]);
}

// The allocator's compute-instance scenarios (tests/alloc_ci.rs) again, through the NVML backend.

mod alloc_support;

use alloc_support::{ci_scenarios, Sim};

/// A machine behind the fake NVML, with its state file on a tmpfs like the rest of the test state.
fn fake(spec: &str) -> Sim {
    let dir = alloc_support::fast_tempdir();
    let state = dir.path().join("fake-nvml.json");
    let f = FakeNvml::new(spec).with_var("MIGRUN_FAKE_NVML_STATE", &state.display().to_string());
    Sim::through(spec, f.env(), state, Box::new((f, dir)))
}

fn a100() -> Sim {
    fake("a100-80gb")
}

#[test]
fn alloc_three_share_one_gpu_instance_and_a_fourth_goes_next_through_nvml() {
    ci_scenarios::three_fill_one_fourth_goes_next(&a100());
}

#[test]
fn alloc_releasing_in_every_order_leaves_nothing_through_nvml() {
    ci_scenarios::release_in_every_order(&a100);
}

#[test]
fn alloc_sixteen_at_once_never_over_fill_through_nvml() {
    ci_scenarios::race_16(&fake("a100-80gb:2"));
}

#[test]
fn alloc_killed_at_every_step_then_gc_repairs_through_nvml() {
    ci_scenarios::killed_during_ci_allocate(&a100, true);
    ci_scenarios::killed_during_ci_release(&a100);
}

/// Compute-instance creates overlap outside the lock through NVML too (the fake library's latency model).
#[test]
fn parallel_compute_instance_creates_overlap_through_nvml() {
    ci_scenarios::parallel_creates_overlap(&fake("a100-80gb:1"));
}

/// A failed compute-instance create through NVML releases its reservation.
#[test]
fn a_failed_compute_instance_create_through_nvml_releases_its_reservation() {
    ci_scenarios::failed_create_releases_its_reservation(
        &a100(),
        (
            "MIGRUN_FAKE_NVML_FAIL",
            "nvmlGpuInstanceCreateComputeInstanceWithPlacement:INSUFFICIENT_RESOURCES",
        ),
    );
}
