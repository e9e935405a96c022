"""Which base weights an adapter was trained on: a cheap digest of the base's weight values.

Two bases of one architecture and size (Qwen2-VL-2B and Qwen2-VL-2B-Instruct, or two seeds of the
tiny model) take each other's adapters without a single shape error, so adapter_fit cannot tell
them apart: the adapter loads and every vector is garbage. Training records the digest of its base
in the adapter's dermground_adapter.json; loading recomputes it for the base it is given and
refuses another. The digest reads a few hundred values of every weight tensor (the first row's
start), not whole files, so it costs milliseconds where hashing a 7B's files costs minutes; values
are compared as bfloat16 under the hub's tensor names, so the same weights re-saved in float32,
under transformers v5's names or in other shards give the same digest.
"""

from __future__ import annotations

import hashlib
import json
import logging
from functools import lru_cache
from pathlib import Path

# Written by `dermground train` beside the adapter (train/ray_train.py: METADATA_FILE).
ADAPTER_METADATA_FILE = "dermground_adapter.json"
BASE_WEIGHTS_KEY = "base_weights_digest"
BASE_FINGERPRINT_KEY = "base_fingerprint"  # platform/model/fingerprint.py of the base, recorded by every version
SAMPLE_VALUES = 256  # values read per tensor (the start of its first row)
# The output embedding is tied to the input one in the 2B/3B checkpoints: stored by some savers, not by others.
_SKIPPED_TENSORS = ("lm_head.weight",)

log = logging.getLogger(__name__)
_warned: set[tuple[str, str]] = set()


def base_weights_digest(model_dir: str | Path) -> str:
    """Hex digest (16 chars) of a sample of the checked checkpoint's weight values, by tensor name and shape."""
    return weights_digest(weight_files(Path(model_dir)))


def weights_digest(files: list[Path]) -> str:
    """base_weights_digest of the weights stored in `files` (safetensors or torch-pickled).

    One training run asks for its base's digest three times (the run's record, the adapter's
    metadata, the new adapter's check): the files are read once per process while their
    (path, size, mtime_ns, inode) stay the same, so a rewritten or replaced file is read again.
    """
    return _digest_of_files(tuple(_file_identity(Path(file)) for file in files))


def _file_identity(file: Path) -> tuple[str, int, int, int]:
    stat = file.stat()
    return str(file.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino


@lru_cache(maxsize=64)
def _digest_of_files(identities: tuple[tuple[str, int, int, int], ...]) -> str:
    import torch

    from dermground.platform.model.hub_layout import hub_tensor_name

    samples: dict[str, tuple[list[int], bytes]] = {}
    for file in (Path(identity[0]) for identity in identities):
        for name, shape, values in _tensor_samples(file):
            name = hub_tensor_name(name)
            if name not in _SKIPPED_TENSORS:
                samples[name] = (shape, values.to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes())
    digest = hashlib.sha256()
    for name in sorted(samples):
        shape, values = samples[name]
        digest.update(f"{name}\0{shape}\0".encode() + values)
    return digest.hexdigest()[:16]


def weight_files(path: Path) -> list[Path]:
    """The weight files transformers loads from a checkpoint folder, in its order of preference."""
    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (path / single).is_file():
            return [path / single]
        if (path / index).is_file():
            return [path / shard for shard in sorted(set(json.loads((path / index).read_text())["weight_map"].values()))]
    return sorted(path.glob("*.safetensors"))


def _tensor_samples(file: Path):  # noqa: ANN202 - yields (name, full shape, sampled values)
    """(name, shape, the start of the tensor's first row) of every tensor in a weight file, reading no more."""
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                part = handle.get_slice(name)
                shape = list(part.get_shape())
                yield name, shape, (part[_first_row(shape)] if shape else handle.get_tensor(name)).flatten()
        return
    import torch

    state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    for name, tensor in state.items():
        shape = list(tensor.shape)
        yield name, shape, (tensor[_first_row(shape)] if shape else tensor).flatten()


def _first_row(shape: list[int]) -> tuple[slice, ...]:
    return (*[slice(0, 1)] * (len(shape) - 1), slice(0, SAMPLE_VALUES))


def recorded_base_weights(adapter_dir: str | Path) -> str | None:
    """The base weights digest an adapter's dermground_adapter.json records (None: not recorded)."""
    try:
        meta = json.loads((Path(adapter_dir) / ADAPTER_METADATA_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta.get(BASE_WEIGHTS_KEY) if isinstance(meta, dict) else None


def base_mismatch(adapter_dir: str | Path, model_dir: str | Path) -> str | None:
    """Why the adapter was trained on other weights than the base in `model_dir` has, or None (same, or unrecorded)."""
    recorded = recorded_base_weights(adapter_dir)
    if recorded is None:
        return None
    actual = base_weights_digest(model_dir)
    if actual == recorded:
        return None
    return (f"it was trained on other base weights: its {ADAPTER_METADATA_FILE} records base weights {recorded} "
            f"and {model_dir} has weights {actual}. A base of the same size with other weights (Qwen2-VL-2B "
            "and Qwen2-VL-2B-Instruct, another seed, a pre-trained tower) takes the adapter without an error, and "
            "every vector would be wrong")


def warn_if_unrecorded(adapter_dir: str | Path, model_dir: str | Path) -> bool:
    """Log once per adapter and base that the adapter's base weights could not be checked; True then.

    An adapter of an older dermground records no weights digest, but its base_fingerprint: when the base's
    files are byte for byte the ones it was trained on, that checks it, and nothing is logged.
    """
    note = unchecked_base_note(adapter_dir, model_dir)
    if note is None:
        return False
    key = (str(Path(adapter_dir).resolve()), str(Path(model_dir).resolve()))
    if key not in _warned:
        _warned.add(key)
        log.warning("%s", note)
    return True


def unchecked_base_note(adapter_dir: str | Path, model_dir: str | Path) -> str | None:
    """What is left unchecked about the base weights an adapter was trained on, or None when they were checked
    (a recorded weights digest, or an older adapter's base_fingerprint that matches the base's files)."""
    if recorded_base_weights(adapter_dir) is not None:
        return None
    meta = _adapter_metadata(adapter_dir)
    recorded = meta.get(BASE_FINGERPRINT_KEY)
    if not isinstance(recorded, str):
        return unrecorded_note(adapter_dir)
    from dermground.platform.model.fingerprint import fingerprint
    from dermground.platform.model.prompts import PROMPT_VERSION

    # The fingerprint hashes the base's files (weights, config, tokenizer, image settings) and the prompt version
    # of the run: equal means the very files it was trained on; different may still be the same weights re-saved.
    actual = fingerprint(model_dir, prompt_version=str(meta.get("prompt_version", PROMPT_VERSION)))
    if actual == recorded:
        return None
    return (f"adapter {adapter_dir} was saved by an older dermground that recorded no {BASE_WEIGHTS_KEY}, and the "
            f"{BASE_FINGERPRINT_KEY} {recorded} its {ADAPTER_METADATA_FILE} records does not match the files of "
            f"{model_dir} ({actual}): the base's weights, config.json, tokenizer or image settings differ from the "
            "ones it was trained on. Only its shapes were checked; on another base of the same size (e.g. Qwen2-VL-2B "
            "instead of -Instruct) it loads and gives wrong vectors" + _named_base(adapter_dir)
            + f": make sure --model is that base (its {ADAPTER_METADATA_FILE} names base_model_dir "
            f"{meta.get('base_model_dir', '?')}), or train the adapter again: a new adapter records its base weights "
            "and is checked")


def unrecorded_note(adapter_dir: str | Path) -> str:
    """What an adapter without a recorded base weights digest (nor base fingerprint) leaves unchecked."""
    return (f"adapter {adapter_dir} does not record which base weights it was trained on (no {BASE_WEIGHTS_KEY} in "
            f"{ADAPTER_METADATA_FILE}: saved by peft or an older dermground), so only its shapes were checked; "
            "on another base of the same size (e.g. Qwen2-VL-2B instead of -Instruct) it loads and gives wrong "
            "vectors" + _named_base(adapter_dir) + ": make sure --model is that base")


def _named_base(adapter_dir: str | Path) -> str:
    try:
        named = json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        named = None
    return f". Its adapter_config.json names the base {named}" if named else ""


def _adapter_metadata(adapter_dir: str | Path) -> dict:
    try:
        meta = json.loads((Path(adapter_dir) / ADAPTER_METADATA_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}
