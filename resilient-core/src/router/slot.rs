//! One backend inside a storage: the backend, its breaker, its health tracker, and the
//! background task that runs its health checks.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::replay_log::ReplayLog;
use super::telemetry::BackendMetrics;
use super::watchdog::Watchdog;
use crate::backend::{Backend, Capabilities, MissedBy};
use crate::backend::{BatchWrite, WriteMode, WriteOptions, WriteVersion};
use crate::breaker::{BreakerConfig, CircuitBreaker};
use crate::events::StorageEvent;
use crate::health::{HealthConfig, HealthState, HealthTracker};
use crate::report::BackendReport;
use crate::strategy::BackendView;

#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) name: String,
    pub(crate) priority: u32,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) capabilities: Capabilities,
    pub(crate) breaker: CircuitBreaker,
    pub(crate) health: HealthTracker,
    pub(crate) replay: Arc<ReplayLog>,
    /// The shared backends above this one, when it keeps replay records durably
    /// ([`Capabilities::journal`]): every write it serves carries them as
    /// [`WriteOptions::missed_by`].
    pub(crate) missed_by: MissedBy,
    pub(crate) metrics: BackendMetrics,
    /// Since when lock calls have found this backend unusable (`None` while it serves them).
    pub(crate) lock_down_since: std::sync::Mutex<Option<Instant>>,
    /// When it last answered an acquire or extend: it may hold leases until the longest lease
    /// after that.
    lock_answered: std::sync::Mutex<Option<Instant>>,
    /// Wakes its attempts at their deadline (one per storage, shared by its slots).
    pub(crate) watchdog: Arc<Watchdog>,
}

impl Slot {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: String,
        priority: u32,
        backend: Arc<dyn Backend>,
        breaker: BreakerConfig,
        health: HealthConfig,
        replay: ReplayLog,
        events: broadcast::Sender<StorageEvent>,
        epoch: Instant,
        missed_by: MissedBy,
        watchdog: Arc<Watchdog>,
    ) -> Self {
        let capabilities = backend.capabilities();
        let backend_name = name.clone();
        let metrics = BackendMetrics::new(&name);
        let gauge = metrics.circuit_gauge();
        let replay = Arc::new(replay);
        let outage = replay.clone();
        let breaker = CircuitBreaker::new(breaker)
            .with_epoch(epoch)
            .with_observer(move |t| {
                gauge.set(t.to);
                if matches!(
                    t.to,
                    crate::CircuitState::Open | crate::CircuitState::ForcedOpen
                ) {
                    outage.outage_began();
                }
                match t.to {
                    crate::CircuitState::Closed => {
                        tracing::info!(backend = %backend_name, from = %t.from, "circuit closed")
                    }
                    to => tracing::warn!(
                        backend = %backend_name, from = %t.from, to = %to, open_for = ?t.open_for,
                        "circuit state changed"
                    ),
                }
                // No subscriber is fine: events are optional.
                let _ = events.send(StorageEvent::CircuitChanged {
                    backend: backend_name.clone(),
                    from: t.from,
                    to: t.to,
                    open_for: t.open_for,
                });
            });
        Self {
            name,
            priority,
            backend,
            capabilities,
            breaker,
            health: HealthTracker::new(health).with_epoch(epoch),
            replay,
            missed_by,
            metrics,
            lock_down_since: std::sync::Mutex::new(None),
            lock_answered: std::sync::Mutex::new(None),
            watchdog,
        }
    }

    /// Marks the backend unusable for locks from `now` unless it already was; returns since
    /// when. Only [`lock_served`](Self::lock_served) clears it: a half-open breaker letting a
    /// probe through does not restart the clock.
    pub(crate) fn lock_down(&self, now: Instant) -> Instant {
        *self
            .lock_down_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(now)
    }

    /// The backend answered an acquire or extend at `now`.
    pub(crate) fn lock_served(&self, now: Instant) {
        *self
            .lock_down_since
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        *self.lock_answered.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
    }

    /// When it last answered an acquire or extend.
    pub(crate) fn lock_answered_at(&self) -> Option<Instant> {
        *self.lock_answered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The options of a caller's write of `version` served here: the backends above that
    /// missed it, for a backend that records them durably.
    pub(crate) fn write_options(&self, version: WriteVersion) -> WriteOptions {
        WriteOptions::new(version).missed_by(self.missed_by.clone())
    }

    /// Its circuit state when not closed, else its health: for "no backend available" errors.
    pub(crate) fn state_reason(&self) -> String {
        let breaker = self.breaker.state();
        if breaker != crate::CircuitState::Closed {
            format!("[{}] circuit {breaker}", self.name)
        } else {
            format!("[{}] {}", self.name, self.health.state())
        }
    }

    /// Available for data without reading the clock: breaker closed, routable, nothing to
    /// replay first. A narrower test than [`view`](Self::view)'s (a breaker that would admit
    /// a probe fails it), for the common path of [`SelectionStrategy::fixed_first`].
    ///
    /// [`SelectionStrategy::fixed_first`]: crate::SelectionStrategy::fixed_first
    pub(crate) fn plainly_available(&self) -> bool {
        self.breaker.is_closed()
            && self.health.state().is_routable()
            && !self.replay.blocks_traffic()
    }

    /// `data`: the view is for a key-value operation, which a backend with writes still to
    /// replay must not serve.
    /// `now_ms`: `now` in milliseconds since the storage's epoch, which its breaker and health
    /// tracker count from.
    pub(crate) fn view(
        &self,
        now: Instant,
        now_ms: u64,
        eligible: bool,
        data: bool,
    ) -> BackendView {
        let available_ms = self.health.routable_ms(now_ms).and_then(|healthy| {
            match self.breaker.closed_ms(now_ms) {
                Some(closed) => Some(closed.min(healthy)),
                None => self.breaker.would_admit_at(now).then_some(0),
            }
        });
        let replaying = data && self.replay.blocks_traffic();
        BackendView {
            priority: self.priority,
            available: eligible && !replaying && available_ms.is_some(),
            available_for: Duration::from_millis(available_ms.unwrap_or(0)),
            latency: self.health.latency(),
        }
    }

    pub(crate) fn report(&self) -> BackendReport {
        let breaker = self.breaker.snapshot();
        BackendReport {
            scheme: self.backend.scheme().to_owned(),
            priority: self.priority,
            health: self.health.state(),
            circuit_open: breaker.state != crate::CircuitState::Closed,
            circuit_state: breaker.state,
            consecutive_failures: breaker.consecutive_failures,
            latency_ms: self.health.latency().map(|l| l.as_secs_f64() * 1e3),
            last_error: self.health.last_error(),
            capabilities: self.capabilities,
            pending_replay: self.replay.pending(),
            replay_lost: self.replay.lost_recently(),
        }
    }
}

/// Runs health checks until `stop` fires or its sender is dropped. A check is bounded by the
/// health timeout, so a frozen backend costs one timeout per interval and never stalls the loop.
pub(crate) async fn monitor(
    slot: Arc<Slot>,
    events: broadcast::Sender<StorageEvent>,
    mut stop: watch::Receiver<bool>,
) {
    let config = slot.health.config().clone();
    loop {
        let start = Instant::now();
        let checked = tokio::select! {
            biased;
            _ = stop.changed() => return,
            checked = tokio::time::timeout(config.timeout, slot.backend.health_check()) => checked,
        };
        let outcome = match checked {
            Ok(Ok(probe)) => Ok((probe, start.elapsed())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("health check timed out after {:?}", config.timeout)),
        };
        let error = outcome.as_ref().err().cloned();
        let passed = error.is_none();
        let change = slot.health.record_check(outcome, Instant::now());
        // A passing check while the breaker is open means the backend answers again: let a
        // request probe it now rather than wait out the open time, whether or not the outage
        // lasted long enough to mark the backend unhealthy.
        if passed && slot.health.state().is_routable() {
            slot.breaker.health_recovered();
            probe_breaker(&slot, config.timeout).await;
        }
        if let Some(change) = change {
            if change.to == HealthState::Unhealthy {
                slot.replay.outage_began();
                tracing::warn!(backend = %slot.name, from = %change.from, error = ?error, "backend unhealthy");
            } else {
                tracing::info!(backend = %slot.name, from = %change.from, to = %change.to, "backend health changed");
            }
            let _ = events.send(StorageEvent::HealthChanged {
                backend: slot.name.clone(),
                from: change.from,
                to: change.to,
                error,
            });
        }
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = tokio::time::sleep(config.interval) => {}
        }
    }
}

/// Lets a half-open breaker close without traffic: a health check taken as its probe. Under
/// [`Failover`](crate::strategy::Failover) no call reaches a backend while another serves, and
/// a read-only, lock-only or idle outage leaves no write to replay, so without this a recovered
/// backend would wait for a probe that never comes. The probe goes through the breaker like a
/// call: it takes a probe slot, and a failure reopens the breaker.
async fn probe_breaker(slot: &Slot, timeout: Duration) {
    while slot.breaker.state() != crate::CircuitState::Closed {
        let Ok(permit) = slot.breaker.try_acquire() else {
            return; // open, forced open, or every probe slot taken by calls
        };
        if !permit.is_probe() {
            return;
        }
        let start = Instant::now();
        match tokio::time::timeout(timeout, slot.backend.health_check()).await {
            Ok(Ok(_)) => permit.success(start.elapsed()),
            Ok(Err(error)) if !error.is_transient() => return permit.ignore(),
            _ => return permit.failure(),
        }
    }
}

/// How often the replayer looks for recovered backends with writes to replay, when no
/// write-behind copy wakes it sooner.
const REPLAY_TICK: Duration = Duration::from_millis(100);
/// Records per replayed batch: one [`Backend::write_many`] call (one pipeline on Redis), so a
/// recovered backend catches up at batch speed, not at one round trip per record.
const REPLAY_BATCH: usize = 64;
/// Replayed batches in flight at once, per backend: well under a pool's connections (16 by
/// default for PostgreSQL), so replays leave room for calls.
const REPLAY_CONCURRENCY: usize = 4;
/// Batches replayed between two yields to the scheduler, for a backend that answers at once.
const REPLAY_YIELD: usize = 4;
/// How long the replayer waits, once a write-behind copy wakes it with less than a batch to
/// send, for more copies before it sends (as a producer's linger): under a steady stream of
/// writes the copies then go in batches, not one statement each. On this project's 2-core
/// benchmark machine, a set under the default write-behind policy took 1.72x a Redis-only set
/// when every copy was a PostgreSQL statement of its own, and 1.07-1.22x with 5 ms in eight
/// runs (median 1.09; `cargo xtask bench --only interleaved_default_set`). A copy reaches its
/// backend that much later; reads answer from its record meanwhile, and
/// [`shutdown`](super::ResilientStorage::shutdown) sends what is left.
const WRITE_BEHIND_LINGER: Duration = Duration::from_millis(5);

/// Replays the writes each backend missed, and sends write-behind copies, once it answers,
/// until `stop` fires; then one last pass, within the attempt timeout, sends what is still
/// pending (a copy of the last writes before a shutdown). Each replayed write goes through the
/// backend's breaker: while it is open nothing is sent, and in half-open the first replayed
/// write is the one probe.
pub(crate) async fn replayer(
    slots: Vec<Arc<Slot>>,
    events: broadcast::Sender<StorageEvent>,
    mut stop: watch::Receiver<bool>,
    wake: Arc<tokio::sync::Notify>,
    attempt_timeout: Duration,
) {
    let pass = || async {
        for slot in &slots {
            if slot.replay.pending() > 0 && slot.health.state().is_routable() {
                replay(slot, &events, attempt_timeout).await;
            }
        }
    };
    loop {
        let stopped = tokio::select! {
            biased;
            _ = stop.changed() => true,
            _ = wake.notified() => {
                slots.iter().all(|slot| slot.replay.pending() < REPLAY_BATCH)
                    && tokio::select! {
                        biased;
                        _ = stop.changed() => true,
                        _ = tokio::time::sleep(WRITE_BEHIND_LINGER) => false,
                    }
            }
            _ = tokio::time::sleep(REPLAY_TICK) => false,
        };
        if stopped {
            // What a pass sends before it is cut off stays sent; the rest is left, as a crash
            // would leave it.
            let _ = tokio::time::timeout(attempt_timeout, pass()).await;
            return;
        }
        pass().await;
    }
}

/// How one replayed batch ended.
enum Replayed {
    Done,
    /// A transient failure or a timeout: the backend is not ready, stop this pass.
    Paused,
}

/// One record of a replay pass.
type Record = (String, super::replay_log::LoggedWrite, WriteVersion);

async fn replay(slot: &Slot, events: &broadcast::Sender<StorageEvent>, attempt_timeout: Duration) {
    use futures_util::StreamExt;
    let mut complete = true;
    let mut records = slot.replay.pass().into_iter().peekable();
    let mut running = futures_util::stream::FuturesUnordered::new();
    let mut started = 0_usize;
    loop {
        while complete && running.len() < REPLAY_CONCURRENCY && records.peek().is_some() {
            // One permit per batch: in half-open the first batch is the one probe.
            let Ok(permit) = slot.breaker.try_acquire() else {
                // Half-open: the probe in flight decides. Open: stop until it admits again.
                if running.is_empty() {
                    complete = false;
                }
                break;
            };
            let batch: Vec<Record> = records.by_ref().take(REPLAY_BATCH).collect();
            running.push(replay_batch(slot, events, permit, batch, attempt_timeout));
            started += 1;
            if started.is_multiple_of(REPLAY_YIELD) {
                tokio::task::yield_now().await;
            }
        }
        match running.next().await {
            Some(Replayed::Done) => {}
            Some(Replayed::Paused) => complete = false,
            None => break,
        }
    }
    slot.metrics.backlog(slot.replay.pending());
    // The first complete pass of an outage lets traffic back; later passes replay the writes
    // made meanwhile, which reads consult until then.
    if complete && !slot.replay.set_caught_up() {
        tracing::info!(backend = %slot.name, "replay pass complete: backend takes traffic again");
    }
    let records = slot.replay.take_replayed_when_done();
    if records > 0 {
        tracing::info!(backend = %slot.name, records, "replay complete: backend up to date");
        let _ = events.send(StorageEvent::ReplayCompleted {
            backend: slot.name.clone(),
            records,
        });
    }
}

/// Replays `batch` as one [`Backend::write_many`] call, each write conditional on a versioned
/// backend (a newer write another process made there meanwhile stays, and the record is done
/// all the same). A record is forgotten once its write is answered, unless a newer write
/// replaced it meanwhile; a transient failure of the call or of any write pauses the pass
/// (what was not answered stays for the next); a write the backend refuses for good is
/// reported lost. When the whole call is refused for good (one bad write can fail a backend's
/// batch), the records are replayed one by one, so only that write is lost.
async fn replay_batch(
    slot: &Slot,
    events: &broadcast::Sender<StorageEvent>,
    permit: crate::breaker::Permit<'_>,
    batch: Vec<Record>,
    attempt_timeout: Duration,
) -> Replayed {
    let start = Instant::now();
    let options = |version| WriteOptions::new(version).mode(WriteMode::IfNewer);
    let writes = batch
        .iter()
        .map(|(key, hint, version)| BatchWrite::new(key, hint.replay_at(start), options(*version)))
        .collect();
    let (result, _, elapsed) = super::attempt::timed(
        &slot.watchdog,
        start,
        attempt_timeout,
        slot.backend.write_many(writes),
    )
    .await;
    let answers = match result {
        Ok(Ok(answers)) => answers,
        Ok(Err(error)) if error.is_transient() => {
            permit.failure();
            tracing::debug!(backend = %slot.name, %error, "replay paused");
            return Replayed::Paused;
        }
        Ok(Err(_)) => {
            permit.ignore();
            return replay_one_by_one(slot, events, batch, attempt_timeout).await;
        }
        Err(_) => {
            permit.failure();
            return Replayed::Paused;
        }
    };
    let (mut replayed, mut paused) = (0, false);
    for ((key, _, version), answer) in batch.iter().zip(answers) {
        match answer {
            Ok(outcome) => {
                if !outcome.applied {
                    tracing::debug!(backend = %slot.name, "replay skipped: a newer write is there");
                }
                if slot.replay.replayed(key, *version) {
                    replayed += 1;
                }
            }
            Err(error) if error.is_transient() => paused = true,
            Err(error) => lose(slot, events, key, *version, &error),
        }
    }
    slot.metrics.replayed(replayed);
    if paused {
        permit.failure();
        return Replayed::Paused;
    }
    permit.success(elapsed);
    Replayed::Done
}

/// Replays each record of `batch` by itself, through the breaker.
async fn replay_one_by_one(
    slot: &Slot,
    events: &broadcast::Sender<StorageEvent>,
    batch: Vec<Record>,
    attempt_timeout: Duration,
) -> Replayed {
    for (key, hint, version) in batch {
        let Ok(permit) = slot.breaker.try_acquire() else {
            return Replayed::Paused;
        };
        let start = Instant::now();
        let options = WriteOptions::new(version).mode(WriteMode::IfNewer);
        let call = slot.backend.write(&key, hint.replay_at(start), options);
        let (result, _, elapsed) =
            super::attempt::timed(&slot.watchdog, start, attempt_timeout, call).await;
        super::attempt::settle(permit, &result, elapsed);
        match result {
            Ok(Ok(_)) => {
                if slot.replay.replayed(&key, version) {
                    slot.metrics.replayed(1);
                }
            }
            Ok(Err(error)) if !error.is_transient() => lose(slot, events, &key, version, &error),
            _ => return Replayed::Paused,
        }
    }
    Replayed::Done
}

/// The backend refuses this write for good: report it rather than retry forever or drop it
/// silently.
fn lose(
    slot: &Slot,
    events: &broadcast::Sender<StorageEvent>,
    key: &str,
    version: WriteVersion,
    error: &crate::Error,
) {
    if slot.replay.forget(key, version) {
        slot.replay.count_lost();
        slot.metrics.lost(slot.replay.lost());
        tracing::warn!(backend = %slot.name, %error, "a write could not be replayed");
        let _ = events.send(StorageEvent::ReplayLost {
            backend: slot.name.clone(),
            lost: slot.replay.lost(),
        });
    }
}
