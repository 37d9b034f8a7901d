"""Batched voxel-wise MBF fits: all curves at once with torch, chunked, on CPU or CUDA.

Model-based methods start from a variable-projection grid search (the linear
parameters are solved in closed form, with non-negativity, for every voxel and
every grid point of the nonlinear ones, including the delay) and are refined by
a bounded Levenberg-Marquardt iteration run on every voxel of a chunk at once.
With shared kinetics (delay, ve, vb fixed per patient) the grid is over K1
alone. The one-compartment model runs on a table of the AIF's exponential
convolutions (`ExpConvolutionTable`). No per-voxel Python loop anywhere;
float64 on CPU and CUDA alike. With `compiled=True` (config `mbf.compile_fits`)
each LM iteration and the one-compartment grid search run as torch.compile'd
kernels: same arithmetic, ~6x the throughput once compiled (BENCHMARKS.md).
Curves of several AIFs (patients, data sets) fit in one batch with
`fit_curves_per_aif`: one LM pass over all, each curve with its own AIF.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ctp_steps.mbf.config import Method
from ctp_steps.mbf.kinetics import (
    ExpConvolutionTable,
    GridAIF,
    GridConvolution,
    exp_convolution,
    fermi,
    one_compartment,
)
from ctp_steps.mbf.tac import ArterialInput

PER_S_TO_ML_100ML_MIN = 6000.0
DTYPE = torch.float64  # curves span 4 orders of magnitude in sensitivity; fp64 keeps LM well-posed

# Parameter bounds (SI units: 1/s, fraction, s); the delay's upper bound comes from the config.
ONE_COMPARTMENT_LOWER = (0.0, 1e-4, 0.0, 0.0)
ONE_COMPARTMENT_UPPER = (10.0 / 60, 2.0, 1.0, None)
FERMI_LOWER = (0.0, 0.0, 0.2, 0.0)
FERMI_UPPER = (10.0 / 60, 30.0, 30.0, None)
PARAMETER_NAMES: dict[str, tuple[str, ...]] = {
    "one_compartment": ("k1", "k2", "vb", "delay"),
    "fermi": ("flow", "tau", "width", "delay"),
    "upslope": ("max_slope", "peak_time"),
}

ModelFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # model(theta) or model(theta, context rows)


@dataclass(frozen=True)
class FitResult:
    """Per-curve results of one method, as numpy arrays of length n_curves."""

    mbf: np.ndarray  # mL/100mL/min
    rate: np.ndarray  # the model's flow parameter before extraction correction (K1, F, slope ratio), mL/100mL/min
    params: dict[str, np.ndarray]  # model parameters (SI units)
    sse: np.ndarray  # sum of squared residuals, HU^2
    delay_s: np.ndarray  # AIF-to-tissue delay (NaN for upslope)

    def take(self, index: np.ndarray) -> "FitResult":
        """The results of the curves `index` selects (an integer or boolean index array)."""
        return FitResult(
            mbf=self.mbf[index],
            rate=self.rate[index],
            params={k: v[index] for k, v in self.params.items()},
            sse=self.sse[index],
            delay_s=self.delay_s[index],
        )


def levenberg_marquardt(
    model: ModelFn,
    y: torch.Tensor,
    theta: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    max_iter: int,
    rtol: float = 1e-8,
    max_rejections: int = 8,
    compiled: bool = False,
    context: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounded LM on every row of y at once; returns (theta, sse).

    Marquardt scaling (damping on diag(J'J)) makes parameters of different
    units comparable; bounds by projection. A voxel's step is kept only if it
    lowers that voxel's SSE. A voxel stops when an accepted step gains less than
    `rtol` of its SSE or after `max_rejections` rejected steps in a row; each
    iteration works only on the voxels still going. `compiled` runs each
    iteration as one torch.compile'd kernel (same arithmetic; see `MBFConfig.compile_fits`).
    `context` (one row per row of y, e.g. each curve's AIF) is passed to the
    model as model(theta, context[rows]), so that the model knows which rows it gets.
    """
    iteration = _compiled(_lm_iteration) if compiled else _lm_iteration
    theta = theta.clone()
    curve, _ = _evaluate(model, theta, context)
    sse = ((y - curve) ** 2).sum(-1)
    lam = torch.full_like(sse, 1e-3)
    rejected = torch.zeros_like(sse, dtype=torch.long)
    active = torch.arange(len(y), device=y.device)
    for _ in range(max_iter):
        if active.numel() == 0:
            break
        done = iteration(model, y, theta, sse, lam, rejected, active, lower, upper, rtol, max_rejections, context)
        active = active[~done]
    return theta, sse


def _lm_iteration(
    model: ModelFn,
    y: torch.Tensor,
    theta: torch.Tensor,
    sse: torch.Tensor,
    lam: torch.Tensor,
    rejected: torch.Tensor,
    active: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    rtol: float,
    max_rejections: int,
    context: torch.Tensor | None = None,
) -> torch.Tensor:
    """One projected LM step of the `active` voxels, updating theta, sse, lam, rejected in place; returns done (A,).

    Only parameters and SSE are carried between iterations; the Jacobian is
    re-evaluated at the current point, and the trial needs only the curve (a
    compiled graph drops the trial's Jacobian), so little memory is streamed.
    """
    ya, th, ss, la = y[active], theta[active], sse[active], lam[active]
    rows = None if context is None else context[active]
    curve, jac = _evaluate(model, th, rows)
    jtj = (jac[:, :, :, None] * jac[:, :, None, :]).sum(1)
    grad = (jac * (ya - curve)[:, :, None]).sum(1)
    # Parameters held at a bound by the gradient are frozen for this step (projected LM).
    held = ((th <= lower) & (grad < 0)) | ((th >= upper) & (grad > 0))
    free = (~held).to(th.dtype)
    jtj = jtj * free[:, :, None] * free[:, None, :] + torch.diag_embed(1.0 - free)
    diag = jtj.diagonal(dim1=1, dim2=2).clamp_min(1e-30)
    step = _solve_spd(jtj + torch.diag_embed(la[:, None] * diag), grad * free)
    trial = torch.minimum(torch.maximum(th + step, lower), upper)
    trial_curve, _ = _evaluate(model, trial, rows)
    trial_sse = ((ya - trial_curve) ** 2).sum(-1)
    better = trial_sse < ss
    theta[active] = torch.where(better[:, None], trial, th)
    sse[active] = torch.where(better, trial_sse, ss)
    lam[active] = torch.where(better, la * 0.3, la * 4.0).clamp(1e-12, 1e12)
    rej = torch.where(better, 0, rejected[active] + 1)
    rejected[active] = rej
    return (better & (ss - trial_sse <= rtol * ss)) | (rej >= max_rejections)


def _evaluate(model: ModelFn, theta: torch.Tensor, rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """model(theta), or model(theta, rows) when the model takes per-row context."""
    return model(theta) if rows is None else model(theta, rows)


def _solve_spd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve a x = b for a batch of small symmetric positive-definite systems (V, P, P), (V, P).

    Under torch.compile an unrolled Cholesky fuses into the step's kernel
    (LAPACK per 4x4 matrix would not); eagerly, LAPACK's batched solve is faster.
    """
    if not torch.compiler.is_compiling():
        return torch.linalg.solve_ex(a, b)[0]
    n = b.shape[-1]
    low: list[list[torch.Tensor]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1):
            s = a[:, i, j]
            for k in range(j):
                s = s - low[i][k] * low[j][k]
            low[i].append(s.clamp_min(1e-300).sqrt() if i == j else s / low[j][j])
    z: list[torch.Tensor] = []
    for i in range(n):
        s = b[:, i]
        for k in range(i):
            s = s - low[i][k] * z[k]
        z.append(s / low[i][i])
    x: dict[int, torch.Tensor] = {}
    for i in reversed(range(n)):
        s = z[i]
        for k in range(i + 1, n):
            s = s - low[k][i] * x[k]
        x[i] = s / low[i][i]
    return torch.stack([x[i] for i in range(n)], -1)


@functools.cache
def _compiled(fn: Callable) -> Callable:
    """fn under torch.compile with dynamic shapes (the active set shrinks every iteration); built once per process."""
    return torch.compile(fn, dynamic=True)


def parameter_covariance(jac: torch.Tensor, sigma2: torch.Tensor, rtol: float = 1e-10) -> torch.Tensor:
    """sigma^2 (J'J)^-1 per curve (n, p, p), by a pseudo-inverse of the column-scaled J'J.

    Scaling first makes parameters of different units comparable; the
    pseudo-inverse gives a finite K1 variance where another parameter is not
    identifiable at the fit (e.g. k2 of a curve with K1 = 0: its column is 0).
    `rtol`: relative cut-off of the pseudo-inverse's singular values.
    """
    jtj = jac.transpose(1, 2) @ jac
    d = jtj.diagonal(dim1=1, dim2=2).sqrt()
    d = torch.where(d > 0, d, torch.ones_like(d))
    scaled = jtj / (d[:, :, None] * d[:, None, :])
    inv = torch.linalg.pinv(scaled, rtol=rtol, hermitian=True) / (d[:, :, None] * d[:, None, :])
    return sigma2[:, None, None] * inv


def _nnls_two(p1, p2, g11, g12, g22) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact non-negative least squares of y on two basis curves, from y'b1, y'b2 and the Gram.

    Returns (c1, c2, explained) where explained = ||y||^2 - SSE; all of p1's shape.
    """
    det = (g11 * g22 - g12**2).clamp_min(1e-30 * g11 * g22)
    c1 = (g22 * p1 - g12 * p2) / det
    c2 = (g11 * p2 - g12 * p1) / det
    both = c1 * p1 + c2 * p2
    o1 = p1.clamp_min(0) / g11
    o2 = p2.clamp_min(0) / g22
    only1, only2 = o1 * p1.clamp_min(0), o2 * p2.clamp_min(0)
    feasible = (c1 >= 0) & (c2 >= 0)
    use1 = only1 >= only2
    zero = torch.zeros_like(c1)
    c1 = torch.where(feasible, c1, torch.where(use1, o1, zero))
    c2 = torch.where(feasible, c2, torch.where(use1, zero, o2))
    explained = torch.where(feasible, both, torch.maximum(only1, only2))
    return c1, c2, explained


def _gram(b1: torch.Tensor, b2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(b1'b1, b1'b2, b2'b2) of two sets of basis curves (G, T), in the order `_nnls_two` takes them."""
    return (b1**2).sum(-1).clamp_min(1e-30), (b1 * b2).sum(-1), (b2**2).sum(-1).clamp_min(1e-30)


def _best_grid_point(y, basis1, basis2, g11, g12, g22) -> torch.Tensor:
    """Index (V,) of the grid point whose two basis curves, with non-negative weights, explain most of each y."""
    return _nnls_two(y @ basis1.T, y @ basis2.T, g11, g12, g22)[2].argmax(-1)


def _delay_grid(max_delay_s: float, device, dtype) -> torch.Tensor:
    return torch.linspace(0.0, max_delay_s, max(2, int(round(max_delay_s)) + 1), device=device, dtype=dtype)


class OneCompartmentFitter:
    """C = K1 (Ca * e^{-k2 t})(t - d) + vb Ca(t - d); grid over (k2, d), then LM on all four."""

    def __init__(self, aif: GridAIF, times_s: torch.Tensor, max_delay_s: float, max_vb: float | None = None):
        """`max_vb` lowers vb's upper bound (0: the Tofts model, no vascular term)."""
        self.aif, self.times = aif, times_s
        dev, dt = times_s.device, times_s.dtype
        k2 = torch.logspace(np.log10(0.005), np.log10(1.0), 16, device=dev, dtype=dt)
        delay = _delay_grid(max_delay_s, dev, dt)
        self.grid_k2, self.grid_delay = [g.reshape(-1) for g in torch.meshgrid(k2, delay, indexing="ij")]
        u = times_s[None, :] - self.grid_delay[:, None]
        self.basis1, _ = exp_convolution(aif, self.grid_k2, u)  # (G, T)
        self.basis2, _ = aif(u)
        self.gram = _gram(self.basis1, self.basis2)  # (g11, g12, g22) per grid point
        self.basis1_32, self.basis2_32 = self.basis1.float(), self.basis2.float()
        self.gram_32 = tuple(g.float() for g in self.gram)
        self.lower = torch.tensor(ONE_COMPARTMENT_LOWER, device=dev, dtype=dt)
        vb_max = ONE_COMPARTMENT_UPPER[2] if max_vb is None else max_vb
        self.upper = torch.tensor(ONE_COMPARTMENT_UPPER[:2] + (vb_max, max_delay_s), device=dev, dtype=dt)
        self.table = ExpConvolutionTable.build(aif, ONE_COMPARTMENT_LOWER[1], ONE_COMPARTMENT_UPPER[1])

    def model(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return one_compartment(self.aif, self.times, theta, self.table)

    def start(self, y: torch.Tensor, compiled: bool = False) -> torch.Tensor:
        """The best grid point per voxel, then K1 and vb exact (float64) there.

        The (V, G) search runs in float32: half the memory traffic of the
        start's dominant cost, and a start needs no more precision.
        """
        search = _compiled(_best_grid_point) if compiled else _best_grid_point
        best = search(y.float(), self.basis1_32, self.basis2_32, *self.gram_32)
        p1, p2 = (y * self.basis1[best]).sum(-1), (y * self.basis2[best]).sum(-1)
        k1, vb, _ = _nnls_two(p1, p2, *(g[best] for g in self.gram))
        theta = torch.stack([k1, self.grid_k2[best], vb, self.grid_delay[best]], dim=-1)
        return torch.minimum(torch.maximum(theta, self.lower), self.upper)


class PerAIFOneCompartmentFitter:
    """`OneCompartmentFitter` for curves of several AIFs on one frame-time grid: `which` (V,) is each curve's AIF.

    Starts come from each AIF's own grid search (a loop over AIFs, not
    curves); the LM runs on all curves at once on the stacked tables, whose
    numbers are each AIF's own, so each curve gets the fit of its AIF alone.
    """

    def __init__(self, fitters: list[OneCompartmentFitter]):
        self.fitters = fitters
        self.times = fitters[0].times
        self.table = ExpConvolutionTable.stack([f.table for f in fitters])
        self.aif = self.table.aif
        self.lower, self.upper = fitters[0].lower, fitters[0].upper

    def model(self, theta: torch.Tensor, which: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return one_compartment(self.aif, self.times, theta, self.table, which)

    def start(self, y: torch.Tensor, which: torch.Tensor, compiled: bool = False) -> torch.Tensor:
        theta = y.new_zeros(len(y), 4)
        for a, fitter in enumerate(self.fitters):
            rows = torch.nonzero(which == a)[:, 0]
            if rows.numel():
                theta[rows] = fitter.start(y[rows], compiled)
        return theta


@dataclass(frozen=True)
class SharedKinetics:
    """One-compartment parameters shared by all voxels of a patient; voxels then fit K1 alone."""

    delay_s: float
    ve: float  # K1 / k2, the extravascular distribution volume
    vb: float


class SharedKineticsFitter:
    """C = K1 (Ca * e^{-(K1/ve) t})(t - d) + vb Ca(t - d) with (d, ve, vb) fixed: one parameter per voxel.

    The Cramer-Rao bound of K1 at 3 HU noise is 4-7 % here against 15-45 % with
    all four parameters free (the late curve tends to ve*Ca whatever K1 is, so
    only the uptake carries K1), which is why the regularised map uses it.
    Start: the best of a K1 grid (basis curves shared by all voxels); then LM.
    """

    def __init__(self, aif: GridAIF, times_s: torch.Tensor, shared: SharedKinetics):
        self.aif, self.times = aif, times_s
        dev, dt = times_s.device, times_s.dtype
        # Tensors, not floats: a compiled fit takes them as inputs instead of recompiling for each patient's values.
        self.kinetics = torch.tensor([shared.delay_s, shared.ve, shared.vb], device=dev, dtype=dt)
        self.grid = torch.linspace(0.0, ONE_COMPARTMENT_UPPER[0], 121, device=dev, dtype=dt)[1:]
        self.table = ExpConvolutionTable.build(aif, 1e-4, ONE_COMPARTMENT_UPPER[0] / shared.ve)
        self.basis, _ = self.model(self.grid[:, None])
        self.lower = torch.tensor([1e-4 * shared.ve], device=dev, dtype=dt)
        self.upper = torch.tensor([ONE_COMPARTMENT_UPPER[0]], device=dev, dtype=dt)

    def model(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k1 = theta[:, 0]
        delay, ve, vb = self.kinetics.unbind()
        full = torch.stack([k1, k1 / ve, vb.expand_as(k1), delay.expand_as(k1)], dim=-1)
        curve, jac = one_compartment(self.aif, self.times, full, self.table)
        return curve, (jac[..., 0] + jac[..., 1] / ve)[..., None]

    def start(self, y: torch.Tensor, compiled: bool = False) -> torch.Tensor:
        """The best K1 of the grid (one matmul: nothing for `compiled` to fuse)."""
        sse = (self.basis**2).sum(-1)[None, :] - 2 * y @ self.basis.T  # + ||y||^2, same for all grid points
        return self.grid[sse.argmin(-1)][:, None]


class FermiFitter:
    """C = (Ca * R)(t - d), R(s) = F S((tau - s)/w)/S(tau/w); grid over (tau, w, d), F linear, then LM."""

    def __init__(self, aif: GridAIF, times_s: torch.Tensor, max_delay_s: float):
        self.conv = GridConvolution.build(aif)
        self.times = times_s
        dev, dt = times_s.device, times_s.dtype
        tau = torch.tensor([0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0], device=dev, dtype=dt)
        width = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0], device=dev, dtype=dt)
        delay = _delay_grid(max_delay_s, dev, dt)
        grids = torch.meshgrid(tau, width, delay, indexing="ij")
        self.grid = torch.stack([torch.ones_like(grids[0])] + list(grids), dim=-1).reshape(-1, 4)
        self.basis, _ = fermi(self.conv, times_s, self.grid)  # (G, T), F = 1
        self.lower = torch.tensor(FERMI_LOWER, device=dev, dtype=dt)
        self.upper = torch.tensor(FERMI_UPPER[:3] + (max_delay_s,), device=dev, dtype=dt)

    def model(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return fermi(self.conv, self.times, theta)

    def start(self, y: torch.Tensor, compiled: bool = False) -> torch.Tensor:
        """The best (tau, w, d) of the grid with F in closed form (one matmul: nothing for `compiled` to fuse)."""
        p = y @ self.basis.T  # (V, G)
        g = (self.basis**2).sum(-1).clamp_min(1e-30)
        explained = p.clamp_min(0) ** 2 / g
        best = explained.argmax(-1)
        theta = self.grid[best].clone()
        theta[:, 0] = p.gather(1, best[:, None])[:, 0].clamp_min(0) / g[best]
        return torch.minimum(torch.maximum(theta, self.lower), self.upper)


@dataclass(frozen=True)
class RenkinCrone:
    """Extraction E = 1 - exp(-PS(F)/F) with PS(F) = ps + flow_slope * F (capillary recruitment).

    All in mL/100mL/min. flow_slope = 0 is the classic fixed-PS model, whose K1
    saturates at PS; with recruitment K1 keeps growing with flow.
    """

    ps: float
    flow_slope: float = 0.0

    def k1(self, flow: np.ndarray) -> np.ndarray:
        flow = np.asarray(flow, dtype=float)
        return flow * -np.expm1(-self.ps / flow - self.flow_slope)

    def flow(self, k1: np.ndarray, max_flow: float) -> np.ndarray:
        """The exact inverse of k1(): monotone, so a median-unbiased K1 gives a median-unbiased MBF.

        A K1 at or above k1(max_flow) gives `max_flow` (with a fixed PS the data
        cannot tell those flows apart: dMBF/dK1 ~ 8 at 200 for PS 120).
        """
        flow = np.geomspace(1e-3, max_flow, 4000)
        return np.interp(np.asarray(k1, dtype=float), self.k1(flow), flow, left=0.0, right=max_flow)


def upslope_fit(curves: torch.Tensor, times_s: torch.Tensor, aif_peak_hu: float) -> FitResult:
    """MBF = max tissue upslope (HU/s over consecutive frames) / peak AIF enhancement x 6000."""
    slopes = torch.diff(curves, dim=1) / torch.diff(times_s)
    best, where = slopes.max(dim=1)
    mid_times = 0.5 * (times_s[1:] + times_s[:-1])
    max_slope = best.clamp_min(0).cpu().numpy()
    mbf = max_slope / aif_peak_hu * PER_S_TO_ML_100ML_MIN
    return FitResult(
        mbf=mbf,
        rate=mbf,
        params={"max_slope": max_slope, "peak_time": mid_times[where].cpu().numpy()},
        sse=np.full(max_slope.shape, np.nan),
        delay_s=np.full(max_slope.shape, np.nan),
    )


def fit_curves(
    curves: np.ndarray,
    aif: ArterialInput,
    method: Method,
    *,
    max_delay_s: float,
    max_iter: int,
    chunk: int,
    device: torch.device,
    renkin_crone: RenkinCrone | None,
    max_mbf: float,
    shared: SharedKinetics | None = None,
    compiled: bool = False,
    max_vb: float | None = None,
) -> FitResult:
    """Fit every tissue curve (n, frames), in HU at the AIF's frame times, with `method`.

    Chunks of `chunk` curves at a time bound memory. `renkin_crone` turns
    one-compartment K1 into flow, at most `max_mbf`; None takes MBF = K1.
    `shared` (one_compartment only) fixes delay, ve and vb: voxels fit K1 alone.
    `compiled`: the LM iterations and the one-compartment grid search run torch.compile'd.
    `max_vb` (one_compartment, no `shared`) bounds vb; 0 fits the Tofts model.
    """
    times = torch.as_tensor(aif.times_s, device=device, dtype=DTYPE)
    if method == "upslope":
        parts = [
            upslope_fit(torch.as_tensor(curves[i : i + chunk], device=device, dtype=DTYPE), times, aif.peak_hu)
            for i in range(0, len(curves), chunk)
        ]
        return _concat(parts, method)
    grid_aif = GridAIF.from_values(aif.grid_dt_s, aif.grid_hu, device, DTYPE)
    if method == "fermi":
        fitter = FermiFitter(grid_aif, times, max_delay_s)
    elif shared is None:
        fitter = OneCompartmentFitter(grid_aif, times, max_delay_s, max_vb)
    else:
        fitter = SharedKineticsFitter(grid_aif, times, shared)
    thetas, sses = [], []
    for i in range(0, len(curves), chunk):
        y = torch.as_tensor(curves[i : i + chunk], device=device, dtype=DTYPE)
        start = fitter.start(y, compiled)
        theta, sse = levenberg_marquardt(
            fitter.model, y, start, fitter.lower, fitter.upper, max_iter, compiled=compiled
        )
        thetas.append(theta.cpu().numpy())
        sses.append(sse.cpu().numpy())
    theta = np.concatenate(thetas) if thetas else np.zeros((0, fitter.lower.numel()))
    if shared is not None and method == "one_compartment":
        k1 = theta[:, 0]
        theta = np.stack([k1, k1 / shared.ve, np.full_like(k1, shared.vb), np.full_like(k1, shared.delay_s)], axis=1)
    params = dict(zip(PARAMETER_NAMES[method], theta.T))
    rate = theta[:, 0] * PER_S_TO_ML_100ML_MIN
    use_rc = method == "one_compartment" and renkin_crone is not None
    return FitResult(
        mbf=renkin_crone.flow(rate, max_mbf) if use_rc else rate,
        rate=rate,
        params=params,
        sse=np.concatenate(sses) if sses else np.zeros(0),
        delay_s=theta[:, 3],
    )


def fit_curves_per_aif(
    curves: np.ndarray,
    aifs: list[ArterialInput],
    aif_index: np.ndarray,
    *,
    max_delay_s: float,
    max_iter: int,
    chunk: int,
    device: torch.device,
    renkin_crone: RenkinCrone | None,
    max_mbf: float,
    compiled: bool = False,
    max_vb: float | None = None,
) -> FitResult:
    """One-compartment fits of curves (n, frames) of several AIFs in one batched LM pass; aif_index (n,) into `aifs`.

    The same results as `fit_curves` called once per AIF on its curves, but
    one Python LM loop for all instead of one per AIF (the loop's overhead
    dominates small batches: 11 AIFs x ~9 curves each, OSIPI check, issue 20).
    All AIFs need the same frame times and grid (one data set or protocol);
    group the curves by frame times otherwise. `max_vb` as in `fit_curves`.
    """
    aif_index = np.asarray(aif_index, dtype=np.int64)
    if len(aif_index) != len(curves) or (aif_index.size and not 0 <= aif_index.min() <= aif_index.max() < len(aifs)):
        raise ValueError(f"aif_index needs one index in [0, {len(aifs)}) per curve ({len(curves)} curves)")
    first = aifs[0]
    for aif in aifs[1:]:
        if not np.array_equal(aif.times_s, first.times_s) or aif.grid_dt_s != first.grid_dt_s or len(
            aif.grid_hu
        ) != len(first.grid_hu):
            raise ValueError("fit_curves_per_aif needs AIFs of the same frame times and grid: group the curves")
    times = torch.as_tensor(first.times_s, device=device, dtype=DTYPE)
    fitter = PerAIFOneCompartmentFitter(
        [
            OneCompartmentFitter(
                GridAIF.from_values(a.grid_dt_s, a.grid_hu, device, DTYPE), times, max_delay_s, max_vb
            )
            for a in aifs
        ]
    )
    thetas, sses = [], []
    for i in range(0, len(curves), chunk):
        y = torch.as_tensor(curves[i : i + chunk], device=device, dtype=DTYPE)
        which = torch.as_tensor(aif_index[i : i + chunk], device=device)
        start = fitter.start(y, which, compiled)
        theta, sse = levenberg_marquardt(
            fitter.model, y, start, fitter.lower, fitter.upper, max_iter, compiled=compiled, context=which
        )
        thetas.append(theta.cpu().numpy())
        sses.append(sse.cpu().numpy())
    theta = np.concatenate(thetas) if thetas else np.zeros((0, 4))
    rate = theta[:, 0] * PER_S_TO_ML_100ML_MIN
    return FitResult(
        mbf=renkin_crone.flow(rate, max_mbf) if renkin_crone is not None else rate,
        rate=rate,
        params=dict(zip(PARAMETER_NAMES["one_compartment"], theta.T)),
        sse=np.concatenate(sses) if sses else np.zeros(0),
        delay_s=theta[:, 3],
    )


def _concat(parts: list[FitResult], method: Method) -> FitResult:
    if not parts:
        empty = np.zeros(0)
        return FitResult(empty, empty, {n: empty for n in PARAMETER_NAMES[method]}, empty, empty)
    return FitResult(
        mbf=np.concatenate([p.mbf for p in parts]),
        rate=np.concatenate([p.rate for p in parts]),
        params={n: np.concatenate([p.params[n] for p in parts]) for n in PARAMETER_NAMES[method]},
        sse=np.concatenate([p.sse for p in parts]),
        delay_s=np.concatenate([p.delay_s for p in parts]),
    )


def model_curves(fit: FitResult, method: Method, aif: ArterialInput, times_s: np.ndarray) -> np.ndarray:
    """Fitted model curves (n, len(times_s)) at any times, for plots and tac.parquet; not for upslope."""
    device = torch.device("cpu")
    grid_aif = GridAIF.from_values(aif.grid_dt_s, aif.grid_hu, device, DTYPE)
    theta = torch.as_tensor(np.stack([fit.params[n] for n in PARAMETER_NAMES[method]], axis=-1), dtype=DTYPE)
    times = torch.as_tensor(times_s, dtype=DTYPE)
    if method == "one_compartment":
        curve, _ = one_compartment(grid_aif, times, theta)
    else:
        curve, _ = fermi(GridConvolution.build(grid_aif), times, theta)
    return curve.numpy()
