#!/usr/bin/env bash
# A one-machine SLURM cluster for trying (and testing) the SLURM path: `make slurm-up` / `make slurm-down`.
#
#   tools/slurm.sh up     install (apt) and start munge, slurmctld and slurmd: one node with this
#                         machine's cores and memory, partition `debug`; a second `up` finds it running
#   tools/slurm.sh down   stop the daemons (the packages stay)
#   tools/slurm.sh status one line: running or not
#
# Its config, state and logs live in .slurm/ (git-ignored); /etc/slurm/slurm.conf is a link to
# .slurm/slurm.conf, so sbatch, srun and squeue find the cluster without SLURM_CONF. Needs root
# and apt-get (Debian's slurmctld, slurmd, slurm-client, munge).
set -euo pipefail
cd "$(dirname "$0")/.."
STATE="$PWD/.slurm"
CONF="$STATE/slurm.conf"

fail() { echo "error: $*" >&2; exit 1; }

running() { sinfo -h -o %P >/dev/null 2>&1 && [ -n "$(sinfo -h -p debug -o %T 2>/dev/null | grep -v -E 'down|drain|unk' || true)" ]; }

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
     && command -v munged >/dev/null; then
    return
  fi
  command -v apt-get >/dev/null || fail "SLURM is not installed and this machine has no apt-get to install it (install slurmctld, slurmd, slurm-client and munge yourself)"
  echo "installing slurmctld slurmd slurm-client munge (apt-get) ..."
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null \
    || fail "apt-get could not install slurmctld slurmd slurm-client munge"
}

write_config() {
  local host cpus memory
  host="$(hostname -s)"
  cpus="$(nproc)"
  memory="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"  # MB, a margin for the OS
  mkdir -p "$STATE/state" "$STATE/spool" "$STATE/log"
  cat > "$CONF.partial" <<CONFIG
# A one-machine cluster written by tools/slurm.sh: one node, partition debug.
ClusterName=stn
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONFIG
  mv "$CONF.partial" "$CONF"
  mkdir -p /etc/slurm
  if [ -e /etc/slurm/slurm.conf ] && [ "$(readlink -f /etc/slurm/slurm.conf)" != "$CONF" ]; then
    fail "/etc/slurm/slurm.conf belongs to another cluster; stop it, or move that file away, then run this again"
  fi
  ln -sfn "$CONF" /etc/slurm/slurm.conf
}

up() {
  [ "$(id -u)" = 0 ] || fail "starting a SLURM cluster needs root (its daemons run as root here); run make slurm-up as root"
  if running; then
    echo "the SLURM cluster is already running (partition debug: $(sinfo -h -p debug -o '%D node, %c CPUs, %T'))"
    return
  fi
  install
  write_config
  if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
    runuser -u munge -- /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force
  fi
  pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld -f "$CONF"
  pgrep -x slurmd >/dev/null || /usr/sbin/slurmd -f "$CONF"
  for _ in $(seq 60); do
    if running; then
      scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
      echo "the SLURM cluster is up (partition debug: $(sinfo -h -p debug -o '%D node, %c CPUs, %T')); config $CONF"
      return
    fi
    sleep 1
  done
  fail "slurmctld or slurmd did not come up within 60 s; see $STATE/log/"
}

down() {
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  for _ in $(seq 30); do pgrep -x 'slurmd|slurmctld' >/dev/null || break; sleep 1; done
  echo "the SLURM cluster is stopped (munge left running; its state stays in $STATE)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if running; then echo "running"; else echo "not running"; exit 1; fi ;;
  *) echo "usage: tools/slurm.sh up|down|status" >&2; exit 2 ;;
esac
