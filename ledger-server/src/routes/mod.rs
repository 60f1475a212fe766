//! The `/v1` endpoints, one module per area of API.md.

use crate::app::AppState;
use utoipa_axum::router::OpenApiRouter;

pub mod audit;
pub mod periods;
pub mod setup;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(setup::router())
        .merge(audit::router())
        .merge(periods::router())
}
