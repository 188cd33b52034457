//! `tollgate.v1.Admin`: plan assignments, overrides, usage, plans, reloads.
//!
//! Every change is written to the state file before the call returns,
//! invalidates the account's cached plan (so the very next decision sees
//! it), tells the account's watchers, and is logged: who (the peer), what,
//! when; never the token.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::convert;
use crate::config::reload::{ReloadError, Reloader};
use crate::error::Error;
use crate::insight::Insight;
use crate::insight::events::Event;
use crate::insight::rollups::RollupError;
use crate::insight::top::{By, Filter, Horizon, Row};
use crate::insight::usage::{Granularity, UsageRow};
use crate::limiter::{Limiter, account_of};
use crate::plans::overrides::{self, Change, Override};
use crate::proto::tollgate::v1 as pb;
use crate::state::RuntimeState;
use crate::watch::{Cause, Hub};

/// `tollgate.v1.Admin`.
#[derive(Debug)]
pub struct AdminService {
    limiter: Arc<Limiter>,
    hub: Arc<Hub>,
    config: Arc<Reloader>,
    rules: Arc<Reloader>,
    insight: Arc<Insight>,
    stopping: CancellationToken,
}

/// The stream of `ExportUsage`.
pub type UsageRows = Pin<Box<dyn Stream<Item = Result<pb::UsageRow, Status>> + Send>>;

/// The stream of `WatchEvents`.
pub type QuotaEvents = Pin<Box<dyn Stream<Item = Result<pb::QuotaEvent, Status>> + Send>>;

/// The most rows `TopSubjects` answers.
pub const MAX_TOP: u32 = 1000;

/// An override's change in words, for the log: `amount 1000`, `unlimited`,
/// `custom 50 per 1h`.
fn describe(change: &Change) -> String {
    match change {
        Change::Amount(n) => format!("amount {n}"),
        Change::Unlimited => "unlimited".to_owned(),
        Change::Custom(c) => format!(
            "custom {} per {}",
            c.amount,
            humantime::format_duration(std::time::Duration::from_nanos(c.window))
        ),
    }
}

/// When an override expires, for the log: an RFC 3339 time, or `never`.
fn expiry(at: Option<crate::engine::Nanos>) -> String {
    at.map_or_else(
        || "never".to_owned(),
        |t| {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(t);
            humantime::format_rfc3339(at).to_string()
        },
    )
}

// === impl AdminService ===

impl AdminService {
    /// The service over `limiter`, keeping changes in its runtime state.
    /// `ReloadConfig` re-reads the configuration file (`config`) and Envoy's
    /// rule files (`rules`).
    /// `insight` answers `TopSubjects` and `WatchEvents`, whose streams end
    /// when `stopping` is cancelled.
    pub fn new(
        limiter: Arc<Limiter>,
        hub: Arc<Hub>,
        config: Arc<Reloader>,
        rules: Arc<Reloader>,
        insight: Arc<Insight>,
        stopping: CancellationToken,
    ) -> Self {
        Self {
            limiter,
            hub,
            config,
            rules,
            insight,
            stopping,
        }
    }

    /// The top subjects, as asked.
    pub fn top(&self, r: &pb::TopSubjectsRequest) -> Result<pb::TopSubjectsResponse, Error> {
        let window = pb::TopWindow::try_from(r.window)
            .map_err(|_| Error::invalid("window", "expected MINUTE, HOUR or DAY"))?;
        let by = pb::TopBy::try_from(r.by)
            .map_err(|_| Error::invalid("by", "expected REFUSALS or CONSUMPTION"))?;
        let (window, horizon) = match window {
            pb::TopWindow::Minute => (window, Horizon::Minute),
            pb::TopWindow::Day => (window, Horizon::Day),
            _ => (pb::TopWindow::Hour, Horizon::Hour),
        };
        let (by, ranking) = match by {
            pb::TopBy::Consumption => (by, By::Consumption),
            _ => (pb::TopBy::Refusals, By::Refusals),
        };
        let count = match r.count {
            0 => 10,
            n if n > MAX_TOP => {
                return Err(Error::invalid(
                    "count",
                    format!("at most {MAX_TOP}, got {n}"),
                ));
            }
            n => n,
        };
        let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
        let filter = Filter {
            plan: some(&r.plan),
            class: some(&r.class),
            limit: some(&r.limit),
        };
        let now = self.insight.now();
        let Some(top) = &self.insight.top else {
            return Err(Error::Off("the top list is off (--top-subjects 0)"));
        };
        Ok(pb::TopSubjectsResponse {
            subjects: top
                .top(now, horizon, ranking, &filter, count as usize)
                .into_iter()
                .map(top_row)
                .collect(),
            error_bound: top.error_bound(now, horizon, ranking),
            window: window as i32,
            by: by as i32,
        })
    }

    /// The usage rows asked for, in order of period, account, subject, unit.
    pub async fn usage(&self, r: &pb::ExportUsageRequest) -> Result<Vec<pb::UsageRow>, Error> {
        let granularity = match pb::Granularity::try_from(r.granularity) {
            Ok(pb::Granularity::Hour) => Granularity::Hour,
            Ok(pb::Granularity::Month) => Granularity::Month,
            Ok(_) => Granularity::Day,
            Err(_) => return Err(Error::invalid("granularity", "expected HOUR, DAY or MONTH")),
        };
        let from = r
            .from
            .as_ref()
            .ok_or_else(|| Error::invalid("from", "required: the start of the first period"))
            .and_then(|t| convert::time_of("from", t))?;
        let to = match &r.to {
            Some(t) => convert::time_of("to", t)?,
            // Up to now, the current period included.
            None => self.insight.now().saturating_add(1),
        };
        if from > to {
            return Err(Error::invalid("from", "after to"));
        }
        let account = (!r.account.is_empty()).then_some(r.account.as_str());
        let rows = self
            .insight
            .usage
            .export(from, to, granularity, account, self.insight.now())
            .await
            .map_err(|e| match e {
                RollupError::Range(e) => Error::invalid("from", e.to_string()),
                RollupError::Store(e) => Error::Store(e),
                RollupError::Off => Error::Off(
                    "usage rollups are off: --usage-hourly-retention and --usage-daily-retention are 0",
                ),
            })?;
        Ok(rows.into_iter().map(usage_row).collect())
    }

    /// Threshold events from now on, of `r.account` and `r.plan` when set.
    pub fn events(&self, r: pb::WatchEventsRequest) -> QuotaEvents {
        let stopping = self.stopping.clone().cancelled_owned();
        let events =
            BroadcastStream::new(self.insight.events.subscribe()).filter_map(move |e| match e {
                Ok(e) => ((r.account.is_empty() || e.account == r.account)
                    && (r.plan.is_empty() || e.plan == r.plan))
                    .then(|| Ok(quota_event(&e))),
                Err(lagged) => {
                    tracing::warn!(%lagged, "a WatchEvents stream fell behind and skipped events");
                    None
                }
            });
        Box::pin(futures_util::StreamExt::take_until(events, stopping))
    }

    /// Stores a change with `store`, then applies it: the account's cached
    /// plan goes and its watchers hear of it. Runs to completion even when
    /// the caller goes away, so a change is never stored without applying.
    async fn change<T, F>(
        &self,
        account: &str,
        cause: Cause,
        store: impl FnOnce(Arc<RuntimeState>, String) -> F,
    ) -> Result<T, Error>
    where
        T: Send + 'static,
        F: Future<Output = Result<(T, bool), Error>> + Send + 'static,
    {
        let stored = store(self.limiter.state().clone(), account.to_owned());
        let (limiter, hub, account) = (self.limiter.clone(), self.hub.clone(), account.to_owned());
        detached(async move {
            let (out, changed) = stored.await?;
            if changed {
                limiter.resolver().invalidate(&account);
                hub.account_changed(&account, cause);
            }
            Ok(out)
        })
        .await
    }

    fn to_override(&self, o: &pb::Override) -> Result<Override, Error> {
        let change = if !o.rate.is_empty() {
            Change::Custom(convert::custom(o)?)
        } else if o.unlimited {
            Change::Unlimited
        } else if o.amount > 0 {
            Change::Amount(
                crate::config::check_amount(o.amount).map_err(|e| Error::invalid("amount", e))?,
            )
        } else {
            return Err(Error::invalid(
                "amount",
                "must be at least 1 (or set unlimited, or give rate)",
            ));
        };
        let expires_at = o.expires_at.as_ref().map(convert::nanos_of).transpose()?;
        if expires_at.is_some_and(|t| t <= self.limiter.now()) {
            return Err(Error::invalid("expires_at", "already past"));
        }
        Ok(Override {
            limit: o.limit.clone(),
            change,
            expires_at,
            reason: o.reason.clone(),
        })
    }

    async fn assign_plan(
        &self,
        peer: String,
        r: pb::SetPlanRequest,
    ) -> Result<pb::SetPlanResponse, Error> {
        Error::required("account", &r.account)?;
        convert::bounded("account", &r.account)?;
        convert::bounded("plan", &r.plan)?;
        let catalog = self.limiter.catalog();
        let (_, previous) = self.limiter.resolver().source(&catalog, &r.account);
        let plan = if r.clear {
            None
        } else {
            Error::required("plan", &r.plan)?;
            if !catalog.plans.contains_key(&r.plan) {
                let known: Vec<_> = catalog.plans.keys().map(String::as_str).collect();
                return Err(Error::not_found(
                    "plan",
                    format!("no plan named {:?} (plans: {})", r.plan, known.join(", ")),
                ));
            }
            Some(r.plan.as_str())
        };
        let plan = plan.map(str::to_owned);
        self.change(
            &r.account,
            Cause::PlanChanged,
            |state, account| async move {
                state.set_assignment(&account, plan.as_deref()).await?;
                Ok(((), true))
            },
        )
        .await?;
        let (_, plan) = self.limiter.resolver().source(&catalog, &r.account);
        tracing::info!(admin.action = "set_plan", client.addr = %peer, account = %r.account, plan = %plan, previous = %previous, "plan set");
        Ok(pb::SetPlanResponse {
            account: r.account,
            plan,
            previous_plan: previous,
        })
    }

    async fn anchor(
        &self,
        peer: String,
        r: pb::SetBillingAnchorRequest,
    ) -> Result<pb::SetBillingAnchorResponse, Error> {
        Error::required("account", &r.account)?;
        convert::bounded("account", &r.account)?;
        let day = match (r.clear, r.day) {
            (true, _) => None,
            (false, d @ 1..=31) => Some(d as u8),
            (false, d) => {
                return Err(Error::invalid(
                    "day",
                    format!("a day of the month, 1 to 31, got {d} (clear: true to remove it)"),
                ));
            }
        };
        let previous = self
            .change(
                &r.account,
                Cause::PlanChanged,
                |state, account| async move {
                    let before = state.set_anchor(&account, day).await?;
                    Ok((before, before != day))
                },
            )
            .await?;
        tracing::info!(admin.action = "set_billing_anchor", client.addr = %peer, account = %r.account, day = ?day, previous = ?previous, "billing anchor set");
        Ok(pb::SetBillingAnchorResponse {
            account: r.account,
            day: day.map_or(0, u32::from),
            previous_day: previous.map_or(0, u32::from),
        })
    }

    async fn subject_state(&self, r: pb::GetSubjectRequest) -> Result<pb::SubjectState, Error> {
        Error::required("subject", &r.subject)?;
        convert::bounded("subject", &r.subject)?;
        convert::bounded("account", &r.account)?;
        let account = account_of(&r.subject, &r.account).to_owned();
        let quota = self.limiter.quota(&r.subject, &account).await?;
        let (source, _) = self
            .limiter
            .resolver()
            .source(&self.limiter.catalog(), &account);
        let now = self.limiter.now();
        Ok(pb::SubjectState {
            subject: r.subject,
            plan: quota.plan.name.to_string(),
            plan_source: convert::plan_source(source) as i32,
            overrides: self
                .limiter
                .resolver()
                .runtime()
                .overrides(&account)
                .iter()
                .filter(|o| o.active(now))
                .map(|o| convert::override_to_pb(&account, o))
                .collect(),
            limits: quota.limits.iter().map(convert::limit_status).collect(),
            billing_anchor_day: self
                .limiter
                .resolver()
                .runtime()
                .anchor(&account)
                .map_or(0, u32::from),
            denied_classes: quota
                .denied
                .iter()
                .map(|(c, m)| (c.to_string(), m.to_string()))
                .collect(),
            account,
        })
    }

    async fn store_override(&self, peer: String, r: pb::Override) -> Result<pb::Override, Error> {
        Error::required("account", &r.account)?;
        Error::required("limit", &r.limit)?;
        for (field, value) in [
            ("account", &r.account),
            ("limit", &r.limit),
            ("reason", &r.reason),
            ("rate", &r.rate),
            ("class", &r.class),
            ("unit", &r.unit),
            ("per", &r.per),
        ] {
            convert::bounded(field, value)?;
        }
        let o = self.to_override(&r)?;
        // It must apply to the account's plan, together with its others.
        let catalog = self.limiter.catalog();
        let (_, base) = self.limiter.resolver().source(&catalog, &r.account);
        let base = catalog.plans.get(&base).unwrap_or(&catalog.default_plan);
        let mut all = self.limiter.resolver().runtime().overrides(&r.account);
        all.retain(|x| x.limit != o.limit);
        all.push(o.clone());
        overrides::apply(
            base,
            &all,
            self.limiter.now(),
            &catalog.class_names,
            self.limiter.slots(),
        )
        .map_err(|e| match e {
            overrides::OverrideError::TooLarge { .. } => Error::invalid("amount", e.to_string()),
            e => Error::invalid("limit", e.to_string()),
        })?;
        let stored = o.clone();
        self.change(
            &r.account,
            Cause::OverrideChanged,
            |state, account| async move {
                state.set_override(&account, stored).await?;
                Ok(((), true))
            },
        )
        .await?;
        tracing::info!(admin.action = "set_override", client.addr = %peer, account = %r.account, limit = %o.limit, change = %describe(&o.change), expires_at = %expiry(o.expires_at), reason = %o.reason, "override set");
        Ok(convert::override_to_pb(&r.account, &o))
    }

    async fn drop_override(
        &self,
        peer: String,
        r: pb::RemoveOverrideRequest,
    ) -> Result<pb::RemoveOverrideResponse, Error> {
        Error::required("account", &r.account)?;
        Error::required("limit", &r.limit)?;
        convert::bounded("account", &r.account)?;
        convert::bounded("limit", &r.limit)?;
        let limit = r.limit.clone();
        let removed = self
            .change(
                &r.account,
                Cause::OverrideChanged,
                |state, account| async move {
                    let removed = state.remove_override(&account, &limit).await?;
                    Ok((removed, removed))
                },
            )
            .await?;
        tracing::info!(admin.action = "remove_override", client.addr = %peer, account = %r.account, limit = %r.limit, removed, "override removed");
        Ok(pb::RemoveOverrideResponse { removed })
    }

    async fn forget_usage(
        &self,
        peer: String,
        r: pb::ResetUsageRequest,
    ) -> Result<pb::ResetUsageResponse, Error> {
        Error::required("subject", &r.subject)?;
        convert::bounded("subject", &r.subject)?;
        convert::bounded("account", &r.account)?;
        let counters = self.limiter.reset(&r.subject, &r.account).await?;
        self.hub.consumed(&r.subject, &r.account);
        tracing::info!(admin.action = "reset_usage", client.addr = %peer, subject = %r.subject, account = %r.account, counters, "usage reset");
        Ok(pb::ResetUsageResponse {
            counters: counters as u64,
        })
    }

    fn plans(&self) -> pb::ListPlansResponse {
        let catalog = self.limiter.catalog();
        let plans = catalog
            .plans
            .values()
            .map(|p| pb::PlanInfo {
                name: p.name.to_string(),
                description: p.description.clone().unwrap_or_default(),
                extends: p.extends.clone().unwrap_or_default(),
                limits: p.limits.iter().map(|l| convert::limit_info(l)).collect(),
            })
            .collect();
        pb::ListPlansResponse {
            plans,
            default_plan: catalog.default_plan.name.to_string(),
        }
    }

    async fn reload(&self, peer: String) -> Result<pb::ReloadConfigResponse, Error> {
        let (config, rules) = (self.config.clone(), self.rules.clone());
        // Both, or neither: a caller going away does not stop one half.
        let (file, rules) =
            detached(async move { Ok((config.reload().await, rules.reload().await)) }).await?;
        let rules = match rules {
            Err(ReloadError::NoFile) => None,
            other => Some(other),
        };
        tracing::info!(admin.action = "reload_config", client.addr = %peer, ok = file.is_ok() && rules.as_ref().is_none_or(Result::is_ok), "reload requested");
        let mut response = pb::ReloadConfigResponse::default();
        match file {
            Ok(done) => {
                response.path = done.path.display().to_string();
                response.plans = done.plans as u32;
                response.classes = done.classes as u32;
            }
            // The built-in configuration: fine when there are rules to reload.
            Err(ReloadError::NoFile) if rules.is_some() => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(rules) = rules {
            let done = rules?;
            response.envoy_config = done.path.display().to_string();
            response.envoy_domains = done.domains as u32;
        }
        Ok(response)
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn set_plan(
        &self,
        request: Request<pb::SetPlanRequest>,
    ) -> Result<Response<pb::SetPlanResponse>, Status> {
        let peer = peer(&request);
        Ok(Response::new(
            self.assign_plan(peer, request.into_inner())
                .await
                .map_err(failed)?,
        ))
    }

    async fn set_billing_anchor(
        &self,
        request: Request<pb::SetBillingAnchorRequest>,
    ) -> Result<Response<pb::SetBillingAnchorResponse>, Status> {
        let peer = peer(&request);
        Ok(Response::new(
            self.anchor(peer, request.into_inner())
                .await
                .map_err(failed)?,
        ))
    }

    async fn get_subject(
        &self,
        request: Request<pb::GetSubjectRequest>,
    ) -> Result<Response<pb::SubjectState>, Status> {
        Ok(Response::new(
            self.subject_state(request.into_inner())
                .await
                .map_err(failed)?,
        ))
    }

    async fn set_override(
        &self,
        request: Request<pb::Override>,
    ) -> Result<Response<pb::Override>, Status> {
        let peer = peer(&request);
        Ok(Response::new(
            self.store_override(peer, request.into_inner())
                .await
                .map_err(failed)?,
        ))
    }

    async fn remove_override(
        &self,
        request: Request<pb::RemoveOverrideRequest>,
    ) -> Result<Response<pb::RemoveOverrideResponse>, Status> {
        let peer = peer(&request);
        Ok(Response::new(
            self.drop_override(peer, request.into_inner())
                .await
                .map_err(failed)?,
        ))
    }

    async fn reset_usage(
        &self,
        request: Request<pb::ResetUsageRequest>,
    ) -> Result<Response<pb::ResetUsageResponse>, Status> {
        let peer = peer(&request);
        Ok(Response::new(
            self.forget_usage(peer, request.into_inner())
                .await
                .map_err(failed)?,
        ))
    }

    async fn list_plans(
        &self,
        _: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        Ok(Response::new(self.plans()))
    }

    async fn reload_config(
        &self,
        request: Request<pb::ReloadConfigRequest>,
    ) -> Result<Response<pb::ReloadConfigResponse>, Status> {
        let peer = peer(&request);
        Ok(Response::new(self.reload(peer).await.map_err(failed)?))
    }

    async fn top_subjects(
        &self,
        request: Request<pb::TopSubjectsRequest>,
    ) -> Result<Response<pb::TopSubjectsResponse>, Status> {
        Ok(Response::new(self.top(request.get_ref()).map_err(failed)?))
    }

    type ExportUsageStream = UsageRows;

    async fn export_usage(
        &self,
        request: Request<pb::ExportUsageRequest>,
    ) -> Result<Response<Self::ExportUsageStream>, Status> {
        let rows = self.usage(request.get_ref()).await.map_err(failed)?;
        Ok(Response::new(Box::pin(tokio_stream::iter(
            rows.into_iter().map(Ok),
        ))))
    }

    type WatchEventsStream = QuotaEvents;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        Ok(Response::new(self.events(request.into_inner())))
    }
}

fn top_row(r: Row) -> pb::TopSubject {
    pb::TopSubject {
        subject: r.subject,
        account: r.account,
        plan: r.plan,
        refused: r.refused,
        admitted: r.admitted,
        cost: r.cost,
        error: r.error,
        top_limit: r.top_limit.unwrap_or_default(),
        last_seen: Some(convert::timestamp(r.last_seen)),
    }
}

/// A usage row as `ExportUsage` sends it.
pub fn usage_row(r: UsageRow) -> pb::UsageRow {
    pb::UsageRow {
        period_start: Some(convert::timestamp(r.period_start)),
        granularity: match r.granularity {
            Granularity::Hour => pb::Granularity::Hour,
            Granularity::Day => pb::Granularity::Day,
            Granularity::Month => pb::Granularity::Month,
        } as i32,
        account: r.account,
        subject: r.subject,
        unit: r.unit,
        admitted: r.admitted,
        recorded: r.recorded,
        refused: r.refused,
    }
}

/// An event as `WatchEvents` sends it.
pub fn quota_event(e: &Event) -> pb::QuotaEvent {
    pb::QuotaEvent {
        id: e.id.clone(),
        subject: e.subject.clone(),
        account: e.account.clone(),
        plan: e.plan.clone(),
        limit: e.limit.clone(),
        unit: e.unit.clone(),
        threshold: e.threshold.to_string(),
        used: e.used,
        amount: e.amount,
        window_reset: Some(convert::timestamp(e.window_reset)),
        time: Some(convert::timestamp(e.time)),
        shadow: e.shadow,
    }
}

/// A failed admin call's status. A change that could not be stored, or a
/// counter store that did not answer, is logged here with the cause, which
/// the client does not see.
fn failed(e: Error) -> Status {
    if matches!(e, Error::State(_) | Error::Store(_)) {
        tracing::error!(error = %e, "admin call failed");
    }
    Status::from(e)
}

fn peer<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map_or_else(|| "unknown".into(), |a| a.to_string())
}

/// Runs `f` on its own task, to completion whether or not the caller waits.
async fn detached<T: Send + 'static>(
    f: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(f)
        .await
        .expect("an admin change does not panic")
}
