//! `herd dash`: a live terminal dashboard of the cluster's nodes, models and events.
//!
//! The state ([`app::App`]) is plain data that cluster updates, keys and connection changes
//! update: `herd_client::view`'s view-model of the cluster (the one `herd nodes` and
//! `herd models` print) and the UI's own state. The [`ui`] draws it; [`connection`] keeps
//! the scheduler's watch stream open and makes the unload and drain calls; [`terminal`]
//! sets the terminal up and always restores it. [`run`] only moves messages between them
//! and redraws.

pub mod app;
pub mod connection;
pub mod keys;
mod latency;
pub mod terminal;
pub mod ui;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod render_tests;

use std::io::IsTerminal;
use std::time::Duration;

use crossterm::event::{Event as TermEvent, EventStream, KeyEventKind};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use crate::app::{Action, App};
use crate::connection::{Message, Target};

/// Redraws caused by new data come at most this often.
const FRAME: Duration = Duration::from_millis(250);

/// `herd dash`'s settings.
#[derive(clap::Args, Clone)]
pub struct DashConfig {
    /// The scheduler's admin gRPC address (HOST:PORT or a URL); or several schedulers of
    /// one cluster separated by commas (A:8001,B:8001), tried in turn when one is gone.
    #[arg(long, env = "HERD_SCHEDULER", default_value = "127.0.0.1:8001")]
    pub scheduler: String,
    /// The cluster token, sent as `authorization: Bearer <token>`. A token on the
    /// command line shows in `ps`: prefer --token-file or HERD_TOKEN.
    #[arg(long, env = "HERD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the cluster token from this file (surrounding whitespace ignored) instead
    /// of --token.
    #[arg(long, env = "HERD_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<std::path::PathBuf>,
    /// The cluster CA's certificate (the scheduler's DATA_DIR/ca.pem), to verify the
    /// scheduler over TLS. Not needed with a join token (herd1.…), which pins the CA,
    /// nor on the scheduler's own host with the default data directory.
    #[arg(long, env = "HERD_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Draw without colours (also set by a non-empty NO_COLOR, whatever its value).
    #[arg(long, env = "NO_COLOR", action = clap::ArgAction::SetTrue, value_parser = non_empty)]
    pub no_color: bool,
}

/// NO_COLOR's rule: any non-empty value turns colours off (`NO_COLOR=1` as well as
/// `true`).
fn non_empty(value: &str) -> Result<bool, std::convert::Infallible> {
    Ok(!value.is_empty())
}

impl std::fmt::Debug for DashConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashConfig")
            .field("scheduler", &self.scheduler)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("ca_cert", &self.ca_cert)
            .field("no_color", &self.no_color)
            .finish()
    }
}

/// Runs the dashboard until the user quits.
pub async fn run(config: DashConfig) -> anyhow::Result<()> {
    // Settings first: their errors are worth more than "needs a terminal".
    let token =
        herd_core::auth::given_token(config.token.as_deref(), config.token_file.as_deref())?;
    let ca_pem = herd_client::trusted_ca(
        &config.scheduler,
        config.ca_cert.as_deref(),
        token.as_deref(),
    )?;
    let target = Target::new(&config.scheduler, token.as_deref())?.trusting(ca_pem);
    if !std::io::stdout().is_terminal() {
        anyhow::bail!("herd dash needs a terminal");
    }
    let (tx, mut rx) = mpsc::channel(64);
    let watcher = tokio::spawn(connection::watch(target.clone(), tx.clone()));

    let mut guard = terminal::TerminalGuard::new()?;
    let mut app = App::new(config.scheduler.clone(), !config.no_color, Instant::now());
    let mut keys = EventStream::new();
    let mut ticks = tokio::time::interval(FRAME);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut dirty = true;

    let result: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    dirty |= app.tick(Instant::now());
                    if dirty {
                        guard.terminal.draw(|frame| ui::render(frame, &app))?;
                        dirty = false;
                    }
                }
                Some(message) = rx.recv() => {
                    let now = Instant::now();
                    match message {
                        Message::Connecting => app.on_connecting(now),
                        Message::Update(update) => app.apply_update(update, now),
                        Message::Disconnected { error, retry_in } => {
                            app.on_disconnected(error, retry_in, now);
                        }
                        Message::ActionResult(result) => app.on_action_result(result),
                        Message::Why { model, answer } => app.on_why(model, answer),
                    }
                    // Drawn on the next tick: at most four redraws a second for data.
                    dirty = true;
                }
                event = keys.next() => {
                    match event {
                        None => return Ok(()),
                        Some(Err(e)) => return Err(e.into()),
                        Some(Ok(TermEvent::Key(key))) if key.kind != KeyEventKind::Release => {
                            match app.on_key(key) {
                                Some(Action::Quit) => return Ok(()),
                                Some(Action::Unload(model)) => {
                                    let (target, tx) = (target.clone(), tx.clone());
                                    tokio::spawn(async move {
                                        let result = connection::unload(&target, &model).await;
                                        let _ = tx.send(Message::ActionResult(result)).await;
                                    });
                                }
                                Some(Action::Why(model)) => {
                                    let (target, tx) = (target.clone(), tx.clone());
                                    tokio::spawn(async move {
                                        let answer = connection::why(&target, &model).await;
                                        let _ = tx.send(Message::Why { model, answer }).await;
                                    });
                                }
                                Some(Action::Drain(node)) => {
                                    let (target, tx) = (target.clone(), tx.clone());
                                    tokio::spawn(async move {
                                        let result = connection::drain(&target, &node).await;
                                        let _ = tx.send(Message::ActionResult(result)).await;
                                    });
                                }
                                None => {}
                            }
                            // Keys answer at once.
                            app.tick(Instant::now());
                            guard.terminal.draw(|frame| ui::render(frame, &app))?;
                            dirty = false;
                        }
                        Some(Ok(TermEvent::Resize(_, _))) => {
                            guard.terminal.autoresize()?;
                            guard.terminal.draw(|frame| ui::render(frame, &app))?;
                            dirty = false;
                        }
                        Some(Ok(_)) => {}
                    }
                }
            }
        }
    }
    .await;
    watcher.abort();
    drop(guard);
    result
}

#[cfg(test)]
mod config_tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        dash: DashConfig,
    }

    #[test]
    fn the_token_comes_from_the_flag_or_a_file_and_any_no_color_value_counts() {
        let parse = |args: &[&str]| Cli::try_parse_from(["herd-dash"].iter().chain(args));
        let config = parse(&["--token-file", "/run/herd/token", "--no-color"])
            .expect("valid flags")
            .dash;
        assert_eq!(
            config.token_file.as_deref(),
            Some(std::path::Path::new("/run/herd/token"))
        );
        assert!(config.no_color);
        let both = parse(&["--token-file", "f", "--token", "t"]).err();
        assert_eq!(
            both.map(|e| e.kind()),
            Some(clap::error::ErrorKind::ArgumentConflict)
        );
        assert_eq!(non_empty("1"), Ok(true));
        assert_eq!(non_empty(""), Ok(false));
    }
}
