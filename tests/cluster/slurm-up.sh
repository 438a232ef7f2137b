#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the test suite: Debian's Slurm + munge, with
# slurmdbd accounting on a local MariaDB (submitit reads job states through sacct). Idempotent: a
# running cluster is left as it is. Needs root and Debian's package registry; exits 3 (with the
# reason on stderr) where it cannot work, so the tests can skip with that reason.
# Facts and pitfalls: ../shared/SLURM-NOTES.md of the project workspace (summarised in README).
set -uo pipefail
log() { echo "slurm-up: $*" >&2; }
fail() { log "$*"; exit 3; }

[ "$(id -u)" = 0 ] || fail "needs root (installs packages and starts daemons)"
command -v apt-get >/dev/null || fail "needs apt-get (a Debian system)"

if scontrol ping 2>/dev/null | grep -q UP && sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix|alloc"; then
  log "already up"; exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
  log "installing munge, slurm and mariadb (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || fail "apt-get update failed (no package registry?)"
  apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client slurmdbd mariadb-server \
    >/dev/null 2>&1 || fail "apt-get install of munge/slurm/mariadb failed"
fi

host=$(hostname -s)
getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >> /etc/hosts

# munge: a key, the daemon as the munge user
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create >/dev/null 2>&1 || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged || fail "munged did not start"
  sleep 1
  munge -n | unmunge >/dev/null 2>&1 || fail "munge does not work"
fi

# MariaDB on 127.0.0.1 for slurmdbd
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
if ! mysqladmin ping >/dev/null 2>&1; then
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null 2>&1
  setsid mariadbd --user=mysql --bind-address=127.0.0.1 >/var/log/mariadbd-spfde.log 2>&1 < /dev/null &
  for _ in $(seq 60); do mysqladmin ping >/dev/null 2>&1 && break; sleep 0.5; done
  mysqladmin ping >/dev/null 2>&1 || fail "MariaDB did not start"
fi
mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'spfde-ci';
  ALTER USER 'slurm'@'localhost' IDENTIFIED BY 'spfde-ci';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" || fail "could not set up the accounting database"

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
# slurm.conf first: sacctmgr reads it to find slurmdbd
cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StorageUser=slurm
StoragePass=spfde-ci
StorageLoc=slurm_acct_db
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
CONF
chmod 0600 /etc/slurm/slurmdbd.conf
node=$(slurmd -C | head -n 1)
cpus=$(echo "$node" | grep -o 'CPUs=[0-9]*' | cut -d= -f2)
mem=$(echo "$node" | grep -o 'RealMemory=[0-9]*' | cut -d= -f2)
mem=$(( mem > 1024 ? mem - 512 : mem ))
# Job ids restart at FirstJobId whenever slurmctld starts without saved state (below), but the accounting
# database keeps every earlier job: sacct -j N then sees an old job N too, and around a requeue submitit can
# read that job's COMPLETED state as the new one's and give up on it. So start past every id on record.
if scontrol ping 2>/dev/null | grep -q UP; then
  first_job_id=$(scontrol show config | awk '$1 == "FirstJobId" {print $3}')
else
  last_job_id=$(mysql -N -e "SELECT COALESCE(MAX(id_job), 0) FROM slurm_acct_db.spfde_job_table" 2>/dev/null)
  first_job_id=$(( ${last_job_id:-0} + 1 ))
fi
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=spfde
FirstJobId=${first_job_id:-1}
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( mem / cpus ))
SchedulerParameters=sched_interval=5,bf_interval=5
ReturnToService=2
KillWait=5
SlurmdParameters=config_overrides
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
if ! sacctmgr -n list cluster >/dev/null 2>&1; then
  slurmdbd || fail "slurmdbd did not start"
  for _ in $(seq 60); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
  sacctmgr -n list cluster >/dev/null 2>&1 || fail "slurmdbd does not answer"
fi

sacctmgr -i -n add cluster spfde >/dev/null 2>&1 || true

if ! scontrol ping 2>/dev/null | grep -q UP; then
  rm -rf /var/spool/slurmctld/*   # state saved under another cluster name is refused
  slurmctld || fail "slurmctld did not start"
  for _ in $(seq 60); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.5; done
  scontrol ping 2>/dev/null | grep -q UP || fail "slurmctld does not answer"
fi
pgrep -x slurmd >/dev/null 2>&1 && [ -z "$(ps -o stat= -C slurmd | grep -v Z)" ] && pkill -x slurmd
if ! ps -o stat= -C slurmd 2>/dev/null | grep -qv Z; then
  slurmd || fail "slurmd did not start"
fi
for _ in $(seq 60); do sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix|alloc" && break; sleep 0.5; done
sinfo -h -o %T | grep -qE "idle|mix|alloc" || fail "the node did not come up: $(sinfo -h -o '%T %E' 2>&1)"
log "up in ${SECONDS} s: $(sinfo -h -o '%P %D %T %C')"
