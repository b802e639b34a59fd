//! [`Recordings`]: this node's recordings directory (`recording.dir`),
//! which is also the spool of recordings waiting for object storage. It
//! says whether a new recording may start (free space on the recordings'
//! and the database's filesystems, the spool's bound), creates recordings
//! with their limits and registers their upload, and opens a recording for
//! review wherever it is now ([`open`]: the local file, or the object
//! store once the local copy is gone).
//!
//! Owns the directory and the start decision; it never deletes a recording
//! (only the upload does, after verifying its copy) and never lets a
//! session start when the audit log could run out of disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::archive::Archive;
use super::manifest::Manifest;
use super::reader::digest_bytes;
use super::upload::UploadQueue;
use super::upload_event::{ManifestSigner, RecordingAudit, UploadEvent};
use super::writer::{Recorder, RecorderLimits};
use super::{Header, RecordingError, human_bytes};
use crate::config::{Config, RecordingConfig, SpoolFull};
use crate::store::{Backend, Store};

/// Why a new session may not start now. Its `Display` is the sentence for
/// the user (no paths); the audit log gets [`StartRefused::detail`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartRefused {
    /// A filesystem the gateway writes has less free space than
    /// `recording.min_free_bytes`.
    #[error("the gateway is low on disk space; new sessions are refused until space is freed")]
    LowDisk {
        /// The directory checked.
        path: PathBuf,
        /// Its free bytes.
        free_bytes: u64,
        /// `recording.min_free_bytes`.
        min_free_bytes: u64,
    },
    /// Recordings waiting for object storage fill the spool
    /// (`on_spool_full = "refuse"`).
    #[error(
        "session recordings cannot reach object storage and the gateway's spool is full; \
         new sessions are refused until they are uploaded"
    )]
    SpoolFull {
        /// Bytes of local recordings not yet uploaded.
        spool_bytes: u64,
        /// `recording.spool_max_bytes`.
        spool_max_bytes: u64,
    },
    /// The free space or the spool could not be measured (fail closed).
    #[error("the gateway cannot check its recording space right now")]
    Unknown(String),
}

impl StartRefused {
    /// The full reason, for the audit log.
    pub fn detail(&self) -> String {
        match self {
            StartRefused::LowDisk {
                path,
                free_bytes,
                min_free_bytes,
            } => format!(
                "{} has {} free, under recording.min_free_bytes ({})",
                path.display(),
                human_bytes(*free_bytes),
                human_bytes(*min_free_bytes)
            ),
            StartRefused::SpoolFull {
                spool_bytes,
                spool_max_bytes,
            } => format!(
                "{} of recordings wait for upload, recording.spool_max_bytes is {}",
                human_bytes(*spool_bytes),
                human_bytes(*spool_max_bytes)
            ),
            StartRefused::Unknown(reason) => reason.clone(),
        }
    }
}

/// The node's recordings: where they are written, their limits, and their
/// upload when `recording.store` is set. Cheap to clone.
#[derive(Clone)]
pub struct Recordings {
    config: Arc<RecordingConfig>,
    dir: PathBuf,
    /// The SQLite database's directory (its filesystem keeps the reserve
    /// too); `None` for PostgreSQL.
    database_dir: Option<PathBuf>,
    store: Store,
    uploads: Option<UploadQueue>,
    audit: Option<Arc<dyn RecordingAudit>>,
}

impl Recordings {
    /// The recordings of the gateway configured by `config`, with state in
    /// `store` (opened `for_gateway`). With `recording.store` set, builds
    /// the object store client, takes up uploads a previous run left
    /// (`UploadQueue::resume`) and runs the upload worker until `shutdown`;
    /// `audit` and `signer` are then the audit log and the host key's
    /// SSHSIG signer. Call once at start, before sessions.
    ///
    /// # Errors
    /// [`RecordingError::StoreConfig`] or [`RecordingError::Store`].
    pub async fn start(
        config: &Config,
        store: Store,
        audit: Arc<dyn RecordingAudit>,
        signer: Arc<dyn ManifestSigner>,
        shutdown: CancellationToken,
    ) -> Result<Recordings, RecordingError> {
        let mut recordings = Recordings::local(config, store.clone());
        if let Some(archive) = Archive::from_config(&config.recording)? {
            let queue = UploadQueue::new(
                archive,
                store,
                &config.gateway_id(),
                audit.clone(),
                signer,
                config.recording.part_bytes,
                config.recording.upload_backoff_max,
                shutdown,
            );
            let resumed = queue.resume().await?;
            if resumed > 0 {
                tracing::info!(resumed, "resuming recording uploads of a previous run");
            }
            tokio::spawn(queue.clone().run());
            recordings.uploads = Some(queue);
        }
        recordings.audit = Some(audit);
        Ok(recordings)
    }

    /// The recordings without uploads (review commands, tests).
    pub fn local(config: &Config, store: Store) -> Recordings {
        let database_dir = match Backend::of_url(&config.database_url()) {
            Some(Backend::Sqlite) => Some(config.state_dir.clone()),
            _ => None,
        };
        Recordings {
            config: Arc::new(config.recording.clone()),
            dir: config.recordings_dir(),
            database_dir,
            store,
            uploads: None,
            audit: None,
        }
    }

    /// With `queue` as the upload queue and `audit` for the spool's
    /// events (a second view of a node's recordings, tests).
    pub fn with_uploads(
        mut self,
        queue: UploadQueue,
        audit: Arc<dyn RecordingAudit>,
    ) -> Recordings {
        self.uploads = Some(queue);
        self.audit = Some(audit);
        self
    }

    /// The upload queue, when `recording.store` is set.
    pub fn uploads(&self) -> Option<&UploadQueue> {
        self.uploads.as_ref()
    }

    /// Where session `session_id`'s recording is written.
    pub fn path_of(&self, session_id: &str) -> PathBuf {
        self.dir.join(format!("{session_id}.cast"))
    }

    /// May a new session's recording start now? No when the recordings'
    /// or the SQLite database's filesystem has less than
    /// `recording.min_free_bytes` free, or (with object storage) when the
    /// spool holds `recording.spool_max_bytes` or more and
    /// `on_spool_full = "refuse"`. Ask before every session; refuse the
    /// session with the error's `Display` and audit its
    /// [`StartRefused::detail`].
    ///
    /// # Errors
    /// [`StartRefused`]; also when the space cannot be measured.
    pub async fn may_start(&self) -> Result<(), StartRefused> {
        let min = self.config.min_free_bytes;
        let mut dirs = vec![self.dir.clone()];
        dirs.extend(self.database_dir.clone());
        for dir in dirs {
            let free = free_bytes(&dir).map_err(|e| {
                StartRefused::Unknown(format!(
                    "cannot read the free space of {}: {e}",
                    dir.display()
                ))
            })?;
            if free < min {
                return Err(StartRefused::LowDisk {
                    path: dir,
                    free_bytes: free,
                    min_free_bytes: min,
                });
            }
        }
        if self.uploads.is_none() {
            return Ok(());
        }
        let spool_bytes = self.spool_bytes().await?;
        let spool_max_bytes = self.config.spool_max_bytes;
        if spool_bytes < spool_max_bytes {
            return Ok(());
        }
        match self.config.on_spool_full {
            SpoolFull::Refuse => Err(StartRefused::SpoolFull {
                spool_bytes,
                spool_max_bytes,
            }),
            SpoolFull::Continue => {
                tracing::warn!(
                    spool_bytes,
                    spool_max_bytes,
                    "recording spool over its bound"
                );
                let event = UploadEvent::SpoolOverflowed {
                    spool_bytes,
                    spool_max_bytes,
                };
                match &self.audit {
                    Some(audit) => audit
                        .record(None, &event)
                        .await
                        .map_err(StartRefused::Unknown),
                    None => Ok(()),
                }
            }
        }
    }

    /// Bytes of this node's recordings not yet uploaded.
    async fn spool_bytes(&self) -> Result<u64, StartRefused> {
        Ok(self.spool().await?.1)
    }

    /// This node's recordings not yet uploaded: how many, and their bytes
    /// on local disk (for the metrics).
    ///
    /// # Errors
    /// [`StartRefused::Unknown`] when the database cannot say.
    pub async fn spool(&self) -> Result<(usize, u64), StartRefused> {
        let paths = self
            .store
            .spooled_recordings()
            .await
            .map_err(|e| StartRefused::Unknown(e.to_string()))?;
        let bytes = paths
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        Ok((paths.len(), bytes))
    }

    /// Creates session `session_id`'s recording at [`Recordings::path_of`]
    /// with `recording.max_bytes`, the live floor of half of
    /// `recording.min_free_bytes` and `flush_interval`, recording input
    /// when `record_input` (pass `recording.record_input` for terminals,
    /// false for SFTP and scp, whose input is file data), and registers its
    /// upload when object storage is configured.
    ///
    /// # Errors
    /// As [`Recorder::create_limited`]; [`RecordingError::Store`] when the
    /// upload cannot be registered (the recording is not started).
    pub async fn create(
        &self,
        session_id: &str,
        header: &Header,
        record_input: bool,
    ) -> Result<Recorder, RecordingError> {
        let path = self.path_of(session_id);
        let limits = RecorderLimits {
            max_bytes: self.config.max_bytes,
            reserve_bytes: self.config.min_free_bytes / 2,
        };
        let (recorder, ended) = Recorder::start(
            &path,
            header,
            record_input,
            self.config.flush_interval,
            limits,
        )
        .await?;
        if let Some(queue) = &self.uploads
            && let Err(e) = queue.register(session_id, &path, ended).await
        {
            drop(recorder);
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
        Ok(recorder)
    }

    /// Opens session `session_id`'s recording for review, wherever it is
    /// (see [`open`]).
    ///
    /// # Errors
    /// As [`open`].
    pub async fn open(
        &self,
        session_id: &str,
        recording_path: &str,
    ) -> Result<OpenedRecording, RecordingError> {
        open(&self.config, &self.store, session_id, recording_path).await
    }
}

/// Free bytes (for unprivileged users) of the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> nix::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir)?;
    Ok(stat.blocks_available().saturating_mul(stat.fragment_size()))
}

/// Where an opened recording was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordingSource {
    /// The local file (the node's copy, not yet uploaded or no store).
    Local(PathBuf),
    /// The object store: `s3://BUCKET/KEY`, checked against its manifest.
    Store(String),
}

/// A recording read for review: its bytes as recorded (asciicast v2, for
/// `sessions export`, a web player, or [`super::parse`]).
#[derive(Debug, Clone)]
pub struct OpenedRecording {
    /// The `.cast` bytes.
    pub bytes: Vec<u8>,
    /// Where they came from.
    pub source: RecordingSource,
    /// The manifest, when read from the object store (its SHA-256 and size
    /// were checked against `bytes`; its signature is the caller's to check
    /// against the keys it trusts).
    pub manifest: Option<Manifest>,
}

impl OpenedRecording {
    /// The bytes as text, parsed.
    ///
    /// # Errors
    /// [`RecordingError::Malformed`].
    pub fn parse(&self) -> Result<(Header, Vec<super::Event>), RecordingError> {
        super::parse(&String::from_utf8_lossy(&self.bytes))
    }
}

/// Opens session `session_id`'s recording: the local file at
/// `recording_path` (the session row's) while it exists, else the object
/// store copy named by its upload row (or, with no row, by
/// `recording.store`'s keys), whose size and SHA-256 must match its
/// manifest. For `sessions play/show/export/search`, `audit verify` and the
/// web console.
///
/// # Errors
/// [`RecordingError::Read`] for a local file that cannot be read,
/// [`RecordingError::NotFound`] when it is neither local nor stored,
/// [`RecordingError::Manifest`] when the stored copy does not match its
/// manifest, and the object store's errors.
pub async fn open(
    config: &RecordingConfig,
    store: &Store,
    session_id: &str,
    recording_path: &str,
) -> Result<OpenedRecording, RecordingError> {
    let path = PathBuf::from(recording_path);
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            return Ok(OpenedRecording {
                bytes,
                source: RecordingSource::Local(path),
                manifest: None,
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(RecordingError::Read { path, source }),
    }
    let Some(archive) = Archive::from_config(config)? else {
        return Err(RecordingError::NotFound(session_id.to_string()));
    };
    let manifest_key = match store.upload(session_id).await? {
        Some(row) => row.manifest_key,
        None => archive.location(session_id).manifest,
    };
    let Some(manifest) = archive.get(&manifest_key).await? else {
        return Err(RecordingError::NotFound(session_id.to_string()));
    };
    let manifest = Manifest::parse(session_id, &manifest)?;
    let bytes = archive.get(&manifest.object).await?.ok_or_else(|| {
        RecordingError::manifest(
            session_id,
            format!("its recording {} is missing", manifest.object),
        )
    })?;
    manifest.check(&digest_bytes(&bytes))?;
    Ok(OpenedRecording {
        bytes,
        source: RecordingSource::Store(archive.url(&manifest.object)),
        manifest: Some(manifest),
    })
}
