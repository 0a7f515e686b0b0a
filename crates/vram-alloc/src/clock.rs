//! Where the manager reads time. Wall time for what it records (seal times, audit timestamps,
//! attestations); a monotonic reading for what it measures (seal age), so that a wall clock
//! stepped back or forward (NTP, an operator, a restored VM) neither expires a seal early nor
//! keeps an old one alive. Tests inject a [`ManualClock`] (feature `test-utils`).

use std::fmt::Debug;
use std::time::{Duration, Instant, SystemTime};

/// The manager's two clocks.
pub(crate) trait Clock: Send + Sync + Debug {
    /// Wall time, for records.
    fn wall(&self) -> SystemTime;
    /// Time since a fixed origin that never goes back, for ages.
    fn monotonic(&self) -> Duration;
}

/// The system's clocks.
#[derive(Debug)]
pub(crate) struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub(crate) fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }

    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
}

#[cfg(feature = "test-utils")]
pub use manual::ManualClock;

#[cfg(feature = "test-utils")]
mod manual {
    use std::sync::Mutex;
    use std::time::{Duration, SystemTime};

    use crate::sync::lock;

    /// A clock tests set by hand: the wall clock can be stepped anywhere (back before the
    /// seal, years ahead), the monotonic one only advanced.
    #[derive(Debug)]
    pub struct ManualClock {
        state: Mutex<(SystemTime, Duration)>,
    }

    impl ManualClock {
        /// A clock whose wall time is `wall` and whose monotonic reading starts at zero.
        #[must_use]
        pub fn new(wall: SystemTime) -> Self {
            Self {
                state: Mutex::new((wall, Duration::ZERO)),
            }
        }

        /// Steps the wall clock to `wall` (forwards or backwards); the monotonic one is not
        /// touched, as when NTP or an operator sets the time.
        pub fn set_wall(&self, wall: SystemTime) {
            lock(&self.state).0 = wall;
        }

        /// Lets `by` pass on both clocks (the wall clock saturates at its limits).
        pub fn advance(&self, by: Duration) {
            let mut state = lock(&self.state);
            state.0 = state.0.checked_add(by).unwrap_or(state.0);
            state.1 = state.1.saturating_add(by);
        }
    }

    impl super::Clock for ManualClock {
        fn wall(&self) -> SystemTime {
            lock(&self.state).0
        }

        fn monotonic(&self) -> Duration {
            lock(&self.state).1
        }
    }
}
