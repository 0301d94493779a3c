//! Compute-instance profile tables per GPU model and GPU-instance profile, read from the `compute_instances` section of the compiled-in data/mig-profiles.json (each row with its source, unknowns as `None`); pure, it must not create or allocate anything (issue 22).
//!
//! NVML reports compute-instance profiles only for a GPU instance that exists, so `migrun profiles
//! --ci` (like `nvidia-smi mig -lcip`, per GPU-instance profile) reads these tables, for the
//! simulator and real GPUs alike. A model or GPU-instance profile the tables lack is reported as
//! unknown, never filled in.

use super::sim::models::{table_prefix_of_product, CI_SECTION_JSON};
use crate::profile::{CiProfileName, ProfileName};
use serde::Deserialize;
use serde_json::Value;

/// Compute slices of each NVML_COMPUTE_INSTANCE_PROFILE_* index (nvml.h; the file's `profile_indices`,
/// checked against it by a unit test): index 7 is the REV1 form of one slice.
pub const NVML_CI_PROFILE_SLICES: [u32; 8] = [1, 2, 3, 4, 7, 8, 6, 1];

/// Profile names go into JSON as users write them (`1c.3g.40gb`), as everywhere in migrun's output.
fn as_text<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// One compute-instance profile of a GPU-instance profile.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CiProfileRow {
    #[serde(serialize_with = "as_text")]
    pub name: CiProfileName,
    /// `NVML_COMPUTE_INSTANCE_PROFILE_*` of its slice count.
    pub nvml_index: Option<u32>,
    /// The ID `nvidia-smi mig -lcip` prints and `-cci` takes.
    pub profile_id: Option<u32>,
    pub compute_slices: u32,
    /// How many fit in one GPU instance (`Instances Total`).
    pub max_count: Option<u32>,
    pub sm: Option<u32>,
    pub shared_ce: Option<u32>,
    pub shared_dec: Option<u32>,
    pub shared_enc: Option<u32>,
    pub shared_jpeg: Option<u32>,
    pub shared_ofa: Option<u32>,
    /// The compute instance `-cgi … -C` creates (what migrun creates today).
    pub default: bool,
    /// H = real output, D = NVIDIA documentation, C = public code, I = inferred.
    pub basis: String,
}

/// The compute-instance profiles of one GPU-instance profile of a model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CiTable {
    #[serde(serialize_with = "as_text")]
    pub gi_profile: ProfileName,
    /// Keys of the data file's `sources`.
    pub sources: Vec<String>,
    pub rows: Vec<CiProfileRow>,
}

/// What the tables say about one GPU model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelCiTables {
    /// The data file's `model` field.
    pub model: String,
    pub note: Option<String>,
    /// Per GPU-instance profile, in the file's order; a GPU-instance profile not here is unknown.
    pub tables: Vec<CiTable>,
}

/// Why the section cannot be read: a defect of the compiled-in file (a unit test reads every row).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("data/mig-profiles.json's compute_instances section is not what migrun reads ({0}); this is a migrun bug: please report it")]
pub struct CiTableError(String);

impl crate::exit::ExitCodeOf for CiTableError {
    fn exit_code(&self) -> i32 {
        crate::exit::FAILED
    }
}

#[derive(Deserialize)]
struct Section {
    columns: Vec<String>,
    models: Vec<RawModel>,
}

#[derive(Deserialize)]
struct RawModel {
    model: String,
    #[serde(default)]
    note: Option<String>,
    gi_profiles: Vec<RawTable>,
}

#[derive(Deserialize)]
struct RawTable {
    gi_profile: String,
    source: Vec<String>,
    rows: Vec<Vec<Value>>,
}

const COLUMNS: &[&str] = &[
    "name",
    "nvml_index",
    "profile_id",
    "compute_slices",
    "max_count",
    "sm",
    "shared_ce",
    "shared_dec",
    "shared_enc",
    "shared_jpeg",
    "shared_ofa",
    "default",
    "basis",
];

fn num(v: &Value, col: &str) -> Result<Option<u32>, CiTableError> {
    match v {
        Value::Null => Ok(None),
        v => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| CiTableError(format!("{col} {v} is not a number or null"))),
    }
}

fn row(gi: ProfileName, cells: &[Value]) -> Result<CiProfileRow, CiTableError> {
    let bad = |why: String| CiTableError(format!("a row of {gi}: {why}"));
    let [name, nvml_index, profile_id, slices, max_count, sm, ce, dec, enc, jpeg, ofa, default, basis] =
        cells
    else {
        return Err(bad(format!("{} cells, not {}", cells.len(), COLUMNS.len())));
    };
    let name: CiProfileName = name
        .as_str()
        .ok_or_else(|| bad("name is not a string".into()))?
        .parse()
        .map_err(|e| bad(format!("{e}")))?;
    if name.gi != gi {
        return Err(bad(format!("{name} is not a profile of {gi}")));
    }
    let compute_slices =
        num(slices, "compute_slices")?.ok_or_else(|| bad("compute_slices is unknown".into()))?;
    if compute_slices != name.ci_slices {
        return Err(bad(format!(
            "{name} has {} compute slices, not {compute_slices}",
            name.ci_slices
        )));
    }
    Ok(CiProfileRow {
        name,
        nvml_index: num(nvml_index, "nvml_index")?,
        profile_id: num(profile_id, "profile_id")?,
        compute_slices,
        max_count: num(max_count, "max_count")?,
        sm: num(sm, "sm")?,
        shared_ce: num(ce, "shared_ce")?,
        shared_dec: num(dec, "shared_dec")?,
        shared_enc: num(enc, "shared_enc")?,
        shared_jpeg: num(jpeg, "shared_jpeg")?,
        shared_ofa: num(ofa, "shared_ofa")?,
        default: default
            .as_bool()
            .ok_or_else(|| bad("default is not true or false".into()))?,
        basis: basis
            .as_str()
            .ok_or_else(|| bad("basis is not a string".into()))?
            .to_string(),
    })
}

/// Every model's tables, in the file's order.
pub fn all() -> Result<Vec<ModelCiTables>, CiTableError> {
    cached().map(<[ModelCiTables]>::to_vec)
}

/// The tables, parsed on first use and kept for the process (the file is compiled in, so the
/// answer cannot change).
fn cached() -> Result<&'static [ModelCiTables], CiTableError> {
    static TABLES: std::sync::OnceLock<Result<Vec<ModelCiTables>, CiTableError>> =
        std::sync::OnceLock::new();
    TABLES.get_or_init(parse).as_deref().map_err(Clone::clone)
}

fn parse() -> Result<Vec<ModelCiTables>, CiTableError> {
    // Only the section (split out by build.rs): a simulated create asks for a GI's compute-instance
    // profiles, and parsing the whole file for it was most of a hook's instructions.
    let section: Section =
        serde_json::from_str(CI_SECTION_JSON).map_err(|e| CiTableError(e.to_string()))?;
    if section.columns != COLUMNS {
        return Err(CiTableError(format!("columns {:?}", section.columns)));
    }
    let mut out = Vec::new();
    for m in section.models {
        let mut tables = Vec::new();
        for t in m.gi_profiles {
            let gi: ProfileName = t
                .gi_profile
                .parse()
                .map_err(|e| CiTableError(format!("{}: {e}", t.gi_profile)))?;
            let rows = t
                .rows
                .iter()
                .map(|r| row(gi, r))
                .collect::<Result<Vec<_>, _>>()?;
            tables.push(CiTable {
                gi_profile: gi,
                sources: t.source,
                rows,
            });
        }
        out.push(ModelCiTables {
            model: m.model,
            note: m.note,
            tables,
        });
    }
    Ok(out)
}

/// The tables of the GPU whose product name is `product`; `Ok(None)` when the tables know nothing
/// of it (an unknown product, or a model without any compute-instance row yet).
pub fn for_product(product: &str) -> Result<Option<ModelCiTables>, CiTableError> {
    let Some(prefix) = table_prefix_of_product(product) else {
        return Ok(None);
    };
    Ok(cached()?
        .iter()
        .find(|m| m.model.starts_with(prefix))
        .cloned())
}

/// Why a compute-instance profile cannot be resolved on a GPU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CiResolveError {
    /// The GPU-instance profile it lives in does not exist on the GPU.
    #[error(transparent)]
    GiProfile(#[from] crate::profile::ProfileError),
    #[error("the compute-instance profiles of {gi} on {gpu} ({model}) are not in migrun's tables yet (unknown){}; see `migrun profiles --ci`", if .known.is_empty() { String::new() } else { format!(": it knows those of {}", .known.join(", ")) })]
    Unknown {
        gi: ProfileName,
        gpu: String,
        model: String,
        known: Vec<String>,
    },
    #[error("compute-instance profile {given} does not exist in a {gi} GPU instance on {gpu} ({model}); valid there: {valid}")]
    NoSuchProfile {
        given: CiProfileName,
        gi: ProfileName,
        gpu: String,
        model: String,
        valid: String,
    },
    #[error(transparent)]
    Table(#[from] CiTableError),
}

impl crate::exit::ExitCodeOf for CiResolveError {
    fn exit_code(&self) -> i32 {
        match self {
            CiResolveError::Table(e) => e.exit_code(),
            _ => crate::exit::USAGE,
        }
    }
}

/// Resolve `ci` on the GPU named `product` (labelled `gpu` in messages) that reports `profiles`:
/// its GPU-instance profile must exist there, and the tables must list `ci` among that profile's
/// compute instances. Unknown is an error, never a guess.
pub fn resolve(
    ci: &CiProfileName,
    profiles: &[super::GiProfile],
    gpu: &str,
    product: &str,
) -> Result<CiProfileRow, CiResolveError> {
    use crate::profile::ProfileSpec;
    let gi = super::names::resolve(&ProfileSpec::Name(ci.gi), profiles, gpu, product)?;
    let gi_name = gi.parsed_name().unwrap_or(ci.gi);
    let model = for_product(product)?;
    let unknown = |known: Vec<String>| CiResolveError::Unknown {
        gi: gi_name,
        gpu: gpu.to_string(),
        model: product.to_string(),
        known,
    };
    let Some(model) = model else {
        return Err(unknown(Vec::new()));
    };
    let Some(table) = model.tables.iter().find(|t| t.gi_profile == gi_name) else {
        let known = model
            .tables
            .iter()
            .map(|t| t.gi_profile.to_string())
            .collect();
        return Err(unknown(known));
    };
    table
        .rows
        .iter()
        .find(|r| r.name == *ci)
        .cloned()
        .ok_or_else(|| CiResolveError::NoSuchProfile {
            given: *ci,
            gi: gi_name,
            gpu: gpu.to_string(),
            model: product.to_string(),
            valid: table
                .rows
                .iter()
                .map(|r| r.name.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::sim::models::PROFILE_TABLE_JSON;

    #[test]
    fn resolution_on_every_model_table() {
        use crate::gpu::sim::models;
        // (model key, request, Ok(profile ID or None if unknown) or words of the refusal)
        type Case = (
            &'static str,
            &'static str,
            Result<Option<u32>, &'static str>,
        );
        let cases: &[Case] = &[
            ("a100-80gb", "1c.3g.40gb", Ok(Some(0))),
            ("a100-80gb", "MIG 2c.3g.40gb", Ok(Some(1))),
            ("a100-80gb", "3g.40gb", Ok(Some(2))),
            ("a100-80gb", "2c.4g.40gb", Ok(Some(1))),
            ("a100-80gb", "4c.4g.40gb", Ok(Some(3))),
            ("a100-80gb", "3c.4g.40gb", Err("does not exist in a 4g.40gb GPU instance")),
            ("a100-80gb", "1c.7g.80gb", Err("of 7g.80gb on GPU 0 (NVIDIA A100-SXM4-80GB) are not in migrun's tables yet (unknown): it knows those of 3g.40gb, 4g.40gb")),
            ("a100-80gb", "1c.3g.20gb", Err("profile 3g.20gb does not exist on GPU 0")),
            ("h100-80gb", "1c.3g.40gb", Ok(None)),
            ("h100-80gb", "2c.3g.40gb", Err("valid there: 1c.3g.40gb")),
            ("h100-80gb", "1c.2g.20gb", Err("not in migrun's tables yet (unknown)")),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for (key, given, want) in cases {
            let m = models::model(key).unwrap();
            let ci: CiProfileName = given.parse().unwrap();
            match (resolve(&ci, &m.profiles, "GPU 0", m.product), want) {
                (Ok(row), Ok(id)) => assert_eq!(row.profile_id, *id, "{key} {given}"),
                (Err(e), Err(words)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(words), "{key} {given}: {msg}");
                    assert!(!msg.contains('\n'));
                    assert_eq!(crate::exit::ExitCodeOf::exit_code(&e), crate::exit::USAGE);
                }
                (got, want) => panic!("{key} {given}: got {got:?}, want {want:?}"),
            }
            seen.insert(*key);
        }
        // Every other simulatable model: nothing known, said so for each of its profiles.
        for key in models::simulatable_keys() {
            if seen.contains(key) {
                continue;
            }
            let m = models::model(key).unwrap();
            for p in &m.profiles {
                let Some(gi) = p.parsed_name() else { continue };
                let ci = CiProfileName { ci_slices: 1, gi };
                let e = resolve(&ci, &m.profiles, "GPU 0", m.product).unwrap_err();
                assert!(
                    matches!(e, CiResolveError::Unknown { ref known, .. } if known.is_empty()),
                    "{key} {ci}: {e}"
                );
            }
        }
    }

    #[test]
    fn the_index_constant_is_the_files() {
        let doc: Value = serde_json::from_str(PROFILE_TABLE_JSON).unwrap();
        let rows = doc["compute_instances"]["profile_indices"]
            .as_array()
            .unwrap();
        assert_eq!(rows.len(), NVML_CI_PROFILE_SLICES.len());
        for r in rows {
            let i = r["nvml_index"].as_u64().unwrap() as usize;
            assert_eq!(
                r["compute_slices"].as_u64().unwrap() as u32,
                NVML_CI_PROFILE_SLICES[i]
            );
        }
    }

    #[test]
    fn the_split_section_is_the_files() {
        let doc: Value = serde_json::from_str(PROFILE_TABLE_JSON).unwrap();
        let split: Value = serde_json::from_str(CI_SECTION_JSON).unwrap();
        assert_eq!(split, doc["compute_instances"]);
    }

    #[test]
    fn every_row_reads_and_the_sourced_rows_are_as_listed() {
        let all = all().unwrap();
        let doc: Value = serde_json::from_str(PROFILE_TABLE_JSON).unwrap();
        let sources = doc["sources"].as_object().unwrap();
        let models: Vec<&str> = doc["gpus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["model"].as_str().unwrap())
            .collect();
        for m in &all {
            assert!(
                models.contains(&m.model.as_str()),
                "{} is a gpus model",
                m.model
            );
            for t in &m.tables {
                assert!(
                    !t.sources.is_empty() && !t.rows.is_empty(),
                    "{}",
                    t.gi_profile
                );
                for s in &t.sources {
                    assert!(sources.contains_key(s), "source {s} of {}", t.gi_profile);
                }
                assert!(t.rows.iter().filter(|r| r.default).count() <= 1);
            }
        }
        // (product, GI profile) -> (name, profile ID, max count, SM, default) per row.
        type Want = &'static [(&'static str, Option<u32>, Option<u32>, Option<u32>, bool)];
        let cases: &[(&str, &str, Want)] = &[
            (
                "NVIDIA A100-SXM4-80GB",
                "3g.40gb",
                &[
                    ("1c.3g.40gb", Some(0), Some(3), Some(14), false),
                    ("2c.3g.40gb", Some(1), Some(1), Some(28), false),
                    ("3g.40gb", Some(2), Some(1), Some(42), true),
                ],
            ),
            (
                "NVIDIA A100-SXM4-80GB",
                "4g.40gb",
                &[
                    ("1c.4g.40gb", Some(0), Some(4), Some(14), false),
                    ("2c.4g.40gb", Some(1), Some(2), Some(28), false),
                    ("4g.40gb", Some(3), Some(1), Some(56), true),
                ],
            ),
            (
                "NVIDIA H100 80GB HBM3",
                "3g.40gb",
                &[("1c.3g.40gb", None, None, None, false)],
            ),
        ];
        for (product, gi, want) in cases {
            let m = for_product(product).unwrap().unwrap();
            let t = m
                .tables
                .iter()
                .find(|t| t.gi_profile.to_string() == *gi)
                .unwrap_or_else(|| panic!("{product} {gi}"));
            let got: Vec<_> = t
                .rows
                .iter()
                .map(|r| {
                    (
                        r.name.to_string(),
                        r.profile_id,
                        r.max_count,
                        r.sm,
                        r.default,
                    )
                })
                .collect();
            let want: Vec<_> = want
                .iter()
                .map(|(n, id, c, sm, d)| (n.to_string(), *id, *c, *sm, *d))
                .collect();
            assert_eq!(got, want, "{product} {gi}");
            // The NVML index is the constant of the slice count.
            for r in &t.rows {
                let idx = [(1, 0), (2, 1), (3, 2), (4, 3), (7, 4), (8, 5), (6, 6)]
                    .iter()
                    .find(|(s, _)| *s == r.compute_slices)
                    .map(|(_, i)| *i);
                assert_eq!(r.nvml_index, idx, "{}", r.name);
            }
        }
        // Unknown: models without rows, and products the tables do not name.
        for product in ["NVIDIA H200", "NVIDIA A30", "NVIDIA GeForce RTX 4090"] {
            assert_eq!(for_product(product).unwrap(), None, "{product}");
        }
    }
}
