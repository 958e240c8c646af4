//! `flowstage-setup`: the appliance installer and configuration manager. Until its
//! implementation lands it prints the plan of each command and exits non-zero.

use std::process::ExitCode;

const PLANNED: &[(&str, &str)] = &[
    (
        "check",
        "preflight: OS, root, CPUs, memory, mounts and free space, ports, time sync, commands",
    ),
    (
        "install",
        "first build of the server (wizard, or --answers FILE --yes)",
    ),
    (
        "reconfigure",
        "render everything from the config and apply only what differs (--dry-run)",
    ),
    (
        "status",
        "health checks with ok/warn/fail, --json, exit code",
    ),
    (
        "routers",
        "import exporters.cfg/routers.cfg, SNMP discovery, router export config",
    ),
    ("users", "add, list, grant, revoke, disable"),
    (
        "uninstall",
        "remove what was installed, keep data unless --purge-data",
    ),
];

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    println!("flowstage-setup is not implemented yet. Planned commands:");
    for (name, what) in PLANNED {
        println!("  {name:<12} {what}");
    }
    match arg.as_deref() {
        None | Some("--help") | Some("-h") => ExitCode::SUCCESS,
        Some(other) => {
            eprintln!("flowstage-setup: {other}: not implemented yet");
            ExitCode::FAILURE
        }
    }
}
