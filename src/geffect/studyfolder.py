"""A study's output folder: the names of the files the pipeline writes and the reports read back.

OUT/study.yaml       the resolved configuration
OUT/stages/          one marker per finished stage
OUT/manifest.json    the rows of the report (target, retain, every run)
OUT/timings.json     every stage's seconds
OUT/results.csv      one row per run, target and retain model; OUT/results.md the same as a table
OUT/figures/         the comparison figures
OUT/index.html       the report
"""

from __future__ import annotations


class StudyFolder:
    CONFIG = "study.yaml"
    MANIFEST = "manifest.json"
    STAGES = "stages"
    TIMINGS = "timings.json"
    RESULTS_CSV = "results.csv"
    RESULTS_MD = "results.md"
    FIGURES = "figures"
    INDEX = "index.html"
