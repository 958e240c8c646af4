//! `flowstage-setup`: install, reconfigure, check and remove the appliance.

use std::process::ExitCode;

use clap::Parser;
use flowstage::cli::init_tracing;
use flowstage::setup::{setup_main, SetupCli};

fn main() -> ExitCode {
    let cli = SetupCli::parse();
    init_tracing();
    match setup_main(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("flowstage-setup: {e:#}");
            ExitCode::from(2)
        }
    }
}
