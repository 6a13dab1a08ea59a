//! `breakwater check-config`: validate and print the effective configuration.

use std::path::Path;
use std::process::ExitCode;

use crate::policy::RecipientPolicy;

pub fn run(path: &Path) -> ExitCode {
    let config = match super::load_config(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    // Recipient lists are part of the configuration an operator means to check.
    if let Err(err) = RecipientPolicy::load(&config) {
        eprintln!("breakwater: {err}");
        return ExitCode::from(super::EXIT_CONFIG);
    }
    // So are the DKIM keys (read here, not in every command's config load:
    // they are 0600 for the service, and `queue list` needs none of them).
    if let Err(err) = crate::dkim::load_configured(&config) {
        eprintln!("breakwater: {}: {err}", path.display());
        return ExitCode::from(super::EXIT_CONFIG);
    }
    print!(
        "# effective configuration from {}\n{}",
        path.display(),
        config.to_toml()
    );
    ExitCode::SUCCESS
}
