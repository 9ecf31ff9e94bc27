"""``healthfusion explain RUN_DIR``: compute a run folder's explanations (and ``domains.csv`` if missing) from its
saved model and the data its ``config.yaml`` names, for runs trained before explanations were written."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from healthfusion.features.compose import CohortFeaturizer
from healthfusion.files import write_csv
from healthfusion.models.run_ensemble import first_network
from healthfusion.workflows.audit import domain_table, write_explanations
from healthfusion.workflows.common import open_source, open_test_sets
from healthfusion.workflows.config import load_run_config
from healthfusion.workflows.runfolder import MANIFEST, check_artefacts, record_artefacts


def explain_run(run_dir: str | Path, n_explain: int = 48, seed: int = 0, console=None) -> dict:
    """Write ``RUN_DIR/explanations/`` for the run's hybrid model on its test stays (background: validation stays).

    Raises
    ------
    ValueError
        If the folder lacks ``config.yaml``, ``predictions.csv`` or ``model/``, its model is not a binary risk model,
        or the data cannot be read; RunFolderError if its config, predictions or domains belong to another model.
    """
    run_dir = Path(run_dir)
    for name in ("config.yaml", "predictions.csv", "model"):
        if not (run_dir / name).exists():
            raise ValueError(f"{run_dir} has no {name}; explanations need a run folder written by `healthfusion train`.")
    check_artefacts(run_dir, ("config.yaml", "predictions.csv", "domains.csv"))
    config = load_run_config(run_dir / "config.yaml")  # its data paths are relative to the run folder
    model, state = first_network(run_dir / "model")  # an ensemble's first hybrid network
    if state is None:
        raise ValueError(f"{run_dir / 'model'} has no preprocessing.json; re-train to save the feature pipeline.")
    feat = CohortFeaturizer.from_state(state)
    if feat.label_spec_ is not None and feat.label_spec_.kind != "binary":
        raise ValueError(f"Explanations are computed for binary risk models; {run_dir} predicts the "
                         f"{feat.label_spec_.kind} label {feat.label_spec_.name!r}.")
    predictions = pd.read_csv(run_dir / "predictions.csv", dtype={"stay_id": str})
    ids = {s: predictions.loc[predictions["split"] == s, "stay_id"].tolist() for s in ("val", "test")}
    if not ids["test"]:
        raise ValueError(f"{run_dir} has no test stays (a run without a test set): explanations are computed on "
                         "test stays. Score held-out data with `healthfusion predict` instead.")
    main = open_source(config.data, console, images="image" in config.features.modalities)
    test = open_test_sets(config, console) or main
    cohorts = {"val": main, "test": test}
    if not (run_dir / "domains.csv").is_file():
        write_csv(domain_table({s: cohorts[s].stays for s in ids}, ids), run_dir / "domains.csv", index=False)
    data = {s: feat.transform(cohorts[s], ids[s], with_target=False) for s in ids}
    rows = {s: np.flatnonzero(data[s].usable_rows()) for s in ids}
    shutil.rmtree(run_dir / "explanations", ignore_errors=True)  # no figure of an earlier explanation stays behind
    summary = write_explanations(run_dir, model, feat, data["val"][rows["val"]], data["test"][rows["test"]],
                                 [ids["test"][i] for i in rows["test"]], n_explain=n_explain, seed=seed)
    if (run_dir / MANIFEST).is_file():
        record_artefacts(run_dir, ["domains.csv", *(f"explanations/{name}" for name in summary["files"]),
                                   "explanations/summary.json"])
    return summary
