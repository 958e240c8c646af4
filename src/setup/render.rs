//! Rendering every file Flowstage writes on a host from the validated configuration:
//! the tera templates in `templates/` and `units/` are compiled into the binary, so an
//! installed `flowstage-setup` needs no source tree. Rendering is pure; comparing with
//! the disk and writing is `files`' job.

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use super::files::{Affects, BlockPlace, DesiredFile};
use super::secrets::Secrets;
use crate::config::{Config, RetentionConfig, TimeDaemon};

pub const CONFIG_PATH: &str = "/etc/flowstage/flowstage.toml";
pub const SECRETS_PATH: &str = "/etc/flowstage/secrets.toml";
pub const BIN_DIR: &str = "/usr/local/bin";
pub const LOG_DIR: &str = "/var/log/flowstage";
pub const USER: &str = "flowstage";
pub const BINARIES: [&str; 3] = ["flowstage-setup", "flowstage-collector", "flowstage-web"];
pub const SERVICES: [&str; 2] = ["flowstage-collector", "flowstage-web"];
pub const NTPSEC_CONF: &str = "/etc/ntpsec/ntp.conf";
pub const CHRONY_CONF: &str = "/etc/chrony/chrony.conf";
pub const POSTFIX_MAIN_CF: &str = "/etc/postfix/main.cf";
pub const ALIASES: &str = "/etc/aliases";
pub const SYSCTL_CONF: &str = "/etc/sysctl.d/60-flowstage.conf";
pub const CRON_FILE: &str = "/etc/cron.d/flowstage";
pub const LOGROTATE_FILE: &str = "/etc/logrotate.d/flowstage";

const TEMPLATES: &[(&str, &str)] = &[
    ("header.tera", include_str!("../../templates/header.tera")),
    ("ntp.conf", include_str!("../../templates/ntp.conf.tera")),
    (
        "chrony.conf",
        include_str!("../../templates/chrony.conf.tera"),
    ),
    ("main.cf", include_str!("../../templates/main.cf.tera")),
    ("aliases", include_str!("../../templates/aliases.tera")),
    (
        "pg_hba.conf",
        include_str!("../../templates/pg_hba.conf.tera"),
    ),
    (
        "sysctl.conf",
        include_str!("../../templates/sysctl.conf.tera"),
    ),
    ("cron", include_str!("../../templates/cron.tera")),
    ("logrotate", include_str!("../../templates/logrotate.tera")),
    (
        "secrets.toml",
        include_str!("../../templates/secrets.toml.tera"),
    ),
    (
        "flowstage.toml",
        include_str!("../../templates/flowstage.toml.tera"),
    ),
    (
        "flowstage-collector.service",
        include_str!("../../units/flowstage-collector.service"),
    ),
    (
        "flowstage-web.service",
        include_str!("../../units/flowstage-web.service"),
    ),
    (
        "flowstage-status.service",
        include_str!("../../units/flowstage-status.service"),
    ),
    (
        "flowstage-status.timer",
        include_str!("../../units/flowstage-status.timer"),
    ),
    (
        "flowstage-rollup.service",
        include_str!("../../units/flowstage-rollup.service"),
    ),
    (
        "flowstage-rollup.timer",
        include_str!("../../units/flowstage-rollup.timer"),
    ),
    (
        "flowstage-purge.service",
        include_str!("../../units/flowstage-purge.service"),
    ),
    (
        "flowstage-purge.timer",
        include_str!("../../units/flowstage-purge.timer"),
    ),
    (
        "flowstage-poll.service",
        include_str!("../../units/flowstage-poll.service"),
    ),
    (
        "flowstage-poll.timer",
        include_str!("../../units/flowstage-poll.timer"),
    ),
    (
        "flowstage-alerts.service",
        include_str!("../../units/flowstage-alerts.service"),
    ),
    (
        "flowstage-alerts.timer",
        include_str!("../../units/flowstage-alerts.timer"),
    ),
    (
        "flowstage-summary.service",
        include_str!("../../units/flowstage-summary.service"),
    ),
    (
        "flowstage-summary.timer",
        include_str!("../../units/flowstage-summary.timer"),
    ),
    (
        "flowstage-collector.init",
        include_str!("../../units/flowstage-collector.init"),
    ),
    (
        "flowstage-web.init",
        include_str!("../../units/flowstage-web.init"),
    ),
];

/// Units written to `/etc/systemd/system` (and removed by uninstall).
pub const SYSTEMD_UNITS: [&str; 14] = [
    "flowstage-collector.service",
    "flowstage-web.service",
    "flowstage-status.service",
    "flowstage-status.timer",
    "flowstage-rollup.service",
    "flowstage-rollup.timer",
    "flowstage-purge.service",
    "flowstage-purge.timer",
    "flowstage-poll.service",
    "flowstage-poll.timer",
    "flowstage-alerts.service",
    "flowstage-alerts.timer",
    "flowstage-summary.service",
    "flowstage-summary.timer",
];

/// The periodic jobs on systemd hosts (cron entries elsewhere).
pub const TIMERS: [&str; 6] = [
    "flowstage-status.timer",
    "flowstage-rollup.timer",
    "flowstage-purge.timer",
    "flowstage-poll.timer",
    "flowstage-alerts.timer",
    "flowstage-summary.timer",
];

#[derive(Debug, Serialize)]
struct TimeServer {
    name: String,
    pool: bool,
}

#[derive(Debug, Serialize)]
struct TemplateValues {
    site_name: String,
    admin_email: String,
    admin_is_local: bool,
    time_daemon: TimeDaemon,
    time_servers: Vec<TimeServer>,
    relay_host: String,
    db_name: String,
    db_user: String,
    receive_buffer_bytes: usize,
    data_dir: String,
    log_dir: &'static str,
    bin_dir: &'static str,
    config_path: &'static str,
    user: &'static str,
    web_listen: String,
    snmp_interval_secs: u64,
    /// The poll interval in whole minutes for cron's `*/N` (1 to 59).
    snmp_cron_minutes: u64,
    web_privileged_port: bool,
    web_tls: &'static str,
    web_tls_cert: String,
    web_tls_key: String,
    collector_privileged_port: bool,
    collector_listen: Vec<String>,
    metrics: String,
    expected_flows_per_second: u64,
    retention: RetentionView,
    history_timezone: String,
    week_start: &'static str,
}

#[derive(Debug, Serialize)]
struct RetentionView {
    minute_days: u32,
    hour_days: u32,
    day_days: u32,
    raw_days: u32,
}

impl From<RetentionConfig> for RetentionView {
    fn from(r: RetentionConfig) -> Self {
        RetentionView {
            minute_days: r.minute_days,
            hour_days: r.hour_days,
            day_days: r.day_days,
            raw_days: r.raw_days,
        }
    }
}

/// Database and role names from the configured URL (default `flowstage` for both).
pub fn database_names(config: &Config) -> (String, String) {
    let parsed: Option<tokio_postgres::Config> = config.database.url.parse().ok();
    let db = parsed
        .as_ref()
        .and_then(|c| c.get_dbname().map(str::to_string))
        .unwrap_or_else(|| USER.to_string());
    let user = parsed
        .as_ref()
        .and_then(|c| c.get_user().map(str::to_string))
        .unwrap_or_else(|| USER.to_string());
    (db, user)
}

/// The PostgreSQL major version to manage: configured, else the distribution's.
pub fn postgresql_version(config: &Config, os: &super::preflight::OsRelease) -> u32 {
    config
        .database
        .postgresql_version
        .unwrap_or_else(|| os.default_postgresql())
}

pub fn pg_hba_path(version: u32) -> String {
    format!("/etc/postgresql/{version}/main/pg_hba.conf")
}

#[derive(Debug)]
pub struct Renderer {
    tera: tera::Tera,
    context: tera::Context,
}

impl Renderer {
    pub fn new(config: &Config) -> anyhow::Result<Renderer> {
        let mut tera = tera::Tera::default();
        tera.add_raw_templates(TEMPLATES.iter().copied())
            .context("compiling the built-in templates")?;
        tera.autoescape_on(Vec::new());
        let (db_name, db_user) = database_names(config);
        let ctx = TemplateValues {
            site_name: config.site.name.clone(),
            admin_email: config.site.admin_email.clone(),
            admin_is_local: config.site.admin_email.ends_with("@localhost"),
            time_daemon: config.time.daemon,
            time_servers: config
                .time
                .servers
                .iter()
                .map(|s| TimeServer {
                    name: s.clone(),
                    pool: s.contains("pool"),
                })
                .collect(),
            relay_host: config.mail.relay_host.clone().unwrap_or_default(),
            db_name,
            db_user,
            receive_buffer_bytes: config.collector.receive_buffer_bytes,
            data_dir: config.collector.data_dir.display().to_string(),
            log_dir: LOG_DIR,
            bin_dir: BIN_DIR,
            config_path: CONFIG_PATH,
            user: USER,
            web_listen: config.web.listen.to_string(),
            snmp_interval_secs: config.snmp.interval_secs,
            snmp_cron_minutes: config.snmp.interval_secs.div_ceil(60).clamp(1, 59),
            web_privileged_port: config.web.listen.port() < 1024,
            web_tls: match config.web.tls {
                crate::config::TlsMode::Off => "off",
                crate::config::TlsMode::SelfSigned => "self-signed",
                crate::config::TlsMode::Files { .. } => "files",
            },
            web_tls_cert: match &config.web.tls {
                crate::config::TlsMode::Files { cert, .. } => cert.display().to_string(),
                _ => String::new(),
            },
            web_tls_key: match &config.web.tls {
                crate::config::TlsMode::Files { key, .. } => key.display().to_string(),
                _ => String::new(),
            },
            collector_privileged_port: config
                .collector
                .listen
                .iter()
                .chain(&config.collector.sflow_listen)
                .any(|a| a.port() < 1024),
            collector_listen: config
                .collector
                .listen
                .iter()
                .map(|a| a.to_string())
                .collect(),
            metrics: config
                .collector
                .metrics
                .map(|m| m.to_string())
                .unwrap_or_default(),
            expected_flows_per_second: config.collector.expected_flows_per_second,
            retention: config.retention.into(),
            history_timezone: config.history.timezone.clone(),
            week_start: if config.history.week_start == 7 {
                "sunday"
            } else {
                "monday"
            },
        };
        let context = tera::Context::from_serialize(&ctx).context("building template context")?;
        Ok(Renderer { tera, context })
    }

    pub fn render(&self, name: &str) -> anyhow::Result<String> {
        self.tera
            .render(name, &self.context)
            .with_context(|| format!("rendering template {name}"))
    }

    /// The secrets file for these secrets.
    pub fn secrets_file(&self, secrets: &Secrets) -> anyhow::Result<DesiredFile> {
        let mut ctx = self.context.clone();
        ctx.insert("database_password", &secrets.database_password);
        ctx.insert("session_key", &secrets.session_key);
        ctx.insert("snmp", &secrets.snmp);
        let text = self
            .tera
            .render("secrets.toml", &ctx)
            .context("rendering the secrets file")?;
        Ok(DesiredFile::whole(SECRETS_PATH, text, 0o600)
            .owned_by(USER, USER)
            .secret()
            .affecting(Affects::Collector)
            .affecting(Affects::Web))
    }

    /// A fresh `flowstage.toml` from the configuration (the wizard's answers).
    pub fn config_file(&self) -> anyhow::Result<String> {
        self.render("flowstage.toml")
    }

    pub fn time_files(&self, daemon: TimeDaemon) -> anyhow::Result<Vec<DesiredFile>> {
        let file = match daemon {
            TimeDaemon::Ntpsec => DesiredFile::whole(NTPSEC_CONF, self.render("ntp.conf")?, 0o644),
            TimeDaemon::Chrony => {
                DesiredFile::whole(CHRONY_CONF, self.render("chrony.conf")?, 0o644)
            }
            TimeDaemon::None => return Ok(Vec::new()),
        };
        Ok(vec![file.affecting(Affects::TimeDaemon)])
    }

    pub fn mail_files(&self) -> anyhow::Result<Vec<DesiredFile>> {
        Ok(vec![
            DesiredFile::whole(POSTFIX_MAIN_CF, self.render("main.cf")?, 0o644)
                .affecting(Affects::Postfix),
            DesiredFile::block(ALIASES, BlockPlace::Bottom, self.render("aliases")?, 0o644)
                .affecting(Affects::Aliases),
        ])
    }

    pub fn postgres_files(&self, version: u32) -> anyhow::Result<Vec<DesiredFile>> {
        Ok(vec![DesiredFile::block(
            &pg_hba_path(version),
            BlockPlace::Top,
            self.render("pg_hba.conf")?,
            0o640,
        )
        .owned_by("postgres", "postgres")
        .affecting(Affects::Postgres)])
    }

    /// Units, init scripts, cron entries and sysctl: all rendered on every host; the
    /// host decides which are activated.
    pub fn service_files(&self) -> anyhow::Result<Vec<DesiredFile>> {
        let mut files = vec![
            DesiredFile::whole(SYSCTL_CONF, self.render("sysctl.conf")?, 0o644)
                .affecting(Affects::Sysctl),
        ];
        for unit in SYSTEMD_UNITS {
            let mut f = DesiredFile::whole(
                &format!("/etc/systemd/system/{unit}"),
                self.render(unit)?,
                0o644,
            )
            .affecting(Affects::Units);
            if unit == "flowstage-collector.service" {
                f = f.affecting(Affects::Collector);
            }
            if unit == "flowstage-web.service" {
                f = f.affecting(Affects::Web);
            }
            files.push(f);
        }
        for (service, affects) in [
            ("flowstage-collector", Affects::Collector),
            ("flowstage-web", Affects::Web),
        ] {
            files.push(
                DesiredFile::whole(
                    &format!("/etc/init.d/{service}"),
                    self.render(&format!("{service}.init"))?,
                    0o755,
                )
                .affecting(affects),
            );
        }
        files.push(DesiredFile::whole(CRON_FILE, self.render("cron")?, 0o644));
        files.push(DesiredFile::whole(
            LOGROTATE_FILE,
            self.render("logrotate")?,
            0o644,
        ));
        Ok(files)
    }
}

/// Where the binaries to install come from: this program's own directory (the build
/// directory, or /usr/local/bin itself on reconfigure), or
/// `FLOWSTAGE_SETUP_BINARIES_FROM` (tests use small stand-ins instead of copying debug
/// builds into every test root).
pub fn binary_sources() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let dir = match std::env::var_os("FLOWSTAGE_SETUP_BINARIES_FROM") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().context("finding this program's path")?;
            exe.parent()
                .context("this program's path has no directory")?
                .to_path_buf()
        }
    };
    Ok(BINARIES
        .iter()
        .map(|name| (format!("{BIN_DIR}/{name}"), dir.join(name)))
        .collect())
}

/// The installed binaries as desired files (their bytes are the build's).
pub fn binary_files() -> anyhow::Result<Vec<DesiredFile>> {
    let mut files = Vec::new();
    for (target, source) in binary_sources()? {
        let bytes = std::fs::read(&source)
            .with_context(|| format!("reading {} to install it", source.display()))?;
        let mut f = DesiredFile::whole(&target, bytes, 0o755);
        if target.ends_with("collector") {
            f = f.affecting(Affects::Collector);
        }
        if target.ends_with("web") {
            f = f.affecting(Affects::Web);
        }
        files.push(f);
    }
    Ok(files)
}
