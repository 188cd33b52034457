//! `tollgate.v1.Admin`: plan assignments, overrides, usage, plans, reloads.
//!
//! Every change is written to the state file before the call returns,
//! invalidates the account's cached plan (so the very next decision sees
//! it), tells the account's watchers, and is logged: who (the peer), what,
//! when; never the token.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use crate::config::reload::{ReloadError, Reloader};
use crate::engine::{Algorithm, CounterStore};
use crate::envoy::RuleSource;
use crate::limiter::{Limiter, account_of};
use crate::plans::overrides::{self, Change, Custom, Override};
use crate::plans::resolver::Source;
use crate::plans::{LimitKind, Per};
use crate::proto::tollgate::v1 as pb;
use crate::state::RuntimeState;
use crate::watch::{Cause, Hub};

/// `tollgate.v1.Admin`.
pub struct AdminService<S> {
    limiter: Arc<Limiter<S>>,
    state: Arc<RuntimeState>,
    hub: Arc<Hub<S>>,
    reloader: Arc<Reloader<S>>,
    envoy: Arc<RuleSource>,
}

// === impl AdminService ===

impl<S: CounterStore + 'static> AdminService<S> {
    /// The service over `limiter`, keeping changes in its runtime state.
    /// `ReloadConfig` re-reads the file of `reloader` and the rules of `envoy`.
    pub fn new(
        limiter: Arc<Limiter<S>>,
        hub: Arc<Hub<S>>,
        reloader: Arc<Reloader<S>>,
        envoy: Arc<RuleSource>,
    ) -> Self {
        let state = limiter.resolver().state().clone();
        Self {
            limiter,
            state,
            hub,
            reloader,
            envoy,
        }
    }

    /// With a shared store, writes the account's plan to Redis (for every
    /// replica) before it changes here.
    async fn share_plan(&self, account: &str, plan: Option<&str>) -> Result<(), Status> {
        match self.limiter.shared() {
            Some(shared) => shared
                .store
                .put_assignment(account, plan, &shared.replica)
                .await
                .map_err(convert::store_error),
            None => Ok(()),
        }
    }

    /// As [`Self::share_plan`], for the account's overrides.
    async fn share_overrides(&self, account: &str, list: &[Override]) -> Result<(), Status> {
        match self.limiter.shared() {
            Some(shared) => shared
                .store
                .put_overrides(account, list, &shared.replica)
                .await
                .map_err(convert::store_error),
            None => Ok(()),
        }
    }

    fn changed(&self, account: &str, cause: Cause) {
        self.limiter.resolver().invalidate(account);
        self.hub.account_changed(account, cause);
    }

    fn to_override(&self, o: &pb::Override) -> Result<Override, Status> {
        let change = if !o.rate.is_empty() {
            let (amount, window) = crate::config::parse_rate(&o.rate)
                .map_err(|e| Status::invalid_argument(format!("rate: {e}")))?;
            let per = match o.per.as_str() {
                "" | "subject" => Per::Subject,
                "account" => Per::Account,
                other => {
                    return Err(Status::invalid_argument(format!(
                        "per: expected subject or account, got {other:?}"
                    )));
                }
            };
            Change::Custom(Custom {
                amount,
                window,
                class: (!o.class.is_empty()).then(|| o.class.clone()),
                unit: if o.unit.is_empty() {
                    "requests".into()
                } else {
                    o.unit.clone()
                },
                algorithm: match pb::Algorithm::try_from(o.algorithm)
                    .unwrap_or(pb::Algorithm::Unspecified)
                {
                    pb::Algorithm::Unspecified | pb::Algorithm::FixedWindow => {
                        Algorithm::FixedWindow
                    }
                    pb::Algorithm::SlidingWindow => Algorithm::SlidingWindow,
                    pb::Algorithm::TokenBucket => Algorithm::TokenBucket,
                },
                per,
            })
        } else if o.unlimited {
            Change::Unlimited
        } else if o.amount > 0 {
            Change::Amount(o.amount)
        } else {
            return Err(Status::invalid_argument(
                "amount: must be at least 1 (or set unlimited, or give rate)",
            ));
        };
        let expires_at = o.expires_at.as_ref().map(convert::nanos_of).transpose()?;
        if expires_at.is_some_and(|t| t <= self.limiter.now()) {
            return Err(Status::invalid_argument("expires_at: already past"));
        }
        Ok(Override {
            limit: o.limit.clone(),
            change,
            expires_at,
            reason: o.reason.clone(),
        })
    }
}

#[tonic::async_trait]
impl<S: CounterStore + 'static> pb::admin_server::Admin for AdminService<S> {
    async fn set_plan(
        &self,
        request: Request<pb::SetPlanRequest>,
    ) -> Result<Response<pb::SetPlanResponse>, Status> {
        let peer = peer(&request);
        let r = request.into_inner();
        required("account", &r.account)?;
        let catalog = self.limiter.catalog();
        let (_, previous) = self.limiter.resolver().source(&catalog, &r.account);
        if r.clear {
            self.share_plan(&r.account, None).await?;
            self.state
                .set_assignment(&r.account, None)
                .map_err(internal)?;
        } else {
            required("plan", &r.plan)?;
            if !catalog.plans.contains_key(&r.plan) {
                let known: Vec<_> = catalog.plans.keys().map(String::as_str).collect();
                return Err(Status::not_found(format!(
                    "plan: no plan named {:?} (plans: {})",
                    r.plan,
                    known.join(", ")
                )));
            }
            self.share_plan(&r.account, Some(&r.plan)).await?;
            self.state
                .set_assignment(&r.account, Some(&r.plan))
                .map_err(internal)?;
        }
        self.changed(&r.account, Cause::PlanChanged);
        let (_, plan) = self.limiter.resolver().source(&catalog, &r.account);
        tracing::info!(admin.action = "set_plan", client.addr = %peer, account = %r.account, plan = %plan, previous = %previous, "plan set");
        Ok(Response::new(pb::SetPlanResponse {
            account: r.account,
            plan,
            previous_plan: previous,
        }))
    }

    async fn get_subject(
        &self,
        request: Request<pb::GetSubjectRequest>,
    ) -> Result<Response<pb::SubjectState>, Status> {
        let r = request.into_inner();
        required("subject", &r.subject)?;
        let account = account_of(&r.subject, &r.account).to_owned();
        let quota = self
            .limiter
            .quota(&r.subject, &account)
            .await
            .map_err(convert::store_error)?;
        let (source, _) = self
            .limiter
            .resolver()
            .source(&self.limiter.catalog(), &account);
        let now = self.limiter.now();
        Ok(Response::new(pb::SubjectState {
            subject: r.subject,
            plan: quota.plan.name.to_string(),
            plan_source: match source {
                Source::Runtime => pb::PlanSource::Runtime,
                Source::Config => pb::PlanSource::Config,
                Source::Default => pb::PlanSource::Default,
            } as i32,
            overrides: self
                .state
                .overrides(&account)
                .iter()
                .filter(|o| o.active(now))
                .map(|o| override_to_pb(&account, o))
                .collect(),
            limits: quota.limits.iter().map(convert::limit_status).collect(),
            denied_classes: quota
                .denied
                .iter()
                .map(|(c, m)| (c.to_string(), m.to_string()))
                .collect(),
            account,
        }))
    }

    async fn set_override(
        &self,
        request: Request<pb::Override>,
    ) -> Result<Response<pb::Override>, Status> {
        let peer = peer(&request);
        let r = request.into_inner();
        required("account", &r.account)?;
        required("limit", &r.limit)?;
        let o = self.to_override(&r)?;
        // It must apply to the account's plan, together with its others.
        let catalog = self.limiter.catalog();
        let (_, base) = self.limiter.resolver().source(&catalog, &r.account);
        let base = catalog.plans.get(&base).unwrap_or(&catalog.default_plan);
        let mut all = self.state.overrides(&r.account);
        all.retain(|x| x.limit != o.limit);
        all.push(o.clone());
        overrides::apply(
            base,
            &all,
            self.limiter.now(),
            &catalog.class_names,
            self.limiter.slots(),
        )
        .map_err(|e| Status::invalid_argument(format!("limit: {e}")))?;
        self.share_overrides(&r.account, &all).await?;
        self.state
            .set_override(&r.account, o.clone())
            .map_err(internal)?;
        self.changed(&r.account, Cause::OverrideChanged);
        tracing::info!(admin.action = "set_override", client.addr = %peer, account = %r.account, limit = %o.limit, change = ?o.change, expires_at = ?o.expires_at, reason = %o.reason, "override set");
        Ok(Response::new(override_to_pb(&r.account, &o)))
    }

    async fn remove_override(
        &self,
        request: Request<pb::RemoveOverrideRequest>,
    ) -> Result<Response<pb::RemoveOverrideResponse>, Status> {
        let peer = peer(&request);
        let r = request.into_inner();
        required("account", &r.account)?;
        required("limit", &r.limit)?;
        let mut rest = self.state.overrides(&r.account);
        rest.retain(|o| o.limit != r.limit);
        self.share_overrides(&r.account, &rest).await?;
        let removed = self
            .state
            .remove_override(&r.account, &r.limit)
            .map_err(internal)?;
        if removed {
            self.changed(&r.account, Cause::OverrideChanged);
        }
        tracing::info!(admin.action = "remove_override", client.addr = %peer, account = %r.account, limit = %r.limit, removed, "override removed");
        Ok(Response::new(pb::RemoveOverrideResponse { removed }))
    }

    async fn reset_usage(
        &self,
        request: Request<pb::ResetUsageRequest>,
    ) -> Result<Response<pb::ResetUsageResponse>, Status> {
        let peer = peer(&request);
        let r = request.into_inner();
        required("subject", &r.subject)?;
        let counters = self
            .limiter
            .reset(&r.subject, &r.account)
            .await
            .map_err(convert::store_error)?;
        self.hub.consumed(&r.subject, &r.account);
        tracing::info!(admin.action = "reset_usage", client.addr = %peer, subject = %r.subject, account = %r.account, counters, "usage reset");
        Ok(Response::new(pb::ResetUsageResponse {
            counters: counters as u64,
        }))
    }

    async fn list_plans(
        &self,
        _: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        let catalog = self.limiter.catalog();
        let plans = catalog
            .plans
            .values()
            .map(|p| pb::PlanInfo {
                name: p.name.to_string(),
                description: p.description.clone().unwrap_or_default(),
                extends: p.extends.clone().unwrap_or_default(),
                limits: p.limits.iter().map(|l| limit_info(l)).collect(),
            })
            .collect();
        Ok(Response::new(pb::ListPlansResponse {
            plans,
            default_plan: catalog.default_plan.name.to_string(),
        }))
    }

    async fn reload_config(
        &self,
        request: Request<pb::ReloadConfigRequest>,
    ) -> Result<Response<pb::ReloadConfigResponse>, Status> {
        let peer = peer(&request);
        let (reloader, envoy) = (self.reloader.clone(), self.envoy.clone());
        let (file, rules) =
            tokio::task::spawn_blocking(move || (reloader.reload(), envoy.reload()))
                .await
                .map_err(|e| internal(e.to_string()))?;
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
            Err(ReloadError::NoFile) => {
                return Err(Status::failed_precondition(ReloadError::NoFile.to_string()));
            }
            Err(ReloadError::Invalid(e)) => return Err(Status::invalid_argument(e.to_string())),
        }
        if let Some(rules) = rules {
            let domains = rules.map_err(|e| Status::invalid_argument(e.to_string()))?;
            response.envoy_config = self
                .envoy
                .dir()
                .map(|d| d.display().to_string())
                .unwrap_or_default();
            response.envoy_domains = domains as u32;
        }
        Ok(Response::new(response))
    }
}

fn required(field: &str, value: &str) -> Result<(), Status> {
    if value.trim().is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field}: must not be empty"
        )));
    }
    Ok(())
}

/// A state file failure: logged in full, answered generically.
fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "admin call failed");
    Status::internal("the change could not be stored; see the server log")
}

fn peer<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map_or_else(|| "unknown".into(), |a| a.to_string())
}

fn override_to_pb(account: &str, o: &Override) -> pb::Override {
    let mut out = pb::Override {
        account: account.to_owned(),
        limit: o.limit.clone(),
        expires_at: o.expires_at.map(convert::timestamp),
        reason: o.reason.clone(),
        ..Default::default()
    };
    match &o.change {
        Change::Amount(n) => out.amount = *n,
        Change::Unlimited => out.unlimited = true,
        Change::Custom(c) => {
            out.amount = c.amount;
            out.rate = format!("{}/{}", c.amount, crate::plans::window_name(c.window));
            out.class = c.class.clone().unwrap_or_default();
            out.unit = c.unit.clone();
            out.algorithm = convert::algorithm(c.algorithm) as i32;
            out.per = c.per.as_str().to_owned();
        }
    }
    out
}

fn limit_info(l: &crate::plans::Limit) -> pb::LimitInfo {
    let mut info = pb::LimitInfo {
        name: l.name.to_string(),
        class: l.class.as_deref().unwrap_or_default().to_owned(),
        unit: l.unit.to_string(),
        window: (l.window > 0).then(|| convert::duration(l.window)),
        max_cost: l.max_cost.unwrap_or(0),
        per: l.per.as_str().to_owned(),
        ..Default::default()
    };
    match &l.kind {
        LimitKind::Counted {
            rate,
            algorithm,
            burst,
            ..
        } => {
            info.amount = rate.amount();
            info.algorithm = convert::algorithm(*algorithm) as i32;
            info.burst = burst.map_or(0, |(cap, _)| cap.amount());
        }
        LimitKind::Unlimited => info.unlimited = true,
        LimitKind::Deny(m) => info.deny = m.to_string(),
    }
    info
}
