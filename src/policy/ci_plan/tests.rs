//! Table tests of the compute-instance planner on simulated A100 80GB GPUs (the model whose CI rows the tables know).
use super::*;
use crate::gpu::sim::SimMachine;
use crate::policy::test_support::state_of;

/// A100-80GB: 3g.40gb is GI profile 9 at {0,4}:4, 4g.40gb is 5 at 0:4.
const THREE: u32 = 9;
const FOUR: u32 = 5;

fn machine(gpus: u32) -> SimMachine {
    SimMachine::new(&format!("a100-80gb:{gpus}").parse().unwrap())
}
fn ci(name: &str) -> CiProfileName {
    name.parse().unwrap()
}
fn req(name: &str, user: &str) -> CiRequest {
    CiRequest {
        ci: ci(name),
        user: user.into(),
        share_across_users: false,
        gpus: None,
    }
}
/// The sharing GI `gi` of `gpu` as the allocator would list it, held by `users`.
fn shared(m: &SimMachine, gpu: u32, gi: u32, users: &[&str]) -> SharedGi {
    SharedGi {
        gpu,
        gi,
        users: users.iter().map(|u| u.to_string()).collect(),
        profiles: m.ci_profiles(gpu, gi).unwrap(),
        taken: m
            .ci_placements(gpu, gi)
            .unwrap()
            .iter()
            .map(|c| c.placement)
            .collect(),
    }
}
/// Carry out a plan on the simulator; returns (gpu, gi) the compute instance went into.
fn apply(m: &mut SimMachine, plan: &CiPlan, name: &str) -> (u32, u32) {
    match *plan {
        CiPlan::Into {
            gpu,
            gi,
            profile_id,
            start,
        } => {
            m.create_ci(gpu, gi, profile_id, start).unwrap();
            (gpu, gi)
        }
        CiPlan::NewGi(c) => {
            let gi = m.create_gi(c.gpu, c.profile_id, c.placement.start).unwrap();
            let slices = ci(name).ci_slices;
            let id = m
                .ci_profiles(c.gpu, gi)
                .unwrap()
                .iter()
                .find(|p| p.slice_count == slices)
                .unwrap()
                .id;
            m.create_ci_anywhere(c.gpu, gi, id).unwrap();
            (c.gpu, gi)
        }
    }
}

#[test]
fn three_1c_share_one_3g_and_a_fourth_opens_the_next() {
    let mut m = machine(1);
    let mut sharing: Vec<(u32, u32)> = Vec::new();
    let mut went = Vec::new();
    for _ in 0..4 {
        let list: Vec<SharedGi> = sharing
            .iter()
            .map(|&(g, gi)| shared(&m, g, gi, &["ann"]))
            .collect();
        let plan = plan_ci(&state_of(&m), &list, &req("1c.3g.40gb", "ann")).unwrap();
        if let CiPlan::NewGi(c) = &plan {
            assert_eq!(c.profile_id, THREE);
        }
        let at = apply(&mut m, &plan, "1c.3g.40gb");
        if !sharing.contains(&at) {
            sharing.push(at);
        }
        went.push(at);
    }
    assert_eq!(went[0], went[1]);
    assert_eq!(went[1], went[2]);
    assert_ne!(went[3], went[0], "the fourth goes to a new 3g.40gb");
    assert_eq!(m.instances(0).unwrap().len(), 2);
    // Both 3g.40gb placements are now taken: a fifth fits in the second, a seventh nowhere.
    for _ in 0..2 {
        let list: Vec<SharedGi> = sharing
            .iter()
            .map(|&(g, gi)| shared(&m, g, gi, &["ann"]))
            .collect();
        let plan = plan_ci(&state_of(&m), &list, &req("1c.3g.40gb", "ann")).unwrap();
        assert!(
            matches!(plan, CiPlan::Into { gi, .. } if gi == went[3].1),
            "{plan:?}"
        );
        apply(&mut m, &plan, "1c.3g.40gb");
    }
    let list: Vec<SharedGi> = sharing
        .iter()
        .map(|&(g, gi)| shared(&m, g, gi, &["ann"]))
        .collect();
    let e = plan_ci(&state_of(&m), &list, &req("1c.3g.40gb", "ann")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("no room for a 1c.3g.40gb compute instance"),
        "{e}"
    );
    assert!(!e.to_string().contains('\n'));
}

#[test]
fn only_listed_sharing_gis_of_the_right_profile_are_filled() {
    let mut m = machine(1);
    // A 3g.40gb held whole (or foreign, or kept): not listed as sharing, so never filled, even with room.
    let whole = m.create_gi(0, THREE, 0).unwrap();
    let one = m.ci_profiles(0, whole).unwrap()[0].id;
    m.create_ci(0, whole, one, 0).unwrap();
    let plan = plan_ci(&state_of(&m), &[], &req("1c.3g.40gb", "ann")).unwrap();
    assert_eq!(
        plan,
        CiPlan::NewGi(Choice {
            gpu: 0,
            profile_id: THREE,
            placement: Placement { start: 4, size: 4 }
        })
    );
    // A sharing 4g.40gb with room does not take a 1c.3g.40gb, nor the reverse.
    let mut m = machine(1);
    let four = m.create_gi(0, FOUR, 0).unwrap();
    let list = [shared(&m, 0, four, &["ann"])];
    let plan = plan_ci(&state_of(&m), &list, &req("1c.3g.40gb", "ann")).unwrap();
    assert!(
        matches!(plan, CiPlan::NewGi(c) if c.profile_id == THREE && c.placement.start == 4),
        "{plan:?}"
    );
    let plan = plan_ci(&state_of(&m), &list, &req("1c.4g.40gb", "ann")).unwrap();
    assert_eq!(
        plan,
        CiPlan::Into {
            gpu: 0,
            gi: four,
            profile_id: 0,
            start: 0
        }
    );
}

#[test]
fn the_fullest_sharing_gi_is_filled_first_and_free_slices_are_found() {
    let mut m = machine(2);
    let a = m.create_gi(0, THREE, 0).unwrap();
    let b = m.create_gi(1, THREE, 0).unwrap();
    m.create_ci(0, a, 0, 0).unwrap();
    m.create_ci(1, b, 0, 0).unwrap();
    m.create_ci(1, b, 0, 2).unwrap();
    let list = [shared(&m, 0, a, &["ann"]), shared(&m, 1, b, &["ann"])];
    // GPU 1's GI holds two: it is filled first, at its free middle slice.
    let plan = plan_ci(&state_of(&m), &list, &req("1c.3g.40gb", "ann")).unwrap();
    assert_eq!(
        plan,
        CiPlan::Into {
            gpu: 1,
            gi: b,
            profile_id: 0,
            start: 1
        }
    );
    // --gpu 0 keeps it there; a 2c.3g.40gb fits in neither (slice 0 taken in both), so a new GI.
    let only0 = CiRequest {
        gpus: Some(vec![0]),
        ..req("1c.3g.40gb", "ann")
    };
    let plan = plan_ci(&state_of(&m), &list, &only0).unwrap();
    assert!(
        matches!(
            plan,
            CiPlan::Into {
                gpu: 0,
                start: 1,
                ..
            }
        ),
        "{plan:?}"
    );
    let plan = plan_ci(&state_of(&m), &list, &req("2c.3g.40gb", "ann")).unwrap();
    assert!(
        matches!(plan, CiPlan::NewGi(c) if c.profile_id == THREE),
        "{plan:?}"
    );
}

#[test]
fn another_users_gi_is_shared_only_when_the_config_allows() {
    let mut m = machine(1);
    let a = m.create_gi(0, THREE, 0).unwrap();
    m.create_ci(0, a, 0, 0).unwrap();
    let b = m.create_gi(0, THREE, 4).unwrap();
    m.create_ci(0, b, 0, 0).unwrap();
    let list = [
        shared(&m, 0, a, &["ann"]),
        shared(&m, 0, b, &["ann", "bob"]),
    ];
    let e = plan_ci(&state_of(&m), &list, &req("1c.3g.40gb", "bob")).unwrap_err();
    assert!(e.others_only, "{e:?}");
    assert!(e.to_string().contains("of yours"), "{e}");
    let mut shared_req = req("1c.3g.40gb", "bob");
    shared_req.share_across_users = true;
    let plan = plan_ci(&state_of(&m), &list, &shared_req).unwrap();
    assert!(
        matches!(plan, CiPlan::Into { gi, start: 1, .. } if gi == a),
        "{plan:?}"
    );
    // Ann shares with herself only; the GI bob also holds is not hers alone.
    let plan = plan_ci(&state_of(&m), &list, &req("1c.3g.40gb", "ann")).unwrap();
    assert!(
        matches!(plan, CiPlan::Into { gi, .. } if gi == a),
        "{plan:?}"
    );
}

/// The planner step the allocator calls ([`plan_want`]): the config's list, the tables and the sharing
/// GPU instances, and a whole request that never takes a sharing GPU instance, even one that looks free.
#[test]
fn plan_want_applies_the_policy_and_keeps_sharing_gis_out_of_whole_requests() {
    use crate::policy::plan::{plan, PlanRequest, Want};
    let mut m = machine(1);
    let want = |name: &str, allowed: Option<&[&str]>| {
        let mut r = PlanRequest::new(Want::parse_profile(name).unwrap());
        if let Some(list) = allowed {
            let mut specs = Vec::new();
            for s in list {
                match Want::parse_profile(s).unwrap() {
                    Want::Ci(c) => r.ci.allowed.push(c),
                    Want::Profile(p) => specs.push(p),
                    Want::MinMemMib(_) => unreachable!(),
                }
            }
            r.allowed = Some(specs);
        }
        r
    };
    let st = state_of(&m);
    // Allowed by its own name or its GPU instance's; refused (a policy refusal on every GPU) otherwise.
    for list in [None, Some(&["1c.3g.40gb"][..]), Some(&["3g.40gb"][..])] {
        let p = plan(&st, &[], &want("1c.3g.40gb", list)).unwrap();
        assert!(
            matches!(p, Plan::NewShared { choice, .. } if choice.profile_id == THREE),
            "{p:?}"
        );
    }
    let e = plan(
        &st,
        &[],
        &want("1c.3g.40gb", Some(&["1g.10gb", "2c.3g.40gb"])),
    )
    .unwrap_err();
    assert!(matches!(&e.gpus[0].why, Why::NotAllowed { .. }), "{e}");
    assert!(!e.can_wait());
    // Naming the compute instance does not allow its whole GPU instance.
    assert!(plan(&st, &[], &want("3g.40gb", Some(&["1c.3g.40gb"][..]))).is_err());
    // Unknown in the tables on this model: no such profile, never a guess.
    let e = plan(&st, &[], &want("1c.7g.80gb", None)).unwrap_err();
    assert_eq!(e.gpus[0].why, Why::NoSuchProfile);

    // A sharing 3g.40gb with one compute instance nobody leases looks like a free whole one.
    let gi = m.create_gi(0, THREE, 4).unwrap();
    let one = m
        .ci_profiles(0, gi)
        .unwrap()
        .iter()
        .find(|p| p.slice_count == 1)
        .unwrap()
        .id;
    m.create_ci(0, gi, one, 0).unwrap();
    let st = state_of(&m);
    let mut whole = want("3g.40gb", None);
    let p = plan(&st, &[], &whole).unwrap();
    assert!(
        matches!(p, Plan::Reuse { gi: g, .. } if g == gi),
        "without the marker it would be reused: {p:?}"
    );
    whole.ci.sharing = vec![(0, gi)];
    let p = plan(&st, &[], &whole).unwrap();
    assert!(
        matches!(&p, Plan::Create(c) if c.placement.start == 0),
        "{p:?}"
    );
    // And a compute-instance request fills it.
    let mut ci = want("1c.3g.40gb", None);
    ci.ci.shared = vec![shared(&m, 0, gi, &[])];
    let p = plan(&st, &[], &ci).unwrap();
    assert!(
        matches!(p, Plan::IntoShared { gi: g, start: 1, .. } if g == gi),
        "{p:?}"
    );
}
