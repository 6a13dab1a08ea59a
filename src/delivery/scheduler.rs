//! The scheduler: take due messages from the spool's schedule (never a
//! full scan), lease each to one attempt (the in-flight set, and a park in
//! the spool so a crashed task cannot lose it), and flush parked mail when
//! a down upstream answers its probe again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::*;
use crate::envelope::{now_ms, QueueId};

impl Engine {
    /// Wait until no attempt runs for `id`, then own its delivery lease.
    pub(super) async fn take_lease(&self, id: QueueId) {
        loop {
            let done = self.in_flight_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.in_flight.lock().expect("in-flight lock").insert(id) {
                return;
            }
            done.await;
        }
    }

    pub(super) fn release_lease(&self, id: QueueId) {
        self.in_flight.lock().expect("in-flight lock").remove(&id);
        self.in_flight_done.notify_waiters();
        self.spool.work_notify().notify_one();
    }

    pub(super) async fn schedule(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let work = self.spool.work_notify();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let now = now_ms();
            let due = match self.spool.due(now, 256).await {
                Ok(due) => due,
                Err(err) => {
                    tracing::error!(error = %err, "delivery: cannot read the schedule");
                    Vec::new()
                }
            };
            let due_count = due.len();
            let mut busy = 0;
            for id in due {
                if !self.in_flight.lock().expect("in-flight lock").insert(id) {
                    // Made due again (a flush, an operator's retry) while its
                    // attempt or bounce runs. Left due, never parked here: a
                    // flush landing after the attempt recorded its result
                    // would otherwise leave it parked for the whole lease.
                    // The lease's release wakes this loop.
                    busy += 1;
                    continue;
                }
                let _ = self.spool.park(id, now + IN_FLIGHT_LEASE_MS).await;
                let permit = tokio::select! {
                    permit = self.global.clone().acquire_owned() => permit.expect("semaphore open"),
                    _ = shutdown.changed() => {
                        self.in_flight.lock().expect("in-flight lock").remove(&id);
                        return;
                    }
                };
                let engine = self.clone();
                tokio::spawn(async move {
                    engine.process(id).await;
                    engine.release_lease(id);
                    drop(permit);
                });
            }
            let wait = match self.spool.next_due_ms().await {
                // Only messages whose lease is held are due: no 10 ms spin,
                // the release of a lease wakes the scheduler.
                Ok(Some(_)) if due_count > 0 && busy == due_count => Duration::from_secs(1),
                Ok(Some(next)) => {
                    Duration::from_millis(next.saturating_sub(now_ms()).clamp(10, 60_000))
                }
                _ => Duration::from_secs(60),
            };
            tokio::select! {
                _ = work.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Make messages due now.
    pub(super) async fn flush(&self, ids: &[QueueId]) {
        let now = now_ms();
        for id in ids {
            let _ = self.spool.park(*id, now).await;
        }
    }

    pub(super) async fn probe(self: Arc<Self>, name: String) {
        let interval = self.config.probe_interval;
        let mut stopping = self.stopping.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
            if !self.upstreams.is_down(&name) {
                return;
            }
            let Some(domain) = self.upstreams.sample_domain(&name) else {
                return;
            };
            let route = self.router.route_for(&domain);
            let Ok(targets) = self.router.targets(&domain).await else {
                continue;
            };
            for target in &targets {
                if self.transport.probe(target, route.tls).await.is_ok() {
                    let parked = self.upstreams.record_success(&name, &domain);
                    self.transport.clear_pool();
                    tracing::info!(upstream = %name, messages = parked.len(), "probe succeeded; flushing parked mail");
                    self.flush(&parked).await;
                    return;
                }
            }
        }
    }
}
