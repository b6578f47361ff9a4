//! Every statement, built once from the validated schema and table names. Values travel only
//! as bind parameters.

use std::sync::Arc;

use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};

/// Prepared statement texts, cheap to clone per call.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) ddl: Vec<SqlStr>,
    pub(crate) get: SqlStr,
    pub(crate) get_many: SqlStr,
    pub(crate) increment: SqlStr,
    pub(crate) insert_if_absent: SqlStr,
    pub(crate) compare_and_set: SqlStr,
    pub(crate) current: SqlStr,
    pub(crate) set_many: SqlStr,
    pub(crate) delete_many: SqlStr,
    pub(crate) set_versioned: SqlStr,
    pub(crate) delete_versioned: SqlStr,
    pub(crate) replay_set: SqlStr,
    pub(crate) replay_delete: SqlStr,
    pub(crate) replay_many: SqlStr,
    pub(crate) acquire: SqlStr,
    pub(crate) lock_holder: SqlStr,
    pub(crate) extend: SqlStr,
    pub(crate) release: SqlStr,
    pub(crate) sweep_values: SqlStr,
    pub(crate) sweep_locks: SqlStr,
    /// The writes above, each also recording itself for the backends that missed it.
    pub(crate) journaled: Journaled,
    pub(crate) claim_journal: SqlStr,
    pub(crate) journal_rows: SqlStr,
    pub(crate) settle_journal: SqlStr,
    pub(crate) schema_key: String,
}

/// Caller writes that also leave a replay record for each backend that missed them, in the
/// same statement (so in the same transaction): each takes the plain statement's parameters,
/// then the names of the backends that missed it as one more (`text[]`).
#[derive(Debug)]
pub(crate) struct Journaled {
    pub(crate) set_versioned: SqlStr,
    pub(crate) delete_versioned: SqlStr,
    pub(crate) set_many: SqlStr,
    pub(crate) delete_many: SqlStr,
    pub(crate) increment: SqlStr,
    pub(crate) insert_if_absent: SqlStr,
    pub(crate) compare_and_set: SqlStr,
}

/// A `WITH` item that records each `(key, version)` row of `records` for each backend named
/// in parameter `$targets` (`text[]`), in key order. `records` reads the rows the write
/// returned, so the write runs first: every statement locks data rows, then journal rows, each
/// in key order, and two statements cannot deadlock. A record written again is claimed by no
/// one.
fn journal_cte(journal: &str, records: &str, targets: usize) -> String {
    format!(
        "j AS (INSERT INTO {journal} (target, key, version) \
           SELECT tg, r.key, r.version FROM ({records}) AS r(key, version) \
           CROSS JOIN unnest(${targets}::text[]) AS tg ORDER BY 2, 1 \
           ON CONFLICT (target, key) DO UPDATE SET version = EXCLUDED.version, \
             claim = NULL, claimed_until = NULL)"
    )
}

/// `write` (one data-modifying statement), and in the same statement the records of
/// `records` (see [`journal_cte`]); answers `answer`, which reads `write`'s `RETURNING` rows as
/// `w`.
fn journaled(write: &str, cte: String, answer: &str) -> SqlStr {
    sql(format!("WITH w AS ({write}), {cte} {answer}"))
}

fn sql(text: String) -> SqlStr {
    // Audited: only identifiers validated by `config::identifier` are interpolated, and quoted.
    AssertSqlSafe(Arc::<str>::from(text)).into_sql_str()
}

impl Statements {
    pub(crate) fn new(schema: &str, table: &str) -> Self {
        let values = format!(r#""{schema}"."{table}""#);
        let locks = format!(r#""{schema}"."{table}_locks""#);
        let fence = format!(r#""{schema}"."{table}_fence""#);
        let journal = format!(r#""{schema}"."{table}_journal""#);
        // A TTL travels as milliseconds (float8, exact up to 2^53) and expiry is computed on the
        // server's clock: `now()` is the statement's transaction time.
        let expiry = "now() + $3::float8 * interval '1 millisecond'";
        // A row without a live value: a tombstone or an expired value.
        let dead = "t.value IS NULL OR (t.expires_at IS NOT NULL AND t.expires_at <= now())";
        let answer = "CASE WHEN t.value IS NOT NULL AND (t.expires_at IS NULL OR t.expires_at > now()) \
                      THEN t.value END, COALESCE(t.version, 0), \
                      (extract(epoch FROM t.expires_at - now()) * 1000)::float8";
        let next_token = format!(
            "setval('{fence}', GREATEST(nextval('{fence}'), \
             (extract(epoch FROM clock_timestamp()) * 1000000)::bigint))"
        );
        // Atomic operations: one statement each; every one answers the key's live value (or
        // NULL), its version and its remaining TTL in ms (NULL: none). A write's version is
        // the larger of the one asked and one more than the stored one.
        // $1 key, $2 delta, $3 TTL of a key this creates, $4 version.
        let increment = format!(
            "INSERT INTO {values} AS t (key, value, expires_at, version) \
             VALUES ($1, convert_to($2::int8::text, 'UTF8'), {expiry}, $4) \
             ON CONFLICT (key) DO UPDATE SET \
               value = convert_to((CASE WHEN {dead} THEN 0 \
                 ELSE convert_from(t.value, 'UTF8')::int8 END + $2::int8)::text, 'UTF8'), \
               expires_at = CASE WHEN {dead} THEN EXCLUDED.expires_at ELSE t.expires_at END, \
               version = GREATEST(t.version + 1, EXCLUDED.version) \
             RETURNING {answer}"
        );
        // $1 key, $2 value, $3 TTL, $4 version; no row when a live value is there.
        let insert_if_absent = format!(
            "INSERT INTO {values} AS t (key, value, expires_at, version) \
             VALUES ($1, $2, {expiry}, $4) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
               expires_at = EXCLUDED.expires_at, version = GREATEST(t.version + 1, EXCLUDED.version) \
             WHERE {dead} RETURNING {answer}"
        );
        // $1 key, $2 value, $3 TTL, $4 version, $5 expected; no row when it does not match.
        let compare_and_set = format!(
            "UPDATE {values} AS t SET value = $2, expires_at = {expiry}, \
               version = GREATEST(t.version + 1, $4) \
             WHERE key = $1 AND NOT ({dead}) AND value = $5 RETURNING {answer}"
        );
        // set_versioned for arrays of distinct keys, values, TTLs in ms (NULL: none), versions.
        // Rows are taken in key order, so two batches over the same keys cannot deadlock.
        let set_many = format!(
            "INSERT INTO {values} (key, value, expires_at, version) \
             SELECT k, v, now() + t * interval '1 millisecond', ver \
             FROM unnest($1::text[], $2::bytea[], $3::float8[], $4::int8[]) AS u(k, v, t, ver) \
             ORDER BY k \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
               expires_at = EXCLUDED.expires_at, version = EXCLUDED.version"
        );
        // delete_versioned for arrays of distinct keys and versions; the keys that held a
        // live value come back.
        let delete_many_with = format!(
            "WITH old AS (\
               SELECT key FROM {values} WHERE key = ANY($1) AND value IS NOT NULL \
               AND (expires_at IS NULL OR expires_at > now()) ORDER BY key FOR UPDATE), \
             tombstones AS (\
               INSERT INTO {values} (key, value, expires_at, version) \
               SELECT k, NULL, now(), ver FROM unnest($1::text[], $2::int8[]) AS u(k, ver) \
               ORDER BY k \
               ON CONFLICT (key) DO UPDATE SET value = NULL, expires_at = now(), \
                 version = EXCLUDED.version RETURNING key, version)"
        );
        let delete_many_answer = "SELECT key FROM old";
        // $4: the version.
        let set_versioned = format!(
            "INSERT INTO {values} (key, value, expires_at, version) VALUES ($1, $2, {expiry}, $4) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
               expires_at = EXCLUDED.expires_at, version = EXCLUDED.version"
        );
        // $2: the version. Leaves a tombstone; answers whether a live value was there.
        let delete_versioned_with = format!(
            "WITH old AS (\
               SELECT value IS NOT NULL AND (expires_at IS NULL OR expires_at > now()) AS live \
               FROM {values} WHERE key = $1 FOR UPDATE), \
             tombstone AS (\
               INSERT INTO {values} (key, value, expires_at, version) VALUES ($1, NULL, now(), $2) \
               ON CONFLICT (key) DO UPDATE SET value = NULL, expires_at = now(), \
                 version = EXCLUDED.version RETURNING key, version)"
        );
        let delete_versioned_answer = "SELECT coalesce((SELECT live FROM old), false)";
        // Each journal step reads the rows its write returned, so every statement locks the
        // data rows first (in key order), then the journal rows (in key order).
        let written = "SELECT key, version FROM w";
        let returned = "SELECT $1::text, $4::int8 FROM w";
        let journaled = Journaled {
            set_versioned: journaled(
                &format!("{set_versioned} RETURNING key, version"),
                journal_cte(&journal, written, 5),
                "SELECT 1",
            ),
            delete_versioned: sql(format!(
                "{delete_versioned_with}, {} {delete_versioned_answer}",
                journal_cte(&journal, "SELECT key, version FROM tombstone", 3)
            )),
            set_many: journaled(
                &format!("{set_many} RETURNING key, version"),
                journal_cte(&journal, written, 5),
                "SELECT 1",
            ),
            delete_many: sql(format!(
                "{delete_many_with}, {} {delete_many_answer}",
                journal_cte(&journal, "SELECT key, version FROM tombstones", 3)
            )),
            increment: journaled(
                &increment,
                journal_cte(&journal, returned, 5),
                "SELECT * FROM w",
            ),
            insert_if_absent: journaled(
                &insert_if_absent,
                journal_cte(&journal, returned, 5),
                "SELECT * FROM w",
            ),
            compare_and_set: journaled(
                &compare_and_set,
                journal_cte(&journal, returned, 6),
                "SELECT * FROM w",
            ),
        };
        Self {
            ddl: vec![
                sql(format!(r#"CREATE SCHEMA IF NOT EXISTS "{schema}""#)),
                // `version`: the write's version (see `WriteVersion`); a NULL value with a
                // version is a delete's tombstone. A row stays for the tombstone time after it
                // expired (a tombstone expires when it is written), then the sweeper deletes it.
                sql(format!(
                    "CREATE TABLE IF NOT EXISTS {values} (\
                     key text PRIMARY KEY, value bytea, expires_at timestamptz, version bigint)"
                )),
                // Tables made before versions: add the column, once, without taking the
                // table's lock when it is there already.
                sql(format!(
                    "DO $$ BEGIN \
                       IF NOT EXISTS (SELECT 1 FROM information_schema.columns \
                         WHERE table_schema = '{schema}' AND table_name = '{table}' \
                           AND column_name = 'version') THEN \
                         ALTER TABLE {values} ADD COLUMN version bigint; \
                         ALTER TABLE {values} ALTER COLUMN value DROP NOT NULL; \
                       END IF; \
                     END $$"
                )),
                sql(format!(
                    r#"CREATE INDEX IF NOT EXISTS "{table}_expires_at" ON {values} (expires_at) WHERE expires_at IS NOT NULL"#
                )),
                sql(format!(
                    "CREATE TABLE IF NOT EXISTS {locks} (\
                     name text PRIMARY KEY, holder text NOT NULL, token bigint NOT NULL, \
                     expires_at timestamptz NOT NULL)"
                )),
                sql(format!("CREATE SEQUENCE IF NOT EXISTS {fence}")),
                // Replay records: a write this backend served that `target` (a backend above
                // it) missed; the key's current row is what gets replayed. `claim` and
                // `claimed_until`: the process replaying it now, and until when.
                sql(format!(
                    "CREATE TABLE IF NOT EXISTS {journal} (\
                     target text NOT NULL, key text NOT NULL, version bigint NOT NULL, \
                     claim bigint, claimed_until timestamptz, PRIMARY KEY (target, key))"
                )),
            ],
            get: sql(format!(
                "SELECT value FROM {values} WHERE key = $1 AND value IS NOT NULL \
                 AND (expires_at IS NULL OR expires_at > now())"
            )),
            increment: sql(increment),
            insert_if_absent: sql(insert_if_absent),
            compare_and_set: sql(compare_and_set),
            // $1 key: what a refused operation found.
            current: sql(format!("SELECT {answer} FROM {values} AS t WHERE key = $1")),
            // $1: the keys; a row (key, value) for each one held, in no order. The caller puts
            // them in the keys' order: `= ANY` is an index scan on any table, where joining
            // `unnest($1) WITH ORDINALITY` to the table let the planner hash the whole table
            // once it held a few thousand rows, whenever it was planned for the keys given (1.3
            // ms against 0.13 ms at 12,100 rows, PostgreSQL 15).
            get_many: sql(format!(
                "SELECT key, value FROM {values} WHERE key = ANY($1) AND value IS NOT NULL \
                 AND (expires_at IS NULL OR expires_at > now())"
            )),
            set_many: sql(set_many),
            delete_many: sql(format!("{delete_many_with} {delete_many_answer}")),
            set_versioned: sql(set_versioned),
            delete_versioned: sql(format!("{delete_versioned_with} {delete_versioned_answer}")),
            // Replays apply only over an older version or none; a row comes back when they do.
            replay_set: sql(format!(
                "INSERT INTO {values} AS t (key, value, expires_at, version) \
                 VALUES ($1, $2, {expiry}, $4) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
                   expires_at = EXCLUDED.expires_at, version = EXCLUDED.version \
                 WHERE t.version IS NULL OR t.version < EXCLUDED.version \
                 RETURNING true"
            )),
            replay_delete: sql(format!(
                "INSERT INTO {values} AS t (key, value, expires_at, version) \
                 VALUES ($1, NULL, now(), $2) \
                 ON CONFLICT (key) DO UPDATE SET value = NULL, expires_at = now(), \
                   version = EXCLUDED.version \
                 WHERE t.version IS NULL OR t.version < EXCLUDED.version \
                 RETURNING true"
            )),
            // replay_set and replay_delete for arrays of distinct keys, values (NULL: a
            // delete), TTLs in ms (NULL: none) and versions, in one statement; the keys it
            // applied come back. Rows are taken in key order, as set_many does.
            replay_many: sql(format!(
                "INSERT INTO {values} AS t (key, value, expires_at, version) \
                 SELECT k, v, CASE WHEN v IS NULL THEN now() \
                   ELSE now() + ms * interval '1 millisecond' END, ver \
                 FROM unnest($1::text[], $2::bytea[], $3::float8[], $4::int8[]) AS u(k, v, ms, ver) \
                 ORDER BY k \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
                   expires_at = EXCLUDED.expires_at, version = EXCLUDED.version \
                 WHERE t.version IS NULL OR t.version < EXCLUDED.version \
                 RETURNING key"
            )),
            // Granted when the lease is free, expired, or already the caller's (then extended,
            // keeping its token). The token is the server's clock in microseconds or one more
            // than the sequence's last value, whichever is larger: it only grows, and stays
            // comparable with the tokens Redis and the memory store issue the same way.
            //
            // A token must be drawn once the row is locked, or a statement that waited for the
            // row would be granted with a token drawn before the grants made while it waited.
            // So the update path draws its own token, and a lock's row is never deleted while a
            // statement may still be waiting for it (release expires the row; the sweeper
            // deletes rows only once they have been expired for longer than the query timeout).
            // The insert path's token, drawn before the statement looked for the row, is then
            // used only when no row existed, and so no grant was made while it waited.
            acquire: sql(format!(
                "INSERT INTO {locks} AS l (name, holder, token, expires_at) \
                 VALUES ($1, $2, {next_token}, {expiry}) \
                 ON CONFLICT (name) DO UPDATE SET \
                   holder = EXCLUDED.holder, \
                   token = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > now() \
                                THEN l.token ELSE {next_token} END, \
                   expires_at = EXCLUDED.expires_at \
                 WHERE l.expires_at <= now() OR l.holder = EXCLUDED.holder \
                 RETURNING token"
            )),
            lock_holder: sql(format!(
                "SELECT holder, (extract(epoch FROM expires_at - now()) * 1000)::float8 \
                 FROM {locks} WHERE name = $1 AND expires_at > now()"
            )),
            extend: sql(format!(
                "UPDATE {locks} SET expires_at = {expiry} \
                 WHERE name = $1 AND holder = $2 AND expires_at > now() RETURNING token"
            )),
            // Expires the lease rather than deleting its row: see `acquire`.
            release: sql(format!(
                "UPDATE {locks} SET expires_at = '-infinity' \
                 WHERE name = $1 AND holder = $2 AND expires_at > now()"
            )),
            // $2: the tombstone time in ms: a row's version outlives its value by that much.
            sweep_values: sql(format!(
                "DELETE FROM {values} WHERE ctid = ANY(ARRAY(\
                 SELECT ctid FROM {values} \
                 WHERE expires_at <= now() - $2::float8 * interval '1 millisecond' LIMIT $1))"
            )),
            // $2: the query timeout in ms. See `acquire` for why rows stay that long.
            sweep_locks: sql(format!(
                "DELETE FROM {locks} WHERE ctid = ANY(ARRAY(\
                 SELECT ctid FROM {locks} \
                 WHERE expires_at <= now() - $2::float8 * interval '1 millisecond' LIMIT $1))"
            )),
            journaled,
            // $1 target, $2 how many, $3 the claim, $4 its lease in ms. Records no live claim
            // holds, skipping rows another claim is taking now; the keys and the records'
            // versions come back. The keys' current rows are read by `journal_rows`, a
            // statement of its own: this one's snapshot may predate a write its UPDATE follows.
            claim_journal: sql(format!(
                "WITH c AS (\
                   SELECT key FROM {journal} WHERE target = $1 \
                   AND (claimed_until IS NULL OR claimed_until <= now()) \
                   ORDER BY key LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 UPDATE {journal} AS j SET claim = $3, \
                   claimed_until = now() + $4::float8 * interval '1 millisecond' \
                 FROM c WHERE j.target = $1 AND j.key = c.key RETURNING j.key, j.version"
            )),
            // $1 keys, $2 the records' versions: each key's current row, the live value (or
            // NULL), its version (the record's when there is no row), its TTL left in ms.
            journal_rows: sql(format!(
                "SELECT u.key, CASE WHEN t.value IS NOT NULL \
                     AND (t.expires_at IS NULL OR t.expires_at > now()) THEN t.value END, \
                   COALESCE(t.version, u.version), \
                   (extract(epoch FROM t.expires_at - now()) * 1000)::float8 \
                 FROM unnest($1::text[], $2::int8[]) AS u(key, version) \
                 LEFT JOIN {values} AS t ON t.key = u.key"
            )),
            // $1 target, $2 the claim, $3 keys: the records that claim still holds, taken in
            // key order.
            settle_journal: sql(format!(
                "DELETE FROM {journal} WHERE ctid = ANY(ARRAY(\
                 SELECT ctid FROM {journal} WHERE target = $1 AND claim = $2 AND key = ANY($3) \
                 ORDER BY key FOR UPDATE))"
            )),
            schema_key: format!("resilient-storage:{schema}.{table}"),
        }
    }
}
