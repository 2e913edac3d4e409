//! Docker registry token authentication: the pure pieces (CNCF distribution's token auth
//! spec: token.md, jwt.md, oauth.md, scope.md).
//!
//! Clients that get a `Bearer` challenge ask the token endpoint for a JWT that names the
//! resources and actions they may use, then present it on every request. Access tokens
//! live minutes, so the request path checks a signature and a few claims instead of a
//! password. Refresh tokens (docker login's identity token) are JWTs too, marked with a
//! `use: "refresh"` claim, and only the token endpoint accepts them.
//!
//! HS256 only: the same process issues and verifies, so a shared secret is enough, and
//! accepting one algorithm rules out `none` and algorithm-confusion attacks. Nothing here
//! reads a clock: `now` (unix seconds) is passed in, so expiry is testable.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

/// Clocks of clients and servers drift; a token is honoured this long either side of
/// its validity window.
const LEEWAY_SECS: u64 = 30;
const REFRESH: &str = "refresh";
const SCOPE_SHAPE: &str =
    "a scope looks like type:name:action[,action], e.g. repository:team/app:pull,push";

/// One requested resource: `repository:team/app:pull,push`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub resource_type: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope {0:?}: {SCOPE_SHAPE}")]
pub struct ScopeError(String);

impl Scope {
    /// `type[(class)]:name:action[,action]*`. The name may hold a `:` (a host:port), so
    /// the split is at the first and the last `:`. The class (`repository(plugin)`) is
    /// deprecated and ignored by the spec, so it is dropped.
    pub fn parse(s: &str) -> Result<Scope, ScopeError> {
        let bad = || ScopeError(s.to_string());
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(bad)?;
        let resource_type = match kind.split_once('(') {
            Some((t, class)) => {
                let class = class.strip_suffix(')').ok_or_else(bad)?;
                if !is_type_value(class) {
                    return Err(bad());
                }
                t
            }
            None => kind,
        };
        if !is_type_value(resource_type)
            || name.is_empty()
            || name.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad());
        }
        let mut list: Vec<String> = Vec::new();
        for action in actions.split(',').filter(|a| !a.is_empty()) {
            if action != "*" && !action.bytes().all(|b| b.is_ascii_lowercase()) {
                return Err(bad());
            }
            if !list.iter().any(|a| a == action) {
                list.push(action.to_string());
            }
        }
        Ok(Scope {
            resource_type: resource_type.to_string(),
            name: name.to_string(),
            actions: list,
        })
    }
}

fn is_type_value(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let actions = self.actions.join(",");
        write!(f, "{}:{}:{actions}", self.resource_type, self.name)
    }
}

/// Several `scope=` values (GET), each of which may hold space-separated scopes (the
/// OAuth2 POST form sends them that way).
pub fn parse_scopes<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Scope>, ScopeError> {
    values
        .into_iter()
        .flat_map(str::split_whitespace)
        .map(Scope::parse)
        .collect()
}

/// An entry of a token's `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceActions {
    #[serde(rename = "type")]
    pub resource_type: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// What kind of principal a token speaks for, so the request path need not look it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    User,
    Robot,
    /// An app token, named by `tid`.
    Token,
    Anonymous,
}

/// JWT claims: the registered ones of jwt.md plus our own (`kind`, `tid`, `use`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The user or robot name; "" for anonymous.
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<ResourceActions>,
    pub kind: Kind,
    /// The app token's id, so revoking it can be checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<String>,
    /// "refresh" on refresh tokens.
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

impl Claims {
    /// Whether the token grants `action` on the resource; a `*` action covers all.
    pub fn allows(&self, resource_type: &str, name: &str, action: &str) -> bool {
        self.access.iter().any(|r| {
            r.resource_type == resource_type
                && r.name == name
                && r.actions.iter().any(|a| a == action || a == "*")
        })
    }
}

/// Says what is wrong with a presented token, never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT of this registry")]
    Malformed,
    #[error("the token is not signed with HS256, the only algorithm accepted")]
    Algorithm,
    #[error("the token's signature does not match (issued with another key?)")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (are the clocks in step?)")]
    NotYetValid,
    #[error("the token was issued for another service")]
    Audience,
    #[error("the token was issued by another issuer")]
    Issuer,
    #[error("a refresh token cannot be used as an access token")]
    RefreshAsAccess,
    #[error("an access token cannot be used as a refresh token")]
    AccessAsRefresh,
}

/// The HMAC key and the names tokens carry (`iss`, `aud`).
pub struct TokenKeys {
    encoding: jsonwebtoken::EncodingKey,
    decoding: jsonwebtoken::DecodingKey,
    issuer: String,
    service: String,
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKeys")
            .field("issuer", &self.issuer)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    fn from_key(key: &[u8; 32], issuer: &str, service: &str) -> TokenKeys {
        TokenKeys {
            encoding: jsonwebtoken::EncodingKey::from_secret(key),
            decoding: jsonwebtoken::DecodingKey::from_secret(key),
            issuer: issuer.to_string(),
            service: service.to_string(),
        }
    }

    /// Reads the 32-byte key at `path`, or makes one there (owner-only, written whole or
    /// not at all), so tokens survive restarts and upgrades.
    pub fn load_or_create(path: &Path, issuer: &str, service: &str) -> Result<TokenKeys, String> {
        let shown = path.display();
        let key = match std::fs::read(path) {
            Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                format!(
                    "{shown}: a token key is 32 bytes, this file has {}; remove it to have a \
                     new one made (clients then log in again)",
                    bytes.len()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key(path)?,
            Err(e) => {
                return Err(format!(
                    "{shown}: cannot read the token key ({e}); check its owner and mode (0600)"
                ))
            }
        };
        Ok(TokenKeys::from_key(&key, issuer, service))
    }

    /// A short-lived token for the request path.
    pub fn issue_access(
        &self,
        subject: &str,
        kind: Kind,
        tid: Option<&str>,
        access: Vec<ResourceActions>,
        ttl: Duration,
        now: u64,
    ) -> String {
        self.issue(subject, kind, tid, access, None, ttl, now)
    }

    /// A long-lived token that only the token endpoint takes, to get access tokens.
    pub fn issue_refresh(
        &self,
        subject: &str,
        kind: Kind,
        tid: Option<&str>,
        ttl: Duration,
        now: u64,
    ) -> String {
        let use_ = Some(REFRESH.to_string());
        self.issue(subject, kind, tid, Vec::new(), use_, ttl, now)
    }

    #[allow(clippy::too_many_arguments)]
    fn issue(
        &self,
        subject: &str,
        kind: Kind,
        tid: Option<&str>,
        access: Vec<ResourceActions>,
        use_: Option<String>,
        ttl: Duration,
        now: u64,
    ) -> String {
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.to_string(),
            aud: self.service.clone(),
            exp: now.saturating_add(ttl.as_secs()),
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            access,
            kind,
            tid: tid.map(str::to_string),
            use_,
        };
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .expect("claims always serialize and HMAC signing cannot fail")
    }

    pub fn verify_access(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let claims = self.verify(token, now)?;
        match claims.use_ {
            None => Ok(claims),
            Some(_) => Err(TokenError::RefreshAsAccess),
        }
    }

    pub fn verify_refresh(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let claims = self.verify(token, now)?;
        match claims.use_.as_deref() {
            Some(REFRESH) => Ok(claims),
            _ => Err(TokenError::AccessAsRefresh),
        }
    }

    /// jsonwebtoken checks the algorithm and the signature; the claims are checked here
    /// against `now` rather than its own clock.
    fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::Signature,
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => TokenError::Algorithm,
                // `none` and unknown names fail to parse as a header.
                _ if header_alg(token).is_some_and(|alg| alg != "HS256") => TokenError::Algorithm,
                _ => TokenError::Malformed,
            })?
            .claims;
        if claims.iss != self.issuer {
            return Err(TokenError::Issuer);
        }
        if claims.aud != self.service {
            return Err(TokenError::Audience);
        }
        if now >= claims.exp.saturating_add(LEEWAY_SECS) {
            return Err(TokenError::Expired);
        }
        if now.saturating_add(LEEWAY_SECS) < claims.nbf {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

/// The `alg` of a JWT's header, read without trusting anything else in it.
fn header_alg(token: &str) -> Option<String> {
    use base64::Engine as _;
    let header = token.split('.').next()?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&json).ok()?;
    Some(value.get("alg")?.as_str()?.to_string())
}

/// Writes 32 random bytes to a temp file (0600), fsyncs and renames it into place, so a
/// crash never leaves a short key behind.
fn create_key(path: &Path) -> Result<[u8; 32], String> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: &dyn fmt::Display| {
        format!(
            "{}: cannot create the token key ({e}); check that its directory exists and is \
             writable",
            path.display()
        )
    };
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| fail(&e))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    // A crash may have left one; its mode is not to be trusted.
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| fail(&e))?;
    file.write_all(&key)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| fail(&e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| fail(&e))?;
    }
    Ok(key)
}

/// The `WWW-Authenticate` value that sends a client to the token endpoint. Several scopes
/// go space-separated into one `scope`, as distribution does.
pub fn bearer_challenge(
    realm: &str,
    service: &str,
    scopes: &[Scope],
    error: Option<&str>,
) -> String {
    let mut out = format!("Bearer realm={},service={}", quote(realm), quote(service));
    if !scopes.is_empty() {
        let list: Vec<String> = scopes.iter().map(Scope::to_string).collect();
        out.push_str(&format!(",scope={}", quote(&list.join(" "))));
    }
    if let Some(error) = error {
        out.push_str(&format!(",error={}", quote(error)));
    }
    out
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// How a token request proves who is asking.
#[derive(Clone, PartialEq, Eq)]
pub enum Grant {
    Password { username: String, password: String },
    RefreshToken(String),
    None,
}

/// Requests get logged; secrets must not be.
impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Password { username, .. } => f
                .debug_struct("Password")
                .field("username", username)
                .finish_non_exhaustive(),
            Grant::RefreshToken(_) => f.write_str("RefreshToken(..)"),
            Grant::None => f.write_str("None"),
        }
    }
}

/// A request to the token endpoint, GET (token.md) or POST (oauth.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub service: Option<String>,
    pub scopes: Vec<Scope>,
    pub client_id: Option<String>,
    /// A refresh token is wanted too (`offline_token=true`, `access_type=offline`).
    pub offline: bool,
    pub grant: Grant,
}

/// A bad token request, as the OAuth2 error it is (RFC 6749 section 5.2); the
/// `Display` is its description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("grant_type {0:?} is not supported: use password or refresh_token")]
    UnsupportedGrantType(String),
    #[error(transparent)]
    InvalidScope(#[from] ScopeError),
}

impl RequestError {
    /// The OAuth2 `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::InvalidRequest(_) => "invalid_request",
            RequestError::UnsupportedGrantType(_) => "unsupported_grant_type",
            RequestError::InvalidScope(_) => "invalid_scope",
        }
    }
}

/// Decoded form pairs; the first of a repeated single-valued field counts.
struct Form(Vec<(String, String)>);

impl Form {
    fn parse(bytes: &[u8]) -> Form {
        Form(form_urlencoded::parse(bytes).into_owned().collect())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn scopes(&self) -> Result<Vec<Scope>, ScopeError> {
        parse_scopes(
            self.0
                .iter()
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.as_str()),
        )
    }
}

impl TokenRequest {
    /// `GET /token?service=..&scope=..&scope=..&offline_token=true`, credentials in a
    /// Basic `Authorization` header. `account` only repeats the user name and is ignored.
    pub fn from_get(
        query: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<TokenRequest, RequestError> {
        let form = Form::parse(query.unwrap_or("").as_bytes());
        let grant = match authorization {
            None => Grant::None,
            Some(header) => match super::parse_basic(header) {
                // containers/image sends `Basic Og==` (":") when it has no login.
                Some((user, password)) if user.is_empty() && password.is_empty() => Grant::None,
                Some((username, password)) => Grant::Password { username, password },
                None => {
                    return Err(RequestError::InvalidRequest(
                        "the Authorization header must hold Basic credentials".to_string(),
                    ))
                }
            },
        };
        Ok(TokenRequest {
            service: form.get("service").map(str::to_string),
            scopes: form.scopes()?,
            client_id: form.get("client_id").map(str::to_string),
            offline: form
                .get("offline_token")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            grant,
        })
    }

    /// `POST /token`, `application/x-www-form-urlencoded` (oauth.md).
    pub fn from_post_form(body: &[u8]) -> Result<TokenRequest, RequestError> {
        let form = Form::parse(body);
        let missing = |what: &str| RequestError::InvalidRequest(what.to_string());
        let grant = match form.get("grant_type") {
            Some("password") => match (form.get("username"), form.get("password")) {
                (Some(user), Some(password)) if !user.is_empty() => Grant::Password {
                    username: user.to_string(),
                    password: password.to_string(),
                },
                _ => return Err(missing("grant_type=password needs username and password")),
            },
            Some("refresh_token") => match form.get("refresh_token") {
                Some(token) if !token.is_empty() => Grant::RefreshToken(token.to_string()),
                _ => return Err(missing("grant_type=refresh_token needs refresh_token")),
            },
            Some(other) => return Err(RequestError::UnsupportedGrantType(other.to_string())),
            None => {
                return Err(missing(
                    "grant_type is required (password or refresh_token)",
                ))
            }
        };
        Ok(TokenRequest {
            service: form.get("service").map(str::to_string),
            scopes: form.scopes()?,
            client_id: form.get("client_id").map(str::to_string),
            offline: form.get("access_type") == Some("offline"),
            grant,
        })
    }
}

/// The token endpoint's JSON answer. `token` (token.md) and `access_token` (oauth.md)
/// carry the same JWT, so clients of either spec find it. No `Debug`: it holds secrets.
#[derive(Clone, Serialize)]
pub struct TokenResponse {
    pub token: String,
    pub access_token: String,
    pub expires_in: u64,
    /// RFC 3339, UTC.
    pub issued_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

impl TokenResponse {
    pub fn new(
        token: String,
        ttl: Duration,
        issued_at: u64,
        refresh_token: Option<String>,
    ) -> TokenResponse {
        let at = std::time::UNIX_EPOCH + Duration::from_secs(issued_at);
        TokenResponse {
            access_token: token.clone(),
            token,
            expires_in: ttl.as_secs(),
            issued_at: humantime::format_rfc3339_seconds(at).to_string(),
            refresh_token,
        }
    }
}

/// What goes into a token: per requested resource, the asked actions that `allowed`
/// returns for it (literal matches, so `*` is granted only if `allowed` returns `*`).
/// Scopes naming one resource are merged first, so `allowed` runs once per resource;
/// resources with nothing granted are left out (asking for more is not an error).
pub fn grant(requested: &[Scope], allowed: impl Fn(&Scope) -> Vec<String>) -> Vec<ResourceActions> {
    let mut merged: Vec<Scope> = Vec::new();
    for scope in requested {
        let same = merged
            .iter_mut()
            .find(|m| m.resource_type == scope.resource_type && m.name == scope.name);
        match same {
            Some(m) => {
                for a in &scope.actions {
                    if !m.actions.contains(a) {
                        m.actions.push(a.clone());
                    }
                }
            }
            None => merged.push(scope.clone()),
        }
    }
    merged
        .into_iter()
        .filter_map(|scope| {
            let allowed = allowed(&scope);
            let actions: Vec<String> = scope
                .actions
                .into_iter()
                .filter(|a| allowed.contains(a))
                .collect();
            (!actions.is_empty()).then_some(ResourceActions {
                resource_type: scope.resource_type,
                name: scope.name,
                actions,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    const NOW: u64 = 1_700_000_000;
    const TTL: Duration = Duration::from_secs(300);

    fn scope(s: &str) -> Scope {
        Scope::parse(s).unwrap()
    }

    fn keys() -> TokenKeys {
        TokenKeys::from_key(&[7; 32], "portcullis", "registry.lan")
    }

    fn pull(name: &str) -> Vec<ResourceActions> {
        vec![ResourceActions {
            resource_type: "repository".into(),
            name: name.into(),
            actions: vec!["pull".into()],
        }]
    }

    fn basic(user: &str, password: &str) -> String {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}")
    }

    #[test]
    fn scopes_parse_and_print_back() {
        let s = scope("repository:team/app:pull,push");
        assert_eq!(s.resource_type, "repository");
        assert_eq!(s.name, "team/app");
        assert_eq!(s.actions, ["pull", "push"]);
        assert_eq!(s.to_string(), "repository:team/app:pull,push");
        // A host:port in the name: split at the first and the last colon.
        let s = scope("repository:registry.lan:5000/team/app:pull");
        assert_eq!(s.name, "registry.lan:5000/team/app");
        assert_eq!(s.to_string(), "repository:registry.lan:5000/team/app:pull");
        assert_eq!(scope("registry:catalog:*").actions, ["*"]);
        // The deprecated class is dropped; duplicate and empty actions go.
        assert_eq!(
            scope("repository(plugin):vieux/sshfs:pull,pull,").to_string(),
            "repository:vieux/sshfs:pull"
        );
        // Unknown types are kept; granting gives them nothing.
        assert_eq!(scope("widget:x:spin").resource_type, "widget");
        assert!(scope("repository:a:").actions.is_empty());
    }

    #[test]
    fn malformed_scopes_say_what_a_scope_looks_like() {
        for bad in [
            "",
            "repository",
            "repository:team/app",
            ":team/app:pull",
            "repository::pull",
            "Repository:a:pull",
            "repository(:a:pull",
            "repository(plugin:a:pull",
            "repository():a:pull",
            "repository:a:PULL",
            "repository:a:pull;push",
            "repository:a\tb:pull",
        ] {
            let e = Scope::parse(bad).unwrap_err();
            assert!(e.to_string().contains("type:name:action"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn several_values_and_space_separated_scopes() {
        let scopes = parse_scopes([
            "repository:a:pull repository:b:push",
            " registry:catalog:* ",
            "",
        ])
        .unwrap();
        let printed: Vec<String> = scopes.iter().map(Scope::to_string).collect();
        assert_eq!(
            printed,
            [
                "repository:a:pull",
                "repository:b:push",
                "registry:catalog:*"
            ]
        );
        assert!(parse_scopes(["repository:a:pull nonsense"]).is_err());
    }

    #[test]
    fn access_tokens_round_trip() {
        let keys = keys();
        let token = keys.issue_access("alice", Kind::User, None, pull("team/app"), TTL, NOW);
        let claims = keys.verify_access(&token, NOW + 10).unwrap();
        assert_eq!(claims.iss, "portcullis");
        assert_eq!(claims.aud, "registry.lan");
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.kind, Kind::User);
        assert_eq!((claims.iat, claims.nbf, claims.exp), (NOW, NOW, NOW + 300));
        assert_eq!(claims.tid, None);
        assert!(claims.allows("repository", "team/app", "pull"));
        assert!(!claims.allows("repository", "team/app", "push"));
        assert!(!claims.allows("repository", "team/other", "pull"));
        let again = keys.issue_access("alice", Kind::User, None, pull("team/app"), TTL, NOW);
        let other = keys.verify_access(&again, NOW).unwrap();
        assert_ne!(claims.jti, other.jti, "every token has its own id");
    }

    #[test]
    fn claims_use_the_spec_names() {
        let keys = keys();
        let token = keys.issue_access("ci", Kind::Token, Some("t1"), pull("a"), TTL, NOW);
        let payload = token.split('.').nth(1).unwrap();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["access"][0]["type"], "repository");
        assert_eq!(value["access"][0]["actions"][0], "pull");
        assert_eq!(value["kind"], "token");
        assert_eq!(value["tid"], "t1");
        assert!(value.get("use").is_none());
        let refresh = keys.issue_refresh("ci", Kind::Token, Some("t1"), TTL, NOW);
        let claims = keys.verify_refresh(&refresh, NOW).unwrap();
        assert_eq!(claims.use_.as_deref(), Some("refresh"));
        assert_eq!(claims.tid.as_deref(), Some("t1"));
        assert!(claims.access.is_empty());
    }

    #[test]
    fn anonymous_tokens_have_an_empty_subject() {
        let keys = keys();
        let token = keys.issue_access("", Kind::Anonymous, None, pull("pub/app"), TTL, NOW);
        let claims = keys.verify_access(&token, NOW).unwrap();
        assert_eq!((claims.sub.as_str(), claims.kind), ("", Kind::Anonymous));
    }

    #[test]
    fn access_and_refresh_tokens_do_not_stand_in_for_each_other() {
        let keys = keys();
        let access = keys.issue_access("alice", Kind::User, None, Vec::new(), TTL, NOW);
        let refresh = keys.issue_refresh("alice", Kind::User, None, TTL, NOW);
        assert_eq!(
            keys.verify_refresh(&access, NOW),
            Err(TokenError::AccessAsRefresh)
        );
        assert_eq!(
            keys.verify_access(&refresh, NOW),
            Err(TokenError::RefreshAsAccess)
        );
    }

    #[test]
    fn expiry_and_not_before_allow_a_little_clock_skew() {
        let keys = keys();
        let token = keys.issue_access("alice", Kind::User, None, Vec::new(), TTL, NOW);
        assert!(keys.verify_access(&token, NOW + 300 + 29).is_ok());
        assert_eq!(
            keys.verify_access(&token, NOW + 300 + 30),
            Err(TokenError::Expired)
        );
        assert!(keys.verify_access(&token, NOW - 30).is_ok());
        assert_eq!(
            keys.verify_access(&token, NOW - 31),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn tokens_of_other_keys_services_and_issuers_are_refused() {
        let token = keys().issue_access("alice", Kind::User, None, Vec::new(), TTL, NOW);
        let other_key = TokenKeys::from_key(&[8; 32], "portcullis", "registry.lan");
        assert_eq!(
            other_key.verify_access(&token, NOW),
            Err(TokenError::Signature)
        );
        let other_service = TokenKeys::from_key(&[7; 32], "portcullis", "elsewhere");
        assert_eq!(
            other_service.verify_access(&token, NOW),
            Err(TokenError::Audience)
        );
        let other_issuer = TokenKeys::from_key(&[7; 32], "someone", "registry.lan");
        assert_eq!(
            other_issuer.verify_access(&token, NOW),
            Err(TokenError::Issuer)
        );
        // A changed payload under the old signature.
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&parts[1])
            .unwrap();
        let forged = String::from_utf8(json).unwrap().replace("alice", "admin");
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged);
        assert_eq!(
            keys().verify_access(&parts.join("."), NOW),
            Err(TokenError::Signature)
        );
        for junk in ["", "abc", "a.b.c", "....", "Basic dTpw"] {
            assert_eq!(
                keys().verify_access(junk, NOW),
                Err(TokenError::Malformed),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn only_hs256_is_accepted() {
        let keys = keys();
        let token = keys.issue_access("alice", Kind::User, None, pull("a"), TTL, NOW);
        let payload = token.split('.').nth(1).unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        // `none` with no signature, and with the HS256 signature kept.
        let signature = token.rsplit('.').next().unwrap();
        for (alg, sig) in [("none", ""), ("none", signature), ("HS512", signature)] {
            let header = b64(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            let forged = format!("{header}.{payload}.{sig}");
            assert_eq!(
                keys.verify_access(&forged, NOW),
                Err(TokenError::Algorithm),
                "{alg}"
            );
        }
        // The same key as HS512: still refused.
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512);
        let claims = keys.verify_access(&token, NOW).unwrap();
        let key = jsonwebtoken::EncodingKey::from_secret(&[7; 32]);
        let hs512 = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        assert_eq!(keys.verify_access(&hs512, NOW), Err(TokenError::Algorithm));
    }

    #[test]
    fn errors_and_debug_never_show_secrets() {
        let keys = keys();
        let debug = format!("{keys:?}");
        assert!(
            debug.contains("registry.lan") && !debug.contains("7, 7"),
            "{debug}"
        );
        let token = keys.issue_access("alice", Kind::User, None, Vec::new(), TTL, NOW);
        let e = keys.verify_access(&token, NOW + 3600).unwrap_err();
        assert!(!e.to_string().contains(&token[..20]));
        let grant = Grant::Password {
            username: "alice".into(),
            password: "hunter2".into(),
        };
        let debug = format!("{grant:?} {:?}", Grant::RefreshToken("eyJsecret".into()));
        assert!(
            !debug.contains("hunter2") && !debug.contains("eyJsecret"),
            "{debug}"
        );
        assert!(debug.contains("alice"));
    }

    #[test]
    fn key_file_is_made_once_owner_only_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        let first = TokenKeys::load_or_create(&path, "portcullis", "registry.lan").unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 32);
        assert_ne!(bytes, [0; 32]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join("token.key.tmp").exists());
        let token = first.issue_access("alice", Kind::User, None, Vec::new(), TTL, NOW);
        let second = TokenKeys::load_or_create(&path, "portcullis", "registry.lan").unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "an existing key is kept"
        );
        assert!(second.verify_access(&token, NOW).is_ok());
        let elsewhere = tempfile::tempdir().unwrap();
        let fresh = elsewhere.path().join("token.key");
        let third = TokenKeys::load_or_create(&fresh, "portcullis", "registry.lan").unwrap();
        assert_eq!(third.verify_access(&token, NOW), Err(TokenError::Signature));
    }

    #[test]
    fn key_file_errors_name_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.key");
        std::fs::write(&short, b"too short").unwrap();
        let e = TokenKeys::load_or_create(&short, "i", "s").unwrap_err();
        assert!(e.contains("short.key") && e.contains("32 bytes") && e.contains("remove it"));
        let nowhere = dir.path().join("missing/dir/token.key");
        let e = TokenKeys::load_or_create(&nowhere, "i", "s").unwrap_err();
        assert!(e.contains("missing/dir/token.key") && e.contains("directory exists"));
    }

    #[test]
    fn challenges_list_scopes_in_one_value_and_escape_quotes() {
        assert_eq!(
            bearer_challenge("https://r.lan/token", "r.lan", &[], None),
            r#"Bearer realm="https://r.lan/token",service="r.lan""#
        );
        let scopes = [
            scope("repository:a/b:pull,push"),
            scope("repository:c:pull"),
        ];
        assert_eq!(
            bearer_challenge(
                "https://r.lan/token",
                "r.lan",
                &scopes,
                Some("insufficient_scope")
            ),
            r#"Bearer realm="https://r.lan/token",service="r.lan",scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope""#
        );
        assert_eq!(
            bearer_challenge(r#"a"b\c"#, "s", &[], None),
            r#"Bearer realm="a\"b\\c",service="s""#
        );
    }

    #[test]
    fn get_requests_take_repeated_scopes_and_basic_credentials() {
        let query = "service=registry.lan&scope=repository%3Aa%3Apull&scope=repository:b:pull,push\
                     &account=alice&client_id=docker&offline_token=true";
        let request = TokenRequest::from_get(Some(query), Some(&basic("alice", "pw:1"))).unwrap();
        assert_eq!(request.service.as_deref(), Some("registry.lan"));
        assert_eq!(request.client_id.as_deref(), Some("docker"));
        assert!(request.offline);
        let printed: Vec<String> = request.scopes.iter().map(Scope::to_string).collect();
        assert_eq!(printed, ["repository:a:pull", "repository:b:pull,push"]);
        assert_eq!(
            request.grant,
            Grant::Password {
                username: "alice".into(),
                password: "pw:1".into()
            }
        );
        let anonymous = TokenRequest::from_get(None, None).unwrap();
        assert_eq!(anonymous.grant, Grant::None);
        assert!(anonymous.scopes.is_empty() && !anonymous.offline);
        let colon = TokenRequest::from_get(Some("service=s"), Some("Basic Og==")).unwrap();
        assert_eq!(colon.grant, Grant::None);
        let e = TokenRequest::from_get(None, Some("Bearer abc")).unwrap_err();
        assert_eq!(e.code(), "invalid_request");
        let e = TokenRequest::from_get(Some("scope=repository"), None).unwrap_err();
        assert_eq!(e.code(), "invalid_scope");
        assert!(e.to_string().contains("type:name:action"));
    }

    #[test]
    fn post_forms_follow_oauth2() {
        let body = b"grant_type=password&username=alice&password=p%26w&service=registry.lan\
                     &client_id=docker&access_type=offline\
                     &scope=repository%3Aa%3Apull+repository%3Ab%3Apush";
        let request = TokenRequest::from_post_form(body).unwrap();
        assert_eq!(
            request.grant,
            Grant::Password {
                username: "alice".into(),
                password: "p&w".into()
            }
        );
        assert!(request.offline);
        assert_eq!(request.service.as_deref(), Some("registry.lan"));
        assert_eq!(request.client_id.as_deref(), Some("docker"));
        assert_eq!(request.scopes.len(), 2);
        let refresh =
            TokenRequest::from_post_form(b"grant_type=refresh_token&refresh_token=eyJ.x.y")
                .unwrap();
        assert_eq!(refresh.grant, Grant::RefreshToken("eyJ.x.y".into()));
        assert!(!refresh.offline && refresh.scopes.is_empty());
        for (body, code) in [
            (&b"username=alice&password=x"[..], "invalid_request"),
            (b"grant_type=password&username=alice", "invalid_request"),
            (
                b"grant_type=password&username=&password=x",
                "invalid_request",
            ),
            (b"grant_type=refresh_token", "invalid_request"),
            (
                b"grant_type=authorization_code&code=x",
                "unsupported_grant_type",
            ),
            (
                b"grant_type=refresh_token&refresh_token=t&scope=bad",
                "invalid_scope",
            ),
        ] {
            let e = TokenRequest::from_post_form(body).unwrap_err();
            assert_eq!(e.code(), code, "{}", String::from_utf8_lossy(body));
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn responses_carry_the_token_twice_and_rfc3339_time() {
        let response = TokenResponse::new("jwt".into(), TTL, NOW, None);
        let value = serde_json::to_value(&response).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "token": "jwt",
                "access_token": "jwt",
                "expires_in": 300,
                "issued_at": "2023-11-14T22:13:20Z",
            })
        );
        let with_refresh = TokenResponse::new("jwt".into(), TTL, NOW, Some("r".into()));
        assert_eq!(
            serde_json::to_value(&with_refresh).unwrap()["refresh_token"],
            "r"
        );
    }

    #[test]
    fn granting_intersects_merges_and_drops_empty_scopes() {
        let requested = parse_scopes([
            "repository:team/app:pull,push repository:team/app:delete",
            "repository:secret/x:pull",
            "registry:catalog:*",
            "widget:x:spin",
            "repository:team/app:pull",
        ])
        .unwrap();
        let calls = std::cell::Cell::new(0);
        let granted = grant(&requested, |s| {
            calls.set(calls.get() + 1);
            match (s.resource_type.as_str(), s.name.as_str()) {
                ("repository", "team/app") => vec!["pull".into(), "delete".into()],
                ("registry", "catalog") => vec!["*".into()],
                _ => Vec::new(),
            }
        });
        assert_eq!(calls.get(), 4, "once per resource");
        assert_eq!(
            granted,
            [
                ResourceActions {
                    resource_type: "repository".into(),
                    name: "team/app".into(),
                    actions: vec!["pull".into(), "delete".into()],
                },
                ResourceActions {
                    resource_type: "registry".into(),
                    name: "catalog".into(),
                    actions: vec!["*".into()],
                },
            ]
        );
        // A `*` from `allowed` is no wildcard for what was asked.
        let literal = grant(&[scope("repository:a:pull")], |_| vec!["*".into()]);
        assert!(literal.is_empty());
    }

    #[test]
    fn a_star_in_a_grant_covers_every_action() {
        let keys = keys();
        let access = vec![ResourceActions {
            resource_type: "registry".into(),
            name: "catalog".into(),
            actions: vec!["*".into()],
        }];
        let token = keys.issue_access("admin", Kind::User, None, access, TTL, NOW);
        let claims = keys.verify_access(&token, NOW).unwrap();
        assert!(claims.allows("registry", "catalog", "*"));
        assert!(claims.allows("registry", "catalog", "list"));
        assert!(!claims.allows("repository", "catalog", "pull"));
    }
}
