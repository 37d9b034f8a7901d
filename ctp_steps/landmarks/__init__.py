"""Landmark stage: heatmap net on the LV crop, AHA 17-segment map, bull's-eye plots.

Kept import-light: torch is imported by the submodules that need it.
"""
