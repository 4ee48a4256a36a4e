#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to try the sbatch templates (and run dp_train's SLURM tests)
# with the real scheduler: sbatch/srun, --signal, scancel, scontrol requeue, SLURM_RESTART_COUNT.
#
#   sudo tools/slurm/local_cluster.sh start     # install (Debian/Ubuntu: slurm-wlm, munge) if needed, start
#   tools/slurm/local_cluster.sh status         # sinfo; exit 0 when this local node takes jobs
#   sudo tools/slurm/local_cluster.sh stop      # stop the daemons (the configuration stays)
#
# Needs root (the daemons, /etc/slurm) and, the first time, apt-get. No systemd: munged, slurmctld and
# slurmd are started by hand. One node (named after this host, which must resolve: ranks find their master by
# the node name) with this machine's CPUs and memory and
# no GPUs; process tracking by /proc (proctrack/linuxproc) and no task binding (task/none), so no cgroup
# setup is needed. The configuration is written to /etc/slurm/slurm.conf, which is never replaced unless
# this script wrote it (it carries the marker line below). Logs: /var/log/slurm/slurm{ctld,d}.log
# (launch failures such as a missing --output folder appear only in slurmd's log).
set -euo pipefail

MARKER="# written by dp_train tools/slurm/local_cluster.sh"
CONF=/etc/slurm/slurm.conf
STATE=/var/lib/slurm
LOGS=/var/log/slurm

fail() { echo "error: $*" >&2; exit 1; }

install_packages() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null && return
    command -v apt-get >/dev/null || fail "slurmctld/munged are not installed and apt-get is not available"
    echo "installing slurm-wlm and munge (apt-get)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null \
        || fail "apt-get install slurm-wlm munge failed"
}

write_config() {
    if [[ -e "${CONF}" ]] && ! grep -qF "${MARKER}" "${CONF}"; then
        fail "${CONF} exists and was not written by this script: not replacing it"
    fi
    local cpus memory_mb node
    node=$(hostname -s)
    getent hosts "${node}" >/dev/null || fail "this host's name ${node} does not resolve (add it to /etc/hosts)"
    cpus=$(nproc)
    memory_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))   # leave 1 GiB to the OS
    mkdir -p /etc/slurm "${STATE}/slurmctld" "${STATE}/slurmd" "${LOGS}"
    cat > "${CONF}" <<EOF
${MARKER}
ClusterName=dp-train-local
SlurmctldHost=${node}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
StateSaveLocation=${STATE}/slurmctld
SlurmdSpoolDir=${STATE}/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${LOGS}/slurmctld.log
SlurmdLogFile=${LOGS}/slurmd.log
# Seconds between SIGTERM and SIGKILL when a job is cancelled, requeued or over its limit (Slurm's default).
KillWait=30
NodeName=${node} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${memory_mb} State=UNKNOWN
PartitionName=local Nodes=${node} Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    pgrep -x munged >/dev/null && return
    [[ -s /etc/munge/munge.key ]] || mungekey --create --force >/dev/null
    chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
    mkdir -p /run/munge && chown munge:munge /run/munge
    su -s /bin/sh munge -c munged || fail "munged did not start"
}

start_daemons() {
    pgrep -x slurmctld >/dev/null || slurmctld || fail "slurmctld did not start (see ${LOGS}/slurmctld.log)"
    pgrep -x slurmd >/dev/null || slurmd || fail "slurmd did not start (see ${LOGS}/slurmd.log)"
}

wait_until_ready() {
    local i
    for i in $(seq 60); do
        if node_ready; then
            echo "local SLURM cluster ready: $(sinfo --noheader --format='%P %D node(s) %c CPUs %m MB %t')"
            return
        fi
        # A node left down or drained by an earlier run (e.g. a killed slurmd) is put back in service.
        scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true
        sleep 1
    done
    fail "the node did not come up in 60 s: $(sinfo --noheader --format='%t %E' 2>&1)"
}

stop_daemon() {  # SIGTERM; wait while it saves its state; SIGKILL after 30 s (a slurmd that never registered)
    local i
    pkill -x "$1" || return 0
    for i in $(seq 30); do
        pgrep -x "$1" >/dev/null || return 0
        sleep 1
    done
    pkill -KILL -x "$1" || true
}

node_ready() {
    [[ "$(timeout 10 sinfo --noheader --format='%t' 2>/dev/null)" =~ ^(idle|mix|alloc) ]]
}

case "${1:-}" in
    start)
        [[ $(id -u) -eq 0 ]] || fail "start needs root (daemons and /etc/slurm)"
        install_packages
        write_config
        start_munge
        start_daemons
        wait_until_ready
        ;;
    stop)
        stop_daemon slurmd
        stop_daemon slurmctld
        ;;
    status)  # exit 0 only for this script's cluster: tests never submit to a real cluster configured here
        grep -qsF "${MARKER}" "${CONF}" || fail "${CONF} is not this script's local cluster"
        sinfo
        node_ready
        ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
