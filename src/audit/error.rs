//! [`AuditError`]: why signing, anchoring, verifying, bundling or reporting
//! the audit log failed. One variant per failed step; the message names
//! what to look at and never carries a secret (keys, tokens).

use crate::store::StoreError;

/// Why an audit operation failed (the audit module's one error enum).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The database could not be read or written.
    #[error(transparent)]
    Database(#[from] StoreError),
    /// The host key could not sign the head.
    #[error("cannot sign the audit chain head: {0}")]
    Signing(String),
    /// A head this gateway signed (or anchored) is no longer in the
    /// database: the log was cut or rewritten there. Nothing more is signed
    /// over it.
    #[error(
        "the audit log was cut or rewritten in the database: signed head {seq} (event {event_id}), \
         which this gateway signed, saw or anchored, is {found}; no head is signed over it. \
         Run `portcullis audit verify --anchor` to see where the database parts from the anchor"
    )]
    HeadMissing {
        /// Its place in the chain of heads.
        seq: i64,
        /// The event it signed.
        event_id: i64,
        /// `missing` or `different`.
        found: &'static str,
    },
    /// The events after the newest signed head do not chain to it; the
    /// gateway refuses to sign over them.
    #[error("the audit chain is broken at event {event_id}: {problem}; no head is signed over it")]
    ChainBroken {
        /// The first event that does not chain.
        event_id: i64,
        /// What is wrong.
        problem: String,
    },
    /// A sink could not take a head (the head is in the database).
    #[error("cannot anchor the signed head in {sink}: {source}")]
    AnchorWrite {
        /// The sink.
        sink: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A sink already holds an entry at this place of the chain of heads:
    /// the database's heads were cut and signed again.
    #[error(
        "{sink} already holds {entry}: the database's chain of heads was cut and signed again \
         (nothing was overwritten)"
    )]
    AnchorTaken {
        /// The sink.
        sink: String,
        /// The existing entry.
        entry: String,
    },
    /// An object store URL was not understood.
    #[error("anchor URL {url}: {message}")]
    AnchorUrl {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// An anchor could not be read.
    #[error("cannot read the anchor {anchor}: {source}")]
    AnchorRead {
        /// The anchor's path or URL.
        anchor: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The bundle could not be written.
    #[error("cannot write the bundle {path}: {source}")]
    BundleWrite {
        /// The output path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The bundle could not be read as a tar archive.
    #[error("cannot read the bundle {path}: {source}")]
    BundleRead {
        /// The bundle's path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A report could not be rendered.
    #[error("cannot render the {format} report: {message}")]
    ReportRender {
        /// `html`, `md`, `csv` or `json`.
        format: String,
        /// Why.
        message: String,
    },
}
