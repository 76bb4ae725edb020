"""Quality and calibration against network calls (#20): every solver at several step counts on a trained model of
Gaussian-random-field data, where the Bayes posterior is known (kriging), so the posterior-mean MSE, the sample
spread and the coverage are read against exact figures.

``python -m bench calibration --checkpoint runs/demo/export --data runs/demo/data`` (the ``make run`` model by
default). Each row is one ``cfgdiff evaluate`` call (``cfgdiff.evaluate.run_evaluation``) with ``--no-baselines``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

SOLVERS = {"ddpm": 1.0, "ddim": 0.0, "dpm2m": 0.0, "dpm2m-sde": 0.0}  # method -> eta
HERE = Path(__file__).resolve().parent


def run(checkpoint: str, data: str, masks: tuple[str, ...] = ("drop:0.9", "box:0.4:random"),
        steps: tuple[int, ...] = (5, 10, 20, 50, 100), num_samples: int = 4, limit: int = 64,
        solvers: tuple[str, ...] = tuple(SOLVERS), record: bool = False) -> str:
    """The table (markdown) and its plot: bench/calibration*.png with ``record`` (the figure RESULTS.md shows),
    else a file in the temporary folder, so that a run that is not recorded never replaces the recorded figure."""
    from cfgdiff.evaluate import EvalOptions, run_evaluation
    from cfgdiff.metrics import exact_sample_coverage, exact_sample_std_ratio

    rows = []
    for mask in masks:
        for method in solvers:
            for n in steps:
                opts = EvalOptions(degrade=(mask,), steps=n, method=method, eta=SOLVERS[method], num_samples=num_samples,
                                   limit=limit, baselines=False)
                t0 = time.time()
                r = run_evaluation(checkpoint, data, opts)["results"][mask]["cfgdiff"]
                rows.append({"mask": mask, "method": method, "steps": n, "nfe": r["model_calls"], "psnr": r["psnr"],
                             "pm_over_bayes": r.get("posterior_mean_mse_over_bayes"),
                             "std_ratio": r.get("std_over_exact_std"), "coverage": r.get("coverage_2std"),
                             "seconds": time.time() - t0})
                print(f"{mask} {method} {n}: {rows[-1]}", flush=True)
    std_ideal, cov_ideal = exact_sample_std_ratio(num_samples), exact_sample_coverage(num_samples)
    png = HERE / _png(num_samples) if record else Path(tempfile.gettempdir()) / f"cfgdiff-{_png(num_samples)}"
    _plot(rows, masks, std_ideal, cov_ideal, solvers, num_samples, png)
    head = (f"`python -m bench calibration --checkpoint {checkpoint} --data {data} --limit {limit} --masks "
            f"{' '.join(masks)} --steps {' '.join(map(str, steps))} --solvers {' '.join(solvers)} "
            f"--num-samples {num_samples}`: {limit} validation fields, "
            f"K = {num_samples}, the checkpoint's w. Exact posterior samples would score sample std / exact std "
            f"{std_ideal:.3f} and coverage {cov_ideal:.3f} at this K (`metrics.exact_sample_std_ratio`, "
            "`exact_sample_coverage`).\n\n"
            "| mask | solver | steps | network calls / sample | PSNR dB | posterior-mean MSE / Bayes | "
            "sample std / exact std | coverage 2 std | seconds |\n|---|---|---|---|---|---|---|---|---|\n")
    f = lambda v, fmt: "-" if v is None else format(v, fmt)
    body = "".join(f"| {r['mask']} | {r['method']} | {r['steps']} | {r['nfe']} | {f(r['psnr'], '.2f')} | "
                   f"{f(r['pm_over_bayes'], '.3f')} | {f(r['std_ratio'], '.3f')} | {f(r['coverage'], '.3f')} | "
                   f"{r['seconds']:.1f} |\n" for r in rows)
    return head + body + f"\n![std ratio and coverage against network calls]({png.name if record else png})\n"


def _png(num_samples: int) -> str:
    return "calibration.png" if num_samples == 4 else f"calibration_k{num_samples}.png"


def _plot(rows: list[dict], masks: tuple[str, ...], std_ideal: float, cov_ideal: float, solvers: tuple[str, ...],
          num_samples: int, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(masks), 3, figsize=(13, 3.4 * len(masks)), squeeze=False)
    for i, mask in enumerate(masks):
        for j, (key, label, ideal) in enumerate((("pm_over_bayes", "posterior-mean MSE / Bayes", 1.0),
                                                 ("std_ratio", "sample std / exact std", std_ideal),
                                                 ("coverage", "coverage of mean ± 2 std", cov_ideal))):
            ax = axes[i][j]
            for method in solvers:
                pts = [(r["nfe"], r[key]) for r in rows if r["mask"] == mask and r["method"] == method and r[key] is not None]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=method)
            ax.axhline(ideal, color="k", ls="--", lw=1, label="exact samples")
            ax.set_xscale("log")
            ax.set_xlabel("network calls per sample")
            ax.set_title(f"{mask}: {label} (K={num_samples})", fontsize=10)
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
