//! Key bindings against the real IdP over time (issue 4, items 1 and 4):
//! refresh tokens keep a binding past the ID token's `exp` until the IdP
//! refuses; a bound key works while the IdP is down; the IdP's key
//! rotation is picked up without a restart, and unknown `kid`s do not make
//! the gateway hammer the JWKS endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::gateway::{TestContainer, TestGateway, keygen, run_ssh, run_with_browser};
use common::idp::TestIdp;
use portcullis::identity::{IdentityError, OidcIssuer};
use serde_json::Value;

/// ID tokens of this file's IdP live this long.
const ID_TOKEN_TTL: u64 = 4;

fn container() -> &'static TestContainer {
    static C: OnceLock<TestContainer> = OnceLock::new();
    C.get_or_init(|| {
        std::thread::spawn(|| TestContainer::start("refresh"))
            .join()
            .unwrap()
    })
}

fn gateway_for(issuer: &str) -> TestGateway {
    TestGateway::start_with_oidc(
        &format!(
            "[oidc]\nissuer = \"{issuer}\"\nclient_id = \"portcullis\"\n\
             scopes = \"openid email groups offline_access\"\nleeway = \"0s\"\n\
             jwks_refetch_interval = \"1s\"\n"
        ),
        &format!(
            "[containers.{}]\nlabels = {{ env = \"dev\" }}\n",
            container().name
        ),
    )
}

fn key_in(dir: &Path) -> PathBuf {
    let key = dir.join("id");
    keygen(&key);
    key
}

fn audit_methods(gateway: &TestGateway) -> Vec<String> {
    gateway
        .audit_events()
        .into_iter()
        .filter(|e| e["kind"] == "authentication" && e["outcome"] == "success")
        .map(|e| {
            let d: Value = serde_json::from_str(e["detail"].as_str().unwrap()).unwrap();
            d["method"].as_str().unwrap().to_string()
        })
        .collect()
}

/// The code the device prompt in `dir` asks to type ("... confirm the
/// code ABCD-EFGH.").
fn typed_code(dir: &Path) -> String {
    let prompt = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("prompt."))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .unwrap();
    let rest = prompt.split("confirm the code ").nth(1).unwrap();
    rest.split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches('.')
        .to_string()
}

fn issuer_for(issuer: &str, refetch: &str) -> OidcIssuer {
    let text = format!(
        "[oidc]\nissuer = \"{issuer}\"\nclient_id = \"portcullis\"\njwks_refetch_interval = \"{refetch}\"\n"
    );
    let config = portcullis::config::Config::parse(&text, Path::new("t.toml")).unwrap();
    OidcIssuer::new(&config.oidc[0]).unwrap()
}

#[test]
fn a_refresh_token_keeps_the_binding_until_the_idp_refuses_it() {
    let idp = Arc::new(TestIdp::start_with_id_token_ttl(ID_TOKEN_TTL));
    let gateway = gateway_for(&idp.issuer);
    let keys = tempfile::tempdir().unwrap();
    let key = key_in(keys.path());
    let target = format!("app@{}", container().name);

    // Bind through the device flow (scope offline_access: a refresh token).
    let ask = tempfile::tempdir().unwrap();
    let mut cmd = gateway.ssh_with_key(&target, &key, "", ask.path());
    cmd.arg("echo bound");
    let browser_idp = idp.clone();
    let dir = ask.path().to_path_buf();
    let (r, _) = run_with_browser(&mut cmd, ask.path(), &idp.issuer, move |url| {
        // The user types the code the prompt shows (no one-click link).
        let code = typed_code(&dir);
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(browser_idp.complete_device_login_with_code(&url, &code, "alice"));
    });
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, gateway.log());
    let out = gateway.cli(&["keys", "list", "--json"]);
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["refreshable"], true);
    assert!(
        !gateway.log().contains("refresh_token="),
        "refresh tokens never reach the log"
    );

    // The ID token expires; the next connection refreshes at the IdP.
    std::thread::sleep(Duration::from_secs(ID_TOKEN_TTL + 2));
    let mut cmd = gateway.ssh_batch(&target, &key, None);
    cmd.arg("echo refreshed");
    let r = run_ssh(&mut cmd, b"");
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, gateway.log());
    assert_eq!(r.stdout, b"refreshed\n");
    assert!(audit_methods(&gateway).contains(&"publickey+refresh".to_string()));

    // The IdP ends alice's login: the binding ends at the next refresh.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(idp.disable_account("alice"));
    std::thread::sleep(Duration::from_secs(ID_TOKEN_TTL + 2));
    let mut cmd = gateway.ssh_batch(&target, &key, None);
    cmd.arg("echo must-not-run");
    let r = run_ssh(&mut cmd, b"");
    assert_eq!(r.code, 255, "{}", r.stderr);
    assert!(r.stdout.is_empty());
    let ended = gateway
        .audit_events()
        .into_iter()
        .any(|e| e["kind"] == "key_binding" && e["detail"].as_str().unwrap().contains("\"ended\""));
    assert!(ended, "{:?}", gateway.audit_events());
    let out = gateway.cli(&["keys", "list", "--json"]);
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(listed.is_empty(), "{listed:?}");
}

#[test]
fn a_bound_key_works_while_the_idp_is_down_and_the_device_flow_says_why_not() {
    let idp = TestIdp::start();
    let gateway = gateway_for(&idp.issuer);
    let keys = tempfile::tempdir().unwrap();
    let key = key_in(keys.path());
    let target = format!("app@{}", container().name);
    let token = idp.mint_id_token(idp.standard_claims("alice"));
    let ask = tempfile::tempdir().unwrap();
    let mut cmd = gateway.ssh_with_key(&target, &key, &token, ask.path());
    cmd.arg("true");
    assert_eq!(run_ssh(&mut cmd, b"").code, 0, "{}", gateway.log());

    drop(idp);
    let mut cmd = gateway.ssh_batch(&target, &key, None);
    cmd.arg("echo still-here");
    let r = run_ssh(&mut cmd, b"");
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, gateway.log());
    assert_eq!(r.stdout, b"still-here\n");

    let mut cmd = gateway.ssh(&target, "", ask.path());
    cmd.arg("true");
    let r = run_ssh(&mut cmd, b"");
    assert_eq!(r.code, 255);
    assert!(
        r.stderr
            .contains("Login failed: the identity provider cannot be reached; try again later."),
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn key_rotation_at_the_idp_is_picked_up_without_a_restart() {
    let idp = TestIdp::start();
    let issuer = issuer_for(&idp.issuer, "1s");
    let old = idp.mint_id_token(idp.standard_claims("alice"));
    assert_eq!(
        issuer
            .validate_id_token(&old)
            .await
            .unwrap()
            .principal
            .subject,
        "alice"
    );
    idp.rotate_keys().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A real token from the IdP, now signed with the new key.
    let fresh = idp.device_flow_id_token("alice").await;
    let header = jsonwebtoken::decode_header(&fresh).unwrap();
    assert_eq!(header.kid.as_deref(), Some(common::idp::ROTATED_KID));
    let token = issuer.validate_id_token(&fresh).await.unwrap();
    assert_eq!(token.principal.subject, "alice");
    let minted = idp.mint_with_rotated_key(idp.standard_claims("bob"));
    assert!(issuer.validate_id_token(&minted).await.is_ok());
}

#[tokio::test]
async fn unknown_kids_refetch_the_jwks_at_most_once_per_interval() {
    let idp = TestIdp::start();
    let issuer = issuer_for(&idp.issuer, "30s");
    issuer.warm().await.unwrap();
    let before = idp.jwks_requests().await;
    for i in 0..40 {
        let token = idp.mint_with_unknown_key(idp.standard_claims(&format!("u{i}")));
        let err = issuer.validate_id_token(&token).await.unwrap_err();
        assert!(matches!(err, IdentityError::UnknownKey(_)), "{err}");
        assert!(err.user_message().contains("does not publish"));
    }
    let after = idp.jwks_requests().await;
    assert!(after - before <= 1, "{before} -> {after}");
    // Known keys still validate from the cache.
    let good = idp.mint_id_token(idp.standard_claims("alice"));
    assert!(issuer.validate_id_token(&good).await.is_ok());
}

#[tokio::test]
async fn a_replayed_device_code_is_refused() {
    let idp = TestIdp::start();
    let issuer = issuer_for(&idp.issuer, "30s");
    let authorization = issuer.start_device_authorization().await.unwrap();
    assert!(authorization.verification_uri_complete.is_none());
    idp.complete_device_login_with_code(
        &authorization.verification_uri,
        &authorization.user_code,
        "alice",
    )
    .await;
    let tokens = issuer.poll_device_token(&authorization).await.unwrap();
    assert_eq!(tokens.id_token.principal.subject, "alice");
    let err = issuer.poll_device_token(&authorization).await.unwrap_err();
    assert!(
        matches!(
            err,
            IdentityError::DeviceFlow(portcullis::identity::DeviceFlowError::CodeRefused(_))
        ),
        "{err}"
    );
    assert!(
        err.user_message().contains("refused the login code"),
        "{}",
        err.user_message()
    );
}
