//! The control API under `/_control/` on the registry listener: the request log and
//! the fault rules. Never logged, never authenticated, never faulted.
//!
//! * `GET requests`: the request log, a JSON array in arrival order
//! * `POST reset`: empty the log and refill the rate limit
//! * `GET faults`, `POST faults` (append a rule or an array of rules), `DELETE faults`
//! * `POST revoke-tokens`: every token issued so far stops working (a token that
//!   expires before the client expected it)
//! * `GET health`: 200 once the hub serves

use super::http::{Request, Response};
use super::{lock, Hub, RATE_LIMIT};
use serde_json::json;
use std::sync::atomic::Ordering;

impl Hub {
    pub(super) fn control(&self, request: &Request, what: &str) -> Response {
        match (request.method.as_str(), what) {
            ("GET" | "HEAD", "health") => Response::new(200).json(&json!({"status": "ok"})),
            ("GET" | "HEAD", "requests") => {
                let log = lock(&self.log);
                match serde_json::to_value(&*log) {
                    Ok(entries) => Response::new(200).json(&entries),
                    Err(e) => control_error(500, &format!("cannot serialize the log: {e}")),
                }
            }
            // A fresh start for the next test step: empty log, full rate limit.
            ("POST", "reset") => {
                lock(&self.log).clear();
                self.rate_remaining.store(RATE_LIMIT, Ordering::Relaxed);
                Response::new(200).json(&json!({}))
            }
            ("POST", "revoke-tokens") => {
                self.tokens.revoke_all();
                Response::new(200).json(&json!({}))
            }
            ("GET" | "HEAD", "faults") => {
                let faults = lock(&self.faults);
                Response::new(200).json(&json!(faults.rules()))
            }
            ("POST", "faults") => {
                let rules = match serde_json::from_slice::<serde_json::Value>(&request.body) {
                    Ok(rules) => rules,
                    Err(e) => return control_error(400, &format!("body is not JSON: {e}")),
                };
                let mut faults = lock(&self.faults);
                match faults.add_json(&rules) {
                    Ok(added) => Response::new(200)
                        .json(&json!({"added": added, "rules": faults.rules().len()})),
                    Err(e) => control_error(400, &e),
                }
            }
            ("DELETE", "faults") => {
                lock(&self.faults).clear();
                Response::new(200).json(&json!({}))
            }
            (_, "health" | "requests" | "reset" | "faults" | "revoke-tokens") => {
                control_error(405, &format!("{} is not allowed here", request.method))
            }
            _ => control_error(404, &format!("no control endpoint {what:?}")),
        }
    }
}

fn control_error(status: u16, message: &str) -> Response {
    Response::new(status).json(&json!({"error": message}))
}
