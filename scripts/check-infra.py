#!/usr/bin/env python3
"""Checks the deployment files in infra/ as far as a machine without a container engine or
a Kubernetes cluster can: every file parses, the compose file has the services and settings
the deployment needs, the Kubernetes manifests are complete and consistent with each other,
the RabbitMQ users' permissions cover what each role uses and nothing of the other roles',
and the Dockerfile installs the same FFmpeg libraries the project's setup script does."""

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
problems = []


def check(cond, message):
    if not cond:
        problems.append(message)


def flag(args, name):
    """The value after `name` in an argument list, or None."""
    return args[args.index(name) + 1] if name in args else None


# RabbitMQ definitions: what every role may touch.
defs = json.loads((INFRA / "rabbitmq" / "definitions.json").read_text())
users = {u["name"]: u for u in defs["users"]}
perms = {p["user"]: p for p in defs["permissions"]}
exchanges = [e["name"] for e in defs["exchanges"]]
queues = [q["name"] for q in defs["queues"]]
topology = exchanges + queues
for b in defs["bindings"]:
    check(b["source"] in exchanges and b["destination"] in queues, f"binding {b} is dangling")
# What each role does on the broker (see Role in cluster/src/broker.rs): the names it
# declares (configure), publishes to or binds queues into (write), and binds from or
# consumes (read); and what it must never be able to do.
PUSH = "castwork.push.0190a7e2-7c1a-7d55-9b2e-3f1c2a9d4e10"
JOBS = [q for q in queues if q.startswith("jobs.")]
NEEDS = {
    "orchestrator": {
        "configure": topology, "write": topology, "read": topology,
    },
    # A worker declares nothing (passive checks need no permission): it publishes reports,
    # heartbeats and its dead letters, and consumes its class's job queues.
    "worker": {
        "configure": [],
        "write": ["castwork.results", "castwork.workers", "castwork.dlx"],
        "read": JOBS,
    },
    "broadcaster": {
        "configure": [PUSH],
        "write": ["castwork.ingest", PUSH],
        "read": ["castwork.events", PUSH],
    },
}
# Queues are named apart from exchanges, so one name pattern never grants both.
check(not set(queues) & set(exchanges) - {"castwork.parked"}, "a queue is named like an exchange")
FORBIDDEN = {
    "orchestrator": {"configure": [PUSH], "write": [PUSH], "read": [PUSH]},
    "worker": {
        # configure would let it delete (or redeclare) the queues it reads.
        "configure": topology + [PUSH],
        # Jobs come from the orchestrator alone (a job a worker must not do goes back
        # through it: see SegmentBounced).
        "write": ["castwork.ingest", "castwork.events", "castwork.jobs"] + JOBS,
        "read": ["castwork.ingest", "orchestrator.ingest", "orchestrator.results",
                 "castwork.results", "castwork.jobs.dead", "castwork.parked", "castwork.beats",
                 PUSH],
    },
    "broadcaster": {
        "configure": JOBS + ["castwork.jobs.dead", "castwork.ingest", "orchestrator.ingest",
                             "castwork.events"],
        "write": ["castwork.jobs", "castwork.results", "castwork.events",
                  "orchestrator.ingest"] + JOBS,
        "read": JOBS + ["castwork.jobs.dead", "castwork.ingest", "orchestrator.ingest"],
    },
}
for role in ["orchestrator", "worker", "broadcaster"]:
    user = f"castwork-{role}"
    check(user in users, f"no RabbitMQ user {user}")
    # The orchestrator reads its queues' unacknowledged messages from the management API,
    # which the `management` tag opens for the vhosts it already has; nothing else.
    allowed = {"", "management"} if role == "orchestrator" else {""}
    check(
        users.get(user, {}).get("tags", "") in allowed,
        f"{user} may have no management tags but {sorted(allowed - {''}) or 'none'}",
    )
    p = perms.get(user)
    check(p is not None and p["vhost"] == "castwork", f"{user} has no permissions on castwork")
    if p is None:
        continue
    for kind in ["configure", "write", "read"]:
        rx = re.compile(p[kind])
        for name in NEEDS[role][kind]:
            check(rx.fullmatch(name), f"{user} cannot {kind} {name}, which it uses")
        for name in FORBIDDEN[role][kind] + ["other.queue"]:
            check(not rx.fullmatch(name), f"{user} may {kind} {name}, which it never uses")
for pol in defs["policies"]:
    check(
        any(re.search(pol["pattern"], q) for q in queues + ["castwork.push.x"]),
        f"policy {pol['name']} matches no queue",
    )

# docker compose.
compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
services = compose["services"]
for name in ["rabbitmq", "redis", "jaeger", "s3", "orchestrator", "worker", "broadcaster"]:
    check(name in services, f"compose has no {name} service")
# Every image comes from a variable whose default is the pinned upstream image.
defaults = {}
for name, svc in services.items():
    image = svc.get("image", "")
    m = re.fullmatch(r"\$\{(CASTWORK_[A-Z0-9_]*IMAGE):-([^}]+)\}", image)
    check(m is not None, f"{name}: image {image!r} is not ${{CASTWORK_..._IMAGE:-default}}")
    default = m.group(2) if m else image
    defaults[name] = default
    check(":" in default and not default.endswith(":latest"), f"{name}: image {default!r} is not pinned")
check(defaults.get("rabbitmq", "").startswith("rabbitmq:3.10."), "RabbitMQ must stay on 3.10")
check("management" in defaults.get("rabbitmq", ""), "RabbitMQ needs its management UI")
redis_cmd = services["redis"].get("command", [])
check(flag(redis_cmd, "--appendonly") == "yes", "Redis must run with AOF on")
check(
    str(services["jaeger"].get("environment", {}).get("COLLECTOR_OTLP_ENABLED")) == "true",
    "Jaeger must accept OTLP",
)
check("4317:4317" in services["jaeger"].get("ports", []), "Jaeger's OTLP port is not published")
worker = services["worker"]
check("ports" not in worker and "container_name" not in worker, "worker cannot be scaled")
grace = int(str(worker.get("stop_grace_period", "10s")).rstrip("s"))
check(
    grace > int(flag(worker["command"], "--drain-secs") or 120),
    "worker stop_grace_period must exceed its --drain-secs",
)
for name in ["orchestrator", "worker", "broadcaster"]:
    env = services[name]["environment"]
    url = env.get("AMQP_URL", "")
    m = re.match(r"amqp://([^:]+):[^@]+@rabbitmq:5672/castwork(\?heartbeat=\d+)?$", url)
    check(m and m.group(1) == f"castwork-{name}", f"{name} must connect as castwork-{name}")
    if name == "worker":
        # Its jobs carry signed object URLs: a worker holds no other service's credentials.
        held = sorted(k for k in env if k.startswith(("STORAGE", "AWS_", "REDIS")))
        check(not held, f"the worker holds credentials it must not: {held}")
    else:
        check(env.get("STORAGE_URL", "").startswith("s3://"), f"{name} must use the S3 store")
    check(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") == "${CASTWORK_OTLP_ENDPOINT-http://jaeger:4317}",
        f"{name}: no tracing",
    )
    check(services[name]["command"][0] == name, f"{name} runs the wrong binary")
check("redis" in services["orchestrator"]["depends_on"], "the orchestrator needs Redis")
check(
    services["orchestrator"]["environment"].get("WORK_URL") == "http://orchestrator:7935",
    "the orchestrator must tell workers where their jobs' objects are (WORK_URL)",
)

# Kubernetes manifests.
docs = []
for f in sorted((INFRA / "k8s").glob("*.yaml")):
    for d in yaml.safe_load_all(f.read_text()):
        if d is None:
            continue
        check({"apiVersion", "kind", "metadata"} <= d.keys(), f"{f.name}: incomplete object")
        check(d["metadata"].get("name"), f"{f.name}: unnamed {d.get('kind')}")
        docs.append(d)
kinds = {(d["kind"], d["metadata"]["name"]): d for d in docs}
secret = kinds[("Secret", "castwork")]["stringData"]
config = kinds[("ConfigMap", "castwork")]["data"]
for role in ["orchestrator", "worker", "broadcaster"]:
    dep = kinds.get(("Deployment", role))
    check(dep is not None, f"no {role} Deployment")
    if dep is None:
        continue
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    check(
        spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items(),
        f"{role}: the selector does not match its pods",
    )
    (c,) = pod["containers"]
    check(c["args"][0] == role, f"{role} runs the wrong binary")
    ports = {p["name"] for p in c.get("ports", [])}
    # Liveness must not follow the broker or Redis, or an outage restarts every pod.
    for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/livez")]:
        get = c.get(probe, {}).get("httpGet", {})
        check(get.get("path") == path and get.get("port") in ports, f"{role}: bad {probe}")
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            check(ref["key"] in secret, f"{role}: secret key {ref['key']} is missing")
    drain = flag(c["args"], "--drain-secs")
    if drain is not None:
        check(
            pod.get("terminationGracePeriodSeconds", 30) > int(drain),
            f"{role}: terminationGracePeriodSeconds must exceed --drain-secs",
        )
worker_pod = kinds[("Deployment", "worker")]["spec"]["template"]["spec"]
(wc,) = worker_pod["containers"]
check("envFrom" not in wc, "worker: envFrom would hand it every role's secrets")
worker_secrets = {
    e["valueFrom"]["secretKeyRef"]["key"]
    for e in wc.get("env", [])
    if "secretKeyRef" in e.get("valueFrom", {})
}
check(worker_secrets == {"WORKER_AMQP_URL"}, f"worker: secrets beyond its broker URL: {worker_secrets}")
check(
    worker_pod.get("terminationGracePeriodSeconds", 30) > 120,
    "worker: terminationGracePeriodSeconds must exceed the drain timeout",
)
scaled = kinds.get(("ScaledObject", "worker"))
check(scaled is not None, "no KEDA ScaledObject for the workers")
if scaled:
    check(scaled["spec"]["scaleTargetRef"]["name"] == "worker", "KEDA scales the wrong target")
    watched = {t["metadata"]["queueName"] for t in scaled["spec"]["triggers"]}
    check(watched == {q for q in queues if q.startswith("jobs.")}, f"KEDA watches {watched}")
    auth = kinds.get(("TriggerAuthentication", "castwork-rabbitmq"))
    check(auth and auth["spec"]["secretTargetRef"][0]["key"] in secret, "KEDA has no credentials")
check(config["STORAGE_URL"].startswith("s3://"), "the ConfigMap must name the S3 store")

# Dockerfile: the libraries the project's own setup installs, and their runtime packages.
dockerfile = (INFRA / "Dockerfile").read_text()
setup = (ROOT / "scripts" / "setup.sh").read_text()
dev = set(re.findall(r"\blib(?:av|sw)[a-z]+-dev\b", setup))
check(dev and dev == set(re.findall(r"\blib(?:av|sw)[a-z]+-dev\b", dockerfile)),
      "the Dockerfile and scripts/setup.sh install different FFmpeg libraries")
for tool in ["clang", "libclang-dev", "pkg-config"]:
    check(tool in setup and tool in dockerfile, f"{tool} is missing from setup or the Dockerfile")
check("cargo build --release --bins" in dockerfile, "the Dockerfile does not build the binaries")
froms = re.findall(r"^FROM (\S+)", dockerfile, re.M)
# Upstream stages are pinned; the others start from a stage of the same file.
stages = set(re.findall(r"^FROM \S+ AS (\S+)", dockerfile, re.M))
check(
    froms and all(f in stages or (":" in f and "latest" not in f) for f in froms),
    "unpinned stages",
)
for pkg in sorted(dev):
    # The runtime library each -dev package depends on must be in the final image.
    out = subprocess.run(["dpkg-query", "-W", "-f=${Depends}", pkg], capture_output=True, text=True)
    if out.returncode != 0:
        continue  # not installed here: nothing to compare with
    runtime = re.findall(r"\b(lib(?:av|sw)[a-z]+\d+)\b", out.stdout)
    check(runtime and runtime[0] in dockerfile, f"{pkg}'s runtime library {runtime} is not in the image")
for binary in ["orchestrator", "worker", "broadcaster"]:
    check(f"target/release/{binary}" in dockerfile, f"the image lacks {binary}")

if problems:
    print("infra check failed:", *problems, sep="\n  ", file=sys.stderr)
    sys.exit(1)
print(f"infra: {len(docs)} Kubernetes objects, {len(services)} compose services, "
      f"{len(users)} RabbitMQ users, the Dockerfile: all consistent")
