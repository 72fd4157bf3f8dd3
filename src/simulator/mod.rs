//! The Weiling stand-in for tests, the demo, the benchmarks and `weiling-relay sim`.
