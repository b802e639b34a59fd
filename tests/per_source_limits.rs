//! No one locks everyone out before authentication (issue 14, review
//! finding M4), end to end with the real gateway, the real OpenSSH client,
//! a russh client playing the hostile one, and the real IdP counting the
//! device authorizations it is asked for. The limits themselves
//! (`portcullis::throttle`) are unit-tested; these tests wait for the SSH
//! accept loop and the keyboard-interactive login to use them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::gateway::{TestGateway, run_ssh};
use common::idp::TestIdp;
use russh::client::KeyboardInteractiveAuthResponse;

/// A russh client that accepts any host key.
struct Client;

impl russh::client::Handler for Client {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

async fn device_authorizations(idp: &TestIdp) -> u64 {
    let stats: serde_json::Value = reqwest::get(format!("{}/admin/stats", idp.issuer))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stats["device_authorizations"].as_u64().unwrap()
}

/// OpenSSH's `PerSourceMaxStartups`: 200 idle TCP connections from
/// 127.0.0.2 hold at most `max_unauthenticated_per_source` of the 64
/// unauthenticated slots; a login from 127.0.0.1 goes through.
#[tokio::test]
async fn idle_connections_from_one_source_do_not_stop_a_login_from_another() {
    let idp = TestIdp::start();
    // Eight per source (the default; the tests' default is 64).
    let gateway = TestGateway::start(
        &idp.issuer,
        "[auth]\nfailure_delay = \"0s\"\nmax_unauthenticated_per_source = 8\n",
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", gateway.port).parse().unwrap();
    let mut idle = Vec::new();
    for _ in 0..200 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        if let Ok(stream) = socket.connect(addr).await {
            idle.push(stream);
        }
    }
    assert!(idle.len() >= 64, "{} idle connections opened", idle.len());
    let token = idp.mint_id_token(idp.standard_claims("admin"));
    let r = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = gateway.ssh("root@no-such-container", &token, dir.path());
        cmd.arg("true");
        (run_ssh(&mut cmd, b""), gateway)
    })
    .await
    .unwrap();
    let (r, gateway) = r;
    assert!(
        r.stderr.contains("no-such-container"),
        "authenticated, then the target is refused: {}\n{}",
        r.stderr,
        gateway.log()
    );
    drop(idle);
}

/// A client that restarts keyboard-interactive after each empty answer
/// (each empty answer starts a device authorization) gets at most
/// `device_authorizations_per_connection` per connection and
/// `device_authorizations_per_source` in all, counted at the IdP.
#[tokio::test]
async fn a_keyboard_interactive_loop_cannot_flood_the_idp() {
    let idp = TestIdp::start();
    let gateway = TestGateway::start(
        &idp.issuer,
        "[auth]\nfailure_delay = \"0s\"\ndevice_authorizations_per_connection = 1\n\
         device_authorizations_per_source = 3\n",
    );
    let before = device_authorizations(&idp).await;
    let config = Arc::new(russh::client::Config::default());
    let step = Duration::from_secs(20);
    for _ in 0..6 {
        let connect = russh::client::connect(config.clone(), ("127.0.0.1", gateway.port), Client);
        let Ok(Ok(mut handle)) = tokio::time::timeout(step, connect).await else {
            continue;
        };
        // Each new attempt, an empty answer at the token prompt: "log in
        // with the browser". (russh's server does not answer a new
        // attempt while one waits at the device prompt, so the second
        // round only probes that; reconnecting is the loop that works.)
        for patience in [step, Duration::from_secs(3)] {
            let start = handle.authenticate_keyboard_interactive_start("root@web1", None);
            let Ok(Ok(KeyboardInteractiveAuthResponse::InfoRequest { .. })) =
                tokio::time::timeout(patience, start).await
            else {
                break;
            };
            let answer = handle.authenticate_keyboard_interactive_respond(vec![String::new()]);
            if !matches!(tokio::time::timeout(step, answer).await, Ok(Ok(_))) {
                break;
            }
        }
        let _ = handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
    let asked = device_authorizations(&idp).await - before;
    assert!(asked >= 1, "the loop did reach the IdP");
    assert!(asked <= 3, "{asked} device authorizations for one source");
    // Audited: refusals name the budget.
    let audited = gateway.audit_events().into_iter().any(|e| {
        e["kind"] == "authentication"
            && e["detail"]
                .as_str()
                .unwrap_or("")
                .contains("device authorization")
    });
    assert!(audited);
}
