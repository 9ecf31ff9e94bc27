"""``healthfusion federate --config FL.yaml``: train the hybrid across sites without pooling their stays.

Sites are the values of a domain column of the cohort's stays (``federated.site_column``: site, hospital, region,
care unit); each site's patients are split into train and test (stratified by the label, ``federated.test``).
A simulation (``--role simulate``, the default) runs every site in this process; a deployment runs the server
(``--role server``) and each site (``--role site --site NAME``) as separate processes over Flower (see
:mod:`healthfusion.federated.flower`). Each round a site trains ``training.max_epochs`` local epochs.

The run folder holds ``config.yaml``, ``model/`` (the global hybrid: a normal model folder that ``healthfusion
predict`` loads), ``rounds.csv`` (per round: the sites that took part, those that failed and why, the samples
aggregated; with DP each site's epsilon so far and DP-SGD steps in the round), ``sites.csv`` (per site: stays per
split, rounds taken, calibration temperature and, with DP, epsilon, delta and steps over the run),
``site_metrics.csv`` (per round and site: n, accuracy at 0.5, log loss, AUROC on the site's test
stays), ``server_state/`` (what a restarted server resumes from) and ``summary.csv`` with one row per setting:
the federated strategy, and with ``federated.compare`` the pooled model and one local-only model per site, each
scored on every site's test stays (columns ``setting``, ``epsilon`` (with ``federated.privacy``: the largest
per-site epsilon, each site's in ``rounds.csv``; empty without differential privacy; the personalisation epochs
are not covered), ``temperature`` (the calibration temperature the row's risks were scored with; empty for the
personalised row, whose sites each use their own, and for an uncalibrated model), ``mean_client_accuracy``,
``auroc``, ``ece``, ``cal_slope`` and ``cal_intercept`` each with its bootstrap 95% CI over the pooled test stays,
``n_test``). Every row is scored calibrated, like a saved model: the federated model with the federated
temperature, the pooled reference with a temperature fitted on all sites' validation stays, each local-only
reference on its own site's validation stays, each personalised copy on its site's.

Each site's non-test patients are split again into training and validation stays (``federated.validation``,
default 0.15); after the last round every site fits a temperature on its validation stays and the global model's
calibrator is their validation-size-weighted geometric mean (:mod:`healthfusion.federated.calibration`), saved in
the model folder like any calibrator (accuracy at 0.5 and AUROC are unchanged by a temperature). With
``federated.privacy`` the model card lists each site's epsilon.

Limitation: the feature pipeline (standardisation, vocabularies) is fitted on the union of the sites' training
stays, the one step that is not federated; every process fits it from the same data, so all sites share it.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from healthfusion._version import __version__
from healthfusion.data.splits import split_patients
from healthfusion.evaluation.bootstrap import bootstrap_ci
from healthfusion.evaluation.calibration import CALIBRATION_METRICS, calibration_with_ci
from healthfusion.evaluation.metrics import auroc
from healthfusion.features.dataset import ArrayDataset
from healthfusion.federated.calibration import calibrate_federated, combine_temperatures, fit_temperature
from healthfusion.federated.client import Site, set_weights
from healthfusion.federated.server import FederatedConfig, run_rounds
from healthfusion.models.calibration import Calibrator
from healthfusion.models.folder import write_card
from healthfusion.training import Trainer, TrainerConfig
from healthfusion.workflows.common import (
    data_card,
    make_featurizer,
    open_source,
    sample_stays,
    training_summary,
)
from healthfusion.workflows.config import (
    DataSpec,
    FeatureSpec,
    ModelSpec,
    StrictModel,
    read_yaml_config,
    resolve_paths,
)
from healthfusion.workflows.modeling import build_run_hybrid
from healthfusion.workflows.runfolder import write_run_config

log = logging.getLogger(__name__)


class FederatedSpec(FederatedConfig):
    """``federated:`` section: the strategy (:class:`FederatedConfig`) plus how sites are formed and compared."""

    site_column: str = "site"
    # group the site column's values (e.g. 186 eICU hospitals) into this many sites of similar size; None: one site
    # per value
    site_groups: int | None = Field(None, ge=2)
    test: float = Field(0.34, gt=0, lt=1)
    # fraction of each site's non-test patients kept as its validation stays (the site's calibration temperature);
    # 0: the global model is not calibrated
    validation: float = Field(0.15, ge=0, lt=1)
    split_seed: int = 0
    compare: bool = True  # also fit the pooled model and one local-only model per site
    compare_epochs: int = Field(20, ge=1)  # most epochs of those reference fits (early stopping on validation)


class FederateConfig(StrictModel):
    name: str = "federate"
    out: Path | None = None
    data: DataSpec
    features: FeatureSpec = Field(default_factory=lambda: FeatureSpec(modalities=["static"]))
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainerConfig = Field(default_factory=lambda: TrainerConfig(max_epochs=1))
    federated: FederatedSpec = Field(default_factory=FederatedSpec)
    n_boot: int = Field(500, ge=1)


def load_federate_config(path: str | Path, overrides: Sequence[str] = (), out: str | Path | None = None,
                         quick: bool = False) -> FederateConfig:
    """Read and validate FL.yaml (``overrides``, ``out`` and ``quick`` as in
    :func:`~healthfusion.workflows.config.read_yaml_config`); relative data paths are resolved against its folder.

    Raises
    ------
    ConfigError
        Naming the file and each offending key.
    """
    config = read_yaml_config(path, FederateConfig, overrides, out, quick)
    resolve_paths(Path(path).parent, config.data, ("path", "cohort"))
    return config


class PreparedSites:
    """The featurizer and each site's train/test arrays, built the same way in every process."""

    def __init__(self, config: FederateConfig, console=None):
        spec = config.federated
        cohort = open_source(config.data, console)
        if config.data.max_stays is not None and len(cohort) > config.data.max_stays:
            n_read = len(cohort)
            cohort = sample_stays(cohort, config.data.max_stays, config.data.split.seed)
            if console is not None:
                console.print(f"      data.max_stays: {len(cohort)} of {n_read} stays used (whole patients, seed "
                              f"{config.data.split.seed})")
        label = cohort.meta.label(config.data.label)
        if label.kind != "binary":
            raise ValueError(f"healthfusion federate trains binary labels; {config.data.label!r} is {label.kind}. "
                             f"Pick a binary label: {[x.name for x in cohort.meta.labels if x.kind == 'binary']}.")
        stays = cohort.stays
        if spec.site_column not in stays.columns:
            raise ValueError(f"federated.site_column {spec.site_column!r} is not a column of the cohort's stays "
                             f"(columns: {list(stays.columns)}); name the column that tells the sites apart.")
        y = cohort.label(config.data.label)
        site_of = stays.set_index("stay_id")[spec.site_column]
        missing = site_of.isna()
        if missing.any():
            raise ValueError(f"{int(missing.sum())} stays have no {spec.site_column!r} (e.g. stay "
                             f"{site_of.index[missing][0]}); fill the column or drop those stays.")
        if spec.site_groups is not None:
            site_of = group_sites(site_of, spec.site_groups)
            if console is not None:
                sizes = site_of.value_counts()
                console.print(f"      federated.site_groups: {stays[spec.site_column].nunique()} values of "
                              f"{spec.site_column!r} grouped into {len(sizes)} sites of {sizes.min()}-{sizes.max()} "
                              "stays")
        self.ids: dict[str, dict[str, list[str]]] = {}
        self.unlabeled: dict[str, int] = {}
        for name in sorted(site_of.unique(), key=str):
            sub = stays[(stays["stay_id"].map(site_of) == name).to_numpy()]
            lab = y.reindex(sub["stay_id"])
            self.unlabeled[str(name)] = int(lab.isna().sum())
            sub = sub[lab.notna().to_numpy()]
            split = split_patients(sub, {"train": 1 - spec.test, "test": spec.test}, seed=spec.split_seed,
                                   stratify=y.reindex(sub["stay_id"]))
            ids = {s: split.index[split == s].tolist() for s in ("train", "test")}
            ids["val"] = []
            if spec.validation > 0 and ids["train"]:  # the test stays do not depend on the validation fraction
                rest = sub[sub["stay_id"].isin(ids["train"])]
                inner = split_patients(rest, {"train": 1 - spec.validation, "val": spec.validation},
                                       seed=spec.split_seed + 1, stratify=y.reindex(rest["stay_id"]))
                ids.update({s: inner.index[inner == s].tolist() for s in ("train", "val")})
            self.ids[str(name)] = ids
        too_small = [n for n, ids in self.ids.items() if not ids["train"] or not ids["test"]]
        if too_small:
            raise ValueError(f"Site(s) {too_small} have no training or no test stays after the split; drop them from "
                             "the cohort or change federated.test.")
        all_train = [i for ids in self.ids.values() for i in ids["train"]]
        self.featurizer = make_featurizer(config.features, config.data.label).fit(cohort, all_train)
        self.cohort, self.label, self.train_ids = cohort, label, all_train
        self.sites = []
        for name, ids in self.ids.items():
            data = {s: self.featurizer.transform(cohort, ids[s]) if ids[s] else None for s in ("train", "val", "test")}
            self.sites.append(Site(name, data["train"], data["test"], data["val"]))

    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise ValueError(f"Unknown site {name!r}; the cohort's sites are {[s.name for s in self.sites]}.")


def _run_dir(config: FederateConfig) -> Path:
    run_dir = Path(config.out) if config.out else Path("runs") / f"{config.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _score(models: dict[str, object], sites: list[Site], n_boot: int, seed: int,
           calibrators: dict[str, Calibrator | None]) -> dict:
    """Mean over sites of test accuracy and the AUROC, ECE, calibration slope and intercept (bootstrap CIs) over all
    test stays; ``models`` maps site name -> the model that site uses (the same for all but personalised settings)
    and ``calibrators`` site name -> the calibrator applied to that model's risks (None: uncalibrated)."""
    accs, ys, ps = [], [], []
    for site in sites:
        p = site.predict(models[site.name])
        if calibrators[site.name] is not None:
            p = calibrators[site.name].transform(p)
        y = site.test["target"]
        accs.append(float(np.mean((p >= 0.5) == (y >= 0.5))))
        ys.append(y)
        ps.append(p)
    y_all, p_all = np.concatenate(ys), np.concatenate(ps)
    ci = bootstrap_ci(auroc, y_all, p_all, n_boot=n_boot, seed=seed)
    cal = calibration_with_ci(y_all, p_all, n_boot=n_boot, seed=seed).set_index("metric")
    calibration = {f"{m}{suffix}": float(cal.loc[m, column]) for m in CALIBRATION_METRICS
                   for suffix, column in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high"))}
    used = {c.params_["temperature"] for c in calibrators.values() if c is not None}
    return {"temperature": used.pop() if len(used) == 1 and None not in calibrators.values() else None,
            "mean_client_accuracy": float(np.mean(accs)), "auroc": ci.value, "auroc_ci_low": ci.ci_low,
            "auroc_ci_high": ci.ci_high, **calibration, "n_test": int(sum(len(y) for y in ys)),
            **{f"accuracy_{s.name}": a for s, a in zip(sites, accs, strict=True)}}


def _card(config: FederateConfig, prepared: PreparedSites, calibrator, privacy: dict | None) -> dict:
    """The global model's ``model.json`` card (:func:`healthfusion.models.folder.write_card`): the sites' pooled
    training stays summarised for drift checks; the federated temperature (:mod:`healthfusion.federated.calibration`)
    as its calibrator (None without validation stays); with DP, each site's budget (risk group: probability >= 0.5)."""
    label = prepared.featurizer.label_spec_ or prepared.label
    card = {
        "kind": "hybrid", "healthfusion_version": __version__, "label": label.to_dict(),
        "data": data_card(config.data, prepared.cohort), "threshold": 0.5,
        "risk_groups": {"rule": "high if the probability >= threshold, else low", "threshold": 0.5,
                        "groups": ["low", "high"]},
        "operating_point": None, "calibrator": None if calibrator is None else calibrator.to_dict(),
        "training": training_summary(prepared.cohort, prepared.train_ids, prepared.label),
        "scoring": {"trained": f"federated ({strategy_name(config.federated)}) across "
                               f"{len(prepared.sites)} sites, {config.federated.rounds} rounds"},
    }
    if privacy is not None:
        card["privacy"] = privacy
    return card


def _site_table(prepared: PreparedSites, rounds: list[dict], per_site_cal: dict, privacy) -> pd.DataFrame:
    """``sites.csv``: per site its stays per split, calibration temperature and, with DP, its budget spent (the
    epsilon after its last round, at its delta, and the DP-SGD steps over the run)."""
    rows = []
    for site in prepared.sites:
        row = {"site": site.name, "n_train": len(site.train), "n_val": 0 if site.val is None else len(site.val),
               "n_test": len(site.test), "rounds_taken": sum(site.name in r["sites"] for r in rounds),
               "temperature": per_site_cal.get(site.name, {}).get("temperature")}
        if privacy is not None:
            eps = [r["epsilon"][site.name] for r in rounds if site.name in (r.get("epsilon") or {})]
            row.update(epsilon=eps[-1] if eps else 0.0, delta=privacy.resolve_delta(len(site.train)),
                       dp_steps=sum((r.get("dp_steps") or {}).get(site.name) or 0 for r in rounds),
                       max_grad_norm=privacy.max_grad_norm)
        rows.append(row)
    return pd.DataFrame(rows)


def strategy_name(spec: FederatedConfig) -> str:
    """A short name of the configured strategy (summary.csv's ``setting``)."""
    base = {"fedavg": "fedavg", "median": "median", "trimmed_mean": "trimmed_mean"}[spec.aggregation]
    if spec.server_optimizer != "none":
        base = f"fed{spec.server_optimizer}"
    elif spec.proximal_mu > 0:
        base = f"fedprox(mu={spec.proximal_mu:g})"
    if spec.privacy is not None:
        base += "+dp"
    if spec.server_privacy is not None:
        base += "+serverdp"
    return base


def run_federate(config: FederateConfig, console=None,
                 role: Literal["simulate", "server", "site"] = "simulate", site: str | None = None,
                 address: str = "127.0.0.1:8080") -> Path:
    """Run the job ``config`` describes in the given ``role``; returns the run folder (the site role writes none
    and returns the current folder).

    Raises
    ------
    ValueError (SourceError, ConfigError)
        Unreadable data, a non-binary label, a missing site column, an unknown ``site``, a site without train or
        test stays.
    """
    def say(text):
        if console is not None:
            console.print(text)

    spec = config.federated
    fed = FederatedConfig(**{k: getattr(spec, k) for k in FederatedConfig.model_fields})
    prepared = PreparedSites(config, console)
    sites = prepared.sites
    model, local = build_run_hybrid(prepared.featurizer, config.model, config.training)
    if role == "site":
        if site is None:
            raise ValueError(f"--role site needs --site NAME, one of {[s.name for s in sites]}.")
        from healthfusion.federated.flower import connect

        own = prepared.site(site)
        say(f"[bold cyan]Site[/] {own.name}: {len(own.train)} training, {len(own.test)} test stays; server {address}")
        connect(address, model, own, local, fed)
        return Path.cwd()

    run_dir = _run_dir(config)
    write_run_config(json.loads(config.model_dump_json()), run_dir)  # paths relative to the run folder
    say("[bold cyan]Sites[/] " + ", ".join(f"{s.name} (train {len(s.train)}, val {0 if s.val is None else len(s.val)}, "
                                         f"test {len(s.test)})" for s in sites)
        + (f"; stays without the label, excluded: {prepared.unlabeled}" if any(prepared.unlabeled.values()) else ""))
    initial = copy.deepcopy(model)

    def on_round(r, record):
        failed = f", failed {sorted(record['failed'])}" if record["failed"] else ""
        say(f"      round {r}/{fed.rounds}: {len(record['sites'])} site(s){failed}")

    state_dir = run_dir / "server_state"
    say(f"[bold cyan]Federated[/] {strategy_name(fed)}, {fed.rounds} rounds ({role})")
    personalised = {}
    if role == "server":
        from healthfusion.federated.flower import serve

        server, metrics, sent = serve(address, model, fed, state_dir, on_round=on_round)
        rounds = server.rounds
        # the temperatures the sites sent with their evaluation of the final model, not fitted on the server's data
        calibrator, per_site_cal = combine_temperatures(sent)
    else:
        result = run_rounds(model, sites, fed, local, state_dir=state_dir, on_round=on_round)
        rounds, metrics, personalised = result.rounds, result.site_metrics, result.personalised
        calibrator, per_site_cal = calibrate_federated(model, sites)
    say("      calibration: " + ("none (no site has validation stays with both outcomes)" if calibrator is None else
                                 f"temperature {calibrator.params_['temperature']:.3f} (federated average of "
                                 f"{sum(v['temperature'] is not None for v in per_site_cal.values())} sites')"))
    site_table = _site_table(prepared, rounds, per_site_cal, spec.privacy)
    site_table.to_csv(run_dir / "sites.csv", index=False)
    privacy = None
    if spec.privacy is not None:
        privacy = {"accountant": "rdp", "max_grad_norm": spec.privacy.max_grad_norm,
                   "target_epsilon": spec.privacy.target_epsilon, "noise_multiplier": spec.privacy.noise_multiplier,
                   "epsilon": float(site_table["epsilon"].max()),
                   "per_site": {r.site: {"epsilon": r.epsilon, "delta": r.delta, "steps": int(r.dp_steps)}
                                for r in site_table.itertuples()},
                   "trained": "per-site DP-SGD on local training; the personalisation epochs and the calibration "
                              "temperature are not covered"}
    server_eps = [r["server_epsilon"] for r in rounds if "server_epsilon" in r]
    if server_eps:
        say(f"      server-side DP (site level): epsilon {server_eps[-1]:.2f} at delta {spec.server_privacy.delta:.0e}")
        privacy = {**(privacy or {}), "server": {"epsilon": server_eps[-1], "delta": spec.server_privacy.delta,
                                                 "clip_norm": spec.server_privacy.clip_norm,
                                                 "noise_multiplier": spec.server_privacy.noise_multiplier,
                                                 "rounds": len(server_eps), "level": "site"}}
    model.save_pretrained(run_dir / "model", preprocessing_state=prepared.featurizer.get_state())
    write_card(run_dir / "model", _card(config, prepared, calibrator, privacy))
    pd.DataFrame([{**r, "sites": ";".join(r["sites"]), "failed": json.dumps(r["failed"]),
                   "train_loss": json.dumps(r["train_loss"]),
                   **{k: json.dumps(r[k]) for k in ("epsilon", "dp_steps", "update_norm") if k in r}}
                  for r in rounds]).to_csv(run_dir / "rounds.csv", index=False)
    pd.DataFrame(metrics).to_csv(run_dir / "site_metrics.csv", index=False)

    seed = config.training.seed
    spent = [r["epsilon"] for r in rounds if r.get("epsilon")]
    # each site's epsilon after its last round; the summary reports the largest (the weakest guarantee)
    site_eps = {name: eps for record in spent for name, eps in record.items()}
    epsilon = max(site_eps.values()) if site_eps else None
    if site_eps:
        say("      per-site epsilon: " + ", ".join(f"{k} {v:.2f}" for k, v in site_eps.items()))
    extra = {"server_epsilon": server_eps[-1]} if server_eps else {}
    everywhere = {s.name: calibrator for s in sites}
    rows = [{"setting": strategy_name(fed), "epsilon": epsilon, **extra,
             **_score({s.name: model for s in sites}, sites, config.n_boot, seed, everywhere)}]
    if personalised:
        own = {}
        for s in sites:
            own[s.name] = copy.deepcopy(model)
            set_weights(own[s.name], personalised[s.name])
        # each fine-tuned copy is a site's own model: calibrated on that site's validation stays
        rows.append({"setting": f"{strategy_name(fed)}+finetune", "epsilon": epsilon,
                     **_score(own, sites, config.n_boot, seed, {s.name: fit_temperature(own[s.name], s.val)
                                                                for s in sites})})
    if spec.compare and role == "simulate":
        stopping = (f", early stopping after {config.training.patience} epochs without a better validation loss"
                    if config.training.patience and all(s.val is not None for s in sites) else "")
        say(f"[bold cyan]References[/] pooled and local-only models (at most {spec.compare_epochs} epochs each"
            f"{stopping}; each calibrated by a temperature on the validation stays it may see)")
        full = config.training.model_copy(update={"max_epochs": spec.compare_epochs})
        pooled = _pool([s.train for s in sites])
        pooled_val = _pool([s.val for s in sites]) if all(s.val is not None for s in sites) else None
        for name, train, val in [("pooled", pooled, pooled_val)] + [(f"local {s.name}", s.train, s.val)
                                                                    for s in sites]:
            ref = copy.deepcopy(initial)
            # early stopping and the temperature on the validation stays the model may see: the pooled model on
            # all sites', a local model on its own site's (the stays each site calibrates the federated model on)
            Trainer(full).fit(ref, train, val, head_kind="binary")
            ref_cal = fit_temperature(ref, val)
            if ref_cal is None and val is not None:
                log.warning("The %s reference is not calibrated: its validation stays hold a single outcome.", name)
            rows.append({"setting": name, "epsilon": None, **_score({s.name: ref for s in sites}, sites,
                                                                    config.n_boot, seed,
                                                                    {s.name: ref_cal for s in sites})})
    pd.DataFrame(rows).to_csv(run_dir / "summary.csv", index=False)
    return run_dir


def _pool(parts: list[ArrayDataset]) -> ArrayDataset:
    """The sites' arrays stacked (the pooled reference's training or validation data)."""
    return ArrayDataset({k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "index"})


def group_sites(site_of: pd.Series, n: int) -> pd.Series:
    """Each stay's site after grouping the values of ``site_of`` (stay id -> e.g. hospital id) into ``n`` sites
    ``group1`` ... ``groupN`` of similar size: values in order of decreasing stay count (ties by value), each to the
    group with the fewest stays so far (ties: the lower number). Deterministic, so every process of a deployment
    forms the same sites; a value's stays stay together.

    Raises
    ------
    ValueError
        Fewer distinct values than ``n``.
    """
    counts = site_of.astype(str).value_counts()
    if len(counts) < n:
        raise ValueError(f"federated.site_groups is {n}, but the site column has only {len(counts)} distinct values; "
                         "lower site_groups or leave it out (one site per value).")
    order = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    sizes = [0] * n
    group = {}
    for value, count in order:
        k = min(range(n), key=lambda i: (sizes[i], i))
        group[value] = f"group{k + 1}"
        sizes[k] += count
    return site_of.astype(str).map(group)
