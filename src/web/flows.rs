//! Drill-down from a report row to the raw flows behind it: the view's scope, period
//! and direction, the row's key as a filter, and the user's grants as the set of
//! (exporter, interface) pairs a flow must be counted on, all answered by the
//! archive's query code (`flowstage-collector query`).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::view::{View, ViewParams};
use super::{ApiError, ApiUser, AppState, Identity, PageUser, WebError};
use crate::archive::filter::{Cmp, Filter, IfSide, Side};
use crate::archive::query::{FlowRow, QueryOptions, QueryResult};
use crate::collector::batch::Direction;
use crate::report::ReportBy;

#[derive(Debug, Deserialize)]
pub struct FlowsQuery {
    #[serde(flatten)]
    view: ViewParams,
    /// The report row's key (with `by`, its kind); none lists all the view's flows.
    key: Option<String>,
    limit: Option<String>,
}

/// The flows of a view (and row key), within the user's grants.
pub async fn find(
    state: &AppState,
    who: &Identity,
    q: &FlowsQuery,
) -> Result<(View, Vec<FlowRow>, u64), WebError> {
    let view = View::parse(&q.view, chrono::Utc::now()).map_err(WebError::BadRequest)?;
    let limit = match q.limit.as_deref() {
        None | Some("") => 100,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| WebError::BadRequest(format!("limit={l:?}: expected 1 to 1000")))?,
    };
    let root = state.archive_root.clone().ok_or_else(|| {
        WebError::NotFound("the flow archive is turned off (collector.archive)".into())
    })?;
    let client = state.client().await?;
    super::check_scope_in_group(
        &client,
        who,
        view.exporter.as_deref(),
        view.interface.as_deref(),
        view.group.as_deref(),
    )
    .await?;
    let key = match q.key.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(k) if k.len() > 255 || k.chars().any(char::is_control) => {
            return Err(WebError::BadRequest(
                "key: at most 255 characters, without control characters".into(),
            ))
        }
        Some(k) => Some(k.to_string()),
    };
    // The (exporter, interface) pairs in scope and granted, as the report counts
    // them: on the input interface for "in", the output one for "out".
    let rows = client
        .query(
            "SELECT e.address, i.ifindex FROM interfaces i JOIN exporters e ON e.id = i.exporter_id
             WHERE ($1::text IS NULL OR e.name = $1 OR host(e.address) = $1)
               AND ($2::text IS NULL OR i.ifindex::text = $2 OR i.name = $2 OR i.description = $2)
               AND ($3::text IS NULL OR (i.exporter_id, i.ifindex) IN (
                    SELECT m.exporter_id, m.ifindex FROM interface_group_members m
                    JOIN interface_groups g ON g.id = m.group_id WHERE g.name = $3))
               AND ($4::int IS NULL OR (i.exporter_id, i.ifindex) IN (
                    SELECT v.exporter_id, v.ifindex FROM flowstage_visible_interfaces($4) v))",
            &[
                &view.exporter,
                &view.interface,
                &view.group,
                &super::restriction(who),
            ],
        )
        .await?;
    let restricted = view.exporter.is_some()
        || view.interface.is_some()
        || view.group.is_some()
        || super::restriction(who).is_some();
    let interfaces: Option<HashSet<([u8; 16], u32)>> = restricted.then(|| {
        rows.iter()
            .filter_map(|r| {
                let addr: IpAddr = r.get(0);
                let ifindex: i64 = r.get(1);
                Some((
                    crate::archive::addr_bytes(addr),
                    u32::try_from(ifindex).ok()?,
                ))
            })
            .collect()
    });
    let filter = match &key {
        None => Filter::All,
        Some(k) => key_filter(&client, view.by, k, view.direction).await?,
    };
    let options = QueryOptions {
        from: view.from,
        to: view.to,
        filter,
        by: None,
        top: 1,
        limit,
        direction: view.direction,
        threads: 2,
        interfaces,
    };
    let window = state.archive_window_secs;
    let (rows, matched) = tokio::task::spawn_blocking(move || {
        let files = crate::archive::query::files_for(&root, options.from, options.to, window)?;
        crate::archive::query::run(&files, &options, &Default::default())
    })
    .await
    .map_err(|e| WebError::Internal(anyhow::anyhow!("archive query task: {e}")))?
    .map(|(result, _)| match result {
        QueryResult::Flows { rows, matched } => (rows, matched),
        QueryResult::Report(_) => (Vec::new(), 0),
    })?;
    Ok((view, rows, matched))
}

/// A report row's key as a filter term.
async fn key_filter(
    client: &tokio_postgres::Client,
    by: ReportBy,
    key: &str,
    direction: Direction,
) -> Result<Filter, WebError> {
    let bad = || WebError::BadRequest(format!("key={key:?} is not a {} key", by.as_str()));
    let number = || key.parse::<u64>().map_err(|_| bad());
    let address = |name: &str| {
        let name = name.to_string();
        async move {
            if let Ok(a) = name.parse::<IpAddr>() {
                return Ok::<_, WebError>(a);
            }
            client
                .query_opt("SELECT address FROM exporters WHERE name = $1", &[&name])
                .await?
                .map(|r| r.get(0))
                .ok_or_else(|| WebError::NotFound(format!("no exporter {name:?}")))
        }
    };
    Ok(match by {
        ReportBy::Total => Filter::All,
        ReportBy::Exporter => Filter::Exporter(address(key).await?),
        ReportBy::Interface => {
            let (exporter, ifindex) = key.rsplit_once(':').ok_or_else(bad)?;
            let ifindex = ifindex.parse::<u32>().map_err(|_| bad())?;
            let side = if direction == Direction::In {
                IfSide::In
            } else {
                IfSide::Out
            };
            Filter::And(
                Box::new(Filter::Exporter(address(exporter).await?)),
                Box::new(Filter::Interface(side, ifindex)),
            )
        }
        ReportBy::SrcAs | ReportBy::DstAs => {
            let side = if by == ReportBy::SrcAs {
                Side::Src
            } else {
                Side::Dst
            };
            Filter::As(side, Cmp::Eq, u32::try_from(number()?).map_err(|_| bad())?)
        }
        ReportBy::SrcIp | ReportBy::DstIp => {
            let side = if by == ReportBy::SrcIp {
                Side::Src
            } else {
                Side::Dst
            };
            Filter::Net(
                side,
                ipnet::IpNet::from(key.parse::<IpAddr>().map_err(|_| bad())?),
            )
        }
        ReportBy::SrcPort | ReportBy::DstPort => {
            let side = if by == ReportBy::SrcPort {
                Side::Src
            } else {
                Side::Dst
            };
            Filter::Port(side, Cmp::Eq, u16::try_from(number()?).map_err(|_| bad())?)
        }
        ReportBy::Proto => Filter::Proto(u8::try_from(number()?).map_err(|_| bad())?),
    })
}

pub async fn api_flows(
    State(state): State<Arc<AppState>>,
    ApiUser(who): ApiUser,
    Query(q): Query<FlowsQuery>,
) -> Result<Response, ApiError> {
    let (_, rows, matched) = find(&state, &who, &q).await?;
    Ok(Json(serde_json::json!({ "matched": matched, "flows": rows })).into_response())
}

pub async fn page(
    State(state): State<Arc<AppState>>,
    PageUser(who): PageUser,
    Query(q): Query<FlowsQuery>,
) -> Result<Response, WebError> {
    let (view, rows, matched) = find(&state, &who, &q).await?;
    let esc = super::svg::escape;
    let mut body = String::new();
    let what = match &q.key {
        Some(k) if !k.is_empty() => format!("{} {}", view.by.as_str(), k),
        _ => "all".to_string(),
    };
    let _ = write!(
        body,
        "<h1>Flows: {}</h1><p>{} to {} {}; {matched} flows matched, {} shown. <a href=\"{}\">back to the report</a></p>",
        esc(&what),
        state.calendar.show(view.from),
        state.calendar.show(view.to),
        state.calendar.zone_name(),
        rows.len(),
        esc(&view.link("/report", |_| {}))
    );
    body.push_str("<table><thead><tr><th>end (UTC)</th><th>exporter</th><th>proto</th><th>source</th><th>destination</th><th>in</th><th>out</th><th>bytes</th><th>packets</th><th>flows</th></tr></thead><tbody>");
    for r in &rows {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}:{}</td><td>{}:{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.end),
            esc(&r.exporter),
            r.proto,
            esc(&r.src_addr),
            r.src_port,
            esc(&r.dst_addr),
            r.dst_port,
            r.input_if,
            r.output_if,
            r.bytes,
            r.packets,
            r.flows
        );
    }
    body.push_str("</tbody></table>");
    Ok(super::pages::layout("Flows", Some(&who), &state.site, &body).into_response())
}
