# Sourced by the benchmark scripts: a RabbitMQ vhost and a work directory of the run's own,
# the environment every process gets, and cleanup of both (and of the processes in `pids`)
# on exit. Expects `work` and `vhost` to be set.
rabbitmqctl add_vhost "$vhost" >/dev/null
rabbitmqctl set_permissions -p "$vhost" guest ".*" ".*" ".*" >/dev/null
export AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$vhost" STORAGE_URL="file://$work/data" RUST_LOG=warn
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rabbitmqctl delete_vhost "$vhost" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
