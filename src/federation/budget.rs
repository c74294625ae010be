//! The oracle budget: how many blind operations a peer may ask for in a window.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A fixed-window budget of blind operations per peer.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    window: Duration,
    windows: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Budget {
    pub fn new(limit: u64, window: Duration) -> Budget {
        Budget { limit, window, windows: Mutex::new(HashMap::new()) }
    }

    /// Takes `n` from the peer's budget for this window; false when that would exceed it.
    pub fn take(&self, peer: &str, n: u64) -> bool {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let window = windows.entry(peer.to_owned()).or_insert((now, 0));
        if now.duration_since(window.0) >= self.window {
            *window = (now, 0);
        }
        if window.1 + n > self.limit {
            return false;
        }
        window.1 += n;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invariant_2_a_peer_over_its_budget_is_refused_and_peers_do_not_share_one() {
        let budget = Budget::new(10, Duration::from_secs(3600));
        assert!(budget.take("utrecht", 6));
        assert!(!budget.take("utrecht", 5), "6 + 5 is over 10");
        assert!(budget.take("utrecht", 4), "a refused request takes nothing");
        assert!(!budget.take("utrecht", 1));
        assert!(budget.take("zwolle", 10));
    }

    #[test]
    fn a_new_window_starts_afresh() {
        let budget = Budget::new(1, Duration::from_millis(1));
        assert!(budget.take("utrecht", 1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(budget.take("utrecht", 1));
    }
}
