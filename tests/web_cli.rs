//! `breakwater user …` against the real binary, and the web reader served
//! over HTTPS directly.

mod common;

use std::process::Output;

use common::web::*;
use common::*;

fn breakwater(config: &std::path::Path, args: &[&str], stdin: &str) -> Output {
    run_cli(config, args, stdin)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn user_commands_manage_accounts() {
    let fixture = Fixture::new();
    let config = fixture.write_config();
    let add = |args: &[&str], password: &str| breakwater(&config, args, &format!("{password}\n"));
    let out = add(
        &[
            "user",
            "add",
            "Alice@Example.com",
            "--alias",
            "sales@example.com",
            "--name",
            "Alice Sato",
            "--password-stdin",
        ],
        PASSWORD,
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = add(
        &[
            "user",
            "add",
            "ops@example.com",
            "--admin",
            "--password-stdin",
        ],
        PASSWORD,
    );
    assert!(
        text(&out).contains("totp-setup"),
        "admins are told to enrol TOTP: {}",
        text(&out)
    );
    // Refusals with clear messages.
    let out = add(
        &["user", "add", "alice@example.com", "--password-stdin"],
        PASSWORD,
    );
    assert!(
        !out.status.success() && text(&out).contains("already exists"),
        "{}",
        text(&out)
    );
    let out = add(
        &[
            "user",
            "add",
            "carol@example.com",
            "--alias",
            "sales@example.com",
            "--password-stdin",
        ],
        PASSWORD,
    );
    assert!(
        !out.status.success() && text(&out).contains("already belongs to alice@example.com"),
        "{}",
        text(&out)
    );
    let out = add(
        &["user", "add", "dave@example.com", "--password-stdin"],
        "short",
    );
    assert!(
        !out.status.success() && text(&out).contains("at least 10 characters"),
        "{}",
        text(&out)
    );
    let out = add(
        &["user", "add", "not-an-address", "--password-stdin"],
        PASSWORD,
    );
    assert!(
        !out.status.success() && text(&out).contains("not a mail address"),
        "{}",
        text(&out)
    );
    // The users file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&fixture.config.web.users_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "users file mode {mode:o}");
    // Bulk import: new accounts get printed passwords; existing ones are skipped.
    let csv = fixture.path().join("users.csv");
    std::fs::write(&csv, "address,display name,aliases\nbob@example.com,\"Tanaka, Bob\",info@example.com;support@example.com\nalice@example.com,Alice,\n").unwrap();
    let out = breakwater(&config, &["user", "import", csv.to_str().unwrap()], "");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let line = stdout
        .lines()
        .find(|l| l.starts_with("bob@example.com,"))
        .expect("bob's password");
    let bob_password = line.split_once(',').unwrap().1.to_string();
    assert_eq!(bob_password.len(), 16);
    assert!(
        text(&out).contains("imported 1, skipped 1 existing"),
        "{}",
        text(&out)
    );
    // TOTP enrolment prints an otpauth URI.
    let out = breakwater(&config, &["user", "totp-setup", "ops@example.com"], "");
    assert!(
        text(&out).contains("otpauth://totp/Breakwater:ops%40example.com?secret="),
        "{}",
        text(&out)
    );
    let out = breakwater(&config, &["user", "totp-remove", "ops@example.com"], "");
    assert!(!out.status.success() && text(&out).contains("admins must keep TOTP"));
    let out = breakwater(&config, &["user", "disable", "alice@example.com"], "");
    assert!(out.status.success());
    let out = breakwater(&config, &["user", "list", "--json"], "");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let find = |a: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|u| u["address"] == a)
            .unwrap()
            .clone()
    };
    assert_eq!(find("alice@example.com")["disabled"], true);
    assert_eq!(
        find("bob@example.com")["aliases"],
        serde_json::json!(["info@example.com", "support@example.com"])
    );
    assert_eq!(find("bob@example.com")["display_name"], "Tanaka, Bob");
    assert_eq!(find("ops@example.com")["totp"], true);
    // The imported password works in the running web reader.
    let (_rt, server) = start_in_process(&fixture);
    let mut bob = WebClient::new(server.web_addr.unwrap());
    assert_eq!(bob.login("bob@example.com", &bob_password).status, 303);
    let mut alice = WebClient::new(server.web_addr.unwrap());
    assert_eq!(
        alice.login("alice@example.com", PASSWORD).status,
        401,
        "disabled"
    );
    // passwd: the new password works, the old one does not.
    let out = breakwater(
        &config,
        &["user", "passwd", "bob@example.com", "--password-stdin"],
        "a brand new password\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    std::thread::sleep(std::time::Duration::from_millis(1100)); // the server re-reads the file within 1 s
    let mut again = WebClient::new(server.web_addr.unwrap());
    assert_eq!(again.login("bob@example.com", &bob_password).status, 401);
    assert_eq!(
        again
            .login("bob@example.com", "a brand new password")
            .status,
        303
    );
}

#[test]
fn web_reader_serves_https_with_secure_cookies() {
    let mut fixture = Fixture::new();
    let cert = fixture.path().join("web.pem");
    let key = fixture.path().join("web-key.pem");
    breakwater::tls::write_self_signed(&["localhost".to_string()], &cert, &key, 30).unwrap();
    fixture.config.web.tls_cert = Some(cert.clone());
    fixture.config.web.tls_key = Some(key);
    let (_rt, server) = start_in_process(&fixture);
    let mut client = RawClient::connect(server.web_addr.unwrap()).start_tls(&cert);
    client.send(b"GET /login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let response = String::from_utf8_lossy(&client.read_all()).to_string();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let cookie = response
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie: bw_login="))
        .expect("login cookie");
    assert!(
        cookie.contains("Secure")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    // Plain HTTP on the HTTPS port gets nowhere.
    let mut plain = RawClient::connect(server.web_addr.unwrap());
    plain.send(b"GET /login HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let answer = plain.read_all();
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
}
