//! What a user who reaches migrun through sudo may ask of it; pure (a parsed command line and the environment in, a refusal out), it must not touch the system.
//!
//! The documented sudoers rule (`%gpu ALL=(root) NOPASSWD: /usr/bin/migrun`) runs migrun as root on a
//! user's word. migrun then takes from that user only what cannot point root at something they
//! control: no option or variable that names a program (`--docker`), a library (`MIGRUN_NVML_LIB`),
//! a file (`--config`, hook and shim logs) or a directory (`--state-dir`), and none of the
//! subcommands that are for the engine (hooks, the shim), for migrun itself (`__watch`) or for the
//! admin (`mig`, `teardown`). What remains: the launcher, `alloc`, `release` (own leases only),
//! `gc` and the read-only commands. The launcher is root-equivalent by design, as membership of
//! the docker group is (docker run -v /:/host); docs/security.md says so.

use crate::caller::{Caller, PrivilegeError};
use crate::cli::{Command, GlobalArgs};
use crate::statedir::DEFAULT_STATE_DIR;

/// The config file a sudo user gets: root's own, whatever they name.
const ROOT_CONFIG: &str = "/etc/migrun/config.toml";

/// Environment variables migrun or the docker CLI would follow to a program, a library, a file or
/// a directory; `MIGRUN_SIMULATE` and `MIGRUN_LOG` (a filter, not a path) are harmless.
fn refused_env(name: &str, value: &str) -> Option<String> {
    match name {
        "MIGRUN_SIMULATE" | "MIGRUN_LOG" => None,
        // Read through clap and checked on the parsed value below, with a message of their own.
        "MIGRUN_STATE_DIR" | "MIGRUN_CONFIG" | "MIGRUN_DOCKER" => None,
        n if n.starts_with("MIGRUN_") => Some(format!(
            "{n} is set, and root would follow it; unset it (sudo's env_reset normally does)"
        )),
        "DOCKER_CONFIG" | "DOCKER_CONTEXT" | "DOCKER_CERT_PATH" => Some(format!(
            "{name} is set: the docker CLI would load plugins and helpers from it as root; unset it"
        )),
        "DOCKER_HOST" if !value.is_empty() && !value.starts_with("unix://") => Some(format!(
            "DOCKER_HOST={value} is not a local unix socket: the docker CLI would run a connection helper as root; unset it or use unix://"
        )),
        _ => None,
    }
}

/// Refuse what a sudo user may not do; `Ok` for everyone else.
pub fn check(
    caller: &Caller,
    global: &GlobalArgs,
    command: &Command,
    env: &[(String, String)],
) -> Result<(), PrivilegeError> {
    if !caller.via_sudo {
        return Ok(());
    }
    let refuse = |what: &str, why: String| PrivilegeError::NotDelegated {
        what: what.to_string(),
        uid: caller.uid,
        why,
    };
    let name = match command {
        Command::Hook(_) | Command::Runtime(_) => Some((
            "`migrun hook` / `migrun runtime`",
            "the container engine runs these as root itself, with its own bundle".to_string(),
        )),
        Command::Watch(_) => Some((
            "`migrun __watch`",
            "the launcher starts it itself".to_string(),
        )),
        Command::FinishRelease(_) => Some((
            "`migrun __finish-release`",
            "migrun's own releases start it themselves".to_string(),
        )),
        Command::RefillWarm => Some((
            "`migrun __refill-warm`",
            "migrun's own allocations start it themselves".to_string(),
        )),
        Command::Mig(_) => Some((
            "`migrun mig`",
            "changing MIG mode is for the admin, from a root shell".to_string(),
        )),
        Command::Teardown(_) => Some((
            "`migrun teardown`",
            "destroying instances is for the admin, from a root shell".to_string(),
        )),
        // A job step as holder is Slurm's word, given only by slurmstepd: a user naming someone's step could charge
        // it a slice or keep one alive as long as that step runs.
        Command::Alloc(a) if a.slurm_step.is_some() => Some((
            "`migrun alloc --slurm-step`",
            "only the migrun SPANK plugin in slurmstepd (root) ties a lease to a job step; ask Slurm: srun --mig=PROFILE".to_string(),
        )),
        // A hand-over token lets whoever holds it give a lease to any container it starts: the
        // spawner's (root's) business, never a sudo user's.
        Command::Alloc(a) if a.handover => Some((
            "`migrun alloc --handover`",
            "only a root spawner (JupyterHub's MigrunSpawner) hands a lease to a container it starts; start containers with the runtime or the launcher".to_string(),
        )),
        // Giving back a spawner's pending hand-over is the spawner's (root's) business too.
        Command::Release(a) if a.if_handover_pending => Some((
            "`migrun release --if-handover-pending`",
            "only a root spawner (JupyterHub's MigrunSpawner) gives back a lease it handed out; release your own lease with `migrun release LEASE`".to_string(),
        )),
        Command::Sim(_) if global.simulate.is_none() => Some((
            "`migrun sim`",
            "it only controls simulated GPUs (--simulate)".to_string(),
        )),
        _ => None,
    };
    if let Some((what, why)) = name {
        return Err(refuse(what, why));
    }
    if let Some(d) = &global.state_dir {
        if d.as_os_str() != DEFAULT_STATE_DIR {
            return Err(refuse(
                "--state-dir (MIGRUN_STATE_DIR)",
                format!(
                    "it names a directory root would create and write ({}); leave it unset",
                    d.display()
                ),
            ));
        }
    }
    if let Some(c) = &global.config {
        if c.as_os_str() != ROOT_CONFIG {
            return Err(refuse(
                "--config (MIGRUN_CONFIG)",
                format!(
                    "it names a file root would read ({}); {ROOT_CONFIG} is the policy under sudo",
                    c.display()
                ),
            ));
        }
    }
    if let Command::Alloc(a) = command {
        if a.for_uid.is_some_and(|u| u != caller.uid) {
            return Err(refuse(
                "--for-uid",
                "a sudo user's leases are charged to themselves".to_string(),
            ));
        }
        if a.slurm_step.is_some() {
            return Err(refuse(
                "--slurm-step",
                "only Slurm's step daemon (running as root) may tie a lease to a job step"
                    .to_string(),
            ));
        }
    }
    if let Command::Run(a) = command {
        if let Some(d) = &a.docker {
            return Err(refuse(
                "--docker (MIGRUN_DOCKER)",
                format!(
                    "it names a program root would run ({}); the admin sets `docker =` in {ROOT_CONFIG}",
                    d.display()
                ),
            ));
        }
    }
    for (k, v) in env {
        if let Some(why) = refused_env(k, v) {
            return Err(refuse("this environment", why));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{parse, Cli};

    fn cli(line: &str) -> Cli {
        parse(line.split_whitespace().map(Into::into).collect()).unwrap()
    }

    fn verdict(line: &str, env: &[(&str, &str)]) -> Result<(), String> {
        let c = cli(line);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        check(
            &Caller::from_parts(0, Some("1000")),
            &c.global,
            &c.command,
            &env,
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn what_a_sudo_user_may_do() {
        let allowed = [
            "migrun --profile 1g.10gb busybox true",
            "migrun --profile 1g.10gb --dry-run busybox true",
            "migrun alloc --profile 1g.10gb --json",
            "migrun release 7",
            "migrun gc",
            "migrun status --json",
            "migrun profiles",
            "migrun placements",
            "migrun man",
            "migrun --simulate h100-80gb sim reset",
            "migrun --config /etc/migrun/config.toml status",
            "migrun --state-dir /run/migrun status",
        ];
        for line in allowed {
            assert_eq!(verdict(line, &[]), Ok(()), "{line}");
        }
        let refused = [
            (
                "migrun --docker /home/u/evil.sh --profile 1g.10gb busybox true",
                "--docker",
            ),
            ("migrun --config /home/u/c.toml status", "--config"),
            (
                "migrun --state-dir /home/u/s alloc --profile 1g.10gb",
                "--state-dir",
            ),
            ("migrun hook poststop", "migrun hook"),
            (
                "migrun runtime --log /root/x create --bundle /home/u/y id",
                "migrun runtime",
            ),
            (
                "migrun teardown --gpu 0 --include-foreign",
                "migrun teardown",
            ),
            ("migrun mig disable --all", "migrun mig"),
            (
                "migrun __watch --lease 1 --container c --engine docker",
                "__watch",
            ),
            ("migrun sim reset", "migrun sim"),
            ("migrun alloc --profile 1g.10gb --for-uid 0", "--for-uid"),
            (
                "migrun alloc --profile 1g.10gb --holder-pid 1 --handover --json",
                "--handover",
            ),
            (
                "migrun release 1 --if-handover-pending",
                "--if-handover-pending",
            ),
        ];
        for (line, what) in refused {
            let e = verdict(line, &[]).unwrap_err();
            assert!(e.contains(what) && e.contains("uid 1000"), "{line}: {e}");
        }
        for (k, v) in [
            ("MIGRUN_NVML_LIB", "/home/u/libnvidia-ml.so.1"),
            ("MIGRUN_TEST_FAIL", "create_gi"),
            ("DOCKER_CONFIG", "/home/u/.docker"),
            ("DOCKER_HOST", "ssh://u@host"),
        ] {
            let e = verdict("migrun status", &[(k, v)]).unwrap_err();
            assert!(e.contains(k), "{k}: {e}");
        }
        for (k, v) in [
            ("MIGRUN_LOG", "debug"),
            ("DOCKER_HOST", "unix:///run/docker.sock"),
        ] {
            assert_eq!(verdict("migrun status", &[(k, v)]), Ok(()), "{k}");
        }
        // Plain root and unprivileged users are not sudo users: nothing here applies to them.
        let c = cli("migrun --state-dir /x teardown");
        for caller in [
            Caller::from_parts(0, None),
            Caller::from_parts(1000, Some("0")),
        ] {
            assert!(check(&caller, &c.global, &c.command, &[]).is_ok());
        }
    }
}
