use super::*;

fn shipped() -> PolicyEngine {
    PolicyEngine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap()
}

fn ask(groups: &[&str], env: &str, login: &str, action: Action) -> Decision {
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    let labels = BTreeMap::from([("env".to_string(), env.to_string())]);
    shipped()
        .decide(&AccessRequest {
            principal: "alice",
            groups: &groups,
            container: "web1",
            labels: &labels,
            login,
            action,
            command: None,
            grant: None,
        })
        .unwrap()
}

#[test]
fn developers_get_non_root_shells_on_dev() {
    let d = ask(&["developers"], "dev", "app", Action::Shell);
    assert!(d.allowed);
    assert_eq!(d.policies, ["developers-dev-non-root"]);
    assert!(!ask(&["developers"], "dev", "root", Action::Shell).allowed);
    assert!(!ask(&["developers"], "prod", "app", Action::Shell).allowed);
    assert!(ask(&["developers"], "dev", "app", Action::Exec).allowed);
}

#[test]
fn admins_may_do_anything() {
    let d = ask(&["admins"], "prod", "root", Action::Shell);
    assert!(d.allowed);
    assert_eq!(d.policies, ["admins-anything"]);
}

#[test]
fn nobody_else_gets_in() {
    let d = ask(&[], "dev", "app", Action::Shell);
    assert!(!d.allowed);
    assert!(d.policies.is_empty());
    assert!(!ask(&["approvers"], "dev", "app", Action::Shell).allowed);
}

#[test]
fn containers_without_labels_are_evaluated_without_errors() {
    let labels = BTreeMap::new();
    let d = shipped()
        .decide(&AccessRequest {
            principal: "alice",
            groups: &["developers".to_string()],
            container: "web1",
            labels: &labels,
            login: "app",
            action: Action::Shell,
            command: None,
            grant: None,
        })
        .unwrap();
    assert!(!d.allowed);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
}

#[test]
fn an_active_grant_permits_its_login_and_a_forbid_still_wins() {
    let labels = BTreeMap::from([("env".to_string(), "dev".to_string())]);
    let groups = ["developers".to_string()];
    let ask = |engine: &PolicyEngine, grant: Option<GrantContext<'_>>| {
        engine
            .decide(&AccessRequest {
                principal: "alice",
                groups: &groups,
                container: "web1",
                labels: &labels,
                login: "root",
                action: Action::Shell,
                command: None,
                grant,
            })
            .unwrap()
    };
    let grant = GrantContext {
        id: "g1",
        approver: "bob",
        expires_at: 2_000_000_000,
    };
    assert!(!ask(&shipped(), None).allowed);
    let d = ask(&shipped(), Some(grant));
    assert!(d.allowed);
    assert_eq!(d.policies, ["grant-holders"]);
    // A site forbid beats the grant.
    let dir = tempfile::tempdir().unwrap();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for f in [SCHEMA_FILE, "access.cedar", "grants.cedar"] {
        std::fs::copy(policies.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(
        dir.path().join("zz-forbid.cedar"),
        "@id(\"no-root-from-bob\") forbid (principal, action, resource) \
         when { context has grant && context.grant.approver == \"bob\" };",
    )
    .unwrap();
    let engine = PolicyEngine::load(dir.path()).unwrap();
    let d = ask(&engine, Some(grant));
    assert!(!d.allowed);
    assert_eq!(d.policies, ["no-root-from-bob"]);
}

#[test]
fn workflow_defaults() {
    let dev = BTreeMap::from([("env".to_string(), "dev".to_string())]);
    let prod = BTreeMap::from([("env".to_string(), "prod".to_string())]);
    let ask = |who: &str, groups: &[&str], action, requester: &str, labels, secs| {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        shipped()
            .decide_workflow(&WorkflowRequest {
                principal: who,
                groups: &groups,
                action,
                container: "web1",
                labels,
                requester,
                login: "root",
                duration_seconds: secs,
                reason: "OPS-1",
                break_glass: false,
                approvals: 0,
            })
            .unwrap()
    };
    let r = ask(
        "alice",
        &["developers"],
        Action::Request,
        "alice",
        &dev,
        3600,
    );
    assert!(r.allowed);
    assert_eq!(r.policies, ["developers-request-dev"]);
    let staging = BTreeMap::from([("env".to_string(), "staging".to_string())]);
    let d = ask(
        "alice",
        &["developers"],
        Action::Request,
        "alice",
        &staging,
        60,
    );
    assert!(!d.allowed);
    assert!(d.policies.is_empty(), "{d:?}");
    // Prod: requests up to 4 h.
    let d = ask(
        "alice",
        &["developers"],
        Action::Request,
        "alice",
        &prod,
        4 * 3600,
    );
    assert!(d.allowed);
    assert_eq!(d.policies, ["developers-request-prod"]);
    let d = ask(
        "alice",
        &["developers"],
        Action::Request,
        "alice",
        &prod,
        4 * 3600 + 1,
    );
    assert!(!d.allowed);
    assert!(ask("bob", &["approvers"], Action::Approve, "alice", &dev, 3600).allowed);
    assert!(
        !ask(
            "bob",
            &["approvers"],
            Action::Approve,
            "alice",
            &dev,
            9 * 3600
        )
        .allowed
    );
    let d = ask("bob", &["approvers"], Action::Approve, "alice", &prod, 60);
    assert!(d.allowed);
    assert_eq!(d.policies, ["approvers-approve-prod"]);
    assert!(
        !ask(
            "bob",
            &["approvers"],
            Action::Approve,
            "alice",
            &staging,
            60
        )
        .allowed
    );
    let own = ask("root", &["admins"], Action::Approve, "root", &prod, 60);
    assert!(!own.allowed);
    assert_eq!(own.policies, ["no-self-approval"]);
    assert!(ask("root", &["admins"], Action::Approve, "alice", &prod, 60).allowed);
    assert!(ask("alice", &[], Action::Revoke, "alice", &prod, 60).allowed);
    assert!(!ask("eve", &[], Action::Revoke, "alice", &dev, 60).allowed);
}

#[test]
fn bad_policy_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let shipped_schema = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("policies")
        .join(SCHEMA_FILE);
    std::fs::copy(shipped_schema, dir.path().join(SCHEMA_FILE)).unwrap();
    std::fs::write(dir.path().join("bad.cedar"), "permit(principal, action, ").unwrap();
    let err = PolicyEngine::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("bad.cedar"), "{err}");
    std::fs::write(
        dir.path().join("bad.cedar"),
        "permit(principal, action, resource) when { resource.colour == \"red\" };",
    )
    .unwrap();
    let err = PolicyEngine::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("schema"), "{err}");
}

fn ask_with(
    groups: &[&str],
    login: &str,
    action: Action,
    extra: &[(&str, ContextValue)],
) -> Decision {
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    let labels = BTreeMap::from([("env".to_string(), "dev".to_string())]);
    shipped()
        .decide_with(
            &AccessRequest {
                principal: "alice",
                groups: &groups,
                container: "web1",
                labels: &labels,
                login,
                action,
                command: None,
                grant: None,
            },
            extra,
        )
        .unwrap()
}

#[test]
fn developers_may_sftp_on_dev_but_not_forward() {
    for access in ["read", "write"] {
        let extra = [("access", ContextValue::Str(access.into()))];
        let d = ask_with(&["developers"], "app", Action::Sftp, &extra);
        assert!(d.allowed, "{access}: {d:?}");
        assert_eq!(d.policies, ["developers-dev-sftp"]);
        assert!(!ask_with(&["developers"], "root", Action::Sftp, &extra).allowed);
        assert!(!ask_with(&[], "app", Action::Sftp, &extra).allowed);
    }
    let fwd = [
        ("host", ContextValue::Ip("127.0.0.1".parse().unwrap())),
        ("port", ContextValue::Long(5432)),
    ];
    let d = ask_with(&["developers"], "app", Action::PortForward, &fwd);
    assert!(!d.allowed && d.errors.is_empty(), "{d:?}");
    assert!(ask_with(&["admins"], "app", Action::PortForward, &fwd).allowed);
    let d = ask_with(&["developers"], "app", Action::AgentForward, &[]);
    assert!(!d.allowed && d.errors.is_empty(), "{d:?}");
}

#[test]
fn sftp_without_its_context_is_a_deny() {
    let r = shipped().decide_with(
        &AccessRequest {
            principal: "alice",
            groups: &["admins".to_string()],
            container: "web1",
            labels: &BTreeMap::new(),
            login: "app",
            action: Action::Sftp,
            command: None,
            grant: None,
        },
        &[],
    );
    assert!(r.is_err() || !r.unwrap().allowed);
}

/// `activate` on the shipped policies for a request by alice on a container
/// labelled env=`env`, asked for `approver` with `approvals` so far.
fn activate(env: &str, approver: &str, groups: &[&str], approvals: i64) -> Decision {
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    let labels = BTreeMap::from([("env".to_string(), env.to_string())]);
    shipped()
        .decide_workflow(&WorkflowRequest {
            principal: approver,
            groups: &groups,
            action: Action::Activate,
            container: "db1",
            labels: &labels,
            requester: "alice",
            login: "root",
            duration_seconds: 600,
            reason: "OPS-1",
            break_glass: false,
            approvals,
        })
        .unwrap()
}

#[test]
fn one_approval_activates_on_dev_and_prod_needs_two() {
    let d = activate("dev", "bob", &["approvers"], 1);
    assert!(d.allowed);
    assert_eq!(d.policies, ["one-approval-activates"]);
    assert!(d.errors.is_empty(), "{d:?}");
    // No approval yet: nothing permits it (default deny).
    let d = activate("dev", "bob", &["approvers"], 0);
    assert!(!d.allowed);
    assert!(d.policies.is_empty(), "{d:?}");
    // Prod: one approval is not enough, admins included; two are.
    let d = activate("prod", "bob", &["approvers"], 1);
    assert!(!d.allowed);
    assert_eq!(d.policies, ["prod-two-approvals"]);
    let d = activate("prod", "root", &["admins"], 1);
    assert!(!d.allowed);
    assert_eq!(d.policies, ["prod-two-approvals"]);
    let d = activate("prod", "carol", &["approvers"], 2);
    assert!(d.allowed);
    assert_eq!(d.policies, ["one-approval-activates"]);
    // A container without labels needs one approval, and evaluates cleanly.
    let d = activate("", "bob", &[], 1);
    assert!(d.allowed);
    assert!(d.errors.is_empty(), "{d:?}");
}

#[test]
fn approve_sees_the_approvals_so_far() {
    // A site policy: the second approval of a prod request must come from
    // the security group.
    let dir = tempfile::tempdir().unwrap();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for f in [SCHEMA_FILE, "access.cedar", "grants.cedar"] {
        std::fs::copy(policies.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(
        dir.path().join("zz-second-from-security.cedar"),
        "@id(\"second-from-security\") forbid (principal, action == Action::\"approve\", \
         resource) when { context.approvals >= 1 } unless { principal in Group::\"security\" };",
    )
    .unwrap();
    let engine = PolicyEngine::load(dir.path()).unwrap();
    let prod = BTreeMap::from([("env".to_string(), "prod".to_string())]);
    let ask = |groups: &[&str], approvals: i64| {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        engine
            .decide_workflow(&WorkflowRequest {
                principal: "carol",
                groups: &groups,
                action: Action::Approve,
                container: "db1",
                labels: &prod,
                requester: "alice",
                login: "root",
                duration_seconds: 600,
                reason: "OPS-1",
                break_glass: false,
                approvals,
            })
            .unwrap()
    };
    assert_eq!(ask(&["approvers"], 0).policies, ["approvers-approve-prod"]);
    let d = ask(&["approvers"], 1);
    assert!(!d.allowed);
    assert_eq!(d.policies, ["second-from-security"]);
    let d = ask(&["approvers", "security"], 1);
    assert!(d.allowed);
    assert_eq!(d.policies, ["approvers-approve-prod"]);
}

#[test]
fn owner_and_purpose_are_optional_container_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let shipped_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    std::fs::copy(shipped_dir.join(SCHEMA_FILE), dir.path().join(SCHEMA_FILE)).unwrap();
    std::fs::write(
        dir.path().join("owners.cedar"),
        "@id(\"owner-alice-caches\")\n\
         permit (principal, action == Action::\"shell\", resource)\n\
         when { resource has owner && resource.owner == \"alice\" &&\n\
                resource has purpose && resource.purpose like \"*cache*\" };\n",
    )
    .unwrap();
    let engine = PolicyEngine::load(dir.path()).unwrap();
    let labels = BTreeMap::new();
    let request = AccessRequest {
        principal: "alice",
        groups: &[],
        container: "web1",
        labels: &labels,
        login: "app",
        action: Action::Shell,
        command: None,
        grant: None,
    };
    let with = |owner, purpose| {
        engine
            .decide_with_container(&request, ContainerAttributes { owner, purpose }, &[])
            .unwrap()
    };
    let d = with(Some("alice"), Some("build cache"));
    assert_eq!(
        (d.allowed, d.policies.clone()),
        (true, vec!["owner-alice-caches".to_string()])
    );
    assert!(!with(Some("bob"), Some("build cache")).allowed);
    // Absent attributes: no match and no evaluation error.
    let d = with(None, None);
    assert_eq!((d.allowed, d.errors.len()), (false, 0));
    let d = engine.decide(&request).unwrap();
    assert_eq!((d.allowed, d.errors.len()), (false, 0));
    let mut c = crate::inventory::Container::new(
        "web1",
        crate::inventory::ContainerState::NotRunning("STOPPED".into()),
        String::new(),
        crate::inventory::Backend::Lxc,
    );
    c.owner = Some("alice".into());
    c.purpose = Some("cache".into());
    assert!(
        engine
            .decide_with_container(&request, ContainerAttributes::from(&c), &[])
            .unwrap()
            .allowed
    );
}

/// M1: the `User` entity carries its issuer, so a policy can tell sources
/// apart; callers that do not pass one get no attribute (and `has` is
/// false: a permit that needs it does not apply).
#[test]
fn the_principal_carries_its_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    std::fs::copy(shipped.join(SCHEMA_FILE), dir.path().join(SCHEMA_FILE)).unwrap();
    std::fs::write(
        dir.path().join("corp.cedar"),
        "@id(\"corp-admins\")\npermit (principal in Group::\"admins\", action, resource)\n\
         when { principal has issuer && principal.issuer == \"https://corp.example.com\" };\n",
    )
    .unwrap();
    let engine = PolicyEngine::load(dir.path()).unwrap();
    let labels = BTreeMap::new();
    let groups = vec!["admins".to_string()];
    let request = AccessRequest {
        principal: "admin",
        groups: &groups,
        container: "web1",
        labels: &labels,
        login: "root",
        action: Action::Shell,
        command: None,
        grant: None,
    };
    assert!(
        engine
            .decide_as("https://corp.example.com", &request, &[])
            .unwrap()
            .allowed
    );
    let owned = ContainerAttributes {
        owner: Some("alice"),
        purpose: None,
    };
    assert!(
        engine
            .decide_as_with_container("https://corp.example.com", &request, owned, &[])
            .unwrap()
            .allowed
    );
    let other = engine
        .decide_as("ssh-ca:SHA256:abc", &request, &[])
        .unwrap();
    assert!(!other.allowed && other.errors.is_empty(), "{other:?}");
    assert!(!engine.decide(&request).unwrap().allowed);
    assert_eq!("view".parse::<Action>().unwrap(), Action::View);
}
