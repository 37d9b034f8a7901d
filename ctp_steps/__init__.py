"""ctp_steps: the stages of the ctp-cohort workflow, one module per stage.

Import is cheap on purpose (no torch, no SimpleITK): the CLI's --help and the
manifest validation must not pay for heavy imports.
"""

__version__ = "0.1.0"
