//! Stage 6: one Weiling batch call per window flush (token, rate limit, retries, circuit breaker).
