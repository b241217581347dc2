"""An export's model card (README.md with the hub's YAML front matter) and its upload to the hub.

    python -m gpt.hf export runs/demo/checkpoints/best runs/demo/export --push-to-hub me/demo

The card says what a user of the directory needs: architecture and parameter count, tokeniser,
and, when the checkpoint sits in a run directory (RUN/checkpoints/NAME), the data and tokens
trained, the validation loss, HellaSwag when measured and the command that reproduces the run
(`run_facts`, from the checkpoint's own training record and RUN/config.json). The facts that
only the run's logs hold (HellaSwag) are filled in by the caller that reads them (gpt/finish.py).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt.checkpoint import read_meta
from gpt.cli import UserError
from gpt.config import TrainConfig
from gpt.data.tokeniser import Tokeniser
from gpt.fsio import write_text_atomic
from gpt.model.gpt2 import GPT

CARD_FILE = "README.md"
LICENSE = "mit"
TAGS = ("gpt2", "text-generation", "gpt-alpha")
# Settings that do not change the trained model: left out of the reproducing command.
NOT_REPRODUCED = ("resume", "progress", "log_every", "tensorboard", "wandb", "wandb_project")


@dataclass
class RunFacts:
    """What a run directory says about how a checkpoint was trained."""

    train: dict[str, Any]
    """The run's TrainConfig as saved (TrainConfig.to_dict())."""
    world_size: int
    """Processes the run trained on (torchrun's ranks)."""
    data_source: str | None
    """The dataset's source as its manifest records it (a hub id, python-docs, a local path)."""
    step: int
    """Optimizer steps trained."""
    tokens: int
    """Training tokens consumed."""
    val_loss: float | None
    """The run's best validation loss up to this checkpoint (nats/token)."""
    hellaswag: float | None = None
    """HellaSwag acc_norm (the last measured up to this checkpoint), None if not measured."""


def run_facts(checkpoint: str | Path) -> RunFacts | None:
    """The facts of a training checkpoint inside RUN/checkpoints (its own training record and
    RUN/config.json); None for a bare model directory or a checkpoint outside a run."""
    path = Path(checkpoint).resolve()
    run_config = path.parent.parent / "config.json"
    if path.parent.name != "checkpoints" or not run_config.is_file():
        return None
    training = read_meta(path).get("training")
    if not isinstance(training, dict):
        return None
    try:
        resolved = json.loads(run_config.read_text(encoding="utf-8"))
        return RunFacts(
            train=dict(training["train_config"]),
            world_size=int(training["world_size"]),
            data_source=resolved.get("data", {}).get("source"),
            step=int(training["step"]),
            tokens=int(training["tokens"]),
            val_loss=training["best_val_loss"],
        )
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: damaged training record or {run_config} ({e})") from None


def reproduce_command(facts: RunFacts) -> str:
    """The command that trains the run again: train.py with each saved setting that differs
    from TrainConfig's defaults (the gpt2 recipe), under torchrun for several ranks.

    >>> facts = RunFacts({"max_lr": 5e-4, "model": "demo", "resume": "latest",
    ...                   "plot": False}, 1, None, 10, 10240, 5.2)
    >>> reproduce_command(facts)
    'python train.py --max-lr 0.0005 --model demo --no-plot'
    """
    defaults = TrainConfig().to_dict()
    args: list[str] = []
    for name, value in facts.train.items():
        if name in NOT_REPRODUCED or value == defaults.get(name) or value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, shlex.quote(str(value))]
    ranks = facts.world_size
    launcher = "python" if ranks == 1 else f"torchrun --nproc_per_node={ranks}"
    return " ".join([launcher, "train.py", *args])


def hub_dataset(source: str | None) -> str | None:
    """The hub dataset id of a manifest's source ("HuggingFaceFW/fineweb-edu (sample-10BT)" ->
    "HuggingFaceFW/fineweb-edu"), None for a local or embedded corpus."""
    if source is None or source.startswith(("/", ".", "~")):
        return None
    repo = source.split()[0]
    return repo if repo.count("/") == 1 else None


def front_matter(facts: RunFacts | None) -> str:
    """The hub's YAML metadata block (between --- lines)."""
    lines = ["---", "library_name: transformers", f"license: {LICENSE}"]
    lines.append("pipeline_tag: text-generation")
    dataset = hub_dataset(facts.data_source) if facts is not None else None
    if dataset is not None:
        lines += ["datasets:", f"- {dataset}"]
    lines += ["tags:", *(f"- {tag}" for tag in TAGS), "---"]
    return "\n".join(lines) + "\n"


def model_card(model: GPT, tokeniser: Tokeniser | None, facts: RunFacts | None) -> str:
    """The README.md of an export directory."""
    cfg = model.config
    tok = (
        f"{tokeniser.name} ({tokeniser.n_vocab:,} tokens; its files are in this directory)"
        if tokeniser is not None
        else "none bundled"
    )
    lines = [
        "# GPT-α model",
        "",
        "A GPT-2 model trained with GPT-α, a from-scratch PyTorch GPT-2 training stack, and",
        "exported as a standard `GPT2LMHeadModel` (no custom code).",
        "",
        f"- Architecture: GPT-2, {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, "
        f"context {cfg.block_size} tokens, vocabulary {cfg.vocab_size:,}",
        f"- Parameters: {model.num_params():,}",
        f"- Tokeniser: {tok}",
    ]
    if facts is not None:
        lines.append(f"- Data: {facts.data_source or 'unknown'}")
        lines.append(f"- Trained: {facts.tokens:,} tokens in {facts.step:,} steps")
        if facts.val_loss is not None:
            lines.append(f"- Validation loss: {facts.val_loss:.4f}")
        if facts.hellaswag is not None:
            lines.append(f"- HellaSwag (acc_norm): {facts.hellaswag:.4f}")
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'tok, model = AutoTokenizer.from_pretrained("."), '
        'AutoModelForCausalLM.from_pretrained(".")',
        'print(tok.decode(model.generate(**tok("Hello", return_tensors="pt"), '
        "max_new_tokens=32)[0]))",
        "```",
        "",
        'Replace `"."` with this directory or its hub repository id.',
    ]
    if facts is not None:
        lines += [
            "",
            "## Reproduce",
            "",
            "Prepare the same data (fineweb.py), then:",
            "",
            "```bash",
            reproduce_command(facts),
            "```",
        ]
    return front_matter(facts) + "\n" + "\n".join(lines) + "\n"


def write_model_card(
    out_dir: Path, model: GPT, tokeniser: Tokeniser | None, facts: RunFacts | None
) -> Path:
    """Write out_dir/README.md atomically; returns its path."""
    path = out_dir / CARD_FILE
    write_text_atomic(path, model_card(model, tokeniser, facts))
    return path


def push_to_hub(out_dir: Path, repo_id: str) -> str:
    """Upload `out_dir` to the hub model repository `repo_id` (created if needed); its URL.
    No network, no token or a refusal by the hub is a UserError naming the repository."""
    import httpx2
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True)
        commit = api.upload_folder(folder_path=str(out_dir), repo_id=repo_id)
    except (OSError, httpx2.HTTPError) as e:  # offline mode, connection, token, HTTP errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot push to the hub repository {repo_id}: {first}") from None
    return str(commit.commit_url)
