//! Core acceptance through the `migrun` binary on simulated GPUs: fixture equality with a real H100, profile resolution on every model, bad input, concurrent creation.

use assert_cmd::Command;
use migrun::gpu::sim::models;
use migrun::profile::ProfileSpec;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A file of the real H100 capture, kept in the repository (tests/fixtures/README.md says where it
/// came from) so that a fresh clone compares against it with nothing outside the checkout.
fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/h100-80gb-hbm3")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("fixture {} missing: {e}", p.display()))
}

fn migrun(spec: &str, state: &Path) -> Command {
    let mut c = Command::cargo_bin("migrun").unwrap();
    c.env_remove("MIGRUN_SIMULATE")
        .env_remove("MIGRUN_CONFIG")
        .env("MIGRUN_NVML_LIB", "/nonexistent/libnvidia-ml.so.1")
        .arg("--simulate")
        .arg(spec)
        .arg("--state-dir")
        .arg(state);
    c
}

fn json_of(cmd: &mut Command) -> Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One profile row of `nvidia-smi mig -lgip`, as printed.
#[derive(Debug)]
struct LgipRow {
    name: String,
    id: u64,
    free: u64,
    total: u64,
    mem_gib: String,
    p2p: bool,
    sm: u64,
    dec: u64,
    enc: u64,
    ce: u64,
    jpeg: u64,
    ofa: u64,
}

fn parse_lgip(text: &str) -> Vec<LgipRow> {
    let lines: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with('|') && !l.contains("GPU instance") && !l.contains("Free/Total"))
        .map(|l| l.trim_matches('|').split_whitespace().collect())
        .filter(|v: &Vec<&str>| !v.is_empty() && !v[0].starts_with('='))
        .collect();
    let mut rows = Vec::new();
    let mut i = 0;
    while i + 1 < lines.len() {
        let a = &lines[i];
        if a.len() >= 10 && a[1] == "MIG" {
            let b = &lines[i + 1];
            let (free, total) = a[4].split_once('/').unwrap();
            rows.push(LgipRow {
                name: format!("MIG {}", a[2]),
                id: a[3].parse().unwrap(),
                free: free.parse().unwrap(),
                total: total.parse().unwrap(),
                mem_gib: a[5].to_string(),
                p2p: a[6] == "Yes",
                sm: a[7].parse().unwrap(),
                dec: a[8].parse().unwrap(),
                enc: a[9].parse().unwrap(),
                ce: b[0].parse().unwrap(),
                jpeg: b[1].parse().unwrap(),
                ofa: b[2].parse().unwrap(),
            });
            i += 2;
        } else {
            i += 1;
        }
    }
    rows
}

fn parse_lgipp(text: &str) -> Vec<(u64, Vec<u64>, u64)> {
    text.lines()
        .filter_map(|l| {
            let (head, tail) = l.split_once(": ")?;
            let id = head
                .split("Profile ID")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            let (set, size) = tail.trim().rsplit_once(':')?;
            let starts = set
                .trim_matches(|c| c == '{' || c == '}')
                .split(',')
                .map(|s| s.parse().unwrap())
                .collect();
            Some((id, starts, size.parse().ok()?))
        })
        .collect()
}

#[test]
fn profiles_json_matches_the_real_h100_capture_field_by_field() {
    let t = tempfile::tempdir().unwrap();
    let doc = json_of(migrun("h100-80gb", t.path()).args(["profiles", "--json"]));
    let gpu = &doc["gpus"][0];
    assert_eq!(gpu["name"], "NVIDIA H100 80GB HBM3");
    let ours = gpu["profiles"].as_array().unwrap();

    // nvidia-smi mig -lgip: order, IDs, names, counts, GiB, engines.
    let lgip = parse_lgip(&fixture("nvidia-smi-mig-lgip.txt"));
    assert_eq!(lgip.len(), 7, "fixture parse");
    assert_eq!(ours.len(), lgip.len());
    for (o, r) in ours.iter().zip(&lgip) {
        assert_eq!(o["name"], r.name.as_str());
        assert_eq!(o["id"], r.id, "{}", r.name);
        assert_eq!(o["instances_free"], r.free, "{}", r.name);
        assert_eq!(o["instances_total"], r.total, "{}", r.name);
        let gib = format!("{:.2}", o["memory_mib"].as_f64().unwrap() / 1024.0);
        assert_eq!(gib, r.mem_gib, "{}", r.name);
        assert_eq!(o["p2p"], r.p2p, "{}", r.name);
        for (k, v) in [
            ("sm", r.sm),
            ("dec", r.dec),
            ("enc", r.enc),
            ("ce", r.ce),
            ("jpeg", r.jpeg),
            ("ofa", r.ofa),
        ] {
            assert_eq!(o[k], v, "{} {k}", r.name);
        }
    }

    // The direct NVML reading: exact MiB, slice counts and placements per profile ID.
    let nvml: Value = serde_json::from_str(&fixture("nvml-profiles.json")).unwrap();
    let readable: Vec<&Value> = nvml["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p.get("id").is_some())
        .collect();
    assert_eq!(readable.len(), ours.len());
    for n in readable {
        let o = ours
            .iter()
            .find(|o| o["id"] == n["id"])
            .unwrap_or_else(|| panic!("profile {} missing", n["id"]));
        assert_eq!(o["nvml_index"], n["index"]);
        assert_eq!(o["name"], n["name"]);
        assert_eq!(o["memory_mib"], n["memorySizeMB"]);
        assert_eq!(o["slices"], n["sliceCount"]);
        assert_eq!(o["instances_total"], n["instanceCount"]);
        assert_eq!(o["instances_free"], n["remaining"]);
        assert_eq!(o["sm"], n["multiprocessorCount"]);
        assert_eq!(o["ce"], n["copyEngineCount"]);
        assert_eq!(o["dec"], n["decoderCount"]);
        assert_eq!(o["enc"], n["encoderCount"]);
        assert_eq!(o["jpeg"], n["jpegCount"]);
        assert_eq!(o["ofa"], n["ofaCount"]);
        let placements: Vec<(u64, u64)> = o["placements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap()))
            .collect();
        let want: Vec<(u64, u64)> = n["placements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_u64().unwrap(), p[1].as_u64().unwrap()))
            .collect();
        assert_eq!(placements, want, "{}", n["name"]);
    }
}

#[test]
fn placements_match_the_real_lgipp_capture() {
    let t = tempfile::tempdir().unwrap();
    let out = migrun("h100-80gb", t.path())
        .arg("placements")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let want = fixture("nvidia-smi-mig-lgipp.txt");
    assert_eq!(parse_lgipp(&text), parse_lgipp(&want));
    assert_eq!(parse_lgipp(&want).len(), 7);
    // Same text too, line for line.
    assert_eq!(text.trim_end(), want.trim_end());

    let doc = json_of(migrun("h100-80gb", t.path()).args(["placements", "--json"]));
    let from_json: Vec<(u64, Vec<u64>, u64)> = doc["gpus"][0]["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_u64().unwrap(),
                p["starts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_u64().unwrap())
                    .collect(),
                p["size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(from_json, parse_lgipp(&want));
}

/// Every model of the table: each profile resolves by ID, short name and full name to itself.
#[test]
fn every_model_resolves_every_profile_by_id_and_name() {
    let table: Value = serde_json::from_str(models::PROFILE_TABLE_JSON).unwrap();
    let mut simulated = 0;
    for key in models::model_keys() {
        let Ok(m) = models::model(key) else {
            continue;
        };
        simulated += 1;
        for p in &m.profiles {
            let short = p.short_name().to_string();
            for given in [p.id.to_string(), short.clone(), format!("MIG {short}")] {
                let spec: ProfileSpec = given.parse().unwrap();
                let got =
                    migrun::gpu::names::resolve(&spec, &m.profiles, "GPU 0", m.product).unwrap();
                assert_eq!(got.id, p.id, "{key}: {given}");
            }
        }
    }
    assert_eq!(simulated, 9, "the nine complete models simulate");
    assert!(table["gpus"].as_array().unwrap().len() >= 9);
}

#[test]
fn same_profile_three_ways_on_h100_and_refused_on_a30() {
    let h100 = models::model("h100-80gb").unwrap();
    let ids: Vec<u32> = ["9", "3g.40gb", "MIG 3g.40gb"]
        .iter()
        .map(|s| {
            migrun::gpu::names::resolve(&s.parse().unwrap(), &h100.profiles, "GPU 0", h100.product)
                .unwrap()
                .id
        })
        .collect();
    assert_eq!(ids, vec![9, 9, 9]);

    let t = tempfile::tempdir().unwrap();
    let out = migrun("a30-24gb", t.path())
        .args([
            "sim",
            "create-foreign",
            "--gpu",
            "0",
            "--profile",
            "3g.40gb",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    for name in ["1g.6gb", "2g.12gb", "4g.24gb", "1g.6gb+me", "2g.12gb+me"] {
        assert!(err.contains(name), "{name} not listed: {err}");
    }
    assert!(err.contains("did you mean"), "{err}");
}

fn assert_bad_input(mut cmd: Command, needle: &str) {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{needle}: stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let t = tempfile::tempdir().unwrap();
    let s = t.path().join("s");
    assert_bad_input(
        {
            let mut c = migrun("h100-8gb", &s);
            c.arg("status");
            c
        },
        "unknown GPU model \"h100-8gb\"",
    );
    assert_bad_input(
        {
            let mut c = migrun("h100-80gb:zero", &s);
            c.arg("status");
            c
        },
        "bad --simulate spec",
    );
    assert_bad_input(
        {
            let mut c = migrun("gh200-144gb", &s);
            c.arg("status");
            c
        },
        "no value for",
    );
    assert_bad_input(
        {
            let mut c = migrun("h100-80gb", &s);
            c.args([
                "sim",
                "create-foreign",
                "--gpu",
                "0",
                "--profile",
                "3g.41gb",
            ]);
            c
        },
        "profile 3g.41gb does not exist on GPU 0",
    );
    assert_bad_input(
        {
            let mut c = migrun("h100-80gb", &s);
            c.args(["profiles", "--gpu", "5"]);
            c
        },
        "bad --gpu \"5\"",
    );
    assert_bad_input(
        {
            let mut c = migrun("h100-80gb", &s);
            c.args(["status", "--gpu", "GPU-nope"]);
            c
        },
        "--gpu",
    );
    assert_bad_input(
        {
            // A command that needs the state dir (read-only ones never create it).
            let mut c = migrun("h100-80gb", Path::new("/proc/migrun-state"));
            c.args(["alloc", "--profile", "1g.10gb"]);
            c
        },
        "cannot use state dir /proc/migrun-state",
    );
    // A state dir that simulates another machine is refused, with the way out.
    let s = t.path().join("s2");
    migrun("h100-80gb:2", &s).arg("gc").assert().success();
    assert_bad_input(
        {
            let mut c = migrun("a100-40gb", &s);
            c.arg("status");
            c
        },
        "sim reset",
    );
}

#[test]
fn sim_reset_starts_over() {
    let t = tempfile::tempdir().unwrap();
    let s: PathBuf = t.path().join("s");
    migrun("h100-80gb", &s)
        .args([
            "sim",
            "create-foreign",
            "--gpu",
            "0",
            "--profile",
            "7g.80gb",
        ])
        .assert()
        .success();
    migrun("a100-40gb", &s)
        .args(["sim", "reset"])
        .assert()
        .success();
    let doc = json_of(migrun("a100-40gb", &s).args(["status", "--json"]));
    assert_eq!(doc["gpus"][0]["name"], "NVIDIA A100-SXM4-40GB");
    assert_eq!(doc["gpus"][0]["instances"].as_array().unwrap().len(), 0);
}

#[test]
fn status_shows_instances_and_the_slot_map() {
    let t = tempfile::tempdir().unwrap();
    let s = t.path();
    for p in ["3g.40gb", "1g.10gb", "1g.10gb"] {
        migrun("h100-80gb:2", s)
            .args(["sim", "create-foreign", "--gpu", "0", "--profile", p])
            .assert()
            .success();
    }
    let out = migrun("h100-80gb:2", s).arg("status").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("|3g.40gb        |1g |1g |.. |.. |"), "{text}");
    assert!(text.contains("GPU 1 NVIDIA H100 80GB HBM3"), "{text}");
    let doc = json_of(migrun("h100-80gb:2", s).args(["status", "--json"]));
    let inst = doc["gpus"][0]["instances"].as_array().unwrap();
    assert_eq!(inst.len(), 3);
    assert_eq!(inst[0]["profile"], "3g.40gb");
    assert!(inst[0]["mig_uuid"].as_str().unwrap().starts_with("MIG-"));
    // A MIG-off GPU says how to turn MIG on.
    let t2 = tempfile::tempdir().unwrap();
    let out = migrun("h100-80gb:1:mig-off", t2.path())
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("MIG Disabled"), "{text}");
    assert!(text.contains("migrun mig enable --gpu 0"), "{text}");
}

/// Many processes creating at once on one simulated machine never get overlapping placements.
#[test]
fn concurrent_creators_never_overlap() {
    let t = tempfile::tempdir().unwrap();
    let s = t.path();
    let bin = assert_cmd::cargo::cargo_bin("migrun");
    let children: Vec<_> = (0..12)
        .map(|i| {
            let profile = ["1g.10gb", "2g.20gb", "3g.40gb"][i % 3];
            std::process::Command::new(&bin)
                .env_remove("MIGRUN_CONFIG")
                .args(["--simulate", "h100-80gb:2", "--state-dir"])
                .arg(s)
                .args([
                    "sim",
                    "create-foreign",
                    "--gpu",
                    &(i % 2).to_string(),
                    "--profile",
                    profile,
                ])
                .output()
                .unwrap()
        })
        .collect();
    let ok = children.iter().filter(|o| o.status.success()).count();
    assert!(ok >= 6, "some creations succeed");
    let doc = json_of(migrun("h100-80gb:2", s).args(["status", "--json"]));
    let mut total = 0;
    for g in doc["gpus"].as_array().unwrap() {
        let ranges: Vec<(u64, u64)> = g["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let p = &i["placement"];
                let start = p["start"].as_u64().unwrap();
                (start, start + p["size"].as_u64().unwrap())
            })
            .collect();
        total += ranges.len();
        for (a, ra) in ranges.iter().enumerate() {
            for rb in &ranges[a + 1..] {
                assert!(ra.1 <= rb.0 || rb.1 <= ra.0, "overlap {ra:?} {rb:?}");
            }
        }
    }
    assert_eq!(total, ok, "every success is on the device, nothing else is");
}

#[test]
fn without_a_driver_every_command_fails_fast_and_clearly() {
    for cmd in [["status"], ["profiles"], ["placements"]] {
        let start = std::time::Instant::now();
        let out = Command::cargo_bin("migrun")
            .unwrap()
            .env_remove("MIGRUN_SIMULATE")
            .env_remove("MIGRUN_CONFIG")
            .env("MIGRUN_NVML_LIB", "/nonexistent/libnvidia-ml.so.1")
            .args(cmd)
            .output()
            .unwrap();
        assert!(start.elapsed().as_secs_f64() < 1.0);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains("/nonexistent/libnvidia-ml.so.1"), "{err}");
        assert!(err.contains("install the NVIDIA driver"), "{err}");
        assert!(err.contains("--simulate"), "{err}");
    }
}

/// `profiles --ci` (issue 22): the compute-instance profiles migrun's tables hold for a model, per
/// GPU-instance profile, as `nvidia-smi mig -lcip` lists them for one GPU instance; every
/// GPU-instance profile the tables lack is named unknown, and a model without rows says so. Asking
/// for a compute instance of a listed profile allocates it.
#[test]
fn profiles_ci_lists_the_tables_and_names_what_is_unknown() {
    let t = tempfile::tempdir().unwrap();
    let s = t.path().join("s");
    let doc = json_of(migrun("a100-80gb", &s).args(["profiles", "--ci", "--json"]));
    let g = &doc["gpus"][0];
    assert_eq!(g["name"], "NVIDIA A100-SXM4-80GB");
    let table = |gi: &str| -> Vec<(String, Value, Value)> {
        g["gi_profiles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["gi_profile"] == gi)
            .unwrap_or_else(|| panic!("{gi}: {g}"))["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_string(),
                    r["max_count"].clone(),
                    r["default"].clone(),
                )
            })
            .collect()
    };
    let row = |n: &str, c: u64, d: bool| (n.to_string(), Value::from(c), Value::from(d));
    assert_eq!(
        table("3g.40gb"),
        [
            row("1c.3g.40gb", 3, false),
            row("2c.3g.40gb", 1, false),
            row("3g.40gb", 1, true)
        ]
    );
    assert_eq!(
        table("4g.40gb"),
        [
            row("1c.4g.40gb", 4, false),
            row("2c.4g.40gb", 2, false),
            row("4g.40gb", 1, true)
        ]
    );
    let unknown: Vec<&str> = g["unknown_gi_profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        unknown.contains(&"7g.80gb") && !unknown.contains(&"3g.40gb"),
        "{unknown:?}"
    );

    let out = migrun("h200-141gb", &t.path().join("h200"))
        .args(["profiles", "--ci"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(
            "no compute-instance profiles in migrun's tables for this model yet (unknown)"
        ),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = migrun("a100-80gb", &s)
        .args(["alloc", "--profile", "1c.3g.40gb"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a listed CI profile is allocatable: {err}"
    );
    let status = json_of(migrun("a100-80gb", &s).args(["status", "--json"]));
    assert_eq!(status["leases"][0]["profile"], "1c.3g.40gb", "{status}");
}
