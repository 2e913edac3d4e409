//! The load generator's side of a fake hub (`portcullis-loadtest fake-hub`, see
//! `fakehub/`): its control API, its request log counted per image, images placed in
//! its content directory, and pulls straight from it as a Docker client does them
//! (the token dance, then blob GETs that follow the 307 to the CDN).

use crate::client::{Api, ClientOptions, Result, Target};
use crate::image::{write_oci_layout, Image};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One line of the hub's request log (`GET /_control/requests`); other fields ignored.
#[derive(Deserialize, Debug, Clone)]
pub struct HubRequest {
    /// `registry` or `cdn`.
    pub listener: String,
    pub method: String,
    /// Path and query.
    pub path: String,
}

/// A running fake hub: its registry listener and the content directory it serves.
pub struct Hub {
    api: Api,
    content: PathBuf,
}

/// What a control call answered, or why it failed.
async fn control_body(what: &str, response: reqwest::Response) -> Result<bytes::Bytes> {
    let status = response.status();
    let body = response.bytes().await.map_err(|e| format!("{what}: {e}"))?;
    if status != StatusCode::OK {
        return Err(format!(
            "{what}: HTTP {status} {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        ));
    }
    Ok(body)
}

impl Hub {
    /// The hub at `url` (its registry listener, loopback only) serving `content`.
    pub fn new(url: &str, content: PathBuf, options: &ClientOptions) -> Result<Hub> {
        let base = crate::guard::parse_target(url)?;
        if !content.is_dir() {
            return Err(format!(
                "fake hub content {}: not a directory",
                content.display()
            ));
        }
        // Its own connections: never the credentials or CA of the target under test.
        let options = ClientOptions {
            ca: None,
            credentials: None,
            h2: false,
            timeout: options.timeout,
        };
        let target = Target::new(base, options, 1)?;
        Ok(Hub {
            api: target.api(0),
            content,
        })
    }

    /// The registry listener's API (for pulls straight from the hub).
    pub fn api(&self) -> &Api {
        &self.api
    }

    async fn control(
        &self,
        method: Method,
        what: &str,
        json: Option<&serde_json::Value>,
    ) -> Result<bytes::Bytes> {
        let label = format!("fake hub {method} /_control/{what}");
        let response = self
            .api
            .call(method, &format!("/_control/{what}"), json)
            .await?;
        control_body(&label, response).await
    }

    pub async fn health(&self) -> Result<()> {
        self.control(Method::GET, "health", None).await.map(drop)
    }

    /// Empties the request log.
    pub async fn reset(&self) -> Result<()> {
        self.control(Method::POST, "reset", None).await.map(drop)
    }

    /// The request log since the last reset.
    pub async fn requests(&self) -> Result<Vec<HubRequest>> {
        let body = self.control(Method::GET, "requests", None).await?;
        serde_json::from_slice(&body).map_err(|e| format!("fake hub request log: {e}"))
    }

    /// Adds fault rules (an object or an array, as `POST /_control/faults` takes them).
    pub async fn add_faults(&self, rules: &serde_json::Value) -> Result<()> {
        self.control(Method::POST, "faults", Some(rules))
            .await
            .map(drop)
    }

    pub async fn clear_faults(&self) -> Result<()> {
        self.control(Method::DELETE, "faults", None).await.map(drop)
    }

    /// Serves `image` as `repo:tag` from now on (an OCI layout in the content directory;
    /// the hub reads it on every request).
    pub async fn place(&self, repo: &str, tag: &str, image: &Image) -> Result<()> {
        let (dir, image, tag) = (self.content.join(repo), image.clone(), tag.to_string());
        tokio::task::spawn_blocking(move || {
            write_oci_layout(&dir, &image, &tag)
                .map_err(|e| format!("cannot write the layout {}: {e}", dir.display()))
        })
        .await
        .map_err(|e| format!("writing a layout: {e}"))?
    }

    /// Stops serving `repo` (removes its layout).
    pub async fn remove(&self, repo: &str) -> Result<()> {
        let dir = self.content.join(repo);
        tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot remove {}: {e}", dir.display())),
        })
        .await
        .map_err(|e| format!("removing a layout: {e}"))?
    }
}

/// The parameters of a `WWW-Authenticate: Bearer ...` challenge.
#[derive(Debug, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub service: Option<String>,
    pub scope: Option<String>,
}

/// Parses `Bearer realm="...",service="...",scope="..."` (quoted or bare values, any
/// order, other parameters ignored).
pub fn parse_bearer_challenge(value: &str) -> Result<Challenge> {
    let value = value.trim();
    let (scheme, mut rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(format!("not a Bearer challenge: {value:?}"));
    }
    let (mut realm, mut service, mut scope) = (None, None, None);
    // Bounded by the header's length: every pass consumes at least one byte.
    while !rest.trim_start_matches([' ', ',']).is_empty() {
        rest = rest.trim_start_matches([' ', ',']);
        let (key, after) = rest
            .split_once('=')
            .ok_or_else(|| format!("challenge parameter without a value in {value:?}"))?;
        let (param, tail) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted
                    .find('"')
                    .ok_or_else(|| format!("unterminated quote in {value:?}"))?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_at(after.find(',').unwrap_or(after.len())),
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "realm" => realm = Some(param.to_string()),
            "service" => service = Some(param.to_string()),
            "scope" => scope = Some(param.to_string()),
            _ => {}
        }
        rest = tail;
    }
    Ok(Challenge {
        realm: realm.ok_or_else(|| format!("challenge without a realm: {value:?}"))?,
        service,
        scope,
    })
}

/// The token request a challenge leads to, for pulling `repo`.
pub fn token_url(challenge: &Challenge, repo: &str) -> Result<Url> {
    let mut url = Url::parse(&challenge.realm)
        .map_err(|e| format!("token realm {:?}: {e}", challenge.realm))?;
    {
        let mut query = url.query_pairs_mut();
        if let Some(service) = &challenge.service {
            query.append_pair("service", service);
        }
        query.append_pair("scope", &format!("repository:{repo}:pull"));
    }
    Ok(url)
}

/// The token dance as Docker clients do it: `GET /v2/`, its 401 challenge, then the
/// realm for a pull token on `repo`. Returns that token.
pub async fn pull_token(api: &Api, repo: &str) -> Result<String> {
    let ping = api.call(Method::GET, "/v2/", None).await?;
    if ping.status() != StatusCode::UNAUTHORIZED {
        return Err(format!(
            "GET /v2/ answered {}, expected a 401 challenge",
            ping.status()
        ));
    }
    let header = ping
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .ok_or("GET /v2/: 401 without WWW-Authenticate")?;
    let challenge = parse_bearer_challenge(header)?;
    let url = token_url(&challenge, repo)?;
    let response = api.call(Method::GET, url.as_str(), None).await?;
    let body = control_body("token request", response).await?;
    #[derive(Deserialize)]
    struct TokenAnswer {
        token: Option<String>,
        access_token: Option<String>,
    }
    let answer: TokenAnswer =
        serde_json::from_slice(&body).map_err(|e| format!("token answer: {e}"))?;
    answer
        .token
        .or(answer.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "token answer without a token".to_string())
}

/// Pulls `repo:tag` straight from the hub: token, manifest, blobs in parallel (each
/// through the 307 to the CDN, without the token). Returns the bytes received.
pub async fn pull_direct(api: &Api, repo: &str, tag: &str) -> Result<u64> {
    let token = pull_token(api, repo).await?;
    api.with_bearer(&token)?.pull_image(repo, tag, None).await
}

/// Upstream requests about one image, counted from the hub's request log.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpstreamCount {
    /// GETs of the image's blobs on the registry listener (each answered with a 307).
    pub blob_gets: u64,
    pub blob_heads: u64,
    /// GETs of the image's blobs on the CDN (the bytes themselves).
    pub cdn_gets: u64,
    /// The most registry GETs of any one blob.
    pub most_gets_of_one_blob: u64,
    /// GETs and HEADs of the image's manifests.
    pub manifest_requests: u64,
    pub token_requests: u64,
    /// Every logged request, whatever it was for.
    pub all: u64,
}

/// Counts what `log` holds about `repo` and the blobs `digests` (`sha256:<hex>`).
pub fn count_upstream(log: &[HubRequest], repo: &str, digests: &[String]) -> UpstreamCount {
    let mut count = UpstreamCount {
        all: log.len() as u64,
        ..UpstreamCount::default()
    };
    let mut per_blob = vec![0u64; digests.len()];
    let blobs_prefix = format!("/v2/{repo}/blobs/");
    let manifests_prefix = format!("/v2/{repo}/manifests/");
    for request in log {
        let path = request.path.split('?').next().unwrap_or_default();
        let registry = request.listener == "registry";
        if registry && path == "/token" {
            count.token_requests += 1;
        } else if registry && path.starts_with(&manifests_prefix) {
            count.manifest_requests += 1;
        } else if let Some(digest) = path.strip_prefix(&blobs_prefix).filter(|_| registry) {
            let Some(i) = digests.iter().position(|d| d == digest) else {
                continue;
            };
            match request.method.as_str() {
                "GET" => {
                    count.blob_gets += 1;
                    per_blob[i] += 1;
                }
                "HEAD" => count.blob_heads += 1,
                _ => {}
            }
        } else if let Some(hex) = path.strip_prefix("/blobs/sha256/") {
            let ours = digests
                .iter()
                .any(|d| d.strip_prefix("sha256:") == Some(hex));
            if request.listener == "cdn" && request.method == "GET" && ours {
                count.cdn_gets += 1;
            }
        }
    }
    count.most_gets_of_one_blob = per_blob.into_iter().max().unwrap_or(0);
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(listener: &str, method: &str, path: &str) -> HubRequest {
        HubRequest {
            listener: listener.into(),
            method: method.into(),
            path: path.into(),
        }
    }

    #[test]
    fn challenges() {
        let c = parse_bearer_challenge(
            r#"Bearer realm="http://127.0.0.1:5/token",service="registry.docker.io",scope="repository:library/x:pull",error="invalid_token""#,
        )
        .unwrap();
        assert_eq!(c.realm, "http://127.0.0.1:5/token");
        assert_eq!(c.service.as_deref(), Some("registry.docker.io"));
        assert_eq!(c.scope.as_deref(), Some("repository:library/x:pull"));
        let bare = parse_bearer_challenge("bearer service=hub, realm=http://127.0.0.1/t").unwrap();
        assert_eq!(bare.realm, "http://127.0.0.1/t");
        assert_eq!(bare.service.as_deref(), Some("hub"));
        assert_eq!(bare.scope, None);
        assert!(parse_bearer_challenge(r#"Basic realm="x""#).is_err());
        assert!(parse_bearer_challenge(r#"Bearer service="x""#).is_err());
        assert!(parse_bearer_challenge(r#"Bearer realm="x"#).is_err());
        assert!(parse_bearer_challenge("Bearer realm").is_err());
        let url = token_url(&c, "library/y").unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:5/token?service=registry.docker.io&scope=repository%3Alibrary%2Fy%3Apull"
        );
    }

    #[test]
    fn counts_only_this_image() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let other = format!("sha256:{}", "c".repeat(64));
        let log = vec![
            logged("registry", "GET", "/v2/"),
            logged(
                "registry",
                "GET",
                "/token?service=s&scope=repository%3Alib%2Fx%3Apull",
            ),
            logged("registry", "HEAD", "/v2/lib/x/manifests/latest"),
            logged("registry", "GET", "/v2/lib/x/manifests/latest"),
            logged("registry", "HEAD", &format!("/v2/lib/x/blobs/{a}")),
            logged("registry", "GET", &format!("/v2/lib/x/blobs/{a}")),
            logged(
                "cdn",
                "GET",
                &format!("/blobs/sha256/{}?expires=9", "a".repeat(64)),
            ),
            logged("registry", "GET", &format!("/v2/lib/x/blobs/{a}")),
            logged(
                "cdn",
                "GET",
                &format!("/blobs/sha256/{}?expires=9", "a".repeat(64)),
            ),
            logged("registry", "GET", &format!("/v2/lib/x/blobs/{b}")),
            logged("cdn", "GET", &format!("/blobs/sha256/{}", "b".repeat(64))),
            // Not ours: another blob, another repository, the CDN path on the registry.
            logged("registry", "GET", &format!("/v2/lib/x/blobs/{other}")),
            logged("cdn", "GET", &format!("/blobs/sha256/{}", "c".repeat(64))),
            logged("registry", "GET", &format!("/v2/lib/xy/blobs/{a}")),
            logged("registry", "GET", &format!("/v2/lib/x/manifestsx/{a}")),
            logged(
                "registry",
                "GET",
                &format!("/blobs/sha256/{}", "a".repeat(64)),
            ),
        ];
        let count = count_upstream(&log, "lib/x", &[a, b]);
        assert_eq!(
            count,
            UpstreamCount {
                blob_gets: 3,
                blob_heads: 1,
                cdn_gets: 3,
                most_gets_of_one_blob: 2,
                manifest_requests: 2,
                token_requests: 1,
                all: 16,
            }
        );
        assert_eq!(count_upstream(&[], "lib/x", &[]), UpstreamCount::default());
    }
}
