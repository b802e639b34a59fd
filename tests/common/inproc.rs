//! The in-process layer: the gateway built by [`portcullis::app::App`] in
//! the test's own runtime, on port 0, with the `process` inventory backend
//! (containers named in the config, none running) and a russh client that
//! logs in with OpenSSH user certificates. No LXC, no IdP, no OpenSSH
//! client: for policy, broker and refusal paths, where nothing enters a
//! container. The certificates come from `ssh-keygen`, as a real CA's
//! would.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use portcullis::app::App;
use portcullis::gateway::Gateway;
use russh::ChannelMsg;
use russh::keys::{Certificate, PrivateKey, PublicKeyOrCertificate};
use tokio::sync::oneshot;

use super::container::run;

/// A gateway running in this process.
pub struct InProcess {
    /// Its SSH port on 127.0.0.1.
    pub port: u16,
    /// Its services (store, audit log, live sessions...).
    pub gateway: Arc<Gateway>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    ca: PathBuf,
    dir: tempfile::TempDir,
}

impl InProcess {
    /// Starts a gateway whose config is the base (port 0, the `process`
    /// backend with `web1` labelled dev and `db1` prod, both stopped, the
    /// shipped policies, a CA whose certificates carry `groups@portcullis`,
    /// its principals named `ca:NAME` with the shipped policies' groups
    /// allowed under their own names)
    /// plus `extra` (TOML). On PostgreSQL when
    /// `PORTCULLIS_TEST_DATABASE=postgres`.
    pub async fn start(extra: &str) -> InProcess {
        InProcess::start_with_policy(extra, None).await
    }

    /// [`InProcess::start`] with `policy` (Cedar) added to a copy of the
    /// shipped policies, when given.
    pub async fn start_with_policy(extra: &str, policy: Option<&str>) -> InProcess {
        InProcess::start_on("process", extra, policy).await
    }

    /// [`InProcess::start_with_policy`] with `[inventory] backend =
    /// BACKEND` (e.g. `lxc`, for a test that brings its own container;
    /// `web1` and `db1` stay on the process backend).
    pub async fn start_on(backend: &str, extra: &str, policy: Option<&str>) -> InProcess {
        InProcess::start_as(&Setup {
            extra,
            policy,
            backend,
            ..Setup::default()
        })
        .await
    }

    /// A gateway as `setup` says: its id, `web1`'s labels, and (with
    /// `share`) the database and CA of another in-process gateway, as a
    /// second gateway of a fleet or the same one restarted would have.
    pub async fn start_as(setup: &Setup<'_>) -> InProcess {
        let (extra, policy, backend) = (setup.extra, setup.policy, setup.backend);
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let ca = match setup.share {
            Some(other) => other.ca.clone(),
            None => {
                let ca = root.join("ca");
                super::ssh::keygen(&ca);
                ca
            }
        };
        let ca_pub = std::fs::read_to_string(ca.with_extension("pub")).expect("ca.pub");
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let policies = match policy {
            _ if setup.policy_dir.is_some() => {
                setup.policy_dir.map(Path::to_path_buf).unwrap_or(shipped)
            }
            None => shipped,
            Some(text) => {
                let copy = root.join("policies");
                std::fs::create_dir_all(&copy).expect("policies dir");
                for entry in std::fs::read_dir(&shipped).expect("policies").flatten() {
                    std::fs::copy(entry.path(), copy.join(entry.file_name())).expect("copy");
                }
                std::fs::write(copy.join("test-extra.cedar"), text).expect("policy");
                copy
            }
        };
        let database = match std::env::var("PORTCULLIS_TEST_DATABASE").as_deref() {
            _ if setup.share.is_some() => format!(
                "[database]\nurl = \"{}\"\n",
                setup
                    .share
                    .map(|o| o.gateway.config.database_url())
                    .unwrap_or_default()
            ),
            Ok("postgres") => format!(
                "[database]\nurl = \"{}\"\n",
                super::postgres::server().new_database()
            ),
            _ => String::new(),
        };
        // Keys of an `[auth]` section at the start of `extra` join the
        // base's own `[auth]` (TOML allows a table once).
        let (auth, extra) = match extra.strip_prefix("[auth]\n") {
            Some(rest) => {
                let end = rest.find("\n[").map_or(rest.len(), |i| i + 1);
                rest.split_at(end)
            }
            None => ("", extra),
        };
        let text = format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = \"{state}\"\ngateway_id = \"{id}\"\n\
             [oidc]\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"portcullis\"\n\
             [auth]\nfailure_delay = \"0s\"\npenalty_min = \"0s\"\n\
             max_unauthenticated_per_source = 64\n{auth}{database}\
             [policy]\ndir = \"{policies}\"\n[inventory]\nbackend = \"{backend}\"\n\
             [containers.web1]\npid_file = \"{root}/web1.pid\"\nlabels = {{ {web1} }}\n\
             [containers.db1]\npid_file = \"{root}/db1.pid\"\nlabels = {{ env = \"prod\" }}\n\
             [certificates]\ngroups_extension = \"groups@portcullis\"\n\
             [[certificates.ca]]\npublic_key = \"{ca_pub}\"\nprincipal_prefix = \"ca:\"\n\
             allowed_groups = [\"developers\", \"approvers\", \"admins\", \"security\", \"break-glass\", \"reviewers\"]\n{extra}",
            id = setup.gateway_id,
            web1 = setup.web1_labels,
            state = root.join("state").display(),
            policies = policies.display(),
            root = root.display(),
            ca_pub = ca_pub.trim(),
        );
        let config = portcullis::config::Config::parse(&text, Path::new("inproc.toml"))
            .unwrap_or_else(|e| panic!("config: {e}"));
        let helper =
            portcullis::attach::HelperBinary::from_path(env!("CARGO_BIN_EXE_portcullis-helper"))
                .expect("helper");
        let app = App::build_with(Arc::new(config), helper)
            .await
            .unwrap_or_else(|e| panic!("gateway: {e}"));
        let port = app.local_addr().expect("local addr").port();
        let gateway = app.gateway.clone();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(app.run(async {
            let _ = stopped.await;
        }));
        InProcess {
            port,
            gateway,
            stop: Some(stop),
            task: Some(task),
            ca,
            dir,
        }
    }

    /// Stops the gateway (in order: sessions, then the audit head, then the
    /// database) and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// A certificate login for `principal` with `groups` (a fresh key,
    /// signed by the gateway's trusted CA).
    pub fn user(&self, principal: &str, groups: &[&str]) -> User {
        self.user_with(principal, groups, &[])
    }

    /// [`InProcess::user`] whose certificate is signed with the extra
    /// `ssh-keygen -O` `options` (e.g. `no-port-forwarding`); one key per
    /// principal and options.
    pub fn user_with(&self, principal: &str, groups: &[&str], options: &[&str]) -> User {
        self.user_valid(principal, groups, options, "-5m:+1h")
    }

    /// [`InProcess::user_with`] whose certificate is valid for `validity`
    /// (`ssh-keygen -V`, e.g. `-5m:+3s`); a fresh key each time it differs.
    pub fn user_valid(
        &self,
        principal: &str,
        groups: &[&str],
        options: &[&str],
        validity: &str,
    ) -> User {
        let tag = if validity == "-5m:+1h" {
            String::new()
        } else {
            format!("-v{}", validity.replace([':', '+'], "_"))
        };
        let key = self
            .dir
            .path()
            .join(format!("user-{principal}{}{tag}", options.join("-")));
        if !key.exists() {
            super::ssh::keygen(&key);
            let mut sign = Command::new("ssh-keygen");
            sign.args(["-q", "-s"])
                .arg(&self.ca)
                .args(["-I", principal, "-n", principal, "-V", validity]);
            if !groups.is_empty() {
                sign.arg("-O")
                    .arg(format!("extension:groups@portcullis={}", groups.join(",")));
            }
            for option in options {
                sign.args(["-O", option]);
            }
            run(sign.arg(key.with_extension("pub")));
        }
        let private = russh::keys::load_secret_key(&key, None).expect("user key");
        let cert = Certificate::read_file(&PathBuf::from(format!("{}-cert.pub", key.display())))
            .expect("certificate");
        User {
            port: self.port,
            key: Arc::new(private),
            cert,
        }
    }

    /// The audit events so far: `(kind, outcome, detail)`.
    pub async fn audit(&self) -> Vec<(String, String, serde_json::Value)> {
        self.gateway
            .store
            .audit_events(None)
            .await
            .expect("audit events")
            .into_iter()
            .map(|e| {
                let detail = serde_json::from_str(&e.detail).unwrap_or_default();
                (e.kind, e.outcome, detail)
            })
            .collect()
    }
}

/// How [`InProcess::start_as`] sets a gateway up.
pub struct Setup<'a> {
    /// `gateway_id` (default `gw`).
    pub gateway_id: &'a str,
    /// `web1`'s labels, TOML inline-table body (default `env = "dev"`).
    pub web1_labels: &'a str,
    /// More config (TOML).
    pub extra: &'a str,
    /// Cedar added to a copy of the shipped policies.
    pub policy: Option<&'a str>,
    /// Share this gateway's database and CA.
    pub share: Option<&'a InProcess>,
    /// A policy directory of the test's own instead of the shipped one.
    pub policy_dir: Option<&'a Path>,
    /// `[inventory] backend` (default `process`; `web1` and `db1` stay on
    /// the process backend).
    pub backend: &'a str,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            gateway_id: "gw",
            web1_labels: "env = \"dev\"",
            extra: "",
            policy: None,
            share: None,
            policy_dir: None,
            backend: "process",
        }
    }
}

/// Trusts any host key (the gateway is ours, on loopback).
struct TrustingClient;

impl russh::client::Handler for TrustingClient {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// A principal with a key and a certificate.
pub struct User {
    port: u16,
    key: Arc<PrivateKey>,
    cert: Certificate,
}

/// What one exec answered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The exit status (`None`: none was sent).
    pub code: Option<u32>,
    /// Stdout bytes.
    pub stdout: Vec<u8>,
    /// Stderr as text.
    pub stderr: String,
}

/// One authenticated connection.
pub struct Connection {
    session: russh::client::Handle<TrustingClient>,
}

impl User {
    /// The user's certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }

    /// Connects and logs in as SSH user `ssh_user` (the destination).
    pub async fn connect(&self, ssh_user: &str) -> Connection {
        let config = Arc::new(russh::client::Config::default());
        let mut session = russh::client::connect(config, ("127.0.0.1", self.port), TrustingClient)
            .await
            .expect("connect");
        let auth = session
            .authenticate_openssh_cert(ssh_user, self.key.clone(), self.cert.clone())
            .await
            .expect("authenticate");
        assert!(auth.success(), "certificate login refused: {auth:?}");
        Connection { session }
    }

    /// Connects as `ssh_user` and runs `command` on a fresh connection.
    pub async fn exec(&self, ssh_user: &str, command: &str) -> Answer {
        self.connect(ssh_user).await.exec(command).await
    }
}

impl Connection {
    /// Runs `command` on a new channel of this connection (stdin closed at
    /// once) and collects its answer until the channel closes.
    pub async fn exec(&self, command: &str) -> Answer {
        let mut channel = self
            .session
            .channel_open_session()
            .await
            .expect("channel open");
        channel.exec(true, command).await.expect("exec");
        channel.eof().await.expect("eof");
        let mut answer = Answer::default();
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => answer.stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, .. } => {
                    answer.stderr.push_str(&String::from_utf8_lossy(&data))
                }
                ChannelMsg::ExitStatus { exit_status } => answer.code = Some(exit_status),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        answer
    }

    /// Opens a `direct-tcpip` channel (`ssh -L`) to `host`:`port`; `Err`
    /// with the server's refusal.
    pub async fn forward(
        &self,
        host: &str,
        port: u32,
    ) -> Result<russh::Channel<russh::client::Msg>, russh::Error> {
        self.session
            .channel_open_direct_tcpip(host, port, "127.0.0.1", 50000)
            .await
    }

    /// True once the server closed the connection.
    pub fn is_closed(&self) -> bool {
        self.session.is_closed()
    }

    /// Tries to open a session channel; `Err` with the server's reason.
    pub async fn open_session(&self) -> Result<russh::Channel<russh::client::Msg>, russh::Error> {
        self.session.channel_open_session().await
    }

    /// Asks for `subsystem` on a new channel; true when the server agreed.
    pub async fn subsystem(&self, subsystem: &str) -> bool {
        let mut channel = self.open_session().await.expect("channel open");
        channel
            .request_subsystem(true, subsystem)
            .await
            .expect("request");
        loop {
            match channel.wait().await {
                Some(ChannelMsg::Success) => return true,
                Some(ChannelMsg::Failure) | None => return false,
                _ => {}
            }
        }
    }
}
