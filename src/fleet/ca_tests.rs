#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::os::unix::fs::PermissionsExt;

use super::*;

const NOW: u64 = 1_800_000_000;

fn grant() -> RelayGrant {
    RelayGrant {
        session_id: "0d4f5c1e-7c7e-4a53-9b59-4f7d2f6f0a11".into(),
        principal: Principal {
            subject: "alice".into(),
            email: Some("alice@example.com".into()),
            groups: vec!["developers".into(), "a,b".into()],
            issuer: "https://idp.example.com".into(),
        },
        login: "app".into(),
        container: "web1".into(),
        action: RelayAction::Session,
        grant_id: Some("g-1".into()),
        client_address: Some("192.0.2.7:50022".into()),
        edge: "edge-a".into(),
        destination: None,
    }
}

fn ca() -> EdgeCa {
    EdgeCa::from_key(new_key().unwrap())
}

#[test]
fn ca_key_is_created_once_0600_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet").join("edge_ca");
    assert!(matches!(
        EdgeCa::load_or_create(&path, false),
        Err(CaError::KeyFile { .. })
    ));
    let (first, created) = EdgeCa::load_or_create(&path, true).unwrap();
    assert!(created);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (again, created) = EdgeCa::load_or_create(&path, true).unwrap();
    assert!(!created);
    assert_eq!(first.fingerprint(), again.fingerprint());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = EdgeCa::load_or_create(&path, true).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn user_certificate_round_trips_every_field() {
    let ca = ca();
    let minted = ca
        .mint_user_certificate(&grant(), NOW, Duration::from_secs(120))
        .unwrap();
    assert_eq!(minted.user, "app@web1");
    assert_eq!(
        minted.certificate.public_key(),
        minted.key.public_key().key_data()
    );
    assert_eq!(minted.certificate.valid_after(), NOW - 30);
    assert_eq!(minted.certificate.valid_before(), NOW + 120);
    // Through the OpenSSH text form, as it would travel.
    let text = minted.certificate.to_openssh().unwrap();
    let cert = Certificate::from_openssh(&text).unwrap();
    let trust = NodeTrust::new(vec![ca.fingerprint()]);
    let id = trust
        .verify_user_certificate(&cert, "app@web1", NOW + 60)
        .unwrap();
    assert_eq!(
        id,
        RelayedIdentity {
            principal: grant().principal,
            login: "app".into(),
            container: "web1".into(),
            action: RelayAction::Session,
            session_id: grant().session_id,
            grant_id: Some("g-1".into()),
            client_address: Some("192.0.2.7:50022".into()),
            edge: "edge-a".into(),
            destination: None,
            serial: cert.serial(),
        }
    );
}

#[test]
fn node_refuses_what_the_certificate_does_not_name() {
    let ca = ca();
    let trust = NodeTrust::new(vec![ca.fingerprint()]);
    let cert = ca
        .mint_user_certificate(&grant(), NOW, Duration::from_secs(120))
        .unwrap()
        .certificate;
    // Another container, another login.
    for user in ["app@web2", "root@web1", "web1"] {
        assert!(
            matches!(
                trust.verify_user_certificate(&cert, user, NOW),
                Err(CaError::NotNamed(_))
            ),
            "{user}"
        );
    }
    // Expired, not yet valid.
    assert!(matches!(
        trust.verify_user_certificate(&cert, "app@web1", NOW + 121),
        Err(CaError::Invalid(_))
    ));
    assert!(matches!(
        trust.verify_user_certificate(&cert, "app@web1", NOW - 31),
        Err(CaError::Invalid(_))
    ));
    // Another CA (an attacker's, or a removed edge CA).
    let other = NodeTrust::new(vec![self::ca().fingerprint()]);
    assert!(matches!(
        other.verify_user_certificate(&cert, "app@web1", NOW),
        Err(CaError::UntrustedCa(_))
    ));
}

#[test]
fn node_refuses_long_lived_host_typed_or_optioned_certificates() {
    let ca = ca();
    let trust = NodeTrust::new(vec![ca.fingerprint()]);
    assert!(matches!(
        ca.mint_user_certificate(&grant(), NOW, Duration::from_secs(3600)),
        Err(CaError::TooLong(3600))
    ));
    // Signed by the trusted CA but for an hour: built by hand.
    let key = new_key().unwrap();
    let build = |ttl: u64, host: bool, option: bool| {
        let mut b = Builder::new(
            vec![7u8; 32],
            key.public_key().key_data().clone(),
            NOW - 30,
            NOW + ttl,
        )
        .unwrap();
        b.cert_type(if host { CertType::Host } else { CertType::User })
            .unwrap()
            .key_id(format!("{USER_KEY_ID_PREFIX}s1"))
            .unwrap()
            .valid_principal("alice")
            .unwrap();
        for (name, value) in [
            (ext::TARGET, "app@web1"),
            (ext::ACTION, "session"),
            (ext::SESSION, "s1"),
            (ext::ISSUER, "i"),
            (ext::GROUPS, "[]"),
            (ext::EDGE, "e"),
        ] {
            b.extension(name, value).unwrap();
        }
        if option {
            b.critical_option("source-address", "192.0.2.0/24").unwrap();
        }
        b.sign(&*ca.key).unwrap()
    };
    trust
        .verify_user_certificate(&build(600, false, false), "app@web1", NOW)
        .unwrap();
    assert!(matches!(
        trust.verify_user_certificate(&build(3600, false, false), "app@web1", NOW),
        Err(CaError::TooLong(3630))
    ));
    assert!(matches!(
        trust.verify_user_certificate(&build(60, true, false), "app@web1", NOW),
        Err(CaError::WrongType(_))
    ));
    assert!(matches!(
        trust.verify_user_certificate(&build(60, false, true), "app@web1", NOW),
        Err(CaError::CriticalOption(o)) if o == "source-address"
    ));
}

#[test]
fn host_certificates_name_their_node() {
    let ca = ca();
    let node_key = new_key().unwrap();
    let cert = ca
        .mint_host_certificate(node_key.public_key(), "n1", NOW, Duration::from_secs(86400))
        .unwrap();
    assert_eq!(cert.key_id(), "portcullis-node:n1");
    let cas = [ca.fingerprint()];
    verify_host_certificate(&cert, &cas, Some("n1"), NOW + 3600).unwrap();
    verify_host_certificate(&cert, &cas, None, NOW).unwrap();
    assert!(matches!(
        verify_host_certificate(&cert, &cas, Some("n2"), NOW),
        Err(CaError::NotNamed(_))
    ));
    assert!(matches!(
        verify_host_certificate(&cert, &cas, Some("n1"), NOW + 86401),
        Err(CaError::Invalid(_))
    ));
    assert!(matches!(
        verify_host_certificate(&cert, &[self::ca().fingerprint()], Some("n1"), NOW),
        Err(CaError::UntrustedCa(_))
    ));
    let user = ca
        .mint_user_certificate(&grant(), NOW, Duration::from_secs(60))
        .unwrap()
        .certificate;
    assert!(matches!(
        verify_host_certificate(&user, &cas, None, NOW),
        Err(CaError::WrongType(_))
    ));
    // A host certificate is never a user certificate.
    assert!(matches!(
        NodeTrust::new(cas.to_vec()).verify_user_certificate(&cert, "n1", NOW),
        Err(CaError::WrongType(_))
    ));
}

#[test]
fn pins_parse() {
    let ca = ca();
    assert_eq!(
        parse_fingerprint(&ca.fingerprint().to_string()).unwrap(),
        ca.fingerprint()
    );
    assert!(parse_fingerprint("SHA256:nope!").is_err());
}

#[test]
fn a_forward_certificate_names_its_one_destination() {
    let ca = ca();
    let trust = NodeTrust::new(vec![ca.fingerprint()]);
    let forward = RelayGrant {
        action: RelayAction::DirectTcpip,
        destination: Some("127.0.0.1:8080".into()),
        ..grant()
    };
    let minted = ca
        .mint_user_certificate(&forward, NOW, Duration::from_secs(60))
        .unwrap();
    let relayed = trust
        .verify_user_certificate(&minted.certificate, "app@web1", NOW)
        .unwrap();
    assert_eq!(relayed.destination.as_deref(), Some("127.0.0.1:8080"));
    // A forward without a destination, or a session with one: refused.
    for bad in [
        RelayGrant {
            destination: None,
            ..forward.clone()
        },
        RelayGrant {
            action: RelayAction::Session,
            ..forward
        },
    ] {
        let minted = ca
            .mint_user_certificate(&bad, NOW, Duration::from_secs(60))
            .unwrap();
        assert!(matches!(
            trust.verify_user_certificate(&minted.certificate, "app@web1", NOW),
            Err(CaError::NotNamed(_))
        ));
    }
}
