//! The state directory: safe opening (0700, owner, no symlink), file locks and atomic writes; it must not know what the files mean.
//!
//! Every persistent file migrun keeps (simulator state, leases, intents) goes through here, so
//! "written atomically, opened without following symlinks" holds everywhere by construction.
//!
//! Directories (the state dir and each sub-directory) are checked through a descriptor opened with
//! `O_DIRECTORY|O_NOFOLLOW`, so what is checked is what was opened. Files are opened with
//! `O_NOFOLLOW|O_NONBLOCK` and checked with `fstat` before a byte is read: a FIFO planted as a record
//! cannot make migrun wait (it holds `alloc.lock` while reading, and every migrun on the host would wait
//! behind it), a huge file cannot eat memory, and a file someone else owns is never believed.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Default location; a tmpfs on systemd hosts, so leases never outlive a reboot (instances don't either).
pub const DEFAULT_STATE_DIR: &str = "/run/migrun";

/// The most migrun reads of one file in the state dir. Records are a few hundred bytes and the simulator's
/// machine a few hundred KiB; anything bigger is not migrun's, and reading it whole would cost its size in memory.
pub const READ_LIMIT: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("state dir {path} is a symlink; migrun refuses to follow it (remove the link, or point --state-dir / MIGRUN_STATE_DIR at a real directory)")]
    Symlink { path: PathBuf },
    #[error("state dir {path} is not a directory; remove it or choose another --state-dir")]
    NotADirectory { path: PathBuf },
    #[error("{what} {path} is owned by uid {owner}, not by uid {me} running migrun; fix with `chown {me} {path}` or choose another --state-dir")]
    WrongOwner {
        what: &'static str,
        path: PathBuf,
        owner: u32,
        me: u32,
    },
    #[error(
        "{what} {path} is writable by group or others (mode {mode:o}); fix with `chmod 700 {path}`"
    )]
    TooOpen {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    /// The state dir cannot be opened or created at start: a usage problem (exit 2).
    // The io error is part of the message and deliberately not a `#[source]`, so `{:#}` prints it once.
    #[error("cannot use state dir {path}: {err}; choose a writable --state-dir (MIGRUN_STATE_DIR) or run as root for {default}", default = DEFAULT_STATE_DIR)]
    Open { path: PathBuf, err: std::io::Error },
    /// Reading or writing a file failed after the state dir was opened (a full or read-only file system,
    /// an I/O error): the operation failed (exit 1), and the message names the file and the errno.
    #[error("{op} {path} failed: {err}; fix the file system (free space, remount it read-write), then run `migrun gc` to finish what was interrupted")]
    Io {
        op: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("{path} is a symlink or not a regular file; migrun refuses to follow it (remove it)")]
    UnsafeFile { path: PathBuf },
    #[error("{path} is owned by uid {owner} with mode {mode:o}, so migrun did not write it (its files are its own and 0600); migrun refuses to read it (remove it)")]
    ForeignFile {
        path: PathBuf,
        owner: u32,
        mode: u32,
    },
    #[error("{path} is larger than the {limit} bytes migrun reads from one of its files, so it is not migrun's; migrun refuses to read it (inspect and remove it)")]
    TooBig { path: PathBuf, limit: u64 },
}

impl crate::exit::ExitCodeOf for StateDirError {
    /// A state dir or file to fix is bad input; an I/O failure after the start (a full or read-only file
    /// system) is the operation failing, not the caller's mistake.
    fn exit_code(&self) -> i32 {
        if self.is_io() {
            crate::exit::FAILED
        } else {
            crate::exit::USAGE
        }
    }
}

impl StateDirError {
    /// An I/O failure after the start is an operational failure; everything else here is a state dir or
    /// file to fix (see `exit`).
    pub fn is_io(&self) -> bool {
        matches!(self, StateDirError::Io { .. })
    }
}

fn open_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateDirError + '_ {
    move |err| StateDirError::Open {
        path: path.to_path_buf(),
        err,
    }
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StateDirError + 'a {
    move |err| StateDirError::Io {
        op,
        path: path.to_path_buf(),
        err,
    }
}

/// `path` without trailing slashes or inner `.` components. `link/` and `link/.` name the link's target, so a
/// check of the link itself (`lstat`, `O_NOFOLLOW`) would look at the target and let the symlink through.
fn normalize(path: &Path) -> PathBuf {
    // `components()` drops trailing slashes and every `.` but a leading one.
    path.components().collect()
}

/// Open a directory without following a symlink in its last component; `ELOOP`/`ENOTDIR` mean it is not a plain directory.
fn open_dir(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// A directory migrun uses must be ours and closed to writes by others (checked on the opened descriptor).
fn check_dir(what: &'static str, path: &Path, meta: &fs::Metadata) -> Result<(), StateDirError> {
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(StateDirError::WrongOwner {
            what,
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(StateDirError::TooOpen {
            what,
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// A file migrun reads or locks must be a regular file it owns, writable only by it. Another user's file
/// (or one others may write) in a directory that let them in is not a record migrun wrote.
fn check_file(path: &Path, meta: &fs::Metadata) -> Result<(), StateDirError> {
    if !meta.is_file() {
        return Err(StateDirError::UnsafeFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if meta.uid() != nix::unistd::geteuid().as_raw() || mode & 0o022 != 0 {
        return Err(StateDirError::ForeignFile {
            path: path.to_path_buf(),
            owner: meta.uid(),
            mode,
        });
    }
    Ok(())
}

/// An opened, checked state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
    /// Device and inode of the directory that was checked: who it is, whatever path names it later.
    dev: u64,
    ino: u64,
}

/// An exclusive lock on a file in the state dir, released on drop (and by the kernel if the process dies).
pub struct Lock {
    _flock: Flock<File>,
}

impl StateDir {
    /// Create the directory (0700) if missing, then refuse it unless it is a real directory owned by us and closed to others.
    pub fn open(path: impl Into<PathBuf>) -> Result<StateDir, StateDirError> {
        let path = normalize(&path.into());
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&path)
                    .map_err(open_err(&path))?;
                // DirBuilder's mode is filtered by the umask; make it exact.
                fs::set_permissions(&path, fs::Permissions::from_mode(0o700))
                    .map_err(open_err(&path))?;
            }
            Err(e) => return Err(open_err(&path)(e)),
            Ok(m) if m.file_type().is_symlink() => return Err(StateDirError::Symlink { path }),
            Ok(m) if !m.is_dir() => return Err(StateDirError::NotADirectory { path }),
            Ok(_) => {}
        }
        // Check the directory through a descriptor, so a swap between the look and the check cannot pass.
        let dir = open_dir(&path).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => StateDirError::Symlink { path: path.clone() },
            Some(libc::ENOTDIR) => StateDirError::NotADirectory { path: path.clone() },
            _ => open_err(&path)(e),
        })?;
        let meta = dir.metadata().map_err(open_err(&path))?;
        check_dir("state dir", &path, &meta)?;
        // Check we can write here now, so a read-only dir is a clear error up front and not half-way through a
        // change. access(2) answers without creating a file (this runs on every command, hooks included).
        nix::unistd::access(
            &path,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
        .map_err(|errno| open_err(&path)(std::io::Error::from_raw_os_error(errno as i32)))?;
        Ok(StateDir {
            path,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Device and inode of the checked directory (it stays the same directory if renamed).
    pub fn identity(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// Create a sub-directory (0700) if missing, and check it as the state dir is checked: a real directory,
    /// ours, not writable by group or others. (A 0777 `intents/` in a 0711 state dir would let any user plant
    /// records that gc acts on as root.)
    pub fn subdir(&self, rel: &str) -> Result<PathBuf, StateDirError> {
        let p = self.join(rel);
        let dir = match open_dir(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
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
                    .map_err(open_err(&p))?;
                open_dir(&p).map_err(|e| self.subdir_err(&p, e))?
            }
            Err(e) => return Err(self.subdir_err(&p, e)),
        };
        let meta = dir.metadata().map_err(io_err("checking", &p))?;
        check_dir("state sub-directory", &p, &meta)?;
        Ok(p)
    }

    fn subdir_err(&self, p: &Path, e: std::io::Error) -> StateDirError {
        match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => StateDirError::UnsafeFile {
                path: p.to_path_buf(),
            },
            _ => open_err(p)(e),
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

/// Exclusive `flock` on a lock file (created 0600, never through a symlink, never a FIFO or device).
pub fn lock_file(path: &Path) -> Result<Lock, StateDirError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        // O_NONBLOCK: opening a FIFO planted here must not wait for a writer; it is refused below.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                StateDirError::UnsafeFile {
                    path: path.to_path_buf(),
                }
            } else {
                io_err("opening", path)(e)
            }
        })?;
    let meta = file.metadata().map_err(io_err("checking", path))?;
    check_file(path, &meta)?;
    let flock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| {
        io_err("locking", path)(std::io::Error::from_raw_os_error(errno as i32))
    })?;
    Ok(Lock { _flock: flock })
}

/// Read a regular file of ours with O_NOFOLLOW, at most [`READ_LIMIT`] bytes; `Ok(None)` when absent.
pub fn read_nofollow(path: &Path) -> Result<Option<Vec<u8>>, StateDirError> {
    let file = OpenOptions::new()
        .read(true)
        // O_NONBLOCK: open(2) of a FIFO waits for a writer; with it, open returns and fstat refuses the FIFO.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(StateDirError::UnsafeFile {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(io_err("opening", path)(e)),
    };
    let meta = file.metadata().map_err(io_err("checking", path))?;
    check_file(path, &meta)?;
    let too_big = || StateDirError::TooBig {
        path: path.to_path_buf(),
        limit: READ_LIMIT,
    };
    if meta.len() > READ_LIMIT {
        return Err(too_big());
    }
    // Bounded even if the file grows after the fstat.
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.take(READ_LIMIT + 1)
        .read_to_end(&mut buf)
        .map_err(io_err("reading", path))?;
    if buf.len() as u64 > READ_LIMIT {
        return Err(too_big());
    }
    Ok(Some(buf))
}

/// Atomically replace `path` with `bytes`: a temp file in the same directory, fsync, rename, fsync the dir.
/// Readers see the old or the new content, never a torn one. Keeps `mode` on the new file.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateDirError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".migrun-tmp")
        .tempfile_in(dir)
        .map_err(io_err("writing", path))?;
    replace_with(tmp, bytes, path, mode).map_err(io_err("writing", path))
}

/// Writes `bytes` into `tmp` (a temp file in `path`'s directory), gives it `mode` and renames it over
/// `path`, durably: the file is fsynced before the rename and the directory after it, unless they
/// live on tmpfs, where fsync has nothing to write. `/run`, so the state dir and `/run/cdi`, is a
/// tmpfs on most hosts: there the two fsyncs and the directory's open and close were 30 of a prestart
/// hook's 383 system calls, for nothing a crash could keep. Every atomic replacement goes through
/// here ([`write_atomic`], the CDI spec store), so the rule lives in one place. On an error the temp
/// file is removed (dropping it does).
pub fn replace_with(
    mut tmp: tempfile::NamedTempFile,
    bytes: &[u8],
    path: &Path,
    mode: u32,
) -> std::io::Result<()> {
    tmp.write_all(bytes)?;
    let file = tmp.as_file();
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    let durable = !on_tmpfs(nix::sys::statfs::fstatfs(file));
    if durable {
        file.sync_all()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    if durable {
        sync_dir(path.parent().unwrap_or(Path::new(".")));
    }
    Ok(())
}

/// Whether a `statfs` answer is tmpfs's (an error counts as not: then fsync runs).
fn on_tmpfs(s: nix::Result<nix::sys::statfs::Statfs>) -> bool {
    s.is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// Makes a rename or removal in `dir` durable, unless `dir` is on tmpfs (see [`replace_with`]); best
/// effort: the change is done either way.
pub fn sync_dir(dir: &Path) {
    if on_tmpfs(nix::sys::statfs::statfs(dir)) {
        return;
    }
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Remove a file; `Ok(false)` when it was not there.
pub fn remove(path: &Path) -> Result<bool, StateDirError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("removing", path)(e)),
    }
}

/// The names in a directory (for listing records); a failure is an I/O error naming the directory.
pub fn list_dir(path: &Path) -> Result<Vec<String>, StateDirError> {
    let rd = match fs::read_dir(path) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("listing", path)(e)),
    };
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(io_err("listing", path))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
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

    #[test]
    fn a_trailing_slash_does_not_let_a_symlink_through() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        StateDir::open(&real).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        for given in ["link/", "link//", "link/.", "link/./"] {
            let p = format!("{}/{given}", t.path().display());
            assert!(
                matches!(StateDir::open(&p), Err(StateDirError::Symlink { .. })),
                "{given}"
            );
        }
        // A real directory given with a trailing slash is fine, and named without it.
        let sd = StateDir::open(format!("{}/", real.display())).unwrap();
        assert_eq!(sd.path(), real);
    }

    #[test]
    fn open_sub_directories_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let sd = StateDir::open(t.path().join("s")).unwrap();
        let p = sd.subdir("intents").unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o700);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o777)).unwrap();
        let e = sd.subdir("intents").unwrap_err();
        assert!(matches!(e, StateDirError::TooOpen { .. }), "{e}");
        assert!(e.to_string().contains("state sub-directory"), "{e}");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        assert!(matches!(
            sd.subdir("intents"),
            Err(StateDirError::WrongOwner { .. })
        ));
        fs::remove_dir(&p).unwrap();
        std::os::unix::fs::symlink(t.path(), &p).unwrap();
        assert!(matches!(
            sd.subdir("intents"),
            Err(StateDirError::UnsafeFile { .. })
        ));
    }

    #[test]
    fn fifos_foreign_and_huge_files_are_refused_without_waiting() {
        let t = tempfile::tempdir().unwrap();
        let sd = StateDir::open(t.path().join("s")).unwrap();
        // A FIFO: open(2) without O_NONBLOCK would wait here for a writer forever.
        nix::unistd::mkfifo(
            &sd.join("fifo.json"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        assert!(matches!(
            sd.read("fifo.json"),
            Err(StateDirError::UnsafeFile { .. })
        ));
        assert!(matches!(
            sd.lock("fifo.json"),
            Err(StateDirError::UnsafeFile { .. })
        ));
        fs::write(sd.join("open.json"), "{}").unwrap();
        fs::set_permissions(sd.join("open.json"), fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(
            sd.read("open.json"),
            Err(StateDirError::ForeignFile { .. })
        ));
        let big = File::create(sd.join("big.json")).unwrap();
        big.set_len(READ_LIMIT + 1).unwrap();
        let e = sd.read("big.json").unwrap_err();
        assert!(matches!(e, StateDirError::TooBig { .. }), "{e}");
        let fits = File::create(sd.join("fits.json")).unwrap();
        fits.set_len(READ_LIMIT).unwrap();
        assert_eq!(
            sd.read("fits.json").unwrap().unwrap().len() as u64,
            READ_LIMIT
        );
    }
}
