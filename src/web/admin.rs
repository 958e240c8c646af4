//! Admin pages: users, roles, grants, interface groups, API tokens and the audit log,
//! over the same functions as `flowstage-setup users`. Admins only; every form carries
//! the session's CSRF token and every change lands in the audit log.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Form, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::auth::{self, Identity};
use super::pages::layout;
use super::svg::escape;
use super::{AppState, PageUser, WebError};
use crate::users::{self, GrantRule, Role, UserError};

impl From<UserError> for WebError {
    fn from(e: UserError) -> Self {
        match e {
            UserError::Database(db) => WebError::Internal(db.into()),
            other => WebError::BadRequest(other.to_string()),
        }
    }
}

/// Form text goes into SQL parameters: PostgreSQL refuses NUL, and none of these
/// values has a use for control characters.
fn plain<'a>(field: &str, value: &'a str) -> Result<&'a str, WebError> {
    if value.len() > 1024 || value.chars().any(char::is_control) {
        Err(WebError::BadRequest(format!(
            "{field}: at most 1024 characters, without control characters"
        )))
    } else {
        Ok(value.trim())
    }
}

fn require_admin(who: &Identity) -> Result<(), WebError> {
    if who.role == Role::Admin {
        Ok(())
    } else {
        Err(WebError::Forbidden("this page is for admins".into()))
    }
}

fn check_csrf(who: &Identity, sent: &str) -> Result<(), WebError> {
    if auth::same_token(&who.csrf, sent) {
        Ok(())
    } else {
        Err(WebError::Forbidden("missing or wrong CSRF token".into()))
    }
}

fn actor(who: &Identity) -> String {
    format!("web:{}", who.name)
}

fn csrf_field(who: &Identity) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        escape(&who.csrf)
    )
}

pub async fn users_page(
    State(state): State<Arc<AppState>>,
    PageUser(who): PageUser,
) -> Result<Response, WebError> {
    require_admin(&who)?;
    let client = state.client().await?;
    let list = users::list(&client).await?;
    let csrf = csrf_field(&who);
    let mut body = String::from("<h1>Users</h1><p class=\"nav\"><a href=\"/admin/groups\">Interface groups</a><a href=\"/admin/audit\">Audit log</a></p><table><thead><tr><th>user</th><th>role</th><th>state</th><th>last login</th><th>grants</th><th></th></tr></thead><tbody>");
    for u in &list {
        let mut grants = String::new();
        for (id, what) in &u.grants {
            let _ = write!(
                grants,
                "<form method=\"post\" action=\"/admin/grants/revoke\">{csrf}<input type=\"hidden\" name=\"user\" value=\"{}\"><input type=\"hidden\" name=\"grant\" value=\"{id}\">{} <button type=\"submit\">revoke</button></form>",
                escape(&u.name),
                escape(what)
            );
        }
        let other_role = if u.role == Role::Admin {
            "viewer"
        } else {
            "admin"
        };
        let role_form = format!(
            "<form method=\"post\" action=\"/admin/users/role\">{csrf}<input type=\"hidden\" name=\"user\" value=\"{}\"><input type=\"hidden\" name=\"role\" value=\"{other_role}\"><button type=\"submit\">make {other_role}</button></form>",
            escape(&u.name)
        );
        let (verb, label) = if u.disabled {
            ("enable", "enable")
        } else {
            ("disable", "disable")
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{grants}</td><td>{role_form}<form method=\"post\" action=\"/admin/users/{verb}\">{csrf}<input type=\"hidden\" name=\"user\" value=\"{}\"><button type=\"submit\">{label}</button></form></td></tr>",
            escape(&u.name),
            u.role.as_str(),
            if u.disabled { "disabled" } else { "active" },
            escape(u.last_login.as_deref().unwrap_or("never")),
            escape(&u.name),
        );
    }
    body.push_str("</tbody></table><h2>API tokens</h2><table><thead><tr><th>user</th><th>token</th><th>created</th><th>last used</th><th></th></tr></thead><tbody>");
    for t in users::tokens(&client).await? {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><form method=\"post\" action=\"/admin/tokens/revoke\">{csrf}<input type=\"hidden\" name=\"user\" value=\"{}\"><input type=\"hidden\" name=\"name\" value=\"{}\"><button type=\"submit\">revoke</button></form></td></tr>",
            escape(&t.user),
            escape(&t.name),
            escape(&t.created_at),
            escape(t.last_used.as_deref().unwrap_or("never")),
            escape(&t.user),
            escape(&t.name)
        );
    }
    body.push_str("</tbody></table>");
    let _ = write!(
        body,
        "<h2>Add a user</h2><form method=\"post\" action=\"/admin/users/add\">{csrf}<label>Name <input name=\"user\" required></label> <label>Role <select name=\"role\"><option>viewer</option><option>admin</option></select></label> <label>Password <input name=\"password\" type=\"password\" minlength=\"10\" required></label> <button type=\"submit\">Add</button></form>\
         <h2>Grant</h2><p>A rule covers interfaces seen later too. Give an exporter (address or name) with an optional ifIndex or description pattern, or a group, or everything.</p><form method=\"post\" action=\"/admin/grants/add\">{csrf}<label>User <input name=\"user\" required></label> <label>Exporter <input name=\"exporter\"></label> <label>ifIndex <input name=\"interface\" inputmode=\"numeric\"></label> <label>Description matches <input name=\"description\"></label> <label>Group <input name=\"group\"></label> <label><input type=\"checkbox\" name=\"all\" value=\"1\"> everything</label> <button type=\"submit\">Grant</button></form>\
         <h2>API token</h2><form method=\"post\" action=\"/admin/tokens/add\">{csrf}<label>User <input name=\"user\" required></label> <label>Token name <input name=\"name\" required></label> <button type=\"submit\">Create</button></form>"
    );
    Ok(layout("Users", Some(&who), &state.site, &body).into_response())
}

#[derive(Debug, Deserialize)]
pub struct AddUser {
    csrf: String,
    user: String,
    role: String,
    password: String,
}

pub async fn add_user(
    State(state): State<Arc<AppState>>,
    PageUser(who): PageUser,
    Form(f): Form<AddUser>,
) -> Result<Response, WebError> {
    require_admin(&who)?;
    check_csrf(&who, &f.csrf)?;
    let role: Role = f.role.parse()?;
    let client = state.client().await?;
    users::add(
        &client,
        &actor(&who),
        plain("user", &f.user)?,
        role,
        &f.password,
    )
    .await?;
    Ok(Redirect::to("/admin/users").into_response())
}

#[derive(Debug, Deserialize)]
pub struct RoleForm {
    csrf: String,
    user: String,
    role: String,
}

pub async fn set_role(
    State(state): State<Arc<AppState>>,
    PageUser(who): PageUser,
    Form(f): Form<RoleForm>,
) -> Result<Response, WebError> {
    require_admin(&who)?;
    check_csrf(&who, &f.csrf)?;
    let role: Role = f.role.parse()?;
    let client = state.client().await?;
    users::set_role(&client, &actor(&who), plain("user", &f.user)?, role).await?;
    Ok(Redirect::to("/admin/users").into_response())
}

#[derive(Debug, Deserialize)]
pub struct UserForm {
    csrf: String,
    user: String,
}

async fn set_disabled(
    state: &AppState,
    who: &Identity,
    f: &UserForm,
    disabled: bool,
) -> Result<Response, WebError> {
    require_admin(who)?;
    check_csrf(who, &f.csrf)?;
    let user = plain("user", &f.user)?;
    if disabled && user == who.name {
        return Err(WebError::BadRequest("you cannot disable yourself".into()));
    }
    let client = state.client().await?;
    users::set_disabled(&client, &actor(who), user, disabled).await?;
    Ok(Redirect::to("/admin/users").into_response())
}

pub async fn disable_user(
    State(state): State<Arc<AppState>>,
    PageUser(who): PageUser,
    Form(f): Form<UserForm>,
) -> Result<Response, WebError> {
    set_disabled(&state, &who, &f, true).await
}

pub async fn enable_user(
    State(state): State<Arc<AppState>>,
    PageUser(who): PageUser,
    Form(f): Form<UserForm>,
) -> Result<Response, WebError> {
    set_disabled(&state, &who, &f, false).await
}

#[derive(Debug, Deserialize)]
pub struct GrantForm {
    csrf: String,
    user: String,
    exporter: Option<String>,
    interface: Option<String>,
    description: Option<String>,
    group: Option<String>,
    all: Option<String>,
}

fn given(s: &Option<String>) -> Option<String> {
    s.as_ref()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn check_all(fields: &[(&str, &Option<String>)]) -> Result<(), WebError> {
    for (name, value) in fields {
        if let Some(v) = value {
            plain(name, v)?;
        }
    }
    Ok(())
}

pub async fn add_grant(
    State(state): State<Arc<AppState>>,
    PageUser(who): PageUser,
    Form(f): Form<GrantForm>,
) -> Result<Response, WebError> {
    require_admin(&who)?;
    check_csrf(&who, &f.csrf)?;
    check_all(&[
        ("exporter", &f.exporter),
        ("description", &f.description),
        ("group", &f.group),
    ])?;
    let user = plain("user", &f.user)?;
    let ifindex = given(&f.interface)
        .map(|i| {
            i.parse::<i64>()
                .map_err(|_| WebError::BadRequest(format!("ifIndex {i:?}: expected a number")))
        })
        .transpose()?;
    let rule = match (given(&f.all), given(&f.exporter), given(&f.group)) {
        (Some(_), None, None) => GrantRule::All,
        (None, Some(exporter), None) => GrantRule::Exporter {
            exporter,
            ifindex,
            description_regex: given(&f.description),
        },
        (None, None, Some(g)) => GrantRule::Group(g),
        _ => {
            return Err(WebError::BadRequest(
                "give exactly one of: everything, an exporter, a group".into(),
            ))
        }
    };
    let client = state.client().await?;
    users::grant(&client, &actor(&who), user, &rule).await?;
    Ok(Redirect::to("/admin/users").into_response())
}

#[derive(Debug, Deserialize)]
pub struct RevokeForm {
    csrf: String,
    user: String,
    grant: String,
}

pub async fn revoke_grant(
    State(state): State<Arc<AppState>>,
    PageUser(who): PageUser,
    Form(f): Form<RevokeForm>,
) -> Result<Response, WebError> {
    require_admin(&who)?;
    check_csrf(&who, &f.csrf)?;
    let id: i32 = f
        .grant
        .parse()
        .map_err(|_| WebError::BadRequest(format!("grant {:?}: expected a number", f.grant)))?;
    let client = state.client().await?;
    users::revoke(&client, &actor(&who), plain("user", &f.user)?, id).await?;
    Ok(Redirect::to("/admin/users").into_response())
}

#[derive(Debug, Deserialize)]
pub struct TokenForm {
    csrf: String,
    user: String,
    name: String,
}

pub async fn add_token(
    State(state): State<Arc<AppState>>,
    PageUser(who): PageUser,
    Form(f): Form<TokenForm>,
) -> Result<Response, WebError> {
    require_admin(&who)?;
    check_csrf(&who, &f.csrf)?;
    let client = state.client().await?;
    let token = auth::create_api_token(
        &client,
        &actor(&who),
        plain("user", &f.user)?,
        plain("name", &f.name)?,
    )
    .await
    .map_err(|e| WebError::BadRequest(format!("{e:#}")))?;
    let body = format!(
        "<h1>API token created</h1><p>Token <strong>{}</strong> for <strong>{}</strong>. It is shown only now; scripts send it as <code>Authorization: Bearer …</code>.</p><p><code id=\"token\">{}</code></p><p><a href=\"/admin/users\">Back to users</a></p>",
        escape(&f.name),
        escape(&f.user),
        escape(&token)
    );
    Ok(layout("API token", Some(&who), &state.site, &body).into_response())
}

pub async fn revoke_token(
    State(state): State<Arc<AppState>>,
    PageUser(who): PageUser,
    Form(f): Form<TokenForm>,
) -> Result<Response, WebError> {
    require_admin(&who)?;
    check_csrf(&who, &f.csrf)?;
    let client = state.client().await?;
    users::revoke_token(
        &client,
        &actor(&who),
        plain("user", &f.user)?,
        plain("name", &f.name)?,
    )
    .await?;
    Ok(Redirect::to("/admin/users").into_response())
}

pub async fn groups_page(
    State(state): State<Arc<AppState>>,
    PageUser(who): PageUser,
) -> Result<Response, WebError> {
    require_admin(&who)?;
    let client = state.client().await?;
    let rows = client
        .query(
            "SELECT g.name, coalesce(g.description, ''),
                    coalesce(string_agg(host(e.address) || ':' || m.ifindex, ', ' ORDER BY e.address, m.ifindex), '')
             FROM interface_groups g
             LEFT JOIN interface_group_members m ON m.group_id = g.id
             LEFT JOIN exporters e ON e.id = m.exporter_id
             GROUP BY g.id ORDER BY g.name",
            &[],
        )
        .await?;
    let csrf = csrf_field(&who);
    let mut body = String::from("<h1>Interface groups</h1><table><thead><tr><th>group</th><th>description</th><th>interfaces</th></tr></thead><tbody>");
    for r in rows {
        let name: String = r.get(0);
        let _ = write!(
            body,
            "<tr><td><a href=\"/report?group={}&amp;by=dst-port\">{}</a></td><td>{}</td><td>{}</td></tr>",
            super::view::encode(&name),
            escape(&name),
            escape(&r.get::<_, String>(1)),
            escape(&r.get::<_, String>(2))
        );
    }
    let _ = write!(
        body,
        "</tbody></table><h2>New group</h2><form method=\"post\" action=\"/admin/groups/add\">{csrf}<label>Name <input name=\"name\" required></label> <label>Description <input name=\"description\"></label> <button type=\"submit\">Create</button></form>\
         <h2>Add an interface</h2><form method=\"post\" action=\"/admin/groups/member\">{csrf}<label>Group <input name=\"group\" required></label> <label>Exporter <input name=\"exporter\" required></label> <label>ifIndex <input name=\"interface\" required inputmode=\"numeric\"></label> <button type=\"submit\">Add</button></form>"
    );
    Ok(layout("Interface groups", Some(&who), &state.site, &body).into_response())
}

#[derive(Debug, Deserialize)]
pub struct GroupForm {
    csrf: String,
    name: String,
    description: Option<String>,
}

pub async fn add_group(
    State(state): State<Arc<AppState>>,
    PageUser(who): PageUser,
    Form(f): Form<GroupForm>,
) -> Result<Response, WebError> {
    require_admin(&who)?;
    check_csrf(&who, &f.csrf)?;
    let client = state.client().await?;
    users::group_add(
        &client,
        &actor(&who),
        plain("name", &f.name)?,
        plain("description", f.description.as_deref().unwrap_or(""))?,
    )
    .await?;
    Ok(Redirect::to("/admin/groups").into_response())
}

#[derive(Debug, Deserialize)]
pub struct MemberForm {
    csrf: String,
    group: String,
    exporter: String,
    interface: String,
}

pub async fn add_member(
    State(state): State<Arc<AppState>>,
    PageUser(who): PageUser,
    Form(f): Form<MemberForm>,
) -> Result<Response, WebError> {
    require_admin(&who)?;
    check_csrf(&who, &f.csrf)?;
    let ifindex: i64 = f.interface.trim().parse().map_err(|_| {
        WebError::BadRequest(format!("ifIndex {:?}: expected a number", f.interface))
    })?;
    let client = state.client().await?;
    users::group_member_add(
        &client,
        &actor(&who),
        plain("group", &f.group)?,
        plain("exporter", &f.exporter)?,
        ifindex,
    )
    .await?;
    Ok(Redirect::to("/admin/groups").into_response())
}

pub async fn audit_page(
    State(state): State<Arc<AppState>>,
    PageUser(who): PageUser,
) -> Result<Response, WebError> {
    require_admin(&who)?;
    let client = state.client().await?;
    let rows = client
        .query(
            "SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), actor, action,
                    coalesce(target, ''), coalesce(detail, '')
             FROM audit_log ORDER BY id DESC LIMIT 500",
            &[],
        )
        .await?;
    let mut body = String::from("<h1>Audit log</h1><p>The latest 500 entries, newest first (UTC).</p><table><thead><tr><th>time</th><th>actor</th><th>action</th><th>target</th><th>detail</th></tr></thead><tbody>");
    for r in rows {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.get::<_, String>(0)),
            escape(&r.get::<_, String>(1)),
            escape(&r.get::<_, String>(2)),
            escape(&r.get::<_, String>(3)),
            escape(&r.get::<_, String>(4))
        );
    }
    body.push_str("</tbody></table>");
    Ok(layout("Audit log", Some(&who), &state.site, &body).into_response())
}
