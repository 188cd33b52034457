//! Reloading the configuration: on demand (`Admin.ReloadConfig`) and when
//! the file changes.
//!
//! A reload re-reads and validates the whole file; a valid one is swapped in
//! atomically (counters survive where a limit's identity is unchanged), an
//! invalid one is refused with the same `file:line: field: problem` error and
//! the running configuration stays in force. The directory is watched, not
//! the file, so a Kubernetes ConfigMap's symlink swap is seen too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Error;
use crate::engine::CounterStore;
use crate::limiter::Limiter;

/// What a reload installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The file read.
    pub path: PathBuf,
    /// Plans in it.
    pub plans: usize,
    /// Classes in it.
    pub classes: usize,
}

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// Serving the built-in configuration: there is no file to re-read.
    #[error("serving the built-in configuration; start tollgate with --config FILE to reload one")]
    NoFile,
    /// The file is invalid; the running configuration stays.
    #[error(transparent)]
    Invalid(#[from] Error),
}

/// Re-reads the configuration file into a limiter.
pub struct Reloader<S> {
    path: Option<PathBuf>,
    limiter: Arc<Limiter<S>>,
    ok: AtomicU64,
    failed: AtomicU64,
    on_reload: Box<dyn Fn() + Send + Sync>,
}

// === impl Reloader ===

impl<S: CounterStore + 'static> Reloader<S> {
    /// Reloads `path` (none: the built-in configuration) into `limiter`,
    /// calling `on_reload` after each successful swap.
    pub fn new(
        path: Option<PathBuf>,
        limiter: Arc<Limiter<S>>,
        on_reload: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        Self {
            path,
            limiter,
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            on_reload: Box::new(on_reload),
        }
    }

    /// Successful and failed reloads so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Re-reads the file now.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let path = self.path.as_ref().ok_or(ReloadError::NoFile)?;
        match super::load(path, self.limiter.slots()) {
            Ok(catalog) => {
                let done = Reloaded {
                    path: path.clone(),
                    plans: catalog.plans.len(),
                    classes: catalog.class_names.len(),
                };
                self.limiter.replace_catalog(catalog);
                self.ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(config.path = %path.display(), plans = done.plans, "configuration reloaded");
                (self.on_reload)();
                Ok(done)
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(config.path = %path.display(), error = %e, "configuration reload failed; the running configuration stays");
                Err(e.into())
            }
        }
    }

    /// Watches the file's directory and reloads on every change (debounced),
    /// until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        let read = move || std::fs::read(&path).ok();
        watch_dir(dir, read, move || drop(self.reload()), shutdown).await;
    }
}

/// Calls `changed` whenever what `read` returns changes (and is `Some`), looking
/// again after every event in `dir`, until `shutdown`. The directory is
/// watched rather than files, so a Kubernetes ConfigMap's symlink swap is seen.
pub(crate) async fn watch_dir(
    dir: PathBuf,
    read: impl Fn() -> Option<Vec<u8>>,
    changed: impl Fn(),
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
    let mut last = read();
    loop {
        tokio::select! {
            got = rx.recv() => if got.is_none() { return },
            () = shutdown.cancelled() => return,
        }
        // Let an editor or a ConfigMap swap finish writing.
        tokio::time::sleep(Duration::from_millis(200)).await;
        while rx.try_recv().is_ok() {}
        let now = read();
        if now.is_some() && now != last {
            last = now;
            changed();
        }
    }
}
