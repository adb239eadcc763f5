#!/usr/bin/env python3
"""Checks the deployment files in infra/ as far as a machine without a container engine or
a Kubernetes cluster can: every file parses, the compose files have the services, networks
and settings the deployment needs, the Kubernetes manifests validate against the API's
schemas (and KEDA's) with unknown fields refused, are consistent with each other and hand
each role only its own secrets,
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
# The event queue the orchestrator keeps for a push over HTTP (its /ingest/ API).
HTTP_PUSH = "castwork.http.0190a7e2-7c1a-7d55-9b2e-3f1c2a9d4e10"
JOBS = [q for q in queues if q.startswith("jobs.")]
NEEDS = {
    "orchestrator": {
        "configure": topology + [HTTP_PUSH], "write": topology + [HTTP_PUSH],
        "read": topology + [HTTP_PUSH],
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
                 PUSH, HTTP_PUSH],
    },
    "broadcaster": {
        "configure": JOBS + ["castwork.jobs.dead", "castwork.ingest", "orchestrator.ingest",
                             "castwork.events"],
        "write": ["castwork.jobs", "castwork.results", "castwork.events",
                  "orchestrator.ingest"] + JOBS,
        "read": JOBS + ["castwork.jobs.dead", "castwork.ingest", "orchestrator.ingest",
                        HTTP_PUSH],
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
# Current upstream lines for users: RabbitMQ 4 (the tests run Debian's 3.10; every queue
# sets its own arguments, so the two behave alike), Jaeger v2.
check(defaults.get("rabbitmq", "").startswith("rabbitmq:4."), "RabbitMQ's default must be 4.x")
check("management" in defaults.get("rabbitmq", ""), "RabbitMQ needs its management UI")
redis_cmd = services["redis"].get("command", [])
check(flag(redis_cmd, "--appendonly") == "yes", "Redis must run with AOF on")
check(defaults.get("jaeger", "").startswith("jaegertracing/jaeger:2."), "Jaeger's default must be v2")
check(
    "--set=receivers.otlp.protocols.grpc.endpoint=0.0.0.0:4317" in services["jaeger"].get("command", []),
    "Jaeger must accept OTLP from other containers",
)
check("4317:4317" in services["jaeger"].get("ports", []), "Jaeger's OTLP port is not published")
# Networks: a worker reaches the broker, the orchestrator (its jobs' signed object URLs) and
# the trace collector, and nothing that holds state or credentials.
nets = {name: set(svc.get("networks", [])) for name, svc in services.items()}
check(nets["worker"] == {"transcode"}, f"worker networks {nets['worker']}: want transcode only")
for name in ["rabbitmq", "orchestrator", "jaeger"]:
    check("transcode" in nets[name], f"{name} must be on the workers' network")
for name in ["redis", "s3", "broadcaster"]:
    check(nets[name] and "transcode" not in nets[name], f"{name} must not be on the workers' network")
check(services["rabbitmq"].get("hostname") == "rabbitmq", "RabbitMQ needs a fixed node name")
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

# The three-node broker (docker-compose.cluster.yml, on top of docker-compose.yml).
cluster = yaml.safe_load((INFRA / "docker-compose.cluster.yml").read_text())["services"]
nodes = ["rabbitmq", "rabbitmq-2", "rabbitmq-3"]
check(all(n in cluster for n in nodes), "the cluster file needs three RabbitMQ nodes")


def conf(node):
    """The rabbitmq.conf a node of the cluster file mounts, as key -> value."""
    mount = next(v for v in cluster[node]["volumes"] if v.endswith(":/etc/rabbitmq/rabbitmq.conf:ro"))
    text = (INFRA / mount.split(":")[0]).read_text()
    return dict(
        (k.strip(), v.strip())
        for k, v in (l.split("=", 1) for l in text.splitlines() if "=" in l and not l.startswith("#"))
    )


for n in nodes:
    if n not in cluster:
        continue
    c = conf(n)
    host = cluster[n].get("hostname", services["rabbitmq"].get("hostname"))
    check(host == n, f"{n}: hostname {host!r} must be its service name (its node name)")
    listed = {v for k, v in c.items() if k.startswith("cluster_formation.classic_config.nodes.")}
    check(listed == {f"rabbit@{x}" for x in nodes}, f"{n}: its config lists the nodes {listed}")
    check(cluster[n].get("environment", {}).get("RABBITMQ_ERLANG_COOKIE"), f"{n}: no shared cookie")
    # Only the node that starts last loads the definitions, once the three are one cluster.
    check(("load_definitions" in c) == (n == "rabbitmq"), f"{n}: wrong about loading definitions")
check(
    "rabbitmq-2" in cluster.get("rabbitmq", {}).get("depends_on", {})
    and "rabbitmq-3" in cluster.get("rabbitmq-2", {}).get("depends_on", {}),
    "the nodes must start one after another: rabbitmq-3, rabbitmq-2, rabbitmq",
)
for name, user in [("orchestrator", "orchestrator"), ("worker", "worker"),
                   ("broadcaster", "broadcaster"), ("push", "broadcaster")]:
    urls = cluster.get(name, {}).get("environment", {}).get("AMQP_URL", "").split(",")
    hosts = [re.match(rf"amqp://castwork-{user}:[^@]+@([a-z0-9-]+):5672/castwork\?heartbeat=\d+$", u) for u in urls]
    check(all(hosts) and [h.group(1) for h in hosts] == nodes, f"{name}: AMQP_URL must list the three nodes as castwork-{user}")
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
secrets = {name: d.get("stringData", {}) for (kind, name), d in kinds.items() if kind == "Secret"}
config = kinds[("ConfigMap", "castwork")]["data"]

# Every object against its schema, unknown fields refused: the Kubernetes API's from PyPI's
# kubernetes-validate, KEDA's from its CRDs in infra/k8s/schemas.
try:
    import jsonschema
    import kubernetes_validate
except ImportError:
    check(False, "install kubernetes-validate (pip install kubernetes-validate==1.37.0) to check the manifests")
else:
    def strict(schema):
        """An OpenAPI schema with additionalProperties false wherever it lists properties."""
        if isinstance(schema, dict):
            out = {k: strict(v) for k, v in schema.items()}
            if "properties" in out and "additionalProperties" not in out \
                    and not out.get("x-kubernetes-preserve-unknown-fields"):
                out["additionalProperties"] = False
            return out
        if isinstance(schema, list):
            return [strict(v) for v in schema]
        return schema

    crds = {}
    for f in sorted((INFRA / "k8s" / "schemas").glob("*.yaml")):
        crd = yaml.safe_load(f.read_text())
        for v in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])
            crds[key] = strict(v["schema"]["openAPIV3Schema"])
    k8s_version = "1.33.0"
    for d in docs:
        where = f"{d['kind']} {d['metadata']['name']}"
        key = (d["apiVersion"], d["kind"])
        if key in crds:
            errors = sorted(jsonschema.Draft7Validator(crds[key]).iter_errors(d), key=str)
            for e in errors:
                check(False, f"{where}: {'/'.join(map(str, e.path))}: {e.message}")
            continue
        try:
            kubernetes_validate.validate(d, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            check(False, f"{where}: {'/'.join(map(str, e.path))}: {e.message}")
        except Exception as e:  # an unknown kind or API version
            check(False, f"{where}: {e}")
for name in ["orchestrator", "worker", "broadcaster", "worker-gpu"]:
    dep = kinds.get(("Deployment", name))
    check(dep is not None, f"no {name} Deployment")
    if dep is None:
        continue
    role = name.split("-")[0]
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
    # Only its own role's Secret, whole or by key.
    used = {e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e}
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            used.add(ref["name"])
            check(ref["key"] in secrets.get(ref["name"], {}), f"{role}: secret key {ref['key']} is missing")
    check(used == {f"castwork-{role}"}, f"{role}: uses the secrets {sorted(used)}, not only castwork-{role}")
    check(
        secrets.get(f"castwork-{role}", {}).get("AMQP_URL", "").startswith(f"amqp://castwork-{role}:"),
        f"{role}: its secret's AMQP_URL is not its own broker user's",
    )
    drain = flag(c["args"], "--drain-secs")
    if drain is not None:
        check(
            pod.get("terminationGracePeriodSeconds", 30) > int(drain),
            f"{role}: terminationGracePeriodSeconds must exceed --drain-secs",
        )
worker_pod = kinds[("Deployment", "worker")]["spec"]["template"]["spec"]
(wc,) = worker_pod["containers"]
check(
    set(secrets.get("castwork-worker", {})) == {"AMQP_URL"},
    "worker: its secret must hold its broker URL and nothing else",
)
check(
    not any("configMapRef" in e for e in wc.get("envFrom", [])),
    "worker: the shared ConfigMap would hand it the object store's settings",
)
check(
    worker_pod.get("terminationGracePeriodSeconds", 30) > 120,
    "worker: terminationGracePeriodSeconds must exceed the drain timeout",
)
# Each worker Deployment scales on its own class's job queues.
gpu_pod = kinds[("Deployment", "worker-gpu")]["spec"]["template"]["spec"]
(gc,) = gpu_pod["containers"]
check(gc["resources"]["limits"].get("nvidia.com/gpu"), "worker-gpu asks for no GPU")
check(
    any(e["name"] == "NVIDIA_DRIVER_CAPABILITIES" and "video" in e["value"] for e in gc["env"]),
    "worker-gpu: the runtime must mount the driver's video libraries (NVDEC)",
)
for name in ["worker", "worker-gpu"]:
    scaled = kinds.get(("ScaledObject", name))
    check(scaled is not None, f"no KEDA ScaledObject for {name}")
    if not scaled:
        continue
    target = scaled["spec"]["scaleTargetRef"]["name"]
    (container,) = kinds[("Deployment", target)]["spec"]["template"]["spec"]["containers"]
    cls = flag(container["args"], "--class") or "cpu"
    watched = {t["metadata"]["queueName"] for t in scaled["spec"]["triggers"]}
    want = {f"jobs.live.{cls}", f"jobs.vod.{cls}"}
    check(watched == want and want <= set(queues), f"KEDA {name} watches {watched}, its class {want}")
    auth = kinds.get(("TriggerAuthentication", "castwork-rabbitmq"))
    ref = auth["spec"]["secretTargetRef"][0] if auth else {}
    check(ref.get("name") == "castwork-keda" and ref.get("key") in secrets.get("castwork-keda", {}),
          "KEDA has no credentials of its own")
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
