//! Envoy's rate limit service through the real binary and the real grpcurl,
//! with no proto files at hand: reflection, describe, ShouldRateLimit, the
//! reference's environment variables, and `tollgate check DIR`.

mod support;

use std::process::Command;
use std::time::Duration;

use support::process::*;

fn rules() -> String {
    example("envoy/ratelimit")
}

fn should_rate_limit(addr: &str, body: &str) -> serde_json::Value {
    let out = grpcurl(&[
        "-plaintext",
        "-d",
        body,
        addr,
        "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
    ]);
    serde_json::from_str(&out).expect("json")
}

#[test]
fn grpcurl_lists_describes_and_calls_should_rate_limit() {
    let rules = rules();
    let s = serve(&["--envoy-config", &rules]);
    let addr = s.addr.as_str();
    let list = grpcurl(&["-plaintext", addr, "list"]);
    assert!(
        list.contains("envoy.service.ratelimit.v3.RateLimitService"),
        "{list}"
    );
    let described = grpcurl(&[
        "-plaintext",
        addr,
        "describe",
        "envoy.service.ratelimit.v3.RateLimitRequest",
    ]);
    for field in [
        "string domain = 1",
        "descriptors = 2",
        "uint32 hits_addend = 3",
    ] {
        assert!(described.contains(field), "{described}");
    }
    let body = r#"{"domain":"edge","descriptors":[
        {"entries":[{"key":"remote_address","value":"192.0.2.1"}]},
        {"entries":[{"key":"remote_address","value":"203.0.113.7"}]},
        {"entries":[{"key":"remote_address","value":"10.0.0.1"}]}]}"#;
    let r = should_rate_limit(addr, body);
    assert_eq!(r["overallCode"], "OVER_LIMIT", "{r}");
    let st = &r["statuses"];
    assert_eq!(st[0]["code"], "OK");
    assert_eq!(st[0]["currentLimit"]["requestsPerUnit"], 10);
    assert_eq!(st[0]["currentLimit"]["unit"], "SECOND");
    assert_eq!(st[0]["limitRemaining"], 9);
    assert_eq!(st[1]["code"], "OVER_LIMIT");
    assert_eq!(st[2]["limitRemaining"], u64::from(u32::MAX));
    // A descriptor-level hits_addend of 0 only checks.
    let check = r#"{"domain":"api","descriptors":[{"entries":[{"key":"api_key","value":"k1"}],"hitsAddend":0}]}"#;
    for _ in 0..2 {
        let r = should_rate_limit(addr, check);
        assert_eq!(r["statuses"][0]["limitRemaining"], 100, "{r}");
        assert_eq!(r["statuses"][0]["currentLimit"]["name"], "per_key_minute");
    }
    stop(s, Duration::from_secs(10));
}

#[test]
fn the_references_environment_variables_work_unchanged() {
    let rules = rules();
    let s = serve_env(
        &["--envoy-config", &rules],
        &[
            ("LIMIT_RESPONSE_HEADERS_ENABLED", "true"),
            ("LIMIT_REMAINING_HEADER", "X-Left"),
            ("SHADOW_MODE", "true"),
        ],
    );
    let body = r#"{"domain":"edge","descriptors":[{"entries":[{"key":"remote_address","value":"203.0.113.7"}]}]}"#;
    let r = should_rate_limit(&s.addr, body);
    assert_eq!(r["statuses"][0]["code"], "OVER_LIMIT", "{r}");
    assert_eq!(r["overallCode"], "OK", "global shadow mode: {r}");
    let headers: Vec<(String, String)> = r["responseHeadersToAdd"]
        .as_array()
        .expect("headers")
        .iter()
        .map(|h| {
            (
                h["key"].as_str().expect("key").into(),
                h["value"].as_str().expect("value").into(),
            )
        })
        .collect();
    assert_eq!(headers[0], ("RateLimit-Limit".into(), "0".into()));
    assert_eq!(headers[1], ("X-Left".into(), "0".into()));
    assert_eq!(headers[2].0, "RateLimit-Reset");
    stop(s, Duration::from_secs(10));
}

#[test]
fn check_validates_a_rule_directory() {
    let out = Command::new(BIN)
        .args(["check", &rules()])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (4 envoy domains)"));

    let dir = temp_dir("envoy-check");
    std::fs::write(dir.join("a.yaml"), "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: 1\n    unit: minute\n").expect("write");
    let out = Command::new(BIN)
        .arg("check")
        .arg(&dir)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a.yaml:7: descriptors[0].unit: unknown field `unit`"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
