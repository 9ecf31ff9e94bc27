"""healthfusion: multimodal clinical risk models.

The top-level API (:mod:`healthfusion.api`, loaded on first use so ``import healthfusion`` stays light):
``load_cohort(path, source=None, **options)``, ``train(config, out=..., overrides=..., quick=...)`` and
``load_model(path)``; see docs/quickstart.md.
"""

from healthfusion._version import __version__ as __version__

__all__ = ["load_cohort", "load_model", "train"]


def __getattr__(name: str):
    if name in __all__:
        import healthfusion.api as api

        return getattr(api, name)
    raise AttributeError(f"module 'healthfusion' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
