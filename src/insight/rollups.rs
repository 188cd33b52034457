//! The usage rollups of a server, where they are kept: in memory, saved
//! beside the state file ([`Usage::snapshot`]); or, when counters live in
//! Redis, shared there by every replica; or nowhere, when turned off.
//!
//! Shared, each replica adds to its own [`Usage`] as a buffer, and every
//! flush interval ([`Rollups::flush`]) drains it into batches that Redis
//! adds once, however often one is retried (`usage.lua`): a batch that
//! failed (Redis down, a timeout whose answer was lost) is retried under
//! the same id before anything newer, so nothing is lost and nothing is
//! counted twice. An export flushes this replica's buffer, then reads the
//! sums of all replicas from Redis; what the others have not flushed yet
//! (at most a flush interval of theirs) is not in it, and a crashed
//! replica loses at most that, as a crash loses counters.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::Mutex;

use super::usage::{Granularity, Retention, Usage, UsageError, UsageRow, Used};
use crate::engine::Nanos;
use crate::storage::StoreError;
use crate::storage::redis::RedisStore;
use crate::storage::redis::usage::{Counts, GROUPS_AT_ONCE, Table};

const HOUR: Nanos = 3_600_000_000_000;
const DAY: Nanos = 24 * HOUR;
/// The latest expiry a usage key gets, in Unix seconds (the year 36,812).
const MAX_EXPIRY: u64 = 1 << 40;

/// Usage rollups, in memory or shared through Redis.
#[derive(Debug)]
pub struct Rollups {
    /// In memory: all of it. Shared: what this replica has not flushed yet.
    table: Usage,
    shared: Option<Shared>,
    /// Whether usage is kept at all.
    on: bool,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum RollupError {
    /// A range the retention no longer holds.
    #[error(transparent)]
    Range(#[from] UsageError),
    /// Redis did not answer.
    #[error("usage is kept in Redis: {0}")]
    Store(#[from] StoreError),
    /// The server keeps no usage.
    #[error("usage rollups are off: --usage-hourly-retention and --usage-daily-retention are 0")]
    Off,
}

#[derive(Debug)]
struct Shared {
    store: RedisStore,
    /// This replica's name, unique per process start: batch ids.
    replica: String,
    /// Batches drained and not yet known to be added, oldest first, each
    /// under the id it was first tried with. The lock makes flushes one at
    /// a time.
    pending: Mutex<(u64, VecDeque<Batch>)>,
}

#[derive(Debug)]
struct Batch {
    id: String,
    rows: Vec<Counts>,
}

// === impl Rollups ===

impl Rollups {
    /// Rollups kept in this process.
    pub fn local(retention: Retention) -> Self {
        Self {
            table: Usage::new(retention),
            shared: None,
            on: true,
        }
    }

    /// No rollups: adds are ignored and exports refused.
    pub fn off() -> Self {
        Self {
            table: Usage::new(Retention::default()),
            shared: None,
            on: false,
        }
    }

    /// Whether usage is kept at all.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Rollups shared through `store` by replicas; `replica` names this one.
    pub fn shared(retention: Retention, store: RedisStore, replica: String) -> Self {
        Self {
            table: Usage::new(retention),
            shared: Some(Shared {
                store,
                replica,
                pending: Mutex::new((0, VecDeque::new())),
            }),
            on: true,
        }
    }

    /// Whether they live in Redis (else in this process, saved beside the
    /// state file).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The table in this process: all of the usage, or (shared) what is not
    /// flushed yet.
    pub fn table(&self) -> &Usage {
        &self.table
    }

    /// Adds one decision's usage of one unit at `now`.
    pub fn add(&self, now: Nanos, used: &Used<'_>) {
        if self.on {
            self.table.add(now, used);
        }
    }

    /// Drops what is past the retention at `now` (Redis expires its own).
    pub fn prune(&self, now: Nanos) {
        self.table.prune(now);
    }

    /// Shared: adds this replica's buffer to Redis, and how many rows it
    /// drained from the buffer; in memory, nothing to do.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let Some(shared) = &self.shared else {
            return Ok(0);
        };
        let mut pending = shared.pending.lock().await;
        let (seq, batches) = &mut *pending;
        let kept = [Granularity::Hour, Granularity::Day].map(|g| self.table.kept(g));
        let expires = |table: Table, period: u64| {
            let (len, kept) = match table {
                Table::Hour => (HOUR, kept[0]),
                Table::Day => (DAY, kept[1]),
            };
            // Far past any retention a flag can ask for, and within what
            // EXPIREAT takes.
            (period + 1)
                .saturating_mul(len / 1_000_000_000)
                .saturating_add(kept.as_secs())
                .min(MAX_EXPIRY)
        };
        // What failed before goes first, under the ids it was tried with
        // (Redis may have added it already); until it is in, new usage
        // waits in the table, where it merges, rather than piling up here.
        send(&shared.store, batches, expires).await?;
        let drained = self.table.drain();
        let rows = drained.len();
        let mut drained = drained.into_iter().map(counts).peekable();
        while drained.peek().is_some() {
            // A batch names at most GROUPS_AT_ONCE accounts and periods.
            let rows: Vec<Counts> = drained.by_ref().take(GROUPS_AT_ONCE).collect();
            *seq += 1;
            let id = format!("{}:{seq}", shared.replica);
            batches.push_back(Batch { id, rows });
        }
        send(&shared.store, batches, expires).await?;
        Ok(rows)
    }

    /// Rows whose period starts in `[from, to)`, at `granularity`, for
    /// `account` (all when `None`), sorted by period, account, subject and
    /// unit; see [`Usage::export`]. Shared, this replica flushes first and
    /// the sums of every replica are read from Redis, up to the period of
    /// `now` (none later holds anything).
    pub async fn export(
        &self,
        from: Nanos,
        to: Nanos,
        granularity: Granularity,
        account: Option<&str>,
        now: Nanos,
    ) -> Result<Vec<UsageRow>, RollupError> {
        if !self.on {
            return Err(RollupError::Off);
        }
        let Some(shared) = &self.shared else {
            return Ok(self.table.export(from, to, granularity, account)?);
        };
        let Some([lo, hi]) = self.table.periods(from, to, granularity)? else {
            return Ok(Vec::new());
        };
        self.flush().await?;
        let (table, len) = match granularity {
            Granularity::Hour => (Table::Hour, HOUR),
            Granularity::Day | Granularity::Month => (Table::Day, DAY),
        };
        let hi = hi.min(now / len + 1);
        let read = shared.store.read_usage(table, lo..hi, account).await?;
        // Summed (months from days) and sorted as a local export is.
        let sums = Usage::new(Retention {
            hourly: Duration::MAX,
            daily: Duration::MAX,
        });
        for c in &read {
            let used = Used {
                account: &c.account,
                subject: &c.subject,
                unit: &c.unit,
                admitted: c.counts[0],
                recorded: c.counts[1],
                refused: c.counts[2],
            };
            sums.add(c.period * len, &used);
        }
        Ok(sums.export(from, to, granularity, account)?)
    }
}

/// Sends `batches` to Redis in order, each under its id, dropping each once
/// it is in; the first failure leaves it and those after it for a retry.
async fn send(
    store: &RedisStore,
    batches: &mut VecDeque<Batch>,
    expires: impl Fn(Table, u64) -> u64 + Copy,
) -> Result<(), StoreError> {
    while let Some(batch) = batches.front() {
        store.add_usage(&batch.id, &batch.rows, expires).await?;
        batches.pop_front();
    }
    Ok(())
}

/// A drained row as Redis keeps it.
fn counts(row: UsageRow) -> Counts {
    let (table, len) = match row.granularity {
        Granularity::Hour => (Table::Hour, HOUR),
        _ => (Table::Day, DAY),
    };
    Counts {
        table,
        period: row.period_start / len,
        account: row.account,
        subject: row.subject,
        unit: row.unit,
        counts: [row.admitted, row.recorded, row.refused],
    }
}
