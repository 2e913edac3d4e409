//! `gc-store`: writes a Portcullis data directory of a given size straight through the
//! library (`Registry` over `FsBlobStore` and `RedbMetaStore`, as `portcullis serve`
//! opens it), much faster than pushing over HTTP, for the `gc-bench` measurement.
//!
//! Shape, for `--blobs B --manifests M --repos R` (blobs counts config and layer blobs;
//! manifests are stored as blobs too, so the blob directory holds about B + M files):
//! - per repository about M/R manifests: 5% indexes of 2 image manifests each (pushed by
//!   digest), 5% referrers (an artifact with the empty config and one blob of its own,
//!   pushed by digest, whose subject is a tagged image), the rest tagged images;
//! - every image has its own config, 2 layers of a global pool of [`BASE_LAYERS`]
//!   (pushed once, mounted into every repository), one of its repository's pool of
//!   [`FAMILY_LAYERS`] and about 9-10 layers of its own, as many as make B blobs;
//! - blobs are 64-1024 bytes, so the counts are real and the disk cost is small.
//!
//! Then garbage: 30% of the tags are deleted, 5% of the still-tagged images are
//! deleted by digest (with their tags and referrers entries), and 3% of B are loose
//! blobs, uploaded and never referenced. The generator keeps the graph and computes
//! what a collection with `--delete-untagged --grace 0s` must delete ([`Expected`]),
//! so the benchmark checks the collector's report against it.
//!
//! Repositories are written `--parallel` at a time (every blob finish fsyncs the file,
//! its directory and one metadata transaction: that is what takes the time).

use crate::image::{fill_random, Rng};
use async_trait::async_trait;
use bytes::Bytes;
use portcullis::oci::{Digest, Reference, RepoName, Tag};
use portcullis::store::{ByteSource, FsBlobStore, Origin, RedbMetaStore, Registry, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Layers every repository shares (mounted from the first repository).
pub const BASE_LAYERS: usize = 16;
/// Layers the images of one repository share.
pub const FAMILY_LAYERS: usize = 8;
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// How big a store to write.
#[derive(clap::Args, Clone, Debug)]
pub struct StoreShape {
    /// Config and layer blobs in all (manifests not counted).
    #[arg(long, default_value_t = 100_000)]
    pub blobs: usize,
    /// Manifests in all (images, indexes and referrers).
    #[arg(long, default_value_t = 10_000)]
    pub manifests: usize,
    #[arg(long, default_value_t = 100)]
    pub repos: usize,
    /// Repositories written at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Seed of the content (the same seed gives the same store).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

#[derive(clap::Args)]
pub struct GcStoreArgs {
    /// Data directory to create (must not exist, or be empty).
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub shape: StoreShape,
}

/// What a collection with `--delete-untagged --grace 0s` must remove.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Expected {
    /// Blob files: unreferenced blobs and the bytes of dropped manifests.
    pub files: usize,
    pub bytes: u64,
    /// Manifest records dropped (untagged and unreachable).
    pub manifests: usize,
}

/// What was written.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct StoreFigures {
    pub repos: usize,
    /// Config and layer blobs stored (loose ones included), and their bytes.
    pub blobs: usize,
    pub blob_bytes: u64,
    pub manifests: usize,
    pub indexes: usize,
    pub referrers: usize,
    pub tags: usize,
    pub tags_deleted: usize,
    pub manifests_deleted: usize,
    pub loose_blobs: usize,
    pub seconds: f64,
    pub expected: Expected,
}

/// A whole small body for the upload API.
struct Whole(Option<Bytes>);

#[async_trait]
impl ByteSource for Whole {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        Ok(self.0.take())
    }
}

/// One stored manifest, as the generator remembers it.
struct Node {
    digest: Digest,
    size: u64,
    blobs: Vec<Digest>,
    children: Vec<Digest>,
    subject: Option<Digest>,
    tags: Vec<Tag>,
    /// Deleted by digest: its record is gone, its bytes are garbage.
    deleted: bool,
}

/// One repository's part of the store, for the expected result.
#[derive(Default)]
struct RepoGraph {
    nodes: Vec<Node>,
    tags: usize,
    tags_deleted: usize,
    manifests_deleted: usize,
    loose: Vec<(Digest, u64)>,
    /// Blob digests written by this repository (uploads), with sizes.
    uploaded: Vec<(Digest, u64)>,
}

/// Content-derived names must differ per seed, repo and index: a small counter-mixer.
fn blob_bytes(seed: u64, size: usize) -> Bytes {
    let mut buf = vec![0u8; size];
    fill_random(seed, &mut buf);
    Bytes::from(buf)
}

fn descriptor(media_type: &str, digest: &Digest, size: u64) -> serde_json::Value {
    json!({ "mediaType": media_type, "digest": digest.to_string(), "size": size })
}

struct Writer {
    registry: Arc<Registry>,
    repo: RepoName,
    rng: Rng,
    graph: RepoGraph,
}

impl Writer {
    async fn upload(&mut self, data: Bytes) -> Result<(Digest, u64), String> {
        let digest = Digest::sha256_of(&data);
        let size = data.len() as u64;
        let r = &self.registry;
        let id = r
            .start_upload(&self.repo)
            .await
            .map_err(|e| e.to_string())?;
        r.append_upload(&self.repo, &id, Some(0), &mut Whole(Some(data)))
            .await
            .map_err(|e| e.to_string())?;
        r.finish_upload(&self.repo, &id, &digest, Origin::Pushed)
            .await
            .map_err(|e| format!("finishing {digest}: {e}"))?;
        self.graph.uploaded.push((digest.clone(), size));
        Ok((digest, size))
    }

    async fn random_blob(&mut self, seed: u64) -> Result<(Digest, u64), String> {
        let size = 64 + self.rng.below(961) as usize;
        self.upload(blob_bytes(seed, size)).await
    }

    async fn mount(&self, digest: &Digest, from: &RepoName) -> Result<(), String> {
        match self
            .registry
            .mount_blob(&self.repo, digest, Some(from))
            .await
        {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!("mount of {digest} from {from} found nothing")),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn put(
        &mut self,
        reference: Reference,
        media_type: &str,
        body: serde_json::Value,
    ) -> Result<(Digest, u64), String> {
        let bytes = Bytes::from(serde_json::to_vec(&body).map_err(|e| e.to_string())?);
        let size = bytes.len() as u64;
        let out = self
            .registry
            .put_manifest(&self.repo, &reference, Some(media_type), bytes)
            .await
            .map_err(|e| format!("manifest in {}: {e}", self.repo))?;
        Ok((out.digest, size))
    }
}

/// What one repository gets: its counts and the shared blobs it uses.
struct RepoPlan {
    index: usize,
    images: usize,
    indexes: usize,
    referrers: usize,
    /// Own layers of each image, in order.
    unique: Vec<usize>,
    loose: usize,
}

/// Splits the shape into per-repository plans.
fn plans(shape: &StoreShape) -> Result<Vec<RepoPlan>, String> {
    let repos = shape.repos.max(1);
    let per_repo = |total: usize, r: usize| total / repos + usize::from(r < total % repos);
    let mut out = Vec::new();
    for r in 0..repos {
        let m = per_repo(shape.manifests, r);
        let indexes = m / 20;
        let referrers = m / 20;
        let images = m
            .checked_sub(indexes + referrers)
            .filter(|&i| i >= 2 * indexes.max(1))
            .ok_or_else(|| {
                format!(
                    "--manifests {} is too few for {repos} repositories",
                    shape.manifests
                )
            })?;
        out.push(RepoPlan {
            index: r,
            images,
            indexes,
            referrers,
            unique: Vec::new(),
            loose: per_repo(shape.blobs * 3 / 100, r),
        });
    }
    let images: usize = out.iter().map(|p| p.images).sum();
    let fixed = BASE_LAYERS
        + 1 // the empty config of referrers
        + repos * FAMILY_LAYERS
        + images // configs
        + out.iter().map(|p| p.referrers + p.loose).sum::<usize>();
    let unique = shape
        .blobs
        .checked_sub(fixed)
        .filter(|&u| u >= images)
        .ok_or_else(|| {
            format!(
                "--blobs {} is too few: {fixed} go to configs, shared layers and loose blobs, \
             and every image needs one layer of its own",
                shape.blobs
            )
        })?;
    let mut k = 0;
    for p in &mut out {
        for _ in 0..p.images {
            p.unique
                .push(unique / images + usize::from(k < unique % images));
            k += 1;
        }
    }
    Ok(out)
}

/// Writes one repository; the base layers are in `base_repo` already.
async fn write_repo(
    registry: Arc<Registry>,
    plan: RepoPlan,
    seed: u64,
    base: Arc<Vec<(Digest, u64)>>,
    base_repo: RepoName,
    empty: (Digest, u64),
) -> Result<RepoGraph, String> {
    let repo = RepoName::parse(&format!("gc/r{:03}", plan.index)).map_err(|e| e.to_string())?;
    let seed = seed ^ ((plan.index as u64 + 1) << 32);
    let mut w = Writer {
        registry,
        repo: repo.clone(),
        rng: Rng::new(seed),
        graph: RepoGraph::default(),
    };
    let mut counter = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut next_seed = || {
        counter = counter.wrapping_add(0x6a09_e667_f3bc_c909);
        counter
    };
    if repo != base_repo {
        for (digest, _) in base.iter() {
            w.mount(digest, &base_repo).await?;
        }
        w.mount(&empty.0, &base_repo).await?;
    }
    let mut family = Vec::new();
    for _ in 0..FAMILY_LAYERS {
        family.push(w.random_blob(next_seed()).await?);
    }
    // Images: the first 2 * indexes become index children (pushed by digest).
    let children = 2 * plan.indexes;
    for (i, own) in plan.unique.iter().enumerate() {
        let mut layers = vec![
            base[(plan.index + i) % base.len()].clone(),
            base[(plan.index + i + 7) % base.len()].clone(),
            family[i % family.len()].clone(),
        ];
        for _ in 0..*own {
            layers.push(w.random_blob(next_seed()).await?);
        }
        let config = json!({
            "architecture": if i % 2 == 0 { "amd64" } else { "arm64" },
            "os": "linux",
            "config": { "Labels": { "portcullis.gc-store": format!("{}/{i}/{seed}", plan.index) } },
            "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.0.to_string()).collect::<Vec<_>>() },
        });
        let config = w
            .upload(Bytes::from(
                serde_json::to_vec(&config).map_err(|e| e.to_string())?,
            ))
            .await?;
        let body = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config.0, config.1),
            "layers": layers.iter().map(|(d, s)| descriptor("application/vnd.oci.image.layer.v1.tar", d, *s)).collect::<Vec<_>>(),
        });
        let tag = (i >= children).then(|| Tag::parse(&format!("v{i}")).expect("tag"));
        let digest_of = Digest::sha256_of(&serde_json::to_vec(&body).map_err(|e| e.to_string())?);
        let reference = match &tag {
            Some(t) => Reference::Tag(t.clone()),
            None => Reference::Digest(digest_of),
        };
        let (digest, size) = w.put(reference, MANIFEST, body).await?;
        w.graph.tags += usize::from(tag.is_some());
        w.graph.nodes.push(Node {
            digest,
            size,
            blobs: std::iter::once(config.0)
                .chain(layers.into_iter().map(|l| l.0))
                .collect(),
            children: Vec::new(),
            subject: None,
            tags: tag.into_iter().collect(),
            deleted: false,
        });
    }
    for j in 0..plan.indexes {
        let kids = [&w.graph.nodes[2 * j], &w.graph.nodes[2 * j + 1]];
        let body = json!({
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": kids.iter().enumerate().map(|(k, n)| {
                let mut d = descriptor(MANIFEST, &n.digest, n.size);
                d["platform"] = json!({ "os": "linux", "architecture": if k == 0 { "amd64" } else { "arm64" } });
                d
            }).collect::<Vec<_>>(),
        });
        let children = kids.iter().map(|n| n.digest.clone()).collect();
        let tag = Tag::parse(&format!("multi{j}")).expect("tag");
        let (digest, size) = w.put(Reference::Tag(tag.clone()), INDEX, body).await?;
        w.graph.tags += 1;
        w.graph.nodes.push(Node {
            digest,
            size,
            blobs: Vec::new(),
            children,
            subject: None,
            tags: vec![tag],
            deleted: false,
        });
    }
    for j in 0..plan.referrers {
        // The subject: a tagged image, spread over the repository.
        let tagged: Vec<usize> = (children..plan.images).collect();
        let subject = &w.graph.nodes[tagged[(j * 7) % tagged.len()]];
        let (subject_digest, subject_size) = (subject.digest.clone(), subject.size);
        let signature = w.random_blob(next_seed()).await?;
        let body = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "artifactType": "application/vnd.example.signature.v1",
            "config": descriptor(EMPTY, &empty.0, empty.1),
            "layers": [descriptor("application/octet-stream", &signature.0, signature.1)],
            "subject": descriptor(MANIFEST, &subject_digest, subject_size),
        });
        let digest = Digest::sha256_of(&serde_json::to_vec(&body).map_err(|e| e.to_string())?);
        let (digest, size) = w.put(Reference::Digest(digest), MANIFEST, body).await?;
        w.graph.nodes.push(Node {
            digest,
            size,
            blobs: vec![empty.0.clone(), signature.0],
            children: Vec::new(),
            subject: Some(subject_digest),
            tags: Vec::new(),
            deleted: false,
        });
    }
    for _ in 0..plan.loose {
        let blob = w.random_blob(next_seed()).await?;
        w.graph.loose.push(blob);
    }
    // Garbage: 30% of the tags, then 5% of the images still tagged, by digest.
    let registry = w.registry.clone();
    for node in &mut w.graph.nodes {
        let (doomed, kept): (Vec<Tag>, Vec<Tag>) = std::mem::take(&mut node.tags)
            .into_iter()
            .partition(|_| w.rng.below(100) < 30);
        for tag in doomed {
            registry
                .delete_manifest(&repo, &Reference::Tag(tag.clone()))
                .await
                .map_err(|e| format!("deleting tag {repo}:{tag}: {e}"))?;
            w.graph.tags_deleted += 1;
        }
        node.tags = kept;
    }
    for node in w.graph.nodes.iter_mut().filter(|n| n.children.is_empty()) {
        if node.tags.is_empty() || node.subject.is_some() || w.rng.below(100) >= 5 {
            continue;
        }
        registry
            .delete_manifest(&repo, &Reference::Digest(node.digest.clone()))
            .await
            .map_err(|e| format!("deleting {repo}@{}: {e}", node.digest))?;
        node.tags.clear();
        node.deleted = true;
        w.graph.manifests_deleted += 1;
    }
    Ok(w.graph)
}

/// Writes the store; returns its figures, the expected collection included.
pub async fn generate(data: &Path, shape: &StoreShape) -> Result<StoreFigures, String> {
    let plans = plans(shape)?;
    let started = Instant::now();
    std::fs::create_dir_all(data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    if std::fs::read_dir(data)
        .map_err(|e| e.to_string())?
        .next()
        .is_some()
    {
        return Err(format!(
            "{} is not empty: give a new directory",
            data.display()
        ));
    }
    let blobs = FsBlobStore::open(data).map_err(|e| e.to_string())?;
    let meta = RedbMetaStore::open(&data.join("meta.redb")).map_err(|e| e.to_string())?;
    let registry = Arc::new(Registry::new(Arc::new(blobs), Arc::new(meta), 0));

    // The shared blobs, in the first repository.
    let base_repo = RepoName::parse("gc/r000").map_err(|e| e.to_string())?;
    let mut first = Writer {
        registry: registry.clone(),
        repo: base_repo.clone(),
        rng: Rng::new(shape.seed),
        graph: RepoGraph::default(),
    };
    let mut base = Vec::new();
    for i in 0..BASE_LAYERS {
        base.push(
            first
                .random_blob(shape.seed ^ 0xba5e ^ ((i as u64) << 20))
                .await?,
        );
    }
    let empty = first.upload(Bytes::from_static(b"{}")).await?;
    let mut graphs = vec![first.graph];
    let base = Arc::new(base);

    let semaphore = Arc::new(tokio::sync::Semaphore::new(shape.parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for plan in plans {
        let (registry, base, base_repo, empty) = (
            registry.clone(),
            base.clone(),
            base_repo.clone(),
            empty.clone(),
        );
        let semaphore = semaphore.clone();
        let seed = shape.seed;
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await.map_err(|e| e.to_string())?;
            write_repo(registry, plan, seed, base, base_repo, empty).await
        });
    }
    while let Some(joined) = tasks.join_next().await {
        graphs.push(joined.map_err(|e| format!("a writer panicked: {e}"))??);
    }
    registry.flush_access().await.map_err(|e| e.to_string())?;
    let mut figures = summarize(&graphs);
    figures.repos = shape.repos;
    figures.seconds = started.elapsed().as_secs_f64();
    Ok(figures)
}

/// Counts, and what a collection with untagged deletion and no grace must remove.
fn summarize(graphs: &[RepoGraph]) -> StoreFigures {
    let mut f = StoreFigures::default();
    let mut sizes: HashMap<&Digest, u64> = HashMap::new();
    let mut surviving: HashSet<&Digest> = HashSet::new();
    for g in graphs {
        for (d, s) in &g.uploaded {
            sizes.insert(d, *s);
        }
        f.tags += g.tags;
        f.tags_deleted += g.tags_deleted;
        f.manifests_deleted += g.manifests_deleted;
        f.loose_blobs += g.loose.len();
        f.manifests += g.nodes.len();
        f.indexes += g.nodes.iter().filter(|n| !n.children.is_empty()).count();
        f.referrers += g.nodes.iter().filter(|n| n.subject.is_some()).count();
        // Marked: tagged, children of marked indexes, referrers of marked subjects.
        let by_digest: HashMap<&Digest, &Node> = g
            .nodes
            .iter()
            .filter(|n| !n.deleted)
            .map(|n| (&n.digest, n))
            .collect();
        let mut marked: HashSet<&Digest> = HashSet::new();
        let mut todo: Vec<&Node> = g.nodes.iter().filter(|n| !n.tags.is_empty()).collect();
        while let Some(n) = todo.pop() {
            if !marked.insert(&n.digest) {
                continue;
            }
            todo.extend(n.children.iter().filter_map(|c| by_digest.get(c).copied()));
            todo.extend(
                g.nodes
                    .iter()
                    .filter(|r| !r.deleted && r.subject.as_ref() == Some(&n.digest)),
            );
        }
        for n in &g.nodes {
            sizes.insert(&n.digest, n.size);
            if marked.contains(&n.digest) {
                surviving.insert(&n.digest);
                surviving.extend(n.blobs.iter());
            } else if !n.deleted {
                f.expected.manifests += 1;
            }
        }
    }
    f.blobs = graphs.iter().map(|g| g.uploaded.len()).sum();
    f.blob_bytes = graphs
        .iter()
        .flat_map(|g| g.uploaded.iter().map(|(_, s)| s))
        .sum();
    for (digest, size) in &sizes {
        if !surviving.contains(digest) {
            f.expected.files += 1;
            f.expected.bytes += size;
        }
    }
    f
}

impl StoreFigures {
    pub fn summary(&self) -> String {
        format!(
            "{} blobs ({:.1} MiB), {} manifests ({} indexes, {} referrers) in {} repositories, \
             {} tags; garbage: {} tags and {} manifests deleted, {} loose blobs; written in {:.1} s; \
             a collection must delete {} files ({:.1} MiB) and {} manifest records",
            self.blobs,
            self.blob_bytes as f64 / (1 << 20) as f64,
            self.manifests,
            self.indexes,
            self.referrers,
            self.repos,
            self.tags,
            self.tags_deleted,
            self.manifests_deleted,
            self.loose_blobs,
            self.seconds,
            self.expected.files,
            self.expected.bytes as f64 / (1 << 20) as f64,
            self.expected.manifests,
        )
    }
}

/// `portcullis-loadtest gc-store`.
pub fn run(args: &GcStoreArgs) -> Result<StoreFigures, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let figures = runtime.block_on(generate(&args.data, &args.shape))?;
    std::fs::write(
        args.data.join("gc-store.json"),
        serde_json::to_vec_pretty(&figures).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_add_up_to_the_shape() {
        let shape = StoreShape {
            blobs: 5_000,
            manifests: 500,
            repos: 10,
            parallel: 1,
            seed: 1,
        };
        let repos = plans(&shape).unwrap();
        let images: usize = repos.iter().map(|p| p.images).sum();
        let manifests: usize = repos
            .iter()
            .map(|p| p.images + p.indexes + p.referrers)
            .sum();
        assert_eq!(manifests, 500);
        let blobs = BASE_LAYERS
            + 1
            + 10 * FAMILY_LAYERS
            + images
            + repos
                .iter()
                .map(|p| p.referrers + p.loose + p.unique.iter().sum::<usize>())
                .sum::<usize>();
        assert_eq!(blobs, 5_000);
        assert!(plans(&StoreShape {
            blobs: 100,
            ..shape
        })
        .is_err());
    }

    #[test]
    fn a_small_store_and_its_expected_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let shape = StoreShape {
            blobs: 600,
            manifests: 60,
            repos: 2,
            parallel: 2,
            seed: 7,
        };
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let f = runtime
            .block_on(generate(&dir.path().join("d"), &shape))
            .unwrap();
        assert_eq!(f.blobs, 600);
        assert_eq!(f.manifests, 60);
        assert_eq!((f.indexes, f.referrers), (2, 2));
        assert!(f.tags_deleted > 0 && f.expected.files > f.loose_blobs);
        // The same seed writes the same store.
        let again = runtime
            .block_on(generate(&dir.path().join("e"), &shape))
            .unwrap();
        assert_eq!(again.expected, f.expected);
    }
}
