//! Configuration in two stages, as ripgrep does it: [`RawConfig`] is what the TOML file
//! and `PORTCULLIS_SECTION__KEY` variables say (every key optional, unknown keys
//! refused); [`Config`] is validated and complete. Only `Config` reaches the server, and
//! every error names where the value came from, the key, and the fix.

use crate::auth::access::{AccessRule, AccessRules, Subject};
use crate::notify::EventKind;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:5000";
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Prefix of environment variables that override file keys: `PORTCULLIS_SERVER__LISTEN`.
pub const ENV_PREFIX: &str = "PORTCULLIS_";

/// One value or a list of them (`listen = "a"` or `listen = ["a", "b"]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    storage: RawStorage,
    tls: Option<RawTls>,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    accounts: RawAccounts,
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    access: Vec<RawAccess>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    mirror: RawMirror,
    #[serde(default)]
    upstream: Vec<RawUpstream>,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    gc: RawGc,
    #[serde(default)]
    retention: Vec<RawRetention>,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    notifications: Vec<RawNotification>,
    #[serde(default)]
    activity: RawActivity,
}

/// `[activity]`: the activity log.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawActivity {
    retention_days: Option<u64>,
}

/// `[[notifications]]`: one webhook endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotification {
    name: Option<String>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    timeout_secs: Option<u64>,
    retries: Option<u32>,
    backoff_secs: Option<u64>,
    queue: Option<usize>,
    events: Option<Vec<String>>,
    repositories: Option<OneOrMany>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
    repository_label: Option<bool>,
    check_upstreams: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    access: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    users: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGc {
    interval_secs: Option<u64>,
    delete_untagged: Option<bool>,
    grace_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    repositories: OneOrMany,
    keep_last: Option<usize>,
    keep_days: Option<u64>,
    #[serde(default)]
    protect: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    max_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMirror {
    default_upstream: Option<String>,
    local: Option<OneOrMany>,
    offline: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    url: Option<String>,
    repositories: Option<OneOrMany>,
    tag_ttl_secs: Option<u64>,
    username: Option<String>,
    password: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    ca: Option<PathBuf>,
    connect_timeout_secs: Option<u64>,
    response_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<OneOrMany>,
    tls_listen: Option<OneOrMany>,
    threads: Option<usize>,
    read_only: Option<bool>,
    redirect_to_https: Option<bool>,
    shutdown_grace_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    data_dir: Option<PathBuf>,
    min_free_bytes: Option<u64>,
    upload_expiry_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default)]
    extra: Vec<RawCertPair>,
    client_ca: Option<PathBuf>,
    client_auth: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertPair {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    htpasswd: Option<PathBuf>,
    realm: Option<String>,
    cache_ttl_secs: Option<u64>,
    cache_capacity: Option<u64>,
    max_failures: Option<u32>,
    failure_window_secs: Option<u64>,
    token: Option<bool>,
    token_ttl_secs: Option<u64>,
    token_realm: Option<String>,
    token_service: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccounts {
    enabled: Option<bool>,
    global_visibility: Option<String>,
    bcrypt_cost: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    repositories: OneOrMany,
    #[serde(default)]
    pull: Vec<String>,
    #[serde(default)]
    push: Vec<String>,
    #[serde(default)]
    delete: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_body_bytes: Option<u64>,
    max_manifest_bytes: Option<usize>,
    max_concurrent_uploads: Option<usize>,
    keepalive_secs: Option<u64>,
    read_timeout_secs: Option<u64>,
    write_timeout_secs: Option<u64>,
    header_timeout_secs: Option<u64>,
    max_connections_per_ip: Option<usize>,
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Plain-HTTP listeners.
    pub listen: Vec<SocketAddr>,
    /// TLS listeners; non-empty only with `tls`.
    pub tls_listen: Vec<SocketAddr>,
    pub threads: usize,
    pub read_only: bool,
    /// Plain HTTP arriving on a TLS port gets a 308 to https:// instead of a 400.
    pub redirect_to_https: bool,
    pub data_dir: PathBuf,
    /// Uploads are refused (507) while the data directory's file system has less
    /// free space than this, so the metadata store never meets a full disk.
    pub min_free_bytes: u64,
    pub tls: Option<TlsConfig>,
    pub auth: AuthConfig,
    pub accounts: AccountsConfig,
    pub access: AccessRules,
    pub limits: Limits,
    pub mirror: MirrorConfig,
    /// Upload sessions idle this long are removed with their bytes.
    pub upload_expiry: Duration,
    pub gc: GcConfig,
    /// Byte cap on content the pull-through cache stored; `None`: no cap.
    pub cache_max_bytes: Option<u64>,
    /// SIGTERM and upgrades: how long in-flight requests get to finish.
    pub shutdown_grace: Duration,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    /// Webhook endpoints that get registry events (`[[notifications]]`).
    pub notifications: Vec<NotificationEndpoint>,
    pub activity: ActivityConfig,
}

/// `[activity]`: the activity log (`DATA/activity.redb`).
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityConfig {
    /// Entries older than this are removed (at start, then daily); `None`: kept forever.
    pub retention: Option<Duration>,
}

pub const DEFAULT_ACTIVITY_RETENTION_DAYS: u64 = 90;
/// A longer retention is a mistake for "forever" (0), or a unit slip.
const MAX_ACTIVITY_RETENTION_DAYS: u64 = 36_500;
const DAY: Duration = Duration::from_secs(24 * 3600);

impl Default for ActivityConfig {
    fn default() -> ActivityConfig {
        ActivityConfig {
            retention: Some(DAY * DEFAULT_ACTIVITY_RETENTION_DAYS as u32),
        }
    }
}

/// One `[[notifications]]` endpoint: where events go, which ones, and how hard to try.
#[derive(Clone, PartialEq)]
pub struct NotificationEndpoint {
    /// Unique; names the endpoint in logs and metric labels.
    pub name: String,
    pub url: String,
    /// Sent with every POST (e.g. `Authorization`); checked to be valid HTTP.
    pub headers: Vec<(String, String)>,
    /// One POST, from connecting to the end of the answer.
    pub timeout: Duration,
    /// Attempts after the first before a batch is given up.
    pub retries: u32,
    /// Wait before the first retry; doubles per retry up to [`MAX_NOTIFICATION_BACKOFF`].
    pub backoff: Duration,
    /// Events waiting for this endpoint; more are dropped (and counted).
    pub queue: usize,
    pub events: Vec<EventKind>,
    /// Repository patterns (as in `[[access]]`); empty: every repository.
    pub repositories: Vec<String>,
}

/// Hand-written so header values (tokens) never reach a log line or a panic message.
impl std::fmt::Debug for NotificationEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationEndpoint")
            .field("name", &self.name)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("backoff", &self.backoff)
            .field("queue", &self.queue)
            .field("events", &self.events)
            .field("repositories", &self.repositories)
            .finish_non_exhaustive()
    }
}

pub const DEFAULT_NOTIFICATION_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_NOTIFICATION_RETRIES: u32 = 5;
pub const DEFAULT_NOTIFICATION_BACKOFF: Duration = Duration::from_secs(1);
/// The doubling back-off stops growing here.
pub const MAX_NOTIFICATION_BACKOFF: Duration = Duration::from_secs(60);
pub const DEFAULT_NOTIFICATION_QUEUE: usize = 1000;
/// Bounds on `retries` and `queue`: a batch is never retried for hours, and a dead
/// endpoint holds at most this many events in memory.
const MAX_NOTIFICATION_RETRIES: u32 = 100;
const MAX_NOTIFICATION_QUEUE: usize = 100_000;

/// `[metrics]`: the operations listener (`/metrics`, `/healthz`, `/readyz`).
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    /// Off unless set: metrics stay off the public port.
    pub listen: Option<SocketAddr>,
    /// Per-repository request counts (one series per repository: mind cardinality).
    pub repository_label: bool,
    /// `/readyz` also fails while an upstream is marked down.
    pub check_upstreams: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "{other:?} is not a log format; use \"text\" or \"json\""
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// One access-log line per request.
    pub access: bool,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            format: LogFormat::Text,
            access: true,
        }
    }
}

/// Garbage collection and the rules it applies.
#[derive(Debug, Clone, PartialEq)]
pub struct GcConfig {
    /// Time between scheduled collections; `None`: only on demand.
    pub interval: Option<Duration>,
    pub delete_untagged: bool,
    /// Content made or read more recently than this is kept.
    pub grace: Duration,
    pub retention: Vec<RetentionRule>,
}

/// Which tags of matching repositories to keep (the first matching rule applies).
/// A tag is kept if any condition holds.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionRule {
    pub repositories: Vec<String>,
    /// The N most recently pushed tags.
    pub keep_last: Option<usize>,
    /// Tags pushed within D days.
    pub keep_days: Option<u64>,
    /// Tag patterns never taken away (`v*`).
    pub protect: Vec<String>,
}

pub const DEFAULT_UPLOAD_EXPIRY: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_GC_GRACE: Duration = Duration::from_secs(3600);

/// The pull-through cache: which repositories come from which upstream registry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MirrorConfig {
    pub upstreams: Vec<UpstreamConfig>,
    /// Serves requests that name no registry (no `?ns=`, no registry prefix);
    /// `None`: such requests are local.
    pub default_upstream: Option<String>,
    /// Repository patterns that are never sent upstream and accept pushes.
    pub local: Vec<String>,
    /// Never contact an upstream: serve what the cache holds.
    pub offline: bool,
}

#[derive(Clone, PartialEq)]
pub struct UpstreamConfig {
    /// The registry's name as clients spell it (`docker.io`, `ghcr.io`): what `?ns=`
    /// and path prefixes select, and the first component of cached repositories.
    pub name: String,
    pub url: String,
    /// Patterns of upstream repository names this upstream serves.
    pub repositories: Vec<String>,
    pub tag_ttl: Duration,
    pub credentials: Option<Credentials>,
    /// Extra CA certificates (PEM) to trust for this upstream.
    pub ca: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Until the response head arrives.
    pub response_timeout: Duration,
    /// The longest pause within a response body.
    pub idle_timeout: Duration,
}

/// Hand-written so the password never reaches a log line or a panic message.
impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("repositories", &self.repositories)
            .field("tag_ttl", &self.tag_ttl)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|c| &c.username),
            )
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// The URL of the well-known registries' APIs, by the name clients use for them.
pub fn default_upstream_url(name: &str) -> String {
    match name {
        "docker.io" => "https://registry-1.docker.io".to_string(),
        other => format!("https://{other}"),
    }
}

impl UpstreamConfig {
    /// An upstream with every setting at its default.
    pub fn named(name: &str, url: Option<String>) -> UpstreamConfig {
        UpstreamConfig {
            name: name.to_string(),
            url: url.unwrap_or_else(|| default_upstream_url(name)),
            repositories: vec!["*".to_string()],
            tag_ttl: Duration::from_secs(300),
            credentials: None,
            ca: None,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Off,
    /// A client certificate is verified when presented, but not required.
    Optional,
    Required,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// The first pair is the default; the others are chosen by SNI from their SANs.
    pub certificates: Vec<CertPair>,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    /// No htpasswd file: every request is anonymous.
    pub htpasswd: Option<PathBuf>,
    pub realm: String,
    pub cache_ttl: Duration,
    pub cache_capacity: u64,
    /// Failed logins allowed per client address and per user within `failure_window`.
    pub max_failures: u32,
    pub failure_window: Duration,
    /// Docker token authentication (`auth.token`): challenges say `Bearer`, and
    /// `/token` issues signed tokens. Basic credentials keep working either way.
    pub token: Option<TokenConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenConfig {
    /// How long an access token is good for.
    pub ttl: Duration,
    /// The token endpoint's URL as clients reach it; `None`: built from each request's
    /// scheme and `Host` (`https://HOST/token`).
    pub realm: Option<String>,
    /// The `service` (and the tokens' audience).
    pub service: String,
}

/// `[accounts]`: users, teams, namespaces and tokens in `DATA/accounts.redb`.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountsConfig {
    pub enabled: bool,
    /// Who may pull from the global namespace until an admin changes it.
    pub global_visibility: crate::accounts::Visibility,
    pub bcrypt_cost: u32,
}

impl Default for AccountsConfig {
    fn default() -> AccountsConfig {
        AccountsConfig {
            enabled: false,
            global_visibility: crate::accounts::Visibility::Protected,
            bcrypt_cost: crate::auth::htpasswd::DEFAULT_BCRYPT_COST,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_manifest_bytes: usize,
    pub max_concurrent_uploads: usize,
    pub keepalive_secs: u64,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// A new connection must show what it speaks, and every request head must
    /// arrive whole, within this long (slow or stalled clients are closed).
    pub header_timeout: Duration,
    /// Open connections per client address; 0 for no cap.
    pub max_connections_per_ip: usize,
}

/// Default of `storage.min_free_bytes`: 64 MiB.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 << 20;
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body_bytes: 32 << 30,
            max_manifest_bytes: crate::oci::manifest::MAX_MANIFEST_BYTES,
            max_concurrent_uploads: 256,
            keepalive_secs: 60,
            read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(20),
            max_connections_per_ip: 512,
        }
    }
}

/// Values given on the command line; they win over the file and the environment.
#[derive(Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// `--mirror NAME[=URL]`: upstreams to add; the first serves unprefixed names.
    pub mirrors: Vec<String>,
    /// `--offline`
    pub offline: bool,
    /// `--metrics-listen ADDR`
    pub metrics_listen: Option<String>,
    /// `--log-format text|json`
    pub log_format: Option<LogFormat>,
}

/// A configuration error: where, which key, what to do.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    origin: String,
    message: String,
}

impl ConfigError {
    fn new(origin: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: origin.into(),
            message: message.into(),
        }
    }
}

/// Loads the file (if any), applies `PORTCULLIS_*` variables from `env`, then validates.
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: Overrides,
) -> Result<Config, ConfigError> {
    let (text, origin) = match path {
        Some(p) => {
            let origin = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|e| {
                ConfigError::new(
                    &origin,
                    format!("cannot read the file ({e}); check the --config path"),
                )
            })?;
            (text, origin)
        }
        None => (String::new(), "built-in defaults".to_string()),
    };
    from_text(&text, &origin, env, overrides)
}

/// [`load`] for configuration text already in memory; `origin` names it in errors.
pub fn from_text(
    text: &str,
    origin: &str,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: Overrides,
) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = env.into_iter().collect();
    RawConfig::parse(text, origin, env.iter().cloned())?.resolve(origin, overrides, &env)
}

/// Line number (1-based) of a byte offset, for error messages.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl RawConfig {
    /// Parses TOML text and applies environment overrides on top. Each override is
    /// checked as it is applied, so an error names the variable that caused it.
    fn parse(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<RawConfig, ConfigError> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(":{}", line_of(text, s.start)))
                .unwrap_or_default();
            ConfigError::new(
                format!("{origin}{at}"),
                format!(
                    "{}; see conf/portcullis.toml for every key and its type",
                    e.message().trim()
                ),
            )
        })?;
        let mut table: toml::Table = text.parse().unwrap_or_default();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let Some((section, key)) = rest.split_once("__") else {
                return Err(ConfigError::new(
                    &name,
                    format!("variables of the form {ENV_PREFIX}SECTION__KEY set one key, e.g. {ENV_PREFIX}SERVER__LISTEN"),
                ));
            };
            let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
            // A TOML literal (number, bool, array) if it parses as one, else a string.
            let value = format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(value));
            let entry = table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(section_table) = entry.as_table_mut() else {
                return Err(ConfigError::new(
                    &name,
                    format!("[{section}] is not a table in {origin}"),
                ));
            };
            section_table.insert(key.clone(), value);
            raw = RawConfig::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
                ConfigError::new(
                    format!("{name} (environment)"),
                    format!(
                        "{section}.{key}: {}; see conf/portcullis.toml for its type",
                        e.message().trim()
                    ),
                )
            })?;
        }
        Ok(raw)
    }

    /// Applies command-line overrides and defaults, and validates the result.
    fn resolve(
        self,
        origin: &str,
        overrides: Overrides,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let at = |key: &str| format!("{origin}: {key}");
        let addresses = |values: Vec<String>, key: &str| -> Result<Vec<SocketAddr>, ConfigError> {
            values
                .iter()
                .map(|v| {
                    v.parse().map_err(|_| {
                        ConfigError::new(
                            at(key),
                            format!("{v:?} is not a socket address; write IP:PORT, e.g. {DEFAULT_LISTEN} or [::]:443"),
                        )
                    })
                })
                .collect()
        };
        let listen = match overrides.listen.clone() {
            Some(l) => addresses(vec![l], "--listen")?,
            None => match self.server.listen {
                Some(l) => addresses(l.into_vec(), "server.listen")?,
                None if self.server.tls_listen.is_some() => Vec::new(),
                None => vec![DEFAULT_LISTEN.parse().expect("valid default")],
            },
        };
        let tls_listen = addresses(
            self.server
                .tls_listen
                .map(OneOrMany::into_vec)
                .unwrap_or_default(),
            "server.tls_listen",
        )?;
        if listen.is_empty() && tls_listen.is_empty() {
            return Err(ConfigError::new(
                at("server.listen"),
                "no listener configured; set server.listen or server.tls_listen",
            ));
        }
        let tls = self.tls.map(|t| resolve_tls(t, origin)).transpose()?;
        if !tls_listen.is_empty() && tls.is_none() {
            return Err(ConfigError::new(
                at("server.tls_listen"),
                "TLS listeners need a [tls] section with cert and key; `portcullis certs --out certs --name HOST` makes a pair",
            ));
        }
        let auth = resolve_auth(self.auth, origin)?;
        let accounts = resolve_accounts(self.accounts, &auth, &self.access, &self.admin, origin)?;
        let access = resolve_access(
            self.access,
            self.groups,
            self.admin,
            auth.htpasswd.is_some() || accounts.enabled,
            origin,
        )?;
        let gc = resolve_gc(self.gc, self.retention, origin)?;
        let cache_max_bytes = match self.cache.max_bytes {
            Some(0) => {
                return Err(ConfigError::new(
                    at("cache.max_bytes"),
                    "0 would evict everything the cache fetches; leave it out for no cap",
                ))
            }
            other => other,
        };
        let upload_expiry = match self.storage.upload_expiry_secs {
            Some(0) => {
                return Err(ConfigError::new(
                    at("storage.upload_expiry_secs"),
                    "0 would remove uploads while they run; give seconds, e.g. 86400",
                ))
            }
            Some(secs) => Duration::from_secs(secs),
            None => DEFAULT_UPLOAD_EXPIRY,
        };
        let limits = resolve_limits(self.limits, origin)?;
        let metrics = MetricsConfig {
            listen: match (&overrides.metrics_listen, self.metrics.listen) {
                (Some(l), _) => addresses(vec![l.clone()], "--metrics-listen")?.pop(),
                (None, Some(l)) => addresses(vec![l], "metrics.listen")?.pop(),
                (None, None) => None,
            },
            repository_label: self.metrics.repository_label.unwrap_or(false),
            check_upstreams: self.metrics.check_upstreams.unwrap_or(false),
        };
        let format = match (overrides.log_format, self.log.format) {
            (Some(f), _) => f,
            (None, Some(f)) => f
                .parse()
                .map_err(|e: String| ConfigError::new(at("log.format"), e))?,
            (None, None) => LogFormat::Text,
        };
        let log = LogConfig {
            format,
            access: self.log.access.unwrap_or(LogConfig::default().access),
        };
        let shutdown_grace = self
            .server
            .shutdown_grace_secs
            .map_or(DEFAULT_SHUTDOWN_GRACE, Duration::from_secs);
        let mirror = resolve_mirror(self.mirror, self.upstream, &overrides, env, origin)?;
        let notifications = resolve_notifications(self.notifications, origin)?;
        let activity = resolve_activity(self.activity, origin)?;
        let threads = match self.server.threads {
            None | Some(0) => std::thread::available_parallelism().map_or(2, |n| n.get()),
            Some(n) => n,
        };
        let data_dir = overrides
            .data_dir
            .or(self.storage.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        Ok(Config {
            listen,
            tls_listen,
            threads,
            read_only: self.server.read_only.unwrap_or(false),
            redirect_to_https: self.server.redirect_to_https.unwrap_or(false),
            data_dir,
            min_free_bytes: self
                .storage
                .min_free_bytes
                .unwrap_or(DEFAULT_MIN_FREE_BYTES),
            tls,
            auth,
            accounts,
            access,
            limits,
            mirror,
            upload_expiry,
            gc,
            cache_max_bytes,
            shutdown_grace,
            metrics,
            log,
            notifications,
            activity,
        })
    }
}

fn resolve_activity(raw: RawActivity, origin: &str) -> Result<ActivityConfig, ConfigError> {
    let retention = match raw.retention_days {
        None => ActivityConfig::default().retention,
        Some(0) => None,
        Some(days) if days > MAX_ACTIVITY_RETENTION_DAYS => {
            return Err(ConfigError::new(
                format!("{origin}: activity.retention_days"),
                format!(
                    "{days} days is more than {MAX_ACTIVITY_RETENTION_DAYS}; \
                     write 0 to keep the activity log forever"
                ),
            ))
        }
        Some(days) => Some(DAY * days as u32),
    };
    Ok(ActivityConfig { retention })
}

fn resolve_gc(raw: RawGc, rules: Vec<RawRetention>, origin: &str) -> Result<GcConfig, ConfigError> {
    let mut retention = Vec::new();
    for (i, rule) in rules.into_iter().enumerate() {
        if rule.keep_last.is_none() && rule.keep_days.is_none() {
            return Err(ConfigError::new(
                format!("{origin}: retention[{i}]"),
                "a retention rule needs keep_last, keep_days or both (a tag is kept if either holds)",
            ));
        }
        retention.push(RetentionRule {
            repositories: rule.repositories.into_vec(),
            keep_last: rule.keep_last,
            keep_days: rule.keep_days,
            protect: rule.protect,
        });
    }
    Ok(GcConfig {
        interval: match raw.interval_secs {
            Some(0) => None,
            Some(secs) => Some(Duration::from_secs(secs)),
            None => Some(DEFAULT_GC_INTERVAL),
        },
        delete_untagged: raw.delete_untagged.unwrap_or(false),
        grace: raw.grace_secs.map_or(DEFAULT_GC_GRACE, Duration::from_secs),
        retention,
    })
}

/// Checks that a configured file can be read, naming the key on failure.
fn readable(path: &Path, origin: &str, key: &str, fix: &str) -> Result<(), ConfigError> {
    std::fs::metadata(path).map(drop).map_err(|e| {
        ConfigError::new(
            format!("{origin}: {key}"),
            format!("cannot read {} ({e}); {fix}", path.display()),
        )
    })
}

fn resolve_tls(raw: RawTls, origin: &str) -> Result<TlsConfig, ConfigError> {
    let make = "make a pair with `portcullis certs --out certs --name HOST`";
    let (Some(cert), Some(key)) = (raw.cert, raw.key) else {
        return Err(ConfigError::new(
            format!("{origin}: tls"),
            format!("[tls] needs both cert and key; {make}"),
        ));
    };
    let mut certificates = vec![CertPair { cert, key }];
    certificates.extend(raw.extra.into_iter().map(|p| CertPair {
        cert: p.cert,
        key: p.key,
    }));
    for (i, pair) in certificates.iter().enumerate() {
        let prefix = if i == 0 {
            "tls".to_string()
        } else {
            format!("tls.extra[{}]", i - 1)
        };
        readable(&pair.cert, origin, &format!("{prefix}.cert"), make)?;
        readable(&pair.key, origin, &format!("{prefix}.key"), make)?;
    }
    let client_auth = match raw.client_auth.as_deref() {
        None | Some("off") => ClientAuth::Off,
        Some("optional") => ClientAuth::Optional,
        Some("required") => ClientAuth::Required,
        Some(other) => {
            return Err(ConfigError::new(
                format!("{origin}: tls.client_auth"),
                format!("{other:?} is not one of \"off\", \"optional\", \"required\""),
            ))
        }
    };
    if client_auth != ClientAuth::Off {
        let Some(ca) = &raw.client_ca else {
            return Err(ConfigError::new(
                format!("{origin}: tls.client_ca"),
                "client_auth needs client_ca, the PEM file of the CA that signs client certificates",
            ));
        };
        readable(
            ca,
            origin,
            "tls.client_ca",
            "point it at the client CA's PEM file",
        )?;
    }
    Ok(TlsConfig {
        certificates,
        client_ca: raw.client_ca,
        client_auth,
    })
}

fn resolve_auth(raw: RawAuth, origin: &str) -> Result<AuthConfig, ConfigError> {
    if let Some(path) = &raw.htpasswd {
        readable(
            path,
            origin,
            "auth.htpasswd",
            "create it with `portcullis htpasswd add FILE USER`",
        )?;
    }
    let positive = |value: Option<u64>, default: u64, key: &str| -> Result<u64, ConfigError> {
        match value {
            Some(0) => Err(ConfigError::new(
                format!("{origin}: {key}"),
                "must be greater than 0",
            )),
            Some(v) => Ok(v),
            None => Ok(default),
        }
    };
    Ok(AuthConfig {
        htpasswd: raw.htpasswd,
        realm: raw.realm.unwrap_or_else(|| "portcullis".to_string()),
        cache_ttl: Duration::from_secs(positive(raw.cache_ttl_secs, 120, "auth.cache_ttl_secs")?),
        cache_capacity: positive(raw.cache_capacity, 10_000, "auth.cache_capacity")?,
        max_failures: positive(raw.max_failures.map(u64::from), 10, "auth.max_failures")? as u32,
        failure_window: Duration::from_secs(positive(
            raw.failure_window_secs,
            60,
            "auth.failure_window_secs",
        )?),
        token: match raw.token {
            Some(true) => Some(TokenConfig {
                ttl: Duration::from_secs(positive(raw.token_ttl_secs, 300, "auth.token_ttl_secs")?),
                realm: raw
                    .token_realm
                    .map(|realm| match realm.starts_with("https://") || realm.starts_with("http://") {
                        true => Ok(realm),
                        false => Err(ConfigError::new(
                            format!("{origin}: auth.token_realm"),
                            format!("{realm:?} is not a URL; write the token endpoint as clients reach it, e.g. \"https://registry.example.com/token\""),
                        )),
                    })
                    .transpose()?,
                service: raw.token_service.unwrap_or_else(|| "portcullis".to_string()),
            }),
            _ => None,
        },
    })
}

fn resolve_accounts(
    raw: RawAccounts,
    auth: &AuthConfig,
    access: &[RawAccess],
    admin: &RawAdmin,
    origin: &str,
) -> Result<AccountsConfig, ConfigError> {
    let defaults = AccountsConfig::default();
    let enabled = raw.enabled.unwrap_or(false);
    let refuse = |key: &str, fix: &str| {
        Err(ConfigError::new(
            format!("{origin}: {key}"),
            format!("accounts.enabled replaces it: {fix}"),
        ))
    };
    if enabled && auth.htpasswd.is_some() {
        return refuse(
            "auth.htpasswd",
            "remove it (`portcullis user import FILE` copies its users into the accounts)",
        );
    }
    if enabled && !access.is_empty() {
        return refuse(
            "access",
            "remove the [[access]] rules; namespaces, teams and visibility decide instead",
        );
    }
    if enabled && admin.users.is_some() {
        return refuse(
            "admin.users",
            "remove it; admins are accounts (`portcullis user add NAME --admin`)",
        );
    }
    let global_visibility = match raw.global_visibility.as_deref() {
        None => defaults.global_visibility,
        Some(text) => text.parse().map_err(|e: String| {
            ConfigError::new(format!("{origin}: accounts.global_visibility"), e)
        })?,
    };
    let bcrypt_cost = match raw.bcrypt_cost {
        None => defaults.bcrypt_cost,
        Some(cost @ 4..=31) => cost,
        Some(cost) => {
            return Err(ConfigError::new(
                format!("{origin}: accounts.bcrypt_cost"),
                format!("{cost} is outside bcrypt's 4 to 31; 10 to 12 suits most servers"),
            ))
        }
    };
    Ok(AccountsConfig {
        enabled,
        global_visibility,
        bcrypt_cost,
    })
}

fn resolve_access(
    raw: Vec<RawAccess>,
    groups: BTreeMap<String, Vec<String>>,
    admin: RawAdmin,
    auth_enabled: bool,
    origin: &str,
) -> Result<AccessRules, ConfigError> {
    let subjects = |names: Vec<String>, key: &str| -> Result<Vec<Subject>, ConfigError> {
        names
            .iter()
            .map(|name| {
                let subject = Subject::parse(name);
                match &subject {
                    Subject::Group(g) if !groups.contains_key(g) => Err(ConfigError::new(
                        format!("{origin}: {key}"),
                        format!("group {g:?} is not defined; add it under [groups]"),
                    )),
                    _ => Ok(subject),
                }
            })
            .collect()
    };
    let admins = admin
        .users
        .map(|users| subjects(users, "admin.users"))
        .transpose()?;
    if raw.is_empty() {
        let rules = AccessRules::default_for(auth_enabled, groups.clone());
        return Ok(match admins {
            Some(admins) => rules.with_admins(admins),
            None => rules,
        });
    }
    let mut rules = Vec::new();
    for (i, rule) in raw.into_iter().enumerate() {
        let key = |action: &str| format!("access[{i}].{action}");
        rules.push(AccessRule {
            repositories: rule.repositories.into_vec(),
            pull: subjects(rule.pull, &key("pull"))?,
            push: subjects(rule.push, &key("push"))?,
            delete: subjects(rule.delete, &key("delete"))?,
        });
    }
    // With rules of their own, operators name the admins; nobody is one by default.
    Ok(AccessRules::new(rules, groups.clone()).with_admins(admins.unwrap_or_default()))
}

fn resolve_limits(raw: RawLimits, origin: &str) -> Result<Limits, ConfigError> {
    let defaults = Limits::default();
    let nonzero = |value: Option<u64>, default: u64, key: &str| -> Result<u64, ConfigError> {
        match value {
            Some(0) => Err(ConfigError::new(
                format!("{origin}: limits.{key}"),
                "must be greater than 0",
            )),
            Some(v) => Ok(v),
            None => Ok(default),
        }
    };
    let secs = |v| Duration::from_secs(v);
    Ok(Limits {
        max_body_bytes: nonzero(
            raw.max_body_bytes,
            defaults.max_body_bytes,
            "max_body_bytes",
        )?,
        max_manifest_bytes: nonzero(
            raw.max_manifest_bytes.map(|v| v as u64),
            defaults.max_manifest_bytes as u64,
            "max_manifest_bytes",
        )? as usize,
        max_concurrent_uploads: nonzero(
            raw.max_concurrent_uploads.map(|v| v as u64),
            defaults.max_concurrent_uploads as u64,
            "max_concurrent_uploads",
        )? as usize,
        keepalive_secs: nonzero(
            raw.keepalive_secs,
            defaults.keepalive_secs,
            "keepalive_secs",
        )?,
        read_timeout: secs(nonzero(
            raw.read_timeout_secs,
            defaults.read_timeout.as_secs(),
            "read_timeout_secs",
        )?),
        write_timeout: secs(nonzero(
            raw.write_timeout_secs,
            defaults.write_timeout.as_secs(),
            "write_timeout_secs",
        )?),
        header_timeout: secs(nonzero(
            raw.header_timeout_secs,
            defaults.header_timeout.as_secs(),
            "header_timeout_secs",
        )?),
        max_connections_per_ip: raw
            .max_connections_per_ip
            .unwrap_or(defaults.max_connections_per_ip),
    })
}

/// A registry name as clients write it: a host name, optionally with a port.
fn valid_registry_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b))
        && !name.starts_with(['.', '-', ':'])
}

fn resolve_mirror(
    raw: RawMirror,
    raw_upstreams: Vec<RawUpstream>,
    overrides: &Overrides,
    env: &[(String, String)],
    origin: &str,
) -> Result<MirrorConfig, ConfigError> {
    let mut upstreams = Vec::new();
    for (i, raw) in raw_upstreams.into_iter().enumerate() {
        upstreams.push(resolve_upstream(raw, i, env, origin)?);
    }
    let mut default_upstream = raw.default_upstream;
    for (i, flag) in overrides.mirrors.iter().enumerate() {
        let (name, url) = match flag.split_once('=') {
            Some((name, url)) => (name, Some(url.to_string())),
            None => (flag.as_str(), None),
        };
        let at = format!("--mirror {flag}");
        if !valid_registry_name(name) {
            return Err(ConfigError::new(
                at,
                "write the registry's name, e.g. --mirror docker.io or --mirror ghcr.io=https://ghcr.io",
            ));
        }
        let upstream = UpstreamConfig::named(name, url);
        check_url(&upstream.url, &at, REGISTRY_URL_EXAMPLE)?;
        match upstreams.iter_mut().find(|u| u.name == name) {
            Some(existing) if flag.contains('=') => existing.url = upstream.url,
            Some(_) => {}
            None => upstreams.push(upstream),
        }
        if i == 0 && default_upstream.is_none() {
            default_upstream = Some(name.to_string());
        }
    }
    for (i, u) in upstreams.iter().enumerate() {
        if upstreams[..i].iter().any(|o| o.name == u.name) {
            return Err(ConfigError::new(
                format!("{origin}: upstream[{i}].name"),
                format!(
                    "upstream {:?} is defined twice; keep one [[upstream]] per registry",
                    u.name
                ),
            ));
        }
    }
    if let Some(name) = &default_upstream {
        if !upstreams.iter().any(|u| &u.name == name) {
            return Err(ConfigError::new(
                format!("{origin}: mirror.default_upstream"),
                format!("{name:?} is not the name of an [[upstream]]; add one or remove the key"),
            ));
        }
    }
    Ok(MirrorConfig {
        upstreams,
        default_upstream,
        local: raw.local.map(OneOrMany::into_vec).unwrap_or_default(),
        offline: overrides.offline || raw.offline.unwrap_or(false),
    })
}

const REGISTRY_URL_EXAMPLE: &str = "https://registry-1.docker.io";

/// An http:// or https:// URL with a host; `example` shows a good one in the error.
fn check_url(url: &str, at: &str, example: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(['?', '#']) => Ok(()),
        _ => Err(ConfigError::new(
            at,
            format!("{url:?} is not an http:// or https:// URL, e.g. {example}"),
        )),
    }
}

fn resolve_notifications(
    raw: Vec<RawNotification>,
    origin: &str,
) -> Result<Vec<NotificationEndpoint>, ConfigError> {
    let mut endpoints: Vec<NotificationEndpoint> = Vec::new();
    for (i, raw) in raw.into_iter().enumerate() {
        let endpoint = resolve_notification(raw, i, origin)?;
        if endpoints.iter().any(|e| e.name == endpoint.name) {
            return Err(ConfigError::new(
                format!("{origin}: notifications[{i}].name"),
                format!(
                    "{:?} names two endpoints; give each [[notifications]] its own name",
                    endpoint.name
                ),
            ));
        }
        endpoints.push(endpoint);
    }
    Ok(endpoints)
}

/// An endpoint name: it labels metrics and log lines, so short and plain.
fn valid_endpoint_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn resolve_notification(
    raw: RawNotification,
    index: usize,
    origin: &str,
) -> Result<NotificationEndpoint, ConfigError> {
    let at = |key: &str| format!("{origin}: notifications[{index}].{key}");
    let name = raw.name.ok_or_else(|| {
        ConfigError::new(
            at("name"),
            "every endpoint needs a name, e.g. name = \"sync\"",
        )
    })?;
    if !valid_endpoint_name(&name) {
        return Err(ConfigError::new(
            at("name"),
            format!("{name:?} is not a usable name; use up to 64 letters, digits, '-', '_' or '.'"),
        ));
    }
    let url = raw.url.ok_or_else(|| {
        ConfigError::new(
            at("url"),
            "every endpoint needs the url to POST events to, e.g. url = \"https://hooks.lan/registry\"",
        )
    })?;
    check_url(&url, &at("url"), "https://hooks.lan/registry")?;
    if let Err(e) = reqwest::Url::parse(&url) {
        return Err(ConfigError::new(
            at("url"),
            format!("{url:?} is not a valid URL ({e}); write it as https://HOST[:PORT]/PATH"),
        ));
    }
    let authority = url
        .split("://")
        .nth(1)
        .unwrap_or("")
        .split('/')
        .next()
        .unwrap_or("");
    if authority.contains('@') {
        return Err(ConfigError::new(
            at("url"),
            "credentials in the URL would show wherever it is logged; send them as a header \
             instead: headers = { Authorization = \"Bearer ...\" }",
        ));
    }
    let mut headers = Vec::new();
    for (header, value) in raw.headers {
        let key = format!("headers.{header}");
        if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            return Err(ConfigError::new(
                at(&key),
                "is not a valid HTTP header name; use letters, digits and '-', e.g. Authorization",
            ));
        }
        // The value is never repeated in the message: it is likely a token.
        if http::HeaderValue::from_str(&value).is_err() {
            return Err(ConfigError::new(
                at(&key),
                "the value is not a valid HTTP header value (no line breaks or control characters)",
            ));
        }
        headers.push((header, value));
    }
    let timeout = match raw.timeout_secs {
        Some(0) => {
            return Err(ConfigError::new(
                at("timeout_secs"),
                "must be greater than 0 (seconds one POST may take)",
            ))
        }
        Some(secs) => Duration::from_secs(secs),
        None => DEFAULT_NOTIFICATION_TIMEOUT,
    };
    let retries = raw.retries.unwrap_or(DEFAULT_NOTIFICATION_RETRIES);
    if retries > MAX_NOTIFICATION_RETRIES {
        return Err(ConfigError::new(
            at("retries"),
            format!("at most {MAX_NOTIFICATION_RETRIES}; a batch retried longer only holds up the ones behind it"),
        ));
    }
    let backoff = match raw.backoff_secs {
        Some(secs) if secs > MAX_NOTIFICATION_BACKOFF.as_secs() => {
            return Err(ConfigError::new(
                at("backoff_secs"),
                format!(
                    "at most {} (the doubling stops there anyway); 0 retries at once",
                    MAX_NOTIFICATION_BACKOFF.as_secs()
                ),
            ))
        }
        Some(secs) => Duration::from_secs(secs),
        None => DEFAULT_NOTIFICATION_BACKOFF,
    };
    let queue = raw.queue.unwrap_or(DEFAULT_NOTIFICATION_QUEUE);
    if queue == 0 || queue > MAX_NOTIFICATION_QUEUE {
        return Err(ConfigError::new(
            at("queue"),
            format!("give the events to hold for this endpoint, 1 to {MAX_NOTIFICATION_QUEUE}"),
        ));
    }
    let events = match raw.events {
        None => EventKind::ALL.to_vec(),
        Some(names) if names.is_empty() => {
            return Err(ConfigError::new(
                at("events"),
                "an empty list sends nothing; leave the key out for push, pull and delete",
            ))
        }
        Some(names) => names
            .iter()
            .map(|n| {
                n.parse()
                    .map_err(|e: String| ConfigError::new(at("events"), e))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let repositories = match raw.repositories.map(OneOrMany::into_vec) {
        None => Vec::new(),
        Some(patterns) if patterns.is_empty() || patterns.iter().any(String::is_empty) => {
            return Err(ConfigError::new(
                at("repositories"),
                "give repository patterns such as \"team/*\", or leave the key out for every repository",
            ))
        }
        Some(patterns) => patterns,
    };
    Ok(NotificationEndpoint {
        name,
        url,
        headers,
        timeout,
        retries,
        backoff,
        queue,
        events,
        repositories,
    })
}

fn resolve_upstream(
    raw: RawUpstream,
    index: usize,
    env: &[(String, String)],
    origin: &str,
) -> Result<UpstreamConfig, ConfigError> {
    let at = |key: &str| format!("{origin}: upstream[{index}].{key}");
    if !valid_registry_name(&raw.name) {
        return Err(ConfigError::new(
            at("name"),
            format!("{:?} is not a registry name; write it as clients do, e.g. \"docker.io\" or \"ghcr.io\"", raw.name),
        ));
    }
    let mut upstream = UpstreamConfig::named(&raw.name, raw.url);
    check_url(&upstream.url, &at("url"), REGISTRY_URL_EXAMPLE)?;
    if let Some(patterns) = raw.repositories {
        upstream.repositories = patterns.into_vec();
    }
    let seconds = |value: Option<u64>, default: Duration, key: &str| match value {
        Some(0) => Err(ConfigError::new(at(key), "must be greater than 0")),
        Some(v) => Ok(Duration::from_secs(v)),
        None => Ok(default),
    };
    upstream.tag_ttl = match raw.tag_ttl_secs {
        // 0: revalidate every tag request (a HEAD each time).
        Some(v) => Duration::from_secs(v),
        None => upstream.tag_ttl,
    };
    upstream.connect_timeout = seconds(
        raw.connect_timeout_secs,
        upstream.connect_timeout,
        "connect_timeout_secs",
    )?;
    upstream.response_timeout = seconds(
        raw.response_timeout_secs,
        upstream.response_timeout,
        "response_timeout_secs",
    )?;
    upstream.idle_timeout = seconds(
        raw.idle_timeout_secs,
        upstream.idle_timeout,
        "idle_timeout_secs",
    )?;
    if let Some(ca) = &raw.ca {
        readable(
            ca,
            origin,
            &format!("upstream[{index}].ca"),
            "point it at a PEM file of CA certificates",
        )?;
    }
    upstream.ca = raw.ca;
    let sources = [
        raw.password.is_some(),
        raw.password_env.is_some(),
        raw.password_file.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() > 1 {
        return Err(ConfigError::new(
            at("password"),
            "give the password one way: password, password_env or password_file",
        ));
    }
    let password = if let Some(var) = &raw.password_env {
        let value = env.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone());
        Some(value.ok_or_else(|| {
            ConfigError::new(
                at("password_env"),
                format!(
                    "the environment variable {var} is not set; export it or use password_file"
                ),
            )
        })?)
    } else if let Some(path) = &raw.password_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                at("password_file"),
                format!(
                    "cannot read {} ({e}); point it at a file holding the password or token",
                    path.display()
                ),
            )
        })?;
        Some(text.trim_end_matches(['\r', '\n']).to_string())
    } else {
        raw.password
    };
    upstream.credentials = match (raw.username, password) {
        (Some(username), Some(password)) => Some(Credentials { username, password }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::new(
                at("username"),
                "a username needs a password: set password_env, password_file or password",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                at("password"),
                "a password needs a username; add username",
            ))
        }
    };
    Ok(upstream)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        from_text(text, "t.toml", Vec::new(), Overrides::default())
    }

    #[test]
    fn defaults_without_file() {
        let config = load(None, Vec::new(), Overrides::default()).unwrap();
        assert_eq!(config.listen, vec![DEFAULT_LISTEN.parse().unwrap()]);
        assert!(config.tls_listen.is_empty());
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.limits, Limits::default());
        assert!(!config.read_only);
        assert!(config.auth.htpasswd.is_none());
    }

    #[test]
    fn file_values_and_overrides() {
        let raw = RawConfig::parse(
            "[server]\nlisten = [\"127.0.0.1:6000\", \"[::1]:6000\"]\nread_only = true\n[storage]\ndata_dir = \"/srv/reg\"\n[limits]\nmax_concurrent_uploads = 3\n",
            "t.toml",
            Vec::new(),
        )
        .unwrap();
        let config = raw.resolve("t.toml", Overrides::default(), &[]).unwrap();
        assert_eq!(config.listen.len(), 2);
        assert!(config.read_only);
        assert_eq!(config.data_dir, PathBuf::from("/srv/reg"));
        assert_eq!(config.limits.max_concurrent_uploads, 3);

        let raw = RawConfig::parse("", "t.toml", Vec::new()).unwrap();
        let overrides = Overrides {
            listen: Some("[::1]:7000".into()),
            data_dir: Some("/x".into()),
            ..Overrides::default()
        };
        let config = raw.resolve("t.toml", overrides, &[]).unwrap();
        assert_eq!(config.listen, vec!["[::1]:7000".parse().unwrap()]);
        assert_eq!(config.data_dir, PathBuf::from("/x"));
    }

    #[test]
    fn environment_overrides_keys() {
        let env = vec![
            (
                "PORTCULLIS_SERVER__LISTEN".to_string(),
                "127.0.0.1:7001".to_string(),
            ),
            (
                "PORTCULLIS_LIMITS__MAX_CONCURRENT_UPLOADS".to_string(),
                "7".to_string(),
            ),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let raw = RawConfig::parse("[server]\nlisten = \"127.0.0.1:1\"\n", "t.toml", env).unwrap();
        let config = raw.resolve("t.toml", Overrides::default(), &[]).unwrap();
        assert_eq!(config.listen, vec!["127.0.0.1:7001".parse().unwrap()]);
        assert_eq!(config.limits.max_concurrent_uploads, 7);

        let env = vec![(
            "PORTCULLIS_LIMITS__MAX_BODY_BYTES".to_string(),
            "lots".to_string(),
        )];
        let err = RawConfig::parse("", "t.toml", env).unwrap_err().to_string();
        assert!(
            err.starts_with("PORTCULLIS_LIMITS__MAX_BODY_BYTES (environment): "),
            "{err}"
        );
    }

    #[test]
    fn errors_name_file_key_and_fix() {
        let err = parse("[server]\nlisen = 1\n").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:2: "), "{err}");
        assert!(err.contains("lisen"), "{err}");

        let err = parse("[server]\nlisten = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.toml: server.listen"), "{err}");
        assert!(err.contains("IP:PORT"), "{err}");

        let err = parse("[server\n").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:1: "), "{err}");

        // Each bad config, and what its one-line error must name (key, value, fix).
        let cases: [(&str, &[&str]); 5] = [
            (
                "[server]\ntls_listen = \"127.0.0.1:5443\"\n",
                &["server.tls_listen", "portcullis certs"],
            ),
            (
                "[tls]\ncert = \"/nonexistent.crt\"\nkey = \"/nonexistent.key\"\n",
                &["tls.cert", "/nonexistent.crt"],
            ),
            (
                "[auth]\nhtpasswd = \"/nonexistent\"\n",
                &["auth.htpasswd", "portcullis htpasswd add"],
            ),
            (
                "[[access]]\nrepositories = \"*\"\npush = [\"@ghosts\"]\n",
                &["access[0].push", "[groups]"],
            ),
            (
                "[limits]\nmax_concurrent_uploads = 0\n",
                &["limits.max_concurrent_uploads"],
            ),
        ];
        for (text, fragments) in cases {
            let err = parse(text).unwrap_err().to_string();
            for fragment in fragments {
                assert!(err.contains(fragment), "{fragment:?} missing from {err}");
            }
        }
    }

    #[test]
    fn mirror_sections_and_flags() {
        let text = "[mirror]\nlocal = [\"team/*\"]\n\n[[upstream]]\nname = \"docker.io\"\nusername = \"me\"\npassword_env = \"HUB_TOKEN\"\ntag_ttl_secs = 60\n\n[[upstream]]\nname = \"ghcr.io\"\nrepositories = \"acme/*\"\n";
        let env = vec![("HUB_TOKEN".to_string(), "s3cret".to_string())];
        let config = from_text(text, "t.toml", env, Overrides::default()).unwrap();
        let m = &config.mirror;
        assert_eq!(m.upstreams.len(), 2);
        assert_eq!(m.upstreams[0].url, "https://registry-1.docker.io");
        assert_eq!(m.upstreams[0].tag_ttl, Duration::from_secs(60));
        let creds = m.upstreams[0].credentials.as_ref().unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.password.as_str()),
            ("me", "s3cret")
        );
        assert!(!format!("{:?}", m.upstreams[0]).contains("s3cret"));
        assert_eq!(m.upstreams[1].url, "https://ghcr.io");
        assert_eq!(m.upstreams[1].repositories, vec!["acme/*"]);
        assert_eq!(m.local, vec!["team/*"]);
        assert_eq!(m.default_upstream, None);
        assert!(!m.offline);

        // `--mirror docker.io` alone makes a Docker Hub mirror; NAME=URL sets the URL.
        let flags = Overrides {
            mirrors: vec!["docker.io=http://127.0.0.1:9".into(), "quay.io".into()],
            offline: true,
            ..Overrides::default()
        };
        let config = from_text("", "t.toml", Vec::new(), flags).unwrap();
        let m = &config.mirror;
        assert_eq!(m.default_upstream.as_deref(), Some("docker.io"));
        assert_eq!(m.upstreams[0].url, "http://127.0.0.1:9");
        assert_eq!(m.upstreams[1].url, "https://quay.io");
        assert!(m.offline);
    }

    #[test]
    fn lifecycle_keys_and_their_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.gc.interval, Some(DEFAULT_GC_INTERVAL));
        assert_eq!(config.gc.grace, DEFAULT_GC_GRACE);
        assert!(!config.gc.delete_untagged && config.gc.retention.is_empty());
        assert_eq!(config.upload_expiry, DEFAULT_UPLOAD_EXPIRY);
        assert_eq!(config.cache_max_bytes, None);

        let config = parse(
            "[gc]\ninterval_secs = 0\ndelete_untagged = true\ngrace_secs = 60\n\
             [storage]\nupload_expiry_secs = 600\n[cache]\nmax_bytes = 1000\n\
             [[retention]]\nrepositories = \"team/*\"\nkeep_last = 3\nprotect = [\"v*\"]\n",
        )
        .unwrap();
        assert_eq!(config.gc.interval, None);
        assert!(config.gc.delete_untagged);
        assert_eq!(config.gc.grace, Duration::from_secs(60));
        assert_eq!(config.upload_expiry, Duration::from_secs(600));
        assert_eq!(config.cache_max_bytes, Some(1000));
        assert_eq!(
            config.gc.retention,
            vec![RetentionRule {
                repositories: vec!["team/*".into()],
                keep_last: Some(3),
                keep_days: None,
                protect: vec!["v*".into()],
            }]
        );
    }

    #[test]
    fn lifecycle_errors_name_the_key() {
        let cases: [(&str, &[&str]); 4] = [
            (
                "[[retention]]\nrepositories = \"*\"\n",
                &["retention[0]", "keep_last"],
            ),
            ("[cache]\nmax_bytes = 0\n", &["cache.max_bytes"]),
            (
                "[storage]\nupload_expiry_secs = 0\n",
                &["storage.upload_expiry_secs"],
            ),
            (
                "[admin]\nusers = [\"@ops\"]\n",
                &["admin.users", "[groups]"],
            ),
        ];
        for (text, fragments) in cases {
            let err = parse(text).unwrap_err().to_string();
            for fragment in fragments {
                assert!(err.contains(fragment), "{fragment:?} missing from {err}");
            }
        }
    }

    #[test]
    fn notification_endpoints_and_their_defaults() {
        assert!(parse("").unwrap().notifications.is_empty());
        let config = parse(
            "[[notifications]]\nname = \"sync\"\nurl = \"https://hooks.lan/registry\"\n\
             headers = { Authorization = \"Bearer s3cret\" }\n\
             [[notifications]]\nname = \"audit\"\nurl = \"http://127.0.0.1:9000/\"\n\
             timeout_secs = 2\nretries = 0\nbackoff_secs = 0\nqueue = 10\n\
             events = [\"delete\"]\nrepositories = \"team/*\"\n",
        )
        .unwrap();
        let [sync, audit] = &config.notifications[..] else {
            panic!("two endpoints: {:?}", config.notifications);
        };
        assert_eq!(sync.url, "https://hooks.lan/registry");
        assert_eq!(
            sync.headers,
            vec![("Authorization".to_string(), "Bearer s3cret".to_string())]
        );
        assert_eq!(sync.timeout, DEFAULT_NOTIFICATION_TIMEOUT);
        assert_eq!(
            (sync.retries, sync.backoff, sync.queue),
            (5, Duration::from_secs(1), 1000)
        );
        assert_eq!(sync.events, EventKind::ALL);
        assert!(sync.repositories.is_empty());
        assert!(!format!("{sync:?}").contains("s3cret"));
        assert_eq!(audit.timeout, Duration::from_secs(2));
        assert_eq!(
            (audit.retries, audit.backoff, audit.queue),
            (0, Duration::ZERO, 10)
        );
        assert_eq!(audit.events, vec![EventKind::Delete]);
        assert_eq!(audit.repositories, vec!["team/*"]);
    }

    #[test]
    fn notification_errors_name_the_key_and_the_fix() {
        let endpoint = |extra: &str| {
            format!("[[notifications]]\nname = \"hook\"\nurl = \"http://h/\"\n{extra}")
        };
        let cases: [(String, &[&str]); 12] = [
            (
                "[[notifications]]\nurl = \"http://h/\"\n".into(),
                &["notifications[0].name", "name = "],
            ),
            (
                "[[notifications]]\nname = \"hook\"\n".into(),
                &["notifications[0].url", "url = "],
            ),
            (
                "[[notifications]]\nname = \"hook\"\nurl = \"hooks.lan\"\n".into(),
                &["notifications[0].url", "http:// or https://"],
            ),
            (
                "[[notifications]]\nname = \"hook\"\nurl = \"https://u:pw@h/\"\n".into(),
                &["notifications[0].url", "headers"],
            ),
            (
                format!("{}{}", endpoint(""), endpoint("")),
                &["notifications[1].name", "own name"],
            ),
            (
                "[[notifications]]\nname = \"my hook\"\nurl = \"http://h/\"\n".into(),
                &["notifications[0].name", "letters"],
            ),
            (
                endpoint("timeout_secs = 0\n"),
                &["notifications[0].timeout_secs", "greater than 0"],
            ),
            (
                endpoint("events = [\"push\", \"tag\"]\n"),
                &["notifications[0].events", "\"tag\"", "\"pull\""],
            ),
            (endpoint("queue = 0\n"), &["notifications[0].queue"]),
            (
                "[[notifications]]\nname = \"hook\"\nurl = \"http://bad host/\"\n".into(),
                &["notifications[0].url", "not a valid URL"],
            ),
            (
                endpoint("backoff_secs = 61\n"),
                &["notifications[0].backoff_secs", "60"],
            ),
            (
                endpoint("headers = { \"Bad Name\" = \"x\" }\n"),
                &["notifications[0].headers.Bad Name", "header name"],
            ),
        ];
        for (text, fragments) in cases {
            let err = parse(&text).unwrap_err().to_string();
            for fragment in fragments {
                assert!(err.contains(fragment), "{fragment:?} missing from {err}");
            }
            assert!(!err.contains('\n'), "one line: {err}");
        }
        // A bad header value is named by its key, never shown.
        let err = parse(&endpoint(
            "headers = { Authorization = \"Bearer a\\nb\" }\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("headers.Authorization") && !err.contains("Bearer"),
            "{err}"
        );
        let err = parse(&endpoint("repositories = []\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("notifications[0].repositories"), "{err}");
        let err = parse(&endpoint("bogus = 1\n")).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn activity_retention_in_days_or_forever() {
        let days = |text: &str| parse(text).map(|c| c.activity.retention);
        assert_eq!(days("").unwrap(), Some(DAY * 90));
        assert_eq!(
            days("[activity]\nretention_days = 7\n").unwrap(),
            Some(DAY * 7)
        );
        assert_eq!(days("[activity]\nretention_days = 0\n").unwrap(), None);
        let env = [("PORTCULLIS_ACTIVITY__RETENTION_DAYS".into(), "30".into())];
        let config = from_text("", "t.toml", env, Overrides::default()).unwrap();
        assert_eq!(config.activity.retention, Some(DAY * 30));
        let err = days("[activity]\nretention_days = 100000\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.toml: activity.retention_days") && err.contains("write 0"),
            "{err}"
        );
        let err = days("[activity]\nretention = 7\n").unwrap_err().to_string();
        assert!(
            err.contains("unknown field") && err.contains("retention_days"),
            "{err}"
        );
    }

    #[test]
    fn mirror_errors_name_the_key() {
        let cases: [(&str, &[&str]); 6] = [
            (
                "[[upstream]]\nname = \"Docker Hub\"\n",
                &["upstream[0].name", "docker.io"],
            ),
            (
                "[[upstream]]\nname = \"x.io\"\nurl = \"ftp://x\"\n",
                &["upstream[0].url", "https://"],
            ),
            (
                "[[upstream]]\nname = \"x.io\"\nusername = \"u\"\n",
                &["upstream[0].username", "password_env"],
            ),
            (
                "[[upstream]]\nname = \"x.io\"\nusername = \"u\"\npassword_env = \"NOPE_UNSET\"\n",
                &["upstream[0].password_env", "NOPE_UNSET"],
            ),
            (
                "[mirror]\ndefault_upstream = \"ghcr.io\"\n",
                &["mirror.default_upstream", "[[upstream]]"],
            ),
            (
                "[[upstream]]\nname = \"x.io\"\n[[upstream]]\nname = \"x.io\"\n",
                &["upstream[1].name", "twice"],
            ),
        ];
        for (text, fragments) in cases {
            let err = parse(text).unwrap_err().to_string();
            for fragment in fragments {
                assert!(err.contains(fragment), "{fragment:?} missing from {err}");
            }
        }
        let flags = Overrides {
            mirrors: vec!["https://registry-1.docker.io".into()],
            ..Overrides::default()
        };
        let err = from_text("", "t.toml", Vec::new(), flags)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--mirror") && err.contains("docker.io"),
            "{err}"
        );
    }
}
