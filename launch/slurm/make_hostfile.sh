#!/bin/bash
# Write a DeepSpeed hostfile ("host slots=N" per node) for the current SLURM allocation, for the
# launcher path (one task per node starting its ranks over pdsh / ssh):
#   launch/slurm/make_hostfile.sh > hostfile
#   deepspeed --hostfile hostfile --master_addr "$(head -n1 hostfile | cut -d' ' -f1)" \
#       launch/train_nlg.py --ds_config ds_configs/zero2_bf16.json --preset ... --output_dir ...
set -euo pipefail
slots=${SLURM_GPUS_ON_NODE:-${SLURM_NTASKS_PER_NODE:-8}}
scontrol show hostnames "${SLURM_JOB_NODELIST:?not inside a SLURM allocation}" |
  while read -r host; do echo "$host slots=$slots"; done
