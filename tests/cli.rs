//! The real `tollgate` binary: `check`, and `serve` driven with the real
//! grpcurl (reflection, describe, Consume, health), then SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::process::*;
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
    // Writes `text` to the file and checks it: the exit status and stderr.
    let check = |text: &str| {
        std::fs::write(&file, text).expect("write");
        let out = Command::new(BIN)
            .arg("check")
            .arg(&file)
            .output()
            .expect("runs");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (status, stderr) = check(
        "plans:\n  free:\n    limits:\n      - { rate: 30 per min }\n      - { rate: 5/minute, colour: red }\n",
    );
    assert!(!status.success());
    // Unknown keys are errors, not ignored, and they hide nothing: the bad
    // rate before it is reported too, one line per problem, in file order.
    assert!(
        stderr.contains("bad.yaml:5: plans.free.limits[1].colour: unknown field `colour`"),
        "{stderr}"
    );
    assert!(
        stderr.contains(r#"bad.yaml:4: plans.free.limits[0].rate: expected "<amount>/<window>""#),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
    assert!(
        stderr.find("bad.yaml:4") < stderr.find("bad.yaml:5"),
        "{stderr}"
    );
    // Block style, several unknown keys, one nested under another.
    let (_, stderr) = check(
        "plans:\n  free:\n    shade: blue\n    limits:\n      - rate: 5/minute\n        colour:\n          hue: red\n      - rate: 30 per min\n",
    );
    assert!(
        stderr.contains("bad.yaml:3: plans.free.shade: unknown field `shade`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bad.yaml:6: plans.free.limits[0].colour: unknown field `colour`"),
        "{stderr}"
    );
    assert!(
        stderr.contains(r#"bad.yaml:8: plans.free.limits[1].rate: expected "<amount>/<window>""#),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 3, "{stderr}");
    let (status, stderr) = check("plans:\n  free:\n    limits:\n      - { rate: 30 per min }\n");
    assert!(
        stderr.contains(r#"bad.yaml:4: plans.free.limits[0].rate: expected "<amount>/<window>""#),
        "{stderr}"
    );
    assert_eq!(status.code(), Some(1));
    let _ = std::fs::remove_dir_all(dir);
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

#[test]
fn admin_changes_and_counters_survive_a_restart() {
    let state = temp_dir("restart").join("state.redb");
    let state = state.display().to_string();
    let env = [("TOLLGATE_ADMIN_TOKEN", "s3cret")];
    let s = serve_env(
        &["--config", &example("helpkit.yaml"), "--state", &state],
        &env,
    );
    let auth = "authorization: Bearer s3cret";
    let out = grpcurl(&[
        "-plaintext",
        "-H",
        auth,
        "-d",
        r#"{"account":"acct_42","plan":"pro"}"#,
        &s.addr,
        "tollgate.v1.Admin/SetPlan",
    ]);
    assert!(out.contains(r#""plan": "pro""#), "{out}");
    for _ in 0..3 {
        grpcurl(&[
            "-plaintext",
            "-d",
            r#"{"subject":"acct_42","resource":"/x"}"#,
            &s.addr,
            "tollgate.v1.RateLimiter/Consume",
        ]);
    }
    assert!(stop(s, Duration::from_secs(10)).success());

    let s = serve_env(
        &["--config", &example("helpkit.yaml"), "--state", &state],
        &env,
    );
    let out = grpcurl(&[
        "-plaintext",
        "-H",
        auth,
        "-d",
        r#"{"subject":"acct_42"}"#,
        &s.addr,
        "tollgate.v1.Admin/GetSubject",
    ]);
    let got: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(got["plan"], "pro");
    assert_eq!(got["planSource"], "RUNTIME");
    let day = got["limits"]
        .as_array()
        .expect("limits")
        .iter()
        .find(|l| l["name"] == "requests/day")
        .expect("day");
    assert_eq!(
        day["remaining"], "49997",
        "the day's usage came back: {out}"
    );
    // Without the token: UNAUTHENTICATED.
    let denied = Command::new("grpcurl")
        .args([
            "-plaintext",
            "-d",
            r#"{"subject":"acct_42"}"#,
            &s.addr,
            "tollgate.v1.Admin/GetSubject",
        ])
        .output()
        .expect("grpcurl");
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("Unauthenticated"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    assert!(stop(s, Duration::from_secs(10)).success());
}

#[test]
fn sigterm_with_open_watch_streams_exits_within_the_deadline() {
    // A drain deadline far beyond the test's patience: stopping in time
    // proves the open stream did not hold the shutdown.
    let s = serve(&["--drain-timeout", "1h"]);
    // grpcurl holds a WatchQuota stream open and prints the snapshot.
    let mut watcher = Command::new("grpcurl")
        .args([
            "-plaintext",
            "-d",
            r#"{"subject":"key_1"}"#,
            &s.addr,
            "tollgate.v1.RateLimiter/WatchQuota",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("grpcurl");
    let stdout = watcher.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = String::new();
    while !seen.contains("SNAPSHOT") {
        seen.push_str(&lines.next().expect("a line").expect("utf-8"));
    }
    grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"subject":"key_1","resource":"/api/v1/fetch/x"}"#,
        &s.addr,
        "tollgate.v1.RateLimiter/Consume",
    ]);
    while !seen.contains("CONSUMPTION") {
        seen.push_str(&lines.next().expect("a line").expect("utf-8"));
    }
    assert!(stop(s, Duration::from_secs(60)).success());
    // The stream ended with OK, so grpcurl exits 0.
    assert!(watcher.wait().expect("grpcurl ends").success());
}
