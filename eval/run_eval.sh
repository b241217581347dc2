#!/usr/bin/env bash
# Evaluate Hugging Face causal LMs (hub names or exported directories) with lm-evaluation-harness
# on the seed's benchmark suite, then print the results table (eval/eval_results.py).
#
#   eval/run_eval.sh RUN/export gpt2 EleutherAI/pythia-160m
#   eval/run_eval.sh --tasks hellaswag:10,mmlu:5 --limit 100 --batch-size 16 RUN/export
#   HELLASWAG_FILE=hellaswag_val.jsonl eval/run_eval.sh --tasks hellaswag_local:0 RUN/export
#
# One lm_eval run per model and task, so a failing task leaves the others' results in place.
# Results: OUTPUT_DIR/<model name, "/" -> "__">/<task>_<k>shot/.../results_<time>.json.
# Options (each also an environment variable; flags win):
#   --tasks SPEC       TASKS       task:shots,... (default: the seed's suite: 0-shot piqa,
#                                  social_iqa, openbookqa, triviaqa, truthfulqa_mc1, truthfulqa_mc2;
#                                  5-shot mmlu, winogrande, gsm8k; 25-shot arc_challenge;
#                                  10-shot hellaswag)
#   --limit N          LIMIT       items per task (testing only; scores are not comparable)
#   --batch-size B     BATCH_SIZE  lm_eval --batch_size (default 8; "auto" works on GPUs)
#   --device D         DEVICE      auto (cuda, else mps, else cpu), or cuda:1, cpu, ...
#   --dtype T          DTYPE       model dtype: auto (the checkpoint's), float32, bfloat16
#   --output-dir DIR   OUTPUT_DIR  default eval/results
#   --log-samples      LOG_SAMPLES=1  also keep every item's log-likelihoods/answers (samples_*.jsonl)
#                      PYTHON      the interpreter that has lm_eval (default: python)
# Tasks in eval/tasks (e.g. hellaswag_local, HellaSwag from a local jsonl) are always available.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SUITE="piqa:0,social_iqa:0,openbookqa:0,triviaqa:0,truthfulqa_mc1:0,truthfulqa_mc2:0"
SUITE+=",mmlu:5,winogrande:5,gsm8k:5,arc_challenge:25,hellaswag:10"
TASKS="${TASKS:-$SUITE}"
LIMIT="${LIMIT:-}"
BATCH_SIZE="${BATCH_SIZE:-8}"
DEVICE="${DEVICE:-auto}"
DTYPE="${DTYPE:-auto}"
OUTPUT_DIR="${OUTPUT_DIR:-$here/results}"
LOG_SAMPLES="${LOG_SAMPLES:-}"
PYTHON="${PYTHON:-python}"

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

fail() {
    echo "error: $1" >&2
    exit 2
}

models=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --log-samples) LOG_SAMPLES=1; shift ;;
        --tasks | --limit | --batch-size | --device | --dtype | --output-dir)
            [ $# -ge 2 ] || fail "$1 needs a value"
            case "$1" in
                --tasks) TASKS="$2" ;;
                --limit) LIMIT="$2" ;;
                --batch-size) BATCH_SIZE="$2" ;;
                --device) DEVICE="$2" ;;
                --dtype) DTYPE="$2" ;;
                --output-dir) OUTPUT_DIR="$2" ;;
            esac
            shift 2 ;;
        -*) fail "unknown option $1 (see --help)" ;;
        *) models+=("$1"); shift ;;
    esac
done

[ ${#models[@]} -gt 0 ] || fail "no model given; usage: eval/run_eval.sh [options] MODEL..."
[ -z "$LIMIT" ] || [[ "$LIMIT" =~ ^[1-9][0-9]*$ ]] || fail "--limit must be a positive integer"
[[ "$BATCH_SIZE" =~ ^([1-9][0-9]*|auto(:[0-9]+)?)$ ]] || fail "bad --batch-size $BATCH_SIZE"
IFS=',' read -r -a specs <<< "$TASKS"
for spec in "${specs[@]}"; do
    [[ "$spec" =~ ^[A-Za-z0-9_.-]+:[0-9]+$ ]] || fail "bad task spec '$spec' (want task:shots)"
done
"$PYTHON" -c "import lm_eval" 2>/dev/null || fail "$PYTHON cannot import lm_eval (pip install lm_eval)"
if [ "$DEVICE" = auto ]; then
    DEVICE="$("$PYTHON" -c 'import torch
mps = getattr(torch.backends, "mps", None)
print("cuda" if torch.cuda.is_available() else "mps" if mps and mps.is_available() else "cpu")')"
fi

# Same rule as eval_results.py: strip "./" and trailing "/", then "/" -> "__".
model_dir_name() {
    local name="${1%/}"
    name="${name#./}"
    echo "${name//\//__}"
}

failed=()
for model in "${models[@]}"; do
    model_args="pretrained=$model"
    [ "$DTYPE" = auto ] || model_args+=",dtype=$DTYPE"
    for spec in "${specs[@]}"; do
        task="${spec%%:*}"
        shots="${spec##*:}"
        out="$OUTPUT_DIR/$(model_dir_name "$model")/${task}_${shots}shot"
        echo "== $model: $task, $shots-shot -> $out" >&2
        args=(--model hf --model_args "$model_args" --tasks "$task" --num_fewshot "$shots"
              --batch_size "$BATCH_SIZE" --device "$DEVICE" --output_path "$out"
              --include_path "$here/tasks")
        [ -z "$LIMIT" ] || args+=(--limit "$LIMIT")
        [ -z "$LOG_SAMPLES" ] || args+=(--log_samples)
        if ! "$PYTHON" -m lm_eval run "${args[@]}"; then
            failed+=("$model:$task")
        fi
    done
done

"$PYTHON" "$here/eval_results.py" --results-dir "$OUTPUT_DIR" "${models[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed runs: ${failed[*]}" >&2
    exit 1
fi
