//! Verifying the whole evidence in the database: the hash chain, the chain
//! of signed heads and their keys, continuous signature coverage, and every
//! recording against its session row and its `session_end` event. The
//! result is typed ([`VerifyReport`]) for the CLI and the web console.
//!
//! Never writes anything; never trusts a key it was not given.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use super::AuditError;
use super::check::{
    Coverage, Limits, SignatureProblem, Signer, Stretch, check_chain, check_coverage, check_heads,
};
use super::head::{TrustedKeys, check_sshsig};
use crate::config::{Config, RecordingConfig};
use crate::recording::{Digest256, MANIFEST_NAMESPACE};
use crate::store::{AuditRow, SessionRecord, Store, now_ms};
use russh::keys::PublicKey;

/// What [`verify`] trusts and how it judges coverage.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Keys whose heads count.
    pub trusted: TrustedKeys,
    /// Signing interval and slack.
    pub limits: Limits,
    /// "Now", unix ms (the unsigned tail's age is measured to it).
    pub now_ms: i64,
    /// Notes about how the options were made (e.g. an unreadable host key).
    pub notes: Vec<String>,
}

impl VerifyOptions {
    /// From `config`: this host's key (when it can be read) and every
    /// `audit.trusted_keys` entry; `audit.sign_interval` and
    /// `audit.sign_slack`; now. A host key that cannot be read is not
    /// replaced by anything: only the listed keys are trusted then (none
    /// when the list is empty).
    pub fn from_config(config: &Config) -> VerifyOptions {
        let mut trusted = TrustedKeys::default();
        let mut notes = Vec::new();
        let path = config.host_key_path();
        match russh::keys::load_secret_key(&path, None) {
            Ok(key) => trusted.add(key.public_key().clone(), "this host's key"),
            Err(e) => notes.push(format!(
                "the host key {} cannot be read ({e}): only audit.trusted_keys are trusted",
                path.display()
            )),
        }
        for (i, line) in config.audit.trusted_keys.iter().enumerate() {
            let source = format!("audit.trusted_keys[{i}]");
            if let Err(e) = trusted.add_line(line, &source) {
                notes.push(format!("{source} is not a public key: {e}"));
            }
        }
        VerifyOptions {
            trusted,
            limits: Limits {
                sign_interval_ms: config.audit.sign_interval.as_millis() as i64,
                slack_ms: config.audit.sign_slack.as_millis() as i64,
            },
            now_ms: now_ms(),
            notes,
        }
    }
}

/// A recording that does not match its records.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RecordingProblem {
    /// The session.
    pub session_id: String,
    /// What does not match.
    pub problem: String,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events checked.
    pub events: usize,
    /// Recordings checked.
    pub recordings: usize,
    /// Signed heads checked.
    pub signatures: usize,
    /// Signed heads that check out.
    pub valid_signatures: usize,
    /// The newest event covered by a valid head.
    pub signed_through_event: Option<i64>,
    /// The first event that breaks the chain (`(event id, problem)`).
    pub first_bad_event: Option<(i64, String)>,
    /// Every recording that does not match.
    pub bad_recordings: Vec<RecordingProblem>,
    /// Every signed head that does not check out.
    pub bad_signatures: Vec<SignatureProblem>,
    /// Stretches of events signed too late, or never while they should
    /// have been (failures).
    pub gaps: Vec<Stretch>,
    /// Stretches sealed late by a gateway's start (it was not running):
    /// reported, not failures.
    pub sealed_at_start: Vec<Stretch>,
    /// Events after the newest valid head.
    pub unsigned_tail: Option<Stretch>,
    /// True when the unsigned tail is older than the signing interval plus
    /// slack (a failure), or when nothing at all is signed.
    pub tail_unsigned_too_long: bool,
    /// The signing keys seen, and whether each is trusted.
    pub signers: Vec<Signer>,
    /// The limits applied.
    pub limits: Option<Limits>,
    /// Notes (an unreadable host key, ...).
    pub notes: Vec<String>,
}

impl VerifyReport {
    /// True when nothing failed.
    pub fn ok(&self) -> bool {
        self.first_bad_event.is_none()
            && self.bad_recordings.is_empty()
            && self.bad_signatures.is_empty()
            && self.gaps.is_empty()
            && !self.tail_unsigned_too_long
    }

    /// The report for people: one line per finding, `BAD ...` for
    /// failures, ending in `OK` or `FAILED`.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "checked {} events, {} signed heads ({} valid), {} recordings",
            self.events, self.signatures, self.valid_signatures, self.recordings
        )];
        for s in &self.signers {
            out.push(format!(
                "signer {} ({}): {} heads, {}",
                s.fingerprint,
                s.gateways.join(", "),
                s.heads,
                s.trusted_as
                    .as_deref()
                    .map(|t| format!("trusted as {t}"))
                    .unwrap_or_else(|| "NOT TRUSTED".to_string())
            ));
        }
        for n in &self.notes {
            out.push(format!("note: {n}"));
        }
        if let Some((id, problem)) = &self.first_bad_event {
            out.push(format!("BAD event {id}: {problem}"));
        }
        for s in &self.bad_signatures {
            out.push(format!(
                "BAD signature {} (head {}, event {}): {}",
                s.signature_id,
                s.seq.map(|q| q.to_string()).unwrap_or_else(|| "v1".into()),
                s.event_id,
                s.problem
            ));
        }
        for g in &self.gaps {
            out.push(format!("BAD gap: {}", describe_stretch(g)));
        }
        for g in &self.sealed_at_start {
            out.push(format!("note: {}", describe_stretch(g)));
        }
        if let Some(t) = &self.unsigned_tail {
            let prefix = if self.tail_unsigned_too_long {
                "BAD unsigned tail"
            } else {
                "live tail (not yet signed)"
            };
            out.push(format!("{prefix}: {}", describe_stretch(t)));
        }
        for r in &self.bad_recordings {
            out.push(format!(
                "BAD recording of session {}: {}",
                r.session_id, r.problem
            ));
        }
        out.push(if self.ok() { "OK" } else { "FAILED" }.to_string());
        out
    }
}

/// One line about a stretch of events and its signature.
pub fn describe_stretch(s: &Stretch) -> String {
    let events = if s.first_event == s.last_event {
        format!("event {}", s.first_event)
    } else {
        format!("events {}..{}", s.first_event, s.last_event)
    };
    let waited = humantime::format_duration(std::time::Duration::from_secs(
        (s.waited_ms.max(0) as u64) / 1000,
    ));
    match (s.signed_by_seq, &s.sealed_at_start_of) {
        (None, _) => format!("{events} not signed, the oldest written {waited} ago"),
        (Some(seq), Some(gateway)) => format!(
            "{events} waited {waited} for head {seq}, signed when gateway {gateway} started (it was not running)"
        ),
        (Some(seq), None) => {
            format!("{events} waited {waited} for their first signed head ({seq})")
        }
    }
}

/// Checks `rows` (the whole log) and `heads` with `options`; recordings are
/// not looked at. Shared by [`verify`], bundles and the report.
pub(crate) fn verify_events(
    rows: &[AuditRow],
    heads: &[crate::store::SignedHead],
    options: &VerifyOptions,
    from_genesis: bool,
) -> VerifyReport {
    let mut report = VerifyReport {
        events: rows.len(),
        signatures: heads.len(),
        limits: Some(options.limits),
        notes: options.notes.clone(),
        first_bad_event: check_chain(rows, from_genesis),
        ..VerifyReport::default()
    };
    let hashes: HashMap<i64, &str> = rows.iter().map(|e| (e.id, e.hash.as_str())).collect();
    let first_event = if from_genesis {
        1
    } else {
        rows.first().map(|r| r.id).unwrap_or(1)
    };
    let check = check_heads(heads, &hashes, first_event, &options.trusted, from_genesis);
    let valid: Vec<&crate::store::SignedHead> = check.valid.iter().map(|&i| &heads[i]).collect();
    report.valid_signatures = valid.len();
    report.bad_signatures = check.bad;
    report.signers = check.signers;
    report.signed_through_event = valid.last().map(|h| h.event_id);
    let Coverage {
        gaps,
        sealed_at_start,
        unsigned_tail,
    } = check_coverage(rows, &valid, options.limits, options.now_ms);
    report.gaps = gaps;
    report.sealed_at_start = sealed_at_start;
    report.tail_unsigned_too_long = match &unsigned_tail {
        Some(t) => valid.is_empty() || t.waited_ms > options.limits.max_wait_ms(),
        None => false,
    };
    report.unsigned_tail = unsigned_tail;
    if options.trusted.is_empty() && !heads.is_empty() {
        report
            .notes
            .push("no signing key is trusted: every head is refused".to_string());
    }
    report
}

/// Checks the chain, every signed head (its event exists with that hash, it
/// is signed by a trusted key, it verifies, it follows the head before it),
/// continuous coverage (no stretch of events waits longer than the signing
/// interval plus slack for its first head, except one sealed by a
/// gateway's start; an unsigned tail older than that, or nothing signed at
/// all, fails), and every ended session's recording (file SHA-256 equals the
/// row's and the one in its `session_end` event; for a session a fleet
/// edge relayed, the output it holds equals the edge's witness). Recordings are read from
/// local disk only: [`verify_with_recordings`] also reads them from object
/// storage.
///
/// Limit: a database writer can still cut the log back to an earlier signed
/// head and drop everything after it; only an anchor outside the database
/// shows that ([`super::verify_anchor`]).
///
/// # Errors
/// [`AuditError::Database`] when the database cannot be read.
pub async fn verify(store: &Store, options: &VerifyOptions) -> Result<VerifyReport, AuditError> {
    verify_with_recordings(store, options, &RecordingConfig::default()).await
}

/// [`verify`], with each recording read wherever it is now
/// ([`crate::recording::open`] with `recording`, the `[recording]`
/// section): the local file while it exists, else the object store's copy,
/// which must match its manifest (size, SHA-256) and whose manifest must
/// carry a valid SSHSIG (namespace [`MANIFEST_NAMESPACE`], OpenSSH
/// `PROTOCOL.sshsig`) by a key in `options.trusted`.
///
/// # Errors
/// [`AuditError::Database`] when the database cannot be read.
pub async fn verify_with_recordings(
    store: &Store,
    options: &VerifyOptions,
    recording: &RecordingConfig,
) -> Result<VerifyReport, AuditError> {
    let events = store.audit_events(None).await?;
    let heads = store.signed_heads().await?;
    let mut report = verify_events(&events, &heads, options, true);
    let ended_digests = audited_digests(&events);
    for session in store.list_sessions(i64::MAX).await? {
        let Some(row_sha) = session.recording_sha256.clone().filter(|s| !s.is_empty()) else {
            continue;
        };
        report.recordings += 1;
        let found = recording_digest(store, recording, &session, &options.trusted).await;
        let problem = match found {
            Err(problem) => Some(problem),
            Ok(d) if d.sha256 != row_sha => Some(format!(
                "recording SHA-256 {} differs from the session row's {row_sha}",
                d.sha256
            )),
            Ok(d) => match ended_digests.get(&session.id) {
                None => Some("no session_end audit event holds its digest".to_string()),
                Some(audited) if *audited != d.sha256 => Some(format!(
                    "recording SHA-256 {} differs from the audited {audited}",
                    d.sha256
                )),
                Some(_) => None,
            },
        };
        if let Some(problem) = problem {
            report.bad_recordings.push(RecordingProblem {
                session_id: session.id.clone(),
                problem,
            });
        }
        if let Some(problem) = witness_problem(store, recording, &session).await? {
            report.bad_recordings.push(RecordingProblem {
                session_id: session.id,
                problem,
            });
        }
    }
    Ok(report)
}

/// For a session a fleet edge relayed, its witness (`fleet_witness`: the
/// output as relayed, digested as a recording holds it) against the
/// output in the node's recording (its `o` events, wherever the recording
/// is now): a node that truncated, edited or never recorded that output is
/// caught, whatever its own row and events say. `None` when it matches or
/// no edge witnessed the session.
///
/// # Errors
/// [`AuditError::Database`] when the witness cannot be read.
async fn witness_problem(
    store: &Store,
    recording: &RecordingConfig,
    session: &SessionRecord,
) -> Result<Option<String>, AuditError> {
    let Some(witness) = store.witness(&session.id).await? else {
        return Ok(None);
    };
    let path = Path::new(&session.recording_path);
    let bytes = if path.exists() {
        std::fs::read(path).map_err(|e| e.to_string())
    } else {
        crate::recording::open(recording, store, &session.id, &session.recording_path)
            .await
            .map(|opened| opened.bytes)
            .map_err(|e| e.to_string())
    };
    let events = bytes.and_then(|b| {
        let text = String::from_utf8(b).map_err(|e| e.to_string())?;
        crate::recording::parse(&text)
            .map(|(_, events)| events)
            .map_err(|e| e.to_string())
    });
    let events = match events {
        Ok(events) => events,
        Err(e) => {
            return Ok(Some(format!(
                "recording unreadable, so not compared with edge {}'s witness: {e}",
                witness.edge
            )));
        }
    };
    let (sha256, text_bytes) = recorded_output_digest(&events);
    if sha256 == witness.output_sha256 {
        return Ok(None);
    }
    Ok(Some(format!(
        "the output in node {}'s recording ({text_bytes} bytes of text, SHA-256 {sha256}) \
         differs from what edge {} relayed ({} bytes, SHA-256 {})",
        witness.node, witness.edge, witness.output_bytes, witness.output_sha256
    )))
}

/// SHA-256 (lowercase hex) and length of the output an asciicast v2
/// recording holds: its `o` events' text in order, as UTF-8 (what the
/// edge's witness digests, `fleet::relay::Witness`).
fn recorded_output_digest(events: &[crate::recording::Event]) -> (String, u64) {
    use sha2::Digest as _;
    let mut sha256 = sha2::Sha256::new();
    let mut len = 0u64;
    for event in events.iter().filter(|e| e.code == "o") {
        sha256.update(event.data.as_bytes());
        len += event.data.len() as u64;
    }
    (hex::encode(sha256.finalize()), len)
}

/// The digest of `session`'s recording: of the local file (read in pieces)
/// while it exists, else of the object store's copy, checked against its
/// manifest, whose signature must verify with a trusted key.
async fn recording_digest(
    store: &Store,
    recording: &RecordingConfig,
    session: &SessionRecord,
    trusted: &TrustedKeys,
) -> Result<Digest256, String> {
    let path = Path::new(&session.recording_path);
    if path.exists() {
        return crate::recording::digest_file(path)
            .map_err(|e| format!("recording unreadable: {e}"));
    }
    let opened = crate::recording::open(recording, store, &session.id, &session.recording_path)
        .await
        .map_err(|e| format!("recording unreadable: {e}"))?;
    if let Some(manifest) = &opened.manifest {
        let key = PublicKey::from_openssh(manifest.public_key.trim())
            .map_err(|e| format!("manifest key unreadable: {e}"))?;
        if trusted.source_of(&key).is_none() {
            return Err(format!(
                "manifest signed by an untrusted key {}",
                key.fingerprint(russh::keys::HashAlg::Sha256)
            ));
        }
        check_sshsig(
            &manifest.public_key,
            MANIFEST_NAMESPACE,
            manifest.signed_message().as_bytes(),
            &manifest.signature,
        )
        .map_err(|e| format!("manifest signature: {e}"))?;
    }
    Ok(crate::recording::digest_bytes(&opened.bytes))
}

/// Session id → recording SHA-256 from the `session_end` events of `events`
/// (the last one wins).
pub(crate) fn audited_digests(events: &[AuditRow]) -> HashMap<String, String> {
    events
        .iter()
        .filter(|e| e.kind == "session_end")
        .filter_map(|e| {
            let detail: serde_json::Value = serde_json::from_str(&e.detail).ok()?;
            let sha = detail.get("recording_sha256")?.as_str()?.to_string();
            Some((e.session_id.clone()?, sha))
        })
        .collect()
}
