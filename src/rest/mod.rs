//! The REST API under `/api/v1/`: accounts, namespaces, tokens, repositories, activity
//! and the system, for scripts and for everything the web UI does. Described by the
//! OpenAPI document it serves at `/api/v1/openapi.json` (`openapi.json` here).
//!
//! Each request is routed (`route.rs`, pure), authenticated from its `Authorization`
//! header alone (Basic with a password, robot secret or `pct_` application token, or
//! a bearer token from `/token`), then answered by one [`Manager`] call: this module
//! only turns JSON into arguments and views into JSON. There are no cookies, so a
//! browser cannot be made to call it on someone's behalf (no CSRF). Anonymous callers
//! get what anonymous may see, and 401 with a challenge where they must sign in.
//! Errors are the registry's envelope, `{"errors":[{"code","message","detail"}]}`.

pub mod route;

use crate::accounts::{Actions, Role, Visibility};
use crate::activity::{parse_time, Cursor, Filter};
use crate::api::response::read_limited;
use crate::api::route::{query_pairs, query_value};
use crate::api::{Api, ApiError, Body, ErrorCode, Request, Response};
use crate::gc::RunOptions;
use crate::manage::{namespace_arg, ManageError, Manager, DEFAULT_PAGE};
use crate::store::ByteSource;
use crate::transfer::ReadChunks;
use route::{Operation, Route, RouteError};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::net::IpAddr;

/// The OpenAPI 3 document, written by hand (see `openapi_lists_every_route`).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Largest request body taken: account changes are a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 64 << 10;

impl From<ManageError> for ApiError {
    fn from(err: ManageError) -> ApiError {
        let code = match err {
            ManageError::NotFound(_) => ErrorCode::NotFound,
            ManageError::Forbidden(_) => ErrorCode::Denied,
            ManageError::Unauthenticated(_) => ErrorCode::Unauthorized,
            ManageError::Invalid(_) => ErrorCode::RequestInvalid,
            ManageError::Conflict(_) | ManageError::AccountsOff => ErrorCode::Conflict,
            ManageError::Internal(_) => ErrorCode::Internal,
        };
        ApiError::new(code, err.to_string())
    }
}

fn route_error(err: RouteError, req: &Request) -> ApiError {
    match err {
        RouteError::NotFound => ApiError::new(
            ErrorCode::NotFound,
            format!(
                "no such endpoint: {}; the endpoints are listed in {}/openapi.json",
                req.path,
                route::PREFIX
            ),
        ),
        RouteError::MethodNotAllowed(methods) => {
            let allow = methods.join(", ");
            ApiError::new(
                ErrorCode::Unsupported,
                format!("{} {} is not supported; use {allow}", req.method, req.path),
            )
            .with_header("Allow", allow)
        }
    }
}

/// A JSON answer.
fn json(status: u16, value: &impl serde::Serialize) -> Response {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    Response::new(status)
        .header("Content-Type", "application/json")
        .body(Body::Bytes(bytes.into()))
}

fn no_content() -> Response {
    Response::new(204)
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::RequestInvalid, detail)
}

/// The request body as `T`; an empty body reads as `{}`.
async fn read_json<T: DeserializeOwned>(
    req: &Request,
    body: &mut dyn ByteSource,
) -> Result<T, ApiError> {
    let bytes = read_limited(req, body, MAX_BODY_BYTES, "request bodies").await?;
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(text).map_err(|e| {
        invalid(format!(
            "the body is not what {} {} takes: {e} (see {}/openapi.json)",
            req.method,
            req.path,
            route::PREFIX
        ))
    })
}

/// `n` and `last` of a listing.
fn page(pairs: &[(String, String)]) -> Result<(Option<&str>, usize), ApiError> {
    let n = match query_value(pairs, "n") {
        None => DEFAULT_PAGE,
        Some(n) => n
            .parse()
            .map_err(|_| invalid(format!("n={n:?}: give a whole number of entries")))?,
    };
    Ok((query_value(pairs, "last"), n))
}

/// The activity filter and cursor a query asks for.
fn activity_query(pairs: &[(String, String)]) -> Result<(Filter, Option<Cursor>), ApiError> {
    let text = |key| query_value(pairs, key).map(str::to_string);
    let time = |key| {
        query_value(pairs, key)
            .map(|t| parse_time(t).map_err(|e| invalid(format!("{key}: {e}"))))
            .transpose()
    };
    let filter = Filter {
        actor: text("actor"),
        target_prefix: text("repository"),
        action: text("action"),
        since: time("since")?,
        until: time("until")?,
        text: text("q"),
    };
    let cursor = query_value(pairs, "cursor")
        .map(|c| c.parse::<Cursor>().map_err(invalid))
        .transpose()?;
    Ok((filter, cursor))
}

fn actions(names: &[String]) -> Result<Actions, ApiError> {
    Actions::parse(&names.join(",")).map_err(invalid)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    password: String,
    #[serde(default)]
    admin: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserChange {
    admin: Option<bool>,
    password: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTeam {
    name: String,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Membership {
    role: Role,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNamespace {
    name: String,
    team: String,
    #[serde(default = "private")]
    visibility: Visibility,
    #[serde(default)]
    description: String,
}

fn private() -> Visibility {
    Visibility::Private
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceChange {
    visibility: Visibility,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRobot {
    name: String,
    actions: Vec<String>,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    #[serde(default)]
    namespaces: Vec<String>,
    actions: Vec<String>,
    expires_days: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GcRequest {
    #[serde(default)]
    dry_run: bool,
    delete_untagged: Option<bool>,
    /// A duration such as `30m`.
    grace: Option<String>,
}

impl GcRequest {
    fn options(self) -> Result<RunOptions, ApiError> {
        let grace = self
            .grace
            .map(|text| {
                humantime::parse_duration(&text).map_err(|e| {
                    invalid(format!(
                        "grace {text:?}: {e}; write a duration such as 30m or 2h"
                    ))
                })
            })
            .transpose()?;
        Ok(RunOptions {
            dry_run: self.dry_run,
            delete_untagged: self.delete_untagged,
            grace,
            show_progress: false,
        })
    }
}

pub async fn answer(
    api: &Api,
    req: &Request,
    client: Option<IpAddr>,
    body: &mut dyn ByteSource,
) -> Result<Response, ApiError> {
    let route = route::parse(req.method.as_str(), &req.path).map_err(|e| route_error(e, req))?;
    if route.operation == Operation::OpenApi {
        return Ok(Response::new(200)
            .header("Content-Type", "application/json")
            .body(Body::Bytes(OPENAPI.as_bytes().into())));
    }
    let who = api.authenticate(req, client).await?;
    let manager = Manager::new(api, who, client);
    dispatch(&manager, req, &route, body).await.map_err(|err| {
        if err.code == ErrorCode::Unauthorized {
            let challenge = format!("Basic realm=\"{}\"", api.auth.realm());
            err.with_header("WWW-Authenticate", challenge)
        } else {
            err
        }
    })
}

async fn dispatch(
    m: &Manager<'_>,
    req: &Request,
    route: &Route,
    body: &mut dyn ByteSource,
) -> Result<Response, ApiError> {
    use Operation::*;
    let pairs = query_pairs(req.query.as_deref());
    let params: Vec<&str> = route.params.iter().map(String::as_str).collect();
    Ok(match (route.operation, params.as_slice()) {
        (Me, []) => json(200, &m.me()),
        (ListUsers, []) => json(200, &serde_json::json!({ "users": m.users()? })),
        (CreateUser, []) => {
            let new: NewUser = read_json(req, body).await?;
            json(201, &m.add_user(&new.name, &new.password, new.admin).await?)
        }
        (GetUser, [name]) => json(200, &m.user(name)?),
        (UpdateUser, [name]) => {
            let change: UserChange = read_json(req, body).await?;
            if change.admin.is_none() && change.password.is_none() {
                return Err(invalid("give admin, password or both"));
            }
            if let Some(password) = &change.password {
                m.set_password(name, password).await?;
            }
            match change.admin {
                Some(admin) => json(200, &m.set_admin(name, admin).await?),
                None => json(200, &m.user(name)?),
            }
        }
        (DeleteUser, [name]) => {
            m.remove_user(name).await?;
            no_content()
        }
        (ListTeams, []) => json(200, &serde_json::json!({ "teams": m.teams()? })),
        (CreateTeam, []) => {
            let new: NewTeam = read_json(req, body).await?;
            json(201, &m.create_team(&new.name, &new.description).await?)
        }
        (GetTeam, [team]) => json(200, &m.team(team)?),
        (DeleteTeam, [team]) => {
            m.remove_team(team).await?;
            no_content()
        }
        (SetMember, [team, user]) => {
            let membership: Membership = read_json(req, body).await?;
            json(200, &m.set_member(team, user, Some(membership.role)).await?)
        }
        (RemoveMember, [team, user]) => json(200, &m.set_member(team, user, None).await?),
        (ListNamespaces, []) => json(200, &serde_json::json!({ "namespaces": m.namespaces()? })),
        (CreateNamespace, []) => {
            let new: NewNamespace = read_json(req, body).await?;
            let created = m
                .create_namespace(&new.name, &new.team, new.visibility, &new.description)
                .await?;
            json(201, &created)
        }
        (GetNamespace, [ns]) => json(200, &m.namespace(ns)?),
        (UpdateNamespace, [ns]) => {
            let change: NamespaceChange = read_json(req, body).await?;
            json(
                200,
                &m.set_visibility(namespace_arg(ns), change.visibility)
                    .await?,
            )
        }
        (DeleteNamespace, [ns]) => {
            m.remove_namespace(ns).await?;
            no_content()
        }
        (ListRobots, [ns]) => json(200, &serde_json::json!({ "robots": m.robots(ns)? })),
        (CreateRobot, [ns]) => {
            let new: NewRobot = read_json(req, body).await?;
            let (robot, secret) = m
                .add_robot(ns, &new.name, actions(&new.actions)?, &new.description)
                .await?;
            // The secret is in this answer only.
            json(
                201,
                &serde_json::json!({ "robot": robot, "secret": secret }),
            )
        }
        (DeleteRobot, [login]) => {
            m.remove_robot(login).await?;
            no_content()
        }
        (ListTokens, []) => json(200, &serde_json::json!({ "tokens": m.tokens()? })),
        (CreateToken, []) => {
            let new: NewToken = read_json(req, body).await?;
            let (token, secret) = m
                .add_token(
                    &new.name,
                    new.namespaces,
                    actions(&new.actions)?,
                    new.expires_days,
                )
                .await?;
            json(
                201,
                &serde_json::json!({ "token": token, "secret": secret }),
            )
        }
        (RevokeToken, [id]) => {
            m.revoke_token(id).await?;
            no_content()
        }
        (ListRepositories, []) => {
            let (last, n) = page(&pairs)?;
            let namespace = query_value(&pairs, "namespace");
            json(200, &m.repositories(namespace, last, n).await?)
        }
        (ListTags, [repo]) => {
            let (last, n) = page(&pairs)?;
            json(200, &m.tags(repo, last, n).await?)
        }
        (GetManifest, [repo, reference]) => json(200, &m.manifest(repo, reference).await?),
        (DeleteTag, [repo, tag]) => {
            m.delete_tag(repo, tag).await?;
            no_content()
        }
        (DeleteManifest, [repo, digest]) => {
            m.delete_manifest(repo, digest).await?;
            no_content()
        }
        (Activity, []) => {
            let (filter, cursor) = activity_query(&pairs)?;
            let (_, n) = page(&pairs)?;
            match query_value(&pairs, "format") {
                None | Some("json") => json(200, &m.activity(&filter, cursor, n).await?),
                Some("jsonl") => {
                    let (file, len) = m.activity_export(&filter).await?;
                    Response::new(200)
                        .header("Content-Type", "application/x-ndjson")
                        .body(Body::Stream {
                            source: Box::new(ReadChunks(Box::new(file))),
                            len,
                        })
                }
                Some(other) => {
                    return Err(invalid(format!(
                        "format={other:?}: use json (pages) or jsonl (everything, as JSON lines)"
                    )))
                }
            }
        }
        (System, []) => json(200, &m.system()?),
        (RunGc, []) => {
            let request: GcRequest = read_json(req, body).await?;
            json(200, &m.run_gc(request.options()?).await?)
        }
        // The document is answered before authentication; the parameters are the
        // table's, so no other combination reaches here.
        (operation, params) => {
            return Err(ApiError::new(
                ErrorCode::Internal,
                format!("{operation:?} with {params:?} has no handler"),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn openapi_lists_every_route_and_its_parameters() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                documented.insert((method.to_uppercase(), path.clone()));
                let declared: BTreeSet<&str> = operation["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                let placeholders: BTreeSet<&str> = path
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                    .collect();
                assert_eq!(declared, placeholders, "{method} {path}");
            }
        }
        let routed: BTreeSet<(String, String)> = route::ROUTES
            .iter()
            .map(|(method, path, _)| (method.to_string(), format!("{}{path}", route::PREFIX)))
            .collect();
        assert_eq!(routed, documented);
    }

    #[test]
    fn manage_errors_keep_their_status() {
        for err in [
            ManageError::NotFound("x".into()),
            ManageError::Forbidden("x".into()),
            ManageError::Unauthenticated("x".into()),
            ManageError::Invalid("x".into()),
            ManageError::Conflict("x".into()),
            ManageError::AccountsOff,
            ManageError::Internal("x".into()),
        ] {
            let status = err.status();
            assert_eq!(ApiError::from(err).code.status(), status);
        }
    }

    #[test]
    fn gc_requests_take_durations() {
        let request: GcRequest = serde_json::from_str(r#"{"dry_run":true,"grace":"90s"}"#).unwrap();
        let options = request.options().unwrap();
        assert!(options.dry_run);
        assert_eq!(options.grace, Some(std::time::Duration::from_secs(90)));
        let bad: GcRequest = serde_json::from_str(r#"{"grace":"soon"}"#).unwrap();
        assert_eq!(bad.options().unwrap_err().code, ErrorCode::RequestInvalid);
        assert!(serde_json::from_str::<GcRequest>(r#"{"force":true}"#).is_err());
    }
}
