//! Keyed pseudonyms for identifiers no grammar can hold: `ps-` + the first 20 lower-case hex
//! digits (80 bits) of HMAC-SHA256(key, domain label ‖ 0x00 ‖ value). Deterministic under one
//! key, so a value keeps joining with itself downstream (a bad reagent lot is still one lot),
//! while analysis, which never holds the key, cannot invert or confirm a guess.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Minimum key length in bytes.
pub const MIN_KEY_LEN: usize = 32;

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("pseudonym key too short: {len} bytes, at least {MIN_KEY_LEN} required")]
    TooShort { len: usize },
    #[error("pseudonym key is not hexadecimal")]
    NotHex,
}

/// The secret under which pseudonyms are computed. `Debug` never prints it.
#[derive(Clone)]
pub struct PseudonymKey {
    /// HMAC state with the key already absorbed; cloned per pseudonym.
    mac: HmacSha256,
}

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PseudonymKey(***)")
    }
}

/// What kind of value a pseudonym stands for; part of the HMAC input, so the same string in two
/// fields gets two unrelated pseudonyms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Domain {
    InstrumentSerial,
    RunId,
    FlowcellId,
    Lot,
    Version,
    MessageId,
    AttributeKey,
    Other,
}

impl Domain {
    /// Stable label fed to the HMAC.
    pub fn label(self) -> &'static str {
        match self {
            Domain::InstrumentSerial => "instrument_serial",
            Domain::RunId => "run_id",
            Domain::FlowcellId => "flowcell_id",
            Domain::Lot => "lot",
            Domain::Version => "version",
            Domain::MessageId => "message_id",
            Domain::AttributeKey => "attribute_key",
            Domain::Other => "other",
        }
    }
}

const PREFIX: &str = "ps-";
const HEX_LEN: usize = 20;

impl PseudonymKey {
    /// A key from raw bytes (at least 32).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort { len: bytes.len() });
        }
        // HMAC accepts keys of any length; this cannot fail.
        let mac = <HmacSha256 as Mac>::new_from_slice(bytes)
            .map_err(|_| KeyError::TooShort { len: bytes.len() })?;
        Ok(PseudonymKey { mac })
    }

    /// A key from hexadecimal text (at least 64 hex digits; surrounding whitespace ignored).
    pub fn from_hex(hex: &str) -> Result<Self, KeyError> {
        let hex = hex.trim().as_bytes();
        if !hex.len().is_multiple_of(2) {
            return Err(KeyError::NotHex);
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        let mut bytes = Vec::with_capacity(hex.len() / 2);
        for pair in hex.chunks_exact(2) {
            match (nibble(pair[0]), nibble(pair[1])) {
                (Some(h), Some(l)) => bytes.push(h << 4 | l),
                _ => return Err(KeyError::NotHex),
            }
        }
        let key = Self::from_bytes(&bytes);
        bytes.iter_mut().for_each(|b| *b = 0);
        key
    }

    /// `ps-` + the first 20 lower-case hex digits of HMAC-SHA256(key, label ‖ 0x00 ‖ value).
    pub fn pseudonym(&self, domain: Domain, value: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(domain.label().as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        let digest = mac.finalize().into_bytes();
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(PREFIX.len() + HEX_LEN);
        out.push_str(PREFIX);
        for b in digest.iter().take(HEX_LEN / 2) {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        out
    }
}

/// Whether `s` has a pseudonym's shape: `ps-` + exactly 20 lower-case hex digits.
pub fn is_pseudonym(s: &str) -> bool {
    s.strip_prefix(PREFIX).is_some_and(|h| {
        h.len() == HEX_LEN && h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue;
    use crate::grammar;

    fn key() -> PseudonymKey {
        PseudonymKey::from_bytes(&[7u8; 32]).expect("32 bytes")
    }

    #[test]
    fn keys_are_checked_and_never_printed() {
        assert_eq!(
            PseudonymKey::from_bytes(&[1u8; 31]).map(|_| ()),
            Err(KeyError::TooShort { len: 31 })
        );
        assert_eq!(
            PseudonymKey::from_hex("zz").map(|_| ()),
            Err(KeyError::NotHex)
        );
        assert_eq!(
            PseudonymKey::from_hex(&"ab".repeat(31)).map(|_| ()),
            Err(KeyError::TooShort { len: 31 })
        );
        let k = PseudonymKey::from_hex(&"07".repeat(32)).expect("valid");
        assert_eq!(format!("{k:?}"), "PseudonymKey(***)");
        assert_eq!(
            k.pseudonym(Domain::Lot, "x"),
            key().pseudonym(Domain::Lot, "x"),
            "hex and bytes give the same key"
        );
    }

    #[test]
    fn deterministic_domain_separated_and_known_answer() {
        let k = key();
        let a = k.pseudonym(Domain::Lot, "20191106");
        assert_eq!(a, k.pseudonym(Domain::Lot, "20191106"));
        assert_ne!(a, k.pseudonym(Domain::RunId, "20191106"));
        assert_ne!(a, k.pseudonym(Domain::Lot, "20191107"));
        let other = PseudonymKey::from_bytes(&[8u8; 32]).expect("32 bytes");
        assert_ne!(a, other.pseudonym(Domain::Lot, "20191106"));
        assert!(is_pseudonym(&a), "{a}");
        assert_eq!(a.len(), 23);
        // Known answer, computed independently with Python's hmac module:
        // hmac.new(b"\x07"*32, b"lot\x0020191106", "sha256").hexdigest()[:20]
        assert_eq!(a, format!("ps-{}", KNOWN_LOT_20191106));
    }

    const KNOWN_LOT_20191106: &str = "8bb2d75419a3d22cf232";

    #[test]
    fn pseudonyms_parse_as_no_grammar_and_no_catalogue() {
        let k = key();
        let domains = [
            Domain::InstrumentSerial,
            Domain::RunId,
            Domain::FlowcellId,
            Domain::Lot,
            Domain::Version,
            Domain::MessageId,
            Domain::AttributeKey,
            Domain::Other,
        ];
        for i in 0..2000 {
            let d = domains[i % domains.len()];
            let p = k.pseudonym(d, &format!("value-{i}"));
            for v in [p.clone(), p.to_uppercase()] {
                assert!(grammar::instrument_serial(&v).is_none(), "{v}");
                assert!(!grammar::run_id(&v), "{v}");
                assert!(!grammar::flowcell_id(&v), "{v}");
                assert!(!grammar::lot_number(&v), "{v}");
                assert!(!grammar::version(&v), "{v}");
                assert!(!grammar::message_id(&v), "{v}");
                assert!(!grammar::event_code(&v), "{v}");
                assert!(!grammar::region(&v), "{v}");
                assert!(catalogue::chemistry(&v).is_none(), "{v}");
                assert!(catalogue::application_name(&v).is_none(), "{v}");
                assert!(catalogue::attribute_key(&v).is_none(), "{v}");
                assert!(catalogue::consent_basis(&v).is_none(), "{v}");
            }
        }
        assert!(!is_pseudonym("ps-0123456789abcdef012"));
        assert!(!is_pseudonym("ps-0123456789ABCDEF0123"));
        assert!(!is_pseudonym("PS-0123456789abcdef0123"));
        assert!(is_pseudonym("ps-0123456789abcdef0123"));
    }
}
