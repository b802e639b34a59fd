//! Revoked keys (`certificates.revoked_keys`), as sshd's `RevokedKeys`:
//! an OpenSSH key revocation list (OpenSSH PROTOCOL.krl, as written by
//! `ssh-keygen -k`) or a text file of public keys, one per line.
//!
//! `ssh-key` (through russh) has no KRL support, so this is a small
//! parser of its own: bounded ([`MAX_KRL_BYTES`], every length checked
//! against what is left, bitmaps never expanded), fuzzed in its tests, and
//! strict: an unknown section, a critical extension, a signature section
//! (ssh-keygen writes none) or trailing bytes make the whole list
//! unusable, and then every certificate and bound key is refused, as sshd
//! refuses all public keys when its `RevokedKeys` file is unusable (fail
//! closed). The file is read again when it changes (size, mtime or inode),
//! checked at most once per [`RECHECK_INTERVAL`].
//!
//! Revocation follows OpenSSH's `ssh_krl_check_key`: a key is revoked by
//! its SHA-1 or SHA-256 hash or as an explicit key; a certificate also by
//! its key id or serial (serial 0 never matches) in a section for its CA
//! or for every CA (an empty CA key), or when its CA key is revoked.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use russh::keys::HashAlg;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::{Certificate, PublicKey};

/// Largest KRL file read, in bytes.
pub const MAX_KRL_BYTES: usize = 16 * 1024 * 1024;

/// How often the file's metadata is looked at, at most.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

const MAGIC: &[u8; 8] = b"SSHKRL\n\0";
const FORMAT_VERSION: u32 = 1;

const SECTION_CERTIFICATES: u8 = 1;
const SECTION_EXPLICIT_KEY: u8 = 2;
const SECTION_FINGERPRINT_SHA1: u8 = 3;
const SECTION_SIGNATURE: u8 = 4;
const SECTION_FINGERPRINT_SHA256: u8 = 5;
const SECTION_EXTENSION: u8 = 255;
const CERT_SERIAL_LIST: u8 = 0x20;
const CERT_SERIAL_RANGE: u8 = 0x21;
const CERT_SERIAL_BITMAP: u8 = 0x22;
const CERT_KEY_ID: u8 = 0x23;
const CERT_EXTENSION: u8 = 0x39;

/// Why the list cannot be used, or why a key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KrlError {
    /// The file could not be read.
    #[error("revoked keys file {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The file is not a valid KRL (or list of keys).
    #[error("revoked keys file: {0}")]
    Parse(String),
    /// The key or certificate is listed.
    #[error("revoked by certificates.revoked_keys: {0}")]
    Revoked(String),
}

#[derive(Debug, Default)]
struct CertSection {
    /// Wire blob of the CA key; `None`: every CA.
    ca: Option<Vec<u8>>,
    ranges: Vec<(u64, u64)>,
    /// `(serial_offset, big-endian bitmap)`.
    bitmaps: Vec<(u64, Vec<u8>)>,
    key_ids: HashSet<String>,
}

impl CertSection {
    fn revokes_serial(&self, serial: u64) -> bool {
        if self
            .ranges
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&serial))
        {
            return true;
        }
        self.bitmaps.iter().any(|(offset, bits)| {
            let Some(index) = serial.checked_sub(*offset) else {
                return false;
            };
            let byte = index / 8;
            if byte >= bits.len() as u64 {
                return false;
            }
            let b = bits[bits.len() - 1 - byte as usize];
            b & (1 << (index % 8)) != 0
        })
    }
}

/// A parsed revocation list.
#[derive(Debug, Default)]
pub struct Krl {
    certs: Vec<CertSection>,
    keys: HashSet<Vec<u8>>,
    sha1: HashSet<Vec<u8>>,
    sha256: HashSet<Vec<u8>>,
}

/// A bounded reader of the SSH wire format (RFC 4251 §5).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], KrlError> {
        if n > self.0.len() {
            return Err(KrlError::Parse("truncated".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, KrlError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, KrlError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, KrlError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn string(&mut self) -> Result<&'a [u8], KrlError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Krl {
    /// Parses a KRL (PROTOCOL.krl), or, when the bytes do not start with
    /// the KRL magic, a text file of OpenSSH public keys (blank lines and
    /// `#` comments ignored).
    ///
    /// # Errors
    /// [`KrlError::Parse`] naming what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Krl, KrlError> {
        if bytes.len() > MAX_KRL_BYTES {
            return Err(KrlError::Parse(format!("over {MAX_KRL_BYTES} bytes")));
        }
        if !bytes.starts_with(MAGIC) {
            return Krl::parse_key_list(bytes);
        }
        let mut r = Reader(&bytes[MAGIC.len()..]);
        let version = r.u32()?;
        if version != FORMAT_VERSION {
            return Err(KrlError::Parse(format!("format version {version}")));
        }
        let _krl_version = r.u64()?;
        let _generated = r.u64()?;
        let _flags = r.u64()?;
        let _reserved = r.string()?;
        let _comment = r.string()?;
        let mut krl = Krl::default();
        while !r.is_empty() {
            let kind = r.u8()?;
            let mut section = Reader(r.string()?);
            match kind {
                SECTION_CERTIFICATES => krl.certs.push(parse_certs(&mut section)?),
                SECTION_EXPLICIT_KEY => {
                    while !section.is_empty() {
                        krl.keys.insert(section.string()?.to_vec());
                    }
                }
                SECTION_FINGERPRINT_SHA1 | SECTION_FINGERPRINT_SHA256 => {
                    let (len, set) = if kind == SECTION_FINGERPRINT_SHA1 {
                        (20, &mut krl.sha1)
                    } else {
                        (32, &mut krl.sha256)
                    };
                    while !section.is_empty() {
                        let hash = section.string()?;
                        if hash.len() != len {
                            return Err(KrlError::Parse(format!("a hash of {} bytes", hash.len())));
                        }
                        set.insert(hash.to_vec());
                    }
                }
                SECTION_SIGNATURE => {
                    return Err(KrlError::Parse("signed KRLs are not supported".into()));
                }
                SECTION_EXTENSION => skip_extension(&mut section)?,
                other => return Err(KrlError::Parse(format!("unknown section {other}"))),
            }
            if !section.is_empty() {
                return Err(KrlError::Parse("a section has trailing bytes".into()));
            }
        }
        Ok(krl)
    }

    fn parse_key_list(bytes: &[u8]) -> Result<Krl, KrlError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| KrlError::Parse("neither a KRL nor a text list of keys".into()))?;
        let mut krl = Krl::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = PublicKey::from_openssh(line)
                .map_err(|e| KrlError::Parse(format!("line {}: {e}", n + 1)))?;
            krl.keys.insert(blob(key.key_data())?);
        }
        Ok(krl)
    }

    /// Checks a plain key (`ssh_krl_check_key` for a key).
    ///
    /// # Errors
    /// [`KrlError::Revoked`] saying how it is listed.
    pub fn check_key(&self, key: &KeyData) -> Result<(), KrlError> {
        let fingerprint = key.fingerprint(HashAlg::Sha256);
        if self.sha256.contains(fingerprint.as_bytes()) {
            return Err(KrlError::Revoked(format!("key {fingerprint} (SHA-256)")));
        }
        let blob = blob(key)?;
        if !self.sha1.is_empty() {
            let sha1 =
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &blob);
            if self.sha1.contains(sha1.as_ref()) {
                return Err(KrlError::Revoked(format!("key {fingerprint} (SHA-1)")));
            }
        }
        if self.keys.contains(&blob) {
            return Err(KrlError::Revoked(format!("key {fingerprint}")));
        }
        Ok(())
    }

    /// Checks a certificate: its key, its serial and key id for its CA
    /// and for every CA, and its CA key.
    ///
    /// # Errors
    /// [`KrlError::Revoked`] saying how it is listed.
    pub fn check_certificate(&self, cert: &Certificate) -> Result<(), KrlError> {
        self.check_key(cert.public_key())?;
        let ca = blob(cert.signature_key())?;
        for section in &self.certs {
            if section.ca.as_ref().is_some_and(|c| *c != ca) {
                continue;
            }
            if section.key_ids.contains(cert.key_id()) {
                return Err(KrlError::Revoked(format!(
                    "certificate key id {:?}",
                    crate::audit::truncate(cert.key_id(), 64)
                )));
            }
            if cert.serial() != 0 && section.revokes_serial(cert.serial()) {
                return Err(KrlError::Revoked(format!(
                    "certificate serial {}",
                    cert.serial()
                )));
            }
        }
        self.check_key(cert.signature_key())
            .map_err(|e| KrlError::Revoked(format!("its CA: {e}")))
    }
}

fn blob(key: &KeyData) -> Result<Vec<u8>, KrlError> {
    PublicKey::from(key.clone())
        .to_bytes()
        .map_err(|e| KrlError::Parse(format!("cannot encode a key: {e}")))
}

fn parse_certs(r: &mut Reader<'_>) -> Result<CertSection, KrlError> {
    let ca = r.string()?;
    let _reserved = r.string()?;
    let mut section = CertSection {
        ca: (!ca.is_empty()).then(|| ca.to_vec()),
        ..CertSection::default()
    };
    while !r.is_empty() {
        let kind = r.u8()?;
        let mut sub = Reader(r.string()?);
        match kind {
            CERT_SERIAL_LIST => {
                while !sub.is_empty() {
                    let s = sub.u64()?;
                    section.ranges.push((s, s));
                }
            }
            CERT_SERIAL_RANGE => {
                let (lo, hi) = (sub.u64()?, sub.u64()?);
                if lo > hi {
                    return Err(KrlError::Parse(format!("serial range {lo}-{hi}")));
                }
                section.ranges.push((lo, hi));
            }
            CERT_SERIAL_BITMAP => {
                let offset = sub.u64()?;
                let bits = sub.string()?;
                if bits.first().is_some_and(|b| b & 0x80 != 0) {
                    return Err(KrlError::Parse("negative serial bitmap".into()));
                }
                section.bitmaps.push((offset, bits.to_vec()));
            }
            CERT_KEY_ID => {
                while !sub.is_empty() {
                    let id = std::str::from_utf8(sub.string()?)
                        .map_err(|_| KrlError::Parse("a key id is not UTF-8".into()))?;
                    section.key_ids.insert(id.to_string());
                }
            }
            CERT_EXTENSION => skip_extension(&mut sub)?,
            other => {
                return Err(KrlError::Parse(format!(
                    "unknown certificate section {other:#x}"
                )));
            }
        }
        if !sub.is_empty() {
            return Err(KrlError::Parse(
                "a certificate section has trailing bytes".into(),
            ));
        }
    }
    Ok(section)
}

/// An extension section (`string name, bool critical, string data`): a
/// critical one we do not know makes the list unusable.
fn skip_extension(r: &mut Reader<'_>) -> Result<(), KrlError> {
    let name = String::from_utf8_lossy(r.string()?).into_owned();
    let critical = r.u8()? != 0;
    let _data = r.string()?;
    if critical {
        return Err(KrlError::Parse(format!(
            "critical extension {:?}",
            crate::audit::truncate(&name, 64)
        )));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

#[derive(Debug)]
struct Loaded {
    krl: Result<Arc<Krl>, KrlError>,
    stamp: Option<Stamp>,
    checked: Option<Instant>,
}

/// The revoked keys of `certificates.revoked_keys`, read again when the
/// file changes. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct RevokedKeys {
    path: Option<PathBuf>,
    loaded: Option<Arc<Mutex<Loaded>>>,
}

impl RevokedKeys {
    /// No list: nothing is revoked.
    pub fn none() -> RevokedKeys {
        RevokedKeys::default()
    }

    /// The list at `path`, read on first use.
    pub fn at(path: &Path) -> RevokedKeys {
        RevokedKeys {
            path: Some(path.to_path_buf()),
            loaded: Some(Arc::new(Mutex::new(Loaded {
                krl: Err(KrlError::Parse("not read yet".into())),
                stamp: None,
                checked: None,
            }))),
        }
    }

    /// True when a file is configured.
    pub fn is_configured(&self) -> bool {
        self.path.is_some()
    }

    /// The current list (`None` when none is configured), read again
    /// when the file changed since the last look (looked at once a second
    /// at most).
    ///
    /// # Errors
    /// [`KrlError::Read`] / [`KrlError::Parse`] while the file is missing,
    /// unreadable or invalid: refuse then.
    pub fn current(&self) -> Result<Option<Arc<Krl>>, KrlError> {
        let (Some(path), Some(loaded)) = (&self.path, &self.loaded) else {
            return Ok(None);
        };
        let mut l = loaded.lock().unwrap_or_else(|p| p.into_inner());
        if l.checked.is_some_and(|t| t.elapsed() < RECHECK_INTERVAL) {
            return l.krl.clone().map(Some);
        }
        l.checked = Some(Instant::now());
        let read_error = |e: std::io::Error| KrlError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let stamp = match std::fs::metadata(path) {
            Ok(m) => {
                use std::os::unix::fs::MetadataExt;
                Stamp {
                    len: m.len(),
                    modified: m.modified().ok(),
                    inode: m.ino(),
                }
            }
            Err(e) => {
                l.stamp = None;
                l.krl = Err(read_error(e));
                return l.krl.clone().map(Some);
            }
        };
        if l.stamp.as_ref() != Some(&stamp) {
            l.krl = match std::fs::read(path) {
                Ok(bytes) => Krl::parse(&bytes).map(Arc::new),
                Err(e) => Err(read_error(e)),
            };
            match &l.krl {
                Ok(_) => tracing::info!(path = %path.display(), "revoked keys loaded"),
                Err(e) => tracing::error!(error = %e, "revoked keys unusable: refusing keys"),
            }
            l.stamp = Some(stamp);
        }
        l.krl.clone().map(Some)
    }

    /// Refuses `key` when listed or when the list is unusable.
    ///
    /// # Errors
    /// [`KrlError`]: revoked, or the list cannot be read.
    pub fn check_key(&self, key: &KeyData) -> Result<(), KrlError> {
        match self.current()? {
            Some(krl) => krl.check_key(key),
            None => Ok(()),
        }
    }

    /// Refuses `cert` when it, its key or its CA is listed, or when the
    /// list is unusable.
    ///
    /// # Errors
    /// [`KrlError`]: revoked, or the list cannot be read.
    pub fn check_certificate(&self, cert: &Certificate) -> Result<(), KrlError> {
        match self.current()? {
            Some(krl) => krl.check_certificate(cert),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
#[path = "krl_tests.rs"]
mod tests;
