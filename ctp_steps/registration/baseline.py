"""The SimpleITK baseline a user would pick: LV-centroid start, affine then B-spline, Mattes mutual information.

Per moving frame, inside the same LV box as the learned method: the fixed image is
the reference frame cropped to the box, the metric is evaluated on the reference
LV mask dilated by `metric_margin_mm` (the heart, not the chest wall), the
initial transform is the LV centroid shift; an affine stage (regular-step
gradient descent, physical-shift scales) then a cubic B-spline stage (L-BFGS-B)
run on two resolution levels each. Mutual information copes with the contrast
change between frames. The composite transform is sampled on the box grid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ctp_steps.registration.config import SimpleITKConfig
from ctp_steps.registration.crop import BoxField
from ctp_steps.types import Geometry


def _image(array: np.ndarray, geometry: Geometry, pixel=None):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetOrigin(geometry.origin)
    image.SetSpacing(geometry.spacing)
    image.SetDirection(geometry.direction)
    return sitk.Cast(image, pixel) if pixel is not None else image


def _box_roi(image, box: Geometry, size: int):
    """The part of `image` covering the box (index bounds of the box corners, clipped to the image)."""
    import SimpleITK as sitk

    corners = [
        np.asarray(box.origin) + np.asarray([i, j, k]) * (size - 1) * box.spacing[0]
        for i in (0, 1) for j in (0, 1) for k in (0, 1)
    ]
    idx = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(map(float, c))) for c in corners])
    dims = np.asarray(image.GetSize())
    lo = np.clip(np.floor(idx.min(axis=0)).astype(int), 0, dims - 1)
    hi = np.clip(np.ceil(idx.max(axis=0)).astype(int) + 1, lo + 1, dims)
    return sitk.RegionOfInterest(image, [int(v) for v in hi - lo], [int(v) for v in lo])


def _method(cfg: SimpleITKConfig, mask, seed: int):
    import SimpleITK as sitk

    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=cfg.histogram_bins)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(cfg.sampling_fraction, seed)
    r.SetMetricFixedMask(mask)
    r.SetInterpolator(sitk.sitkLinear)
    # ITK's default Gaussian-filtered moving-image gradient sends the optimiser uphill on these
    # frames (checked: the metric worsens step after step); the plain image gradient does not.
    r.MetricUseMovingImageGradientFilterOff()
    r.MetricUseFixedImageGradientFilterOff()
    r.SetShrinkFactorsPerLevel([2, 1])
    r.SetSmoothingSigmasPerLevel([1.0, 0.0])
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return r


# Studies finer than the box's voxels (sub-millimetre exports on a ~1 mm working grid) are registered on the
# box's own grid: the transforms are smooth over centimetres, and mutual information on 0.7 mm voxels cost tens
# of minutes per patient for no better field. Grids as coarse as the box are registered as they are.
BOX_MARGIN_VOXELS = 8  # the moving frame's extra reach around the box (its motion: up to ~20 mm at 2.5 mm)


def finer_than_box(geometry: Geometry, box: Geometry) -> bool:
    return min(geometry.spacing) < 0.75 * box.spacing[0]


def _grown(box: Geometry, margin: int) -> Geometry:
    """The box's grid extended by `margin` voxels on every side (same spacing and direction)."""
    origin = np.asarray(box.origin) - box.direction_matrix @ (np.full(3, margin * box.spacing[0]))
    return Geometry(tuple(float(v) for v in origin), box.spacing, box.direction)


def onto_box(image, box: Geometry, size: int, labels: bool = False):
    """`image` resampled onto the box grid (size³ at the box spacing): anti-aliased first (a Gaussian of half
    the box spacing minus the image's own), nearest neighbour for masks."""
    import SimpleITK as sitk

    if not labels:
        sigma = [max(0.0, 0.5 * box.spacing[0] - 0.5 * s) for s in image.GetSpacing()]
        if max(sigma) > 0:
            image = sitk.SmoothingRecursiveGaussian(image, sigma)
    return sitk.Resample(image, [size] * 3, sitk.Transform(), sitk.sitkNearestNeighbor if labels else sitk.sitkLinear,
                         box.origin, box.spacing, box.direction, 0.0, image.GetPixelID())


def register_pair(fixed, moving, mask, center_mm: np.ndarray, shift_mm: np.ndarray, cfg: SimpleITKConfig, seed: int = 1):
    """Composite transform (affine ∘ B-spline) mapping fixed points to moving points."""
    import SimpleITK as sitk

    affine = sitk.AffineTransform(3)
    affine.SetCenter(tuple(map(float, center_mm)))
    affine.SetTranslation(tuple(map(float, shift_mm)))
    r = _method(cfg, mask, seed)
    r.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-2, numberOfIterations=cfg.affine_iterations,
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8,
    )
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetInitialTransform(affine, inPlace=True)
    r.Execute(fixed, moving)

    bspline = sitk.BSplineTransformInitializer(fixed, [cfg.bspline_mesh] * 3, 3)
    r = _method(cfg, mask, seed)
    r.SetOptimizerAsLBFGSB(
        gradientConvergenceTolerance=1e-5, numberOfIterations=cfg.bspline_iterations,
        maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=4 * cfg.bspline_iterations,
        costFunctionConvergenceFactor=1e7,
    )
    r.SetMovingInitialTransform(affine)
    r.SetInitialTransform(bspline, inPlace=True)
    r.Execute(fixed, moving)
    # ITK composites apply the last-added transform first: p ↦ affine(bspline(p))
    return sitk.CompositeTransform([affine, bspline])


def register_simpleitk(
    frames: np.ndarray,
    lv: np.ndarray,
    geometry: Geometry,
    reference: int,
    centroids: np.ndarray,
    box: Geometry,
    size: int,
    cfg: SimpleITKConfig,
    threads: int = 1,
) -> list[BoxField | None]:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, threads))
    near_lv = ndimage.distance_transform_edt(~lv[reference], sampling=geometry.spacing[::-1]) <= cfg.metric_margin_mm
    on_box = finer_than_box(geometry, box)
    fixed = _box_roi(_image(frames[reference], geometry, sitk.sitkFloat32), box, size)
    mask = _box_roi(_image(near_lv.astype(np.uint8), geometry), box, size)
    if on_box:
        fixed, mask = onto_box(fixed, box, size), onto_box(mask, box, size, labels=True)
        # the moving frames must reach beyond the box (they move): the box plus a margin
        reach, reach_size = _grown(box, BOX_MARGIN_VOXELS), size + 2 * BOX_MARGIN_VOXELS
    center = centroids[reference]
    out: list[BoxField | None] = [None] * len(frames)
    for k in range(len(frames)):
        if k == reference:
            continue
        shift = centroids[k] - center
        moving = _image(frames[k], geometry, sitk.sitkFloat32)
        if on_box:
            moving = onto_box(_box_roi(moving, reach, reach_size), reach, reach_size)
        transform = register_pair(fixed, moving, mask, center, shift, cfg, seed=k + 1)
        field = sitk.TransformToDisplacementField(
            transform, sitk.sitkVectorFloat64, [size] * 3, box.origin, box.spacing, box.direction
        )
        translation = np.asarray(transform.TransformPoint(tuple(map(float, center)))) - center
        out[k] = BoxField(translation, sitk.GetArrayFromImage(field).astype(np.float32), box)
    return out
