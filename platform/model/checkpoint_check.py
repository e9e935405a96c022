"""Validate a checkpoint folder before a long job: every problem names the file and the fix.

Three levels, cheapest first: the files (config, weights and their shard index, tokenizer,
preprocessor), the tokenizer against the config (the vision and chat special tokens exist, are one
token each and have the ids the config expects; digits are single tokens), and the image settings
against the data's crops (how many image tokens a crop becomes). `dermground model check` runs them
all; `train`, `ingest` and `serve` run them at start; loading runs the file level.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dermground.platform.model.families import FAMILIES, REFUSED_FAMILIES
from dermground.platform.model.hub_cache import cache_snapshot

# The backbone is --model for most commands, --base for train and pretrain, and only the setting for
# the commands without either flag (search, eval retrieval).
MODEL_FLAG_NOTE = "(train and pretrain take it as --base; search, without such a flag, reads DERMGROUND_MODEL_DIR)"
INIT_HINT = ("build a local model with `dermground model init-tiny --out DIR` or point --model at a Qwen2-VL "
             f"checkpoint {MODEL_FLAG_NOTE}")
REDOWNLOAD = "download the checkpoint again (e.g. `huggingface-cli download Qwen/Qwen2-VL-2B-Instruct --local-dir DIR`)"
# Tokens the prompt is written with (platform/model/prompts.py); each must be one token.
PROMPT_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>")
PAD_TOKEN = "<|endoftext|>"
# config attribute -> the token it must name
CONFIG_TOKEN_IDS = {"image_token_id": "<|image_pad|>", "vision_start_token_id": "<|vision_start|>",
                    "vision_end_token_id": "<|vision_end|>"}
MIN_IMAGE_TOKENS = 4  # fewer merged patches than this and a crop is a few coloured squares
MAX_IMAGE_TOKENS = 16384  # beyond this one crop's prefix alone needs gigabytes of attention memory


@dataclass(frozen=True)
class CheckpointProblem:
    """One thing wrong with a checkpoint folder."""

    file: str  # file name inside the folder ("" for the folder itself)
    message: str
    fix: str

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{where}{self.message}; {self.fix}"


@dataclass
class CheckReport:
    """What `check_checkpoint` found: problems (empty = usable) and facts worth printing."""

    path: Path
    problems: list[CheckpointProblem] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """All problems, one per line, under a line naming the folder."""
        lines = [f"checkpoint {self.path} cannot be used ({len(self.problems)} problem(s)):"]
        return "\n".join(lines + [f"  - {p}" for p in self.problems])


def file_problems(model_dir: str | Path) -> list[CheckpointProblem]:
    """Problems visible from the file listing and config.json alone (no tokenizer or weights loaded).

    The first problem that makes the rest meaningless (no folder, no config) stops the listing.
    """
    path = Path(model_dir)
    if path.is_file():
        return [CheckpointProblem("", f"{path} is a file; a checkpoint is the folder of its files",
                                  f"point --model at the folder {path.parent}")]
    if not path.is_dir():
        return [CheckpointProblem("", f"model directory {path} does not exist", INIT_HINT)]
    dangling = dangling_links(path)
    if dangling:
        return [dangling]
    config_file = path / "config.json"
    if not config_file.is_file():
        # The hub cache's folder of a repo (models--Org--Name) holds the checkpoint in snapshots/<revision>/.
        snapshot = cache_snapshot(path, "config.json")
        if snapshot is not None:
            return [CheckpointProblem("config.json", f"{path} is a Hugging Face cache folder, not a checkpoint",
                                      f"{snapshot.hint('--model')} {MODEL_FLAG_NOTE}")]
        if (path / "adapter_config.json").is_file():
            base = _recorded_base(path / "adapter_config.json")
            return [CheckpointProblem("config.json", f"{path} is a LoRA adapter folder (adapter_config.json), not a base "
                                      "checkpoint", "pass it as --adapter and its base model as --model"
                                      + (f" (it records {base})" if base else "") + f" {MODEL_FLAG_NOTE}")]
        return [CheckpointProblem("config.json", f"{path} has no config.json, so it is not a Hugging Face checkpoint",
                                  INIT_HINT)]
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        return [CheckpointProblem("config.json", f"not readable JSON ({exc})", "rebuild or " + REDOWNLOAD)]
    model_type = config.get("model_type")
    if model_type in REFUSED_FAMILIES:
        return [CheckpointProblem("config.json", f"{path} holds a {model_type!r} model. {REFUSED_FAMILIES[model_type]}",
                                  f"point --model at a supported checkpoint {MODEL_FLAG_NOTE}")]
    if model_type not in FAMILIES:
        return [CheckpointProblem("config.json", f"{path} holds a {model_type!r} model; dermground needs one of "
                                  f"{tuple(FAMILIES)}",
                                  f"point --model at a Qwen2-VL or Qwen2.5-VL checkpoint {MODEL_FLAG_NOTE}")]
    problems = _weight_problems(path)
    if (path / "adapter_config.json").is_file():
        # transformers' from_pretrained applies an adapter it finds in the model's folder (peft installed):
        # --model would carry it unasked, unchecked and outside the fingerprint, or twice with --adapter.
        problems.append(CheckpointProblem(
            "adapter_config.json", f"{path} holds a LoRA adapter (adapter_config.json) beside the model's own "
            "config.json; transformers applies it whenever the folder is loaded, so every vector would silently carry "
            "that adapter (twice with --adapter, or over weights it is already merged into)",
            "move the adapter's files (adapter_config.json, adapter_model.*) to a folder of their own and pass it as "
            "--adapter, or delete them if they are merged into these weights already"))
    quantization = config.get("quantization_config")
    if isinstance(quantization, dict):
        # Loading would stop at an ImportError (gptqmodel, optimum, bitsandbytes), and even with those
        # installed, LoRA merging and the dtype/device choices assume full-precision weights.
        problems.append(CheckpointProblem(
            "config.json", f"{path} holds a {quantization.get('quant_method', 'quantized')}-quantized model; dermground "
            "embeds with, trains LoRA on and merges into full-precision (bfloat16/float32) weights",
            "point --model at the unquantized checkpoint (e.g. Qwen/Qwen2-VL-7B-Instruct, not its -AWQ or -GPTQ-Int4 "
            f"variant) {MODEL_FLAG_NOTE}"))
    if not (path / "tokenizer.json").is_file() and not (
            (path / "vocab.json").is_file() and (path / "merges.txt").is_file()):
        problems.append(CheckpointProblem("tokenizer.json", "no tokenizer files (tokenizer.json, or vocab.json + "
                                          "merges.txt); the checkpoint is incomplete",
                                          "copy tokenizer.json and tokenizer_config.json from the model's hub page "
                                          "or " + REDOWNLOAD))
    if not (path / "preprocessor_config.json").is_file() and not (path / "processor_config.json").is_file():
        problems.append(CheckpointProblem("preprocessor_config.json", "no image processor config "
                                          "(preprocessor_config.json); the checkpoint is incomplete",
                                          "copy preprocessor_config.json from the model's hub page or " + REDOWNLOAD))
    return problems


def _recorded_base(adapter_config: Path) -> str | None:
    """The base_model_name_or_path an adapter's config records, if readable."""
    try:
        return json.loads(adapter_config.read_text()).get("base_model_name_or_path") or None
    except (OSError, ValueError, AttributeError):
        return None


def _weight_problems(path: Path) -> list[CheckpointProblem]:
    stale = _single_file_beside_shards(path)
    if stale is not None:
        return [stale]
    # In transformers' order of preference: safetensors first, torch-pickled (pytorch_model*.bin) only without them.
    for index in (path / "model.safetensors.index.json", path / "pytorch_model.bin.index.json"):
        if not index.is_file():
            continue
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            return [CheckpointProblem(index.name, f"not a readable shard index ({exc})", REDOWNLOAD)]
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            return [CheckpointProblem(missing[0], f"{index.name} lists {len(shards)} weight shard(s) and "
                                      f"{len(missing)} are missing ({', '.join(missing)}); the download is incomplete",
                                      REDOWNLOAD)]
        return damaged_weight_files(path / s for s in shards)
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        return [CheckpointProblem("model.safetensors", f"{path} has a config but no weights (*.safetensors); "
                                  "the checkpoint is incomplete", REDOWNLOAD)]
    single = next((f for f in (path / "model.safetensors", path / "pytorch_model.bin") if f.is_file()), None)
    if single is None:  # transformers loads only these two names, or the shards an index lists
        found = sorted(p.name for p in (*path.glob("*.safetensors"), *path.glob("pytorch_model*.bin")))
        return [CheckpointProblem("model.safetensors.index.json", f"{path} has weight files ({', '.join(found[:3])}"
                                  f"{', ...' if len(found) > 3 else ''}) but no model.safetensors and no shard index "
                                  "(model.safetensors.index.json) that transformers loads them by; the download is "
                                  "incomplete", "fetch model.safetensors.index.json too, or " + REDOWNLOAD)]
    return damaged_weight_files([single])


def _single_file_beside_shards(path: Path) -> CheckpointProblem | None:
    """A single weight file beside a shard index that holds other weights than the shards, as a problem.

    transformers loads model.safetensors whenever it is there (pytorch_model.bin, when there are no
    safetensors) and never looks at the index: a file left from an earlier download or save beside a
    newer sharded one (or the other way round) would be loaded silently.
    """
    # transformers' order: model.safetensors, its index, pytorch_model.bin, its index; the first one there loads.
    single = next((path / name for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
                   if (path / name).is_file()), None)
    if single is None or single.name.endswith(".index.json"):
        return None
    index = next((f for f in (path / "model.safetensors.index.json", path / "pytorch_model.bin.index.json")
                  if f.is_file()), None)
    if index is None:
        return None
    damaged = damaged_weight_files([single])
    if damaged:  # the file transformers would load
        return damaged[0]
    try:
        shards = [path / s for s in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    except (OSError, ValueError, KeyError, AttributeError):
        return None  # the index's own check names it
    if not shards or not all(s.is_file() for s in shards) or damaged_weight_files(shards):
        return None  # likewise the missing or damaged shards
    from dermground.platform.model.base_weights import weights_digest

    if weights_digest([single]) == weights_digest(shards):
        return None  # the same weights twice: whichever loads
    age = "newer" if single.stat().st_mtime > max(s.stat().st_mtime for s in shards) else "older"
    return CheckpointProblem(
        single.name, f"{path} holds {single.name} beside {index.name} and its {len(shards)} shard(s) with other "
        f"weights ({single.name} is {age} than the shards); transformers loads {single.name} alone and ignores the "
        "shards, so one of the two is left over from another download or save",
        f"move the stale one out of the folder ({single.name}, or {index.name} with its shards), or download the "
        "checkpoint again into an empty folder")


def adapter_problems(adapter_dir: str | Path) -> list[CheckpointProblem]:
    """Problems of a LoRA adapter folder visible from its files alone (whether it fits a model needs the model)."""
    path = Path(adapter_dir)
    copy_again = "copy the adapter folder again"
    if path.is_file():
        return [CheckpointProblem("", f"{path} is a file; an adapter is the folder of adapter_config.json and its "
                                  "weights", f"point --adapter at the folder {path.parent}")]
    dangling = dangling_links(path) if path.is_dir() else None
    if dangling:
        return [dangling]
    if not (path / "adapter_config.json").is_file():
        return [CheckpointProblem("adapter_config.json", f"adapter directory {path} has no adapter_config.json",
                                  _adapter_elsewhere(path) or "pass the folder a training run saved "
                                  "(or leave --adapter out to use the base model)")]
    try:
        json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        return [CheckpointProblem("adapter_config.json", f"not readable JSON ({exc})", copy_again)]
    weights = path / "adapter_model.safetensors"
    if not weights.is_file() and not (path / "adapter_model.bin").is_file():
        return [CheckpointProblem(weights.name, f"adapter directory {path} has no weights (adapter_model.safetensors)",
                                  copy_again)]
    if not weights.is_file():
        return _damaged_pickled_weights(path / "adapter_model.bin", copy_again)
    return damaged_weight_files([weights], redownload=copy_again)


def _damaged_pickled_weights(file: Path, fix: str) -> list[CheckpointProblem]:
    """A torch-pickled weight file that cannot be read (a Git LFS pointer, a cut-short copy), as a problem.

    Unlike a safetensors header, a pickle says nothing about its length: it is read whole (adapters are small).
    """
    with open(file, "rb") as handle:
        if handle.read(8) == b"version ":
            return [CheckpointProblem(file.name, f"is a Git LFS pointer ({file.stat().st_size} bytes), not the weights; "
                                      "the weights cannot be read", "fetch the weights with `git lfs pull` in the "
                                      "folder, or " + fix)]
    import torch

    try:
        torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises pickle, zip, OS and runtime errors for a damaged file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [CheckpointProblem(file.name, f"cannot be read ({reason}; {file.stat().st_size:,} bytes): it is cut "
                                  "short or not a torch weight file", fix)]
    return []


def dangling_links(path: Path) -> CheckpointProblem | None:
    """The folder's files that are symbolic links to nothing, as one problem (None when there are none).

    A snapshot folder of the Hugging Face cache holds links into ../../blobs/; copied with `cp -r`, the
    links come along and point nowhere, and every file looks missing.
    """
    names = sorted(entry.name for entry in path.iterdir() if entry.is_symlink() and not entry.exists()
                   and not entry.name.endswith(".md") and not entry.name.startswith((".", "LICENSE")))  # docs
    if not names:
        return None
    target = (path / names[0]).readlink()
    return CheckpointProblem(names[0], f"{len(names)} file(s) of {path} are symbolic links to files that do not exist "
                             f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}; {names[0]} -> {target}): the "
                             "folder was copied out of the Hugging Face cache without the blobs its links point to, "
                             "or the cache was cleaned", "copy the snapshot folder with the links followed (`cp -rL "
                             "SNAPSHOT DIR`), or download it with `huggingface-cli download REPO --local-dir DIR`")


def _adapter_elsewhere(path: Path) -> str | None:
    """Where the adapter is when `path` is a folder around it (hub cache, trainer output) or a whole model."""
    snapshot = cache_snapshot(path, "adapter_config.json")
    if snapshot is not None:  # `huggingface-cli download ORG/ADAPTER` without --local-dir: models--ORG--ADAPTER/
        return f"it is a Hugging Face cache folder: {snapshot.hint('--adapter')}"
    steps = {int(p.parent.name.removeprefix("checkpoint-")): p.parent
             for p in path.glob("checkpoint-*/adapter_config.json") if p.parent.name[11:].isdigit()}
    if steps:  # a transformers/TRL Trainer output_dir saves the adapter per checkpoint-<step>/
        return f"it holds training checkpoints: point --adapter at the last one, {steps[max(steps)]}, or another one"
    if (path / "config.json").is_file():
        return ("it holds a whole model (config.json), not a LoRA adapter: pass it as --model and leave --adapter out "
                "(a merged export already contains its adapter)")
    return None


def damaged_weight_files(files: Iterable[Path], redownload: str = REDOWNLOAD) -> list[CheckpointProblem]:
    """Weight files that cannot be read: Git LFS pointers, cut-short copies (header and size only, no tensor read)."""
    problems: list[CheckpointProblem] = []
    for file in files:
        reason = _safetensors_damage(file) if file.suffix == ".safetensors" else _torch_file_damage(file)
        if reason is not None:
            fix = ("fetch the weights with `git lfs pull` in the folder, or " + redownload
                   if "Git LFS" in reason else redownload)
            problems.append(CheckpointProblem(file.name, f"{reason}; the weights cannot be read", fix))
    return problems


def _torch_file_damage(file: Path) -> str | None:
    """Why a torch-pickled weight file (pytorch_model*.bin) is not whole, or None (reads its first and last bytes).

    torch.save writes a zip archive, whose directory is at the end: a cut-short copy has none.
    """
    import zipfile

    size = file.stat().st_size
    with open(file, "rb") as handle:
        head = handle.read(8)
    if head == b"version ":
        return f"is a Git LFS pointer ({size} bytes), not the weights"
    if head[:1] == b"\x80":  # a pickle of torch < 1.6 (no zip): nothing cheap to check
        return None
    if not zipfile.is_zipfile(file):
        return f"is cut short or not a torch weight file ({size:,} bytes)"
    return None


def _safetensors_damage(file: Path) -> str | None:
    """Why a .safetensors file is not whole, or None (reads its 8-byte length and JSON header only)."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        head = handle.read(8)
        if head == b"version ":  # a clone without git-lfs holds "version https://git-lfs.github.com/spec/v1 ..."
            return f"is a Git LFS pointer ({size} bytes), not the weights"
        length = int.from_bytes(head, "little") if len(head) == 8 else 0
        if length == 0 or 8 + length > size:
            return f"is cut short or not a safetensors file ({size:,} bytes)"
        try:
            header = json.loads(handle.read(length))
            end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return f"has an unreadable safetensors header ({size:,} bytes)"
    if 8 + length + end != size:
        return f"is cut short: {size:,} bytes where its header describes {8 + length + end:,}"
    return None


def tokenizer_problems(tokenizer, config) -> list[CheckpointProblem]:  # noqa: ANN001 - HF tokenizer and config
    """The tokenizer can write dermground's prompts and numbers, with the ids the model was built for."""
    problems: list[CheckpointProblem] = []
    vocab_size = int(getattr(getattr(config, "text_config", config), "vocab_size", 0) or 0)
    for token in (*PROMPT_TOKENS, PAD_TOKEN):
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            problems.append(CheckpointProblem(
                "tokenizer.json", f"{token} is not a token of this tokenizer (it splits into {len(ids)} pieces)",
                "use the tokenizer files that came with the Qwen2-VL/Qwen2.5-VL checkpoint"))
        elif vocab_size and ids[0] >= vocab_size:
            problems.append(CheckpointProblem(
                "config.json", f"{token} has id {ids[0]}, beyond the model's vocabulary of {vocab_size}",
                "the tokenizer belongs to another model: use the checkpoint's own tokenizer files"))
    for attribute, token in CONFIG_TOKEN_IDS.items():
        expected = getattr(config, attribute, None)
        actual = tokenizer.convert_tokens_to_ids(token)
        if expected is not None and actual != expected:
            problems.append(CheckpointProblem(
                "config.json", f"{attribute} is {expected} but the tokenizer gives {token} the id {actual}",
                "tokenizer and weights come from different models: use the checkpoint's own tokenizer files"))
    split_digits = [d for d in "0123456789" if len(tokenizer.encode(d, add_special_tokens=False)) != 1]
    merged = tokenizer.encode("12", add_special_tokens=False)
    if split_digits or len(merged) != 2:
        problems.append(CheckpointProblem(
            "tokenizer.json", "numbers are not written one digit per token (number parsing, sampled decoding and the "
            "number loss rely on it)", "use Qwen's own tokenizer files"))
    return problems


def image_problems(image_processor, vision_config,  # noqa: ANN001 - HF image processor and vision config
                   crop_sizes: Iterable[tuple[int, int]] = ()) -> tuple[list[CheckpointProblem], dict[str, str]]:
    """The pixel settings fit the vision tower and turn the data's crops into a workable token count."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    name = "preprocessor_config.json"
    problems: list[CheckpointProblem] = []
    facts: dict[str, str] = {}
    limits = {"min_pixels": image_processor.size.shortest_edge, "max_pixels": image_processor.size.longest_edge}
    for key, value in limits.items():
        # transformers takes a string or 0 when loading and fails on every image (TypeError, "size dict must contain").
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
            problems.append(CheckpointProblem(name, f"{key} is {value!r}, not a number of pixels (a whole number, 1 "
                                              "or more)", "set min_pixels and max_pixels to numbers (Qwen2-VL "
                                              "publishes 3136 and 12845056)"))
    if problems:
        return problems, facts
    min_pixels, max_pixels = int(limits["min_pixels"]), int(limits["max_pixels"])
    patch, merge = int(image_processor.patch_size), int(image_processor.merge_size)
    for key, ours, theirs in (("patch_size", patch, vision_config.patch_size),
                              ("merge_size", merge, vision_config.spatial_merge_size),
                              ("temporal_patch_size", image_processor.temporal_patch_size,
                               vision_config.temporal_patch_size)):
        if int(ours) != int(theirs):
            problems.append(CheckpointProblem(name, f"{key} is {ours} but the vision tower was built for {theirs}",
                                              f"set {key} to {theirs} (the checkpoint's published value)"))
    unit = (patch * merge) ** 2
    if max_pixels < unit * MIN_IMAGE_TOKENS:
        problems.append(CheckpointProblem(name, f"max_pixels {max_pixels} is below {unit * MIN_IMAGE_TOKENS} "
                                          f"({MIN_IMAGE_TOKENS} image tokens of {patch * merge}x{patch * merge} px)",
                                          "raise max_pixels (Qwen2-VL publishes 12845056)"))
    if min_pixels > max_pixels:
        problems.append(CheckpointProblem(name, f"min_pixels {min_pixels} is above max_pixels {max_pixels}",
                                          "make min_pixels <= max_pixels (Qwen2-VL publishes 3136 and 12845056)"))
    facts["image pixels"] = f"{min_pixels}..{max_pixels} (patch {patch}, merge {merge})"
    if problems:
        return problems, facts
    seen: dict[tuple[int, int], int] = {}
    for width, height in crop_sizes:
        if (width, height) in seen:
            continue
        try:
            new_h, new_w = smart_resize(height, width, factor=patch * merge, min_pixels=min_pixels,
                                        max_pixels=max_pixels)
        except ValueError as exc:  # e.g. an aspect ratio above 200
            problems.append(CheckpointProblem(name, f"a {width}x{height} px crop of the data cannot be read ({exc})",
                                              "crop the data's images closer to square"))
            continue
        seen[(width, height)] = tokens = (new_h // (patch * merge)) * (new_w // (patch * merge))
        if tokens < MIN_IMAGE_TOKENS:
            problems.append(CheckpointProblem(name, f"max_pixels {max_pixels} shrinks the data's {width}x{height} px "
                                              f"crops to {tokens} image token(s)", "raise max_pixels"))
        elif tokens > MAX_IMAGE_TOKENS:
            problems.append(CheckpointProblem(name, f"min_pixels {min_pixels} blows the data's {width}x{height} px "
                                              f"crops up to {tokens} image tokens", "lower min_pixels"))
    if seen:
        facts["data crops"] = ", ".join(f"{w}x{h} px -> {n} image tokens" for (w, h), n in sorted(seen.items()))
    return problems, facts


def sample_crop_sizes(data_dir: str | Path, limit: int = 8) -> list[tuple[int, int]]:
    """(width, height) of the first `limit` readable images of an ISIC-format data folder."""
    from dermground.platform.records import LesionRecord, read_records

    sizes: list[tuple[int, int]] = []
    for record in read_records(Path(data_dir)):
        if not isinstance(record, LesionRecord):
            continue
        try:
            sizes.append(record.load_image().size)
        except Exception:  # noqa: BLE001 - a bad image is ingest's business (quarantine), not the check's
            continue
        if len(sizes) >= limit:
            break
    return sizes


def check_checkpoint(model_dir: str | Path, crop_sizes: Sequence[tuple[int, int]] = ()) -> CheckReport:
    """Every check, without loading the weights: files, tokenizer against config, pixels against crops."""
    from transformers import AutoTokenizer

    from dermground.platform.model.processor import load_image_processor

    path = Path(model_dir)
    report = CheckReport(path, file_problems(path))
    if report.problems:
        return report
    family = FAMILIES[json.loads((path / "config.json").read_text())["model_type"]]
    report.facts["family"] = family.label
    try:
        config = family.config_class.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        report.problems.append(CheckpointProblem("config.json", f"transformers cannot read it ({exc})",
                                                 "rebuild or " + REDOWNLOAD))
        return report
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        report.problems.append(CheckpointProblem("tokenizer_config.json", f"the tokenizer does not load ({exc})",
                                                 "copy tokenizer.json and tokenizer_config.json from the model's hub page"))
    else:
        report.problems += tokenizer_problems(tokenizer, config)
        report.facts["tokenizer"] = f"{type(tokenizer).__name__}, {len(tokenizer):,} tokens"
        report.facts["template"] = chat_template_fact(tokenizer, path)
    try:
        image_processor = load_image_processor(path)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        report.problems.append(CheckpointProblem("preprocessor_config.json", f"the image processor does not load ({exc})",
                                                 "copy preprocessor_config.json from the model's hub page"))
    else:
        problems, facts = image_problems(image_processor, config.vision_config, crop_sizes)
        report.problems += problems
        report.facts.update(facts)
    text = getattr(config, "text_config", config)
    report.facts["decoder"] = (f"hidden {text.hidden_size}, layers {text.num_hidden_layers}, "
                               f"vocabulary {text.vocab_size:,}")
    return report


def chat_template_fact(tokenizer, model_dir: Path) -> str:  # noqa: ANN001 - HF tokenizer
    """Where the checkpoint keeps its chat template and whether it writes the prompt dermground writes itself."""
    from dermground.platform.attributes import ATTRIBUTES
    from dermground.platform.model.processor import processor_chat_template
    from dermground.platform.model.prompts import build_prompt

    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    template = template or processor_chat_template(model_dir)
    if template is None:
        return "none (not needed: dermground writes its prompts itself, in the Qwen2-VL-Instruct format)"
    try:
        in_config = "chat_template" in json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        in_config = False
    source = "tokenizer_config.json" if in_config else next(
        (name for name in ("chat_template.jinja", "chat_template.json") if (model_dir / name).is_file()), "tokenizer")
    question = ATTRIBUTES[0].question
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    try:
        rendered = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                 add_generation_prompt=True)
    except Exception as exc:  # noqa: BLE001 - a template is arbitrary Jinja: any error means it does not render
        return f"{source}, which does not render ({type(exc).__name__}); not used: dermground writes its prompts itself"
    if rendered == build_prompt(question):
        return f"{source}, the same prompt dermground writes"
    return (f"{source}, which writes another prompt than dermground (the Qwen2-VL-Instruct format); dermground "
            "uses its own, for training and embedding alike")


def require_usable_checkpoint(model_dir: str | Path, data_dir: str | Path | None = None) -> CheckReport:
    """check_checkpoint (with the data's crop sizes when given); BackboneError listing every problem."""
    from dermground.platform.model.loading import BackboneError

    crops = sample_crop_sizes(data_dir) if data_dir is not None and Path(data_dir).is_dir() else []
    report = check_checkpoint(model_dir, crops)
    if not report.ok:
        raise BackboneError(report.summary())
    return report
