"""LoRA adapters (``model.lora``): train low-rank adapters on the SFT policy instead of all its weights.

With adapters on, the policy is a ``peft`` model around the SFT network, and π_ref is that same
network with its adapters switched off (:class:`AdaptersOff`): no second copy of the weights is
held. The frozen base weights are exactly the SFT policy's, so π_ref's log-probs equal those of the
SFT model loaded on its own — the reference cache is shared with full fine-tuning runs. A training
reference that follows the policy (``rollout.reference: last_iteration``) is a snapshot of the
adapters' weights swapped in for its forward (:class:`FollowingAdapters`), not a copy. Only the
adapter's weights train; a checkpoint holds the adapter (``adapter_model.safetensors`` +
``adapter_config.json``, ``PeftModel.from_pretrained(base, dir)`` loads it) and ``alignlab export``
merges it into a plain model (:func:`export_run`).

LoRA: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", W' = W + (α/r) B A.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignlab.errors import AlignlabError, ConfigError, one_line
from alignlab.schema import Config, knob

# The modules adapted by default, per ``config.model_type``: the attention projections. A name
# matches a module whose dotted path ends with it (``attn.c_proj`` is GPT-2's attention output
# projection, not the MLP's ``mlp.c_proj``). Other architectures fall back to peft's own table.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn", "attn.c_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt_neox": ["query_key_value", "attention.dense"],
}


@dataclass(frozen=True)
class LoraConfig(Config):
    r: int = knob(8, "Rank of each adapter's update B·A.", ge=1, le=4096)
    alpha: int = knob(16, "Scale of the update: W + (alpha / r)·B·A.", ge=1)
    dropout: float = knob(
        0.0,
        "Dropout on the adapter's input while training (kept when train.disable_dropout switches the rest off).",
        ge=0,
        lt=1,
    )
    target_modules: list[str] | str = knob(
        "auto",
        "Modules to adapt (a name matches a module path ending with it), or auto: the attention "
        "projections of the architecture (GPT-2: c_attn, attn.c_proj; Llama/SmolLM2: q_proj, k_proj, v_proj, o_proj).",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.target_modules, str) and self.target_modules != "auto":
            raise ConfigError("target_modules", f"expected auto or a list of module names, got {self.target_modules!r}")
        if isinstance(self.target_modules, list) and (
            not self.target_modules or not all(name.strip() for name in self.target_modules)
        ):
            raise ConfigError("target_modules", "expected at least one non-empty module name")


def target_modules(cfg: LoraConfig, model: nn.Module) -> list[str]:
    """The module names ``cfg`` adapts in ``model``: its own list, or the architecture's default.

    Raises:
        ConfigError: ``model.lora.target_modules``: auto for an architecture without a default, or a
            name that matches no module of the model.
    """
    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    if cfg.target_modules == "auto":
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

        names = DEFAULT_TARGETS.get(model_type) or PEFT_DEFAULTS.get(model_type)
        if not names:
            raise ConfigError(
                "model.lora.target_modules", f"no default for the architecture {model_type!r}: list the module names"
            )
        return list(names)
    names = list(cfg.target_modules)
    paths = [name for name, _ in model.named_modules()]
    for target in names:
        if not any(p == target or p.endswith(f".{target}") for p in paths):
            linear = sorted({p.rsplit(".", 1)[-1] for p, m in model.named_modules() if _is_linear(m)})
            what = f"this {model_type or 'model'}"
            raise ConfigError(
                "model.lora.target_modules",
                f"{target!r} matches no module of {what} (its linear layers: {', '.join(linear)})",
            )
    return names


def _is_linear(module: nn.Module) -> bool:
    """A layer LoRA can adapt: ``nn.Linear``, or GPT-2's ``Conv1D`` (a linear layer stored transposed)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def add_adapters(model: nn.Module, cfg: LoraConfig, seed: int) -> nn.Module:
    """``model`` with fresh LoRA adapters (a ``PeftModelForCausalLM``): only the adapters train.

    B starts at zero, so the adapted policy starts exactly at ``model``. The adapters' random A is
    drawn from ``seed`` under a forked RNG: the same in every run of a config, the run's RNGs untouched.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = target_modules(cfg, model)
    conv1d = any(type(m).__name__ == "Conv1D" for m in model.modules())  # GPT-2 stores W transposed
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        fan_in_fan_out=conv1d,
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]), _quiet_peft():
        torch.manual_seed(seed)
        return get_peft_model(model, peft_cfg)


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft asks transformers a deprecated question when it wraps a model: that warning is not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def with_adapters(policy: Any, cfg: LoraConfig | None, seed: int) -> Any:
    """The :class:`~alignlab.sft.Policy` whose model carries fresh adapters; ``policy`` itself without ``cfg``."""
    return policy if cfg is None else replace(policy, model=add_adapters(policy.model, cfg, seed))


def is_adapted(model: Any) -> bool:
    """Whether ``model`` is a peft model (the policy with LoRA adapters)."""
    return callable(getattr(model, "disable_adapter", None)) and callable(getattr(model, "get_base_model", None))


def trainable_parameters(model: nn.Module) -> int:
    """How many of ``model``'s parameters train (a LoRA policy's: its adapters')."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class _View(nn.Module):
    """A reference that runs the adapted policy's own network in a context (:meth:`context`): its forward,
    ``generate`` and, for the scoring core's completion-head path, its backbone.

    The policy's weights are shared, not copied. The view always runs in eval mode (no dropout),
    whatever mode training has the policy in, and restores that mode after. ``train``/``eval`` and
    ``requires_grad_`` on the view change nothing: freezing through it would freeze the policy's
    adapters too, and a reference is only ever run without gradients.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not is_adapted(model):
            raise TypeError(f"{type(self).__name__} wraps a peft model")
        self.model = model  # a submodule: parameters() and .to() see the shared weights

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """The block runs the network as this reference (here: eval mode; the policy's mode restored after)."""
        was = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self.context():
            return self.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with self.context():
            return self.model.generate(*args, **kwargs)  # type: ignore[operator]

    def train(self, mode: bool = True) -> _View:
        return self

    def requires_grad_(self, requires_grad: bool = True) -> _View:
        return self

    @property
    def config(self) -> Any:
        return self.model.get_base_model().config  # type: ignore[operator]

    @property
    def generation_config(self) -> Any:
        return self.model.get_base_model().generation_config  # type: ignore[operator]

    def get_output_embeddings(self) -> nn.Module:
        return self.model.get_base_model().get_output_embeddings()  # type: ignore[operator]

    @property
    def base_model(self) -> nn.Module:
        """The backbone (``transformer`` of GPT-2) in the view's context: the scoring core runs the LM head
        on completion tokens only, as it does for any other model (the same numbers as a copy's)."""
        return _InContext(self, self.model.get_base_model().base_model)  # type: ignore[operator]


class _InContext(nn.Module):
    """A submodule of the adapted network, run in its view's context."""

    def __init__(self, view: _View, module: nn.Module) -> None:
        super().__init__()
        self._view = [view]  # lists: not registered as submodules (no parameter is counted twice)
        self._module = [module]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self._view[0].context():
            return self._module[0](*args, **kwargs)


class AdaptersOff(_View):
    """π_ref as a view of the adapted policy: its network with the adapters disabled, i.e. the SFT
    policy's weights exactly."""

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        with super().context(), self.model.disable_adapter():  # type: ignore[operator]
            yield


class FollowingAdapters(_View):
    """The training reference that follows an adapted policy (``rollout.reference: last_iteration``)
    without a copy of the network: a snapshot of the adapters' weights, swapped into the policy for the
    reference's forward and swapped back after. :meth:`follow` takes the policy's current adapters.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.snapshot: dict[str, torch.Tensor] = {}
        self.follow()

    def adapters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if "lora_" in n}

    def follow(self) -> None:
        """The reference becomes the policy as it is now (the end of an iteration)."""
        self.snapshot = {n: p.detach().clone() for n, p in self.adapters().items()}

    def parameters_held(self) -> int:
        return sum(t.numel() for t in self.snapshot.values())

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        adapters = self.adapters()
        current = {n: p.detach().clone() for n, p in adapters.items()}
        with super().context(), torch.no_grad():
            for name, p in adapters.items():
                p.copy_(self.snapshot[name])
            try:
                yield
            finally:
                for name, p in adapters.items():
                    p.copy_(current[name])


# ---------------------------------------------------------------------------------------------
# Checkpoints and export
# ---------------------------------------------------------------------------------------------


def load_adapter_weights(model: nn.Module, path: Path) -> None:
    """Restore the adapter of the peft ``model`` from a checkpoint directory ``path``, exactly.

    Raises:
        AlignlabError: the checkpoint holds no adapter (a run saved without ``model.lora``) or one of
            another shape.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    file = path / "adapter_model.safetensors"
    if not file.is_file():
        raise AlignlabError(
            f"{path}: holds no LoRA adapter ({file.name}), but model.lora is set: it was saved by a run "
            "without adapters; resume it with the same model settings, or use another out_dir"
        )
    try:
        result = set_peft_model_state_dict(model, load_file(str(file)))
    except RuntimeError as err:  # a size mismatch: another rank
        first = one_line(err).split(" size mismatch for ")[:2]  # the first mismatch of one per weight
        raise AlignlabError(
            f"{path}: its adapter does not fit model.lora: {' size mismatch for '.join(first)}"
        ) from err
    unexpected = list(getattr(result, "unexpected_keys", None) or [])
    missing = [k for k in getattr(result, "missing_keys", None) or [] if "lora_" in k]  # the base's are not in it
    if unexpected or missing:
        which = f"weights model.lora does not: {unexpected[:3]}" if unexpected else f"no weights for {missing[:3]}"
        raise AlignlabError(f"{path}: its adapter does not fit model.lora: it has {which}")


def export_merged(source: Path, out: Path) -> Path:
    """Write ``out``: the model of ``source`` (a checkpoint or ``final/``) as a plain model, adapters merged
    into the weights (``merge_and_unload``), with its tokenizer; atomically, ``out`` marked as alignlab's.

    Raises:
        AlignlabError: the adapter's base model cannot be loaded.
    """
    import json
    import os
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignlab.io import atomic_dir
    from alignlab.ownership import MARKER

    tokenizer = AutoTokenizer.from_pretrained(source)
    if (source / "adapter_config.json").is_file():
        from peft import PeftModel

        base_path = json.loads((source / "adapter_config.json").read_text(encoding="utf-8")).get(
            "base_model_name_or_path"
        )
        try:
            base = AutoModelForCausalLM.from_pretrained(base_path)
        except (OSError, ValueError, TypeError) as err:
            raise AlignlabError(
                f"{source}: cannot load the base model its adapter was trained on ({base_path!r}, the SFT stage "
                f"in $ALIGNLAB_CACHE_DIR): {one_line(err)}; run the run's config again to rebuild it"
            ) from err
        with _quiet_peft():
            model = PeftModel.from_pretrained(base, source).merge_and_unload()
    else:  # a full fine-tuning run: its checkpoint is a plain model already
        model = AutoModelForCausalLM.from_pretrained(source)
    # an earlier export is replaced only once the new one is whole: built beside it, then swapped in
    staged = out.with_name(f".{out.name}.tmp-export") if out.exists() else out
    if staged != out:  # what an export killed half-way left
        shutil.rmtree(staged, ignore_errors=True)
    with atomic_dir(staged) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({"written_by": "alignlab", "kind": "export"}), encoding="utf-8")
    if staged != out:
        doomed = out.with_name(f".{out.name}.tmp-replaced")
        shutil.rmtree(doomed, ignore_errors=True)
        os.rename(out, doomed)
        os.rename(staged, out)
        shutil.rmtree(doomed, ignore_errors=True)
    return out
