//! Jittered exponential backoff, shared by every retry loop that waits on a remote party
//! (outbox delivery to peers, webhook delivery).
//!
//! A leaf module: a small state machine that says how long to wait before the next
//! attempt. Each failure waits the current step times a random factor in [0.5, 1.5) (so
//! nodes that failed together do not retry together), then doubles the step up to the cap;
//! a success resets it. It needs no wall-clock time, so it reads no [`crate::domain::Clock`]:
//! the caller sleeps on tokio's timer, which tests can pause and advance.

use std::time::Duration;

use rand::Rng;

/// Backoff between retries: doubling from `min` to `max`, each wait jittered.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Starts at `min`, grows to at most `max`.
    pub const fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max, step: min }
    }

    /// The wait before the next attempt, after a failure; the step then doubles (capped).
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::thread_rng())
    }

    /// [`Backoff::next_delay`] with the jitter drawn from `rng`.
    pub fn next_delay_with<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let wait = self.step.mul_f64(rng.gen_range(0.5..1.5));
        self.step = (self.step * 2).min(self.max);
        wait
    }

    /// After a success: the next failure waits about `min` again.
    pub fn reset(&mut self) {
        self.step = self.min;
    }

    /// The current step, before jitter.
    pub fn step(&self) -> Duration {
        self.step
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const MIN: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(60);

    #[test]
    fn the_step_doubles_from_min() {
        let mut b = Backoff::new(MIN, MAX);
        assert_eq!(b.step(), MIN);
        b.next_delay();
        assert_eq!(b.step(), MIN * 2);
        b.next_delay();
        assert_eq!(b.step(), MIN * 4);
    }

    #[test]
    fn the_step_is_capped_at_max() {
        let mut b = Backoff::new(MIN, MAX);
        for _ in 0..20 {
            b.next_delay();
        }
        assert_eq!(b.step(), MAX);
        assert!(b.next_delay() < MAX.mul_f64(1.5));
        assert_eq!(b.step(), MAX);
    }

    #[test]
    fn every_wait_is_the_step_jittered_by_half_either_way() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        let (mut below, mut above) = (false, false);
        for _ in 0..200 {
            b.reset();
            let step = b.step();
            let wait = b.next_delay_with(&mut rng);
            assert!(wait >= step.mul_f64(0.5) && wait < step.mul_f64(1.5), "{wait:?} for step {step:?}");
            below |= wait < step;
            above |= wait > step;
        }
        assert!(below && above, "the jitter must spread both ways");
    }

    #[test]
    fn reset_returns_to_min() {
        let mut b = Backoff::new(MIN, MAX);
        for _ in 0..5 {
            b.next_delay();
        }
        assert!(b.step() > MIN);
        b.reset();
        assert_eq!(b.step(), MIN);
        assert!(b.next_delay() < MIN.mul_f64(1.5));
    }
}
