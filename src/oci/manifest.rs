//! Manifest parsing: just enough structure to validate a pushed manifest and index it.
//!
//! Manifests are stored byte-for-byte as received; this module only reads them to find
//! what they reference (blobs, child manifests, a `subject`). Unknown fields are ignored
//! so that every flavour (Docker schema2, manifest list, OCI manifest, index, artifact
//! manifest) parses with one lenient shape, which is why these are our own small serde
//! types rather than a full model of each format.

use super::digest::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_ARTIFACT_MANIFEST: &str = "application/vnd.oci.artifact.manifest.v1+json";

/// Largest manifest accepted, as the brief and common registries require.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// A content descriptor as it appears in manifests and in the referrers index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

/// The lenient wire shape shared by all manifest flavours.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<u32>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    /// Artifact manifests (OCI 1.1 draft) list their content here.
    #[serde(default)]
    blobs: Vec<Descriptor>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

/// What the registry needs to know about a pushed manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedManifest {
    /// The media type the manifest is stored and served with.
    pub media_type: String,
    /// Blobs the repository must already hold (config and layers).
    pub blobs: Vec<Descriptor>,
    /// Manifests an index or list points at; the repository must already hold them.
    pub children: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    /// `artifactType`, or for image manifests the config media type, as the referrers API reports it.
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON of a known shape: {0}")]
    Json(String),
    #[error("schemaVersion must be 2, got {0:?}")]
    SchemaVersion(Option<u32>),
    #[error(
        "Docker schema1 manifests are not supported; push with a current client (schema2 or OCI)"
    )]
    Schema1,
    #[error("Content-Type {header:?} disagrees with the manifest's mediaType {body:?}")]
    MediaTypeMismatch { header: String, body: String },
    #[error("manifest media type {0:?} is not a manifest or index type this registry accepts")]
    UnknownMediaType(String),
    #[error("an image manifest needs a config descriptor")]
    MissingConfig,
    #[error("an index needs a manifests list")]
    MissingManifests,
}

impl ParsedManifest {
    /// An image manifest's config descriptor (the first of its blobs).
    pub fn config(&self) -> Option<&Descriptor> {
        self.is_image().then(|| self.blobs.first()).flatten()
    }

    /// The layers of an image manifest, or an artifact manifest's blobs.
    pub fn layers(&self) -> &[Descriptor] {
        let skip = usize::from(self.config().is_some());
        self.blobs.get(skip..).unwrap_or_default()
    }

    fn is_image(&self) -> bool {
        matches!(self.media_type.as_str(), DOCKER_MANIFEST | OCI_MANIFEST)
    }
}

fn is_index_type(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// Parses a manifest pushed with the given `Content-Type` header (if any).
pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<ParsedManifest, ManifestError> {
    let content_type = content_type
        .map(|ct| ct.split(';').next().unwrap_or("").trim())
        .filter(|ct| !ct.is_empty());
    if matches!(content_type, Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED)) {
        return Err(ManifestError::Schema1);
    }
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
    if raw.schema_version == Some(1) {
        return Err(ManifestError::Schema1);
    }
    if raw.schema_version != Some(2) && raw.media_type.as_deref() != Some(OCI_ARTIFACT_MANIFEST) {
        return Err(ManifestError::SchemaVersion(raw.schema_version));
    }
    let media_type = match (content_type, raw.media_type.as_deref()) {
        (Some(header), Some(body)) if header != body => {
            return Err(ManifestError::MediaTypeMismatch {
                header: header.to_string(),
                body: body.to_string(),
            })
        }
        (Some(t), _) | (None, Some(t)) => t.to_string(),
        // No type anywhere: the OCI spec says an index has `manifests`, a manifest does not.
        (None, None) if raw.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) => OCI_MANIFEST.to_string(),
    };

    if is_index_type(&media_type) {
        let children = raw.manifests.ok_or(ManifestError::MissingManifests)?;
        return Ok(ParsedManifest {
            media_type,
            blobs: Vec::new(),
            children,
            subject: raw.subject,
            artifact_type: raw.artifact_type,
            annotations: raw.annotations,
        });
    }
    match media_type.as_str() {
        DOCKER_MANIFEST | OCI_MANIFEST => {
            let config = raw.config.ok_or(ManifestError::MissingConfig)?;
            let artifact_type = raw.artifact_type.or(Some(config.media_type.clone()));
            let mut blobs = vec![config];
            blobs.extend(raw.layers);
            Ok(ParsedManifest {
                media_type,
                blobs,
                children: Vec::new(),
                subject: raw.subject,
                artifact_type,
                annotations: raw.annotations,
            })
        }
        OCI_ARTIFACT_MANIFEST => Ok(ParsedManifest {
            media_type,
            blobs: raw.blobs,
            children: Vec::new(),
            subject: raw.subject,
            artifact_type: raw.artifact_type,
            annotations: raw.annotations,
        }),
        other => Err(ManifestError::UnknownMediaType(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn image(media_type: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media_type}",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":3}}]}}"#
        )
    }

    #[test]
    fn image_manifest_lists_config_and_layers() {
        let m = parse(Some(OCI_MANIFEST), image(OCI_MANIFEST).as_bytes()).unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
        let digests: Vec<String> = m.blobs.iter().map(|d| d.digest.to_string()).collect();
        assert_eq!(digests, [D1, D2]);
        assert!(m.children.is_empty());
        assert_eq!(m.config().unwrap().digest.to_string(), D1);
        assert_eq!(m.layers().len(), 1);
        assert_eq!(m.layers()[0].digest.to_string(), D2);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn docker_schema2_is_accepted_without_content_type() {
        let m = parse(None, image(DOCKER_MANIFEST).as_bytes()).unwrap();
        assert_eq!(m.media_type, DOCKER_MANIFEST);
        assert_eq!(m.blobs.len(), 2);
    }

    #[test]
    fn index_lists_children_and_subject() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","artifactType":"x/y",
            "manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":9,"platform":{{"os":"linux","architecture":"amd64"}}}}],
            "subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D2}","size":4}}}}"#
        );
        let m = parse(Some(OCI_INDEX), body.as_bytes()).unwrap();
        assert_eq!(m.children.len(), 1);
        assert_eq!(m.subject.as_ref().unwrap().digest.to_string(), D2);
        assert_eq!(m.artifact_type.as_deref(), Some("x/y"));
        assert!(m.config().is_none() && m.layers().is_empty());
    }

    #[test]
    fn rejects_bad_manifests() {
        assert!(matches!(
            parse(Some(OCI_MANIFEST), b"{not json"),
            Err(ManifestError::Json(_))
        ));
        assert!(matches!(
            parse(Some(DOCKER_SCHEMA1_SIGNED), b"{}"),
            Err(ManifestError::Schema1)
        ));
        assert!(matches!(
            parse(Some(OCI_INDEX), image(OCI_MANIFEST).as_bytes()),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        assert!(matches!(
            parse(Some(OCI_MANIFEST), br#"{"schemaVersion":2}"#),
            Err(ManifestError::MissingConfig)
        ));
        assert!(matches!(
            parse(Some("text/plain"), br#"{"schemaVersion":2}"#),
            Err(ManifestError::UnknownMediaType(_))
        ));
        let bad_digest = image(OCI_MANIFEST).replace(D2, "sha256:zz");
        assert!(matches!(
            parse(None, bad_digest.as_bytes()),
            Err(ManifestError::Json(_))
        ));
    }
}
