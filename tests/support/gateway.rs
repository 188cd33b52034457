//! Real gateways from the examples (nginx and Caddy from Debian, Envoy and
//! Traefik from PyPI, all installed by `scripts/test.sh`) in front of a tiny
//! app: each started on free ports with its files in a temporary directory,
//! known to be up by its own readiness (not a port's luck), its log printed
//! when a test fails, and stopped on drop. A raw HTTP/1.1 client sends
//! request targets byte for byte, as an attacker would.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};

/// The addresses the forward-auth example files are written for.
pub const EXAMPLE_GATEWAY: &str = "127.0.0.1:8000";
pub const EXAMPLE_TOLLGATE: &str = "127.0.0.1:8080";
pub const EXAMPLE_APP: &str = "127.0.0.1:3000";

/// How long a gateway may take to be ready.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// One request the app received: its raw target, the path it routed (see
/// [`route`]), and its headers and body.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub routed: String,
    pub headers: HeaderMap,
    pub body: String,
}

/// The app behind the gateway. It routes as web frameworks do: the path
/// fully percent-decoded, `\` read as `/`, segment parameters dropped, dot
/// segments resolved, slashes merged ([`route`]). `/admin…` answers
/// `admin area`, anything else `hello`. With `echo`, it copies the
/// `X-RateLimit-*` headers it receives onto its answer (what Traefik's
/// README asks of an app).
pub struct App {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A gateway process.
pub struct Gateway {
    pub name: &'static str,
    pub addr: SocketAddr,
    child: Child,
    pub dir: PathBuf,
}

/// An answer, as the raw client read it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Every header, in order, names lowercase.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl App {
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    pub async fn start_echoing() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(echo: bool) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let router = axum::Router::new().fallback({
            let seen = seen.clone();
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| async move {
                let target = uri.to_string();
                let routed = route(&target);
                let answer = if routed.starts_with("/admin") {
                    "admin area"
                } else {
                    "hello"
                };
                let mut echoed = HeaderMap::new();
                // What an LLM API says it used: `?tokens=N` answers
                // `x-tokens-used: N`.
                if let Some(n) = uri
                    .query()
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("tokens=")))
                    && let Ok(value) = n.parse()
                {
                    echoed.insert("x-tokens-used", value);
                }
                if echo {
                    for (name, value) in &headers {
                        if name.as_str().starts_with("x-ratelimit-") {
                            echoed.insert(name.clone(), value.clone());
                        }
                    }
                }
                seen.lock().expect("not poisoned").push(Seen {
                    method: method.to_string(),
                    target,
                    routed,
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
                (echoed, answer)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { addr, seen }
    }

    /// Every request that reached the app.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }

    /// `METHOD target body` of every request that reached the app.
    pub fn lines(&self) -> Vec<String> {
        self.seen()
            .iter()
            .map(|s| format!("{} {} {}", s.method, s.target, s.body))
            .collect()
    }
}

/// The path an app routes `target` to, as permissive frameworks read it:
/// the query dropped, every escape decoded (`%2F` too), `\` as `/`, each
/// segment's `;parameters` dropped, dot segments resolved (never above the
/// root), repeated slashes merged.
pub fn route(target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |j: usize| bytes.get(j).and_then(|b| (*b as char).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                decoded.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment.split(';').next().unwrap_or_default() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

impl Gateway {
    /// nginx with `examples/nginx/{nginx,tollgate}.conf`.
    pub fn nginx(tollgate: SocketAddr, app: SocketAddr) -> Self {
        let nginx = binary("nginx");
        Self::start("nginx", &[], |dir, ports| {
            let conf = forward_auth_example("nginx/nginx.conf", ports[0], tollgate, app);
            std::fs::write(dir.join("nginx.conf"), conf).expect("write");
            std::fs::copy(
                example_path("nginx/tollgate.conf"),
                dir.join("tollgate.conf"),
            )
            .expect("copy");
            let mut c = Command::new(&nginx);
            c.arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .args(["-e", "stderr", "-g", "daemon off;"]);
            c
        })
    }

    /// Caddy with `examples/caddy/Caddyfile`; its state stays in the
    /// temporary directory.
    pub fn caddy(tollgate: SocketAddr, app: SocketAddr) -> Self {
        let caddy = binary("caddy");
        Self::start("caddy", &[], |dir, ports| {
            let file = dir.join("Caddyfile");
            let text = forward_auth_example("caddy/Caddyfile", ports[0], tollgate, app);
            std::fs::write(&file, text).expect("write");
            let mut c = Command::new(&caddy);
            c.args(["run", "--adapter", "caddyfile", "--config"])
                .arg(&file)
                .env("HOME", dir)
                .env("XDG_CONFIG_HOME", dir.join("config"))
                .env("XDG_DATA_HOME", dir.join("data"));
            c
        })
    }

    /// Traefik with `examples/traefik/{traefik,dynamic}.yaml`, run from the
    /// temporary directory (the file provider's path is relative to it).
    pub fn traefik(tollgate: SocketAddr, app: SocketAddr) -> Self {
        let traefik = binary("traefik");
        Self::start("traefik", &["ping"], |dir, ports| {
            let static_file = swapped(
                "traefik/traefik.yaml",
                &[(EXAMPLE_GATEWAY, ports[0]), ("127.0.0.1:8082", ports[1])],
            );
            std::fs::write(dir.join("traefik.yaml"), static_file).expect("write");
            let dynamic = swapped(
                "traefik/dynamic.yaml",
                &[(EXAMPLE_TOLLGATE, tollgate), (EXAMPLE_APP, app)],
            );
            std::fs::write(dir.join("dynamic.yaml"), dynamic).expect("write");
            let mut c = Command::new(&traefik);
            c.arg("--configFile=traefik.yaml").current_dir(dir);
            c
        })
    }

    /// Envoy with `examples/envoy/envoy.yaml`: tollgate's gRPC at
    /// `tollgate`, the upstream at `app`.
    pub fn envoy(tollgate: SocketAddr, app: SocketAddr) -> Self {
        Self::envoy_with("envoy/envoy.yaml", tollgate, app)
    }

    /// Envoy with the example configuration `file` (under `examples/`).
    pub fn envoy_with(file: &str, tollgate: SocketAddr, app: SocketAddr) -> Self {
        let envoy = binary("envoy");
        Self::start("envoy", &["admin"], |dir, ports| {
            let mut text = std::fs::read_to_string(example_path(file)).expect("example");
            for (from, to) in [
                ("address: 0.0.0.0, port_value: 10000", ports[0]),
                ("address: 127.0.0.1, port_value: 8081", tollgate),
                ("address: 127.0.0.1, port_value: 8080", app),
                ("address: 127.0.0.1, port_value: 9901", ports[1]),
            ] {
                assert!(text.contains(from), "envoy.yaml no longer says {from}");
                let to = format!("address: {}, port_value: {}", to.ip(), to.port());
                text = text.replace(from, &to);
            }
            std::fs::write(dir.join("envoy.yaml"), text).expect("write");
            let mut c = Command::new(&envoy);
            c.arg("-c")
                .arg(dir.join("envoy.yaml"))
                // Several Envoys at once: no shared memory between them.
                .args([
                    "--disable-hot-restart",
                    "--concurrency",
                    "1",
                    "-l",
                    "warning",
                ]);
            c
        })
    }

    /// Starts `command(dir, ports)` with `ports[0]` for clients and one more
    /// free port per name of `extra`, until it is ready (see
    /// [`Gateway::ready`]); ports taken in between are retried on others.
    fn start(
        name: &'static str,
        extra: &[&str],
        command: impl Fn(&Path, &[SocketAddr]) -> Command,
    ) -> Self {
        for attempt in 0..5 {
            let dir = std::env::temp_dir().join(format!(
                "tollgate-{name}-{}-{attempt}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_nanos()
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let ports: Vec<SocketAddr> = (0..=extra.len()).map(|_| free_port()).collect();
            let log = dir.join("gateway.log");
            let file = File::create(&log).expect("log file");
            let child = command(&dir, &ports)
                .stdout(file.try_clone().expect("log file"))
                .stderr(file)
                .spawn()
                .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
            let mut gateway = Self {
                name,
                addr: ports[0],
                child,
                dir,
            };
            let deadline = Instant::now() + READY_WITHIN;
            loop {
                if gateway.ready(&ports) {
                    return gateway;
                }
                if gateway.child.try_wait().expect("wait").is_some() {
                    let text = gateway.log();
                    if text.contains("in use") {
                        break; // Another port.
                    }
                    panic!("{name} exited before it was ready on {}:\n{text}", ports[0]);
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} was not ready on {} within {READY_WITHIN:?}:\n{}",
                    ports[0],
                    gateway.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("{name}: no free port in 5 attempts");
    }

    /// The gateway's own word that it serves: Envoy's admin `/ready`;
    /// Traefik's router answering (it listens before its file provider has
    /// loaded the routes, with 404s); nginx and Caddy answering any HTTP at
    /// all (they load their whole configuration before they listen).
    fn ready(&self, ports: &[SocketAddr]) -> bool {
        let probe = |addr: SocketAddr, target: &str| {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
            raw_exchange(&mut stream, "GET", target, &[], "").ok()
        };
        match self.name {
            "envoy" => probe(ports[1], "/ready").is_some_and(|r| r.status == 200),
            "traefik" => probe(ports[0], "/").is_some_and(|r| r.status != 404),
            _ => probe(ports[0], "/").is_some(),
        }
    }

    /// What the gateway logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    /// `GET target` with `headers`, the target sent byte for byte.
    pub fn get(&self, target: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", target, headers, "")
    }

    /// One request, the target sent byte for byte; the connection closed
    /// after the answer.
    pub fn send(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut stream = TcpStream::connect(self.addr)
            .unwrap_or_else(|e| panic!("{} at {}: {e}\n{}", self.name, self.addr, self.log()));
        raw_exchange(&mut stream, method, target, headers, body)
            .unwrap_or_else(|e| panic!("{} {method} {target}: {e}\n{}", self.name, self.log()))
    }
}

/// A failed test never leaves its gateway running, and shows its log.
/// SIGTERM, not SIGKILL: nginx's workers outlive a killed master.
impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {} log ({}) ---\n{}",
                self.name,
                self.dir.display(),
                self.log()
            );
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Reply {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// Writes one HTTP/1.1 request as given and reads the answer to its end.
fn raw_exchange(
    stream: &mut TcpStream,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Reply> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let host = stream.peer_addr()?;
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_reply(&raw).ok_or_else(|| {
        std::io::Error::other(format!(
            "not an HTTP answer: {:?}",
            String::from_utf8_lossy(&raw)
        ))
    })
}

fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Some(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = rest.windows(2).position(|w| w == b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..line]).ok()?.trim(), 16).ok()?;
        rest = &rest[line + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// `examples/<name>`.
pub fn example_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// The forward-auth example file `name` with its addresses replaced by the
/// test's.
pub fn forward_auth_example(
    name: &str,
    gateway: SocketAddr,
    tollgate: SocketAddr,
    app: SocketAddr,
) -> String {
    swapped(
        name,
        &[
            (EXAMPLE_GATEWAY, gateway),
            (EXAMPLE_TOLLGATE, tollgate),
            (EXAMPLE_APP, app),
        ],
    )
}

/// The example file `name` with each address `from` replaced by `to`.
pub fn swapped(name: &str, swaps: &[(&str, SocketAddr)]) -> String {
    let mut text = std::fs::read_to_string(example_path(name)).expect("example exists");
    for (from, to) in swaps {
        assert!(text.contains(from), "{name} no longer mentions {from}");
        text = text.replace(from, &to.to_string());
    }
    text
}

/// The installed `name`: in `$TOLLGATE_TOOLS` (the virtual environment
/// `scripts/test.sh` installs Envoy and Traefik into), on PATH, or in an
/// sbin directory (nginx is in /usr/sbin, off a non-root PATH). Missing is a
/// failure, not a skip.
pub fn binary(name: &str) -> PathBuf {
    let tools = std::env::var_os("TOLLGATE_TOOLS").map(PathBuf::from);
    let path = std::env::var_os("PATH").unwrap_or_default();
    tools
        .into_iter()
        .chain(std::env::split_paths(&path))
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed (looked in $TOLLGATE_TOOLS, on PATH and in /usr/sbin): \
                 run scripts/test.sh, which installs it"
            )
        })
}

/// A port free a moment ago.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}
