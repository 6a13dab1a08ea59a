//! Where mail for a recipient domain goes: a static list of hosts, or the
//! domain's MX records (RFC 5321 5.1), with Postfix's self-MX protection.
//!
//! Routing is two steps: [`Router::route_for`] is pure configuration (which
//! upstream, which TLS policy) and names the upstream whose health and hold
//! state apply; [`Router::targets`] asks DNS for the concrete addresses at
//! attempt time, so a changed MX takes effect without a restart. MX routes
//! honour the recipient domain's MTA-STS policy (`delivery::sts`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use super::sts::StsPolicies;
use crate::config::{parse_host_port, Config, UpstreamTls};
use crate::mta_sts::Mode;

/// The configured way to a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Name of the upstream: the static host list as configured, or
    /// `mx:<domain>`. Health, hold and concurrency are tracked per upstream.
    pub upstream: String,
    pub tls: UpstreamTls,
    /// Through `[send] relay`, the outbound smart host for users' mail.
    pub relay: bool,
}

/// `[send] relay_username` and its password, for AUTH at the smart host.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Login({:?}, password hidden)", self.username)
    }
}

/// `[send] relay`: where mail written in the web reader leaves for other
/// domains, when it may not go by MX (port 25 blocked, a provider's
/// reputation wanted).
#[derive(Debug, Clone)]
struct SmartHost {
    name: String,
    host: String,
    port: u16,
    login: Option<std::sync::Arc<Login>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name for logs and TLS verification.
    pub host: String,
    pub addr: SocketAddr,
    /// Chosen under the recipient domain's MTA-STS `enforce` policy: only
    /// TLS verified for `host` will do, never cleartext.
    pub mta_sts: bool,
    /// Authenticate (after STARTTLS) before the transaction.
    pub login: Option<std::sync::Arc<Login>>,
}

/// A routing failure, with the enhanced status code it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    Temporary(String),
    Permanent(String),
}

#[derive(Debug, Clone)]
enum Spec {
    Mx,
    Hosts(Vec<(String, u16)>),
}

pub struct Router {
    resolver: TokioResolver,
    hostname: String,
    listen: Vec<SocketAddr>,
    mx_port: u16,
    /// `[delivery] ipv4_only`: IPv6 addresses are never tried.
    ipv4_only: bool,
    domains: HashMap<String, (Spec, String, UpstreamTls)>,
    /// `[delivery] mta_sts`: recipient domains' policies, for MX routes.
    sts: Option<StsPolicies>,
    relay: Option<SmartHost>,
}

/// The smart host's login: `relay_username` and the password file's only
/// line (a password in the config would end up in backups and tickets).
fn relay_login(send: &crate::config::SendConfig) -> Result<Option<std::sync::Arc<Login>>, String> {
    if send.relay_username.is_empty() {
        return Ok(None);
    }
    let Some(path) = &send.relay_password_file else {
        return Err("send.relay_password_file: needed with send.relay_username".into());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("send.relay_password_file {}: {e}", path.display()))?;
    let password = text.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() || password.contains(['\r', '\n']) {
        return Err(format!(
            "send.relay_password_file {}: must hold the password alone, on one line",
            path.display()
        ));
    }
    Ok(Some(std::sync::Arc::new(Login {
        username: send.relay_username.clone(),
        password,
    })))
}

impl Router {
    pub fn new(config: &Config) -> Result<Router, String> {
        let resolver = crate::dns::build_resolver(&config.dns)?;
        let mut domains = HashMap::new();
        for domain in &config.domains {
            let name = domain.name.trim_end_matches('.').to_ascii_lowercase();
            let spec = if domain.upstream == "mx" {
                Spec::Mx
            } else {
                Spec::Hosts(
                    domain
                        .upstream
                        .split(',')
                        .filter_map(|part| parse_host_port(part.trim()))
                        .map(|(h, p)| (h.to_string(), p))
                        .collect(),
                )
            };
            let key = match spec {
                Spec::Mx => format!("mx:{name}"),
                Spec::Hosts(_) => domain.upstream.replace(' ', ""),
            };
            domains.insert(name, (spec, key, domain.tls));
        }
        let sts = match config.delivery.mta_sts {
            true => Some(StsPolicies::new(
                resolver.clone(),
                crate::smtp_client::TlsClients::new(config.delivery.extra_ca_file.as_deref())?,
                config.delivery.mta_sts_port,
            )),
            false => None,
        };
        let relay = match parse_host_port(&config.send.relay) {
            None => None,
            Some((host, port)) => Some(SmartHost {
                name: config.send.relay.clone(),
                host: host.to_string(),
                port,
                login: relay_login(&config.send)?,
            }),
        };
        Ok(Router {
            relay,
            sts,
            resolver,
            hostname: config.hostname.trim_end_matches('.').to_ascii_lowercase(),
            listen: config.smtp.listen.clone(),
            mx_port: config.delivery.mx_port,
            ipv4_only: config.delivery.ipv4_only,
            domains,
        })
    }

    /// The route for a recipient domain. Domains we do not serve (DSNs going
    /// back to senders) use their MX with opportunistic TLS.
    pub fn route_for(&self, domain: &str) -> Route {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        match self.domains.get(&domain) {
            Some((_, key, tls)) => Route {
                upstream: key.clone(),
                tls: *tls,
                relay: false,
            },
            None => Route {
                upstream: format!("mx:{domain}"),
                tls: UpstreamTls::Opportunistic,
                relay: false,
            },
        }
    }

    /// The route for one recipient of `envelope`: mail written in the web
    /// reader to a domain we do not serve takes `[send] relay` when one is
    /// set (with a password: verified TLS, never a password in cleartext).
    pub fn route_for_recipient(&self, envelope: &crate::envelope::Envelope, domain: &str) -> Route {
        let ours = self
            .domains
            .contains_key(&domain.trim_end_matches('.').to_ascii_lowercase());
        match &self.relay {
            Some(relay) if envelope.sent_by.is_some() && !ours => Route {
                upstream: relay.name.clone(),
                tls: match relay.login {
                    Some(_) => UpstreamTls::Required,
                    None => UpstreamTls::Opportunistic,
                },
                relay: true,
            },
            _ => self.route_for(domain),
        }
    }

    /// The smart host's addresses, with its login.
    pub async fn relay_targets(&self) -> Result<Vec<Target>, RouteError> {
        let Some(relay) = &self.relay else {
            return Err(RouteError::Temporary(
                "4.3.5 no [send] relay configured".into(),
            ));
        };
        let found = self.addresses(&relay.host, relay.port).await?;
        Ok(found
            .into_iter()
            .map(|t| Target {
                login: relay.login.clone(),
                ..t
            })
            .collect())
    }

    /// Concrete addresses to try, in order.
    pub async fn targets(&self, domain: &str) -> Result<Vec<Target>, RouteError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let spec = self
            .domains
            .get(&domain)
            .map_or(Spec::Mx, |(spec, _, _)| spec.clone());
        let targets = match spec {
            Spec::Hosts(hosts) => {
                let mut out = Vec::new();
                let mut last_error = None;
                for (host, port) in hosts {
                    match self.addresses(&host, port).await {
                        Ok(found) => out.extend(found),
                        Err(err) => last_error = Some(err),
                    }
                }
                if out.is_empty() {
                    return Err(last_error.unwrap_or_else(|| {
                        RouteError::Temporary("4.4.3 no upstream address".into())
                    }));
                }
                out
            }
            Spec::Mx => self.mx_targets(&domain).await?,
        };
        let targets: Vec<Target> = targets
            .into_iter()
            .filter(|t| !self.is_own_listener(t.addr))
            .collect();
        if targets.is_empty() {
            return Err(RouteError::Permanent(format!(
                "5.4.6 mail for {domain} loops back to myself"
            )));
        }
        Ok(targets)
    }

    /// Targets for an explicit "host:port[,host:port]" list (operator requeue).
    pub async fn targets_via(&self, hosts: &str) -> Result<Vec<Target>, RouteError> {
        let mut out = Vec::new();
        let mut last_error = RouteError::Permanent(format!("5.3.5 bad route {hosts:?}"));
        for (host, port) in hosts
            .split(',')
            .filter_map(|part| parse_host_port(part.trim()))
        {
            match self.addresses(host, port).await {
                Ok(found) => {
                    out.extend(found.into_iter().filter(|t| !self.is_own_listener(t.addr)))
                }
                Err(err) => last_error = err,
            }
        }
        if out.is_empty() {
            return Err(last_error);
        }
        Ok(out)
    }

    async fn mx_targets(&self, domain: &str) -> Result<Vec<Target>, RouteError> {
        let fqdn = format!("{domain}.");
        let mut hosts: Vec<(u16, String)> = match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::MX(mx) => Some((
                        mx.preference,
                        mx.exchange
                            .to_ascii()
                            .trim_end_matches('.')
                            .to_ascii_lowercase(),
                    )),
                    _ => None,
                })
                .collect(),
            Err(err) if err.is_nx_domain() => {
                return Err(RouteError::Permanent(format!(
                    "5.1.2 domain {domain} does not exist"
                )))
            }
            // RFC 5321 5.1: no MX records → the domain itself is the implicit MX.
            Err(err) if err.is_no_records_found() => vec![(0, domain.to_string())],
            Err(err) => {
                return Err(RouteError::Temporary(format!(
                    "4.4.3 MX lookup for {domain} failed: {err}"
                )))
            }
        };
        // RFC 7505 null MX: "0 ." — the domain accepts no mail.
        if hosts.iter().any(|(_, host)| host.is_empty()) {
            return Err(RouteError::Permanent(format!(
                "5.1.10 domain {domain} does not accept mail (null MX)"
            )));
        }
        hosts.sort();
        // Self-MX protection (Postfix smtp_addr.c): never relay to ourselves
        // or to hosts no better than ourselves.
        if let Some(own) = hosts
            .iter()
            .find(|(_, host)| *host == self.hostname)
            .map(|(pref, _)| *pref)
        {
            hosts.retain(|(pref, _)| *pref < own);
            if hosts.is_empty() {
                return Err(RouteError::Permanent(format!(
                    "5.4.6 mail for {domain} loops back to myself"
                )));
            }
        }
        let enforced = self.apply_mta_sts(domain, &mut hosts).await?;
        let mut targets = Vec::new();
        for (_, host) in &hosts {
            if let Ok(found) = self.addresses(host, self.mx_port).await {
                targets.extend(found.into_iter().map(|t| Target {
                    mta_sts: enforced,
                    ..t
                }));
            }
        }
        if targets.is_empty() {
            return Err(RouteError::Temporary(format!(
                "4.4.4 unable to find primary relay for {domain}"
            )));
        }
        Ok(targets)
    }

    /// RFC 8461 5: under an `enforce` policy keep only the MX hosts it
    /// lists (none listed: a deferral, never a delivery elsewhere) and say
    /// so (`true`: TLS verified for the host name is required); a `testing`
    /// policy changes nothing but is logged when it would.
    async fn apply_mta_sts(
        &self,
        domain: &str,
        hosts: &mut Vec<(u16, String)>,
    ) -> Result<bool, RouteError> {
        let Some(sts) = &self.sts else {
            return Ok(false);
        };
        let Some(in_force) = sts.policy(domain).await else {
            return Ok(false);
        };
        let unlisted: Vec<&str> = hosts
            .iter()
            .filter(|(_, host)| !in_force.policy.allows(host))
            .map(|(_, host)| host.as_str())
            .collect();
        match in_force.policy.mode {
            Mode::Enforce => {
                if unlisted.len() == hosts.len() {
                    return Err(RouteError::Temporary(format!(
                        "4.7.5 MTA-STS policy {} of {domain} (enforce) lists none of its MX hosts ({}); kept until it does",
                        in_force.id,
                        unlisted.join(", ")
                    )));
                }
                if !unlisted.is_empty() {
                    tracing::info!(domain, id = %in_force.id, skipped = %unlisted.join(","), "mta-sts: MX hosts the enforce policy does not list are skipped");
                }
                hosts.retain(|(_, host)| in_force.policy.allows(host));
                Ok(true)
            }
            Mode::Testing => {
                if !unlisted.is_empty() {
                    tracing::warn!(domain, id = %in_force.id, unlisted = %unlisted.join(","), "mta-sts: the testing-mode policy does not list these MX hosts; delivering anyway (enforce would not)");
                }
                Ok(false)
            }
            Mode::None => Ok(false),
        }
    }

    async fn addresses(&self, host: &str, port: u16) -> Result<Vec<Target>, RouteError> {
        let wanted = |ip: &IpAddr| ip.is_ipv4() || !self.ipv4_only;
        let no_ipv4 = || {
            RouteError::Temporary(format!(
                "4.4.3 host {host} has no IPv4 address ([delivery] ipv4_only)"
            ))
        };
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            if !wanted(&ip) {
                return Err(no_ipv4());
            }
            return Ok(vec![Target {
                host: host.to_string(),
                addr: SocketAddr::new(ip, port),
                mta_sts: false,
                login: None,
            }]);
        }
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        match self.resolver.lookup_ip(fqdn.as_str()).await {
            Ok(lookup) => {
                let targets: Vec<Target> = lookup
                    .iter()
                    .filter(wanted)
                    .map(|ip| Target {
                        host: host.to_string(),
                        addr: SocketAddr::new(ip, port),
                        mta_sts: false,
                        login: None,
                    })
                    .collect();
                if targets.is_empty() && self.ipv4_only {
                    return Err(no_ipv4());
                }
                Ok(targets)
            }
            Err(err) if err.is_nx_domain() || err.is_no_records_found() => Err(
                RouteError::Temporary(format!("4.4.3 host {host} has no address")),
            ),
            Err(err) => Err(RouteError::Temporary(format!(
                "4.4.3 address lookup for {host} failed: {err}"
            ))),
        }
    }

    fn is_own_listener(&self, addr: SocketAddr) -> bool {
        self.listen.iter().any(|own| {
            own.port() == addr.port()
                && (own.ip() == addr.ip()
                    || (own.ip().is_unspecified()
                        && (addr.ip().is_loopback() || addr.ip().is_unspecified())))
        })
    }
}
