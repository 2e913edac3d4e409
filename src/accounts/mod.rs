//! Accounts: users, teams with roles, namespaces with visibility, robots and
//! application tokens, in `DATA/accounts.redb` (`[accounts] enabled = true`).
//!
//! The whole directory lives in memory as an immutable snapshot that requests read
//! without locking the database; a change is applied to a copy (`model.rs`, pure),
//! stored as the records that differ (`store.rs`), then swapped in. Writes are rare
//! (people managing accounts), reads are every request.

pub mod model;
pub mod policy;
mod store;

use crate::auth::{GrantKind, Principal};
use crate::store::StoreError;
use base64::Engine as _;
pub use model::{AccountError, Actions, AppToken, Directory, Robot, Role, Settings, Visibility};
pub use policy::{Identity, Rights};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Application tokens start with this, so they are recognisable in a leaked file
/// (and secret scanners can be told about them).
pub const TOKEN_PREFIX: &str = "pct_";
/// Shortest password accepted for a user.
pub const MIN_PASSWORD_LEN: usize = 8;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// 24 random bytes from the operating system, base64url: a secret nobody guesses.
fn random_secret() -> String {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub fn check_password(password: &str) -> Result<(), AccountError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(AccountError::Invalid(format!(
            "a password needs at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    Ok(())
}

pub struct Accounts {
    store: Arc<store::AccountStore>,
    current: RwLock<Arc<Directory>>,
    /// One change at a time, so none is lost between copy and swap.
    writing: tokio::sync::Mutex<()>,
    /// Bumped by every change; cached logins from an older generation are checked again.
    generation: AtomicU64,
    bcrypt_cost: u32,
    /// A hash checked for unknown users, so they cost what known users cost.
    decoy: String,
    /// Robot logins and token ids -> when they were last used, until the next flush.
    used: Mutex<HashMap<String, u64>>,
}

impl Accounts {
    /// Opens `DATA/accounts.redb`. `mirrors` are the upstream names (read-only namespaces).
    pub fn open(
        data_dir: &Path,
        defaults: Settings,
        mirrors: Vec<String>,
        bcrypt_cost: u32,
    ) -> Result<Accounts, StoreError> {
        let store = store::AccountStore::open(&data_dir.join("accounts.redb"))?;
        let directory = store.load(defaults, mirrors)?;
        let decoy = bcrypt::hash("portcullis-decoy", bcrypt_cost)
            .map_err(|e| StoreError::Meta(format!("bcrypt: {e}")))?;
        Ok(Accounts {
            store: Arc::new(store),
            current: RwLock::new(Arc::new(directory)),
            writing: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            bcrypt_cost,
            decoy,
            used: Mutex::new(HashMap::new()),
        })
    }

    /// The directory as it is now.
    pub fn directory(&self) -> Arc<Directory> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Applies `change` to a copy of the directory, stores what differs, then makes the
    /// copy current. A failed change or write leaves everything as it was.
    pub async fn change<T: Send + 'static>(
        &self,
        change: impl FnOnce(&mut Directory) -> Result<T, AccountError>,
    ) -> Result<T, AccountError> {
        let _writing = self.writing.lock().await;
        let before = self.directory();
        let mut after = (*before).clone();
        let value = change(&mut after)?;
        if after != *before {
            let after = Arc::new(after);
            let (store, new) = (self.store.clone(), after.clone());
            tokio::task::spawn_blocking(move || store.save(&before, &new))
                .await
                .map_err(|e| AccountError::Storage(e.to_string()))?
                .map_err(|e| AccountError::Storage(e.to_string()))?;
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = after;
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(value)
    }

    async fn hash_password(&self, password: &str) -> Result<String, AccountError> {
        check_password(password)?;
        let (password, cost) = (password.to_string(), self.bcrypt_cost);
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| AccountError::Storage(e.to_string()))?
            .map_err(|e| AccountError::Storage(format!("bcrypt: {e}")))
    }

    pub async fn add_user(
        &self,
        name: &str,
        password: &str,
        admin: bool,
    ) -> Result<(), AccountError> {
        let hash = self.hash_password(password).await?;
        self.change(|d| d.add_user(name, hash, admin, now_ms()))
            .await
    }

    pub async fn set_password(&self, name: &str, password: &str) -> Result<(), AccountError> {
        let hash = self.hash_password(password).await?;
        self.change(|d| {
            d.user_mut(name)?.password_hash = hash;
            Ok(())
        })
        .await
    }

    /// A robot for `namespace`; returns its login and secret (shown once).
    pub async fn add_robot(
        &self,
        namespace: &str,
        name: &str,
        actions: Actions,
        description: &str,
    ) -> Result<(String, String), AccountError> {
        let secret = random_secret();
        let robot = Robot {
            namespace: namespace.to_string(),
            name: name.to_string(),
            description: description.to_string(),
            actions,
            secret_sha256: sha256_hex(&secret),
            created: now_ms(),
            last_used: None,
        };
        let login = robot.login();
        self.change(|d| d.add_robot(robot)).await?;
        Ok((login, secret))
    }

    /// An application token of `user`'s; returns it with its secret (shown once).
    pub async fn add_token(
        &self,
        user: &str,
        name: &str,
        namespaces: Vec<String>,
        actions: Actions,
        expires: Option<u64>,
    ) -> Result<(AppToken, String), AccountError> {
        let secret = format!("{TOKEN_PREFIX}{}", random_secret());
        let token = AppToken {
            id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            user: user.to_string(),
            name: name.trim().to_string(),
            namespaces,
            actions,
            secret_sha256: sha256_hex(&secret),
            created: now_ms(),
            expires,
            last_used: None,
        };
        let stored = token.clone();
        self.change(|d| d.add_token(stored)).await?;
        Ok((token, secret))
    }

    /// Checks a login; blocking (bcrypt), so callers run it on the blocking pool.
    /// Users sign in with their password or one of their application tokens, robots
    /// with their secret. Every failure looks the same.
    pub fn verify(&self, user: &str, password: &str) -> Option<Principal> {
        let dir = self.directory();
        let now = now_ms();
        if password.starts_with(TOKEN_PREFIX) {
            let hash = sha256_hex(password);
            let token = dir
                .tokens
                .values()
                .find(|t| t.secret_sha256 == hash && t.user == user && !t.expired(now))?;
            self.mark_used(&token.id, now);
            return Some(Principal::Token {
                user: Arc::from(user),
                id: Arc::from(token.id.as_str()),
            });
        }
        if user.contains('+') {
            let robot = dir.robots.get(user)?;
            if robot.secret_sha256 != sha256_hex(password) {
                return None;
            }
            self.mark_used(user, now);
            return Some(Principal::Robot(Arc::from(user)));
        }
        match dir.users.get(user) {
            Some(u) if bcrypt::verify(password, &u.password_hash).unwrap_or(false) => {
                Some(Principal::User(Arc::from(user)))
            }
            Some(_) => None,
            None => {
                let _ = bcrypt::verify(password, &self.decoy);
                None
            }
        }
    }

    /// Whether a principal that signed in earlier still exists (refresh tokens).
    pub fn still_valid(&self, principal: &Principal) -> bool {
        let dir = self.directory();
        match principal {
            Principal::Anonymous => true,
            Principal::User(name) => dir.users.contains_key(&**name),
            Principal::Robot(login) => dir.robots.contains_key(&**login),
            Principal::Token { id, .. } => {
                dir.tokens.get(&**id).is_some_and(|t| !t.expired(now_ms()))
            }
            Principal::Bearer(_) => false,
        }
    }

    fn mark_used(&self, key: &str, now: u64) {
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), now);
    }

    /// Writes the last-used times gathered since the last flush (every minute, and
    /// when the server stops).
    pub async fn flush_last_used(&self) -> Result<(), AccountError> {
        let used = std::mem::take(&mut *self.used.lock().unwrap_or_else(|e| e.into_inner()));
        if used.is_empty() {
            return Ok(());
        }
        self.change(move |d| {
            for (key, at) in used {
                if let Some(t) = d.tokens.get_mut(&key) {
                    t.last_used = Some(at);
                } else if let Some(r) = d.robots.get_mut(&key) {
                    r.last_used = Some(at);
                }
            }
            Ok(())
        })
        .await
    }

    /// What a principal may do with a repository (by its stored name).
    pub fn rights(&self, principal: &Principal, repo: &str) -> Rights {
        let dir = self.directory();
        policy::rights(&dir, identity(principal), repo, now_ms())
    }

    pub fn is_admin(&self, principal: &Principal) -> bool {
        policy::is_admin(&self.directory(), identity(principal))
    }
}

/// How often last-used times of robots and tokens are written (and at shutdown).
pub const LAST_USED_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Writes last-used times every [`LAST_USED_EVERY`]: a write per sign-in would put an
/// fsync on the request path.
pub struct LastUsedWriter(pub Arc<Accounts>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for LastUsedWriter {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(LAST_USED_EVERY) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = self.0.flush_last_used().await {
                tracing::warn!("last-used times of robots and tokens not saved: {e}");
            }
        }
    }
}

/// The directory's view of a principal. Bearer tokens carry their grant and are
/// checked against it, not here; as identities they are their subject.
pub fn identity(principal: &Principal) -> Identity<'_> {
    match principal {
        Principal::Anonymous => Identity::Anonymous,
        Principal::User(name) => Identity::User(name),
        Principal::Robot(login) => Identity::Robot(login),
        Principal::Token { id, .. } => Identity::Token(id),
        Principal::Bearer(grant) => match &grant.kind {
            GrantKind::Anonymous => Identity::Anonymous,
            GrantKind::User => Identity::User(&grant.subject),
            GrantKind::Robot => Identity::Robot(&grant.subject),
            GrantKind::Token(id) => Identity::Token(id),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::model::tests::settings;
    use super::*;

    fn open(dir: &tempfile::TempDir) -> Accounts {
        Accounts::open(dir.path(), settings(), vec![], 4).unwrap()
    }

    #[tokio::test]
    async fn users_robots_and_tokens_sign_in_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let accounts = open(&dir);
        accounts
            .add_user("alice", "correct horse", false)
            .await
            .unwrap();
        assert!(matches!(
            accounts.add_user("bob", "short", false).await,
            Err(AccountError::Invalid(_))
        ));
        accounts
            .change(|d| d.create_team("web", "alice", "", 1))
            .await
            .unwrap();
        let (login, robot_secret) = accounts
            .add_robot("web", "ci", Actions::parse("push").unwrap(), "")
            .await
            .unwrap();
        assert_eq!(login, "web+ci");
        let (token, token_secret) = accounts
            .add_token(
                "alice",
                "deploy",
                vec![],
                Actions::parse("pull").unwrap(),
                None,
            )
            .await
            .unwrap();
        assert!(token_secret.starts_with(TOKEN_PREFIX));
        let generation = accounts.generation();
        assert!(generation >= 4);

        assert_eq!(
            accounts.verify("alice", "correct horse"),
            Some(Principal::User(Arc::from("alice")))
        );
        assert_eq!(accounts.verify("alice", "wrong password"), None);
        assert_eq!(accounts.verify("nobody", "correct horse"), None);
        assert_eq!(
            accounts.verify("web+ci", &robot_secret),
            Some(Principal::Robot(Arc::from("web+ci")))
        );
        assert_eq!(accounts.verify("web+ci", "guess"), None);
        let as_token = accounts.verify("alice", &token_secret).unwrap();
        assert_eq!(
            as_token,
            Principal::Token {
                user: Arc::from("alice"),
                id: Arc::from(token.id.as_str())
            }
        );
        assert_eq!(
            accounts.verify("bob", &token_secret),
            None,
            "another user's token"
        );
        assert!(accounts.rights(&as_token, "alice/app").pull);
        assert!(!accounts.rights(&as_token, "alice/app").push);

        accounts.flush_last_used().await.unwrap();
        assert!(accounts.directory().tokens[&token.id].last_used.is_some());
        assert!(accounts.directory().robots["web+ci"].last_used.is_some());
        accounts
            .change(|d| d.remove_token("alice", &token.id))
            .await
            .unwrap();
        assert_eq!(accounts.verify("alice", &token_secret), None, "revoked");
        assert!(!accounts.still_valid(&as_token));
        drop(accounts);

        let reopened = open(&dir);
        assert!(reopened.verify("alice", "correct horse").is_some());
        assert!(reopened.verify("web+ci", &robot_secret).is_some());
        assert_eq!(
            reopened.directory().teams["web"].members["alice"],
            Role::Owner
        );
    }

    #[tokio::test]
    async fn a_refused_change_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let accounts = open(&dir);
        accounts
            .add_user("alice", "correct horse", true)
            .await
            .unwrap();
        let before = accounts.directory();
        let generation = accounts.generation();
        let err = accounts
            .change(|d| d.remove_user("alice"))
            .await
            .unwrap_err();
        assert!(matches!(err, AccountError::Conflict(_)), "{err}");
        assert_eq!(*accounts.directory(), *before);
        assert_eq!(accounts.generation(), generation);
    }
}
