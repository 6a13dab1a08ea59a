//! Start-up recovery on a damaged spool: the input becomes the newest
//! segment file (and, when it is long enough, a sealed older one too). The
//! spool must open — cutting a torn tail, skipping corrupt records — or
//! refuse with an error; never panic. Every message it then lists must read
//! back checksum-verified or fail with an error.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use breakwater::config::SpoolConfig;
use breakwater::spool::Spool;
use libfuzzer_sys::fuzz_target;

fn root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("breakwater-fuzz-spool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = root().join("spool");
    let _ = std::fs::remove_dir_all(&dir);
    let segments = dir.join("segments");
    std::fs::create_dir_all(&segments).unwrap();
    // A first byte splits the input into a sealed segment and the newest one.
    let (sealed, newest) = match data.split_first() {
        Some((&cut, rest)) if rest.len() > 64 && cut & 1 == 1 => {
            rest.split_at((cut as usize * rest.len()) / 256)
        }
        _ => (&[][..], data),
    };
    if !sealed.is_empty() {
        std::fs::write(segments.join("0000000000000001.seg"), sealed).unwrap();
    }
    std::fs::write(segments.join("0000000000000002.seg"), newest).unwrap();
    let config = SpoolConfig {
        dir: dir.clone(),
        min_free: bytesize::ByteSize::b(0),
        ..SpoolConfig::default()
    };
    let Ok((spool, report)) = Spool::open(&config) else {
        return;
    };
    let listed = spool.list().expect("index lists after a successful open");
    assert_eq!(listed.len(), report.messages);
    for message in listed {
        let _ = spool.read_body(message.id);
    }
    runtime().block_on(spool.close());
});
