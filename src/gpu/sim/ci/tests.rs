//! Unit tests of the simulator's compute instances: profiles from the tables only, placements inside a GI, the IN_USE rules, MIG-device UUIDs.
use super::*;
use crate::gpu::sim::models;

fn machine(model: &str) -> SimMachine {
    SimMachine::new(&model.parse().unwrap())
}
fn gi_of(m: &mut SimMachine, name: &str) -> u32 {
    let id = m
        .profiles(0)
        .unwrap()
        .iter()
        .find(|p| p.short_name() == name)
        .unwrap()
        .id;
    m.create_gi_anywhere(0, id).unwrap()
}
fn ci_id(m: &SimMachine, gi: u32, slices: u32) -> u32 {
    m.ci_profiles(0, gi)
        .unwrap()
        .iter()
        .find(|p| p.slice_count == slices)
        .unwrap()
        .id
}
fn remaining(m: &SimMachine, gi: u32) -> Vec<(u32, u32)> {
    m.ci_profiles(0, gi)
        .unwrap()
        .iter()
        .map(|p| (p.slice_count, p.remaining))
        .collect()
}

#[test]
fn a100_3g_offers_the_tables_rows_with_placements() {
    let mut m = machine("a100-80gb");
    let gi = gi_of(&mut m, "3g.40gb");
    let got: Vec<_> = m
        .ci_profiles(0, gi)
        .unwrap()
        .iter()
        .map(|p| {
            let pl: Vec<String> = p.placements.iter().map(|x| x.to_string()).collect();
            (
                p.nvml_index,
                p.id,
                p.slice_count,
                p.instance_count,
                pl.join(","),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (0, 0, 1, 3, "0:1,1:1,2:1".to_string()),
            (1, 1, 2, 1, "0:2".to_string()),
            (2, 2, 3, 1, "0:3".to_string()),
        ]
    );
}

#[test]
fn three_1c_fill_a_3g_and_nothing_else_fits() {
    let mut m = machine("a100-80gb");
    let gi = gi_of(&mut m, "3g.40gb");
    let one = ci_id(&m, gi, 1);
    let mut uuids = Vec::new();
    for expect_id in 0..3 {
        let ci = m.create_ci_anywhere(0, gi, one).unwrap();
        assert_eq!(ci.id, expect_id);
        assert!(ci.mig_uuid.starts_with("MIG-"));
        uuids.push(ci.mig_uuid);
    }
    uuids.sort();
    uuids.dedup();
    assert_eq!(
        uuids.len(),
        3,
        "each compute instance is its own MIG device"
    );
    assert_eq!(remaining(&m, gi), vec![(1, 0), (2, 0), (3, 0)]);
    assert_eq!(
        m.create_ci_anywhere(0, gi, one),
        Err(Code::InsufficientResources)
    );
    assert_eq!(m.create_default_ci(0, gi), Err(Code::InsufficientResources));
    // Listed with the GI, each with its UUID.
    let inst = &m.instances(0).unwrap()[0];
    assert_eq!(inst.compute_instances.len(), 3);
}

#[test]
fn placements_are_exclusive_and_checked() {
    let mut m = machine("a100-80gb");
    let gi = gi_of(&mut m, "4g.40gb");
    let (one, two) = (ci_id(&m, gi, 1), ci_id(&m, gi, 2));
    m.create_ci(0, gi, one, 1).unwrap();
    // 2c at 0:2 overlaps slice 1; 2:2 is free.
    assert_eq!(m.create_ci(0, gi, two, 0), Err(Code::InsufficientResources));
    // Not a placement of the profile (2c starts on even slices) / not a profile at all.
    assert_eq!(m.create_ci(0, gi, two, 1), Err(Code::InvalidArgument));
    assert_eq!(m.create_ci(0, gi, 99, 0), Err(Code::InvalidArgument));
    m.create_ci(0, gi, two, 2).unwrap();
    assert_eq!(remaining(&m, gi), vec![(1, 1), (2, 0), (4, 0)]);
    let placed: Vec<(u32, u32, String)> = m
        .ci_placements(0, gi)
        .unwrap()
        .iter()
        .map(|c| (c.ci, c.profile_id, c.placement.to_string()))
        .collect();
    assert_eq!(placed, [(0, one, "1:1".into()), (1, two, "2:2".into())]);
    assert_eq!(m.create_ci(0, 42, one, 0), Err(Code::NotFound));
}

#[test]
fn in_use_rules() {
    let mut m = machine("a100-80gb");
    let gi = gi_of(&mut m, "3g.40gb");
    let one = ci_id(&m, gi, 1);
    let a = m.create_ci_anywhere(0, gi, one).unwrap();
    let b = m.create_ci_anywhere(0, gi, one).unwrap();
    // A GI with compute instances cannot be destroyed.
    assert_eq!(m.destroy_gi(0, gi), Err(Code::InUse));
    // A compute instance in use cannot; its neighbour can.
    m.set_ci_processes(0, gi, a.id, 1).unwrap();
    assert_eq!(m.instances(0).unwrap()[0].processes, 1);
    assert_eq!(m.gpu_processes(0).unwrap(), 1);
    assert_eq!(m.destroy_ci(0, gi, a.id), Err(Code::InUse));
    m.destroy_ci(0, gi, b.id).unwrap();
    m.set_ci_processes(0, gi, a.id, 0).unwrap();
    m.destroy_ci(0, gi, a.id).unwrap();
    m.destroy_gi(0, gi).unwrap();
    assert!(m.instances(0).unwrap().is_empty());
}

#[test]
fn freed_slices_are_reused_with_new_uuids() {
    let mut m = machine("a100-80gb");
    let gi = gi_of(&mut m, "3g.40gb");
    let one = ci_id(&m, gi, 1);
    let cis: Vec<_> = (0..3)
        .map(|_| m.create_ci_anywhere(0, gi, one).unwrap())
        .collect();
    m.destroy_ci(0, gi, cis[1].id).unwrap();
    let again = m.create_ci_anywhere(0, gi, one).unwrap();
    assert_eq!(again.id, cis[1].id, "the lowest free id");
    assert_ne!(
        again.mig_uuid, cis[1].mig_uuid,
        "a re-created MIG device has a new UUID"
    );
}

#[test]
fn unknown_rows_are_not_served_and_every_gi_has_its_default() {
    // H100: the tables know 1c.3g.40gb exists but not its ID or count, so only the full CI is offered.
    let mut m = machine("h100-80gb");
    let gi = gi_of(&mut m, "3g.40gb");
    let got: Vec<_> = m
        .ci_profiles(0, gi)
        .unwrap()
        .iter()
        .map(|p| (p.slice_count, p.instance_count))
        .collect();
    assert_eq!(got, vec![(3, 1)]);
    let ci = m.create_default_ci(0, gi).unwrap();
    assert_eq!(ci.id, 0);
    // Every GI profile of every simulatable model offers its full-GI compute instance.
    for key in models::simulatable_keys() {
        let model = models::model(key).unwrap();
        for gp in &model.profiles {
            let offered = offered(model.product, gp);
            assert!(
                offered
                    .iter()
                    .any(|p| p.slice_count == gp.slice_count && p.placements.len() == 1),
                "{key} {}",
                gp.name
            );
        }
    }
}

#[test]
fn the_placement_model_reproduces_every_tabled_count() {
    let all = ci_tables::all().unwrap();
    let mut checked = 0;
    for key in models::simulatable_keys() {
        let model = models::model(key).unwrap();
        for gp in &model.profiles {
            let Some(name) = gp.parsed_name() else {
                continue;
            };
            let Some(table) = ci_tables::for_product(model.product)
                .unwrap()
                .and_then(|m| m.tables.into_iter().find(|t| t.gi_profile == name))
            else {
                continue;
            };
            for row in &table.rows {
                let Some(count) = row.max_count else { continue };
                assert_eq!(
                    placements(row.compute_slices, gp.slice_count, u32::MAX).len() as u32,
                    count,
                    "{key} {}",
                    row.name
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 6 && !all.is_empty(), "{checked} rows checked");
}
