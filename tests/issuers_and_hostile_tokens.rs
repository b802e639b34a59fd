//! Several issuers (issue 4, item 3) and the hostile tokens that fit an
//! OpenSSH prompt (item 5), through the real gateway with real IdPs: each
//! hostile token is refused with a clear message and an audit event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine;
use common::gateway::{TestGateway, run_ssh};
use common::idp::{SIGNING_KID, TestIdp, now_secs};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

fn try_token(gateway: &TestGateway, token: &str) -> common::gateway::SshResult {
    let dir = tempfile::tempdir().unwrap();
    // No such container: authentication is all that is tested here.
    let mut cmd = gateway.ssh("root@no-such-container", token, dir.path());
    cmd.arg("true");
    run_ssh(&mut cmd, b"")
}

fn successes(gateway: &TestGateway) -> Vec<String> {
    gateway
        .audit_events()
        .into_iter()
        .filter(|e| e["kind"] == "authentication" && e["outcome"] == "success")
        .map(|e| e["principal"].as_str().unwrap().to_string())
        .collect()
}

fn failure_reasons(gateway: &TestGateway) -> Vec<String> {
    gateway
        .audit_events()
        .into_iter()
        .filter(|e| e["kind"] == "authentication" && e["outcome"] == "failure")
        .map(|e| {
            let d: Value = serde_json::from_str(e["detail"].as_str().unwrap()).unwrap();
            d["reason"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn two_issuers_each_with_a_prefix_so_subjects_never_collide() {
    let corp = TestIdp::start();
    let ci = TestIdp::start();
    let gateway = TestGateway::start_with_oidc(
        &format!(
            "[[oidc]]\nissuer = \"{}\"\nclient_id = \"portcullis\"\nprincipal_prefix = \"corp:\"\n\
             [[oidc]]\nissuer = \"{}\"\nclient_id = \"portcullis\"\nprincipal_prefix = \"ci:\"\n",
            corp.issuer, ci.issuer
        ),
        "",
    );
    for (idp, expected) in [(&corp, "corp:admin"), (&ci, "ci:admin")] {
        let token = idp.mint_id_token(idp.standard_claims("admin"));
        let r = try_token(&gateway, &token);
        assert!(
            r.stderr.contains("no-such-container"),
            "authenticated, then the target is refused: {}\n{}",
            r.stderr,
            gateway.log()
        );
        assert!(successes(&gateway).contains(&expected.to_string()));
    }
    // A token naming an issuer that is not configured is refused before
    // any key is fetched.
    let mut claims = corp.standard_claims("bob");
    claims["iss"] = json!("https://unknown.example.com");
    let r = try_token(&gateway, &corp.mint_id_token(claims));
    assert_eq!(r.code, 255);
    assert!(
        r.stderr.contains("issued by another identity provider"),
        "{}",
        r.stderr
    );
}

#[test]
fn hostile_tokens_are_refused_with_a_message_and_an_audit_event() {
    let idp = TestIdp::start();
    let gateway = TestGateway::start(&idp.issuer, "");
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = idp.standard_claims("admin");
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some(SIGNING_KID.into());
    let public_pem = std::fs::read(common::idp::idp_dir().join("public-key.pem")).unwrap();
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &claims,
        &EncodingKey::from_secret(&public_pem).unwrap(),
    )
    .unwrap();
    let mut azp = claims.clone();
    azp["azp"] = json!("another-client");
    let mut nbf = claims.clone();
    nbf["nbf"] = json!(now_secs() + 600);
    let mut no_aud = claims.clone();
    no_aud.as_object_mut().unwrap().remove("aud");
    // Issue 14 (RFC 8725 §3.11, OpenID Connect Core §3.1.3.7): an access
    // token typed `at+jwt`, Keycloak's `typ: Bearer`, `iat` in the future,
    // a subject that paints the approver's terminal.
    let pem = std::fs::read(common::idp::idp_dir().join("signing-key.pem")).unwrap();
    let mut at_header = Header::new(Algorithm::RS256);
    at_header.kid = Some(SIGNING_KID.into());
    at_header.typ = Some("at+jwt".into());
    let at_jwt = jsonwebtoken::encode(
        &at_header,
        &claims,
        &EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap();
    let mut bearer = claims.clone();
    bearer["typ"] = json!("Bearer");
    let mut future_iat = claims.clone();
    future_iat["iat"] = json!(now_secs() + 3600);
    let mut ansi_sub = claims.clone();
    ansi_sub["sub"] = json!("mallory\u{1b}[2J\u{1b}[Hadmin");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg":"none","kid":SIGNING_KID})),
                b64(&claims)
            ),
            "the token is not valid",
        ),
        ("HS256 with the public key", hs256, "the token is not valid"),
        (
            "another client",
            idp.mint_id_token(azp),
            "issued to another application",
        ),
        ("nbf in the future", idp.mint_id_token(nbf), "not valid yet"),
        (
            "missing aud",
            idp.mint_id_token(no_aud),
            "not issued for this gateway",
        ),
        ("an access token (at+jwt)", at_jwt, "not an ID token"),
        (
            "Keycloak typ Bearer",
            idp.mint_id_token(bearer),
            "not an ID token",
        ),
        (
            "iat in the future",
            idp.mint_id_token(future_iat),
            "not valid yet",
        ),
        (
            "escape sequences in sub",
            idp.mint_id_token(ansi_sub),
            "the token is not valid",
        ),
        (
            "payload not JSON",
            format!(
                "{}.bm90IGpzb24.c2ln",
                b64(&json!({"alg":"RS256","kid":SIGNING_KID}))
            ),
            "the token is not valid",
        ),
    ];
    for (name, token, message) in &cases {
        let before = failure_reasons(&gateway).len();
        let r = try_token(&gateway, token);
        assert_eq!(r.code, 255, "{name}: {}", r.stderr);
        assert!(r.stderr.contains(message), "{name}: {}", r.stderr);
        assert_eq!(
            failure_reasons(&gateway).len(),
            before + 1,
            "{name}: audited"
        );
    }
    assert!(successes(&gateway).is_empty());
    assert!(!gateway.log().contains("panicked"));
}
