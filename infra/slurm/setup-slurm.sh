#!/usr/bin/env bash
# Install, configure and start a single-node SLURM cluster on this machine, for development and CI.
#
#   infra/slurm/setup-slurm.sh            install if missing, (re)write the config, start the daemons
#   infra/slurm/setup-slurm.sh --check    only verify that SLURM is up (exit 1 otherwise)
#
# Idempotent: packages are installed (after one `apt-get update`) only when missing, the munge
# key is created only when missing, the daemons are started only when not running, and restarted
# only when the written slurm.conf changed. Works without systemd (containers): the daemons are
# started directly. Needs root or sudo.
#
# Environment overrides (all optional):
#   BIOENGINE_SLURM_CPUS        CPUs of the node (default: `nproc`)
#   BIOENGINE_SLURM_MEMORY_MB   RealMemory of the node (default: MemTotal minus a margin)
#   BIOENGINE_SLURM_TIMEOUT     seconds to wait for the node to become idle (default: 60)
set -euo pipefail

CLUSTER_NAME="bioengine-dev"
PARTITION="debug"
CONF_DIR="/etc/slurm"
CONF="$CONF_DIR/slurm.conf"
LOG_DIR="/var/log/slurm"
CTLD_SPOOL="/var/spool/slurmctld"
SLURMD_SPOOL="/var/spool/slurmd"
JOBCOMP_LOG="$LOG_DIR/jobcomp.log"
MUNGE_KEY="/etc/munge/munge.key"
TIMEOUT="${BIOENGINE_SLURM_TIMEOUT:-60}"

usage() {
    sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

CHECK_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --check) CHECK_ONLY=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "setup-slurm: unknown argument '$arg' (try --help)" >&2
            exit 2
            ;;
    esac
done

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "setup-slurm: needs root or sudo" >&2
    exit 1
fi

as_root() { "${SUDO[@]}" "$@"; }
log() { echo "setup-slurm: $*" >&2; }

NODE="$(hostname -s)"

# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------
node_state() {
    # Prints the node's state (idle, mixed, allocated, down*, drained, ...) or nothing.
    sinfo --noheader --nodes="$NODE" --format='%T' 2>/dev/null | head -n1 || true
}

munge_ok() {
    command -v munge >/dev/null 2>&1 && munge -n 2>/dev/null | unmunge >/dev/null 2>&1
}

daemon_running() {
    # $1: exact process name (munged: it writes no pid file we rely on)
    pgrep -x "$1" >/dev/null 2>&1
}

pid_alive() {
    # $1: pid file, $2: daemon name. True when the pid file names a live (not zombie) $2.
    local pid
    pid="$(as_root cat "$1" 2>/dev/null || true)"
    [ -n "$pid" ] || return 1
    [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = "$2" ] || return 1
    [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" != Z* ]]
}

ctld_answers() {
    scontrol ping 2>/dev/null | grep -q 'is UP'
}

show_logs() {
    for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
        if as_root test -f "$f"; then
            echo "----- last lines of $f -----" >&2
            as_root tail -n 25 "$f" >&2 || true
        fi
    done
}

summary() {
    local version
    version="$(sinfo --version 2>/dev/null || echo 'slurm ?')"
    echo "SLURM up: $version, cluster $CLUSTER_NAME, node $NODE ($(node_state)), partition $PARTITION," \
        "$(sinfo --noheader --nodes="$NODE" --format='%c CPUs, %m MB' | head -n1), config $CONF," \
        "logs $LOG_DIR"
}

if [ "$CHECK_ONLY" -eq 1 ]; then
    if ! command -v sinfo >/dev/null 2>&1; then
        log "SLURM is not installed (no sinfo)"
        exit 1
    fi
    if ! munge_ok; then
        log "munge does not work (is munged running?)"
        exit 1
    fi
    state="$(node_state)"
    case "$state" in
        idle | mixed | allocated | completing)
            summary
            exit 0
            ;;
        *)
            log "node $NODE is not up (state: '${state:-unknown}')"
            exit 1
            ;;
    esac
fi

START=$(date +%s)

# ---------------------------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------------------------
missing=()
for pkg in slurm-wlm munge; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # Daemons are started below, by hand: keep the packages' maintainer scripts from starting them.
    as_root env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---------------------------------------------------------------------------------------------
# munge
# ---------------------------------------------------------------------------------------------
MUNGE_USER="munge"
if ! id "$MUNGE_USER" >/dev/null 2>&1; then
    MUNGE_USER="root"
fi
as_root mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
as_root chown "$MUNGE_USER:" /etc/munge /run/munge /var/lib/munge /var/log/munge
as_root chmod 0700 /etc/munge /var/lib/munge /var/log/munge
as_root chmod 0755 /run/munge
if ! as_root test -s "$MUNGE_KEY"; then
    log "creating munge key $MUNGE_KEY"
    if command -v mungekey >/dev/null 2>&1; then
        as_root mungekey --create --keyfile="$MUNGE_KEY"
    else
        as_root dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
    fi
fi
as_root chown "$MUNGE_USER:" "$MUNGE_KEY"
as_root chmod 0400 "$MUNGE_KEY"

if ! munge_ok; then
    if daemon_running munged; then
        log "munged runs but does not answer; starting another one with --force"
    fi
    if [ "$MUNGE_USER" = "root" ]; then
        as_root munged --force
    else
        as_root runuser -u "$MUNGE_USER" -- munged
    fi
    for _ in $(seq 1 50); do
        munge_ok && break
        sleep 0.1
    done
    if ! munge_ok; then
        log "munged did not start"
        show_logs
        exit 1
    fi
fi

# ---------------------------------------------------------------------------------------------
# slurm.conf
# ---------------------------------------------------------------------------------------------
CPUS="${BIOENGINE_SLURM_CPUS:-$(nproc)}"
if [ -n "${BIOENGINE_SLURM_MEMORY_MB:-}" ]; then
    MEMORY_MB="$BIOENGINE_SLURM_MEMORY_MB"
else
    total_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
    # Leave 10% (at least 512 MB) to the system: a RealMemory above what slurmd sees drains the node.
    margin=$((total_mb / 10))
    [ "$margin" -lt 512 ] && margin=512
    MEMORY_MB=$((total_mb - margin))
fi

as_root mkdir -p "$CONF_DIR" "$LOG_DIR" "$CTLD_SPOOL" "$SLURMD_SPOOL"
tmp_conf="$(mktemp)"
trap 'rm -f "$tmp_conf"' EXIT
cat >"$tmp_conf" <<EOF
# Written by infra/slurm/setup-slurm.sh: a single-node SLURM cluster for development and CI.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
# No cgroups in containers: track processes through /proc, bind no tasks.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A job that asks for no memory gets this much per CPU (not the whole node, which would block others).
DefMemPerCPU=1024
# Use the configured CPUs and memory even when they differ from what slurmd detects.
SlurmdParameters=config_overrides
ReturnToService=2
# No accounting database (slurmdbd): sacct is unavailable. Finished jobs stay visible to
# \`squeue --states=all\` for MinJobAge seconds, and every finished job is appended to the
# job completion log below.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$JOBCOMP_LOG
MinJobAge=300
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=60
SlurmdTimeout=60
InactiveLimit=0
KillWait=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEMORY_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

CONF_CHANGED=0
if ! as_root cmp -s "$tmp_conf" "$CONF" 2>/dev/null; then
    CONF_CHANGED=1
    log "writing $CONF (node $NODE: $CPUS CPUs, $MEMORY_MB MB)"
    as_root install -m 0644 "$tmp_conf" "$CONF"
fi

# ---------------------------------------------------------------------------------------------
# Daemons (started directly: no systemd)
# ---------------------------------------------------------------------------------------------
stop_by_pidfile() {
    # $1: daemon name, $2: pid file. Only ever stops the process whose pid the daemon wrote.
    local pid
    if as_root test -f "$2"; then
        pid="$(as_root cat "$2")"
        if [ -n "$pid" ] && [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = "$1" ]; then
            log "restarting $1 (pid $pid) for the new configuration"
            as_root kill "$pid"
            for _ in $(seq 1 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
        fi
    fi
}

if [ "$CONF_CHANGED" -eq 1 ]; then
    stop_by_pidfile slurmd /run/slurmd.pid
    stop_by_pidfile slurmctld /run/slurmctld.pid
fi

# A daemon that is shutting down (just stopped) still holds its pid file: give it 10 s to go.
for _ in $(seq 1 100); do
    if pid_alive /run/slurmctld.pid slurmctld && ! ctld_answers; then
        sleep 0.1
    else
        break
    fi
done
STARTS=0
ensure_daemons() {
    # Starts slurmctld and slurmd when their pid files name no live process (at most 3 times in all).
    local name
    for name in slurmctld slurmd; do
        if ! pid_alive "/run/$name.pid" "$name"; then
            if [ "$STARTS" -ge 3 ]; then
                return 0
            fi
            STARTS=$((STARTS + 1))
            log "starting $name"
            as_root "$name" || log "$name failed to start"
            # it forks, then writes its pid file: wait for that, so it is not started twice
            for _ in $(seq 1 100); do
                pid_alive "/run/$name.pid" "$name" && break
                sleep 0.1
            done
        fi
    done
}
ensure_daemons

# ---------------------------------------------------------------------------------------------
# Wait for the node
# ---------------------------------------------------------------------------------------------
deadline=$(($(date +%s) + TIMEOUT))
state=""
resumed=0
while :; do
    state="$(node_state)"
    case "$state" in
        idle | mixed | allocated | completing) break ;;
        drain* | down* | fail*)
            # A stale state from an earlier configuration: put the node back in service once.
            if [ "$resumed" -eq 0 ]; then
                log "node $NODE is '$state': resuming it"
                as_root scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
                resumed=1
            fi
            ;;
    esac
    ensure_daemons
    if [ "$(date +%s)" -ge "$deadline" ]; then
        log "node $NODE not idle after ${TIMEOUT}s (state: '${state:-unknown}')"
        sinfo -N -l >&2 2>&1 || true
        scontrol show node "$NODE" >&2 2>&1 || true
        show_logs
        exit 1
    fi
    sleep 0.5
done

summary
log "ready in $(($(date +%s) - START)) s"
