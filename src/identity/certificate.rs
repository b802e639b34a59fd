//! SSH user certificates (OpenSSH PROTOCOL.certkeys): a certificate signed
//! by a trusted user CA (`[[certificates.ca]]`) authenticates its principal
//! directly, as step-ca or Vault issue them.
//!
//! Checked here, with `russh::keys::ssh_key`: the CA is trusted (by its
//! SHA-256 fingerprint), the CA's signature verifies, the type is `user`,
//! `valid after <= now < valid before`, the principal list is not empty
//! (OpenSSH reads an empty list as "anyone": we refuse it) and allowed by
//! the CA's `principals`, and there is no critical option (PROTOCOL.certkeys
//! §"Critical options": a server must refuse one it does not recognise; we
//! implement none). The client's signature over the session (proof of the
//! private key) is checked by russh before this runs.
//!
//! Also here: the certificate, its key and its CA are not revoked
//! (`certificates.revoked_keys`, OpenSSH PROTOCOL.krl, see [`super::krl`]);
//! groups asserted in `certificates.groups_extension` are namespaced by the
//! CA's `principal_prefix` unless in its `allowed_groups` (review finding
//! M1); and the `permit-*` extensions are read into [`CertificatePermits`]
//! for the SSH layer to enforce (a certificate without `permit-pty` gets
//! no PTY).

use russh::keys::HashAlg;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::{Certificate, Fingerprint, PublicKey};

use super::Principal;
use super::krl::{KrlError, RevokedKeys};
use crate::config::CertificatesConfig;

/// Longest principal (prefix included) accepted, in bytes.
const MAX_PRINCIPAL_BYTES: usize = 255;

/// Why a certificate was refused. `Display` is the full reason (audit);
/// [`CertificateError::user_message`] is for the user.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// A configured CA key does not parse.
    #[error("certificates.ca[{index}]: {message}")]
    Config {
        /// Index in `[[certificates.ca]]`.
        index: usize,
        /// Why.
        message: String,
    },
    /// Signed by a CA that is not trusted.
    #[error("certificate signed by an untrusted CA {0}")]
    UntrustedCa(String),
    /// Bad signature, or outside its validity window.
    #[error("certificate invalid: {0}")]
    Invalid(String),
    /// A host certificate offered as a user certificate.
    #[error("not a user certificate")]
    NotUser,
    /// No principal, or none the CA may vouch for.
    #[error("certificate principal not allowed: {0}")]
    Principal(String),
    /// A critical option this gateway does not implement.
    #[error("unsupported critical option {0}")]
    CriticalOption(String),
    /// The certificate, its key or its CA is in `certificates.revoked_keys`,
    /// or that list cannot be read (then every certificate is refused).
    #[error("certificate refused: {0}")]
    Revoked(#[from] KrlError),
}

impl CertificateError {
    /// One line for the SSH user.
    pub fn user_message(&self) -> String {
        match self {
            CertificateError::Invalid(_) => {
                "Login failed: the certificate has expired or is not valid yet.".into()
            }
            CertificateError::Principal(_) => {
                "Login failed: the certificate's principal is not allowed here.".into()
            }
            CertificateError::Revoked(KrlError::Revoked(_)) => {
                "Login failed: the certificate has been revoked.".into()
            }
            _ => "Login failed: the certificate is not accepted here.".into(),
        }
    }
}

#[derive(Debug, Clone)]
struct TrustedCa {
    fingerprint: Fingerprint,
    prefix: String,
    principals: Vec<String>,
    groups: Vec<String>,
    allowed_groups: Vec<String>,
}

/// The trusted user CAs.
#[derive(Debug, Clone, Default)]
pub struct CertificateAuthorities {
    cas: Vec<TrustedCa>,
    groups_extension: Option<String>,
    revoked: RevokedKeys,
}

/// What a certificate's `permit-*` extensions allow (OpenSSH
/// PROTOCOL.certkeys, "Extensions"): absent means refused, as sshd reads
/// them. `ssh-keygen -s` sets all five by default; `-O clear` or
/// `-O no-pty` and the like remove them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CertificatePermits {
    /// `permit-pty`: a PTY may be allocated.
    pub pty: bool,
    /// `permit-port-forwarding`: `ssh -L` (and `-R`) may be used.
    pub port_forwarding: bool,
    /// `permit-agent-forwarding`: `ssh -A` may be used.
    pub agent_forwarding: bool,
    /// `permit-X11-forwarding`: `ssh -X` may be used.
    pub x11_forwarding: bool,
    /// `permit-user-rc`: `~/.ssh/rc` may run (Portcullis never runs it).
    pub user_rc: bool,
}

impl CertificatePermits {
    /// Everything allowed: a login that is not by certificate.
    pub const ALL: CertificatePermits = CertificatePermits {
        pty: true,
        port_forwarding: true,
        agent_forwarding: true,
        x11_forwarding: true,
        user_rc: true,
    };

    /// The permits of `cert`'s extensions.
    pub fn of(cert: &Certificate) -> CertificatePermits {
        let has = |name: &str| cert.extensions().contains_key(name);
        CertificatePermits {
            pty: has("permit-pty"),
            port_forwarding: has("permit-port-forwarding"),
            agent_forwarding: has("permit-agent-forwarding"),
            x11_forwarding: has("permit-X11-forwarding"),
            user_rc: has("permit-user-rc"),
        }
    }

    /// The permits that are missing, by extension name (for messages and
    /// audit events).
    pub fn missing(&self) -> Vec<&'static str> {
        [
            (self.pty, "permit-pty"),
            (self.port_forwarding, "permit-port-forwarding"),
            (self.agent_forwarding, "permit-agent-forwarding"),
            (self.x11_forwarding, "permit-X11-forwarding"),
            (self.user_rc, "permit-user-rc"),
        ]
        .into_iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, name)| name)
        .collect()
    }
}

/// A certificate's principal and what its extensions permit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifiedPrincipal {
    /// Who.
    pub principal: Principal,
    /// The `permit-*` extensions; the SSH layer refuses what is missing.
    pub permits: CertificatePermits,
    /// The certificate's serial (for audit events).
    pub serial: u64,
    /// The certificate's key id (for audit events; display-safe).
    pub key_id: String,
}

impl CertificateAuthorities {
    /// The CAs of `[certificates]`.
    ///
    /// # Errors
    /// [`CertificateError::Config`] when a CA key does not parse.
    pub fn from_config(config: &CertificatesConfig) -> Result<Self, CertificateError> {
        let cas = config
            .ca
            .iter()
            .enumerate()
            .map(|(index, ca)| {
                let key = PublicKey::from_openssh(ca.public_key.trim()).map_err(|e| {
                    CertificateError::Config {
                        index,
                        message: e.to_string(),
                    }
                })?;
                Ok(TrustedCa {
                    fingerprint: key.fingerprint(HashAlg::Sha256),
                    prefix: ca.principal_prefix.clone(),
                    principals: ca.principals.clone(),
                    groups: ca.groups.clone(),
                    allowed_groups: ca.allowed_groups.clone(),
                })
            })
            .collect::<Result<_, CertificateError>>()?;
        Ok(CertificateAuthorities {
            cas,
            groups_extension: config.groups_extension.clone(),
            revoked: config
                .revoked_keys
                .as_deref()
                .map(RevokedKeys::at)
                .unwrap_or_default(),
        })
    }

    /// These CAs checking `revoked` instead of the configured list.
    pub fn with_revoked_keys(mut self, revoked: RevokedKeys) -> Self {
        self.revoked = revoked;
        self
    }

    /// The revoked keys these CAs check (shared with [`super::KeyBindings`]
    /// so bound keys are checked against the same list).
    pub fn revoked_keys(&self) -> RevokedKeys {
        self.revoked.clone()
    }

    /// True when no CA is trusted (certificates are then refused).
    pub fn is_empty(&self) -> bool {
        self.cas.is_empty()
    }

    /// Checks `cert` at `now` (unix seconds) and returns its principal.
    /// The SSH layer should call [`Self::authenticate_certificate`], which
    /// also returns the `permit-*` extensions to enforce.
    ///
    /// # Errors
    /// A [`CertificateError`] naming what failed.
    pub fn authenticate(
        &self,
        cert: &Certificate,
        now: u64,
    ) -> Result<Principal, CertificateError> {
        self.authenticate_certificate(cert, now)
            .map(|c| c.principal)
    }

    /// Checks `cert` at `now` (unix seconds): trusted CA, signature,
    /// validity, user type, no critical option, an allowed principal, not
    /// revoked (`certificates.revoked_keys`); returns the principal and
    /// the certificate's permits.
    ///
    /// # Errors
    /// A [`CertificateError`] naming what failed.
    pub fn authenticate_certificate(
        &self,
        cert: &Certificate,
        now: u64,
    ) -> Result<CertifiedPrincipal, CertificateError> {
        let ca_fingerprint = cert.signature_key().fingerprint(HashAlg::Sha256);
        let ca = self
            .cas
            .iter()
            .find(|ca| ca.fingerprint == ca_fingerprint)
            .ok_or_else(|| CertificateError::UntrustedCa(ca_fingerprint.to_string()))?;
        cert.validate_at(now, [&ca.fingerprint]).map_err(|e| {
            CertificateError::Invalid(format!(
                "{e} (valid {}..{}, now {now})",
                cert.valid_after(),
                cert.valid_before()
            ))
        })?;
        if cert.cert_type() != CertType::User {
            return Err(CertificateError::NotUser);
        }
        if let Some(option) = cert.critical_options().keys().next() {
            return Err(CertificateError::CriticalOption(crate::audit::truncate(
                option, 64,
            )));
        }
        let principal = cert
            .valid_principals()
            .iter()
            .find(|p| ca.principals.is_empty() || ca.principals.contains(p))
            .ok_or_else(|| {
                CertificateError::Principal(format!(
                    "{:?} (key id {:?})",
                    cert.valid_principals()
                        .iter()
                        .map(|p| crate::audit::truncate(p, 64))
                        .collect::<Vec<_>>(),
                    crate::audit::truncate(cert.key_id(), 64)
                ))
            })?;
        let subject = format!("{}{principal}", ca.prefix);
        if subject.is_empty()
            || subject.len() > MAX_PRINCIPAL_BYTES
            || subject.chars().any(char::is_control)
        {
            return Err(CertificateError::Principal(
                "empty, too long or control characters".into(),
            ));
        }
        if !crate::text::is_visible(&subject) {
            return Err(CertificateError::Principal(
                "bidi or invisible characters".into(),
            ));
        }
        self.revoked.check_certificate(cert)?;
        let mut groups = ca.groups.clone();
        if let Some(name) = &self.groups_extension
            && let Some(value) = cert.extensions().get(name)
        {
            let asserted: Vec<&str> = value
                .split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty() && g.len() <= MAX_PRINCIPAL_BYTES)
                .filter(|g| crate::text::is_visible(g))
                .collect();
            for g in super::claims::namespaced_groups(asserted, &ca.prefix, &ca.allowed_groups, &[])
            {
                if !groups.contains(&g) {
                    groups.push(g);
                }
            }
        }
        Ok(CertifiedPrincipal {
            principal: Principal {
                subject,
                email: None,
                groups,
                issuer: format!("ssh-ca:{ca_fingerprint}"),
            },
            permits: CertificatePermits::of(cert),
            serial: cert.serial(),
            key_id: crate::text::display_safe(&crate::audit::truncate(cert.key_id(), 128))
                .into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use russh::keys::ssh_key::certificate::Builder;
    use russh::keys::{Algorithm, PrivateKey};

    use super::*;

    fn key() -> PrivateKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
    }

    fn cas(ca: &PrivateKey, extra: &str) -> CertificateAuthorities {
        let text = format!(
            "[oidc]\nissuer = \"https://i\"\nclient_id = \"c\"\n[certificates]\n\
             groups_extension = \"groups@example.com\"\n[[certificates.ca]]\n\
             public_key = \"{}\"\nprincipal_prefix = \"ci:\"\nprincipals = [\"ci-bot\"]\n{extra}",
            ca.public_key().to_openssh().unwrap()
        );
        let config = crate::config::Config::parse(&text, std::path::Path::new("t")).unwrap();
        CertificateAuthorities::from_config(&config.certificates).unwrap()
    }

    fn cert(ca: &PrivateKey, extensions: &[(&str, &str)]) -> Certificate {
        let mut b = Builder::new(
            vec![1u8; 32],
            key().public_key().key_data().clone(),
            0,
            1 << 40,
        )
        .unwrap();
        b.valid_principal("ci-bot").unwrap();
        b.key_id("bot-1").unwrap();
        for (k, v) in extensions {
            b.extension(*k, *v).unwrap();
        }
        b.sign(ca).unwrap()
    }

    /// M1: a CA limited to `ci-bot` cannot make its principal an admin
    /// by asserting `admins`; it gets `ci:admins`, which no rule names.
    #[test]
    fn groups_a_ca_asserts_are_its_own() {
        let ca = key();
        let c = cert(&ca, &[("groups@example.com", "admins,deployers")]);
        let p = cas(&ca, "").authenticate_certificate(&c, 1000).unwrap();
        assert_eq!(p.principal.subject, "ci:ci-bot");
        assert_eq!(p.principal.groups, ["ci:admins", "ci:deployers"]);
        let p = cas(
            &ca,
            "allowed_groups = [\"deployers\"]\ngroups = [\"robots\"]\n",
        )
        .authenticate_certificate(&c, 1000)
        .unwrap();
        assert_eq!(p.principal.groups, ["robots", "ci:admins", "deployers"]);
        assert!(p.principal.issuer.starts_with("ssh-ca:SHA256:"));
    }

    /// L3: the `permit-*` extensions are read; missing ones are refused.
    #[test]
    fn permits_come_from_the_extensions() {
        let ca = key();
        let all = cert(
            &ca,
            &[
                ("permit-X11-forwarding", ""),
                ("permit-agent-forwarding", ""),
                ("permit-port-forwarding", ""),
                ("permit-pty", ""),
                ("permit-user-rc", ""),
            ],
        );
        let p = cas(&ca, "").authenticate_certificate(&all, 1000).unwrap();
        assert_eq!(p.permits, CertificatePermits::ALL);
        assert!(p.permits.missing().is_empty());
        let restricted = cert(&ca, &[("permit-port-forwarding", "")]);
        let p = cas(&ca, "")
            .authenticate_certificate(&restricted, 1000)
            .unwrap();
        assert!(!p.permits.pty && p.permits.port_forwarding);
        assert_eq!(
            p.permits.missing(),
            [
                "permit-pty",
                "permit-agent-forwarding",
                "permit-X11-forwarding",
                "permit-user-rc"
            ]
        );
        assert_eq!(p.key_id, "bot-1");
    }

    #[test]
    fn a_revoked_certificate_or_an_unreadable_list_is_refused() {
        let ca = key();
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("revoked");
        let c = cert(&ca, &[]);
        let other = cert(&ca, &[]);
        let pubkey = PublicKey::from(c.public_key().clone())
            .to_openssh()
            .unwrap();
        std::fs::write(&list, format!("{pubkey}\n")).unwrap();
        let cas = cas(&ca, "").with_revoked_keys(RevokedKeys::at(&list));
        let err = cas.authenticate_certificate(&c, 1000).unwrap_err();
        assert!(
            matches!(err, CertificateError::Revoked(KrlError::Revoked(_))),
            "{err}"
        );
        assert!(err.user_message().contains("revoked"));
        cas.authenticate_certificate(&other, 1000).unwrap();
        let missing = self::cas(&ca, "").with_revoked_keys(RevokedKeys::at(&dir.path().join("no")));
        assert!(matches!(
            missing.authenticate_certificate(&other, 1000),
            Err(CertificateError::Revoked(KrlError::Read { .. }))
        ));
    }
}
