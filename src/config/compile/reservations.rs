//! `reservations:` of the file (`ttl`, `max_ttl`), of a plan (`ttl`) and a
//! limit's `reservation_ttl`: how long a reservation is held unsettled.

use serde_saphyr::Spanned;

use super::problems::Problems;
use crate::config::raw::RawReservations;
use crate::engine::Nanos;
use crate::engine::clock::SECOND;
use crate::plans::ReservationTtl;

/// The most `max_ttl` may be: a week. A reservation is for a call in
/// flight; one held longer is a leak with extra steps.
const LONGEST: Nanos = 7 * 24 * 3600 * SECOND;

/// The file's `reservations:`.
pub(super) fn file(p: &mut Problems<'_>, raw: Option<&RawReservations>) -> ReservationTtl {
    let mut out = ReservationTtl::default();
    let Some(raw) = raw else {
        return out;
    };
    if let Some(max) = raw.max_ttl.as_ref()
        && let Some(max) = duration(p, "reservations.max_ttl", max, LONGEST)
    {
        out.max = max;
    }
    if let Some(ttl) = raw.ttl.as_ref() {
        if let Some(ttl) = duration(p, "reservations.ttl", ttl, out.max) {
            out.default = ttl;
        }
    } else {
        out.default = out.default.min(out.max);
    }
    out
}

/// A plan's `reservations:` (its `ttl`; `max_ttl` is the file's alone).
pub(super) fn plan(
    p: &mut Problems<'_>,
    name: &str,
    raw: Option<&RawReservations>,
    file: ReservationTtl,
) -> Option<Nanos> {
    let raw = raw?;
    if let Some(max) = &raw.max_ttl {
        p.push(
            max.referenced.line(),
            &format!("plans.{name}.reservations.max_ttl"),
            "only the file's reservations have a max_ttl".into(),
        );
    }
    let ttl = raw.ttl.as_ref()?;
    duration(p, &format!("plans.{name}.reservations.ttl"), ttl, file.max)
}

/// A limit's `reservation_ttl`, at `field`.
pub(super) fn limit(
    p: &mut Problems<'_>,
    field: &str,
    raw: Option<&Spanned<String>>,
    file: ReservationTtl,
) -> Option<Nanos> {
    duration(p, &format!("{field}.reservation_ttl"), raw?, file.max)
}

/// A duration from one second to `max`, at `field`.
fn duration(p: &mut Problems<'_>, field: &str, raw: &Spanned<String>, max: Nanos) -> Option<Nanos> {
    let line = raw.referenced.line();
    let parsed = humantime::parse_duration(raw.value.trim())
        .map_err(|e| {
            format!(
                "expected a duration such as 90s or 5m, got {:?}: {e}",
                raw.value
            )
        })
        .and_then(|d| {
            let n = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
            if n < SECOND {
                Err(format!("at least 1s, got {:?}", raw.value))
            } else if n > max {
                Err(format!(
                    "at most {}, the max_ttl, got {:?}",
                    humantime::format_duration(std::time::Duration::from_nanos(max)),
                    raw.value
                ))
            } else {
                Ok(n)
            }
        });
    match parsed {
        Ok(n) => Some(n),
        Err(e) => {
            p.push(line, field, e);
            None
        }
    }
}
