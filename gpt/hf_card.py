"""An export's model card (README.md with the hub's YAML front matter) and its upload to the hub.

    python -m gpt.hf export runs/demo/checkpoints/best runs/demo/export --push-to-hub me/demo

The card says what a user of the directory needs, for either family (GPT-2, or the Qwen3
layout): the architecture (layers, heads, key/value heads, widths, tied or untied head) and the
exported parameter count, the tokeniser, and, when the checkpoint sits in a run directory
(RUN/checkpoints/NAME), the data and tokens trained, the validation loss, HellaSwag when measured
and the commands that reproduce the run: fineweb.py as the data's manifest records it, then
train.py with its preset and the settings that differ from it (`run_facts`, from the
checkpoint's own training record, RUN/config.json and the data manifest). HellaSwag is only in
the run's logs, which gpt/train reads (a layer below this one): the caller that can read them
fills it in (gpt/finish.py, for RUN/export). The licence is MIT, the project's own.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from gpt.checkpoint import read_meta
from gpt.cli import UserError
from gpt.config import TRAIN_PRESETS, train_preset
from gpt.data.shards import DataError, read_manifest
from gpt.data.sources import DEFAULT_NAME, FINEWEB_EDU
from gpt.data.tokeniser import Tokeniser
from gpt.fsio import write_text_atomic
from gpt.hf_hub import HUB_FILES
from gpt.model.base import LanguageModel
from gpt.runlog import read_events, run_log

CARD_FILE = "README.md"
LICENSE = "mit"  # the project's own licence
TAGS = ("text-generation", "gpt-alpha")  # and the family's model_type (gpt2, qwen3)
FAMILY_NAMES = {"gpt2": "GPT-2", "qwen3": "Qwen3 layout"}
DEFAULT_SHARD_SIZE = 100_000_000  # fineweb.py's --shard-size default
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
    manifest: dict[str, Any] | None = None
    """The training data's manifest (gpt/data/shards.py), None when its folder is not found."""


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
        train = dict(training["train_config"])
        return RunFacts(
            train=train,
            world_size=int(training["world_size"]),
            data_source=resolved.get("data", {}).get("source"),
            step=int(training["step"]),
            tokens=int(training["tokens"]),
            val_loss=training["best_val_loss"],
            hellaswag=last_hellaswag(path.parent.parent, int(training["step"])),
            manifest=data_manifest(train, path.parent.parent),
        )
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: damaged training record or {run_config} ({e})") from None


def last_hellaswag(run_dir: Path, step: int) -> float | None:
    """The run's last HellaSwag acc_norm logged at or before `step`, None if none was."""
    try:
        events = read_events(run_log(run_dir))
    except UserError:  # no log beside the checkpoint: nothing measured that the card could show
        return None
    scores = [float(v) for s, _, kind, v in events if kind == "hella" and s <= step]
    return scores[-1] if scores else None


def data_manifest(train: dict[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """The manifest of the run's data folder (`train["data"]`), None when it is not found. A
    relative path is tried from where the run was started (the run folder minus its relative
    `--out`), then from here."""
    data, out = Path(str(train.get("data"))), Path(str(train.get("out")))
    bases = [Path.cwd()]
    n = len(out.parts)
    if not out.is_absolute() and ".." not in out.parts and run_dir.parts[-n:] == out.parts:
        bases.insert(0, run_dir.parents[n - 1])
    for folder in [data] if data.is_absolute() else [base / data for base in bases]:
        try:
            return read_manifest(folder)
        except DataError:
            continue
    return None


def closest_preset(train: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The training preset from which the run's settings differ least, and those differences
    (settings in NOT_REPRODUCED left out). A preset is passed over when a setting the run left
    unset (None) is set by it, since no flag unsets a value.

    >>> closest_preset({**train_preset("demo").to_dict(), "max_steps": 900, "resume": "latest"})
    ('demo', {'max_steps': 900})
    """

    def differences(name: str) -> dict[str, Any] | None:
        base = train_preset(name).to_dict()
        diff = {k: v for k, v in train.items() if k not in NOT_REPRODUCED and v != base.get(k, v)}
        return None if None in diff.values() else diff

    candidates = [(name, differences(name)) for name in TRAIN_PRESETS]
    return min(((n, d) for n, d in candidates if d is not None), key=lambda nd: len(nd[1]))


def reproduce_command(facts: RunFacts) -> str:
    """The command that trains the run again: train.py with the closest preset and each saved
    setting that differs from it, under torchrun for several ranks.

    >>> settings = {**train_preset("gpt2").to_dict(), "max_lr": 5e-4, "model": "demo",
    ...             "resume": "latest", "plot": False}
    >>> facts = RunFacts(settings, 1, None, 10, 10240, 5.2)
    >>> reproduce_command(facts)
    'python train.py --preset gpt2 --model demo --max-lr 0.0005 --no-plot'
    """
    preset, settings = closest_preset(facts.train)
    ranks = facts.world_size
    launcher = "python" if ranks == 1 else f"torchrun --nproc_per_node={ranks}"
    return " ".join([launcher, "train.py", "--preset", preset, *flags(settings)])


def flags(settings: dict[str, Any]) -> list[str]:
    """Command-line flags of settings: `--max-lr 0.0005`, `--no-plot` for a false bool.

    >>> flags({"max_lr": 5e-4, "plot": False, "data": "my data"})
    ['--max-lr', '0.0005', '--no-plot', '--data', "'my data'"]
    """
    out: list[str] = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out += [flag, shlex.quote(str(value))]
    return out


def prepare_command(facts: RunFacts) -> str | None:
    """The fineweb.py command that prepares the run's data, as its manifest records the source,
    tokeniser and settings; None when the manifest was not found or names no source fineweb.py
    reads (data prepared by other code).

    >>> manifest = {"source": "python-docs", "tokeniser": "gpt2",
    ...             "settings": {"shard_size": 20000, "val_tokens": 8000}}
    >>> prepare_command(RunFacts({"data": "data"}, 1, None, 1, 1, None, manifest=manifest))
    'python fineweb.py --source python-docs --shard-size 20000 --val-tokens 8000 --out data'
    """
    manifest = facts.manifest
    if manifest is None:
        return None
    source = source_flags(manifest["source"])
    if source is None:
        return None
    settings = manifest.get("settings", {})
    shard_size = settings.get("shard_size", DEFAULT_SHARD_SIZE)
    extra = {
        "tokeniser": facts.train["tokeniser"] if manifest["tokeniser"] != "gpt2" else None,
        "shard_size": shard_size if shard_size != DEFAULT_SHARD_SIZE else None,
        "val_tokens": settings.get("val_tokens")
        if settings.get("val_tokens") != shard_size
        else None,
        "max_docs": settings.get("max_docs"),
        "max_tokens": settings.get("max_tokens"),
        "out": facts.train["data"],
    }
    args = flags({k: v for k, v in extra.items() if v is not None})
    return " ".join(["python", "fineweb.py", *source, *args])


def source_flags(source: str) -> list[str] | None:
    """fineweb.py's source flags from a manifest's source label (fineweb.py's source_label);
    None for a label fineweb.py does not write.

    >>> source_flags("HuggingFaceFW/fineweb-edu (sample-100BT)")
    ['--name', 'sample-100BT']
    >>> source_flags("org/corpus")
    ['--dataset', 'org/corpus']
    """
    if source == "python-docs" or Path(source).is_absolute():
        return ["--source", shlex.quote(source)]
    repo = hub_dataset(source)
    if repo is None:
        return None
    name = source.removeprefix(repo).strip().removeprefix("(").removesuffix(")")
    out = [] if repo == FINEWEB_EDU else ["--dataset", repo]
    return out + (["--name", name] if name and name != DEFAULT_NAME else [])


def hub_dataset(source: str | None) -> str | None:
    """The hub dataset id of a manifest's source ("HuggingFaceFW/fineweb-edu (sample-10BT)" ->
    "HuggingFaceFW/fineweb-edu"), None for a local or embedded corpus."""
    if source is None or source.startswith(("/", ".", "~")):
        return None
    repo = source.split()[0]
    return repo if repo.count("/") == 1 else None


def front_matter(model_type: str, facts: RunFacts | None) -> str:
    """The hub's YAML metadata block (between --- lines)."""
    lines = ["---", "library_name: transformers", f"license: {LICENSE}"]
    lines.append("pipeline_tag: text-generation")
    dataset = hub_dataset(facts.data_source) if facts is not None else None
    if dataset is not None:
        lines += ["datasets:", f"- {dataset}"]
    lines += ["tags:", *(f"- {tag}" for tag in (model_type, *TAGS)), "---"]
    return "\n".join(lines) + "\n"


def architecture_line(model: LanguageModel, model_type: str) -> str:
    """The card's architecture line: family, depth, heads, widths, head, context, vocabulary."""
    cfg = model.config
    kv = f"{cfg.kv_heads} key/value heads" + (
        " (grouped-query)" if cfg.kv_heads < cfg.n_head else ""
    )
    head = "tied to the token embedding" if cfg.tied else "untied"
    heads = f"{cfg.n_head} heads" + (f" of {cfg.head_dim}" if cfg.head_size else "")
    return (
        f"- Architecture: {FAMILY_NAMES.get(model_type, model_type)}, {cfg.n_layer} layers, "
        f"{heads}, {kv}, width {cfg.n_embd}, MLP width {cfg.mlp_size}, lm_head "
        f"{head}, context {cfg.block_size} tokens, vocabulary {cfg.vocab_size:,}"
    )


def exported_params(model: LanguageModel) -> int:
    """Parameters of the export: the model's, less the padded vocabulary rows it drops (from
    the embedding, and from an untied head)."""
    cfg = model.config
    tables = 1 if cfg.tied else 2
    return model.num_params() - (cfg.padded_vocab_size - cfg.vocab_size) * cfg.n_embd * tables


def model_card(
    model: LanguageModel,
    hf_config: dict[str, Any],
    tokeniser: Tokeniser | None,
    facts: RunFacts | None,
) -> str:
    """The README.md of an export directory whose config.json is `hf_config`."""
    model_type, hf_class = hf_config["model_type"], hf_config["architectures"][0]
    tok = (
        f"{tokeniser.name} ({tokeniser.n_vocab:,} tokens; its files are in this directory)"
        if tokeniser is not None
        else "none bundled"
    )
    lines = [
        "# GPT-α model",
        "",
        f"A {FAMILY_NAMES.get(model_type, model_type)} model trained with GPT-α, a from-scratch "
        f"PyTorch training stack, and exported as a standard `{hf_class}` (no custom code).",
        "",
        architecture_line(model, model_type),
        f"- Parameters: {exported_params(model):,}",
        f"- Tokeniser: {tok}",
    ]
    if facts is not None:
        lines += run_lines(facts)
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
        lines += reproduce_lines(facts)
    return front_matter(model_type, facts) + "\n" + "\n".join(lines) + "\n"


def run_lines(facts: RunFacts) -> list[str]:
    """The card's lines on the run: data, tokens and steps, validation loss, HellaSwag."""
    lines = [
        f"- Data: {facts.data_source or 'unknown'}",
        f"- Trained: {facts.tokens:,} tokens in {facts.step:,} steps",
    ]
    if facts.val_loss is not None:
        lines.append(f"- Validation loss: {facts.val_loss:.4f}")
    if facts.hellaswag is not None:
        lines.append(f"- HellaSwag (acc_norm): {facts.hellaswag:.4f}")
    return lines


def reproduce_lines(facts: RunFacts) -> list[str]:
    """The card's Reproduce section: the data's fineweb.py command when its manifest says it
    (else a pointer to fineweb.py), then the train.py command."""
    prepare = prepare_command(facts)
    if prepare is not None:
        intro = "Prepare the same data, then train (the data's manifest records the first command):"
    elif facts.manifest is None:
        intro = "Prepare the same data with fineweb.py (its manifest was not found here), then:"
    else:
        source = facts.manifest.get("source")
        intro = f"Prepare the same data ({source}, prepared by other code than fineweb.py), then:"
    commands = [prepare] if prepare is not None else []
    if facts.manifest is not None and facts.manifest["tokeniser"] != "gpt2":
        intro += f" the tokeniser {facts.train['tokeniser']} is this directory's tokeniser.tkn."
    commands.append(reproduce_command(facts))
    return ["", "## Reproduce", "", intro, "", "```bash", *commands, "```"]


def write_model_card(
    out_dir: Path,
    model: LanguageModel,
    hf_config: dict[str, Any],
    tokeniser: Tokeniser | None,
    facts: RunFacts | None,
) -> Path:
    """Write out_dir/README.md atomically; returns its path."""
    path = out_dir / CARD_FILE
    write_text_atomic(path, model_card(model, hf_config, tokeniser, facts))
    return path


def push_to_hub(out_dir: Path, repo_id: str, files: Sequence[str], private: bool = False) -> str:
    """Upload `files` of `out_dir` (an allow-list: the files the export wrote, nothing else in
    the folder) to the hub model repository `repo_id` in one commit; its URL. The repository is
    created if needed, private when asked (an existing public one is refused, not changed).
    The commit also deletes the repository's files that a loader reads (gpt/hf_hub.py's
    HUB_FILES) and this export did not write: an earlier push's tokeniser.tkn would win.
    No network, no token or a refusal by the hub is a UserError naming the repository."""
    import httpx2
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi()
    try:
        # None, not False: without --private the hub's default (an organisation's) decides
        api.create_repo(repo_id, exist_ok=True, private=True if private else None)
        if private and not api.repo_info(repo_id).private:
            raise UserError(
                f"{repo_id} exists and is public: --private does not change an existing "
                "repository; make it private on the hub first, or push without --private"
            )
        stale = [
            f
            for f in api.list_repo_files(repo_id)
            if f not in files and any(fnmatch(f, pattern) for pattern in HUB_FILES)
        ]
        operations = [
            *(CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(out_dir / f)) for f in files),
            *(CommitOperationDelete(path_in_repo=f) for f in stale),
        ]
        commit = api.create_commit(
            repo_id, operations, commit_message=f"Upload {out_dir.name} (gpt-alpha export)"
        )
    except (OSError, httpx2.HTTPError) as e:  # offline mode, connection, token, HTTP errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot push to the hub repository {repo_id}: {first}") from None
    return str(commit.commit_url)
