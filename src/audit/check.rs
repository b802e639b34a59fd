//! The checks of the evidence, as pure functions over events and heads
//! already read (from the database, an anchor or a bundle): the hash chain,
//! the chain of signed heads and their keys, and whether signatures cover
//! the log continuously.
//!
//! Never reads the database or files; never decides what to print.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::head::{GENESIS_DIGEST, TrustedKeys, check_signature, fingerprint_of, head_digest};
use crate::store::{AuditRow, GENESIS_HASH, SignedHead};

/// How often heads must come: a stretch of events first signed later than
/// `sign_interval_ms + slack_ms` after it was written is a gap.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limits {
    /// `audit.sign_interval`, ms.
    pub sign_interval_ms: i64,
    /// `audit.sign_slack`, ms.
    pub slack_ms: i64,
}

impl Limits {
    /// The longest an event may wait for its first signed head, ms.
    pub fn max_wait_ms(&self) -> i64 {
        self.sign_interval_ms + self.slack_ms
    }
}

/// A signed head that does not check out.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SignatureProblem {
    /// Row id of the signature (0 outside a database).
    pub signature_id: i64,
    /// Its place in the chain of heads (version 2).
    pub seq: Option<i64>,
    /// The event it signs.
    pub event_id: i64,
    /// What is wrong.
    pub problem: String,
}

/// A signing key seen on heads.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Signer {
    /// Gateway ids that used it.
    pub gateways: Vec<String>,
    /// `SHA256:...`.
    pub fingerprint: String,
    /// Heads it signed.
    pub heads: usize,
    /// Where it is trusted from, `None` when it is not trusted.
    pub trusted_as: Option<String>,
}

/// A stretch of events between two heads, and when they were first signed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Stretch {
    /// First event.
    pub first_event: i64,
    /// Last event.
    pub last_event: i64,
    /// The oldest event's time, unix ms.
    pub oldest_at: i64,
    /// The head that first signs them (`seq`), `None` for the unsigned tail.
    pub signed_by_seq: Option<i64>,
    /// How long the oldest waited for it (or has waited until now), ms.
    pub waited_ms: i64,
    /// The gateway whose start signed it, when the head is a `start` head.
    pub sealed_at_start_of: Option<String>,
}

/// The outcome of [`check_heads`].
#[derive(Debug, Default)]
pub struct HeadCheck {
    /// Heads that do not check out.
    pub bad: Vec<SignatureProblem>,
    /// Indices (into the heads given) of the heads that check out.
    pub valid: Vec<usize>,
    /// Keys seen.
    pub signers: Vec<Signer>,
}

/// The first event that breaks the chain of `rows` (`(event id, problem)`):
/// ids consecutive from the first row's, each `prev_hash` the hash before
/// (the first row's: [`GENESIS_HASH`] when `from_genesis`, and id 1), each
/// hash recomputed.
pub fn check_chain(rows: &[AuditRow], from_genesis: bool) -> Option<(i64, String)> {
    let start = if from_genesis {
        1
    } else {
        rows.first().map(|r| r.id)?
    };
    let mut prev_hash = rows.first().map(|r| r.prev_hash.clone())?;
    if from_genesis {
        prev_hash = GENESIS_HASH.to_string();
    }
    for (index, row) in rows.iter().enumerate() {
        let expected = start + index as i64;
        if row.id != expected {
            return Some((
                expected,
                format!("event {expected} is missing (next is {})", row.id),
            ));
        }
        if row.prev_hash != prev_hash {
            return Some((
                row.id,
                format!("event {} does not follow event {}", row.id, row.id - 1),
            ));
        }
        if row.computed_hash() != row.hash {
            return Some((row.id, format!("event {} was altered", row.id)));
        }
        prev_hash = row.hash.clone();
    }
    None
}

/// Checks each head: its event is among `hashes` (event id → hash) with that
/// hash (heads of events before `first_event` cannot be checked and are
/// taken as they are), it is signed by a trusted key and verifies, version 1
/// heads come before version 2 ones, and each version 2 head follows the one
/// before it (`seq` + 1, `prev_digest` its digest, the event not older).
/// `chain_starts` says whether the first head given starts the chain of
/// heads (a database) or may follow heads not given (a bundle).
pub fn check_heads(
    heads: &[SignedHead],
    hashes: &HashMap<i64, &str>,
    first_event: i64,
    trusted: &TrustedKeys,
    chain_starts: bool,
) -> HeadCheck {
    let mut out = HeadCheck::default();
    let mut signers: Vec<(String, Signer)> = Vec::new();
    let mut before: Option<&SignedHead> = None;
    for (index, head) in heads.iter().enumerate() {
        let problem = head_problem(head, before, hashes, first_event, trusted, chain_starts);
        let fingerprint = fingerprint_of(&head.public_key);
        match signers.iter_mut().find(|(f, _)| *f == fingerprint) {
            Some((_, s)) => {
                s.heads += 1;
                if !s.gateways.contains(&head.gateway) {
                    s.gateways.push(head.gateway.clone());
                }
            }
            None => {
                let trusted_as = russh::keys::PublicKey::from_openssh(head.public_key.trim())
                    .ok()
                    .and_then(|k| trusted.source_of(&k).map(str::to_string));
                signers.push((
                    fingerprint.clone(),
                    Signer {
                        gateways: vec![head.gateway.clone()],
                        fingerprint,
                        heads: 1,
                        trusted_as,
                    },
                ));
            }
        }
        match problem {
            Some(problem) => out.bad.push(SignatureProblem {
                signature_id: head.id,
                seq: head.seq,
                event_id: head.event_id,
                problem,
            }),
            None => out.valid.push(index),
        }
        before = Some(head);
    }
    out.signers = signers.into_iter().map(|(_, s)| s).collect();
    out
}

fn head_problem(
    head: &SignedHead,
    before: Option<&SignedHead>,
    hashes: &HashMap<i64, &str>,
    first_event: i64,
    trusted: &TrustedKeys,
    chain_starts: bool,
) -> Option<String> {
    if head.event_id >= first_event {
        match hashes.get(&head.event_id) {
            None => return Some(format!("signed event {} is missing", head.event_id)),
            Some(h) if *h != head.event_hash => {
                return Some(format!("signed event {} was altered", head.event_id));
            }
            Some(_) => {}
        }
    }
    if let Err(problem) = check_signature(head, trusted) {
        return Some(problem);
    }
    if head.version < 2 {
        return before
            .filter(|b| b.version >= 2)
            .map(|_| "an unchained (version 1) head after chained ones".to_string());
    }
    let seq = head.seq.unwrap_or(0);
    match before.filter(|b| b.version >= 2) {
        Some(b) => {
            let b_seq = b.seq.unwrap_or(0);
            if seq != b_seq + 1 {
                return Some(format!(
                    "head {seq} follows head {b_seq}: heads {}..{} are missing",
                    b_seq + 1,
                    seq - 1
                ));
            }
            if head.prev_digest != head_digest(b) {
                return Some(format!(
                    "head {seq} does not name head {b_seq} as the one before it"
                ));
            }
            if head.event_id < b.event_id {
                return Some(format!(
                    "head {seq} signs event {}, before event {} of head {b_seq}",
                    head.event_id, b.event_id
                ));
            }
            None
        }
        None if chain_starts => {
            let expected = before.map(head_digest);
            let expected = expected.as_deref().unwrap_or(GENESIS_DIGEST);
            if seq != 1 {
                Some(format!("heads 1..{} are missing", seq - 1))
            } else if head.prev_digest != expected {
                Some("the first chained head does not start the chain of heads".to_string())
            } else {
                None
            }
        }
        None => None,
    }
}

/// The outcome of [`check_coverage`].
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Coverage {
    /// Stretches first signed too late (failures).
    pub gaps: Vec<Stretch>,
    /// Stretches first signed late by a gateway's `start` head: written
    /// while no gateway was signing (a stop or crash); reported, not failed.
    pub sealed_at_start: Vec<Stretch>,
    /// Events after the newest valid head.
    pub unsigned_tail: Option<Stretch>,
}

/// Whether valid `heads` (in chain order, event ids not decreasing) cover
/// `rows` continuously: every stretch of events is first signed within
/// [`Limits::max_wait_ms`] of its oldest event, except a stretch sealed by a
/// `start` head that follows an earlier head (the gateway was not running);
/// the events after the newest head form the unsigned tail, aged at `now`.
pub fn check_coverage(
    rows: &[AuditRow],
    heads: &[&SignedHead],
    limits: Limits,
    now: i64,
) -> Coverage {
    let mut out = Coverage::default();
    let mut h = 0;
    let mut i = 0;
    while i < rows.len() {
        while h < heads.len() && heads[h].event_id < rows[i].id {
            h += 1;
        }
        let end_id = heads.get(h).map(|hd| hd.event_id).unwrap_or(i64::MAX);
        let start = i;
        while i < rows.len() && rows[i].id <= end_id {
            i += 1;
        }
        let stretch = &rows[start..i];
        let oldest_at = stretch.iter().map(|r| r.at).min().unwrap_or(now);
        let first_event = stretch.first().map(|r| r.id).unwrap_or(0);
        let last_event = stretch.last().map(|r| r.id).unwrap_or(0);
        match heads.get(h) {
            None => {
                out.unsigned_tail = Some(Stretch {
                    first_event,
                    last_event,
                    oldest_at,
                    signed_by_seq: None,
                    waited_ms: now - oldest_at,
                    sealed_at_start_of: None,
                });
            }
            Some(head) => {
                let waited_ms = head.at - oldest_at;
                if waited_ms > limits.max_wait_ms() {
                    let at_start = head.reason == "start" && h > 0;
                    let stretch = Stretch {
                        first_event,
                        last_event,
                        oldest_at,
                        signed_by_seq: head.seq,
                        waited_ms,
                        sealed_at_start_of: at_start.then(|| head.gateway.clone()),
                    };
                    if at_start {
                        out.sealed_at_start.push(stretch);
                    } else {
                        out.gaps.push(stretch);
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::store::chain_hash;

    fn rows(times: &[i64]) -> Vec<AuditRow> {
        let mut prev = GENESIS_HASH.to_string();
        times
            .iter()
            .enumerate()
            .map(|(i, &at)| {
                let id = i as i64 + 1;
                let hash = chain_hash(id, at, "k", "info", None, None, None, "{}", &prev);
                let row = AuditRow {
                    id,
                    at,
                    kind: "k".into(),
                    outcome: "info".into(),
                    session_id: None,
                    principal: None,
                    client_addr: None,
                    detail: "{}".into(),
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                row
            })
            .collect()
    }

    fn head(seq: i64, event_id: i64, at: i64, reason: &str) -> SignedHead {
        SignedHead {
            id: seq,
            at,
            event_id,
            event_hash: String::new(),
            public_key: String::new(),
            signature: String::new(),
            version: 2,
            seq: Some(seq),
            gateway: "gw-a".into(),
            reason: reason.into(),
            prev_digest: String::new(),
        }
    }

    const LIMITS: Limits = Limits {
        sign_interval_ms: 60_000,
        slack_ms: 60_000,
    };

    #[test]
    fn stretches_signed_in_time_pass_and_late_ones_are_gaps() {
        let r = rows(&[0, 1_000, 50_000, 200_000, 210_000, 400_000]);
        let h1 = head(1, 2, 60_000, "start");
        let h2 = head(2, 3, 110_000, "interval");
        // Events 4..5 wait 300 s for head 3: a gap.
        let h3 = head(3, 5, 500_000, "interval");
        let c = check_coverage(&r, &[&h1, &h2, &h3], LIMITS, 430_000);
        assert_eq!(c.gaps.len(), 1);
        assert_eq!((c.gaps[0].first_event, c.gaps[0].last_event), (4, 5));
        assert_eq!(c.gaps[0].waited_ms, 300_000);
        assert_eq!(c.gaps[0].signed_by_seq, Some(3));
        // Event 6 is the live tail, 30 s old.
        let tail = c.unsigned_tail.unwrap();
        assert_eq!((tail.first_event, tail.waited_ms), (6, 30_000));
        assert!(c.sealed_at_start.is_empty());
    }

    #[test]
    fn a_late_start_head_after_an_earlier_head_is_a_stop_not_a_gap() {
        let r = rows(&[0, 1_000, 10_000_000]);
        let h1 = head(1, 2, 30_000, "start");
        let h2 = head(2, 3, 20_000_000, "start");
        let c = check_coverage(&r, &[&h1, &h2], LIMITS, 20_000_001);
        assert!(c.gaps.is_empty());
        assert_eq!(c.sealed_at_start.len(), 1);
        assert_eq!(
            c.sealed_at_start[0].sealed_at_start_of.as_deref(),
            Some("gw-a")
        );
        assert!(c.unsigned_tail.is_none());
        // The very first head gets no such allowance: everything before
        // it had to be signed in time.
        let first = head(1, 3, 20_000_000, "start");
        let c = check_coverage(&r, &[&first], LIMITS, 20_000_001);
        assert_eq!(c.gaps.len(), 1);
        assert_eq!(c.gaps[0].first_event, 1);
    }

    #[test]
    fn the_chain_check_names_the_first_bad_event() {
        let mut r = rows(&[1, 2, 3, 4]);
        assert_eq!(check_chain(&r, true), None);
        r[2].principal = Some("mallory".into());
        assert_eq!(check_chain(&r, true).unwrap().0, 3);
        let r = rows(&[1, 2, 3, 4]);
        assert_eq!(check_chain(&r[1..], false), None);
        assert_eq!(check_chain(&r[1..], true).unwrap().0, 1);
    }
}
