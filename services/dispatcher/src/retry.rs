//! How a receiver is spared and how often it is tried: exponential backoff with full jitter, a
//! circuit breaker per endpoint, a token bucket per endpoint. Pure: time is passed in (ms).

/// Exponential backoff with full jitter: the n-th retry waits a uniformly random time in
/// `[0, min(cap, base * 2^(n-1))]` (so many retries after an outage do not arrive together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base_ms: u64,
    pub cap_ms: u64,
}

impl Backoff {
    /// The longest wait before retry `attempt` (1 = the first retry).
    pub fn ceiling(&self, attempt: u32) -> u64 {
        let shift = attempt.saturating_sub(1).min(40);
        self.base_ms.saturating_mul(1u64 << shift).min(self.cap_ms)
    }

    /// The wait before retry `attempt`, with `unit` a uniform random number in [0, 1).
    pub fn delay(&self, attempt: u32, unit: f64) -> u64 {
        let c = self.ceiling(attempt);
        // Never zero: at least a tenth of the ceiling, so a retry is not immediate.
        ((c as f64) * (0.1 + 0.9 * unit.clamp(0.0, 1.0))) as u64
    }
}

/// A uniform random number in [0, 1) from the operating system.
pub fn unit_random() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Circuit breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Too many failures in a row: no request until the cooldown ends.
    Open,
    /// Cooldown over: one request probes; its outcome closes or re-opens the circuit.
    HalfOpen,
}

impl BreakerState {
    /// Gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// A circuit breaker: opens after `threshold` failures in a row, for `cooldown_ms`.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    cooldown_ms: u64,
    failures: u32,
    open_until_ms: Option<u64>,
    probing: bool,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown_ms: u64) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown_ms,
            failures: 0,
            open_until_ms: None,
            probing: false,
        }
    }

    pub fn state(&self, now_ms: u64) -> BreakerState {
        match self.open_until_ms {
            None => BreakerState::Closed,
            Some(t) if now_ms < t => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Whether a request may go now: always when closed; one probe at a time when half-open.
    pub fn admit(&mut self, now_ms: u64) -> bool {
        match self.state(now_ms) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen if self.probing => false,
            BreakerState::HalfOpen => {
                self.probing = true;
                true
            }
        }
    }

    /// When it admits requests again (`None` when closed).
    pub fn reopens_at(&self) -> Option<u64> {
        self.open_until_ms
    }

    pub fn success(&mut self) {
        self.failures = 0;
        self.open_until_ms = None;
        self.probing = false;
    }

    pub fn failure(&mut self, now_ms: u64) {
        self.failures += 1;
        if self.probing || self.failures >= self.threshold {
            self.open_until_ms = Some(now_ms + self.cooldown_ms);
        }
        self.probing = false;
    }
}

/// A token bucket: `per_minute` requests a minute on average, bursts of up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_ms: f64,
    burst: f64,
    tokens: f64,
    at_ms: u64,
}

impl TokenBucket {
    pub fn new(per_minute: u32, burst: u32, now_ms: u64) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            per_ms: f64::from(per_minute.max(1)) / 60_000.0,
            burst,
            tokens: burst,
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let dt = now_ms.saturating_sub(self.at_ms) as f64;
        self.tokens = (self.tokens + dt * self.per_ms).min(self.burst);
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// How long until a token is there (0: now), without taking it.
    pub fn wait_ms(&mut self, now_ms: u64) -> u64 {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            0
        } else {
            ((1.0 - self.tokens) / self.per_ms).ceil() as u64
        }
    }

    /// Takes a token if there is one; otherwise how long until there is (ms).
    pub fn take(&mut self, now_ms: u64) -> Result<(), u64> {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - self.tokens) / self.per_ms).ceil() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_below_the_ceiling() {
        let b = Backoff {
            base_ms: 500,
            cap_ms: 60_000,
        };
        assert_eq!(
            (1..=9).map(|n| b.ceiling(n)).collect::<Vec<_>>(),
            vec![500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        assert_eq!(b.ceiling(1000), 60_000, "no overflow");
        for n in 1..10 {
            for u in [0.0, 0.3, 0.999] {
                let d = b.delay(n, u);
                assert!(d >= b.ceiling(n) / 10 && d <= b.ceiling(n));
            }
        }
        let u = unit_random();
        assert!((0.0..1.0).contains(&u));
    }

    #[test]
    fn breaker_opens_probes_once_and_closes() {
        let mut br = Breaker::new(3, 1000);
        for _ in 0..2 {
            assert!(br.admit(0));
            br.failure(0);
        }
        assert_eq!(br.state(0), BreakerState::Closed);
        br.failure(10);
        assert_eq!(br.state(10), BreakerState::Open);
        assert!(!br.admit(500));
        assert!(br.admit(1010), "half-open: one probe");
        assert!(!br.admit(1011), "only one");
        br.failure(1020);
        assert_eq!(
            br.state(1500),
            BreakerState::Open,
            "a failed probe re-opens"
        );
        assert!(br.admit(2020));
        br.success();
        assert_eq!(br.state(2021), BreakerState::Closed);
        assert!(br.admit(2021) && br.admit(2021));
    }

    #[test]
    fn bucket_limits_the_rate_after_a_burst() {
        let mut b = TokenBucket::new(60, 2, 0);
        assert!(b.take(0).is_ok() && b.take(0).is_ok());
        let wait = b.take(0).unwrap_err();
        assert!((900..=1000).contains(&wait), "{wait}");
        assert!(b.wait_ms(500) > 0 && b.wait_ms(1000) == 0);
        assert!(b.take(1000).is_ok());
        assert!(b.take(1000).is_err());
    }
}
