"""Choose multitask model settings on the VALIDATION stays of a config (the test stays are never read).

For each combination of the ``--grid`` values (fields of the config's ``model`` section, or ``training.FIELD`` / ``objective.FIELD``), trains
the multitask model and single-task models with the same settings for every seed and compares each task's validation
main metric, printing the mean relative improvement over tasks. Used to pick the benchmark configs' settings (see
docs/multitask.md)::

    nice -n 10 .venv/bin/python benchmarks/multitask_select.py benchmarks/configs/multitask-diabetes130.yaml \\
        --grid gate_init=0,3 --grid cluster_gradient=true,false --seeds 0 1
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from healthfusion.evaluation.tim import MAIN_METRIC, relative_improvement  # noqa: E402
from healthfusion.workflows.multitask import (  # noqa: E402
    _evaluate,
    _task_specs,
    build_model,
    fit_model,
    load_multitask_config,
    prepare,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--grid", action="append", default=[], help="FIELD=v1,v2 (a model field)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = load_multitask_config(args.config)
    grid = {}
    for item in args.grid:
        key, values = item.split("=", 1)
        grid[key] = [yaml.safe_load(v) for v in values.split(",")]
    prep = prepare(config)
    train, val = prep["data"]["train"], prep["data"]["val"]
    specs = _task_specs(config, prep["labels"], prep["classes"], prep["train_rows"])
    kinds = {s.name: s.kind for s in specs}
    weights = {t.name: t.weight for t in config.tasks}
    for values in itertools.product(*grid.values()):
        update = dict(zip(grid, values, strict=True))
        model_update = {k: v for k, v in update.items() if "." not in k}
        sections = {s: {k.split(".", 1)[1]: v for k, v in update.items() if k.startswith(f"{s}.")}
                    for s in ("training", "objective")}
        variant = config.model_copy(update={"model": config.model.model_copy(update=model_update),
                                            **{s: getattr(config, s).model_copy(update=u) for s, u in sections.items()}})
        rel: dict[str, list[float]] = {name: [] for name in kinds}
        for seed in args.seeds:
            model = build_model(variant, prep["featurizer"], specs, seed, loaded=prep["loaded"])
            fit_model(model, train, val, variant, seed, weights)
            metrics = _evaluate(model, val, seed)[0]
            for spec in specs:
                single = build_model(variant, prep["featurizer"], (spec,), seed, task_attention=False,
                                     loaded=prep["loaded"])
                fit_model(single, train, val, variant, seed, None)
                reference = _evaluate(single, val, seed)[0][spec.name]["main"]
                rel[spec.name].append(relative_improvement(metrics[spec.name]["main"], reference,
                                                           MAIN_METRIC[spec.kind][1]))
        per_task = {n: round(float(np.nanmean(v)), 4) for n, v in rel.items()}
        supervised = [np.nanmean(v) for n, v in rel.items() if kinds[n] != "clustering"]
        print(f"{update}: mean rel. improvement (val) all {np.nanmean([np.nanmean(v) for v in rel.values()]):+.2%}, "
              f"supervised {np.mean(supervised):+.2%}; per task {per_task}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
