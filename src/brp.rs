//! The BRP client: a child's parents (0–2 BSNs) from the population register, for family
//! matches (D11, issue 10).
//!
//! **The API.** Haal Centraal *BRP Personen bevragen* v2, as its public OpenAPI
//! specification describes it (BrpCentraal/BRP-API `Haal-Centraal-BRP-bevragen`,
//! `specificatie/resolved/openapi.yaml`, version 2.5.0, and the `fout-cases` features of
//! *raadpleeg met burgerservicenummer*). One operation is used:
//!
//! - `POST {url}/personen`, `Content-Type: application/json; charset=utf-8`, body
//!   `{"type":"RaadpleegMetBurgerservicenummer","burgerservicenummer":["<9 digits>"],
//!   "fields":["ouders.burgerservicenummer"]}`. The BSN travels in the body, never in the
//!   URL, so no proxy or access log records it; `fields` asks for the parents' BSNs and
//!   nothing else about anyone (data minimisation, as the API's fields rule intends).
//! - `200`, `{"type":"RaadpleegMetBurgerservicenummer","personen":[{"ouders":[
//!   {"burgerservicenummer":"…","ouderAanduiding":"1"}, …]}]}`: schema `Persoon.ouders[]`
//!   of `Ouder` (`burgerservicenummer` pattern `^[0-9]{9}$`, `ouderAanduiding` 1|2).
//!   Anything else the BRP adds (`inOnderzoek`, `geheimhoudingPersoonsgegevens`, ...) is
//!   ignored. An unknown BSN answers `200` with `personen: []`: [`Parents::NotFound`]. A
//!   person without `ouders` has no parents recorded: `Found(vec![])`.
//! - Errors are `application/problem+json` `Foutbericht` (`type`, `title`, `status`,
//!   `detail`, `instance`, `code`; `400` adds `invalidParams[]` of `name`, `code`,
//!   `reason`) with 400, 401, 403, 406, 415, 429, 500 or 503; 404 and other statuses are
//!   handled the same way (see [`BrpError`]).
//!
//! **Trust.** A parent BSN is built with [`Bsn::parse`] like any other (D9): one that fails
//! it, or equals the child's own, is skipped, counted
//! ([`BrpClient::skipped_invalid_parents`]) and logged without its value; an ouder without
//! a BSN (no BRP number recorded) is skipped too. More than two parents, or more than one
//! person for one BSN, is a malformed answer, never a guess.
//!
//! **Transport and authentication.** `https://` with rustls, trusting only the configured
//! `ca` and, when `client_cert`/`client_key` are given, presenting that certificate
//! (mutual TLS, as the BRP's gateway asks: PKIoverheid over Diginetwerk); plain `http://`
//! only to a loopback address (a local TLS-terminating proxy, or the test kit's
//! server). Then either an API key header (`X-API-KEY` by default) or an OAuth 2.0
//! client-credentials token (RFC 6749 §4.4: client authenticated with HTTP Basic, §2.3.1;
//! `Authorization: Bearer`, RFC 6750), fetched from `token_url` over the same TLS
//! configuration and cached until shortly before its `expires_in`. A `401` with a cached
//! token fetches a fresh one and tries once more. Secret files are refused when group or
//! others can read them. `timeout_ms` bounds each HTTP exchange (token or lookup),
//! connecting included.
//!
//! **Privacy.** No BSN appears in a log line, an error's `Display` or `Debug`, or a panic
//! message: [`Bsn`] never prints, and every text that comes from the BRP (a problem's
//! `title`, `detail`, `code`, `invalidParams`; a JSON parser's complaint, which can quote
//! a value) goes through [`redact`], which replaces every run of 8 or more digits (also
//! when written with single spaces, dots or dashes between them) before it is kept.
//! `instance` and `type` are dropped.
//!
//! The config, a `[brp]` table (the node does not read it yet):
//!
//! ```toml
//! [brp]
//! url = "https://brp-gateway.example.nl/haalcentraal/api/brp"
//! ca = "/etc/virfed/brp/ca.pem"
//! client_cert = "/etc/virfed/brp/client.pem"
//! client_key = "/etc/virfed/brp/client.key"
//! timeout_ms = 5000
//! auth = { oauth = { token_url = "https://brp-gateway.example.nl/oauth2/token", client_id = "virfed-rijnmond", client_secret_file = "/etc/virfed/brp/client-secret", scope = "brp-personen" } }
//! # or: auth = { api_key = { header = "X-API-KEY", value_file = "/etc/virfed/brp/api-key" } }
//! ```

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, warn};
use zeroize::Zeroizing;

use crate::domain::Bsn;
use crate::https::{is_loopback_host, HttpsConnector};

/// The query type of a lookup by BSN.
pub const QUERY_TYPE: &str = "RaadpleegMetBurgerservicenummer";
/// The one field asked for: the parents' BSNs.
pub const PARENTS_FIELD: &str = "ouders.burgerservicenummer";
/// The default of `timeout_ms`.
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;
/// The default API key header (header names are case-insensitive).
pub const DEFAULT_API_KEY_HEADER: &str = "X-API-KEY";

/// Answers (and problems) larger than this are refused: one person's parents fit in a few
/// hundred bytes.
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// A token is renewed this long before the `expires_in` it came with (or halfway through a
/// shorter lifetime), so a request never carries one that expires in flight.
const TOKEN_MARGIN: Duration = Duration::from_secs(30);
/// The lifetime assumed for a token whose answer gives no `expires_in`.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// A token is used for at most this long, whatever its `expires_in` says (an endpoint
/// claiming centuries would otherwise overflow the clock).
pub(crate) const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Texts kept from a BRP answer are cut to this many characters.
const MAX_TEXT: usize = 200;
/// At most this many `invalidParams` are kept.
const MAX_INVALID_PARAMS: usize = 10;

pub use crate::config::{ApiKeyAuth, BrpAuth, BrpConfig, OauthAuth};

impl BrpConfig {
    /// Checks the URLs, the TLS fields and the auth fields without reading any file; the
    /// files are read (and their modes checked) by [`BrpClient::new`].
    pub fn validate(&self) -> Result<(), BrpError> {
        let url_tls = check_url("brp.url", &self.url)?;
        let token_tls = match &self.auth {
            BrpAuth::Oauth(oauth) => check_url("brp.auth.oauth.token_url", &oauth.token_url)?,
            BrpAuth::ApiKey(_) => false,
        };
        let tls = url_tls || token_tls;
        if tls && self.ca.is_none() {
            return Err(config(
                "brp.ca is required for an https:// BRP or token endpoint: give the PEM CA certificate of the BRP's \
                 gateway (virfed trusts no system roots)",
            ));
        }
        if !tls && (self.ca.is_some() || self.client_cert.is_some() || self.client_key.is_some()) {
            return Err(config(
                "brp.ca, brp.client_cert and brp.client_key are for https:// only; remove them or use https://",
            ));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(config("brp.client_cert and brp.client_key go together: give both, or neither"));
        }
        if self.timeout_ms == 0 {
            return Err(config("brp.timeout_ms must be at least 1"));
        }
        match &self.auth {
            BrpAuth::ApiKey(key) => {
                HeaderName::from_bytes(key.header.as_bytes()).map_err(|_| {
                    config(format!("brp.auth.api_key.header {:?} is not a valid HTTP header name", key.header))
                })?;
            }
            BrpAuth::Oauth(oauth) => {
                if oauth.client_id.trim().is_empty() {
                    return Err(config("brp.auth.oauth.client_id is empty"));
                }
            }
        }
        Ok(())
    }
}

/// `Ok(true)` for an `https://` URL, `Ok(false)` for `http://` to loopback.
fn check_url(field: &str, url: &str) -> Result<bool, BrpError> {
    let uri: Uri = url.parse().map_err(|e| config(format!("{field} {url:?}: {e}")))?;
    let host = uri.host().ok_or_else(|| config(format!("{field} {url:?}: give scheme://host[:port]/path")))?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(config(format!("{field}: no user info in the URL; credentials belong in brp.auth")));
    }
    if uri.query().is_some() {
        return Err(config(format!("{field} {url}: no query string")));
    }
    match uri.scheme_str() {
        Some("https") => Ok(true),
        Some("http") if is_loopback_host(host) => Ok(false),
        Some("http") => Err(config(format!(
            "{field} {url}: plain http:// is refused except to a loopback address (lookups carry BSNs); use \
             https:// with brp.ca"
        ))),
        _ => Err(config(format!("{field} {url}: use an https:// URL"))),
    }
}

fn config(message: impl Into<String>) -> BrpError {
    BrpError::Config(message.into())
}

/// What the BRP says about a child's parents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parents {
    /// The child is in the BRP; these are its parents with a valid BSN (0, 1 or 2).
    Found(Vec<Bsn>),
    /// The BRP does not know this BSN.
    NotFound,
}

/// Which HTTP endpoint an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST {url}/personen`.
    Personen,
    /// The OAuth token endpoint.
    Token,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Endpoint::Personen => "the BRP (POST /personen)",
            Endpoint::Token => "the BRP's OAuth token endpoint",
        })
    }
}

/// A problem answer (RFC 7807 `Foutbericht`, or an OAuth error), reduced to what helps an
/// operator and redacted ([`redact`]): no text in it can carry a BSN.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problem {
    title: Option<String>,
    code: Option<String>,
    detail: Option<String>,
    invalid_params: Vec<InvalidParam>,
}

/// One entry of a problem's `invalidParams`, redacted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidParam {
    /// The parameter, e.g. `burgerservicenummer[0]`.
    pub name: Option<String>,
    /// The check it failed, e.g. `pattern`.
    pub code: Option<String>,
    /// Why.
    pub reason: Option<String>,
}

#[derive(Deserialize)]
struct RawProblem {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default, rename = "invalidParams")]
    invalid_params: Vec<RawInvalidParam>,
    // OAuth 2.0 error answers (RFC 6749 §5.2).
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

#[derive(Deserialize)]
struct RawInvalidParam {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

impl Problem {
    /// Parses a problem+json body (or an OAuth error body); `None` when it is not one.
    /// Every text is redacted and cut to 200 characters, at most 10 `invalidParams` kept.
    pub fn from_json(body: &[u8]) -> Option<Problem> {
        let raw: RawProblem = serde_json::from_slice(body).ok()?;
        let text = |s: Option<String>| s.map(|s| clean(&s)).filter(|s| !s.is_empty());
        let problem = Problem {
            title: text(raw.title.or(raw.error_description)),
            code: text(raw.code.or(raw.error)),
            detail: text(raw.detail),
            invalid_params: raw
                .invalid_params
                .into_iter()
                .take(MAX_INVALID_PARAMS)
                .map(|p| InvalidParam { name: text(p.name), code: text(p.code), reason: text(p.reason) })
                .collect(),
        };
        (problem != Problem::default()).then_some(problem)
    }

    /// The problem's `title` (or an OAuth `error_description`).
    pub fn title(&self) -> Option<&str> {
        self.title.as_deref()
    }

    /// The problem's `code` (or an OAuth `error`), e.g. `paramsValidation`, `authentication`.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The problem's `detail`.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The problem's `invalidParams`.
    pub fn invalid_params(&self) -> &[InvalidParam] {
        &self.invalid_params
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(title) = &self.title {
            parts.push(format!("{title:?}"));
        }
        if let Some(code) = &self.code {
            parts.push(format!("code {code}"));
        }
        if let Some(detail) = &self.detail {
            parts.push(format!("detail {detail:?}"));
        }
        let params: Vec<String> = self
            .invalid_params
            .iter()
            .map(|p| {
                let name = p.name.as_deref().unwrap_or("?");
                match (&p.code, &p.reason) {
                    (Some(code), Some(reason)) => format!("{name} ({code}: {reason})"),
                    (Some(code), None) => format!("{name} ({code})"),
                    (None, Some(reason)) => format!("{name} ({reason})"),
                    (None, None) => name.to_owned(),
                }
            })
            .collect();
        if !params.is_empty() {
            parts.push(format!("invalid parameters: {}", params.join(", ")));
        }
        f.write_str(&parts.join("; "))
    }
}

/// Why a BRP lookup failed. [`BrpError::is_retryable`] says whether trying again later
/// can help. No message carries a BSN.
#[derive(Debug, thiserror::Error)]
pub enum BrpError {
    /// The `[brp]` config or one of its files is unusable (permanent, at start).
    #[error("BRP configuration: {0}")]
    Config(String),
    /// No (complete) answer within `timeout_ms` (retryable).
    #[error("{endpoint} did not answer within {after_ms} ms")]
    Timeout {
        /// Which endpoint.
        endpoint: Endpoint,
        /// The configured timeout.
        after_ms: u64,
    },
    /// Connecting, the TLS handshake or the exchange failed (retryable).
    #[error("cannot reach {endpoint}: {reason}")]
    Connect {
        /// Which endpoint.
        endpoint: Endpoint,
        /// What failed, with its causes (redacted).
        reason: String,
    },
    /// The service is down, overloaded or rate limiting: 5xx, 429, 408 (retryable).
    #[error("{endpoint} is unavailable (HTTP {status}){}", problem_suffix(.problem))]
    Unavailable {
        /// Which endpoint.
        endpoint: Endpoint,
        /// The HTTP status.
        status: u16,
        /// The problem answer, when there was one.
        problem: Option<Problem>,
        /// The `Retry-After` the service asked for, in seconds form.
        retry_after: Option<Duration>,
    },
    /// The service refused the request: 400, 401, 403, 404, 406, 415 and the like
    /// (permanent: the request, the credentials or the authorisation must change).
    #[error("{endpoint} refused the lookup (HTTP {status}){}", problem_suffix(.problem))]
    Refused {
        /// Which endpoint.
        endpoint: Endpoint,
        /// The HTTP status.
        status: u16,
        /// The problem answer, when there was one.
        problem: Option<Problem>,
    },
    /// A `200` answer that is not what the API specifies (retryable: a broken gateway or a
    /// deployment in progress may answer properly later).
    #[error("{endpoint} sent a malformed answer: {reason}")]
    Malformed {
        /// Which endpoint.
        endpoint: Endpoint,
        /// What is wrong with it (redacted).
        reason: String,
    },
}

fn problem_suffix(problem: &Option<Problem>) -> String {
    match problem {
        Some(p) => format!(": {p}"),
        None => String::new(),
    }
}

impl BrpError {
    /// Whether the same lookup may succeed later (timeout, connection, 5xx, 429, 408, a
    /// malformed answer), as opposed to needing a change first (config, 4xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            BrpError::Timeout { .. }
            | BrpError::Connect { .. }
            | BrpError::Unavailable { .. }
            | BrpError::Malformed { .. } => true,
            BrpError::Config(_) | BrpError::Refused { .. } => false,
        }
    }

    /// The wait the service asked for with `Retry-After` (seconds form), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            BrpError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status of an answer that was an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            BrpError::Unavailable { status, .. } | BrpError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The problem answer, if the service sent one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            BrpError::Unavailable { problem, .. } | BrpError::Refused { problem, .. } => problem.as_ref(),
            _ => None,
        }
    }
}

/// Replaces, in `text`, every run of 8 or more digits by `<redacted>`, and every run of 7
/// that is a BSN once `00` is put before it (how a BSN such as `00xxxxxxx` reads when
/// written as a number). A run may have single spaces, dots, dashes or no-break spaces
/// between its digits (`1234.56.782` is one run), and any Unicode digit counts. A BSN has
/// 9 digits, 8 before its leading zero is added: any text a BRP sends back may quote one,
/// and none may reach a log or an error message.
pub fn redact(text: &str) -> String {
    const MIN_DIGITS: usize = 8;
    let is_digit = |c: char| c.is_numeric();
    let is_separator = |c: char| matches!(c, ' ' | '.' | '-' | '\u{a0}');
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if !is_digit(chars[i]) {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        // A run: digits, each gap one separator between two digits.
        let start = i;
        let mut end = i; // one past the last digit
        let mut digits = 0;
        let mut j = i;
        while j < chars.len() {
            if is_digit(chars[j]) {
                digits += 1;
                j += 1;
                end = j;
            } else if is_separator(chars[j]) && j + 1 < chars.len() && is_digit(chars[j + 1]) {
                j += 1;
            } else {
                break;
            }
        }
        let seven_digit_bsn = || {
            let run: String = chars[start..end].iter().filter(|c| c.is_ascii_digit()).collect();
            run.len() == 7 && Bsn::parse(&format!("00{run}")).is_ok()
        };
        if digits >= MIN_DIGITS || (digits == 7 && seven_digit_bsn()) {
            out.push_str("<redacted>");
        } else {
            out.extend(&chars[start..end]);
        }
        i = end;
    }
    out
}

/// A text from the BRP as we keep it: redacted, control characters replaced (no log
/// injection), trimmed and cut to [`MAX_TEXT`] characters. Redaction comes first, so a
/// cut cannot leave part of a number that redaction would have caught.
fn clean(text: &str) -> String {
    crate::federation::peer_text(text, MAX_TEXT).trim().to_owned()
}

/// The lookup request body.
#[derive(Serialize)]
struct Query<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    burgerservicenummer: [&'a str; 1],
    fields: [&'a str; 1],
}

/// The parts of a `RaadpleegMetBurgerservicenummer` answer we read.
#[derive(Deserialize)]
struct Answer {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    personen: Vec<Persoon>,
}

#[derive(Deserialize)]
struct Persoon {
    #[serde(default)]
    ouders: Vec<Ouder>,
}

#[derive(Deserialize)]
struct Ouder {
    #[serde(default)]
    burgerservicenummer: Option<String>,
}

/// A token endpoint's answer (RFC 6749 §5.1).
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    token_type: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// A client of the BRP Personen API. Cheap to clone; clones share the connection pool,
/// the cached token and the counters.
#[derive(Clone)]
pub struct BrpClient {
    inner: Arc<Inner>,
}

struct Inner {
    personen: Uri,
    http: Client<HttpsConnector, Full<Bytes>>,
    auth: Auth,
    timeout: Duration,
    skipped_invalid: AtomicU64,
}

enum Auth {
    ApiKey { header: HeaderName, value: HeaderValue },
    Oauth(Oauth),
}

struct Oauth {
    token_url: Uri,
    /// `Basic base64(urlencode(id) ":" urlencode(secret))`, sensitive.
    basic: HeaderValue,
    /// The form body: `grant_type=client_credentials[&scope=…]`.
    form: String,
    /// The current token and when to stop using it.
    cache: Mutex<Option<(HeaderValue, Instant)>>,
}

impl fmt::Debug for BrpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.inner.auth {
            Auth::ApiKey { header, .. } => format!("api key in {header}"),
            Auth::Oauth(o) => format!("oauth via {}", o.token_url),
        };
        f.debug_struct("BrpClient")
            .field("personen", &self.inner.personen.to_string())
            .field("auth", &auth)
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

/// Reads a secret file: refused when group or others may read it, trimmed, not empty.
fn read_secret(path: &Path, field: &str) -> Result<Zeroizing<String>, BrpError> {
    crate::pki::check_secret_file_mode(path).map_err(|e| config(format!("{field}: {e}")))?;
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| config(format!("{field} {}: {e}", path.display())))?);
    let text = std::str::from_utf8(&bytes).map_err(|_| config(format!("{field} {}: not UTF-8", path.display())))?;
    let text = Zeroizing::new(text.trim().to_owned());
    if text.is_empty() {
        return Err(config(format!("{field} {} is empty", path.display())));
    }
    Ok(text)
}

fn read_file(path: &Path, field: &str) -> Result<Vec<u8>, BrpError> {
    std::fs::read(path).map_err(|e| config(format!("{field} {}: {e}", path.display())))
}

/// `application/x-www-form-urlencoded` encoding of one name or value.
fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(char::from(b)),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn sensitive(value: &str, what: &str) -> Result<HeaderValue, BrpError> {
    let mut value =
        HeaderValue::from_str(value).map_err(|_| config(format!("{what} holds characters not allowed in a header")))?;
    value.set_sensitive(true);
    Ok(value)
}

impl BrpClient {
    /// Checks the config ([`BrpConfig::validate`]), reads its files (CA, client
    /// certificate and key, secrets; every secret file must be mode 0600 or stricter) and
    /// builds the client. Every error names the field and file at fault.
    pub fn new(config: &BrpConfig) -> Result<BrpClient, BrpError> {
        config.validate()?;
        let base = config.url.trim_end_matches('/');
        let personen: Uri =
            format!("{base}/personen").parse().map_err(|e| self::config(format!("brp.url {:?}: {e}", config.url)))?;
        let connector = match &config.ca {
            None => HttpsConnector::loopback_plain(),
            Some(ca) => {
                let what = format!("brp.ca {}", ca.display());
                let ca_pem = read_file(ca, "brp.ca")?;
                let tls = match (&config.client_cert, &config.client_key) {
                    (Some(cert), Some(key)) => {
                        crate::pki::check_secret_file_mode(key)
                            .map_err(|e| self::config(format!("brp.client_key: {e}")))?;
                        let cert_pem = read_file(cert, "brp.client_cert")?;
                        let key_pem = Zeroizing::new(read_file(key, "brp.client_key")?);
                        crate::pki::https_client_config_with_cert(
                            &ca_pem,
                            &what,
                            &cert_pem,
                            &format!("brp.client_cert {}", cert.display()),
                            &key_pem,
                            &format!("brp.client_key {}", key.display()),
                        )
                    }
                    _ => crate::pki::https_client_config(&ca_pem, &what),
                }
                .map_err(|e| self::config(e.to_string()))?;
                HttpsConnector::new(tls)
            }
        };
        let auth = match &config.auth {
            BrpAuth::ApiKey(key) => {
                let header = HeaderName::from_bytes(key.header.as_bytes())
                    .map_err(|_| self::config(format!("brp.auth.api_key.header {:?} is not valid", key.header)))?;
                let value = read_secret(&key.value_file, "brp.auth.api_key.value_file")?;
                Auth::ApiKey { header, value: sensitive(&value, "brp.auth.api_key.value_file")? }
            }
            BrpAuth::Oauth(oauth) => {
                let token_url: Uri = oauth
                    .token_url
                    .parse()
                    .map_err(|e| self::config(format!("brp.auth.oauth.token_url {:?}: {e}", oauth.token_url)))?;
                let secret = read_secret(&oauth.client_secret_file, "brp.auth.oauth.client_secret_file")?;
                let pair = Zeroizing::new(format!("{}:{}", form_encode(&oauth.client_id), form_encode(&secret)));
                let basic =
                    Zeroizing::new(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(&*pair)));
                let mut form = String::from("grant_type=client_credentials");
                if let Some(scope) = oauth.scope.as_deref().filter(|s| !s.is_empty()) {
                    form.push_str("&scope=");
                    form.push_str(&form_encode(scope));
                }
                Auth::Oauth(Oauth {
                    token_url,
                    basic: sensitive(&basic, "brp.auth.oauth.client_secret_file")?,
                    form,
                    cache: Mutex::new(None),
                })
            }
        };
        let http = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Ok(BrpClient {
            inner: Arc::new(Inner {
                personen,
                http,
                auth,
                timeout: Duration::from_millis(config.timeout_ms),
                skipped_invalid: AtomicU64::new(0),
            }),
        })
    }

    /// How many parent BSNs from the BRP failed validation (D9, or equal to the child's)
    /// and were skipped, since this client was built.
    pub fn skipped_invalid_parents(&self) -> u64 {
        self.inner.skipped_invalid.load(Ordering::Relaxed)
    }

    /// Asks the BRP for `child`'s parents.
    pub async fn parents(&self, child: &Bsn) -> Result<Parents, BrpError> {
        let digits = String::from_utf8_lossy(child.normalised_digits());
        let body = Bytes::from(
            serde_json::to_vec(&Query { kind: QUERY_TYPE, burgerservicenummer: [&digits], fields: [PARENTS_FIELD] })
                .map_err(|e| BrpError::Malformed { endpoint: Endpoint::Personen, reason: e.to_string() })?,
        );
        let mut fresh_token_tried = false;
        let (status, headers, answer) = loop {
            let auth = self.auth_header().await?;
            let request = http::Request::builder()
                .method(Method::POST)
                .uri(self.inner.personen.clone())
                .header(CONTENT_TYPE, "application/json; charset=utf-8")
                .header(ACCEPT, "application/json")
                .header(auth.0.clone(), auth.1.clone())
                .body(Full::new(body.clone()))
                .map_err(|e| config(format!("cannot build the lookup request: {e}")))?;
            let (status, headers, answer) = self.exchange(Endpoint::Personen, request).await?;
            if status == StatusCode::UNAUTHORIZED && !fresh_token_tried {
                if let Auth::Oauth(oauth) = &self.inner.auth {
                    // The token may have been revoked or have expired early: one fresh try.
                    debug!("the BRP refused the cached token; fetching a fresh one");
                    oauth.forget(&auth.1).await;
                    fresh_token_tried = true;
                    continue;
                }
            }
            break (status, headers, answer);
        };
        if !status.is_success() {
            return Err(error_answer(Endpoint::Personen, status, &headers, &answer));
        }
        if status != StatusCode::OK {
            return Err(malformed(Endpoint::Personen, format!("HTTP {status} instead of 200")));
        }
        read_answer(child, &answer, &self.inner.skipped_invalid)
    }

    /// The authentication header of the next lookup.
    async fn auth_header(&self) -> Result<(HeaderName, HeaderValue), BrpError> {
        match &self.inner.auth {
            Auth::ApiKey { header, value } => Ok((header.clone(), value.clone())),
            Auth::Oauth(oauth) => Ok((AUTHORIZATION, self.token(oauth).await?)),
        }
    }

    /// The cached bearer token, or a fresh one. Holding the lock across the fetch lets
    /// concurrent lookups share one token request.
    async fn token(&self, oauth: &Oauth) -> Result<HeaderValue, BrpError> {
        let mut cache = oauth.cache.lock().await;
        if let Some((token, until)) = &*cache {
            if Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let asked = Instant::now();
        let request = http::Request::builder()
            .method(Method::POST)
            .uri(oauth.token_url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .header(AUTHORIZATION, oauth.basic.clone())
            .body(Full::new(Bytes::from(oauth.form.clone())))
            .map_err(|e| config(format!("cannot build the token request: {e}")))?;
        let (status, headers, answer) = self.exchange(Endpoint::Token, request).await?;
        if !status.is_success() {
            return Err(error_answer(Endpoint::Token, status, &headers, &answer));
        }
        let (token, lifetime) = read_token_answer(&answer)?;
        let until = asked + lifetime - TOKEN_MARGIN.min(lifetime / 2);
        debug!(lifetime_secs = lifetime.as_secs(), "fetched a BRP access token");
        *cache = Some((token.clone(), until));
        Ok(token)
    }

    /// One HTTP exchange within the timeout: status, headers and the whole body (at most
    /// [`MAX_ANSWER_BYTES`]).
    async fn exchange(
        &self,
        endpoint: Endpoint,
        request: http::Request<Full<Bytes>>,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), BrpError> {
        let after_ms = u64::try_from(self.inner.timeout.as_millis()).unwrap_or(u64::MAX);
        let exchange = async {
            let response = self
                .inner
                .http
                .request(request)
                .await
                .map_err(|e| BrpError::Connect { endpoint, reason: clean(&crate::pki::error_chain(&e)) })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES).collect().await.map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    malformed(endpoint, format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"))
                } else {
                    BrpError::Connect { endpoint, reason: clean(&format!("reading the answer: {e}")) }
                }
            })?;
            Ok((parts.status, parts.headers, body.to_bytes()))
        };
        let result = tokio::time::timeout(self.inner.timeout, exchange)
            .await
            .unwrap_or(Err(BrpError::Timeout { endpoint, after_ms }));
        match &result {
            Ok((status, _, _)) => debug!(%endpoint, status = status.as_u16(), "BRP exchange answered"),
            Err(e) => debug!(%endpoint, error = %e, "BRP exchange failed"),
        }
        result
    }
}

impl Oauth {
    /// Drops the cached token if it is still `used` (a concurrent lookup may have renewed it).
    async fn forget(&self, used: &HeaderValue) {
        let mut cache = self.cache.lock().await;
        if cache.as_ref().is_some_and(|(token, _)| token == used) {
            *cache = None;
        }
    }
}

/// Reads a token endpoint's `200` answer (RFC 6749 §5.1) into the `Authorization` value
/// (marked sensitive) and how long to use it (at most [`MAX_TOKEN_LIFETIME`]). Bytes from
/// outside: a token or an error, never a panic (the fuzz target `brp_answer`), and no error
/// quotes the access token.
pub(crate) fn read_token_answer(answer: &[u8]) -> Result<(HeaderValue, Duration), BrpError> {
    let answer: TokenAnswer = serde_json::from_slice(answer)
        .map_err(|e| malformed(Endpoint::Token, format!("not an OAuth token answer ({})", json_fault(&e))))?;
    let access = Zeroizing::new(answer.access_token);
    if !answer.token_type.eq_ignore_ascii_case("bearer") {
        return Err(malformed(Endpoint::Token, format!("token_type {:?}, expected Bearer", answer.token_type)));
    }
    if access.is_empty() {
        return Err(malformed(Endpoint::Token, "access_token is empty".into()));
    }
    let bearer = Zeroizing::new(format!("Bearer {}", &*access));
    let mut token = HeaderValue::from_str(&bearer)
        .map_err(|_| malformed(Endpoint::Token, "access_token has characters not allowed in a header".into()))?;
    token.set_sensitive(true);
    let lifetime = answer.expires_in.map(Duration::from_secs).unwrap_or(DEFAULT_TOKEN_LIFETIME);
    Ok((token, lifetime.min(MAX_TOKEN_LIFETIME)))
}

/// Reads a `200` answer into [`Parents`], validating every parent BSN; a listed parent
/// that is not a valid BSN is skipped and counted in `skipped_invalid`. Bytes from the
/// BRP: any of them give parents or an error, never a panic (the fuzz target `brp_answer`),
/// and no error quotes a value of the answer.
pub fn read_answer(child: &Bsn, answer: &[u8], skipped_invalid: &AtomicU64) -> Result<Parents, BrpError> {
    let answer: Answer = serde_json::from_slice(answer).map_err(|e| {
        malformed(Endpoint::Personen, format!("not a RaadpleegMetBurgerservicenummer answer ({})", json_fault(&e)))
    })?;
    if answer.kind != QUERY_TYPE {
        return Err(malformed(Endpoint::Personen, format!("answer type {:?}, expected {QUERY_TYPE}", answer.kind)));
    }
    let persoon = match answer.personen.len() {
        0 => {
            debug!("BRP lookup: person not found");
            return Ok(Parents::NotFound);
        }
        1 => &answer.personen[0],
        n => return Err(malformed(Endpoint::Personen, format!("{n} persons for one BSN"))),
    };
    let mut parents: Vec<Bsn> = Vec::new();
    let (mut invalid, mut without) = (0u64, 0usize);
    for ouder in &persoon.ouders {
        let Some(text) = &ouder.burgerservicenummer else {
            without += 1;
            continue;
        };
        match Bsn::parse(text) {
            Ok(parent) if parent == *child => invalid += 1,
            Ok(parent) => {
                if !parents.contains(&parent) {
                    parents.push(parent);
                }
            }
            Err(_) => invalid += 1,
        }
    }
    if invalid > 0 {
        skipped_invalid.fetch_add(invalid, Ordering::Relaxed);
        warn!(skipped = invalid, "the BRP listed a parent whose BSN is not valid (D9); skipped, not trusted");
    }
    if parents.len() > 2 {
        return Err(malformed(Endpoint::Personen, format!("{} parents listed; a person has at most 2", parents.len())));
    }
    debug!(parents = parents.len(), without_bsn = without, "BRP lookup: person found");
    Ok(Parents::Found(parents))
}

/// What is wrong with a JSON answer, without serde's message: that quotes the values it
/// could not use, which may be a BSN.
fn json_fault(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Eof => "the JSON ends early",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Data => "a field is missing or has the wrong type",
        serde_json::error::Category::Io => "unreadable",
    };
    format!("{what}, at line {} column {}", e.line(), e.column())
}

fn malformed(endpoint: Endpoint, reason: String) -> BrpError {
    BrpError::Malformed { endpoint, reason: clean(&reason) }
}

/// A non-2xx answer as an error: retryable for 5xx, 429 and 408, permanent otherwise.
fn error_answer(endpoint: Endpoint, status: StatusCode, headers: &http::HeaderMap, body: &[u8]) -> BrpError {
    let problem = Problem::from_json(body);
    let code = status.as_u16();
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT {
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        BrpError::Unavailable { endpoint, status: code, problem, retry_after }
    } else {
        BrpError::Refused { endpoint, status: code, problem }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTORS: &str = include_str!("../tests/data/bsn-vectors.txt");

    fn valid_vectors() -> Vec<String> {
        VECTORS
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let input = parts.next()?;
                (parts.next()? == "valid").then(|| input.to_owned())
            })
            .collect()
    }

    fn api_key_config(url: &str) -> BrpConfig {
        BrpConfig {
            url: url.into(),
            ca: None,
            client_cert: None,
            client_key: None,
            auth: BrpAuth::ApiKey(ApiKeyAuth { header: DEFAULT_API_KEY_HEADER.into(), value_file: "key".into() }),
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }

    #[test]
    fn redact_replaces_runs_of_eight_or_more_digits_however_written() {
        for bsn in valid_vectors() {
            for text in [
                format!("burgerservicenummer {bsn} is onbekend"),
                format!("bsn={bsn}"),
                format!("[\"{bsn}\"]"),
                format!("x{bsn}y"),
                format!("{}.{}.{}", &bsn[..4], &bsn[4..6], &bsn[6..]),
                format!("{} {}", &bsn[..3], &bsn[3..]),
                format!("{}-{}", &bsn[..5], &bsn[5..]),
            ] {
                let shown = redact(&text);
                let digits: String = shown.chars().filter(char::is_ascii_digit).collect();
                assert!(!shown.contains(&bsn) && digits.len() < 8, "{text:?} -> {shown:?}");
                assert!(shown.contains("<redacted>"), "{text:?} -> {shown:?}");
            }
        }
        // Full-width digits count too.
        assert_eq!(redact("１２３４５６７８２"), "<redacted>");
        // A BSN starting with 00, written as a number, has 7 digits.
        let double_zero = (1_000_000..9_999_999u32).map(|n| format!("00{n}")).find(|b| Bsn::parse(b).is_ok()).unwrap();
        assert_eq!(redact(&format!("value {}", &double_zero[2..])), "value <redacted>");
    }

    #[test]
    fn redact_keeps_short_numbers_and_the_text_around_them() {
        assert_eq!(redact("HTTP 503 at line 1 column 57"), "HTTP 503 at line 1 column 57");
        assert_eq!(redact("burgerservicenummer[0]: ^[0-9]{9}$"), "burgerservicenummer[0]: ^[0-9]{9}$");
        assert!(Bsn::parse("001234567").is_err());
        assert_eq!(redact("1234567 is seven"), "1234567 is seven");
        assert_eq!(redact("a 12345678 b"), "a <redacted> b");
        assert_eq!(redact("ends with 123456782."), "ends with <redacted>.");
        assert_eq!(redact("1. 2. 3"), "1. 2. 3");
        assert_eq!(redact(""), "");
    }

    #[test]
    fn a_problem_keeps_title_code_and_invalid_params_and_never_a_bsn() {
        let body = br#"{
            "type": "https://datatracker.ietf.org/doc/html/rfc7231#section-6.5.1",
            "title": "Een of meerdere parameters zijn niet correct.",
            "status": 400,
            "detail": "De foutieve parameter(s) zijn: burgerservicenummer[0] (123456782).",
            "instance": "/haalcentraal/api/brp/personen?bsn=123456782",
            "code": "paramsValidation",
            "invalidParams": [
                {"type": "x", "name": "burgerservicenummer[0]", "code": "pattern",
                 "reason": "Waarde 1234.56.782 voldoet niet aan patroon ^[0-9]{9}$."}
            ]
        }"#;
        let problem = Problem::from_json(body).expect("a problem");
        assert_eq!(problem.title(), Some("Een of meerdere parameters zijn niet correct."));
        assert_eq!(problem.code(), Some("paramsValidation"));
        assert_eq!(problem.detail(), Some("De foutieve parameter(s) zijn: burgerservicenummer[0] (<redacted>)."));
        assert_eq!(problem.invalid_params().len(), 1);
        assert_eq!(problem.invalid_params()[0].name.as_deref(), Some("burgerservicenummer[0]"));
        assert_eq!(problem.invalid_params()[0].code.as_deref(), Some("pattern"));
        let error = BrpError::Refused { endpoint: Endpoint::Personen, status: 400, problem: Some(problem) };
        for shown in [error.to_string(), format!("{error:?}")] {
            assert!(!shown.contains("123456782") && !shown.contains("1234.56.782"), "{shown}");
            assert!(shown.contains("paramsValidation") && shown.contains("burgerservicenummer[0]"), "{shown}");
            assert!(!shown.contains("instance") && !shown.contains("?bsn="), "{shown}");
        }
        assert!(!error.is_retryable());
    }

    #[test]
    fn a_problem_reads_oauth_errors_and_refuses_what_is_not_one() {
        let oauth = Problem::from_json(br#"{"error":"invalid_client","error_description":"Unknown client"}"#).unwrap();
        assert_eq!((oauth.code(), oauth.title()), (Some("invalid_client"), Some("Unknown client")));
        assert_eq!(Problem::from_json(b"<html>503</html>"), None);
        assert_eq!(Problem::from_json(b"{}"), None);
        assert_eq!(Problem::from_json(b"[1,2]"), None);
    }

    #[test]
    fn problem_texts_are_cut_and_control_characters_replaced() {
        let long = "x".repeat(1000);
        let body = format!(
            r#"{{"title":"{long}","code":"a\nb\u001b[31m","invalidParams":[{}]}}"#,
            vec![r#"{"name":"n"}"#; 50].join(",")
        );
        let problem = Problem::from_json(body.as_bytes()).unwrap();
        assert_eq!(problem.title().unwrap().chars().count(), MAX_TEXT + 1);
        assert!(!problem.code().unwrap().chars().any(char::is_control), "{:?}", problem.code());
        assert_eq!(problem.invalid_params().len(), MAX_INVALID_PARAMS);
    }

    #[test]
    fn a_token_answer_claiming_an_endless_lifetime_is_used_for_a_day_at_most() {
        // expires_in = u64::MAX seconds: added to the clock as it was, it overflowed the
        // Instant (a panic in the BRP client on bytes from the token endpoint).
        let answer = br#"{"access_token":"t0ken","token_type":"bearer","expires_in":18446744073709551615}"#;
        let (value, lifetime) = read_token_answer(answer).unwrap();
        assert_eq!(lifetime, MAX_TOKEN_LIFETIME);
        assert!(value.is_sensitive());
        assert_eq!(value.to_str().unwrap(), "Bearer t0ken");
        let (_, lifetime) = read_token_answer(br#"{"access_token":"t","token_type":"Bearer"}"#).unwrap();
        assert_eq!(lifetime, DEFAULT_TOKEN_LIFETIME, "no expires_in: the default");
        let empty = read_token_answer(br#"{"access_token":"","token_type":"Bearer"}"#).unwrap_err();
        assert!(empty.to_string().contains("access_token is empty"), "{empty}");
        let err = read_token_answer(br#"{"access_token":"secret-token-1234","token_type":"mac"}"#).unwrap_err();
        assert!(err.to_string().contains("expected Bearer") && !err.to_string().contains("secret-token"), "{err}");
    }

    #[test]
    fn retryable_and_permanent_errors() {
        let unavailable = |status| error_answer(Endpoint::Personen, status, &http::HeaderMap::new(), b"");
        for status in [500, 502, 503, 504, 429, 408] {
            let e = unavailable(StatusCode::from_u16(status).unwrap());
            assert!(e.is_retryable() && e.status() == Some(status), "{status}: {e}");
        }
        for status in [400, 401, 403, 404, 406, 415, 301] {
            let e = unavailable(StatusCode::from_u16(status).unwrap());
            assert!(!e.is_retryable() && e.status() == Some(status), "{status}: {e}");
        }
        let mut headers = http::HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("120"));
        let e = error_answer(Endpoint::Personen, StatusCode::SERVICE_UNAVAILABLE, &headers, b"");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(120)));
        assert!(BrpError::Timeout { endpoint: Endpoint::Personen, after_ms: 5 }.is_retryable());
        assert!(malformed(Endpoint::Personen, "x".into()).is_retryable());
        assert!(!config("x").is_retryable());
    }

    #[test]
    fn the_sample_config_parses_with_both_auth_kinds_and_defaults() {
        #[derive(Deserialize)]
        struct File {
            brp: BrpConfig,
        }
        let sample = include_str!("brp.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! [brp]"))
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        let file: File = toml::from_str(&sample).expect("the module docs' sample");
        file.brp.validate().expect("valid");
        assert!(matches!(&file.brp.auth, BrpAuth::Oauth(o) if o.scope.as_deref() == Some("brp-personen")));
        assert_eq!(file.brp.timeout_ms, 5000);

        let api_key = "[brp]\nurl = \"http://127.0.0.1:8080/haalcentraal/api/brp\"\nauth = { api_key = { value_file = \"k\" } }\n";
        let file: File = toml::from_str(api_key).expect("api key");
        file.brp.validate().expect("valid");
        assert!(matches!(&file.brp.auth, BrpAuth::ApiKey(k) if k.header == DEFAULT_API_KEY_HEADER));
        assert_eq!(file.brp.timeout_ms, DEFAULT_TIMEOUT_MS);

        let unknown = format!("{api_key}tiemout_ms = 5\n");
        assert!(toml::from_str::<File>(&unknown).is_err(), "a misspelt field must be refused");
        let both = "[brp]\nurl = \"http://127.0.0.1/\"\nauth = { basic = { user = \"u\" } }\n";
        assert!(toml::from_str::<File>(both).is_err(), "an unknown auth kind must be refused");
    }

    #[test]
    fn config_validation_refuses_what_would_leak_or_cannot_work() {
        let refused = |c: &BrpConfig, needle: &str| {
            let err = c.validate().expect_err(needle).to_string();
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        };
        api_key_config("http://127.0.0.1:9/brp").validate().expect("loopback http");
        api_key_config("http://[::1]:9/brp").validate().expect("loopback v6");
        api_key_config("http://localhost/brp").validate().expect("localhost");
        refused(&api_key_config("http://brp.example.nl/brp"), "except to a loopback address");
        refused(&api_key_config("https://brp.example.nl/brp"), "brp.ca is required");
        refused(&api_key_config("ftp://127.0.0.1/brp"), "use an https:// URL");
        refused(&api_key_config("https://u:p@brp.example.nl/brp"), "no user info");
        refused(&api_key_config("https://brp.example.nl/brp?x=1"), "no query string");
        refused(&api_key_config("not a url"), "brp.url");

        let mut https = api_key_config("https://brp.example.nl/brp");
        https.ca = Some("ca.pem".into());
        https.validate().expect("https with ca");
        https.client_cert = Some("c.pem".into());
        refused(&https, "go together");
        https.client_key = Some("c.key".into());
        https.validate().expect("mtls");
        https.timeout_ms = 0;
        refused(&https, "timeout_ms");

        let mut plain_with_ca = api_key_config("http://127.0.0.1/brp");
        plain_with_ca.ca = Some("ca.pem".into());
        refused(&plain_with_ca, "for https:// only");

        let mut bad_header = api_key_config("http://127.0.0.1/brp");
        bad_header.auth = BrpAuth::ApiKey(ApiKeyAuth { header: "X API KEY".into(), value_file: "k".into() });
        refused(&bad_header, "not a valid HTTP header name");

        let oauth = |token_url: &str| {
            let mut c = api_key_config("http://127.0.0.1/brp");
            c.auth = BrpAuth::Oauth(OauthAuth {
                token_url: token_url.into(),
                client_id: "virfed".into(),
                client_secret_file: "s".into(),
                scope: None,
            });
            c
        };
        oauth("http://127.0.0.1/token").validate().expect("loopback token endpoint");
        refused(&oauth("http://auth.example.nl/token"), "brp.auth.oauth.token_url");
        refused(&oauth("https://auth.example.nl/token"), "brp.ca is required");
    }

    #[test]
    fn secret_files_must_be_private_and_not_empty() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("api-key");
        std::fs::write(&key, "  s3cret\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut c = api_key_config("http://127.0.0.1/brp");
        c.auth = BrpAuth::ApiKey(ApiKeyAuth { header: DEFAULT_API_KEY_HEADER.into(), value_file: key.clone() });
        let err = BrpClient::new(&c).expect_err("0644 secret accepted").to_string();
        assert!(err.contains("brp.auth.api_key.value_file") && err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let client = BrpClient::new(&c).expect("0600 secret");
        let shown = format!("{client:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        std::fs::write(&key, "\n").unwrap();
        let err = BrpClient::new(&c).expect_err("empty secret accepted").to_string();
        assert!(err.contains("is empty"), "{err}");
    }

    #[test]
    fn form_encoding_of_credentials() {
        assert_eq!(form_encode("virfed-rijnmond_1.x*"), "virfed-rijnmond_1.x*");
        assert_eq!(form_encode("a b:c/d+é"), "a+b%3Ac%2Fd%2B%C3%A9");
    }
}
