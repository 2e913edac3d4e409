//! The operations behind the REST API (`crate::rest`) and the web UI (`crate::ui`):
//! accounts, namespaces, tokens, repositories, activity and the system's state, each
//! with its permission check, answering with "view" structs that serialize as the
//! REST API's JSON. Both front ends only translate HTTP to these calls and back, so
//! they cannot disagree on who may do what.
//!
//! Account rules are the accounts' (`crate::accounts::model` for what a change may do,
//! `crate::accounts::policy` for who may do what in a namespace); what this layer adds
//! is who may change accounts: admins, team owners, users themselves. Those decisions
//! are pure functions on a [`Directory`] in each resource's file. Repositories work with
//! accounts off too: there `api.policy` (the access rules) decides.
//!
//! Robots and application tokens pull and push; they never change accounts (a token
//! that could mint tokens would outlive its own expiry). Bearer tokens act as the user
//! they were issued to.

mod activity;
mod namespaces;
mod repositories;
mod system;
mod teams;
mod tokens;
mod users;

pub use activity::ActivityPage;
pub use namespaces::{namespace_arg, NamespaceKind, NamespaceView, GLOBAL};
pub use repositories::{
    ManifestView, RepositoryPage, RepositoryView, TagPage, TagView, DEFAULT_PAGE, MAX_PAGE,
};
pub use system::{CacheCount, GcSummary, StoredBytes, SystemView, UpstreamView};
pub use teams::{MemberView, TeamView};
pub use tokens::{RobotView, TokenView};
pub use users::{MeView, MembershipView, UserView};

use crate::accounts::{self, AccountError, Accounts, Directory, Identity};
use crate::api::Api;
use crate::auth::{GrantKind, Principal};
use crate::store::StoreError;
use std::net::IpAddr;
use std::sync::Arc;

/// Why an operation was refused or failed; `status()` is its HTTP status and the
/// message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManageError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    /// Anonymous callers: sign in first.
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("accounts are off; set [accounts] enabled = true in the configuration to manage users, teams, namespaces and tokens")]
    AccountsOff,
    #[error("{0}")]
    Internal(String),
}

impl ManageError {
    pub fn status(&self) -> u16 {
        match self {
            ManageError::NotFound(_) => 404,
            ManageError::Forbidden(_) => 403,
            ManageError::Unauthenticated(_) => 401,
            ManageError::Invalid(_) => 400,
            ManageError::Conflict(_) | ManageError::AccountsOff => 409,
            ManageError::Internal(_) => 500,
        }
    }

    fn sign_in() -> ManageError {
        ManageError::Unauthenticated("sign in first".into())
    }
}

impl From<AccountError> for ManageError {
    fn from(err: AccountError) -> ManageError {
        let text = err.to_string();
        match err {
            AccountError::Invalid(_) => ManageError::Invalid(text),
            AccountError::Exists(_) | AccountError::Conflict(_) => ManageError::Conflict(text),
            AccountError::Unknown(_) => ManageError::NotFound(text),
            AccountError::Storage(_) => {
                tracing::error!(error = %text, "accounts database");
                ManageError::Internal(text)
            }
        }
    }
}

impl From<StoreError> for ManageError {
    fn from(err: StoreError) -> ManageError {
        let text = err.to_string();
        match err {
            StoreError::BlobUnknown(_)
            | StoreError::ManifestUnknown(_)
            | StoreError::NameUnknown(_) => ManageError::NotFound(text),
            _ => {
                tracing::error!(error = %text, "storage failure");
                ManageError::Internal(text)
            }
        }
    }
}

/// One caller's operations.
pub struct Manager<'a> {
    api: &'a Api,
    who: Principal,
    client: Option<IpAddr>,
}

/// The user a principal acts as when it changes accounts: a user signed in with their
/// password, or a bearer token issued to one. `Err` says why others may not.
fn person(who: &Principal) -> Result<&str, ManageError> {
    match who {
        Principal::User(name) => Ok(name),
        Principal::Bearer(grant) if grant.kind == GrantKind::User => Ok(&grant.subject),
        Principal::Anonymous => Err(ManageError::sign_in()),
        Principal::Bearer(grant) if grant.kind == GrantKind::Anonymous => {
            Err(ManageError::sign_in())
        }
        _ => Err(ManageError::Forbidden(
            "robots and application tokens only pull and push; sign in with a user's password to manage accounts"
                .into(),
        )),
    }
}

impl<'a> Manager<'a> {
    pub fn new(api: &'a Api, who: Principal, client: Option<IpAddr>) -> Manager<'a> {
        Manager { api, who, client }
    }

    pub fn who(&self) -> &Principal {
        &self.who
    }

    fn accounts(&self) -> Result<&'a Arc<Accounts>, ManageError> {
        self.api.accounts.as_ref().ok_or(ManageError::AccountsOff)
    }

    fn directory(&self) -> Result<Arc<Directory>, ManageError> {
        Ok(self.accounts()?.directory())
    }

    fn identity(&self) -> Identity<'_> {
        accounts::identity(&self.who)
    }

    /// The user making an account change (see [`person`]).
    fn person(&self) -> Result<&str, ManageError> {
        person(&self.who)
    }

    fn is_admin(&self) -> bool {
        self.api.policy.allows_admin(&self.who)
    }

    /// Admins only: Unauthenticated for anonymous callers, else Forbidden.
    fn require_admin(&self, what: &str) -> Result<(), ManageError> {
        if self.is_admin() {
            return Ok(());
        }
        match person(&self.who) {
            Err(ManageError::Unauthenticated(m)) => Err(ManageError::Unauthenticated(m)),
            _ => Err(ManageError::Forbidden(format!("{what} needs an admin"))),
        }
    }

    /// Applies an account change (see [`Accounts::change`]).
    async fn change<T: Send + 'static>(
        &self,
        change: impl FnOnce(&mut Directory) -> Result<T, AccountError>,
    ) -> Result<T, ManageError> {
        Ok(self.accounts()?.change(change).await?)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::activity::{self, ActivityLog};
    use crate::auth::access::AccessRules;
    use crate::auth::policy::Policy;
    use crate::auth::{Authenticator, Grant};
    use crate::config::{self, Overrides};
    use crate::gc::Collector;
    use crate::mirror::Mirror;
    use crate::notify::Notifier;
    use crate::store::{FsBlobStore, RedbMetaStore, Registry};
    use pingora::services::background::BackgroundService;

    /// An `Api` over a store in `dir`; with `accounts`, the accounts of the sample
    /// directory's people (admin, alice, bob; team web with bob as viewer), whose
    /// passwords are their names twice.
    pub async fn api(dir: &tempfile::TempDir, with_accounts: bool) -> Api {
        let text = "[[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:9\"\n";
        let config = config::from_text(text, "test", Vec::new(), Overrides::default()).unwrap();
        let blobs = FsBlobStore::open(dir.path()).unwrap();
        let meta = RedbMetaStore::open(&dir.path().join("meta.redb")).unwrap();
        let registry = Arc::new(Registry::new(Arc::new(blobs), Arc::new(meta), 0));
        let accounts = if with_accounts {
            let accounts = Accounts::open(
                dir.path(),
                crate::accounts::model::tests::settings(),
                vec!["docker.io".into()],
                4,
            )
            .unwrap();
            for (name, admin) in [("admin", true), ("alice", false), ("bob", false)] {
                accounts
                    .add_user(name, &format!("{name}{name}{name}"), admin)
                    .await
                    .unwrap();
            }
            accounts
                .change(|d| d.create_team("web", "alice", "", 2))
                .await
                .unwrap();
            accounts
                .change(|d| d.set_member("web", "bob", Some(accounts::Role::Viewer)))
                .await
                .unwrap();
            Some(Arc::new(accounts))
        } else {
            None
        };
        let policy = match &accounts {
            Some(a) => Policy::Accounts(a.clone()),
            None => Policy::Rules(AccessRules::default_for(false, Default::default())),
        };
        let (activity, recorder) =
            ActivityLog::open(&dir.path().join(activity::FILE), &config.activity).unwrap();
        tokio::spawn(async move {
            let (_stop, shutdown) = tokio::sync::watch::channel(false);
            recorder.start(shutdown).await
        });
        Api {
            activity,
            collector: Collector::new(registry.clone(), &config),
            notifier: Notifier::new(&config).unwrap().0,
            mirror: Mirror::new(
                registry.clone(),
                &config.mirror,
                config.limits.max_manifest_bytes,
            )
            .unwrap(),
            registry,
            auth: Arc::new(Authenticator::with_accounts(&config.auth, accounts.clone()).unwrap()),
            policy,
            accounts,
            tokens: None,
            read_only: false,
            max_manifest_bytes: config.limits.max_manifest_bytes,
            upload_slots: Arc::new(tokio::sync::Semaphore::new(4)),
        }
    }

    pub fn user(name: &str) -> Principal {
        Principal::User(Arc::from(name))
    }

    #[test]
    fn only_users_change_accounts() {
        assert_eq!(person(&user("alice")), Ok("alice"));
        let bearer = |kind| {
            Principal::Bearer(Arc::new(Grant {
                subject: Arc::from("alice"),
                kind,
                repositories: vec![],
            }))
        };
        assert_eq!(person(&bearer(GrantKind::User)), Ok("alice"));
        for who in [Principal::Anonymous, bearer(GrantKind::Anonymous)] {
            assert_eq!(person(&who).unwrap_err().status(), 401);
        }
        let token = Principal::Token {
            user: Arc::from("alice"),
            id: Arc::from("t1"),
        };
        for who in [
            token,
            Principal::Robot(Arc::from("web+ci")),
            bearer(GrantKind::Robot),
            bearer(GrantKind::Token(Arc::from("t1"))),
        ] {
            assert_eq!(person(&who).unwrap_err().status(), 403, "{who:?}");
        }
    }

    #[tokio::test]
    async fn accounts_off_is_said_once_for_every_account_operation() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(&dir, false).await;
        let m = Manager::new(&api, Principal::Anonymous, None);
        assert_eq!(m.teams().unwrap_err(), ManageError::AccountsOff);
        assert_eq!(m.tokens().unwrap_err(), ManageError::AccountsOff);
        assert_eq!(ManageError::AccountsOff.status(), 409);
        let me = m.me();
        assert_eq!((me.name, me.kind, me.accounts), (None, "anonymous", false));
    }
}
