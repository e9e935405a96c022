"""Does a LoRA adapter fit a base checkpoint? Answered from the files, before any weights load.

The base model is built on torch's meta device (module names and shapes, no memory, no weights
read), the adapter's config is applied to it the way loading applies it (transformers-4.x names
included), and the weight names and shapes peft would expect are compared with the ones in the
adapter file's header. So `ingest`, `serve`, `search` and `eval` refuse an adapter of another
family, hidden size or rank in seconds, on the driver, instead of failing inside Ray's embedding
actors or on the first request.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from dermground.platform.next_step import next_command

# Named as flag and setting: search has neither flag and takes both folders from the settings.
NEXT_STEP = ("point --model or DERMGROUND_MODEL_DIR at the base the adapter was trained on (or --adapter or "
             "DERMGROUND_ADAPTER_DIR at an adapter trained on this base), or leave the adapter out (no --adapter, "
             "DERMGROUND_ADAPTER_DIR unset) to use the base model alone")


def require_adapter_fits(adapter_dir: str | Path, model_dir: str | Path, warn_unrecorded: bool = True) -> None:
    """BackboneError naming the adapter folder, the base and what does not fit, unless the adapter's files are
    whole and it fits the (checked) base in `model_dir`: its shapes, and the base weights it records being
    trained on (a warning is logged when it records none, unless `warn_unrecorded` is False)."""
    from dermground.platform.model.base_weights import base_mismatch, warn_if_unrecorded
    from dermground.platform.model.checkpoint_check import adapter_problems
    from dermground.platform.model.loading import BackboneError

    files = adapter_problems(adapter_dir)
    if files:
        raise BackboneError(f"adapter {adapter_dir}: {files[0]}")
    problem = adapter_fit_problem(adapter_dir, model_dir) or base_mismatch(adapter_dir, model_dir)
    if problem is None:
        if warn_unrecorded:
            warn_if_unrecorded(adapter_dir, model_dir)
    else:
        trained_on = json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("base_model_name_or_path")
        raise BackboneError(f"adapter {adapter_dir} does not fit base model {model_dir}: {problem}"
                            + (f". The adapter records its base as {trained_on}" if trained_on else "")
                            + f". Next: {NEXT_STEP}")


def adapter_fit_problem(adapter_dir: str | Path, model_dir: str | Path) -> str | None:
    """Why the adapter in `adapter_dir` cannot be applied to the checked base in `model_dir`, or None.

    The adapter's files must have been checked (checkpoint_check.adapter_problems) and the base's
    (checkpoint_check.file_problems).
    """
    from dermground.platform.model.families import family_for

    adapter_path, model_path = Path(adapter_dir), Path(model_dir)
    kind = _prompt_learning_kind(adapter_path)
    if kind is not None:
        return (f"it is a {kind} adapter, which adds virtual tokens to every prompt; dermground embeds with adapters "
                "that change the layers' weights (LoRA, and peft's LoHa, LoKr, IA3), because its shared-prefix "
                "embedder reuses the prompt's cache across questions. "
                f"Train a LoRA adapter (`{next_command('train --data DIR --out ADAPTER')}`)")
    family = family_for(json.loads((model_path / "config.json").read_text()).get("model_type"))
    config = family.config_class.from_pretrained(model_path, local_files_only=True)
    with torch.device("meta"):
        skeleton = family.model_class(config)
    # A stored full weight of the model itself (peft's save_embedding_layers: embed_tokens, lm_head) loads too.
    model_weights = {f"base_model.model.{name}": tuple(p.shape) for name, p in skeleton.state_dict().items()}
    expected, why_not = _expected_shapes(adapter_path, skeleton)
    if why_not is not None:
        return why_not
    stored = _stored_shapes(adapter_path)
    missing = sorted(set(expected) - set(stored))
    unused = sorted(set(stored) - set(expected) - set(model_weights))
    wrong = [(name, stored[name], want) for name, want in ({**model_weights, **expected}).items()
             if name in stored and stored[name] != want]
    text = config.get_text_config()
    described = f"{family.label}, hidden size {text.hidden_size}, {text.num_hidden_layers} layers"
    if wrong:  # first: a shape says more (rank, hidden size) than a name
        name, have, want = wrong[0]
        return (f"{len(wrong)} stored weights have other shapes than the base ({described}) needs, e.g. {name} is "
                f"{list(have)} in the file but {list(want)} for this base: "
                + _shape_reason(name, have, want, adapter_path))
    if missing or unused:
        found = [f"{len(unused)} of its {len(stored)} stored weights name no module of the base ({described}), "
                 f"e.g. {unused[:2]}"] if unused else []
        found += [f"{len(missing)} LoRA weights its adapter_config.json asks for are not in the file, "
                  f"e.g. {missing[:2]}"] if missing else []
        return (" and ".join(found)
                + ": it was trained on another model (family or number of layers) or saved from a sub-module")
    return None


def _prompt_learning_kind(adapter_path: Path) -> str | None:
    """The peft_type of a prompt-learning adapter (prefix/prompt/p-tuning), None for any other."""
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(str(adapter_path))
    return str(getattr(config.peft_type, "value", config.peft_type)) if config.is_prompt_learning else None


def _expected_shapes(adapter_path: Path, skeleton: torch.nn.Module) -> tuple[dict[str, tuple[int, ...]], str | None]:
    """{stored weight name: shape} peft expects from the adapter on `skeleton`, or why peft cannot apply it."""
    from peft import get_peft_model, get_peft_model_state_dict

    from dermground.platform.model.loading import peft_adapter_config

    try:
        with warnings.catch_warnings():  # peft's notes on the throw-away model are no news to the user
            warnings.simplefilter("ignore")
            peft_config = peft_adapter_config(adapter_path, skeleton)
            peft_model = get_peft_model(skeleton, peft_config, low_cpu_mem_usage=True)
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        targets = json.loads((adapter_path / "adapter_config.json").read_text()).get("target_modules")
        return {}, f"its target_modules {targets!r} cannot be applied to the base: {str(exc).rstrip('. ')}"
    return {name: tuple(t.shape) for name, t in get_peft_model_state_dict(peft_model).items()}, None


def _stored_shapes(adapter_path: Path) -> dict[str, tuple[int, ...]]:
    """{weight name (v5 names): shape} of an adapter file; the safetensors header only, when it is one."""
    from dermground.platform.model.loading import v5_adapter_key

    file = adapter_path / "adapter_model.safetensors"
    if file.is_file():
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    else:
        from peft.utils import load_peft_weights

        shapes = {key: tuple(t.shape) for key, t in load_peft_weights(str(adapter_path), device="cpu").items()}
    return {v5_adapter_key(key): shape for key, shape in shapes.items()}


def _shape_reason(name: str, have: tuple[int, ...], want: tuple[int, ...], adapter_path: Path) -> str:
    """The likely cause of one shape mismatch: the rank in adapter_config.json, or another base's layer sizes."""
    config = json.loads((adapter_path / "adapter_config.json").read_text())
    rank_axis = 0 if ".lora_A." in name else 1 if ".lora_B." in name else None
    if rank_axis is not None and len(have) == len(want) == 2 and have[1 - rank_axis] == want[1 - rank_axis]:
        return (f"the file was trained with rank {have[rank_axis]} where adapter_config.json says r={config.get('r')} "
                f"(or its rank_pattern): adapter_config.json does not belong to these weights, copy the pair "
                f"together from the training run")
    return "the adapter was trained on a base with other layer sizes"
