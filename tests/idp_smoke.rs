//! Smoke test for the real test IdP (`tests/idp`) and its Rust harness.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::idp::{SIGNING_KID, TestIdp, UNKNOWN_KID};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use serde_json::{Value, json};

/// Verifies `token` against `jwks` for audience `portcullis` and `issuer`.
fn verify(token: &str, jwks: &JwkSet, issuer: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).expect("JWT header");
    assert_eq!(header.alg, Algorithm::RS256);
    let kid = header.kid.expect("kid in header");
    let jwk = jwks
        .find(&kid)
        .unwrap_or_else(|| panic!("kid {kid} not in JWKS"));
    let key = DecodingKey::from_jwk(jwk).expect("decoding key from JWK");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&["portcullis"]);
    validation.set_issuer(&[issuer]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("token verifies")
        .claims
}

#[tokio::test]
async fn device_flow_and_minted_tokens_verify_against_idp_jwks() {
    let idp = TestIdp::start();
    assert!(
        idp.issuer.starts_with("http://127.0.0.1:"),
        "{}",
        idp.issuer
    );

    let id_token = idp.device_flow_id_token("alice").await;
    let jwks = idp.jwks().await;
    assert!(
        jwks.find(SIGNING_KID).is_some(),
        "IdP JWKS lacks {SIGNING_KID}"
    );

    let claims = verify(&id_token, &jwks, &idp.issuer);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["groups"], json!(["developers"]));
    assert_eq!(claims["aud"], "portcullis");

    // A bare user code typed into the form works too, and sub is per login.
    let da = idp
        .device_authorization("portcullis", "openid email groups")
        .await;
    idp.complete_device_login_with_code(&da.verification_uri, &da.user_code, "bob")
        .await;
    let (status, body) = idp
        .device_token_request("portcullis", &da.device_code)
        .await;
    assert_eq!(status, 200, "{body}");
    let bob = verify(body["id_token"].as_str().unwrap(), &jwks, &idp.issuer);
    assert_eq!(bob["sub"], "bob");
    assert_eq!(bob["groups"], json!([]));

    // Tokens minted with the IdP's key verify against its JWKS.
    let standard = idp.standard_claims("admin");
    assert_eq!(standard["groups"], json!(["admins"]));
    let minted = idp.mint_id_token(standard);
    let claims = verify(&minted, &jwks, &idp.issuer);
    assert_eq!(claims["sub"], "admin");
    assert_eq!(claims["email"], "admin@example.com");

    // The unknown key's kid is not published.
    let rogue = idp.mint_with_unknown_key(idp.standard_claims("alice"));
    let kid = jsonwebtoken::decode_header(&rogue)
        .expect("header")
        .kid
        .expect("kid");
    assert_eq!(kid, UNKNOWN_KID);
    assert!(jwks.find(&kid).is_none(), "unknown kid must not be in JWKS");
}

#[tokio::test]
async fn id_token_ttl_is_settable() {
    let idp = TestIdp::start_with_id_token_ttl(5);
    let token = idp.device_flow_id_token("approver").await;
    let claims = verify(&token, &idp.jwks().await, &idp.issuer);
    assert_eq!(claims["groups"], json!(["approvers"]));
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(lifetime, 5);
}
