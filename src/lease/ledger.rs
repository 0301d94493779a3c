//! The usage ledger: one JSON line per lease grant, lease end, wait and refusal, appended to a durable file
//! (never under `/run`, which a reboot empties) and rotated by size; it must not plan, call NVML or name the
//! allocator.
//!
//! Crash safety (docs/operations.md, "The ledger"):
//! - a line is built whole in memory and written with one `write(2)` on an `O_APPEND` descriptor, then
//!   `fdatasync`ed, so a `kill -9` leaves either the whole line or none of it (a full disk can still cut one
//!   short: readers skip a line that does not parse, and count it);
//! - writers of one file take `flock` on it, and check after locking that the path still names the file
//!   they opened, so rotation never loses a line or rotates twice;
//! - an `end` carries everything its `grant` did (lease id, grant time, uid, GPU, profile, memory slices),
//!   so a lease whose grant line was never written (a crash right after its record) is still counted; and
//!   ends are keyed by lease id + grant time: gc finishing a release a `kill -9` interrupted writes a second
//!   `end`, and readers keep only the first.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where the ledger goes when the config names no `ledger` (real GPUs; a simulated machine's is in its state dir).
pub const DEFAULT_LEDGER: &str = "/var/lib/migrun/ledger.jsonl";
/// Size at which the ledger is rotated, by default (16 MiB: about 50 000 events).
pub const DEFAULT_ROTATE_BYTES: u64 = 16 << 20;
/// Rotated files kept (`ledger.jsonl.1` … `.N`), by default.
pub const DEFAULT_KEEP: u32 = 4;
/// The longest line a reader accepts; a longer one is not migrun's (lines are a few hundred bytes).
const MAX_LINE: usize = 64 << 10;

/// What the ledger records of a lease, in its grant and again in its end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseFacts {
    pub id: u64,
    /// Seconds since the Unix epoch; with `id`, the key of the lease across rotations and state dirs.
    pub granted_at: u64,
    pub uid: u32,
    pub gpu: u32,
    pub gpu_uuid: String,
    pub profile: String,
    /// Memory slices the instance spans (its placement size): the weight of slice-hours.
    pub slices: u32,
    /// True when migrun created the instance for this lease or kept it warm from an earlier one.
    pub created: bool,
}

impl LeaseFacts {
    pub fn of(l: &super::Lease) -> LeaseFacts {
        LeaseFacts {
            id: l.id,
            granted_at: l.created_at,
            uid: l.uid,
            gpu: l.gpu_index,
            gpu_uuid: l.gpu_uuid.clone(),
            profile: l.profile.clone(),
            slices: l.placement.size,
            created: l.created,
        }
    }
}

/// Why a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    /// `migrun release`, a poststop hook, the shim, the launcher.
    Released,
    /// gc found its holder (process or container) gone.
    HolderGone,
    /// Its instance was destroyed or changed outside migrun.
    InstanceGone,
}

/// Why a request got no lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// Nothing fits now (exit 3), or earlier waiters are first in line.
    NoRoom,
    /// The config's policy refuses it: a lease limit, a GPU or profile not allowed (exit 2).
    Policy,
    /// It could never fit as asked (MIG off, more memory than any GPU has).
    Unsatisfiable,
}

/// One ledger line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Grant {
        at: u64,
        lease: LeaseFacts,
    },
    End {
        at: u64,
        lease: LeaseFacts,
        reason: EndReason,
    },
    /// A request that queued (`--wait`): how long, and whether it got its lease.
    Wait {
        at: u64,
        uid: u32,
        want: String,
        waited_s: u64,
        granted: bool,
    },
    Refusal {
        at: u64,
        uid: u32,
        want: String,
        reason: Refusal,
    },
}

impl Event {
    pub fn at(&self) -> u64 {
        match self {
            Event::Grant { at, .. }
            | Event::End { at, .. }
            | Event::Wait { at, .. }
            | Event::Refusal { at, .. } => *at,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot {what} the usage ledger {path}: {source}; check the disk and the config's `ledger` key (docs/operations.md)")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the usage ledger {path} is not a regular file of root's (a link, a FIFO, or writable by others); remove it or point the config's `ledger` key elsewhere")]
    Unsafe { path: PathBuf },
}

impl crate::exit::ExitCodeOf for LedgerError {
    fn exit_code(&self) -> i32 {
        match self {
            // A planted file where the ledger goes is bad input, like an unsafe state dir.
            LedgerError::Unsafe { .. } => crate::exit::USAGE,
            LedgerError::Io { .. } => crate::exit::FAILED,
        }
    }
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LedgerError + 'a {
    move |source| LedgerError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The ledger file and how it rotates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    pub path: PathBuf,
    pub rotate_bytes: u64,
    pub keep: u32,
}

impl Ledger {
    pub fn new(path: PathBuf, rotate_bytes: u64, keep: u32) -> Ledger {
        Ledger {
            path,
            rotate_bytes: rotate_bytes.max(1),
            keep: keep.max(1),
        }
    }

    /// `<path>.<n>`: the n-th newest rotated file.
    fn rotated(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn open_append(&self) -> Result<File, LedgerError> {
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(io("create the directory of", &self.path))?;
            }
        }
        let f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&self.path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => LedgerError::Unsafe {
                    path: self.path.clone(),
                },
                _ => io("open", &self.path)(e),
            })?;
        let meta = f.metadata().map_err(io("check", &self.path))?;
        let euid = nix::unistd::geteuid().as_raw();
        if !meta.is_file() || meta.mode() & 0o022 != 0 || meta.uid() != euid {
            return Err(LedgerError::Unsafe {
                path: self.path.clone(),
            });
        }
        Ok(f)
    }

    /// Append one event: one write of the whole line, then fdatasync. Rotates first when the file reached
    /// `rotate_bytes`.
    pub fn append(&self, event: &Event) -> Result<(), LedgerError> {
        let mut line = serde_json::to_vec(event).expect("ledger events serialise");
        line.push(b'\n');
        let locked = loop {
            let f = self.open_append()?;
            let locked = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| io("lock", &self.path)(std::io::Error::from(e)))?;
            // Rotated by another writer while we waited for the lock: open the new file.
            let same = std::fs::symlink_metadata(&self.path).is_ok_and(|m| {
                locked
                    .metadata()
                    .is_ok_and(|mine| mine.ino() == m.ino() && mine.dev() == m.dev())
            });
            if !same {
                continue;
            }
            let len = locked.metadata().map_err(io("check", &self.path))?.len();
            if len > 0 && len + line.len() as u64 > self.rotate_bytes {
                self.rotate()?;
                continue;
            }
            break locked;
        };
        let mut f: &File = &locked;
        let n = f.write(&line).map_err(io("append to", &self.path))?;
        if n != line.len() {
            return Err(io("append to", &self.path)(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("wrote {n} of {} bytes (disk full?)", line.len()),
            )));
        }
        f.sync_data().map_err(io("sync", &self.path))?;
        Ok(())
    }

    /// Shift `<path>.1..keep-1` up by one (the oldest falls off) and move the live file to `<path>.1`. The
    /// caller holds the live file's lock.
    fn rotate(&self) -> Result<(), LedgerError> {
        for n in (1..self.keep).rev() {
            match std::fs::rename(self.rotated(n), self.rotated(n + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("rotate", &self.path)(e)),
            }
        }
        std::fs::rename(&self.path, self.rotated(1)).map_err(io("rotate", &self.path))?;
        if let Some(d) = self.path.parent().and_then(|p| File::open(p).ok()) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Every event of the rotated files (oldest first) and the live one, and how many lines were skipped
    /// as not parsing (a line a full disk cut short, or one written by a newer migrun).
    pub fn read_all(&self) -> Result<(Vec<Event>, usize), LedgerError> {
        let mut events = Vec::new();
        let mut skipped = 0;
        let mut files: Vec<PathBuf> = (1..=self.keep).rev().map(|n| self.rotated(n)).collect();
        files.push(self.path.clone());
        for p in files {
            let f = match OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&p)
            {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    return Err(LedgerError::Unsafe { path: p })
                }
                Err(e) => return Err(io("read", &p)(e)),
            };
            if !f.metadata().map_err(io("check", &p))?.is_file() {
                return Err(LedgerError::Unsafe { path: p });
            }
            let mut r = BufReader::new(f);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let n = (&mut r)
                    .take(MAX_LINE as u64 + 1)
                    .read_until(b'\n', &mut buf)
                    .map_err(io("read", &p))?;
                if n == 0 {
                    break;
                }
                if buf.len() > MAX_LINE {
                    // Not ours; skip to the end of that line.
                    skipped += 1;
                    let mut rest = Vec::new();
                    r.read_until(b'\n', &mut rest).map_err(io("read", &p))?;
                    continue;
                }
                match serde_json::from_slice::<Event>(&buf) {
                    Ok(e) => events.push(e),
                    Err(_) => skipped += 1,
                }
            }
        }
        Ok((events, skipped))
    }
}

use std::io::Read as _;

/// One lease as the ledger tells it: granted, and ended (first end wins) or still open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub lease: LeaseFacts,
    pub end: Option<(u64, EndReason)>,
}

/// The leases of a stream of events, keyed by (lease id, grant time) so a repeated end (gc finishing an
/// interrupted release) counts once, and a lease whose grant line is missing still counts from its end.
pub fn spans(events: &[Event]) -> Vec<Span> {
    let mut by_key: std::collections::BTreeMap<(u64, u64, String), Span> = Default::default();
    for e in events {
        match e {
            Event::Grant { lease, .. } => {
                by_key
                    .entry((lease.granted_at, lease.id, lease.gpu_uuid.clone()))
                    .or_insert_with(|| Span {
                        lease: lease.clone(),
                        end: None,
                    });
            }
            Event::End { at, lease, reason } => {
                let s = by_key
                    .entry((lease.granted_at, lease.id, lease.gpu_uuid.clone()))
                    .or_insert_with(|| Span {
                        lease: lease.clone(),
                        end: None,
                    });
                if s.end.is_none() {
                    s.end = Some((*at, *reason));
                }
            }
            _ => {}
        }
    }
    by_key.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(id: u64, at: u64) -> LeaseFacts {
        LeaseFacts {
            id,
            granted_at: at,
            uid: 1000,
            gpu: 0,
            gpu_uuid: "GPU-0a".into(),
            profile: "1g.10gb".into(),
            slices: 1,
            created: true,
        }
    }

    #[test]
    fn appends_rotates_and_reads_back_in_order() {
        let t = tempfile::tempdir().unwrap();
        let l = Ledger::new(t.path().join("sub/ledger.jsonl"), 400, 3);
        for i in 0..20 {
            l.append(&Event::Grant {
                at: i,
                lease: facts(i, i),
            })
            .unwrap();
        }
        assert!(l.rotated(1).exists() && l.rotated(3).exists() && !l.rotated(4).exists());
        let (ev, skipped) = l.read_all().unwrap();
        assert_eq!(skipped, 0);
        let ats: Vec<u64> = ev.iter().map(Event::at).collect();
        let mut sorted = ats.clone();
        sorted.sort();
        assert_eq!(ats, sorted, "oldest first");
        assert_eq!(*ats.last().unwrap(), 19);
        assert!(ats.len() < 20, "the oldest rotated file fell off");
    }

    #[test]
    fn torn_lines_are_skipped_and_ends_count_once() {
        let t = tempfile::tempdir().unwrap();
        let l = Ledger::new(t.path().join("ledger.jsonl"), 1 << 20, 2);
        l.append(&Event::Grant {
            at: 10,
            lease: facts(1, 10),
        })
        .unwrap();
        let end = Event::End {
            at: 20,
            lease: facts(1, 10),
            reason: EndReason::Released,
        };
        l.append(&end).unwrap();
        // gc repeats the end after an interrupted release; a later lease 1 of another state dir differs in its grant time.
        l.append(&Event::End {
            at: 30,
            lease: facts(1, 10),
            reason: EndReason::HolderGone,
        })
        .unwrap();
        l.append(&Event::End {
            at: 50,
            lease: facts(1, 40),
            reason: EndReason::Released,
        })
        .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&l.path)
            .unwrap()
            .write_all(b"{\"event\":\"gra")
            .unwrap();
        let (ev, skipped) = l.read_all().unwrap();
        assert_eq!((ev.len(), skipped), (4, 1));
        let s = spans(&ev);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].end, Some((20, EndReason::Released)));
        assert_eq!(s[1].end, Some((50, EndReason::Released)));
    }

    #[test]
    fn a_link_is_refused() {
        let t = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("ledger.jsonl")).unwrap();
        let l = Ledger::new(t.path().join("ledger.jsonl"), 1 << 20, 2);
        let e = l
            .append(&Event::Grant {
                at: 1,
                lease: facts(1, 1),
            })
            .unwrap_err();
        assert!(matches!(e, LedgerError::Unsafe { .. }), "{e}");
    }
}
