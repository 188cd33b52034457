//! The reference's dynamic metadata for Envoy's next filters.

use super::answer::Answer;
use crate::proto::envoy::service::ratelimit::v3 as pb;

/// The reference's dynamic metadata: the domain, each descriptor's entries
/// (`key=value`), limit and hits, the request's hits, and the metadata of
/// the descriptors that passed (the first one wins a key).
pub(super) fn metadata(
    r: &pb::RateLimitRequest,
    passed: &[usize],
    answers: &[Answer],
) -> prost_types::Struct {
    use prost_types::{ListValue, Struct, Value, value::Kind};
    let string = |s: String| Value {
        kind: Some(Kind::StringValue(s)),
    };
    let number = |n: f64| Value {
        kind: Some(Kind::NumberValue(n)),
    };
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("domain".to_owned(), string(r.domain.clone()));
    let descriptors = r
        .descriptors
        .iter()
        .map(|d| {
            let mut f = std::collections::BTreeMap::new();
            let entries = d
                .entries
                .iter()
                .map(|e| string(format!("{}={}", e.key, e.value)))
                .collect();
            f.insert(
                "entries".to_owned(),
                Value {
                    kind: Some(Kind::ListValue(ListValue { values: entries })),
                },
            );
            if let Some(l) = &d.limit {
                let unit = crate::proto::envoy::r#type::v3::RateLimitUnit::try_from(l.unit)
                    .map_or_else(|_| l.unit.to_string(), |u| u.as_str_name().to_owned());
                f.insert(
                    "limit".to_owned(),
                    string(format!(
                        "requests_per_unit:{} unit:{unit}",
                        l.requests_per_unit
                    )),
                );
            }
            if let Some(h) = d.hits_addend {
                f.insert("hitsAddend".to_owned(), number(h as f64));
            }
            Value {
                kind: Some(Kind::StructValue(Struct { fields: f })),
            }
        })
        .collect();
    fields.insert(
        "descriptors".to_owned(),
        Value {
            kind: Some(Kind::ListValue(ListValue {
                values: descriptors,
            })),
        },
    );
    if r.hits_addend != 0 {
        fields.insert("hitsAddend".to_owned(), number(f64::from(r.hits_addend)));
    }
    let mut merged = Struct::default();
    for &i in passed {
        if let Some(m) = &answers[i].metadata {
            merge(&mut merged, m);
        }
    }
    if !merged.fields.is_empty() {
        fields.insert(
            "metadata".to_owned(),
            Value {
                kind: Some(Kind::StructValue(merged)),
            },
        );
    }
    Struct { fields }
}

/// Adds `src`'s keys to `dest`; where both hold a struct, merges them; else
/// `dest` keeps its value.
fn merge(dest: &mut prost_types::Struct, src: &prost_types::Struct) {
    use prost_types::value::Kind;
    for (k, v) in &src.fields {
        match dest.fields.get_mut(k) {
            Some(prost_types::Value {
                kind: Some(Kind::StructValue(d)),
            }) => {
                if let Some(Kind::StructValue(s)) = &v.kind {
                    merge(d, s);
                }
            }
            Some(_) => {}
            None => {
                dest.fields.insert(k.clone(), v.clone());
            }
        }
    }
}
