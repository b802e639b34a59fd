//! The container inventory in the console: every container the gateway
//! finds, with its labels, state, backend and node (this gateway's id for
//! its own containers; on a fleet edge, the node each of the fleet's
//! containers runs on, as the nodes report them), and who used it last
//! and when (the newest session's principal and start).
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
use crate::inventory::ContainerState;
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

/// `GET /containers`.
pub(crate) async fn list(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
) -> Result<Response, WebError> {
    console
        .authorize_page(&viewer, Action::ViewContainers, "see the containers")
        .await?;
    let last = console.store.last_session_per_container().await?;
    let (containers, problem) = match console.inventory.list().await {
        Ok(list) => (list, String::new()),
        Err(e) => {
            tracing::warn!(error = %e, "web console: cannot list containers");
            (
                Vec::new(),
                "The inventory cannot be read right now.".to_string(),
            )
        }
    };
    let here = console.config.gateway_id();
    let mut rows: Vec<Row> = containers
        .into_iter()
        .map(|c| {
            let (last_principal, last_at) = last
                .get(&c.name)
                .map(|(p, at)| (p.clone(), format_time(*at)))
                .unwrap_or_default();
            Row {
                labels: c
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                state: match &c.state {
                    ContainerState::Running { .. } => "running".into(),
                    ContainerState::NotRunning(s) => s.to_lowercase(),
                },
                backend: c.backend.as_str().into(),
                node: here.clone(),
                name: c.name,
                last_principal,
                last_at,
            }
        })
        .collect();
    // The fleet's containers on other nodes (none on a gateway alone).
    for c in console.store.fleet_containers().await? {
        if rows.iter().any(|r| r.name == c.name) {
            continue;
        }
        let labels: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&c.labels).unwrap_or_default();
        let (last_principal, last_at) = last
            .get(&c.name)
            .map(|(p, at)| (p.clone(), format_time(*at)))
            .unwrap_or_default();
        rows.push(Row {
            labels: labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
            state: c.state.to_lowercase(),
            backend: "fleet".into(),
            node: c.node,
            name: c.name,
            last_principal,
            last_at,
        });
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    page(&ContainersPage {
        nav: Nav::of(&viewer),
        rows,
        problem,
    })
}
