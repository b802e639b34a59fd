//! Key bindings against the real IdP and the real databases (issue 14,
//! review findings M5 and L5), through the library the gateway uses
//! (`KeyBindings::open`): the database holds no usable refresh token; two
//! parallel connections never spend one rotating refresh token twice; a
//! PostgreSQL URL with `sslmode=verify-full` fails closed against a server
//! without TLS. SQLite by default, PostgreSQL with
//! `PORTCULLIS_TEST_DATABASE=postgres`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::idp::TestIdp;
use portcullis::audit::AuditLog;
use portcullis::config::Config;
use portcullis::identity::{
    BindingCheck, BindingOrigin, Issuers, KeyBindings, LoginTokens, key_fingerprint,
};
use portcullis::store::Store;
use russh::keys::{Algorithm, PrivateKey, PublicKey};

/// ID tokens of this file's IdP live this long (seconds).
const ID_TOKEN_TTL: u64 = 3;

struct Setup {
    _dir: tempfile::TempDir,
    sqlite_file: Option<std::path::PathBuf>,
    store: Store,
    config: Config,
    issuers: Arc<Issuers>,
}

async fn setup(idp: &TestIdp) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (url, sqlite_file) = match std::env::var("PORTCULLIS_TEST_DATABASE").as_deref() {
        Ok("postgres") => (common::postgres::server().new_database(), None),
        _ => {
            let file = dir.path().join("portcullis.db");
            (format!("sqlite://{}", file.display()), Some(file))
        }
    };
    let text = format!(
        "state_dir = \"{}\"\n[oidc]\nissuer = \"{}\"\nclient_id = \"portcullis\"\n\
         scopes = \"openid email groups offline_access\"\nleeway = \"0s\"\n",
        dir.path().display(),
        idp.issuer
    );
    let config = Config::parse(&text, Path::new("t.toml")).unwrap();
    let store = Store::open(&url).await.unwrap();
    let issuers = Arc::new(Issuers::from_config(&config).unwrap());
    Setup {
        _dir: dir,
        sqlite_file,
        store,
        config,
        issuers,
    }
}

/// A device-flow login at the real IdP as `login` (the browser types the
/// code: the default prompt has no one-click link).
async fn device_login(idp: &TestIdp, issuers: &Issuers, login: &str) -> LoginTokens {
    let issuer = issuers.default_issuer();
    let authorization = issuer.start_device_authorization().await.unwrap();
    assert!(authorization.verification_uri_complete.is_none());
    idp.complete_device_login_with_code(
        &authorization.verification_uri,
        &authorization.user_code,
        login,
    )
    .await;
    issuer.poll_device_token(&authorization).await.unwrap()
}

fn key() -> PublicKey {
    PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .unwrap()
        .public_key()
        .clone()
}

/// What the IdP answers to `refresh_token` used at its token endpoint.
async fn idp_accepts_refresh_token(idp: &TestIdp, token: &str) -> bool {
    let response = reqwest::Client::new()
        .post(format!("{}/token", idp.issuer))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", "portcullis"),
        ])
        .send()
        .await
        .unwrap();
    response.status().is_success()
}

/// Review M5: read access to the database must not give refresh tokens
/// that mint ID tokens for every user with a refreshable binding.
#[tokio::test]
async fn the_database_holds_no_usable_refresh_token() {
    let idp = TestIdp::start();
    let s = setup(&idp).await;
    let bindings = KeyBindings::open(s.store.clone(), &s.config).await.unwrap();
    let tokens = device_login(&idp, &s.issuers, "alice").await;
    let refresh = tokens
        .refresh_token
        .clone()
        .expect("offline_access gives one");
    let k = key();
    bindings
        .bind_key(
            &AuditLog::new(s.store.clone()),
            &k,
            &tokens,
            &BindingOrigin {
                client_addr: "127.0.0.1:50000",
            },
        )
        .await
        .unwrap()
        .unwrap();
    let stored = s
        .store
        .key_binding(&key_fingerprint(&k))
        .await
        .unwrap()
        .unwrap()
        .refresh_token
        .unwrap();
    assert_ne!(stored.expose(), refresh.expose());
    assert!(!stored.expose().contains(refresh.expose()));
    assert!(
        !idp_accepts_refresh_token(&idp, stored.expose()).await,
        "the stored value works as a refresh token at the IdP"
    );
    if let Some(file) = &s.sqlite_file {
        s.store.close().await;
        for f in [file.clone(), file.with_extension("db-wal")] {
            let bytes = std::fs::read(&f).unwrap_or_default();
            let needle = refresh.expose().as_bytes();
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds the refresh token",
                f.display()
            );
        }
    }
    // The token itself still works: the IdP's login was not spent.
    assert!(idp_accepts_refresh_token(&idp, refresh.expose()).await);
}

/// Review L5: with refresh-token rotation and reuse detection at the IdP
/// (oidc-provider rotates the refresh tokens of public clients and revokes
/// the whole grant when a rotated one is used again), parallel connections
/// after the ID token expired must refresh once, not once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_connections_refresh_a_rotating_token_once() {
    let idp = TestIdp::start_with_id_token_ttl(ID_TOKEN_TTL);
    let s = setup(&idp).await;
    let bindings = KeyBindings::open(s.store.clone(), &s.config).await.unwrap();
    let tokens = device_login(&idp, &s.issuers, "alice").await;
    let k = key();
    bindings
        .bind_key(
            &AuditLog::new(s.store.clone()),
            &k,
            &tokens,
            &BindingOrigin {
                client_addr: "127.0.0.1:50000",
            },
        )
        .await
        .unwrap()
        .unwrap();
    for round in 0..2 {
        // Wait (by the binding's own record) until the ID token expired.
        let started = Instant::now();
        loop {
            let b = s
                .store
                .key_binding(&key_fingerprint(&k))
                .await
                .unwrap()
                .unwrap();
            if portcullis::store::now_ms() >= b.id_token_expires_at {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (bindings, issuers, k) = (bindings.clone(), s.issuers.clone(), k.clone());
            set.spawn(async move { bindings.check(&issuers, &k).await });
        }
        let mut refreshed = 0;
        while let Some(outcome) = set.join_next().await {
            match outcome.unwrap() {
                BindingCheck::Bound {
                    principal,
                    refreshed: r,
                } => {
                    assert_eq!(principal.subject, "alice");
                    refreshed += usize::from(r);
                }
                other => panic!("round {round}: {other:?}\n{}", idp.logs()),
            }
        }
        assert_eq!(refreshed, 1, "round {round}: one refresh at the IdP");
    }
}

/// Review M5: `sslmode=verify-full` (sqlx, as libpq) refuses a server that
/// does not speak TLS instead of falling back to clear text, as the
/// default `prefer` does.
#[tokio::test]
async fn a_verify_full_url_fails_closed_without_tls() {
    let url = common::postgres::server().new_database();
    let plain = Store::open(&url).await;
    assert!(plain.is_ok(), "the test server works without TLS");
    plain.unwrap().close().await;
    for mode in ["verify-full", "require"] {
        let err = Store::open(&format!("{url}?sslmode={mode}"))
            .await
            .err()
            .unwrap_or_else(|| panic!("sslmode={mode} connected without TLS"));
        let text = err.to_string().to_lowercase();
        assert!(
            text.contains("tls") || text.contains("ssl"),
            "sslmode={mode}: {text}"
        );
    }
}
