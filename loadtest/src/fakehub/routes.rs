//! Which endpoint a request path names (pure; the handlers live in `registry`).

use super::faults::Target;

/// An endpoint of the registry listener.
#[derive(Debug, PartialEq, Eq)]
pub enum RegistryRoute<'a> {
    /// `/v2/`
    Base,
    Manifest {
        name: &'a str,
        reference: &'a str,
    },
    Blob {
        name: &'a str,
        digest: &'a str,
    },
    Tags {
        name: &'a str,
    },
    /// `/token`, the token realm
    Token,
    /// `/_control/<what>`
    Control(&'a str),
    Unknown,
}

impl RegistryRoute<'_> {
    /// The repository a `/v2/` route is about.
    pub fn repository(&self) -> Option<&str> {
        match self {
            RegistryRoute::Manifest { name, .. }
            | RegistryRoute::Blob { name, .. }
            | RegistryRoute::Tags { name } => Some(name),
            _ => None,
        }
    }

    /// The fault target this route belongs to (`None`: only `any` rules hit it).
    pub fn fault_target(&self) -> Option<Target> {
        match self {
            RegistryRoute::Base => Some(Target::Base),
            RegistryRoute::Manifest { .. } => Some(Target::Manifest),
            RegistryRoute::Blob { .. } => Some(Target::Blob),
            RegistryRoute::Tags { .. } => Some(Target::Tags),
            RegistryRoute::Token => Some(Target::Token),
            RegistryRoute::Control(_) | RegistryRoute::Unknown => None,
        }
    }
}

/// Routes a registry path (without query). Repository names contain slashes, so the
/// endpoint is recognised from the end of the path.
pub fn registry_route(path: &str) -> RegistryRoute<'_> {
    if path == "/token" {
        return RegistryRoute::Token;
    }
    if let Some(what) = path.strip_prefix("/_control/") {
        return RegistryRoute::Control(what);
    }
    let Some(rest) = path
        .strip_prefix("/v2/")
        .or_else(|| (path == "/v2").then_some(""))
    else {
        return RegistryRoute::Unknown;
    };
    if rest.is_empty() {
        return RegistryRoute::Base;
    }
    if let Some(name) = rest.strip_suffix("/tags/list").filter(|n| !n.is_empty()) {
        return RegistryRoute::Tags { name };
    }
    let Some((before, last)) = rest.rsplit_once('/') else {
        return RegistryRoute::Unknown;
    };
    match before.rsplit_once('/') {
        Some((name, "manifests")) if !name.is_empty() && !last.is_empty() => {
            RegistryRoute::Manifest {
                name,
                reference: last,
            }
        }
        Some((name, "blobs")) if !name.is_empty() && !last.is_empty() => {
            RegistryRoute::Blob { name, digest: last }
        }
        _ => RegistryRoute::Unknown,
    }
}

/// The hex digest a CDN path `/blobs/sha256/<hex>` names.
pub fn cdn_route(path: &str) -> Option<&str> {
    path.strip_prefix("/blobs/sha256/")
        .filter(|hex| !hex.is_empty() && !hex.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use RegistryRoute::*;

    #[test]
    fn registry_paths() {
        assert_eq!(registry_route("/v2/"), Base);
        assert_eq!(registry_route("/v2"), Base);
        assert_eq!(registry_route("/token"), Token);
        assert_eq!(registry_route("/_control/requests"), Control("requests"));
        assert_eq!(
            registry_route("/v2/library/alpine/manifests/3.20"),
            Manifest {
                name: "library/alpine",
                reference: "3.20"
            }
        );
        assert_eq!(
            registry_route("/v2/a/b/c/blobs/sha256:00"),
            Blob {
                name: "a/b/c",
                digest: "sha256:00"
            }
        );
        assert_eq!(
            registry_route("/v2/a/manifests/tags/list"),
            Tags {
                name: "a/manifests"
            }
        );
        assert_eq!(
            registry_route("/v2/blobs/manifests/x"),
            Manifest {
                name: "blobs",
                reference: "x"
            }
        );
        for unknown in [
            "/",
            "/v2x",
            "/v2/alpine",
            "/v2/manifests/x",
            "/v2/a/manifests/",
            "/v2//blobs/x",
            "/v2/tags/list",
            "/v2/a/uploads/x",
            "/tokens",
        ] {
            assert_eq!(registry_route(unknown), Unknown, "{unknown}");
        }
        assert_eq!(registry_route("/v2/a/tags/list").repository(), Some("a"));
        assert_eq!(Base.fault_target(), Some(Target::Base));
        assert_eq!(Control("health").fault_target(), None);
    }

    #[test]
    fn cdn_paths() {
        assert_eq!(cdn_route("/blobs/sha256/abc"), Some("abc"));
        assert_eq!(cdn_route("/blobs/sha256/"), None);
        assert_eq!(cdn_route("/blobs/sha256/a/b"), None);
        assert_eq!(cdn_route("/other"), None);
    }
}
