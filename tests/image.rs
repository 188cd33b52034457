//! The container image, built here by `scripts/image.sh` (no daemon, no
//! registry), unpacked with umoci, and its entrypoint run in a chroot of the
//! image's root filesystem as the image's user: it serves, its health check
//! passes, and it writes its state in its home. Containers cannot run on
//! this machine; a chroot with the image's user, working directory and
//! command is as close as it allows.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod support;

use support::process::*;

/// Runs `program` with `args` as root: directly when the tests run as root,
/// through sudo otherwise (files owned by the image's user, a chroot).
fn as_root(program: &str) -> Command {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|ids| ids.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false);
    if root {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", program]);
        c
    }
}

fn run(mut c: Command) -> String {
    let out = c.output().expect("runs");
    assert!(
        out.status.success(),
        "{c:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_serves_as_its_own_user_and_passes_its_health_check() {
    let dir = temp_dir("image");
    let out = dir.join("image");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/image.sh");
    // The test profile's binary stands in for the release build the script
    // makes by default: the script, not the optimizer, is under test.
    let mut build = as_root("bash");
    build.arg(&script).arg(BIN).arg(&out);
    let said = run(build);
    assert!(said.contains("KiB compressed"), "{said}");

    let version = env!("CARGO_PKG_VERSION");
    let bundle = dir.join("bundle");
    let _ = std::fs::remove_dir_all(&bundle);
    let mut unpack = as_root("umoci");
    unpack
        .args(["unpack", "--image"])
        .arg(format!("{}:{version}", out.join("oci").display()))
        .arg(&bundle);
    run(unpack);

    // The runtime configuration umoci derived from the image's: what a
    // container runtime would run.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).expect("config.json"))
            .expect("json");
    let process = &config["process"];
    let args: Vec<String> = process["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string").to_owned())
        .collect();
    assert_eq!(
        args,
        [
            "/usr/local/bin/tollgate",
            "serve",
            "--listen",
            "0.0.0.0:8081"
        ],
        "the Dockerfile's entrypoint and command"
    );
    let uid = process["user"]["uid"].as_u64().expect("uid");
    let gid = process["user"]["gid"].as_u64().expect("gid");
    assert_eq!((uid, gid), (65532, 65532), "non-root");
    let cwd = process["cwd"].as_str().expect("cwd");
    assert_eq!(cwd, "/home/nonroot");

    // The image's command, on a free loopback port instead of 0.0.0.0:8081.
    let rootfs = bundle.join("rootfs");
    let mut command = as_root("unshare");
    command
        .arg(format!("--root={}", rootfs.display()))
        .arg(format!("--wd={cwd}"))
        .args(["--setuid", &uid.to_string(), "--setgid", &gid.to_string()])
        .args(args.iter().map(|a| {
            if a == "0.0.0.0:8081" {
                "127.0.0.1:0"
            } else {
                a.as_str()
            }
        }))
        .env_clear()
        .envs(
            process["env"]
                .as_array()
                .expect("env")
                .iter()
                .filter_map(|e| {
                    e.as_str()?
                        .split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                }),
        );
    let served = started(command);
    assert_eq!(served.health_of("").await, 1, "SERVING");
    let status = std::fs::read_to_string(format!("/proc/{}/status", served.child.id()));
    // unshare execs tollgate in its place, so the child is tollgate itself.
    let uid_line = status
        .expect("the server's status")
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .map(str::to_owned)
        .expect("Uid line");
    assert!(uid_line.contains("65532"), "{uid_line}");
    let status = stop(served, Duration::from_secs(60));
    assert!(status.success(), "{status}");
    // Its default --state, in its home, written as its user.
    let state = rootfs.join("home/nonroot/tollgate-state.redb");
    assert!(state.exists(), "the state file is in the user's home");

    let mut clean = as_root("rm");
    clean.arg("-rf").arg(&dir);
    run(clean);
}
