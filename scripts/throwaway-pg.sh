# Sourced by the bench scripts: a throwaway PostgreSQL 15 cluster in $work/pg, reached
# on a unix socket in $work only. `pg_start [-c option ...]` starts it and sets $url
# (database postgres) and $pgport; `pg_stop` stops it (call it from the EXIT trap).
PG=/usr/lib/postgresql/15/bin
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- sh -c "$1"; else sh -c "$1"; fi; }
pg_start() {
    chmod 755 "$work"
    [ "$(id -u)" -ne 0 ] || chown postgres "$work"
    pgport=$((20000 + RANDOM % 20000))
    as_pg "$PG/initdb -D $work/pg -U postgres --auth=trust --no-sync >/dev/null"
    as_pg "$PG/pg_ctl -D $work/pg -l $work/pg.log -o \"-k $work -p $pgport -c listen_addresses='' -c fsync=off $*\" start >/dev/null"
    url="postgresql:///postgres?host=$work&port=$pgport&user=postgres"
}
pg_stop() { as_pg "$PG/pg_ctl -D $work/pg -m fast stop" >/dev/null 2>&1 || true; }
