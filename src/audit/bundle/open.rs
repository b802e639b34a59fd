//! Verifying a bundle offline (`portcullis audit verify --bundle`): the
//! manifest's signature, every file against the manifest, the hash chain of
//! the events, the signed heads (keys, signatures, chain, coverage) and
//! every selected session's recording against its `session_end` event. Each
//! finding names the file, event, head or session.
//!
//! Needs no database and no gateway; reads the tar without extracting it,
//! so a hostile bundle never writes a file; never trusts the bundle's own
//! keys without saying so.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use russh::keys::ssh_key::SshSig;
use russh::keys::{HashAlg, PublicKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{MANIFEST_NAMESPACE, Manifest, ROOT};
use crate::audit::AuditError;
use crate::audit::export::row_of;
use crate::audit::head::{AnchoredHead, TrustedKeys};
use crate::audit::verify::{VerifyOptions, VerifyReport, audited_digests, verify_events};
use crate::store::SignedHead;

/// Largest non-recording file read into memory, bytes.
const MAX_TEXT_BYTES: u64 = 1 << 30;

/// The outcome of [`verify_bundle`].
#[derive(Debug, Clone, Serialize)]
pub struct BundleReport {
    /// The bundle's path.
    pub path: String,
    /// The manifest, when it could be read.
    pub manifest: Option<Manifest>,
    /// Who signed the manifest (`SHA256:...` and where it is trusted from).
    pub manifest_signed_by: Option<String>,
    /// True when the keys were given by the verifier, false when taken from
    /// the bundle itself (then only the bundle's consistency is proven).
    pub keys_from_verifier: bool,
    /// Files found in the tar.
    pub files: usize,
    /// Recordings checked against their `session_end` events.
    pub recordings: usize,
    /// The chain, heads and coverage of the packed events.
    pub chain: VerifyReport,
    /// Everything missing or altered, each naming the part.
    pub problems: Vec<String>,
}

impl BundleReport {
    /// True when nothing is missing or altered.
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.chain.ok()
    }

    /// The report for people, ending in `OK` or `FAILED`.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "bundle {}: {} files, {} recordings checked",
            self.path, self.files, self.recordings
        )];
        if let Some(m) = &self.manifest {
            out.push(format!(
                "period {} .. {}, events {}..{}, {} sessions, made by {} at {}",
                crate::audit::export::rfc3339_ms(m.from_ms),
                crate::audit::export::rfc3339_ms(m.to_ms),
                m.first_event.unwrap_or(0),
                m.last_event.unwrap_or(0),
                m.sessions.len(),
                m.created_by,
                m.created_time
            ));
        }
        if let Some(s) = &self.manifest_signed_by {
            out.push(format!("manifest signed by {s}"));
        }
        if !self.keys_from_verifier {
            out.push(
                "WARNING: the keys were taken from the bundle itself; compare the fingerprints \
                 with the gateways' (portcullis audit key) or pass --trusted-key"
                    .to_string(),
            );
        }
        let chain = self.chain.lines();
        out.extend(chain.iter().take(chain.len().saturating_sub(1)).cloned());
        for p in &self.problems {
            out.push(format!("BAD {p}"));
        }
        out.push(if self.ok() { "OK" } else { "FAILED" }.to_string());
        out
    }
}

/// One file read from the tar.
struct Entry {
    bytes: u64,
    sha256: String,
    /// The content, for the files other than recordings.
    text: Option<Vec<u8>>,
}

/// Verifies the bundle at `path`. `options.trusted` are the keys the
/// verifier trusts; when empty, the bundle's own `keys.txt` is used and the
/// report says so. "Now" for the unsigned tail is the bundle's creation.
///
/// # Errors
/// [`AuditError::BundleRead`] when the file is not a readable tar.
pub fn verify_bundle(path: &Path, options: &VerifyOptions) -> Result<BundleReport, AuditError> {
    let entries = read_entries(path)?;
    let mut problems = Vec::new();
    let name = |n: &str| format!("{ROOT}/{n}");
    let text = |n: &str| -> Option<String> {
        entries
            .get(&name(n))
            .and_then(|e| e.text.as_ref())
            .map(|t| String::from_utf8_lossy(t).into_owned())
    };

    // The manifest, its signature and every file against it.
    let manifest_bytes = entries
        .get(&name("manifest.json"))
        .and_then(|e| e.text.clone());
    let manifest: Option<Manifest> = match &manifest_bytes {
        None => {
            problems.push("manifest.json is missing".to_string());
            None
        }
        Some(b) => match serde_json::from_slice(b) {
            Ok(m) => Some(m),
            Err(e) => {
                problems.push(format!("manifest.json is not a manifest: {e}"));
                None
            }
        },
    };
    let keys_from_verifier = !options.trusted.is_empty();
    let mut trusted = options.trusted.clone();
    if !keys_from_verifier {
        for (i, line) in text("keys.txt").unwrap_or_default().lines().enumerate() {
            if !line.trim().is_empty()
                && trusted
                    .add_line(line, &format!("keys.txt line {}", i + 1))
                    .is_err()
            {
                problems.push(format!("keys.txt line {} is not a public key", i + 1));
            }
        }
    }
    let manifest_signed_by = match (&manifest_bytes, text("manifest.sig")) {
        (Some(bytes), Some(sig)) => match check_manifest_signature(bytes, &sig, &trusted) {
            Ok(by) => Some(by),
            Err(problem) => {
                problems.push(format!("manifest.sig: {problem}"));
                None
            }
        },
        (Some(_), None) => {
            problems.push("manifest.sig is missing: the manifest is not signed".to_string());
            None
        }
        _ => None,
    };
    if let Some(m) = &manifest {
        for f in &m.files {
            match entries.get(&f.path) {
                None => problems.push(format!("{} is missing", short(&f.path))),
                Some(e) if e.sha256 != f.sha256 || e.bytes != f.bytes => problems.push(format!(
                    "{} was altered: SHA-256 {} ({} bytes), the manifest says {} ({} bytes)",
                    short(&f.path),
                    e.sha256,
                    e.bytes,
                    f.sha256,
                    f.bytes
                )),
                Some(_) => {}
            }
        }
        for path in entries.keys() {
            let listed = m.files.iter().any(|f| f.path == *path)
                || *path == name("manifest.json")
                || *path == name("manifest.sig");
            if !listed {
                problems.push(format!("{} is not in the manifest", short(path)));
            }
        }
    }

    // The events and heads, checked as the database's are.
    let events = parse_lines(
        &text("events.jsonl").unwrap_or_default(),
        "events.jsonl",
        &mut problems,
        row_of,
    );
    let heads: Vec<SignedHead> = parse_lines(
        &text("heads.jsonl").unwrap_or_default(),
        "heads.jsonl",
        &mut problems,
        |v| {
            serde_json::from_value::<AnchoredHead>(v.clone())
                .ok()
                .map(|h| h.to_signed_head())
        },
    );
    let chain_options = VerifyOptions {
        trusted,
        limits: manifest
            .as_ref()
            .map(|m| m.limits)
            .unwrap_or(options.limits),
        now_ms: manifest
            .as_ref()
            .map(|m| m.created_at)
            .unwrap_or(options.now_ms),
        notes: options.notes.clone(),
    };
    let mut chain = verify_events(&events, &heads, &chain_options, false);
    if let (Some(m), Some(first), Some(last)) = (&manifest, events.first(), events.last())
        && (m.first_event != Some(first.id) || m.last_event != Some(last.id))
    {
        problems.push(format!(
            "events.jsonl holds events {}..{}, the manifest says {}..{}",
            first.id,
            last.id,
            m.first_event.unwrap_or(0),
            m.last_event.unwrap_or(0)
        ));
    }

    // Each selected session's recording against its audited digest.
    let audited = audited_digests(&events);
    let mut recordings = 0;
    for session in manifest.iter().flat_map(|m| m.sessions.iter()) {
        let path = name(&format!("recordings/{session}.cast"));
        let Some(expected) = audited.get(session) else {
            continue;
        };
        recordings += 1;
        match entries.get(&path) {
            None => problems.push(format!(
                "the recording of session {session} (recordings/{session}.cast) is missing"
            )),
            Some(e) if e.sha256 != *expected => problems.push(format!(
                "the recording of session {session} has SHA-256 {}, its session_end event says {expected}",
                e.sha256
            )),
            Some(_) => {}
        }
    }
    chain.recordings = recordings;
    Ok(BundleReport {
        path: path.display().to_string(),
        manifest,
        manifest_signed_by,
        keys_from_verifier,
        files: entries.len(),
        recordings,
        chain,
        problems,
    })
}

fn short(path: &str) -> &str {
    path.strip_prefix(&format!("{ROOT}/")).unwrap_or(path)
}

fn parse_lines<T>(
    text: &str,
    file: &str,
    problems: &mut Vec<String>,
    parse: impl Fn(&serde_json::Value) -> Option<T>,
) -> Vec<T> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        match serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| parse(&v))
        {
            Some(t) => out.push(t),
            None => problems.push(format!("{file} line {} cannot be read", n + 1)),
        }
    }
    out
}

/// Checks the manifest's SSHSIG; returns `SHA256:... (source)`.
fn check_manifest_signature(
    manifest: &[u8],
    sig: &str,
    trusted: &TrustedKeys,
) -> Result<String, String> {
    let sig = SshSig::from_pem(sig).map_err(|e| format!("bad signature encoding: {e}"))?;
    let key = PublicKey::from(sig.public_key().clone());
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    let source = trusted
        .source_of(&key)
        .ok_or_else(|| format!("signed by {fingerprint}, a key that is not trusted"))?
        .to_string();
    key.verify(MANIFEST_NAMESPACE, manifest, &sig)
        .map_err(|e| format!("the manifest's signature does not verify: {e}"))?;
    Ok(format!("{fingerprint} ({source})"))
}

/// Every regular file of the tar: size, SHA-256 and, for all but
/// recordings, the content.
fn read_entries(path: &Path) -> Result<BTreeMap<String, Entry>, AuditError> {
    let bad = |source: std::io::Error| AuditError::BundleRead {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(bad)?;
    let mut archive = tar::Archive::new(file);
    let mut out = BTreeMap::new();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let keep = !name.starts_with(&format!("{ROOT}/recordings/"))
            && entry.header().size().map_err(bad)? <= MAX_TEXT_BYTES;
        let mut hasher = Sha256::new();
        let mut text = keep.then(Vec::new);
        let mut bytes = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = entry.read(&mut buf).map_err(bad)?;
            if n == 0 {
                break;
            }
            let chunk = buf.get(..n).unwrap_or_default();
            hasher.update(chunk);
            if let Some(t) = text.as_mut() {
                t.extend_from_slice(chunk);
            }
            bytes += n as u64;
        }
        out.insert(
            name,
            Entry {
                bytes,
                sha256: hex::encode(hasher.finalize()),
                text,
            },
        );
    }
    Ok(out)
}
