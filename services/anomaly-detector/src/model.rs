//! The per-series detector: everything the anomaly detector knows about one metric of one
//! instrument, updated one feature window at a time, in event time, with no look-ahead. Pure and
//! synchronous; the processor and `anomaly-detector score` both drive it.
//!
//! Four views of the same series:
//! - **Baseline** (level and spread): starts from the fleet prior (the model's nominal level,
//!   when the catalogue has one) so an instrument is judged from its first window, then learns the
//!   instrument's own level with plain averaging over the warm-up and a slow exponential weight
//!   after it. It does not learn from anomalous windows, during an episode, or while the series
//!   drifts significantly, so a slow degradation is not absorbed.
//! - **CUSUM** on the baseline residuals in standard deviations (slack `k`, threshold `h`): a
//!   small shift that persists adds up where a single window would not cross `z_threshold`.
//! - **Spread**: the window's standard deviation against its own learnt baseline: a control loop
//!   that starts to oscillate (chiller, heater) shows here long before its mean moves.
//! - **Trend to limit**: hourly points of the series' envelope (mean ± √2·sd: a sine's peaks,
//!   so an oscillation growing towards a limit counts like a level drifting to it) feed an
//!   exponentially discounted least-squares line per side that has a limit. Its slope and
//!   standard error give the time to the limit with an interval; a prediction stands when the
//!   slope is significant and the interval's early end falls inside the horizon for two hours in a
//!   row. A jump that the line cannot explain (maintenance, a part swapped) restarts the line.

use serde::{Deserialize, Serialize};

use crate::AnomalyConfig;

const HOUR_MS: i64 = 3_600_000;
/// Largest magnitude a level or spread may have to be judged (its square must stay finite).
const MAX_MAGNITUDE: f64 = 1e150;
/// Samples a window needs before its own spread is judged.
pub const MIN_SPREAD_SAMPLES: u32 = 5;
/// Windows an hour needs before its spread is judged, and hours learnt before judging.
const MIN_HOUR_WINDOWS: u32 = 6;
const HOUR_WARMUP: u32 = 12;
/// A forecast reaches at most this many times the hours of history behind it.
const MAX_EXTRAPOLATION: f64 = 4.0;

/// One feature window of one series, as the detector sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// End of the window, ms of event time.
    pub end_ms: i64,
    /// Mean of the window's samples.
    pub level: f64,
    /// Standard deviation of the window's samples (0 for a single sample).
    pub variability: f64,
    /// Share of the window's samples outside the operating spec.
    pub fraction_out_of_spec: f64,
    /// Operating spec (low, high); a side without a limit is `None`.
    pub spec: (Option<f64>, Option<f64>),
    /// The fleet prior for the level (the model's nominal), when there is one.
    pub prior: Option<f64>,
    /// Whether this is a continuous sensor reading, whose spread says something about the
    /// part (a run-quality figure's spread is mostly run-to-run chance).
    pub continuous: bool,
    /// Whether it counts events (its noise is at least Poisson: a deviation is judged against
    /// at least the square root of a rate of one per window).
    pub count: bool,
    /// Samples in the window.
    pub samples: u32,
    /// Typical window spread of this metric on this model across the fleet, when enough
    /// instruments have been learnt to know it.
    pub fleet_spread: Option<f64>,
    /// Whether the baseline rules (shift, CUSUM, spread) apply; off for a site condition such as
    /// room temperature, judged against its spec and its trend only.
    pub baseline_rules: bool,
}

/// A standing forecast that the series leaves its spec.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// When the fit was made (end of the last hourly point), ms.
    pub at_ms: i64,
    /// Central estimate of the crossing, ms.
    pub crossing_ms: i64,
    /// Earliest crossing (steep end of the slope's interval), ms.
    pub earliest_ms: i64,
    /// Latest crossing (shallow end), ms; `None` when the interval admits no trend.
    pub latest_ms: Option<i64>,
    /// Slope over its standard error.
    pub t_stat: f64,
    /// Whether the crossing is through the upper limit.
    pub upper: bool,
}

/// What one window showed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// Deviation from the baseline in the bad direction, in baseline deviations (0 until the
    /// baseline can score).
    pub z: f64,
    /// Largest CUSUM statistic.
    pub cusum: f64,
    /// The CUSUM statistic of the side the window still pushes (its deviation beyond the slack
    /// in that direction), 0 while the sum only drains.
    pub cusum_pushing: f64,
    /// Window spread over its baseline spread (0 until it can score).
    pub spread_ratio: f64,
    /// At least half the window is out of spec.
    pub out_of_spec: bool,
    /// `z` reached the threshold.
    pub shifted: bool,
    /// The CUSUM reached its threshold.
    pub changed: bool,
    /// The spread reached its threshold.
    pub spread: bool,
    /// The window's swing (√2·sd, a sine's peak) takes at least `headroom_share` of the room
    /// between its level and the nearest spec limit.
    pub swing: bool,
    /// The standing prediction after this window, if any.
    pub prediction: Option<Prediction>,
    /// Share of the window out of spec.
    pub fraction_out_of_spec: f64,
    /// The last closed hour's spread was out of line.
    pub hour_alarm: bool,
    /// Baseline level and deviation used for this window.
    pub baseline: (f64, f64),
    /// The window was learnt into the baseline (a normal window of a warmed series), so its
    /// spread may feed the fleet's.
    pub learned: bool,
}

impl Verdict {
    /// Whether any rule for a present anomaly fired.
    pub fn anomalous(&self) -> bool {
        self.out_of_spec || self.shifted || self.changed || self.spread || self.swing
    }

    /// Whether the window is clearly normal: its deviation within the CUSUM's slack, spread below
    /// half its threshold, hardly anything out of spec. An open
    /// episode counts only calm windows towards clearing (hysteresis), so a swinging loop whose
    /// spread dips under the threshold now and then does not open and close alert after alert.
    pub fn calm(&self, cfg: &AnomalyConfig) -> bool {
        !self.anomalous()
            && self.z < (cfg.z_threshold / 2.0).min(cfg.cusum_slack.max(1.0))
            && self.spread_ratio < cfg.spread_factor / 2.0
            && !self.hour_alarm
            && self.fraction_out_of_spec < 0.25
    }

    /// The rule that fired, most specific first.
    pub fn rule(&self) -> &'static str {
        if self.out_of_spec && !self.shifted {
            "out_of_spec"
        } else if self.shifted {
            "baseline_shift"
        } else if self.swing {
            "swing_near_limit"
        } else if self.spread {
            "variance_rise"
        } else {
            "cusum_shift"
        }
    }

    /// The window's anomaly score in [0, 1): 0.5 where the strongest rule reaches its threshold.
    pub fn score01(&self, cfg: &AnomalyConfig) -> f64 {
        let x = (self.z / cfg.z_threshold)
            .max(self.cusum_pushing / cfg.cusum_threshold)
            .max(self.spread_ratio / cfg.spread_factor)
            .max(if self.out_of_spec { 1.0 } else { 0.0 });
        if x.is_finite() {
            x / (1.0 + x)
        } else {
            1.0
        }
    }
}

/// Exponentially discounted least squares of y on t (hours, origin at the newest point), O(1)
/// state: a line fitted with weight `decay^(age in hours)` on each past point.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiscountedLine {
    at_h: f64,
    s0: f64,
    st: f64,
    stt: f64,
    sy: f64,
    sty: f64,
    syy: f64,
    points: u32,
}

/// A fitted line: level at the newest point, slope per hour, and their uncertainty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// Fitted value at the newest point.
    pub level: f64,
    /// Slope, units per hour.
    pub slope: f64,
    /// Standard error of the slope.
    pub slope_se: f64,
    /// Residual standard deviation.
    pub resid_sd: f64,
}

impl DiscountedLine {
    /// Moves the origin to `t_h`, discounting what is there.
    fn advance(&mut self, t_h: f64, decay: f64) {
        let d = t_h - self.at_h;
        if self.points == 0 {
            self.at_h = t_h;
            return;
        }
        if d <= 0.0 {
            return;
        }
        let w = decay.powf(d);
        // Shift the origin by d (t' = t - d), then discount every sum by the elapsed time.
        self.sty = (self.sty - d * self.sy) * w;
        self.stt = (self.stt - 2.0 * d * self.st + d * d * self.s0) * w;
        self.st = (self.st - d * self.s0) * w;
        self.s0 *= w;
        self.sy *= w;
        self.syy *= w;
        self.at_h = t_h;
    }

    fn add(&mut self, t_h: f64, y: f64, decay: f64) {
        self.advance(t_h, decay);
        self.s0 += 1.0;
        self.sy += y;
        self.syy += y * y;
        self.points += 1;
    }

    /// The fit, once there are three points and some spread in time.
    pub fn fit(&self, sd_floor: f64) -> Option<Fit> {
        let den = self.s0 * self.stt - self.st * self.st;
        if self.points < 3 || den <= 1e-9 || self.s0 <= 2.0 {
            return None;
        }
        let slope = (self.s0 * self.sty - self.st * self.sy) / den;
        let intercept = (self.sy - slope * self.st) / self.s0;
        let sse = (self.syy - intercept * self.sy - slope * self.sty).max(0.0);
        let resid_sd = (sse / (self.s0 - 2.0)).sqrt().max(sd_floor);
        Some(Fit {
            level: intercept,
            slope,
            slope_se: resid_sd * (self.s0 / den).sqrt(),
            resid_sd,
        })
    }
}

/// Windows gathered into the current hour.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct HourBin {
    hour: i64,
    n: u32,
    sum: f64,
    sum_sq: f64,
    sum_var: f64,
}

impl HourBin {
    /// Mean of the hour's window levels, and its standard deviation within and between windows.
    fn mean_sd(&self) -> (f64, f64) {
        let n = f64::from(self.n.max(1));
        let mean = self.sum / n;
        let between = (self.sum_sq / n - mean * mean).max(0.0);
        (mean, (self.sum_var / n + between).sqrt())
    }
}

/// One side's trend: the line and how many hours in a row it has (not) predicted a crossing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct SideTrend {
    line: DiscountedLine,
    jumps: u32,
    /// Hour of the line's first point.
    first_h: f64,
    /// One-step forecast errors: the last one, and discounted sums of squares and of lag-1
    /// products, for their autocorrelation. A daily cycle makes neighbouring errors alike, which
    /// makes a plain slope error far too small; the error is widened by it.
    last_error: f64,
    error_sq: f64,
    error_lag: f64,
}

impl SideTrend {
    /// Lag-1 autocorrelation of the forecast errors, in [0, 0.9].
    fn autocorrelation(&self) -> f64 {
        if self.error_sq <= 0.0 {
            0.0
        } else {
            (self.error_lag / self.error_sq).clamp(0.0, 0.9)
        }
    }
}

/// Everything known about one series.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesState {
    /// Windows learnt into the baseline.
    n: u32,
    /// Whether the baseline started from a fleet prior.
    primed: bool,
    mean: f64,
    var: f64,
    /// Baseline of the window spread.
    spread: f64,
    cusum_hi: f64,
    cusum_lo: f64,
    bin: HourBin,
    upper: SideTrend,
    lower: SideTrend,
    /// Hours in a row with a candidate crossing (confirmation) and without one (release).
    hits: u32,
    misses: u32,
    /// Whether the series currently drifts significantly in its bad direction.
    drifting: bool,
    /// Baseline of the hourly spread, hours learnt, and whether the last closed hour's spread
    /// was out of line (held until the next hour closes).
    #[serde(default)]
    hour_spread: f64,
    #[serde(default)]
    hours: u32,
    #[serde(default)]
    hour_alarm: bool,
    prediction: Option<Prediction>,
}

/// The smallest deviation used for scoring: a share of the spec width or of the level, so a very
/// quiet sensor does not alert on noise.
pub fn deviation_floor(spec: (Option<f64>, Option<f64>), mean: f64) -> f64 {
    let floor = match spec {
        (Some(lo), Some(hi)) => (hi - lo) * 0.05,
        (Some(l), None) | (None, Some(l)) => (l - mean).abs() * 0.1,
        (None, None) => mean.abs() * 0.02,
    };
    floor.max(mean.abs() * 0.005).max(1e-6)
}

impl SeriesState {
    /// Whether an episode may learn: the caller says whether one is open.
    pub fn observe(&mut self, o: &Observation, cfg: &AnomalyConfig, in_episode: bool) -> Verdict {
        // A value no instrument reads (non-finite, or so large its square overflows) would make
        // the state NaN for good: it is judged by nothing and learnt from not at all.
        let sane = |x: f64| x.is_finite() && x.abs() < MAX_MAGNITUDE;
        if !sane(o.level) || !sane(o.variability) {
            return Verdict {
                z: 0.0,
                cusum: 0.0,
                cusum_pushing: 0.0,
                spread_ratio: 0.0,
                out_of_spec: false,
                shifted: false,
                changed: false,
                spread: false,
                swing: false,
                prediction: self.prediction,
                fraction_out_of_spec: 0.0,
                hour_alarm: false,
                baseline: (self.mean, self.var.sqrt()),
                learned: false,
            };
        }
        if self.n == 0 && !self.primed {
            if let Some(prior) = o.prior {
                self.mean = prior;
                self.primed = true;
            }
        }
        let can_score = self.primed || self.n >= cfg.warmup_windows;
        let mut floor = deviation_floor(o.spec, self.mean);
        if o.count {
            floor = floor.max(self.mean.max(1.0).sqrt());
        }
        let std = self.var.sqrt().max(floor);
        // A metric with a limit on one side only gets worse in one direction: lower FWHM or
        // error rate, higher %Q30, is an improvement, not a fault.
        let signed = (o.level - self.mean) / std;
        let (up_bad, down_bad) = match o.spec {
            (None, Some(_)) => (true, false),
            (Some(_), None) => (false, true),
            _ => (true, true),
        };
        let z = if !can_score {
            0.0
        } else {
            match (up_bad, down_bad) {
                (true, false) => signed.max(0.0),
                (false, true) => (-signed).max(0.0),
                _ => signed.abs(),
            }
        };
        if can_score {
            let k = cfg.cusum_slack;
            if up_bad {
                self.cusum_hi = (self.cusum_hi + signed.min(cfg.z_threshold) - k).max(0.0);
            }
            if down_bad {
                self.cusum_lo = (self.cusum_lo - signed.max(-cfg.z_threshold) - k).max(0.0);
            }
        }
        let cusum = self.cusum_hi.max(self.cusum_lo);
        // The CUSUM alarms while the shift it added up is still there: a window back within the
        // slack does not hold an episode open while the sum drains.
        let cusum_pushing = if !can_score {
            0.0
        } else if up_bad && signed > cfg.cusum_slack {
            self.cusum_hi
        } else if down_bad && -signed > cfg.cusum_slack {
            self.cusum_lo
        } else {
            0.0
        };
        let pushing = cusum_pushing >= cfg.cusum_threshold;
        let spread_floor = (floor * 0.25).max(1e-9);
        let judged = o.continuous && o.samples >= MIN_SPREAD_SAMPLES;
        let own = if judged && self.n >= cfg.warmup_windows {
            o.variability / self.spread.max(spread_floor)
        } else {
            0.0
        };
        // Against the fleet: an instrument that arrives already oscillating has learnt nothing
        // better, but its model's other instruments have.
        let fleet = match o.fleet_spread {
            Some(typical) if judged => {
                o.variability / typical.max(spread_floor) * cfg.spread_factor
                    / cfg.fleet_spread_factor
            }
            _ => 0.0,
        };
        let spread_ratio = own.max(fleet);
        // A swing whose peaks eat most of the headroom to a limit needs no baseline to be wrong.
        let below = o.spec.0.map(|l| o.level - l);
        let above = o.spec.1.map(|h| h - o.level);
        let headroom = below.into_iter().chain(above).fold(f64::INFINITY, f64::min);
        let swing = judged
            && headroom.is_finite()
            && headroom > 0.0
            && std::f64::consts::SQRT_2 * o.variability >= cfg.headroom_share * headroom;
        let out_of_spec = o.fraction_out_of_spec >= 0.5;
        let shifted = o.baseline_rules && z >= cfg.z_threshold;
        let changed = o.baseline_rules && can_score && pushing;
        let spread = o.baseline_rules && spread_ratio >= cfg.spread_factor;
        let swing = o.baseline_rules && swing;
        let baseline = (self.mean, std);

        self.trend(o, cfg, floor, in_episode);
        let spread = spread || (o.baseline_rules && self.hour_alarm);

        let anomalous = out_of_spec || shifted || changed || spread || swing;
        let learned = !anomalous && !in_episode && !self.drifting;
        if learned {
            self.learn(o, cfg);
        }
        Verdict {
            z,
            cusum,
            cusum_pushing,
            spread_ratio,
            out_of_spec,
            shifted,
            changed,
            spread,
            swing,
            prediction: self.prediction,
            fraction_out_of_spec: o.fraction_out_of_spec,
            hour_alarm: o.baseline_rules && self.hour_alarm,
            baseline,
            learned: learned && self.n > cfg.warmup_windows,
        }
    }

    /// Resets the CUSUM once its episode is over, so the next one starts from zero.
    pub fn reset_change(&mut self) {
        self.cusum_hi = 0.0;
        self.cusum_lo = 0.0;
    }

    fn learn(&mut self, o: &Observation, cfg: &AnomalyConfig) {
        self.n += 1;
        let prior_weight = if self.primed { 3.0 } else { 0.0 };
        let alpha = if self.n <= cfg.warmup_windows {
            1.0 / (self.n as f64 + prior_weight)
        } else {
            cfg.ewma_alpha
        };
        // One wild value early in the warm-up must not blind the baseline for good: once there
        // are a few windows, a step is clipped to five deviations.
        let mut delta = o.level - self.mean;
        if self.n > 3 {
            let std = self.var.sqrt().max(1e-12);
            delta = delta.clamp(-5.0 * std, 5.0 * std);
        }
        let mean = self.mean + alpha * delta;
        let var = (1.0 - alpha) * (self.var + alpha * delta * delta);
        let a = if self.n <= cfg.warmup_windows {
            1.0 / self.n as f64
        } else {
            cfg.ewma_alpha
        };
        let spread = self.spread + a * (o.variability - self.spread);
        if mean.is_finite() && var.is_finite() && spread.is_finite() {
            self.mean = mean;
            self.var = var;
            self.spread = spread;
        } else {
            self.n -= 1;
        }
    }

    /// Feeds the hourly envelope lines and re-evaluates the prediction when an hour closes.
    fn trend(&mut self, o: &Observation, cfg: &AnomalyConfig, floor: f64, in_episode: bool) {
        if o.spec.0.is_none() && o.spec.1.is_none() {
            return;
        }
        let hour = o.end_ms.saturating_sub(1).div_euclid(HOUR_MS);
        if self.bin.n > 0 && hour != self.bin.hour {
            let bin = std::mem::take(&mut self.bin);
            self.close_hour(&bin, o.spec, cfg, floor);
            self.judge_hour_spread(&bin, o.continuous, cfg, floor, in_episode);
        }
        if self.bin.n == 0 {
            self.bin.hour = hour;
        }
        self.bin.n += 1;
        self.bin.sum += o.level;
        self.bin.sum_sq += o.level * o.level;
        self.bin.sum_var += o.variability * o.variability;
    }

    fn close_hour(
        &mut self,
        bin: &HourBin,
        spec: (Option<f64>, Option<f64>),
        cfg: &AnomalyConfig,
        floor: f64,
    ) {
        let (mean, sd) = bin.mean_sd();
        let t_h = (bin.hour + 1) as f64;
        let at_ms = bin.hour.saturating_add(1).saturating_mul(HOUR_MS);
        let decay = 0.5f64.powf(1.0 / cfg.trend_half_life_hours);
        let sd_floor = floor * 0.02;
        let mut best: Option<Prediction> = None;
        let mut drifting = false;
        for (upper, limit) in [(true, spec.1), (false, spec.0)] {
            let Some(limit) = limit else { continue };
            let y = if upper {
                mean + std::f64::consts::SQRT_2 * sd
            } else {
                mean - std::f64::consts::SQRT_2 * sd
            };
            let side = if upper {
                &mut self.upper
            } else {
                &mut self.lower
            };
            // A point the line cannot explain twice in a row (a part swapped, a recalibration)
            // starts a new line rather than bending the old one for days.
            if let Some(fit) = side.line.fit(sd_floor) {
                let expected = fit.level + fit.slope * (t_h - side.line.at_h);
                let error = y - expected;
                if error.abs() > 6.0 * fit.resid_sd.max(floor * 0.2) {
                    side.jumps += 1;
                    if side.jumps >= 2 {
                        *side = SideTrend::default();
                    }
                } else {
                    side.jumps = 0;
                    side.error_lag = decay * side.error_lag + error * side.last_error;
                    side.error_sq = decay * side.error_sq + error * error;
                    side.last_error = error;
                }
            }
            if side.line.points == 0 {
                side.first_h = t_h;
            }
            side.line.add(t_h, y, decay);
            if side.line.points < cfg.trend_min_hours {
                continue;
            }
            let Some(fit) = side.line.fit(sd_floor) else {
                continue;
            };
            // Towards the limit is positive.
            let (slope, margin) = if upper {
                (fit.slope, limit - fit.level)
            } else {
                (-fit.slope, fit.level - limit)
            };
            let rho = side.autocorrelation();
            let slope_se = fit.slope_se * ((1.0 + rho) / (1.0 - rho)).sqrt();
            let t_stat = slope / slope_se.max(1e-12);
            if t_stat >= cfg.trend_z / 2.0 {
                drifting = true;
            }
            if t_stat < cfg.trend_z {
                continue;
            }
            let margin = margin.max(0.0);
            let steep = slope + cfg.interval_z * slope_se;
            let shallow = slope - cfg.interval_z * slope_se;
            let earliest_h = margin / steep;
            // Extrapolate no further than a few times the history the line has seen.
            let seen_h = (t_h - side.first_h).max(1.0);
            if earliest_h > cfg.horizon_hours || earliest_h > MAX_EXTRAPOLATION * seen_h {
                continue;
            }
            let to_ms = |h: f64| at_ms.saturating_add((h * HOUR_MS as f64).min(1e15) as i64);
            let p = Prediction {
                at_ms,
                crossing_ms: to_ms(margin / slope),
                earliest_ms: to_ms(earliest_h),
                latest_ms: (shallow > 0.0).then(|| to_ms(margin / shallow)),
                t_stat,
                upper,
            };
            if best.is_none_or(|b| p.earliest_ms < b.earliest_ms) {
                best = Some(p);
            }
        }
        self.drifting = drifting;
        match best {
            Some(p) => {
                self.hits += 1;
                self.misses = 0;
                if self.hits >= 2 || self.prediction.is_some() {
                    self.prediction = Some(p);
                }
            }
            None => {
                self.hits = 0;
                self.misses += 1;
                if self.misses >= cfg.prediction_clear_hours {
                    self.prediction = None;
                }
            }
        }
    }

    /// The hour's spread (within and between its windows) against its own baseline: with one
    /// sample per window there is no window spread to judge, but an hour of windows still shows a
    /// control loop starting to swing.
    fn judge_hour_spread(
        &mut self,
        bin: &HourBin,
        continuous: bool,
        cfg: &AnomalyConfig,
        floor: f64,
        in_episode: bool,
    ) {
        if !continuous || bin.n < MIN_HOUR_WINDOWS {
            self.hour_alarm = false;
            return;
        }
        let (_, sd) = bin.mean_sd();
        let warm = self.hours >= HOUR_WARMUP;
        self.hour_alarm = warm && sd >= cfg.spread_factor * self.hour_spread.max(floor * 0.25);
        if !self.hour_alarm && !in_episode && !self.drifting {
            self.hours += 1;
            // Slow after the warm-up (a half-life of about six days), so a loop whose swing grows
            // over days stays measured against how it swung when healthy.
            let a = if warm { 0.005 } else { 1.0 / self.hours as f64 };
            self.hour_spread += a * (sd - self.hour_spread);
        }
    }

    /// Windows learnt into the baseline so far.
    pub fn learnt_windows(&self) -> u32 {
        self.n
    }

    /// Baseline level (for records).
    pub fn baseline_level(&self) -> f64 {
        self.mean
    }

    /// Baseline standard deviation (for records).
    pub fn baseline_stddev(&self) -> f64 {
        self.var.sqrt()
    }
}

/// A stored count back to its type: a negative or oversized count is a corrupted state.
fn stored_count(value: i64, field: &str) -> Result<u32, String> {
    u32::try_from(value).map_err(|_| format!("{field} {value} is not a count"))
}

impl SeriesState {
    /// The series as the changelog stores it (schema `anomaly_detector_state`), without an
    /// episode (the caller's).
    pub fn to_stored(&self) -> seqmon_model::DetectorSeries {
        let side = |s: &SideTrend| seqmon_model::DetectorSideTrend {
            line: seqmon_model::DetectorLine {
                at_h: s.line.at_h,
                s0: s.line.s0,
                st: s.line.st,
                stt: s.line.stt,
                sy: s.line.sy,
                sty: s.line.sty,
                syy: s.line.syy,
                points: i64::from(s.line.points),
            },
            jumps: i64::from(s.jumps),
            first_h: s.first_h,
            last_error: s.last_error,
            error_sq: s.error_sq,
            error_lag: s.error_lag,
        };
        seqmon_model::DetectorSeries {
            n: i64::from(self.n),
            primed: self.primed,
            mean: self.mean,
            var: self.var,
            spread: self.spread,
            cusum_hi: self.cusum_hi,
            cusum_lo: self.cusum_lo,
            bin: seqmon_model::DetectorHourBin {
                hour: self.bin.hour,
                n: i64::from(self.bin.n),
                sum: self.bin.sum,
                sum_sq: self.bin.sum_sq,
                sum_var: self.bin.sum_var,
            },
            upper: side(&self.upper),
            lower: side(&self.lower),
            hits: i64::from(self.hits),
            misses: i64::from(self.misses),
            drifting: self.drifting,
            hour_spread: self.hour_spread,
            hours: i64::from(self.hours),
            hour_alarm: self.hour_alarm,
            prediction: self.prediction.map(|p| seqmon_model::DetectorPrediction {
                at_ms: p.at_ms,
                crossing_ms: p.crossing_ms,
                earliest_ms: p.earliest_ms,
                latest_ms: p.latest_ms,
                t_stat: p.t_stat,
                upper: p.upper,
            }),
            episode: None,
        }
    }

    /// The series a stored record holds (its episode is the caller's).
    pub fn from_stored(s: &seqmon_model::DetectorSeries) -> Result<Self, String> {
        let side = |t: &seqmon_model::DetectorSideTrend| -> Result<SideTrend, String> {
            Ok(SideTrend {
                line: DiscountedLine {
                    at_h: t.line.at_h,
                    s0: t.line.s0,
                    st: t.line.st,
                    stt: t.line.stt,
                    sy: t.line.sy,
                    sty: t.line.sty,
                    syy: t.line.syy,
                    points: stored_count(t.line.points, "line points")?,
                },
                jumps: stored_count(t.jumps, "jumps")?,
                first_h: t.first_h,
                last_error: t.last_error,
                error_sq: t.error_sq,
                error_lag: t.error_lag,
            })
        };
        Ok(SeriesState {
            n: stored_count(s.n, "n")?,
            primed: s.primed,
            mean: s.mean,
            var: s.var,
            spread: s.spread,
            cusum_hi: s.cusum_hi,
            cusum_lo: s.cusum_lo,
            bin: HourBin {
                hour: s.bin.hour,
                n: stored_count(s.bin.n, "hour windows")?,
                sum: s.bin.sum,
                sum_sq: s.bin.sum_sq,
                sum_var: s.bin.sum_var,
            },
            upper: side(&s.upper)?,
            lower: side(&s.lower)?,
            hits: stored_count(s.hits, "hits")?,
            misses: stored_count(s.misses, "misses")?,
            drifting: s.drifting,
            hour_spread: s.hour_spread,
            hours: stored_count(s.hours, "hours")?,
            hour_alarm: s.hour_alarm,
            prediction: s.prediction.as_ref().map(|p| Prediction {
                at_ms: p.at_ms,
                crossing_ms: p.crossing_ms,
                earliest_ms: p.earliest_ms,
                latest_ms: p.latest_ms,
                t_stat: p.t_stat,
                upper: p.upper,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(i: i64, level: f64, sd: f64) -> Observation {
        Observation {
            end_ms: (i + 1) * 300_000,
            level,
            variability: sd,
            fraction_out_of_spec: 0.0,
            spec: (Some(425.0), Some(575.0)),
            prior: Some(500.0),
            continuous: true,
            count: false,
            samples: 10,
            fleet_spread: None,
            baseline_rules: true,
        }
    }

    fn noise(i: i64) -> f64 {
        // A fixed pseudo-random sequence in [-1, 1].
        let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
        (x as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    #[test]
    fn discounted_line_recovers_a_slope() {
        let mut l = DiscountedLine::default();
        for h in 0..48 {
            l.add(h as f64, 10.0 - 0.5 * h as f64 + 0.01 * noise(h), 0.97);
        }
        let fit = l.fit(1e-6).unwrap();
        assert!((fit.slope + 0.5).abs() < 0.01, "{fit:?}");
        assert!((fit.level - (10.0 - 0.5 * 47.0)).abs() < 0.05, "{fit:?}");
        assert!(fit.slope / fit.slope_se < -20.0);
    }

    #[test]
    fn a_slow_decay_is_predicted_days_before_the_limit_and_a_flat_series_is_not() {
        let cfg = AnomalyConfig::default();
        // 0.25 mW per hour: from 500 to the 425 limit in 300 h (12.5 days).
        let run = |slope_per_h: f64| {
            let mut s = SeriesState::default();
            let mut first = None;
            for i in 0..(12 * 300) {
                let h = i as f64 / 12.0;
                let v = s.observe(
                    &obs(i, 500.0 - slope_per_h * h + 2.0 * noise(i), 2.0),
                    &cfg,
                    false,
                );
                if let (None, Some(p)) = (first, v.prediction) {
                    first = Some((h, p));
                }
            }
            first
        };
        let (at_h, p) = run(0.25).expect("predicted");
        let crossing_h = 300.0 - 2.0 * std::f64::consts::SQRT_2 / 0.25;
        assert!(
            at_h < crossing_h - 24.0,
            "predicted at {at_h} h for a crossing at {crossing_h} h"
        );
        assert!(!p.upper);
        assert!(p.earliest_ms <= p.crossing_ms);
        assert!(run(0.0).is_none(), "flat series predicted");
    }

    #[test]
    fn a_growing_oscillation_is_predicted_before_its_peaks_reach_the_limit() {
        let cfg = AnomalyConfig::default();
        let mut s = SeriesState::default();
        let spec = (Some(2.0), Some(8.0));
        let mut first = None;
        // Amplitude grows from 0.1 to 2 over 96 h: the peaks reach the 2.0 °C limit at 96 h.
        for i in 0..(12 * 96) {
            let h = i as f64 / 12.0;
            let amp = 0.1 + 1.9 * (h / 96.0).powf(1.5);
            let v = s.observe(
                &Observation {
                    end_ms: (i + 1) * 300_000,
                    level: 4.0 + 0.03 * noise(i),
                    variability: amp / std::f64::consts::SQRT_2,
                    fraction_out_of_spec: 0.0,
                    spec,
                    prior: Some(4.0),
                    continuous: true,
                    count: false,
                    samples: 10,
                    fleet_spread: None,
                    baseline_rules: true,
                },
                &cfg,
                false,
            );
            if first.is_none() && (v.prediction.is_some() || v.anomalous()) {
                first = Some(h);
            }
        }
        let at = first.expect("detected");
        assert!(at < 96.0 - 24.0, "first signal at {at} h");
    }
}
