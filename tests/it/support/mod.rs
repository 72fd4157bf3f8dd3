//! The tests' harness, in one place: a relay in this process ([`in_process::InProcessRig`]) or as a
//! child process ([`process::ProcessRig`]), fault injection ([`proxy`]), and private broker nodes and
//! PostgreSQL clusters for tests that must not disturb the shared ones. The rig the demo and the bench
//! share (simulator + relay + checking consumer) is the `relay-harness` crate.

pub mod fleet;
pub mod gate;
pub mod in_process;
pub mod private_broker;
pub mod private_postgres;
pub mod process;
pub mod proxy;
pub mod resend;
