//! Metrics through the [`metrics`](https://docs.rs/metrics) facade when feature `metrics` is
//! on; without it every function here is empty and compiles away.
//!
//! Handles are registered once per backend when the storage is built, so install the recorder
//! (for example `metrics-exporter-prometheus`) before building it. Labels hold backend names
//! and operation names only: never keys, values or URLs.

use std::time::Duration;

use crate::breaker::CircuitState;
use crate::error::Operation;

/// How one attempt on one backend ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The backend answered (a miss or a refusal is an answer).
    Answered,
    /// A transient failure: the call may go to the next backend.
    Failed,
    /// No answer within the attempt's budget.
    TimedOut,
}

#[cfg(feature = "metrics")]
mod imp {
    use metrics::{Counter, Gauge, Histogram};

    use super::*;

    const OPERATIONS: [Operation; 10] = [
        Operation::Get,
        Operation::Set,
        Operation::Delete,
        Operation::AcquireLock,
        Operation::ExtendLock,
        Operation::ReleaseLock,
        Operation::HealthCheck,
        Operation::GetMany,
        Operation::WriteMany,
        Operation::Atomic,
    ];

    fn slot_of(operation: Operation) -> usize {
        OPERATIONS.iter().position(|&o| o == operation).unwrap_or(0)
    }

    #[derive(Debug)]
    struct PerOperation {
        calls: Counter,
        failures: Counter,
        timeouts: Counter,
        rejected: Counter,
        latency: Histogram,
    }

    /// One backend's metric handles.
    #[derive(Debug)]
    pub(crate) struct BackendMetrics {
        operations: Vec<PerOperation>,
        circuit: Gauge,
        backlog: Gauge,
        replayed: Counter,
        lost: Counter,
    }

    fn describe() {
        use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        describe_counter!(
            "resilient_storage_calls_total",
            "Attempts sent to a backend, per operation"
        );
        describe_counter!(
            "resilient_storage_failures_total",
            "Attempts that failed with a transient error or timed out"
        );
        describe_counter!(
            "resilient_storage_timeouts_total",
            "Attempts that got no answer within the attempt timeout"
        );
        describe_counter!(
            "resilient_storage_rejected_total",
            "Attempts the backend's circuit breaker refused"
        );
        describe_histogram!(
            "resilient_storage_latency_seconds",
            Unit::Seconds,
            "Time one attempt on one backend took"
        );
        describe_gauge!(
            "resilient_storage_circuit_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open, 3 forced open"
        );
        describe_counter!(
            "resilient_storage_failovers_total",
            "Operations served by another backend than the first choice"
        );
        describe_gauge!(
            "resilient_storage_replay_backlog",
            "Missed writes waiting to be replayed to a backend"
        );
        describe_counter!(
            "resilient_storage_replayed_total",
            "Missed writes replayed to a backend after it recovered"
        );
        describe_counter!(
            "resilient_storage_replay_lost_total",
            "Missed writes that could not be kept or replayed"
        );
        describe_counter!(
            "resilient_storage_cache_total",
            "Cache-aside calls by outcome: hit, loaded, failed, or the reason a stale value was served"
        );
    }

    impl BackendMetrics {
        pub(crate) fn new(backend: &str) -> Self {
            describe();
            let operations = OPERATIONS
                .iter()
                .map(|operation| {
                    let labels = [
                        ("backend", backend.to_owned()),
                        ("operation", operation.as_str().to_owned()),
                    ];
                    PerOperation {
                        calls: metrics::counter!("resilient_storage_calls_total", &labels),
                        failures: metrics::counter!("resilient_storage_failures_total", &labels),
                        timeouts: metrics::counter!("resilient_storage_timeouts_total", &labels),
                        rejected: metrics::counter!("resilient_storage_rejected_total", &labels),
                        latency: metrics::histogram!("resilient_storage_latency_seconds", &labels),
                    }
                })
                .collect();
            let backend = backend.to_owned();
            let metrics = Self {
                operations,
                circuit: metrics::gauge!("resilient_storage_circuit_state", "backend" => backend.clone()),
                backlog: metrics::gauge!("resilient_storage_replay_backlog", "backend" => backend.clone()),
                replayed: metrics::counter!("resilient_storage_replayed_total", "backend" => backend.clone()),
                lost: metrics::counter!("resilient_storage_replay_lost_total", "backend" => backend),
            };
            metrics.circuit_gauge().set(CircuitState::Closed);
            metrics.backlog(0);
            metrics
        }

        pub(crate) fn attempt(&self, operation: Operation, outcome: Outcome, elapsed: Duration) {
            let m = &self.operations[slot_of(operation)];
            m.calls.increment(1);
            m.latency.record(elapsed.as_secs_f64());
            match outcome {
                Outcome::Answered => {}
                Outcome::Failed => m.failures.increment(1),
                Outcome::TimedOut => {
                    m.failures.increment(1);
                    m.timeouts.increment(1);
                }
            }
        }

        pub(crate) fn rejected(&self, operation: Operation) {
            self.operations[slot_of(operation)].rejected.increment(1);
        }

        /// The circuit-state gauge, for the breaker's observer.
        pub(crate) fn circuit_gauge(&self) -> CircuitGauge {
            CircuitGauge(self.circuit.clone())
        }

        #[allow(clippy::cast_precision_loss)]
        pub(crate) fn backlog(&self, pending: usize) {
            self.backlog.set(pending as f64);
        }

        pub(crate) fn replayed(&self, records: u64) {
            self.replayed.increment(records);
        }

        pub(crate) fn lost(&self, total: u64) {
            self.lost.absolute(total);
        }
    }

    /// The circuit-state gauge alone.
    #[derive(Debug, Clone)]
    pub(crate) struct CircuitGauge(Gauge);

    impl CircuitGauge {
        pub(crate) fn set(&self, state: CircuitState) {
            self.0.set(match state {
                CircuitState::Closed => 0.0,
                CircuitState::HalfOpen => 1.0,
                CircuitState::Open => 2.0,
                CircuitState::ForcedOpen => 3.0,
            });
        }
    }

    pub(crate) fn failover(operation: Operation, from: &str, to: &str) {
        metrics::counter!(
            "resilient_storage_failovers_total",
            "operation" => operation.as_str(),
            "from" => from.to_owned(),
            "to" => to.to_owned(),
        )
        .increment(1);
    }

    pub(crate) fn cache_outcome(outcome: &'static str) {
        metrics::counter!("resilient_storage_cache_total", "outcome" => outcome).increment(1);
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    use super::*;

    /// Without feature `metrics`: nothing.
    #[derive(Debug)]
    pub(crate) struct BackendMetrics;

    impl BackendMetrics {
        pub(crate) fn new(_backend: &str) -> Self {
            Self
        }
        #[inline(always)]
        pub(crate) fn attempt(&self, _: Operation, _: Outcome, _: Duration) {}
        #[inline(always)]
        pub(crate) fn rejected(&self, _: Operation) {}
        pub(crate) fn circuit_gauge(&self) -> CircuitGauge {
            CircuitGauge
        }
        #[inline(always)]
        pub(crate) fn backlog(&self, _: usize) {}
        #[inline(always)]
        pub(crate) fn replayed(&self, _: u64) {}
        #[inline(always)]
        pub(crate) fn lost(&self, _: u64) {}
    }

    /// Without feature `metrics`: nothing.
    #[derive(Debug, Clone)]
    pub(crate) struct CircuitGauge;

    impl CircuitGauge {
        #[inline(always)]
        pub(crate) fn set(&self, _: CircuitState) {}
    }

    #[inline(always)]
    pub(crate) fn failover(_: Operation, _: &str, _: &str) {}

    #[inline(always)]
    pub(crate) fn cache_outcome(_: &'static str) {}
}

pub(crate) use imp::{BackendMetrics, cache_outcome, failover};
