//! When watch sweeps stale namespace directories: at most once a minute, on a clock
//! watch keeps.

use anyhow::Result;
use std::time::{Duration, Instant};

/// How long watch waits between two sweeps of stale namespace directories (it opens
/// its store on every pass that is not quiet).
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// When watch last swept: [`SweepClock::sweep`] runs
/// [`sweep_stale`](crate::state::sweep_stale) at most once every 60 s. A value watch
/// keeps, not process-wide state.
#[derive(Debug, Default)]
pub struct SweepClock {
    pub(super) last: Option<Instant>,
}

impl SweepClock {
    /// Sweeps unless it did less than 60 s ago (then 0 removed).
    pub fn sweep(&mut self) -> Result<usize> {
        let now = Instant::now();
        if !self.due(now) {
            return Ok(0);
        }
        self.last = Some(now);
        crate::state::sweep_stale()
    }

    /// Whether a sweep at `now` is due.
    pub(super) fn due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY)
    }
}
