//! One question for the request path, the token endpoint and the UI: may this
//! principal do this? Answered by the `[[access]]` rules (htpasswd set-ups) or by the
//! accounts directory (`[accounts]`); a bearer token answers for itself.

use super::access::{AccessRules, Action};
use super::Principal;
use crate::accounts::{Accounts, Actions};
use std::sync::Arc;

/// Clone: a copy goes along with work on the blocking pool (an activity export).
#[derive(Clone)]
pub enum Policy {
    Rules(AccessRules),
    Accounts(Arc<Accounts>),
}

impl Policy {
    /// For a repository by its stored name.
    pub fn allows(&self, principal: &Principal, repo: &str, action: Action) -> bool {
        if let Principal::Bearer(grant) = principal {
            return grant.allows(repo, action);
        }
        match self {
            Policy::Rules(rules) => rules.allows(principal, repo, action),
            Policy::Accounts(accounts) => accounts.rights(principal, repo).allows(action),
        }
    }

    /// Whether a repository shows in `principal`'s catalog: what its subject may pull,
    /// since a bearer token's grant names only the repositories it was asked for.
    pub fn lists(&self, principal: &Principal, repo: &str) -> bool {
        self.allows(&subject(principal), repo, Action::Pull)
    }

    /// Everything a principal may do with a repository, for a token's grant.
    pub fn actions(&self, principal: &Principal, repo: &str) -> Actions {
        let may = |action| self.allows(principal, repo, action);
        Actions {
            pull: may(Action::Pull),
            push: may(Action::Push),
            delete: may(Action::Delete),
        }
    }

    /// The maintenance endpoints and account administration.
    pub fn allows_admin(&self, principal: &Principal) -> bool {
        let principal = subject(principal);
        match self {
            Policy::Rules(rules) => rules.allows_admin(&principal),
            Policy::Accounts(accounts) => accounts.is_admin(&principal),
        }
    }

    /// Automatic mounts take a blob from any repository, so they need pull rights on all.
    pub fn pulls_everything(&self, principal: &Principal) -> bool {
        let principal = subject(principal);
        match self {
            Policy::Rules(rules) => rules.pulls_everything(&principal),
            Policy::Accounts(accounts) => accounts.is_admin(&principal),
        }
    }
}

/// Checks that a token's grant does not carry are made for whom it was issued to.
fn subject(principal: &Principal) -> Principal {
    match principal {
        Principal::Bearer(grant) => grant.subject(),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Grant, GrantKind};

    #[test]
    fn a_bearer_token_allows_its_grant_and_lists_what_its_subject_may_pull() {
        let policy = Policy::Rules(AccessRules::default_for(true, Default::default()));
        let grant = Grant {
            subject: Arc::from("alice"),
            kind: GrantKind::User,
            repositories: vec![("a/b".to_string(), Actions::parse("pull").unwrap())],
        };
        let bearer = Principal::Bearer(Arc::new(grant));
        assert!(policy.allows(&bearer, "a/b", Action::Pull));
        assert!(!policy.allows(&bearer, "a/b", Action::Push));
        assert!(!policy.allows(&bearer, "c/d", Action::Pull));
        assert!(policy.lists(&bearer, "c/d"));
        assert!(!policy.lists(&Principal::Anonymous, "c/d"));
        assert!(policy.allows_admin(&bearer));
    }
}
