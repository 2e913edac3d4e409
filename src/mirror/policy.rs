//! Cache policy of the pull-through cache, as pure functions: which upstream serves a
//! request, what a tag's cached records answer for an `Accept` list, when a tag must
//! be revalidated, and when an upstream counts as down. No I/O here.

use crate::auth::access::glob_match;
use crate::config::MirrorConfig;
use crate::oci::manifest::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
use crate::oci::RepoName;
use crate::store::CachedTag;
use std::time::{Duration, Instant};

/// Where a repository named in a request lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Stored here only: never sent upstream, accepts pushes.
    Local,
    /// Served from upstream `upstream` (an index into the configured upstreams).
    Upstream {
        upstream: usize,
        /// The repository's name upstream (`library/nginx`).
        remote: RepoName,
        /// The repository the cache keeps it in: `<upstream name>/<remote>`, the same
        /// however the client named it (`?ns=`, path prefix or the default upstream).
        cached_as: RepoName,
    },
}

/// Chooses the upstream for `repo` as named in the request path, and the request's
/// `ns` parameter if any:
/// - `ns` that names an upstream: that registry's image (containerd, the OCI spec);
/// - otherwise a first path component that names an upstream (`ghcr.io/org/app`);
/// - otherwise the default upstream, unless `mirror.local` matches the name.
///
/// An `ns` naming no upstream (this registry's own name, say) is as if absent, so it
/// cannot reach a cached repository by another route than its name gives.
/// In every case the upstream must also list the name in its `repositories`.
pub fn select(config: &MirrorConfig, repo: &RepoName, ns: Option<&str>) -> Selection {
    let by_name = |name: &str| config.upstreams.iter().position(|u| u.name == name);
    let (upstream, remote) = if let Some(i) = ns.and_then(by_name) {
        (i, repo.as_str().to_string())
    } else if let Some((i, rest)) = repo
        .as_str()
        .split_once('/')
        .and_then(|(first, rest)| by_name(first).map(|i| (i, rest)))
    {
        (i, rest.to_string())
    } else if config.local.iter().any(|p| glob_match(p, repo.as_str())) {
        return Selection::Local;
    } else {
        match config.default_upstream.as_deref().and_then(by_name) {
            Some(i) => (i, repo.as_str().to_string()),
            None => return Selection::Local,
        }
    };
    let upstream_config = &config.upstreams[upstream];
    let remote = upstream_name(&upstream_config.name, &remote);
    if !upstream_config
        .repositories
        .iter()
        .any(|p| glob_match(p, &remote))
    {
        return Selection::Local;
    }
    let (Ok(remote), Ok(cached_as)) = (
        RepoName::parse(&remote),
        RepoName::parse(&format!("{}/{remote}", upstream_config.name)),
    ) else {
        return Selection::Local;
    };
    Selection::Upstream {
        upstream,
        remote,
        cached_as,
    }
}

/// Docker Hub keeps official images under `library/`: `nginx` is `library/nginx`.
pub fn upstream_name(upstream: &str, repo: &str) -> String {
    if upstream == "docker.io" && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo.to_string()
    }
}

/// The media types a client accepts, from its `Accept` header lines (one list or
/// several lines, any order, parameters and spacing ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accept {
    types: Vec<String>,
    any: bool,
}

/// What clients that send no `Accept` get from registries, and what is sent upstream
/// for them: every current manifest format.
pub const DEFAULT_ACCEPT: [&str; 4] = [
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
];

impl Accept {
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Accept {
        let mut types = Vec::new();
        let mut any = false;
        for item in lines.into_iter().flat_map(|l| l.split(',')) {
            let mut parts = item.split(';');
            let media_type = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            if media_type.is_empty() || refused {
                continue;
            }
            if media_type == "*/*" {
                any = true;
            } else if !types.contains(&media_type) {
                types.push(media_type);
            }
        }
        // No list at all: like every registry, anything goes.
        if types.is_empty() {
            any = true;
        }
        Accept { types, any }
    }

    pub fn allows(&self, media_type: &str) -> bool {
        self.any
            || self
                .types
                .iter()
                .any(|t| t.eq_ignore_ascii_case(media_type))
    }

    /// The `Accept` values to send upstream: the client's own, or every current
    /// format for a client that named none.
    pub fn upstream_values(&self) -> Vec<String> {
        if self.types.is_empty() {
            DEFAULT_ACCEPT.iter().map(|t| t.to_string()).collect()
        } else {
            let mut values = self.types.clone();
            if self.any {
                values.push("*/*".to_string());
            }
            values
        }
    }
}

fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// The cached record of a tag that answers a client with `accept`: an index if the
/// client takes one (as registries answer), else a single manifest it takes; of
/// those, the one the upstream confirmed last (a tag that moved from a Docker
/// manifest list to an OCI index leaves the older record behind).
pub fn pick<'a>(records: &'a [CachedTag], accept: &Accept) -> Option<&'a CachedTag> {
    let acceptable = || records.iter().filter(|r| accept.allows(&r.media_type));
    acceptable()
        .filter(|r| is_index(&r.media_type))
        .max_by_key(|r| r.checked_at)
        .or_else(|| acceptable().max_by_key(|r| r.checked_at))
}

/// A cached tag younger than the TTL is served without asking the upstream.
pub fn is_fresh(checked_at: u64, now: u64, ttl: Duration) -> bool {
    now.saturating_sub(checked_at) < ttl.as_secs()
}

/// When to fetch a new token: a little before the upstream says it expires (10%
/// of its life, at most 30 s), so no request is sent with a token about to lapse.
/// Tokens without `expires_in` live 60 s (the token spec's default).
pub fn token_refresh_after(expires_in: Option<u64>) -> Duration {
    let life = Duration::from_secs(expires_in.unwrap_or(60).max(1));
    life - (life / 10).min(Duration::from_secs(30))
}

/// The count of a `ratelimit-remaining` header (`95;w=21600` -> 95), for the gauge.
pub fn rate_limit_count(value: &str) -> Option<i64> {
    value.split(';').next()?.trim().parse().ok()
}

/// `Retry-After` in seconds (the form registries send); an HTTP date or junk counts
/// as a minute, bounded to an hour so a bad header cannot stop an upstream for long.
pub fn retry_after(value: Option<&str>) -> Duration {
    let secs = value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(60);
    Duration::from_secs(secs.min(3600))
}

/// The next page of a paginated listing, from its `Link` header:
/// `</v2/x/tags/list?last=a&n=100>; rel="next"`.
pub fn next_link(link: &str) -> Option<&str> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"));
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then_some(target)
    })
}

/// How an upstream asks to be authenticated (its `WWW-Authenticate` on a 401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Get a token from `realm` for `service` (Docker Hub, most registries).
    Bearer {
        realm: String,
        service: Option<String>,
    },
    Basic,
}

/// Parses `Bearer realm="https://auth.docker.io/token",service="registry.docker.io",...`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let (mut realm, mut service) = (None, None);
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_once(',').map_or((after, ""), |(v, a)| (v, a)),
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value.to_string()),
            "service" => service = Some(value.to_string()),
            _ => {}
        }
        rest = after.trim_start_matches([',', ' ']);
    }
    Some(Challenge::Bearer {
        realm: realm.filter(|r| r.starts_with("https://") || r.starts_with("http://"))?,
        service,
    })
}

/// Consecutive failures that mark an upstream down.
pub const FAILURES_TO_DOWN: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// An upstream's health: after [`FAILURES_TO_DOWN`] failures in a row it is down for
/// a back-off that doubles while probes keep failing, so requests meanwhile serve
/// stale content or fail at once instead of each waiting out a timeout.
#[derive(Debug, Clone, Default)]
pub struct Health {
    failures: u32,
    down_until: Option<Instant>,
    backoff: Duration,
}

impl Health {
    pub fn is_down(&self, now: Instant) -> bool {
        self.down_until.is_some_and(|until| now < until)
    }

    /// Whether the upstream has been marked down (its back-off may have run out,
    /// waiting for a probe).
    pub fn marked_down(&self) -> bool {
        self.down_until.is_some()
    }

    pub fn record_success(&mut self) {
        *self = Health::default();
    }

    /// Counts a failure; returns the back-off when this failure marks it down (or
    /// keeps it down after a failed probe).
    pub fn record_failure(&mut self, now: Instant) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        if self.failures < FAILURES_TO_DOWN {
            return None;
        }
        self.backoff = if self.backoff.is_zero() {
            FIRST_BACKOFF
        } else {
            (self.backoff * 2).min(MAX_BACKOFF)
        };
        self.down_until = Some(now + self.backoff);
        Some(self.backoff)
    }

    pub fn down_until(&self) -> Option<Instant> {
        self.down_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamConfig;
    use crate::oci::Digest;

    fn config() -> MirrorConfig {
        let mut ghcr = UpstreamConfig::named("ghcr.io", None);
        ghcr.repositories = vec!["acme/*".into()];
        MirrorConfig {
            upstreams: vec![UpstreamConfig::named("docker.io", None), ghcr],
            default_upstream: Some("docker.io".into()),
            local: vec!["team/*".into()],
            offline: false,
        }
    }

    fn name(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    fn upstream(i: usize, remote: &str, cached_as: &str) -> Selection {
        Selection::Upstream {
            upstream: i,
            remote: name(remote),
            cached_as: name(cached_as),
        }
    }

    #[test]
    fn selection_by_ns_prefix_default_and_local() {
        let c = config();
        let nginx = upstream(0, "library/nginx", "docker.io/library/nginx");
        // The default upstream, with Docker Hub's library/ for official images.
        assert_eq!(select(&c, &name("library/nginx"), None), nginx);
        assert_eq!(select(&c, &name("nginx"), None), nginx);
        // ns (containerd) and a path prefix land in the same cached repository.
        assert_eq!(select(&c, &name("library/nginx"), Some("docker.io")), nginx);
        assert_eq!(select(&c, &name("docker.io/nginx"), None), nginx);
        assert_eq!(
            select(&c, &name("ghcr.io/acme/app"), None),
            upstream(1, "acme/app", "ghcr.io/acme/app")
        );
        assert_eq!(
            select(&c, &name("acme/app"), Some("ghcr.io")),
            upstream(1, "acme/app", "ghcr.io/acme/app")
        );
        // Outside the upstream's repositories, local patterns: local.
        assert_eq!(
            select(&c, &name("ghcr.io/other/app"), None),
            Selection::Local
        );
        assert_eq!(select(&c, &name("team/app"), None), Selection::Local);
        // An ns naming no upstream is ignored: the name decides.
        assert_eq!(
            select(&c, &name("team/app"), Some("mirror.lan:5000")),
            Selection::Local
        );
        assert_eq!(select(&c, &name("docker.io/nginx"), Some("bogus")), nginx);
        // ns wins over local patterns: it says the image is Docker Hub's.
        assert_eq!(
            select(&c, &name("team/app"), Some("docker.io")),
            upstream(0, "team/app", "docker.io/team/app")
        );
        let no_default = MirrorConfig {
            default_upstream: None,
            ..config()
        };
        assert_eq!(
            select(&no_default, &name("library/nginx"), None),
            Selection::Local
        );
        assert_eq!(
            select(&MirrorConfig::default(), &name("a/b"), Some("docker.io")),
            Selection::Local
        );
    }

    #[test]
    fn accept_lists_in_any_order_and_spacing_are_the_same() {
        let docker = Accept::parse([
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.oci.image.index.v1+json, application/json; q=0.5",
        ]);
        let reordered = Accept::parse([
            " application/json;q=0.5 ,application/vnd.oci.image.index.v1+json",
            "APPLICATION/vnd.docker.distribution.manifest.v2+json",
        ]);
        assert!(docker.allows(OCI_INDEX) && reordered.allows(OCI_INDEX));
        assert!(docker.allows(DOCKER_MANIFEST) && reordered.allows(DOCKER_MANIFEST));
        assert!(!docker.allows(OCI_MANIFEST) && !reordered.allows(OCI_MANIFEST));
        let refused = Accept::parse(["application/vnd.oci.image.index.v1+json;q=0, */*"]);
        assert!(refused.allows(OCI_MANIFEST));
        assert!(Accept::parse(Vec::<&str>::new()).allows(OCI_INDEX));
        assert_eq!(
            Accept::parse(Vec::<&str>::new()).upstream_values().len(),
            DEFAULT_ACCEPT.len()
        );
        let containerd = Accept::parse([&format!("{OCI_MANIFEST}, {DOCKER_MANIFEST}, */*")[..]]);
        assert_eq!(
            containerd.upstream_values(),
            vec![OCI_MANIFEST, DOCKER_MANIFEST, "*/*"]
        );
    }

    #[test]
    fn pick_prefers_an_index_the_client_accepts() {
        let record = |media_type: &str, seed: &[u8]| CachedTag {
            media_type: media_type.into(),
            digest: Digest::sha256_of(seed),
            checked_at: 0,
        };
        let mut records = vec![
            record(DOCKER_MANIFEST, b"single"),
            record(OCI_INDEX, b"index"),
        ];
        let modern = Accept::parse([OCI_INDEX, DOCKER_MANIFEST]);
        let old = Accept::parse([DOCKER_MANIFEST]);
        assert_eq!(pick(&records, &modern).unwrap().media_type, OCI_INDEX);
        assert_eq!(pick(&records, &old).unwrap().media_type, DOCKER_MANIFEST);
        assert!(pick(&records, &Accept::parse([OCI_MANIFEST])).is_none());
        assert!(pick(&[], &modern).is_none());
        // The tag moved from a manifest list to an OCI index: the newer record wins.
        records[1].checked_at = 10;
        records.push(CachedTag {
            checked_at: 5,
            ..record(DOCKER_MANIFEST_LIST, b"old list")
        });
        let both = Accept::parse([OCI_INDEX, DOCKER_MANIFEST_LIST]);
        assert_eq!(pick(&records, &both).unwrap().media_type, OCI_INDEX);
        records[2].checked_at = 20;
        assert_eq!(
            pick(&records, &both).unwrap().media_type,
            DOCKER_MANIFEST_LIST
        );
    }

    #[test]
    fn freshness_and_token_lifetimes() {
        let ttl = Duration::from_secs(300);
        assert!(is_fresh(1000, 1299, ttl));
        assert!(!is_fresh(1000, 1300, ttl));
        // A clock that went backwards does not make a tag stale forever.
        assert!(is_fresh(1000, 900, ttl));
        assert!(!is_fresh(1000, 1000, Duration::ZERO));
        assert_eq!(token_refresh_after(Some(300)), Duration::from_secs(270));
        assert_eq!(token_refresh_after(None), Duration::from_secs(54));
        assert_eq!(token_refresh_after(Some(3600)), Duration::from_secs(3570));
        assert!(token_refresh_after(Some(1)) < Duration::from_secs(1));
        assert!(token_refresh_after(Some(0)) > Duration::ZERO);
    }

    #[test]
    fn retry_after_and_links() {
        assert_eq!(retry_after(Some("7")), Duration::from_secs(7));
        assert_eq!(
            retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            Duration::from_secs(60)
        );
        assert_eq!(retry_after(None), Duration::from_secs(60));
        assert_eq!(retry_after(Some("999999")), Duration::from_secs(3600));
        assert_eq!(
            next_link("</v2/a/tags/list?last=b&n=2>; rel=\"next\""),
            Some("/v2/a/tags/list?last=b&n=2")
        );
        assert_eq!(next_link("</x>; rel=\"prev\""), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                "Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\",scope=\"repository:library/nginx:pull\""
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            })
        );
        assert_eq!(
            parse_challenge("bearer realm=http://127.0.0.1:9/token"),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:9/token".into(),
                service: None,
            })
        );
        assert_eq!(parse_challenge("Basic realm=\"x\""), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
        assert_eq!(parse_challenge("Bearer realm=\"file:///etc/passwd\""), None);
        assert_eq!(parse_challenge("Bearer realm=\"unterminated"), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn health_marks_down_after_repeated_failures_and_backs_off() {
        let now = Instant::now();
        let mut health = Health::default();
        assert_eq!(health.record_failure(now), None);
        assert_eq!(health.record_failure(now), None);
        assert!(!health.is_down(now));
        let first = health
            .record_failure(now)
            .expect("third failure marks down");
        assert!(health.is_down(now));
        assert!(!health.is_down(now + first));
        let second = health.record_failure(now + first).unwrap();
        assert_eq!(second, first * 2);
        for _ in 0..10 {
            health.record_failure(now);
        }
        assert_eq!(health.backoff, MAX_BACKOFF);
        health.record_success();
        assert!(!health.is_down(now) && !health.marked_down());
    }

    #[test]
    fn rate_limit_counts() {
        assert_eq!(rate_limit_count("95;w=21600"), Some(95));
        assert_eq!(rate_limit_count(" 7 "), Some(7));
        assert_eq!(rate_limit_count("lots"), None);
    }
}
