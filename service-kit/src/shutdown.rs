//! A shutdown signal in two phases. Draining: the server stopped accepting, and
//! long-lived responses (live streams) must end so in-flight requests can finish.
//! Triggered: background tasks (delivery loops, outbox relay, catch-up) stop; the
//! application owns the sender and waits for every task after triggering it.

use tokio::sync::watch;

#[derive(Debug)]
pub struct Shutdown(watch::Sender<Phase>);

#[derive(Debug, Clone)]
pub struct ShutdownSignal(watch::Receiver<Phase>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    Draining,
    Stopped,
}

impl Shutdown {
    pub fn new() -> Self {
        Self(watch::channel(Phase::Running).0)
    }

    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal(self.0.subscribe())
    }

    /// Ends live streams; background tasks keep running.
    pub fn drain(&self) {
        self.0.send_if_modified(|phase| {
            let changed = *phase < Phase::Draining;
            *phase = (*phase).max(Phase::Draining);
            changed
        });
    }

    pub fn trigger(&self) {
        self.0.send_replace(Phase::Stopped);
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownSignal {
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow() == Phase::Stopped
    }

    /// Resolves once shutdown is triggered (or its owner is gone).
    pub async fn triggered(&mut self) {
        let _ = self.0.wait_for(|phase| *phase == Phase::Stopped).await;
    }

    /// Resolves once the server stops accepting (or later phases, or its owner is gone).
    pub async fn draining(&mut self) {
        let _ = self.0.wait_for(|phase| *phase >= Phase::Draining).await;
    }

    /// Sleeps for `duration` unless shutdown comes first; true if it was shutdown.
    pub async fn sleep(&mut self, duration: std::time::Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(duration) => self.is_triggered(),
            _ = self.triggered() => true,
        }
    }
}
