//! The web daemon's self-signed certificate (`web.tls = "self-signed"`): generated once
//! at install with the host's names, reused on every later run like the secrets, the
//! key readable only by root and the flowstage group.

use anyhow::Context;

use super::files::{Affects, DesiredFile};
use super::host::Host;
use super::render::USER;
use crate::config::{local_hostname, SELF_SIGNED_CERT, SELF_SIGNED_KEY};

fn looks_valid(cert: &str, key: &str) -> bool {
    cert.contains("-----BEGIN CERTIFICATE-----") && key.contains("PRIVATE KEY-----")
}

/// The certificate and key files: the ones on disk if valid, else new ones.
pub fn self_signed_files(host: &Host) -> anyhow::Result<Vec<DesiredFile>> {
    let existing = (
        std::fs::read_to_string(host.path(SELF_SIGNED_CERT)),
        std::fs::read_to_string(host.path(SELF_SIGNED_KEY)),
    );
    let (cert, key) = match existing {
        (Ok(cert), Ok(key)) if looks_valid(&cert, &key) => (cert, key),
        _ => {
            let names = vec![
                local_hostname(),
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "::1".to_string(),
            ];
            let generated = rcgen::generate_simple_self_signed(names)
                .context("generating the self-signed certificate")?;
            (generated.cert.pem(), generated.signing_key.serialize_pem())
        }
    };
    Ok(vec![
        DesiredFile::whole(SELF_SIGNED_CERT, cert, 0o644).affecting(Affects::Web),
        DesiredFile::whole(SELF_SIGNED_KEY, key, 0o640)
            .owned_by("root", USER)
            .secret()
            .affecting(Affects::Web),
    ])
}
