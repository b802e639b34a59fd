//! From a validated ID token's claims to a [`Principal`], and the claim
//! checks of RFC 8725 (JWT best current practice) and OpenID Connect Core
//! 1.0 §3.1.3.7 that jsonwebtoken does not make: explicit typing (§3.11),
//! `iat` not in the future, `email_verified`, display-safe subjects, and
//! groups namespaced per source (review finding M1).
//!
//! Owns no I/O and no signature checking ([`super::oidc`] does that
//! first); it never logs claims.

use super::{IdentityError, Principal};
use crate::config::OidcConfig;

/// The claims of a validated JWT.
pub(crate) type Claims = serde_json::Map<String, serde_json::Value>;

/// Longest subject (prefix included) and group name, in bytes.
const MAX_NAME_BYTES: usize = 255;

/// Refuses a token whose JOSE header `typ` (RFC 7515 §4.1.9) says it is
/// another kind of JWT (RFC 8725 §3.11): `at+jwt` / `application/at+jwt`
/// (RFC 9068 access tokens) and any other `*+jwt` type (logout, security
/// event, DPoP proof, ...). An ID token has no `typ` or `JWT`.
///
/// # Errors
/// [`IdentityError::NotAnIdToken`].
pub(crate) fn check_header_type(typ: Option<&str>) -> Result<(), IdentityError> {
    let Some(typ) = typ else {
        return Ok(());
    };
    let lower = typ.to_ascii_lowercase();
    let media = lower.strip_prefix("application/").unwrap_or(&lower);
    if media.ends_with("+jwt") {
        return Err(IdentityError::NotAnIdToken(format!(
            "header typ {:?}",
            crate::audit::truncate(typ, 64)
        )));
    }
    Ok(())
}

/// Refuses a token whose `typ` claim (Keycloak's: `ID` for ID tokens,
/// `Bearer` for access tokens, `Refresh`, `Logout`) names anything but an
/// ID token.
///
/// # Errors
/// [`IdentityError::NotAnIdToken`].
pub(crate) fn check_claim_type(claims: &Claims) -> Result<(), IdentityError> {
    match claims.get("typ") {
        None => Ok(()),
        Some(serde_json::Value::String(t)) if t.eq_ignore_ascii_case("ID") => Ok(()),
        Some(other) => Err(IdentityError::NotAnIdToken(format!(
            "typ claim {}",
            crate::audit::truncate(&other.to_string(), 64)
        ))),
    }
}

/// OpenID Connect Core 1.0 §3.1.3.7 (10): a token issued further in the
/// future than `leeway_secs` after `now_secs` is refused; `iat`, when
/// present, must be a number.
///
/// # Errors
/// [`IdentityError::IssuedInTheFuture`] or [`IdentityError::Claims`].
pub(crate) fn check_issued_at(
    claims: &Claims,
    now_secs: i64,
    leeway_secs: u64,
) -> Result<(), IdentityError> {
    match claims.get("iat") {
        None => Ok(()),
        Some(v) => {
            let iat = v
                .as_f64()
                .ok_or_else(|| IdentityError::Claims("iat is not a number".into()))?;
            if iat > now_secs as f64 + leeway_secs as f64 {
                return Err(IdentityError::IssuedInTheFuture);
            }
            Ok(())
        }
    }
}

/// True when the `email_verified` claim (OpenID Connect Core 1.0 §5.1) is
/// `true` (or the string `"true"`, as some issuers send it).
pub(crate) fn email_verified(claims: &Claims) -> bool {
    match claims.get("email_verified") {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => s == "true",
        _ => false,
    }
}

/// The groups a source asserted, in its namespace (review finding M1):
/// each group in `allowed` keeps its name; any other is prefixed with the
/// source's `prefix`, and dropped when the result falls in the namespace
/// of another source (a prefix in `foreign`, which only a source without
/// a prefix can reach). Duplicates are removed; order is kept.
pub(crate) fn namespaced_groups<'a>(
    asserted: impl IntoIterator<Item = &'a str>,
    prefix: &str,
    allowed: &[String],
    foreign: &[String],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for g in asserted {
        let name = if allowed.iter().any(|a| a == g) {
            g.to_string()
        } else {
            let name = format!("{prefix}{g}");
            if foreign.iter().any(|f| name.starts_with(f.as_str())) {
                tracing::warn!(
                    group = %crate::text::display_safe(&name),
                    "group dropped: it falls in another source's prefix"
                );
                continue;
            }
            name
        };
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// The principal named by validated `claims`.
///
/// - subject: `principal_prefix` + the `subject_claim` (1 to 255 bytes,
///   no control, bidi or invisible character); refused when it falls in
///   another source's prefix (`foreign`); when the subject claim is the
///   email claim, `email_verified` must be true;
/// - email: the `email_claim` only when `email_verified` is true and the
///   address is display-safe, else none ("used" means: carried on the
///   principal, so shown to approvers and reviewers, stored with key
///   bindings and sessions, sent in notifications);
/// - groups: the `groups_claim` (a string or a list of strings), each
///   display-safe, namespaced by [`namespaced_groups`].
///
/// # Errors
/// [`IdentityError::Claims`] naming the claim.
pub(crate) fn principal_from(
    claims: &Claims,
    config: &OidcConfig,
    issuer: &str,
    foreign: &[String],
) -> Result<Principal, IdentityError> {
    let sub = match claims.get(&config.subject_claim) {
        Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= MAX_NAME_BYTES => s,
        _ => {
            return Err(IdentityError::Claims(format!(
                "{} must be a string of 1 to 255 bytes",
                config.subject_claim
            )));
        }
    };
    if let Err(e) = crate::text::check_visible(sub) {
        return Err(IdentityError::Claims(format!(
            "{}: {e}",
            config.subject_claim
        )));
    }
    if config.subject_claim == config.email_claim && !email_verified(claims) {
        return Err(IdentityError::Claims(format!(
            "{} names the principal but email_verified is not true",
            config.subject_claim
        )));
    }
    let subject = format!("{}{sub}", config.principal_prefix);
    if let Some(f) = foreign.iter().find(|f| subject.starts_with(f.as_str())) {
        return Err(IdentityError::Claims(format!(
            "{} falls in another source's prefix {:?}",
            config.subject_claim,
            crate::audit::truncate(f, 64)
        )));
    }
    let email = claims
        .get(&config.email_claim)
        .and_then(serde_json::Value::as_str)
        .filter(|e| e.len() <= MAX_NAME_BYTES && crate::text::is_visible(e))
        .filter(|_| email_verified(claims))
        .map(str::to_string);
    let groups_claim = config.groups_claim.as_str();
    let asserted: Vec<&str> = match claims.get(groups_claim) {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(g)) => vec![g.as_str()],
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().ok_or_else(|| {
                    IdentityError::Claims(format!("{groups_claim} holds a non-string"))
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(IdentityError::Claims(format!(
                "{groups_claim} is neither a string nor a list"
            )));
        }
    };
    for g in &asserted {
        if g.is_empty() || g.len() > MAX_NAME_BYTES || !crate::text::is_visible(g) {
            return Err(IdentityError::Claims(format!(
                "{groups_claim} holds an empty, too long or unprintable group"
            )));
        }
    }
    Ok(Principal {
        subject,
        email,
        groups: namespaced_groups(
            asserted,
            &config.principal_prefix,
            &config.allowed_groups,
            foreign,
        ),
        issuer: issuer.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn claims(v: serde_json::Value) -> Claims {
        serde_json::from_value(v).unwrap()
    }

    fn config(extra: &str) -> OidcConfig {
        let text = format!("[oidc]\nissuer = \"https://i\"\nclient_id = \"c\"\n{extra}\n");
        crate::config::Config::parse(&text, std::path::Path::new("t"))
            .unwrap()
            .oidc
            .remove(0)
    }

    fn principal(extra: &str, v: serde_json::Value) -> Result<Principal, IdentityError> {
        principal_from(&claims(v), &config(extra), "i", &[])
    }

    #[test]
    fn groups_claim_shapes() {
        let p = principal("", serde_json::json!({"sub":"a","groups":["x","y","x"]})).unwrap();
        assert_eq!(p.groups, ["x", "y"]);
        let p = principal(
            "groups_claim = \"roles\"\nprincipal_prefix = \"ci:\"",
            serde_json::json!({"sub":"a","roles":"x"}),
        )
        .unwrap();
        assert_eq!(p.groups, ["ci:x"]);
        assert_eq!(p.subject, "ci:a");
        assert!(
            principal("", serde_json::json!({"sub":"a"}))
                .unwrap()
                .groups
                .is_empty()
        );
        assert!(principal("", serde_json::json!({"sub":"a","groups":[1]})).is_err());
        assert!(principal("", serde_json::json!({"sub":""})).is_err());
        assert!(principal("", serde_json::json!({})).is_err());
    }

    /// M1: a second issuer's `admins` is `ci:admins`, unless allow-listed.
    #[test]
    fn groups_are_namespaced_per_source() {
        let ci = "principal_prefix = \"ci:\"\nallowed_groups = [\"deployers\"]";
        let p = principal(
            ci,
            serde_json::json!({"sub":"bot","groups":["admins","deployers"]}),
        )
        .unwrap();
        assert_eq!(p.groups, ["ci:admins", "deployers"]);
        // An issuer without a prefix cannot reach into a CA's "ca:" names.
        let p = principal_from(
            &claims(serde_json::json!({"sub":"a","groups":["admins","ca:admins"]})),
            &config(""),
            "i",
            &["ca:".to_string()],
        )
        .unwrap();
        assert_eq!(p.groups, ["admins"]);
        let err = principal_from(
            &claims(serde_json::json!({"sub":"ca:root"})),
            &config(""),
            "i",
            &["ca:".to_string()],
        )
        .unwrap_err();
        assert!(err.to_string().contains("another source's prefix"), "{err}");
    }

    #[test]
    fn email_is_used_only_when_verified() {
        let p = principal(
            "",
            serde_json::json!({"sub":"a","email":"a@x","email_verified":true}),
        )
        .unwrap();
        assert_eq!(p.email.as_deref(), Some("a@x"));
        let p = principal(
            "",
            serde_json::json!({"sub":"a","email":"a@x","email_verified":"true"}),
        )
        .unwrap();
        assert_eq!(p.email.as_deref(), Some("a@x"));
        for unverified in [
            serde_json::json!({"sub":"a","email":"a@x"}),
            serde_json::json!({"sub":"a","email":"a@x","email_verified":false}),
            serde_json::json!({"sub":"a","email":"a@x","email_verified":"yes"}),
        ] {
            assert_eq!(principal("", unverified).unwrap().email, None);
        }
        // The email as the subject needs email_verified.
        let by_email = "subject_claim = \"email\"";
        assert!(principal(by_email, serde_json::json!({"email":"boss@x"})).is_err());
        let p = principal(
            by_email,
            serde_json::json!({"email":"boss@x","email_verified":true}),
        )
        .unwrap();
        assert_eq!(p.subject, "boss@x");
    }

    /// L1: `sub`, `email` and groups are shown to other people.
    #[test]
    fn hidden_characters_in_sub_email_and_groups() {
        for sub in ["bob\u{1B}[31m", "adm\u{202E}nimda", "a\u{200B}b", "a\nb"] {
            assert!(
                principal("", serde_json::json!({ "sub": sub })).is_err(),
                "{sub:?}"
            );
        }
        let p = principal(
            "",
            serde_json::json!({"sub":"a","email":"x\u{1B}]52;c;eA==\u{7}@x","email_verified":true}),
        )
        .unwrap();
        assert_eq!(p.email, None);
        assert!(
            principal(
                "",
                serde_json::json!({"sub":"a","groups":["ad\u{202E}min"]})
            )
            .is_err()
        );
    }

    #[test]
    fn token_types() {
        for ok in [None, Some("JWT"), Some("jwt"), Some("application/jwt")] {
            check_header_type(ok).unwrap();
        }
        for bad in [
            "at+jwt",
            "application/at+jwt",
            "AT+JWT",
            "logout+jwt",
            "dpop+jwt",
        ] {
            assert!(matches!(
                check_header_type(Some(bad)),
                Err(IdentityError::NotAnIdToken(_))
            ));
        }
        check_claim_type(&claims(serde_json::json!({"typ":"ID"}))).unwrap();
        check_claim_type(&claims(serde_json::json!({}))).unwrap();
        for bad in ["Bearer", "Refresh", "Logout"] {
            assert!(check_claim_type(&claims(serde_json::json!({ "typ": bad }))).is_err());
        }
        assert!(check_claim_type(&claims(serde_json::json!({"typ": 1}))).is_err());
    }

    #[test]
    fn iat_in_the_future() {
        let c = |iat: serde_json::Value| claims(serde_json::json!({ "iat": iat }));
        check_issued_at(&c(serde_json::json!(1000)), 1000, 30).unwrap();
        check_issued_at(&c(serde_json::json!(1030)), 1000, 30).unwrap();
        assert!(matches!(
            check_issued_at(&c(serde_json::json!(1031)), 1000, 30),
            Err(IdentityError::IssuedInTheFuture)
        ));
        assert!(check_issued_at(&c(serde_json::json!("soon")), 1000, 30).is_err());
        check_issued_at(&claims(serde_json::json!({})), 1000, 30).unwrap();
    }
}
