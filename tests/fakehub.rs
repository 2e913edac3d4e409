//! Tests of the simulated Docker Hub (`portcullis-loadtest fake-hub`) that the
//! pull-through cache is tested against: the token dance, manifests, the CDN redirect,
//! ranges, tag pages, the rate-limit counter, every fault kind, stop and restart.

#[allow(dead_code)]
mod common;

use common::fakehub::{
    place_image, place_index, put_blob, remove_tag, set_tag, FakeHub, FakeHubOptions, HubAuth,
    HubRequest, IndexFixture,
};
use common::{
    pseudo_random, run_with_timeout, sha256_digest, ImageFixture, OCI_INDEX_TYPE, OCI_MANIFEST_TYPE,
};

use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use std::io::ErrorKind;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REPO: &str = "library/alpine";
/// Upper bound for any one request in these tests.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A fake hub serving one small image as `library/alpine:v1`.
struct Setup {
    hub: FakeHub,
    image: ImageFixture,
    client: Client,
    content: tempfile::TempDir,
}

impl Setup {
    fn new(options: FakeHubOptions) -> Setup {
        let content = tempfile::tempdir().expect("content dir");
        let image = ImageFixture::build("v1", &[48 * 1024]);
        place_image(content.path(), REPO, &image, "v1");
        let hub = FakeHub::start(content.path(), options);
        Setup {
            hub,
            image,
            client: client(CLIENT_TIMEOUT),
            content,
        }
    }

    fn anonymous() -> Setup {
        Setup::new(FakeHubOptions {
            auth: HubAuth::None,
            ..FakeHubOptions::default()
        })
    }

    fn content(&self) -> &Path {
        self.content.path()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.hub.registry_url())
    }

    fn cdn_url(&self, digest: &str) -> String {
        format!("http://{}{}", self.hub.cdn_host_port(), cdn_path(digest))
    }

    async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    /// A token for `scope` from the realm.
    async fn token(&self, scope: &str) -> String {
        let response = self
            .get(&format!("/token?service=registry.docker.io&scope={scope}"))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("token JSON");
        body["token"].as_str().expect("token").to_string()
    }

    fn last_request(&self) -> HubRequest {
        self.hub.requests().pop().expect("a logged request")
    }
}

/// The CDN path of a blob.
fn cdn_path(digest: &str) -> String {
    format!("/blobs/sha256/{}", common::hex_part(digest))
}

fn client(timeout: Duration) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()
        .expect("reqwest client")
}

fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII header").to_string())
}

fn must_header(response: &Response, name: &str) -> String {
    header(response, name).unwrap_or_else(|| {
        panic!(
            "{}: no {name} header: {:?}",
            response.url(),
            response.headers()
        )
    })
}

async fn error_code(response: Response) -> String {
    let body: Value = response.json().await.expect("error JSON");
    body["errors"][0]["code"]
        .as_str()
        .expect("error code")
        .to_string()
}

/// The `realm` of a Bearer challenge.
fn realm_of(challenge: &str) -> String {
    let start = challenge.find("realm=\"").expect("realm") + 7;
    let len = challenge[start..].find('"').expect("closing quote");
    challenge[start..start + len].to_string()
}

/// One raw GET; returns the announced Content-Length, the body bytes received, and how
/// the stream ended (`None`: clean EOF).
async fn raw_get(host_port: &str, path: &str) -> (Option<u64>, Vec<u8>, Option<ErrorKind>) {
    let mut stream = TcpStream::connect(host_port).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host_port}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut received = Vec::new();
    let mut piece = [0u8; 8192];
    let ending = loop {
        match tokio::time::timeout(CLIENT_TIMEOUT, stream.read(&mut piece)).await {
            Err(_) => panic!("no end of the answer within {CLIENT_TIMEOUT:?}"),
            Ok(Ok(0)) => break None,
            Ok(Ok(n)) => received.extend_from_slice(&piece[..n]),
            Ok(Err(e)) => break Some(e.kind()),
        }
    };
    let Some(split) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (None, received, ending);
    };
    let head = String::from_utf8_lossy(&received[..split]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().expect("Content-Length"));
    (length, received[split + 4..].to_vec(), ending)
}

// ---------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------

#[tokio::test]
async fn token_dance_and_its_refusals() {
    let s = Setup::new(FakeHubOptions::default());
    let other = ImageFixture::build("o1", &[8 * 1024]);
    place_image(s.content(), "library/other", &other, "o1");
    let host = s.hub.host_port();

    let base = s.get("/v2/").await;
    assert_eq!(base.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        must_header(&base, "www-authenticate"),
        format!("Bearer realm=\"http://{host}/token\",service=\"registry.docker.io\"")
    );
    let manifest_path = format!("/v2/{REPO}/manifests/v1");
    let refused = s.get(&manifest_path).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let challenge = must_header(&refused, "www-authenticate");
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"http://{host}/token\",service=\"registry.docker.io\",\
             scope=\"repository:{REPO}:pull\""
        )
    );

    let realm = realm_of(&challenge);
    let answer = s
        .client
        .get(&realm)
        .query(&[
            ("service", "registry.docker.io"),
            ("scope", &format!("repository:{REPO}:pull")),
        ])
        .send()
        .await
        .expect("token request");
    assert_eq!(answer.status(), StatusCode::OK);
    let body: Value = answer.json().await.expect("token JSON");
    let token = body["token"].as_str().expect("token").to_string();
    assert_eq!(body["access_token"], body["token"]);
    assert_eq!(body["expires_in"], 300);
    let issued_at = body["issued_at"].as_str().expect("issued_at");
    assert!(
        issued_at.len() == 20 && issued_at.ends_with('Z'),
        "{issued_at}"
    );

    let bearer = format!("Bearer {token}");
    let with_token = |path: &str| s.client.get(s.url(path)).header("authorization", &bearer);
    let ok = with_token("/v2/").send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.text().await.unwrap(), "{}");
    let manifest = with_token(&manifest_path).send().await.unwrap();
    assert_eq!(manifest.status(), StatusCode::OK);
    assert_eq!(manifest.bytes().await.unwrap(), s.image.manifest);

    // The token covers library/alpine only; library/missing does not exist.
    for (path, error) in [
        ("/v2/library/other/manifests/o1", "insufficient_scope"),
        ("/v2/library/missing/manifests/v1", "insufficient_scope"),
    ] {
        let refused = with_token(path).send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{path}");
        let challenge = must_header(&refused, "www-authenticate");
        assert!(
            challenge.ends_with(&format!(",error=\"{error}\"")),
            "{challenge}"
        );
    }
    let missing_token = s.token("repository:library/missing:pull").await;
    let still_refused = s
        .client
        .get(s.url("/v2/library/missing/tags/list"))
        .bearer_auth(missing_token)
        .send()
        .await
        .unwrap();
    assert_eq!(still_refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(still_refused).await, "UNAUTHORIZED");

    let unknown = s
        .client
        .get(s.url(&manifest_path))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert!(must_header(&unknown, "www-authenticate").ends_with(",error=\"invalid_token\""));

    let log = s.hub.requests();
    let schemes: Vec<&str> = log.iter().map(|r| r.authorization.as_str()).collect();
    assert_eq!(&schemes[..5], ["none", "none", "none", "bearer", "bearer"]);
    assert!(log[2]
        .path
        .starts_with("/token?service=registry.docker.io&scope="));
    assert_eq!(log[2].listener, "registry");
    assert!(log.iter().all(|r| !r.path.starts_with("/_control")));
}

#[tokio::test]
async fn token_lifetime_can_be_left_out() {
    let s = Setup::new(FakeHubOptions {
        token_expires_secs: 0,
        ..FakeHubOptions::default()
    });
    // Without service, with account: both are fine.
    let response = s
        .get(&format!(
            "/token?account=someone&scope=repository:{REPO}:pull"
        ))
        .await;
    let body: Value = response.json().await.unwrap();
    assert!(body.get("expires_in").is_none(), "{body}");
    assert!(body["token"].is_string());
}

#[tokio::test]
async fn token_realm_requires_the_configured_credentials() {
    let s = Setup::new(FakeHubOptions {
        credentials: Some(("alice".to_string(), "s3cret".to_string())),
        ..FakeHubOptions::default()
    });
    let realm = s.url(&format!(
        "/token?service=registry.docker.io&scope=repository:{REPO}:pull"
    ));
    let anonymous = s.client.get(&realm).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let with_password = |password: &'static str| {
        s.client
            .get(&realm)
            .basic_auth("alice", Some(password))
            .send()
    };
    let wrong = with_password("guess").await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = with_password("s3cret").await.unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    let token = right.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest = s
        .client
        .get(s.url(&format!("/v2/{REPO}/manifests/v1")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(manifest.status(), StatusCode::OK);
    let log = s.hub.requests();
    let statuses: Vec<(u16, &str)> = log
        .iter()
        .map(|r| (r.status, r.authorization.as_str()))
        .collect();
    assert_eq!(
        statuses,
        [
            (401, "none"),
            (401, "basic"),
            (200, "basic"),
            (200, "bearer")
        ]
    );
}

// ---------------------------------------------------------------------------
// Manifests, tags, the rate-limit counter
// ---------------------------------------------------------------------------

#[tokio::test]
async fn manifests_by_tag_and_digest_count_against_the_rate_limit() {
    let s = Setup::anonymous();
    let by_tag = format!("/v2/{REPO}/manifests/v1");
    let check_headers = |response: &Response, remaining: u32| {
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(must_header(response, "content-type"), OCI_MANIFEST_TYPE);
        assert_eq!(
            must_header(response, "docker-content-digest"),
            s.image.manifest_digest
        );
        assert_eq!(
            must_header(response, "content-length"),
            s.image.manifest.len().to_string()
        );
        assert_eq!(must_header(response, "ratelimit-limit"), "100;w=21600");
        assert_eq!(
            must_header(response, "ratelimit-remaining"),
            format!("{remaining};w=21600")
        );
    };
    let got = s.get(&by_tag).await;
    check_headers(&got, 99);
    assert_eq!(got.bytes().await.unwrap(), s.image.manifest);
    let head = s.client.head(s.url(&by_tag)).send().await.unwrap();
    check_headers(&head, 99);
    assert!(head.bytes().await.unwrap().is_empty());
    let by_digest = s
        .get(&format!("/v2/{REPO}/manifests/{}", s.image.manifest_digest))
        .await;
    check_headers(&by_digest, 98);
    assert_eq!(by_digest.bytes().await.unwrap(), s.image.manifest);

    let unknown_tag = s.get(&format!("/v2/{REPO}/manifests/nope")).await;
    assert_eq!(unknown_tag.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(unknown_tag).await, "MANIFEST_UNKNOWN");
    let layer_as_manifest = s
        .get(&format!(
            "/v2/{REPO}/manifests/{}",
            s.image.layer_digests[0]
        ))
        .await;
    assert_eq!(layer_as_manifest.status(), StatusCode::NOT_FOUND);
    let unknown_repo = s.get("/v2/library/nope/manifests/v1").await;
    assert_eq!(unknown_repo.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(unknown_repo).await, "NAME_UNKNOWN");

    // A tag moves when index.json is replaced; the next pull sees it.
    let v2 = ImageFixture::build("v2", &[8 * 1024]);
    place_image(s.content(), REPO, &v2, "v1");
    let moved = s.get(&by_tag).await;
    assert_eq!(
        must_header(&moved, "docker-content-digest"),
        v2.manifest_digest
    );
    remove_tag(s.content(), REPO, "v1");
    assert_eq!(s.get(&by_tag).await.status(), StatusCode::NOT_FOUND);

    s.hub.reset();
    assert!(s.hub.requests().is_empty());
    let after_reset = s
        .get(&format!("/v2/{REPO}/manifests/{}", v2.manifest_digest))
        .await;
    assert_eq!(
        must_header(&after_reset, "ratelimit-remaining"),
        "99;w=21600"
    );
}

#[tokio::test]
async fn multi_platform_index_and_its_children() {
    let s = Setup::anonymous();
    let index = IndexFixture::build("multi");
    place_index(s.content(), "library/multi", &index, "latest");
    let got = s.get("/v2/library/multi/manifests/latest").await;
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(must_header(&got, "content-type"), OCI_INDEX_TYPE);
    assert_eq!(
        must_header(&got, "docker-content-digest"),
        index.index_digest
    );
    let body: Value = serde_json::from_slice(&got.bytes().await.unwrap()).unwrap();
    let architectures: Vec<&str> = body["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(architectures, ["amd64", "arm64"]);
    for platform in &index.platforms {
        let child = s
            .get(&format!(
                "/v2/library/multi/manifests/{}",
                platform.manifest_digest
            ))
            .await;
        assert_eq!(child.status(), StatusCode::OK);
        assert_eq!(must_header(&child, "content-type"), OCI_MANIFEST_TYPE);
        assert_eq!(child.bytes().await.unwrap(), platform.manifest);
        for blob in std::iter::once(&platform.config_digest).chain(&platform.layer_digests) {
            let head = s
                .client
                .head(s.url(&format!("/v2/library/multi/blobs/{blob}")))
                .send()
                .await
                .unwrap();
            assert_eq!(head.status(), StatusCode::OK, "{blob}");
        }
    }
    assert_ne!(
        index.platform("amd64").config_digest,
        index.platform("arm64").config_digest
    );
}

#[tokio::test]
async fn tags_come_in_pages_with_next_links() {
    let s = Setup::anonymous();
    for tag in ["a", "e", "c", "b", "d"] {
        set_tag(
            s.content(),
            REPO,
            tag,
            OCI_MANIFEST_TYPE,
            &s.image.manifest_digest,
        );
    }
    let all: Value = s
        .get(&format!("/v2/{REPO}/tags/list"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        all,
        json!({"name": REPO, "tags": ["a", "b", "c", "d", "e", "v1"]})
    );

    let mut path = format!("/v2/{REPO}/tags/list?n=4");
    let mut pages = Vec::new();
    loop {
        let response = s.get(&path).await;
        let link = header(&response, "link");
        let body: Value = response.json().await.unwrap();
        pages.push(body["tags"].clone());
        let Some(link) = link else { break };
        assert!(link.ends_with(">; rel=\"next\""), "{link}");
        path = link[1..link.find('>').unwrap()].to_string();
    }
    assert_eq!(pages, [json!(["a", "b", "c", "d"]), json!(["e", "v1"])]);
    let after: Value = s
        .get(&format!("/v2/{REPO}/tags/list?n=2&last=b"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after["tags"], json!(["c", "d"]));
    let bad = s.get(&format!("/v2/{REPO}/tags/list?n=many")).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(bad).await, "PAGINATION_NUMBER_INVALID");
}

#[tokio::test]
async fn the_accept_header_is_logged() {
    let s = Setup::anonymous();
    s.client
        .get(s.url(&format!("/v2/{REPO}/manifests/v1")))
        .header("accept", OCI_MANIFEST_TYPE)
        .header("accept", OCI_INDEX_TYPE)
        .send()
        .await
        .unwrap();
    let logged = s.last_request();
    assert_eq!(
        logged.accept,
        Some(format!("{OCI_MANIFEST_TYPE}, {OCI_INDEX_TYPE}"))
    );
    assert_eq!((logged.range, logged.fault), (None, None));
}

// ---------------------------------------------------------------------------
// Blobs and the CDN
// ---------------------------------------------------------------------------

#[tokio::test]
async fn blob_gets_redirect_to_a_cdn_that_refuses_credentials() {
    let s = Setup::new(FakeHubOptions::default());
    let token = s.token(&format!("repository:{REPO}:pull")).await;
    let layer = &s.image.layer_digests[0];
    let blob_url = s.url(&format!("/v2/{REPO}/blobs/{layer}"));
    let expected = s.image.blob(layer);

    let head = s
        .client
        .head(&blob_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        must_header(&head, "content-length"),
        expected.len().to_string()
    );
    assert_eq!(must_header(&head, "docker-content-digest"), *layer);
    assert!(header(&head, "location").is_none());

    let redirect = s
        .client
        .get(&blob_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = must_header(&redirect, "location");
    assert!(
        location.starts_with(&format!("{}?expires=", s.cdn_url(layer))),
        "{location}"
    );

    let from_cdn = s.client.get(&location).send().await.unwrap();
    assert_eq!(from_cdn.status(), StatusCode::OK);
    assert_eq!(must_header(&from_cdn, "accept-ranges"), "bytes");
    assert_eq!(
        must_header(&from_cdn, "content-type"),
        "application/octet-stream"
    );
    assert_eq!(sha256_digest(&from_cdn.bytes().await.unwrap()), *layer);

    let with_credentials = s
        .client
        .get(&location)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(with_credentials.status(), StatusCode::BAD_REQUEST);
    let log = s.hub.requests();
    let cdn: Vec<(u16, &str)> = log
        .iter()
        .filter(|r| r.listener == "cdn")
        .map(|r| (r.status, r.authorization.as_str()))
        .collect();
    assert_eq!(cdn, [(200, "none"), (400, "bearer")]);

    let unknown = s
        .client
        .get(s.url(&format!("/v2/{REPO}/blobs/sha256:{}", "0".repeat(64))))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(unknown).await, "BLOB_UNKNOWN");
}

#[tokio::test]
async fn the_cdn_serves_single_ranges_of_large_blobs() {
    let s = Setup::anonymous();
    // Larger than the 256 KiB streaming piece, so ranges cross piece boundaries.
    let data = pseudo_random(1_000_003, 7);
    let digest = put_blob(s.content(), "library/big", &data);
    let url = s.cdn_url(&digest);
    let len = data.len();

    let whole = s.client.get(&url).send().await.unwrap();
    assert_eq!(sha256_digest(&whole.bytes().await.unwrap()), digest);
    for (range, start, end) in [
        ("bytes=300000-", 300_000, len - 1),
        ("bytes=10-19", 10, 19),
        ("bytes=262140-524300", 262_140, 524_300),
        ("bytes=-5", len - 5, len - 1),
    ] {
        let part = s
            .client
            .get(&url)
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            must_header(&part, "content-range"),
            format!("bytes {start}-{end}/{len}")
        );
        assert_eq!(part.bytes().await.unwrap(), data[start..=end], "{range}");
    }
    let beyond = s
        .client
        .get(&url)
        .header("range", format!("bytes={len}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        must_header(&beyond, "content-range"),
        format!("bytes */{len}")
    );
    let head = s.client.head(&url).send().await.unwrap();
    assert_eq!(must_header(&head, "content-length"), len.to_string());
    assert_eq!(s.last_request().range, None);
    let missing = s
        .client
        .get(s.cdn_url(&sha256_digest(b"absent")))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

#[tokio::test]
async fn status_and_rate_limit_faults_replace_the_answer() {
    let s = Setup::anonymous();
    let manifest = format!("/v2/{REPO}/manifests/v1");
    s.hub.set_faults(json!([
        {"kind": "status", "status": 503, "target": "manifest", "times": 1},
        {"kind": "rate_limit", "retry_after_secs": 7, "target": "manifest", "method": "HEAD"},
        {"kind": "status", "status": 502, "target": "tags", "path_contains": "n=1"},
    ]));
    let unavailable = s.get(&manifest).await;
    assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(unavailable).await, "UNAVAILABLE");
    assert_eq!(
        s.get(&manifest).await.status(),
        StatusCode::OK,
        "times: 1 is used up"
    );

    let limited = s.client.head(s.url(&manifest)).send().await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(must_header(&limited, "retry-after"), "7");
    assert_eq!(must_header(&limited, "ratelimit-remaining"), "0;w=21600");

    let tags = format!("/v2/{REPO}/tags/list");
    assert_eq!(
        s.get(&format!("{tags}?n=1")).await.status(),
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(s.get(&tags).await.status(), StatusCode::OK);

    let listed = s.hub.faults();
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    s.hub.clear_faults();
    assert_eq!(
        s.client
            .head(s.url(&manifest))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let faults: Vec<Option<String>> = s.hub.requests().into_iter().map(|r| r.fault).collect();
    let named = |f: &str| Some(f.to_string());
    assert_eq!(
        faults,
        [
            named("status"),
            None,
            named("rate_limit"),
            named("status"),
            None,
            None
        ]
    );
}

#[tokio::test]
async fn truncate_sends_fewer_bytes_then_closes_cleanly() {
    let s = Setup::anonymous();
    let layer = &s.image.layer_digests[0];
    s.hub
        .set_faults(json!([{"kind": "truncate", "after_bytes": 1000, "target": "cdn"}]));
    let (length, body, ending) = raw_get(&s.hub.cdn_host_port(), &cdn_path(layer)).await;
    assert_eq!(length, Some(s.image.blob(layer).len() as u64));
    assert_eq!(body, s.image.blob(layer)[..1000]);
    assert_eq!(ending, None, "a FIN, not a reset");
    let logged = s.last_request();
    assert_eq!(
        (logged.status, logged.fault.as_deref()),
        (200, Some("truncate"))
    );
}

#[tokio::test]
async fn reset_breaks_the_connection_mid_body() {
    let s = Setup::anonymous();
    let layer = &s.image.layer_digests[0];
    s.hub
        .set_faults(json!([{"kind": "reset", "after_bytes": 1000, "target": "cdn"}]));
    let (length, body, ending) = raw_get(&s.hub.cdn_host_port(), &cdn_path(layer)).await;
    assert_eq!(length, Some(s.image.blob(layer).len() as u64));
    assert!(body.len() <= 1000, "{} body bytes", body.len());
    assert_eq!(ending, Some(ErrorKind::ConnectionReset));

    s.hub
        .set_faults(json!({"kind": "reset", "after_bytes": 10, "target": "manifest"}));
    let response = s.get(&format!("/v2/{REPO}/manifests/v1")).await;
    assert!(response.bytes().await.is_err(), "a reset body is an error");
}

#[tokio::test]
async fn wrong_bytes_keep_the_length_but_not_the_digest() {
    let s = Setup::anonymous();
    let layer = &s.image.layer_digests[0];
    s.hub
        .set_faults(json!([{"kind": "wrong_bytes", "target": "cdn", "times": 1}]));
    let bad = s.client.get(s.cdn_url(layer)).send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::OK);
    let bytes = bad.bytes().await.unwrap();
    assert_eq!(bytes.len(), s.image.blob(layer).len());
    assert_ne!(sha256_digest(&bytes), *layer);
    let good = s.client.get(s.cdn_url(layer)).send().await.unwrap();
    assert_eq!(sha256_digest(&good.bytes().await.unwrap()), *layer);
}

#[tokio::test]
async fn stall_never_answers_so_the_client_times_out() {
    let s = Setup::anonymous();
    s.hub
        .set_faults(json!([{"kind": "stall", "target": "base", "times": 1}]));
    let impatient = client(Duration::from_millis(300));
    let error = impatient.get(s.url("/v2/")).send().await.unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(s.get("/v2/").await.status(), StatusCode::OK);
    let log = s.hub.requests();
    assert_eq!((log[0].status, log[0].fault.as_deref()), (0, Some("stall")));
}

#[tokio::test]
async fn drop_closes_the_connection_without_an_answer() {
    let s = Setup::anonymous();
    s.hub
        .set_faults(json!([{"kind": "drop", "target": "blob"}]));
    let path = format!("/v2/{REPO}/blobs/{}", s.image.layer_digests[0]);
    let (length, received, _) = raw_get(&s.hub.host_port(), &path).await;
    assert_eq!((length, received.len()), (None, 0));
    assert!(s.client.head(s.url(&path)).send().await.is_err());
    assert_eq!(s.last_request().fault.as_deref(), Some("drop"));
}

#[tokio::test]
async fn slow_faults_still_deliver_everything() {
    let s = Setup::anonymous();
    let data = pseudo_random(40_000, 3);
    let digest = put_blob(s.content(), REPO, &data);
    s.hub.set_faults(json!([
        {"kind": "slow_first_byte", "delay_ms": 200, "target": "cdn", "method": "HEAD"},
        {"kind": "slow_body", "bytes_per_sec": 100000, "target": "cdn"},
    ]));
    let head = s.client.head(s.cdn_url(&digest)).send().await.unwrap();
    assert_eq!(must_header(&head, "content-length"), data.len().to_string());
    let slow = s.client.get(s.cdn_url(&digest)).send().await.unwrap();
    assert_eq!(slow.bytes().await.unwrap(), data);
    let faults: Vec<Option<String>> = s.hub.requests().into_iter().map(|r| r.fault).collect();
    assert_eq!(
        faults,
        [
            Some("slow_first_byte".to_string()),
            Some("slow_body".to_string())
        ]
    );
}

#[tokio::test]
async fn bad_fault_rules_are_refused_with_a_reason() {
    let s = Setup::anonymous();
    for (rules, says) in [
        (json!([{"kind": "explode", "target": "cdn"}]), "explode"),
        (
            json!([{"kind": "truncate", "after_byte": 3, "target": "cdn"}]),
            "after_byte",
        ),
        (json!({"kind": "drop"}), "target"),
        (
            json!({"kind": "status", "status": 200, "target": "any"}),
            "400 to 599",
        ),
    ] {
        let error = s.hub.try_set_faults(rules.clone()).unwrap_err();
        assert!(
            error.contains(" 400 ") && error.contains(says),
            "{rules}: {error}"
        );
    }
    assert_eq!(s.hub.faults(), json!([]));
}

// ---------------------------------------------------------------------------
// The process: bad input, stop and restart
// ---------------------------------------------------------------------------

#[tokio::test]
async fn malformed_requests_get_an_answer_not_a_crash() {
    let s = Setup::anonymous();
    for (request, status) in [
        ("GARBAGE\r\n\r\n".to_string(), "400"),
        (
            format!("GET /v2/ HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000)),
            "431",
        ),
        (
            "POST /_control/faults HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_string(),
            "501",
        ),
    ] {
        let (line, _, _) = common::raw_exchange(s.hub.port(), request.as_bytes(), CLIENT_TIMEOUT);
        assert_eq!(line.split_whitespace().nth(1), Some(status), "{line}");
    }
    assert_eq!(s.get("/v2/").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn stop_and_restart_on_the_same_ports() {
    let mut s = Setup::anonymous();
    let manifest = format!("/v2/{REPO}/manifests/v1");
    assert_eq!(s.get(&manifest).await.status(), StatusCode::OK);
    let (registry, cdn) = (s.hub.registry_url(), s.hub.cdn_host_port());
    s.hub.stop();
    // Fresh clients: a pooled connection to the killed process would fail differently.
    s.client = client(CLIENT_TIMEOUT);
    let gone = s.client.get(s.url(&manifest)).send().await.unwrap_err();
    assert!(gone.is_connect(), "{gone:?}");
    s.hub.restart();
    s.client = client(CLIENT_TIMEOUT);
    assert_eq!(
        (s.hub.registry_url(), s.hub.cdn_host_port()),
        (registry, cdn)
    );
    assert_eq!(s.get(&manifest).await.status(), StatusCode::OK);
    assert_eq!(
        s.hub.requests().len(),
        1,
        "a restarted hub starts a fresh log"
    );
}

#[test]
fn refuses_non_loopback_addresses_and_missing_content() {
    let content = tempfile::tempdir().unwrap();
    let fake_hub = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis-loadtest"));
        command.arg("fake-hub").args(args);
        run_with_timeout(&mut command, CLIENT_TIMEOUT)
    };
    let dir = content.path().to_str().unwrap();
    for (args, says) in [
        (vec!["--content", dir, "--listen", "0.0.0.0:0"], "refusing"),
        (
            vec!["--content", dir, "--cdn-listen", "10.0.0.1:80"],
            "refusing",
        ),
        (vec!["--content", dir, "--listen", "nonsense"], "--listen"),
        (vec!["--content", "/nonexistent/fakehub"], "not a directory"),
        (
            vec!["--content", dir, "--credentials", "nocolon"],
            "USER:PASSWORD",
        ),
    ] {
        let out = fake_hub(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
}
