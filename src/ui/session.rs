//! Web UI sign-ins: a random id in the `portcullis_session` cookie names a session
//! kept in memory, which holds the user, the CSRF token its forms carry and the
//! notices waiting to be shown after a redirect.
//!
//! Nothing about the user is in the cookie, so there is nothing to sign or forge, and
//! signing out (or a restart) ends a session for good. Sessions end after
//! [`IDLE_TIMEOUT`] without a request; the cache is bounded, so signing in again and
//! again cannot use up memory.

use base64::Engine as _;
use moka::sync::Cache;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq as _;

pub const COOKIE_NAME: &str = "portcullis_session";
/// A session unused this long is forgotten.
const IDLE_TIMEOUT: Duration = Duration::from_secs(12 * 60 * 60);
/// Sessions kept at most; the least used go first beyond it.
const CAPACITY: u64 = 10_000;

/// 32 random bytes from the operating system, base64url: an id or token nobody guesses.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A message for the next page shown, after a form's redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub kind: NoticeKind,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    Done,
    Failed,
}

/// One signed-in browser.
pub struct Session {
    pub user: Arc<str>,
    /// Carried by every form of this session and checked on every POST.
    csrf: String,
    notices: Mutex<Vec<Notice>>,
}

impl Session {
    pub fn csrf_token(&self) -> &str {
        &self.csrf
    }

    /// Whether a form carried this session's token; in constant time, so the answer's
    /// timing says nothing about how much of a guess was right.
    pub fn csrf_matches(&self, given: &str) -> bool {
        bool::from(self.csrf.as_bytes().ct_eq(given.as_bytes()))
    }

    pub fn notify(&self, kind: NoticeKind, text: impl Into<String>) {
        self.notices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Notice {
                kind,
                text: text.into(),
            });
    }

    /// The waiting notices; each is shown once.
    pub fn take_notices(&self) -> Vec<Notice> {
        std::mem::take(&mut *self.notices.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

pub struct Sessions {
    by_id: Cache<String, Arc<Session>>,
}

impl Default for Sessions {
    fn default() -> Sessions {
        Sessions {
            by_id: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_idle(IDLE_TIMEOUT)
                .build(),
        }
    }
}

impl Sessions {
    /// A new session for `user`, under a fresh id (never one the browser had before,
    /// so an id planted before sign-in is worthless after it).
    pub fn start(&self, user: Arc<str>) -> (String, Arc<Session>) {
        let id = random_token();
        let session = Arc::new(Session {
            user,
            csrf: random_token(),
            notices: Mutex::new(Vec::new()),
        });
        self.by_id.insert(id.clone(), session.clone());
        (id, session)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.by_id.get(id)
    }

    pub fn end(&self, id: &str) {
        self.by_id.invalidate(id);
    }
}

/// `Set-Cookie` for a session id: not readable by scripts, never sent with requests
/// that other sites start, and over TLS only when it was set over TLS.
pub fn session_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE_NAME}={id}; Path=/; HttpOnly; SameSite=Strict{secure}")
}

/// `Set-Cookie` that makes the browser forget its session id.
pub fn cleared_cookie(secure: bool) -> String {
    format!("{}; Max-Age=0", session_cookie("", secure))
}

/// The value of cookie `name` in the `Cookie` headers (HTTP/2 may send several).
pub fn cookie_value<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_http_only_strict_and_secure_over_tls() {
        assert_eq!(
            session_cookie("abc", false),
            "portcullis_session=abc; Path=/; HttpOnly; SameSite=Strict"
        );
        assert_eq!(
            session_cookie("abc", true),
            "portcullis_session=abc; Path=/; HttpOnly; SameSite=Strict; Secure"
        );
        assert_eq!(
            cleared_cookie(true),
            "portcullis_session=; Path=/; HttpOnly; SameSite=Strict; Secure; Max-Age=0"
        );
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = http::HeaderMap::new();
        headers.append(
            "cookie",
            "theme=dark; portcullis_sessionx=no".parse().unwrap(),
        );
        assert_eq!(cookie_value(&headers, COOKIE_NAME), None);
        headers.append(
            "cookie",
            "a=1;portcullis_session=\"id-1\" ; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_value(&headers, COOKIE_NAME), Some("id-1"));
        assert_eq!(cookie_value(&headers, "b"), Some("2"));
        assert_eq!(cookie_value(&http::HeaderMap::new(), COOKIE_NAME), None);
    }

    #[test]
    fn sessions_have_fresh_ids_and_tokens_and_end() {
        let sessions = Sessions::default();
        let (id, session) = sessions.start(Arc::from("alice"));
        let (other_id, other) = sessions.start(Arc::from("alice"));
        assert_ne!(id, other_id);
        assert_ne!(session.csrf_token(), other.csrf_token());
        assert_eq!(id.len(), 43, "32 bytes, base64url");
        assert_eq!(&*sessions.get(&id).unwrap().user, "alice");
        sessions.end(&id);
        assert!(sessions.get(&id).is_none());
        assert!(sessions.get(&other_id).is_some());
    }

    #[test]
    fn the_csrf_token_must_match_exactly() {
        let (_, session) = Sessions::default().start(Arc::from("alice"));
        let token = session.csrf_token().to_string();
        assert!(session.csrf_matches(&token));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches(&token[..token.len() - 1]));
        assert!(!session.csrf_matches(&format!("{token}x")));
        let (_, other) = Sessions::default().start(Arc::from("alice"));
        assert!(!session.csrf_matches(other.csrf_token()));
    }

    #[test]
    fn notices_are_shown_once() {
        let (_, session) = Sessions::default().start(Arc::from("alice"));
        session.notify(NoticeKind::Done, "team web created");
        assert_eq!(session.take_notices().len(), 1);
        assert!(session.take_notices().is_empty());
    }
}
