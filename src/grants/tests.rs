#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::path::Path;

use super::*;

struct Env {
    _dir: tempfile::TempDir,
    store: Store,
    audit: AuditLog,
    policy: PolicyEngine,
    config: GrantsConfig,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}/g.db", dir.path().display()))
        .await
        .unwrap();
    let policy =
        PolicyEngine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap();
    let config = GrantsConfig {
        reason_pattern: Some("[A-Z]+-[0-9]+".into()),
        ..Default::default()
    };
    Env {
        _dir: dir,
        audit: AuditLog::new(store.clone()),
        store,
        policy,
        config,
    }
}

fn principal(name: &str, groups: &[&str]) -> Principal {
    Principal {
        subject: name.into(),
        email: None,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        issuer: "test".into(),
    }
}

fn dev() -> BTreeMap<String, String> {
    BTreeMap::from([("env".to_string(), "dev".to_string())])
}

#[tokio::test]
async fn request_approve_and_refusals() {
    let e = env().await;
    let wf = Workflow {
        store: &e.store,
        audit: &e.audit,
        policy: &e.policy,
        config: &e.config,
    };
    let alice = principal("alice", &["developers"]);
    let approver = principal("approver", &["approvers"]);
    let admin = principal("admin", &["admins"]);
    let a = Actor {
        principal: &alice,
        client_addr: "c",
    };
    let labels = dev();
    let spec = |reason: &'static str, secs: u64| RequestSpec {
        container: "web1",
        labels: &labels,
        login: "root",
        duration: Duration::from_secs(secs),
        reason,
        break_glass: false,
    };
    // Reason pattern, cap, and policy (prod) refusals.
    assert!(matches!(
        wf.request(&a, &spec("no ticket", 60)).await,
        Err(GrantError::Reason(_))
    ));
    assert!(matches!(
        wf.request(&a, &spec("OPS-1", 9 * 3600)).await,
        Err(GrantError::Duration(_))
    ));
    let prod = BTreeMap::from([("env".to_string(), "prod".to_string())]);
    let prod_spec = RequestSpec {
        labels: &prod,
        ..spec("OPS-1", 60)
    };
    assert!(matches!(
        wf.request(&a, &prod_spec).await,
        Err(GrantError::Denied(_))
    ));
    let r = wf.request(&a, &spec("OPS-1 fix", 60)).await.unwrap();
    assert_eq!(r.status, "pending");
    // Nobody approves their own request, admins included.
    assert!(matches!(
        wf.approve(&a, &r, &labels, None).await,
        Err(GrantError::Denied(m)) if m.contains("your own")
    ));
    let own_admin = Actor {
        principal: &admin,
        client_addr: "c",
    };
    let admin_req = wf.request(&own_admin, &spec("OPS-2", 60)).await.unwrap();
    assert!(matches!(
        wf.approve(&own_admin, &admin_req, &labels, None).await,
        Err(GrantError::Denied(_))
    ));
    let b = Actor {
        principal: &approver,
        client_addr: "c",
    };
    let g = wf.approve(&b, &r, &labels, Some("ok")).await.unwrap();
    assert!(g.active_at(now_ms()));
    assert!(matches!(
        wf.approve(&b, &g, &labels, None).await,
        Err(GrantError::State(_))
    ));
    // The grant holder may give it up; then it is no longer active.
    wf.revoke(&a, &g, &labels, "done").await.unwrap();
    let g = wf.get(&g.id).await.unwrap();
    assert!(!g.active_at(now_ms()));
    let kinds: Vec<String> = e
        .store
        .audit_events(None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| format!("{}:{}", r.kind, r.outcome))
        .collect();
    assert!(kinds.contains(&"grant:allow".to_string()), "{kinds:?}");
    assert!(
        kinds.contains(&"access_request:deny".to_string()),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn watch_warns_then_ends_and_expiry_is_audited_once() {
    let e = env().await;
    let wf = Workflow {
        store: &e.store,
        audit: &e.audit,
        policy: &e.policy,
        config: &e.config,
    };
    let alice = principal("alice", &["developers"]);
    let approver = principal("approver", &["approvers"]);
    let labels = dev();
    let a = Actor {
        principal: &alice,
        client_addr: "c",
    };
    let r = wf
        .request(
            &a,
            &RequestSpec {
                container: "web1",
                labels: &labels,
                login: "root",
                duration: Duration::from_secs(2),
                reason: "OPS-3",
                break_glass: false,
            },
        )
        .await
        .unwrap();
    let b = Actor {
        principal: &approver,
        client_addr: "c",
    };
    let g = wf.approve(&b, &r, &labels, None).await.unwrap();
    let expires_at = g.expires_at.unwrap();
    let mut watch = GrantWatch::new(
        e.store.clone(),
        &g.id,
        expires_at,
        &[Duration::from_secs(1), Duration::from_secs(60)],
    );
    assert_eq!(
        watch.next().await,
        GrantEvent::Warning {
            remaining: Duration::from_secs(1)
        }
    );
    assert!(now_ms() >= expires_at - 1000);
    let ended = watch.next().await;
    assert!(now_ms() >= expires_at);
    assert!(now_ms() < expires_at + 100);
    assert!(matches!(ended, GrantEvent::Ended { reason } if reason.contains("expired")));
    assert_eq!(
        audit_expired(&e.store, &e.audit, &e.config).await.unwrap(),
        1
    );
    assert_eq!(
        audit_expired(&e.store, &e.audit, &e.config).await.unwrap(),
        0
    );
}

#[tokio::test]
async fn a_database_that_is_down_refuses_every_step() {
    let e = env().await;
    let wf = Workflow {
        store: &e.store,
        audit: &e.audit,
        policy: &e.policy,
        config: &e.config,
    };
    let alice = principal("alice", &["developers"]);
    let a = Actor {
        principal: &alice,
        client_addr: "c",
    };
    let labels = dev();
    e.store.close().await;
    let r = wf
        .request(
            &a,
            &RequestSpec {
                container: "web1",
                labels: &labels,
                login: "root",
                duration: Duration::from_secs(60),
                reason: "OPS-4",
                break_glass: false,
            },
        )
        .await;
    assert!(matches!(r, Err(GrantError::Audit(_))), "{r:?}");
    assert!(matches!(wf.get("x").await, Err(GrantError::Store(_))));
    assert!(audit_expired(&e.store, &e.audit, &e.config).await.is_err());
}
