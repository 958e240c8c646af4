//! Reports over the per-minute aggregates: totals and top-N tables by exporter,
//! interface, AS, IP, port or protocol, in text, JSON or CSV. The web UI uses the same
//! queries.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::collector::batch::Direction;
use crate::rollup::{Kind, Level, Plan};
use crate::totals::Totals;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReportBy {
    Total,
    Exporter,
    Interface,
    SrcAs,
    DstAs,
    SrcIp,
    DstIp,
    SrcPort,
    DstPort,
    Proto,
}

impl ReportBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportBy::Total => "total",
            ReportBy::Exporter => "exporter",
            ReportBy::Interface => "interface",
            ReportBy::SrcAs => "src-as",
            ReportBy::DstAs => "dst-as",
            ReportBy::SrcIp => "src-ip",
            ReportBy::DstIp => "dst-ip",
            ReportBy::SrcPort => "src-port",
            ReportBy::DstPort => "dst-port",
            ReportBy::Proto => "proto",
        }
    }

    /// Where a report's rows come from and how they are keyed.
    fn shape(self) -> Shape {
        const EXPORTER: &str = "coalesce(e.name, host(e.address))";
        let (kind, group, key, extra) = match self {
            ReportBy::Total => (Kind::Totals, "", "'total'", ""),
            ReportBy::Exporter => (Kind::Totals, "exporter_id", EXPORTER, ""),
            ReportBy::Interface => (
                Kind::Totals,
                "exporter_id, ifindex",
                "coalesce(e.name, host(e.address)) || ':' || g.ifindex",
                "",
            ),
            ReportBy::SrcAs => (Kind::As, "asn", "g.asn::text", "AND t.side = 0"),
            ReportBy::DstAs => (Kind::As, "asn", "g.asn::text", "AND t.side = 1"),
            ReportBy::SrcIp => (Kind::Ip, "addr", "host(g.addr)", "AND t.side = 0"),
            ReportBy::DstIp => (Kind::Ip, "addr", "host(g.addr)", "AND t.side = 1"),
            ReportBy::SrcPort => (Kind::Port, "port", "g.port::text", "AND t.side = 0"),
            ReportBy::DstPort => (Kind::Port, "port", "g.port::text", "AND t.side = 1"),
            ReportBy::Proto => (Kind::Proto, "proto", "g.proto::text", ""),
        };
        Shape {
            kind,
            group,
            key,
            extra,
        }
    }
}

/// A report kind as SQL. Rows are grouped on the raw columns (`group`, of the
/// aggregate table `t`) and only the groups are turned into text keys (`key`, over the
/// grouped row `g` and, where it names exporters, `e`): a month of minutes has
/// millions of rows and a few hundred groups.
#[derive(Debug, Clone, Copy)]
struct Shape {
    kind: Kind,
    group: &'static str,
    key: &'static str,
    extra: &'static str,
}

impl Shape {
    /// `t.a, t.b, ` for the SELECT list of the grouping query.
    fn select(&self) -> String {
        self.columns().map(|c| format!("t.{c}, ")).collect()
    }

    /// The GROUP BY list, with `more` appended.
    fn group_by(&self, more: &str) -> String {
        let mut list: Vec<String> = self.columns().map(|c| format!("t.{c}")).collect();
        if !more.is_empty() {
            list.push(more.to_string());
        }
        // Without grouping columns, no rows must still mean no groups.
        if list.is_empty() {
            "() HAVING count(*) > 0".to_string()
        } else {
            list.join(", ")
        }
    }

    fn columns(&self) -> impl Iterator<Item = &'static str> {
        self.group
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
    }

    fn join(&self) -> &'static str {
        if self.key.contains("e.") {
            "JOIN exporters e ON e.id = g.exporter_id"
        } else {
            ""
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
    Csv,
}

#[derive(Debug, Clone)]
pub struct ReportQuery {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub by: ReportBy,
    /// Exporter name or address.
    pub exporter: Option<String>,
    /// ifIndex, or interface name/description.
    pub interface: Option<String>,
    /// An interface group's name: only its members.
    pub group: Option<String>,
    pub direction: Direction,
    pub top: usize,
    /// How the top N are chosen.
    pub rank: Rank,
    /// Only interfaces this user may see (`flowstage_visible_interfaces`); None for
    /// the command line, which runs with the database's own access rights.
    pub visible_to: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    pub key: String,
    pub bytes: u64,
    pub packets: u64,
    pub flows: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub from: String,
    pub to: String,
    pub by: ReportBy,
    pub rows: Vec<ReportRow>,
    pub total: Totals,
    /// Where the numbers were read from: `LEVEL FROM/TO` per stretch of the period,
    /// e.g. `day 2026-11-02T00:00:00+00:00/2026-11-04T00:00:00+00:00`.
    pub sources: Vec<String>,
}

fn floor_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp().div_euclid(60) * 60, 0).unwrap_or(t)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

type Params = Vec<Box<dyn ToSql + Sync + Send>>;

/// How the top N are chosen: by bytes over the whole period (Stager's way), or by
/// their busiest step, or by the 95th percentile of their steps (billing's way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rank {
    #[default]
    Total,
    Max,
    P95,
}

/// Steps for ranking by max or percentile: five minutes up to a day, coarser beyond.
fn rank_step(q: &ReportQuery) -> i64 {
    step_for(q.from, q.to, 288).max(300)
}

/// Each key's busiest step (Max) or 95th-percentile step (P95), in bytes per step;
/// steps without traffic count as zero.
async fn rank_statistic(
    client: &Client,
    q: &ReportQuery,
    candidates: &[String],
) -> anyhow::Result<std::collections::HashMap<String, u64>> {
    let shape = q.by.shape();
    let (extra, key, join) = (shape.extra, shape.key, shape.join());
    let step = rank_step(q);
    let plan = plan(client, q, crate::rollup::coarsest_for_step(step)).await?;
    let (from, filter, mut params) = scoped(q, shape.kind, &plan);
    params.push(Box::new(step));
    let n = params.len();
    params.push(Box::new(candidates.to_vec()));
    let keys_param = params.len();
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let sql = format!(
        "SELECT {key} AS k, g.s, g.v FROM (
             SELECT {select}(extract(epoch FROM t.minute)::bigint / ${n}) AS s, sum(t.bytes)::bigint AS v
             FROM {from} WHERE {filter} {extra} GROUP BY {group}
         ) g {join} WHERE {key} = ANY(${keys_param})",
        select = shape.select(),
        group = shape.group_by("s")
    );
    let steps = usize::try_from((plan.to.timestamp() - plan.from.timestamp() + step - 1) / step)
        .unwrap_or(1)
        .max(1);
    let mut per_key: std::collections::HashMap<String, Vec<u64>> = Default::default();
    for r in client.query(&sql, &refs).await? {
        if let Some(k) = r.get::<_, Option<String>>(0) {
            per_key.entry(k).or_default().push(to_u64(r.get(2)));
        }
    }
    Ok(per_key
        .into_iter()
        .map(|(k, mut v)| {
            let value = match q.rank {
                Rank::Max | Rank::Total => v.iter().copied().max().unwrap_or(0),
                Rank::P95 => {
                    // Nearest rank over all steps of the period, the empty ones as zero.
                    v.resize(steps.max(v.len()), 0);
                    v.sort_unstable();
                    let rank = (0.95 * v.len() as f64).ceil() as usize;
                    v[rank.clamp(1, v.len()) - 1]
                }
            };
            (k, value)
        })
        .collect())
}

/// Where a query reads its period from: the rollup levels that tile it. Buckets are
/// whole minutes: the minute `from` falls in is included, `to`'s is not.
async fn plan(client: &Client, q: &ReportQuery, coarsest: Level) -> anyhow::Result<Plan> {
    let (from, to) = (floor_minute(q.from), floor_minute(q.to));
    let rollups: Option<String> = client
        .query_one("SELECT to_regclass('rollup_levels')::text", &[])
        .await?
        .get(0);
    if rollups.is_none() {
        return Ok(Plan::minutes(from, to));
    }
    crate::rollup::plan(client, from, to, coarsest).await
}

/// The FROM clause (`t`, the plan's rows of one aggregate kind),
/// the WHERE clause for a query's direction, scope and access, and their parameters.
fn scoped(q: &ReportQuery, kind: Kind, plan: &Plan) -> (String, String, Params) {
    let mut params: Params = Vec::new();
    let source = crate::rollup::source_sql(plan, kind, &mut params);
    let from = format!("{source} t");
    params.push(Box::new(q.direction as i16));
    let mut filter = format!("t.direction = ${}", params.len());
    if let Some(e) = &q.exporter {
        params.push(Box::new(e.clone()));
        let _ = write!(
            filter,
            " AND t.exporter_id IN (SELECT id FROM exporters WHERE name = ${0} OR host(address) = ${0})",
            params.len()
        );
    }
    if let Some(i) = &q.interface {
        if let Ok(n) = i.parse::<i64>() {
            params.push(Box::new(n));
            let _ = write!(filter, " AND t.ifindex = ${}", params.len());
        } else {
            params.push(Box::new(i.clone()));
            let _ = write!(
                filter,
                " AND EXISTS (SELECT 1 FROM interfaces i WHERE i.exporter_id = t.exporter_id AND i.ifindex = t.ifindex AND (i.name = ${0} OR i.description = ${0}))",
                params.len()
            );
        }
    }
    if let Some(g) = &q.group {
        params.push(Box::new(g.clone()));
        let _ = write!(
            filter,
            " AND (t.exporter_id, t.ifindex) IN (SELECT m.exporter_id, m.ifindex FROM interface_group_members m JOIN interface_groups g ON g.id = m.group_id WHERE g.name = ${})",
            params.len()
        );
    }
    if let Some(uid) = q.visible_to {
        params.push(Box::new(uid));
        let _ = write!(
            filter,
            " AND (t.exporter_id, t.ifindex) IN (SELECT v.exporter_id, v.ifindex FROM flowstage_visible_interfaces(${}) v)",
            params.len()
        );
    }
    (from, filter, params)
}

pub async fn run(client: &Client, q: &ReportQuery) -> anyhow::Result<Report> {
    anyhow::ensure!(q.top >= 1, "--top {}: must be at least 1", q.top);
    let schema: Option<String> = client
        .query_one("SELECT to_regclass('flow_totals')::text", &[])
        .await?
        .get(0);
    anyhow::ensure!(
        schema.is_some(),
        "this database has no Flowstage tables yet; the collector creates them when it starts"
    );
    let shape = q.by.shape();
    let (kind, extra, key, join) = (shape.kind, shape.extra, shape.key, shape.join());
    let plan = plan(client, q, Level::Year).await?;
    let (source, filter, params) = scoped(q, kind, &plan);
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    // Bounded: only the top rows (or, to rank by max or p95, the candidates among the
    // keys with the most bytes) come back; "other" is the rest of the table's sum.
    let candidates = if q.rank == Rank::Total {
        q.top
    } else {
        (q.top * 5).max(200)
    };
    // One scan gives the top rows and, by a window over all groups ("other" included),
    // the table's sum that "other" is computed from.
    let grouped = format!(
        "SELECT {key} AS k, g.b, g.p, g.f, g.tb, g.tp, g.tf FROM (
             SELECT {select}sum(t.bytes)::bigint AS b, sum(t.packets)::bigint AS p,
                    sum(t.flows)::bigint AS f,
                    (sum(sum(t.bytes)) OVER ())::bigint AS tb,
                    (sum(sum(t.packets)) OVER ())::bigint AS tp,
                    (sum(sum(t.flows)) OVER ())::bigint AS tf
             FROM {source}
             WHERE {filter} {extra} GROUP BY {group}
         ) g {join} WHERE {key} IS NOT NULL ORDER BY g.b DESC, k LIMIT {candidates}",
        select = shape.select(),
        group = shape.group_by("")
    );
    let table_sum = format!(
        "SELECT coalesce(sum(t.bytes), 0)::bigint, coalesce(sum(t.packets), 0)::bigint, coalesce(sum(t.flows), 0)::bigint
         FROM {source} WHERE {filter} {extra}"
    );
    let found = client.query(&grouped, &refs).await?;
    let mut grouped_rows: Vec<(String, (u64, u64, u64))> = found
        .iter()
        .map(|r| {
            (
                r.get(0),
                (to_u64(r.get(1)), to_u64(r.get(2)), to_u64(r.get(3))),
            )
        })
        .collect();
    let table_total = match found.first() {
        Some(r) => Totals {
            bytes: to_u64(r.get(4)),
            packets: to_u64(r.get(5)),
            flows: to_u64(r.get(6)),
        },
        // No named key at all: everything there is, is "other".
        None => {
            let all = client.query_one(&table_sum, &refs).await?;
            Totals {
                bytes: to_u64(all.get(0)),
                packets: to_u64(all.get(1)),
                flows: to_u64(all.get(2)),
            }
        }
    };
    if q.rank != Rank::Total {
        let keys: Vec<String> = grouped_rows.iter().map(|(k, _)| k.clone()).collect();
        let stat = rank_statistic(client, q, &keys).await?;
        // Stable: equal statistics keep the order by bytes.
        grouped_rows.sort_by(|a, b| {
            let sa = stat.get(&a.0).copied().unwrap_or(0);
            let sb = stat.get(&b.0).copied().unwrap_or(0);
            sb.cmp(&sa)
        });
    }
    grouped_rows.truncate(q.top);
    let mut other = table_total;
    let mut rows = Vec::new();
    for (key, t) in grouped_rows {
        other.bytes = other.bytes.saturating_sub(t.0);
        other.packets = other.packets.saturating_sub(t.1);
        other.flows = other.flows.saturating_sub(t.2);
        rows.push(ReportRow {
            key,
            bytes: t.0,
            packets: t.1,
            flows: t.2,
        });
    }
    if other != Totals::default() {
        rows.push(ReportRow {
            key: "other".into(),
            bytes: other.bytes,
            packets: other.packets,
            flows: other.flows,
        });
    }
    // Reports over flow_totals itself already have the total.
    let total = if kind == Kind::Totals && extra.is_empty() {
        table_total
    } else {
        let (totals_source, filter, params) = scoped(q, Kind::Totals, &plan);
        let total_sql = format!(
            "SELECT coalesce(sum(t.bytes), 0)::bigint, coalesce(sum(t.packets), 0)::bigint, coalesce(sum(t.flows), 0)::bigint
             FROM {totals_source} WHERE {filter}"
        );
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let t = client.query_one(&total_sql, &refs).await?;
        Totals {
            bytes: to_u64(t.get(0)),
            packets: to_u64(t.get(1)),
            flows: to_u64(t.get(2)),
        }
    };
    Ok(Report {
        from: plan.from.to_rfc3339(),
        to: plan.to.to_rfc3339(),
        by: q.by,
        rows,
        total,
        sources: plan
            .segments
            .iter()
            .map(|s| {
                format!(
                    "{} {}/{}",
                    s.level.as_str(),
                    s.from.to_rfc3339(),
                    s.to.to_rfc3339()
                )
            })
            .collect(),
    })
}

/// What a series counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Measure {
    Bytes,
    Packets,
    Flows,
}

impl Measure {
    fn column(self) -> &'static str {
        match self {
            Measure::Bytes => "bytes",
            Measure::Packets => "packets",
            Measure::Flows => "flows",
        }
    }
}

/// Traffic over time for a report's rows: one value per row key (and "other") per
/// step, so graphs stack to the report's totals.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub step_secs: i64,
    pub measure: Measure,
    pub keys: Vec<String>,
    pub points: Vec<SeriesPoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeriesPoint {
    /// Start of the step, RFC 3339.
    pub time: String,
    /// The measure per key, in the order of `keys`.
    pub values: Vec<u64>,
}

/// The step for about `points` points over a period: whole minutes, at least one.
pub fn step_for(from: DateTime<Utc>, to: DateTime<Utc>, points: i64) -> i64 {
    let span = (to - from).num_seconds().max(60);
    let raw = (span / points.max(1)).max(60);
    [
        60,
        300,
        900,
        1800,
        3600,
        3 * 3600,
        6 * 3600,
        86_400,
        7 * 86_400,
    ]
    .into_iter()
    .find(|s| *s >= raw)
    .unwrap_or(7 * 86_400)
}

pub async fn series(
    client: &Client,
    q: &ReportQuery,
    report: &Report,
    step_secs: i64,
    measure: Measure,
) -> anyhow::Result<Series> {
    let shape = q.by.shape();
    let (extra, key, join) = (shape.extra, shape.key, shape.join());
    let step = step_secs.max(60);
    let plan = plan(client, q, crate::rollup::coarsest_for_step(step)).await?;
    let (source, filter, mut params) = scoped(q, shape.kind, &plan);
    // Steps of a day or a week are the display time zone's calendar days or weeks, as
    // the rollups are; shorter steps are aligned like the rollup hours.
    let calendar = match (step, &plan.settings) {
        (86_400, Some(s)) => Some(("day", s)),
        (604_800, Some(s)) => Some(("week", s)),
        _ => None,
    };
    let offset = plan
        .settings
        .as_ref()
        .map_or(0, |s| i64::from(s.hour_offset_secs));
    let bucket = match calendar {
        Some((level, s)) => {
            params.push(Box::new(s.timezone.clone()));
            let tz = params.len();
            format!(
                "extract(epoch FROM flowstage_bucket('{level}', t.minute, ${tz}, {}, {}))::bigint",
                s.week_start, s.hour_offset_secs
            )
        }
        None => format!(
            "((extract(epoch FROM t.minute)::bigint + {offset}) / {step}) * {step} - {offset}"
        ),
    };
    let top_keys: Vec<String> = report
        .rows
        .iter()
        .filter(|r| r.key != "other")
        .map(|r| r.key.clone())
        .collect();
    params.push(Box::new(top_keys));
    let keys_param = params.len();
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let column = measure.column();
    let sql = format!(
        "SELECT g.s, CASE WHEN {key} = ANY(${keys_param}) THEN {key} END AS k, sum(g.v)::bigint
         FROM (
             SELECT {select}{bucket} AS s, sum(t.{column}) AS v
             FROM {source} WHERE {filter} {extra} GROUP BY {group}
         ) g {join} GROUP BY 1, 2 ORDER BY 1",
        select = shape.select(),
        group = shape.group_by("s")
    );
    let keys: Vec<String> = report.rows.iter().map(|r| r.key.clone()).collect();
    let other = keys.iter().position(|k| k == "other");
    // Every step of the period is a point, traffic or not, so a graph's time axis is
    // the period's.
    let starts: Vec<i64> = match calendar {
        Some((level, s)) => client
            .query(
                "SELECT extract(epoch FROM b)::bigint FROM flowstage_buckets($1, $2, $3, $4, $5, $6) b LIMIT 100000",
                &[
                    &level,
                    &plan.from,
                    &plan.to,
                    &s.timezone,
                    &i32::from(s.week_start),
                    &s.hour_offset_secs,
                ],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect(),
        None => {
            let first = (plan.from.timestamp() + offset).div_euclid(step) * step - offset;
            let end = plan.to.timestamp();
            let count = (end - first + step - 1).div_euclid(step).clamp(0, 100_000);
            (0..count).map(|i| first + step * i).collect()
        }
    };
    let mut points: Vec<SeriesPoint> = starts
        .iter()
        .map(|start| SeriesPoint {
            time: DateTime::from_timestamp(*start, 0)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
            values: vec![0; keys.len()],
        })
        .collect();
    for r in client.query(&sql, &refs).await? {
        let bucket: i64 = r.get(0);
        let k: Option<String> = r.get(1);
        let bytes = to_u64(r.get(2));
        let slot = starts.partition_point(|s| *s <= bucket).checked_sub(1);
        let index = k
            .as_ref()
            .and_then(|k| keys.iter().position(|x| x == k))
            .or(other);
        if let (Some(i), Some(p)) = (index, slot.and_then(|s| points.get_mut(s))) {
            p.values[i] += bytes;
        }
    }
    Ok(Series {
        step_secs,
        measure,
        keys,
        points,
    })
}

impl Report {
    pub fn render(&self, format: ReportFormat) -> anyhow::Result<String> {
        Ok(match format {
            ReportFormat::Json => serde_json::to_string_pretty(self)? + "\n",
            ReportFormat::Csv => {
                let mut o = String::from("key,bytes,packets,flows\n");
                for r in &self.rows {
                    // Quoted when needed; a leading = + - @ is defused so a spreadsheet
                    // does not run it as a formula.
                    let mut key = r.key.clone();
                    if key.starts_with(['=', '+', '-', '@']) {
                        key.insert(0, '\'');
                    }
                    let key = if key.contains([',', '"', '\r', '\n']) {
                        format!("\"{}\"", key.replace('"', "\"\""))
                    } else {
                        key
                    };
                    let _ = writeln!(o, "{key},{},{},{}", r.bytes, r.packets, r.flows);
                }
                o
            }
            ReportFormat::Text => {
                let width = self
                    .rows
                    .iter()
                    .map(|r| r.key.len())
                    .max()
                    .unwrap_or(0)
                    .max(self.by.as_str().len())
                    .max(5);
                let mut o = format!("{} .. {}  by {}\n", self.from, self.to, self.by.as_str());
                let _ = writeln!(
                    o,
                    "{:<width$}  {:>16}  {:>14}  {:>12}  {:>6}",
                    self.by.as_str(),
                    "bytes",
                    "packets",
                    "flows",
                    "%bytes"
                );
                for r in &self.rows {
                    let pct = if self.total.bytes > 0 {
                        r.bytes as f64 * 100.0 / self.total.bytes as f64
                    } else {
                        0.0
                    };
                    let _ = writeln!(
                        o,
                        "{:<width$}  {:>16}  {:>14}  {:>12}  {:>6.2}",
                        r.key, r.bytes, r.packets, r.flows, pct
                    );
                }
                let _ = writeln!(
                    o,
                    "{:<width$}  {:>16}  {:>14}  {:>12}",
                    "TOTAL", self.total.bytes, self.total.packets, self.total.flows
                );
                o
            }
        })
    }
}
