//! `/token`: the endpoint of Docker token authentication (`auth.token = true`).
//!
//! A client that meets `WWW-Authenticate: Bearer realm=...,scope=...` asks here, with
//! its login (GET with Basic, or the OAuth2 POST form), a refresh token, or nothing
//! (anonymous), for the scopes it needs. It gets a short-lived signed token naming what
//! it may do: the asked actions that the policy allows, for each repository by its
//! stored name. The request path checks that token as it is, with no lookup.

use super::response::read_limited;
use super::{Api, ApiError, Body, ErrorCode, Request, Response};
use crate::accounts::Actions;
use crate::auth::token::{
    bearer_challenge, grant, Claims, Grant as Credentials, Kind, RequestError, ResourceActions,
    Scope, TokenError, TokenKeys, TokenRequest, TokenResponse,
};
use crate::auth::{Grant, GrantKind, Principal};
use crate::config::TokenConfig;
use crate::oci::RepoName;
use crate::store::{unix_now, ByteSource};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How long a refresh token (`docker login`'s stored identity token) is good for.
const REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The OAuth2 form is a few hundred bytes; scopes for many repositories stay far below this.
const MAX_FORM_BYTES: usize = 64 * 1024;

pub struct TokenAuth {
    keys: TokenKeys,
    config: TokenConfig,
    /// Tokens already verified -> their grant and expiry (unix seconds): a client sends
    /// the same token with every request until it expires, and a lookup here costs what
    /// the Basic path's cached login costs, where decoding and checking it again would
    /// cost several times that.
    verified: moka::sync::Cache<String, (Arc<Grant>, u64)>,
}

/// Verified tokens kept at most; each client holds one or a few at a time.
const VERIFIED_CAPACITY: u64 = 10_000;

impl TokenAuth {
    /// The signing key is `DATA/token.key`, made on first start.
    pub fn open(data_dir: &Path, config: TokenConfig) -> Result<TokenAuth, String> {
        let keys = TokenKeys::load_or_create(
            &data_dir.join("token.key"),
            &config.service,
            &config.service,
        )?;
        let verified = moka::sync::Cache::builder()
            .max_capacity(VERIFIED_CAPACITY)
            .time_to_live(config.ttl + Duration::from_secs(60))
            .build();
        Ok(TokenAuth {
            keys,
            config,
            verified,
        })
    }

    /// Where clients get tokens: configured, or this server as the request reached it.
    fn realm(&self, req: &Request) -> String {
        if let Some(realm) = &self.config.realm {
            return realm.clone();
        }
        let host = req
            .header("host")
            .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or("localhost");
        let scheme = if req.secure { "https" } else { "http" };
        format!("{scheme}://{host}/token")
    }

    /// The `WWW-Authenticate` value that sends a client here for `scope`.
    pub fn challenge(&self, req: &Request, scope: Option<Scope>, error: Option<&str>) -> String {
        let scopes: Vec<Scope> = scope.into_iter().collect();
        bearer_challenge(&self.realm(req), &self.config.service, &scopes, error)
    }

    /// A bearer token from a request, verified.
    pub fn verify(&self, token: &str) -> Result<Arc<Grant>, TokenError> {
        let now = unix_now();
        if let Some((grant, exp)) = self.verified.get(token) {
            if now < exp {
                return Ok(grant);
            }
        }
        let claims = self.keys.verify_access(token, now)?;
        let exp = claims.exp;
        let grant = Arc::new(grant_of(claims));
        self.verified
            .insert(token.to_string(), (grant.clone(), exp));
        Ok(grant)
    }
}

/// The challenge scope for a repository and the action a request needs: pushing
/// clients ask for `pull,push` together, as distribution's challenges do.
pub fn scope_for(repo: &str, action: crate::auth::access::Action) -> Scope {
    use crate::auth::access::Action;
    let actions = match action {
        Action::Pull => vec!["pull"],
        Action::Push => vec!["pull", "push"],
        Action::Delete => vec!["delete"],
    };
    Scope {
        resource_type: "repository".to_string(),
        name: repo.to_string(),
        actions: actions.into_iter().map(String::from).collect(),
    }
}

fn grant_of(claims: Claims) -> Grant {
    let kind = match claims.kind {
        Kind::Anonymous => GrantKind::Anonymous,
        Kind::User => GrantKind::User,
        Kind::Robot => GrantKind::Robot,
        Kind::Token => GrantKind::Token(Arc::from(claims.tid.as_deref().unwrap_or(""))),
    };
    let repositories = claims
        .access
        .into_iter()
        .filter(|a| a.resource_type == "repository")
        .map(|a| {
            let has = |action: &str| a.actions.iter().any(|x| x == action || x == "*");
            let actions = Actions {
                pull: has("pull"),
                push: has("push"),
                delete: has("delete"),
            };
            (a.name, actions)
        })
        .collect();
    Grant {
        subject: Arc::from(claims.sub.as_str()),
        kind,
        repositories,
    }
}

/// The claims' view of a principal: (subject, kind, token id).
fn subject_of(principal: &Principal) -> (&str, Kind, Option<&str>) {
    match principal {
        Principal::Anonymous => ("", Kind::Anonymous, None),
        Principal::User(name) => (name, Kind::User, None),
        Principal::Robot(login) => (login, Kind::Robot, None),
        Principal::Token { user, id } => (user, Kind::Token, Some(id)),
        Principal::Bearer(grant) => match &grant.kind {
            GrantKind::Anonymous => ("", Kind::Anonymous, None),
            GrantKind::User => (&grant.subject, Kind::User, None),
            GrantKind::Robot => (&grant.subject, Kind::Robot, None),
            GrantKind::Token(id) => (&grant.subject, Kind::Token, Some(id)),
        },
    }
}

/// A refresh token's principal, as it was signed in.
fn principal_of(claims: &Claims) -> Principal {
    grant_of(claims.clone()).subject()
}

/// The errors of this endpoint: OAuth2's JSON for the POST form (what `docker login`
/// and containerd read), OCI errors for GET.
enum Refusal {
    Oci(ApiError),
    OAuth {
        status: u16,
        code: &'static str,
        description: String,
        headers: Vec<(&'static str, String)>,
    },
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Refusal {
        Refusal::Oci(e)
    }
}

impl Refusal {
    fn new(post: bool, status: u16, code: &'static str, description: String) -> Refusal {
        if post {
            return Refusal::OAuth {
                status,
                code,
                description,
                headers: Vec::new(),
            };
        }
        let oci = match status {
            401 => ErrorCode::Unauthorized,
            429 => ErrorCode::TooManyRequests,
            _ => ErrorCode::ParameterInvalid,
        };
        Refusal::Oci(ApiError::new(oci, description))
    }

    fn request(post: bool, e: RequestError) -> Refusal {
        Refusal::new(post, 400, e.code(), e.to_string())
    }

    fn with_header(self, name: &'static str, value: String) -> Refusal {
        match self {
            Refusal::Oci(e) => Refusal::Oci(e.with_header(name, value)),
            Refusal::OAuth {
                status,
                code,
                description,
                mut headers,
            } => {
                headers.push((name, value));
                Refusal::OAuth {
                    status,
                    code,
                    description,
                    headers,
                }
            }
        }
    }
}

pub async fn answer(
    api: &Api,
    req: &Request,
    client: Option<IpAddr>,
    body: &mut dyn ByteSource,
) -> Result<Response, ApiError> {
    match issue(api, req, client, body).await {
        Ok(response) => Ok(response),
        Err(Refusal::Oci(e)) => Err(e.with_header("Cache-Control", "no-store".to_string())),
        Err(Refusal::OAuth {
            status,
            code,
            description,
            headers,
        }) => {
            let body = serde_json::json!({"error": code, "error_description": description});
            let mut response = Response::new(status)
                .header("Cache-Control", "no-store")
                .json(&body, "application/json", false);
            for (name, value) in headers {
                response = response.header(name, value);
            }
            Ok(response)
        }
    }
}

async fn issue(
    api: &Api,
    req: &Request,
    client: Option<IpAddr>,
    body: &mut dyn ByteSource,
) -> Result<Response, Refusal> {
    let Some(tokens) = &api.tokens else {
        return Err(ApiError::new(
            ErrorCode::Unsupported,
            "token authentication is off here; set auth.token = true to turn it on",
        )
        .into());
    };
    let post = req.method == http::Method::POST;
    let request = match req.method.as_str() {
        "GET" => TokenRequest::from_get(req.query.as_deref(), req.header("authorization"))
            .map_err(|e| Refusal::request(false, e))?,
        "POST" => {
            let form = read_limited(req, body, MAX_FORM_BYTES, "token requests").await?;
            TokenRequest::from_post_form(&form).map_err(|e| Refusal::request(true, e))?
        }
        other => {
            return Err(ApiError::new(
                ErrorCode::Unsupported,
                format!("{other} is not supported on /token; use GET or POST"),
            )
            .into())
        }
    };
    if let Some(service) = request.service.as_deref() {
        if service != tokens.config.service {
            return Err(Refusal::new(
                post,
                400,
                "invalid_request",
                format!(
                    "service {service:?} is not this registry's ({:?})",
                    tokens.config.service
                ),
            ));
        }
    }
    let now = unix_now();
    let (principal, refresh) = match request.grant {
        Credentials::None => (Principal::Anonymous, None),
        Credentials::Password { username, password } => {
            let outcome = api.auth.login(&username, password, client).await;
            super::count_login(&outcome);
            let principal = outcome.map_err(|e| {
                let status = match e {
                    crate::auth::AuthError::TooManyAttempts => 429,
                    crate::auth::AuthError::InvalidCredentials => 401,
                };
                let error = Refusal::new(post, status, "invalid_grant", e.to_string());
                match status {
                    429 => {
                        error.with_header("Retry-After", api.auth.retry_after_secs().to_string())
                    }
                    _ if post => error,
                    _ => error.with_header(
                        "WWW-Authenticate",
                        format!("Basic realm=\"{}\"", api.auth.realm()),
                    ),
                }
            })?;
            (principal, None)
        }
        Credentials::RefreshToken(token) => {
            let claims = tokens.keys.verify_refresh(&token, now).map_err(|e| {
                Refusal::new(
                    post,
                    401,
                    "invalid_grant",
                    format!("refresh token refused: {e}"),
                )
            })?;
            let principal = principal_of(&claims);
            if !api.auth.still_valid(&principal) {
                return Err(Refusal::new(
                    post,
                    401,
                    "invalid_grant",
                    "the account this refresh token was issued to is gone or revoked; log in again"
                        .to_string(),
                ));
            }
            (principal, Some(token))
        }
    };
    if let Some(name) = principal.shared_name() {
        crate::metrics::note(|n| n.user = Some(name.clone()));
    }
    let access = granted(api, &principal, &request.scopes);
    let (subject, kind, tid) = subject_of(&principal);
    let token = tokens
        .keys
        .issue_access(subject, kind, tid, access, tokens.config.ttl, now);
    // Anonymous callers have nothing to refresh; a refresh grant keeps its token.
    let refresh_token = match (request.offline, &principal) {
        (_, Principal::Anonymous) | (false, _) => None,
        (true, _) => Some(refresh.unwrap_or_else(|| {
            tokens
                .keys
                .issue_refresh(subject, kind, tid, REFRESH_TTL, now)
        })),
    };
    let answer = TokenResponse::new(token, tokens.config.ttl, now, refresh_token);
    let bytes = serde_json::to_vec(&answer).unwrap_or_default();
    Ok(Response::new(200)
        .header("Content-Type", "application/json")
        .header("Cache-Control", "no-store")
        .body(Body::Bytes(bytes.into())))
}

/// What the policy allows of what was asked, each repository named as it is stored
/// (mirrored ones by their cache name), so the request path compares like with like.
fn granted(api: &Api, principal: &Principal, scopes: &[Scope]) -> Vec<ResourceActions> {
    let stored = |name: &str| {
        RepoName::parse(name)
            .ok()
            .map(|repo| api.mirror.target(&repo, None))
    };
    let mut access = grant(scopes, |scope| match scope.resource_type.as_str() {
        "repository" => {
            let Some(target) = stored(&scope.name) else {
                return Vec::new();
            };
            let mut actions = api.policy.actions(principal, target.stored_as().as_str());
            if target.upstream_name().is_some() || api.read_only {
                actions.push = false;
                actions.delete = false;
            }
            actions.names().into_iter().map(String::from).collect()
        }
        // The catalog answers with what the caller may pull, so asking is harmless.
        "registry" if scope.name == "catalog" => vec!["*".to_string()],
        _ => Vec::new(),
    });
    for entry in access
        .iter_mut()
        .filter(|a| a.resource_type == "repository")
    {
        if let Some(target) = stored(&entry.name) {
            entry.name = target.stored_as().as_str().to_string();
        }
    }
    access
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::access::Action;

    #[test]
    fn challenge_scopes_follow_the_action() {
        assert_eq!(
            scope_for("a/b", Action::Pull).to_string(),
            "repository:a/b:pull"
        );
        assert_eq!(
            scope_for("a/b", Action::Push).to_string(),
            "repository:a/b:pull,push"
        );
        assert_eq!(
            scope_for("a/b", Action::Delete).to_string(),
            "repository:a/b:delete"
        );
    }

    #[test]
    fn claims_become_grants_of_repositories_only() {
        let claims = Claims {
            iss: "s".into(),
            sub: "alice".into(),
            aud: "s".into(),
            exp: 10,
            nbf: 0,
            iat: 0,
            jti: "j".into(),
            access: vec![
                ResourceActions {
                    resource_type: "repository".into(),
                    name: "web/app".into(),
                    actions: vec!["pull".into(), "push".into()],
                },
                ResourceActions {
                    resource_type: "registry".into(),
                    name: "catalog".into(),
                    actions: vec!["*".into()],
                },
            ],
            kind: Kind::Token,
            tid: Some("t1".into()),
            use_: None,
        };
        let grant = grant_of(claims.clone());
        assert!(grant.allows("web/app", Action::Push));
        assert!(!grant.allows("web/app", Action::Delete));
        assert!(!grant.allows("web/other", Action::Pull));
        assert!(!grant.allows("catalog", Action::Pull));
        assert_eq!(
            principal_of(&claims),
            Principal::Token {
                user: Arc::from("alice"),
                id: Arc::from("t1")
            }
        );
        let bearer = Principal::Bearer(Arc::new(grant));
        assert_eq!(subject_of(&bearer).0, "alice");
        assert_eq!(bearer.name(), Some("alice"));
    }
}
