//! The OCI distribution API: the request phases and one handler module per resource.
//!
//! [`Api::handle`] runs the phases in order, each able to end the request with an OCI
//! error: authenticate (`auth`), route (`route.rs`, path -> typed [`Route`]), authorize
//! (access rules, read-only mode), take an upload slot, then dispatch to a handler.
//! Handlers return `Result<Response, ApiError>` and never log or touch files: storage
//! rules live in [`crate::store::Registry`]. After dispatch, the answer goes to the
//! notifier (`crate::notify`), which alone decides whether it is an event, and to the
//! activity log (`crate::activity`), which keeps the same classification.

mod admin;
mod blobs;
pub(crate) mod catalog;
pub mod errors;
mod manifests;
mod pagination;
pub mod range;
mod referrers;
pub mod response;
pub mod route;
mod tags;
pub mod token;
mod uploads;

pub use errors::{ApiError, ErrorCode};
pub use response::{Body, Request, Response};
pub use route::Route;

use crate::accounts::Accounts;
use crate::activity::{self, ActivityLog};
use crate::auth::access::Action;
use crate::auth::policy::Policy;
use crate::auth::{AuthError, Authenticator, Principal};
use crate::metrics;
use crate::mirror::{Mirror, Target};
use crate::notify::{Exchange, Notifier};
use crate::oci::RepoName;
use crate::store::{ByteSource, Registry};
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Everything a request needs beyond itself: storage, who may do what, limits.
pub struct Api {
    pub registry: Arc<Registry>,
    /// Serves reads: from the store, or through the pull-through cache for
    /// repositories that an upstream serves.
    pub mirror: Arc<Mirror>,
    pub auth: Arc<Authenticator>,
    /// Who may do what: the access rules, or the accounts.
    pub policy: Policy,
    /// Maintenance mode: pulls work, pushes and deletes are refused.
    pub read_only: bool,
    pub max_manifest_bytes: usize,
    /// One permit per request that writes blob data.
    pub upload_slots: Arc<Semaphore>,
    /// Garbage collection, for the admin endpoint.
    pub collector: Arc<crate::gc::Collector>,
    /// Webhook endpoints told of pushes, pulls and deletes (`[[notifications]]`).
    pub notifier: Arc<Notifier>,
    /// Users, teams, namespaces and tokens (`[accounts]`); `None`: htpasswd and rules.
    pub accounts: Option<Arc<Accounts>>,
    /// Docker token authentication (`auth.token`): the signing key and its settings.
    pub tokens: Option<Arc<token::TokenAuth>>,
    /// Who pushed, pulled, deleted or mounted what (`DATA/activity.redb`).
    pub activity: Arc<ActivityLog>,
    /// Who is signed in to the web UI (`/ui/`).
    pub sessions: crate::ui::Sessions,
}

/// Which application a path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// `/v2/...` and the maintenance endpoints: the distribution API.
    Registry,
    /// `/token`: Docker token authentication's endpoint.
    Token,
    /// `/api/...`: the REST API for accounts, repositories and activity.
    Rest,
    /// `/` and `/ui/...`: the web UI.
    Ui,
}

/// Pure: the first path segment decides.
pub fn front(path: &str) -> Front {
    match path {
        "/token" => Front::Token,
        "/" | "/ui" => Front::Ui,
        _ if path.starts_with("/ui/") => Front::Ui,
        _ if path.starts_with("/api/") || path == "/api" => Front::Rest,
        _ => Front::Registry,
    }
}

/// The authenticated caller, as handlers see it.
pub struct Caller<'a> {
    pub principal: Principal,
    policy: &'a Policy,
}

impl Caller<'_> {
    pub fn may(&self, repo: &RepoName, action: Action) -> bool {
        self.policy.allows(&self.principal, repo.as_str(), action)
    }

    /// Whether the catalog shows a repository to the caller.
    pub fn may_list(&self, repo: &RepoName) -> bool {
        self.policy.lists(&self.principal, repo.as_str())
    }

    /// The maintenance endpoints (`admin.users`).
    pub fn may_administer(&self) -> bool {
        self.policy.allows_admin(&self.principal)
    }

    /// Automatic mounts take a blob from any repository, so they need pull rights on all.
    pub fn may_pull_everything(&self) -> bool {
        self.policy.pulls_everything(&self.principal)
    }
}

/// One of `limits.max_concurrent_uploads`, counted in `portcullis_uploads_active`.
struct UploadSlot {
    _permit: OwnedSemaphorePermit,
}

impl UploadSlot {
    fn new(permit: OwnedSemaphorePermit) -> UploadSlot {
        metrics::get().uploads_active.inc();
        UploadSlot { _permit: permit }
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        metrics::get().uploads_active.dec();
    }
}

/// The repository and action a route needs permission for; `None` for `/v2/` and the catalog.
pub fn required_action<'r>(
    route: &'r Route,
    method: &http::Method,
) -> Option<(&'r RepoName, Action)> {
    let read = matches!(*method, http::Method::GET | http::Method::HEAD);
    let action = |delete_allowed: bool| match *method {
        _ if read => Action::Pull,
        http::Method::DELETE if delete_allowed => Action::Delete,
        _ => Action::Push,
    };
    match route {
        Route::Base | Route::Catalog | Route::AdminGc => None,
        Route::Tags(name) | Route::Referrers(name, _) => Some((name, Action::Pull)),
        Route::Manifest(name, _) | Route::Blob(name, _) => Some((name, action(true))),
        // Status checks and cancels are part of pushing.
        Route::UploadStart(name) | Route::Upload(name, _) => Some((name, Action::Push)),
    }
}

/// The token of an `Authorization: Bearer ...` header.
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn has_bearer(req: &Request) -> bool {
    req.header("authorization").and_then(bearer_token).is_some()
}

/// Counts a login's outcome (`portcullis_auth_attempts_total`) and notes the user
/// for the access log: for Basic headers and the token endpoint alike.
pub(crate) fn count_login(outcome: &Result<Principal, AuthError>) {
    let result = match outcome {
        Ok(principal) => principal.shared_name().map(|name| {
            metrics::note(|n| n.user = Some(name.clone()));
            "success"
        }),
        Err(AuthError::InvalidCredentials) => Some("failure"),
        Err(AuthError::TooManyAttempts) => Some("rate_limited"),
    };
    if let Some(result) = result {
        metrics::get()
            .auth_attempts
            .with_label_values(&[result])
            .inc();
    }
}

/// A malformed tag names a manifest that cannot exist: reading or deleting it is a 404
/// (as the conformance suite expects); only a PUT, which would create it, gets 400.
fn not_found_for_reads(err: ApiError, method: &http::Method) -> ApiError {
    if err.code == ErrorCode::TagInvalid && *method != http::Method::PUT {
        ApiError::new(ErrorCode::ManifestUnknown, err.detail)
    } else {
        err
    }
}

/// Mirrored repositories hold what their upstream has: pushes and deletes there
/// would be lost or fight the cache, so they are refused with the setting to change.
pub(crate) fn refuse_writes_to_mirrored(target: &Target, action: Action) -> Result<(), ApiError> {
    let repo = target.stored_as();
    match target.upstream_name() {
        Some(upstream) if action != Action::Pull => Err(ApiError::new(
            ErrorCode::Unsupported,
            format!(
                "{repo} is mirrored from upstream {upstream}, so it is read-only here; \
                 to push it to this registry, add a pattern matching it to mirror.local \
                 in the configuration (or push under another name)"
            ),
        )),
        _ => Ok(()),
    }
}

/// Whether a request writes blob data and so needs an upload slot.
fn writes_blob_data(route: &Route, method: &http::Method) -> bool {
    matches!(
        (route, method),
        (Route::UploadStart(_), &http::Method::POST)
            | (Route::Upload(..), &http::Method::PATCH)
            | (Route::Upload(..), &http::Method::PUT)
    )
}

impl Api {
    /// Answers one request. Every failure becomes an OCI error response here.
    pub async fn handle(
        &self,
        req: &Request,
        client: Option<IpAddr>,
        body: &mut dyn ByteSource,
    ) -> Response {
        let answer = match front(&req.path) {
            Front::Registry => self.serve(req, client, body).await,
            Front::Token => {
                metrics::note(|n| n.route = Some("token"));
                token::answer(self, req, client, body).await
            }
            Front::Rest => {
                metrics::note(|n| n.route = Some("rest"));
                crate::rest::answer(self, req, client, body).await
            }
            Front::Ui => {
                metrics::note(|n| n.route = Some("ui"));
                crate::ui::answer(self, req, client, body).await
            }
        };
        answer
            .unwrap_or_else(ApiError::into_response)
            .header("Docker-Distribution-API-Version", "registry/2.0")
    }

    async fn serve(
        &self,
        req: &Request,
        client: Option<IpAddr>,
        body: &mut dyn ByteSource,
    ) -> Result<Response, ApiError> {
        let route = route::parse(&req.path);
        if let Ok(route) = &route {
            metrics::note(|n| {
                n.route = Some(route.kind());
                if metrics::get().repository_requests().is_some() {
                    n.repository = route.repository().map(|r| r.as_str().to_string());
                }
            });
        }
        let principal = self.authenticate(req, client).await?;
        let route = route.map_err(|e| not_found_for_reads(e, &req.method))?;
        let pairs = route::query_pairs(req.query.as_deref());
        let ns = route::query_value(&pairs, "ns");
        let target = required_action(&route, &req.method)
            .map(|(repo, action)| (repo, self.mirror.target(repo, ns), action));
        self.authorize(req, &principal, target.as_ref())?;
        if let Some((_, target, action)) = &target {
            refuse_writes_to_mirrored(target, *action)?;
        }
        let target = target.map(|(_, target, _)| target);
        let _slot = self.upload_slot(&route, &req.method)?;
        let caller = Caller {
            principal,
            policy: &self.policy,
        };
        let response = self
            .dispatch(&caller, req, &route, target.as_ref(), body)
            .await;
        if let (Ok(answer), Some(target)) = (&response, &target) {
            let exchange = Exchange {
                route: &route,
                request: req,
                client,
                user: caller.principal.name(),
                repository: target.stored_as(),
                response: answer,
            };
            self.notifier.notify(&exchange);
            self.activity.record_exchange(&exchange, activity::now_ms());
        }
        // The OCI spec's answer to `?ns=`: which registry's content this is.
        match (ns, target.as_ref().and_then(Target::upstream_name)) {
            (Some(ns), Some(upstream)) if ns == upstream => {
                response.map(|r| r.header("OCI-Namespace", ns.to_string()))
            }
            _ => response,
        }
    }

    /// Who is calling; counts logins and notes the user for the access log. With
    /// token authentication, a bearer token is checked by its signature alone.
    pub(crate) async fn authenticate(
        &self,
        req: &Request,
        client: Option<IpAddr>,
    ) -> Result<Principal, ApiError> {
        let header = req.header("authorization");
        if let (Some(tokens), Some(token)) = (&self.tokens, header.and_then(bearer_token)) {
            let grant = tokens.verify(token).map_err(|e| {
                ApiError::new(
                    ErrorCode::Unauthorized,
                    format!("bearer token refused: {e}"),
                )
                .with_header(
                    "WWW-Authenticate",
                    tokens.challenge(req, None, Some("invalid_token")),
                )
            })?;
            let principal = Principal::Bearer(grant);
            if let Some(name) = principal.shared_name() {
                metrics::note(|n| n.user = Some(name.clone()));
            }
            return Ok(principal);
        }
        let outcome = self.auth.authenticate(header, client).await;
        count_login(&outcome);
        outcome.map_err(|e| self.auth_error(req, e))
    }

    /// A 401 that tells the client how to authenticate: where to get a token for
    /// `scope` with token authentication, else Basic.
    fn challenge(
        &self,
        req: &Request,
        scope: Option<crate::auth::token::Scope>,
        detail: &str,
    ) -> ApiError {
        let challenge = match &self.tokens {
            Some(tokens) => {
                let error = scope.as_ref().map(|_| "insufficient_scope");
                tokens.challenge(req, scope.clone(), error.filter(|_| has_bearer(req)))
            }
            None => format!("Basic realm=\"{}\"", self.auth.realm()),
        };
        ApiError::new(ErrorCode::Unauthorized, detail).with_header("WWW-Authenticate", challenge)
    }

    fn auth_error(&self, req: &Request, err: AuthError) -> ApiError {
        match err {
            AuthError::InvalidCredentials => {
                self.challenge(req, None, "invalid username or password")
            }
            AuthError::TooManyAttempts => {
                ApiError::new(ErrorCode::TooManyRequests, err.to_string())
                    .with_header("Retry-After", self.auth.retry_after_secs().to_string())
            }
        }
    }

    /// Access rules see a repository by the name it is stored under: for a mirrored
    /// one the cached name (`docker.io/library/nginx`), however the request spelled
    /// it (`nginx`, `library/nginx?ns=docker.io`), so no spelling gets around a rule.
    fn authorize(
        &self,
        req: &Request,
        principal: &Principal,
        target: Option<&(&RepoName, Target, Action)>,
    ) -> Result<(), ApiError> {
        let anonymous = *principal == Principal::Anonymous;
        let Some((asked, repo, action)) = target.map(|(n, t, a)| (*n, t.stored_as(), *a)) else {
            // `/v2/` is how clients find out that they should log in; the catalog
            // challenges too, so clients that log in only when asked can list. (Not
            // even where anonymous callers may pull: Docker and containers/image learn
            // from this answer whether to send credentials at all, and a 200 here
            // would leave their logins unused.)
            return if anonymous && self.auth.enabled() {
                Err(self.challenge(req, None, "authentication required"))
            } else {
                Ok(())
            };
        };
        if !self.policy.allows(principal, repo.as_str(), action) {
            // A bearer token that lacks the scope is answered with a challenge for it,
            // as distribution does: the client asks the token endpoint again.
            let scope = Some(token::scope_for(asked.as_str(), action));
            return Err(match principal {
                Principal::Anonymous => self.challenge(req, scope, "authentication required"),
                Principal::Bearer(_) => self.challenge(
                    req,
                    scope,
                    &format!("no {action:?} access to repository {repo}"),
                ),
                _ => ApiError::new(
                    ErrorCode::Denied,
                    format!("no {action:?} access to repository {repo}"),
                ),
            });
        }
        if self.read_only && action != Action::Pull {
            return Err(ApiError::new(
                ErrorCode::Unsupported,
                "the registry is in read-only mode for maintenance; pulls still work",
            ));
        }
        Ok(())
    }

    fn upload_slot(
        &self,
        route: &Route,
        method: &http::Method,
    ) -> Result<Option<UploadSlot>, ApiError> {
        if !writes_blob_data(route, method) {
            return Ok(None);
        }
        self.upload_slots
            .clone()
            .try_acquire_owned()
            .map(|permit| Some(UploadSlot::new(permit)))
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::TooManyRequests,
                    "too many uploads in progress (limits.max_concurrent_uploads); retry shortly",
                )
                .with_header("Retry-After", "1".to_string())
            })
    }

    async fn dispatch(
        &self,
        caller: &Caller<'_>,
        req: &Request,
        route: &Route,
        target: Option<&Target>,
        body: &mut dyn ByteSource,
    ) -> Result<Response, ApiError> {
        let r = &*self.registry;
        let mirror = &self.mirror;
        // Every route with a repository has a target; reads go through it.
        let read_from = || target.ok_or_else(|| ApiError::new(ErrorCode::Internal, "no target"));
        match (route, req.method.as_str()) {
            (Route::Base, "GET" | "HEAD") => Ok(Response::new(200).json(
                &serde_json::json!({}),
                "application/json",
                req.is_head(),
            )),
            (Route::Catalog, "GET") => catalog::list(r, caller, req).await,
            (Route::Tags(name), "GET") => tags::list(mirror, req, name, read_from()?).await,
            (Route::Manifest(_, reference), "GET" | "HEAD") => {
                manifests::get(mirror, req, read_from()?, reference).await
            }
            (Route::Manifest(name, reference), "PUT") => {
                manifests::put(r, req, name, reference, body, self.max_manifest_bytes).await
            }
            (Route::Manifest(name, reference), "DELETE") => {
                manifests::delete(r, name, reference).await
            }
            (Route::Blob(_, digest), "GET" | "HEAD") => {
                blobs::get(mirror, req, read_from()?, digest).await
            }
            (Route::Blob(name, digest), "DELETE") => blobs::delete(r, name, digest).await,
            (Route::UploadStart(name), "POST") => uploads::start(r, caller, req, name, body).await,
            (Route::Upload(name, id), "GET") => uploads::status(r, name, id).await,
            (Route::Upload(name, id), "PATCH") => uploads::patch(r, req, name, id, body).await,
            (Route::Upload(name, id), "PUT") => uploads::finish(r, req, name, id, body).await,
            (Route::Upload(name, id), "DELETE") => uploads::cancel(r, name, id).await,
            (Route::Referrers(_, digest), "GET") => {
                let target = read_from()?;
                referrers::list(r, req, target.stored_as(), digest).await
            }
            (Route::AdminGc, "GET" | "POST") => {
                if !caller.may_administer() {
                    return Err(if caller.principal == Principal::Anonymous {
                        self.challenge(req, None, "authentication required")
                    } else {
                        ApiError::new(
                            ErrorCode::Denied,
                            "maintenance needs an admin; list the user in admin.users",
                        )
                    });
                }
                admin::gc(&self.collector, req).await
            }
            (_, method) => Err(ApiError::new(
                ErrorCode::Unsupported,
                format!("{method} is not supported on {}", req.path),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Digest, Reference, Tag};
    use http::Method;

    #[test]
    fn actions_by_route_and_method() {
        let name = RepoName::parse("a/b").unwrap();
        let manifest = Route::Manifest(name.clone(), Reference::Tag(Tag::parse("1").unwrap()));
        let blob = Route::Blob(name.clone(), Digest::sha256_of(b""));
        let action = |route: &Route, m: Method| required_action(route, &m).map(|(_, a)| a);
        assert_eq!(action(&manifest, Method::GET), Some(Action::Pull));
        assert_eq!(action(&manifest, Method::HEAD), Some(Action::Pull));
        assert_eq!(action(&manifest, Method::PUT), Some(Action::Push));
        assert_eq!(action(&manifest, Method::DELETE), Some(Action::Delete));
        assert_eq!(action(&blob, Method::DELETE), Some(Action::Delete));
        assert_eq!(
            action(&Route::UploadStart(name.clone()), Method::POST),
            Some(Action::Push)
        );
        assert_eq!(
            action(&Route::Tags(name.clone()), Method::GET),
            Some(Action::Pull)
        );
        assert_eq!(action(&Route::Catalog, Method::GET), None);
        assert_eq!(action(&Route::Base, Method::GET), None);
        assert!(writes_blob_data(
            &Route::UploadStart(name.clone()),
            &Method::POST
        ));
        assert!(!writes_blob_data(&manifest, &Method::PUT));
    }

    #[test]
    fn paths_find_their_application() {
        for (path, want) in [
            ("/v2/", Front::Registry),
            ("/v2/a/manifests/1", Front::Registry),
            ("/admin/gc", Front::Registry),
            ("/token", Front::Token),
            ("/tokens", Front::Registry),
            ("/api/v1/users", Front::Rest),
            ("/apiary", Front::Registry),
            ("/", Front::Ui),
            ("/ui/repositories", Front::Ui),
            ("/uix", Front::Registry),
        ] {
            assert_eq!(front(path), want, "{path}");
        }
    }

    #[test]
    fn malformed_tags_are_unknown_manifests_except_for_put() {
        let err = || route::parse("/v2/a/manifests/.INVALID_MANIFEST_NAME").unwrap_err();
        assert_eq!(err().code, ErrorCode::TagInvalid);
        for method in [Method::GET, Method::HEAD, Method::DELETE] {
            assert_eq!(
                not_found_for_reads(err(), &method).code,
                ErrorCode::ManifestUnknown
            );
        }
        assert_eq!(
            not_found_for_reads(err(), &Method::PUT).code,
            ErrorCode::TagInvalid
        );
        let name = route::parse("/v2/A/manifests/x").unwrap_err();
        assert_eq!(
            not_found_for_reads(name, &Method::GET).code,
            ErrorCode::NameInvalid
        );
    }
}
