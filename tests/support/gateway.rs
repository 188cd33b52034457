//! Real gateways (nginx, Caddy) from the examples, in front of a tiny app:
//! each started on a free port with its files in a temporary directory, and
//! killed on drop.
#![allow(dead_code)]

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{Method, Uri};

/// The addresses the example files are written for.
pub const EXAMPLE_GATEWAY: &str = "127.0.0.1:8000";
pub const EXAMPLE_TOLLGATE: &str = "127.0.0.1:8080";
pub const EXAMPLE_APP: &str = "127.0.0.1:3000";

/// The app behind the gateway: answers 200 `hello` and remembers what it
/// was asked.
pub struct App {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

/// A gateway process.
pub struct Gateway {
    pub addr: SocketAddr,
    child: Child,
    pub dir: PathBuf,
}

impl App {
    pub async fn start() -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let router = axum::Router::new().fallback({
            let seen = seen.clone();
            move |method: Method, uri: Uri, body: Bytes| async move {
                let line = format!("{method} {uri} {}", String::from_utf8_lossy(&body));
                seen.lock().expect("not poisoned").push(line);
                "hello"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { addr, seen }
    }

    /// `METHOD uri body` of every request that reached the app.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("not poisoned").clone()
    }
}

impl Gateway {
    /// nginx with `examples/nginx/{nginx,tollgate}.conf`.
    pub fn nginx(tollgate: SocketAddr, app: SocketAddr) -> Self {
        let nginx = binary("nginx");
        Self::start("nginx", |dir, addr| {
            let conf = example("nginx/nginx.conf", addr, tollgate, app);
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
        Self::start("caddy", |dir, addr| {
            let file = dir.join("Caddyfile");
            std::fs::write(&file, example("caddy/Caddyfile", addr, tollgate, app)).expect("write");
            let mut c = Command::new(&caddy);
            c.args(["run", "--adapter", "caddyfile", "--config"])
                .arg(&file)
                .env("HOME", dir)
                .env("XDG_CONFIG_HOME", dir.join("config"))
                .env("XDG_DATA_HOME", dir.join("data"));
            c
        })
    }

    /// Starts `command(dir, addr)` on a free port until it listens; a port
    /// taken in between is retried on another.
    fn start(name: &str, command: impl Fn(&Path, SocketAddr) -> Command) -> Self {
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
            let addr = free_port();
            let log = dir.join("gateway.log");
            let child = command(&dir, addr)
                .stdout(Stdio::null())
                .stderr(File::create(&log).expect("log file"))
                .spawn()
                .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
            let mut gateway = Self { addr, child, dir };
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if TcpStream::connect(addr).is_ok() {
                    return gateway;
                }
                if gateway.child.try_wait().expect("wait").is_some() {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if text.contains("in use") {
                        break; // Another port.
                    }
                    panic!("{name} exited before listening on {addr}:\n{text}");
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} did not listen on {addr} within 15 s:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("{name}: no free port in 5 attempts");
    }

    /// What the gateway logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }
}

/// A failed test never leaves its gateway running. SIGTERM, not SIGKILL:
/// nginx's workers outlive a killed master.
impl Drop for Gateway {
    fn drop(&mut self) {
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

/// `examples/<name>`.
pub fn example_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// The example file `name` with its addresses replaced by the test's.
pub fn example(name: &str, gateway: SocketAddr, tollgate: SocketAddr, app: SocketAddr) -> String {
    let mut text = std::fs::read_to_string(example_path(name)).expect("example exists");
    for (from, to) in [
        (EXAMPLE_GATEWAY, gateway),
        (EXAMPLE_TOLLGATE, tollgate),
        (EXAMPLE_APP, app),
    ] {
        assert!(text.contains(from), "{name} no longer mentions {from}");
        text = text.replace(from, &to.to_string());
    }
    text
}

/// The installed `name`: on PATH, or in an sbin directory (nginx is in
/// /usr/sbin, off a non-root PATH). Missing is a failure, not a skip.
pub fn binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed (looked on PATH and in /usr/sbin): \
                 run scripts/test.sh, which installs it (Debian package {name})"
            )
        })
}

/// A port free a moment ago.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}
