//! Groups belong to their issuer (issue 14, review finding M1), end to
//! end: two real IdPs behind one gateway. The corporate IdP may assert
//! `admins` under its own name (`allowed_groups`); a second issuer (CI
//! workload tokens, where the workflow picks the claims) that asserts
//! `admins` gets `ci:admins`, which no rule names, and is refused
//! `root@container`. Certificates: `tests/certificates.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::gateway::{TestContainer, TestGateway, run_ssh};
use common::idp::TestIdp;
use serde_json::json;

#[test]
fn a_second_issuer_asserting_admins_is_refused_root() {
    let corp = TestIdp::start();
    let ci = TestIdp::start();
    let container = TestContainer::start("issuers");
    let gateway = TestGateway::start_with_oidc(
        &format!(
            "[[oidc]]\nissuer = \"{}\"\nclient_id = \"portcullis\"\nprincipal_prefix = \"corp:\"\n\
             allowed_groups = [\"admins\", \"developers\"]\n\
             [[oidc]]\nissuer = \"{}\"\nclient_id = \"portcullis\"\nprincipal_prefix = \"ci:\"\n",
            corp.issuer, ci.issuer
        ),
        &format!(
            "[containers.{}]\nlabels = {{ env = \"dev\" }}\n",
            container.name
        ),
    );
    let run = |token: &str| {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = gateway.ssh(&format!("root@{}", container.name), token, dir.path());
        cmd.arg("id -u");
        run_ssh(&mut cmd, b"")
    };
    // The corporate admin: root.
    let r = run(&corp.mint_id_token(corp.standard_claims("admin")));
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, gateway.log());
    assert_eq!(r.stdout, b"0\n");
    // The CI issuer says its workload is in `admins`: refused.
    let mut claims = ci.standard_claims("deploy-bot");
    claims["groups"] = json!(["admins"]);
    let r = run(&ci.mint_id_token(claims));
    assert_ne!(r.code, 0);
    assert!(
        r.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&r.stdout)
    );
    assert!(r.stderr.contains("Access denied"), "{}", r.stderr);
    let denied = gateway.audit_events().into_iter().any(|e| {
        e["principal"] == "ci:deploy-bot" && e["kind"] == "decision" && e["outcome"] == "deny"
    });
    assert!(denied, "the refusal is audited");
}
