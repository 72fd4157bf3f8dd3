//! Typed settings: built-in defaults → `--config FILE` → `WEILING_RELAY__…` env → single-app env shortcut.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use crate::entity::Entity;
use crate::verify::cipher::AesKey;

/// The documented defaults; compiled in so a relay started without a file still has every key.
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

const ENV_PREFIX: &str = "WEILING_RELAY";
const MASK: &str = "********";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: `{key}` {problem}")]
    Invalid { key: String, problem: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub amqp: AmqpSettings,
    pub window: WindowSettings,
    pub weiling: WeilingSettings,
    pub security: SecuritySettings,
    pub telemetry: TelemetrySettings,
    #[serde(default)]
    pub apps: Vec<AppSettings>,
    #[serde(default)]
    pub events: BTreeMap<String, EventMapping>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: String,
    pub max_body_bytes: usize,
    pub max_in_flight: usize,
    pub max_unfinished_bodies: usize,
    pub body_timeout_ms: u64,
    pub head_timeout_ms: u64,
    pub keep_alive_ms: u64,
    pub max_connections: usize,
    pub answer_budget_ms: u64,
    pub retry_after_s: u64,
    pub workers: usize,
    pub drain_deadline_ms: u64,
    pub drain_grace_ms: u64,
    pub heap_trim_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    Classic,
    Quorum,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    #[serde(serialize_with = "serialize_masked_url")]
    pub url: SecretString,
    pub inbox_queue: String,
    pub inbox_queue_type: QueueType,
    pub inbox_queue_version: u8,
    pub inbox_partitions: u16,
    pub dead_letter_queue: String,
    pub customers_exchange: String,
    pub events_exchange: String,
    pub unrouted_exchange: String,
    pub prefetch: u16,
    pub max_unacked_per_app: u16,
    pub retry_delay_ms: u64,
    pub connect_timeout_ms: u64,
    pub heartbeat_s: u16,
    pub frame_max: u32,
    pub reconnect_max_delay_ms: u64,
    pub consume_inbox: bool,
    pub shared_inbox: bool,
    pub tls_ca_file: String,
}

/// AMQP's smallest frame_max, and RabbitMQ's default (the largest a relay asks for).
pub const FRAME_MAX_RANGE: std::ops::RangeInclusive<u32> = 4096..=131_072;

/// RabbitMQ's classic queue storage versions (3.10 brought 2; 4.0 keeps only 2).
pub const CLASSIC_QUEUE_VERSIONS: std::ops::RangeInclusive<u8> = 1..=2;

/// More partitions than this buys nothing on one cluster and costs a queue (and a consumer) each.
pub const MAX_INBOX_PARTITIONS: u16 = 64;

impl AmqpSettings {
    /// The broker nodes of `url`: one address, or several separated by commas (the nodes of one
    /// cluster), each tried in turn when connecting.
    pub fn addresses(&self) -> Vec<&str> {
        self.url
            .expose_secret()
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .collect()
    }

    /// The inbox queues: `inbox_queue` itself, or with P > 1 partitions `inbox_queue.0` … `inbox_queue.{P-1}`.
    pub fn inbox_queues(&self) -> Vec<String> {
        if self.inbox_partitions <= 1 {
            vec![self.inbox_queue.clone()]
        } else {
            (0..self.inbox_partitions)
                .map(|i| format!("{}.{i}", self.inbox_queue))
                .collect()
        }
    }

    /// Where deliveries of an app over `max_unacked_per_app` wait `retry_delay_ms` before they
    /// return to the inbox: one queue per inbox layout, since its dead-letter target differs.
    pub fn inbox_retry_queue(&self) -> String {
        match self.inbox_hash_exchange() {
            None => format!("{}.retry", self.inbox_queue),
            Some(hash) => format!("{hash}.retry"),
        }
    }

    /// The consistent-hash exchange between the events exchange and the partitions (P > 1 only).
    pub fn inbox_hash_exchange(&self) -> Option<String> {
        (self.inbox_partitions > 1).then(|| format!("{}.hash", self.inbox_queue))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSettings {
    pub max_ids: usize,
    pub quiet_ms: u64,
    pub max_wait_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeilingSettings {
    pub base_url: String,
    pub request_timeout_ms: u64,
    pub rate_limit_per_minute: u32,
    pub max_retries: u32,
    pub auth_error_codes: Vec<i64>,
    pub rate_limit_codes: Vec<i64>,
    /// Codes with which Weiling refuses a batch because an id does not exist (3000 客户不存在): the
    /// batch is split until that id stands alone, and then it is published as `missing`.
    pub missing_codes: Vec<i64>,
    pub token_refresh_margin_s: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    pub timestamp_tolerance_s: u64,
    pub replay_window_s: u64,
    pub replay_cache_capacity: u64,
    #[serde(serialize_with = "serialize_masked")]
    pub sign_records_key: SecretString,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// OTLP/HTTP base URL of a trace collector (`…:4318`); empty: no traces, no exporter.
    pub otlp_endpoint: String,
}

/// One Weiling app. The callback Token and EncodingAESKey come either single (`token`,
/// `encoding_aes_key`) or as rotation lists (`tokens`, `encoding_aes_keys`, new first, old kept for
/// the overlap); exactly one form each. An empty single value means "not given".
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    pub app_id: String,
    #[serde(serialize_with = "serialize_masked")]
    pub app_secret: SecretString,
    #[serde(
        default = "empty_secret",
        serialize_with = "serialize_masked",
        skip_serializing_if = "is_empty_secret"
    )]
    pub token: SecretString,
    #[serde(
        default,
        serialize_with = "serialize_masked_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tokens: Vec<SecretString>,
    #[serde(
        default = "empty_secret",
        serialize_with = "serialize_masked",
        skip_serializing_if = "is_empty_secret"
    )]
    pub encoding_aes_key: SecretString,
    #[serde(
        default,
        serialize_with = "serialize_masked_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub encoding_aes_keys: Vec<SecretString>,
    #[serde(default = "default_true")]
    pub check_receive_id: bool,
}

impl AppSettings {
    /// The callback Tokens, newest first, whichever form was configured.
    pub fn callback_tokens(&self) -> &[SecretString] {
        if self.tokens.is_empty() {
            std::slice::from_ref(&self.token)
        } else {
            &self.tokens
        }
    }

    /// The EncodingAESKeys, newest first, whichever form was configured.
    pub fn aes_keys(&self) -> &[SecretString] {
        if self.encoding_aes_keys.is_empty() {
            std::slice::from_ref(&self.encoding_aes_key)
        } else {
            &self.encoding_aes_keys
        }
    }

    /// Puts `new` in front of the configured Tokens (switching to the list form): the first step of
    /// a rotation, with the old ones still accepted.
    pub fn rotate_in_token(&mut self, new: SecretString) {
        self.tokens = prepend(new, self.callback_tokens());
        self.token = empty_secret();
    }

    /// Puts `new` in front of the configured EncodingAESKeys (switching to the list form).
    pub fn rotate_in_aes_key(&mut self, new: SecretString) {
        self.encoding_aes_keys = prepend(new, self.aes_keys());
        self.encoding_aes_key = empty_secret();
    }
}

fn prepend(new: SecretString, old: &[SecretString]) -> Vec<SecretString> {
    std::iter::once(new)
        .chain(
            old.iter()
                .filter(|s| !s.expose_secret().is_empty())
                .cloned(),
        )
        .collect()
}

/// More entries would only add work to every callback: an overlap needs two, a botched rotation three.
pub const MAX_ROTATION_ENTRIES: usize = 4;

fn default_true() -> bool {
    true
}

fn empty_secret() -> SecretString {
    SecretString::from("")
}

fn is_empty_secret(secret: &SecretString) -> bool {
    secret.expose_secret().is_empty()
}

/// Where an event type carries the ids of the objects it changed: an ordered list of rules, the first
/// whose condition holds wins. The file accepts three forms: a plain list of JSON pointers (customer
/// ids; an empty list turns a built-in mapping off), one table
/// (`{ entity = "contact", ids = [...], when = { "/type" = 0 }, each = "/customer_list" }`), or a
/// list of such tables.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(try_from = "RawEventMapping", into = "Vec<EventRule>")]
pub struct EventMapping {
    pub rules: Vec<EventRule>,
}

/// One way an event names ids. Without `each`, `when` and `ids` address the event's `event` object;
/// with `each` (a pointer to an array), they address every element of that array in turn, so a
/// condition can pick the entries of one kind out of a mixed list.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct EventRule {
    pub entity: Entity,
    pub ids: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub when: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub each: Option<String>,
}

impl EventRule {
    /// A rule taking customer ids from `pointers`, unconditionally.
    pub fn customers(pointers: &[&str]) -> Self {
        Self {
            entity: Entity::Customer,
            ids: pointers.iter().map(|p| (*p).to_owned()).collect(),
            when: BTreeMap::new(),
            each: None,
        }
    }

    /// Every pointer the rule uses (ids, conditions, `each`), for validation.
    fn pointers(&self) -> impl Iterator<Item = &String> {
        self.ids
            .iter()
            .chain(self.when.keys())
            .chain(self.each.iter())
    }
}

/// The file form, read before the entity name is checked: an untagged enum alone would answer a
/// mistyped entity with "did not match any variant".
#[derive(Deserialize)]
#[serde(untagged)]
enum RawEventMapping {
    Pointers(Vec<String>),
    Rules(Vec<RawRule>),
    Rule(RawRule),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    entity: Option<String>,
    ids: Vec<String>,
    #[serde(default)]
    when: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    each: Option<String>,
}

impl TryFrom<RawRule> for EventRule {
    type Error = String;

    fn try_from(raw: RawRule) -> Result<Self, Self::Error> {
        Ok(Self {
            entity: raw
                .entity
                .as_deref()
                .map_or(Ok(Entity::Customer), str::parse)?,
            ids: raw.ids,
            when: raw.when,
            each: raw.each,
        })
    }
}

impl TryFrom<RawEventMapping> for EventMapping {
    type Error = String;

    fn try_from(raw: RawEventMapping) -> Result<Self, Self::Error> {
        let rules = match raw {
            RawEventMapping::Pointers(ids) if ids.is_empty() => Vec::new(),
            RawEventMapping::Pointers(ids) => vec![EventRule {
                entity: Entity::Customer,
                ids,
                when: BTreeMap::new(),
                each: None,
            }],
            RawEventMapping::Rules(rules) => rules
                .into_iter()
                .map(EventRule::try_from)
                .collect::<Result<_, _>>()?,
            RawEventMapping::Rule(rule) => vec![EventRule::try_from(rule)?],
        };
        Ok(Self { rules })
    }
}

impl From<EventMapping> for Vec<EventRule> {
    fn from(mapping: EventMapping) -> Self {
        mapping.rules
    }
}

impl EventMapping {
    /// The entity of the first rule (customer for a mapping turned off).
    pub fn entity(&self) -> Entity {
        self.rules.first().map_or(Entity::Customer, |r| r.entity)
    }
}

fn serialize_masked<S: Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    if secret.expose_secret().is_empty() {
        s.serialize_str("")
    } else {
        s.serialize_str(MASK)
    }
}

fn serialize_masked_list<S: Serializer>(secrets: &[SecretString], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(secrets.len()))?;
    for secret in secrets {
        seq.serialize_element(if is_empty_secret(secret) { "" } else { MASK })?;
    }
    seq.end()
}

fn serialize_masked_url<S: Serializer>(url: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&mask_url_password(url.expose_secret()))
}

/// `amqp://user:pass@host/vhost` → `amqp://user:********@host/vhost`, so URLs can be printed and logged;
/// a list of addresses is masked address by address.
pub fn mask_url_password(url: &str) -> String {
    if url.contains(',') {
        return url
            .split(',')
            .map(|one| mask_url_password(one.trim()))
            .collect::<Vec<_>>()
            .join(",");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:{MASK}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

impl Settings {
    /// Loads and validates the settings. `env` is the process environment in production and a map in
    /// tests, so tests never mutate global state.
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let settings = Self::load_unchecked_apps(file, env)?;
        settings.require_apps()?;
        Ok(settings)
    }

    /// For tools that never verify callbacks nor call Weiling (`weiling-relay mirror`): the same
    /// layering and validation, but an empty `[[apps]]` list is fine (listed apps are still checked).
    pub fn load_without_apps(
        file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        Self::load_unchecked_apps(file, env)
    }

    fn load_unchecked_apps(
        file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let mut prefixed: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Lists of codes are comma separated in the environment; parsed here so that every other
        // value can stay a string ("000123" must not become 123).
        for (var, key) in LIST_ENV_KEYS {
            if let Some(raw) = prefixed.remove(var) {
                builder = builder.set_override(key, parse_code_list(var, &raw)?)?;
            }
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(false)
                .source(Some(prefixed)),
        );
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.apply_single_app_shortcut(env)?;
        settings.validate()?;
        Ok(settings)
    }

    fn apply_single_app_shortcut(
        &mut self,
        env: &HashMap<String, String>,
    ) -> Result<(), ConfigError> {
        let Some(app_id) = env.get("WEILING_RELAY_APP_ID") else {
            return Ok(());
        };
        let required = |name: &str| -> Result<SecretString, ConfigError> {
            env.get(name)
                .map(|v| SecretString::from(v.clone()))
                .ok_or_else(|| {
                    ConfigError::invalid(name, "must be set when WEILING_RELAY_APP_ID is set")
                })
        };
        let (token, tokens) = single_or_list(&required("WEILING_RELAY_TOKEN")?);
        let (encoding_aes_key, encoding_aes_keys) =
            single_or_list(&required("WEILING_RELAY_ENCODING_AES_KEY")?);
        self.apps = vec![AppSettings {
            app_id: app_id.clone(),
            app_secret: required("WEILING_RELAY_APP_SECRET")?,
            token,
            tokens,
            encoding_aes_key,
            encoding_aes_keys,
            check_receive_id: true,
        }];
        Ok(())
    }

    fn require_apps(&self) -> Result<(), ConfigError> {
        if self.apps.is_empty() {
            return Err(ConfigError::invalid(
                "apps",
                "needs at least one [[apps]] block (or WEILING_RELAY_APP_ID, _APP_SECRET, _TOKEN, _ENCODING_AES_KEY)",
            ));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        s.listen.parse::<SocketAddr>().map_err(|_| {
            ConfigError::invalid("server.listen", "must be an address like 0.0.0.0:8080")
        })?;
        positive("server.max_body_bytes", s.max_body_bytes as u64)?;
        positive("server.max_in_flight", s.max_in_flight as u64)?;
        positive(
            "server.max_unfinished_bodies",
            s.max_unfinished_bodies as u64,
        )?;
        positive("server.body_timeout_ms", s.body_timeout_ms)?;
        positive("server.head_timeout_ms", s.head_timeout_ms)?;
        positive("server.max_connections", s.max_connections as u64)?;
        positive("server.answer_budget_ms", s.answer_budget_ms)?;
        positive("server.drain_deadline_ms", s.drain_deadline_ms)?;

        let a = &self.amqp;
        let addresses = a.addresses();
        let tls = addresses.iter().all(|url| url.starts_with("amqps://"));
        let plain = addresses.iter().all(|url| url.starts_with("amqp://"));
        if addresses.is_empty() || !(tls || plain) {
            return Err(ConfigError::invalid(
                "amqp.url",
                "must be one or more comma-separated addresses, all amqp:// or all amqps:// (TLS)",
            ));
        }
        if !a.tls_ca_file.is_empty() {
            if !tls {
                return Err(ConfigError::invalid(
                    "amqp.tls_ca_file",
                    "is only used with an amqps:// URL",
                ));
            }
            crate::amqp::connect::read_ca_file(&a.tls_ca_file)
                .map_err(|problem| ConfigError::invalid("amqp.tls_ca_file", problem))?;
        }
        for (key, name) in [
            ("amqp.inbox_queue", &a.inbox_queue),
            ("amqp.dead_letter_queue", &a.dead_letter_queue),
            ("amqp.customers_exchange", &a.customers_exchange),
            ("amqp.events_exchange", &a.events_exchange),
            ("amqp.unrouted_exchange", &a.unrouted_exchange),
        ] {
            if name.is_empty() || name.len() > 200 || name.starts_with("amq.") {
                return Err(ConfigError::invalid(
                    key,
                    "must be 1–200 bytes and not start with the reserved prefix amq.",
                ));
            }
        }
        if !CLASSIC_QUEUE_VERSIONS.contains(&a.inbox_queue_version) {
            return Err(ConfigError::invalid(
                "amqp.inbox_queue_version",
                "must be 1 or 2 (RabbitMQ's classic queue storage versions)",
            ));
        }
        if !(1..=MAX_INBOX_PARTITIONS).contains(&a.inbox_partitions) {
            return Err(ConfigError::invalid(
                "amqp.inbox_partitions",
                format!("must be 1–{MAX_INBOX_PARTITIONS}"),
            ));
        }
        if a.shared_inbox && a.inbox_partitions > 1 {
            return Err(ConfigError::invalid(
                "amqp.shared_inbox",
                "applies to one inbox queue only (inbox_partitions = 1); partitions are always shared out one relay each",
            ));
        }
        positive("amqp.connect_timeout_ms", a.connect_timeout_ms)?;
        if !FRAME_MAX_RANGE.contains(&a.frame_max) {
            return Err(ConfigError::invalid(
                "amqp.frame_max",
                format!(
                    "must be {}–{} bytes",
                    FRAME_MAX_RANGE.start(),
                    FRAME_MAX_RANGE.end()
                ),
            ));
        }
        positive("amqp.reconnect_max_delay_ms", a.reconnect_max_delay_ms)?;
        if usize::from(a.prefetch) <= self.window.max_ids {
            return Err(ConfigError::invalid(
                "amqp.prefetch",
                "must be larger than window.max_ids, or a window could never fill",
            ));
        }
        if a.max_unacked_per_app == 0 || a.max_unacked_per_app >= a.prefetch {
            return Err(ConfigError::invalid(
                "amqp.max_unacked_per_app",
                "must be 1 or more and less than amqp.prefetch, or one app could still take every unacked slot",
            ));
        }
        positive("amqp.retry_delay_ms", a.retry_delay_ms)?;

        let w = &self.window;
        if w.max_ids == 0 || w.max_ids > 100 {
            return Err(ConfigError::invalid(
                "window.max_ids",
                "must be 1–100 (Weiling's batch cap)",
            ));
        }
        positive("window.max_wait_ms", w.max_wait_ms)?;

        let wl = &self.weiling;
        if !(wl.base_url.starts_with("http://") || wl.base_url.starts_with("https://")) {
            return Err(ConfigError::invalid(
                "weiling.base_url",
                "must be an http(s) URL",
            ));
        }
        positive("weiling.request_timeout_ms", wl.request_timeout_ms)?;
        let otlp = &self.telemetry.otlp_endpoint;
        if !(otlp.is_empty() || otlp.starts_with("http://") || otlp.starts_with("https://")) {
            return Err(ConfigError::invalid(
                "telemetry.otlp_endpoint",
                "must be empty (no traces) or an http(s) URL like http://otel-collector:4318",
            ));
        }
        positive(
            "weiling.rate_limit_per_minute",
            u64::from(wl.rate_limit_per_minute),
        )?;

        let sec = &self.security;
        positive("security.timestamp_tolerance_s", sec.timestamp_tolerance_s)?;
        // A timestamp up to `tolerance` in the future stays acceptable for 2 × tolerance of real time,
        // so the cache must remember it that long or the same callback could be stored twice.
        if sec.replay_window_s < sec.timestamp_tolerance_s.saturating_mul(2) {
            return Err(ConfigError::invalid(
                "security.replay_window_s",
                "must be at least twice security.timestamp_tolerance_s",
            ));
        }
        positive("security.replay_cache_capacity", sec.replay_cache_capacity)?;
        // The cache is allocated in full at start (about 71 bytes an entry): a typo must fail here,
        // not abort the process on an impossible allocation.
        if sec.replay_cache_capacity > MAX_REPLAY_CACHE_CAPACITY {
            return Err(ConfigError::invalid(
                "security.replay_cache_capacity",
                "must be at most 10000000 (about 710 MB of replay cache)",
            ));
        }

        let mut seen = std::collections::HashSet::new();
        for (i, app) in self.apps.iter().enumerate() {
            validate_app(i, app)?;
            if !seen.insert(app.app_id.as_str()) {
                return Err(ConfigError::invalid(
                    format!("apps[{i}].app_id"),
                    "is listed twice",
                ));
            }
        }

        for (event_type, mapping) in &self.events {
            let key = format!("events.{event_type}");
            for (i, rule) in mapping.rules.iter().enumerate() {
                if rule.ids.is_empty() {
                    return Err(ConfigError::invalid(
                        key,
                        format!("rule {} needs at least one JSON pointer in `ids`", i + 1),
                    ));
                }
                for pointer in rule.pointers() {
                    if !pointer.starts_with('/') {
                        return Err(ConfigError::invalid(
                            key,
                            format!("`{pointer}` is not a JSON pointer (it must start with /)"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The settings as TOML with every secret masked: what `check-config` prints.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# could not render: {e}\n"))
    }

    pub fn app(&self, app_id: &str) -> Option<&AppSettings> {
        self.apps.iter().find(|a| a.app_id == app_id)
    }
}

const LIST_ENV_KEYS: [(&str, &str); 3] = [
    (
        "WEILING_RELAY__WEILING__AUTH_ERROR_CODES",
        "weiling.auth_error_codes",
    ),
    (
        "WEILING_RELAY__WEILING__RATE_LIMIT_CODES",
        "weiling.rate_limit_codes",
    ),
    (
        "WEILING_RELAY__WEILING__MISSING_CODES",
        "weiling.missing_codes",
    ),
];

fn parse_code_list(var: &str, raw: &str) -> Result<Vec<i64>, ConfigError> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<i64>()
                .map_err(|_| ConfigError::invalid(var, format!("`{s}` is not an integer code")))
        })
        .collect()
}

/// A comma-separated environment value: one entry is the single form, several the rotation list.
fn single_or_list(raw: &SecretString) -> (SecretString, Vec<SecretString>) {
    let entries: Vec<SecretString> = raw
        .expose_secret()
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(SecretString::from)
        .collect();
    match entries.as_slice() {
        [one] => (one.clone(), Vec::new()),
        [] => (empty_secret(), Vec::new()),
        _ => (empty_secret(), entries),
    }
}

/// Ten million remembered callbacks: over 2 hours at 1,000 callbacks/s, about 710 MB.
const MAX_REPLAY_CACHE_CAPACITY: u64 = 10_000_000;

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        Err(ConfigError::invalid(key, "must be greater than 0"))
    } else {
        Ok(())
    }
}

fn validate_app(i: usize, app: &AppSettings) -> Result<(), ConfigError> {
    let key = |field: &str| format!("apps[{i}].{field}");
    if app.app_id.is_empty() || app.app_id.len() > 64 || !is_routing_safe(&app.app_id) {
        return Err(ConfigError::invalid(
            key("app_id"),
            "must be 1–64 letters, digits, '-' or '_'",
        ));
    }
    if app.app_secret.expose_secret().is_empty() {
        return Err(ConfigError::invalid(key("app_secret"), "must not be empty"));
    }
    for (name, token) in one_form(i, ("token", &app.token), ("tokens", &app.tokens))? {
        if !(16..=32).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ConfigError::invalid(
                name,
                "must be 16–32 letters or digits",
            ));
        }
    }
    let aes_keys = one_form(
        i,
        ("encoding_aes_key", &app.encoding_aes_key),
        ("encoding_aes_keys", &app.encoding_aes_keys),
    )?;
    for (name, aes) in aes_keys {
        if aes.len() != 43 || !aes.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ConfigError::invalid(
                name,
                "must be exactly 43 letters or digits",
            ));
        }
        AesKey::from_encoding_aes_key(aes)
            .map_err(|e| ConfigError::invalid(name, e.to_string()))?;
    }
    Ok(())
}

/// The entries of a secret given either single or as a rotation list, each with the key that names
/// it in errors (`apps[0].tokens[1]`). Exactly one form must be given, a list without repeats.
fn one_form<'a>(
    i: usize,
    (single_name, single): (&str, &'a SecretString),
    (list_name, list): (&str, &'a [SecretString]),
) -> Result<Vec<(String, &'a str)>, ConfigError> {
    let single = single.expose_secret();
    match (single.is_empty(), list.is_empty()) {
        (false, true) => Ok(vec![(format!("apps[{i}].{single_name}"), single)]),
        (false, false) => Err(ConfigError::invalid(
            format!("apps[{i}].{list_name}"),
            format!(
                "is set together with `{single_name}`: give one of them (the list for a rotation, new first)"
            ),
        )),
        (true, true) => Err(ConfigError::invalid(
            format!("apps[{i}].{single_name}"),
            format!("must be set (or `{list_name}`, a list for a rotation)"),
        )),
        (true, false) => {
            if list.len() > MAX_ROTATION_ENTRIES {
                return Err(ConfigError::invalid(
                    format!("apps[{i}].{list_name}"),
                    format!(
                        "may hold at most {MAX_ROTATION_ENTRIES} entries (new first, then the old ones still in overlap)"
                    ),
                ));
            }
            let mut entries: Vec<(String, &str)> = Vec::with_capacity(list.len());
            for (j, secret) in list.iter().enumerate() {
                let value = secret.expose_secret();
                let name = format!("apps[{i}].{list_name}[{j}]");
                if entries.iter().any(|(_, seen)| *seen == value) {
                    return Err(ConfigError::invalid(name, "repeats an earlier entry"));
                }
                entries.push((name, value));
            }
            Ok(entries)
        }
    }
}

/// App ids and event types become AMQP routing-key words, so they may not contain `.`, `*` or `#`.
pub fn is_routing_safe(word: &str) -> bool {
    word.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "Tok3nTok3nTok3nTok3n";
    const AES: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    fn app_env() -> HashMap<String, String> {
        HashMap::from([
            ("WEILING_RELAY_APP_ID".into(), "wloa0123".into()),
            ("WEILING_RELAY_APP_SECRET".into(), "s3cr3t-app".into()),
            ("WEILING_RELAY_TOKEN".into(), TOKEN.into()),
            ("WEILING_RELAY_ENCODING_AES_KEY".into(), AES.into()),
        ])
    }

    fn invalid_key(err: ConfigError) -> String {
        match err {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("expected Invalid, got {other}"),
        }
    }

    #[test]
    fn defaults_load_and_validate_with_one_app() {
        let s = Settings::load(None, &app_env()).unwrap();
        assert_eq!(s.server.listen, "0.0.0.0:8080");
        assert_eq!(s.server.answer_budget_ms, 800);
        assert_eq!(s.amqp.inbox_queue, "weiling.inbox");
        assert_eq!(s.amqp.inbox_queue_type, QueueType::Classic);
        assert_eq!(s.window.max_ids, 100);
        assert_eq!(s.weiling.auth_error_codes, vec![403, 501, 1007]);
        assert_eq!(s.apps.len(), 1);
        assert_eq!(
            s.events.get("progress_add"),
            Some(&EventMapping {
                rules: vec![EventRule {
                    entity: Entity::Customer,
                    ids: vec!["/business_related_id".into()],
                    when: BTreeMap::from([("/type".into(), serde_json::json!(1))]),
                    each: None,
                }]
            })
        );
    }

    #[test]
    fn tools_without_callbacks_load_without_apps() {
        let s = Settings::load_without_apps(None, &HashMap::new()).unwrap();
        assert!(s.apps.is_empty());
        assert_eq!(s.amqp.customers_exchange, "weiling.customers");
        let mut env = app_env();
        env.insert("WEILING_RELAY_TOKEN".into(), "short".into());
        assert_eq!(
            invalid_key(Settings::load_without_apps(None, &env).unwrap_err()),
            "apps[0].token",
            "apps that are listed are still checked"
        );
    }

    #[test]
    fn defaults_without_an_app_name_the_missing_key() {
        let err = Settings::load(None, &HashMap::new()).unwrap_err();
        assert_eq!(invalid_key(err), "apps");
    }

    #[test]
    fn env_overrides_file_values_and_keeps_strings_as_strings() {
        let mut env = app_env();
        env.insert(
            "WEILING_RELAY__SERVER__ANSWER_BUDGET_MS".into(),
            "650".into(),
        );
        env.insert("WEILING_RELAY__AMQP__INBOX_QUEUE".into(), "000123".into());
        env.insert(
            "WEILING_RELAY__AMQP__INBOX_QUEUE_TYPE".into(),
            "quorum".into(),
        );
        env.insert(
            "WEILING_RELAY__WEILING__RATE_LIMIT_CODES".into(),
            "1015,42".into(),
        );
        let s = Settings::load(None, &env).unwrap();
        assert_eq!(s.server.answer_budget_ms, 650);
        assert_eq!(s.amqp.inbox_queue, "000123");
        assert_eq!(s.amqp.inbox_queue_type, QueueType::Quorum);
        assert_eq!(s.weiling.rate_limit_codes, vec![1015, 42]);
    }

    #[test]
    fn a_file_layer_sits_between_defaults_and_env() {
        let dir = std::env::temp_dir().join(format!("wr-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("relay.toml");
        std::fs::write(
            &file,
            format!(
                "[server]\nmax_in_flight = 7\n[window]\nquiet_ms = 50\n\n[[apps]]\napp_id = \"wloaA\"\napp_secret = \"x\"\ntoken = \"{TOKEN}\"\nencoding_aes_key = \"{AES}\"\n"
            ),
        )
        .unwrap();
        let env = HashMap::from([("WEILING_RELAY__WINDOW__QUIET_MS".into(), "75".into())]);
        let s = Settings::load(Some(&file), &env).unwrap();
        assert_eq!(s.server.max_in_flight, 7);
        assert_eq!(s.window.quiet_ms, 75);
        assert_eq!(s.apps[0].app_id, "wloaA");
        assert_eq!(
            s.server.max_body_bytes, 65536,
            "untouched keys keep their default"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("WEILING_RELAY__SERVER__LISTEN", "nowhere", "server.listen"),
            (
                "WEILING_RELAY__SERVER__MAX_IN_FLIGHT",
                "0",
                "server.max_in_flight",
            ),
            ("WEILING_RELAY__WINDOW__MAX_IDS", "101", "window.max_ids"),
            ("WEILING_RELAY__AMQP__URL", "http://x", "amqp.url"),
            (
                "WEILING_RELAY__AMQP__URL",
                "amqp://h1/,amqps://h2/",
                "amqp.url",
            ),
            ("WEILING_RELAY__AMQP__URL", " , ", "amqp.url"),
            (
                "WEILING_RELAY__AMQP__TLS_CA_FILE",
                "/nonexistent/ca.pem",
                "amqp.tls_ca_file",
            ),
            (
                "WEILING_RELAY__AMQP__INBOX_PARTITIONS",
                "0",
                "amqp.inbox_partitions",
            ),
            (
                "WEILING_RELAY__AMQP__INBOX_PARTITIONS",
                "65",
                "amqp.inbox_partitions",
            ),
            ("WEILING_RELAY__AMQP__PREFETCH", "50", "amqp.prefetch"),
            (
                "WEILING_RELAY__AMQP__MAX_UNACKED_PER_APP",
                "500",
                "amqp.max_unacked_per_app",
            ),
            (
                "WEILING_RELAY__AMQP__MAX_UNACKED_PER_APP",
                "0",
                "amqp.max_unacked_per_app",
            ),
            (
                "WEILING_RELAY__SERVER__MAX_UNFINISHED_BODIES",
                "0",
                "server.max_unfinished_bodies",
            ),
            (
                "WEILING_RELAY__SERVER__BODY_TIMEOUT_MS",
                "0",
                "server.body_timeout_ms",
            ),
            (
                "WEILING_RELAY__SECURITY__REPLAY_WINDOW_S",
                "10",
                "security.replay_window_s",
            ),
            (
                "WEILING_RELAY__SECURITY__REPLAY_CACHE_CAPACITY",
                "10000001",
                "security.replay_cache_capacity",
            ),
            ("WEILING_RELAY_TOKEN", "short", "apps[0].token"),
            (
                "WEILING_RELAY_ENCODING_AES_KEY",
                "tooshort",
                "apps[0].encoding_aes_key",
            ),
            ("WEILING_RELAY_APP_ID", "has.dot", "apps[0].app_id"),
        ];
        for (var, value, key) in cases {
            let mut env = app_env();
            env.insert(var.into(), value.into());
            let err = Settings::load(None, &env).unwrap_err();
            assert_eq!(invalid_key(err), key, "{var}={value}");
        }
    }

    #[test]
    fn a_shared_inbox_is_one_queue_only() {
        let mut env = app_env();
        env.insert("WEILING_RELAY__AMQP__SHARED_INBOX".into(), "true".into());
        assert!(Settings::load(None, &env).unwrap().amqp.shared_inbox);
        env.insert("WEILING_RELAY__AMQP__INBOX_PARTITIONS".into(), "4".into());
        let err = Settings::load(None, &env).unwrap_err();
        assert_eq!(invalid_key(err), "amqp.shared_inbox");
    }

    #[test]
    fn the_inbox_is_a_version_2_classic_queue_unless_configured() {
        let mut env = app_env();
        assert_eq!(
            Settings::load(None, &env).unwrap().amqp.inbox_queue_version,
            2
        );
        for bad in ["0", "3"] {
            env.insert(
                "WEILING_RELAY__AMQP__INBOX_QUEUE_VERSION".into(),
                bad.into(),
            );
            let err = Settings::load(None, &env).unwrap_err();
            assert_eq!(invalid_key(err), "amqp.inbox_queue_version");
        }
        env.insert(
            "WEILING_RELAY__AMQP__INBOX_QUEUE_VERSION".into(),
            "1".into(),
        );
        assert_eq!(
            Settings::load(None, &env).unwrap().amqp.inbox_queue_version,
            1
        );
    }

    #[test]
    fn frame_max_is_an_amqp_frame_size() {
        let mut env = app_env();
        assert_eq!(Settings::load(None, &env).unwrap().amqp.frame_max, 16384);
        for bad in ["4095", "131073"] {
            env.insert("WEILING_RELAY__AMQP__FRAME_MAX".into(), bad.into());
            let err = Settings::load(None, &env).unwrap_err();
            assert_eq!(invalid_key(err), "amqp.frame_max");
        }
        env.insert("WEILING_RELAY__AMQP__FRAME_MAX".into(), "131072".into());
        assert_eq!(Settings::load(None, &env).unwrap().amqp.frame_max, 131_072);
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused_with_the_key() {
        let mut env = app_env();
        env.insert(
            "WEILING_RELAY__SERVER__ANSWER_BUDGET_MS".into(),
            "soon".into(),
        );
        let msg = Settings::load(None, &env).unwrap_err().to_string();
        assert!(msg.contains("answer_budget_ms"), "{msg}");

        let mut env = app_env();
        env.insert("WEILING_RELAY__SERVER__LISTN".into(), "0.0.0.0:1".into());
        let msg = Settings::load(None, &env).unwrap_err().to_string();
        assert!(msg.contains("listn"), "{msg}");
    }

    #[test]
    fn shortcut_requires_all_four_variables() {
        let mut env = app_env();
        env.remove("WEILING_RELAY_TOKEN");
        let err = Settings::load(None, &env).unwrap_err();
        assert_eq!(invalid_key(err), "WEILING_RELAY_TOKEN");
    }

    #[test]
    fn masked_output_contains_no_secret() {
        let mut env = app_env();
        env.insert(
            "WEILING_RELAY__AMQP__URL".into(),
            "amqp://relay:hunter2pw@broker:5672/%2f".into(),
        );
        env.insert(
            "WEILING_RELAY__SECURITY__SIGN_RECORDS_KEY".into(),
            "rec0rdk3y".into(),
        );
        let s = Settings::load(None, &env).unwrap();
        let out = s.to_masked_toml();
        for secret in ["s3cr3t-app", TOKEN, AES, "hunter2pw", "rec0rdk3y"] {
            assert!(
                !out.contains(secret),
                "secret leaked into check-config output"
            );
        }
        assert!(out.contains("amqp://relay:********@broker:5672/%2f"));
        assert!(out.contains("wloa0123"));
        let debug = format!("{s:?}");
        for secret in ["s3cr3t-app", TOKEN, AES, "rec0rdk3y", "hunter2pw"] {
            assert!(!debug.contains(secret), "secret leaked into Debug output");
        }
    }

    const TOKEN2: &str = "N3wTok3nN3wTok3nN3w";
    const AES2: &str = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut";

    fn app_file(body: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wr-config-rot-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("relay.toml");
        std::fs::write(
            &file,
            format!("[[apps]]\napp_id = \"wloaA\"\napp_secret = \"x\"\n{body}"),
        )
        .unwrap();
        (dir, file)
    }

    #[test]
    fn rotation_lists_load_newest_first_and_are_masked() {
        let (dir, file) = app_file(&format!(
            "tokens = [\"{TOKEN2}\", \"{TOKEN}\"]\nencoding_aes_keys = [\"{AES2}\", \"{AES}\"]\n"
        ));
        let s = Settings::load(Some(&file), &HashMap::new()).unwrap();
        let app = &s.apps[0];
        let tokens: Vec<&str> = app
            .callback_tokens()
            .iter()
            .map(|t| t.expose_secret())
            .collect();
        assert_eq!(tokens, [TOKEN2, TOKEN]);
        let keys: Vec<&str> = app.aes_keys().iter().map(|k| k.expose_secret()).collect();
        assert_eq!(keys, [AES2, AES]);
        let out = s.to_masked_toml();
        for secret in [TOKEN, TOKEN2, AES, AES2] {
            assert!(!out.contains(secret), "a rotation entry leaked: {out}");
        }
        assert!(
            out.contains("tokens = [\n    \"********\",\n    \"********\",\n]"),
            "{out}"
        );
        assert!(
            !out.contains("token = \"\""),
            "the unused single form is not printed"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rotation_errors_name_the_key() {
        let cases = [
            (
                format!(
                    "token = \"{TOKEN}\"\ntokens = [\"{TOKEN2}\"]\nencoding_aes_key = \"{AES}\"\n"
                ),
                "apps[0].tokens",
            ),
            (format!("encoding_aes_key = \"{AES}\"\n"), "apps[0].token"),
            (
                format!("tokens = []\nencoding_aes_key = \"{AES}\"\n"),
                "apps[0].token",
            ),
            (
                format!("tokens = [\"{TOKEN}\", \"short\"]\nencoding_aes_key = \"{AES}\"\n"),
                "apps[0].tokens[1]",
            ),
            (
                format!("tokens = [\"{TOKEN}\", \"{TOKEN}\"]\nencoding_aes_key = \"{AES}\"\n"),
                "apps[0].tokens[1]",
            ),
            (
                format!("token = \"{TOKEN}\"\nencoding_aes_keys = [\"{AES}\", \"tooshort\"]\n"),
                "apps[0].encoding_aes_keys[1]",
            ),
            (
                format!(
                    "token = \"{TOKEN}\"\nencoding_aes_key = \"{AES}\"\nencoding_aes_keys = [\"{AES2}\"]\n"
                ),
                "apps[0].encoding_aes_keys",
            ),
            (
                format!(
                    "token = \"{TOKEN}\"\nencoding_aes_keys = [\"{AES}\", \"{AES2}\", \"{}\", \"{}\", \"{}\"]\n",
                    "a".repeat(43),
                    "b".repeat(43),
                    "c".repeat(43)
                ),
                "apps[0].encoding_aes_keys",
            ),
        ];
        for (body, key) in cases {
            let (dir, file) = app_file(&body);
            let err = Settings::load(Some(&file), &HashMap::new()).unwrap_err();
            assert_eq!(invalid_key(err), key, "{body}");
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn the_built_in_mappings_cover_the_catalogs_customer_and_contact_events() {
        let s = Settings::load(None, &app_env()).unwrap();
        let mut mapped: Vec<&str> = s.events.keys().map(String::as_str).collect();
        mapped.sort_unstable();
        assert_eq!(
            mapped,
            vec![
                "add_customer",
                "company_add",
                "company_customer_add",
                "company_v2_add",
                "company_v2_update",
                "contact_add",
                "contact_update",
                "customer_update",
                "history_add",
                "progress_add",
                "tag_update",
                "tag_update_v2",
            ],
            "exactly the catalog's names, as Weiling sends them (企微好友更新 is customer_update)"
        );
        assert_eq!(
            s.events["company_add"].rules[0].each.as_deref(),
            Some("/customer_list")
        );
    }

    #[test]
    fn a_mapping_in_a_later_layer_replaces_the_built_in_one_as_a_whole() {
        let (dir, file) = app_file(&format!(
            "token = \"{TOKEN}\"\nencoding_aes_key = \"{AES}\"\n\n[events]\ntag_update = []\nprogress_add = [{{ ids = [\"/x\"] }}]\n"
        ));
        let s = Settings::load(Some(&file), &HashMap::new()).unwrap();
        assert!(s.events["tag_update"].rules.is_empty(), "turned off");
        assert_eq!(
            s.events["progress_add"].rules,
            vec![EventRule::customers(&["/x"])],
            "the built-in `when` does not leak into the replacement"
        );
        std::fs::remove_dir_all(dir).unwrap();

        let (dir, file) = app_file(&format!(
            "token = \"{TOKEN}\"\nencoding_aes_key = \"{AES}\"\n\n[events]\nx = [{{ ids = [] }}]\n"
        ));
        let err = Settings::load(Some(&file), &HashMap::new()).unwrap_err();
        assert_eq!(invalid_key(err), "events.x");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn event_mappings_name_their_entity_and_a_mistyped_one_is_named_in_the_error() {
        let s = Settings::load(None, &app_env()).unwrap();
        assert_eq!(s.events["contact_update"].entity(), Entity::Contact);
        assert_eq!(s.events["add_customer"].entity(), Entity::Customer);
        assert_eq!(s.events["progress_add"].entity(), Entity::Customer);

        let (dir, file) = app_file(&format!(
            "token = \"{TOKEN}\"\nencoding_aes_key = \"{AES}\"\n\n[events]\nlead_add = {{ entity = \"lead\", ids = [\"/lead_id\"] }}\n"
        ));
        let err = Settings::load(Some(&file), &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown entity \"lead\"") && err.contains("events.lead_add"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_env_shortcut_takes_comma_separated_lists() {
        let mut env = app_env();
        env.insert("WEILING_RELAY_TOKEN".into(), format!("{TOKEN2}, {TOKEN}"));
        env.insert(
            "WEILING_RELAY_ENCODING_AES_KEY".into(),
            format!("{AES2},{AES}"),
        );
        let s = Settings::load(None, &env).unwrap();
        assert_eq!(s.apps[0].tokens.len(), 2);
        assert_eq!(s.apps[0].aes_keys()[1].expose_secret(), AES);
        let out = s.to_masked_toml();
        assert!(!out.contains(TOKEN2) && !out.contains(AES2));

        env.insert("WEILING_RELAY_TOKEN".into(), format!("{TOKEN2},short"));
        let err = Settings::load(None, &env).unwrap_err();
        assert_eq!(invalid_key(err), "apps[0].tokens[1]");
    }

    #[test]
    fn rotating_in_a_key_keeps_the_old_one_second() {
        let mut app = Settings::load(None, &app_env()).unwrap().apps.remove(0);
        app.rotate_in_aes_key(SecretString::from(AES2));
        app.rotate_in_token(SecretString::from(TOKEN2));
        let keys: Vec<&str> = app.aes_keys().iter().map(|k| k.expose_secret()).collect();
        assert_eq!(keys, [AES2, AES]);
        assert_eq!(app.callback_tokens().len(), 2);
        assert!(app.token.expose_secret().is_empty());
        assert!(validate_app(0, &app).is_ok());
    }

    #[test]
    fn url_masking_handles_every_shape() {
        assert_eq!(mask_url_password("amqp://h:5672/%2f"), "amqp://h:5672/%2f");
        assert_eq!(mask_url_password("amqp://u:p@h"), "amqp://u:********@h");
        assert_eq!(mask_url_password("amqp://u@h/v"), "amqp://u:********@h/v");
        assert_eq!(mask_url_password("garbage"), "garbage");
        assert_eq!(
            mask_url_password("amqp://u:p@h1/%2f, amqp://u:q@h2/%2f"),
            "amqp://u:********@h1/%2f,amqp://u:********@h2/%2f"
        );
    }
}
