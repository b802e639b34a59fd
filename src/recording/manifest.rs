//! The manifest written next to an uploaded recording, once, with
//! `PutMode::Create`: which session, which object, its size and SHA-256,
//! whether the recorder finished it, and the node's signature over those
//! facts (an SSHSIG, OpenSSH `PROTOCOL.sshsig`, with the node's host key,
//! namespace [`MANIFEST_NAMESPACE`]). A recording swapped or cut in the
//! bucket no longer matches its manifest; a manifest edited no longer
//! matches its signature; and the write-once put refuses a second one.
//!
//! Owns the manifest's format and the signed message; it never signs by
//! itself (the caller's [`super::ManifestSigner`] does, with the audit
//! module's SSHSIG code).

use serde::{Deserialize, Serialize};

use super::{Digest256, RecordingError};

/// SSHSIG namespace of manifest signatures (OpenSSH `PROTOCOL.sshsig`).
pub const MANIFEST_NAMESPACE: &str = "portcullis-recording@portcullis";

/// A recording's manifest (`manifest.json`, version 1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version: 1.
    pub version: u32,
    /// The session.
    pub session_id: String,
    /// The node that recorded and uploaded it (`gateway_id`).
    pub gateway: String,
    /// The recording's object key.
    pub object: String,
    /// The recording's size, in bytes.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the recording.
    pub sha256: String,
    /// True when the recorder finished the file; false when it is the file
    /// as found after its writer stopped or the node restarted.
    pub finished: bool,
    /// When the manifest was made, unix ms.
    pub uploaded_at: i64,
    /// The signing key, OpenSSH public key format.
    pub public_key: String,
    /// SSHSIG (armored) over [`Manifest::signed_message`].
    pub signature: String,
}

impl Manifest {
    /// The text the signature covers: every field but the key and the
    /// signature, one per line, after a fixed first line.
    pub fn signed_message(&self) -> String {
        format!(
            "portcullis-recording-manifest\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
            self.version,
            self.session_id,
            self.gateway,
            self.object,
            self.bytes,
            self.sha256,
            self.finished,
            self.uploaded_at
        )
    }

    /// The manifest as written: pretty JSON and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Parses a manifest read back from the store.
    ///
    /// # Errors
    /// [`RecordingError::Manifest`] when it is not a version 1 manifest.
    pub fn parse(session_id: &str, bytes: &[u8]) -> Result<Manifest, RecordingError> {
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| RecordingError::manifest(session_id, format!("not a manifest: {e}")))?;
        if manifest.version != 1 || manifest.session_id != session_id {
            return Err(RecordingError::manifest(
                session_id,
                format!(
                    "version {} of session {}, expected version 1 of this session",
                    manifest.version, manifest.session_id
                ),
            ));
        }
        Ok(manifest)
    }

    /// Checks that `found` (what the store or a file holds) is the
    /// recording this manifest describes.
    ///
    /// # Errors
    /// [`RecordingError::Manifest`] naming the size or digest that differs.
    pub fn check(&self, found: &Digest256) -> Result<(), RecordingError> {
        let message = if found.bytes != self.bytes {
            format!(
                "the recording has {} bytes, the manifest says {}",
                found.bytes, self.bytes
            )
        } else if found.sha256 != self.sha256 {
            format!(
                "the recording's SHA-256 is {}, the manifest says {}",
                found.sha256, self.sha256
            )
        } else {
            return Ok(());
        };
        Err(RecordingError::manifest(&self.session_id, message))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            version: 1,
            session_id: "s1".into(),
            gateway: "n1".into(),
            object: "p/sessions/s1/recording.cast".into(),
            bytes: 12,
            sha256: "ab".into(),
            finished: true,
            uploaded_at: 1_700_000_000_000,
            public_key: "ssh-ed25519 AAAA".into(),
            signature: "-----BEGIN SSH SIGNATURE-----".into(),
        }
    }

    #[test]
    fn round_trip_message_and_checks() {
        let m = manifest();
        assert_eq!(Manifest::parse("s1", &m.to_bytes()).unwrap(), m);
        assert_eq!(
            m.signed_message(),
            "portcullis-recording-manifest\n1\ns1\nn1\np/sessions/s1/recording.cast\n12\nab\ntrue\n\
             1700000000000\n"
        );
        assert!(Manifest::parse("s2", &m.to_bytes()).is_err());
        assert!(Manifest::parse("s1", b"{}").is_err());
        let found = |bytes, sha256: &str| Digest256 {
            bytes,
            sha256: sha256.into(),
            output_bytes: 0,
        };
        assert!(m.check(&found(12, "ab")).is_ok());
        let err = m.check(&found(11, "ab")).unwrap_err().to_string();
        assert_eq!(
            err,
            "manifest of session s1: the recording has 11 bytes, the manifest says 12"
        );
        assert!(m.check(&found(12, "cd")).is_err());
    }
}
