//! Noticing that the whole process was frozen (SIGSTOP, a paused VM) for longer than the
//! consumer's session timeout.
//!
//! A frozen process sends no heartbeats, so the group drops it and another instance,
//! possibly one started with the same instance id, takes its partitions. librdkafka learns
//! this only after waking, from its next heartbeat, seconds later; meanwhile the loop
//! would go on with a batch and state that are no longer its own. A watch thread that
//! ticks every 100 ms sees the gap in the monotonic clock at once, so the loop can stop
//! before its next transactional call. A long step of the loop itself (a restore, a slow
//! commit) is not a freeze: the watch thread keeps ticking through it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(100);

/// Set once a freeze longer than the limit was seen; never cleared.
#[derive(Clone)]
pub struct Frozen {
    seen: Arc<AtomicBool>,
    /// When the watch last ticked, in nanoseconds since `base`.
    last_tick: Arc<AtomicU64>,
    base: Instant,
    limit: Duration,
}

impl Frozen {
    fn new(limit: Duration) -> Self {
        Frozen {
            seen: Arc::default(),
            last_tick: Arc::default(),
            base: Instant::now(),
            limit,
        }
    }

    fn since_base(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether the process stood still past the limit. Also asks the clock itself: just
    /// after waking, the caller's thread may run before the watch thread has ticked.
    pub fn seen(&self) -> bool {
        if self.seen.load(Ordering::SeqCst) {
            return true;
        }
        let last = Duration::from_nanos(self.last_tick.load(Ordering::SeqCst));
        let now = Instant::now().saturating_duration_since(self.base);
        gap_exceeds(now.saturating_sub(last), self.limit)
    }
}

/// Starts the watch thread; it ends when `stop` is set or every `Frozen` handed out is
/// dropped (the loop it watched ended, and a new loop started in-process has a watch of
/// its own). Returns `None` if the thread cannot be started (the processor then relies on
/// librdkafka alone).
pub fn watch(limit: Duration, stop: Arc<AtomicBool>) -> Option<Frozen> {
    let frozen = Frozen::new(limit);
    let flag = frozen.clone();
    thread::Builder::new()
        .name("freeze-watch".into())
        .spawn(move || {
            let mut last = Instant::now();
            // The thread's own handle is the last one once the loop's are dropped.
            while !stop.load(Ordering::SeqCst) && Arc::strong_count(&flag.seen) > 1 {
                thread::sleep(TICK);
                let now = Instant::now();
                if gap_exceeds(now.saturating_duration_since(last), limit) {
                    tracing::warn!(
                        frozen_ms = now.saturating_duration_since(last).as_millis() as u64,
                        limit_ms = limit.as_millis() as u64,
                        "the process was frozen past its session timeout"
                    );
                    flag.seen.store(true, Ordering::SeqCst);
                }
                flag.last_tick.store(flag.since_base(now), Ordering::SeqCst);
                last = now;
            }
        })
        .ok()?;
    Some(frozen)
}

/// Whether a tick's gap means a freeze: longer than the limit, less the tick itself.
fn gap_exceeds(gap: Duration, limit: Duration) -> bool {
    gap.saturating_sub(TICK) > limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freeze_is_seen_by_the_caller_even_before_the_watch_ticks() {
        let frozen = Frozen::new(Duration::from_millis(50));
        frozen
            .last_tick
            .store(frozen.since_base(Instant::now()), Ordering::SeqCst);
        assert!(!frozen.seen());
        // No tick for longer than the limit plus a tick, as after a SIGSTOP.
        thread::sleep(Duration::from_millis(200));
        assert!(frozen.seen());
    }

    #[test]
    fn the_watch_ends_once_its_loop_drops_it() {
        let stop = Arc::new(AtomicBool::new(false));
        let frozen = watch(Duration::from_secs(10), stop).expect("watch thread");
        let seen = Arc::downgrade(&frozen.seen);
        drop(frozen);
        // The thread notices within a tick and drops its own handle.
        thread::sleep(TICK * 3);
        assert!(
            seen.upgrade().is_none(),
            "the watch thread is still running"
        );
    }

    #[test]
    fn a_gap_counts_as_a_freeze_only_beyond_the_limit_plus_a_tick() {
        let limit = Duration::from_secs(10);
        assert!(!gap_exceeds(Duration::from_millis(100), limit));
        assert!(!gap_exceeds(Duration::from_millis(10_100), limit));
        assert!(gap_exceeds(Duration::from_millis(10_101), limit));
        assert!(gap_exceeds(Duration::from_secs(15), limit));
    }
}
