#!/usr/bin/env bash
# Stop the test cluster started by slurm-up.sh (daemons only; packages and config stay).
set -u
scancel --user="$(id -un)" 2>/dev/null || true
pkill -x slurmd 2>/dev/null; pkill -x slurmctld 2>/dev/null; pkill -x slurmdbd 2>/dev/null
mysqladmin shutdown 2>/dev/null || true
pkill -x munged 2>/dev/null
echo "slurm-down: stopped" >&2
