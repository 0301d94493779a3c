//! Holding the docker CLI back until the launcher has recorded its pid in the lease: a POSIX shell starts in docker's
//! place, waits for one line on a pipe, and only then execs docker (same pid, same start time).
//!
//! Why: the pid of a process is only known once it exists, and a launcher killed between starting docker and
//! recording it would leave a lease that names only a dead process; gc would then free a slice that the docker
//! client, still running (a slow image pull), goes on to hand to a container. Started behind the gate, docker cannot
//! reach the daemon before its pid is in the lease. If the launcher dies while the shell waits, the pipe's only
//! write end closes, the shell reads end-of-file and exits without running docker.

use super::{DockerCli, DOCKER_FAILED};
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;

/// The highest descriptor a POSIX shell's `<&N` can name (dash takes one digit).
const MAX_SHELL_FD: i32 = 9;

/// The pipe between the launcher and the waiting shell.
pub struct Gate {
    /// The launcher's end (close-on-exec, so no child holds it open): one line `go` lets docker run; closing it
    /// without that line stops the shell.
    tx: Option<File>,
    /// The shell's end, inheritable, numbered 3..=9; closed here as soon as the shell is started, so no later
    /// child inherits it.
    rx: Option<OwnedFd>,
}

impl Gate {
    /// A gate, or `None` when no descriptor from 3 to 9 is free (or the pipe cannot be made): the caller then
    /// starts docker directly and records its pid right after, as close as it can get.
    pub fn new() -> Option<Gate> {
        let (rx, tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC).ok()?;
        // try_clone takes the lowest free descriptor from 3 (F_DUPFD_CLOEXEC); only the copy's close-on-exec is
        // cleared, so only the shell inherits it.
        let shells = rx.try_clone().ok()?;
        drop(rx);
        let fd = shells.as_raw_fd();
        if fd > MAX_SHELL_FD {
            return None;
        }
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).ok()?;
        Some(Gate {
            tx: Some(File::from(tx)),
            rx: Some(shells),
        })
    }

    /// `cli argv` behind the gate: `/bin/sh -c SCRIPT migrun-docker-gate CLI ARGV...`, with the CLI's environment.
    /// The shell closes its end of the pipe before exec, so docker inherits nothing of migrun's.
    pub fn command(&self, cli: &DockerCli, argv: &[String]) -> Command {
        let fd = self.rx.as_ref().map_or(-1, |r| r.as_raw_fd());
        let script = format!(
            "IFS= read -r go <&{fd}; exec {fd}<&-; [ \"$go\" = go ] || exit {DOCKER_FAILED}; exec \"$@\""
        );
        let mut c = cli.command_of(Path::new("/bin/sh"));
        c.arg("-c")
            .arg(script)
            .arg("migrun-docker-gate")
            .arg(&cli.path)
            .args(argv);
        c
    }

    /// The shell has started (it holds its own copy of the read end): close this process's.
    pub fn started(&mut self) {
        self.rx = None;
    }

    /// Let docker run. Dropping the gate without calling this stops the shell instead.
    pub fn open(&mut self) {
        if let Some(mut tx) = self.tx.take() {
            // A shell that died already (a forwarded signal) cannot read it; its exit is seen by the caller.
            let _ = tx.write_all(b"go\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    fn echo_cli() -> DockerCli {
        DockerCli {
            path: "/bin/echo".into(),
            host: Some("unix:///nowhere".into()),
            explicit: true,
        }
    }

    #[test]
    fn the_program_runs_only_once_the_gate_opens() {
        let mut gate = Gate::new().expect("a free descriptor from 3 to 9 in the test process");
        let mut child = gate
            .command(&echo_cli(), &["hello".into()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        gate.started();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            child.try_wait().unwrap().is_none(),
            "ran before the gate opened"
        );
        gate.open();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"hello\n");
    }

    #[test]
    fn a_gate_dropped_shut_stops_the_program() {
        let mut gate = Gate::new().unwrap();
        let child = gate
            .command(&echo_cli(), &["never".into()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        gate.started();
        drop(gate);
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(DOCKER_FAILED));
        assert!(out.stdout.is_empty());
    }
}
