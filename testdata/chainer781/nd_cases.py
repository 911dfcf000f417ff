"""The N-D transposed convolution and unpooling cases that make_misc_fixture.py
runs on Chainer 7.8.1 and test_onefchainer.py runs on onefchainer (the same
program): outputs and the gradients for a random output gradient."""
import numpy as np

CASES = {    # name: (function, input shapes (x, W, b), keyword arguments)
    'deconvolution_1d': ('deconvolution_1d', [(2, 3, 7), (3, 4, 3), (4,)], dict(stride=2, pad=1)),
    'deconvolution_1d_outsize': ('deconvolution_1d', [(2, 3, 7), (3, 4, 3)],
                                 dict(stride=2, pad=1, outsize=(14,))),
    'deconvolution_3d': ('deconvolution_3d', [(2, 3, 4, 3, 2), (3, 2, 2, 3, 2), (2,)],
                         dict(stride=(1, 2, 2), pad=(0, 1, 0))),
    'deconvolution_nd_groups': ('deconvolution_nd', [(2, 4, 3, 3), (4, 3, 2, 2), (6,)],
                                dict(stride=2, dilate=(1, 2), groups=2)),
    'unpooling_1d': ('unpooling_1d', [(2, 3, 5)], dict(ksize=3, stride=2, pad=1)),
    'unpooling_3d': ('unpooling_3d', [(1, 2, 2, 3, 2)], dict(ksize=2, cover_all=False)),
    'unpooling_nd': ('unpooling_nd', [(2, 2, 3, 4)], dict(ksize=(2, 3), stride=(1, 2),
                                                          outsize=(4, 8))),
}


def run_nd_cases(chainer, F):
    rng = np.random.RandomState(7815)
    out = {}
    for name, (function, shapes, kwargs) in sorted(CASES.items()):
        inputs = [chainer.Variable(rng.randn(*shape).astype(np.float32)) for shape in shapes]
        y = getattr(F, function)(*inputs, **kwargs)
        out[name + '/gy'] = gy = rng.randn(*y.shape).astype(np.float32)
        y.grad = gy
        y.backward()
        out[name + '/y'] = y.array
        for i, v in enumerate(inputs):
            out['{}/input{}'.format(name, i)] = v.array
            out['{}/grad{}'.format(name, i)] = v.grad
    return out
