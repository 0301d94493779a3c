//! Handlers for the read-only commands `profiles`, `placements` and `status` (with lease owners), and their text/JSON rendering (schema: docs/json.md).

use super::{select_gpu, Ctx};
use crate::cli::ListArgs;
use crate::gpu::{Backend, GiProfile, GpuInfo, GpuState, MigMode, Placement};
use crate::lease::{CreatedRecord, Lease, LeaseState, Ticket};
use crate::policy::plan::{self, Owner};
use anyhow::Result;
use serde::Serialize;
use std::time::Duration;

/// JSON schema version of every read-only command's output.
pub const SCHEMA_VERSION: u32 = 1;

/// Profiles in the order `nvidia-smi mig -lgip` prints them: by slices, then memory, then NVML index.
pub fn display_order(profiles: &[GiProfile]) -> Vec<&GiProfile> {
    let mut v: Vec<&GiProfile> = profiles.iter().collect();
    v.sort_by_key(|p| (p.slice_count, p.memory_mib, p.nvml_index));
    v
}

/// The GPUs a listing covers (`--gpu` narrows it), with their profiles read from the backend.
/// Not `Backend::snapshot`: `profiles`/`placements` must not list instances, which needs root on a real host
/// while reading profiles does not.
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
    let mut backend = ctx.read_backend()?;
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
        crate::outln!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    crate::outln!(
        "{:>3}  {:<18} {:>3}  {:>10}  {:>9}  {:>4} {:>3} {:>3} {:>3} {:>3} {:>4} {:>3}",
        "GPU",
        "Name",
        "ID",
        "Free/Total",
        "Mem GiB",
        "SM",
        "CE",
        "DEC",
        "ENC",
        "JPG",
        "OFA",
        "P2P"
    );
    for g in &gpus {
        if g.info.mig.is_none() {
            crate::outln!("{:>3}  {} is not MIG-capable", g.info.index, g.info.name);
            continue;
        }
        for p in display_order(&g.profiles) {
            crate::outln!(
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

/// `migrun profiles --ci`: per GPU, the compute-instance profiles of each GPU-instance profile, as
/// `nvidia-smi mig -lcip` lists them for one GPU instance of that profile, from migrun's tables
/// (`gpu::ci_tables`; NVML reports them only for a GPU instance that exists). What the tables lack
/// is said to be unknown.
pub fn ci_profiles(ctx: &Ctx, a: &ListArgs) -> Result<i32> {
    use crate::gpu::ci_tables;
    let mut backend = ctx.read_backend()?;
    let gpus = selected(&mut *backend, a.gpu.as_deref(), false)?;
    let mut docs = Vec::new();
    let mut text = Vec::new();
    for g in &gpus {
        let tables = ci_tables::for_product(&g.info.name)?;
        let known: Vec<String> = tables
            .iter()
            .flat_map(|m| &m.tables)
            .map(|t| t.gi_profile.to_string())
            .collect();
        let unknown: Vec<String> = display_order(&g.profiles)
            .into_iter()
            .map(|p| p.short_name().to_string())
            .filter(|n| !known.contains(n))
            .collect();
        docs.push(serde_json::json!({
            "index": g.info.index,
            "uuid": g.info.uuid,
            "name": g.info.name,
            "model": tables.as_ref().map(|m| &m.model),
            "note": tables.as_ref().and_then(|m| m.note.as_ref()),
            "gi_profiles": tables.as_ref().map(|m| &m.tables),
            "unknown_gi_profiles": unknown,
        }));
        let head = format!("GPU {} ({})", g.info.index, g.info.name);
        if g.info.mig.is_none() {
            text.push(format!("{head} is not MIG-capable"));
            continue;
        }
        let Some(m) = tables else {
            text.push(format!("{head}: no compute-instance profiles in migrun's tables for this model yet (unknown); on the GPU, `nvidia-smi mig -lcip` lists them once a GPU instance exists"));
            continue;
        };
        text.push(format!("{head}: compute-instance profiles per GPU-instance profile (migrun's tables, data/mig-profiles.json; ? = unknown, * = the default compute instance)"));
        for t in &m.tables {
            text.push(format!(
                "  GPU instance {} (sources: {})",
                t.gi_profile,
                t.sources.join(", ")
            ));
            text.push(format!(
                "    {:<14} {:>3} {:>5} {:>6} {:>9} {:>4} {:>3} {:>3} {:>3} {:>4} {:>3}",
                "Name",
                "ID",
                "Index",
                "Slices",
                "Instances",
                "SM",
                "CE",
                "DEC",
                "ENC",
                "JPEG",
                "OFA"
            ));
            for r in &t.rows {
                text.push(format!(
                    "    {:<14} {:>3} {:>5} {:>6} {:>9} {:>4} {:>3} {:>3} {:>3} {:>4} {:>3}",
                    format!("{}{}", r.name, if r.default { "*" } else { "" }),
                    unknown_or(r.profile_id),
                    unknown_or(r.nvml_index),
                    r.compute_slices,
                    unknown_or(r.max_count),
                    unknown_or(r.sm),
                    unknown_or(r.shared_ce),
                    unknown_or(r.shared_dec),
                    unknown_or(r.shared_enc),
                    unknown_or(r.shared_jpeg),
                    unknown_or(r.shared_ofa),
                ));
            }
        }
        if let Some(n) = &m.note {
            text.push(format!("  note: {n}"));
        }
        if !unknown.is_empty() {
            text.push(format!(
                "  unknown (not in migrun's tables yet): the compute-instance profiles of {}",
                unknown.join(", ")
            ));
        }
        text.push(
            "  placements inside a GPU instance (nvidia-smi mig -lcipp): unknown for every profile"
                .into(),
        );
    }
    if a.json {
        let doc = serde_json::json!({ "schema": SCHEMA_VERSION, "gpus": docs });
        crate::outln!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for line in text {
            crate::outln!("{line}");
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
    let mut backend = ctx.read_backend()?;
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
        crate::outln!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    for g in &gpus {
        if g.info.mig.is_none() {
            crate::outln!("GPU {:>2} is not MIG-capable", g.info.index);
        }
        for p in display_order(&g.profiles) {
            crate::outln!("{}", placement_line(g.info.index, p));
        }
    }
    Ok(0)
}

/// The slot map of one GPU (kept here for callers; the rendering lives in [`GpuState::slot_map`]).
#[cfg(test)]
fn slot_map(g: &GpuState) -> String {
    g.slot_map()
}

/// What the lease registry says, for status; `Err` holds why it could not be read (status still shows the GPUs).
#[derive(Default)]
struct RegistryView {
    leases: Vec<Lease>,
    created: Vec<CreatedRecord>,
    waiting: Vec<Ticket>,
}

fn registry_view(ctx: &Ctx) -> Result<RegistryView, String> {
    // No state dir yet means nothing was ever leased here; looking does not create one.
    let Some(dir) = ctx.existing_state_dir().map_err(|e| format!("{e:#}"))? else {
        return Ok(RegistryView::default());
    };
    let err = |e: crate::alloc::AllocError| e.to_string();
    Ok(RegistryView {
        leases: crate::alloc::leases(&dir).map_err(err)?,
        created: crate::alloc::created_instances(&dir).map_err(err)?,
        waiting: crate::alloc::waiting(&dir).map_err(err)?,
    })
}

impl RegistryView {
    fn kept(&self) -> Vec<(String, u32)> {
        self.created
            .iter()
            .filter(|r| {
                !self
                    .leases
                    .iter()
                    .any(|l| l.gpu_uuid == r.gpu_uuid && l.gi == r.gi)
            })
            .map(|r| (r.gpu_uuid.clone(), r.gi))
            .collect()
    }
}

/// The owner column: `lease 7 (pid 1234)`, `lease 7 draining`, `free (migrun's, kept warm)`, `not migrun's` (status
/// says `releasing` instead of `draining` for an idle instance whose destroy is pending).
fn owner_text(owner: &Owner, leases: &[Lease]) -> String {
    match owner {
        Owner::Lease { id, draining } => {
            let lease = leases.iter().find(|l| l.id == *id);
            let holder = lease.map_or(String::new(), |l| format!(" ({}, uid {})", l.holder, l.uid));
            let name = lease
                .and_then(|l| l.name.as_ref())
                .map_or(String::new(), |n| format!(" {:?}", n.as_str()));
            if *draining {
                format!("lease {id}{name} draining{holder}")
            } else {
                format!("lease {id}{name}{holder}")
            }
        }
        Owner::Shared { .. } => format!("{owner} (compute instances below)"),
        Owner::Kept => "free (migrun's, kept warm)".into(),
        Owner::Foreign { .. } => "not migrun's".into(),
    }
}

/// `migrun status`: GPUs, MIG mode, instances with their owners, a slot map, leases and waiters.
pub fn status(ctx: &Ctx, a: &ListArgs) -> Result<i32> {
    // Hold the allocation lock while reading the device and the registry, so the two agree
    // (no allocation or release lands between them). Without a usable state dir there are no leases to lock.
    let _lock = ctx
        .existing_state_dir()
        .ok()
        .flatten()
        .and_then(|d| crate::lease::Registry::open(&d).ok())
        .and_then(|r| r.lock().ok());
    let mut backend = ctx.read_backend()?;
    let gpus = selected(&mut *backend, a.gpu.as_deref(), true)?;
    let view = registry_view(ctx);
    let (leases, kept): (&[Lease], Vec<(String, u32)>) = match &view {
        Ok(v) => (&v.leases, v.kept()),
        Err(_) => (&[], Vec::new()),
    };
    let owner_of = |g: &GpuState, i: &crate::gpu::GpuInstance| -> Option<Owner> {
        view.as_ref().ok().map(|_| plan::owner(g, i, leases, &kept))
    };
    // Releasing (issue 23): its lease ended and nothing runs on it, so its destroy is pending, made in the background
    // (a container's end's worker, a release, or gc); a draining instance that still runs processes waits for them.
    let releasing = |g: &GpuState, i: &crate::gpu::GpuInstance| {
        i.processes == 0 && matches!(owner_of(g, i), Some(Owner::Lease { draining: true, .. }))
    };
    // Sharing GPU instances (migrun's `shared` records) show their compute-instance count in the slot map.
    let shared_of = |g: &GpuState| -> Vec<u32> {
        view.as_ref().map_or(Vec::new(), |v| {
            v.created
                .iter()
                .filter(|r| r.shared && r.gpu_uuid == g.info.uuid)
                .map(|r| r.gi)
                .collect()
        })
    };
    if a.json {
        let mut doc = serde_json::json!({
            "schema": SCHEMA_VERSION,
            "gpus": gpus.iter().map(|g| serde_json::json!({
                "index": g.info.index,
                "uuid": g.info.uuid,
                "name": g.info.name,
                "memory_mib": g.info.memory_mib,
                "mig_capable": g.info.mig.is_some(),
                "mig_mode": g.info.mig,
                "managed": ctx.config.manages(g.info.index, &g.info.uuid),
                "slots": g.slots(),
                "slot_map": g.slot_map_marking(&shared_of(g)),
                "instances": g.instances.iter().map(|i| serde_json::json!({
                    "gi": i.id,
                    "profile_id": i.profile_id,
                    "profile": g.profile_by_id(i.profile_id).map(|p| p.short_name()),
                    "placement": i.placement,
                    "ci": i.compute_instances.first().map(|c| c.id),
                    "mig_uuid": i.mig_uuid(),
                    "processes": i.processes,
                    "owner": owner_of(g, i),
                    "releasing": releasing(g, i),
                    "compute_instances": i.compute_instances.iter().map(|c| serde_json::json!({
                        "ci": c.id,
                        "mig_uuid": c.mig_uuid,
                        "lease": super::sharing::ci_lease(leases, g, i.id, c).map(|l| l.id),
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        match &view {
            Ok(v) => {
                doc["leases"] = serde_json::to_value(&v.leases)?;
                doc["waiting"] = serde_json::to_value(&v.waiting)?;
            }
            Err(e) => doc["leases_error"] = serde_json::Value::String(e.clone()),
        }
        doc["cdi"] = super::cdi::CdiStatus::read(ctx)?.json();
        crate::outln!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    for g in &gpus {
        let mode = match g.info.mig {
            None => "not MIG-capable".to_string(),
            Some(m) => format!("MIG {m}"),
        };
        crate::outln!(
            "GPU {} {}  {}  {}  {}",
            g.info.index,
            g.info.name,
            g.info.uuid,
            mode,
            g.slot_map_marking(&shared_of(g))
        );
        if !ctx.config.manages(g.info.index, &g.info.uuid) {
            crate::outln!("  not managed by migrun: outside the config's `gpus` list; migrun never allocates here");
        }
        if let Some(m) = g.info.mig {
            if let Some(step) =
                crate::migmode::next_step(g.info.index, m, ctx.global.simulate.as_deref())
            {
                crate::outln!("  MIG mode change pending: {step}");
            } else if !m.current {
                crate::outln!(
                    "  MIG is disabled: `sudo migrun mig enable --gpu {}` then reset the GPU",
                    g.info.index
                );
            }
        }
        let mut insts: Vec<_> = g.instances.iter().collect();
        insts.sort_by_key(|i| i.placement.start);
        for i in insts {
            let name = g
                .profile_by_id(i.profile_id)
                .map_or(format!("profile {}", i.profile_id), |p| {
                    p.short_name().to_string()
                });
            let mut owner =
                owner_of(g, i).map_or("owner unknown".into(), |o| owner_text(&o, leases));
            if releasing(g, i) {
                owner = owner.replacen(" draining", " releasing (destroyed in the background)", 1);
            }
            // A sharing GPU instance has one MIG device per compute instance, listed below it.
            let sharing = matches!(owner_of(g, i), Some(Owner::Shared { .. }));
            let cis = format!("({} compute instance(s))", i.compute_instances.len());
            crate::outln!(
                "  GI {:>2}  {:<12} at {:<5} {:<40}  {}{}",
                i.id,
                name,
                i.placement.to_string(),
                if sharing {
                    cis.as_str()
                } else {
                    i.mig_uuid().unwrap_or("(no compute instance)")
                },
                owner,
                if i.processes > 0 {
                    format!("  busy: {} process(es)", i.processes)
                } else {
                    String::new()
                }
            );
            if sharing {
                super::sharing::print_cis(g, i, leases, owner_text)?;
            }
        }
    }
    match &view {
        Err(e) => crate::outln!("leases: unknown ({e})"),
        Ok(v) => {
            let now = crate::lease::now();
            if v.leases.is_empty() {
                crate::outln!("no leases");
            } else {
                crate::outln!("leases:");
                for l in &v.leases {
                    crate::outln!(
                        "  {:>4}{}  GPU {} GI {:<2} {:<12} {}  {}, uid {}, {}{}{}",
                        l.id,
                        l.name.as_ref().map_or(String::new(), |n| format!(" {n}")),
                        l.gpu_index,
                        l.gi,
                        l.profile,
                        l.mig_uuid,
                        l.holder,
                        l.uid,
                        if l.created { "created" } else { "found" },
                        if l.keep { ", keep" } else { "" },
                        match l.state {
                            LeaseState::Active => format!(
                                ", for {}",
                                crate::alloc::clock(Duration::from_secs(
                                    now.saturating_sub(l.created_at)
                                ))
                            ),
                            LeaseState::Draining => ", draining".to_string(),
                        }
                    );
                }
            }
            if !v.waiting.is_empty() {
                let wants: Vec<String> = v
                    .waiting
                    .iter()
                    .map(|t| format!("{} (pid {})", t.want, t.pid))
                    .collect();
                crate::outln!("waiting: {}", wants.join(", "));
            }
        }
    }
    crate::outln!("{}", super::cdi::CdiStatus::read(ctx)?.line());
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
