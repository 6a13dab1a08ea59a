//! SENDING: mail a signed-in user writes during an outage (reply, forward,
//! a new message). Checked, built (mail-builder), DKIM-signed and queued
//! here; from the spool on, it is mail like any other: delivery takes it
//! by MX for other domains, and to the upstream for our own domains, which
//! keeps it spooled (readable in the recipients' web mailboxes) until the
//! upstream is back. Same retries, TLS policy, DSNs and queue-ID log lines.
//!
//! Why the checks live here and not in the web form: this is what stands
//! between one phished password and a spam cannon or a forged CEO. The
//! sender is always one of the account's own addresses, recipients are
//! bounded per message and messages per hour, no field can carry a line
//! break into a header, and a domain without a DKIM key cannot send.
//!
//! Imports spool, config, envelope, address, dkim, fsutil.

mod sent_log;

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mail_send::mail_builder::headers::address::Address;
use mail_send::mail_builder::MessageBuilder;

use crate::config::{Config, SendConfig, SendMode};
use crate::dkim::DomainKey;
use crate::envelope::{Envelope, QueueId, Recipient};
use crate::spool::Spool;
pub use sent_log::{SentLog, SentRecord};

/// In the spool directory while an admin has stopped sending.
const STOP_FILE: &str = "sending-stopped";

/// In the spool directory: what users sent (`SentLog`).
const SENT_LOG: &str = "sent.jsonl";

/// The Sent view shows at most this many, newest first.
const SENT_SHOWN: usize = 200;

/// The window of `[send] max_per_hour`.
const HOUR: Duration = Duration::from_secs(3600);

/// What the user wrote.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    /// Must be one of the account's own addresses.
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    /// Envelope only: never a header.
    pub bcc: Vec<String>,
    pub subject: String,
    pub text: String,
    /// The Message-ID answered (without `<>`), for `In-Reply-To`.
    pub in_reply_to: Option<String>,
    /// The thread so far (without `<>`), oldest first.
    pub references: Vec<String>,
    pub attachments: Vec<Attachment>,
}

#[derive(Debug, Clone)]
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    pub data: Vec<u8>,
}

/// Why a draft is not sent; each says what to do, for the page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("sending through the continuity service is off")]
    Off,
    #[error("an administrator has stopped all sending")]
    Stopped,
    #[error("sending is only possible while the mail host is unavailable")]
    NotDuringOutage,
    #[error("{0} is not one of your addresses")]
    NotYourAddress(String),
    #[error("{domain} cannot send: it has no DKIM key (ask the administrator)")]
    NoKey { domain: String },
    #[error("no recipients")]
    NoRecipients,
    #[error("at most {max} recipients per message")]
    TooManyRecipients { max: u32 },
    #[error("{address:?} is not an address: {problem}")]
    BadRecipient { address: String, problem: String },
    #[error("the {0} holds a line break or another control character")]
    ControlCharacter(&'static str),
    #[error("at most {max} messages an hour; the next one in {} min", retry_after.as_secs().div_ceil(60))]
    RateLimited { max: u32, retry_after: Duration },
    #[error("the message is {size} bytes; at most {max} may be sent")]
    TooLarge { size: u64, max: u64 },
    #[error("not sent: {0}")]
    Failed(String),
}

/// A queued message.
#[derive(Debug, Clone)]
pub struct Sent {
    pub queue_id: QueueId,
    /// The copy for the sender's own mailbox upstream.
    pub copy: Option<QueueId>,
    /// Without `<>`.
    pub message_id: String,
    pub recipients: usize,
    pub size: usize,
}

/// The one way users' mail enters the spool.
pub struct Outbox {
    spool: Spool,
    config: SendConfig,
    hostname: String,
    /// By domain (lower case).
    keys: HashMap<String, DomainKey>,
    /// Each user's sends within the last hour.
    recent: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// The admins' stop switch, kept in `stop_file` so that a restart
    /// (or an attacker causing one) does not undo it.
    stopped: std::sync::atomic::AtomicBool,
    stop_file: std::path::PathBuf,
    sent: SentLog,
}

impl Outbox {
    /// `keys`: the domains' DKIM keys (`dkim::load_configured`).
    pub fn new(config: &Config, spool: Spool, keys: Vec<DomainKey>) -> Outbox {
        let stop_file = config.spool.dir.join(STOP_FILE);
        let sent = SentLog::new(config.spool.dir.join(SENT_LOG));
        let recent = Mutex::new(last_hour(&sent));
        Outbox {
            sent,
            stopped: std::sync::atomic::AtomicBool::new(stop_file.exists()),
            stop_file,
            spool,
            config: config.send.clone(),
            hostname: config.hostname.clone(),
            keys: keys
                .into_iter()
                .map(|key| (key.domain.clone(), key))
                .collect(),
            recent,
        }
    }

    pub fn mode(&self) -> SendMode {
        self.config.mode
    }

    /// `[send]` as configured.
    pub fn config(&self) -> &SendConfig {
        &self.config
    }

    pub fn stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stop (or resume) all sending at once, durably. Messages already
    /// queued are delivered; hold or delete them with the queue commands.
    pub fn set_stopped(&self, stop: bool) -> std::io::Result<()> {
        if stop {
            crate::fsutil::write_atomic(&self.stop_file, b"stopped by an administrator\n", None)?;
        } else {
            match std::fs::remove_file(&self.stop_file) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
            if let Some(dir) = self.stop_file.parent() {
                crate::fsutil::sync_dir(dir)?;
            }
        }
        self.stopped
            .store(stop, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Check, build, sign and queue `draft` for `user`, whose own
    /// addresses are `own` (the account's address and its aliases).
    /// `outage`: an upstream is down or held, or a drill runs.
    pub async fn send(
        &self,
        user: &str,
        own: &[String],
        outage: bool,
        draft: Draft,
    ) -> Result<Sent, Refusal> {
        match self.config.mode {
            SendMode::Off => return Err(Refusal::Off),
            SendMode::Outage if !outage => return Err(Refusal::NotDuringOutage),
            _ => {}
        }
        if self.stopped() {
            return Err(Refusal::Stopped);
        }
        let from = draft.from.trim().to_string();
        if !own.iter().any(|a| a.eq_ignore_ascii_case(&from)) {
            return Err(Refusal::NotYourAddress(from));
        }
        let domain = from
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        let Some(key) = self.keys.get(&domain) else {
            return Err(Refusal::NoKey { domain });
        };
        no_control_characters(&draft)?;
        let recipients = self.recipients(&draft)?;
        // Taken before any work is done for the message (building, an RSA
        // signature), given back if it is not queued: two sends at once
        // cannot both slip under the limit.
        let slot = self
            .reserve(user)
            .map_err(|retry_after| Refusal::RateLimited {
                max: self.config.max_per_hour,
                retry_after,
            })?;
        let queued = async {
            let message_id = format!("{}@{}", ulid::Ulid::new(), self.hostname);
            let message = build(&draft, &from, &message_id)?;
            let max = self.config.max_message_size.as_u64();
            if message.len() as u64 > max {
                return Err(Refusal::TooLarge {
                    size: message.len() as u64,
                    max,
                });
            }
            let signature = key
                .sign(&message)
                .map_err(|e| Refusal::Failed(e.to_string()))?;
            let mut signed = signature.into_bytes();
            signed.extend_from_slice(&message);
            self.queue(
                user,
                &from,
                &recipients,
                &signed,
                &message_id,
                &draft.subject,
            )
            .await
        }
        .await;
        if queued.is_err() {
            self.release(user, slot);
        }
        queued
    }

    /// Queue the signed message (and the sender's copy), and log it.
    async fn queue(
        &self,
        user: &str,
        from: &str,
        recipients: &[String],
        signed: &[u8],
        message_id: &str,
        subject: &str,
    ) -> Result<Sent, Refusal> {
        let failed = |e: &dyn std::fmt::Display| Refusal::Failed(e.to_string());
        let mut envelope = Envelope::local(from, &recipients[0], &self.hostname);
        envelope.sent_by = Some(user.to_ascii_lowercase());
        envelope.recipients = recipients
            .iter()
            .map(|address| Recipient {
                address: address.clone(),
                orcpt: None,
                notify: 0,
            })
            .collect();
        envelope.smtputf8 = !from.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
        let mut body = self.spool.new_body();
        body.write(signed).map_err(|e| failed(&e))?;
        let queue_id = self
            .spool
            .enqueue(body, envelope)
            .await
            .map_err(|e| failed(&e))?;
        tracing::info!(%queue_id, user, from = %from, recipients = recipients.len(), size = signed.len(), message_id = %message_id, "sending: queued a message written in the web reader");
        let wants_copy =
            self.config.copy_to_mailbox && !recipients.iter().any(|r| r.eq_ignore_ascii_case(user));
        // The message is queued: from here on nothing may say "not sent"
        // (the user would send it again).
        let copy = match wants_copy {
            false => None,
            true => match self.queue_copy(user, from, signed).await {
                Ok(copy) => {
                    tracing::info!(queue_id = %copy, sent = %queue_id, user, "sending: queued the sender's copy for their mailbox upstream");
                    Some(copy)
                }
                Err(err) => {
                    tracing::error!(sent = %queue_id, user, error = %err, "sending: the message is queued, but its copy for the sender's mailbox is not");
                    None
                }
            },
        };
        let record = SentRecord {
            at_ms: crate::envelope::now_ms(),
            user: user.to_ascii_lowercase(),
            queue_id,
            copy,
            message_id: message_id.to_string(),
            from: from.to_string(),
            recipients: recipients.to_vec(),
            subject: subject.to_string(),
            size: signed.len(),
        };
        let log = &self.sent;
        if let Err(err) = crate::fsutil::run_blocking(|| log.append(&record)) {
            // Queued all the same: the Sent view misses it, the mail does not.
            tracing::error!(%queue_id, error = %err, "sending: cannot record the message in the sent log");
        }
        Ok(Sent {
            queue_id,
            copy,
            message_id: message_id.to_string(),
            recipients: recipients.len(),
            size: signed.len(),
        })
    }

    /// Everything sent from `since_ms` to `until_ms` (a drill's report).
    /// Blocking.
    pub fn sent_between(&self, since_ms: u64, until_ms: u64) -> std::io::Result<Vec<SentRecord>> {
        self.sent.read(|r| (since_ms..=until_ms).contains(&r.at_ms))
    }

    /// To the sender's own mailbox upstream: held by the spool like any
    /// mail for our domains until the upstream is back; no DSN for it;
    /// kept for the Sent page like the message itself (never relayed: the
    /// address is ours).
    async fn queue_copy(
        &self,
        user: &str,
        from: &str,
        signed: &[u8],
    ) -> Result<QueueId, crate::spool::SpoolError> {
        let mut envelope = Envelope::local(from, user, &self.hostname);
        envelope.recipients[0].notify = crate::envelope::NOTIFY_NEVER;
        envelope.sent_by = Some(user.to_ascii_lowercase());
        let mut body = self.spool.new_body();
        body.write(signed)?;
        self.spool.enqueue(body, envelope).await
    }

    /// What `user` sent, newest first (at most `SENT_SHOWN`). Blocking.
    pub fn sent_by(&self, user: &str) -> std::io::Result<Vec<SentRecord>> {
        let mut records = self.sent.read(|r| r.user.eq_ignore_ascii_case(user))?;
        records.reverse();
        records.truncate(SENT_SHOWN);
        Ok(records)
    }

    /// Every recipient (To, Cc, Bcc) in wire form, domain lower-cased,
    /// each once.
    fn recipients(&self, draft: &Draft) -> Result<Vec<String>, Refusal> {
        let mut all: Vec<String> = Vec::new();
        for raw in draft.to.iter().chain(&draft.cc).chain(&draft.bcc) {
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            let address = crate::address::canonical(raw, !raw.is_ascii()).map_err(|e| {
                Refusal::BadRecipient {
                    address: raw.to_string(),
                    problem: e.to_string(),
                }
            })?;
            let address = match address.rsplit_once('@') {
                Some((local, domain)) => format!("{local}@{}", domain.to_ascii_lowercase()),
                None => address,
            };
            if !all.iter().any(|a| a.eq_ignore_ascii_case(&address)) {
                all.push(address);
            }
        }
        if all.is_empty() {
            return Err(Refusal::NoRecipients);
        }
        if all.len() > self.config.max_recipients as usize {
            return Err(Refusal::TooManyRecipients {
                max: self.config.max_recipients,
            });
        }
        Ok(all)
    }

    /// Take one of `user`'s sends this hour, or say how long until one
    /// is free.
    fn reserve(&self, user: &str) -> Result<Instant, Duration> {
        let mut recent = self.recent.lock().expect("outbox lock");
        let sends = recent.entry(user.to_ascii_lowercase()).or_default();
        while sends.front().is_some_and(|at| at.elapsed() >= HOUR) {
            sends.pop_front();
        }
        if sends.len() >= self.config.max_per_hour as usize {
            return Err(
                HOUR.saturating_sub(sends.front().map_or(Duration::ZERO, |at| at.elapsed()))
            );
        }
        let now = Instant::now();
        sends.push_back(now);
        Ok(now)
    }

    fn release(&self, user: &str, slot: Instant) {
        if let Some(sends) = self
            .recent
            .lock()
            .expect("outbox lock")
            .get_mut(&user.to_ascii_lowercase())
        {
            sends.retain(|at| *at != slot);
        }
    }
}

/// Each user's sends within the last hour, from the sent log.
fn last_hour(log: &SentLog) -> HashMap<String, VecDeque<Instant>> {
    let now_ms = crate::envelope::now_ms();
    let hour_ms = HOUR.as_millis() as u64;
    let records = log
        .read(|r| now_ms.saturating_sub(r.at_ms) < hour_ms)
        .unwrap_or_else(|err| {
            tracing::error!(error = %err, "sending: cannot read the sent log; hourly limits start afresh");
            Vec::new()
        });
    let mut recent: HashMap<String, VecDeque<Instant>> = HashMap::new();
    let now = Instant::now();
    for record in records {
        let ago = Duration::from_millis(now_ms.saturating_sub(record.at_ms));
        if let Some(at) = now.checked_sub(ago) {
            recent.entry(record.user).or_default().push_back(at);
        }
    }
    recent
}

/// A line break in a header field would let the user write headers of
/// their own (a Bcc to thousands, a forged From).
fn no_control_characters(draft: &Draft) -> Result<(), Refusal> {
    let controls = |s: &str| s.chars().any(char::is_control);
    let fields: [(&'static str, bool); 6] = [
        ("subject", controls(&draft.subject)),
        ("sender", controls(&draft.from)),
        (
            "recipient list",
            draft
                .to
                .iter()
                .chain(&draft.cc)
                .chain(&draft.bcc)
                .any(|a| controls(a)),
        ),
        (
            "reply reference",
            draft.in_reply_to.as_deref().is_some_and(controls)
                || draft.references.iter().any(|r| controls(r)),
        ),
        (
            "attachment name",
            draft.attachments.iter().any(|a| controls(&a.name)),
        ),
        (
            "attachment type",
            draft
                .attachments
                .iter()
                .any(|a| controls(&a.content_type) || !a.content_type.contains('/')),
        ),
    ];
    match fields.iter().find(|(_, bad)| *bad) {
        Some((field, _)) => Err(Refusal::ControlCharacter(field)),
        None => Ok(()),
    }
}

/// The message (RFC 5322, MIME by mail-builder: encoded words for
/// non-ASCII, quoted-printable or base64 bodies), without the Bcc header.
fn build(draft: &Draft, from: &str, message_id: &str) -> Result<Vec<u8>, Refusal> {
    let list = |addresses: &[String]| -> Address<'static> {
        Address::new_list(
            addresses
                .iter()
                .map(|a| a.trim())
                .filter(|a| !a.is_empty())
                .map(|a| Address::new_address(None::<String>, a.to_string()))
                .collect(),
        )
    };
    let mut builder = MessageBuilder::new()
        .from(Address::new_address(None::<String>, from.to_string()))
        .message_id(message_id.to_string())
        .date(crate::envelope::now_ms() as i64 / 1000)
        .subject(draft.subject.clone())
        .header(
            "X-Breakwater-Sent-During-Outage",
            mail_send::mail_builder::headers::raw::Raw::new("yes"),
        )
        .text_body(draft.text.replace("\r\n", "\n").replace('\n', "\r\n"));
    if draft.to.iter().any(|a| !a.trim().is_empty()) {
        builder = builder.to(list(&draft.to));
    }
    if draft.cc.iter().any(|a| !a.trim().is_empty()) {
        builder = builder.cc(list(&draft.cc));
    }
    if let Some(original) = &draft.in_reply_to {
        builder = builder.in_reply_to(original.clone());
    }
    if !draft.references.is_empty() {
        builder = builder.references(draft.references.clone());
    }
    for attachment in &draft.attachments {
        builder = builder.attachment(
            attachment.content_type.clone(),
            attachment.name.clone(),
            attachment.data.clone(),
        );
    }
    builder
        .write_to_vec()
        .map_err(|e| Refusal::Failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DomainConfig, SpoolConfig};
    use mail_parser::MimeHeaders;

    struct World {
        _dir: tempfile::TempDir,
        config: Config,
        spool: Spool,
        outbox: Outbox,
    }

    fn world(mode: SendMode, max_per_hour: u32) -> World {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("dkim.key");
        std::fs::write(
            &key,
            crate::dkim::generate(crate::dkim::Algorithm::Ed25519).unwrap(),
        )
        .unwrap();
        let mut config: Config = toml::from_str("").unwrap();
        config.hostname = "mx2.example.com".into();
        config.send.mode = mode;
        config.send.max_per_hour = max_per_hour;
        config.send.max_recipients = 3;
        config.send.max_message_size = bytesize::ByteSize::kib(64);
        config.domains = vec![
            DomainConfig {
                dkim_selector: "bw1".into(),
                dkim_key: Some(key),
                ..DomainConfig::new("example.com", "mx")
            },
            DomainConfig::new("nokey.example", "mx"),
        ];
        config.spool = SpoolConfig {
            dir: dir.path().join("spool"),
            ..SpoolConfig::default()
        };
        let (spool, _) = Spool::open(&config.spool).unwrap();
        let keys = crate::dkim::load_configured(&config).unwrap();
        let outbox = Outbox::new(&config, spool.clone(), keys);
        World {
            _dir: dir,
            config,
            spool,
            outbox,
        }
    }

    fn own() -> Vec<String> {
        vec![
            "taro@example.com".into(),
            "sales@example.com".into(),
            "taro@nokey.example".into(),
        ]
    }

    fn reply() -> Draft {
        Draft {
            from: "sales@example.com".into(),
            to: vec!["customer@Remote.TEST".into()],
            cc: vec!["colleague@example.com".into()],
            bcc: vec!["boss@example.com".into()],
            subject: "Re: お見積もりのお願い".into(),
            text: "山田様\nお見積もりを添付します。\n".into(),
            in_reply_to: Some("orig-1@remote.test".into()),
            references: vec!["orig-0@remote.test".into(), "orig-1@remote.test".into()],
            attachments: vec![Attachment {
                name: "見積書.pdf".into(),
                content_type: "application/pdf".into(),
                data: b"%PDF-1.4 quote".to_vec(),
            }],
        }
    }

    #[tokio::test]
    async fn a_reply_is_signed_threaded_and_queued_for_every_recipient_without_a_bcc_header() {
        let w = world(SendMode::Always, 30);
        let sent = w
            .outbox
            .send("taro@example.com", &own(), false, reply())
            .await
            .unwrap();
        assert_eq!(sent.recipients, 3);
        let message = w.spool.get(sent.queue_id).await.unwrap().unwrap();
        let to: Vec<&str> = message
            .envelope
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        assert_eq!(
            to,
            [
                "customer@remote.test",
                "colleague@example.com",
                "boss@example.com"
            ]
        );
        assert_eq!(message.envelope.sender, "sales@example.com");
        let raw = w.spool.read_body(sent.queue_id).await.unwrap();
        assert!(raw.starts_with(b"DKIM-Signature: "), "signed first");
        let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
        assert_eq!(parsed.subject(), Some("Re: お見積もりのお願い"));
        assert_eq!(parsed.message_id(), Some(sent.message_id.as_str()));
        assert!(sent.message_id.ends_with("@mx2.example.com"));
        assert_eq!(parsed.in_reply_to().as_text(), Some("orig-1@remote.test"));
        assert_eq!(parsed.references().as_text_list().unwrap().len(), 2);
        assert!(parsed
            .body_text(0)
            .unwrap()
            .contains("お見積もりを添付します"));
        assert_eq!(
            parsed.attachment(0).unwrap().attachment_name(),
            Some("見積書.pdf")
        );
        assert!(parsed.bcc().is_none(), "no Bcc header");
        assert!(!String::from_utf8_lossy(&raw).contains("boss@example.com"));
        let dkim = parsed.header_raw("DKIM-Signature").unwrap();
        assert!(
            dkim.contains("d=example.com") && dkim.contains("s=bw1"),
            "{dkim}"
        );
    }

    #[tokio::test]
    async fn what_a_phished_account_would_try_is_refused() {
        let w = world(SendMode::Always, 2);
        let user = "taro@example.com";
        let refused =
            |draft: Draft| async { w.outbox.send(user, &own(), true, draft).await.unwrap_err() };
        let forged = Draft {
            from: "ceo@example.com".into(),
            ..reply()
        };
        assert_eq!(
            refused(forged).await,
            Refusal::NotYourAddress("ceo@example.com".into())
        );
        let no_key = Draft {
            from: "taro@nokey.example".into(),
            ..reply()
        };
        assert!(matches!(refused(no_key).await, Refusal::NoKey { .. }));
        let injected = Draft {
            subject: "hi\r\nBcc: victim@remote.test".into(),
            ..reply()
        };
        assert_eq!(
            refused(injected).await,
            Refusal::ControlCharacter("subject")
        );
        let injected = Draft {
            to: vec!["a@remote.test>\r\nRCPT TO:<b@remote.test".into()],
            ..reply()
        };
        assert_eq!(
            refused(injected).await,
            Refusal::ControlCharacter("recipient list")
        );
        let many = Draft {
            bcc: (0..5).map(|i| format!("r{i}@remote.test")).collect(),
            ..reply()
        };
        assert_eq!(refused(many).await, Refusal::TooManyRecipients { max: 3 });
        let bad = Draft {
            to: vec!["no-domain".into()],
            cc: vec![],
            bcc: vec![],
            ..reply()
        };
        assert!(matches!(refused(bad).await, Refusal::BadRecipient { .. }));
        let nobody = Draft {
            to: vec![" ".into()],
            cc: vec![],
            bcc: vec![],
            ..reply()
        };
        assert_eq!(refused(nobody).await, Refusal::NoRecipients);
        let big = Draft {
            attachments: vec![Attachment {
                name: "big.bin".into(),
                content_type: "application/octet-stream".into(),
                data: vec![7; 100 * 1024],
            }],
            ..reply()
        };
        assert!(matches!(refused(big).await, Refusal::TooLarge { .. }));
        assert_eq!(w.spool.len(), 0, "nothing refused was queued");
        // Two an hour: the third waits, with how long.
        w.outbox.send(user, &own(), true, reply()).await.unwrap();
        w.outbox
            .send("TARO@example.com", &own(), true, reply())
            .await
            .unwrap();
        match refused(reply()).await {
            Refusal::RateLimited {
                max: 2,
                retry_after,
            } => {
                assert!(retry_after > Duration::from_secs(3500), "{retry_after:?}")
            }
            other => panic!("{other:?}"),
        }
        // Another user has their own budget.
        w.outbox
            .send("hanako@example.com", &own(), true, reply())
            .await
            .unwrap();
        // The stop switch: everyone, at once, and it survives a restart.
        w.outbox.set_stopped(true).unwrap();
        assert_eq!(
            w.outbox
                .send("jiro@example.com", &own(), true, reply())
                .await
                .unwrap_err(),
            Refusal::Stopped
        );
        let mut config: Config = toml::from_str("").unwrap();
        config.spool.dir = w._dir.path().join("spool");
        let again = Outbox::new(&config, w.spool.clone(), Vec::new());
        assert!(again.stopped());
        again.set_stopped(false).unwrap();
        assert!(!Outbox::new(&config, w.spool.clone(), Vec::new()).stopped());
    }

    /// `[send] copy_to_mailbox`, the Sent view's log, and the hourly limit
    /// remembered across a restart (a restart must not hand out a new hour).
    #[tokio::test]
    async fn the_sender_gets_a_copy_and_the_sent_log_keeps_the_limit_across_a_restart() {
        let w = world(SendMode::Always, 2);
        let user = "taro@example.com";
        let sent = w.outbox.send(user, &own(), true, reply()).await.unwrap();
        let queued = w.spool.get(sent.queue_id).await.unwrap().unwrap();
        assert_eq!(queued.envelope.sent_by.as_deref(), Some(user));
        let copy = sent.copy.expect("a copy for the sender's mailbox");
        let copied = w.spool.get(copy).await.unwrap().unwrap();
        assert_eq!(copied.envelope.recipients.len(), 1);
        assert_eq!(copied.envelope.recipients[0].address, user);
        assert_eq!(
            copied.envelope.recipients[0].notify,
            crate::envelope::NOTIFY_NEVER
        );
        assert_eq!(copied.envelope.sender, "sales@example.com");
        assert_eq!(copied.envelope.sent_by.as_deref(), Some(user));
        assert_eq!(
            w.spool.read_body(copy).await.unwrap(),
            w.spool.read_body(sent.queue_id).await.unwrap(),
            "the same signed message"
        );
        // Already among the recipients: no second copy.
        let to_self = Draft {
            cc: vec!["Taro@example.com".into()],
            ..reply()
        };
        let second = w.outbox.send(user, &own(), true, to_self).await.unwrap();
        assert_eq!(second.copy, None);
        let log = w.outbox.sent_by("TARO@example.com").unwrap();
        assert_eq!(
            log.iter().map(|r| r.queue_id).collect::<Vec<_>>(),
            [second.queue_id, sent.queue_id],
            "newest first"
        );
        assert_eq!(log[1].copy, Some(copy));
        assert_eq!(log[1].subject, "Re: お見積もりのお願い");
        assert!(w.outbox.sent_by("hanako@example.com").unwrap().is_empty());
        // A restart: the two sends of this hour still count.
        let keys = crate::dkim::load_configured(&w.config).unwrap();
        let again = Outbox::new(&w.config, w.spool.clone(), keys);
        assert!(matches!(
            again.send(user, &own(), true, reply()).await,
            Err(Refusal::RateLimited { max: 2, .. })
        ));
        assert!(again
            .send("hanako@example.com", &own(), true, reply())
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn the_mode_decides_when_anyone_may_send() {
        let off = world(SendMode::Off, 30);
        assert_eq!(
            off.outbox
                .send("t", &own(), true, reply())
                .await
                .unwrap_err(),
            Refusal::Off
        );
        let outage = world(SendMode::Outage, 30);
        assert_eq!(
            outage
                .outbox
                .send("t", &own(), false, reply())
                .await
                .unwrap_err(),
            Refusal::NotDuringOutage
        );
        assert!(outage.outbox.send("t", &own(), true, reply()).await.is_ok());
    }
}
