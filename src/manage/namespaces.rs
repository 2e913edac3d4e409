//! Namespaces: every user's personal one, the teams', the mirrored upstreams' and the
//! global one. A caller sees those they may pull from or manage, each with their
//! rights in it; those who manage one (its owners, admins) change its visibility.

use super::{ManageError, Manager};
use crate::accounts::model::Owner;
use crate::accounts::{now_ms, policy, Directory, Identity, Rights, Visibility};
use serde::Serialize;

/// How the front ends name the global namespace (repositories outside every other
/// namespace): not a valid namespace name, so it names no other.
pub const GLOBAL: &str = "_global";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceKind {
    /// A user's, named after them.
    Personal,
    Team,
    /// A mirrored upstream's cache (`docker.io`): read-only.
    Mirror,
    Global,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamespaceView {
    /// [`GLOBAL`] for the global namespace.
    pub name: String,
    pub kind: NamespaceKind,
    /// The user or team that owns it; `None` for mirrors and the global one (admins').
    pub owner: Option<String>,
    pub visibility: Visibility,
    pub description: String,
    /// Unix milliseconds; `None` for mirrors and the global one.
    pub created: Option<u64>,
    /// What the caller may do in it.
    pub rights: Rights,
}

/// The namespace a front end's name stands for: `None` for [`GLOBAL`].
pub fn namespace_arg(name: &str) -> Option<&str> {
    (name != GLOBAL).then_some(name)
}

/// Pure: the view of one namespace (`None`: the global one), if it exists and `who`
/// may pull from it or manage it.
fn view(dir: &Directory, who: Identity, name: Option<&str>, now: u64) -> Option<NamespaceView> {
    let rights = policy::namespace_rights(dir, who, name, now);
    if !(rights.pull || rights.manage) {
        return None;
    }
    let visibility = dir.visibility_of(name);
    let bare = |kind| NamespaceView {
        name: name.unwrap_or(GLOBAL).to_string(),
        kind,
        owner: None,
        visibility,
        description: String::new(),
        created: None,
        rights,
    };
    match name {
        None => Some(bare(NamespaceKind::Global)),
        Some(n) if dir.mirrors.iter().any(|m| m == n) => Some(bare(NamespaceKind::Mirror)),
        Some(n) => {
            let ns = dir.namespaces.get(n)?;
            let (kind, owner) = match &ns.owner {
                Owner::User(user) => (NamespaceKind::Personal, user),
                Owner::Team(team) => (NamespaceKind::Team, team),
            };
            Some(NamespaceView {
                owner: Some(owner.clone()),
                description: ns.description.clone(),
                created: Some(ns.created),
                ..bare(kind)
            })
        }
    }
}

/// Pure: every namespace `who` sees: the global one, then the others by name.
fn views(dir: &Directory, who: Identity, now: u64) -> Vec<NamespaceView> {
    let mut names: Vec<&str> = dir.namespaces.keys().map(String::as_str).collect();
    names.extend(dir.mirrors.iter().map(String::as_str));
    names.sort_unstable();
    std::iter::once(None)
        .chain(names.into_iter().map(Some))
        .filter_map(|name| view(dir, who, name, now))
        .collect()
}

fn unknown(name: Option<&str>) -> ManageError {
    ManageError::NotFound(format!(
        "namespace {} does not exist, or you may not see it",
        name.unwrap_or(GLOBAL)
    ))
}

impl Manager<'_> {
    pub fn namespaces(&self) -> Result<Vec<NamespaceView>, ManageError> {
        let dir = self.directory()?;
        Ok(views(&dir, self.identity(), now_ms()))
    }

    /// One namespace by its front-end name ([`GLOBAL`] for the global one).
    pub fn namespace(&self, name: &str) -> Result<NamespaceView, ManageError> {
        let dir = self.directory()?;
        let name = namespace_arg(name);
        view(&dir, self.identity(), name, now_ms()).ok_or_else(|| unknown(name))
    }

    /// Another namespace for a team; its owners and admins create one.
    pub async fn create_namespace(
        &self,
        name: &str,
        team: &str,
        visibility: Visibility,
        description: &str,
    ) -> Result<NamespaceView, ManageError> {
        self.require_team_manager(team)?;
        self.change(|d| d.create_namespace(name, team, visibility, description, now_ms()))
            .await?;
        self.changed(
            "namespace.create",
            &format!("namespace:{name}"),
            Some(format!("team {team}")),
        );
        self.namespace(name)
    }

    /// The visibility of a namespace (`None`: the global one).
    pub async fn set_visibility(
        &self,
        namespace: Option<&str>,
        visibility: Visibility,
    ) -> Result<NamespaceView, ManageError> {
        self.require_manager(namespace)?;
        self.change(|d| d.set_visibility(namespace, visibility))
            .await?;
        let target = format!("namespace:{}", namespace.unwrap_or(GLOBAL));
        self.changed(
            "namespace.visibility",
            &target,
            Some(format!("{visibility:?}").to_lowercase()),
        );
        self.namespace(namespace.unwrap_or(GLOBAL))
    }

    /// Removes a team's namespace and its robots; its repositories stay (in the
    /// global namespace from then on).
    pub async fn remove_namespace(&self, name: &str) -> Result<(), ManageError> {
        self.require_manager(Some(name))?;
        self.change(|d| d.remove_namespace(name)).await?;
        self.changed("namespace.remove", &format!("namespace:{name}"), None);
        Ok(())
    }

    /// Ok if the caller is a user who manages `namespace` (`None`: the global one).
    pub(super) fn require_manager(&self, namespace: Option<&str>) -> Result<(), ManageError> {
        let dir = self.directory()?;
        let user = self.person()?;
        match view(&dir, Identity::User(user), namespace, now_ms()) {
            Some(ns) if ns.rights.manage => Ok(()),
            Some(ns) => Err(ManageError::Forbidden(format!(
                "only those who manage namespace {} (its owners, admins) change it",
                ns.name
            ))),
            None => Err(unknown(namespace)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{api, user};
    use super::*;
    use crate::accounts::model::tests::sample;

    fn names(views: &[NamespaceView]) -> Vec<&str> {
        views.iter().map(|v| v.name.as_str()).collect()
    }

    #[test]
    fn callers_see_what_they_may_pull_or_manage() {
        let mut d = sample();
        let bob = views(&d, Identity::User("bob"), 1);
        // Global is protected in the sample; docker.io public; alice's is private.
        assert_eq!(names(&bob), [GLOBAL, "bob", "docker.io", "web"]);
        let web = bob.iter().find(|v| v.name == "web").unwrap();
        assert_eq!(
            (
                web.kind,
                web.owner.as_deref(),
                web.rights.pull,
                web.rights.push
            ),
            (NamespaceKind::Team, Some("web"), true, false)
        );
        assert_eq!(bob[0].kind, NamespaceKind::Global);
        assert_eq!(names(&views(&d, Identity::Anonymous, 1)), ["docker.io"]);
        assert_eq!(
            names(&views(&d, Identity::User("admin"), 1)),
            [GLOBAL, "admin", "alice", "bob", "docker.io", "web"]
        );
        d.set_visibility(Some("alice"), Visibility::Public).unwrap();
        assert!(view(&d, Identity::Anonymous, Some("alice"), 1).is_some());
        assert!(view(&d, Identity::Anonymous, Some("nope"), 1).is_none());
        assert_eq!(namespace_arg(GLOBAL), None);
        assert_eq!(namespace_arg("web"), Some("web"));
    }

    #[tokio::test]
    async fn managers_change_visibility_and_add_namespaces() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(&dir, true).await;
        let alice = Manager::new(&api, user("alice"), None);
        let bob = Manager::new(&api, user("bob"), None);
        let admin = Manager::new(&api, user("admin"), None);
        let web = alice
            .set_visibility(Some("web"), Visibility::Public)
            .await
            .unwrap();
        assert_eq!(web.visibility, Visibility::Public);
        assert_eq!(
            bob.set_visibility(Some("web"), Visibility::Private)
                .await
                .unwrap_err()
                .status(),
            403
        );
        assert_eq!(
            bob.set_visibility(Some("alice"), Visibility::Public)
                .await
                .unwrap_err()
                .status(),
            404
        );
        assert_eq!(
            alice
                .set_visibility(None, Visibility::Public)
                .await
                .unwrap_err()
                .status(),
            403
        );
        let global = admin
            .set_visibility(None, Visibility::Public)
            .await
            .unwrap();
        assert_eq!(
            (global.name.as_str(), global.visibility),
            (GLOBAL, Visibility::Public)
        );
        let tools = alice
            .create_namespace("web-tools", "web", Visibility::Protected, "tools")
            .await
            .unwrap();
        assert_eq!(tools.owner.as_deref(), Some("web"));
        assert_eq!(
            bob.create_namespace("x", "web", Visibility::Public, "")
                .await
                .unwrap_err()
                .status(),
            403
        );
        assert_eq!(
            bob.remove_namespace("web-tools")
                .await
                .unwrap_err()
                .status(),
            403
        );
        alice.remove_namespace("web-tools").await.unwrap();
        assert_eq!(alice.namespace("web-tools").unwrap_err().status(), 404);
        assert_eq!(
            alice.remove_namespace("alice").await.unwrap_err().status(),
            409
        );
    }
}
