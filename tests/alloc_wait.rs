//! `--wait`: first come, first served through the ticket queue; dead waiters are skipped; a dead
//! holder makes room for a waiter; the live progress line on a terminal.

mod alloc_support;

use alloc_support::{check_invariants, parse_alloc_line, Sim};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn spawn(sim: &Sim, args: &[&str]) -> Child {
    sim.cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait until `n` tickets are in the queue.
fn await_tickets(sim: &Sim, n: usize) {
    let t = Instant::now();
    loop {
        let count = std::fs::read_dir(sim.state_dir().join("queue"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0);
        if count == n {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{n} tickets never appeared (have {count})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn first_come_first_served() {
    let sim = Sim::new("h100-80gb");
    let (_, small) = sim.alloc(&["--profile", "1g.10gb"]);
    // A waits for the whole GPU.
    let a = spawn(&sim, &["alloc", "--profile", "7g.80gb", "--wait=30"]);
    await_tickets(&sim, 1);
    // B arrives later; there is room for its 1g.10gb, but A is first in line.
    let b = sim.run(&["alloc", "--profile", "1g.10gb", "--wait=1"]);
    let err = String::from_utf8_lossy(&b.stderr);
    assert_eq!(b.status.code(), Some(3), "{err}");
    assert!(
        err.contains("gave up after waiting 0:01: 1 request(s) are still ahead"),
        "{err}"
    );
    // Without --wait, a newcomer is refused at once while someone waits.
    let c = sim.run(&["alloc", "--profile", "1g.10gb"]);
    assert_eq!(c.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&c.stderr).contains("waiting ahead of this one"));
    // The release makes room for A.
    sim.ok(&["release", &small.to_string()]);
    let out = a.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_alloc_line(&String::from_utf8_lossy(&out.stdout));
    check_invariants(&sim.status(), true);
    await_tickets(&sim, 0);
}

#[test]
fn dead_waiters_are_skipped() {
    let sim = Sim::new("h100-80gb");
    let (_, big) = sim.alloc(&["--profile", "7g.80gb"]);
    let mut dead = spawn(&sim, &["alloc", "--profile", "3g.40gb", "--wait=30"]);
    await_tickets(&sim, 1);
    dead.kill().unwrap(); // SIGKILL: its ticket stays behind
    dead.wait().unwrap();
    sim.ok(&["release", &big.to_string()]);
    // Not stuck behind the dead ticket.
    sim.alloc(&["--profile", "1g.10gb"]);
    await_tickets(&sim, 0);
}

#[test]
fn a_dead_holder_makes_room_for_a_waiter() {
    let sim = Sim::new("h100-80gb");
    let mut holder = std::process::Command::new("sleep")
        .arg("1")
        .spawn()
        .unwrap();
    sim.alloc(&[
        "--profile",
        "7g.80gb",
        "--holder-pid",
        &holder.id().to_string(),
    ]);
    let t = Instant::now();
    let out = sim.run(&["alloc", "--profile", "7g.80gb", "--wait=20"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "it had to wait for the holder"
    );
    holder.wait().unwrap();
    check_invariants(&sim.status(), true);
}

#[test]
fn progress_line_on_a_terminal() {
    let sim = Sim::new("h100-80gb");
    sim.alloc(&["--profile", "7g.80gb"]);
    // `script` gives the command a pseudo-terminal, as an interactive user would have.
    let cmdline = format!("{} alloc --profile 3g.40gb --wait=2", alloc_support::BIN);
    let out = std::process::Command::new("script")
        .args(["-qec", &cmdline, "/dev/null"])
        .env("MIGRUN_STATE_DIR", sim.state_dir())
        .env("MIGRUN_SIMULATE", &sim.spec)
        .env("MIGRUN_CONFIG", sim.config_path())
        .output()
        .expect("`script` (Debian package bsdutils, see scripts/setup-test-host.sh) runs the command on a pty");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("waiting for 3g.40gb: 0 ahead, 0:0"),
        "{text:?}"
    );
    assert!(text.contains("no room for 3g.40gb"), "{text:?}");
    assert!(text.contains("waited 0:02"), "{text:?}");
}

/// A waiter holds back only the GPU it waits on (issue: one waiter used to block every start on the
/// host), and a stopped waiter (^Z, SIGSTOP) holds nothing until it runs again.
#[test]
fn a_waiter_holds_back_one_gpu_and_a_stopped_one_nothing() {
    let sim = Sim::new("h100-80gb:2");
    let (_, a) = sim.alloc(&["--profile", "1g.10gb", "--gpu", "0"]);
    let (_, b) = sim.alloc(&["--profile", "1g.10gb", "--gpu", "1"]);
    let waiter = spawn(&sim, &["alloc", "--profile", "7g.80gb", "--wait=60"]);
    await_tickets(&sim, 1);
    // It holds GPU 0 (the lowest of two equally close): a 1g.10gb goes to GPU 1 at once.
    let text = sim.ok(&["alloc", "--profile", "1g.10gb", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["gpu"], 1, "{text}");
    // GPU 0 itself is the waiter's.
    let o = sim.run(&["alloc", "--profile", "1g.10gb", "--gpu", "0"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 request(s) are waiting ahead"));
    // Stopped, it holds nothing.
    let pid = nix::unistd::Pid::from_raw(waiter.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let t = Instant::now();
    while !std::fs::read_to_string(format!("/proc/{}/stat", waiter.id()))
        .unwrap()
        .contains(") T ")
    {
        assert!(t.elapsed() < Duration::from_secs(5), "never stopped");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (_, c) = sim.alloc(&["--profile", "1g.10gb", "--gpu", "0"]);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    // Once GPU 0 is empty the waiter gets it.
    for l in [a, c] {
        sim.ok(&["release", &l.to_string()]);
    }
    let out = waiter.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sim.ok(&["release", &b.to_string()]);
    check_invariants(&sim.status(), true);
    await_tickets(&sim, 0);
}
