//! Facts about the host's NVIDIA device nodes read from /proc (char majors, MIG capability minors, GPU device minors); it must not call NVML or write anything.
//!
//! A container that uses a MIG device needs device nodes the host may not even have (the driver
//! creates `/dev/nvidia-caps/nvidia-cap<N>` only on demand), so migrun describes them by number:
//! the majors come from `/proc/devices`, the capability minors from
//! `/proc/driver/nvidia-caps/mig-minors`, and a GPU's device minor (which is not its NVML index)
//! from `/proc/driver/nvidia/gpus/<bus id>/information`. The parsers are pure and take the file
//! text; [`HostFacts::read_from`] is the only I/O and takes a root so tests can use a temp tree.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The NVIDIA driver's fixed char major (NV_MAJOR_DEVICE_NUMBER): `/dev/nvidia<minor>` and `/dev/nvidiactl`.
pub const NVIDIA_MAJOR: u32 = 195;
/// `/dev/nvidiactl` is minor 255 of [`NVIDIA_MAJOR`].
pub const NVIDIACTL_MINOR: u32 = 255;

/// Where each fact lives, relative to the root given to [`HostFacts::read_from`].
pub const MIG_MINORS: &str = "proc/driver/nvidia-caps/mig-minors";
pub const PROC_DEVICES: &str = "proc/devices";
pub const GPUS_DIR: &str = "proc/driver/nvidia/gpus";

/// Debug builds only: the host root to read instead of `/` (tests lay out a fake `/proc` there for
/// the NVML backend on the fake library). Release builds always read `/`: a root chosen by whoever
/// runs migrun would let them choose the device numbers of other users' containers.
pub const HOST_ROOT_ENV: &str = "MIGRUN_HOST_ROOT";

/// The root the host facts (and, at the edge, the CDI directories and the toolkit's spec) are read
/// under: `/`, or in debug builds [`HOST_ROOT_ENV`] when it is set and not empty.
pub fn host_root() -> PathBuf {
    if cfg!(debug_assertions) {
        if let Some(root) = std::env::var_os(HOST_ROOT_ENV).filter(|r| !r.is_empty()) {
            return PathBuf::from(root);
        }
    }
    PathBuf::from("/")
}

#[derive(Debug, thiserror::Error)]
pub enum HostFactsError {
    #[error("cannot read {path}: {err}; is the NVIDIA driver loaded (`nvidia-smi` works) with MIG support (driver R450 or newer)?")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{path} line {line} is not `<name> <number>`: {text:?}; the driver wrote something migrun does not understand: report it with the file attached")]
    Malformed {
        path: PathBuf,
        line: usize,
        text: String,
    },
    #[error("no {name} line in {path}: is the NVIDIA driver loaded with MIG support (`modprobe {module}`)?")]
    NoMajor {
        path: PathBuf,
        name: &'static str,
        module: &'static str,
    },
}

impl crate::exit::ExitCodeOf for HostFactsError {
    fn exit_code(&self) -> i32 {
        crate::exit::FAILED
    }
}

/// Recognises [`HostFactsError`] for [`crate::exit::code_for`].
pub fn exit_code_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    use crate::exit::ExitCodeOf;
    e.downcast_ref::<HostFactsError>().map(|e| e.exit_code())
}

/// The contents of `mig-minors`: which capability minor guards each GPU instance and compute instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigMinors {
    /// `(gpu minor, gi)` -> minor of `gpu<m>/gi<g>/access`.
    gi: BTreeMap<(u32, u32), u32>,
    /// `(gpu minor, gi, ci)` -> minor of `gpu<m>/gi<g>/ci<c>/access`.
    ci: BTreeMap<(u32, u32, u32), u32>,
    /// Every other entry (`config`, `monitor`, and any the driver adds later) by name.
    other: BTreeMap<String, u32>,
}

impl MigMinors {
    pub fn gi_access(&self, gpu_minor: u32, gi: u32) -> Option<u32> {
        self.gi.get(&(gpu_minor, gi)).copied()
    }
    pub fn ci_access(&self, gpu_minor: u32, gi: u32, ci: u32) -> Option<u32> {
        self.ci.get(&(gpu_minor, gi, ci)).copied()
    }
    /// A non-instance capability such as `config` or `monitor`.
    pub fn named(&self, name: &str) -> Option<u32> {
        self.other.get(name).copied()
    }
    pub fn len(&self) -> usize {
        self.gi.len() + self.ci.len() + self.other.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A line the pure parsers could not read: 1-based line number and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub text: String,
}

/// `gpu0/gi1/ci2/access` -> (0, 1, Some(2)); `gpu0/gi1/access` -> (0, 1, None); anything else -> None.
fn instance_path(name: &str) -> Option<(u32, u32, Option<u32>)> {
    let mut parts = name.split('/');
    let gpu = parts.next()?.strip_prefix("gpu")?.parse().ok()?;
    let gi = parts.next()?.strip_prefix("gi")?.parse().ok()?;
    match (parts.next()?, parts.next(), parts.next()) {
        ("access", None, None) => Some((gpu, gi, None)),
        (ci, Some("access"), None) => Some((gpu, gi, Some(ci.strip_prefix("ci")?.parse().ok()?))),
        _ => None,
    }
}

/// Parses `/proc/driver/nvidia-caps/mig-minors` (`config 1`, `gpu0/gi1/access 12`, `gpu0/gi1/ci0/access 13`, …).
/// Blank lines are skipped; a line that is not `<name> <number>` is an error, because guessing a minor
/// would give a container the wrong instance.
pub fn parse_mig_minors(text: &str) -> Result<MigMinors, BadLine> {
    let mut m = MigMinors::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let bad = || BadLine {
            line: i + 1,
            text: raw.to_string(),
        };
        let mut words = line.split_whitespace();
        let (Some(name), Some(num), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad());
        };
        let minor: u32 = num.parse().map_err(|_| bad())?;
        match instance_path(name) {
            Some((gpu, gi, None)) => {
                m.gi.insert((gpu, gi), minor);
            }
            Some((gpu, gi, Some(ci))) => {
                m.ci.insert((gpu, gi, ci), minor);
            }
            None => {
                m.other.insert(name.to_string(), minor);
            }
        }
    }
    Ok(m)
}

/// Parses the `Character devices:` section of `/proc/devices` into name -> major. When a name appears
/// twice (the kernel allows it), the first line wins. Lines that are not `<major> <name>` are skipped:
/// only the NVIDIA names matter, and [`HostFacts`] fails by name when one of those is missing.
pub fn parse_char_majors(text: &str) -> BTreeMap<String, u32> {
    let mut majors = BTreeMap::new();
    let mut in_char = false;
    for line in text.lines() {
        let line = line.trim();
        if line.ends_with(':') {
            in_char = line == "Character devices:";
            continue;
        }
        if !in_char {
            continue;
        }
        if let Some((num, name)) = line.split_once(char::is_whitespace) {
            if let Ok(major) = num.parse::<u32>() {
                majors.entry(name.trim().to_string()).or_insert(major);
            }
        }
    }
    majors
}

/// Parses one `/proc/driver/nvidia/gpus/<bus id>/information` file into (GPU UUID, device minor).
pub fn parse_gpu_information(text: &str) -> Option<(String, u32)> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == key))
            .map(|(_, v)| v.trim().to_string())
    };
    let uuid = field("GPU UUID")?;
    let minor = field("Device Minor")?.parse().ok()?;
    Some((uuid, minor))
}

/// Everything migrun needs from the host to describe a MIG device's nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// Major of the `nvidia-caps` char device (`/dev/nvidia-caps/nvidia-cap<N>`).
    pub caps_major: u32,
    /// Major of the `nvidia-uvm` char device (`/dev/nvidia-uvm` is minor 0, `-tools` minor 1).
    pub uvm_major: u32,
    pub mig_minors: MigMinors,
    /// GPU UUID -> device minor (`/dev/nvidia<minor>`), from the driver's per-GPU information files.
    pub gpu_minors: BTreeMap<String, u32>,
}

impl HostFacts {
    /// Builds the facts from file contents (pure); `paths` are the names used in errors, in the order
    /// (mig-minors, /proc/devices).
    pub fn from_texts(
        mig_minors: &str,
        proc_devices: &str,
        gpu_informations: &[String],
        paths: (&Path, &Path),
    ) -> Result<HostFacts, HostFactsError> {
        let minors = parse_mig_minors(mig_minors).map_err(|b| HostFactsError::Malformed {
            path: paths.0.to_path_buf(),
            line: b.line,
            text: b.text,
        })?;
        let majors = parse_char_majors(proc_devices);
        let major = |name: &'static str, module: &'static str| {
            majors
                .get(name)
                .copied()
                .ok_or_else(|| HostFactsError::NoMajor {
                    path: paths.1.to_path_buf(),
                    name,
                    module,
                })
        };
        Ok(HostFacts {
            caps_major: major("nvidia-caps", "nvidia")?,
            uvm_major: major("nvidia-uvm", "nvidia-uvm")?,
            mig_minors: minors,
            gpu_minors: gpu_informations
                .iter()
                .filter_map(|t| parse_gpu_information(t))
                .collect(),
        })
    }

    /// Reads `<root>/proc/driver/nvidia-caps/mig-minors`, `<root>/proc/devices` and
    /// `<root>/proc/driver/nvidia/gpus/*/information` (root is `/` on a real host).
    pub fn read_from(root: &Path) -> Result<HostFacts, HostFactsError> {
        let read = |rel: &str| {
            let path = root.join(rel);
            fs::read_to_string(&path)
                .map(|t| (t, path.clone()))
                .map_err(|err| HostFactsError::Read { path, err })
        };
        let (minors, minors_path) = read(MIG_MINORS)?;
        let (devices, devices_path) = read(PROC_DEVICES)?;
        let gpus_dir = root.join(GPUS_DIR);
        let entries = fs::read_dir(&gpus_dir).map_err(|err| HostFactsError::Read {
            path: gpus_dir.clone(),
            err,
        })?;
        let mut infos = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|err| HostFactsError::Read {
                path: gpus_dir.clone(),
                err,
            })?;
            let path = entry.path().join("information");
            infos
                .push(fs::read_to_string(&path).map_err(|err| HostFactsError::Read { path, err })?);
        }
        Self::from_texts(&minors, &devices, &infos, (&minors_path, &devices_path))
    }

    /// A fingerprint of where the facts under `root` come from, cheap to take on every allocation: the
    /// root, this boot (`/proc/sys/kernel/random/boot_id`, the host's own) and the NVIDIA char majors,
    /// read afresh from `<root>/proc/devices` (a module reload may move them). Facts cached under an
    /// equal fingerprint are still right: GPU device minors and the mig-minors numbering are the
    /// driver's, fixed from its load until reboot. `None` when the boot cannot be told (then nothing is
    /// cached). Fails as [`HostFacts::read_from`] does when `/proc/devices` cannot be read or lacks a
    /// major, so a host without the driver is refused before anything is allocated.
    pub fn fingerprint(root: &Path) -> Result<Option<String>, HostFactsError> {
        let path = root.join(PROC_DEVICES);
        let devices = fs::read_to_string(&path).map_err(|err| HostFactsError::Read {
            path: path.clone(),
            err,
        })?;
        let majors = parse_char_majors(&devices);
        let major = |name: &'static str, module: &'static str| {
            majors
                .get(name)
                .copied()
                .ok_or_else(|| HostFactsError::NoMajor {
                    path: path.clone(),
                    name,
                    module,
                })
        };
        let (caps, uvm) = (
            major("nvidia-caps", "nvidia")?,
            major("nvidia-uvm", "nvidia-uvm")?,
        );
        let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok();
        Ok(boot
            .map(|b| b.trim().to_string())
            .filter(|b| !b.is_empty())
            .map(|b| format!("{} boot {b} caps {caps} uvm {uvm}", root.display())))
    }

    /// The device minor of the GPU with this `GPU-…` UUID (`/dev/nvidia<minor>`), as the driver numbers it.
    pub fn gpu_minor(&self, gpu_uuid: &str) -> Option<u32> {
        self.gpu_minors.get(gpu_uuid).copied()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const FIXTURES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/h200-141gb-caps"
    );

    fn fixture(name: &str) -> String {
        fs::read_to_string(Path::new(FIXTURES).join(name)).unwrap()
    }

    /// The `information` file of the H200 capture, cut out of caps-detail.txt (the lines after the bus id).
    pub(crate) fn h200_information() -> String {
        let detail = fixture("caps-detail.txt");
        let start = detail.find("Model:").unwrap();
        let end = detail.find("GPU Excluded:").unwrap();
        let tail = &detail[end..];
        let end = end + tail.find('\n').unwrap();
        detail[start..end].to_string()
    }

    #[test]
    fn mig_minors_of_the_h200_capture() {
        let m = parse_mig_minors(&fixture("mig-minors.txt")).unwrap();
        assert_eq!(m.len(), 4322);
        assert_eq!(m.named("config"), Some(1));
        assert_eq!(m.named("monitor"), Some(2));
        // (gpu, gi, ci or None for the GI) -> minor, as the capture has them.
        let table: &[(u32, u32, Option<u32>, u32)] = &[
            (0, 0, None, 3),
            (0, 0, Some(0), 4),
            (0, 1, None, 12),
            (0, 1, Some(0), 13),
            (0, 1, Some(7), 20),
            (0, 2, None, 21),
            (1, 2, None, 156),
        ];
        for &(gpu, gi, ci, want) in table {
            let got = match ci {
                None => m.gi_access(gpu, gi),
                Some(ci) => m.ci_access(gpu, gi, ci),
            };
            assert_eq!(got, Some(want), "gpu{gpu}/gi{gi}/{ci:?}");
        }
        // The last GPU/GI/CI the driver numbers (gpu31/gi14/ci7) is there; one past it is not.
        assert!(m.ci_access(31, 14, 7).is_some());
        assert_eq!(m.gi_access(32, 0), None);
        assert_eq!(m.ci_access(0, 15, 0), None);
    }

    #[test]
    fn mig_minor_lines_table() {
        let ok: &[(&str, Option<u32>, Option<u32>)] = &[
            ("gpu3/gi4/access 99\n", Some(99), None),
            ("gpu3/gi4/ci5/access 100", None, Some(100)),
            ("\n  gpu3/gi4/access 7  \n\n", Some(7), None),
            ("fabric-imex-mgmt 4323", None, None),
            ("gpu3/gi4/ci5/extra/access 1", None, None),
        ];
        for &(text, gi, ci) in ok {
            let m = parse_mig_minors(text).unwrap();
            assert_eq!(
                (m.gi_access(3, 4), m.ci_access(3, 4, 5)),
                (gi, ci),
                "{text:?}"
            );
        }
        let bad: &[(&str, usize)] = &[
            ("gpu0/gi1/access", 1),
            ("config 1\ngpu0/gi1/access twelve", 2),
            ("config 1 2", 1),
            ("gpu0/gi1/access -3", 1),
        ];
        for &(text, line) in bad {
            assert_eq!(parse_mig_minors(text).unwrap_err().line, line, "{text:?}");
        }
    }

    #[test]
    fn char_majors_of_the_h200_capture() {
        let majors = parse_char_majors(&fixture("proc-devices.txt"));
        assert_eq!(majors.get("nvidia-caps"), Some(&241));
        assert_eq!(majors.get("nvidia-uvm"), Some(&238));
        assert_eq!(majors.get("nvidia"), Some(&195));
        assert_eq!(majors.get("nvidiactl"), Some(&195));
        // Listed twice in the capture: the first wins. Block devices are not char devices.
        assert_eq!(majors.get("infiniband_mad"), Some(&231));
        assert_eq!(majors.get("virtblk"), None);
    }

    #[test]
    fn gpu_information_of_the_h200_capture() {
        assert_eq!(
            parse_gpu_information(&h200_information()),
            Some(("GPU-934cbb29-3641-df72-0b45-d4cbd888fb8f".to_string(), 0))
        );
        assert_eq!(parse_gpu_information("Model: x\n"), None);
        assert_eq!(
            parse_gpu_information("GPU UUID: GPU-x\nDevice Minor: seven\n"),
            None
        );
    }

    /// A temp root laid out like a real host's /proc from the H200 capture.
    pub(crate) fn h200_root() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let put = |rel: &str, text: &str| {
            let p = root.path().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        };
        put(MIG_MINORS, &fixture("mig-minors.txt"));
        put(PROC_DEVICES, &fixture("proc-devices.txt"));
        put(
            &format!("{GPUS_DIR}/0000:00:06.0/information"),
            &h200_information(),
        );
        root
    }

    #[test]
    fn read_from_a_root_built_from_the_capture() {
        let root = h200_root();
        let f = HostFacts::read_from(root.path()).unwrap();
        assert_eq!((f.caps_major, f.uvm_major), (241, 238));
        assert_eq!(f.mig_minors.gi_access(0, 1), Some(12));
        assert_eq!(
            f.gpu_minor("GPU-934cbb29-3641-df72-0b45-d4cbd888fb8f"),
            Some(0)
        );
        assert_eq!(f.gpu_minor("GPU-other"), None);
    }

    #[test]
    fn each_failure_names_its_file() {
        // (what to break, words the one-line message must contain)
        let cases: &[(&str, &[&str])] = &[
            ("no-mig-minors", &["mig-minors", "NVIDIA driver loaded"]),
            (
                "no-gpus-dir",
                &["proc/driver/nvidia/gpus", "NVIDIA driver loaded"],
            ),
            (
                "no-caps-line",
                &["no nvidia-caps line in", "proc/devices", "MIG support"],
            ),
            (
                "no-uvm-line",
                &["no nvidia-uvm line in", "modprobe nvidia-uvm"],
            ),
            ("garbled-minors", &["mig-minors line 2", "report it"]),
        ];
        for &(case, words) in cases {
            let root = h200_root();
            let p = |rel: &str| root.path().join(rel);
            let devices = fixture("proc-devices.txt");
            match case {
                "no-mig-minors" => fs::remove_file(p(MIG_MINORS)).unwrap(),
                "no-gpus-dir" => fs::remove_dir_all(p(GPUS_DIR)).unwrap(),
                "no-caps-line" => {
                    fs::write(p(PROC_DEVICES), devices.replace("nvidia-caps\n", "x\n")).unwrap()
                }
                "no-uvm-line" => {
                    fs::write(p(PROC_DEVICES), devices.replace("nvidia-uvm\n", "x\n")).unwrap()
                }
                "garbled-minors" => {
                    fs::write(p(MIG_MINORS), "config 1\ngpu0/gi0/access\n").unwrap()
                }
                _ => unreachable!(),
            }
            let msg = HostFacts::read_from(root.path()).unwrap_err().to_string();
            assert!(!msg.contains('\n'), "{case}: one line: {msg}");
            for w in words {
                assert!(msg.contains(w), "{case}: {w:?} missing from: {msg}");
            }
        }
    }
}
