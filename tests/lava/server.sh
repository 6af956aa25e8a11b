#!/usr/bin/env bash
# A throw-away LAVA lab on 127.0.0.1 for tests/e2e/lava.rs: lava-server with a real
# lava-dispatcher worker, a QEMU device type and a scripted serial board. Set up by
# scripts/setup.d/20-lava.sh (lava-server, its migrated database) and 25-lava-dispatcher.sh
# (lava-dispatcher unpacked in a private folder).
#
#   server.sh template DIR   create DIR: a PostgreSQL data folder with lava-server's database
#                            migrated (the set-up script does this once)
#   server.sh start DIR      in DIR (which must exist, empty): copy the template and start
#                            PostgreSQL, gunicorn (lava-server's REST API), lava-publisher
#                            (its events, so that the scheduler and the worker act at once),
#                            lava-scheduler, a lava-worker from the private lava-dispatcher,
#                            an HTTP server for the worker's files (the board fetches LAVA's
#                            test overlay from it), the scripted serial board and ser2net for
#                            its console. Adds a user with a token, the worker, device types
#                            and devices. Writes DIR/server.env (URL, TOKEN, WORKER,
#                            WORKER_TOKEN, BOARD_STATE) and prints nothing else.
#   server.sh stop DIR       stop what `start` started (by the pids it recorded, with the
#                            jobs the worker runs) and remove the worker's configuration.
#
# The lab: qemu (qemu-01 Good, qemu-02 Unknown, qemu-03 Bad; no KVM), labwire-serial-board
# (serial-01 Good), beaglebone-black (only Retired and Bad devices), x86-pc-grub (one device
# in Maintenance). LAVA's worker runs jobs as the user running this script, which must be
# root: lava-run writes /var/lib/lava/dispatcher and the worker's configuration goes to
# /etc/lava-server/dispatcher.d/WORKER/ (LAVA reads it only there). PostgreSQL refuses to
# run as root, so it runs as the `postgres` user.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pgbin=/usr/lib/postgresql/15/bin
[ -x "$pgbin/postgres" ] || pgbin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
cache="${LABWIRE_CACHE:-$HOME/.cache/labwire}"
dispatcher="$cache/lava-dispatcher"
python=/usr/bin/python3

as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
    "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The environment of every lava-server process of the instance in DIR.
lava_env() {
    local dir="$1" pg_port="$2" events="${3:-0}"
    export DJANGO_SETTINGS_MODULE=lava_server.settings.prod
    export DATABASE_URL="postgres://lavaserver:lavaserver@127.0.0.1:$pg_port/lavaserver"
    export SECRET_KEY="labwire-test-only-$(basename "$dir")"
    export LAVA_SETTINGS_MEDIA_ROOT="$dir/media"
    export LAVA_SETTINGS_DEVICES_PATH="$dir/devices"
    export LAVA_SETTINGS_HEALTH_CHECKS_PATH="$dir/health-checks"
    # Events (through lava-publisher) on private sockets; the tests' own device types first.
    LAVA_JSON_SETTINGS="$("$python" - "$dir" "$events" "$here" <<'PY'
import base64, json, sys
d, port, here = sys.argv[1], int(sys.argv[2]), sys.argv[3]
settings = {
    "DEVICE_TYPES_PATHS": [here + "/device-types", "/etc/lava-server/dispatcher-config/device-types",
                           "/usr/share/lava-server/device-types"],
}
if port:
    settings.update({
        "EVENT_NOTIFICATION": True,
        "INTERNAL_EVENT_SOCKET": "ipc://" + d + "/events.ipc",
        "EVENT_SOCKET": "tcp://127.0.0.1:%d" % port,
    })
print(base64.b64encode(json.dumps(settings).encode()).decode())
PY
)"
    export LAVA_JSON_SETTINGS
}

start_pg() {
    local data="$1" port="$2" sock="$3"
    as_pg "$pgbin/pg_ctl" -D "$data" -w -t 60 -l "$sock/postgres.log" \
        -o "-p $port -k $sock -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
}

# Starts a command in its own session, its pid in DIR/NAME.pid, its output in DIR/NAME.out.
spawn() {
    local dir="$1" name="$2"
    shift 2
    setsid "$@" > "$dir/$name.out" 2>&1 < /dev/null &
    echo $! > "$dir/$name.pid"
}

case "${1:-}" in
template)
    # Built in a folder of its own under /tmp (the postgres user may not be able to reach
    # DIR, e.g. under /root), then moved to DIR.
    dest="$2"
    work="$(mktemp -d)"
    dir="$work/pgdata"
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres "$work" "$dir"
    as_pg "$pgbin/initdb" -D "$dir" -A trust -U postgres >/dev/null
    port="$(free_port)"
    start_pg "$dir" "$port" "$work"
    as_pg "$pgbin/psql" -q -h 127.0.0.1 -p "$port" -U postgres \
        -c "CREATE USER lavaserver PASSWORD 'lavaserver'" \
        -c "CREATE DATABASE lavaserver OWNER lavaserver"
    lava_env "$work" "$port"
    if ! lava-server manage migrate --noinput >"$work/migrate.log" 2>&1; then
        cat "$work/migrate.log" >&2
        as_pg "$pgbin/pg_ctl" -D "$dir" -m fast stop >/dev/null
        exit 1
    fi
    as_pg "$pgbin/pg_ctl" -D "$dir" -m fast stop >/dev/null
    rm -f "$dir/postmaster.opts"
    mkdir -p "$(dirname "$dest")"
    cp -a "$dir" "$dest"
    rm -rf "$work"
    ;;
start)
    dir="$(cd "$2" && pwd)"
    if [ ! -f "$cache/lava/pgdata/.labwire-ready" ]; then
        echo "no prepared lava-server database in $cache/lava/pgdata: run scripts/setup.d/20-lava.sh" >&2
        exit 2
    fi
    if [ ! -f "$dispatcher/.labwire-ready" ]; then
        echo "no lava-dispatcher in $dispatcher: run scripts/setup.d/25-lava-dispatcher.sh" >&2
        exit 2
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "the LAVA test lab runs as root (lava-run writes /var/lib/lava/dispatcher; the worker's configuration goes to /etc/lava-server/dispatcher.d)" >&2
        exit 2
    fi
    pg_port="$(free_port)" http_port="$(free_port)" events="$(free_port)" ws="$(free_port)"
    files_port="$(free_port)" console_port="$(free_port)"
    # One worker per instance, named after DIR: its configuration and its jobs' folders
    # under /var/lib/lava/dispatcher/tmp (prefix WORKER-) never meet another instance's.
    worker="labwire-$(basename "$dir" | tr -c 'a-zA-Z0-9\n' '-')"
    echo "$worker" > "$dir/worker.name"
    mkdir -p "$dir/media" "$dir/devices" "$dir/health-checks" "$dir/board" "$dir/worker"
    cp -a "$cache/lava/pgdata" "$dir/pgdata"
    chown -R postgres "$dir/pgdata"
    chown postgres "$dir"
    chmod 700 "$dir/pgdata"
    start_pg "$dir/pgdata" "$pg_port" "$dir"
    head -1 "$dir/pgdata/postmaster.pid" > "$dir/postgres.pid"
    lava_env "$dir" "$pg_port" "$events"
    lava-server manage shell > "$dir/init.out" 2>&1 <<PY
from django.contrib.auth.models import User
from lava_scheduler_app.models import Worker, DeviceType, Device
from linaro_django_xmlrpc.models import AuthToken
u = User.objects.create_superuser("labwire", "", "labwire-test")
t = AuthToken.objects.create(user=u, description="labwire test")
w = Worker.objects.create(hostname="$worker", state=Worker.STATE_OFFLINE, health=Worker.HEALTH_ACTIVE)
lab = {
    "qemu": [("qemu-01", Device.HEALTH_GOOD), ("qemu-02", Device.HEALTH_UNKNOWN), ("qemu-03", Device.HEALTH_BAD)],
    "labwire-serial-board": [("serial-01", Device.HEALTH_GOOD)],
    "beaglebone-black": [("bbb-01", Device.HEALTH_RETIRED), ("bbb-02", Device.HEALTH_BAD)],
    "x86-pc-grub": [("x86-01", Device.HEALTH_MAINTENANCE)],
}
for name, devices in lab.items():
    dt = DeviceType.objects.create(name=name, display=True)
    for host, health in devices:
        Device.objects.create(hostname=host, device_type=dt, worker_host=w, health=health)
print(f"TOKEN={t.secret}")
print(f"WORKER_TOKEN={w.token}")
PY
    for d in 1 2 3; do
        printf "{%% extends 'qemu.jinja2' %%}\n{%% set no_kvm = True %%}\n{%% set mac_addr = '52:54:00:12:34:5%s' %%}\n" "$d" > "$dir/devices/qemu-0$d.jinja2"
    done
    board="$python $here/serial-board.py power"
    cat > "$dir/devices/serial-01.jinja2" <<EOF
{% extends 'labwire-serial-board.jinja2' %}
{% set connection_command = 'socat -,raw,echo=0 TCP:127.0.0.1:$console_port' %}
{% set power_on_command = '$board on $dir/board' %}
{% set power_off_command = '$board off $dir/board' %}
{% set hard_reset_command = '$board reset $dir/board' %}
EOF
    for d in bbb-01 bbb-02; do echo "{% extends 'beaglebone-black.jinja2' %}" > "$dir/devices/$d.jinja2"; done
    echo "{% extends 'x86.jinja2' %}" > "$dir/devices/x86-01.jinja2"
    # The worker's configuration, as lava-server serves it to the worker: the environment of
    # lava-run is the worker's own (it finds the private lava-dispatcher there); the board
    # downloads LAVA's overlay from this instance's file server.
    mkdir -p "/etc/lava-server/dispatcher.d/$worker"
    printf 'purge: false\noverrides:\n  LC_ALL: C.UTF-8\n' > "/etc/lava-server/dispatcher.d/$worker/env.yaml"
    printf 'prefix: %s-\ndispatcher_http_ip: "127.0.0.1:%s"\n' "$worker" "$files_port" \
        > "/etc/lava-server/dispatcher.d/$worker/dispatcher.yaml"
    me="$(id -un)" group="$(id -gn)"
    spawn "$dir" gunicorn gunicorn3 lava_server.wsgi -b "127.0.0.1:$http_port" --workers 4 --timeout 60 \
        --log-file "$dir/gunicorn.log"
    spawn "$dir" publisher lava-server manage lava-publisher --host 127.0.0.1 --port "$ws" \
        --user "$me" --group "$group" --level DEBUG --log-file "$dir/publisher.log"
    spawn "$dir" scheduler lava-server manage lava-scheduler --event-url "tcp://127.0.0.1:$events" \
        --user "$me" --group "$group" --level DEBUG --log-file "$dir/scheduler.log"
    mkdir -p /var/lib/lava/dispatcher/tmp
    spawn "$dir" files "$python" -m http.server --bind 127.0.0.1 --directory /var/lib/lava/dispatcher "$files_port"
    spawn "$dir" board "$python" "$here/serial-board.py" serve "$dir/board" "$dir/board-root"
    for _ in $(seq 1 100); do [ -L "$dir/board/tty" ] && break; sleep 0.1; done
    cat > "$dir/ser2net.yaml" <<EOF
%YAML 1.1
---
connection: &serial01
    accepter: tcp,127.0.0.1,$console_port
    connector: serialdev,$(readlink -f "$dir/board/tty"),115200n81,local
    options:
      kickolduser: true
EOF
    spawn "$dir" ser2net ser2net -n -u -c "$dir/ser2net.yaml" -P "$dir/ser2net.run.pid"
    worker_token="$(sed -n 's/^WORKER_TOKEN=//p' "$dir/init.out")"
    PYTHONPATH="$dispatcher/usr/lib/python3/dist-packages:$dispatcher/stub" \
        PATH="$dispatcher/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        spawn "$dir" worker "$python" "$dispatcher/usr/bin/lava-worker" --name "$worker" \
        --url "http://127.0.0.1:$http_port/" --ws-url "http://127.0.0.1:$ws/ws/" \
        --token "$worker_token" --worker-dir "$dir/worker" --ping-interval 1 \
        --job-log-interval 1 --log-file "$dir/worker.log" --level DEBUG
    for _ in $(seq 1 150); do
        if "$python" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
            "http://127.0.0.1:$http_port/api/v0.2/system/version/" >/dev/null 2>&1; then
            {
                echo "URL=http://127.0.0.1:$http_port/"
                grep '^TOKEN=' "$dir/init.out"
                echo "WORKER=$worker"
                echo "WORKER_TOKEN=$worker_token"
                echo "BOARD_STATE=$dir/board"
            } > "$dir/server.env"
            exit 0
        fi
        sleep 0.2
    done
    echo "lava-server did not answer on 127.0.0.1:$http_port; see $dir/gunicorn.log" >&2
    exit 1
    ;;
stop)
    dir="$(cd "$2" && pwd)"
    # The worker's jobs first: lava-run (a child of the worker, leading its own process
    # group) and what it started (QEMU).
    if [ -f "$dir/worker.pid" ]; then
        for job in $(ps -o pid= --ppid "$(cat "$dir/worker.pid")" 2>/dev/null); do
            kill -KILL -- "-$job" 2>/dev/null || true
        done
    fi
    groups=()
    for p in worker ser2net board files scheduler publisher gunicorn; do
        [ -f "$dir/$p.pid" ] && groups+=("$(cat "$dir/$p.pid")")
    done
    for g in "${groups[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
    # lava-publisher drains its queue for a while after SIGTERM: 3 s, then SIGKILL.
    for _ in $(seq 1 30); do
        alive=0
        for g in "${groups[@]}"; do kill -0 -- "-$g" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for g in "${groups[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
    if [ -d "$dir/pgdata" ]; then
        as_pg "$pgbin/pg_ctl" -D "$dir/pgdata" -m immediate stop >/dev/null 2>&1 || true
    fi
    if [ -f "$dir/worker.name" ]; then
        worker="$(cat "$dir/worker.name")"
        case "$worker" in
        labwire-?*)
            rm -rf "/etc/lava-server/dispatcher.d/$worker"
            rm -rf /var/lib/lava/dispatcher/tmp/"$worker"-*
            ;;
        esac
    fi
    ;;
*)
    echo "usage: $0 template DIR | start DIR | stop DIR" >&2
    exit 2
    ;;
esac
