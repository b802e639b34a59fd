//! `portcullis serve`: set up logging, build the gateway ([`crate::app`])
//! and run it until SIGINT or SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use crate::app::App;
use crate::config::Config;

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

pub(crate) async fn serve_gateway(
    config: Config,
    role: crate::fleet::Role,
) -> anyhow::Result<ExitCode> {
    init_tracing();
    let pid_file = config.state_dir.join(crate::app::PID_FILE);
    let app = App::build(Arc::new(config), role).await?;
    // For `portcullis policy reload`.
    if let Err(e) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
        tracing::warn!(error = %e, "cannot write the pid file; policy reload needs SIGHUP by hand");
    }
    app.run(wait_for_signal()).await;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
