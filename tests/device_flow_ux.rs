//! The device flow as a person sees it (issue 4, item 7), through the real
//! gateway, the real OpenSSH client and the real IdP: the prompt shows the
//! URL, the code to type and how long the code is valid (a one-click link
//! and its QR code only with `auth.device_flow_complete_uri`, issue 14);
//! refusing in the browser or waiting too long ends with a clear message
//! and an audit event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::gateway::{TestGateway, run_with_browser};
use common::idp::TestIdp;

fn failure_reasons(gateway: &TestGateway) -> Vec<String> {
    gateway
        .audit_events()
        .into_iter()
        .filter(|e| e["kind"] == "authentication" && e["outcome"] == "failure")
        .map(|e| e["detail"].as_str().unwrap().to_string())
        .collect()
}

/// The code the prompt asks to type ("... confirm the code ABCD-EFGH.").
fn code_in(prompt: &str) -> String {
    let rest = prompt.split("confirm the code ").nth(1).unwrap();
    rest.split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches('.')
        .to_string()
}

#[test]
fn the_prompt_shows_url_code_and_validity_and_denial_is_clear() {
    let idp = Arc::new(TestIdp::start());
    let gateway = TestGateway::start(&idp.issuer, "");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = gateway.ssh("root@web1", "", dir.path());
    cmd.arg("true");
    let browser_idp = idp.clone();
    let ask = dir.path().to_path_buf();
    let (r, prompt) = run_with_browser(&mut cmd, dir.path(), &idp.issuer, move |url| {
        // The person opens the URL and types the code, then refuses.
        let prompt = std::fs::read_dir(&ask)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("prompt."))
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .unwrap();
        let typed = format!("{url}?user_code={}", code_in(&prompt));
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(browser_idp.deny_device_login(&typed));
    });
    assert!(prompt.contains("To log in, open"), "{prompt}");
    assert!(!prompt.contains("user_code="), "{prompt}");
    assert!(prompt.contains("confirm the code"), "{prompt}");
    assert_eq!(code_in(&prompt).len(), 9, "{prompt}");
    assert!(
        prompt.contains("The code is valid for 5 minutes."),
        "{prompt}"
    );
    let qr_lines = prompt
        .lines()
        .filter(|l| l.contains('▀') || l.contains('▄') || l.contains('█'))
        .count();
    assert_eq!(qr_lines, 0, "no QR code of a one-click link: {prompt}");
    assert_eq!(r.code, 255, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("Login failed: the login was refused in the browser."),
        "{}\n{}",
        r.stderr,
        gateway.log()
    );
    assert!(
        failure_reasons(&gateway)
            .iter()
            .any(|d| d.contains("denied"))
    );
}

#[test]
fn waiting_too_long_says_the_code_expired() {
    let idp = TestIdp::start_with_env(&[("DEVICE_CODE_TTL", "3")]);
    let gateway = TestGateway::start(&idp.issuer, "");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = gateway.ssh("root@web1", "", dir.path());
    cmd.arg("true");
    let (r, prompt) = run_with_browser(&mut cmd, dir.path(), &idp.issuer, |_url| {
        // The user goes for coffee.
        std::thread::sleep(Duration::from_secs(4));
    });
    assert!(prompt.contains("The code is valid for "), "{prompt}");
    assert!(prompt.contains(" seconds."), "{prompt}");
    assert_eq!(r.code, 255, "{}", r.stderr);
    assert!(
        r.stderr.contains("the login code expired"),
        "{}\n{}",
        r.stderr,
        gateway.log()
    );
    assert!(
        failure_reasons(&gateway)
            .iter()
            .any(|d| d.contains("expired"))
    );
}

/// `auth.device_flow_complete_uri = true` opts in to the one-click link
/// and its QR code (for IdPs that show the requesting device and ask to
/// confirm, where the link is convenient and the risk accepted).
#[test]
fn the_one_click_link_and_qr_code_are_opt_in() {
    let idp = Arc::new(TestIdp::start());
    let gateway = TestGateway::start(
        &idp.issuer,
        "[auth]\nfailure_delay = \"0s\"\ndevice_flow_complete_uri = true\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = gateway.ssh("root@web1", "", dir.path());
    cmd.arg("true");
    let browser_idp = idp.clone();
    let (r, prompt) = run_with_browser(&mut cmd, dir.path(), &idp.issuer, move |url| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(browser_idp.deny_device_login(&url));
    });
    assert!(prompt.contains("user_code="), "{prompt}");
    let qr_lines = prompt
        .lines()
        .filter(|l| l.contains('▀') || l.contains('▄') || l.contains('█'))
        .count();
    assert!(qr_lines > 10, "{prompt}");
    assert_eq!(r.code, 255, "{}", r.stderr);
}
