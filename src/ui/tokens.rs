//! Application tokens (CI): the user's own with when they were last used and when they
//! expire, creating one for chosen namespaces, actions and lifetime (its secret shown
//! once, with a copy button, in the answer to the form), and revoking.

use super::form::Fields;
use super::layout::{actions_fieldset, html_response, secret_shown_once, time, Section};
use super::{Answer, Visit};
use crate::manage::{NamespaceKind, TokenView};
use maud::html;

/// The lifetimes offered, in days; `None`: until revoked.
const LIFETIMES: [(Option<u32>, &str); 5] = [
    (Some(7), "7 days"),
    (Some(30), "30 days"),
    (Some(90), "90 days"),
    (Some(365), "1 year"),
    (None, "never (until revoked)"),
];

pub fn list(visit: &Visit) -> Answer {
    show(visit, None)
}

/// The tokens page; `created` is a token just made and its secret.
fn show(visit: &Visit, created: Option<(&TokenView, &str)>) -> Answer {
    let manager = visit.manager();
    let tokens = manager.tokens()?;
    let namespaces: Vec<String> = manager
        .namespaces()?
        .into_iter()
        .filter(|ns| {
            ns.rights.pull && matches!(ns.kind, NamespaceKind::Personal | NamespaceKind::Team)
        })
        .map(|ns| ns.name)
        .collect();
    let frame = visit.frame();
    let user = frame.user.as_deref().unwrap_or("USER").to_string();
    let content = html! {
        @if let Some((token, secret)) = created {
            p { "Token " strong { (token.name) } " created." }
            (secret_shown_once(&user, secret, visit.host()))
        }
        p class="muted" {
            "An application token signs in as you, with at most your rights, limited to the "
            "namespaces and actions it names: give one to each CI job instead of your password."
        }
        @if tokens.is_empty() {
            p { "You have no tokens." }
        } @else {
            div class="table-box" {
                table {
                    caption { "Your tokens" }
                    thead {
                        tr {
                            th scope="col" { "Name" }
                            th scope="col" { "Namespaces" }
                            th scope="col" { "May" }
                            th scope="col" { "Created" }
                            th scope="col" { "Expires" }
                            th scope="col" { "Last used" }
                            th scope="col" { "Revoke" }
                        }
                    }
                    tbody {
                        @for token in &tokens {
                            tr {
                                th scope="row" { (token.name) " " span class="muted mono" { (token.id) } }
                                td { @if token.namespaces.is_empty() { "all of yours" } @else { (token.namespaces.join(", ")) } }
                                td { (token.actions.join(", ")) }
                                td { (time(token.created)) }
                                td {
                                    @match token.expires {
                                        Some(at) if token.expired => { "expired " (time(at)) }
                                        Some(at) => (time(at)),
                                        None => "never",
                                    }
                                }
                                td { (token.last_used.map_or("never".into(), time)) }
                                td {
                                    (frame.form(&format!("/ui/tokens/{}/revoke", token.id), "", html! {
                                        button type="submit" class="secondary" { "Revoke " span class="visually-hidden" { (token.name) } }
                                    }))
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "New token" }
        (frame.form("/ui/tokens", "stack", html! {
            label { "Name" input type="text" name="name" required placeholder="ci-deploy"; }
            fieldset {
                legend { "Namespaces (none ticked: all of yours)" }
                @for ns in &namespaces {
                    label class="check" { input type="checkbox" name="namespace" value=(ns); (ns) }
                }
            }
            (actions_fieldset("It may"))
            label for="expires-days" { "Expires after" }
            select id="expires-days" name="expires_days" {
                @for (days, text) in LIFETIMES {
                    option value=(days.map_or(String::new(), |d| d.to_string())) selected[days == Some(30)] { (text) }
                }
            }
            div { button type="submit" { "Create token" } }
        }))
    };
    Ok(html_response(
        200,
        frame.page(Some(Section::Tokens), "Tokens", content),
    ))
}

pub async fn create(visit: &Visit<'_>, fields: &Fields) -> Answer {
    let namespaces = fields
        .all("namespace")
        .into_iter()
        .map(String::from)
        .collect();
    let expires_days = match fields.text("expires_days") {
        "" => Ok(None),
        days => days.parse().map(Some).map_err(|_| {
            crate::manage::ManageError::Invalid(format!("{days:?} is not a number of days"))
        }),
    };
    let outcome = match (fields.actions(), expires_days) {
        (Ok(actions), Ok(days)) => {
            visit
                .manager()
                .add_token(fields.text("name"), namespaces, actions, days)
                .await
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    match outcome {
        Ok((token, secret)) => show(visit, Some((&token, &secret))),
        Err(e) => visit.failed("/ui/tokens", e),
    }
}

pub async fn revoke(visit: &Visit<'_>, id: &str) -> Answer {
    let outcome = visit.manager().revoke_token(id).await;
    visit.after("/ui/tokens", outcome, |()| format!("Token {id} revoked."))
}
