//! A direct Avro reader for the enforcer's input, `Telemetry`: the generic serde reader moved
//! each nested record through serde's visitors and was half of the enforcer's time per record
//! once the writer was direct ([`crate::encode`]). It reads every telemetry schema version
//! (1 to 4 differ only by fields added with a default: `attributes` in 2, three run-performance
//! values in 3, the run phase in 4; 5 adds four instrument models), as the generic decoder
//! resolves them to the newest.
//!
//! Guarantee: it returns a record only where the generic decoder ([`seqmon_model::decode`])
//! returns the same record. It reads only the single-object encoding with the fingerprint of a
//! schema it was written for, and makes every check the generic decoder makes (bounded varints,
//! `int` range, lengths within the input, UTF-8, enum and union indices, plausible block counts,
//! no trailing bytes). On anything else, malformed input included, it returns `None` and the
//! caller decodes with the generic decoder, which gives the record or the typed error (so dead
//! letters keep their exact reason and detail). A version is read only when the store's schema of
//! that version is the one it was written for and it reads probe records of that version as the
//! generic decoder does; a unit test fails while any version is off, and a differential test over
//! mutated records checks that it never accepts what the generic decoder refuses or reads it
//! differently.

use std::collections::BTreeMap;

use seqmon_model::{
    codec, store, InstrumentConfiguration, InstrumentModel, OperationLogEvent, RunConfiguration,
    RunPerformance, RunPhase, SensorReadings, Severity, Subsystem, Telemetry, TelemetryKind,
};

/// The telemetry schema versions this reader follows: version, fingerprint (as in the wire
/// header) of `schemas/telemetry/v<N>.avsc`, and which of the later fields it has.
const WRITTEN_FOR: [(u32, [u8; 8], Layout); 5] = [
    (
        5,
        [0xe4, 0x89, 0x14, 0x8d, 0x3b, 0xd1, 0x7d, 0xd7],
        Layout {
            attributes: true,
            performance_extras: true,
            run_phase: true,
            later_models: true,
        },
    ),
    (
        4,
        [0x94, 0xc9, 0x57, 0x86, 0xc3, 0x25, 0x06, 0xca],
        Layout {
            attributes: true,
            performance_extras: true,
            run_phase: true,
            later_models: false,
        },
    ),
    (
        3,
        [0xb3, 0x59, 0x78, 0x31, 0xb1, 0x09, 0x88, 0x39],
        Layout {
            attributes: true,
            performance_extras: true,
            run_phase: false,
            later_models: false,
        },
    ),
    (
        2,
        [0x34, 0x31, 0x97, 0x59, 0x70, 0x30, 0x9c, 0xb5],
        Layout {
            attributes: true,
            performance_extras: false,
            run_phase: false,
            later_models: false,
        },
    ),
    (
        1,
        [0x08, 0xb3, 0x47, 0x5b, 0x23, 0x5a, 0x68, 0xab],
        Layout {
            attributes: false,
            performance_extras: false,
            run_phase: false,
            later_models: false,
        },
    ),
];

/// Which fields added after version 1 a writer schema has (each with a null or empty default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// `attributes` (version 2).
    attributes: bool,
    /// `run_performance.pct_aligned`, `signal_to_noise`, `yield_gbp` (version 3).
    performance_extras: bool,
    /// `sensors.run_phase` (version 4).
    run_phase: bool,
    /// The instrument models after `ISEQ_100` (version 5).
    later_models: bool,
}

/// Reads `Telemetry` records written with any schema version it follows.
#[derive(Debug, Clone)]
pub(crate) struct TelemetryReader {
    /// Header and layout of each version read, the newest first.
    versions: Vec<([u8; codec::HEADER_LEN], Layout)>,
}

impl TelemetryReader {
    /// The reader of the versions whose schema is the one it follows and whose probe records it
    /// reads as the generic decoder does; `None` if that leaves out the newest version (the
    /// records the enforcer sees most).
    pub(crate) fn for_latest_schema() -> Option<TelemetryReader> {
        let latest = store().latest("telemetry").version;
        let mut versions = Vec::new();
        for (version, fingerprint, layout) in WRITTEN_FOR {
            let Some(entry) = store().version("telemetry", version) else {
                continue;
            };
            if entry.fingerprint != fingerprint {
                continue;
            }
            let one = TelemetryReader {
                versions: vec![(codec::header(entry), layout)],
            };
            let agrees = probes()
                .iter()
                .filter(|p| layout.later_models || p.instrument_model.in_first_symbols())
                .all(|p| {
                    encode_as(p, version).is_some_and(|bytes| {
                        let direct = one.read(&bytes);
                        direct.is_some() && direct == seqmon_model::decode::<Telemetry>(&bytes).ok()
                    })
                });
            if agrees {
                versions.extend(one.versions);
            } else if version == latest {
                return None;
            }
        }
        let has_latest = WRITTEN_FOR
            .iter()
            .any(|(v, f, _)| *v == latest && store().latest("telemetry").fingerprint == *f);
        (has_latest && !versions.is_empty()).then_some(TelemetryReader { versions })
    }

    /// The versions read.
    #[cfg(test)]
    pub(crate) fn versions(&self) -> usize {
        self.versions.len()
    }

    /// The record, or `None` where the generic decoder must decide.
    pub(crate) fn read(&self, bytes: &[u8]) -> Option<Telemetry> {
        let (body, layout) = self
            .versions
            .iter()
            .find_map(|(header, layout)| Some((bytes.strip_prefix(&header[..])?, *layout)))?;
        let mut c = Cursor { input: body };
        let t = Telemetry {
            message_id: c.string()?,
            instrument_serial: c.string()?,
            instrument_model: instrument_model(c.long()?, layout)?,
            event_time_ms: c.long()?,
            sent_time_ms: c.long()?,
            kind: kind(c.long()?)?,
            run_id: c.option(Cursor::string)?,
            sensors: c.option(|c| sensors(c, layout))?,
            log_event: c.option(log_event)?,
            run_performance: c.option(|c| run_performance(c, layout))?,
            instrument_configuration: c.option(instrument_configuration)?,
            run_configuration: c.option(run_configuration)?,
            attributes: if layout.attributes {
                c.map()?
            } else {
                BTreeMap::new()
            },
        };
        c.input.is_empty().then_some(t)
    }
}

/// `t` encoded with telemetry schema `version`, the way the simulator writes old versions (JSON
/// without the later fields, then the generic encoder): independent of this reader.
pub(crate) fn encode_as(t: &Telemetry, version: u32) -> Option<Vec<u8>> {
    let entry = store().version("telemetry", version)?;
    let mut json = serde_json::to_value(t).ok()?;
    let layout = WRITTEN_FOR.iter().find(|(v, ..)| *v == version)?.2;
    let object = json.as_object_mut()?;
    if !layout.attributes {
        object.remove("attributes");
    }
    if !layout.performance_extras {
        if let Some(p) = object
            .get_mut("run_performance")
            .and_then(|p| p.as_object_mut())
        {
            for added in ["pct_aligned", "signal_to_noise", "yield_gbp"] {
                p.remove(added);
            }
        }
    }
    if !layout.run_phase {
        if let Some(s) = object.get_mut("sensors").and_then(|s| s.as_object_mut()) {
            s.remove("run_phase");
        }
    }
    let value = seqmon_model::json::json_to_avro(&entry.schema, &json).ok()?;
    codec::encode_value(entry, value).ok()
}

/// The bytes not read yet. Every read is bounds-checked; `None` is "not for this reader".
struct Cursor<'b> {
    input: &'b [u8],
}

impl<'b> Cursor<'b> {
    /// A zig-zag varint of at most 10 bytes (as the generic decoder reads it).
    fn long(&mut self) -> Option<i64> {
        let mut raw: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self.input.split_first()?;
            self.input = rest;
            raw |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some(((raw >> 1) as i64) ^ -((raw & 1) as i64));
            }
        }
        None
    }

    fn int(&mut self) -> Option<i32> {
        i32::try_from(self.long()?).ok()
    }

    fn take(&mut self, n: usize) -> Option<&'b [u8]> {
        if n > self.input.len() {
            return None;
        }
        let (head, tail) = self.input.split_at(n);
        self.input = tail;
        Some(head)
    }

    fn string(&mut self) -> Option<String> {
        let n = usize::try_from(self.long()?).ok()?;
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes).ok().map(str::to_string)
    }

    fn double(&mut self) -> Option<f64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(f64::from_le_bytes(a))
    }

    /// A `["null", T]` union: `Some(None)` for null, `Some(Some(t))` for a value.
    fn option<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.long()? {
            0 => Some(None),
            1 => read(self).map(Some),
            _ => None,
        }
    }

    fn opt_double(&mut self) -> Option<Option<f64>> {
        self.option(Cursor::double)
    }

    /// The next block's item count, 0 at the end; a negative count is followed by the block's
    /// byte size. The count must be plausible for the bytes left, as the generic decoder wants.
    fn block(&mut self) -> Option<usize> {
        let n = self.long()?;
        let n = if n < 0 {
            self.long()?;
            n.checked_neg()?
        } else {
            n
        };
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.input.len().max(1) * 8 + 1024)
    }

    fn map(&mut self) -> Option<BTreeMap<String, String>> {
        let mut m = BTreeMap::new();
        loop {
            let n = self.block()?;
            if n == 0 {
                return Some(m);
            }
            for _ in 0..n {
                let k = self.string()?;
                let v = self.string()?;
                m.insert(k, v);
            }
        }
    }
}

fn instrument_model(i: i64, layout: Layout) -> Option<InstrumentModel> {
    Some(match i {
        0 => InstrumentModel::UNKNOWN,
        1 => InstrumentModel::NOVASEQ_6000,
        2 => InstrumentModel::NEXTSEQ_2000,
        3 => InstrumentModel::MISEQ,
        4 => InstrumentModel::ISEQ_100,
        5 if layout.later_models => InstrumentModel::NOVASEQ_X,
        6 if layout.later_models => InstrumentModel::NEXTSEQ_550,
        7 if layout.later_models => InstrumentModel::MINISEQ,
        8 if layout.later_models => InstrumentModel::HISEQ,
        _ => return None,
    })
}

fn kind(i: i64) -> Option<TelemetryKind> {
    Some(match i {
        0 => TelemetryKind::SENSOR_READINGS,
        1 => TelemetryKind::OPERATION_LOG,
        2 => TelemetryKind::RUN_PERFORMANCE,
        3 => TelemetryKind::INSTRUMENT_CONFIGURATION,
        4 => TelemetryKind::RUN_CONFIGURATION,
        _ => return None,
    })
}

fn run_phase(c: &mut Cursor<'_>) -> Option<RunPhase> {
    Some(match c.long()? {
        0 => RunPhase::UNKNOWN,
        1 => RunPhase::IDLE,
        2 => RunPhase::PRIMING,
        3 => RunPhase::SEQUENCING,
        4 => RunPhase::WASH,
        _ => return None,
    })
}

fn severity(i: i64) -> Option<Severity> {
    Some(match i {
        0 => Severity::DEBUG,
        1 => Severity::INFO,
        2 => Severity::WARNING,
        3 => Severity::ERROR,
        4 => Severity::CRITICAL,
        _ => return None,
    })
}

fn subsystem(i: i64) -> Option<Subsystem> {
    Some(match i {
        0 => Subsystem::OTHER,
        1 => Subsystem::OPTICAL,
        2 => Subsystem::MECHANICAL,
        3 => Subsystem::THERMAL,
        4 => Subsystem::FLUIDICS,
        5 => Subsystem::CHEMISTRY,
        6 => Subsystem::SOFTWARE,
        _ => return None,
    })
}

fn sensors(c: &mut Cursor<'_>, layout: Layout) -> Option<SensorReadings> {
    Some(SensorReadings {
        laser_power_mw: c.opt_double()?,
        focus_fwhm_px: c.opt_double()?,
        focus_z_offset_um: c.opt_double()?,
        stage_position_error_um: c.opt_double()?,
        stage_motor_current_a: c.opt_double()?,
        flowcell_temp_c: c.opt_double()?,
        flowcell_temp_setpoint_c: c.opt_double()?,
        chiller_temp_c: c.opt_double()?,
        ambient_temp_c: c.opt_double()?,
        fluidics_pressure_kpa: c.opt_double()?,
        flow_rate_ul_min: c.opt_double()?,
        run_phase: if layout.run_phase {
            c.option(run_phase)?
        } else {
            None
        },
    })
}

fn log_event(c: &mut Cursor<'_>) -> Option<OperationLogEvent> {
    Some(OperationLogEvent {
        code: c.string()?,
        severity: severity(c.long()?)?,
        subsystem: subsystem(c.long()?)?,
        message: c.string()?,
    })
}

fn run_performance(c: &mut Cursor<'_>, layout: Layout) -> Option<RunPerformance> {
    let mut p = RunPerformance {
        lane: c.int()?,
        read_number: c.int()?,
        cycle: c.int()?,
        total_cycles: c.int()?,
        cluster_density_k_per_mm2: c.opt_double()?,
        pct_pf: c.opt_double()?,
        pct_q30: c.opt_double()?,
        mean_qscore: c.opt_double()?,
        error_rate_pct: c.opt_double()?,
        phasing_pct: c.opt_double()?,
        prephasing_pct: c.opt_double()?,
        intensity_a: c.opt_double()?,
        intensity_c: c.opt_double()?,
        intensity_g: c.opt_double()?,
        intensity_t: c.opt_double()?,
        pct_aligned: None,
        signal_to_noise: None,
        yield_gbp: None,
    };
    if layout.performance_extras {
        p.pct_aligned = c.opt_double()?;
        p.signal_to_noise = c.opt_double()?;
        p.yield_gbp = c.opt_double()?;
    }
    Some(p)
}

fn instrument_configuration(c: &mut Cursor<'_>) -> Option<InstrumentConfiguration> {
    Some(InstrumentConfiguration {
        control_software_version: c.string()?,
        rta_version: c.string()?,
        firmware_version: c.string()?,
    })
}

fn run_configuration(c: &mut Cursor<'_>) -> Option<RunConfiguration> {
    Some(RunConfiguration {
        read1_cycles: c.int()?,
        index1_cycles: c.int()?,
        index2_cycles: c.int()?,
        read2_cycles: c.int()?,
        chemistry: c.string()?,
        flowcell_serial: c.string()?,
        flowcell_lot: c.string()?,
        reagent_kit_lot: c.string()?,
        reagent_kit_expiry_date: c.int()?,
        buffer_lot: c.string()?,
        buffer_expiry_date: c.int()?,
    })
}

/// Telemetry records holding every enum symbol, every optional field absent and present,
/// extreme numbers, non-ASCII text and maps of 0 to more than one block of entries.
pub(crate) fn probes() -> Vec<Telemetry> {
    crate::encode::probes()
        .into_iter()
        .map(|s| Telemetry {
            message_id: s.message_id,
            instrument_serial: s.instrument_serial,
            instrument_model: s.instrument_model,
            event_time_ms: s.event_time_ms,
            sent_time_ms: s.sent_time_ms,
            kind: s.kind,
            run_id: s.run_id,
            sensors: s.sensors,
            log_event: s.log_event.map(|l| OperationLogEvent {
                code: l.code,
                severity: l.severity,
                subsystem: l.subsystem,
                message: l.message,
            }),
            run_performance: s.run_performance,
            instrument_configuration: s.instrument_configuration,
            run_configuration: s.run_configuration,
            attributes: s.attributes,
        })
        .collect()
}
