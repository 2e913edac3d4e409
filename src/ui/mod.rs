//! The web UI under `/ui/`: server-rendered pages with embedded CSS and JS.

use crate::api::{Api, ApiError, ErrorCode, Request, Response};
use crate::store::ByteSource;
use std::net::IpAddr;

pub async fn answer(
    _api: &Api,
    req: &Request,
    _client: Option<IpAddr>,
    _body: &mut dyn ByteSource,
) -> Result<Response, ApiError> {
    Err(ApiError::new(
        ErrorCode::NoSuchEndpoint,
        format!("no such endpoint: {}", req.path),
    ))
}
