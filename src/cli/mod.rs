//! The `breakwater` command line: one file per command family.

mod api_client;
mod check_config;
mod cluster;
mod dkim;
mod drill;
mod queue;
mod recipients;
mod sending;
mod serve;
mod table;
mod token;
mod user;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::logging::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "breakwater",
    version = VERSION,
    long_version = LONG_VERSION,
    about = "Mail-continuity relay: a durable secondary MX",
    long_about = "Breakwater stands in front of your mail host (e.g. Exchange Online) as a secondary or \
gateway MX. It accepts mail for your domains only, writes every message durably to its spool before \
answering 250, and delivers it upstream with per-recipient retries, flushing the backlog by itself as \
soon as the host is back.\n\nStart with `breakwater serve`; steer the spool with `breakwater queue` and \
`breakwater upstream`; see README.md and docs/RUNBOOK.md."
)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "BREAKWATER_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Print results as JSON instead of tables and sentences (every command
    /// that reports something; `queue list` prints one JSON object per line).
    #[arg(long, global = true)]
    pub json: bool,
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
        command: token::TokenCommand,
    },
    /// Is this deployment ready for an outage? MX order and TTLs, host name
    /// and PTR, SPF, DMARC, MTA-STS and TLS-RPT, upstream and listener TLS. Exit 0 all pass,
    /// 1 warnings, 2 failures.
    Check {
        /// Domains to check (default: every configured [[domain]]).
        domains: Vec<String>,
        /// Breakwater is the only MX (default: a secondary behind the primary).
        #[arg(long)]
        gateway: bool,
        /// HTTPS port of the MTA-STS policy hosts (443; another only for a
        /// lab's or a test's policy server).
        #[arg(long, default_value_t = crate::selfcheck::MTA_STS_PORT, hide = true)]
        mta_sts_port: u16,
    },
    /// Failover drills: start, status, finish, list, show.
    Drill {
        #[command(subcommand)]
        command: drill::DrillCommand,
    },
    /// Recipient lists: sync a domain's list from a directory export (CSV).
    Recipients {
        #[command(subcommand)]
        command: recipients::RecipientsCommand,
    },
    /// Local web accounts: add, passwd, disable, list, import, totp-setup.
    User {
        #[command(subcommand)]
        command: user::UserCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Stop or resume the mail users send from the web reader.
    Sending {
        #[command(subcommand)]
        command: sending::SendingCommand,
    },
    /// DKIM keys for the mail users send during an outage.
    Dkim {
        #[command(subcommand)]
        command: dkim::DkimCommand,
    },
    /// Cluster mode's database: create/migrate the schema, status.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// TLS certificates for labs.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Write a self-signed certificate and key (default: the [smtp] tls_cert/tls_key paths).
    SelfSigned {
        /// Host name(s) the certificate is for.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        #[arg(long, default_value_t = 365)]
        days: u32,
        #[arg(long)]
        cert: Option<PathBuf>,
        #[arg(long)]
        key: Option<PathBuf>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
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

const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("BREAKWATER_GIT_COMMIT"),
    ")"
);
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit: ",
    env!("BREAKWATER_GIT_COMMIT"),
    "\nfeatures: smtp(starttls rustls/ring tls1.2+1.3, chunking, dsn, requiretls), spool(segment log + sled index), \
delivery(mail-send, hickory dns), admin(axum api, prometheus metrics, audit log)"
);

/// Exit code for configuration errors (as documented for `check-config`).
pub const EXIT_CONFIG: u8 = 2;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match cli.command {
        Command::Serve => serve::run(&cli.config, cli.log_format),
        Command::CheckConfig => check_config::run(&cli.config),
        Command::Queue { command } => {
            with_config(&cli.config, |c| queue::run_queue(c, *command, json))
        }
        Command::Upstream { command } => {
            with_config(&cli.config, |c| queue::run_upstream(c, command, json))
        }
        Command::Check {
            domains,
            gateway,
            mta_sts_port,
        } => with_config(&cli.config, |config| {
            check(config, &domains, gateway, mta_sts_port, json)
        }),
        Command::Drill { command } => with_config(&cli.config, |c| drill::run(c, command, json)),
        Command::User { command } => with_config(&cli.config, |c| user::run(c, command, json)),
        Command::Recipients { command } => {
            with_config(&cli.config, |c| recipients::run(c, command, json))
        }
        Command::Token { command } => with_config(&cli.config, |c| token::run(c, command, json)),
        Command::Dkim { command } => dkim::run(command, json),
        Command::Cluster { command } => {
            with_config(&cli.config, |c| cluster::run(c, command, json))
        }
        Command::Sending { command } => {
            with_config(&cli.config, |c| sending::run(c, command, json))
        }
        Command::Cert {
            command:
                CertCommand::SelfSigned {
                    hosts,
                    days,
                    cert,
                    key,
                    force,
                },
        } => self_signed(&cli.config, &hosts, days, cert, key, force, json),
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
            match crate::audit::verify(&path) {
                Ok(lines) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({ "file": path, "intact": true, "entries": lines })
                        );
                    } else {
                        println!("{}: hash chain intact ({lines} entries)", path.display());
                    }
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

fn self_signed(
    config_path: &std::path::Path,
    hosts: &[String],
    days: u32,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    force: bool,
    json: bool,
) -> ExitCode {
    // Default to the configured paths when the config loads, else the defaults.
    let smtp = Config::load(config_path)
        .map(|c| c.smtp)
        .unwrap_or_default();
    let cert = cert.unwrap_or(smtp.tls_cert);
    let key = key.unwrap_or(smtp.tls_key);
    if !force && (cert.exists() || key.exists()) {
        eprintln!(
            "breakwater: {} or {} exists; use --force to replace",
            cert.display(),
            key.display()
        );
        return ExitCode::FAILURE;
    }
    match crate::tls::write_self_signed(hosts, &cert, &key, days) {
        Ok(()) if json => {
            println!(
                "{}",
                serde_json::json!({ "cert": cert, "key": key, "hosts": hosts, "days": days })
            );
            ExitCode::SUCCESS
        }
        Ok(()) => {
            println!(
                "wrote {} and {} for {} ({days} days)",
                cert.display(),
                key.display(),
                hosts.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("breakwater: {err}");
            ExitCode::FAILURE
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

fn check(
    config: &Config,
    domains: &[String],
    gateway: bool,
    mta_sts_port: u16,
    json: bool,
) -> ExitCode {
    use crate::selfcheck::{self, Mode};
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("breakwater: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mode = if gateway {
        Mode::Gateway
    } else {
        Mode::Secondary
    };
    let findings = runtime.block_on(selfcheck::run_with_mta_sts_port(
        config,
        domains,
        mode,
        mta_sts_port,
    ));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "findings": findings,
                "exit_code": selfcheck::exit_code(&findings),
            }))
            .unwrap_or_default()
        );
    } else {
        print!("{}", selfcheck::table(&findings));
    }
    ExitCode::from(selfcheck::exit_code(&findings))
}
