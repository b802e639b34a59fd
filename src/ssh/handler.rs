//! The russh handler of one connection: authentication and channel
//! requests. It stays thin: a shell, exec, subsystem or forward starts a
//! task of [`crate::session`] (or a broker command), and later channel
//! events (data, EOF, close, window changes, signals) go to that task's
//! input queue ([`crate::session::io`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use russh::server::{Auth, Handle, Msg, Session};
use russh::{Channel, ChannelId, ChannelWriteHalf, Pty, Sig};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::Gateway;
use super::auth::AuthState;
use super::channel::{RefusalStyle, SshOutput};
use super::life::{ConnectionLife, InUse};
use crate::attach::PtyRequest;
use crate::audit::{AuditEvent, truncate};
use crate::session::forward::{ForwardRefused, ForwardRequest};
use crate::session::io::{Credit, Input, InputReceiver, InputRefused, InputSender, input_queue};
use crate::session::shell::ShellRequest;
use crate::session::transfer::TransferKind;
use crate::session::{Caller, Destination};
use crate::wire::{clamp_dim, sanitize_term, signal_number};

/// Bytes of client input a channel may hold before its session takes
/// them: the SSH window the gateway grants (russh's default, 2 MiB), plus
/// room for control events (EOF, resizes, signals) that a full window of
/// data must not crowd out. A client that respects its window never
/// reaches it.
const INPUT_LIMIT: usize = 2 * 1024 * 1024 + 64 * 1024;

/// Shell or command.
enum SessionKind {
    Shell,
    Exec(String),
}

/// Longest accepted exec command, in bytes.
const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// Environment variables a client may set (`SendEnv`): locale only.
fn env_allowed(name: &str) -> bool {
    name == "LANG" || name == "LANGUAGE" || name.starts_with("LC_")
}

#[derive(Default)]
struct ChannelState {
    pty: Option<PtyRequest>,
    env: Vec<(String, String)>,
    /// The running task's input, once one started.
    input: Option<InputSender>,
    /// Where the task writes, until it starts (window-aware: writes wait
    /// for the client's window, so the connection never queues more).
    writer: Option<ChannelWriteHalf<Msg>>,
    /// The client sent more than its window once (logged once).
    overran: bool,
    /// A session channel's slot of `[forwarding] max_session_channels`,
    /// held by its task (freed when the task ends, whoever closes first).
    slot: Option<OwnedSemaphorePermit>,
    /// Counts the channel open (`auth.unused_connection_timeout`), held
    /// by its task like the slot.
    in_use: Option<InUse>,
}

/// One connection's state.
pub struct ConnectionHandler {
    gateway: Arc<Gateway>,
    auth: AuthState,
    channels: HashMap<ChannelId, ChannelState>,
    /// Forwarded connections (`direct-tcpip`) this connection may still open.
    forwards: Arc<Semaphore>,
    /// Session channels this connection may still open.
    sessions: Arc<Semaphore>,
    /// Registration, timers and the tasks of this connection.
    life: Arc<ConnectionLife>,
}

impl ConnectionHandler {
    /// A handler for a connection from `peer`; `unauthenticated` counts it
    /// as unauthenticated (listener-wide and for its source) and
    /// `authenticated` is cancelled once it is not.
    pub(super) fn new(
        gateway: Arc<Gateway>,
        peer: SocketAddr,
        unauthenticated: super::limits::Unauthenticated,
        limits: super::limits::FrontDoorLimits,
        authenticated: CancellationToken,
        life: Arc<ConnectionLife>,
    ) -> ConnectionHandler {
        ConnectionHandler {
            auth: AuthState::new(
                gateway.clone(),
                peer,
                unauthenticated,
                limits,
                authenticated,
                life.clone(),
            ),
            life,
            forwards: Arc::new(Semaphore::new(gateway.config.forwarding.max_forwards)),
            sessions: Arc::new(Semaphore::new(
                gateway.config.forwarding.max_session_channels,
            )),
            gateway,
            channels: HashMap::new(),
        }
    }

    /// Hands `input` to the channel's task without ever waiting: the
    /// russh loop that calls the handler must go on reading window
    /// adjusts, EOF and CLOSE. The queue holds what the window allows;
    /// data beyond it is dropped (RFC 4254 §5.2: the receiver may ignore
    /// it) and a gone task means the session is ending.
    fn deliver(&mut self, channel: ChannelId, input: Input) {
        let Some(state) = self.channels.get_mut(&channel) else {
            return;
        };
        let Some(tx) = state.input.as_ref() else {
            return;
        };
        if let Err(InputRefused::Full) = tx.try_send(input)
            && !std::mem::replace(&mut state.overran, true)
        {
            tracing::warn!(?channel, "client sent beyond its window; data dropped");
        }
    }

    /// The input queue and output of `channel`'s task, once: its consumed
    /// input grants the client window again.
    fn io(
        &mut self,
        channel: ChannelId,
        handle: Handle,
        style: RefusalStyle,
    ) -> Option<(InputReceiver, SshOutput, Slot)> {
        let state = self.channels.get_mut(&channel)?;
        let writer = state.writer.take()?;
        let slot = Slot(state.slot.take(), state.in_use.take());
        let credit_handle = handle.clone();
        let credit: Credit = Box::new(move |bytes| {
            let _ = credit_handle.window_consumed(channel, bytes);
        });
        let (tx, rx) = input_queue(INPUT_LIMIT, Some(credit));
        state.input = Some(tx);
        Some((rx, SshOutput::new(writer, handle, style), slot))
    }

    /// Who asks, once authenticated.
    fn caller(&self) -> Option<Caller> {
        self.auth.caller.clone()
    }

    /// True when the caller asked for the broker's own commands.
    fn to_broker(&self) -> bool {
        self.auth
            .caller
            .as_ref()
            .is_some_and(|c| c.destination == Destination::Broker)
    }

    /// Audits a refused channel or request in the background (the refusal
    /// itself does not wait for it: nothing happens either way).
    fn audit_refusal(&self, kind: &str, reason: &str) {
        tracing::info!(kind, reason, "refused");
        if let Some(who) = self.caller() {
            let event = AuditEvent::ChannelRefused {
                kind: kind.to_string(),
                reason: reason.to_string(),
            };
            let gateway = self.gateway.clone();
            self.gateway.tasks.spawn(async move {
                let _ = who.audit(&gateway, None, event).await;
            });
        }
    }

    /// Starts a file-transfer session on `channel`: the SFTP subsystem, or
    /// legacy scp (an exec of `scp -t`/`scp -f`).
    fn start_transfer(
        &mut self,
        channel: ChannelId,
        kind: TransferKind,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let Some(caller) = self.caller() else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        match self.channels.get(&channel) {
            Some(state) if state.input.is_none() && state.pty.is_none() => {}
            _ => {
                session.channel_failure(channel)?;
                return Ok(());
            }
        }
        let style = match kind {
            TransferKind::Scp { .. } => RefusalStyle::Rcp,
            TransferKind::Sftp => RefusalStyle::Stderr,
        };
        let Some((input, output, slot)) = self.io(channel, session.handle(), style) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        session.channel_success(channel)?;
        let gateway = self.gateway.clone();
        self.spawn(slot.held_by(crate::session::transfer::run(
            gateway, caller, kind, input, output,
        )));
        Ok(())
    }

    async fn start(
        &mut self,
        channel: ChannelId,
        kind: SessionKind,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let Some(caller) = self.caller() else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        let Some(state) = self.channels.get(&channel) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        if state.input.is_some() {
            // A second shell/exec on the same channel (RFC 4254 §6.5 allows one).
            session.channel_failure(channel)?;
            return Ok(());
        }
        let (pty, env) = (state.pty.clone(), state.env.clone());
        let Some((input, output, slot)) = self.io(channel, session.handle(), RefusalStyle::Stderr)
        else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        session.channel_success(channel)?;
        // Key bindings to announce go on the first session's stderr.
        let output = output.with_notices(std::mem::take(&mut self.auth.notices));
        let command = match kind {
            SessionKind::Exec(c) => Some(c),
            SessionKind::Shell => None,
        };
        if caller.destination == Destination::Broker {
            // The reserved name reaches the broker's own commands (issue 7).
            drop(input);
            let gateway = self.gateway.clone();
            self.spawn(slot.held_by(super::command::run(
                gateway,
                caller,
                command,
                pty.is_some(),
                output,
            )));
            return Ok(());
        }
        let request = ShellRequest { command, pty, env };
        let gateway = self.gateway.clone();
        self.spawn(slot.held_by(crate::session::shell::run(
            gateway, caller, request, input, output,
        )));
        Ok(())
    }

    /// Runs a channel's task, tracked by the gateway (shutdown waits for
    /// it) and by this connection (its close waits for it).
    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, task: F) {
        self.gateway.tasks.spawn(self.life.tasks.track_future(task));
    }
}

/// A channel's slot, held by its task until the task ends: a channel the
/// gateway closes first (every command that exits) frees its slot then,
/// though russh never reports the client's CLOSE that answers it.
struct Slot(Option<OwnedSemaphorePermit>, Option<InUse>);

impl Slot {
    /// Runs `task`, holding the slot until it ends.
    async fn held_by<F: std::future::Future<Output = ()>>(self, task: F) {
        let Slot(_held, _in_use) = self;
        task.await;
    }
}

impl russh::server::Handler for ConnectionHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        Ok(self.auth.none(user))
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.auth.publickey(user, key.public_key).await)
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        Ok(self.auth.certificate(user, certificate).await)
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        let answers = response.map(|r| {
            r.map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .collect::<Vec<_>>()
        });
        Ok(self.auth.keyboard_interactive(user, answers).await)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.auth.caller.is_none() {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        // Channels whose task ended (closed by the gateway) are forgotten.
        self.channels
            .retain(|_, c| !c.input.as_ref().is_some_and(InputSender::is_ended));
        let Ok(slot) = self.sessions.clone().try_acquire_owned() else {
            let cap = self.gateway.config.forwarding.max_session_channels;
            self.audit_refusal(
                "session",
                &format!("more than {cap} session channels on one connection"),
            );
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        // Input arrives through this handler; output goes through the
        // channel's write half, which waits for the client's window.
        let id = channel.id();
        let (_, writer) = channel.split();
        self.channels.insert(
            id,
            ChannelState {
                writer: Some(writer),
                slot: Some(slot),
                in_use: Some(self.life.channel_opened()),
                ..ChannelState::default()
            },
        );
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
        if !self.auth.permits.pty {
            // OpenSSH PROTOCOL.certkeys: no `permit-pty`, no PTY.
            self.audit_refusal("pty", "the certificate has no permit-pty");
            session.channel_failure(channel)?;
            return Ok(());
        }
        match self.channels.get_mut(&channel) {
            Some(state) if state.input.is_none() => {
                state.pty = Some(PtyRequest {
                    term: sanitize_term(term),
                    cols: clamp_dim(col_width, 80),
                    rows: clamp_dim(row_height, 24),
                });
                session.channel_success(channel)?;
            }
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(state)
                if env_allowed(variable_name)
                    && variable_value.len() <= 256
                    && state.env.len() < 32
                    && !variable_value.contains('\0') =>
            {
                state
                    .env
                    .push((variable_name.to_string(), variable_value.to_string()));
                session.channel_success(channel)?;
            }
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, SessionKind::Shell, session).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = match std::str::from_utf8(data) {
            Ok(c) if c.len() <= MAX_COMMAND_BYTES && !c.contains('\0') => c.to_string(),
            _ => {
                session.channel_failure(channel)?;
                return Ok(());
            }
        };
        // Legacy `scp -O` runs `scp -t`/`scp -f`: served by the gateway
        // itself (the broker's reserved name keeps its own commands).
        if !self.to_broker()
            && let Some(parsed) = crate::scp::ScpCommand::parse(&command)
        {
            let kind = TransferKind::Scp {
                raw: command,
                command: parsed,
            };
            return self.start_transfer(channel, kind, session);
        }
        self.start(channel, SessionKind::Exec(command), session)
            .await
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
        self.audit_refusal(
            "subsystem",
            &format!("unknown subsystem {}", truncate(name, 64)),
        );
        session.channel_failure(channel)?;
        Ok(())
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
        let Some(who) = self.caller() else {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        if !self.auth.permits.port_forwarding {
            self.audit_refusal(
                "direct-tcpip",
                "the certificate has no permit-port-forwarding",
            );
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let Ok(permit) = self.forwards.clone().try_acquire_owned() else {
            let cap = self.gateway.config.forwarding.max_forwards;
            self.audit_refusal(
                "direct-tcpip",
                &format!("more than {cap} forwarded connections on one connection"),
            );
            reply
                .reject(russh::ChannelOpenFailure::ResourceShortage)
                .await;
            return Ok(());
        };
        let request = ForwardRequest {
            host: truncate(host_to_connect, 256),
            port: port_to_connect,
            originator: format!("{}:{originator_port}", truncate(originator_address, 64)),
        };
        // Its data comes through this handler, like a session channel's.
        let id = channel.id();
        let (_, writer) = channel.split();
        self.channels.insert(
            id,
            ChannelState {
                writer: Some(writer),
                ..ChannelState::default()
            },
        );
        let Some((input, output, _)) = self.io(id, session.handle(), RefusalStyle::Stderr) else {
            return Ok(());
        };
        let gateway = self.gateway.clone();
        let in_use = self.life.channel_opened();
        self.spawn(async move {
            let _permit = permit;
            let _in_use = in_use;
            match crate::session::forward::open(gateway, who, &request).await {
                Ok(open) => {
                    reply.accept().await;
                    open.run(input, output).await;
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

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.audit_refusal(
            "tcpip-forward",
            &format!(
                "remote forwarding (ssh -R {}:{port}) is not offered",
                truncate(address, 64)
            ),
        );
        Ok(false)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.audit_refusal("auth-agent", "agent forwarding (ssh -A) is not offered");
        Ok(false)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.audit_refusal("x11", "X11 forwarding (ssh -X) is not offered");
        session.channel_failure(channel)?;
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
        // Dropping the input's sender closes it: the task sees the client gone.
        self.channels.remove(&channel);
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
        self.deliver(
            channel,
            Input::Resize {
                cols: clamp_dim(col_width, 80),
                rows: clamp_dim(row_height, 24),
            },
        );
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
    fn env_allow_list() {
        assert!(env_allowed("LANG"));
        assert!(env_allowed("LC_ALL"));
        assert!(!env_allowed("LD_PRELOAD"));
        assert!(!env_allowed("PATH"));
    }
}
