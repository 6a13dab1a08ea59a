//! The `breakwater` command line: one file per command family.

mod check_config;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::logging::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "breakwater",
    version,
    about = "Mail-continuity relay: a durable secondary MX"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "BREAKWATER_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the SMTP server and the spool.
    Serve,
    /// Validate the configuration and print the effective settings.
    CheckConfig,
}

/// Exit code for configuration errors (as documented for `check-config`).
pub const EXIT_CONFIG: u8 = 2;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => serve::run(&cli.config, cli.log_format),
        Command::CheckConfig => check_config::run(&cli.config),
    }
}

/// Load the config or print the error (file, key, problem) and give the exit code.
fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|err| {
        eprintln!("breakwater: {err}");
        ExitCode::from(EXIT_CONFIG)
    })
}
