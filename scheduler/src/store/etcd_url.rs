//! `--store etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`: where the etcd store is, parsed
//! apart from any connection so that a mistyped flag is refused before the start.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdUrl {
    /// `HOST:PORT` each, as given.
    pub endpoints: Vec<String>,
    /// Put before every key: empty (the scheduler's keys already start with `/herd/`), or
    /// `/PREFIX` from the URL's path, so that clusters can share an etcd: `/prod` gives
    /// `/prod/herd/...`, and the keys' own leading `/` keeps it apart from `/production`.
    pub prefix: String,
}

const FORM: &str = "etcd://HOST:PORT[,HOST:PORT...][/PREFIX]";

impl FromStr for EtcdUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<EtcdUrl, String> {
        let Some(rest) = url.strip_prefix("etcd://") else {
            let scheme = url.split_once("://").map_or(url, |(scheme, _)| scheme);
            return Err(format!(
                "unsupported store {scheme:?}: the only one is etcd, as {FORM}"
            ));
        };
        let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
        if hosts.is_empty() {
            return Err(format!("no etcd endpoint in {url:?}: use {FORM}"));
        }
        let endpoints = hosts
            .split(',')
            .map(endpoint)
            .collect::<Result<Vec<_>, _>>()?;
        let path = path.trim_matches('/');
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("/{path}")
        };
        Ok(EtcdUrl { endpoints, prefix })
    }
}

/// One `HOST:PORT` (an IPv6 host in brackets). The port is not guessed: say it.
fn endpoint(text: &str) -> Result<String, String> {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !text.ends_with(']') => (host, port),
        _ => return Err(format!("etcd endpoint {text:?} has no port: use HOST:PORT")),
    };
    if host.is_empty() {
        return Err(format!("etcd endpoint {text:?} has no host: use HOST:PORT"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(text.to_owned()),
        _ => Err(format!(
            "etcd endpoint {text:?}: {port:?} is not a port (1 to 65535)"
        )),
    }
}

impl fmt::Display for EtcdUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "etcd://{}{}", self.endpoints.join(","), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<EtcdUrl, String> {
        url.parse()
    }

    #[test]
    fn endpoints_and_no_prefix() {
        let url = parse("etcd://10.0.0.1:2379,etcd-2:2379,[::1]:2380").expect("parses");
        assert_eq!(
            url.endpoints,
            ["10.0.0.1:2379", "etcd-2:2379", "[::1]:2380"]
        );
        assert_eq!(url.prefix, "");
        assert_eq!(
            url.to_string(),
            "etcd://10.0.0.1:2379,etcd-2:2379,[::1]:2380"
        );
        assert_eq!(parse("etcd://h:1/").expect("parses").prefix, "");
    }

    #[test]
    fn a_path_is_the_prefix() {
        assert_eq!(parse("etcd://h:1/prod").expect("parses").prefix, "/prod");
        assert_eq!(parse("etcd://h:1/a/b/").expect("parses").prefix, "/a/b");
        let url = parse("etcd://h:1/staging").expect("parses");
        assert_eq!(parse(&url.to_string()), Ok(url));
    }

    #[test]
    fn mistakes_are_named() {
        let error = |url: &str| parse(url).expect_err(url);
        assert!(error("http://h:2379").contains("unsupported store \"http\""));
        assert!(error("h:2379").contains("the only one is etcd"));
        assert!(error("etcd://").contains("no etcd endpoint"));
        assert!(error("etcd:///herd").contains("no etcd endpoint"));
        assert!(error("etcd://h").contains("\"h\" has no port"));
        assert!(error("etcd://h:1,,k:2").contains("\"\" has no port"));
        assert!(error("etcd://[::1]").contains("has no port"));
        assert!(error("etcd://:2379").contains("has no host"));
        assert!(error("etcd://h:x").contains("\"x\" is not a port"));
        assert!(error("etcd://h:0").contains("\"0\" is not a port"));
        assert!(error("etcd://h:65536").contains("is not a port"));
        assert!(error("etcd://h:1,k").contains("\"k\" has no port"));
    }

    #[test]
    fn the_flag_takes_a_url_and_refuses_a_bad_one() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            scheduler: crate::SchedulerConfig,
        }
        let parse = |store: &[&str]| {
            let args = ["herd-scheduler", "--model-repository", "m"];
            Cli::try_parse_from(args.iter().chain(store)).map(|cli| cli.scheduler.store)
        };
        assert_eq!(parse(&[]).expect("parses"), None);
        let url = parse(&["--store", "etcd://h:2379"]).expect("parses");
        assert_eq!(url.expect("given").endpoints, ["h:2379"]);
        let error = parse(&["--store", "etcd://h"]).expect_err("refused");
        assert!(error.to_string().contains("\"h\" has no port"), "{error}");
    }
}
