//! `/admin/gc`: `POST` runs a garbage collection now and answers with its report;
//! `GET` answers with the last report. Query: `dry_run`, `delete_untagged`
//! (`true`/`false`) and `grace` (a duration such as `30m`), as `portcullis gc` takes them.

use super::route::{query_pairs, query_value};
use super::{ApiError, Body, ErrorCode, Request, Response};
use crate::gc::{Collector, RunOptions};

fn flag(pairs: &[(String, String)], key: &str) -> Result<Option<bool>, ApiError> {
    match query_value(pairs, key) {
        None => Ok(None),
        Some("" | "1" | "true") => Ok(Some(true)),
        Some("0" | "false") => Ok(Some(false)),
        Some(other) => Err(ApiError::new(
            ErrorCode::ParameterInvalid,
            format!("{key}={other:?}: write {key}=true or {key}=false"),
        )),
    }
}

/// The options a query asks for.
fn options(query: Option<&str>) -> Result<RunOptions, ApiError> {
    let pairs = query_pairs(query);
    let grace = query_value(&pairs, "grace")
        .map(|text| {
            humantime::parse_duration(text).map_err(|e| {
                ApiError::new(
                    ErrorCode::ParameterInvalid,
                    format!("grace={text:?}: {e}; write a duration such as 30m or 2h"),
                )
            })
        })
        .transpose()?;
    Ok(RunOptions {
        dry_run: flag(&pairs, "dry_run")?.unwrap_or(false),
        delete_untagged: flag(&pairs, "delete_untagged")?,
        grace,
        show_progress: false,
    })
}

pub async fn gc(collector: &Collector, req: &Request) -> Result<Response, ApiError> {
    let report = if req.method == http::Method::POST {
        let options = options(req.query.as_deref())?;
        let report = collector.run(&options).await?;
        tracing::info!(reason = "admin request", "{}", report.summary());
        Some(report)
    } else {
        collector.last_report()
    };
    // Straight to bytes: a report can list tens of thousands of digests.
    let bytes = serde_json::to_vec(&report).unwrap_or_default();
    Ok(Response::new(200)
        .header("Content-Type", "application/json")
        .body(Body::Bytes(bytes.into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_come_from_the_query() {
        let o = options(Some("dry_run=1&delete_untagged=false&grace=90s")).unwrap();
        assert!(o.dry_run);
        assert_eq!(o.delete_untagged, Some(false));
        assert_eq!(o.grace, Some(std::time::Duration::from_secs(90)));
        let o = options(None).unwrap();
        assert!(!o.dry_run && o.delete_untagged.is_none() && o.grace.is_none());
        for bad in ["dry_run=maybe", "grace=soon"] {
            let e = options(Some(bad)).unwrap_err();
            assert_eq!(e.code, ErrorCode::ParameterInvalid, "{bad}");
        }
    }
}
