//! `breakwater serve`: run until SIGTERM/SIGINT; SIGHUP reloads recipient
//! lists and the certificate.

use std::path::Path;
use std::process::ExitCode;

use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::logging::{self, LogFormat};
use crate::server::Server;

pub fn run(config_path: &Path, log_format: LogFormat) -> ExitCode {
    let config = match super::load_config(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    crate::heap::limit_arenas();
    logging::init(log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("breakwater: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config_path, config))
}

async fn serve(config_path: &Path, config: Config) -> ExitCode {
    // Handlers first: a signal that arrives while the spool is opening must
    // not take the default action (terminate) for SIGHUP/SIGTERM.
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        eprintln!("breakwater: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    let server = match Server::start(config).await {
        Ok(server) => server,
        Err(err) => {
            tracing::error!(error = %err, "cannot start");
            eprintln!("breakwater: {err}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(hostname = %server.config().hostname, "breakwater ready");
    notify_systemd("READY=1");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match Config::load(config_path) {
                Ok(new_config) => server.reload(&new_config),
                Err(err) => tracing::error!(error = %err, "reload: configuration invalid; nothing changed"),
            },
        }
    }
    tracing::info!("shutting down: no new connections; waiting for sessions");
    notify_systemd("STOPPING=1");
    server.shutdown().await;
    ExitCode::SUCCESS
}

/// sd_notify(3) for `Type=notify` units: one datagram to $NOTIFY_SOCKET.
/// A no-op when not started by systemd.
fn notify_systemd(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(err) = sent {
        tracing::warn!(error = %err, "cannot notify systemd");
    }
}
