//! The installer's steps. Each one looks at the host, plans (files to change, actions
//! to run), and only then applies; each is idempotent, so a second run finds nothing
//! to do and an interrupted run converges when re-run. With `--root`, files are
//! written under the root and host actions (packages, services, SQL) are reported as
//! skipped.

use std::collections::HashSet;
use std::fmt;
use std::io::{BufRead, BufReader, IsTerminal};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context as _;

use super::files::{self, Affects, Backup, FileChange};
use super::host::{systemd_is_pid1, Host};
use super::preflight::OsRelease;
use super::render::{self, Renderer, BINARIES, CONFIG_PATH, LOG_DIR, USER};
use super::secrets::Secrets;
use crate::config::{Config, TimeDaemon};

/// Step names, in order; `FLOWSTAGE_SETUP_ABORT_AFTER=<name>` stops after one (tests).
pub const STEP_NAMES: [&str; 9] = [
    "packages",
    "cleanup",
    "user",
    "config",
    "time",
    "mail",
    "postgresql",
    "binaries",
    "services",
];

/// Services the howto disables (printing, NFS, portmap, PPP, inetd/identd).
pub const UNWANTED_SERVICES: [&str; 12] = [
    "cups",
    "cups-browsed",
    "lpd",
    "nfs-common",
    "rpcbind",
    "portmap",
    "pppd-dns",
    "openbsd-inetd",
    "inetutils-inetd",
    "xinetd",
    "oidentd",
    "identd",
];

/// Everything a step needs to know.
#[derive(Debug)]
pub struct Context<'a> {
    pub host: &'a Host,
    pub config: &'a Config,
    /// The configuration file's text as it should be on disk (install only).
    pub config_text: Option<String>,
    pub renderer: Renderer,
    pub os: OsRelease,
    pub pg_version: u32,
    pub secrets: Secrets,
    pub systemd: bool,
    /// `--database URL`: where the installer's own connections go. It never changes
    /// what is rendered (pg_hba block, role names).
    pub database_override: Option<String>,
}

impl<'a> Context<'a> {
    pub fn new(
        host: &'a Host,
        config: &'a Config,
        config_text: Option<String>,
    ) -> anyhow::Result<Context<'a>> {
        let os = OsRelease::read(host);
        let pg_version = render::postgresql_version(config, &os);
        let (secrets, _) = Secrets::load_or_generate(host)?;
        Ok(Context {
            host,
            config,
            config_text,
            renderer: Renderer::new(config)?,
            os,
            pg_version,
            secrets,
            systemd: host.is_live() && systemd_is_pid1(),
            database_override: None,
        })
    }

    /// The database URL with the appliance's password (for the installer's own checks).
    pub fn database_url(&self) -> String {
        let url = self
            .database_override
            .as_ref()
            .unwrap_or(&self.config.database.url);
        // A URL given with its own password (`--database`) is used as it is.
        let has_password = url.contains("password=")
            || url
                .split_once("://")
                .and_then(|(_, rest)| rest.split_once('@'))
                .is_some_and(|(userinfo, _)| userinfo.contains(':'));
        if has_password {
            return url.clone();
        }
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}password={}", self.secrets.database_password)
    }

    /// Every file Flowstage manages on this host, in step order (status uses this).
    pub fn all_files(&self) -> anyhow::Result<Vec<files::DesiredFile>> {
        let mut all = vec![self.renderer.secrets_file(&self.secrets)?];
        if self.config.web.tls == crate::config::TlsMode::SelfSigned {
            all.extend(super::tls::self_signed_files(self.host)?);
        }
        all.extend(self.renderer.time_files(self.config.time.daemon)?);
        all.extend(self.renderer.mail_files()?);
        all.extend(self.renderer.postgres_files(self.pg_version)?);
        all.extend(render::binary_files()?);
        all.extend(self.renderer.service_files()?);
        Ok(all)
    }
}

/// A host action. Its `Display` is what the plan shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    AptInstall(Vec<String>),
    DisableService(String),
    CreateUser,
    CreateDir {
        path: PathBuf,
        mode: u32,
        owner: bool,
    },
    FixDir {
        path: PathBuf,
        mode: u32,
        owner: bool,
    },
    ApplySysctl,
    RestartService(String),
    StartService(String),
    Newaliases,
    CreateCluster,
    StartCluster,
    ReloadCluster,
    CreateRole,
    SetRolePassword,
    CreateDatabase,
    Migrate(Vec<i32>),
    /// The first web admin, with a generated password kept in INITIAL_ADMIN_PASSWORD.
    CreateFirstAdmin,
    DaemonReload,
    EnableService(String),
    /// A service started or restarted because its inputs changed (or it was down).
    StartFlowstage {
        service: String,
        restart: bool,
    },
}

impl Action {
    /// Directory creation: part of the rendered tree, so it runs under `--root` too.
    pub fn is_file_tree(&self) -> bool {
        matches!(self, Action::CreateDir { .. } | Action::FixDir { .. })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::AptInstall(p) => write!(f, "apt-get install {}", p.join(" ")),
            Action::DisableService(s) => write!(f, "disable and stop {s}"),
            Action::CreateUser => write!(f, "create system user and group {USER}"),
            Action::CreateDir { path, mode, owner } => write!(
                f,
                "create directory {} (mode {mode:04o}, owner {})",
                path.display(),
                if *owner { USER } else { "root" }
            ),
            Action::FixDir { path, mode, owner } => write!(
                f,
                "set {} to mode {mode:04o}, owner {}",
                path.display(),
                if *owner { USER } else { "root" }
            ),
            Action::ApplySysctl => write!(f, "apply {}", render::SYSCTL_CONF),
            Action::RestartService(s) => write!(f, "restart {s}"),
            Action::StartService(s) => write!(f, "start {s}"),
            Action::Newaliases => write!(f, "newaliases"),
            Action::CreateCluster => write!(f, "create the PostgreSQL cluster"),
            Action::StartCluster => write!(f, "start the PostgreSQL cluster"),
            Action::ReloadCluster => write!(f, "reload PostgreSQL (pg_hba.conf)"),
            Action::CreateRole => write!(f, "create the database role (SCRAM password)"),
            Action::SetRolePassword => write!(f, "set the database role's password"),
            Action::CreateDatabase => write!(f, "create the database"),
            Action::Migrate(v) => write!(
                f,
                "apply schema migration(s) {}",
                v.iter()
                    .map(|v| format!("{v:04}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Action::CreateFirstAdmin => write!(
                f,
                "create the first web admin (password in {INITIAL_ADMIN_PASSWORD})"
            ),
            Action::DaemonReload => write!(f, "systemctl daemon-reload"),
            Action::EnableService(s) => write!(f, "enable {s} at boot"),
            Action::StartFlowstage { service, restart } => {
                write!(
                    f,
                    "{} {service}",
                    if *restart { "restart" } else { "start" }
                )
            }
        }
    }
}

/// One step's plan.
#[derive(Debug)]
pub struct StepPlan {
    pub name: &'static str,
    pub files: Vec<FileChange>,
    pub actions: Vec<Action>,
    /// Things the operator should know that are not changes (reported either way).
    pub notes: Vec<String>,
    /// Problems that do not stop the run (e.g. a container cannot set the clock).
    pub warnings: Vec<String>,
}

impl StepPlan {
    fn new(name: &'static str) -> StepPlan {
        StepPlan {
            name,
            files: Vec::new(),
            actions: Vec::new(),
            notes: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn changed_files(&self) -> impl Iterator<Item = &FileChange> {
        self.files.iter().filter(|f| f.changed())
    }
}

/// Plan one step. `changed` holds what earlier steps changed (or would change).
pub fn plan(ctx: &Context, name: &str, changed: &HashSet<Affects>) -> anyhow::Result<StepPlan> {
    match name {
        "packages" => plan_packages(ctx),
        "cleanup" => plan_cleanup(ctx),
        "user" => plan_user(ctx),
        "config" => plan_config(ctx),
        "time" => plan_time(ctx),
        "mail" => plan_mail(ctx),
        "postgresql" => plan_postgresql(ctx),
        "binaries" => {
            let mut p = StepPlan::new("binaries");
            p.files = files::compare_all(ctx.host, render::binary_files()?)?;
            Ok(p)
        }
        "services" => plan_services(ctx, changed),
        other => anyhow::bail!("unknown step {other:?}"),
    }
}

/// Apply one planned step: files first (atomically, rolled back together on failure),
/// then actions in order. Returns the affected things of the files changed.
pub fn apply(ctx: &Context, plan: &StepPlan, backup: &mut Backup) -> anyhow::Result<()> {
    let live = ctx.host.is_live();
    let mut files = std::borrow::Cow::Borrowed(&plan.files);
    if live && plan.actions.contains(&Action::CreateCluster) {
        // pg_createcluster refuses to run over an existing pg_hba.conf, and writes the
        // distribution's own: create first, then put the block into that file.
        ctx.host.log(format!("action: {}", Action::CreateCluster));
        run_action(ctx, &Action::CreateCluster)
            .with_context(|| format!("step {}: {}", plan.name, Action::CreateCluster))?;
        let desired = plan.files.iter().map(|f| f.desired.clone()).collect();
        files = std::borrow::Cow::Owned(files::compare_all(ctx.host, desired)?);
    }
    files::apply(ctx.host, &files, backup)
        .with_context(|| format!("step {}: writing files", plan.name))?;
    for action in plan
        .actions
        .iter()
        .filter(|a| **a != Action::CreateCluster)
        .filter(|a| live || a.is_file_tree())
    {
        ctx.host.log(format!("action: {action}"));
        run_action(ctx, action).with_context(|| format!("step {}: {action}", plan.name))?;
    }
    Ok(())
}

fn package_installed(host: &Host, name: &str) -> bool {
    host.probe(Command::new("dpkg-query").args(["-W", "-f", "${Status}", name]))
        .is_some_and(|s| s.contains("install ok installed"))
}

pub fn required_packages(ctx: &Context) -> Vec<String> {
    let mut p: Vec<String> = [
        "postgresql",
        "postfix",
        "bsd-mailx",
        "snmp",
        "rsync",
        "bzip2",
        "zstd",
        "gawk",
        "zip",
        "unzip",
        "cron",
        "logrotate",
        "ca-certificates",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(service) = time_service(ctx.config.time.daemon) {
        p.insert(2, service.to_string());
    }
    p.push(format!("postgresql-{}", ctx.pg_version));
    p
}

fn plan_packages(ctx: &Context) -> anyhow::Result<StepPlan> {
    let mut p = StepPlan::new("packages");
    let wanted = required_packages(ctx);
    if !ctx.host.is_live() {
        p.actions.push(Action::AptInstall(wanted));
        return Ok(p);
    }
    let missing: Vec<String> = wanted
        .iter()
        .filter(|name| !package_installed(ctx.host, name))
        .cloned()
        .collect();
    if missing.is_empty() {
        p.notes
            .push(format!("all {} packages installed", wanted.len()));
    } else {
        p.actions.push(Action::AptInstall(missing));
    }
    Ok(p)
}

fn service_exists(name: &str) -> bool {
    Path::new(&format!("/etc/init.d/{name}")).exists()
        || Path::new(&format!("/lib/systemd/system/{name}.service")).exists()
        || Path::new(&format!("/usr/lib/systemd/system/{name}.service")).exists()
}

fn service_enabled(ctx: &Context, name: &str) -> bool {
    if ctx.systemd {
        return ctx
            .host
            .probe(Command::new("systemctl").args(["is-enabled", name]))
            .is_some_and(|s| s.trim() == "enabled");
    }
    // SysV: a start link in the default runlevel.
    std::fs::read_dir("/etc/rc2.d").is_ok_and(|d| {
        d.filter_map(|e| e.ok()).any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with('S') && n.get(3..) == Some(name)
        })
    })
}

fn plan_cleanup(ctx: &Context) -> anyhow::Result<StepPlan> {
    let mut p = StepPlan::new("cleanup");
    if !ctx.host.is_live() {
        p.notes.push(format!(
            "would disable where present: {}",
            UNWANTED_SERVICES.join(", ")
        ));
        return Ok(p);
    }
    let mut absent = Vec::new();
    let mut disabled = Vec::new();
    for name in UNWANTED_SERVICES {
        if !service_exists(name) {
            absent.push(name);
        } else if service_enabled(ctx, name) || service_running(ctx, name) {
            p.actions.push(Action::DisableService(name.to_string()));
        } else {
            disabled.push(name);
        }
    }
    if !absent.is_empty() {
        p.notes.push(format!("not present: {}", absent.join(", ")));
    }
    if !disabled.is_empty() {
        p.notes
            .push(format!("already disabled: {}", disabled.join(", ")));
    }
    Ok(p)
}

/// Directories Flowstage owns: (path, mode, owned by the flowstage user).
pub fn directories(config: &Config) -> Vec<(PathBuf, u32, bool)> {
    let data = config.collector.data_dir.clone();
    vec![
        (PathBuf::from("/etc/flowstage"), 0o755, false),
        (data.clone(), 0o750, true),
        (data.join("spool"), 0o750, true),
        (PathBuf::from(LOG_DIR), 0o755, false),
    ]
}

fn user_exists() -> bool {
    nix::unistd::User::from_name(USER).ok().flatten().is_some()
}

fn plan_user(ctx: &Context) -> anyhow::Result<StepPlan> {
    let mut p = StepPlan::new("user");
    if ctx.host.is_live() && !user_exists() {
        p.actions.push(Action::CreateUser);
    }
    for (path, mode, owner) in directories(ctx.config) {
        let on_disk = ctx.host.path(&path);
        match std::fs::metadata(&on_disk) {
            Err(_) => p.actions.push(Action::CreateDir { path, mode, owner }),
            Ok(meta) => {
                let mode_ok = meta.permissions().mode() & 0o7777 == mode;
                let owner_ok = !ctx.host.is_live() || {
                    let want = if owner {
                        nix::unistd::User::from_name(USER)
                            .ok()
                            .flatten()
                            .map(|u| u.uid.as_raw())
                    } else {
                        Some(0)
                    };
                    want.is_none_or(|uid| meta.uid() == uid)
                };
                if !mode_ok || !owner_ok {
                    p.actions.push(Action::FixDir { path, mode, owner });
                }
            }
        }
    }
    Ok(p)
}

fn create_dir(ctx: &Context, action: &Action) -> anyhow::Result<()> {
    let (Action::CreateDir { path, mode, owner } | Action::FixDir { path, mode, owner }) = action
    else {
        return Ok(());
    };
    let on_disk = ctx.host.path(path);
    std::fs::create_dir_all(&on_disk).with_context(|| format!("creating {}", on_disk.display()))?;
    if ctx.host.is_live() {
        let (uid, gid) = if *owner {
            let u = nix::unistd::User::from_name(USER)?
                .with_context(|| format!("user {USER} does not exist"))?;
            (u.uid, u.gid)
        } else {
            (0.into(), 0.into())
        };
        nix::unistd::chown(&on_disk, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", on_disk.display()))?;
    }
    std::fs::set_permissions(&on_disk, std::fs::Permissions::from_mode(*mode))
        .with_context(|| format!("chmod {}", on_disk.display()))?;
    Ok(())
}

fn plan_config(ctx: &Context) -> anyhow::Result<StepPlan> {
    let mut p = StepPlan::new("config");
    let mut desired = Vec::new();
    if let Some(text) = &ctx.config_text {
        desired.push(
            files::DesiredFile::whole(CONFIG_PATH, text.clone(), 0o640)
                .owned_by("root", USER)
                .affecting(Affects::Collector)
                .affecting(Affects::Web),
        );
    }
    desired.push(ctx.renderer.secrets_file(&ctx.secrets)?);
    if ctx.config.web.tls == crate::config::TlsMode::SelfSigned {
        desired.extend(super::tls::self_signed_files(ctx.host)?);
    }
    p.files = files::compare_all(ctx.host, desired)?;
    Ok(p)
}

/// Can this machine set its clock? (Containers usually cannot: no CAP_SYS_TIME.)
pub fn can_set_clock() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 25) != 0)
}

/// The package and service of the configured time daemon (None: not managed).
pub fn time_service(daemon: TimeDaemon) -> Option<&'static str> {
    match daemon {
        TimeDaemon::Ntpsec => Some("ntpsec"),
        TimeDaemon::Chrony => Some("chrony"),
        TimeDaemon::None => None,
    }
}

fn plan_time(ctx: &Context) -> anyhow::Result<StepPlan> {
    let mut p = StepPlan::new("time");
    p.files = files::compare_all(ctx.host, ctx.renderer.time_files(ctx.config.time.daemon)?)?;
    let Some(service) = time_service(ctx.config.time.daemon) else {
        p.notes
            .push("time.daemon = none: time keeping is left to the host".into());
        return Ok(p);
    };
    if !ctx.host.is_live() {
        p.actions.push(Action::RestartService(service.to_string()));
        return Ok(p);
    }
    if !can_set_clock() {
        p.warnings.push(format!(
            "this machine cannot set its clock (no CAP_SYS_TIME, a container?): {service} is configured but not started; the host's clock is used"
        ));
        return Ok(p);
    }
    let changed = p.changed_files().next().is_some();
    let conf = match ctx.config.time.daemon {
        TimeDaemon::Chrony => (render::CHRONY_CONF, "/run/chrony/chronyd.pid"),
        _ => (render::NTPSEC_CONF, "/run/ntpd.pid"),
    };
    if !service_running(ctx, service) {
        p.actions.push(Action::StartService(service.to_string()));
    } else if changed || file_newer_than_process(ctx.host, conf.0, conf.1) {
        // Also when an earlier run wrote the file but died before the restart.
        p.actions.push(Action::RestartService(service.to_string()));
    }
    Ok(p)
}

/// Is `file` newer than the process in `pidfile`? (An input changed after it started.)
fn file_newer_than_process(host: &Host, file: &str, pidfile: &str) -> bool {
    let pid = std::fs::read_to_string(host.path(pidfile))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok());
    let started = pid
        .and_then(process_age)
        .and_then(|age| std::time::SystemTime::now().checked_sub(age));
    let modified = std::fs::metadata(host.path(file)).and_then(|m| m.modified());
    matches!((started, modified), (Some(s), Ok(m)) if m > s)
}

fn mtime(host: &Host, path: &str) -> Option<std::time::SystemTime> {
    std::fs::metadata(host.path(path))
        .and_then(|m| m.modified())
        .ok()
}

fn plan_mail(ctx: &Context) -> anyhow::Result<StepPlan> {
    let mut p = StepPlan::new("mail");
    p.files = files::compare_all(ctx.host, ctx.renderer.mail_files()?)?;
    let aliases_changed = p
        .changed_files()
        .any(|f| f.desired.affects.contains(&Affects::Aliases));
    let main_changed = p
        .changed_files()
        .any(|f| f.desired.affects.contains(&Affects::Postfix));
    // aliases.db older than aliases (or missing): an earlier newaliases did not happen.
    let aliases_db_stale = match (
        mtime(ctx.host, "/etc/aliases.db"),
        mtime(ctx.host, render::ALIASES),
    ) {
        (Some(db), Some(text)) => db < text,
        _ => true,
    };
    if aliases_changed || aliases_db_stale {
        p.actions.push(Action::Newaliases);
    }
    if !ctx.host.is_live() {
        p.actions.push(Action::RestartService("postfix".into()));
        return Ok(p);
    }
    if !service_running(ctx, "postfix") {
        p.actions.push(Action::StartService("postfix".into()));
    } else if main_changed
        || file_newer_than_process(ctx.host, render::POSTFIX_MAIN_CF, POSTFIX_MASTER_PID)
    {
        // inet_interfaces changes need a restart, not a reload.
        p.actions.push(Action::RestartService("postfix".into()));
    }
    Ok(p)
}

/// `pg_lsclusters` status of the cluster: None if it does not exist.
fn cluster_online(ctx: &Context) -> Option<bool> {
    let out = ctx.host.probe(Command::new("pg_lsclusters").arg("-h"))?;
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| {
            f.first() == Some(&ctx.pg_version.to_string().as_str()) && f.get(1) == Some(&"main")
        })
        .map(|f| f.get(3).is_some_and(|s| s.starts_with("online")))
}

/// Was pg_hba.conf changed after PostgreSQL last read its configuration (an earlier
/// run wrote it but died before the reload)?
fn hba_newer_than_load(ctx: &Context) -> bool {
    let loaded: Option<f64> = psql(ctx, "SELECT extract(epoch FROM pg_conf_load_time())")
        .ok()
        .and_then(|s| s.parse().ok());
    let modified = mtime(ctx.host, &render::pg_hba_path(ctx.pg_version))
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64());
    matches!((loaded, modified), (Some(l), Some(m)) if m > l)
}

/// Run SQL as the postgres superuser over the local socket; returns stdout.
fn psql(ctx: &Context, sql: &str) -> anyhow::Result<String> {
    let out = ctx.host.run_with_input(
        Command::new("runuser").args([
            "-u",
            "postgres",
            "--",
            "psql",
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-p",
            &cluster_port(ctx).to_string(),
            "-d",
            "postgres",
        ]),
        Some(sql),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn cluster_port(ctx: &Context) -> u16 {
    let conf = ctx.host.path(format!(
        "/etc/postgresql/{}/main/postgresql.conf",
        ctx.pg_version
    ));
    std::fs::read_to_string(conf)
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let l = l.trim();
                let rest = l.strip_prefix("port")?.trim_start().strip_prefix('=')?;
                rest.split('#').next()?.trim().parse().ok()
            })
        })
        .unwrap_or(5432)
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn sql_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// postfix's master process.
pub const POSTFIX_MASTER_PID: &str = "/var/spool/postfix/pid/master.pid";

/// Where install leaves the first admin's generated password (root only).
pub const INITIAL_ADMIN_PASSWORD: &str = "/etc/flowstage/initial_admin_password";

/// Can the appliance's role log in with its password? Returns the pending migrations
/// and whether a web admin exists.
fn login_works(ctx: &Context) -> anyhow::Result<(Vec<i32>, bool)> {
    let url = ctx.database_url();
    runtime()?.block_on(async {
        let client = crate::db::connect(&url).await?;
        let pending = super::status::pending_migrations(&client).await?;
        let admin = pending.is_empty()
            && client
                .query_one("SELECT count(*) FROM users WHERE role = 'admin'", &[])
                .await?
                .get::<_, i64>(0)
                > 0;
        Ok((pending, admin))
    })
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn plan_postgresql(ctx: &Context) -> anyhow::Result<StepPlan> {
    let mut p = StepPlan::new("postgresql");
    p.files = files::compare_all(ctx.host, ctx.renderer.postgres_files(ctx.pg_version)?)?;
    if !ctx.host.is_live() {
        p.actions.extend([
            Action::StartCluster,
            Action::CreateRole,
            Action::CreateDatabase,
            Action::Migrate(crate::db::MIGRATIONS.iter().map(|m| m.0).collect()),
            Action::CreateFirstAdmin,
        ]);
        return Ok(p);
    }
    let hba_changed = p.changed_files().next().is_some();
    match cluster_online(ctx) {
        None => {
            p.actions.push(Action::CreateCluster);
            p.actions.push(Action::StartCluster);
        }
        Some(false) => p.actions.push(Action::StartCluster),
        Some(true) if hba_changed || hba_newer_than_load(ctx) => {
            p.actions.push(Action::ReloadCluster)
        }
        Some(true) => {}
    }
    let (db, role) = render::database_names(ctx.config);
    let online = p.actions.is_empty() || p.actions == [Action::ReloadCluster];
    if online && !hba_changed {
        match login_works(ctx) {
            Ok((pending, true)) if pending.is_empty() => {}
            Ok((pending, _)) if pending.is_empty() => p.actions.push(Action::CreateFirstAdmin),
            Ok((pending, _)) => {
                p.actions.push(Action::Migrate(pending));
                p.actions.push(Action::CreateFirstAdmin);
            }
            Err(_) => {
                let role_exists = psql(
                    ctx,
                    &format!(
                        "SELECT 1 FROM pg_roles WHERE rolname = {}",
                        sql_literal(&role)
                    ),
                )
                .is_ok_and(|s| s == "1");
                let db_exists = psql(
                    ctx,
                    &format!(
                        "SELECT 1 FROM pg_database WHERE datname = {}",
                        sql_literal(&db)
                    ),
                )
                .is_ok_and(|s| s == "1");
                p.actions.push(if role_exists {
                    Action::SetRolePassword
                } else {
                    Action::CreateRole
                });
                if !db_exists {
                    p.actions.push(Action::CreateDatabase);
                }
                p.actions.push(Action::Migrate(Vec::new()));
                p.actions.push(Action::CreateFirstAdmin);
            }
        }
    } else {
        // The cluster is not up yet (or its access rules change): decide after start.
        p.actions.extend([
            Action::CreateRole,
            Action::CreateDatabase,
            Action::Migrate(Vec::new()),
            Action::CreateFirstAdmin,
        ]);
    }
    Ok(p)
}

/// Is a (non-Flowstage) service running?
pub fn service_running(ctx: &Context, name: &str) -> bool {
    if ctx.systemd {
        return Command::new("systemctl")
            .args(["is-active", "--quiet", name])
            .status()
            .is_ok_and(|s| s.success());
    }
    let script = format!("/etc/init.d/{name}");
    Path::new(&script).exists()
        && Command::new(&script)
            .arg("status")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// A Flowstage daemon's pid and start time, if it runs (pidfile under SysV, the
/// unit's main pid under systemd).
pub fn flowstage_pid(ctx_systemd: bool, host: &Host, service: &str) -> Option<u32> {
    let pid: u32 = if ctx_systemd {
        host.probe(Command::new("systemctl").args(["show", "-p", "MainPID", "--value", service]))?
            .trim()
            .parse()
            .ok()?
    } else {
        std::fs::read_to_string(format!("/run/flowstage/{service}.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?
    };
    if pid == 0 {
        return None;
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let name = exe.file_name()?.to_string_lossy().into_owned();
    // A replaced binary shows as "flowstage-collector (deleted)".
    name.starts_with(service).then_some(pid)
}

fn plan_services(ctx: &Context, changed: &HashSet<Affects>) -> anyhow::Result<StepPlan> {
    let mut p = StepPlan::new("services");
    p.files = files::compare_all(ctx.host, ctx.renderer.service_files()?)?;
    let mut affected: HashSet<Affects> = changed.clone();
    for f in p.changed_files() {
        affected.extend(f.desired.affects.iter().copied());
    }
    if !ctx.host.is_live() {
        p.actions.push(Action::ApplySysctl);
        for s in render::SERVICES {
            p.actions.push(Action::StartFlowstage {
                service: s.to_string(),
                restart: false,
            });
        }
        return Ok(p);
    }
    let rmem_max: Option<usize> = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()
        .and_then(|v| v.trim().parse().ok());
    let below = rmem_max.is_some_and(|v| v < ctx.config.collector.receive_buffer_bytes);
    if affected.contains(&Affects::Sysctl) {
        p.actions.push(Action::ApplySysctl);
    } else if below {
        p.warnings.push(format!(
            "net.core.rmem_max is {}, below collector.receive_buffer_bytes ({}); this machine does not let {} change it (a container?)",
            rmem_max.unwrap_or(0),
            ctx.config.collector.receive_buffer_bytes,
            render::SYSCTL_CONF
        ));
    }
    if ctx.systemd {
        if affected.contains(&Affects::Units) {
            p.actions.push(Action::DaemonReload);
        }
        for unit in ["flowstage-collector", "flowstage-web"]
            .into_iter()
            .chain(render::TIMERS)
        {
            if !service_enabled(ctx, unit) {
                p.actions.push(Action::EnableService(unit.to_string()));
            }
        }
        for timer in render::TIMERS {
            if !service_running(ctx, timer) {
                p.actions.push(Action::StartService(timer.into()));
            }
        }
    } else {
        for s in render::SERVICES {
            if !service_enabled(ctx, s) {
                p.actions.push(Action::EnableService(s.to_string()));
            }
        }
        if !service_running(ctx, "cron") {
            p.actions.push(Action::StartService("cron".into()));
        }
    }
    for (service, affects) in [
        ("flowstage-collector", Affects::Collector),
        ("flowstage-web", Affects::Web),
    ] {
        match flowstage_pid(ctx.systemd, ctx.host, service) {
            None => p.actions.push(Action::StartFlowstage {
                service: service.to_string(),
                restart: false,
            }),
            Some(_) if affected.contains(&affects) => p.actions.push(Action::StartFlowstage {
                service: service.to_string(),
                restart: true,
            }),
            Some(pid) => {
                if let Some(input) = input_newer_than(ctx.host, service, pid) {
                    p.notes
                        .push(format!("{input} changed since {service} started"));
                    p.actions.push(Action::StartFlowstage {
                        service: service.to_string(),
                        restart: true,
                    });
                }
            }
        }
    }
    Ok(p)
}

/// How long a process has been running, from /proc.
pub fn process_age(pid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at ") ".
    let after = stat.rsplit_once(") ")?.1;
    let start_ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let boot_secs: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some(std::time::Duration::from_secs_f64(
        (boot_secs - start_ticks as f64 / ticks).max(0.0),
    ))
}

/// The files a daemon reads at start; when one is newer than the running process (an
/// operator edited the configuration, say), the daemon is restarted.
fn daemon_inputs(service: &str) -> Vec<String> {
    vec![
        CONFIG_PATH.to_string(),
        render::SECRETS_PATH.to_string(),
        format!("{}/{service}", render::BIN_DIR),
        format!("/etc/init.d/{service}"),
        format!("/etc/systemd/system/{service}.service"),
    ]
}

/// The newest of a running daemon's inputs, if it is newer than the process.
fn input_newer_than(host: &Host, service: &str, pid: u32) -> Option<String> {
    let started = std::time::SystemTime::now().checked_sub(process_age(pid)?)?;
    daemon_inputs(service).into_iter().find(|path| {
        std::fs::metadata(host.path(path))
            .and_then(|m| m.modified())
            .is_ok_and(|mtime| mtime > started)
    })
}

/// `systemctl VERB name`, or `/etc/init.d/name VERB` where systemd is not PID 1.
pub fn service_command(ctx: &Context, name: &str, verb: &str) -> anyhow::Result<()> {
    if ctx.systemd {
        ctx.host.run(Command::new("systemctl").args([verb, name]))?;
    } else {
        ctx.host
            .run(Command::new(format!("/etc/init.d/{name}")).arg(verb))?;
    }
    Ok(())
}

fn run_action(ctx: &Context, action: &Action) -> anyhow::Result<()> {
    let host = ctx.host;
    match action {
        Action::AptInstall(packages) => apt_install(ctx, packages),
        Action::DisableService(name) => {
            if ctx.systemd {
                host.run(Command::new("systemctl").args(["disable", "--now", name]))?;
                // Socket and path activation would bring it back (rpcbind, cups).
                for trigger in [format!("{name}.socket"), format!("{name}.path")] {
                    if Path::new(&format!("/lib/systemd/system/{trigger}")).exists() {
                        host.run(Command::new("systemctl").args(["disable", "--now", &trigger]))?;
                    }
                }
            } else {
                let _ = host.run(Command::new(format!("/etc/init.d/{name}")).arg("stop"));
                // update-rc.d refuses to disable a service that has no runlevel links.
                if service_enabled(ctx, name) {
                    host.run(Command::new("update-rc.d").args([name.as_str(), "disable"]))?;
                }
            }
            Ok(())
        }
        Action::CreateUser => {
            if nix::unistd::Group::from_name(USER)?.is_none() {
                host.run(Command::new("groupadd").args(["--system", USER]))?;
            }
            host.run(Command::new("useradd").args([
                "--system",
                "--gid",
                USER,
                "--home-dir",
                "/var/lib/flowstage",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                "Flowstage daemons",
                USER,
            ]))?;
            Ok(())
        }
        Action::CreateDir { .. } | Action::FixDir { .. } => create_dir(ctx, action),
        Action::ApplySysctl => {
            if let Err(e) = host.run(Command::new("sysctl").args(["-q", "-p", render::SYSCTL_CONF]))
            {
                // Containers often cannot change net.core; the collector still works
                // with the buffer the kernel allows, and says so in its log.
                host.log(format!("sysctl not applied: {e:#}"));
                eprintln!(
                    "  warning: {} not applied here (container?)",
                    render::SYSCTL_CONF
                );
            }
            Ok(())
        }
        Action::RestartService(name) => service_command(ctx, name, "restart"),
        Action::StartService(name) => service_command(ctx, name, "start"),
        Action::Newaliases => {
            host.run(&mut Command::new("newaliases"))?;
            Ok(())
        }
        Action::CreateCluster => {
            host.run(Command::new("pg_createcluster").args([&ctx.pg_version.to_string(), "main"]))?;
            Ok(())
        }
        Action::StartCluster | Action::ReloadCluster => {
            let verb = if *action == Action::StartCluster {
                "start"
            } else {
                "reload"
            };
            match cluster_online(ctx) {
                Some(true) if verb == "start" => return Ok(()),
                _ => {}
            }
            if ctx.systemd {
                host.run(
                    Command::new("systemctl")
                        .args([verb, &format!("postgresql@{}-main", ctx.pg_version)]),
                )?;
            } else {
                host.run(Command::new("pg_ctlcluster").args([
                    &ctx.pg_version.to_string(),
                    "main",
                    verb,
                ]))?;
            }
            Ok(())
        }
        Action::CreateRole | Action::SetRolePassword => ensure_role(ctx),
        Action::CreateDatabase => ensure_database(ctx),
        Action::Migrate(_) => {
            let url = ctx.database_url();
            let applied = runtime()?.block_on(async {
                let mut client = crate::db::connect(&url).await?;
                crate::db::migrate(&mut client).await
            })?;
            host.log(format!("migrations applied: {applied:?}"));
            Ok(())
        }
        Action::CreateFirstAdmin => {
            let url = ctx.database_url();
            let created = runtime()?.block_on(async {
                let client = crate::db::connect(&url).await?;
                anyhow::Ok(
                    crate::users::ensure_first_admin(&client, "flowstage-setup install").await?,
                )
            })?;
            if let Some(password) = created {
                files::write_atomically(
                    host,
                    &host.path(INITIAL_ADMIN_PASSWORD),
                    format!("{password}\n").as_bytes(),
                    0o600,
                    None,
                )?;
                host.log("created the first web admin");
            }
            Ok(())
        }
        Action::DaemonReload => {
            host.run(Command::new("systemctl").arg("daemon-reload"))?;
            Ok(())
        }
        Action::EnableService(name) => {
            if ctx.systemd {
                host.run(Command::new("systemctl").args(["enable", name]))?;
            } else {
                host.run(Command::new("update-rc.d").args([name.as_str(), "defaults"]))?;
            }
            Ok(())
        }
        Action::StartFlowstage { service, restart } => {
            service_command(ctx, service, if *restart { "restart" } else { "start" })?;
            wait_for_daemon(ctx, service)
        }
    }
}

/// A daemon that exits right after start (bad config, port taken) is a failed step.
fn wait_for_daemon(ctx: &Context, service: &str) -> anyhow::Result<()> {
    for _ in 0..30 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if flowstage_pid(ctx.systemd, ctx.host, service).is_some() {
            // Still up a moment later?
            std::thread::sleep(std::time::Duration::from_millis(300));
            if flowstage_pid(ctx.systemd, ctx.host, service).is_some() {
                return Ok(());
            }
        }
    }
    let log = format!("{LOG_DIR}/{}.log", service.trim_start_matches("flowstage-"));
    let tail = std::fs::read_to_string(&log)
        .map(|t| {
            t.lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join(" / ")
        })
        .unwrap_or_default();
    anyhow::bail!("{service} did not stay up; see {log}: {tail}")
}

fn ensure_role(ctx: &Context) -> anyhow::Result<()> {
    let (_, role) = render::database_names(ctx.config);
    let exists = psql(
        ctx,
        &format!(
            "SELECT 1 FROM pg_roles WHERE rolname = {}",
            sql_literal(&role)
        ),
    )? == "1";
    // PostgreSQL gets a SCRAM verifier computed here, never the password itself (which
    // could otherwise end up in a server log); it travels on psql's stdin, not in argv.
    let verifier =
        postgres_protocol::password::scram_sha_256(ctx.secrets.database_password.as_bytes());
    let verb = if exists { "ALTER" } else { "CREATE" };
    psql(
        ctx,
        &format!(
            "{verb} ROLE {} LOGIN PASSWORD {};\n",
            sql_ident(&role),
            sql_literal(&verifier)
        ),
    )?;
    Ok(())
}

fn ensure_database(ctx: &Context) -> anyhow::Result<()> {
    let (db, role) = render::database_names(ctx.config);
    let exists = psql(
        ctx,
        &format!(
            "SELECT 1 FROM pg_database WHERE datname = {}",
            sql_literal(&db)
        ),
    )? == "1";
    if !exists {
        psql(
            ctx,
            &format!(
                "CREATE DATABASE {} OWNER {}",
                sql_ident(&db),
                sql_ident(&role)
            ),
        )?;
    }
    Ok(())
}

/// apt-get install, non-interactive, postfix preseeded for local-only mail; a progress
/// bar from apt's status pipe on a terminal, percentages in the log otherwise.
fn apt_install(ctx: &Context, packages: &[String]) -> anyhow::Result<()> {
    let host = ctx.host;
    let mailname = crate::config::local_hostname();
    host.run_with_input(
        &mut Command::new("debconf-set-selections"),
        Some(&format!(
            "postfix postfix/main_mailer_type select Local only\npostfix postfix/mailname string {mailname}\n"
        )),
    )?;
    let fresh_lists = std::fs::metadata("/var/lib/apt/lists")
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age.as_secs() < 3600)
        && std::fs::read_dir("/var/lib/apt/lists").is_ok_and(|d| d.count() > 3);
    if !fresh_lists {
        host.run(
            Command::new("apt-get")
                .args(["-q", "update"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(100);
        bar.set_style(
            indicatif::ProgressStyle::with_template("  {bar:40} {pos:>3}% {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let shown = format!("apt-get install {}", packages.join(" "));
    host.log(format!("$ {shown}"));
    // apt's status lines go to fd 3, which the shell joins to our stdout pipe; apt's
    // own output (and the maintainer scripts') goes to stderr. Status-Fd=1 would take
    // stdout away from the maintainer scripts, and some fail without it.
    let mut child = Command::new("sh")
        .args(["-c", "exec apt-get \"$@\" 3>&1 1>&2", "sh"])
        .args([
            "-q",
            "-y",
            "--no-install-recommends",
            "-o",
            "Dpkg::Options::=--force-confdef",
            "-o",
            "Dpkg::Options::=--force-confold",
            "-o",
            "APT::Status-Fd=3",
            "-o",
            "Dpkg::Use-Pty=0",
            "install",
        ])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    let stderr = child.stderr.take();
    let err_thread = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(e) = stderr {
            for line in BufReader::new(e).lines().map_while(Result::ok) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        text
    });
    let mut last_logged = 0u64;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            // pmstatus:<package>:<percent>:<message> / dlstatus:...
            let mut parts = line.splitn(4, ':');
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some("pmstatus" | "dlstatus"), Some(_pkg), Some(pct), Some(msg)) => {
                    let pct = pct.parse::<f64>().unwrap_or(0.0) as u64;
                    if let Some(bar) = &bar {
                        bar.set_position(pct.min(100));
                        bar.set_message(msg.to_string());
                    } else if pct >= last_logged + 10 {
                        eprintln!("  apt: {pct:>3}% {msg}");
                        last_logged = pct;
                    }
                }
                _ => host.log(format!("  apt: {line}")),
            }
        }
    }
    let status = child.wait()?;
    let err_text = err_thread.join().unwrap_or_default();
    for l in err_text.lines() {
        host.log(format!("  apt stderr: {l}"));
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if !status.success() {
        anyhow::bail!(
            "{shown} failed ({status}): {}",
            err_text
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    Ok(())
}

/// Binaries that `binaries` installs, for uninstall.
pub fn installed_binaries() -> Vec<String> {
    BINARIES
        .iter()
        .map(|b| format!("{}/{b}", render::BIN_DIR))
        .collect()
}
