//! The inbound message rate of one connection: a token bucket, and a strike
//! count that turns persistent flooding into a close. I/O-free: the caller
//! passes `now`.

use std::time::Duration;

use tokio::time::Instant;

/// Inbound message rate settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RateConfig {
    /// Sustained messages per second a client may send.
    pub per_second: f64,
    /// Messages a client may send at once after a quiet spell.
    pub burst: u32,
    /// Messages refused with `rate_limited` before the connection is closed
    /// with 1008. Forgiven once the bucket has refilled completely.
    pub max_strikes: u32,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            per_second: 50.0,
            burst: 100,
            max_strikes: 50,
        }
    }
}

/// What to do with one inbound message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it.
    Allow,
    /// Drop it and answer `rate_limited`.
    Refuse,
    /// The client keeps flooding: close with 1008.
    Abuse,
}

/// One connection's token bucket.
#[derive(Debug)]
pub struct MessageRate {
    config: RateConfig,
    tokens: f64,
    refilled: Instant,
    strikes: u32,
}

impl MessageRate {
    pub fn new(config: RateConfig, now: Instant) -> Self {
        Self {
            tokens: f64::from(config.burst),
            config,
            refilled: now,
            strikes: 0,
        }
    }

    /// Takes a token for one message arriving at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        let burst = f64::from(self.config.burst);
        let elapsed = now.saturating_duration_since(self.refilled);
        self.refilled = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.config.per_second).min(burst);
        if self.tokens >= burst {
            self.strikes = 0;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        self.strikes = self.strikes.saturating_add(1);
        if self.strikes > self.config.max_strikes {
            Verdict::Abuse
        } else {
            Verdict::Refuse
        }
    }

    /// How long until the next message would be allowed.
    pub fn retry_after(&self) -> Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        // A rate so low that the wait does not fit a Duration waits "forever".
        let wait =
            Duration::try_from_secs_f64(missing / self.config.per_second.max(f64::MIN_POSITIVE))
                .unwrap_or(Duration::MAX);
        // Rounded up, so that the token is whole once the wait is over
        // rather than a rounding error short of it.
        wait.saturating_add(Duration::from_micros(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RateConfig {
        RateConfig {
            per_second: 10.0,
            burst: 3,
            max_strikes: 2,
        }
    }

    #[test]
    fn a_rate_too_low_to_express_waits_as_long_as_a_duration_can() {
        let mut rate = MessageRate::new(
            RateConfig {
                per_second: 1e-30,
                burst: 1,
                max_strikes: 3,
            },
            Instant::now(),
        );
        assert_eq!(rate.check(Instant::now()), Verdict::Allow);
        assert_eq!(rate.check(Instant::now()), Verdict::Refuse);
        assert_eq!(rate.retry_after(), Duration::MAX);
    }

    #[test]
    fn the_largest_strike_allowance_never_closes_and_never_overflows() {
        let start = Instant::now();
        let config = RateConfig {
            max_strikes: u32::MAX,
            ..config()
        };
        let mut rate = MessageRate::new(config, start);
        rate.tokens = 0.0;
        rate.strikes = u32::MAX - 1;
        for _ in 0..3 {
            assert_eq!(rate.check(start), Verdict::Refuse);
        }
    }

    #[test]
    fn a_burst_passes_then_messages_are_refused_then_the_client_is_closed() {
        let start = Instant::now();
        let mut rate = MessageRate::new(config(), start);
        let verdicts: Vec<Verdict> = (0..6).map(|_| rate.check(start)).collect();
        use Verdict::*;
        assert_eq!(verdicts, [Allow, Allow, Allow, Refuse, Refuse, Abuse]);
    }

    #[test]
    fn the_bucket_refills_at_the_rate_and_a_full_bucket_forgives() {
        let start = Instant::now();
        let mut rate = MessageRate::new(config(), start);
        for _ in 0..3 {
            assert_eq!(rate.check(start), Verdict::Allow);
        }
        assert_eq!(rate.check(start), Verdict::Refuse);
        assert!(rate.retry_after() > Duration::ZERO);
        // 100 ms at 10/s is one message.
        let later = start + Duration::from_millis(100);
        assert_eq!(rate.check(later), Verdict::Allow);
        assert_eq!(rate.check(later), Verdict::Refuse);
        // A full refill forgives the strikes: the next flood gets the whole allowance again.
        let rested = later + Duration::from_secs(1);
        let verdicts: Vec<Verdict> = (0..6).map(|_| rate.check(rested)).collect();
        use Verdict::*;
        assert_eq!(verdicts, [Allow, Allow, Allow, Refuse, Refuse, Abuse]);
    }

    #[test]
    fn a_client_that_waits_as_told_is_allowed_the_next_message() {
        // Rates whose token time is not a whole number of nanoseconds.
        for per_second in [3.0, 7.0, 50.0, 0.3] {
            let mut now = Instant::now();
            let mut rate = MessageRate::new(
                RateConfig {
                    per_second,
                    burst: 1,
                    max_strikes: 1,
                },
                now,
            );
            assert_eq!(rate.check(now), Verdict::Allow);
            for _ in 0..100 {
                assert_eq!(rate.check(now), Verdict::Refuse, "{per_second}/s");
                now += rate.retry_after();
                assert_eq!(rate.check(now), Verdict::Allow, "{per_second}/s");
            }
        }
    }
}
