//! Comparing the database with an anchor (`audit verify --anchor`): every
//! head and event the anchor holds must be in the database unchanged; the
//! first event where they part is named.
//!
//! Never writes; trusts the anchor's heads only when they are signed by a
//! trusted key.

use std::collections::HashMap;

use serde::Serialize;

use super::AuditError;
use super::anchor::{Anchor, read_anchor};
use super::head::{TrustedKeys, check_signature, head_digest};
use crate::store::{AuditRow, SignedHead, Store};

/// Where the database parts from the anchor.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Divergence {
    /// The first event known to differ (or, from heads alone, the signed
    /// event of the first head that does not match: the part is at or
    /// before it).
    pub event_id: i64,
    /// From heads alone: the newest event still known to match, so the part
    /// lies after it.
    pub after_event: Option<i64>,
    /// What differs.
    pub problem: String,
}

/// The outcome of [`compare_anchor`].
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct AnchorReport {
    /// The anchor's path or URL.
    pub source: String,
    /// Heads in the anchor.
    pub heads: usize,
    /// Events in the anchor (an export).
    pub events: usize,
    /// Anchored heads found unchanged in the database.
    pub matching_heads: usize,
    /// Anchored events found unchanged in the database.
    pub matching_events: usize,
    /// The first event where the database parts from the anchor.
    pub first_divergence: Option<Divergence>,
    /// Every anchored head or event that the database lacks or holds
    /// differently, and anchor entries that do not verify.
    pub problems: Vec<String>,
    /// Heads in the database the anchor does not hold (a sink that failed,
    /// or another gateway's anchor): informational.
    pub not_anchored: Vec<i64>,
}

impl AnchorReport {
    /// True when the database holds everything the anchor holds.
    pub fn ok(&self) -> bool {
        self.first_divergence.is_none() && self.problems.is_empty()
    }

    /// The report for people, ending in `OK` or `FAILED`.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "anchor {}: {} heads ({} match the database), {} events ({} match)",
            self.source, self.heads, self.matching_heads, self.events, self.matching_events
        )];
        if let Some(d) = &self.first_divergence {
            out.push(match d.after_event {
                Some(after) => format!(
                    "BAD the database parts from the anchor after event {after}, at or before event {}: {}",
                    d.event_id, d.problem
                ),
                None => format!(
                    "BAD the database parts from the anchor at event {}: {}",
                    d.event_id, d.problem
                ),
            });
        }
        for p in &self.problems {
            out.push(format!("BAD {p}"));
        }
        if !self.not_anchored.is_empty() {
            out.push(format!(
                "note: {} heads of the database are not in this anchor (first: {})",
                self.not_anchored.len(),
                self.not_anchored[0]
            ));
        }
        out.push(if self.ok() { "OK" } else { "FAILED" }.to_string());
        out
    }
}

/// Reads the anchor at `location` (a directory of head files, a JSON-lines
/// export, or an object store URL) and compares the database with it.
///
/// # Errors
/// [`AuditError::AnchorRead`] / [`AuditError::AnchorUrl`] when the anchor
/// cannot be read, [`AuditError::Database`].
pub async fn verify_anchor(
    store: &Store,
    location: &str,
    trusted: &TrustedKeys,
) -> Result<AnchorReport, AuditError> {
    let anchor = read_anchor(location).await?;
    let events = store.audit_events(None).await?;
    let heads = store.signed_heads().await?;
    Ok(compare_anchor(&anchor, &events, &heads, trusted))
}

/// Compares `events` and `heads` (the database) with `anchor`.
pub fn compare_anchor(
    anchor: &Anchor,
    events: &[AuditRow],
    heads: &[SignedHead],
    trusted: &TrustedKeys,
) -> AnchorReport {
    let mut report = AnchorReport {
        source: anchor.source.clone(),
        heads: anchor.heads.len(),
        events: anchor.events.len(),
        ..AnchorReport::default()
    };
    for u in &anchor.unreadable {
        report
            .problems
            .push(format!("anchor entry {u} is neither a head nor an event"));
    }
    let by_id: HashMap<i64, &AuditRow> = events.iter().map(|e| (e.id, e)).collect();
    let mut divergences: Vec<Divergence> = Vec::new();

    // Events (an export): exact.
    let mut seen: HashMap<i64, &AuditRow> = HashMap::new();
    for anchored in &anchor.events {
        if let Some(first) = seen.get(&anchored.id) {
            if first.hash != anchored.hash {
                report.problems.push(format!(
                    "the anchor holds two different events {}: the log was cut there and written again",
                    anchored.id
                ));
            }
            continue;
        }
        seen.insert(anchored.id, anchored);
        match by_id.get(&anchored.id) {
            None => divergences.push(Divergence {
                event_id: anchored.id,
                after_event: None,
                problem: format!(
                    "event {} is in the anchor but not in the database",
                    anchored.id
                ),
            }),
            Some(row) if !differing_fields(row, anchored).is_empty() => {
                divergences.push(Divergence {
                    event_id: anchored.id,
                    after_event: None,
                    problem: format!(
                        "event {} ({}) differs from the anchor ({})",
                        anchored.id,
                        describe(anchored),
                        differing_fields(row, anchored).join(", ")
                    ),
                })
            }
            Some(_) => report.matching_events += 1,
        }
    }

    // Heads: by place in the chain of heads.
    let db_heads: HashMap<i64, &SignedHead> =
        heads.iter().filter_map(|h| h.seq.map(|s| (s, h))).collect();
    let mut anchored_heads: Vec<SignedHead> =
        anchor.heads.iter().map(|h| h.to_signed_head()).collect();
    anchored_heads.sort_by_key(|h| (h.seq.unwrap_or(0), h.event_id));
    let mut last_match: Option<i64> = None;
    for head in &anchored_heads {
        let seq = head.seq.unwrap_or(0);
        if let Err(problem) = check_signature(head, trusted) {
            report
                .problems
                .push(format!("anchored head {seq} does not verify: {problem}"));
            continue;
        }
        let db_head = db_heads.get(&seq);
        let event = by_id.get(&head.event_id);
        let problem = match (db_head, event) {
            (_, None) => Some(format!(
                "anchored head {seq} signs event {}, which the database no longer holds",
                head.event_id
            )),
            (_, Some(e)) if e.hash != head.event_hash => Some(format!(
                "anchored head {seq} signs event {} with hash {}, the database's has {}",
                head.event_id, head.event_hash, e.hash
            )),
            (None, _) => Some(format!("anchored head {seq} is not in the database")),
            (Some(d), _) if head_digest(d) != head_digest(head) => Some(format!(
                "anchored head {seq} differs from the database's head {seq}"
            )),
            _ => None,
        };
        match problem {
            Some(problem) => {
                report.problems.push(problem.clone());
                divergences.push(Divergence {
                    event_id: head.event_id,
                    after_event: last_match,
                    problem,
                });
            }
            None => {
                report.matching_heads += 1;
                last_match = Some(last_match.map_or(head.event_id, |m| m.max(head.event_id)));
            }
        }
    }
    let anchored_seqs: Vec<i64> = anchored_heads.iter().filter_map(|h| h.seq).collect();
    report.not_anchored = heads
        .iter()
        .filter_map(|h| h.seq)
        .filter(|s| !anchored_seqs.contains(s))
        .collect();
    // The earliest part wins; an exact (event) one over a head's range.
    divergences.sort_by_key(|d| (d.event_id, d.after_event.is_some()));
    report.first_divergence = divergences.into_iter().next();
    report
}

/// `kind of session S`, or `kind` for an event outside a session.
fn describe(e: &AuditRow) -> String {
    match &e.session_id {
        Some(s) => format!("{} of session {s}", e.kind),
        None => e.kind.clone(),
    }
}

/// The names of the columns in which `row` and `anchored` differ.
fn differing_fields(row: &AuditRow, anchored: &AuditRow) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |name: &'static str, same: bool| {
        if !same {
            out.push(name);
        }
    };
    check("time", row.at == anchored.at);
    check("kind", row.kind == anchored.kind);
    check("outcome", row.outcome == anchored.outcome);
    check("session_id", row.session_id == anchored.session_id);
    check("principal", row.principal == anchored.principal);
    check("client_addr", row.client_addr == anchored.client_addr);
    check("detail", same_json(&row.detail, &anchored.detail));
    check("prev_hash", row.prev_hash == anchored.prev_hash);
    check("hash", row.hash == anchored.hash);
    out
}

fn same_json(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}
