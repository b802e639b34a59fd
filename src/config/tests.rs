//! Config parsing and validation tests.
use super::*;

const MINIMAL: &str = r#"
[oidc]
issuer = "https://idp.example.com"
client_id = "portcullis"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.listen, "0.0.0.0:2222".parse().unwrap());
    assert_eq!(c.default_login, "root");
    assert_eq!(c.oidc.len(), 1);
    assert_eq!(c.oidc[0].expected_audience(), "portcullis");
    assert_eq!(c.oidc[0].groups_claim, "groups");
    assert_eq!(c.auth.key_binding_ttl, Duration::from_secs(8 * 3600));
    assert!(c.oidc[0].azp_allowed("portcullis"));
    assert!(!c.oidc[0].azp_allowed("other"));
    assert_eq!(c.recording.flush_interval, Duration::from_secs(1));
    assert!(!c.recording.record_input);
    assert_eq!(c.database_url(), "sqlite://./portcullis-data/portcullis.db");
}

#[test]
fn issue_example_parses() {
    let text = r#"
listen = "0.0.0.0:2222"
state_dir = "./portcullis-data"
default_login = "root"
[database]
[oidc]
issuer = "https://idp.example.com"
client_id = "portcullis"
groups_claim = "groups"
[policy]
dir = "./policies"
[inventory]
backend = "lxc"
lxcpath = "/var/lib/lxc"
[containers.web1]
labels = { env = "dev", owner = "payments" }
[recording]
record_input = false
"#;
    let c = parse(text).unwrap();
    assert_eq!(c.containers["web1"].labels["env"], "dev");
}

#[test]
fn unknown_key_is_named() {
    let err = parse(&format!("{MINIMAL}\n[recording]\nrecord_inptu = true\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("record_inptu"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn missing_oidc_is_named() {
    let err = parse("listen = \"127.0.0.1:2222\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("oidc"), "{err}");
}

#[test]
fn wrong_type_is_named() {
    let err = parse(&format!("listen = 22\n{MINIMAL}"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("listen"), "{err}");
}

#[test]
fn bad_issuer_is_named() {
    let err = parse("[oidc]\nissuer = \"idp\"\nclient_id = \"x\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("`oidc.issuer`"), "{err}");
}

#[test]
fn secrets_are_redacted_in_debug() {
    let c = parse(&format!("{MINIMAL}client_secret = \"hunter2\"\n")).unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn names_are_checked() {
    assert!(valid_name("web1"));
    assert!(valid_name("a.b_c-d"));
    assert!(!valid_name(""));
    assert!(!valid_name("-rf"));
    assert!(!valid_name("../etc"));
    assert!(!valid_name("a b"));
    assert!(!valid_name("a@b"));
    assert!(!valid_name(&"a".repeat(65)));
}

#[test]
fn several_issuers_need_distinct_prefixes() {
    let two = |a: &str, b: &str| {
        format!(
            "[[oidc]]\nissuer = \"https://a\"\nclient_id = \"x\"\nprincipal_prefix = \"{a}\"\n\
             [[oidc]]\nissuer = \"https://b\"\nclient_id = \"x\"\nprincipal_prefix = \"{b}\"\n"
        )
    };
    let c = parse(&two("corp:", "ci:")).unwrap();
    assert_eq!(c.oidc.len(), 2);
    assert_eq!(c.default_oidc().unwrap().issuer, "https://a");
    for (a, b) in [("", "ci:"), ("ci:", "ci:"), ("c", "ci:")] {
        let err = parse(&two(a, b)).unwrap_err().to_string();
        assert!(err.contains("principal_prefix"), "{err}");
    }
    let err = parse(&format!(
        "{}default = true\n",
        two("a:", "b:").replace(
            "principal_prefix = \"a:\"",
            "principal_prefix = \"a:\"\ndefault = true"
        )
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("default"), "{err}");
}

#[test]
fn unknown_keys_in_an_oidc_array_entry_are_named() {
    let err = parse("[[oidc]]\nissuer = \"https://a\"\nclient_id = \"x\"\naudiance = \"y\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("audiance"), "{err}");
}

#[test]
fn auth_and_certificates_are_checked() {
    let err = parse(&format!("{MINIMAL}[auth]\nmax_auth_attempts = 0\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("auth.max_auth_attempts"), "{err}");
    let err = parse(&format!(
        "{MINIMAL}[[certificates.ca]]\npublic_key = \"ssh-ed25519 nope\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("certificates.ca[0].public_key"), "{err}");
    let c = parse(&format!("{MINIMAL}[auth]\nkey_binding_ttl = \"1h\"\n")).unwrap();
    assert_eq!(c.auth.key_binding_ttl, Duration::from_secs(3600));
}

#[test]
fn process_backend_keys() {
    let c = parse(&format!(
        "{MINIMAL}[inventory]\nbackend = \"process\"\n\
         [containers.a]\npid_file = \"/run/a.pid\"\n\
         [containers.b]\ncgroup = \"/sys/fs/cgroup/unified/b\"\n"
    ))
    .unwrap();
    assert_eq!(c.inventory.backend, InventoryBackend::Process);
    assert!(c.containers["a"].is_process() && c.containers["b"].is_process());
    let bad = [
        "[inventory]\nbackend = \"process\"\n[containers.a]\nlabels = {}\n",
        "[containers.a]\npid_file = \"/x\"\ncgroup = \"/y\"\n",
        "[containers.a]\npid_file = \"rel.pid\"\n",
        "[containers.a]\ncgroup = \"/sys/../etc\"\n",
    ];
    for b in bad {
        let err = parse(&format!("{MINIMAL}{b}")).unwrap_err().to_string();
        assert!(err.contains("containers.a"), "{err}");
    }
}

#[test]
fn sftp_server_defaults_and_is_checked() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.sftp.server, SftpServer::Builtin);
    assert_eq!(c.sftp.container_path, "/usr/lib/openssh/sftp-server");
    let c = parse(&format!(
        "{MINIMAL}\n[sftp]\nserver = \"container\"\ncontainer_path = \"/usr/libexec/sftp-server\"\n"
    ))
    .unwrap();
    assert_eq!(c.sftp.server, SftpServer::Container);
    assert_eq!(c.sftp.container_path, "/usr/libexec/sftp-server");
    let err = parse(&format!(
        "{MINIMAL}\n[sftp]\ncontainer_path = \"sftp-server\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("sftp.container_path"), "{err}");
    let err = parse(&format!("{MINIMAL}\n[sftp]\nserver = \"openssh\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("openssh"), "{err}");
    let err = parse(&format!("{MINIMAL}\n[sftp]\nsevrer = \"builtin\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sevrer"), "{err}");
}

#[test]
fn owner_purpose_and_the_incus_backend() {
    let base = "[oidc]\nissuer = \"https://i.example\"\nclient_id = \"c\"\n";
    let parse = |extra: &str| Config::parse(&format!("{base}{extra}"), Path::new("t.toml"));
    let c = parse("[containers.web1]\nowner = \"alice\"\npurpose = \"shop front\"\n").unwrap();
    assert_eq!(c.containers["web1"].owner.as_deref(), Some("alice"));
    assert_eq!(c.containers["web1"].purpose.as_deref(), Some("shop front"));
    assert_eq!(c.inventory.incus_timeout, std::time::Duration::from_secs(5));
    let long = "x".repeat(257);
    for (extra, key) in [
        (
            format!("[containers.web1]\nowner = \"{long}\"\n"),
            "containers.web1.owner",
        ),
        (
            "[containers.web1]\npurpose = \"a\\nb\"\n".to_string(),
            "containers.web1.purpose",
        ),
        (
            "[containers.web1]\nowner = \" \"\n".to_string(),
            "containers.web1.owner",
        ),
        (
            "[inventory]\nbackend = \"incus\"\n[containers.web1]\nowner = \"alice\"\n".to_string(),
            "containers.web1",
        ),
        (
            "[inventory]\nbackend = \"incus\"\nincus_socket = \"lxd.sock\"\n".to_string(),
            "inventory.incus_socket",
        ),
        (
            "[inventory]\nincus_timeout = \"2m\"\n".to_string(),
            "inventory.incus_timeout",
        ),
    ] {
        let err = parse(&extra).unwrap_err().to_string();
        assert!(err.contains(key), "{extra}: {err}");
    }
    let c = parse(
        "[inventory]\nbackend = \"incus\"\nincus_socket = \"/var/lib/lxd/unix.socket\"\n\
         incus_timeout = \"2s\"\n[containers.side]\npid_file = \"/run/side.pid\"\nowner = \"bob\"\n",
    )
    .unwrap();
    assert_eq!(c.inventory.backend, InventoryBackend::Incus);
    assert_eq!(
        c.inventory.incus_socket(),
        std::path::PathBuf::from("/var/lib/lxd/unix.socket")
    );
}
