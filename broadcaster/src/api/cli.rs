//! The API's settings on `broadcaster serve` and the `broadcaster api-keys` command.

use std::sync::Arc;
use std::time::Duration;

use castwork_cluster::Storage;
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use super::fetch::FetchLimits;
use super::jobs::{Jobs, Runner};
use super::Api;
use crate::live::auth::KeyStore;

/// The job API of `broadcaster serve`.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Serve the job API (`POST /v1/jobs` with an input URL, `GET /v1/jobs/{id}`,
    /// `GET /v1/jobs`, the description at `/v1/openapi.json`) on --http-addr. Each request
    /// needs an API key (`broadcaster api-keys add NAME`); jobs are kept in --redis-url.
    #[arg(long, env = "BROADCASTER_API")]
    pub api: bool,

    /// Comma-separated Livepeer presets of a job that names no ladder.
    #[arg(
        long,
        env = "API_PROFILES",
        default_value = "P360p30fps16x9,P720p30fps16x9"
    )]
    pub api_profiles: String,

    /// Largest input a job may fetch, in MiB.
    #[arg(long, env = "API_MAX_INPUT_MB", default_value_t = 2048)]
    pub api_max_input_mb: u64,

    /// Longest time a job's input may take to download, in seconds.
    #[arg(long, env = "API_INPUT_SECS", default_value_t = 600)]
    pub api_input_secs: u64,

    /// Jobs that fetch and transcode at once; the others wait (`queued`).
    #[arg(long, env = "API_JOBS", default_value_t = 2)]
    pub api_jobs: usize,

    /// Also fetch inputs from loopback, private and link-local addresses. Off, a job cannot
    /// make this server read its own network's services (Redis, the broker's API, cloud
    /// metadata).
    #[arg(long, env = "API_ALLOW_PRIVATE_INPUTS")]
    pub api_allow_private_inputs: bool,

    /// This server's URL as apps reach it, for the playback URL in a job's webhook (an
    /// answer to a request uses the request's Host). Unset: http:// and --http-addr.
    #[arg(long, env = "API_PUBLIC_URL")]
    pub api_public_url: Option<String>,

    /// Run jobs at these orchestrators over their HTTP ingest (comma-separated addresses,
    /// as `push --orch-addr`) instead of through --amqp-url: each job chooses among them as
    /// a push does, copies its renditions and playlists into --storage-url (where this
    /// server plays them from) as they are made, and moves to the next orchestrator when
    /// its own stops answering, stalls or fails. Needs --api-orch-key.
    #[arg(
        long,
        env = "API_ORCH_ADDR",
        value_delimiter = ',',
        requires = "api_orch_key"
    )]
    pub api_orch_addr: Vec<String>,

    /// This server's broadcaster key at the --api-orch-addr orchestrators (NAME:SECRET,
    /// from `orchestrator broadcasters add NAME`): one for all, or one per address in the
    /// same order, comma-separated.
    #[arg(long, env = "API_ORCH_KEY", hide_env_values = true)]
    pub api_orch_key: Option<String>,

    /// The most a job pays an orchestrator of --api-orch-addr, in wei per
    /// --api-max-price-pixels-per-unit output pixels: one that advertises more is never
    /// chosen. Unset: no limit.
    #[arg(long, env = "API_MAX_PRICE_PER_UNIT", requires = "api_orch_key")]
    pub api_max_price_per_unit: Option<u64>,

    /// Output pixels per unit of --api-max-price-per-unit.
    #[arg(long, env = "API_MAX_PRICE_PIXELS_PER_UNIT", default_value_t = 1)]
    pub api_max_price_pixels_per_unit: u64,
}

impl ApiArgs {
    /// The API, when `--api` asks for it.
    pub fn build(
        &self,
        http_addr: std::net::SocketAddr,
        redis_url: &str,
        amqp_url: &str,
        storage: &Storage,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Api>> {
        if !self.api {
            return Ok(None);
        }
        let default_ladder = castwork_protocol::profile::parse_profiles(&self.api_profiles)
            .map_err(|e| anyhow::anyhow!("--api-profiles: {e}"))?;
        let orchestrators = match &self.api_orch_key {
            Some(keys) if !self.api_orch_addr.is_empty() => {
                let keys = crate::select::keys_for(
                    "--api-orch-key",
                    keys,
                    self.api_orch_addr.len(),
                    true,
                )?;
                let targets = self
                    .api_orch_addr
                    .iter()
                    .map(|a| crate::select::Target::at(a))
                    .collect();
                Some(Arc::new(super::jobs::Orchestrators {
                    targets,
                    keys,
                    max: castwork_protocol::Price {
                        price_per_unit: self.api_max_price_per_unit.unwrap_or(u64::MAX),
                        pixels_per_unit: self.api_max_price_pixels_per_unit.max(1),
                    },
                }))
            }
            _ => None,
        };
        let redis = castwork_cluster::redis_lazy(redis_url)?;
        let jobs = Jobs::new(redis.clone());
        Ok(Some(Api {
            keys: KeyStore::api(redis),
            jobs: jobs.clone(),
            runner: Runner {
                jobs,
                amqp_url: amqp_url.to_string(),
                orchestrators,
                storage: storage.clone(),
                fetch: FetchLimits {
                    max_bytes: self.api_max_input_mb.max(1) << 20,
                    timeout: Duration::from_secs(self.api_input_secs.max(1)),
                    allow_private: self.api_allow_private_inputs,
                },
                slots: Arc::new(tokio::sync::Semaphore::new(self.api_jobs.max(1))),
                admit_timeout: Duration::from_secs(60),
                shutdown: shutdown.clone(),
                running: Default::default(),
                public_url: self
                    .api_public_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{http_addr}"))
                    .trim_end_matches('/')
                    .to_string(),
            },
            default_ladder,
        }))
    }
}

#[derive(Subcommand, Debug)]
pub enum ApiKeysAction {
    /// Makes an API key for account NAME (replacing NAME's old key) and prints it; it is
    /// shown only this once. Send it as `Authorization: Bearer KEY`.
    Add { name: String },
    /// Removes account NAME's key: its requests are refused from now on.
    Remove { name: String },
    /// Lists the accounts that have a key (keys are stored hashed only).
    List,
}

/// What to do with a key store's keys.
#[derive(Debug, Clone)]
pub enum KeyOp {
    Add(String),
    Remove(String),
    List,
}

impl From<ApiKeysAction> for KeyOp {
    fn from(a: ApiKeysAction) -> KeyOp {
        match a {
            ApiKeysAction::Add { name } => KeyOp::Add(name),
            ApiKeysAction::Remove { name } => KeyOp::Remove(name),
            ApiKeysAction::List => KeyOp::List,
        }
    }
}

/// `broadcaster keys ...` (stream keys) and `broadcaster api-keys ...` (`api`): a key made
/// is printed once, a name without a key is an error.
pub async fn manage_keys(redis_url: &str, api: bool, op: KeyOp) -> anyhow::Result<()> {
    let redis = castwork_cluster::redis_connect(redis_url)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach Redis at {}: {e}",
                castwork_cluster::redact_url(redis_url)
            )
        })?;
    let (store, owner) = if api {
        (KeyStore::api(redis), "account")
    } else {
        (KeyStore::new(redis), "stream")
    };
    match op {
        KeyOp::Add(name) => {
            let (key, replaced) = store.add(&name).await?;
            if replaced {
                eprintln!("the old key of {name} no longer works");
            }
            println!("{key}");
        }
        KeyOp::Remove(name) => {
            if !store.remove(&name).await? {
                anyhow::bail!("{owner} {name} has no key");
            }
            eprintln!("removed the key of {name}");
        }
        KeyOp::List => {
            for n in store.names().await? {
                println!("{n}");
            }
        }
    }
    Ok(())
}
