//! `flowstage-setup`: the appliance installer and configuration manager. `check` runs
//! the preflight; `install` and `reconfigure` walk the same idempotent steps (plan,
//! show, apply); `status` checks what is really running; `uninstall` takes it all back.
//! `--root DIR` renders the whole appliance under DIR without touching the host.

pub mod checks;
pub mod files;
pub mod host;
pub mod preflight;
pub mod render;
pub mod routers;
pub mod secrets;
pub mod snippets;
pub mod status;
pub mod steps;
pub mod tls;
pub mod uninstall;
pub mod wizard;

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use checks::{CheckReport, Level};
use files::Backup;
use host::Host;
use render::CONFIG_PATH;
use steps::{Context, STEP_NAMES};

use crate::config::{Config, RawConfig};

#[derive(Debug, Parser)]
#[command(
    name = "flowstage-setup",
    version,
    about = "Install, reconfigure, check and remove the Flowstage appliance on this host"
)]
pub struct SetupCli {
    /// Read and write every file under DIR instead of /; package, service and SQL
    /// actions are planned and reported as skipped.
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Configuration file (under --root if given). Install and reconfigure always use
    /// /etc/flowstage/flowstage.toml; another file is for check, status and --dry-run.
    #[arg(long, global = true, default_value = CONFIG_PATH)]
    pub config: PathBuf,
    /// Database URL (libpq style) for the checks, overriding the configuration.
    #[arg(long, global = true)]
    pub database: Option<String>,
    #[command(subcommand)]
    pub command: SetupCommand,
}

#[derive(Debug, Subcommand)]
pub enum SetupCommand {
    /// Preflight: can Flowstage be installed here, and what should you know first?
    Check(CheckArgs),
    /// Install and start the appliance (a wizard on a terminal, or --answers FILE --yes).
    Install(InstallArgs),
    /// Render everything from the configuration and apply only the difference.
    Reconfigure(ReconfigureArgs),
    /// Health checks: ok / warn / fail each; exit 0 all ok, 1 warnings, 2 failures.
    Status(StatusArgs),
    /// Stop and remove services, units, binaries and managed blocks; restore originals.
    Uninstall(UninstallArgs),
    /// Web users, roles and grants.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Routers: exporter names and interface descriptions.
    #[command(subcommand)]
    Routers(RoutersCommand),
}

#[derive(Debug, Subcommand)]
pub enum RoutersCommand {
    /// Import Stager-style exporters.cfg (ADDRESS NAME) and routers.cfg (ROUTER IFINDEX
    /// DESCRIPTION) into the database; idempotent. Formats: docs/routers.md.
    Import {
        /// Default /etc/flowstage/exporters.cfg when it exists.
        #[arg(long)]
        exporters: Option<PathBuf>,
        /// Default /etc/flowstage/routers.cfg when it exists.
        #[arg(long)]
        routers: Option<PathBuf>,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// List every change (a readable diff), not only the counts.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Print the router-side configuration that exports flows to this appliance.
    Snippet {
        #[arg(long, value_enum)]
        vendor: snippets::Vendor,
        #[arg(long, value_enum)]
        version: snippets::ExportVersion,
        /// The address routers send to. Default: collector.listen's address when it is
        /// a specific one, else this host's first non-loopback address.
        #[arg(long)]
        address: Option<std::net::IpAddr>,
        /// The UDP port. Default: collector.listen's.
        #[arg(long)]
        port: Option<u16>,
        /// Export 1 in N packets. Default: 1000 for junos and nokia-sros (inline
        /// sampling), else 1 (every packet).
        #[arg(long)]
        sampling: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add a user; prints a generated password once unless --password-stdin.
    Add {
        name: String,
        /// admin or viewer.
        #[arg(long, default_value = "viewer")]
        role: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users with their grants.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Let a user see interfaces: --all, --exporter E [--interface N | --description RE],
    /// or --group G. Rules also cover interfaces discovered later.
    Grant {
        name: String,
        #[arg(long, conflicts_with_all = ["exporter", "group"])]
        all: bool,
        /// Exporter address or name.
        #[arg(long)]
        exporter: Option<String>,
        /// One interface (ifIndex) of the exporter.
        #[arg(long, requires = "exporter")]
        interface: Option<i64>,
        /// Only interfaces whose description matches this regular expression.
        #[arg(long, requires = "exporter")]
        description: Option<String>,
        /// An interface group.
        #[arg(long, conflicts_with = "exporter")]
        group: Option<String>,
    },
    /// Remove a grant (its number from `users list`).
    Revoke { name: String, grant: i32 },
    /// Make a user an admin or a viewer (their sessions end).
    Role { name: String, role: String },
    /// Disable a user (sessions end, logins refused).
    Disable { name: String },
    /// Enable a disabled user.
    Enable { name: String },
    /// Create an API token for a user's scripts; printed once (send it as
    /// `Authorization: Bearer TOKEN`).
    Token { name: String, token_name: String },
    /// List API tokens (names and dates; the tokens themselves are never stored).
    Tokens,
    /// Revoke a user's API token.
    TokenRevoke { name: String, token_name: String },
    /// Set a user's password (generated and printed once unless --password-stdin).
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Go on with an unsupported OS (reported as a warning).
    #[arg(long)]
    pub force: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Answers file (same format as /etc/flowstage/flowstage.toml).
    #[arg(long, value_name = "FILE")]
    pub answers: Option<PathBuf>,
    /// Never ask: use the answers file, the existing configuration, or the defaults.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Install on an unsupported OS.
    #[arg(long)]
    pub force: bool,
    /// Print the plan and the diffs, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ReconfigureArgs {
    /// Print the plan and unified diffs, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Mail the report to the admin when its result changed since the last `--mail` run
    /// (the hourly timer uses this).
    #[arg(long)]
    pub mail: bool,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Also drop the database and role, and delete flow data, logs, configuration,
    /// secrets and the system user.
    #[arg(long)]
    pub purge_data: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// Only one run changes a host at a time: a second one stops at once instead of
/// interleaving its writes with the first's.
fn lock(host: &Host) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let path = host.path("/run/flowstage-setup.lock");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        anyhow::anyhow!(
            "another flowstage-setup is changing this machine ({} is locked); wait for it",
            path.display()
        )
    })
}

/// Run a `flowstage-setup` command; returns the process exit code.
pub fn setup_main(cli: SetupCli) -> anyhow::Result<u8> {
    let mut host = Host::new(cli.root.clone());
    let config_path = host.path(&cli.config);
    // The daemons and units always read /etc/flowstage/flowstage.toml: installing or
    // reconfiguring from another file would leave them reading something else.
    let writes = matches!(
        &cli.command,
        SetupCommand::Install(InstallArgs { dry_run: false, .. })
            | SetupCommand::Reconfigure(ReconfigureArgs { dry_run: false })
    );
    if writes && cli.config != Path::new(CONFIG_PATH) {
        anyhow::bail!(
            "--config {}: install and reconfigure always use {CONFIG_PATH} (install from another file with --answers FILE; --config is for check, status and --dry-run)",
            cli.config.display()
        );
    }
    let changes_host = host.is_live()
        && match &cli.command {
            SetupCommand::Install(a) => !a.dry_run,
            SetupCommand::Reconfigure(a) => !a.dry_run,
            SetupCommand::Uninstall(_) => true,
            _ => false,
        };
    let _lock = if changes_host {
        Some(lock(&host)?)
    } else {
        None
    };
    match cli.command {
        SetupCommand::Check(args) => {
            let config = load_config_or_default(&config_path)?;
            let report = CheckReport::new(preflight::run(
                &host,
                &config,
                preflight::PreflightOptions { force: args.force },
            ));
            print_report(&report, args.json)?;
            print_sizing(&config, args.json);
            Ok(report.exit_code())
        }
        SetupCommand::Install(args) => {
            let Some((config, text)) = install_config(&host, &config_path, &args)? else {
                eprintln!("Nothing installed.");
                return Ok(1);
            };
            if !args.dry_run {
                host.open_log("install")?;
            }
            let pre = CheckReport::new(preflight::run(
                &host,
                &config,
                preflight::PreflightOptions { force: args.force },
            ));
            eprintln!("Preflight:");
            eprint!("{}", indent(&pre.to_text()));
            print_sizing(&config, false);
            if pre.worst() == Level::Fail && host.is_live() {
                anyhow::bail!("preflight failed; nothing was changed (see above)");
            }
            let mut ctx = Context::new(&host, &config, Some(text))?;
            ctx.database_override = cli.database.clone();
            let outcome = run_steps(&ctx, args.dry_run)?;
            if !args.dry_run {
                eprintln!();
                eprintln!("Flowstage is installed on {}.", config.site.name);
                eprintln!(
                    "  Flows:   send NetFlow v5/v9 or IPFIX to UDP {}",
                    config
                        .collector
                        .listen
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                eprintln!("  Web UI:  {}/", config.web.local_url());
                if ctx.host.path(steps::INITIAL_ADMIN_PASSWORD).exists() {
                    eprintln!(
                        "  Admin:   user \"admin\", password in {} (root only); change it with `flowstage-setup users passwd admin`",
                        steps::INITIAL_ADMIN_PASSWORD
                    );
                }
                eprintln!("  Reports: flowstage-collector report --by dst-port --from -1h");
                eprintln!("  Health:  flowstage-setup status");
                if let Some(log) = ctx.host.log_path() {
                    eprintln!("  Log of this run: {}", log.display());
                }
            }
            Ok(outcome)
        }
        SetupCommand::Reconfigure(args) => {
            let config = load_config(&config_path)?;
            if !args.dry_run {
                host.open_log("reconfigure")?;
            }
            let mut ctx = Context::new(&host, &config, None)?;
            ctx.database_override = cli.database.clone();
            run_steps(&ctx, args.dry_run)
        }
        SetupCommand::Status(args) => {
            let checks = match load_config(&config_path) {
                Ok(config) => {
                    let mut ctx = Context::new(&host, &config, None)?;
                    ctx.database_override = cli.database.clone();
                    status::run(&ctx)?
                }
                Err(e) => vec![checks::Check::fail("config", format!("{e:#}"))],
            };
            let report = CheckReport::new(checks);
            print_report(&report, args.json)?;
            if args.mail {
                mail_if_changed(&host, &config_path, &report)?;
            }
            Ok(report.exit_code())
        }
        SetupCommand::Users(cmd) => {
            let mut config = load_config_or_default(&config_path)?;
            config.resolve_password()?;
            if let Some(url) = &cli.database {
                config.database_url = url.clone();
            }
            users_command(&config.database_url, cmd)?;
            Ok(0)
        }
        SetupCommand::Routers(cmd) => {
            let mut config = load_config_or_default(&config_path)?;
            if let RoutersCommand::Snippet {
                vendor,
                version,
                address,
                port,
                sampling,
            } = cmd
            {
                let listen = &config.collector.listen;
                let address = address
                    .or_else(|| snippets::default_address(listen))
                    .context("no address of this host to point routers at: give --address")?;
                let port = port
                    .or_else(|| listen.first().map(|a| a.port()))
                    .unwrap_or(2055);
                let sampling = sampling.unwrap_or_else(|| vendor.default_sampling());
                return match snippets::render(vendor, version, address, port, sampling) {
                    Ok(text) => {
                        print!("{text}");
                        Ok(0)
                    }
                    Err(e) => {
                        eprintln!("flowstage-setup: {e}");
                        Ok(2)
                    }
                };
            }
            // Only the import needs the database (and the password file).
            config.resolve_password()?;
            if let Some(url) = &cli.database {
                config.database_url = url.clone();
            }
            routers_command(&config.database_url, &config.names.precedence, cmd)
        }
        SetupCommand::Uninstall(args) => {
            if !args.yes {
                if !std::io::stdin().is_terminal() {
                    anyhow::bail!(
                        "no terminal to confirm on: run `flowstage-setup uninstall --yes`"
                    );
                }
                let sure = dialoguer::Confirm::new()
                    .with_prompt(if args.purge_data {
                        "Remove Flowstage AND delete its database, flow data and configuration?"
                    } else {
                        "Remove Flowstage (keeping its database, data and configuration)?"
                    })
                    .default(false)
                    .interact()?;
                if !sure {
                    eprintln!("Nothing removed.");
                    return Ok(1);
                }
            }
            host.open_log("uninstall")?;
            let config = load_config_or_default(&config_path)?;
            uninstall::run(&host, &config, args.purge_data)?;
            Ok(0)
        }
    }
}

fn routers_command(
    database_url: &str,
    precedence: &[String],
    cmd: RoutersCommand,
) -> anyhow::Result<u8> {
    let RoutersCommand::Import {
        exporters,
        routers: routers_path,
        dry_run,
        verbose,
    } = cmd
    else {
        anyhow::bail!("not an import");
    };
    let pick = |given: Option<PathBuf>, default: &str| {
        given.or_else(|| Some(PathBuf::from(default)).filter(|p| p.exists()))
    };
    let exporters_path = pick(exporters, "/etc/flowstage/exporters.cfg");
    let routers_path = pick(routers_path, "/etc/flowstage/routers.cfg");
    anyhow::ensure!(
        exporters_path.is_some() || routers_path.is_some(),
        "nothing to import: give --exporters FILE and/or --routers FILE"
    );
    let mut errors = Vec::new();
    let exporters = match &exporters_path {
        Some(p) => routers::parse_exporters(&routers::read(p)?, &p.display().to_string())
            .unwrap_or_else(|e| {
                errors.extend(e);
                Vec::new()
            }),
        None => Vec::new(),
    };
    let routers_name = routers_path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let interfaces = match &routers_path {
        Some(p) => routers::parse_routers(&routers::read(p)?, &routers_name).unwrap_or_else(|e| {
            errors.extend(e);
            Vec::new()
        }),
        None => Vec::new(),
    };
    let actor = crate::users::cli_actor();
    steps::runtime()?.block_on(async {
        let mut client = crate::db::connect(database_url).await?;
        crate::db::migrate(&mut client).await?;
        let changes = if errors.is_empty() {
            let exporters_name = exporters_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let files = (exporters_name.as_str(), routers_name.as_str());
            match routers::plan(&client, &exporters, &interfaces, files).await? {
                Ok(c) => c,
                Err(e) => {
                    errors.extend(e);
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        if !errors.is_empty() {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("nothing imported: {} line(s) to fix", errors.len());
            return Ok(2);
        }
        if !dry_run {
            routers::apply(&mut client, &changes, &actor, precedence).await?;
        }
        print!("{}", routers::describe(&changes, verbose, dry_run));
        Ok(0)
    })
}

fn read_password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Ok((line.trim_end_matches(['\r', '\n']).to_string(), false))
    } else {
        Ok((crate::users::generate_password()?, true))
    }
}

fn users_command(database_url: &str, cmd: UsersCommand) -> anyhow::Result<()> {
    use crate::users::{self, GrantRule, Role};
    let actor = users::cli_actor();
    steps::runtime()?.block_on(async {
        let client = crate::db::connect(database_url).await?;
        match cmd {
            UsersCommand::Add {
                name,
                role,
                password_stdin,
            } => {
                let role: Role = role.parse()?;
                let (password, generated) = read_password(password_stdin)?;
                users::add(&client, &actor, &name, role, &password).await?;
                eprintln!("added {} {name}", role.as_str());
                if generated {
                    println!("password for {name} (shown once): {password}");
                }
            }
            UsersCommand::List { json } => {
                let list = users::list(&client).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                } else {
                    for u in &list {
                        println!(
                            "{:<20} {:<6} {}{}",
                            u.name,
                            u.role.as_str(),
                            if u.disabled { "disabled " } else { "" },
                            u.last_login
                                .as_deref()
                                .map(|l| format!("last login {l}"))
                                .unwrap_or_else(|| "never logged in".into())
                        );
                        for (id, what) in &u.grants {
                            println!("    grant {id}: {what}");
                        }
                    }
                }
            }
            UsersCommand::Grant {
                name,
                all,
                exporter,
                interface,
                description,
                group,
            } => {
                let rule = match (all, exporter, group) {
                    (true, _, _) => GrantRule::All,
                    (false, Some(exporter), None) => GrantRule::Exporter {
                        exporter,
                        ifindex: interface,
                        description_regex: description,
                    },
                    (false, None, Some(g)) => GrantRule::Group(g),
                    _ => anyhow::bail!("say what to grant: --all, --exporter E or --group G"),
                };
                let id = users::grant(&client, &actor, &name, &rule).await?;
                println!("grant {id}: {name} may see {rule}");
            }
            UsersCommand::Revoke { name, grant } => {
                users::revoke(&client, &actor, &name, grant).await?;
                println!("revoked grant {grant} of {name}");
            }
            UsersCommand::Token { name, token_name } => {
                let token =
                    crate::web::auth::create_api_token(&client, &actor, &name, &token_name).await?;
                println!("API token {token_name} for {name} (shown once): {token}");
            }
            UsersCommand::Tokens => {
                for t in users::tokens(&client).await? {
                    println!(
                        "{:<20} {:<20} created {} last used {}",
                        t.user,
                        t.name,
                        t.created_at,
                        t.last_used.as_deref().unwrap_or("never")
                    );
                }
            }
            UsersCommand::TokenRevoke { name, token_name } => {
                users::revoke_token(&client, &actor, &name, &token_name).await?;
                println!("revoked token {token_name} of {name}");
            }
            UsersCommand::Role { name, role } => {
                let role: Role = role.parse()?;
                users::set_role(&client, &actor, &name, role).await?;
                println!("{name} is now {}", role.as_str());
            }
            UsersCommand::Disable { name } => {
                users::set_disabled(&client, &actor, &name, true).await?;
                println!("disabled {name}");
            }
            UsersCommand::Enable { name } => {
                users::set_disabled(&client, &actor, &name, false).await?;
                println!("enabled {name}");
            }
            UsersCommand::Passwd {
                name,
                password_stdin,
            } => {
                let (password, generated) = read_password(password_stdin)?;
                users::set_password(&client, &actor, &name, &password).await?;
                if generated {
                    println!("new password for {name} (shown once): {password}");
                } else {
                    println!("password of {name} changed");
                }
            }
        }
        anyhow::Ok(())
    })
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn print_report(report: &CheckReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

fn print_sizing(config: &Config, json: bool) {
    if json {
        return;
    }
    let need = preflight::sizing(config);
    eprintln!(
        "Sizing estimate for {} flows/s: database {}, data directory {} (raw archive {} days + spool).",
        config.collector.expected_flows_per_second,
        preflight::human_bytes(need.database_bytes),
        preflight::human_bytes(need.data_dir_bytes),
        config.retention.raw_days
    );
}

/// Load and validate a configuration file; errors name the key and line.
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    RawConfig::load(path)
        .and_then(|r| r.validate())
        .with_context(|| format!("invalid configuration {}", path.display()))
}

fn load_config_or_default(path: &Path) -> anyhow::Result<Config> {
    if path.exists() {
        load_config(path)
    } else {
        Ok(RawConfig::default().validate()?)
    }
}

/// The configuration `install` installs, and its file text. `None`: the operator
/// declined in the wizard.
fn install_config(
    host: &Host,
    config_path: &Path,
    args: &InstallArgs,
) -> anyhow::Result<Option<(Config, String)>> {
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let text = if let Some(answers) = &args.answers {
        let text = std::fs::read_to_string(answers)
            .with_context(|| format!("reading answers file {}", answers.display()))?;
        Some(text)
    } else if args.yes {
        match std::fs::read_to_string(config_path) {
            Ok(existing) => Some(existing),
            Err(_) => Some(wizard::config_text(&RawConfig::default().validate()?)?),
        }
    } else if interactive {
        let defaults = load_config_or_default(config_path)?;
        let existing = std::fs::read_to_string(config_path).ok();
        wizard::run(&defaults, existing.as_deref())?
    } else {
        anyhow::bail!(
            "no terminal to ask questions on: run `flowstage-setup install --answers FILE --yes` \
             (see provision/answers.example.toml), or `--yes` for the defaults"
        );
    };
    let Some(text) = text else { return Ok(None) };
    let name = args
        .answers
        .clone()
        .unwrap_or_else(|| config_path.to_path_buf());
    let config = RawConfig::from_toml(&text, &name)
        .and_then(|r| r.validate())
        .with_context(|| format!("invalid answers in {}", name.display()))?;
    if args.answers.is_some() && !args.yes && !interactive {
        anyhow::bail!("no terminal to confirm on: add --yes to install from the answers file");
    }
    if args.answers.is_some() && !args.yes {
        let ok = dialoguer::Confirm::new()
            .with_prompt(format!(
                "Install {} from {}?",
                config.site.name,
                name.display()
            ))
            .default(true)
            .interact()?;
        if !ok {
            return Ok(None);
        }
    }
    let _ = host;
    Ok(Some((config, text)))
}

/// The test-only switch that simulates a crash after a step.
fn abort_after() -> Option<String> {
    std::env::var("FLOWSTAGE_SETUP_ABORT_AFTER").ok()
}

/// Plan and apply every step in order; print what changes. Exit code 0.
fn run_steps(ctx: &Context, dry_run: bool) -> anyhow::Result<u8> {
    let mut backup = Backup::new(ctx.host);
    let mut affected = HashSet::new();
    let (mut files_changed, mut actions_run, mut skipped) = (0usize, 0usize, Vec::new());
    let total = STEP_NAMES.len();
    for (i, name) in STEP_NAMES.iter().enumerate() {
        let plan = steps::plan(ctx, name, &affected)?;
        let changed: Vec<_> = plan.changed_files().collect();
        let live_actions = if ctx.host.is_live() {
            plan.actions.len()
        } else {
            plan.actions.iter().filter(|a| a.is_file_tree()).count()
        };
        let head = format!("[{}/{total}] {name:<11}", i + 1);
        if changed.is_empty() && live_actions == 0 {
            eprintln!("{head} ok, nothing to change");
        } else {
            eprintln!(
                "{head} {} file(s), {} action(s){}",
                changed.len(),
                live_actions,
                if dry_run { " planned" } else { "" }
            );
        }
        for f in &changed {
            eprintln!("      {f}");
        }
        for a in &plan.actions {
            if ctx.host.is_live() || a.is_file_tree() {
                eprintln!("      {a}");
            } else {
                skipped.push(format!("{name}: {a}"));
            }
        }
        for n in &plan.notes {
            eprintln!("      ({n})");
        }
        for w in &plan.warnings {
            eprintln!("      warning: {w}");
            ctx.host.log(format!("warning: {w}"));
        }
        if dry_run {
            for f in &changed {
                print!("{}", f.diff());
            }
        } else {
            steps::apply(ctx, &plan, &mut backup)?;
        }
        for f in &changed {
            affected.extend(f.desired.affects.iter().copied());
        }
        files_changed += changed.len();
        actions_run += live_actions;
        if abort_after().as_deref() == Some(name) {
            eprintln!("aborting after step {name} (FLOWSTAGE_SETUP_ABORT_AFTER)");
            std::process::exit(99);
        }
    }
    if !skipped.is_empty() {
        eprintln!("Skipped (--root): {}", skipped.join("; "));
    }
    if files_changed == 0 && actions_run == 0 {
        eprintln!("no changes");
    } else if dry_run {
        eprintln!("dry run: {files_changed} file(s) and {actions_run} action(s) would change; nothing was changed");
    } else {
        eprintln!("{files_changed} file(s) changed, {actions_run} action(s) run");
        if let Some(dir) = backup.dir() {
            eprintln!("previous versions saved in {}", dir.display());
        }
    }
    Ok(0)
}

fn mail_if_changed(host: &Host, config_path: &Path, report: &CheckReport) -> anyhow::Result<()> {
    let config = load_config_or_default(config_path)?;
    let state = host.path(config.collector.data_dir.join("status-last"));
    let now = format!("{:?}", report.worst());
    let before = std::fs::read_to_string(&state).unwrap_or_default();
    if before.trim() == now {
        return Ok(());
    }
    let subject = format!(
        "[flowstage {}] status: {}",
        config.site.name, report.summary
    );
    if host.is_live() {
        // The same way out as alerts and the daily summary (sendmail or loopback SMTP).
        let message = crate::mail::Message {
            from: crate::mail::sender(),
            to: config.site.admin_email.clone(),
            subject: subject.clone(),
            body: report.to_text(),
        };
        crate::mail::send(&crate::mail::Transport::from_config(&config), &message)?;
        eprintln!("mailed {}: {subject}", config.site.admin_email);
    } else {
        eprintln!("would mail {} (--root): {subject}", config.site.admin_email);
    }
    std::fs::write(&state, now)?;
    Ok(())
}
