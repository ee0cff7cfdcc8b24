//! order-saga-core: the order saga's rules, pure decision logic with no I/O.
//!
//! # Layout
//!
//! The bottom crate of the workspace: the service (`order-saga`, which re-exports this
//! crate as `order_saga::saga`) and, through it, the tools build on it; it depends on
//! neither. Its own crate so that purity is enforced by the manifest: with only `serde`
//! and `uuid` to use, no rule can open a socket, await or read the clock.
//!
//! The core is [`decide()`] (or [`Policy::decide`]): given an order's current state (if
//! any), one event and the current time, it returns a [`Decision`]: apply a new
//! [`OrderState`] and emit [`Command`]s, ignore the event, or reject it to the dead-letter
//! topic. It reads no clock, touches no network and imports nothing from tokio, rdkafka
//! or tokio-postgres, so every rule can be tested without a broker.
//!
//! - [`model`]: the vocabulary (statuses, steps, actions, events, commands).
//! - [`state`]: the per-order state, the changelog record of the saga.
//! - [`policy`]: deadlines, retries, backoff and currencies.
//! - [`validate`]: cart validation of a new order.
//! - [`ids`]: deterministic command ids.
//! - [`early`]: cancels and results that arrive before their order's create, held until
//!   it comes or a grace period runs out.
//! - [`finished`]: what is remembered of an order after its state is evicted, and the
//!   rules for events about it (a repeated create starts no second saga).
//! - [`decide`](mod@decide): the transition rules; its module docs record the decisions
//!   the contract leaves open (timeouts are retried, late results, manual action).
//!
//! The transition table in README.md (between the `saga-table` markers) is checked
//! against this code by a test.

pub mod decide;
pub mod early;
pub mod finished;
pub mod ids;
pub mod model;
pub mod policy;
pub mod state;
pub mod validate;

pub use decide::{decide, Decision, IgnoreReason, RejectReason, MANUAL_ACTION_NEEDED};
pub use early::{Early, EarlyDecision, EarlyEvent, Held, Origin, Released};
pub use finished::{finished_key, Finished};
pub use ids::{command_id, COMMAND_ID_NAMESPACE};
pub use model::*;
pub use policy::Policy;
pub use state::{CancelRefusal, Fate, IssuedCommand, OrderState, Phase, StatusTime, Task};
pub use validate::{validate_order, InvalidOrder};

#[cfg(test)]
mod model_test;
#[cfg(test)]
mod table_test;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
