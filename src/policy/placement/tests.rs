//! Table tests of the placement policy over hand-built simulator snapshots (docs/placement.md).

use super::*;
use crate::gpu::sim::SimMachine;
use crate::gpu::Code;
use std::str::FromStr;

fn spec(s: &str) -> ProfileSpec {
    ProfileSpec::from_str(s).unwrap()
}

fn machine(s: &str) -> SimMachine {
    SimMachine::new(&s.parse().unwrap())
}

/// The snapshot `gpu::Backend::snapshot` would read from the machine.
fn snapshot(m: &SimMachine) -> MigState {
    let gpus = m
        .gpu_infos()
        .into_iter()
        .map(|info| {
            let on = info.mig.is_some_and(|x| x.current);
            GpuState {
                profiles: m.profiles(info.index).unwrap(),
                instances: if on {
                    m.instances(info.index).unwrap()
                } else {
                    Vec::new()
                },
                info,
            }
        })
        .collect();
    MigState { gpus }
}

fn id(m: &SimMachine, gpu: u32, name: &str) -> u32 {
    m.profiles(gpu)
        .unwrap()
        .iter()
        .find(|p| crate::gpu::names::matches(&spec(name), p))
        .unwrap_or_else(|| panic!("{name} not on GPU {gpu}"))
        .id
}

/// Ask `policy` for `profile`, create it in the machine, return (gpu, start).
fn place(m: &mut SimMachine, profile: &str, policy: Policy) -> Option<(u32, u32)> {
    let c = choose(&snapshot(m), &spec(profile), None, policy)?;
    m.create_gi(c.gpu, c.profile_id, c.placement.start)
        .expect("the policy only picks placements the driver accepts");
    Some((c.gpu, c.placement.start))
}

/// Create instances at fixed places: (gpu, profile, start).
fn with(m: &mut SimMachine, at: &[(u32, &str, u32)]) {
    for &(g, p, s) in at {
        let pid = id(m, g, p);
        m.create_gi(g, pid, s).unwrap();
    }
}

/// What the driver does when no placement is given, as NVIDIA's guide shows it: the 1g
/// instances of `-cgi 19,19,14,9` land at the top of the GPU (the highest free placement).
fn driver_top_down(m: &mut SimMachine, profile: &str) -> Result<u32, Code> {
    let pid = id(m, 0, profile);
    let p = m
        .profiles(0)
        .unwrap()
        .into_iter()
        .find(|p| p.id == pid)
        .unwrap();
    for pl in p.placements.iter().rev() {
        if m.create_gi(0, pid, pl.start).is_ok() {
            return Ok(pl.start);
        }
    }
    Err(Code::InsufficientResources)
}

#[test]
fn user_guide_creation_order_fits_where_the_driver_order_fails() {
    let order = ["1g.10gb", "1g.10gb", "2g.20gb", "3g.40gb"];
    let mut m = machine("h100-80gb");
    let got: Vec<_> = order
        .iter()
        .map(|p| place(&mut m, p, Policy::Migrun).map(|(_, s)| s))
        .collect();
    assert_eq!(got, vec![Some(0), Some(1), Some(2), Some(4)]);

    let mut driver = machine("h100-80gb");
    let got: Vec<_> = order
        .iter()
        .map(|p| driver_top_down(&mut driver, p))
        .collect();
    assert_eq!(
        got,
        vec![Ok(6), Ok(5), Ok(2), Err(Code::InsufficientResources)],
        "the driver's own choice strands the 3g"
    );
}

#[test]
fn keeps_the_4g_block_where_first_fit_takes_it() {
    for (order, ff_fails_at) in [
        (&["3g.40gb", "4g.40gb"][..], 1),
        (&["2g.20gb", "4g.40gb"][..], 1),
        (&["1g.20gb", "2g.20gb", "4g.40gb"][..], 2),
    ] {
        let mut m = machine("h100-80gb");
        for p in order {
            assert!(place(&mut m, p, Policy::Migrun).is_some(), "{order:?}: {p}");
        }
        let mut ff = machine("h100-80gb");
        let placed: Vec<bool> = order
            .iter()
            .map(|p| place(&mut ff, p, Policy::FirstFit).is_some())
            .collect();
        assert!(!placed[ff_fails_at], "{order:?}: first-fit placed them all");
    }
}

#[test]
fn seven_1g_fill_an_h100_and_an_eighth_is_refused() {
    let mut m = machine("h100-80gb");
    let mut starts: Vec<u32> = (0..7)
        .map(|_| place(&mut m, "1g.10gb", Policy::Migrun).unwrap().1)
        .collect();
    starts.sort();
    assert_eq!(starts, (0..7).collect::<Vec<_>>());
    assert_eq!(place(&mut m, "1g.10gb", Policy::Migrun), None);
    assert!(candidates(&snapshot(&m), &spec("1g.10gb"), None).is_empty());
}

#[test]
fn table_of_single_choices() {
    // (machine, existing instances, request, expected (gpu, start); None = no room)
    type Row = (
        &'static str,
        &'static [(u32, &'static str, u32)],
        &'static str,
        Option<(u32, u32)>,
    );
    let rows: &[Row] = &[
        // Ties go to the lowest GPU; a 3g takes the upper half and keeps [0,4) for a 4g.
        ("h100-80gb:8", &[], "3g.40gb", Some((0, 4))),
        ("h100-80gb:8", &[], "7g.80gb", Some((0, 0))),
        // Release delay, whole GPU: same capacity lost on GPU 0 (one instance) and GPU 1
        // (three); GPU 1 takes it, so GPU 0 can empty when its one instance leaves.
        (
            "h100-80gb:2",
            &[
                (0, "4g.40gb", 0),
                (1, "2g.20gb", 0),
                (1, "1g.10gb", 2),
                (1, "1g.10gb", 3),
            ],
            "1g.20gb",
            Some((1, 6)),
        ),
        // Release delay, halves: the lower half holds one instance and comes free for a 4g
        // when it leaves; the 1g joins the upper half, which holds two (without the half
        // term it would take 2).
        (
            "h100-80gb",
            &[(0, "2g.20gb", 0), (0, "1g.10gb", 4), (0, "1g.10gb", 5)],
            "1g.10gb",
            Some((0, 6)),
        ),
        // Small instances go to a GPU already in use rather than break an empty one (best fit).
        ("h100-80gb:2", &[(1, "3g.40gb", 4)], "1g.10gb", Some((1, 0))),
        ("h100-80gb:2", &[(0, "7g.80gb", 0)], "2g.20gb", Some((1, 4))),
        // Pack with the neighbour: the half-used pair, not a fresh one.
        ("h100-80gb", &[(0, "1g.10gb", 4)], "1g.10gb", Some((0, 5))),
        // The 1g double-memory profile is the one that can use the last pair of the upper half.
        (
            "h100-80gb",
            &[(0, "4g.40gb", 0), (0, "2g.20gb", 4)],
            "1g.20gb",
            Some((0, 6)),
        ),
        ("h100-80gb", &[], "1g.20gb", Some((0, 6))),
        // A 4g only fits at 0; a second 3g after a 3g at 4 goes to 0.
        ("h100-80gb", &[(0, "3g.40gb", 4)], "4g.40gb", Some((0, 0))),
        (
            "h100-80gb",
            &[(0, "4g.40gb", 0), (0, "3g.40gb", 4)],
            "1g.10gb",
            None,
        ),
        // A 3g next to a 4g: the 7g and whole-GPU capacity are gone already, so the used GPU wins.
        ("h100-80gb:2", &[(1, "4g.40gb", 0)], "3g.40gb", Some((1, 4))),
        // +me: only one media-extension instance per GPU, so it goes to the other GPU.
        (
            "h100-80gb:2",
            &[(0, "1g.10gb+me", 0), (0, "3g.40gb", 4)],
            "1g.10gb+me",
            Some((1, 0)),
        ),
        // A30 (4 slices): keep the free 2g pair whole.
        ("a30-24gb", &[(0, "1g.6gb", 2)], "1g.6gb", Some((0, 3))),
        ("a30-24gb", &[(0, "2g.12gb", 0)], "4g.24gb", None),
        // RTX PRO 6000 (12 slices, 3 per 1g): keep a 2g half whole; +me.all blocks all but -me.
        (
            "rtx-pro-6000",
            &[(0, "1g.24gb", 6)],
            "1g.24gb",
            Some((0, 9)),
        ),
        ("rtx-pro-6000", &[(0, "1g.24gb+me.all", 0)], "1g.24gb", None),
        (
            "rtx-pro-6000",
            &[(0, "1g.24gb+me.all", 0)],
            "1g.24gb-me",
            Some((0, 3)),
        ),
        // MIG-off GPUs are never chosen, even when they are empty and first.
        (
            "h100-80gb:1:mig-off,h100-80gb:1",
            &[],
            "1g.10gb",
            Some((1, 0)),
        ),
        ("a30-24gb:1:mig-off", &[], "1g.6gb", None),
        // A profile no GPU has.
        ("a30-24gb", &[], "3g.40gb", None),
    ];
    for (spec_s, existing, request, want) in rows {
        let mut m = machine(spec_s);
        with(&mut m, existing);
        let state = snapshot(&m);
        let got = choose(&state, &spec(request), None, Policy::Migrun)
            .map(|c| (c.gpu, c.placement.start));
        assert_eq!(got, *want, "{spec_s} {existing:?} + {request}");
    }
}

#[test]
fn respects_the_gpu_filter_and_profile_ids() {
    let mut m = machine("h100-80gb:3");
    with(&mut m, &[(2, "3g.40gb", 4)]);
    let state = snapshot(&m);
    let one = spec("1g.10gb");
    // Unfiltered, the used GPU 2 is best; filtered, only the allowed GPUs count.
    assert_eq!(choose(&state, &one, None, Policy::Migrun).unwrap().gpu, 2);
    assert_eq!(
        choose(&state, &one, Some(&[0, 1]), Policy::Migrun)
            .unwrap()
            .gpu,
        0
    );
    assert_eq!(
        choose(&state, &one, Some(&[1]), Policy::Migrun)
            .unwrap()
            .gpu,
        1
    );
    assert_eq!(choose(&state, &one, Some(&[]), Policy::Migrun), None);
    assert_eq!(choose(&state, &one, Some(&[7]), Policy::Migrun), None);
    assert_eq!(
        choose(&state, &one, Some(&[1]), Policy::FirstFit)
            .unwrap()
            .gpu,
        1
    );
    // An ID and a name of the same profile choose the same.
    assert_eq!(
        choose(&state, &spec("19"), None, Policy::Migrun),
        choose(&state, &one, None, Policy::Migrun)
    );
    assert_eq!(
        choose(&state, &spec("19"), None, Policy::Migrun)
            .unwrap()
            .profile_id,
        19
    );
}

/// A small deterministic generator for the property tests (no dependency needed for a test).
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

/// Random reachable states: random creates (any legal placement) and destroys.
fn random_states(machine_spec: &str, seed: u64, count: usize) -> Vec<SimMachine> {
    let mut rng = Lcg(seed);
    let mut m = machine(machine_spec);
    let mut out = Vec::new();
    for _ in 0..count {
        let state = snapshot(&m);
        let g = rng.below(state.gpus.len());
        let gs = &state.gpus[g];
        if !gs.instances.is_empty() && rng.below(3) == 0 {
            let gi = gs.instances[rng.below(gs.instances.len())].id;
            m.destroy_gi(g as u32, gi).unwrap();
        } else if !gs.profiles.is_empty() {
            let p = &gs.profiles[rng.below(gs.profiles.len())];
            let pl = p.placements[rng.below(p.placements.len())];
            let _ = m.create_gi(g as u32, p.id, pl.start);
        }
        out.push(m.clone());
    }
    out
}

#[test]
fn never_refuses_a_request_that_fits_and_only_picks_candidates() {
    for (i, ms) in [
        "h100-80gb:3",
        "a100-40gb:1,h100-80gb:1:mig-off,h200-141gb:1",
        "a30-24gb:2",
        "rtx-pro-6000:2",
    ]
    .iter()
    .enumerate()
    {
        for m in random_states(ms, 17 + i as u64, 150) {
            let state = snapshot(&m);
            let mut names: Vec<String> = state
                .gpus
                .iter()
                .flat_map(|g| g.profiles.iter().map(|p| p.short_name().to_string()))
                .collect();
            names.sort();
            names.dedup();
            names.push("3g.40gb".into());
            names.push("5".into());
            for n in &names {
                let sp = spec(n);
                for filter in [None, Some(&[0u32][..]), Some(&[1u32][..])] {
                    let cands = candidates(&state, &sp, filter);
                    let got = choose(&state, &sp, filter, Policy::Migrun);
                    assert_eq!(got.is_some(), !cands.is_empty(), "{ms} {n} {filter:?}");
                    if let Some(c) = got {
                        assert!(cands.contains(&c), "{ms} {n}: {c:?} is not a candidate");
                    }
                    assert_eq!(first_fit(&state, &sp, filter), cands.first().copied());
                }
            }
        }
    }
}

#[test]
fn fast_view_agrees_with_the_shared_rules() {
    for (i, ms) in [
        "h100-80gb:2",
        "a30-24gb:1",
        "rtx-pro-6000:1",
        "b200-180gb:1",
    ]
    .iter()
    .enumerate()
    {
        for m in random_states(ms, 99 + i as u64, 120) {
            for g in &snapshot(&m).gpus {
                let view = GpuView::new(g);
                let occ: Vec<Occupant> = g.instances.iter().map(Occupant::from).collect();
                for (k, p) in g.profiles.iter().enumerate() {
                    assert_eq!(
                        view.can_create(k, &view.flags, None),
                        rules::can_create(&g.profiles, &occ, p),
                        "{ms} {}",
                        p.name
                    );
                    assert_eq!(
                        view.remaining(k, view.occ, &view.flags, None),
                        rules::remaining(&g.profiles, &occ, p),
                        "{ms} {}",
                        p.name
                    );
                }
            }
        }
    }
}
