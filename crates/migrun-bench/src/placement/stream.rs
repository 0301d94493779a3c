//! Request streams for the placement benchmark: request kinds resolved per GPU model, generated Poisson streams and JSON-lines traces; it must not place anything.

use super::BenchError;
use migrun::gpu::{GiProfile, MigState};
use migrun::profile::{ProfileSpec, Variant};
use std::path::Path;
use std::str::FromStr;

/// A reproducible pseudo-random source (SplitMix64).
///
/// Hand-written on purpose: the benchmark's tables in docs/benchmarks.md must be reproducible from
/// a seed forever, and general-purpose RNG crates do not promise value stability across versions.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Exponentially distributed with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        // 1 - u lies in (0, 1], so the logarithm is finite.
        -mean * (1.0 - self.unit()).ln()
    }
}

/// A size class of the generated mixes: compute slices plus memory class, resolved per GPU model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The smallest 1-slice profile (1g.10gb on H100).
    One,
    /// The 1-slice profile with more memory (1g.20gb on H100, profile ID 15 on A100/H100/H200/B200).
    OneDouble,
    Two,
    Three,
    Four,
    Seven,
}

impl Class {
    pub const ALL: [Class; 6] = [
        Class::One,
        Class::OneDouble,
        Class::Two,
        Class::Three,
        Class::Four,
        Class::Seven,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Class::One => "1g",
            Class::OneDouble => "1g-double-mem",
            Class::Two => "2g",
            Class::Three => "3g",
            Class::Four => "4g",
            Class::Seven => "7g",
        }
    }

    /// This class's profile among one GPU's profiles, if the model has one. Only plain (no variant)
    /// profiles take part; the 1-slice profiles are told apart by memory, never by name.
    pub fn resolve(self, profiles: &[GiProfile]) -> Option<&GiProfile> {
        let plain = |slices: u32| {
            let mut v: Vec<&GiProfile> = profiles
                .iter()
                .filter(|p| {
                    p.slice_count == slices
                        && p.parsed_name().is_some_and(|n| n.variant == Variant::Plain)
                })
                .collect();
            v.sort_by_key(|p| (p.memory_mib, p.nvml_index));
            v
        };
        match self {
            Class::One => plain(1).first().copied(),
            Class::OneDouble => plain(1).get(1).copied(),
            Class::Two => plain(2).first().copied(),
            Class::Three => plain(3).first().copied(),
            Class::Four => plain(4).first().copied(),
            Class::Seven => plain(7).first().copied(),
        }
    }
}

/// A generated request mix: relative weights of the classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    Uniform,
    SmallHeavy,
}

impl Mix {
    pub fn label(self) -> &'static str {
        match self {
            Mix::Uniform => "uniform",
            Mix::SmallHeavy => "small-heavy",
        }
    }
    /// Weight of each class, in [`Class::ALL`] order.
    pub fn weights(self) -> [f64; 6] {
        match self {
            Mix::Uniform => [1.0; 6],
            Mix::SmallHeavy => [5.0, 2.0, 2.0, 1.0, 1.0, 0.5],
        }
    }
}

impl FromStr for Mix {
    type Err = BenchError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "uniform" => Ok(Mix::Uniform),
            "small-heavy" => Ok(Mix::SmallHeavy),
            other => Err(BenchError::Input(format!(
                "unknown --mix {other:?}: use uniform or small-heavy"
            ))),
        }
    }
}

/// One kind of request as the benchmark replays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kind {
    /// What the tables print (the profile's short name on the first GPU that has it).
    pub label: String,
    /// What is handed to `placement::choose`, exactly as a user's `--profile` would be.
    pub spec: ProfileSpec,
    /// Memory slices one instance covers (placement size on the first GPU that has it).
    pub slices: u32,
}

/// One request: arrival time, kind (index into the kinds list) and lifetime.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    pub t: f64,
    pub kind: usize,
    pub life: f64,
}

/// Resolve every class against the machine. Classes that no GPU has are left out (`None`).
///
/// A class must name one profile everywhere it exists: the spec is its name when every model
/// agrees on the name (names are structural, so safe across models), otherwise the request could
/// not be written as one `--profile` and the machine is refused.
pub fn class_kinds(state: &MigState) -> Result<Vec<Option<Kind>>, BenchError> {
    let mut out = Vec::new();
    for class in Class::ALL {
        let mut found: Vec<(u32, &GiProfile)> = Vec::new();
        for g in state
            .gpus
            .iter()
            .filter(|g| g.info.mig.is_some_and(|m| m.current))
        {
            if let Some(p) = class.resolve(&g.profiles) {
                found.push((g.info.index, p));
            }
        }
        let Some((_, first)) = found.first() else {
            out.push(None);
            continue;
        };
        let name = first.parsed_name().ok_or_else(|| {
            BenchError::Input(format!("profile {} has no parsable name", first.name))
        })?;
        if let Some((gpu, other)) = found.iter().find(|(_, p)| p.parsed_name() != Some(name)) {
            return Err(BenchError::Input(format!(
                "class {} is {} on GPU {} but {} on GPU {gpu}; a generated mix needs one profile per class: simulate GPUs of one family, or replay a --trace",
                class.label(),
                first.short_name(),
                found[0].0,
                other.short_name()
            )));
        }
        out.push(Some(Kind {
            label: first.short_name().to_string(),
            spec: ProfileSpec::Name(name),
            slices: first.placement_size(),
        }));
    }
    Ok(out)
}

/// Total memory slices of the GPUs that can take instances (MIG on).
pub fn total_slices(state: &MigState) -> u32 {
    state
        .gpus
        .iter()
        .filter(|g| g.info.mig.is_some_and(|m| m.current))
        .map(|g| g.slots())
        .sum()
}

/// A generated stream's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Generated {
    pub mix: Mix,
    pub load: f64,
    pub seed: u64,
    pub arrivals: usize,
}

/// Poisson arrivals with exponential lifetimes of mean 1, at offered load `load` (a fraction of
/// all memory slices): rate = load × total slices / (mean slices per request × mean life).
///
/// `kinds` is [`class_kinds`]' output; the stream's kind indices point into it.
pub fn generate(
    gen: &Generated,
    kinds: &[Option<Kind>],
    total_slices: u32,
) -> Result<Vec<Arrival>, BenchError> {
    let weights = gen.mix.weights();
    let present: Vec<(usize, f64, u32)> = kinds
        .iter()
        .enumerate()
        .filter_map(|(i, k)| k.as_ref().map(|k| (i, weights[i], k.slices)))
        .collect();
    let wsum: f64 = present.iter().map(|(_, w, _)| w).sum();
    if present.is_empty() || wsum <= 0.0 || total_slices == 0 {
        return Err(BenchError::Input(
            "no GPU can take MIG instances (all MIG-off?): give --gpus with at least one MIG-capable GPU".into(),
        ));
    }
    let mean_slices: f64 = present.iter().map(|(_, w, s)| w * *s as f64).sum::<f64>() / wsum;
    let mean_life = 1.0;
    let rate = gen.load * total_slices as f64 / (mean_slices * mean_life);
    let mut rng = Rng::new(gen.seed);
    let mut t = 0.0;
    let mut out = Vec::with_capacity(gen.arrivals);
    for _ in 0..gen.arrivals {
        t += rng.exp(1.0 / rate);
        let mut x = rng.unit() * wsum;
        let mut kind = present[present.len() - 1].0;
        for (i, w, _) in &present {
            if x < *w {
                kind = *i;
                break;
            }
            x -= w;
        }
        let life = rng.exp(mean_life);
        out.push(Arrival { t, kind, life });
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
struct TraceLine {
    t: f64,
    profile: String,
    life: f64,
}

/// Read a JSON-lines trace: `{"t": 0.13, "profile": "3g.40gb", "life": 0.8}` per line, `t` never decreasing.
///
/// Each distinct profile becomes a kind, handed to the policy exactly as written (name or ID).
pub fn read_trace(path: &Path, state: &MigState) -> Result<(Vec<Kind>, Vec<Arrival>), BenchError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        BenchError::Input(format!(
            "cannot read trace {}: {e}; give a JSON-lines file such as examples/traces/sample.jsonl",
            path.display()
        ))
    })?;
    let bad = |line: usize, why: String| {
        BenchError::Input(format!("trace {} line {line}: {why}", path.display()))
    };
    let mut kinds: Vec<Kind> = Vec::new();
    let mut out = Vec::new();
    let mut last_t = f64::NEG_INFINITY;
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let rec: TraceLine = serde_json::from_str(raw).map_err(|e| {
            bad(
                line,
                format!("{e}; expected {{\"t\": 0.13, \"profile\": \"3g.40gb\", \"life\": 0.8}}"),
            )
        })?;
        if !rec.t.is_finite() || rec.t < 0.0 {
            return Err(bad(
                line,
                format!("t = {} must be a finite time >= 0", rec.t),
            ));
        }
        if rec.t < last_t {
            return Err(bad(
                line,
                format!(
                    "t = {} is earlier than the previous line's {last_t}; sort the trace by t",
                    rec.t
                ),
            ));
        }
        last_t = rec.t;
        if !rec.life.is_finite() || rec.life <= 0.0 {
            return Err(bad(
                line,
                format!("life = {} must be a finite time > 0", rec.life),
            ));
        }
        let spec = ProfileSpec::from_str(&rec.profile).map_err(|e| bad(line, e.to_string()))?;
        let kind = match kinds.iter().position(|k| k.spec == spec) {
            Some(i) => i,
            None => {
                let first = state
                    .gpus
                    .iter()
                    .filter(|g| g.info.mig.is_some_and(|m| m.current))
                    .find_map(|g| g.profiles.iter().find(|p| migrun::gpu::names::matches(&spec, p)))
                    .ok_or_else(|| {
                        bad(
                            line,
                            format!(
                                "profile {} exists on no simulated GPU with MIG on; see `migrun --simulate SPEC profiles` for valid names",
                                rec.profile
                            ),
                        )
                    })?;
                // Name a kind as written when that differs from the profile's name (`9 = 3g.40gb`).
                let label = match spec {
                    ProfileSpec::Id(id) => format!("{id}={}", first.short_name()),
                    ProfileSpec::Name(_) => first.short_name().to_string(),
                };
                kinds.push(Kind {
                    label,
                    spec,
                    slices: first.placement_size(),
                });
                kinds.len() - 1
            }
        };
        out.push(Arrival {
            t: rec.t,
            kind,
            life: rec.life,
        });
    }
    if out.is_empty() {
        return Err(BenchError::Input(format!(
            "trace {} has no requests",
            path.display()
        )));
    }
    Ok((kinds, out))
}
