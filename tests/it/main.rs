//! The single integration test binary: every test talks to the real local RabbitMQ.

mod support;
