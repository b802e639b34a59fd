//! Operators' metrics (issue 16 point 10): one [`Metrics`] registry per
//! process, on every role, served as Prometheus text (format 0.0.4) at
//! `GET /metrics` on `[metrics] listen` ([`serve`]), with
//! `prometheus-client` and axum.
//!
//! Names follow Prometheus's naming guide: the `portcullis_` prefix, base
//! units (`_seconds`, `_bytes`), `_total` on counters (added by the
//! encoder). Label values come from small fixed sets or from node and edge
//! names, never from user input (no principal, target or command), so the
//! number of series stays bounded.
//!
//! Owns the registry and the HTTP endpoint; it never reads another module's
//! state: modules call the methods below where things happen.
//!
//! | call | where |
//! | --- | --- |
//! | [`Metrics::session_started`] / [`Metrics::session_ended`] | session core, around a live session |
//! | [`Metrics::login`] | ssh front door (and web), after each authentication outcome |
//! | [`Metrics::decision`] | session core, after each policy decision |
//! | [`Metrics::attach_latency`] | session core, from decision to process started |
//! | [`Metrics::relay_bytes`] | fleet relay (edge) |
//! | [`Metrics::tunnel_state`] | fleet tunnel, both ends |
//! | [`Metrics::notice`] | fleet fan-out |
//! | [`Metrics::upload_queue`], [`Metrics::upload_failed`], [`Metrics::spool_bytes`] | recording (S3 upload) |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of one series: `(name, value)` pairs.
type Labels = Vec<(String, String)>;

/// Buckets of latency histograms, seconds: 1 ms to 10 s.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A failed metrics step.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// `[metrics] listen` could not be bound.
    #[error("metrics.listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The process's metrics; cheap to share (`Arc`), every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sessions_live: Gauge,
    logins: Family<Labels, Counter>,
    decisions: Family<Labels, Counter>,
    attach_latency: Histogram,
    relay_bytes: Family<Labels, Counter>,
    tunnel_up: Family<Labels, Gauge>,
    tunnel_connects: Family<Labels, Counter>,
    notices: Family<Labels, Counter>,
    notice_latency: Histogram,
    upload_queue: Gauge,
    upload_failures: Counter,
    spool_bytes: Gauge,
}

fn label(name: &str, value: &str) -> Labels {
    vec![(name.to_string(), value.to_string())]
}

impl Metrics {
    /// A registry with every Portcullis metric, `portcullis_build_info`
    /// set to 1 with this binary's version and `role` (`all`, `node`,
    /// `edge`).
    pub fn new(role: &str) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("portcullis");
        let build_info = Family::<Labels, Gauge>::default();
        build_info
            .get_or_create(&vec![
                ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
                ("role".to_string(), role.to_string()),
            ])
            .set(1);
        registry.register(
            "build_info",
            "Always 1; labels name the version and role",
            build_info,
        );
        let metrics = Metrics {
            sessions_live: Gauge::default(),
            logins: Family::default(),
            decisions: Family::default(),
            attach_latency: Histogram::new(LATENCY_BUCKETS),
            relay_bytes: Family::default(),
            tunnel_up: Family::default(),
            tunnel_connects: Family::default(),
            notices: Family::default(),
            notice_latency: Histogram::new(LATENCY_BUCKETS),
            upload_queue: Gauge::default(),
            upload_failures: Counter::default(),
            spool_bytes: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "sessions_live",
            "Sessions running now on this process",
            metrics.sessions_live.clone(),
        );
        r.register(
            "logins",
            "Authentications by outcome (success, failure)",
            metrics.logins.clone(),
        );
        r.register(
            "decisions",
            "Policy decisions by outcome (allow, deny)",
            metrics.decisions.clone(),
        );
        r.register(
            "attach_latency_seconds",
            "From the allowing decision to the process started in the container",
            metrics.attach_latency.clone(),
        );
        r.register(
            "relay_bytes",
            "Bytes relayed between users and nodes by direction (to_node, from_node)",
            metrics.relay_bytes.clone(),
        );
        r.register(
            "tunnel_up",
            "1 while the tunnel between node and edge is up, else 0",
            metrics.tunnel_up.clone(),
        );
        r.register(
            "tunnel_connects",
            "Tunnel connections established, by node and edge",
            metrics.tunnel_connects.clone(),
        );
        r.register(
            "notices",
            "Fleet notices received (kill, lock, grant_revoked, node_removed, resync)",
            metrics.notices.clone(),
        );
        r.register(
            "notice_latency_seconds",
            "From a notice's commit to its delivery to this process",
            metrics.notice_latency.clone(),
        );
        r.register(
            "upload_queue",
            "Recordings waiting to be uploaded to object storage",
            metrics.upload_queue.clone(),
        );
        r.register(
            "upload_failures",
            "Failed recording upload attempts",
            metrics.upload_failures.clone(),
        );
        r.register(
            "spool_bytes",
            "Bytes of recordings in the local spool",
            metrics.spool_bytes.clone(),
        );
        Arc::new(Metrics {
            registry,
            ..metrics
        })
    }

    /// A session started (`+1` on `portcullis_sessions_live`).
    pub fn session_started(&self) {
        self.sessions_live.inc();
    }

    /// A session ended (`-1` on `portcullis_sessions_live`).
    pub fn session_ended(&self) {
        self.sessions_live.dec();
    }

    /// One authentication outcome: `success` or `failure`.
    pub fn login(&self, success: bool) {
        let outcome = if success { "success" } else { "failure" };
        self.logins.get_or_create(&label("outcome", outcome)).inc();
    }

    /// One policy decision: `allow` or `deny`.
    pub fn decision(&self, allowed: bool) {
        let outcome = if allowed { "allow" } else { "deny" };
        self.decisions
            .get_or_create(&label("outcome", outcome))
            .inc();
    }

    /// How long an attach took.
    pub fn attach_latency(&self, took: Duration) {
        self.attach_latency.observe(took.as_secs_f64());
    }

    /// `bytes` relayed towards the node (`to_node = true`) or from it.
    pub fn relay_bytes(&self, to_node: bool, bytes: u64) {
        let direction = if to_node { "to_node" } else { "from_node" };
        self.relay_bytes
            .get_or_create(&label("direction", direction))
            .inc_by(bytes);
    }

    /// The tunnel between `node` and `edge` went up or down.
    pub fn tunnel_state(&self, node: &str, edge: &str, up: bool) {
        let labels = vec![
            ("node".to_string(), node.to_string()),
            ("edge".to_string(), edge.to_string()),
        ];
        self.tunnel_up.get_or_create(&labels).set(i64::from(up));
        if up {
            self.tunnel_connects.get_or_create(&labels).inc();
        }
    }

    /// A fleet notice of `kind` arrived, `latency` after its commit (none
    /// for a resync).
    pub fn notice(&self, kind: &str, latency: Option<Duration>) {
        self.notices.get_or_create(&label("kind", kind)).inc();
        if let Some(latency) = latency {
            self.notice_latency.observe(latency.as_secs_f64());
        }
    }

    /// Recordings waiting for upload now.
    pub fn upload_queue(&self, waiting: i64) {
        self.upload_queue.set(waiting);
    }

    /// One failed upload attempt.
    pub fn upload_failed(&self) {
        self.upload_failures.inc();
    }

    /// Bytes in the local spool now.
    pub fn spool_bytes(&self, bytes: i64) {
        self.spool_bytes.set(bytes);
    }

    /// The whole registry as Prometheus text (format 0.0.4).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        text
    }
}

/// Binds `addr` for [`serve`].
///
/// # Errors
/// [`MetricsError::Bind`].
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, MetricsError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// The endpoint's routes: `GET /metrics` only.
pub fn app(metrics: Arc<Metrics>) -> axum::Router {
    use axum::http::header::CONTENT_TYPE;
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        CONTENT_TYPE,
                        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                    )],
                    metrics.encode(),
                )
            }
        }),
    )
}

/// Serves [`app`] on `listener` until `shutdown` is cancelled.
pub async fn serve(
    metrics: Arc<Metrics>,
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let served = axum::serve(listener, app(metrics))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "metrics endpoint stopped");
    }
}
