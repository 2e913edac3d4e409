//! Teams: the user's teams (an admin's: all), creating one, and a team's page with its
//! members and roles; its owners add members, change roles and remove members.

use super::form::Fields;
use super::layout::{html_response, time, Section};
use super::{Answer, Visit};
use crate::accounts::Role;
use maud::{html, Markup};

const ROLES: [(Role, &str); 3] = [
    (Role::Viewer, "viewer: pull"),
    (Role::Contributor, "contributor: pull, push"),
    (Role::Owner, "owner: pull, push, delete, manage"),
];

fn team_url(name: &str) -> String {
    format!("/ui/teams/{name}")
}

fn role_word(role: Role) -> &'static str {
    match role {
        Role::Viewer => "viewer",
        Role::Contributor => "contributor",
        Role::Owner => "owner",
    }
}

fn role_select(id: &str, current: Role) -> Markup {
    html! {
        select name="role" id=(id) {
            @for (role, text) in ROLES {
                option value=(role_word(role)) selected[role == current] { (text) }
            }
        }
    }
}

pub fn list(visit: &Visit) -> Answer {
    let teams = visit.manager().teams()?;
    let frame = visit.frame();
    let me = frame.user.clone();
    let content = html! {
        @if teams.is_empty() {
            p { "You are in no team yet." }
        } @else {
            div class="table-box" {
                table {
                    thead {
                        tr {
                            th scope="col" { "Team" }
                            th scope="col" { "Description" }
                            th scope="col" class="number" { "Members" }
                            th scope="col" { "Your role" }
                        }
                    }
                    tbody {
                        @for team in &teams {
                            @let mine = team.members.iter().find(|m| Some(m.user.as_str()) == me.as_deref());
                            tr {
                                th scope="row" { a href=(team_url(&team.name)) { (team.name) } }
                                td { (team.description) }
                                td class="number" { (team.members.len()) }
                                td { (mine.map_or("—", |m| role_word(m.role))) }
                            }
                        }
                    }
                }
            }
        }
        h2 { "New team" }
        p class="muted" { "You own the teams you create; each gets a private namespace of its name." }
        (frame.form("/ui/teams", "stack", html! {
            label { "Name" input type="text" name="name" required autocapitalize="none"; }
            label { "Description" input type="text" name="description"; }
            div { button type="submit" { "Create team" } }
        }))
    };
    Ok(html_response(
        200,
        frame.page(Some(Section::Teams), "Teams", content),
    ))
}

pub async fn create(visit: &Visit<'_>, fields: &Fields) -> Answer {
    let name = fields.text("name");
    let outcome = visit
        .manager()
        .create_team(name, fields.text("description"))
        .await;
    match outcome {
        Ok(team) => visit.done(
            &team_url(&team.name),
            format!("Team {} created.", team.name),
        ),
        Err(e) => visit.failed("/ui/teams", e),
    }
}

pub fn show(visit: &Visit, name: &str) -> Answer {
    let manager = visit.manager();
    let team = manager.team(name)?;
    let manages = manager.may_manage_team(&team.name);
    let frame = visit.frame();
    let url = team_url(&team.name);
    let content = html! {
        dl class="facts" {
            @if !team.description.is_empty() { dt { "Description" } dd { (team.description) } }
            dt { "Created" } dd { (time(team.created)) }
            dt { "Namespaces" }
            dd {
                @for (i, ns) in team.namespaces.iter().enumerate() {
                    @if i > 0 { ", " }
                    a href={ "/ui/namespaces/" (ns) } { (ns) }
                }
            }
        }
        h2 { "Members" }
        div class="table-box" {
            table {
                thead {
                    tr {
                        th scope="col" { "User" }
                        th scope="col" { "Role" }
                        @if manages { th scope="col" { "Remove" } }
                    }
                }
                tbody {
                    @for (i, member) in team.members.iter().enumerate() {
                        tr {
                            th scope="row" { (member.user) }
                            td {
                                @if manages {
                                    (frame.form(&format!("{url}/members"), "inline", html! {
                                        input type="hidden" name="user" value=(member.user);
                                        label class="visually-hidden" for={ "role-" (i) } { "Role of " (member.user) }
                                        (role_select(&format!("role-{i}"), member.role))
                                        button type="submit" class="secondary" { "Change " span class="visually-hidden" { "role of " (member.user) } }
                                    }))
                                } @else {
                                    (role_word(member.role))
                                }
                            }
                            @if manages {
                                td {
                                    (frame.form(&format!("{url}/members/{}/remove", member.user), "", html! {
                                        button type="submit" class="secondary" { "Remove " span class="visually-hidden" { (member.user) } }
                                    }))
                                }
                            }
                        }
                    }
                }
            }
        }
        @if manages {
            h2 { "Add a member" }
            (frame.form(&format!("{url}/members"), "stack", html! {
                label { "User name" input type="text" name="user" required autocapitalize="none"; }
                label for="new-role" { "Role" }
                (role_select("new-role", Role::Contributor))
                div { button type="submit" { "Add member" } }
            }))
            h2 { "Remove the team" }
            p { "Removing the team removes its namespaces and their robots; the repositories stay." }
            (frame.form(&format!("{url}/remove"), "", html! {
                button type="submit" class="danger" { "Remove team " (team.name) }
            }))
        }
    };
    let title = format!("Team {}", team.name);
    Ok(html_response(
        200,
        frame.page(Some(Section::Teams), &title, content),
    ))
}

pub async fn set_member(visit: &Visit<'_>, team: &str, fields: &Fields) -> Answer {
    let user = fields.text("user");
    let outcome = match fields.choice::<Role>("role") {
        Ok(role) => visit
            .manager()
            .set_member(team, user, Some(role))
            .await
            .map(|_| role),
        Err(e) => Err(e),
    };
    visit.after(&team_url(team), outcome, |role| {
        format!("{user} is {} of {team} now.", role_word(role))
    })
}

pub async fn remove_member(visit: &Visit<'_>, team: &str, user: &str) -> Answer {
    let outcome = visit.manager().set_member(team, user, None).await;
    visit.after(&team_url(team), outcome, |_| {
        format!("{user} is no longer in {team}.")
    })
}

pub async fn remove(visit: &Visit<'_>, team: &str) -> Answer {
    let outcome = visit.manager().remove_team(team).await;
    visit.after("/ui/teams", outcome, |()| format!("Team {team} removed."))
}
