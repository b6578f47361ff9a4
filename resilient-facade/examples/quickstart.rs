//! The five-minute tour: runs with no server on the embedded memory store; set `REDIS_URL` or
//! `DATABASE_URL` (with the `redis` / `postgres` features) to put servers in front of it.
//!
//! ```text
//! cargo run -p resilient-storage --example quickstart
//! ```

use std::time::Duration;

use resilient_storage::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = ResilientStorage::builder()
        .strategy(Strategy::Failover)
        .attempt_timeout(Duration::from_millis(250))
        .deadline(Duration::from_secs(1));
    let mut servers = 0;
    for (variable, priority) in [("REDIS_URL", 1), ("DATABASE_URL", 2)] {
        if let Ok(url) = std::env::var(variable) {
            builder = builder.backend_url(&url, priority)?;
            servers += 1;
        }
    }
    if servers == 0 {
        // Only the process-local memory store: locks may use it, and grants say they are local.
        builder = builder.local_locks(true);
    }
    let storage = builder.build().await?;
    let mut events = storage.subscribe();
    println!("backends, in priority order: {:?}", storage.backend_names());

    storage
        .set(
            "greeting",
            "hello, resilient world",
            Some(Duration::from_secs(60)),
        )
        .await?;
    let greeting = storage.get("greeting").await?;
    println!(
        "get greeting -> {:?}",
        greeting.as_deref().map(String::from_utf8_lossy)
    );

    storage
        .set_json("user:42", &("Ada Lovelace", 1815), None)
        .await?;
    let user: Option<(String, u32)> = storage.get_json("user:42").await?;
    println!("get_json user:42 -> {user:?}");

    match storage
        .acquire_lock("job:nightly-report", "worker-1", Duration::from_secs(30))
        .await?
    {
        LockOutcome::Acquired(grant) => {
            println!(
                "lock acquired: token {} from {} (local: {})",
                grant.token, grant.backend, grant.local
            );
            let other = storage
                .acquire_lock("job:nightly-report", "worker-2", Duration::from_secs(30))
                .await?;
            println!("a second worker is told: {other:?}");
            storage
                .release_lock("job:nightly-report", "worker-1")
                .await?;
        }
        other => println!("lock busy: {other:?}"),
    }

    println!("deleted greeting: {}", storage.delete("greeting").await?);
    println!(
        "health report:\n{}",
        serde_json::to_string_pretty(&storage.health())?
    );
    while let Ok(event) = events.try_recv() {
        println!("event: {}", serde_json::to_string(&event)?);
    }
    storage.shutdown().await;
    Ok(())
}
