//! The detector's changelog keys and records (state format 2). One record per changed piece of
//! state, Avro (schema `anomaly_detector_state`) inside the runtime's `StateSnapshot`:
//! - `<serial>` U+001F `s<series>`: one series of one instrument and its open episode, written
//!   when a feature of that series was judged (each input changes one series: ~0.3 kB, where
//!   format 1 rewrote every series of the instrument as JSON, ~1.5 kB per input);
//! - `~fleet/<partition>` U+001F `<model>/<metric>`: one fleet spread of an input partition;
//! - `~cohorts/<serial>`: the cohorts an instrument last signalled.
//!
//! State format 1 (JSON: every series of an instrument under `<serial>`, every spread of a
//! partition under `~fleet/<partition>`, memberships under `~cohorts/<serial>`) still restores.
//! The first time such an instrument or partition changes again, all its pieces are written
//! under their own keys and its format-1 key is deleted in the same transaction, so a restore
//! never has both; if it had, the format-2 pieces would win.

/// Separates an instrument's or a partition's part of a key from the piece's name. Serials that
/// crossed the privacy enforcer are grammar serials or `ps-` pseudonyms, and metric names are
/// the extractor's own, so none holds it; a feature written to `features` by other means that
/// would give a key reading back as another piece is refused ([`series_key`]).
pub const PIECE_SEPARATOR: char = '\u{1f}';
pub const FLEET_KEY_PREFIX: &str = "~fleet/";
pub const COHORTS_KEY_PREFIX: &str = "~cohorts/";

/// A changelog key of the detector, by what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKey<'a> {
    /// One series of one instrument.
    Series { serial: &'a str, series: &'a str },
    /// One fleet spread (`<model>/<metric>`) of one input partition.
    Fleet { partition: i32, entry: &'a str },
    /// An instrument's cohort memberships.
    Cohorts { serial: &'a str },
    /// Every series of an instrument, as state format 1 wrote them.
    LegacyInstrument { serial: &'a str },
    /// Every fleet spread of a partition, as state format 1 wrote them.
    LegacyFleet { partition: i32 },
}

/// The changelog key of one series of one instrument, or `None` when the serial or the series
/// name cannot be one: a serial starting like the fleet's or the memberships' keys, or holding a
/// U+001F, would read back as another piece (or as none) at restore. (A series name may hold
/// one: the serial ends at the first.)
pub fn series_key(serial: &str, series: &str) -> Option<String> {
    let key = StateKey::Series { serial, series };
    let rendered = key.render();
    (StateKey::parse(&rendered) == Some(key)).then_some(rendered)
}

impl<'a> StateKey<'a> {
    /// The key of a changelog record; `None` for a key this stage never writes.
    pub fn parse(key: &'a str) -> Option<StateKey<'a>> {
        if let Some(serial) = key.strip_prefix(COHORTS_KEY_PREFIX) {
            return Some(StateKey::Cohorts { serial });
        }
        if let Some(rest) = key.strip_prefix(FLEET_KEY_PREFIX) {
            return Some(match rest.split_once(PIECE_SEPARATOR) {
                Some((p, entry)) => StateKey::Fleet {
                    partition: p.parse().ok()?,
                    entry,
                },
                None => StateKey::LegacyFleet {
                    partition: rest.parse().ok()?,
                },
            });
        }
        match key.split_once(PIECE_SEPARATOR) {
            Some((serial, piece)) => Some(StateKey::Series {
                serial,
                series: piece.strip_prefix('s')?,
            }),
            None if !key.is_empty() => Some(StateKey::LegacyInstrument { serial: key }),
            None => None,
        }
    }

    /// The key as the changelog spells it.
    pub fn render(&self) -> String {
        match self {
            StateKey::Series { serial, series } => format!("{serial}{PIECE_SEPARATOR}s{series}"),
            StateKey::Fleet { partition, entry } => {
                format!("{FLEET_KEY_PREFIX}{partition}{PIECE_SEPARATOR}{entry}")
            }
            StateKey::Cohorts { serial } => format!("{COHORTS_KEY_PREFIX}{serial}"),
            StateKey::LegacyInstrument { serial } => (*serial).to_string(),
            StateKey::LegacyFleet { partition } => format!("{FLEET_KEY_PREFIX}{partition}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_reads_back_as_what_it_was_written_for() {
        for key in [
            StateKey::Series {
                serial: "A00123",
                series: "laser_power_mw",
            },
            StateKey::Series {
                serial: "A00123",
                series: "chiller_temp_c@IDLE",
            },
            StateKey::Fleet {
                partition: 7,
                entry: "NOVASEQ_6000/laser_power_mw",
            },
            StateKey::Cohorts { serial: "M00318" },
            StateKey::LegacyInstrument { serial: "M00318" },
            StateKey::LegacyFleet { partition: 11 },
        ] {
            assert_eq!(StateKey::parse(&key.render()), Some(key), "{key:?}");
        }
        for never in ["", "A1\u{1f}x", "~fleet/x", "~fleet/x\u{1f}m"] {
            assert_eq!(StateKey::parse(never), None, "{never:?}");
        }
        // Serials and series that would read back as another piece have no series key.
        for (serial, series) in [
            ("~fleet/1", "laser_power_mw"),
            ("~cohorts/A", "laser_power_mw"),
            ("A00001\u{1f}sB", "laser_power_mw"),
            ("~fleet/x", "m"),
        ] {
            assert_eq!(series_key(serial, series), None, "{serial:?} {series:?}");
        }
        assert!(series_key("a~b@c/d", "chiller_temp_c@IDLE").is_some());
        assert!(series_key("ps-0123456789abcdef0123", "m").is_some());
    }
}
