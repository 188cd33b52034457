//! The state file under damage and a full disk: a damaged file stops the
//! real binary with one clear line (exit 1, no panic); a full disk shows in
//! health (`tollgate.state`) and `tollgate_state_failures_total`, and the
//! next write after it has room works.

mod support;

use std::io;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::StorageBackend;
use redb::backends::InMemoryBackend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::process::{BIN, temp_dir};
use support::*;
use tollgate::engine::ManualClock;
use tollgate::limiter::Limiter;
use tollgate::plans::SlotRegistry;
use tollgate::proto::tollgate::v1 as pb;
use tollgate::state::RuntimeState;
use tollgate::storage::memory::MemoryStore;

/// Starts the binary on `state`; its exit code and stderr, if it exits.
fn start_on(state: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new("timeout")
        .args(["5", BIN, "serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(state)
        .output()
        .expect("tollgate runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_damaged_state_file_stops_the_server_with_one_clear_line() {
    let dir = temp_dir("damaged");
    let good = dir.join("good.redb");
    drop(RuntimeState::open(&good).expect("a state file"));
    let image = std::fs::read(&good).expect("read");

    let truncated = dir.join("truncated.redb");
    std::fs::write(&truncated, &image[..image.len() / 2]).expect("write");
    // Bytes of the header that redb asserts on (offset 12) and checks (0).
    let flipped = dir.join("flipped.redb");
    let mut bytes = image.clone();
    for at in [0, 12, 13] {
        bytes[at] ^= 0xff;
    }
    std::fs::write(&flipped, &bytes).expect("write");
    let asserted = dir.join("asserted.redb");
    let mut bytes = image;
    bytes[24] ^= 0xff;
    std::fs::write(&asserted, &bytes).expect("write");

    for file in [&truncated, &flipped, &asserted] {
        let (code, stderr) = start_on(file);
        let expected = format!("tollgate: state file {} is damaged: ", file.display());
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(&expected), "{stderr}");
        assert!(
            stderr.contains(
                "; move it aside to start afresh (admin changes in it are lost) or restore a backup"
            ),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Memory that refuses writes while `full`, as a full disk does.
#[derive(Debug, Clone)]
struct Disk {
    memory: Arc<InMemoryBackend>,
    full: Arc<AtomicBool>,
}

impl Disk {
    fn check(&self) -> Result<(), io::Error> {
        if self.full.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left"));
        }
        Ok(())
    }
}

impl StorageBackend for Disk {
    fn len(&self) -> Result<u64, io::Error> {
        self.memory.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.memory.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.check()?;
        self.memory.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.check()?;
        self.memory.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.check()?;
        self.memory.write(offset, data)
    }
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut body = String::new();
    conn.read_to_string(&mut body).await.expect("read");
    body
}

async fn state_health(addr: std::net::SocketAddr) -> i32 {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
    h.check(tonic_health::pb::HealthCheckRequest {
        service: "tollgate.state".into(),
    })
    .await
    .expect("tollgate.state is known")
    .into_inner()
    .status
}

async fn until_health(addr: std::net::SocketAddr, status: i32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if state_health(addr).await == status {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("tollgate.state never became {status}");
}

fn set_plan(account: &str) -> tonic::Request<pb::SetPlanRequest> {
    authed(pb::SetPlanRequest {
        account: account.into(),
        plan: "pro".into(),
        clear: false,
    })
}

#[tokio::test]
async fn a_full_disk_shows_in_health_and_metrics_and_passes() {
    let disk = Disk {
        memory: Arc::new(InMemoryBackend::new()),
        full: Arc::new(AtomicBool::new(false)),
    };
    let state =
        RuntimeState::on_backend(std::path::Path::new("disk.redb"), disk.clone()).expect("opens");
    let slots = Arc::new(SlotRegistry::default());
    let yaml = "default_plan: free\nplans: { free: { limits: [ { rate: 3/minute } ] }, pro: { limits: [ { rate: 9/minute } ] } }\n";
    let catalog = tollgate::config::parse("test.yaml", yaml, &slots).expect("valid");
    let limiter = Arc::new(Limiter::with_state(
        MemoryStore::new(1_000),
        catalog,
        slots,
        Arc::new(ManualClock::new(T0)),
        Arc::new(state),
    ));
    let metrics = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics_addr = metrics.local_addr().expect("addr");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counters = support::process::temp_dir("full-disk").join("disk.redb");
    let persist = tollgate::persist::Persistence::beside(&counters, None);
    let snapshot = persist.snapshot_path().to_owned();
    let _ = std::fs::remove_file(&snapshot);
    let options = tollgate::server::Options {
        metrics: Some(metrics),
        admin_token: Some(ADMIN_TOKEN.into()),
        persist: Some(persist),
        ..Default::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tollgate::server::run(
        listener,
        limiter.clone(),
        options,
        async {
            let _ = stopped.await;
        },
    ));
    let mut admin = AdminClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    admin.set_plan(set_plan("a")).await.expect("stored");
    until_health(addr, 1).await;

    disk.full.store(true, Ordering::SeqCst);
    for account in ["b", "c"] {
        let e = admin
            .set_plan(set_plan(account))
            .await
            .expect_err("disk full");
        assert_eq!(e.code(), tonic::Code::Internal);
    }
    until_health(addr, 2).await;
    let text = scrape(metrics_addr).await;
    assert!(text.contains("tollgate_state_failures_total 2"), "{text}");

    disk.full.store(false, Ordering::SeqCst);
    admin.set_plan(set_plan("d")).await.expect("room again");
    until_health(addr, 1).await;

    let _ = stop.send(());
    server.await.expect("joins").expect("runs");
    drop(admin);
    // The server's tasks end on shutdown; the database closes with the last.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while Arc::strong_count(&limiter) > 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(Arc::strong_count(&limiter), 1, "the limiter is released");
    drop(limiter);
    let state = RuntimeState::on_backend(std::path::Path::new("disk.redb"), disk).expect("reopens");
    for account in ["a", "d"] {
        assert_eq!(state.runtime().assignment(account).as_deref(), Some("pro"));
    }
    // The counters persist beside the state file now, not in it.
    assert!(snapshot.exists(), "saved at shutdown");
}
