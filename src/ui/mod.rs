//! The web UI under `/ui/`: server-rendered pages (maud) with embedded CSS and a
//! little JS, for what the REST API offers.
//!
//! Every request goes through [`answer`]: assets are served as they are; everything
//! else is a page with the security headers of `guard.rs`. A POST must come from this
//! site, and (except the sign-in form) from a signed-in session whose CSRF token it
//! carries; only then is it dispatched. Pages ask [`crate::manage::Manager`] for what
//! they show and do, as the signed-in user, so the UI can do nothing the REST API
//! would refuse. Forms answer with a redirect and a notice (post/redirect/get), except
//! those that create a secret: its page is shown once, in the answer to the POST.

mod activity;
mod admin;
mod assets;
mod form;
mod guard;
mod layout;
mod namespaces;
mod repositories;
mod session;
mod signin;
mod teams;
mod tokens;

pub use session::Sessions;

use crate::api::{Api, ApiError, Request, Response};
use crate::auth::Principal;
use crate::manage::{ManageError, Manager};
use crate::store::ByteSource;
use form::Fields;
use layout::{Frame, Section};
use maud::{html, Markup};
use session::NoticeKind;
use session::{Session, COOKIE_NAME};
use std::net::IpAddr;
use std::sync::Arc;

/// Forms are small; anything larger is not one of ours.
const FORM_LIMIT: usize = 64 * 1024;

pub async fn answer(
    api: &Api,
    req: &Request,
    client: Option<IpAddr>,
    body: &mut dyn ByteSource,
) -> Result<Response, ApiError> {
    let read = matches!(req.method, http::Method::GET | http::Method::HEAD);
    let response = match assets::serve(&req.path).filter(|_| read) {
        Some(asset) => asset,
        None => {
            let visit = Visit::new(api, req, client);
            visit.respond(body).await.unwrap_or_else(|r| r.page(&visit))
        }
    };
    Ok(guard::with_security_headers(response))
}

/// Why a page cannot be shown: the status, and a sentence that says what to do.
pub struct Refusal {
    status: u16,
    message: String,
}

impl Refusal {
    fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }

    fn not_found(req: &Request) -> Refusal {
        Refusal::new(404, format!("There is no page at {}.", req.path))
    }

    fn page(self, visit: &Visit) -> Response {
        let title = match self.status {
            400 => "Not understood",
            401 => "Sign-in failed",
            403 => "Not allowed",
            404 => "Not found",
            409 => "Conflict",
            405 => "Not supported",
            413 => "Too large",
            429 => "Too many attempts",
            _ => "Something went wrong",
        };
        let content = html! {
            p { (self.message) }
            p { a href="/ui/" { "Back to the start page" } }
        };
        layout::html_response(self.status, visit.frame().page(None, title, content))
    }
}

impl From<ManageError> for Refusal {
    fn from(e: ManageError) -> Refusal {
        Refusal::new(e.status(), capitalized(&e.to_string()))
    }
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Refusal {
        Refusal::new(e.code.status(), e.detail)
    }
}

type Answer = Result<Response, Refusal>;

/// `303 See Other`: after a form, and to send a browser elsewhere.
fn see_other(location: &str) -> Response {
    Response::new(303)
        .header("Location", location.to_string())
        .header("Cache-Control", "no-store")
}

/// Messages from the manage layer are sentences without their first capital.
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// One request to the UI, with its session when signed in.
pub struct Visit<'a> {
    api: &'a Api,
    req: &'a Request,
    client: Option<IpAddr>,
    /// The cookie's session id and the session.
    session: Option<(String, Arc<Session>)>,
}

impl<'a> Visit<'a> {
    /// Looks up the session; one whose user has since been removed ends here.
    fn new(api: &'a Api, req: &'a Request, client: Option<IpAddr>) -> Visit<'a> {
        let session = session::cookie_value(&req.headers, COOKIE_NAME).and_then(|id| {
            let session = api.sessions.get(id)?;
            if !api.auth.still_valid(&Principal::User(session.user.clone())) {
                api.sessions.end(id);
                return None;
            }
            crate::metrics::note(|n| n.user = Some(session.user.clone()));
            Some((id.to_string(), session))
        });
        Visit {
            api,
            req,
            client,
            session,
        }
    }

    fn principal(&self) -> Principal {
        match &self.session {
            Some((_, session)) => Principal::User(session.user.clone()),
            None => Principal::Anonymous,
        }
    }

    /// The frame for this visit's pages; takes the session's waiting notices.
    fn frame(&self) -> Frame {
        match &self.session {
            Some((_, session)) => Frame {
                user: Some(session.user.clone()),
                admin: self.api.policy.allows_admin(&self.principal()),
                csrf: Some(session.csrf_token().to_string()),
                notices: session.take_notices(),
            },
            None => Frame::signed_out(),
        }
    }

    /// Pages other than sign-in need a signed-in user, unless this registry has no
    /// sign-in at all: then everyone looks as an anonymous client would (read-only,
    /// since forms need a session).
    fn needs_sign_in(&self) -> bool {
        self.session.is_none() && self.api.auth.enabled()
    }

    async fn respond(&self, body: &mut dyn ByteSource) -> Answer {
        let path = self.req.path.as_str();
        // Every POST but the sign-in form is refused here without a session.
        let fields = match self.req.method {
            http::Method::POST => Some(self.checked_form(body).await?),
            http::Method::GET | http::Method::HEAD => None,
            _ => return Err(Refusal::new(405, "The web UI answers GET and POST only.")),
        };
        match (path, fields) {
            ("/" | "/ui", None) => Ok(see_other("/ui/")),
            ("/ui/login", None) => signin::form(self),
            ("/ui/login", Some(fields)) => signin::sign_in(self, &fields).await,
            ("/ui/logout", Some(_)) => Ok(signin::sign_out(self)),
            (_, None) if self.needs_sign_in() => Ok(see_other(&signin::login_url(self.req))),
            (_, fields) => self.page(path, fields).await,
        }
    }

    /// The pages behind sign-in, by path and method (GET: no fields).
    async fn page(&self, path: &str, fields: Option<Fields>) -> Answer {
        let Some(rest) = path.strip_prefix("/ui/") else {
            return Err(Refusal::not_found(self.req));
        };
        let segments: Vec<&str> = rest.split('/').collect();
        match (segments.as_slice(), fields) {
            ([""] | ["repositories"], None) => repositories::list(self).await,
            (["repositories", ..], fields) => {
                let rest = &rest["repositories/".len()..];
                repositories::repository(self, rest, fields).await
            }
            (["namespaces"], None) => namespaces::list(self),
            (["namespaces"], Some(f)) => namespaces::create(self, &f).await,
            (["namespaces", ns], None) => namespaces::show(self, ns),
            (["namespaces", ns, "visibility"], Some(f)) => {
                namespaces::set_visibility(self, ns, &f).await
            }
            (["namespaces", ns, "remove"], Some(_)) => namespaces::remove(self, ns).await,
            (["namespaces", ns, "robots"], Some(f)) => namespaces::add_robot(self, ns, &f).await,
            (["namespaces", ns, "robots", login, "remove"], Some(_)) => {
                namespaces::remove_robot(self, ns, login).await
            }
            (["teams"], None) => teams::list(self),
            (["teams"], Some(f)) => teams::create(self, &f).await,
            (["teams", team], None) => teams::show(self, team),
            (["teams", team, "remove"], Some(_)) => teams::remove(self, team).await,
            (["teams", team, "members"], Some(f)) => teams::set_member(self, team, &f).await,
            (["teams", team, "members", user, "remove"], Some(_)) => {
                teams::remove_member(self, team, user).await
            }
            (["tokens"], None) => tokens::list(self),
            (["tokens"], Some(f)) => tokens::create(self, &f).await,
            (["tokens", id, "revoke"], Some(_)) => tokens::revoke(self, id).await,
            (["activity"], None) => activity::list(self).await,
            (["admin", "users"], None) => admin::users(self),
            (["admin", "users"], Some(f)) => admin::add_user(self, &f).await,
            (["admin", "users", user, "admin"], Some(f)) => admin::set_admin(self, user, &f).await,
            (["admin", "users", user, "remove"], Some(_)) => admin::remove_user(self, user).await,
            (["admin", "system"], None) => admin::system(self),
            (["admin", "gc"], Some(_)) => admin::run_gc(self).await,
            _ => Err(Refusal::not_found(self.req)),
        }
    }

    /// What the signed-in user may see and do, with the same checks as the REST API.
    fn manager(&self) -> Manager<'_> {
        Manager::new(self.api, self.principal(), self.client)
    }

    /// A page of `section`.
    fn show(&self, section: Section, title: &str, content: Markup) -> Answer {
        let page = self.frame().page(Some(section), title, content);
        Ok(layout::html_response(200, page))
    }

    /// After a form: a notice of what happened (or why not), then back to `location`.
    fn after<T>(
        &self,
        location: &str,
        outcome: Result<T, ManageError>,
        done: impl FnOnce(T) -> String,
    ) -> Answer {
        match outcome {
            Ok(value) => self.done(location, done(value)),
            Err(e) => self.failed(location, e),
        }
    }

    fn done(&self, location: &str, text: String) -> Answer {
        self.back(location, NoticeKind::Done, text)
    }

    /// After a form that failed: why, then back to `location`.
    fn failed(&self, location: &str, e: ManageError) -> Answer {
        self.back(location, NoticeKind::Failed, capitalized(&e.to_string()))
    }

    fn back(&self, location: &str, kind: NoticeKind, text: String) -> Answer {
        let Some((_, session)) = &self.session else {
            return Err(self.session_ended());
        };
        session.notify(kind, text);
        Ok(see_other(location))
    }

    /// The registry's address as the browser reached it, for pull commands.
    fn host(&self) -> &str {
        self.req.header("host").unwrap_or("REGISTRY")
    }

    fn session_ended(&self) -> Refusal {
        Refusal::new(
            403,
            "Your session has ended (signed out, idle for 12 hours, or the server restarted); \
             sign in again and repeat what you did.",
        )
    }

    /// A POST's fields, once it is known to come from this site and (but for the
    /// sign-in form, which has no session yet) to carry the session's CSRF token.
    async fn checked_form(&self, body: &mut dyn ByteSource) -> Result<Fields, Refusal> {
        if !guard::same_origin(self.req) {
            return Err(Refusal::new(
                403,
                "This form was sent from another site, so it is refused.",
            ));
        }
        let bytes = crate::api::response::read_limited(self.req, body, FORM_LIMIT, "forms").await?;
        let fields = Fields::parse(&bytes);
        if self.req.path == "/ui/login" {
            return Ok(fields);
        }
        let Some((_, session)) = &self.session else {
            return Err(self.session_ended());
        };
        if !session.csrf_matches(fields.raw("csrf").unwrap_or("")) {
            return Err(Refusal::new(
                403,
                "This form lacks this session's security token (it may be from an older \
                 page or another site); reload the page and try again.",
            ));
        }
        Ok(fields)
    }
}
