"""Scoring stage: segmentation metrics (metrics), the ISBI 2012 challenge's own thinned scores (isbi)
and cross-validation summaries (cv)."""
