"""Myocardial blood flow from registered dynamic CT: curves, batched fits, regularisation, tables.

Only the configuration is imported here, so the config model and planning
never load torch; the numeric modules (`tac`, `kinetics`, `fit`,
`regularise`, `stage`) are imported where used.
"""

from ctp_steps.mbf.config import METHODS, MBFConfig, Method, RegularisationConfig

__all__ = ["METHODS", "MBFConfig", "Method", "RegularisationConfig"]
