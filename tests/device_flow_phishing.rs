//! Device-code phishing (issue 14, review finding H2), from where the
//! attacker stands: A connects with key K_A, gets the device prompt and
//! forwards its link to victim B, who is logged in at the IdP. Before,
//! the link was `verification_uri_complete` (and a QR code of it): one
//! click at the IdP bound K_A to B for hours. Now the prompt shows the
//! verification URL and a code to type; a binding is announced (webhook
//! `key_bound`, and B's next login); B lists and revokes it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::gateway::{
    SshResult, TestContainer, TestGateway, fingerprint_of, keygen, run_ssh, run_with_browser,
};
use common::idp::TestIdp;
use serde_json::Value;

struct Fixture {
    idp: Arc<TestIdp>,
    container: TestContainer,
    gateway: TestGateway,
    hooks: Arc<Mutex<Vec<Value>>>,
    keys: tempfile::TempDir,
}

/// A webhook receiver: every JSON body it is posted.
fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            if let Ok(v) = serde_json::from_slice(&body) {
                g.lock().unwrap().push(v);
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    (url, got)
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        std::thread::spawn(|| {
            let idp = Arc::new(TestIdp::start());
            let container = TestContainer::start("phish");
            let (url, hooks) = receiver();
            let gateway = TestGateway::start(
                &idp.issuer,
                &format!(
                    "[containers.{}]\nlabels = {{ env = \"dev\" }}\n[grants]\nwebhooks = [\"{url}\"]\n",
                    container.name
                ),
            );
            Fixture {
                idp,
                container,
                gateway,
                hooks,
                keys: tempfile::tempdir().unwrap(),
            }
        })
        .join()
        .unwrap()
    })
}

fn new_key(name: &str) -> PathBuf {
    let path = fixture().keys.path().join(name);
    keygen(&path);
    path
}

/// The device prompt the askpass helper wrote into `dir`.
fn prompt_in(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .find(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("prompt.") && !n.ends_with(".tmp")
        })
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .expect("a device prompt")
}

/// The code the prompt asks to type ("... confirm the code ABCD-EFGH.").
fn code_in(prompt: &str) -> String {
    let rest = prompt
        .split("confirm the code ")
        .nth(1)
        .unwrap_or_else(|| panic!("no code in {prompt:?}"));
    rest.split(|c: char| c.is_whitespace())
        .next()
        .unwrap()
        .trim_end_matches('.')
        .to_string()
}

/// `node tests/idp/login.mjs ARGS...`: the victim's browser.
fn login_mjs(args: &[&str]) -> std::process::Output {
    Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idp/login.mjs"))
        .args(args)
        .output()
        .unwrap()
}

/// The attack up to the victim's login: A connects with `key`; the link of
/// A's prompt is forwarded to the victim, who is `victim` at the IdP.
/// Returns A's ssh result and the prompt A saw. With `types_code`, the
/// victim also types the code A tells them (the social-engineering step
/// no link can remove); else they only click.
fn attack(key: &Path, victim: &'static str, types_code: bool) -> (SshResult, String) {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd =
        f.gateway
            .ssh_with_key(&format!("root@{}", f.container.name), key, "", dir.path());
    cmd.arg("id -un");
    let ask = dir.path().to_path_buf();
    run_with_browser(&mut cmd, dir.path(), &f.idp.issuer, move |url| {
        // One click on the forwarded link.
        let click = login_mjs(&[&url, victim]);
        if types_code {
            let code = code_in(&prompt_in(&ask));
            let out = login_mjs(&[&url, victim, &code]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            assert!(
                !click.status.success(),
                "one click on the forwarded link logged the victim in: {}",
                String::from_utf8_lossy(&click.stdout)
            );
            // End A's wait: the code is refused at the IdP.
            let code = code_in(&prompt_in(&ask));
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(
                fixture()
                    .idp
                    .deny_device_login(&format!("{url}?user_code={code}")),
            );
        }
    })
}

/// The prompt shows the verification URL and the code to type, and no
/// one-click link or QR code of one: the link A forwards does nothing by
/// itself (login.mjs, the test's browser, is told there is no code in
/// it). A user who types the code logs in as before.
#[test]
fn the_device_prompt_has_no_one_click_link() {
    let f = fixture();
    let ka = new_key("attacker-click");
    let (r, prompt) = attack(&ka, "admin", false);
    assert!(prompt.contains("To log in, open"), "{prompt}");
    assert!(!prompt.contains("user_code"), "{prompt}");
    assert!(
        !prompt.contains('▀') && !prompt.contains('▄'),
        "no QR code of a one-click link: {prompt}"
    );
    let url = prompt
        .split_whitespace()
        .find(|w| w.starts_with(&f.idp.issuer))
        .unwrap();
    assert_eq!(url, format!("{}/device", f.idp.issuer));
    let code = code_in(&prompt);
    assert_eq!(code.len(), 9, "{code}");
    // The click did nothing: A's login never completed.
    assert_eq!(r.code, 255, "{}", r.stderr);
    assert!(r.stdout.is_empty());
    let mut batch = f
        .gateway
        .ssh_batch(&format!("root@{}", f.container.name), &ka, None);
    batch.arg("id -un");
    assert_eq!(run_ssh(&mut batch, b"").code, 255, "K_A is not bound");

    // A user who types the code (their own login) gets in as before.
    let mine = new_key("user-types-code");
    let (r, _) = attack(&mine, "admin", true);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, f.gateway.log());
    assert_eq!(r.stdout, b"root\n");
}

/// When the victim is talked into typing the code, the binding is still
/// made, but announced: a `key_bound` webhook with the client address, a
/// line at the victim's next login, and `keys` / `keys revoke FP` for the
/// victim; revoked, K_A is refused.
#[test]
fn a_key_bound_to_you_is_announced_and_you_can_revoke_it() {
    let f = fixture();
    let ka = new_key("attacker-typed");
    let fp = fingerprint_of(&PathBuf::from(format!("{}.pub", ka.display())));
    let (r, _) = attack(&ka, "admin", true);
    assert_eq!(r.code, 0, "{}", r.stderr);
    common::wait_until("the key_bound webhook", Duration::from_secs(30), || {
        f.hooks
            .lock()
            .unwrap()
            .iter()
            .any(|h| h["event"] == "key_bound" && h["fingerprint"] == fp.as_str())
    });
    let hook = f
        .hooks
        .lock()
        .unwrap()
        .iter()
        .find(|h| h["fingerprint"] == fp.as_str())
        .cloned()
        .unwrap();
    assert_eq!(hook["principal"], "admin");
    assert!(
        hook["client_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    // The victim's next login (their own token, another key) is told.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let token = rt.block_on(f.idp.device_flow_id_token("admin"));
    let own = new_key("victim");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = f.gateway.ssh_with_key(
        &format!("root@{}", f.container.name),
        &own,
        &token,
        dir.path(),
    );
    cmd.arg("true");
    let r = run_ssh(&mut cmd, b"");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("A new key {fp} was bound to you from 127.0.0.1:")),
        "{}",
        r.stderr
    );
    // `keys` lists it; `keys revoke FP` ends it; K_A is refused.
    let broker = |line: &str| {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = f.gateway.ssh("portcullis", &token, dir.path());
        cmd.arg(line);
        run_ssh(&mut cmd, b"")
    };
    let listed = broker("keys");
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&fp),
        "{listed:?}"
    );
    let revoked = broker(&format!("keys revoke {fp}"));
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    let mut batch = f
        .gateway
        .ssh_batch(&format!("root@{}", f.container.name), &ka, None);
    batch.arg("id -un");
    assert_eq!(run_ssh(&mut batch, b"").code, 255);
    assert!(f.gateway.audit_events().iter().any(|e| {
        e["kind"] == "key_binding"
            && e["detail"]
                .as_str()
                .unwrap()
                .contains("revoked by its principal")
    }));
}

/// `auth.bind_keys_from_device_flow = false`: a device-flow login admits
/// its connection and binds nothing.
#[test]
fn device_flow_logins_need_not_bind_keys() {
    let f = fixture();
    let gateway = TestGateway::start(
        &f.idp.issuer,
        &format!(
            "[auth]\nfailure_delay = \"0s\"\nbind_keys_from_device_flow = false\n\
             [containers.{}]\nlabels = {{ env = \"dev\" }}\n",
            f.container.name
        ),
    );
    let k = new_key("no-bind");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = gateway.ssh_with_key(&format!("root@{}", f.container.name), &k, "", dir.path());
    cmd.arg("id -un");
    let ask = dir.path().to_path_buf();
    let (r, _) = run_with_browser(&mut cmd, dir.path(), &f.idp.issuer, move |url| {
        let code = code_in(&prompt_in(&ask));
        assert!(login_mjs(&[&url, "admin", &code]).status.success());
    });
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut batch = gateway.ssh_batch(&format!("root@{}", f.container.name), &k, None);
    batch.arg("id -un");
    assert_eq!(run_ssh(&mut batch, b"").code, 255, "not bound");
}
