//! OCI vocabulary with no I/O: digests, repository names and tags, manifest parsing.
//!
//! Everything a request carries is parsed into these strict newtypes before it touches
//! a path or the metadata store. Errors here are prose; `api::errors` maps them to
//! OCI error codes.

pub mod digest;
pub mod manifest;
pub mod name;

pub use digest::{Digest, DigestError};
pub use name::{Reference, RepoName, Tag};
