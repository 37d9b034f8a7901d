"""The Markdown report, its warnings and the headline numbers printed at the end of a run.

Turns the tables into text only; nothing is estimated here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ctp_steps import __version__
from ctp_steps.risk.cohort import CohortCounts
from ctp_steps.risk.concordance import GAIN
from ctp_steps.risk.config import RiskConfig
from ctp_steps.risk.cox import CLINICAL, MULTIVARIABLE, NOTE_SEP, ModelFit
from ctp_steps.risk.measurement_error import RC


@dataclass(frozen=True)
class RiskSummary:
    """Headline numbers for the main job's printed summary (marker HR and C-index: multivariable model)."""

    n_patients: int
    n_usable: int
    n_excluded: int
    n_failed: int
    n_events: int
    model: str
    marker_term: str
    hr: float
    hr_lower: float
    hr_upper: float
    hr_note: str
    c_index: float
    c_lower: float
    c_upper: float
    ci_level: str
    report_path: Path
    # The marker's HR corrected for measurement error (regression calibration), or why not; "" when not requested.
    rc_hr: float = math.nan
    rc_lower: float = math.nan
    rc_upper: float = math.nan
    rc_note: str = ""

    def format(self) -> str:
        hr = (
            f"{self.hr:.2f} ({self.ci_level} CI {self.hr_lower:.2f}-{self.hr_upper:.2f})"
            if math.isfinite(self.hr_lower) and math.isfinite(self.hr_upper)
            else self.hr_note
        )
        if math.isfinite(self.c_index):
            ci = f" ({self.ci_level} CI {self.c_lower:.3f}-{self.c_upper:.3f})"
            c = f"{self.c_index:.3f}{ci if math.isfinite(self.c_lower) else ''}"
        else:
            c = "not estimated"
        return "\n".join(
            [
                f"patients: {self.n_patients} ({self.n_usable} usable, {self.n_excluded} excluded, "
                f"{self.n_failed} failed), "
                f"events: {self.n_events}",
                f"HR of {self.marker_term} ({self.model} Cox): {hr}",
                f"C-index ({self.model}): {c}",
                f"report: {self.report_path}",
                *self._rc_line(),
            ]
        )

    def _rc_line(self) -> list[str]:
        """The corrected HR after the naive lines (appended, so the earlier lines keep their places)."""
        if not math.isfinite(self.rc_hr) and not self.rc_note:
            return []
        if math.isfinite(self.rc_lower) and math.isfinite(self.rc_upper):
            hr = f"{self.rc_hr:.2f} ({self.ci_level} CI {self.rc_lower:.2f}-{self.rc_upper:.2f})"
        elif math.isfinite(self.rc_hr):
            hr = f"{self.rc_hr:.2f} ({self.rc_note or 'no CI'})"
        else:
            hr = self.rc_note
        return [f"HR of {self.marker_term} corrected for measurement error ({RC}, {self.model} Cox): {hr}"]


def _cell(text: str) -> str:
    """A Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "–"


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _p_phrase(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {_fmt_p(p)}"


def render_report(
    counts: CohortCounts,
    fits: list[ModelFit],
    cox: pd.DataFrame,
    concordance: pd.DataFrame,
    ph: pd.DataFrame,
    km: pd.DataFrame,
    logrank: dict,
    covariates: list[str],
    cfg: RiskConfig,
    measurement_error: pd.DataFrame | None = None,
) -> str:
    """The report as Markdown: cohort, each model with its numbers, measurement-error corrections, concordance,
    PH checks, KM, warnings."""
    level = cfg.ci_level
    lines = [
        f"# Risk analysis: {cfg.marker} and MACE",
        "",
        f"ctp_steps {__version__}. Confidence intervals are {level}. Hazard ratios of `{cfg.marker_term}` are per "
        f"{cfg.marker_unit:g} units of `{cfg.marker}`; clinical covariates ({', '.join(covariates) or 'none'}) "
        "per unit of their column (age: per year).",
        "",
        "## Cohort",
        "",
        "| | patients |",
        "| --- | ---: |",
        f"| in the cohort table | {counts.n_patients} |",
        f"| failed (unexpected error; see below) | {counts.n_failed} |",
        f"| excluded by the pipeline | {counts.n_excluded} |",
    ]
    lines += [f"| excluded: {_cell(reason)} | {k} |" for reason, k in counts.exclusion_reasons.items()]
    lines += [
        f"| status ok but follow-up or event missing | {counts.n_no_outcome} |",
        f"| usable (status ok, outcome known) | {counts.n_usable} |",
        f"| events (MACE) among usable | {counts.n_events} |",
        f"| median follow-up of usable (days) | {_fmt(counts.median_followup_days, 0)} |",
        "",
    ]
    if counts.failed:
        lines += [
            "## Failed patients",
            "",
            "A stage raised an unexpected error on these patients (a bug or an unforeseen input, not a known "
            "data problem). They are left out of every model below; each reason names its log, under the "
            "results folder.",
            "",
            "| center | patient | stage | reason |",
            "| --- | --- | --- | --- |",
        ]
        lines += [f"| {_cell(c)} | {_cell(p)} | {_cell(st)} | {_cell(r)} |" for c, p, st, r in counts.failed]
        lines.append("")
    lines += [
        "## Cox models",
        "",
    ]
    for fit in fits:
        lost = counts.n_usable - fit.n
        detail = ", ".join(f"{col} missing for {k}" for col, k in fit.missing.items())
        lines.append(
            f"- **{fit.name}** ({fit.description}): {fit.n} patients, {fit.events} events; "
            f"{lost} usable patient{'s' if lost != 1 else ''} excluded as incomplete"
            + (f" ({detail})" if detail else "")
            + "".join(f"; {note}" for note in [*fit.notes, fit.failure] if note)
        )
    lines += [
        "",
        f"| model | term | HR | {level} CI | p | n | events | note |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    model_notes = {fit.name: set(fit.notes) for fit in fits}  # stated once, in the list above
    for r in cox.itertuples():
        ci = f"{_fmt(r.hr_lower)}–{_fmt(r.hr_upper)}" if math.isfinite(r.hr_lower) else "–"
        note = NOTE_SEP.join(n for n in r.note.split(NOTE_SEP) if n not in model_notes[r.model])
        lines.append(
            f"| {r.model} | `{r.term}` | {_fmt(r.hr)} | {ci} | {_fmt_p(r.p)} | {r.n} | {r.events} | {note} |"
        )
    if measurement_error is not None:
        lines += measurement_error_section(measurement_error, cfg)
    lines += [
        "",
        "## Concordance (Harrell's C)",
        "",
        f"Percentile bootstrap CIs over {cfg.bootstrap} patient resamples (seed {cfg.seed}) with each model's "
        f"fitted risk score held fixed. `{GAIN}` is C({MULTIVARIABLE}) − C({CLINICAL}), both scored on the "
        f"{MULTIVARIABLE} model's patients with paired resamples. Scores are x·β; a stratified model's "
        "per-center baselines are not part of its score.",
        "",
        f"| model | C-index | {level} CI | n | events | resamples | note |",
        "| --- | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for r in concordance.itertuples():
        ci = f"{_fmt(r.c_lower, 3)}–{_fmt(r.c_upper, 3)}" if math.isfinite(r.c_lower) else "–"
        c = _fmt(r.c_index, 3)
        lines.append(f"| {r.model} | {c} | {ci} | {r.n} | {r.events} | {r.bootstrap} | {r.note} |")
    lines += [
        "",
        "## Proportional hazards (lifelines `proportional_hazard_test`, rank time transform)",
        "",
        "| model | term | statistic | p | note |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    lines += [
        f"| {r.model} | `{r.term}` | {_fmt(r.test_statistic)} | {_fmt_p(r.p)} | {r.note} |"
        for r in ph.itertuples()
    ]
    lines += [
        "",
        f"## Kaplan–Meier by {cfg.marker} group",
        "",
        "| group | patients | events |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| `{r.group}` | {r.n} | {r.events} |" for r in km.itertuples()]
    lines += [
        "",
        logrank["note"]
        or f"Log-rank test across the non-empty groups: χ² = {logrank['statistic']:.2f}, "
        f"df = {logrank['df']}, {_p_phrase(logrank['p'])}.",
        "",
        "Figures: [km.png](km.png), [forest.png](forest.png).",
        "",
        "## Warnings",
        "",
    ]
    warns = report_warnings(counts, fits, cox, ph, cfg)
    lines += [f"- {w}" for w in warns] or ["None."]
    return "\n".join(lines) + "\n"


def measurement_error_section(me: pd.DataFrame, cfg: RiskConfig) -> list[str]:
    """The marker's naive and corrected HRs side by side, with the method and its caveats in words."""
    level = cfg.ci_level
    lines = ["", f"## Measurement error in `{cfg.marker}`", ""]
    if not cfg.measurement_error:
        return lines + ["No correction requested (`risk.measurement_error: []`); the hazard ratios above are naive."]
    lines += [
        f"`{cfg.marker}` is measured with error, which attenuates its hazard ratio towards 1 (regression "
        f"dilution). Each patient's error variance is the square of `{cfg.marker_se}`. Regression calibration "
        f"replaces `{cfg.marker}` by its best linear prediction from the measured value and the model's other "
        "terms (and centers when stratified), with each patient's own reliability λ = σ²_X / (σ²_X + se²) "
        "(Carroll et al., Measurement Error in Nonlinear Models, 2006, ch. 4); its CI uses the bootstrap SE over "
        f"{cfg.me_bootstrap} patient resamples (seed {cfg.seed}) that redo the calibration, so it includes the "
        "uncertainty of the calibration (coef ± t·SE, t with resamples − 1 df). For Cox models this is an "
        "approximation (Prentice 1982), good for moderate effects and rare events."
        + (
            " SIMEX adds simulated error of ζ times each patient's variance (ζ = "
            f"{', '.join(f'{z:g}' for z in cfg.simex_lambdas)}; {cfg.simex_simulations} simulations each) and "
            "extrapolates the coefficient quadratically to ζ = −1 (Cook & Stefanski 1994); it tends to "
            "under-correct."
            if "simex" in cfg.measurement_error
            else ""
        )
        + " The groups model is not corrected. All terms of each model are in measurement_error.parquet; "
        "the marker's rows are below.",
        "",
        f"| model | estimator | HR | {level} CI | p | n | events | mean λ | note |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in me[me["term"] == cfg.marker_term].itertuples():
        ci = f"{_fmt(r.hr_lower)}–{_fmt(r.hr_upper)}" if math.isfinite(r.hr_lower) else "–"
        lines.append(
            f"| {r.model} | {r.estimator} | {_fmt(r.hr)} | {ci} | {_fmt_p(r.p)} | {r.n} | {r.events} | "
            f"{_fmt(r.reliability, 3)} | {_cell(r.note)} |"
        )
    return lines


def report_warnings(
    counts: CohortCounts, fits: list[ModelFit], cox: pd.DataFrame, ph: pd.DataFrame, cfg: RiskConfig
) -> list[str]:
    """Plain-language warnings: no events, failed or fragile models, dropped terms, PH violations."""
    warns = []
    if counts.failed:
        warns.append(f"{counts.n_failed} patient(s) failed with an unexpected error (section Failed patients)")
    if counts.n_usable < 2:
        warns.append(f"only {counts.n_usable} usable patient(s): no model can be estimated")
    elif counts.n_events == 0:
        warns.append("no events among the usable patients: no hazard ratio or C-index can be estimated")
    for fit in fits:
        warns += [f"{fit.name}: {n}" for n in fit.notes]
        if fit.failure:
            warns.append(f"{fit.name}: {fit.failure}")
    term_changes = ("dropped", "omitted", "merged")
    for r in cox.itertuples():
        warns += [f"{r.model}, `{r.term}`: {n}" for n in r.note.split(NOTE_SEP) if n.startswith(term_changes)]
    warns += [
        f"{r.model}: proportional hazards questionable for `{r.term}` ({_p_phrase(r.p)})"
        for r in ph[ph["p"] < cfg.alpha].itertuples()
    ]
    return list(dict.fromkeys(warns))


def summarize(
    counts: CohortCounts,
    cox: pd.DataFrame,
    concordance: pd.DataFrame,
    cfg: RiskConfig,
    report_path: Path,
    measurement_error: pd.DataFrame | None = None,
) -> RiskSummary:
    """Marker HR and C-index of the multivariable model, with the cohort counts (and the corrected HR)."""
    hr = cox[(cox["model"] == MULTIVARIABLE) & (cox["term"] == cfg.marker_term)].iloc[0]
    c = concordance[concordance["model"] == MULTIVARIABLE].iloc[0]
    rc: dict = {}
    if measurement_error is not None:
        me = measurement_error
        sel = me[(me["model"] == MULTIVARIABLE) & (me["term"] == cfg.marker_term) & (me["estimator"] == RC)]
        if len(sel):
            r = sel.iloc[0]
            rc = dict(rc_hr=float(r["hr"]), rc_lower=float(r["hr_lower"]), rc_upper=float(r["hr_upper"]),
                      rc_note=str(r["note"]).split(NOTE_SEP)[-1])
    return RiskSummary(
        n_patients=counts.n_patients,
        n_usable=counts.n_usable,
        n_excluded=counts.n_excluded,
        n_failed=counts.n_failed,
        n_events=counts.n_events,
        model=MULTIVARIABLE,
        marker_term=cfg.marker_term,
        hr=float(hr["hr"]),
        hr_lower=float(hr["hr_lower"]),
        hr_upper=float(hr["hr_upper"]),
        hr_note=str(hr["note"]).split(NOTE_SEP)[-1],  # the row's own reason comes after model-wide notes
        c_index=float(c["c_index"]),
        c_lower=float(c["c_lower"]),
        c_upper=float(c["c_upper"]),
        ci_level=cfg.ci_level,
        report_path=Path(report_path),
        **rc,
    )
