"""Write Chainer 7.8.1 reference values for the ROI functions.

Run with the reference venv:  /work/venv-chainer/bin/python make_roi_fixture.py [outdir]
Writes roi.npz into outdir (default: this file's folder):
  x, rois, roi_indices, rois5      the inputs shared by all cases: x (2, 3, 8, 9)
                                   float32, 7 boxes in image coordinates (scale
                                   0.5 maps them onto x), some partly or wholly
                                   off the image, one malformed (max < min);
                                   rois5 the same boxes as roi_pooling_2d's
                                   (index, x_min, y_min, x_max, y_max) rows
                                   (without the wholly-off box, see below)
  <case>/gy, <case>/y, <case>/gx   for each case of CASES: the output gradient
                                   fed in, Chainer's output and input gradient
Only Chainer's public API is called.  roi_pooling_2d leaves out the box wholly
off the image (Chainer's CPU backward indexes outside x for it), and its gy is 0
for the malformed box: Chainer pools that box as one pixel but passes that
pixel no gradient (its backward looks only between min and max); onefchainer
passes it the gradient.
"""
import os
import sys

import numpy as np
import chainer
import chainer.functions as F

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
rng = np.random.RandomState(781)

x = rng.uniform(-1, 1, (2, 3, 8, 9)).astype(np.float32)
# (y_min, x_min, y_max, x_max) in image coordinates (twice x's size).
rois = np.array([[1.3, 2.1, 11.7, 14.2],      # inside
                 [-3.1, -2.3, 7.4, 6.6],      # off the top-left edge
                 [9.2, 10.7, 19.3, 21.9],     # off the bottom-right edge
                 [0.4, 0.6, 15.6, 17.3],      # nearly the whole map
                 [6.3, 5.2, 6.9, 5.7],        # smaller than a pixel
                 [8.8, 9.1, 4.2, 3.3],        # malformed: max < min
                 [22.4, 25.3, 30.1, 33.6]],   # wholly off the image
                np.float32)
roi_indices = np.array([0, 1, 1, 0, 1, 0, 1], np.int32)
rois5 = np.concatenate([roi_indices[:, None].astype(np.float32), rois[:, [1, 0, 3, 2]]],
                       axis=1)[:6]

CASES = [
    ('roi_pooling_2d/a', lambda v: F.roi_pooling_2d(v, rois5, 3, 2, 0.5)),
    ('roi_pooling_2d/b', lambda v: F.roi_pooling_2d(v, rois5 * np.float32([1, 2, 2, 2, 2]),
                                                    2, 4, 0.5)),
    ('roi_max_pooling_2d/int', lambda v: F.roi_max_pooling_2d(v, rois, roi_indices, 3, 0.5)),
    ('roi_max_pooling_2d/pair', lambda v: F.roi_max_pooling_2d(v, rois * 2, roi_indices,
                                                               (2, 4), 0.25)),
    ('roi_average_pooling_2d/int', lambda v: F.roi_average_pooling_2d(
        v, rois, roi_indices, 3, 0.5)),
    ('roi_average_pooling_2d/pair', lambda v: F.roi_average_pooling_2d(
        v, rois * 2, roi_indices, (2, 4), 0.25)),
    ('roi_average_align_2d/none', lambda v: F.roi_average_align_2d(
        v, rois, roi_indices, 3, 0.5)),
    ('roi_average_align_2d/two', lambda v: F.roi_average_align_2d(
        v, rois, roi_indices, (2, 3), 0.5, sampling_ratio=2)),
    ('roi_average_align_2d/pair', lambda v: F.roi_average_align_2d(
        v, rois, roi_indices, (4, 2), 0.5, sampling_ratio=(1, 3))),
    ('roi_max_align_2d/none', lambda v: F.roi_max_align_2d(v, rois, roi_indices, 3, 0.5)),
    ('roi_max_align_2d/two', lambda v: F.roi_max_align_2d(
        v, rois, roi_indices, (2, 3), 0.5, sampling_ratio=2)),
    ('roi_max_align_2d/pair', lambda v: F.roi_max_align_2d(
        v, rois, roi_indices, (4, 2), 0.5, sampling_ratio=(None, 3))),
]

arrays = {'x': x, 'rois': rois, 'roi_indices': roi_indices, 'rois5': rois5}
for name, run in CASES:
    v = chainer.Variable(x.copy())
    y = run(v)
    gy = rng.uniform(-1, 1, y.shape).astype(np.float32)
    if name.startswith('roi_pooling_2d/'):
        gy[5] = 0     # see above
    y.grad = gy
    y.backward()
    arrays[name + '/gy'] = gy
    arrays[name + '/y'] = y.array
    arrays[name + '/gx'] = v.grad
np.savez_compressed(os.path.join(OUT, 'roi.npz'), **arrays)
print('wrote', os.path.join(OUT, 'roi.npz'), len(arrays), 'arrays')
