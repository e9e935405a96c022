"""The command lines users copy (README, docs, error messages' next steps) parse with today's CLI.

A command line "parses" when click finds every subcommand, option and argument it names; values
that are placeholders (DIR, N, a path that does not exist here) are not judged.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from dermground.platform.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def usage_problem(command_line: str, complete: bool = False) -> str | None:
    """Why `command_line` (starting with `dermground`) does not parse, or None when it does.

    complete: also a required option or argument it leaves out (a next step to copy and run, where
    prose may name `dermground eval predict` alone)."""
    argv = shlex.split(command_line)
    assert argv[0] == "dermground", command_line
    try:
        ctx = cli.make_context("dermground", argv[1:])
        command: click.Command = cli
        rest = argv[1:]
        while isinstance(command, click.Group):
            name, sub, rest = command.resolve_command(ctx, ctx.protected_args + ctx.args)
            assert sub is not None and name is not None
            command = sub
            if isinstance(sub, click.Group):
                ctx = sub.make_context(name, rest, parent=ctx)
        if "--help" in rest or "-h" in rest:
            return None
        # the parser alone: it knows the options and arguments, and does not judge the values
        # (DIR, N, a folder that is not here) or whether a required option is given
        leaf = click.Context(command, parent=ctx, info_name=command.name)
        given, left_over, _ = command.make_parser(leaf).parse_args(list(rest))
    except (click.exceptions.Exit, click.exceptions.NoArgsIsHelpError):
        return None  # --help, --version; a group named alone (`dermground model ...`)
    except click.BadOptionUsage as exc:
        if "requires an argument" in exc.format_message() and argv[-1] == exc.option_name:
            return None  # a flag named in prose (`search --filter`): it exists, its value is elsewhere
        return f"{type(exc).__name__}: {exc.format_message()}"
    except click.UsageError as exc:  # unknown command or option, an option without its value
        return f"{type(exc).__name__}: {exc.format_message()}"
    if left_over:
        return f"unexpected extra arguments {left_over}"
    missing = [param.opts[0] for param in command.params if param.required and param.name not in given]
    if complete and missing:
        return f"missing required {missing}"
    return None


def test_the_parse_check_tells_a_wrong_command_line() -> None:
    assert usage_problem("dermground check --collection lesions") is None
    assert usage_problem("dermground ingest --data DIR --collection lesions --version v2") is None
    assert "extra argument" in (usage_problem("dermground check lesions") or "")
    assert "No such option" in (usage_problem("dermground ingest --data DIR --colection x") or "")
    assert "No such command" in (usage_problem("dermground collections remove lesions v1") or "")
    assert usage_problem("dermground synth", complete=True) == "missing required ['--out']"
    assert usage_problem("dermground synth --out DIR", complete=True) is None


def backticked_commands(text: str) -> list[str]:
    return re.findall(r"`(dermground [^`]+)`", text)


def dead_builder() -> dict[str, object]:
    """A `builder` stamp of a process that has ended (a killed ingest)."""
    import socket
    import subprocess
    import sys

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    return {"pid": ended.pid, "host": socket.gethostname(), "started": None, "command": "dermground ingest"}


def test_an_interrupted_versions_next_steps_parse(tmp_path: Path) -> None:
    """`collections list` told users to resume with `dermground ingest <data> --collection ...`:
    ingest takes the folder as --data, so the command as shown failed with "Got unexpected extra
    argument". The step now names --data with the folder (and adapter) the version was built from."""
    from dermground.platform.store.versions import BUILDING, VersionMeta, interrupted_note

    data = tmp_path / "my data"
    # An interrupted `--new-version` build (a copy of the served version killed while copying is
    # dropped and rerun instead: tests/test_ingest_resume_copy.py).
    meta = VersionMeta(source=f"ingest {data}", adapter=str(tmp_path / "adapter"), state=BUILDING,
                       builder=dead_builder())
    note = interrupted_note("lesions", "v2", meta)
    assert note is not None and "interrupted" in note
    steps = backticked_commands(note)
    assert any(step.startswith("dermground ingest") and "--version" in step for step in steps), note
    for step in steps:
        assert usage_problem(step) is None, step
    resume = next(step for step in steps if step.startswith("dermground ingest") and "--version" in step)
    argv = shlex.split(resume)
    assert argv[argv.index("--data") + 1] == str(data)
    assert argv[argv.index("--adapter") + 1] == str(tmp_path / "adapter")
    assert argv[argv.index("--version") + 1] == "v2"


USER_DOCS = ["README.md", "docs/DEPLOY.md", "docs/EVALUATION.md", "docs/ARCHITECTURE.md", "docs/CATALOG.md"]


def alternatives(command_line: str) -> list[str]:
    """`snapshot create\\|list\\|restore` -> one line per choice; `[--json]` -> `--json`; `...` dropped."""
    line = command_line.replace("\\|", "|").replace("[", " ").replace("]", " ").replace("...", " ")
    match = re.search(r"(\S+)\|(\S+)", line)
    if match is None or match.group(0).startswith(("'", '"')):
        return [line]
    word = match.group(0)
    return [variant for choice in word.split("|") for variant in alternatives(line.replace(word, choice, 1))]


def documented_command_lines(text: str) -> list[str]:
    """Every `dermground ...` in inline code, and every line of a code block that runs dermground."""
    found = [line for line in backticked_commands(text) if "\n" not in line]
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            match = re.match(r"^\s*(?:[A-Z_]+=\S+\s+)*(dermground\s.*?)(\s+#.*)?$", line)
            if match:
                found.append(match.group(1))
    return [variant for line in found for variant in alternatives(line) if '"$@"' not in variant]


@pytest.mark.parametrize("doc", USER_DOCS)
def test_every_documented_command_line_parses(doc: str) -> None:
    lines = documented_command_lines((ROOT / doc).read_text(encoding="utf-8"))
    assert lines or doc.endswith(("ARCHITECTURE.md", "CATALOG.md"))
    problems = [f"{line!r}: {problem}" for line in lines if (problem := usage_problem(line))]
    assert not problems, "\n".join(problems)


def every_command(command: click.Command, path: tuple[str, ...] = ("dermground",)) -> list[tuple[str, click.Command]]:
    found = [(" ".join(path), command)]
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, f"{' '.join(path)} lists {name} but has no such command"
            found += every_command(sub, (*path, name))
    return found


def test_every_command_and_option_says_what_it_does() -> None:
    """`snapshot create --help` and `snapshot list --help` showed `--collection TEXT` with no text."""
    silent = [f"{path}: the command" for path, command in every_command(cli) if not (command.help or "").strip()]
    silent += [f"{path}: {param.opts[0]}" for path, command in every_command(cli) for param in command.params
               if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()
               and param.name != "help"]
    assert not silent, "no --help text:\n" + "\n".join(silent)


def test_snapshot_lists_next_step_snapshots_the_listed_collection(tmp_path: Path) -> None:
    """`snapshot list --collection derm2` without snapshots said to run `dermground snapshot
    create`, which backs up the default collection (`lesions`), not derm2."""
    from click.testing import CliRunner

    listed = CliRunner().invoke(cli, ["--home", str(tmp_path), "snapshot", "list", "--collection", "derm2"])
    assert listed.exit_code == 0 and "no snapshots of 'derm2'" in listed.output, listed.output
    (step,) = backticked_commands(listed.output)
    assert usage_problem(step) is None
    group = cli.get_command(click.Context(cli), "snapshot")
    assert isinstance(group, click.Group)
    create = group.commands["create"]
    argv = shlex.split(step)
    assert argv[:5] == ["dermground", "--home", str(tmp_path), "snapshot", "create"]
    assert create.make_context("create", argv[5:]).params["collection"] == "derm2"


def every_option_name() -> set[str]:
    return {name for _, command in every_command(cli) for param in command.params
            if isinstance(param, click.Option) for name in (*param.opts, *param.secondary_opts)}


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_names_the_setting_that_asked_for_it() -> None:
    """DERMGROUND_DEVICE=cuda on a machine without CUDA said "use --device cpu or auto", but no
    command has a --device flag: the device comes from DERMGROUND_DEVICE only."""
    from dermground.platform.model.loading import BackboneError, resolve_device

    with pytest.raises(BackboneError) as refused:
        resolve_device("cuda")
    message = str(refused.value)
    assert "DERMGROUND_DEVICE" in message
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", message))
    assert flags <= every_option_name(), f"{message!r} names flags no command has: {flags - every_option_name()}"


@pytest.mark.parametrize("command", ["train", "pretrain"])
def test_a_missing_base_model_names_the_flag_the_command_has(tmp_path: Path, command: str) -> None:
    """`train` and `pretrain` take the backbone as --base, but a missing or wrong folder said
    "point --model at a Qwen2-VL checkpoint" (`train --model` is "No such option")."""
    from click.testing import CliRunner

    data = tmp_path / "data"
    made = CliRunner().invoke(cli, ["synth", "--out", str(data), "--patients", "2", "--images", "4", "--seed", "1"])
    assert made.exit_code == 0, made.output
    refused = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), command, "--data", str(data),
                                       "--base", str(tmp_path / "no-model"), "--out", str(tmp_path / "out")])
    assert refused.exit_code != 0 and "does not exist" in refused.output, refused.output
    assert re.search(r"(?<![\w-])--base(?![\w-])", refused.output), refused.output


def test_next_steps_act_on_the_home_the_user_gave(tmp_path: Path, fresh_cli_settings) -> None:
    """`dermground --home /data/x collections switch ...` was told to run `dermground collections list`,
    which lists the default home's collections: every next step now carries the --home it was given
    (quoted), and a later invocation without --home gets plain steps again."""
    from click.testing import CliRunner

    home = tmp_path / "my home"
    runs = [CliRunner().invoke(cli, ["--home", str(home), *args]) for args in (
        ["collections", "switch", "lesions", "v2"], ["collections", "info", "lesions"],
        ["snapshot", "restore", str(tmp_path / "gone.tar")], ["collections", "list"])]
    for run in runs:
        steps = backticked_commands(run.output)
        assert steps, run.output
        for step in steps:
            assert shlex.split(step)[:3] == ["dermground", "--home", str(home)], run.output
            assert usage_problem(step) is None, step
    assert "`dermground --home" in runs[0].output and "collections list lesions`" in runs[0].output
    plain = CliRunner().invoke(cli, ["snapshot", "restore", str(tmp_path / "gone.tar")])
    assert "`dermground snapshot list`" in plain.output, plain.output


def test_a_next_step_carries_a_qdrant_url_flag_as_its_setting() -> None:
    """`ingest --qdrant-url URL` and `check --qdrant-url URL` act on a server; `collections switch`
    has no such flag, so a step after them names the server in DERMGROUND_QDRANT_URL."""
    from dermground.platform.next_step import carry_root_flag, carry_setting, forget_carried, next_command

    try:
        carry_root_flag("--home", "/data/x")
        carry_setting("DERMGROUND_QDRANT_URL", "http://qdrant:6333")
        step = next_command("collections switch lesions v2")
    finally:
        forget_carried()
    assert step == "DERMGROUND_QDRANT_URL=http://qdrant:6333 dermground --home /data/x collections switch lesions v2"
    assert usage_problem(step.split(" ", 1)[1]) is None
    assert next_command("collections list") == "dermground collections list"



def test_a_carried_qdrant_url_never_shows_its_password() -> None:
    """A next step is printed and logged: the --qdrant-url it carries loses any user:password."""
    from dermground.platform.commands.context import with_qdrant_url
    from dermground.platform.next_step import forget_carried, next_command
    from dermground.platform.settings import Settings

    try:
        settings = with_qdrant_url(Settings(), "https://admin:s3cret@qdrant.example:6333")
        step = next_command("collections list")
    finally:
        forget_carried()
    assert settings.qdrant_url == "https://admin:s3cret@qdrant.example:6333"  # the command itself uses it all
    assert step == "DERMGROUND_QDRANT_URL=https://qdrant.example:6333 dermground collections list"


def setting_variables() -> set[str]:
    from dermground.platform.settings import ENV_PREFIX, Settings

    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def test_a_flag_that_defaults_from_a_setting_names_its_variable() -> None:
    """The README said every flag defaults from a DERMGROUND_* setting (most do not: --data, --k, ...),
    and flags that do said "[default: the settings' base model dir]" or "the predict_pool setting",
    names no user can set. Each flag whose default is a setting names its variable, a real one."""
    unnamed = []
    for path, command in every_command(cli):
        for param in command.params:
            if not isinstance(param, click.Option) or param.name == "help":
                continue
            text = f"{param.help or ''} {param.show_default if isinstance(param.show_default, str) else ''}"
            from_setting = getattr(param.default, "__qualname__", "").startswith("from_settings.")
            named = set(re.findall(r"DERMGROUND_[A-Z_]+", text))
            if (from_setting or "setting" in text) and not named:
                unnamed.append(f"{path} {param.opts[0]}: {text.strip()!r}")
            if named - setting_variables():
                unnamed.append(f"{path} {param.opts[0]} names no setting: {sorted(named - setting_variables())}")
    assert not unnamed, "\n".join(unnamed)


def test_every_setting_is_documented_and_every_documented_one_is_real() -> None:
    """Ten settings (DERMGROUND_MAX_UPLOAD_BYTES, _MAX_K, _SQL_TIMEOUT_S, _SEED, ...) were named in no
    document a user reads: README's table has the main ones, docs/DEPLOY.md section 9 the rest."""
    texts = {doc: (ROOT / doc).read_text(encoding="utf-8") for doc in [*USER_DOCS, "docker/compose.yaml"]}
    documented = {name for text in texts.values() for name in re.findall(r"DERMGROUND_[A-Z0-9_]+", text)}
    tables = texts["README.md"] + texts["docs/DEPLOY.md"]
    missing = sorted(v for v in setting_variables() if f"`{v}`" not in tables)
    assert not missing, f"settings in neither README.md nor docs/DEPLOY.md: {missing}"
    assert documented - setting_variables() == set(), "documented variables that are no setting"


def test_next_steps_name_the_collection_the_user_gave(tmp_path: Path, fresh_cli_settings) -> None:
    """`search --collection derm2` on a missing collection said "run `dermground ingest` first" (which
    needs --data and fills the default collection), and `snapshot restore FILE --collection derm2` of
    a missing file said "see `dermground snapshot list`" (the default collection's snapshots)."""
    from click.testing import CliRunner

    runs = [CliRunner().invoke(cli, ["--home", str(tmp_path), *args]) for args in (
        ["search", "--collection", "derm2", "--id", "ISIC_0000001", "--mode", "image"],
        ["snapshot", "restore", str(tmp_path / "gone.tar"), "--collection", "derm2"])]
    for run in runs:
        assert run.exit_code != 0 and "Traceback" not in run.output, run.output
        (step,) = backticked_commands(run.output)
        assert usage_problem(step) is None, step
        argv = shlex.split(step)
        assert argv[argv.index("--collection") + 1] == "derm2", run.output


def suggested_command_lines() -> list[tuple[str, str]]:
    """Every next_command(...) of the source whose argument is written out: (where, command line), the
    f-string's fields as placeholders."""
    import ast

    found = []
    for package in ("platform", "ingest", "train", "eval"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "next_command" and node.args):
                    continue
                arg = node.args[0]
                if isinstance(arg, ast.Constant):
                    text = str(arg.value)
                elif isinstance(arg, ast.JoinedStr):
                    text = "".join(str(v.value) if isinstance(v, ast.Constant) else "X" for v in arg.values)
                else:
                    continue  # built elsewhere (resume_command, a query constant): tested where it is built
                found.append((f"{path.relative_to(ROOT)}:{node.lineno}", f"dermground {text}"))
    return found


def test_every_suggested_next_step_parses() -> None:
    """Complete too: `collections list` on an empty home said "create one with `dermground ingest`",
    and a data folder that is none said "run `dermground synth`": each failed as written with
    "Missing option '--data'" / "'--out'" (so did `train`, `model export --merge` and the rerun of
    an interrupted seeded ingest)."""
    steps = suggested_command_lines()
    assert len(steps) > 30, steps
    problems = [f"{where}: {line!r}: {problem}" for where, line in steps
                if (problem := usage_problem(line, complete=True))]
    assert not problems, "\n".join(problems)


def settings_table_defaults(text: str) -> dict[str, str]:
    """{variable: its default as written} from every `| variable | default | meaning |` table."""
    found: dict[str, str] = {}
    for table in re.findall(r"^\| variable \| default \| meaning \|\n\|[-| ]+\|\n((?:\|.*\|\n?)+)", text, flags=re.M):
        for row in table.splitlines():
            cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
            names = re.findall(r"DERMGROUND_[A-Z0-9_]+", cells[0])
            defaults = [part.strip() for part in cells[1].split(" / ")]
            for i, name in enumerate(names):
                found[name] = defaults[i] if len(defaults) == len(names) else cells[1]
    return found


def matches_default(written: str, default: object) -> bool:
    """Whether a table's default cell states the field's default (`10485760` (10 MiB) for 10485760)."""
    from pathlib import PurePath

    value = written.split(" (", 1)[0].strip().strip("`")
    if default is None:
        return bool(value)  # unset, none, all CPUs, HOME/models/base: said in words
    if isinstance(default, bool):
        return value.lower() == str(default).lower()
    if isinstance(default, int | float):
        try:
            return float(value) == float(default)
        except ValueError:
            return False
    if isinstance(default, PurePath):
        return PurePath(value) == default
    return value == str(default)


def test_every_setting_has_a_table_row_with_its_default() -> None:
    """DERMGROUND_COLLECTION (default `lesions`) and the four Qdrant collection settings were named in
    prose only, with no default anywhere: each setting now has a row in README's table or
    docs/DEPLOY.md section 9, and the default written there is the code's."""
    from dermground.platform.settings import ENV_PREFIX, Settings

    rows = settings_table_defaults((ROOT / "README.md").read_text(encoding="utf-8"))
    rows |= settings_table_defaults((ROOT / "docs/DEPLOY.md").read_text(encoding="utf-8"))
    problems = []
    for field, info in Settings.model_fields.items():
        variable = ENV_PREFIX + field.upper()
        if variable not in rows:
            problems.append(f"{variable}: no row in a `| variable | default | meaning |` table")
        elif not matches_default(rows[variable], info.default):
            problems.append(f"{variable}: the table says {rows[variable]!r}, the code's default is {info.default!r}")
    assert not problems, "\n".join(problems)


def test_the_default_check_tells_a_wrong_default() -> None:
    assert matches_default("`10485760` (10 MiB)", 10 * 1024 * 1024) and matches_default("`10`", 10.0)
    assert not matches_default("`20`", 10.0) and not matches_default("`true`", False)
    assert not matches_default("`demo`", "lesions") and not matches_default("", None)
    assert settings_table_defaults("| variable | default | meaning |\n|---|---|---|\n"
                                   "| `DERMGROUND_A` / `DERMGROUND_B` | `1` / `2` | x |\n") == {
        "DERMGROUND_A": "`1`", "DERMGROUND_B": "`2`"}


def test_the_next_steps_of_an_empty_listing_and_of_interrupted_copies_run_as_written(tmp_path: Path,
                                                                                   fresh_cli_settings) -> None:
    from click.testing import CliRunner

    from dermground.platform.store.versions import BUILDING, VersionMeta, interrupted_note

    for args, collection in ((["collections", "list"], "lesions"), (["collections", "list", "derm2"], "derm2")):
        listed = CliRunner().invoke(cli, ["--home", str(tmp_path), *args])
        assert listed.exit_code == 0, listed.output
        (step,) = backticked_commands(listed.output)
        assert usage_problem(step, complete=True) is None, step
        argv = shlex.split(step)
        assert argv[argv.index("--collection") + 1] == collection, step
    data = tmp_path / "new images"
    for meta in (VersionMeta(source=f"v1 + ingest {data}", adapter="/m/a", state=BUILDING, builder=dead_builder()),
                 VersionMeta(source=f"v1 + ingest {data}", adapter="/m/a", state=BUILDING, builder=dead_builder(),
                             seed_copied=5)):
        note = interrupted_note("lesions", "v2", meta)
        assert note is not None
        (rerun,) = [step for step in backticked_commands(note) if " ingest " in step]
        assert usage_problem(rerun, complete=True) is None, note
        argv = shlex.split(rerun)
        assert argv[argv.index("--data") + 1] == str(data) and "--version" not in argv, rerun
