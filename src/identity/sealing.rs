//! Refresh tokens encrypted at rest (review finding M5): the database is
//! not a master key. A refresh token is sealed with AES-256-GCM (NIST SP
//! 800-38D, through aws-lc-rs) under a key that lives in a file, never in
//! the database, with the binding's fingerprint, principal and issuer as
//! associated data, so a sealed token copied onto another row does not
//! open.
//!
//! Sealed text: `pcv1:KEYID:BASE64URL(nonce || ciphertext || tag)`, where
//! KEYID is the first 8 hex digits of SHA-256 of the key (to say "sealed
//! with another key" rather than "corrupt") and the nonce is 96 random
//! bits per seal.
//!
//! The key file holds 32 random bytes in standard base64 (one line). The
//! default file (`{state_dir}/refresh-token.key`) is created with mode
//! 0600 at first start; a configured one must exist. Either must not be
//! readable by group or others. Owns the key and the format only: it never
//! logs a token or the key.

use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::config::Secret;

/// Prefix of sealed refresh tokens.
pub const SEALED_PREFIX: &str = "pcv1:";

/// Name of the default key file in the state directory.
pub const DEFAULT_KEY_FILE: &str = "refresh-token.key";

const KEY_LEN: usize = 32;

/// A failed sealing step. Never holds a token or key.
#[derive(Debug, thiserror::Error)]
pub enum SealingError {
    /// The key file cannot be read, created or is not a key.
    #[error("refresh token key {path}: {message}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The key file is readable by group or others.
    #[error("refresh token key {path}: mode {mode:o} lets group or others read it; chmod 600")]
    KeyFileMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The stored value is not sealed (a clear-text token of an older
    /// version, or a value written into the database by someone else).
    #[error("the stored refresh token is not sealed")]
    NotSealed,
    /// Sealed with another key (another gateway's, or the key file was
    /// replaced).
    #[error("the refresh token was sealed with key {0}, not this gateway's")]
    OtherKey(String),
    /// It does not decrypt: corrupt, or moved to another binding.
    #[error("the sealed refresh token does not open for this binding")]
    Open,
    /// The system random generator or the cipher failed.
    #[error("sealing failed")]
    Seal,
}

/// The key refresh tokens are sealed with.
pub struct RefreshTokenKey {
    key: LessSafeKey,
    id: String,
}

impl std::fmt::Debug for RefreshTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RefreshTokenKey({})", self.id)
    }
}

/// What a sealed token is bound to (AEAD associated data).
#[derive(Debug, Clone, Copy)]
pub struct SealedFor<'a> {
    /// The key binding's fingerprint.
    pub fingerprint: &'a str,
    /// Its principal.
    pub principal: &'a str,
    /// Its issuer URL.
    pub issuer: &'a str,
}

impl SealedFor<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut aad = b"portcullis refresh token v1".to_vec();
        for part in [self.fingerprint, self.principal, self.issuer] {
            aad.push(0);
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

impl RefreshTokenKey {
    /// Reads the key at `path`; when it does not exist and `create` is
    /// true, writes a new random key there first (mode 0600, never
    /// replacing a file).
    ///
    /// # Errors
    /// [`SealingError::KeyFile`] or [`SealingError::KeyFileMode`].
    pub fn load_or_create(path: &Path, create: bool) -> Result<RefreshTokenKey, SealingError> {
        let err = |message: String| SealingError::KeyFile {
            path: path.to_path_buf(),
            message,
        };
        if create && !path.exists() {
            let mut bytes = [0u8; KEY_LEN];
            aws_lc_rs::rand::fill(&mut bytes).map_err(|_| SealingError::Seal)?;
            let text = format!(
                "{}\n",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            );
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| err(e.to_string()))?;
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| err(e.to_string()))?;
            tracing::info!(path = %path.display(), "refresh token key created");
        }
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SealingError::KeyFileMode {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| err("is not base64".into()))?;
        RefreshTokenKey::from_bytes(&bytes).map_err(|_| err(format!("is not {KEY_LEN} bytes")))
    }

    /// A key from its 32 bytes.
    ///
    /// # Errors
    /// [`SealingError::Seal`] when `bytes` is not 32 bytes long.
    pub fn from_bytes(bytes: &[u8]) -> Result<RefreshTokenKey, SealingError> {
        if bytes.len() != KEY_LEN {
            return Err(SealingError::Seal);
        }
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| SealingError::Seal)?;
        let digest = Sha256::digest(bytes);
        Ok(RefreshTokenKey {
            key: LessSafeKey::new(key),
            id: hex::encode(&digest[..4]),
        })
    }

    /// The key's id (8 hex digits), shown in sealed values and errors.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// True when `stored` looks sealed (by any key).
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(SEALED_PREFIX)
    }

    /// Seals `token` for the binding `for_`.
    ///
    /// # Errors
    /// [`SealingError::Seal`] when the random generator or cipher fails.
    pub fn seal(&self, token: &Secret, for_: &SealedFor<'_>) -> Result<String, SealingError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealingError::Seal)?;
        let mut data = token.expose().as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(for_.aad()),
                &mut data,
            )
            .map_err(|_| SealingError::Seal)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!(
            "{SEALED_PREFIX}{}:{}",
            self.id,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
        ))
    }

    /// Opens a value [`Self::seal`] made for the same binding.
    ///
    /// # Errors
    /// [`SealingError::NotSealed`], [`SealingError::OtherKey`] or
    /// [`SealingError::Open`].
    pub fn open(&self, stored: &str, for_: &SealedFor<'_>) -> Result<Secret, SealingError> {
        let rest = stored
            .strip_prefix(SEALED_PREFIX)
            .ok_or(SealingError::NotSealed)?;
        let (id, body) = rest.split_once(':').ok_or(SealingError::Open)?;
        if id != self.id {
            return Err(SealingError::OtherKey(crate::audit::truncate(id, 16)));
        }
        let mut data = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| SealingError::Open)?;
        if data.len() < NONCE_LEN {
            return Err(SealingError::Open);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&data[..NONCE_LEN]);
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(for_.aad()),
                &mut data[NONCE_LEN..],
            )
            .map_err(|_| SealingError::Open)?;
        let text = String::from_utf8(plain.to_vec()).map_err(|_| SealingError::Open)?;
        Ok(Secret::new(text))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const FOR: SealedFor<'static> = SealedFor {
        fingerprint: "SHA256:abc",
        principal: "alice",
        issuer: "https://idp",
    };

    #[test]
    fn the_key_file_is_created_0600_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEFAULT_KEY_FILE);
        assert!(RefreshTokenKey::load_or_create(&path, false).is_err());
        let a = RefreshTokenKey::load_or_create(&path, true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = RefreshTokenKey::load_or_create(&path, true).unwrap();
        assert_eq!(a.id(), b.id());
        let sealed = a.seal(&Secret::new("rt-secret".into()), &FOR).unwrap();
        assert_eq!(b.open(&sealed, &FOR).unwrap().expose(), "rt-secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            RefreshTokenKey::load_or_create(&path, true),
            Err(SealingError::KeyFileMode { mode: 0o644, .. })
        ));
        std::fs::write(dir.path().join("bad"), "not base64!").unwrap();
        std::fs::set_permissions(
            dir.path().join("bad"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert!(RefreshTokenKey::load_or_create(&dir.path().join("bad"), false).is_err());
    }

    #[test]
    fn a_sealed_token_opens_only_for_its_binding_and_key() {
        let key = RefreshTokenKey::from_bytes(&[7; 32]).unwrap();
        let token = Secret::new("rt-secret".into());
        let sealed = key.seal(&token, &FOR).unwrap();
        assert!(sealed.starts_with("pcv1:") && !sealed.contains("rt-secret"));
        assert_ne!(
            sealed,
            key.seal(&token, &FOR).unwrap(),
            "a fresh nonce each time"
        );
        assert_eq!(key.open(&sealed, &FOR).unwrap().expose(), "rt-secret");
        for other in [
            SealedFor {
                fingerprint: "SHA256:attacker",
                ..FOR
            },
            SealedFor {
                principal: "mallory",
                ..FOR
            },
            SealedFor {
                issuer: "https://evil",
                ..FOR
            },
        ] {
            assert!(matches!(key.open(&sealed, &other), Err(SealingError::Open)));
        }
        let other_key = RefreshTokenKey::from_bytes(&[8; 32]).unwrap();
        assert!(matches!(
            other_key.open(&sealed, &FOR),
            Err(SealingError::OtherKey(_))
        ));
        assert!(matches!(
            key.open("rt-clear-text", &FOR),
            Err(SealingError::NotSealed)
        ));
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(matches!(key.open(&tampered, &FOR), Err(SealingError::Open)));
        assert!(format!("{key:?}").starts_with("RefreshTokenKey("));
    }
}
