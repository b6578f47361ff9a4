//! `btree://`: an in-process ordered map as a resilient-storage backend, written from
//! `docs/writing-a-backend.md` as a third party would. Versioned (replays never overwrite a newer
//! write) and with locks (fencing tokens by the core's rule). Process-local: other processes do
//! not see it, so it holds locks only where local locks are enabled.
//!
//! URL options: `?name=` (default `btree`), `?tombstone_ttl=` (default `1h`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use resilient_core::{
    Backend, BackendUrl, Bytes, Capabilities, Error, FencingToken, HealthProbe, KeyWrite,
    LockGrant, LockOutcome, Operation, Result, WriteMode, WriteOptions, WriteOutcome, WriteVersion,
    async_trait, rules,
};
use tokio::time::Instant;

/// One key: its value (none after a delete or once expired) and the version of its last write,
/// kept until `version_until` so an older replay cannot bring it back.
#[derive(Debug, Clone)]
struct Entry {
    value: Option<Bytes>,
    expires_at: Option<Instant>,
    version: WriteVersion,
    version_until: Option<Instant>,
}

impl Entry {
    fn live_value(&self, now: Instant) -> Option<&Bytes> {
        self.value
            .as_ref()
            .filter(|_| self.expires_at.is_none_or(|at| now < at))
    }

    fn version(&self, now: Instant) -> Option<WriteVersion> {
        self.version_until
            .is_none_or(|until| now < until)
            .then_some(self.version)
    }
}

#[derive(Debug)]
struct Lease {
    holder: String,
    token: FencingToken,
    expires_at: Instant,
}

/// The `btree://` backend.
pub struct BTreeBackend {
    name: String,
    tombstone_ttl: Duration,
    entries: Mutex<BTreeMap<String, Entry>>,
    leases: Mutex<HashMap<String, Lease>>,
    /// The last token of every lock name, so tokens grow even after a lease is gone (one
    /// number per name ever locked: a server-backed store would keep it beside the lease).
    fences: Mutex<HashMap<String, FencingToken>>,
}

// Prints sizes, never keys or values.
impl std::fmt::Debug for BTreeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BTreeBackend")
            .field("name", &self.name)
            .field("keys", &lock(&self.entries).len())
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl BTreeBackend {
    /// An empty map named `name`.
    pub fn new(name: &str, tombstone_ttl: Duration) -> Self {
        Self {
            name: name.to_owned(),
            tombstone_ttl,
            entries: Mutex::new(BTreeMap::new()),
            leases: Mutex::new(HashMap::new()),
            fences: Mutex::new(HashMap::new()),
        }
    }

    /// From `btree://?name=...&tombstone_ttl=...`.
    pub fn from_url(url: &BackendUrl) -> Result<Self> {
        let mut options = url.options("btree");
        let name = options.string("name").unwrap_or_else(|| "btree".to_owned());
        let day = Duration::from_secs(86_400);
        let tombstone_ttl = options
            .duration("tombstone_ttl", Duration::from_secs(1)..=30 * day)?
            .unwrap_or(Duration::from_secs(3600));
        options.finish()?;
        Ok(Self::new(&name, tombstone_ttl))
    }

    fn lease_grant(name: &str, holder: &str, token: FencingToken, ttl: Duration) -> LockGrant {
        LockGrant::new(name, holder, token, ttl)
    }
}

#[async_trait]
impl Backend for BTreeBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn scheme(&self) -> &str {
        "btree"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .native_ttl(true)
            .versioned(true)
            .locks(true)
    }

    async fn health_check(&self) -> Result<HealthProbe> {
        Ok(HealthProbe::Healthy)
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let now = Instant::now();
        Ok(lock(&self.entries)
            .get(key)
            .and_then(|entry| entry.live_value(now).cloned()))
    }

    async fn write(
        &self,
        key: &str,
        write: KeyWrite,
        options: WriteOptions,
    ) -> Result<WriteOutcome> {
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        let existing = entries.get(key);
        let existed = existing.is_some_and(|e| e.live_value(now).is_some());
        if options.mode == WriteMode::IfNewer
            && !rules::replay_applies(existing.and_then(|e| e.version(now)), options.version)
        {
            return Ok(WriteOutcome::superseded());
        }
        let entry = match write {
            KeyWrite::Set { value, ttl } => {
                let expires_at = ttl.and_then(|ttl| now.checked_add(ttl));
                Entry {
                    value: Some(value),
                    expires_at,
                    version: options.version,
                    version_until: expires_at.and_then(|at| at.checked_add(self.tombstone_ttl)),
                }
            }
            KeyWrite::Delete => Entry {
                value: None,
                expires_at: None,
                version: options.version,
                version_until: now.checked_add(self.tombstone_ttl),
            },
            _ => return Err(Error::unsupported(&self.name, Operation::Set)),
        };
        entries.insert(key.to_owned(), entry);
        // Expired values and tombstones past their time go once the map has doubled, so it is
        // bounded by the live keys, not by every key ever written.
        if entries.len() >= 1024 && entries.len().is_power_of_two() {
            entries.retain(|_, e| e.live_value(now).is_some() || e.version(now).is_some());
        }
        Ok(WriteOutcome::applied(existed))
    }

    async fn acquire_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<LockOutcome> {
        let now = Instant::now();
        let mut leases = lock(&self.leases);
        if let Some(lease) = leases.get_mut(name).filter(|l| now < l.expires_at) {
            if lease.holder != holder {
                return Ok(LockOutcome::Held {
                    holder: Some(lease.holder.clone()),
                    remaining: Some(lease.expires_at - now),
                });
            }
            // The same holder again: a longer lease, the same token.
            lease.expires_at = now + ttl;
            return Ok(LockOutcome::Acquired(Self::lease_grant(
                name,
                holder,
                lease.token,
                ttl,
            )));
        }
        if leases.len() >= 1024 && leases.len().is_power_of_two() {
            leases.retain(|_, lease| now < lease.expires_at);
        }
        let mut fences = lock(&self.fences);
        let token = rules::next_fencing_token(rules::now_micros(), fences.get(name).copied());
        fences.insert(name.to_owned(), token);
        leases.insert(
            name.to_owned(),
            Lease {
                holder: holder.to_owned(),
                token,
                expires_at: now + ttl,
            },
        );
        Ok(LockOutcome::Acquired(Self::lease_grant(
            name, holder, token, ttl,
        )))
    }

    async fn extend_lock(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<LockGrant>> {
        let now = Instant::now();
        let mut leases = lock(&self.leases);
        Ok(leases
            .get_mut(name)
            .filter(|l| l.holder == holder && now < l.expires_at)
            .map(|lease| {
                lease.expires_at = now + ttl;
                Self::lease_grant(name, holder, lease.token, ttl)
            }))
    }

    async fn release_lock(&self, name: &str, holder: &str) -> Result<bool> {
        let now = Instant::now();
        let mut leases = lock(&self.leases);
        let ours = leases
            .get(name)
            .is_some_and(|l| l.holder == holder && now < l.expires_at);
        if ours {
            leases.remove(name);
        }
        Ok(ours)
    }
}

async fn build(url: BackendUrl) -> Result<Arc<BTreeBackend>> {
    Ok(Arc::new(BTreeBackend::from_url(&url)?))
}

resilient_core::register_backend!(schemes: ["btree"], build: build);
