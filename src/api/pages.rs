//! Web pages served on the client API port itself, so they share its mutual TLS: the
//! participation report (issue 4, item 6) for the region's operators and its
//! municipality (the match officer organisation). A browser with the right client
//! certificate opens `https://<node>:<port>/participation`; `.csv` gives the export.

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::ApiState;
use crate::participation::{report, ParticipationConfig, ParticipationReport};
use crate::pki::{Identity, PeerInfo};

/// The routes, to add to the client API server next to the gRPC services.
pub fn routes(state: Arc<ApiState>) -> Router {
    Router::new().route("/participation", get(html)).route("/participation.csv", get(csv)).with_state(state)
}

/// The report, if the certificate may read it; otherwise the response to send.
fn allowed(state: &ApiState, peer: Option<Extension<PeerInfo>>) -> Result<ParticipationReport, (StatusCode, String)> {
    let Some(Extension(peer)) = peer else {
        return Err((StatusCode::UNAUTHORIZED, "no verified client certificate on this connection\n".into()));
    };
    let ok = match &peer.identity {
        Identity::Operator(_) => true,
        Identity::Organisation(org) => state.match_officer.as_ref().map(|o| o.as_str()) == Some(org.as_str()),
        _ => false,
    };
    if !ok {
        let message = format!(
            "the participation report is for the region's operators and its municipality; this certificate names {}\n",
            peer.identity
        );
        return Err((StatusCode::FORBIDDEN, message));
    }
    let failed = |e: crate::store::StoreError| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"));
    let orgs = state.store().orgs().map_err(failed)?;
    let audit = state.store().audit_entries().map_err(failed)?;
    Ok(report(&orgs, &audit, state.clock.today(), &ParticipationConfig::default()))
}

async fn html(State(state): State<Arc<ApiState>>, peer: Option<Extension<PeerInfo>>) -> Response {
    match allowed(&state, peer) {
        Ok(r) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], r.to_html()).into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn csv(State(state): State<Arc<ApiState>>, peer: Option<Extension<PeerInfo>>) -> Response {
    match allowed(&state, peer) {
        Ok(r) => ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], r.to_csv()).into_response(),
        Err(refused) => refused.into_response(),
    }
}
