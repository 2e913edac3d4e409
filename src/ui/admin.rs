//! Admins' pages: users (create, make or unmake admin, remove) and the system (upstreams
//! up or down, stored bytes, cache counts, the last garbage collection and a button
//! that runs one now). The manager refuses everyone else; the navigation shows these
//! pages to admins only.

use super::form::Fields;
use super::layout::{html_response, time, Section};
use super::{Answer, Visit};
use crate::gc::RunOptions;
use crate::progress::human_bytes;
use maud::html;

const USERS: &str = "/ui/admin/users";
const SYSTEM: &str = "/ui/admin/system";
const RUN_GC: &str = "/ui/admin/gc";

pub fn users(visit: &Visit) -> Answer {
    let users = visit.manager().users()?;
    let frame = visit.frame();
    let me = frame.user.clone();
    let content = html! {
        div class="table-box" {
            table {
                thead {
                    tr {
                        th scope="col" { "User" }
                        th scope="col" { "Admin" }
                        th scope="col" { "Teams" }
                        th scope="col" { "Created" }
                        th scope="col" { "Change" }
                    }
                }
                tbody {
                    @for user in &users {
                        @let url = format!("{USERS}/{}", user.name);
                        @let is_me = me.as_deref() == Some(user.name.as_str());
                        tr {
                            th scope="row" { (user.name) }
                            td { @if user.admin { "yes" } @else { "no" } }
                            td { (user.teams.iter().map(|t| t.team.as_str()).collect::<Vec<_>>().join(", ")) }
                            td { (time(user.created)) }
                            td {
                                @if !is_me {
                                    div class="actions" {
                                        (frame.form(&format!("{url}/admin"), "", html! {
                                            input type="hidden" name="admin" value=(!user.admin);
                                            button type="submit" class="secondary" {
                                                @if user.admin { "Revoke admin" } @else { "Make admin" }
                                                span class="visually-hidden" { " " (user.name) }
                                            }
                                        }))
                                        (frame.form(&format!("{url}/remove"), "", html! {
                                            button type="submit" class="danger" { "Remove " span class="visually-hidden" { (user.name) } }
                                        }))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "New user" }
        p class="muted" { "Each user gets a private personal namespace of their name." }
        (frame.form(USERS, "stack", html! {
            label { "User name" input type="text" name="name" required autocapitalize="none" autocomplete="off"; }
            label { "Password (at least 8 characters)"
                input type="password" name="password" required minlength="8" autocomplete="new-password";
            }
            label class="check" { input type="checkbox" name="admin" value="true"; "Admin: may manage everything" }
            div { button type="submit" { "Create user" } }
        }))
    };
    Ok(html_response(
        200,
        frame.page(Some(Section::Users), "Users", content),
    ))
}

pub async fn add_user(visit: &Visit<'_>, fields: &Fields) -> Answer {
    let name = fields.text("name");
    let password = fields.raw("password").unwrap_or("");
    let admin = fields.text("admin") == "true";
    let outcome = visit.manager().add_user(name, password, admin).await;
    visit.after(USERS, outcome, |user| {
        format!("User {} created.", user.name)
    })
}

pub async fn set_admin(visit: &Visit<'_>, name: &str, fields: &Fields) -> Answer {
    let admin = fields.text("admin") == "true";
    let outcome = visit.manager().set_admin(name, admin).await;
    visit.after(USERS, outcome, |user| match user.admin {
        true => format!("{} is an admin now.", user.name),
        false => format!("{} is no longer an admin.", user.name),
    })
}

pub async fn remove_user(visit: &Visit<'_>, name: &str) -> Answer {
    let outcome = visit.manager().remove_user(name).await;
    visit.after(USERS, outcome, |()| format!("User {name} removed."))
}

pub fn system(visit: &Visit) -> Answer {
    let view = visit.manager().system()?;
    let frame = visit.frame();
    let yes_no = |on: bool| if on { "on" } else { "off" };
    let content = html! {
        dl class="facts" {
            dt { "Version" } dd { (view.version) }
            dt { "Read-only mode" } dd { (yes_no(view.read_only)) }
            dt { "Accounts" } dd { (yes_no(view.accounts)) }
            dt { "Token authentication" } dd { (yes_no(view.token_auth)) }
            dt { "Stored, pushed here" } dd { (human_bytes(view.stored_bytes.pushed)) }
            dt { "Stored, cached from upstreams" } dd { (human_bytes(view.stored_bytes.cached)) }
        }
        h2 { "Upstreams" }
        @if view.upstreams.is_empty() {
            p { "No upstream registries are mirrored." }
        } @else {
            div class="table-box" {
                table {
                    thead { tr { th scope="col" { "Upstream" } th scope="col" { "State" } th scope="col" { "Rate limit left" } } }
                    tbody {
                        @for upstream in &view.upstreams {
                            tr {
                                th scope="row" { (upstream.name) }
                                td {
                                    @if upstream.up { span class="badge up" { "up" } } @else { span class="badge down" { "down" } }
                                }
                                td { (upstream.rate_limit_remaining.as_deref().unwrap_or("—")) }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Cache" }
        @if view.cache.is_empty() {
            p { "No cache lookups yet." }
        } @else {
            div class="table-box" {
                table {
                    thead { tr { th scope="col" { "Kind" } th scope="col" { "Result" } th scope="col" class="number" { "Count" } } }
                    tbody {
                        @for count in &view.cache {
                            tr { td { (count.kind) } td { (count.result) } td class="number" { (count.count) } }
                        }
                    }
                }
            }
        }
        h2 { "Garbage collection" }
        @match &view.last_gc {
            Some(gc) => p { "Last run: " (gc.summary) },
            None => p { "No collection has run since the server started." },
        }
        (frame.form(RUN_GC, "", html! {
            button type="submit" { "Run garbage collection now" }
        }))
    };
    Ok(html_response(
        200,
        frame.page(Some(Section::System), "System", content),
    ))
}

pub async fn run_gc(visit: &Visit<'_>) -> Answer {
    let outcome = visit.manager().run_gc(RunOptions::default()).await;
    visit.after(SYSTEM, outcome, |gc| {
        format!("Garbage collection done: {}", gc.summary)
    })
}
