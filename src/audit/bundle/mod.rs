//! Evidence bundles (`portcullis audit bundle`): one tar file holding the
//! events of a period, the signed heads that cover them, the signing keys,
//! the recordings of the sessions in range and a manifest of digests,
//! signed with the host key; `audit verify --bundle` checks it on a machine
//! with no database and no gateway ([`open`]).
//!
//! # Layout (schema `portcullis.bundle.v1`)
//!
//! | file | content |
//! | --- | --- |
//! | `portcullis-bundle/events.jsonl` | the events, one export line each (`portcullis.audit.v1`, see `export.rs`) |
//! | `portcullis-bundle/heads.jsonl` | the signed heads (`portcullis.audit-head.v1`, see `head.rs`) |
//! | `portcullis-bundle/keys.txt` | the signing keys, OpenSSH public key lines |
//! | `portcullis-bundle/sessions.jsonl` | the rows of the sessions in range (not chained: for reading) |
//! | `portcullis-bundle/recordings/ID.cast` | each ended session's asciicast v2 recording |
//! | `portcullis-bundle/manifest.json` | [`Manifest`]: period, filter, sessions, limits, every file's size and SHA-256 |
//! | `portcullis-bundle/manifest.sig` | SSHSIG of `manifest.json` (namespace [`MANIFEST_NAMESPACE`]) |
//!
//! The events are every event from the first one of the period (or of a
//! selected session) to the first signed head at or after the last one: the
//! hash chain can only be checked whole, so `--container` and
//! `--principal` select sessions and recordings, not events.
//!
//! Never modifies the database; never trusts a key carried in a bundle
//! unless told to.

pub mod open;

use std::io::Write;
use std::path::Path;

use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::AuditError;
use super::check::Limits;
use super::export::{line_of, rfc3339_ms};
use super::head::AnchoredHead;
use crate::store::{AuditRow, SessionRecord, SignedHead, Store, now_ms};

pub use open::{BundleReport, verify_bundle};

/// `schema` of a bundle's manifest.
pub const BUNDLE_SCHEMA: &str = "portcullis.bundle.v1";

/// SSHSIG namespace of the manifest signature (OpenSSH `PROTOCOL.sshsig`).
pub const MANIFEST_NAMESPACE: &str = "portcullis-bundle@portcullis";

/// The folder every file of a bundle is in.
pub const ROOT: &str = "portcullis-bundle";

/// What to pack.
#[derive(Debug, Clone, Default)]
pub struct BundleSpec {
    /// Start of the period, unix ms (included).
    pub from_ms: i64,
    /// End of the period, unix ms (included).
    pub to_ms: i64,
    /// Only the sessions on this container.
    pub container: Option<String>,
    /// Only the sessions of this principal.
    pub principal: Option<String>,
}

/// One file of the bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// Path in the tar.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`BUNDLE_SCHEMA`].
    pub schema: String,
    /// When the bundle was made, unix ms.
    pub created_at: i64,
    /// The same, RFC 3339 UTC.
    pub created_time: String,
    /// The gateway id of the host that made it.
    pub created_by: String,
    /// The period, unix ms (both included).
    pub from_ms: i64,
    /// End of the period.
    pub to_ms: i64,
    /// The container filter.
    pub container: Option<String>,
    /// The principal filter.
    pub principal: Option<String>,
    /// First event packed (`None`: no event).
    pub first_event: Option<i64>,
    /// Last event packed.
    pub last_event: Option<i64>,
    /// The sessions selected.
    pub sessions: Vec<String>,
    /// The signing limits the gateway was configured with.
    pub limits: Limits,
    /// Every other file of the bundle.
    pub files: Vec<ManifestFile>,
}

/// What [`write_bundle`] packed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BundleSummary {
    /// Events packed.
    pub events: usize,
    /// Signed heads packed.
    pub heads: usize,
    /// Sessions selected.
    pub sessions: usize,
    /// Recordings packed.
    pub recordings: usize,
    /// True when a signed head covers the last event packed.
    pub covered: bool,
    /// True when the manifest is signed.
    pub signed: bool,
}

/// Packs the evidence of `spec` from `store` into the tar file `out`
/// (created, never overwritten), the manifest signed with `key` when given.
///
/// # Errors
/// [`AuditError::Database`]; [`AuditError::BundleWrite`] when the file
/// cannot be created or written, or a recording cannot be read;
/// [`AuditError::Signing`].
pub async fn write_bundle(
    store: &Store,
    spec: &BundleSpec,
    limits: Limits,
    key: Option<&PrivateKey>,
    gateway: &str,
    out: &Path,
) -> Result<BundleSummary, AuditError> {
    let events = store.audit_events(None).await?;
    let heads = store.signed_heads().await?;
    let sessions: Vec<SessionRecord> = store
        .list_sessions(i64::MAX)
        .await?
        .into_iter()
        .filter(|s| selected(s, spec))
        .collect();
    let (segment, packed_heads) = segment_of(&events, &heads, &sessions, spec);
    let covered = segment
        .last()
        .is_some_and(|last| packed_heads.iter().any(|h| h.event_id >= last.id));
    let bad = |source: std::io::Error| AuditError::BundleWrite {
        path: out.display().to_string(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(bad)?;
    let created_at = now_ms();
    let mut tar = TarWriter {
        builder: tar::Builder::new(file),
        mtime: (created_at / 1000).max(0) as u64,
        files: Vec::new(),
    };
    let events_text: String = segment
        .iter()
        .map(|e| format!("{}\n", line_of(e)))
        .collect();
    tar.add("events.jsonl", events_text.as_bytes())
        .map_err(bad)?;
    let mut heads_text = String::new();
    let mut keys: Vec<String> = Vec::new();
    for h in &packed_heads {
        let line = serde_json::to_string(&AnchoredHead::of(h)).map_err(|e| bad(e.into()))?;
        heads_text.push_str(&line);
        heads_text.push('\n');
        if !keys.contains(&h.public_key) {
            keys.push(h.public_key.clone());
        }
    }
    if let Some(k) = key.and_then(|k| k.public_key().to_openssh().ok())
        && !keys.contains(&k)
    {
        keys.push(k);
    }
    tar.add("heads.jsonl", heads_text.as_bytes()).map_err(bad)?;
    let keys_text: String = keys.iter().map(|k| format!("{}\n", k.trim())).collect();
    tar.add("keys.txt", keys_text.as_bytes()).map_err(bad)?;
    let mut sessions_text = String::new();
    let mut recordings = 0;
    for s in &sessions {
        let line = serde_json::to_string(s).map_err(|e| bad(e.into()))?;
        sessions_text.push_str(&line);
        sessions_text.push('\n');
    }
    tar.add("sessions.jsonl", sessions_text.as_bytes())
        .map_err(bad)?;
    for s in sessions.iter().filter(|s| s.status != "running") {
        let bytes = match std::fs::read(&s.recording_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(bad(e)),
        };
        tar.add(&format!("recordings/{}.cast", s.id), &bytes)
            .map_err(bad)?;
        recordings += 1;
    }
    let manifest = Manifest {
        schema: BUNDLE_SCHEMA.to_string(),
        created_at,
        created_time: rfc3339_ms(created_at),
        created_by: gateway.to_string(),
        from_ms: spec.from_ms,
        to_ms: spec.to_ms,
        container: spec.container.clone(),
        principal: spec.principal.clone(),
        first_event: segment.first().map(|e| e.id),
        last_event: segment.last().map(|e| e.id),
        sessions: sessions.iter().map(|s| s.id.clone()).collect(),
        limits,
        files: tar.files.clone(),
    };
    let manifest_text = serde_json::to_vec_pretty(&manifest).map_err(|e| bad(e.into()))?;
    tar.add("manifest.json", &manifest_text).map_err(bad)?;
    if let Some(key) = key {
        let sig = key
            .sign(MANIFEST_NAMESPACE, HashAlg::Sha512, &manifest_text)
            .and_then(|s| s.to_pem(LineEnding::LF))
            .map_err(|e| AuditError::Signing(e.to_string()))?;
        tar.add("manifest.sig", sig.as_bytes()).map_err(bad)?;
    }
    let mut file = tar.builder.into_inner().map_err(bad)?;
    file.flush().and_then(|()| file.sync_all()).map_err(bad)?;
    Ok(BundleSummary {
        events: segment.len(),
        heads: packed_heads.len(),
        sessions: sessions.len(),
        recordings,
        covered,
        signed: key.is_some(),
    })
}

/// True when session `s` overlaps the period and passes the filters.
fn selected(s: &SessionRecord, spec: &BundleSpec) -> bool {
    s.started_at <= spec.to_ms
        && s.ended_at.unwrap_or(i64::MAX) >= spec.from_ms
        && spec.container.as_ref().is_none_or(|c| *c == s.container)
        && spec.principal.as_ref().is_none_or(|p| *p == s.principal)
}

/// The events to pack (from the first of the period or of a selected
/// session to the first head at or after the last of them) and the heads
/// (those inside, plus the one before, which the first names).
fn segment_of<'a>(
    events: &'a [AuditRow],
    heads: &'a [SignedHead],
    sessions: &[SessionRecord],
    spec: &BundleSpec,
) -> (&'a [AuditRow], Vec<&'a SignedHead>) {
    let ids: Vec<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
    let wanted = events.iter().filter(|e| {
        (e.at >= spec.from_ms && e.at <= spec.to_ms)
            || e.session_id.as_deref().is_some_and(|s| ids.contains(&s))
    });
    let (Some(first), Some(last)) = (
        wanted.clone().map(|e| e.id).min(),
        wanted.map(|e| e.id).max(),
    ) else {
        return (&[], Vec::new());
    };
    let end = heads
        .iter()
        .filter(|h| h.event_id >= last)
        .map(|h| h.event_id)
        .min()
        .unwrap_or(last);
    let segment: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.id >= first && e.id <= end)
        .map(|(i, _)| i)
        .collect();
    let segment = match (segment.first(), segment.last()) {
        (Some(&a), Some(&b)) => &events[a..=b],
        _ => &[],
    };
    let before = heads.iter().rposition(|h| h.event_id < first);
    let packed = heads
        .iter()
        .enumerate()
        .filter(|(i, h)| Some(*i) == before || (h.event_id >= first && h.event_id <= end))
        .map(|(_, h)| h)
        .collect();
    (segment, packed)
}

/// Appends files under [`ROOT`] and records their digests.
struct TarWriter {
    builder: tar::Builder<std::fs::File>,
    mtime: u64,
    files: Vec<ManifestFile>,
}

impl TarWriter {
    fn add(&mut self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let path = format!("{ROOT}/{name}");
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(self.mtime);
        header.set_entry_type(tar::EntryType::Regular);
        self.builder.append_data(&mut header, &path, bytes)?;
        if name != "manifest.json" && name != "manifest.sig" {
            self.files.push(ManifestFile {
                path,
                bytes: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(bytes)),
            });
        }
        Ok(())
    }
}
