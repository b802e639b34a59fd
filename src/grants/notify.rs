//! Webhook notifications of workflow events (issue 7, item 5) through an
//! outbox: each event is written to `webhook_outbox` (one row per URL)
//! right after the step it reports, and [`deliver_due`] posts due rows,
//! retrying with doubling waits (1 s up to `[grants] webhook_backoff_max`).
//! A webhook that is down never blocks a step and loses nothing. Gateways
//! sharing one database claim each row before posting it (a lease of
//! [`CLAIM_LEASE`]), so every event is posted by one of them only.
//!
//! Body: JSON with `event` (`request_created`, `approved`, `denied`,
//! `revoked`, `expired`, `break_glass`), the request's fields, `state`
//! (`pending`, `active`, ...), `approvers` (everyone who approved it so
//! far, in order), `actor`, `at` (unix ms) and a Slack-compatible `text`.
//! `approved` is sent for each approval: `state` is `active` for the one
//! that started the grant, `pending` while the policy wants more. With
//! `[grants] webhook_secret`, the header `X-Portcullis-Signature:
//! sha256=HEX` carries the HMAC-SHA256 (RFC 2104) of the body.

use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::config::GrantsConfig;
use crate::store::{AccessRequestRecord, ApprovalRecord, Store, StoreError, now_ms};

/// Most outbox rows posted per round.
const BATCH: i64 = 50;

/// Timeout of one delivery attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a claim on an outbox row holds: well above one attempt, so a
/// row is never posted by two gateways at once; a gateway that dies
/// mid-delivery frees its row when the lease runs out. Gateways sharing a
/// database must keep their clocks within this of each other.
pub const CLAIM_LEASE: Duration = Duration::from_secs(30);

/// The header that carries the body's HMAC-SHA256.
pub const SIGNATURE_HEADER: &str = "X-Portcullis-Signature";

/// Queues `event` about request `r` (with its `approvals` so far, empty
/// when they do not matter) by `actor` for every configured webhook. A
/// database failure is logged: the step itself already happened and is in
/// the audit log.
pub async fn notify(
    store: &Store,
    config: &GrantsConfig,
    event: &str,
    r: &AccessRequestRecord,
    approvals: &[ApprovalRecord],
    actor: &str,
) {
    if config.webhooks.is_empty() {
        return;
    }
    let what = format!("{}@{}", r.login, r.container);
    let text = match event {
        "request_created" => format!(
            "{} asks for {what} for {}s: {} (request {})",
            r.requester, r.duration_seconds, r.reason, r.id
        ),
        "approved" if r.status == "pending" => format!(
            "{actor} approved {}'s request for {what} ({}): {} approval(s) so far, \
             still pending",
            r.requester,
            r.id,
            approvals.len()
        ),
        "approved" => format!(
            "{actor} approved {}'s access to {what} ({})",
            r.requester, r.id
        ),
        "denied" => format!(
            "{actor} denied {}'s request for {what} ({})",
            r.requester, r.id
        ),
        "revoked" => format!(
            "{actor} revoked {}'s access to {what} ({})",
            r.requester, r.id
        ),
        "expired" => format!("{}'s access to {what} expired ({})", r.requester, r.id),
        "request_expired" => format!(
            "{}'s request for {what} expired undecided ({})",
            r.requester, r.id
        ),
        "break_glass" => format!(
            ":rotating_light: BREAK-GLASS: {} took {what} for {}s: {} ({})",
            r.requester, r.duration_seconds, r.reason, r.id
        ),
        other => format!("{other}: {} {what} ({})", r.requester, r.id),
    };
    let body = json!({
        "event": event,
        "id": r.id,
        "requester": r.requester,
        "container": r.container,
        "login": r.login,
        "duration_seconds": r.duration_seconds,
        "reason": r.reason,
        "break_glass": r.break_glass,
        "expires_at": r.expires_at,
        "state": r.state_at(now_ms()),
        "approvers": approvals.iter().map(|a| a.approver.as_str()).collect::<Vec<_>>(),
        "actor": actor,
        "at": now_ms(),
        // Slack renders `<!channel>` and `<URL|text>`: escaped (review L1).
        "text": crate::text::slack_escape(&crate::text::display_safe(&text)),
    })
    .to_string();
    if let Err(e) = store.enqueue_webhooks(&config.webhooks, &body).await {
        tracing::error!(error = %e, %event, id = %r.id, "cannot queue webhook notification");
    }
}

/// Posts every due outbox row once, each after claiming it for `claimer`
/// (a name unique to this delivery worker: gateway id and a per-process
/// random part) with a lease of [`CLAIM_LEASE`]; a row another gateway
/// claimed is left to it, so gateways sharing a database never post the
/// same row twice. Failures are rescheduled with a doubling wait. Returns
/// how many were delivered.
///
/// # Errors
/// [`StoreError`] when the outbox cannot be read or updated.
pub async fn deliver_due(
    store: &Store,
    config: &GrantsConfig,
    client: &reqwest::Client,
    claimer: &str,
) -> Result<usize, StoreError> {
    let mut delivered = 0;
    let lease = i64::try_from(CLAIM_LEASE.as_millis()).unwrap_or(i64::MAX);
    for (id, url, body, attempts) in store.due_webhooks(now_ms(), BATCH).await? {
        let now = now_ms();
        if !store
            .claim_webhook(id, claimer, now, now.saturating_add(lease))
            .await?
        {
            tracing::debug!(id, "webhook row claimed by another gateway");
            continue;
        }
        let mut request = client
            .post(&url)
            .timeout(ATTEMPT_TIMEOUT)
            .header("Content-Type", "application/json")
            .body(body.clone());
        if let Some(secret) = &config.webhook_secret {
            let mac = hmac_sha256(secret.expose().as_bytes(), body.as_bytes());
            request = request.header(SIGNATURE_HEADER, format!("sha256={}", hex::encode(mac)));
        }
        let outcome = match request.send().await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => Err(format!("HTTP {}", resp.status().as_u16())),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => {
                store.webhook_delivered(id).await?;
                delivered += 1;
            }
            Err(error) => {
                let attempts = attempts.saturating_add(1);
                let wait = backoff(attempts, config.webhook_backoff_max);
                tracing::warn!(%url, attempts, %error, "webhook delivery failed; will retry");
                store
                    .webhook_failed(
                        id,
                        claimer,
                        attempts,
                        now_ms() + wait.as_millis() as i64,
                        &error,
                    )
                    .await?;
            }
        }
    }
    Ok(delivered)
}

/// The wait after `attempts` failures: 1 s, 2 s, 4 s, ... up to `max`.
pub fn backoff(attempts: i64, max: Duration) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    Duration::from_secs(1u64 << exp).min(max)
}

/// HMAC-SHA256 of `message` under `key` (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let max = Duration::from_secs(10);
        assert_eq!(backoff(1, max), Duration::from_secs(1));
        assert_eq!(backoff(3, max), Duration::from_secs(4));
        assert_eq!(backoff(60, max), max);
    }

    #[tokio::test]
    async fn an_approval_that_leaves_the_request_pending_says_so() {
        let (_dir, store) = crate::store::tests::temp_store().await;
        let config = GrantsConfig {
            webhooks: vec!["http://127.0.0.1:9/hook".into()],
            ..Default::default()
        };
        let r = AccessRequestRecord {
            id: "r1".into(),
            requester: "alice".into(),
            container: "db1".into(),
            login: "root".into(),
            duration_seconds: 600,
            reason: "OPS-1".into(),
            status: "pending".into(),
            created_at: 1,
            decided_by: None,
            decided_at: None,
            decision_comment: None,
            starts_at: None,
            expires_at: None,
            revoked_at: None,
            revoked_by: None,
            revoke_reason: None,
            break_glass: false,
            reviewed_by: None,
            reviewed_at: None,
            review_comment: None,
            action: None,
            gateway: None,
            labels: None,
            pending_until: None,
        };
        let approvals = [ApprovalRecord {
            request_id: "r1".into(),
            approver: "bob".into(),
            comment: None,
            approved_at: 2,
        }];
        notify(&store, &config, "approved", &r, &approvals, "bob").await;
        let due = store.due_webhooks(now_ms(), 10).await.unwrap();
        assert_eq!(due.len(), 1);
        let body: serde_json::Value = serde_json::from_str(&due[0].2).unwrap();
        assert_eq!(body["event"], "approved");
        assert_eq!(body["state"], "pending");
        assert_eq!(body["approvers"], json!(["bob"]));
        assert_eq!(
            body["text"],
            "bob approved alice's request for root@db1 (r1): 1 approval(s) so far, still pending"
        );
    }
}
