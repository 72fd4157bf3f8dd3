//! Requests sent the way Weiling's sender sends them: one whose connection failed is sent again,
//! because its answer may have been lost after the relay had already counted it.

/// How many times a request is sent again after a failed connection.
const MAX_RESENDS: usize = 5;

/// Posts `body` as JSON to `url`, again after each failed connection, at most [`MAX_RESENDS`]
/// times. Returns the answer's status (`None` when no try got one) and how many tries failed.
pub async fn post(http: &reqwest::Client, url: &str, body: &[u8]) -> (Option<u16>, usize) {
    let mut failed = 0;
    loop {
        let sent = http
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await;
        match sent {
            Ok(answer) => return (Some(answer.status().as_u16()), failed),
            Err(_) if failed < MAX_RESENDS => failed += 1,
            Err(_) => return (None, failed + 1),
        }
    }
}
