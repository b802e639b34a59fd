//! Who asks, from where, and for what: the [`Caller`] every session task
//! and broker command starts with, built once when a front end has
//! authenticated its user. The SSH user name is parsed into a
//! [`Destination`] there and nowhere else.

use super::Refusal;
use super::target::{Target, TargetError};
use crate::audit::{AuditEvent, AuditSubject};
use crate::gateway::Gateway;
use crate::identity::Principal;

/// Where an authenticated user asked to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The broker's own commands (`[grants] broker_user`).
    Broker,
    /// `login@container`.
    Container(Target),
    /// A user name that names neither; refused (and audited) when a
    /// session is asked for.
    Invalid(TargetError),
}

impl Destination {
    /// Parses the SSH user name `user`: `broker_user` is the broker, else
    /// `[login@]container` ([`Target::parse`], `default_login` when the
    /// login is left out).
    pub fn parse(user: &str, broker_user: &str, default_login: &str) -> Destination {
        if user == broker_user {
            return Destination::Broker;
        }
        match Target::parse(user, default_login) {
            Ok(t) => Destination::Container(t),
            Err(e) => Destination::Invalid(e),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub principal: Principal,
    /// Client `ip:port` (`local` for `portcullis attach`).
    pub client_addr: String,
    /// The user name as the client sent it, cut to 128 bytes: audit
    /// events about refused targets quote it.
    pub user: String,
    /// Where they asked to go.
    pub destination: Destination,
    /// `SHA256:...` of the public key they logged in with (a bound key or
    /// a certificate's key), if any.
    pub key_fingerprint: Option<String>,
    /// When the credential they logged in with stops being valid (unix
    /// ms), when known: no new session after it, and the SSH front door
    /// closes the connection then.
    pub credential_expires_at: Option<i64>,
    /// The front door's connection it came on
    /// ([`super::live::LiveConnection::id`]), if any.
    pub connection: Option<u64>,
}

impl Caller {
    /// The audit subject of this caller (and of `session_id`, when given).
    pub fn subject<'a>(&'a self, session_id: Option<&'a str>) -> AuditSubject<'a> {
        AuditSubject {
            session_id,
            principal: Some(&self.principal.subject),
            client_addr: Some(&self.client_addr),
        }
    }

    /// Appends `event` about this caller (and `session_id`); returns its
    /// sequence number.
    ///
    /// # Errors
    /// [`Refusal::audit_unavailable`] when the audit log cannot take it:
    /// the step it records must not happen (fail closed).
    pub async fn audit(
        &self,
        gateway: &Gateway,
        session_id: Option<&str>,
        event: AuditEvent,
    ) -> Result<i64, Refusal> {
        gateway
            .audit
            .record(&self.subject(session_id), &event)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot write audit event; refusing");
                Refusal::audit_unavailable()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_name_is_parsed_once_into_a_destination() {
        assert_eq!(
            Destination::parse("portcullis", "portcullis", "root"),
            Destination::Broker
        );
        assert_eq!(
            Destination::parse("app@web1", "portcullis", "root"),
            Destination::Container(Target {
                login: "app".into(),
                container: "web1".into()
            })
        );
        assert_eq!(
            Destination::parse("a@b@c", "portcullis", "root"),
            Destination::Invalid(TargetError::Shape)
        );
        // The broker's name as a container is a target (refused later).
        assert_eq!(
            Destination::parse("root@portcullis", "portcullis", "root"),
            Destination::Container(Target {
                login: "root".into(),
                container: "portcullis".into()
            })
        );
    }
}
