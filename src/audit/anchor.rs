//! Anchors: places outside the database where every signed head is written
//! as it is made, so a database writer cannot quietly cut or rewrite the
//! log (`audit verify --anchor` compares them, `anchor_compare.rs`).
//!
//! A sink only ever creates: a directory gets one new file per head
//! (`O_CREAT|O_EXCL`, never rewritten), an object store one new object
//! (`PutMode::Create`), the JSON export one appended line. A head that
//! already exists at its place is an error, never overwritten: it means the
//! database's chain of heads was cut and signed again.
//!
//! Never decides whether a head is valid (that is `check.rs`).

use std::future::Future;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::AuditError;
use super::export::{Export, row_of};
use super::head::{AnchoredHead, HEAD_SCHEMA};
use crate::store::AuditRow;

/// A boxed future of a sink write.
pub type PutFuture<'a> = Pin<Box<dyn Future<Output = Result<(), AuditError>> + Send + 'a>>;

/// Somewhere signed heads are written once and never rewritten.
pub trait AnchorSink: Send + Sync {
    /// What it is, for messages (`directory /var/anchor`, ...).
    fn describe(&self) -> String;

    /// Writes `head` as a new entry.
    ///
    /// # Errors
    /// [`AuditError::AnchorWrite`]; [`AuditError::AnchorTaken`] when an
    /// entry for this place in the chain of heads already exists.
    fn put<'a>(&'a self, head: &'a AnchoredHead) -> PutFuture<'a>;
}

/// The name of `head`'s entry: `head-{seq, 12 digits}.json` (version 1
/// heads: `head-v1-{event id}.json`).
pub fn entry_name(head: &AnchoredHead) -> String {
    match head.seq {
        Some(seq) => format!("head-{seq:012}.json"),
        None => format!("head-v1-{:012}.json", head.event_id),
    }
}

/// A directory: one file per head, created with `O_EXCL`, mode 0400, synced
/// (file and directory) before `put` returns.
pub struct DirectorySink {
    dir: PathBuf,
}

impl DirectorySink {
    /// Uses `dir`, creating it (mode 0700) when missing.
    ///
    /// # Errors
    /// [`AuditError::AnchorWrite`] when it cannot be created.
    pub fn open(dir: &Path) -> Result<DirectorySink, AuditError> {
        use std::os::unix::fs::DirBuilderExt;
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| write_error(&format!("directory {}", dir.display()), e))?;
        }
        Ok(DirectorySink {
            dir: dir.to_path_buf(),
        })
    }

    fn put_now(&self, head: &AnchoredHead) -> Result<(), AuditError> {
        let what = self.describe();
        let path = self.dir.join(entry_name(head));
        let mut text = serde_json::to_vec_pretty(head)
            .map_err(std::io::Error::other)
            .map_err(|e| write_error(&what, e))?;
        text.push(b'\n');
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(AuditError::AnchorTaken {
                    sink: what,
                    entry: path.display().to_string(),
                });
            }
            Err(e) => return Err(write_error(&what, e)),
        };
        file.write_all(&text)
            .and_then(|()| file.sync_all())
            .map_err(|e| write_error(&what, e))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| write_error(&what, e))
    }
}

impl AnchorSink for DirectorySink {
    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }

    fn put<'a>(&'a self, head: &'a AnchoredHead) -> PutFuture<'a> {
        Box::pin(async move { self.put_now(head) })
    }
}

/// The JSON-lines export (`audit.export`): one appended head line.
pub struct ExportSink {
    target: String,
    export: Export,
}

impl ExportSink {
    /// Opens `target` for appending (see [`Export::open`]).
    ///
    /// # Errors
    /// [`AuditError::AnchorWrite`] when it cannot be opened.
    pub fn open(target: &str) -> Result<ExportSink, AuditError> {
        let export =
            Export::open(target).map_err(|e| write_error(&format!("export {target}"), e))?;
        Ok(ExportSink {
            target: target.to_string(),
            export,
        })
    }
}

impl AnchorSink for ExportSink {
    fn describe(&self) -> String {
        format!("export {}", self.target)
    }

    fn put<'a>(&'a self, head: &'a AnchoredHead) -> PutFuture<'a> {
        Box::pin(async move {
            let value = serde_json::to_value(head).map_err(std::io::Error::other);
            value
                .and_then(|v| self.export.write_value(&v))
                .map_err(|e| write_error(&self.describe(), e))
        })
    }
}

/// An object store (`object_store` crate): one object per head under the
/// URL's path, written with `PutMode::Create`.
pub struct ObjectStoreSink {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: object_store::path::Path,
}

impl ObjectStoreSink {
    /// The store at `url` (`file:///dir`, or the schemes of the
    /// `object_store` features built in).
    ///
    /// # Errors
    /// [`AuditError::AnchorUrl`] when the URL is not understood.
    pub fn open(url: &str) -> Result<ObjectStoreSink, AuditError> {
        let (store, prefix) = open_object_store(url)?;
        Ok(ObjectStoreSink {
            url: url.to_string(),
            store,
            prefix,
        })
    }
}

impl AnchorSink for ObjectStoreSink {
    fn describe(&self) -> String {
        format!("object store {}", self.url)
    }

    fn put<'a>(&'a self, head: &'a AnchoredHead) -> PutFuture<'a> {
        Box::pin(async move {
            let what = self.describe();
            let body = serde_json::to_vec_pretty(head)
                .map_err(|e| write_error(&what, std::io::Error::other(e)))?;
            let location = self.prefix.clone().join(entry_name(head).as_str());
            let opts = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            match self
                .store
                .put_opts(&location, PutPayload::from(body), opts)
                .await
            {
                Ok(_) => Ok(()),
                Err(object_store::Error::AlreadyExists { .. }) => Err(AuditError::AnchorTaken {
                    sink: what,
                    entry: location.to_string(),
                }),
                Err(e) => Err(write_error(&what, std::io::Error::other(e))),
            }
        })
    }
}

fn open_object_store(
    url: &str,
) -> Result<(Arc<dyn ObjectStore>, object_store::path::Path), AuditError> {
    let bad = |message: String| AuditError::AnchorUrl {
        url: url.to_string(),
        message,
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    let (store, prefix) = object_store::parse_url(&parsed).map_err(|e| bad(e.to_string()))?;
    Ok((Arc::from(store), prefix))
}

fn write_error(sink: &str, source: std::io::Error) -> AuditError {
    AuditError::AnchorWrite {
        sink: sink.to_string(),
        source,
    }
}

/// What an anchor holds: heads, and (from an export) events.
#[derive(Debug, Clone, Default)]
pub struct Anchor {
    /// Where it was read from.
    pub source: String,
    /// Signed heads, in the order found (files by name, lines in order).
    pub heads: Vec<AnchoredHead>,
    /// Exported events, in line order (an export only).
    pub events: Vec<AuditRow>,
    /// Lines or files that could not be read as a head or an event.
    pub unreadable: Vec<String>,
}

/// Reads the anchor at `location`: a directory of head files, a JSON-lines
/// export file, or an object store URL (`file:///...`).
///
/// # Errors
/// [`AuditError::AnchorRead`] when it cannot be read at all.
pub async fn read_anchor(location: &str) -> Result<Anchor, AuditError> {
    if location.contains("://") {
        return read_object_store(location).await;
    }
    let path = Path::new(location);
    let read_error = |source: std::io::Error| AuditError::AnchorRead {
        anchor: location.to_string(),
        source,
    };
    let mut anchor = Anchor {
        source: location.to_string(),
        ..Anchor::default()
    };
    if path.is_dir() {
        let mut names: Vec<String> = std::fs::read_dir(path)
            .map_err(read_error)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("head-") && n.ends_with(".json"))
            .collect();
        names.sort();
        for name in names {
            let text = std::fs::read_to_string(path.join(&name)).map_err(read_error)?;
            take_head(&mut anchor, &name, &text);
        }
        return Ok(anchor);
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => {
                anchor.unreadable.push(format!("line {}", n + 1));
                continue;
            }
        };
        if value.get("schema").and_then(|s| s.as_str()) == Some(HEAD_SCHEMA) {
            take_head(&mut anchor, &format!("line {}", n + 1), line);
        } else if let Some(row) = row_of(&value) {
            anchor.events.push(row);
        } else {
            anchor.unreadable.push(format!("line {}", n + 1));
        }
    }
    Ok(anchor)
}

fn take_head(anchor: &mut Anchor, name: &str, text: &str) {
    match serde_json::from_str::<AnchoredHead>(text) {
        Ok(h) if h.schema == HEAD_SCHEMA => anchor.heads.push(h),
        _ => anchor.unreadable.push(name.to_string()),
    }
}

async fn read_object_store(url: &str) -> Result<Anchor, AuditError> {
    let (store, prefix) = open_object_store(url)?;
    let read_error = |e: object_store::Error| AuditError::AnchorRead {
        anchor: url.to_string(),
        source: std::io::Error::other(e),
    };
    let listing = store
        .list_with_delimiter(Some(&prefix))
        .await
        .map_err(read_error)?;
    let mut locations: Vec<object_store::path::Path> = listing
        .objects
        .into_iter()
        .map(|o| o.location)
        .filter(|l| {
            l.filename()
                .is_some_and(|n| n.starts_with("head-") && n.ends_with(".json"))
        })
        .collect();
    locations.sort();
    let mut anchor = Anchor {
        source: url.to_string(),
        ..Anchor::default()
    };
    for location in locations {
        let bytes = store
            .get(&location)
            .await
            .map_err(read_error)?
            .bytes()
            .await
            .map_err(read_error)?;
        take_head(
            &mut anchor,
            location.as_ref(),
            &String::from_utf8_lossy(&bytes),
        );
    }
    Ok(anchor)
}

/// The newest head in the directory `dir` (by place in the chain of
/// heads), `None` when it holds none or does not exist.
///
/// # Errors
/// [`AuditError::AnchorRead`] when a file cannot be read.
pub fn newest_in_directory(dir: &Path) -> Result<Option<AnchoredHead>, AuditError> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let read_error = |source: std::io::Error| AuditError::AnchorRead {
        anchor: dir.display().to_string(),
        source,
    };
    let newest = std::fs::read_dir(dir)
        .map_err(read_error)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("head-0") && n.ends_with(".json"))
        .max();
    let Some(name) = newest else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(dir.join(&name)).map_err(read_error)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| read_error(std::io::Error::other(format!("{name}: {e}"))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn head(seq: i64) -> AnchoredHead {
        AnchoredHead {
            schema: HEAD_SCHEMA.into(),
            version: 2,
            seq: Some(seq),
            at: 1,
            time: String::new(),
            gateway: "gw".into(),
            event_id: seq * 10,
            event_hash: "h".into(),
            reason: "interval".into(),
            prev_digest: "p".into(),
            public_key: "k".into(),
            signature: "s".into(),
        }
    }

    #[tokio::test]
    async fn sinks_create_once_and_never_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let files = DirectorySink::open(&dir.path().join("heads")).unwrap();
        let url = format!("file://{}", dir.path().join("objects").display());
        std::fs::create_dir(dir.path().join("objects")).unwrap();
        let objects = ObjectStoreSink::open(&url).unwrap();
        let export_path = dir.path().join("audit.jsonl");
        let export = ExportSink::open(export_path.to_str().unwrap()).unwrap();
        for sink in [&files as &dyn AnchorSink, &objects, &export] {
            sink.put(&head(1)).await.unwrap();
            sink.put(&head(2)).await.unwrap();
        }
        let mut changed = head(2);
        changed.event_hash = "other".into();
        for sink in [&files as &dyn AnchorSink, &objects] {
            match sink.put(&changed).await {
                Err(AuditError::AnchorTaken { entry, .. }) => {
                    assert!(entry.ends_with("head-000000000002.json"), "{entry}")
                }
                other => panic!("{}: {other:?}", sink.describe()),
            }
        }
        let dir_anchor = read_anchor(dir.path().join("heads").to_str().unwrap())
            .await
            .unwrap();
        assert_eq!(dir_anchor.heads, [head(1), head(2)]);
        let object_anchor = read_anchor(&url).await.unwrap();
        assert_eq!(object_anchor.heads, [head(1), head(2)]);
        let export_anchor = read_anchor(export_path.to_str().unwrap()).await.unwrap();
        assert_eq!(export_anchor.heads, [head(1), head(2)]);
        assert_eq!(
            newest_in_directory(&dir.path().join("heads")).unwrap(),
            Some(head(2))
        );
        // The files are read-only.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("heads/head-000000000001.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
    }
}
