//! `metrics_textfile` read by Debian's real `prometheus-node-exporter` (textfile collector only, on a free
//! loopback port): after grants by two users, a refusal, a release and a gc, its `/metrics` serves the migrun
//! lines, typed, with the values `migrun status --json` and `migrun profiles --json` show at that moment. Fails
//! when node-exporter is missing (scripts/setup-test-host.sh installs it).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const MIGRUN: &str = env!("CARGO_BIN_EXE_migrun");
const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";
const SPEC: &str = "h100-80gb:2";

struct Box_ {
    state: PathBuf,
    config: PathBuf,
}

impl Box_ {
    fn migrun(&self, args: &[&str]) -> Output {
        Command::new(MIGRUN)
            .args(args)
            .env("MIGRUN_SIMULATE", SPEC)
            .env("MIGRUN_STATE_DIR", &self.state)
            .env("MIGRUN_CONFIG", &self.config)
            .env_remove("MIGRUN_TEST_NOW")
            .output()
            .expect("run migrun")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.migrun(args);
        assert!(
            out.status.success(),
            "migrun {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }
}

/// node-exporter on a loopback port chosen free now; killed when dropped.
struct Exporter {
    child: Child,
    port: u16,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_exporter(textfile_dir: &Path, log: &Path) -> Exporter {
    assert!(
        Path::new(NODE_EXPORTER).exists(),
        "{NODE_EXPORTER} is missing: run scripts/setup-test-host.sh (Debian package prometheus-node-exporter)"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(NODE_EXPORTER)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--collector.disable-defaults")
        .arg("--collector.textfile")
        .arg(format!(
            "--collector.textfile.directory={}",
            textfile_dir.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start prometheus-node-exporter");
    let ex = Exporter { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "node-exporter did not listen on 127.0.0.1:{port}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ex
}

/// GET /metrics over plain HTTP/1.0.
fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let (head, body) = body.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_string()
}

/// `name{labels} value` lines of migrun's metrics, labels sorted as `k=v,…`.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with("migrun_"))
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap();
            let (name, labels) = match key.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (key, ""),
            };
            let mut ls: Vec<String> = labels
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|kv| kv.replace('"', ""))
                .collect();
            ls.sort();
            (
                format!("{name}{{{}}}", ls.join(",")),
                value.parse().unwrap(),
            )
        })
        .collect()
}

/// What `status --json` and `profiles --json` say, as the metric lines that must match.
fn expected(b: &Box_) -> BTreeMap<String, f64> {
    let status = b.json(&["status", "--json"]);
    let profiles = b.json(&["profiles", "--json"]);
    let mut want = BTreeMap::new();
    for l in status["leases"].as_array().unwrap() {
        let key = format!(
            "migrun_leases{{gpu={},profile={},state={},uid={}}}",
            l["gpu_index"],
            l["profile"].as_str().unwrap(),
            l["state"].as_str().unwrap(),
            l["uid"]
        );
        *want.entry(key).or_insert(0.0) += 1.0;
    }
    for g in status["gpus"].as_array().unwrap() {
        let used: u64 = g["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["placement"]["size"].as_u64().unwrap())
            .sum();
        let slots = g["slots"].as_u64().unwrap();
        let gpu = &g["index"];
        want.insert(
            format!("migrun_memory_slices{{gpu={gpu},state=used}}"),
            used as f64,
        );
        want.insert(
            format!("migrun_memory_slices{{gpu={gpu},state=free}}"),
            (slots - used) as f64,
        );
    }
    for g in profiles["gpus"].as_array().unwrap() {
        for p in g["profiles"].as_array().unwrap() {
            want.insert(
                format!(
                    "migrun_instances_free{{gpu={},profile={}}}",
                    g["index"],
                    p["short_name"].as_str().unwrap()
                ),
                p["instances_free"].as_f64().unwrap(),
            );
        }
    }
    want
}

fn check(b: &Box_, ex: &Exporter, counters: &[(&str, f64)]) {
    let want = expected(b);
    let text = scrape(ex.port);
    let got = samples(&text);
    for (k, v) in &want {
        assert_eq!(
            got.get(k),
            Some(v),
            "{k} in node-exporter's /metrics:\n{text}"
        );
    }
    // No lease series beyond those status shows.
    for k in got.keys().filter(|k| k.starts_with("migrun_leases{")) {
        assert!(want.contains_key(k), "{k} is not in status --json:\n{text}");
    }
    for (k, v) in counters {
        assert_eq!(got.get(*k), Some(v), "{k}:\n{text}");
    }
    // Typed, not "untyped": node-exporter parsed migrun's HELP/TYPE lines.
    for family in [
        "# TYPE migrun_allocations_total counter",
        "# TYPE migrun_wait_seconds histogram",
        "# TYPE migrun_leases gauge",
        "# TYPE migrun_gc_instances_total counter",
    ] {
        assert!(text.contains(family), "{family}:\n{text}");
    }
    assert!(text.contains("node_textfile_scrape_error 0"), "{text}");
}

#[test]
fn node_exporter_serves_the_textfile_with_the_values_status_shows() {
    let t = tempfile::tempdir().unwrap();
    let textdir = t.path().join("textfile");
    std::fs::create_dir(&textdir).unwrap();
    let config = t.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "metrics_textfile = \"{}\"\nledger = \"{}\"\nmax_leases_per_user = 2\n",
            textdir.join("migrun.prom").display(),
            t.path().join("ledger.jsonl").display()
        ),
    )
    .unwrap();
    let b = Box_ {
        state: t.path().join("state"),
        config,
    };
    b.ok(&["alloc", "--profile", "3g.40gb", "--for-uid", "1001"]);
    b.ok(&["alloc", "--profile", "1g.10gb", "--for-uid", "1001"]);
    b.ok(&["alloc", "--profile", "2g.20gb", "--for-uid", "1002"]);
    // A policy refusal (third lease of uid 1001) and no room (two 7g.80gb on two GPUs that are partly used).
    assert_eq!(
        b.migrun(&["alloc", "--profile", "1g.10gb", "--for-uid", "1001"])
            .status
            .code(),
        Some(2)
    );
    b.ok(&["alloc", "--profile", "7g.80gb", "--for-uid", "1003"]);
    assert_eq!(
        b.migrun(&["alloc", "--profile", "7g.80gb", "--for-uid", "1003"])
            .status
            .code(),
        Some(3)
    );
    // A waiter that gives up after a second: a wait observed, and one more no-room.
    assert_eq!(
        b.migrun(&[
            "alloc",
            "--profile",
            "7g.80gb",
            "--for-uid",
            "1003",
            "--wait=1"
        ])
        .status
        .code(),
        Some(3)
    );
    let usage = b.json(&["usage", "--json"]);
    let row = usage["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "1003")
        .unwrap()
        .clone();
    assert_eq!(
        (row["waits"].as_u64(), row["refused_no_room"].as_u64()),
        (Some(1), Some(2)),
        "{usage}"
    );
    assert_eq!(row["leases"], 1, "{usage}");
    let prom = std::fs::read_to_string(textdir.join("migrun.prom")).unwrap();
    assert!(prom.contains("migrun_leases{"), "{prom}");
    let ex = start_exporter(&textdir, &t.path().join("node-exporter.log"));
    check(
        &b,
        &ex,
        &[
            ("migrun_allocations_total{result=created}", 4.0),
            ("migrun_allocations_total{result=refused_policy}", 1.0),
            ("migrun_allocations_total{result=no_room}", 2.0),
            ("migrun_wait_seconds_count{}", 1.0),
            ("migrun_wait_seconds_bucket{le=+Inf}", 1.0),
        ],
    );
    // Every change rewrites the file: a release, then a lease whose holder dies and gc.
    b.ok(&["release", "1"]);
    let mut holder = Command::new("sleep").arg("1000").spawn().unwrap();
    let pid = holder.id().to_string();
    b.ok(&[
        "alloc",
        "--profile",
        "1g.10gb",
        "--for-uid",
        "1002",
        "--holder-pid",
        &pid,
    ]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    b.ok(&["gc"]);
    check(
        &b,
        &ex,
        &[
            ("migrun_allocations_total{result=created}", 5.0),
            ("migrun_gc_instances_total{action=destroyed}", 1.0),
        ],
    );
    // And `migrun metrics` prints what the textfile holds.
    let printed = b.ok(&["metrics"]);
    let file = std::fs::read_to_string(textdir.join("migrun.prom")).unwrap();
    assert_eq!(printed, file);
}
