//! Table tests of the planner: reuse versus create, the config's filters, `--min-mem` sizing, and
//! migrun's placements against a driver's own in NVIDIA's example orders.

use super::*;
use crate::gpu::sim::{SimMachine, SimSpec};
use crate::policy::test_support::{lease_on, on, snapshot, state_of, want};
use crate::profile::parse_size_mib;

/// What a plan boils down to for the tables: reuse of (gpu, start) or create on gpu (placement is the policy's).
#[derive(Debug, PartialEq)]
enum Outcome {
    Reuse(u32, u32),
    Create(u32, u32),
    NoRoom,
}

fn outcome(state: &MigState, leases: &[Lease], req: &PlanRequest) -> Outcome {
    match plan(state, leases, req) {
        Ok(Plan::Reuse { gpu, placement, .. }) => Outcome::Reuse(gpu, placement.start),
        Ok(Plan::Create(c)) => {
            // Whatever the policy picks must be a real free placement of the asked profile on that GPU.
            let g = state.gpu(c.gpu).unwrap();
            let p = g.profile_by_id(c.profile_id).unwrap();
            let occ: Vec<Occupant> = g.instances.iter().map(Occupant::from).collect();
            assert!(rules::fits(&g.profiles, &occ, p, &c.placement), "{c:?}");
            if let Want::Profile(spec) = &req.want {
                assert!(crate::gpu::names::matches(spec, p));
            }
            Outcome::Create(c.gpu, c.profile_id)
        }
        Ok(p @ (Plan::IntoShared { .. } | Plan::NewShared { .. })) => {
            panic!("a GPU-instance request planned a compute instance: {p:?}")
        }
        Err(_) => Outcome::NoRoom,
    }
}

#[test]
fn plan_table() {
    use Outcome::*;
    // (case, spec, instances (gpu, profile id, start), leases on (gpu, start), busy (gpu, start), request, expected)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a [(u32, u32, u32)],
        &'a [(u32, u32)],
        &'a [(u32, u32)],
        PlanRequest,
        Outcome,
    );
    let cases: Vec<Case> = vec![
        (
            "empty GPU: create",
            "h100-80gb",
            &[],
            &[],
            &[],
            want("1g.10gb"),
            Create(0, 19),
        ),
        (
            "free 3g exists: reuse it",
            "h100-80gb",
            &[(0, 9, 4)],
            &[],
            &[],
            want("3g.40gb"),
            Reuse(0, 4),
        ),
        (
            "reuse by profile id",
            "h100-80gb",
            &[(0, 9, 4)],
            &[],
            &[],
            want("9"),
            Reuse(0, 4),
        ),
        (
            "leased 3g is skipped: create the other",
            "h100-80gb",
            &[(0, 9, 4)],
            &[(0, 4)],
            &[],
            want("3g.40gb"),
            Create(0, 9),
        ),
        (
            "busy 3g is skipped: create the other",
            "h100-80gb",
            &[(0, 9, 0)],
            &[],
            &[(0, 0)],
            want("3g.40gb"),
            Create(0, 9),
        ),
        (
            "lowest free one is reused",
            "h100-80gb",
            &[(0, 19, 6), (0, 19, 2)],
            &[],
            &[],
            want("1g.10gb"),
            Reuse(0, 2),
        ),
        (
            "other profile is not reused",
            "h100-80gb",
            &[(0, 14, 0)],
            &[],
            &[],
            want("1g.20gb"),
            Create(0, 15),
        ),
        (
            "both 3g leased: no room",
            "h100-80gb",
            &[(0, 9, 0), (0, 9, 4)],
            &[(0, 0), (0, 4)],
            &[],
            want("3g.40gb"),
            NoRoom,
        ),
        (
            "busy and leased: no room",
            "h100-80gb",
            &[(0, 9, 0), (0, 9, 4)],
            &[(0, 0)],
            &[(0, 4)],
            want("3g.40gb"),
            NoRoom,
        ),
        (
            "--gpu 1 reuses there, not on 0",
            "h100-80gb:2",
            &[(0, 9, 0), (1, 9, 0)],
            &[],
            &[],
            on("3g.40gb", &[1]),
            Reuse(1, 0),
        ),
        (
            "--gpu 1 full while GPU 0 is free: no room",
            "h100-80gb:2",
            &[(1, 0, 0)],
            &[(1, 0)],
            &[],
            on("1g.10gb", &[1]),
            NoRoom,
        ),
        (
            "--gpu 1 creates on 1",
            "h100-80gb:2",
            &[],
            &[],
            &[],
            on("7g.80gb", &[1]),
            Create(1, 0),
        ),
        (
            "full GPU 0 leased: create on 1",
            "h100-80gb:2",
            &[(0, 0, 0)],
            &[(0, 0)],
            &[],
            want("7g.80gb"),
            Create(1, 0),
        ),
        (
            "MIG off GPU is skipped",
            "h100-80gb:1:mig-off,h100-80gb:1",
            &[],
            &[],
            &[],
            want("3g.40gb"),
            Create(1, 9),
        ),
        (
            "unknown profile on this model",
            "a30-24gb",
            &[],
            &[],
            &[],
            want("3g.40gb"),
            NoRoom,
        ),
        (
            "mixed models: name resolves per GPU",
            "a30-24gb,h100-80gb",
            &[],
            &[],
            &[],
            want("2g.20gb"),
            Create(1, 14),
        ),
        (
            "+me limit",
            "h100-80gb",
            &[(0, 20, 0)],
            &[(0, 0)],
            &[],
            want("1g.10gb+me"),
            NoRoom,
        ),
        (
            "7 leased 1g: no eighth",
            "h100-80gb",
            &[
                (0, 19, 0),
                (0, 19, 1),
                (0, 19, 2),
                (0, 19, 3),
                (0, 19, 4),
                (0, 19, 5),
                (0, 19, 6),
            ],
            &[(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (0, 6)],
            &[],
            want("1g.10gb"),
            NoRoom,
        ),
    ];
    for (name, spec, insts, leased, busy, req, expected) in cases {
        let mut m = SimMachine::new(&spec.parse::<SimSpec>().unwrap());
        for &(gpu, id, start) in insts {
            let gi = m.create_gi(gpu, id, start).unwrap();
            m.create_default_ci(gpu, gi).unwrap();
            if busy.contains(&(gpu, start)) {
                m.set_processes(gpu, gi, 1).unwrap();
            }
        }
        let state = state_of(&m);
        let leases: Vec<Lease> = leased
            .iter()
            .enumerate()
            .map(|(i, &(gpu, start))| lease_on(&state, i as u64 + 1, gpu, start))
            .collect();
        assert_eq!(outcome(&state, &leases, &req), expected, "case {name:?}");
    }
}

#[test]
fn config_filters_profiles_and_gpus() {
    let state = snapshot("h100-80gb:2", &[]);
    let mut req = want("3g.40gb");
    req.allowed = Some(vec!["1g.10gb".parse().unwrap(), "2g.20gb".parse().unwrap()]);
    let e = plan(&state, &[], &req).unwrap_err();
    assert!(!e.can_wait(), "a forbidden profile never fits: {e}");
    assert!(e.to_string().contains("allowed_profiles"), "{e}");
    // min-mem only considers allowed profiles: 15g -> 2g.20gb (1g.20gb is not allowed).
    req.want = Want::MinMemMib(15000);
    let Ok(Plan::Create(c)) = plan(&state, &[], &req) else {
        panic!()
    };
    assert_eq!(c.profile_id, 14);
    // A GPU outside the allowed set is not used even when it is the only free one.
    let full = snapshot("h100-80gb:2", &[(0, 0, 0)]);
    let l = lease_on(&full, 1, 0, 0);
    let mut req = want("1g.10gb");
    req.gpus = Some(vec![0]);
    assert!(plan(&full, &[l], &req).is_err());
}

#[test]
fn min_mem_picks_the_smallest_plain_profile_that_fits_now() {
    let st = snapshot("h100-80gb", &[]);
    let create_id = |state: &MigState, leases: &[Lease], mib| match plan(
        state,
        leases,
        &PlanRequest::new(Want::MinMemMib(mib)),
    ) {
        Ok(Plan::Create(c)) => c.profile_id,
        Ok(Plan::Reuse { profile_id, .. }) => profile_id,
        Ok(p) => panic!("{p:?}"),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(create_id(&st, &[], 5000), 19, "1g.10gb, never 1g.10gb+me");
    assert_eq!(create_id(&st, &[], 9984), 19);
    assert_eq!(
        create_id(&st, &[], 9985),
        15,
        "1g.20gb: same memory as 2g.20gb, fewer slices"
    );
    assert_eq!(create_id(&st, &[], 30000), 9, "3g.40gb before 4g.40gb");
    assert_eq!(create_id(&st, &[], 50000), 0);
    // Counting what is free now: 1g.20gb's four placements are blocked, 2g.20gb still fits? No:
    // with 1g.10gb at 0, 2, 4 and 6 every 2-slice placement is blocked, so 3g.40gb is next... also blocked at 0 and 4.
    let st = snapshot("h100-80gb", &[(0, 19, 0), (0, 19, 2), (0, 19, 5)]);
    // 1g.20gb at 6 is free (6-7), so it fits.
    assert_eq!(create_id(&st, &[], 15000), 15);
    let st = snapshot(
        "h100-80gb",
        &[(0, 19, 0), (0, 19, 2), (0, 19, 4), (0, 19, 6)],
    );
    let e = plan(&st, &[], &PlanRequest::new(Want::MinMemMib(15000))).unwrap_err();
    assert!(e.to_string().contains("at least 15000 MiB"), "{e}");
    assert_eq!(e.fits_now.first().map(|s| s.1.as_str()), Some("1g.10gb"));
    // Too big for any profile: waiting would not help.
    let e = plan(
        &snapshot("h100-80gb", &[]),
        &[],
        &PlanRequest::new(Want::MinMemMib(200_000)),
    )
    .unwrap_err();
    assert!(!e.can_wait());
    assert!(e.to_string().contains("7g.80gb"), "{e}");
    // Reuse counts as fitting: a free 3g.40gb is used for 30000 MiB.
    let st = snapshot("h100-80gb", &[(0, 9, 4)]);
    assert!(matches!(
        plan(&st, &[], &PlanRequest::new(Want::MinMemMib(30000))),
        Ok(Plan::Reuse { profile_id: 9, .. })
    ));
}

/// Requests `ids` one after another on one GPU: migrun (plan, then create where it says) versus a
/// driver that picks the placement itself (`pick` chooses among the free ones). Returns the placements made.
fn sequence(
    spec: &str,
    ids: &[u32],
    driver: Option<fn(&[Placement]) -> Placement>,
) -> Result<Vec<Placement>, u32> {
    let mut m = SimMachine::new(&spec.parse::<SimSpec>().unwrap());
    let mut placed = Vec::new();
    let mut leases = Vec::new();
    for &id in ids {
        let placement = match driver {
            None => match plan(
                &state_of(&m),
                &leases,
                &PlanRequest::new(Want::Profile(ProfileSpec::Id(id))),
            ) {
                Ok(Plan::Create(c)) => c.placement,
                _ => return Err(id),
            },
            Some(pick) => {
                let g = &state_of(&m).gpus[0];
                let p = g.profile_by_id(id).unwrap();
                let occ: Vec<Occupant> = g.instances.iter().map(Occupant::from).collect();
                let free = rules::free_placements(&g.profiles, &occ, p);
                if free.is_empty() {
                    return Err(id);
                }
                pick(&free)
            }
        };
        let gi = m.create_gi(0, id, placement.start).map_err(|_| id)?;
        m.create_default_ci(0, gi).unwrap();
        placed.push(placement);
        // Each requester keeps what it got.
        leases.push(lease_on(
            &state_of(&m),
            placed.len() as u64,
            0,
            placement.start,
        ));
    }
    Ok(placed)
}

#[test]
fn user_guide_order_1g_1g_2g_3g() {
    // migrun, asked for 1g.10gb, 1g.10gb, 2g.20gb, 3g.40gb one after another on one H100 (each
    // requester keeping what it got), places all four: it picks every placement itself.
    let ids = [19, 19, 14, 9];
    let placed = sequence("h100-80gb", &ids, None).expect("migrun places all four");
    assert_eq!(placed.len(), 4);
    assert!(
        placed
            .iter()
            .enumerate()
            .all(|(i, a)| placed[i + 1..].iter().all(|b| !a.overlaps(b))),
        "{placed:?}"
    );

    // `nvidia-smi mig -cgi 19,19,14,9` leaves each placement to the driver, and NVIDIA's guide
    // shows it failing with Insufficient Resources: the small instances land where 3g.40gb needs
    // room. A driver that puts each instance at its highest free placement does exactly that here
    // (1g at 6 and 5, 2g at 2; then 3g.40gb overlaps something at both 0 and 4).
    let highest_first: fn(&[Placement]) -> Placement = |free| *free.last().unwrap();
    assert_eq!(sequence("h100-80gb", &ids, Some(highest_first)), Err(9));

    // The simulator's own driver stand-in, `create_gi_anywhere`, takes the *lowest* free placement;
    // with that rule this particular order happens to fit (1g at 0 and 1, 2g at 2, 3g at 4) ...
    let lowest_first: fn(&[Placement]) -> Placement = |free| free[0];
    assert!(sequence("h100-80gb", &ids, Some(lowest_first)).is_ok());
    let mut m = SimMachine::new(&"h100-80gb".parse::<SimSpec>().unwrap());
    for id in ids {
        m.create_gi_anywhere(0, id)
            .expect("lowest-first survives 19,19,14,9");
    }
    // ... and fails other orders instead, e.g. `-cgi 19,14,5`: 1g.10gb at 0 blocks 4g.40gb's only placement.
    assert_eq!(
        sequence("h100-80gb", &[19, 14, 5], Some(lowest_first)),
        Err(5)
    );
    let mut m = SimMachine::new(&"h100-80gb".parse::<SimSpec>().unwrap());
    m.create_gi_anywhere(0, 19).unwrap();
    m.create_gi_anywhere(0, 14).unwrap();
    assert_eq!(
        m.create_gi_anywhere(0, 5),
        Err(crate::gpu::Code::InsufficientResources)
    );
}

/// Every H100 profile named Ngb is found by --min-mem Ng.
#[test]
fn min_mem_sizes_reach_every_h100_profile() {
    let st = snapshot("h100-80gb", &[]);
    for p in &st.gpus[0].profiles {
        let n = p.parsed_name().unwrap();
        assert!(
            parse_size_mib(&format!("{}g", n.mem_gb)).unwrap() <= p.memory_mib,
            "{}",
            p.name
        );
    }
}

/// Reuse prefers an idle instance migrun keeps warm (created by it, `kept`) over a found one (an admin's), on any
/// GPU, and either over creating; a busy or leased warm one is skipped (issue 23).
#[test]
fn reuse_prefers_warm_instances_over_found_ones() {
    use Outcome::*;
    // (case, instances (gpu, profile id, start), which of them migrun keeps warm, leased, busy, expected)
    type Case<'a> = (
        &'a str,
        &'a [(u32, u32, u32)],
        &'a [(u32, u32)],
        &'a [(u32, u32)],
        &'a [(u32, u32)],
        Outcome,
    );
    let cases: Vec<Case> = vec![
        (
            "only a found one: reused, not created",
            &[(0, 19, 0)],
            &[],
            &[],
            &[],
            Reuse(0, 0),
        ),
        (
            "warm on a later GPU beats found on GPU 0",
            &[(0, 19, 0), (1, 19, 3)],
            &[(1, 3)],
            &[],
            &[],
            Reuse(1, 3),
        ),
        (
            "warm at a higher placement beats found at a lower one",
            &[(0, 19, 0), (0, 19, 2)],
            &[(0, 2)],
            &[],
            &[],
            Reuse(0, 2),
        ),
        (
            "two warm ones: lowest GPU, then placement",
            &[(1, 19, 2), (1, 19, 0), (0, 19, 0)],
            &[(1, 2), (1, 0)],
            &[],
            &[],
            Reuse(1, 0),
        ),
        (
            "warm one busy: the found one",
            &[(0, 19, 0), (1, 19, 3)],
            &[(1, 3)],
            &[],
            &[(1, 3)],
            Reuse(0, 0),
        ),
        (
            "warm one leased: the found one",
            &[(0, 19, 0), (1, 19, 3)],
            &[(1, 3)],
            &[(1, 3)],
            &[],
            Reuse(0, 0),
        ),
        (
            "warm one of another profile: the found one",
            &[(0, 19, 0), (1, 14, 0)],
            &[(1, 0)],
            &[],
            &[],
            Reuse(0, 0),
        ),
    ];
    for (case, insts, warm, leased, busy, expected) in cases {
        let mut state = snapshot("h100-80gb:2", insts);
        for &(gpu, start) in busy {
            let g = state.gpus.iter_mut().find(|g| g.info.index == gpu).unwrap();
            g.instances
                .iter_mut()
                .find(|i| i.placement.start == start)
                .unwrap()
                .processes = 1;
        }
        let leases: Vec<Lease> = leased
            .iter()
            .enumerate()
            .map(|(n, &(gpu, start))| lease_on(&state, n as u64 + 1, gpu, start))
            .collect();
        let mut req = want("1g.10gb");
        req.kept = warm
            .iter()
            .map(|&(gpu, start)| {
                let g = state.gpu(gpu).unwrap();
                let i = g
                    .instances
                    .iter()
                    .find(|i| i.placement.start == start)
                    .unwrap();
                (g.info.uuid.clone(), i.id)
            })
            .collect();
        assert_eq!(outcome(&state, &leases, &req), expected, "{case}");
    }
}
