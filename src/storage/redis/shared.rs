//! Plans and overrides shared through Redis, and the notices that keep every
//! replica's caches and watchers current.
//!
//! The admin API writes an account's assignment (`tg:assignments`, a hash)
//! or overrides (`tg:overrides`, JSON per account) to Redis, then publishes
//! the account on [`CHANGED`]; every replica re-reads that account, drops its
//! cached plan and tells its watchers. A full re-read every
//! [`RESYNC_EVERY`] is the safety net for a missed message. Consumption that
//! counted is published on [`CONSUMED`] by the decision script itself, only
//! for accounts some replica watches (a marker key under the account's hash
//! tag, refreshed while watchers last).

use std::collections::HashMap;
use std::time::Duration;

use super::{RedisStore, StoreError};
use crate::plans::overrides::Override;
use crate::plans::runtime::Maps;

/// Channel of consumption notices: `replica\nLEN\nSUBJECTACCOUNT`, where
/// `LEN` is the subject's length in bytes (subjects may hold any character).
pub const CONSUMED: &str = "tollgate:consumed";
/// Channel of account changes: `replica\naccount\nplan|override`.
pub const CHANGED: &str = "tollgate:changed";
/// How often every replica re-reads all assignments and overrides.
pub const RESYNC_EVERY: Duration = Duration::from_secs(10);
/// How long a watch marker lives unless refreshed.
pub const MARKER_TTL: Duration = Duration::from_secs(30);

const ASSIGNMENTS: &str = "tg:assignments";
const OVERRIDES: &str = "tg:overrides";

/// What changed about an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Its plan.
    Plan,
    /// Its overrides.
    Override,
}

// === impl RedisStore ===

impl RedisStore {
    /// Every assignment and override.
    pub async fn load_runtime(&self) -> Result<Maps, StoreError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(ASSIGNMENTS);
        let assignments: HashMap<String, String> = self.query(cmd).await?;
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(OVERRIDES);
        let raw: HashMap<String, String> = self.query(cmd).await?;
        let overrides = raw
            .into_iter()
            .filter_map(|(k, v)| match serde_json::from_str::<Vec<Override>>(&v) {
                Ok(list) => Some((k, list)),
                Err(e) => {
                    tracing::warn!(account = %k, error = %e, "unreadable overrides in redis skipped");
                    None
                }
            })
            .collect();
        Ok(Maps {
            assignments,
            overrides,
        })
    }

    /// The assignment and overrides of one account.
    pub async fn load_account(
        &self,
        account: &str,
    ) -> Result<(Option<String>, Vec<Override>), StoreError> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(ASSIGNMENTS).arg(account);
        let plan: Option<String> = self.query(cmd).await?;
        let mut cmd = redis::cmd("HGET");
        cmd.arg(OVERRIDES).arg(account);
        let raw: Option<String> = self.query(cmd).await?;
        let overrides = raw
            .and_then(|r| serde_json::from_str(&r).ok())
            .unwrap_or_default();
        Ok((plan, overrides))
    }

    /// Sets (or clears) the plan of `account` for every replica.
    pub async fn put_assignment(
        &self,
        account: &str,
        plan: Option<&str>,
        replica: &str,
    ) -> Result<(), StoreError> {
        let cmd = match plan {
            Some(p) => {
                let mut c = redis::cmd("HSET");
                c.arg(ASSIGNMENTS).arg(account).arg(p);
                c
            }
            None => {
                let mut c = redis::cmd("HDEL");
                c.arg(ASSIGNMENTS).arg(account);
                c
            }
        };
        self.query::<()>(cmd).await?;
        self.announce(account, Change::Plan, replica).await
    }

    /// Replaces the overrides of `account` for every replica.
    pub async fn put_overrides(
        &self,
        account: &str,
        list: &[Override],
        replica: &str,
    ) -> Result<(), StoreError> {
        let mut cmd;
        if list.is_empty() {
            cmd = redis::cmd("HDEL");
            cmd.arg(OVERRIDES).arg(account);
        } else {
            cmd = redis::cmd("HSET");
            let json = serde_json::to_string(list).expect("overrides serialize");
            cmd.arg(OVERRIDES).arg(account).arg(json);
        }
        self.query::<()>(cmd).await?;
        self.announce(account, Change::Override, replica).await
    }

    async fn announce(
        &self,
        account: &str,
        change: Change,
        replica: &str,
    ) -> Result<(), StoreError> {
        let what = match change {
            Change::Plan => "plan",
            Change::Override => "override",
        };
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(CHANGED)
            .arg(format!("{replica}\n{account}\n{what}"));
        self.query::<()>(cmd).await
    }
}

/// A notice, parsed: who sent it and what it says.
#[derive(Debug, PartialEq, Eq)]
pub enum Notice {
    /// `subject` of `account` consumed.
    Consumed {
        /// Sender.
        replica: String,
        /// Who.
        subject: String,
        /// Whose account.
        account: String,
    },
    /// `account` changed.
    Changed {
        /// Sender.
        replica: String,
        /// Which.
        account: String,
        /// What.
        change: Change,
    },
}

/// Parses a message of [`CONSUMED`] or [`CHANGED`].
pub fn parse(channel: &str, payload: &str) -> Option<Notice> {
    let mut parts = payload.splitn(3, '\n');
    let (replica, a, b) = (parts.next()?, parts.next()?, parts.next()?);
    match channel {
        CONSUMED => {
            let len: usize = a.parse().ok()?;
            let (subject, account) = (b.get(..len)?, b.get(len..)?);
            Some(Notice::Consumed {
                replica: replica.into(),
                subject: subject.into(),
                account: account.into(),
            })
        }
        CHANGED => Some(Notice::Changed {
            replica: replica.into(),
            account: a.into(),
            change: if b == "plan" {
                Change::Plan
            } else {
                Change::Override
            },
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_carry_any_subject() {
        let n = parse(CONSUMED, "r1\n5\na\nb:cacct");
        assert_eq!(
            n,
            Some(Notice::Consumed {
                replica: "r1".into(),
                subject: "a\nb:c".into(),
                account: "acct".into()
            })
        );
        assert_eq!(parse(CONSUMED, "r1\n9\nshort"), None);
    }
}
