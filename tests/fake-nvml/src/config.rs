//! The fake library's configuration from the environment, fault-injection rules and their cross-process call counters; it must not touch the simulated machine.
//!
//! The grammar is documented in tests/fake-nvml/README.md. Counters live in `<state file>.calls`
//! (a JSON object, symbol -> calls so far) under an exclusive lock on `<state file>.calls.lock`,
//! because every migrun invocation is a new process that loads the library afresh.

use migrun::gpu::sim::SimSpec;
use migrun::statedir;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Which uses of a symbol a rule fails (1-based, counted across processes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uses {
    Every,
    /// Inclusive range; `None` as the end means "and every later use".
    Range(u64, Option<u64>),
}

impl Uses {
    fn contains(&self, n: u64) -> bool {
        match *self {
            Uses::Every => true,
            Uses::Range(a, b) => n >= a && b.is_none_or(|b| n <= b),
        }
    }
}

/// `SYMBOL:CODE[:USES]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailRule {
    pub symbol: String,
    pub code: u32,
    pub uses: Uses,
}

/// NVML return codes by name (nvml.h `NVML_ERROR_*`, without the prefix).
pub const CODE_NAMES: &[(&str, u32)] = &[
    ("UNINITIALIZED", 1),
    ("INVALID_ARGUMENT", 2),
    ("NOT_SUPPORTED", 3),
    ("NO_PERMISSION", 4),
    ("ALREADY_INITIALIZED", 5),
    ("NOT_FOUND", 6),
    ("INSUFFICIENT_SIZE", 7),
    ("INSUFFICIENT_POWER", 8),
    ("DRIVER_NOT_LOADED", 9),
    ("TIMEOUT", 10),
    ("IRQ_ISSUE", 11),
    ("LIBRARY_NOT_FOUND", 12),
    ("FUNCTION_NOT_FOUND", 13),
    ("CORRUPTED_INFOROM", 14),
    ("GPU_IS_LOST", 15),
    ("RESET_REQUIRED", 16),
    ("OPERATING_SYSTEM", 17),
    ("LIB_RM_VERSION_MISMATCH", 18),
    ("IN_USE", 19),
    ("MEMORY", 20),
    ("NO_DATA", 21),
    ("VGPU_ECC_NOT_SUPPORTED", 22),
    ("INSUFFICIENT_RESOURCES", 23),
    ("FREQ_NOT_SUPPORTED", 24),
    ("ARGUMENT_VERSION_MISMATCH", 25),
    ("DEPRECATED", 26),
    ("NOT_READY", 27),
    ("GPU_NOT_FOUND", 28),
    ("INVALID_STATE", 29),
    ("UNKNOWN", 999),
];

fn parse_code(s: &str) -> Result<u32, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u32>() {
        return if n == 0 {
            Err("code 0 is NVML_SUCCESS, not a failure".into())
        } else {
            Ok(n)
        };
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("NVML_ERROR_").unwrap_or(&name);
    CODE_NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .ok_or_else(|| format!("unknown NVML return code {s:?} (a number, or a name like IN_USE)"))
}

fn parse_uses(s: &str) -> Result<Uses, String> {
    let s = s.trim();
    let num = |t: &str| -> Result<u64, String> {
        match t.parse::<u64>() {
            Ok(0) => Err("uses count from 1".into()),
            Ok(n) => Ok(n),
            Err(_) => Err(format!("bad use number {t:?}")),
        }
    };
    if s.is_empty() || s == "*" {
        return Ok(Uses::Every);
    }
    match s.split_once('-') {
        None => {
            let n = num(s)?;
            Ok(Uses::Range(n, Some(n)))
        }
        Some((a, "")) => Ok(Uses::Range(num(a)?, None)),
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            if b < a {
                return Err(format!("empty use range {s:?}"));
            }
            Ok(Uses::Range(a, Some(b)))
        }
    }
}

/// Parse `MIGRUN_FAKE_NVML_FAIL`; `known` lists the symbols the library exports, so a typo is an error.
pub fn parse_rules(text: &str, known: &[&str]) -> Result<Vec<FailRule>, String> {
    let mut rules = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut fields = part.splitn(3, ':');
        let symbol = fields.next().unwrap_or_default().trim().to_string();
        if !known.contains(&symbol.as_str()) {
            return Err(format!(
                "rule {part:?}: {symbol:?} is not a symbol the fake library exports"
            ));
        }
        let code = fields
            .next()
            .ok_or_else(|| format!("rule {part:?}: expected SYMBOL:CODE[:USES]"))
            .and_then(parse_code)
            .map_err(|e| format!("rule {part:?}: {e}"))?;
        let uses =
            parse_uses(fields.next().unwrap_or("*")).map_err(|e| format!("rule {part:?}: {e}"))?;
        rules.push(FailRule { symbol, code, uses });
    }
    Ok(rules)
}

/// Everything the library reads from its environment at `nvmlInit`.
#[derive(Debug, Clone)]
pub struct Config {
    pub spec: SimSpec,
    pub state: PathBuf,
    pub rules: Vec<FailRule>,
    /// Symbols whose calls are counted even without a rule (`MIGRUN_FAKE_NVML_COUNT`); `*` = all.
    pub count: Vec<String>,
    pub nonroot: bool,
    pub nomig: Vec<u32>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Config {
    pub fn from_env(known: &[&str]) -> Result<Config, String> {
        let spec_text = env("MIGRUN_FAKE_NVML")
            .ok_or("MIGRUN_FAKE_NVML is not set (the simulated GPUs, e.g. h100-80gb:2)")?;
        let spec: SimSpec = spec_text
            .parse()
            .map_err(|e| format!("MIGRUN_FAKE_NVML: {e}"))?;
        let state = env("MIGRUN_FAKE_NVML_STATE").map(PathBuf::from).ok_or(
            "MIGRUN_FAKE_NVML_STATE is not set (the file that holds the simulated machine)",
        )?;
        let rules = match env("MIGRUN_FAKE_NVML_FAIL") {
            Some(t) => parse_rules(&t, known).map_err(|e| format!("MIGRUN_FAKE_NVML_FAIL: {e}"))?,
            None => Vec::new(),
        };
        let count: Vec<String> = env("MIGRUN_FAKE_NVML_COUNT")
            .map(|t| {
                t.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(bad) = count
            .iter()
            .find(|s| *s != "*" && !known.contains(&s.as_str()))
        {
            return Err(format!(
                "MIGRUN_FAKE_NVML_COUNT: {bad:?} is not a symbol the fake library exports"
            ));
        }
        let nonroot = match env("MIGRUN_FAKE_NVML_NONROOT").as_deref() {
            None | Some("0") => false,
            Some("1") => true,
            Some(other) => return Err(format!("MIGRUN_FAKE_NVML_NONROOT={other:?}: use 1 or 0")),
        };
        let gpus: u32 = spec.entries.iter().map(|e| e.count).sum();
        let mut nomig = Vec::new();
        if let Some(t) = env("MIGRUN_FAKE_NVML_NOMIG") {
            for part in t.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let i: u32 = part
                    .parse()
                    .map_err(|_| format!("MIGRUN_FAKE_NVML_NOMIG: {part:?} is not a GPU index"))?;
                if i >= gpus {
                    return Err(format!(
                        "MIGRUN_FAKE_NVML_NOMIG: GPU {i} does not exist ({gpus} simulated)"
                    ));
                }
                nomig.push(i);
            }
        }
        Ok(Config {
            spec,
            state,
            rules,
            count,
            nonroot,
            nomig,
        })
    }

    fn counted(&self, symbol: &str) -> bool {
        self.rules.iter().any(|r| r.symbol == symbol)
            || self.count.iter().any(|c| c == "*" || c == symbol)
    }

    fn counter_paths(&self) -> (PathBuf, PathBuf) {
        let mut calls = self.state.clone().into_os_string();
        calls.push(".calls");
        let mut lock = calls.clone();
        lock.push(".lock");
        (calls.into(), lock.into())
    }

    /// Count this use of `symbol` (when it is watched) and return the code a rule injects for it.
    pub fn use_symbol(&self, symbol: &str) -> Result<Option<u32>, String> {
        if !self.counted(symbol) {
            return Ok(None);
        }
        let (path, lock) = self.counter_paths();
        let _lock = statedir::lock_file(&lock).map_err(|e| e.to_string())?;
        let mut counts: BTreeMap<String, u64> = match statedir::read_nofollow(&path) {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{} is not a counter file: {e}", path.display()))?,
            Ok(None) => BTreeMap::new(),
            Err(e) => return Err(e.to_string()),
        };
        let n = counts.entry(symbol.to_string()).or_insert(0);
        *n += 1;
        let n = *n;
        // Under the lock nobody else reads or writes the file, so a plain write is enough.
        let json = serde_json::to_vec(&counts).expect("counters serialise");
        std::fs::write(&path, json).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(self
            .rules
            .iter()
            .find(|r| r.symbol == symbol && r.uses.contains(n))
            .map(|r| r.code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["nvmlA", "nvmlB"];

    #[test]
    fn rules_parse_codes_names_and_ranges() {
        let r = parse_rules(
            "nvmlA:23:1, nvmlB:IN_USE:2-3,nvmlA:NVML_ERROR_NOT_FOUND:5-",
            KNOWN,
        )
        .unwrap();
        assert_eq!(r[0].code, 23);
        assert_eq!(r[0].uses, Uses::Range(1, Some(1)));
        assert_eq!(r[1].code, 19);
        assert!(r[1].uses.contains(3) && !r[1].uses.contains(4));
        assert_eq!(r[2].code, 6);
        assert!(r[2].uses.contains(99) && !r[2].uses.contains(4));
        assert_eq!(parse_rules("nvmlB:3", KNOWN).unwrap()[0].uses, Uses::Every);
    }

    #[test]
    fn bad_rules_are_refused() {
        for bad in [
            "nvmlC:23",
            "nvmlA",
            "nvmlA:0",
            "nvmlA:BOGUS",
            "nvmlA:23:0",
            "nvmlA:23:3-1",
            "nvmlA:23:x",
        ] {
            assert!(parse_rules(bad, KNOWN).is_err(), "{bad}");
        }
    }
}
