//! Namespaces: the list with the user's rights in each, creating one for a team, and a
//! namespace's page: its visibility and, for personal and team namespaces, its robots
//! (the secret of a new one is shown once, in the answer to the form).

use super::form::Fields;
use super::layout::{actions_fieldset, html_response, secret_shown_once, time, Section};
use super::{Answer, Visit};
use crate::accounts::Visibility;
use crate::manage::{NamespaceKind, NamespaceView, GLOBAL};
use maud::{html, Markup};

const VISIBILITIES: [(Visibility, &str); 3] = [
    (Visibility::Private, "private: members only"),
    (
        Visibility::Protected,
        "protected: any signed-in user may pull",
    ),
    (
        Visibility::Public,
        "public: anyone may pull, anonymously too",
    ),
];

fn namespace_url(name: &str) -> String {
    format!("/ui/namespaces/{name}")
}

fn label(ns: &NamespaceView) -> &str {
    if ns.name == GLOBAL {
        "(global)"
    } else {
        &ns.name
    }
}

fn kind(kind: NamespaceKind) -> &'static str {
    match kind {
        NamespaceKind::Personal => "personal",
        NamespaceKind::Team => "team",
        NamespaceKind::Mirror => "mirror (read-only)",
        NamespaceKind::Global => "global",
    }
}

fn visibility_word(v: Visibility) -> &'static str {
    match v {
        Visibility::Private => "private",
        Visibility::Protected => "protected",
        Visibility::Public => "public",
    }
}

fn visibility_select(current: Visibility) -> Markup {
    html! {
        label for="visibility" { "Visibility" }
        select id="visibility" name="visibility" {
            @for (v, text) in VISIBILITIES {
                option value=(visibility_word(v)) selected[v == current] { (text) }
            }
        }
    }
}

pub fn list(visit: &Visit) -> Answer {
    let manager = visit.manager();
    let namespaces = manager.namespaces()?;
    let teams: Vec<String> = manager
        .teams()?
        .into_iter()
        .map(|t| t.name)
        .filter(|t| manager.may_manage_team(t))
        .collect();
    let frame = visit.frame();
    let content = html! {
        div class="table-box" {
            table {
                thead {
                    tr {
                        th scope="col" { "Namespace" }
                        th scope="col" { "Kind" }
                        th scope="col" { "Owner" }
                        th scope="col" { "Visibility" }
                        th scope="col" { "You may" }
                    }
                }
                tbody {
                    @for ns in &namespaces {
                        tr {
                            th scope="row" { a href=(namespace_url(&ns.name)) { (label(ns)) } }
                            td { (kind(ns.kind)) }
                            td { (ns.owner.as_deref().unwrap_or("admins")) }
                            td { (visibility_word(ns.visibility)) }
                            td { (rights(ns)) }
                        }
                    }
                }
            }
        }
        @if !teams.is_empty() {
            h2 { "New team namespace" }
            (frame.form("/ui/namespaces", "stack", html! {
                label { "Name" input type="text" name="name" required autocapitalize="none"; }
                label { "Team"
                    select name="team" {
                        @for team in &teams { option value=(team) { (team) } }
                    }
                }
                (visibility_select(Visibility::Private))
                label { "Description" input type="text" name="description"; }
                div { button type="submit" { "Create namespace" } }
            }))
        }
    };
    let page = frame.page(Some(Section::Namespaces), "Namespaces", content);
    Ok(html_response(200, page))
}

fn rights(ns: &NamespaceView) -> String {
    let r = ns.rights;
    let words: Vec<&str> = [
        (r.pull, "pull"),
        (r.push, "push"),
        (r.delete, "delete"),
        (r.manage, "manage"),
    ]
    .into_iter()
    .filter_map(|(on, word)| on.then_some(word))
    .collect();
    words.join(", ")
}

pub async fn create(visit: &Visit<'_>, fields: &Fields) -> Answer {
    let name = fields.text("name");
    let outcome = match fields.choice("visibility") {
        Ok(visibility) => {
            visit
                .manager()
                .create_namespace(
                    name,
                    fields.text("team"),
                    visibility,
                    fields.text("description"),
                )
                .await
        }
        Err(e) => Err(e),
    };
    visit.after(&namespace_url(name), outcome, |ns| {
        format!("Namespace {} created.", ns.name)
    })
}

pub fn show(visit: &Visit, name: &str) -> Answer {
    show_with(visit, name, None)
}

/// The namespace page; `new_robot` is a robot just made: its login and secret.
fn show_with(visit: &Visit, name: &str, new_robot: Option<(&str, &str)>) -> Answer {
    let manager = visit.manager();
    let ns = manager.namespace(name)?;
    let has_robots = matches!(ns.kind, NamespaceKind::Personal | NamespaceKind::Team);
    let robots = if ns.rights.manage && has_robots {
        manager.robots(&ns.name)?
    } else {
        Vec::new()
    };
    let frame = visit.frame();
    let url = namespace_url(&ns.name);
    let content = html! {
        @if let Some((login, secret)) = new_robot {
            (secret_shown_once(login, secret, visit.host()))
        }
        dl class="facts" {
            dt { "Kind" } dd { (kind(ns.kind)) }
            dt { "Owner" } dd { (ns.owner.as_deref().unwrap_or("admins")) }
            dt { "Visibility" } dd { (visibility_word(ns.visibility)) }
            dt { "You may" } dd { (rights(&ns)) }
            @if !ns.description.is_empty() { dt { "Description" } dd { (ns.description) } }
        }
        p { a href={ "/ui/repositories?namespace=" (ns.name) } { "Repositories in this namespace" } }
        @if ns.rights.manage {
            h2 { "Visibility" }
            (frame.form(&format!("{url}/visibility"), "inline", html! {
                (visibility_select(ns.visibility))
                button type="submit" { "Change visibility" }
            }))
        }
        @if ns.rights.manage && has_robots {
            h2 { "Robots" }
            p class="muted" { "Robot accounts pull and push from CI and servers; they sign in as " code { (ns.name) "+NAME" } " with their secret." }
            @if robots.is_empty() {
                p { "No robots yet." }
            } @else {
                div class="table-box" {
                    table {
                        thead {
                            tr {
                                th scope="col" { "Login" }
                                th scope="col" { "May" }
                                th scope="col" { "Description" }
                                th scope="col" { "Created" }
                                th scope="col" { "Last used" }
                                th scope="col" { "Remove" }
                            }
                        }
                        tbody {
                            @for robot in &robots {
                                tr {
                                    th scope="row" class="mono" { (robot.login) }
                                    td { (robot.actions.join(", ")) }
                                    td { (robot.description) }
                                    td { (time(robot.created)) }
                                    td { (robot.last_used.map_or("never".into(), time)) }
                                    td {
                                        (frame.form(&format!("{url}/robots/{}/remove", robot.login), "", html! {
                                            button type="submit" class="secondary" { "Remove " span class="visually-hidden" { (robot.login) } }
                                        }))
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h3 { "New robot" }
            (frame.form(&format!("{url}/robots"), "stack", html! {
                label { "Name" input type="text" name="name" required autocapitalize="none"; }
                (actions_fieldset("It may"))
                label { "Description" input type="text" name="description"; }
                div { button type="submit" { "Create robot" } }
            }))
        }
        @if ns.rights.manage && ns.kind == NamespaceKind::Team {
            h2 { "Remove" }
            p { "Removing the namespace removes its robots; its repositories stay, in the global namespace." }
            (frame.form(&format!("{url}/remove"), "", html! {
                button type="submit" class="danger" { "Remove namespace " (ns.name) }
            }))
        }
    };
    let title = format!("Namespace {}", label(&ns));
    Ok(html_response(
        200,
        frame.page(Some(Section::Namespaces), &title, content),
    ))
}

pub async fn set_visibility(visit: &Visit<'_>, name: &str, fields: &Fields) -> Answer {
    let outcome = match fields.choice("visibility") {
        Ok(v) => {
            visit
                .manager()
                .set_visibility(crate::manage::namespace_arg(name), v)
                .await
        }
        Err(e) => Err(e),
    };
    visit.after(&namespace_url(name), outcome, |ns| {
        format!("{} is {} now.", label(&ns), visibility_word(ns.visibility))
    })
}

pub async fn remove(visit: &Visit<'_>, name: &str) -> Answer {
    let outcome = visit.manager().remove_namespace(name).await;
    visit.after("/ui/namespaces", outcome, |()| {
        format!("Namespace {name} removed.")
    })
}

pub async fn add_robot(visit: &Visit<'_>, name: &str, fields: &Fields) -> Answer {
    let outcome = match fields.actions() {
        Ok(actions) => {
            visit
                .manager()
                .add_robot(
                    name,
                    fields.text("name"),
                    actions,
                    fields.text("description"),
                )
                .await
        }
        Err(e) => Err(e),
    };
    match outcome {
        Ok((robot, secret)) => show_with(visit, name, Some((&robot.login, &secret))),
        Err(e) => visit.failed(&namespace_url(name), e),
    }
}

pub async fn remove_robot(visit: &Visit<'_>, name: &str, login: &str) -> Answer {
    let outcome = visit.manager().remove_robot(login).await;
    visit.after(&namespace_url(name), outcome, |()| {
        format!("Robot {login} removed.")
    })
}
