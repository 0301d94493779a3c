//! migrun's spec files in a CDI spec directory: write atomically (0644, dir 0755, never through a symlink), remove, list; it must not build specs or read leases.
//!
//! Engines rescan these directories whenever a container starts, so a reader must never see a torn
//! file: the spec is written to a temp file in the same directory whose name engines ignore (not
//! `.json`/`.yaml`), flushed to disk, then renamed over the final name.

use super::types::Spec;
use crate::lease::LeaseId;
use crate::statedir;
use std::fs::{self, DirBuilder};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// CDI's static spec directory (admin-managed).
pub const STATIC_DIR: &str = "/etc/cdi";
/// CDI's dynamic spec directory: where migrun writes, as specs there win over `/etc/cdi`.
pub const DYNAMIC_DIR: &str = "/var/run/cdi";

const PREFIX: &str = "migrun-mig-";
const SUFFIX: &str = ".json";
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path} is a symlink; migrun refuses to write CDI specs through one (remove the link, or use the directory it points to)")]
    Symlink { path: PathBuf },
    #[error("CDI spec dir {path} is not a directory; remove it (engines read specs from {STATIC_DIR} and {DYNAMIC_DIR})")]
    NotADirectory { path: PathBuf },
    // The io error is part of the message and deliberately not a `#[source]`, so `{:#}` prints it once.
    #[error("cannot {op} CDI spec dir {dir}: {err}; it must be a writable directory on a file system with room (nothing half-written was left)")]
    Io {
        op: &'static str,
        dir: PathBuf,
        err: std::io::Error,
    },
    #[error("cannot serialise the CDI spec of lease {lease}: {err}; this is a migrun bug: please report it")]
    Serialize {
        lease: LeaseId,
        err: serde_json::Error,
    },
    #[error("{path} is not a CDI spec migrun can read ({reason}); remove it: migrun writes it again for a lease that needs it")]
    Malformed { path: PathBuf, reason: String },
}

impl crate::exit::ExitCodeOf for StoreError {
    fn exit_code(&self) -> i32 {
        match self {
            StoreError::Symlink { .. } | StoreError::NotADirectory { .. } => crate::exit::USAGE,
            StoreError::Io { .. } | StoreError::Serialize { .. } | StoreError::Malformed { .. } => {
                crate::exit::FAILED
            }
        }
    }
}

fn io<'a>(op: &'static str, dir: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |err| StoreError::Io {
        op,
        dir: dir.to_path_buf(),
        err,
    }
}

/// `migrun-mig-<lease>.json`.
pub fn file_name(lease: LeaseId) -> String {
    format!("{PREFIX}{lease}{SUFFIX}")
}

/// The lease a file name belongs to, when it is one of migrun's spec files (pure).
pub fn lease_of(name: &str) -> Option<LeaseId> {
    let id: LeaseId = name
        .strip_prefix(PREFIX)?
        .strip_suffix(SUFFIX)?
        .parse()
        .ok()?;
    // `parse` also takes `+7` and `07`; only the exact name `file_name` writes is migrun's.
    (file_name(id) == name).then_some(id)
}

/// Makes sure `dir` is a real directory, creating it (and its parents) 0755 when missing: what
/// [`write`] does first, for a caller that must know before it acts that specs can go there.
pub fn prepare(dir: &Path) -> Result<(), StoreError> {
    ensure_dir(dir)
}

fn ensure_dir(dir: &Path) -> Result<(), StoreError> {
    match dir.symlink_metadata() {
        Ok(m) if m.file_type().is_symlink() => Err(StoreError::Symlink {
            path: dir.to_path_buf(),
        }),
        Ok(m) if !m.is_dir() => Err(StoreError::NotADirectory {
            path: dir.to_path_buf(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let create = "create";
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(io(create, dir))?;
            // The umask may have narrowed the mode; engines run by other users must read the dir.
            fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)).map_err(io(create, dir))
        }
        Err(e) => Err(io("open", dir)(e)),
    }
}

/// Writes the spec of `lease` into `dir` as `migrun-mig-<lease>.json` (0644), replacing any older
/// one atomically; returns its path. On any error nothing new is left in `dir`.
pub fn write(dir: &Path, lease: LeaseId, spec: &Spec) -> Result<PathBuf, StoreError> {
    let mut bytes =
        serde_json::to_vec_pretty(spec).map_err(|err| StoreError::Serialize { lease, err })?;
    bytes.push(b'\n');
    ensure_dir(dir)?;
    let path = dir.join(file_name(lease));
    if path
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        return Err(StoreError::Symlink { path });
    }
    let op = "write a spec in";
    // Dropping the temp file on an error path removes it.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{PREFIX}{lease}-"))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io(op, dir))?;
    statedir::replace_with(tmp, &bytes, &path, FILE_MODE).map_err(io(op, dir))?;
    Ok(path)
}

/// The spec of `lease` in `dir` as written; `None` when there is none. Never read through a symlink,
/// as none is written through one.
pub fn read(dir: &Path, lease: LeaseId) -> Result<Option<Spec>, StoreError> {
    let path = dir.join(file_name(lease));
    match path.symlink_metadata() {
        Ok(m) if m.file_type().is_symlink() => return Err(StoreError::Symlink { path }),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        _ => {}
    }
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read a spec from", dir)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Malformed {
            path,
            reason: e.to_string(),
        })
}

/// Removes the spec of `lease` from `dir`; `Ok(false)` when there was none.
pub fn remove(dir: &Path, lease: LeaseId) -> Result<bool, StoreError> {
    match fs::remove_file(dir.join(file_name(lease))) {
        Ok(()) => {
            statedir::sync_dir(dir);
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io("remove a spec from", dir)(e)),
    }
}

/// migrun's spec files in `dir` as (lease, path), by lease; empty when `dir` does not exist. For gc,
/// to compare with the leases. Other files (other vendors' specs, temp files) are left out.
pub fn list(dir: &Path) -> Result<Vec<(LeaseId, PathBuf)>, StoreError> {
    let op = "list";
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(op, dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(op, dir))?;
        if let Some(lease) = entry.file_name().to_str().and_then(lease_of) {
            out.push((lease, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdi::spec::tests::{h200_slice, spec_of};
    use std::os::unix::fs::symlink;

    #[test]
    fn file_names_table() {
        let cases: &[(&str, Option<LeaseId>)] = &[
            ("migrun-mig-7.json", Some(7)),
            ("migrun-mig-0.json", Some(0)),
            ("migrun-mig-18446744073709551615.json", Some(u64::MAX)),
            ("migrun-mig-07.json", None),
            ("migrun-mig-+7.json", None),
            ("migrun-mig-.json", None),
            ("migrun-mig-7.yaml", None),
            ("migrun-mig-7.json.tmp", None),
            (".migrun-mig-7-abc.tmp", None),
            ("nvidia.yaml", None),
            ("migrun-mig-18446744073709551616.json", None),
        ];
        for &(name, want) in cases {
            assert_eq!(lease_of(name), want, "{name}");
        }
        assert_eq!(lease_of(&file_name(42)), Some(42));
    }

    #[test]
    fn write_list_remove_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("run/cdi");
        assert!(list(&dir).unwrap().is_empty(), "a missing dir lists empty");
        let spec = spec_of(&h200_slice(7, None));
        let p = write(&dir, 7, &spec).unwrap();
        assert_eq!(p, dir.join("migrun-mig-7.json"));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&dir), mode(&p)), (0o755, 0o644));
        let back: Spec = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        assert_eq!(back, spec);
        assert_eq!(read(&dir, 7).unwrap(), Some(spec.clone()));
        assert_eq!(read(&dir, 8).unwrap(), None);
        fs::write(dir.join(file_name(8)), "{").unwrap();
        assert!(matches!(read(&dir, 8), Err(StoreError::Malformed { .. })));
        fs::remove_file(dir.join(file_name(8))).unwrap();
        // Rewriting replaces; others' files and temp names are not migrun's.
        write(&dir, 7, &spec).unwrap();
        write(&dir, 12, &spec).unwrap();
        fs::write(dir.join("nvidia.yaml"), "x").unwrap();
        fs::write(dir.join(".migrun-mig-9-x.tmp"), "x").unwrap();
        let listed: Vec<LeaseId> = list(&dir).unwrap().into_iter().map(|(l, _)| l).collect();
        assert_eq!(listed, vec![7, 12]);
        assert!(remove(&dir, 7).unwrap());
        assert!(!remove(&dir, 7).unwrap());
        assert_eq!(
            list(&dir).unwrap(),
            vec![(12, dir.join("migrun-mig-12.json"))]
        );
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "no temp file of ours left: {names:?}");
    }

    #[test]
    fn refuses_symlinks_and_non_directories() {
        let t = tempfile::tempdir().unwrap();
        let spec = spec_of(&h200_slice(7, None));
        let real = t.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = t.path().join("link");
        symlink(&real, &link).unwrap();
        let e = write(&link, 7, &spec).unwrap_err();
        assert!(matches!(e, StoreError::Symlink { .. }), "{e}");
        assert!(e.to_string().contains(&link.display().to_string()));

        let victim = t.path().join("victim");
        symlink(&victim, real.join(file_name(7))).unwrap();
        let e = write(&real, 7, &spec).unwrap_err();
        assert!(matches!(e, StoreError::Symlink { .. }), "{e}");
        assert!(!victim.exists(), "nothing written through the link");

        let file = t.path().join("file");
        fs::write(&file, "").unwrap();
        let e = write(&file, 7, &spec).unwrap_err();
        assert!(matches!(e, StoreError::NotADirectory { .. }), "{e}");
    }

    #[test]
    fn an_unwritable_dir_is_one_line_naming_the_dir() {
        // Root writes through mode bits, so "unwritable" here is a parent that is a file: the dir
        // cannot be created. A read-only and a full file system are in tests/cdi_store.rs.
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("file"), "").unwrap();
        let dir = t.path().join("file/cdi");
        let e = write(&dir, 7, &spec_of(&h200_slice(7, None))).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("cannot open CDI spec dir"), "{msg}");
        assert!(
            msg.contains(&dir.display().to_string()) && !msg.contains('\n'),
            "{msg}"
        );
        assert_eq!(crate::exit::ExitCodeOf::exit_code(&e), crate::exit::FAILED);
    }
}
