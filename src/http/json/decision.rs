//! The hot path of `/v1/check`, `/v1/consume` and `/v1/record`, written by
//! hand: a `Decision` written as JSON, and a `LimitRequest` read from it,
//! without the reflective mapping ([`super::encode`], [`super::decode`])
//! that cost a third of the server's time on this path.
//!
//! Both are proven equal to the reflective mapping, which stays the
//! reference: the writer by a property test over arbitrary decisions and by
//! every kind of real decision; the reader accepts only a plain subset of
//! the mapping (a JSON object of the five fields by either name, strings,
//! 64-bit integers as numbers or canonical decimal strings) and says `None`
//! for anything else, which then goes through the reflective reader, so an
//! error names its field exactly as before.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::proto::tollgate::v1 as pb;

/// `d` as the protobuf JSON mapping writes it: fields in number order,
/// lowerCamelCase, defaults left out, enums by name, 64-bit integers as
/// strings, durations and timestamps as their strings.
pub fn encode_decision(d: &pb::Decision) -> Vec<u8> {
    let mut out = String::with_capacity(256 + 256 * d.limits.len());
    let mut o = Object::open(&mut out);
    let verdict = pb::Verdict::try_from(d.verdict).ok();
    o.enumeration("verdict", d.verdict, verdict.map(|v| v.as_str_name()));
    o.text("plan", &d.plan);
    o.text("class", &d.class);
    if !d.limits.is_empty() {
        o.key("limits");
        o.out.push('[');
        for (i, l) in d.limits.iter().enumerate() {
            if i > 0 {
                o.out.push(',');
            }
            limit_status(o.out, l);
        }
        o.out.push(']');
    }
    if let Some(r) = &d.retry_after {
        o.string("retryAfter", &r.to_string());
    }
    if !d.headers.is_empty() {
        o.key("headers");
        let mut h = Object::open(o.out);
        for (k, v) in &d.headers {
            h.string(k, v);
        }
        h.close();
    }
    o.text("reason", &d.reason);
    if let Some(r) = &d.reservation {
        o.key("reservation");
        let mut r_ = Object::open(o.out);
        r_.text("id", &r.id);
        if let Some(t) = &r.expires_at {
            r_.string("expiresAt", &t.to_string());
        }
        r_.close();
    }
    o.close();
    out.into_bytes()
}

fn limit_status(out: &mut String, l: &pb::LimitStatus) {
    let mut o = Object::open(out);
    o.text("name", &l.name);
    o.text("unit", &l.unit);
    if l.limit != 0 {
        o.raw_string("limit", l.limit);
    }
    if let Some(r) = l.remaining {
        o.raw_string("remaining", r);
    }
    if let Some(w) = &l.window {
        o.string("window", &w.to_string());
    }
    if let Some(t) = &l.reset_at {
        o.string("resetAt", &t.to_string());
    }
    if l.unlimited {
        o.raw("unlimited", "true");
    }
    o.text("class", &l.class);
    let algorithm = pb::Algorithm::try_from(l.algorithm).ok();
    o.enumeration("algorithm", l.algorithm, algorithm.map(|a| a.as_str_name()));
    if l.shadow {
        o.raw("shadow", "true");
    }
    if l.would_deny {
        o.raw("wouldDeny", "true");
    }
    o.close();
}

/// A JSON object being written.
struct Object<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Object<'a> {
    fn open(out: &'a mut String) -> Self {
        out.push('{');
        Self { out, first: true }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        escape(self.out, key);
        self.out.push(':');
    }

    /// A string field, left out when empty (a proto3 default).
    fn text(&mut self, key: &str, value: &str) {
        if !value.is_empty() {
            self.string(key, value);
        }
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        escape(self.out, value);
    }

    /// An enum field: its value's name, or its number when it has none;
    /// left out at 0 (a proto3 default).
    fn enumeration(&mut self, key: &str, number: i32, name: Option<&str>) {
        match name {
            _ if number == 0 => {}
            Some(name) => self.string(key, name),
            None => self.raw(key, &number.to_string()),
        }
    }

    fn raw(&mut self, key: &str, value: &str) {
        self.key(key);
        self.out.push_str(value);
    }

    /// A 64-bit integer, as a string.
    fn raw_string(&mut self, key: &str, value: u64) {
        self.key(key);
        let _ = write!(self.out, "\"{value}\"");
    }

    fn close(self) {
        self.out.push('}');
    }
}

/// `s` as a JSON string, escaped as serde_json escapes it.
fn escape(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escaped);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// `body` read as a `LimitRequest`, when it is in the plain subset this
/// reader takes; `None` sends it to the reflective reader.
pub fn decode_limit_request(body: &[u8]) -> Option<pb::LimitRequest> {
    let plain: Plain = serde_json::from_slice(body).ok()?;
    Some(pb::LimitRequest {
        subject: plain.subject.unwrap_or_default(),
        account: plain.account.unwrap_or_default(),
        resource: plain.resource.unwrap_or_default(),
        cost: plain
            .cost
            .map(|Entries(c)| c.into_iter().map(|(k, Uint64(v))| (k, v)).collect())
            .unwrap_or_default(),
        attributes: plain.attributes.map(|Entries(a)| a).unwrap_or_default(),
        reserve: None,
    })
}

/// The plain subset of a `LimitRequest` in JSON. Absent and `null` fields
/// are defaults; a field given twice (by either name) is refused by serde
/// and goes to the reflective reader.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Plain {
    subject: Option<String>,
    account: Option<String>,
    resource: Option<String>,
    cost: Option<Entries<Uint64>>,
    attributes: Option<Entries<String>>,
}

/// A `uint64` as the mapping writes it: a JSON integer, or a decimal
/// string without sign, exponent or leading zero.
struct Uint64(u64);

impl<'de> Deserialize<'de> for Uint64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Uint64;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a uint64")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Uint64, E> {
                Ok(Uint64(v))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Uint64, E> {
                let canonical = !s.is_empty()
                    && s.bytes().all(|b| b.is_ascii_digit())
                    && (s == "0" || !s.starts_with('0'));
                canonical
                    .then(|| s.parse().ok())
                    .flatten()
                    .map(Uint64)
                    .ok_or_else(|| E::custom("not a canonical uint64"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A JSON object as a map, refused when a key repeats (serde's `HashMap`
/// would keep the last).
struct Entries<V>(HashMap<String, V>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
            type Value = Entries<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entries<V>, A::Error> {
                let mut out = HashMap::with_capacity(m.size_hint().unwrap_or(0).min(16));
                while let Some((k, v)) = m.next_entry::<String, V>()? {
                    if out.insert(k, v).is_some() {
                        return Err(de::Error::custom("a key repeats"));
                    }
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(Vis(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::api::convert;

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).expect("valid JSON")
    }

    /// The reflective mapping of `d`, the reference.
    fn reflective(d: &pb::Decision) -> serde_json::Value {
        json(&super::super::encode(d))
    }

    /// Every kind of real decision writes as the reflective mapping does.
    #[tokio::test]
    async fn decisions_write_as_the_reflective_mapping_does() {
        for d in crate::limiter::samples::every_kind().await {
            let d = convert::decision(d);
            assert_eq!(json(&encode_decision(&d)), reflective(&d), "{d:?}");
        }
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z:/]{1,12}",
            // Quotes, backslashes, control characters, non-ASCII.
            "[\"\\\\\\x00-\\x1f\\x7f é☃😀a-z]{0,12}",
        ]
    }

    fn duration() -> impl Strategy<Value = prost_types::Duration> {
        (
            0i64..400_000_000,
            prop_oneof![Just(0i32), 0i32..1_000_000_000].prop_map(|n| n),
        )
            .prop_flat_map(|(seconds, nanos)| {
                prop_oneof![
                    Just(nanos),
                    Just(nanos / 1_000_000 * 1_000_000),
                    Just(nanos / 1_000 * 1_000),
                ]
                .prop_map(move |nanos| prost_types::Duration { seconds, nanos })
            })
    }

    fn timestamp() -> impl Strategy<Value = prost_types::Timestamp> {
        duration().prop_map(|d| prost_types::Timestamp {
            seconds: d.seconds * 10,
            nanos: d.nanos,
        })
    }

    fn limit_status() -> impl Strategy<Value = pb::LimitStatus> {
        (
            (
                text(),
                text(),
                any::<u64>(),
                proptest::option::of(any::<u64>()),
            ),
            (
                proptest::option::of(duration()),
                proptest::option::of(timestamp()),
                any::<bool>(),
                text(),
                0i32..5,
                any::<bool>(),
                any::<bool>(),
            ),
        )
            .prop_map(
                |(
                    (name, unit, limit, remaining),
                    (window, reset_at, unlimited, class, algorithm, shadow, would_deny),
                )| {
                    pb::LimitStatus {
                        name,
                        unit,
                        limit,
                        remaining,
                        window,
                        reset_at,
                        unlimited,
                        class,
                        algorithm,
                        shadow,
                        would_deny,
                    }
                },
            )
    }

    fn decision() -> impl Strategy<Value = pb::Decision> {
        (
            (0i32..6, text(), text()),
            proptest::collection::vec(limit_status(), 0..4),
            proptest::option::of(duration()),
            proptest::collection::btree_map(text(), text(), 0..4),
            text(),
            proptest::option::of((text(), proptest::option::of(timestamp()))),
        )
            .prop_map(
                |((verdict, plan, class), limits, retry_after, headers, reason, reservation)| {
                    pb::Decision {
                        verdict,
                        plan,
                        class,
                        limits,
                        retry_after,
                        headers,
                        reason,
                        reservation: reservation
                            .map(|(id, expires_at)| pb::Reservation { id, expires_at }),
                    }
                },
            )
    }

    /// A `LimitRequest` body: the five fields by either spelling, in any
    /// order, some repeated or unknown, with values of every shape the
    /// mapping might meet.
    fn body() -> impl Strategy<Value = String> {
        let string = prop_oneof![
            text().prop_map(|s| serde_json::to_string(&s).expect("a string")),
            Just("null".to_owned()),
            Just("5".to_owned()),
            Just("\"\\ud800\"".to_owned()),
        ];
        let count = prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| format!("\"{n}\"")),
            Just("\"05\"".to_owned()),
            Just("\"+5\"".to_owned()),
            Just("\"5e2\"".to_owned()),
            Just("5.0".to_owned()),
            Just("1e3".to_owned()),
            Just("-1".to_owned()),
            Just("\"\"".to_owned()),
            Just("null".to_owned()),
            Just("18446744073709551616".to_owned()),
        ];
        let map = |value: BoxedStrategy<String>| {
            proptest::collection::vec(("[a-c]{1,2}", value), 0..4).prop_map(|entries| {
                let entries: Vec<String> = entries
                    .iter()
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect();
                format!("{{{}}}", entries.join(","))
            })
        };
        let field = prop_oneof![
            string.clone().prop_map(|v| format!("\"subject\":{v}")),
            string.clone().prop_map(|v| format!("\"account\":{v}")),
            string.clone().prop_map(|v| format!("\"resource\":{v}")),
            map(count.boxed()).prop_map(|v| format!("\"cost\":{v}")),
            map(string.boxed()).prop_map(|v| format!("\"attributes\":{v}")),
            Just("\"cost\":null".to_owned()),
            Just("\"cost\":[]".to_owned()),
            Just("\"subjct\":\"k\"".to_owned()),
        ];
        (proptest::collection::vec(field, 0..6), 0..3usize).prop_map(|(fields, shape)| {
            let inner = fields.join(",");
            match shape {
                0 => format!("{{{inner}}}"),
                1 => format!(" {{ {inner} }} "),
                _ => format!("{{{inner}}} x"),
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any decision writes as the reflective mapping does.
        #[test]
        fn any_decision_writes_as_the_reflective_mapping_does(d in decision()) {
            prop_assert_eq!(json(&encode_decision(&d)), reflective(&d));
        }

        /// What the plain reader takes, the reflective reader takes too,
        /// with the same result; what it leaves goes to the reflective one.
        #[test]
        fn the_plain_reader_agrees_with_the_reflective_one(body in body()) {
            if let Some(fast) = decode_limit_request(body.as_bytes()) {
                let slow = super::super::decode::<pb::LimitRequest>(body.as_bytes());
                prop_assert_eq!(Ok(fast), slow.map_err(|s| s.message().to_owned()), "{}", body);
            }
        }
    }

    /// The common bodies are read by the plain reader.
    #[test]
    fn plain_bodies_take_the_fast_path() {
        for body in [
            r#"{"subject":"key_1","resource":"/api/v1/fetch/people"}"#,
            r#"{"subject":"k","account":"a","cost":{"tokens":"1500","requests":1},"attributes":{"method":"POST"}}"#,
            r#"{}"#,
        ] {
            let fast = decode_limit_request(body.as_bytes()).expect(body);
            let slow = super::super::decode::<pb::LimitRequest>(body.as_bytes()).expect(body);
            assert_eq!(fast, slow);
        }
    }
}
