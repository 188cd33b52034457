//! `events:`: the thresholds announced for each limit (the file's, a plan's,
//! a limit's own) and the webhooks that receive them.

use std::collections::BTreeMap;

use serde_saphyr::Spanned;

use super::problems::Problems;
use crate::config::raw::{RawConfig, RawEvents, RawPercent, RawPlan, RawWebhook};
use crate::plans::events::{Events, Threshold, Thresholds, Webhook};
use crate::webhooks::{Endpoint, WebhookError};

/// A list of thresholds at `field`, sorted, each once; `None` when any is
/// not a percentage from 1% to 100%.
pub(super) fn thresholds(
    p: &mut Problems<'_>,
    field: &str,
    raw: &Spanned<Vec<Spanned<RawPercent>>>,
) -> Option<Thresholds> {
    let list = list(p, field, &raw.value)?;
    Some(list.into())
}

fn list(p: &mut Problems<'_>, field: &str, raw: &[Spanned<RawPercent>]) -> Option<Vec<Threshold>> {
    let before = p.list.len();
    let mut out = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let text = match &t.value {
            RawPercent::Number(n) => n.to_string(),
            RawPercent::Text(s) => s.clone(),
        };
        match text.parse::<Threshold>() {
            Ok(t) => out.push(t),
            Err(e) => p.push(t.referenced.line(), &format!("{field}[{i}]"), e.to_string()),
        }
    }
    out.sort();
    out.dedup();
    (p.list.len() == before).then_some(out)
}

/// The file's own thresholds (none when unset) and its webhooks.
pub(super) fn events(
    p: &mut Problems<'_>,
    raw: Option<&RawEvents>,
    plans: &BTreeMap<String, Spanned<RawPlan>>,
) -> (Thresholds, Events) {
    let Some(raw) = raw else {
        return (Thresholds::default(), Events::default());
    };
    let global = raw
        .thresholds
        .as_ref()
        .and_then(|t| thresholds(p, "events.thresholds", t))
        .unwrap_or_default();
    let webhooks = raw
        .webhooks
        .iter()
        .enumerate()
        .filter_map(|(i, w)| webhook(p, &format!("events.webhooks[{i}]"), w, plans))
        .collect();
    (global, Events { webhooks })
}

/// The thresholds of `plan`'s limits that name none: its own `events`, else
/// those of the plan it extends (and so on), else the file's.
pub(super) fn plan_thresholds(
    p: &mut Problems<'_>,
    raw: &RawConfig,
    plan: &str,
    global: &Thresholds,
) -> Thresholds {
    let mut name = plan;
    let mut seen = Vec::new();
    while let Some(entry) = raw.plans.value.get(name) {
        if seen.contains(&name) {
            break; // a broken chain, reported by inheritance
        }
        seen.push(name);
        if let Some(t) = entry
            .value
            .events
            .as_ref()
            .and_then(|e| e.thresholds.as_ref())
        {
            let field = format!("plans.{name}.events.thresholds");
            // Report a plan's own list once, not once per plan extending it.
            return if name == plan {
                thresholds(p, &field, t).unwrap_or_default()
            } else {
                let mut quiet = Problems {
                    file: p.file,
                    list: Vec::new(),
                };
                thresholds(&mut quiet, &field, t).unwrap_or_default()
            };
        }
        match &entry.value.extends {
            Some(parent) => name = &parent.value,
            None => break,
        }
    }
    global.clone()
}

fn webhook(
    p: &mut Problems<'_>,
    field: &str,
    raw: &Spanned<RawWebhook>,
    plans: &BTreeMap<String, Spanned<RawPlan>>,
) -> Option<Webhook> {
    let line = raw.referenced.line();
    let w = &raw.value;
    let before = p.list.len();
    let url = w.url.as_ref().map(|u| u.value.clone());
    let secret = w.secret.as_ref().map(|s| s.value.clone());
    if url.is_none() {
        p.push(line, &format!("{field}.url"), "is required".into());
    }
    if secret.is_none() {
        p.push(
            line,
            &format!("{field}.secret"),
            "is required (whsec_ and a base64 key)".into(),
        );
    }
    let (url, secret) = (url.unwrap_or_default(), secret.unwrap_or_default());
    if let (Some(u), Some(s)) = (&w.url, &w.secret) {
        let endpoint = Endpoint {
            url: url.clone(),
            secret: secret.clone(),
        };
        match endpoint.check() {
            Ok(()) => {}
            Err(WebhookError::BadSecret(why)) => {
                p.push(s.referenced.line(), &format!("{field}.secret"), why)
            }
            Err(e) => p.push(u.referenced.line(), &format!("{field}.url"), e.to_string()),
        }
    }
    let thresholds = w
        .thresholds
        .as_ref()
        .map(|t| list(p, &format!("{field}.thresholds"), t).unwrap_or_default());
    let names = w.plans.as_ref().map(|names| {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                if !plans.contains_key(&n.value) {
                    p.push(
                        n.referenced.line(),
                        &format!("{field}.plans[{i}]"),
                        format!("no plan named {:?}", n.value),
                    );
                }
                n.value.clone()
            })
            .collect()
    });
    (p.list.len() == before).then_some(Webhook {
        url,
        secret,
        thresholds,
        plans: names,
    })
}
