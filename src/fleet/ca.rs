//! The edge CA (ed25519) and the certificates it signs (OpenSSH
//! PROTOCOL.certkeys, through `russh::keys::ssh_key`'s builder):
//!
//! * short-lived **user certificates** with which an edge logs in to a
//!   node's SSH server for one relayed session, and [`NodeTrust`], the
//!   node's check of them;
//! * **host certificates** for nodes (tunnel login and host key of relayed
//!   connections) and for edges' fleet listeners, and
//!   [`verify_host_certificate`].
//!
//! Owns key files and certificate contents; it never opens a socket, and it
//! never trusts a CA read from the database (see `docs/fleet.md`).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::{Certificate, Fingerprint, LineEnding, PublicKey};
use russh::keys::{Algorithm, HashAlg, PrivateKey};

use crate::config::MAX_USER_CERTIFICATE_TTL;
use crate::identity::Principal;

/// Extension names of a relay user certificate (PROTOCOL.certkeys vendor
/// extensions `name@domain`).
pub mod ext {
    /// `login@container` the session is for; equals the SSH user name.
    pub const TARGET: &str = "target@portcullis";
    /// `session` (shell, exec, subsystem) or `direct-tcpip`.
    pub const ACTION: &str = "action@portcullis";
    /// The session id both edge and node use.
    pub const SESSION: &str = "session@portcullis";
    /// The principal's issuer (OIDC issuer URL or `ssh-ca:...`).
    pub const ISSUER: &str = "issuer@portcullis";
    /// The principal's groups, a JSON array of strings.
    pub const GROUPS: &str = "groups@portcullis";
    /// The principal's email, when known.
    pub const EMAIL: &str = "email@portcullis";
    /// The grant the edge's decision relied on, when one.
    pub const GRANT: &str = "grant@portcullis";
    /// The user's `ip:port` as the edge saw it.
    pub const CLIENT_ADDRESS: &str = "client-address@portcullis";
    /// The minting edge's gateway id.
    pub const EDGE: &str = "edge@portcullis";
    /// For `direct-tcpip`: the one destination (`ip:port`, canonical as
    /// [`crate::policy::addr::canonical_destination`] writes it) the edge
    /// decided; the node opens no other.
    pub const DESTINATION: &str = "destination@portcullis";
}

/// Key id prefix of relay user certificates.
pub const USER_KEY_ID_PREFIX: &str = "portcullis-relay:";
/// Key id prefix of node host certificates.
pub const NODE_KEY_ID_PREFIX: &str = "portcullis-node:";
/// Clock skew allowed: certificates start this long before they are minted.
pub const CLOCK_SKEW: Duration = Duration::from_secs(30);

/// A failed CA step. `Display` is the full reason (audit and logs).
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The CA key file could not be read, parsed or written.
    #[error("edge CA key {path}: {message}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Generating a key or signing a certificate failed.
    #[error("cannot sign a certificate: {0}")]
    Sign(String),
    /// Signed by a CA this side does not trust.
    #[error("certificate signed by an untrusted CA {0}")]
    UntrustedCa(String),
    /// Bad signature or outside its validity window.
    #[error("certificate invalid: {0}")]
    Invalid(String),
    /// A user certificate where a host one was expected, or the reverse.
    #[error("wrong certificate type: {0}")]
    WrongType(String),
    /// Valid for longer than a relay certificate may be.
    #[error("certificate valid for {0} s, longer than allowed")]
    TooLong(u64),
    /// A critical option (none is defined for relay certificates).
    #[error("unsupported critical option {0}")]
    CriticalOption(String),
    /// A principal, key id or extension is missing or does not match.
    #[error("certificate does not name this: {0}")]
    NotNamed(String),
    /// The `ca_pin` or a fingerprint does not parse.
    #[error("bad fingerprint {0}")]
    Fingerprint(String),
}

/// What a relay user certificate is for: one session channel or one
/// forwarded TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayAction {
    /// A session channel (shell, exec, subsystem such as sftp, scp).
    Session,
    /// A `direct-tcpip` channel (`ssh -L`).
    DirectTcpip,
}

impl RelayAction {
    /// `session` or `direct-tcpip`.
    pub fn as_str(self) -> &'static str {
        match self {
            RelayAction::Session => "session",
            RelayAction::DirectTcpip => "direct-tcpip",
        }
    }

    fn parse(s: &str) -> Option<RelayAction> {
        match s {
            "session" => Some(RelayAction::Session),
            "direct-tcpip" => Some(RelayAction::DirectTcpip),
            _ => None,
        }
    }
}

/// What the edge decided and vouches for, written into a user certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayGrant {
    /// The session id (UUID text) the node will use too.
    pub session_id: String,
    /// Who.
    pub principal: Principal,
    /// Login inside the container.
    pub login: String,
    /// The container.
    pub container: String,
    /// The kind of channel.
    pub action: RelayAction,
    /// The grant the edge's decision relied on.
    pub grant_id: Option<String>,
    /// The user's address as the edge saw it.
    pub client_address: Option<String>,
    /// The edge's gateway id.
    pub edge: String,
    /// For [`RelayAction::DirectTcpip`]: the destination decided (`ip:port`,
    /// canonical); `None` otherwise.
    pub destination: Option<String>,
}

impl RelayGrant {
    /// The SSH user name of the inner connection: `login@container`.
    pub fn ssh_user(&self) -> String {
        format!("{}@{}", self.login, self.container)
    }
}

/// A user certificate with its one-session private key.
#[derive(Debug, Clone)]
pub struct MintedCertificate {
    /// The private key the certificate certifies (ed25519, made for it).
    pub key: Arc<PrivateKey>,
    /// The certificate.
    pub certificate: Certificate,
    /// The SSH user name to log in as (`login@container`).
    pub user: String,
}

/// The edge CA: its private key, loaded from or created in a file.
#[derive(Clone)]
pub struct EdgeCa {
    key: Arc<PrivateKey>,
    fingerprint: Fingerprint,
}

impl std::fmt::Debug for EdgeCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeCa")
            .field("fingerprint", &self.fingerprint.to_string())
            .finish_non_exhaustive()
    }
}

/// Now as unix seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads an ed25519 private key from `path`, or, when `create` and the file
/// does not exist, generates one and writes it with mode 0600 (parent
/// directories 0700). Returns the key and whether it was created.
///
/// # Errors
/// [`CaError::KeyFile`].
pub fn load_or_create_key(path: &Path, create: bool) -> Result<(PrivateKey, bool), CaError> {
    let err = |message: String| CaError::KeyFile {
        path: path.to_path_buf(),
        message,
    };
    if path.exists() {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| err(e.to_string()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(err(format!(
                "mode {:o} lets others read it; chmod 600",
                mode & 0o777
            )));
        }
        let key = russh::keys::load_secret_key(path, None).map_err(|e| err(e.to_string()))?;
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(err("not an ed25519 key".into()));
        }
        return Ok((key, false));
    }
    if !create {
        return Err(err("no such file".into()));
    }
    if let Some(parent) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| err(e.to_string()))?;
    }
    let key = new_key()?;
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| err(e.to_string()))?;
    write_private(path, text.as_bytes()).map_err(|e| err(e.to_string()))?;
    Ok((key, true))
}

/// Writes `bytes` to a new file `path` with mode 0600 (fails when it exists).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// A fresh ed25519 key.
///
/// # Errors
/// [`CaError::Sign`] when the system's random source fails.
pub fn new_key() -> Result<PrivateKey, CaError> {
    PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .map_err(|e| CaError::Sign(e.to_string()))
}

/// russh's preferred algorithms with ed25519 host certificates asked for
/// first, for a client that accepts only a certified server (an edge's
/// fleet listener, a node's relay server).
pub fn certificate_host_keys() -> russh::Preferred {
    russh::Preferred {
        host_key_certificates: std::borrow::Cow::Owned(vec![Algorithm::Ed25519]),
        ..Default::default()
    }
}

/// Parses a `SHA256:...` fingerprint.
///
/// # Errors
/// [`CaError::Fingerprint`].
pub fn parse_fingerprint(text: &str) -> Result<Fingerprint, CaError> {
    Fingerprint::from_str(text.trim()).map_err(|_| CaError::Fingerprint(text.to_string()))
}

impl EdgeCa {
    /// The CA whose private key is in `path`, created when `create` and
    /// missing. Returns whether it was created.
    ///
    /// # Errors
    /// [`CaError::KeyFile`].
    pub fn load_or_create(path: &Path, create: bool) -> Result<(EdgeCa, bool), CaError> {
        let (key, created) = load_or_create_key(path, create)?;
        Ok((EdgeCa::from_key(key), created))
    }

    /// The CA of `key`.
    pub fn from_key(key: PrivateKey) -> EdgeCa {
        let fingerprint = key.public_key().fingerprint(HashAlg::Sha256);
        EdgeCa {
            key: Arc::new(key),
            fingerprint,
        }
    }

    /// The CA's public key.
    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }

    /// The CA's public key in OpenSSH format (`ssh-ed25519 AAAA...`).
    pub fn public_key_openssh(&self) -> String {
        self.key.public_key().to_openssh().unwrap_or_default()
    }

    /// The CA's `SHA256:...` fingerprint (what nodes pin).
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Mints a user certificate for one relayed session: a fresh key,
    /// principal = the principal's subject, valid from [`CLOCK_SKEW`] before
    /// `now` (unix seconds) for `ttl` (at most
    /// [`MAX_USER_CERTIFICATE_TTL`]); the [`ext`] extensions name the rest.
    ///
    /// # Errors
    /// [`CaError::Sign`]; [`CaError::TooLong`] when `ttl` is too long.
    pub fn mint_user_certificate(
        &self,
        grant: &RelayGrant,
        now: u64,
        ttl: Duration,
    ) -> Result<MintedCertificate, CaError> {
        if ttl > MAX_USER_CERTIFICATE_TTL {
            return Err(CaError::TooLong(ttl.as_secs()));
        }
        let key = new_key()?;
        let sign = |e: russh::keys::ssh_key::Error| CaError::Sign(e.to_string());
        let groups = serde_json::to_string(&grant.principal.groups)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let mut builder = self.builder(key.public_key(), now, ttl)?;
        builder
            .cert_type(CertType::User)
            .map_err(sign)?
            .key_id(format!("{USER_KEY_ID_PREFIX}{}", grant.session_id))
            .map_err(sign)?
            .valid_principal(grant.principal.subject.clone())
            .map_err(sign)?
            .extension(ext::TARGET, grant.ssh_user())
            .map_err(sign)?
            .extension(ext::ACTION, grant.action.as_str())
            .map_err(sign)?
            .extension(ext::SESSION, grant.session_id.clone())
            .map_err(sign)?
            .extension(ext::ISSUER, grant.principal.issuer.clone())
            .map_err(sign)?
            .extension(ext::GROUPS, groups)
            .map_err(sign)?
            .extension(ext::EDGE, grant.edge.clone())
            .map_err(sign)?;
        let optional = [
            (ext::EMAIL, &grant.principal.email),
            (ext::GRANT, &grant.grant_id),
            (ext::CLIENT_ADDRESS, &grant.client_address),
            (ext::DESTINATION, &grant.destination),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                builder.extension(name, value.clone()).map_err(sign)?;
            }
        }
        let certificate = builder.sign(self.key.as_ref()).map_err(sign)?;
        Ok(MintedCertificate {
            key: Arc::new(key),
            certificate,
            user: grant.ssh_user(),
        })
    }

    /// Mints a host certificate for `key` naming `principal` (a node name,
    /// or `edge:<id>` for an edge's fleet listener), key id
    /// `{key_id_prefix}{principal}`, valid from [`CLOCK_SKEW`] before `now`
    /// for `ttl`.
    ///
    /// # Errors
    /// [`CaError::Sign`].
    pub fn mint_host_certificate(
        &self,
        key: &PublicKey,
        principal: &str,
        now: u64,
        ttl: Duration,
    ) -> Result<Certificate, CaError> {
        let sign = |e: russh::keys::ssh_key::Error| CaError::Sign(e.to_string());
        let mut builder = self.builder(key, now, ttl)?;
        builder
            .cert_type(CertType::Host)
            .map_err(sign)?
            .key_id(format!("{NODE_KEY_ID_PREFIX}{principal}"))
            .map_err(sign)?
            .valid_principal(principal)
            .map_err(sign)?;
        builder.sign(self.key.as_ref()).map_err(sign)
    }

    fn builder(&self, key: &PublicKey, now: u64, ttl: Duration) -> Result<Builder, CaError> {
        let nonce: [u8; 32] = rand::rng().random();
        let mut builder = Builder::new(
            nonce.to_vec(),
            key.key_data().clone(),
            now.saturating_sub(CLOCK_SKEW.as_secs()),
            now.saturating_add(ttl.as_secs()),
        )
        .map_err(|e| CaError::Sign(e.to_string()))?;
        builder
            .serial(rand::rng().random())
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(builder)
    }
}

/// What a node learns from a verified relay user certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayedIdentity {
    /// The principal (subject, email, groups, issuer) as the edge vouched.
    pub principal: Principal,
    /// Login inside the container.
    pub login: String,
    /// The container.
    pub container: String,
    /// The one kind of channel allowed.
    pub action: RelayAction,
    /// The session id to use.
    pub session_id: String,
    /// The grant the edge relied on.
    pub grant_id: Option<String>,
    /// The user's address at the edge.
    pub client_address: Option<String>,
    /// The edge that minted it.
    pub edge: String,
    /// The one destination (`ip:port`) a `direct-tcpip` certificate names.
    pub destination: Option<String>,
    /// Serial of the certificate (for the audit log).
    pub serial: u64,
}

/// A node's trust in edge user certificates: the CA fingerprints it
/// pinned (normally one).
#[derive(Debug, Clone)]
pub struct NodeTrust {
    cas: Vec<Fingerprint>,
}

impl NodeTrust {
    /// Trusts certificates signed by the CAs of `fingerprints`.
    pub fn new(fingerprints: Vec<Fingerprint>) -> NodeTrust {
        NodeTrust { cas: fingerprints }
    }

    /// Checks a relay user certificate offered for SSH user `user` at `now`
    /// (unix seconds): a trusted CA's valid signature, inside its validity
    /// window, no longer-lived than [`MAX_USER_CERTIFICATE_TTL`] +
    /// [`CLOCK_SKEW`], type user, no critical option, exactly one
    /// principal, a `portcullis-relay:` key id naming the session, and
    /// `target@portcullis` equal to `user`. russh has verified the client's
    /// signature (proof of the key) before this is called.
    ///
    /// # Errors
    /// A [`CaError`] naming what failed.
    pub fn verify_user_certificate(
        &self,
        cert: &Certificate,
        user: &str,
        now: u64,
    ) -> Result<RelayedIdentity, CaError> {
        check_signed(cert, &self.cas, now)?;
        if cert.cert_type() != CertType::User {
            return Err(CaError::WrongType("host certificate used as user".into()));
        }
        let lifetime = cert.valid_before().saturating_sub(cert.valid_after());
        if lifetime > (MAX_USER_CERTIFICATE_TTL + CLOCK_SKEW).as_secs() {
            return Err(CaError::TooLong(lifetime));
        }
        if let Some(option) = cert.critical_options().keys().next() {
            return Err(CaError::CriticalOption(crate::audit::truncate(option, 64)));
        }
        let [subject] = cert.valid_principals() else {
            return Err(CaError::NotNamed("exactly one principal".into()));
        };
        let extension = |name: &str| cert.extensions().get(name).cloned();
        let required = |name: &str| {
            extension(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| CaError::NotNamed(format!("extension {name}")))
        };
        let target = required(ext::TARGET)?;
        if target != user {
            return Err(CaError::NotNamed(format!(
                "target {} used as user {}",
                crate::audit::truncate(&target, 140),
                crate::audit::truncate(user, 140)
            )));
        }
        let (login, container) = target
            .split_once('@')
            .ok_or_else(|| CaError::NotNamed("target login@container".into()))?;
        let session_id = required(ext::SESSION)?;
        if cert.key_id() != format!("{USER_KEY_ID_PREFIX}{session_id}") {
            return Err(CaError::NotNamed("key id of the session".into()));
        }
        let action = RelayAction::parse(&required(ext::ACTION)?)
            .ok_or_else(|| CaError::NotNamed("a known action".into()))?;
        let destination = extension(ext::DESTINATION);
        if (action == RelayAction::DirectTcpip) != destination.is_some() {
            return Err(CaError::NotNamed(
                "a destination exactly when the action is direct-tcpip".into(),
            ));
        }
        let groups: Vec<String> = serde_json::from_str(&required(ext::GROUPS)?)
            .map_err(|_| CaError::NotNamed("groups as a JSON array".into()))?;
        Ok(RelayedIdentity {
            principal: Principal {
                subject: subject.clone(),
                email: extension(ext::EMAIL),
                groups,
                issuer: required(ext::ISSUER)?,
            },
            login: login.to_string(),
            container: container.to_string(),
            action,
            session_id,
            grant_id: extension(ext::GRANT),
            client_address: extension(ext::CLIENT_ADDRESS),
            edge: required(ext::EDGE)?,
            destination,
            serial: cert.serial(),
        })
    }
}

/// The CA signature and validity window of `cert`, against `cas`.
fn check_signed(cert: &Certificate, cas: &[Fingerprint], now: u64) -> Result<(), CaError> {
    let ca = cert.signature_key().fingerprint(HashAlg::Sha256);
    if !cas.contains(&ca) {
        return Err(CaError::UntrustedCa(ca.to_string()));
    }
    cert.validate_at(now, cas).map_err(|e| {
        CaError::Invalid(format!(
            "{e} (valid {}..{}, now {now})",
            cert.valid_after(),
            cert.valid_before()
        ))
    })
}

/// Checks a host certificate (a node's, or an edge listener's) at `now`:
/// signed by one of `cas`, valid now, type host, naming `principal` (any
/// principal when `None`), no critical option.
///
/// # Errors
/// A [`CaError`] naming what failed.
pub fn verify_host_certificate(
    cert: &Certificate,
    cas: &[Fingerprint],
    principal: Option<&str>,
    now: u64,
) -> Result<(), CaError> {
    check_signed(cert, cas, now)?;
    if cert.cert_type() != CertType::Host {
        return Err(CaError::WrongType("user certificate used as host".into()));
    }
    if let Some(option) = cert.critical_options().keys().next() {
        return Err(CaError::CriticalOption(crate::audit::truncate(option, 64)));
    }
    if let Some(principal) = principal
        && cert.valid_principals() != [principal.to_string()]
    {
        return Err(CaError::NotNamed(format!(
            "principal {principal} (has {:?})",
            cert.valid_principals()
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "ca_tests.rs"]
mod tests;
