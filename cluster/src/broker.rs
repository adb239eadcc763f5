//! RabbitMQ: one connection per process, the topology every role declares identically, and
//! publishing with publisher confirms.

use castwork_protocol::{
    job_queue, StreamMode, BEATS_QUEUE, BEAT_KEY, BEAT_TTL_MS, DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE, EVENTS_EXCHANGE, INGEST_EXCHANGE, INGEST_QUEUE, JOBS_EXCHANGE,
    LEGACY_QUEUES, PARKED_QUEUE, RESULTS_EXCHANGE, RESULTS_QUEUE, WORKERS_EXCHANGE,
};
use lapin::{
    options::{
        BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind,
};

/// A push's event queue is deleted by the broker after this long unread (one left behind by
/// a crash goes on its own).
pub const EVENT_QUEUE_EXPIRES_MS: i64 = 3_600_000;

/// Declares `queue`, one push's durable event queue, bound to `stream`'s events.
/// Replicated like every other queue: a classic queue lives on one node, and in a broker
/// cluster the push would lose its events with that node.
pub async fn declare_event_queue(
    ch: &Channel,
    queue: &str,
    stream: &str,
) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    args.insert(
        "x-expires".into(),
        AMQPValue::LongLongInt(EVENT_QUEUE_EXPIRES_MS),
    );
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await?;
    ch.queue_bind(
        queue.into(),
        EVENTS_EXCHANGE.into(),
        castwork_protocol::event_routing_key(stream).into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// Routing key of ingest messages and worker reports.
pub const INGEST_KEY: &str = "ingest";
pub const RESULTS_KEY: &str = "result";

/// Capability classes, each with a live and an on-demand job queue: `cpu` (software decode,
/// scale and libx264), `nvdec` (NVIDIA decode and CUDA scaling, libx264: cards without
/// encoders, such as H100/H200 and A100) and `nvenc` (all on an NVIDIA card, `h264_nvenc`).
pub const CLASSES: &[&str] = &["cpu", "nvdec", "nvenc"];

/// The broker's own redelivery backstop. The orchestrator decides when a segment is poison
/// from worker reports, and consumers dead-letter a message after
/// [`crate::consume::MAX_DELIVERIES`], long before this; crashes also count here.
pub const DELIVERY_LIMIT: i64 = 50;

/// Dead letters nobody could record that the parked queue keeps (the oldest go first).
pub const PARKED_MAX: i64 = 10_000;

/// Heartbeats the beats queue keeps while no orchestrator reads it (the oldest go first).
pub const BEATS_MAX: i64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused the message (nack) on {exchange}/{routing_key}")]
    Nacked {
        exchange: String,
        routing_key: String,
    },
    #[error(
        "no queue takes messages sent to {exchange}/{routing_key} (the broker returned it): \
         the topology is missing a queue or binding"
    )]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    #[error("no broker node answered: {0}")]
    NoNode(String),
    #[error("{0}")]
    BadUrls(String),
}

/// How many messages wait in one queue, how many are out with consumers, and how many
/// consumers it has.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QueueDepth {
    pub queue: String,
    /// Messages ready for a consumer (what the broker counts in a passive declare).
    pub messages: u32,
    /// Messages delivered to a consumer and not yet acknowledged, from RabbitMQ's management
    /// API (AMQP itself does not tell); `None` when that could not be read.
    #[serde(default)]
    pub unacked: Option<u32>,
    pub consumers: u32,
}

/// Every queue the topology declares, in the order a pipeline uses them.
pub fn known_queues() -> Vec<String> {
    let mut queues = vec![INGEST_QUEUE.to_string()];
    for class in CLASSES {
        for mode in [StreamMode::Live, StreamMode::Vod] {
            queues.push(job_queue(mode, class));
        }
    }
    queues.push(RESULTS_QUEUE.to_string());
    queues.push(BEATS_QUEUE.to_string());
    queues.push(DEAD_LETTER_QUEUE.to_string());
    queues.push(PARKED_QUEUE.to_string());
    queues
}

/// A connection with a confirming publisher channel.
pub struct Broker {
    connection: Connection,
    publisher: Channel,
    /// The user this connection authenticated as: every message it publishes carries it
    /// in `user-id`, which the broker checks, so a consumer knows who sent it.
    user: String,
}

/// The certificate authority `amqps://` connections trust besides the system's roots
/// (`--amqp-ca-file`), once [`trust_ca_file`] has read it.
static CA_CHAIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Makes every later broker connection of this process trust the CA in `path` (PEM).
pub fn trust_ca_file(path: Option<&std::path::Path>) -> Result<(), String> {
    let Some(path) = path else { return Ok(()) };
    let _ = CA_CHAIN.set(crate::read_ca_file(path, "--amqp-ca-file")?);
    Ok(())
}

/// The nodes of one broker cluster in an `--amqp-url`: one URL, or several separated by
/// commas (`amqp://u:p@rabbit-1/vh,amqp://u:p@rabbit-2/vh`). Each is a whole URL, so the
/// nodes may differ in port or TLS; a comma inside a password must be written `%2C`.
pub fn broker_urls(list: &str) -> Vec<&str> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// Checks that every node URL in `list` reads as an AMQP URL and that they all log in as
/// the same user to the same vhost (one cluster, one identity).
fn check_broker_urls(list: &str) -> Result<(), String> {
    let mut seen: Option<(String, String)> = None;
    let urls = broker_urls(list);
    if urls.is_empty() {
        return Err("no broker URL given".into());
    }
    for url in urls {
        let u: lapin::uri::AMQPUri = url
            .parse()
            .map_err(|e| format!("{} is not an AMQP URL: {e}", crate::redact_url(url)))?;
        let this = (u.authority.userinfo.username, u.vhost);
        match &seen {
            Some(first) if *first != this => {
                return Err(format!(
                    "the broker URLs must share one user and vhost (nodes of one cluster): \
                     {} differs from the first",
                    crate::redact_url(url)
                ))
            }
            _ => seen = Some(this),
        }
    }
    Ok(())
}

/// The user an AMQP URL (or the first of a list of nodes) logs in as (`guest` when it
/// names none).
pub fn url_user(url: &str) -> Result<String, String> {
    let first = broker_urls(url).first().copied().unwrap_or(url);
    first
        .parse::<lapin::uri::AMQPUri>()
        .map(|u| u.authority.userinfo.username)
        .map_err(|e| format!("not an AMQP URL: {e}"))
}

/// How long one node gets to accept a connection before the next is tried (a node that
/// was killed may leave its address silent rather than refusing).
const NODE_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Which node of a list a connection of this process tries first: each connect starts one
/// further on, so a process spreads its connections over the nodes and a reconnect after a
/// node failed starts elsewhere.
static NEXT_NODE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Connects to one node.
async fn connect_node(url: &str, props: ConnectionProperties) -> Result<Connection, lapin::Error> {
    match CA_CHAIN.get() {
        None => Connection::connect(url, props).await,
        Some(pem) => {
            lapin::DefaultConnectionBuilder::new()?
                .with_uri_str(url.to_string())
                .with_properties(props)
                .with_tls_config(lapin::tcp::OwnedTLSConfig {
                    identity: None,
                    cert_chain: Some(pem.clone()),
                })
                .connect()
                .await
        }
    }
}

/// Connects to the first node of `list` that answers, starting at [`NEXT_NODE`].
async fn connect_any(list: &str, name: &str) -> Result<Connection, BrokerError> {
    let urls = broker_urls(list);
    if urls.len() <= 1 {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        return Ok(connect_node(urls.first().copied().unwrap_or(list), props).await?);
    }
    check_broker_urls(list).map_err(BrokerError::BadUrls)?;
    let start = NEXT_NODE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut failures = Vec::new();
    for i in 0..urls.len() {
        let url = urls[(start + i) % urls.len()];
        let props = ConnectionProperties::default().with_connection_name(name.into());
        match tokio::time::timeout(NODE_CONNECT_TIMEOUT, connect_node(url, props)).await {
            Ok(Ok(c)) => {
                if i > 0 {
                    tracing::info!(
                        node = crate::redact_url(url),
                        "connected to another broker node"
                    );
                }
                return Ok(c);
            }
            Ok(Err(e)) => failures.push(format!("{}: {e}", crate::redact_url(url))),
            Err(_) => failures.push(format!(
                "{}: no answer in {}s",
                crate::redact_url(url),
                NODE_CONNECT_TIMEOUT.as_secs()
            )),
        }
    }
    Err(BrokerError::NoNode(failures.join("; ")))
}

/// Where a queue's messages go once past the broker's delivery limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overflow {
    /// Nowhere: the queue has no limit (the dead letters' last stop).
    Keep,
    /// To this dead-letter exchange.
    DeadLetter(&'static str),
}

/// The queue arguments of every queue in the topology.
fn queue_args(queue: &str) -> FieldTable {
    if queue == BEATS_QUEUE {
        // Beats are worth nothing once stale: they expire unread, and are never
        // dead-lettered.
        let mut args = quorum_args(Overflow::Keep);
        args.insert(
            ShortString::from("x-message-ttl"),
            AMQPValue::LongLongInt(BEAT_TTL_MS as i64),
        );
        args.insert(
            ShortString::from("x-max-length"),
            AMQPValue::LongLongInt(BEATS_MAX),
        );
        args
    } else if queue == PARKED_QUEUE {
        let mut args = quorum_args(Overflow::Keep);
        args.insert(
            ShortString::from("x-max-length"),
            AMQPValue::LongLongInt(PARKED_MAX),
        );
        args
    } else if queue == DEAD_LETTER_QUEUE {
        quorum_args(Overflow::DeadLetter(PARKED_QUEUE))
    } else {
        quorum_args(Overflow::DeadLetter(DEAD_LETTER_EXCHANGE))
    }
}

fn quorum_args(overflow: Overflow) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    if let Overflow::DeadLetter(exchange) = overflow {
        args.insert(
            ShortString::from("x-delivery-limit"),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        args.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from(exchange)),
        );
        args.insert(
            ShortString::from("x-dead-letter-strategy"),
            AMQPValue::LongString(LongString::from("at-least-once")),
        );
        args.insert(
            ShortString::from("x-overflow"),
            AMQPValue::LongString(LongString::from("reject-publish")),
        );
    }
    args
}

/// Declares and binds `queue`. A queue that an older Castwork declared with other
/// arguments is kept as it is (the broker refuses to change them; the consumers' own
/// delivery bound still holds), with a warning that says how to get the new ones.
async fn declare_queue(
    connection: &Connection,
    ch: &mut Channel,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<(), lapin::Error> {
    let declared = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            queue_args(queue),
        )
        .await;
    if let Err(e) = declared {
        let precondition = matches!(
            e.kind(),
            lapin::ErrorKind::ProtocolError(p) if p.get_id() == 406
        );
        if !precondition {
            return Err(e);
        }
        // The refusal closed the channel: go on with a new one.
        *ch = connection.create_channel().await?;
        passive_declare(ch, queue).await?;
        tracing::warn!(
            queue,
            "the queue exists with the arguments of an older Castwork, kept as they are; to \
             get the broker's delivery limit on it, delete it while it is empty \
             (rabbitmqctl delete_queue {queue}) and restart"
        );
    }
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// What a process does on the broker, and so which part of the topology it declares and
/// which permissions its RabbitMQ user needs (`infra/rabbitmq/definitions.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Consumes ingest, results and dead letters; publishes jobs and events.
    Orchestrator,
    /// Consumes jobs; publishes results.
    Worker,
    /// Publishes ingest messages; reads its streams' events.
    Broadcaster,
    /// Everything (tools and benchmarks).
    All,
}

/// Makes sure the topology `role` uses is there. The orchestrator owns the topology: it
/// declares every exchange and queue, with the same arguments from every replica, so a
/// re-declare after a reconnect never fails. A worker or a broadcaster only checks (passive
/// declares, which need no permission) that the exchanges it publishes to and the queues it
/// consumes exist, so its user needs no `configure` permission at all, and so can neither
/// delete a queue nor redeclare one. Where something is missing (no orchestrator ran yet) it
/// declares the whole topology if its user may, as a single-user setup allows; otherwise it
/// fails with an error that says to start the orchestrator first.
pub async fn declare_topology(connection: &Connection, role: Role) -> Result<(), lapin::Error> {
    if matches!(role, Role::Orchestrator | Role::All) {
        return declare_all(connection).await;
    }
    let exchanges: &[&str] = match role {
        Role::Worker => &[RESULTS_EXCHANGE, WORKERS_EXCHANGE, DEAD_LETTER_EXCHANGE],
        _ => &[INGEST_EXCHANGE, EVENTS_EXCHANGE],
    };
    let queues: Vec<String> = match role {
        Role::Worker => CLASSES
            .iter()
            .flat_map(|c| {
                [
                    job_queue(StreamMode::Live, c),
                    job_queue(StreamMode::Vod, c),
                ]
            })
            .collect(),
        _ => Vec::new(),
    };
    let ch = connection.create_channel().await?;
    let mut missing = None;
    for name in exchanges {
        if let Err(e) = passive_exchange(&ch, name).await {
            missing = Some((format!("exchange {name}"), e));
            break;
        }
    }
    if missing.is_none() {
        for name in &queues {
            if let Err(e) = passive_declare(&ch, name).await {
                missing = Some((format!("queue {name}"), e));
                break;
            }
        }
    }
    let Some((what, e)) = missing else {
        let _ = ch.close(200, "checked".into()).await;
        return Ok(());
    };
    if reply_code(&e) != Some(404) {
        return Err(e);
    }
    match declare_all(connection).await {
        Ok(()) => Ok(()),
        Err(declare) if reply_code(&declare) == Some(403) => {
            tracing::error!(
                missing = what,
                "the broker has no {what} yet, and this user may not declare it (only the \
                 orchestrator's may): start the orchestrator first"
            );
            Err(e)
        }
        Err(declare) => Err(declare),
    }
}

/// The AMQP reply code of a channel or connection closed by the broker (404 NOT_FOUND,
/// 403 ACCESS_REFUSED, 406 PRECONDITION_FAILED), if that is what `e` is.
fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => Some(p.get_id()),
        _ => None,
    }
}

/// Checks that exchange `name` exists.
async fn passive_exchange(ch: &Channel, name: &str) -> Result<(), lapin::Error> {
    ch.exchange_declare(
        name.into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

/// Declares every exchange and queue of the topology, as the orchestrator does.
async fn declare_all(connection: &Connection) -> Result<(), lapin::Error> {
    let mut ch = connection.create_channel().await?;
    let c = connection;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for (name, kind) in [
        (INGEST_EXCHANGE, ExchangeKind::Direct),
        (JOBS_EXCHANGE, ExchangeKind::Direct),
        (RESULTS_EXCHANGE, ExchangeKind::Direct),
        (WORKERS_EXCHANGE, ExchangeKind::Direct),
        (EVENTS_EXCHANGE, ExchangeKind::Topic),
        (DEAD_LETTER_EXCHANGE, ExchangeKind::Fanout),
        (PARKED_QUEUE, ExchangeKind::Fanout),
    ] {
        ch.exchange_declare(name.into(), kind, durable, FieldTable::default())
            .await?;
    }
    declare_queue(c, &mut ch, INGEST_QUEUE, INGEST_EXCHANGE, INGEST_KEY).await?;
    declare_queue(c, &mut ch, RESULTS_QUEUE, RESULTS_EXCHANGE, RESULTS_KEY).await?;
    declare_queue(c, &mut ch, BEATS_QUEUE, WORKERS_EXCHANGE, BEAT_KEY).await?;
    declare_queue(c, &mut ch, DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE, "").await?;
    declare_queue(c, &mut ch, PARKED_QUEUE, PARKED_QUEUE, "").await?;
    for class in CLASSES {
        for mode in [StreamMode::Vod, StreamMode::Live] {
            let q = job_queue(mode, class);
            declare_queue(c, &mut ch, &q, JOBS_EXCHANGE, &q).await?;
        }
    }
    let _ = ch.close(200, "declared".into()).await;
    Ok(())
}

/// Retires the queues an older Castwork named like their exchanges ([`LEGACY_QUEUES`]):
/// each is unbound, so nothing new reaches it, and deleted once empty and unused; one that
/// still holds messages (or that an older orchestrator still reads) is returned, with the
/// queue that replaces it, for the caller to drain with the same handler. `present`, when
/// known, names the vhost's queues: a legacy name not among them is not looked for.
pub async fn retire_legacy_queues(
    connection: &Connection,
    present: Option<&[String]>,
) -> Result<Vec<(&'static str, &'static str)>, lapin::Error> {
    let mut draining = Vec::new();
    for (legacy, current) in LEGACY_QUEUES {
        if present.is_some_and(|names| !names.iter().any(|n| n == legacy)) {
            continue;
        }
        let ch = connection.create_channel().await?;
        let q = match passive_declare(&ch, legacy).await {
            Ok(q) => q,
            Err(e) if reply_code(&e) == Some(404) => continue,
            Err(e) => return Err(e),
        };
        let (exchange, key) = if current == INGEST_QUEUE {
            (INGEST_EXCHANGE, INGEST_KEY)
        } else {
            (RESULTS_EXCHANGE, RESULTS_KEY)
        };
        ch.queue_unbind(
            legacy.into(),
            exchange.into(),
            key.into(),
            FieldTable::default(),
        )
        .await?;
        if q.message_count() == 0 && q.consumer_count() == 0 {
            ch.queue_delete(
                legacy.into(),
                lapin::options::QueueDeleteOptions {
                    if_empty: true,
                    if_unused: true,
                    ..Default::default()
                },
            )
            .await?;
            tracing::info!(
                legacy,
                current,
                "deleted the empty queue an older Castwork used"
            );
        } else {
            tracing::warn!(
                legacy,
                current,
                messages = q.message_count(),
                consumers = q.consumer_count(),
                "an older Castwork's queue still holds messages or has readers: unbound, \
                 drained here, deleted at a later start once empty"
            );
            draining.push((legacy, current));
        }
        let _ = ch.close(200, "retired".into()).await;
    }
    Ok(draining)
}

impl Broker {
    /// Connects to `url` (or to the first node that answers of a comma-separated list, see
    /// [`broker_urls`]), opens a confirming publisher channel and declares the role's
    /// topology.
    pub async fn connect(url: &str, name: &str, role: Role) -> Result<Self, BrokerError> {
        let user = url_user(url).unwrap_or_else(|_| "guest".into());
        let connection = connect_any(url, name).await?;
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        declare_topology(&connection, role).await?;
        Ok(Broker {
            connection,
            publisher,
            user,
        })
    }

    /// See [`retire_legacy_queues`].
    pub async fn retire_legacy_queues(
        &self,
        present: Option<&[String]>,
    ) -> Result<Vec<(&'static str, &'static str)>, BrokerError> {
        Ok(retire_legacy_queues(&self.connection, present).await?)
    }

    /// The messages ready for a consumer in `queue` now (a passive declare: exact, unlike
    /// the management API's sampled counts).
    pub async fn ready(&self, queue: &str) -> Result<u32, BrokerError> {
        let ch = self.connection.create_channel().await?;
        let q = passive_declare(&ch, queue).await?;
        let _ = ch.close(200, "read".into()).await;
        Ok(q.message_count())
    }

    /// The user this connection logged in as (what consumers see in `user-id`).
    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn is_connected(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }

    /// Publishes a persistent JSON message and waits for the broker's confirm (an error
    /// when no queue takes it).
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: Option<FieldTable>,
    ) -> Result<(), BrokerError> {
        self.send(exchange, routing_key, body, headers, None)
            .await?
            .wait()
            .await
    }

    /// Sends a persistent JSON message without waiting for its confirm, so the caller can
    /// do other work meanwhile; messages sent on this broker keep their order. With
    /// `ttl_ms`, the broker dead-letters the message (reason `expired`) if no consumer took
    /// it in time. Every message but an event is mandatory, and every one carries this
    /// connection's user in `user-id` (see [`sender`]).
    pub async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: Option<FieldTable>,
        ttl_ms: Option<u64>,
    ) -> Result<Confirm, BrokerError> {
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_user_id(self.user.as_str().into());
        if let Some(h) = headers {
            props = props.with_headers(h);
        }
        if let Some(ttl) = ttl_ms {
            props = props.with_expiration(ttl.max(1).to_string().into());
        }
        let confirm = self
            .publisher
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    // Events are news for whoever listens: none listening is no error. An
                    // answer to a direct reply-to is never routed to a queue, so the broker
                    // would return a mandatory one even as it delivers it.
                    mandatory: exchange != EVENTS_EXCHANGE
                        && !routing_key.starts_with("amq.rabbitmq.reply-to"),
                    ..Default::default()
                },
                body,
                props,
            )
            .await?;
        Ok(Confirm {
            confirm,
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
        })
    }

    /// Opens a channel with `prefetch` unacked deliveries and consumes `queue` with manual acks.
    pub async fn consume(
        &self,
        queue: &str,
        tag: &str,
        prefetch: u16,
    ) -> Result<(Channel, Consumer), BrokerError> {
        let ch = self.connection.create_channel().await?;
        ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let consumer = ch
            .basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((ch, consumer))
    }

    /// The ready messages and consumers of every queue of the topology (a passive declare
    /// of each, on a channel of its own); `unacked` is left unknown (see
    /// `castwork_orchestrator::queues` for where it comes from).
    pub async fn queue_depths(&self) -> Result<Vec<QueueDepth>, BrokerError> {
        let ch = self.connection.create_channel().await?;
        let mut depths = Vec::new();
        for queue in known_queues() {
            let q = passive_declare(&ch, &queue).await?;
            depths.push(QueueDepth {
                queue,
                messages: q.message_count(),
                unacked: None,
                consumers: q.consumer_count(),
            });
        }
        let _ = ch.close(200, "done".into()).await;
        Ok(depths)
    }

    /// Moves up to `max` ready jobs from job queue `from` to job queue `to`, each published
    /// again (same body, headers and expiry) and confirmed before its original is acked: a
    /// failure part way leaves the rest where they were, never loses one (a crash between
    /// the two steps can leave a job in both, which the orchestrator's keyed job ids and
    /// per-attempt state make harmless).
    pub async fn move_ready(&self, from: &str, to: &str, max: usize) -> Result<usize, BrokerError> {
        let ch = self.connection.create_channel().await?;
        let mut moved = 0;
        while moved < max {
            let Some(got) = ch
                .basic_get(
                    from.into(),
                    lapin::options::BasicGetOptions { no_ack: false },
                )
                .await?
            else {
                break;
            };
            let delivery = got.delivery;
            let ttl = delivery
                .properties
                .expiration()
                .as_ref()
                .and_then(|e| e.as_str().parse::<u64>().ok());
            // Ours (trace context, bounces), not the broker's: the delivery count starts
            // again in the new queue.
            let headers = delivery.properties.headers().as_ref().map(|h| {
                let mut kept = FieldTable::default();
                for (k, v) in h.inner() {
                    let k_ = k.as_str();
                    if k_.starts_with("x-castwork") || !k_.starts_with("x-") {
                        kept.insert(k.clone(), v.clone());
                    }
                }
                kept
            });
            self.send(JOBS_EXCHANGE, to, &delivery.data, headers, ttl)
                .await?
                .wait()
                .await?;
            delivery
                .acker
                .ack(lapin::options::BasicAckOptions::default())
                .await?;
            moved += 1;
        }
        let _ = ch.close(200, "moved".into()).await;
        Ok(moved)
    }

    /// A new channel on this connection (e.g. for a temporary event queue).
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        Ok(self.connection.create_channel().await?)
    }

    /// Closes the connection politely.
    pub async fn close(&self) {
        let _ = self.connection.close(200, "bye".into()).await;
    }
}

/// Gives a delivery back to its queue, for this or another consumer. (Each time counts
/// toward a quorum queue's delivery limit.)
pub async fn requeue(delivery: &lapin::message::Delivery) {
    let _ = delivery
        .acker
        .nack(lapin::options::BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await;
}

/// The broker's answer to a message [`Broker::send`] sent.
pub struct Confirm {
    confirm: lapin::PublisherConfirm,
    exchange: String,
    routing_key: String,
}

impl Confirm {
    /// Waits until the broker has the message; a nack, or a message no queue took (the
    /// broker returns a mandatory one), is an error.
    pub async fn wait(self) -> Result<(), BrokerError> {
        match self.confirm.await? {
            lapin::Confirmation::Nack(_) => Err(BrokerError::Nacked {
                exchange: self.exchange,
                routing_key: self.routing_key,
            }),
            lapin::Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable {
                exchange: self.exchange,
                routing_key: self.routing_key,
            }),
            _ => Ok(()),
        }
    }
}

/// Who published a delivery: the `user-id` the broker checked against the publisher's
/// login (RabbitMQ refuses a message whose `user-id` is not its sender's), or `None` when
/// the publisher set none.
pub fn sender(properties: &BasicProperties) -> Option<String> {
    properties
        .user_id()
        .as_ref()
        .map(|u| u.as_str().to_string())
        .filter(|u| !u.is_empty())
}

/// Declares `queue` passively: its state, without changing (or needing to match) its
/// arguments; an error when it does not exist.
async fn passive_declare(ch: &Channel, queue: &str) -> Result<lapin::Queue, lapin::Error> {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_list_names_the_nodes_of_one_cluster() {
        let list = "amqp://w:a@n1:5672/v, amqps://w:a@n2:5671/v,";
        assert_eq!(
            broker_urls(list),
            ["amqp://w:a@n1:5672/v", "amqps://w:a@n2:5671/v"]
        );
        assert_eq!(check_broker_urls(list), Ok(()));
        assert_eq!(url_user(list).as_deref(), Ok("w"));
        let other_user = check_broker_urls("amqp://w:a@n1/v,amqp://x:a@n2/v").unwrap_err();
        assert!(other_user.contains("x:***@n2"), "{other_user}");
        assert!(check_broker_urls("amqp://w:a@n1/v,amqp://w:a@n2/other").is_err());
        assert!(check_broker_urls("amqp://w:a@n1/v,http://n2").is_err());
        assert!(check_broker_urls(",").is_err());
    }

    fn json_args(t: &FieldTable) -> serde_json::Map<String, serde_json::Value> {
        t.inner()
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    AMQPValue::LongString(s) => serde_json::Value::from(s.to_string()),
                    AMQPValue::LongLongInt(n) => serde_json::Value::from(*n),
                    other => panic!("unexpected argument {other:?}"),
                };
                (k.to_string(), v)
            })
            .collect()
    }

    /// The RabbitMQ definitions a deployment loads (infra/rabbitmq/definitions.json) declare
    /// the same queues with the same arguments as the services, so a service's own declare
    /// never fails with PRECONDITION_FAILED, and its policies agree with those arguments.
    #[test]
    fn deployment_definitions_match_the_topology_the_services_declare() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../infra/rabbitmq/definitions.json"
        );
        let defs: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let queues = defs["queues"].as_array().unwrap();
        let mut names: Vec<String> = queues
            .iter()
            .map(|q| q["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        let mut known = known_queues();
        known.sort();
        assert_eq!(names, known);
        for q in queues {
            let name = q["name"].as_str().unwrap();
            assert_eq!(q["durable"], true, "{name}");
            assert_eq!(
                q["arguments"].as_object().unwrap(),
                &json_args(&queue_args(name)),
                "{name}"
            );
        }
        let policy = defs["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "castwork-jobs")
            .unwrap();
        assert_eq!(policy["definition"]["delivery-limit"], DELIVERY_LIMIT);
        assert_eq!(
            policy["definition"]["dead-letter-exchange"],
            DEAD_LETTER_EXCHANGE
        );
    }
}
