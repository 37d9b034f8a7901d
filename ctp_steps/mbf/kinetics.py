"""Tracer-kinetic models of a tissue curve given the AIF, batched over voxels, with Jacobians.

The AIF enters as its values on a uniform grid s_m = m * dt from the first
frame (`GridAIF`), linear between grid points and zero before the first frame
(`tac.py` fills the grid from a gamma-variate fit of the sampled AIF, or by
linear interpolation of the samples). Tissue curves are evaluated at the
actual, irregular frame times. Time in s, rates in 1/s, MBF = F * 6000 mL/100mL/min.

- One compartment: C(t) = K1 * (Ca conv exp(-k2 t))(t - d) + vb * Ca(t - d).
  The convolution of a piecewise-linear input with an exponential has a closed
  form; on a uniform grid the whole-segment part is a cumulative sum, and each
  voxel's own evaluation times t - d add their partial segment. Exact for the
  gridded AIF at any frame time and any continuous delay d. The fits tabulate
  the cumulative sums over log k2 once per AIF (`ExpConvolutionTable`): an
  evaluation then costs O(frames) instead of O(AIF grid), 1e-9 from exact.
  The sums run in blocks short enough that exp(k t) cannot overflow, so any
  series length works (OSIPI's Tofts data span 660 s); series under
  MAX_RATE_TIME / k_max (300 s at k2 <= 2/s) are one block, as before.
- Fermi: C(t) = (Ca conv R)(t - d), R(s) = F * S((tau - s)/w) / S(tau/w), S the
  logistic, so R(0) = F. The Fermi function has no closed-form convolution;
  it is convolved on the same grid (trapezoid rule), then interpolated
  linearly at t - d.

Each model returns the curve at the frame times and its analytic Jacobian with
respect to its parameters, shapes (V, T) and (V, T, 4).

Several AIFs at once: `GridAIF.stack` and `ExpConvolutionTable.stack` hold one
AIF (and table) per row of a (A, M) array, and `one_compartment(..., which=)`
evaluates each curve with its own AIF, so curves of many patients or data sets
share one batched fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# k * (time within one block of the cumulative sums) at most: exp(600) ~ 4e260 leaves float64 room for
# the summed segments (HU x s) and the derivative's extra factor of t (< 1e5) before overflow (1.8e308).
MAX_RATE_TIME = 600.0


@dataclass(frozen=True)
class GridAIF:
    """AIF enhancement on the grid s_m = m * dt, m = 0..M-1; linear between, zero before 0.

    `values` is (M,) for one AIF or (A, M) for A AIFs on the same grid (`stack`);
    then each evaluation says which AIF each row uses.
    """

    dt: float
    values: torch.Tensor  # (M,) or (A, M)
    slopes: torch.Tensor  # like values: slope of the segment starting at each grid point; 0 after the last

    @classmethod
    def from_values(cls, dt: float, values, device: torch.device, dtype: torch.dtype) -> "GridAIF":
        v = torch.as_tensor(values, device=device, dtype=dtype)
        slopes = torch.cat([torch.diff(v) / dt, v.new_zeros(1)])
        return cls(dt, v, slopes)

    @classmethod
    def stack(cls, aifs: "list[GridAIF]") -> "GridAIF":
        """A AIFs of one grid (same dt and length) as one (A, M) GridAIF."""
        if len({(a.dt, a.values.numel()) for a in aifs}) != 1 or any(a.values.dim() != 1 for a in aifs):
            raise ValueError("stacked AIFs need one grid: the same dt and number of grid points")
        return cls(aifs[0].dt, torch.stack([a.values for a in aifs]), torch.stack([a.slopes for a in aifs]))

    @property
    def n_grid(self) -> int:
        return self.values.shape[-1]

    @property
    def knots(self) -> torch.Tensor:
        return torch.arange(self.n_grid, device=self.values.device, dtype=self.values.dtype) * self.dt

    def take(self, table: torch.Tensor, idx: torch.Tensor, which: torch.Tensor | None) -> torch.Tensor:
        """table[idx] for one AIF, table[which, idx] row by row for stacked ones (which: (V,), idx: (V, T))."""
        if which is None:
            return table[idx]
        return table.reshape(-1)[idx + which[:, None] * self.n_grid]

    def locate(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Grid segment index, offset into it, and the 0/1 mask of u >= 0."""
        inside = (u >= 0).to(u.dtype)
        uc = u.clamp_min(0)
        idx = torch.floor(uc / self.dt).long().clamp_max(self.n_grid - 1)
        return idx, uc - idx * self.dt, inside

    def __call__(self, u: torch.Tensor, which: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Ca(u) and dCa/du at any times u (V, T); `which` (V,) picks each row's AIF when stacked."""
        idx, h, inside = self.locate(u)
        slope = self.take(self.slopes, idx, which) * inside
        return (self.take(self.values, idx, which) + slope * h) * inside, slope


def _moments(k: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """exp(-kh) and integral_0^h r^n exp(-k r) dr for n = 0, 1, 2.

    By the recurrences A = (1-e)/k, B = (A - h e)/k, C = (2B - h^2 e)/k. Their
    absolute cancellation error stays below ~1e-12 (A, B) and ~1e-8 (C) in
    float64 for k >= 1e-4 /s (the fits' lower bound), so no series is needed.
    """
    e = torch.exp(-k * h)
    a = -torch.expm1(-k * h) / k
    he = h * e
    b = (a - he) / k
    c = (2 * b - h * he) / k
    return e, a, b, c


def exp_convolution_on_grid(aif: GridAIF, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """J(s_m) and dJ/dk at every grid point for every rate k (V,) >= 1e-4, exactly: shapes (V, M); one AIF.

    Over a linear segment of length h ending at value f with slope b the
    integral is f A - b B and its k-derivative b C - f B (see `_moments`). At the
    grid points J_m = exp(-k s_m) * sum_{i<m} exp(k s_{i+1}) seg_i, a cumulative sum.
    exp(k s) overflows float64 past k s ~ 700, so the sums run over blocks of
    the grid with times r from each block's start (k r <= MAX_RATE_TIME), each
    block adding the previous block's last J decayed by exp(-k lag) (and, for
    dJ/dk, its derivative, -lag J + dJ/dk). The first block's r is s itself,
    so a grid of one block gives the same numbers as a single cumulative sum.
    """
    values, slopes, s = aif.values, aif.slopes, aif.knots
    if values.dim() != 1:
        raise ValueError("exp_convolution_on_grid takes one AIF; build a table per AIF and stack them")
    kk = k[:, None]
    _, a, b, c = _moments(kk, torch.tensor(aif.dt, dtype=k.dtype, device=k.device))
    # Grid point 0 gets a zero segment so that the cumulative sums start at J(0) = 0.
    v_end = torch.cat([values.new_zeros(1), values[1:]])
    s_start = torch.cat([values.new_zeros(1), slopes[:-1]])
    seg = a * v_end - b * s_start  # (V, M): segment ending at each grid point
    m = values.numel()
    block = max(2, int(MAX_RATE_TIME / (max(float(k.max()), 1e-12) * aif.dt)) + 1)
    j_parts, d_parts = [], []
    for first in range(0, m, block):
        part = slice(first, min(first + block, m))
        r = s[part] - s[first]
        grow = torch.exp(kk * r)
        shrink = 1.0 / grow
        seg_b = seg[:, part]
        j = shrink * torch.cumsum(grow * seg_b, dim=1)
        d = shrink * torch.cumsum(grow * (r * seg_b + c * s_start[part] - b * v_end[part]), dim=1) - r * j
        if first > 0:
            lag = r + (s[first] - s[first - 1])  # from the previous block's last grid point
            decay = torch.exp(-kk * lag)
            j_last, d_last = j_parts[-1][:, -1:], d_parts[-1][:, -1:]
            j = j + decay * j_last
            d = d + decay * (d_last - lag * j_last)
        j_parts.append(j)
        d_parts.append(d)
    if len(j_parts) == 1:
        return j_parts[0], d_parts[0]
    return torch.cat(j_parts, dim=1), torch.cat(d_parts, dim=1)


def _add_partial_segment(
    aif: GridAIF, k: torch.Tensor, u: torch.Tensor, at_segment_start: Callable, which: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """J(u) and dJ/dk from J and dJ/dk at the start of u's grid segment plus the partial segment up to u."""
    idx, h, inside = aif.locate(u)
    slope = aif.take(aif.slopes, idx, which)
    end_value = aif.take(aif.values, idx, which) + slope * h
    e, a, b, c = _moments(k[:, None], h)
    j0, d0 = at_segment_start(idx)
    j = e * j0 + end_value * a - slope * b
    dj = e * (d0 - h * j0) + slope * c - end_value * b
    return j * inside, dj * inside


def exp_convolution(aif: GridAIF, k: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """J(u) = integral_0^u Ca(s) exp(-k (u - s)) ds and dJ/dk, exactly; k (V,) >= 1e-4, u (V, T).

    The grid sums cost O(M) per voxel (`exp_convolution_on_grid`); each u then adds its partial segment.
    """
    j_grid, d_grid = exp_convolution_on_grid(aif, k)
    return _add_partial_segment(aif, k, u, lambda idx: (j_grid.gather(1, idx), d_grid.gather(1, idx)))


@dataclass(frozen=True)
class ExpConvolutionTable:
    """The grid sums of `exp_convolution_on_grid` tabulated over log k, so that an evaluation costs O(T), not O(M).

    Between nodes, J(s_m) is a cubic Hermite interpolant in x = log k (values and
    exact x-derivatives at the nodes), and dJ/dk is that interpolant's
    derivative, so the Jacobian is exact for the interpolated model. With 64
    nodes per decade the relative interpolation error is ~1e-9 (tests), far
    below any noise; the partial segment to each u stays exact.
    """

    aif: GridAIF
    log_k_min: float
    step: float  # node spacing in log k
    j: torch.Tensor  # (K, M) J(s_m) at the nodes; (A, K, M) for stacked AIFs
    dj_dx: torch.Tensor  # like j: dJ(s_m)/d(log k) at the nodes

    @classmethod
    def build(cls, aif: GridAIF, k_min: float, k_max: float, nodes_per_decade: int = 64) -> "ExpConvolutionTable":
        dtype, device = aif.values.dtype, aif.values.device
        n = max(4, int(np.ceil(np.log10(k_max / k_min) * nodes_per_decade)) + 1)
        k = torch.logspace(np.log10(k_min), np.log10(k_max), n, dtype=dtype, device=device)
        j, dj_dk = exp_convolution_on_grid(aif, k)
        return cls(aif, float(np.log(k_min)), float(np.log(k_max / k_min) / (n - 1)), j, dj_dk * k[:, None])

    @classmethod
    def stack(cls, tables: "list[ExpConvolutionTable]") -> "ExpConvolutionTable":
        """Tables of A AIFs on one grid, over the same rates, as one table of the stacked AIF."""
        if len({(t.log_k_min, t.step, tuple(t.j.shape)) for t in tables}) != 1:
            raise ValueError("stacked tables need the same rate nodes and AIF grid")
        aif = GridAIF.stack([t.aif for t in tables])
        first = tables[0]
        return cls(aif, first.log_k_min, first.step, torch.stack([t.j for t in tables]),
                   torch.stack([t.dj_dx for t in tables]))

    def _at_nodes(
        self, k: torch.Tensor, idx: torch.Tensor, which: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Interpolated J(s_idx) and dJ/dk for rates k (V,) and grid indices idx (V, T) (of AIFs `which` (V,))."""
        last = self.j.shape[-2] - 2
        pos = ((torch.log(k) - self.log_k_min) / self.step).clamp(0, last + 1)
        node = pos.floor().long().clamp_max(last)
        t = (pos - node)[:, None]
        m = self.j.shape[-1]
        lo = node[:, None] * m + idx
        if which is not None:
            lo = lo + (which * (self.j.shape[-2] * m))[:, None]
        j0, j1 = self.j.view(-1)[lo], self.j.view(-1)[lo + m]
        g0, g1 = self.dj_dx.view(-1)[lo] * self.step, self.dj_dx.view(-1)[lo + m] * self.step
        t2, t3 = t * t, t * t * t
        value = (2 * t3 - 3 * t2 + 1) * j0 + (t3 - 2 * t2 + t) * g0 + (3 * t2 - 2 * t3) * j1 + (t3 - t2) * g1
        slope = (6 * t2 - 6 * t) * (j0 - j1) + (3 * t2 - 4 * t + 1) * g0 + (3 * t2 - 2 * t) * g1
        return value, slope / (self.step * k[:, None])

    def __call__(
        self, k: torch.Tensor, u: torch.Tensor, which: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """J(u) and dJ/dk like `exp_convolution`, for k within the table's range (`which`: each row's AIF)."""
        return _add_partial_segment(self.aif, k, u, lambda idx: self._at_nodes(k, idx, which), which)


def one_compartment(
    aif: GridAIF,
    times_s: torch.Tensor,
    theta: torch.Tensor,
    table: ExpConvolutionTable | None = None,
    which: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Curve (V, T) and Jacobian (V, T, 4) for theta = (K1, k2, vb, delay); `table` makes it O(T) per voxel.

    With stacked AIFs (`GridAIF.stack`, `ExpConvolutionTable.stack`), `which` (V,) is each row's AIF.
    """
    k1, k2, vb, delay = theta.unbind(-1)
    u = times_s[None, :] - delay[:, None]
    if which is not None and table is None:
        raise ValueError("stacked AIFs are evaluated through their stacked table")
    j, dj_dk = exp_convolution(aif, k2, u) if table is None else table(k2, u, which)
    ca, ca_slope = aif(u, which)
    curve = k1[:, None] * j + vb[:, None] * ca
    d_delay = -(k1[:, None] * (ca - k2[:, None] * j) + vb[:, None] * ca_slope)
    return curve, torch.stack([j, k1[:, None] * dj_dk, ca, d_delay], dim=-1)


@dataclass(frozen=True)
class GridConvolution:
    """Trapezoid-rule convolution with the AIF on its grid: conv(R)[n] = (R(lags) @ matrix.T)[n]."""

    aif: GridAIF
    matrix: torch.Tensor  # (M outputs, M lags)

    @classmethod
    def build(cls, aif: GridAIF) -> "GridConvolution":
        n = aif.values.numel()
        i = torch.arange(n, device=aif.values.device)
        lag_index = i[:, None] - i[None, :]  # output n minus lag l
        ca = torch.where(lag_index >= 0, aif.values[lag_index.clamp_min(0)], aif.values.new_zeros(()))
        weight = torch.ones_like(ca)
        weight[:, 0] = 0.5
        weight = weight - 0.5 * torch.eye(n, device=ca.device, dtype=ca.dtype)
        weight[0, 0] = 0.0
        return cls(aif, ca * weight * aif.dt)

    def sample(self, grid_curves: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear interpolation of grid curves (V, M) at times u (V, T), and its slope."""
        dt, m = self.aif.dt, grid_curves.shape[1]
        pos = (u / dt).clamp(0, m - 1 - 1e-9)
        i0 = pos.floor().long()
        v0, v1 = grid_curves.gather(1, i0), grid_curves.gather(1, i0 + 1)
        inside = (u >= 0).to(u.dtype)
        return (v0 + (pos - i0) * (v1 - v0)) * inside, (v1 - v0) / dt * inside


def fermi(conv: GridConvolution, times_s: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Curve (V, T) and Jacobian (V, T, 4) for theta = (F, tau, w, delay)."""
    flow, tau, width, delay = theta.unbind(-1)
    lags = conv.aif.knots
    z = (tau[:, None] - lags[None, :]) / width[:, None]
    z0 = (tau / width)[:, None]
    s, s0 = torch.sigmoid(z), torch.sigmoid(z0)
    shape = s / s0  # R / F
    d_tau = shape * (s0 - s) / width[:, None]
    d_width = shape * (z * (s - 1) + z0 * (1 - s0)) / width[:, None]
    grid = torch.stack([shape, d_tau, d_width]) @ conv.matrix.T  # (3, V, M)
    u = times_s[None, :] - delay[:, None]
    (c_shape, slope_shape), (c_tau, _), (c_width, _) = (conv.sample(g, u) for g in grid)
    f = flow[:, None]
    return f * c_shape, torch.stack([c_shape, f * c_tau, f * c_width, -f * slope_shape], dim=-1)
