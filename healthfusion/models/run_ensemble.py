"""The ensemble a run can train as its model: hybrid networks over several seeds plus gradient boosting, saved as
one folder that :func:`healthfusion.models.scoring.load_model` scores like a single model (and each member on its
own).

Members and how they combine:

* ``hybrid``: the mean of the logits of the hybrid networks trained with different seeds (a uniform
  :class:`~healthfusion.models.ensemble.EnsembleWeights` over the networks);
* ``gradient_boosting`` (optional): :class:`~healthfusion.models.boosting.BoostingClassifier` on the engineered
  per-variable summary features (:func:`~healthfusion.features.compose.engineered_features`) of the same stays;
* the ensemble: convex weights over the members (:class:`~healthfusion.models.ensemble.EnsembleWeights`, logit
  scale by default), chosen on predictions for stays the scoring models were not fitted on.

A stay none of the hybrid's modalities covers gets no ensemble score (NaN), never boosting's score in disguise.

Folder layout (no pickle; every part loads without the training data)::

    ensemble.json              format, members, seeds, engineered statistics, the member weights
    preprocessing.json         the fitted featurizer's state (shared by all members)
    hybrid-seed<k>/            one saved HybridModel per seed (config.json, model.safetensors, preprocessing.json)
    gradient_boosting/         BoostingClassifier.save (model.txt, config.json) and preprocessing.json
    model.json (each folder)   the card and file checksums (healthfusion.models.folder), written by the run

Example::

    ens = RunEnsemble(featurizer, {0: net0, 1: net1}, EnsembleWeights(("hybrid", "gradient_boosting"), (.3, .7)),
                      boosting=gbm, stats=("last", "mean"))
    ens.save("runs/x/model")
    p = RunEnsemble.load("runs/x/model").predict_proba(cohort, stay_ids)   # [n], NaN where unscorable
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from healthfusion.data.cohort import Cohort
from healthfusion.features.compose import CohortFeaturizer, engineered_features
from healthfusion.features.dataset import ArrayDataset
from healthfusion.features.summary import SUMMARY_STATS
from healthfusion.models.base import PREPROCESSING_FILE, ModelLoadError, PretrainedModel, load_network
from healthfusion.models.boosting import BoostingClassifier
from healthfusion.models.ensemble import EnsembleWeights, combine
from healthfusion.models.inference import network_outputs

log = logging.getLogger(__name__)

ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_MODEL_FORMAT = "healthfusion.ensemble-model"
ENSEMBLE_MODEL_VERSION = 1
HYBRID, BOOSTING = "hybrid", "gradient_boosting"


def is_ensemble_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :meth:`RunEnsemble.save`."""
    return (Path(path) / ENSEMBLE_FILE).is_file()


def network_folder(seed: int) -> str:
    """Name of the sub-folder holding the hybrid network trained with ``seed``."""
    return f"hybrid-seed{seed}"


def _read_spec(directory: Path) -> dict:
    """``ensemble.json`` of ``directory``, checked for format and version. Raises ModelLoadError."""
    path = directory / ENSEMBLE_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path} does not exist; expected an ensemble folder written by healthfusion train.")
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"Cannot read {path}: {err}") from err
    if not isinstance(spec, dict) or spec.get("format") != ENSEMBLE_MODEL_FORMAT \
            or spec.get("format_version") != ENSEMBLE_MODEL_VERSION:
        got = (spec.get("format"), spec.get("format_version")) if isinstance(spec, dict) else (None, None)
        raise ModelLoadError(f"{path} has format {got[0]!r} version {got[1]!r}; expected {ENSEMBLE_MODEL_FORMAT!r} "
                             f"version {ENSEMBLE_MODEL_VERSION}.")
    return spec


def bag_probability(networks: Sequence[PretrainedModel], data: ArrayDataset) -> np.ndarray:
    """``[n]`` probability of a bag of binary networks: sigmoid of the mean of their logits."""
    probs = {str(i): network_outputs(net, data, "binary") for i, net in enumerate(networks)}
    return combine(probs, EnsembleWeights.uniform(list(probs)))


def combine_members(member_probs: Mapping[str, np.ndarray], weights: EnsembleWeights) -> np.ndarray:
    """The ensemble probability ``[n]``; NaN where any member has no score."""
    stack = {m: np.asarray(member_probs[m], dtype=np.float64) for m in weights.members}
    n = len(next(iter(stack.values())))
    ok = np.ones(n, dtype=bool)
    for p in stack.values():
        ok &= ~np.isnan(p)
    out = np.full(n, np.nan)
    if ok.any():
        out[ok] = combine({m: p[ok] for m, p in stack.items()}, weights)
    return out


@dataclass
class RunEnsemble:
    """A fitted ensemble of hybrid networks (one per seed) and optionally gradient boosting.

    Attributes
    ----------
    featurizer : CohortFeaturizer
        Fitted; gives the networks' inputs and (with ``stats``) boosting's engineered features.
    networks : dict of int to PretrainedModel
        Seed -> binary hybrid network; at least one.
    weights : EnsembleWeights
        Over ``"hybrid"`` and, if ``boosting`` is given, ``"gradient_boosting"``.
    boosting : BoostingClassifier, optional
    stats : tuple of str
        Per-variable statistics of the engineered features boosting was fitted on.

    Raises
    ------
    ValueError
        On construction: no networks, or weights whose members do not match the given models.
    """

    featurizer: CohortFeaturizer
    networks: dict[int, PretrainedModel]
    weights: EnsembleWeights
    boosting: BoostingClassifier | None = None
    stats: tuple[str, ...] = SUMMARY_STATS

    def __post_init__(self) -> None:
        if not self.networks:
            raise ValueError("A RunEnsemble needs at least one hybrid network.")
        expected = {HYBRID} | ({BOOSTING} if self.boosting is not None else set())
        if set(self.weights.members) != expected:
            raise ValueError(f"Ensemble weights are over {list(self.weights.members)} but the models given are "
                             f"{sorted(expected)}.")
        self.stats = tuple(self.stats)

    @property
    def members(self) -> tuple[str, ...]:
        return self.weights.members

    def member_probabilities(self, cohort: Cohort, stay_ids: Sequence[str],
                             data: ArrayDataset | None = None) -> dict[str, np.ndarray]:
        """``{member: p [n]}`` for ``stay_ids``; the hybrid's is NaN for stays with none of its modalities.

        ``data`` (the featurizer's output for these stays) is computed when not given.
        """
        ids = [str(s) for s in stay_ids]
        data = data if data is not None else self.featurizer.transform(cohort, ids, with_target=False)
        usable = data.usable_rows()
        hybrid = np.full(len(ids), np.nan)
        if usable.any():
            hybrid[usable] = bag_probability(list(self.networks.values()), data[usable])
        out = {HYBRID: hybrid}
        if self.boosting is not None:
            x = engineered_features(cohort, self.featurizer, ids, stats=self.stats)
            out[BOOSTING] = self.boosting.predict_proba(x)[:, 1]
        return out

    def predict_proba(self, cohort: Cohort, stay_ids: Sequence[str], data: ArrayDataset | None = None) -> np.ndarray:
        """``[n]`` ensemble probabilities (uncalibrated); NaN for stays the hybrid cannot score."""
        return combine_members(self.member_probabilities(cohort, stay_ids, data), self.weights)

    # ----------------------------------------------------------------------------------------------- save/load
    def save(self, directory: str | Path) -> Path:
        """Write the folder described in the module docstring (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = self.featurizer.get_state()
        for seed, net in self.networks.items():
            net.save_pretrained(directory / network_folder(seed), preprocessing_state=state)
        text = json.dumps(state, indent=2, sort_keys=True, allow_nan=False)
        if self.boosting is not None:
            self.boosting.save(directory / BOOSTING)
            (directory / BOOSTING / PREPROCESSING_FILE).write_text(text)  # so the member scores on its own
        (directory / PREPROCESSING_FILE).write_text(text)
        spec = {
            "format": ENSEMBLE_MODEL_FORMAT,
            "format_version": ENSEMBLE_MODEL_VERSION,
            "seeds": [int(s) for s in self.networks],
            "boosting": self.boosting is not None,
            "stats": list(self.stats),
            "weights": self.weights.to_dict(),
        }
        (directory / ENSEMBLE_FILE).write_text(json.dumps(spec, indent=2, default=str))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> RunEnsemble:
        """Rebuild an ensemble saved by :meth:`save`.

        Raises
        ------
        ModelLoadError
            A missing or unreadable ``ensemble.json``, another format or version, a missing or corrupted member
            folder (named), or members whose preprocessing differs from the ensemble's.
        """
        directory = Path(directory)
        spec, path = _read_spec(directory), directory / ENSEMBLE_FILE
        try:
            shared = json.loads((directory / PREPROCESSING_FILE).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ModelLoadError(f"Cannot read the ensemble's preprocessing in {directory}: {err}") from err
        try:
            weights = EnsembleWeights.from_dict(spec["weights"])
            seeds = [int(s) for s in spec["seeds"]]
        except (KeyError, TypeError, ValueError) as err:
            raise ModelLoadError(f"{path} is not a valid ensemble spec: {err}") from err
        networks = {}
        for seed in seeds:
            net, state = load_network(directory / network_folder(seed))
            if state != shared:
                raise ModelLoadError(f"{directory / network_folder(seed)} was saved with other preprocessing than "
                                     f"the ensemble ({directory / PREPROCESSING_FILE}); the folder was edited.")
            networks[seed] = net
        boosting = BoostingClassifier.load(directory / BOOSTING) if spec.get("boosting") else None
        try:
            return cls(CohortFeaturizer.from_state(shared), networks, weights, boosting,
                       tuple(spec.get("stats", SUMMARY_STATS)))
        except ValueError as err:
            raise ModelLoadError(f"{path}: {err}") from err


def primary_network_dir(model_dir: str | Path) -> Path:
    """The folder of the hybrid network a run's ``model/`` stands for: ``model_dir`` itself for a single model, an
    ensemble's first-seed network otherwise (for explanations and the report's model card).

    Raises
    ------
    ModelLoadError
        An unreadable ``ensemble.json``.
    """
    model_dir = Path(model_dir)
    if not is_ensemble_folder(model_dir):
        return model_dir
    seeds = _read_spec(model_dir).get("seeds") or [0]
    return model_dir / network_folder(int(seeds[0]))


def first_network(model_dir: str | Path) -> tuple[PretrainedModel, dict | None]:
    """:func:`~healthfusion.models.base.load_network` of :func:`primary_network_dir`."""
    return load_network(primary_network_dir(model_dir))
