//! [`PostgresBackend`]: the [`Backend`] trait on a sqlx `PgPool`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use resilient_core::{
    AtomicOp, AtomicOutcome, Backend, BatchWrite, Capabilities, Error, FencingToken, HealthProbe,
    JournalEntry, KeyWrite, LockGrant, LockOutcome, Operation, Result, Unknown, WriteMode,
    WriteOptions, WriteOutcome, WriteVersion,
};
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{PgPool, Row as _, SqlStr};
use tokio::sync::watch;

use crate::config::PostgresConfig;
use crate::error::{classify, schema_missing};
use crate::sql::Statements;

/// PostgreSQL as a durable resilient-storage backend.
///
/// - Connects lazily: building one never waits for the server; the pool reconnects by itself.
/// - Every call is bounded three times: the pool's acquire timeout, the server's
///   `statement_timeout`, and a client-side timeout that holds even when the server is frozen.
/// - Tables (logged, so a crash loses no acknowledged write) are created in the background as
///   soon as the server answers (at start, else at the first passing health check), under an
///   advisory lock, so several processes may start at once; a call that finds them missing
///   creates them itself. A first failover here pays no DDL.
/// - Expiry is decided on the server's clock; a background sweeper deletes expired rows in
///   bounded batches and stops on shutdown.
/// - Locks are lease rows taken with one `INSERT ... ON CONFLICT ... WHERE expired OR same
///   holder`, tokens from a sequence; not session advisory locks, which leak through pooled
///   connections.
/// - Health checks use a pool of their own, so a check never waits behind data calls.
#[derive(Debug)]
pub struct PostgresBackend {
    config: PostgresConfig,
    pool: PgPool,
    health: PgPool,
    sql: Statements,
    schema_ready: AtomicBool,
    schema_lock: tokio::sync::Mutex<()>,
    /// Set while a background preparation runs (see [`PostgresBackend::prepared`]).
    preparing: AtomicBool,
    me: Weak<Self>,
    stop: watch::Sender<bool>,
}

impl PostgresBackend {
    /// A backend with the given settings, and its sweeper task. Never waits for the server: it
    /// [prepares](Self::prepared) the tables and one connection in the background, and every
    /// passing health check starts that again until it is done, so the first call that fails
    /// over here, even long after start, finds both ready. Needs a tokio runtime.
    pub fn new(config: PostgresConfig) -> Result<Arc<Self>> {
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(0)
            .acquire_timeout(config.acquire_timeout)
            // Each call is bounded on the client; pinging before every acquire would double the
            // latency of every call for nothing.
            .test_before_acquire(false)
            .connect_lazy_with(config.connect.clone());
        let health = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(config.acquire_timeout)
            .test_before_acquire(false)
            .connect_lazy_with(config.connect.clone());
        let backend = Arc::new_cyclic(|me| Self {
            sql: Statements::new(&config.schema, &config.table),
            config,
            pool,
            health,
            schema_ready: AtomicBool::new(false),
            schema_lock: tokio::sync::Mutex::new(()),
            preparing: AtomicBool::new(false),
            me: me.clone(),
            stop: watch::channel(false).0,
        });
        tokio::spawn(sweeper(Arc::downgrade(&backend), backend.stop.subscribe()));
        backend.prepare_in_background();
        Ok(backend)
    }

    /// Whether the tables are known to exist and the data pool holds a connection: a call that
    /// fails over to this backend then pays its own round trip, no DDL and no connection set-up.
    /// Creating the tables is idempotent and serialised across processes, so any number of
    /// instances may start at once.
    pub fn prepared(&self) -> bool {
        self.schema_ready.load(Ordering::Acquire) && self.pool.size() > 0
    }

    /// Prepares the tables and one pooled connection in a task of its own, unless that is done
    /// or already under way. A failure is logged and left to the next health check.
    fn prepare_in_background(&self) {
        if self.prepared() || self.preparing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(backend) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let prepared = tokio::time::timeout(backend.config.query_timeout, async {
                backend.ensure_schema().await?;
                // Returned to the pool at once: kept warm for the first call.
                backend.pool.acquire().await.map(drop)
            })
            .await;
            let name = &backend.config.name;
            match prepared {
                Ok(Ok(())) => tracing::debug!(backend = %name, "tables and a connection ready"),
                Ok(Err(e)) => {
                    let error = classify(&backend.config, Operation::HealthCheck, e);
                    tracing::debug!(backend = %name, %error, "preparing the tables failed; the next health check retries");
                }
                Err(_) => {
                    tracing::debug!(backend = %name, "preparing the tables timed out; the next health check retries")
                }
            }
            backend.preparing.store(false, Ordering::Release);
        });
    }

    /// The settings.
    pub fn config(&self) -> &PostgresConfig {
        &self.config
    }

    /// Deletes expired rows now, in batches; returns how many.
    pub async fn sweep(&self) -> Result<u64> {
        self.call(Operation::Delete, async {
            let mut total = 0;
            // A value row stays for the tombstone time after it expires, a lock row for the
            // query timeout: see `Statements`.
            let sweeps = [
                (&self.sql.sweep_values, self.config.tombstone_ttl),
                (&self.sql.sweep_locks, self.config.query_timeout),
            ];
            for (statement, grace) in sweeps {
                loop {
                    let deleted = sqlx::query(statement.clone())
                        .bind(i64::from(self.config.sweep_batch))
                        .bind(millis(grace))
                        .execute(&self.pool)
                        .await?
                        .rows_affected();
                    total += deleted;
                    if deleted < u64::from(self.config.sweep_batch) {
                        break;
                    }
                }
            }
            Ok(total)
        })
        .await
    }

    /// Runs `work` after making sure the tables exist, under the client-side timeout.
    async fn call<T>(
        &self,
        operation: Operation,
        work: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T> {
        let bounded = async {
            self.ensure_schema().await?;
            work.await
        };
        match tokio::time::timeout(self.config.query_timeout, bounded).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                if schema_missing(&err) {
                    self.schema_ready.store(false, Ordering::Release);
                }
                Err(classify(&self.config, operation, err))
            }
            Err(_) => Err(Error::backend(
                &self.config.name,
                operation,
                format!("no answer within {:?}", self.config.query_timeout),
            )),
        }
    }

    /// The rows `(key, value)` of the keys held, live, in no order: a batch read's statement.
    async fn fetch_many(&self, keys: &[&str]) -> Result<Vec<PgRow>> {
        self.call(Operation::GetMany, async {
            sqlx::query(self.sql.get_many.clone())
                .bind(keys)
                .fetch_all(&self.pool)
                .await
        })
        .await
    }

    async fn ensure_schema(&self) -> Result<(), sqlx::Error> {
        if self.schema_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        // Boxed: creating the tables takes a 14.6 KB future, which every call's future would
        // otherwise carry and async_trait's box would then copy on every call (a batch read's
        // call future: 15,192 bytes, 800 with this box).
        Box::pin(self.create_schema()).await
    }

    /// [`ensure_schema`](Self::ensure_schema)'s slow path: the tables made once, under a lock.
    async fn create_schema(&self) -> Result<(), sqlx::Error> {
        let _guard = self.schema_lock.lock().await;
        if self.schema_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        // Serialises schema creation across processes: concurrent CREATE ... IF NOT EXISTS
        // can still collide on the catalog.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(&self.sql.schema_key)
            .execute(&mut *tx)
            .await?;
        for ddl in &self.sql.ddl {
            sqlx::query(ddl.clone()).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.schema_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Applies a replayed write only over an older version or none, in one statement.
    async fn replay(
        &self,
        key: &str,
        write: KeyWrite,
        version: WriteVersion,
    ) -> Result<WriteOutcome> {
        let applied: Option<bool> = match write {
            KeyWrite::Set { value, ttl } => {
                self.call(Operation::Set, async {
                    sqlx::query_scalar(self.sql.replay_set.clone())
                        .bind(key)
                        .bind(value.as_ref())
                        .bind(ttl.map(millis))
                        .bind(stored(version))
                        .fetch_optional(&self.pool)
                        .await
                })
                .await?
            }
            KeyWrite::Delete => {
                self.call(Operation::Delete, async {
                    sqlx::query_scalar(self.sql.replay_delete.clone())
                        .bind(key)
                        .bind(stored(version))
                        .fetch_optional(&self.pool)
                        .await
                })
                .await?
            }
            _ => return Err(Error::unsupported(&self.config.name, Operation::Set)),
        };
        Ok(if applied.unwrap_or(false) {
            WriteOutcome::applied(false)
        } else {
            WriteOutcome::superseded()
        })
    }

    fn grant(&self, name: &str, holder: &str, token: i64, ttl: Duration) -> LockGrant {
        LockGrant::new(name, holder, FencingToken(token as u64), ttl)
    }
}

impl Drop for PostgresBackend {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// The last write of each key in a batch (an upsert touches a row once per statement), in
/// key order (the order the statements lock rows in).
fn last_per_key<'w, 'k>(writes: &'w [BatchWrite<'k>]) -> Vec<&'w BatchWrite<'k>> {
    let mut seen = std::collections::HashSet::new();
    let mut last: Vec<_> = writes.iter().rev().filter(|w| seen.insert(w.key)).collect();
    last.sort_unstable_by_key(|w| w.key);
    last
}

/// The backends that missed a batch's writes: `write_many` sends a batch as one statement only
/// when every write carries the same ones.
fn missed_by<'w>(writes: &'w [BatchWrite<'_>]) -> &'w [String] {
    writes.first().map_or(&[], |w| w.options.missed_by.names())
}

impl PostgresBackend {
    async fn set_many(&self, writes: &[BatchWrite<'_>]) -> Result<Vec<Result<WriteOutcome>>> {
        let last = last_per_key(writes);
        let mut keys = Vec::with_capacity(last.len());
        let mut values = Vec::with_capacity(last.len());
        let mut ttls = Vec::with_capacity(last.len());
        let mut versions = Vec::with_capacity(last.len());
        for write in last {
            if let KeyWrite::Set { value, ttl } = &write.write {
                keys.push(write.key);
                values.push(value.as_ref());
                ttls.push(ttl.map(millis));
                versions.push(stored(write.options.version));
            }
        }
        let missed_by = missed_by(writes);
        self.call(Operation::WriteMany, async {
            let query = match missed_by.is_empty() {
                true => sqlx::query(self.sql.set_many.clone()),
                false => sqlx::query(self.sql.journaled.set_many.clone()),
            }
            .bind(&keys)
            .bind(&values)
            .bind(&ttls)
            .bind(&versions);
            match missed_by.is_empty() {
                true => query,
                false => query.bind(missed_by),
            }
            .execute(&self.pool)
            .await
        })
        .await?;
        Ok(writes
            .iter()
            .map(|_| Ok(WriteOutcome::applied(false)))
            .collect())
    }

    /// Replays of distinct keys in one statement: each applies only over an older version or
    /// none (the rule of `replay`), and answers superseded otherwise.
    async fn replay_many(&self, writes: &[BatchWrite<'_>]) -> Result<Vec<Result<WriteOutcome>>> {
        let mut keys = Vec::with_capacity(writes.len());
        let mut values = Vec::with_capacity(writes.len());
        let mut ttls = Vec::with_capacity(writes.len());
        let mut versions = Vec::with_capacity(writes.len());
        for write in writes {
            let (value, ttl) = match &write.write {
                KeyWrite::Set { value, ttl } => (Some(value.as_ref()), ttl.map(millis)),
                _ => (None, None),
            };
            keys.push(write.key);
            values.push(value);
            ttls.push(ttl);
            versions.push(stored(write.options.version));
        }
        let applied: Vec<String> = self
            .call(Operation::WriteMany, async {
                sqlx::query_scalar(self.sql.replay_many.clone())
                    .bind(&keys)
                    .bind(&values)
                    .bind(&ttls)
                    .bind(&versions)
                    .fetch_all(&self.pool)
                    .await
            })
            .await?;
        let applied: std::collections::HashSet<&str> = applied.iter().map(String::as_str).collect();
        Ok(writes
            .iter()
            .map(|w| {
                Ok(if applied.contains(w.key) {
                    WriteOutcome::applied(false)
                } else {
                    WriteOutcome::superseded()
                })
            })
            .collect())
    }

    async fn delete_many(&self, writes: &[BatchWrite<'_>]) -> Result<Vec<Result<WriteOutcome>>> {
        let last = last_per_key(writes);
        let keys: Vec<&str> = last.iter().map(|w| w.key).collect();
        let versions: Vec<i64> = last.iter().map(|w| stored(w.options.version)).collect();
        let existed: Vec<String> = self
            .call(Operation::WriteMany, async {
                let missed_by = missed_by(writes);
                let query = match missed_by.is_empty() {
                    true => sqlx::query_scalar(self.sql.delete_many.clone()),
                    false => sqlx::query_scalar(self.sql.journaled.delete_many.clone()),
                }
                .bind(&keys)
                .bind(&versions);
                match missed_by.is_empty() {
                    true => query,
                    false => query.bind(missed_by),
                }
                .fetch_all(&self.pool)
                .await
            })
            .await?;
        // A key deleted twice in one batch existed for the first delete only, as in a pipeline.
        let mut existed: std::collections::HashSet<&str> =
            existed.iter().map(String::as_str).collect();
        Ok(writes
            .iter()
            .map(|w| Ok(WriteOutcome::applied(existed.remove(w.key))))
            .collect())
    }
}

/// A row an atomic operation answers: the live value (or NULL), the version, the TTL left in ms.
type AnswerRow = (Option<Vec<u8>>, i64, Option<f64>);

fn answer(applied: bool, (value, version, ttl): AnswerRow) -> AtomicOutcome {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ttl = ttl
        .filter(|ms| *ms > 0.0 && ms.is_finite())
        .map(|ms| Duration::from_millis(ms.ceil() as u64));
    AtomicOutcome::new(
        applied,
        value.map(Bytes::from),
        WriteVersion(u64::try_from(version).unwrap_or(0)),
        ttl,
    )
}

/// The rows of a batch read, `(key, value)` in any order, put in the order of the keys asked:
/// each key's value, or `None` where no row came back; a key asked twice gets its value twice.
/// `None` when a row names a key that was not asked. Each row's position is found by hash
/// (foldhash): a binary search of the sorted keys took about ten string comparisons a row, a
/// third of what the storage added to a batch of 100 (callgrind,
/// `benches/examples/postgres_get_many`).
fn in_order(keys: &[&str], rows: &[(&str, &[u8])]) -> Option<Vec<Result<Option<Bytes>>>> {
    let mut first = hashbrown::HashMap::with_capacity(keys.len());
    // Positions of keys asked before, with their key's first position.
    let mut again = Vec::new();
    for (position, &key) in keys.iter().enumerate() {
        match first.entry(key) {
            hashbrown::hash_map::Entry::Occupied(entry) => again.push((position, *entry.get())),
            hashbrown::hash_map::Entry::Vacant(entry) => {
                entry.insert(position);
            }
        }
    }
    let mut answer: Vec<Result<Option<Bytes>>> = keys.iter().map(|_| Ok(None)).collect();
    for &(key, value) in rows {
        answer[*first.get(key)?] = Ok(Some(Bytes::copy_from_slice(value)));
    }
    for (position, of) in again {
        if let Ok(Some(value)) = &answer[of] {
            answer[position] = Ok(Some(value.clone()));
        }
    }
    Some(answer)
}

/// A version as PostgreSQL's bigint. Microseconds since 1970 fit until the year 294 247.
fn stored(version: WriteVersion) -> i64 {
    i64::try_from(version.0).unwrap_or(i64::MAX)
}

/// Milliseconds as float8 for `$3::float8 * interval '1 millisecond'`.
fn millis(ttl: Duration) -> f64 {
    ttl.as_millis() as f64
}

async fn sweeper(backend: Weak<PostgresBackend>, mut stop: watch::Receiver<bool>) {
    let Some(interval) = backend.upgrade().map(|b| b.config.sweep_interval) else {
        return;
    };
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let Some(backend) = backend.upgrade() else {
            return;
        };
        match backend.sweep().await {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!(backend = %backend.config.name, rows = n, "swept expired rows")
            }
            Err(e) => tracing::debug!(backend = %backend.config.name, error = %e, "sweep failed"),
        }
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn scheme(&self) -> &str {
        "postgres"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .shared(true)
            .durable(true)
            .versioned(true)
            .locks(true)
            .atomic(true)
            .journal(true)
    }

    async fn health_check(&self) -> Result<HealthProbe> {
        let check =
            sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()").fetch_one(&self.health);
        let checked = tokio::time::timeout(self.config.query_timeout, check).await;
        if matches!(checked, Ok(Ok(_))) {
            self.prepare_in_background();
        }
        match checked {
            Ok(Ok(false)) => Ok(HealthProbe::Healthy),
            Ok(Ok(true)) => Ok(HealthProbe::Degraded(
                "server is in recovery (a read-only standby)".to_owned(),
            )),
            Ok(Err(e)) => Err(classify(&self.config, Operation::HealthCheck, e)),
            Err(_) => Err(Error::backend(
                &self.config.name,
                Operation::HealthCheck,
                format!("no answer within {:?}", self.config.query_timeout),
            )),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let value: Option<Vec<u8>> = self
            .call(Operation::Get, async {
                sqlx::query_scalar(self.sql.get.clone())
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await
            })
            .await?;
        Ok(value.map(Bytes::from))
    }

    /// One statement: the rows of the keys held, put in the keys' order here.
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Result<Option<Bytes>>>> {
        let rows = self.fetch_many(keys).await?;
        // Keys and values borrowed from the rows: copied once, into the answer.
        let mut found = Vec::with_capacity(rows.len());
        for row in &rows {
            let pair = row.try_get(0).and_then(|key| Ok((key, row.try_get(1)?)));
            found.push(pair.map_err(|e| classify(&self.config, Operation::GetMany, e))?);
        }
        in_order(keys, &found).ok_or_else(|| {
            Error::backend(
                &self.config.name,
                Operation::GetMany,
                "a batch read answered a key it was not asked",
            )
        })
    }

    /// One statement for a batch of plain sets (`unnest`), of plain deletes, or of replays
    /// (sets and deletes of distinct keys, as a replay pass sends them); any other batch, one
    /// statement per write.
    async fn write_many(&self, writes: Vec<BatchWrite<'_>>) -> Result<Vec<Result<WriteOutcome>>> {
        let plain = writes.iter().all(|w| {
            w.options.mode == WriteMode::Overwrite
                && w.options.missed_by.names() == missed_by(&writes)
        });
        let sets = writes
            .iter()
            .all(|w| matches!(w.write, KeyWrite::Set { .. }));
        let deletes = writes.iter().all(|w| matches!(w.write, KeyWrite::Delete));
        let replays = writes.iter().all(|w| {
            w.options.mode == WriteMode::IfNewer
                && matches!(w.write, KeyWrite::Set { .. } | KeyWrite::Delete)
        }) && {
            let mut seen = std::collections::HashSet::with_capacity(writes.len());
            writes.iter().all(|w| seen.insert(w.key))
        };
        match (plain, sets, deletes) {
            (true, true, _) => self.set_many(&writes).await,
            (true, _, true) => self.delete_many(&writes).await,
            _ if replays && !writes.is_empty() => self.replay_many(&writes).await,
            _ => {
                let mut answers = Vec::with_capacity(writes.len());
                for write in writes {
                    answers.push(Ok(self
                        .write(write.key, write.write, write.options)
                        .await?));
                }
                Ok(answers)
            }
        }
    }

    async fn write(
        &self,
        key: &str,
        write: KeyWrite,
        options: WriteOptions,
    ) -> Result<WriteOutcome> {
        let version = options.version;
        let missed_by = options.missed_by.names();
        let journaled = !missed_by.is_empty();
        match (write, options.mode) {
            (write, WriteMode::IfNewer) => self.replay(key, write, version).await,
            (KeyWrite::Set { value, ttl }, _) => self
                .call(Operation::Set, async {
                    let statement = match journaled {
                        true => &self.sql.journaled.set_versioned,
                        false => &self.sql.set_versioned,
                    };
                    let query = sqlx::query(statement.clone())
                        .bind(key)
                        .bind(value.as_ref())
                        .bind(ttl.map(millis))
                        .bind(stored(version));
                    match journaled {
                        true => query.bind(missed_by),
                        false => query,
                    }
                    .execute(&self.pool)
                    .await
                })
                .await
                .map(|_| WriteOutcome::applied(false)),
            (KeyWrite::Delete, _) => self
                .call(Operation::Delete, async {
                    let statement = match journaled {
                        true => &self.sql.journaled.delete_versioned,
                        false => &self.sql.delete_versioned,
                    };
                    let query = sqlx::query_scalar(statement.clone())
                        .bind(key)
                        .bind(stored(version));
                    match journaled {
                        true => query.bind(missed_by),
                        false => query,
                    }
                    .fetch_one(&self.pool)
                    .await
                })
                .await
                .map(WriteOutcome::applied),
            _ => Err(Error::unsupported(&self.config.name, Operation::Set)),
        }
    }

    /// One statement; a refused set-if-absent or compare-and-set reads what it found with a
    /// second. Durable, so a key it does not know is absent (`unknown` does not apply).
    async fn atomic(
        &self,
        key: &str,
        op: AtomicOp,
        _unknown: Unknown,
        options: WriteOptions,
    ) -> Result<AtomicOutcome> {
        let operation = Operation::Atomic;
        let version = stored(options.version);
        let missed_by = options.missed_by.names();
        let journaled = !missed_by.is_empty();
        let statements = |plain: &SqlStr, journal: &SqlStr| match journaled {
            true => journal.clone(),
            false => plain.clone(),
        };
        let row: Result<Option<AnswerRow>> = match op {
            AtomicOp::Increment { delta, ttl } => {
                self.call(operation, async {
                    let statement = statements(&self.sql.increment, &self.sql.journaled.increment);
                    let query = sqlx::query_as(statement)
                        .bind(key)
                        .bind(delta)
                        .bind(ttl.map(millis))
                        .bind(version);
                    match journaled {
                        true => query.bind(missed_by),
                        false => query,
                    }
                    .fetch_optional(&self.pool)
                    .await
                })
                .await
            }
            AtomicOp::SetIfAbsent { value, ttl }
            | AtomicOp::CompareAndSet {
                expected: None,
                value,
                ttl,
            } => {
                self.call(operation, async {
                    let statement = statements(
                        &self.sql.insert_if_absent,
                        &self.sql.journaled.insert_if_absent,
                    );
                    let query = sqlx::query_as(statement)
                        .bind(key)
                        .bind(value.as_ref())
                        .bind(ttl.map(millis))
                        .bind(version);
                    match journaled {
                        true => query.bind(missed_by),
                        false => query,
                    }
                    .fetch_optional(&self.pool)
                    .await
                })
                .await
            }
            AtomicOp::CompareAndSet {
                expected: Some(expected),
                value,
                ttl,
            } => {
                self.call(operation, async {
                    let statement = statements(
                        &self.sql.compare_and_set,
                        &self.sql.journaled.compare_and_set,
                    );
                    let query = sqlx::query_as(statement)
                        .bind(key)
                        .bind(value.as_ref())
                        .bind(ttl.map(millis))
                        .bind(version)
                        .bind(expected.as_ref());
                    match journaled {
                        true => query.bind(missed_by),
                        false => query,
                    }
                    .fetch_optional(&self.pool)
                    .await
                })
                .await
            }
            _ => return Err(Error::unsupported(&self.config.name, operation)),
        };
        let row = row.map_err(|error| match error {
            // PostgreSQL's message quotes the stored value: say what, not which.
            Error::Rejected { .. } => Error::Rejected {
                backend: self.config.name.clone(),
                operation,
                message: "the value is not an integer, or the sum is beyond a 64-bit integer"
                    .to_owned(),
            },
            other => other,
        })?;
        if let Some(row) = row {
            return Ok(answer(true, row));
        }
        let found: Option<AnswerRow> = self
            .call(operation, async {
                sqlx::query_as(self.sql.current.clone())
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await
            })
            .await?;
        Ok(found.map_or_else(
            || AtomicOutcome::new(false, None, WriteVersion(0), None),
            |row| answer(false, row),
        ))
    }

    async fn acquire_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<LockOutcome> {
        let op = Operation::AcquireLock;
        let token: Option<i64> = self
            .call(op, async {
                sqlx::query_scalar(self.sql.acquire.clone())
                    .bind(name)
                    .bind(holder)
                    .bind(millis(ttl))
                    .fetch_optional(&self.pool)
                    .await
            })
            .await?;
        if let Some(token) = token {
            return Ok(LockOutcome::Acquired(self.grant(name, holder, token, ttl)));
        }
        // Held by someone else. Who, and for how long, is informational and may have changed.
        let current: Option<(String, f64)> = self
            .call(op, async {
                sqlx::query_as(self.sql.lock_holder.clone())
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
            })
            .await?;
        Ok(LockOutcome::Held {
            holder: current.as_ref().map(|(h, _)| h.clone()),
            remaining: current.map(|(_, ms)| Duration::from_secs_f64(ms.max(0.0) / 1e3)),
        })
    }

    async fn extend_lock(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<LockGrant>> {
        let token: Option<i64> = self
            .call(Operation::ExtendLock, async {
                sqlx::query_scalar(self.sql.extend.clone())
                    .bind(name)
                    .bind(holder)
                    .bind(millis(ttl))
                    .fetch_optional(&self.pool)
                    .await
            })
            .await?;
        Ok(token.map(|token| self.grant(name, holder, token, ttl)))
    }

    async fn release_lock(&self, name: &str, holder: &str) -> Result<bool> {
        let released = self
            .call(Operation::ReleaseLock, async {
                sqlx::query(self.sql.release.clone())
                    .bind(name)
                    .bind(holder)
                    .execute(&self.pool)
                    .await
            })
            .await?;
        Ok(released.rows_affected() > 0)
    }

    async fn claim_journal(
        &self,
        target: &str,
        claim: u64,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<JournalEntry>> {
        let rows: Vec<(String, Option<Vec<u8>>, i64, Option<f64>)> = self
            .call(Operation::Journal, async {
                // Two statements: the rows are read with a snapshot taken after the claim, so
                // a write the claim's UPDATE followed is read too (a later one clears the claim).
                let claimed: Vec<(String, i64)> = sqlx::query_as(self.sql.claim_journal.clone())
                    .bind(target)
                    .bind(i64::try_from(max).unwrap_or(i64::MAX))
                    .bind(claim as i64)
                    .bind(millis(lease))
                    .fetch_all(&self.pool)
                    .await?;
                if claimed.is_empty() {
                    return Ok(Vec::new());
                }
                let (keys, versions): (Vec<String>, Vec<i64>) = claimed.into_iter().unzip();
                sqlx::query_as(self.sql.journal_rows.clone())
                    .bind(&keys)
                    .bind(&versions)
                    .fetch_all(&self.pool)
                    .await
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(key, value, version, ttl)| {
                let outcome = answer(value.is_some(), (value, version, ttl));
                let write = match outcome.value {
                    Some(value) => KeyWrite::Set {
                        value,
                        ttl: outcome.ttl,
                    },
                    None => KeyWrite::Delete,
                };
                JournalEntry::new(key, write, outcome.version)
            })
            .collect())
    }

    async fn settle_journal(&self, target: &str, claim: u64, keys: &[&str]) -> Result<()> {
        self.call(Operation::Journal, async {
            sqlx::query(self.sql.settle_journal.clone())
                .bind(target)
                .bind(claim as i64)
                .bind(keys)
                .execute(&self.pool)
                .await
        })
        .await
        .map(|_| ())
    }

    async fn shutdown(&self) {
        self.stop.send_replace(true);
        self.pool.close().await;
        self.health.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(key: &'a str, value: &'a str) -> (&'a str, &'a [u8]) {
        (key, value.as_bytes())
    }

    fn values(answer: Vec<Result<Option<Bytes>>>) -> Vec<Option<Bytes>> {
        answer.into_iter().map(|v| v.unwrap()).collect()
    }

    #[test]
    fn a_batch_read_answers_in_the_order_asked() {
        let keys = ["c", "a", "missing", "b", "a"];
        let rows = vec![row("a", "1"), row("b", "2"), row("c", "3")];
        let answer = values(in_order(&keys, &rows).unwrap());
        let expected: Vec<Option<Bytes>> = vec![
            Some("3".into()),
            Some("1".into()),
            None,
            Some("2".into()),
            Some("1".into()),
        ];
        assert_eq!(answer, expected);
    }

    #[test]
    fn a_batch_read_with_no_rows_answers_none_for_every_key() {
        let answer = values(in_order(&["a", "a", "b"], &[]).unwrap());
        assert_eq!(answer, vec![None, None, None]);
        assert!(in_order(&[], &[]).unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_call_does_not_carry_the_creation_of_the_tables() {
        let url = resilient_core::BackendUrl::parse("postgres://app@127.0.0.1:1/app").unwrap();
        let backend = PostgresBackend::new(PostgresConfig::from_url(&url).unwrap()).unwrap();
        let call = backend.fetch_many(&["a", "b"]);
        // 15,192 bytes (a release build) when the tables' creation was part of every call's
        // future.
        let size = std::mem::size_of_val(&call);
        assert!(
            size <= 1_024,
            "a batch read's call future takes {size} bytes"
        );
    }

    #[test]
    fn a_row_for_a_key_not_asked_is_refused() {
        assert!(in_order(&["a", "c"], &[row("b", "2")]).is_none());
        assert!(in_order(&[], &[row("b", "2")]).is_none());
    }
}
