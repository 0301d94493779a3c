//! Unit tests of the simulated machine: specs, creation rules, placements, MIG mode changes.
use super::*;

fn h100() -> SimMachine {
    SimMachine::new(&"h100-80gb".parse().unwrap())
}
fn id_of(m: &SimMachine, name: &str) -> u32 {
    m.profiles(0)
        .unwrap()
        .iter()
        .find(|p| p.short_name() == name)
        .unwrap()
        .id
}
fn free(m: &SimMachine, name: &str) -> u32 {
    m.profiles(0)
        .unwrap()
        .iter()
        .find(|p| p.short_name() == name)
        .unwrap()
        .remaining
}

#[test]
fn spec_grammar() {
    let s: SimSpec = "a100-40gb:2,h100-80gb:1:mig-off".parse().unwrap();
    assert_eq!(s.to_string(), "a100-40gb:2,h100-80gb:1:mig-off");
    assert_eq!(SimMachine::new(&s).gpus.len(), 3);
    assert_eq!(
        "h100-80gb".parse::<SimSpec>().unwrap().to_string(),
        "h100-80gb:1"
    );
    for bad in [
        "",
        "h100-80gb:0",
        "h100-80gb:x",
        "h100-80gb:2:2",
        "h100-80gb:mig-maybe",
        "nope:1",
        "h100-80gb,,a30-24gb",
        "h100-80gb:65",
        "gh200-144gb",
    ] {
        assert!(bad.parse::<SimSpec>().is_err(), "{bad:?} accepted");
    }
}

#[test]
fn seven_1g_fit_and_an_eighth_does_not() {
    let mut m = h100();
    let one = id_of(&m, "1g.10gb");
    for s in 0..7 {
        m.create_gi(0, one, s).unwrap();
    }
    assert_eq!(free(&m, "1g.10gb"), 0);
    assert_eq!(
        m.create_gi_anywhere(0, one),
        Err(Code::InsufficientResources)
    );
}

#[test]
fn two_3g_fit_but_not_a_third() {
    let mut m = h100();
    let three = id_of(&m, "3g.40gb");
    m.create_gi(0, three, 0).unwrap();
    m.create_gi(0, three, 4).unwrap();
    assert_eq!(m.create_gi(0, three, 0), Err(Code::InsufficientResources));
    assert_eq!(free(&m, "3g.40gb"), 0);
    assert_eq!(m.create_gi(0, three, 2), Err(Code::InvalidArgument));
}

#[test]
fn after_1g_at_slot_4_3g_fits_only_at_0() {
    let mut m = h100();
    m.create_gi(0, id_of(&m, "1g.10gb"), 4).unwrap();
    let three = id_of(&m, "3g.40gb");
    assert_eq!(free(&m, "3g.40gb"), 1);
    assert_eq!(m.create_gi(0, three, 4), Err(Code::InsufficientResources));
    m.create_gi(0, three, 0).unwrap();
}

#[test]
fn one_media_extension_instance_per_gpu() {
    let mut m = h100();
    let me = id_of(&m, "1g.10gb+me");
    m.create_gi(0, me, 0).unwrap();
    assert_eq!(free(&m, "1g.10gb+me"), 0);
    assert_eq!(m.create_gi(0, me, 1), Err(Code::InsufficientResources));
}

#[test]
fn me_all_blocks_everything_but_no_me() {
    let mut m = SimMachine::new(&"rtx-pro-6000".parse().unwrap());
    let id = |m: &SimMachine, n: &str| {
        m.profiles(0)
            .unwrap()
            .iter()
            .find(|p| p.short_name() == n)
            .unwrap()
            .id
    };
    let all = id(&m, "1g.24gb+me.all");
    m.create_gi(0, all, 0).unwrap();
    assert_eq!(
        m.create_gi(0, id(&m, "1g.24gb"), 3),
        Err(Code::InsufficientResources)
    );
    m.create_gi(0, id(&m, "1g.24gb-me"), 3).unwrap();
}

#[test]
fn destroy_order_and_mig_off() {
    let mut m = h100();
    let gi = m.create_gi(0, id_of(&m, "2g.20gb"), 2).unwrap();
    let ci = m.create_default_ci(0, gi).unwrap();
    assert!(ci.mig_uuid.starts_with("MIG-"));
    assert_eq!(m.instances(0).unwrap()[0].mig_uuid(), Some(&*ci.mig_uuid));
    assert_eq!(m.destroy_gi(0, gi), Err(Code::InUse));
    m.set_processes(0, gi, 1).unwrap();
    assert_eq!(m.destroy_ci(0, gi, ci.id), Err(Code::InUse));
    m.set_processes(0, gi, 0).unwrap();
    m.destroy_ci(0, gi, ci.id).unwrap();
    m.destroy_gi(0, gi).unwrap();

    let mut off = SimMachine::new(&"h100-80gb:1:mig-off".parse().unwrap());
    assert_eq!(off.create_gi(0, 9, 0), Err(Code::NotSupported));
    // Profile info still works with MIG off, as on the real H100.
    assert_eq!(off.profiles(0).unwrap().len(), 7);
}

#[test]
fn mode_change_pends_until_reset() {
    let mut m = SimMachine::new(&"a30-24gb:1:mig-off".parse().unwrap());
    let mode = m.set_mig_mode(0, true).unwrap();
    assert!(!mode.current && mode.pending);
    assert!(m.reset_gpu(0).unwrap().current);
    let gi = m.create_gi(0, 0, 0).unwrap();
    assert_eq!(m.set_mig_mode(0, false), Err(Code::InUse));
    m.destroy_gi(0, gi).unwrap();
    m.set_mig_mode(0, false).unwrap();
    assert!(!m.reset_gpu(0).unwrap().current);
}

/// Found by fuzz/fuzz_targets/simspec.rs: the bad group was quoted raw, so a newline in
/// `--simulate` split the one-line error.
#[test]
fn spec_errors_stay_one_line() {
    for bad in ["a100-40gb:x\ny", "h100-80gb:0\r", "h100-80gb:::\n"] {
        let e = bad.parse::<SimSpec>().unwrap_err().to_string();
        assert!(!e.contains(['\n', '\r']), "{e:?}");
    }
    let e = "h100-80gb:0".parse::<SimSpec>().unwrap_err().to_string();
    assert!(
        e.contains("h100-80gb:0: GPU count must be at least 1"),
        "{e}"
    );
}

#[test]
fn uuids_are_stable_and_distinct() {
    let mut m = h100();
    let gi = m.create_gi(0, 19, 0).unwrap();
    let a = m.create_default_ci(0, gi).unwrap().mig_uuid;
    assert_eq!(m.instances(0).unwrap()[0].mig_uuid(), Some(&*a));
    m.destroy_ci(0, gi, 0).unwrap();
    m.destroy_gi(0, gi).unwrap();
    let gi = m.create_gi(0, 19, 0).unwrap();
    let b = m.create_default_ci(0, gi).unwrap().mig_uuid;
    assert_ne!(a, b, "a re-created instance gets a new UUID");
    assert_eq!(a.len(), "MIG-".len() + 36);
}
