//! The simulator's compute instances inside a GPU instance: which CI profiles a GI offers, where they may sit, creating one (the IN_USE rules of destroying live in `machine`); it must not do I/O.
//!
//! The profiles come from the sourced tables (`gpu::ci_tables`): a row is served only when the tables
//! know its profile ID and its count, so nothing is invented (on an H100 the tables know that
//! `1c.3g.40gb` exists but neither its ID nor its count: the simulator does not offer it). Every GI
//! also offers its full-GI default compute instance (what `nvidia-smi mig -cgi … -C` creates); where
//! the tables lack its ID, the simulator numbers it by its NVML_COMPUTE_INSTANCE_PROFILE_* index, as
//! every sourced row does.
//!
//! Placements inside a GI are not in any source (`-lcipp` output is unknown for every model). The
//! simulator's own model: a profile of `c` compute slices may start at any multiple of `c` that
//! keeps it inside the GI, at most its count of them. It reproduces every count the tables list
//! (a unit test checks), and compute instances never overlap.

use super::machine::{uuid_from, SimCi, SimMachine};
use crate::gpu::ci_tables;
use crate::gpu::rules::{self, Occupant};
use crate::gpu::{CiPlacement, CiProfile, Code, ComputeInstance, GiProfile, Placement};

/// The NVML index of the CI profile with `slices` compute slices (the first, not the REV1 one).
pub fn nvml_index_of_slices(slices: u32) -> Option<u32> {
    ci_tables::NVML_CI_PROFILE_SLICES
        .iter()
        .position(|s| *s == slices)
        .map(|i| i as u32)
}

/// The simulator's placements of a `slices`-slice CI profile in a GI of `gi_slices` compute slices.
fn placements(slices: u32, gi_slices: u32, count: u32) -> Vec<Placement> {
    (0..gi_slices)
        .step_by(slices.max(1) as usize)
        .filter(|s| s + slices <= gi_slices)
        .map(|start| Placement {
            start,
            size: slices,
        })
        .take(count as usize)
        .collect()
}

/// The CI profiles a GI of `gi` offers on a GPU whose product name is `product`, with `remaining`
/// as for an empty GI.
pub fn offered(product: &str, gi: &GiProfile) -> Vec<CiProfile> {
    let mut out = Vec::new();
    let table = gi.parsed_name().and_then(|name| {
        ci_tables::for_product(product)
            .ok()
            .flatten()
            .and_then(|m| m.tables.into_iter().find(|t| t.gi_profile == name))
    });
    for row in table.iter().flat_map(|t| t.rows.iter()) {
        let (Some(nvml_index), Some(id), Some(count)) =
            (row.nvml_index, row.profile_id, row.max_count)
        else {
            continue;
        };
        let placements = placements(row.compute_slices, gi.slice_count, count);
        out.push(CiProfile {
            nvml_index,
            id,
            slice_count: row.compute_slices,
            instance_count: count,
            remaining: placements.len() as u32,
            placements,
        });
    }
    if !out.iter().any(|p| p.slice_count == gi.slice_count) {
        if let Some(index) = nvml_index_of_slices(gi.slice_count) {
            out.push(CiProfile {
                nvml_index: index,
                id: index,
                slice_count: gi.slice_count,
                instance_count: 1,
                placements: placements(gi.slice_count, gi.slice_count, 1),
                remaining: 1,
            });
        }
    }
    out.sort_by_key(|p| p.nvml_index);
    out
}

/// Where an existing compute instance sits; a state file from before CI profiles holds only full-GI ones.
fn ci_placement(c: &SimCi, gi_slices: u32) -> Placement {
    c.placement.unwrap_or(Placement {
        start: 0,
        size: gi_slices,
    })
}

/// The compute instances of a GI as the shared slot rules see them (profile ID unknown in an old state file: `u32::MAX`).
fn occupants(cis: &[SimCi], gi_slices: u32) -> Vec<Occupant> {
    cis.iter()
        .map(|c| Occupant {
            profile_id: c.profile_id.unwrap_or(u32::MAX),
            placement: ci_placement(c, gi_slices),
        })
        .collect()
}

impl SimMachine {
    fn gi_profile_of(&self, gpu: u32, gi: u32) -> Result<(GiProfile, Vec<SimCi>), Code> {
        let model = self.model(gpu)?;
        let inst = self.instance(gpu, gi)?;
        let profile = model
            .profiles
            .iter()
            .find(|p| p.id == inst.profile_id)
            .cloned()
            .ok_or(Code::Unknown)?;
        Ok((profile, inst.cis.clone()))
    }

    /// nvmlGpuInstanceGetComputeInstanceProfileInfo over every index, with placements and remaining capacity.
    pub fn ci_profiles(&self, gpu: u32, gi: u32) -> Result<Vec<CiProfile>, Code> {
        let (gp, cis) = self.gi_profile_of(gpu, gi)?;
        let mut profiles = offered(self.model(gpu)?.product, &gp);
        let existing = occupants(&cis, gp.slice_count);
        for p in &mut profiles {
            let taken = existing.iter().filter(|o| o.profile_id == p.id).count() as u32;
            let free = rules::disjoint_free(&p.placements, &existing);
            p.remaining = free.min(p.instance_count.saturating_sub(taken));
        }
        Ok(profiles)
    }

    /// nvmlGpuInstanceCreateComputeInstanceWithPlacement: `start` in compute slices of the GI.
    pub fn create_ci(
        &mut self,
        gpu: u32,
        gi: u32,
        profile_id: u32,
        start: u32,
    ) -> Result<ComputeInstance, Code> {
        let (gp, cis) = self.gi_profile_of(gpu, gi)?;
        let profiles = self.ci_profiles(gpu, gi)?;
        let profile = profiles
            .iter()
            .find(|p| p.id == profile_id)
            .ok_or(Code::InvalidArgument)?;
        let placement = *profile
            .placements
            .iter()
            .find(|p| p.start == start)
            .ok_or(Code::InvalidArgument)?;
        if profile.remaining == 0
            || !rules::placement_free(&occupants(&cis, gp.slice_count), &placement)
        {
            return Err(Code::InsufficientResources);
        }
        let g = &mut self.gpus[gpu as usize];
        g.serial += 1;
        let serial = g.serial;
        let gpu_uuid = g.uuid.clone();
        let inst = self.instance_mut(gpu, gi)?;
        // CI ids count from 0 within a GI; the lowest free one is taken, as the driver does.
        let id = rules::lowest_free_id(0, inst.cis.iter().map(|c| c.id));
        let ci = SimCi {
            id,
            uuid: format!(
                "MIG-{}",
                uuid_from(&format!("mig/{gpu_uuid}/{gi}/{id}/{serial}"))
            ),
            profile_id: Some(profile_id),
            placement: Some(placement),
            processes: 0,
        };
        inst.cis.push(ci.clone());
        Ok(ComputeInstance {
            id,
            mig_uuid: ci.uuid,
            processes: 0,
        })
    }

    /// nvmlGpuInstanceCreateComputeInstance: no placement given, so the lowest free one is taken.
    pub fn create_ci_anywhere(
        &mut self,
        gpu: u32,
        gi: u32,
        profile_id: u32,
    ) -> Result<ComputeInstance, Code> {
        let (gp, cis) = self.gi_profile_of(gpu, gi)?;
        let profiles = self.ci_profiles(gpu, gi)?;
        let profile = profiles
            .iter()
            .find(|p| p.id == profile_id)
            .ok_or(Code::InvalidArgument)?;
        let existing = occupants(&cis, gp.slice_count);
        let start = profile
            .placements
            .iter()
            .find(|pl| rules::placement_free(&existing, pl))
            .ok_or(Code::InsufficientResources)?
            .start;
        self.create_ci(gpu, gi, profile_id, start)
    }

    /// Create the full-GI default compute instance (a second, or one beside smaller ones, gives
    /// INSUFFICIENT_RESOURCES: it overlaps them).
    pub fn create_default_ci(&mut self, gpu: u32, gi: u32) -> Result<ComputeInstance, Code> {
        let (gp, _) = self.gi_profile_of(gpu, gi)?;
        let id = offered(self.model(gpu)?.product, &gp)
            .iter()
            .find(|p| p.slice_count == gp.slice_count)
            .ok_or(Code::NotSupported)?
            .id;
        self.create_ci_anywhere(gpu, gi, id)
    }

    /// A compute instance's profile ID and placement inside its GI (nvmlComputeInstanceGetInfo).
    pub fn ci_details(&self, gpu: u32, gi: u32, ci: u32) -> Result<(u32, Placement), Code> {
        let (gp, cis) = self.gi_profile_of(gpu, gi)?;
        let c = cis.iter().find(|c| c.id == ci).ok_or(Code::NotFound)?;
        let id = match c.profile_id {
            Some(id) => id,
            None => {
                offered(self.model(gpu)?.product, &gp)
                    .iter()
                    .find(|p| p.slice_count == gp.slice_count)
                    .ok_or(Code::Unknown)?
                    .id
            }
        };
        Ok((id, ci_placement(c, gp.slice_count)))
    }

    /// Every compute instance of a GI with its profile ID and placement, by CI id.
    pub fn ci_placements(&self, gpu: u32, gi: u32) -> Result<Vec<CiPlacement>, Code> {
        let (_, cis) = self.gi_profile_of(gpu, gi)?;
        let mut out = cis
            .iter()
            .map(|c| {
                self.ci_details(gpu, gi, c.id)
                    .map(|(profile_id, placement)| CiPlacement {
                        ci: c.id,
                        profile_id,
                        placement,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|c| c.ci);
        Ok(out)
    }

    /// Attach (or with 0, detach) simulated compute processes to one compute instance.
    pub fn set_ci_processes(&mut self, gpu: u32, gi: u32, ci: u32, count: u32) -> Result<(), Code> {
        let c = self
            .instance_mut(gpu, gi)?
            .cis
            .iter_mut()
            .find(|c| c.id == ci)
            .ok_or(Code::NotFound)?;
        c.processes = count;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
