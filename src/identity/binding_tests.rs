//! Key bindings against a real SQLite store with tokens made in-process
//! (issue 14: sealing, origin, notification, device-flow switch, telling
//! the principal, own keys, revoked keys). The same against the real IdP
//! and PostgreSQL: `tests/key_binding_hardening.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use russh::keys::{Algorithm, PrivateKey, PublicKey};

use super::*;
use crate::audit::AuditLog;
use crate::config::{Config, Secret};
use crate::identity::VerifiedIdToken;
use crate::store::{Store, now_ms};

struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
    config: Config,
}

async fn fixture(extra: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "state_dir = \"{}\"\n[oidc]\nissuer = \"https://idp.test\"\nclient_id = \"c\"\n{extra}",
        dir.path().display()
    );
    let config = Config::parse(&text, std::path::Path::new("t")).unwrap();
    let store = Store::open(&format!("sqlite://{}/t.db", dir.path().display()))
        .await
        .unwrap();
    Fixture { dir, store, config }
}

fn key() -> PublicKey {
    PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .unwrap()
        .public_key()
        .clone()
}

fn tokens(subject: &str, source: TokenSource, refresh: Option<&str>) -> LoginTokens {
    LoginTokens {
        id_token: VerifiedIdToken {
            principal: Principal {
                subject: subject.into(),
                email: Some(format!("{subject}@example.com")),
                groups: vec!["developers".into()],
                issuer: "https://idp.test".into(),
            },
            expires_at_ms: now_ms() + 600_000,
            obtained_by: source,
        },
        refresh_token: refresh.map(|r| Secret::new(r.into())),
    }
}

fn origin(addr: &str) -> BindingOrigin<'_> {
    BindingOrigin { client_addr: addr }
}

/// M5: the database file holds no usable refresh token; H2: the binding
/// records where it came from, is audited and queues `key_bound`.
#[tokio::test]
async fn a_binding_is_sealed_recorded_audited_and_announced_by_webhook() {
    let f = fixture("[grants]\nwebhooks = [\"http://127.0.0.1:9/hook\"]\n").await;
    let bindings = KeyBindings::open(f.store.clone(), &f.config).await.unwrap();
    let audit = AuditLog::new(f.store.clone());
    let k = key();
    let refresh = "rt-VERY-SECRET-refresh-token-1234567890";
    let until = bindings
        .bind_key(
            &audit,
            &k,
            &tokens("alice", TokenSource::DeviceFlow, Some(refresh)),
            &origin("198.51.100.7:40000"),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(until > now_ms());
    let stored = f
        .store
        .key_binding(&key_fingerprint(&k))
        .await
        .unwrap()
        .unwrap();
    let sealed = stored.refresh_token.as_ref().unwrap().expose().to_string();
    assert!(sealed.starts_with("pcv1:"), "{sealed}");
    assert!(!sealed.contains(refresh));
    assert_eq!(stored.bound_from.as_deref(), Some("198.51.100.7:40000"));
    assert_eq!(stored.bound_by.as_deref(), Some("device_flow"));
    assert_eq!(stored.announced_at, None);
    f.store.close().await;
    let db = std::fs::read(f.dir.path().join("t.db")).unwrap();
    let wal = std::fs::read(f.dir.path().join("t.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes
                .windows(refresh.len())
                .any(|w| w == refresh.as_bytes()),
            "the refresh token is in the database file"
        );
    }
    let store = Store::open(&format!("sqlite://{}/t.db", f.dir.path().display()))
        .await
        .unwrap();
    let events = store.audit_events(None).await.unwrap();
    let bound = events.iter().find(|e| e.kind == "key_binding").unwrap();
    assert_eq!(bound.principal.as_deref(), Some("alice"));
    assert_eq!(bound.client_addr.as_deref(), Some("198.51.100.7:40000"));
    assert!(
        bound
            .detail
            .contains("device_flow login from 198.51.100.7:40000")
    );
    let hooks = store.due_webhooks(now_ms() + 1000, 10).await.unwrap();
    assert_eq!(hooks.len(), 1);
    let body: serde_json::Value = serde_json::from_str(&hooks[0].2).unwrap();
    assert_eq!(body["event"], "key_bound");
    assert_eq!(body["principal"], "alice");
    assert_eq!(body["fingerprint"], key_fingerprint(&k));
    assert_eq!(body["client_addr"], "198.51.100.7:40000");
    assert!(!hooks[0].2.contains(refresh));
}

#[tokio::test]
async fn device_flow_logins_bind_only_when_configured() {
    let f = fixture("[auth]\nbind_keys_from_device_flow = false\n").await;
    let bindings = KeyBindings::open(f.store.clone(), &f.config).await.unwrap();
    let audit = AuditLog::new(f.store.clone());
    let (a, b) = (key(), key());
    let none = bindings
        .bind_key(
            &audit,
            &a,
            &tokens("alice", TokenSource::DeviceFlow, None),
            &origin("x:1"),
        )
        .await
        .unwrap();
    assert_eq!(none, None);
    assert!(
        f.store
            .key_binding(&key_fingerprint(&a))
            .await
            .unwrap()
            .is_none()
    );
    let some = bindings
        .bind_key(
            &audit,
            &b,
            &tokens("alice", TokenSource::Pasted, None),
            &origin("x:1"),
        )
        .await
        .unwrap();
    assert!(some.is_some());
    let stored = f
        .store
        .key_binding(&key_fingerprint(&b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.bound_by.as_deref(), Some("token"));
}

/// H2: the attacker's key bound to the victim is shown at the victim's
/// next login by another route, once, and never at the attacker's logins.
#[tokio::test]
async fn the_victims_next_login_is_told_of_a_key_bound_to_them() {
    let f = fixture("").await;
    let bindings = KeyBindings::open(f.store.clone(), &f.config).await.unwrap();
    let audit = AuditLog::new(f.store.clone());
    let (victims, attackers) = (key(), key());
    bindings
        .bind_key(
            &audit,
            &victims,
            &tokens("bob", TokenSource::DeviceFlow, None),
            &origin("10.0.0.2:1"),
        )
        .await
        .unwrap();
    // Bob is told about his own first binding at his next login elsewhere:
    // drain that first.
    assert_eq!(
        bindings
            .announce_new_bindings("bob", None)
            .await
            .unwrap()
            .len(),
        1
    );
    bindings
        .bind_key(
            &audit,
            &attackers,
            &tokens("bob", TokenSource::DeviceFlow, None),
            &origin("203.0.113.9:5555"),
        )
        .await
        .unwrap();
    // The attacker logs in with their key: nothing is consumed.
    assert!(
        bindings
            .announce_new_bindings("bob", Some(&attackers))
            .await
            .unwrap()
            .is_empty()
    );
    let notices = bindings
        .announce_new_bindings("bob", Some(&victims))
        .await
        .unwrap();
    assert_eq!(notices.len(), 1);
    let text = notices[0].message("ssh -p 2222 portcullis@gw");
    assert!(
        text.starts_with(&format!(
            "A new key {} was bound to you from 203.0.113.9:5555 at ",
            key_fingerprint(&attackers)
        )),
        "{text}"
    );
    assert!(
        text.contains(
            " UTC (browser login). Not you? Run: ssh -p 2222 portcullis@gw keys revoke SHA256:"
        ),
        "{text}"
    );
    assert!(
        bindings
            .announce_new_bindings("bob", Some(&victims))
            .await
            .unwrap()
            .is_empty(),
        "told once"
    );
    assert!(
        bindings
            .announce_new_bindings("alice", None)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_principal_lists_and_revokes_only_their_own_keys() {
    let f = fixture("").await;
    let bindings = KeyBindings::open(f.store.clone(), &f.config).await.unwrap();
    let audit = AuditLog::new(f.store.clone());
    let (alices, bobs) = (key(), key());
    for (k, who) in [(&alices, "alice"), (&bobs, "bob")] {
        bindings
            .bind_key(
                &audit,
                k,
                &tokens(who, TokenSource::Pasted, Some("rt")),
                &origin("x:1"),
            )
            .await
            .unwrap();
    }
    let own = bindings.own_bindings("alice", false).await.unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].fingerprint, key_fingerprint(&alices));
    assert!(!serde_json::to_string(&own).unwrap().contains("pcv1:"));
    let err = bindings
        .revoke_own(&audit, "alice", &key_fingerprint(&bobs), "x:2")
        .await
        .unwrap_err();
    assert!(matches!(err, BindingError::NotFound(_)), "{err}");
    assert!(
        f.store
            .key_binding(&key_fingerprint(&bobs))
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none()
    );
    bindings
        .revoke_own(&audit, "alice", &key_fingerprint(&alices), "x:2")
        .await
        .unwrap();
    let b = f
        .store
        .key_binding(&key_fingerprint(&alices))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        b.revoked_reason.as_deref(),
        Some("revoked by its principal")
    );
    assert!(b.refresh_token.is_none());
    let events = f.store.audit_events(None).await.unwrap();
    assert!(events.iter().any(|e| e.kind == "key_binding"
        && e.detail.contains("revoked by its principal")
        && e.client_addr.as_deref() == Some("x:2")));
    assert!(
        bindings
            .own_bindings("alice", false)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(bindings.own_bindings("alice", true).await.unwrap().len(), 1);
}

/// M5: tokens an older version stored in clear text are sealed at start.
#[tokio::test]
async fn clear_text_tokens_of_an_older_version_are_sealed_at_start() {
    let f = fixture("").await;
    let legacy = KeyBindings::new(f.store.clone(), std::time::Duration::from_secs(3600));
    let k = key();
    legacy
        .bind(
            &k,
            &tokens("alice", TokenSource::Pasted, Some("rt-legacy-clear")),
        )
        .await
        .unwrap();
    let before = f
        .store
        .key_binding(&key_fingerprint(&k))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before.refresh_token.unwrap().expose(), "rt-legacy-clear");
    let _open = KeyBindings::open(f.store.clone(), &f.config).await.unwrap();
    let after = f
        .store
        .key_binding(&key_fingerprint(&k))
        .await
        .unwrap()
        .unwrap();
    let sealed = after.refresh_token.unwrap();
    assert!(sealed.expose().starts_with("pcv1:"));
    let key =
        RefreshTokenKey::load_or_create(&f.dir.path().join("refresh-token.key"), false).unwrap();
    let opened = key
        .open(
            sealed.expose(),
            &SealedFor {
                fingerprint: &after.fingerprint,
                principal: "alice",
                issuer: "https://idp.test",
            },
        )
        .unwrap();
    assert_eq!(opened.expose(), "rt-legacy-clear");
}

/// M5: a database writer who moves a sealed token onto their own key's
/// row, or writes a clear-text one, gets no refresh: the binding ends.
#[tokio::test]
async fn a_moved_or_unsealed_refresh_token_is_never_used() {
    let f = fixture("").await;
    let bindings = KeyBindings::open(f.store.clone(), &f.config).await.unwrap();
    let issuers = Issuers::from_config(&f.config).unwrap();
    let audit = AuditLog::new(f.store.clone());
    let (admins, attackers) = (key(), key());
    for (k, who) in [(&admins, "admin"), (&attackers, "mallory")] {
        bindings
            .bind_key(
                &audit,
                k,
                &tokens(who, TokenSource::Pasted, Some("rt")),
                &origin("x:1"),
            )
            .await
            .unwrap();
    }
    let admin_sealed = f
        .store
        .key_binding(&key_fingerprint(&admins))
        .await
        .unwrap()
        .unwrap()
        .refresh_token
        .unwrap();
    for stolen in [admin_sealed.expose(), "rt-clear-text-written-by-hand"] {
        sqlx::query(
            "UPDATE key_bindings SET refresh_token = $1, principal = 'admin', \
             id_token_expires_at = 1, revoked_at = NULL, revoked_reason = NULL \
             WHERE fingerprint = $2",
        )
        .bind(stolen)
        .bind(key_fingerprint(&attackers))
        .execute(&f.store.pool)
        .await
        .unwrap();
        match bindings.check(&issuers, &attackers).await {
            BindingCheck::Ended(e) => assert!(
                e.to_string().contains("seal") || e.to_string().contains("open"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
    }
}

/// L3: a key in `certificates.revoked_keys` is neither accepted nor bound.
#[tokio::test]
async fn a_revoked_key_is_neither_accepted_nor_bound() {
    let f = fixture("").await;
    let k = key();
    let list = f.dir.path().join("revoked");
    std::fs::write(&list, format!("{}\n", k.to_openssh().unwrap())).unwrap();
    let legacy = KeyBindings::new(f.store.clone(), std::time::Duration::from_secs(3600));
    legacy
        .bind(&k, &tokens("alice", TokenSource::Pasted, None))
        .await
        .unwrap();
    let bindings = KeyBindings::open(f.store.clone(), &f.config)
        .await
        .unwrap()
        .with_revoked_keys(crate::identity::RevokedKeys::at(&list));
    let issuers = Issuers::from_config(&f.config).unwrap();
    match bindings.check(&issuers, &k).await {
        BindingCheck::Unavailable(reason) => assert!(reason.contains("revoked"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let err = bindings
        .bind(&k, &tokens("alice", TokenSource::Pasted, None))
        .await
        .unwrap_err();
    assert!(matches!(err, BindingError::Revoked(_)), "{err}");
    assert!(matches!(
        bindings.check(&issuers, &key()).await,
        BindingCheck::Unbound(None)
    ));
}
