use std::time::SystemTime;

use tokio::time::Instant;

/// The store's clock: wall-clock time that advances with tokio's clock.
///
/// Expiry times go on the wire as timestamps, so they must be wall-clock time; but tests pause
/// and advance tokio's clock to check expiry without waiting. This clock reads the system time
/// once, when created, and from then on adds the time elapsed on tokio's monotonic clock, so it
/// follows `tokio::time::pause` and `advance`, and never goes backwards when the system clock is
/// stepped.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// The system time when the clock was created.
    base_system: SystemTime,
    /// tokio's instant when the clock was created.
    base_instant: Instant,
}

impl Clock {
    /// A clock that starts at the current system time.
    pub fn new() -> Self {
        Self {
            base_system: SystemTime::now(),
            base_instant: Instant::now(),
        }
    }

    /// The current time.
    pub fn now(&self) -> SystemTime {
        self.base_system + self.base_instant.elapsed()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_time() {
        let clock = Clock::new();
        let start = clock.now();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(
            clock.now().duration_since(start).unwrap(),
            Duration::from_secs(3600)
        );
    }
}
