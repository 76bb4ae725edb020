"""``cfgdiff convert`` and ``cfgdiff demo-data``."""

from __future__ import annotations

import click

from cfgdiff.convert import ConvertOptions, convert
from cfgdiff.demo import KINDS, write_demo
from cfgdiff.formats.demo_files import FORMATS

from .common import Progress, storage_endpoint_option


@click.command("convert")
@click.argument("target")
@click.option("--condition", metavar="C", help="Observed condition: an array or file as TARGET (an image folder pairs "
              "with TARGET's by file name).")
@click.option("--mask", metavar="M", help="Mask, 1 = known: an array, FILE.nc:VAR, a folder of mask images (white = "
              "known, paired by name) or 'alpha' (the condition images' alpha). Default: NaN or _FillValue = missing.")
@click.option("--sample-dim", metavar="DIM", help="NetCDF/Zarr: the dimension that becomes rows [default: the first].")
@click.option("--degrade", metavar="SPEC", help="Make the condition from the target: drop:0.8, sensors:64, box:0.25, "
              "strokes:4, half, lines:2, sr:2, noise:0.1, mix:drop:0.4,box:0.25,sr:2.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output dataset directory (a path or an s3:// / gs:// URI).")
@storage_endpoint_option
@click.option("--layout", type=click.Choice(["NHW", "NCHW", "NHWC"]), help="Array layout (detected when unambiguous).")
@click.option("--force-layout", is_flag=True, help="Accept a --layout whose channel axis is larger than a spatial one.")
@click.option("--mask-from-zeros", is_flag=True, help="Condition == 0 means missing (real zeros then count as missing).")
@click.option("--normalization", type=click.Choice(["minmax", "meanstd"]), default="minmax", show_default=True)
@click.option("--val-fraction", type=float, default=0.1, show_default=True, help="Held-out fraction (seeded split).")
@click.option("--groups", metavar="G.npy", help="One integer id per row (a trajectory, a scene): rows sharing an id "
              "are kept in one split, so validation never shares a flow with training.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--chunk-rows", type=int, default=4096, show_default=True, help="Rows per chunk (bounds memory).")
@click.option("--compression", type=click.Choice(["auto", "lz4", "zstd", "none"]), default="auto", show_default=True,
              help="Parquet codec. auto: float fields uncompressed (zstd saves ~7% on them but reads ~5x slower), "
                   "masks and integer data lz4.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@click.pass_context
def convert_cmd(ctx, target, condition, mask, sample_dim, degrade, out, layout, force_layout, mask_from_zeros, normalization,
                val_fraction, groups, seed, chunk_rows, compression, overwrite):
    """Convert paired arrays or files to sharded Parquet for training and inference.

    TARGET is the clean data: .npy (memory-mapped), FILE.npz[:KEY] or a folder of .npy shards, laid out
    (N,H,W), (N,C,H,W) or (N,H,W,C); a folder of PNG/JPEG/TIFF images (one row per file); FILE.nc:VAR[,VAR]
    or STORE.zarr:VAR[,VAR] (variables stacked as channels); FILE.h5:/GROUP/DATASET. Any float or integer dtype.
    """
    if mask_from_zeros:
        click.echo("warning: --mask-from-zeros counts real zeros in the condition as missing", err=True)
    quiet = ctx.obj.get("verbose") is False
    opts = ConvertOptions(condition=condition, mask=mask, sample_dim=sample_dim, degrade=degrade, layout=layout,
                          force_layout=force_layout,
                          mask_from_zeros=mask_from_zeros, normalization=normalization, val_fraction=val_fraction,
                          groups=groups, seed=seed, chunk_rows=chunk_rows, compression=compression, overwrite=overwrite)
    bars = {"scan": Progress("scan ", not quiet), "write": Progress("write", not quiet)}
    meta = convert(target, out, opts, progress=lambda phase, done, total: bars[phase](done, total))
    c = meta["counts"]
    click.echo(f"wrote {out}: {c['train']} train + {c['val']} val rows, target {meta['shapes']['target']}, "
               f"condition {meta['shapes']['condition']}, masks from {meta['mask_source']}")


@click.command("demo-data")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory for target.npy.")
@click.option("--kind", type=click.Choice(KINDS), default="grf", show_default=True,
              help="grf: Gaussian random fields with an exact covariance (the Bayes-limit check); shapes: soft "
                   "ellipses; turbulence: decaying 2-D Navier-Stokes vorticity (non-Gaussian, with groups.npy).")
@click.option("--n", type=int, default=2048, show_default=True, help="Number of samples.")
@click.option("--size", type=int, default=32, show_default=True, help="Image side.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="npy", show_default=True,
              help="npy: target.npy; nc, zarr, h5: fields and observed (80% missing) files with coordinates; png, tif: "
                   "images/ and masks/ folders (16-bit PNG or float TIFF).")
@click.pass_context
def demo_data_cmd(ctx, out, kind, n, size, seed, fmt):
    """Generate an offline demo dataset (nothing is downloaded)."""
    bar = Progress("simulate", ctx.obj.get("verbose") is not False, unit="trajectory")
    meta = write_demo(out, kind=kind, n=n, size=size, seed=seed, progress=bar if kind == "turbulence" else None, fmt=fmt)
    if fmt != "npy":
        click.echo(f"wrote {', '.join(meta['files'].values())} ({n} x 1 x {size} x {size}, {kind})")
        return
    click.echo(f"wrote {meta['target']} ({n} x 1 x {size} x {size}, {kind})")
    if "groups" in meta:
        click.echo(f"wrote {meta['groups']} ({meta['trajectories']} trajectories; vorticity kurtosis "
                   f"{meta['vorticity_kurtosis']:.1f}, 3 for a Gaussian); convert with --groups {meta['groups']}")


COMMANDS = [convert_cmd, demo_data_cmd]
