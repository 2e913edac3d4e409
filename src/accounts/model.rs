//! What the accounts directory holds, and every change to it as a pure function on
//! [`Directory`]: no I/O, no clock (callers pass `now`), so each rule is unit tested.
//! The service (`mod.rs`) applies a change to a copy, stores what differs, then swaps
//! the copy in.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest user, team, namespace, robot or token name.
const MAX_NAME_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// bcrypt.
    pub password_hash: String,
    pub admin: bool,
    pub created: u64,
}

/// A team member's role; each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Pull.
    Viewer,
    /// Pull and push.
    Contributor,
    /// Pull, push, delete, and manage members, robots and visibility.
    Owner,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Team {
    pub name: String,
    pub description: String,
    pub members: BTreeMap<String, Role>,
    pub created: u64,
}

/// Who may pull from a namespace besides its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Members only.
    Private,
    /// Any signed-in user, robot or token.
    Protected,
    /// Anyone, anonymous callers included.
    Public,
}

impl std::str::FromStr for Visibility {
    type Err = String;
    fn from_str(s: &str) -> Result<Visibility, String> {
        match s {
            "private" => Ok(Visibility::Private),
            "protected" => Ok(Visibility::Protected),
            "public" => Ok(Visibility::Public),
            other => Err(format!(
                "{other:?} is not a visibility; use \"private\" (members), \"protected\" (signed-in users) or \"public\" (anyone)"
            )),
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "contributor" => Ok(Role::Contributor),
            "owner" => Ok(Role::Owner),
            other => Err(format!(
                "{other:?} is not a role; use \"viewer\" (pull), \"contributor\" (pull, push) or \"owner\" (all, and members)"
            )),
        }
    }
}

/// Who owns a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Owner {
    /// A user's personal namespace, named after them.
    User(String),
    Team(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    pub owner: Owner,
    pub visibility: Visibility,
    pub description: String,
    pub created: u64,
}

/// What a robot or an application token may do, at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Actions {
    pub pull: bool,
    pub push: bool,
    pub delete: bool,
}

impl Actions {
    pub const NONE: Actions = Actions {
        pull: false,
        push: false,
        delete: false,
    };
    pub const ALL: Actions = Actions {
        pull: true,
        push: true,
        delete: true,
    };

    /// `pull,push`-style text, as the CLI and the API take it.
    pub fn parse(text: &str) -> Result<Actions, String> {
        let mut actions = Actions::NONE;
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "pull" => actions.pull = true,
                "push" => actions.push = true,
                "delete" => actions.delete = true,
                other => {
                    return Err(format!(
                        "{other:?} is not an action; use pull, push and delete, comma-separated"
                    ))
                }
            }
        }
        Ok(actions)
    }

    pub fn names(self) -> Vec<&'static str> {
        [
            (self.pull, "pull"),
            (self.push, "push"),
            (self.delete, "delete"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

/// An account a namespace owns, for machines: `<namespace>+<name>` with a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Robot {
    pub namespace: String,
    pub name: String,
    pub description: String,
    /// Within its namespace; push and delete imply pull.
    pub actions: Actions,
    /// SHA-256 of the secret, hex. Secrets are random (not passwords), so a fast hash is enough.
    pub secret_sha256: String,
    pub created: u64,
    pub last_used: Option<u64>,
}

impl Robot {
    /// The name it signs in with.
    pub fn login(&self) -> String {
        format!("{}+{}", self.namespace, self.name)
    }
}

/// A user's application token (for CI): the user's rights, narrowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppToken {
    pub id: String,
    pub user: String,
    pub name: String,
    /// Namespaces it works in; empty: all of the user's.
    pub namespaces: Vec<String>,
    pub actions: Actions,
    pub secret_sha256: String,
    pub created: u64,
    pub expires: Option<u64>,
    pub last_used: Option<u64>,
}

impl AppToken {
    pub fn expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }
}

/// Settings an admin changes at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Who may pull repositories outside personal and team namespaces.
    pub global_visibility: Visibility,
    /// Mirrored upstreams by name; upstreams not listed are public.
    pub mirror_visibility: BTreeMap<String, Visibility>,
}

/// Everything, in memory: a few hundred bytes per account, so the request path reads
/// it without touching the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    pub users: BTreeMap<String, User>,
    pub teams: BTreeMap<String, Team>,
    pub namespaces: BTreeMap<String, Namespace>,
    /// By login (`ns+name`).
    pub robots: BTreeMap<String, Robot>,
    /// By id.
    pub tokens: BTreeMap<String, AppToken>,
    pub settings: Settings,
    /// Names of the mirrored upstreams (from the configuration, not stored).
    pub mirrors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0} does not exist")]
    Unknown(String),
    #[error("{0}")]
    Conflict(String),
    /// The database could not be written; nothing changed.
    #[error("the accounts database: {0}")]
    Storage(String),
}

/// Users, teams, namespaces and robot names: one path component of a repository name
/// (`[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`), so a personal or team namespace can hold
/// repositories.
pub fn check_name(what: &str, name: &str) -> Result<(), AccountError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || !crate::oci::name::is_name_component(name) {
        return Err(AccountError::Invalid(format!(
            "{what} name {name:?} is not valid: use 1 to {MAX_NAME_LEN} lowercase letters and digits, \
             with '.', '_' or '-' between them"
        )));
    }
    Ok(())
}

impl Directory {
    pub fn new(settings: Settings, mirrors: Vec<String>) -> Directory {
        Directory {
            users: BTreeMap::new(),
            teams: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            robots: BTreeMap::new(),
            tokens: BTreeMap::new(),
            settings,
            mirrors,
        }
    }

    fn name_taken(&self, name: &str) -> bool {
        self.namespaces.contains_key(name) || self.mirrors.iter().any(|m| m == name)
    }

    /// A user and their personal namespace (private).
    pub fn add_user(
        &mut self,
        name: &str,
        password_hash: String,
        admin: bool,
        now: u64,
    ) -> Result<(), AccountError> {
        check_name("user", name)?;
        if self.users.contains_key(name) {
            return Err(AccountError::Exists(format!("user {name}")));
        }
        if self.name_taken(name) {
            return Err(AccountError::Conflict(format!(
                "namespace {name} exists, and a user's name is their personal namespace; pick another name"
            )));
        }
        self.users.insert(
            name.to_string(),
            User {
                name: name.to_string(),
                password_hash,
                admin,
                created: now,
            },
        );
        self.namespaces.insert(
            name.to_string(),
            Namespace {
                name: name.to_string(),
                owner: Owner::User(name.to_string()),
                visibility: Visibility::Private,
                description: String::new(),
                created: now,
            },
        );
        Ok(())
    }

    pub fn user_mut(&mut self, name: &str) -> Result<&mut User, AccountError> {
        self.users
            .get_mut(name)
            .ok_or_else(|| AccountError::Unknown(format!("user {name}")))
    }

    /// The last admin stays: without one, nobody could manage accounts from the UI.
    pub fn set_admin(&mut self, name: &str, admin: bool) -> Result<(), AccountError> {
        if !admin && self.is_last_admin(name) {
            return Err(AccountError::Conflict(format!(
                "{name} is the only admin; make another user admin first"
            )));
        }
        self.user_mut(name)?.admin = admin;
        Ok(())
    }

    fn is_last_admin(&self, name: &str) -> bool {
        self.users.get(name).is_some_and(|u| u.admin)
            && self.users.values().filter(|u| u.admin).count() == 1
    }

    /// Removes a user with their tokens, memberships and personal namespace (its
    /// robots too). Their repositories stay, owned by the global namespace's admins.
    pub fn remove_user(&mut self, name: &str) -> Result<(), AccountError> {
        if !self.users.contains_key(name) {
            return Err(AccountError::Unknown(format!("user {name}")));
        }
        if self.is_last_admin(name) {
            return Err(AccountError::Conflict(format!(
                "{name} is the only admin; make another user admin first"
            )));
        }
        if let Some(team) = self.teams.values().find(|t| t.sole_owner_is(name)) {
            return Err(AccountError::Conflict(format!(
                "{name} is the only owner of team {}; give the team another owner first",
                team.name
            )));
        }
        self.users.remove(name);
        self.tokens.retain(|_, t| t.user != name);
        for team in self.teams.values_mut() {
            team.members.remove(name);
        }
        if self
            .namespaces
            .get(name)
            .is_some_and(|ns| ns.owner == Owner::User(name.to_string()))
        {
            self.remove_namespace_and_robots(name);
        }
        Ok(())
    }

    /// A team with its creator as owner, and the team's namespace of the same name.
    pub fn create_team(
        &mut self,
        name: &str,
        owner: &str,
        description: &str,
        now: u64,
    ) -> Result<(), AccountError> {
        check_name("team", name)?;
        if !self.users.contains_key(owner) {
            return Err(AccountError::Unknown(format!("user {owner}")));
        }
        if self.teams.contains_key(name) {
            return Err(AccountError::Exists(format!("team {name}")));
        }
        if self.name_taken(name) {
            return Err(AccountError::Exists(format!("namespace {name}")));
        }
        self.teams.insert(
            name.to_string(),
            Team {
                name: name.to_string(),
                description: description.to_string(),
                members: BTreeMap::from([(owner.to_string(), Role::Owner)]),
                created: now,
            },
        );
        self.namespaces.insert(
            name.to_string(),
            Namespace {
                name: name.to_string(),
                owner: Owner::Team(name.to_string()),
                visibility: Visibility::Private,
                description: description.to_string(),
                created: now,
            },
        );
        Ok(())
    }

    /// Removes a team, the namespaces it owns and their robots.
    pub fn remove_team(&mut self, name: &str) -> Result<(), AccountError> {
        if self.teams.remove(name).is_none() {
            return Err(AccountError::Unknown(format!("team {name}")));
        }
        let owned: Vec<String> = self
            .namespaces
            .values()
            .filter(|ns| ns.owner == Owner::Team(name.to_string()))
            .map(|ns| ns.name.clone())
            .collect();
        for ns in owned {
            self.remove_namespace_and_robots(&ns);
        }
        Ok(())
    }

    /// Adds, changes (`Some`) or removes (`None`) a member. A team keeps one owner.
    pub fn set_member(
        &mut self,
        team: &str,
        user: &str,
        role: Option<Role>,
    ) -> Result<(), AccountError> {
        if !self.users.contains_key(user) {
            return Err(AccountError::Unknown(format!("user {user}")));
        }
        let entry = self
            .teams
            .get_mut(team)
            .ok_or_else(|| AccountError::Unknown(format!("team {team}")))?;
        if role != Some(Role::Owner) && entry.sole_owner_is(user) {
            return Err(AccountError::Conflict(format!(
                "{user} is the only owner of team {team}; make another member owner first"
            )));
        }
        match role {
            Some(role) => {
                entry.members.insert(user.to_string(), role);
            }
            None => {
                entry
                    .members
                    .remove(user)
                    .ok_or_else(|| AccountError::Unknown(format!("member {user} of {team}")))?;
            }
        }
        Ok(())
    }

    /// Another namespace for an existing team.
    pub fn create_namespace(
        &mut self,
        name: &str,
        team: &str,
        visibility: Visibility,
        description: &str,
        now: u64,
    ) -> Result<(), AccountError> {
        check_name("namespace", name)?;
        if !self.teams.contains_key(team) {
            return Err(AccountError::Unknown(format!("team {team}")));
        }
        if self.name_taken(name) || self.users.contains_key(name) {
            return Err(AccountError::Exists(format!("namespace {name}")));
        }
        self.namespaces.insert(
            name.to_string(),
            Namespace {
                name: name.to_string(),
                owner: Owner::Team(team.to_string()),
                visibility,
                description: description.to_string(),
                created: now,
            },
        );
        Ok(())
    }

    /// A personal namespace goes with its user, not on its own.
    pub fn remove_namespace(&mut self, name: &str) -> Result<(), AccountError> {
        match self.namespaces.get(name).map(|ns| &ns.owner) {
            None => Err(AccountError::Unknown(format!("namespace {name}"))),
            Some(Owner::User(_)) => Err(AccountError::Conflict(format!(
                "{name} is a personal namespace; it goes when its user is removed"
            ))),
            Some(Owner::Team(_)) => {
                self.remove_namespace_and_robots(name);
                Ok(())
            }
        }
    }

    fn remove_namespace_and_robots(&mut self, name: &str) {
        self.namespaces.remove(name);
        self.robots.retain(|_, r| r.namespace != name);
    }

    /// Visibility of a team or personal namespace, of a mirrored upstream, or (for
    /// `None`) of the global namespace.
    pub fn set_visibility(
        &mut self,
        namespace: Option<&str>,
        visibility: Visibility,
    ) -> Result<(), AccountError> {
        let Some(name) = namespace else {
            self.settings.global_visibility = visibility;
            return Ok(());
        };
        if self.mirrors.iter().any(|m| m == name) {
            self.settings
                .mirror_visibility
                .insert(name.to_string(), visibility);
            return Ok(());
        }
        self.namespaces
            .get_mut(name)
            .ok_or_else(|| AccountError::Unknown(format!("namespace {name}")))?
            .visibility = visibility;
        Ok(())
    }

    pub fn add_robot(&mut self, robot: Robot) -> Result<(), AccountError> {
        check_name("robot", &robot.name)?;
        if !self.namespaces.contains_key(&robot.namespace) {
            return Err(AccountError::Unknown(format!(
                "namespace {}",
                robot.namespace
            )));
        }
        let login = robot.login();
        if self.robots.contains_key(&login) {
            return Err(AccountError::Exists(format!("robot {login}")));
        }
        self.robots.insert(login, robot);
        Ok(())
    }

    pub fn remove_robot(&mut self, login: &str) -> Result<(), AccountError> {
        self.robots
            .remove(login)
            .map(drop)
            .ok_or_else(|| AccountError::Unknown(format!("robot {login}")))
    }

    pub fn add_token(&mut self, token: AppToken) -> Result<(), AccountError> {
        if token.name.trim().is_empty() || token.name.len() > MAX_NAME_LEN {
            return Err(AccountError::Invalid(format!(
                "a token needs a name of 1 to {MAX_NAME_LEN} characters, such as \"ci-deploy\""
            )));
        }
        if !self.users.contains_key(&token.user) {
            return Err(AccountError::Unknown(format!("user {}", token.user)));
        }
        if let Some(ns) = token
            .namespaces
            .iter()
            .find(|ns| !self.namespaces.contains_key(*ns))
        {
            return Err(AccountError::Unknown(format!("namespace {ns}")));
        }
        if self
            .tokens
            .values()
            .any(|t| t.user == token.user && t.name == token.name)
        {
            return Err(AccountError::Exists(format!(
                "token {} of {}",
                token.name, token.user
            )));
        }
        self.tokens.insert(token.id.clone(), token);
        Ok(())
    }

    /// Revokes a token; `user` must own it (admins pass the owner's name).
    pub fn remove_token(&mut self, user: &str, id: &str) -> Result<(), AccountError> {
        match self.tokens.get(id) {
            Some(t) if t.user == user => {
                self.tokens.remove(id);
                Ok(())
            }
            _ => Err(AccountError::Unknown(format!("token {id}"))),
        }
    }

    /// The visibility that applies to a namespace, or to the global one for `None`.
    pub fn visibility_of(&self, namespace: Option<&str>) -> Visibility {
        match namespace {
            None => self.settings.global_visibility,
            Some(name) if self.mirrors.iter().any(|m| m == name) => self
                .settings
                .mirror_visibility
                .get(name)
                .copied()
                .unwrap_or(Visibility::Public),
            Some(name) => self
                .namespaces
                .get(name)
                .map_or(self.settings.global_visibility, |ns| ns.visibility),
        }
    }
}

impl Team {
    fn sole_owner_is(&self, user: &str) -> bool {
        self.members.get(user) == Some(&Role::Owner)
            && self.members.values().filter(|r| **r == Role::Owner).count() == 1
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn settings() -> Settings {
        Settings {
            global_visibility: Visibility::Protected,
            mirror_visibility: BTreeMap::new(),
        }
    }

    /// admin (admin), alice and bob; team `web` owned by alice with bob as viewer.
    pub fn sample() -> Directory {
        let mut d = Directory::new(settings(), vec!["docker.io".into()]);
        d.add_user("admin", "h".into(), true, 1).unwrap();
        d.add_user("alice", "h".into(), false, 1).unwrap();
        d.add_user("bob", "h".into(), false, 1).unwrap();
        d.create_team("web", "alice", "", 2).unwrap();
        d.set_member("web", "bob", Some(Role::Viewer)).unwrap();
        d
    }

    #[test]
    fn names_follow_the_repository_grammar() {
        for good in ["a", "web-team", "a.b", "a__b", "x9"] {
            assert!(check_name("user", good).is_ok(), "{good}");
        }
        for bad in ["", "A", "a b", "-a", "a/b", "a+b", &"a".repeat(65)] {
            let err = check_name("user", bad).unwrap_err();
            assert!(err.to_string().contains("lowercase"), "{bad}: {err}");
        }
    }

    #[test]
    fn users_get_a_private_personal_namespace() {
        let d = sample();
        let ns = &d.namespaces["alice"];
        assert_eq!(ns.owner, Owner::User("alice".into()));
        assert_eq!(ns.visibility, Visibility::Private);
        let mut d = d;
        assert!(matches!(
            d.add_user("alice", "h".into(), false, 3),
            Err(AccountError::Exists(_))
        ));
        assert!(matches!(
            d.add_user("web", "h".into(), false, 3),
            Err(AccountError::Conflict(_))
        ));
        assert!(matches!(
            d.add_user("docker.io", "h".into(), false, 3),
            Err(AccountError::Invalid(_) | AccountError::Conflict(_))
        ));
    }

    #[test]
    fn the_last_admin_and_the_last_owner_stay() {
        let mut d = sample();
        assert!(matches!(
            d.set_admin("admin", false),
            Err(AccountError::Conflict(_))
        ));
        assert!(matches!(
            d.remove_user("admin"),
            Err(AccountError::Conflict(_))
        ));
        assert!(matches!(
            d.remove_user("alice"),
            Err(AccountError::Conflict(_))
        ));
        assert!(matches!(
            d.set_member("web", "alice", Some(Role::Viewer)),
            Err(AccountError::Conflict(_))
        ));
        d.set_member("web", "bob", Some(Role::Owner)).unwrap();
        d.set_member("web", "alice", None).unwrap();
        d.remove_user("alice").unwrap();
        assert!(!d.namespaces.contains_key("alice"));
        assert_eq!(d.teams["web"].members.len(), 1);
    }

    #[test]
    fn removing_a_team_takes_its_namespaces_and_robots() {
        let mut d = sample();
        d.create_namespace("web-tools", "web", Visibility::Public, "", 3)
            .unwrap();
        d.add_robot(Robot {
            namespace: "web-tools".into(),
            name: "ci".into(),
            description: String::new(),
            actions: Actions::parse("pull,push").unwrap(),
            secret_sha256: "00".into(),
            created: 3,
            last_used: None,
        })
        .unwrap();
        assert!(d.robots.contains_key("web-tools+ci"));
        assert!(matches!(
            d.remove_namespace("alice"),
            Err(AccountError::Conflict(_))
        ));
        d.remove_team("web").unwrap();
        assert!(!d.namespaces.contains_key("web"));
        assert!(!d.namespaces.contains_key("web-tools"));
        assert!(d.robots.is_empty());
    }

    #[test]
    fn visibility_of_global_mirrors_and_namespaces() {
        let mut d = sample();
        assert_eq!(d.visibility_of(None), Visibility::Protected);
        assert_eq!(d.visibility_of(Some("docker.io")), Visibility::Public);
        d.set_visibility(Some("docker.io"), Visibility::Private)
            .unwrap();
        assert_eq!(d.visibility_of(Some("docker.io")), Visibility::Private);
        d.set_visibility(Some("web"), Visibility::Public).unwrap();
        assert_eq!(d.visibility_of(Some("web")), Visibility::Public);
        d.set_visibility(None, Visibility::Public).unwrap();
        assert_eq!(d.visibility_of(None), Visibility::Public);
        assert!(d.set_visibility(Some("nope"), Visibility::Public).is_err());
    }

    #[test]
    fn actions_parse_and_print() {
        let a = Actions::parse("push, pull").unwrap();
        assert_eq!(a.names(), ["pull", "push"]);
        assert!(Actions::parse("pull,admin")
            .unwrap_err()
            .contains("not an action"));
        assert_eq!(Actions::parse("").unwrap(), Actions::NONE);
    }

    #[test]
    fn tokens_are_named_once_per_user_and_revoked_by_their_owner() {
        let mut d = sample();
        let token = |id: &str, name: &str| AppToken {
            id: id.into(),
            user: "alice".into(),
            name: name.into(),
            namespaces: vec!["web".into()],
            actions: Actions::ALL,
            secret_sha256: id.into(),
            created: 1,
            expires: Some(10),
            last_used: None,
        };
        d.add_token(token("t1", "ci")).unwrap();
        assert!(matches!(
            d.add_token(token("t2", "ci")),
            Err(AccountError::Exists(_))
        ));
        let mut unknown_ns = token("t3", "other");
        unknown_ns.namespaces = vec!["nope".into()];
        assert!(matches!(
            d.add_token(unknown_ns),
            Err(AccountError::Unknown(_))
        ));
        assert!(d.tokens["t1"].expired(10) && !d.tokens["t1"].expired(9));
        assert!(d.remove_token("bob", "t1").is_err());
        d.remove_token("alice", "t1").unwrap();
        assert!(d.tokens.is_empty());
    }
}
