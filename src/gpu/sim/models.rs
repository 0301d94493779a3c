//! Simulated GPU models, built from the compiled-in `data/mig-profiles.json`; it must not invent values the table lacks.
//!
//! The table is the project's ground truth for what each GPU model offers. A model whose rows hold
//! `null` in a field the simulator needs (profile ID, placements, memory) is refused by name, with
//! the missing field, instead of being filled in with a guess. Engine counts may be unknown: they are
//! carried as `None` and printed as `?`.

use crate::gpu::{GiProfile, Placement};
use serde_json::Value;
use std::sync::OnceLock;

/// The profile tables, exactly as shared with the rest of the project.
pub const PROFILE_TABLE_JSON: &str = include_str!("../../../data/mig-profiles.json");

/// A model the simulator knows by name, mapped onto a row group of the table.
struct ModelName {
    key: &'static str,
    /// Prefix of the table's `model` field.
    table_prefix: &'static str,
    /// Product name as `nvidia-smi -L` prints it.
    product: &'static str,
    /// Total memory in MiB where a real reading exists (see `data/mig-profiles.json` notes and the H100 fixture);
    /// otherwise the full-GPU profile's memory is used.
    memory_mib: Option<u64>,
}

const MODEL_NAMES: &[ModelName] = &[
    ModelName {
        key: "a30-24gb",
        table_prefix: "A30-24GB",
        product: "NVIDIA A30",
        memory_mib: None,
    },
    ModelName {
        key: "a100-40gb",
        table_prefix: "A100-SXM4-40GB",
        product: "NVIDIA A100-SXM4-40GB",
        memory_mib: None,
    },
    ModelName {
        key: "a100-80gb",
        table_prefix: "A100-SXM4-80GB",
        product: "NVIDIA A100-SXM4-80GB",
        memory_mib: None,
    },
    ModelName {
        key: "h100-80gb",
        table_prefix: "H100-80GB",
        product: "NVIDIA H100 80GB HBM3",
        memory_mib: Some(81559),
    },
    ModelName {
        key: "h100-94gb",
        table_prefix: "H100-94GB",
        product: "NVIDIA H100 NVL",
        memory_mib: None,
    },
    ModelName {
        key: "h100-96gb",
        table_prefix: "H100-96GB",
        product: "NVIDIA GH200 96GB HBM3",
        memory_mib: None,
    },
    ModelName {
        key: "h200-141gb",
        table_prefix: "H200-141GB",
        product: "NVIDIA H200",
        memory_mib: Some(143771),
    },
    ModelName {
        key: "b200-180gb",
        table_prefix: "B200-180GB",
        product: "NVIDIA B200",
        memory_mib: Some(182784),
    },
    ModelName {
        key: "rtx-pro-6000",
        table_prefix: "RTX PRO 6000",
        product: "NVIDIA RTX PRO 6000 Blackwell Server Edition",
        memory_mib: None,
    },
    ModelName {
        key: "gh200-144gb",
        table_prefix: "GH200-144GB",
        product: "NVIDIA GH200 144G HBM3e",
        memory_mib: None,
    },
    ModelName {
        key: "gb200-186gb",
        table_prefix: "GB200",
        product: "NVIDIA GB200",
        memory_mib: None,
    },
    ModelName {
        key: "rtx-pro-5000",
        table_prefix: "RTX PRO 5000",
        product: "NVIDIA RTX PRO 5000 Blackwell",
        memory_mib: None,
    },
    ModelName {
        key: "rtx-pro-4500",
        table_prefix: "RTX PRO 4500",
        product: "NVIDIA RTX PRO 4500 Blackwell",
        memory_mib: None,
    },
];

/// A fully known simulated model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub key: &'static str,
    pub product: &'static str,
    pub memory_mib: u64,
    /// Profiles in NVML index order, with `remaining` set to the empty-GPU value.
    pub profiles: Vec<GiProfile>,
}

/// Why a model cannot be simulated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("unknown GPU model {given:?}; simulated models: {}", model_keys().join(", "))]
    Unknown { given: String },
    #[error("GPU model {key} cannot be simulated: mig-profiles.json has no value for {field} of profile {profile} (null = unknown, and migrun does not invent it); pick one of: {}", simulatable_keys().join(", "))]
    Incomplete {
        key: String,
        profile: String,
        field: &'static str,
    },
}

impl crate::exit::ExitCodeOf for ModelError {
    fn exit_code(&self) -> i32 {
        crate::exit::USAGE
    }
}

/// Every model name the simulator recognises (including ones refused for missing data).
pub fn model_keys() -> Vec<&'static str> {
    MODEL_NAMES.iter().map(|m| m.key).collect()
}

/// The table's `model` prefix of the GPU whose product name (as `nvidia-smi -L` and NVML print it) is
/// `product`; `None` for a product the tables do not name.
pub fn table_prefix_of_product(product: &str) -> Option<&'static str> {
    MODEL_NAMES
        .iter()
        .find(|m| m.product == product)
        .map(|m| m.table_prefix)
}

/// The models whose tables are complete enough to simulate.
pub fn simulatable_keys() -> Vec<&'static str> {
    MODEL_NAMES
        .iter()
        .filter(|m| load(m).is_ok())
        .map(|m| m.key)
        .collect()
}

/// The table split per model at build time (build.rs): column names, and each group's rows as raw JSON. Every
/// simulator command and hook loads one model, and parsing the whole file (notes, sources, nine models) was a
/// third of a hook's CPU time; now only the needed model's rows are parsed.
mod split {
    include!(concat!(env!("OUT_DIR"), "/model_tables.rs"));
}

/// The data file's `compute_instances` section alone (gpu::ci_tables parses only this).
pub(crate) const CI_SECTION_JSON: &str = split::CI_SECTION;

fn column_index(name: &str) -> usize {
    split::COLUMNS
        .iter()
        .position(|c| *c == name)
        .unwrap_or_else(|| panic!("mig-profiles.json has no column {name}"))
}

/// A row's cell; a short row reads as `null` (unknown), like a missing value.
fn cell(row: &[Value], i: usize) -> &Value {
    row.get(i).unwrap_or(&Value::Null)
}

fn load(name: &ModelName) -> Result<Model, ModelError> {
    let (_, rows) = split::GROUPS
        .iter()
        .find(|(model, _)| model.starts_with(name.table_prefix))
        .ok_or_else(|| ModelError::Unknown {
            given: name.key.into(),
        })?;
    let rows: Vec<Vec<Value>> = serde_json::from_str::<Option<Vec<Vec<Value>>>>(rows)
        .expect("build.rs wrote the rows as JSON")
        .unwrap_or_default();
    let mut profiles = Vec::new();
    for row in &rows {
        let profile_name = cell(row, column_index("name"))
            .as_str()
            .unwrap_or("?")
            .to_string();
        let incomplete = |field: &'static str| ModelError::Incomplete {
            key: name.key.into(),
            profile: profile_name.clone(),
            field,
        };
        let req = |field: &'static str| -> Result<u64, ModelError> {
            cell(row, column_index(field))
                .as_u64()
                .ok_or_else(|| incomplete(field))
        };
        let opt = |field: &str| cell(row, column_index(field)).as_u64().map(|v| v as u32);
        let size = req("placement_size")? as u32;
        let starts = cell(row, column_index("placement_starts"))
            .as_array()
            .ok_or_else(|| incomplete("placement_starts"))?;
        let placements = starts
            .iter()
            .map(|s| {
                s.as_u64().map(|start| Placement {
                    start: start as u32,
                    size,
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| incomplete("placement_starts"))?;
        let instance_count = req("max_count")? as u32;
        profiles.push(GiProfile {
            nvml_index: req("nvml_index")? as u32,
            id: req("profile_id")? as u32,
            name: format!("MIG {profile_name}"),
            slice_count: req("compute_slices")? as u32,
            instance_count,
            memory_mib: req("memory_mib")?,
            p2p: false,
            sm: opt("sm"),
            ce: opt("ce"),
            dec: opt("nvdec"),
            enc: opt("nvenc"),
            jpeg: opt("jpeg"),
            ofa: opt("ofa"),
            remaining: instance_count,
            placements,
        });
    }
    profiles.sort_by_key(|p| p.nvml_index);
    let memory_mib = name
        .memory_mib
        .or_else(|| profiles.iter().map(|p| p.memory_mib).max())
        .unwrap_or(0);
    Ok(Model {
        key: name.key,
        product: name.product,
        memory_mib,
        profiles,
    })
}

/// Look a model up by its simulator name (`h100-80gb`).
pub fn model(key: &str) -> Result<Model, ModelError> {
    let key_lc = key.trim().to_ascii_lowercase();
    let i = MODEL_NAMES
        .iter()
        .position(|m| m.key == key_lc)
        .ok_or_else(|| ModelError::Unknown { given: key.into() })?;
    // Loaded once per process: a snapshot of an 8-GPU machine asks for the model of every GPU several times.
    static LOADED: OnceLock<Vec<OnceLock<Result<Model, ModelError>>>> = OnceLock::new();
    let loaded = LOADED.get_or_init(|| MODEL_NAMES.iter().map(|_| OnceLock::new()).collect());
    loaded[i].get_or_init(|| load(&MODEL_NAMES[i])).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_time_split_holds_the_table_unchanged() {
        let table: Value = serde_json::from_str(PROFILE_TABLE_JSON).unwrap();
        let columns: Vec<&str> = table["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(columns, split::COLUMNS);
        let groups = table["gpus"].as_array().unwrap();
        assert_eq!(groups.len(), split::GROUPS.len());
        for (g, (model, rows)) in groups.iter().zip(split::GROUPS) {
            assert_eq!(g["model"].as_str(), Some(*model));
            let rows: Value = serde_json::from_str(rows).unwrap();
            assert_eq!(rows, g["rows"], "{model}");
        }
    }

    #[test]
    fn every_required_model_loads_with_real_ids() {
        for key in [
            "a30-24gb",
            "a100-40gb",
            "a100-80gb",
            "h100-80gb",
            "h100-94gb",
            "h100-96gb",
            "h200-141gb",
            "b200-180gb",
            "rtx-pro-6000",
        ] {
            let m = model(key).unwrap_or_else(|e| panic!("{key}: {e}"));
            assert!(!m.profiles.is_empty(), "{key}");
            for p in &m.profiles {
                assert!(!p.placements.is_empty(), "{key} {}", p.name);
                assert!(p.parsed_name().is_some(), "{key} {}", p.name);
            }
        }
        let h100 = model("h100-80gb").unwrap();
        let three = h100
            .profiles
            .iter()
            .find(|p| p.name == "MIG 3g.40gb")
            .unwrap();
        assert_eq!(three.id, 9);
        assert_eq!(
            three.placements,
            vec![
                Placement { start: 0, size: 4 },
                Placement { start: 4, size: 4 }
            ]
        );
    }

    #[test]
    fn incomplete_models_are_refused_by_field() {
        for key in ["gh200-144gb", "gb200-186gb", "rtx-pro-5000", "rtx-pro-4500"] {
            let e = model(key).unwrap_err();
            assert!(matches!(e, ModelError::Incomplete { .. }), "{key}: {e}");
            assert!(e.to_string().contains("no value for"), "{e}");
        }
        assert!(matches!(model("h100-8gb"), Err(ModelError::Unknown { .. })));
    }
}
