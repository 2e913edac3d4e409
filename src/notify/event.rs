//! Events in the JSON form CNCF distribution (registry:2) POSTs to its endpoints, and
//! [`event_for`], the one place that decides which answered request is which event.
//! Pure: no I/O, no clock, no randomness; the caller passes ids and the time in.

use crate::api::route::{query_pairs, query_value};
use crate::api::{Request, Response, Route};
use crate::oci::{Reference, RepoName};
use serde::Serialize;
use std::net::IpAddr;
use std::time::SystemTime;

/// `Content-Type` of a POSTed envelope: version 1 of the format, as registry:2 sends it.
pub const ENVELOPE_MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";

/// Longest client-supplied text (user agent, host) kept in an event: events wait in
/// memory, and one request head may carry 64 KiB of such text.
const MAX_CLIENT_TEXT: usize = 512;

/// What a blob is when the request does not say; registry:2 reports blobs so too.
const BLOB_MEDIA_TYPE: &str = "application/octet-stream";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Push,
    Pull,
    Delete,
    /// A blob linked from another repository (`POST ...?mount=`).
    Mount,
}

/// What an endpoint's `events` list selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Push,
    Pull,
    Delete,
}

impl EventKind {
    /// The default `events` list.
    pub const ALL: [EventKind; 3] = [EventKind::Push, EventKind::Pull, EventKind::Delete];
}

impl std::str::FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<EventKind, String> {
        match s {
            "push" => Ok(EventKind::Push),
            "pull" => Ok(EventKind::Pull),
            "delete" => Ok(EventKind::Delete),
            other => Err(format!(
                "{other:?} is not an event; use \"push\", \"pull\" or \"delete\" (mounts count as push)"
            )),
        }
    }
}

impl Action {
    /// The name events and the activity log use (`"push"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Action::Push => "push",
            Action::Pull => "pull",
            Action::Delete => "delete",
            Action::Mount => "mount",
        }
    }

    pub fn kind(self) -> EventKind {
        match self {
            Action::Push | Action::Mount => EventKind::Push,
            Action::Pull => EventKind::Pull,
            Action::Delete => EventKind::Delete,
        }
    }
}

/// The body of one POST: events with no relation to each other.
#[derive(Serialize)]
pub struct Envelope<'a> {
    pub events: &'a [Event],
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub id: String,
    /// RFC 3339, UTC.
    pub timestamp: String,
    pub action: Action,
    pub target: Target,
    pub request: RequestRecord,
    pub actor: Actor,
    pub source: Source,
}

/// The manifest or blob the event is about. Deletes carry only the repository and the
/// digest (or the tag), as in registry:2.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The same as `size`; registry:2 still sends it for older consumers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    pub repository: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_repository: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// The request that caused the event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestRecord {
    pub id: String,
    /// The client's address (IP only: the port does not reach the API).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// The `Host` the client asked for (what registry:2 consumers match a registry by).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub method: String,
    pub useragent: String,
}

/// Who made the request; no name for anonymous requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Actor {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// This instance: `host:port` and an id that changes with every start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Source {
    pub addr: String,
    #[serde(rename = "instanceID")]
    pub instance_id: String,
}

/// One answered request, as far as events care.
pub struct Exchange<'a> {
    pub route: &'a Route,
    pub request: &'a Request,
    pub client: Option<IpAddr>,
    /// The logged-in user; `None` for anonymous requests.
    pub user: Option<&'a str>,
    /// The repository as stored: for a mirrored one the cached name
    /// (`docker.io/library/nginx`), however the request spelled it.
    pub repository: &'a RepoName,
    pub response: &'a Response,
}

/// What only the caller has: fresh ids, the time, this instance.
pub struct Occurrence<'a> {
    pub event_id: String,
    pub request_id: String,
    pub at: SystemTime,
    pub source: &'a Source,
}

/// The event an answered request makes, if any: successful (2xx) manifest and blob
/// pushes (a closed upload, a monolithic `POST`), mounts, `GET`s (pulls; `HEAD`s are
/// not pulls) and deletes. `occurrence` is asked for only when there is an event.
pub fn event_for<'s>(
    exchange: &Exchange,
    occurrence: impl FnOnce() -> Occurrence<'s>,
) -> Option<Event> {
    let (action, target) = action_and_target(exchange)?;
    let occurrence = occurrence();
    Some(Event {
        id: occurrence.event_id,
        timestamp: humantime::format_rfc3339_nanos(occurrence.at).to_string(),
        action,
        target,
        request: request_record(exchange, occurrence.request_id),
        actor: Actor {
            name: exchange.user.map(str::to_string),
        },
        source: occurrence.source.clone(),
    })
}

/// The classification behind [`event_for`]; the activity log (`crate::activity`) records
/// from it too, so the two never disagree about what an answer was.
pub(crate) fn action_and_target(exchange: &Exchange) -> Option<(Action, Target)> {
    let (req, response) = (exchange.request, exchange.response);
    if !(200..300).contains(&response.status) {
        return None;
    }
    let repository = exchange.repository.as_str().to_string();
    let deleted = |digest: Option<String>, tag: Option<String>| Target {
        repository: repository.clone(),
        digest,
        tag,
        ..Target::default()
    };
    let described = |resource: &str, digest: String, media_type: &str, size: Option<u64>| {
        let url = req.header("host").map(|host| {
            let scheme = if req.secure { "https" } else { "http" };
            format!(
                "{scheme}://{}/v2/{repository}/{resource}/{digest}",
                bounded(host)
            )
        });
        Target {
            media_type: Some(media_type.to_string()),
            size,
            length: size,
            digest: Some(digest),
            repository: repository.clone(),
            url,
            ..Target::default()
        }
    };
    let pushed_digest = || response_header(response, "docker-content-digest").map(str::to_string);
    let request_length = || {
        req.header("content-length")
            .and_then(|l| l.parse::<u64>().ok())
    };
    let tag_of = |reference: &Reference| match reference {
        Reference::Tag(tag) => Some(tag.to_string()),
        Reference::Digest(_) => None,
    };
    let event = match (exchange.route, req.method.as_str()) {
        (Route::Manifest(_, reference), "GET") => {
            let media_type = response_header(response, "content-type")?;
            let size = Some(response.body.content_length());
            let target = described("manifests", pushed_digest()?, media_type, size);
            (
                Action::Pull,
                Target {
                    tag: tag_of(reference),
                    ..target
                },
            )
        }
        (Route::Manifest(_, reference), "PUT") => {
            let media_type = req.header("content-type")?;
            let target = described("manifests", pushed_digest()?, media_type, request_length());
            (
                Action::Push,
                Target {
                    tag: tag_of(reference),
                    ..target
                },
            )
        }
        (Route::Manifest(_, Reference::Tag(tag)), "DELETE") => {
            (Action::Delete, deleted(None, Some(tag.to_string())))
        }
        (Route::Manifest(_, Reference::Digest(digest)), "DELETE")
        | (Route::Blob(_, digest), "DELETE") => {
            (Action::Delete, deleted(Some(digest.to_string()), None))
        }
        (Route::Blob(_, digest), "GET") => {
            let media_type = response_header(response, "content-type").unwrap_or(BLOB_MEDIA_TYPE);
            // A range read names the whole blob's size after the slash.
            let size = match response_header(response, "content-range") {
                Some(range) => range.rsplit('/').next().and_then(|s| s.parse().ok()),
                None => Some(response.body.content_length()),
            };
            (
                Action::Pull,
                described("blobs", digest.to_string(), media_type, size),
            )
        }
        // Closing an upload: the body is at most the last chunk, so its size is unknown.
        (Route::Upload(..), "PUT") => {
            let media_type = req.header("content-type").unwrap_or(BLOB_MEDIA_TYPE);
            (
                Action::Push,
                described("blobs", pushed_digest()?, media_type, None),
            )
        }
        // 201 to a POST: a mount, or a whole blob in one request; a 202 starts a session.
        (Route::UploadStart(_), "POST") if response.status == 201 => {
            let pairs = query_pairs(req.query.as_deref());
            let digest = pushed_digest()?;
            if query_value(&pairs, "mount").is_some() {
                let target = described("blobs", digest, BLOB_MEDIA_TYPE, None);
                let from_repository = query_value(&pairs, "from").map(bounded);
                (
                    Action::Mount,
                    Target {
                        from_repository,
                        ..target
                    },
                )
            } else {
                let media_type = req.header("content-type").unwrap_or(BLOB_MEDIA_TYPE);
                (
                    Action::Push,
                    described("blobs", digest, media_type, request_length()),
                )
            }
        }
        _ => return None,
    };
    Some(event)
}

fn request_record(exchange: &Exchange, id: String) -> RequestRecord {
    let req = exchange.request;
    RequestRecord {
        id,
        addr: exchange.client.map(|ip| ip.to_string()),
        host: req.header("host").map(bounded),
        method: req.method.to_string(),
        useragent: req.header("user-agent").map(bounded).unwrap_or_default(),
    }
}

/// A response header's value (handlers name headers in any case).
fn response_header<'r>(response: &'r Response, name: &str) -> Option<&'r str> {
    response
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Client-supplied text cut to [`MAX_CLIENT_TEXT`] bytes (on a character boundary).
fn bounded(text: &str) -> String {
    let mut end = text.len().min(MAX_CLIENT_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::route;
    use crate::api::Body;
    use bytes::Bytes;
    use serde_json::json;

    pub(crate) const D: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    pub(crate) const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

    /// A request as the edge hands it over (the activity log's tests use it too).
    pub(crate) fn request(method: &str, path_and_query: &str, headers: &[(&str, &str)]) -> Request {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (path_and_query, None),
        };
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        Request {
            method: method.parse().unwrap(),
            path: path.to_string(),
            query,
            headers: map,
            secure: false,
        }
    }

    fn source() -> Source {
        Source {
            addr: "registry.lan:5000".into(),
            instance_id: "instance".into(),
        }
    }

    /// The event for a request and its answer, by alice from 192.0.2.7, for a
    /// repository stored as `stored_as`.
    fn event(req: &Request, response: &Response, stored_as: &str) -> Option<Event> {
        event_by(
            req,
            response,
            stored_as,
            Some("alice"),
            Some("192.0.2.7".parse().unwrap()),
        )
    }

    fn event_by(
        req: &Request,
        response: &Response,
        stored_as: &str,
        user: Option<&str>,
        client: Option<IpAddr>,
    ) -> Option<Event> {
        let route = route::parse(&req.path).unwrap();
        let repository = RepoName::parse(stored_as).unwrap();
        let exchange = Exchange {
            route: &route,
            request: req,
            client,
            user,
            repository: &repository,
            response,
        };
        let source = source();
        event_for(&exchange, || Occurrence {
            event_id: "event-1".into(),
            request_id: "request-1".into(),
            at: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1500),
            source: &source,
        })
    }

    pub(crate) fn digest_answer(status: u16) -> Response {
        Response::new(status).header("Docker-Content-Digest", D)
    }

    #[test]
    fn a_manifest_push_by_tag_is_the_whole_registry_2_event() {
        let req = request(
            "PUT",
            "/v2/team/app/manifests/1.0",
            &[
                ("host", "registry.lan:5000"),
                ("content-type", MANIFEST_TYPE),
                ("content-length", "528"),
                ("user-agent", "skopeo/1.9"),
            ],
        );
        let event = event(&req, &digest_answer(201), "team/app").unwrap();
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            json!({
                "id": "event-1",
                "timestamp": "1970-01-01T00:00:01.500000000Z",
                "action": "push",
                "target": {
                    "mediaType": MANIFEST_TYPE,
                    "size": 528,
                    "length": 528,
                    "digest": D,
                    "repository": "team/app",
                    "url": format!("http://registry.lan:5000/v2/team/app/manifests/{D}"),
                    "tag": "1.0",
                },
                "request": {
                    "id": "request-1",
                    "addr": "192.0.2.7",
                    "host": "registry.lan:5000",
                    "method": "PUT",
                    "useragent": "skopeo/1.9",
                },
                "actor": { "name": "alice" },
                "source": { "addr": "registry.lan:5000", "instanceID": "instance" },
            })
        );
        let envelope = serde_json::to_value(Envelope { events: &[event] }).unwrap();
        assert_eq!(envelope["events"][0]["action"], "push");
    }

    #[test]
    fn pulls_are_gets_with_what_the_answer_says() {
        let manifest = Response::new(200)
            .header("Content-Type", MANIFEST_TYPE)
            .header("Docker-Content-Digest", D)
            .body(Body::Bytes(Bytes::from_static(b"{}")));
        let req = request("GET", "/v2/team/app/manifests/1.0", &[("host", "r:1")]);
        let pulled = event(&req, &manifest, "team/app").unwrap();
        assert_eq!(pulled.action, Action::Pull);
        assert_eq!(pulled.target.media_type.as_deref(), Some(MANIFEST_TYPE));
        assert_eq!(pulled.target.size, Some(2));
        assert_eq!(pulled.target.tag.as_deref(), Some("1.0"));
        let by_digest = request("GET", &format!("/v2/team/app/manifests/{D}"), &[]);
        let pulled = event(&by_digest, &manifest, "team/app").unwrap();
        assert_eq!((pulled.target.tag, pulled.target.url), (None, None));
        // HEAD only asks whether something exists.
        let head = request("HEAD", "/v2/team/app/manifests/1.0", &[]);
        assert_eq!(event(&head, &manifest, "team/app"), None);

        let whole = Response::new(200)
            .header("Content-Type", "application/octet-stream")
            .body(Body::HeadOf(1000));
        let blob = request("GET", &format!("/v2/team/app/blobs/{D}"), &[]);
        let pulled = event(&blob, &whole, "team/app").unwrap();
        assert_eq!(
            (pulled.action, pulled.target.size),
            (Action::Pull, Some(1000))
        );
        assert_eq!(pulled.target.digest.as_deref(), Some(D));
        let mut part = Response::new(206)
            .header("Content-Range", "bytes 10-19/1000")
            .body(Body::HeadOf(10));
        assert_eq!(
            event(&blob, &part, "team/app").unwrap().target.size,
            Some(1000)
        );
        part.status = 416;
        assert_eq!(event(&blob, &part, "team/app"), None);
    }

    #[test]
    fn mirrored_repositories_appear_under_their_stored_name() {
        let req = request("GET", &format!("/v2/nginx/blobs/{D}"), &[]);
        let answer = Response::new(200).body(Body::HeadOf(5));
        let pulled = event(&req, &answer, "docker.io/library/nginx").unwrap();
        assert_eq!(pulled.target.repository, "docker.io/library/nginx");
    }

    #[test]
    fn blob_pushes_and_mounts() {
        let closed = request(
            "PUT",
            &format!("/v2/a/blobs/uploads/8c0b6b5e-8f5f-4d5a-9a3f-0b7a1e2c3d4e?digest={D}"),
            &[("content-length", "0")],
        );
        let pushed = event(&closed, &digest_answer(201), "a").unwrap();
        assert_eq!(pushed.action, Action::Push);
        assert_eq!(pushed.target.digest.as_deref(), Some(D));
        assert_eq!(pushed.target.media_type.as_deref(), Some(BLOB_MEDIA_TYPE));
        assert_eq!(
            pushed.target.size, None,
            "a closing PUT does not show the size"
        );

        let monolithic = request(
            "POST",
            &format!("/v2/a/blobs/uploads/?digest={D}"),
            &[("content-length", "42")],
        );
        let pushed = event(&monolithic, &digest_answer(201), "a").unwrap();
        assert_eq!(
            (pushed.action, pushed.target.size),
            (Action::Push, Some(42))
        );

        let mount = request(
            "POST",
            &format!("/v2/a/blobs/uploads/?mount={D}&from=b%2Fc"),
            &[],
        );
        let mounted = event(&mount, &digest_answer(201), "a").unwrap();
        assert_eq!(mounted.action, Action::Mount);
        assert_eq!(mounted.action.kind(), EventKind::Push);
        assert_eq!(mounted.target.from_repository.as_deref(), Some("b/c"));
        // A mount that could not be made starts a session instead: nothing happened yet.
        assert_eq!(event(&mount, &Response::new(202), "a"), None);
        let session = request("POST", "/v2/a/blobs/uploads/", &[]);
        assert_eq!(event(&session, &Response::new(202), "a"), None);
        let chunk = request(
            "PATCH",
            "/v2/a/blobs/uploads/8c0b6b5e-8f5f-4d5a-9a3f-0b7a1e2c3d4e",
            &[],
        );
        assert_eq!(event(&chunk, &Response::new(202), "a"), None);
    }

    #[test]
    fn deletes_name_only_repository_and_digest_or_tag() {
        let by_digest = request("DELETE", &format!("/v2/a/manifests/{D}"), &[]);
        let deleted = event(&by_digest, &Response::new(202), "a").unwrap();
        assert_eq!(deleted.action, Action::Delete);
        assert_eq!(
            serde_json::to_value(&deleted.target).unwrap(),
            json!({ "repository": "a", "digest": D })
        );
        let tag = request("DELETE", "/v2/a/manifests/old", &[]);
        let deleted = event(&tag, &Response::new(202), "a").unwrap();
        assert_eq!(
            serde_json::to_value(&deleted.target).unwrap(),
            json!({ "repository": "a", "tag": "old" })
        );
        let blob = request("DELETE", &format!("/v2/a/blobs/{D}"), &[]);
        assert_eq!(
            event(&blob, &Response::new(202), "a").unwrap().action,
            Action::Delete
        );
        assert_eq!(event(&blob, &Response::new(404), "a"), None);
    }

    #[test]
    fn nothing_for_listings_and_failures() {
        for (method, path) in [
            ("GET", "/v2/a/tags/list"),
            ("GET", "/v2/_catalog"),
            ("GET", "/v2/"),
            ("GET", &format!("/v2/a/referrers/{D}")),
        ] {
            let req = request(method, path, &[]);
            assert_eq!(event(&req, &Response::new(200), "a"), None, "{path}");
        }
        let put = request(
            "PUT",
            "/v2/a/manifests/1",
            &[("content-type", MANIFEST_TYPE)],
        );
        assert_eq!(event(&put, &Response::new(400), "a"), None);
    }

    #[test]
    fn anonymous_actors_and_long_client_text() {
        let long_agent = "a".repeat(MAX_CLIENT_TEXT * 2);
        let req = request(
            "DELETE",
            "/v2/a/manifests/old",
            &[("user-agent", &long_agent)],
        );
        let event = event_by(&req, &Response::new(202), "a", None, None).unwrap();
        assert_eq!(serde_json::to_value(&event.actor).unwrap(), json!({}));
        assert_eq!(event.request.useragent.len(), MAX_CLIENT_TEXT);
        // Cut on a character boundary, whatever the text.
        assert_eq!(bounded(&"é".repeat(MAX_CLIENT_TEXT)).len(), MAX_CLIENT_TEXT);
        assert_eq!(
            bounded(&format!("a{}", "é".repeat(MAX_CLIENT_TEXT))).len(),
            MAX_CLIENT_TEXT - 1
        );
        assert_eq!(event.request.addr, None);
    }

    #[test]
    fn action_names_are_their_json() {
        for action in [Action::Push, Action::Pull, Action::Delete, Action::Mount] {
            assert_eq!(serde_json::to_value(action).unwrap(), action.name());
        }
    }

    #[test]
    fn event_names_in_configuration() {
        assert_eq!("pull".parse::<EventKind>(), Ok(EventKind::Pull));
        let err = "mount".parse::<EventKind>().unwrap_err();
        assert!(err.contains("count as push"), "{err}");
    }
}
