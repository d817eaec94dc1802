#!/usr/bin/env bash
# A one-machine SLURM cluster of this clone's own, for trying (and testing) the SLURM path:
# `make slurm-up` / `make slurm-down`.
#
#   tools/slurm.sh up     install (apt) and start slurmctld and slurmd (and munge where none runs): one
#                         node with this machine's cores and memory, partition `debug`; a second `up`
#                         finds it running
#   tools/slurm.sh down   stop this clone's daemons, no other (the packages and munge stay)
#   tools/slurm.sh status one line: running or not
#   tools/slurm.sh conf   the path of this cluster's config (SLURM_CONF=$(tools/slurm.sh conf) sbatch ...)
#
# A good neighbour: its config, state, logs and pid files live in .slurm/ (git-ignored); its daemons
# listen on ports of its own (STN_SLURM_PORT and the next one, else the first free pair from 26817),
# so it runs beside another cluster on the machine; `down` stops the daemons its pid files name.
# /etc/slurm/slurm.conf (STN_SLURM_LINK) is linked to its config so that sbatch, squeue and Hydra's
# launcher find the cluster without SLURM_CONF, when that path is free or a link whose target is
# gone; when it is another cluster's, this one is reached with SLURM_CONF (the tests set it).
# Needs root and apt-get (Debian's slurmctld, slurmd, slurm-client, munge).
set -euo pipefail
cd "$(dirname "$0")/.."
STATE="$PWD/.slurm"
CONF="$STATE/slurm.conf"
LINK="${STN_SLURM_LINK:-/etc/slurm/slurm.conf}"
export SLURM_CONF="$CONF"

fail() { echo "error: $*" >&2; exit 1; }

# the pid in .slurm/<daemon>.pid when that process is alive and was started with this config
own_pid() {
  local file="$STATE/$1.pid" pid
  [ -f "$file" ] || return 1
  pid="$(cat "$file" 2>/dev/null)"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$CONF" || return 1
  echo "$pid"
}

answers() {  # this cluster's controller answers, and its partition has a usable node
  [ -f "$CONF" ] || return 1
  local states
  states="$(timeout 5 sinfo -h -p debug -o %T 2>/dev/null)" || return 1
  [ -n "$(echo "$states" | grep -v -E 'down|drain|unk|^$' || true)" ]
}

running() { own_pid slurmctld >/dev/null && own_pid slurmd >/dev/null && answers; }

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
  # Debian starts its own services on install, on the default config and ports: not this cluster's
  for service in slurmctld slurmd; do
    command -v systemctl >/dev/null && systemctl stop "$service" >/dev/null 2>&1 || true
  done
}

holder() {  # what listens on TCP port $1, in words, or nothing
  ss -ltnpH "sport = :$1" 2>/dev/null | grep -o 'users:(([^)]*' | head -1 | sed 's/users:((//; s/"//g; s/,fd=[0-9]*//'
}

config_port() { [ -f "$CONF" ] && sed -n "s/^$1=//p" "$CONF" | head -1 || true; }

choose_ports() {  # sets CTLD_PORT and SLURMD_PORT
  local port
  if [ -n "${STN_SLURM_PORT:-}" ]; then
    for port in "$STN_SLURM_PORT" "$((STN_SLURM_PORT + 1))"; do
      [ -z "$(holder "$port")" ] || fail "port $port (STN_SLURM_PORT=$STN_SLURM_PORT and the next) is held by $(holder "$port"); choose another STN_SLURM_PORT"
    done
    CTLD_PORT="$STN_SLURM_PORT"
  else
    port="$(config_port SlurmctldPort)"  # the ports this clone had, while they are free
    if [ -z "$port" ] || [ -n "$(holder "$port")$(holder "$((port + 1))")" ]; then
      for port in $(seq 26817 2 26999); do
        [ -z "$(holder "$port")$(holder "$((port + 1))")" ] && break
      done
      [ -z "$(holder "$port")$(holder "$((port + 1))")" ] || fail "no free pair of ports in 26817-27000 for slurmctld and slurmd; set STN_SLURM_PORT"
    fi
    CTLD_PORT="$port"
  fi
  SLURMD_PORT="$((CTLD_PORT + 1))"
}

write_config() {
  local host cpus memory
  host="$(hostname -s)"
  cpus="$(nproc)"
  memory="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"  # MB, a margin for the OS
  mkdir -p "$STATE/state" "$STATE/spool" "$STATE/log"
  cat > "$CONF.partial" <<CONFIG
# A one-machine cluster written by tools/slurm.sh: one node, partition debug, ports of its own.
ClusterName=stn
SlurmctldHost=$host
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
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
MessageTimeout=5
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONFIG
  mv "$CONF.partial" "$CONF"
}

# The machine-wide link: taken when free, ours, or a link whose target is gone; else left to its
# cluster (LINKED=no: this one is reached with SLURM_CONF)
take_link() {
  LINKED=yes
  mkdir -p "$(dirname "$LINK")"
  if [ -L "$LINK" ] && [ ! -e "$LINK" ]; then
    echo "replacing $LINK: it linked to $(readlink "$LINK"), which no longer exists"
  elif [ -e "$LINK" ] && [ "$(readlink -f "$LINK")" != "$CONF" ]; then
    LINKED=no
    local other="$LINK"
    [ -L "$LINK" ] && other="$LINK -> $(readlink "$LINK")"
    echo "$other is another cluster's config (left as it is); this cluster is reached with SLURM_CONF=$CONF"
    return
  fi
  ln -sfn "$CONF" "$LINK"
}

start_munge() {  # one munged serves every cluster of the machine (the same key)
  if munge -n </dev/null >/dev/null 2>&1; then
    return
  fi
  mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
  runuser -u munge -- /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force
}

last_error() {  # the last error line a daemon logged, or nothing
  grep -h -i -E 'error|fatal' "$STATE/log/$1.log" 2>/dev/null | tail -1 | sed 's/^\[[^]]*\] //'
}

up() {
  [ "$(id -u)" = 0 ] || fail "starting a SLURM cluster needs root (its daemons run as root here); run make slurm-up as root"
  if running; then
    take_link
    echo "this clone's SLURM cluster is already running (partition debug: $(sinfo -h -p debug -o '%D node, %c CPUs, %T')); config $CONF"
    return
  fi
  install
  # a half-started cluster (one daemon alive) is stopped first, so both start on the same config
  stop_daemons || true
  choose_ports
  write_config
  take_link
  start_munge
  /usr/sbin/slurmctld -f "$CONF" || fail "slurmctld did not start: $(last_error slurmctld)"
  /usr/sbin/slurmd -f "$CONF" || fail "slurmd did not start: $(last_error slurmd)"
  for _ in $(seq 40); do
    if answers; then
      scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
      echo "this clone's SLURM cluster is up (partition debug: $(sinfo -h -p debug -o '%D node, %c CPUs, %T'); ports $CTLD_PORT, $SLURMD_PORT); config $CONF"
      return
    fi
    for daemon in slurmctld slurmd; do
      own_pid "$daemon" >/dev/null || fail "$daemon stopped while starting: $(last_error "$daemon") (log: $STATE/log/$daemon.log)"
    done
    sleep 1
  done
  fail "the cluster did not answer within 40 s (sinfo -p debug); its logs: $STATE/log/ ($(last_error slurmctld))"
}

stop_daemons() {  # the daemons this clone's pid files name, no other
  local pid daemon stopped=""
  for daemon in slurmd slurmctld; do
    if pid="$(own_pid "$daemon")"; then
      kill "$pid" 2>/dev/null || true
      stopped="$stopped $pid"
    fi
  done
  for pid in $stopped; do
    for _ in $(seq 30); do [ -d "/proc/$pid" ] || break; sleep 1; done
  done
  [ -n "$stopped" ]
}

down() {
  if stop_daemons; then
    echo "this clone's SLURM cluster is stopped (munge left running; its state stays in $STATE)"
  else
    echo "this clone's SLURM cluster is not running"
  fi
  if [ -L "$LINK" ] && [ "$(readlink "$LINK")" = "$CONF" ]; then
    rm -f "$LINK"  # a link left behind would point the next clone at a cluster that is gone
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if running; then echo "running (config $CONF)"; else echo "not running"; exit 1; fi ;;
  conf) echo "$CONF" ;;
  *) echo "usage: tools/slurm.sh up|down|status|conf" >&2; exit 2 ;;
esac
