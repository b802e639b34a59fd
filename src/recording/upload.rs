//! The upload of recordings to object storage (issue 16 point 5): while a
//! session runs, its recording goes up in multipart parts of
//! `recording.part_bytes` (at least 5 MiB) as the local file grows; at its
//! end the rest goes up, the multipart upload completes, a signed manifest
//! is written once (`PutMode::Create`), both are read back and checked,
//! and only then is the local copy deleted. A failed attempt is audited and
//! retried with a doubling backoff; the state lives in the database, so an
//! upload cut by a shutdown or crash resumes at the next start.
//!
//! Owns the upload's steps and their order. It must never delete a local
//! recording whose uploaded copy and manifest were not read back and found
//! equal, never overwrite a manifest, and never sign a recording that
//! changed on disk after its session ended.

use std::collections::HashSet;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use super::archive::{Archive, upload_is_gone};
use super::manifest::Manifest;
use super::reader::digest_file;
use super::upload_event::{ManifestSigner, RecordingAudit, UploadEvent};
use super::writer::WriterEnd;
use super::{Digest256, RecordingError};
use crate::store::{Store, UploadRecord, now_ms};

/// How often a live recording is checked for a full part to upload.
const STREAM_POLL: Duration = Duration::from_secs(1);

/// Longest sleep of the worker when nothing is due (it is also woken when
/// a session ends).
const IDLE_POLL: Duration = Duration::from_secs(60);

/// The node's queue of recordings to upload. Cheap to clone.
#[derive(Clone)]
pub struct UploadQueue {
    inner: Arc<Inner>,
}

struct Inner {
    archive: Archive,
    store: Store,
    gateway: String,
    audit: Arc<dyn RecordingAudit>,
    signer: Arc<dyn ManifestSigner>,
    part_bytes: u64,
    backoff_max: Duration,
    wake: Notify,
    /// Sessions whose recording is still being written by this process.
    live: Mutex<HashSet<String>>,
    /// The node is stopping: streaming stops, rows stay as they are and
    /// the next start takes them up.
    shutdown: CancellationToken,
}

/// How an attempt failed.
enum Failure {
    /// Worth trying again later.
    Retry(RecordingError),
    /// Will not get better by itself (kept locally, audited).
    GiveUp(RecordingError),
}

impl From<RecordingError> for Failure {
    fn from(e: RecordingError) -> Self {
        Failure::Retry(e)
    }
}

impl UploadQueue {
    /// A queue uploading to `archive`, with state in `store` (which must be
    /// opened `for_gateway(gateway)`), until `shutdown`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        archive: Archive,
        store: Store,
        gateway: &str,
        audit: Arc<dyn RecordingAudit>,
        signer: Arc<dyn ManifestSigner>,
        part_bytes: u64,
        backoff_max: Duration,
        shutdown: CancellationToken,
    ) -> UploadQueue {
        UploadQueue {
            inner: Arc::new(Inner {
                archive,
                store,
                gateway: gateway.to_string(),
                audit,
                signer,
                part_bytes: part_bytes.max(crate::config::MIN_PART_BYTES),
                backoff_max,
                wake: Notify::new(),
                live: Mutex::new(HashSet::new()),
                shutdown,
            }),
        }
    }

    /// The archive uploads go to.
    pub fn archive(&self) -> &Archive {
        &self.inner.archive
    }

    /// Takes up what a previous run of this node left: recordings still
    /// marked `recording` (the node stopped while they were written) are
    /// due now as found (their manifests say `finished: false`). Call once
    /// at start, before sessions. Returns how many.
    ///
    /// # Errors
    /// [`RecordingError::Store`].
    pub async fn resume(&self) -> Result<usize, RecordingError> {
        let rows = self.inner.store.uploads_in_state("recording").await?;
        let mut resumed = 0;
        for row in rows {
            if self.is_live(&row.session_id) {
                continue;
            }
            let path = PathBuf::from(&row.local_path);
            let found = tokio::task::spawn_blocking(move || digest_file(&path)).await;
            let (bytes, sha256) = match found {
                Ok(Ok(d)) => (d.bytes as i64, d.sha256),
                // Gone: the attempt says so and gives up (audited).
                _ => (0, String::new()),
            };
            self.inner
                .store
                .set_upload_pending(&row.session_id, bytes, &sha256, false)
                .await?;
            resumed += 1;
        }
        self.inner.wake.notify_one();
        Ok(resumed)
    }

    /// Registers a recording that starts now at `path`, and uploads its
    /// parts as it grows until `ended` says the writer is done; then the
    /// rest is due.
    pub(super) async fn register(
        &self,
        session_id: &str,
        path: &Path,
        ended: oneshot::Receiver<WriterEnd>,
    ) -> Result<(), RecordingError> {
        let at = self.inner.archive.location(session_id);
        self.inner
            .store
            .insert_upload(
                session_id,
                &path.display().to_string(),
                &at.recording,
                &at.manifest,
            )
            .await?;
        if let Ok(mut live) = self.inner.live.lock() {
            live.insert(session_id.to_string());
        }
        let queue = self.clone();
        let session_id = session_id.to_string();
        let path = path.to_path_buf();
        tokio::spawn(async move { queue.stream(session_id, path, ended).await });
        Ok(())
    }

    fn is_live(&self, session_id: &str) -> bool {
        self.inner
            .live
            .lock()
            .map(|l| l.contains(session_id))
            .unwrap_or(true)
    }

    /// Uploads whole parts of a live recording; when its writer is done,
    /// records the final size and digest and wakes the worker. At
    /// shutdown it stops and leaves the row `recording` (the next start
    /// uploads the file as found).
    async fn stream(
        self,
        session_id: String,
        path: PathBuf,
        mut ended: oneshot::Receiver<WriterEnd>,
    ) {
        let mut streaming = true;
        let end = loop {
            tokio::select! {
                end = &mut ended => break end,
                _ = self.inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(STREAM_POLL), if streaming => {
                    if let Err(e) = self.upload_parts(&session_id, &path, None).await {
                        // The end of the session tries again (audited then).
                        tracing::warn!(session_id, error = %e, "streaming a recording part failed");
                        streaming = false;
                    }
                }
            }
        };
        let (digest, finished) = match end {
            Ok(Ok(digest)) => (Some(digest), true),
            _ => {
                let found = path.clone();
                let digest = tokio::task::spawn_blocking(move || digest_file(&found))
                    .await
                    .ok()
                    .and_then(Result::ok);
                (digest, false)
            }
        };
        let (bytes, sha256) = digest
            .map(|d| (d.bytes as i64, d.sha256))
            .unwrap_or((0, String::new()));
        if let Err(e) = self
            .inner
            .store
            .set_upload_pending(&session_id, bytes, &sha256, finished)
            .await
        {
            // Left `recording`: the next start takes it up as found.
            tracing::error!(session_id, error = %e, "cannot mark a recording ready for upload");
        }
        if let Ok(mut live) = self.inner.live.lock() {
            live.remove(&session_id);
        }
        self.inner.wake.notify_one();
    }

    /// Uploads the parts of `path` not yet uploaded: whole parts only while
    /// the session runs (`end` = `None`), and with `end` = the final size
    /// the last, shorter part too. Progress is saved after each part.
    async fn upload_parts(
        &self,
        session_id: &str,
        path: &Path,
        end: Option<u64>,
    ) -> Result<Option<UploadRecord>, RecordingError> {
        let Some(mut row) = self.inner.store.upload(session_id).await? else {
            return Ok(None);
        };
        let part = self.inner.part_bytes;
        let available = match end {
            Some(end) => end,
            None => tokio::fs::metadata(path)
                .await
                .map_err(|source| RecordingError::Read {
                    path: path.to_path_buf(),
                    source,
                })?
                .len(),
        };
        loop {
            let done = row.uploaded_bytes as u64;
            let remaining = available.saturating_sub(done);
            let take = if remaining >= part {
                part
            } else if end.is_some() && remaining > 0 {
                remaining
            } else {
                break;
            };
            let id = match &row.multipart_id {
                Some(id) => id.clone(),
                None => self.inner.archive.create_multipart(&row.object_key).await?,
            };
            let bytes = read_at(path, done, take).await?;
            let index = row.parts.len();
            match self
                .inner
                .archive
                .put_part(&row.object_key, &id, index, bytes)
                .await
            {
                Ok(part_id) => row.parts.push(part_id),
                Err(e) if upload_is_gone(&e) => {
                    // The store forgot the upload: start over next time.
                    self.inner
                        .store
                        .set_upload_parts(session_id, None, &[], 0)
                        .await?;
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
            row.multipart_id = Some(id);
            row.uploaded_bytes += take as i64;
            self.inner
                .store
                .set_upload_parts(
                    session_id,
                    row.multipart_id.as_deref(),
                    &row.parts,
                    row.uploaded_bytes,
                )
                .await?;
        }
        Ok(Some(row))
    }

    /// Runs the worker until the queue's `shutdown`: attempts every due
    /// upload, then sleeps until the next is due or a session ends. An
    /// attempt cut by shutdown is taken up again at the next start.
    pub async fn run(self) {
        let shutdown = self.inner.shutdown.clone();
        loop {
            let next = tokio::select! {
                next = self.upload_due() => next,
                _ = shutdown.cancelled() => return,
            };
            let wait = next
                .map(|at| Duration::from_millis((at - now_ms()).max(0) as u64))
                .unwrap_or(IDLE_POLL)
                .min(IDLE_POLL);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Attempts every upload that is due now; returns when the next one is
    /// due (unix ms), if any is waiting.
    pub async fn upload_due(&self) -> Option<i64> {
        let rows = match self.inner.store.uploads_in_state("pending").await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the recording upload queue");
                return Some(now_ms() + 5_000);
            }
        };
        let mut next: Option<i64> = None;
        for row in rows {
            if row.next_attempt_at > now_ms() {
                next = Some(next.map_or(row.next_attempt_at, |n| n.min(row.next_attempt_at)));
                continue;
            }
            if let Some(retry_at) = self.attempt(row).await {
                next = Some(next.map_or(retry_at, |n| n.min(retry_at)));
            }
        }
        next
    }

    /// One audited attempt at finishing `row`; returns when to retry.
    async fn attempt(&self, row: UploadRecord) -> Option<i64> {
        let attempt = u32::try_from(row.attempts + 1).unwrap_or(u32::MAX);
        let session_id = row.session_id.clone();
        let started = UploadEvent::Attempted {
            attempt,
            object: self.inner.archive.url(&row.object_key),
            bytes: row.bytes.unwrap_or(0) as u64,
            sha256: row.sha256.clone().unwrap_or_default(),
        };
        let result = match self.inner.audit.record(Some(&session_id), &started).await {
            Ok(()) => self.finish(&row).await,
            Err(e) => Err(Failure::Retry(RecordingError::Audit(e))),
        };
        let failure = match result {
            Ok(manifest) => match self.uploaded(&row, &manifest, attempt).await {
                Ok(()) => return None,
                Err(e) => Failure::Retry(e),
            },
            Err(failure) => failure,
        };
        let (state, reason, retry_in) = match failure {
            Failure::Retry(e) => ("pending", e.to_string(), Some(self.backoff(attempt))),
            Failure::GiveUp(e) => ("failed", e.to_string(), None),
        };
        tracing::warn!(session_id, attempt, reason, "recording upload failed");
        let event = UploadEvent::Failed {
            attempt,
            reason: reason.clone(),
            retry_in_ms: retry_in.map(|d| d.as_millis() as u64),
        };
        if let Err(e) = self.inner.audit.record(Some(&session_id), &event).await {
            tracing::error!(session_id, error = %e, "cannot audit a failed upload");
        }
        let next = now_ms() + retry_in.map(|d| d.as_millis() as i64).unwrap_or(0);
        if let Err(e) = self
            .inner
            .store
            .set_upload_failed(&session_id, state, i64::from(attempt), next, &reason)
            .await
        {
            tracing::error!(session_id, error = %e, "cannot save the upload state");
        }
        retry_in.map(|_| next)
    }

    /// Wait before attempt `attempt + 1`: 1 s, 2 s, 4 s, ... up to
    /// `upload_backoff_max`.
    fn backoff(&self, attempt: u32) -> Duration {
        let doubling =
            Duration::from_secs(1).saturating_mul(1u32 << attempt.min(20).saturating_sub(1));
        doubling.min(self.inner.backoff_max)
    }

    /// The steps of one attempt, up to a manifest read back and checked.
    async fn finish(&self, row: &UploadRecord) -> Result<Manifest, Failure> {
        let give_up =
            |message: String| Failure::GiveUp(RecordingError::manifest(&row.session_id, message));
        let (Some(bytes), Some(sha256)) = (row.bytes, row.sha256.clone()) else {
            return Err(give_up("the recording's final digest is unknown".into()));
        };
        let expected = Digest256 {
            bytes: bytes as u64,
            sha256,
            output_bytes: 0,
        };
        let path = PathBuf::from(&row.local_path);
        if !path.exists() {
            // Deleted after a verified upload whose end was not saved?
            return match self.read_back(row, None).await {
                Ok(manifest) if manifest.sha256 == expected.sha256 => Ok(manifest),
                _ => Err(give_up(format!(
                    "the local recording {} is gone",
                    path.display()
                ))),
            };
        }
        let local = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || digest_file(&path))
                .await
                .map_err(|e| RecordingError::WriterGone(e.to_string()))??
        };
        if local.bytes != expected.bytes || local.sha256 != expected.sha256 {
            return Err(give_up(format!(
                "the local recording changed after the session ended ({} bytes, SHA-256 {}; \
                 recorded {} bytes, SHA-256 {})",
                local.bytes, local.sha256, expected.bytes, expected.sha256
            )));
        }
        let archive = &self.inner.archive;
        if row.parts.is_empty() && expected.bytes <= self.inner.part_bytes {
            let whole = tokio::fs::read(&path)
                .await
                .map_err(|source| RecordingError::Read {
                    path: path.clone(),
                    source,
                })?;
            archive.put(&row.object_key, whole).await?;
        } else if row.uploaded_bytes as u64 != expected.bytes || row.multipart_id.is_some() {
            let row = self
                .upload_parts(&row.session_id, &path, Some(expected.bytes))
                .await?
                .ok_or_else(|| give_up("its upload row is gone".into()))?;
            if let Some(id) = &row.multipart_id {
                if let Err(e) = archive
                    .complete_multipart(&row.object_key, id, &row.parts)
                    .await
                {
                    // Completed by an attempt whose end was not saved?
                    let stored = archive.digest(&row.object_key).await.ok();
                    if stored.as_ref() != Some(&expected) {
                        if upload_is_gone(&e) {
                            self.inner
                                .store
                                .set_upload_parts(&row.session_id, None, &[], 0)
                                .await
                                .map_err(RecordingError::from)?;
                        }
                        return Err(Failure::Retry(e));
                    }
                }
                self.inner
                    .store
                    .set_upload_parts(&row.session_id, None, &row.parts, row.uploaded_bytes)
                    .await
                    .map_err(RecordingError::from)?;
            }
        }
        let mut manifest = Manifest {
            version: 1,
            session_id: row.session_id.clone(),
            gateway: self.inner.gateway.clone(),
            object: row.object_key.clone(),
            bytes: expected.bytes,
            sha256: expected.sha256.clone(),
            finished: row.finished,
            uploaded_at: now_ms(),
            public_key: String::new(),
            signature: String::new(),
        };
        let (public_key, signature) = self
            .inner
            .signer
            .sign(manifest.signed_message().as_bytes())
            .map_err(|e| give_up(format!("cannot sign the manifest: {e}")))?;
        manifest.public_key = public_key;
        manifest.signature = signature;
        let written = archive
            .put_once(&row.manifest_key, manifest.to_bytes())
            .await?;
        let wrote = written.then_some(&manifest);
        self.read_back(row, wrote).await
    }

    /// Reads the manifest back and checks it (the bytes written, when
    /// `wrote`; else the one already there must describe this recording),
    /// its signature, and the recording object against it.
    async fn read_back(
        &self,
        row: &UploadRecord,
        wrote: Option<&Manifest>,
    ) -> Result<Manifest, Failure> {
        let give_up =
            |message: String| Failure::GiveUp(RecordingError::manifest(&row.session_id, message));
        let archive = &self.inner.archive;
        let Some(stored) = archive.get(&row.manifest_key).await? else {
            return Err(Failure::Retry(RecordingError::manifest(
                &row.session_id,
                "the manifest just written cannot be read back",
            )));
        };
        let manifest = Manifest::parse(&row.session_id, &stored).map_err(Failure::GiveUp)?;
        match wrote {
            Some(ours) if ours.to_bytes() != stored => {
                return Err(give_up(
                    "the manifest read back differs from the one written".into(),
                ));
            }
            None if Some(&manifest.sha256) != row.sha256.as_ref()
                || manifest.object != row.object_key =>
            {
                return Err(give_up(format!(
                    "another manifest is already written for this session (SHA-256 {}); \
                     write-once: it was not replaced",
                    manifest.sha256
                )));
            }
            _ => {}
        }
        self.inner
            .signer
            .check(
                &manifest.public_key,
                manifest.signed_message().as_bytes(),
                &manifest.signature,
            )
            .map_err(|e| give_up(format!("the manifest's signature does not verify: {e}")))?;
        let found = archive.digest(&manifest.object).await?;
        manifest.check(&found)?;
        Ok(manifest)
    }

    /// Audits the verified upload, then deletes the local copy and marks
    /// the row `uploaded`.
    async fn uploaded(
        &self,
        row: &UploadRecord,
        manifest: &Manifest,
        attempts: u32,
    ) -> Result<(), RecordingError> {
        let archive = &self.inner.archive;
        let event = UploadEvent::Uploaded {
            object: archive.url(&manifest.object),
            manifest: archive.url(&row.manifest_key),
            bytes: manifest.bytes,
            sha256: manifest.sha256.clone(),
            attempts,
        };
        self.inner
            .audit
            .record(Some(&row.session_id), &event)
            .await
            .map_err(RecordingError::Audit)?;
        match tokio::fs::remove_file(&row.local_path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(RecordingError::Read {
                    path: PathBuf::from(&row.local_path),
                    source,
                });
            }
        }
        self.inner
            .store
            .set_upload_done(&row.session_id, i64::from(attempts))
            .await?;
        Ok(())
    }
}

/// `len` bytes of `path` from `offset`, read on a blocking thread.
async fn read_at(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, RecordingError> {
    let owned = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&owned)?;
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset)?;
        Ok::<_, std::io::Error>(buf)
    })
    .await
    .map_err(|e| RecordingError::WriterGone(e.to_string()))?;
    read.map_err(|source| RecordingError::Read {
        path: path.to_path_buf(),
        source,
    })
}
