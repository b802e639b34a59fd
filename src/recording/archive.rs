//! The object store recordings go to (`recording.store = "s3://BUCKET/PREFIX"`,
//! any S3-compatible server: AWS, SeaweedFS, MinIO, Garage), through the
//! `object_store` crate: where each recording and manifest lives, and the
//! few requests the upload and the review commands make.
//!
//! Keys: `PREFIX/sessions/SESSION_ID/recording.cast` and
//! `PREFIX/sessions/SESSION_ID/manifest.json`. Manifests are written with
//! `PutMode::Create` (`If-None-Match: *`), so a manifest, once written, can
//! never be replaced through this client.
//!
//! Owns the requests only; it never retries by itself beyond the client's
//! own short retry (the upload queue decides when to try again) and never
//! deletes anything.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use object_store::aws::AmazonS3Builder;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};
use sha2::{Digest, Sha256};

use super::{Digest256, RecordingError};
use crate::config::RecordingConfig;

/// An object store that also takes multipart uploads part by part (so an
/// upload can resume after a restart from the part ids kept in the
/// database): S3, and `InMemory` in unit tests.
pub trait Bucket: ObjectStore + MultipartStore {}

impl<T: ObjectStore + MultipartStore> Bucket for T {}

/// Where a recording is in the object store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectLocation {
    /// The recording's key.
    pub recording: String,
    /// Its manifest's key.
    pub manifest: String,
}

/// The configured bucket and prefix.
#[derive(Clone)]
pub struct Archive {
    bucket: Arc<dyn Bucket>,
    /// `s3://BUCKET` (for messages and URLs).
    url: String,
    prefix: String,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Archive({}/{})", self.url, self.prefix)
    }
}

impl Archive {
    /// The archive of `recording.store`, or `None` when it is not set.
    /// Credentials: `store_access_key_id`/`store_secret_access_key`, else
    /// the `AWS_*` environment (`AWS_ACCESS_KEY_ID`, ...).
    ///
    /// # Errors
    /// [`RecordingError::StoreConfig`] when the client cannot be built.
    pub fn from_config(config: &RecordingConfig) -> Result<Option<Archive>, RecordingError> {
        let Some(store) = &config.store else {
            return Ok(None);
        };
        let rest = store.strip_prefix("s3://").ok_or_else(|| {
            RecordingError::StoreConfig("must be an s3://BUCKET[/PREFIX] URL".into())
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            // The upload queue retries with its own backoff; a request
            // fails within seconds when the store is down.
            .with_retry(object_store::RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(30),
                ..object_store::RetryConfig::default()
            })
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(120)),
            );
        if let Some(endpoint) = &config.store_endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        builder = builder.with_region(
            config
                .store_region
                .clone()
                .or_else(|| std::env::var("AWS_REGION").ok())
                .unwrap_or_else(|| "us-east-1".to_string()),
        );
        if let (Some(id), Some(secret)) =
            (&config.store_access_key_id, &config.store_secret_access_key)
        {
            builder = builder
                .with_access_key_id(id.expose())
                .with_secret_access_key(secret.expose());
        }
        let s3 = builder
            .build()
            .map_err(|e| RecordingError::StoreConfig(e.to_string()))?;
        Ok(Some(Archive::new(
            Arc::new(s3),
            &format!("s3://{bucket}"),
            prefix,
        )))
    }

    /// An archive on any [`Bucket`] (tests use `InMemory`).
    pub fn new(bucket: Arc<dyn Bucket>, url: &str, prefix: &str) -> Archive {
        Archive {
            bucket,
            url: url.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        }
    }

    /// The keys of a session's recording and manifest.
    pub fn location(&self, session_id: &str) -> ObjectLocation {
        let base = if self.prefix.is_empty() {
            format!("sessions/{session_id}")
        } else {
            format!("{}/sessions/{session_id}", self.prefix)
        };
        ObjectLocation {
            recording: format!("{base}/recording.cast"),
            manifest: format!("{base}/manifest.json"),
        }
    }

    /// `s3://BUCKET/KEY`.
    pub fn url(&self, key: &str) -> String {
        format!("{}/{key}", self.url)
    }

    /// Starts a multipart upload of `key`; returns its id.
    ///
    /// # Errors
    /// [`RecordingError::Object`].
    pub async fn create_multipart(&self, key: &str) -> Result<String, RecordingError> {
        self.bucket
            .create_multipart(&ObjectPath::from(key))
            .await
            .map_err(object("start a multipart upload of", key))
    }

    /// Uploads part `index` (0-based) of the multipart upload `id`;
    /// returns its id (the ETag).
    ///
    /// # Errors
    /// [`RecordingError::Object`].
    pub async fn put_part(
        &self,
        key: &str,
        id: &str,
        index: usize,
        bytes: Vec<u8>,
    ) -> Result<String, RecordingError> {
        let part = self
            .bucket
            .put_part(
                &ObjectPath::from(key),
                &id.to_string(),
                index,
                PutPayload::from(bytes),
            )
            .await
            .map_err(object("upload a part of", key))?;
        Ok(part.content_id)
    }

    /// Completes the multipart upload `id` from its part ids in order.
    ///
    /// # Errors
    /// [`RecordingError::Object`].
    pub async fn complete_multipart(
        &self,
        key: &str,
        id: &str,
        parts: &[String],
    ) -> Result<(), RecordingError> {
        let parts = parts
            .iter()
            .map(|p| PartId {
                content_id: p.clone(),
            })
            .collect();
        self.bucket
            .complete_multipart(&ObjectPath::from(key), &id.to_string(), parts)
            .await
            .map_err(object("complete the upload of", key))?;
        Ok(())
    }

    /// Abandons the multipart upload `id` (its parts are freed).
    ///
    /// # Errors
    /// [`RecordingError::Object`].
    pub async fn abort_multipart(&self, key: &str, id: &str) -> Result<(), RecordingError> {
        self.bucket
            .abort_multipart(&ObjectPath::from(key), &id.to_string())
            .await
            .map_err(object("abort the upload of", key))
    }

    /// Writes `bytes` at `key` in one request (a recording smaller than a
    /// part), replacing what is there.
    ///
    /// # Errors
    /// [`RecordingError::Object`].
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), RecordingError> {
        self.bucket
            .put(&ObjectPath::from(key), PutPayload::from(bytes))
            .await
            .map_err(object("upload", key))?;
        Ok(())
    }

    /// Writes `bytes` at `key` only if nothing is there (`PutMode::Create`,
    /// `If-None-Match: *`): `Ok(false)` when an object already exists
    /// (write-once: it is left as it is).
    ///
    /// # Errors
    /// [`RecordingError::Object`] for any other failure.
    pub async fn put_once(&self, key: &str, bytes: Vec<u8>) -> Result<bool, RecordingError> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .bucket
            .put_opts(&ObjectPath::from(key), PutPayload::from(bytes), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(object("write once", key)(e)),
        }
    }

    /// The whole object at `key`; `None` when there is none.
    ///
    /// # Errors
    /// [`RecordingError::Object`].
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, RecordingError> {
        match self.bucket.get(&ObjectPath::from(key)).await {
            Ok(result) => Ok(Some(
                result.bytes().await.map_err(object("read", key))?.to_vec(),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(object("read", key)(e)),
        }
    }

    /// Size and SHA-256 of the object at `key`, read as a stream (a
    /// recording may be gigabytes): what the store really holds.
    ///
    /// # Errors
    /// [`RecordingError::Object`], also when it does not exist.
    pub async fn digest(&self, key: &str) -> Result<Digest256, RecordingError> {
        let result = self
            .bucket
            .get(&ObjectPath::from(key))
            .await
            .map_err(object("read", key))?;
        let mut stream = result.into_stream();
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(object("read", key))?;
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
        }
        Ok(Digest256 {
            bytes,
            sha256: hex::encode(hasher.finalize()),
            output_bytes: 0,
        })
    }
}

/// Maps an object_store error of `step` on `key`.
fn object(step: &'static str, key: &str) -> impl FnOnce(object_store::Error) -> RecordingError {
    let key = key.to_string();
    move |source| RecordingError::Object {
        step,
        key: key.into(),
        source: Box::new(source),
    }
}

/// True when `error` says the multipart upload is unknown to the store
/// (it expired, or was aborted): the upload starts over.
pub(super) fn upload_is_gone(error: &RecordingError) -> bool {
    matches!(
        error,
        RecordingError::Object { source, .. }
            if matches!(**source, object_store::Error::NotFound { .. })
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[tokio::test]
    async fn keys_and_write_once() {
        let archive = Archive::new(
            Arc::new(object_store::memory::InMemory::new()),
            "s3://b",
            "/node1/",
        );
        let at = archive.location("s1");
        assert_eq!(at.recording, "node1/sessions/s1/recording.cast");
        assert_eq!(at.manifest, "node1/sessions/s1/manifest.json");
        assert_eq!(
            archive.url(&at.manifest),
            "s3://b/node1/sessions/s1/manifest.json"
        );
        assert!(
            archive
                .put_once(&at.manifest, b"one".to_vec())
                .await
                .unwrap()
        );
        assert!(
            !archive
                .put_once(&at.manifest, b"two".to_vec())
                .await
                .unwrap()
        );
        assert_eq!(archive.get(&at.manifest).await.unwrap().unwrap(), b"one");
        assert_eq!(archive.get(&at.recording).await.unwrap(), None);
        let id = archive.create_multipart(&at.recording).await.unwrap();
        let a = archive
            .put_part(&at.recording, &id, 0, vec![b'a'; 10])
            .await
            .unwrap();
        let b = archive
            .put_part(&at.recording, &id, 1, vec![b'b'; 3])
            .await
            .unwrap();
        archive
            .complete_multipart(&at.recording, &id, &[a, b])
            .await
            .unwrap();
        let digest = archive.digest(&at.recording).await.unwrap();
        let whole = [vec![b'a'; 10], vec![b'b'; 3]].concat();
        assert_eq!(digest.bytes, 13);
        assert_eq!(digest.sha256, hex::encode(Sha256::digest(&whole)));
    }
}
