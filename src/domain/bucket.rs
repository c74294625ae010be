//! A token bucket's arithmetic: pure functions over explicit times (Unix milliseconds),
//! tested without a store or a clock.
//!
//! Two limits use it: the federation's oracle budget per peer (`federation::budget`, kept in
//! the store) and the client API's registration limit per organisation (`api`, in memory).
//! A bucket (not a fixed window) has no edge where two windows' allowances meet: after a
//! full burst the next hour holds one hour's refill, not another burst.

/// One bucket's limits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    /// The most tokens the bucket holds: the largest burst a caller (peer, organisation) can send.
    pub capacity: u64,
    /// Tokens added per `period_ms`.
    pub refill: u64,
    /// The refill period, milliseconds (an hour, a day).
    pub period_ms: i64,
}

/// A bucket's state: tokens left at `at_ms` (Unix milliseconds).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    pub at_ms: i64,
}

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 24 * HOUR_MS;

impl Limit {
    pub fn per_hour(capacity: u64, refill: u64) -> Limit {
        Limit { capacity, refill, period_ms: HOUR_MS }
    }

    pub fn per_day(capacity: u64, refill: u64) -> Limit {
        Limit { capacity, refill, period_ms: DAY_MS }
    }

    /// The bucket of a caller never seen before: full.
    pub fn fresh(&self, now_ms: i64) -> Bucket {
        Bucket { tokens: self.capacity as f64, at_ms: now_ms }
    }

    /// `bucket` (or a fresh one) refilled up to `now_ms` and capped at the capacity (also
    /// when the capacity was lowered since it was stored). A clock that went back adds
    /// nothing and does not move the bucket's time back, so it cannot be credited twice.
    pub fn refilled(&self, bucket: Option<Bucket>, now_ms: i64) -> Bucket {
        let Some(b) = bucket else { return self.fresh(now_ms) };
        let cap = self.capacity as f64;
        // A damaged value (not finite, negative) counts as empty, never as a gift.
        let tokens = if b.tokens.is_finite() { b.tokens.clamp(0.0, cap) } else { 0.0 };
        let elapsed = now_ms.saturating_sub(b.at_ms).max(0);
        let gained = elapsed as f64 * self.refill as f64 / self.period_ms.max(1) as f64;
        Bucket { tokens: (tokens + gained).min(cap), at_ms: b.at_ms.max(now_ms) }
    }

    /// Takes `n` tokens at `now_ms`: the bucket to store, or, when fewer than `n` are
    /// left, `Err` with the (refilled) tokens there were, and nothing taken.
    pub fn take(&self, bucket: Option<Bucket>, now_ms: i64, n: u64) -> Result<Bucket, f64> {
        let b = self.refilled(bucket, now_ms);
        if b.tokens < n as f64 {
            return Err(b.tokens);
        }
        Ok(Bucket { tokens: b.tokens - n as f64, at_ms: b.at_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;

    #[test]
    fn a_new_peer_starts_with_a_full_bucket() {
        let limit = Limit::per_hour(500, 60);
        assert_eq!(limit.refilled(None, T0), Bucket { tokens: 500.0, at_ms: T0 });
    }

    #[test]
    fn take_takes_and_a_refusal_takes_nothing() {
        let limit = Limit::per_hour(10, 60);
        let b = limit.take(None, T0, 6).unwrap();
        assert_eq!(b, Bucket { tokens: 4.0, at_ms: T0 });
        // 6 + 5 is over 10: refused, and the bucket the caller keeps is still `b`.
        assert_eq!(limit.take(Some(b), T0, 5), Err(4.0));
        let b = limit.take(Some(b), T0, 4).unwrap();
        assert_eq!(b.tokens, 0.0);
        assert_eq!(limit.take(Some(b), T0, 1), Err(0.0));
        // More than the capacity is never granted, however long the peer waits.
        assert!(limit.take(Some(b), T0 + 365 * DAY_MS, 11).is_err());
    }

    #[test]
    fn the_bucket_refills_at_its_rate() {
        let limit = Limit::per_hour(500, 60);
        let empty = Bucket { tokens: 0.0, at_ms: T0 };
        // 60 an hour is one a minute.
        assert_eq!(limit.refilled(Some(empty), T0 + 60_000).tokens, 1.0);
        assert_eq!(limit.refilled(Some(empty), T0 + 30 * 60_000).tokens, 30.0);
        assert!(limit.take(Some(empty), T0 + 59_999, 1).is_err(), "not a whole token yet");
        let b = limit.take(Some(empty), T0 + 60_000, 1).unwrap();
        assert_eq!(b, Bucket { tokens: 0.0, at_ms: T0 + 60_000 });
        // Fractions accrue: many small steps add up to the same as one big one.
        let mut b = empty;
        for i in 1..=600 {
            b = limit.refilled(Some(b), T0 + i * 100);
        }
        assert!((b.tokens - 1.0).abs() < 1e-9, "{b:?}");
    }

    #[test]
    fn the_bucket_never_holds_more_than_its_capacity() {
        let limit = Limit::per_hour(500, 60);
        let b = Bucket { tokens: 490.0, at_ms: T0 };
        assert_eq!(limit.refilled(Some(b), T0 + DAY_MS).tokens, 500.0);
        // A capacity lowered in the config applies to stored buckets at once.
        let lowered = Limit::per_hour(100, 60);
        assert_eq!(lowered.refilled(Some(b), T0).tokens, 100.0);
        // So there is no window edge to exploit: after a full burst the next hour holds
        // one hour's refill, not another burst.
        let spent = limit.take(None, T0, 500).unwrap();
        assert!(limit.take(Some(spent), T0 + HOUR_MS, 61).is_err());
        assert!(limit.take(Some(spent), T0 + HOUR_MS, 60).is_ok());
    }

    #[test]
    fn a_clock_that_goes_back_adds_nothing_and_is_not_credited_twice() {
        let limit = Limit::per_hour(500, 60);
        let b = Bucket { tokens: 10.0, at_ms: T0 };
        let back = limit.refilled(Some(b), T0 - HOUR_MS);
        assert_eq!(back, Bucket { tokens: 10.0, at_ms: T0 });
        // Forward again: only the time after T0 counts.
        assert_eq!(limit.refilled(Some(back), T0 + 60_000).tokens, 11.0);
    }

    #[test]
    fn a_damaged_stored_value_counts_as_empty() {
        let limit = Limit::per_hour(500, 60);
        for tokens in [f64::NAN, f64::INFINITY, -5.0] {
            assert_eq!(limit.refilled(Some(Bucket { tokens, at_ms: T0 }), T0).tokens, 0.0, "{tokens}");
        }
    }

    #[test]
    fn a_daily_bucket_refills_per_day() {
        let limit = Limit::per_day(200_000, 200_000);
        let spent = limit.take(None, T0, 200_000).unwrap();
        assert_eq!(limit.refilled(Some(spent), T0 + DAY_MS / 2).tokens, 100_000.0);
    }
}
