//! SMTP intake over real loopback sockets against the real server (library),
//! with a real spool in a temp dir.

mod common;

use std::time::Duration;

use common::*;

fn spool_bodies(server: &breakwater::server::Server) -> Vec<Vec<u8>> {
    common::block(server.spool.list())
        .expect("list")
        .iter()
        .map(|m| common::block(server.spool.read_body(m.id)).expect("body"))
        .collect()
}

#[test]
fn accepts_stores_and_reports_queue_id() {
    let fixture = Fixture::new();
    let (rt, server) = start_in_process(&fixture);
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    let ehlo = c.expect("EHLO client.test", 250);
    for ext in [
        "PIPELINING",
        "SIZE 52428800",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "STARTTLS",
        "DSN",
    ] {
        assert!(
            ehlo.text.lines().any(|l| l == ext),
            "missing {ext}: {}",
            ehlo.text
        );
    }
    assert!(
        !ehlo.text.contains("REQUIRETLS"),
        "REQUIRETLS offered without TLS"
    );
    let body = b"Subject: hello\r\n\r\nline one\r\n..leading dot\r\n";
    let reply = c.send_mail(
        "sender@remote.test",
        &["Alice@Example.COM", "bob@example.com"],
        body,
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    assert!(reply.text.starts_with("2.0.0 Ok: queued as "), "{reply:?}");
    let id = queue_id(&reply);
    let stored = common::block(server.spool.get(id))
        .expect("get")
        .expect("message in spool");
    assert_eq!(stored.envelope.sender, "sender@remote.test");
    let rcpts: Vec<_> = stored
        .envelope
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(rcpts, ["Alice@example.com", "bob@example.com"]);
    let content = common::block(server.spool.read_body(id)).expect("body");
    assert_eq!(
        without_trace_header(&content),
        b"Subject: hello\r\n\r\nline one\r\n.leading dot\r\n"
    );
    let trace = String::from_utf8_lossy(&content);
    assert!(
        trace.contains(&format!("id {id}")),
        "Received header names the queue id: {trace}"
    );
    assert!(trace.contains("with ESMTP"), "{trace}");
    assert_eq!(stored.envelope.size, content.len() as u64);
    c.expect("QUIT", 221);
    rt.block_on(server.shutdown());
}

#[test]
fn pipelined_transaction_gets_replies_in_order() {
    let fixture = Fixture::new();
    let (rt, server) = start_in_process(&fixture);
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.send(b"EHLO p.test\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<nobody@elsewhere.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
    let codes: Vec<u16> = (0..6).map(|_| c.reply().code).collect();
    assert_eq!(codes, [250, 250, 250, 550, 250, 354]);
    c.send(b"Subject: p\r\n\r\nbody\r\n.\r\nMAIL FROM:<s2@remote.test>\r\nRCPT TO:<c@example.com>\r\nDATA\r\nSubject: q\r\n\r\nsecond\r\n.\r\nQUIT\r\n");
    let codes: Vec<u16> = (0..5).map(|_| c.reply().code).collect();
    assert_eq!(codes, [250, 250, 250, 354, 250]);
    assert_eq!(c.reply().code, 221);
    assert_eq!(server.spool.len(), 2);
    rt.block_on(server.shutdown());
}

#[test]
fn bdat_chunks_are_stored_verbatim() {
    let fixture = Fixture::new();
    let (rt, server) = start_in_process(&fixture);
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO b.test", 250);
    c.expect("MAIL FROM:<s@remote.test>", 250);
    c.expect("RCPT TO:<a@example.com>", 250);
    let part1 = b"Subject: chunks\r\n\r\n.not stuffed\r\n";
    let part2 = b"end without newline";
    c.send(format!("BDAT {}\r\n", part1.len()).as_bytes());
    c.send(part1);
    let r = c.reply();
    assert_eq!(r.code, 250, "{r:?}");
    // DATA is not allowed once BDAT has started.
    c.expect("DATA", 503);
    c.send(format!("BDAT {} LAST\r\n", part2.len()).as_bytes());
    c.send(part2);
    let r = c.reply();
    assert_eq!(r.code, 250, "{r:?}");
    let content = common::block(server.spool.read_body(queue_id(&r))).expect("body");
    assert_eq!(
        without_trace_header(&content),
        b"Subject: chunks\r\n\r\n.not stuffed\r\nend without newline\r\n"
    );
    // BDAT without a transaction: the chunk is consumed and refused.
    c.send(b"BDAT 5 LAST\r\nhello");
    assert_eq!(c.reply().code, 503);
    c.expect("NOOP", 250);
    // Smuggling through BDAT is refused as well.
    c.expect("MAIL FROM:<s@remote.test>", 250);
    c.expect("RCPT TO:<a@example.com>", 250);
    let evil = b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<e@evil.test>\r\n";
    c.send(format!("BDAT {} LAST\r\n", evil.len()).as_bytes());
    c.send(evil);
    let r = c.reply();
    assert_eq!((r.code, &r.text[..5]), (550, "5.5.2"), "{r:?}");
    assert_eq!(server.spool.len(), 1);
    rt.block_on(server.shutdown());
}

#[test]
fn starttls_discards_pipelined_commands_and_resets_state() {
    let fixture = Fixture::new();
    let (rt, server) = start_in_process(&fixture);
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO t.test", 250);
    c.expect("MAIL FROM:<s@remote.test>", 250);
    // CVE-2011-0411 shape: a command injected after STARTTLS in the same packet.
    c.send(b"STARTTLS\r\nRSET\r\n");
    assert_eq!(c.reply().code, 220);
    let mut c = c.start_tls(&fixture.config.smtp.tls_cert);
    // If the injected RSET had been read, its 250 would come first; and the
    // session must have forgotten the EHLO and the transaction (RFC 3207 4.2).
    let r = c.cmd("MAIL FROM:<s@remote.test>");
    assert_eq!(r.code, 503, "{r:?}");
    let ehlo = c.expect("EHLO t.test", 250);
    assert!(
        ehlo.text.lines().any(|l| l == "REQUIRETLS"),
        "{}",
        ehlo.text
    );
    assert!(!ehlo.text.lines().any(|l| l == "STARTTLS"), "{}", ehlo.text);
    c.expect("STARTTLS", 503);
    c.expect("MAIL FROM:<s@remote.test> REQUIRETLS", 250);
    c.expect("RCPT TO:<a@example.com>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: tls\r\n\r\nsecret\r\n.\r\n");
    let r = c.reply();
    assert_eq!(r.code, 250);
    let stored = common::block(server.spool.get(queue_id(&r)))
        .unwrap()
        .unwrap();
    assert!(stored.envelope.requiretls);
    let tls = stored.envelope.client.tls.expect("tls info recorded");
    assert!(tls.version.starts_with("TLSv1."), "{tls:?}");
    let content =
        String::from_utf8(common::block(server.spool.read_body(stored.id)).unwrap()).unwrap();
    assert!(
        content.contains("with ESMTPS") && content.contains("using TLSv1."),
        "{content}"
    );
    rt.block_on(server.shutdown());
}

#[test]
fn requiretls_refused_without_tls() {
    let fixture = Fixture::new();
    let (rt, server) = start_in_process(&fixture);
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO t.test", 250);
    let r = c.expect("MAIL FROM:<s@remote.test> REQUIRETLS", 530);
    assert!(r.text.starts_with("5.7.10"), "{r:?}");
    rt.block_on(server.shutdown());
}

#[test]
fn size_limits_declared_and_streamed() {
    let mut fixture = Fixture::new();
    fixture.config.smtp.max_message_size = 1000;
    let (rt, server) = start_in_process(&fixture);
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    let ehlo = c.expect("EHLO s.test", 250);
    assert!(ehlo.text.contains("SIZE 1000"));
    let r = c.expect("MAIL FROM:<s@remote.test> SIZE=1001", 552);
    assert!(r.text.starts_with("5.3.4"));
    c.expect("MAIL FROM:<s@remote.test> SIZE=900", 250);
    c.expect("RCPT TO:<a@example.com>", 250);
    c.expect("DATA", 354);
    for _ in 0..30 {
        c.send(b"0123456789012345678901234567890123456789012345678\r\n");
    }
    c.send(b".\r\n");
    let r = c.reply();
    assert_eq!(r.code, 552, "{r:?}");
    assert!(r.text.starts_with("5.3.4"));
    // The session is still in sync and usable.
    c.expect("NOOP", 250);
    assert_eq!(server.spool.len(), 0);
    rt.block_on(server.shutdown());
}

#[test]
fn line_length_limits() {
    let fixture = Fixture::new();
    let (rt, server) = start_in_process(&fixture);
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO l.test", 250);
    let long_noop = format!("NOOP {}", "x".repeat(600));
    let r = c.expect(&long_noop, 500);
    assert!(r.text.starts_with("5.5.2"));
    // A line far over any limit, sent without CRLF first, is skipped whole.
    c.send("X".repeat(5000).as_bytes());
    c.send(b"\r\n");
    assert_eq!(c.reply().code, 500);
    c.expect("NOOP", 250);
    // MAIL/RCPT may exceed 512 with DSN parameters.
    let envid = "e".repeat(90);
    c.expect(
        &format!("MAIL FROM:<s@remote.test> ENVID={envid} RET=HDRS"),
        250,
    );
    let long_rcpt = format!("{}@example.com", "r".repeat(238));
    let orcpt = format!("rfc822;{}@example.com", "o".repeat(238));
    let rcpt_line = format!("RCPT TO:<{long_rcpt}> NOTIFY=SUCCESS,FAILURE ORCPT={orcpt}");
    assert!(rcpt_line.len() > 512);
    c.expect(&rcpt_line, 250);
    c.expect("DATA", 354);
    let mut body = b"Subject: long\r\n\r\n".to_vec();
    body.extend_from_slice(&[b'y'; 999]);
    body.extend_from_slice(b"\r\n.\r\n");
    c.send(&body);
    let r = c.reply();
    assert_eq!((r.code, &r.text[..5]), (550, "5.5.2"), "{r:?}");
    // Exactly 998 + CRLF is fine, and DSN parameters are stored.
    c.expect(
        &format!("MAIL FROM:<s@remote.test> ENVID={envid} RET=HDRS"),
        250,
    );
    c.expect(&rcpt_line, 250);
    c.expect("DATA", 354);
    let mut body = b"Subject: long\r\n\r\n".to_vec();
    body.extend_from_slice(&[b'y'; 998]);
    body.extend_from_slice(b"\r\n.\r\n");
    c.send(&body);
    let r = c.reply();
    assert_eq!(r.code, 250, "{r:?}");
    let stored = common::block(server.spool.get(queue_id(&r)))
        .unwrap()
        .unwrap();
    assert_eq!(stored.envelope.dsn_envid.as_deref(), Some(envid.as_str()));
    assert_eq!(
        stored.envelope.dsn_ret,
        Some(breakwater::envelope::DsnRet::Hdrs)
    );
    assert_eq!(
        stored.envelope.recipients[0].orcpt.as_deref(),
        Some(orcpt.as_str())
    );
    assert_eq!(stored.envelope.recipients[0].address, long_rcpt);
    assert_eq!(
        stored.envelope.recipients[0].notify,
        breakwater::envelope::NOTIFY_SUCCESS | breakwater::envelope::NOTIFY_FAILURE
    );
    rt.block_on(server.shutdown());
}

#[test]
fn recipient_limit() {
    let mut fixture = Fixture::new();
    fixture.config.smtp.max_recipients = 3;
    let (rt, server) = start_in_process(&fixture);
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO r.test", 250);
    c.expect("MAIL FROM:<s@remote.test>", 250);
    for i in 0..3 {
        c.expect(&format!("RCPT TO:<u{i}@example.com>"), 250);
    }
    let r = c.expect("RCPT TO:<u4@example.com>", 452);
    assert!(r.text.starts_with("4.5.3"));
    rt.block_on(server.shutdown());
}

#[test]
fn idle_client_times_out_with_421() {
    let mut fixture = Fixture::new();
    fixture.config.smtp.command_timeout = Duration::from_millis(500);
    fixture.config.smtp.data_timeout = Duration::from_millis(500);
    let (rt, server) = start_in_process(&fixture);
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO idle.test", 250);
    let r = c.reply();
    assert_eq!((r.code, &r.text[..5]), (421, "4.4.2"), "{r:?}");
    assert!(c.is_closed());
    // Stalling inside DATA is timed out too, and nothing is stored.
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO idle.test", 250);
    c.expect("MAIL FROM:<s@remote.test>", 250);
    c.expect("RCPT TO:<a@example.com>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: stalled\r\n");
    assert_eq!(c.reply().code, 421);
    assert_eq!(server.spool.len(), 0);
    rt.block_on(server.shutdown());
}

/// The DATA timeout is per read, but a client must also keep up 500 B/s on
/// average (after one timeout's grace), or a trickle of a byte per read
/// would hold a session for hours. Clients at 240 B/s are cut; one at
/// 2,500 B/s for the same time, in the same crowd, is not.
#[test]
fn data_below_the_minimum_rate_is_cut() {
    let mut fixture = Fixture::new();
    fixture.config.smtp.data_timeout = Duration::from_secs(1);
    let (rt, server) = start_in_process(&fixture);
    use std::io::Write;
    let trickle = |bytes_per_tick: usize| {
        let mut c = RawClient::greeted(server.smtp_addrs[0]);
        c.expect("EHLO trickle.test", 250);
        c.expect("MAIL FROM:<s@remote.test>", 250);
        c.expect("RCPT TO:<a@example.com>", 250);
        c.expect("DATA", 354);
        c.send(b"Subject: trickle\r\n\r\n");
        let started = std::time::Instant::now();
        let mut line = vec![b'x'; bytes_per_tick - 2];
        line.extend_from_slice(b"\r\n");
        // 50 ms ticks for 4 s: one timeout plus 3 s of data.
        while started.elapsed() < Duration::from_secs(4) {
            if c.stream.write_all(&line).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.stream.write_all(b".\r\n");
        (c.reply(), started.elapsed())
    };
    // A crowd of 40 trickling sessions and one steady one, all at once:
    // every slow one is cut, the steady one is stored, nothing else is.
    const CROWD: usize = 40;
    let (slow, steady) = std::thread::scope(|scope| {
        let slow: Vec<_> = (0..CROWD).map(|_| scope.spawn(|| trickle(12))).collect();
        let steady = scope.spawn(|| trickle(125));
        (
            slow.into_iter()
                .map(|h| h.join().unwrap().0)
                .collect::<Vec<_>>(),
            steady.join().unwrap().0,
        )
    });
    for reply in &slow {
        assert_eq!((reply.code, &reply.text[..5]), (421, "4.4.2"), "{reply:?}");
    }
    assert_eq!(slow.len(), CROWD);
    assert_eq!(steady.code, 250, "{steady:?}");
    assert_eq!(server.spool.len(), 1);
    rt.block_on(server.shutdown());
}

#[test]
fn smuggling_payloads_are_rejected_and_never_split_a_message() {
    let fixture = Fixture::new();
    let (rt, server) = start_in_process(&fixture);
    let payloads: [(&[u8], &str); 5] = [
        (b"\n.\n", "5.5.2"),
        (b"\r.\r", "5.5.2"),
        (b"\r\n.\n", "5.5.2"),
        (b"\n.\r\n", "5.5.2"),
        (b"\0", "5.6.0"),
    ];
    for (payload, status) in payloads {
        let mut c = RawClient::greeted(server.smtp_addrs[0]);
        c.expect("EHLO smuggler.test", 250);
        c.expect("MAIL FROM:<s@remote.test>", 250);
        c.expect("RCPT TO:<a@example.com>", 250);
        c.expect("DATA", 354);
        let mut data = b"Subject: first\r\n\r\nhello".to_vec();
        data.extend_from_slice(payload);
        data.extend_from_slice(b"MAIL FROM:<admin@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n");
        c.send(&data);
        // Exactly one reply: the smuggled commands were message content.
        let r = c.reply();
        assert_eq!(
            (r.code, &r.text[..5]),
            (550, status),
            "payload {payload:?}: {r:?}"
        );
        let r = c.cmd("NOOP");
        assert_eq!(
            r.code, 250,
            "payload {payload:?}: session out of sync: {r:?}"
        );
    }
    assert_eq!(server.spool.len(), 0, "nothing stored");
    rt.block_on(server.shutdown());
}

#[test]
fn normalize_mode_accepts_bare_lf_as_one_message() {
    let mut fixture = Fixture::new();
    fixture.config.smtp.bare_lf = breakwater::config::BareLfPolicy::Normalize;
    let (rt, server) = start_in_process(&fixture);
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO n.test", 250);
    let r = c.send_mail(
        "s@remote.test",
        &["a@example.com"],
        b"Subject: n\r\n\r\nhello\n.\nMAIL FROM:<e@evil.test>\r\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    let bodies = spool_bodies(&server);
    assert_eq!(bodies.len(), 1);
    assert_eq!(
        without_trace_header(&bodies[0]),
        b"Subject: n\r\n\r\nhello\r\n.\r\nMAIL FROM:<e@evil.test>\r\n"
    );
    rt.block_on(server.shutdown());
}

#[test]
fn relay_tricks_are_denied() {
    let fixture = Fixture::new();
    let (rt, server) = start_in_process(&fixture);
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO relay.test", 250);
    c.expect("MAIL FROM:<s@remote.test>", 250);
    for rcpt in [
        "<victim@evil.test>",
        "<user%evil.test@example.com>",
        "<evil.test!user@example.com>",
        "<\"user@evil.test\"@example.com>",
        "<@example.com:user@evil.test>",
        "<@example.com,@relay.test:user@evil.test>",
        "<user@evil.test.>",
        "<user@[127.0.0.1]>",
        "<user@example.com.evil.test>",
        "<user@sub.example.com>",
        "<user@example.com..>",
    ] {
        let r = c.cmd(&format!("RCPT TO:{rcpt}"));
        assert!(
            r.code == 550 || r.code == 553 || r.code == 501,
            "{rcpt} accepted: {r:?}"
        );
        if r.code == 550 {
            assert!(r.text.starts_with("5.7.1"), "{rcpt}: {r:?}");
        }
    }
    // Legitimate odd forms for our own domain are fine.
    c.expect("RCPT TO:<@relay.test:alice@example.com>", 250);
    c.expect("RCPT TO:<Bob@EXAMPLE.COM.>", 250);
    c.expect("RCPT TO:<\"john doe\"@example.com>", 250);
    rt.block_on(server.shutdown());
}

#[test]
fn recipient_lists_null_sender_and_unknown_users() {
    let fixture = Fixture::new();
    let (rt, server) = start_in_process(&fixture);
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO l.test", 250);
    c.expect("MAIL FROM:<>", 250);
    let r = c.expect("RCPT TO:<mallory@listed.example>", 550);
    assert!(r.text.starts_with("5.1.1"), "{r:?}");
    c.expect("RCPT TO:<ALICE@listed.example>", 250);
    c.expect("RCPT TO:<bob@Listed.Example>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: bounce\r\n\r\nDSN\r\n.\r\n");
    let r = c.reply();
    assert_eq!(r.code, 250);
    let stored = common::block(server.spool.get(queue_id(&r)))
        .unwrap()
        .unwrap();
    assert_eq!(stored.envelope.sender, "");
    assert_eq!(stored.envelope.recipients.len(), 2);
    // The per-recipient index finds it, case-insensitively.
    assert_eq!(
        common::block(server.spool.for_recipient("alice@LISTED.example"))
            .unwrap()
            .len(),
        1
    );
    // No transaction yet: sequence errors.
    c.expect("RCPT TO:<alice@listed.example>", 503);
    c.expect("DATA", 503);
    c.expect("VRFY alice", 252);
    c.expect("HELP", 214);
    c.expect("AUTH PLAIN AGFhAGI=", 502);
    c.expect("FOO bar", 500);
    rt.block_on(server.shutdown());
}

#[test]
fn eight_bit_and_smtputf8() {
    let fixture = Fixture::new();
    let (rt, server) = start_in_process(&fixture);
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO u.test", 250);
    let r = c.cmd("MAIL FROM:<用户@例え.test>");
    assert_eq!((r.code, &r.text[..5]), (553, "5.6.7"), "{r:?}");
    c.expect("MAIL FROM:<用户@例え.test> SMTPUTF8 BODY=8BITMIME", 250);
    c.expect("RCPT TO:<日本語@example.com>", 250);
    c.expect("DATA", 354);
    let body = "Subject: =?UTF-8?B?5pel5pys6Kqe?=\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n日本語のメール\r\n".as_bytes();
    c.send(body);
    c.send(b".\r\n");
    let r = c.reply();
    assert_eq!(r.code, 250, "{r:?}");
    let stored = common::block(server.spool.get(queue_id(&r)))
        .unwrap()
        .unwrap();
    assert!(stored.envelope.smtputf8 && stored.envelope.body_8bitmime);
    assert_eq!(stored.envelope.sender, "用户@例え.test");
    assert_eq!(stored.envelope.recipients[0].address, "日本語@example.com");
    let content = common::block(server.spool.read_body(stored.id)).unwrap();
    assert_eq!(without_trace_header(&content), body);
    rt.block_on(server.shutdown());
}

#[test]
fn mail_loops_are_refused() {
    let fixture = Fixture::new();
    let (rt, server) = start_in_process(&fixture);
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO loop.test", 250);
    let mut body = Vec::new();
    for i in 0..51 {
        body.extend_from_slice(
            format!(
                "Received: from hop{i}.test by hop{}.test; Sat, 21 Nov 2026 10:00:00 +0000\r\n",
                i + 1
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(b"Subject: loop\r\n\r\nround and round\r\n");
    let r = c.send_mail("s@remote.test", &["a@example.com"], &body);
    assert_eq!((r.code, &r.text[..5]), (554, "5.4.6"), "{r:?}");
    // 50 hops (ours makes 51) is still accepted.
    let fifty: Vec<u8> = body
        .split(|&b| b == b'\n')
        .skip(1)
        .flat_map(|l| l.iter().copied().chain([b'\n']))
        .collect();
    let r = c.send_mail(
        "s@remote.test",
        &["a@example.com"],
        &fifty[..fifty.len() - 1],
    );
    assert_eq!(r.code, 250, "{r:?}");
    rt.block_on(server.shutdown());
}

#[test]
fn too_many_errors_closes_the_session() {
    let mut fixture = Fixture::new();
    fixture.config.smtp.max_errors = 3;
    let (rt, server) = start_in_process(&fixture);
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    for _ in 0..4 {
        assert_eq!(c.cmd("BOGUS").code, 500);
    }
    let r = c.reply();
    assert_eq!((r.code, &r.text[..5]), (421, "4.7.0"), "{r:?}");
    assert!(c.is_closed());
    rt.block_on(server.shutdown());
}

#[test]
fn connection_limits_answer_421() {
    let mut fixture = Fixture::new();
    fixture.config.smtp.max_connections = 3;
    fixture.config.smtp.max_connections_per_ip = 2;
    let (rt, server) = start_in_process(&fixture);
    let addr = server.smtp_addrs[0];
    let _a = RawClient::greeted(addr);
    let _b = RawClient::greeted(addr);
    let mut c = RawClient::connect(addr);
    let r = c.reply();
    assert_eq!((r.code, &r.text[..5]), (421, "4.7.0"), "per-IP cap: {r:?}");
    // Another client address has its own per-IP budget but hits the global cap.
    let mut d = socket_from("127.0.0.3", addr);
    assert_eq!(d.reply().code, 220);
    let mut e = socket_from("127.0.0.4", addr);
    let r = e.reply();
    assert_eq!((r.code, &r.text[..5]), (421, "4.3.2"), "global cap: {r:?}");
    drop(_a);
    assert!(wait_for(Duration::from_secs(5), || {
        let mut f = socket_from("127.0.0.5", addr);
        f.reply().code == 220
    }));
    rt.block_on(server.shutdown());
}

/// A client connection from a chosen loopback source address.
fn socket_from(source: &str, to: std::net::SocketAddr) -> RawClient {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        socket.connect(to).await.unwrap().into_std().unwrap()
    });
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    RawClient::from_stream(stream)
}

#[test]
fn mail_send_crate_client_over_starttls() {
    let fixture = Fixture::new();
    let (rt, server) = start_in_process(&fixture);
    let addr = server.smtp_addrs[0];
    rt.block_on(async {
        let mut client = mail_send::SmtpClientBuilder::new("127.0.0.1".to_string(), addr.port())
            .unwrap()
            .implicit_tls(false)
            .allow_invalid_certs()
            .helo_host("mailsend.test")
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .expect("STARTTLS with mail-send");
        let body = b"From: a@remote.test\r\nSubject: via mail-send\r\n\r\nHello.\r\n".to_vec();
        let message = mail_send::smtp::message::Message::new(
            "a@remote.test",
            ["alice@example.com"],
            body.clone(),
        );
        client.send(message).await.expect("accepted");
        // Per-recipient results through the low-level calls.
        let params = mail_send::smtp::message::Parameters::default();
        client.mail_from("a@remote.test", &params).await.unwrap();
        client.rcpt_to("bob@example.com", &params).await.unwrap();
        assert!(client.rcpt_to("x@nowhere.test", &params).await.is_err());
        client.bdat(&body).await.expect("BDAT accepted");
        client.quit().await.unwrap();
    });
    let bodies = spool_bodies(&server);
    assert_eq!(bodies.len(), 2);
    let mut stored: Vec<&[u8]> = bodies.iter().map(|b| without_trace_header(b)).collect();
    stored.sort();
    let sent = b"From: a@remote.test\r\nSubject: via mail-send\r\n\r\nHello.\r\n";
    // BDAT carries the bytes exactly; mail-send's data() adds its own CRLF
    // before the terminating dot, which is then part of the message.
    let mut with_crlf = sent.to_vec();
    with_crlf.extend_from_slice(b"\r\n");
    assert_eq!(stored, [&sent[..], &with_crlf[..]]);
    rt.block_on(server.shutdown());
}

#[test]
fn python_smtplib_client() {
    let fixture = Fixture::new();
    let (rt, server) = start_in_process(&fixture);
    let script = format!(
        r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context(cafile={cert:?})
s = smtplib.SMTP("127.0.0.1", {port}, local_hostname="py.test", timeout=20)
s.ehlo()
assert s.has_extn("starttls")
ctx.check_hostname = False
s.starttls(context=ctx)
s.ehlo()
refused = s.sendmail("py@remote.test", ["alice@example.com", "nobody@elsewhere.test"], b"Subject: from python\r\n\r\nhi\r\n")
assert list(refused) == ["nobody@elsewhere.test"], refused
try:
    s.sendmail("py@remote.test", ["nobody@elsewhere.test"], b"x")
    sys.exit("relay accepted")
except smtplib.SMTPRecipientsRefused:
    pass
s.quit()
print("ok")
"#,
        cert = fixture.config.smtp.tls_cert.display().to_string(),
        port = server.smtp_addrs[0].port()
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "smtplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.spool.len(), 1);
    rt.block_on(server.shutdown());
}

#[test]
fn swaks_client_with_starttls_and_pipelining() {
    let fixture = Fixture::new();
    let (rt, server) = start_in_process(&fixture);
    let port = server.smtp_addrs[0].port().to_string();
    for extra in [&["--tls"][..], &["--pipeline"][..]] {
        let out = std::process::Command::new("swaks")
            .args([
                "--server",
                "127.0.0.1",
                "--port",
                &port,
                "--from",
                "swaks@remote.test",
                "--to",
                "alice@example.com",
            ])
            .args([
                "--helo",
                "swaks.test",
                "--header",
                "Subject: from swaks",
                "--body",
                "swaks body",
                "--timeout",
                "20",
            ])
            .args(extra)
            .output()
            .expect("swaks runs (apt-get install swaks)");
        assert!(
            out.status.success(),
            "swaks {extra:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let bodies = spool_bodies(&server);
    assert_eq!(bodies.len(), 2);
    assert!(bodies
        .iter()
        .any(|b| String::from_utf8_lossy(b).contains("with ESMTPS")));
    rt.block_on(server.shutdown());
}

/// NOOP, RSET, VRFY and HELP are free up to `junk_command_limit`, then
/// each one costs an error; accepting a message resets the count.
#[test]
fn junk_commands_spend_the_error_budget() {
    let mut fixture = Fixture::new();
    fixture.config.smtp.junk_command_limit = 5;
    fixture.config.smtp.max_errors = 2;
    let (rt, server) = start_in_process(&fixture);
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO junk.test", 250);
    for (verb, code) in [
        ("NOOP", 250),
        ("RSET", 250),
        ("VRFY postmaster", 252),
        ("HELP", 214),
        ("NOOP", 250),
    ] {
        c.expect(verb, code);
    }
    let r = c.send_mail(
        "s@remote.test",
        &["a@example.com"],
        b"Subject: x\r\n\r\nx\r\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    // The message reset the count: five more are free, two over still
    // fit in the budget, the third over closes the session.
    for _ in 0..7 {
        c.expect("NOOP", 250);
    }
    c.expect("NOOP", 250);
    let r = c.reply();
    assert_eq!((r.code, &r.text[..5]), (421, "4.7.0"), "{r:?}");
    assert!(c.is_closed());
    rt.block_on(server.shutdown());
}

/// A client that pipelines commands but never reads the replies fills its
/// receive window and then the server's send buffer; the server's write
/// must give up after the command timeout and close the session, not park
/// a task (and a connection slot) forever. Meanwhile other clients are
/// served.
#[test]
fn a_client_that_never_reads_its_replies_is_cut() {
    use std::io::Write;
    let mut fixture = Fixture::new();
    fixture.config.smtp.command_timeout = Duration::from_secs(1);
    let (rt, server) = start_in_process(&fixture);
    let addr = server.smtp_addrs[0];
    let stream = rt
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            // A small window so the server's writes back up quickly.
            socket.set_recv_buffer_size(4096)?;
            socket.connect(addr).await
        })
        .expect("connect");
    let mut deaf = stream.into_std().expect("std stream");
    deaf.set_nonblocking(false).unwrap();
    // Never blocks forever: without the server-side timeout the flood
    // would end in a client write timeout, not a reset by the server.
    deaf.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // EHLO: a long reply, and not one of the junk commands that would run
    // into the error budget first.
    let batch = b"EHLO deaf.test\r\n".repeat(1000);
    let started = std::time::Instant::now();
    let mut sent = 0usize;
    let outcome = loop {
        if sent >= 20_000_000 || started.elapsed() > Duration::from_secs(60) {
            break None;
        }
        match deaf.write_all(&batch) {
            Ok(()) => sent += batch.len(),
            Err(e) => break Some(e),
        }
    };
    let error = outcome.expect("the server never gave up on the deaf client");
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "closed by the server, not a client-side timeout: {error:?} after {sent} bytes in {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // Other clients were never affected.
    let mut c = RawClient::greeted(addr);
    c.expect("EHLO other.test", 250);
    let r = c.send_mail(
        "s@remote.test",
        &["a@example.com"],
        b"Subject: hi\r\n\r\nok\r\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    rt.block_on(server.shutdown());
}

/// RFC 5321 4.1.2: a reverse-path is `<>` or a mailbox with a domain; the
/// forms smtp-proto lets through are refused with 553 (5.1.7 for senders,
/// 5.1.3 for recipients), and `<>` still works.
#[test]
fn malformed_addresses_are_refused_at_mail_and_rcpt() {
    let fixture = Fixture::new();
    let (_rt, server) = start_in_process(&fixture);
    let session = || {
        let mut c = RawClient::greeted(server.smtp_addrs[0]);
        c.expect("EHLO client.test", 250);
        c
    };
    for sender in [
        "MAIL FROM: <a@>",
        "MAIL FROM:<a@>",
        "MAIL FROM:<a@example..org>",
        "MAIL FROM:<a@-bad.example>",
        "MAIL FROM:<a@under_score.example>",
        "MAIL FROM:<a@x!y>",
    ] {
        let reply = session().cmd(sender);
        assert!(
            (reply.code == 553 && reply.text.contains("5.1.7")) || reply.code == 501,
            "{sender}: {reply:?}"
        );
    }
    assert_eq!(session().cmd("MAIL FROM: <a@>").code, 553);
    for rcpt in [
        "RCPT TO:<alice@>",
        "RCPT TO:<alice@example.com..>",
        "RCPT TO:<alice@exa_mple.com>",
    ] {
        let mut c = session();
        c.expect("MAIL FROM:<>", 250);
        let reply = c.cmd(rcpt);
        assert!(reply.code == 553 || reply.code == 501, "{rcpt}: {reply:?}");
        c.expect("RCPT TO:<alice@example.com>", 250);
    }
    // Quoted local parts are kept quoted (wire form) in the envelope.
    let reply = session().send_mail(
        "\"a b\"@example.org",
        &["\"john smith\"@example.com"],
        b"Subject: q\r\n\r\nx\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    let id = queue_id(&reply);
    let message = common::block(server.spool.get(id)).unwrap().unwrap();
    assert_eq!(message.envelope.sender, "\"a b\"@example.org");
    assert_eq!(
        message.envelope.recipients[0].address,
        "\"john smith\"@example.com"
    );
}

/// `smtp-source -s N` opens its next connection the moment it reads 221:
/// the per-IP slot must be free by then (it is given back before 221 is
/// sent, not when the session's task ends). With one slot per address and
/// 300 back-to-back sessions, none may be refused.
#[test]
fn a_slot_is_free_when_the_client_reads_221() {
    let mut fixture = Fixture::new();
    fixture.config.smtp.max_connections_per_ip = 1;
    let (_rt, server) = start_in_process(&fixture);
    let mut refused = 0;
    for _ in 0..300 {
        let mut c = RawClient::connect(server.smtp_addrs[0]);
        let greeting = c.reply();
        if greeting.code == 421 {
            refused += 1;
            continue;
        }
        assert_eq!(greeting.code, 220, "{greeting:?}");
        c.expect("QUIT", 221);
    }
    assert_eq!(refused, 0, "sessions refused right after a QUIT");
}
