//! The `/v1` endpoints, one module per area of API.md.

use crate::app::AppState;
use utoipa_axum::router::OpenApiRouter;

pub mod alerts;
pub mod audit;
pub mod charges;
pub mod elders;
pub mod orders;
pub mod periods;
pub mod reconciliation;
pub mod setup;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(setup::router())
        .merge(audit::router())
        .merge(elders::router())
        .merge(periods::router())
        .merge(orders::router())
        .merge(charges::router())
        .merge(reconciliation::router())
        .merge(alerts::router())
}
