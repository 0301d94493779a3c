//! Running the docker CLI for the launcher: terminal inherited, signals forwarded (never twice), the container id
//! reported as soon as docker writes the cidfile; it neither allocates nor releases.

use super::gate::Gate;
use super::{DockerCli, DockerError};
use signal_hook::iterator::exfiltrator::origin::WithOrigin;
use signal_hook::iterator::SignalsInfo;
use signal_hook::low_level::siginfo::{Cause, Origin};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

/// Signals migrun passes on to the docker CLI, which passes them on to the container (its sig-proxy).
pub const FORWARDED: &[i32] = &[
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGHUP,
    signal_hook::consts::SIGQUIT,
    signal_hook::consts::SIGUSR1,
    signal_hook::consts::SIGUSR2,
];

/// Should a signal with this origin be forwarded? Not when the kernel sent it: a terminal's Ctrl-C or hang-up goes
/// to the whole foreground process group, so docker got it already, and a second copy would hit the container twice.
pub fn should_forward(cause: Cause) -> bool {
    !matches!(cause, Cause::Kernel)
}

/// How a docker child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// docker's exit code (128+N when docker itself died of signal N).
    pub code: i32,
    /// The container id from the cidfile, when docker got as far as creating one.
    pub container: Option<String>,
    /// Signals forwarded to docker, for --verbose.
    pub forwarded: Vec<i32>,
    /// Why docker, started without a gate, could not be bound to the lease (for a warning); `None` when it was.
    pub unheld: Option<String>,
}

/// The exit code a shell would show for `status`.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(crate::exit::FAILED)
}

/// The container id in a cidfile, once docker has written it whole.
pub fn read_cidfile(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let id = text.trim();
    (id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

/// Run `docker <argv>` with the terminal inherited, forward signals to it, and report the container id through
/// `on_container` as soon as `cidfile` holds it. Returns when docker exits. Signals stay caught until the caller
/// drops the returned guard, so migrun cannot be interrupted between docker's exit and the release.
///
/// `on_spawn` gets the docker client's pid before docker may talk to the daemon (it waits behind a [`Gate`]), so the
/// caller can bind the lease to it; if `on_spawn` fails, docker never runs and this returns [`DockerError::Hold`].
/// Without a gate (no low descriptor free) docker starts at once and `on_spawn` follows right after; its error is
/// then only reported in [`Finished::unheld`], since docker already runs.
pub fn run_supervised(
    cli: &DockerCli,
    argv: &[String],
    cidfile: &Path,
    on_spawn: &mut dyn FnMut(u32) -> Result<(), String>,
    on_container: &mut dyn FnMut(&str),
) -> Result<(Finished, SignalGuard), DockerError> {
    let mut wanted: Vec<i32> = FORWARDED.to_vec();
    wanted.push(signal_hook::consts::SIGCHLD);
    // Registered before the spawn: a signal or the child's exit can never slip in unnoticed.
    let mut signals = SignalsInfo::<WithOrigin>::new(&wanted).map_err(DockerError::Signals)?;
    let mut gate = Gate::new();
    let mut command = match &gate {
        Some(g) => g.command(cli, argv),
        None => {
            let mut c = cli.command();
            c.args(argv);
            c
        }
    };
    let spawned = command.spawn().map_err(|source| DockerError::Spawn {
        cli: cli.path.clone(),
        source,
    });
    if let Some(g) = gate.as_mut() {
        g.started();
    }
    let mut child = spawned?;
    let held = on_spawn(child.id());
    let mut unheld = None;
    match (gate, held) {
        (Some(mut g), Ok(())) => g.open(),
        (Some(g), Err(why)) => {
            // Closing the gate unopened makes the shell exit without running docker.
            drop(g);
            let _ = child.wait();
            return Err(DockerError::Hold(why));
        }
        (None, held) => unheld = held.err(),
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut container: Option<String> = None;
    let mut forwarded = Vec::new();
    let mut batch: Vec<Origin> = Vec::new();
    let status = loop {
        batch.extend(signals.pending());
        for o in batch.drain(..) {
            if o.signal != signal_hook::consts::SIGCHLD && should_forward(o.cause) {
                // The child is not reaped before try_wait below, so `pid` is still ours.
                if let Ok(sig) = nix::sys::signal::Signal::try_from(o.signal) {
                    let _ = nix::sys::signal::kill(pid, sig);
                    forwarded.push(o.signal);
                }
            }
        }
        if container.is_none() {
            if let Some(id) = read_cidfile(cidfile) {
                on_container(&id);
                container = Some(id);
            }
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => {
                return Err(DockerError::Spawn {
                    cli: cli.path.clone(),
                    source,
                })
            }
        }
        if container.is_some() {
            // Nothing to poll for any more: sleep until a signal (SIGCHLD included) arrives; the loop's top
            // forwards what came.
            batch.extend(signals.wait());
        } else {
            // Poll the cidfile often, to shorten the window in which the lease still names migrun's pid.
            // Signals that arrive meanwhile are picked up at the loop's top.
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    if container.is_none() {
        if let Some(id) = read_cidfile(cidfile) {
            on_container(&id);
            container = Some(id);
        }
    }
    Ok((
        Finished {
            code: exit_code(status),
            container,
            forwarded,
            unheld,
        },
        SignalGuard { _signals: signals },
    ))
}

/// Keeps SIGINT/SIGTERM/... caught (so they do not kill migrun) while it is alive.
pub struct SignalGuard {
    _signals: SignalsInfo<WithOrigin>,
}

impl SignalGuard {
    /// Catch the forwarded signals without acting on them (for the release after a docker child has ended).
    pub fn catch() -> Result<SignalGuard, DockerError> {
        Ok(SignalGuard {
            _signals: SignalsInfo::<WithOrigin>::new(FORWARDED).map_err(DockerError::Signals)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidfile_is_read_only_when_whole() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cid");
        assert_eq!(read_cidfile(&p), None);
        std::fs::write(&p, "").unwrap();
        assert_eq!(read_cidfile(&p), None);
        let id = "0123456789abcdef".repeat(4);
        std::fs::write(&p, &id).unwrap();
        assert_eq!(read_cidfile(&p), Some(id));
    }

    #[test]
    fn terminal_signals_are_not_forwarded_twice() {
        use signal_hook::low_level::siginfo::Sent;
        assert!(!should_forward(Cause::Kernel));
        assert!(should_forward(Cause::Sent(Sent::User)));
        assert!(should_forward(Cause::Unknown));
    }
}
