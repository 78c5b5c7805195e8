//! `anomaly-detector score`: backtest the detector on any series. Reads CSV `timestamp,value` on
//! stdin (a header line is optional), writes `timestamp,value,anomaly_score` on stdout, one line
//! per data row, in input order, each score computed from that row and the rows before it
//! only (the same [`SeriesState`] code the service runs, no look-ahead, no spec range needed).
//!
//! Each row is one observation: its value is the level, and its spread is an exponentially
//! weighted root mean square of |Δ|/√2 over the last few rows (the standard deviation white noise
//! would have), so a series that starts to oscillate scores without a window. The score is in
//! [0, 1]: 0.5 where the strongest rule (baseline deviation, CUSUM, spread) reaches its alert
//! threshold, rising towards 1 beyond it; 0 during the warm-up (`--warmup-windows` rows). An
//! episode ends, as in the service, after `--clear-windows` calm rows. Rules that need a spec
//! limit (trend to limit, swing near limit, hourly spread) do not apply here, so their settings
//! change nothing.
//!
//! Timestamps: seconds or milliseconds since the epoch (a number; values above 1e11 are read as
//! ms), or ISO 8601 / RFC 3339 date-times (`2026-11-01T12:00:00Z`, `2026-11-01 12:00:00`, optional
//! fraction, `Z` or an offset `±hh:mm`). They must not go backwards. A value that is empty or
//! `nan` is a gap: echoed with an empty score and not learnt. A field may be quoted. Anything else
//! that does not parse (a third column, a value out of range, a date that does not exist, bytes
//! that are not UTF-8) stops the run with an error naming the line.

use std::io::{BufRead, Write};

use seqmon_model::civil::days_from_civil;

use crate::model::{Observation, SeriesState, MIN_SPREAD_SAMPLES};
use crate::AnomalyConfig;

/// Why a scoring run stopped.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// A line is not `timestamp,value`.
    #[error("line {line}: {message}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Reading stdin or writing stdout failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// What a scoring run saw.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ScoreSummary {
    /// Rows scored.
    pub rows: usize,
    /// Rows that were gaps.
    pub gaps: usize,
    /// Rows scored at or above 0.5.
    pub alerts: usize,
}

/// Milliseconds since the epoch of a timestamp field.
pub fn parse_timestamp(text: &str) -> Result<i64, String> {
    let t = text.trim().trim_matches('"');
    if let Ok(n) = t.parse::<f64>() {
        if !n.is_finite() {
            return Err(format!("timestamp {t:?} is not finite"));
        }
        let ms = if n.abs() > 1e11 { n } else { n * 1000.0 };
        // Years -200000..200000: beyond that a number is not a time.
        if ms.abs() > 6.3e15 {
            return Err(format!("timestamp {t:?} is out of range"));
        }
        return Ok(ms as i64);
    }
    let bad = || format!("timestamp {t:?} is neither epoch seconds/ms nor ISO 8601");
    let b = t.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        t.get(r)
            .filter(|s| s.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days_in_month = match mo {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1..=12).contains(&mo) || !(1..=days_in_month).contains(&d) {
        return Err(bad());
    }
    let mut ms = days_from_civil(y, mo, d) * 86_400_000;
    let rest = &t[10..];
    if rest.is_empty() {
        return Ok(ms);
    }
    let sep = rest.as_bytes()[0];
    if sep != b'T' && sep != b' ' {
        return Err(bad());
    }
    let rest = &rest[1..];
    let hms = |r: std::ops::Range<usize>| -> Result<i64, String> {
        rest.get(r)
            .filter(|s| s.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)
    };
    let (h, mi) = (hms(0..2)?, hms(3..5)?);
    let mut i = 5;
    let mut s = 0;
    if rest.as_bytes().get(5) == Some(&b':') {
        s = hms(6..8)?;
        i = 8;
    }
    if h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    ms += ((h * 60 + mi) * 60 + s) * 1000;
    let mut tail = &rest[i..];
    if let Some(frac) = tail.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let f: f64 = format!("0.{}", &frac[..digits])
            .parse()
            .map_err(|_| bad())?;
        ms += (f * 1000.0).round() as i64;
        tail = &frac[digits..];
    }
    match tail {
        "" | "Z" | "z" => Ok(ms),
        off if off.len() == 6
            && off.is_ascii()
            && (off.starts_with('+') || off.starts_with('-'))
            && off.as_bytes()[3] == b':' =>
        {
            let sign = if off.starts_with('-') { -1 } else { 1 };
            let oh: i64 = off[1..3].parse().map_err(|_| bad())?;
            let om: i64 = off[4..6].parse().map_err(|_| bad())?;
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            Ok(ms - sign * (oh * 60 + om) * 60_000)
        }
        _ => Err(bad()),
    }
}

/// Splits one CSV line into exactly two fields, honouring double quotes (`""` inside a quoted
/// field is a quote).
fn two_fields(line: &str) -> Result<(String, String), String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("a quoted field is not closed".into()),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    break;
                }
                Some(',') => fields.push(field),
                Some(_) => return Err("text after a closing quote".into()),
            }
        } else {
            let mut ended = true;
            for c in chars.by_ref() {
                if c == ',' {
                    ended = false;
                    break;
                }
                field.push(c);
            }
            fields.push(field);
            if ended {
                break;
            }
        }
    }
    match <[String; 2]>::try_from(fields) {
        Ok([t, v]) => Ok((t, v)),
        Err(f) => Err(format!(
            "expected 2 columns (timestamp,value), found {}",
            f.len()
        )),
    }
}

/// Scores every row of `input` into `output`.
pub fn run(
    mut input: impl BufRead,
    mut output: impl Write,
    cfg: &AnomalyConfig,
) -> Result<ScoreSummary, ScoreError> {
    let mut series = SeriesState::default();
    let mut summary = ScoreSummary::default();
    let mut previous: Option<f64> = None;
    let mut mean_sq_step = 0.0;
    let mut last_ms = i64::MIN;
    let mut episode = false;
    let mut calm_in_a_row = 0;
    let mut seen_data_or_header = false;
    writeln!(output, "timestamp,value,anomaly_score")?;
    let mut raw = Vec::new();
    let mut n = 0;
    loop {
        raw.clear();
        if input.read_until(b'\n', &mut raw)? == 0 {
            break;
        }
        n += 1;
        let bad = |message: String| ScoreError::BadLine { line: n, message };
        let line = std::str::from_utf8(&raw).map_err(|_| bad("not UTF-8 text".into()))?;
        let line = line.strip_prefix('\u{feff}').unwrap_or(line);
        let text = line.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        let (ts, value) = two_fields(text).map_err(bad)?;
        let value = value.trim();
        let ms = match parse_timestamp(&ts) {
            Ok(ms) => ms,
            // A header: the first line with text, not a timestamp, not a number for a value.
            Err(_) if !seen_data_or_header && value.parse::<f64>().is_err() => {
                seen_data_or_header = true;
                continue;
            }
            Err(e) => return Err(bad(e)),
        };
        seen_data_or_header = true;
        if ms < last_ms {
            return Err(bad(format!("timestamp {ts:?} goes back in time")));
        }
        last_ms = ms;
        let v = match value.to_ascii_lowercase().as_str() {
            "" | "nan" | "null" | "na" => None,
            other => {
                let v = other
                    .parse::<f64>()
                    .map_err(|_| bad(format!("value {value:?} is not a number")))?;
                if !v.is_finite() {
                    return Err(bad(format!("value {value:?} is out of range")));
                }
                Some(v)
            }
        };
        let Some(v) = v else {
            summary.gaps += 1;
            writeln!(output, "{},{},", ts.trim(), value)?;
            continue;
        };
        // The spread: an exponentially weighted root mean square of the steps over the last
        // few rows (a single step's size is too noisy to judge).
        if let Some(p) = previous {
            let step = (v - p) / std::f64::consts::SQRT_2;
            if step.is_finite() {
                mean_sq_step += SPREAD_WEIGHT * (step * step - mean_sq_step);
            }
        }
        previous = Some(v);
        let verdict = series.observe(
            &Observation {
                end_ms: ms,
                level: v,
                variability: mean_sq_step.sqrt(),
                fraction_out_of_spec: 0.0,
                spec: (None, None),
                prior: None,
                continuous: true,
                count: false,
                samples: MIN_SPREAD_SAMPLES,
                fleet_spread: None,
                baseline_rules: true,
            },
            cfg,
            episode,
        );
        // The service's episode rule: no learning while an episode is open; it ends after
        // `clear_windows` calm rows, and the CUSUM starts again from zero.
        if verdict.anomalous() {
            episode = true;
            calm_in_a_row = 0;
        } else if episode {
            calm_in_a_row = if verdict.calm(cfg) {
                calm_in_a_row + 1
            } else {
                0
            };
            if calm_in_a_row >= cfg.clear_windows {
                episode = false;
                calm_in_a_row = 0;
                series.reset_change();
            }
        }
        let score = verdict.score01(cfg);
        summary.rows += 1;
        summary.alerts += usize::from(score >= 0.5);
        writeln!(output, "{},{},{score:.6}", ts.trim(), value)?;
    }
    output.flush()?;
    Ok(summary)
}

/// Weight of the newest step in the spread estimate (about the last five rows).
const SPREAD_WEIGHT: f64 = 0.2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_the_common_shapes() {
        assert_eq!(parse_timestamp("1793491200").unwrap(), 1_793_491_200_000);
        assert_eq!(parse_timestamp("1793491200000").unwrap(), 1_793_491_200_000);
        assert_eq!(
            parse_timestamp("2026-11-01T00:00:00Z").unwrap(),
            1_793_491_200_000
        );
        assert_eq!(
            parse_timestamp("2026-11-01 01:30:00+01:30").unwrap(),
            1_793_491_200_000
        );
        assert_eq!(
            parse_timestamp("2026-11-01T00:00:00.250").unwrap(),
            1_793_491_200_250
        );
        assert_eq!(parse_timestamp("2000-02-29").unwrap(), 951_782_400_000);
        for bad in [
            "yesterday",
            "2026-13-01",
            "2026-11-01T25:00",
            "2026-11-01X",
            "",
        ] {
            assert!(parse_timestamp(bad).is_err(), "{bad}");
        }
    }

    fn score(csv: &str) -> (Vec<(String, Option<f64>)>, ScoreSummary) {
        let mut out = Vec::new();
        let summary = run(csv.as_bytes(), &mut out, &AnomalyConfig::default()).unwrap();
        let text = String::from_utf8(out).unwrap();
        let rows = text
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[0].to_string(), f[2].parse().ok())
            })
            .collect();
        (rows, summary)
    }

    #[test]
    fn a_level_shift_scores_high_noise_low_and_no_look_ahead() {
        let mut csv = String::from("timestamp,value\n");
        for i in 0..400 {
            let noise = ((i * 7919) % 13) as f64 / 13.0 - 0.5;
            let v = if i < 300 { 10.0 + noise } else { 16.0 + noise };
            csv.push_str(&format!("{},{v}\n", 1_700_000_000 + i * 60));
        }
        let (rows, summary) = score(&csv);
        assert_eq!(rows.len(), 400);
        assert_eq!(summary.rows, 400);
        let max_before = rows[..300]
            .iter()
            .filter_map(|r| r.1)
            .fold(0.0f64, f64::max);
        let after = rows[300].1.unwrap();
        assert!(max_before < 0.5, "noise scored {max_before}");
        assert!(after >= 0.5, "shift scored {after}");
        // No look-ahead: the first 300 rows score the same without the shift after them.
        let prefix: String = csv.lines().take(301).map(|l| format!("{l}\n")).collect();
        let (alone, _) = score(&prefix);
        assert_eq!(alone[..], rows[..300]);
    }

    fn gaussian(n: usize, seed: u64) -> Vec<f64> {
        // Box-Muller over a small xorshift: a fixed, reproducible noise sequence.
        let mut x = seed.max(1);
        let mut uniform = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let (u1, u2) = (uniform(), uniform());
                (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
            })
            .collect()
    }

    fn csv(values: &[f64]) -> String {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{},{v}\n", 1_700_000_000 + i * 60))
            .collect()
    }

    #[test]
    fn white_noise_rarely_alarms_and_one_wild_warm_up_value_does_not_blind_it() {
        let noise: Vec<f64> = gaussian(20_000, 7).iter().map(|g| 10.0 + 0.2 * g).collect();
        let (_, summary) = score(&csv(&noise));
        assert!(
            summary.alerts < 20,
            "{} of 20000 noise rows at or above 0.5",
            summary.alerts
        );
        // A value of 1e4 at row 6, then a 25-sigma shift at row 300: still seen.
        let mut series: Vec<f64> = noise[..400].to_vec();
        series[5] = 1e4;
        for v in &mut series[300..] {
            *v += 5.0;
        }
        let (rows, _) = score(&csv(&series));
        assert!(rows[300].1.unwrap() >= 0.5, "{:?}", &rows[298..302]);
        // Absurd magnitudes are judged by nothing and poison nothing.
        let mut huge = noise[..400].to_vec();
        huge[0] = 1e308;
        huge[1] = -1e308;
        let (rows, summary) = score(&csv(&huge));
        assert!(summary.alerts < 5, "{summary:?}");
        assert!(rows
            .iter()
            .all(|r| r.1.is_none_or(|s| (0.0..=1.0).contains(&s))));
    }

    #[test]
    fn a_shift_that_ended_does_not_keep_scoring_high() {
        let mut series: Vec<f64> = gaussian(400, 3).iter().map(|g| 10.0 + 0.2 * g).collect();
        for v in &mut series[200..300] {
            *v += 2.0;
        }
        let (rows, _) = score(&csv(&series));
        // A few rows for the spread of the step back to fade, then quiet.
        let late: Vec<f64> = rows[310..].iter().filter_map(|r| r.1).collect();
        assert!(late.iter().all(|s| *s < 0.5), "{late:?}");
    }

    #[test]
    fn careless_files_get_an_error_naming_the_line_or_a_sensible_reading() {
        let cfg = AnomalyConfig::default();
        let err = |text: &[u8]| {
            run(text, Vec::new(), &cfg)
                .expect_err("an error")
                .to_string()
        };
        assert!(err("2026-11-01T00:00:00+0\u{e9}00,1\n".as_bytes()).starts_with("line 1:"));
        assert!(err(b"2026-11-01T00:00:00+01x00,1\n").starts_with("line 1:"));
        assert!(err(b"1700000000,\"10,5\"\n").contains("not a number"));
        assert!(err(b"1700000000,\"10\n").contains("not closed"));
        assert!(err(b"1700000000,1,2\n").contains("found 3"));
        assert!(err(b"2026-02-31,1\n").starts_with("line 1:"));
        assert!(err(b"1e30,1\n").contains("out of range"));
        assert!(err(b"1700000000,1e400\n").contains("out of range"));
        assert!(err(b"t,v\n1700000000,1\n1700000060,\xb0\n").starts_with("line 3:"));
        // A byte-order mark, blank lines before the header, quoted fields, CRLF: all fine.
        let (rows, _) = score("\u{feff}\n\n\"timestamp\",\"value\"\r\n\"1700000000\",\"1.5\"\r\n");
        assert_eq!(rows.len(), 1);
    }

    #[test]
    fn gaps_echo_and_bad_lines_name_their_line() {
        let (rows, summary) = score("1,1\n2,\n3,nan\n4,2\n");
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[1].1, None);
        assert_eq!(summary.gaps, 2);
        let err = run(
            "1,1\n2,abc\n".as_bytes(),
            Vec::new(),
            &AnomalyConfig::default(),
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("line 2:"), "{err}");
        let err = run(
            "5,1\n4,1\n".as_bytes(),
            Vec::new(),
            &AnomalyConfig::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("back in time"), "{err}");
    }
}
