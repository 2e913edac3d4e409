//! The activity log as callers may see it: admins everything; others their own
//! entries and those of repositories they may pull, without other people's client
//! addresses. Entries of account changes are recorded by [`Manager::changed`].

use super::{ManageError, Manager};
use crate::activity::{ActivityError, Cursor, Entry, Filter};
use crate::auth::access::Action;
use crate::auth::policy::Policy;
use crate::auth::Principal;
use crate::oci::RepoName;
use serde::Serialize;
use std::io::Seek;

/// Pages of the log read for one answer at most, when most entries are not the
/// caller's to see; the answer then ends early, with a cursor to go on from.
const MAX_ROUNDS: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActivityPage {
    /// Newest first.
    pub entries: Vec<Entry>,
    /// Pass as `cursor` for the next page; `None` at the end of the log.
    pub next: Option<String>,
}

/// Pure: what of `entry` a caller who is not an admin sees. `me` is who they signed in
/// as; `may_pull` says whether they may pull a repository.
fn shown(entry: Entry, me: Option<&str>, may_pull: impl Fn(&RepoName) -> bool) -> Option<Entry> {
    if me.is_some() && entry.actor.as_deref() == me {
        return Some(entry);
    }
    let repository = RepoName::parse(&entry.target).ok()?;
    may_pull(&repository).then_some(Entry {
        client: None,
        ..entry
    })
}

fn internal(err: ActivityError) -> ManageError {
    tracing::error!(error = %err, "activity log");
    ManageError::Internal(err.to_string())
}

/// Who reads the log, owned, so that an export can take it to the blocking pool.
struct Reader {
    policy: Policy,
    who: Principal,
    admin: bool,
}

impl Reader {
    /// What the reader sees of `entry` (everything, for admins).
    fn sees(&self, entry: Entry) -> Option<Entry> {
        if self.admin {
            return Some(entry);
        }
        shown(entry, self.who.name(), |repo| {
            self.policy.allows(&self.who, repo.as_str(), Action::Pull)
        })
    }
}

impl Manager<'_> {
    fn reader(&self) -> Reader {
        Reader {
            policy: self.api.policy.clone(),
            who: self.who.clone(),
            admin: self.is_admin(),
        }
    }

    /// Records a change someone made: who, from where, `action` (`team.create`) on
    /// `target` (`team:web`, or a repository), and what changed.
    pub(super) fn changed(&self, action: &str, target: &str, detail: Option<String>) {
        self.api.activity.record(Entry {
            time: crate::activity::now_ms(),
            actor: self.who.name().map(str::to_string),
            client: self.client.map(|ip| ip.to_string()),
            action: action.to_string(),
            target: target.to_string(),
            detail,
            count: 1,
        });
    }

    /// A page of the entries `filter` matches that the caller may see, newest first,
    /// below `cursor`.
    pub async fn activity(
        &self,
        filter: &Filter,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<ActivityPage, ManageError> {
        let reader = self.reader();
        let limit = limit.clamp(1, crate::activity::MAX_PAGE);
        let mut entries = Vec::new();
        let mut next = cursor;
        for _ in 0..MAX_ROUNDS {
            // Never more than still fits, so the page's cursor is where this one ends.
            let page = self
                .api
                .activity
                .query(filter, next, limit - entries.len())
                .await
                .map_err(internal)?;
            entries.extend(page.entries.into_iter().filter_map(|e| reader.sees(e)));
            next = page.next;
            if entries.len() == limit || next.is_none() {
                break;
            }
        }
        Ok(ActivityPage {
            entries,
            next: next.map(|c| c.to_string()),
        })
    }

    /// Every entry `filter` matches that the caller may see, oldest first, as JSON
    /// lines in an unnamed temporary file (read from its start), and its length: so a
    /// long log goes out at its known length without being held in memory.
    pub async fn activity_export(
        &self,
        filter: &Filter,
    ) -> Result<(std::fs::File, u64), ManageError> {
        let reader = self.reader();
        let path = std::env::temp_dir().join(format!(
            "portcullis-activity-{}.jsonl",
            uuid::Uuid::new_v4().simple()
        ));
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|file| std::fs::remove_file(&path).map(|()| file))
            .map_err(|e| {
                ManageError::Internal(format!("a temporary file in {}: {e}", path.display()))
            })?;
        let (log, filter) = (self.api.activity.clone(), filter.clone());
        let result = tokio::task::spawn_blocking(move || {
            let mut out = std::io::BufWriter::new(file);
            log.export_shown(&filter, |e| reader.sees(e), &mut out)?;
            out.into_inner()
                .map_err(|e| ActivityError::Write(e.into_error()))
        })
        .await
        .map_err(|e| ManageError::Internal(format!("the export stopped: {e}")))?;
        let mut file = result.map_err(internal)?;
        let len = file
            .stream_position()
            .map_err(|e| ManageError::Internal(e.to_string()))?;
        file.rewind()
            .map_err(|e| ManageError::Internal(e.to_string()))?;
        Ok((file, len))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{api, user};
    use super::*;

    fn entry(actor: Option<&str>, target: &str) -> Entry {
        Entry {
            time: 1,
            actor: actor.map(str::to_string),
            client: Some("192.0.2.1".into()),
            action: "push".into(),
            target: target.into(),
            detail: None,
            count: 1,
        }
    }

    #[test]
    fn callers_see_their_own_and_what_they_may_pull() {
        let web = |repo: &RepoName| repo.as_str().starts_with("web/");
        let own = entry(Some("bob"), "team:ops");
        assert_eq!(shown(own.clone(), Some("bob"), web), Some(own));
        assert_eq!(
            shown(entry(Some("alice"), "team:web"), Some("bob"), web),
            None
        );
        let pulled = shown(entry(Some("alice"), "web/app"), Some("bob"), web).unwrap();
        assert_eq!(pulled.client, None, "another's address stays private");
        assert_eq!(
            shown(entry(Some("alice"), "ops/app"), Some("bob"), web),
            None
        );
        assert_eq!(
            shown(entry(None, "ops/app"), None, web),
            None,
            "anonymous is nobody's own"
        );
    }

    #[tokio::test]
    async fn changes_are_recorded_and_shown_by_who_may_see_them() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(&dir, true).await;
        let alice = Manager::new(&api, user("alice"), Some("192.0.2.9".parse().unwrap()));
        let bob = Manager::new(&api, user("bob"), None);
        let admin = Manager::new(&api, user("admin"), None);
        alice.create_team("ops", "").await.unwrap();
        bob.create_team("qa", "").await.unwrap();
        api.activity.flush().await.unwrap();
        let everything = Filter::default();
        let all = admin.activity(&everything, None, 10).await.unwrap();
        let actions: Vec<(&str, &str)> = all
            .entries
            .iter()
            .map(|e| (e.action.as_str(), e.target.as_str()))
            .collect();
        assert_eq!(
            actions,
            [("team.create", "team:qa"), ("team.create", "team:ops")]
        );
        assert_eq!(all.entries[1].client.as_deref(), Some("192.0.2.9"));
        let own = alice.activity(&everything, None, 10).await.unwrap();
        assert_eq!(own.entries.len(), 1);
        assert_eq!(own.entries[0].target, "team:ops");
        let first = admin.activity(&everything, None, 1).await.unwrap();
        let cursor = first.next.unwrap().parse().unwrap();
        let second = admin.activity(&everything, Some(cursor), 1).await.unwrap();
        assert_eq!(second.entries[0].target, "team:ops");
        let (mut file, len) = alice.activity_export(&everything).await.unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).unwrap();
        assert_eq!(text.len() as u64, len);
        assert_eq!(text.lines().count(), 1);
        assert!(text.contains("team:ops"), "{text}");
    }
}
