//! Third-party checkers against the real binary on loopback, each turned
//! into a test that reads the tool's own output and fails on a regression:
//! nmap's `smtp-open-relay` and `smtp-commands` scripts, testssl.sh on
//! STARTTLS, and swaks transcripts. `scripts/test` installs the tools.
//! (swaks 2020 has no CHUNKING; BDAT is driven by our own client in
//! tests/smtp_protocol.rs and tests/chaos.rs.)

mod common;

use std::process::Command;

use common::*;

fn output_of(command: &mut Command, what: &str) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what} does not run ({e}); scripts/test installs it"));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn nmap(port: u16, script_args: &str) -> String {
    output_of(
        Command::new("nmap")
            .args(["-Pn", "-n", "-p", &port.to_string()])
            // "+" runs the scripts although the port is not 25.
            .args(["--script", "+smtp-open-relay,+smtp-commands"])
            .args(["--script-args", script_args])
            .arg("127.0.0.1"),
        "nmap",
    )
}

#[test]
fn nmap_finds_no_open_relay_and_the_expected_extensions() {
    let fixture = Fixture::new();
    let server = BinaryServer::start(&fixture.write_config());
    let port = server.addr.port();
    // Default relay probes (to relaytest@nmap.scanme.org, with %-hack,
    // !-paths and quoted local parts), then with a forged sender in our
    // own domain: no combination may be accepted.
    for args in [
        "smtp-open-relay.ip=127.0.0.1",
        "smtp-open-relay.ip=127.0.0.1,smtp-open-relay.from=ceo@example.com",
        "smtp-open-relay.ip=127.0.0.1,smtp-open-relay.domain=listed.example",
    ] {
        let out = nmap(port, args);
        assert!(
            out.contains(
                "smtp-open-relay: Server doesn't seem to be an open relay, all tests failed"
            ),
            "nmap {args}:\n{out}"
        );
        assert!(!out.contains("is an open relay"), "{out}");
        for extension in [
            "PIPELINING",
            "SIZE 52428800",
            "8BITMIME",
            "CHUNKING",
            "STARTTLS",
            "SMTPUTF8",
            "DSN",
        ] {
            assert!(out.contains(extension), "EHLO lacks {extension}:\n{out}");
        }
        // An MX offers no AUTH, and no address-harvesting EXPN.
        assert!(!out.contains("AUTH"), "{out}");
        assert!(!out.contains("EXPN"), "{out}");
    }
    // The relay attempts were refused, and logged as such.
    assert!(
        server.log_text().contains("relay"),
        "no relay refusal in the log:\n{}",
        server.log_text()
    );
}

#[test]
fn testssl_finds_no_weak_protocol_cipher_or_known_vulnerability() {
    let fixture = Fixture::new();
    let server = BinaryServer::start(&fixture.write_config());
    let json = fixture.path().join("testssl.json");
    let text = output_of(
        Command::new("timeout")
            .args(["600", "testssl"])
            .args(["--quiet", "--warnings", "batch", "--color", "0"])
            .args(["--starttls", "smtp", "-p", "-s", "-U", "--jsonfile"])
            .arg(&json)
            .arg(server.addr.to_string()),
        "testssl (Debian package testssl.sh)",
    );
    let findings: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(&json).unwrap_or_else(|e| panic!("no JSON from testssl ({e}):\n{text}")),
    )
    .expect("testssl JSON");
    let finding = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .and_then(|f| f["finding"].as_str())
            .unwrap_or_else(|| panic!("testssl did not report {id}:\n{text}"))
            .to_string()
    };
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert!(
            finding(old).starts_with("not offered"),
            "{old}: {}",
            finding(old)
        );
    }
    assert!(finding("TLS1_2").starts_with("offered"));
    assert!(finding("TLS1_3").starts_with("offered"));
    for weak in [
        "cipherlist_NULL",
        "cipherlist_aNULL",
        "cipherlist_EXPORT",
        "cipherlist_LOW",
        "cipherlist_3DES_IDEA",
        "cipherlist_AVERAGE",
    ] {
        assert!(
            finding(weak).starts_with("not offered"),
            "{weak}: {}",
            finding(weak)
        );
    }
    for vulnerability in [
        "heartbleed",
        "CCS",
        "ROBOT",
        "POODLE_SSL",
        "SWEET32",
        "FREAK",
        "DROWN",
        "LOGJAM",
        "BEAST",
        "LUCKY13",
        "RC4",
    ] {
        let found = finding(vulnerability);
        assert!(found.contains("not vulnerable"), "{vulnerability}: {found}");
    }
    let bad: Vec<String> = findings
        .iter()
        .filter(|f| {
            let severity = f["severity"].as_str().unwrap_or("");
            // testssl warns about its own OpenSSL build, not about us.
            matches!(severity, "MEDIUM" | "HIGH" | "CRITICAL")
                || (severity == "WARN" && f["id"] != "engine_problem")
                || f["id"] == "scanProblem"
        })
        .map(|f| f.to_string())
        .collect();
    assert!(bad.is_empty(), "testssl flags: {bad:#?}");
}

fn swaks(port: u16, to: &str, extra: &[&str]) -> (bool, String) {
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--from",
            "swaks@remote.test",
            "--to",
            to,
            "--helo",
            "swaks.test",
        ])
        .args(["--timeout", "20"])
        .args(extra)
        .output()
        .expect("swaks runs (scripts/test installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn swaks_transcripts_show_pipelining_starttls_and_relay_refusal() {
    let fixture = Fixture::new();
    let server = BinaryServer::start(&fixture.write_config());
    let port = server.addr.port();

    // Pipelining: MAIL, RCPT and DATA leave together, before any reply.
    let (ok, transcript) = swaks(port, "alice@example.com", &["--pipeline"]);
    assert!(ok, "{transcript}");
    let sent: Vec<&str> = transcript
        .lines()
        .skip_while(|l| !l.contains("-> MAIL FROM"))
        .take(3)
        .collect();
    assert!(
        sent.len() == 3 && sent[1].contains("-> RCPT TO") && sent[2].contains("-> DATA"),
        "not pipelined:\n{transcript}"
    );
    assert!(
        transcript.contains("<-  250 2.0.0 Ok: queued as"),
        "{transcript}"
    );

    // STARTTLS: TLS 1.2 or 1.3, then the session starts over.
    let (ok, transcript) = swaks(port, "alice@example.com", &["--tls"]);
    assert!(ok, "{transcript}");
    let tls_line = transcript
        .lines()
        .find(|l| l.contains("TLS started with cipher"))
        .unwrap_or_else(|| panic!("no TLS:\n{transcript}"));
    assert!(
        tls_line.contains("TLSv1.3") || tls_line.contains("TLSv1.2"),
        "{tls_line}"
    );
    assert!(
        transcript.contains("~> EHLO swaks.test"),
        "no EHLO after TLS:\n{transcript}"
    );

    // Relay attempts: refused at RCPT, nothing queued.
    for to in [
        "victim@elsewhere.test",
        "victim%elsewhere.test@example.com",
        "@example.com:victim@elsewhere.test",
    ] {
        let (ok, transcript) = swaks(port, to, &[]);
        assert!(!ok, "relay to {to} accepted:\n{transcript}");
        assert!(
            transcript
                .lines()
                .any(|l| l.contains("<** ") && l.contains(" 5.")),
            "{to}: no 5xx at RCPT:\n{transcript}"
        );
    }
    server.kill9();
    let (spool, _) = breakwater::spool::Spool::open(&fixture.config.spool).unwrap();
    assert_eq!(spool.len(), 2, "only the two real messages are queued");
}
