//! The config loader on hostile TOML: it must answer with an error naming
//! the key, never panic, and whatever it accepts must survive a round trip
//! through `to_toml` (what `check-config` prints must load again).
#![no_main]

use std::path::Path;

use breakwater::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    match Config::parse(text, path) {
        Ok(config) => {
            let again = config.to_toml();
            let reparsed = Config::parse(&again, path)
                .unwrap_or_else(|err| panic!("accepted config does not reload: {err}\n{again}"));
            assert_eq!(reparsed.to_toml(), again, "round trip changed the config");
        }
        Err(err) => {
            let message = err.to_string();
            assert!(message.contains("fuzz.toml"), "error does not name the file: {message}");
        }
    }
});
