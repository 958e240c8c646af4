//! PostgreSQL access shared by the collector, the reports and the installer: connecting
//! from a libpq-style URL and applying the numbered migrations in `sql/`.

use anyhow::Context;
use tokio_postgres::{Client, NoTls};

use crate::config::redact_url;

/// The migrations in `sql/`, compiled into the binary so an installed collector needs no
/// source tree. Numbers are applied in order, each once, each in its own transaction.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "0001_flow_aggregates",
        include_str!("../sql/0001_flow_aggregates.sql"),
    ),
    (
        2,
        "0002_users_and_grants",
        include_str!("../sql/0002_users_and_grants.sql"),
    ),
    (
        3,
        "0003_web_sessions",
        include_str!("../sql/0003_web_sessions.sql"),
    ),
    (4, "0004_rollups", include_str!("../sql/0004_rollups.sql")),
    (
        5,
        "0005_names_counters_alerts",
        include_str!("../sql/0005_names_counters_alerts.sql"),
    ),
];

/// Connect and spawn the connection task on the current runtime.
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .with_context(|| format!("invalid database URL {}", redact_url(url)))?;
    // A half-open connection must fail, not hang the writer: bounded connect, TCP
    // keepalives, and a statement timeout set below.
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(10));
    }
    config
        .keepalives(true)
        .keepalives_idle(std::time::Duration::from_secs(30));
    let (client, connection) = config
        .connect(NoTls)
        .await
        .with_context(|| format!("connecting to {}", redact_url(url)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("database connection closed: {e}");
        }
    });
    // Notices such as "already exists, skipping" are not news. JIT compilation costs
    // tens of milliseconds on report queries that run in a hundred (measured: a 7-day
    // IP report took 166 ms with it, 100 without) and buys nothing on our short scans.
    client
        .batch_execute("SET client_min_messages = warning; SET jit = off")
        .await?;
    Ok(client)
}

/// Apply pending migrations; returns the versions applied now.
pub async fn migrate(client: &mut Client) -> anyhow::Result<Vec<i32>> {
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        // Serialise concurrent migrators (collector and web starting together) before
        // touching anything, the bookkeeping table included.
        tx.execute("SELECT pg_advisory_xact_lock(7465235)", &[])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .context("creating schema_migrations")?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[&version],
            )
            .await?
            .is_some();
        if done {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("applying migration {name}"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await?;
        tx.commit()
            .await
            .with_context(|| format!("committing migration {name}"))?;
        applied.push(version);
    }
    Ok(applied)
}
