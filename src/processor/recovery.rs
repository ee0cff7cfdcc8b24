//! Starting over in-process after what ends one run of the loop but not the instance.
//!
//! Some failures end the loop yet leave nothing for an operator to fix: the broker timed
//! out a transaction while the process stood still (the epoch bump fences the producer),
//! the member dropped out of its group (a freeze, a coordinator that moved), the outcome
//! of a commit stayed unknown, or librdkafka gave up on its transactional state. As
//! Kafka Streams does for a migrated task, the instance then starts over in-process:
//!
//! ```text
//! the loop ends → its clients are dropped, nothing committed → (after a freeze or a lost
//! membership: is another process in the group with this instance's id? then exit) →
//! pause → a new producer (init_transactions completes or aborts what the old one left
//! open) → a new consumer joins the group → each partition it gets is restored from the
//! committed changelogs and read from its committed offset
//! ```
//!
//! so the state is exactly what committed, as after a restart by a supervisor, without
//! the process ending.
//!
//! Starting over is wrong in one case: another process with the same instance id (a
//! replacement started while this one was frozen). Its transactional id is ours, so our
//! `init_transactions` would fence it and the two would take turns. So after a freeze or
//! a lost membership the group is asked first, and a fence with no timed-out transaction
//! behind it is taken to mean the same without asking: the process exits. Errors that
//! only an operator can fix (access, settings) end the process too, and so does a run of
//! restarts: more than [`MAX_RESTARTS`] within [`RESTART_WINDOW`] is a fault that its
//! supervisor should see.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use tracing::{info, warn};

use super::metrics::Metrics;
use super::{Context, ProcessorError};
use crate::config::Config;
use crate::kafka::{classify, clients};

/// In-process restarts allowed within [`RESTART_WINDOW`]; one more ends the process.
pub const MAX_RESTARTS: usize = 5;

/// The window over which restarts are counted.
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);

/// The pause before the first restart of a window; it doubles with each further one.
const FIRST_PAUSE: Duration = Duration::from_millis(500);

/// How long the group may take to say who its members are, per try.
const GROUP_LOOKUP_TIMEOUT: Duration = Duration::from_millis(1500);

/// What to do after the loop ended with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Start a new loop; if `ask_group`, only once the group has no other member with
    /// this instance's id.
    Restart { ask_group: bool },
    /// End the process with the error.
    Exit,
}

/// The plan for an error that ended the loop.
pub fn plan(error: &ProcessorError) -> Plan {
    match error {
        // A replacement may have started meanwhile: it would be a member now.
        ProcessorError::OutOfGroup
        | ProcessorError::FrozenAtStart
        | ProcessorError::TimedOut { .. } => Plan::Restart { ask_group: true },
        // The broker has by now completed or aborted the transaction; a new producer's
        // init_transactions waits for that, and the restore reads what committed.
        ProcessorError::Indeterminate { .. } => Plan::Restart { ask_group: false },
        ProcessorError::Kafka(e) if !classify::needs_operator(e) => {
            Plan::Restart { ask_group: false }
        }
        // A fence while no transaction had timed out: another process took the id.
        ProcessorError::Fenced { .. }
        | ProcessorError::Twin { .. }
        | ProcessorError::GaveUp { .. }
        | ProcessorError::Kafka(_)
        | ProcessorError::Topics(_)
        | ProcessorError::Restore { .. }
        | ProcessorError::Thread(_) => Plan::Exit,
    }
}

/// Whether a process that stood still past its session timeout ended its loop with
/// `error` because of the freeze, whichever call noticed it first (a commit whose time ran
/// out, a fence): then it is out of its group, and the group must be asked before it
/// starts over. Errors an operator must act on are not explained by a freeze.
pub fn a_freeze_explains(error: &ProcessorError) -> bool {
    plan(error) != Plan::Exit || matches!(error, ProcessorError::Fenced { .. })
}

/// The member ids this process's consumers were given, for [`look_for_twin`].
#[derive(Clone, Default)]
pub struct Members(Arc<Mutex<BTreeSet<String>>>);

impl Members {
    pub(super) fn note(&self, id: String) {
        if let Ok(mut ids) = self.0.lock() {
            ids.insert(id);
        }
    }

    pub(super) fn ids(&self) -> BTreeSet<String> {
        self.0.lock().map(|ids| ids.clone()).unwrap_or_default()
    }
}

/// The restarts of the last [`RESTART_WINDOW`], and the pause before the next.
#[derive(Default)]
pub struct Restarts {
    times: VecDeque<Instant>,
}

impl Restarts {
    /// Counts a restart at `now`: the pause before it, or `None` if the window already
    /// holds [`MAX_RESTARTS`].
    pub fn next(&mut self, now: Instant) -> Option<Duration> {
        while self
            .times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= RESTART_WINDOW)
        {
            self.times.pop_front();
        }
        if self.times.len() >= MAX_RESTARTS {
            return None;
        }
        let pause = FIRST_PAUSE * (1u32 << self.times.len());
        self.times.push_back(now);
        Some(pause)
    }

    /// Restarts within the window.
    pub fn count(&self) -> usize {
        self.times.len()
    }
}

/// Whether another process is in the group with this instance's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Twin {
    Absent,
    /// A member with this instance's client id, by its member id.
    Present(String),
    /// The group could not be asked: treated as present, since starting over next to a
    /// twin is the one thing that must not happen.
    Unknown(String),
}

/// Asks the group coordinator for the members of the processor's group. Only called once
/// this process's own consumer is closed; `own` holds the member ids this process's
/// consumers were given, since a coordinator that moved may list a closed one for a
/// session more. Any other member with this instance's client id is another process.
pub fn look_for_twin(config: &Config, own: &BTreeSet<String>) -> Twin {
    let client_id = clients::processor_client_id(config);
    let consumer: BaseConsumer =
        match clients::assigned_reader(config, &format!("{client_id}-twin-check")).create() {
            Ok(c) => c,
            Err(e) => return Twin::Unknown(e.to_string()),
        };
    let mut last = String::new();
    for _ in 0..3 {
        match consumer.fetch_group_list(Some(&config.application_id), GROUP_LOOKUP_TIMEOUT) {
            Ok(list) => {
                let members = list
                    .groups()
                    .iter()
                    .flat_map(|g| g.members())
                    .map(|m| (m.id(), m.client_id()));
                return twin_among(members, &client_id, own)
                    .map_or(Twin::Absent, |id| Twin::Present(id.to_string()));
            }
            Err(e) => last = e.to_string(),
        }
    }
    Twin::Unknown(last)
}

/// The first of `members` (member id, client id) with `client_id` that is not one of
/// `own`.
fn twin_among<'a>(
    mut members: impl Iterator<Item = (&'a str, &'a str)>,
    client_id: &str,
    own: &BTreeSet<String>,
) -> Option<&'a str> {
    members
        .find(|(id, client)| *client == client_id && !own.contains(*id))
        .map(|(id, _)| id)
}

/// Counts a restart in the processor's metrics, telemetry and heartbeat.
pub fn count_restart(ctx: &Context, error: &ProcessorError) {
    Metrics::add(&ctx.metrics.restarts, 1);
    ctx.telemetry.on_failure(error.kind());
    ctx.heartbeat.beat("restarting", false);
}

/// Runs `run_once` (one loop, from its start to its end) until it ends without an error,
/// ends with one that [`plan`] says to exit on, or has been restarted too often. `twin`
/// asks the group (see [`look_for_twin`]), `on_restart` is told of each restart (see
/// [`count_restart`]); `stop` is the shutdown request.
pub fn supervise(
    stop: &AtomicBool,
    mut run_once: impl FnMut() -> Result<(), ProcessorError>,
    twin: impl Fn() -> Twin,
    mut on_restart: impl FnMut(&ProcessorError),
) -> Result<(), ProcessorError> {
    let mut restarts = Restarts::default();
    loop {
        let error = match run_once() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if stop.load(Ordering::SeqCst) {
            return Err(error);
        }
        let Plan::Restart { ask_group } = plan(&error) else {
            return Err(error);
        };
        if ask_group {
            match twin() {
                Twin::Absent => {}
                Twin::Present(member) => {
                    return Err(ProcessorError::Twin {
                        member,
                        after: Box::new(error),
                    })
                }
                Twin::Unknown(reason) => {
                    return Err(ProcessorError::Twin {
                        member: format!("unknown: the group could not be asked ({reason})"),
                        after: Box::new(error),
                    })
                }
            }
        }
        let Some(pause) = restarts.next(Instant::now()) else {
            return Err(ProcessorError::GaveUp {
                restarts: restarts.count(),
                window_s: RESTART_WINDOW.as_secs(),
                last: Box::new(error),
            });
        };
        on_restart(&error);
        warn!(
            error = %error,
            restart = restarts.count(),
            of = MAX_RESTARTS,
            within_s = RESTART_WINDOW.as_secs(),
            pause_ms = pause.as_millis() as u64,
            "processor loop ended; starting over in-process: new producer, rejoin, state restored from what committed"
        );
        let until = Instant::now() + pause;
        while Instant::now() < until {
            if stop.load(Ordering::SeqCst) {
                // Nothing is open: the old producer is gone, and its transaction is
                // completed or aborted by the broker.
                info!("shutdown requested while starting over; stopping");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};

    #[test]
    fn a_timed_out_transaction_or_a_lost_membership_restarts_once_the_group_is_asked() {
        for e in [
            ProcessorError::OutOfGroup,
            ProcessorError::FrozenAtStart,
            ProcessorError::TimedOut {
                open_ms: 31_000,
                source: KafkaError::Global(C::ProducerFenced),
            },
        ] {
            assert_eq!(plan(&e), Plan::Restart { ask_group: true }, "{e}");
        }
    }

    #[test]
    fn an_unknown_commit_outcome_or_a_lost_transactional_state_restarts_at_once() {
        let indeterminate = ProcessorError::Indeterminate {
            waited_ms: 30_000,
            reason: "timed out".into(),
        };
        assert_eq!(plan(&indeterminate), Plan::Restart { ask_group: false });
        let lost = ProcessorError::Kafka(KafkaError::Global(C::InvalidTransactionalState));
        assert_eq!(plan(&lost), Plan::Restart { ask_group: false });
    }

    #[test]
    fn a_fence_with_no_timed_out_transaction_or_a_refusal_ends_the_process() {
        let fenced = ProcessorError::Fenced {
            transactional_id: "order-0".into(),
            source: KafkaError::Global(C::ProducerFenced),
        };
        assert_eq!(plan(&fenced), Plan::Exit);
        let denied = ProcessorError::Kafka(KafkaError::Global(C::TopicAuthorizationFailed));
        assert_eq!(plan(&denied), Plan::Exit);
    }

    /// Runs `supervise` over a scripted list of loop endings, with no pauses counted.
    fn supervised(
        mut endings: Vec<Result<(), ProcessorError>>,
        twin: Twin,
    ) -> (Result<(), ProcessorError>, usize, usize) {
        endings.reverse();
        let stop = AtomicBool::new(false);
        let mut runs = 0;
        let mut restarts = 0;
        let result = supervise(
            &stop,
            || {
                runs += 1;
                endings.pop().unwrap_or(Ok(()))
            },
            || twin.clone(),
            |_| restarts += 1,
        );
        (result, runs, restarts)
    }

    #[test]
    fn a_loop_that_dropped_out_of_its_group_runs_again_when_no_twin_is_there() {
        let (result, runs, restarts) =
            supervised(vec![Err(ProcessorError::OutOfGroup), Ok(())], Twin::Absent);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!((runs, restarts), (2, 1));
    }

    #[test]
    fn a_loop_that_dropped_out_of_its_group_ends_the_process_when_a_twin_is_there() {
        for twin in [
            Twin::Present("order-0-consumer-1".into()),
            Twin::Unknown("down".into()),
        ] {
            let (result, runs, restarts) =
                supervised(vec![Err(ProcessorError::OutOfGroup), Ok(())], twin);
            assert!(
                matches!(result, Err(ProcessorError::Twin { .. })),
                "{result:?}"
            );
            assert_eq!((runs, restarts), (1, 0));
        }
    }

    #[test]
    fn a_fenced_loop_ends_the_process_without_asking_the_group() {
        let fenced = ProcessorError::Fenced {
            transactional_id: "order-0".into(),
            source: KafkaError::Global(C::ProducerFenced),
        };
        let (result, runs, restarts) = supervised(vec![Err(fenced), Ok(())], Twin::Absent);
        assert!(matches!(result, Err(ProcessorError::Fenced { .. })));
        assert_eq!((runs, restarts), (1, 0));
    }

    #[test]
    fn a_member_with_this_instance_s_client_id_is_a_twin_unless_it_was_this_process_s() {
        let own = BTreeSet::from(["order-0-consumer-old".to_string()]);
        let members = [
            ("order-1-consumer-a", "order-1-consumer"),
            ("order-0-consumer-old", "order-0-consumer"),
        ];
        assert_eq!(
            twin_among(members.into_iter(), "order-0-consumer", &own),
            None
        );
        let with_twin = [
            ("order-0-consumer-old", "order-0-consumer"),
            ("order-0-consumer-new", "order-0-consumer"),
        ];
        assert_eq!(
            twin_among(with_twin.into_iter(), "order-0-consumer", &own),
            Some("order-0-consumer-new")
        );
    }

    #[test]
    fn restarts_pause_longer_each_time_and_stop_at_the_limit_within_the_window() {
        let mut r = Restarts::default();
        let t0 = Instant::now();
        let pauses: Vec<u128> = (0..MAX_RESTARTS)
            .map(|i| {
                r.next(t0 + Duration::from_secs(i as u64))
                    .expect("within the limit")
                    .as_millis()
            })
            .collect();
        assert_eq!(pauses, vec![500, 1000, 2000, 4000, 8000]);
        assert_eq!(r.next(t0 + Duration::from_secs(10)), None);
        // Once the first restarts are older than the window, restarting is allowed again.
        assert_eq!(
            r.next(t0 + RESTART_WINDOW + Duration::from_millis(500)),
            Some(Duration::from_millis(8000))
        );
    }
}
