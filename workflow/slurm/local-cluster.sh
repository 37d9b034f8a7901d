#!/usr/bin/env bash
# A real single-node SLURM (with accounting and a fake GPU) for tests and demos.
#
#   workflow/slurm/local-cluster.sh start    install when missing, configure, start, wait for an idle node
#   workflow/slurm/local-cluster.sh stop     stop only the daemons this script started (pid files)
#   workflow/slurm/local-cluster.sh status   what runs, sinfo
#   workflow/slurm/local-cluster.sh env      print `export SLURM_CONF=...` for clients (eval "$(... env)")
#
# Needs root and apt (Debian 12: munge 0.5.15, slurm 22.05, mariadb 10.11). No systemd:
# every daemon is started by hand. State (configs, pid files, logs, the private MariaDB,
# slurmctld state) lives in $CTP_SLURM_STATE (default /tmp/ctp-slurm).
#
# Environment knobs (all optional):
#   CTP_SLURM_STATE      state dir                               (/tmp/ctp-slurm)
#   CTP_SLURM_PARTITION  name of the single (default) partition  (ctp)
#   CTP_SLURM_DB_PORT    private MariaDB TCP port on 127.0.0.1    (33061)
#   CTP_SLURM_PORTS      "slurmctld slurmd slurmdbd" ports        ("6817 6818 6819")
#   CTP_SLURM_GPUS       fake GPUs on the node (gres, File=/dev/null) (1)
#   CTP_SLURM_WAIT       seconds to wait for each daemon / the idle node (60)
set -euo pipefail

STATE=${CTP_SLURM_STATE:-/tmp/ctp-slurm}
PARTITION=${CTP_SLURM_PARTITION:-ctp}
DB_PORT=${CTP_SLURM_DB_PORT:-33061}
read -r CTLD_PORT SLURMD_PORT DBD_PORT <<<"${CTP_SLURM_PORTS:-6817 6818 6819}"
NGPUS=${CTP_SLURM_GPUS:-1}
WAIT=${CTP_SLURM_WAIT:-60}
CLUSTER=ctp
DB_USER=slurm
DB_PASS=ctp-local-slurm # a throw-away DB bound to 127.0.0.1, for the test cluster only

ETC=$STATE/etc
RUN=$STATE/run
LOG=$STATE/log
CONF=$ETC/slurm.conf
DB_SOCK=$RUN/mariadb.sock
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
export SLURM_CONF=$CONF

say() { printf '[local-cluster] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# ---------------------------------------------------------------- pid files
# A pid file counts only when its process is alive and has the expected name,
# so a recycled pid is never signalled.
pid_alive() { # pidfile comm-prefix
    local f=$1 name=$2 pid comm
    [[ -s $f ]] || return 1
    pid=$(tr -dc '0-9' <"$f")
    [[ -n $pid ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$name"* ]]
}

pid_of() { tr -dc '0-9' <"$1"; }

wait_for() { # seconds description command...
    local secs=$1 what=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

stop_pidfiles() { # pidfile:comm-prefix ... (signalled together, then waited for)
    local item f name pid pids=() names=()
    for item in "$@"; do
        f=${item%%:*} name=${item#*:}
        if pid_alive "$f" "$name"; then
            pid=$(pid_of "$f")
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid") names+=("$name($pid)")
        fi
        rm -f "$f"
    done
    ((${#pids[@]})) || return 0
    local t0=$EPOCHREALTIME deadline=$((SECONDS + 15)) alive=1
    while ((alive)) && ((SECONDS < deadline)); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) && sleep 0.1
    done
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null && { say "pid $pid did not stop in 15 s; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
    done
    say "stopped ${names[*]} in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}') s"
}

# ---------------------------------------------------------------- install
have_all() {
    local c
    for c in munged munge slurmctld slurmd slurmdbd sinfo sbatch sacct sacctmgr mariadbd mariadb-install-db mariadb; do
        command -v "$c" >/dev/null 2>&1 || [[ -x /usr/sbin/$c ]] || return 1
    done
}

install_packages() {
    have_all && return 0
    [[ $(id -u) -eq 0 ]] || die "SLURM packages are missing and installing them needs root"
    command -v apt-get >/dev/null || die "SLURM packages are missing and apt-get is not available"
    say "installing ${PACKAGES[*]} (apt, services kept from starting)"
    local t0=$SECONDS policy=/usr/sbin/policy-rc.d backup=""
    if [[ -e $policy ]]; then
        backup=$(mktemp /usr/sbin/.policy-rc.d.ctp.XXXXXX)
        cp -p "$policy" "$backup"
    fi
    printf '#!/bin/sh\n# written by ctp-cohort local-cluster.sh during apt-get install\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    local rc=0
    (
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >"$LOG/apt.log" 2>&1 ||
            { apt-get update -q >>"$LOG/apt.log" 2>&1 &&
                apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$LOG/apt.log" 2>&1; }
    ) || rc=$?
    if [[ -n $backup ]]; then mv -f "$backup" "$policy"; else rm -f "$policy"; fi
    ((rc == 0)) || { tail -n 30 "$LOG/apt.log" >&2; die "apt-get install failed (log: $LOG/apt.log)"; }
    say "installed in $((SECONDS - t0)) s"
    have_all || die "packages installed but a command is still missing"
}

# ---------------------------------------------------------------- config
node_line() {
    # CPUs as the kernel schedules them; memory a little under the total, so the
    # node never registers with less than configured (which would leave it INVAL).
    local cpus mem_kb mem_mb
    cpus=$(nproc --all)
    mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    mem_mb=$((mem_kb / 1024 * 95 / 100))
    local gres=""
    ((NGPUS > 0)) && gres="Gres=gpu:$NGPUS"
    echo "NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb $gres State=UNKNOWN"
}

write_configs() {
    mkdir -p "$ETC" "$RUN" "$LOG" "$STATE/ctld" "$STATE/spool"
    cat >"$CONF.new" <<EOF
# Written by workflow/slurm/local-cluster.sh: single-node test cluster, no systemd, no cgroups.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
GresTypes=gpu
MailProg=/bin/true
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
$(node_line)
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    mv -f "$CONF.new" "$CONF"
    # Fake GPUs: Slurm only needs a device path per GPU; jobs get CUDA_VISIBLE_DEVICES.
    # One GPU is /dev/null itself; several need distinct paths (links to /dev/null).
    local i dev
    : >"$ETC/gres.conf"
    for ((i = 0; i < NGPUS; i++)); do
        dev=/dev/null
        if ((NGPUS > 1)); then dev=$RUN/fake-gpu$i && ln -sfn /dev/null "$dev"; fi
        echo "NodeName=localhost Name=gpu File=$dev" >>"$ETC/gres.conf"
    done
    umask 077
    cat >"$ETC/slurmdbd.conf" <<EOF
# Written by workflow/slurm/local-cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    umask 022
    chmod 600 "$ETC/slurmdbd.conf"
}

# ---------------------------------------------------------------- daemons
munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_works; then
        pid_alive "$RUN/munged.pid" munged && say "munged: running (ours)" || say "munged: already running (not ours; left alone on stop)"
        return
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key; else
            dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; fi
    fi
    chown munge:munge /etc/munge /etc/munge/munge.key
    chmod 700 /etc/munge
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    wait_for "$WAIT" munged munge_works || die "munged did not answer (see /var/log/munge/munged.log)"
    cp /run/munge/munged.pid "$RUN/munged.pid"
    say "munged: started (pid $(pid_of "$RUN/munged.pid"))"
}

db() { mariadb --no-defaults --socket="$DB_SOCK" -uroot "$@"; }

start_mariadb() {
    if pid_alive "$RUN/mariadb.pid" mariadbd; then say "mariadb: running"; return; fi
    if [[ ! -d $STATE/mysql/mysql ]]; then
        say "mariadb: initialising a private data dir"
        rm -rf "$STATE/mysql"
        mariadb-install-db --no-defaults --datadir="$STATE/mysql" --user=root \
            --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install.log" 2>&1 ||
            { tail -n 20 "$LOG/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    fi
    setsid mariadbd --no-defaults --datadir="$STATE/mysql" --user=root \
        --socket="$DB_SOCK" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --pid-file="$RUN/mariadb.pid" --log-error="$LOG/mariadb.err" \
        --innodb-use-native-aio=0 --innodb-buffer-pool-size=64M --innodb-log-file-size=16M \
        --performance-schema=OFF </dev/null >/dev/null 2>&1 &
    wait_for "$WAIT" mariadb mariadb-admin --no-defaults --socket="$DB_SOCK" -uroot ping ||
        { tail -n 20 "$LOG/mariadb.err" >&2; die "mariadb did not start"; }
    wait_for 10 "mariadb pid" test -s "$RUN/mariadb.pid"
    db -e "CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
           CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
           GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'127.0.0.1';
           GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'localhost';
           FLUSH PRIVILEGES;"
    say "mariadb: started (pid $(pid_of "$RUN/mariadb.pid"), 127.0.0.1:$DB_PORT)"
}

start_slurmdbd() {
    if pid_alive "$RUN/slurmdbd.pid" slurmdbd; then say "slurmdbd: running"; return; fi
    slurmdbd # daemonizes; finds slurmdbd.conf beside $SLURM_CONF
    wait_for "$WAIT" slurmdbd sacctmgr -n -P show cluster ||
        { tail -n 20 "$LOG/slurmdbd.log" >&2; die "slurmdbd did not answer"; }
    if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
    say "slurmdbd: started (pid $(pid_of "$RUN/slurmdbd.pid"))"
}

start_slurmctld() {
    if pid_alive "$RUN/slurmctld.pid" slurmctld; then say "slurmctld: running"; return; fi
    slurmctld -f "$CONF"
    wait_for "$WAIT" slurmctld scontrol ping ||
        { tail -n 20 "$LOG/slurmctld.log" >&2; die "slurmctld did not answer"; }
    say "slurmctld: started (pid $(pid_of "$RUN/slurmctld.pid"))"
}

start_slurmd() {
    if pid_alive "$RUN/slurmd.pid" slurmd; then say "slurmd: running"; return; fi
    slurmd -f "$CONF" -N localhost
    wait_for "$WAIT" slurmd test -s "$RUN/slurmd.pid" || die "slurmd did not start (see $LOG/slurmd.log)"
    say "slurmd: started (pid $(pid_of "$RUN/slurmd.pid"))"
}

node_state() { sinfo -h -N -n localhost -o %T 2>/dev/null | head -n1; }

node_ready() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }

wait_idle() {
    local deadline=$((SECONDS + WAIT)) resumed=0 st
    until node_ready; do
        st=$(node_state)
        if [[ $st =~ ^(down|drain|drained|inval) ]] && ((resumed == 0)); then
            say "node is $st; resuming it"
            scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
            resumed=1
        fi
        if ((SECONDS >= deadline)); then
            sinfo -N -l >&2 || true
            scontrol show node localhost >&2 || true
            tail -n 20 "$LOG/slurmctld.log" "$LOG/slurmd.log" >&2 || true
            die "node not idle after $WAIT s (state: ${st:-?})"
        fi
        sleep 0.5
    done
}

link_etc_conf() {
    # Let plain `sinfo`/`sbatch` find the cluster too, unless the machine has its own config.
    if [[ ! -e /etc/slurm/slurm.conf && ! -L /etc/slurm/slurm.conf ]]; then
        mkdir -p /etc/slurm
        ln -s "$CONF" /etc/slurm/slurm.conf
        echo "$CONF" >"$RUN/etc-link"
    fi
}

unlink_etc_conf() {
    if [[ -f $RUN/etc-link && -L /etc/slurm/slurm.conf && $(readlink /etc/slurm/slurm.conf) == "$CONF" ]]; then
        rm -f /etc/slurm/slurm.conf
    fi
    rm -f "$RUN/etc-link"
}

# ---------------------------------------------------------------- commands
cmd_start() {
    local t0=$SECONDS
    mkdir -p "$ETC" "$RUN" "$LOG"
    install_packages
    local t1=$SECONDS
    if pid_alive "$RUN/slurmctld.pid" slurmctld || pid_alive "$RUN/slurmd.pid" slurmd; then
        say "cluster already running; config left as it is"
    else
        write_configs
    fi
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurmctld
    start_slurmd
    wait_idle
    link_etc_conf
    say "ready in $((SECONDS - t1)) s (+$((t1 - t0)) s install): partition '$PARTITION', node localhost $(sinfo -h -N -o '%c CPUs, %m MB, %G' | head -n1)"
    say "clients: export SLURM_CONF=$CONF"
}

cmd_stop() {
    local t0=$SECONDS
    if pid_alive "$RUN/slurmctld.pid" slurmctld; then
        # Jobs of this cluster only: they were started by it.
        scancel --quiet --full --cluster="$CLUSTER" --user="$(id -un)" >/dev/null 2>&1 || true
        scancel --quiet --full >/dev/null 2>&1 || true
    fi
    # In waves, so slurmctld can flush job records to slurmdbd, and slurmdbd to MariaDB.
    stop_pidfiles "$RUN/slurmd.pid:slurmd" "$RUN/slurmctld.pid:slurmctld"
    stop_pidfiles "$RUN/slurmdbd.pid:slurmdbd"
    stop_pidfiles "$RUN/mariadb.pid:mariadbd" "$RUN/munged.pid:munged"
    unlink_etc_conf
    say "stopped in $((SECONDS - t0)) s"
}

cmd_status() {
    local name f rc=0
    echo "state dir: $STATE"
    echo "SLURM_CONF=$CONF"
    for name in munged:munged mariadb:mariadbd slurmdbd:slurmdbd slurmctld:slurmctld slurmd:slurmd; do
        f=$RUN/${name%%:*}.pid
        if pid_alive "$f" "${name#*:}"; then
            printf '  %-10s running (pid %s)\n' "${name#*:}" "$(pid_of "$f")"
        elif [[ ${name#*:} == munged ]] && munge_works; then
            printf '  %-10s running (not started by this script)\n' munged
        else
            printf '  %-10s not running\n' "${name#*:}"
            rc=1
        fi
    done
    if ((rc == 0)); then sinfo -N -o '%N %P %T %c %m %G' || rc=1; fi
    return $rc
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
restart) cmd_stop && cmd_start ;;
env) echo "export SLURM_CONF=$CONF" ;;
*)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
