//! Usage rollups shared by replicas: each replica adds what it counted, in
//! batches that apply once however often they are retried, and any replica
//! reads the sums.
//!
//! Layout, all under the hash tag `{usage}` (one slot in a Cluster):
//! - `tg:{usage}:h:<hour>` and `tg:{usage}:d:<day>`: the set of accounts
//!   with usage in that period (hours and days since the Unix epoch);
//! - `tg:{usage}:h:<hour>:<account>` (and `d:`): a hash of the account's
//!   counts in the period, one field per column and series: the column
//!   (`a` admitted, `r` recorded, `x` refused), the subject's length, `:`,
//!   the subject, then the unit (`a5:alicetokens`), so no name can be
//!   mistaken for another;
//! - `tg:{usage}:batch:<id>`: a batch already added (`usage.lua`).
//!
//! Every key expires when its period leaves the retention.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::LazyLock;
use std::time::Duration;

use super::RedisStore;
use crate::storage::StoreError;

/// Adds a batch once; see the script's header.
static ADD: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("usage.lua")));

/// How long a batch's marker outlives it: retries come within this.
const MARKER_TTL: Duration = Duration::from_secs(86_400);

/// Accounts read per pipelined call.
const READ_AT_ONCE: usize = 500;

/// Groups (account and period) added per script call.
pub const GROUPS_AT_ONCE: usize = 1_000;

/// A rollup table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    /// Hours since the epoch.
    Hour,
    /// Days since the epoch.
    Day,
}

/// One series' counts in one period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Its table.
    pub table: Table,
    /// Its period in that table.
    pub period: u64,
    /// The account.
    pub account: String,
    /// The subject.
    pub subject: String,
    /// The unit.
    pub unit: String,
    /// Admitted, recorded and refused.
    pub counts: [u64; 3],
}

const COLUMNS: [char; 3] = ['a', 'r', 'x'];

// === impl Table ===

impl Table {
    fn letter(self) -> char {
        match self {
            Self::Hour => 'h',
            Self::Day => 'd',
        }
    }

    /// The set of the accounts with usage in `period`.
    fn accounts(self, period: u64) -> String {
        format!("tg:{{usage}}:{}:{period}", self.letter())
    }

    /// An account's counts in `period`.
    fn hash(self, period: u64, account: &str) -> String {
        format!("tg:{{usage}}:{}:{period}:{account}", self.letter())
    }
}

fn field(column: usize, subject: &str, unit: &str) -> String {
    format!("{}{}:{subject}{unit}", COLUMNS[column], subject.len())
}

/// `(column, subject, unit)` of a field; `None` for one this code did not write.
fn parse_field(f: &str) -> Option<(usize, &str, &str)> {
    let column = COLUMNS.iter().position(|&c| f.starts_with(c))?;
    let (len, rest) = f[1..].split_once(':')?;
    let len: usize = len.parse().ok()?;
    let subject = rest.get(..len)?;
    Some((column, subject, &rest[len..]))
}

// === impl RedisStore ===

impl RedisStore {
    /// Adds `rows` (at most [`GROUPS_AT_ONCE`] accounts and periods) as the
    /// batch `id`, unless a call with this `id` added them already; the keys
    /// expire at `expires(table, period)` (Unix seconds). Whether this call
    /// added them.
    pub async fn add_usage(
        &self,
        id: &str,
        rows: &[Counts],
        expires: impl Fn(Table, u64) -> u64,
    ) -> Result<bool, StoreError> {
        // Each account's fields in each period, and their increments.
        type Fields = Vec<(String, u64)>;
        let mut groups: BTreeMap<(Table, u64, &str), Fields> = BTreeMap::new();
        for r in rows {
            let group = groups.entry((r.table, r.period, &r.account)).or_default();
            for (column, &n) in r.counts.iter().enumerate() {
                if n > 0 {
                    group.push((field(column, &r.subject, &r.unit), n));
                }
            }
        }
        let mut call = ADD.prepare_invoke();
        call.key(format!("tg:{{usage}}:batch:{id}"))
            .arg(u64::try_from(MARKER_TTL.as_millis()).unwrap_or(u64::MAX))
            .arg(groups.len());
        for ((table, period, account), fields) in &groups {
            call.key(table.accounts(*period))
                .key(table.hash(*period, account))
                .arg(expires(*table, *period))
                .arg(*account)
                .arg(fields.len());
            for (field, n) in fields {
                // HINCRBY takes a signed 64-bit increment.
                call.arg(field).arg(i64::try_from(*n).unwrap_or(i64::MAX));
            }
        }
        let added: i64 = self
            .bounded(async { call.invoke_async(&mut self.connection().await?).await })
            .await?;
        Ok(added == 1)
    }

    /// Every series' counts in the periods `periods` of `table`, of
    /// `account` alone when given.
    pub async fn read_usage(
        &self,
        table: Table,
        periods: Range<u64>,
        account: Option<&str>,
    ) -> Result<Vec<Counts>, StoreError> {
        let mut out = Vec::new();
        for period in periods {
            let accounts: Vec<String> = match account {
                Some(a) => vec![a.to_owned()],
                None => {
                    let mut cmd = redis::cmd("SMEMBERS");
                    cmd.arg(table.accounts(period));
                    self.query(cmd).await?
                }
            };
            for accounts in accounts.chunks(READ_AT_ONCE) {
                let mut pipe = redis::pipe();
                for a in accounts {
                    pipe.cmd("HGETALL").arg(table.hash(period, a));
                }
                let hashes: Vec<std::collections::HashMap<String, u64>> = self
                    .bounded(async { pipe.query_async(&mut self.connection().await?).await })
                    .await?;
                for (account, fields) in accounts.iter().zip(hashes) {
                    let mut series: BTreeMap<(&str, &str), [u64; 3]> = BTreeMap::new();
                    for (f, n) in &fields {
                        if let Some((column, subject, unit)) = parse_field(f) {
                            series.entry((subject, unit)).or_default()[column] = *n;
                        }
                    }
                    out.extend(series.into_iter().map(|((subject, unit), counts)| Counts {
                        table,
                        period,
                        account: account.clone(),
                        subject: subject.to_owned(),
                        unit: unit.to_owned(),
                        counts,
                    }));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_reads_back_as_written_whatever_the_names_hold() {
        for (subject, unit) in [
            ("alice", "tokens"),
            ("", "requests"),
            ("a:5:b", "x"),
            ("12", ":"),
            ("ключ", "токены"),
        ] {
            for column in 0..3 {
                let f = field(column, subject, unit);
                assert_eq!(parse_field(&f), Some((column, subject, unit)), "{f}");
            }
        }
        assert_eq!(parse_field("q1:ab"), None);
        assert_eq!(parse_field("a9:ab"), None);
    }
}
