//! Authentication (who is calling) and access rules (what they may do).
//!
//! Basic auth against an htpasswd file. bcrypt is slow on purpose (tens of ms), so a
//! successful check is cached for a short time, keyed by a salted hash of the
//! credentials, and checks run on the blocking pool. Failures are counted per client
//! address and per user name; past the limit, requests get 429 without a bcrypt check,
//! except logins verified within the cache TTL: a guesser must not lock out active users.
//! Wrong user and wrong password look the same from outside: same answer, and an
//! unknown user costs a decoy bcrypt check of the file's cost.

pub mod access;
pub mod htpasswd;
pub mod policy;
pub mod token;

use crate::accounts::Accounts;
use crate::config::AuthConfig;
use base64::Engine as _;
use htpasswd::{Htpasswd, PasswordHash};
use moka::sync::Cache;
use sha2::{Digest as _, Sha256};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    /// A user: from the htpasswd file, or an account.
    User(Arc<str>),
    /// A namespace's robot account, by login (`<namespace>+<name>`).
    Robot(Arc<str>),
    /// A user's application token (CI): the user, and the token's id.
    Token {
        user: Arc<str>,
        id: Arc<str>,
    },
    /// A bearer token from the token endpoint, verified: what it grants.
    Bearer(Arc<Grant>),
}

impl Principal {
    /// The name it signed in as, for the access log, events and the activity log.
    pub fn name(&self) -> Option<&str> {
        self.shared_name().map(|name| &**name)
    }

    /// [`Principal::name`] as the shared string it is held in (no copy per request).
    pub fn shared_name(&self) -> Option<&Arc<str>> {
        match self {
            Principal::Anonymous => None,
            Principal::User(name)
            | Principal::Robot(name)
            | Principal::Token { user: name, .. } => Some(name),
            Principal::Bearer(grant) => match grant.kind {
                GrantKind::Anonymous => None,
                _ => Some(&grant.subject),
            },
        }
    }
}

/// Who a bearer token was issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantKind {
    Anonymous,
    User,
    Robot,
    /// An application token of the subject's, by id.
    Token(Arc<str>),
}

/// What a verified bearer token allows: checked on the request path as it is, with
/// no lookup, so a token is good for what it says until it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub subject: Arc<str>,
    pub kind: GrantKind,
    /// Repository (as stored) -> actions.
    pub repositories: Vec<(String, crate::accounts::Actions)>,
}

impl Grant {
    pub fn allows(&self, repo: &str, action: access::Action) -> bool {
        self.repositories.iter().any(|(name, actions)| {
            name == repo
                && match action {
                    access::Action::Pull => actions.pull,
                    access::Action::Push => actions.push,
                    access::Action::Delete => actions.delete,
                }
        })
    }

    /// The principal it was issued to, for checks a grant does not carry (the
    /// catalog, the admin endpoints).
    pub fn subject(&self) -> Principal {
        match &self.kind {
            GrantKind::Anonymous => Principal::Anonymous,
            GrantKind::User => Principal::User(self.subject.clone()),
            GrantKind::Robot => Principal::Robot(self.subject.clone()),
            GrantKind::Token(id) => Principal::Token {
                user: self.subject.clone(),
                id: id.clone(),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Wrong user or password, or an unusable Authorization header: deliberately one case.
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("too many failed logins; try again later")]
    TooManyAttempts,
}

struct Users {
    file: Htpasswd,
    /// A bcrypt hash checked for unknown users, so they cost what known users cost.
    decoy: PasswordHash,
}

pub struct Authenticator {
    path: Option<PathBuf>,
    realm: String,
    users: RwLock<Arc<Users>>,
    /// With `[accounts]`: users, robots and tokens come from there, not htpasswd.
    accounts: Option<Arc<Accounts>>,
    /// Salted credential hash -> who, and the accounts generation it was checked in.
    verified: Cache<[u8; 32], (Principal, u64)>,
    /// "ip:<addr>" or "user:<name>" -> failures in the current window.
    failures: Cache<String, Arc<AtomicU32>>,
    max_failures: u32,
    failure_window: std::time::Duration,
    /// Per-process salt: the cache never holds a plain hash of a password.
    salt: [u8; 16],
}

fn load_users(path: &PathBuf) -> Result<Users, String> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{origin}: cannot read ({e})"))?;
    let file = Htpasswd::parse(&text, &origin);
    for warning in &file.warnings {
        tracing::warn!("{warning}");
    }
    let cost = file
        .max_bcrypt_cost()
        .unwrap_or(htpasswd::DEFAULT_BCRYPT_COST);
    let decoy = bcrypt::hash("portcullis-decoy", cost).map_err(|e| e.to_string())?;
    Ok(Users {
        file,
        decoy: PasswordHash::Bcrypt(decoy),
    })
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Result<Authenticator, String> {
        Authenticator::with_accounts(config, None)
    }

    /// With `accounts`, logins are checked against them (the htpasswd file is not read).
    pub fn with_accounts(
        config: &AuthConfig,
        accounts: Option<Arc<Accounts>>,
    ) -> Result<Authenticator, String> {
        let users = match (&config.htpasswd, &accounts) {
            (Some(path), None) => load_users(path)?,
            _ => Users {
                file: Htpasswd::default(),
                decoy: PasswordHash::Sha1([0; 20]),
            },
        };
        Ok(Authenticator {
            path: config.htpasswd.clone().filter(|_| accounts.is_none()),
            realm: config.realm.clone(),
            users: RwLock::new(Arc::new(users)),
            accounts,
            verified: Cache::builder()
                .max_capacity(config.cache_capacity)
                .time_to_live(config.cache_ttl)
                .build(),
            failures: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(config.failure_window)
                .build(),
            max_failures: config.max_failures,
            failure_window: config.failure_window,
            salt: *uuid::Uuid::new_v4().as_bytes(),
        })
    }

    /// Whether requests can log in at all (an htpasswd file is configured).
    pub fn enabled(&self) -> bool {
        self.path.is_some() || self.accounts.is_some()
    }

    /// Whether a principal that signed in earlier still may (for refresh tokens):
    /// the user is still in the htpasswd file or the accounts.
    pub fn still_valid(&self, principal: &Principal) -> bool {
        match (&self.accounts, principal) {
            (Some(accounts), p) => accounts.still_valid(p),
            (None, Principal::User(name)) => self
                .users
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .file
                .get(name)
                .is_some(),
            (None, p) => *p == Principal::Anonymous,
        }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// How long a client over the failure limit should wait.
    pub fn retry_after_secs(&self) -> u64 {
        self.failure_window.as_secs()
    }

    /// Re-reads the htpasswd file (SIGHUP). On error the old users stay in force.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.path else { return Ok(0) };
        let users = load_users(path)?;
        let count = users.file.user_count();
        *self.users.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(users);
        // Removed users and changed passwords must not keep working from the cache.
        self.verified.invalidate_all();
        Ok(count)
    }

    /// Works out who is calling from the `Authorization` header.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        client: Option<IpAddr>,
    ) -> Result<Principal, AuthError> {
        let Some(header) = authorization else {
            return Ok(Principal::Anonymous);
        };
        if !self.enabled() {
            // An open registry ignores credentials (dockerd sends its Docker Hub ones).
            return Ok(Principal::Anonymous);
        }
        let (user, password) = parse_basic(header).ok_or(AuthError::InvalidCredentials)?;
        self.login(&user, password, client).await
    }

    /// Checks a user name and password (or robot secret, or application token), within
    /// the failure limits: for Basic headers and for the token endpoint alike.
    pub async fn login(
        &self,
        user: &str,
        password: String,
        client: Option<IpAddr>,
    ) -> Result<Principal, AuthError> {
        // containers/image sends `Basic Og==` (":") when it has no login for the host.
        if user.is_empty() && password.is_empty() {
            return Ok(Principal::Anonymous);
        }
        let key = self.cache_key(user, &password);
        let generation = self.accounts.as_ref().map_or(0, |a| a.generation());
        if let Some((principal, at)) = self.verified.get(&key) {
            if at == generation {
                return Ok(principal);
            }
        }
        let counters = [
            client.map(|ip| format!("ip:{ip}")),
            Some(format!("user:{user}")),
        ];
        let over_limit = counters.iter().flatten().any(|k| {
            self.failures
                .get(k)
                .is_some_and(|c| c.load(Ordering::Relaxed) >= self.max_failures)
        });
        if over_limit {
            return Err(AuthError::TooManyAttempts);
        }
        let users = self.users.read().unwrap_or_else(|e| e.into_inner()).clone();
        let accounts = self.accounts.clone();
        let check_user = user.to_string();
        let verified = tokio::task::spawn_blocking(move || match accounts {
            Some(accounts) => accounts.verify(&check_user, &password),
            None => {
                let valid = match users.file.get(&check_user) {
                    Some(hash) => hash.verify(&password),
                    None => {
                        users.decoy.verify(&password);
                        false
                    }
                };
                valid.then(|| Principal::User(Arc::from(check_user.as_str())))
            }
        })
        .await
        .unwrap_or(None);
        if let Some(principal) = verified {
            self.verified.insert(key, (principal.clone(), generation));
            return Ok(principal);
        }
        for k in counters.into_iter().flatten() {
            self.failures
                .get_with(k, || Arc::new(AtomicU32::new(0)))
                .fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(client = ?client, "failed login");
        Err(AuthError::InvalidCredentials)
    }

    fn cache_key(&self, user: &str, password: &str) -> [u8; 32] {
        Sha256::new()
            .chain_update(self.salt)
            .chain_update(user.as_bytes())
            .chain_update([0u8])
            .chain_update(password.as_bytes())
            .finalize()
            .into()
    }
}

/// `Basic base64(user:password)` -> (user, password).
pub fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn basic(user: &str, password: &str) -> String {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}")
    }

    fn authenticator(dir: &tempfile::TempDir, max_failures: u32) -> Authenticator {
        let path = dir.path().join("htpasswd");
        htpasswd::add_user(&path, "alice", "right", 4).unwrap();
        Authenticator::new(&AuthConfig {
            htpasswd: Some(path),
            realm: "test".into(),
            cache_ttl: Duration::from_secs(60),
            cache_capacity: 100,
            max_failures,
            failure_window: Duration::from_secs(60),
            token: None,
        })
        .unwrap()
    }

    #[test]
    fn parses_basic_headers() {
        assert_eq!(
            parse_basic(&basic("u", "p:q")),
            Some(("u".into(), "p:q".into()))
        );
        assert_eq!(parse_basic("basic dTpw"), Some(("u".into(), "p".into())));
        assert_eq!(parse_basic("Bearer abc"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
        assert_eq!(parse_basic("Basic"), None);
    }

    #[tokio::test]
    async fn users_anonymous_and_failures() {
        let dir = tempfile::tempdir().unwrap();
        let auth = authenticator(&dir, 3);
        assert_eq!(
            auth.authenticate(None, None).await,
            Ok(Principal::Anonymous)
        );
        let alice = Principal::User(Arc::from("alice"));
        assert_eq!(
            auth.authenticate(Some(&basic("alice", "right")), None)
                .await,
            Ok(alice.clone())
        );
        // Cached: still accepted.
        assert_eq!(
            auth.authenticate(Some(&basic("alice", "right")), None)
                .await,
            Ok(alice)
        );
        let wrong_password = auth
            .authenticate(Some(&basic("alice", "wrong")), None)
            .await;
        let unknown_user = auth.authenticate(Some(&basic("mallory", "x")), None).await;
        assert_eq!(wrong_password, unknown_user, "no user enumeration");
        assert_eq!(wrong_password, Err(AuthError::InvalidCredentials));
        assert_eq!(
            auth.authenticate(Some("Bearer x"), None).await,
            Err(AuthError::InvalidCredentials)
        );
    }

    #[tokio::test]
    async fn failures_are_limited_per_address_and_user() {
        let dir = tempfile::tempdir().unwrap();
        let auth = authenticator(&dir, 2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..2 {
            let r = auth
                .authenticate(Some(&basic("alice", "bad")), Some(ip))
                .await;
            assert_eq!(r, Err(AuthError::InvalidCredentials));
        }
        let r = auth.authenticate(Some(&basic("bob", "x")), Some(ip)).await;
        assert_eq!(
            r,
            Err(AuthError::TooManyAttempts),
            "address is over the limit"
        );
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let r = auth
            .authenticate(Some(&basic("alice", "right")), Some(other))
            .await;
        assert_eq!(r, Err(AuthError::TooManyAttempts), "user is over the limit");
    }

    #[tokio::test]
    async fn reload_drops_removed_users() {
        let dir = tempfile::tempdir().unwrap();
        let auth = authenticator(&dir, 10);
        assert!(auth
            .authenticate(Some(&basic("alice", "right")), None)
            .await
            .is_ok());
        htpasswd::remove_user(&dir.path().join("htpasswd"), "alice").unwrap();
        assert_eq!(auth.reload(), Ok(0));
        let r = auth
            .authenticate(Some(&basic("alice", "right")), None)
            .await;
        assert_eq!(r, Err(AuthError::InvalidCredentials));
    }
}
