//! A direct Avro writer for the one record the enforcer writes per input, `SanitizedTelemetry`:
//! the generic serde writer looked every field up by name and buffered every map entry and
//! array item, and was a third of the enforcer's time per record.
//!
//! Guarantee: its bytes are exactly the generic encoder's ([`seqmon_model::encode`]). It is used
//! only when, at start-up, the newest `sanitized_telemetry` schema is the one it was written for
//! (its fingerprint) and it encodes a set of probe records (every enum symbol, every optional
//! field absent and present, empty, small and multi-block maps and arrays) byte for byte as the
//! generic encoder does; otherwise [`SanitizedWriter::for_latest_schema`] returns `None` and the
//! enforcer uses the generic encoder. A unit test fails while the direct writer is off, so a
//! schema change is noticed rather than silently slower.

use std::collections::BTreeMap;

use seqmon_model::fast_write::long;
use seqmon_model::{
    codec, encode, store, InstrumentConfiguration, InstrumentModel, LogParameter, RunConfiguration,
    RunPerformance, RunPhase, SanitizedLogEvent, SanitizedTelemetry, SensorReadings, Severity,
    Subsystem, TelemetryKind,
};

/// Fingerprint (as in the wire header) of `schemas/sanitized_telemetry/v5.avsc`, the schema this
/// writer follows field by field.
const WRITTEN_FOR: [u8; 8] = [0x47, 0xaa, 0x13, 0x74, 0x9e, 0x8d, 0xc0, 0xcb];

/// Fingerprint of `schemas/sanitized_telemetry/v4.avsc`: v5 but for the instrument models v5
/// added, so a record of the other models is written with it (as the generic encoder does, see
/// `AvroRecord::write_version`), in the same bytes.
const FIRST_MODELS: [u8; 8] = [0x2f, 0x66, 0x53, 0xc5, 0x82, 0xc8, 0x2b, 0xe2];

/// Items per array or map block, as the generic encoder writes them (apache-avro flushes a block
/// when it holds more than 1024 items).
const BLOCK_ITEMS: usize = 1025;

/// Writes `SanitizedTelemetry` records in the newest schema's single-object encoding.
#[derive(Debug, Clone)]
pub(crate) struct SanitizedWriter {
    header: [u8; codec::HEADER_LEN],
    /// The header of records whose model the version before the newest has.
    first_models_header: [u8; codec::HEADER_LEN],
}

impl SanitizedWriter {
    /// The writer, if the newest schema is the one it follows and it agrees with the generic
    /// encoder on every probe record.
    pub(crate) fn for_latest_schema() -> Option<SanitizedWriter> {
        let entry = store().latest("sanitized_telemetry");
        if entry.fingerprint != WRITTEN_FOR {
            return None;
        }
        let previous = store().version("sanitized_telemetry", entry.version - 1)?;
        if previous.fingerprint != FIRST_MODELS {
            return None;
        }
        let writer = SanitizedWriter {
            header: codec::header(entry),
            first_models_header: codec::header(previous),
        };
        let mut buf = Vec::new();
        let agrees = probes().iter().all(|p| {
            writer.write(p, &mut buf);
            encode(p).is_ok_and(|generic| generic == buf)
        });
        agrees.then_some(writer)
    }

    /// Replaces `out` with the encoded record.
    pub(crate) fn write(&self, t: &SanitizedTelemetry, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(if t.instrument_model.in_first_symbols() {
            &self.first_models_header
        } else {
            &self.header
        });
        string(out, &t.message_id);
        string(out, &t.instrument_serial);
        long(out, instrument_model(t.instrument_model));
        long(out, t.event_time_ms);
        long(out, t.sent_time_ms);
        long(out, kind(t.kind));
        long(out, i64::from(t.privacy_policy_version));
        option(out, t.run_id.as_deref(), string);
        option(out, t.sensors.as_ref(), sensors);
        option(out, t.log_event.as_ref(), log_event);
        option(out, t.run_performance.as_ref(), run_performance);
        option(
            out,
            t.instrument_configuration.as_ref(),
            instrument_configuration,
        );
        option(out, t.run_configuration.as_ref(), run_configuration);
        map(out, &t.attributes);
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

fn double(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A `["null", T]` union.
fn option<T: ?Sized>(out: &mut Vec<u8>, v: Option<&T>, write: fn(&mut Vec<u8>, &T)) {
    match v {
        None => long(out, 0),
        Some(v) => {
            long(out, 1);
            write(out, v);
        }
    }
}

fn opt_double(out: &mut Vec<u8>, v: Option<f64>) {
    match v {
        None => long(out, 0),
        Some(v) => {
            long(out, 1);
            double(out, v);
        }
    }
}

/// Blocks of at most [`BLOCK_ITEMS`] items, each preceded by its count, then a zero count.
fn blocks<T>(
    out: &mut Vec<u8>,
    items: impl ExactSizeIterator<Item = T>,
    write: impl Fn(&mut Vec<u8>, T),
) {
    let mut left = items.len();
    let mut items = items;
    while left > 0 {
        let n = left.min(BLOCK_ITEMS);
        long(out, n as i64);
        for item in items.by_ref().take(n) {
            write(out, item);
        }
        left -= n;
    }
    long(out, 0);
}

fn map(out: &mut Vec<u8>, m: &BTreeMap<String, String>) {
    blocks(out, m.iter(), |out, (k, v)| {
        string(out, k);
        string(out, v);
    });
}

fn instrument_model(m: InstrumentModel) -> i64 {
    match m {
        InstrumentModel::UNKNOWN => 0,
        InstrumentModel::NOVASEQ_6000 => 1,
        InstrumentModel::NEXTSEQ_2000 => 2,
        InstrumentModel::MISEQ => 3,
        InstrumentModel::ISEQ_100 => 4,
        InstrumentModel::NOVASEQ_X => 5,
        InstrumentModel::NEXTSEQ_550 => 6,
        InstrumentModel::MINISEQ => 7,
        InstrumentModel::HISEQ => 8,
    }
}

fn kind(k: TelemetryKind) -> i64 {
    match k {
        TelemetryKind::SENSOR_READINGS => 0,
        TelemetryKind::OPERATION_LOG => 1,
        TelemetryKind::RUN_PERFORMANCE => 2,
        TelemetryKind::INSTRUMENT_CONFIGURATION => 3,
        TelemetryKind::RUN_CONFIGURATION => 4,
    }
}

fn run_phase(out: &mut Vec<u8>, p: &RunPhase) {
    long(
        out,
        match p {
            RunPhase::UNKNOWN => 0,
            RunPhase::IDLE => 1,
            RunPhase::PRIMING => 2,
            RunPhase::SEQUENCING => 3,
            RunPhase::WASH => 4,
        },
    );
}

fn severity(s: Severity) -> i64 {
    match s {
        Severity::DEBUG => 0,
        Severity::INFO => 1,
        Severity::WARNING => 2,
        Severity::ERROR => 3,
        Severity::CRITICAL => 4,
    }
}

fn subsystem(s: Subsystem) -> i64 {
    match s {
        Subsystem::OTHER => 0,
        Subsystem::OPTICAL => 1,
        Subsystem::MECHANICAL => 2,
        Subsystem::THERMAL => 3,
        Subsystem::FLUIDICS => 4,
        Subsystem::CHEMISTRY => 5,
        Subsystem::SOFTWARE => 6,
    }
}

fn sensors(out: &mut Vec<u8>, s: &SensorReadings) {
    let SensorReadings {
        laser_power_mw,
        focus_fwhm_px,
        focus_z_offset_um,
        stage_position_error_um,
        stage_motor_current_a,
        flowcell_temp_c,
        flowcell_temp_setpoint_c,
        chiller_temp_c,
        ambient_temp_c,
        fluidics_pressure_kpa,
        flow_rate_ul_min,
        run_phase: phase,
    } = s;
    for v in [
        laser_power_mw,
        focus_fwhm_px,
        focus_z_offset_um,
        stage_position_error_um,
        stage_motor_current_a,
        flowcell_temp_c,
        flowcell_temp_setpoint_c,
        chiller_temp_c,
        ambient_temp_c,
        fluidics_pressure_kpa,
        flow_rate_ul_min,
    ] {
        opt_double(out, *v);
    }
    option(out, phase.as_ref(), run_phase);
}

fn log_event(out: &mut Vec<u8>, l: &SanitizedLogEvent) {
    let SanitizedLogEvent {
        code,
        severity: sev,
        subsystem: sub,
        message,
        template_id,
        parameters,
    } = l;
    string(out, code);
    long(out, severity(*sev));
    long(out, subsystem(*sub));
    string(out, message);
    string(out, template_id);
    blocks(out, parameters.iter(), parameter);
}

fn parameter(out: &mut Vec<u8>, p: &LogParameter) {
    let LogParameter {
        name,
        number,
        unit,
        symbol,
    } = p;
    string(out, name);
    opt_double(out, *number);
    option(out, unit.as_deref(), string);
    option(out, symbol.as_deref(), string);
}

fn run_performance(out: &mut Vec<u8>, p: &RunPerformance) {
    let RunPerformance {
        lane,
        read_number,
        cycle,
        total_cycles,
        cluster_density_k_per_mm2,
        pct_pf,
        pct_q30,
        mean_qscore,
        error_rate_pct,
        phasing_pct,
        prephasing_pct,
        intensity_a,
        intensity_c,
        intensity_g,
        intensity_t,
        pct_aligned,
        signal_to_noise,
        yield_gbp,
    } = p;
    for v in [lane, read_number, cycle, total_cycles] {
        long(out, i64::from(*v));
    }
    for v in [
        cluster_density_k_per_mm2,
        pct_pf,
        pct_q30,
        mean_qscore,
        error_rate_pct,
        phasing_pct,
        prephasing_pct,
        intensity_a,
        intensity_c,
        intensity_g,
        intensity_t,
        pct_aligned,
        signal_to_noise,
        yield_gbp,
    ] {
        opt_double(out, *v);
    }
}

fn instrument_configuration(out: &mut Vec<u8>, c: &InstrumentConfiguration) {
    let InstrumentConfiguration {
        control_software_version,
        rta_version,
        firmware_version,
    } = c;
    string(out, control_software_version);
    string(out, rta_version);
    string(out, firmware_version);
}

fn run_configuration(out: &mut Vec<u8>, c: &RunConfiguration) {
    let RunConfiguration {
        read1_cycles,
        index1_cycles,
        index2_cycles,
        read2_cycles,
        chemistry,
        flowcell_serial,
        flowcell_lot,
        reagent_kit_lot,
        reagent_kit_expiry_date,
        buffer_lot,
        buffer_expiry_date,
    } = c;
    for v in [read1_cycles, index1_cycles, index2_cycles, read2_cycles] {
        long(out, i64::from(*v));
    }
    for s in [chemistry, flowcell_serial, flowcell_lot, reagent_kit_lot] {
        string(out, s);
    }
    long(out, i64::from(*reagent_kit_expiry_date));
    string(out, buffer_lot);
    long(out, i64::from(*buffer_expiry_date));
}

/// Records that between them hold every enum symbol, every optional field absent and present,
/// extreme integers and doubles, non-ASCII text, and maps and arrays of 0, 1, 2 and more than one
/// block of items.
pub(crate) fn probes() -> Vec<SanitizedTelemetry> {
    let models = InstrumentModel::ALL;
    let kinds = [
        TelemetryKind::SENSOR_READINGS,
        TelemetryKind::OPERATION_LOG,
        TelemetryKind::RUN_PERFORMANCE,
        TelemetryKind::INSTRUMENT_CONFIGURATION,
        TelemetryKind::RUN_CONFIGURATION,
    ];
    let phases = [
        RunPhase::UNKNOWN,
        RunPhase::IDLE,
        RunPhase::PRIMING,
        RunPhase::SEQUENCING,
        RunPhase::WASH,
    ];
    let severities = [
        Severity::DEBUG,
        Severity::INFO,
        Severity::WARNING,
        Severity::ERROR,
        Severity::CRITICAL,
    ];
    let subsystems = [
        Subsystem::OTHER,
        Subsystem::OPTICAL,
        Subsystem::MECHANICAL,
        Subsystem::THERMAL,
        Subsystem::FLUIDICS,
        Subsystem::CHEMISTRY,
        Subsystem::SOFTWARE,
    ];
    let doubles = [0.0, -0.0, 1.5, -273.15, 1e300, f64::MIN_POSITIVE, 480.0];
    let ints = [0, 1, -1, 63, 64, -65, 8191, i32::MAX, i32::MIN];
    let longs = [0, -1, 1_793_491_200_000, i64::MAX, i64::MIN];
    let text = ["", "ps-0123456789abcdef0123", "Müller °C µL/min", "x"];
    let mut probes = Vec::new();
    for i in 0..9usize {
        let d = |j: usize| doubles[(i + j) % doubles.len()];
        let od = |j: usize| (!(i + j).is_multiple_of(3)).then(|| d(j));
        let n = |j: usize| ints[(i + j) % ints.len()];
        let s = |j: usize| text[(i + j) % text.len()].to_string();
        let attributes: BTreeMap<String, String> = match i {
            0 => BTreeMap::new(),
            1 => [("site_region".to_string(), "DE".to_string())].into(),
            2 => [("a".to_string(), String::new()), ("b".to_string(), s(1))].into(),
            // More items than one block holds: two blocks, then three.
            7 => (0..1100).map(|k| (format!("k{k:05}"), s(k))).collect(),
            8 => (0..2051).map(|k| (format!("k{k:05}"), s(k))).collect(),
            _ => (0..i * 3).map(|k| (format!("key_{k}"), s(k))).collect(),
        };
        let parameters: Vec<LogParameter> = (0..[0, 1, 2, 8, 1030][i % 5])
            .map(|k| LogParameter {
                name: s(k),
                number: od(k),
                unit: (k % 2 == 0).then(|| s(k + 1)),
                symbol: (k % 3 == 1).then(|| s(k + 2)),
            })
            .collect();
        let present = |j: usize| (i + j).is_multiple_of(2) || i == 4;
        probes.push(SanitizedTelemetry {
            message_id: s(0),
            instrument_serial: s(1),
            instrument_model: models[i % models.len()],
            event_time_ms: longs[i % longs.len()],
            sent_time_ms: longs[(i + 2) % longs.len()],
            kind: kinds[i % kinds.len()],
            privacy_policy_version: n(0),
            run_id: present(0).then(|| s(2)),
            sensors: present(1).then(|| SensorReadings {
                laser_power_mw: od(0),
                focus_fwhm_px: od(1),
                focus_z_offset_um: od(2),
                stage_position_error_um: od(3),
                stage_motor_current_a: od(4),
                flowcell_temp_c: od(5),
                flowcell_temp_setpoint_c: od(6),
                chiller_temp_c: od(7),
                ambient_temp_c: od(8),
                fluidics_pressure_kpa: od(9),
                flow_rate_ul_min: od(10),
                run_phase: (i != 5).then(|| phases[i % phases.len()]),
            }),
            log_event: (present(0) || i % 5 == 3).then(|| SanitizedLogEvent {
                code: s(3),
                severity: severities[i % severities.len()],
                subsystem: subsystems[i % subsystems.len()],
                message: s(4),
                template_id: s(5),
                parameters,
            }),
            run_performance: present(1).then(|| RunPerformance {
                lane: n(1),
                read_number: n(2),
                cycle: n(3),
                total_cycles: n(4),
                cluster_density_k_per_mm2: od(0),
                pct_pf: od(1),
                pct_q30: od(2),
                mean_qscore: od(3),
                error_rate_pct: od(4),
                phasing_pct: od(5),
                prephasing_pct: od(6),
                intensity_a: od(7),
                intensity_c: od(8),
                intensity_g: od(9),
                intensity_t: od(10),
                pct_aligned: od(11),
                signal_to_noise: od(12),
                yield_gbp: od(13),
            }),
            instrument_configuration: present(0).then(|| InstrumentConfiguration {
                control_software_version: s(0),
                rta_version: s(1),
                firmware_version: s(2),
            }),
            run_configuration: present(1).then(|| RunConfiguration {
                read1_cycles: n(0),
                index1_cycles: n(1),
                index2_cycles: n(2),
                read2_cycles: n(3),
                chemistry: s(0),
                flowcell_serial: s(1),
                flowcell_lot: s(2),
                reagent_kit_lot: s(3),
                reagent_kit_expiry_date: n(4),
                buffer_lot: s(4),
                buffer_expiry_date: n(5),
            }),
            attributes,
        });
    }
    // Every symbol of the enums that the loop above may not reach.
    for (j, sub) in subsystems.iter().enumerate() {
        let mut p = probes[j % 2].clone();
        p.log_event = Some(SanitizedLogEvent {
            code: String::new(),
            severity: severities[j % severities.len()],
            subsystem: *sub,
            message: String::new(),
            template_id: String::new(),
            parameters: Vec::new(),
        });
        probes.push(p);
    }
    probes
}
