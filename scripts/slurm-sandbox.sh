#!/usr/bin/env bash
# A single-node Slurm cluster with accounting, and sshd on loopback, for development and CI.
#
#   scripts/slurm-sandbox.sh up       install what is missing, start what is down (idempotent)
#   scripts/slurm-sandbox.sh status   what runs
#   scripts/slurm-sandbox.sh down     stop the daemons
#   scripts/slurm-sandbox.sh env      print the variables tests use to reach it
#
# Partitions are named like TACC's GPU queues. Jobs reach it as user `tacctest` over
# ssh -p 2222 tacctest@127.0.0.1 with the key in $SANDBOX/ssh/id_ed25519. Run as root.
set -euo pipefail

SANDBOX=${TACC_SANDBOX_DIR:-/var/lib/tacc-sandbox}
LOGS=$SANDBOX/log
SSH_PORT=${TACC_SANDBOX_SSH_PORT:-2222}
TEST_USER=tacctest
ACCOUNT=sandbox
HOST=$(hostname -s)
CONFIG_CHANGED=
PACKAGES=(slurmctld slurmd slurmdbd slurm-client munge openssh-server rsync mariadb-server)

log() { printf '[slurm-sandbox] %s\n' "$*" >&2; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2; shift 2
  for _ in $(seq $((seconds * 4))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  log "timed out waiting for $what"; return 1
}

running() { pgrep -x "$1" >/dev/null; }

install_packages() {
  local missing=()
  for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

write_configs() {
  mkdir -p "$SANDBOX"/{slurmctld,slurmd,ssh} "$LOGS" /etc/slurm
  local before
  before=$(sha256sum </etc/slurm/slurm.conf 2>/dev/null || true)
  local partitions
  # name max_nodes max_time: one line per TACC GPU queue (tacc_jobs/planning/tacc_queues.csv)
  partitions=$(cat <<PARTS
gpu-a100 8 2-00:00:00
gpu-a100-dev 2 02:00:00
gpu-a100-small 1 2-00:00:00
gpu-h100 1 2-00:00:00
rtx 16 2-00:00:00
rtx-dev 2 02:00:00
h100 4 2-00:00:00
pvc 4 2-00:00:00
gh 64 2-00:00:00
gh-dev 8 02:00:00
PARTS
)
  {
    cat <<CONF
# Written by scripts/slurm-sandbox.sh: a one-node stand-in for a TACC cluster.
ClusterName=sandbox
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$SANDBOX/slurmctld
SlurmdSpoolDir=$SANDBOX/slurmd
SlurmctldPidFile=$SANDBOX/slurmctld.pid
SlurmdPidFile=$SANDBOX/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations,limits
JobCompType=jobcomp/none
MinJobAge=5
EnforcePartLimits=ALL
KillWait=5
SchedulerParameters=sched_interval=2
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=32 RealMemory=4096 State=UNKNOWN
CONF
    while read -r name max_nodes max_time; do
      echo "PartitionName=$name Nodes=$HOST MaxNodes=$max_nodes MaxTime=$max_time State=UP$([[ $name == gpu-a100 ]] && echo ' Default=YES')"
    done <<<"$partitions"
  } >/etc/slurm/slurm.conf
  cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_sandbox_acct
PidFile=$SANDBOX/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
CONF
  chmod 600 /etc/slurm/slurmdbd.conf
  [[ $(sha256sum </etc/slurm/slurm.conf) == "$before" ]] || CONFIG_CHANGED=1
}

start_mariadb() {
  if ! mariadb -uroot -e 'SELECT 1' >/dev/null 2>&1; then
    log "starting MariaDB"
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    setsid nohup mariadbd --user=mysql >"$LOGS/mariadb.log" 2>&1 < /dev/null &
    wait_for 60 MariaDB mariadb -uroot -e 'SELECT 1'
  fi
}

start_munge() {
  if ! running munged; then
    log "starting munged"
    [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
    runuser -u munge -- setsid nohup /usr/sbin/munged >"$LOGS/munged.log" 2>&1 < /dev/null
    wait_for 20 munged munge -n
  fi
}

start_slurmdbd() {
  if ! running slurmdbd; then
    log "starting slurmdbd"
    setsid nohup /usr/sbin/slurmdbd -D >>"$LOGS/slurmdbd.out" 2>&1 < /dev/null &
  fi
  wait_for 60 slurmdbd sacctmgr -n show cluster
}

ensure_associations() {
  sacctmgr -n -P list cluster format=cluster | grep -qx sandbox || sacctmgr -i add cluster sandbox >/dev/null
  sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT" || sacctmgr -i add account "$ACCOUNT" Description=sandbox Organization=sandbox >/dev/null
  for user in root "$TEST_USER"; do
    sacctmgr -n -P list user format=user | grep -qx "$user" || sacctmgr -i add user "$user" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null
  done
}

start_slurm() {
  if [[ -n ${CONFIG_CHANGED:-} ]] && running slurmctld; then
    # some settings (AccountingStorageEnforce) take effect only when slurmctld starts; its jobs are
    # kept in its state files across the restart
    log "slurm.conf changed: restarting slurmctld"
    pkill -x slurmctld
    wait_for 60 "slurmctld to stop" bash -c "! pgrep -x slurmctld"
  fi
  if ! running slurmctld; then
    log "starting slurmctld"
    setsid nohup /usr/sbin/slurmctld -D -i >>"$LOGS/slurmctld.out" 2>&1 < /dev/null &
  fi
  wait_for 60 slurmctld scontrol ping
  if [[ -n ${CONFIG_CHANGED:-} ]] && running slurmd; then
    scontrol reconfigure  # the node daemon reads the new file too
  fi
  if ! running slurmd; then
    log "starting slurmd"
    setsid nohup /usr/sbin/slurmd -D >>"$LOGS/slurmd.out" 2>&1 < /dev/null &
  fi
  # a node an earlier run left drained or down (a crashed controller, a fault test) serves again
  if sinfo -h -n "$HOST" -o %T | grep -Eq 'drain|down'; then
    log "resuming node $HOST"
    scontrol update nodename="$HOST" state=resume || true
  fi
  wait_for 60 "node $HOST" bash -c "sinfo -h -n $HOST -o %T | grep -Eqx 'idle|mixed|allocated'"
}

ensure_test_user() {
  id "$TEST_USER" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$TEST_USER"
  usermod -p '*' "$TEST_USER"
  local home
  home=$(getent passwd "$TEST_USER" | cut -d: -f6)
  [[ -f $SANDBOX/ssh/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C "$TEST_USER@sandbox" -f "$SANDBOX/ssh/id_ed25519"
  install -d -m 700 -o "$TEST_USER" -g "$TEST_USER" "$home/.ssh" "$home/scratch"
  install -m 600 -o "$TEST_USER" -g "$TEST_USER" "$SANDBOX/ssh/id_ed25519.pub" "$home/.ssh/authorized_keys"
}

start_sshd() {
  [[ -f $SANDBOX/ssh/host_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -f "$SANDBOX/ssh/host_ed25519"
  cat >"$SANDBOX/sshd_config" <<CONF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $SANDBOX/ssh/host_ed25519
PidFile $SANDBOX/sshd.pid
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PermitRootLogin no
AllowUsers $TEST_USER
MaxSessions 64
MaxStartups 64:30:128
Subsystem sftp internal-sftp
CONF
  printf '[127.0.0.1]:%s %s\n' "$SSH_PORT" "$(cut -d' ' -f1,2 "$SANDBOX/ssh/host_ed25519.pub")" >"$SANDBOX/ssh/known_hosts"
  if ! { [[ -f $SANDBOX/sshd.pid ]] && kill -0 "$(cat "$SANDBOX/sshd.pid")" 2>/dev/null; }; then
    log "starting sshd on 127.0.0.1:$SSH_PORT"
    mkdir -p /run/sshd
    /usr/sbin/sshd -t -f "$SANDBOX/sshd_config"
    setsid nohup /usr/sbin/sshd -f "$SANDBOX/sshd_config" -E "$LOGS/sshd.log" < /dev/null
  fi
  wait_for 20 sshd ssh -p "$SSH_PORT" -i "$SANDBOX/ssh/id_ed25519" -o BatchMode=yes \
    -o UserKnownHostsFile="$SANDBOX/ssh/known_hosts" -o StrictHostKeyChecking=yes "$TEST_USER@127.0.0.1" true
}

up() {
  [[ $(id -u) -eq 0 ]] || { log "run as root"; exit 1; }
  install_packages
  write_configs
  ensure_test_user
  start_mariadb
  start_munge
  start_slurmdbd
  ensure_associations
  start_slurm
  start_sshd
  status
}

status() {
  for daemon in munged slurmdbd slurmctld slurmd; do
    printf '%-10s %s\n' "$daemon" "$(running "$daemon" && echo running || echo stopped)"
  done
  printf '%-10s %s\n' sshd "$([[ -f $SANDBOX/sshd.pid ]] && kill -0 "$(cat "$SANDBOX/sshd.pid")" 2>/dev/null && echo "running on 127.0.0.1:$SSH_PORT" || echo stopped)"
  sinfo -h -o '%P %a %D %T' 2>/dev/null | tr '\n' ';' | sed 's/;$/\n/' || true
}

down() {
  [[ -f $SANDBOX/sshd.pid ]] && kill "$(cat "$SANDBOX/sshd.pid")" 2>/dev/null || true
  for daemon in slurmd slurmctld slurmdbd munged; do pkill -x "$daemon" 2>/dev/null || true; done
  log "stopped"
}

print_env() {
  cat <<ENV
TACC_SANDBOX_HOST=127.0.0.1
TACC_SANDBOX_PORT=$SSH_PORT
TACC_SANDBOX_USER=$TEST_USER
TACC_SANDBOX_KEY=$SANDBOX/ssh/id_ed25519
TACC_SANDBOX_KNOWN_HOSTS=$SANDBOX/ssh/known_hosts
TACC_SANDBOX_ACCOUNT=$ACCOUNT
ENV
}

case "${1:-}" in
  up) up ;;
  status) status ;;
  down) down ;;
  env) print_env ;;
  *) echo "usage: $0 up|status|down|env" >&2; exit 2 ;;
esac
