//! `flowstage-setup routers snippet`: the router-side export configuration that points
//! a router at this appliance (the howto's `ip flow-export version 5` /
//! `ip flow-export destination ...`, for several vendors and export versions), with
//! the recommended timeouts (active 60 s, inactive 15 s) and optional sampling. The
//! texts are tera templates in `templates/snippets/`.

use std::net::IpAddr;

/// Router families with a snippet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Vendor {
    CiscoIos,
    CiscoIosxe,
    Junos,
    Mikrotik,
    NokiaSros,
}

/// Export protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportVersion {
    #[value(name = "5")]
    V5,
    #[value(name = "9")]
    V9,
    Ipfix,
}

impl ExportVersion {
    fn as_str(self) -> &'static str {
        match self {
            ExportVersion::V5 => "5",
            ExportVersion::V9 => "9",
            ExportVersion::Ipfix => "ipfix",
        }
    }
}

impl Vendor {
    fn template(self) -> (&'static str, &'static str) {
        match self {
            Vendor::CiscoIos => (
                "cisco-ios",
                include_str!("../../templates/snippets/cisco-ios.tera"),
            ),
            Vendor::CiscoIosxe => (
                "cisco-iosxe",
                include_str!("../../templates/snippets/cisco-iosxe.tera"),
            ),
            Vendor::Junos => ("junos", include_str!("../../templates/snippets/junos.tera")),
            Vendor::Mikrotik => (
                "mikrotik",
                include_str!("../../templates/snippets/mikrotik.tera"),
            ),
            Vendor::NokiaSros => (
                "nokia-sros",
                include_str!("../../templates/snippets/nokia-sros.tera"),
            ),
        }
    }

    fn supports(self, v: ExportVersion) -> bool {
        !matches!(
            (self, v),
            (Vendor::CiscoIos, ExportVersion::Ipfix) | (Vendor::Junos, ExportVersion::V5)
        )
    }

    /// Sampling rate recommended when none is given: inline sampling platforms are
    /// meant to sample; the others export every flow.
    pub fn default_sampling(self) -> u32 {
        match self {
            Vendor::Junos | Vendor::NokiaSros => 1000,
            _ => 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnippetError {
    #[error("{vendor} cannot export {version}: use {supported}")]
    Unsupported {
        vendor: &'static str,
        version: String,
        supported: &'static str,
    },
    #[error("sampling {0}: expected 1 (every packet) to 1000000")]
    Sampling(u32),
    #[error("rendering the snippet: {0}")]
    Template(#[from] tera::Error),
}

/// The configuration text for a router.
pub fn render(
    vendor: Vendor,
    version: ExportVersion,
    address: IpAddr,
    port: u16,
    sampling: u32,
) -> Result<String, SnippetError> {
    let (name, template) = vendor.template();
    if !vendor.supports(version) {
        return Err(SnippetError::Unsupported {
            vendor: name,
            version: version.as_str().to_string(),
            supported: match vendor {
                Vendor::CiscoIos => {
                    "--version 5 or 9 (IPFIX needs Flexible NetFlow: --vendor cisco-iosxe)"
                }
                _ => "--version 9 or ipfix",
            },
        });
    }
    if !(1..=1_000_000).contains(&sampling) {
        return Err(SnippetError::Sampling(sampling));
    }
    let mut tera = tera::Tera::default();
    tera.add_raw_template(name, template)?;
    let mut context = tera::Context::new();
    context.insert("address", &address.to_string());
    context.insert("port", &port);
    context.insert("version", version.as_str());
    context.insert("sampling", &sampling);
    let mut text = tera.render(name, &context)?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// The address routers should send to: the collector's listen address when it is a
/// specific one, else this host's first address that is not loopback (IPv4 first).
pub fn default_address(listen: &[std::net::SocketAddr]) -> Option<IpAddr> {
    if let Some(a) = listen
        .iter()
        .map(|s| s.ip())
        .find(|ip| !ip.is_unspecified() && !ip.is_loopback())
    {
        return Some(a);
    }
    let mut found: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
        .ok()?
        .filter_map(|i| {
            let a = i.address?;
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .filter(|ip| {
            !ip.is_loopback()
                && !ip.is_unspecified()
                && !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
        })
        .collect();
    found.sort_by_key(|ip| ip.is_ipv6());
    found.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_pair_renders_with_the_address_and_port() {
        let a: IpAddr = "192.0.2.10".parse().expect("ip");
        for vendor in [
            Vendor::CiscoIos,
            Vendor::CiscoIosxe,
            Vendor::Junos,
            Vendor::Mikrotik,
            Vendor::NokiaSros,
        ] {
            for version in [ExportVersion::V5, ExportVersion::V9, ExportVersion::Ipfix] {
                match render(vendor, version, a, 2055, vendor.default_sampling()) {
                    Ok(text) => {
                        assert!(text.contains("192.0.2.10"), "{vendor:?} {version:?}");
                        assert!(text.contains("2055"), "{vendor:?} {version:?}");
                        assert!(!text.contains("{{"), "{vendor:?} {version:?}");
                    }
                    Err(e) => assert!(!vendor.supports(version), "{vendor:?} {version:?}: {e}"),
                }
            }
        }
        assert!(render(Vendor::CiscoIos, ExportVersion::Ipfix, a, 2055, 1)
            .expect_err("classic IOS has no IPFIX")
            .to_string()
            .contains("cisco-iosxe"));
        assert!(render(Vendor::Mikrotik, ExportVersion::V9, a, 2055, 0).is_err());
    }
}
