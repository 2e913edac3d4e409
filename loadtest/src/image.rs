//! Synthetic content: pseudo-random blobs, valid tar layers, OCI image configs and
//! manifests, and OCI image layouts on disk for real clients (skopeo).
//!
//! Content is derived from a seed, so the same seed gives the same digests (seeding is
//! idempotent across runs) and different seeds never share a blob (no accidental
//! deduplication or cross-repository mounts inside a measurement).

use bytes::Bytes;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use std::path::Path;

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
/// What a client asking for any image manifest sends (as containers/image does).
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// One blob with its digest (`sha256:<hex>`).
#[derive(Clone)]
pub struct Blob {
    pub digest: String,
    pub data: Bytes,
}

impl Blob {
    pub fn new(data: Bytes) -> Blob {
        Blob {
            digest: sha256_digest(&data),
            data,
        }
    }

    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }
}

/// A complete single-platform OCI image (cheap to clone: the bytes are shared).
#[derive(Clone)]
pub struct Image {
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Blob,
}

impl Image {
    /// Config and layers: every blob the manifest references.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }

    /// Bytes of all blobs (not counting the manifest).
    pub fn blob_bytes(&self) -> u64 {
        self.blobs().map(Blob::size).sum()
    }
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// splitmix64: fast, well-mixed, and plenty for incompressible test bytes.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Small deterministic generator for choices inside scenarios (sizes, operations).
pub struct Rng(SplitMix);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(SplitMix(seed))
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.next() % n
    }
}

/// Fills `buf` with pseudo-random bytes from `seed`.
pub fn fill_random(seed: u64, buf: &mut [u8]) {
    let mut rng = SplitMix(seed);
    let mut words = buf.chunks_exact_mut(8);
    for w in &mut words {
        w.copy_from_slice(&rng.next().to_le_bytes());
    }
    let tail = words.into_remainder();
    let last = rng.next().to_le_bytes();
    let n = tail.len();
    tail.copy_from_slice(&last[..n]);
}

pub fn random_bytes(seed: u64, len: usize) -> Bytes {
    let mut buf = vec![0u8; len];
    fill_random(seed, &mut buf);
    Bytes::from(buf)
}

const TAR_BLOCK: usize = 512;

/// A ustar archive holding one file `data.bin` with `payload` pseudo-random bytes:
/// a real layer for clients that look inside, incompressible like real layers are.
pub fn tar_layer(seed: u64, payload: usize) -> Bytes {
    let padded = payload.div_ceil(TAR_BLOCK) * TAR_BLOCK;
    let mut buf = vec![0u8; TAR_BLOCK + padded + 2 * TAR_BLOCK];
    write_tar_header(&mut buf[..TAR_BLOCK], "data.bin", payload as u64);
    fill_random(seed, &mut buf[TAR_BLOCK..TAR_BLOCK + payload]);
    Bytes::from(buf)
}

fn octal(field: &mut [u8], value: u64) {
    // Right-aligned, zero-padded octal digits followed by NUL.
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

fn write_tar_header(h: &mut [u8], name: &str, size: u64) {
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], 0o644); // mode
    octal(&mut h[108..116], 0); // uid
    octal(&mut h[116..124], 0); // gid
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0); // mtime
    h[148..156].copy_from_slice(b"        "); // checksum placeholder: spaces
    h[156] = b'0'; // regular file
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    let s = format!("{sum:06o}");
    h[148..154].copy_from_slice(s.as_bytes());
    h[154] = 0;
    h[155] = b' ';
}

/// Splits `total` bytes into `layers` tar layers (about equal) and wraps them into an
/// image whose config names the layers' digests. `seed` makes every blob distinct.
pub fn synth_image(seed: u64, layers: usize, total: u64) -> Image {
    let layers = layers.max(1);
    let each = (total / layers as u64).max(1) as usize;
    let layers: Vec<Blob> = (0..layers)
        .map(|i| {
            let layer_seed = seed
                .wrapping_mul(0x100_0000_01b3)
                .wrapping_add(i as u64 + 1);
            Blob::new(tar_layer(layer_seed, each))
        })
        .collect();
    image_of(seed, layers)
}

/// An image over the given layers, with a config that names `seed` (so two images
/// with the same layers but different seeds still differ in config and manifest).
pub fn image_of(seed: u64, layers: Vec<Blob>) -> Image {
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": { "Labels": { "portcullis.loadtest.seed": seed.to_string() } },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let config = Blob::new(Bytes::from(serde_json::to_vec(&config).expect("json")));
    let descriptor = |media_type: &str, b: &Blob| json!({ "mediaType": media_type, "digest": b.digest, "size": b.size() });
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": descriptor(CONFIG_TYPE, &config),
        "layers": layers.iter().map(|l| descriptor(LAYER_TYPE, l)).collect::<Vec<_>>(),
    });
    let manifest = Blob::new(Bytes::from(serde_json::to_vec(&manifest).expect("json")));
    Image {
        config,
        layers,
        manifest,
    }
}

/// The blob digests (config first, then layers) a manifest references.
pub fn manifest_blobs(manifest: &[u8]) -> Result<Vec<(String, u64)>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(manifest).map_err(|e| format!("manifest is not JSON: {e}"))?;
    let descriptor = |d: &serde_json::Value| -> Result<(String, u64), String> {
        let digest = d["digest"].as_str().ok_or("descriptor without digest")?;
        let size = d["size"].as_u64().ok_or("descriptor without size")?;
        Ok((digest.to_string(), size))
    };
    let mut out = vec![descriptor(&v["config"])?];
    for layer in v["layers"].as_array().ok_or("manifest without layers")? {
        out.push(descriptor(layer)?);
    }
    Ok(out)
}

/// Writes `image` as an OCI image layout at `dir` with `tag` as its ref name,
/// for `skopeo copy oci:<dir>:<tag> ...`.
pub fn write_oci_layout(dir: &Path, image: &Image, tag: &str) -> std::io::Result<()> {
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    for blob in image.blobs().chain(std::iter::once(&image.manifest)) {
        let hex = blob.digest.trim_start_matches("sha256:");
        std::fs::write(blobs.join(hex), &blob.data)?;
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MANIFEST_TYPE,
            "digest": image.manifest.digest,
            "size": image.manifest.size(),
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
}

/// Parses sizes like `512MiB`, `1GiB`, `64KiB`, `100MB`, `4096`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 512MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => return Err(format!("invalid size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("1XB").is_err());
    }

    #[test]
    fn images_are_deterministic_and_distinct() {
        let a = synth_image(1, 3, 10_000);
        let b = synth_image(1, 3, 10_000);
        let c = synth_image(2, 3, 10_000);
        assert_eq!(a.manifest.digest, b.manifest.digest);
        assert_ne!(a.manifest.digest, c.manifest.digest);
        assert_eq!(a.layers.len(), 3);
        for (x, y) in a.layers.iter().zip(&c.layers) {
            assert_ne!(x.digest, y.digest);
        }
        let listed = manifest_blobs(&a.manifest.data).unwrap();
        assert_eq!(listed.len(), 4);
        assert_eq!(listed[0].0, a.config.digest);
        assert_eq!(listed[1], (a.layers[0].digest.clone(), a.layers[0].size()));
    }

    #[test]
    fn tar_layer_is_valid_ustar() {
        let layer = tar_layer(9, 1000);
        assert_eq!(layer.len(), 512 + 1024 + 1024);
        assert_eq!(&layer[..8], b"data.bin");
        assert_eq!(&layer[124..136], b"00000001750\0");
        assert_eq!(&layer[257..262], b"ustar");
        // The checksum is the byte sum with the checksum field read as spaces.
        let mut h = layer[..512].to_vec();
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        let stored = std::str::from_utf8(&layer[148..154]).unwrap();
        assert_eq!(u64::from_str_radix(stored, 8).unwrap(), sum);
        assert!(layer[512 + 1000..].iter().all(|&b| b == 0));
    }
}
