//! Operator paths: shipped configs, the config reference, systemd unit,
//! Dockerfile and compose file, certificate commands and live reload.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_breakwater");

fn check_config(file: &str) -> std::process::Output {
    Command::new(BIN)
        .args(["check-config", "--config", file])
        .current_dir(ROOT)
        .output()
        .unwrap()
}

#[test]
fn every_shipped_and_example_config_passes_check_config() {
    let mut files = vec![
        "config/breakwater.toml".to_string(),
        "config/docker.toml".to_string(),
    ];
    for entry in std::fs::read_dir(Path::new(ROOT).join("config/examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            files.push(path.strip_prefix(ROOT).unwrap().display().to_string());
        }
    }
    assert!(files.len() >= 5, "{files:?}");
    for file in files {
        let out = check_config(&file);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn config_reference_documents_every_key() {
    let fixture = Fixture::new();
    let minimal = fixture.path().join("min.toml");
    std::fs::write(&minimal, "hostname = \"mx2.example.com\"\n[[domain]]\nname = \"example.com\"\nrecipients = \"config/recipients-example.com.txt\"\n").unwrap();
    let out = check_config(minimal.to_str().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let effective = String::from_utf8(out.stdout).unwrap();
    let reference = std::fs::read_to_string(Path::new(ROOT).join("docs/CONFIG.md")).unwrap();
    let section_text = |section: &str| -> String {
        let heading = if section.is_empty() {
            "## Top level".to_string()
        } else {
            format!("## `{section}`")
        };
        let start = reference
            .find(&heading)
            .unwrap_or_else(|| panic!("docs/CONFIG.md lacks a section {heading:?}"));
        let rest = &reference[start + heading.len()..];
        rest[..rest.find("\n## ").unwrap_or(rest.len())].to_string()
    };
    let mut section = String::new();
    let mut checked = 0;
    for line in effective.lines() {
        let line = line.trim_end();
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        if key.starts_with(' ') || key.starts_with('#') {
            continue;
        }
        let text = section_text(&section);
        assert!(
            text.contains(&format!("| `{key}` |")),
            "docs/CONFIG.md does not document {section} {key}"
        );
        checked += 1;
    }
    // Optional keys that the minimal config leaves out.
    for (section, key) in [
        ("[delivery]", "extra_ca_file"),
        ("[[domain]]", "recipients"),
    ] {
        assert!(
            section_text(section).contains(&format!("| `{key}` |")),
            "{section} {key}"
        );
    }
    assert!(checked >= 40, "only {checked} keys seen: {effective}");
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let unit =
        std::fs::read_to_string(Path::new(ROOT).join("packaging/breakwater.service")).unwrap();
    for needle in [
        "Type=notify",
        "User=breakwater",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/breakwater",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "PrivateTmp=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(needle), "unit lacks {needle}");
    }
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("systemd-analyze (apt-get install systemd)");
    // Verify a copy pointing at the binary we built (verify checks that it exists).
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("breakwater.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/breakwater", BIN)
            .replace("User=breakwater", "User=root")
            .replace("Group=breakwater", "Group=root"),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Complaints about the host (no running systemd in a container) are not about the unit.
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("breakwater.service"))
        .collect();
    assert!(about_unit.is_empty(), "systemd-analyze verify: {stderr}");
}

#[test]
fn dockerfile_and_compose_file_hold_together() {
    let dockerfile = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    let stages = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .count();
    assert!(stages >= 2, "multi-stage build");
    let last_user = dockerfile
        .lines()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("USER in the runtime stage");
    assert!(!last_user.contains("root"), "{last_user}");
    let expose = dockerfile
        .lines()
        .find(|l| l.starts_with("EXPOSE "))
        .expect("EXPOSE");
    for port in ["25", "8080", "8025"] {
        assert!(
            expose.split_whitespace().any(|p| p == port),
            "EXPOSE lacks {port}"
        );
    }
    assert!(dockerfile.contains("HEALTHCHECK"));
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let source = line.split_whitespace().nth(1).unwrap();
        assert!(
            Path::new(ROOT).join(source).exists(),
            "Dockerfile copies missing {source}"
        );
    }

    // The compose file, parsed as YAML by Python (PyYAML).
    let script = r#"
import json, sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
print(json.dumps(doc))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(Path::new(ROOT).join("docker-compose.yml"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "docker-compose.yml does not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let compose: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let services = compose["services"].as_object().expect("services");
    for name in ["breakwater", "upstream", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    let bw = &services["breakwater"];
    let ports: Vec<&str> = bw["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(ports.iter().any(|p| p.ends_with(":25")), "{ports:?}");
    assert!(ports.iter().any(|p| p.ends_with(":8025")), "{ports:?}");
    let volumes: Vec<&str> = bw["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for dir in ["./config:", "./certs:", "./data:"] {
        assert!(
            volumes.iter().any(|v| v.starts_with(dir)),
            "volume {dir} missing: {volumes:?}"
        );
    }
    // Every host file or directory the compose file mounts or builds from exists
    // (data/ is created at run time).
    for service in services.values() {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let host = volume.as_str().unwrap().split(':').next().unwrap();
            if host.starts_with("./") && host != "./data" {
                assert!(
                    Path::new(ROOT).join(host).exists(),
                    "compose mounts missing {host}"
                );
            }
        }
    }
    // The container config is valid and the in-container config path is mounted.
    let env = bw["environment"]["BREAKWATER_CONFIG"].as_str().unwrap();
    assert_eq!(env, "/var/lib/breakwater/config/docker.toml");
    assert!(check_config("config/docker.toml").status.success());
    let prometheus =
        std::fs::read_to_string(Path::new(ROOT).join("packaging/prometheus/prometheus.yml"))
            .unwrap();
    assert!(prometheus.contains("breakwater:8025"));
}

#[test]
fn cert_command_and_live_reload_on_file_change() {
    let mut fixture = Fixture::new();
    fixture.config.smtp.tls_reload_check = Duration::from_millis(200);
    let config_path = fixture.write_config();
    let cert = fixture.config.smtp.tls_cert.clone();
    let key = fixture.config.smtp.tls_key.clone();
    let make = |days: &str, extra: &[&str]| {
        Command::new(BIN)
            .args([
                "cert",
                "self-signed",
                "--host",
                "localhost",
                "--days",
                days,
                "--config",
            ])
            .arg(&config_path)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = make("365", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !make("365", &[]).status.success(),
        "must not overwrite without --force"
    );
    let first = std::fs::read(&cert).unwrap();

    let server = BinaryServer::start(&config_path);
    let trusts = |ca: &Path| -> bool {
        let mut c = RawClient::greeted(server.addr);
        c.expect("EHLO reload.test", 250);
        assert_eq!(c.cmd("STARTTLS").code, 220);
        let mut c = c.start_tls(ca);
        std::io::Write::write_all(&mut c.stream, b"EHLO reload.test\r\n").is_ok()
            && c.try_reply().is_ok_and(|r| r.code == 250)
    };
    let ca_copy = fixture.path().join("first.pem");
    std::fs::write(&ca_copy, &first).unwrap();
    assert!(trusts(&ca_copy), "serves the first certificate");

    // Renewal: new files on disk, no signal. A 3-day certificate also trips
    // the expiry warning.
    let out = make("3", &["--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(std::fs::read(&cert).unwrap(), first);
    assert!(
        wait_for(Duration::from_secs(10), || server
            .log_text()
            .contains("reloaded")),
        "{}",
        server.log_text()
    );
    assert!(trusts(&cert), "serves the renewed certificate");
    assert!(!trusts(&ca_copy), "old certificate no longer served");
    assert!(
        wait_for(Duration::from_secs(5), || server
            .log_text()
            .contains("expires within 14 days")),
        "{}",
        server.log_text()
    );
    let _ = key;
}

#[test]
fn tells_systemd_when_ready() {
    let fixture = Fixture::new();
    let config_path = fixture.write_config();
    let socket_path = fixture.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("NOTIFY_SOCKET", &socket_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).expect("READY=1 from breakwater");
    assert_eq!(&buf[..n], b"READY=1");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = socket.recv(&mut buf).expect("STOPPING=1 from breakwater");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(child.wait().unwrap().success());
}

#[test]
fn version_and_help_read_well() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("breakwater 0.")
            && text.contains("commit: ")
            && text.contains("features: "),
        "{text}"
    );
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for command in [
        "serve",
        "check-config",
        "queue",
        "upstream",
        "token",
        "audit",
        "cert",
    ] {
        assert!(text.contains(command), "--help lacks {command}: {text}");
    }
}

/// The alerting rules load (`promtool check config` checks prometheus.yml
/// and the rule file it names) and fire on the series they are for
/// (`promtool test rules`, Debian's `prometheus` package).
#[test]
fn prometheus_rules_pass_promtool() {
    let dir = Path::new(ROOT).join("packaging/prometheus");
    for args in [
        &["check", "config", "prometheus.yml"][..],
        &["test", "rules", "alerts_test.yml"][..],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool (Debian package prometheus; scripts/test installs it)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every metric the Grafana dashboard and the alerting rules query is in
/// `/metrics` with the type the query assumes (`_total` for counters,
/// `_bucket` for histograms, bare names for gauges).
#[test]
fn every_metric_the_dashboard_and_the_rules_query_exists() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(ROOT).join("packaging/grafana/dashboards/breakwater.json"),
        )
        .unwrap(),
    )
    .expect("dashboard JSON");
    let datasource = std::fs::read_to_string(
        Path::new(ROOT).join("packaging/grafana/provisioning/datasources/prometheus.yml"),
    )
    .unwrap();
    let mut queries: Vec<String> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let uid = panel["datasource"]["uid"].as_str().unwrap_or_default();
        assert!(
            datasource.contains(&format!("uid: {uid}")),
            "panel {} uses data source {uid:?}, not provisioned",
            panel["title"]
        );
        for target in panel["targets"].as_array().expect("targets") {
            queries.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    let rules =
        std::fs::read_to_string(Path::new(ROOT).join("packaging/prometheus/alerts.yml")).unwrap();
    queries.extend(
        rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr:"))
            .map(str::to_string),
    );
    assert!(queries.len() > 15, "{queries:?}");
    let wanted = [
        "breakwater_upstream_queue_messages",
        "breakwater_queue_oldest_message_age_seconds",
        "breakwater_upstream_up",
        "breakwater_messages_accepted_total",
        "breakwater_delivery_attempts_total",
        "breakwater_messages_rejected_total",
        "breakwater_alert_active",
    ];
    for name in wanted {
        assert!(
            queries.iter().any(|q| q.contains(name)),
            "the dashboard shows no {name}"
        );
    }

    // A server with something to show in each family: a delivery, a
    // rejection, an alert (an upstream that refuses connections).
    let rt = common::runtime();
    let sink = rt.block_on(common::sink::Sink::start(
        "127.0.0.1:0",
        common::sink::Script::default(),
    ));
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_addr = refused.local_addr().unwrap();
    drop(refused);
    let mut fixture = Fixture::new();
    fixture.config.delivery.enabled = true;
    fixture.config.domains[0].upstream = sink.addr.to_string();
    fixture.config.domains[0].tls = breakwater::config::UpstreamTls::None;
    fixture.config.domains[1].upstream = refused_addr.to_string();
    fixture.config.alerts.enabled = true;
    fixture.config.alerts.check_interval = Duration::from_millis(200);
    fixture.config.alerts.probe_failures = 1;
    let server = rt.block_on(fixture.start());
    let mut c = RawClient::greeted(server.smtp_addrs[0]);
    c.expect("EHLO metrics.test", 250);
    c.expect("MAIL FROM:<s@remote.test>", 250);
    let refused_rcpt = c.cmd("RCPT TO:<x@not-ours.test>");
    assert!(refused_rcpt.code >= 500, "{}", refused_rcpt.code);
    c.expect("RSET", 250);
    let r = c.send_mail(
        "s@remote.test",
        &["user@example.com"],
        b"Subject: m\r\n\r\nx\r\n",
    );
    assert_eq!(r.code, 250);
    let scrape = || {
        ureq::get(&format!("http://{}/metrics", server.admin_addr.unwrap()))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap()
    };
    assert!(
        wait_for(Duration::from_secs(10), || {
            let text = scrape();
            [
                "breakwater_delivery_attempts_total{",
                "breakwater_alert_active{",
                "breakwater_alerts_total{",
            ]
            .iter()
            .all(|sample| text.contains(sample))
        }),
        "{}",
        scrape()
    );
    let text = scrape();
    let types: std::collections::HashMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let mut checked = 0;
    for query in &queries {
        let mut rest = query.as_str();
        while let Some(at) = rest.find("breakwater_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            let (base, kind) = if let Some(base) = name.strip_suffix("_total") {
                (base, "counter")
            } else if let Some(base) = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
            {
                (base, "histogram")
            } else {
                (name.as_str(), "gauge")
            };
            assert_eq!(
                types.get(base).copied(),
                Some(kind),
                "{query}: {name} wants a {kind} {base} in /metrics"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked}");
    rt.block_on(server.shutdown());
}
