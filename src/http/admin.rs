//! `tollgate.v1.Admin` as JSON under `/v1/admin/`, one `POST` path per
//! method (`/v1/admin/set-plan` is `SetPlan`; `set_plan`, `setPlan` and
//! `SetPlan` name it too), taking and answering the method's messages.
//! `list-plans` also answers `GET`.
//!
//! The request's `Authorization` header goes into the gRPC metadata and
//! through the same interceptor ([`AdminAuth`](crate::api::auth::AdminAuth)),
//! so the token check, and its UNAUTHENTICATED (401) and PERMISSION_DENIED
//! (403) answers, are gRPC's.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::{any, get};
use prost::{Message, Name};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::server::TcpConnectInfo;
use tonic::{Request, Status};

use super::{Services, error, json, read_body};
use crate::api::admin::AdminService;
use crate::proto::tollgate::v1 as pb;
use pb::admin_server::Admin;

/// The admin routes, to nest under `/v1/admin`.
pub(super) fn routes() -> Router<Services> {
    Router::new()
        .route("/top", get(super::insight::top))
        .route("/events", get(super::insight::events))
        .route("/usage", get(super::insight::usage))
        .route("/{method}", any(dispatch))
}

/// `/v1/admin/<method>`: the gRPC method's name in any spelling
/// (`set-plan`, `set_plan`, `setPlan`, `SetPlan`), by `POST`; `list-plans`
/// also by `GET`.
async fn dispatch(
    Path(method): Path<String>,
    verb: Method,
    s: State<Services>,
    p: ConnectInfo<SocketAddr>,
    h: HeaderMap,
    b: Body,
) -> Response {
    let Some(found) = AdminMethod::named(&method) else {
        let names: Vec<&str> = METHODS.iter().map(|m| m.path).collect();
        return super::error_with(
            StatusCode::NOT_FOUND,
            tonic::Code::NotFound,
            &format!(
                "/v1/admin/{method}: no such method; the methods are {}",
                names.join(", ")
            ),
        );
    };
    if verb != Method::POST && !(found.get && verb == Method::GET) {
        let allow = if found.get { "GET, POST" } else { "POST" };
        let mut response = super::error_with(
            StatusCode::METHOD_NOT_ALLOWED,
            tonic::Code::InvalidArgument,
            &format!("/v1/admin/{method}: use {}", allow.replace(", ", " or ")),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        return response;
    }
    (found.call)(s, p, h, b).await
}

/// One admin method under `/v1/admin/`.
struct AdminMethod {
    /// Its path, in kebab case.
    path: &'static str,
    /// Whether `GET` reaches it too (it changes nothing).
    get: bool,
    call: Handler,
}

type Handler = fn(
    State<Services>,
    ConnectInfo<SocketAddr>,
    HeaderMap,
    Body,
) -> Pin<Box<dyn Future<Output = Response> + Send>>;

/// One row of [`METHODS`]: the path, whether `GET` reaches it, and the
/// trait method it calls (its messages inferred from it).
macro_rules! method {
    ($path:literal, get: $get:literal, $rpc:ident) => {
        AdminMethod {
            path: $path,
            get: $get,
            call: |s, p, h, b| {
                Box::pin(call(
                    s,
                    p,
                    h,
                    b,
                    |a, r| async move { Admin::$rpc(&*a, r).await },
                ))
            },
        }
    };
}

/// Every admin method, once: the routes, the `Allow` header and the
/// not-found message are read from here.
const METHODS: &[AdminMethod] = &[
    method!("set-plan", get: false, set_plan),
    method!("set-billing-anchor", get: false, set_billing_anchor),
    method!("get-subject", get: false, get_subject),
    method!("set-override", get: false, set_override),
    method!("remove-override", get: false, remove_override),
    method!("reset-usage", get: false, reset_usage),
    method!("list-plans", get: true, list_plans),
    method!("reload-config", get: false, reload_config),
    method!("top-subjects", get: false, top_subjects),
];

impl AdminMethod {
    /// The method `name` spells in any case, with or without `-` or `_`.
    fn named(name: &str) -> Option<&'static Self> {
        let key = |s: &str| -> String {
            s.chars()
                .filter(|c| !matches!(c, '-' | '_'))
                .map(|c| c.to_ascii_lowercase())
                .collect()
        };
        let wanted = key(name);
        METHODS.iter().find(|m| key(m.path) == wanted)
    }
}

/// Decodes the body as the method's request message (its JSON mapping found
/// by the message's full name, `prost::Name`), checks the token, calls `f`
/// and answers its response message or the error table's status.
async fn call<Req, Resp, F, Fut>(
    State(s): State<Services>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
    f: F,
) -> Response
where
    Req: Message + Default + Name,
    Resp: Message + Name,
    F: FnOnce(Arc<AdminService>, Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let answer = async {
        let metadata = authorize(&s, peer, &headers)?;
        let message: Req = json::decode(&body)?;
        let mut request = Request::from_parts(metadata, Default::default(), message);
        request.extensions_mut().insert(connect_info(peer));
        f(s.admin.clone(), request).await
    };
    match answer.await {
        Ok(r) => super::json_response(StatusCode::OK, json::encode(r.get_ref())),
        Err(e) => error(&e),
    }
}

/// Checks the request's token as the gRPC interceptor does; the metadata
/// it read, for the call.
pub(super) fn authorize(
    s: &Services,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<MetadataMap, Status> {
    let metadata = metadata(headers)?;
    let mut probe = Request::from_parts(metadata.clone(), Default::default(), ());
    probe.extensions_mut().insert(connect_info(peer));
    s.admin_auth.check(probe)?;
    Ok(metadata)
}

/// The gRPC metadata the interceptor reads: the `Authorization` header.
fn metadata(headers: &HeaderMap) -> Result<MetadataMap, Status> {
    let mut metadata = MetadataMap::new();
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v
            .to_str()
            .ok()
            .and_then(|v| MetadataValue::try_from(v).ok())
            .ok_or_else(|| Status::unauthenticated("authorization: not a valid header value"))?;
        metadata.insert("authorization", v);
    }
    Ok(metadata)
}

/// The peer as tonic records it, so admin changes log who made them.
fn connect_info(peer: SocketAddr) -> TcpConnectInfo {
    TcpConnectInfo {
        local_addr: None,
        remote_addr: Some(peer),
    }
}
