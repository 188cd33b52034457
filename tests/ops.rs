//! What an operator reads: startup errors in plain words, each cause said
//! once and before any port is bound; log lines an outage does not flood;
//! and the reference's environment variables, each read by the real binary.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::process::{BIN, temp_dir};
use support::{ADMIN_TOKEN, authed};
use tollgate::proto::tollgate::v1 as pb;

/// The environment variables the binary reads, cleared so that the
/// machine's own never leak into a test.
const READ: &[&str] = &[
    "GRPC_HOST",
    "GRPC_PORT",
    "HOST",
    "PORT",
    "LOG_FORMAT",
    "PROMETHEUS_ADDR",
    "REDIS_URL",
    "REDIS_TIMEOUT",
    "RUNTIME_ROOT",
    "RUNTIME_SUBDIRECTORY",
    "RUNTIME_APPDIRECTORY",
    "TOLLGATE_ADMIN_TOKEN",
    "RUST_LOG",
];

fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(BIN);
    for var in READ {
        c.env_remove(var);
    }
    c.args(args).envs(env.iter().copied());
    c
}

/// A state file of its own for each server.
fn state(name: &str) -> String {
    temp_dir("ops")
        .join(format!("{name}.redb"))
        .display()
        .to_string()
}

/// Runs `tollgate args` to its end (it must fail fast): exit code, stderr.
fn fails(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut child = command(args, env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tollgate starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tollgate {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A server whose log lines are kept.
struct Logged {
    child: Child,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Logged {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = command(args, env)
            .stderr(Stdio::piped())
            .spawn()
            .expect("tollgate starts");
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!(
                    "tollgate exited before listening:\n{}",
                    log.lock().expect("log").join("\n")
                );
            };
            log.lock().expect("log").push(line.clone());
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest
                    .split(|c: char| c.is_whitespace() || c == '"')
                    .next()
                    .expect("address")
                    .to_owned();
            }
        };
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().expect("log").push(line);
            }
        });
        Self { child, addr, log }
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    fn until(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| f(l)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line {what}:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

const CONFIG: &str = "plans: { free: { limits: [ { rate: 100/minute } ] } }\n";

// === Startup errors ===

#[test]
fn a_second_serve_on_the_same_state_file_names_the_lock() {
    let state = state("locked");
    let _first = Logged::start(
        &["serve", "--listen", "127.0.0.1:0", "--state", &state],
        &[],
    );
    let (code, err) = fails(
        &["serve", "--listen", "127.0.0.1:0", "--state", &state],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("another tollgate holds {state}; pass --state")),
        "{err}"
    );
    assert!(!err.contains("listening on"), "{err}");
}

#[test]
fn errors_say_their_cause_once() {
    let (code, err) = fails(
        &[
            "serve",
            "--config",
            "/nonexistent/tollgate.yaml",
            "--state",
            &state("cause"),
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(
        err.contains("/nonexistent/tollgate.yaml: cannot read: No such file"),
        "{err}"
    );
}

#[test]
fn a_bad_store_url_is_refused_in_plain_words_before_listening() {
    let (code, err) = fails(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "redis://host:notaport",
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--store: cannot parse redis://host:notaport as redis://"),
        "{err}"
    );
    assert!(!err.contains("InvalidClientConfig"), "{err}");
    assert!(!err.contains("listening on"), "{err}");
}

#[test]
fn an_empty_admin_token_file_is_refused() {
    let dir = temp_dir("ops-token");
    let token = write(&dir, "token", "  \n");
    let (code, err) = fails(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state",
            &state("token"),
            "--admin-token-file",
            &token,
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("the admin token file {token} is empty")),
        "{err}"
    );
    assert!(!err.contains("listening on"), "{err}");
}

#[test]
fn too_few_counters_are_refused_not_rounded_up() {
    let (code, err) = fails(&["serve", "--max-counters", "0"], &[]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("at least 1024"), "{err}");
    let (code, err) = fails(&["serve", "--max-memory", "1KiB"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--max-memory: at least"), "{err}");
}

#[test]
fn check_says_cycles_depth_and_counts_in_plain_words() {
    let dir = temp_dir("ops-check");
    let self_cycle = write(
        &dir,
        "cycle.yaml",
        "plans:\n  a:\n    extends: a\n    limits: [ { rate: 1/minute } ]\n",
    );
    let (code, err) = fails(&["check", &self_cycle], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("a plan cannot extend itself: a -> a"), "{err}");
    let cycle = write(
        &dir,
        "cycle2.yaml",
        "plans:\n  a:\n    extends: b\n    limits: [ { rate: 1/minute } ]\n  b:\n    extends: a\n    limits: [ { rate: 2/minute } ]\n",
    );
    let (_, err) = fails(&["check", &cycle], &[]);
    assert!(
        err.contains("in a cycle: a -> b -> a") || err.contains("in a cycle: b -> a -> b"),
        "{err}"
    );

    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).expect("rules");
    let mut deep = String::from("domain: d\ndescriptors:\n");
    for depth in 0..70 {
        let pad = "  ".repeat(2 * depth);
        deep.push_str(&format!("{pad}- key: k{depth}\n{pad}  descriptors:\n"));
    }
    write(&rules, "deep.yaml", &deep);
    let (code, err) = fails(&["check", &rules.display().to_string()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nested too deeply"), "{err}");
    assert!(!err.contains("Depth {"), "{err}");

    let one = write(&dir, "one.yaml", CONFIG);
    let out = command(&["check", &one], &[]).output().expect("check");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("ok (1 plan, 0 classes)"), "{out}");
}

// === Log lines ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_closed_warns_once_an_interval_not_once_a_call() {
    // Nothing listens there: every decision fails.
    let url = format!("redis://127.0.0.1:{}", free_port());
    let s = Logged::start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &url,
            "--store-timeout",
            "50ms",
            "--store-failure",
            "closed",
        ],
        &[],
    );
    let mut c = pb::rate_limiter_client::RateLimiterClient::connect(format!("http://{}", s.addr))
        .await
        .expect("connect");
    for _ in 0..30 {
        let err = c
            .consume(pb::LimitRequest {
                subject: "k".into(),
                ..Default::default()
            })
            .await
            .expect_err("no store");
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }
    s.until("of the outage", |l| l.contains("counter store unavailable"));
    let warned = s
        .lines()
        .into_iter()
        .filter(|l| {
            l.contains("WARN") && l.contains("failed a decision")
                || l.contains("counter store unavailable")
        })
        .count();
    // One, or two if the calls straddled an interval's end.
    assert!((1..=2).contains(&warned), "{}", s.lines().join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_log_lines_write_times_and_changes_in_words() {
    let dir = temp_dir("ops-admin");
    let config = write(&dir, "tollgate.yaml", CONFIG);
    let s = Logged::start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state",
            &state("admin"),
            "--config",
            &config,
        ],
        &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    let mut admin = pb::admin_client::AdminClient::connect(format!("http://{}", s.addr))
        .await
        .expect("connect");
    admin
        .set_override(authed(pb::Override {
            account: "acct".into(),
            limit: "requests/minute".into(),
            amount: 1000,
            // 2030-01-01T00:00:00Z
            expires_at: Some(prost_types::Timestamp {
                seconds: 1_893_456_000,
                nanos: 0,
            }),
            reason: "trial".into(),
            ..Default::default()
        }))
        .await
        .expect("set override");
    let line = s.until("of the override", |l| l.contains("override set"));
    assert!(line.contains("change=amount 1000"), "{line}");
    assert!(line.contains("expires_at=2030-01-01T00:00:00Z"), "{line}");
    assert!(
        !line.contains("Some(") && !line.contains("Amount("),
        "{line}"
    );
}

// === The reference's environment variables ===

#[test]
fn grpc_host_and_grpc_port_make_the_listen_address() {
    let port = free_port().to_string();
    let s = Logged::start(
        &["serve", "--state", &state("grpc")],
        &[("GRPC_HOST", "127.0.0.1"), ("GRPC_PORT", &port)],
    );
    assert_eq!(s.addr, format!("127.0.0.1:{port}"));
}

#[test]
fn log_format_reads_json() {
    let s = Logged::start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state",
            &state("json"),
        ],
        &[("LOG_FORMAT", "json")],
    );
    let line = s.until("listening", |l| l.contains("listening on"));
    assert!(line.starts_with('{'), "{line}");
}

#[test]
fn prometheus_addr_serves_metrics() {
    let s = Logged::start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state",
            &state("prom"),
        ],
        &[("PROMETHEUS_ADDR", "127.0.0.1:0")],
    );
    s.until("of metrics", |l| l.contains("metrics on http://127.0.0.1:"));
}

#[test]
fn redis_url_and_redis_timeout_choose_the_store() {
    // The reference's REDIS_URL is a bare host:port. Nothing need listen:
    // tollgate connects lazily.
    let hostport = format!("127.0.0.1:{}", free_port());
    let s = Logged::start(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("REDIS_URL", &hostport), ("REDIS_TIMEOUT", "250ms")],
    );
    let line = s.until("of redis", |l| l.contains("counting in redis"));
    assert!(
        line.contains(&format!("store=redis://{hostport}")),
        "{line}"
    );
    assert!(line.contains("timeout=250ms"), "{line}");
}

#[test]
fn runtime_root_finds_the_rule_directory() {
    let root = temp_dir("ops-runtime");
    let rules = root.join("ratelimit").join("config");
    std::fs::create_dir_all(&rules).expect("rules");
    write(
        &rules,
        "rules.yaml",
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: minute, requests_per_unit: 1 }\n",
    );
    let root = root.display().to_string();
    let s = Logged::start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state",
            &state("runtime"),
        ],
        &[
            ("RUNTIME_ROOT", &root),
            ("RUNTIME_SUBDIRECTORY", "ratelimit"),
        ],
    );
    let line = s.until("listening", |l| l.contains("listening on"));
    assert!(
        line.contains(&format!("envoy.config={root}/ratelimit/config")),
        "{line}"
    );
}

#[test]
fn serve_help_says_what_each_flag_does() {
    let out = command(&["serve", "--help"], &[]).output().expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    for said in [
        "rediss+cluster://",
        "Unused with --store",
        "RUST_LOG",
        "at least 1024",
        "/v1/forward-auth",
        "HOST:PORT",
    ] {
        assert!(help.contains(said), "{said:?} missing from:\n{help}");
    }
    assert!(!help.contains("[<ENVOY_"), "{help}");
    // A switch, taking no value.
    assert!(
        help.lines().any(|l| l.trim() == "--envoy-shadow-mode"),
        "{help}"
    );
}
