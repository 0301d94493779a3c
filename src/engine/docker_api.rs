//! Reads one container's state from the docker daemon's HTTP API over its unix socket; it must never create, start,
//! stop or remove anything, and never decide on its own that a container is gone.
//!
//! Why: the launcher has to learn, after `docker run` returns, whether the container still runs (a detach, a
//! killed CLI). Asking the CLI (`docker inspect`) starts a Go program that loads its config and contexts: 22–26 ms
//! on the benchmark machine, most of what the launcher added to a `docker run` (docs/benchmarks.md). One GET on the
//! daemon's socket costs about a millisecond.
//!
//! The socket is only *where the CLI would probably connect*: a docker context, an `--docker` wrapper or a podman
//! shim can point the CLI elsewhere. So a socket is trusted for a container only after it has *seen* that
//! container's full id while the CLI ran it ([`DaemonLink::confirm`]); ids are 256-bit random, so a daemon that
//! knows the id is the daemon that holds the container. Until then the caller asks the CLI, as before.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The socket docker's CLI uses when nothing (DOCKER_HOST, a context) says otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// How long one API request may take before the caller falls back to the CLI.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Most bytes read from one response (an inspect answer is a few KiB).
const MAX_RESPONSE: u64 = 8 << 20;

/// Why an API request gave no answer; every case sends the caller back to the CLI.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{id:?} is not a container id or name the API path can carry")]
    BadId { id: String },
    #[error("cannot talk to {}: {source}", socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} answered something that is not HTTP: {reason}", socket.display())]
    NotHttp { socket: PathBuf, reason: String },
    #[error("{} answered HTTP {status}: {message}", socket.display())]
    Status {
        socket: PathBuf,
        status: u16,
        message: String,
    },
}

/// What the daemon said about one container.
#[derive(Debug, Clone, PartialEq)]
pub enum Inspect {
    /// The daemon knows it; its `.State` object.
    State(serde_json::Value),
    /// The daemon answered 404 "No such container".
    NoSuchContainer,
}

/// The unix socket the docker CLI connects to, when migrun can read it off the environment for certain:
/// `host` (DOCKER_HOST) = `unix:///abs/path`, or no DOCKER_HOST, no DOCKER_CONTEXT and no current context in the
/// CLI's config file, which means the default socket. `None` for anything else (tcp, ssh, a named context, a config
/// file migrun cannot read): the caller asks the CLI.
pub fn socket_for(host: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let host = host
        .map(str::to_string)
        .or_else(|| env("DOCKER_HOST").filter(|h| !h.is_empty()));
    if let Some(h) = host {
        let path = h.strip_prefix("unix://")?;
        return Path::new(path).is_absolute().then(|| PathBuf::from(path));
    }
    if env("DOCKER_CONTEXT").is_some_and(|c| !c.is_empty() && c != "default") {
        return None;
    }
    let config_dir = env("DOCKER_CONFIG")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".docker")))?;
    match std::fs::read(config_dir.join("config.json")) {
        Ok(bytes) => {
            let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
            match v.get("currentContext") {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::String(c)) if c.is_empty() || c == "default" => {}
                Some(_) => return None,
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(_) => return None,
    }
    Some(PathBuf::from(DEFAULT_SOCKET))
}

/// Container ids and names only: what the API path can carry without escaping.
fn valid_ref(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `GET /containers/<id>/json` on `socket`.
pub fn inspect(socket: &Path, id: &str, timeout: Duration) -> Result<Inspect, ApiError> {
    if !valid_ref(id) {
        return Err(ApiError::BadId { id: id.into() });
    }
    let io = |source| ApiError::Io {
        socket: socket.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    // HTTP/1.0: the daemon then sends the body whole (no chunked encoding) and closes the connection after it.
    let request =
        format!("GET /containers/{id}/json HTTP/1.0\r\nHost: docker\r\nUser-Agent: migrun\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(io)?;
    parse_response(socket, &raw)
}

/// Turn a whole HTTP/1.0 response into an [`Inspect`].
fn parse_response(socket: &Path, raw: &[u8]) -> Result<Inspect, ApiError> {
    let not_http = |reason: String| ApiError::NotHttp {
        socket: socket.to_path_buf(),
        reason,
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let body_at = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(not_http("the response ended early".into())),
        Err(e) => return Err(not_http(e.to_string())),
    };
    let chunked = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && !String::from_utf8_lossy(h.value).eq_ignore_ascii_case("identity")
    });
    if chunked {
        return Err(not_http(
            "a transfer-encoded body to an HTTP/1.0 request".into(),
        ));
    }
    let status = resp.code.unwrap_or(0);
    let body: serde_json::Value = serde_json::from_slice(&raw[body_at..])
        .map_err(|e| not_http(format!("the body is not JSON: {e}")))?;
    let message = || {
        body.get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("")
            .to_string()
    };
    match status {
        200 => body
            .get("State")
            .filter(|s| s.is_object())
            .cloned()
            .map(Inspect::State)
            .ok_or_else(|| not_http("a 200 answer without a State object".into())),
        // Only docker's own wording counts as "gone": a 404 from anything else (a proxy, another API) does not.
        404 if message().to_ascii_lowercase().contains("no such container") => {
            Ok(Inspect::NoSuchContainer)
        }
        _ => Err(ApiError::Status {
            socket: socket.to_path_buf(),
            status,
            message: message(),
        }),
    }
}

/// The launcher's line to the daemon: a socket that is trusted for one container once it has seen it.
#[derive(Debug, Clone, Default)]
pub struct DaemonLink {
    socket: Option<PathBuf>,
    confirmed: Option<String>,
}

impl DaemonLink {
    /// The socket the CLI would use (see [`socket_for`]); `host` is the CLI's DOCKER_HOST.
    pub fn new(host: Option<&str>) -> DaemonLink {
        DaemonLink {
            socket: socket_for(host, &|k| std::env::var(k).ok()),
            confirmed: None,
        }
    }

    /// A link over a given socket (tests, and callers that already know it).
    pub fn with_socket(socket: Option<PathBuf>) -> DaemonLink {
        DaemonLink {
            socket,
            confirmed: None,
        }
    }

    /// While the CLI runs container `id`: does the socket's daemon know it? Only then is the socket trusted for it.
    pub fn confirm(&mut self, id: &str) -> bool {
        let Some(socket) = &self.socket else {
            return false;
        };
        match inspect(socket, id, TIMEOUT) {
            Ok(Inspect::State(_)) => {
                self.confirmed = Some(id.to_string());
                true
            }
            Ok(Inspect::NoSuchContainer) => false,
            Err(e) => {
                tracing::debug!("docker API not usable for container {id}: {e}");
                false
            }
        }
    }

    /// Is the confirmed container alive? `None` when the socket was never confirmed for `id` or gave no answer: the
    /// caller then asks the CLI.
    pub fn alive(&self, id: &str, rule: impl Fn(&serde_json::Value) -> bool) -> Option<bool> {
        if self.confirmed.as_deref() != Some(id) {
            return None;
        }
        match inspect(self.socket.as_deref()?, id, TIMEOUT) {
            Ok(Inspect::State(state)) => Some(rule(&state)),
            Ok(Inspect::NoSuchContainer) => Some(false),
            Err(e) => {
                tracing::debug!("docker API gave no answer for container {id}: {e}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::net::UnixListener;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn the_socket_is_read_off_the_environment_only_when_certain() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().display().to_string();
        let cfgdir = dir.path().join(".docker");
        std::fs::create_dir_all(&cfgdir).unwrap();
        let default = Some(PathBuf::from(DEFAULT_SOCKET));
        /// (CLI host, environment, config.json, expected socket)
        type Row<'a> = (
            Option<&'a str>,
            &'a [(&'a str, &'a str)],
            Option<&'a str>,
            Option<PathBuf>,
        );
        let table: &[Row] = &[
            (None, &[("HOME", &home)], None, default.clone()),
            (
                Some("unix:///run/d.sock"),
                &[],
                None,
                Some("/run/d.sock".into()),
            ),
            (
                None,
                &[("DOCKER_HOST", "unix:///x/y.sock")],
                None,
                Some("/x/y.sock".into()),
            ),
            (Some("tcp://10.0.0.1:2376"), &[], None, None),
            (Some("ssh://me@host"), &[], None, None),
            (Some("unix://relative.sock"), &[], None, None),
            (
                None,
                &[("HOME", &home), ("DOCKER_CONTEXT", "remote")],
                None,
                None,
            ),
            (
                None,
                &[("HOME", &home), ("DOCKER_CONTEXT", "default")],
                None,
                default.clone(),
            ),
            (
                None,
                &[("HOME", &home)],
                Some(r#"{"currentContext":"remote"}"#),
                None,
            ),
            (
                None,
                &[("HOME", &home)],
                Some(r#"{"currentContext":"default"}"#),
                default.clone(),
            ),
            (
                None,
                &[("HOME", &home)],
                Some(r#"{"auths":{}}"#),
                default.clone(),
            ),
            (None, &[("HOME", &home)], Some("not json"), None),
            (None, &[], None, None),
        ];
        for (host, env, config, want) in table {
            match config {
                Some(c) => std::fs::write(cfgdir.join("config.json"), c).unwrap(),
                None => {
                    let _ = std::fs::remove_file(cfgdir.join("config.json"));
                }
            }
            let got = socket_for(*host, &env_of(env));
            assert_eq!(&got, want, "host {host:?} env {env:?} config {config:?}");
        }
        // DOCKER_CONFIG wins over HOME.
        let other = dir.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("config.json"), r#"{"currentContext":"x"}"#).unwrap();
        let env = env_of(&[("HOME", &home), ("DOCKER_CONFIG", other.to_str().unwrap())]);
        assert_eq!(socket_for(None, &env), None);
    }

    /// A one-shot server on a unix socket that answers every request with `answer`.
    fn serve(
        answer: &'static str,
    ) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("d.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer.as_bytes()).unwrap();
            String::from_utf8(req).unwrap()
        });
        (dir, sock, h)
    }

    #[test]
    fn inspect_reads_state_404_and_refuses_the_rest() {
        let (_d, sock, h) = serve(
            "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"Id\":\"abc\",\"State\":{\"Status\":\"running\",\"Error\":\"\"}}",
        );
        let got = inspect(&sock, "abc123", TIMEOUT).unwrap();
        assert_eq!(
            got,
            Inspect::State(serde_json::json!({"Status": "running", "Error": ""}))
        );
        let req = h.join().unwrap();
        assert!(
            req.starts_with("GET /containers/abc123/json HTTP/1.0\r\n"),
            "{req}"
        );

        let (_d, sock, h) =
            serve("HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"No such container: abc123\"}");
        assert_eq!(
            inspect(&sock, "abc123", TIMEOUT).unwrap(),
            Inspect::NoSuchContainer
        );
        h.join().unwrap();

        // A 404 that is not docker's "no such container" is no answer, not "gone".
        let (_d, sock, h) = serve("HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"page not found\"}");
        assert!(matches!(
            inspect(&sock, "abc123", TIMEOUT),
            Err(ApiError::Status { status: 404, .. })
        ));
        h.join().unwrap();

        let (_d, sock, h) = serve("HTTP/1.0 500 Oops\r\n\r\n{\"message\":\"daemon broke\"}");
        let e = inspect(&sock, "abc123", TIMEOUT).unwrap_err();
        assert!(e.to_string().contains("HTTP 500: daemon broke"), "{e}");
        h.join().unwrap();

        let (_d, sock, h) = serve("SSH-2.0-OpenSSH\r\n");
        assert!(matches!(
            inspect(&sock, "abc123", TIMEOUT),
            Err(ApiError::NotHttp { .. })
        ));
        h.join().unwrap();

        let (_d, sock, h) =
            serve("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}\r\n0\r\n\r\n");
        assert!(matches!(
            inspect(&sock, "abc123", TIMEOUT),
            Err(ApiError::NotHttp { .. })
        ));
        h.join().unwrap();
    }

    #[test]
    fn odd_ids_and_missing_sockets_are_errors_not_answers() {
        let dir = tempfile::tempdir().unwrap();
        let none = dir.path().join("none.sock");
        for id in ["", "a/b", "a b", "../x", "a?b", &"x".repeat(129)] {
            assert!(
                matches!(inspect(&none, id, TIMEOUT), Err(ApiError::BadId { .. })),
                "{id:?}"
            );
        }
        assert!(matches!(
            inspect(&none, "abc", TIMEOUT),
            Err(ApiError::Io { .. })
        ));
    }

    #[test]
    fn a_socket_is_trusted_only_for_a_container_it_has_seen() {
        // Never confirmed: no answer, whatever the daemon would say.
        let link = DaemonLink::with_socket(Some("/nonexistent/d.sock".into()));
        assert_eq!(link.alive("abc", |_| true), None);

        // A daemon that does not know the container while the CLI runs it is not the CLI's daemon.
        let (_d, sock, h) =
            serve("HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"No such container: abc\"}");
        let mut link = DaemonLink::with_socket(Some(sock));
        assert!(!link.confirm("abc"));
        h.join().unwrap();
        assert_eq!(link.alive("abc", |_| true), None);

        // Seen once: its later answers count, for that container only.
        let (_d, sock, h) = serve("HTTP/1.0 200 OK\r\n\r\n{\"State\":{\"Status\":\"running\"}}");
        let mut link = DaemonLink::with_socket(Some(sock.clone()));
        assert!(link.confirm("abc"));
        h.join().unwrap();
        assert_eq!(link.alive("other", |_| true), None);
        drop(_d);
        let (_d2, sock2, h) =
            serve("HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"No such container: abc\"}");
        link.socket = Some(sock2);
        assert_eq!(link.alive("abc", |_| true), Some(false));
        h.join().unwrap();
        // A socket that stopped answering: no answer (the caller asks the CLI), never "gone".
        link.socket = Some(sock);
        assert_eq!(link.alive("abc", |_| true), None);
    }
}
