//! Request rate limit per client: a token bucket per client identity (the site named by its
//! certificate). Pure; the caller passes the clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Buckets kept before idle (full) ones are dropped: clients are authenticated by certificate,
/// so this only bounds memory against a flood of issued certificates.
const MAX_BUCKETS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets by client.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: HashMap<String, Bucket>,
}

impl RateLimiter {
    /// `per_second` requests refill each client's bucket, which holds at most `burst`.
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self {
            per_second,
            burst: f64::from(burst),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `client`, or says how long until one is there.
    pub fn check(&mut self, client: &str, now: Instant) -> Result<(), Duration> {
        if !self.buckets.contains_key(client) && self.buckets.len() >= MAX_BUCKETS {
            let (per_second, burst) = (self.per_second, self.burst);
            self.buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.last).as_secs_f64() * per_second < burst
            });
        }
        let bucket = self.buckets.entry(client.to_string()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let refill = now.saturating_duration_since(bucket.last).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_per_client() {
        let mut l = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check("site-a", t0).is_ok());
        }
        let wait = l.check("site-a", t0).expect_err("burst spent");
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        // Another client has its own bucket.
        assert!(l.check("site-b", t0).is_ok());
        // Half a second refills one token at 2/s.
        assert!(l.check("site-a", t0 + Duration::from_millis(500)).is_ok());
        assert!(l.check("site-a", t0 + Duration::from_millis(500)).is_err());
        // Never more than the burst, however long the pause.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(l.check("site-a", later).is_ok());
        }
        assert!(l.check("site-a", later).is_err());
    }
}
