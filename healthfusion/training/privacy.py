"""Differential privacy with DP-SGD (Opacus; extra ``dp``): the only module of healthfusion that imports opacus.

DP-SGD clips each sample's gradient to ``max_grad_norm`` and adds Gaussian noise of standard deviation
``noise_multiplier * max_grad_norm`` to every batch's summed gradient (Abadi et al., 2016). Opacus's RDP accountant
turns (noise multiplier, sampling rate ``batch_size / n``, number of steps) into epsilon at ``delta``.

It is a plug-in of the one :class:`~healthfusion.training.Trainer` (see :mod:`healthfusion.training.plugins`):
:func:`make_private_model` swaps the layers Opacus
cannot take per-sample gradients of (``nn.LSTM`` -> ``opacus.layers.DPLSTM`` with the same parameter names and
weights; ``BatchNorm`` -> ``GroupNorm``), :func:`copy_to_plain` puts a DP-trained model's weights back into the
plain architecture, and the :class:`DPSGD` plug-in wraps the trainer's model and optimiser for the fit and unwraps
them after it. Parameters held in ``nn.ParameterDict`` containers (the fusion layer's missing-modality vectors)
have no per-sample gradients in Opacus and are frozen during a DP fit, with a warning.

Cost: the accountant's conversion is the slow part on a CPU (about a second per epsilon for Opacus's 151 RDP
orders, ten or more for a noise calibration), not the per-sample gradients. The noise calibration is therefore
memoised per (target epsilon, delta, sampling rate, steps), and epsilon is computed from a memoised per-step RDP
curve per (noise, sampling rate) times the steps taken: the same arithmetic as ``RDPAccountant.get_epsilon``, so
the same number. A plug-in built with ``keep_wrapped=True`` (a federated site's) wraps its model once and keeps
the wrapper, noise and accountant across fits (rounds).

Sampling: the trainer draws shuffled fixed-size batches, while the accountant's analysis assumes Poisson sampling
at rate ``batch_size / n``; the reported epsilon is that standard accounting (as in most DP-SGD libraries used with
shuffling), not a bound proven for shuffled batches.

Example::

    model = make_private_model(model)
    dp = DPSGD(PrivacyConfig(target_epsilon=3.0), n_train=len(train), batch_size=64, epochs=20)
    Trainer(TrainerConfig(max_epochs=20), plugins=[dp]).fit(model, train)
    dp.report()   # {"epsilon": 2.98, "delta": 1e-05, "noise_multiplier": 1.1, "steps": 320, ...}
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from healthfusion.optional import require
from healthfusion.training.plugins import TrainingParts, TrainingPlugin

log = logging.getLogger(__name__)


def _opacus():
    def need(module: str):
        return require(module, extra="dp", needed_for="Differential privacy")

    opacus = need("opacus")
    RDPAccountant = need("opacus.accountants").RDPAccountant
    get_noise_multiplier = need("opacus.accountants.utils").get_noise_multiplier
    DPOptimizer = need("opacus.optimizers").DPOptimizer
    ModuleValidator = need("opacus.validators").ModuleValidator
    return opacus, RDPAccountant, get_noise_multiplier, DPOptimizer, ModuleValidator


@functools.lru_cache(maxsize=256)
def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """Opacus's ``get_noise_multiplier`` (RDP accountant, epsilon tolerance 0.01), memoised: the noise multiplier
    that reaches ``target_epsilon`` at ``delta`` after ``steps`` steps at ``sample_rate``."""
    _, _, get_noise_multiplier, _, _ = _opacus()
    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=steps, accountant="rdp"))


@functools.lru_cache(maxsize=256)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """The RDP curve of one step of the sampled Gaussian mechanism at the RDP accountant's default orders."""
    _, RDPAccountant, _, _, _ = _opacus()
    rdp = require("opacus.accountants.analysis.rdp", extra="dp", needed_for="Differential privacy")

    curve = rdp.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                            orders=RDPAccountant.DEFAULT_ALPHAS)
    curve.setflags(write=False)
    return curve


def gaussian_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon at ``delta`` of ``steps`` compositions of the (sub)sampled Gaussian mechanism, as Opacus's RDP
    accountant computes it (memoised per-step curve): 0.0 for no step, infinity without noise. Server-side DP on
    site updates uses it with ``sample_rate`` 1 (every site each round) and one step per aggregated round."""
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    _, RDPAccountant, _, _, _ = _opacus()
    rdp = require("opacus.accountants.analysis.rdp", extra="dp", needed_for="Differential privacy")

    epsilon, _ = rdp.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS,
                                       rdp=_rdp_per_step(float(noise_multiplier), float(sample_rate)) * steps,
                                       delta=delta)
    return float(epsilon)


def accountant_epsilon(accountant, delta: float) -> float:
    """``accountant.get_epsilon(delta)`` for an Opacus ``RDPAccountant``, computed from memoised per-step RDP
    curves (``compute_rdp`` is linear in the steps), so a site can report its epsilon every round for free.
    0.0 before any step.

    Raises
    ------
    TypeError
        If ``accountant`` is not an RDP accountant (its ``mechanism()`` is not ``"rdp"``).
    """
    _, RDPAccountant, _, _, _ = _opacus()
    rdp = require("opacus.accountants.analysis.rdp", extra="dp", needed_for="Differential privacy")

    if accountant.mechanism() != "rdp":
        raise TypeError(f"accountant_epsilon reads an RDP accountant; got the {accountant.mechanism()!r} one.")
    if not accountant.history:
        return 0.0
    total = sum([_rdp_per_step(float(noise), float(rate)) * steps for noise, rate, steps in accountant.history])
    epsilon, _ = rdp.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=total, delta=delta)
    return float(epsilon)


class PrivacyConfig(BaseModel):
    """DP-SGD settings (the ``privacy:`` section of a run config; unknown keys are errors).

    Give exactly one of ``target_epsilon`` (the noise is calibrated to reach it after the planned epochs) and
    ``noise_multiplier``.

    Attributes
    ----------
    target_epsilon : float or None
        The privacy budget epsilon (at ``delta``) to reach after the planned epochs; the noise is calibrated to it.
    noise_multiplier : float or None
        The Gaussian noise's standard deviation as a multiple of ``max_grad_norm``; epsilon is then reported.
    max_grad_norm : float, default 1.0
        Per-sample gradient clipping norm C.
    delta : float or None, default None
        None: ``1 / n_train`` capped at 1e-5 (delta well below 1/n, so no single patient's record can leak
        with a probability near 1/n).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_epsilon: float | None = Field(None, gt=0)
    noise_multiplier: float | None = Field(None, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    delta: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _one(self) -> PrivacyConfig:
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("privacy needs exactly one of target_epsilon (e.g. 3.0) and noise_multiplier "
                             "(e.g. 1.0)")
        return self

    def resolve_delta(self, n_train: int) -> float:
        return self.delta if self.delta is not None else min(1e-5, 1.0 / n_train)


def make_private_model(model: nn.Module) -> nn.Module:
    """``model`` with the layers DP-SGD cannot handle replaced (LSTM -> DPLSTM with the same weights and names;
    BatchNorm -> GroupNorm), or ``model`` itself when nothing needs replacing.

    Raises
    ------
    ValueError
        If Opacus still rejects the fixed model (naming the offending modules).
    """
    _, _, _, _, ModuleValidator = _opacus()
    if ModuleValidator.validate(model, strict=False):
        model = ModuleValidator.fix(model)
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError(f"DP-SGD cannot train this model: {'; '.join(map(str, errors))}. Remove or replace those "
                         "layers (Opacus computes per-sample gradients only for supported layers).")
    return model


def copy_to_plain(private: nn.Module, plain: nn.Module) -> nn.Module:
    """Load the weights of a :func:`make_private_model` model into ``plain`` (the same architecture with its
    original layers) and return ``plain``: DPLSTM's state dict holds the ``nn.LSTM`` names plus aliases of its own,
    which are dropped, so the result saves and loads like any model of that architecture.

    Raises
    ------
    ValueError
        If ``plain`` has a tensor the private model lacks (another architecture).
    """
    state = private.state_dict()
    missing = [k for k in plain.state_dict() if k not in state]
    if missing:
        raise ValueError(f"The private model has no tensor(s) {missing[:5]}; pass the plain model of the same "
                         "architecture.")
    plain.load_state_dict({k: state[k] for k in plain.state_dict()})
    return plain


def copy_to_private(plain: nn.Module, private: nn.Module) -> nn.Module:
    """Load the weights of ``plain`` into ``private`` (its :func:`make_private_model` copy) and return ``private``:
    the inverse of :func:`copy_to_plain` (a federated site loads each round's global weights this way).

    Raises
    ------
    ValueError
        If ``private`` lacks a tensor of ``plain`` (another architecture).
    """
    state, target = plain.state_dict(), private.state_dict()
    missing = [k for k in state if k not in target]
    if missing:
        raise ValueError(f"The private model has no tensor(s) {missing[:5]}; pass the private copy of this "
                         "architecture (make_private_model of the same model).")
    private.load_state_dict(state, strict=False)
    return private


def _freeze_unsupported(model: nn.Module) -> list[nn.Parameter]:
    """Freeze (and return) the trainable parameters held in ``nn.ParameterDict``/``nn.ParameterList`` containers:
    their module's forward is never called, so Opacus cannot compute their per-sample gradients (e.g. the fusion
    layer's learned missing-modality vectors). They keep their initial values during a DP fit."""
    frozen, names = [], []
    for mod_name, module in model.named_modules():
        if isinstance(module, (nn.ParameterDict, nn.ParameterList)):
            for name, p in module.named_parameters():
                if p.requires_grad:
                    p.requires_grad_(False)
                    frozen.append(p)
                    names.append(f"{mod_name}.{name}")
    if names:
        log.warning("DP-SGD cannot compute per-sample gradients of %s; they keep their initial values in this fit.",
                    ", ".join(names))
    return frozen


class DPSGD(TrainingPlugin):
    """Trainer plug-in that makes the fit DP-SGD and tracks its privacy budget with Opacus's RDP accountant.

    ``wrap`` replaces the trainer's model by Opacus's per-sample-gradient ``GradSampleModule`` and its optimiser by
    a ``DPOptimizer`` (per-sample clipping + Gaussian noise, the accountant stepped with every optimiser step);
    ``on_fit_end`` (or :meth:`release` after a failed fit) puts the plain model back.

    Parameters
    ----------
    config : PrivacyConfig
    n_train : int
        Training-set size (the sampling rate is ``batch_size / n_train``).
    batch_size, epochs : int
        The trainer's ``batch_size`` and the epochs the budget must cover (used to calibrate the noise to
        ``target_epsilon``): ``max_epochs`` for one fit, rounds x local epochs for a federated site.
    accountant : opacus RDPAccountant, optional
        Continue this accountant; default a new one.
    keep_wrapped : bool, default False
        Keep Opacus's per-sample-gradient wrapper on the model after a fit, and reuse it in the next fit of the
        same model (a federated site's private copy, round after round); :meth:`release` removes it. Default:
        unwrap after every fit, so the model the trainer ends with is the plain one.

    After the fit, :meth:`report` gives epsilon at delta for every step the accountant has seen.

    Raises
    ------
    ValueError
        ``n_train < 1``; (at ``wrap``) a trainer with ``grad_clip`` set.
    """

    def __init__(self, config: PrivacyConfig, n_train: int, batch_size: int, epochs: int, accountant=None,
                 keep_wrapped: bool = False):
        if n_train < 1:
            raise ValueError(f"DP-SGD needs training samples; got n_train={n_train}.")
        _, RDPAccountant, _, _, _ = _opacus()
        self.config = config
        self.sample_rate = min(1.0, batch_size / n_train)
        self.batch_size = batch_size
        self.delta = config.resolve_delta(n_train)
        self.planned_steps = epochs * math.ceil(n_train / batch_size)
        self.noise_multiplier = config.noise_multiplier or calibrate_noise(
            config.target_epsilon, self.delta, self.sample_rate, self.planned_steps)
        self.accountant = accountant if accountant is not None else RDPAccountant()
        self.keep_wrapped = keep_wrapped
        self._wrapped: Any = None
        self._frozen: list[nn.Parameter] = []

    def wrap(self, parts: TrainingParts, trainer) -> TrainingParts:
        opacus, _, _, DPOptimizer, _ = _opacus()
        if trainer.config.grad_clip is not None:
            raise ValueError("training.grad_clip clips the batch gradient; under DP-SGD each sample's gradient is "
                             "clipped to privacy.max_grad_norm instead. Remove grad_clip.")
        if self._wrapped is not None and self._wrapped._module is not parts.model:
            self.release()  # another model than the kept one: unwrap that one first
        if self._wrapped is None:
            self._frozen = _freeze_unsupported(parts.model)
            self._wrapped = opacus.GradSampleModule(parts.model, loss_reduction="mean")
        optimizer = DPOptimizer(parts.optimizer, noise_multiplier=self.noise_multiplier,
                                max_grad_norm=self.config.max_grad_norm, expected_batch_size=self.batch_size,
                                loss_reduction="mean")
        account = self.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate)

        def after_noise(opt) -> None:
            account(opt)
            for p in opt.params:  # p.grad now holds the private gradient; per-sample ones must not accumulate
                p.grad_sample = None
                p.summed_grad = None

        optimizer.attach_step_hook(after_noise)
        return TrainingParts(self._wrapped, optimizer, parts.loader)

    def on_fit_end(self, trainer) -> None:
        trainer.model = self._wrapped._module if self.keep_wrapped else self.release()

    def release(self) -> nn.Module | None:
        """Remove Opacus's hooks, unfreeze what was frozen and return the plain model (None if not wrapped)."""
        for p in self._frozen:
            p.requires_grad_(True)
        self._frozen = []
        if self._wrapped is None:
            return None
        plain = self._wrapped._module
        self._wrapped._close()
        self._wrapped = None
        return plain

    @property
    def steps(self) -> int:
        return sum(n for _, _, n in self.accountant.history)

    def report(self) -> dict[str, float | int | str]:
        """``epsilon`` (at ``delta``, RDP accountant, after the steps taken), ``delta``, ``noise_multiplier``,
        ``max_grad_norm``, ``sample_rate``, ``steps`` and ``accountant``."""
        return {"epsilon": accountant_epsilon(self.accountant, self.delta), "delta": self.delta,
                "noise_multiplier": float(self.noise_multiplier), "max_grad_norm": self.config.max_grad_norm, "sample_rate": self.sample_rate, "steps": self.steps,
                "accountant": "rdp"}
