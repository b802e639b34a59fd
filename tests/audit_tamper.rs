//! The audit log against a database writer (issue 15, review H1), on the
//! test's database (SQLite, or a real PostgreSQL with
//! `PORTCULLIS_TEST_DATABASE=postgres`).
//!
//! The attacker stands where the review puts them: they hold the database
//! (SQL through `sqlite3` / `psql`, as with the SQLite file or the
//! PostgreSQL password every gateway's config holds) and the recordings
//! directory, and recompute the unkeyed chain with `chain_hash`; they hold
//! neither a gateway's host key nor its anchor directory. Sessions here are
//! rows, events and recording files written through the calls the gateway
//! makes (no container: `tests/evidence.rs` does the same through the real
//! gateway).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis::audit::anchor::ExportSink;
use portcullis::audit::bundle::{BundleSpec, verify_bundle, write_bundle};
use portcullis::audit::{
    AuditError, AuditEvent, AuditLog, AuditSigner, AuditSubject, Limits, TrustedKeys,
    VerifyOptions, verify, verify_anchor,
};
use portcullis::store::{NewSession, SessionEnd, Store, chain_hash, now_ms};
use russh::keys::{Algorithm, PrivateKey};

/// One gateway: its key and its anchor directory.
struct Gateway {
    key: PrivateKey,
    signer: AuditSigner,
    anchor: PathBuf,
}

/// A log on the test database, written by `gateways.len()` gateways.
struct Log {
    dir: tempfile::TempDir,
    url: String,
    store: Store,
    audit: AuditLog,
    export: PathBuf,
    gateways: Vec<Gateway>,
}

fn database_url(dir: &Path) -> String {
    match std::env::var("PORTCULLIS_TEST_DATABASE").as_deref() {
        Ok("postgres") => common::postgres::server().new_database(),
        _ => format!("sqlite://{}/portcullis.db", dir.display()),
    }
}

/// Runs SQL as the attacker does: straight on the database.
fn sql(url: &str, statement: &str) {
    let out = match url.strip_prefix("sqlite://") {
        Some(path) => Command::new("sqlite3").arg(path).arg(statement).output(),
        None => Command::new("psql")
            .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", statement])
            .output(),
    }
    .unwrap();
    assert!(
        out.status.success(),
        "{statement}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn new_key() -> PrivateKey {
    PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
}

fn key_line(key: &PrivateKey) -> String {
    key.public_key().to_openssh().unwrap()
}

async fn setup(gateways: usize) -> Log {
    let dir = tempfile::tempdir().unwrap();
    let url = database_url(dir.path());
    let store = Store::open(&url).await.unwrap();
    let export = dir.path().join("audit.jsonl");
    let audit = AuditLog::new(store.clone())
        .with_export(export.to_str().unwrap())
        .unwrap();
    std::fs::create_dir(dir.path().join("recordings")).unwrap();
    let gateways = (0..gateways)
        .map(|i| {
            let key = new_key();
            let anchor = dir.path().join(format!("anchor-{i}"));
            let signer = AuditSigner::new(key.clone())
                .with_gateway(&format!("gw-{i}"))
                .with_anchor_dir(&anchor)
                .unwrap()
                .with_sink(Box::new(
                    ExportSink::open(export.to_str().unwrap()).unwrap(),
                ));
            Gateway {
                key,
                signer,
                anchor,
            }
        })
        .collect();
    Log {
        dir,
        url,
        store,
        audit,
        export,
        gateways,
    }
}

/// Short limits: a head comes within milliseconds of the events it signs
/// here, so anything that waited 300 ms was not signed in time.
const LIMITS: Limits = Limits {
    sign_interval_ms: 150,
    slack_ms: 150,
};

impl Log {
    /// Trusts the keys of gateways `trust`; "now" is now plus `later_ms`.
    fn options(&self, trust: &[usize], later_ms: i64) -> VerifyOptions {
        let mut trusted = TrustedKeys::default();
        for &i in trust {
            trusted
                .add_line(&key_line(&self.gateways[i].key), &format!("gw-{i}"))
                .unwrap();
        }
        VerifyOptions {
            trusted,
            limits: LIMITS,
            now_ms: now_ms() + later_ms,
            notes: Vec::new(),
        }
    }

    fn all(&self) -> VerifyOptions {
        self.options(&(0..self.gateways.len()).collect::<Vec<_>>(), 0)
    }

    async fn decisions(&self, n: usize, principal: &str) {
        for i in 0..n {
            self.audit
                .record(
                    &AuditSubject {
                        session_id: None,
                        principal: Some(principal),
                        client_addr: Some("192.0.2.7:5000"),
                    },
                    &AuditEvent::AccessDecided {
                        action: "shell".into(),
                        container: format!("web{i}"),
                        login: "root".into(),
                        allowed: false,
                        reasons: vec![],
                    },
                )
                .await
                .unwrap();
        }
    }

    /// A finished exec session that printed `output`; returns its
    /// recording's path.
    async fn session(&self, id: &str, output: &str) -> PathBuf {
        let path = self.dir.path().join(format!("recordings/{id}.cast"));
        let text = format!(
            "{{\"version\":2,\"width\":80,\"height\":24,\"timestamp\":1796111294}}\n[0.1,\"o\",{}]\n",
            serde_json::Value::String(output.to_string())
        );
        std::fs::write(&path, &text).unwrap();
        let sha = portcullis::recording::digest_file(&path).unwrap().sha256;
        let subject = AuditSubject {
            session_id: Some(id),
            principal: Some("alice"),
            client_addr: None,
        };
        self.audit
            .record_session_start(
                &subject,
                &AuditEvent::SessionStarted {
                    container: "web1".into(),
                    login: "app".into(),
                    command: Some(format!("echo {output}")),
                    pty: false,
                },
                &NewSession {
                    id,
                    principal: "alice",
                    email: None,
                    container: "web1",
                    login: "app",
                    command: Some("echo"),
                    client_addr: None,
                    recording_path: path.to_str().unwrap(),
                    grant_id: None,
                },
            )
            .await
            .unwrap();
        self.audit
            .record_session_end(
                &subject,
                &AuditEvent::SessionEnded {
                    exit_status: Some(0),
                    exit_signal: None,
                    recording_bytes: text.len() as i64,
                    recording_sha256: sha.clone(),
                    output_bytes: None,
                },
                id,
                &SessionEnd {
                    status: "ended",
                    exit_status: Some(0),
                    exit_signal: None,
                    recording_bytes: text.len() as i64,
                    recording_sha256: &sha,
                },
            )
            .await
            .unwrap();
        path
    }

    async fn sign(&self, gateway: usize) -> i64 {
        self.gateways[gateway]
            .signer
            .sign_head(&self.store)
            .await
            .unwrap()
            .unwrap()
    }

    /// The attacker's re-chain: recomputes `prev_hash` and `hash` of every
    /// event from `from` on with `chain_hash`, as a database writer can.
    async fn rechain(&self, from: i64) {
        let rows = self.store.audit_events(None).await.unwrap();
        let mut prev = rows
            .iter()
            .find(|r| r.id == from - 1)
            .map(|r| r.hash.clone())
            .unwrap_or_else(|| portcullis::store::GENESIS_HASH.to_string());
        let mut statements = String::new();
        for r in rows.iter().filter(|r| r.id >= from) {
            let hash = chain_hash(
                r.id,
                r.at,
                &r.kind,
                &r.outcome,
                r.session_id.as_deref(),
                r.principal.as_deref(),
                r.client_addr.as_deref(),
                &r.detail,
                &prev,
            );
            statements.push_str(&format!(
                "UPDATE audit_events SET prev_hash = '{prev}', hash = '{hash}' WHERE id = {};\n",
                r.id
            ));
            prev = hash;
        }
        if !statements.is_empty() {
            sql(&self.url, &statements);
        }
    }

    /// Waits until the newest event is older than the limits allow
    /// unsigned (polling the clock, at most 5 s).
    fn wait_out_the_limits(&self) {
        let start = now_ms();
        common::wait_until(
            "the limits to pass",
            std::time::Duration::from_secs(5),
            || now_ms() - start > LIMITS.max_wait_ms() + 50,
        );
    }

    fn anchor(&self, gateway: usize) -> String {
        self.gateways[gateway].anchor.display().to_string()
    }
}

/// 10 events, signed; a session and 3 events, signed: heads 1 and 2.
async fn history(log: &Log) {
    log.decisions(10, "mallory").await;
    assert_eq!(log.sign(0).await, 10);
    log.session("s1", "first-output").await;
    log.decisions(3, "alice").await;
    assert_eq!(log.sign(0).await, 15);
    let report = verify(&log.store, &log.all()).await.unwrap();
    assert!(report.ok(), "{:#?}", report.lines());
    assert_eq!((report.events, report.valid_signatures), (15, 2));
}

#[tokio::test]
async fn cutting_the_tail_and_rechaining_is_named_by_the_anchors_and_never_signed() {
    let log = setup(1).await;
    history(&log).await;
    // The attacker drops everything after event 10 (its head too) and
    // writes a forged event 11 chained to event 10.
    sql(
        &log.url,
        "DELETE FROM audit_signatures WHERE event_id > 10; DELETE FROM audit_events WHERE id > 10;",
    );
    let ten = log.store.audit_events(None).await.unwrap().pop().unwrap();
    let at = ten.at + 1;
    let detail = "{\"note\":\"nothing happened\"}";
    let hash = chain_hash(
        11, at, "decision", "info", None, None, None, detail, &ten.hash,
    );
    sql(
        &log.url,
        &format!(
            "INSERT INTO audit_events (id, at, kind, outcome, detail, prev_hash, hash) \
             VALUES (11, {at}, 'decision', 'info', '{detail}', '{}', '{hash}')",
            ten.hash
        ),
    );

    // The head directory: head 2 (event 15) is gone from the database.
    let by_heads = verify_anchor(&log.store, &log.anchor(0), &log.all().trusted)
        .await
        .unwrap();
    assert!(!by_heads.ok());
    let d = by_heads.first_divergence.clone().unwrap();
    assert_eq!((d.after_event, d.event_id), (Some(10), 15), "{d:?}");
    // The export holds every event: the part is exactly event 11.
    let by_export = verify_anchor(&log.store, log.export.to_str().unwrap(), &log.all().trusted)
        .await
        .unwrap();
    let d = by_export.first_divergence.clone().unwrap();
    assert_eq!((d.after_event, d.event_id), (None, 11), "{d:?}");
    assert!(d.problem.contains("differs"), "{}", d.problem);
    assert!(
        by_export
            .lines()
            .iter()
            .any(|l| l.starts_with("BAD the database parts from the anchor at event 11"))
    );

    // The gateway never signs over it, nor does it after a restart (it
    // reads its anchor directory)...
    let refused = log.gateways[0].signer.sign_head(&log.store).await;
    assert!(
        matches!(
            refused,
            Err(AuditError::HeadMissing {
                seq: 2,
                event_id: 15,
                ..
            })
        ),
        "{refused:?}"
    );
    let restarted = AuditSigner::new(log.gateways[0].key.clone())
        .with_anchor_dir(&log.gateways[0].anchor)
        .unwrap();
    assert!(matches!(
        restarted.sign_head(&log.store).await,
        Err(AuditError::HeadMissing { seq: 2, .. })
    ));
    // ...so the forged tail stays unsigned, and once it is older than the
    // signing interval plus slack the database alone fails verification.
    let now = verify(&log.store, &log.all()).await.unwrap();
    assert_eq!(now.unsigned_tail.as_ref().unwrap().first_event, 11);
    let later = verify(&log.store, &log.options(&[0], 1_000)).await.unwrap();
    assert!(!later.ok());
    assert!(later.tail_unsigned_too_long);
    assert!(
        later
            .lines()
            .iter()
            .any(|l| l.starts_with("BAD unsigned tail: event 11 not signed")),
        "{:#?}",
        later.lines()
    );
}

#[tokio::test]
async fn deleting_every_signature_and_editing_an_old_event_is_caught() {
    let log = setup(1).await;
    history(&log).await;
    sql(
        &log.url,
        "DELETE FROM audit_signatures; \
         UPDATE audit_events SET principal = 'nobody' WHERE id = 3;",
    );
    log.rechain(3).await;
    // Nothing is signed any more: not OK, whatever the chain says.
    let report = verify(&log.store, &log.all()).await.unwrap();
    assert!(report.first_bad_event.is_none(), "the attacker re-chained");
    assert!(!report.ok());
    assert_eq!(report.valid_signatures, 0);
    assert!(
        report
            .lines()
            .iter()
            .any(|l| l.starts_with("BAD unsigned tail: events 1..15"))
    );
    // The export names event 3 and what changed in it.
    let by_export = verify_anchor(&log.store, log.export.to_str().unwrap(), &log.all().trusted)
        .await
        .unwrap();
    let d = by_export.first_divergence.unwrap();
    assert_eq!(d.event_id, 3);
    assert!(
        d.problem.contains("(principal, prev_hash, hash)") || d.problem.contains("principal, hash"),
        "{}",
        d.problem
    );
    // The gateway refuses to sign the rewritten log.
    assert!(matches!(
        log.gateways[0].signer.sign_head(&log.store).await,
        Err(AuditError::HeadMissing { seq: 2, .. })
    ));
    // A gateway that lost its anchor directory does sign it, with a first
    // head made long after the events it covers: a gap.
    log.wait_out_the_limits();
    let amnesiac = AuditSigner::new(log.gateways[0].key.clone());
    amnesiac.sign_head(&log.store).await.unwrap();
    let report = verify(&log.store, &log.all()).await.unwrap();
    assert!(!report.ok());
    assert_eq!(report.gaps.len(), 1, "{:#?}", report.lines());
    assert_eq!(report.gaps[0].first_event, 1);
}

#[tokio::test]
async fn deleted_heads_in_the_middle_break_the_chain_of_heads() {
    let log = setup(1).await;
    history(&log).await;
    log.decisions(2, "bob").await;
    log.sign(0).await;
    sql(&log.url, "DELETE FROM audit_signatures WHERE seq = 2");
    let report = verify(&log.store, &log.all()).await.unwrap();
    assert!(!report.ok());
    assert_eq!(report.bad_signatures.len(), 1);
    assert_eq!(report.bad_signatures[0].seq, Some(3));
    assert!(
        report.bad_signatures[0]
            .problem
            .contains("heads 2..2 are missing"),
        "{:?}",
        report.bad_signatures
    );
}

#[tokio::test]
async fn a_swapped_recording_is_named_even_when_rows_and_events_are_rewritten() {
    let log = setup(1).await;
    let one = log.session("s1", "first-output").await;
    let two = log.session("s2", "second-output-longer").await;
    log.sign(0).await;
    // The file alone: the session is named.
    std::fs::copy(&two, &one).unwrap();
    let report = verify(&log.store, &log.all()).await.unwrap();
    assert_eq!(report.bad_recordings.len(), 1);
    assert_eq!(report.bad_recordings[0].session_id, "s1");
    // The whole database too: row, session_end event, re-chain, heads.
    let sha = portcullis::recording::digest_file(&two).unwrap().sha256;
    let end = log
        .store
        .audit_events(Some("s1"))
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.kind == "session_end")
        .unwrap();
    let detail: serde_json::Value = serde_json::from_str(&end.detail).unwrap();
    let forged = end
        .detail
        .replace(detail["recording_sha256"].as_str().unwrap(), &sha);
    sql(
        &log.url,
        &format!(
            "UPDATE sessions SET recording_sha256 = '{sha}' WHERE id = 's1'; \
             UPDATE audit_events SET detail = '{forged}' WHERE id = {}; \
             DELETE FROM audit_signatures;",
            end.id
        ),
    );
    log.rechain(end.id).await;
    let report = verify(&log.store, &log.all()).await.unwrap();
    assert!(
        report.bad_recordings.is_empty(),
        "the digests were rewritten"
    );
    assert!(!report.ok(), "nothing is signed");
    let by_export = verify_anchor(&log.store, log.export.to_str().unwrap(), &log.all().trusted)
        .await
        .unwrap();
    let d = by_export.first_divergence.unwrap();
    assert_eq!(d.event_id, end.id);
    assert!(
        d.problem.contains("session_end of session s1"),
        "{}",
        d.problem
    );
}

#[tokio::test]
async fn a_truncated_recording_is_named() {
    let log = setup(1).await;
    let one = log.session("s1", "all-of-the-output").await;
    log.sign(0).await;
    let bytes = std::fs::read(&one).unwrap();
    std::fs::write(&one, &bytes[..bytes.len() - 10]).unwrap();
    let report = verify(&log.store, &log.all()).await.unwrap();
    assert!(!report.ok());
    assert_eq!(report.bad_recordings.len(), 1);
    assert_eq!(report.bad_recordings[0].session_id, "s1");
    assert!(
        report
            .lines()
            .iter()
            .any(|l| l.starts_with("BAD recording of session s1"))
    );
}

#[tokio::test]
async fn two_gateways_verify_when_both_keys_are_trusted_and_tampering_is_still_caught() {
    let log = setup(2).await;
    log.decisions(3, "alice").await;
    log.sign(0).await;
    log.session("s1", "on-gateway-b").await;
    log.sign(1).await;
    log.decisions(2, "bob").await;
    log.sign(0).await;
    let report = verify(&log.store, &log.all()).await.unwrap();
    assert!(report.ok(), "{:#?}", report.lines());
    assert_eq!(report.signers.len(), 2);
    assert!(report.signers.iter().all(|s| s.trusted_as.is_some()));
    // Gateway 1's key not listed: its head is named, not silently taken.
    let one_key = verify(&log.store, &log.options(&[0], 0)).await.unwrap();
    assert!(!one_key.ok());
    assert_eq!(one_key.bad_signatures.len(), 1);
    assert_eq!(one_key.bad_signatures[0].seq, Some(2));
    assert!(
        one_key.bad_signatures[0]
            .problem
            .contains("(gw-1), a key that is not trusted")
    );
    // No key at all (an unreadable host key, no trusted_keys): nothing is
    // accepted.
    let none = verify(&log.store, &log.options(&[], 0)).await.unwrap();
    assert!(!none.ok());
    assert_eq!(none.bad_signatures.len(), 3);
    // Each gateway's anchor holds its own heads and agrees.
    for g in 0..2 {
        let a = verify_anchor(&log.store, &log.anchor(g), &log.all().trusted)
            .await
            .unwrap();
        assert!(a.ok(), "{:#?}", a.lines());
        assert_eq!(a.heads, if g == 0 { 2 } else { 1 });
    }
    // The same tampering as on one gateway: all heads gone, event 2 edited.
    sql(
        &log.url,
        "DELETE FROM audit_signatures; UPDATE audit_events SET principal = 'x' WHERE id = 2;",
    );
    log.rechain(2).await;
    let report = verify(&log.store, &log.all()).await.unwrap();
    assert!(!report.ok());
    for g in 0..2 {
        assert!(matches!(
            log.gateways[g].signer.sign_head(&log.store).await,
            Err(AuditError::HeadMissing { .. })
        ));
    }
    let a = verify_anchor(&log.store, &log.anchor(1), &log.all().trusted)
        .await
        .unwrap();
    assert!(!a.ok());
    let e = verify_anchor(&log.store, log.export.to_str().unwrap(), &log.all().trusted)
        .await
        .unwrap();
    assert_eq!(e.first_divergence.unwrap().event_id, 2);
}

#[tokio::test]
async fn a_gateway_guards_the_heads_another_gateway_signed() {
    let log = setup(2).await;
    log.decisions(3, "alice").await;
    log.sign(0).await;
    log.decisions(2, "bob").await;
    log.sign(1).await;
    // Gateway 0 ticks with nothing new: it sees head 2 (gateway 1's).
    assert_eq!(log.sign(0).await, 5);
    // Head 2 and what it signed are cut, and the log goes on.
    sql(
        &log.url,
        "DELETE FROM audit_signatures WHERE seq = 2; DELETE FROM audit_events WHERE id > 3;",
    );
    log.decisions(1, "mallory").await;
    for g in 0..2 {
        let refused = log.gateways[g].signer.sign_head(&log.store).await;
        assert!(
            matches!(
                refused,
                Err(AuditError::HeadMissing {
                    seq: 2,
                    event_id: 5,
                    ..
                })
            ),
            "gateway {g}: {refused:?}"
        );
    }
}

#[tokio::test]
async fn an_object_store_anchor_takes_each_head_once() {
    let log = setup(1).await;
    let objects = log.dir.path().join("objects");
    std::fs::create_dir(&objects).unwrap();
    let url = format!("file://{}", objects.display());
    let signer = AuditSigner::new(log.gateways[0].key.clone()).with_sink(Box::new(
        portcullis::audit::anchor::ObjectStoreSink::open(&url).unwrap(),
    ));
    log.decisions(2, "alice").await;
    signer.sign_head(&log.store).await.unwrap();
    log.decisions(1, "alice").await;
    signer.sign_head(&log.store).await.unwrap();
    let a = verify_anchor(&log.store, &url, &log.all().trusted)
        .await
        .unwrap();
    assert!(a.ok(), "{:#?}", a.lines());
    assert_eq!(a.matching_heads, 2);
    // A second chain of heads cannot overwrite the first.
    sql(&log.url, "DELETE FROM audit_signatures WHERE seq = 2");
    let again = AuditSigner::new(log.gateways[0].key.clone()).with_sink(Box::new(
        portcullis::audit::anchor::ObjectStoreSink::open(&url).unwrap(),
    ));
    assert!(matches!(
        again.sign_head(&log.store).await,
        Err(AuditError::AnchorTaken { .. })
    ));
}

/// The bundle of `log`'s whole history, in a fresh file.
async fn bundle(log: &Log, name: &str) -> PathBuf {
    let out = log.dir.path().join(name);
    let summary = write_bundle(
        &log.store,
        &BundleSpec {
            from_ms: 0,
            to_ms: now_ms(),
            container: None,
            principal: None,
        },
        LIMITS,
        Some(&log.gateways[0].key),
        "gw-0",
        &out,
    )
    .await
    .unwrap();
    assert!(summary.covered && summary.signed);
    out
}

/// A change to one file of a bundle: `None` drops it.
type Change = dyn Fn(&str, Vec<u8>) -> Option<Vec<u8>>;

/// Rewrites the tar at `path`, passing each file through `change` (which
/// returns `None` to drop it).
fn retar(path: &Path, change: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        if let Some(b) = change(&name, bytes) {
            files.push((name, b));
        }
    }
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, &name, bytes.as_slice())
            .unwrap();
    }
    builder.finish().unwrap();
}

#[tokio::test]
async fn a_bundle_verifies_offline_and_each_altered_part_is_named() {
    let log = setup(1).await;
    log.decisions(2, "alice").await;
    log.session("s1", "bundled-output").await;
    log.session("s2", "other-output").await;
    log.sign(0).await;
    let original = bundle(&log, "evidence.tar").await;
    let trusted = log.options(&[0], 0);
    let good = verify_bundle(&original, &trusted).unwrap();
    assert!(good.ok(), "{:#?}", good.lines());
    assert_eq!(good.recordings, 2);
    assert!(good.keys_from_verifier);
    // Without keys from the verifier, the bundle's own are used, and said.
    let own = verify_bundle(&original, &log.options(&[], 0)).unwrap();
    assert!(own.ok() && !own.keys_from_verifier);
    assert!(
        own.lines()
            .iter()
            .any(|l| l.starts_with("WARNING: the keys were taken"))
    );
    // A key the verifier does not trust: named.
    let mut other = TrustedKeys::default();
    other.add_line(&key_line(&new_key()), "auditor").unwrap();
    let wrong = verify_bundle(
        &original,
        &VerifyOptions {
            trusted: other,
            ..log.options(&[], 0)
        },
    )
    .unwrap();
    assert!(!wrong.ok());
    assert!(
        wrong
            .problems
            .iter()
            .any(|p| p.contains("a key that is not trusted"))
    );

    let cases: Vec<(&str, Box<Change>, &str)> = vec![
        (
            "an edited event",
            Box::new(|n, b| {
                Some(if n.ends_with("events.jsonl") {
                    String::from_utf8(b)
                        .unwrap()
                        .replacen("\"alice\"", "\"nobody\"", 1)
                        .into_bytes()
                } else {
                    b
                })
            }),
            "events.jsonl was altered",
        ),
        (
            "a dropped head",
            Box::new(|n, b| {
                Some(if n.ends_with("heads.jsonl") {
                    Vec::new()
                } else {
                    b
                })
            }),
            "heads.jsonl was altered",
        ),
        (
            "a swapped key",
            Box::new(|n, b| {
                Some(if n.ends_with("keys.txt") {
                    format!("{}\n", key_line(&new_key())).into_bytes()
                } else {
                    b
                })
            }),
            "keys.txt was altered",
        ),
        (
            "an altered recording",
            Box::new(|n, mut b| {
                if n.ends_with("recordings/s1.cast") {
                    let at = b.len() - 4;
                    b[at] ^= 1;
                }
                Some(b)
            }),
            "the recording of session s1 has SHA-256",
        ),
        (
            "a missing recording",
            Box::new(|n, b| (!n.ends_with("recordings/s2.cast")).then_some(b)),
            "the recording of session s2 (recordings/s2.cast) is missing",
        ),
        (
            "an edited manifest",
            Box::new(|n, b| {
                Some(if n.ends_with("manifest.json") {
                    String::from_utf8(b)
                        .unwrap()
                        .replacen("\"gw-0\"", "\"gw-9\"", 1)
                        .into_bytes()
                } else {
                    b
                })
            }),
            "manifest.sig: the manifest's signature does not verify",
        ),
        (
            "a removed manifest signature",
            Box::new(|n, b| (!n.ends_with("manifest.sig")).then_some(b)),
            "manifest.sig is missing",
        ),
    ];
    for (i, (what, change, expected)) in cases.into_iter().enumerate() {
        let copy = log.dir.path().join(format!("tampered-{i}.tar"));
        std::fs::copy(&original, &copy).unwrap();
        retar(&copy, change);
        let report = verify_bundle(&copy, &trusted).unwrap();
        assert!(!report.ok(), "{what}: {:#?}", report.lines());
        assert!(
            report.problems.iter().any(|p| p.contains(expected)),
            "{what}: expected {expected:?} in {:#?}",
            report.lines()
        );
    }
    // The chain inside names the edited event too, and an uncovered tail.
    let copy = log.dir.path().join("edited.tar");
    std::fs::copy(&original, &copy).unwrap();
    retar(&copy, |n, b| {
        Some(if n.ends_with("events.jsonl") {
            String::from_utf8(b)
                .unwrap()
                .replacen("\"alice\"", "\"nobody\"", 1)
                .into_bytes()
        } else {
            b
        })
    });
    let report = verify_bundle(&copy, &trusted).unwrap();
    assert!(
        report
            .chain
            .first_bad_event
            .as_ref()
            .unwrap()
            .1
            .contains("was altered")
    );
    // An extra file is named.
    let copy = log.dir.path().join("extra.tar");
    std::fs::copy(&original, &copy).unwrap();
    {
        let mut files = Vec::new();
        let mut archive = tar::Archive::new(std::fs::File::open(&copy).unwrap());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            files.push((name, bytes));
        }
        files.push((
            "portcullis-bundle/recordings/s9.cast".into(),
            b"{}\n".to_vec(),
        ));
        let mut builder = tar::Builder::new(std::fs::File::create(&copy).unwrap());
        for (name, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            builder
                .append_data(&mut header, &name, bytes.as_slice())
                .unwrap();
        }
        builder.finish().unwrap();
    }
    let report = verify_bundle(&copy, &trusted).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p == "recordings/s9.cast is not in the manifest")
    );
}
