//! The install wizard: on a terminal, `install` shows what it derived from the machine,
//! asks only what has no safe default (the admin's e-mail address), and offers to
//! install, customise the rest, or stop (rustup's way). On a machine that already has
//! `/etc/flowstage/flowstage.toml`, only the answered keys change in it: comments,
//! exporters and every other setting stay as the operator left them.

use std::path::Path;

use anyhow::Context;
use dialoguer::{theme::ColorfulTheme, Input, Select};

use super::preflight::{human_bytes, sizing};
use super::render::Renderer;
use crate::config::{Config, RawConfig};

/// The answers the wizard collects.
#[derive(Debug, Clone)]
struct Answers {
    site: String,
    admin: String,
    servers: Vec<String>,
    relay: String,
    port: u16,
    web: String,
    rate: u64,
}

impl Answers {
    fn from_config(c: &Config) -> Answers {
        Answers {
            site: c.site.name.clone(),
            admin: c.site.admin_email.clone(),
            servers: c.time.servers.clone(),
            relay: c.mail.relay_host.clone().unwrap_or_default(),
            port: c.collector.listen.first().map_or(2055, |a| a.port()),
            web: c.web.listen.to_string(),
            rate: c.collector.expected_flows_per_second,
        }
    }
}

fn summary(config: &Config) -> String {
    let need = sizing(config);
    format!(
        "  site name       {}\n  flows           UDP {} (NetFlow v5/v9, IPFIX)\n  web interface   {}/\n  time servers    {} ({})\n  mail relay      {}\n  disk estimate   {} database, {} in {} at {} flows/s\n",
        config.site.name,
        config
            .collector
            .listen
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        config.web.local_url(),
        config.time.servers.join(", "),
        serde_json::to_value(config.time.daemon)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        config.mail.relay_host.as_deref().unwrap_or("none (direct delivery)"),
        human_bytes(need.database_bytes),
        human_bytes(need.data_dir_bytes),
        config.collector.data_dir.display(),
        config.collector.expected_flows_per_second,
    )
}

fn ask_email(theme: &ColorfulTheme, current: &str) -> anyhow::Result<String> {
    let mut input = Input::with_theme(theme)
        .with_prompt("Admin e-mail address (alerts and root's mail)")
        .validate_with(|s: &String| -> Result<(), String> {
            if s.contains('@') && !s.contains(char::is_whitespace) && !s.ends_with("@localhost") {
                Ok(())
            } else {
                Err("an address like noc@example.net".into())
            }
        });
    if !current.ends_with("@localhost") {
        input = input.default(current.to_string());
    }
    Ok(input.interact_text()?)
}

fn customise(theme: &ColorfulTheme, a: &mut Answers) -> anyhow::Result<()> {
    a.site = Input::with_theme(theme)
        .with_prompt("Site name")
        .default(a.site.clone())
        .interact_text()?;
    a.admin = ask_email(theme, &a.admin)?;
    let servers: String = Input::with_theme(theme)
        .with_prompt("Time servers (comma-separated)")
        .default(a.servers.join(", "))
        .interact_text()?;
    a.servers = servers
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    a.relay = Input::with_theme(theme)
        .with_prompt("Mail relay host (empty: deliver directly)")
        .default(a.relay.clone())
        .allow_empty(true)
        .interact_text()?;
    a.port = Input::with_theme(theme)
        .with_prompt("UDP port for NetFlow/IPFIX")
        .default(a.port)
        .interact_text()?;
    a.web = Input::with_theme(theme)
        .with_prompt("Web interface listens on")
        .default(a.web.clone())
        .interact_text()?;
    a.rate = Input::with_theme(theme)
        .with_prompt("Expected flows per second (for disk sizing)")
        .default(a.rate)
        .interact_text()?;
    Ok(())
}

/// Ask, validate, and return the configuration file's text (None: the operator
/// stopped). `existing` is the current configuration file, if there is one.
pub fn run(defaults: &Config, existing: Option<&str>) -> anyhow::Result<Option<String>> {
    let theme = ColorfulTheme::default();
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    eprintln!("Flowstage turns this machine into a NetFlow/IPFIX collector with reports.");
    eprintln!(
        "This machine: {}, {} CPU(s), {} memory.",
        defaults.site.name,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        human_bytes(sys.total_memory())
    );
    let mut answers = Answers::from_config(defaults);
    answers.admin = ask_email(&theme, &answers.admin)?;
    loop {
        let text = answers_text(existing, defaults, &answers)?;
        let config =
            match RawConfig::from_toml(&text, Path::new("answers")).and_then(|r| r.validate()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("That does not work: {e}. Once more:");
                    customise(&theme, &mut answers)?;
                    continue;
                }
            };
        eprintln!("\nFlowstage will be installed with:\n{}", summary(&config));
        let choice = Select::with_theme(&theme)
            .with_prompt("Proceed?")
            .items(&["Install", "Customise the settings", "Cancel"])
            .default(0)
            .interact()?;
        match choice {
            0 => return Ok(Some(text)),
            1 => customise(&theme, &mut answers)?,
            _ => return Ok(None),
        }
    }
}

/// The configuration text for the answers: the existing file with only the answered
/// keys changed, or a fresh file from the template.
fn answers_text(existing: Option<&str>, defaults: &Config, a: &Answers) -> anyhow::Result<String> {
    let listen = [
        std::net::SocketAddr::from(([0, 0, 0, 0], a.port)).to_string(),
        std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, a.port)).to_string(),
    ];
    if let Some(text) = existing {
        let mut doc: toml_edit::DocumentMut = text
            .parse()
            .context("the existing configuration is not valid TOML")?;
        let mut set = |table: &str, key: &str, value: toml_edit::Value| {
            if !doc.contains_table(table) {
                doc[table] = toml_edit::table();
            }
            let bare = |v: &toml_edit::Value| {
                let mut v = v.clone();
                v.decor_mut().clear();
                v.to_string()
            };
            let old = doc[table].get(key).and_then(|i| i.as_value()).map(bare);
            // Unchanged values keep their formatting (and the operator's comments).
            if old != Some(bare(&value)) {
                doc[table][key] = toml_edit::value(value);
            }
        };
        set("site", "name", a.site.as_str().into());
        set("site", "admin_email", a.admin.as_str().into());
        set(
            "time",
            "servers",
            a.servers.iter().collect::<toml_edit::Array>().into(),
        );
        set("mail", "relay_host", a.relay.as_str().into());
        let current_port = defaults.collector.listen.first().map(|l| l.port());
        if current_port != Some(a.port) {
            set(
                "collector",
                "listen",
                listen.iter().collect::<toml_edit::Array>().into(),
            );
        }
        set("web", "listen", a.web.as_str().into());
        set(
            "collector",
            "expected_flows_per_second",
            i64::try_from(a.rate).unwrap_or(i64::MAX).into(),
        );
        return Ok(doc.to_string());
    }
    let mut config = defaults.clone();
    config.site.name = a.site.trim().to_string();
    config.site.admin_email = a.admin.trim().to_string();
    config.time.servers = a.servers.clone();
    config.mail.relay_host = Some(a.relay.trim().to_string()).filter(|s| !s.is_empty());
    config.collector.listen = listen.iter().filter_map(|l| l.parse().ok()).collect();
    config.web.listen = a
        .web
        .trim()
        .parse()
        .with_context(|| format!("web listener {:?}: expected ADDRESS:PORT", a.web))?;
    config.collector.expected_flows_per_second = a.rate;
    Renderer::new(&config)?.config_file()
}

/// The configuration file text for a configuration (the defaults with `--yes`).
pub fn config_text(config: &Config) -> anyhow::Result<String> {
    Renderer::new(config)?.config_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_change_only_their_keys_in_an_existing_file() {
        let existing = "# my notes\n[site]\nname = \"lab\" # keep\n\n[collector]\ntop_n = 50\n\n[[exporter]]\naddress = \"192.0.2.1\"\nname = \"rtr1\"\n";
        let config = RawConfig::from_toml(existing, Path::new("x"))
            .unwrap()
            .validate()
            .unwrap();
        let mut a = Answers::from_config(&config);
        a.admin = "noc@example.org".into();
        let text = answers_text(Some(existing), &config, &a).unwrap();
        for kept in [
            "# my notes",
            "name = \"lab\" # keep",
            "top_n = 50",
            "name = \"rtr1\"",
        ] {
            assert!(text.contains(kept), "{kept} lost:\n{text}");
        }
        assert!(text.contains("admin_email = \"noc@example.org\""), "{text}");
        let reparsed = RawConfig::from_toml(&text, Path::new("x"))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(reparsed.collector.top_n, 50);
        assert_eq!(reparsed.exporters.len(), 1);
        assert_eq!(reparsed.collector.listen, config.collector.listen);
    }
}
