//! Realistic records: sample orders, their happy path through the real saga, and the real
//! wire encodings of every record the saga reads and writes for one order.

use std::sync::Arc;

use anyhow::{bail, Context as _};

use order_saga::contracts::convert;
use order_saga::contracts::records::{OrderCreate, StepResultRecord};
use order_saga::contracts::Codec;
use order_saga::saga::{
    Action, Command, Decision, Event, Millis, OrderRequest, OrderState, Outcome, Policy, StepResult,
};
use order_saga::topics;
use order_saga_tools::load::{sample_order, Rng};

/// The forward actions in saga order.
pub const FORWARD: [Action; 4] = [
    Action::Reserve,
    Action::Charge,
    Action::Schedule,
    Action::Send,
];

/// A sample order whose customer id names the run, so its rows can be told apart.
pub fn order(rng: &mut Rng, run_id: &str, now: Millis) -> OrderRequest {
    let mut o = sample_order(rng, now);
    o.customer_id = format!("bench-{run_id}-{}", o.customer_id);
    o
}

/// One step of an order's happy path: the state after it and the commands it emitted.
pub struct Step {
    pub state: OrderState,
    pub commands: Vec<Command>,
}

/// Drives `order` through the saga's own `decide` on the happy path: create, then a
/// SUCCESS for each of RESERVE, CHARGE, SCHEDULE, SEND. Five steps, the last COMPLETED.
pub fn happy_path(policy: &Policy, order: &OrderRequest, now: Millis) -> anyhow::Result<Vec<Step>> {
    let mut steps = Vec::with_capacity(5);
    let mut state: Option<OrderState> = None;
    let mut event = Event::Create(order.clone());
    for (i, action) in std::iter::once(None).chain(FORWARD.map(Some)).enumerate() {
        if let Some(action) = action {
            let Some(awaited) = steps.last().and_then(|s: &Step| s.commands.first()) else {
                bail!("step {i}: no command to answer for {action:?}");
            };
            event = Event::Result(StepResult {
                order_id: order.order_id.clone(),
                command_id: awaited.command_id.clone(),
                action,
                outcome: Outcome::Success,
                reason: None,
                retriable: false,
                produced_at: now,
            });
        }
        match policy.decide(state.as_ref(), &event, now + i as Millis) {
            Decision::Apply {
                state: next,
                commands,
            } => {
                state = Some(next.clone());
                steps.push(Step {
                    state: next,
                    commands,
                });
            }
            other => bail!("happy path step {i} did not apply: {other:?}"),
        }
    }
    Ok(steps)
}

/// The five input records of one order as the saga reads them: the create and the four
/// results, each as (fixed topic name, order id, wire bytes).
pub async fn input_records(
    codec: &Codec,
    policy: &Policy,
    order: &OrderRequest,
    now: Millis,
) -> anyhow::Result<Vec<(&'static str, Vec<u8>)>> {
    let steps = happy_path(policy, order, now)?;
    let mut out = Vec::with_capacity(5);
    let create = codec
        .encode(topics::ORDER_CREATE_REQUEST, &OrderCreate::from(order))
        .await
        .context("encoding a create")?;
    out.push((topics::ORDER_CREATE_REQUEST, create));
    for (step, action) in steps.iter().zip(FORWARD) {
        let Some(cmd) = step.commands.first() else {
            bail!("no command for {action:?}")
        };
        let result = StepResult {
            order_id: order.order_id.clone(),
            command_id: cmd.command_id.clone(),
            action,
            outcome: Outcome::Success,
            reason: None,
            retriable: false,
            produced_at: now,
        };
        let topic = topics::result_topic(action.step());
        let bytes = codec
            .encode(topic, &StepResultRecord::from(&result))
            .await
            .context("encoding a result")?;
        out.push((topic, bytes));
    }
    Ok(out)
}

/// What the saga writes for one input record, by stage (0 = create, 1..=4 = the results of
/// RESERVE, CHARGE, SCHEDULE, SEND): the order-status record and, for stages 0 to 3, the
/// command to the next service. Real encodings of one sample order.
pub struct OutputTemplates {
    pub status: Vec<Arc<[u8]>>,
    /// (fixed command topic, bytes) for stages 0..=3.
    pub command: Vec<(&'static str, Arc<[u8]>)>,
}

impl OutputTemplates {
    pub async fn build(
        codec: &Codec,
        policy: &Policy,
        order: &OrderRequest,
        now: Millis,
    ) -> anyhow::Result<Self> {
        let steps = happy_path(policy, order, now)?;
        let mut status = Vec::new();
        let mut command = Vec::new();
        for step in &steps {
            let bytes = convert::encode_status(codec, &step.state)
                .await
                .context("encoding a status")?;
            status.push(Arc::from(bytes));
            if let Some(cmd) = step.commands.first() {
                let bytes = convert::encode_command(codec, cmd, &step.state)
                    .await
                    .context("encoding a command")?;
                command.push((topics::command_topic(cmd.action), Arc::from(bytes)));
            }
        }
        if status.len() != 5 || command.len() != 4 {
            bail!(
                "happy path gave {} states and {} commands, expected 5 and 4",
                status.len(),
                command.len()
            );
        }
        Ok(OutputTemplates { status, command })
    }

    /// Average bytes of the records written per order (5 statuses and 4 commands).
    pub fn bytes_per_order(&self) -> usize {
        self.status.iter().map(|s| s.len()).sum::<usize>()
            + self.command.iter().map(|(_, c)| c.len()).sum::<usize>()
    }
}

/// The stage of a record of the fixed input topic `base`.
pub fn stage_of(base: &str) -> Option<usize> {
    if base == topics::ORDER_CREATE_REQUEST {
        return Some(0);
    }
    let step = topics::step_of_result_topic(base)?;
    FORWARD.iter().position(|a| a.step() == step).map(|i| i + 1)
}
