//! Command lines as the session sees them: the smtp-proto parser, then the
//! relay policy on every address it yields. Nothing may panic, and an
//! accepted recipient must be in a configured domain with no routing in it.
#![no_main]

use std::sync::OnceLock;

use breakwater::config::Config;
use breakwater::policy::{RcptVerdict, RecipientPolicy};
use libfuzzer_sys::fuzz_target;
use smtp_proto::Request;

fn policy() -> &'static RecipientPolicy {
    static POLICY: OnceLock<RecipientPolicy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let config = Config::parse(
            "hostname = \"mx.test\"\n[[domain]]\nname = \"example.com\"\n",
            std::path::Path::new("fuzz.toml"),
        )
        .expect("config");
        RecipientPolicy::load(&config).expect("policy")
    })
}

fuzz_target!(|data: &[u8]| {
    let mut line = data.to_vec();
    line.extend_from_slice(b"\r\n");
    let Ok(request) = Request::parse(&mut line.iter()) else {
        return;
    };
    if let Request::Rcpt { to } = request {
        if let RcptVerdict::Accept(address) = policy().check(&to.address) {
            let (local, domain) = address.rsplit_once('@').expect("accepted address has a domain");
            assert_eq!(domain, "example.com", "relayed outside our domain: {address}");
            let unquoted = local.trim_matches('"');
            assert!(!unquoted.contains(['%', '!']), "routing accepted: {address}");
        }
    }
});
