//! Making admin changes durable: plan assignments and overrides in a local
//! redb file (the embedded default) or in Redis (shared by every replica).
//! The counters persist beside the file (`crate::persist`); the previous
//! version kept their snapshot in it, read once on upgrade.
//!
//! A change is stored first (committed and fsynced, or written to Redis and
//! announced to the other replicas), then applied to the [`Runtime`] the
//! resolver reads, and only then does the admin call return. redb commits
//! run on the blocking pool, never on an async worker; writers are
//! serialized so no change is lost between read and write.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use self::file::{SharedBackend, StateFile};

use crate::plans::overrides::Override;
use crate::plans::runtime::{Maps, Runtime};
use crate::storage::redis::RedisStore;
use crate::storage::{Counters, StoreError};

mod file;

const ASSIGNMENTS: TableDefinition<&str, &str> = TableDefinition::new("assignments");
const OVERRIDES: TableDefinition<&str, &[u8]> = TableDefinition::new("overrides");
const COUNTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("counters");

/// The runtime state and where it is kept.
pub struct RuntimeState {
    runtime: Arc<Runtime>,
    backend: Backend,
    /// Serializes writers across their `.await`s.
    write: tokio::sync::Mutex<()>,
}

enum Backend {
    /// A redb database: a file, or memory for embedding and tests.
    File(Arc<StateFile>),
    /// Redis, shared with the other replicas; `replica` names this one in
    /// change notices.
    Shared {
        store: Box<RedisStore>,
        replica: String,
    },
}

/// A state problem.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state file is not a database redb can read (truncated, bytes
    /// changed): starting needs the operator.
    #[error(
        "state file {} is damaged: {reason}; move it aside to start afresh (admin changes in it are lost) or restore a backup",
        path.display()
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What redb found.
        reason: String,
    },
    /// The state file failed.
    #[error("state file {}: {error}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What failed: in the message, so not also a `source()` that
        /// would print it twice in a chain.
        error: redb::Error,
    },
    /// Another process (a second tollgate started in the same directory)
    /// has the state file open.
    #[error("another tollgate holds {}; pass --state to use another file", path.display())]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The shared store failed.
    #[error(transparent)]
    Shared(#[from] StoreError),
}

// === impl RuntimeState ===

impl RuntimeState {
    /// Opens (or creates) the state file at `path` and loads it; a damaged
    /// file is [`StateError::Damaged`].
    pub fn open(path: &Path) -> Result<Self, StateError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StateError::File {
                path: path.to_owned(),
                error: redb::Error::Io(e),
            })?;
        }
        Self::on_file(StateFile::open(path)?)
    }

    /// State kept in memory only, for embedding and tests: lost on exit.
    pub fn in_memory() -> Self {
        let backend = SharedBackend(Arc::new(redb::backends::InMemoryBackend::new()));
        Self::on_backend(Path::new(":memory:"), backend)
            .expect("an empty in-memory database opens and loads")
    }

    /// State on a redb `backend` (re-opened on the same one after a failed
    /// write), named `path` in errors: for tests that make storage fail.
    pub fn on_backend(path: &Path, backend: impl redb::StorageBackend) -> Result<Self, StateError> {
        Self::on_file(StateFile::on_backend(
            path,
            SharedBackend(Arc::new(backend)),
        )?)
    }

    fn on_file(file: StateFile) -> Result<Self, StateError> {
        let maps = file.first(load)?;
        Ok(Self::new(Backend::File(Arc::new(file)), maps))
    }

    /// State kept in Redis, shared with every replica; `replica` names this
    /// one in change notices. Starts empty: the server reads Redis before
    /// serving.
    pub fn shared(store: RedisStore, replica: String) -> Self {
        Self::new(
            Backend::Shared {
                store: Box::new(store),
                replica,
            },
            Maps::default(),
        )
    }

    /// Where admin changes go when nothing else is said: with Redis
    /// counters, Redis (every replica must see them); otherwise memory.
    pub fn for_counters(counters: &Counters) -> Self {
        match counters.shared() {
            Some(shared) => Self::shared(shared.store.clone(), shared.replica.clone()),
            None => Self::in_memory(),
        }
    }

    fn new(backend: Backend, maps: Maps) -> Self {
        Self {
            runtime: Arc::new(Runtime::new(maps)),
            backend,
            write: tokio::sync::Mutex::new(()),
        }
    }

    /// What the resolver reads.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The state file (`:memory:` or `redis` when there is none).
    pub fn path(&self) -> &Path {
        match &self.backend {
            Backend::File(file) => file.path(),
            Backend::Shared { .. } => Path::new("redis"),
        }
    }

    /// Whether admin changes can be stored: false from a failed write of
    /// the state file until one succeeds. Redis failures show in the
    /// counter store's health instead, so with Redis it stays true.
    pub fn health(&self) -> tokio::sync::watch::Receiver<bool> {
        match &self.backend {
            Backend::File(file) => file.health(),
            Backend::Shared { .. } => tokio::sync::watch::Sender::new(true).subscribe(),
        }
    }

    /// Writes of the state file that failed since start.
    pub fn failures(&self) -> u64 {
        match &self.backend {
            Backend::File(file) => file.failures(),
            Backend::Shared { .. } => 0,
        }
    }

    /// Sets (`Some`) or clears (`None`) the runtime plan of `account`;
    /// returns the previous one.
    pub async fn set_assignment(
        &self,
        account: &str,
        plan: Option<&str>,
    ) -> Result<Option<String>, StateError> {
        let _guard = self.write.lock().await;
        match &self.backend {
            Backend::File(_) => {
                let (account, plan) = (account.to_owned(), plan.map(str::to_owned));
                self.commit(move |tx| {
                    let mut t = tx.open_table(ASSIGNMENTS)?;
                    match &plan {
                        Some(p) => t.insert(account.as_str(), p.as_str())?,
                        None => t.remove(account.as_str())?,
                    };
                    Ok(())
                })
                .await?;
            }
            Backend::Shared { store, replica } => {
                store.put_assignment(account, plan, replica).await?;
            }
        }
        Ok(self.runtime.set_assignment(account, plan))
    }

    /// Sets (`Some`, 1 to 31) or clears the day `account`'s months start
    /// on; returns the previous one.
    pub async fn set_anchor(
        &self,
        account: &str,
        day: Option<u8>,
    ) -> Result<Option<u8>, StateError> {
        let key = crate::plans::runtime::anchor_key(account);
        let before = self
            .set_assignment(&key, day.map(|d| d.to_string()).as_deref())
            .await?;
        Ok(before.and_then(|d| d.parse().ok()))
    }

    /// Adds or replaces (by limit name) an override of `account`.
    pub async fn set_override(&self, account: &str, o: Override) -> Result<(), StateError> {
        let _guard = self.write.lock().await;
        if let Backend::Shared { store, replica } = &self.backend {
            store.set_override(account, &o, replica).await?;
        }
        let mut list = self.runtime.overrides(account);
        list.retain(|x| x.limit != o.limit);
        list.push(o);
        self.put_overrides(account, list).await
    }

    /// Removes the override of `account` on `limit`; whether there was one.
    pub async fn remove_override(&self, account: &str, limit: &str) -> Result<bool, StateError> {
        let _guard = self.write.lock().await;
        let shared_had = match &self.backend {
            Backend::Shared { store, replica } => {
                Some(store.remove_override(account, limit, replica).await?)
            }
            Backend::File(_) => None,
        };
        let mut list = self.runtime.overrides(account);
        let before = list.len();
        list.retain(|x| x.limit != limit);
        let had = shared_had.unwrap_or(list.len() != before);
        if had || list.len() != before {
            self.put_overrides(account, list).await?;
        }
        Ok(had)
    }

    /// The counters the previous version saved in the state file (a
    /// graceful stop's snapshot), if any; `crate::persist` reads them once,
    /// then [`RuntimeState::drop_legacy_counters`]. Blocks: before serving.
    pub fn legacy_counters(&self) -> Result<Option<Vec<u8>>, StateError> {
        let Backend::File(file) = &self.backend else {
            return Ok(None);
        };
        file.first(|db| {
            let tx = db.begin_read()?;
            let table = match tx.open_table(COUNTERS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            Ok(table.get(0)?.map(|v| v.value().to_vec()))
        })
    }

    /// Removes the previous version's counters from the state file, once
    /// their successor is durable. Blocks: before serving.
    pub fn drop_legacy_counters(&self) -> Result<(), StateError> {
        let Backend::File(file) = &self.backend else {
            return Ok(());
        };
        file.write(|db| {
            let tx = db.begin_write()?;
            tx.delete_table(COUNTERS)?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Stores `list` as the overrides of `account` in the state file, or
    /// re-reads them from Redis (where the change is already stored), then
    /// applies them.
    async fn put_overrides(
        &self,
        account: &str,
        mut list: Vec<Override>,
    ) -> Result<(), StateError> {
        match &self.backend {
            Backend::File(_) => {
                let bytes = serde_json::to_vec(&list).expect("overrides serialize");
                let (account, empty) = (account.to_owned(), list.is_empty());
                self.commit(move |tx| {
                    let mut t = tx.open_table(OVERRIDES)?;
                    if empty {
                        t.remove(account.as_str())?;
                    } else {
                        t.insert(account.as_str(), bytes.as_slice())?;
                    }
                    Ok(())
                })
                .await?;
            }
            Backend::Shared { store, .. } => {
                // Stored one limit at a time; what Redis holds now includes
                // other replicas' edits of this account's other limits.
                match store.load_account(account).await {
                    Ok((_, stored)) => list = stored,
                    Err(e) => {
                        tracing::warn!(error = %e, account, "cannot re-read an account after storing its override; the next resync will")
                    }
                }
            }
        }
        self.runtime.set_overrides(account, list);
        Ok(())
    }

    /// Commits `f` on the blocking pool (redb fsyncs).
    async fn commit(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error> + Send + 'static,
    ) -> Result<(), StateError> {
        let Backend::File(file) = &self.backend else {
            return Ok(());
        };
        let file = file.clone();
        tokio::task::spawn_blocking(move || {
            file.write(|db| {
                let tx = db.begin_write()?;
                f(&tx)?;
                Ok(tx.commit()?)
            })
        })
        .await
        .expect("redb's panics are caught in `StateFile::write`")
    }
}

impl std::fmt::Debug for RuntimeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeState")
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

fn load(db: &Database) -> Result<Maps, redb::Error> {
    // Create the tables on first use, so reads never miss them.
    let tx = db.begin_write()?;
    tx.open_table(ASSIGNMENTS)?;
    tx.open_table(OVERRIDES)?;
    tx.commit()?;
    let tx = db.begin_read()?;
    let mut maps = Maps::default();
    for row in tx.open_table(ASSIGNMENTS)?.iter()? {
        let (k, v) = row?;
        maps.assignments
            .insert(k.value().to_owned(), v.value().to_owned());
    }
    for row in tx.open_table(OVERRIDES)?.iter()? {
        let (k, v) = row?;
        match serde_json::from_slice::<Vec<Override>>(v.value()) {
            Ok(list) => {
                maps.overrides.insert(k.value().to_owned(), list);
            }
            Err(e) => {
                tracing::warn!(account = k.value(), error = %e, "unreadable overrides skipped")
            }
        }
    }
    Ok(maps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plans::overrides::Change;

    #[tokio::test]
    async fn survives_reopening() {
        let dir = std::env::temp_dir().join(format!("tollgate-state-{}", std::process::id()));
        let path = dir.join("state.redb");
        {
            let s = RuntimeState::open(&path).expect("open");
            assert_eq!(
                s.set_assignment("acct", Some("pro")).await.expect("set"),
                None
            );
            let o = Override {
                limit: "requests/minute".into(),
                change: Change::Amount(9),
                expires_at: None,
                reason: String::new(),
            };
            s.set_override("acct", o).await.expect("override");
        }
        let s = RuntimeState::open(&path).expect("reopen");
        assert_eq!(s.runtime().assignment("acct").as_deref(), Some("pro"));
        assert_eq!(s.runtime().overrides("acct").len(), 1);
        // The counters persist beside the file now (crate::persist).
        assert_eq!(s.legacy_counters().expect("read"), None);
        s.drop_legacy_counters().expect("nothing to drop");
        assert!(
            s.remove_override("acct", "requests/minute")
                .await
                .expect("remove")
        );
        assert!(!s.runtime().knows("nobody"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
