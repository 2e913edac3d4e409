//! Credentials for machines: robots (a namespace's, managed by those who manage the
//! namespace) and application tokens (a user's own, for CI). Their secrets are
//! returned once, by the call that makes them; only a hash is kept.

use super::{ManageError, Manager};
use crate::accounts::{now_ms, Actions, AppToken, Directory, Identity, Robot};
use serde::Serialize;

/// Longest lifetime a token may be given, in days.
pub const MAX_TOKEN_DAYS: u32 = 3650;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RobotView {
    /// What it signs in as: `<namespace>+<name>`.
    pub login: String,
    pub namespace: String,
    pub name: String,
    pub description: String,
    /// Within its namespace: `pull`, `push`, `delete`.
    pub actions: Vec<&'static str>,
    /// Unix milliseconds.
    pub created: u64,
    pub last_used: Option<u64>,
}

impl From<&Robot> for RobotView {
    fn from(robot: &Robot) -> RobotView {
        RobotView {
            login: robot.login(),
            namespace: robot.namespace.clone(),
            name: robot.name.clone(),
            description: robot.description.clone(),
            actions: robot.actions.names(),
            created: robot.created,
            last_used: robot.last_used,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    /// The user it signs in as (with the token as password).
    pub user: String,
    /// Namespaces it works in; empty: all of the user's.
    pub namespaces: Vec<String>,
    pub actions: Vec<&'static str>,
    /// Unix milliseconds.
    pub created: u64,
    pub expires: Option<u64>,
    pub last_used: Option<u64>,
    pub expired: bool,
}

fn token_view(token: &AppToken, now: u64) -> TokenView {
    TokenView {
        id: token.id.clone(),
        name: token.name.clone(),
        user: token.user.clone(),
        namespaces: token.namespaces.clone(),
        actions: token.actions.names(),
        created: token.created,
        expires: token.expires,
        last_used: token.last_used,
        expired: token.expired(now),
    }
}

/// Pure: when a token made at `now` for `days` expires; `Err` for a lifetime out of range.
fn expiry(days: Option<u32>, now: u64) -> Result<Option<u64>, ManageError> {
    match days {
        None => Ok(None),
        Some(d @ 1..=MAX_TOKEN_DAYS) => Ok(Some(now + u64::from(d) * DAY_MS)),
        Some(d) => Err(ManageError::Invalid(format!(
            "expires_days = {d}: give 1 to {MAX_TOKEN_DAYS} days, or none for a token that does not expire"
        ))),
    }
}

/// Pure: the first of `namespaces` that `user` may not pull from (tokens are scoped to
/// namespaces the user can reach, so a scope tells nothing about others).
fn out_of_reach<'n>(
    dir: &Directory,
    user: &str,
    namespaces: &'n [String],
    now: u64,
) -> Option<&'n str> {
    namespaces
        .iter()
        .find(|ns| {
            !crate::accounts::policy::namespace_rights(dir, Identity::User(user), Some(ns), now)
                .pull
        })
        .map(String::as_str)
}

/// Pure: whether `user` may revoke `token` (their own; an admin any).
fn may_revoke(dir: &Directory, user: &str, token: &AppToken) -> bool {
    token.user == user || dir.users.get(user).is_some_and(|u| u.admin)
}

fn no_actions() -> ManageError {
    ManageError::Invalid("give at least one action: pull, push or delete".into())
}

impl Manager<'_> {
    pub fn robots(&self, namespace: &str) -> Result<Vec<RobotView>, ManageError> {
        self.require_manager(Some(namespace))?;
        let dir = self.directory()?;
        Ok(dir
            .robots
            .values()
            .filter(|r| r.namespace == namespace)
            .map(RobotView::from)
            .collect())
    }

    /// A robot for `namespace`; returns it with its secret, which is not shown again.
    pub async fn add_robot(
        &self,
        namespace: &str,
        name: &str,
        actions: Actions,
        description: &str,
    ) -> Result<(RobotView, String), ManageError> {
        self.require_manager(Some(namespace))?;
        if actions == Actions::NONE {
            return Err(no_actions());
        }
        let accounts = self.accounts()?;
        let (login, secret) = accounts
            .add_robot(namespace, name, actions, description)
            .await?;
        self.changed(
            "robot.create",
            &format!("robot:{login}"),
            Some(actions.names().join(",")),
        );
        let dir = accounts.directory();
        let robot = dir
            .robots
            .get(&login)
            .ok_or_else(|| ManageError::Internal(format!("robot {login} vanished")))?;
        Ok((RobotView::from(robot), secret))
    }

    pub async fn remove_robot(&self, login: &str) -> Result<(), ManageError> {
        let dir = self.directory()?;
        let namespace = dir
            .robots
            .get(login)
            .map(|r| r.namespace.clone())
            .ok_or_else(|| ManageError::NotFound(format!("robot {login} does not exist")))?;
        self.require_manager(Some(&namespace))?;
        self.change(|d| d.remove_robot(login)).await?;
        self.changed("robot.remove", &format!("robot:{login}"), None);
        Ok(())
    }

    /// The caller's own tokens.
    pub fn tokens(&self) -> Result<Vec<TokenView>, ManageError> {
        let dir = self.directory()?;
        let user = self.person()?;
        let now = now_ms();
        Ok(dir
            .tokens
            .values()
            .filter(|t| t.user == user)
            .map(|t| token_view(t, now))
            .collect())
    }

    /// A token of the caller's; returns it with its secret, which is not shown again.
    pub async fn add_token(
        &self,
        name: &str,
        namespaces: Vec<String>,
        actions: Actions,
        expires_days: Option<u32>,
    ) -> Result<(TokenView, String), ManageError> {
        let accounts = self.accounts()?;
        let user = self.person()?;
        let now = now_ms();
        let expires = expiry(expires_days, now)?;
        if actions == Actions::NONE {
            return Err(no_actions());
        }
        if let Some(ns) = out_of_reach(&accounts.directory(), user, &namespaces, now) {
            return Err(ManageError::NotFound(format!(
                "namespace {ns} does not exist, or you may not pull from it"
            )));
        }
        let (token, secret) = accounts
            .add_token(user, name, namespaces, actions, expires)
            .await?;
        self.changed(
            "token.create",
            &format!("token:{}", token.id),
            Some(token.name.clone()),
        );
        Ok((token_view(&token, now), secret))
    }

    pub async fn revoke_token(&self, id: &str) -> Result<(), ManageError> {
        let dir = self.directory()?;
        let user = self.person()?;
        let owner = match dir.tokens.get(id) {
            Some(token) if may_revoke(&dir, user, token) => token.user.clone(),
            _ => return Err(ManageError::NotFound(format!("you have no token {id}"))),
        };
        self.change(|d| d.remove_token(&owner, id)).await?;
        self.changed(
            "token.revoke",
            &format!("token:{id}"),
            Some(format!("of {owner}")),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{api, user};
    use super::*;
    use crate::accounts::model::tests::sample;
    use crate::auth::Principal;
    use std::sync::Arc;

    #[test]
    fn lifetimes_scopes_and_revocation() {
        assert_eq!(expiry(None, 5).unwrap(), None);
        assert_eq!(expiry(Some(1), 5).unwrap(), Some(5 + DAY_MS));
        assert_eq!(expiry(Some(0), 5).unwrap_err().status(), 400);
        assert_eq!(
            expiry(Some(MAX_TOKEN_DAYS + 1), 5).unwrap_err().status(),
            400
        );
        let d = sample();
        let web = vec!["web".to_string()];
        assert_eq!(out_of_reach(&d, "bob", &web, 1), None);
        let alice = vec!["web".to_string(), "alice".to_string()];
        assert_eq!(out_of_reach(&d, "bob", &alice, 1), Some("alice"));
        assert_eq!(out_of_reach(&d, "admin", &alice, 1), None);
        let token = AppToken {
            id: "t".into(),
            user: "alice".into(),
            name: "ci".into(),
            namespaces: vec![],
            actions: Actions::ALL,
            secret_sha256: String::new(),
            created: 1,
            expires: None,
            last_used: None,
        };
        assert!(may_revoke(&d, "alice", &token));
        assert!(may_revoke(&d, "admin", &token));
        assert!(!may_revoke(&d, "bob", &token));
    }

    #[tokio::test]
    async fn tokens_and_robots_are_made_shown_once_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(&dir, true).await;
        let alice = Manager::new(&api, user("alice"), None);
        let bob = Manager::new(&api, user("bob"), None);
        let pull_push = Actions::parse("pull,push").unwrap();
        let (token, secret) = alice
            .add_token("ci", vec!["web".into()], pull_push, Some(30))
            .await
            .unwrap();
        assert!(secret.starts_with(crate::accounts::TOKEN_PREFIX));
        assert_eq!(token.actions, ["pull", "push"]);
        assert!(!serde_json::to_string(&alice.tokens().unwrap())
            .unwrap()
            .contains(&secret));
        assert!(bob.tokens().unwrap().is_empty());
        assert_eq!(bob.revoke_token(&token.id).await.unwrap_err().status(), 404);
        // A token cannot mint tokens.
        let as_token = Principal::Token {
            user: Arc::from("alice"),
            id: Arc::from(token.id.as_str()),
        };
        let with_token = Manager::new(&api, as_token, None);
        assert_eq!(
            with_token
                .add_token("more", vec![], pull_push, None)
                .await
                .unwrap_err()
                .status(),
            403
        );
        alice.revoke_token(&token.id).await.unwrap();
        assert!(alice.tokens().unwrap().is_empty());

        let (robot, robot_secret) = alice
            .add_robot("web", "deploy", Actions::parse("pull").unwrap(), "prod")
            .await
            .unwrap();
        assert_eq!(robot.login, "web+deploy");
        assert!(!robot_secret.is_empty());
        assert_eq!(alice.robots("web").unwrap(), std::slice::from_ref(&robot));
        assert_eq!(bob.robots("web").unwrap_err().status(), 403);
        assert_eq!(
            bob.remove_robot("web+deploy").await.unwrap_err().status(),
            403
        );
        assert_eq!(
            alice
                .add_robot("web", "x", Actions::NONE, "")
                .await
                .unwrap_err()
                .status(),
            400
        );
        alice.remove_robot("web+deploy").await.unwrap();
        assert_eq!(
            alice.remove_robot("web+deploy").await.unwrap_err().status(),
            404
        );
    }
}
