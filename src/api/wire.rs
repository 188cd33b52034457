//! A decision encoded straight from the domain type: the bytes of
//! `tollgate.v1.Decision`, without building the generated message first.
//!
//! Building `pb::Decision` copies every limit's name, unit and class into
//! new strings and every time into a message, only to encode and drop them:
//! callgrind put that at ~5,000 instructions of a three-limit `Consume`,
//! and prost's encode of the result at ~2,400 more. [`WireDecision`] writes the
//! same fields, in the same order, with the same defaults left out, from
//! the decision as it is (a test checks the bytes are prost's).

use prost::bytes::{Buf, BufMut};
use prost::encoding::{
    DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len, skip_field,
};

use super::convert;
use crate::engine::Nanos;
use crate::engine::clock::SECOND;
use crate::limiter::{Decision, LimitStatus};

/// A decision as `tollgate.v1.Decision` on the wire (encode only).
#[derive(Debug)]
pub struct WireDecision(Decision);

// === impl WireDecision ===

impl WireDecision {
    /// `decision`, its headers in the order the map field sends them: by
    /// name (the limiter names each header once).
    pub fn new(mut decision: Decision) -> Self {
        decision.headers.sort_unstable_by_key(|(name, _)| *name);
        Self(decision)
    }
}

impl prost::Message for WireDecision {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        let d = &self.0;
        put_varint(1, convert::verdict(d.verdict) as u64, buf);
        put_str(2, &d.plan, buf);
        put_str(3, d.class.as_deref().unwrap_or_default(), buf);
        for l in &d.limits {
            encode_key(4, WireType::LengthDelimited, buf);
            encode_varint(limit_len(l) as u64, buf);
            put_limit(l, buf);
        }
        if let Some(wait) = d.retry_after {
            put_time(5, wait, buf);
        }
        for (k, v) in &d.headers {
            encode_key(6, WireType::LengthDelimited, buf);
            encode_varint(entry_len(k, v) as u64, buf);
            put_str(1, k, buf);
            put_str(2, v, buf);
        }
        put_str(7, &d.reason, buf);
        if let Some((id, expires_at)) = &d.reservation {
            encode_key(8, WireType::LengthDelimited, buf);
            encode_varint(reservation_len(id, *expires_at) as u64, buf);
            put_str(1, id, buf);
            put_time(2, *expires_at, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Sent, never received.
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let d = &self.0;
        varint_len(1, convert::verdict(d.verdict) as u64)
            + str_len(2, &d.plan)
            + str_len(3, d.class.as_deref().unwrap_or_default())
            + d.limits
                .iter()
                .map(|l| delimited_len(4, limit_len(l)))
                .sum::<usize>()
            + d.retry_after.map_or(0, |w| delimited_len(5, time_len(w)))
            + d.headers
                .iter()
                .map(|(k, v)| delimited_len(6, entry_len(k, v)))
                .sum::<usize>()
            + str_len(7, &d.reason)
            + d.reservation
                .as_ref()
                .map_or(0, |(id, at)| delimited_len(8, reservation_len(id, *at)))
    }

    fn clear(&mut self) {
        self.0.limits.clear();
        self.0.headers.clear();
        self.0.reason.clear();
    }
}

/// `tollgate.v1.LimitStatus`, as `convert::limit_status` fills it.
fn put_limit(l: &LimitStatus, buf: &mut impl BufMut) {
    let unlimited = l.unlimited();
    put_str(1, &l.limit.name, buf);
    put_str(2, &l.limit.unit, buf);
    put_varint(3, l.amount(), buf);
    if !unlimited {
        // optional: sent even when 0.
        encode_key(4, WireType::Varint, buf);
        encode_varint(l.remaining, buf);
    }
    if l.window() > 0 {
        put_time(5, l.window(), buf);
    }
    if !unlimited {
        put_time(6, l.reset_at, buf);
    }
    put_varint(7, u64::from(unlimited), buf);
    put_str(8, l.limit.class.as_deref().unwrap_or_default(), buf);
    put_varint(9, algorithm(l), buf);
    put_varint(10, u64::from(l.limit.shadow), buf);
    put_varint(11, u64::from(l.limit.shadow && l.denied), buf);
}

fn limit_len(l: &LimitStatus) -> usize {
    let unlimited = l.unlimited();
    str_len(1, &l.limit.name)
        + str_len(2, &l.limit.unit)
        + varint_len(3, l.amount())
        + if unlimited {
            0
        } else {
            key_len(4) + encoded_len_varint(l.remaining)
        }
        + if l.window() > 0 {
            delimited_len(5, time_len(l.window()))
        } else {
            0
        }
        + if unlimited {
            0
        } else {
            delimited_len(6, time_len(l.reset_at))
        }
        + varint_len(7, u64::from(unlimited))
        + str_len(8, l.limit.class.as_deref().unwrap_or_default())
        + varint_len(9, algorithm(l))
        + varint_len(10, u64::from(l.limit.shadow))
        + varint_len(11, u64::from(l.limit.shadow && l.denied))
}

fn algorithm(l: &LimitStatus) -> u64 {
    l.algorithm().map_or(
        crate::proto::tollgate::v1::Algorithm::Unspecified,
        convert::algorithm,
    ) as u64
}

/// `tollgate.v1.Reservation`: the id 1, the expiry 2 (always sent).
fn reservation_len(id: &str, expires_at: Nanos) -> usize {
    str_len(1, id) + delimited_len(2, time_len(expires_at))
}

/// A map entry: key 1, value 2, empty ones left out (as prost does).
fn entry_len(k: &str, v: &str) -> usize {
    str_len(1, k) + str_len(2, v)
}

/// A `Duration` or `Timestamp` of `n` nanoseconds: seconds 1, nanos 2.
fn put_time(tag: u32, n: Nanos, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(time_len(n) as u64, buf);
    put_varint(1, n / SECOND, buf);
    put_varint(2, n % SECOND, buf);
}

fn time_len(n: Nanos) -> usize {
    varint_len(1, n / SECOND) + varint_len(2, n % SECOND)
}

fn put_varint(tag: u32, v: u64, buf: &mut impl BufMut) {
    if v != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(v, buf);
    }
}

fn varint_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v)
    }
}

fn put_str(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(s.len() as u64, buf);
        buf.put_slice(s.as_bytes());
    }
}

fn str_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        delimited_len(tag, s.len())
    }
}

fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// Every kind of answer encodes to the bytes prost gives the
    /// generated message.
    #[tokio::test]
    async fn answers_encode_as_the_generated_decision_does() {
        for d in crate::limiter::samples::every_kind().await {
            let ours = WireDecision::new(d.clone());
            let bytes = ours.encode_to_vec();
            assert_eq!(bytes.len(), ours.encoded_len(), "{d:?}");
            assert_eq!(bytes, convert::decision(d).encode_to_vec());
        }
    }
}
