"""A Hugging Face cache folder given as --model / --adapter: the hint names the snapshot refs/main names."""

from __future__ import annotations

import os

MAIN = "895c3a49bc3fa70a340399125c650a463535e71c"
PINNED = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"


def _cache_repo(root, marker: str, main: str | None):
    """models--Org--Name with two snapshots, PINNED written after MAIN (newer on disk), refs/main -> `main`."""
    repo = root / "models--Qwen--Qwen2-VL-2B-Instruct"
    for age, revision in enumerate((MAIN, PINNED)):
        snapshot = repo / "snapshots" / revision
        snapshot.mkdir(parents=True)
        (snapshot / marker).write_text("{}")
        os.utime(snapshot, ns=(1_700_000_000_000_000_000 + age * 10**9,) * 2)
        os.utime(snapshot / marker, ns=(1_700_000_000_000_000_000 + age * 10**9,) * 2)
    if main is not None:
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(main)  # the hub writes the bare commit hash, no newline
    return repo


def test_the_model_hint_follows_refs_main_not_the_newest_snapshot(tmp_path):
    """`huggingface-cli download` of main, then of a pinned older revision: the hint named the newest
    snapshot on disk (the pinned one). Now the one refs/main names, as transformers resolves it."""
    from dermground.platform.model.checkpoint_check import file_problems

    repo = _cache_repo(tmp_path, "config.json", MAIN)
    (problem,) = file_problems(repo)
    assert f"point --model at its snapshot folder {repo / 'snapshots' / MAIN} " in problem.fix
    assert PINNED not in str(problem)


def test_the_adapter_hint_follows_refs_main_not_the_newest_snapshot(tmp_path):
    from dermground.platform.model.checkpoint_check import adapter_problems

    repo = _cache_repo(tmp_path, "adapter_config.json", MAIN)
    (problem,) = adapter_problems(repo)
    assert problem.fix == f"it is a Hugging Face cache folder: point --adapter at its snapshot folder " \
                          f"{repo / 'snapshots' / MAIN}"


def test_without_a_usable_refs_main_the_hint_names_the_newest_snapshot_and_says_so(tmp_path):
    from dermground.platform.model.checkpoint_check import adapter_problems, file_problems

    missing = _cache_repo(tmp_path / "a", "config.json", "f" * 40)  # refs/main names a revision not downloaded
    (problem,) = file_problems(missing)
    assert f"snapshot folder {missing / 'snapshots' / PINNED} (the newest of its 2 snapshot(s): refs/main names " \
           f"revision {'f' * 40}, which has no snapshot with config.json here)" in problem.fix
    unnamed = _cache_repo(tmp_path / "b", "adapter_config.json", None)
    (problem,) = adapter_problems(unnamed)
    assert problem.fix.endswith(f"snapshot folder {unnamed / 'snapshots' / PINNED} (the newest of its 2 snapshot(s): "
                                "there is no refs/main to say which revision is main)")
