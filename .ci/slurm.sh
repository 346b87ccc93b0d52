#!/usr/bin/env bash
# A real single-node Slurm cluster for sr3d's tests (tests/test_slurm.py), without systemd, cgroups or accounting.
#   .ci/slurm.sh start   install Debian's Slurm and munge if missing (as root, or through sudo), write slurm.conf
#                        under $SR3D_SLURM_DIR (default /tmp/sr3d-slurm), start munged, slurmctld and slurmd, and
#                        wait until the node is idle
#   .ci/slurm.sh stop    cancel the cluster's jobs and stop the daemons this script started
# Clients (sbatch, squeue, the tests) find the cluster through SLURM_CONF=$SR3D_SLURM_DIR/slurm.conf.
set -euo pipefail
dir=${SR3D_SLURM_DIR:-/tmp/sr3d-slurm}
export SLURM_CONF=$dir/slurm.conf
sudo=$([ "$(id -u)" = 0 ] || echo sudo)
as_munge() { if [ "$(id -u)" = 0 ]; then runuser -u munge -- "$@"; else sudo -u munge "$@"; fi; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null && return
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
}

configure() {
  local host cpus
  host=$(hostname -s)
  cpus=$(( $(nproc) > 4 ? $(nproc) : 4 ))  # enough slots for two runs, a summary and a launcher on a 2-core machine
  mkdir -p "$dir"
  rm -rf "$dir/state" "$dir/spool"
  mkdir -p "$dir/state" "$dir/spool"
  for i in 0 1; do ln -sfn /dev/null "$dir/gpu$i"; done  # a fake GPU pair: --gres=gpu:N is scheduled, nothing more
  cat > "$dir/gres.conf" <<EOF
Name=gpu File=$dir/gpu[0-1]
EOF
  # cred_expire=10: a requeued job may start again after 10 s instead of 120 s (CI only)
  cat > "$dir/slurm.conf" <<EOF
ClusterName=sr3d-ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=sched_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=5
GresTypes=gpu
SlurmdParameters=config_overrides
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi  # a munged already answers
  $sudo install -d -o munge -g munge -m 0755 /run/munge
  $sudo install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  as_munge /usr/sbin/munged --pid-file=/run/munge/munged.pid
  echo /run/munge/munged.pid > "$dir/munged.started"  # ours to stop
}

start() {
  if alive "$dir/slurmctld.pid" && alive "$dir/slurmd.pid"; then echo "slurm: already running ($SLURM_CONF)"; return; fi
  install_packages
  configure
  start_munge
  $sudo slurmctld -f "$SLURM_CONF"
  $sudo slurmd -f "$SLURM_CONF"
  for _ in $(seq 100); do
    [ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && { echo "slurm: node idle ($SLURM_CONF)"; return; }
    sleep 0.2
  done
  echo "slurm: the node did not become idle within 20 s; see $dir/slurmctld.log and $dir/slurmd.log" >&2
  sinfo >&2 || true
  exit 1
}

stop_pid() {  # stop the daemon whose pid file is $1, waiting until it has gone
  alive "$1" || return 0
  local pid
  pid=$(cat "$1")
  $sudo kill "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  $sudo kill -9 "$pid" 2>/dev/null || true
}

stop() {
  if alive "$dir/slurmctld.pid"; then
    scancel --full $(squeue -h -o %A | sort -u) 2>/dev/null || true  # the jobs end before the daemons that run them
    for _ in $(seq 50); do [ -z "$(squeue -h -o %A)" ] && break; sleep 0.2; done
  fi
  stop_pid "$dir/slurmd.pid"
  stop_pid "$dir/slurmctld.pid"
  if [ -f "$dir/munged.started" ]; then stop_pid "$(cat "$dir/munged.started")"; rm -f "$dir/munged.started"; fi
  echo "slurm: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
