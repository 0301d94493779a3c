//! Who is asking: the effective uid, the user charged under sudo, and the privilege check; it must not read leases or talk to NVML.
//!
//! migrun runs as root. Under `sudo` the lease is charged to the invoking user (SUDO_UID) so per-user
//! limits and "release only your own leases" apply to the person, not to root. SUDO_UID is trusted
//! only when the effective uid is 0: an unprivileged process could set it to anything, but then it
//! could not change GPUs or root's state dir anyway.

use nix::unistd::geteuid;

/// The process's identity as migrun's policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Effective uid of this process.
    pub euid: u32,
    /// The uid leases are charged to: SUDO_UID under sudo, else `euid`.
    pub uid: u32,
    /// True when running as root through sudo (SUDO_UID set and euid 0).
    pub via_sudo: bool,
}

impl Caller {
    /// Read the identity from the process (euid) and the environment (SUDO_UID).
    pub fn current() -> Caller {
        Caller::from_parts(
            geteuid().as_raw(),
            std::env::var("SUDO_UID").ok().as_deref(),
        )
    }

    /// Pure form of [`Caller::current`], for tests.
    pub fn from_parts(euid: u32, sudo_uid: Option<&str>) -> Caller {
        let sudo = if euid == 0 {
            sudo_uid.and_then(|s| s.trim().parse::<u32>().ok())
        } else {
            None
        };
        Caller {
            euid,
            uid: sudo.unwrap_or(euid),
            via_sudo: sudo.is_some(),
        }
    }

    /// A plain root shell (not sudo) may act on any lease.
    pub fn is_plain_root(&self) -> bool {
        self.euid == 0 && !self.via_sudo
    }

    /// May this caller release a lease charged to `owner`? Root may release any; a sudo user only their own.
    pub fn may_release(&self, owner: u32) -> bool {
        self.is_plain_root() || self.uid == owner
    }
}

/// May root run the program at `path` on someone else's word (a path recorded in a lease, a docker
/// CLI found under sudo)? Only when the file and every directory above it belong to root and no
/// one else can write them, as sudo's own secure_path expects: otherwise whoever can replace the
/// file runs code as root. `Err` says which part failed the check.
pub fn trusted_program(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let real = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let meta = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", real.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", real.display()));
    }
    let mut at = Some(real.as_path());
    while let Some(p) = at {
        let m = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if m.uid() != 0 {
            return Err(format!(
                "{} is owned by uid {}, not root",
                p.display(),
                m.uid()
            ));
        }
        // A sticky directory (/tmp) may be world-writable: only the owner of an entry in it,
        // root as checked one step down, can rename or remove that entry.
        let sticky_dir = m.is_dir() && m.mode() & 0o1000 != 0;
        if m.mode() & 0o022 != 0 && !sticky_dir {
            return Err(format!(
                "{} is writable by group or others (mode {:o})",
                p.display(),
                m.mode() & 0o7777
            ));
        }
        at = p.parent();
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("{what} needs root (migrun creates and destroys MIG instances and keeps leases in /run/migrun), and you are uid {euid}; either run it through sudo, allowed by a sudoers rule such as `%gpu ALL=(root) NOPASSWD: /usr/bin/migrun` (see docs/security.md), or, as a docker-group user, run containers through the migrun runtime shim: `docker run --runtime migrun -e MIGRUN_PROFILE=3g.40gb IMAGE` (dockerd runs it as root)")]
    NotRoot { what: String, euid: u32 },
    #[error("{what} is not open to a user through sudo (uid {uid}): {why}; sudo users may run containers (the launcher), alloc, release, gc and the read-only commands (docs/security.md)")]
    NotDelegated { what: String, uid: u32, why: String },
}

/// Refuse a privileged operation early, with the two supported ways to get privilege.
/// Simulated GPUs need no privilege (the state dir's own checks still apply).
pub fn require_root(what: &str, simulated: bool) -> Result<(), PrivilegeError> {
    let c = Caller::current();
    if simulated || c.euid == 0 {
        Ok(())
    } else {
        Err(PrivilegeError::NotRoot {
            what: what.into(),
            euid: c.euid,
        })
    }
}

/// Exit codes for this module's errors (see `exit`).
pub fn exit_code_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    e.downcast_ref::<PrivilegeError>()
        .map(|_| crate::exit::PRIVILEGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sudo_uid_only_counts_for_root() {
        let c = Caller::from_parts(0, Some("1000"));
        assert_eq!((c.uid, c.via_sudo), (1000, true));
        assert!(c.may_release(1000) && !c.may_release(1001));
        let c = Caller::from_parts(0, None);
        assert!(c.is_plain_root() && c.may_release(1234));
        // A non-root process cannot claim to be someone else through SUDO_UID.
        let c = Caller::from_parts(1000, Some("0"));
        assert_eq!((c.uid, c.via_sudo), (1000, false));
        let c = Caller::from_parts(0, Some("garbage"));
        assert_eq!((c.uid, c.via_sudo), (0, false));
    }

    #[test]
    fn only_root_owned_programs_are_trusted() {
        // Every test host has a root-owned /bin/sh in root-owned, closed directories.
        assert_eq!(trusted_program(std::path::Path::new("/bin/sh")), Ok(()));
        assert!(trusted_program(std::path::Path::new("/nonexistent/docker")).is_err());
        if !nix::unistd::geteuid().is_root() {
            return; // the cases below need files owned by root and by someone else
        }
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("docker-wrapper");
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        // Root's own 0700 temp dir under the sticky /tmp: nobody else can swap the file.
        assert_eq!(trusted_program(&p), Ok(()));
        // A user's program, or root's in a directory the user can write, is never trusted.
        nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(1000)), None).unwrap();
        assert!(trusted_program(&p)
            .unwrap_err()
            .contains("owned by uid 1000"));
        nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(trusted_program(&p)
            .unwrap_err()
            .contains("writable by group or others"));
    }
}
