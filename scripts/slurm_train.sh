#!/bin/bash
# Train on several nodes under Slurm: srun starts one torchrun per node, and the torchruns meet
# (c10d rendezvous) on the job's first node. Submit from the repository root, with the
# environment activated (sbatch passes it on); arguments go to train.py:
#
#   sbatch scripts/slurm_train.sh --out /shared/runs/gpt2 --data /data/fineweb_edu_10B
#   sbatch --nodes=4 scripts/slurm_train.sh --out /shared/runs/gpt2     # more nodes
#   GPUS_PER_NODE=4 sbatch --gpus-per-node=4 scripts/slurm_train.sh ... # other cards per node
#
# --out must be on a filesystem that every node sees; the code, the environment, the prepared
# data and the tokeniser must be at the same paths on every node (README.md, "Multi-node").
#SBATCH --job-name=gpt-alpha
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out

set -euo pipefail

cd "$SLURM_SUBMIT_DIR"
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)

# --kill-on-bad-exit: when one node's torchrun fails, srun ends the others at once.
srun --kill-on-bad-exit=1 torchrun \
    --nnodes="$SLURM_JOB_NUM_NODES" \
    --nproc-per-node="${GPUS_PER_NODE:-8}" \
    --rdzv-backend=c10d \
    --rdzv-endpoint="$head_node:${RDZV_PORT:-29500}" \
    --rdzv-id="$SLURM_JOB_ID" \
    train.py "$@"
