//! The bound on orders in memory (`--max-orders-in-memory`).
//!
//! At the limit, settled orders are evicted before their retention (housekeeping under
//! pressure) and creates and cancels are held back in Kafka; both end once the orders in
//! memory are back under nine tenths of the limit. Results keep flowing, so the orders in
//! flight can finish (or time out) and make room. See the README, "Deploying and
//! scaling".

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::metrics::Metrics;
use super::{Loop, StepError};

impl Loop {
    pub(super) fn max_in_memory(&self) -> usize {
        usize::try_from(self.ctx.config.max_orders_in_memory).unwrap_or(usize::MAX)
    }

    /// Keeps the orders in memory under `--max-orders-in-memory` (see the module).
    pub(super) fn watch_memory(&mut self, in_memory: usize) -> Result<(), StepError> {
        let max = self.max_in_memory();
        let low = max - max / 10;
        if !self.pressure && in_memory >= max {
            info!(
                orders_in_memory = in_memory,
                max_orders_in_memory = max,
                "orders in memory at the limit: settled orders are evicted before their retention"
            );
            self.pressure = true;
        } else if self.pressure && in_memory <= low {
            self.pressure = false;
        }
        match self.intake_paused {
            Some(since) if in_memory <= low => {
                self.inputs.hold_intake(false)?;
                self.intake_paused = None;
                if std::mem::take(&mut self.pause_logged) {
                    info!(
                        orders_in_memory = in_memory,
                        paused_ms = since.elapsed().as_millis() as u64,
                        "intake resumed"
                    );
                }
            }
            None if in_memory >= max => self.pause_intake(in_memory)?,
            _ => {}
        }
        Ok(())
    }

    pub(super) fn pause_intake(&mut self, in_memory: usize) -> Result<(), StepError> {
        self.inputs.hold_intake(true)?;
        self.intake_paused = Some(Instant::now());
        self.pressure = true;
        Metrics::add(&self.ctx.metrics.intake_pauses, 1);
        self.pause_logged = self.intake_log_due();
        if self.pause_logged {
            warn!(
                orders_in_memory = in_memory,
                max_orders_in_memory = self.max_in_memory(),
                pauses = self.ctx.metrics.intake_pauses.load(Ordering::Relaxed),
                "intake paused: orders in memory reached --max-orders-in-memory; creates \
                 and cancels wait in Kafka until orders in flight finish"
            );
        }
        Ok(())
    }

    /// Whether a pause of the intake may be logged now (at most one every 10 s).
    fn intake_log_due(&mut self) -> bool {
        let due = self
            .intake_logged
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(10));
        if due {
            self.intake_logged = Some(Instant::now());
        }
        due
    }
}
