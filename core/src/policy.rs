//! The tunable numbers of the saga: deadlines, retries, backoff and currencies.

use serde::{Deserialize, Serialize};

use super::model::{Action, Millis};

/// How patient the saga is, and what it accepts.
///
/// All durations are milliseconds. Every field has a default (see [`Policy::default`]),
/// so a partial configuration deserializes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Deadline of one inventory `RESERVE` command.
    pub inventory_timeout_ms: Millis,
    /// Deadline of one payment `CHARGE` command.
    pub payment_timeout_ms: Millis,
    /// Deadline of one shipping `SCHEDULE` command.
    pub shipping_timeout_ms: Millis,
    /// Deadline of one notification `SEND` command.
    pub notification_timeout_ms: Millis,
    /// Deadline of one compensation command (`RELEASE`, `REFUND`).
    pub compensation_timeout_ms: Millis,
    /// Attempts of one command series (a step or a compensation) before it fails for good.
    /// A retriable failure or a timeout with attempts left is retried; `0` counts as `1`.
    pub max_attempts: u32,
    /// Delay before the second attempt; it doubles for each further attempt.
    pub backoff_base_ms: Millis,
    /// Upper bound of the retry delay.
    pub backoff_max_ms: Millis,
    /// ISO 4217 codes accepted on create, compared exactly (upper case).
    pub supported_currencies: Vec<String>,
    /// How long a cancel or result that arrived before its order's create is held for
    /// the create before it is dead-lettered (see [`super::early`]).
    pub early_grace_ms: Millis,
    /// Cart lines an order may have; a larger order is created `FAILED`.
    pub max_lines: usize,
    /// Characters any text of an order (SKU, customer id, address field) may have.
    pub max_text_chars: usize,
}

impl Default for Policy {
    /// 30 s per command, 3 attempts, backoff 200 ms doubling up to 30 s, the common
    /// currencies of a European shop plus USD, CAD, AUD and JPY, 5 minutes of grace for
    /// events that arrive before their order, and at most 500 cart lines and 200
    /// characters per text (so that no record about an order outgrows a broker's 1 MB).
    fn default() -> Self {
        Policy {
            inventory_timeout_ms: 30_000,
            payment_timeout_ms: 30_000,
            shipping_timeout_ms: 30_000,
            notification_timeout_ms: 30_000,
            compensation_timeout_ms: 30_000,
            max_attempts: 3,
            backoff_base_ms: 200,
            backoff_max_ms: 30_000,
            supported_currencies: [
                "EUR", "USD", "GBP", "CHF", "SEK", "NOK", "DKK", "PLN", "CZK", "HUF", "CAD", "AUD",
                "JPY",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            early_grace_ms: 300_000,
            max_lines: 500,
            max_text_chars: 200,
        }
    }
}

impl Policy {
    /// The policy of the processor's command-line settings: one deadline for every command,
    /// `max_attempts`, and a backoff that starts at `retry_backoff_ms` and is capped at
    /// 30 s (or at `retry_backoff_ms` if that is larger). Currencies are the defaults.
    pub fn from_settings(
        step_timeout_ms: Millis,
        max_attempts: u32,
        retry_backoff_ms: Millis,
    ) -> Self {
        let default = Policy::default();
        Policy {
            inventory_timeout_ms: step_timeout_ms,
            payment_timeout_ms: step_timeout_ms,
            shipping_timeout_ms: step_timeout_ms,
            notification_timeout_ms: step_timeout_ms,
            compensation_timeout_ms: step_timeout_ms,
            max_attempts,
            backoff_base_ms: retry_backoff_ms,
            backoff_max_ms: default.backoff_max_ms.max(retry_backoff_ms),
            supported_currencies: default.supported_currencies,
            early_grace_ms: default.early_grace_ms,
            max_lines: default.max_lines,
            max_text_chars: default.max_text_chars,
        }
    }

    /// The deadline of one command of `action`, never negative.
    pub fn timeout_ms(&self, action: Action) -> Millis {
        let ms = match action {
            Action::Reserve => self.inventory_timeout_ms,
            Action::Charge => self.payment_timeout_ms,
            Action::Schedule => self.shipping_timeout_ms,
            Action::Send => self.notification_timeout_ms,
            Action::Release | Action::Refund => self.compensation_timeout_ms,
        };
        ms.max(0)
    }

    /// Attempts allowed per command series, at least 1.
    pub fn attempts(&self) -> u32 {
        self.max_attempts.max(1)
    }

    /// The delay before retrying after attempt number `failed` (1-based within its series)
    /// failed: `base · 2^(failed-1)`, capped at `backoff_max_ms`, never negative.
    pub fn backoff_ms(&self, failed: u32) -> Millis {
        let base = self.backoff_base_ms.max(0);
        let cap = self.backoff_max_ms.max(0);
        let shift = failed.saturating_sub(1).min(62);
        let factor = 1_i64 << shift;
        base.saturating_mul(factor).min(cap)
    }

    /// Whether `currency` is accepted.
    pub fn supports_currency(&self, currency: &str) -> bool {
        self.supported_currencies.iter().any(|c| c == currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_attempt_and_is_capped() {
        let p = Policy {
            backoff_base_ms: 100,
            backoff_max_ms: 1_000,
            ..Policy::default()
        };
        assert_eq!(p.backoff_ms(1), 100);
        assert_eq!(p.backoff_ms(2), 200);
        assert_eq!(p.backoff_ms(3), 400);
        assert_eq!(p.backoff_ms(5), 1_000);
        assert_eq!(p.backoff_ms(u32::MAX), 1_000);
    }

    #[test]
    fn a_partial_policy_deserializes_with_defaults() {
        let p: Policy = match serde_json::from_str(r#"{"max_attempts": 5}"#) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(p.max_attempts, 5);
        assert_eq!(p.payment_timeout_ms, Policy::default().payment_timeout_ms);
    }

    #[test]
    fn settings_set_every_deadline_and_the_backoff() {
        let p = Policy::from_settings(1_000, 4, 50);
        for a in Action::ALL {
            assert_eq!(p.timeout_ms(a), 1_000);
        }
        assert_eq!(p.attempts(), 4);
        assert_eq!(p.backoff_ms(1), 50);
        assert_eq!(Policy::from_settings(10, 0, 1).attempts(), 1);
    }
}
