//! Repositories: the list by namespace with a search box, a repository's tags with the
//! commands that pull them, a manifest's parts and referrers, and deleting a tag after
//! a confirmation page.
//!
//! Paths: `/ui/repositories/NAME` for a repository and, after a `/-/` (which no
//! repository name contains: components start with a letter or digit),
//! `manifests/REFERENCE` or `tags/TAG/delete`.

use super::form::Fields;
use super::layout::{copyable, Section};
use super::{Answer, Refusal, Visit};
use crate::manage::{
    ManageError, ManifestView, RepositoryView, TagView, DEFAULT_PAGE, GLOBAL, MAX_PAGE,
};
use crate::oci::manifest::Descriptor;
use crate::progress::human_bytes;
use maud::{html, Markup};
use std::collections::BTreeMap;

/// Pages of the catalog read at most for one search.
const SEARCH_PAGES: usize = 10;

/// What a path below `/ui/repositories/` asks for.
#[derive(Debug, PartialEq, Eq)]
enum Asked<'p> {
    Tags(&'p str),
    Manifest(&'p str, &'p str),
    DeleteTag(&'p str, &'p str),
}

fn asked(rest: &str) -> Option<Asked<'_>> {
    let (name, below) = match rest.split_once("/-/") {
        Some((name, below)) => (name, Some(below)),
        None => (rest, None),
    };
    if name.is_empty() {
        return None;
    }
    match below.map(|b| b.split('/').collect::<Vec<_>>()).as_deref() {
        None => Some(Asked::Tags(name)),
        Some(["manifests", reference]) => Some(Asked::Manifest(name, reference)),
        Some(["tags", tag, "delete"]) => Some(Asked::DeleteTag(name, tag)),
        _ => None,
    }
}

fn repository_url(name: &str) -> String {
    format!("/ui/repositories/{name}")
}

fn manifest_url(name: &str, reference: &str) -> String {
    format!("/ui/repositories/{name}/-/manifests/{reference}")
}

fn delete_url(name: &str, tag: &str) -> String {
    format!("/ui/repositories/{name}/-/tags/{tag}/delete")
}

/// `docker pull` and `podman pull` of `repo` at a tag or digest, as `host` serves it.
/// Over plain HTTP podman needs to be told; Docker needs the host among its
/// insecure registries, which no flag can say.
pub fn pull_commands(
    host: &str,
    repo: &str,
    reference: &str,
    tls: bool,
) -> [(&'static str, String); 2] {
    let separator = if reference.contains(':') { '@' } else { ':' };
    let image = format!("{host}/{repo}{separator}{reference}");
    let podman_flag = if tls { "" } else { "--tls-verify=false " };
    [
        ("Docker", format!("docker pull {image}")),
        ("Podman", format!("podman pull {podman_flag}{image}")),
    ]
}

fn pull_block(visit: &Visit, id: &str, repo: &str, reference: &str) -> Markup {
    let commands = pull_commands(visit.host(), repo, reference, visit.req.secure);
    html! {
        @for (client, command) in &commands {
            (copyable(&format!("{id}-{}", client.to_lowercase()), &format!("{client} pull command"), command))
        }
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, hex)| hex);
    &hex[..hex.len().min(12)]
}

/// `/ui/repositories?namespace=NS&q=TEXT`: the repositories the user may pull,
/// grouped by namespace; the search looks at up to [`SEARCH_PAGES`] catalog pages.
pub async fn list(visit: &Visit<'_>) -> Answer {
    let query = Fields::of_query(visit.req.query.as_deref());
    let (namespace, text) = (query.text("namespace"), query.text("q"));
    let manager = visit.manager();
    // With accounts off there are no namespaces to choose from.
    let namespaces = match manager.namespaces() {
        Err(ManageError::AccountsOff) => Vec::new(),
        other => other?,
    };
    let filter = (!namespace.is_empty()).then_some(namespace);
    let mut found: Vec<RepositoryView> = Vec::new();
    let mut last: Option<String> = None;
    let mut more = false;
    for _ in 0..SEARCH_PAGES {
        let page = manager
            .repositories(filter, last.as_deref(), MAX_PAGE)
            .await?;
        found.extend(
            page.repositories
                .into_iter()
                .filter(|r| r.name.contains(text)),
        );
        last = page.next;
        more = last.is_some();
        if !more || found.len() >= DEFAULT_PAGE {
            break;
        }
    }
    let mut by_namespace: BTreeMap<String, Vec<&RepositoryView>> = BTreeMap::new();
    for repo in &found {
        let ns = repo.namespace.clone().unwrap_or_default();
        by_namespace.entry(ns).or_default().push(repo);
    }
    let content = html! {
        form method="get" action="/ui/repositories" class="inline" role="search" {
            label { "Search"
                input type="search" name="q" value=(text) placeholder="part of a name";
            }
            @if !namespaces.is_empty() {
                label for="namespace" { "Namespace" }
                select id="namespace" name="namespace" {
                    option value="" { "All namespaces" }
                    @for ns in &namespaces {
                        option value=(ns.name) selected[ns.name == namespace] { (namespace_label(&ns.name)) }
                    }
                }
            }
            button type="submit" { "Show" }
        }
        @if found.is_empty() {
            p { "No repositories you may pull match." }
        }
        @for (ns, repos) in &by_namespace {
            @if !ns.is_empty() {
                h2 { "Namespace " (namespace_label(ns)) }
            }
            div class="table-box" {
                table {
                    thead { tr { th scope="col" { "Repository" } th scope="col" { "You may" } } }
                    tbody {
                        @for repo in repos {
                            tr {
                                td { a href=(repository_url(&repo.name)) { (repo.name) } }
                                td { (repo.actions.join(", ")) }
                            }
                        }
                    }
                }
            }
        }
        @if more {
            p class="muted" { "Only the first matches are shown; narrow the search to see others." }
        }
    };
    visit.show(Section::Repositories, "Repositories", content)
}

fn namespace_label(name: &str) -> &str {
    if name == GLOBAL {
        "(global)"
    } else {
        name
    }
}

/// The pages below `/ui/repositories/`.
pub async fn repository(visit: &Visit<'_>, rest: &str, fields: Option<Fields>) -> Answer {
    match (asked(rest), fields) {
        (Some(Asked::Tags(name)), None) => tags(visit, name).await,
        (Some(Asked::Manifest(name, reference)), None) => manifest(visit, name, reference).await,
        (Some(Asked::DeleteTag(name, tag)), None) => confirm_delete(visit, name, tag).await,
        (Some(Asked::DeleteTag(name, tag)), Some(_)) => {
            let outcome = visit.manager().delete_tag(name, tag).await;
            visit.after(&repository_url(name), outcome, |()| {
                format!("Tag {tag} deleted.")
            })
        }
        _ => Err(Refusal::not_found(visit.req)),
    }
}

async fn tags(visit: &Visit<'_>, name: &str) -> Answer {
    let query = Fields::of_query(visit.req.query.as_deref());
    let last = Some(query.text("last")).filter(|l| !l.is_empty());
    let page = visit.manager().tags(name, last, DEFAULT_PAGE).await?;
    let repo = page.repository.as_str();
    let may_delete = visit.api.policy.actions(&visit.principal(), repo).delete;
    let content = html! {
        @if page.tags.is_empty() {
            p { "This repository has no tags." }
        } @else {
            div class="table-box" {
                table class="cards" {
                    caption { "Tags" }
                    thead {
                        tr {
                            th scope="col" { "Tag" }
                            th scope="col" { "Digest" }
                            th scope="col" class="number" { "Size" }
                            th scope="col" { "Platforms" }
                            th scope="col" { "Pull" }
                            @if may_delete { th scope="col" { "Delete" } }
                        }
                    }
                    tbody {
                        @for (i, tag) in page.tags.iter().enumerate() {
                            (tag_row(visit, repo, i, tag, may_delete))
                        }
                    }
                }
            }
        }
        @if let Some(next) = &page.next {
            p { a href={ (repository_url(repo)) "?last=" (next) } { "More tags" } }
        }
    };
    visit.show(Section::Repositories, repo, content)
}

fn tag_row(visit: &Visit, repo: &str, i: usize, tag: &TagView, may_delete: bool) -> Markup {
    let digest = tag.digest.to_string();
    html! {
        tr {
            th scope="row" { (tag.tag) }
            td data-label="Digest" { a href=(manifest_url(repo, &digest)) class="mono" title=(digest) { (short(&digest)) } }
            td data-label="Size" class="number" { (human_bytes(tag.size)) }
            td data-label="Platforms" { (tag.platforms.join(", ")) }
            td data-label="Pull" { (pull_block(visit, &format!("pull-{i}"), repo, &tag.tag)) }
            @if may_delete {
                td { a href=(delete_url(repo, &tag.tag)) { "Delete " span class="visually-hidden" { "tag " (tag.tag) } } }
            }
        }
    }
}

async fn confirm_delete(visit: &Visit<'_>, name: &str, tag: &str) -> Answer {
    let view = visit.manager().manifest(name, tag).await?;
    let frame = visit.frame();
    let content = html! {
        p {
            "Delete tag " strong { (tag) } " of " strong { (view.repository) } "? "
            "The manifest " code { (short(&view.digest.to_string())) } " stays, with any other tags on it; "
            "garbage collection removes what no tag keeps."
        }
        (frame.form(&delete_url(&view.repository, tag), "actions", html! {
            button type="submit" class="danger" { "Delete tag " (tag) }
            a href=(repository_url(&view.repository)) { "Cancel" }
        }))
    };
    let page = frame.page(
        Some(Section::Repositories),
        &format!("Delete {}:{tag}?", view.repository),
        content,
    );
    Ok(super::layout::html_response(200, page))
}

fn descriptor_table(
    caption: &str,
    first_column: &str,
    rows: &[Descriptor],
    repo: &str,
    link: bool,
) -> Markup {
    html! {
        div class="table-box" {
            table {
                caption { (caption) }
                thead {
                    tr {
                        th scope="col" { (first_column) }
                        th scope="col" { "Digest" }
                        th scope="col" class="number" { "Size" }
                    }
                }
                tbody {
                    @for d in rows {
                        @let digest = d.digest.to_string();
                        tr {
                            td { (describe(d)) }
                            td class="mono" {
                                @if link { a href=(manifest_url(repo, &digest)) { (digest) } } @else { (digest) }
                            }
                            td class="number" { (human_bytes(d.size)) }
                        }
                    }
                }
            }
        }
    }
}

/// A descriptor in a few words: its platform, artifact type or media type.
fn describe(d: &Descriptor) -> String {
    let platform = d.platform.as_ref().and_then(|p| {
        let part = |key| p.get(key).and_then(|v| v.as_str());
        Some(format!("{}/{}", part("os")?, part("architecture")?))
    });
    platform
        .or_else(|| d.artifact_type.clone())
        .unwrap_or_else(|| d.media_type.clone())
}

async fn manifest(visit: &Visit<'_>, name: &str, reference: &str) -> Answer {
    let view: ManifestView = visit.manager().manifest(name, reference).await?;
    let repo = view.repository.as_str();
    let digest = view.digest.to_string();
    let content = html! {
        dl class="facts" {
            dt { "Repository" } dd { a href=(repository_url(repo)) { (repo) } }
            dt { "Digest" } dd class="mono" { (digest) }
            dt { "Media type" } dd { (view.media_type) }
            @if let Some(artifact) = &view.artifact_type { dt { "Artifact type" } dd { (artifact) } }
            dt { "Manifest size" } dd { (human_bytes(view.size)) }
            dt { "Total size" } dd { (human_bytes(view.total_size)) }
            @if !view.platforms.is_empty() { dt { "Platforms" } dd { (view.platforms.join(", ")) } }
            @if let Some(subject) = &view.subject {
                @let subject_digest = subject.digest.to_string();
                dt { "Refers to" } dd { a class="mono" href=(manifest_url(repo, &subject_digest)) { (subject_digest) } }
            }
        }
        h2 { "Pull by digest" }
        (pull_block(visit, "pull-digest", repo, &digest))
        @if let Some(config) = &view.config {
            (descriptor_table("Config", "Media type", std::slice::from_ref(config), repo, false))
        }
        @if !view.layers.is_empty() {
            (descriptor_table("Layers", "Media type", &view.layers, repo, false))
        }
        @if !view.manifests.is_empty() {
            (descriptor_table("Manifests of this index", "Platform", &view.manifests, repo, true))
        }
        h2 { "Referrers" }
        @if view.referrers.is_empty() {
            p { "Nothing refers to this manifest (no signatures, SBOMs or attestations)." }
        } @else {
            (descriptor_table("Signatures, SBOMs and other artifacts about this manifest", "Artifact type", &view.referrers, repo, true))
        }
        @if let Some(annotations) = &view.annotations {
            div class="table-box" {
                table {
                    caption { "Annotations" }
                    thead { tr { th scope="col" { "Key" } th scope="col" { "Value" } } }
                    tbody {
                        @for (key, value) in annotations {
                            tr { td class="mono" { (key) } td { (value) } }
                        }
                    }
                }
            }
        }
    };
    let title = format!("{repo}@{}", short(&digest));
    visit.show(Section::Repositories, &title, content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_below_repositories() {
        assert_eq!(asked("alice/app"), Some(Asked::Tags("alice/app")));
        assert_eq!(
            asked("docker.io/library/nginx/-/manifests/sha256:ab"),
            Some(Asked::Manifest("docker.io/library/nginx", "sha256:ab"))
        );
        assert_eq!(
            asked("a/-/tags/1.0/delete"),
            Some(Asked::DeleteTag("a", "1.0"))
        );
        assert_eq!(asked(""), None);
        assert_eq!(asked("a/-/tags/1.0"), None);
        assert_eq!(asked("a/-/other"), None);
    }

    #[test]
    fn pull_commands_name_tags_and_digests() {
        let [docker, podman] = pull_commands("reg:5000", "alice/app", "1.0", false);
        assert_eq!(
            docker,
            ("Docker", "docker pull reg:5000/alice/app:1.0".to_string())
        );
        assert_eq!(
            podman,
            (
                "Podman",
                "podman pull --tls-verify=false reg:5000/alice/app:1.0".to_string()
            )
        );
        let [docker, podman] = pull_commands("reg", "a", "sha256:00ff", true);
        assert_eq!(docker.1, "docker pull reg/a@sha256:00ff");
        assert_eq!(podman.1, "podman pull reg/a@sha256:00ff");
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
    }
}
