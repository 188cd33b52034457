//! `http.forward_auth`: where the forward-auth endpoint reads the subject,
//! the account and each cost of a request. Each source is exactly one of a
//! header, the bearer token or the client's address; a cost comes from a
//! header only (a token or an address is not a number). Which proxies'
//! `X-Forwarded-For` entries are believed (`trusted_proxies`, loopback when
//! not given), and the shared secret the gateway sends (`require_header`).

use serde_saphyr::Spanned;

use super::problems::Problems;
use crate::config::raw::{RawHttp, RawRequiredHeader, RawSource};
use crate::plans::{ForwardAuth, HeaderSource};

/// The proxies believed when `trusted_proxies` is not given: this host.
pub(crate) const LOOPBACK: [&str; 2] = ["127.0.0.0/8", "::1/128"];

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
    let trusted_proxies = trusted_proxies(p, raw.value.trusted_proxies.as_deref());
    let require_header = raw
        .value
        .require_header
        .as_ref()
        .map(|r| required_header(p, r));
    Some(ForwardAuth {
        subject: subject?,
        account: match account {
            Some(a) => Some(a?),
            None => None,
        },
        cost,
        trusted_proxies,
        require_header: match require_header {
            Some(r) => Some(r?),
            None => None,
        },
    })
}

/// `trusted_proxies`: CIDRs (a bare address is one host); loopback when not
/// given, none when empty.
fn trusted_proxies(p: &mut Problems<'_>, raw: Option<&[Spanned<String>]>) -> Vec<ipnet::IpNet> {
    let Some(raw) = raw else {
        return LOOPBACK
            .iter()
            .map(|c| c.parse().expect("a valid CIDR"))
            .collect();
    };
    let mut nets = Vec::with_capacity(raw.len());
    for (i, cidr) in raw.iter().enumerate() {
        let text = cidr.value.trim();
        let parsed = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => nets.push(net.trunc()),
            Err(_) => p.push(
                cidr.referenced.line(),
                &format!("http.forward_auth.trusted_proxies[{i}]"),
                format!("expected an IP address or a CIDR such as 10.0.0.0/8, got {text:?}"),
            ),
        }
    }
    nets
}

/// `require_header: { header: NAME, value: SECRET }`.
fn required_header(
    p: &mut Problems<'_>,
    raw: &Spanned<RawRequiredHeader>,
) -> Option<(String, String)> {
    let line = raw.referenced.line();
    let field = "http.forward_auth.require_header";
    let name = match raw.value.header.as_deref() {
        Some(name) if is_header_name(name) => name.to_ascii_lowercase(),
        Some(name) => {
            p.push(
                line,
                &format!("{field}.header"),
                format!("expected an HTTP header name, got {name:?}"),
            );
            return None;
        }
        None => {
            p.push(line, &format!("{field}.header"), "required".into());
            return None;
        }
    };
    match raw.value.value.as_deref() {
        Some(v) if !v.trim().is_empty() && axum::http::HeaderValue::from_str(v).is_ok() => {
            Some((name, v.to_owned()))
        }
        Some(_) => {
            p.push(
                line,
                &format!("{field}.value"),
                "expected a non-empty header value of visible ASCII".into(),
            );
            None
        }
        None => {
            p.push(line, &format!("{field}.value"), "required".into());
            None
        }
    }
}

/// An HTTP header name (RFC 9110 token), at most 128 bytes.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// One source: exactly one of `header`, `bearer: true`, `client_ip: true`.
fn source(p: &mut Problems<'_>, field: &str, raw: &Spanned<RawSource>) -> Option<HeaderSource> {
    let line = raw.referenced.line();
    let r = &raw.value;
    let mut found = Vec::new();
    if let Some(name) = &r.header {
        if !is_header_name(name) {
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
                trusted_proxies: vec![
                    "127.0.0.0/8".parse().expect("cidr"),
                    "::1/128".parse().expect("cidr")
                ],
                require_header: None,
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

    #[test]
    fn reads_trusted_proxies_and_the_shared_secret() {
        let got = compile(
            "http:\n  forward_auth:\n    subject: { client_ip: true }\n    trusted_proxies: [10.0.0.0/8, 192.168.1.7, \"fd00::/8\"]\n    require_header: { header: X-Tollgate-Secret, value: s3cret }\n",
        )
        .expect("valid")
        .expect("configured");
        let nets: Vec<String> = got
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]);
        assert_eq!(
            got.require_header,
            Some(("x-tollgate-secret".into(), "s3cret".into()))
        );
        let none = compile(
            "http:\n  forward_auth:\n    subject: { client_ip: true }\n    trusted_proxies: []\n",
        )
        .expect("valid")
        .expect("configured");
        assert!(none.trusted_proxies.is_empty());
    }

    #[test]
    fn refuses_a_bad_cidr_or_a_secret_without_a_value() {
        let err = compile(
            "http:\n  forward_auth:\n    subject: { client_ip: true }\n    trusted_proxies: [10.0.0.0/33]\n",
        )
        .expect_err("bad cidr");
        assert!(
            err.contains(
                "t.yaml:8: http.forward_auth.trusted_proxies[0]: expected an IP address or a CIDR"
            ),
            "{err}"
        );
        let err = compile(
            "http:\n  forward_auth:\n    subject: { client_ip: true }\n    require_header: { header: X-Secret }\n",
        )
        .expect_err("no value");
        assert!(
            err.contains("t.yaml:8: http.forward_auth.require_header.value: required"),
            "{err}"
        );
    }
}
