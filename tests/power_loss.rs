//! Power loss, not just `kill -9`: the spool lives on a FUSE file system
//! (`power_loss/lazyfs.rs`) that throws away everything not yet synced when
//! the power is "cut". Four clients send mail to the real binary; at random
//! moments the binary is killed and the power cut, the file system mounted
//! again and the binary restarted. Afterwards every message that got `250`
//! must be in the spool byte-for-byte, and nothing the spool holds may be
//! torn, foreign, or a message that was refused.
//!
//! The second test is the control: the same run on a disk that ignores the
//! fsyncs of segment files (as if the fsync before `250` were removed) must
//! be caught losing acknowledged mail. Without it, a harness that never
//! really discarded anything would pass for ever.

mod common;
mod power_loss {
    pub mod lazyfs;
}

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ledger::*;
use common::*;
use power_loss::lazyfs::{Counters, PowerSwitch};

struct Run {
    audit: Audit,
    counters: Counters,
    sent: usize,
}

/// `cuts` power cuts under load, then one more with the clients stopped;
/// the spool is audited on the remounted file system.
fn run_with_power_cuts(cuts: usize, lying_suffix: Option<&str>) -> Run {
    let mut fixture = Fixture::new();
    let mount = fixture.path().join("disk");
    std::fs::create_dir(&mount).unwrap();
    // Small segments: the run rolls over to new segment files (directory
    // entries that must be synced too); bodies over 100 KB get their own file.
    fixture.config.spool.dir = mount.join("spool");
    fixture.config.spool.segment_size = 256 * 1024;
    fixture.config.spool.large_message_threshold = 100_000;
    let config_path = fixture.write_config();

    let switch = PowerSwitch::new();
    if let Some(suffix) = lying_suffix {
        switch.ignore_syncs_of(suffix);
    }
    let seed = printed_seed("power-loss test");
    let mut rng = Rng(seed);

    let mut session = Some(switch.mount(&mount));
    let mut server = Some(BinaryServer::start(&config_path));
    let addr = Arc::new(Mutex::new(server.as_ref().unwrap().addr));
    let stop = Arc::new(AtomicBool::new(false));
    let ledger: Ledger = Arc::new(Mutex::new(HashMap::new()));
    let clients = spawn_clients(4, &addr, &stop, &ledger, seed);

    let power_cut = |server: &mut Option<BinaryServer>, session: &mut Option<_>| {
        // The process dies first (no syscall after this), then the disk
        // forgets; a 250 a client already read was sent after its fsync.
        server.take().unwrap().kill9();
        switch.cut();
        remount(session, &switch, &mount);
    };
    for _ in 0..cuts {
        std::thread::sleep(Duration::from_millis(400 + rng.below(800)));
        power_cut(&mut server, &mut session);
        let restarted = BinaryServer::start(&config_path);
        *addr.lock().unwrap() = restarted.addr;
        server = Some(restarted);
    }
    std::thread::sleep(Duration::from_millis(400 + rng.below(800)));
    power_cut(&mut server, &mut session);
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }

    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    let audit = audit_spool(&fixture.config.spool, &ledger);
    let run = Run {
        audit,
        counters: switch.counters(),
        sent: ledger.len(),
    };
    if let Some(session) = session.take() {
        session.umount_and_join().expect("unmount");
    }
    run
}

fn remount(session: &mut Option<fuser::BackgroundSession>, switch: &PowerSwitch, at: &Path) {
    if let Some(old) = session.take() {
        old.umount_and_join().expect("unmount after the power cut");
    }
    *session = Some(switch.mount(at));
}

#[test]
fn power_loss_never_loses_an_acknowledged_message() {
    let run = run_with_power_cuts(4, None);
    let c = run.counters;
    eprintln!(
        "power-loss test: sent={} acked={} stored={} cuts={} file_syncs={} dir_syncs={} \
         discarded: {} files, {} directories; index rebuilt: {:?}",
        run.sent,
        run.audit.acked,
        run.audit.stored,
        c.cuts,
        c.file_syncs,
        c.dir_syncs,
        c.cut_files,
        c.cut_entries,
        run.audit.index_rebuilt
    );
    run.audit.assert_clean();
    assert!(
        run.audit.acked >= 100,
        "too little traffic to mean anything: {}",
        run.audit.acked
    );
    // The cuts must have thrown something away, or they tested nothing.
    assert!(c.cut_files > 0, "no cut found unsynced data: {c:?}");
}

#[test]
fn the_power_loss_test_catches_a_spool_that_acknowledges_before_its_fsync() {
    let run = run_with_power_cuts(1, Some(".seg"));
    eprintln!(
        "control (segment fsyncs ignored): sent={} acked={} stored={} ignored_syncs={} problems={}",
        run.sent,
        run.audit.acked,
        run.audit.stored,
        run.counters.ignored_syncs,
        run.audit.problems.len()
    );
    assert!(
        run.counters.ignored_syncs > 0,
        "the lying disk was never asked to sync"
    );
    assert!(
        run.audit.problems.iter().any(|p| p.contains("lost")),
        "acknowledged messages whose fsync was ignored survived the power cut: \
         the harness does not discard unsynced data. Problems: {:?}",
        run.audit.problems
    );
}
