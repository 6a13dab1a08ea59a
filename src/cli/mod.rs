//! The `breakwater` command line: one file per command family.

mod api_client;
mod check_config;
mod queue;
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
    /// Inspect and steer the spool through the admin API.
    Queue {
        #[command(subcommand)]
        command: Box<queue::QueueCommand>,
    },
    /// Upstream status, hold and release.
    Upstream {
        #[command(subcommand)]
        command: queue::UpstreamCommand,
    },
    /// Admin API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once and only its hash is stored.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: crate::admin::auth::Role,
        /// Also save it to [admin] cli_token_file for the local CLI.
        #[arg(long)]
        save: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain; reports the first broken line.
    Verify {
        /// Default: [admin] audit_log from the configuration.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

/// Exit code for configuration errors (as documented for `check-config`).
pub const EXIT_CONFIG: u8 = 2;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => serve::run(&cli.config, cli.log_format),
        Command::CheckConfig => check_config::run(&cli.config),
        Command::Queue { command } => with_config(&cli.config, |c| queue::run_queue(c, *command)),
        Command::Upstream { command } => {
            with_config(&cli.config, |c| queue::run_upstream(c, command))
        }
        Command::Token {
            command: TokenCommand::Create { name, role, save },
        } => with_config(&cli.config, |config| {
            match crate::admin::auth::create(&config.admin.tokens_file, &name, role) {
                Ok(token) => {
                    if save {
                        if let Err(err) = crate::admin::auth::write_private(
                            &config.admin.cli_token_file,
                            token.as_bytes(),
                        ) {
                            eprintln!("breakwater: cannot save token: {err}");
                            return ExitCode::FAILURE;
                        }
                        eprintln!("saved to {}", config.admin.cli_token_file.display());
                    }
                    println!("{token}");
                    eprintln!("token {name:?} ({role:?}) created; it is shown only this once");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("breakwater: {err}");
                    ExitCode::FAILURE
                }
            }
        }),
        Command::Audit {
            command: AuditCommand::Verify { file },
        } => {
            let path = match file {
                Some(file) => file,
                None => match load_config(&cli.config) {
                    Ok(config) => config.admin.audit_log,
                    Err(code) => return code,
                },
            };
            match crate::admin::audit::verify(&path) {
                Ok(lines) => {
                    println!("{}: hash chain intact ({lines} entries)", path.display());
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("breakwater: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn with_config(path: &std::path::Path, f: impl FnOnce(&Config) -> ExitCode) -> ExitCode {
    match load_config(path) {
        Ok(config) => f(&config),
        Err(code) => code,
    }
}

/// Load the config or print the error (file, key, problem) and give the exit code.
fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|err| {
        eprintln!("breakwater: {err}");
        ExitCode::from(EXIT_CONFIG)
    })
}
