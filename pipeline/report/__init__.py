"""The report: the paper's tables, figures and results page, from the evaluate stage's outputs.

``inputs`` reads and checks them, ``frames`` reduces them over seeds, ``tables`` and ``figures`` draw
from the same frames, ``page`` renders ``reports/<run>/README.md`` from the report folder's files.
The stage ``pipeline.stages.report`` calls them in that order.
"""
