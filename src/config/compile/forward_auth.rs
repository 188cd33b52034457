//! `http.forward_auth`: where the forward-auth endpoint reads the subject,
//! the account and each cost of a request. Each source is exactly one of a
//! header, the bearer token or the client's address; a cost comes from a
//! header only (a token or an address is not a number).

use serde_saphyr::Spanned;

use super::problems::Problems;
use crate::config::raw::{RawHttp, RawSource};
use crate::plans::{ForwardAuth, HeaderSource};

/// The forward-auth settings, if the file has them and they are whole.
pub(super) fn forward_auth(p: &mut Problems<'_>, raw: Option<&RawHttp>) -> Option<ForwardAuth> {
    let raw = raw?.forward_auth.as_ref()?;
    let field = "http.forward_auth";
    let Some(subject) = &raw.value.subject else {
        p.push(
            raw.referenced.line(),
            &format!("{field}.subject"),
            "says where the subject comes from ({ header: NAME }, { bearer: true } or { client_ip: true }); required".into(),
        );
        return None;
    };
    let subject = source(p, &format!("{field}.subject"), subject);
    let account = raw
        .value
        .account
        .as_ref()
        .map(|a| source(p, &format!("{field}.account"), a));
    let mut cost = Vec::new();
    for (unit, from) in &raw.value.cost {
        let at = format!("{field}.cost.{unit}");
        p.check_name(from.referenced.line(), &at, unit);
        match source(p, &at, from) {
            Some(HeaderSource::Header(name)) => cost.push((unit.clone(), name)),
            Some(_) => p.push(
                from.referenced.line(),
                &at,
                "a cost is read from a header: { header: NAME }".into(),
            ),
            None => {}
        }
    }
    Some(ForwardAuth {
        subject: subject?,
        account: match account {
            Some(a) => Some(a?),
            None => None,
        },
        cost,
    })
}

/// One source: exactly one of `header`, `bearer: true`, `client_ip: true`.
fn source(p: &mut Problems<'_>, field: &str, raw: &Spanned<RawSource>) -> Option<HeaderSource> {
    let line = raw.referenced.line();
    let r = &raw.value;
    let mut found = Vec::new();
    if let Some(name) = &r.header {
        let valid = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid {
            p.push(
                line,
                &format!("{field}.header"),
                format!("expected an HTTP header name, got {name:?}"),
            );
            return None;
        }
        found.push(HeaderSource::Header(name.to_ascii_lowercase()));
    }
    if r.bearer == Some(true) {
        found.push(HeaderSource::Bearer);
    }
    if r.client_ip == Some(true) {
        found.push(HeaderSource::ClientIp);
    }
    if found.len() != 1 || r.bearer == Some(false) || r.client_ip == Some(false) {
        p.push(
            line,
            field,
            "needs exactly one of header: NAME, bearer: true or client_ip: true".into(),
        );
        return None;
    }
    found.pop()
}

#[cfg(test)]
mod tests {
    use crate::plans::{ForwardAuth, HeaderSource, SlotRegistry};

    const PLANS: &str = "plans:\n  free:\n    limits:\n      - rate: 10/minute\n";

    fn compile(http: &str) -> Result<Option<ForwardAuth>, String> {
        crate::config::parse(
            "t.yaml",
            &format!("{PLANS}{http}"),
            &SlotRegistry::default(),
        )
        .map(|c| c.forward_auth)
        .map_err(|e| e.to_string())
    }

    #[test]
    fn reads_every_source() {
        let got = compile(
            "http:\n  forward_auth:\n    subject: { header: X-Api-Key }\n    account: { bearer: true }\n    cost: { tokens: { header: X-Token-Cost } }\n",
        )
        .expect("valid");
        assert_eq!(
            got,
            Some(ForwardAuth {
                subject: HeaderSource::Header("x-api-key".into()),
                account: Some(HeaderSource::Bearer),
                cost: vec![("tokens".into(), "x-token-cost".into())],
            })
        );
        let ip = compile("http:\n  forward_auth:\n    subject: { client_ip: true }\n")
            .expect("valid")
            .expect("configured");
        assert_eq!(ip.subject, HeaderSource::ClientIp);
        assert_eq!(compile("").expect("valid"), None);
    }

    #[test]
    fn refuses_two_sources_or_none() {
        let err =
            compile("http:\n  forward_auth:\n    subject: { header: X-Api-Key, bearer: true }\n")
                .expect_err("two sources");
        assert!(
            err.contains("t.yaml:7: http.forward_auth.subject: needs exactly one of"),
            "{err}"
        );
        let err = compile("http:\n  forward_auth:\n    account: { bearer: true }\n")
            .expect_err("no subject");
        assert!(
            err.contains("http.forward_auth.subject: says where"),
            "{err}"
        );
    }

    #[test]
    fn refuses_unknown_keys_and_a_cost_not_from_a_header() {
        let err = compile("http:\n  forward_auth:\n    subject: { cookie: id }\n")
            .expect_err("unknown key");
        assert!(err.contains("t.yaml:7:"), "{err}");
        assert!(err.contains("cookie"), "{err}");
        let err = compile(
            "http:\n  forward_auth:\n    subject: { bearer: true }\n    cost: { tokens: { client_ip: true } }\n",
        )
        .expect_err("cost from an address");
        assert!(
            err.contains("http.forward_auth.cost.tokens: a cost is read from a header"),
            "{err}"
        );
        let err = compile("http:\n  forward_auth:\n    subject: { header: \"X Api\" }\n")
            .expect_err("bad header name");
        assert!(err.contains("http.forward_auth.subject.header"), "{err}");
    }
}
