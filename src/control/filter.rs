//! Which spooled messages an operator means: the filter shared by the list
//! endpoint (query string) and bulk actions (JSON body).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::delivery::DeliveryHandle;
use crate::envelope::{now_ms, QueueId};
use crate::spool::{SpoolError, SpooledMessage, View};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// queued | deferred | held | failed | delivered (kept by `[web] retain_delivered`)
    pub status: Option<String>,
    /// Exact envelope sender, case-insensitive ("" = the null sender).
    pub sender: Option<String>,
    /// Exact recipient address, case-insensitive.
    pub recipient: Option<String>,
    /// Recipient domain.
    pub domain: Option<String>,
    /// Upstream name as shown by /api/v1/upstreams.
    pub upstream: Option<String>,
    /// e.g. "30m": only messages older than this.
    pub older_than: Option<String>,
    pub newer_than: Option<String>,
    /// Case-insensitive text in the Subject header.
    pub subject: Option<String>,
}

pub use crate::envelope::STATUSES;

/// The operator-facing status of a message.
pub fn status_of(message: &SpooledMessage) -> &'static str {
    message.state.status()
}

/// A filter with its durations parsed and its values checked.
pub struct Compiled {
    filter: Filter,
    older_than_ms: Option<u64>,
    newer_than_ms: Option<u64>,
}

fn duration(key: &str, value: &Option<String>) -> Result<Option<u64>, String> {
    value
        .as_deref()
        .map(|v| {
            humantime::parse_duration(v)
                .map(|d: Duration| d.as_millis() as u64)
                .map_err(|e| format!("{key}: {v:?} is not a duration like \"30m\" or \"2h\": {e}"))
        })
        .transpose()
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.status.is_none()
            && self.sender.is_none()
            && self.recipient.is_none()
            && self.domain.is_none()
            && self.upstream.is_none()
            && self.older_than.is_none()
            && self.newer_than.is_none()
            && self.subject.is_none()
    }

    pub fn compile(self) -> Result<Compiled, String> {
        if let Some(status) = &self.status {
            if !STATUSES.contains(&status.as_str()) {
                return Err(format!(
                    "status: {status:?} is not one of {}",
                    STATUSES.join(", ")
                ));
            }
        }
        Ok(Compiled {
            older_than_ms: duration("older_than", &self.older_than)?,
            newer_than_ms: duration("newer_than", &self.newer_than)?,
            filter: self,
        })
    }
}

impl Compiled {
    /// Does the message match every term but the Subject (which needs its
    /// body, see [`select`])?
    fn matches_envelope(
        &self,
        message: &SpooledMessage,
        delivery: Option<&DeliveryHandle>,
    ) -> bool {
        let f = &self.filter;
        let env = &message.envelope;
        let age = now_ms().saturating_sub(env.received_at_ms);
        if f.status.as_deref().is_some_and(|s| s != status_of(message))
            || f.sender
                .as_deref()
                .is_some_and(|s| !s.eq_ignore_ascii_case(&env.sender))
            || f.recipient.as_deref().is_some_and(|r| {
                !env.recipients
                    .iter()
                    .any(|x| x.address.eq_ignore_ascii_case(r))
            })
            || f.domain.as_deref().is_some_and(|d| {
                !env.recipients
                    .iter()
                    .any(|x| x.domain().eq_ignore_ascii_case(d))
            })
            || self.older_than_ms.is_some_and(|min| age < min)
            || self.newer_than_ms.is_some_and(|max| age > max)
        {
            return false;
        }
        if let Some(upstream) = &f.upstream {
            let Some(delivery) = delivery else {
                return false;
            };
            if !delivery.upstreams_of(message).iter().any(|u| u == upstream) {
                return false;
            }
        }
        true
    }

    /// Does this Subject (None: the message has none) match the Subject term?
    fn matches_subject(&self, subject: Option<String>) -> bool {
        match &self.filter.subject {
            None => true,
            Some(text) => subject.is_some_and(|s| s.to_lowercase().contains(&text.to_lowercase())),
        }
    }
}

/// How many messages `select` examines per spool page while it looks for
/// Subject matches.
const SUBJECT_SCAN_BATCH: usize = 256;

/// Up to `limit` messages matching `filter` in arrival order after the
/// cursor `after`, and the cursor for the next page (None at the end). The
/// Subject term reads each candidate's header section, so it is checked
/// last, only for messages that match everything else.
pub async fn select(
    spool: &View,
    filter: &Compiled,
    delivery: Option<&DeliveryHandle>,
    after: Option<QueueId>,
    limit: usize,
) -> Result<(Vec<SpooledMessage>, Option<QueueId>), SpoolError> {
    if let Some(recipient) = &filter.filter.recipient {
        return select_for_recipient(spool, filter, delivery, recipient, after, limit).await;
    }
    if filter.filter.subject.is_none() {
        return spool
            .page(after, limit, |m| filter.matches_envelope(m, delivery))
            .await;
    }
    let mut found = Vec::new();
    let mut cursor = after;
    loop {
        let (candidates, next) = spool
            .page(cursor, SUBJECT_SCAN_BATCH, |m| {
                filter.matches_envelope(m, delivery)
            })
            .await?;
        for message in candidates {
            let head = spool.read_head(message.id, HEADER_SCAN).await.ok();
            if filter.matches_subject(head.and_then(|b| subject_of(&b))) {
                let id = message.id;
                found.push(message);
                if found.len() == limit {
                    return Ok((found, Some(id)));
                }
            }
        }
        match next {
            Some(next) => cursor = Some(next),
            None => return Ok((found, None)),
        }
    }
}

/// [`select`] with a recipient term: pages through that recipient's
/// messages (the spool's recipient index, in queue-ID order like every page)
/// instead of the whole spool, where a page for an address with 98 of a
/// million messages read all million entries.
async fn select_for_recipient(
    spool: &View,
    filter: &Compiled,
    delivery: Option<&DeliveryHandle>,
    recipient: &str,
    after: Option<QueueId>,
    limit: usize,
) -> Result<(Vec<SpooledMessage>, Option<QueueId>), SpoolError> {
    let ids = spool.ids_for_recipient(recipient).await?;
    let start = after.map_or(0, |after| ids.partition_point(|id| *id <= after));
    let mut found = Vec::new();
    for (n, id) in ids[start..].iter().enumerate() {
        // Gone since the index was read: skipped, as a page would.
        let Some(message) = spool.get(*id).await? else {
            continue;
        };
        if !filter.matches_envelope(&message, delivery) {
            continue;
        }
        if filter.filter.subject.is_some() {
            let head = spool.read_head(*id, HEADER_SCAN).await.ok();
            if !filter.matches_subject(head.and_then(|b| subject_of(&b))) {
                continue;
            }
        }
        found.push(message);
        if found.len() == limit {
            let more = start + n + 1 < ids.len();
            return Ok((found, more.then_some(*id)));
        }
    }
    Ok((found, None))
}

/// The header section of a message (up to the first empty line).
pub fn header_section(body: &[u8]) -> &[u8] {
    let end = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(body.len(), |p| p + 2);
    &body[..end]
}

/// How much of a message to read for its header section (Subject filter,
/// `queue show`): the headers of any sane message fit; the rest of a large
/// body is never loaded.
pub const HEADER_SCAN: usize = 64 * 1024;

/// The raw Subject header value, unfolded (no MIME decoding).
pub fn subject_of(body: &[u8]) -> Option<String> {
    let headers = String::from_utf8_lossy(header_section(body))
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ");
    headers
        .split("\r\n")
        .find(|line| line.len() > 8 && line[..8].eq_ignore_ascii_case("subject:"))
        .map(|line| line[8..].trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SpoolConfig;
    use crate::envelope::Envelope;
    use crate::spool::Spool;

    async fn put(spool: &Spool, subject: &str, to: &str) -> QueueId {
        let mut body = spool.new_body();
        body.write(format!("Subject: {subject}\r\n\r\nx\r\n").as_bytes())
            .unwrap();
        let envelope = Envelope::local("s@remote.test", to, "t");
        spool.enqueue(body, envelope).await.unwrap()
    }

    async fn all_pages(spool: &Spool, filter: Filter, limit: usize) -> Vec<QueueId> {
        let compiled = filter.compile().unwrap();
        let (mut seen, mut after) = (Vec::new(), None);
        loop {
            let (page, next) = select(&spool.this_node(), &compiled, None, after, limit)
                .await
                .unwrap();
            assert!(page.len() <= limit);
            seen.extend(page.iter().map(|m| m.id));
            match next {
                Some(next) => after = Some(next),
                None => return seen,
            }
        }
    }

    /// A recipient term pages through the recipient index; the pages must be
    /// exactly what filtering every message gives, with the other terms too.
    #[tokio::test]
    async fn a_recipient_filter_pages_through_the_index_like_a_full_scan() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(&SpoolConfig {
            dir: dir.path().join("spool"),
            ..SpoolConfig::default()
        })
        .unwrap();
        let mut expected = Vec::new();
        let mut invoices = Vec::new();
        for i in 0..120 {
            let to = if i % 3 == 0 {
                "Rare@Example.com"
            } else {
                "other@example.com"
            };
            let subject = if i % 2 == 0 { "invoice" } else { "hello" };
            let id = put(&spool, subject, to).await;
            if i % 3 == 0 {
                expected.push(id);
                if i % 2 == 0 {
                    invoices.push(id);
                }
            }
        }
        spool.remove(expected[5], "delivered").await.unwrap();
        expected.remove(5);
        let rare = || Filter {
            recipient: Some("rare@EXAMPLE.com".into()),
            ..Filter::default()
        };
        for limit in [1, 7, 40, 100] {
            assert_eq!(all_pages(&spool, rare(), limit).await, expected, "{limit}");
        }
        let with_subject = Filter {
            subject: Some("INVOICE".into()),
            ..rare()
        };
        assert_eq!(all_pages(&spool, with_subject, 3).await, invoices);
        let nobody = Filter {
            recipient: Some("nobody@example.com".into()),
            ..Filter::default()
        };
        assert!(all_pages(&spool, nobody, 10).await.is_empty());
        spool.close().await;
    }
}
