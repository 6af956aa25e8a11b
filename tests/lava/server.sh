#!/usr/bin/env bash
# A throw-away lava-server on 127.0.0.1 for tests/e2e/lava.rs (set up by scripts/setup.d/20-lava.sh).
#
#   server.sh template DIR          create DIR: a PostgreSQL data folder with lava-server's
#                                   database migrated (the set-up script does this once)
#   server.sh start DIR PG_PORT HTTP_PORT
#                                   copy the template into DIR, start PostgreSQL, gunicorn
#                                   (lava-server's REST API) and lava-scheduler there, add a
#                                   user with a token, a worker, device types and devices;
#                                   write DIR/server.env (URL, TOKEN, WORKER, WORKER_TOKEN)
#   server.sh stop DIR              stop what `start` started (by the pids it recorded)
#
# PostgreSQL refuses to run as root: as root, it runs as the `postgres` user.
set -euo pipefail

pgbin=/usr/lib/postgresql/15/bin
[ -x "$pgbin/postgres" ] || pgbin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
cache="${LABWIRE_CACHE:-$HOME/.cache/labwire}/lava"

as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

lava_env() {
    local dir="$1" pg_port="$2"
    export DJANGO_SETTINGS_MODULE=lava_server.settings.prod
    export DATABASE_URL="postgres://lavaserver:lavaserver@127.0.0.1:$pg_port/lavaserver"
    export SECRET_KEY="labwire-test-only-$(basename "$dir")"
    export LAVA_SETTINGS_MEDIA_ROOT="$dir/media"
    export LAVA_SETTINGS_DEVICES_PATH="$dir/devices"
    export LAVA_SETTINGS_HEALTH_CHECKS_PATH="$dir/health-checks"
}

start_pg() {
    local data="$1" port="$2" sock="$3"
    as_pg "$pgbin/pg_ctl" -D "$data" -w -t 60 -l "$sock/postgres.log" \
        -o "-p $port -k $sock -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
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
    port=$((20000 + RANDOM % 20000))
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
    dir="$2" pg_port="$3" http_port="$4"
    if [ ! -f "$cache/pgdata/.labwire-ready" ]; then
        echo "no prepared lava-server database in $cache/pgdata: run scripts/setup.d/20-lava.sh" >&2
        exit 2
    fi
    mkdir -p "$dir/media" "$dir/devices" "$dir/health-checks"
    cp -a "$cache/pgdata" "$dir/pgdata"
    if [ "$(id -u)" -eq 0 ]; then chown -R postgres "$dir/pgdata"; chown postgres "$dir"; fi
    chmod 700 "$dir/pgdata"
    start_pg "$dir/pgdata" "$pg_port" "$dir"
    cat "$dir/pgdata/postmaster.pid" | head -1 > "$dir/postgres.pid"
    lava_env "$dir" "$pg_port"
    # The lab: qemu (two Good devices, one Bad), beaglebone-black (only Retired and Bad
    # devices: not offered), x86-pc-grub (one in Maintenance: not offered).
    lava-server manage shell > "$dir/init.out" 2>&1 <<'PY'
from django.contrib.auth.models import User
from lava_scheduler_app.models import Worker, DeviceType, Device
from linaro_django_xmlrpc.models import AuthToken
u = User.objects.create_superuser("labwire", "", "labwire-test")
t = AuthToken.objects.create(user=u, description="labwire test")
w = Worker.objects.create(hostname="worker1", state=Worker.STATE_ONLINE, health=Worker.HEALTH_ACTIVE)
lab = {
    "qemu": [("qemu-01", Device.HEALTH_GOOD), ("qemu-02", Device.HEALTH_UNKNOWN), ("qemu-03", Device.HEALTH_BAD)],
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
    for d in qemu-01 qemu-02 qemu-03; do
        printf "{%% extends 'qemu.jinja2' %%}\n{%% set mac_addr = '52:54:00:12:34:5%s' %%}\n" "${d: -1}" > "$dir/devices/$d.jinja2"
    done
    for d in bbb-01 bbb-02; do echo "{% extends 'beaglebone-black.jinja2' %}" > "$dir/devices/$d.jinja2"; done
    echo "{% extends 'x86.jinja2' %}" > "$dir/devices/x86-01.jinja2"
    setsid gunicorn3 lava_server.wsgi -b "127.0.0.1:$http_port" --workers 2 --timeout 60 \
        --log-file "$dir/gunicorn.log" > "$dir/gunicorn.out" 2>&1 &
    echo $! > "$dir/gunicorn.pid"
    setsid lava-server manage lava-scheduler --level DEBUG --log-file "$dir/scheduler.log" \
        > "$dir/scheduler.out" 2>&1 &
    echo $! > "$dir/scheduler.pid"
    for _ in $(seq 1 150); do
        if python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
            "http://127.0.0.1:$http_port/api/v0.2/system/version/" >/dev/null 2>&1; then
            {
                echo "URL=http://127.0.0.1:$http_port/"
                grep '^TOKEN=' "$dir/init.out"
                echo "WORKER=worker1"
                grep '^WORKER_TOKEN=' "$dir/init.out"
            } > "$dir/server.env"
            exit 0
        fi
        sleep 0.2
    done
    echo "lava-server did not answer on 127.0.0.1:$http_port; see $dir/gunicorn.log" >&2
    exit 1
    ;;
stop)
    dir="$2"
    for p in gunicorn scheduler; do
        if [ -f "$dir/$p.pid" ]; then
            kill -TERM -- "-$(cat "$dir/$p.pid")" 2>/dev/null || true
        fi
    done
    if [ -d "$dir/pgdata" ]; then
        as_pg "$pgbin/pg_ctl" -D "$dir/pgdata" -m immediate stop >/dev/null 2>&1 || true
    fi
    ;;
*)
    echo "usage: $0 template DIR | start DIR PG_PORT HTTP_PORT | stop DIR" >&2
    exit 2
    ;;
esac
