//! Recipient verification by callout: ask the upstream whether a recipient
//! exists (`MAIL FROM:<>`, `RCPT TO`, `RSET`, `QUIT`) before accepting mail
//! for it, so a secondary MX does not accept mail for nonexistent users and
//! then turn into a backscatter source.
//!
//! The answers are cached the way Postfix's `verify(8)` caches them (7 days
//! positive, 1 hour negative) in a small append-only file, because the cache
//! matters most exactly when the upstream is down: then nothing can be
//! asked, and the cache (then the static list, then the domain's fallback)
//! decides. A failed probe also marks the upstream "not worth asking" for
//! `retry_after`, so RCPT does not wait on a dead host each time.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{parse_host_port, CalloutConfig};
use crate::envelope::now_ms;
use crate::smtp_client::{Dialer, Session, TlsClients};

/// What the upstream (or the cache) says about one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Known {
        cached: bool,
    },
    Unknown {
        cached: bool,
        reply: String,
    },
    /// Nothing could be asked and nothing is cached.
    Unavailable(String),
}

pub struct Callout {
    config: CalloutConfig,
    /// Probes are cleartext: they carry no mail, only an address.
    dialer: Dialer,
    /// Lower-cased address → (exists, expires at ms).
    cache: Mutex<HashMap<String, (bool, u64)>>,
    log: Mutex<Option<std::fs::File>>,
    /// Upstream → do not probe again before this instant.
    resting: Mutex<HashMap<String, Instant>>,
}

impl Callout {
    /// Load the cache file (expired and malformed lines are dropped, and the
    /// file is rewritten compacted).
    pub fn open(config: &CalloutConfig, helo_name: &str) -> Callout {
        let mut cache = HashMap::new();
        let now = now_ms();
        if let Ok(file) = std::fs::File::open(&config.cache_file) {
            for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
                let mut fields = line.split('\t');
                let (Some(address), Some(verdict), Some(expires)) =
                    (fields.next(), fields.next(), fields.next())
                else {
                    continue;
                };
                let Ok(expires) = expires.parse::<u64>() else {
                    continue;
                };
                let exists = match verdict {
                    "known" => true,
                    "unknown" => false,
                    _ => continue,
                };
                if expires > now {
                    cache.insert(address.to_string(), (exists, expires));
                } else {
                    cache.remove(address);
                }
            }
        }
        let log = compact(&config.cache_file, &cache)
            .map_err(|err| {
                tracing::warn!(file = %config.cache_file.display(), error = %err, "callout: cache file not writable; results kept in memory only")
            })
            .ok();
        Callout {
            config: config.clone(),
            dialer: Dialer::new(
                helo_name,
                config.timeout,
                config.timeout,
                std::sync::Arc::new(
                    TlsClients::new(None)
                        .expect("the ring provider offers the default TLS versions"),
                ),
            ),
            cache: Mutex::new(cache),
            log: Mutex::new(log),
            resting: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh cached answer, if any.
    pub fn cached(&self, address: &str) -> Option<bool> {
        let key = address.to_lowercase();
        let cache = self.cache.lock().expect("callout cache");
        cache
            .get(&key)
            .filter(|(_, expires)| *expires > now_ms())
            .map(|(exists, _)| *exists)
    }

    /// The cache first, then a probe of `upstream` ("host:port[,host:port]").
    pub async fn verify(&self, address: &str, upstream: &str) -> Answer {
        match self.cached(address) {
            Some(true) => return Answer::Known { cached: true },
            Some(false) => {
                return Answer::Unknown {
                    cached: true,
                    reply: "cached negative answer".into(),
                }
            }
            None => {}
        }
        let resting_until = self
            .resting
            .lock()
            .expect("callout resting")
            .get(upstream)
            .copied();
        if resting_until.is_some_and(|until| Instant::now() < until) {
            return Answer::Unavailable("upstream did not answer a recent probe".into());
        }
        let answer = match tokio::time::timeout(self.config.timeout, self.probe(address, upstream))
            .await
        {
            Ok(answer) => answer,
            Err(_) => Answer::Unavailable(format!("no answer within {:?}", self.config.timeout)),
        };
        match &answer {
            Answer::Known { .. } => self.remember(address, true, self.config.positive_ttl),
            Answer::Unknown { .. } => self.remember(address, false, self.config.negative_ttl),
            Answer::Unavailable(why) => {
                tracing::info!(upstream, error = %why, "callout: upstream unavailable; using the fallback");
                self.resting.lock().expect("callout resting").insert(
                    upstream.to_string(),
                    Instant::now() + self.config.retry_after,
                );
            }
        }
        answer
    }

    async fn probe(&self, address: &str, upstream: &str) -> Answer {
        let mut last = String::from("no upstream host");
        for host in upstream.split(',').map(str::trim) {
            let Some((name, port)) = parse_host_port(host) else {
                continue;
            };
            let mut session = match self.dialer.connect_named(name, port).await {
                Ok(session) => session,
                Err(err) => {
                    last = format!("{host}: {err}");
                    continue;
                }
            };
            let asked = self.ask(&mut session, address).await;
            session.quit().await;
            match asked {
                Ok(answer) => return answer,
                Err(why) => last = format!("{host}: {why}"),
            }
        }
        Answer::Unavailable(last)
    }

    async fn ask(&self, session: &mut Session, address: &str) -> Result<Answer, String> {
        let mail = session
            .command("MAIL FROM:<>\r\n")
            .await
            .map_err(|e| format!("MAIL: {e}"))?;
        if mail.code != 250 {
            return Err(format!(
                "MAIL FROM:<> refused: {} {}",
                mail.code, mail.message
            ));
        }
        let path = crate::address::path(address).map_err(|e| format!("RCPT: {e}"))?;
        let rcpt = session
            .command(&format!("RCPT TO:{path}\r\n"))
            .await
            .map_err(|e| format!("RCPT: {e}"))?;
        let _ = session.command("RSET\r\n").await;
        match rcpt.code {
            250 | 251 => Ok(Answer::Known { cached: false }),
            // 5xx on RCPT is the upstream's word that the address does not
            // exist; 4xx (greylisting, overload) says nothing.
            550..=559 => Ok(Answer::Unknown {
                cached: false,
                reply: format!("{} {}", rcpt.code, rcpt.message),
            }),
            code => Err(format!("RCPT answered {code} {}", rcpt.message)),
        }
    }

    fn remember(&self, address: &str, exists: bool, ttl: Duration) {
        let key = address.to_lowercase();
        let expires = now_ms() + ttl.as_millis() as u64;
        self.cache
            .lock()
            .expect("callout cache")
            .insert(key.clone(), (exists, expires));
        let mut log = self.log.lock().expect("callout log");
        if let Some(file) = log.as_mut() {
            let verdict = if exists { "known" } else { "unknown" };
            // A lost line only costs one more probe later: no fsync.
            let _ = writeln!(file, "{key}\t{verdict}\t{expires}");
        }
    }

    pub fn cache_file(&self) -> &PathBuf {
        &self.config.cache_file
    }
}

/// Rewrite the cache file with only live entries; returns it open for append.
fn compact(
    path: &std::path::Path,
    cache: &HashMap<String, (bool, u64)>,
) -> std::io::Result<std::fs::File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut out = Vec::new();
    for (address, (exists, expires)) in cache {
        let verdict = if *exists { "known" } else { "unknown" };
        writeln!(out, "{address}\t{verdict}\t{expires}")?;
    }
    crate::fsutil::write_atomic(path, &out, None)?;
    std::fs::OpenOptions::new().append(true).open(path)
}
