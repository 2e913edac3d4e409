//! Teams: any user creates one (and owns it); its owners and admins change members
//! and remove it; a member may leave. Callers see the teams they are in (admins all);
//! other teams are answered as unknown, so their names and members stay private.

use super::{ManageError, Manager};
use crate::accounts::model::{Owner, Team};
use crate::accounts::{now_ms, Directory, Role};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberView {
    pub user: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TeamView {
    pub name: String,
    pub description: String,
    /// Unix milliseconds.
    pub created: u64,
    pub members: Vec<MemberView>,
    /// The namespaces the team owns (the first has the team's name).
    pub namespaces: Vec<String>,
}

fn team_view(dir: &Directory, team: &Team) -> TeamView {
    let owned = |name: &str| {
        dir.namespaces
            .get(name)
            .is_some_and(|ns| ns.owner == Owner::Team(team.name.clone()))
    };
    let mut namespaces: Vec<String> = dir
        .namespaces
        .keys()
        .filter(|name| owned(name) && **name != team.name)
        .cloned()
        .collect();
    if owned(&team.name) {
        namespaces.insert(0, team.name.clone());
    }
    TeamView {
        name: team.name.clone(),
        description: team.description.clone(),
        created: team.created,
        members: team
            .members
            .iter()
            .map(|(user, role)| MemberView {
                user: user.clone(),
                role: *role,
            })
            .collect(),
        namespaces,
    }
}

fn is_admin(dir: &Directory, user: &str) -> bool {
    dir.users.get(user).is_some_and(|u| u.admin)
}

/// Pure: whether `user` sees `team` (a member, or an admin).
fn sees(dir: &Directory, user: &str, team: &Team) -> bool {
    is_admin(dir, user) || team.members.contains_key(user)
}

/// Pure: whether `user` may change `team` (its owners and admins).
pub(super) fn manages(dir: &Directory, user: &str, team: &str) -> bool {
    is_admin(dir, user)
        || dir
            .teams
            .get(team)
            .is_some_and(|t| t.members.get(user) == Some(&Role::Owner))
}

/// Pure: whether `user` may give `member` the role `role` in `team` (`None` removes):
/// a team's managers may; anyone may leave.
fn may_set_member(
    dir: &Directory,
    user: &str,
    team: &str,
    member: &str,
    role: Option<Role>,
) -> bool {
    manages(dir, user, team) || (user == member && role.is_none())
}

fn unknown(team: &str) -> ManageError {
    ManageError::NotFound(format!(
        "team {team} does not exist, or you are not a member"
    ))
}

impl Manager<'_> {
    /// Admins: every team; others: the teams they are in.
    pub fn teams(&self) -> Result<Vec<TeamView>, ManageError> {
        let dir = self.directory()?;
        let user = self.person()?;
        Ok(dir
            .teams
            .values()
            .filter(|t| sees(&dir, user, t))
            .map(|t| team_view(&dir, t))
            .collect())
    }

    pub fn team(&self, name: &str) -> Result<TeamView, ManageError> {
        let dir = self.directory()?;
        let user = self.person()?;
        match dir.teams.get(name) {
            Some(team) if sees(&dir, user, team) => Ok(team_view(&dir, team)),
            _ => Err(unknown(name)),
        }
    }

    /// A team owned by the caller, with a private namespace of the same name.
    pub async fn create_team(
        &self,
        name: &str,
        description: &str,
    ) -> Result<TeamView, ManageError> {
        self.accounts()?;
        let user = self.person()?.to_string();
        self.change(|d| d.create_team(name, &user, description, now_ms()))
            .await?;
        self.changed("team.create", &format!("team:{name}"), None);
        self.team(name)
    }

    /// Removes the team with its namespaces and their robots (repositories stay).
    pub async fn remove_team(&self, name: &str) -> Result<(), ManageError> {
        self.require_team_manager(name)?;
        self.change(|d| d.remove_team(name)).await?;
        self.changed("team.remove", &format!("team:{name}"), None);
        Ok(())
    }

    /// Adds, changes (`Some`) or removes (`None`) a member.
    pub async fn set_member(
        &self,
        team: &str,
        member: &str,
        role: Option<Role>,
    ) -> Result<TeamView, ManageError> {
        let dir = self.directory()?;
        let user = self.person()?;
        if !may_set_member(&dir, user, team, member, role) {
            return Err(self.refusal(&dir, user, team));
        }
        self.change(|d| d.set_member(team, member, role)).await?;
        let (action, detail) = match role {
            Some(role) => ("member.set", format!("{member} {role:?}").to_lowercase()),
            None => ("member.remove", member.to_string()),
        };
        self.changed(action, &format!("team:{team}"), Some(detail));
        let dir = self.directory()?;
        match dir.teams.get(team) {
            Some(t) if sees(&dir, user, t) => Ok(team_view(&dir, t)),
            // The caller left the team.
            _ => Ok(TeamView {
                members: Vec::new(),
                ..team_view(&dir, &dir.teams[team])
            }),
        }
    }

    /// Ok if the caller owns `team` or is an admin.
    pub(super) fn require_team_manager(&self, team: &str) -> Result<(), ManageError> {
        let dir = self.directory()?;
        let user = self.person()?;
        if manages(&dir, user, team) {
            Ok(())
        } else {
            Err(self.refusal(&dir, user, team))
        }
    }

    /// Why a change to `team` is refused: unknown to those who cannot see it.
    fn refusal(&self, dir: &Directory, user: &str, team: &str) -> ManageError {
        match dir.teams.get(team) {
            Some(t) if sees(dir, user, t) => ManageError::Forbidden(format!(
                "only owners of team {team} (and admins) change it; ask one of them"
            )),
            _ => unknown(team),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{api, user};
    use super::*;
    use crate::accounts::model::tests::sample;
    use crate::accounts::Visibility;

    #[test]
    fn owners_and_admins_manage_members_leave() {
        let d = sample();
        assert!(manages(&d, "alice", "web"));
        assert!(manages(&d, "admin", "web"));
        assert!(!manages(&d, "bob", "web"));
        assert!(!manages(&d, "alice", "nope"));
        let viewer = Some(Role::Viewer);
        assert!(may_set_member(&d, "alice", "web", "bob", Some(Role::Owner)));
        assert!(!may_set_member(&d, "bob", "web", "bob", Some(Role::Owner)));
        assert!(may_set_member(&d, "bob", "web", "bob", None), "leaving");
        assert!(!may_set_member(&d, "bob", "web", "alice", None));
        assert!(!may_set_member(&d, "bob", "web", "admin", viewer));
        assert!(sees(&d, "bob", &d.teams["web"]));
        assert!(sees(&d, "admin", &d.teams["web"]));
    }

    #[test]
    fn a_team_lists_its_own_namespace_first() {
        let mut d = sample();
        d.create_namespace("a-tools", "web", Visibility::Public, "", 3)
            .unwrap();
        let view = team_view(&d, &d.teams["web"]);
        assert_eq!(view.namespaces, ["web", "a-tools"]);
        assert_eq!(
            view.members,
            [
                MemberView {
                    user: "alice".into(),
                    role: Role::Owner
                },
                MemberView {
                    user: "bob".into(),
                    role: Role::Viewer
                }
            ]
        );
    }

    #[tokio::test]
    async fn teams_are_seen_by_members_and_changed_by_owners() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(&dir, true).await;
        let alice = Manager::new(&api, user("alice"), None);
        let bob = Manager::new(&api, user("bob"), None);
        let admin = Manager::new(&api, user("admin"), None);
        let ops = bob.create_team("ops", "on call").await.unwrap();
        assert_eq!(ops.members[0].role, Role::Owner);
        assert_eq!(alice.team("ops").unwrap_err().status(), 404);
        assert_eq!(alice.teams().unwrap().len(), 1);
        assert_eq!(admin.teams().unwrap().len(), 2);
        assert_eq!(
            bob.set_member("web", "bob", Some(Role::Owner))
                .await
                .unwrap_err()
                .status(),
            403
        );
        assert_eq!(
            alice
                .set_member("ops", "alice", Some(Role::Viewer))
                .await
                .unwrap_err()
                .status(),
            404
        );
        let web = alice
            .set_member("web", "bob", Some(Role::Contributor))
            .await
            .unwrap();
        assert_eq!(web.members[1].role, Role::Contributor);
        let left = bob.set_member("web", "bob", None).await.unwrap();
        assert!(left.members.is_empty());
        assert_eq!(bob.remove_team("web").await.unwrap_err().status(), 404);
        admin.remove_team("ops").await.unwrap();
        assert_eq!(bob.teams().unwrap().len(), 0);
    }
}
