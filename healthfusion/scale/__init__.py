"""Scale-out on Ray (extra ``scale``): partitioned cohort builds, data-parallel training.

:mod:`healthfusion.scale.cluster` parses ``--cluster`` values (no Ray needed); :mod:`healthfusion.scale.ray` is
the only module of healthfusion that imports Ray.
"""
