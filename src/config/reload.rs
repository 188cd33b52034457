//! Reloading what the server reads from files (its configuration, Envoy's
//! rule files): on demand (`Admin.ReloadConfig`) and when the files change.
//!
//! A reload re-reads and validates everything; a valid result is installed
//! whole (counters survive where a limit's identity is unchanged), an invalid
//! one is refused with the same `file:line: field: problem` error and the
//! running one stays in force. Directories are watched, not files, so a
//! Kubernetes ConfigMap's symlink swap is seen too. Reading and compiling
//! runs on the blocking pool, never on an async worker.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ConfigError;

/// What a reload installed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// The file or directory read.
    pub path: PathBuf,
    /// Plans in it (a configuration file).
    pub plans: usize,
    /// Classes in it (a configuration file).
    pub classes: usize,
    /// Envoy domains in it (a rule directory).
    pub domains: usize,
}

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// Serving the built-in configuration: there is no file to re-read.
    #[error("serving the built-in configuration; start tollgate with --config FILE to reload one")]
    NoFile,
    /// The file is invalid; the running configuration stays.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// Loads and installs from a path; what was installed.
type Install = dyn Fn(&Path) -> Result<Reloaded, ConfigError> + Send + Sync;

/// Re-reads one source (a file or a directory) into the running server.
pub struct Reloader {
    what: &'static str,
    kept: &'static str,
    path: Option<PathBuf>,
    install: Box<Install>,
    fingerprint: fn(&Path) -> Option<Vec<u8>>,
    /// The fingerprint of what the last reload read (from the moment the
    /// reloader is made, so a change made before the watcher starts counts).
    /// Every reload sets it, on demand or watched, so the watcher compares
    /// the file with what is installed, not with what it saw itself: a
    /// `ReloadConfig` of other content followed by the file going back to
    /// what the watcher last saw is still a change.
    seen: Mutex<Option<Vec<u8>>>,
    /// One reload at a time, so an older read never lands after a newer one.
    running: Mutex<()>,
    ok: AtomicU64,
    failed: AtomicU64,
}

// === impl Reloader ===

impl Reloader {
    /// Reloads `path` (none: nothing to reload) with `install`, which reads,
    /// validates and installs; `what` names the source in logs and `kept`
    /// says what stays when a reload fails. `fingerprint` reads what a
    /// change is judged by (the file's bytes).
    pub fn new(
        (what, kept): (&'static str, &'static str),
        path: Option<PathBuf>,
        fingerprint: fn(&Path) -> Option<Vec<u8>>,
        install: impl Fn(&Path) -> Result<Reloaded, ConfigError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            what,
            kept,
            seen: Mutex::new(path.as_deref().and_then(fingerprint)),
            path,
            install: Box::new(install),
            fingerprint,
            running: Mutex::new(()),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// The file or directory reloaded, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Successful and failed reloads so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Re-reads now, on the blocking pool.
    pub async fn reload(self: &Arc<Self>) -> Result<Reloaded, ReloadError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.reload_blocking())
            .await
            .expect("a reload does not panic")
    }

    /// Re-reads now, on this thread.
    fn reload_blocking(&self) -> Result<Reloaded, ReloadError> {
        let path = self.path.as_ref().ok_or(ReloadError::NoFile)?;
        let _one_at_a_time = self.running.lock();
        // Read before installing: if the file changes in between, what is
        // installed is newer than `seen`, and the watcher reloads once more
        // (harmless); read after, a change could go unnoticed.
        *self.seen.lock() = (self.fingerprint)(path);
        match (self.install)(path) {
            Ok(done) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(config.path = %path.display(), plans = done.plans, domains = done.domains, "{} reloaded", self.what);
                Ok(done)
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(config.path = %path.display(), error = %e, "{} reload failed; {}", self.what, self.kept);
                Err(e.into())
            }
        }
    }

    /// Watches the path's directory and reloads on every change (debounced),
    /// until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let dir = if path.is_dir() {
            path.clone()
        } else {
            path.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_owned()
        };
        let fingerprint = self.fingerprint;
        let read = move || fingerprint(&path);
        watch_dir(dir, read, self, shutdown).await;
    }
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("what", &self.what)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The bytes of a file, as a fingerprint.
pub fn file_bytes(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

/// Reloads whenever what `read` returns changes (and is `Some`), looking
/// again after every event in `dir`, until `shutdown`. Reading and reloading
/// run on the blocking pool.
async fn watch_dir(
    dir: PathBuf,
    read: impl Fn() -> Option<Vec<u8>> + Send + Sync + 'static,
    reloader: Arc<Reloader>,
    shutdown: CancellationToken,
) {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.try_send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the configuration; ReloadConfig still works");
            return;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the configuration directory; ReloadConfig still works");
        return;
    }
    let read = Arc::new(read);
    let fingerprint = || {
        let read = read.clone();
        async move {
            tokio::task::spawn_blocking(move || read())
                .await
                .ok()
                .flatten()
        }
    };
    loop {
        tokio::select! {
            got = rx.recv() => if got.is_none() { return },
            () = shutdown.cancelled() => return,
        }
        // Let an editor or a ConfigMap swap finish writing.
        tokio::time::sleep(Duration::from_millis(200)).await;
        while rx.try_recv().is_ok() {}
        let now = fingerprint().await;
        let changed = now.is_some() && *reloader.seen.lock() != now;
        if changed {
            let _ = reloader.reload().await;
        }
    }
}
