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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(100);

/// Set once a freeze longer than the limit was seen; never cleared.
#[derive(Clone, Default)]
pub struct Frozen(Arc<AtomicBool>);

impl Frozen {
    pub fn seen(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Starts the watch thread; it ends when `stop` is set. Returns `None` if the thread
/// cannot be started (the processor then relies on librdkafka alone).
pub fn watch(limit: Duration, stop: Arc<AtomicBool>) -> Option<Frozen> {
    let frozen = Frozen::default();
    let flag = frozen.clone();
    thread::Builder::new()
        .name("freeze-watch".into())
        .spawn(move || {
            let mut last = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                thread::sleep(TICK);
                let now = Instant::now();
                if gap_exceeds(now.saturating_duration_since(last), limit) {
                    tracing::warn!(
                        frozen_ms = now.saturating_duration_since(last).as_millis() as u64,
                        limit_ms = limit.as_millis() as u64,
                        "the process was frozen past its session timeout"
                    );
                    flag.0.store(true, Ordering::SeqCst);
                }
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
    fn a_gap_counts_as_a_freeze_only_beyond_the_limit_plus_a_tick() {
        let limit = Duration::from_secs(10);
        assert!(!gap_exceeds(Duration::from_millis(100), limit));
        assert!(!gap_exceeds(Duration::from_millis(10_100), limit));
        assert!(gap_exceeds(Duration::from_millis(10_101), limit));
        assert!(gap_exceeds(Duration::from_secs(15), limit));
    }
}
