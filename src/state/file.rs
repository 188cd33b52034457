//! The redb state file, distrusted: a damaged file is an error, never a
//! panic, and a write that failed (a full disk) re-opens the database
//! before the next one, since redb refuses every write after an I/O error
//! (`Previous I/O error occurred`) for as long as the database stays open.
//!
//! redb asserts (panics) on some damage instead of returning an error, so
//! every call into it runs under `catch_unwind`; a panic there marks the
//! file damaged. Re-opening replays redb's own recovery, which keeps every
//! committed transaction; a write that failed may or may not have landed,
//! and its admin call reported the failure.

use std::any::Any;
use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};

use redb::{Database, DatabaseError, StorageBackend};

use super::StateError;

/// Opens the database again, on the same file or backend.
type Opener = Box<dyn Fn() -> Result<Database, DatabaseError> + Send + Sync>;

/// A state database that re-opens after a failed write.
pub(super) struct StateFile {
    path: PathBuf,
    open: Opener,
    /// `None` while broken: re-opened before the next write.
    db: Mutex<Option<Database>>,
    /// Whether the last write (or the opening) succeeded.
    healthy: tokio::sync::watch::Sender<bool>,
    failures: AtomicU64,
}

/// A backend shared between successive opens of one in-memory database.
#[derive(Debug, Clone)]
pub(super) struct SharedBackend(pub(super) Arc<dyn StorageBackend>);

/// redb's page cache for the state file.
const CACHE: usize = 32 << 20;

thread_local! {
    /// Set while redb runs under [`guarded`]: its panics become errors, so
    /// the panic hook stays quiet.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

// === impl StateFile ===

impl StateFile {
    /// Opens (or creates) the file at `path`.
    pub(super) fn open(path: &Path) -> Result<Self, StateError> {
        let owned = path.to_owned();
        // redb caches up to 1 GiB by default; the state file is written far
        // more than it is read, so a small cache keeps the server's memory
        // for counters.
        Self::with(
            path,
            Box::new(move || Database::builder().set_cache_size(CACHE).create(&owned)),
        )
    }

    /// A database on `backend`, re-opened on the same backend.
    pub(super) fn on_backend(path: &Path, backend: SharedBackend) -> Result<Self, StateError> {
        Self::with(
            path,
            Box::new(move || {
                Database::builder()
                    .set_cache_size(CACHE)
                    .create_with_backend(backend.clone())
            }),
        )
    }

    fn with(path: &Path, open: Opener) -> Result<Self, StateError> {
        let db = guarded(path, || open().map_err(redb::Error::from))?;
        Ok(Self {
            path: path.to_owned(),
            open,
            db: Mutex::new(Some(db)),
            healthy: tokio::sync::watch::Sender::new(true),
            failures: AtomicU64::new(0),
        })
    }

    /// The file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Follows whether writes succeed.
    pub(super) fn health(&self) -> tokio::sync::watch::Receiver<bool> {
        self.healthy.subscribe()
    }

    /// Writes that failed since start.
    pub(super) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Runs `f` on the database as opened, before serving: no health or
    /// failure bookkeeping. Blocks.
    pub(super) fn first<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, StateError> {
        let mut slot = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let db = self.reopened(&mut slot)?;
        guarded(&self.path, || f(db))
    }

    /// Runs `f` on the database (re-opened first if a write failed before);
    /// any failure leaves it to be re-opened before the next call. Blocks.
    pub(super) fn write<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, StateError> {
        let mut slot = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let result = self
            .reopened(&mut slot)
            .and_then(|db| guarded(&self.path, || f(db)));
        match &result {
            Ok(_) => {
                if self.healthy.send_replace(true) {
                    return result;
                }
                tracing::info!(state.path = %self.path.display(), "state file writable again");
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                // Closed here, re-opened on the next write.
                if let Some(db) = slot.take() {
                    close(&self.path, db);
                }
                if self.healthy.send_replace(false) {
                    tracing::warn!(error = %e, "state file write failed; admin changes fail until a write succeeds");
                }
            }
        }
        result
    }

    fn reopened<'a>(&self, slot: &'a mut Option<Database>) -> Result<&'a Database, StateError> {
        if slot.is_none() {
            *slot = Some(guarded(&self.path, || {
                (self.open)().map_err(redb::Error::from)
            })?);
        }
        Ok(slot.as_ref().expect("set just above"))
    }
}

impl Drop for StateFile {
    /// redb writes on close; a damaged file must not panic here either.
    fn drop(&mut self) {
        let slot = self.db.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = slot.take() {
            close(&self.path, db);
        }
    }
}

// === impl SharedBackend ===

impl StorageBackend for SharedBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }
}

/// Runs `f`, a call into redb: its errors and panics become [`StateError`]s.
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T, redb::Error>) -> Result<T, StateError> {
    static HOOK: Once = Once::new();
    // The payload becomes the error; printing it too would say "panicked"
    // over a clean error (and break JSON logs).
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    match outcome {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(path, e)),
        Err(payload) => Err(StateError::Damaged {
            path: path.to_owned(),
            reason: panic_message(payload.as_ref()),
        }),
    }
}

/// Closes `db`: redb writes on close, which may fail or panic too.
fn close(path: &Path, db: Database) {
    let _ = guarded(path, || {
        drop(db);
        Ok(())
    });
}

/// Damage (the file is not what redb wrote) or another failure.
fn classify(path: &Path, e: redb::Error) -> StateError {
    use std::io::ErrorKind;
    // tollgate never changes its tables, so a table error means the file
    // changed under redb; so does data that does not parse.
    let damaged = match &e {
        redb::Error::Io(io) => {
            matches!(io.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof)
        }
        redb::Error::PreviousIo
        | redb::Error::DatabaseAlreadyOpen
        | redb::Error::UpgradeRequired(_)
        | redb::Error::LockPoisoned(_)
        | redb::Error::DatabaseClosed
        | redb::Error::TransactionInProgress => false,
        _ => true,
    };
    if matches!(e, redb::Error::DatabaseAlreadyOpen) {
        StateError::Locked {
            path: path.to_owned(),
        }
    } else if damaged {
        StateError::Damaged {
            path: path.to_owned(),
            reason: e.to_string(),
        }
    } else {
        StateError::File {
            path: path.to_owned(),
            error: e,
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("redb panicked");
    // An assertion's message spans lines (left, right); keep it on one.
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::AtomicBool;

    use redb::backends::InMemoryBackend;

    use super::*;
    use crate::state::RuntimeState;

    /// Memory that refuses writes while `full`, as a full disk does.
    #[derive(Debug, Clone)]
    struct Disk {
        memory: Arc<InMemoryBackend>,
        full: Arc<AtomicBool>,
    }

    impl Disk {
        fn new() -> Self {
            Self {
                memory: Arc::new(InMemoryBackend::new()),
                full: Arc::new(AtomicBool::new(false)),
            }
        }

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

        /// Past the end, as a file answers.
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
            if offset + out.len() as u64 > self.memory.len()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
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

    #[tokio::test]
    async fn writes_again_once_the_disk_has_room() {
        let disk = Disk::new();
        let path = Path::new("full.redb");
        let state = RuntimeState::on_backend(path, disk.clone()).expect("opens");
        let health = state.health();
        state
            .set_assignment("a", Some("pro"))
            .await
            .expect("stored");
        assert!(*health.borrow());

        disk.full.store(true, Ordering::SeqCst);
        for _ in 0..2 {
            let e = state.set_assignment("b", Some("pro")).await;
            assert!(matches!(e, Err(StateError::File { .. })), "{e:?}");
        }
        assert!(!*health.borrow());
        assert_eq!(state.failures(), 2);
        assert_eq!(state.runtime().assignment("b"), None);

        disk.full.store(false, Ordering::SeqCst);
        state
            .set_assignment("c", Some("pro"))
            .await
            .expect("room again");
        assert!(*health.borrow());
        drop(state);

        // Nothing committed before the failure is lost.
        let state = RuntimeState::on_backend(path, disk).expect("reopens");
        assert_eq!(state.runtime().assignment("a").as_deref(), Some("pro"));
        assert_eq!(state.runtime().assignment("c").as_deref(), Some("pro"));
    }

    #[tokio::test]
    async fn a_damaged_file_is_an_error_never_a_panic() {
        let disk = Disk::new();
        let path = Path::new("damaged.redb");
        {
            let state = RuntimeState::on_backend(path, disk.clone()).expect("opens");
            state
                .set_assignment("a", Some("pro"))
                .await
                .expect("stored");
        }
        let len = usize::try_from(disk.memory.len().expect("len")).expect("small");
        let mut image = vec![0; len];
        disk.memory.read(0, &mut image).expect("read");
        let used = image.iter().rposition(|b| *b != 0).unwrap_or(0) + 1;
        let mut damaged = 0;
        // The header byte by byte, then a sample of the pages.
        let header = 320.min(used);
        let pages = (header..used).step_by((used / 4).max(1));
        for at in (0..header).step_by(11).chain(pages).chain([len / 2]) {
            let copy = Disk::new();
            copy.memory.set_len(len as u64).expect("len");
            copy.memory.write(0, &image).expect("copy");
            if at == len / 2 {
                copy.memory.set_len(at as u64).expect("truncate");
            } else {
                copy.memory
                    .write(at as u64, &[image[at] ^ 0xa5])
                    .expect("flip");
            }
            // Whatever the damage: an error, or a state that keeps working
            // (or fails cleanly) through a write and a close.
            match RuntimeState::on_backend(path, copy) {
                Err(StateError::Damaged { reason, .. }) => {
                    assert!(!reason.is_empty());
                    damaged += 1;
                }
                Err(e) => panic!("byte {at}: not reported as damage: {e}"),
                Ok(state) => {
                    let _ = state.set_assignment("b", Some("pro")).await;
                    let _ = state.set_assignment("c", Some("pro")).await;
                }
            }
        }
        assert!(damaged > 1, "only {damaged} damaged");
    }
}
