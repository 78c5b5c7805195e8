//! Encryption at rest for the sensitive side of the boundary: every record on a sensitive topic
//! (`telemetry.raw`, `telemetry.validated`, `deadletter.sensitive`, the validator's changelog)
//! is sealed by its producer in an AES-256-GCM envelope and opened only by the stages allowed to
//! read it, so a broker disk, a backup or a mirrored cluster holds no readable telemetry.
//!
//! Envelope: the record value becomes `nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)`, and the
//! header `seqmon-enc` says `v1:<key id>`. The additional authenticated data is the topic's role
//! and the record key, so an envelope moved to another topic or key does not open. Nonces are
//! random (96 bits from the OS); one key may seal 2^32 records before the birthday bound matters,
//! so keys are rotated by adding a key and making it the active one: every key of the ring still
//! opens what it sealed. Keys are files `<key id>.key` (64 hex digits) in one folder, e.g. a
//! mounted Kubernetes Secret; they are never logged.
//!
//! Failure: a record that is not sealed, sealed under a key id the ring does not hold, or whose
//! tag does not verify is bad input (the caller dead-letters it), never a crash.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use seqmon_model::topics::TopicRole;

/// Name of the record header that marks an envelope and names its key.
pub const HEADER: &str = "seqmon-enc";

const NONCE_LEN: usize = 12;

/// Why an envelope did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The record carries no envelope header, on a topic that requires one.
    #[error("not encrypted (records on this topic must be sealed)")]
    NotSealed,
    /// The header names a key id the ring does not hold.
    #[error("sealed under key id {0:?}, which this key ring does not hold")]
    UnknownKey(String),
    /// The header is not `v1:<key id>`.
    #[error("envelope header is malformed")]
    BadHeader,
    /// The tag did not verify: corrupted, truncated, or moved to another topic or key.
    #[error("envelope does not verify (corrupted, or moved to another topic or key)")]
    Corrupt,
}

/// Why a key ring could not be loaded. The message names the file, never the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyRingError(pub String);

/// The AES-256 keys of a deployment, by key id, and the one that seals new records.
#[derive(Clone)]
pub struct KeyRing {
    keys: BTreeMap<String, Aes256Gcm>,
    active: String,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn hex_key(text: &str) -> Option<[u8; 32]> {
    let hex: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if hex.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        key[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(key)
}

impl KeyRing {
    /// A ring from `(key id, 32-byte key)` pairs; `active` seals new records.
    pub fn new(
        keys: impl IntoIterator<Item = (String, [u8; 32])>,
        active: &str,
    ) -> Result<Self, KeyRingError> {
        let mut ring = BTreeMap::new();
        for (id, key) in keys {
            if !valid_key_id(&id) {
                return Err(KeyRingError(format!(
                    "key id {id:?} must be 1-64 letters, digits, '-', '_' or '.'"
                )));
            }
            let cipher = Aes256Gcm::new_from_slice(&key)
                .map_err(|_| KeyRingError(format!("key {id:?} is not 32 bytes")))?;
            ring.insert(id, cipher);
        }
        if !ring.contains_key(active) {
            return Err(KeyRingError(format!(
                "the active key id {active:?} is not in the key ring ({} keys)",
                ring.len()
            )));
        }
        Ok(KeyRing {
            keys: ring,
            active: active.to_string(),
        })
    }

    /// The ring in a folder: one file `<key id>.key` per key, 64 hex digits each.
    pub fn from_dir(dir: &Path, active: &str) -> Result<Self, KeyRingError> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| KeyRingError(format!("cannot read {}: {e}", dir.display())))?;
        let mut keys = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|e| KeyRingError(format!("cannot read {}: {e}", dir.display())))?
                .path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".key"))
            else {
                continue;
            };
            let text = std::fs::read_to_string(&path)
                .map_err(|e| KeyRingError(format!("cannot read {}: {e}", path.display())))?;
            let key = hex_key(&text).ok_or_else(|| {
                KeyRingError(format!(
                    "{} does not hold 64 hex digits (a 256-bit key)",
                    path.display()
                ))
            })?;
            keys.push((id.to_string(), key));
        }
        KeyRing::new(keys, active)
    }

    /// The key id that seals new records.
    pub fn active(&self) -> &str {
        &self.active
    }

    fn aad(role: TopicRole, record_key: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(role.as_str().len() + 1 + record_key.len());
        aad.extend_from_slice(role.as_str().as_bytes());
        aad.push(0);
        aad.extend_from_slice(record_key);
        aad
    }

    /// Bytes sealing adds to a record: nonce, GCM tag and the envelope header.
    pub fn sealing_overhead(&self) -> usize {
        NONCE_LEN + 16 + HEADER.len() + "v1:".len() + self.active.len()
    }

    /// Seals `plaintext` for `role` and `record_key` under the active key: the envelope and the
    /// header value to send with it.
    pub fn seal(&self, role: TopicRole, record_key: &[u8], plaintext: &[u8]) -> (Vec<u8>, String) {
        let cipher = &self.keys[&self.active];
        let mut nonce = [0u8; NONCE_LEN];
        // The OS generator does not fail on the platforms we run on; if it ever did, a fixed
        // nonce would break GCM, so stop rather than seal.
        getrandom::fill(&mut nonce).expect("the OS random generator is available");
        let aad = Self::aad(role, record_key);
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer does not fail");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        (out, format!("v1:{}", self.active))
    }

    /// Opens an envelope of `role` and `record_key` whose header value is `header`.
    pub fn open(
        &self,
        role: TopicRole,
        record_key: &[u8],
        header: Option<&[u8]>,
        envelope: &[u8],
    ) -> Result<Vec<u8>, OpenError> {
        let header = header.ok_or(OpenError::NotSealed)?;
        let id = std::str::from_utf8(header)
            .ok()
            .and_then(|h| h.strip_prefix("v1:"))
            .ok_or(OpenError::BadHeader)?;
        let cipher = self
            .keys
            .get(id)
            .ok_or_else(|| OpenError::UnknownKey(id.chars().take(64).collect()))?;
        if envelope.len() < NONCE_LEN + 16 {
            return Err(OpenError::Corrupt);
        }
        let (nonce, sealed) = envelope.split_at(NONCE_LEN);
        let aad = Self::aad(role, record_key);
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| OpenError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(ids: &[(&str, u8)], active: &str) -> KeyRing {
        KeyRing::new(ids.iter().map(|(id, b)| (id.to_string(), [*b; 32])), active).unwrap()
    }

    #[test]
    fn seals_and_opens_and_the_envelope_hides_the_value() {
        let r = ring(&[("k1", 1)], "k1");
        let plain = b"telemetry of A00123 with run 200619_A00123_0042_AH5NTFDSXX";
        let (env, header) = r.seal(TopicRole::Raw, b"A00123", plain);
        assert_eq!(header, "v1:k1");
        assert!(!env.windows(6).any(|w| w == b"A00123"));
        assert_eq!(
            r.open(TopicRole::Raw, b"A00123", Some(header.as_bytes()), &env)
                .unwrap(),
            plain
        );
        let (again, _) = r.seal(TopicRole::Raw, b"A00123", plain);
        assert_ne!(env, again, "a fresh nonce per record");
    }

    #[test]
    fn rotation_keeps_old_records_readable() {
        let old = ring(&[("k1", 1)], "k1");
        let (env, header) = old.seal(TopicRole::Validated, b"k", b"x");
        let rotated = ring(&[("k1", 1), ("k2", 2)], "k2");
        assert_eq!(
            rotated
                .open(TopicRole::Validated, b"k", Some(header.as_bytes()), &env)
                .unwrap(),
            b"x"
        );
        assert_eq!(rotated.seal(TopicRole::Validated, b"k", b"x").1, "v1:k2");
    }

    #[test]
    fn what_does_not_open_is_a_typed_error() {
        let r = ring(&[("k1", 1)], "k1");
        let (env, header) = r.seal(TopicRole::Raw, b"A", b"value");
        let h = Some(header.as_bytes());
        assert_eq!(
            r.open(TopicRole::Raw, b"A", None, &env),
            Err(OpenError::NotSealed)
        );
        assert_eq!(
            r.open(TopicRole::Raw, b"A", Some(b"v1:k9"), &env),
            Err(OpenError::UnknownKey("k9".into()))
        );
        assert_eq!(
            r.open(TopicRole::Raw, b"A", Some(b"zz"), &env),
            Err(OpenError::BadHeader)
        );
        assert_eq!(
            r.open(TopicRole::Validated, b"A", h, &env),
            Err(OpenError::Corrupt),
            "moved to another topic"
        );
        assert_eq!(
            r.open(TopicRole::Raw, b"B", h, &env),
            Err(OpenError::Corrupt),
            "moved to another key"
        );
        let mut flipped = env.clone();
        flipped[20] ^= 1;
        assert_eq!(
            r.open(TopicRole::Raw, b"A", h, &flipped),
            Err(OpenError::Corrupt)
        );
        assert_eq!(
            r.open(TopicRole::Raw, b"A", h, &env[..10]),
            Err(OpenError::Corrupt)
        );
    }

    #[test]
    fn a_ring_loads_from_a_folder_and_refuses_bad_keys_without_printing_them() {
        let dir = std::env::temp_dir().join(format!("seqmon-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("2026-11.key"), "ab".repeat(32)).unwrap();
        std::fs::write(dir.join("README"), "not a key").unwrap();
        let r = KeyRing::from_dir(&dir, "2026-11").unwrap();
        assert_eq!(r.active(), "2026-11");
        assert!(!format!("{r:?}").contains("abab"));
        assert!(KeyRing::from_dir(&dir, "other").is_err());
        std::fs::write(dir.join("short.key"), "abcd").unwrap();
        let err = KeyRing::from_dir(&dir, "2026-11").unwrap_err().to_string();
        assert!(err.contains("short.key") && !err.contains("abcd"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
