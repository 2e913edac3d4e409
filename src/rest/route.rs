//! Method + path -> [`Route`]. Pure, and driven by one table ([`ROUTES`]) that the
//! OpenAPI document is checked against, so the two list the same operations.
//!
//! Repository names contain slashes: a `{repository}` placeholder takes every segment
//! between the fixed parts before and after it, so the path is in effect read from
//! both ends (as `api/route.rs` reads `/v2/` paths). Segments are percent-decoded
//! first, so `web%2Fapp` and `web/app` are the same repository.

use percent_encoding::percent_decode_str;

/// Where the REST API lives.
pub const PREFIX: &str = "/api/v1";

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Me,
    ListUsers,
    CreateUser,
    GetUser,
    UpdateUser,
    DeleteUser,
    ListTeams,
    CreateTeam,
    GetTeam,
    DeleteTeam,
    SetMember,
    RemoveMember,
    ListNamespaces,
    CreateNamespace,
    GetNamespace,
    UpdateNamespace,
    DeleteNamespace,
    ListRobots,
    CreateRobot,
    DeleteRobot,
    ListTokens,
    CreateToken,
    RevokeToken,
    ListRepositories,
    ListTags,
    DeleteTag,
    GetManifest,
    DeleteManifest,
    Activity,
    System,
    RunGc,
    OpenApi,
}

/// Every operation: method, path under [`PREFIX`] (placeholders in braces, as in the
/// OpenAPI document), and what it is. Where two paths could match, the first wins.
pub const ROUTES: &[(&str, &str, Operation)] = &[
    ("GET", "/me", Operation::Me),
    ("GET", "/users", Operation::ListUsers),
    ("POST", "/users", Operation::CreateUser),
    ("GET", "/users/{name}", Operation::GetUser),
    ("PATCH", "/users/{name}", Operation::UpdateUser),
    ("DELETE", "/users/{name}", Operation::DeleteUser),
    ("GET", "/teams", Operation::ListTeams),
    ("POST", "/teams", Operation::CreateTeam),
    ("GET", "/teams/{team}", Operation::GetTeam),
    ("DELETE", "/teams/{team}", Operation::DeleteTeam),
    ("PUT", "/teams/{team}/members/{user}", Operation::SetMember),
    (
        "DELETE",
        "/teams/{team}/members/{user}",
        Operation::RemoveMember,
    ),
    ("GET", "/namespaces", Operation::ListNamespaces),
    ("POST", "/namespaces", Operation::CreateNamespace),
    ("GET", "/namespaces/{namespace}", Operation::GetNamespace),
    (
        "PATCH",
        "/namespaces/{namespace}",
        Operation::UpdateNamespace,
    ),
    (
        "DELETE",
        "/namespaces/{namespace}",
        Operation::DeleteNamespace,
    ),
    (
        "GET",
        "/namespaces/{namespace}/robots",
        Operation::ListRobots,
    ),
    (
        "POST",
        "/namespaces/{namespace}/robots",
        Operation::CreateRobot,
    ),
    ("DELETE", "/robots/{login}", Operation::DeleteRobot),
    ("GET", "/tokens", Operation::ListTokens),
    ("POST", "/tokens", Operation::CreateToken),
    ("DELETE", "/tokens/{id}", Operation::RevokeToken),
    ("GET", "/repositories", Operation::ListRepositories),
    (
        "GET",
        "/repositories/{repository}/tags",
        Operation::ListTags,
    ),
    (
        "DELETE",
        "/repositories/{repository}/tags/{tag}",
        Operation::DeleteTag,
    ),
    (
        "GET",
        "/repositories/{repository}/manifests/{reference}",
        Operation::GetManifest,
    ),
    (
        "DELETE",
        "/repositories/{repository}/manifests/{digest}",
        Operation::DeleteManifest,
    ),
    ("GET", "/activity", Operation::Activity),
    ("GET", "/system", Operation::System),
    ("POST", "/system/gc", Operation::RunGc),
    ("GET", "/openapi.json", Operation::OpenApi),
];

/// The placeholder that takes one or more segments.
const MANY: &str = "{repository}";

/// A matched request: the operation and its path parameters, in path order, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub operation: Operation,
    pub params: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No operation has this path.
    NotFound,
    /// Operations have this path, with these methods.
    MethodNotAllowed(Vec<&'static str>),
}

/// The parameters of `path` (segments, decoded) if it has the shape of `pattern`.
fn matches(pattern: &str, path: &[String]) -> Option<Vec<String>> {
    let pattern: Vec<&str> = pattern.split('/').skip(1).collect();
    let param = |p: &str, s: &String| match p.starts_with('{') {
        true => (!s.is_empty()).then(|| Some(s.clone())),
        false => (p == s).then_some(None),
    };
    let Some(many) = pattern.iter().position(|p| *p == MANY) else {
        if pattern.len() != path.len() {
            return None;
        }
        let found: Option<Vec<_>> = pattern.iter().zip(path).map(|(p, s)| param(p, s)).collect();
        return Some(found?.into_iter().flatten().collect());
    };
    let after = pattern.len() - many - 1;
    if path.len() < pattern.len() {
        return None;
    }
    let (head, rest) = path.split_at(many);
    let (middle, tail) = rest.split_at(rest.len() - after);
    let mut params = Vec::new();
    for (p, s) in pattern[..many].iter().zip(head) {
        params.extend(param(p, s)?);
    }
    if middle.iter().any(String::is_empty) {
        return None;
    }
    params.push(middle.join("/"));
    for (p, s) in pattern[many + 1..].iter().zip(tail) {
        params.extend(param(p, s)?);
    }
    Some(params)
}

/// The segments of a path under [`PREFIX`], percent-decoded.
fn segments(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix(PREFIX)?.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
            .collect(),
    )
}

pub fn parse(method: &str, path: &str) -> Result<Route, RouteError> {
    let segments = segments(path).ok_or(RouteError::NotFound)?;
    let mut allowed = Vec::new();
    for (m, pattern, operation) in ROUTES {
        if let Some(params) = matches(pattern, &segments) {
            if *m == method {
                return Ok(Route {
                    operation: *operation,
                    params,
                });
            }
            allowed.push(*m);
        }
    }
    if allowed.is_empty() {
        Err(RouteError::NotFound)
    } else {
        Err(RouteError::MethodNotAllowed(allowed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: &str, path: &str) -> (Operation, Vec<String>) {
        let r = parse(method, path).unwrap_or_else(|e| panic!("{method} {path}: {e:?}"));
        (r.operation, r.params)
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fixed_paths_and_single_parameters() {
        assert_eq!(route("GET", "/api/v1/me"), (Operation::Me, vec![]));
        assert_eq!(
            route("POST", "/api/v1/users"),
            (Operation::CreateUser, vec![])
        );
        assert_eq!(
            route("PATCH", "/api/v1/users/alice"),
            (Operation::UpdateUser, strings(&["alice"]))
        );
        assert_eq!(
            route("PUT", "/api/v1/teams/web/members/bob"),
            (Operation::SetMember, strings(&["web", "bob"]))
        );
        assert_eq!(
            route("DELETE", "/api/v1/robots/web%2Bci"),
            (Operation::DeleteRobot, strings(&["web+ci"]))
        );
        assert_eq!(
            route("POST", "/api/v1/system/gc"),
            (Operation::RunGc, vec![])
        );
    }

    #[test]
    fn repository_names_span_segments() {
        assert_eq!(
            route("GET", "/api/v1/repositories/web/app/tags"),
            (Operation::ListTags, strings(&["web/app"]))
        );
        assert_eq!(
            route("GET", "/api/v1/repositories/web%2Fapp/tags"),
            (Operation::ListTags, strings(&["web/app"]))
        );
        assert_eq!(
            route("DELETE", "/api/v1/repositories/a/b/c/tags/v1"),
            (Operation::DeleteTag, strings(&["a/b/c", "v1"]))
        );
        // A repository named like a resource: the method tells them apart.
        assert_eq!(
            route("GET", "/api/v1/repositories/x/tags/tags"),
            (Operation::ListTags, strings(&["x/tags"]))
        );
        assert_eq!(
            route("DELETE", "/api/v1/repositories/x/tags/tags"),
            (Operation::DeleteTag, strings(&["x", "tags"]))
        );
        assert_eq!(
            route("GET", "/api/v1/repositories/x/manifests/sha256%3Aab"),
            (Operation::GetManifest, strings(&["x", "sha256:ab"]))
        );
    }

    #[test]
    fn unknown_paths_and_methods() {
        for path in [
            "/api/v1",
            "/api/v1/",
            "/api/v2/me",
            "/api/v1/nope",
            "/api/v1/users/",
            "/api/v1/users/a/b",
            "/api/v1/repositories//tags",
            "/api/v1/repositories/tags",
            "/api/v1/teams/web/members",
        ] {
            assert_eq!(parse("GET", path), Err(RouteError::NotFound), "{path}");
        }
        assert_eq!(
            parse("PUT", "/api/v1/users/alice"),
            Err(RouteError::MethodNotAllowed(vec!["GET", "PATCH", "DELETE"]))
        );
        assert_eq!(
            parse("GET", "/api/v1/system/gc"),
            Err(RouteError::MethodNotAllowed(vec!["POST"]))
        );
    }
}
