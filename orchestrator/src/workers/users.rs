//! A broker user per worker: `orchestrator workers add NAME` makes RabbitMQ user NAME with
//! the worker role's permissions on the orchestrator's vhost, through RabbitMQ's
//! management API, and prints the one URL that worker needs; `workers remove NAME` deletes
//! the user and closes its connections. The orchestrator knows a worker by that user
//! ([`crate::workers::identity`]).

use std::time::Duration;

use anyhow::{anyhow, bail};
use serde_json::json;

use crate::queues::{encode_segment, ManagementApi};

/// The worker role's permissions, as in `infra/rabbitmq/definitions.json` (a test compares
/// them): no `configure` (a worker declares, so deletes, nothing), write only where it
/// reports, beats and dead-letters, read only the job queues.
pub const WORKER_CONFIGURE: &str = "^$";
pub const WORKER_WRITE: &str = r"^castwork\.(results|workers|dlx)$";
pub const WORKER_READ: &str = r"^jobs\.(live|vod)\.[a-z0-9-]+$";

/// RabbitMQ's management API as an administrator, for the orchestrator's vhost.
pub struct BrokerAdmin {
    api: ManagementApi,
    amqp_url: String,
}

impl BrokerAdmin {
    /// `admin_url`: `http://ADMIN:PASSWORD@HOST:15672` of a user with the `administrator`
    /// tag; unset, port 15672 of the AMQP URL's host with the AMQP URL's user.
    pub fn new(amqp_url: &str, admin_url: Option<&str>) -> anyhow::Result<Self> {
        let api = ManagementApi::new(
            amqp_url,
            admin_url,
            "--rabbitmq-admin-url",
            Duration::from_secs(10),
        )
        .map_err(anyhow::Error::msg)?;
        Ok(BrokerAdmin {
            api,
            amqp_url: amqp_url.to_string(),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(u16, String)> {
        let (code, text) = self
            .api
            .send(method, &format!("api/{path}"), body.as_ref())
            .await
            .map_err(anyhow::Error::msg)?;
        if code == 401 {
            bail!(
                "RabbitMQ's management API refused user {}: give --rabbitmq-admin-url \
                 http://ADMIN:PASSWORD@HOST:15672 of a user with the administrator tag",
                self.api.user
            );
        }
        Ok((code, text))
    }

    /// Makes broker user `name` with the worker role's permissions and a new random
    /// password, and returns the worker's AMQP URL. An existing user is left alone.
    pub async fn add_worker(&self, name: &str) -> anyhow::Result<String> {
        if !castwork_protocol::valid_worker_name(name) {
            bail!("worker name {name:?}: use 1-128 letters, digits, . _ - @ :");
        }
        let user = encode_segment(name);
        let (code, _) = self
            .call(reqwest::Method::GET, &format!("users/{user}"), None)
            .await?;
        if code == 200 {
            bail!(
                "broker user {name} exists already: pick another name, or `orchestrator workers \
                 remove {name}` first"
            );
        }
        let password = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let put = |path: String, body: serde_json::Value| async move {
            let (code, text) = self.call(reqwest::Method::PUT, &path, Some(body)).await?;
            if !(200..300).contains(&code) {
                return Err(anyhow!(
                    "RabbitMQ's management API answered {code} to {path}: {text}"
                ));
            }
            Ok(())
        };
        put(
            format!("users/{user}"),
            json!({"password": password, "tags": ""}),
        )
        .await?;
        put(
            format!("permissions/{}/{user}", self.api.vhost),
            json!({"configure": WORKER_CONFIGURE, "write": WORKER_WRITE, "read": WORKER_READ}),
        )
        .await?;
        worker_url(&self.amqp_url, name, &password)
    }

    /// Deletes broker user `name` and closes its connections: false when there was none.
    pub async fn remove_worker(&self, name: &str) -> anyhow::Result<bool> {
        let user = encode_segment(name);
        let (code, text) = self
            .call(reqwest::Method::DELETE, &format!("users/{user}"), None)
            .await?;
        match code {
            404 => return Ok(false),
            200..=299 => {}
            _ => bail!("RabbitMQ's management API answered {code}: {text}"),
        }
        // A deleted user's open connections stay open until closed.
        let (_, list) = self
            .call(reqwest::Method::GET, "connections?columns=name,user", None)
            .await?;
        let list: serde_json::Value = serde_json::from_str(&list).unwrap_or_default();
        for c in list.as_array().into_iter().flatten() {
            if c["user"] == name {
                if let Some(conn) = c["name"].as_str() {
                    let _ = self
                        .call(
                            reqwest::Method::DELETE,
                            &format!("connections/{}", encode_segment(conn)),
                            None,
                        )
                        .await;
                }
            }
        }
        Ok(true)
    }
}

/// `amqp_url` (each node's, for a list) with `user:password` in place of its credentials.
fn worker_url(amqp_url: &str, user: &str, password: &str) -> anyhow::Result<String> {
    if amqp_url.contains(',') {
        return castwork_cluster::broker::broker_urls(amqp_url)
            .into_iter()
            .map(|node| worker_url(node, user, password))
            .collect::<anyhow::Result<Vec<_>>>()
            .map(|urls| urls.join(","));
    }
    let (scheme, rest) = amqp_url.split_once("://").ok_or_else(|| {
        anyhow!(
            "not an AMQP URL: {}",
            castwork_cluster::redact_url(amqp_url)
        )
    })?;
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    Ok(format!(
        "{scheme}://{}:{}@{host}",
        encode_segment(user),
        encode_segment(password)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_url_is_the_orchestrators_with_the_workers_credentials() {
        assert_eq!(
            worker_url(
                "amqps://castwork-orchestrator:s%40cret@broker:5671/castwork",
                "box-7",
                "p"
            )
            .unwrap(),
            "amqps://box-7:p@broker:5671/castwork"
        );
        assert_eq!(
            worker_url("amqp://broker/%2f", "w@x", "p").unwrap(),
            "amqp://w%40x:p@broker/%2f"
        );
        assert_eq!(
            worker_url("amqp://o:s@n1/v,amqp://o:s@n2/v", "box-7", "p").unwrap(),
            "amqp://box-7:p@n1/v,amqp://box-7:p@n2/v"
        );
    }

    #[test]
    fn the_worker_permissions_are_the_deployments() {
        let defs: serde_json::Value =
            serde_json::from_str(include_str!("../../../infra/rabbitmq/definitions.json")).unwrap();
        let p = defs["permissions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["user"] == "castwork-worker")
            .unwrap();
        assert_eq!(p["configure"], WORKER_CONFIGURE);
        assert_eq!(p["write"], WORKER_WRITE);
        assert_eq!(p["read"], WORKER_READ);
    }
}
