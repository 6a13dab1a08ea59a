//! The mailbox search index: words and Japanese character pairs of every
//! spooled message, persisted with tantivy, so a search asks an inverted
//! index instead of reading each of a user's (possibly 20,000) messages.
//!
//! Why terms and not substrings: Japanese has no spaces between words, so a
//! word tokenizer finds nothing in it; a dictionary tokenizer (lindera,
//! with its dictionary) would more than double the build. Instead, runs of
//! CJK characters are indexed as their single characters and overlapping
//! pairs (the usual bigram approach), and other scripts as lower-cased
//! words. A query matches messages that hold every term of it: "請求書"
//! looks for 請求 and 求書, "invoice march" for both words. Latin query words
//! of three letters or more also match longer words they begin (invo →
//! invoice). What a substring scan found and this does not: a Latin word
//! inside another (voice → invoice). A CJK query of three characters or more
//! can match a message holding its pairs apart (no positions are stored:
//! they would double the index).
//!
//! The index follows the spool (`follower`): at start a pass over every
//! spooled message adds what the index lacks and deletes what left the
//! spool, then the spool's arrival and removal feed keeps it current (a
//! follower that lagged behind the feed makes another pass). Until the first
//! pass has finished, searches use the slow scan, so a result is never
//! silently incomplete; results are always intersected with the mailbox's
//! live messages, so a document the index has not deleted yet never shows.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tantivy::collector::DocSetCollector;
use tantivy::query::{BooleanQuery, Occur, Query, RegexQuery, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, STRING,
};
use tantivy::tokenizer::{TextAnalyzer, WhitespaceTokenizer};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::envelope::QueueId;

mod follower;
pub use follower::follow;

/// Longest word indexed (longer runs are encoded data, not words).
const MAX_WORD_BYTES: usize = 40;
/// Query words at least this long also match words they begin.
const PREFIX_FROM_CHARS: usize = 3;
/// The indexing thread's memory arena (tantivy's minimum is 15 MB).
const WRITER_ARENA_BYTES: usize = 32 * 1024 * 1024;
const TERMS_TOKENIZER: &str = "breakwater_terms";

/// Is `c` written without spaces between words (Han, kana, Hangul)?
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x3400..=0x4DBF    // CJK Extension A
        | 0x4E00..=0x9FFF    // CJK Unified Ideographs
        | 0xF900..=0xFAFF    // CJK Compatibility Ideographs
        | 0xFF66..=0xFF9F    // half-width Katakana
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0x20000..=0x2FA1F) // CJK Extensions B and later
}

/// Full-width ASCII (ＩＮＶＯＩＣＥ, common in Japanese mail) as ASCII.
fn narrow(c: char) -> char {
    match c as u32 {
        0xFF01..=0xFF5E => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        _ => c,
    }
}

/// The distinct search terms of `text`: lower-cased words, and the single
/// characters and overlapping pairs of CJK runs.
pub fn terms(text: &str) -> Vec<String> {
    let mut found = HashSet::new();
    let mut word = String::new();
    let mut previous_cjk: Option<char> = None;
    let end_word = |word: &mut String, found: &mut HashSet<String>| {
        if !word.is_empty() && word.len() <= MAX_WORD_BYTES {
            found.insert(std::mem::take(word));
        }
        word.clear();
    };
    for c in text.chars().map(narrow) {
        if is_cjk(c) {
            end_word(&mut word, &mut found);
            found.insert(c.to_string());
            if let Some(before) = previous_cjk {
                found.insert([before, c].iter().collect());
            }
            previous_cjk = Some(c);
        } else if c.is_alphanumeric() {
            previous_cjk = None;
            word.extend(c.to_lowercase());
        } else {
            previous_cjk = None;
            end_word(&mut word, &mut found);
        }
    }
    end_word(&mut word, &mut found);
    let mut terms: Vec<String> = found.into_iter().collect();
    terms.sort_unstable();
    terms
}

/// The terms a query must all match, longest first (the most selective
/// first), with whether each may also match longer words it begins.
fn query_terms(query: &str) -> Vec<(String, bool)> {
    let mut wanted: Vec<(String, bool)> = terms(query)
        .into_iter()
        .map(|term| {
            let chars = term.chars().count();
            let cjk = term.chars().any(is_cjk);
            let prefix = !cjk && chars >= PREFIX_FROM_CHARS;
            (term, prefix)
        })
        .collect();
    // A CJK run's single characters add nothing to its pairs.
    let has_pairs = wanted
        .iter()
        .any(|(t, _)| t.chars().count() == 2 && t.chars().all(is_cjk));
    if has_pairs {
        wanted.retain(|(t, _)| !(t.chars().count() == 1 && t.chars().all(is_cjk)));
    }
    wanted.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
    wanted
}

/// Does `text` match `query` the way the index answers it? (For arrivals
/// not committed yet.)
pub fn matches(text: &str, query: &str) -> bool {
    let wanted = query_terms(query);
    if wanted.is_empty() {
        return text.contains(query);
    }
    let have = terms(text);
    wanted.iter().all(|(term, prefix)| {
        if *prefix {
            have.iter().any(|found| found.starts_with(term.as_str()))
        } else {
            have.binary_search(term).is_ok()
        }
    })
}

#[derive(Clone, Copy)]
struct Fields {
    /// The queue ID as text: deletions go by it.
    id: Field,
    /// The queue ID's two halves, read for results without a stored field.
    id_hi: Field,
    id_lo: Field,
    /// Lower-cased envelope recipients: a search covers one mailbox.
    recipient: Field,
    /// [`terms`] of the message's subject, sender and text, space-joined.
    terms: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let id = builder.add_text_field("id", STRING);
    let id_hi = builder.add_u64_field("id_hi", FAST);
    let id_lo = builder.add_u64_field("id_lo", FAST);
    let recipient = builder.add_text_field("recipient", STRING);
    let terms = builder.add_text_field(
        "terms",
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(TERMS_TOKENIZER)
                .set_index_option(IndexRecordOption::Basic),
        ),
    );
    (
        builder.build(),
        Fields {
            id,
            id_hi,
            id_lo,
            recipient,
            terms,
        },
    )
}

/// What tantivy reported, for the log.
#[derive(Debug, thiserror::Error)]
#[error("search index: {0}")]
pub struct SearchError(String);

impl From<tantivy::TantivyError> for SearchError {
    fn from(err: tantivy::TantivyError) -> Self {
        SearchError(err.to_string())
    }
}

impl From<tantivy::directory::error::OpenDirectoryError> for SearchError {
    fn from(err: tantivy::directory::error::OpenDirectoryError) -> Self {
        SearchError(err.to_string())
    }
}

impl From<tantivy::directory::error::OpenReadError> for SearchError {
    fn from(err: tantivy::directory::error::OpenReadError) -> Self {
        SearchError(err.to_string())
    }
}

/// One message as the index needs it.
pub struct Indexed<'a> {
    pub id: QueueId,
    pub recipients: Vec<String>,
    /// Subject, sender and text (the summary's search text).
    pub text: &'a str,
}

pub struct SearchIndex {
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: Fields,
    /// Set once every message spooled before the follower started is in.
    caught_up: AtomicBool,
    /// Arrived but not committed yet: a search checks these one by one, so
    /// a message is found the moment it is listed.
    waiting: Mutex<HashSet<QueueId>>,
}

impl SearchIndex {
    /// Open (creating if needed) the index in `dir`. An index of another
    /// schema (an older version) or one tantivy cannot open is rebuilt.
    pub fn open(dir: &Path) -> Result<SearchIndex, SearchError> {
        std::fs::create_dir_all(dir)
            .map_err(|err| SearchError(format!("cannot create {}: {err}", dir.display())))?;
        let (schema, fields) = schema();
        let index = match Self::open_existing(dir, &schema) {
            Ok(index) => index,
            Err(err) => {
                tracing::warn!(dir = %dir.display(), error = %err, "web: search index unusable; building it again");
                std::fs::remove_dir_all(dir)
                    .and_then(|()| std::fs::create_dir_all(dir))
                    .map_err(|err| SearchError(format!("cannot clear {}: {err}", dir.display())))?;
                Index::create_in_dir(dir, schema)?
            }
        };
        index.tokenizers().register(
            TERMS_TOKENIZER,
            TextAnalyzer::builder(WhitespaceTokenizer::default()).build(),
        );
        let writer = index.writer_with_num_threads(1, WRITER_ARENA_BYTES)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(SearchIndex {
            reader,
            writer: Mutex::new(writer),
            fields,
            caught_up: AtomicBool::new(false),
            waiting: Mutex::new(HashSet::new()),
        })
    }

    fn open_existing(dir: &Path, schema: &Schema) -> Result<Index, SearchError> {
        let directory = tantivy::directory::MmapDirectory::open(dir)?;
        if !Index::exists(&directory)? {
            return Ok(Index::create_in_dir(dir, schema.clone())?);
        }
        let index = Index::open(directory)?;
        if index.schema() != *schema {
            return Err(SearchError("written with another schema".into()));
        }
        Ok(index)
    }

    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::SeqCst)
    }

    /// Whether every spooled message is in the index (or waiting to be
    /// committed); searches scan the mailbox while it is not.
    pub fn set_caught_up(&self, caught_up: bool) {
        self.caught_up.store(caught_up, Ordering::SeqCst);
    }

    /// Is this message in the committed index?
    #[cfg(test)]
    pub fn contains(&self, id: QueueId) -> bool {
        // Not `doc_freq`: it still counts deleted documents.
        let term = Term::from_field_text(self.fields.id, &id.to_string());
        let query = TermQuery::new(term, IndexRecordOption::Basic);
        self.reader
            .searcher()
            .search(&query, &tantivy::collector::Count)
            .is_ok_and(|count| count > 0)
    }

    /// A message arrived; until [`SearchIndex::searchable`] says otherwise,
    /// searches check it themselves.
    pub fn arrived(&self, id: QueueId) {
        self.waiting.lock().expect("waiting lock").insert(id);
    }

    /// These arrivals are committed (or gone).
    pub fn searchable(&self, ids: &[QueueId]) {
        let mut waiting = self.waiting.lock().expect("waiting lock");
        for id in ids {
            waiting.remove(id);
        }
    }

    /// A full pass is starting: what waited is found by it.
    pub fn forget_waiting(&self) {
        self.waiting.lock().expect("waiting lock").clear();
    }

    /// Arrivals not committed yet.
    pub fn waiting(&self) -> HashSet<QueueId> {
        self.waiting.lock().expect("waiting lock").clone()
    }

    /// Add a message (visible after the next [`SearchIndex::commit`]).
    pub fn add(&self, message: &Indexed<'_>) -> Result<(), SearchError> {
        let fields = self.fields;
        let value = u128::from(message.id.0);
        let mut doc = TantivyDocument::default();
        doc.add_text(fields.id, message.id.to_string());
        doc.add_u64(fields.id_hi, (value >> 64) as u64);
        doc.add_u64(fields.id_lo, value as u64);
        for recipient in &message.recipients {
            doc.add_text(fields.recipient, recipient.to_lowercase());
        }
        doc.add_text(fields.terms, terms(message.text).join(" "));
        self.writer
            .lock()
            .expect("search writer lock")
            .add_document(doc)?;
        Ok(())
    }

    /// Drop a message (from the next commit on).
    pub fn delete(&self, id: QueueId) {
        let term = Term::from_field_text(self.fields.id, &id.to_string());
        self.writer
            .lock()
            .expect("search writer lock")
            .delete_term(term);
    }

    /// Make what was added and deleted durable and searchable.
    pub fn commit(&self) -> Result<(), SearchError> {
        self.writer.lock().expect("search writer lock").commit()?;
        self.reader.reload()?;
        Ok(())
    }

    /// Every message ID in the committed index (for the sweep).
    pub fn all_ids(&self) -> Result<Vec<QueueId>, SearchError> {
        let searcher = self.reader.searcher();
        let mut ids = Vec::new();
        for segment in searcher.segment_readers() {
            let hi = segment.fast_fields().u64("id_hi")?;
            let lo = segment.fast_fields().u64("id_lo")?;
            for doc in segment.doc_ids_alive() {
                if let (Some(hi), Some(lo)) = (hi.first(doc), lo.first(doc)) {
                    ids.push(id_of(hi, lo));
                }
            }
        }
        Ok(ids)
    }

    /// The messages addressed to one of `addresses` that hold every term of
    /// `query`. None when the query has no terms (only punctuation).
    pub fn search(
        &self,
        addresses: &[String],
        query: &str,
    ) -> Result<Option<HashSet<QueueId>>, SearchError> {
        let wanted = query_terms(query);
        if wanted.is_empty() {
            return Ok(None);
        }
        let fields = self.fields;
        let mailbox: Vec<(Occur, Box<dyn Query>)> = addresses
            .iter()
            .map(|address| {
                let term = Term::from_field_text(fields.recipient, &address.to_lowercase());
                (
                    Occur::Should,
                    Box::new(TermQuery::new(term, IndexRecordOption::Basic)) as Box<dyn Query>,
                )
            })
            .collect();
        let mut must: Vec<(Occur, Box<dyn Query>)> =
            vec![(Occur::Must, Box::new(BooleanQuery::new(mailbox)))];
        for (term, prefix) in wanted {
            let query: Box<dyn Query> = if prefix {
                // Terms are letters and digits only: nothing to escape.
                Box::new(RegexQuery::from_pattern(
                    &format!("{term}.*"),
                    fields.terms,
                )?)
            } else {
                Box::new(TermQuery::new(
                    Term::from_field_text(fields.terms, &term),
                    IndexRecordOption::Basic,
                ))
            };
            must.push((Occur::Must, query));
        }
        let searcher = self.reader.searcher();
        let found = searcher.search(&BooleanQuery::new(must), &DocSetCollector)?;
        let mut ids = HashSet::with_capacity(found.len());
        let mut by_segment: Vec<Vec<u32>> = vec![Vec::new(); searcher.segment_readers().len()];
        for address in found {
            by_segment[address.segment_ord as usize].push(address.doc_id);
        }
        for (segment, docs) in searcher.segment_readers().iter().zip(by_segment) {
            if docs.is_empty() {
                continue;
            }
            let hi = segment.fast_fields().u64("id_hi")?;
            let lo = segment.fast_fields().u64("id_lo")?;
            for doc in docs {
                if let (Some(hi), Some(lo)) = (hi.first(doc), lo.first(doc)) {
                    ids.insert(id_of(hi, lo));
                }
            }
        }
        Ok(Some(ids))
    }
}

fn id_of(hi: u64, lo: u64) -> QueueId {
    QueueId(ulid::Ulid::from(((hi as u128) << 64) | lo as u128))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn japanese_runs_become_characters_and_pairs_and_other_text_words() {
        let found = terms("請求書の件 Invoice-2026 ＭＡＲＣＨ");
        for term in [
            "請", "求", "書", "の", "件", "請求", "求書", "書の", "の件", "invoice", "2026",
            "march",
        ] {
            assert!(found.contains(&term.to_string()), "{term} in {found:?}");
        }
        assert!(!found.iter().any(|t| t.contains(' ')));
        assert!(terms(&"x".repeat(41)).is_empty(), "encoded data is no word");
    }

    #[test]
    fn a_text_matches_a_query_as_the_index_would_answer_it() {
        let text = "ご請求書をお送りします\ninvoice for march";
        assert!(matches(text, "請求書"));
        assert!(matches(text, "invo"));
        assert!(matches(text, "march invoice"));
        assert!(!matches(text, "voice"), "not inside a word");
        assert!(!matches(text, "会議"));
    }

    #[test]
    fn query_terms_drop_single_characters_of_a_japanese_run() {
        let wanted: Vec<String> = query_terms("請求書").into_iter().map(|(t, _)| t).collect();
        assert_eq!(wanted.len(), 2, "{wanted:?}");
        assert!(wanted.contains(&"請求".to_string()) && wanted.contains(&"求書".to_string()));
        assert_eq!(query_terms("株"), vec![("株".to_string(), false)]);
        assert_eq!(query_terms("in"), vec![("in".to_string(), false)]);
        assert_eq!(query_terms("Invo"), vec![("invo".to_string(), true)]);
    }

    #[test]
    fn a_search_finds_terms_in_one_mailbox_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path()).unwrap();
        let (a, b, c) = (
            QueueId::generate(),
            QueueId::generate(),
            QueueId::generate(),
        );
        let add = |id, rcpt: &str, text: &str| {
            index
                .add(&Indexed {
                    id,
                    recipients: vec![rcpt.to_string()],
                    text,
                })
                .unwrap()
        };
        add(
            a,
            "User@Example.com",
            "ご請求書をお送りします\nInvoice for March",
        );
        add(b, "user@example.com", "会議の件");
        add(c, "other@example.com", "請求書");
        index.commit().unwrap();
        let me = ["user@example.com".to_string()];
        let found = |q: &str| index.search(&me, q).unwrap().unwrap();
        assert_eq!(found("請求書"), HashSet::from([a]), "not another mailbox's");
        assert_eq!(found("invo"), HashSet::from([a]), "a word's beginning");
        assert_eq!(found("march invoice"), HashSet::from([a]));
        assert_eq!(found("会議"), HashSet::from([b]));
        assert!(found("請求 会議").is_empty(), "every term");
        assert!(index.search(&me, "!!").unwrap().is_none());
        index.delete(b);
        index.commit().unwrap();
        assert!(found("会議").is_empty());
        drop(index);
        let index = SearchIndex::open(dir.path()).unwrap();
        assert!(index.contains(a) && !index.contains(b));
        assert_eq!(
            index.search(&me, "請求書").unwrap().unwrap(),
            HashSet::from([a])
        );
        let mut all = index.all_ids().unwrap();
        all.sort();
        assert_eq!(all, {
            let mut v = vec![a, c];
            v.sort();
            v
        });
    }
}
