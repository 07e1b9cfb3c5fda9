"""Evaluation: metrics, result records and the stage-11 report.

``metrics`` computes the figures (UAR, WA, macro-F1, CCC, bootstrap CIs),
``results`` stores one ``results.json`` per evaluated test set with the
protocol it was computed under, ``report`` turns a tree of them into
``RESULTS.md`` and ``plots`` draws the confusion matrices. Definitions are
in ``docs/metrics.md``. Submodules are imported on use so that reading a
metric never pulls in matplotlib.
"""
