//! The container inventory in the console: the rows of
//! [`crate::inventory::container_rows`] (the same as `portcullis
//! containers list`: in a fleet every node's containers as the nodes
//! report them, otherwise this gateway's), with labels, state, backend,
//! node, and who used each last and when.
//!
//! `view_containers` decides the page. It reads [`crate::inventory`] and
//! the store; it never enters a container.

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::response::Response;

use super::auth::Viewer;
use super::views::{Nav, format_time, page};
use super::{Console, WebError};
use crate::inventory::container_rows;
use crate::policy::Action;

struct Row {
    name: String,
    labels: String,
    state: String,
    backend: String,
    node: String,
    last_principal: String,
    last_at: String,
}

#[derive(Template)]
#[template(path = "containers.html")]
struct ContainersPage {
    nav: Option<Nav>,
    rows: Vec<Row>,
    problem: String,
}

/// `GET /containers`: [`container_rows`], as `portcullis containers list`
/// shows them.
pub(crate) async fn list(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
) -> Result<Response, WebError> {
    console
        .authorize_page(&viewer, Action::ViewContainers, "see the containers")
        .await?;
    let fresh = console.config.fleet.heartbeat.saturating_mul(3);
    let here = console.config.gateway_id();
    let (found, problem) =
        match container_rows(&console.inventory, &console.store, &here, fresh).await {
            Ok(rows) => (rows, String::new()),
            Err(e) => {
                tracing::warn!(error = %e, "web console: cannot list containers");
                (
                    Vec::new(),
                    "The inventory cannot be read right now.".to_string(),
                )
            }
        };
    let rows = found
        .into_iter()
        .map(|c| {
            let (last_principal, last_at) = c
                .last_session
                .as_ref()
                .map(|s| (s.principal.clone(), format_time(s.started_at)))
                .unwrap_or_default();
            Row {
                labels: c
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                state: c.state.to_lowercase(),
                backend: c.backend.into(),
                node: c.node,
                name: c.name,
                last_principal,
                last_at,
            }
        })
        .collect();
    page(&ContainersPage {
        nav: Nav::of(&viewer),
        rows,
        problem,
    })
}
