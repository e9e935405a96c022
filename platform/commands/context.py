"""The settings the CLI runs with, shared by every command's flag defaults."""

from __future__ import annotations

import click

from dermground.platform.settings import Settings, SettingsError, load_settings

_current: Settings | None = None


def current_settings() -> Settings:
    """Settings for this CLI invocation (loaded once; invalid settings stop with a clear error)."""
    global _current
    if _current is None:
        try:
            _current = load_settings()
        except SettingsError as exc:
            raise click.ClickException(f"{exc}\nFix the variable(s) above in the environment or .env.") from None
    return _current


def use_settings(settings: Settings) -> None:
    """Replace the settings (the root `--home` flag does this before subcommands parse)."""
    global _current
    _current = settings


def from_settings(field: str):  # noqa: ANN201 - click accepts any zero-arg callable
    """A click default that reads a settings field when the flag is parsed."""

    def default() -> object:
        value = getattr(current_settings(), field)
        return value.get_secret_value() if hasattr(value, "get_secret_value") else value

    return default


def with_qdrant_url(settings: Settings, qdrant_url: str | None) -> Settings:
    """The settings with a command's --qdrant-url, which the next steps it suggests carry too (without
    a user:password in the URL: a next step is printed and logged)."""
    if not qdrant_url:
        return settings
    from dermground.platform.next_step import carry_setting
    from dermground.platform.store.server_client import shown_url

    carry_setting("DERMGROUND_QDRANT_URL", shown_url(qdrant_url))
    return settings.model_copy(update={"qdrant_url": qdrant_url})


def collection_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback for --collection flags: the collection name rule (it becomes a folder under HOME)."""
    from dermground.platform.names import InvalidNameError, check_collection_name

    if value is None:
        return None
    try:
        return check_collection_name(value)
    except InvalidNameError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
