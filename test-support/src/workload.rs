//! A steady load of calls from several tasks, each call recorded, for tests that break a server
//! under load and then check how long calls took and when they succeeded again.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// One recorded call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// When it started.
    pub start: Instant,
    /// When it returned.
    pub end: Instant,
    /// Whether it succeeded.
    pub ok: bool,
}

/// Tasks calling an operation in a loop until stopped. Needs a tokio runtime.
#[derive(Debug)]
pub struct Workload {
    calls: Arc<Mutex<Vec<Call>>>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Workload {
    /// Starts `workers` tasks; task `w` calls `op(w, i)` for i = 0, 1, ... and records each
    /// call. After a failed call a task waits `pause_after_failure`, so a server that fails
    /// fast is not spun on.
    pub fn start<F, Fut>(workers: usize, pause_after_failure: Duration, op: F) -> Self
    where
        F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let op = Arc::new(op);
        let workers = (0..workers)
            .map(|w| {
                let (calls, stop, op) = (calls.clone(), stop.clone(), op.clone());
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        let ok = op(w, i).await;
                        let end = Instant::now();
                        calls.lock().unwrap_or_else(|p| p.into_inner()).push(Call {
                            start,
                            end,
                            ok,
                        });
                        i += 1;
                        if ok {
                            tokio::task::yield_now().await;
                        } else {
                            tokio::time::sleep(pause_after_failure).await;
                        }
                    }
                })
            })
            .collect();
        Self {
            calls,
            stop,
            workers,
        }
    }

    /// The end of the first successful call that started at or after `after`, waiting up to
    /// `timeout` for one.
    pub async fn first_success_after(&self, after: Instant, timeout: Duration) -> Option<Instant> {
        let give_up = Instant::now() + timeout;
        loop {
            let found = self
                .snapshot()
                .iter()
                .filter(|c| c.ok && c.start >= after)
                .map(|c| c.end)
                .min();
            if found.is_some() || Instant::now() > give_up {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The calls recorded so far.
    pub fn snapshot(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the tasks, waits for them, and returns every call.
    pub async fn stop(mut self) -> Vec<Call> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in std::mem::take(&mut self.workers) {
            let _ = worker.await;
        }
        self.snapshot()
    }
}
