//! Reservations shared by replicas (`reservations.lua`): reserved, settled
//! and expired by any replica, each in one script call.
//!
//! Layout, under the account's hash tag (the slot of its counters):
//! - `tg:{TAG}:rsv:<n>`: one reservation, a hash (see the script), kept
//!   until its expiry plus [`GRACE`];
//! - `tg:{TAG}:rsvs`: the account's reservations by expiry.
//!
//! Outside a Cluster, `tg:{rsv}:due` holds every account with reservations
//! by its next expiry, so any replica expires any account's; in a Cluster
//! (where it would sit in another slot) an account's reservations are
//! expired by the replicas that made them, and by its next reservation.
//!
//! A reservation's id carries its hash tag (`rsv_<n>.<tag in hex>`), so a
//! settle on any replica finds it in one call.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use smallvec::SmallVec;

use super::millis::Millis;
use super::{Counter, RedisStore, letter};
use crate::engine::algorithm::Charged;
use crate::engine::{ItemStatus, Nanos, Outcome};
use crate::storage::StoreError;

/// The script: the algorithms, then the reservations' operations.
static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(concat!(
        include_str!("steps.lua"),
        include_str!("reservations.lua")
    ))
});

/// How long a reservation's record outlives its expiry, so a replica
/// expiring it late still finds what it held.
pub const GRACE: std::time::Duration = std::time::Duration::from_secs(86_400);

/// The accounts with reservations, by next expiry (outside a Cluster).
const DUE: &str = "tg:{rsv}:due";

/// Separates the fields of a record's texts.
const US: char = '\u{1f}';

/// One counter of a reservation, as the script takes it.
#[derive(Debug, Clone)]
pub struct Hold {
    /// The counter.
    pub counter: Counter,
    /// The unit it counts, when the reservation holds it (`None`: counted,
    /// not held, as a shadow limit).
    pub unit: Option<String>,
}

/// A reservation settled (or expired), as the store tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// Its id.
    pub id: String,
    /// Who made it.
    pub subject: String,
    /// Whose plan it counted under.
    pub account: String,
    /// The class of the request it was made for, if any.
    pub class: Option<String>,
    /// What was reserved, per unit.
    pub estimate: BTreeMap<String, u64>,
    /// What was billed, per unit.
    pub actual: BTreeMap<String, u64>,
}

/// What settling found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Settled now.
    Done(Closed),
    /// Settled before, for the same amounts: nothing changed now.
    Again(Closed),
    /// Unknown, or expired.
    Gone,
    /// Settled before, for these other amounts.
    Conflict(BTreeMap<String, u64>),
}

/// What a reserve did: Redis's time, the outcome, its expiry, and the
/// account's reservations it expired on the way.
pub type Reserved = (Nanos, Outcome, Nanos, Vec<Closed>);

// === impl RedisStore ===

impl RedisStore {
    /// The id of a new reservation of `tag`.
    pub fn reservation_id(tag: &str) -> String {
        id_of(&format!("rsv_{:032x}", fastrand::u128(..)), tag)
    }

    /// Gives back what each counter's `Charged` counted; Redis's time.
    pub async fn refund(&self, items: &[(Counter, Charged)]) -> Result<Nanos, StoreError> {
        let mut call = SCRIPT.prepare_invoke();
        call.arg("refund");
        for (c, counted) in items {
            call.key(&c.key)
                .arg(letter(c.algorithm))
                .arg(c.amount)
                .arg(Millis::window(c.window))
                .arg(counted.units)
                .arg(Millis::floor(counted.at))
                .arg(Millis::floor(counted.free_at));
        }
        let reply: Vec<i64> = self.invoke(&call).await?;
        let now = reply.first().copied().ok_or_else(bad_reply)?;
        Ok(Millis::from_reply(now).nanos())
    }

    /// Reserves: counts `holds` as one Consume, by `deadline` (Redis
    /// milliseconds, 0: none) and when admitted keeps the reservation `id`
    /// of `tag` until `ttl` from now.
    #[allow(clippy::too_many_arguments)]
    pub async fn reserve(
        &self,
        tag: &str,
        id: &str,
        subject: &str,
        account: &str,
        class: Option<&str>,
        estimate: &BTreeMap<String, u64>,
        holds: &[Hold],
        ttl: Nanos,
        deadline: u64,
    ) -> Result<Reserved, StoreError> {
        let n = id.split_once('.').map_or(id, |(n, _)| n);
        let mut call = SCRIPT.prepare_invoke();
        call.key(format!("tg:{{{tag}}}:rsv:{n}"))
            .key(index(tag))
            .key(self.due(tag))
            .arg("reserve")
            .arg(n)
            .arg(format!("tg:{{{tag}}}:rsv:"))
            .arg(match class {
                Some(class) => format!("{subject}{US}{account}{US}{class}"),
                None => format!("{subject}{US}{account}"),
            })
            .arg(units_text(estimate))
            .arg(Millis::window(ttl))
            .arg(GRACE.as_millis() as u64)
            .arg(deadline)
            .arg(holds.len())
            .arg(tag);
        for h in holds {
            let c = &h.counter;
            call.key(&c.key)
                .arg(letter(c.algorithm))
                .arg(c.amount)
                .arg(c.window_arg())
                .arg(c.cost)
                .arg(h.unit.as_deref().unwrap_or(""));
        }
        let reply: Vec<redis::Value> = self.invoke(&call).await?;
        let int = |i: usize| -> Result<i64, StoreError> {
            match reply.get(i) {
                Some(redis::Value::Int(v)) => Ok(*v),
                _ => Err(bad_reply()),
            }
        };
        let ms = |v: i64| Millis::from_reply(v).nanos();
        let (now, counted, expires) = (ms(int(0)?), int(1)? == 1, ms(int(2)?));
        let mut items: SmallVec<[ItemStatus; 4]> = SmallVec::new();
        for i in 0..holds.len() {
            let (left, wait, free) = (int(3 + 3 * i)?, int(4 + 3 * i)?, int(5 + 3 * i)?);
            if wait == -2 {
                return Err(StoreError::Late);
            }
            items.push(ItemStatus {
                fits: wait == 0,
                too_large: wait < 0,
                remaining: u64::try_from(left).unwrap_or(0),
                wait: ms(wait),
                free_at: ms(free),
            });
        }
        let expired = closed_list(tag, &reply[3 + 3 * holds.len()..])?;
        let outcome = Outcome {
            fits: items.iter().all(|i| i.fits),
            counted,
            items,
        };
        Ok((now, outcome, expires, expired))
    }

    /// Settles reservation `id` for `actual` (`None`: released).
    pub async fn settle(
        &self,
        id: &str,
        actual: Option<&BTreeMap<String, u64>>,
    ) -> Result<Settled, StoreError> {
        let Some((n, tag)) = parse_id(id) else {
            return Ok(Settled::Gone);
        };
        let mut call = SCRIPT.prepare_invoke();
        call.key(format!("tg:{{{tag}}}:rsv:{n}"))
            .key(index(&tag))
            .arg("settle");
        match actual {
            None => call.arg("release"),
            Some(actual) => call.arg("settle").arg(units_text(actual)),
        };
        let reply: Vec<String> = self.invoke(&call).await?;
        match reply.first().map(String::as_str) {
            Some("gone") => Ok(Settled::Gone),
            Some("conflict") => Ok(Settled::Conflict(units_of(
                reply.get(1).ok_or_else(bad_reply)?,
            )?)),
            Some(what @ ("ok" | "same")) if reply.len() == 4 => {
                let (subject, account, class) = head(&reply[1])?;
                let done = match what {
                    "ok" => Settled::Done,
                    _ => Settled::Again,
                };
                Ok(done(Closed {
                    id: id.to_owned(),
                    subject,
                    account,
                    class,
                    estimate: units_of(&reply[2])?,
                    actual: units_of(&reply[3])?,
                }))
            }
            _ => Err(bad_reply()),
        }
    }

    /// Expires the reservations of `tag` due by Redis's now: those never
    /// settled, settled at their estimate (slots in flight given back).
    pub async fn expire_reservations(&self, tag: &str) -> Result<Vec<Closed>, StoreError> {
        let mut call = SCRIPT.prepare_invoke();
        call.key(index(tag))
            .key(self.due(tag))
            .arg("expire")
            .arg(format!("tg:{{{tag}}}:rsv:"))
            .arg(tag);
        let reply: Vec<redis::Value> = self.invoke(&call).await?;
        closed_list(tag, &reply)
    }

    /// The accounts with reservations due by Redis's now (outside a
    /// Cluster; none in one).
    pub async fn due_reservations(&self) -> Result<Vec<String>, StoreError> {
        if self.is_cluster() {
            return Ok(Vec::new());
        }
        let script = redis::Script::new(
            "local t = redis.call('TIME') \
             local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
             return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)",
        );
        let mut call = script.prepare_invoke();
        call.key(DUE);
        self.invoke(&call).await
    }

    /// The due set, or (in a Cluster, where it would sit in another slot)
    /// the account's index again, which the script reads as none.
    fn due(&self, tag: &str) -> String {
        if self.is_cluster() {
            index(tag)
        } else {
            DUE.to_owned()
        }
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        call: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.bounded(async { call.invoke_async(&mut self.connection().await?).await })
            .await
    }
}

/// The index of `tag`'s reservations.
fn index(tag: &str) -> String {
    format!("tg:{{{tag}}}:rsvs")
}

/// Reservation `n`'s id: its number, `.`, then its hash tag in hex.
fn id_of(n: &str, tag: &str) -> String {
    use std::fmt::Write;
    let mut id = format!("{n}.");
    for b in tag.bytes() {
        let _ = write!(id, "{b:02x}");
    }
    id
}

/// The number and the hash tag of reservation `id`.
fn parse_id(id: &str) -> Option<(&str, String)> {
    let (n, hex) = id.split_once('.')?;
    if !n.starts_with("rsv_") || hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    Some((n, String::from_utf8(bytes?).ok()?))
}

fn units_text(units: &BTreeMap<String, u64>) -> String {
    let mut out = String::new();
    for (u, n) in units {
        if !out.is_empty() {
            out.push(US);
        }
        out.push_str(u);
        out.push(US);
        out.push_str(&n.to_string());
    }
    out
}

fn units_of(text: &str) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut out = BTreeMap::new();
    if text.is_empty() {
        return Ok(out);
    }
    let mut parts = text.split(US);
    while let Some(unit) = parts.next() {
        let n = parts
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(bad_reply)?;
        out.insert(unit.to_owned(), n);
    }
    Ok(out)
}

/// A record's head: subject US account, then US class when it has one.
fn head(text: &str) -> Result<(String, String, Option<String>), StoreError> {
    let (s, rest) = text.split_once(US).ok_or_else(bad_reply)?;
    let (a, class) = match rest.split_once(US) {
        Some((a, c)) => (a, Some(c.to_owned())),
        None => (rest, None),
    };
    Ok((s.to_owned(), a.to_owned(), class))
}

/// Expired reservations of `tag` as the script lists them: id, head,
/// estimate.
fn closed_list(tag: &str, values: &[redis::Value]) -> Result<Vec<Closed>, StoreError> {
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).map_err(|_| bad_reply()),
        _ => Err(bad_reply()),
    };
    let mut out = Vec::new();
    for chunk in values.chunks(3) {
        let [n, h, e] = chunk else {
            return Err(bad_reply());
        };
        let (subject, account, class) = head(&text(h)?)?;
        let estimate = units_of(&text(e)?)?;
        out.push(Closed {
            id: id_of(&text(n)?, tag),
            subject,
            account,
            class,
            actual: estimate.clone(),
            estimate,
        });
    }
    Ok(out)
}

fn bad_reply() -> StoreError {
    StoreError::Redis(redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected reply from the reservations script",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_carries_its_hash_tag() {
        let id = RedisStore::reservation_id("acme co");
        let (n, tag) = parse_id(&id).expect("parses");
        assert!(n.starts_with("rsv_") && n.len() == 36, "{n}");
        assert_eq!(tag, "acme co");
        assert_eq!(parse_id("rsv_x"), None);
        assert_eq!(parse_id("rsv_1.zz"), None);
    }

    #[test]
    fn units_read_back_as_written() {
        let units = BTreeMap::from([("tokens".to_owned(), 12), ("requests".to_owned(), 0)]);
        assert_eq!(units_of(&units_text(&units)).expect("parses"), units);
        assert!(units_of("").expect("empty").is_empty());
    }
}
