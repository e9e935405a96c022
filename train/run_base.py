"""A training run resumes only on the base weights it started on.

A run's folder is named after its configuration and the base folder's path (ray_train.run_identity),
not the base's weights, and the name must stay stable for interrupted runs to resume. So a re-run
after another checkpoint was downloaded into the same folder (Qwen2-VL-2B replaced by -2B-Instruct)
would continue the LoRA weights and optimizer state of the first base on the second, and the adapter
would then record the second base alone. The run folder keeps the digest of the base it started on.
"""

from __future__ import annotations

import json
from pathlib import Path

from dermground.platform.durable_json import durable_write_json
from dermground.platform.model.base_weights import BASE_WEIGHTS_KEY, base_weights_digest

RUN_BASE_FILE = "dermground_run_base.json"


def require_same_base(run_folder: Path, base_dir: Path) -> None:
    """Record the base's weights digest in a new run folder; BackboneError when an existing run started on others.

    A run folder from before this record resumes as it did (and gets the record).
    """
    from dermground.platform.model.loading import BackboneError

    digest = base_weights_digest(base_dir)
    record = Path(run_folder) / RUN_BASE_FILE
    if record.is_file():
        started_on = _recorded_digest(record, run_folder, base_dir)
        if started_on != digest:
            raise BackboneError(
                f"the checkpoints in {run_folder} were trained on other base weights ({started_on}) than {base_dir} "
                f"holds now ({digest}): the folder got another checkpoint since the run started, and resuming would "
                f"continue one base's training on another. Next: put the first base back in {base_dir}, or delete "
                f"{run_folder} to start this run over on the new base")
        return
    # Written whole or not at all: a half-written record (a full disk, a kill) would stop every later resume.
    durable_write_json(record, {BASE_WEIGHTS_KEY: digest, "base_dir": str(Path(base_dir).resolve())})


def _recorded_digest(record: Path, run_folder: Path, base_dir: Path) -> object:
    """The digest a run folder's record holds; BackboneError naming the file when it cannot be read."""
    from dermground.platform.model.loading import BackboneError

    try:
        content = json.loads(record.read_text())
    except (OSError, ValueError) as exc:
        content, reason = None, f"{type(exc).__name__}: {exc}"
    else:
        reason = f"no {BASE_WEIGHTS_KEY} in it"
    if isinstance(content, dict) and BASE_WEIGHTS_KEY in content:
        return content[BASE_WEIGHTS_KEY]
    raise BackboneError(
        f"{record}: the record of the base weights this run started on cannot be read ({reason}), so it is unknown "
        f"whether {base_dir} still holds them. Next: if {base_dir} holds the base the run started on, delete {record} "
        f"(the re-run records it again and resumes); otherwise delete {run_folder} to start this run over")
