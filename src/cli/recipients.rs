//! `breakwater recipients sync EXPORT.csv`: write each domain's recipient
//! list from a directory export, then reload the server (SIGHUP) to use it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Config;
use crate::policy::directory;

#[derive(Debug, Subcommand)]
pub enum RecipientsCommand {
    /// Write the `recipients` list of each configured domain from a CSV
    /// export (Microsoft 365 admin center users, Get-EXORecipient with the
    /// aliases joined as docs/exchange-online.md shows,
    /// or one address per line).
    Sync {
        export: PathBuf,
        /// Only these domains (default: every domain that has a `recipients` file).
        #[arg(long = "domain")]
        domains: Vec<String>,
        /// Show what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Write a list even when the export has no address for the domain
        /// (which would reject all its mail).
        #[arg(long)]
        allow_empty: bool,
    },
}

pub fn run(config: &Config, command: RecipientsCommand, json: bool) -> ExitCode {
    let RecipientsCommand::Sync {
        export,
        domains,
        dry_run,
        allow_empty,
    } = command;
    let text = match std::fs::read(&export) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(err) => {
            eprintln!("breakwater: cannot read {}: {err}", export.display());
            return ExitCode::FAILURE;
        }
    };
    for wanted in &domains {
        if !config
            .domains
            .iter()
            .any(|d| d.name.trim_end_matches('.').eq_ignore_ascii_case(wanted))
        {
            eprintln!("breakwater: {wanted} is not a configured [[domain]]");
            return ExitCode::FAILURE;
        }
    }
    let mut failed = false;
    let mut written = 0;
    for (i, domain) in config.domains.iter().enumerate() {
        let name = domain.name.trim_end_matches('.').to_ascii_lowercase();
        if !domains.is_empty() && !domains.iter().any(|d| d.eq_ignore_ascii_case(&name)) {
            continue;
        }
        let Some(path) = &domain.recipients else {
            if !domains.is_empty() {
                eprintln!("breakwater: domain[{i}] ({name}) has no `recipients` file configured; add recipients = \"/etc/breakwater/{name}.txt\" first");
                failed = true;
            }
            continue;
        };
        let addresses = match directory::addresses_for_domain(&text, &name) {
            Ok(addresses) => addresses,
            Err(err) => {
                eprintln!("breakwater: {}: {err}", export.display());
                return ExitCode::FAILURE;
            }
        };
        if addresses.is_empty() && !allow_empty {
            eprintln!("breakwater: {name}: the export has no address at this domain; list left unchanged (--allow-empty to write it anyway)");
            failed = true;
            continue;
        }
        let before = directory::read_list(path, &name);
        let added = addresses.difference(&before).count();
        let removed = before.difference(&addresses).count();
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "domain": name, "addresses": addresses.len(), "added": added,
                    "removed": removed, "file": path, "dry_run": dry_run,
                })
            );
        } else {
            println!(
                "{name}: {} addresses ({added} added, {removed} removed) -> {}",
                addresses.len(),
                path.display()
            );
        }
        if dry_run {
            continue;
        }
        if let Err(err) = directory::write_list(path, &addresses, &export.display().to_string()) {
            eprintln!("breakwater: cannot write {}: {err}", path.display());
            failed = true;
            continue;
        }
        written += 1;
    }
    if written > 0 && !json {
        println!(
            "reload the server to use the new lists: systemctl reload breakwater (or kill -HUP)"
        );
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
