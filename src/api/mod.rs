//! The OCI distribution API: routing and one handler module per resource.
//!
//! `route` turns the path into a typed [`Route`]; [`handle`] picks the handler by route
//! and method; handlers return `Result<Response, ApiError>` and never log or touch
//! files: storage rules live in [`crate::store::Registry`].

mod blobs;
mod catalog;
pub mod errors;
mod manifests;
mod pagination;
pub mod range;
mod referrers;
pub mod response;
pub mod route;
mod tags;
mod uploads;

pub use errors::{ApiError, ErrorCode};
pub use response::{Body, Request, Response};
pub use route::Route;

use crate::store::{ByteSource, Registry};

/// Answers one request. Every failure becomes an OCI error response here.
pub async fn handle(registry: &Registry, req: &Request, body: &mut dyn ByteSource) -> Response {
    let result = match route::parse(&req.path) {
        Ok(route) => dispatch(registry, req, &route, body).await,
        Err(e) => Err(e),
    };
    result
        .unwrap_or_else(ApiError::into_response)
        .header("Docker-Distribution-API-Version", "registry/2.0")
}

async fn dispatch(
    registry: &Registry,
    req: &Request,
    route: &Route,
    body: &mut dyn ByteSource,
) -> Result<Response, ApiError> {
    let r = registry;
    match (route, req.method.as_str()) {
        (Route::Base, "GET" | "HEAD") => {
            Ok(Response::new(200).json(&serde_json::json!({}), "application/json", req.is_head()))
        }
        (Route::Catalog, "GET") => catalog::list(r, req).await,
        (Route::Tags(name), "GET") => tags::list(r, req, name).await,
        (Route::Manifest(name, reference), "GET" | "HEAD") => {
            manifests::get(r, req, name, reference).await
        }
        (Route::Manifest(name, reference), "PUT") => {
            manifests::put(r, req, name, reference, body).await
        }
        (Route::Manifest(name, reference), "DELETE") => manifests::delete(r, name, reference).await,
        (Route::Blob(name, digest), "GET" | "HEAD") => blobs::get(r, req, name, digest).await,
        (Route::Blob(name, digest), "DELETE") => blobs::delete(r, name, digest).await,
        (Route::UploadStart(name), "POST") => uploads::start(r, req, name, body).await,
        (Route::Upload(name, id), "GET") => uploads::status(r, name, id).await,
        (Route::Upload(name, id), "PATCH") => uploads::patch(r, req, name, id, body).await,
        (Route::Upload(name, id), "PUT") => uploads::finish(r, req, name, id, body).await,
        (Route::Upload(name, id), "DELETE") => uploads::cancel(r, name, id).await,
        (Route::Referrers(name, digest), "GET") => referrers::list(r, req, name, digest).await,
        (_, method) => Err(ApiError::new(
            ErrorCode::Unsupported,
            format!("{method} is not supported on {}", req.path),
        )),
    }
}
