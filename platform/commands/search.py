"""`dermground search`: find lesions like a query image or a stored lesion, from the command line."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click

from dermground.platform.commands.context import collection_name, current_settings, from_settings
from dermground.platform.metadata_fields import EQUALS_FILTERS, FILTER_KEYS

MODES = ["image", "image_text", "hierarchical", "prefetch"]


def _parse_filters(filters: tuple[str, ...], ranges: tuple[str, ...], split: str | None):  # noqa: ANN202
    from dermground.platform.store import Range, SearchFilter

    any_of: dict[str, list[str]] = {}
    equals: dict[str, str | int] = {}
    equals_fields = {f.name: f.vocabulary or () for f in EQUALS_FILTERS}
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise click.BadParameter(f"{item!r}: use key=value (e.g. sex=female, anatom_site_general=head/neck)",
                                     param_hint="--filter")
        if key in equals_fields:
            equals[key] = _equals_value(key, value, equals_fields[key])
        else:
            any_of.setdefault(key, []).append(value)
    parsed_ranges = {}
    for item in ranges:
        key, sep, bounds = item.partition("=")
        low, colon, high = bounds.partition(":")
        if not sep or not colon:
            raise click.BadParameter(f"{item!r}: use field=low:high (either side may be empty)", param_hint="--range")
        try:
            parsed_ranges[key] = Range(gte=float(low) if low else None, lte=float(high) if high else None)
        except ValueError as exc:
            raise click.BadParameter(f"{item!r}: {exc}", param_hint="--range") from None
    try:
        return SearchFilter(equals=equals, any_of=any_of, ranges=parsed_ranges, split=split)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--filter/--range") from None


def _equals_value(key: str, text: str, allowed: tuple[str | int, ...]) -> str | int:
    """The value of a single-value filter, one of the field's vocabulary."""
    for value in allowed:
        if text == str(value):
            return value
    raise click.BadParameter(f"{key}={text!r}: {key} is one of {', '.join(str(v) for v in allowed)}",
                             param_hint="--filter")


@click.command("search")
@click.option("--image", "image_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Query image file.")
@click.option("--id", "isic_id", help="Query by a stored lesion's isic_id (its stored vectors are reused).")
@click.option("--mode", type=click.Choice(MODES), default="image_text", show_default=True,
              help="image: h_im; image_text: h_im_a on q_<a>; hierarchical: top-b on image, re-ranked by h_im_a; "
                   "prefetch: top-b on image, rescored by stored q_<a>.")
@click.option("--attribute", "attributes", multiple=True,
              help="Attribute to match (repeat for several: mean of per-attribute cosines). See `dermground attributes`.")
@click.option("--k", type=click.IntRange(min=1), default=5, show_default=True, help="Results to return.")
@click.option("--b", type=click.IntRange(min=1), default=None, help="Candidates for hierarchical/prefetch [default: 200].")
@click.option("--split", type=click.Choice(["train", "test"]), default=None, help="Only lesions of this split.")
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help=f"Metadata filter, repeatable (same key twice = either value): {', '.join(FILTER_KEYS)}.")
@click.option("--range", "ranges", multiple=True, metavar="FIELD=LO:HI",
              help="Numeric range on age_approx or an attribute, repeatable; a side may be empty (areaMM2=10:).")
@click.option("--exclude-patient", is_flag=True, help="Leave out the query's patient (needs --id or --patient).")
@click.option("--patient", "patient_id", help="The uploaded image's patient_id (for --exclude-patient).")
@click.option("--cache-vectors", is_flag=True, help="hierarchical: store re-embedded vectors for next time.")
@click.option("--collection", callback=collection_name,
              default=from_settings("collection"), show_default="DERMGROUND_COLLECTION",
              help="Collection to search.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def search(image_path: Path | None, isic_id: str | None, mode: str, attributes: tuple[str, ...], k: int,
           b: int | None, split: str | None, filters: tuple[str, ...], ranges: tuple[str, ...],
           exclude_patient: bool, patient_id: str | None, cache_vectors: bool, collection: str,
           as_json: bool) -> None:
    """Search the collection by an image or an isic_id.

    Example: dermground search --id ISIC_0000001 --mode image_text --attribute areaMM2 --k 5 --split train
    """
    if (image_path is None) == (isic_id is None):
        raise click.UsageError("give exactly one of --image and --id")
    from dermground.platform.embedder_provider import EmbedderProvider
    from dermground.platform.search import search as run_search
    from dermground.platform.search_request import SearchError, SearchMode, SearchRequest
    from dermground.platform.store import StoreError, StoreLockedError, open_store

    settings = current_settings().model_copy(update={"collection": collection})
    flt = _parse_filters(filters, ranges, split)
    image = None
    if image_path is not None:
        from dermground.platform.images import ImageRejected, decode_image

        try:
            image = decode_image(image_path.read_bytes(), max_pixels=settings.max_image_pixels)
        except ImageRejected as exc:
            raise click.ClickException(f"{image_path}: {exc}") from None
        except OSError as exc:  # no permission, an I/O error: the file is there but cannot be read
            raise click.ClickException(f"{image_path} cannot be read: {exc.strerror or exc}") from None

    def load_model():  # noqa: ANN202 - only when the query needs it
        from dermground.platform.model.loading import BackboneError, load_backbone_from_settings
        from dermground.platform.search_embedder import search_embedder
        from dermground.platform.search_request import ModelUnavailableError

        try:
            return search_embedder(load_backbone_from_settings(settings), settings.search_embed_batch)
        except BackboneError as exc:
            raise ModelUnavailableError(str(exc)) from None

    request = SearchRequest(mode=SearchMode(mode), attributes=attributes, image=image, isic_id=isic_id, k=k, b=b,
                            filter=flt, exclude_query_patient=exclude_patient, query_patient_id=patient_id,
                            cache_vectors=cache_vectors)
    try:
        with open_store(settings) as store:
            response = run_search(request, store=store, embedder=EmbedderProvider(load_model), settings=settings)
    except StoreLockedError as exc:
        url = exc.owner.get("serves") if exc.owner else None
        if isinstance(url, str):  # a `serve` holds it: its API answers the same search
            raise click.ClickException(_use_the_api(exc.owner or {}, url, collection, request, image_path)) from None
        raise click.ClickException(str(exc)) from None
    except (SearchError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({
            "mode": response.mode.value, "attributes": list(response.attributes), "query_isic_id": response.query_isic_id,
            "query_attributes": response.query_attributes, "seconds": response.seconds,
            "hits": [{"isic_id": h.isic_id, "score": h.score, "patient_id": h.payload.get("patient_id"),
                      "split": h.payload.get("split"), "attributes": h.attributes,
                      "attribute_scores": h.attribute_scores} for h in response.hits]}, indent=2))
        return
    _print_table(response)


def _use_the_api(owner: dict[str, object], url: str, collection: str, request, image_path: Path | None) -> str:  # noqa: ANN001 - SearchRequest
    """The refusal of a search whose collection a running `dermground serve` holds: the same search
    through that server's API (or its viewer), and only then stopping it."""
    params: dict[str, object] = {"mode": request.mode.value, "k": request.k}
    if request.attributes:
        params["attributes"] = list(request.attributes)
    if request.b is not None:
        params["b"] = request.b
    if image_path is None:
        body = json.dumps({**params, "isic_id": request.isic_id})
        call = f"curl -X POST {url}search -H 'Content-Type: application/json' -d {shlex.quote(body)}"
    else:
        call = (f"curl -X POST {url}search/upload -F {shlex.quote(f'file=@{image_path}')} "
                f"-F {shlex.quote('request=' + json.dumps(params))}")
    return (f"collection {collection!r} is being served by `dermground serve` (pid {owner.get('pid', '?')}, since "
            f"{owner.get('since', '?')}) at {url}, which holds its embedded store. Search through that server "
            f"instead:\n  {call}\n(add -H 'X-API-Key: KEY' where DERMGROUND_API_READ_KEY is set; filters go in "
            f"\"filters\", see {url}docs), or open {url} in a browser to use the viewer. To search from the command "
            "line, stop that serve first, or run both against a Qdrant server (set DERMGROUND_QDRANT_URL).")


def _print_table(response) -> None:  # noqa: ANN001 - SearchResponse
    from dermground.platform.attributes import get_attribute

    shown = list(response.attributes) or ["areaMM2"]
    header = ["rank", "isic_id", "score", "patient", "split"] + shown
    rows = [[str(i + 1), h.isic_id, f"{h.score:.4f}", str(h.payload.get("patient_id")), str(h.payload.get("split"))]
            + [_value(get_attribute(a), h.attributes.get(a)) for a in shown] for i, h in enumerate(response.hits)]
    if response.query_isic_id:
        rows.insert(0, ["query", response.query_isic_id, "", "", ""]
                    + [_value(get_attribute(a), response.query_attributes.get(a)) for a in shown])
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    click.echo(f"({len(response.hits)} hits, {response.mode.value}, {response.candidates} candidates, "
               f"{response.reembedded} re-embedded, {response.seconds * 1000:.0f} ms)", err=True)


def _value(attribute, value: float | None) -> str:  # noqa: ANN001
    return "-" if value is None else attribute.format_value(value)
