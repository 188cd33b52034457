//! One throttle for warnings that could repeat once per call: an outage, a
//! full counter store, a listener out of file descriptors. The first event
//! of an interval is logged with the number of events the previous logged
//! line did not show; the rest are counted.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets one event through per interval, counting the rest.
#[derive(Debug)]
pub struct LogEvery {
    every_ms: u64,
    /// The interval of the last event let through, plus one (0: none yet).
    last: AtomicU64,
    /// Events held back since the last one let through.
    held: AtomicU64,
}

impl LogEvery {
    /// At most one event through per `every` (at least a millisecond).
    pub const fn new(every: Duration) -> Self {
        let ms = every.as_millis() as u64;
        Self {
            every_ms: if ms == 0 { 1 } else { ms },
            last: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(held)` when this event should be logged, `held` being the
    /// number held back since the last one logged; `None` when it is held
    /// back (and counted).
    pub fn ready(&self) -> Option<u64> {
        self.ready_at(since_start())
    }

    fn ready_at(&self, now: Duration) -> Option<u64> {
        let slot = now.as_millis() as u64 / self.every_ms + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != slot
            && self
                .last
                .compare_exchange(last, slot, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.held.swap(0, Ordering::Relaxed))
        } else {
            self.held.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// The interval, for the log line that says how often it is written.
    pub fn every(&self) -> Duration {
        Duration::from_millis(self.every_ms)
    }
}

/// A monotonic clock shared by every throttle.
fn since_start() -> Duration {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_interval_and_the_rest_counted() {
        let throttle = LogEvery::new(Duration::from_secs(10));
        let at = |s| Duration::from_secs(s);
        assert_eq!(throttle.ready_at(at(0)), Some(0));
        assert_eq!(throttle.ready_at(at(1)), None);
        assert_eq!(throttle.ready_at(at(9)), None);
        assert_eq!(throttle.ready_at(at(10)), Some(2));
        assert_eq!(throttle.ready_at(at(11)), None);
        assert_eq!(throttle.ready_at(at(45)), Some(1));
    }

    #[test]
    fn many_threads_let_one_through() {
        let throttle = std::sync::Arc::new(LogEvery::new(Duration::from_secs(3600)));
        let through: u64 = (0..8)
            .map(|_| {
                let t = throttle.clone();
                std::thread::spawn(move || (0..1000).filter(|_| t.ready().is_some()).count() as u64)
            })
            .map(|h| h.join().expect("no panic"))
            .sum();
        assert!(
            through <= 2,
            "one per interval (two if the hour turned), got {through}"
        );
        assert!(through >= 1);
    }
}
