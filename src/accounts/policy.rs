//! Who may do what where, from the directory alone. Pure: the request path, the token
//! endpoint and the UI all ask here, so they cannot disagree.
//!
//! A repository belongs to the namespace named by its first path component, when one
//! exists (a user's, a team's, or a mirrored upstream's: `docker.io/library/nginx`);
//! everything else is in the global namespace, which admins own.

use super::model::{Actions, Directory, Owner, Role, Visibility};

/// Who is asking, as the directory knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity<'a> {
    Anonymous,
    User(&'a str),
    /// By login, `<namespace>+<name>`.
    Robot(&'a str),
    /// An application token, by id.
    Token(&'a str),
}

/// What an identity may do in one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Rights {
    pub pull: bool,
    pub push: bool,
    pub delete: bool,
    /// Members, robots, visibility.
    pub manage: bool,
}

impl Rights {
    const NONE: Rights = Rights {
        pull: false,
        push: false,
        delete: false,
        manage: false,
    };
    const PULL: Rights = Rights {
        pull: true,
        ..Rights::NONE
    };
    const ALL: Rights = Rights {
        pull: true,
        push: true,
        delete: true,
        manage: true,
    };

    fn of_role(role: Role) -> Rights {
        match role {
            Role::Viewer => Rights::PULL,
            Role::Contributor => Rights {
                push: true,
                ..Rights::PULL
            },
            Role::Owner => Rights::ALL,
        }
    }

    /// Narrowed to what a robot or token was given (push or delete bring pull along,
    /// since pushing clients check for blobs first); never manage.
    fn within(self, actions: Actions) -> Rights {
        Rights {
            pull: self.pull && (actions.pull || actions.push || actions.delete),
            push: self.push && actions.push,
            delete: self.delete && actions.delete,
            manage: false,
        }
    }

    fn or(self, other: Rights) -> Rights {
        Rights {
            pull: self.pull || other.pull,
            push: self.push || other.push,
            delete: self.delete || other.delete,
            manage: self.manage || other.manage,
        }
    }

    /// Mirrored content is read-only: what its upstream has.
    fn read_only(self) -> Rights {
        Rights {
            push: false,
            delete: false,
            ..self
        }
    }

    pub fn allows(self, action: crate::auth::access::Action) -> bool {
        use crate::auth::access::Action;
        match action {
            Action::Pull => self.pull,
            Action::Push => self.push,
            Action::Delete => self.delete,
        }
    }
}

/// The namespace a repository (as stored) belongs to; `None`: the global one.
pub fn namespace_of<'r>(dir: &Directory, repo: &'r str) -> Option<&'r str> {
    let (first, _) = repo.split_once('/')?;
    (dir.namespaces.contains_key(first) || dir.mirrors.iter().any(|m| m == first)).then_some(first)
}

/// What `who` may do with repository `repo` (its stored name) at time `now` (unix ms).
pub fn rights(dir: &Directory, who: Identity, repo: &str, now: u64) -> Rights {
    namespace_rights(dir, who, namespace_of(dir, repo), now)
}

/// What `who` may do in a namespace (`None`: the global one).
pub fn namespace_rights(
    dir: &Directory,
    who: Identity,
    namespace: Option<&str>,
    now: u64,
) -> Rights {
    let visibility = dir.visibility_of(namespace);
    let public = if visibility == Visibility::Public {
        Rights::PULL
    } else {
        Rights::NONE
    };
    let mirrored = namespace.is_some_and(|ns| dir.mirrors.iter().any(|m| m == ns));
    let rights = match who {
        Identity::Anonymous => public,
        Identity::User(name) => user_rights(dir, name, namespace, visibility),
        Identity::Robot(login) => match dir.robots.get(login) {
            Some(robot) if namespace == Some(robot.namespace.as_str()) => {
                Rights::ALL.within(robot.actions).or(public)
            }
            _ => public,
        },
        Identity::Token(id) => match dir.tokens.get(id) {
            Some(token) if !token.expired(now) => {
                let in_scope = token.namespaces.is_empty()
                    || namespace.is_some_and(|ns| token.namespaces.iter().any(|n| n == ns));
                if in_scope {
                    user_rights(dir, &token.user, namespace, visibility)
                        .within(token.actions)
                        .or(public)
                } else {
                    public
                }
            }
            _ => Rights::NONE,
        },
    };
    if mirrored {
        rights.read_only()
    } else {
        rights
    }
}

fn user_rights(
    dir: &Directory,
    name: &str,
    namespace: Option<&str>,
    visibility: Visibility,
) -> Rights {
    let Some(user) = dir.users.get(name) else {
        return Rights::NONE;
    };
    if user.admin {
        return Rights::ALL;
    }
    let signed_in = if visibility >= Visibility::Protected {
        Rights::PULL
    } else {
        Rights::NONE
    };
    let role = namespace
        .and_then(|ns| dir.namespaces.get(ns))
        .and_then(|ns| match &ns.owner {
            Owner::User(owner) if owner == name => Some(Role::Owner),
            Owner::User(_) => None,
            Owner::Team(team) => dir.teams.get(team)?.members.get(name).copied(),
        });
    role.map_or(Rights::NONE, Rights::of_role).or(signed_in)
}

/// Whether `who` may manage accounts (users, settings): admins only.
pub fn is_admin(dir: &Directory, who: Identity) -> bool {
    matches!(who, Identity::User(name) if dir.users.get(name).is_some_and(|u| u.admin))
}

#[cfg(test)]
mod tests {
    use super::super::model::tests::sample;
    use super::super::model::{Actions, AppToken, Robot, Visibility};
    use super::*;

    const P: &str = "pull";
    const PP: &str = "pull,push";
    const PPD: &str = "pull,push,delete";

    fn text(r: Rights) -> String {
        let mut words = Vec::new();
        for (on, word) in [
            (r.pull, "pull"),
            (r.push, "push"),
            (r.delete, "delete"),
            (r.manage, "manage"),
        ] {
            if on {
                words.push(word);
            }
        }
        words.join(",")
    }

    /// The sample plus: carol (contributor in web), a robot `web+ci` (push), a token of
    /// alice's for `web` (pull only) and one that expired.
    fn directory() -> Directory {
        let mut d = sample();
        d.add_user("carol", "h".into(), false, 1).unwrap();
        d.set_member("web", "carol", Some(Role::Contributor))
            .unwrap();
        d.add_robot(Robot {
            namespace: "web".into(),
            name: "ci".into(),
            description: String::new(),
            actions: Actions::parse("push").unwrap(),
            secret_sha256: String::new(),
            created: 1,
            last_used: None,
        })
        .unwrap();
        let token = |id: &str, expires| AppToken {
            id: id.into(),
            user: "alice".into(),
            name: id.into(),
            namespaces: vec!["web".into()],
            actions: Actions::parse("pull").unwrap(),
            secret_sha256: id.into(),
            created: 1,
            expires,
            last_used: None,
        };
        d.add_token(token("fresh", None)).unwrap();
        d.add_token(token("stale", Some(5))).unwrap();
        d
    }

    /// The authorization matrix, row by row: identity × repository × visibility.
    #[test]
    fn matrix() {
        let mut d = directory();
        let cases: &[(Identity, &str, Visibility, &str)] = &[
            // Private team namespace: members by role, nobody else.
            (Identity::Anonymous, "web/app", Visibility::Private, ""),
            (Identity::User("bob"), "web/app", Visibility::Private, P),
            (Identity::User("carol"), "web/app", Visibility::Private, PP),
            (
                Identity::User("alice"),
                "web/app",
                Visibility::Private,
                "pull,push,delete,manage",
            ),
            (
                Identity::User("admin"),
                "web/app",
                Visibility::Private,
                "pull,push,delete,manage",
            ),
            (
                Identity::Robot("web+ci"),
                "web/app",
                Visibility::Private,
                PP,
            ),
            (Identity::Token("fresh"), "web/app", Visibility::Private, P),
            (Identity::Token("stale"), "web/app", Visibility::Private, ""),
            (
                Identity::User("mallory"),
                "web/app",
                Visibility::Private,
                "",
            ),
            // Protected: any signed-in user pulls; robots of other namespaces do not.
            (Identity::Anonymous, "web/app", Visibility::Protected, ""),
            (Identity::User("bob"), "web/app", Visibility::Protected, P),
            (
                Identity::User("admin"),
                "web/app",
                Visibility::Protected,
                "pull,push,delete,manage",
            ),
            // Public: anyone pulls, only members write.
            (Identity::Anonymous, "web/app", Visibility::Public, P),
            (Identity::Token("stale"), "web/app", Visibility::Public, ""),
            (Identity::Robot("web+ci"), "web/app", Visibility::Public, PP),
        ];
        for (who, repo, visibility, want) in cases {
            d.set_visibility(Some("web"), *visibility).unwrap();
            let got = text(rights(&d, *who, repo, 10));
            assert_eq!(&got, want, "{who:?} on {repo} ({visibility:?})");
        }
    }

    #[test]
    fn personal_global_and_mirrored_namespaces() {
        let mut d = directory();
        let r = |d: &Directory, who, repo| text(rights(d, who, repo, 10));
        // Personal: the user owns it; others see it only when it is opened up.
        assert_eq!(
            r(&d, Identity::User("bob"), "bob/tool"),
            "pull,push,delete,manage"
        );
        assert_eq!(r(&d, Identity::User("alice"), "bob/tool"), "");
        d.set_visibility(Some("bob"), Visibility::Protected)
            .unwrap();
        assert_eq!(r(&d, Identity::User("alice"), "bob/tool"), P);
        // Global (protected in the sample): admins write, signed-in users pull.
        assert_eq!(r(&d, Identity::User("carol"), "nginx"), P);
        assert_eq!(r(&d, Identity::User("carol"), "unknown/app"), P);
        assert_eq!(r(&d, Identity::Anonymous, "nginx"), "");
        assert_eq!(
            r(&d, Identity::User("admin"), "nginx"),
            "pull,push,delete,manage"
        );
        // A robot reaches only its namespace; a token only the namespaces it names.
        assert_eq!(r(&d, Identity::Robot("web+ci"), "nginx"), "");
        assert_eq!(r(&d, Identity::Token("fresh"), "alice/own"), "");
        assert_eq!(r(&d, Identity::Robot("gone+ci"), "web/app"), "");
        // Mirrors are read-only, public unless the admin says otherwise.
        let nginx = "docker.io/library/nginx";
        assert_eq!(r(&d, Identity::Anonymous, nginx), P);
        assert_eq!(r(&d, Identity::User("admin"), nginx), "pull,manage");
        d.set_visibility(Some("docker.io"), Visibility::Protected)
            .unwrap();
        assert_eq!(r(&d, Identity::Anonymous, nginx), "");
        assert_eq!(r(&d, Identity::Robot("web+ci"), nginx), "");
        assert_eq!(r(&d, Identity::User("bob"), nginx), P);
    }

    #[test]
    fn tokens_never_exceed_their_user() {
        let mut d = directory();
        d.add_token(AppToken {
            id: "wide".into(),
            user: "bob".into(),
            name: "wide".into(),
            namespaces: vec![],
            actions: Actions::ALL,
            secret_sha256: "w".into(),
            created: 1,
            expires: None,
            last_used: None,
        })
        .unwrap();
        // bob is a viewer in web: an all-actions token still only pulls there.
        assert_eq!(text(rights(&d, Identity::Token("wide"), "web/app", 10)), P);
        assert_eq!(text(rights(&d, Identity::Token("wide"), "bob/x", 10)), PPD);
        assert!(is_admin(&d, Identity::User("admin")));
        assert!(!is_admin(&d, Identity::Token("wide")));
        assert!(!is_admin(&d, Identity::User("bob")));
    }
}
