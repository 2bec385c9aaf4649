"""Figures, tables and the HTML report, all rendered from the files a run or a study wrote to disk."""
