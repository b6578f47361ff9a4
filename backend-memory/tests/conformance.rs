//! The memory backend passes the shared conformance suite and registers itself.

use resilient_backend_memory::{self as memory, MemoryBackend};
use resilient_core::testing::conformance;

#[tokio::test]
async fn memory_backend_passes_the_conformance_suite() {
    conformance::run(&MemoryBackend::default()).await;
}

#[test]
fn registers_the_memory_scheme_once_even_when_registered_by_hand() {
    assert!(resilient_core::registry::schemes().contains(&"memory"));
    memory::register().expect("registering again is a no-op");
    assert!(resilient_core::registry::lookup("memory").is_ok());
}
