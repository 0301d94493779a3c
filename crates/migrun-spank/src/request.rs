//! What the plugin asks migrun for and what it tells the job: the user's `--mig*` options checked and turned into a
//! `migrun alloc` command line, migrun's JSON answer read into the task environment, and migrun's refusal turned
//! into the one line the user sees. Pure (strings in, strings out); it must not call Slurm or run anything.

use std::time::Duration;

/// The options the plugin registers with srun, sbatch and salloc (without the leading `--`).
pub const OPT_PROFILE: &str = "mig";
pub const OPT_MIN_MEM: &str = "mig-min-mem";
pub const OPT_WAIT: &str = "mig-wait";

/// What one job step asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// `--mig=3g.40gb`
    Profile(String),
    /// `--mig-min-mem=20g`: the smallest profile with at least this much memory on the node's GPUs.
    MinMem(String),
}

/// A step's request: what, and how long to wait for room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub want: Want,
    pub wait: Duration,
}

/// A value a user typed must look like a profile or a size before it reaches a root command line; migrun checks
/// the meaning (does the profile exist on this node's GPUs) and says what is valid.
fn plain_value(opt: &str, v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && !v.starts_with('-')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'+');
    if ok {
        Ok(v.to_string())
    } else {
        Err(format!(
            "--{opt}={v:?} is not a MIG profile or size: use a profile name such as 1g.10gb or 3g.40gb (`migrun profiles` on a GPU node lists them), or a size such as 20g"
        ))
    }
}

/// Read the options as Slurm handed them over. `Ok(None)`: the step asked for no slice (it costs nothing).
/// `default_wait` is the admin's `wait=S` from plugstack.conf, used when the user gives no `--mig-wait`.
pub fn parse(
    profile: Option<&str>,
    min_mem: Option<&str>,
    wait: Option<&str>,
    default_wait: Duration,
) -> Result<Option<Request>, String> {
    let want = match (profile, min_mem) {
        (Some(p), None) => Want::Profile(plain_value(OPT_PROFILE, p)?),
        (None, Some(m)) => Want::MinMem(plain_value(OPT_MIN_MEM, m)?),
        (Some(_), Some(_)) => {
            return Err(format!(
                "give either --{OPT_PROFILE}=PROFILE or --{OPT_MIN_MEM}=SIZE, not both"
            ))
        }
        (None, None) => {
            return match wait {
                Some(_) => Err(format!(
                    "--{OPT_WAIT} needs --{OPT_PROFILE}=PROFILE or --{OPT_MIN_MEM}=SIZE (what to wait for)"
                )),
                None => Ok(None),
            }
        }
    };
    let wait = match wait {
        None => default_wait,
        Some(w) => w.parse::<u64>().map(Duration::from_secs).map_err(|_| {
            format!("--{OPT_WAIT}={w:?} is not a number of seconds: use e.g. --{OPT_WAIT}=300 (0 fails at once when there is no room)")
        })?,
    };
    Ok(Some(Request { want, wait }))
}

/// Arguments of `migrun alloc` for `step` (`42.0`, `42.batch`) charged to `uid`.
pub fn alloc_args(req: &Request, step: &str, uid: u32) -> Vec<String> {
    let mut a = vec![
        "alloc".to_string(),
        "--json".into(),
        "--for-uid".into(),
        uid.to_string(),
        "--slurm-step".into(),
        step.to_string(),
    ];
    match &req.want {
        Want::Profile(p) => a.extend(["--profile".to_string(), p.clone()]),
        Want::MinMem(m) => a.extend(["--min-mem".to_string(), m.clone()]),
    }
    // migrun's --wait with no value (or 0) waits forever; the plugin never does that.
    if req.wait.as_secs() > 0 {
        a.push(format!("--wait={}", req.wait.as_secs()));
    }
    a
}

/// The lease migrun made, as the task environment gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub lease: u64,
    pub mig_uuid: String,
    pub profile: String,
}

impl Granted {
    /// The variables every task of the step gets.
    pub fn env(&self) -> [(&'static str, String); 4] {
        [
            ("CUDA_VISIBLE_DEVICES", self.mig_uuid.clone()),
            ("NVIDIA_VISIBLE_DEVICES", self.mig_uuid.clone()),
            ("MIGRUN_LEASE", self.lease.to_string()),
            ("MIGRUN_PROFILE", self.profile.clone()),
        ]
    }
}

/// Read `migrun alloc --json` output (docs/json.md); anything else is an error naming what was missing.
pub fn granted(stdout: &str) -> Result<Granted, String> {
    let v: serde_json::Value =
        serde_json::from_str(stdout).map_err(|e| format!("migrun alloc printed no JSON ({e})"))?;
    let text = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .filter(|s| {
                !s.is_empty() && s.len() <= 128 && !s.chars().any(|c| c.is_control() || c == ' ')
            })
            .map(str::to_string)
            .ok_or_else(|| format!("migrun alloc's JSON lacks a sane {k:?}"))
    };
    let lease = v
        .get("lease")
        .and_then(|x| x.as_u64())
        .ok_or("migrun alloc's JSON lacks \"lease\"")?;
    Ok(Granted {
        lease,
        mig_uuid: text("mig_uuid")?,
        profile: text("profile")?,
    })
}

/// The one line the user sees when the step cannot have its slice: migrun's first line of explanation (it names the
/// profile, the GPU and what to do; Slurm's prefix names the node). The rest of migrun's message goes to the log.
pub fn refusal_line(stderr: &str, status: &str) -> String {
    let first = stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.strip_prefix("migrun: ").unwrap_or(l))
        // migrun's advice names its own flag; the Slurm user's is --mig-wait.
        .map(|l| l.replace("use --wait", "use --mig-wait"))
        .map(|l| l.chars().filter(|c| !c.is_control()).collect::<String>());
    match first {
        Some(l) => format!("migrun: {l}"),
        None => format!(
            "migrun: migrun alloc failed ({status}) without a message; see the node's slurmd log"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(0);

    #[test]
    fn no_option_means_no_request() {
        assert_eq!(parse(None, None, None, W), Ok(None));
    }

    #[test]
    fn options_become_an_alloc_command_line() {
        let r = parse(Some("3g.40gb"), None, Some("30"), W)
            .unwrap()
            .unwrap();
        assert_eq!(
            alloc_args(&r, "42.0", 1000).join(" "),
            "alloc --json --for-uid 1000 --slurm-step 42.0 --profile 3g.40gb --wait=30"
        );
        let r = parse(None, Some("20g"), None, Duration::from_secs(5))
            .unwrap()
            .unwrap();
        assert_eq!(
            alloc_args(&r, "7.batch", 0).join(" "),
            "alloc --json --for-uid 0 --slurm-step 7.batch --min-mem 20g --wait=5"
        );
        let r = parse(Some("1g.10gb"), None, Some("0"), Duration::from_secs(5))
            .unwrap()
            .unwrap();
        assert!(!alloc_args(&r, "1.0", 0)
            .iter()
            .any(|a| a.starts_with("--wait")));
    }

    #[test]
    fn bad_options_are_refused_with_what_to_do() {
        for (p, m, w, needle) in [
            (Some("3g.40gb"), Some("20g"), None, "not both"),
            (None, None, Some("10"), "needs --mig"),
            (Some("1g.10gb"), None, Some("soon"), "number of seconds"),
            (Some("--state-dir=/tmp"), None, None, "not a MIG profile"),
            (Some(""), None, None, "not a MIG profile"),
            (Some("1g 10gb"), None, None, "not a MIG profile"),
            (None, Some("20g;reboot"), None, "not a MIG profile"),
        ] {
            let e = parse(p, m, w, W).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn migrun_json_is_read_and_checked() {
        let g =
            granted(r#"{"schema":1,"lease":7,"mig_uuid":"MIG-abc","profile":"1g.10gb"}"#).unwrap();
        assert_eq!(g.env()[0], ("CUDA_VISIBLE_DEVICES", "MIG-abc".to_string()));
        assert_eq!(g.env()[2], ("MIGRUN_LEASE", "7".to_string()));
        assert!(granted("MIG-abc lease 7").is_err());
        assert!(granted(r#"{"lease":7,"mig_uuid":"MIG-a b","profile":"x"}"#).is_err());
        assert!(granted(r#"{"mig_uuid":"MIG-a","profile":"x"}"#).is_err());
    }

    #[test]
    fn the_refusal_is_migruns_first_line() {
        let err = "migrun: no room for 7g.80gb on 2 GPUs (use --wait to queue for it)\n  GPU 0 |1g |..|\n";
        assert_eq!(
            refusal_line(err, "exit status: 3"),
            "migrun: no room for 7g.80gb on 2 GPUs (use --mig-wait to queue for it)"
        );
        assert!(refusal_line("", "exit status: 1").contains("without a message"));
        assert!(!refusal_line("migrun: a\u{1b}[2Jb", "x").contains('\u{1b}'));
    }
}

/// The batch step's slice, when a step inside an `sbatch --mig` job may share it instead of taking a second one.
/// `hint` is the lease id the job's environment carries (MIGRUN_LEASE, inherited from the batch script): only a
/// hint, since the job can set it to anything. It counts only when migrun's own records (`migrun status --json`)
/// show that lease active and held by this job's batch step, and the step asks for what the batch step got (the
/// same profile, or by memory, as `sbatch --mig-min-mem` hands down).
pub fn batch_slice(status_json: &str, hint: u64, job: u32, want: &Want) -> Option<Granted> {
    let v: serde_json::Value = serde_json::from_str(status_json).ok()?;
    let l = v
        .get("leases")?
        .as_array()?
        .iter()
        .find(|l| l.get("id").and_then(|x| x.as_u64()) == Some(hint))?;
    let h = l.get("holder")?;
    let ours = h.get("kind")?.as_str()? == "slurm"
        && h.get("job")?.as_u64()? == u64::from(job)
        && h.get("step")?.as_u64()? == u64::from(STEP_BATCH)
        && l.get("state")?.as_str()? == "active";
    let profile = l.get("profile")?.as_str()?.to_string();
    let same = match want {
        Want::Profile(p) => *p == profile,
        Want::MinMem(_) => true,
    };
    let mig_uuid = l.get("mig_uuid")?.as_str()?.to_string();
    (ours && same).then_some(Granted {
        lease: hint,
        mig_uuid,
        profile,
    })
}

/// Slurm's reserved step ids (slurm.h, 22.05).
const STEP_BATCH: u32 = 0xffff_fffb;
const STEP_INTERACTIVE: u32 = 0xffff_fffa;
const STEP_EXTERN: u32 = 0xffff_fffc;

/// `JOB.STEP` as migrun's `--slurm-step` takes it, or `None` for a step that runs no user task and gets no slice
/// (the extern step that `PrologFlags=contain` adopts processes into, Slurm's pending-step placeholders).
pub fn step_spec(job: u32, step: u32) -> Option<String> {
    let name = match step {
        STEP_BATCH => "batch".to_string(),
        STEP_INTERACTIVE => "interactive".to_string(),
        STEP_EXTERN => return None,
        n if n >= 0xffff_fff0 => return None,
        n => n.to_string(),
    };
    Some(format!("{job}.{name}"))
}

#[cfg(test)]
mod step_tests {
    use super::*;

    #[test]
    fn a_step_shares_the_batch_slice_only_on_migruns_word() {
        let st = |job: u32, step: u32, state: &str| {
            format!(
                r#"{{"leases":[{{"id":7,"holder":{{"kind":"slurm","job":{job},"step":{step},"pid":1,"start_time":2}},"state":"{state}","profile":"1g.10gb","mig_uuid":"MIG-a"}}]}}"#
            )
        };
        let p = Want::Profile("1g.10gb".into());
        let g = batch_slice(&st(42, STEP_BATCH, "active"), 7, 42, &p).unwrap();
        assert_eq!((g.lease, g.mig_uuid.as_str()), (7, "MIG-a"));
        assert!(batch_slice(
            &st(42, STEP_BATCH, "active"),
            7,
            42,
            &Want::MinMem("5g".into())
        )
        .is_some());
        // Another job's lease, a step's lease, a draining one, another lease id, another profile: no.
        assert!(batch_slice(&st(43, STEP_BATCH, "active"), 7, 42, &p).is_none());
        assert!(batch_slice(&st(42, 0, "active"), 7, 42, &p).is_none());
        assert!(batch_slice(&st(42, STEP_BATCH, "draining"), 7, 42, &p).is_none());
        assert!(batch_slice(&st(42, STEP_BATCH, "active"), 8, 42, &p).is_none());
        assert!(batch_slice(
            &st(42, STEP_BATCH, "active"),
            7,
            42,
            &Want::Profile("3g.40gb".into())
        )
        .is_none());
        assert!(batch_slice("not json", 7, 42, &p).is_none());
    }

    #[test]
    fn steps_are_named_as_migrun_takes_them() {
        assert_eq!(super::step_spec(42, 0).as_deref(), Some("42.0"));
        assert_eq!(
            super::step_spec(42, 0xffff_fffb).as_deref(),
            Some("42.batch")
        );
        assert_eq!(super::step_spec(42, 0xffff_fffc), None);
    }
}
