"""``healthfusion transfer``: source -> low-resource target transfer of a BiLSTM risk model, measured honestly.

One YAML config (:class:`TransferConfig`, unknown keys rejected) names the cohort, the domain split, the target
sizes, the seeds and the strategies. For every seed the protocol is:

1. split the target domain by patient into a **test** set (never used for training or model selection) and a
   training **pool**; split the source into training and validation stays;
2. pretrain the **source** model once (this is also the ``source_only`` strategy) and reuse it for every size;
3. for every target size ``n``: take the first ``n`` stays of a nested, stratified order of the pool as the labelled
   target set and split it into target-train and target-validation stays; run each strategy:

   ==================== ===================================================== ===============================
   strategy             trains on                                              early stopping on
   ==================== ===================================================== ===============================
   target_only          target-train                                           target-validation
   source_only          source-train (once per seed)                           source-validation
   pooled               source-train + target-train                            source- + target-validation
   finetune             source model, then target-train (all layers)           target-validation
   finetune_frozen      source model, then target-train, ``freeze`` fixed      target-validation
   dann                 as pooled + domain classifier behind a GRL             source- + target-validation
   mmd                  as pooled + multi-kernel MMD between the domains       source- + target-validation
   finetune_dann_mmd    source model, then target-train + DANN + MMD           target-validation
   ==================== ===================================================== ===============================

   DANN and MMD align source-train stays with the whole target pool (features only, no labels).
4. score the target test set: AUROC, AUPRC, ECE, calibration slope and intercept, accuracy, precision, recall, F1,
   Brier with bootstrap 95% CIs.

The run folder holds ``config.yaml``, ``results.csv`` (one row per seed x size x strategy), ``summary.csv`` (mean and
a t-interval over seeds), ``gains.csv`` (each adaptation strategy minus the better of source-only and pooled, paired
by seed), ``learning_curve.png``, ``shift.json``/``shift.csv`` (domain-classifier AUROC and per-variable differences),
``predictions.csv``, ``histories.json``, ``models/`` (every model of the headline size, loadable with
``load_network``) and ``shap/`` (source vs adapted model attributions).

The package: :mod:`.config` (the YAML config), :mod:`.features` (feature pipeline, categorical levels, model
config), :mod:`.protocol` (splits, one training run per strategy on the one trainer, scoring), :mod:`.summaries`
(tables, gains, learning curve, shift), :mod:`.run` (the sweep) and :mod:`.explain` (SHAP comparison).
"""

from healthfusion.data.domains import split_domains
from healthfusion.workflows.transfer.config import (
    ADAPTATION_STRATEGIES,
    BASELINE_STRATEGIES,
    FINETUNE_PRESET,
    METRICS,
    STRATEGIES,
    TRAINING_PRESET,
    TransferConfig,
    load_transfer_config,
)
from healthfusion.workflows.transfer.explain import explain_models, explain_transfer_run
from healthfusion.workflows.transfer.features import CategoryCoder, featurize, model_config
from healthfusion.workflows.transfer.protocol import Rows, run_strategy, seed_splits
from healthfusion.workflows.transfer.run import load_cohort, run_transfer
from healthfusion.workflows.transfer.summaries import gains, measure_shift, plot_learning_curve, summarise

__all__ = [
    "ADAPTATION_STRATEGIES",
    "BASELINE_STRATEGIES",
    "FINETUNE_PRESET",
    "METRICS",
    "STRATEGIES",
    "TRAINING_PRESET",
    "CategoryCoder",
    "Rows",
    "TransferConfig",
    "explain_models",
    "explain_transfer_run",
    "featurize",
    "gains",
    "load_cohort",
    "load_transfer_config",
    "measure_shift",
    "model_config",
    "plot_learning_curve",
    "run_strategy",
    "run_transfer",
    "seed_splits",
    "split_domains",
    "summarise",
]
