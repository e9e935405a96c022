"""Merge a LoRA adapter into its base and save a plain Hugging Face checkpoint (serve it anywhere).

The merged folder holds the family's own config and weights plus the base's tokenizer, chat
template, image processor and generation files copied verbatim, so transformers loads it with no
dermground code. It is written next to the target, reloaded and compared tensor by tensor, and only
then moved into place: an existing folder is replaced only by a verified export.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from dermground.platform.model.loading import BackboneError, load_backbone, model_family

# Files of the base that describe the weights; every other file (tokenizer, templates, processor and
# generation settings) is copied to the export unchanged.
_WEIGHT_FILES = ("config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class ExportResult:
    """Where the merged checkpoint went and what it holds."""

    out_dir: Path
    dtype: torch.dtype
    parameters: int
    copied_files: tuple[str, ...]


def stored_dtype(model_dir: Path) -> torch.dtype:
    """The dtype the base checkpoint was saved in (config.json's torch_dtype/dtype), float32 if unstated."""
    config = json.loads((model_dir / "config.json").read_text())
    name = config.get("torch_dtype") or config.get("dtype") or config.get("text_config", {}).get("dtype") or "float32"
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(str(name), torch.float32)


def export_merged(model_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path,
                  dtype: str = "auto", force: bool = False) -> ExportResult:
    """Base + adapter merged (peft merge_and_unload), saved as a checkpoint folder at `out_dir`.

    dtype "auto" keeps the base's stored dtype (bfloat16 for the published Qwen checkpoints).
    """
    base, out = Path(model_dir), Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise BackboneError(f"{out} is not empty; pass --force to replace it (only after the new export is verified) "
                            "or choose another --out")
    if out.resolve() in (base.resolve(), Path(adapter_dir).resolve()):
        raise BackboneError(f"--out {out} is the base or adapter folder itself; choose a new folder")
    backbone = load_backbone(base, adapter_dir, device="cpu", dtype=torch.float32)
    save_dtype = stored_dtype(base) if dtype == "auto" else {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                                             "float16": torch.float16}[dtype]
    merged = backbone.model.merge_and_unload().to(save_dtype)
    merged.config.use_cache = True
    staging = out.with_name(out.name + ".export-partial")
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(staging)
    copied = []
    for source in sorted(base.iterdir()):
        if source.is_file() and source.name not in _WEIGHT_FILES and not source.name.endswith(_WEIGHT_SUFFIXES):
            shutil.copy2(source, staging / source.name)
            copied.append(source.name)
    _verify(staging, merged, model_family(base).model_class, save_dtype)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return ExportResult(out, save_dtype, sum(p.numel() for p in merged.parameters()), tuple(copied))


def _verify(folder: Path, merged: torch.nn.Module, model_class: type, dtype: torch.dtype) -> None:
    """Reload the saved folder and require every tensor to equal the merged model's."""
    reloaded = model_class.from_pretrained(folder, dtype=dtype, local_files_only=True)
    expected, actual = merged.state_dict(), reloaded.state_dict()
    missing = sorted(set(expected) ^ set(actual))
    different = [name for name in expected if name in actual and not torch.equal(expected[name], actual[name])]
    if missing or different:
        shutil.rmtree(folder, ignore_errors=True)
        raise BackboneError(f"the merged checkpoint did not reload identically ({len(missing)} tensor names differ, "
                            f"{len(different)} tensors differ, e.g. {(missing or different)[:3]}); nothing was replaced")
