//! An in-process fleet for tests: an edge (CA, fleet listener on a
//! loopback port, tunnels) on a real PostgreSQL database, nodes joined with
//! real join tokens, and a node-side SSH server for relayed connections
//! that authenticates with the real [`NodeTrust`] check.
//!
//! The node's SSH server here is a small stand-in for the session core's
//! (not wired yet): it accepts only a relay certificate from the edge CA,
//! opens only the channel kind the certificate names, and answers requests
//! with what it saw, so a test can check every request crossed the relay.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use portcullis::audit::AuditLog;
use portcullis::fleet::ca::{EdgeCa, new_key};
use portcullis::fleet::tunnel::edge::{self, EdgeContext};
use portcullis::fleet::tunnel::node::TunnelSettings;
use portcullis::fleet::tunnel::{NodeIdentity, RelayAcceptor, TunnelClient, Tunnels};
use portcullis::fleet::{NodeTrust, RelayAction, RelayedIdentity, join};
use portcullis::store::Store;
use russh::keys::ssh_key::Certificate;
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, Pty, Sig};
use tokio_util::sync::CancellationToken;

/// A running edge.
pub struct TestEdge {
    pub store: Store,
    pub audit: AuditLog,
    pub ca: EdgeCa,
    pub tunnels: Tunnels,
    pub addr: String,
    pub shutdown: CancellationToken,
    pub url: String,
}

impl Drop for TestEdge {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Polls `check` every 20 ms until it holds; panics naming `what` after
/// `limit`.
pub async fn poll_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl TestEdge {
    /// An edge named `edge-a` on a fresh database; re-checks its nodes every
    /// second.
    pub async fn start() -> TestEdge {
        Self::start_with_node_ttl(Duration::from_secs(3600)).await
    }

    /// As [`TestEdge::start`], minting node certificates valid for `ttl`.
    pub async fn start_with_node_ttl(ttl: Duration) -> TestEdge {
        let url = super::postgres::server().new_database();
        let store = Store::open(&url).await.unwrap().for_gateway("edge-a");
        let audit = AuditLog::new(store.clone());
        let ca = EdgeCa::from_key(new_key().unwrap());
        store
            .publish_fleet_ca(
                &ca.public_key_openssh(),
                &ca.fingerprint().to_string(),
                "edge-a",
            )
            .await
            .unwrap();
        let tunnels = Tunnels::default();
        let ctx = Arc::new(EdgeContext {
            store: store.clone(),
            audit: audit.clone(),
            ca: ca.clone(),
            edge_id: "edge-a".into(),
            node_certificate_ttl: ttl,
            keepalive: Duration::from_secs(2),
            heartbeat: Duration::from_secs(1),
            tunnels: tunnels.clone(),
            metrics: None,
        });
        let config = Arc::new(edge::listener_config(&ctx, new_key().unwrap()).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shutdown = CancellationToken::new();
        tokio::spawn(edge::serve(ctx, listener, config, shutdown.clone()));
        TestEdge {
            store,
            audit,
            ca,
            tunnels,
            addr,
            shutdown,
            url,
        }
    }

    /// A join token for `node`.
    pub async fn token(&self, node: &str, ttl: Duration) -> String {
        join::add_node(&self.store, &self.audit, node, ttl, "host:test")
            .await
            .unwrap()
            .token
    }

    /// Joins `node` (files in `dir`) and keeps its tunnel up, handing relay
    /// streams to `acceptor`; returns once the edge sees the tunnel.
    pub async fn join_node(
        &self,
        dir: &Path,
        node: &str,
        acceptor: Arc<dyn RelayAcceptor>,
    ) -> (Arc<NodeIdentity>, CancellationToken) {
        let token = self.token(node, Duration::from_secs(600)).await;
        let identity = NodeIdentity::join(dir, node, &self.addr, &token, self.ca.fingerprint())
            .await
            .unwrap();
        let identity = Arc::new(identity);
        let stop = CancellationToken::new();
        let settings = TunnelSettings {
            identity: identity.clone(),
            keepalive: Duration::from_secs(2),
            reconnect_max: Duration::from_millis(500),
            acceptor,
            metrics: None,
        };
        TunnelClient::start(settings, std::slice::from_ref(&self.addr), stop.clone());
        let tunnels = self.tunnels.clone();
        let name = node.to_string();
        poll_until("the tunnel", Duration::from_secs(20), || {
            let up = tunnels.is_connected(&name);
            async move { up }
        })
        .await;
        (identity, stop)
    }

    /// Audit rows of `kind` `fleet`, as (outcome, detail JSON).
    pub async fn fleet_audit(&self) -> Vec<(String, serde_json::Value)> {
        self.store
            .audit_events(None)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.kind == "fleet")
            .map(|r| (r.outcome, serde_json::from_str(&r.detail).unwrap()))
            .collect()
    }
}

/// A `pty-req` as seen: term, columns, rows, modes.
pub type PtySeen = (String, u32, u32, Vec<(Pty, u32)>);

/// What the stand-in node server saw, for assertions.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub identity: Option<RelayedIdentity>,
    pub pty: Option<PtySeen>,
    pub env: Vec<(String, String)>,
}

/// The stand-in node SSH server for relayed connections.
pub struct NodeServer {
    pub trust: NodeTrust,
    pub seen: Seen,
    pub refused: Arc<std::sync::Mutex<Vec<String>>>,
}

/// An acceptor running [`NodeServer`] on every relay stream.
pub fn node_server_acceptor(
    identity: Arc<std::sync::OnceLock<Arc<NodeIdentity>>>,
    refused: Arc<std::sync::Mutex<Vec<String>>>,
) -> Arc<dyn RelayAcceptor> {
    Arc::new(
        move |stream: portcullis::fleet::tunnel::TunnelStream,
              _origin: portcullis::fleet::tunnel::RelayOrigin| {
            let identity = identity.get().unwrap().clone();
            let refused = refused.clone();
            tokio::spawn(async move {
                let config = Arc::new(identity.relay_server_config(russh::server::Config {
                    auth_rejection_time: Duration::from_millis(10),
                    ..Default::default()
                }));
                let handler = NodeServer {
                    trust: identity.trust(),
                    seen: Seen::default(),
                    refused,
                };
                if let Ok(running) = russh::server::run_stream(config, stream, handler).await {
                    let _ = running.await;
                }
            });
        },
    )
}

impl russh::server::Handler for NodeServer {
    type Error = russh::Error;

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &Certificate,
    ) -> Result<Auth, Self::Error> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        match self.trust.verify_user_certificate(certificate, user, now) {
            Ok(id) => {
                self.seen.identity = Some(id);
                Ok(Auth::Accept)
            }
            Err(e) => {
                self.refused.lock().unwrap().push(e.to_string());
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.action() == Some(RelayAction::Session) {
            reply.accept().await;
        }
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.action() != Some(RelayAction::DirectTcpip) {
            return Ok(());
        }
        reply.accept().await;
        let greeting = format!("forwarded to {host}:{port}\n");
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = channel.into_stream();
            stream.write_all(greeting.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 65536];
            loop {
                let n = stream.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                stream.write_all(&buf[..n]).await.unwrap();
            }
            let _ = stream.shutdown().await;
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.seen.pty = Some((term.into(), col_width, row_height, modes.to_vec()));
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if variable_name == "REFUSE_ME" {
            return session.channel_failure(channel);
        }
        self.seen
            .env
            .push((variable_name.into(), variable_value.into()));
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let id = self.seen.identity.clone().unwrap();
        let out = format!(
            "exec {} as {}@{} for {} pty={:?} env={:?}\n",
            String::from_utf8_lossy(data),
            id.login,
            id.container,
            id.principal.subject,
            self.seen.pty,
            self.seen.env
        );
        session.data(channel, out.into_bytes())?;
        session.extended_data(channel, 1, b"to stderr\n".to_vec())?;
        session.exit_status_request(channel, 7)?;
        session.eof(channel)?;
        session.close(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name != "sftp" {
            return session.channel_failure(channel);
        }
        session.channel_success(channel)?;
        session.data(channel, b"sftp subsystem\n".to_vec())?;
        session.exit_status_request(channel, 0)?;
        session.eof(channel)?;
        session.close(channel)
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The shell: echoes its input.
        session.data(channel, data.to_vec())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.exit_status_request(channel, 0)?;
        session.eof(channel)?;
        session.close(channel)
    }

    #[allow(clippy::too_many_arguments)]
    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.data(
            channel,
            format!("winch {col_width}x{row_height}\n").into_bytes(),
        )
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.exit_signal_request(channel, signal, false, "signalled", "en")?;
        session.eof(channel)?;
        session.close(channel)
    }
}

impl NodeServer {
    fn action(&self) -> Option<RelayAction> {
        self.seen.identity.as_ref().map(|i| i.action)
    }
}

/// A `portcullis serve --role ROLE` process in its own process group,
/// killed (with the group) when dropped, and by a reaper when the test
/// process exits (a static fixture is never dropped).
pub struct RoleProcess {
    pub child: std::process::Child,
    pub config: std::path::PathBuf,
    pub log: std::path::PathBuf,
    /// The write end of the reaper's stdin: when it closes (this is
    /// dropped, or the test process exits however it does), the reaper
    /// sends SIGKILL to the role's whole process group.
    reaper: Option<std::process::ChildStdin>,
}

impl RoleProcess {
    /// Writes `config` (TOML, plus the repository's policies) to
    /// `dir/ROLE.toml` and starts the role.
    pub fn start(dir: &Path, role: &str, config: &str) -> RoleProcess {
        let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let path = dir.join(format!("{role}.toml"));
        std::fs::write(
            &path,
            format!("{config}\n[policy]\ndir = \"{}\"\n", policies.display()),
        )
        .unwrap();
        let log = dir.join(format!("{role}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--role", role, "--config"])
            .arg(&path)
            .env("PORTCULLIS_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            // Its own group (pgid = its pid), so the reaper kills it and
            // whatever it started, and nothing else.
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id();
        // `-PGID` (not `-- -PGID`: dash, the CI's `sh`, takes `--` for a
        // number and kills nothing).
        let reaper = super::container::reaper(&format!("kill -KILL -{pgid} 2>/dev/null"));
        RoleProcess {
            child,
            config: path,
            log,
            reaper: Some(reaper),
        }
    }

    /// Runs `portcullis --config CONFIG ARGS`; its stdout (panics on failure).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "portcullis {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The reaper kills the rest of the group.
        drop(self.reaper.take());
    }
}
