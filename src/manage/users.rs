//! Who is calling (`me`), and users: admins list, add and remove them and make them
//! admins; a user changes their own password, an admin anyone's.

use super::{ManageError, Manager};
use crate::accounts::{model::User, Directory, Role};
use crate::auth::{GrantKind, Principal};
use serde::Serialize;

/// A team a user belongs to, with their role in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MembershipView {
    pub team: String,
    pub role: Role,
}

/// The caller, as the front ends show them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeView {
    /// The name signed in with; `None` for anonymous callers.
    pub name: Option<String>,
    /// `anonymous`, `user`, `robot` or `token` (an application token of `name`'s).
    pub kind: &'static str,
    /// The application token's id, when signed in with one.
    pub token: Option<String>,
    pub admin: bool,
    /// Whether accounts are on (else users come from htpasswd and nothing is managed).
    pub accounts: bool,
    pub teams: Vec<MembershipView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserView {
    pub name: String,
    pub admin: bool,
    /// Unix milliseconds.
    pub created: u64,
    pub teams: Vec<MembershipView>,
}

fn memberships(dir: &Directory, user: &str) -> Vec<MembershipView> {
    dir.teams
        .values()
        .filter_map(|team| {
            team.members.get(user).map(|role| MembershipView {
                team: team.name.clone(),
                role: *role,
            })
        })
        .collect()
}

fn user_view(dir: &Directory, user: &User) -> UserView {
    UserView {
        name: user.name.clone(),
        admin: user.admin,
        created: user.created,
        teams: memberships(dir, &user.name),
    }
}

/// Pure: whether `caller` may set `target`'s password (their own, or as an admin).
fn may_set_password(dir: &Directory, caller: &str, target: &str) -> bool {
    caller == target || dir.users.get(caller).is_some_and(|u| u.admin)
}

/// `(kind, token id)` of a principal, for [`MeView`].
fn kind_of(who: &Principal) -> (&'static str, Option<String>) {
    let token = |id: &str| ("token", Some(id.to_string()));
    match who {
        Principal::Anonymous => ("anonymous", None),
        Principal::User(_) => ("user", None),
        Principal::Robot(_) => ("robot", None),
        Principal::Token { id, .. } => token(id),
        Principal::Bearer(grant) => match &grant.kind {
            GrantKind::Anonymous => ("anonymous", None),
            GrantKind::User => ("user", None),
            GrantKind::Robot => ("robot", None),
            GrantKind::Token(id) => token(id),
        },
    }
}

impl Manager<'_> {
    pub fn me(&self) -> MeView {
        let (kind, token) = kind_of(&self.who);
        let name = self.who.name().map(str::to_string);
        let teams = match (&name, self.directory()) {
            (Some(name), Ok(dir)) if kind != "robot" => memberships(&dir, name),
            _ => Vec::new(),
        };
        MeView {
            name,
            kind,
            token,
            admin: self.is_admin(),
            accounts: self.api.accounts.is_some(),
            teams,
        }
    }

    pub fn users(&self) -> Result<Vec<UserView>, ManageError> {
        let dir = self.directory()?;
        self.require_admin("listing users")?;
        Ok(dir.users.values().map(|u| user_view(&dir, u)).collect())
    }

    pub fn user(&self, name: &str) -> Result<UserView, ManageError> {
        let dir = self.directory()?;
        if self.person().ok() != Some(name) {
            self.require_admin("seeing another user")?;
        }
        let user = dir
            .users
            .get(name)
            .ok_or_else(|| ManageError::NotFound(format!("user {name} does not exist")))?;
        Ok(user_view(&dir, user))
    }

    pub async fn add_user(
        &self,
        name: &str,
        password: &str,
        admin: bool,
    ) -> Result<UserView, ManageError> {
        let accounts = self.accounts()?;
        self.require_admin("adding users")?;
        accounts.add_user(name, password, admin).await?;
        self.changed(
            "user.create",
            &format!("user:{name}"),
            admin.then(|| "admin".into()),
        );
        self.user(name)
    }

    pub async fn set_admin(&self, name: &str, admin: bool) -> Result<UserView, ManageError> {
        self.accounts()?;
        self.require_admin("making users admins")?;
        self.change(|d| d.set_admin(name, admin)).await?;
        self.changed(
            "user.admin",
            &format!("user:{name}"),
            Some(admin.to_string()),
        );
        self.user(name)
    }

    pub async fn set_password(&self, name: &str, password: &str) -> Result<(), ManageError> {
        let accounts = self.accounts()?;
        let caller = self.person()?;
        if !may_set_password(&accounts.directory(), caller, name) {
            return Err(ManageError::Forbidden(
                "only the user themselves or an admin sets a password".into(),
            ));
        }
        accounts.set_password(name, password).await?;
        self.changed("user.password", &format!("user:{name}"), None);
        Ok(())
    }

    pub async fn remove_user(&self, name: &str) -> Result<(), ManageError> {
        self.accounts()?;
        self.require_admin("removing users")?;
        self.change(|d| d.remove_user(name)).await?;
        self.changed("user.remove", &format!("user:{name}"), None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{api, user};
    use super::*;
    use crate::accounts::model::tests::sample;
    use std::sync::Arc;

    #[test]
    fn passwords_are_set_by_their_user_or_an_admin() {
        let d = sample();
        assert!(may_set_password(&d, "alice", "alice"));
        assert!(may_set_password(&d, "admin", "alice"));
        assert!(!may_set_password(&d, "bob", "alice"));
        assert!(!may_set_password(&d, "nobody", "alice"));
    }

    #[test]
    fn memberships_list_roles() {
        let d = sample();
        assert_eq!(
            memberships(&d, "bob"),
            [MembershipView {
                team: "web".into(),
                role: Role::Viewer
            }]
        );
        assert!(memberships(&d, "admin").is_empty());
    }

    #[test]
    fn kinds_of_callers() {
        let token = Principal::Token {
            user: Arc::from("alice"),
            id: Arc::from("t1"),
        };
        assert_eq!(kind_of(&token), ("token", Some("t1".into())));
        assert_eq!(kind_of(&user("alice")), ("user", None));
        assert_eq!(kind_of(&Principal::Anonymous), ("anonymous", None));
    }

    #[tokio::test]
    async fn admins_manage_users_and_users_their_password() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(&dir, true).await;
        let admin = Manager::new(&api, user("admin"), None);
        let alice = Manager::new(&api, user("alice"), None);
        assert_eq!(alice.users().unwrap_err().status(), 403);
        assert_eq!(
            Manager::new(&api, Principal::Anonymous, None)
                .users()
                .unwrap_err()
                .status(),
            401
        );
        let carol = admin.add_user("carol", "carolcarol", false).await.unwrap();
        assert_eq!((carol.name.as_str(), carol.admin), ("carol", false));
        assert_eq!(
            admin
                .add_user("carol", "carolcarol", false)
                .await
                .unwrap_err()
                .status(),
            409
        );
        assert_eq!(
            admin
                .add_user("dave", "short", false)
                .await
                .unwrap_err()
                .status(),
            400
        );
        assert!(alice.add_user("eve", "eveeveeve", true).await.is_err());
        alice.set_password("alice", "a new password").await.unwrap();
        assert_eq!(
            alice
                .set_password("bob", "a new password")
                .await
                .unwrap_err()
                .status(),
            403
        );
        assert_eq!(alice.user("bob").unwrap_err().status(), 403);
        assert_eq!(alice.user("alice").unwrap().teams.len(), 1);
        assert!(admin.set_admin("carol", true).await.unwrap().admin);
        admin.remove_user("carol").await.unwrap();
        assert_eq!(admin.user("carol").unwrap_err().status(), 404);
        let me = alice.me();
        assert_eq!(
            (me.name.as_deref(), me.kind, me.admin, me.accounts),
            (Some("alice"), "user", false, true)
        );
    }
}
