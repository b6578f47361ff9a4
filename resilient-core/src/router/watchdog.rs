//! The attempt timeout without a tokio timer per call: one task per storage wakes the attempts
//! whose deadline has passed.
//!
//! A tokio timer per attempt costs a registration in the runtime's timer wheel and a removal
//! when the call ends before it fires, which it nearly always does: about a fifth of the
//! instructions the router added to a Redis get with 64 tasks on 2 cores
//! (`benches/examples/redis_64_tasks.rs` under callgrind). Here an attempt that does not finish
//! on its first poll puts its deadline and waker in one of a few sharded slabs (one uncontended
//! lock) and takes them out when it ends (another); the watchdog task sleeps until the earliest
//! deadline, wakes the attempts past theirs, and sleeps again. Under a steady load it wakes
//! about once per attempt timeout. An attempt woken by it sees its deadline passed on the clock
//! and times out.
//!
//! An attempt made on another runtime than the one the task runs on when that one is a
//! current-thread runtime (which may be kept but no longer run), one made on a paused clock
//! when the task runs on a multi-thread runtime (whose clock is the real one), or one made once
//! the task is gone (its runtime shut down while the storage lives on in another) falls back
//! to tokio's timer: an attempt never waits without a timer. So does one the task wakes for a
//! deadline its caller's clock has not reached.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// Slabs of waiting attempts: a thread takes one of its own, so registrations from the runtime's
/// workers rarely meet on a lock.
const SHARDS: usize = 8;

/// The waiting attempts of one storage, and how to reach its task.
#[derive(Debug)]
pub(crate) struct Watchdog {
    shards: [Mutex<Shard>; SHARDS],
    /// When the task will next look, in nanoseconds since `epoch`; `u64::MAX` while it waits to
    /// be told of an attempt (or is looking now). An attempt whose deadline comes earlier tells it.
    next_look: AtomicU64,
    wake: Notify,
    /// Cleared when the task ends: from then on, attempts use tokio's timer.
    alive: AtomicBool,
    /// The runtime the task runs on.
    runtime: tokio::runtime::Id,
    /// Whether that runtime drives the task whatever the thread that calls does: a
    /// multi-thread runtime.
    driven_always: bool,
    epoch: Instant,
}

#[derive(Debug, Default)]
struct Shard {
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
}

#[derive(Debug)]
struct Entry {
    deadline: Instant,
    waker: Waker,
    /// Woken for its deadline: no longer a reason for the task to wake.
    fired: bool,
}

/// An attempt waiting under the watchdog: taken out when dropped.
pub(super) struct Registration<'a> {
    watchdog: &'a Watchdog,
    shard: usize,
    index: usize,
}

impl Watchdog {
    /// A watchdog and its task, spawned on the current runtime; the task ends when `stop`'s
    /// sender is dropped (the storage is gone: no attempt can be waiting).
    pub(crate) fn start(stop: watch::Receiver<bool>) -> Arc<Self> {
        let watchdog = Arc::new(Self::idle());
        tokio::spawn(run(Alive(watchdog.clone()), stop));
        watchdog
    }

    fn idle() -> Self {
        let runtime = tokio::runtime::Handle::current();
        Self {
            shards: Default::default(),
            next_look: AtomicU64::new(u64::MAX),
            wake: Notify::new(),
            alive: AtomicBool::new(true),
            runtime: runtime.id(),
            driven_always: runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread,
            epoch: Instant::now(),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX - 1)
    }

    fn shard(&self, index: usize) -> MutexGuard<'_, Shard> {
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes `waker` once `deadline` has passed, until the registration is dropped. `None`
    /// where the task cannot be counted on for this call, which then needs a timer of its
    /// own: the task is gone; it runs on a current-thread runtime and the call on another; or
    /// it runs on a multi-thread runtime and the call's clock (`start`, read as the call
    /// began) is not the real one.
    pub(super) fn register(
        &self,
        start: Instant,
        deadline: Instant,
        waker: &Waker,
    ) -> Option<Registration<'_>> {
        let counted_on = if self.driven_always {
            // A multi-thread runtime runs its tasks on workers of its own for as long as it
            // lives (and when it goes, so does the task, which wakes every attempt): the task
            // is driven whatever runtime the call is on, and asking which would take and give
            // back a count on the runtime's handle per call, on a line every worker writes.
            // Its clock is the real one (a multi-thread runtime's cannot be paused), which a
            // call on a paused clock (tokio's `test-util`, on another runtime) does not go by.
            on_the_real_clock(start)
        } else {
            // A current-thread runtime kept but no longer run does not drive the task.
            tokio::runtime::Handle::try_current()
                .map(|handle| handle.id())
                .ok()
                == Some(self.runtime)
        };
        if !counted_on {
            return None;
        }
        let shard = this_threads_shard();
        let index = {
            let mut slab = self.shard(shard);
            // Read under the lock the task's end takes before it wakes every attempt: either
            // this attempt sees the task gone, or the task's end wakes it.
            if !self.alive.load(Ordering::Acquire) {
                return None;
            }
            slab.insert(Entry {
                deadline,
                waker: waker.clone(),
                fired: false,
            })
        };
        // After the insert: a task that looked at this shard before it stored its next look
        // after, and the load sees that look or `u64::MAX`.
        if self.nanos(deadline) < self.next_look.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
        Some(Registration {
            watchdog: self,
            shard,
            index,
        })
    }

    /// Wakes every attempt past its deadline at `now`; the earliest deadline still to come.
    fn fire(&self, now: Instant) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        for shard in 0..SHARDS {
            let mut slab = self.shard(shard);
            for entry in slab.entries.iter_mut().flatten() {
                if entry.fired {
                    continue;
                }
                if entry.deadline <= now {
                    entry.fired = true;
                    entry.waker.wake_by_ref();
                } else if earliest.is_none_or(|at| entry.deadline < at) {
                    earliest = Some(entry.deadline);
                }
            }
        }
        earliest
    }
}

impl Registration<'_> {
    /// Whether the watchdog still watches: false once its task is gone.
    pub(super) fn watched(&self) -> bool {
        self.watchdog.alive.load(Ordering::Acquire)
    }

    /// Keeps the waker of the latest poll (an attempt polled again with another waker must be
    /// woken through that one). Returns whether the task has woken it for its deadline: by
    /// the task's clock, which on another runtime may not be the caller's.
    pub(super) fn update(&self, waker: &Waker) -> bool {
        let mut slab = self.watchdog.shard(self.shard);
        match slab.entries.get_mut(self.index) {
            Some(Some(entry)) => {
                if !entry.waker.will_wake(waker) {
                    entry.waker = waker.clone();
                }
                entry.fired
            }
            _ => false,
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let entry = self.watchdog.shard(self.shard).remove(self.index);
        // The waker is dropped outside the lock.
        drop(entry);
    }
}

impl Shard {
    fn insert(&mut self, entry: Entry) -> usize {
        match self.free.pop() {
            Some(index) => {
                self.entries[index] = Some(entry);
                index
            }
            None => {
                self.entries.push(Some(entry));
                self.entries.len() - 1
            }
        }
    }

    fn remove(&mut self, index: usize) -> Option<Entry> {
        let entry = self.entries.get_mut(index)?.take();
        if entry.is_some() {
            self.free.push(index);
        }
        entry
    }
}

/// How far the clock a call began on may be from the real time for the call to count on a
/// task going by the real clock: the time its first poll took, unless its thread was held up.
const CLOCK_SLACK: std::time::Duration = std::time::Duration::from_millis(5);

/// Whether `now`, read from a call's clock as it began, is the real time. A paused clock starts
/// at the real time when its runtime is built and then moves only as told, so it is soon away
/// from it; a call that began on one within [`CLOCK_SLACK`] of it is woken by the task, at its
/// deadline by the real clock, and then goes by its own (see [`Registration::update`]).
fn on_the_real_clock(now: Instant) -> bool {
    let (now, real) = (now.into_std(), std::time::Instant::now());
    now <= real && real - now <= CLOCK_SLACK
}

/// The shard of the calling thread: threads take them in turn, once.
fn this_threads_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|shard| {
        if shard.get() == usize::MAX {
            shard.set(NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        shard.get()
    })
}

/// Owned by the task: when the task ends, however it ends (its storage dropped, its runtime
/// shut down), attempts stop relying on it, and those waiting are woken to arm their own timer.
struct Alive(Arc<Watchdog>);

impl Drop for Alive {
    fn drop(&mut self) {
        let watchdog = &self.0;
        watchdog.alive.store(false, Ordering::Release);
        for shard in 0..SHARDS {
            let slab = watchdog.shard(shard);
            for entry in slab.entries.iter().flatten() {
                entry.waker.wake_by_ref();
            }
        }
    }
}

async fn run(alive: Alive, mut stop: watch::Receiver<bool>) {
    let watchdog = &*alive.0;
    loop {
        // Before looking: an attempt registered in a shard already looked at sees this and
        // tells the task, whose `notified` then returns at once.
        watchdog.next_look.store(u64::MAX, Ordering::SeqCst);
        let earliest = watchdog.fire(Instant::now());
        if let Some(at) = earliest {
            watchdog
                .next_look
                .store(watchdog.nanos(at), Ordering::SeqCst);
        }
        let sleep = async {
            match earliest {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            () = watchdog.wake.notified() => {}
            changed = stop.changed() => {
                // Shutting down still leaves calls in flight to time out; only the storage's
                // end (the sender dropped) ends the task.
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn noop_waker() -> Waker {
        Waker::noop().clone()
    }

    #[tokio::test]
    async fn a_slab_reuses_the_places_attempts_leave() {
        let watchdog = Watchdog::idle();
        let at = Instant::now();
        let waker = noop_waker();
        let first = watchdog.register(at, at, &waker).unwrap();
        let second = watchdog.register(at, at, &waker).unwrap();
        let (shard, index) = (first.shard, first.index);
        drop(first);
        let third = watchdog.register(at, at, &waker).unwrap();
        assert_eq!((third.shard, third.index), (shard, index));
        drop((second, third));
        let slab = watchdog.shard(shard);
        assert!(slab.entries.iter().all(Option::is_none));
        assert_eq!(slab.free.len(), slab.entries.len());
    }

    #[tokio::test]
    async fn without_its_task_no_attempt_is_registered() {
        let watchdog = Watchdog::idle();
        watchdog.alive.store(false, Ordering::Relaxed);
        let now = Instant::now();
        assert!(watchdog.register(now, now, &noop_waker()).is_none());
    }

    #[tokio::test]
    async fn fire_wakes_only_attempts_past_their_deadline_and_names_the_next() {
        let watchdog = Watchdog::idle();
        let now = Instant::now();
        let waker = noop_waker();
        let past = watchdog.register(now, now, &waker).unwrap();
        let soon = watchdog
            .register(now, now + Duration::from_millis(5), &waker)
            .unwrap();
        let later = watchdog
            .register(now, now + Duration::from_millis(9), &waker)
            .unwrap();
        assert_eq!(watchdog.fire(now), Some(now + Duration::from_millis(5)));
        let fired = |r: &Registration<'_>| {
            watchdog.shard(r.shard).entries[r.index]
                .as_ref()
                .unwrap()
                .fired
        };
        assert!(fired(&past) && !fired(&soon) && !fired(&later));
        // A fired attempt is no reason to wake again.
        assert_eq!(
            watchdog.fire(now + Duration::from_millis(5)),
            Some(now + Duration::from_millis(9))
        );
        drop((past, soon, later));
        assert_eq!(watchdog.fire(now + Duration::from_secs(1)), None);
    }
}
