"""Run artifacts and reports: per-step pages and JSON logs (`artifacts`), plots and HTML reports.

Everything here reads or writes the run folder only (see `vlmgrpo.runlog`); matplotlib is imported
inside the functions that draw.
"""
