//! The OCI image layout (image-spec `image-layout.md`): `oci-layout`, `index.json`
//! and `blobs/<alg>/<hex>`, as a directory or as a tar of one.
//!
//! Export writes one descriptor per tag in `index.json`, named `<repo>:<tag>` the way
//! containerd and skopeo look images up, and one for each manifest no tag reaches;
//! every descriptor also names its repository in [`REPOSITORY_ANNOTATION`]. A tar
//! starts with `oci-layout` and `index.json` and streams each blob from the store.
//!
//! Import reads ours and plain layouts (skopeo's `oci:DIR:TAG` names no repository,
//! so one must be given). A tar is read in place: one pass over its headers finds
//! each entry's offset, then blobs are read from there.

use super::{
    read_manifest, BlobSource, OnMissing, Plan, PlannedManifest, PlannedTag, Summary,
    ORIGIN_ANNOTATION, REPOSITORY_ANNOTATION,
};
use crate::oci::manifest::{self, Descriptor, OCI_INDEX};
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::progress::Progress;
use crate::store::{Origin, Registry};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// Largest `index.json` read (it lists every exported manifest).
const MAX_INDEX_BYTES: u64 = 64 << 20;

/// A ref name split into repository and tag: `team/app:1.0` (ours, containerd's),
/// `1.0` (skopeo's, the spec's examples), `team/app@sha256:...` (no tag).
#[derive(Debug, PartialEq, Eq)]
pub struct RefName<'a> {
    pub repo: Option<&'a str>,
    pub tag: Option<&'a str>,
}

pub fn parse_ref_name(name: &str) -> RefName<'_> {
    if let Some((repo, _digest)) = name.split_once('@') {
        return RefName {
            repo: Some(repo),
            tag: None,
        };
    }
    // A tag has no ':' or '/'; a registry port (`host:5000/app`) is followed by one.
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => RefName {
            repo: Some(repo),
            tag: Some(tag),
        },
        _ if name.contains('/') => RefName {
            repo: Some(name),
            tag: None,
        },
        _ => RefName {
            repo: None,
            tag: Some(name),
        },
    }
}

/// `blobs/sha256/<hex>`
fn blob_path(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().name(), digest.hex())
}

// ---- export ---------------------------------------------------------------------

/// What goes into `blobs/`, and through which repository the store serves it.
enum Content {
    Manifest { repo: RepoName, size: u64 },
    Blob { repo: RepoName, size: u64 },
}

impl Content {
    fn size(&self) -> u64 {
        match self {
            Content::Manifest { size, .. } | Content::Blob { size, .. } => *size,
        }
    }
}

fn annotations(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// Writes `only` (every repository when empty) to an OCI layout at `out`: a tar when
/// `out` ends in `.tar`, else a new directory.
pub async fn export(registry: &Registry, only: &[RepoName], out: &Path) -> Result<Summary, String> {
    let started = Instant::now();
    let snapshot = registry
        .meta()
        .snapshot()
        .await
        .map_err(|e| e.to_string())?;
    let known: BTreeSet<&RepoName> = snapshot.repos.iter().collect();
    if let Some(missing) = only.iter().find(|r| !known.contains(r)) {
        let held: Vec<&str> = snapshot.repos.iter().map(|r| r.as_str()).collect();
        return Err(format!(
            "repository {missing} is not in this store; name one it holds ({}) or none for all",
            if held.is_empty() {
                "it holds none".to_string()
            } else {
                held.join(", ")
            }
        ));
    }
    let chosen: Vec<&RepoName> = if only.is_empty() {
        snapshot.repos.iter().collect()
    } else {
        only.iter().collect()
    };

    let mut summary = Summary {
        verb: "exported",
        repositories: chosen.len(),
        ..Summary::default()
    };
    let mut descriptors = Vec::new();
    let mut content: BTreeMap<Digest, Content> = BTreeMap::new();
    for repo in chosen {
        let manifests: BTreeMap<&Digest, _> = snapshot
            .manifests
            .iter()
            .filter(|m| &m.repo == repo)
            .map(|m| (&m.digest, &m.record))
            .collect();
        let mut tags: Vec<(&Tag, &Digest)> = snapshot
            .tags
            .iter()
            .filter(|t| &t.repo == repo)
            .map(|t| (&t.tag, &t.digest))
            .collect();
        tags.extend(
            snapshot
                .cached_tags
                .iter()
                .filter(|t| &t.repo == repo)
                .map(|t| (&t.tag, &t.record.digest)),
        );
        let mut children: BTreeMap<&Digest, Vec<Digest>> = BTreeMap::new();
        for (&digest, record) in &manifests {
            let found = registry
                .manifest(repo, &Reference::Digest(digest.clone()))
                .await
                .map_err(|e| format!("{repo}@{digest}: {e}"))?;
            let bytes = registry
                .manifest_bytes(&found)
                .await
                .map_err(|e| format!("{repo}@{digest}: {e}; run portcullis fsck"))?;
            content.insert(
                digest.clone(),
                Content::Manifest {
                    repo: repo.clone(),
                    size: record.size,
                },
            );
            summary.manifests += 1;
            // The cache keeps formats it cannot parse; they carry no references we know.
            let Ok(parsed) = manifest::parse(Some(&record.media_type), &bytes) else {
                continue;
            };
            for blob in parsed.blobs.iter().filter(|b| b.urls.is_empty()) {
                if content.contains_key(&blob.digest) {
                    continue;
                }
                match registry.linked_blob(repo, &blob.digest).await {
                    Ok(linked) => {
                        content.insert(
                            blob.digest.clone(),
                            Content::Blob {
                                repo: repo.clone(),
                                size: linked.size,
                            },
                        );
                    }
                    // Cached content may lack blobs nobody pulled yet.
                    Err(_) if record.origin == Origin::Cached => {}
                    Err(e) => return Err(format!("{repo}@{digest}: {e}; run portcullis fsck")),
                }
            }
            children.insert(
                digest,
                parsed.children.into_iter().map(|c| c.digest).collect(),
            );
        }
        let origin = |digest: &Digest| {
            manifests
                .get(digest)
                .filter(|r| r.origin == Origin::Cached)
                .map(|_| (ORIGIN_ANNOTATION, "cached"))
        };
        // Manifests a tag reaches are found through it; the rest get a descriptor each.
        let mut reached: BTreeSet<&Digest> = BTreeSet::new();
        let mut queue: Vec<&Digest> = Vec::new();
        for (tag, digest) in &tags {
            let Some(record) = manifests.get(digest) else {
                continue;
            };
            let name = format!("{repo}:{tag}");
            let mut notes = vec![
                (REF_NAME, name.as_str()),
                (CONTAINERD_NAME, name.as_str()),
                (REPOSITORY_ANNOTATION, repo.as_str()),
            ];
            notes.extend(origin(digest));
            descriptors.push(descriptor(&record.media_type, digest, record.size, &notes));
            summary.tags += 1;
            queue.push(digest);
        }
        while let Some(digest) = queue.pop() {
            if reached.insert(digest) {
                queue.extend(children.get(digest).into_iter().flatten());
            }
        }
        for (digest, record) in manifests.iter().filter(|(d, _)| !reached.contains(*d)) {
            let mut notes = vec![(REPOSITORY_ANNOTATION, repo.as_str())];
            notes.extend(origin(digest));
            descriptors.push(descriptor(&record.media_type, digest, record.size, &notes));
        }
    }
    let index = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": descriptors,
    }))
    .map_err(|e| e.to_string())?;

    let mut sink: Box<dyn Sink> = if out.extension().is_some_and(|e| e == "tar") {
        Box::new(TarSink::create(out, &index)?)
    } else {
        Box::new(DirSink::create(out, index)?)
    };
    let total: u64 = content.values().map(Content::size).sum();
    let mut progress = Progress::new("export", Some(content.len() as u64));
    for (digest, item) in &content {
        sink.begin(digest, item.size())?;
        let failed = |e: crate::store::StoreError| format!("{digest}: {e}; run portcullis fsck");
        match item {
            Content::Manifest { repo, .. } => {
                let found = registry
                    .manifest(repo, &Reference::Digest(digest.clone()))
                    .await
                    .map_err(failed)?;
                sink.write(&registry.manifest_bytes(&found).await.map_err(failed)?)?;
            }
            Content::Blob { repo, size } => {
                let linked = registry.linked_blob(repo, digest).await.map_err(failed)?;
                let mut chunks = registry
                    .open_blob(&linked, 0, *size)
                    .await
                    .map_err(failed)?;
                while let Some(chunk) = chunks.next_chunk().await.map_err(failed)? {
                    sink.write(&chunk)?;
                    progress.advance(0, chunk.len() as u64);
                }
                summary.blobs += 1;
            }
        }
        sink.end()?;
        progress.advance(1, 0);
    }
    sink.finish()?;
    progress.finish();
    summary.bytes = total;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn descriptor(media_type: &str, digest: &Digest, size: u64, notes: &[(&str, &str)]) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest: digest.clone(),
        size,
        artifact_type: None,
        urls: Vec::new(),
        annotations: annotations(notes),
        platform: None,
    }
}

/// Where an export goes: blobs one at a time, each streamed in chunks.
trait Sink {
    fn begin(&mut self, digest: &Digest, size: u64) -> Result<(), String>;
    fn write(&mut self, chunk: &[u8]) -> Result<(), String>;
    fn end(&mut self) -> Result<(), String>;
    /// Makes the export complete and durable.
    fn finish(self: Box<Self>) -> Result<(), String>;
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

/// A new directory; `index.json` is written last, so an interrupted export is not a
/// layout anyone would import.
struct DirSink {
    root: PathBuf,
    index: Vec<u8>,
    current: Option<(File, PathBuf)>,
}

impl DirSink {
    fn create(root: &Path, index: Vec<u8>) -> Result<DirSink, String> {
        let empty = match std::fs::read_dir(root) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(io_error(root)(e)),
        };
        if !empty {
            return Err(format!(
                "--out {}: the directory is not empty; give a new one (or a name ending in .tar)",
                root.display()
            ));
        }
        std::fs::create_dir_all(root).map_err(io_error(root))?;
        Ok(DirSink {
            root: root.to_path_buf(),
            index,
            current: None,
        })
    }
}

impl Sink for DirSink {
    fn begin(&mut self, digest: &Digest, _size: u64) -> Result<(), String> {
        let path = self.root.join(blob_path(digest));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        }
        let file = File::create(&path).map_err(io_error(&path))?;
        self.current = Some((file, path));
        Ok(())
    }

    fn write(&mut self, chunk: &[u8]) -> Result<(), String> {
        if let Some((file, path)) = &mut self.current {
            file.write_all(chunk).map_err(io_error(path))?;
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), String> {
        if let Some((file, path)) = self.current.take() {
            file.sync_all().map_err(io_error(&path))?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<(), String> {
        for (name, bytes) in [("oci-layout", OCI_LAYOUT), ("index.json", &self.index[..])] {
            let path = self.root.join(name);
            let mut file = File::create(&path).map_err(io_error(&path))?;
            file.write_all(bytes)
                .and_then(|_| file.sync_all())
                .map_err(io_error(&path))?;
        }
        Ok(())
    }
}

/// A tar written to `<out>.partial` and renamed at the end: `oci-layout` and
/// `index.json` first, then each blob streamed between its header and its padding.
struct TarSink {
    out: PathBuf,
    partial: PathBuf,
    file: std::io::BufWriter<File>,
    /// Bytes the current entry still expects.
    left: u64,
    size: u64,
}

impl TarSink {
    fn create(out: &Path, index: &[u8]) -> Result<TarSink, String> {
        if out.exists() {
            return Err(format!(
                "--out {}: the file exists; remove it or give another name",
                out.display()
            ));
        }
        let mut partial = out.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = File::create(&partial).map_err(io_error(&partial))?;
        let mut sink = TarSink {
            out: out.to_path_buf(),
            partial,
            file: std::io::BufWriter::with_capacity(super::CHUNK, file),
            left: 0,
            size: 0,
        };
        for (name, bytes) in [("oci-layout", OCI_LAYOUT), ("index.json", index)] {
            sink.entry(name, bytes.len() as u64)?;
            sink.write(bytes)?;
            sink.end()?;
        }
        Ok(sink)
    }

    fn entry(&mut self, path: &str, size: u64) -> Result<(), String> {
        let mut header = tar::Header::new_ustar();
        header
            .set_path(path)
            .map_err(|e| format!("{path}: {e}; export to a directory instead"))?;
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        self.left = size;
        self.size = size;
        self.file
            .write_all(header.as_bytes())
            .map_err(io_error(&self.partial))
    }
}

impl Sink for TarSink {
    fn begin(&mut self, digest: &Digest, size: u64) -> Result<(), String> {
        self.entry(&blob_path(digest), size)
    }

    fn write(&mut self, chunk: &[u8]) -> Result<(), String> {
        let len = chunk.len() as u64;
        if len > self.left {
            return Err(format!(
                "{}: a blob is longer than the store says; run portcullis fsck",
                self.partial.display()
            ));
        }
        self.left -= len;
        self.file.write_all(chunk).map_err(io_error(&self.partial))
    }

    fn end(&mut self) -> Result<(), String> {
        if self.left > 0 {
            return Err(format!(
                "{}: a blob is shorter than the store says; run portcullis fsck",
                self.partial.display()
            ));
        }
        let padding = (512 - self.size % 512) % 512;
        self.file
            .write_all(&vec![0; padding as usize])
            .map_err(io_error(&self.partial))
    }

    fn finish(self: Box<Self>) -> Result<(), String> {
        let TarSink {
            out,
            partial,
            mut file,
            ..
        } = *self;
        // Two zero blocks end the archive.
        file.write_all(&[0; 1024]).map_err(io_error(&partial))?;
        let file = file
            .into_inner()
            .map_err(|e| io_error(&partial)(e.into_error()))?;
        file.sync_all().map_err(io_error(&partial))?;
        std::fs::rename(&partial, &out).map_err(io_error(&out))
    }
}

// ---- import ---------------------------------------------------------------------

struct DirSource {
    root: PathBuf,
}

impl BlobSource for DirSource {
    fn open(&self, digest: &Digest) -> Result<Option<Box<dyn Read + Send>>, String> {
        let path = self.root.join(blob_path(digest));
        match File::open(&path) {
            Ok(file) => Ok(Some(Box::new(file))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(&path)(e)),
        }
    }

    fn locate(&self, digest: &Digest) -> String {
        self.root.join(blob_path(digest)).display().to_string()
    }
}

/// A tar read in place: where each regular entry's bytes start, and how many.
struct TarSource {
    path: PathBuf,
    entries: HashMap<String, (u64, u64)>,
}

impl TarSource {
    fn scan(path: &Path) -> Result<TarSource, String> {
        let file = File::open(path).map_err(io_error(path))?;
        let mut archive = tar::Archive::new(file);
        let bad = |e: std::io::Error| format!("{}: not a readable tar ({e})", path.display());
        let mut entries = HashMap::new();
        for entry in archive.entries_with_seek().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
            let name = name.trim_start_matches("./").to_string();
            entries.insert(name, (entry.raw_file_position(), entry.size()));
        }
        Ok(TarSource {
            path: path.to_path_buf(),
            entries,
        })
    }

    fn open_entry(&self, name: &str) -> Result<Option<Box<dyn Read + Send>>, String> {
        let Some(&(offset, size)) = self.entries.get(name) else {
            return Ok(None);
        };
        let mut file = File::open(&self.path).map_err(io_error(&self.path))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(io_error(&self.path))?;
        Ok(Some(Box::new(file.take(size))))
    }
}

impl BlobSource for TarSource {
    fn open(&self, digest: &Digest) -> Result<Option<Box<dyn Read + Send>>, String> {
        self.open_entry(&blob_path(digest))
    }

    fn locate(&self, digest: &Digest) -> String {
        format!("{}:{}", self.path.display(), blob_path(digest))
    }
}

/// One of the layout's top-level files, bounded.
fn read_top(reader: Option<Box<dyn Read + Send>>, what: &str) -> Result<Vec<u8>, String> {
    let reader =
        reader.ok_or_else(|| format!("{what} is missing; is this an OCI image layout?"))?;
    let mut bytes = Vec::new();
    reader
        .take(MAX_INDEX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{what}: {e}"))?;
    if bytes.len() as u64 > MAX_INDEX_BYTES {
        return Err(format!("{what} is larger than {MAX_INDEX_BYTES} bytes"));
    }
    Ok(bytes)
}

#[derive(serde::Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutVersion {
    image_layout_version: String,
}

/// Reads the layout at `path` (a directory or a `.tar`) into a plan; `repository`
/// names the repository of images whose ref names name none.
pub fn read(
    path: &Path,
    repository: Option<&RepoName>,
) -> Result<(Plan, Box<dyn BlobSource>), String> {
    let shown = path.display();
    let (source, layout, index): (Box<dyn BlobSource>, _, _) = if path.is_dir() {
        let open = |name: &str| -> Result<Option<Box<dyn Read + Send>>, String> {
            match File::open(path.join(name)) {
                Ok(f) => Ok(Some(Box::new(f))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("{shown}/{name}: {e}")),
            }
        };
        let layout = read_top(open("oci-layout")?, &format!("{shown}/oci-layout"))?;
        let index = read_top(open("index.json")?, &format!("{shown}/index.json"))?;
        let source = DirSource {
            root: path.to_path_buf(),
        };
        (Box::new(source), layout, index)
    } else if path.is_file() {
        let tar = TarSource::scan(path)?;
        let layout = read_top(
            tar.open_entry("oci-layout")?,
            &format!("{shown}:oci-layout"),
        )?;
        let index = read_top(
            tar.open_entry("index.json")?,
            &format!("{shown}:index.json"),
        )?;
        (Box::new(tar), layout, index)
    } else {
        return Err(format!(
            "{shown}: no such directory or file; give an OCI layout directory or a .tar of one"
        ));
    };
    let version: LayoutVersion = serde_json::from_slice(&layout)
        .map_err(|e| format!("{shown}: oci-layout is not valid ({e})"))?;
    if !version.image_layout_version.starts_with("1.") {
        return Err(format!(
            "{shown}: image layout version {} is not supported (1.x is)",
            version.image_layout_version
        ));
    }
    let index: Index = serde_json::from_slice(&index)
        .map_err(|e| format!("{shown}: index.json is not an OCI image index ({e})"))?;

    let mut plan = Plan {
        links: Vec::new(),
        manifests: Vec::new(),
        tags: Vec::new(),
        skipped: 0,
        on_missing: OnMissing::Abort,
    };
    // (repo, digest, media type, origin, listed by an index), from index.json down
    // through indexes.
    let mut queue = Vec::new();
    for d in &index.manifests {
        let (repo, tag) = name_of(d, repository).map_err(|e| format!("{shown}: {e}"))?;
        if let Some(tag) = tag {
            plan.tags.push(PlannedTag {
                repo: repo.clone(),
                tag,
                digest: d.digest.clone(),
            });
        }
        let origin = match d
            .annotations
            .as_ref()
            .and_then(|a| a.get(ORIGIN_ANNOTATION))
        {
            Some(o) if o == "cached" => Origin::Cached,
            _ => Origin::Pushed,
        };
        queue.push((repo, d.digest.clone(), d.media_type.clone(), origin, false));
    }
    let mut seen = BTreeSet::new();
    while let Some((repo, digest, media_type, origin, listed)) = queue.pop() {
        if !seen.insert((repo.clone(), digest.clone())) {
            continue;
        }
        let Some(bytes) = read_manifest(&*source, &digest)? else {
            // A cached index keeps platforms nobody pulled; the cache fetches them
            // when it is online again.
            if listed && origin == Origin::Cached {
                continue;
            }
            return Err(format!(
                "manifest {digest} of {repo} is missing: no {}",
                source.locate(&digest)
            ));
        };
        let parsed = manifest::parse(Some(&media_type), &bytes)
            .map_err(|e| format!("{}: {e}", source.locate(&digest)))?;
        for child in &parsed.children {
            queue.push((
                repo.clone(),
                child.digest.clone(),
                child.media_type.clone(),
                origin,
                true,
            ));
        }
        plan.manifests.push(PlannedManifest {
            repo,
            digest,
            bytes,
            parsed,
            origin,
        });
    }
    Ok((plan, source))
}

/// The repository and tag of an `index.json` entry.
fn name_of(
    d: &Descriptor,
    repository: Option<&RepoName>,
) -> Result<(RepoName, Option<Tag>), String> {
    let note = |key| {
        d.annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    };
    let refname = note(REF_NAME).or(note(CONTAINERD_NAME)).map(parse_ref_name);
    let named = note(REPOSITORY_ANNOTATION).or(refname.as_ref().and_then(|r| r.repo));
    let repo = match (named, repository) {
        (Some(name), _) => {
            RepoName::parse(name).map_err(|e| format!("{} in index.json: {e}", d.digest))?
        }
        (None, Some(given)) => given.clone(),
        (None, None) => {
            return Err(format!(
                "image {} (ref name {:?}) names no repository; give one with --repository NAME",
                d.digest,
                note(REF_NAME).unwrap_or("")
            ))
        }
    };
    let tag = refname
        .and_then(|r| r.tag)
        .map(Tag::parse)
        .transpose()
        .map_err(|e| format!("{} in index.json: {e}", d.digest))?;
    Ok((repo, tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(name: &str) -> (Option<&str>, Option<&str>) {
        let r = parse_ref_name(name);
        (r.repo, r.tag)
    }

    #[test]
    fn ref_names_split_into_repository_and_tag() {
        assert_eq!(split("team/app:1.0"), (Some("team/app"), Some("1.0")));
        assert_eq!(split("app:latest"), (Some("app"), Some("latest")));
        assert_eq!(
            split("docker.io/library/alpine:3.20"),
            (Some("docker.io/library/alpine"), Some("3.20"))
        );
        assert_eq!(
            split("registry.lan:5000/team/app:v2"),
            (Some("registry.lan:5000/team/app"), Some("v2"))
        );
        assert_eq!(split("1.0"), (None, Some("1.0")));
        assert_eq!(split("team/app"), (Some("team/app"), None));
        assert_eq!(
            split("registry.lan:5000/team/app"),
            (Some("registry.lan:5000/team/app"), None)
        );
        assert_eq!(split("team/app@sha256:abcd"), (Some("team/app"), None));
    }

    #[test]
    fn blob_paths_follow_the_layout() {
        let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        assert_eq!(blob_path(&d), format!("blobs/sha256/{}", "ab".repeat(32)));
    }

    fn entry(notes: &[(&str, &str)]) -> Descriptor {
        descriptor(
            manifest::OCI_MANIFEST,
            &format!("sha256:{}", "cd".repeat(32)).parse().unwrap(),
            10,
            notes,
        )
    }

    #[test]
    fn the_repository_comes_from_the_annotation_the_ref_name_or_the_flag() {
        let ours = entry(&[
            (REF_NAME, "team/app:1.0"),
            (REPOSITORY_ANNOTATION, "team/app"),
        ]);
        let (repo, tag) = name_of(&ours, None).unwrap();
        assert_eq!(
            (repo.as_str(), tag.unwrap().to_string().as_str()),
            ("team/app", "1.0")
        );

        let untagged = entry(&[(REPOSITORY_ANNOTATION, "team/app")]);
        assert_eq!(name_of(&untagged, None).unwrap().1, None);

        let skopeo = entry(&[(REF_NAME, "1.0")]);
        let err = name_of(&skopeo, None).unwrap_err();
        assert!(err.contains("--repository"), "{err}");
        let given = RepoName::parse("imported/app").unwrap();
        let (repo, tag) = name_of(&skopeo, Some(&given)).unwrap();
        assert_eq!(repo, given);
        assert_eq!(tag.unwrap().to_string(), "1.0");

        let bad = entry(&[(REF_NAME, "Team/App:1.0")]);
        assert!(name_of(&bad, None).is_err());
    }
}
