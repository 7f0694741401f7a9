//! What every client command takes on its command line: where the scheduler is, the
//! token (or the file that holds it), and a deadline.

use std::path::PathBuf;
use std::time::Duration;

use herd_client::{Client, ClientError, ConnectOptions};

#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// The scheduler (or an agent serving alone), HOST:PORT; or several schedulers of
    /// one cluster separated by commas (A:8001,B:8001): a request whose scheduler is
    /// gone goes to the next one.
    #[arg(
        long,
        env = "HERD_SCHEDULER",
        default_value = "127.0.0.1:8001",
        global = true
    )]
    pub scheduler: String,

    /// Cluster token, sent as `authorization: Bearer <token>` with every request. A join
    /// token (herd1.…, the scheduler's DATA_DIR/join-token) also pins the cluster CA for
    /// TLS. A token on the command line shows in `ps`: prefer --token-file or HERD_TOKEN.
    #[arg(long, env = "HERD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,

    /// Read the cluster token from this file (surrounding whitespace ignored) instead
    /// of --token.
    #[arg(long, env = "HERD_TOKEN_FILE", conflicts_with = "token", global = true)]
    pub token_file: Option<PathBuf>,

    /// The cluster CA's certificate (the scheduler's DATA_DIR/ca.pem), to verify the
    /// scheduler over TLS. Not needed with a join token (herd1.…, DATA_DIR/join-token),
    /// which pins the CA, nor on the scheduler's own host with the default data
    /// directory.
    #[arg(long, env = "HERD_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,

    /// Deadline of each request ("30s", "500ms"); none by default.
    #[arg(long, env = "HERD_TIMEOUT", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Option<Duration>,
}

impl ConnectArgs {
    /// How to connect; fails only when --token-file gives no token.
    pub fn options(&self) -> Result<ConnectOptions, ClientError> {
        let token = herd_core::auth::given_token(self.token.as_deref(), self.token_file.as_deref())
            .map_err(|e| ClientError::Token(e.to_string()))?;
        let ca_pem =
            herd_client::trusted_ca(&self.scheduler, self.ca_cert.as_deref(), token.as_deref())?;
        Ok(ConnectOptions {
            token,
            ca_pem,
            timeout: self.timeout,
            ..ConnectOptions::default()
        })
    }

    pub async fn connect(&self) -> Result<Client, ClientError> {
        Client::connect_with(&self.scheduler, self.options()?).await
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        connect: ConnectArgs,
    }

    fn parse(args: &[&str]) -> Result<ConnectArgs, clap::Error> {
        Cli::try_parse_from(["herd"].iter().chain(args)).map(|c| c.connect)
    }

    #[test]
    fn the_token_comes_from_the_flag_or_a_file_and_not_from_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").expect("write");
        let file = file.to_str().expect("utf-8 path");
        let options = parse(&["--token-file", file])
            .expect("valid flags")
            .options()
            .expect("a token");
        assert_eq!(options.token.as_deref(), Some("s3cret"));
        let options = parse(&["--token", "t"]).expect("valid flags").options();
        assert_eq!(options.expect("a token").token.as_deref(), Some("t"));
        let both = parse(&["--token-file", file, "--token", "t"]).err();
        assert_eq!(
            both.map(|e| e.kind()),
            Some(clap::error::ErrorKind::ArgumentConflict)
        );
        let missing = dir.path().join("missing");
        let err = parse(&["--token-file", missing.to_str().expect("utf-8 path")])
            .expect("valid flags")
            .options()
            .expect_err("no such file");
        assert!(
            err.to_string()
                .starts_with("invalid token: cannot read the token file "),
            "{err}"
        );
    }
}
