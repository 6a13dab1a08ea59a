//! `breakwater user …`: local web accounts (bulk onboarding before an
//! outage, password resets and TOTP enrolment during one).
//!
//! These commands edit `[web] users_file` directly (under a lock), so they
//! work while the server is down; a running server picks the change up
//! within a second. Each change then goes into the audit log through the
//! server (`api_client::record_local_change`).

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use crate::accounts::totp;
use crate::accounts::{self, AccountError};
use crate::config::Config;
use crate::envelope::now_ms;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account (prompts for the password unless --password-stdin).
    Add {
        address: String,
        /// Another address whose mail this user may read (repeatable).
        #[arg(long = "alias")]
        aliases: Vec<String>,
        #[arg(long)]
        name: Option<String>,
        /// May use the admin pages (TOTP is then required).
        #[arg(long)]
        admin: bool,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a new password; the user's open sessions end.
    Passwd {
        address: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Block sign-in; the user's open sessions end at once.
    Disable {
        address: String,
    },
    Enable {
        address: String,
    },
    List,
    /// Create accounts from a CSV of `address, display name, aliases`
    /// (aliases separated by `;`). Each new account gets a random password,
    /// printed as `address,password` for distribution; existing ones are skipped.
    Import {
        file: PathBuf,
    },
    /// Enrol (or re-enrol) TOTP: prints the otpauth:// URI and secret to put
    /// into an authenticator app.
    TotpSetup {
        address: String,
    },
    /// Make ten new recovery codes (the old ones stop working) and print
    /// them once, for the user to keep on paper or in a password manager.
    RecoveryCodes {
        address: String,
    },
    /// Remove TOTP for a user (not allowed for admins, who must have it).
    TotpRemove {
        address: String,
    },
    /// Where to tell this user that an outage started and where to read
    /// mail (a webhook, e.g. in front of an SMS gateway); "" removes it.
    SetNotify {
        address: String,
        webhook: String,
    },
}

fn read_password(from_stdin: bool) -> Result<String, String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let first = rpassword::prompt_password("Password: ")
        .map_err(|e| format!("cannot read the password: {e} (use --password-stdin)"))?;
    let again = rpassword::prompt_password("Again: ")
        .map_err(|e| format!("cannot read the password: {e}"))?;
    if first != again {
        return Err("the passwords differ".into());
    }
    Ok(first)
}

/// Print what a command did: its sentence, or with `--json` the sentence
/// as `{"message": …}` (a list is JSON already).
fn report(json: bool, result: Result<String, AccountError>) -> ExitCode {
    match result {
        Ok(message) => {
            if json && !message.starts_with('[') {
                println!("{}", serde_json::json!({ "message": message }));
            } else if !message.is_empty() {
                println!("{message}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("breakwater: {err}");
            ExitCode::FAILURE
        }
    }
}

pub fn run(config: &Config, command: UserCommand, json: bool) -> ExitCode {
    let audited = audit_line(&command);
    let code = change(config, command, json);
    if let (true, Some((action, target, result))) = (code == ExitCode::SUCCESS, audited) {
        super::api_client::record_local_change(config, action, &target, &result);
    }
    code
}

/// The audit log's line for a command that changes an account (`import`
/// records one per account it adds).
fn audit_line(command: &UserCommand) -> Option<(&'static str, String, String)> {
    let (action, address, result) = match command {
        UserCommand::Add { address, admin, .. } => (
            "user:add",
            address,
            if *admin { "added as admin" } else { "added" }.to_string(),
        ),
        UserCommand::Passwd { address, .. } => ("user:passwd", address, "password changed".into()),
        UserCommand::Disable { address } => ("user:disable", address, "sign-in blocked".into()),
        UserCommand::Enable { address } => ("user:enable", address, "sign-in allowed".into()),
        UserCommand::TotpSetup { address } => (
            "user:totp-setup",
            address,
            "TOTP enrolled, new recovery codes".into(),
        ),
        UserCommand::RecoveryCodes { address } => {
            ("user:recovery-codes", address, "new recovery codes".into())
        }
        UserCommand::TotpRemove { address } => ("user:totp-remove", address, "TOTP removed".into()),
        UserCommand::SetNotify { address, webhook } => (
            "user:set-notify",
            address,
            if webhook.is_empty() {
                "outage notices off".to_string()
            } else {
                format!("outage notices to {}", webhook_origin(webhook))
            },
        ),
        UserCommand::List | UserCommand::Import { .. } => return None,
    };
    Some((action, address.clone(), result))
}

/// Where a webhook goes, without its path: a webhook's path is often its
/// secret (Slack, Teams), and the audit log is readable with a viewer token.
fn webhook_origin(url: &str) -> String {
    match url.splitn(4, '/').collect::<Vec<_>>()[..] {
        [scheme, "", host, ..] if !host.is_empty() => format!("{scheme}//{host}/…"),
        _ => "a webhook".into(),
    }
}

fn change(config: &Config, command: UserCommand, json: bool) -> ExitCode {
    let path = &config.web.users_file;
    match command {
        UserCommand::Add {
            address,
            aliases,
            name,
            admin,
            password_stdin,
        } => {
            let password = match read_password(password_stdin) {
                Ok(p) => p,
                Err(err) => {
                    eprintln!("breakwater: {err}");
                    return ExitCode::FAILURE;
                }
            };
            report(
                json,
                accounts::add(path, &address, name.as_deref().unwrap_or(""), &aliases, admin, &password)
                    .map(|a| {
                        let mut line = format!("added {}", a.address);
                        if a.admin {
                            line.push_str(" (admin: run `breakwater user totp-setup` before the first sign-in)");
                        }
                        line
                    }),
            )
        }
        UserCommand::Passwd {
            address,
            password_stdin,
        } => {
            let password = match read_password(password_stdin) {
                Ok(p) => p,
                Err(err) => {
                    eprintln!("breakwater: {err}");
                    return ExitCode::FAILURE;
                }
            };
            report(
                json,
                accounts::change_password(path, &address, &password)
                    .map(|a| format!("password changed for {}", a.address)),
            )
        }
        UserCommand::Disable { address } => report(
                json,
            accounts::update(path, &address, |a| {
                a.disabled = true;
                a.sessions_valid_after_ms = now_ms();
                Ok(())
            })
            .map(|a| format!("disabled {}", a.address)),
        ),
        UserCommand::Enable { address } => report(
                json,
            accounts::update(path, &address, |a| {
                a.disabled = false;
                a.sessions_valid_after_ms = now_ms();
                Ok(())
            })
            .map(|a| format!("enabled {}", a.address)),
        ),
        UserCommand::List => report(json, accounts::list(path).map(|list| {
            if json {
                let rows: Vec<_> = list
                    .iter()
                    .map(|a| {
                        serde_json::json!({
                            "address": a.address, "display_name": a.display_name, "aliases": a.aliases,
                            "admin": a.admin, "disabled": a.disabled, "totp": a.totp_secret.is_some(),
                        })
                    })
                    .collect();
                serde_json::to_string_pretty(&rows).unwrap_or_default()
            } else {
                let mut table = super::table::Columns::new(&["ADDRESS", "NAME", "ROLE", "STATE", "TOTP", "ALIASES"], &[]);
                for a in &list {
                    table.row(vec![
                        a.address.clone(),
                        a.display_name.clone(),
                        (if a.admin { "admin" } else { "user" }).into(),
                        (if a.disabled { "disabled" } else { "active" }).into(),
                        (if a.totp_secret.is_some() { "yes" } else { "no" }).into(),
                        a.aliases.join(","),
                    ]);
                }
                format!("{}{} accounts", table.render(), list.len())
            }
        })),
        UserCommand::Import { file } => import(config, &file),
        UserCommand::TotpSetup { address } => {
            let secret = totp::new_totp_secret();
            report(
                json,
                accounts::enrol_totp(path, &address, &secret, false).and_then(|(a, codes)| {
                    let totp = totp::totp_for(&secret, &a.address)
                        .ok_or_else(|| AccountError::Invalid("cannot build the TOTP URI".into()))?;
                    let url = totp.get_url();
                    let qr = qrcode::QrCode::new(url.as_bytes())
                        .map(|code| {
                            code.render::<qrcode::render::unicode::Dense1x2>()
                                .quiet_zone(true)
                                .build()
                        })
                        .unwrap_or_default();
                    Ok(format!(
                        "TOTP enrolled for {}.\nScan this with an authenticator app, or enter the URI or the secret by hand:\n{qr}\n{url}\nsecret: {secret}\n\n{}",
                        a.address,
                        recovery_text(&codes),
                    ))
                }),
            )
        }
        UserCommand::RecoveryCodes { address } => report(
            json,
            accounts::regenerate_recovery_codes(path, &address).map(|(a, codes)| {
                format!("New recovery codes for {}.\n{}", a.address, recovery_text(&codes))
            }),
        ),
        UserCommand::SetNotify { address, webhook } => report(
                json,
            accounts::update(path, &address, |a| {
                if webhook.is_empty() {
                    a.notify_webhook = None;
                } else if webhook.starts_with("https://") || webhook.starts_with("http://") {
                    a.notify_webhook = Some(webhook.clone());
                } else {
                    return Err(AccountError::Invalid(format!("{webhook:?} is not an http(s) URL")));
                }
                Ok(())
            })
            .map(|a| format!("outage notices for {} go to {}", a.address, a.notify_webhook.as_deref().unwrap_or("(nobody)"))),
        ),
        UserCommand::TotpRemove { address } => report(
                json,
            accounts::update(path, &address, |a| {
                if a.admin {
                    return Err(AccountError::Invalid(format!(
                        "{} is an admin; admins must keep TOTP (use totp-setup to replace it)",
                        a.address
                    )));
                }
                a.totp_secret = None;
                Ok(())
            })
            .map(|a| format!("TOTP removed for {}", a.address)),
        ),
    }
}

fn recovery_text(codes: &[String]) -> String {
    format!(
        "Recovery codes (each signs in once instead of the authenticator; shown only now, the old ones no longer work):\n{}",
        codes.iter().map(|c| format!("  {c}")).collect::<Vec<_>>().join("\n")
    )
}

fn import(config: &Config, file: &Path) -> ExitCode {
    let path = &config.web.users_file;
    let mut data = Vec::new();
    let read = if file == Path::new("-") {
        std::io::stdin().read_to_end(&mut data).map(|_| ())
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_end(&mut data).map(|_| ()))
    };
    if let Err(err) = read {
        eprintln!("breakwater: {}: {err}", file.display());
        return ExitCode::FAILURE;
    }
    let rows = match accounts::parse_import(&data) {
        Ok(rows) => rows,
        Err(err) => {
            eprintln!("breakwater: {}: {err}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let (mut added, mut skipped, mut failed) = (0, 0, 0);
    println!("address,password");
    for row in rows {
        let password = accounts::generate_password();
        match accounts::add(
            path,
            &row.address,
            &row.display_name,
            &row.aliases,
            false,
            &password,
        ) {
            Ok(account) => {
                added += 1;
                println!("{},{password}", account.address);
                super::api_client::record_local_change(
                    config,
                    "user:add",
                    &account.address,
                    &format!("imported from {}", file.display()),
                );
            }
            Err(AccountError::Invalid(msg)) if msg.contains("already exists") => skipped += 1,
            Err(err) => {
                failed += 1;
                eprintln!("breakwater: {}: {err}", row.address);
            }
        }
    }
    eprintln!("imported {added}, skipped {skipped} existing, {failed} failed; hand the passwords out over a channel that does not depend on the mail system");
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_webhook_is_audited_without_its_secret_path() {
        assert_eq!(
            super::webhook_origin("https://hooks.slack.com/services/T0/B0/s3cr3t"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            super::webhook_origin("http://10.0.0.5:8080"),
            "http://10.0.0.5:8080/…"
        );
        assert_eq!(super::webhook_origin("nonsense"), "a webhook");
    }
}
