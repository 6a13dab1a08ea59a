//! Outage-lure scoring on a labelled corpus (tests/lure_corpus: real-looking
//! lures in English and Japanese, and legitimate outage notices including
//! the organisation's own), and end to end: intake stores the verdict, the
//! web reader warns, delivery adds X-Breakwater-Lure.

mod common;

use std::time::Duration;

use breakwater::config::UpstreamTls;
use breakwater::trust::lure::{self, LureContext, BANNER_THRESHOLD};
use common::sink::{Script, Sink};
use common::web::*;
use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// (envelope sender, message) of every .eml in a corpus folder.
fn corpus(kind: &str) -> Vec<(String, String, Vec<u8>)> {
    let dir = std::path::Path::new(ROOT)
        .join("tests/lure_corpus")
        .join(kind);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let text = String::from_utf8(data).unwrap();
        let (first, rest) = text.split_once("\r\n").unwrap();
        let sender = first.strip_prefix("X-Envelope-From: ").unwrap().to_string();
        out.push((
            path.file_name().unwrap().to_string_lossy().into_owned(),
            sender,
            rest.as_bytes().to_vec(),
        ));
    }
    out.sort();
    out
}

fn context() -> LureContext {
    LureContext {
        own_domains: vec!["example.com".into()],
        recent_domains: vec!["helpdesk-portal.net".into()],
    }
}

/// Scores of every message in `<set>/lure` and `<set>/legit`, one report
/// line each, and the confusion counts at the banner threshold.
struct Evaluation {
    report: String,
    true_pos: u32,
    false_neg: u32,
    false_pos: u32,
    true_neg: u32,
}

impl Evaluation {
    fn of(set: &str) -> Evaluation {
        let ctx = context();
        let mut e = Evaluation {
            report: String::new(),
            true_pos: 0,
            false_neg: 0,
            false_pos: 0,
            true_neg: 0,
        };
        for kind in ["lure", "legit"] {
            for (name, sender, raw) in corpus(&format!("{set}{kind}")) {
                let v = lure::score(&raw, &ctx, &sender);
                e.report.push_str(&format!(
                    "{kind:<5} {name:<40} {:>2} {}\n",
                    v.score,
                    v.reasons.join(",")
                ));
                let counter = match (kind, v.is_flagged()) {
                    ("lure", true) => &mut e.true_pos,
                    ("lure", false) => &mut e.false_neg,
                    (_, true) => &mut e.false_pos,
                    (_, false) => &mut e.true_neg,
                };
                *counter += 1;
            }
        }
        println!("{e}");
        e
    }
}

impl std::fmt::Display for Evaluation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flagged = self.true_pos + self.false_pos;
        let lures = self.true_pos + self.false_neg;
        let precision = f64::from(self.true_pos) / f64::from(flagged.max(1));
        let recall = f64::from(self.true_pos) / f64::from(lures.max(1));
        write!(
            f,
            "{}threshold {BANNER_THRESHOLD}: precision {precision:.2} recall {recall:.2} (tp {} fn {} fp {} tn {})",
            self.report, self.true_pos, self.false_neg, self.false_pos, self.true_neg
        )
    }
}

/// The corpus the rules were written against: a regression check.
#[test]
fn corpus_lures_are_flagged_and_legitimate_notices_are_not() {
    let e = Evaluation::of("");
    assert_eq!(e.false_pos, 0, "no legitimate message may be flagged:\n{e}");
    assert_eq!(e.false_neg, 0, "every lure in the corpus is flagged:\n{e}");
    assert!(e.true_pos >= 7 && e.true_neg >= 6);
}

/// Messages written after the rules, without tuning them afterwards: the
/// figures are an estimate, not a target. A legitimate message flagged is
/// still a failure (a false banner costs the users' trust in it); a missed
/// lure is reported, not failed on.
#[test]
fn held_out_corpus_figures() {
    let e = Evaluation::of("heldout/");
    assert_eq!(e.false_pos, 0, "no legitimate message may be flagged:\n{e}");
    assert!(e.true_pos + e.false_neg >= 4 && e.true_neg >= 4);
}

#[test]
fn specific_signals_are_named() {
    let ctx = context();
    let by_name = |kind: &str, name: &str| {
        let (_, sender, raw) = corpus(kind)
            .into_iter()
            .find(|(n, _, _)| n == name)
            .unwrap();
        lure::score(&raw, &ctx, &sender)
    };
    let v = by_name("lure", "en-password-form.eml");
    assert!(v.reasons.contains(&"credential-form".to_string()), "{v:?}");
    let v = by_name("lure", "en-punycode-suspended.eml");
    assert!(v.reasons.contains(&"punycode-link".to_string()), "{v:?}");
    let v = by_name("lure", "en-teams-reschedule.eml");
    assert!(v.reasons.contains(&"look-alike-link".to_string()), "{v:?}");
    let v = by_name("lure", "ja-password-reset.eml");
    assert!(
        v.reasons.contains(&"link-text-mismatch".to_string()),
        "{v:?}"
    );
    let v = by_name("heldout/lure", "en-lookalike-own-helpdesk.eml");
    for reason in ["own-domain-look-alike", "look-alike-link"] {
        assert!(v.reasons.contains(&reason.to_string()), "{reason}: {v:?}");
    }
    let v = by_name("lure", "ja-spoofed-own-domain.eml");
    assert!(
        v.reasons.contains(&"own-domain-spoofed".to_string()),
        "{v:?}"
    );
    // The same own-domain notice sent from our own domain is not spoofing.
    let v = by_name("legit", "ja-own-recovery-notice.eml");
    assert!(
        !v.reasons.contains(&"own-domain-spoofed".to_string()),
        "{v:?}"
    );
    assert_eq!(
        v.header_value(),
        format!("score={}; reasons={}", v.score, v.reasons.join(","))
    );
}

#[test]
fn intake_records_the_verdict_web_warns_and_delivery_marks() {
    let rt = common::runtime();
    let upstream = rt.block_on(Sink::start("127.0.0.1:0", Script::default()));
    let mut fixture = Fixture::new();
    fixture.config.delivery.enabled = true;
    fixture.config.domains[0].upstream = upstream.addr.to_string();
    fixture.config.domains[0].tls = UpstreamTls::None;
    fixture.config.domains[0].name = "example.com".into();
    fixture.config.domains.truncate(1);
    fixture.config.web.retain_delivered = Duration::from_secs(60);
    add_user(
        &fixture.config.web.users_file,
        "alice@example.com",
        &[],
        false,
        false,
    );
    let server = rt.block_on(fixture.start());
    let send = |name: &str, kind: &str| {
        let (_, sender, raw) = corpus(kind)
            .into_iter()
            .find(|(n, _, _)| n == name)
            .unwrap();
        let mut c = RawClient::greeted(server.smtp_addrs[0]);
        c.expect("EHLO lure.test", 250);
        let reply = c.send_mail(&sender, &["alice@example.com"], &raw);
        assert_eq!(reply.code, 250, "{reply:?}");
        queue_id(&reply)
    };
    let lure_id = send("en-password-form.eml", "lure");
    let legit_id = send("en-own-status-update.eml", "legit");
    let stored = rt.block_on(server.spool.get(lure_id)).unwrap().unwrap();
    let verdict = stored.envelope.lure.clone().expect("scored at intake");
    assert!(verdict.is_flagged(), "{verdict:?}");
    assert!(!rt
        .block_on(server.spool.get(legit_id))
        .unwrap()
        .unwrap()
        .envelope
        .lure
        .unwrap()
        .is_flagged());
    // Delivered with the header (and kept for the reader by retention).
    assert!(wait_for(Duration::from_secs(10), || upstream
        .delivered()
        .len()
        == 2));
    let delivered = upstream.delivered();
    let marked = delivered
        .iter()
        .find(|d| String::from_utf8_lossy(&d.data).contains("Your password expires today"))
        .unwrap();
    let text = String::from_utf8_lossy(&marked.data);
    assert!(
        text.starts_with(&format!(
            "X-Breakwater-Lure: {}\r\n",
            verdict.header_value()
        )),
        "{text}"
    );
    // The web reader warns, in the list and on the message.
    let mut alice = WebClient::new(server.web_addr.unwrap());
    alice.login_fully("alice@example.com", None);
    let list = alice.get("/mail").text();
    assert_eq!(list.matches("⚠ Suspicious").count(), 1, "{list}");
    let view = alice.get(&format!("/mail/{lure_id}")).text();
    assert!(
        view.contains("looks like an outage-themed phishing attempt")
            && view.contains("form asking for a password"),
        "{view}"
    );
    assert!(!alice
        .get(&format!("/mail/{legit_id}"))
        .text()
        .contains("phishing attempt"));
    rt.block_on(server.shutdown());
}
