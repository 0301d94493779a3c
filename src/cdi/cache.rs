//! What lease specs reuse between processes, kept in the state dir (`cdi-cache.json`): each slice's device numbers under the host facts' fingerprint, and the NVIDIA toolkit spec's common edits under its file's stamp; it must not build specs or decide when to use them.
//!
//! Every hook, shim start and `alloc` is a fresh process, and the facts a spec needs hardly ever
//! change: `mig-minors` and the GPUs' device minors are the driver's from its load until reboot, and
//! the toolkit's spec changes when an admin regenerates it. Reading and parsing them (4,320 lines of
//! `mig-minors`, a YAML spec validated against CDI's schema) for every container start cost more
//! than the rest of the spec's work, so the numbers of each slice and the toolkit's edits are kept
//! here and reused while their fingerprint and stamp match:
//! - the fingerprint ([`crate::gpu::Backend::host_facts_key`]) is this boot and the NVIDIA majors,
//!   read afresh each time, so a reboot or a reload that moves the majors starts over; `migrun gc`
//!   also forgets the cache;
//! - the stamp is the toolkit file's device, inode, size, mtime and ctime, taken before it is read.
//!
//! The file lives in the state dir (root's, 0700; written atomically, 0600) and is only a cache: a
//! missing, unreadable or malformed one is ignored and written anew, and every spec built from it is
//! still validated in full. It is written only after a lease's spec was, so a refused request
//! changes nothing in the state dir.

use super::spec::SliceNodes;
use super::types::ContainerEdits;
use crate::statedir::StateDir;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The cache's file in the state dir.
pub const FILE: &str = "cdi-cache.json";
/// Slices remembered at most; past it the cache starts over (a machine has at most a few hundred).
const MAX_SLICES: usize = 4096;

/// The toolkit spec's common edits, as read from `path` when it had `stamp`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Toolkit {
    path: PathBuf,
    stamp: String,
    edits: ContainerEdits,
}

/// The cache as read (or empty), changed in memory, written back by [`SpecCache::save`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecCache {
    /// The fingerprint the slices' numbers were read under.
    facts_key: String,
    /// `<GPU UUID>/<GI>/<CI>` -> its numbers.
    slices: BTreeMap<String, SliceNodes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    toolkit: Option<Toolkit>,
    #[serde(skip)]
    changed: bool,
}

fn slice_key(gpu_uuid: &str, gi: u32, ci: u32) -> String {
    format!("{gpu_uuid}/{gi}/{ci}")
}

/// `dev:ino size mtime ctime` of `path` (nanoseconds), or `None` when it cannot be stat'ed.
pub fn stamp(path: &Path) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    Some(format!(
        "{}:{} {} {}.{} {}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

impl SpecCache {
    /// The cache in `dir` for facts fingerprinted `facts_key`; slices read under another
    /// fingerprint (or no cache at all, or a file that is not one) count as none.
    pub fn load(dir: &StateDir, facts_key: Option<&str>) -> SpecCache {
        let read: Option<SpecCache> = dir
            .read(FILE)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let mut c = read.unwrap_or_default();
        match facts_key {
            Some(k) if c.facts_key == k => {}
            Some(k) => {
                c.facts_key = k.to_string();
                c.slices.clear();
            }
            // The boot cannot be told: nothing read under an earlier one may be used, nothing stored.
            None => {
                c.facts_key.clear();
                c.slices.clear();
            }
        }
        c
    }

    /// The numbers cached for GI `gi` / CI `ci` of GPU `gpu_uuid`.
    pub fn nodes(&self, gpu_uuid: &str, gi: u32, ci: u32) -> Option<SliceNodes> {
        if self.facts_key.is_empty() {
            return None;
        }
        self.slices.get(&slice_key(gpu_uuid, gi, ci)).copied()
    }

    pub fn put_nodes(&mut self, gpu_uuid: &str, gi: u32, ci: u32, nodes: SliceNodes) {
        if self.facts_key.is_empty() {
            return;
        }
        if self.slices.len() >= MAX_SLICES {
            self.slices.clear();
        }
        self.slices.insert(slice_key(gpu_uuid, gi, ci), nodes);
        self.changed = true;
    }

    /// The toolkit edits cached for `path` while it has `stamp`.
    pub fn toolkit(&self, path: &Path, stamp: &str) -> Option<ContainerEdits> {
        self.toolkit
            .as_ref()
            .filter(|t| t.path == path && t.stamp == stamp)
            .map(|t| t.edits.clone())
    }

    pub fn put_toolkit(&mut self, path: &Path, stamp: String, edits: ContainerEdits) {
        self.toolkit = Some(Toolkit {
            path: path.to_path_buf(),
            stamp,
            edits,
        });
        self.changed = true;
    }

    /// Writes the cache back when something was added; a failure only costs the next process a read.
    pub fn save(&mut self, dir: &StateDir) {
        if !self.changed {
            return;
        }
        if let Ok(mut json) = serde_json::to_vec(self) {
            json.push(b'\n');
            if let Err(e) = dir.write(FILE, &json) {
                tracing::warn!(
                    "cannot keep the CDI cache {}: {e}",
                    dir.join(FILE).display()
                );
            }
        }
        self.changed = false;
    }

    /// Forgets everything (`migrun gc`); `Ok(false)` when there was no cache.
    pub fn forget(dir: &StateDir) -> Result<bool, crate::statedir::StateDirError> {
        crate::statedir::remove(&dir.join(FILE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(minor: u32) -> SliceNodes {
        SliceNodes {
            gpu_minor: minor,
            gi_access: 12,
            ci_access: 13,
            caps_major: 241,
            uvm_major: 238,
        }
    }

    #[test]
    fn slices_are_kept_per_fingerprint_and_toolkit_edits_per_stamp() {
        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::open(t.path().join("s")).unwrap();
        let mut c = SpecCache::load(&dir, Some("boot a"));
        assert_eq!(c.nodes("GPU-1", 1, 0), None);
        c.put_nodes("GPU-1", 1, 0, nodes(0));
        let mut edits = ContainerEdits::default();
        edits.env = Some(vec!["A=1".into()]);
        let tk = t.path().join("nvidia.yaml");
        std::fs::write(&tk, "x").unwrap();
        let st = stamp(&tk).unwrap();
        c.put_toolkit(&tk, st.clone(), edits.clone());
        c.save(&dir);

        let c = SpecCache::load(&dir, Some("boot a"));
        assert_eq!(c.nodes("GPU-1", 1, 0), Some(nodes(0)));
        assert_eq!(c.nodes("GPU-1", 1, 1), None);
        assert_eq!(c.toolkit(&tk, &st), Some(edits.clone()));
        // The file changed: its stamp did too.
        std::fs::write(&tk, "xy").unwrap();
        assert_eq!(c.toolkit(&tk, &stamp(&tk).unwrap()), None);
        assert_eq!(c.toolkit(&t.path().join("other.yaml"), &st), None);
        // Another boot (or moved majors): the slices are gone, the toolkit's stamp still decides.
        let mut c = SpecCache::load(&dir, Some("boot b"));
        assert_eq!(c.nodes("GPU-1", 1, 0), None);
        assert_eq!(c.toolkit(&tk, &st), Some(edits));
        // No fingerprint: nothing used, nothing stored.
        let mut none = SpecCache::load(&dir, None);
        none.put_nodes("GPU-1", 1, 0, nodes(0));
        assert_eq!(none.nodes("GPU-1", 1, 0), None);
        c.put_nodes("GPU-2", 1, 0, nodes(1));
        c.save(&dir);
        assert!(SpecCache::forget(&dir).unwrap());
        assert_eq!(
            SpecCache::load(&dir, Some("boot b")),
            SpecCache {
                facts_key: "boot b".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_broken_cache_counts_as_none() {
        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::open(t.path().join("s")).unwrap();
        for junk in ["", "{", "[]", "{\"facts_key\": 1}", "{\"x\": 1}"] {
            dir.write(FILE, junk.as_bytes()).unwrap();
            let c = SpecCache::load(&dir, Some("k"));
            assert_eq!(c.nodes("GPU-1", 1, 0), None, "{junk:?}");
        }
    }
}
