"""The link-hook cases that make_misc_fixture.py runs on Chainer 7.8.1 and
test_onefchainer.py runs on onefchainer (the same program for both):
SpectralNormalization on Linear, Convolution2D (with gamma and factor) and
Deconvolution2D, WeightStandardization on Convolution2D.
"""
import numpy as np


def link_hook_cases(chainer, L, F, link_hooks, rng):
    """Each case: a link with set weights, a hook (SN with u set), one
    forward in train mode and one in test mode, the gradients of the first."""
    out = {}
    cases = {
        'sn_linear': (lambda: L.Linear(5, 4), lambda: link_hooks.SpectralNormalization(),
                      (3, 5)),
        'sn_gamma_conv': (lambda: L.Convolution2D(2, 3, 3),
                          lambda: link_hooks.SpectralNormalization(
                              n_power_iteration=2, use_gamma=True, factor=2.0), (2, 2, 5, 5)),
        'sn_deconv': (lambda: L.Deconvolution2D(2, 3, 3), lambda: link_hooks.SpectralNormalization(),
                      (2, 2, 4, 4)),
        'ws_conv': (lambda: L.Convolution2D(2, 3, 3), lambda: link_hooks.WeightStandardization(),
                    (2, 2, 5, 5)),
    }
    for name, (make_link, make_hook, x_shape) in sorted(cases.items()):
        link = make_link()
        link.W.array[...] = rng.randn(*link.W.shape).astype(np.float32)
        link.b.array[...] = rng.randn(*link.b.shape).astype(np.float32)
        out[name + '/W'] = link.W.array.copy()
        out[name + '/b'] = link.b.array.copy()
        hook = make_hook()
        link.add_hook(hook)
        if hasattr(link, 'W_u'):
            link.W_u[...] = rng.randn(*link.W_u.shape).astype(np.float32)
            out[name + '/u0'] = link.W_u.copy()
        x = rng.randn(*x_shape).astype(np.float32)
        out[name + '/x'] = x
        y = link(x)
        gy = rng.randn(*y.shape).astype(np.float32)
        out[name + '/gy'] = gy
        out[name + '/y'] = y.array
        link.cleargrads()
        if name != 'sn_deconv':      # Chainer 7.8.1's Deconvolution2D backward fails under SN
            y.grad = gy
            y.backward()
            out[name + '/gW'] = link.W.grad
        if hasattr(link, 'W_u'):
            out[name + '/u1'] = link.W_u.copy()
        if hasattr(link, 'gamma'):
            out[name + '/gamma'] = np.asarray(link.gamma.array)
            out[name + '/ggamma'] = np.asarray(link.gamma.grad)
        with chainer.using_config('train', False):
            out[name + '/y_test'] = link(x).array
        if hasattr(link, 'W_u'):
            out[name + '/u2'] = link.W_u.copy()
    return out
