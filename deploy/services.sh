#!/usr/bin/env bash
# Make RabbitMQ and Redis reachable for Courier.
#
#   COURIER_AMQP_URL   default amqp://guest:guest@127.0.0.1:5672/%2f
#   COURIER_REDIS_URL  default redis://127.0.0.1:6379
#
# For each service:
#   - if it already answers (a real protocol check, not just an open port),
#     nothing is done;
#   - if its host is local (127.0.0.1, localhost, ::1), it is started, after
#     installing it with apt-get when it is not installed;
#   - if its host is remote and it does not answer, the script fails.
# Then it waits until both answer. Running it again is a fast no-op.
#
# Optional knobs:
#   COURIER_SERVICES_WAIT_SECS  how long to wait for a service to answer (90)
#   COURIER_SERVICES_DIR        pid and log files of a Redis started here
#                               (default ${XDG_RUNTIME_DIR:-${TMPDIR:-/tmp}}/courier-services-$UID)
#   COURIER_SERVICES_PROBE      auto | bash | python: how the protocol checks
#                               talk to the sockets (auto: bash /dev/tcp with
#                               head and od, else python3); redis-cli is used
#                               for Redis whenever it is installed.
set -euo pipefail

AMQP_URL=${COURIER_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
REDIS_URL=${COURIER_REDIS_URL:-redis://127.0.0.1:6379}
WAIT_SECS=${COURIER_SERVICES_WAIT_SECS:-90}
STATE_DIR=${COURIER_SERVICES_DIR:-${XDG_RUNTIME_DIR:-${TMPDIR:-/tmp}}/courier-services-$(id -u)}
PROBE_IMPL=${COURIER_SERVICES_PROBE:-auto}
PROBE_TIMEOUT=3 # seconds for one protocol check

log() { printf 'services: %s\n' "$*"; }
warn() { printf 'services: warning: %s\n' "$*" >&2; }
die() {
    printf 'services: error: %s\n' "$*" >&2
    exit 1
}

[[ $WAIT_SECS =~ ^[0-9]+$ ]] || die "COURIER_SERVICES_WAIT_SECS must be a whole number of seconds, got '$WAIT_SECS'"
command -v timeout >/dev/null 2>&1 || die "the 'timeout' command (coreutils) is required"

case $PROBE_IMPL in
auto)
    if command -v head >/dev/null 2>&1 && command -v od >/dev/null 2>&1; then
        PROBE_IMPL=bash
    elif command -v python3 >/dev/null 2>&1 && python3 -c 'import socket' >/dev/null 2>&1; then
        PROBE_IMPL=python
    else
        PROBE_IMPL=bash
    fi
    ;;
python | bash) ;;
*) die "COURIER_SERVICES_PROBE must be auto, python or bash, got '$PROBE_IMPL'" ;;
esac

# ---------------------------------------------------------------- URLs

# redact URL: the URL with its password replaced by ***
redact() {
    local url=$1
    if [[ $url =~ ^([A-Za-z0-9+.-]+://[^/@:]*:)[^/]*@([^/@]*(/.*)?)$ ]]; then
        printf '%s***@%s' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
    else
        printf '%s' "$url"
    fi
}

pct_decode() {
    local s=${1//\\/\\\\}
    printf '%b' "${s//%/\\x}"
}

# parse_url URL -> sets U_SCHEME U_USER U_PASS U_HOST U_PORT (empty when the URL has none)
parse_url() {
    local url=$1 rest auth hostport
    [[ $url == *://* ]] || die "not a URL: '$(redact "$url")'"
    U_SCHEME=${url%%://*}
    U_SCHEME=${U_SCHEME,,}
    rest=${url#*://}
    U_USER="" U_PASS=""
    # userinfo ends at the last '@' before the path
    auth="" hostport=${rest%%[/?#]*}
    if [[ ${rest%%/*} == *@* ]]; then
        auth=${rest%%/*}
        auth=${auth%@*}
        hostport=${rest#"$auth"@}
        hostport=${hostport%%[/?#]*}
        if [[ $auth == *:* ]]; then
            U_USER=$(pct_decode "${auth%%:*}")
            U_PASS=$(pct_decode "${auth#*:}")
        else
            U_USER=$(pct_decode "$auth")
        fi
    fi
    if [[ $hostport == \[* ]]; then # [IPv6]:port
        U_HOST=${hostport#\[}
        U_HOST=${U_HOST%%\]*}
        U_PORT=${hostport#*\]}
        U_PORT=${U_PORT#:}
    elif [[ $hostport == *:* ]]; then
        U_HOST=${hostport%:*}
        U_PORT=${hostport##*:}
    else
        U_HOST=$hostport
        U_PORT=""
    fi
    [[ -n $U_HOST ]] || U_HOST=127.0.0.1
    [[ -z $U_PORT ]] || { [[ $U_PORT =~ ^[0-9]+$ ]] && ((U_PORT > 0 && U_PORT < 65536)); } ||
        die "bad port '$U_PORT' in '$(redact "$url")'"
}

is_local() {
    case $1 in
    127.0.0.1 | localhost | ::1) return 0 ;;
    *) return 1 ;;
    esac
}

# host:port for messages ([::1]:6379 for IPv6 hosts)
hp() {
    if [[ $1 == *:* ]]; then printf '[%s]:%s' "$1" "$2"; else printf '%s:%s' "$1" "$2"; fi
}

parse_url "$AMQP_URL"
AMQP_SCHEME=$U_SCHEME AMQP_HOST=$U_HOST AMQP_PORT=$U_PORT
case $AMQP_SCHEME in
amqp) : "${AMQP_PORT:=5672}" ;;
amqps) : "${AMQP_PORT:=5671}" ;;
*) die "COURIER_AMQP_URL must be an amqp:// or amqps:// URL, got '$(redact "$AMQP_URL")'" ;;
esac

parse_url "$REDIS_URL"
REDIS_SCHEME=$U_SCHEME REDIS_HOST=$U_HOST REDIS_PORT=${U_PORT:-6379} REDIS_USER=$U_USER REDIS_PASS=$U_PASS
case $REDIS_SCHEME in
redis | rediss) ;;
*) die "COURIER_REDIS_URL must be a redis:// or rediss:// URL, got '$(redact "$REDIS_URL")'" ;;
esac

# ---------------------------------------------------------------- checks
#
# Every check returns
#   0  the service answers
#   1  nothing answers (refused, unreachable, name does not resolve)
#   2  something answers on the port, but not this service
#   3  Redis answers but refuses the credentials (or wants some)
#   4  Redis answers but is still loading its data set
#   9  the check itself could not run

# map the exit status of a python3 check (20 + code) to a check code
py_rc() {
    case $1 in
    20 | 21 | 22 | 23 | 24) return $(($1 - 20)) ;;
    124) return 2 ;; # connected, but no answer in time
    *) return 9 ;;
    esac
}

tcp_open() {
    timeout "$PROBE_TIMEOUT" bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

PY_AMQP='
import socket, sys
host, port, t = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    s = socket.create_connection((host, port), timeout=t)
except OSError:
    sys.exit(21)
buf = b""
try:
    s.sendall(b"AMQP\x00\x00\x09\x01")
    while len(buf) < 11:
        chunk = s.recv(11 - len(buf))
        if not chunk:
            break
        buf += chunk
except OSError:
    pass
# a method frame (type 1) carrying Connection.Start (class 10, method 10)
sys.exit(20 if len(buf) == 11 and buf[0] == 1 and buf[7:11] == b"\x00\x0a\x00\x0a" else 22)
'

probe_amqp() {
    local host=$1 port=$2 rc=0 out
    if [[ $AMQP_SCHEME == amqps ]]; then
        # a TLS listener cannot be checked without a TLS client: an open port will do
        tcp_open "$host" "$port" || return 1
        return 0
    fi
    if [[ $PROBE_IMPL == python ]]; then
        timeout "$PROBE_TIMEOUT" python3 -c "$PY_AMQP" "$host" "$port" "$PROBE_TIMEOUT" || rc=$?
        py_rc "$rc"
        return
    fi
    # bash: send the AMQP 0-9-1 protocol header, read the first 11 bytes of the reply
    out=$(timeout "$PROBE_TIMEOUT" bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 11
        printf "AMQP\000\000\011\001" >&3
        head -c 11 <&3 | od -An -v -tx1
    ' _ "$host" "$port" 2>/dev/null) || rc=$?
    ((rc == 11)) && return 1
    local -a b
    read -r -a b <<<"$out" || true
    if ((${#b[@]} == 11)) && [[ ${b[0]} == 01 && "${b[*]:7:4}" == "00 0a 00 0a" ]]; then
        return 0
    fi
    return 2
}

PY_REDIS='
import socket, sys
host, port, t, user, pw = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
try:
    s = socket.create_connection((host, port), timeout=t)
except OSError:
    sys.exit(21)
def bulk(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out
try:
    f = s.makefile("rb")
    if pw:
        s.sendall(bulk("AUTH", user, pw) if user else bulk("AUTH", pw))
        line = f.readline()
        if not line.startswith(b"+OK"):
            sys.exit(23 if line.startswith((b"-WRONGPASS", b"-ERR", b"-NOAUTH")) else 22)
    s.sendall(b"PING\r\n")
    line = f.readline()
except OSError:
    sys.exit(22)
if line.startswith(b"+PONG"):
    sys.exit(20)
if line.startswith(b"-NOAUTH"):
    sys.exit(23)
if line.startswith(b"-LOADING"):
    sys.exit(24)
sys.exit(22)
'

# classify the reply (from redis-cli or a raw socket) to AUTH and PING;
# a refused AUTH counts even if PING then works, as Courier's client would fail
redis_reply_rc() {
    case $1 in
    *NOAUTH* | *WRONGPASS* | *"AUTH failed"* | *"-ERR AUTH"* | *"ERR invalid password"*) return 3 ;;
    *PONG*) return 0 ;;
    *LOADING*) return 4 ;;
    *) return 2 ;;
    esac
}

probe_redis() {
    local host=$1 port=$2 rc=0 out
    if [[ $REDIS_SCHEME == rediss ]]; then
        tcp_open "$host" "$port" || return 1
        return 0
    fi
    if command -v redis-cli >/dev/null 2>&1; then
        local -a args=(-h "$host" -p "$port")
        [[ -n $REDIS_USER && -n $REDIS_PASS ]] && args+=(--user "$REDIS_USER")
        if [[ -n $REDIS_PASS ]]; then
            out=$(REDISCLI_AUTH=$REDIS_PASS timeout "$PROBE_TIMEOUT" redis-cli "${args[@]}" ping 2>&1 </dev/null) || rc=$?
        else
            out=$(timeout "$PROBE_TIMEOUT" redis-cli "${args[@]}" ping 2>&1 </dev/null) || rc=$?
        fi
        case $out in
        *"Could not connect"* | *"Connection refused"* | *"not known"* | *"unreachable"*) return 1 ;;
        esac
        ((rc == 124)) && return 2
        redis_reply_rc "$out"
        return
    fi
    if [[ $PROBE_IMPL == python ]]; then
        timeout "$PROBE_TIMEOUT" python3 -c "$PY_REDIS" "$host" "$port" "$PROBE_TIMEOUT" "$REDIS_USER" "$REDIS_PASS" || rc=$?
        py_rc "$rc"
        return
    fi
    out=$(LC_ALL=C timeout "$PROBE_TIMEOUT" bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 11
        if [ -n "$4" ]; then
            if [ -n "$3" ]; then
                printf "*3\r\n\$4\r\nAUTH\r\n\$%d\r\n%s\r\n\$%d\r\n%s\r\n" "${#3}" "$3" "${#4}" "$4" >&3
            else
                printf "*2\r\n\$4\r\nAUTH\r\n\$%d\r\n%s\r\n" "${#4}" "$4" >&3
            fi
            IFS= read -r line <&3 || exit 12
            case $line in +OK*) ;; *) printf "%s\n" "$line"; exit 0 ;; esac
        fi
        printf "PING\r\n" >&3
        IFS= read -r line <&3 || exit 12
        printf "%s\n" "$line"
    ' _ "$host" "$port" "$REDIS_USER" "$REDIS_PASS" 2>/dev/null) || rc=$?
    ((rc == 11)) && return 1
    ((rc == 0)) || return 2
    redis_reply_rc "$out"
}

check() { # check amqp|redis -> prints the code
    local rc=0
    case $1 in
    amqp) probe_amqp "$AMQP_HOST" "$AMQP_PORT" || rc=$? ;;
    redis) probe_redis "$REDIS_HOST" "$REDIS_PORT" || rc=$? ;;
    esac
    printf '%s' "$rc"
}

check_broken() { # check_broken LABEL
    die "the check for $1 could not run (COURIER_SERVICES_PROBE=$PROBE_IMPL); try COURIER_SERVICES_PROBE=bash or python"
}

# ---------------------------------------------------------------- install and start

find_bin() { # find_bin NAME -> path of NAME, or nothing
    local name=$1 dir
    if [[ $name == rabbitmq-server ]]; then
        # prefer the distribution's wrapper, which runs the broker as the rabbitmq user
        [[ -x /usr/sbin/rabbitmq-server ]] && {
            printf '%s' /usr/sbin/rabbitmq-server
            return
        }
    fi
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return
    fi
    for dir in /usr/sbin /usr/bin /usr/local/sbin /usr/local/bin /usr/lib/rabbitmq/bin; do
        [[ -x $dir/$name ]] && {
            printf '%s' "$dir/$name"
            return
        }
    done
    return 0
}

is_root() { [[ $(id -u) -eq 0 ]]; }

as_root() {
    if is_root; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "'$*' needs root, and this user is not root and sudo is not installed"
    fi
}

apt_install() { # apt_install PKG...
    command -v apt-get >/dev/null 2>&1 ||
        die "$* not installed and apt-get is not available: install $* with the system's package manager, or point COURIER_AMQP_URL / COURIER_REDIS_URL at running services"
    is_root || command -v sudo >/dev/null 2>&1 ||
        die "$* not installed; installing needs root, and this user is not root and sudo is not installed. As root, run: apt-get install -y --no-install-recommends $* (or point COURIER_AMQP_URL / COURIER_REDIS_URL at running services)"
    log "installing $* with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
        die "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" ||
        die "apt-get install $* failed"
}

RABBIT_NODE=rabbit
[[ $AMQP_PORT == 5672 ]] || RABBIT_NODE=rabbit_$AMQP_PORT@localhost
RABBIT_NODE=${RABBITMQ_NODENAME:-$RABBIT_NODE}
RABBIT_STARTED_HERE=0

# is the RabbitMQ node this script would start registered with epmd (booting or running)?
# 0 yes, 1 no, 2 cannot tell
rabbit_node_up() {
    local epmd names
    epmd=$(find_bin epmd)
    [[ -n $epmd ]] || epmd=/usr/lib/erlang/bin/epmd
    [[ -x $epmd ]] || return 2
    names=$(timeout 2 "$epmd" -names 2>/dev/null) || return 1
    grep -q "^name ${RABBIT_NODE%%@*} " <<<"$names"
}

# A node on another port than 5672 runs beside the default one: its own name
# (so its own data and log), its own listener (the system config may pin
# listeners.tcp to 5672), and no plugins (whose listeners would clash).
rabbit_side_node_env() {
    local dir=${TMPDIR:-/tmp}/courier-rabbitmq-$AMQP_PORT ip=127.0.0.1
    local sys_conf=${RABBITMQ_CONFIG_FILE:-/etc/rabbitmq/rabbitmq.conf}
    [[ $AMQP_HOST == ::1 ]] && ip=::1
    mkdir -p "$dir"
    chmod 755 "$dir"
    {
        if [[ -r $sys_conf ]]; then grep -v '^[[:space:]]*listeners\.tcp' "$sys_conf" || true; fi
        printf 'listeners.tcp.local = %s:%s\n' "$ip" "$AMQP_PORT"
    } >"$dir/rabbitmq.conf"
    printf '[].\n' >"$dir/enabled_plugins"
    chmod 644 "$dir/rabbitmq.conf" "$dir/enabled_plugins"
    RABBIT_ENV+=(
        RABBITMQ_NODE_PORT="$AMQP_PORT"
        RABBITMQ_NODENAME="$RABBIT_NODE"
        RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
    )
}

start_rabbitmq() {
    local bin=$1 rc=0
    RABBIT_ENV=()
    if rabbit_node_up; then
        log "RabbitMQ node $RABBIT_NODE is already running or booting; waiting for it to answer at $(hp "$AMQP_HOST" "$AMQP_PORT")"
        return
    fi
    [[ $AMQP_PORT == 5672 ]] || rabbit_side_node_env
    log "starting RabbitMQ node $RABBIT_NODE on $(hp "$AMQP_HOST" "$AMQP_PORT") ($bin -detached)"
    if is_root || [[ $bin != /usr/sbin/* && $bin != /usr/lib/rabbitmq/* ]]; then
        env "${RABBIT_ENV[@]}" "$bin" -detached || rc=$?
    else
        # the distribution's wrapper only lets root or the rabbitmq user start the broker
        as_root env "${RABBIT_ENV[@]}" "$bin" -detached || rc=$?
    fi
    ((rc == 0)) || warn "rabbitmq-server -detached exited with status $rc; waiting for the broker anyway"
    RABBIT_STARTED_HERE=1
}

REDIS_STARTED_HERE=0
start_redis() {
    local bin=$1 bind=127.0.0.1
    [[ $REDIS_HOST == ::1 ]] && bind=::1
    mkdir -p "$STATE_DIR"
    rm -f "$STATE_DIR/redis-$REDIS_PORT.pid"
    log "starting Redis on $(hp "$REDIS_HOST" "$REDIS_PORT") (log: $STATE_DIR/redis-$REDIS_PORT.log)"
    "$bin" --daemonize yes --bind "$bind" --port "$REDIS_PORT" --save "" --appendonly no \
        --dir "$STATE_DIR" --pidfile "$STATE_DIR/redis-$REDIS_PORT.pid" \
        --logfile "$STATE_DIR/redis-$REDIS_PORT.log" ||
        die "redis-server failed to start; see $STATE_DIR/redis-$REDIS_PORT.log"
    REDIS_STARTED_HERE=1
}

redis_died() { # a Redis started here that is gone
    local pidfile=$STATE_DIR/redis-$REDIS_PORT.pid pid
    ((REDIS_STARTED_HERE)) || return 1
    [[ -s $pidfile ]] || return 0
    pid=$(<"$pidfile")
    ! kill -0 "$pid" 2>/dev/null
}

wait_for() { # wait_for amqp|redis
    local kind=$1 label host port hint rc start=$SECONDS interval
    if [[ $kind == amqp ]]; then
        label=RabbitMQ host=$AMQP_HOST port=$AMQP_PORT interval=1
        hint="see the broker's logs in /var/log/rabbitmq (node $RABBIT_NODE), or run 'rabbitmq-diagnostics$([[ $AMQP_PORT == 5672 ]] || printf ' -n %s' "$RABBIT_NODE") status'"
    else
        label=Redis host=$REDIS_HOST port=$REDIS_PORT interval=0.5
        hint="see $STATE_DIR/redis-$REDIS_PORT.log, or /var/log/redis if the system service was used"
    fi
    while :; do
        rc=$(check "$kind")
        case $rc in
        0)
            log "$label ready at $(hp "$host" "$port")"
            return
            ;;
        3) die "$label at $(hp "$host" "$port") answers but refuses the credentials in the URL (or wants a password); fix the URL" ;;
        9) check_broken "$label" ;;
        esac
        if [[ $kind == amqp ]] && ((RABBIT_STARTED_HERE && SECONDS - start >= 15)); then
            local up=0
            rabbit_node_up || up=$?
            ((up != 1)) || die "RabbitMQ node $RABBIT_NODE stopped while booting; $hint"
        fi
        if [[ $kind == redis ]] && ((SECONDS - start >= 3)) && redis_died; then
            printf 'services: last lines of %s:\n' "$STATE_DIR/redis-$REDIS_PORT.log" >&2
            tail -n 5 "$STATE_DIR/redis-$REDIS_PORT.log" >&2 2>/dev/null || true
            die "redis-server exited right after starting on port $REDIS_PORT"
        fi
        if ((SECONDS - start >= WAIT_SECS)); then
            die "$label did not answer at $(hp "$host" "$port") within ${WAIT_SECS}s; $hint"
        fi
        sleep "$interval"
    done
}

# ---------------------------------------------------------------- main

declare -A RC LABEL URL HOST PORT PKG
LABEL[amqp]=RabbitMQ LABEL[redis]=Redis
URL[amqp]=$AMQP_URL URL[redis]=$REDIS_URL
HOST[amqp]=$AMQP_HOST HOST[redis]=$REDIS_HOST
PORT[amqp]=$AMQP_PORT PORT[redis]=$REDIS_PORT
PKG[amqp]=rabbitmq-server PKG[redis]=redis-server

RC[amqp]=$(check amqp)
RC[redis]=$(check redis)

pending=() # services to start or wait for
missing=() # packages to install
for kind in amqp redis; do
    label=${LABEL[$kind]} where=$(hp "${HOST[$kind]}" "${PORT[$kind]}")
    case ${RC[$kind]} in
    0)
        log "$label already answering at $where; nothing to do"
        continue
        ;;
    3) die "$label at $where answers but refuses the credentials in $(redact "${URL[$kind]}") (or wants a password); fix the URL" ;;
    4)
        pending+=("$kind") # Redis is up and still loading its data set
        continue
        ;;
    9) check_broken "$label" ;;
    esac
    if ! is_local "${HOST[$kind]}"; then
        die "$label does not answer at $(redact "${URL[$kind]}"), and ${HOST[$kind]} is not this machine: start it there, or set COURIER_$([[ $kind == amqp ]] && echo AMQP || echo REDIS)_URL to one that runs"
    fi
    if [[ ${URL[$kind]} == amqps://* || ${URL[$kind]} == rediss://* ]]; then
        die "$label does not answer at $(redact "${URL[$kind]}"); this script starts plain-text services only, so start a TLS one yourself or use an amqp:// / redis:// URL"
    fi
    if [[ ${RC[$kind]} == 2 ]]; then
        die "something is listening on $where, but it is not $label; stop it, or set COURIER_$([[ $kind == amqp ]] && echo AMQP || echo REDIS)_URL to another port"
    fi
    pending+=("$kind")
    [[ -n $(find_bin "${PKG[$kind]}") ]] || missing+=("${PKG[$kind]}")
done

((${#pending[@]})) || exit 0

if ((${#missing[@]})); then
    apt_install "${missing[@]}"
    # the packages' postinst may have started the services already
    sleep 1
fi

for kind in "${pending[@]}"; do
    [[ ${RC[$kind]} == 4 ]] && continue # Redis is up and loading its data
    [[ $(check "$kind") == 0 ]] && continue
    bin=$(find_bin "${PKG[$kind]}")
    [[ -n $bin ]] || die "${PKG[$kind]} is still not found after installing it"
    if [[ $kind == amqp ]]; then
        start_rabbitmq "$bin"
    else
        start_redis "$bin"
    fi
done

# Redis first: it is up in well under a second, RabbitMQ takes 10-30 s to boot
for kind in redis amqp; do
    [[ " ${pending[*]} " == *" $kind "* ]] && wait_for "$kind"
done
exit 0
