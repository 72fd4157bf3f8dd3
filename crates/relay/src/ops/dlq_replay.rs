//! `weiling-relay dlq replay`: takes dead letters and sends them through verify → persist again with
//! the current configuration, typically after a Token or EncodingAESKey fix or rotation.
//!
//! One bounded pass over at most the messages the queue held when it began (`basic_get`, manual
//! ack). Per letter, by its `x-reason`:
//! - `decrypt`, `receive_id`: the original envelope is verified again with the current Tokens
//!   ([`Verifier::verify_post_replay`]: no timestamp tolerance, the letter is old by nature) and
//!   decrypted with the current keys. Readable now → published to the events exchange exactly as a
//!   live event, and the letter acked after the confirm. Still unreadable → published again to the
//!   dead-letter queue with the current reason and `x-replayed` + 1, then the old one acked.
//! - `json`: only with `--reason json`. The decrypted text is parsed with the current rules; an event
//!   now → published as above. (It cannot be re-verified: the ciphertext is not kept.)
//! - no `x-reason` but `x-death`: an inbox event the broker dead-lettered (Weiling refused its
//!   batch for good). Published back to the events exchange unchanged (reason `rejected`).
//!
//! Letters left alone (other reason, json without `--reason json`, unrecognised, a signature no
//! current Token verifies, a json letter that still does not parse) are held unacked during the
//! pass, so `basic_get` never returns them twice, and requeued at its end. `--dry-run` publishes
//! nothing and requeues everything.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{BROKER_OP_TIMEOUT, OpsError, publish_confirmed, start_publisher, stop_publisher};
use crate::amqp::Outgoing;
use crate::amqp::link::Reconnect;
use crate::amqp::message::{self, header};
use crate::config::Settings;
use crate::persist::dead_letter::WEILING_REFUSED;
use crate::persist::{dead_letter, inbox};
use crate::verify::{Apps, CallbackQuery, Rejection, Verified, Verifier, unix_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Reason {
    Decrypt,
    #[value(name = "receive_id")]
    ReceiveId,
    Json,
    /// Inbox events the broker dead-lettered (`x-death`), e.g. after Weiling refused their batch.
    Rejected,
    /// Inbox events parked because Weiling refused one id they name (`x-weiling-id`).
    #[value(name = "weiling_refused")]
    WeilingRefused,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decrypt => "decrypt",
            Self::ReceiveId => "receive_id",
            Self::Json => "json",
            Self::Rejected => "rejected",
            Self::WeilingRefused => WEILING_REFUSED,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct DlqReplayArgs {
    /// Take at most N letters (letters skipped by --reason do not count).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Only letters of this reason. Without it: decrypt, receive_id and rejected; json letters are
    /// replayed only when named here.
    #[arg(long, value_enum, value_name = "R")]
    pub reason: Option<Reason>,
    /// Report what would happen; publish nothing and leave every letter in the queue.
    #[arg(long)]
    pub dry_run: bool,
    /// Config file layered over the built-in defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayOptions {
    pub limit: Option<usize>,
    pub reason: Option<Reason>,
    pub dry_run: bool,
}

/// What one pass did. Keys of the maps are fixed words (reasons, or why a letter was left alone).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    pub queue: String,
    /// Messages in the queue when the pass began.
    pub depth: u32,
    pub examined: usize,
    /// Published as events, by the letter's original reason.
    pub replayed: BTreeMap<&'static str, usize>,
    /// Still unreadable, by the reason found now: `decrypt`, `receive_id` (published again as dead
    /// letters), `json`, `unverifiable` (no current Token verifies the signature, or the app is gone),
    /// `malformed` (the letter lacks its headers) — the last three left as they were.
    pub still_failing: BTreeMap<&'static str, usize>,
    /// Left alone: `other reason` (--reason), `json` (needs --reason json), `unrecognised`.
    pub skipped: BTreeMap<&'static str, usize>,
    pub dry_run: bool,
    /// The pass stopped early on this broker error; unfinished letters stay in the queue.
    pub error: Option<String>,
}

impl ReplaySummary {
    pub fn replayed_total(&self) -> usize {
        self.replayed.values().sum()
    }

    pub fn still_failing_total(&self) -> usize {
        self.still_failing.values().sum()
    }

    pub fn skipped_total(&self) -> usize {
        self.skipped.values().sum()
    }

    /// Nothing still failing and no error (a dry run predicts).
    pub fn ok(&self) -> bool {
        self.still_failing.is_empty() && self.error.is_none()
    }
}

impl std::fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let detail = |m: &BTreeMap<&'static str, usize>| {
            if m.is_empty() {
                String::new()
            } else {
                let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
                format!(" ({})", parts.join(", "))
            }
        };
        writeln!(
            f,
            "dlq replay {}: {} letters in the queue, {} examined{}",
            self.queue,
            self.depth,
            self.examined,
            if self.dry_run {
                " (dry run: nothing published, every letter left in the queue)"
            } else {
                ""
            }
        )?;
        let would = if self.dry_run { "would be " } else { "" };
        writeln!(
            f,
            "{would}replayed:      {}{}",
            self.replayed_total(),
            detail(&self.replayed)
        )?;
        writeln!(
            f,
            "still failing: {}{}",
            self.still_failing_total(),
            detail(&self.still_failing)
        )?;
        writeln!(
            f,
            "skipped:       {}{}",
            self.skipped_total(),
            detail(&self.skipped)
        )?;
        if let Some(error) = &self.error {
            writeln!(f, "stopped early: {error}")?;
        }
        Ok(())
    }
}

/// What to do with one letter.
enum Verdict {
    /// Publish this event; ack the letter after the confirm.
    Replay(Outgoing, &'static str),
    /// Publish this dead letter (current reason, `x-replayed` + 1); ack the old one after the confirm.
    Requeue(Outgoing, &'static str),
    /// Leave the letter in the queue, counted as still failing.
    Failing(&'static str),
    /// Leave the letter in the queue, counted as skipped.
    Skip(&'static str),
}

/// Runs one replay pass. `stop` ends it after the current letter.
pub async fn replay(
    settings: &Settings,
    options: ReplayOptions,
    stop: &CancellationToken,
) -> Result<ReplaySummary, OpsError> {
    let verifier = Verifier::new(
        Apps::from_settings(&settings.apps)?,
        settings.security.timestamp_tolerance_s,
    );
    let amqp = &settings.amqp;
    let mut summary = ReplaySummary {
        queue: amqp.dead_letter_queue.clone(),
        dry_run: options.dry_run,
        ..ReplaySummary::default()
    };
    // One attempt: an operator's command fails fast and says why instead of retrying for ever.
    let connection = Reconnect::new(amqp, "weiling-relay dlq replay")
        .attempt()
        .await
        .map_err(|error| OpsError::Broker(format!("could not connect: {error}")))?;
    let channel = within("open a channel", connection.create_channel()).await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = within(
        "inspect the dead-letter queue",
        channel.queue_declare(
            amqp.dead_letter_queue.as_str().into(),
            passive,
            FieldTable::default(),
        ),
    )
    .await;
    // No queue yet (no relay ever ran with this name): nothing to replay.
    summary.depth = declared.map_or(0, |q| q.message_count());
    if summary.depth == 0 {
        close(&connection).await;
        return Ok(summary);
    }
    let abort = CancellationToken::new();
    let publisher = if options.dry_run {
        None
    } else {
        Some(start_publisher(amqp, "weiling-relay dlq replay publisher", &abort).await?)
    };
    info!(queue = %amqp.dead_letter_queue, depth = summary.depth, dry_run = options.dry_run, "dlq replay started");

    let mut held: Option<u64> = None;
    let mut republished: HashSet<String> = HashSet::new();
    let mut taken = 0usize;
    for _ in 0..summary.depth {
        if stop.is_cancelled() || options.limit.is_some_and(|limit| taken >= limit) {
            break;
        }
        let got = within(
            "take a dead letter",
            channel.basic_get(
                amqp.dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            ),
        )
        .await;
        let message = match got {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(error) => {
                summary.error = Some(error.to_string());
                break;
            }
        };
        let delivery = message.delivery;
        let tag = delivery.delivery_tag;
        summary.examined += 1;
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string());
        if message_id
            .as_ref()
            .is_some_and(|id| republished.contains(id))
        {
            // A letter this pass published again: the pass has gone round the queue once.
            held = Some(tag);
            summary.examined -= 1;
            break;
        }
        let verdict = judge(
            &verifier,
            settings,
            options.reason,
            &delivery.properties,
            &delivery.data,
        );
        if !matches!(verdict, Verdict::Skip(_)) {
            taken += 1;
        }
        let (outgoing, replayed_as) = match verdict {
            Verdict::Skip(why) => {
                *summary.skipped.entry(why).or_default() += 1;
                held = Some(tag);
                continue;
            }
            Verdict::Failing(why) => {
                debug!(
                    reason = why,
                    "dead letter still unreadable; left in the queue"
                );
                *summary.still_failing.entry(why).or_default() += 1;
                held = Some(tag);
                continue;
            }
            Verdict::Replay(outgoing, original) => (outgoing, Ok(original)),
            Verdict::Requeue(outgoing, now) => (outgoing, Err(now)),
        };
        let Some((publisher, _)) = publisher.as_ref() else {
            // Dry run: count what would happen, leave the letter.
            match replayed_as {
                Ok(original) => *summary.replayed.entry(original).or_default() += 1,
                Err(now) => *summary.still_failing.entry(now).or_default() += 1,
            }
            held = Some(tag);
            continue;
        };
        let new_id = outgoing
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string());
        if let Err(error) = publish_confirmed(publisher, outgoing, &abort).await {
            summary.error = Some(format!("publish not confirmed: {error}"));
            held = Some(tag);
            break;
        }
        if let Err(error) = within(
            "ack a dead letter",
            channel.basic_ack(tag, BasicAckOptions::default()),
        )
        .await
        {
            // Published but not acked: the letter returns to the queue, and a later replay yields
            // a duplicate with the same message_id, never a loss.
            summary.error = Some(error.to_string());
            break;
        }
        match replayed_as {
            Ok(original) => {
                debug!(reason = original, "dead letter replayed as an event");
                *summary.replayed.entry(original).or_default() += 1;
            }
            Err(now) => {
                debug!(
                    reason = now,
                    "dead letter still unreadable; dead-lettered again"
                );
                *summary.still_failing.entry(now).or_default() += 1;
                republished.extend(new_id);
            }
        }
    }
    // Every letter still held is older than the last one taken, and every other delivery on this
    // channel was acked, so one multiple-nack puts exactly the held ones back.
    if let Some(tag) = held {
        let requeue = BasicNackOptions {
            multiple: true,
            requeue: true,
        };
        if let Err(error) = within("requeue letters", channel.basic_nack(tag, requeue)).await {
            // Closing the channel requeues them anyway.
            summary.error.get_or_insert(error.to_string());
        }
    }
    close(&connection).await;
    if let Some((publisher, task)) = publisher {
        stop_publisher(publisher, task, &abort).await;
    }
    info!(
        examined = summary.examined,
        replayed = summary.replayed_total(),
        still_failing = summary.still_failing_total(),
        skipped = summary.skipped_total(),
        "dlq replay finished"
    );
    Ok(summary)
}

/// Decides one letter's fate with the current configuration; publishes nothing.
fn judge(
    verifier: &Verifier,
    settings: &Settings,
    filter: Option<Reason>,
    properties: &BasicProperties,
    body: &[u8],
) -> Verdict {
    let table = properties.headers().as_ref();
    let headers = table.map(FieldTable::inner);
    let text = |name: &str| message::text(table, name);
    let reason = match text(header::REASON).as_deref() {
        Some("decrypt") => Reason::Decrypt,
        Some("receive_id") => Reason::ReceiveId,
        Some("json") => Reason::Json,
        Some(WEILING_REFUSED) => Reason::WeilingRefused,
        Some(_) => return Verdict::Skip("unrecognised"),
        None if headers.is_some_and(|h| h.contains_key("x-death")) => Reason::Rejected,
        None => return Verdict::Skip("unrecognised"),
    };
    match filter {
        Some(wanted) if wanted != reason => return Verdict::Skip("other reason"),
        None if reason == Reason::Json => return Verdict::Skip("json"),
        _ => {}
    }
    let Some(app_id) = text(header::APP_ID) else {
        return Verdict::Failing("malformed");
    };
    let received_at_ms = message::integer(table, header::RECEIVED_AT)
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or_else(|| unix_ms(SystemTime::now()));
    let amqp = &settings.amqp;
    // Built per letter: replay is an operator's tool, and the router is a small map.
    let router = inbox::InboxRouter::new(settings);
    match reason {
        Reason::Decrypt | Reason::ReceiveId => {
            let (Some(msg_signature), Some(timestamp), Some(nonce)) = (
                text(header::MSG_SIGNATURE),
                text(header::TIMESTAMP),
                text(header::NONCE),
            ) else {
                return Verdict::Failing("malformed");
            };
            let query = CallbackQuery {
                msg_signature,
                timestamp,
                nonce,
                echostr: None,
            };
            match verifier.verify_post_replay(&app_id, &query, body, received_at_ms) {
                Err(Rejection::Unauthorized(_)) => Verdict::Failing("unverifiable"),
                Err(Rejection::BadRequest(_)) => Verdict::Failing("malformed"),
                Ok(Verified::Event(event)) => {
                    Verdict::Replay(router.message(event), reason.as_str())
                }
                Ok(Verified::Undecodable(letter)) => {
                    let replays = message::integer(table, header::REPLAYED).unwrap_or(0);
                    let mut outgoing = dead_letter::message(&amqp.dead_letter_queue, &letter);
                    set_header(
                        &mut outgoing,
                        header::REPLAYED,
                        AMQPValue::LongLongInt(replays.saturating_add(1)),
                    );
                    Verdict::Requeue(outgoing, letter.reason().as_str())
                }
            }
        }
        Reason::Json => match verifier.reread_json_letter(&app_id, body.to_vec(), received_at_ms) {
            Ok(event) => Verdict::Replay(router.message(event), "json"),
            Err(_) => Verdict::Failing("json"),
        },
        Reason::Rejected | Reason::WeilingRefused => {
            let Some(event_type) = text(header::EVENT_TYPE) else {
                return Verdict::Failing("malformed");
            };
            if verifier.apps().get(&app_id).is_none() {
                return Verdict::Failing("unverifiable");
            }
            // The broker's bookkeeping goes; everything the relay set stays, message_id included.
            let kept: BTreeMap<_, _> = headers
                .map(|h| {
                    h.iter()
                        .filter(|(k, _)| {
                            let k = k.as_str();
                            !PARKING_HEADERS.contains(&k)
                                && !k.starts_with("x-first-death-")
                                && !k.starts_with("x-last-death-")
                        })
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let mut table = FieldTable::default();
            // A letter from before the inbox was partitioned has no key; the hash exchange needs one.
            if !kept.contains_key(header::PARTITION_KEY) {
                let message_id = properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.to_string())
                    .unwrap_or_default();
                if let Some(key) = router.partition_key(&app_id, &event_type, body, &message_id) {
                    table.insert(
                        header::PARTITION_KEY.into(),
                        AMQPValue::LongString(key.into()),
                    );
                }
            }
            for (k, v) in kept {
                table.insert(k, v);
            }
            Verdict::Replay(
                Outgoing {
                    exchange: amqp.events_exchange.clone(),
                    routing_key: message::event_routing_key(&app_id, &event_type),
                    body: body.to_vec(),
                    properties: properties
                        .clone()
                        .with_type(message::event_type_property(&event_type).as_str().into())
                        .with_headers(table),
                    mandatory: true,
                },
                reason.as_str(),
            )
        }
    }
}

/// What parking added to an inbox event; a replayed event is published without it.
const PARKING_HEADERS: [&str; 5] = [
    "x-death",
    header::REASON,
    header::DETAIL,
    header::WEILING_ID,
    header::WEILING_CODE,
];

fn set_header(outgoing: &mut Outgoing, name: &str, value: AMQPValue) {
    let mut headers = outgoing.properties.headers().clone().unwrap_or_default();
    headers.insert(name.into(), value);
    outgoing.properties = outgoing.properties.clone().with_headers(headers);
}

async fn within<T>(
    what: &'static str,
    operation: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, OpsError> {
    match tokio::time::timeout(BROKER_OP_TIMEOUT, operation).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(OpsError::Broker(format!(
            "could not {what} within {} s",
            BROKER_OP_TIMEOUT.as_secs()
        ))),
    }
}

async fn close(connection: &Connection) {
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        connection.close(200, "dlq replay done".into()),
    )
    .await;
}

/// `weiling-relay dlq replay …`: prints the summary on stdout. Ok(false) when a letter still fails
/// or the pass stopped on an error.
pub async fn run_cli(args: DlqReplayArgs, env: &HashMap<String, String>) -> Result<bool, OpsError> {
    let settings = Settings::load(args.config.as_deref(), env)?;
    let stop = CancellationToken::new();
    super::stop_on_signals(stop.clone(), CancellationToken::new());
    let summary = replay(
        &settings,
        ReplayOptions {
            limit: args.limit,
            reason: args.reason,
            dry_run: args.dry_run,
        },
        &stop,
    )
    .await?;
    print!("{summary}");
    Ok(summary.ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_every_bucket_and_the_ok_rule() {
        let mut s = ReplaySummary {
            queue: "weiling.dead".into(),
            depth: 9,
            examined: 9,
            ..ReplaySummary::default()
        };
        s.replayed.insert("decrypt", 4);
        s.still_failing.insert("decrypt", 5);
        let text = s.to_string();
        assert!(text.contains("replayed:      4 (decrypt 4)"), "{text}");
        assert!(text.contains("still failing: 5 (decrypt 5)"), "{text}");
        assert!(text.contains("skipped:       0"), "{text}");
        assert!(!s.ok());
        s.still_failing.clear();
        assert!(s.ok());
        s.dry_run = true;
        assert!(s.to_string().contains("would be replayed:"));
    }

    use crate::verify::seal::{seal_ciphertext, seal_event};
    use crate::verify::{AppKeys, AuthenticUndecodable};
    use secrecy::SecretString;

    const APP: &str = "wloaReplayUnit";
    const TOKEN: &str = "Tok3nTok3nTok3nTok3n";
    const OLD: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const NEW: &str = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut";
    const EVENT: &[u8] =
        br#"{"header":{"event_type":"add_customer"},"event":{"customer_id":"c1"}}"#;

    fn settings(keys: &str) -> Settings {
        let env = HashMap::from([
            ("WEILING_RELAY_APP_ID".to_owned(), APP.to_owned()),
            ("WEILING_RELAY_APP_SECRET".to_owned(), "secret".to_owned()),
            ("WEILING_RELAY_TOKEN".to_owned(), TOKEN.to_owned()),
            ("WEILING_RELAY_ENCODING_AES_KEY".to_owned(), keys.to_owned()),
        ]);
        Settings::load(None, &env).unwrap()
    }

    fn verifier(s: &Settings) -> Verifier {
        Verifier::new(Apps::from_settings(&s.apps).unwrap(), 300)
    }

    fn sender(key: &str) -> AppKeys {
        AppKeys::new(
            APP,
            &SecretString::from(TOKEN),
            &SecretString::from(key),
            true,
        )
        .unwrap()
    }

    /// What the live relay (knowing only `OLD`) dead-letters for `sealed`, as broker properties and body.
    fn letter(sealed: &crate::verify::seal::SealedCallback) -> (BasicProperties, Vec<u8>) {
        let old = settings(OLD);
        let now = SystemTime::now();
        let Ok(Verified::Undecodable(letter)) =
            verifier(&old).verify_post(&sealed.query, &sealed.body, None, now)
        else {
            panic!("expected a dead letter")
        };
        let letter: AuthenticUndecodable = letter;
        let out = dead_letter::message(&old.amqp.dead_letter_queue, &letter);
        (out.properties, out.body)
    }

    fn ts() -> String {
        (unix_ms(SystemTime::now()) / 1000).to_string()
    }

    #[test]
    fn a_letter_under_a_key_added_since_becomes_the_live_event() {
        let sealed = seal_event(&sender(NEW), EVENT, &ts(), "n1");
        let (props, body) = letter(&sealed);
        let fixed = settings(&format!("{NEW},{OLD}"));
        match judge(&verifier(&fixed), &fixed, None, &props, &body) {
            Verdict::Replay(out, "decrypt") => {
                assert_eq!(out.exchange, fixed.amqp.events_exchange);
                assert_eq!(out.routing_key, format!("event.{APP}.add_customer"));
                assert_eq!(out.body, EVENT);
            }
            _ => panic!("expected a replay"),
        }
        // Without the fix it fails again, with x-replayed counting up from the letter's own.
        let old = settings(OLD);
        let mut props_again = props.clone();
        let mut headers = props_again.headers().clone().unwrap_or_default();
        headers.insert(header::REPLAYED.into(), AMQPValue::LongInt(2));
        props_again = props_again.with_headers(headers);
        match judge(&verifier(&old), &old, None, &props_again, &body) {
            Verdict::Requeue(out, "decrypt") => {
                let h = out.properties.headers().clone().unwrap_or_default();
                assert_eq!(
                    h.inner().get(header::REPLAYED),
                    Some(&AMQPValue::LongLongInt(3))
                );
                assert_eq!(out.routing_key, old.amqp.dead_letter_queue);
                assert_eq!(out.body, body, "the envelope is kept for the next replay");
            }
            _ => panic!("expected a requeue"),
        }
    }

    #[test]
    fn filters_json_letters_and_broken_letters_are_left_alone() {
        let fixed = settings(&format!("{NEW},{OLD}"));
        let v = verifier(&fixed);
        let sealed = seal_event(&sender(NEW), EVENT, &ts(), "n1");
        let (props, body) = letter(&sealed);
        assert!(matches!(
            judge(&v, &fixed, Some(Reason::ReceiveId), &props, &body),
            Verdict::Skip("other reason")
        ));

        let bad_json = seal_event(&sender(OLD), b"{\"header\":", &ts(), "n2");
        let (json_props, json_body) = letter(&bad_json);
        assert!(matches!(
            judge(&v, &fixed, None, &json_props, &json_body),
            Verdict::Skip("json")
        ));
        assert!(matches!(
            judge(&v, &fixed, Some(Reason::Json), &json_props, &json_body),
            Verdict::Failing("json")
        ));

        // A signature no configured Token verifies any more (the Token was rotated out).
        let mut rotated = settings(&format!("{NEW},{OLD}"));
        rotated.apps[0].rotate_in_token(SecretString::from("Tok3nN3wTok3nN3w"));
        rotated.apps[0].tokens.truncate(1);
        assert!(matches!(
            judge(&verifier(&rotated), &rotated, None, &props, &body),
            Verdict::Failing("unverifiable")
        ));

        let mut stripped = FieldTable::default();
        stripped.insert("x-reason".into(), AMQPValue::LongString("decrypt".into()));
        let bare = BasicProperties::default().with_headers(stripped);
        assert!(matches!(
            judge(&v, &fixed, None, &bare, &body),
            Verdict::Failing("malformed")
        ));
        assert!(matches!(
            judge(&v, &fixed, None, &BasicProperties::default(), &body),
            Verdict::Skip("unrecognised")
        ));
        let foreign = seal_ciphertext(
            &sender(NEW),
            APP,
            &sender(NEW).key().encrypt(EVENT, "wloaElse"),
            &ts(),
            "n3",
        );
        let (p, b) = letter(&foreign);
        assert!(matches!(
            judge(&v, &fixed, None, &p, &b),
            Verdict::Requeue(_, "receive_id")
        ));
    }

    #[test]
    fn header_integers_of_every_width_are_read() {
        assert_eq!(message::as_integer(&AMQPValue::LongLongInt(7)), Some(7));
        assert_eq!(message::as_integer(&AMQPValue::LongInt(7)), Some(7));
        assert_eq!(message::as_integer(&AMQPValue::ShortShortUInt(7)), Some(7));
        assert_eq!(
            message::as_integer(&AMQPValue::LongString("7".into())),
            None
        );
    }
}
