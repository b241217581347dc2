#!/bin/bash
# The modern 124M model on one 8-GPU node, in one command: fineweb-edu's 10B-token sample
# prepared with GPT-2's tokeniser (fineweb.py), the `modern` preset trained with torchrun on
# every GPU (train.py), HellaSwag evaluated on the best checkpoint (hellaswag.py), and that
# checkpoint exported as a Hugging Face directory (python -m gpt.hf export). With the
# environment activated:
#
#   bash scripts/speedrun.sh                         # about an hour of training (README.md)
#   bash scripts/speedrun.sh --wandb                 # further arguments go to train.py
#   DRY_RUN=1 bash scripts/speedrun.sh               # print the commands, run none
#
# Rerunning it continues where it stopped: fineweb.py resumes its shards (and leaves a finished
# dataset as it is), train.py resumes RUN's newest checkpoint (a finished run trains no more),
# and the evaluation and the export are made again only when older than the best checkpoint.
# Settings from the environment: DATA (default cache/fineweb_edu_10B) and RUN (runs/speedrun),
# relative to the repository root; NPROC (default: the GPUs nvidia-smi lists).

set -euo pipefail

cd "$(dirname "$0")/.."
DATA=${DATA:-cache/fineweb_edu_10B}
RUN=${RUN:-runs/speedrun}
BEST="$RUN/checkpoints/best"
if [ -z "${NPROC:-}" ]; then
    if ! command -v nvidia-smi > /dev/null; then
        echo "error: nvidia-smi not found: set NPROC to the number of GPUs to use" >&2
        exit 2
    fi
    NPROC=$(nvidia-smi --list-gpus | wc -l)
fi

# Print a command, then run it (unless DRY_RUN=1).
step() {
    echo "+ $*"
    if [ "${DRY_RUN:-0}" != 1 ]; then
        "$@"
    fi
}

# Whether the file $1 was written after the best checkpoint was.
newer_than_best() {
    [ -e "$1" ] && [ -e "$BEST" ] && [ "$1" -nt "$BEST" ]
}

if [ "$NPROC" -lt 1 ]; then
    echo "error: no GPU: nvidia-smi lists none (set NPROC to say how many to use)" >&2
    exit 2
fi

# 1. The data: fineweb-edu sample-10BT, GPT-2's tokeniser, the first shard for validation.
step python fineweb.py --source fineweb-edu --name sample-10BT --tokeniser gpt2 --out "$DATA"

# 2. Training on every GPU: resumed when RUN holds a checkpoint.
resume=()
if compgen -G "$RUN/checkpoints/step_*" > /dev/null; then
    resume=(--resume)
fi
step torchrun --standalone --nproc_per_node="$NPROC" train.py --preset modern \
    --data "$DATA" --out "$RUN" --no-export ${resume[@]+"${resume[@]}"} "$@"

# 3. HellaSwag on the best checkpoint (all 10,042 validation items).
if ! newer_than_best "$RUN/hellaswag.json"; then
    step python hellaswag.py -m "$BEST" --dtype bfloat16 --output "$RUN/hellaswag.json"
fi

# 4. The best checkpoint as a Hugging Face directory.
if ! newer_than_best "$RUN/export/config.json"; then
    step python -m gpt.hf export "$BEST" "$RUN/export"
fi
