"""`dermground synth`: write a synthetic SLICE-3D data set in the ISIC 2024 format."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from dermground.platform.commands.context import from_settings


@click.command("synth")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write train-metadata.csv and the images into.")
@click.option("--patients", type=click.IntRange(min=1), default=50, show_default=True,
              help="Number of simulated patients.")
@click.option("--images", type=click.IntRange(min=1), default=500, show_default=True,
              help="Number of lesion images.")
@click.option("--seed", type=int, default=from_settings("seed"), show_default="DERMGROUND_SEED",
              help="Random seed; the same seed gives byte-identical output.")
@click.option("--size", type=click.IntRange(min=32, max=2048), default=128, show_default=True,
              help="Image width and height in pixels (the field of view is always 15 mm).")
@click.option("--layout", type=click.Choice(["hdf5", "folder"]), default="hdf5", show_default=True,
              help="train-image.hdf5, or train-image/image/<isic_id>.jpg files.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes [default: all cores]; the output does not depend on it.")
@click.option("--overwrite", is_flag=True, help="Replace a data set already in --out.")
def synth(out: Path, patients: int, images: int, seed: int, size: int, layout: str,
          workers: int | None, overwrite: bool) -> None:
    """Generate simulated patients' lesion crops with attributes measured from the pixels."""
    from dermground.ingest.synth import DataSetExistsError, generate_dataset
    from dermground.platform.next_step import next_command
    from dermground.platform.attributes import get_attribute

    from dermground.platform.out_folder import OutFolderError, require_writable_folder

    try:
        require_writable_folder(out)  # a clear error with a next step (--out under a file, a read-only disk)
        summary = generate_dataset(out, patients=patients, images=images, seed=seed, size=size,
                                   layout=layout, progress=True, workers=workers, overwrite=overwrite)
    except DataSetExistsError as exc:
        raise click.ClickException(
            f"{exc.out} already holds a data set ({exc.found}): replace it with "
            f"`{next_command(_given_arguments() + ' --overwrite')}`, or give another --out") from None
    except OutFolderError as exc:
        raise click.ClickException(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"could not write the data set: {exc}") from None

    click.echo(f"wrote {summary.images} images of {summary.patients} patients to {summary.out} "
               f"({summary.layout}) in {summary.seconds:.1f} s "
               f"({summary.images_per_second:.0f} images/s, {summary.workers} worker(s))")
    click.echo(f"split by patient: train {summary.split_counts['train']} images, "
               f"test {summary.split_counts['test']} images")
    click.echo(f"{'attribute':<24}{'min':>10}{'median':>10}{'max':>10}")
    for name, (low, median, high) in summary.attribute_stats.items():
        d = get_attribute(name).decimals
        click.echo(f"{name:<24}{low:>10.{d}f}{median:>10.{d}f}{high:>10.{d}f}")


def _given_arguments() -> str:
    """`synth` with the options this run was given on the command line, quoted: the command to repeat."""
    context = click.get_current_context()
    words = ["synth"]
    for param in context.command.params:
        if context.get_parameter_source(param.name) is click.core.ParameterSource.COMMANDLINE \
                and not getattr(param, "is_flag", False):
            words += [param.opts[0], shlex.quote(str(context.params[param.name]))]
    return " ".join(words)
