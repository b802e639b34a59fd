//! Authentication of one connection (RFC 4252), kept out of the russh
//! handler so it stays thin:
//!
//! - `publickey` with a plain key: a bound key (see
//!   [`crate::identity::KeyBindings`]) is accepted; an unbound one gets
//!   *partial success* and `keyboard-interactive` (RFC 4252 §5.1), and the
//!   IdP login that follows binds it. russh calls us only after the
//!   client's signature verified, so the key is bound only when both the
//!   signature and the IdP login succeeded on this connection.
//! - `publickey` with an OpenSSH certificate (PROTOCOL.certkeys): accepted
//!   when a trusted CA vouches for its principal.
//! - `keyboard-interactive`: a pasted ID token or the device flow
//!   ([`super::login`]).
//!
//! Every failure is audited, slows the source address down
//! ([`crate::identity::FailureThrottle`]) and adds to its penalty
//! ([`crate::throttle::SourceLimits::penalise`]); no audit event, no login
//! (fail closed). On success the SSH user name is parsed, once, into the
//! caller's [`Destination`]: the [`Caller`] every channel starts with; the
//! key bindings made to the principal since they were last told are
//! announced on their first channel ([`AuthState::notices`]), and a
//! certificate's `permit-*` extensions are kept for the channels to
//! enforce ([`AuthState::permits`]).

use std::net::SocketAddr;
use std::sync::Arc;

use russh::keys::PublicKey;
use russh::keys::ssh_key::Certificate;
use russh::server::Auth;
use russh::{MethodKind, MethodSet};
use tokio_util::sync::CancellationToken;

use super::Gateway;
use super::life::ConnectionLife;
use super::limits::{FrontDoorLimits, Unauthenticated};
use super::login::{Login, LoginReply};
use crate::audit::{AuditEvent, AuditSubject, truncate};
use crate::identity::{BindingCheck, BindingOrigin, CertificatePermits, Principal};
use crate::session::{Caller, Destination};
use crate::throttle::Penalty;

/// One connection's authentication state.
pub(super) struct AuthState {
    gateway: Arc<Gateway>,
    peer: SocketAddr,
    peer_text: String,
    login: Login,
    /// A key whose signature verified and that is not bound yet.
    verified_key: Option<PublicKey>,
    /// Counts this connection as unauthenticated until dropped.
    unauth_permit: Option<Unauthenticated>,
    /// The listener's per-source limits (penalties for failures).
    limits: FrontDoorLimits,
    /// Cancelled once authenticated (ends the login grace timer).
    authenticated: CancellationToken,
    /// The connection's registration, timers and close requests.
    life: Arc<ConnectionLife>,
    /// Who, once authenticated.
    pub caller: Option<Caller>,
    /// What the login's certificate permits (everything for other logins);
    /// the channels refuse the rest (OpenSSH PROTOCOL.certkeys).
    pub permits: CertificatePermits,
    /// Lines for the user's first session channel (stderr): key bindings
    /// made to them since they were last told (review finding H2).
    pub notices: Vec<String>,
}

/// What a login was made with: the key (a bound key's or a
/// certificate's) and when the credential ends (unix ms) with its name
/// for the user (`the certificate`).
struct Credential {
    fingerprint: Option<String>,
    ends: Option<(i64, String)>,
}

fn keyboard_interactive_only() -> MethodSet {
    MethodSet::from(&[MethodKind::KeyboardInteractive][..])
}

impl AuthState {
    pub(super) fn new(
        gateway: Arc<Gateway>,
        peer: SocketAddr,
        unauth_permit: Unauthenticated,
        limits: FrontDoorLimits,
        authenticated: CancellationToken,
        life: Arc<ConnectionLife>,
    ) -> AuthState {
        AuthState {
            login: Login::new(gateway.issuers.clone())
                .with_device_budget(limits.devices.clone(), peer.ip()),
            gateway,
            peer,
            peer_text: peer.to_string(),
            verified_key: None,
            unauth_permit: Some(unauth_permit),
            limits,
            authenticated,
            life,
            caller: None,
            permits: CertificatePermits::ALL,
            notices: Vec::new(),
        }
    }

    /// Counts an authentication request of any method, for the `noauth`
    /// penalty ([`super::limits::Attempted`]).
    fn attempt(&self) {
        if let Some(u) = &self.unauth_permit {
            u.attempted.mark();
        }
    }

    /// `none` (OpenSSH's first probe): name the methods.
    pub(super) fn none(&mut self, _user: &str) -> Auth {
        self.attempt();
        Auth::Reject {
            proceed_with_methods: Some(super::auth_methods()),
            partial_success: false,
        }
    }

    /// A plain public key whose signature verified.
    pub(super) async fn publickey(&mut self, user: &str, key: &PublicKey) -> Auth {
        self.attempt();
        let fingerprint = crate::identity::key_fingerprint(key);
        let check = self
            .gateway
            .bindings
            .check(&self.gateway.issuers, key)
            .await;
        let partial = Auth::Reject {
            proceed_with_methods: Some(keyboard_interactive_only()),
            partial_success: true,
        };
        match check {
            BindingCheck::Bound {
                principal,
                refreshed,
            } => {
                let method = if refreshed {
                    "publickey+refresh"
                } else {
                    "publickey"
                };
                // The connection lives no longer than the binding.
                let until = match self.gateway.store.key_binding(&fingerprint).await {
                    Ok(Some(b)) => b.expires_at,
                    Ok(None) => crate::store::now_ms(),
                    Err(e) => {
                        let reason = format!("{fingerprint}: cannot read the key binding: {e}");
                        self.fail("publickey", user, &reason).await;
                        return Auth::reject();
                    }
                };
                let credential = Credential {
                    fingerprint: Some(fingerprint.clone()),
                    ends: Some((until, format!("the key binding of {fingerprint}"))),
                };
                self.accept(user, principal, method, credential, Some(key))
                    .await
            }
            BindingCheck::Unbound(None) => {
                self.verified_key = Some(key.clone());
                partial
            }
            BindingCheck::Unbound(Some(reason)) => {
                let reason = format!("{fingerprint}: {reason}");
                if !self.audit_failure("publickey", user, &reason).await {
                    return Auth::reject();
                }
                self.login
                    .set_notice("Your key is no longer bound to your login; log in again.".into());
                self.verified_key = Some(key.clone());
                partial
            }
            BindingCheck::Ended(error) => {
                let event = AuditEvent::KeyBindingChanged {
                    fingerprint: fingerprint.clone(),
                    change: "ended".into(),
                    until: None,
                    reason: Some(error.to_string()),
                };
                if !self.audit(None, &event).await {
                    return Auth::reject();
                }
                self.login.set_notice(error.user_message());
                self.verified_key = Some(key.clone());
                partial
            }
            BindingCheck::Unavailable(reason) => {
                let reason = format!("{fingerprint}: cannot check the key binding: {reason}");
                self.fail("publickey", user, &reason).await;
                self.login.set_notice(
                    "Login failed: the gateway cannot check your key right now (its database or \
                     the identity provider is not answering); try again later."
                        .into(),
                );
                Auth::Reject {
                    proceed_with_methods: Some(keyboard_interactive_only()),
                    partial_success: false,
                }
            }
        }
    }

    /// An OpenSSH user certificate whose signature verified.
    pub(super) async fn certificate(&mut self, user: &str, cert: &Certificate) -> Auth {
        self.attempt();
        let now = crate::store::now_ms().max(0) as u64 / 1000;
        match self.gateway.cas.authenticate_certificate(cert, now) {
            Ok(certified) => {
                let key = PublicKey::from(cert.public_key().clone());
                let fingerprint = crate::identity::key_fingerprint(&key);
                self.permits = certified.permits;
                let principal = certified.principal;
                let credential = Credential {
                    fingerprint: Some(fingerprint),
                    ends: i64::try_from(cert.valid_before())
                        .ok()
                        .and_then(|s| s.checked_mul(1000))
                        .map(|until| (until, "the certificate".to_string())),
                };
                self.accept(user, principal, "certificate", credential, None)
                    .await
            }
            Err(e) => {
                let reason = e.to_string();
                if matches!(e, crate::identity::CertificateError::UntrustedCa(_)) {
                    // Clients offer every key they have: not an attack.
                    self.audit_failure("certificate", user, &reason).await;
                } else {
                    self.fail("certificate", user, &reason).await;
                }
                self.login.set_notice(e.user_message());
                Auth::Reject {
                    proceed_with_methods: Some(super::auth_methods()),
                    partial_success: false,
                }
            }
        }
    }

    /// A keyboard-interactive round (`None`: a new attempt).
    pub(super) async fn keyboard_interactive(
        &mut self,
        user: &str,
        answers: Option<Vec<String>>,
    ) -> Auth {
        self.attempt();
        let (reply, failure) = self.login.advance(answers).await;
        if let Some(failure) = failure
            && !self.fail(failure.method, user, &failure.reason).await
        {
            return Auth::reject();
        }
        match reply {
            LoginReply::Ask {
                instructions,
                prompts,
            } => Auth::Partial {
                name: "Portcullis login".into(),
                instructions: instructions.into(),
                prompts: prompts
                    .into_iter()
                    .map(|(p, echo)| (p.into(), echo))
                    .collect::<Vec<_>>()
                    .into(),
            },
            LoginReply::Reject => Auth::reject(),
            LoginReply::Accept { tokens, method } => {
                let principal = tokens.id_token.principal.clone();
                let mut bound = None;
                let mut until = None;
                let key = self.verified_key.take();
                if let Some(key) = &key {
                    // Audited (before), recorded with this connection's
                    // address and announced (webhook `key_bound`, the
                    // principal's next login); nothing is bound after a
                    // device flow with `auth.bind_keys_from_device_flow`
                    // off.
                    let origin = BindingOrigin {
                        client_addr: &self.peer_text,
                    };
                    match self
                        .gateway
                        .bindings
                        .bind_key(&self.gateway.audit, key, &tokens, &origin)
                        .await
                    {
                        Ok(Some(ends)) => {
                            bound = Some(crate::identity::key_fingerprint(key));
                            until = Some(ends);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "cannot store the key binding; refusing");
                            let reason = format!("cannot store the key binding: {e}");
                            self.audit_failure(method, user, &reason).await;
                            return Auth::reject();
                        }
                    }
                } else if let Err(e) = self
                    .gateway
                    .store
                    .update_binding_claims(
                        &principal.subject,
                        principal.email.as_deref(),
                        &principal.groups,
                    )
                    .await
                {
                    tracing::warn!(error = %e, "cannot update the groups of key bindings");
                }
                // Without a binding nothing renews the login: it ends with
                // the ID token (a binding is capped at it without a
                // refresh token).
                let credential = match (&bound, until) {
                    (Some(fp), Some(until)) => Credential {
                        fingerprint: Some(fp.clone()),
                        ends: Some((until, format!("the key binding of {fp}"))),
                    },
                    _ => Credential {
                        fingerprint: bound.clone(),
                        ends: Some((tokens.id_token.expires_at_ms, "your ID token".into())),
                    },
                };
                self.accept(user, principal, method, credential, key.as_ref())
                    .await
            }
        }
    }

    async fn accept(
        &mut self,
        user: &str,
        principal: Principal,
        method: &str,
        credential: Credential,
        key_in_use: Option<&PublicKey>,
    ) -> Auth {
        let key_fingerprint = credential.fingerprint;
        // A lock on the principal, a group of it, its issuer or its key
        // refuses the login (issue 12); every session is checked again
        // (`session::access`), and the connection is closed when a lock
        // covers it later (`Gateway::end_locked`).
        let store = &self.gateway.store;
        let who = crate::store::LockSubject {
            principal: &principal.subject,
            groups: &principal.groups,
            issuer: &principal.issuer,
            key_fingerprint: key_fingerprint.as_deref(),
            container: None,
            login: None,
        };
        let lock = crate::session::lock::covering(store, &who).await;
        let locked = match lock {
            Ok(None) => None,
            Ok(Some(l)) => Some(format!("locked ({}): {}", l.id, truncate(&l.reason, 512))),
            Err(e) => Some(format!("cannot read locks: {e}")),
        };
        if let Some(reason) = locked {
            let event = AuditEvent::AuthenticationFailed {
                method: method.to_string(),
                target: truncate(user, 128),
                reason,
            };
            let _ = self.audit(Some(&principal.subject), &event).await;
            return Auth::reject();
        }
        let event = AuditEvent::AuthenticationSucceeded {
            method: method.to_string(),
            target: truncate(user, 128),
        };
        // Fail closed: no audit event, no login.
        if !self.audit(Some(&principal.subject), &event).await {
            return Auth::reject();
        }
        tracing::info!(peer = %self.peer, principal = %principal.subject, method, "authenticated");
        self.notices = self.announcements(&principal.subject, key_in_use).await;
        let config = &self.gateway.config;
        self.caller = Some(Caller {
            destination: Destination::parse(
                user,
                &config.grants.broker_user,
                &config.default_login,
            ),
            user: user.to_string(),
            principal,
            client_addr: self.peer_text.clone(),
            key_fingerprint,
            credential_expires_at: credential.ends.as_ref().map(|(until, _)| *until),
            connection: Some(self.life.id),
        });
        if let Some(caller) = &self.caller {
            let what = credential
                .ends
                .as_ref()
                .map_or("", |(_, what)| what.as_str());
            self.life.authenticated(&self.gateway, caller, what);
        }
        self.unauth_permit = None;
        self.authenticated.cancel();
        Auth::Accept
    }

    /// The key bindings made to `principal` since they were last told
    /// (except `key_in_use`), as lines for the user; none when the
    /// database cannot say (the login goes on: the webhook was queued
    /// with the binding).
    async fn announcements(&self, principal: &str, key_in_use: Option<&PublicKey>) -> Vec<String> {
        match self
            .gateway
            .bindings
            .announce_new_bindings(principal, key_in_use)
            .await
        {
            Ok(notices) => {
                let revoke = self.gateway.broker_line("");
                notices
                    .iter()
                    .map(|n| n.message(revoke.trim_end()))
                    .collect()
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the key bindings to announce");
                Vec::new()
            }
        }
    }

    /// Audits a failure, adds to the source's penalty and waits the
    /// address's growing delay; false when the audit event could not be
    /// written.
    async fn fail(&self, method: &str, user: &str, reason: &str) -> bool {
        let ok = self.audit_failure(method, user, reason).await;
        super::penalise(
            &self.gateway,
            &self.limits.sources,
            self.peer,
            Penalty::AuthFailed,
        )
        .await;
        let delay = self.gateway.throttle.record_failure(self.peer.ip());
        if !delay.is_zero() {
            tracing::info!(peer = %self.peer, delay_ms = delay.as_millis() as u64, "slowing down");
            tokio::time::sleep(delay).await;
        }
        ok
    }

    async fn audit_failure(&self, method: &str, user: &str, reason: &str) -> bool {
        let event = AuditEvent::AuthenticationFailed {
            method: method.to_string(),
            target: truncate(user, 128),
            reason: reason.to_string(),
        };
        self.audit(None, &event).await
    }

    async fn audit(&self, principal: Option<&str>, event: &AuditEvent) -> bool {
        let subject = AuditSubject {
            principal,
            client_addr: Some(&self.peer_text),
            ..Default::default()
        };
        match self.gateway.audit.record(&subject, event).await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot write audit event; refusing");
                false
            }
        }
    }
}
