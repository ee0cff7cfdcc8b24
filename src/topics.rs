//! Topic names of the saga, fixed by the contracts other teams build against.

use crate::saga::{Action, Step};

pub const ORDER_CREATE_REQUEST: &str = "order-create-request";
pub const ORDER_CANCEL_REQUEST: &str = "order-cancel-request";
pub const INVENTORY_RESERVE_REQUEST: &str = "inventory-reserve-request";
pub const INVENTORY_RESERVE_RESULT: &str = "inventory-reserve-result";
pub const PAYMENT_PROCESS_REQUEST: &str = "payment-process-request";
pub const PAYMENT_PROCESS_RESULT: &str = "payment-process-result";
pub const SHIPPING_SCHEDULE_REQUEST: &str = "shipping-schedule-request";
pub const SHIPPING_SCHEDULE_RESULT: &str = "shipping-schedule-result";
pub const NOTIFICATION_SEND_REQUEST: &str = "notification-send-request";
pub const NOTIFICATION_SEND_RESULT: &str = "notification-send-result";
pub const ORDER_STATUS: &str = "order-status";
pub const ORDER_DLQ: &str = "order-dlq";
/// The processor's own compacted changelog of events held before their order's create
/// (not a contract: no other service reads or writes it).
pub const ORDER_EARLY_EVENTS: &str = "order-early-events";
/// The processor's own compacted changelog of order states and finished-order records,
/// which restores read (not a contract: `order-status` is the public record).
pub const ORDER_STATE: &str = "order-state";

/// The command topic of a downstream service.
pub fn request_topic(step: Step) -> &'static str {
    match step {
        Step::Inventory => INVENTORY_RESERVE_REQUEST,
        Step::Payment => PAYMENT_PROCESS_REQUEST,
        Step::Shipping => SHIPPING_SCHEDULE_REQUEST,
        Step::Notification => NOTIFICATION_SEND_REQUEST,
    }
}

/// The result topic of a downstream service.
pub fn result_topic(step: Step) -> &'static str {
    match step {
        Step::Inventory => INVENTORY_RESERVE_RESULT,
        Step::Payment => PAYMENT_PROCESS_RESULT,
        Step::Shipping => SHIPPING_SCHEDULE_RESULT,
        Step::Notification => NOTIFICATION_SEND_RESULT,
    }
}

/// The step whose results arrive on `topic`, if it is a result topic.
pub fn step_of_result_topic(topic: &str) -> Option<Step> {
    Step::ALL.into_iter().find(|s| result_topic(*s) == topic)
}

/// The command topic that carries `action`.
pub fn command_topic(action: Action) -> &'static str {
    request_topic(action.step())
}

/// Every topic the processor consumes. They must share one partition count.
pub const PROCESSOR_INPUTS: [&str; 6] = [
    ORDER_CREATE_REQUEST,
    ORDER_CANCEL_REQUEST,
    INVENTORY_RESERVE_RESULT,
    PAYMENT_PROCESS_RESULT,
    SHIPPING_SCHEDULE_RESULT,
    NOTIFICATION_SEND_RESULT,
];

/// Every topic of the saga, inputs and outputs; the private state changelog last.
pub const ALL: [&str; 14] = [
    ORDER_CREATE_REQUEST,
    ORDER_CANCEL_REQUEST,
    INVENTORY_RESERVE_REQUEST,
    INVENTORY_RESERVE_RESULT,
    PAYMENT_PROCESS_REQUEST,
    PAYMENT_PROCESS_RESULT,
    SHIPPING_SCHEDULE_REQUEST,
    SHIPPING_SCHEDULE_RESULT,
    NOTIFICATION_SEND_REQUEST,
    NOTIFICATION_SEND_RESULT,
    ORDER_STATUS,
    ORDER_DLQ,
    ORDER_EARLY_EVENTS,
    ORDER_STATE,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_has_distinct_request_and_result_topics() {
        for step in Step::ALL {
            assert_ne!(request_topic(step), result_topic(step));
            assert_eq!(step_of_result_topic(result_topic(step)), Some(step));
            assert_eq!(step_of_result_topic(request_topic(step)), None);
        }
    }
}

/// The topic names of one deployment: the fixed names behind an optional prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        Topics {
            prefix: prefix.to_string(),
        }
    }

    /// The deployed name of a fixed topic name such as [`ORDER_STATUS`].
    pub fn name(&self, base: &str) -> String {
        format!("{}{}", self.prefix, base)
    }

    /// The fixed name behind a deployed topic name, if it is one of ours.
    pub fn base<'a>(&self, deployed: &'a str) -> Option<&'a str> {
        deployed
            .strip_prefix(self.prefix.as_str())
            .filter(|b| ALL.contains(b))
    }

    pub fn inputs(&self) -> Vec<String> {
        PROCESSOR_INPUTS.iter().map(|t| self.name(t)).collect()
    }

    pub fn all(&self) -> Vec<String> {
        ALL.iter().map(|t| self.name(t)).collect()
    }
}

#[cfg(test)]
mod prefix_tests {
    use super::*;

    #[test]
    fn a_prefixed_name_maps_back_to_its_fixed_name() {
        let t = Topics::new("test-1-");
        assert_eq!(t.name(ORDER_STATUS), "test-1-order-status");
        assert_eq!(t.base("test-1-order-status"), Some(ORDER_STATUS));
        assert_eq!(t.base("order-status"), None);
        assert_eq!(t.base("test-1-unknown"), None);
        assert_eq!(Topics::new("").base(ORDER_DLQ), Some(ORDER_DLQ));
    }
}
