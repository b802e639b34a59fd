//! A builder for the fixture of one end-to-end test file, so a new file is
//! a few lines instead of a copied 40-line fixture:
//!
//! ```ignore
//! fn world() -> &'static World {
//!     static WORLD: OnceLock<World> = OnceLock::new();
//!     WORLD.get_or_init(|| {
//!         World::builder().container("fwd").users(&["admin", "alice"]).bound_keys().start()
//!     })
//! }
//! let mut cmd = world().ssh_cert("admin", &format!("root@{}", world().container().name));
//! ```
//!
//! Every user gets an ed25519 key and an OpenSSH user certificate from a
//! CA the gateway trusts (`[certificates]`), with the groups the test IdP
//! gives the same account ([`super::idp::groups_for`]), so certificate
//! logins need no IdP. `.bound_keys()` (or `.idp()`) also starts the real
//! test IdP; `.bound_keys()` binds each user's key with one token login,
//! for clients without certificates (Dropbear's `dbclient`).
//!
//! Containers get `[containers.NAME]` with `labels = { env = "dev" }`
//! unless `.container_labels()` says otherwise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::container::{TestContainer, run};
use super::gateway::TestGateway;
use super::idp::{TestIdp, groups_for};
use super::ssh::{keygen, run_ssh};

/// What to start; see the module docs.
#[derive(Default)]
pub struct WorldBuilder {
    containers: Vec<(String, String)>,
    config: String,
    users: Vec<String>,
    idp: bool,
    bound_keys: bool,
}

impl WorldBuilder {
    /// A busybox container `portcullis-test-<pid>-<suffix>`, labelled
    /// `env = "dev"`.
    pub fn container(self, suffix: &str) -> WorldBuilder {
        self.container_labels(suffix, "env = \"dev\"")
    }

    /// A container whose `labels = { ... }` table holds `labels` (TOML).
    pub fn container_labels(mut self, suffix: &str, labels: &str) -> WorldBuilder {
        self.containers
            .push((suffix.to_string(), labels.to_string()));
        self
    }

    /// Extra gateway config (TOML, appended verbatim).
    pub fn config(mut self, toml: &str) -> WorldBuilder {
        self.config.push_str(toml);
        if !toml.ends_with('\n') {
            self.config.push('\n');
        }
        self
    }

    /// Users (test IdP account names: `admin`, `alice`, ...), each with a
    /// key and a certificate.
    pub fn users(mut self, users: &[&str]) -> WorldBuilder {
        self.users.extend(users.iter().map(|u| u.to_string()));
        self
    }

    /// Starts the test IdP (tokens with [`World::token`]).
    pub fn idp(mut self) -> WorldBuilder {
        self.idp = true;
        self
    }

    /// Starts the IdP and binds every user's key with one token login.
    pub fn bound_keys(mut self) -> WorldBuilder {
        self.idp = true;
        self.bound_keys = true;
        self
    }

    /// Starts everything (on a thread of its own, as fixtures are built
    /// inside a `OnceLock` from any test thread).
    pub fn start(self) -> World {
        std::thread::spawn(move || self.start_here())
            .join()
            .unwrap_or_else(|_| panic!("the test world did not start"))
    }

    fn start_here(self) -> World {
        let keys = tempfile::tempdir().expect("tempdir");
        let home = keys.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        let idp = self.idp.then(TestIdp::start);
        let containers: Vec<TestContainer> = self
            .containers
            .iter()
            .map(|(suffix, _)| TestContainer::start(suffix))
            .collect();
        let ca = keys.path().join("ca");
        keygen(&ca);
        let ca_pub = std::fs::read_to_string(ca.with_extension("pub")).expect("ca.pub");
        let mut config = String::new();
        for (c, (_, labels)) in containers.iter().zip(&self.containers) {
            config.push_str(&format!(
                "[containers.{}]\nlabels = {{ {labels} }}\n",
                c.name
            ));
        }
        config.push_str(&self.config);
        if !self.config.contains("[certificates]") {
            config.push_str(&format!(
                "[certificates]\ngroups_extension = \"groups@portcullis\"\n\
                 [[certificates.ca]]\npublic_key = \"{}\"\n\
                 principal_prefix = \"cert:\"\n\
                 allowed_groups = [\"admins\", \"approvers\", \"developers\", \"reviewers\"]\n",
                ca_pub.trim()
            ));
        }
        let issuer = idp
            .as_ref()
            .map(|i| i.issuer.clone())
            .unwrap_or_else(|| "http://127.0.0.1:9".into());
        let gateway = TestGateway::start(&issuer, &config);
        let gateway_config = (issuer, config);
        let mut users = BTreeMap::new();
        for user in &self.users {
            let key = keys.path().join(user);
            keygen(&key);
            let groups = groups_for(user).join(",");
            let mut sign = Command::new("ssh-keygen");
            sign.args(["-q", "-s"])
                .arg(&ca)
                .args(["-I", user, "-n", user, "-V", "-5m:+1d"]);
            if !groups.is_empty() {
                sign.arg("-O")
                    .arg(format!("extension:groups@portcullis={groups}"));
            }
            run(sign.arg(key.with_extension("pub")));
            let cert = PathBuf::from(format!("{}-cert.pub", key.display()));
            users.insert(user.clone(), UserKeys { key, cert });
        }
        let world = World {
            idp,
            containers,
            gateway,
            gateway_config,
            users,
            home,
            _keys: keys,
        };
        if self.bound_keys {
            for user in &self.users {
                world.bind_key(user);
            }
        }
        world
    }
}

/// One user's files.
struct UserKeys {
    key: PathBuf,
    cert: PathBuf,
}

/// A started fixture: containers, the gateway, the IdP when asked for,
/// and each user's key and certificate. Stops with the test process.
pub struct World {
    idp: Option<TestIdp>,
    containers: Vec<TestContainer>,
    gateway: TestGateway,
    /// The issuer and config of `gateway`, for more gateways like it.
    gateway_config: (String, String),
    users: BTreeMap<String, UserKeys>,
    home: PathBuf,
    _keys: tempfile::TempDir,
}

impl World {
    /// What to start.
    pub fn builder() -> WorldBuilder {
        WorldBuilder::default()
    }

    /// The gateway.
    pub fn gateway(&self) -> &TestGateway {
        &self.gateway
    }

    /// Another gateway like [`World::gateway`] (same containers, CA and
    /// IdP, its own state and database), with `extra` config appended:
    /// for tests that change or break the gateway.
    pub fn another_gateway(&self, extra: &str) -> TestGateway {
        let (issuer, config) = &self.gateway_config;
        TestGateway::start(issuer, &format!("{config}{extra}"))
    }

    /// Like [`World::another_gateway`], on the database at `url` (`None`:
    /// SQLite): several gateways sharing one PostgreSQL database.
    pub fn gateway_on_database(&self, extra: &str, url: Option<&str>) -> TestGateway {
        let (issuer, config) = &self.gateway_config;
        TestGateway::start_with_database(issuer, &format!("{config}{extra}"), url)
    }

    /// The first container.
    pub fn container(&self) -> &TestContainer {
        self.containers.first().expect("the world has no container")
    }

    /// Every container, in the order they were asked for.
    pub fn containers(&self) -> &[TestContainer] {
        &self.containers
    }

    /// The test IdP (`.idp()` or `.bound_keys()`).
    pub fn idp(&self) -> &TestIdp {
        self.idp
            .as_ref()
            .expect("the world has no IdP: call .idp()")
    }

    /// A valid ID token of `user`, signed by the IdP's own key.
    pub fn token(&self, user: &str) -> String {
        let idp = self.idp();
        idp.mint_id_token(idp.standard_claims(user))
    }

    /// `user`'s private key (OpenSSH format).
    pub fn key(&self, user: &str) -> &Path {
        &self.user(user).key
    }

    /// `user`'s OpenSSH certificate (`KEY-cert.pub`).
    pub fn cert(&self, user: &str) -> &Path {
        &self.user(user).cert
    }

    /// A home directory for clients that write there (`dbclient`).
    pub fn home(&self) -> &Path {
        &self.home
    }

    fn user(&self, user: &str) -> &UserKeys {
        self.users
            .get(user)
            .unwrap_or_else(|| panic!("no user {user} in this world"))
    }

    /// OpenSSH in batch mode logging in as `target` with `user`'s
    /// certificate.
    pub fn ssh_cert(&self, user: &str, target: &str) -> Command {
        let u = self.user(user);
        self.gateway.ssh_batch(target, &u.key, Some(&u.cert))
    }

    /// OpenSSH in batch mode logging in as `target` with `user`'s bound key
    /// (`.bound_keys()`).
    pub fn ssh_key(&self, user: &str, target: &str) -> Command {
        self.gateway.ssh_batch(target, &self.user(user).key, None)
    }

    /// `user`'s key converted for Dropbear's `dbclient` (`dropbearconvert`).
    pub fn dropbear_key(&self, user: &str) -> PathBuf {
        let key = &self.user(user).key;
        let converted = key.with_extension("dropbear");
        if !converted.exists() {
            run(Command::new("dropbearconvert")
                .args(["openssh", "dropbear"])
                .arg(key)
                .arg(&converted));
        }
        converted
    }

    /// Binds `user`'s key with one token login (keyboard-interactive after
    /// the unbound key's partial success).
    fn bind_key(&self, user: &str) {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = match self.containers.first() {
            Some(c) => format!("root@{}", c.name),
            None => "portcullis".to_string(),
        };
        let mut cmd =
            self.gateway
                .ssh_with_key(&target, self.key(user), &self.token(user), dir.path());
        cmd.arg("true");
        let r = run_ssh(&mut cmd, b"");
        assert!(r.code != 255, "binding {user}'s key failed: {}", r.stderr);
    }
}
