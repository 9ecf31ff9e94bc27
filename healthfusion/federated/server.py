"""The server side of a federated run: strategy settings, the global state, and rounds over in-process sites.

:class:`FederatedServer` owns what survives a round: the global weights, the server optimiser's moments and the
record of every round (which sites took part, which failed and why). It aggregates whatever updates a round
produced with the configured rule; the Flower adapter (:mod:`healthfusion.federated.flower`) and the in-process
:func:`run_rounds` both call it, so a simulation and a deployment aggregate identically. After every round it
can write its state to a folder, and a restarted server resumes from the last completed round.

Strategies are combinations of :class:`FederatedConfig` settings:

=====================  ==========================================================================
FedAvg                 ``aggregation: fedavg``
FedProx                ``aggregation: fedavg, proximal_mu: 0.01`` (each site's local loss + mu/2 ||w - w_g||^2)
FedAdagrad/Adam/Yogi   ``server_optimizer: adagrad | adam | yogi`` (on the FedAvg aggregate)
robust                 ``aggregation: median`` or ``aggregation: trimmed_mean, trim_beta: 0.25``
personalised           any of the above + ``personalize_epochs: E`` (each site fine-tunes the final global model
                       on its own training data for E epochs and is scored with its own copy)
=====================  ==========================================================================

Example::

    result = run_rounds(model, sites, FederatedConfig(rounds=20), TrainerConfig(max_epochs=1))
    result.rounds        # one dict per round: sites, failed, n_samples
    result.site_metrics  # one dict per (round, site): accuracy, auroc on the site's test data
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from healthfusion.federated.aggregation import ServerOptState, dp_mean, fedavg, get_aggregator, server_step
from healthfusion.federated.client import Site, get_weights, set_weights
from healthfusion.training import TrainerConfig
from healthfusion.training.privacy import PrivacyConfig, gaussian_epsilon

log = logging.getLogger(__name__)
STATE_FILE, WEIGHTS_FILE = "server_state.json", "server_weights.npz"


class ServerPrivacyConfig(BaseModel):
    """DP on the sites' updates at the server (``federated.server_privacy``; unknown keys are errors): each round
    every site's update is clipped to ``clip_norm``, the clipped updates averaged uniformly and Gaussian noise of
    standard deviation ``noise_multiplier * clip_norm / n_sites`` added (``aggregation.dp_mean``). The guarantee is site-level (a whole site's data), with epsilon at ``delta`` from the RDP accountant
    with every site sampled each round (sampling rate 1, one step per aggregated round).

    Attributes
    ----------
    clip_norm : float
        L2 bound C of one site's update (all floating weight arrays together).
    noise_multiplier : float
        sigma; 0 clips without noise (epsilon infinite).
    delta : float, default 1e-5
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    clip_norm: float = Field(..., gt=0)
    noise_multiplier: float = Field(..., ge=0)
    delta: float = Field(1e-5, gt=0, lt=1)


class FederatedConfig(BaseModel):
    """Strategy and round settings (validated; unknown keys are errors).

    Attributes
    ----------
    rounds : int, default 20
    aggregation : {"fedavg", "median", "trimmed_mean"}, default "fedavg"
        FedAvg weighs sites by their training-sample count; median and trimmed mean are unweighted.
    trim_beta : float, default 0.25
        Fraction trimmed at each end by ``trimmed_mean``.
    server_optimizer : {"none", "adagrad", "adam", "yogi"}, default "none"
        Adaptive server step on the aggregate (FedOpt); ``server_lr``, ``beta1``, ``beta2``, ``tau`` tune it.
    proximal_mu : float, default 0
        FedProx coefficient of each site's proximal term; 0 is plain local training.
    personalize_epochs : int, default 0
        Local fine-tuning epochs after the last round (personalised FedAvg); 0: every site uses the global model.
    personalize_lr : float or None, default None
        Learning rate of that fine-tuning; None: the sites' local learning rate.
    min_sites : int, default 1
        A round aggregates only when at least this many sites returned an update; otherwise the global weights are
        kept and the round is recorded as skipped.
    round_timeout : float or None, default None
        Seconds the Flower server waits for the sites of a round (deployment); late sites count as failed.
    start_sites : int or None, default None
        Deployment: the server waits for this many connected sites before round 1 (then each round samples every
        connected site and needs ``min_sites``). None: ``min_sites``.
    privacy : PrivacyConfig or None, default None
        Per-site DP-SGD on local training (extra ``dp``): each site clips and noises its own gradients and its
        accountant covers all its rounds; ``target_epsilon`` is each site's budget for the whole run. The
        personalisation epochs are not covered (they never leave the site).
    server_privacy : ServerPrivacyConfig or None, default None
        DP on the updates at the server (clip + noise, site-level); needs ``aggregation: fedavg`` (it replaces the
        sample-weighted mean by the uniform mean of clipped updates). Each round's record gets ``server_epsilon``.
    seed : int, default 0
        Seeds each site's local training (``seed + round``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rounds: int = Field(20, ge=1)
    aggregation: Literal["fedavg", "median", "trimmed_mean"] = "fedavg"
    trim_beta: float = Field(0.25, ge=0.0, lt=0.5)
    server_optimizer: Literal["none", "adagrad", "adam", "yogi"] = "none"
    server_lr: float = Field(0.1, gt=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0)
    proximal_mu: float = Field(0.0, ge=0)
    personalize_epochs: int = Field(0, ge=0)
    personalize_lr: float | None = Field(None, gt=0)
    min_sites: int = Field(1, ge=1)
    round_timeout: float | None = Field(None, gt=0)
    start_sites: int | None = Field(None, ge=1)
    privacy: PrivacyConfig | None = None
    server_privacy: ServerPrivacyConfig | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _robust_alone(self) -> FederatedConfig:
        if self.server_optimizer != "none" and self.aggregation != "fedavg":
            raise ValueError(f"server_optimizer {self.server_optimizer!r} steps on the FedAvg aggregate; set "
                             f"aggregation: fedavg (got {self.aggregation!r}) or server_optimizer: none")
        if self.server_privacy is not None and self.aggregation != "fedavg":
            raise ValueError(f"server_privacy clips and averages the updates itself; set aggregation: fedavg (got "
                             f"{self.aggregation!r}) or remove server_privacy")
        return self


class FederatedServer:
    """Global weights, server-optimiser state and the round record of a federated run.

    Parameters
    ----------
    config : FederatedConfig
    weights : list of arrays
        The initial global weights (:func:`~healthfusion.federated.client.get_weights` of a freshly built model).
    state_dir : path, optional
        Where :meth:`save` writes after every aggregated round; :meth:`resume` reads it back.
    """

    def __init__(self, config: FederatedConfig, weights: Sequence[np.ndarray], state_dir: str | Path | None = None):
        self.config = config
        self.weights = [np.asarray(w) for w in weights]
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.opt_state: ServerOptState | None = None
        self.round = 0  # last completed round
        self.rounds: list[dict[str, Any]] = []

    def aggregate(
        self,
        round_: int,
        results: Sequence[tuple[str, Sequence[np.ndarray], int, dict[str, float]]],
        failures: Sequence[tuple[str, str]] = (),
    ) -> bool:
        """Aggregate one round's site results into the global weights (or keep them, below ``min_sites``).

        Parameters
        ----------
        round_ : int
            1-based round number.
        results : sequence of (site name, weights, num_train, info)
        failures : sequence of (site name, reason)
            Sites that crashed, disconnected or timed out in this round.

        Returns
        -------
        bool
            True when the round was aggregated, False when it was skipped for too few sites.
        """
        cfg = self.config
        record = {"round": round_, "sites": [r[0] for r in results], "failed": {name: why for name, why in failures},
                  "n_samples": int(sum(r[2] for r in results)),
                  "train_loss": {r[0]: r[3].get("train_loss") for r in results}}
        if any("epsilon" in r[3] for r in results):
            record["epsilon"] = {r[0]: r[3].get("epsilon") for r in results}
            record["dp_steps"] = {r[0]: r[3].get("dp_steps") for r in results}
        if len(results) < cfg.min_sites:
            log.warning("Round %d: %d site(s) returned an update, fewer than min_sites=%d; the global weights are "
                        "kept. Failed: %s", round_, len(results), cfg.min_sites, record["failed"])
            record["aggregated"] = False
        else:
            updates = [r[1] for r in results]
            counts = [r[2] for r in results]
            if cfg.server_privacy is not None:
                dp = cfg.server_privacy
                new, norms = dp_mean(self.weights, updates, dp.clip_norm, dp.noise_multiplier,
                                     np.random.default_rng([cfg.seed, round_]))
                record["update_norm"] = {r[0]: norm for r, norm in zip(results, norms, strict=True)}
            elif cfg.aggregation == "trimmed_mean":
                new = get_aggregator("trimmed_mean")(updates, beta=cfg.trim_beta)
            elif cfg.aggregation == "median":
                new = get_aggregator("median")(updates)
            else:
                new = fedavg(updates, counts)
            if cfg.server_optimizer != "none":
                new, self.opt_state = server_step(cfg.server_optimizer, self.weights, new, self.opt_state,
                                                  lr=cfg.server_lr, beta1=cfg.beta1, beta2=cfg.beta2, tau=cfg.tau)
            self.weights = [n.astype(w.dtype) for n, w in zip(new, self.weights, strict=True)]
            record["aggregated"] = True
            if cfg.server_privacy is not None:
                steps = 1 + sum(bool(r.get("aggregated")) for r in self.rounds)
                record["server_epsilon"] = gaussian_epsilon(cfg.server_privacy.noise_multiplier, 1.0, steps,
                                                            cfg.server_privacy.delta)
            if failures:
                log.warning("Round %d aggregated %d site(s) without %s.", round_, len(results), record["failed"])
        self.round = round_
        self.rounds.append(record)
        if self.state_dir is not None:
            self.save(self.state_dir)
        return record["aggregated"]

    def dp_steps(self, site: str) -> int:
        """DP-SGD steps ``site`` took in the completed rounds (0 without privacy): what a restarted run charges
        the site's new accountant with, so that its epsilon covers the whole run."""
        return int(sum((r.get("dp_steps") or {}).get(site) or 0 for r in self.rounds))

    # ---------------------------------------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> None:
        """Write the weights, optimiser moments and round record to ``directory`` (atomic replace)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {f"w{i}": w for i, w in enumerate(self.weights)}
        if self.opt_state is not None:
            arrays.update({f"m{i}": m for i, m in enumerate(self.opt_state.m)})
            arrays.update({f"v{i}": v for i, v in enumerate(self.opt_state.v)})
        tmp = directory / (WEIGHTS_FILE + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, directory / WEIGHTS_FILE)
        state = {"round": self.round, "rounds": self.rounds, "n_weights": len(self.weights),
                 "opt_step": None if self.opt_state is None else self.opt_state.step,
                 "config": self.config.model_dump(mode="json")}
        tmp = directory / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, directory / STATE_FILE)

    def resume(self) -> bool:
        """Load the state in ``state_dir`` if there is one; returns whether it did.

        Raises
        ------
        ValueError
            If the saved weights do not match this model's shapes (another architecture).
        """
        if self.state_dir is None or not (self.state_dir / STATE_FILE).is_file():
            return False
        state = json.loads((self.state_dir / STATE_FILE).read_text())
        with np.load(self.state_dir / WEIGHTS_FILE) as npz:
            weights = [npz[f"w{i}"] for i in range(state["n_weights"])]
            if state["opt_step"] is not None:
                self.opt_state = ServerOptState(m=[npz[f"m{i}"] for i in range(state["n_weights"])],
                                                v=[npz[f"v{i}"] for i in range(state["n_weights"])],
                                                step=state["opt_step"])
        for i, (w, ref) in enumerate(zip(weights, self.weights, strict=True)):
            if w.shape != ref.shape:
                raise ValueError(f"{self.state_dir / WEIGHTS_FILE}: array {i} has shape {w.shape}, the model's is "
                                 f"{ref.shape}; the saved run is of another model. Use a new state folder.")
        self.weights, self.round, self.rounds = weights, int(state["round"]), list(state["rounds"])
        log.info("Resuming the federated run from %s after round %d.", self.state_dir, self.round)
        return True


@dataclass
class FederatedResult:
    """What :func:`run_rounds` returns.

    Attributes
    ----------
    weights : list of arrays
        The final global weights (also loaded into the model).
    rounds : list of dict
        Per round: ``round``, ``sites`` (took part), ``failed`` (site -> reason), ``n_samples``, ``train_loss``
        (per site), ``epsilon`` (per site, with ``privacy``: spent so far), ``aggregated``.
    site_metrics : list of dict
        Per round and site with test data: ``round``, ``site``, ``model`` ("global" or "personalised", the latter
        once, after the last round), ``n``, ``accuracy``, ``auroc`` (binary).
    personalised : dict
        Site name -> that site's fine-tuned weights (empty without ``personalize_epochs``).
    """

    weights: list[np.ndarray]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    site_metrics: list[dict[str, Any]] = field(default_factory=list)
    personalised: dict[str, list[np.ndarray]] = field(default_factory=dict)


def run_rounds(
    model: nn.Module,
    sites: Sequence[Site],
    config: FederatedConfig,
    local: TrainerConfig,
    *,
    head_kind: str = "binary",
    state_dir: str | Path | None = None,
    evaluate_every: int = 1,
    on_round=None,
) -> FederatedResult:
    """Run ``config.rounds`` federated rounds over in-process ``sites`` (a simulation on one machine).

    Every round each site trains ``local.max_epochs`` epochs from the global weights; a site whose training raises
    is recorded as failed for that round and the others are aggregated (``min_sites`` rule). With ``state_dir``
    the server state is written after each round and a rerun resumes after the last completed one.

    Parameters
    ----------
    model : nn.Module
        Freshly built model; its initial weights are the round-1 global weights. Ends with the final global weights.
    sites : sequence of Site
        Distinct names.
    evaluate_every : int, default 1
        Score the global model on each site's test data every this many rounds (and after the last); 0: only after
        the last.
    on_round : callable, optional
        ``on_round(round_, record)`` after each round (progress display).

    Raises
    ------
    ValueError
        No sites, repeated site names, or fewer sites than ``min_sites``.
    """
    names = [s.name for s in sites]
    if not sites:
        raise ValueError("A federated run needs at least one site.")
    if len(set(names)) != len(names):
        raise ValueError(f"Site names must be distinct; got {names}.")
    if len(sites) < config.min_sites:
        raise ValueError(f"min_sites is {config.min_sites} but only {len(sites)} site(s) are given ({names}); lower "
                         "min_sites or add sites.")
    server = FederatedServer(config, get_weights(model), state_dir)
    server.resume()
    for site in sites:  # a new run's accountant, charged with the steps of the rounds a restarted run resumes after
        site.reset_privacy(server.dp_steps(site.name))
    local = local.model_copy(update={"seed": config.seed})
    metrics: list[dict[str, Any]] = []
    for r in range(server.round + 1, config.rounds + 1):
        results, failures = [], []
        for site in sites:
            try:
                weights, n, info = site.fit(model, server.weights, local, round_=r, head_kind=head_kind,
                                            proximal_mu=config.proximal_mu, privacy=config.privacy,
                                            budget_epochs=config.rounds * local.max_epochs)
            except (ValueError, RuntimeError, FloatingPointError, OSError) as exc:
                log.warning("Round %d: site %s failed (%s: %s); the round goes on without it.", r, site.name,
                            type(exc).__name__, exc)
                failures.append((site.name, f"{type(exc).__name__}: {exc}"))
                continue
            results.append((site.name, weights, n, info))
        server.aggregate(r, results, failures)
        if on_round is not None:
            on_round(r, server.rounds[-1])
        if (evaluate_every and r % evaluate_every == 0) or r == config.rounds:
            set_weights(model, server.weights)
            metrics += _evaluate(model, sites, r, "global", head_kind)
    set_weights(model, server.weights)
    result = FederatedResult(weights=server.weights, rounds=server.rounds, site_metrics=metrics)
    if config.personalize_epochs:
        tune = local.model_copy(update={"max_epochs": config.personalize_epochs,
                                        "lr": config.personalize_lr or local.lr})
        for site in sites:
            own = copy.deepcopy(model)
            result.personalised[site.name], _, _ = site.fit(own, server.weights, tune, round_=config.rounds + 1,
                                                            head_kind=head_kind)
            metrics += _evaluate(own, [site], config.rounds, "personalised", head_kind)
    return result


def _evaluate(model: nn.Module, sites: Sequence[Site], round_: int, which: str, head_kind: str) -> list[dict]:
    return [{"round": round_, "site": s.name, "model": which, **s.evaluate(model, "test", head_kind)}
            for s in sites if s.test is not None]
