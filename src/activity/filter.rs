//! Searching the log: which entries a [`Filter`] keeps, the [`Cursor`] a page ends at,
//! and how one page is cut from the entries newest first. Pure: the store hands rows in.

use super::entry::Entry;
use std::ops::Range;

/// Entries on one page at most.
pub const MAX_PAGE: usize = 1_000;

/// Entries looked at for one page at most. A filter that matches little would
/// otherwise read the whole log for one request; past this the page ends early, with a
/// cursor to go on from.
pub const MAX_SCANNED: usize = 100_000;

/// What to look for; every field that is set must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Exactly this actor.
    pub actor: Option<String>,
    /// Targets starting with this (a repository, `team/`, `user:`).
    pub target_prefix: Option<String>,
    /// Exactly this action (`push`, `user.create`).
    pub action: Option<String>,
    /// Entries at or after this time (unix milliseconds); aggregated pulls count at the
    /// start of their hour.
    pub since: Option<u64>,
    /// Entries before this time (unix milliseconds).
    pub until: Option<u64>,
    /// In the target or the detail, ignoring ASCII case.
    pub text: Option<String>,
}

impl Filter {
    /// Whether `entry` is one to show. Time is left to [`Filter::span`], which the store
    /// turns into a key range.
    pub fn matches(&self, entry: &Entry) -> bool {
        let equal = |wanted: &Option<String>, value: Option<&str>| {
            wanted.as_deref().is_none_or(|w| Some(w) == value)
        };
        equal(&self.actor, entry.actor.as_deref())
            && equal(&self.action, Some(&entry.action))
            && self
                .target_prefix
                .as_deref()
                .is_none_or(|p| entry.target.starts_with(p))
            && self.text.as_deref().is_none_or(|text| {
                contains_ignoring_case(&entry.target, text)
                    || entry
                        .detail
                        .as_deref()
                        .is_some_and(|d| contains_ignoring_case(d, text))
            })
    }

    /// The keys to read for `since`, `until` and a page's `before`; `None` when no
    /// entry can be in them.
    pub(crate) fn span(&self, before: Option<Cursor>) -> Option<Range<(u64, u64)>> {
        let start = (self.since.unwrap_or(0), 0);
        let until = self.until.map_or(Cursor::END, |t| (t, 0));
        let end = before.map_or(until, |c| until.min(c.key()));
        (start < end).then_some(start..end)
    }
}

fn contains_ignoring_case(haystack: &str, needle: &str) -> bool {
    needle.is_empty()
        || haystack
            .as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// A place in the log: the key of an entry (its time, and a sequence number that tells
/// entries of the same millisecond apart). As text it goes into a query string; its
/// form is not a promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    time: u64,
    seq: u64,
}

impl Cursor {
    /// Past every key.
    const END: (u64, u64) = (u64::MAX, u64::MAX);

    pub(crate) fn new(time: u64, seq: u64) -> Cursor {
        Cursor { time, seq }
    }

    pub(crate) fn key(self) -> (u64, u64) {
        (self.time, self.seq)
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.time, self.seq)
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;
    fn from_str(text: &str) -> Result<Cursor, String> {
        let invalid = || format!("{text:?} is not a cursor; pass on the `next` of a page");
        let (time, seq) = text.split_once('-').ok_or_else(invalid)?;
        let number = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| s.parse().ok())
                .flatten()
                .ok_or_else(invalid)
        };
        Ok(Cursor::new(number(time)?, number(seq)?))
    }
}

/// One page of a search, newest first.
#[derive(Debug, PartialEq)]
pub struct Page {
    pub entries: Vec<Entry>,
    /// Where the next page starts (`before`); `None` at the end of the log.
    pub next: Option<Cursor>,
}

/// Cuts a page of `limit` (1 to [`MAX_PAGE`]) matching entries at most from `rows`,
/// the entries newest first, reading at most `scan_budget` of them.
pub(crate) fn page<E>(
    rows: impl Iterator<Item = Result<(Cursor, Entry), E>>,
    filter: &Filter,
    limit: usize,
    scan_budget: usize,
) -> Result<Page, E> {
    let limit = limit.clamp(1, MAX_PAGE);
    let mut entries = Vec::new();
    let (mut last_shown, mut last_scanned) = (None, None);
    for (scanned, row) in (0..).zip(rows) {
        if scanned == scan_budget {
            // There is more; what lies between the last entry shown and the last one
            // read did not match.
            return Ok(Page {
                entries,
                next: last_scanned,
            });
        }
        let (cursor, entry) = row?;
        last_scanned = Some(cursor);
        if filter.matches(&entry) {
            if entries.len() == limit {
                return Ok(Page {
                    entries,
                    next: last_shown,
                });
            }
            entries.push(entry);
            last_shown = Some(cursor);
        }
    }
    Ok(Page {
        entries,
        next: None,
    })
}

impl Filter {
    /// The filter and cursor a query asks for, by the names the REST API and the web
    /// UI's form share: `actor`, `repository` (a target prefix), `action`, `since` and
    /// `until` (times or dates, see [`parse_time`]), `q` (text), `cursor`. An empty
    /// value counts as absent, as a form sends its empty fields. `Err` says which.
    pub fn from_query<'q>(
        value: impl Fn(&'static str) -> Option<&'q str>,
    ) -> Result<(Filter, Option<Cursor>), String> {
        let given = |key| value(key).filter(|v| !v.is_empty());
        let text = |key| given(key).map(str::to_string);
        let time = |key| {
            given(key)
                .map(|t| parse_time(t).map_err(|e| format!("{key}: {e}")))
                .transpose()
        };
        let filter = Filter {
            actor: text("actor"),
            target_prefix: text("repository"),
            action: text("action"),
            since: time("since")?,
            until: time("until")?,
            text: text("q"),
        };
        let cursor = given("cursor").map(str::parse::<Cursor>).transpose()?;
        Ok((filter, cursor))
    }
}

/// Unix milliseconds of an RFC 3339 time (`2026-11-01T00:00:00Z`) or a date
/// (`2026-11-01`, its midnight UTC), for `--since`, `--until` and query strings.
pub fn parse_time(text: &str) -> Result<u64, String> {
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_string()
    };
    let time = humantime::parse_rfc3339_weak(&full).map_err(|e| {
        format!("{text:?}: {e}; write a UTC time such as 2026-11-01T00:00:00Z, or a date")
    })?;
    let since_epoch = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{text:?} is before 1970"))?;
    Ok(since_epoch.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(time: u64, actor: Option<&str>, action: &str, target: &str, detail: &str) -> Entry {
        Entry {
            time,
            actor: actor.map(str::to_string),
            client: None,
            action: action.into(),
            target: target.into(),
            detail: (!detail.is_empty()).then(|| detail.to_string()),
            count: 1,
        }
    }

    #[test]
    fn every_set_field_must_hold() {
        let push = entry(10, Some("alice"), "push", "team/app", "v1.2");
        let matches = |filter: Filter| filter.matches(&push);
        assert!(matches(Filter::default()));
        let actor = |name: &str| Filter {
            actor: Some(name.into()),
            ..Filter::default()
        };
        assert!(matches(actor("alice")));
        assert!(!matches(actor("bob")));
        assert!(!actor("alice").matches(&entry(10, None, "push", "team/app", "")));
        let prefix = |p: &str| Filter {
            target_prefix: Some(p.into()),
            ..Filter::default()
        };
        assert!(matches(prefix("team/")));
        assert!(matches(prefix("team/app")));
        assert!(!matches(prefix("team/application")));
        let action = |a: &str| Filter {
            action: Some(a.into()),
            ..Filter::default()
        };
        assert!(matches(action("push")));
        assert!(!matches(action("pull")));
        let text = |t: &str| Filter {
            text: Some(t.into()),
            ..Filter::default()
        };
        assert!(matches(text("V1.")), "the detail, ignoring case");
        assert!(matches(text("m/a")), "the target");
        assert!(matches(text("")));
        assert!(!matches(text("v2")));
        assert!(!matches(Filter {
            actor: Some("alice".into()),
            action: Some("delete".into()),
            ..Filter::default()
        }));
    }

    #[test]
    fn time_and_cursor_bound_the_keys() {
        let all = Filter::default();
        assert_eq!(all.span(None), Some((0, 0)..Cursor::END));
        let window = Filter {
            since: Some(100),
            until: Some(200),
            ..Filter::default()
        };
        assert_eq!(window.span(None), Some((100, 0)..(200, 0)));
        assert_eq!(
            window.span(Some(Cursor::new(150, 7))),
            Some((100, 0)..(150, 7))
        );
        assert_eq!(
            window.span(Some(Cursor::new(300, 0))),
            Some((100, 0)..(200, 0))
        );
        assert_eq!(window.span(Some(Cursor::new(100, 0))), None);
        let backwards = Filter {
            since: Some(200),
            until: Some(100),
            ..Filter::default()
        };
        assert_eq!(backwards.span(None), None);
    }

    #[test]
    fn cursors_round_trip_as_text() {
        let cursor = Cursor::new(1_793_491_200_000, 42);
        let text = cursor.to_string();
        assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        assert_eq!(text.parse::<Cursor>(), Ok(cursor));
        for bad in [
            "",
            "12",
            "a-1",
            "1-",
            "-1",
            "1-+2",
            "1-2-3",
            "99999999999999999999-1",
        ] {
            let err = bad.parse::<Cursor>().unwrap_err();
            assert!(err.contains("not a cursor"), "{bad}: {err}");
        }
    }

    /// Rows newest first, as the store reads them: times 10, 9, ..., 1.
    fn rows(actors: &[&str]) -> Vec<Result<(Cursor, Entry), ()>> {
        (1..=actors.len() as u64)
            .rev()
            .map(|t| {
                let actor = actors[t as usize - 1];
                Ok((Cursor::new(t, 0), entry(t, Some(actor), "push", "a", "")))
            })
            .collect()
    }

    fn times(page: &Page) -> Vec<u64> {
        page.entries.iter().map(|e| e.time).collect()
    }

    #[test]
    fn pages_end_where_the_next_begins() {
        let all = Filter::default();
        let log = rows(&["a"; 5]);
        let first = page(log.clone().into_iter(), &all, 2, MAX_SCANNED).unwrap();
        assert_eq!(times(&first), [5, 4]);
        assert_eq!(first.next, Some(Cursor::new(4, 0)));
        let exact = page(log.clone().into_iter(), &all, 5, MAX_SCANNED).unwrap();
        assert_eq!((times(&exact).len(), exact.next), (5, None));
        let zero = page(log.into_iter(), &all, 0, MAX_SCANNED).unwrap();
        assert_eq!(times(&zero), [5], "a page holds one entry at least");
        let long: Vec<_> = (0..MAX_PAGE as u64 + 5)
            .rev()
            .map(|t| Ok::<_, ()>((Cursor::new(t, 0), entry(t, None, "push", "a", ""))))
            .collect();
        let most = page(long.into_iter(), &all, usize::MAX, MAX_SCANNED).unwrap();
        assert_eq!(most.entries.len(), MAX_PAGE);
        assert_eq!(most.next, Some(Cursor::new(5, 0)));
    }

    #[test]
    fn a_sparse_filter_ends_the_page_at_the_scan_budget() {
        let bob = Filter {
            actor: Some("bob".into()),
            ..Filter::default()
        };
        // Times 1..=6: bob at 1 and 6.
        let log = rows(&["bob", "a", "a", "a", "a", "bob"]);
        let first = page(log.clone().into_iter(), &bob, 10, 3).unwrap();
        assert_eq!(times(&first), [6]);
        assert_eq!(
            first.next,
            Some(Cursor::new(4, 0)),
            "where the scan stopped"
        );
        let rest: Vec<_> = log.into_iter().skip(3).collect();
        let second = page(rest.into_iter(), &bob, 10, 3).unwrap();
        assert_eq!((times(&second), second.next), (vec![1], None));
        let failing = vec![
            Ok((Cursor::new(2, 0), entry(2, None, "push", "a", ""))),
            Err(()),
        ];
        assert_eq!(page(failing.into_iter(), &bob, 10, 3), Err(()));
    }

    #[test]
    fn times_as_people_write_them() {
        assert_eq!(parse_time("2026-11-01T00:00:00Z"), Ok(1_793_491_200_000));
        assert_eq!(parse_time("2026-11-01"), Ok(1_793_491_200_000));
        assert_eq!(
            parse_time("2026-11-01T10:00:00.250Z"),
            Ok(1_793_527_200_250)
        );
        let err = parse_time("yesterday").unwrap_err();
        assert!(err.contains("2026-11-01T00:00:00Z"), "{err}");
    }

    #[test]
    fn queries_name_the_filter_and_empty_fields_are_absent() {
        let query = |pairs: &'static [(&'static str, &'static str)]| {
            Filter::from_query(|key| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v))
        };
        let (filter, cursor) = query(&[
            ("actor", "alice"),
            ("repository", "alice/app"),
            ("action", ""),
            ("since", "2026-11-01"),
            ("q", "1.0"),
        ])
        .unwrap();
        assert_eq!(
            filter,
            Filter {
                actor: Some("alice".into()),
                target_prefix: Some("alice/app".into()),
                action: None,
                since: Some(parse_time("2026-11-01").unwrap()),
                until: None,
                text: Some("1.0".into()),
            }
        );
        assert_eq!(cursor, None);
        assert!(query(&[("until", "yesterday")])
            .unwrap_err()
            .starts_with("until: "));
        assert!(query(&[("cursor", "nonsense")]).is_err());
    }
}
