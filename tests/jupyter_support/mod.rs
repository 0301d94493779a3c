//! Helpers for tests/jupyter.rs: the Debian Jupyter image (scripts/jupyter-image.sh) in a private
//! dockerd, a real JupyterHub (Debian's 3.0 with DockerSpawner pinned from PyPI by
//! scripts/jupyterhub-env.sh, integrations/jupyterhub/migrun_spawner.py as its spawner) on ports chosen
//! free at run time, and a small HTTP/1.0 client for the hub's REST API and event streams. Engines and
//! the simulated GPU come from tests/common and tests/hooks_common; nothing here touches migrun's state.
#![allow(dead_code)]

use crate::common::engines::{self, free_tcp_port, run_ok, PrivateDockerd};
use crate::hooks_common::{migrun_bin, Sim};
use serde_json::Value;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Polls `f` every 200 ms until it returns true; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The packaged daemon.json runtime entry, with the path pointed at this test's shim.
pub fn daemon_config(shim: &Path) -> Value {
    let p = repo().join("packaging/docker/daemon.json");
    let mut v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    v["runtimes"]["migrun"]["path"] = Value::String(shim.display().to_string());
    v
}

/// The Jupyter image in `docker`: built (or taken from the machine's cache) and imported by
/// scripts/jupyter-image.sh. Fails the test when the build fails.
pub fn jupyter_image(docker: &PrivateDockerd) -> String {
    let out = engines::run_output(
        Command::new("bash")
            .arg(repo().join("scripts/jupyter-image.sh"))
            .arg("import")
            .env("DOCKER", engines::docker_cli())
            .env("DOCKER_HOST", docker.host())
            .env("DOCKER_CONFIG", docker.dir().join("cli-config"))
            .env_remove("IMAGE"),
    );
    assert!(
        out.status.success(),
        "scripts/jupyter-image.sh import failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The IPv4 address of the private dockerd's bridge on the host (the containers' gateway).
pub fn bridge_ip(docker: &PrivateDockerd) -> String {
    let out = run_ok(Command::new(engines::require("ip")).args([
        "-o",
        "-4",
        "addr",
        "show",
        "dev",
        docker.bridge(),
    ]));
    let inet = out
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no IPv4 address on {}: {out}", docker.bridge()));
    inet.split('/').next().unwrap().to_string()
}

/// One HTTP/1.0 request; returns (status, body). `Connection: close`, so an event stream is read to
/// its end.
pub fn http(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, String) {
    try_http(host, port, method, path, token, body)
        .unwrap_or_else(|e| panic!("{method} http://{host}:{port}{path}: {e}"))
}

pub fn try_http(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> std::io::Result<(u16, String)> {
    let auth = token
        .map(|t| format!("Authorization: token {t}\r\n"))
        .unwrap_or_default();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (status, _, body) = raw_http(host, port, method, path, &auth, "application/json", &body)?;
    Ok((status, body))
}

/// One HTTP/1.0 request with extra header lines (each ending in CRLF); returns (status, headers, body).
pub fn raw_http(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    headers: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect((host, port))?;
    s.set_read_timeout(Some(Duration::from_secs(240)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {host}:{port}\r\n{headers}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((status, head.to_string(), body.to_string()))
}

/// Debian's own bins only: the proxy script runs `env node`, and Debian's configurable-http-proxy
/// needs a node that finds Debian's modules (see NODE_PATH below), not one in /usr/local.
/// DummyAuthenticator's one password (users log in only for the spawn page).
const HUB_PASSWORD: &str = "migrun-test-password";

const DEBIAN_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// A running JupyterHub with MigrunSpawner on `docker`, the GPUs of `sim`, a service token with the
/// admin role and DummyAuthenticator. Stopped (SIGTERM: the hub stops every server, then its proxy)
/// on drop.
pub struct Hub {
    pub dir: tempfile::TempDir,
    pub ip: String,
    pub port: u16,
    pub token: String,
    child: Option<Child>,
}

impl Hub {
    pub fn start(docker: &PrivateDockerd, sim: &Sim, image: &str) -> Hub {
        let python = hub_python();
        let dir = tempfile::tempdir().expect("tempdir");
        let ip = bridge_ip(docker);
        let (port, public, api) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
        let token = format!("{:032x}", rand_u128());
        let cfg = format!(
            r#"# written by tests/jupyter_support/mod.rs
import sys
sys.path.insert(0, {integration:?})
c.JupyterHub.spawner_class = "migrun_spawner.MigrunSpawner"
c.JupyterHub.bind_url = "http://127.0.0.1:{public}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api}"
c.ConfigurableHTTPProxy.command = ["configurable-http-proxy"]
c.JupyterHub.hub_bind_url = "http://{ip}:{port}"
c.JupyterHub.hub_connect_url = "http://{ip}:{port}"
c.JupyterHub.db_url = "sqlite:///{db}"
c.JupyterHub.cookie_secret_file = {secret:?}
c.JupyterHub.pid_file = {pid:?}
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = "{HUB_PASSWORD}"
c.Authenticator.allowed_users = {{"alice", "bob", "carol", "bench"}}
c.JupyterHub.services = [{{"name": "migrun-test", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [{{"name": "admin", "services": ["migrun-test"]}}]
# The spawn request returns at once; its outcome is read from the progress stream.
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
c.DockerSpawner.image = {image:?}
c.DockerSpawner.pull_policy = "never"
c.DockerSpawner.cmd = ["jupyterhub-singleuser"]
c.DockerSpawner.use_internal_ip = True
c.DockerSpawner.network_name = "bridge"
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 180
c.MigrunSpawner.migrun = {migrun:?}
# The hub's users have no system accounts: the uids their slices are charged to, and a per-user limit
# that migrun checks when the hub allocates (`migrun alloc --for-uid ... --handover`).
c.MigrunSpawner.user_uids = {{"alice": 3001, "bob": 3002, "carol": 3003, "bench": 3004}}
c.MigrunSpawner.migrun_env = {{"MIGRUN_CONFIG": {migrun_config:?}}}
"#,
            integration = repo().join("integrations/jupyterhub").display().to_string(),
            db = dir.path().join("jupyterhub.sqlite").display(),
            secret = dir.path().join("cookie_secret").display().to_string(),
            pid = dir.path().join("jupyterhub.pid").display().to_string(),
            migrun = migrun_bin().display().to_string(),
            migrun_config = dir.path().join("migrun.toml").display().to_string(),
        );
        fs::write(dir.path().join("migrun.toml"), "max_leases_per_user = 1\n").unwrap();
        let cfg_path = dir.path().join("jupyterhub_config.py");
        fs::write(&cfg_path, cfg).unwrap();
        let log = fs::File::create(dir.path().join("hub.log")).unwrap();
        let child = Command::new(&python)
            .args(["-m", "jupyterhub", "-f"])
            .arg(&cfg_path)
            .current_dir(dir.path())
            .envs(sim.env())
            .env("DOCKER_HOST", docker.host())
            .env("PATH", DEBIAN_PATH)
            // Debian's node searches /usr/share/nodejs by itself; a node that replaced it (NodeSource's
            // nodejs package, as on some hosts) does not, and the proxy then misses its modules.
            .env("NODE_PATH", "/usr/share/nodejs")
            // Importing migrun_spawner from the checkout must not leave __pycache__ in it.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {python:?} -m jupyterhub: {e}"));
        let mut hub = Hub {
            dir,
            ip,
            port,
            token,
            child: Some(child),
        };
        let t0 = Instant::now();
        loop {
            if let Ok((200, _)) = try_http(&hub.ip, hub.port, "GET", "/hub/api/", None, None) {
                break;
            }
            let exited = hub.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && t0.elapsed() < Duration::from_secs(90),
                "the hub did not answer within 90 s ({exited:?})\n{}",
                hub.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        hub
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("hub.log")).unwrap_or_default()
    }

    /// A REST call with the admin service token: (status, JSON body or Null).
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (st, b) = http(
            &self.ip,
            self.port,
            method,
            &format!("/hub/api{path}"),
            Some(&self.token),
            body,
        );
        (st, serde_json::from_str(&b).unwrap_or(Value::Null))
    }

    pub fn add_user(&self, name: &str) {
        let (st, _) = self.api("POST", &format!("/users/{name}"), None);
        assert!(
            st == 201 || st == 409,
            "create user {name}: {st}\n{}",
            self.log()
        );
    }

    /// Logs `name` in through the login form (DummyAuthenticator's password); returns the cookies
    /// the hub set, for the HTML pages (which take no API token).
    pub fn login(&self, name: &str) -> String {
        let (st, head, body) = raw_http(
            &self.ip,
            self.port,
            "POST",
            "/hub/login",
            "",
            "application/x-www-form-urlencoded",
            &format!("username={name}&password={HUB_PASSWORD}"),
        )
        .unwrap();
        assert_eq!(st, 302, "login {name}: {head}\n{body}\n{}", self.log());
        let cookies: Vec<&str> = head
            .lines()
            .filter_map(|l| l.strip_prefix("Set-Cookie: "))
            .filter_map(|c| c.split(';').next())
            .collect();
        assert!(!cookies.is_empty(), "login {name} set no cookie: {head}");
        cookies.join("; ")
    }

    /// Asks for `name`'s server with these user options; returns the request's status.
    pub fn request_spawn(&self, name: &str, options: &Value) -> u16 {
        self.api("POST", &format!("/users/{name}/server"), Some(options))
            .0
    }

    /// The events of `name`'s spawn progress stream, read until the hub ends it (ready or failed).
    /// None when the spawn had already ended before the stream was asked for: JupyterHub 3.0 then
    /// answers 400 "not starting" (its progress handler replaces a failed spawner).
    pub fn progress(&self, name: &str) -> Option<Vec<Value>> {
        let (st, body) = http(
            &self.ip,
            self.port,
            "GET",
            &format!("/hub/api/users/{name}/server/progress"),
            Some(&self.token),
            None,
        );
        if st == 400 && body.contains("is not starting") {
            return None;
        }
        assert_eq!(st, 200, "progress of {name}: {body}\n{}", self.log());
        Some(
            body.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str(d.trim()).ok())
                .collect(),
        )
    }

    /// Spawns and waits for the outcome: Ok(()) when ready, Err(the failure message of the progress
    /// stream) otherwise.
    pub fn spawn(&self, name: &str, options: &Value) -> Result<(), String> {
        let st = self.request_spawn(name, options);
        assert!(st == 201 || st == 202, "spawn {name}: {st}\n{}", self.log());
        let events = self.progress(name).unwrap_or_else(|| {
            panic!(
                "{name}'s spawn ended before its progress was read\n{}",
                self.log()
            )
        });
        let last = events.last().cloned().unwrap_or(Value::Null);
        if last["ready"] == true {
            Ok(())
        } else if last["failed"] == true {
            Err(last["message"].as_str().unwrap_or_default().to_string())
        } else {
            panic!(
                "{name}'s progress ended with neither ready nor failed: {events:?}\n{}",
                self.log()
            )
        }
    }

    /// A spawn refused before it reached docker (bad user options): such a spawn can end before its
    /// progress stream is read, so the reason is taken from the stream when it has one, else from the
    /// hub's log line `Unhandled error starting <name>'s server: <reason>`.
    pub fn spawn_refused(&self, name: &str, options: &Value) -> String {
        let st = self.request_spawn(name, options);
        assert!(st == 201 || st == 202, "spawn {name}: {st}\n{}", self.log());
        if let Some(events) = self.progress(name) {
            let last = events.last().cloned().unwrap_or(Value::Null);
            assert_eq!(last["failed"], true, "{name}: {events:?}");
            return last["message"].as_str().unwrap_or_default().to_string();
        }
        let prefix = format!("Unhandled error starting {name}'s server: ");
        let log = self.log();
        let line = log
            .lines()
            .rev()
            .find_map(|l| l.split_once(prefix.as_str()).map(|(_, r)| r.to_string()));
        line.unwrap_or_else(|| panic!("no failure of {name}'s spawn in the hub's log:\n{log}"))
    }

    /// Stops `name`'s server through the API and waits until the hub says it is gone.
    pub fn stop_server(&self, name: &str) {
        let (st, v) = self.api("DELETE", &format!("/users/{name}/server"), None);
        assert!(
            st == 202 || st == 204,
            "stop {name}: {st} {v}\n{}",
            self.log()
        );
        wait_for(
            &format!("{name}'s server to stop"),
            Duration::from_secs(60),
            || {
                let (_, u) = self.api("GET", &format!("/users/{name}"), None);
                u["servers"]
                    .as_object()
                    .map(|s| s.is_empty())
                    .unwrap_or(true)
            },
        );
    }

    /// The spawn form's HTML as `name` sees it (GET /hub/spawn/<name> with `name`'s login cookies).
    pub fn spawn_page(&self, name: &str, cookies: &str) -> String {
        let (st, head, body) = raw_http(
            &self.ip,
            self.port,
            "GET",
            &format!("/hub/spawn/{name}"),
            &format!("Cookie: {cookies}\r\n"),
            "text/plain",
            "",
        )
        .unwrap();
        assert_eq!(
            st,
            200,
            "spawn page of {name}: {head}\n{body}\n{}",
            self.log()
        );
        body
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The venv python with DockerSpawner (scripts/jupyterhub-env.sh builds or reuses it).
pub fn hub_python() -> PathBuf {
    engines::require("configurable-http-proxy");
    let out =
        engines::run_output(Command::new("bash").arg(repo().join("scripts/jupyterhub-env.sh")));
    assert!(
        out.status.success(),
        "scripts/jupyterhub-env.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn rand_u128() -> u128 {
    let mut b = [0u8; 16];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    u128::from_le_bytes(b)
}

/// `docker inspect` of a container by name: its full id, or None when there is no such container.
pub fn container_id(docker: &PrivateDockerd, name: &str) -> Option<String> {
    let out = engines::run_output(
        docker
            .docker_cmd()
            .args(["inspect", "--format", "{{.Id}}", name]),
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The env of a container's init process (what the runtime gave it, not docker's stored env).
pub fn init_env(docker: &PrivateDockerd, name: &str) -> Vec<String> {
    run_ok(
        docker
            .docker_cmd()
            .args(["exec", name, "sh", "-c", "tr '\\0' '\\n' < /proc/1/environ"]),
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// `migrun profiles --json` on `sim`: short name → free instances, summed over the GPUs.
pub fn free_counts(sim: &Sim) -> Vec<(String, u64)> {
    let out = run_ok(sim.migrun().args(["profiles", "--json"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut counts: Vec<(String, u64)> = Vec::new();
    for gpu in v["gpus"].as_array().unwrap() {
        for p in gpu["profiles"].as_array().unwrap() {
            let name = p["short_name"].as_str().unwrap().to_string();
            let free = p["instances_free"].as_u64().unwrap();
            match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, f)) => *f += free,
                None => counts.push((name, free)),
            }
        }
    }
    counts
}

/// The (value, data-free) pairs of the spawn form's profile options.
pub fn form_counts(html: &str) -> Vec<(String, u64)> {
    html.split("<option ")
        .skip(1)
        .filter_map(|o| {
            let value = o.split("value=\"").nth(1)?.split('"').next()?.to_string();
            let free = o
                .split("data-free=\"")
                .nth(1)?
                .split('"')
                .next()?
                .parse()
                .ok()?;
            Some((value, free))
        })
        .collect()
}
