//! The activity log: who pushed, pulled, deleted or changed what, newest first, with a
//! filter form (actor, repository, action, dates, text) whose fields are those of the
//! REST API's `/api/v1/activity`, so the JSON-lines export link carries the same filter.

use super::form::Fields;
use super::layout::{copyable, time, Section};
use super::{Answer, Refusal, Visit};
use crate::activity::Filter;
use crate::oci::RepoName;
use maud::html;

/// Entries on one page.
const PAGE: usize = 50;
/// The filter's fields, as the REST API names them.
const FILTER_FIELDS: [&str; 6] = ["actor", "repository", "action", "since", "until", "q"];
/// What the action field offers (others can be typed).
const ACTIONS: [&str; 8] = [
    "push",
    "pull",
    "delete",
    "mount",
    "login",
    "user.create",
    "team.create",
    "token.create",
];

/// The filter's part of a query string, for the next page and the export.
fn filter_query(fields: &Fields) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for name in FILTER_FIELDS {
        let value = fields.text(name);
        if !value.is_empty() {
            query.append_pair(name, value);
        }
    }
    query.finish()
}

pub async fn list(visit: &Visit<'_>) -> Answer {
    let fields = Fields::of_query(visit.req.query.as_deref());
    let (filter, cursor) =
        Filter::from_query(|key| Some(fields.text(key))).map_err(|e| Refusal::new(400, e))?;
    let page = visit.manager().activity(&filter, cursor, PAGE).await?;
    let query = filter_query(&fields);
    let export = format!("/api/v1/activity?format=jsonl&{query}");
    let user = match &visit.session {
        Some((_, session)) => session.user.to_string(),
        None => "USER".to_string(),
    };
    let curl = format!(
        "curl -u {user} '{}://{}{export}'",
        if visit.req.secure { "https" } else { "http" },
        visit.host()
    );
    let show_clients = page.entries.iter().any(|e| e.client.is_some());
    let content = html! {
        form method="get" action="/ui/activity" class="inline" role="search" aria-label="Filter the activity" {
            label { "Actor" input type="text" name="actor" value=(fields.text("actor")) autocapitalize="none"; }
            label { "Repository or object" input type="text" name="repository" value=(fields.text("repository")) placeholder="alice/app"; }
            label { "Action"
                input type="text" name="action" list="activity-actions" value=(fields.text("action"));
            }
            datalist id="activity-actions" { @for action in ACTIONS { option value=(action) {} } }
            label { "From date" input type="date" name="since" value=(fields.text("since")); }
            label { "Before date" input type="date" name="until" value=(fields.text("until")); }
            label { "Text" input type="search" name="q" value=(fields.text("q")); }
            button type="submit" { "Filter" }
        }
        @if page.entries.is_empty() {
            p { "No activity matches." }
        } @else {
            div class="table-box" {
                table {
                    caption { "Newest first" }
                    thead {
                        tr {
                            th scope="col" { "Time" }
                            th scope="col" { "Actor" }
                            th scope="col" { "Action" }
                            th scope="col" { "On" }
                            th scope="col" { "Detail" }
                            th scope="col" class="number" { "Count" }
                            @if show_clients { th scope="col" { "Client" } }
                        }
                    }
                    tbody {
                        @for entry in &page.entries {
                            tr {
                                td { (time(entry.time)) }
                                td { (entry.actor.as_deref().unwrap_or("anonymous")) }
                                td { (entry.action) }
                                td {
                                    @if RepoName::parse(&entry.target).is_ok() {
                                        a href={ "/ui/repositories/" (entry.target) } { (entry.target) }
                                    } @else {
                                        (entry.target)
                                    }
                                }
                                td class="mono" { (entry.detail.as_deref().unwrap_or("")) }
                                td class="number" { (entry.count) }
                                @if show_clients { td { (entry.client.as_deref().unwrap_or("")) } }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &page.next {
            p { a href={ "/ui/activity?" (query) "&cursor=" (next) } { "Older entries" } }
        }
        h2 { "Export" }
        p {
            a href=(export) { "These entries as JSON lines" }
            " (REST API: it signs in with your password or an application token, not this page's session):"
        }
        (copyable("export-command", "Export command", &curl))
    };
    visit.show(Section::Activity, "Activity", content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_goes_on_to_the_next_page_and_the_export() {
        let fields = Fields::parse(
            b"actor=alice&repository=alice%2Fapp&action=push&since=2026-11-01&q=&cursor=x",
        );
        assert_eq!(
            filter_query(&fields),
            "actor=alice&repository=alice%2Fapp&action=push&since=2026-11-01"
        );
    }
}
