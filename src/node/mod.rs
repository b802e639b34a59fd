//! A fleet node's front door for sessions an edge relays (issue 16): the
//! SSH server run on each tunnel stream (`russh::server::run_stream`). It
//! accepts one login only, a user certificate from the edge CA the node
//! pinned ([`crate::fleet::NodeTrust::verify_user_certificate`]), audited
//! either way; then one channel of the kind the certificate names, whose
//! shell or command runs through this node's own session core
//! ([`crate::session::shell::run_with_id`]: the policy decided again,
//! attach, recording) under the session id the certificate names.
//!
//! Like the ssh front door it stays thin and never waits inside russh's
//! connection loop (input goes to the session's queue with `try_send`; the
//! window is granted as the session consumes it). It never imports the ssh
//! front door, and never serves what the certificate does not name (one
//! session channel: pty, env, shell or exec, the sftp subsystem or legacy
//! scp, window changes, signals; or one `direct-tcpip` channel to the one
//! destination a forward's certificate names). Transfers and forwards run
//! through the session core as on a gateway
//! ([`crate::session::transfer::run_with_id`],
//! [`crate::session::forward::open_with_id`]).

mod output;

use std::sync::Arc;
use std::time::Duration;

use russh::keys::Certificate;
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, ChannelWriteHalf, Pty, Sig};

use crate::attach::PtyRequest;
use crate::audit::{AuditEvent, AuditSubject, truncate};
use crate::fleet::ca::now_secs;
use crate::fleet::tunnel::{NodeIdentity, RelayOrigin, TunnelStream};
use crate::fleet::{RelayAction, RelayedIdentity};
use crate::gateway::Gateway;
use crate::session::forward::{ForwardRefused, ForwardRequest};
use crate::session::io::{Credit, Input, InputReceiver, InputRefused, InputSender, input_queue};
use crate::session::shell::ShellRequest;
use crate::session::transfer::TransferKind;
use crate::session::{Caller, Destination, Target};
use crate::wire::{clamp_dim, sanitize_term, signal_number};
use output::RelayedOutput;

/// Bytes of input a relayed channel may hold before its session takes
/// them: the relay window ([`crate::fleet::tunnel::RELAY_WINDOW_BYTES`])
/// plus room for control events.
const INPUT_LIMIT: usize = crate::fleet::tunnel::RELAY_WINDOW_BYTES as usize + 64 * 1024;

/// Longest accepted exec command, in bytes (as the ssh front door).
const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// The audit `method` of relay logins.
const METHOD: &str = "relay_certificate";

/// Serves one relay stream from `origin` with `identity`'s host
/// certificate until it ends or the node shuts down; spawned, never
/// blocks the tunnel.
pub fn accept(
    gateway: Arc<Gateway>,
    identity: Arc<NodeIdentity>,
    stream: TunnelStream,
    origin: RelayOrigin,
) {
    tokio::spawn(async move {
        let config = Arc::new(identity.relay_server_config(russh::server::Config {
            auth_rejection_time: Duration::from_millis(10),
            auth_rejection_time_initial: Some(Duration::ZERO),
            max_auth_attempts: 2,
            inactivity_timeout: None,
            window_on_consume: true,
            ..Default::default()
        }));
        let handler = RelayedHandler {
            gateway: gateway.clone(),
            identity,
            origin,
            caller: None,
            relayed: None,
            channel: None,
        };
        let running = match russh::server::run_stream(config, stream, handler).await {
            Ok(running) => running,
            Err(e) => {
                tracing::warn!(error = %e, "relay handshake failed");
                return;
            }
        };
        let handle = running.handle();
        tokio::select! {
            result = running => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "relayed connection ended with an error");
                }
            }
            _ = gateway.shutdown.cancelled() => {
                let _ = handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "the node is shutting down".into(),
                        "en".into(),
                    )
                    .await;
            }
        }
    });
}

/// The one channel of a relayed connection.
#[derive(Default)]
struct ChannelState {
    id: Option<ChannelId>,
    pty: Option<PtyRequest>,
    env: Vec<(String, String)>,
    writer: Option<ChannelWriteHalf<Msg>>,
    input: Option<InputSender>,
}

/// What a started channel's session gets.
struct ChannelIo {
    pty: Option<PtyRequest>,
    env: Vec<(String, String)>,
    input: InputReceiver,
    output: RelayedOutput,
}

/// One relayed connection's state.
struct RelayedHandler {
    gateway: Arc<Gateway>,
    identity: Arc<NodeIdentity>,
    origin: RelayOrigin,
    caller: Option<Caller>,
    relayed: Option<RelayedIdentity>,
    channel: Option<ChannelState>,
}

impl RelayedHandler {
    /// The open channel's state, when `channel` is it.
    fn state(&mut self, channel: ChannelId) -> Option<&mut ChannelState> {
        self.channel.as_mut().filter(|c| c.id == Some(channel))
    }

    /// Hands `input` to the session without waiting (see the module docs).
    fn deliver(&mut self, channel: ChannelId, input: Input) {
        if let Some(tx) = self.state(channel).and_then(|s| s.input.as_ref())
            && let Err(InputRefused::Full) = tx.try_send(input)
        {
            tracing::warn!(?channel, "the edge sent beyond its window; data dropped");
        }
    }

    /// The input queue and output of `channel`'s session, once, after the
    /// channel's request was accepted: consumed input grants the edge
    /// window again. `None` (and a failure reply) when the channel is not
    /// this connection's one channel, or already started.
    fn io(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<Option<(Caller, RelayedIdentity, ChannelIo)>, russh::Error> {
        let handle = session.handle();
        let (Some(caller), Some(relayed)) = (self.caller.clone(), self.relayed.clone()) else {
            session.channel_failure(channel)?;
            return Ok(None);
        };
        let Some(state) = self.state(channel).filter(|s| s.input.is_none()) else {
            session.channel_failure(channel)?;
            return Ok(None);
        };
        let Some(writer) = state.writer.take() else {
            session.channel_failure(channel)?;
            return Ok(None);
        };
        let credit_handle = handle.clone();
        let credit: Credit = Box::new(move |bytes| {
            let _ = credit_handle.window_consumed(channel, bytes);
        });
        let (tx, rx) = input_queue(INPUT_LIMIT, Some(credit));
        state.input = Some(tx);
        let io = ChannelIo {
            pty: state.pty.clone(),
            env: state.env.clone(),
            input: rx,
            output: RelayedOutput::new(writer, handle),
        };
        Ok(Some((caller, relayed, io)))
    }

    /// Starts the shell or command on `channel` through the session core.
    fn start(
        &mut self,
        channel: ChannelId,
        command: Option<String>,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let Some((caller, relayed, io)) = self.io(channel, session)? else {
            return Ok(());
        };
        let request = ShellRequest {
            command,
            pty: io.pty,
            env: io.env,
        };
        session.channel_success(channel)?;
        let gateway = self.gateway.clone();
        self.gateway.tasks.spawn(crate::session::shell::run_with_id(
            gateway,
            caller,
            request,
            io.input,
            io.output,
            Some(relayed.session_id),
        ));
        Ok(())
    }

    /// Starts a file transfer (the sftp subsystem, or legacy scp) on
    /// `channel` through the session core, as the ssh front door does.
    fn start_transfer(
        &mut self,
        channel: ChannelId,
        kind: TransferKind,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        if self.state(channel).is_some_and(|s| s.pty.is_some()) {
            return session.channel_failure(channel);
        }
        let Some((caller, relayed, io)) = self.io(channel, session)? else {
            return Ok(());
        };
        let output = match kind {
            TransferKind::Scp { .. } => io.output.rcp_refusals(),
            TransferKind::Sftp => io.output,
        };
        session.channel_success(channel)?;
        let gateway = self.gateway.clone();
        self.gateway
            .tasks
            .spawn(crate::session::transfer::run_with_id(
                gateway,
                caller,
                kind,
                io.input,
                output,
                Some(relayed.session_id),
            ));
        Ok(())
    }

    /// Audits a login, refused (`reason`) or accepted.
    async fn audit_login(
        &self,
        user: &str,
        principal: Option<&str>,
        client: &str,
        reason: Option<String>,
    ) {
        let subject = AuditSubject {
            session_id: None,
            principal,
            client_addr: Some(client),
        };
        let target = truncate(user, 128);
        let event = match reason {
            Some(reason) => AuditEvent::AuthenticationFailed {
                method: METHOD.into(),
                target,
                reason,
            },
            None => AuditEvent::AuthenticationSucceeded {
                method: METHOD.into(),
                target,
            },
        };
        if let Err(e) = self.gateway.audit.record(&subject, &event).await {
            tracing::error!(error = %e, "cannot write audit event");
        }
    }
}

/// The caller a verified relay certificate names: who, from the user's
/// address the edge saw, for `login@container`. Refused unless the
/// session id is a UUID (it names the recording file).
fn caller_of(relayed: &RelayedIdentity, edge: &str) -> Result<Caller, String> {
    uuid::Uuid::parse_str(&relayed.session_id)
        .map_err(|_| "the session id is not a UUID".to_string())?;
    let target = Target {
        login: relayed.login.clone(),
        container: relayed.container.clone(),
    };
    Ok(Caller {
        principal: relayed.principal.clone(),
        client_addr: relayed
            .client_address
            .clone()
            .unwrap_or_else(|| format!("edge:{edge}")),
        user: truncate(&format!("{}@{}", target.login, target.container), 128),
        destination: Destination::Container(target),
        key_fingerprint: None,
        credential_expires_at: None,
        connection: None,
    })
}

impl russh::server::Handler for RelayedHandler {
    type Error = russh::Error;

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &Certificate,
    ) -> Result<Auth, Self::Error> {
        let verified = self
            .identity
            .trust()
            .verify_user_certificate(certificate, user, now_secs())
            .map_err(|e| e.to_string())
            .and_then(|relayed| caller_of(&relayed, &self.origin.edge).map(|c| (relayed, c)));
        match verified {
            Ok((relayed, caller)) => {
                self.audit_login(
                    user,
                    Some(&caller.principal.subject),
                    &caller.client_addr,
                    None,
                )
                .await;
                tracing::info!(
                    session_id = %relayed.session_id,
                    edge = %relayed.edge,
                    serial = relayed.serial,
                    "relayed login"
                );
                self.caller = Some(caller);
                self.relayed = Some(relayed);
                Ok(Auth::Accept)
            }
            Err(reason) => {
                let from = format!("edge:{}", self.origin.edge);
                self.audit_login(user, None, &from, Some(reason)).await;
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let allowed = self.channel.is_none()
            && self
                .relayed
                .as_ref()
                .is_some_and(|r| r.action == RelayAction::Session);
        if !allowed {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let id = channel.id();
        let (_, writer) = channel.split();
        self.channel = Some(ChannelState {
            id: Some(id),
            writer: Some(writer),
            ..ChannelState::default()
        });
        reply.accept().await;
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
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.state(channel).filter(|s| s.input.is_none()) {
            Some(state) => {
                state.pty = Some(PtyRequest {
                    term: sanitize_term(term),
                    cols: clamp_dim(col_width, 80),
                    rows: clamp_dim(row_height, 24),
                });
                session.channel_success(channel)
            }
            None => session.channel_failure(channel),
        }
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let locale = name == "LANG" || name == "LANGUAGE" || name.starts_with("LC_");
        match self.state(channel) {
            Some(state)
                if locale
                    && value.len() <= 256
                    && state.env.len() < 32
                    && !value.contains('\0') =>
            {
                state.env.push((name.to_string(), value.to_string()));
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, None, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match std::str::from_utf8(data) {
            Ok(c) if c.len() <= MAX_COMMAND_BYTES && !c.contains('\0') => {
                // Legacy `scp -O` runs `scp -t`/`scp -f`: served by the
                // node itself, as the ssh front door does.
                if let Some(parsed) = crate::scp::ScpCommand::parse(c) {
                    let kind = TransferKind::Scp {
                        raw: c.to_string(),
                        command: parsed,
                    };
                    return self.start_transfer(channel, kind, session);
                }
                self.start(channel, Some(c.to_string()), session)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" {
            return self.start_transfer(channel, TransferKind::Sftp, session);
        }
        session.channel_failure(channel)
    }

    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Only the one destination the certificate names, once, in the
        // form the edge decided (canonical `ip:port`).
        let named = self.relayed.as_ref().and_then(|r| {
            (r.action == RelayAction::DirectTcpip)
                .then_some(r.destination.as_deref())
                .flatten()
        });
        let asked = crate::policy::addr::canonical_destination(host_to_connect, port_to_connect)
            .ok()
            .map(|a| a.to_string());
        let allowed = self.channel.is_none() && named.is_some() && named == asked.as_deref();
        let Some(caller) = self.caller.clone().filter(|_| allowed) else {
            let reason = format!(
                "direct-tcpip to {}:{port_to_connect} is not what the relay certificate names",
                truncate(host_to_connect, 128)
            );
            tracing::warn!(%reason, "relayed forward refused");
            if let Some(caller) = self.caller.clone() {
                let event = AuditEvent::ChannelRefused {
                    kind: "direct-tcpip".into(),
                    reason,
                };
                let _ = caller.audit(&self.gateway, None, event).await;
            }
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let id = channel.id();
        let (_, writer) = channel.split();
        self.channel = Some(ChannelState {
            id: Some(id),
            writer: Some(writer),
            ..ChannelState::default()
        });
        let Some((_, relayed, io)) = self.io(id, session)? else {
            return Ok(());
        };
        let request = ForwardRequest {
            host: truncate(host_to_connect, 256),
            port: port_to_connect,
            originator: format!("{}:{originator_port}", truncate(originator_address, 64)),
        };
        let gateway = self.gateway.clone();
        self.gateway.tasks.spawn(async move {
            let opened = crate::session::forward::open_with_id(
                gateway,
                caller,
                &request,
                Some(relayed.session_id),
            )
            .await;
            match opened {
                Ok(open) => {
                    reply.accept().await;
                    open.run(io.input, io.output).await;
                }
                Err(ForwardRefused::Prohibited) => {
                    reply
                        .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                        .await;
                }
                Err(ForwardRefused::ConnectFailed) => {
                    reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
                }
            }
        });
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.deliver(channel, Input::Data(data.to_vec()));
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.deliver(channel, Input::Eof);
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Dropping the input's sender closes it: the session sees the
        // client gone.
        if let Some(state) = self.state(channel) {
            state.input = None;
        }
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let resize = Input::Resize {
            cols: clamp_dim(col_width, 80),
            rows: clamp_dim(row_height, 24),
        };
        self.deliver(channel, resize);
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(number) = signal_number(&signal) {
            self.deliver(channel, Input::Signal(number));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_certificate_names_a_uuid_session() {
        let relayed = RelayedIdentity {
            principal: crate::identity::Principal {
                subject: "alice".into(),
                email: None,
                groups: vec![],
                issuer: "https://idp".into(),
            },
            login: "root".into(),
            container: "web1".into(),
            action: RelayAction::Session,
            session_id: "../../etc/passwd".into(),
            grant_id: None,
            client_address: None,
            edge: "edge-a".into(),
            destination: None,
            serial: 1,
        };
        assert!(caller_of(&relayed, "127.0.0.1:2223").is_err());
        let ok = RelayedIdentity {
            session_id: uuid::Uuid::new_v4().to_string(),
            ..relayed
        };
        let caller = caller_of(&ok, "127.0.0.1:2223").unwrap();
        assert_eq!(caller.client_addr, "edge:127.0.0.1:2223");
        assert_eq!(caller.user, "root@web1");
    }
}
