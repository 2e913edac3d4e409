//! One record of the activity log, and which answered registry requests make one.
//! Pure: the caller passes the time in.
//!
//! The notifier's classification (`notify::event::action_and_target`) decides what an
//! answer was, so a webhook and the log never disagree. Of what it reports, the log
//! keeps what a person would ask about: a manifest pushed (its blobs are parts of that
//! push), a manifest pulled (its blobs are parts of that pull), a delete, a mount.

use crate::api::Route;
use crate::notify::event::{action_and_target, Action};
use crate::notify::Exchange;
use serde::{Deserialize, Serialize};

/// One thing someone did. Also the export format: one JSON object per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Unix milliseconds; for aggregated pulls the start of their hour.
    pub time: u64,
    /// Who: a user (or robot) name; `None` for anonymous requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The client's IP address, as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// `push`, `pull`, `delete`, `mount`, or what another module records (`login`,
    /// `user.create`, ...).
    pub action: String,
    /// The repository (as stored: `docker.io/library/nginx` for a mirrored one), or the
    /// account object (`team:web`).
    pub target: String,
    /// The tag or digest, or what changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// 1, or the pulls an aggregated pull entry stands for.
    #[serde(default = "one")]
    pub count: u64,
}

fn one() -> u64 {
    1
}

/// What an answered request means for the log.
#[derive(Debug, PartialEq)]
pub enum Observed {
    /// A manifest push, a delete or a mount: an entry of its own.
    Entry(Entry),
    /// A manifest pull (at its own time, count 1), to be counted per hour.
    Pull(Entry),
}

/// What `exchange` means for the log, if anything.
pub fn observe(exchange: &Exchange, now_ms: u64) -> Option<Observed> {
    let (action, target) = action_and_target(exchange)?;
    let manifest = matches!(exchange.route, Route::Manifest(..));
    let reference = target.tag.or(target.digest);
    let detail = match action {
        Action::Mount => reference.map(|digest| match target.from_repository {
            Some(from) => format!("{digest} from {from}"),
            None => digest,
        }),
        _ => reference,
    };
    let entry = Entry {
        time: now_ms,
        actor: exchange.user.map(str::to_string),
        client: exchange.client.map(|ip| ip.to_string()),
        action: action.name().to_string(),
        target: target.repository,
        detail,
        count: 1,
    };
    match action {
        Action::Pull if manifest => Some(Observed::Pull(entry)),
        Action::Push if manifest => Some(Observed::Entry(entry)),
        Action::Pull | Action::Push => None,
        Action::Delete | Action::Mount => Some(Observed::Entry(entry)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{route, Body, Request, Response};
    use crate::notify::event::tests::{digest_answer, request, D, MANIFEST_TYPE};
    use crate::oci::RepoName;
    use bytes::Bytes;

    /// What alice's request from 192.0.2.7 and its answer make, at time 1000.
    fn observed(req: &Request, response: &Response) -> Option<Observed> {
        let route = route::parse(&req.path).unwrap();
        let repository = RepoName::parse("team/app").unwrap();
        let exchange = Exchange {
            route: &route,
            request: req,
            client: Some("192.0.2.7".parse().unwrap()),
            user: Some("alice"),
            repository: &repository,
            response,
        };
        observe(&exchange, 1000)
    }

    fn entry(action: &str, detail: &str) -> Entry {
        Entry {
            time: 1000,
            actor: Some("alice".into()),
            client: Some("192.0.2.7".into()),
            action: action.into(),
            target: "team/app".into(),
            detail: Some(detail.into()),
            count: 1,
        }
    }

    #[test]
    fn manifest_pushes_and_pulls_name_the_tag_or_the_digest() {
        let put = request(
            "PUT",
            "/v2/team/app/manifests/1.0",
            &[("content-type", MANIFEST_TYPE)],
        );
        assert_eq!(
            observed(&put, &digest_answer(201)),
            Some(Observed::Entry(entry("push", "1.0")))
        );
        let manifest = Response::new(200)
            .header("Content-Type", MANIFEST_TYPE)
            .header("Docker-Content-Digest", D)
            .body(Body::Bytes(Bytes::from_static(b"{}")));
        let by_digest = request("GET", &format!("/v2/team/app/manifests/{D}"), &[]);
        assert_eq!(
            observed(&by_digest, &manifest),
            Some(Observed::Pull(entry("pull", D)))
        );
        let head = request("HEAD", "/v2/team/app/manifests/1.0", &[]);
        assert_eq!(observed(&head, &manifest), None);
    }

    #[test]
    fn blobs_are_parts_of_a_push_or_a_pull() {
        let blob = request("GET", &format!("/v2/team/app/blobs/{D}"), &[]);
        let answer = Response::new(200).body(Body::HeadOf(5));
        assert_eq!(observed(&blob, &answer), None);
        let upload = request(
            "POST",
            &format!("/v2/team/app/blobs/uploads/?digest={D}"),
            &[],
        );
        assert_eq!(observed(&upload, &digest_answer(201)), None);
    }

    #[test]
    fn deletes_and_mounts_are_entries() {
        let delete = request("DELETE", "/v2/team/app/manifests/old", &[]);
        assert_eq!(
            observed(&delete, &Response::new(202)),
            Some(Observed::Entry(entry("delete", "old")))
        );
        let blob = request("DELETE", &format!("/v2/team/app/blobs/{D}"), &[]);
        assert_eq!(
            observed(&blob, &Response::new(202)),
            Some(Observed::Entry(entry("delete", D)))
        );
        let mount = request(
            "POST",
            &format!("/v2/team/app/blobs/uploads/?mount={D}&from=team%2Fbase"),
            &[],
        );
        assert_eq!(
            observed(&mount, &digest_answer(201)),
            Some(Observed::Entry(entry(
                "mount",
                &format!("{D} from team/base")
            )))
        );
        assert_eq!(observed(&delete, &Response::new(404)), None);
    }

    #[test]
    fn the_export_format() {
        let anonymous = Entry {
            actor: None,
            client: None,
            detail: None,
            ..entry("pull", "")
        };
        let line = serde_json::to_string(&anonymous).unwrap();
        assert_eq!(
            line,
            r#"{"time":1000,"action":"pull","target":"team/app","count":1}"#
        );
        assert_eq!(serde_json::from_str::<Entry>(&line).unwrap(), anonymous);
        let without_count = r#"{"time":5,"action":"login","target":"user:bob"}"#;
        assert_eq!(
            serde_json::from_str::<Entry>(without_count).unwrap().count,
            1
        );
    }
}
