//! Pulls counted per (repository, actor, hour) in memory and stored as one entry per
//! key: a tag that CI pulls thousands of times an hour is one line of the log, and a
//! pull costs no disk write on the request path. Pure.

use super::entry::Entry;
use std::collections::BTreeMap;

pub const HOUR_MS: u64 = 3_600_000;

/// Keys counted between two flushes at most; pulls of further keys are dropped (and
/// counted), so a flood of distinct repositories or users cannot grow memory without
/// bound while the disk refuses writes.
pub const MAX_PENDING_KEYS: usize = 50_000;

/// The start of the hour that `ms` (unix milliseconds) falls in.
pub fn hour_start(ms: u64) -> u64 {
    ms - ms % HOUR_MS
}

/// Which stored entry a pull is counted in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PullKey {
    /// [`hour_start`] of the pulls.
    pub hour: u64,
    pub repository: String,
    pub actor: Option<String>,
}

impl PullKey {
    pub fn of(pull: &Entry) -> PullKey {
        PullKey {
            hour: hour_start(pull.time),
            repository: pull.target.clone(),
            actor: pull.actor.clone(),
        }
    }
}

/// Adds `more` (pulls of the same key) to `into`. Counts add up; the client and the
/// detail stay only while every pull agrees on them (one machine pulling one tag), so
/// an aggregate never names one address or tag for pulls of several.
pub fn merge(into: &mut Entry, more: Entry) {
    into.count += more.count;
    if into.client != more.client {
        into.client = None;
    }
    if into.detail != more.detail {
        into.detail = None;
    }
}

/// The pulls not yet written, in key order (so entries are stored in an order that
/// does not depend on hashing).
#[derive(Debug, Default)]
pub struct Tally {
    pulls: BTreeMap<PullKey, Entry>,
}

impl Tally {
    /// Counts `pull` (its `count` pulls, at its time) into its hour; `false` when it
    /// is a new key and [`MAX_PENDING_KEYS`] are already waiting.
    pub fn add(&mut self, pull: Entry) -> bool {
        let key = PullKey::of(&pull);
        if let Some(counted) = self.pulls.get_mut(&key) {
            merge(counted, pull);
            return true;
        }
        if self.pulls.len() >= MAX_PENDING_KEYS {
            return false;
        }
        let hour = key.hour;
        self.pulls.insert(key, Entry { time: hour, ..pull });
        true
    }

    /// Everything counted so far in key order, each an entry at the start of its hour;
    /// the tally is empty afterwards.
    pub fn take(&mut self) -> Vec<(PullKey, Entry)> {
        std::mem::take(&mut self.pulls).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pull(time: u64, repository: &str, actor: Option<&str>, client: &str) -> Entry {
        Entry {
            time,
            actor: actor.map(str::to_string),
            client: Some(client.to_string()),
            action: "pull".into(),
            target: repository.into(),
            detail: Some("1.0".into()),
            count: 1,
        }
    }

    #[test]
    fn hours_start_on_the_hour() {
        assert_eq!(hour_start(0), 0);
        assert_eq!(hour_start(HOUR_MS - 1), 0);
        assert_eq!(hour_start(HOUR_MS), HOUR_MS);
        // 2026-11-01T10:59:59.999Z is in the hour of 10:00.
        assert_eq!(hour_start(1_793_530_799_999), 1_793_527_200_000);
    }

    #[test]
    fn pulls_count_per_repository_actor_and_hour() {
        let mut tally = Tally::default();
        let ten = 1_793_527_200_000;
        for p in [
            pull(ten + 5, "team/app", Some("ci"), "10.0.0.1"),
            pull(ten + 60_000, "team/app", Some("ci"), "10.0.0.1"),
            pull(ten + HOUR_MS - 1, "team/app", Some("ci"), "10.0.0.1"),
            pull(ten + HOUR_MS, "team/app", Some("ci"), "10.0.0.1"),
            pull(ten + 7, "team/app", None, "10.0.0.1"),
            pull(ten + 8, "team/web", Some("ci"), "10.0.0.1"),
        ] {
            assert!(tally.add(p));
        }
        let counted = tally.take();
        let summary: Vec<_> = counted
            .iter()
            .map(|(k, e)| (e.time, k.repository.as_str(), e.actor.as_deref(), e.count))
            .collect();
        assert_eq!(
            summary,
            [
                (ten, "team/app", None, 1),
                (ten, "team/app", Some("ci"), 3),
                (ten, "team/web", Some("ci"), 1),
                (ten + HOUR_MS, "team/app", Some("ci"), 1),
            ]
        );
        assert!(counted.iter().all(|(k, e)| PullKey::of(e) == *k));
        assert!(tally.take().is_empty());
    }

    #[test]
    fn merging_keeps_only_what_every_pull_agrees_on() {
        let mut stored = pull(0, "a", Some("ci"), "10.0.0.1");
        stored.count = 40;
        merge(&mut stored, pull(5, "a", Some("ci"), "10.0.0.1"));
        assert_eq!(stored.count, 41);
        assert_eq!(stored.client.as_deref(), Some("10.0.0.1"));
        assert_eq!(stored.detail.as_deref(), Some("1.0"));
        let elsewhere = Entry {
            count: 2,
            ..pull(6, "a", Some("ci"), "10.0.0.2")
        };
        merge(&mut stored, elsewhere);
        assert_eq!((stored.count, stored.client.as_deref()), (43, None));
        assert_eq!(stored.time, 0, "the stored entry keeps its hour");
        let by_digest = Entry {
            detail: Some("sha256:abc".into()),
            ..pull(7, "a", Some("ci"), "10.0.0.2")
        };
        merge(&mut stored, by_digest);
        assert_eq!((stored.count, stored.detail), (44, None));
    }

    #[test]
    fn a_full_tally_still_counts_known_keys() {
        let mut tally = Tally::default();
        for i in 0..MAX_PENDING_KEYS {
            assert!(tally.add(pull(0, &format!("r{i}"), None, "10.0.0.1")));
        }
        assert!(!tally.add(pull(0, "one/more", None, "10.0.0.1")));
        assert!(tally.add(pull(1, "r0", None, "10.0.0.1")));
        let r0 = tally.take().into_iter().find(|(k, _)| k.repository == "r0");
        assert_eq!(r0.unwrap().1.count, 2);
    }
}
