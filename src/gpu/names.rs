//! Matching requested profile names to the profiles one GPU reports (`resolve`, `matches`); it must not parse names itself (that is the `profile` leaf) or touch hardware.
//!
//! IDs and names belong to a GPU model (profile 14 is 2g.20gb on an H100 but 1g.6gb on an A30), so a
//! request is only ever turned into a concrete profile against one GPU's own profile list.

use super::GiProfile;
use crate::profile::{self, ProfileError, ProfileName, ProfileSpec};

impl GiProfile {
    /// The structured name of a profile as the GPU reports it (`MIG 3g.40gb` -> 3g.40gb).
    pub fn parsed_name(&self) -> Option<ProfileName> {
        profile::parse_reported(self.short_name())
    }
}

/// Does `spec` name `profile`? IDs compare as IDs, names structurally.
pub fn matches(spec: &ProfileSpec, profile: &GiProfile) -> bool {
    match spec {
        ProfileSpec::Id(id) => profile.id == *id,
        ProfileSpec::Name(n) => profile.parsed_name().as_ref() == Some(n),
    }
}

/// Resolve a request against one GPU's profiles. `gpu` and `model` only feed the error message.
pub fn resolve<'a>(
    spec: &ProfileSpec,
    profiles: &'a [GiProfile],
    gpu: &str,
    model: &str,
) -> Result<&'a GiProfile, ProfileError> {
    if let Some(p) = profiles.iter().find(|p| matches(spec, p)) {
        return Ok(p);
    }
    let mut ordered: Vec<&GiProfile> = profiles.iter().collect();
    ordered.sort_by_key(|p| (p.slice_count, p.memory_mib, p.nvml_index));
    let names: Vec<String> = ordered
        .iter()
        .map(|p| format!("{} (ID {})", p.short_name(), p.id))
        .collect();
    let given = spec.to_string();
    let nearest = match spec {
        ProfileSpec::Id(_) => None,
        ProfileSpec::Name(_) => profiles
            .iter()
            .map(|p| p.short_name().to_string())
            .min_by_key(|n| strsim::damerau_levenshtein(n, &given))
            .filter(|n| strsim::damerau_levenshtein(n, &given) <= given.len() / 2 + 1),
    };
    Err(ProfileError::Unknown {
        given,
        gpu: gpu.to_string(),
        model: model.to_string(),
        valid: if names.is_empty() {
            "none (the GPU is not MIG-capable)".into()
        } else {
            names.join(", ")
        },
        nearest,
    })
}
