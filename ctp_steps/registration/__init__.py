"""Registration stage: learned deformable alignment of all frames, with a SimpleITK baseline.

Kept import-light: torch and SimpleITK are imported by the submodules that need them.
"""
