//! `envoy.domains`: for each Envoy domain answered from the plans, which
//! descriptor entry carries the subject, the account, the plan, the resource,
//! the method and each cost. Only the mapping is checked here; the Envoy
//! adapter applies it.

use std::collections::HashMap;

use super::problems::Problems;
use crate::config::raw::{RawEnvoy, RawEnvoyDomain};
use crate::plans::EnvoyDomain;

/// Every well-formed domain; one without a subject entry is left out.
pub(super) fn envoy_domains(
    p: &mut Problems<'_>,
    raw: Option<&RawEnvoy>,
) -> HashMap<String, EnvoyDomain> {
    let mut out = HashMap::new();
    for (domain, d) in raw.map(|e| &e.domains).into_iter().flatten() {
        let field = format!("envoy.domains.{domain}");
        let line = d.referenced.line();
        let d = &d.value;
        if domain.trim().is_empty() {
            p.push(line, "envoy.domains", "a domain needs a name".into());
        }
        let Some(subject) = d.subject.as_ref().filter(|s| !s.value.trim().is_empty()) else {
            p.push(
                line,
                &format!("{field}.subject"),
                "names the descriptor entry that carries the subject; required".into(),
            );
            continue;
        };
        check_parts(p, &field, line, d, &subject.value);
        out.insert(
            domain.clone(),
            EnvoyDomain {
                subject: subject.value.clone(),
                account: d.account.clone(),
                plan: d.plan.clone(),
                resource: d.resource.clone(),
                method: d.method.clone(),
                cost: d.cost.iter().map(|(k, u)| (k.clone(), u.clone())).collect(),
            },
        );
    }
    out
}

/// One entry carries one part: a key named for two parts would be read as
/// both. A cost entry also names the unit it counts.
fn check_parts(p: &mut Problems<'_>, field: &str, line: u64, d: &RawEnvoyDomain, subject: &String) {
    let mut keys = vec![("subject", Some(subject))];
    keys.extend([
        ("account", d.account.as_ref()),
        ("plan", d.plan.as_ref()),
        ("resource", d.resource.as_ref()),
        ("method", d.method.as_ref()),
    ]);
    for (i, (what, key)) in keys.iter().enumerate() {
        let Some(key) = key else { continue };
        if keys[..i].iter().any(|(_, k)| *k == Some(*key)) || d.cost.contains_key(*key) {
            p.push(
                line,
                &format!("{field}.{what}"),
                format!("entry {key:?} already carries another part"),
            );
        }
    }
    for (key, unit) in &d.cost {
        if unit.trim().is_empty() {
            p.push(
                line,
                &format!("{field}.cost.{key}"),
                "names the unit the entry's value counts".into(),
            );
        }
    }
}
