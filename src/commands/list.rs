//! Handlers for the read-only commands `profiles`, `placements` and `status`, and their text/JSON rendering (schema: docs/json.md).

use super::{select_gpu, Ctx};
use crate::cli::ListArgs;
use crate::gpu::{Backend, GiProfile, GpuInfo, GpuState, MigMode, Placement};
use anyhow::Result;
use serde::Serialize;

/// JSON schema version of every read-only command's output.
pub const SCHEMA_VERSION: u32 = 1;

/// Profiles in the order `nvidia-smi mig -lgip` prints them: by slices, then memory, then NVML index.
pub fn display_order(profiles: &[GiProfile]) -> Vec<&GiProfile> {
    let mut v: Vec<&GiProfile> = profiles.iter().collect();
    v.sort_by_key(|p| (p.slice_count, p.memory_mib, p.nvml_index));
    v
}

/// The GPUs a listing covers (`--gpu` narrows it), with their profiles read from the backend.
fn selected(
    backend: &mut dyn Backend,
    gpu: Option<&str>,
    with_instances: bool,
) -> Result<Vec<GpuState>> {
    let gpus = backend.gpus()?;
    let wanted: Vec<GpuInfo> = match gpu {
        Some(g) => {
            let i = select_gpu(g, &gpus)?;
            gpus.into_iter().filter(|x| x.index == i).collect()
        }
        None => gpus,
    };
    let mut out = Vec::new();
    for info in wanted {
        let profiles = match info.mig {
            Some(_) => backend.profiles(info.index)?,
            None => Vec::new(),
        };
        let instances = match info.mig {
            Some(MigMode { current: true, .. }) if with_instances => {
                backend.instances(info.index)?
            }
            _ => Vec::new(),
        };
        out.push(GpuState {
            info,
            profiles,
            instances,
        });
    }
    Ok(out)
}

#[derive(Serialize)]
struct JsonProfile<'a> {
    id: u32,
    nvml_index: u32,
    name: &'a str,
    short_name: &'a str,
    instances_free: u32,
    instances_total: u32,
    memory_mib: u64,
    p2p: bool,
    slices: u32,
    sm: Option<u32>,
    ce: Option<u32>,
    dec: Option<u32>,
    enc: Option<u32>,
    jpeg: Option<u32>,
    ofa: Option<u32>,
    placements: &'a [Placement],
}

impl<'a> From<&'a GiProfile> for JsonProfile<'a> {
    fn from(p: &'a GiProfile) -> Self {
        JsonProfile {
            id: p.id,
            nvml_index: p.nvml_index,
            name: &p.name,
            short_name: p.short_name(),
            instances_free: p.remaining,
            instances_total: p.instance_count,
            memory_mib: p.memory_mib,
            p2p: p.p2p,
            slices: p.slice_count,
            sm: p.sm,
            ce: p.ce,
            dec: p.dec,
            enc: p.enc,
            jpeg: p.jpeg,
            ofa: p.ofa,
            placements: &p.placements,
        }
    }
}

#[derive(Serialize)]
struct JsonGpuProfiles<'a> {
    index: u32,
    uuid: &'a str,
    name: &'a str,
    mig_capable: bool,
    mig_mode: Option<MigMode>,
    profiles: Vec<JsonProfile<'a>>,
}

fn unknown_or(v: Option<u32>) -> String {
    v.map_or("?".into(), |v| v.to_string())
}

/// `migrun profiles`: the data of `nvidia-smi mig -lgip`.
pub fn profiles(ctx: &Ctx, a: &ListArgs) -> Result<i32> {
    let mut backend = ctx.backend()?;
    let gpus = selected(&mut *backend, a.gpu.as_deref(), false)?;
    if a.json {
        let doc = serde_json::json!({
            "schema": SCHEMA_VERSION,
            "gpus": gpus.iter().map(|g| JsonGpuProfiles {
                index: g.info.index,
                uuid: &g.info.uuid,
                name: &g.info.name,
                mig_capable: g.info.mig.is_some(),
                mig_mode: g.info.mig,
                profiles: display_order(&g.profiles).into_iter().map(JsonProfile::from).collect(),
            }).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    println!(
        "{:>3}  {:<18} {:>3}  {:>10}  {:>9}  {:>4} {:>3} {:>3} {:>3} {:>3} {:>4} {:>3}",
        "GPU", "Name", "ID", "Free/Total", "Mem GiB", "SM", "CE", "DEC", "ENC", "JPG", "OFA", "P2P"
    );
    for g in &gpus {
        if g.info.mig.is_none() {
            println!("{:>3}  {} is not MIG-capable", g.info.index, g.info.name);
            continue;
        }
        for p in display_order(&g.profiles) {
            println!(
                "{:>3}  {:<18} {:>3}  {:>10}  {:>9.2}  {:>4} {:>3} {:>3} {:>3} {:>3} {:>4} {:>3}",
                g.info.index,
                p.name,
                p.id,
                format!("{}/{}", p.remaining, p.instance_count),
                p.memory_mib as f64 / 1024.0,
                unknown_or(p.sm),
                unknown_or(p.ce),
                unknown_or(p.dec),
                unknown_or(p.enc),
                unknown_or(p.jpeg),
                unknown_or(p.ofa),
                if p.p2p { "Yes" } else { "No" },
            );
        }
    }
    Ok(0)
}

/// One `-lgipp` line: `GPU  0 Profile ID 19 Placements: {0,1,2,3,4,5,6}:1`.
pub fn placement_line(gpu: u32, p: &GiProfile) -> String {
    let starts: Vec<String> = p.placements.iter().map(|x| x.start.to_string()).collect();
    let label = if p.placements.len() == 1 {
        "Placement :"
    } else {
        "Placements:"
    };
    format!(
        "GPU {gpu:>2} Profile ID {:>2} {label} {{{}}}:{}",
        p.id,
        starts.join(","),
        p.placement_size()
    )
}

/// `migrun placements`: the data of `nvidia-smi mig -lgipp`.
pub fn placements(ctx: &Ctx, a: &ListArgs) -> Result<i32> {
    let mut backend = ctx.backend()?;
    let gpus = selected(&mut *backend, a.gpu.as_deref(), false)?;
    if a.json {
        let doc = serde_json::json!({
            "schema": SCHEMA_VERSION,
            "gpus": gpus.iter().map(|g| serde_json::json!({
                "index": g.info.index,
                "uuid": g.info.uuid,
                "profiles": display_order(&g.profiles).iter().map(|p| serde_json::json!({
                    "id": p.id,
                    "name": p.name,
                    "size": p.placement_size(),
                    "starts": p.placements.iter().map(|x| x.start).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    for g in &gpus {
        if g.info.mig.is_none() {
            println!("GPU {:>2} is not MIG-capable", g.info.index);
        }
        for p in display_order(&g.profiles) {
            println!("{}", placement_line(g.info.index, p));
        }
    }
    Ok(0)
}

/// The slot map of one GPU, e.g. `|3g.40gb        |1g |1g |.. |.. |`: one 3-character cell per memory slice,
/// an instance spanning its slices, free slices as `..`.
pub fn slot_map(g: &GpuState) -> String {
    const CELL: usize = 3;
    let slots = g.slots();
    let mut out = String::from("|");
    let mut s = 0;
    let mut insts: Vec<_> = g.instances.iter().collect();
    insts.sort_by_key(|i| i.placement.start);
    while s < slots {
        if let Some(i) = insts.iter().find(|i| i.placement.start == s) {
            let width = i.placement.size as usize * (CELL + 1) - 1;
            let name = g
                .profile_by_id(i.profile_id)
                .map_or(format!("id{}", i.profile_id), |p| {
                    p.short_name().to_string()
                });
            let name = if name.len() > width {
                name.split('.').next().unwrap_or("").to_string()
            } else {
                name
            };
            out.push_str(&format!("{name:<width$}|"));
            s += i.placement.size;
        } else {
            out.push_str(&format!("{:<CELL$}|", ".."));
            s += 1;
        }
    }
    out
}

/// `migrun status`: GPUs, MIG mode, instances and a slot map.
pub fn status(ctx: &Ctx, a: &ListArgs) -> Result<i32> {
    let mut backend = ctx.backend()?;
    let gpus = selected(&mut *backend, a.gpu.as_deref(), true)?;
    if a.json {
        let doc = serde_json::json!({
            "schema": SCHEMA_VERSION,
            "gpus": gpus.iter().map(|g| serde_json::json!({
                "index": g.info.index,
                "uuid": g.info.uuid,
                "name": g.info.name,
                "memory_mib": g.info.memory_mib,
                "mig_capable": g.info.mig.is_some(),
                "mig_mode": g.info.mig,
                "slots": g.slots(),
                "slot_map": slot_map(g),
                "instances": g.instances.iter().map(|i| serde_json::json!({
                    "gi": i.id,
                    "profile_id": i.profile_id,
                    "profile": g.profile_by_id(i.profile_id).map(|p| p.short_name()),
                    "placement": i.placement,
                    "ci": i.compute_instances.first().map(|c| c.id),
                    "mig_uuid": i.mig_uuid(),
                    "processes": i.processes,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    for g in &gpus {
        let mode = match g.info.mig {
            None => "not MIG-capable".to_string(),
            Some(m) => format!("MIG {m}"),
        };
        println!(
            "GPU {} {}  {}  {}  {}",
            g.info.index,
            g.info.name,
            g.info.uuid,
            mode,
            slot_map(g)
        );
        if let Some(m) = g.info.mig {
            if let Some(step) =
                crate::migmode::next_step(g.info.index, m, ctx.global.simulate.as_deref())
            {
                println!("  MIG mode change pending: {step}");
            } else if !m.current {
                println!(
                    "  MIG is disabled: `sudo migrun mig enable --gpu {}` then reset the GPU",
                    g.info.index
                );
            }
        }
        for i in &g.instances {
            let name = g
                .profile_by_id(i.profile_id)
                .map_or(format!("profile {}", i.profile_id), |p| {
                    p.short_name().to_string()
                });
            println!(
                "  GI {:>2}  {:<12} at {:<5} {}{}",
                i.id,
                name,
                i.placement.to_string(),
                i.mig_uuid().unwrap_or("(no compute instance)"),
                if i.processes > 0 {
                    format!("  busy: {} process(es)", i.processes)
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::sim::SimMachine;

    #[test]
    fn slot_map_shows_instances_and_free_slices() {
        let mut m = SimMachine::new(&"h100-80gb".parse().unwrap());
        m.create_gi(0, 9, 0).unwrap();
        m.create_gi(0, 19, 4).unwrap();
        m.create_gi(0, 19, 5).unwrap();
        let g = GpuState {
            info: m.gpu_infos().remove(0),
            profiles: m.profiles(0).unwrap(),
            instances: m.instances(0).unwrap(),
        };
        assert_eq!(slot_map(&g), "|3g.40gb        |1g |1g |.. |.. |");
    }
}
