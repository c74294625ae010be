//! Shutdown signalling: one [`Trigger`] held by whoever decides the node stops (the
//! server, the coordinator's dashboard), and a [`Shutdown`] per task that must stop.
//!
//! A leaf module, in the spirit of mini-redis's `shutdown.rs`: the server and every
//! service it composes (API watch streams, outbox delivery, webhooks, health, dashboard)
//! depend on it, and it depends on nothing of theirs, so no service imports `server`.
//! It wraps a `watch` channel rather than a broadcast so a task that subscribes after the
//! trigger still sees it, and a dropped trigger counts as shutdown (its owner is gone).

use tokio::sync::watch;

/// Listens for the shutdown signal. Cheap to clone; each task keeps its own.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// Wraps the receiving end of a `watch` channel that flips to `true` on shutdown.
    pub fn new(rx: watch::Receiver<bool>) -> Shutdown {
        Shutdown { rx }
    }

    /// Whether shutdown has been triggered.
    pub fn is_shutdown(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown is triggered (at once if it already was), or when the
    /// trigger is dropped.
    pub async fn recv(&mut self) {
        let _ = self.rx.wait_for(|stopping| *stopping).await;
    }
}

impl From<watch::Receiver<bool>> for Shutdown {
    fn from(rx: watch::Receiver<bool>) -> Shutdown {
        Shutdown::new(rx)
    }
}

/// Triggers shutdown for every [`Shutdown`] subscribed to it.
#[derive(Debug)]
pub struct Trigger {
    tx: watch::Sender<bool>,
}

impl Trigger {
    /// A new trigger and its first listener.
    pub fn new() -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Trigger { tx }, Shutdown::new(rx))
    }

    /// Signals shutdown; idempotent.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Another listener.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown::new(self.tx.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn recv_resolves_after_trigger_and_for_late_subscribers() {
        let (trigger, mut first) = Trigger::new();
        assert!(!first.is_shutdown());
        trigger.trigger();
        first.recv().await;
        assert!(first.is_shutdown());
        let mut late = trigger.subscribe();
        assert!(late.is_shutdown());
        late.recv().await;
    }

    #[tokio::test]
    async fn a_dropped_trigger_ends_the_wait() {
        let (trigger, mut shutdown) = Trigger::new();
        drop(trigger);
        shutdown.recv().await;
        assert!(!shutdown.is_shutdown(), "never triggered, only abandoned");
    }

    #[tokio::test]
    async fn recv_waits_until_triggered() {
        let (trigger, mut shutdown) = Trigger::new();
        let wait = tokio::time::timeout(std::time::Duration::from_millis(20), shutdown.recv()).await;
        assert!(wait.is_err(), "must not resolve before the trigger");
        trigger.trigger();
        shutdown.recv().await;
    }
}
