//! Stage 6 policy: one pure mapping from (HTTP status, Weiling `code`) to what the client does next.
//!
//! Inputs that are not a plain HTTP answer are encoded in the same two values, so the whole table
//! stays one function:
//! - `status == TRANSPORT_ERROR` (0): no HTTP answer at all (connect refused, reset, timeout).
//! - `code == None` with a 2xx status: the body was not JSON, had no usable `code`, or was too big.

/// The status used for "no HTTP answer": transport failures and timeouts.
pub const TRANSPORT_ERROR: u16 = 0;

/// Weiling codes that mean "server busy" (500 in both enum versions, 1017 "RPC busy" in v2, see
/// weiling-api.md §3): the server is fine with the request, so it is worth asking again.
const SERVER_BUSY_CODES: [i64; 2] = [500, 1017];

/// What to do with one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// `code == 0`: read the records.
    Done,
    /// The access token is no longer accepted: refresh it, then ask once more.
    RefreshTokenAndRetryOnce,
    /// Weiling says "rate limited": wait (exponential backoff, at least any Retry-After) and ask again.
    BackOff,
    /// Transient failure (transport, timeout, HTTP 429 or 5xx, "server busy" code): wait and ask again.
    Retry,
    /// Asking again cannot help (bad parameters, other 4xx, unparseable body).
    GiveUp,
}

impl Decision {
    /// A bounded label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::RefreshTokenAndRetryOnce => "refresh_token",
            Self::BackOff => "back_off",
            Self::Retry => "retry",
            Self::GiveUp => "give_up",
        }
    }
}

/// Maps one answer to a [`Decision`]. See the module doc for how transport errors and unparseable
/// bodies are encoded. Configured codes win over the built-in "server busy" codes, so an operator
/// can reclassify 500 or 1017.
pub fn classify(
    status: u16,
    code: Option<i64>,
    auth_codes: &[i64],
    rate_codes: &[i64],
) -> Decision {
    match status {
        TRANSPORT_ERROR | 429 | 500..=599 => Decision::Retry,
        200..=299 => match code {
            None => Decision::GiveUp,
            Some(0) => Decision::Done,
            Some(c) => by_code(c, auth_codes, rate_codes),
        },
        // A gateway may put Weiling's envelope on a 4xx; its code then says more than the status.
        400..=499 => match code {
            Some(c) if auth_codes.contains(&c) => Decision::RefreshTokenAndRetryOnce,
            Some(c) if rate_codes.contains(&c) => Decision::BackOff,
            _ => Decision::GiveUp,
        },
        _ => Decision::GiveUp,
    }
}

fn by_code(code: i64, auth_codes: &[i64], rate_codes: &[i64]) -> Decision {
    if auth_codes.contains(&code) {
        Decision::RefreshTokenAndRetryOnce
    } else if rate_codes.contains(&code) {
        Decision::BackOff
    } else if SERVER_BUSY_CODES.contains(&code) {
        Decision::Retry
    } else {
        Decision::GiveUp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTH: [i64; 3] = [403, 501, 1007];
    const RATE: [i64; 2] = [1015, 1009];

    #[test]
    fn every_row_of_the_table() {
        use Decision::*;
        let cases: &[(u16, Option<i64>, Decision, &str)] = &[
            (200, Some(0), Done, "ok"),
            (201, Some(0), Done, "any 2xx with code 0"),
            (200, Some(403), RefreshTokenAndRetryOnce, "auth 403"),
            (200, Some(501), RefreshTokenAndRetryOnce, "auth 501"),
            (200, Some(1007), RefreshTokenAndRetryOnce, "auth 1007"),
            (200, Some(1015), BackOff, "rate 1015"),
            (200, Some(1009), BackOff, "rate 1009"),
            (200, Some(500), Retry, "server busy code"),
            (200, Some(1017), Retry, "rpc busy code"),
            (200, Some(1000), GiveUp, "missing parameter"),
            (200, Some(1001), GiveUp, "invalid parameter"),
            (200, Some(1011), GiveUp, "body not parsed"),
            (200, Some(1012), GiveUp, "over limit"),
            (200, Some(1013), GiveUp, "bad format"),
            (200, Some(-1), GiveUp, "unknown negative code"),
            (200, Some(3000), GiveUp, "customer does not exist"),
            (200, None, GiveUp, "unparseable body after 2xx"),
            (TRANSPORT_ERROR, None, Retry, "transport error / timeout"),
            (429, None, Retry, "http 429"),
            (429, Some(1015), Retry, "http 429 with a rate code"),
            (500, None, Retry, "http 500"),
            (502, None, Retry, "http 502"),
            (503, None, Retry, "http 503"),
            (504, Some(0), Retry, "5xx wins over a code"),
            (599, None, Retry, "last 5xx"),
            (400, None, GiveUp, "http 400"),
            (401, None, GiveUp, "http 401 without envelope"),
            (404, None, GiveUp, "http 404"),
            (413, None, GiveUp, "http 413"),
            (
                403,
                Some(403),
                RefreshTokenAndRetryOnce,
                "4xx carrying an auth code",
            ),
            (400, Some(1009), BackOff, "4xx carrying a rate code"),
            (400, Some(1012), GiveUp, "4xx carrying another code"),
            (302, None, GiveUp, "redirect"),
            (100, None, GiveUp, "informational"),
        ];
        for &(status, code, want, why) in cases {
            assert_eq!(classify(status, code, &AUTH, &RATE), want, "{why}");
        }
    }

    #[test]
    fn configured_codes_override_the_built_in_busy_codes() {
        assert_eq!(classify(200, Some(500), &[], &[500]), Decision::BackOff);
        assert_eq!(
            classify(200, Some(1017), &[1017], &[]),
            Decision::RefreshTokenAndRetryOnce
        );
    }

    #[test]
    fn empty_code_lists_make_auth_and_rate_codes_plain_failures() {
        assert_eq!(classify(200, Some(403), &[], &[]), Decision::GiveUp);
        assert_eq!(classify(200, Some(1015), &[], &[]), Decision::GiveUp);
    }
}
