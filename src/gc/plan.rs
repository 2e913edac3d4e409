//! What a collection removes, decided from a snapshot. Pure: no I/O, no clock.
//!
//! Mark and sweep over the metadata. Per repository the roots are its tags (less those
//! retention takes away), every manifest when untagged ones are kept, cached manifests
//! (the cache's byte cap decides their fate, not tags) and manifests younger than the
//! grace period. Marking follows an index to its children and a manifest to its
//! referrers, so signatures and SBOMs live as long as their subject. A blob link
//! survives if a marked manifest of its repository references it, or if it was made or
//! read within the grace period (a push in progress: layers first, manifest last).
//! A stored blob survives if anything that survives names it.
//!
//! Cached content over `cache.max_bytes` is then evicted, least recently used first,
//! down to 90% of the cap; content a pushed manifest or a pushed link needs is never
//! cached content, whatever its origin.

use crate::auth::access::glob_match;
use crate::config::RetentionRule;
use crate::oci::{Digest, RepoName};
use crate::store::{MetaSnapshot, Origin, StoredBlob, TagEntry};
use std::collections::{HashMap, HashSet};

/// What a stored manifest points at, from its parsed bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct References {
    /// Config and layers.
    pub blobs: Vec<Digest>,
    /// The manifests of an index.
    pub children: Vec<Digest>,
}

/// The rules a collection applies.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub delete_untagged: bool,
    pub grace_secs: u64,
    pub retention: Vec<RetentionRule>,
    pub cache_max_bytes: Option<u64>,
}

/// Everything a plan is computed from.
pub struct Inputs<'a> {
    pub snapshot: &'a MetaSnapshot,
    /// By manifest digest; a manifest missing here references nothing known.
    pub graph: &'a HashMap<Digest, References>,
    pub stored: &'a [StoredBlob],
    /// Last read of each digest, flushed and pending merged.
    pub accessed: &'a HashMap<Digest, u64>,
    pub now: u64,
}

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Tags retention takes away.
    pub untag: Vec<TagEntry>,
    /// Manifest records to drop, parents before their children.
    pub manifests: Vec<(RepoName, Digest)>,
    pub links: Vec<(RepoName, Digest)>,
    /// Blob files to delete with their sizes (evicted ones included).
    pub files: Vec<(Digest, u64)>,
    /// Cached blobs and manifests evicted for the byte cap, with their sizes.
    pub evicted: Vec<(Digest, u64)>,
    /// Bytes of cached content before and after this plan.
    pub cached_bytes_before: u64,
    pub cached_bytes_after: u64,
}

impl Plan {
    pub fn bytes_freed(&self) -> u64 {
        self.files.iter().map(|(_, size)| size).sum()
    }
}

/// Within the grace period: made or read less than `grace` seconds ago. Times of 0
/// (not recorded by older versions) are old.
fn is_young(at: u64, now: u64, grace: u64) -> bool {
    at > 0 && at.saturating_add(grace) > now
}

/// The tags a repository's retention rule takes away: all but the protected, the
/// `keep_last` most recently pushed, and those pushed within `keep_days`. A tag
/// whose push time is unknown (stores older than the record of it) is kept.
pub fn retention_untags<'t>(
    rules: &[RetentionRule],
    repo: &RepoName,
    tags: &[&'t TagEntry],
    tag_time: impl Fn(&TagEntry) -> Option<u64>,
    now: u64,
) -> Vec<&'t TagEntry> {
    let Some(rule) = rules
        .iter()
        .find(|r| r.repositories.iter().any(|p| glob_match(p, repo.as_str())))
    else {
        return Vec::new();
    };
    let mut dated: Vec<(&TagEntry, Option<u64>)> = tags.iter().map(|t| (*t, tag_time(t))).collect();
    // Newest first; unknown times last, so they never push a dated tag out of keep_last.
    dated.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then_with(|| a.0.tag.as_str().cmp(b.0.tag.as_str()))
    });
    let mut untag = Vec::new();
    for (rank, (entry, at)) in dated.into_iter().enumerate() {
        let protected = rule
            .protect
            .iter()
            .any(|p| glob_match(p, entry.tag.as_str()));
        let within_last = rule.keep_last.is_some_and(|n| rank < n);
        let within_days = match (rule.keep_days, at) {
            (_, None) => true,
            (Some(days), Some(at)) => at.saturating_add(days.saturating_mul(86_400)) > now,
            (None, Some(_)) => false,
        };
        if !(protected || within_last || within_days) {
            untag.push(entry);
        }
    }
    untag
}

/// Decides what a collection removes.
pub fn plan(inputs: &Inputs, policy: &Policy) -> Plan {
    let snap = inputs.snapshot;
    let (now, grace) = (inputs.now, policy.grace_secs);
    let young = |at: u64| is_young(at, now, grace);
    let read_recently = |d: &Digest| inputs.accessed.get(d).is_some_and(|&at| young(at));

    let mut result = Plan::default();
    let mut manifests_of: HashMap<&RepoName, Vec<&crate::store::ManifestEntry>> = HashMap::new();
    for m in &snap.manifests {
        manifests_of.entry(&m.repo).or_default().push(m);
    }
    let created: HashMap<(&RepoName, &Digest), u64> = snap
        .manifests
        .iter()
        .map(|m| ((&m.repo, &m.digest), m.record.created_at))
        .collect();
    let mut tags_of: HashMap<&RepoName, Vec<&TagEntry>> = HashMap::new();
    for t in &snap.tags {
        tags_of.entry(&t.repo).or_default().push(t);
    }
    let mut referrers_of: HashMap<(&RepoName, &Digest), Vec<&Digest>> = HashMap::new();
    for r in &snap.referrers {
        referrers_of
            .entry((&r.repo, &r.subject))
            .or_default()
            .push(&r.referrer);
    }

    // Marked manifests per repository.
    let mut marked: HashMap<&RepoName, HashSet<&Digest>> = HashMap::new();
    for (repo, manifests) in &manifests_of {
        let tags = tags_of.get(repo).map(Vec::as_slice).unwrap_or(&[]);
        let tag_time = |t: &TagEntry| {
            let fallback = created.get(&(&t.repo, &t.digest)).copied().unwrap_or(0);
            [t.tagged_at, fallback].into_iter().find(|&at| at > 0)
        };
        let untagged = retention_untags(&policy.retention, repo, tags, tag_time, now);
        let untagged_set: HashSet<(&str, &str)> = untagged
            .iter()
            .map(|t| (t.repo.as_str(), t.tag.as_str()))
            .collect();
        let kept_tags: Vec<&TagEntry> = tags
            .iter()
            .filter(|t| !untagged_set.contains(&(t.repo.as_str(), t.tag.as_str())))
            .copied()
            .collect();
        // Manifests whose last tag retention took: collected even with untagged kept,
        // since freeing them is what the rule is for.
        let lost_last_tag: HashSet<&Digest> = untagged
            .iter()
            .map(|t| &t.digest)
            .filter(|d| !kept_tags.iter().any(|k| &k.digest == *d))
            .collect();
        result.untag.extend(untagged.into_iter().cloned());

        let in_repo: HashSet<&Digest> = manifests.iter().map(|m| &m.digest).collect();
        let mut stack: Vec<&Digest> = kept_tags.iter().map(|t| &t.digest).collect();
        for m in manifests {
            let root = (!policy.delete_untagged && !lost_last_tag.contains(&m.digest))
                || m.record.origin == Origin::Cached
                || young(m.record.created_at);
            if root {
                stack.push(&m.digest);
            }
        }
        let set = marked.entry(repo).or_default();
        while let Some(digest) = stack.pop() {
            if !in_repo.contains(digest) || !set.insert(digest) {
                continue;
            }
            if let Some(refs) = inputs.graph.get(digest) {
                stack.extend(refs.children.iter());
            }
            if let Some(referrers) = referrers_of.get(&(*repo, digest)) {
                stack.extend(referrers.iter().copied());
            }
        }
        // Parents before children: an index is dropped before what it lists, so a
        // sweep cut short never leaves an index without its children.
        let mut dropped: Vec<&Digest> = manifests
            .iter()
            .map(|m| &m.digest)
            .filter(|d| !set.contains(*d))
            .collect();
        let is_index = |d: &Digest| inputs.graph.get(d).is_some_and(|r| !r.children.is_empty());
        dropped.sort_by_key(|d| !is_index(d));
        result
            .manifests
            .extend(dropped.into_iter().map(|d| ((*repo).clone(), d.clone())));
    }

    // What marked manifests reference, per repository and overall.
    let mut needed_in: HashMap<&RepoName, HashSet<&Digest>> = HashMap::new();
    let mut live: HashSet<&Digest> = HashSet::new();
    let mut pushed: HashSet<&Digest> = HashSet::new();
    let origin_of: HashMap<(&RepoName, &Digest), Origin> = snap
        .manifests
        .iter()
        .map(|m| ((&m.repo, &m.digest), m.record.origin))
        .collect();
    for (repo, set) in &marked {
        let needed = needed_in.entry(repo).or_default();
        for digest in set {
            let mut names = vec![*digest];
            if let Some(refs) = inputs.graph.get(*digest) {
                names.extend(refs.blobs.iter());
            }
            if origin_of.get(&(*repo, *digest)) == Some(&Origin::Pushed) {
                pushed.extend(names.iter().copied());
            }
            needed.extend(names.iter().copied());
            live.extend(names);
        }
    }
    // One flag per link (not a map of them: stores hold hundreds of thousands).
    let mut link_kept = vec![false; snap.links.len()];
    for (link, kept) in snap.links.iter().zip(link_kept.iter_mut()) {
        let needed = needed_in
            .get(&link.repo)
            .is_some_and(|n| n.contains(&link.digest));
        if needed || young(link.linked_at) || read_recently(&link.digest) {
            *kept = true;
            live.insert(&link.digest);
            if link.origin == Origin::Pushed {
                pushed.insert(&link.digest);
            }
        } else {
            result.links.push((link.repo.clone(), link.digest.clone()));
        }
    }

    // The byte cap on cached content: what lives, is stored, and nothing pushed needs.
    let mut cached: Vec<(&StoredBlob, u64)> = inputs
        .stored
        .iter()
        .filter(|b| live.contains(&b.digest) && !pushed.contains(&b.digest))
        .map(|b| {
            let last_use = inputs
                .accessed
                .get(&b.digest)
                .copied()
                .unwrap_or(0)
                .max(b.modified);
            (b, last_use)
        })
        .collect();
    result.cached_bytes_before = cached.iter().map(|(b, _)| b.size).sum();
    result.cached_bytes_after = result.cached_bytes_before;
    if let Some(cap) = policy.cache_max_bytes {
        if result.cached_bytes_before > cap {
            let target = cap / 10 * 9;
            cached.sort_by(|(a, a_use), (b, b_use)| a_use.cmp(b_use).then(a.digest.cmp(&b.digest)));
            let mut cached_manifests: HashMap<&Digest, Vec<&RepoName>> = HashMap::new();
            for m in &snap.manifests {
                if m.record.origin == Origin::Cached {
                    cached_manifests.entry(&m.digest).or_default().push(&m.repo);
                }
            }
            let mut evicted: HashSet<&Digest> = HashSet::new();
            for (blob, _) in cached {
                if result.cached_bytes_after <= target {
                    break;
                }
                result.cached_bytes_after -= blob.size;
                result.evicted.push((blob.digest.clone(), blob.size));
                live.remove(&blob.digest);
                evicted.insert(&blob.digest);
                for repo in cached_manifests.get(&blob.digest).into_iter().flatten() {
                    result
                        .manifests
                        .push(((*repo).clone(), blob.digest.clone()));
                }
            }
            for (link, kept) in snap.links.iter().zip(&link_kept) {
                if *kept && evicted.contains(&link.digest) {
                    result.links.push((link.repo.clone(), link.digest.clone()));
                }
            }
        }
    }

    for blob in inputs.stored {
        let keep =
            live.contains(&blob.digest) || young(blob.modified) || read_recently(&blob.digest);
        if !keep {
            result.files.push((blob.digest.clone(), blob.size));
        }
    }
    // Evicted blobs may be young; they go all the same (that is what the cap is for).
    for (digest, size) in &result.evicted {
        if !result.files.iter().any(|(d, _)| d == digest) {
            result.files.push((digest.clone(), *size));
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Tag;
    use crate::store::{LinkEntry, ManifestEntry, ManifestRecord, ReferrerEntry};

    const NOW: u64 = 1_000_000_000;
    const DAY: u64 = 86_400;

    fn d(name: &str) -> Digest {
        Digest::sha256_of(name.as_bytes())
    }

    fn repo(name: &str) -> RepoName {
        RepoName::parse(name).unwrap()
    }

    /// A store described in a few lines: blobs, manifests with their references,
    /// tags, referrers.
    #[derive(Default)]
    struct Store {
        snap: MetaSnapshot,
        graph: HashMap<Digest, References>,
        stored: Vec<StoredBlob>,
        accessed: HashMap<Digest, u64>,
    }

    impl Store {
        fn blob(&mut self, repo_name: &str, name: &str, size: u64, origin: Origin) -> &mut Self {
            self.snap.links.push(LinkEntry {
                repo: repo(repo_name),
                digest: d(name),
                size,
                origin,
                linked_at: 1,
            });
            self.file(name, size)
        }

        fn file(&mut self, name: &str, size: u64) -> &mut Self {
            if !self.stored.iter().any(|b| b.digest == d(name)) {
                self.stored.push(StoredBlob {
                    digest: d(name),
                    size,
                    modified: 1,
                });
            }
            self
        }

        fn manifest(
            &mut self,
            repo_name: &str,
            name: &str,
            blobs: &[&str],
            children: &[&str],
            origin: Origin,
        ) -> &mut Self {
            self.snap.manifests.push(ManifestEntry {
                repo: repo(repo_name),
                digest: d(name),
                record: ManifestRecord {
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    size: 10,
                    subject: None,
                    origin,
                    created_at: 1,
                },
            });
            self.graph.insert(
                d(name),
                References {
                    blobs: blobs.iter().map(|b| d(b)).collect(),
                    children: children.iter().map(|c| d(c)).collect(),
                },
            );
            self.file(name, 10)
        }

        fn tag(&mut self, repo_name: &str, tag: &str, name: &str, at: u64) -> &mut Self {
            self.snap.tags.push(TagEntry {
                repo: repo(repo_name),
                tag: Tag::parse(tag).unwrap(),
                digest: d(name),
                tagged_at: at,
            });
            self
        }

        fn referrer(&mut self, repo_name: &str, subject: &str, referrer: &str) -> &mut Self {
            self.snap.referrers.push(ReferrerEntry {
                repo: repo(repo_name),
                subject: d(subject),
                referrer: d(referrer),
            });
            self
        }

        fn plan(&self, policy: &Policy) -> Plan {
            plan(
                &Inputs {
                    snapshot: &self.snap,
                    graph: &self.graph,
                    stored: &self.stored,
                    accessed: &self.accessed,
                    now: NOW,
                },
                policy,
            )
        }
    }

    fn names(digests: impl IntoIterator<Item = Digest>, all: &[&str]) -> Vec<String> {
        let mut found: Vec<String> = digests
            .into_iter()
            .map(|x| {
                all.iter()
                    .find(|n| d(n) == x)
                    .map_or_else(|| x.to_string(), |n| n.to_string())
            })
            .collect();
        found.sort();
        found
    }

    const ALL: &[&str] = &[
        "base", "app1", "app2", "cfg1", "cfg2", "m1", "m2", "idx", "arm", "amd", "sig", "stray",
        "old", "c1", "cm", "l1", "l2",
    ];

    /// Shared layers, an untagged manifest, an index with children, a referrer, a
    /// deleted tag and a stray upload.
    fn sample() -> Store {
        let mut s = Store::default();
        s.blob("team/app", "base", 100, Origin::Pushed)
            .blob("team/app", "app1", 10, Origin::Pushed)
            .blob("team/app", "app2", 20, Origin::Pushed)
            .blob("team/app", "cfg1", 1, Origin::Pushed)
            .blob("team/app", "cfg2", 1, Origin::Pushed)
            .blob("team/app", "stray", 7, Origin::Pushed)
            .manifest(
                "team/app",
                "m1",
                &["cfg1", "base", "app1"],
                &[],
                Origin::Pushed,
            )
            .manifest(
                "team/app",
                "m2",
                &["cfg2", "base", "app2"],
                &[],
                Origin::Pushed,
            )
            .manifest("team/app", "sig", &["cfg1"], &[], Origin::Pushed)
            .referrer("team/app", "m1", "sig")
            .tag("team/app", "v1", "m1", 1)
            // m2 is untagged (its tag was deleted).
            .blob("multi", "base", 100, Origin::Pushed)
            .blob("multi", "cfg1", 1, Origin::Pushed)
            .manifest("multi", "arm", &["cfg1", "base"], &[], Origin::Pushed)
            .manifest("multi", "amd", &["cfg1", "base"], &[], Origin::Pushed)
            .manifest("multi", "idx", &[], &["arm", "amd"], Origin::Pushed)
            .tag("multi", "latest", "idx", 1)
            .file("old", 5);
        s
    }

    #[test]
    fn keeps_untagged_manifests_unless_told() {
        let s = sample();
        let p = s.plan(&Policy::default());
        assert!(p.manifests.is_empty());
        // The stray layer no manifest names loses its link; the orphan file goes.
        assert_eq!(names(p.links.iter().map(|l| l.1.clone()), ALL), ["stray"]);
        assert_eq!(
            names(p.files.iter().map(|f| f.0.clone()), ALL),
            ["old", "stray"]
        );
        assert_eq!(p.bytes_freed(), 12);
    }

    #[test]
    fn collects_untagged_manifests_and_exactly_their_own_blobs() {
        let s = sample();
        let p = s.plan(&Policy {
            delete_untagged: true,
            ..Policy::default()
        });
        // m2 goes; sig lives as long as its subject m1; the index keeps its children.
        assert_eq!(names(p.manifests.iter().map(|m| m.1.clone()), ALL), ["m2"]);
        assert_eq!(
            names(p.links.iter().map(|l| l.1.clone()), ALL),
            ["app2", "cfg2", "stray"]
        );
        // base is shared with m1 and stays.
        assert_eq!(
            names(p.files.iter().map(|f| f.0.clone()), ALL),
            ["app2", "cfg2", "m2", "old", "stray"]
        );
    }

    #[test]
    fn an_untagged_index_goes_before_its_children_and_takes_them() {
        let mut s = sample();
        s.snap.tags.retain(|t| t.tag.as_str() != "latest");
        let p = s.plan(&Policy {
            delete_untagged: true,
            ..Policy::default()
        });
        let multi: Vec<_> = p
            .manifests
            .iter()
            .filter(|m| m.0.as_str() == "multi")
            .map(|m| m.1.clone())
            .collect();
        assert_eq!(multi[0], d("idx"));
        assert_eq!(names(multi, ALL), ["amd", "arm", "idx"]);
    }

    #[test]
    fn a_referrer_goes_with_its_subject() {
        let mut s = sample();
        s.snap.tags.retain(|t| t.tag.as_str() != "v1");
        let p = s.plan(&Policy {
            delete_untagged: true,
            ..Policy::default()
        });
        let app: Vec<_> = p
            .manifests
            .iter()
            .filter(|m| m.0.as_str() == "team/app")
            .map(|m| m.1.clone())
            .collect();
        assert_eq!(names(app, ALL), ["m1", "m2", "sig"]);
        // base is still needed by the index in `multi`; its link there stays.
        assert!(!p.files.iter().any(|f| f.0 == d("base")));
        assert!(p.files.iter().any(|f| f.0 == d("app1")));
    }

    #[test]
    fn young_or_recently_read_content_is_kept() {
        let mut s = sample();
        let policy = Policy {
            delete_untagged: true,
            grace_secs: 3600,
            ..Policy::default()
        };
        // m2 pushed a minute ago; the stray layer read a minute ago (a push in
        // progress checked it); the orphan file written a minute ago.
        s.snap.manifests.iter_mut().for_each(|m| {
            if m.digest == d("m2") {
                m.record.created_at = NOW - 60;
            }
        });
        s.accessed.insert(d("stray"), NOW - 60);
        s.stored.iter_mut().for_each(|b| {
            if b.digest == d("old") {
                b.modified = NOW - 60;
            }
        });
        let p = s.plan(&policy);
        assert!(p.manifests.is_empty());
        assert!(p.links.is_empty());
        assert!(p.files.is_empty());
        // Past the grace period they go.
        let p = s.plan(&Policy {
            grace_secs: 30,
            ..policy
        });
        assert_eq!(
            names(p.files.iter().map(|f| f.0.clone()), ALL),
            ["app2", "cfg2", "m2", "old", "stray"]
        );
    }

    fn rule(pattern: &str, keep_last: Option<usize>, keep_days: Option<u64>) -> RetentionRule {
        RetentionRule {
            repositories: vec![pattern.to_string()],
            keep_last,
            keep_days,
            protect: vec!["v*".to_string()],
        }
    }

    #[test]
    fn retention_keeps_the_newest_the_young_and_the_protected() {
        let r = repo("team/app");
        let tags: Vec<TagEntry> = [
            ("v1.0", NOW - 90 * DAY),
            ("nightly-1", NOW - 40 * DAY),
            ("nightly-2", NOW - 20 * DAY),
            ("nightly-3", NOW - 2 * DAY),
            ("nightly-4", NOW - DAY),
        ]
        .iter()
        .map(|(t, at)| TagEntry {
            repo: r.clone(),
            tag: Tag::parse(t).unwrap(),
            digest: d(t),
            tagged_at: *at,
        })
        .collect();
        let refs: Vec<&TagEntry> = tags.iter().collect();
        let untags = |rules: &[RetentionRule]| {
            let mut v: Vec<String> = retention_untags(rules, &r, &refs, |t| Some(t.tagged_at), NOW)
                .iter()
                .map(|t| t.tag.to_string())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            untags(&[rule("team/*", Some(2), None)]),
            ["nightly-1", "nightly-2"]
        );
        assert_eq!(untags(&[rule("team/*", None, Some(30))]), ["nightly-1"]);
        // Either condition keeps a tag.
        assert_eq!(untags(&[rule("team/*", Some(3), Some(3))]), ["nightly-1"]);
        // No rule for the repository: nothing.
        assert!(untags(&[rule("other/*", Some(1), None)]).is_empty());
        // Unknown push times are kept.
        let unknown = retention_untags(&[rule("*", Some(0), Some(1))], &r, &refs, |_| None, NOW);
        assert!(unknown.is_empty());
    }

    #[test]
    fn retention_collects_what_it_untags_even_with_untagged_kept() {
        let mut s = sample();
        s.tag("team/app", "nightly", "m2", NOW - 10 * DAY);
        let p = s.plan(&Policy {
            retention: vec![rule("team/*", None, Some(5))],
            ..Policy::default()
        });
        assert_eq!(p.untag.len(), 1);
        assert_eq!(p.untag[0].tag.as_str(), "nightly");
        assert_eq!(names(p.manifests.iter().map(|m| m.1.clone()), ALL), ["m2"]);
    }

    #[test]
    fn eviction_takes_least_recently_used_cached_content_and_never_pushed() {
        let mut s = Store::default();
        s.blob("docker.io/library/a", "c1", 1000, Origin::Cached)
            .blob("docker.io/library/a", "l1", 4000, Origin::Cached)
            .blob("docker.io/library/a", "l2", 3000, Origin::Cached)
            .manifest(
                "docker.io/library/a",
                "cm",
                &["c1", "l1", "l2"],
                &[],
                Origin::Cached,
            )
            // A pushed image built on the cached base layer l2.
            .blob("team/app", "l2", 3000, Origin::Pushed)
            .blob("team/app", "app1", 500, Origin::Pushed)
            .manifest("team/app", "m1", &["l2", "app1"], &[], Origin::Pushed)
            .tag("team/app", "v1", "m1", 1);
        s.accessed.insert(d("cm"), 50);
        s.accessed.insert(d("c1"), 40);
        s.accessed.insert(d("l1"), 30);
        s.accessed.insert(d("l2"), 10);
        let p = s.plan(&Policy {
            cache_max_bytes: Some(2000),
            ..Policy::default()
        });
        // Cached content: cm (10) + c1 (1000) + l1 (4000); l2 is pushed content now.
        assert_eq!(p.cached_bytes_before, 5010);
        // Oldest first until under 90% of the cap: l1 is enough.
        assert_eq!(names(p.evicted.iter().map(|e| e.0.clone()), ALL), ["l1"]);
        assert_eq!(p.cached_bytes_after, 1010);
        assert_eq!(names(p.files.iter().map(|f| f.0.clone()), ALL), ["l1"]);
        assert!(p
            .links
            .iter()
            .all(|(r, _)| r.as_str() == "docker.io/library/a"));
        // Under the cap nothing goes.
        let p = s.plan(&Policy {
            cache_max_bytes: Some(10_000),
            ..Policy::default()
        });
        assert!(p.evicted.is_empty() && p.files.is_empty());
    }
}
