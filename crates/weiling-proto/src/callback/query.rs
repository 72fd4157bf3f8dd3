//! The callback query string: exactly one each of `msg_signature`, `timestamp`, `nonce` (and `echostr`).

/// Why a query string is not a callback's: a bounded label the receiver reports as a bad request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub &'static str);

/// Longest accepted value of any callback query parameter; the real ones are far shorter, and an
/// `echostr` is a few hundred bytes of base64.
const MAX_PARAM_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackQuery {
    pub msg_signature: String,
    pub timestamp: String,
    pub nonce: String,
    pub echostr: Option<String>,
}

impl CallbackQuery {
    /// Parses the raw query. Missing, repeated or oversized parameters are refused: a repeated
    /// parameter means two parsers could disagree on which value was signed.
    pub fn parse(raw: &str) -> Result<Self, QueryError> {
        let mut msg_signature = None;
        let mut timestamp = None;
        let mut nonce = None;
        let mut echostr = None;
        for (name, value) in form_urlencoded::parse(raw.as_bytes()) {
            let slot = match name.as_ref() {
                "msg_signature" => &mut msg_signature,
                "timestamp" => &mut timestamp,
                "nonce" => &mut nonce,
                "echostr" => &mut echostr,
                _ => continue,
            };
            if slot.is_some() {
                return Err(QueryError("repeated query parameter"));
            }
            if value.len() > MAX_PARAM_LEN {
                return Err(QueryError("oversized query parameter"));
            }
            *slot = Some(value.into_owned());
        }
        let required = |v: Option<String>| {
            v.filter(|v| !v.is_empty())
                .ok_or(QueryError("missing query parameter"))
        };
        Ok(Self {
            msg_signature: required(msg_signature)?,
            timestamp: required(timestamp)?,
            nonce: required(nonce)?,
            echostr,
        })
    }

    /// The query string that carries these values (used by senders and dead-letter replay).
    pub fn to_query_string(&self) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        out.append_pair("msg_signature", &self.msg_signature)
            .append_pair("timestamp", &self.timestamp)
            .append_pair("nonce", &self.nonce);
        if let Some(echostr) = &self.echostr {
            out.append_pair("echostr", echostr);
        }
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_parameters_and_ignores_others() {
        let q = CallbackQuery::parse("msg_signature=ab&timestamp=1&nonce=n%20x&extra=1").unwrap();
        assert_eq!(q.msg_signature, "ab");
        assert_eq!(q.nonce, "n x");
        assert_eq!(q.echostr, None);
        let round = CallbackQuery::parse(&q.to_query_string()).unwrap();
        assert_eq!(round, q);
    }

    #[test]
    fn refuses_missing_empty_repeated_and_oversized() {
        for raw in [
            "",
            "timestamp=1&nonce=2",
            "msg_signature=&timestamp=1&nonce=2",
            "msg_signature=a&timestamp=1&nonce=2&nonce=3",
            "msg_signature=a&msg_signature=a&timestamp=1&nonce=2",
        ] {
            assert!(CallbackQuery::parse(raw).is_err(), "{raw}");
        }
        let long = format!("msg_signature=a&timestamp=1&nonce={}", "x".repeat(5000));
        assert!(CallbackQuery::parse(&long).is_err());
    }
}
