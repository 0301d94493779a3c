//! The usage ledger against real migrun processes on the simulator: 200 random sequences of grants, releases,
//! holders killed with SIGKILL, migrun itself killed mid-allocation and mid-release (the debug-build crash
//! points) and gc runs. After each, `migrun usage --json` must report, per user, exactly the slice-seconds
//! (lease seconds times memory slices) the sequence itself implies, to the second. The clock is the debug-only
//! `MIGRUN_TEST_NOW`, so "to the second" is checkable. A failure prints the seed that reproduces it
//! (`MIGRUN_LEDGER_SEED=<seed> cargo test --test usage_ledger`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

const MIGRUN: &str = env!("CARGO_BIN_EXE_migrun");
const SEQUENCES: u64 = 200;
const STEPS: usize = 9;
const SPEC: &str = "h100-80gb:2";
const PROFILES: &[&str] = &[
    "1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb",
];
const UIDS: &[u32] = &[1001, 1002, 1003];
const ALLOC_CRASH: &[&str] = &[
    "after-create-gi",
    "after-record-created",
    "after-write-lease",
];
const RELEASE_CRASH: &[&str] = &[
    "release-after-mark-draining",
    "release-after-destroy-gi",
    "release-after-remove-record",
];

/// splitmix64: small, seedable, enough to pick steps.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// What the model knows of one lease.
struct Model {
    uid: u32,
    slices: u64,
    granted: u64,
    end: Option<u64>,
    holder: Option<Child>,
    /// Its holder was killed; the next sweep (an allocation or gc) ends it.
    dead: bool,
}

struct Machine {
    dir: PathBuf,
    config: PathBuf,
    now: u64,
    log: Vec<String>,
}

impl Machine {
    fn migrun(&self, args: &[&str], crash: Option<&str>) -> Output {
        let mut c = Command::new(MIGRUN);
        c.args(args)
            .env("MIGRUN_SIMULATE", SPEC)
            .env("MIGRUN_STATE_DIR", self.dir.join("state"))
            .env("MIGRUN_CONFIG", &self.config)
            .env("MIGRUN_TEST_NOW", self.now.to_string())
            .env_remove("MIGRUN_TEST_CRASH_AT")
            .env_remove("MIGRUN_TEST_FAIL");
        if let Some(step) = crash {
            c.env("MIGRUN_TEST_CRASH_AT", step);
        }
        let t = std::time::Instant::now();
        let out = c.output().expect("run migrun");
        if std::env::var_os("MIGRUN_LEDGER_TRACE").is_some() {
            eprintln!(
                "{:>6} ms  migrun {args:?} crash {crash:?}",
                t.elapsed().as_millis()
            );
        }
        out
    }

    fn lease_ids(&self) -> Vec<u64> {
        let out = self.migrun(&["status", "--json"], None);
        assert!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["leases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["id"].as_u64().unwrap())
            .collect()
    }
}

/// A holder process; its output goes nowhere (an inherited pipe would keep the test's reader waiting).
fn sleeper() -> Child {
    Command::new("sleep")
        .arg("100000")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn sleep")
}

/// The slice memory sizes of the simulated model's profiles, from `migrun profiles --json` (the hardware table).
fn slices_of(m: &Machine) -> BTreeMap<String, u64> {
    let out = m.migrun(&["profiles", "--json", "--gpu", "0"], None);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["gpus"][0]["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let size = p["placements"][0]["size"].as_u64().unwrap();
            (p["short_name"].as_str().unwrap().to_string(), size)
        })
        .collect()
}

/// End the leases whose holder was killed: a sweep (any allocation, or gc) at the current time does.
fn sweep(leases: &mut BTreeMap<u64, Model>, now: u64) {
    for l in leases.values_mut() {
        if l.dead && l.end.is_none() {
            l.end = Some(now);
        }
    }
}

fn expected(leases: &BTreeMap<u64, Model>, from: u64, to: u64) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for l in leases.values() {
        let start = l.granted.max(from);
        let end = l.end.unwrap_or(to).min(to);
        if end < start || l.granted > to {
            continue;
        }
        let e = out.entry(l.uid.to_string()).or_default();
        e.0 += l.slices * (end - start);
        e.1 += 1;
    }
    out
}

fn reported(m: &Machine, since: Option<u64>) -> (BTreeMap<String, (u64, u64)>, u64) {
    let since_arg = since.map(|s| format!("{s}s"));
    let mut args = vec!["usage", "--json", "--by", "user"];
    if let Some(s) = &since_arg {
        args.extend(["--since", s]);
    }
    let out = m.migrun(&args, None);
    assert!(
        out.status.success(),
        "usage: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let mut refused = 0;
    let mut map = BTreeMap::new();
    for r in rows {
        refused += r["refused_no_room"].as_u64().unwrap();
        if r["leases"].as_u64().unwrap() > 0 {
            map.insert(
                r["key"].as_str().unwrap().to_string(),
                (
                    r["slice_seconds"].as_u64().unwrap(),
                    r["leases"].as_u64().unwrap(),
                ),
            );
        }
    }
    assert_eq!(v["skipped_lines"], 0, "no torn line");
    (map, refused)
}

/// One sequence; `Ok(true)` when its ledger was rotated at least once.
fn run_sequence(seed: u64, base: &Path, slices: &BTreeMap<String, u64>) -> Result<bool, String> {
    let mut rng = Rng(seed);
    let dir = base.join(format!("seq-{seed}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    // A small rotation size, so sequences cross rotations and `usage` must read the rotated files.
    std::fs::write(
        &config,
        format!(
            "ledger = \"{}\"\nledger_rotate_bytes = 1024\nledger_keep = 100\n",
            dir.join("ledger/ledger.jsonl").display()
        ),
    )
    .unwrap();
    let mut m = Machine {
        dir: dir.clone(),
        config,
        now: 1_700_000_000 + rng.below(1_000_000),
        log: Vec::new(),
    };
    let mut leases: BTreeMap<u64, Model> = BTreeMap::new();
    let mut refusals = 0u64;
    for _ in 0..STEPS {
        m.now += rng.below(5000);
        let open: Vec<u64> = leases
            .iter()
            .filter(|(_, l)| l.end.is_none() && !l.dead)
            .map(|(id, _)| *id)
            .collect();
        let op = rng.below(10);
        match op {
            // grant (a process holder or a manual lease), possibly killed at a crash point
            0..=4 => {
                let profile = *rng.pick(PROFILES);
                let uid = *rng.pick(UIDS);
                let holder = (rng.below(2) == 0).then(sleeper);
                let crash = (rng.below(5) == 0).then(|| *rng.pick(ALLOC_CRASH));
                let uid_s = uid.to_string();
                let pid_s = holder.as_ref().map(|c| c.id().to_string());
                let mut args = vec!["alloc", "--profile", profile, "--for-uid", &uid_s];
                if let Some(p) = &pid_s {
                    args.extend(["--holder-pid", p]);
                }
                let out = m.migrun(&args, crash);
                sweep(&mut leases, m.now);
                m.log.push(format!(
                    "t={} alloc {profile} uid {uid} crash {crash:?}: {:?}",
                    m.now, out.status
                ));
                let code = out.status.code();
                // Granted: `MIG-… lease N`. Killed: whatever lease the status shows that the model does not
                // know (ids are never reused) is the one it recorded before dying.
                let new: Vec<u64> = if code == Some(0) {
                    let text = String::from_utf8_lossy(&out.stdout);
                    text.split_whitespace()
                        .last()
                        .and_then(|n| n.parse().ok())
                        .into_iter()
                        .collect()
                } else if code.is_none() {
                    m.lease_ids()
                        .into_iter()
                        .filter(|id| !leases.contains_key(id))
                        .collect()
                } else {
                    Vec::new()
                };
                match (code, new.as_slice()) {
                    (Some(0), [id]) | (None, [id]) => {
                        leases.insert(
                            *id,
                            Model {
                                uid,
                                slices: slices[profile],
                                granted: m.now,
                                end: None,
                                holder,
                                dead: false,
                            },
                        );
                    }
                    (Some(3), []) | (None, []) => {
                        refusals += u64::from(code == Some(3));
                        if let Some(mut c) = holder {
                            let _ = c.kill();
                            let _ = c.wait();
                        }
                    }
                    _ => {
                        return Err(format!(
                            "alloc exited {code:?} with new leases {new:?}: {}",
                            String::from_utf8_lossy(&out.stderr)
                        ))
                    }
                }
            }
            // release, possibly killed half-way (its end is written before the record changes)
            5 | 6 if !open.is_empty() => {
                let id = *rng.pick(&open);
                let crash = (rng.below(3) == 0).then(|| *rng.pick(RELEASE_CRASH));
                let out = m.migrun(&["release", &id.to_string()], crash);
                m.log.push(format!(
                    "t={} release {id} crash {crash:?}: {:?}",
                    m.now, out.status
                ));
                if crash.is_none() && !out.status.success() {
                    return Err(format!(
                        "release {id}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                leases.get_mut(&id).unwrap().end = Some(m.now);
            }
            // kill -9 a holder process
            7 | 8 => {
                let with_holder: Vec<u64> = open
                    .iter()
                    .copied()
                    .filter(|id| leases[id].holder.is_some())
                    .collect();
                if let Some(&id) = with_holder.first() {
                    let l = leases.get_mut(&id).unwrap();
                    let mut c = l.holder.take().unwrap();
                    c.kill().unwrap();
                    c.wait().unwrap();
                    l.dead = true;
                    m.log.push(format!("t={} kill -9 holder of {id}", m.now));
                }
            }
            _ => {
                let out = m.migrun(&["gc"], None);
                m.log.push(format!("t={} gc: {:?}", m.now, out.status));
                if !out.status.success() {
                    return Err(format!("gc: {}", String::from_utf8_lossy(&out.stderr)));
                }
                sweep(&mut leases, m.now);
            }
        }
    }
    m.now += rng.below(5000);
    let (got, got_refusals) = reported(&m, None);
    let want = expected(&leases, 0, m.now);
    let since = rng.below(20_000) + 1;
    let (got_window, _) = reported(&m, Some(since));
    let want_window = expected(&leases, m.now - since, m.now);
    for l in leases.values_mut() {
        if let Some(mut c) = l.holder.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    if got != want || got_window != want_window || got_refusals != refusals {
        return Err(format!(
            "usage per uid (slice-seconds, leases): got {got:?}, expected {want:?}; last {since} s: got {got_window:?}, expected {want_window:?}; refusals got {got_refusals}, expected {refusals}\n{}",
            m.log.join("\n")
        ));
    }
    let rotated = dir.join("ledger/ledger.jsonl.1").exists();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rotated)
}

#[test]
fn usage_equals_the_slice_seconds_of_random_sequences() {
    let base = tempfile::tempdir().unwrap();
    let seeds: Vec<u64> = match std::env::var("MIGRUN_LEDGER_SEED") {
        Ok(s) => vec![s.parse().expect("MIGRUN_LEDGER_SEED is a number")],
        Err(_) => {
            let start = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            (0..SEQUENCES)
                .map(|i| start.wrapping_mul(1000) + i)
                .collect()
        }
    };
    let single = seeds.len() == 1;
    // The profiles' memory slices, from the hardware table of the simulated model (once: it is the same machine).
    let slices = slices_of(&Machine {
        dir: base.path().join("profiles"),
        config: PathBuf::from("/dev/null"),
        now: 0,
        log: Vec::new(),
    });
    let mut rotated = 0;
    for seed in seeds {
        match run_sequence(seed, base.path(), &slices) {
            Ok(r) => rotated += usize::from(r),
            Err(e) => panic!(
                "sequence with seed {seed} (rerun: MIGRUN_LEDGER_SEED={seed} cargo test --test usage_ledger): {e}"
            ),
        }
    }
    // The rotated files were read too: some sequences crossed a rotation.
    assert!(single || rotated > 0, "no sequence rotated its ledger");
}
