//! The request vocabulary: profile names as a parsed type (`9`, `3g.40gb`, `MIG 3g.40gb`, `1g.10gb+me`), `--min-mem` sizes, and their errors; a leaf, it must not know leases or hardware (matching a name to a GPU's profiles is `gpu::names`).
//!
//! IDs and names belong to a GPU model (profile 14 is 2g.20gb on an H100 but 1g.6gb on an A30), so a
//! request is only ever turned into a concrete profile against one GPU's own profile list.

use std::fmt;
use std::str::FromStr;

/// The variant suffix of a GPU-instance profile name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Variant {
    /// No suffix.
    Plain,
    /// `+me`: includes the media extensions (at most one per GPU).
    Me,
    /// `+gfx`: graphics-capable.
    Gfx,
    /// `-me`: no media engines.
    NoMe,
    /// `+me.all`: takes every media engine; blocks all other profiles except `-me` ones.
    MeAll,
}

impl Variant {
    fn suffix(self) -> &'static str {
        match self {
            Variant::Plain => "",
            Variant::Me => "+me",
            Variant::Gfx => "+gfx",
            Variant::NoMe => "-me",
            Variant::MeAll => "+me.all",
        }
    }
    /// Whether this variant carries the media extensions (only one such instance per GPU).
    pub fn has_media_extensions(self) -> bool {
        matches!(self, Variant::Me | Variant::MeAll)
    }
}

/// A structured GPU-instance profile name: `<slices>g.<memory>gb[variant]`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ProfileName {
    pub slices: u32,
    pub mem_gb: u32,
    pub variant: Variant,
}

impl fmt::Display for ProfileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}g.{}gb{}",
            self.slices,
            self.mem_gb,
            self.variant.suffix()
        )
    }
}

/// A compute-instance profile name, `<c>c.<GPU-instance profile>` (`1c.3g.40gb`): `ci_slices` of the
/// GPU instance's compute slices, sharing its memory and engines with the other compute instances in
/// it (issue 22). The compute instance that takes all of a GPU instance's slices is named like the
/// GPU instance itself (`3g.40gb`, NVIDIA's default compute instance), so `3c.3g.40gb` is written
/// that way. A request takes either kind ([`Requested`]); where only a GPU-instance profile makes
/// sense, [`ProfileSpec`] refuses them ([`ProfileError::ComputeInstanceProfile`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct CiProfileName {
    pub ci_slices: u32,
    pub gi: ProfileName,
}

impl CiProfileName {
    /// Whether this is the GPU instance's full (default) compute instance.
    pub fn is_full(&self) -> bool {
        self.ci_slices == self.gi.slices
    }
}

impl fmt::Display for CiProfileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_full() {
            self.gi.fmt(f)
        } else {
            write!(f, "{}c.{}", self.ci_slices, self.gi)
        }
    }
}

/// Why a string is not a compute-instance profile name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CiProfileError {
    #[error("bad compute-instance profile {given:?}: expected <compute slices>c.<GPU-instance profile>, such as 1c.3g.40gb (see `migrun profiles --ci`)")]
    Syntax { given: String },
    #[error("bad compute-instance profile {given:?}: a compute instance takes 1 to {gi_slices} of {gi}'s {gi_slices} compute slices, not {ci_slices}")]
    Slices {
        given: String,
        ci_slices: u32,
        gi: ProfileName,
        gi_slices: u32,
    },
}

impl crate::exit::ExitCodeOf for CiProfileError {
    fn exit_code(&self) -> i32 {
        crate::exit::USAGE
    }
}

/// `1c.3g.40gb` (lower case, `MIG ` prefix stripped) as its two parts; `None` when it is not of
/// that shape at all (then it may be a GPU-instance name).
fn split_ci(body: &str) -> Option<(&str, &str)> {
    let (c, gi) = body.split_once("c.")?;
    (!c.is_empty() && c.bytes().all(|b| b.is_ascii_digit())).then_some((c, gi))
}

impl FromStr for CiProfileName {
    type Err = CiProfileError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let syntax = || CiProfileError::Syntax {
            given: input.into(),
        };
        let lower = input.trim().to_ascii_lowercase();
        let body = lower
            .strip_prefix("mig")
            .map(str::trim_start)
            .unwrap_or(&lower);
        let Some((c, gi)) = split_ci(body) else {
            // A GPU-instance name is also the name of its full compute instance.
            let gi = parse_name(body).ok_or_else(syntax)?;
            return Ok(CiProfileName {
                ci_slices: gi.slices,
                gi,
            });
        };
        let ci_slices: u32 = c.parse().map_err(|_| syntax())?;
        let gi = parse_name(gi).ok_or_else(syntax)?;
        if ci_slices == 0 || ci_slices > gi.slices {
            return Err(CiProfileError::Slices {
                given: input.into(),
                ci_slices,
                gi,
                gi_slices: gi.slices,
            });
        }
        Ok(CiProfileName { ci_slices, gi })
    }
}

/// What a user asked for: a profile ID or a name. Resolve it against a GPU with [`resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProfileSpec {
    Id(u32),
    Name(ProfileName),
}

impl fmt::Display for ProfileSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileSpec::Id(id) => write!(f, "{id}"),
            ProfileSpec::Name(n) => n.fmt(f),
        }
    }
}

/// What a `--profile` argument, a `migrun.profile` annotation or `MIGRUN_PROFILE` asks for: a whole GPU
/// instance, or a compute instance of a GPU instance shared with other such requests (`1c.3g.40gb`, issue 22).
/// `3c.3g.40gb`, the full compute instance, is the whole GPU instance `3g.40gb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Requested {
    Gi(ProfileSpec),
    Ci(CiProfileName),
}

impl fmt::Display for Requested {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requested::Gi(s) => s.fmt(f),
            Requested::Ci(c) => c.fmt(f),
        }
    }
}

impl FromStr for Requested {
    type Err = ProfileError;
    fn from_str(given: &str) -> Result<Self, Self::Err> {
        match given.parse::<CiProfileName>() {
            Ok(ci) if ci.is_full() => Ok(Requested::Gi(ProfileSpec::Name(ci.gi))),
            Ok(ci) => Ok(Requested::Ci(ci)),
            Err(e @ CiProfileError::Slices { .. }) => Err(ProfileError::Ci(e)),
            Err(CiProfileError::Syntax { .. }) => Ok(Requested::Gi(given.parse()?)),
        }
    }
}

/// Errors from parsing or resolving a profile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("empty profile name: give a profile such as 3g.40gb, MIG 3g.40gb or its ID (see `migrun profiles`)")]
    Empty,
    #[error("bad profile {given:?}: expected a profile ID (9), a name (3g.40gb), a full name (MIG 3g.40gb) or a variant (1g.10gb+me, +gfx, -me, +me.all){}", match .nearest { Some(n) => format!("; did you mean {n}? (see `migrun profiles`)"), None => "; see `migrun profiles`".to_string() })]
    Syntax {
        given: String,
        nearest: Option<ProfileName>,
    },
    #[error(transparent)]
    Ci(#[from] CiProfileError),
    #[error("{given:?} is a compute-instance profile, but a GPU-instance profile is wanted here; give its GPU-instance profile {gi}")]
    ComputeInstanceProfile { given: String, gi: String },
    #[error("profile {given} does not exist on {gpu} ({model}); valid profiles there: {valid}{}", match .nearest { Some(n) => format!("; did you mean {n}?"), None => String::new() })]
    Unknown {
        given: String,
        gpu: String,
        model: String,
        valid: String,
        nearest: Option<String>,
    },
}

/// The well-formed name a malformed one was probably meant to be: its two numbers as slices and
/// gigabytes, with a variant suffix it ends in (`3g.40g`, `3g40gb`, `3g-40gb`, `3.40gb` all mean
/// `3g.40gb`). Only a small edit away counts, so random words get no guess. Whether the GPU has
/// that profile is for [`resolve`] to say, with its own nearest match.
fn repair_name(body: &str) -> Option<ProfileName> {
    let variants = [
        ("+me.all", Variant::MeAll),
        ("+gfx", Variant::Gfx),
        ("+me", Variant::Me),
        ("-me", Variant::NoMe),
    ];
    let (stem, variant) = variants
        .iter()
        .find_map(|(suffix, v)| body.strip_suffix(suffix).map(|stem| (stem, *v)))
        .unwrap_or((body, Variant::Plain));
    let numbers: Vec<u32> = stem
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    let [slices, mem_gb] = numbers[..] else {
        return None;
    };
    if slices == 0 || mem_gb == 0 {
        return None;
    }
    let name = ProfileName {
        slices,
        mem_gb,
        variant,
    };
    (strsim::osa_distance(body, &name.to_string()) <= 3).then_some(name)
}

fn parse_name(s: &str) -> Option<ProfileName> {
    // Split at the first `g` and the first `g` after it by byte: the numbers before each must be
    // all digits, so a later `g.` or `gb` could never parse, and a substring search per name was a
    // measurable part of an allocation (placement parses every profile of every GPU).
    let g = s.find('g')?;
    let rest = s[g + 1..].strip_prefix('.')?;
    let slices: u32 = s[..g].parse().ok()?;
    let gb_at = rest.find('g')?;
    if rest.as_bytes().get(gb_at + 1) != Some(&b'b') {
        return None;
    }
    let mem_gb: u32 = rest[..gb_at].parse().ok()?;
    let variant = match &rest[gb_at + 2..] {
        "" => Variant::Plain,
        "+me" => Variant::Me,
        "+gfx" => Variant::Gfx,
        "-me" => Variant::NoMe,
        "+me.all" => Variant::MeAll,
        _ => return None,
    };
    if slices == 0 || mem_gb == 0 {
        return None;
    }
    Some(ProfileName {
        slices,
        mem_gb,
        variant,
    })
}

impl crate::exit::ExitCodeOf for ProfileError {
    fn exit_code(&self) -> i32 {
        crate::exit::USAGE
    }
}

impl FromStr for ProfileName {
    type Err = ProfileError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match ProfileSpec::from_str(s)? {
            ProfileSpec::Name(n) => Ok(n),
            ProfileSpec::Id(_) => Err(ProfileError::Syntax {
                given: s.into(),
                nearest: None,
            }),
        }
    }
}

impl FromStr for ProfileSpec {
    type Err = ProfileError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ProfileError::Empty);
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(ProfileSpec::Id)
                .map_err(|_| ProfileError::Syntax {
                    given: input.into(),
                    nearest: None,
                });
        }
        let lower = s.to_ascii_lowercase();
        let body = lower
            .strip_prefix("mig")
            .map(str::trim_start)
            .unwrap_or(&lower);
        // `1c.3g.40gb` names a compute-instance profile inside a GI: a request parses it as [`Requested`].
        if split_ci(body).is_some() {
            if let Ok(ci) = CiProfileName::from_str(input) {
                return Err(ProfileError::ComputeInstanceProfile {
                    given: input.into(),
                    gi: ci.gi.to_string(),
                });
            }
        }
        parse_name(body)
            .map(ProfileSpec::Name)
            .ok_or_else(|| ProfileError::Syntax {
                given: input.into(),
                nearest: repair_name(body),
            })
    }
}

/// The structured name of a profile name as a GPU reports it (`MIG 3g.40gb`, `3g.40gb`), or
/// `None` for a name outside the grammar. The `gpu` room uses it to match requests to profiles.
pub fn parse_reported(short_name: &str) -> Option<ProfileName> {
    // Placement parses every profile of every GPU on each allocation; reported names are lower case.
    if short_name.bytes().any(|b| b.is_ascii_uppercase()) {
        parse_name(&short_name.to_ascii_lowercase())
    } else {
        parse_name(short_name)
    }
}

/// Errors from parsing a `--min-mem` size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad --min-mem {given:?}: {why}; give a number with a unit: 20g or 20gb (GB, 10^9 bytes, the unit of profile names), 20gib (GiB, 2^30), 20000m / 20000mb (MB), 19074mib (MiB)")]
pub struct SizeError {
    pub given: String,
    pub why: String,
}

/// Parse a `--min-mem` size into MiB, rounding up. Units (case-insensitive): `k`/`kb`, `m`/`mb`,
/// `g`/`gb`, `t`/`tb` are decimal (10^3..10^12 bytes, as in profile names like `3g.40gb`);
/// `ki`/`kib`, `mi`/`mib`, `gi`/`gib`, `ti`/`tib` are binary. A bare number is refused as ambiguous.
pub(crate) fn parse_size_mib(given: &str) -> Result<u64, SizeError> {
    let err = |why: &str| SizeError {
        given: given.to_string(),
        why: why.to_string(),
    };
    let s = given.trim().to_ascii_lowercase();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| err("no unit"))?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(err("no number"));
    }
    let value: f64 = num.parse().map_err(|_| err("not a number"))?;
    let unit = unit.trim();
    let bytes_per: f64 = match unit {
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024.0f64.powi(4),
        _ => return Err(err(&format!("unknown unit {unit:?}"))),
    };
    let mib = (value * bytes_per / (1024.0 * 1024.0)).ceil();
    if !(mib.is_finite() && mib >= 1.0) {
        return Err(err("must be more than zero"));
    }
    if mib > 1e12 {
        return Err(err("too large"));
    }
    Ok(mib as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_miss_names_get_the_well_formed_name() {
        let table: &[(&str, Option<&str>)] = &[
            ("3g.40g", Some("3g.40gb")),
            ("3g40gb", Some("3g.40gb")),
            ("3g-40gb", Some("3g.40gb")),
            ("3.40gb", Some("3g.40gb")),
            ("MIG 3g40gb", Some("3g.40gb")),
            ("1g.10g+me", Some("1g.10gb+me")),
            ("1g10gb-me", Some("1g.10gb-me")),
            ("banana", None),
            ("40gb", None),
            ("a1b2c3d4e5f6", None),
        ];
        for (given, want) in table {
            match ProfileSpec::from_str(given) {
                Err(ProfileError::Syntax { nearest, .. }) => {
                    assert_eq!(nearest.map(|n| n.to_string()).as_deref(), *want, "{given}");
                }
                other => panic!("{given}: {other:?}"),
            }
        }
        let e = ProfileSpec::from_str("3g.40g").unwrap_err().to_string();
        assert!(
            e.ends_with("; did you mean 3g.40gb? (see `migrun profiles`)"),
            "{e}"
        );
    }

    #[test]
    fn parses_every_accepted_form() {
        let n = |s: &str| ProfileSpec::from_str(s).unwrap();
        let three = ProfileSpec::Name(ProfileName {
            slices: 3,
            mem_gb: 40,
            variant: Variant::Plain,
        });
        assert_eq!(n("9"), ProfileSpec::Id(9));
        assert_eq!(n("3g.40gb"), three);
        assert_eq!(n("MIG 3g.40gb"), three);
        assert_eq!(n("  mig 3G.40GB "), three);
        let variants = [
            ("1g.10gb+me", Variant::Me),
            ("1g.24gb+gfx", Variant::Gfx),
            ("1g.24gb-me", Variant::NoMe),
            ("1g.24gb+me.all", Variant::MeAll),
        ];
        for (s, v) in variants {
            match n(s) {
                ProfileSpec::Name(p) => {
                    assert_eq!(p.variant, v);
                    assert_eq!(p.to_string(), s);
                }
                other => panic!("{s} parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_bad_and_ci_profiles() {
        for bad in [
            "",
            "3g",
            "3g.gb",
            "g.40gb",
            "3g.40gb+foo",
            "0g.10gb",
            "three",
            "-1",
        ] {
            assert!(ProfileSpec::from_str(bad).is_err(), "{bad:?} accepted");
        }
        let e = ProfileSpec::from_str("1c.3g.40gb").unwrap_err();
        assert!(matches!(e, ProfileError::ComputeInstanceProfile { .. }));
        assert!(
            e.to_string()
                .contains("a GPU-instance profile is wanted here"),
            "{e}"
        );
    }

    #[test]
    fn compute_instance_names_table() {
        // (given, Ok(display) or words of the refusal)
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("1c.3g.40gb", Ok("1c.3g.40gb")),
            ("MIG 1c.3g.40gb", Ok("1c.3g.40gb")),
            ("  mig 2C.4G.40GB ", Ok("2c.4g.40gb")),
            ("2c.7g.80gb", Ok("2c.7g.80gb")),
            ("1c.2g.20gb+me", Ok("1c.2g.20gb+me")),
            // The full compute instance goes by the GPU instance's name.
            ("3c.3g.40gb", Ok("3g.40gb")),
            ("3g.40gb", Ok("3g.40gb")),
            (
                "4c.3g.40gb",
                Err("1 to 3 of 3g.40gb's 3 compute slices, not 4"),
            ),
            ("0c.3g.40gb", Err("not 0")),
            ("c.3g.40gb", Err("expected <compute slices>c.")),
            ("1c.3g.40g", Err("expected <compute slices>c.")),
            ("1c.3g", Err("expected")),
            ("1c.", Err("expected")),
            ("xc.3g.40gb", Err("expected")),
            ("banana", Err("expected")),
            ("", Err("expected")),
            ("99999999999c.3g.40gb", Err("expected")),
        ];
        for (given, want) in cases {
            match (CiProfileName::from_str(given), want) {
                (Ok(n), Ok(shown)) => assert_eq!(n.to_string(), *shown, "{given:?}"),
                (Err(e), Err(words)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(words), "{given:?}: {msg}");
                    assert_eq!(crate::exit::ExitCodeOf::exit_code(&e), crate::exit::USAGE);
                }
                (got, want) => panic!("{given:?}: got {got:?}, want {want:?}"),
            }
        }
        let n = CiProfileName::from_str("1c.3g.40gb").unwrap();
        assert_eq!((n.ci_slices, n.gi.slices, n.gi.mem_gb), (1, 3, 40));
        assert!(!n.is_full() && CiProfileName::from_str("3g.40gb").unwrap().is_full());
        // A GPU-instance request still refuses a compute-instance name, naming its GPU instance.
        for given in ["1c.3g.40gb", "MIG 2c.7g.80gb"] {
            let e = ProfileSpec::from_str(given).unwrap_err();
            assert!(
                matches!(e, ProfileError::ComputeInstanceProfile { .. }),
                "{e}"
            );
            assert!(
                e.to_string().contains("give its GPU-instance profile"),
                "{e}"
            );
        }
        // A request (`--profile`, `migrun.profile`) takes both kinds; the full CI is the whole GPU instance.
        let r = |s: &str| Requested::from_str(s).unwrap();
        assert_eq!(r("1c.3g.40gb"), Requested::Ci(n));
        assert_eq!(r("MIG 1c.3g.40gb"), Requested::Ci(n));
        assert_eq!(r("3c.3g.40gb"), r("3g.40gb"));
        assert_eq!(r("9"), Requested::Gi(ProfileSpec::Id(9)));
        assert!(matches!(
            Requested::from_str("4c.3g.40gb"),
            Err(ProfileError::Ci(CiProfileError::Slices { .. }))
        ));
        assert!(Requested::from_str("banana").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_mib("20g").unwrap(), 19074);
        assert_eq!(parse_size_mib("20gb").unwrap(), 19074);
        assert_eq!(parse_size_mib("20GB").unwrap(), 19074);
        assert_eq!(parse_size_mib("20GiB").unwrap(), 20480);
        assert_eq!(parse_size_mib("20gi").unwrap(), 20480);
        assert_eq!(parse_size_mib("20000m").unwrap(), 19074);
        assert_eq!(parse_size_mib("9984MiB").unwrap(), 9984);
        assert_eq!(parse_size_mib("1.5t").unwrap(), 1430512);
        for bad in ["", "20", "g", "20x", "0g", "-1g", "1e99tb", "20 g b"] {
            assert!(parse_size_mib(bad).is_err(), "{bad:?} accepted");
        }
    }
}
