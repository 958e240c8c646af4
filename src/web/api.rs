//! The JSON API under `/api/v1`: the same queries and access checks as the pages, for
//! scripts with an API token (`Authorization: Bearer fst_...`) or a logged-in browser.
//! `/api/v1/openapi.json` describes it.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::auth::Identity;
use super::view::ViewParams;
use super::{check_scope, restriction, ApiError, ApiUser, AppState, WebError};
use crate::report;

#[derive(Debug, Serialize)]
pub struct ExporterInfo {
    pub address: String,
    pub name: Option<String>,
    pub interfaces: i64,
    pub first_seen: String,
    pub last_seen: String,
}

/// The exporters with at least one interface the user may see (admins: all).
pub async fn visible_exporters(
    client: &Client,
    who: &Identity,
) -> Result<Vec<ExporterInfo>, WebError> {
    let rows = client
        .query(
            "SELECT host(e.address), e.name,
                    (SELECT count(*) FROM interfaces i WHERE i.exporter_id = e.id
                       AND ($1::int IS NULL OR (i.exporter_id, i.ifindex) IN
                            (SELECT v.exporter_id, v.ifindex FROM flowstage_visible_interfaces($1) v))),
                    to_char(e.first_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    to_char(e.last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
             FROM exporters e
             WHERE $1::int IS NULL
                OR e.id IN (SELECT v.exporter_id FROM flowstage_visible_interfaces($1) v)
             ORDER BY e.address",
            &[&restriction(who)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ExporterInfo {
            address: r.get(0),
            name: r.get(1),
            interfaces: r.get(2),
            first_seen: r.get(3),
            last_seen: r.get(4),
        })
        .collect())
}

/// The active alerts this user may see: those about a visible exporter; the
/// appliance-wide ones (spool, archive) only for admins.
pub async fn visible_alerts(
    client: &Client,
    who: &Identity,
) -> Result<Vec<crate::alerts::Alert>, WebError> {
    let all = crate::alerts::active(client)
        .await
        .map_err(WebError::Internal)?;
    let Some(uid) = restriction(who) else {
        return Ok(all);
    };
    let visible: Vec<(String, i64)> = client
        .query(
            "SELECT host(e.address), v.ifindex FROM flowstage_visible_interfaces($1) v
             JOIN exporters e ON e.id = v.exporter_id",
            &[&uid],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // Subjects: "ADDRESS" (an exporter: visible with any of its interfaces),
    // "ADDRESS IFINDEX DIRECTION" (that interface only); anything else (the spool, the
    // archive) is the appliance's, for admins.
    Ok(all
        .into_iter()
        .filter(|a| {
            let parts: Vec<&str> = a.subject.split(' ').collect();
            match parts.as_slice() {
                [address] => visible.iter().any(|(x, _)| x == address),
                [address, ifindex, _] => ifindex
                    .parse::<i64>()
                    .is_ok_and(|i| visible.iter().any(|(x, y)| x == address && *y == i)),
                _ => false,
            }
        })
        .collect())
}

/// The one interface `exporter` (address or name) and `interface` (ifIndex, name or
/// description) name among those the user may see: 404 when none, 400 when several
/// (names from SNMP or DNS need not be unique).
pub async fn resolve_interface(
    client: &Client,
    who: &Identity,
    exporter: &str,
    interface: &str,
) -> Result<(i32, i64), WebError> {
    let rows = client
        .query(
            "SELECT i.exporter_id, i.ifindex FROM interfaces i JOIN exporters e ON e.id = i.exporter_id
             WHERE (host(e.address) = $1 OR e.name = $1)
               AND (i.ifindex::text = $2 OR i.name = $2 OR i.description = $2)
               AND ($3::int IS NULL OR (i.exporter_id, i.ifindex) IN
                    (SELECT v.exporter_id, v.ifindex FROM flowstage_visible_interfaces($3) v))
             LIMIT 2",
            &[&exporter, &interface, &restriction(who)],
        )
        .await?;
    match rows.as_slice() {
        [one] => Ok((one.get(0), one.get(1))),
        [] => Err(WebError::NotFound(
            "no such exporter or interface for you".into(),
        )),
        _ => Err(WebError::BadRequest(format!(
            "exporter={exporter:?} interface={interface:?} names more than one interface: use the exporter's address and the ifIndex"
        ))),
    }
}

pub async fn alerts(
    State(state): State<Arc<AppState>>,
    ApiUser(who): ApiUser,
) -> Result<Response, ApiError> {
    let client = state.client().await?;
    Ok(Json(visible_alerts(&client, &who).await?).into_response())
}

/// Interface traffic measured by the device itself over a period, per source.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// `snmp` (64-bit octet counters) or `sflow` (counter samples).
    pub source: String,
    pub in_bps: f64,
    pub out_bps: f64,
    /// Seconds of the period the counters cover.
    pub covered_secs: f64,
}

/// What the device's own counters say about one interface between `from` and `to`.
pub async fn measured(
    client: &Client,
    (exporter_id, ifindex): (i32, i64),
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Measured>, WebError> {
    let rows = client
        .query(
            "SELECT source, (sum(in_octets) * 8 / sum(secs))::float8,
                    (sum(out_octets) * 8 / sum(secs))::float8, sum(secs)::float8
             FROM interface_counters
             WHERE exporter_id = $1 AND ifindex = $2 AND time > $3 AND time <= $4
             GROUP BY source ORDER BY source",
            &[&exporter_id, &ifindex, &from, &to],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Measured {
            source: r.get(0),
            in_bps: r.get(1),
            out_bps: r.get(2),
            covered_secs: r.get(3),
        })
        .collect())
}

/// The device-measured bits per second of one interface per step of `series`, one
/// overlay per source (SNMP, sFlow). A counter row counts in the step its interval ends
/// in.
pub async fn measured_series(
    client: &Client,
    (exporter_id, ifindex): (i32, i64),
    series: &crate::report::Series,
    direction: crate::collector::batch::Direction,
) -> Result<Vec<super::svg::Overlay>, WebError> {
    let starts: Vec<chrono::DateTime<chrono::Utc>> = series
        .points
        .iter()
        .filter_map(|p| chrono::DateTime::parse_from_rfc3339(&p.time).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .collect();
    if starts.len() != series.points.len() || starts.is_empty() {
        return Ok(Vec::new());
    }
    let inbound = direction == crate::collector::batch::Direction::In;
    let rows = client
        .query(
            "SELECT p.i::int8, c.source,
                    (sum(CASE WHEN $5 THEN c.in_octets ELSE c.out_octets END) * 8 / sum(c.secs))::float8
             FROM unnest($3::timestamptz[]) WITH ORDINALITY AS p(t, i)
             JOIN interface_counters c ON c.time > p.t AND c.time <= p.t + make_interval(secs => $4::float8)
             WHERE c.exporter_id = $1 AND c.ifindex = $2
             GROUP BY p.i, c.source ORDER BY c.source, p.i",
            &[&exporter_id, &ifindex, &starts, &(series.step_secs as f64), &inbound],
        )
        .await?;
    let mut overlays: Vec<super::svg::Overlay> = Vec::new();
    for r in &rows {
        let source: String = r.get(1);
        let label = format!("measured by the device ({source})");
        let index = usize::try_from(r.get::<_, i64>(0) - 1).unwrap_or(usize::MAX);
        if overlays.last().is_none_or(|o| o.label != label) {
            overlays.push(super::svg::Overlay {
                label,
                values: vec![None; starts.len()],
            });
        }
        if let Some(slot) = overlays.last_mut().and_then(|o| o.values.get_mut(index)) {
            *slot = Some(r.get(2));
        }
    }
    Ok(overlays)
}

pub async fn counters(
    State(state): State<Arc<AppState>>,
    ApiUser(who): ApiUser,
    Query(params): Query<ViewParams>,
) -> Result<Response, ApiError> {
    let view =
        super::view::View::parse(&params, chrono::Utc::now()).map_err(WebError::BadRequest)?;
    let (Some(exporter), Some(interface)) = (view.exporter.as_deref(), view.interface.as_deref())
    else {
        return Err(WebError::BadRequest("counters need exporter= and interface=".into()).into());
    };
    let client = state.client().await?;
    let one = resolve_interface(&client, &who, exporter, interface).await?;
    Ok(Json(measured(&client, one, view.from, view.to).await?).into_response())
}

pub async fn me(ApiUser(who): ApiUser) -> Response {
    Json(serde_json::json!({"name": who.name, "role": who.role})).into_response()
}

pub async fn exporters(
    State(state): State<Arc<AppState>>,
    ApiUser(who): ApiUser,
) -> Result<Response, ApiError> {
    let client = state.client().await?;
    Ok(Json(visible_exporters(&client, &who).await?).into_response())
}

#[derive(Debug, Deserialize)]
pub struct InterfaceQuery {
    exporter: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct InterfaceInfo {
    pub exporter: String,
    pub ifindex: i64,
    pub name: Option<String>,
    pub description: Option<String>,
    pub speed_bps: Option<i64>,
}

pub async fn interfaces(
    State(state): State<Arc<AppState>>,
    ApiUser(who): ApiUser,
    Query(q): Query<InterfaceQuery>,
) -> Result<Response, ApiError> {
    if q.exporter
        .as_deref()
        .is_some_and(|e| e.len() > 255 || e.chars().any(char::is_control))
    {
        return Err(WebError::BadRequest(
            "exporter: at most 255 characters, without control characters".into(),
        )
        .into());
    }
    let client = state.client().await?;
    check_scope(&client, &who, q.exporter.as_deref(), None).await?;
    let rows = client
        .query(
            "SELECT host(e.address), i.ifindex, i.name, i.description, i.speed_bps
             FROM interfaces i JOIN exporters e ON e.id = i.exporter_id
             WHERE ($1::text IS NULL OR e.name = $1 OR host(e.address) = $1)
               AND ($2::int IS NULL OR (i.exporter_id, i.ifindex) IN
                    (SELECT v.exporter_id, v.ifindex FROM flowstage_visible_interfaces($2) v))
             ORDER BY e.address, i.ifindex",
            &[&q.exporter, &restriction(&who)],
        )
        .await?;
    let list: Vec<InterfaceInfo> = rows
        .iter()
        .map(|r| InterfaceInfo {
            exporter: r.get(0),
            ifindex: r.get(1),
            name: r.get(2),
            description: r.get(3),
            speed_bps: r.get(4),
        })
        .collect();
    Ok(Json(list).into_response())
}

pub async fn report(
    State(state): State<Arc<AppState>>,
    ApiUser(who): ApiUser,
    Query(params): Query<ViewParams>,
) -> Result<Response, ApiError> {
    let (_, r, _) = super::run_view(&state, &who, &params).await?;
    Ok(Json(r).into_response())
}

#[derive(Debug, Deserialize)]
pub struct SeriesQuery {
    #[serde(flatten)]
    view: ViewParams,
    points: Option<String>,
}

pub async fn series(
    State(state): State<Arc<AppState>>,
    ApiUser(who): ApiUser,
    Query(q): Query<SeriesQuery>,
) -> Result<Response, ApiError> {
    let points = match q.points.as_deref() {
        None | Some("") => 120,
        Some(p) => p
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=2000).contains(n))
            .ok_or_else(|| WebError::BadRequest(format!("points={p:?}: expected 1 to 2000")))?,
    };
    let (view, r, client) = super::run_view(&state, &who, &q.view).await?;
    // A bounded answer: keys × steps.
    if (r.rows.len() as i64) * points > 200_000 {
        return Err(WebError::BadRequest(format!(
            "{} rows × {points} points is too many values; lower top or points",
            r.rows.len()
        ))
        .into());
    }
    let step = report::step_for(view.from, view.to, points);
    let s = report::series(&client, &view.query(restriction(&who)), &r, step, view.unit).await?;
    Ok(Json(s).into_response())
}

/// The OpenAPI 3.0 description of this API.
pub async fn openapi() -> Response {
    let view_params: Vec<serde_json::Value> = [
        ("by", "Report kind: total, exporter, interface, src-as, dst-as, src-ip, dst-ip, src-port, dst-port, proto (default total)"),
        ("exporter", "Exporter name or address"),
        ("interface", "ifIndex, or interface name or description"),
        ("direction", "in (default) or out"),
        ("from", "Start: RFC 3339, YYYY-MM-DD[ HH:MM], now, or -15m/-1h/-2d/-1w (default -1d)"),
        ("to", "End, same forms (default now)"),
        ("top", "Rows before \"other\", 1 to 1000 (default 10)"),
        ("group", "An interface group's name: only its members"),
        ("rank", "How the top N are chosen: total (bytes over the period, default), max (busiest step) or p95 (95th percentile of the steps)"),
        ("unit", "For series: bits (default), packets or flows"),
    ]
    .iter()
    .map(|(name, d)| {
        serde_json::json!({"name": name, "in": "query", "required": false, "description": d, "schema": {"type": "string"}})
    })
    .collect();
    let row = serde_json::json!({"type": "object", "properties": {
        "key": {"type": "string"}, "bytes": {"type": "integer"}, "packets": {"type": "integer"}, "flows": {"type": "integer"}}});
    let errors = serde_json::json!({
        "400": {"description": "a parameter is invalid (the message names it)"},
        "401": {"description": "not logged in and no valid API token"},
        "404": {"description": "no such exporter or interface for this user"},
        "503": {"description": "the database is not reachable"}
    });
    let ok = |schema: serde_json::Value| {
        let mut r = errors.clone();
        r["200"] = serde_json::json!({"description": "ok", "content": {"application/json": {"schema": schema}}});
        r
    };
    let mut series_params = view_params.clone();
    series_params.push(serde_json::json!({"name": "points", "in": "query", "required": false, "description": "About how many time steps, 1 to 2000 (default 120)", "schema": {"type": "string"}}));
    let mut flows_params = view_params.clone();
    flows_params.push(serde_json::json!({"name": "key", "in": "query", "required": false, "description": "A report row's key (of the kind `by` says): only its flows", "schema": {"type": "string"}}));
    flows_params.push(serde_json::json!({"name": "limit", "in": "query", "required": false, "description": "Flows listed, 1 to 1000 (default 100)", "schema": {"type": "string"}}));
    let doc = serde_json::json!({
        "openapi": "3.0.3",
        "info": {"title": "Flowstage API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Flow reports over the appliance's aggregates. Every call sees only what the caller is granted."},
        "components": {"securitySchemes": {
            "token": {"type": "http", "scheme": "bearer", "description": "An API token (fst_...)"},
            "session": {"type": "apiKey", "in": "cookie", "name": "fs_session"}}},
        "security": [{"token": []}, {"session": []}],
        "paths": {
            "/api/v1/me": {"get": {"summary": "The caller", "responses": ok(serde_json::json!({"type": "object"}))}},
            "/api/v1/alerts": {"get": {"summary": "Active alerts the caller may see", "responses": ok(serde_json::json!({"type": "array", "items": {"type": "object", "properties": {
                "rule": {"type": "string"}, "subject": {"type": "string"}, "started_at": {"type": "string"}, "value": {"type": "number"}, "message": {"type": "string"}}}}))}},
            "/api/v1/counters": {"get": {"summary": "An interface's traffic as its own counters measured it (SNMP, sFlow), per source", "parameters": view_params,
                "responses": ok(serde_json::json!({"type": "array", "items": {"type": "object", "properties": {
                    "source": {"type": "string"}, "in_bps": {"type": "number"}, "out_bps": {"type": "number"}, "covered_secs": {"type": "number"}}}}))}},
            "/api/v1/exporters": {"get": {"summary": "Visible exporters", "responses": ok(serde_json::json!({"type": "array", "items": {"type": "object"}}))}},
            "/api/v1/interfaces": {"get": {"summary": "Visible interfaces", "parameters": [{"name": "exporter", "in": "query", "required": false, "schema": {"type": "string"}}],
                "responses": ok(serde_json::json!({"type": "array", "items": {"type": "object"}}))}},
            "/api/v1/report": {"get": {"summary": "Top N + other and the total for a scope and period", "parameters": view_params,
                "responses": ok(serde_json::json!({"type": "object", "properties": {
                    "from": {"type": "string"}, "to": {"type": "string"}, "by": {"type": "string"},
                    "rows": {"type": "array", "items": row}, "total": {"type": "object"},
                    "sources": {"type": "array", "items": {"type": "string"}}}}))}},
            "/api/v1/series": {"get": {"summary": "The report's rows over time (bytes per step)", "parameters": series_params,
                "responses": ok(serde_json::json!({"type": "object", "properties": {
                    "step_secs": {"type": "integer"}, "keys": {"type": "array", "items": {"type": "string"}},
                    "points": {"type": "array", "items": {"type": "object"}}}}))}},
            "/api/v1/flows": {"get": {"summary": "The raw flows behind a report or one of its rows, from the archive", "parameters": flows_params,
                "responses": ok(serde_json::json!({"type": "object", "properties": {
                    "matched": {"type": "integer"}, "flows": {"type": "array", "items": {"type": "object"}}}}))}}
        }
    });
    Json(doc).into_response()
}
