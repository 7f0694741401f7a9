//! What every client command takes on its command line: where the scheduler is, the
//! token, and a deadline.

use std::time::Duration;

use herd_client::{Client, ClientError, ConnectOptions};

#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// The scheduler (or an agent serving alone), HOST:PORT.
    #[arg(
        long,
        env = "HERD_SCHEDULER",
        default_value = "127.0.0.1:8001",
        global = true
    )]
    pub scheduler: String,

    /// Cluster token, sent as `authorization: Bearer <token>` with every request.
    #[arg(long, env = "HERD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,

    /// Deadline of each request ("30s", "500ms"); none by default.
    #[arg(long, env = "HERD_TIMEOUT", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Option<Duration>,
}

impl ConnectArgs {
    pub fn options(&self) -> ConnectOptions {
        ConnectOptions {
            token: self.token.clone().filter(|t| !t.is_empty()),
            timeout: self.timeout,
            ..ConnectOptions::default()
        }
    }

    pub async fn connect(&self) -> Result<Client, ClientError> {
        Client::connect_with(&self.scheduler, self.options()).await
    }
}
