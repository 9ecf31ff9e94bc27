"""Federated learning across sites: aggregation rules (pure functions), sites and strategies (each site's local
round is the :class:`~healthfusion.training.Trainer` on its own data), and the Flower adapter
(:mod:`healthfusion.federated.flower`, the only module that imports Flower)."""
