//! The node's configuration: TOML (see `deploy/node.example.toml`), every field documented
//! and defaulted, then overridden by `VIRFED_*` environment variables.
//!
//! Ids are typed as they load: a region or organisation id that does not parse is refused
//! here, naming its field, so the rest of the node never re-parses a configured string.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::domain::{OrgId, RegionId};
use crate::https::is_loopback_host;

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: &'static str, message: String },
}

/// A regional node's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's region id (lowercase letters, digits, '-').
    #[serde(deserialize_with = "region_id")]
    pub region: RegionId,
    /// Directory for the store (`store/`).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Directory of the key files (`local.key`, `blind.key`), created 0700. Default: the
    /// data directory, which is simple but means one snapshot of that volume holds both the
    /// pseudonyms and the keys that make them enumerable; in production put the keys on a
    /// separate mount (or a Secret) and back them up apart (the store's backups never hold
    /// them). The node warns at start while the keys live inside the data directory.
    #[serde(default)]
    pub keys_dir: Option<PathBuf>,
    /// Address of the client and admin API (mutual TLS).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Address of the plain-HTTP health port: `/healthz`, `/readyz`, `/metrics` (no personal
    /// data; loopback by default, expose it to your Prometheus only).
    #[serde(default = "default_http_listen")]
    pub http_listen: SocketAddr,
    /// Seconds a stopping node (SIGTERM) lets in-flight requests finish before it closes
    /// the remaining connections, flushes and exits.
    #[serde(default = "default_grace")]
    pub shutdown_grace_secs: u64,
    /// Seconds a connection to the client and admin API may live. Then the node asks the
    /// client to reconnect (HTTP/2 GOAWAY): no new requests on it, and open `Watch`
    /// streams end with UNAVAILABLE ("reconnect with your last cursor") within the same
    /// time again, after which the connection is closed. Every reconnect is a new TLS
    /// handshake, so a certificate revoked by a CRL update loses its connections within about
    /// twice this time. 300 s costs an honest client one handshake per five minutes.
    #[serde(default = "default_client_max_connection_age")]
    pub client_max_connection_age_secs: u64,
    /// How many signals each organisation may register: a token bucket per organisation,
    /// so that a stolen organisation certificate cannot flood the region's index.
    #[serde(default)]
    pub registration_limits: RegistrationLimits,
    /// Certificates: the region CA and the node's server certificate.
    pub tls: TlsConfig,
    /// The municipal match officer (D5).
    #[serde(default)]
    pub match_officer: MatchOfficer,
    /// The expiry sweeper (D3, D4).
    #[serde(default)]
    pub sweeper: Sweeper,
    /// Store tuning.
    #[serde(default)]
    pub store: StoreConfig,
    /// Optional webhooks: notices for an organisation are also POSTed to its URL.
    #[serde(default)]
    pub webhooks: Vec<Webhook>,
    /// Optional: this node's place in a federation of regions.
    #[serde(default)]
    pub federation: Option<Federation>,
    /// Family matches (D11): where a child's parents come from.
    #[serde(default)]
    pub family: FamilyConfig,
    /// The BRP Personen API, for `family.source = "brp"`.
    #[serde(default)]
    pub brp: Option<BrpConfig>,
}

/// The `[family]` table.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamilyConfig {
    /// `"request"` (default: the regional application sends `parent_bsns` with each
    /// registration), `"brp"` (the node asks the BRP, `[brp]`, and refuses `parent_bsns`),
    /// or `"off"` (no family matches; `parent_bsns` refused).
    #[serde(default)]
    pub source: FamilySource,
}

/// Where a child's parents come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FamilySource {
    #[default]
    Request,
    Brp,
    Off,
}

/// The `[brp]` config table: where and how to ask the BRP for a child's parents.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrpConfig {
    /// Base URL of the BRP Personen API, e.g.
    /// `https://brp-gateway.example.nl/haalcentraal/api/brp`; lookups POST to
    /// `{url}/personen`. `https://`, or `http://` to a loopback address only (a local
    /// TLS-terminating proxy). No query string, no user info.
    pub url: String,
    /// The CA certificate(s) (PEM) trusted for the BRP and the token endpoint: required
    /// when either is `https://`, and the only roots trusted (virfed uses no system roots).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Our client certificate (PEM, optionally followed by intermediates) for mutual TLS.
    /// Give it together with `client_key`, or neither.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The private key of `client_cert` (PEM, mode 0600).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// How the node authenticates its requests.
    pub auth: BrpAuth,
    /// Milliseconds each HTTP exchange (token or lookup, connecting included) may take
    /// before it counts as a timeout (retryable).
    #[serde(default = "default_brp_timeout_ms")]
    pub timeout_ms: u64,
}

/// How requests to the BRP are authenticated: `auth = { api_key = { ... } }` or
/// `auth = { oauth = { ... } }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrpAuth {
    /// A fixed API key in a request header.
    ApiKey(ApiKeyAuth),
    /// An OAuth 2.0 client-credentials token (RFC 6749 §4.4) as `Authorization: Bearer`.
    Oauth(OauthAuth),
}

/// `auth = { api_key = { header = "X-API-KEY", value_file = "…" } }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyAuth {
    /// The header carrying the key.
    #[serde(default = "default_api_key_header")]
    pub header: String,
    /// File holding the key (mode 0600; surrounding whitespace is trimmed).
    pub value_file: PathBuf,
}

/// `auth = { oauth = { token_url, client_id, client_secret_file, scope } }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OauthAuth {
    /// The token endpoint: `https://`, or `http://` to a loopback address only.
    pub token_url: String,
    /// Our client id at the authorisation server.
    pub client_id: String,
    /// File holding the client secret (mode 0600; surrounding whitespace is trimmed).
    pub client_secret_file: PathBuf,
    /// The scope to ask for, if the authorisation server wants one.
    #[serde(default)]
    pub scope: Option<String>,
}

fn default_brp_timeout_ms() -> u64 {
    crate::brp::DEFAULT_TIMEOUT_MS
}

fn default_api_key_header() -> String {
    crate::brp::DEFAULT_API_KEY_HEADER.to_owned()
}

/// The node-to-node side: its own port, the federation CA, and the peers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Federation {
    /// Address of the peer API (mutual TLS with node certificates).
    #[serde(default = "default_peer_listen")]
    pub listen: SocketAddr,
    /// The federation root CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate from the federation CA (`virfed ca issue node`), PEM.
    pub cert: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub key: PathBuf,
    /// Revocation lists of the federation CA; re-read when they change.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// Blinding key file (created 0600 on first start); default `<keys_dir>/blind.key`.
    #[serde(default)]
    pub blind_key: Option<PathBuf>,
    /// The oracle budget's capacity: the most blind requests (new children) a peer may
    /// send in one burst. Each takes a token from the peer's bucket, which refills at
    /// `oracle_refill_per_hour` and is kept in the store (a restart does not refill it); a
    /// request needing more tokens than are left is refused with RESOURCE_EXHAUSTED,
    /// audited and counted: a peer that probes is stopped and reported. (The name is from
    /// when this was a fixed hourly window.)
    #[serde(default = "default_oracle_budget")]
    pub oracle_budget_per_hour: u64,
    /// Tokens added to each peer's oracle budget per hour: the sustained rate of new
    /// children a peer may have blinded here.
    #[serde(default = "default_oracle_refill")]
    pub oracle_refill_per_hour: u64,
    /// Budget for bulk resync (a peer joining, re-keying or answering a restore), counted
    /// separately: a bucket of this capacity that refills by the same amount per day. On
    /// top of it every resync needs the sender's resync ticket, counted against its N.
    #[serde(default = "default_resync_budget")]
    pub resync_budget_per_day: u64,
    /// This node's resync ticket from the federation CA (`virfed ca issue resync-ticket`),
    /// sent with every bulk publish (join, re-key, a peer's restore); re-read each time, so
    /// a new ticket takes effect without a restart. Without one, peers refuse bulk
    /// publishes.
    #[serde(default)]
    pub resync_ticket: Option<PathBuf>,
    /// The other regions.
    #[serde(default)]
    pub peers: Vec<Peer>,
}

/// One peer region.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// The peer's region id, as in its node certificate.
    #[serde(deserialize_with = "peer_region_id")]
    pub region: RegionId,
    /// Its peer API address, host:port.
    pub address: String,
    /// Name in its certificate; default: the host part of `address`.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl Peer {
    pub fn server_name(&self) -> String {
        self.server_name.clone().unwrap_or_else(|| {
            let host = self.address.rsplit_once(':').map(|(h, _)| h).unwrap_or(&self.address);
            host.trim_matches(['[', ']']).to_string()
        })
    }
}

fn default_peer_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7444))
}
// D10: ~240,000 new signals a year over 25-35 regions is ~1 new child an hour per region,
// ~10 an hour at ten times the scale. A burst of 500 is two days of that at ten times the
// scale, so a peer whose link was down for two days catches up at once (and the bucket of a
// peer that was quiet is full again by then anyway).
fn default_oracle_budget() -> u64 {
    500
}
// Six times the ten-times-scale rate: honest traffic never drains the bucket, while a peer
// that guesses gets at most 500 + 60 an hour (~1,900 a day, against 10^9 BSNs).
fn default_oracle_refill() -> u64 {
    60
}
// A joining peer publishes every child it holds: ~50,000 per region at ten times scale.
fn default_resync_budget() -> u64 {
    200_000
}

/// The registration rate limit: every organisation's bucket holds `burst` registrations
/// and refills by `per_hour`; `overrides` give single organisations other figures. The
/// buckets are in memory (a restart refills them): the point is to cap a flood from a stolen
/// certificate, not to meter honest use.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationLimits {
    /// The most registrations an organisation may send at once (the bucket's capacity).
    #[serde(default = "default_registration_burst")]
    pub burst: u64,
    /// Registrations added back to each organisation's bucket per hour: its sustained rate.
    #[serde(default = "default_registration_per_hour")]
    pub per_hour: u64,
    /// Other limits for single organisations (`[[registration_limits.overrides]]`).
    #[serde(default)]
    pub overrides: Vec<OrgRegistrationLimit>,
}

impl Default for RegistrationLimits {
    fn default() -> Self {
        RegistrationLimits {
            burst: default_registration_burst(),
            per_hour: default_registration_per_hour(),
            overrides: Vec::new(),
        }
    }
}

impl RegistrationLimits {
    /// The limit of `org`: its override, or the default.
    pub fn for_org(&self, org: &OrgId) -> (u64, u64) {
        self.overrides.iter().find(|o| &o.org == org).map_or((self.burst, self.per_hour), |o| (o.burst, o.per_hour))
    }
}

/// One organisation's registration limit, instead of the default.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgRegistrationLimit {
    /// The organisation id, as in its client certificate.
    #[serde(deserialize_with = "registration_limit_org")]
    pub org: OrgId,
    /// Its burst (bucket capacity).
    pub burst: u64,
    /// Its refill per hour.
    pub per_hour: u64,
}

// D10: ~240,000 new signals a year over 25-35 regions is ~25 a day per region; at ten times
// that scale ~250, and a large organisation (a youth-care provider) may send half of them,
// often in batches (after a case conference, a backlog after an outage). A burst of 200
// takes such an organisation's whole day at once, and 100 an hour refills it in two hours
// (2,400 a day, far above any honest day), so honest use never meets the limit, while a
// stolen certificate gets at most 200 + 100 an hour into the index, and its refusals are
// audited, counted and alerted on.
fn default_registration_burst() -> u64 {
    200
}
fn default_registration_per_hour() -> u64 {
    100
}
fn default_client_max_connection_age() -> u64 {
    300
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificate (PEM) that issued the organisations' client certificates.
    pub ca: PathBuf,
    /// This node's server certificate (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM, mode 0600).
    pub key: PathBuf,
    /// Certificate revocation lists (PEM) to enforce.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchOfficer {
    /// Organisation id whose client certificate receives the match officer's notices and
    /// may carry out erasure decisions. Unset: no match officer notices.
    #[serde(default, deserialize_with = "match_officer_org")]
    pub org: Option<OrgId>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweeper {
    /// Seconds between expiry sweeps.
    #[serde(default = "default_sweep_secs")]
    pub interval_secs: u64,
}

impl Default for Sweeper {
    fn default() -> Self {
        Sweeper { interval_secs: default_sweep_secs() }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The engine's page cache in MiB.
    #[serde(default = "default_cache_mb")]
    pub cache_mb: u64,
    /// Compress the store's pages (zstd): about 35% less disk for about twice the write
    /// cost (BENCHMARKS.md, issue 12). Chosen when the store is created; an existing
    /// store keeps what it was created with.
    #[serde(default)]
    pub compression: bool,
    /// The embedded engine of a new store: "sled" (the default) or "redb" (measured beside
    /// it, BENCHMARKS.md, issue 12). An existing store keeps the engine it was created with.
    #[serde(default)]
    pub engine: crate::store::Engine,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { cache_mb: default_cache_mb(), compression: false, engine: crate::store::Engine::Sled }
    }
}

/// One webhook: an organisation's notices, POSTed as signed JSON to a URL.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// The organisation whose notices go to this URL.
    #[serde(deserialize_with = "webhook_org")]
    pub org: OrgId,
    /// URL receiving a JSON POST per notice: `https://`, or `http://` to a loopback
    /// address only (127.0.0.0/8, `[::1]`, `localhost`: a TLS-terminating proxy on this
    /// host), since notices carry professionals' contact details.
    pub url: String,
    /// The receiver's CA certificate (PEM): required for an `https://` URL, the only root
    /// trusted for it (virfed uses no system root store).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// File with the shared secret for the `X-Virfed-Signature` HMAC header (mode 0600).
    pub secret_file: PathBuf,
}

impl Webhook {
    /// The URL's scheme and the `ca` rule; the files themselves are read when delivery
    /// starts (`notify::spawn_webhooks`), which names them in its errors.
    fn validate(&self) -> Result<(), String> {
        let url = &self.url;
        let uri: http::Uri = url.parse().map_err(|e| format!("webhooks.url {url:?}: {e}"))?;
        let host = uri.host().ok_or_else(|| format!("webhooks.url {url:?}: give scheme://host[:port]/path"))?;
        match uri.scheme_str() {
            Some("https") if self.ca.is_none() => Err(format!(
                "webhooks.url {url}: an https:// webhook needs `ca`, the PEM CA certificate of the receiver \
                 (virfed trusts no system roots)"
            )),
            Some("https") => Ok(()),
            Some("http") if is_loopback_host(host) && self.ca.is_some() => {
                Err(format!("webhooks.ca is for https:// webhooks only; remove it or use https:// in {url}"))
            }
            Some("http") if is_loopback_host(host) => Ok(()),
            Some("http") => Err(format!(
                "webhooks.url {url}: plain http:// is refused except to a loopback address (notices carry \
                 contact details); use https:// with `ca` = the receiver's CA certificate"
            )),
            _ => Err(format!("webhooks.url {url}: use an https:// URL")),
        }
    }
}

/// Parses an id field, naming the field in the error (serde adds the line and column).
fn id_field<'de, D: Deserializer<'de>, T>(
    de: D,
    field: &str,
    parse: impl Fn(&str) -> Result<T, crate::domain::FieldError>,
) -> Result<T, D::Error> {
    let text = String::deserialize(de)?;
    parse(&text).map_err(|e| serde::de::Error::custom(format!("{field}: {e}")))
}

fn region_id<'de, D: Deserializer<'de>>(de: D) -> Result<RegionId, D::Error> {
    id_field(de, "region", RegionId::parse)
}

fn peer_region_id<'de, D: Deserializer<'de>>(de: D) -> Result<RegionId, D::Error> {
    id_field(de, "federation.peers.region", RegionId::parse)
}

fn webhook_org<'de, D: Deserializer<'de>>(de: D) -> Result<OrgId, D::Error> {
    id_field(de, "webhooks.org", OrgId::parse)
}

fn registration_limit_org<'de, D: Deserializer<'de>>(de: D) -> Result<OrgId, D::Error> {
    id_field(de, "registration_limits.overrides.org", OrgId::parse)
}

fn match_officer_org<'de, D: Deserializer<'de>>(de: D) -> Result<Option<OrgId>, D::Error> {
    id_field(de, "match_officer.org", OrgId::parse).map(Some)
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/virfed")
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7443))
}
fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
fn default_grace() -> u64 {
    20
}
fn default_sweep_secs() -> u64 {
    3600
}
fn default_cache_mb() -> u64 {
    128
}

impl Config {
    /// Reads the file, then applies environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut config = Config::parse(&text).map_err(|message| ConfigError::Parse { path: path.into(), message })?;
        config.apply_env(|k| std::env::var(k).ok())?;
        Ok(config)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        match (self.family.source, &self.brp) {
            (FamilySource::Brp, None) => {
                return Err(
                    "family.source = \"brp\" needs a [brp] table (url, ca, auth): where to ask for parents".into()
                )
            }
            (FamilySource::Brp, Some(brp)) => brp.validate().map_err(|e| e.to_string())?,
            (_, Some(_)) => {
                return Err(
                    "[brp] is set but family.source is not \"brp\"; set family.source = \"brp\" or remove [brp]".into(),
                )
            }
            _ => {}
        }
        for hook in &self.webhooks {
            hook.validate()?;
        }
        if let Some(fed) = &self.federation {
            for peer in &fed.peers {
                if peer.region == self.region {
                    return Err(format!("federation.peers: {} is this node's own region", peer.region));
                }
                if !peer.address.contains(':') {
                    return Err(format!("federation.peers.address {:?}: give host:port", peer.address));
                }
            }
            for (field, value) in [
                ("oracle_budget_per_hour", fed.oracle_budget_per_hour),
                ("oracle_refill_per_hour", fed.oracle_refill_per_hour),
                ("resync_budget_per_day", fed.resync_budget_per_day),
            ] {
                if value == 0 {
                    return Err(format!(
                        "federation.{field} must be at least 1, or peers can never publish a new child here"
                    ));
                }
            }
        }
        if self.store.compression && self.store.engine == crate::store::Engine::Redb {
            return Err(
                "store.compression is a sled option; redb stores are not compressed: remove compression or use engine = \"sled\""
                    .into(),
            );
        }
        if self.sweeper.interval_secs == 0 {
            return Err("sweeper.interval_secs must be at least 1".into());
        }
        if self.client_max_connection_age_secs == 0 {
            return Err("client_max_connection_age_secs must be at least 1 (300 is the default)".into());
        }
        let limits = &self.registration_limits;
        let mut seen = std::collections::HashSet::new();
        let figures = std::iter::once(("registration_limits".to_string(), limits.burst, limits.per_hour)).chain(
            limits
                .overrides
                .iter()
                .map(|o| (format!("registration_limits.overrides ({})", o.org), o.burst, o.per_hour)),
        );
        for (what, burst, per_hour) in figures {
            if burst == 0 || per_hour == 0 {
                return Err(format!(
                    "{what}: burst and per_hour must be at least 1, or the organisation can never register a signal"
                ));
            }
        }
        for o in &limits.overrides {
            if !seen.insert(&o.org) {
                return Err(format!("registration_limits.overrides: organisation {} is listed twice", o.org));
            }
        }
        Ok(())
    }

    /// Environment overrides: `VIRFED_REGION`, `VIRFED_DATA_DIR`, `VIRFED_KEYS_DIR`, `VIRFED_LISTEN`,
    /// `VIRFED_HTTP_LISTEN`, `VIRFED_TLS_CA`, `VIRFED_TLS_CERT`, `VIRFED_TLS_KEY`, `VIRFED_MATCH_OFFICER_ORG`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("VIRFED_REGION") {
            self.region = RegionId::parse(&v)
                .map_err(|e| ConfigError::Env { var: "VIRFED_REGION", message: format!("region: {e}") })?;
        }
        if let Some(v) = get("VIRFED_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = get("VIRFED_KEYS_DIR") {
            self.keys_dir = Some(v.into());
        }
        if let Some(v) = get("VIRFED_LISTEN") {
            self.listen = v.parse().map_err(|_| ConfigError::Env {
                var: "VIRFED_LISTEN",
                message: format!("{v:?} is not an address like 0.0.0.0:7443"),
            })?;
        }
        if let Some(v) = get("VIRFED_HTTP_LISTEN") {
            self.http_listen = v.parse().map_err(|_| ConfigError::Env {
                var: "VIRFED_HTTP_LISTEN",
                message: format!("{v:?} is not an address like 127.0.0.1:9464"),
            })?;
        }
        if let Some(v) = get("VIRFED_TLS_CA") {
            self.tls.ca = v.into();
        }
        if let Some(v) = get("VIRFED_TLS_CERT") {
            self.tls.cert = v.into();
        }
        if let Some(v) = get("VIRFED_TLS_KEY") {
            self.tls.key = v.into();
        }
        if let Some(v) = get("VIRFED_MATCH_OFFICER_ORG") {
            let org = OrgId::parse(&v).map_err(|e| ConfigError::Env {
                var: "VIRFED_MATCH_OFFICER_ORG",
                message: format!("match_officer.org: {e}"),
            })?;
            self.match_officer.org = Some(org);
        }
        self.validate().map_err(|message| ConfigError::Env { var: "VIRFED_*", message })
    }

    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    /// Where the key files live: `keys_dir`, else the data directory.
    pub fn keys_dir(&self) -> &Path {
        self.keys_dir.as_deref().unwrap_or(&self.data_dir)
    }

    /// Whether the key files sit inside the data directory (one snapshot holds both).
    /// Whether a key file lives inside the data directory (the keys directory, or a
    /// blinding key path set on its own).
    pub fn keys_beside_data(&self) -> bool {
        self.keys_dir().starts_with(&self.data_dir) || self.blind_key_path().starts_with(&self.data_dir)
    }

    pub fn local_key_path(&self) -> PathBuf {
        self.keys_dir().join("local.key")
    }

    pub fn blind_key_path(&self) -> PathBuf {
        self.federation.as_ref().and_then(|f| f.blind_key.clone()).unwrap_or_else(|| self.keys_dir().join("blind.key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_config_parses() {
        let text = include_str!("../deploy/node.example.toml");
        let config = Config::parse(text).unwrap();
        assert_eq!(config.region.as_str(), "rotterdam");
        assert_eq!(config.sweeper.interval_secs, 3600);
        assert_eq!(config.http_listen, SocketAddr::from(([127, 0, 0, 1], 9464)));
        assert_eq!(
            (
                config.registration_limits.burst,
                config.registration_limits.per_hour,
                config.client_max_connection_age_secs
            ),
            (default_registration_burst(), default_registration_per_hour(), default_client_max_connection_age()),
            "the sample shows the defaults"
        );
        let fed = config.federation.unwrap();
        assert_eq!(
            (fed.oracle_budget_per_hour, fed.oracle_refill_per_hour, fed.resync_budget_per_day),
            (default_oracle_budget(), default_oracle_refill(), default_resync_budget()),
            "the sample shows the defaults"
        );
    }

    #[test]
    fn the_store_engine_is_sled_by_default_redb_on_request_and_redb_refuses_compression() {
        let base = include_str!("../deploy/node.example.toml");
        assert_eq!(Config::parse(base).unwrap().store.engine, crate::store::Engine::Sled);
        let bare = base.replace("engine = \"sled\"\n", "");
        assert_ne!(bare, base);
        assert_eq!(Config::parse(&bare).unwrap().store.engine, crate::store::Engine::Sled);
        let redb = base.replace("engine = \"sled\"", "engine = \"redb\"");
        assert_eq!(Config::parse(&redb).unwrap().store.engine, crate::store::Engine::Redb);
        let both = redb.replace("compression = false", "compression = true");
        let err = Config::parse(&both).unwrap_err();
        assert!(err.contains("store.compression is a sled option"), "{err}");
        let unknown = base.replace("engine = \"sled\"", "engine = \"lmdb\"");
        assert!(Config::parse(&unknown).unwrap_err().contains("engine"));
    }

    #[test]
    fn budget_defaults_apply_and_a_zero_budget_is_refused() {
        let base = include_str!("../deploy/node.example.toml");
        let bare: String = base.lines().filter(|l| !l.contains("_per_hour") && !l.contains("_per_day")).fold(
            String::new(),
            |mut out, l| {
                out.push_str(l);
                out.push('\n');
                out
            },
        );
        let fed = Config::parse(&bare).unwrap().federation.unwrap();
        assert_eq!((fed.oracle_budget_per_hour, fed.oracle_refill_per_hour), (500, 60));
        let zero = base.replace("oracle_refill_per_hour = 60", "oracle_refill_per_hour = 0");
        assert_ne!(zero, base);
        let err = Config::parse(&zero).unwrap_err();
        assert!(err.contains("federation.oracle_refill_per_hour must be at least 1"), "{err}");
    }

    #[test]
    fn env_overrides_win_and_are_validated() {
        let mut config = Config::parse(include_str!("../deploy/node.example.toml")).unwrap();
        config
            .apply_env(|k| match k {
                "VIRFED_LISTEN" => Some("127.0.0.1:9999".into()),
                "VIRFED_DATA_DIR" => Some("/tmp/x".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(config.listen.port(), 9999);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        let err = config.apply_env(|k| (k == "VIRFED_LISTEN").then(|| "nope".into())).unwrap_err();
        assert!(err.to_string().contains("VIRFED_LISTEN"), "{err}");
    }

    #[test]
    fn key_files_live_in_keys_dir_and_default_to_the_data_directory() {
        let mut config = Config::parse(include_str!("../deploy/node.example.toml")).unwrap();
        config.keys_dir = None;
        assert_eq!(config.local_key_path(), config.data_dir.join("local.key"));
        assert!(config.keys_beside_data(), "the default keeps the keys beside the data (and warns)");
        config.apply_env(|k| (k == "VIRFED_KEYS_DIR").then(|| "/run/virfed-keys".into())).unwrap();
        assert_eq!(config.local_key_path(), PathBuf::from("/run/virfed-keys/local.key"));
        if config.federation.as_ref().is_some_and(|f| f.blind_key.is_none()) {
            assert_eq!(config.blind_key_path(), PathBuf::from("/run/virfed-keys/blind.key"));
        }
        assert!(!config.keys_beside_data());
        config.keys_dir = Some(config.data_dir.join("keys"));
        assert!(config.keys_beside_data(), "a subdirectory of the data directory is still inside it");
    }

    #[test]
    fn unknown_keys_and_bad_region_are_refused() {
        let base = include_str!("../deploy/node.example.toml");
        assert!(Config::parse(&format!("{base}\nbogus = 1\n")).is_err());
        let bad = base.replace("region = \"rotterdam\"", "region = \"Rotterdam!\"");
        assert!(Config::parse(&bad).unwrap_err().contains("region"));
    }

    #[test]
    fn bad_ids_are_refused_naming_their_field() {
        let base = include_str!("../deploy/node.example.toml");
        let peer = base.replace("region = \"utrecht\"", "region = \"Ut recht\"");
        assert!(Config::parse(&peer).unwrap_err().contains("federation.peers.region"));
        let hook = format!("{base}\n[[webhooks]]\norg = \"Not An Org\"\nurl = \"http://x\"\nsecret_file = \"s\"\n");
        assert!(Config::parse(&hook).unwrap_err().contains("webhooks.org"));
        let mut config = Config::parse(base).unwrap();
        let err = config.apply_env(|k| (k == "VIRFED_REGION").then(|| "Not a region".into())).unwrap_err();
        assert!(err.to_string().contains("VIRFED_REGION"), "{err}");
        let err = config.apply_env(|k| (k == "VIRFED_MATCH_OFFICER_ORG").then(|| "bad org!".into())).unwrap_err();
        assert!(err.to_string().contains("match_officer.org"), "{err}");
    }
}
