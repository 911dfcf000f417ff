"""The spatial transformer, deformable and local convolution cases that
make_convx_fixture.py runs on Chainer 7.8.1 and test_onefchainer.py runs on
onefchainer (the same program): outputs, and the gradients of every input for
a random output gradient.  `send` moves an input array to the device under
test (Chainer's run keeps them on the CPU)."""
import numpy as np

CASES = {    # name: (function, [(shape, low, high)] of the inputs, dtype, arguments)
    'grid': ('spatial_transformer_grid', [((2, 2, 3), -1, 1)], np.float32, ((4, 5),)),
    'grid_one_row': ('spatial_transformer_grid', [((1, 2, 3), -1, 1)], np.float64, ((1, 3),)),
    # points up to 0.4 past the edges: the ring of zeros and the clipping
    'sampler': ('spatial_transformer_sampler', [((2, 3, 4, 5), -1, 1), ((2, 2, 3, 6), -1.4, 1.4)],
                np.float64, ()),
    'sampler_f32': ('spatial_transformer_sampler', [((1, 2, 5, 3), -1, 1),
                                                    ((1, 2, 4, 4), -2.5, 2.5)], np.float32, ()),
    'deformable': ('deformable_convolution_2d_sampler',
                   [((2, 3, 6, 7), -1, 1), ((2, 18, 3, 4), -1.5, 1.5), ((4, 3, 3, 3), -1, 1),
                    ((4,), -1, 1)], np.float64, (2, 1)),
    # large offsets (taps far outside), a 2x3 kernel, no bias
    'deformable_far': ('deformable_convolution_2d_sampler',
                       [((1, 2, 5, 5), -1, 1), ((1, 12, 4, 3), -4, 4), ((3, 2, 2, 3), -1, 1)],
                       np.float32, ()),
    'local': ('local_convolution_2d', [((2, 3, 7, 8), -1, 1), ((4, 3, 3, 3, 3, 2), -1, 1),
                                       ((4, 3, 3), -1, 1)], np.float64, ((2, 3),)),
    'local_nobias': ('local_convolution_2d', [((2, 2, 5, 4), -1, 1), ((3, 3, 2, 2, 3, 3), -1, 1)],
                     np.float32, ()),
}


def run_convx_cases(chainer, F, send=lambda array: array, to_cpu=np.asarray):
    rng = np.random.RandomState(7816)
    out = {}
    for name, (function, inputs, dtype, args) in sorted(CASES.items()):
        arrays = [rng.uniform(low, high, shape).astype(dtype) for shape, low, high in inputs]
        variables = [chainer.Variable(send(array)) for array in arrays]
        if function == 'deformable_convolution_2d_sampler':
            x, offset, W = variables[:3]
            b = variables[3] if len(variables) == 4 else None
            y = F.deformable_convolution_2d_sampler(x, offset, W, b, *args)
        else:
            y = getattr(F, function)(*(variables + list(args)))
        gy = rng.uniform(-1, 1, y.shape).astype(dtype)
        y.grad = send(gy)
        y.backward()
        out[name + '/y'] = to_cpu(y.array)
        for i, (array, v) in enumerate(zip(arrays, variables)):
            out['{}/input{}'.format(name, i)] = array
            out['{}/grad{}'.format(name, i)] = to_cpu(v.grad)
    return out
