//! Access rules: who may pull, push and delete which repositories. Pure.
//!
//! Rules are tried in order; the first whose pattern matches the repository decides.
//! No matching rule means no access. Push implies pull on the same repository, since
//! every client checks for existing blobs before it uploads.

use super::Principal;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

/// Who a rule names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// `anonymous`: everyone, with or without credentials.
    Anyone,
    /// `*` or `authenticated`: any user who logged in.
    Authenticated,
    /// `@name`: members of a group from `[groups]`.
    Group(String),
    /// Anything else: one user.
    User(String),
}

impl Subject {
    pub fn parse(s: &str) -> Subject {
        match s {
            "anonymous" => Subject::Anyone,
            "*" | "authenticated" => Subject::Authenticated,
            _ => match s.strip_prefix('@') {
                Some(group) => Subject::Group(group.to_string()),
                None => Subject::User(s.to_string()),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRule {
    /// Glob patterns: `*` matches any run of characters, `/` included.
    pub repositories: Vec<String>,
    pub pull: Vec<Subject>,
    pub push: Vec<Subject>,
    pub delete: Vec<Subject>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRules {
    rules: Vec<AccessRule>,
    groups: BTreeMap<String, Vec<String>>,
    /// Who may call the maintenance endpoints (`/admin/...`).
    admins: Vec<Subject>,
}

impl AccessRules {
    pub fn new(rules: Vec<AccessRule>, groups: BTreeMap<String, Vec<String>>) -> AccessRules {
        AccessRules {
            rules,
            groups,
            admins: Vec::new(),
        }
    }

    /// Names who may call the maintenance endpoints.
    pub fn with_admins(mut self, admins: Vec<Subject>) -> AccessRules {
        self.admins = admins;
        self
    }

    pub fn allows_admin(&self, principal: &Principal) -> bool {
        self.admins.iter().any(|s| self.names(s, principal))
    }

    /// Without rules: an open registry when there is no authentication (like `registry:2`),
    /// else every logged-in user may do everything and anonymous requests nothing.
    pub fn default_for(auth_enabled: bool, groups: BTreeMap<String, Vec<String>>) -> AccessRules {
        let who = if auth_enabled {
            Subject::Authenticated
        } else {
            Subject::Anyone
        };
        let rule = AccessRule {
            repositories: vec!["*".to_string()],
            pull: vec![who.clone()],
            push: vec![who.clone()],
            delete: vec![who.clone()],
        };
        // Whoever may delete everything may also collect garbage.
        AccessRules::new(vec![rule], groups).with_admins(vec![who])
    }

    pub fn allows(&self, principal: &Principal, repo: &str, action: Action) -> bool {
        let Some(rule) = self
            .rules
            .iter()
            .find(|r| r.repositories.iter().any(|p| glob_match(p, repo)))
        else {
            return false;
        };
        let named = |subjects: &[Subject]| subjects.iter().any(|s| self.names(s, principal));
        match action {
            Action::Pull => named(&rule.pull) || named(&rule.push),
            Action::Push => named(&rule.push),
            Action::Delete => named(&rule.delete),
        }
    }

    /// Whether `rule` lets `principal` pull (pushers may pull too).
    fn rule_pulls(&self, rule: &AccessRule, principal: &Principal) -> bool {
        rule.pull
            .iter()
            .chain(&rule.push)
            .any(|s| self.names(s, principal))
    }

    /// Whether `principal` may pull some repository (anonymous pull where rules allow it).
    pub fn pulls_somewhere(&self, principal: &Principal) -> bool {
        self.rules
            .iter()
            .any(|rule| self.rule_pulls(rule, principal))
    }

    /// Whether `principal` may pull every repository there could be (the catalog-wide
    /// view that automatic mounts need, since they take a blob from any repository).
    pub fn pulls_everything(&self, principal: &Principal) -> bool {
        self.rules
            .iter()
            .all(|rule| self.rule_pulls(rule, principal))
            && self
                .rules
                .iter()
                .any(|r| r.repositories.iter().any(|p| p == "*"))
    }

    fn names(&self, subject: &Subject, principal: &Principal) -> bool {
        match (subject, principal) {
            (Subject::Anyone, _) => true,
            (Subject::Authenticated, Principal::User(_)) => true,
            (Subject::Group(g), Principal::User(u)) => self
                .groups
                .get(g)
                .is_some_and(|members| members.iter().any(|m| m == &**u)),
            (Subject::User(name), Principal::User(u)) => name == &**u,
            _ => false,
        }
    }
}

/// `*` matches any run of characters (including `/`); everything else is literal.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and how much of the name it has swallowed.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn user(name: &str) -> Principal {
        Principal::User(Arc::from(name))
    }

    fn subjects(names: &[&str]) -> Vec<Subject> {
        names.iter().map(|n| Subject::parse(n)).collect()
    }

    #[test]
    fn admins_are_named_or_follow_the_default_rule() {
        let open = AccessRules::default_for(false, BTreeMap::new());
        assert!(open.allows_admin(&Principal::Anonymous));
        let logins = AccessRules::default_for(true, BTreeMap::new());
        assert!(!logins.allows_admin(&Principal::Anonymous));
        assert!(logins.allows_admin(&user("alice")));
        let groups = BTreeMap::from([("ops".to_string(), vec!["bob".to_string()])]);
        let named = AccessRules::new(Vec::new(), groups).with_admins(subjects(&["root", "@ops"]));
        assert!(named.allows_admin(&user("root")) && named.allows_admin(&user("bob")));
        assert!(!named.allows_admin(&user("alice")));
        assert!(!named.allows_admin(&Principal::Anonymous));
        // Rules of one's own name no admin by default.
        assert!(!AccessRules::new(Vec::new(), BTreeMap::new()).allows_admin(&user("root")));
    }

    fn rules() -> AccessRules {
        let groups = BTreeMap::from([(
            "devs".to_string(),
            vec!["alice".to_string(), "bob".to_string()],
        )]);
        AccessRules::new(
            vec![
                AccessRule {
                    repositories: vec!["public/*".into()],
                    pull: subjects(&["anonymous"]),
                    push: subjects(&["@devs"]),
                    delete: subjects(&["admin"]),
                },
                AccessRule {
                    repositories: vec!["team/*".into(), "tools".into()],
                    pull: subjects(&["*"]),
                    push: subjects(&["alice"]),
                    delete: vec![],
                },
            ],
            groups,
        )
    }

    #[test]
    fn first_matching_rule_decides() {
        let r = rules();
        assert!(r.allows(&Principal::Anonymous, "public/nginx", Action::Pull));
        assert!(!r.allows(&Principal::Anonymous, "public/nginx", Action::Push));
        assert!(r.allows(&user("bob"), "public/nginx", Action::Push));
        assert!(!r.allows(&user("carol"), "public/nginx", Action::Push));
        assert!(r.allows(&user("admin"), "public/a/b", Action::Delete));
        assert!(!r.allows(&Principal::Anonymous, "team/app", Action::Pull));
        assert!(r.allows(&user("carol"), "team/app", Action::Pull));
        assert!(r.allows(&user("alice"), "tools", Action::Push));
        assert!(!r.allows(&user("alice"), "team/app", Action::Delete));
        assert!(
            !r.allows(&user("alice"), "other", Action::Pull),
            "no rule, no access"
        );
    }

    #[test]
    fn push_implies_pull() {
        let r = AccessRules::new(
            vec![AccessRule {
                repositories: vec!["*".into()],
                pull: vec![],
                push: subjects(&["ci"]),
                delete: vec![],
            }],
            BTreeMap::new(),
        );
        assert!(r.allows(&user("ci"), "x", Action::Pull));
        assert!(!r.allows(&user("other"), "x", Action::Pull));
    }

    #[test]
    fn defaults() {
        let open = AccessRules::default_for(false, BTreeMap::new());
        assert!(open.allows(&Principal::Anonymous, "a/b", Action::Delete));
        assert!(open.pulls_everything(&Principal::Anonymous));
        let closed = AccessRules::default_for(true, BTreeMap::new());
        assert!(!closed.allows(&Principal::Anonymous, "a", Action::Pull));
        assert!(closed.allows(&user("u"), "a", Action::Push));
        assert!(!closed.pulls_everything(&Principal::Anonymous));
        assert!(closed.pulls_everything(&user("u")));
        assert!(!rules().pulls_everything(&user("alice")));
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "a/b/c"));
        assert!(glob_match("team/*", "team/app"));
        assert!(glob_match("team/*", "team/a/b"));
        assert!(!glob_match("team/*", "teams/app"));
        assert!(glob_match("*/app", "x/y/app"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }
}
