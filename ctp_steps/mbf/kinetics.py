"""Tracer-kinetic models of a tissue curve given the AIF, batched over voxels, with Jacobians.

The AIF is known only at the (irregular) frame times; between them it is taken
as piecewise linear, and zero before the first frame. Time is in seconds,
rates in 1/s, MBF = F [1/s] * 6000 mL/100mL/min.

- One compartment: C(t) = K1 * (Ca * exp(-k2 t))(t - d) + vb * Ca(t - d). The
  convolution of a piecewise-linear input with an exponential is exact in
  closed form: a recursion over the AIF knots, then a partial segment up to
  each voxel's own evaluation time (t - d), so any frame times and any
  continuous delay are handled without resampling.
- Fermi: C(t) = (Ca * R)(t - d), R(s) = F * S((tau - s)/w) / S(tau/w), S the
  logistic, so R(0) = F. The Fermi function has no closed-form convolution with a
  piecewise-linear input; it is convolved on a uniform 0.25 s grid (trapezoid
  rule on the exact piecewise-linear AIF) and linearly interpolated at t - d.

Each model returns the curve at the frame times and its Jacobian with respect
to its parameters (analytic), shape (voxels, frames, parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FINE_DT_S = 0.25  # Fermi convolution grid
_SERIES_X = 0.1  # below this k*h, phi_n from its Taylor series (no cancellation)
_SERIES_TERMS = 8


def _phi(n: int, x: torch.Tensor) -> torch.Tensor:
    """phi_n(x) = integral_0^1 r^(n-1) exp(-x r) dr, n = 1, 2, 3, accurate for all x >= 0."""
    small = x < _SERIES_X
    xs = torch.where(small, x, torch.zeros_like(x))
    series = torch.zeros_like(x)
    term = torch.ones_like(x)
    for j in range(_SERIES_TERMS):
        series = series + term / (n + j)
        term = term * (-xs) / (j + 1)
    xl = torch.where(small, torch.ones_like(x), x)
    e = torch.exp(-xl)
    if n == 1:
        exact = -torch.expm1(-xl) / xl
    elif n == 2:
        exact = (-torch.expm1(-xl) - xl * e) / xl**2
    else:
        exact = (2 * -torch.expm1(-xl) - e * (2 * xl + xl**2)) / xl**3
    return torch.where(small, series, exact)


@dataclass(frozen=True)
class PiecewiseLinearAIF:
    """AIF enhancement at knots (the frame times), linear between them, zero before the first."""

    knots_s: torch.Tensor  # (M,)
    values: torch.Tensor  # (M,)

    @classmethod
    def from_arrays(cls, times_s, enhancement, device: torch.device, dtype: torch.dtype) -> "PiecewiseLinearAIF":
        return cls(
            torch.as_tensor(times_s, device=device, dtype=dtype),
            torch.as_tensor(enhancement, device=device, dtype=dtype),
        )

    @property
    def slopes(self) -> torch.Tensor:
        """(M,) slope of the segment starting at each knot; 0 after the last knot."""
        s = torch.diff(self.values) / torch.diff(self.knots_s)
        return torch.cat([s, s.new_zeros(1)])

    def locate(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Segment index, offset into it and 'after the first knot' mask for times u."""
        knots = self.knots_s
        idx = (torch.searchsorted(knots, u.contiguous(), right=True) - 1).clamp(0, knots.numel() - 1)
        inside = u >= knots[0]
        h = torch.where(inside, u - knots[idx], torch.zeros_like(u))
        return idx, h, inside

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        """Ca(u), and its slope dCa/du, at any times u."""
        idx, h, inside = self.locate(u)
        slope = torch.where(inside, self.slopes[idx], torch.zeros_like(u))
        value = torch.where(inside, self.values[idx] + slope * h, torch.zeros_like(u))
        return value, slope


def exp_convolution(aif: PiecewiseLinearAIF, k: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """J(u) = integral_0^u Ca(s) exp(-k (u - s)) ds and dJ/dk, exactly; k (V,), u (V, T).

    Over a linear segment of length h ending at value f with slope b:
    integral = f h phi1(kh) - b h^2 phi2(kh), derivative in k = -f h^2 phi2 + b h^3 phi3.
    """
    knots, values, slopes = aif.knots_s, aif.values, aif.slopes
    kk = k[:, None]
    lengths = torch.diff(knots)  # (M-1,)
    x = kk * lengths  # (V, M-1)
    decay = torch.exp(-x)
    p1, p2, p3 = _phi(1, x), _phi(2, x), _phi(3, x)
    seg = values[1:] * lengths * p1 - slopes[:-1] * lengths**2 * p2
    dseg = -values[1:] * lengths**2 * p2 + slopes[:-1] * lengths**3 * p3
    j_knots = [k.new_zeros(k.shape)]
    d_knots = [k.new_zeros(k.shape)]
    for m in range(lengths.numel()):
        j_prev, d_prev = j_knots[-1], d_knots[-1]
        j_knots.append(decay[:, m] * j_prev + seg[:, m])
        d_knots.append(decay[:, m] * (d_prev - lengths[m] * j_prev) + dseg[:, m])
    j_at = torch.stack(j_knots, dim=1)  # (V, M)
    d_at = torch.stack(d_knots, dim=1)

    idx, h, inside = aif.locate(u)
    end_value = values[idx] + slopes[idx] * h
    xh = kk * h
    e = torch.exp(-xh)
    j0, d0 = j_at.gather(1, idx), d_at.gather(1, idx)
    q1, q2, q3 = _phi(1, xh), _phi(2, xh), _phi(3, xh)
    j = e * j0 + end_value * h * q1 - slopes[idx] * h**2 * q2
    dj = e * (d0 - h * j0) - end_value * h**2 * q2 + slopes[idx] * h**3 * q3
    zero = torch.zeros_like(j)
    return torch.where(inside, j, zero), torch.where(inside, dj, zero)


def one_compartment(
    aif: PiecewiseLinearAIF, times_s: torch.Tensor, theta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Curve (V, T) and Jacobian (V, T, 4) for theta = (K1, k2, vb, delay)."""
    k1, k2, vb, delay = theta.unbind(-1)
    u = times_s[None, :] - delay[:, None]
    j, dj_dk = exp_convolution(aif, k2, u)
    ca, ca_slope = aif(u)
    curve = k1[:, None] * j + vb[:, None] * ca
    d_delay = -(k1[:, None] * (ca - k2[:, None] * j) + vb[:, None] * ca_slope)
    jac = torch.stack([j, k1[:, None] * dj_dk, ca, d_delay], dim=-1)
    return curve, jac


@dataclass(frozen=True)
class FineGridConvolution:
    """The AIF's convolution operator on a uniform grid: C_fine = R(lags) @ matrix.T (trapezoid rule)."""

    dt: float
    matrix: torch.Tensor  # (K outputs, K lags)
    lags: torch.Tensor  # (K,)

    @classmethod
    def build(cls, aif: PiecewiseLinearAIF, dt: float = FINE_DT_S) -> "FineGridConvolution":
        n = int(torch.ceil(aif.knots_s[-1] / dt).item()) + 1
        grid = torch.arange(n, device=aif.knots_s.device, dtype=aif.knots_s.dtype) * dt
        diff = grid[:, None] - grid[None, :]  # output time - lag
        ca, _ = aif(diff.reshape(-1))
        ca = ca.reshape(n, n) * (diff >= 0)
        weight = torch.ones_like(diff)
        weight[:, 0] = 0.5
        weight = weight - 0.5 * torch.eye(n, device=grid.device, dtype=grid.dtype)  # lag == output time
        weight[0, 0] = 0.0
        return cls(dt, ca * weight * dt, grid)

    def sample(self, fine: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear interpolation of fine-grid curves (V, K) at times u (V, T), and its slope."""
        pos = (u / self.dt).clamp(0, fine.shape[1] - 1 - 1e-9)
        i0 = pos.floor().long()
        frac = pos - i0
        v0, v1 = fine.gather(1, i0), fine.gather(1, i0 + 1)
        slope = (v1 - v0) / self.dt
        inside = u >= 0
        zero = torch.zeros_like(u)
        return torch.where(inside, v0 + frac * (v1 - v0), zero), torch.where(inside, slope, zero)


def fermi(conv: FineGridConvolution, times_s: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Curve (V, T) and Jacobian (V, T, 4) for theta = (F, tau, w, delay)."""
    flow, tau, width, delay = theta.unbind(-1)
    z = (tau[:, None] - conv.lags[None, :]) / width[:, None]
    z0 = (tau / width)[:, None]
    s, s0 = torch.sigmoid(z), torch.sigmoid(z0)
    shape = s / s0  # R / F
    d_tau = shape * (s0 - s) / width[:, None]  # d(R/F)/dtau
    d_width = shape * (z * (s - 1) + z0 * (1 - s0)) / width[:, None]
    stacked = torch.stack([shape, d_tau, d_width])  # (3, V, K)
    fine = stacked @ conv.matrix.T  # (3, V, K)
    u = times_s[None, :] - delay[:, None]
    values = [conv.sample(f, u) for f in fine]
    (c_shape, slope_shape), (c_tau, _), (c_width, _) = values
    f = flow[:, None]
    curve = f * c_shape
    jac = torch.stack([c_shape, f * c_tau, f * c_width, -f * slope_shape], dim=-1)
    return curve, jac
