//! Test support, behind the `testing` feature: a backend that fails on command, and the
//! conformance suite every backend runs. Public so users can test their own code against
//! faults.

pub mod conformance;
mod fault;

pub use fault::{Fault, FaultBackend};
