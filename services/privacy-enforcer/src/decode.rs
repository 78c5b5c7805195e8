//! A direct Avro reader for the enforcer's input, `Telemetry` written with the newest schema:
//! the generic serde reader moved each nested record through serde's visitors and was half of
//! the enforcer's time per record once the writer was direct ([`crate::encode`]).
//!
//! Guarantee: it returns a record only where the generic decoder ([`seqmon_model::decode`])
//! returns the same record. It reads only the single-object encoding with the fingerprint of the
//! schema it was written for, and makes every check the generic decoder makes (bounded varints,
//! `int` range, lengths within the input, UTF-8, enum and union indices, plausible block counts,
//! no trailing bytes). On anything else, malformed input included, it returns `None` and the
//! caller decodes with the generic decoder, which gives the record or the typed error (so dead
//! letters keep their exact reason and detail). It is used only when the newest `telemetry`
//! schema is the one it was written for and it reads probe records as the generic decoder does;
//! a unit test fails while it is off, and a differential test over mutated records checks that
//! it never accepts what the generic decoder refuses or reads it differently.

use std::collections::BTreeMap;

use seqmon_model::{
    codec, encode, store, InstrumentConfiguration, InstrumentModel, OperationLogEvent,
    RunConfiguration, RunPerformance, RunPhase, SensorReadings, Severity, Subsystem, Telemetry,
    TelemetryKind,
};

/// Fingerprint (as in the wire header) of `schemas/telemetry/v4.avsc`, the schema this reader
/// follows field by field.
const WRITTEN_FOR: [u8; 8] = [0x94, 0xc9, 0x57, 0x86, 0xc3, 0x25, 0x06, 0xca];

/// Reads `Telemetry` records written with the newest schema.
#[derive(Debug, Clone)]
pub(crate) struct TelemetryReader {
    header: [u8; codec::HEADER_LEN],
}

impl TelemetryReader {
    /// The reader, if the newest schema is the one it follows and it reads every probe record as
    /// the generic decoder does.
    pub(crate) fn for_latest_schema() -> Option<TelemetryReader> {
        let entry = store().latest("telemetry");
        if entry.fingerprint != WRITTEN_FOR {
            return None;
        }
        let reader = TelemetryReader {
            header: codec::header(entry),
        };
        let agrees = probes().iter().all(|p| {
            encode(p).is_ok_and(|bytes| {
                let direct = reader.read(&bytes);
                direct.is_some() && direct == seqmon_model::decode::<Telemetry>(&bytes).ok()
            })
        });
        agrees.then_some(reader)
    }

    /// The record, or `None` where the generic decoder must decide.
    pub(crate) fn read(&self, bytes: &[u8]) -> Option<Telemetry> {
        let body = bytes.strip_prefix(&self.header[..])?;
        let mut c = Cursor { input: body };
        let t = Telemetry {
            message_id: c.string()?,
            instrument_serial: c.string()?,
            instrument_model: instrument_model(c.long()?)?,
            event_time_ms: c.long()?,
            sent_time_ms: c.long()?,
            kind: kind(c.long()?)?,
            run_id: c.option(Cursor::string)?,
            sensors: c.option(sensors)?,
            log_event: c.option(log_event)?,
            run_performance: c.option(run_performance)?,
            instrument_configuration: c.option(instrument_configuration)?,
            run_configuration: c.option(run_configuration)?,
            attributes: c.map()?,
        };
        c.input.is_empty().then_some(t)
    }
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
    fn option<T>(&mut self, read: fn(&mut Self) -> Option<T>) -> Option<Option<T>> {
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

fn instrument_model(i: i64) -> Option<InstrumentModel> {
    Some(match i {
        0 => InstrumentModel::UNKNOWN,
        1 => InstrumentModel::NOVASEQ_6000,
        2 => InstrumentModel::NEXTSEQ_2000,
        3 => InstrumentModel::MISEQ,
        4 => InstrumentModel::ISEQ_100,
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

fn sensors(c: &mut Cursor<'_>) -> Option<SensorReadings> {
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
        run_phase: c.option(run_phase)?,
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

fn run_performance(c: &mut Cursor<'_>) -> Option<RunPerformance> {
    Some(RunPerformance {
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
        pct_aligned: c.opt_double()?,
        signal_to_noise: c.opt_double()?,
        yield_gbp: c.opt_double()?,
    })
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
