//! Builders and a small driver shared by the saga's tests.

use super::*;

/// A fixed "now" for tests: some time in 2025.
pub const T0: Millis = 1_750_000_000_000;

/// Distinct numbers per step, so a test shows which deadline it hit.
pub fn test_policy() -> Policy {
    Policy {
        inventory_timeout_ms: 1_000,
        payment_timeout_ms: 2_000,
        shipping_timeout_ms: 3_000,
        notification_timeout_ms: 4_000,
        compensation_timeout_ms: 5_000,
        max_attempts: 3,
        backoff_base_ms: 100,
        backoff_max_ms: 250,
        ..Policy::default()
    }
}

pub fn address() -> Address {
    Address {
        recipient: "Ada Lovelace".into(),
        street: "12 St James's Square".into(),
        city: "London".into(),
        postal_code: "SW1Y 4JH".into(),
        country: "GB".into(),
    }
}

/// A valid order: 2 × 1250 + 1 × 500 = 3000 EUR cents.
pub fn request(order_id: &str) -> OrderRequest {
    OrderRequest {
        order_id: order_id.into(),
        customer_id: "customer-7".into(),
        items: vec![
            Item {
                sku: "SKU-A".into(),
                quantity: 2,
                unit_price_minor: 1_250,
            },
            Item {
                sku: "SKU-B".into(),
                quantity: 1,
                unit_price_minor: 500,
            },
        ],
        total_minor: 3_000,
        currency: "EUR".into(),
        shipping_address: address(),
        created_at: T0 - 5,
    }
}

pub fn result_event(
    order_id: &str,
    command_id: &str,
    action: Action,
    outcome: Outcome,
    retriable: bool,
) -> Event {
    Event::Result(StepResult {
        order_id: order_id.into(),
        command_id: command_id.into(),
        action,
        outcome,
        reason: match outcome {
            Outcome::Success => None,
            Outcome::Failure => Some("downstream said no".into()),
        },
        retriable,
        produced_at: T0,
    })
}

pub fn cancel_event(order_id: &str, reason: &str) -> Event {
    Event::Cancel(CancelRequest {
        order_id: order_id.into(),
        reason: reason.into(),
        requested_at: T0,
    })
}

/// One order driven through `decide`, checking the version rule on every `Apply`.
pub struct Saga {
    pub policy: Policy,
    pub order_id: String,
    pub state: Option<OrderState>,
    pub now: Millis,
    /// Every command emitted so far.
    pub emitted: Vec<Command>,
}

impl Default for Saga {
    fn default() -> Self {
        Saga::new()
    }
}

impl Saga {
    pub fn new() -> Self {
        Saga {
            policy: test_policy(),
            order_id: "order-1".into(),
            state: None,
            now: T0,
            emitted: Vec::new(),
        }
    }

    /// Decides without applying.
    pub fn peek(&self, event: &Event) -> Decision {
        self.policy.decide(self.state.as_ref(), event, self.now)
    }

    /// Decides and applies.
    pub fn send(&mut self, event: Event) -> Decision {
        let decision = self.peek(&event);
        if let Decision::Apply { state, commands } = &decision {
            let expected = self.state.as_ref().map_or(1, |s| s.version + 1);
            assert_eq!(state.version, expected, "version must go up by exactly one");
            assert_eq!(state.updated_at, self.now);
            for c in commands {
                assert_eq!(c.issued_at, self.now);
                assert_eq!(c.command_id, command_id(&c.order_id, c.action, c.attempt));
            }
            self.state = Some(state.clone());
            self.emitted.extend(commands.iter().cloned());
        }
        decision
    }

    pub fn state(&self) -> &OrderState {
        self.state.as_ref().expect("the order exists")
    }

    pub fn status(&self) -> Status {
        self.state().status
    }

    pub fn create(&mut self) -> Decision {
        let r = request(&self.order_id);
        self.send(Event::Create(r))
    }

    /// The latest command of `action` whose result is awaited.
    pub fn awaited(&self, action: Action) -> IssuedCommand {
        self.state()
            .commands
            .iter()
            .rev()
            .find(|c| c.action == action && c.fate == Fate::Awaiting)
            .cloned()
            .unwrap_or_else(|| panic!("no {action:?} awaited in {:#?}", self.state()))
    }

    /// The latest command of `action` that timed out or was abandoned.
    pub fn abandoned(&self, action: Action) -> IssuedCommand {
        self.state()
            .commands
            .iter()
            .rev()
            .find(|c| c.action == action && matches!(c.fate, Fate::TimedOut | Fate::Abandoned))
            .cloned()
            .unwrap_or_else(|| panic!("no {action:?} abandoned in {:#?}", self.state()))
    }

    pub fn answer_id(
        &mut self,
        command_id: &str,
        action: Action,
        outcome: Outcome,
        retriable: bool,
    ) -> Decision {
        let e = result_event(&self.order_id, command_id, action, outcome, retriable);
        self.send(e)
    }

    pub fn answer(&mut self, action: Action, outcome: Outcome, retriable: bool) -> Decision {
        let id = self.awaited(action).command_id;
        self.answer_id(&id, action, outcome, retriable)
    }

    pub fn succeed(&mut self, action: Action) -> Decision {
        self.answer(action, Outcome::Success, false)
    }

    pub fn fail(&mut self, action: Action) -> Decision {
        self.answer(action, Outcome::Failure, false)
    }

    pub fn fail_retriable(&mut self, action: Action) -> Decision {
        self.answer(action, Outcome::Failure, true)
    }

    pub fn tick(&mut self) -> Decision {
        self.send(Event::Tick)
    }

    /// Moves the clock to the next deadline or retry time and ticks.
    pub fn expire(&mut self) -> Decision {
        self.now = self.state().next_deadline().expect("something is due");
        self.tick()
    }

    pub fn cancel(&mut self) -> Decision {
        let e = cancel_event(&self.order_id, "customer changed their mind");
        self.send(e)
    }

    /// Times out the open series of `action` until its last attempt is out.
    pub fn exhaust(&mut self, action: Action) {
        loop {
            let used = self
                .state()
                .forward
                .iter()
                .chain(self.state().compensations.iter())
                .filter(|t| t.action == action && t.phase.is_open())
                .map(Task::attempts_used)
                .max()
                .expect("an open series of the action");
            if used >= self.policy.attempts() {
                return;
            }
            self.expire(); // times out the attempt
            self.expire(); // fires the retry
        }
    }

    /// A fresh order driven along the happy path until it is in `status` (one of
    /// CREATED, RESERVED, PAID, SHIPPING_SCHEDULED, COMPLETED).
    pub fn reach(status: Status) -> Saga {
        let mut saga = Saga::new();
        saga.create();
        let path = [
            (Status::Created, Action::Reserve),
            (Status::Reserved, Action::Charge),
            (Status::Paid, Action::Schedule),
            (Status::ShippingScheduled, Action::Send),
        ];
        for (at, action) in path {
            if saga.status() == status {
                break;
            }
            assert_eq!(saga.status(), at);
            saga.succeed(action);
        }
        assert_eq!(
            saga.status(),
            status,
            "cannot reach {status:?} on the happy path"
        );
        saga
    }
}

/// The actions of a decision's commands.
pub fn actions(decision: &Decision) -> Vec<Action> {
    decision.commands().iter().map(|c| c.action).collect()
}
