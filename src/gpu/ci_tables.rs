//! Compute-instance profile tables per GPU model and GPU-instance profile, read from the `compute_instances` section of the compiled-in data/mig-profiles.json (each row with its source, unknowns as `None`); pure, it must not create or allocate anything (issue 22).
//!
//! NVML reports compute-instance profiles only for a GPU instance that exists, so `migrun profiles
//! --ci` (like `nvidia-smi mig -lcip`, per GPU-instance profile) reads these tables, for the
//! simulator and real GPUs alike. A model or GPU-instance profile the tables lack is reported as
//! unknown, never filled in.

use super::sim::models::{table_prefix_of_product, PROFILE_TABLE_JSON};
use crate::profile::{CiProfileName, ProfileName};
use serde::Deserialize;
use serde_json::Value;

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
    let doc: Value =
        serde_json::from_str(PROFILE_TABLE_JSON).map_err(|e| CiTableError(e.to_string()))?;
    let section: Section = serde_json::from_value(doc["compute_instances"].clone())
        .map_err(|e| CiTableError(e.to_string()))?;
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
    Ok(all()?.into_iter().find(|m| m.model.starts_with(prefix)))
}

#[cfg(test)]
mod tests {
    use super::*;

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
