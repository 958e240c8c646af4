//! The install wizard: on a terminal, `install` asks only what has no safe default
//! (the admin's e-mail address) and lets the operator confirm or change what it derived
//! from the machine. Its answers become `/etc/flowstage/flowstage.toml`, in the same
//! format as an answers file.

use std::path::Path;

use anyhow::Context;
use dialoguer::{theme::ColorfulTheme, Confirm, Input};

use super::preflight::{human_bytes, sizing};
use super::render::Renderer;
use crate::config::{Config, RawConfig};

/// Ask, validate, and return the configuration file's text (None: the operator said no).
pub fn run(defaults: &Config) -> anyhow::Result<Option<String>> {
    let theme = ColorfulTheme::default();
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    eprintln!("Flowstage will turn this machine into a NetFlow/IPFIX collector with reports.");
    eprintln!(
        "This machine: {} CPU(s), {} memory. Press Enter to keep a [default].",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        human_bytes(sys.total_memory())
    );
    loop {
        let site: String = Input::with_theme(&theme)
            .with_prompt("Site name")
            .default(defaults.site.name.clone())
            .interact_text()?;
        let admin: String = Input::with_theme(&theme)
            .with_prompt("Admin e-mail address (alerts and root's mail)")
            .validate_with(|s: &String| -> Result<(), String> {
                if s.contains('@') && !s.contains(char::is_whitespace) {
                    Ok(())
                } else {
                    Err("an address like noc@example.net".into())
                }
            })
            .interact_text()?;
        let servers: String = Input::with_theme(&theme)
            .with_prompt("Time servers (comma-separated)")
            .default(defaults.time.servers.join(", "))
            .interact_text()?;
        let relay: String = Input::with_theme(&theme)
            .with_prompt("Mail relay host (empty: deliver directly)")
            .default(defaults.mail.relay_host.clone().unwrap_or_default())
            .allow_empty(true)
            .interact_text()?;
        let port: u16 = Input::with_theme(&theme)
            .with_prompt("UDP port for NetFlow/IPFIX")
            .default(defaults.collector.listen.first().map_or(2055, |a| a.port()))
            .interact_text()?;
        let web: String = Input::with_theme(&theme)
            .with_prompt("Web interface listens on")
            .default(defaults.web.listen.to_string())
            .interact_text()?;
        let rate: u64 = Input::with_theme(&theme)
            .with_prompt("Expected flows per second (for disk sizing)")
            .default(defaults.collector.expected_flows_per_second)
            .interact_text()?;
        let text = answers_text(defaults, &site, &admin, &servers, &relay, port, &web, rate)?;
        match RawConfig::from_toml(&text, Path::new("answers")).and_then(|r| r.validate()) {
            Ok(config) => {
                let need = sizing(&config);
                eprintln!(
                    "Disk estimate: {} for the database, {} under {}.",
                    human_bytes(need.database_bytes),
                    human_bytes(need.data_dir_bytes),
                    config.collector.data_dir.display()
                );
                if Confirm::with_theme(&theme)
                    .with_prompt("Install with these settings?")
                    .default(true)
                    .interact()?
                {
                    return Ok(Some(text));
                }
                if !Confirm::with_theme(&theme)
                    .with_prompt("Change the answers?")
                    .default(true)
                    .interact()?
                {
                    return Ok(None);
                }
            }
            Err(e) => eprintln!("That does not work: {e}. Once more:"),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn answers_text(
    defaults: &Config,
    site: &str,
    admin: &str,
    servers: &str,
    relay: &str,
    port: u16,
    web: &str,
    rate: u64,
) -> anyhow::Result<String> {
    let mut config = defaults.clone();
    config.site.name = site.trim().to_string();
    config.site.admin_email = admin.trim().to_string();
    config.time.servers = servers
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    config.mail.relay_host = Some(relay.trim().to_string()).filter(|s| !s.is_empty());
    config.collector.listen = vec![
        std::net::SocketAddr::from(([0, 0, 0, 0], port)),
        std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
    ];
    config.web.listen = web
        .trim()
        .parse()
        .with_context(|| format!("web listener {web:?}: expected ADDRESS:PORT"))?;
    config.collector.expected_flows_per_second = rate;
    Renderer::new(&config)?.config_file()
}

/// The configuration file text for a configuration (the defaults with `--yes`).
pub fn config_text(config: &Config) -> anyhow::Result<String> {
    Renderer::new(config)?.config_file()
}
