//! The HTML pages: login, dashboard, and the report view (time navigator, SVG graph,
//! top-N table with drill-down, CSV export). Plain server-rendered HTML that works
//! without JavaScript; every form carries a CSRF token.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Form, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::auth::{self, Identity};
use super::calendar::Period;
use super::svg::{escape, si};
use super::view::{View, ViewParams};
use super::{restriction, AppState, PageUser, WebError};
use crate::report::{self, ReportBy};

const STYLE: &str = "body{font-family:sans-serif;margin:0;color:#222}header{background:#24405e;color:#fff;padding:.5em 1em;display:flex;gap:1.5em;align-items:center}header a{color:#fff}header form{margin-left:auto}main{padding:1em}table{border-collapse:collapse;margin:1em 0}td,th{border-bottom:1px solid #ddd;padding:.25em .75em;text-align:right}td:first-child,th:first-child{text-align:left}.nav a{margin-right:.75em}.error{color:#a00}form.view label{margin-right:1em}";

const ZOOM_JS: &str = include_str!("../../static/zoom.js");

/// The one script: drag-to-zoom on report graphs (pages work without it).
pub async fn zoom_script() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        )],
        ZOOM_JS,
    )
        .into_response()
}

pub async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/css"))],
        STYLE,
    )
        .into_response()
}

pub fn layout(title: &str, who: Option<&Identity>, site: &str, body: &str) -> Html<String> {
    let nav = match who {
        Some(w) => format!(
            "<a href=\"/\">Dashboard</a><a href=\"/report\">Reports</a>{}<span>{} ({})</span><form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Log out</button></form>",
            if w.role == crate::users::Role::Admin {
                "<a href=\"/admin/users\">Admin</a>"
            } else {
                ""
            },
            escape(&w.name),
            w.role.as_str(),
            escape(&w.csrf)
        ),
        None => String::new(),
    };
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · Flowstage {}</title><link rel=\"stylesheet\" href=\"/static/style.css\"></head><body><header><strong>Flowstage · {}</strong>{nav}</header><main>{body}</main></body></html>",
        escape(title),
        escape(site),
        escape(site)
    ))
}

pub fn error_page(status: StatusCode, message: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><link rel=\"stylesheet\" href=\"/static/style.css\"></head><body><main><h1>{}</h1><p class=\"error\">{}</p><p><a href=\"/\">Dashboard</a></p></main></body></html>",
        status.as_u16(),
        escape(&status.to_string()),
        escape(message)
    ))
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// Only local paths: a login link must not send the user elsewhere.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(|c| c.is_control() || c.is_whitespace()) =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

fn login_page(state: &AppState, next: &str, error: Option<&str>) -> Response {
    let csrf = auth::random_token();
    let body = format!(
        "<h1>Log in</h1>{}<form method=\"post\" action=\"/login\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"next\" value=\"{}\"><p><label>User <input name=\"user\" autocomplete=\"username\" required></label></p><p><label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label></p><p><button type=\"submit\">Log in</button></p></form>",
        error
            .map(|e| format!("<p class=\"error\">{}</p>", escape(e)))
            .unwrap_or_default(),
        escape(next)
    );
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let mut res = (status, layout("Log in", None, &state.site, &body)).into_response();
    set_cookie(
        &mut res,
        &format!(
            "{}={csrf}; Path=/login; HttpOnly; SameSite=Strict{}",
            auth::LOGIN_CSRF_COOKIE,
            if state.secure_cookies { "; Secure" } else { "" }
        ),
    );
    res
}

fn set_cookie(res: &mut Response, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

pub async fn login_form(
    State(state): State<Arc<AppState>>,
    Query(q): Query<LoginQuery>,
) -> Response {
    login_page(&state, &safe_next(q.next.as_deref()), None)
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
    csrf: String,
    next: Option<String>,
}

pub async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, WebError> {
    let next = safe_next(form.next.as_deref());
    let cookie = auth::cookie(&headers, auth::LOGIN_CSRF_COOKIE).unwrap_or_default();
    if !auth::same_token(&cookie, &form.csrf) {
        return Err(WebError::Forbidden(
            "the login form expired or was not sent by this site: reload it".into(),
        ));
    }
    let address = peer.ip().to_string();
    let user = form.user.trim().to_lowercase();
    // No user name is this long or odd: refuse without spending a hash or a throttle
    // entry on it.
    if user.len() > 64
        || user.chars().any(char::is_control)
        || form.password.len() > 1024
        || form.password.contains('\0')
    {
        return Ok(login_page(
            &state,
            &next,
            Some("wrong user name or password"),
        ));
    }
    if let Some(wait) = state.throttle.wait(&user, &address) {
        return Err(WebError::TooManyRequests(wait.as_secs().max(1)));
    }
    // The attempt counts before the (slow) check, so parallel guesses cannot all slip
    // under the limit; a success takes it back.
    state.throttle.failed(&user, &address);
    let client = state.client().await?;
    let checked = {
        let _permit = state
            .password_checks
            .acquire()
            .await
            .map_err(|e| WebError::Internal(e.into()))?;
        auth::check_password(&client, &user, &form.password).await?
    };
    match checked {
        Some(mut who) => {
            state.throttle.forgive(&user, &address);
            let token = auth::create_session(&client, &mut who).await?;
            crate::users::audit(&client, &format!("web:{user}"), "login.ok", &user, &address)
                .await?;
            let mut res = Redirect::to(&next).into_response();
            set_cookie(
                &mut res,
                &format!(
                    "{}={token}; Path=/; HttpOnly; SameSite=Lax{}",
                    auth::SESSION_COOKIE,
                    if state.secure_cookies { "; Secure" } else { "" }
                ),
            );
            Ok(res)
        }
        None => {
            crate::users::audit(
                &client,
                &format!("web:{address}"),
                "login.fail",
                &user,
                &address,
            )
            .await?;
            Ok(login_page(
                &state,
                &next,
                Some("wrong user name or password"),
            ))
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn logout(
    State(state): State<Arc<AppState>>,
    PageUser(who): PageUser,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, WebError> {
    if !auth::same_token(&who.csrf, &form.csrf) {
        return Err(WebError::Forbidden("missing or wrong CSRF token".into()));
    }
    let client = state.client().await?;
    if let Some(token) = auth::cookie(&headers, auth::SESSION_COOKIE) {
        auth::end_session(&client, &token).await?;
    }
    crate::users::audit(
        &client,
        &format!("web:{}", who.name),
        "logout",
        &who.name,
        "",
    )
    .await?;
    let mut res = Redirect::to("/login").into_response();
    set_cookie(
        &mut res,
        &format!(
            "{}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0",
            auth::SESSION_COOKIE
        ),
    );
    Ok(res)
}

fn bits_per_second(bytes: u64, view: &View) -> f64 {
    let secs = (view.to - view.from).num_seconds().max(1) as f64;
    bytes as f64 * 8.0 / secs
}

/// Change against the previous period, e.g. "+12.5 %" or "new".
fn change(now: u64, before: Option<u64>) -> String {
    match before {
        None | Some(0) if now > 0 => "new".into(),
        None | Some(0) => "".into(),
        Some(b) => format!("{:+.1} %", 100.0 * (now as f64 - b as f64) / b as f64),
    }
}

fn report_table(view: &View, r: &report::Report, previous: Option<&report::Report>) -> String {
    let mut t = String::from(
        "<table><thead><tr><th>key</th><th>avg bit/s</th><th>bytes</th><th>packets</th><th>flows</th><th>% of bytes</th><th>raw</th>",
    );
    if previous.is_some() {
        t.push_str("<th>bytes, previous period</th><th>change</th>");
    }
    t.push_str("</tr></thead><tbody>");
    let before = |key: &str| {
        previous.map(|p| {
            p.rows
                .iter()
                .find(|row| row.key == key)
                .map_or(0, |row| row.bytes)
        })
    };
    let total = r.total.bytes.max(1) as f64;
    for (n, row) in r.rows.iter().enumerate() {
        // Drill down: an exporter to its interfaces, an interface to its ports.
        let key = match view.by {
            ReportBy::Exporter if row.key != "other" => format!(
                "<a href=\"{}\">{}</a>",
                escape(&view.link("/report", |v| {
                    v.exporter = Some(row.key.clone());
                    v.by = ReportBy::Interface;
                })),
                escape(&row.key)
            ),
            ReportBy::Interface if row.key != "other" => match row.key.rsplit_once(':') {
                Some((exporter, ifindex)) => format!(
                    "<a href=\"{}\">{}</a>",
                    escape(&view.link("/interface", |v| {
                        v.exporter = Some(exporter.to_string());
                        v.interface = Some(ifindex.to_string());
                        v.by = ReportBy::Total;
                    })),
                    escape(&row.key)
                ),
                None => escape(&row.key),
            },
            _ => escape(&row.key),
        };
        let _ = write!(
            t,
            "<tr><td>{key}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td>",
            si(bits_per_second(row.bytes, view)),
            row.bytes,
            row.packets,
            row.flows,
            100.0 * row.bytes as f64 / total
        );
        // Down to the flows behind the row, from the archive: for the first 100 rows,
        // so that a top 1000 stays a small page (the API takes any key).
        if row.key == "other" || n >= 100 {
            t.push_str("<td></td>");
        } else {
            let _ = write!(
                t,
                "<td><a href=\"{}\">flows</a></td>",
                escape(&format!(
                    "{}&key={}",
                    view.link("/flows", |_| {}),
                    crate::web::view::encode(&row.key)
                ))
            );
        }
        if let Some(b) = before(&row.key) {
            let _ = write!(t, "<td>{b}</td><td>{}</td>", change(row.bytes, Some(b)));
        }
        t.push_str("</tr>");
    }
    let _ = write!(
        t,
        "</tbody><tfoot><tr><th>total</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>100</th><th></th>",
        si(bits_per_second(r.total.bytes, view)),
        r.total.bytes,
        r.total.packets,
        r.total.flows
    );
    if let Some(p) = previous {
        let _ = write!(
            t,
            "<th>{}</th><th>{}</th>",
            p.total.bytes,
            change(r.total.bytes, Some(p.total.bytes))
        );
    }
    t.push_str("</tr></tfoot></table>");
    t
}

pub async fn report(
    State(state): State<Arc<AppState>>,
    PageUser(who): PageUser,
    Query(params): Query<ViewParams>,
) -> Result<Response, WebError> {
    let (view, r, client) = super::run_view(&state, &who, &params).await?;
    let mut body = String::new();
    let scope = match (&view.group, &view.exporter, &view.interface) {
        (Some(g), _, _) => format!("group {g}"),
        (None, Some(e), Some(i)) => format!("{e} interface {i}"),
        (None, Some(e), None) => e.clone(),
        _ => "all visible interfaces".to_string(),
    };
    let _ = write!(
        body,
        "<h1>{} by {}</h1><p>{} to {} {}, {} direction</p>",
        escape(&scope),
        view.by.as_str(),
        state.calendar.show(view.from),
        state.calendar.show(view.to),
        state.calendar.zone_name(),
        if view.direction == crate::collector::batch::Direction::Out {
            "out"
        } else {
            "in"
        }
    );
    body.push_str("<p class=\"nav\">");
    let _ = write!(
        body,
        "<a href=\"{}\">◀ previous</a><a href=\"{}\">next ▶</a>",
        escape(&view.shifted("/report", false, &state.calendar)),
        escape(&view.shifted("/report", true, &state.calendar))
    );
    for period in Period::ALL {
        let _ = write!(
            body,
            "<a href=\"{}\">{}</a>",
            escape(&view.zoomed("/report", period, &state.calendar)),
            period.name()
        );
    }
    for by in [
        ReportBy::Total,
        ReportBy::Exporter,
        ReportBy::Interface,
        ReportBy::SrcAs,
        ReportBy::DstAs,
        ReportBy::SrcIp,
        ReportBy::DstIp,
        ReportBy::SrcPort,
        ReportBy::DstPort,
        ReportBy::Proto,
    ] {
        let _ = write!(
            body,
            "<a href=\"{}\">{}</a>",
            escape(&view.link("/report", |v| v.by = by)),
            by.as_str()
        );
    }
    // Direction, ranking and unit: each a link to the same view with one thing changed.
    type Change<'a> = (&'a str, &'a dyn Fn(&mut View));
    let changes: [Change; 8] = [
        ("in", &|v| {
            v.direction = crate::collector::batch::Direction::In
        }),
        ("out", &|v| {
            v.direction = crate::collector::batch::Direction::Out
        }),
        ("top by total", &|v| v.rank = crate::report::Rank::Total),
        ("by max", &|v| v.rank = crate::report::Rank::Max),
        ("by 95th percentile", &|v| v.rank = crate::report::Rank::P95),
        ("bit/s", &|v| v.unit = crate::report::Measure::Bytes),
        ("pkt/s", &|v| v.unit = crate::report::Measure::Packets),
        ("flows/s", &|v| v.unit = crate::report::Measure::Flows),
    ];
    for (label, change) in changes {
        let _ = write!(
            body,
            "<a href=\"{}\">{label}</a>",
            escape(&view.link("/report", change))
        );
    }
    let _ = write!(
        body,
        "<a href=\"{}\">CSV</a><a href=\"{}\">SVG</a><a href=\"{}\">PNG</a></p>",
        escape(&view.link("/report.csv", |_| {})),
        escape(&view.link("/graph.svg", |_| {})),
        escape(&view.link("/graph.png", |_| {}))
    );
    // Any period by hand (the calendar of the old frontend); the rest of the view stays.
    let _ = write!(
        body,
        "<form method=\"get\" action=\"/report\" class=\"view\"><input type=\"hidden\" name=\"by\" value=\"{}\">",
        view.by.as_str()
    );
    for (name, value) in [
        ("exporter", view.exporter.clone()),
        ("interface", view.interface.clone()),
        ("group", view.group.clone()),
        ("top", Some(view.top.to_string())),
        (
            "direction",
            Some(
                if view.direction == crate::collector::batch::Direction::Out {
                    "out"
                } else {
                    "in"
                }
                .to_string(),
            ),
        ),
    ] {
        if let Some(v) = value {
            let _ = write!(
                body,
                "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
                escape(&v)
            );
        }
    }
    let _ = write!(
        body,
        "<label>From <input name=\"from\" value=\"{}\"></label><label>To <input name=\"to\" value=\"{}\"></label><button type=\"submit\">Show</button></form>",
        view.from.format("%Y-%m-%d %H:%M"),
        view.to.format("%Y-%m-%d %H:%M")
    );
    let _ = write!(
        body,
        "<p><img src=\"{}\" alt=\"traffic by {} over time\" width=\"960\" height=\"360\" data-zoom=\"1\" data-from=\"{}\" data-to=\"{}\" data-left=\"{}\" data-plot=\"{}\" data-width=\"{}\" data-report=\"{}\"></p><script src=\"/static/zoom.js\" defer></script>",
        escape(&view.link("/graph.svg", |_| {})),
        view.by.as_str(),
        view.from.format("%Y-%m-%dT%H:%M:%SZ"),
        view.to.format("%Y-%m-%dT%H:%M:%SZ"),
        super::svg::LEFT,
        super::svg::WIDTH - super::svg::LEFT - super::svg::RIGHT,
        super::svg::WIDTH,
        escape(&view.link("/report", |_| {}))
    );
    // The same report for the period just before, for the change column.
    let span = view.to - view.from;
    let mut earlier = view.query(restriction(&who));
    earlier.from -= span;
    earlier.to -= span;
    let previous = report::run(&client, &earlier).await?;
    // One interface with a known speed: how full it was on average.
    if let (Some(e), Some(i)) = (&view.exporter, &view.interface) {
        let speed: Option<i64> = client
            .query_opt(
                "SELECT i.speed_bps FROM interfaces i JOIN exporters e ON e.id = i.exporter_id
                 WHERE (e.name = $1 OR host(e.address) = $1)
                   AND (i.ifindex::text = $2 OR i.name = $2 OR i.description = $2)
                   AND i.speed_bps > 0
                   AND ($3::int IS NULL OR (i.exporter_id, i.ifindex) IN
                        (SELECT v.exporter_id, v.ifindex FROM flowstage_visible_interfaces($3) v))
                 ORDER BY i.ifindex LIMIT 1",
                &[e, i, &restriction(&who)],
            )
            .await?
            .and_then(|row| row.get(0));
        if let Some(speed) = speed {
            let _ = write!(
                body,
                "<p>Average use: {:.2} % of the interface speed ({}bit/s).</p>",
                100.0 * bits_per_second(r.total.bytes, &view) / speed as f64,
                si(speed as f64)
            );
        }
    }
    body.push_str(&report_table(&view, &r, Some(&previous)));
    Ok(layout(
        &format!("{scope} by {}", view.by.as_str()),
        Some(&who),
        &state.site,
        &body,
    )
    .into_response())
}

pub async fn report_csv(
    State(state): State<Arc<AppState>>,
    PageUser(who): PageUser,
    Query(params): Query<ViewParams>,
) -> Result<Response, WebError> {
    let (view, r, _) = super::run_view(&state, &who, &params).await?;
    let csv = r.render(crate::report::ReportFormat::Csv)?;
    let name = format!(
        "flowstage-{}-{}.csv",
        view.by.as_str(),
        view.from.format("%Y%m%dT%H%M")
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        csv,
    )
        .into_response())
}

/// The graph of a view as SVG text.
async fn graph(state: &AppState, who: &Identity, params: &ViewParams) -> Result<String, WebError> {
    let (mut view, mut r, client) = super::run_view(state, who, params).await?;
    // A readable graph, and a bounded one: at most 20 keys plus "other".
    if view.top > 20 {
        view.top = 20;
        r = report::run(&client, &view.query(restriction(who))).await?;
    }
    let step = report::step_for(view.from, view.to, 120);
    let s = report::series(&client, &view.query(restriction(who)), &r, step, view.unit).await?;
    let title = format!("{} by {}", super::svg::unit_of(&s).0, view.by.as_str());
    // One interface's bits: the device's own counters as lines beside the flows.
    let overlays = match (&view.exporter, &view.interface, view.unit) {
        (Some(exporter), Some(interface), report::Measure::Bytes) if view.by == ReportBy::Total => {
            // Only for exactly one visible interface; names that match several draw
            // the bars alone.
            match super::api::resolve_interface(&client, who, exporter, interface).await {
                Ok(one) => super::api::measured_series(&client, one, &s, view.direction).await?,
                Err(_) => Vec::new(),
            }
        }
        _ => Vec::new(),
    };
    Ok(super::svg::stacked_with_lines(&s, &title, &overlays))
}

pub async fn graph_svg(
    State(state): State<Arc<AppState>>,
    PageUser(who): PageUser,
    Query(params): Query<ViewParams>,
) -> Result<Response, WebError> {
    let svg = graph(&state, &who, &params).await?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

/// The same graph as PNG, rendered on the server from the SVG.
pub async fn graph_png(
    State(state): State<Arc<AppState>>,
    PageUser(who): PageUser,
    Query(params): Query<ViewParams>,
) -> Result<Response, WebError> {
    let svg = graph(&state, &who, &params).await?;
    let png = tokio::task::spawn_blocking(move || super::svg::to_png(&svg))
        .await
        .map_err(|e| WebError::Internal(e.into()))??;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

/// One interface at a glance: its in and out traffic as graphs, and the top five of
/// every report kind for the period, each linking to the full report.
pub async fn interface_page(
    State(state): State<Arc<AppState>>,
    PageUser(who): PageUser,
    Query(params): Query<ViewParams>,
) -> Result<Response, WebError> {
    let mut view = View::parse(&params, chrono::Utc::now()).map_err(WebError::BadRequest)?;
    let (Some(exporter), Some(interface)) = (view.exporter.clone(), view.interface.clone()) else {
        return Err(WebError::BadRequest(
            "an interface page needs exporter= and interface=".into(),
        ));
    };
    let client = state.client().await?;
    super::check_scope(&client, &who, Some(&exporter), Some(&interface)).await?;
    view.top = 5;
    let mut body = format!(
        "<h1>{} interface {}</h1><p>{} to {} {}</p><p class=\"nav\"><a href=\"{}\">◀ previous</a><a href=\"{}\">next ▶</a>",
        escape(&exporter),
        escape(&interface),
        state.calendar.show(view.from),
        state.calendar.show(view.to),
        state.calendar.zone_name(),
        escape(&view.shifted("/interface", false, &state.calendar)),
        escape(&view.shifted("/interface", true, &state.calendar)),
    );
    for period in Period::ALL {
        let _ = write!(
            body,
            "<a href=\"{}\">{}</a>",
            escape(&view.zoomed("/interface", period, &state.calendar)),
            period.name()
        );
    }
    body.push_str("</p>");
    for (label, direction) in [
        ("in", crate::collector::batch::Direction::In),
        ("out", crate::collector::batch::Direction::Out),
    ] {
        let graph = view.link("/graph.svg", |v| {
            v.direction = direction;
            v.by = ReportBy::Total;
        });
        let _ = write!(
            body,
            "<h2>{label}</h2><p><img src=\"{}\" alt=\"{label} traffic\" width=\"960\" height=\"360\"></p>",
            escape(&graph)
        );
    }
    // Beside the flows: what the router's own counters measured (SNMP, sFlow).
    let measured = match super::api::resolve_interface(&client, &who, &exporter, &interface).await {
        Ok(one) => super::api::measured(&client, one, view.from, view.to).await?,
        Err(_) => Vec::new(),
    };
    if !measured.is_empty() {
        let secs = (view.to - view.from).num_seconds().max(1) as f64;
        let mut flow_bps = [0.0; 2];
        for (i, direction) in [
            crate::collector::batch::Direction::In,
            crate::collector::batch::Direction::Out,
        ]
        .into_iter()
        .enumerate()
        {
            let v = View {
                by: ReportBy::Total,
                direction,
                ..view.clone()
            };
            let r = report::run(&client, &v.query(restriction(&who))).await?;
            flow_bps[i] = r.total.bytes as f64 * 8.0 / secs;
        }
        let [flow_in, flow_out] = flow_bps;
        body.push_str("<h2>Measured by the device</h2><table class=\"measured\"><thead><tr><th>source</th><th>in (average)</th><th>out (average)</th><th>covers</th></tr></thead><tbody>");
        let _ = write!(
            body,
            "<tr><td>flows</td><td>{}</td><td>{}</td><td>the period</td></tr>",
            crate::alerts::human_bps(flow_in),
            crate::alerts::human_bps(flow_out)
        );
        for m in &measured {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.0} % of the period</td></tr>",
                escape(&m.source),
                crate::alerts::human_bps(m.in_bps),
                crate::alerts::human_bps(m.out_bps),
                (m.covered_secs * 100.0 / secs).min(100.0)
            );
        }
        body.push_str("</tbody></table>");
    }
    for by in [
        ReportBy::SrcAs,
        ReportBy::DstAs,
        ReportBy::SrcIp,
        ReportBy::DstIp,
        ReportBy::SrcPort,
        ReportBy::DstPort,
        ReportBy::Proto,
    ] {
        let v = View { by, ..view.clone() };
        let r = report::run(&client, &v.query(restriction(&who))).await?;
        let _ = write!(
            body,
            "<h2><a href=\"{}\">{}</a></h2>",
            escape(&v.link("/report", |x| x.top = 20)),
            by.as_str()
        );
        body.push_str(&report_table(&v, &r, None));
    }
    Ok(layout(
        &format!("{exporter} interface {interface}"),
        Some(&who),
        &state.site,
        &body,
    )
    .into_response())
}

/// Per-exporter counters from the running collector (its Prometheus text), if the
/// configuration names its metrics listener and it answers.
async fn collector_health(
    state: &AppState,
) -> Option<std::collections::BTreeMap<String, crate::setup::status::ExporterCounters>> {
    let addr = state.collector_metrics?;
    let client = crate::setup::status::http_client(std::time::Duration::from_secs(2)).ok()?;
    let text = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(crate::setup::status::parse_metrics(&text))
}

pub async fn dashboard(
    State(state): State<Arc<AppState>>,
    PageUser(who): PageUser,
) -> Result<Response, WebError> {
    let client = state.client().await?;
    let restrict = restriction(&who);
    let exporters = super::api::visible_exporters(&client, &who).await?;
    let mut body = String::from("<h1>Last 24 hours</h1>");
    let day = View::parse(
        &ViewParams {
            by: Some("exporter".into()),
            ..Default::default()
        },
        chrono::Utc::now(),
    )
    .map_err(WebError::BadRequest)?;
    let _ = write!(
        body,
        "<p><a href=\"{0}\"><img src=\"{1}\" alt=\"traffic of all visible exporters, last 24 hours\" width=\"960\" height=\"360\"></a></p>",
        escape(&day.link("/report", |_| {})),
        escape(&day.link("/graph.svg", |_| {}))
    );
    let alerts = super::api::visible_alerts(&client, &who).await?;
    if alerts.is_empty() {
        body.push_str("<h2>Alerts</h2><p class=\"alerts-none\">No active alerts.</p>");
    } else {
        let _ = write!(
            body,
            "<h2>Alerts</h2><table class=\"alerts\"><thead><tr><th>since (UTC)</th><th>rule</th><th>about</th><th>what</th></tr></thead><tbody>"
        );
        for a in &alerts {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&a.started_at.format("%Y-%m-%d %H:%M").to_string()),
                escape(&a.rule),
                escape(&a.subject),
                escape(&a.message)
            );
        }
        body.push_str("</tbody></table>");
    }
    let health = collector_health(&state).await;
    body.push_str("<h2>Exporters</h2><table><thead><tr><th>exporter</th><th>address</th><th>interfaces</th><th>first seen</th><th>last seen</th><th>last packet</th><th>loss</th><th>decode errors</th></tr></thead><tbody>");
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    for e in &exporters {
        let (age, loss, errors) = match health.as_ref().map(|h| h.get(&e.address)) {
            Some(Some(c)) => (
                format!("{} s ago", now.saturating_sub(c.last_seen)),
                format!(
                    "{:.2} %",
                    100.0 * c.lost as f64 / (c.flows + c.lost).max(1) as f64
                ),
                c.errors.to_string(),
            ),
            Some(None) => (
                "not since the collector started".into(),
                String::new(),
                String::new(),
            ),
            None => (
                "(collector counters unavailable)".into(),
                String::new(),
                String::new(),
            ),
        };
        let link = day.link("/report", |v| {
            v.exporter = Some(e.address.clone());
            v.by = ReportBy::Interface;
        });
        let _ = write!(
            body,
            "<tr><td><a href=\"{}\">{}</a>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&link),
            escape(e.name.as_deref().unwrap_or(&e.address)),
            // Registered from its flows, not named yet (docs/routers.md).
            if e.name.is_none() {
                " <small class=\"unnamed\">unnamed</small>"
            } else {
                ""
            },
            escape(&e.address),
            e.interfaces,
            escape(&e.first_seen),
            escape(&e.last_seen),
            escape(&age),
            escape(&loss),
            escape(&errors)
        );
    }
    body.push_str("</tbody></table><h2>Busiest interfaces</h2>");
    let busiest = View {
        by: ReportBy::Interface,
        ..day.clone()
    };
    let r = report::run(&client, &busiest.query(restrict)).await?;
    body.push_str(&report_table(&busiest, &r, None));
    Ok(layout("Dashboard", Some(&who), &state.site, &body).into_response())
}
