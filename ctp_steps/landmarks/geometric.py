"""Classical landmark fallback: apex, base and RV insertion from the myocardium mask and the image alone.

For studies unlike the heatmap net's training data (where its confidences fall
below the stage's floor), the three landmarks of `ctp_steps.aha` are derived
from geometry, in world LPS mm, on any voxel spacing and storage order (every
measurement goes through `Geometry.index_to_world`):

1. LV solid = convex hull of the myocardium (its largest connected part): the
   shell together with the cavity it encloses, closed flat across the open
   base. Cavity = solid − myocardium.
2. Long axis u = first principal axis of the LV solid (through its centroid).
   Apex end vs base end: the base is the open end, where the cavity keeps a
   full cross-section up to the end of the solid; at the apex the cavity tapers
   to nothing and the myocardium closes beyond it. Votes: cavity volume near
   each end, and the myocardium beyond the cavity at each end.
3. apex = epicardial apex (aha.py): the apical end of the solid on the axis,
   extrapolated to sub-voxel precision from the volume beyond each plane (a
   dome's volume beyond a plane grows with the square of the depth).
   base = centre of the mitral/base plane (aha.py): the basal end of the solid
   on the axis, extrapolated from the volume beyond each plane (a flat cut's
   volume grows linearly with the depth).
4. rv_insertion = anterior insertion of the RV free wall (aha.py's θ = 0, from
   which the septum lies at about +60° by the right-hand rule about u): RV blood
   = voxels outside the LV solid, within RV_CONTACT_MM of the myocardium,
   between the base and apex planes, brighter than a threshold set from this
   image (between the myocardium's and the LV blood's medians, and 3 noise SD
   above the myocardium); its largest connected component is the RV's contact
   with the septum. Its angular extent about the axis is an arc; the insertion
   is the arc's start in the positive sense (the arc runs from it through the
   septum to the inferior insertion), placed on the epicardium (hull surface)
   at RV_INSERTION_AXIAL_FRACTION of the base→apex distance.

Quality (per landmark, in [0, 1]) is the product of the checks the landmark
depends on; each check is 1 when met with its stated margin and falls linearly
to 0 at its failure point, so quality 0 means "not found" and values below 0.5
mean at least one check is near failure (compare the net's min_confidence 0.5).
Checks: `axis` (cavity elongation: SD along u ≥ 1.5 × SD across → 1, round →
0), `orientation` (agreement and margin of the apex/base votes), `ring` (the
fraction of the basal ring's angular sectors holding myocardium),
`contrast` (LV blood − myocardium ≥ 6 noise SD → 1, ≤ 3 → 0) and `arc` (RV
contact arc 60–200° → 1, 0 at 20° or 300°). Ordinary failure (empty mask, no
cavity, no contrast, no RV blood) never raises: the result holds NaN
coordinates, quality 0 and a `failure` text saying what failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from ctp_steps.types import Geometry

LANDMARKS = ("apex", "base", "rv_insertion")

MIN_MYOCARDIUM_VOXELS = 20  # same floor as the landmark stage's empty-mask check
# The RV cavity lies directly on the septum's epicardial surface; its voxel
# centres lie within one voxel of the myocardium mask plus the partial-volume
# layer. 5 mm = a 3 mm voxel plus the 2 mm trabecular/partial-volume band
# (never less than one voxel diagonal, see _rv_contact_mm).
RV_CONTACT_MM = 5.0
# Where the insertion point is placed along the axis: the basal-mid level (a
# quarter of base→apex), the level the phantom's truth and the net's training
# use. Only its direction about the axis enters the AHA map (aha.py).
RV_INSERTION_AXIAL_FRACTION = 0.25
# Fit windows of the end extrapolations, as fractions of the LV solid's volume:
# the apical dome within ~20 % of the LV length is close to a paraboloid (volume
# ∝ depth², within 5 % volume), and the basal ~15 % has a nearly constant
# cross-section (volume ∝ depth).
APEX_FIT_VOLUME_FRACTION = 0.04
BASE_FIT_VOLUME_FRACTION = 0.10
# Orientation vote: cavity volume within this fraction of the cavity's length of each end.
END_FRACTION = 0.15
# Basal ring: myocardium within this fraction of the length from the base plane, in 10° sectors.
RING_FRACTION = 0.10
RING_SECTORS = 36


@dataclass(frozen=True)
class GeometricLandmarks:
    """Landmarks in world LPS mm (rows in `names` order), their quality in [0, 1] (module doc), what failed."""

    names: tuple[str, ...]
    world_mm: np.ndarray  # (3, 3), NaN rows where not found
    quality: np.ndarray  # (3,)
    failure: str | None  # None when every landmark was found
    checks: dict[str, float] = field(default_factory=dict)  # the individual checks (each in [0, 1])
    details: dict[str, float] = field(default_factory=dict)  # measured figures (HU, mm, degrees)

    def as_json(self) -> dict:
        out = {
            name: {"world_mm": [float(v) for v in self.world_mm[i]], "quality": float(self.quality[i])}
            for i, name in enumerate(self.names)
        }
        return out


def _ramp(x: float, zero: float, one: float) -> float:
    """0 at `zero`, 1 at `one`, linear between (either order), clipped."""
    if not np.isfinite(x):
        return 0.0
    return float(np.clip((x - zero) / (one - zero), 0.0, 1.0))


def _result(world: np.ndarray, quality: np.ndarray, failures: list[str], checks: dict, details: dict):
    return GeometricLandmarks(
        names=LANDMARKS,
        world_mm=world,
        quality=np.clip(np.nan_to_num(quality, nan=0.0), 0.0, 1.0),
        failure="; ".join(failures) if failures else None,
        checks=checks,
        details=details,
    )


def _failed(reason: str, checks: dict | None = None, details: dict | None = None) -> GeometricLandmarks:
    return _result(np.full((3, 3), np.nan), np.zeros(3), [reason], checks or {}, details or {})


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (1 + int(np.argmax(sizes)))


def _hull_mask(hull: ConvexHull, shape: tuple[int, int, int], offset: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Voxels of a (z, y, x) block (starting at index `offset`) whose centres lie inside the hull.

    Row by row along x: every facet n·p + c ≤ 0 bounds the row's x index from one
    side, so each row's inside part is one interval (exact, deterministic, and
    proportional to rows × facets rather than voxels × facets).
    """
    normals, offsets = hull.equations[:, :3], hull.equations[:, 3]
    step = geometry.direction_matrix * np.asarray(geometry.spacing)  # columns: world step of x, y, z index
    zz, yy = np.meshgrid(np.arange(shape[0]) + offset[0], np.arange(shape[1]) + offset[1], indexing="ij")
    row0 = np.stack([np.full(zz.size, float(offset[2])), yy.ravel(), zz.ravel()], axis=1)
    b = geometry.index_to_world(row0) @ normals.T + offsets  # (rows, facets) at the row's first voxel
    c = normals @ step[:, 0]  # change per x step
    tol = 1e-9 * (1.0 + float(np.abs(offsets).max()))
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = (tol - b) / c
    upper = np.where(c > 0, bound, np.inf).min(axis=1)
    lower = np.where(c < 0, bound, -np.inf).max(axis=1)
    flat_ok = np.all((c != 0) | (b <= tol), axis=1)
    x = np.arange(shape[2])
    inside = (x >= lower[:, None]) & (x <= upper[:, None]) & flat_ok[:, None]
    return inside.reshape(shape)


def _end_position(proj: np.ndarray, voxel_mm3: float, fraction: float, power: float) -> float:
    """Where the solid ends along +proj: fit (volume beyond p)^(1/power) ≈ linear in p near the end, extrapolate to 0.

    power 2: a dome (volume ∝ depth²); power 1: a flat cut (volume ∝ depth).
    Volumes are counted at voxel centres (the k-th outermost voxel stands for
    k − ½ voxels beyond its centre plane).
    """
    p = np.sort(proj)[::-1]
    vol = (np.arange(len(p)) + 0.5) * voxel_mm3
    n = max(int(np.searchsorted(vol, fraction * len(p) * voxel_mm3)), 4)
    n = min(n, len(p))
    x, y = p[:n], vol[:n] ** (1.0 / power)
    if n < 3 or np.ptp(x) <= 0:
        return float(p[0])
    slope, intercept = np.polyfit(x, y, 1)
    if slope >= 0:
        return float(p[0])
    return float(-intercept / slope)


def _rv_contact_mm(spacing: np.ndarray) -> float:
    return max(RV_CONTACT_MM, float(np.linalg.norm(spacing)))


@dataclass(frozen=True)
class LVSolid:
    """The myocardium's crop and what steps 1 and 4 of the module doc build on it (world LPS mm throughout);
    built once per patient by `lv_solid` and shared by the fallback and the stage's second estimates."""

    image: np.ndarray  # (z, y, x) HU, cropped
    myocardium: np.ndarray  # its largest connected part, cropped
    solid: np.ndarray  # convex hull of the shell, with the shell
    cavity: np.ndarray  # solid − myocardium
    world: np.ndarray  # (z, y, x, 3) voxel centres
    spacing: np.ndarray  # (z, y, x) mm
    contact_mm: float
    hull: ConvexHull


def lv_solid(image_hu: np.ndarray, myocardium: np.ndarray, geometry: Geometry) -> LVSolid | str:
    """Step 1 of the module doc on a crop round the myocardium (room for the RV contact band); or why not."""
    image = np.asarray(image_hu, dtype=np.float32)
    myo_full = np.asarray(myocardium) > 0
    if image.shape != myo_full.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape} and myocardium {myo_full.shape} must be the same 3-D grid")
    spacing = np.asarray(geometry.spacing, dtype=float)[::-1]  # (z, y, x) mm
    if np.count_nonzero(myo_full) < MIN_MYOCARDIUM_VOXELS:
        return f"myocardium mask has fewer than {MIN_MYOCARDIUM_VOXELS} voxels"
    myo_full = _largest_component(myo_full)
    contact_mm = _rv_contact_mm(spacing)
    margin = np.ceil(contact_mm / spacing).astype(int) + 1
    nz = np.argwhere(myo_full)
    lo = np.maximum(nz.min(axis=0) - margin, 0)
    hi = np.minimum(nz.max(axis=0) + margin + 1, myo_full.shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    myo = myo_full[crop]
    shell = myo & ~ndimage.binary_erosion(myo)
    try:
        hull = ConvexHull(geometry.zyx_to_world(np.argwhere(shell) + lo))
    except (QhullError, ValueError) as exc:
        return f"myocardium is flat or degenerate (convex hull failed: {str(exc).splitlines()[0]})"
    world = geometry.zyx_to_world(np.argwhere(np.ones(myo.shape, dtype=bool)) + lo).reshape(*myo.shape, 3)
    solid = _hull_mask(hull, myo.shape, lo, geometry) | myo
    cavity = solid & ~myo
    if np.count_nonzero(cavity) < MIN_MYOCARDIUM_VOXELS // 2:
        return "myocardium encloses no LV cavity (no long axis)"
    return LVSolid(image[crop], myo, solid, cavity, world, spacing, contact_mm, hull)


def _perpendicular_basis(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """e1, e2 ⊥ u with θ positive by the right-hand rule about u (aha.py)."""
    e1 = np.cross(u, [1.0, 0.0, 0.0] if abs(u[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(u, e1)


def geometric_landmarks(image_hu: np.ndarray, myocardium: np.ndarray, geometry: Geometry) -> GeometricLandmarks:
    """apex, base, rv_insertion (world LPS mm) with per-landmark quality, from the mask and the image (module doc).

    image_hu: (z, y, x) HU (the registered average); myocardium: (z, y, x) mask
    on the same grid. Raises ValueError only when the two grids differ.
    """
    lv = lv_solid(image_hu, myocardium, geometry)
    if isinstance(lv, str):
        return _failed(lv)
    img, myo, solid, cavity, world_all, spacing = lv.image, lv.myocardium, lv.solid, lv.cavity, lv.world, lv.spacing
    voxel_mm3 = float(np.prod(spacing))

    # 2. long axis: first principal axis of the LV solid (through its centroid). The solid
    # rather than the cavity: a basal ring opened by the LVOT (or a gap in a segmented mask)
    # pours its gap into the cavity and tilts the cavity's axis, hardly the hull's.
    solid_w = world_all[solid]
    centre = solid_w.mean(axis=0)
    u = np.linalg.eigh(np.cov((solid_w - centre).T))[1][:, 2]
    # the axis check: the cavity is elongated (an LV cavity is about twice as long as wide)
    cav_w = world_all[cavity]
    evals = np.linalg.eigvalsh(np.cov((cav_w - cav_w.mean(axis=0)).T))
    elongation = float(np.sqrt(evals[2] / max(evals[1], 1e-12)))
    checks: dict[str, float] = {"axis": _ramp(elongation, 1.0, 1.5)}
    details: dict[str, float] = {"cavity_elongation": elongation}

    a_solid = (solid_w - centre) @ u
    a_cav = (cav_w - centre) @ u
    cav_len = float(np.ptp(a_cav))
    near = END_FRACTION * cav_len
    vol_plus = np.count_nonzero(a_cav > a_cav.max() - near)
    vol_minus = np.count_nonzero(a_cav < a_cav.min() + near)
    cavity_vote = (vol_minus - vol_plus) / max(vol_minus + vol_plus, 1)  # > 0: + end is the closed (apical) one
    gap_plus = float(a_solid.max() - a_cav.max())
    gap_minus = float(a_cav.min() - a_solid.min())
    wall_vote = (gap_plus - gap_minus) / max(gap_plus + gap_minus, float(np.min(spacing)))  # > 0: + end apical
    if cavity_vote < 0:
        u, a_solid, a_cav, cavity_vote, wall_vote = -u, -a_solid, -a_cav, -cavity_vote, -wall_vote
    orientation = _ramp(cavity_vote, 0.0, 0.4) * (1.0 if wall_vote > 0 else 0.5)
    checks["orientation"] = orientation
    details.update(cavity_end_vote=float(cavity_vote), wall_end_vote=float(wall_vote))

    # 3. apex and base on the axis
    a_apex = _end_position(a_solid, voxel_mm3, APEX_FIT_VOLUME_FRACTION, power=2.0)
    a_base = -_end_position(-a_solid, voxel_mm3, BASE_FIT_VOLUME_FRACTION, power=1.0)
    apex, base = centre + a_apex * u, centre + a_base * u
    length = a_apex - a_base
    details["long_axis_mm"] = float(length)

    myo_w = world_all[myo]
    a_myo = (myo_w - centre) @ u
    e1, e2 = _perpendicular_basis(u)
    ring = a_myo < a_base + RING_FRACTION * length
    rel = myo_w[ring] - centre
    sectors = np.unique((np.degrees(np.arctan2(rel @ e2, rel @ e1)) % 360.0 // (360.0 / RING_SECTORS)).astype(int))
    checks["ring"] = len(sectors) / RING_SECTORS

    failures: list[str] = []
    if checks["axis"] <= 0:
        failures.append(f"apex, base: LV cavity is not elongated (SD ratio {elongation:.2f})")
    if orientation <= 0:
        failures.append("apex, base: cannot tell the apical from the basal end")
    q_apex = checks["axis"] * orientation
    q_base = q_apex * checks["ring"]

    # 4. RV insertion
    rv, q_rv, rv_fail, rv_details, rv_checks = _rv_insertion(lv, centre, u, e1, e2, a_base, a_apex)
    checks.update(rv_checks)
    details.update(rv_details)
    if rv_fail:
        failures.append(f"rv_insertion: {rv_fail}")
    world = np.stack([apex, base, rv])
    quality = np.array([q_apex, q_base, q_apex * q_rv])
    return _result(world, quality, failures, checks, details)


def _rv_insertion(lv: LVSolid, centre, u, e1, e2, a_base, a_apex):
    """(point, quality, failure text or None, details, checks) of the anterior RV insertion."""
    img, myo, solid, cavity, world_all, spacing = lv.image, lv.myocardium, lv.solid, lv.cavity, lv.world, lv.spacing
    nan3 = np.full(3, np.nan)
    myo_med = float(np.median(img[myo]))
    core = ndimage.binary_erosion(cavity)
    if np.count_nonzero(core) < 10:
        core = cavity
    blood = img[core]
    cav_med = float(np.median(blood))
    noise = float(1.4826 * np.median(np.abs(blood - cav_med)))
    contrast = cav_med - myo_med
    cnr = contrast / max(noise, 1e-3)
    details = {"myocardium_hu": myo_med, "lv_blood_hu": cav_med, "noise_sd_hu": noise}
    checks = {"contrast": _ramp(cnr, 3.0, 6.0)}
    if checks["contrast"] <= 0:
        why = f"no contrast between LV blood and myocardium ({contrast:.0f} HU, {cnr:.1f} noise SD)"
        return nan3, 0.0, why, details, checks
    # bright: at least a quarter of the way from myocardium to LV blood (the RV, enhanced
    # first, holds less contrast than the LV in a time average), 3 noise SD above the
    # myocardium where the contrast allows, at most halfway
    threshold = myo_med + float(np.clip(3.0 * noise, 0.25 * contrast, 0.5 * contrast))
    details["rv_threshold_hu"] = threshold
    dist = ndimage.distance_transform_edt(~myo, sampling=spacing)
    a = (world_all - centre) @ u
    candidate = ~solid & (dist <= lv.contact_mm) & (img > threshold) & (a > a_base) & (a < a_apex)
    if not candidate.any():
        checks["arc"] = 0.0
        return nan3, 0.0, f"no RV blood (> {threshold:.0f} HU) next to the myocardium", details, checks
    rv = _largest_component(candidate)
    rel = world_all[rv] - centre
    theta = np.sort(np.degrees(np.arctan2(rel @ e2, rel @ e1)) % 360.0)
    gaps = np.diff(np.append(theta, theta[0] + 360.0))
    k = int(np.argmax(gaps))
    start = theta[(k + 1) % len(theta)]  # first angle after the largest gap: the arc runs positive from here
    arc = 360.0 - float(gaps[k])
    details.update(rv_contact_arc_deg=arc, rv_contact_ml=float(np.count_nonzero(rv) * np.prod(spacing) / 1000.0))
    checks["arc"] = min(_ramp(arc, 20.0, 60.0), _ramp(arc, 300.0, 200.0))
    if checks["arc"] <= 0:
        return nan3, 0.0, f"RV contact arc of {arc:.0f}° is implausible", details, checks
    t = np.radians(start)
    direction = np.cos(t) * e1 + np.sin(t) * e2
    origin = centre + (a_base + RV_INSERTION_AXIAL_FRACTION * (a_apex - a_base)) * u
    return _on_hull(lv.hull, origin, direction), checks["contrast"] * checks["arc"], None, details, checks


def _on_hull(hull: ConvexHull, origin: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Where the ray from `origin` (inside the hull) along `direction` leaves it: a point of the epicardium."""
    normals, offsets = hull.equations[:, :3], hull.equations[:, 3]
    along = normals @ direction
    reach = -(normals @ origin + offsets)[along > 1e-9] / along[along > 1e-9]
    return origin + (float(reach.min()) if reach.size else 0.0) * direction


def apex_on_axis_of_symmetry(lv: LVSolid, base: np.ndarray) -> np.ndarray | None:
    """The epicardial apex as where the LV's axis of symmetry leaves the epicardium, given the base.

    An LV is close to a solid of revolution about its long axis (AHA's segment model assumes as much), so that
    axis runs through the mitral valve centre (the base) and the centroid of the LV solid (shell and cavity,
    step 1 of the module doc); the apex is where the ray from the centroid away from the base leaves the
    solid's hull. Unlike the net's heatmap peak it depends on the mask's whole shape, not on how the apical
    cap looks. None when the base sits at the centroid (no direction).
    """
    centre = lv.world[lv.solid].mean(axis=0)
    u = centre - np.asarray(base, float)
    if np.linalg.norm(u) < 1e-6:
        return None
    return _on_hull(lv.hull, centre, u / np.linalg.norm(u))


# Two estimates of the insertion's direction this far apart (one AHA basal sector) cannot both be near it.
MAX_RV_DISAGREEMENT_DEG = 60.0


@dataclass(frozen=True)
class RVInsertionOnAxis:
    """The anterior RV insertion about a given long axis (aha.py's definition, placed exactly), and how."""

    world_mm: np.ndarray
    direction: str  # net | mean_of_net_and_contact | contact
    contact_quality: float  # the RV-contact estimate's quality (0: not found)
    disagreement_deg: float  # angle between the net's and the contact's directions about the axis (NaN: one missing)
    note: str | None  # why the contact estimate was not used, if it was not


def rv_insertion_on_axis(
    lv: LVSolid,
    apex: np.ndarray,
    base: np.ndarray,
    net_point: np.ndarray | None,
    min_quality: float | None,
) -> RVInsertionOnAxis | None:
    """The insertion's direction about the axis base → apex, from the net's point, the RV contact (step 4 of the
    module doc, about this axis; not computed when `min_quality` is None), or the mean of both; the point placed
    at RV_INSERTION_AXIAL_FRACTION of base → apex, where aha.py and the phantoms define it, on the epicardium:
    at the net's own distance from the axis where there is a net point (the segmented myocardium's hull reaches
    past the epicardium where the RV wall joins it, by up to 4 mm on the shifted phantom family;
    BENCHMARKS.md), else on that hull.

    Why both: the insertion is a line along the septum's anterior margin, the net's heatmap finds a point on it
    whose angle about the axis is what the AHA map uses; the RV contact measures the same angle from the image's
    first-pass-bright RV. The two err independently (the net where the anatomy is unlike its training, the
    contact where the RV's blood is dim or touches the LV beyond the insertion), so their mean is the better
    estimate unless they lie more than MAX_RV_DISAGREEMENT_DEG apart (then the net's, the contact noted).
    None when there is no axis, neither gives a direction, or the axis misses the LV solid at that level (the
    caller keeps the point it had).
    """
    apex, base = np.asarray(apex, float), np.asarray(base, float)
    length = float(np.linalg.norm(apex - base))
    if not length > 0:
        return None  # no axis (apex on the base: only when landmarks.min_long_axis_mm allows it)
    u = (apex - base) / length
    origin = base + RV_INSERTION_AXIAL_FRACTION * length * u
    if np.any(lv.hull.equations[:, :3] @ origin + lv.hull.equations[:, 3] > 1e-6):
        return None  # the axis misses the LV solid at that level: no epicardium to place the point on

    def off_axis(point: np.ndarray) -> np.ndarray:
        d = np.asarray(point, float) - base
        return d - (d @ u) * u

    def unit(v: np.ndarray) -> np.ndarray:
        return v / max(float(np.linalg.norm(v)), 1e-9)

    quality, note, usable, angle = 0.0, None, False, float("nan")
    if min_quality is not None:
        contact, quality, failure, _, _ = _rv_insertion(lv, base, u, *_perpendicular_basis(u), 0.0, length)
        quality = float(quality if failure is None else 0.0)
        usable = failure is None and quality >= min_quality
        note = failure or (None if usable else f"RV contact quality {quality:.2f} < {min_quality:.2f}")
    if net_point is None:
        if not usable:
            return None
        return RVInsertionOnAxis(_on_hull(lv.hull, origin, unit(off_axis(contact))), "contact", quality, angle, note)
    d_net = unit(off_axis(net_point))
    direction, how = d_net, "net"
    if usable:
        d_contact = unit(off_axis(contact))
        angle = float(np.degrees(np.arccos(np.clip(d_net @ d_contact, -1.0, 1.0))))
        if angle > MAX_RV_DISAGREEMENT_DEG:
            note = f"RV contact {angle:.0f}° from the net's insertion (> {MAX_RV_DISAGREEMENT_DEG:.0f}°)"
        else:
            direction, how = unit(d_net + d_contact), "mean_of_net_and_contact"
    radius = float(np.linalg.norm(off_axis(net_point)))  # the net's own distance from the axis (docstring)
    return RVInsertionOnAxis(origin + radius * direction, how, quality, angle, note)


# The myocardium within this many mm of its farthest point from the base: a cap around the epicardial apex.
APEX_CAP_DEPTH_MM = 4.0


def apex_from_base(base_world: np.ndarray, myocardium: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, float]:
    """The epicardial apex as the myocardium's far end from a known base (mitral valve centre), and a quality.

    The LV is longer (base to apex 70-100 mm in adults) than it is wide at the base (epicardial radius 25-35 mm),
    so the myocardium point farthest from the valve centre is the apex, whatever the LV's shape or orientation;
    the voxels within APEX_CAP_DEPTH_MM of that distance form a cap round it, whose mean is the estimate. The
    fallback when the net's base is sure and its apex is not. Quality: 1 when the cap is one compact patch
    (spread ≤ 20 mm from its mean, an apex's curvature radius of 20-30 mm at 4 mm depth gives 13-15 mm), falling
    to 0 at 30 mm (two far patches, e.g. opposite sides of a short, wide shell: no single apex).
    """
    mask = _largest_component(myocardium)
    if not mask.any() or not np.all(np.isfinite(base_world)):
        return np.full(3, np.nan), 0.0
    world = geometry.zyx_to_world(np.argwhere(mask))
    distance = np.linalg.norm(world - np.asarray(base_world, float), axis=1)
    cap = world[distance >= distance.max() - APEX_CAP_DEPTH_MM]
    apex = cap.mean(axis=0)
    spread = float(np.linalg.norm(cap - apex, axis=1).max())
    return apex, _ramp(spread, 30.0, 20.0)
