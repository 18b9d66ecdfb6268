#!/usr/bin/env bash
# A two-node Ray cluster on this one machine (a head and a worker node, each its own raylet), for
# trying the cluster path locally: launch/submit.sh, trials placed on both nodes, a node killed.
#   launch/local-cluster.sh start      # head at 127.0.0.1:$RAY_HEAD_PORT, dashboard/jobs at :$RAY_DASHBOARD_PORT
#   RAY_ADDRESS=http://127.0.0.1:8265 launch/submit.sh tune_configs/quickstart.yaml
#   launch/local-cluster.sh stop       # stops this cluster's processes only (found by its own temp dir)
# Token authentication stays on (RAY_AUTH_MODE=token): the token is ~/.ray/auth_token (made once with
# `ray get-auth-token --generate`), which `ray job submit` and `ray status` read. Everything binds to
# 127.0.0.1. Each node gets a custom resource (node:head / node:worker counts) so that tests can see
# where trials ran. HEAD_NODE_ENV / WORKER_NODE_ENV add VAR=value pairs to one node's processes, e.g.
# its own RAYSEL_CACHE, so that the two nodes keep raysel's files apart as machines without a shared
# disk would (the sweep's files then meet only in its storage_path).
set -euo pipefail
head_port="${RAY_HEAD_PORT:-6390}"
dashboard_port="${RAY_DASHBOARD_PORT:-8265}"
head_cpus="${HEAD_CPUS:-1}"
worker_cpus="${WORKER_CPUS:-1}"
temp_dir="${RAY_CLUSTER_TEMP_DIR:-/tmp/raysel-cluster-$head_port}"  # its own: other Rays on the machine are left alone
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
python="$(command -v python || command -v python3)"

free_port() {  # a port nothing listens on now (Ray's fixed defaults, e.g. the agent's 52365, may be taken)
  "$python" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1]); s.close()'
}

port_taken() {
  ! "$python" -c 'import socket, sys; s = socket.socket(); s.bind(("", int(sys.argv[1]))); s.close()' "$1" 2> /dev/null
}

# every port a node opens, chosen free: two clusters (or another Ray) on one machine do not collide
node_ports() {
  echo "--dashboard-agent-listen-port $(free_port) --dashboard-agent-grpc-port $(free_port)" \
       "--runtime-env-agent-port $(free_port) --metrics-export-port $(free_port)"
}

case "${1:-start}" in
  start)
    for pair in "RAY_HEAD_PORT=$head_port" "RAY_DASHBOARD_PORT=$dashboard_port"; do
      if port_taken "${pair#*=}"; then
        echo "error: port ${pair#*=} (${pair%%=*}) is taken; set ${pair%%=*} to a free port" >&2
        exit 2
      fi
    done
    if [[ "$RAY_AUTH_MODE" == "token" && -z "${RAY_AUTH_TOKEN:-}" && ! -s "$HOME/.ray/auth_token" ]]; then
      ray get-auth-token --generate > /dev/null
    fi
    # shellcheck disable=SC2046,SC2086  # node_ports is a list of flags, *_NODE_ENV a list of VAR=value
    env ${HEAD_NODE_ENV:-} ray start --head --node-ip-address 127.0.0.1 --port "$head_port" --num-cpus "$head_cpus" \
      --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$dashboard_port" \
      --ray-client-server-port "$(free_port)" $(node_ports) \
      --resources '{"raysel_head_node": 1}' --disable-usage-stats --temp-dir "$temp_dir"
    # shellcheck disable=SC2046,SC2086
    env ${WORKER_NODE_ENV:-} ray start --address "127.0.0.1:$head_port" --node-ip-address 127.0.0.1 --num-cpus "$worker_cpus" \
      $(node_ports) --resources '{"raysel_worker_node": 1}' --disable-usage-stats
    echo "cluster up: RAY_ADDRESS=127.0.0.1:$head_port (drivers), http://127.0.0.1:$dashboard_port (jobs, dashboard)"
    echo "for ray status and other ray commands in your shell: export RAY_AUTH_MODE=token"
    ;;
  stop)
    # every process of this cluster names its temp dir on its command line; nothing else is stopped
    pkill -TERM -f -- "$temp_dir" || true
    sleep 3
    pkill -KILL -f -- "$temp_dir" || true
    ;;
  *)
    echo "usage: launch/local-cluster.sh start|stop" >&2
    exit 2
    ;;
esac
