"""Segmentation stage: VB-Net for aorta and LV on every frame, myocardium on the registered average.

Kept import-light: torch is imported by the submodules that need it.
"""
