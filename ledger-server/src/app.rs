//! The application: shared state and the router (`app()`), kept apart from `main` so tests
//! and the simulator can build it. Every route is registered through utoipa-axum, so the
//! OpenAPI document at `/v1/openapi.json` is generated from the handlers themselves.

use crate::body::BODY_BYTES_MAX;
use crate::clock::ServerClock;
use crate::error::ApiError;
use crate::pii::Pii;
use crate::registry::Registry;
use crate::routes;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::Router;
use ledger_core::Ledger;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub struct Config {
    pub data_dir: PathBuf,
    /// Time to live of a charge's hold (`--hold-ttl`).
    pub hold_ttl_secs: u32,
}

#[derive(Clone)]
pub struct AppState {
    pub ledger: Arc<Ledger>,
    pub registry: Arc<Registry>,
    pub clock: Arc<ServerClock>,
    pub pii: Arc<Pii>,
    pub settlement: Arc<crate::settlement::Settlement>,
    pub sms: Arc<dyn crate::sms::SmsSender>,
    pub config: Arc<Config>,
    /// Serialises issuance and closes (each is a long bulk job whose counts must be exact).
    pub jobs: Arc<tokio::sync::Mutex<()>>,
}

impl AppState {
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        use ledger_core::clock::Clock;
        self.clock.now()
    }
    pub fn now_text(&self) -> String {
        ledger_core::fiscal::format_timestamp(self.now())
    }
}

#[derive(OpenApi)]
#[openapi(info(
    title = "Subsidy ledger API",
    description = "Binding interface: ../shared/API.md. Amounts are JSON strings of decimal yuan."
))]
struct ApiDoc;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request ids: a process-unique counter (no personal data, cheap, sortable in logs).
#[derive(Clone, Default)]
struct Counter(Arc<AtomicU64>);

impl MakeRequestId for Counter {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        format!("r{n:08}").parse().ok().map(RequestId::new)
    }
}

pub fn app(state: AppState) -> Router {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(routes::router())
        .split_for_parts();
    let api = Arc::new(api);
    router
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let api = Arc::clone(&api);
                async move { axum::Json(serde_json::to_value(&*api).unwrap_or_default()) }
            }),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .with_state(state)
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", id, method = %req.method(), path = %req.uri().path())
            })
            .on_response(tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, Counter::default()))
}
