//! The state directory: safe opening (0700, owner, no symlink), file locks and atomic writes; it must not know what the files mean.
//!
//! Every persistent file migrun keeps (simulator state, leases, intents) goes through here, so
//! "written atomically, opened without following symlinks" holds everywhere by construction.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Default location; a tmpfs on systemd hosts, so leases never outlive a reboot (instances don't either).
pub const DEFAULT_STATE_DIR: &str = "/run/migrun";

#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("state dir {path} is a symlink; migrun refuses to follow it (remove the link, or point --state-dir / MIGRUN_STATE_DIR at a real directory)")]
    Symlink { path: PathBuf },
    #[error("state dir {path} is not a directory; remove it or choose another --state-dir")]
    NotADirectory { path: PathBuf },
    #[error("state dir {path} is owned by uid {owner}, not by uid {me} running migrun; fix with `chown {me} {path}` or choose another --state-dir")]
    WrongOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("state dir {path} is writable by group or others (mode {mode:o}); fix with `chmod 700 {path}`")]
    TooOpen { path: PathBuf, mode: u32 },
    // The io error is part of the message and deliberately not a `#[source]`, so `{:#}` prints it once.
    #[error("cannot use state dir {path}: {err}; choose a writable --state-dir (MIGRUN_STATE_DIR) or run as root for {default}", default = DEFAULT_STATE_DIR)]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path} is a symlink or not a regular file; migrun refuses to follow it (remove it)")]
    UnsafeFile { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateDirError + '_ {
    move |err| StateDirError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// An opened, checked state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

/// An exclusive lock on a file in the state dir, released on drop (and by the kernel if the process dies).
pub struct Lock {
    _flock: Flock<File>,
}

impl StateDir {
    /// Create the directory (0700) if missing, then refuse it unless it is a real directory owned by us and closed to others.
    pub fn open(path: impl Into<PathBuf>) -> Result<StateDir, StateDirError> {
        let path: PathBuf = path.into();
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&path)
                    .map_err(io_err(&path))?;
                // DirBuilder's mode is filtered by the umask; make it exact.
                fs::set_permissions(&path, fs::Permissions::from_mode(0o700))
                    .map_err(io_err(&path))?;
            }
            Err(e) => return Err(io_err(&path)(e)),
            Ok(_) => {}
        }
        let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
        if meta.file_type().is_symlink() {
            return Err(StateDirError::Symlink { path });
        }
        if !meta.is_dir() {
            return Err(StateDirError::NotADirectory { path });
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return Err(StateDirError::WrongOwner {
                path,
                owner: meta.uid(),
                me,
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(StateDirError::TooOpen { path, mode });
        }
        // Check we can write here now, so a read-only dir is a clear error up front and not half-way through a
        // change. access(2) answers without creating a file (this runs on every command, hooks included).
        nix::unistd::access(
            &path,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
        .map_err(|errno| io_err(&path)(std::io::Error::from_raw_os_error(errno as i32)))?;
        Ok(StateDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// Create a sub-directory (0700) if missing.
    pub fn subdir(&self, rel: &str) -> Result<PathBuf, StateDirError> {
        let p = self.join(rel);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() || !m.is_dir() => {
                Err(StateDirError::UnsafeFile { path: p })
            }
            Ok(_) => Ok(p),
            Err(_) => {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&p)
                    .or_else(|e| {
                        if e.kind() == std::io::ErrorKind::AlreadyExists {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(io_err(&p))?;
                Ok(p)
            }
        }
    }

    /// Take an exclusive lock on `<dir>/<name>`, blocking until it is free.
    pub fn lock(&self, name: &str) -> Result<Lock, StateDirError> {
        lock_file(&self.join(name))
    }

    /// Read a file without following symlinks; `Ok(None)` when it does not exist.
    pub fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, StateDirError> {
        read_nofollow(&self.join(rel))
    }

    /// Replace a file atomically (temp file in the same dir, fsync, rename).
    pub fn write(&self, rel: &str, bytes: &[u8]) -> Result<(), StateDirError> {
        write_atomic(&self.join(rel), bytes, 0o600)
    }
}

/// Exclusive `flock` on a lock file (created 0600, never through a symlink).
pub fn lock_file(path: &Path) -> Result<Lock, StateDirError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                StateDirError::UnsafeFile {
                    path: path.to_path_buf(),
                }
            } else {
                io_err(path)(e)
            }
        })?;
    let flock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| io_err(path)(std::io::Error::from_raw_os_error(errno as i32)))?;
    Ok(Lock { _flock: flock })
}

/// Read a regular file with O_NOFOLLOW; `Ok(None)` when absent.
pub fn read_nofollow(path: &Path) -> Result<Option<Vec<u8>>, StateDirError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path);
    let mut file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(StateDirError::UnsafeFile {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(io_err(path)(e)),
    };
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(StateDirError::UnsafeFile {
            path: path.to_path_buf(),
        });
    }
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).map_err(io_err(path))?;
    Ok(Some(buf))
}

/// Atomically replace `path` with `bytes`: a temp file in the same directory, fsync, rename, fsync the dir.
/// Readers see the old or the new content, never a torn one. Keeps `mode` on the new file.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateDirError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".migrun-tmp")
        .tempfile_in(dir)
        .map_err(io_err(path))?;
    tmp.write_all(bytes).map_err(io_err(path))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(path))?;
    tmp.as_file().sync_all().map_err(io_err(path))?;
    tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_0700_and_refuses_unsafe_dirs() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("state");
        let sd = StateDir::open(&p).unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        sd.write("a.json", b"{}").unwrap();
        assert_eq!(sd.read("a.json").unwrap().unwrap(), b"{}");
        assert!(sd.read("missing").unwrap().is_none());

        let link = t.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(matches!(
            StateDir::open(&link),
            Err(StateDirError::Symlink { .. })
        ));

        fs::set_permissions(&p, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            StateDir::open(&p),
            Err(StateDirError::TooOpen { .. })
        ));

        let file = t.path().join("file");
        fs::write(&file, "x").unwrap();
        assert!(matches!(
            StateDir::open(&file),
            Err(StateDirError::NotADirectory { .. })
        ));
    }

    #[test]
    fn reads_refuse_symlinked_files() {
        let t = tempfile::tempdir().unwrap();
        let sd = StateDir::open(t.path().join("s")).unwrap();
        fs::write(t.path().join("target"), "secret").unwrap();
        std::os::unix::fs::symlink(t.path().join("target"), sd.join("x.json")).unwrap();
        assert!(matches!(
            sd.read("x.json"),
            Err(StateDirError::UnsafeFile { .. })
        ));
    }
}
