//! Settings shared by every role, each a flag with an environment variable.

use clap::Args;

/// The broker link and the logs: what every process needs, a worker nothing more.
#[derive(Args, Debug, Clone)]
pub struct LinkArgs {
    /// RabbitMQ URL (`amqp://` or `amqps://` for TLS). For a broker cluster, the nodes'
    /// URLs separated by commas (same user and vhost): a connection goes to the first node
    /// that answers, and a lost connection is made again to another node.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,

    /// PEM file of the certificate authority that signed the broker's certificate, for an
    /// `amqps://` URL whose broker the system's roots do not vouch for (a private CA, as
    /// scripts/dev-tls.sh makes).
    #[arg(long, env = "AMQP_CA_FILE", value_name = "FILE")]
    pub amqp_ca_file: Option<std::path::PathBuf>,

    /// Log filter, in tracing's EnvFilter syntax (e.g. `info,castwork_worker=debug`).
    #[arg(long = "log", env = "RUST_LOG", default_value = "info")]
    pub log: String,

    /// Log lines as `text` (for people; coloured only on a terminal) or `json` (one object
    /// a line, for log collectors; a line logged inside a segment's span carries its
    /// `trace_id` under `span`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// A TOML file of settings: every flag's long name as a key (`amqp-url = "..."`,
    /// `slots = 2`), a table per subcommand (`[serve]`); flags and environment variables
    /// override it, and a key that is no flag is an error.
    #[arg(long, env = "CASTWORK_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
}

/// Connection settings of the roles that use the object store.
#[derive(Args, Debug, Clone)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub link: LinkArgs,

    /// Object store for segments and playlists: `file://DIR` (a local directory, created if
    /// missing), `s3://BUCKET[/PREFIX]` configured by the usual AWS_* variables
    /// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT, AWS_ALLOW_HTTP),
    /// `gs://BUCKET[/PREFIX]` (GOOGLE_SERVICE_ACCOUNT, ...) or `az://CONTAINER[/PREFIX]`
    /// (AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ACCOUNT_KEY, ...).
    #[arg(long, env = "STORAGE_URL", default_value = "file://./data")]
    pub storage_url: String,

    /// PEM file of the certificate authority that signed Redis's certificate, for a
    /// `rediss://` URL (Redis over TLS) that the system's roots do not vouch for (a private
    /// CA, as scripts/dev-tls.sh makes). Redis's password goes in the URL:
    /// `rediss://USER:PASSWORD@HOST:PORT/`.
    #[arg(long, env = "REDIS_CA_FILE", value_name = "FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,
}

/// How log lines are written to stderr.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines, with ANSI colours only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A URL with its password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        // A list of broker nodes: each one redacted.
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("amqp://w:s1@a/v,amqp://w:s2@b/v"),
            "amqp://w:***@a/v,amqp://w:***@b/v"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redact_url("file://./data"), "file://./data");
    }
}
