//! The hostile-token suite (issue 4, item 5) at the validator: tokens
//! minted in-process with the test IdP's key (`tests/idp/signing-key.pem`,
//! its JWKS `tests/idp/jwks.json`), each refused with a named error and a
//! clear user message, never a panic. `tests/hostile_tokens.rs` sends the
//! ones that fit an OpenSSH prompt through the real gateway (audit events).

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::{IdentityError, MAX_TOKEN_BYTES, OidcIssuer};
use crate::config::Config;

const ISSUER: &str = "https://idp.test";
const KID: &str = "portcullis-test-1";
const PRIVATE_PEM: &[u8] = include_bytes!("../../tests/idp/signing-key.pem");
const PUBLIC_PEM: &[u8] = include_bytes!("../../tests/idp/public-key.pem");
const JWKS: &str = include_str!("../../tests/idp/jwks.json");

async fn issuer() -> OidcIssuer {
    let text =
        format!("[oidc]\nissuer = \"{ISSUER}\"\nclient_id = \"portcullis\"\nleeway = \"5s\"\n");
    let config = Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
    OidcIssuer::seeded(&config.oidc[0], serde_json::from_str(JWKS).unwrap()).await
}

fn now() -> u64 {
    crate::store::now_ms() as u64 / 1000
}

fn claims() -> Value {
    json!({"iss": ISSUER, "aud": "portcullis", "sub": "alice", "iat": now(), "exp": now() + 600})
}

fn sign(claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KID.into());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(PRIVATE_PEM).unwrap(),
    )
    .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Validates `token`; asserts refusal with a clear message and returns the error.
async fn refused(token: &str) -> IdentityError {
    let err = issuer().await.validate_id_token(token).await.unwrap_err();
    let message = err.user_message();
    assert!(message.starts_with("Login failed: "), "{message}");
    assert!(
        !message.contains(token),
        "the message never echoes the token"
    );
    err
}

#[tokio::test]
async fn a_well_formed_token_passes() {
    let t = issuer()
        .await
        .validate_id_token(&sign(&claims()))
        .await
        .unwrap();
    assert_eq!(t.principal.subject, "alice");
}

#[tokio::test]
async fn alg_none_is_refused() {
    let header = b64(json!({"alg": "none", "kid": KID}).to_string().as_bytes());
    let payload = b64(claims().to_string().as_bytes());
    let err = refused(&format!("{header}.{payload}.")).await;
    assert!(
        matches!(
            err,
            IdentityError::Malformed(_) | IdentityError::AlgorithmRefused(_)
        ),
        "{err}"
    );
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(KID.into());
    let token = jsonwebtoken::encode(
        &header,
        &claims(),
        &EncodingKey::from_secret(PUBLIC_PEM).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        refused(&token).await,
        IdentityError::AlgorithmRefused(_)
    ));
}

#[tokio::test]
async fn wrong_issuer_is_refused() {
    let mut c = claims();
    c["iss"] = json!("https://evil.test");
    assert!(matches!(
        refused(&sign(&c)).await,
        IdentityError::WrongIssuer
    ));
}

#[tokio::test]
async fn wrong_or_missing_audience_is_refused() {
    let mut c = claims();
    c["aud"] = json!("someone-else");
    assert!(matches!(
        refused(&sign(&c)).await,
        IdentityError::WrongAudience
    ));
    c.as_object_mut().unwrap().remove("aud");
    assert!(matches!(
        refused(&sign(&c)).await,
        IdentityError::WrongAudience
    ));
}

#[tokio::test]
async fn expired_is_refused() {
    let mut c = claims();
    c["exp"] = json!(now() - 60);
    assert!(matches!(refused(&sign(&c)).await, IdentityError::Expired));
}

#[tokio::test]
async fn nbf_in_the_future_is_refused() {
    let mut c = claims();
    c["nbf"] = json!(now() + 300);
    assert!(matches!(
        refused(&sign(&c)).await,
        IdentityError::NotYetValid
    ));
}

#[tokio::test]
async fn unknown_kid_is_refused() {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("someone-elses-key".into());
    let token = jsonwebtoken::encode(
        &header,
        &claims(),
        &EncodingKey::from_rsa_pem(PRIVATE_PEM).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        refused(&token).await,
        IdentityError::UnknownKey(_)
    ));
    header.kid = None;
    let token = jsonwebtoken::encode(
        &header,
        &claims(),
        &EncodingKey::from_rsa_pem(PRIVATE_PEM).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        refused(&token).await,
        IdentityError::UnknownKey(_)
    ));
}

#[tokio::test]
async fn a_bad_signature_is_refused() {
    let token = sign(&claims());
    let (head, sig) = token.rsplit_once('.').unwrap();
    // Another valid base64url signature of the same length.
    let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .unwrap();
    bytes[10] ^= 0x55;
    let err = refused(&format!("{head}.{}", b64(&bytes))).await;
    assert!(matches!(err, IdentityError::BadSignature), "{err}");
    // A signature made for other claims.
    let other = sign(&json!({"sub": "mallory"}));
    let other_sig = other.rsplit_once('.').unwrap().1;
    assert!(matches!(
        refused(&format!("{head}.{other_sig}")).await,
        IdentityError::BadSignature
    ));
}

#[tokio::test]
async fn truncated_and_non_base64_segments_are_refused() {
    let token = sign(&claims());
    for cut in [&token[..token.len() / 2], &token[..token.len() - 7]] {
        let err = refused(cut).await;
        assert!(
            matches!(
                err,
                IdentityError::Malformed(_) | IdentityError::BadSignature
            ),
            "{err}"
        );
    }
    let (head, _) = token.rsplit_once('.').unwrap();
    assert!(matches!(refused(head).await, IdentityError::Malformed(_)));
    let parts: Vec<&str> = token.split('.').collect();
    for bad in [
        format!("{}.{}.{}", "%%%", parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], "!!!not*base64", parts[2]),
        format!("{}.{}.{}", parts[0], parts[1], "~~~"),
        "..".to_string(),
        "a.b.c.d".to_string(),
        "\u{0}.\u{0}.\u{0}".to_string(),
    ] {
        let err = refused(&bad).await;
        assert!(
            matches!(
                err,
                IdentityError::Malformed(_) | IdentityError::BadSignature
            ),
            "{bad}: {err}"
        );
    }
}

#[tokio::test]
async fn header_or_payload_that_is_not_json_or_nests_deeply_is_refused() {
    let good = sign(&claims());
    let parts: Vec<&str> = good.split('.').collect();
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    for header in [b64(b"not json"), b64(deep.as_bytes()), b64(b"[]")] {
        let err = refused(&format!("{header}.{}.{}", parts[1], parts[2])).await;
        assert!(matches!(err, IdentityError::Malformed(_)), "{err}");
    }
    for payload in [b64(b"not json"), b64(deep.as_bytes())] {
        let err = refused(&format!("{}.{payload}.{}", parts[0], parts[2])).await;
        assert!(
            matches!(
                err,
                IdentityError::Malformed(_) | IdentityError::BadSignature
            ),
            "{err}"
        );
    }
    // Deep nesting under a valid signature: parsed, refused, no stack overflow.
    let mut c = claims();
    c["groups"] = serde_json::from_str(&format!("{}{}", "[".repeat(120), "]".repeat(120))).unwrap();
    let err = refused(&sign(&c)).await;
    assert!(matches!(err, IdentityError::Claims(_)), "{err}");
}

#[tokio::test]
async fn a_token_over_16_kib_is_refused_before_parsing() {
    let huge = format!("{}.{}.{}", "a".repeat(MAX_TOKEN_BYTES), "b", "c");
    let err = refused(&huge).await;
    assert!(
        matches!(&err, IdentityError::Malformed(m) if m.contains("16384-byte limit")),
        "{err}"
    );
    // Even garbage that is not a JWT at all.
    let err = refused(&"\u{7f}".repeat(MAX_TOKEN_BYTES + 1)).await;
    assert!(
        matches!(&err, IdentityError::Malformed(m) if m.contains("limit")),
        "{err}"
    );
}

#[tokio::test]
async fn a_token_for_another_client_is_refused() {
    let mut c = claims();
    c["azp"] = json!("another-client");
    assert!(matches!(
        refused(&sign(&c)).await,
        IdentityError::WrongAuthorizedParty(_)
    ));
    let mut c = claims();
    c["aud"] = json!(["portcullis", "another-client"]);
    assert!(matches!(
        refused(&sign(&c)).await,
        IdentityError::WrongAuthorizedParty(_)
    ));
    c["azp"] = json!("portcullis");
    assert!(issuer().await.validate_id_token(&sign(&c)).await.is_ok());
}

/// Signs `claims` with a header `typ`.
fn sign_typed(claims: &Value, typ: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KID.into());
    header.typ = Some(typ.into());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(PRIVATE_PEM).unwrap(),
    )
    .unwrap()
}

/// L2 (RFC 8725 §3.11): an access token for this client (Entra v2 for the
/// app's own API, Keycloak with an audience mapper) is not an ID token.
#[tokio::test]
async fn an_access_token_is_not_an_id_token() {
    for typ in ["at+jwt", "application/at+jwt", "AT+JWT", "logout+jwt"] {
        let err = refused(&sign_typed(&claims(), typ)).await;
        assert!(
            matches!(err, IdentityError::NotAnIdToken(_)),
            "{typ}: {err}"
        );
        assert!(err.user_message().contains("not an ID token"));
    }
    assert!(
        issuer()
            .await
            .validate_id_token(&sign_typed(&claims(), "JWT"))
            .await
            .is_ok()
    );
    // Keycloak marks its tokens with a `typ` claim.
    for typ in ["Bearer", "Refresh"] {
        let mut c = claims();
        c["typ"] = json!(typ);
        assert!(matches!(
            refused(&sign(&c)).await,
            IdentityError::NotAnIdToken(_)
        ));
    }
    let mut c = claims();
    c["typ"] = json!("ID");
    assert!(issuer().await.validate_id_token(&sign(&c)).await.is_ok());
}

/// L2 (OpenID Connect Core 1.0 §3.1.3.7): a token "issued" beyond the
/// leeway (5 s here) in the future is refused.
#[tokio::test]
async fn iat_beyond_the_leeway_in_the_future_is_refused() {
    let mut c = claims();
    c["iat"] = json!(now() + 3600);
    assert!(matches!(
        refused(&sign(&c)).await,
        IdentityError::IssuedInTheFuture
    ));
    c["iat"] = json!(now() + 2);
    assert!(issuer().await.validate_id_token(&sign(&c)).await.is_ok());
}

/// L2: Auth0's `iss` ends in `/`; it must match the discovery document's
/// `issuer` exactly, slash included.
#[tokio::test]
async fn an_issuer_whose_iss_ends_in_a_slash_works() {
    let auth0 = "https://tenant.auth0.test/";
    let text = format!("[oidc]\nissuer = \"{auth0}\"\nclient_id = \"portcullis\"\n");
    let config = Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
    let issuer = OidcIssuer::seeded(&config.oidc[0], serde_json::from_str(JWKS).unwrap()).await;
    let mut c = claims();
    c["iss"] = json!(auth0);
    let t = issuer.validate_id_token(&sign(&c)).await.unwrap();
    assert_eq!(t.principal.subject, "alice");
    assert_eq!(t.principal.issuer, "https://tenant.auth0.test");
    c["iss"] = json!("https://tenant.auth0.test");
    assert!(matches!(
        issuer.validate_id_token(&sign(&c)).await,
        Err(IdentityError::WrongIssuer)
    ));
}

/// L1: a subject with an ANSI sequence or a bidi override would be shown
/// raw in approvers' listings.
#[tokio::test]
async fn a_subject_with_hidden_characters_is_refused() {
    for sub in ["mallory\u{1B}[2J\u{1B}[Halice", "alice\u{202E}nimda"] {
        let mut c = claims();
        c["sub"] = json!(sub);
        assert!(matches!(refused(&sign(&c)).await, IdentityError::Claims(_)));
    }
}
