//! Plans and overrides shared through Redis, and the notices that keep every
//! replica's caches and watchers current.
//!
//! The admin API writes an account's assignment (`tg:assignments`, a hash)
//! or one override (`{tg:overrides}:a:<account>`, a hash of limit → JSON,
//! written by one script with the set `{tg:overrides}:accounts`) to Redis,
//! then publishes the account on [`CHANGED`]; every replica re-reads that
//! account, drops its cached plan and tells its watchers. One field per
//! limit, so concurrent edits of one account's limits on several replicas
//! all survive. The old layout (`tg:overrides`, a JSON list per account) is
//! still read, and an account moves out of it on its next edit; every key
//! shares the `tg:overrides` hash slot, so the script runs on a Cluster. A full re-read every
//! [`RESYNC_EVERY`] is the safety net for a missed message. Consumption that
//! counted is published on [`CONSUMED`] by the decision script itself, only
//! for accounts some replica watches (a marker key under the account's hash
//! tag, refreshed while watchers last).

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;
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
/// The old layout: account → JSON list of its overrides.
const LEGACY_OVERRIDES: &str = "tg:overrides";
/// The accounts that have overrides (in the new layout).
const OVERRIDE_ACCOUNTS: &str = "{tg:overrides}:accounts";

/// Sets or removes one override; see the script's header.
static EDIT_OVERRIDE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("override.lua")));

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
        // The old layout first: an account moves out of it before its new
        // hash changes, so nothing is missed between the two reads.
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(LEGACY_OVERRIDES);
        let legacy: HashMap<String, String> = self.query(cmd).await?;
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(OVERRIDE_ACCOUNTS);
        let accounts: Vec<String> = self.query(cmd).await?;
        let mut pipe = redis::pipe();
        for account in &accounts {
            pipe.cmd("HGETALL").arg(account_key(account));
        }
        let current: Vec<HashMap<String, String>> = if accounts.is_empty() {
            Vec::new()
        } else {
            self.bounded(async { pipe.query_async(&mut self.connection().await?).await })
                .await?
        };
        let mut current: HashMap<String, HashMap<String, String>> =
            accounts.into_iter().zip(current).collect();
        let mut overrides = HashMap::new();
        for account in legacy
            .keys()
            .chain(current.keys())
            .cloned()
            .collect::<Vec<_>>()
        {
            let list = merge(
                &account,
                legacy.get(&account).map(String::as_str),
                current.remove(&account).unwrap_or_default(),
            );
            if !list.is_empty() {
                overrides.insert(account, list);
            }
        }
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
        cmd.arg(LEGACY_OVERRIDES).arg(account);
        let legacy: Option<String> = self.query(cmd).await?;
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(account_key(account));
        let current: HashMap<String, String> = self.query(cmd).await?;
        Ok((plan, merge(account, legacy.as_deref(), current)))
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

    /// Sets the override of `account` on its limit for every replica,
    /// leaving its other limits' overrides as they are.
    pub async fn set_override(
        &self,
        account: &str,
        o: &Override,
        replica: &str,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(o).expect("an override serializes");
        self.edit_override(account, &o.limit, &json, replica)
            .await
            .map(drop)
    }

    /// Removes the override of `account` on `limit` for every replica;
    /// whether there was one.
    pub async fn remove_override(
        &self,
        account: &str,
        limit: &str,
        replica: &str,
    ) -> Result<bool, StoreError> {
        self.edit_override(account, limit, "", replica).await
    }

    /// Runs [`EDIT_OVERRIDE`]; `json` empty removes. Announces a change.
    async fn edit_override(
        &self,
        account: &str,
        limit: &str,
        json: &str,
        replica: &str,
    ) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(LEGACY_OVERRIDES).arg(account);
        let legacy: Option<String> = self.query(cmd).await?;
        let moved = legacy
            .as_deref()
            .and_then(|l| serde_json::from_str::<Vec<Override>>(l).ok());
        let mut call = EDIT_OVERRIDE.prepare_invoke();
        call.key(account_key(account))
            .key(OVERRIDE_ACCOUNTS)
            .key(LEGACY_OVERRIDES)
            .arg(account)
            .arg(limit)
            .arg(json);
        // An unreadable old value stays where it is, unread, as before.
        match &moved {
            Some(list) => {
                call.arg(legacy.as_deref().unwrap_or_default());
                for o in list {
                    call.arg(&o.limit)
                        .arg(serde_json::to_string(o).expect("an override serializes"));
                }
            }
            None => {
                call.arg("");
            }
        }
        let had: i64 = self
            .bounded(async { call.invoke_async(&mut self.connection().await?).await })
            .await?;
        let changed = !json.is_empty() || had == 1;
        if changed {
            self.announce(account, Change::Override, replica).await?;
        }
        Ok(had == 1)
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

/// The hash of `account`'s overrides, in the `tg:overrides` hash slot.
fn account_key(account: &str) -> String {
    format!("{{tg:overrides}}:a:{account}")
}

/// An account's overrides from both layouts, the new one winning per
/// limit, in limit order (so re-reads compare equal).
fn merge(account: &str, legacy: Option<&str>, current: HashMap<String, String>) -> Vec<Override> {
    let mut by_limit = BTreeMap::new();
    if let Some(raw) = legacy {
        match serde_json::from_str::<Vec<Override>>(raw) {
            Ok(list) => by_limit.extend(list.into_iter().map(|o| (o.limit.clone(), o))),
            Err(e) => {
                tracing::warn!(account, error = %e, "unreadable overrides in redis skipped")
            }
        }
    }
    for (limit, raw) in current {
        match serde_json::from_str::<Override>(&raw) {
            Ok(o) => {
                by_limit.insert(limit, o);
            }
            Err(e) => {
                tracing::warn!(account, limit, error = %e, "unreadable override in redis skipped")
            }
        }
    }
    by_limit.into_values().collect()
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
