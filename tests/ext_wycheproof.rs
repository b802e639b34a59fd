//! Issue 19: Project Wycheproof's JSON Web Signature and JSON Web Key
//! vectors (C2SP/wycheproof `testvectors_v1/json_web_signature_test.json`,
//! `json_web_key_test.json`, vendored with their Apache-2.0 `LICENSE` in
//! `tests/ext/wycheproof/`) through the gateway's own ID-token validator,
//! [`OidcIssuer::validate_id_token`], with each group's keys published as
//! the issuer's JWKS by a small local HTTP server (discovery + JWKS only:
//! the validator fetches them as it would from a real issuer).
//!
//! The vectors' payloads are not ID tokens (`foo`, RFC 7520's text), so
//! even a valid signature ends in a refused payload. The test tells the two
//! apart: "signature verified" is a refusal of the payload itself (not JSON
//! claims) for a token whose header decodes. Then:
//! - every `invalid` vector is refused, and never after its signature was
//!   accepted (that would mean the validator trusted a bad token and only the
//!   payload saved it);
//! - every `valid` vector either has its signature verified, or is refused
//!   for a reason the validator has by design, checked by kind: HMAC
//!   (`HS*`: refused, an issuer's key is public), no `kid` (every key is
//!   looked up by kid), the JSON serialization (ID tokens are compact), a
//!   key whose `alg` names another algorithm than the token's, `ES512`
//!   (not offered), base64url with a stray character (decoded strictly).
//!
//! Found and fixed in `src/identity/oidc.rs` (these vectors failed
//! before): keys published for encryption (`use: "enc"`) or without
//! `verify` in `key_ops` verified signatures; an ES256 token verified with
//! a key labelled `P-384`; a ROCA-vulnerable RSA key (CVE-2017-15361) was
//! trusted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use portcullis::config::OidcConfig;
use portcullis::identity::{IdentityError, OidcIssuer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the validator did with one vector.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// A full ID token (never, with these payloads).
    Accepted,
    /// The signature was verified; the payload (not ID-token claims) was
    /// refused.
    SignatureVerified,
    /// Refused before or at the signature, with the error.
    Refused(String),
}

fn load(name: &str) -> Value {
    let path = format!("{}/tests/ext/wycheproof/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Serves `{base}/.well-known/openid-configuration` and `{base}/jwks`
/// (whatever `jwks` holds when asked) on a loopback port; returns `base`.
async fn issuer_server(jwks: Arc<Mutex<String>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let b = base.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let jwks = jwks.clone();
            let base = b.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req);
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let (status, body) = match path.as_str() {
                    "/.well-known/openid-configuration" => (
                        "200 OK",
                        serde_json::json!({
                            "issuer": base,
                            "jwks_uri": format!("{base}/jwks"),
                            "token_endpoint": format!("{base}/token"),
                        })
                        .to_string(),
                    ),
                    "/jwks" => ("200 OK", jwks.lock().unwrap().clone()),
                    _ => ("404 Not Found", "{}".to_string()),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    base
}

/// A JWK without its private members (what an issuer publishes).
fn public_part(jwk: &Value) -> Value {
    let mut k = jwk.clone();
    if let Some(o) = k.as_object_mut() {
        for private in ["d", "p", "q", "dp", "dq", "qi", "oth"] {
            o.remove(private);
        }
    }
    k
}

/// The JWKS a group publishes: its `public` key or key set, else its
/// `private` one, without private members.
fn group_jwks(group: &Value) -> String {
    let keys: Vec<Value> = match group.get("public").or_else(|| group.get("private")) {
        Some(p) => match p.get("keys") {
            Some(Value::Array(keys)) => keys.iter().map(public_part).collect(),
            _ => vec![public_part(p)],
        },
        None => Vec::new(),
    };
    serde_json::json!({ "keys": keys }).to_string()
}

async fn validate(base: &str, jws: &str) -> Outcome {
    let config: OidcConfig = toml::from_str(&format!(
        "issuer = \"{base}\"\nclient_id = \"wycheproof\"\n"
    ))
    .unwrap();
    let issuer = OidcIssuer::new(&config).unwrap();
    match issuer.validate_id_token(jws).await {
        Ok(_) => Outcome::Accepted,
        Err(IdentityError::Malformed(m))
            if m.starts_with("JSON error") && jsonwebtoken::decode_header(jws).is_ok() =>
        {
            Outcome::SignatureVerified
        }
        Err(e) => Outcome::Refused(format!("{e:?}")),
    }
}

/// Why a valid vector may be refused by design, or `None`.
fn refused_by_design(jws: &str, error: &str) -> Option<&'static str> {
    if !jws.starts_with("ey") {
        return error
            .contains("not three dot-separated parts")
            .then_some("JSON serialization");
    }
    if error.starts_with("Malformed(\"Base64 error") {
        return Some("strict base64url (RFC 7515 §2: no stray characters)");
    }
    if error.contains("unknown variant `ES512`") {
        return Some("ES512 is not an algorithm the validator takes");
    }
    let header = jsonwebtoken::decode_header(jws).ok()?;
    let alg = format!("{:?}", header.alg);
    if alg.starts_with("HS") && error.starts_with("AlgorithmRefused") {
        return Some("HMAC");
    }
    if header.kid.is_none() && error.starts_with("UnknownKey") {
        return Some("no kid");
    }
    if error.starts_with("AlgorithmRefused(\"token says") {
        return Some("the key names another algorithm than the token");
    }
    None
}

async fn run_file(name: &str) -> (usize, Vec<String>) {
    let doc = load(name);
    let jwks = Arc::new(Mutex::new(String::new()));
    let base = issuer_server(jwks.clone()).await;
    let mut failures = Vec::new();
    let mut count = 0;
    for group in doc["testGroups"].as_array().unwrap() {
        *jwks.lock().unwrap() = group_jwks(group);
        for t in group["tests"].as_array().unwrap() {
            count += 1;
            let id = format!(
                "{name} #{} ({}: {}, {:?})",
                t["tcId"], group["comment"], t["comment"], t["flags"]
            );
            let jws = match &t["jws"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let outcome = validate(&base, &jws).await;
            match (t["result"].as_str().unwrap(), &outcome) {
                ("invalid", Outcome::Refused(_)) => {}
                ("invalid", o) => failures.push(format!("{id}: invalid vector {o:?}")),
                ("valid", Outcome::SignatureVerified) => {}
                ("valid", Outcome::Refused(e)) => {
                    if refused_by_design(&jws, e).is_none() {
                        failures.push(format!("{id}: valid vector refused: {e}"));
                    }
                }
                (r, o) => failures.push(format!("{id}: result {r}, outcome {o:?}")),
            }
        }
    }
    (count, failures)
}

#[tokio::test]
async fn wycheproof_json_web_signature_vectors() {
    let (count, failures) = run_file("json_web_signature_test.json").await;
    assert_eq!(count, 401);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn wycheproof_json_web_key_vectors() {
    let (count, failures) = run_file("json_web_key_test.json").await;
    assert_eq!(count, 26);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
