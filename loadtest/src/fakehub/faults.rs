//! Fault rules: what a test asks the fake hub to do wrong, and which requests it hits.
//!
//! Pure data and matching; the server turns a chosen [`FaultKind`] into behaviour.
//! Rules come from `POST /_control/faults` as a JSON array of objects such as
//! `{"kind":"truncate","after_bytes":100,"target":"blob","times":1}`.

use super::http::Shaping;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a rule does to the response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultKind {
    /// Answer this status with an OCI error body.
    Status { status: u16 },
    /// 429 with `Retry-After` and an exhausted rate limit.
    RateLimit { retry_after_secs: u64 },
    /// Wait before the response head, then answer normally.
    SlowFirstByte { delay_ms: u64 },
    /// Announce the full length, send this many body bytes, then close cleanly.
    Truncate { after_bytes: u64 },
    /// Announce the full length, send this many body bytes, then reset the connection.
    Reset { after_bytes: u64 },
    /// The full length with some bytes changed.
    WrongBytes,
    /// Read the request and never answer.
    Stall,
    /// Throttle the body to this rate.
    SlowBody { bytes_per_sec: u64 },
    /// Close the connection right after reading the request.
    Drop,
}

impl FaultKind {
    /// The name used in rules and in the request log.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Status { .. } => "status",
            FaultKind::RateLimit { .. } => "rate_limit",
            FaultKind::SlowFirstByte { .. } => "slow_first_byte",
            FaultKind::Truncate { .. } => "truncate",
            FaultKind::Reset { .. } => "reset",
            FaultKind::WrongBytes => "wrong_bytes",
            FaultKind::Stall => "stall",
            FaultKind::SlowBody { .. } => "slow_body",
            FaultKind::Drop => "drop",
        }
    }

    /// How the (otherwise normal) response is sent under this fault.
    pub fn shaping(&self) -> Shaping {
        let mut shaping = Shaping::default();
        match *self {
            FaultKind::SlowFirstByte { delay_ms } => {
                shaping.head_delay = Some(Duration::from_millis(delay_ms));
            }
            FaultKind::Truncate { after_bytes } | FaultKind::Reset { after_bytes } => {
                shaping.body_limit = Some(after_bytes);
            }
            FaultKind::WrongBytes => shaping.corrupt = true,
            FaultKind::SlowBody { bytes_per_sec } => shaping.bytes_per_sec = Some(bytes_per_sec),
            FaultKind::Status { .. }
            | FaultKind::RateLimit { .. }
            | FaultKind::Stall
            | FaultKind::Drop => {}
        }
        shaping
    }

    fn validate(&self) -> Result<(), String> {
        match *self {
            FaultKind::Status { status } if !(400..=599).contains(&status) => Err(format!(
                "status {status}: a status fault needs an error status (400 to 599)"
            )),
            FaultKind::SlowBody { bytes_per_sec: 0 } => {
                Err("slow_body: bytes_per_sec must be at least 1".to_string())
            }
            _ => Ok(()),
        }
    }
}

/// Which requests a rule may hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// `/v2/<name>/manifests/<reference>`
    Manifest,
    /// `/v2/<name>/blobs/<digest>` on the registry listener
    Blob,
    /// Anything on the CDN listener
    Cdn,
    /// `/v2/<name>/tags/list`
    Tags,
    /// The token endpoint
    Token,
    /// `/v2/` itself
    Base,
    /// Every request (but never the control API)
    Any,
}

/// A request as the rules see it.
pub struct Subject<'a> {
    /// What the request is for; `None` for requests no route knows (only `any` hits them).
    pub target: Option<Target>,
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
}

/// One rule: a fault, the requests it hits, and how often.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultRule {
    #[serde(flatten)]
    pub kind: FaultKind,
    pub target: Target,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_contains: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// How many more requests it hits; `None`: until the rules are cleared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub times: Option<u64>,
}

impl FaultRule {
    /// Parses one rule object; unknown fields are errors, so a typo cannot pass silently.
    pub fn from_json(value: &serde_json::Value) -> Result<FaultRule, String> {
        let serde_json::Value::Object(fields) = value else {
            return Err(format!("a fault rule must be a JSON object, got {value}"));
        };
        let mut rest = fields.clone();
        let mut take = |name: &str| rest.remove(name).filter(|v| !v.is_null());
        let target = take("target").ok_or("a fault rule needs a \"target\"")?;
        let target: Target = serde_json::from_value(target.clone()).map_err(|_| {
            format!(
                "unknown target {target}: expected manifest, blob, cdn, tags, token, base or any"
            )
        })?;
        let text = |name: &str, v: Option<serde_json::Value>| -> Result<Option<String>, String> {
            v.map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{name} must be a string, got {v}"))
            })
            .transpose()
        };
        let path_contains = text("path_contains", take("path_contains"))?;
        let method = text("method", take("method"))?.map(|m| m.to_ascii_uppercase());
        let times = take("times")
            .map(|v| {
                v.as_u64()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("times must be a whole number of at least 1, got {v}"))
            })
            .transpose()?;
        let kind: FaultKind = serde_json::from_value(serde_json::Value::Object(rest))
            .map_err(|e| format!("invalid fault {value}: {e}"))?;
        kind.validate()?;
        Ok(FaultRule {
            kind,
            target,
            path_contains,
            method,
            times,
        })
    }

    fn matches(&self, subject: &Subject) -> bool {
        let target_ok = self.target == Target::Any || subject.target == Some(self.target);
        let method_ok = self
            .method
            .as_ref()
            .is_none_or(|m| m.eq_ignore_ascii_case(subject.method));
        let path_ok = self
            .path_contains
            .as_ref()
            .is_none_or(|p| subject.path.contains(p.as_str()));
        target_ok && method_ok && path_ok
    }
}

/// The rules in force, in the order they were added.
#[derive(Debug, Default)]
pub struct FaultRules {
    rules: Vec<FaultRule>,
}

impl FaultRules {
    /// Parses a JSON array of rules (or a single rule) and appends them all, or none.
    pub fn add_json(&mut self, value: &serde_json::Value) -> Result<usize, String> {
        let parsed = match value {
            serde_json::Value::Array(items) => items
                .iter()
                .map(FaultRule::from_json)
                .collect::<Result<Vec<_>, _>>()?,
            single => vec![FaultRule::from_json(single)?],
        };
        let added = parsed.len();
        self.rules.extend(parsed);
        Ok(added)
    }

    pub fn clear(&mut self) {
        self.rules.clear();
    }

    pub fn rules(&self) -> &[FaultRule] {
        &self.rules
    }

    /// The fault for this request: the first matching rule's, which uses up one of its
    /// `times` (a rule used up is removed).
    pub fn take(&mut self, subject: &Subject) -> Option<FaultKind> {
        let index = self.rules.iter().position(|r| r.matches(subject))?;
        let rule = &mut self.rules[index];
        let kind = rule.kind.clone();
        if let Some(times) = rule.times.as_mut() {
            *times -= 1;
            if *times == 0 {
                self.rules.remove(index);
            }
        }
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn subject<'a>(target: Option<Target>, method: &'a str, path: &'a str) -> Subject<'a> {
        Subject {
            target,
            method,
            path,
        }
    }

    #[test]
    fn parses_every_kind() {
        let mut rules = FaultRules::default();
        let added = rules
            .add_json(&json!([
                {"kind": "status", "status": 503, "target": "manifest"},
                {"kind": "rate_limit", "retry_after_secs": 7, "target": "any"},
                {"kind": "slow_first_byte", "delay_ms": 5, "target": "cdn"},
                {"kind": "truncate", "after_bytes": 10, "target": "cdn", "times": 2},
                {"kind": "reset", "after_bytes": 0, "target": "blob"},
                {"kind": "wrong_bytes", "target": "cdn", "path_contains": "abc"},
                {"kind": "stall", "target": "token", "method": "get"},
                {"kind": "slow_body", "bytes_per_sec": 100, "target": "tags"},
                {"kind": "drop", "target": "base", "times": null},
            ]))
            .unwrap();
        assert_eq!(added, 9);
        assert_eq!(rules.rules()[3].times, Some(2));
        assert_eq!(rules.rules()[6].method.as_deref(), Some("GET"));
        assert_eq!(
            rules.rules()[0].kind.shaping().body_limit,
            None,
            "status faults replace the response instead of shaping it"
        );
        assert_eq!(rules.rules()[3].kind.shaping().body_limit, Some(10));
        let listed = serde_json::to_value(&rules.rules()[3]).unwrap();
        assert_eq!(
            listed,
            json!({"kind": "truncate", "after_bytes": 10, "target": "cdn", "times": 2})
        );
    }

    #[test]
    fn rejects_bad_rules_whole() {
        let mut rules = FaultRules::default();
        for bad in [
            json!({"kind": "status", "target": "manifest"}),
            json!({"kind": "status", "status": 200, "target": "manifest"}),
            json!({"kind": "truncate", "after_byte": 3, "target": "cdn"}),
            json!({"kind": "explode", "target": "cdn"}),
            json!({"kind": "drop"}),
            json!({"kind": "drop", "target": "everything"}),
            json!({"kind": "drop", "target": "any", "times": 0}),
            json!({"kind": "drop", "target": "any", "times": -1}),
            json!({"kind": "drop", "target": "any", "method": 5}),
            json!({"kind": "slow_body", "bytes_per_sec": 0, "target": "any"}),
            json!([{"kind": "drop", "target": "any"}, "drop"]),
        ] {
            assert!(rules.add_json(&bad).is_err(), "{bad}");
        }
        assert!(rules.rules().is_empty(), "a bad list adds nothing");
    }

    #[test]
    fn first_match_wins_and_times_run_out() {
        let mut rules = FaultRules::default();
        rules
            .add_json(&json!([
                {"kind": "drop", "target": "blob", "path_contains": "/lib/", "method": "GET", "times": 1},
                {"kind": "stall", "target": "blob", "times": 2},
                {"kind": "status", "status": 500, "target": "any"},
            ]))
            .unwrap();
        let blob_get = subject(Some(Target::Blob), "GET", "/v2/lib/x/blobs/sha256:1");
        let blob_head = subject(Some(Target::Blob), "HEAD", "/v2/lib/x/blobs/sha256:1");
        let unrouted = subject(None, "GET", "/favicon.ico");
        assert_eq!(rules.take(&blob_head), Some(FaultKind::Stall));
        assert_eq!(rules.take(&blob_get), Some(FaultKind::Drop));
        assert_eq!(
            rules.take(&blob_get),
            Some(FaultKind::Stall),
            "drop used up"
        );
        assert_eq!(
            rules.take(&blob_get),
            Some(FaultKind::Status { status: 500 })
        );
        assert_eq!(rules.rules().len(), 1);
        assert_eq!(
            rules.take(&unrouted),
            Some(FaultKind::Status { status: 500 })
        );
        rules.clear();
        assert_eq!(rules.take(&blob_get), None);
    }

    #[test]
    fn targets_do_not_cross() {
        let mut rules = FaultRules::default();
        rules
            .add_json(&json!({"kind": "drop", "target": "manifest"}))
            .unwrap();
        assert_eq!(
            rules.take(&subject(Some(Target::Cdn), "GET", "/blobs/sha256/ab")),
            None
        );
        assert_eq!(rules.take(&subject(None, "GET", "/manifests")), None);
        assert_eq!(
            rules.take(&subject(
                Some(Target::Manifest),
                "HEAD",
                "/v2/a/manifests/b"
            )),
            Some(FaultKind::Drop)
        );
    }
}
