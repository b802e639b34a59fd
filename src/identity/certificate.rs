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

use russh::keys::HashAlg;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::{Certificate, Fingerprint, PublicKey};

use super::Principal;
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
}

/// The trusted user CAs.
#[derive(Debug, Clone, Default)]
pub struct CertificateAuthorities {
    cas: Vec<TrustedCa>,
    groups_extension: Option<String>,
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
                })
            })
            .collect::<Result<_, CertificateError>>()?;
        Ok(CertificateAuthorities {
            cas,
            groups_extension: config.groups_extension.clone(),
        })
    }

    /// True when no CA is trusted (certificates are then refused).
    pub fn is_empty(&self) -> bool {
        self.cas.is_empty()
    }

    /// Checks `cert` at `now` (unix seconds) and returns its principal.
    ///
    /// # Errors
    /// A [`CertificateError`] naming what failed.
    pub fn authenticate(
        &self,
        cert: &Certificate,
        now: u64,
    ) -> Result<Principal, CertificateError> {
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
        let mut groups = ca.groups.clone();
        if let Some(name) = &self.groups_extension
            && let Some(value) = cert.extensions().get(name)
        {
            for g in value.split(',').map(str::trim).filter(|g| !g.is_empty()) {
                if !groups.iter().any(|have| have == g) {
                    groups.push(g.to_string());
                }
            }
        }
        Ok(Principal {
            subject,
            email: None,
            groups,
            issuer: format!("ssh-ca:{ca_fingerprint}"),
        })
    }
}
