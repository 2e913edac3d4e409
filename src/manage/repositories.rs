//! Repositories as people browse them: the ones the caller may pull, their tags with
//! sizes and platforms, a manifest's parts and referrers; deleting tags and manifests.
//! Works with accounts off too: `api.policy` decides, on the stored name (a mirrored
//! repository's cache, `docker.io/library/nginx`, however it is spelt), as on the
//! request path.
//!
//! Everything comes from the store through [`crate::store::Registry`], as the
//! distribution API reads it; nothing is fetched from an upstream, so a mirrored
//! repository shows what the cache holds. Manifests are read with
//! [`crate::oci::manifest::parse`]; blobs are never read, except an image config (a
//! small JSON document, up to [`MAX_CONFIG_BYTES`]) for its platform.

use super::{ManageError, Manager, GLOBAL};
use crate::accounts::policy::namespace_of;
use crate::api::{catalog, route, ApiError};
use crate::auth::access::Action;
use crate::auth::Principal;
use crate::mirror::Target;
use crate::oci::manifest::{self, Descriptor, ParsedManifest, DOCKER_MANIFEST_LIST, OCI_INDEX};
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::store::ManifestContent;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Entries per page when the caller names no limit.
pub const DEFAULT_PAGE: usize = 100;
/// The most entries one page holds, whatever the caller asks.
pub const MAX_PAGE: usize = 1000;
/// Largest image config read for its platform.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepositoryView {
    /// As stored (`docker.io/library/nginx` for a mirrored one).
    pub name: String,
    /// The namespace it belongs to ([`GLOBAL`] outside every other); `None` with
    /// accounts off.
    pub namespace: Option<String>,
    /// What the caller may do with it: `pull`, `push`, `delete`.
    pub actions: Vec<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepositoryPage {
    pub repositories: Vec<RepositoryView>,
    /// Pass as `last` for the next page; `None` on the last page.
    pub next: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TagView {
    pub tag: String,
    pub digest: Digest,
    pub media_type: String,
    /// Bytes of the manifest and what it references: config and layers; for an index,
    /// each of its manifests with theirs (layers shared between them count each time).
    pub size: u64,
    /// `os/architecture[/variant]`: an index's entries, or an image's config.
    pub platforms: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TagPage {
    pub repository: String,
    pub tags: Vec<TagView>,
    /// Pass as `last` for the next page; `None` on the last page.
    pub next: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ManifestView {
    pub repository: String,
    pub digest: Digest,
    pub media_type: String,
    /// The manifest's own bytes.
    pub size: u64,
    /// As [`TagView::size`].
    pub total_size: u64,
    /// `artifactType`, or an image's config media type.
    pub artifact_type: Option<String>,
    /// OCI descriptors, as in the manifest.
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    /// An index's manifests, with their platforms.
    pub manifests: Vec<Descriptor>,
    pub platforms: Vec<String>,
    pub subject: Option<Descriptor>,
    pub annotations: Option<BTreeMap<String, String>>,
    /// Manifests whose subject this is (signatures, SBOMs), with their artifact types.
    pub referrers: Vec<Descriptor>,
}

/// A platform as index entries and image configs give it.
#[derive(Deserialize)]
struct Platform {
    os: Option<String>,
    architecture: Option<String>,
    variant: Option<String>,
}

impl Platform {
    /// `os/architecture[/variant]`; `None` for attestations (`unknown/unknown`) and
    /// documents without one.
    fn text(self) -> Option<String> {
        let (os, arch) = (self.os?, self.architecture?);
        if os == "unknown" {
            return None;
        }
        Some(match self.variant.filter(|v| !v.is_empty()) {
            Some(variant) => format!("{os}/{arch}/{variant}"),
            None => format!("{os}/{arch}"),
        })
    }
}

fn index_platforms(parsed: &ParsedManifest) -> Vec<String> {
    parsed
        .children
        .iter()
        .filter_map(|child| {
            let platform = serde_json::from_value::<Platform>(child.platform.clone()?).ok()?;
            platform.text()
        })
        .collect()
}

/// Pure: bytes of a manifest of `size` and what it references directly.
fn direct_size(size: u64, parsed: &ParsedManifest) -> u64 {
    let referenced: u64 = parsed
        .blobs
        .iter()
        .chain(&parsed.children)
        .map(|d| d.size)
        .sum();
    size + referenced
}

fn invalid(err: ApiError) -> ManageError {
    ManageError::Invalid(err.detail)
}

/// The next page's `last`, when there is one.
fn next_after(items: &[String], more: bool) -> Option<String> {
    more.then(|| items.last().cloned()).flatten()
}

/// What a manifest adds up to.
struct Summary {
    parsed: Option<ParsedManifest>,
    total_size: u64,
    platforms: Vec<String>,
}

impl Manager<'_> {
    /// Where a repository, as the caller spells it, is stored.
    fn target(&self, repo: &str) -> Result<Target, ManageError> {
        let name = RepoName::parse(repo).map_err(|e| ManageError::Invalid(e.to_string()))?;
        Ok(self.api.mirror.target(&name, None))
    }

    fn may(&self, repo: &RepoName, action: Action) -> bool {
        self.api.policy.allows(&self.who, repo.as_str(), action)
    }

    /// Ok if the caller may do `action`; a repository they may not pull is unknown to them.
    fn require(&self, repo: &RepoName, action: Action) -> Result<(), ManageError> {
        if self.may(repo, action) {
            return Ok(());
        }
        if action != Action::Pull && self.may(repo, Action::Pull) {
            return Err(ManageError::Forbidden(format!(
                "no {} access to repository {repo}",
                format!("{action:?}").to_lowercase()
            )));
        }
        if self.who == Principal::Anonymous {
            return Err(ManageError::sign_in());
        }
        Err(ManageError::NotFound(format!(
            "repository {repo} does not exist, or you may not pull it"
        )))
    }

    fn namespace_name(&self, repo: &str) -> Option<String> {
        let dir = self.api.accounts.as_ref()?.directory();
        Some(namespace_of(&dir, repo).unwrap_or(GLOBAL).to_string())
    }

    /// A page of the repositories the caller may pull, sorted by name, after `last`;
    /// with `namespace`, only that namespace's ([`GLOBAL`]: those outside every other).
    pub async fn repositories(
        &self,
        namespace: Option<&str>,
        last: Option<&str>,
        limit: usize,
    ) -> Result<RepositoryPage, ManageError> {
        let prefix = match namespace {
            Some(ns) if ns != GLOBAL => format!("{ns}/"),
            _ => String::new(),
        };
        let in_namespace = |name: &str| match namespace {
            Some(GLOBAL) => self.namespace_name(name).as_deref() == Some(GLOBAL),
            _ => true,
        };
        let visible = |name: &str| {
            in_namespace(name) && RepoName::parse(name).is_ok_and(|n| self.may(&n, Action::Pull))
        };
        let limit = limit.min(MAX_PAGE);
        let (names, more) = match limit {
            0 => (Vec::new(), false),
            _ => {
                let last = last.map(str::to_string);
                catalog::visible_page(&self.api.registry, last, &prefix, limit, visible).await?
            }
        };
        let repositories = names
            .iter()
            .map(|name| RepositoryView {
                name: name.clone(),
                namespace: self.namespace_name(name),
                actions: self.api.policy.actions(&self.who, name).names(),
            })
            .collect();
        Ok(RepositoryPage {
            repositories,
            next: next_after(&names, more),
        })
    }

    /// A page of a repository's tags after `last`, with digests, sizes and platforms.
    pub async fn tags(
        &self,
        repo: &str,
        last: Option<&str>,
        limit: usize,
    ) -> Result<TagPage, ManageError> {
        let target = self.target(repo)?;
        let stored = target.stored_as();
        self.require(stored, Action::Pull)?;
        let limit = limit.min(MAX_PAGE);
        let (names, more) = match &target {
            Target::Local(_) => {
                let page = self.api.registry.tags(stored, last, limit).await?;
                (page.items, page.more)
            }
            Target::Mirrored(_) => {
                let meta = self.api.registry.meta();
                let mut names = meta.cached_tag_names(stored).await?;
                names.retain(|t| last.is_none_or(|l| t.as_str() > l));
                let more = names.len() > limit;
                names.truncate(limit);
                (names, more)
            }
        };
        let mut tags = Vec::with_capacity(names.len());
        for name in &names {
            let Ok(tag) = Tag::parse(name) else { continue };
            // A tag deleted since the listing is left out.
            let content = match self.resolve(&target, &Reference::Tag(tag)).await {
                Ok(content) => content,
                Err(ManageError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            let summary = self.summarize(stored, &content).await?;
            tags.push(TagView {
                tag: name.clone(),
                digest: content.digest,
                media_type: content.media_type,
                size: summary.total_size,
                platforms: summary.platforms,
            });
        }
        Ok(TagPage {
            repository: stored.to_string(),
            tags,
            next: next_after(&names, more),
        })
    }

    /// A manifest by tag or digest: its config, layers or index entries, platforms
    /// and referrers.
    pub async fn manifest(&self, repo: &str, reference: &str) -> Result<ManifestView, ManageError> {
        let target = self.target(repo)?;
        let stored = target.stored_as();
        self.require(stored, Action::Pull)?;
        let reference = route::reference_of(reference).map_err(invalid)?;
        let content = self.resolve(&target, &reference).await?;
        let summary = self.summarize(stored, &content).await?;
        let referrers = self.api.registry.referrers(stored, &content.digest).await?;
        let parsed = summary.parsed;
        Ok(ManifestView {
            repository: stored.to_string(),
            digest: content.digest,
            media_type: content.media_type,
            size: content.size,
            total_size: summary.total_size,
            artifact_type: parsed.as_ref().and_then(|p| p.artifact_type.clone()),
            config: parsed.as_ref().and_then(|p| p.config().cloned()),
            layers: parsed
                .as_ref()
                .map(|p| p.layers().to_vec())
                .unwrap_or_default(),
            manifests: parsed
                .as_ref()
                .map(|p| p.children.clone())
                .unwrap_or_default(),
            platforms: summary.platforms,
            subject: parsed.as_ref().and_then(|p| p.subject.clone()),
            annotations: parsed.and_then(|p| p.annotations),
            referrers,
        })
    }

    /// Removes a tag (the manifest stays), as `DELETE /v2/<name>/manifests/<tag>` does.
    pub async fn delete_tag(&self, repo: &str, tag: &str) -> Result<(), ManageError> {
        let tag = Tag::parse(tag).map_err(|e| ManageError::Invalid(e.to_string()))?;
        self.delete(repo, Reference::Tag(tag)).await
    }

    /// Removes a manifest with every tag on it, as `DELETE /v2/<name>/manifests/<digest>`.
    pub async fn delete_manifest(&self, repo: &str, digest: &str) -> Result<(), ManageError> {
        let digest: Digest = digest
            .parse()
            .map_err(|e: crate::oci::DigestError| ManageError::Invalid(e.to_string()))?;
        self.delete(repo, Reference::Digest(digest)).await
    }

    async fn delete(&self, repo: &str, reference: Reference) -> Result<(), ManageError> {
        let target = self.target(repo)?;
        let stored = target.stored_as();
        self.require(stored, Action::Delete)?;
        crate::api::refuse_writes_to_mirrored(&target, Action::Delete)
            .map_err(|e| ManageError::Conflict(e.detail))?;
        if self.api.read_only {
            return Err(ManageError::Conflict(
                "the registry is in read-only mode for maintenance; deletes wait until it is over"
                    .into(),
            ));
        }
        self.api
            .registry
            .delete_manifest(stored, &reference)
            .await?;
        self.changed("delete", stored.as_str(), Some(reference.to_string()));
        Ok(())
    }

    /// A manifest by reference. A mirrored repository's tags are those the cache
    /// resolved (an index where it holds one).
    async fn resolve(
        &self,
        target: &Target,
        reference: &Reference,
    ) -> Result<ManifestContent, ManageError> {
        let registry = &self.api.registry;
        let stored = target.stored_as();
        let (Target::Mirrored(_), Reference::Tag(tag)) = (target, reference) else {
            return Ok(registry.manifest(stored, reference).await?);
        };
        let cached = registry.meta().cached_tags(stored, tag).await?;
        let chosen = cached
            .iter()
            .find(|c| c.media_type == OCI_INDEX || c.media_type == DOCKER_MANIFEST_LIST)
            .or(cached.first())
            .ok_or_else(|| {
                ManageError::NotFound(format!("the cache holds no tag {tag} of {stored}"))
            })?;
        let digest = Reference::Digest(chosen.digest.clone());
        Ok(registry.manifest(stored, &digest).await?)
    }

    /// Parses a stored manifest and adds up its size and platforms. A manifest of a
    /// shape the parser does not know (cached from an upstream) counts its own bytes.
    async fn summarize(
        &self,
        repo: &RepoName,
        content: &ManifestContent,
    ) -> Result<Summary, ManageError> {
        let registry = &self.api.registry;
        let bytes = registry.manifest_bytes(content).await?;
        let Ok(parsed) = manifest::parse(Some(&content.media_type), &bytes) else {
            return Ok(Summary {
                parsed: None,
                total_size: content.size,
                platforms: Vec::new(),
            });
        };
        let (total_size, platforms) = if parsed.children.is_empty() {
            let platform = match parsed.config() {
                Some(config) => self.config_platform(repo, config).await,
                None => None,
            };
            (
                direct_size(content.size, &parsed),
                platform.into_iter().collect(),
            )
        } else {
            let mut total = content.size;
            for child in &parsed.children {
                total += self.child_size(repo, child).await?;
            }
            (total, index_platforms(&parsed))
        };
        Ok(Summary {
            parsed: Some(parsed),
            total_size,
            platforms,
        })
    }

    /// An index entry's bytes with what it references, when stored; else as declared.
    async fn child_size(&self, repo: &RepoName, child: &Descriptor) -> Result<u64, ManageError> {
        let registry = &self.api.registry;
        let reference = Reference::Digest(child.digest.clone());
        let content = match registry.manifest(repo, &reference).await {
            Ok(content) => content,
            Err(crate::store::StoreError::ManifestUnknown(_)) => return Ok(child.size),
            Err(e) => return Err(e.into()),
        };
        let bytes = registry.manifest_bytes(&content).await?;
        Ok(match manifest::parse(Some(&content.media_type), &bytes) {
            Ok(parsed) => direct_size(content.size, &parsed),
            Err(_) => content.size,
        })
    }

    /// The platform an image config names; `None` when it is not stored (a mirror
    /// fetches blobs as clients ask), too large, or says none.
    async fn config_platform(&self, repo: &RepoName, config: &Descriptor) -> Option<String> {
        let registry = &self.api.registry;
        let blob = registry.linked_blob(repo, &config.digest).await.ok()?;
        if blob.size > MAX_CONFIG_BYTES {
            return None;
        }
        let mut source = registry.open_blob(&blob, 0, blob.size).await.ok()?;
        let mut bytes = Vec::with_capacity(blob.size as usize);
        while let Some(chunk) = source.next_chunk().await.ok()? {
            bytes.extend_from_slice(&chunk);
        }
        serde_json::from_slice::<Platform>(&bytes).ok()?.text()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{api, user};
    use super::*;
    use crate::store::ByteSource;
    use bytes::Bytes;

    /// A body of one chunk.
    struct Once(Option<Bytes>);

    #[async_trait::async_trait]
    impl ByteSource for Once {
        async fn next_chunk(&mut self) -> Result<Option<Bytes>, crate::store::StoreError> {
            Ok(self.0.take())
        }
    }

    const IMAGE_CONFIG: &str = r#"{"architecture":"arm64","os":"linux","variant":"v8","rootfs":{"type":"layers","diff_ids":[]}}"#;

    #[test]
    fn platforms_read_as_text() {
        let p = |json: &str| serde_json::from_str::<Platform>(json).unwrap().text();
        assert_eq!(p(IMAGE_CONFIG).as_deref(), Some("linux/arm64/v8"));
        assert_eq!(
            p(r#"{"os":"linux","architecture":"amd64"}"#).as_deref(),
            Some("linux/amd64")
        );
        assert_eq!(p(r#"{"os":"unknown","architecture":"unknown"}"#), None);
        assert_eq!(p("{}"), None);
    }

    /// Pushes a one-layer image with `config` as its config into `repo` under `tag`;
    /// returns the manifest's digest and its bytes' length.
    async fn push(api: &crate::api::Api, repo: &str, tag: &str, config: &str) -> (Digest, u64) {
        let repo = RepoName::parse(repo).unwrap();
        let mut descriptors = Vec::new();
        for (media_type, bytes) in [
            (
                "application/vnd.oci.image.config.v1+json",
                config.as_bytes(),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar",
                b"layer bytes".as_slice(),
            ),
        ] {
            let digest = Digest::sha256_of(bytes);
            let id = api.registry.start_upload(&repo).await.unwrap();
            let mut body = Once(Some(Bytes::copy_from_slice(bytes)));
            api.registry
                .append_upload(&repo, &id, None, &mut body)
                .await
                .unwrap();
            api.registry
                .finish_upload(&repo, &id, &digest, crate::store::Origin::Pushed)
                .await
                .unwrap();
            descriptors.push(serde_json::json!({
                "mediaType": media_type, "digest": digest.to_string(), "size": bytes.len()
            }));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_MANIFEST,
            "config": descriptors[0],
            "layers": [descriptors[1]],
        })
        .to_string();
        let outcome = api
            .registry
            .put_manifest(
                &repo,
                &Reference::Tag(Tag::parse(tag).unwrap()),
                Some(manifest::OCI_MANIFEST),
                Bytes::from(manifest.clone()),
            )
            .await
            .unwrap();
        (outcome.digest, manifest.len() as u64)
    }

    #[tokio::test]
    async fn tags_add_up_sizes_and_platforms_and_deletes_need_the_right() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(&dir, true).await;
        let (digest, manifest_len) = push(&api, "web/app", "v1", IMAGE_CONFIG).await;
        let alice = Manager::new(&api, user("alice"), None);
        let bob = Manager::new(&api, user("bob"), None);
        let page = bob.tags("web/app", None, 10).await.unwrap();
        let total = manifest_len + IMAGE_CONFIG.len() as u64 + b"layer bytes".len() as u64;
        assert_eq!(
            page.tags,
            [TagView {
                tag: "v1".into(),
                digest: digest.clone(),
                media_type: manifest::OCI_MANIFEST.into(),
                size: total,
                platforms: vec!["linux/arm64/v8".into()],
            }]
        );
        assert_eq!(page.next, None);
        let view = bob.manifest("web/app", "v1").await.unwrap();
        assert_eq!((view.total_size, view.layers.len()), (total, 1));
        assert_eq!(view.config.unwrap().size, IMAGE_CONFIG.len() as u64);
        assert!(view.referrers.is_empty());
        assert_eq!(
            bob.manifest("web/app", &digest.to_string())
                .await
                .unwrap()
                .digest,
            digest
        );

        let repos = bob.repositories(Some("web"), None, 10).await.unwrap();
        assert_eq!(
            repos.repositories,
            [RepositoryView {
                name: "web/app".into(),
                namespace: Some("web".into()),
                actions: vec!["pull"],
            }]
        );
        assert!(bob
            .repositories(Some("alice"), None, 10)
            .await
            .unwrap()
            .repositories
            .is_empty());
        let anonymous = Manager::new(&api, Principal::Anonymous, None);
        assert!(anonymous
            .repositories(None, None, 10)
            .await
            .unwrap()
            .repositories
            .is_empty());
        assert_eq!(
            anonymous
                .tags("web/app", None, 10)
                .await
                .unwrap_err()
                .status(),
            401
        );
        let admin = Manager::new(&api, user("admin"), None);
        assert_eq!(
            admin.tags("nope/x", None, 10).await.unwrap_err().status(),
            404
        );
        assert_eq!(
            bob.tags("Bad Name", None, 10).await.unwrap_err().status(),
            400
        );

        assert_eq!(
            bob.delete_tag("web/app", "v1").await.unwrap_err().status(),
            403
        );
        alice.delete_tag("web/app", "v1").await.unwrap();
        assert!(alice
            .tags("web/app", None, 10)
            .await
            .unwrap()
            .tags
            .is_empty());
        assert_eq!(
            alice
                .delete_tag("web/app", "v1")
                .await
                .unwrap_err()
                .status(),
            404
        );
        alice
            .delete_manifest("web/app", &digest.to_string())
            .await
            .unwrap();
        assert_eq!(
            alice
                .delete_manifest("web/app", "sha256:00")
                .await
                .unwrap_err()
                .status(),
            400
        );
    }

    #[tokio::test]
    async fn with_accounts_off_the_access_rules_decide() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(&dir, false).await;
        push(&api, "tools/x", "1", "{}").await;
        let anonymous = Manager::new(&api, Principal::Anonymous, None);
        let page = anonymous.repositories(None, None, 10).await.unwrap();
        assert_eq!(page.repositories.len(), 1);
        assert_eq!(page.repositories[0].namespace, None);
        let tags = anonymous.tags("tools/x", None, 10).await.unwrap();
        assert!(
            tags.tags[0].platforms.is_empty(),
            "a config without a platform"
        );
    }
}
