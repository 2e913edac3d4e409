//! Docker Hub's token authentication, reduced to what clients can observe.
//!
//! The token endpoint grants `pull` on the requested repositories that exist (as
//! auth.docker.io does for anonymous users, so a missing repository ends up as
//! `insufficient_scope` at the registry). Tokens are random, opaque, and remembered
//! with their expiry and granted repositories.

use base64::Engine as _;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a token is valid when the response omits `expires_in`: the 60 seconds the
/// distribution token specification tells clients to assume.
pub const IMPLIED_LIFETIME: Duration = Duration::from_secs(60);

/// One requested scope, `type:name:action,action` (the name may itself contain `:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub resource_type: String,
    pub name: String,
    pub actions: Vec<String>,
}

pub fn parse_scope(text: &str) -> Result<Scope, String> {
    let invalid = || format!("invalid scope {text:?}: expected type:name:actions");
    let (resource_type, rest) = text.split_once(':').ok_or_else(invalid)?;
    let (name, actions) = rest.rsplit_once(':').ok_or_else(invalid)?;
    if resource_type.is_empty() || name.is_empty() {
        return Err(invalid());
    }
    Ok(Scope {
        resource_type: resource_type.to_string(),
        name: name.to_string(),
        actions: actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// All scopes of the `scope` query values (each may hold several, separated by spaces).
pub fn parse_scopes<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Vec<Scope>, String> {
    values
        .into_iter()
        .flat_map(str::split_whitespace)
        .map(parse_scope)
        .collect()
}

/// The repositories whose `pull` these scopes ask for.
pub fn pull_repositories(scopes: &[Scope]) -> Vec<String> {
    scopes
        .iter()
        .filter(|s| s.resource_type == "repository" && s.actions.iter().any(|a| a == "pull"))
        .map(|s| s.name.clone())
        .collect()
}

/// How a request authorized itself, for the request log.
pub fn scheme_of(authorization: Option<&str>) -> &'static str {
    let Some(value) = authorization else {
        return "none";
    };
    let scheme = value.split_whitespace().next().unwrap_or_default();
    if scheme.eq_ignore_ascii_case("bearer") {
        "bearer"
    } else if scheme.eq_ignore_ascii_case("basic") {
        "basic"
    } else {
        "other"
    }
}

/// The credential after `scheme ` in an Authorization value.
fn credential<'a>(authorization: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = authorization.trim().split_once(' ')?;
    given
        .eq_ignore_ascii_case(scheme)
        .then(|| rest.trim())
        .filter(|c| !c.is_empty())
}

/// User and password of a `Basic` Authorization value.
pub fn parse_basic(authorization: &str) -> Option<(String, String)> {
    let encoded = credential(authorization, "basic")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// The token of a `Bearer` Authorization value.
pub fn parse_bearer(authorization: &str) -> Option<&str> {
    credential(authorization, "bearer")
}

/// Why a registry request is refused; the challenge says so to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No bearer token at all.
    NoToken,
    /// A token that is unknown or expired.
    InvalidToken,
    /// A valid token that does not grant pull on this repository (or it does not exist).
    InsufficientScope,
}

impl Denial {
    /// The `error=` of the challenge, if any.
    pub fn error(self) -> Option<&'static str> {
        match self {
            Denial::NoToken => None,
            Denial::InvalidToken => Some("invalid_token"),
            Denial::InsufficientScope => Some("insufficient_scope"),
        }
    }
}

/// The `WWW-Authenticate` value pointing a client at the token realm.
pub fn challenge(realm: &str, service: &str, repository: Option<&str>, denial: Denial) -> String {
    let mut value = format!("Bearer realm=\"{realm}\",service=\"{service}\"");
    if let Some(name) = repository {
        value.push_str(&format!(",scope=\"repository:{name}:pull\""));
    }
    if let Some(error) = denial.error() {
        value.push_str(&format!(",error=\"{error}\""));
    }
    value
}

struct Grant {
    expires_at: Instant,
    pull: HashSet<String>,
}

/// Tokens issued so far.
#[derive(Default)]
pub struct TokenStore {
    grants: Mutex<HashMap<String, Grant>>,
}

impl TokenStore {
    /// A new random token granting pull on `repositories` for `lifetime`.
    pub fn issue(&self, repositories: Vec<String>, lifetime: Duration, now: Instant) -> String {
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let mut grants = self.grants.lock().unwrap_or_else(|e| e.into_inner());
        grants.retain(|_, g| g.expires_at > now);
        grants.insert(
            token.clone(),
            Grant {
                expires_at: now + lifetime,
                pull: repositories.into_iter().collect(),
            },
        );
        token
    }

    pub fn revoke_all(&self) {
        self.grants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Checks a request's Authorization against the tokens: any valid token when
    /// `repository` is `None` (`/v2/`), else one granting pull on it.
    pub fn authorize(
        &self,
        authorization: Option<&str>,
        repository: Option<&str>,
        now: Instant,
    ) -> Result<(), Denial> {
        let token = authorization
            .and_then(parse_bearer)
            .ok_or(Denial::NoToken)?;
        let grants = self.grants.lock().unwrap_or_else(|e| e.into_inner());
        let grant = grants
            .get(token)
            .filter(|g| g.expires_at > now)
            .ok_or(Denial::InvalidToken)?;
        match repository {
            Some(name) if !grant.pull.contains(name) => Err(Denial::InsufficientScope),
            _ => Ok(()),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch (UTC).
pub fn rfc3339(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let second_of_day = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// Gregorian (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// days-to-civil algorithm, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        let scope = parse_scope("repository:library/alpine:pull,push").unwrap();
        assert_eq!(scope.resource_type, "repository");
        assert_eq!(scope.name, "library/alpine");
        assert_eq!(scope.actions, ["pull", "push"]);
        let with_port = parse_scope("repository:localhost:5000/a:pull").unwrap();
        assert_eq!(with_port.name, "localhost:5000/a");
        assert_eq!(parse_scope("registry:catalog:*").unwrap().actions, ["*"]);
        for bad in [
            "",
            "repository",
            "repository:a",
            ":a:pull",
            "repository::pull",
        ] {
            assert!(parse_scope(bad).is_err(), "{bad:?}");
        }
        let all = parse_scopes([
            "repository:a/b:pull",
            "repository:c:push repository:d:pull,push",
        ])
        .unwrap();
        assert_eq!(pull_repositories(&all), ["a/b", "d"]);
        assert!(parse_scopes(["repository:a:pull nonsense"]).is_err());
    }

    #[test]
    fn authorization_values() {
        // "user:pa:ss" in base64
        let basic = "Basic dXNlcjpwYTpzcw==";
        assert_eq!(
            parse_basic(basic),
            Some(("user".to_string(), "pa:ss".to_string()))
        );
        assert_eq!(parse_basic("basic   dXNlcjpwYTpzcw== "), parse_basic(basic));
        assert_eq!(parse_basic("Basic !!!"), None);
        assert_eq!(parse_basic("Bearer dXNlcjpwYTpzcw=="), None);
        assert_eq!(parse_bearer("Bearer abc"), Some("abc"));
        assert_eq!(parse_bearer("Bearer "), None);
        assert_eq!(scheme_of(None), "none");
        assert_eq!(scheme_of(Some("bearer x")), "bearer");
        assert_eq!(scheme_of(Some("Basic x")), "basic");
        assert_eq!(scheme_of(Some("Digest x")), "other");
    }

    #[test]
    fn tokens() {
        let store = TokenStore::default();
        let now = Instant::now();
        let token = store.issue(vec!["a/b".to_string()], Duration::from_secs(10), now);
        let header = format!("Bearer {token}");
        let auth = |repo, at| store.authorize(Some(&header), repo, at);
        assert_eq!(auth(None, now), Ok(()));
        assert_eq!(auth(Some("a/b"), now), Ok(()));
        assert_eq!(auth(Some("a/c"), now), Err(Denial::InsufficientScope));
        let later = now + Duration::from_secs(10);
        assert_eq!(auth(Some("a/b"), later), Err(Denial::InvalidToken));
        assert_eq!(
            store.authorize(Some("Bearer nope"), None, now),
            Err(Denial::InvalidToken)
        );
        assert_eq!(store.authorize(None, None, now), Err(Denial::NoToken));
        assert_eq!(
            store.authorize(Some("Basic eDp5"), None, now),
            Err(Denial::NoToken)
        );
    }

    #[test]
    fn challenges() {
        assert_eq!(
            challenge("http://h/token", "svc", None, Denial::NoToken),
            "Bearer realm=\"http://h/token\",service=\"svc\""
        );
        assert_eq!(
            challenge("r", "s", Some("a/b"), Denial::InvalidToken),
            "Bearer realm=\"r\",service=\"s\",scope=\"repository:a/b:pull\",error=\"invalid_token\""
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
