//! Signing in and out. A user's name and password are checked by the same
//! `Authenticator::login` as every Basic header, so the same failure limits apply and
//! a guesser gets 429 here too. Robots and application tokens are for registry
//! clients: they do not sign in to the UI.

use super::form::Fields;
use super::guard::safe_next;
use super::layout::{html_response, Frame};
use super::session::{cleared_cookie, session_cookie};
use super::{see_other, Answer, Visit};
use crate::api::{count_login, Request, Response};
use crate::auth::{AuthError, Principal};
use maud::html;

const START_PAGE: &str = "/ui/";

/// The sign-in page, to come back to `req`'s page afterwards.
pub fn login_url(req: &Request) -> String {
    let here = match &req.query {
        Some(query) => format!("{}?{query}", req.path),
        None => req.path.clone(),
    };
    let next: String = form_urlencoded::byte_serialize(here.as_bytes()).collect();
    format!("/ui/login?next={next}")
}

fn next_page(asked: &str) -> &str {
    safe_next(asked).unwrap_or(START_PAGE)
}

pub fn form(visit: &Visit) -> Answer {
    let query = Fields::of_query(visit.req.query.as_deref());
    let next = next_page(query.text("next"));
    if visit.session.is_some() {
        return Ok(see_other(next));
    }
    Ok(form_page(visit, 200, next, "", None))
}

/// The sign-in form; `problem` says why the last try failed.
fn form_page(
    visit: &Visit,
    status: u16,
    next: &str,
    user: &str,
    problem: Option<&str>,
) -> Response {
    let content = html! {
        div class="signin" {
            @if let Some(problem) = problem {
                p class="notice failed" role="alert" { (problem) }
            }
            @if visit.api.auth.enabled() {
                form method="post" action="/ui/login" class="stack" {
                    input type="hidden" name="next" value=(next);
                    label { "User name"
                        input type="text" name="user" value=(user) autocomplete="username"
                            autocapitalize="none" spellcheck="false" required autofocus;
                    }
                    label { "Password"
                        input type="password" name="password" autocomplete="current-password" required;
                    }
                    div { button type="submit" { "Sign in" } }
                }
                p class="muted" {
                    "Robots and application tokens are for registry clients (docker login, CI); "
                    "sign in here with your user name and password."
                }
            } @else {
                p {
                    "This registry has no sign-in: neither accounts nor an htpasswd file are configured. "
                    a href=(START_PAGE) { "Browse the repositories" } "."
                }
            }
        }
    };
    html_response(status, Frame::signed_out().page(None, "Sign in", content))
}

pub async fn sign_in(visit: &Visit<'_>, fields: &Fields) -> Answer {
    let next = next_page(fields.text("next"));
    let user = fields.text("user");
    let password = fields.raw("password").unwrap_or("");
    if user.is_empty() || password.is_empty() {
        let problem = "Enter your user name and password.";
        return Ok(form_page(visit, 400, next, user, Some(problem)));
    }
    let outcome = visit
        .api
        .auth
        .login(user, password.to_string(), visit.client)
        .await;
    count_login(&outcome);
    let (status, problem) = match outcome {
        Ok(Principal::User(name)) => {
            if let Some((old, _)) = &visit.session {
                visit.api.sessions.end(old);
            }
            let (id, _) = visit.api.sessions.start(name);
            let cookie = session_cookie(&id, visit.req.secure);
            return Ok(see_other(next).header("Set-Cookie", cookie));
        }
        Ok(_) => (
            403,
            "Robots and application tokens cannot sign in to the web UI; \
             sign in with your user name and password.",
        ),
        Err(AuthError::InvalidCredentials) => (401, "Wrong user name or password."),
        Err(AuthError::TooManyAttempts) => {
            let wait = visit.api.auth.retry_after_secs();
            let problem = format!(
                "Too many failed sign-ins from here or for this user; try again in {wait} seconds."
            );
            return Ok(form_page(visit, 429, next, user, Some(&problem))
                .header("Retry-After", wait.to_string()));
        }
    };
    Ok(form_page(visit, status, next, user, Some(problem)))
}

pub fn sign_out(visit: &Visit) -> Response {
    if let Some((id, _)) = &visit.session {
        visit.api.sessions.end(id);
    }
    see_other("/ui/login").header("Set-Cookie", cleared_cookie(visit.req.secure))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sign_in_page_leads_back_to_the_page_asked_for() {
        let req = Request {
            method: http::Method::GET,
            path: "/ui/activity".into(),
            query: Some("actor=alice&q=a b".into()),
            headers: http::HeaderMap::new(),
            secure: false,
        };
        let url = login_url(&req);
        assert_eq!(
            url,
            "/ui/login?next=%2Fui%2Factivity%3Factor%3Dalice%26q%3Da+b"
        );
        let back = Fields::of_query(url.split_once('?').map(|(_, q)| q));
        assert_eq!(
            next_page(back.text("next")),
            "/ui/activity?actor=alice&q=a b"
        );
        assert_eq!(next_page("//evil.example/"), START_PAGE);
    }
}
