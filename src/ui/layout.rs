//! The frame around every page (header navigation, skip link, main landmark,
//! notices) and the small pieces pages are built from: forms that carry the CSRF
//! token, values with a copy button, sizes and times as people read them.

use super::assets::{ICON, SCRIPT, STYLE};
use super::session::{Notice, NoticeKind};
use crate::api::{Body, Response};
use bytes::Bytes;
use maud::{html, Markup, DOCTYPE};
use std::sync::Arc;

/// The parts of the UI, for the navigation; `None` for pages outside it (sign-in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Repositories,
    Namespaces,
    Teams,
    Tokens,
    Activity,
    Users,
    System,
}

impl Section {
    const EVERYONE: [Section; 5] = [
        Section::Repositories,
        Section::Namespaces,
        Section::Teams,
        Section::Tokens,
        Section::Activity,
    ];
    const ADMINS: [Section; 2] = [Section::Users, Section::System];

    fn link(self) -> (&'static str, &'static str) {
        match self {
            Section::Repositories => ("/ui/repositories", "Repositories"),
            Section::Namespaces => ("/ui/namespaces", "Namespaces"),
            Section::Teams => ("/ui/teams", "Teams"),
            Section::Tokens => ("/ui/tokens", "Tokens"),
            Section::Activity => ("/ui/activity", "Activity"),
            Section::Users => ("/ui/admin/users", "Users"),
            Section::System => ("/ui/admin/system", "System"),
        }
    }
}

/// Who is looking, for the frame: the navigation they get and the token their forms carry.
pub struct Frame {
    pub user: Option<Arc<str>>,
    pub admin: bool,
    /// The session's CSRF token; `None` when signed out (no form changes anything then).
    pub csrf: Option<String>,
    pub notices: Vec<Notice>,
}

impl Frame {
    pub fn signed_out() -> Frame {
        Frame {
            user: None,
            admin: false,
            csrf: None,
            notices: Vec::new(),
        }
    }

    /// A POST form to `action` with this session's CSRF token in a hidden field.
    pub fn form(&self, action: &str, class: &str, fields: Markup) -> Markup {
        html! {
            form method="post" action=(action) class=(class) {
                @if let Some(csrf) = &self.csrf {
                    input type="hidden" name="csrf" value=(csrf);
                }
                (fields)
            }
        }
    }

    /// The whole page: `content` goes into `main` under the `h1` of `title`.
    pub fn page(&self, section: Option<Section>, title: &str, content: Markup) -> Markup {
        let sections = Section::EVERYONE
            .iter()
            .chain(Section::ADMINS.iter().filter(|_| self.admin));
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · Portcullis" }
                    link rel="stylesheet" href=(STYLE.url());
                    link rel="icon" type="image/svg+xml" href=(ICON.url());
                    script src=(SCRIPT.url()) defer {}
                }
                body {
                    a class="skip" href="#main" { "Skip to main content" }
                    header class="top" {
                        a class="brand" href="/ui/" { "Portcullis" }
                        @if let Some(user) = &self.user {
                            nav aria-label="Main" {
                                ul {
                                    @for s in sections {
                                        @let (href, label) = s.link();
                                        li {
                                            a href=(href) aria-current=[(section == Some(*s)).then_some("page")] { (label) }
                                        }
                                    }
                                }
                            }
                            div class="who" {
                                span { "Signed in as " strong { (user) } }
                                (self.form("/ui/logout", "", html! {
                                    button type="submit" { "Sign out" }
                                }))
                            }
                        }
                    }
                    main id="main" tabindex="-1" {
                        h1 { (title) }
                        @for notice in &self.notices {
                            @match notice.kind {
                                NoticeKind::Done => p class="notice" role="status" { (notice.text) },
                                NoticeKind::Failed => p class="notice failed" role="alert" { (notice.text) },
                            }
                        }
                        (content)
                        p id="copy-status" class="visually-hidden" role="status" aria-live="polite" {}
                    }
                    footer { "Portcullis container registry" }
                }
            }
        }
    }
}

/// An HTML page as a response; never cached, since pages show private data and secrets.
pub fn html_response(status: u16, page: Markup) -> Response {
    Response::new(status)
        .header("Content-Type", "text/html; charset=utf-8")
        .header("Cache-Control", "no-store")
        .body(Body::Bytes(Bytes::from(page.into_string())))
}

/// A value shown in full with a button that copies it (the button appears with the script).
pub fn copyable(id: &str, label: &str, value: &str) -> Markup {
    html! {
        div class="copyable" {
            code id=(id) { (value) }
            button type="button" class="secondary" data-copy=(id) data-copy-label=(label) hidden
                aria-label={ "Copy " (label.to_lowercase()) } { "Copy" }
        }
    }
}

/// The pull/push/delete boxes of a robot or token form.
pub fn actions_fieldset(legend: &str) -> Markup {
    html! {
        fieldset {
            legend { (legend) }
            label class="check" { input type="checkbox" name="action" value="pull" checked; "Pull" }
            label class="check" { input type="checkbox" name="action" value="push"; "Push" }
            label class="check" { input type="checkbox" name="action" value="delete"; "Delete" }
        }
    }
}

/// A new secret (a robot's or a token's), shown this once with a copy button and how
/// to log in with it.
pub fn secret_shown_once(login: &str, secret: &str, host: &str) -> Markup {
    html! {
        section class="secret" aria-labelledby="secret-title" {
            h2 id="secret-title" { "Copy the secret now: it is not shown again" }
            dl class="facts" {
                dt { "User name" } dd class="mono" { (login) }
            }
            p { "Secret:" }
            (copyable("new-secret", "Secret", secret))
            p { "Log in with it:" }
            (copyable("login-command", "Login command",
                &format!("docker login {host} --username {login} --password-stdin")))
            p class="muted" { "Then paste the secret and press Enter (or pipe it in, in CI)." }
        }
    }
}

/// `2024-05-01 12:30 UTC` for a time in unix milliseconds.
pub fn time(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    let text = humantime::format_rfc3339_seconds(at).to_string();
    format!("{} UTC", text[..16].replace('T', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_people_write_them() {
        assert_eq!(time(0), "1970-01-01 00:00 UTC");
        assert_eq!(time(1_714_566_600_000), "2024-05-01 12:30 UTC");
    }

    #[test]
    fn forms_carry_the_csrf_token_and_values_are_escaped() {
        let frame = Frame {
            user: Some(Arc::from("<alice>")),
            admin: false,
            csrf: Some("tok\"en".into()),
            notices: vec![],
        };
        let form = frame
            .form("/ui/x", "inline", html! { button { "Go" } })
            .into_string();
        assert!(
            form.contains(r#"<input type="hidden" name="csrf" value="tok&quot;en">"#),
            "{form}"
        );
        let page = frame
            .page(Some(Section::Teams), "T", html! {})
            .into_string();
        assert!(page.contains("&lt;alice&gt;"));
        assert!(
            page.contains(r#"href="/ui/teams" aria-current="page""#),
            "{page}"
        );
        assert!(
            !page.contains("/ui/admin/users"),
            "admin links only for admins"
        );
    }
}
