"""SHAP comparison of the source model and the adapted model of a transfer run (also recomputed from a run folder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from healthfusion.data.domains import split_domains
from healthfusion.features import batch as B
from healthfusion.features.compose import CohortFeaturizer
from healthfusion.files import atomic_path, write_csv, write_text
from healthfusion.models.transfer import TransferModel
from healthfusion.workflows.runfolder import MANIFEST, check_artefacts, record_artefacts
from healthfusion.workflows.transfer.config import TransferConfig, load_transfer_config
from healthfusion.workflows.transfer.features import featurize
from healthfusion.workflows.transfer.protocol import Rows, seed_splits


def explain_transfer_run(run_dir: str | Path, console=None) -> dict:
    """(Re)compute the SHAP outputs of a finished transfer run from its ``config.yaml`` and saved models.

    The features are refitted on the source stays exactly as in the run (deterministic) and the first seed's
    splits are rebuilt; the models are read from ``models/``.

    Raises
    ------
    ValueError
        If the run folder lacks its config or the two models (source and ``shap.compare`` at the headline size of
        the first seed); RunFolderError if its config or models changed after the sweep wrote them.
    """
    from healthfusion.models.base import load_network

    run_dir = Path(run_dir)
    check_artefacts(run_dir, ["config.yaml"])
    config = load_transfer_config(run_dir / "config.yaml")
    p, compare = config.protocol, config.shap.compare
    first = p.seeds[0]
    folders = {"source_only": run_dir / "models" / "source_only" / f"seed{first}",
               compare: run_dir / "models" / compare / f"seed{first}-n{p.headline_size}"}
    missing = [str(f) for f in folders.values() if not f.is_dir()]
    if missing:
        raise ValueError(f"Run {run_dir} lacks the saved model folder(s) {missing}; SHAP compares the source model "
                         f"with {compare!r} at the headline size of seed {first}.")
    torch.set_num_threads(config.threads)
    from healthfusion.workflows.transfer.run import load_cohort

    cohort = load_cohort(config, console)
    d = config.domain
    split = split_domains(cohort, d.column, d.target, d.source, d.bins)
    featurizer, _, data = featurize(config, cohort, split)
    models = {name: load_network(folder)[0] for name, folder in folders.items()}
    info = explain_models(config, run_dir, Rows(data), seed_splits(config, cohort, split, first), models,
                          featurizer, first)
    if (run_dir / MANIFEST).is_file():  # the recomputed SHAP outputs are artefacts of the sweep's models
        record_artefacts(run_dir, [f"shap/{p.name}" for p in (run_dir / "shap").iterdir() if p.is_file()])
    return info


def explain_models(config: TransferConfig, run_dir: Path, rows: Rows, ids: dict[str, Any],
                   models: dict[str, TransferModel], featurizer: CohortFeaturizer, seed: int) -> dict:
    """SHAP values (expected gradients, :func:`~healthfusion.evaluation.explain.attribute_timeseries`) of the
    source model and the adapted model on the same target test stays, against the same source background.

    Writes to ``run_dir / "shap"``: ``global_importance.csv`` (mean |SHAP| per variable, one column per model),
    ``global_importance.png`` (side by side), ``top_features.csv`` (each explained stay's top ``top_k``
    contributors per model) and ``shap.json`` (settings and the Spearman correlation of the two rankings).
    """
    from scipy.stats import spearmanr

    from healthfusion.evaluation.explain import attribute_timeseries, model_forward

    spec = config.shap
    out = run_dir / "shap"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 11])
    test_ids = sorted(rng.choice(ids["test"], min(spec.n_patients, len(ids["test"])), replace=False).tolist(),
                      key=ids["test"].index)
    bg_ids = rng.choice(ids["source_train"], min(spec.n_background, len(ids["source_train"])),
                        replace=False).tolist()
    batch, background = rows(test_ids).without(B.TARGET), rows(bg_ids).without(B.TARGET)
    variables = featurizer.transformers_["ts"].variables_
    static = "static" in featurizer.transformers_
    static_names = [f"static:{n}" for n in featurizer.transformers_["static"].feature_names_] if static else None
    importance, tops = {}, []
    for name, model in models.items():
        model.eval()
        attr = attribute_timeseries(model_forward(model), batch, background=background, variables=variables,
                                    method="gradient_shap", n_samples=spec.n_samples, include_static=static,
                                    static_names=static_names, seed=seed, sample_ids=test_ids,
                                    step_hours=config.features.step)
        importance[name] = attr.global_importance()
        tops.append(attr.top_features(spec.top_k).assign(model=name))
    table = pd.DataFrame(importance)
    table.index.name = "feature"
    table = table.sort_values(table.columns[0], ascending=False)
    write_csv(table, out / "global_importance.csv")
    write_csv(pd.concat(tops, ignore_index=True).rename(columns={"sample": "stay_id"}), out / "top_features.csv",
              index=False)
    names = list(models)
    rho = float(spearmanr(table[names[0]], table[names[-1]]).statistic) if len(names) > 1 else float("nan")
    _plot_importance(table, out / "global_importance.png", spec.top_k * 3)
    info = {"method": "gradient_shap (expected gradients, logit units)", "models": names, "seed": seed,
            "n_explained": len(test_ids), "n_background": len(bg_ids), "n_samples": spec.n_samples,
            "spearman_importance": rho}
    write_text(out / "shap.json", json.dumps(info, indent=2))
    return info


def _plot_importance(table: pd.DataFrame, path: Path, top: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table.columns), figsize=(5.5 * len(table.columns), 0.28 * top + 1.5),
                             squeeze=False)
    for ax, name in zip(axes[0], table.columns, strict=True):
        part = table[name].sort_values(ascending=False).head(top)[::-1]
        ax.barh(part.index, part.to_numpy())
        ax.set_title(name)
        ax.set_xlabel("mean |SHAP| (logit)")
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


