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
    let staging = BTreeMap::from([("env".to_string(), "staging".to_string())]);
    let staging_spec = RequestSpec {
        labels: &staging,
        ..spec("OPS-1", 60)
    };
    assert!(matches!(
        wf.request(&a, &staging_spec).await,
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
    let done = wf.approve(&b, &r, &labels, Some("ok")).await.unwrap();
    assert!(done.activated());
    let g = done.request;
    assert!(g.active_at(now_ms()));
    assert_eq!(g.decided_by.as_deref(), Some("approver"));
    assert_eq!(done.approvals.len(), 1);
    assert_eq!(done.approvals[0].approver, "approver");
    assert_eq!(done.approvals[0].comment.as_deref(), Some("ok"));
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
    let g = wf.approve(&b, &r, &labels, None).await.unwrap().request;
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

fn prod() -> BTreeMap<String, String> {
    BTreeMap::from([("env".to_string(), "prod".to_string())])
}

/// The grant-related audit events naming request `id`, as
/// `kind:outcome:action-or-approvals`, in order.
async fn events_of(store: &Store, id: &str) -> Vec<(String, serde_json::Value)> {
    store
        .audit_events(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.detail.contains(id))
        .map(|r| {
            (
                format!("{}:{}", r.kind, r.outcome),
                serde_json::from_str(&r.detail).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn prod_needs_two_distinct_approvers() {
    let e = env().await;
    let wf = Workflow {
        store: &e.store,
        audit: &e.audit,
        policy: &e.policy,
        config: &e.config,
    };
    let alice = principal("alice", &["developers"]);
    let bob = principal("bob", &["approvers"]);
    let carol = principal("carol", &["approvers"]);
    let (a, b, c) = (
        Actor {
            principal: &alice,
            client_addr: "c",
        },
        Actor {
            principal: &bob,
            client_addr: "c",
        },
        Actor {
            principal: &carol,
            client_addr: "c",
        },
    );
    let labels = prod();
    let r = wf
        .request(
            &a,
            &RequestSpec {
                container: "db1",
                labels: &labels,
                login: "root",
                duration: Duration::from_secs(600),
                reason: "OPS-7 migrate",
                break_glass: false,
            },
        )
        .await
        .unwrap();
    // Bob's approval is recorded; the request stays pending.
    let first = wf
        .approve(&b, &r, &labels, Some("looks fine"))
        .await
        .unwrap();
    assert!(!first.activated());
    assert_eq!(first.request.status, "pending");
    assert_eq!(first.request.starts_at, None);
    assert_eq!(first.request.expires_at, None);
    let approvers: Vec<&str> = first
        .approvals
        .iter()
        .map(|a| a.approver.as_str())
        .collect();
    assert_eq!(approvers, ["bob"]);
    assert!(
        e.store
            .active_grant_for("alice", "db1", "root", now_ms())
            .await
            .unwrap()
            .is_none()
    );
    // Bob again: refused, not counted.
    let again = wf.approve(&b, &first.request, &labels, None).await;
    match again {
        Err(GrantError::State(m)) => assert_eq!(
            m,
            format!(
                "you already approved request {}; each approver counts once \
                 (approvals so far: 1), another approver must approve it",
                r.id
            )
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(wf.approvals(&r.id).await.unwrap().len(), 1);
    // Carol's approval is the second: the grant starts.
    let second = wf.approve(&c, &first.request, &labels, None).await.unwrap();
    assert!(second.activated());
    assert_eq!(second.request.status, "approved");
    assert_eq!(second.request.decided_by.as_deref(), Some("carol"));
    assert!(second.request.active_at(now_ms()));
    assert_eq!(
        second.request.expires_at.unwrap() - second.request.starts_at.unwrap(),
        600_000
    );
    let approvers: Vec<&str> = second
        .approvals
        .iter()
        .map(|a| a.approver.as_str())
        .collect();
    assert_eq!(approvers, ["bob", "carol"]);
    assert_eq!(
        e.store
            .active_grant_for("alice", "db1", "root", now_ms())
            .await
            .unwrap()
            .map(|g| g.id),
        Some(r.id.clone())
    );
    // Audit: the request, bob's approval, bob's refused second approval,
    // carol's approval, then the activation naming both approvers.
    let events = events_of(&e.store, &r.id).await;
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "access_request:success",
            "access_request:allow",
            "access_request:deny",
            "access_request:allow",
            "grant:allow",
        ]
    );
    assert_eq!(events[1].1["approvals"], 1);
    assert_eq!(events[1].1["comment"], "looks fine");
    assert_eq!(
        events[1].1["policies"],
        serde_json::json!(["approvers-approve-prod"])
    );
    assert_eq!(events[2].1["action"], "approve");
    assert_eq!(events[3].1["approvals"], 2);
    assert_eq!(
        events[4].1["approvers"],
        serde_json::json!(["bob", "carol"])
    );
    assert_eq!(
        events[4].1["policies"],
        serde_json::json!(["one-approval-activates"])
    );
}

#[tokio::test]
async fn a_denial_after_one_approval_still_denies() {
    let e = env().await;
    let wf = Workflow {
        store: &e.store,
        audit: &e.audit,
        policy: &e.policy,
        config: &e.config,
    };
    let alice = principal("alice", &["developers"]);
    let bob = principal("bob", &["approvers"]);
    let carol = principal("carol", &["approvers"]);
    let a = Actor {
        principal: &alice,
        client_addr: "c",
    };
    let b = Actor {
        principal: &bob,
        client_addr: "c",
    };
    let c = Actor {
        principal: &carol,
        client_addr: "c",
    };
    let labels = prod();
    let r = wf
        .request(
            &a,
            &RequestSpec {
                container: "db1",
                labels: &labels,
                login: "root",
                duration: Duration::from_secs(600),
                reason: "OPS-8",
                break_glass: false,
            },
        )
        .await
        .unwrap();
    let first = wf.approve(&b, &r, &labels, None).await.unwrap();
    assert!(!first.activated());
    wf.deny(&c, &first.request, &labels, "not during the freeze")
        .await
        .unwrap();
    let denied = wf.get(&r.id).await.unwrap();
    assert_eq!(denied.status, "denied");
    assert_eq!(denied.decided_by.as_deref(), Some("carol"));
    // Nobody can approve it any more.
    match wf.approve(&c, &denied, &labels, None).await {
        Err(GrantError::State(m)) => {
            assert_eq!(m, format!("request {} is already denied", r.id))
        }
        other => panic!("{other:?}"),
    }
    assert!(
        e.store
            .active_grant_for("alice", "db1", "root", now_ms())
            .await
            .unwrap()
            .is_none()
    );
}
