#!/usr/bin/env bash
# tests/services/rabbitmq-node.sh - one private RabbitMQ node on 127.0.0.1
# (research/test-services.md section 4), used by services.sh (the shared
# node) and by tests that stop or restart a broker (a node of their own).
#
#   rabbitmq-node.sh start DIR PORT   start (or reuse) the node; waits until ready
#   rabbitmq-node.sh stop DIR         stop the node and its epmd (idempotent)
#   rabbitmq-node.sh ctl DIR ARGS...  rabbitmqctl against the node
#   rabbitmq-node.sh port DIR         the node's AMQP port
#
# The node also listens for AMQP over TLS on PORT+3000, with a certificate
# for localhost and 127.0.0.1 signed by a CA made on first start
# (DIR/tls/ca.pem; DIR/tls/client.pem and client.key are a client
# certificate the node accepts).
#
# The Debian /usr/sbin/rabbitmq-server wrapper switches to the rabbitmq user
# with su; the real script (/usr/lib/rabbitmq/bin) runs as root with every
# path in DIR. Each node has its own name, epmd and distribution ports,
# derived from PORT (epmd PORT+1000, distribution PORT+2000, both below the
# 20000-32767 range lib.sh's free_port draws from), so nodes of parallel
# test runs never meet. epmd daemonises itself: stop kills it by its port.
set -euo pipefail

RB_BIN=/usr/lib/rabbitmq/bin

node_env() {  # node_env DIR PORT: export the node's environment
    local d=$1 port=$2
    export HOME=$d RABBITMQ_NODENAME=pgtrelay$port@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT=$port RABBITMQ_DIST_PORT=$((port + 2000)) ERL_EPMD_ADDRESS=127.0.0.1 \
        ERL_EPMD_PORT=$((port + 1000)) RABBITMQ_MNESIA_BASE=$d/mnesia RABBITMQ_LOG_BASE=$d/log \
        RABBITMQ_PID_FILE=$d/rabbit.pid RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins \
        RABBITMQ_CONFIG_FILE=$d/rabbitmq.conf RABBITMQ_CONF_ENV_FILE=$d/rabbitmq-env.conf \
        RABBITMQ_ADVANCED_CONFIG_FILE=$d/advanced.config \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
        PATH=$RB_BIN:$PATH
}

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

make_tls() {  # make_tls DIR: a CA, a server and a client certificate
    local t=$1/tls
    [ -f "$t/client.pem" ] && return 0
    mkdir -p "$t"
    (
        cd "$t"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=pgtrickle-relay-test-ca \
            -keyout ca.key -out ca.pem
        openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile server.ext -out server.pem
        openssl req -newkey rsa:2048 -nodes -subj /CN=relay-client -keyout client.key -out client.csr
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
            -out client.pem
        chmod 644 ./*.key
    ) >"$1/tls.log" 2>&1 || { echo "rabbitmq: cannot make TLS certificates (see $1/tls.log)" >&2; return 1; }
}

start() {
    local d=$1 port=$2
    mkdir -p "$d"
    echo "$port" > "$d/port"
    if [ -f "$d/rabbit.pid" ] && kill -0 "$(cat "$d/rabbit.pid")" 2>/dev/null && answers "$port"; then
        return 0
    fi
    echo '[].' > "$d/enabled_plugins"
    : > "$d/rabbitmq-env.conf"
    make_tls "$d"
    cat > "$d/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$port
listeners.ssl.default = 127.0.0.1:$((port + 3000))
ssl_options.cacertfile = $d/tls/ca.pem
ssl_options.certfile = $d/tls/server.pem
ssl_options.keyfile = $d/tls/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
loopback_users = none
EOF
    (
        node_env "$d" "$port"
        # setsid: the node must outlive the shell that started it
        setsid "$RB_BIN/rabbitmq-server" </dev/null >>"$d/stdout.log" 2>&1 &
    )
    local i
    for i in $(seq 1 600); do answers "$port" && break; sleep 0.1; done
    if ! answers "$port"; then   # the logs go with the test's directory: show their end now
        echo "rabbitmq did not start (logs: $d/log, $d/stdout.log); their last lines:" >&2
        tail -n 15 "$d/stdout.log" "$d"/log/*.log 2>/dev/null | sed 's/^/    /' >&2
        return 1
    fi
    (node_env "$d" "$port"; rabbitmqctl -q -n "$RABBITMQ_NODENAME" await_startup >/dev/null)
}

stop() {
    local d=$1 port pid i
    [ -f "$d/port" ] || return 0
    port=$(cat "$d/port")
    if [ -f "$d/rabbit.pid" ]; then
        pid=$(cat "$d/rabbit.pid")
        if kill -TERM "$pid" 2>/dev/null; then
            for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$d/rabbit.pid"
    fi
    ERL_EPMD_PORT=$((port + 1000)) epmd -kill >/dev/null 2>&1 || true
}

cmd=${1:-}; shift || true
case "$cmd" in
    start) start "$1" "$2" ;;
    stop) stop "$1" ;;
    ctl) d=$1; shift; node_env "$d" "$(cat "$d/port")"; exec rabbitmqctl -q -n "$RABBITMQ_NODENAME" "$@" ;;
    port) cat "$1/port" ;;
    *) echo "usage: $0 start DIR PORT | stop DIR | ctl DIR ARGS... | port DIR" >&2; exit 2 ;;
esac
