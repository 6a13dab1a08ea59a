//! `breakwater dkim keygen`: a domain's DKIM key for the mail users send
//! during an outage, and the DNS record to publish before one.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::dkim::{self, Algorithm};

#[derive(Debug, Subcommand)]
pub enum DkimCommand {
    /// Write a new private key (mode 0600) and print its DNS TXT record and
    /// the `[[domain]]` lines that use it.
    Keygen {
        #[arg(long)]
        domain: String,
        /// The record's name under `_domainkey` (e.g. "bw1"); a new key gets
        /// a new selector, so the old record can stay until mail signed with
        /// it has been delivered.
        #[arg(long)]
        selector: String,
        #[arg(long, value_enum, default_value = "rsa")]
        algorithm: Algorithm,
        /// Default: dkim-<domain>.key in the current directory.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(command: DkimCommand, json: bool) -> ExitCode {
    let DkimCommand::Keygen {
        domain,
        selector,
        algorithm,
        out,
        force,
    } = command;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if !crate::config::is_valid_hostname(&domain) || !crate::config::is_valid_hostname(&selector) {
        eprintln!("breakwater: {domain:?} or {selector:?} is not a DNS name");
        return ExitCode::FAILURE;
    }
    let out = out.unwrap_or_else(|| PathBuf::from(format!("dkim-{domain}.key")));
    if out.exists() && !force {
        eprintln!(
            "breakwater: {} exists; use --force to replace it (mail signed with its key fails DKIM once its record is gone)",
            out.display()
        );
        return ExitCode::FAILURE;
    }
    let made = dkim::generate(algorithm).and_then(|pem| {
        let key = dkim::from_pem(pem.as_bytes(), &domain, &selector)
            .map_err(dkim::DkimError::Generate)?;
        crate::fsutil::write_atomic(&out, pem.as_bytes(), Some(0o600)).map_err(|e| {
            dkim::DkimError::Key {
                path: out.display().to_string(),
                problem: e.to_string(),
            }
        })?;
        Ok(key)
    });
    let key = match made {
        Ok(key) => key,
        Err(err) => {
            eprintln!("breakwater: {err}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "key_file": out, "domain": domain, "selector": selector,
                "algorithm": key.algorithm(), "dns_name": key.dns_name(), "dns_txt": key.dns_record(),
            })
        );
    } else {
        println!(
            "wrote {} ({}, mode 0600: readable by the user breakwater runs as, nobody else)\n\n\
             Publish this TXT record before an outage:\n{}\n\n\
             and use the key in the [[domain]] for {domain}:\n  dkim_selector = \"{selector}\"\n  dkim_key = \"{}\"\n\n\
             `breakwater check` then compares the published record with this key.",
            out.display(),
            key.algorithm(),
            key.zone_line(),
            out.display()
        );
    }
    ExitCode::SUCCESS
}
