"""onefchainer: a Chainer-style deep-learning framework in one file.

Read it top to bottom: the order is the order in which the ideas build on
each other.  Chapter N starts at the line "# Chapter N. Title": search for
"# Chapter 9." to go to chapter 9.

PART I, THE IDEAS: everything a multi-layer perceptron needs to learn MNIST,
and nothing else: 1. Arrays (`xp`: NumPy or CuPy); 2. Configuration;
3. Variable and Function (running code records the graph); 4. Backprop;
5. The functions of an MLP; 6. Links; 7. Optimizers (SGD, Adam);
8. Training.  Stop at "END OF PART I": you have seen every idea.

PART II, THE LIBRARY: 9. More functions; 10. Initializers and more links;
11. Convolutional networks; 12. More optimizers and hooks; 13. Serializers;
14. Reporter; 15. Gradient check; 16. Data: datasets, downloading,
iterators, batching; 17. The training loop: Trainer and extensions.

PART III, PLUMBING: 18. Devices; 19. Speed paths; 20. Conveniences, checks
and error messages; 21. Chainer compatibility.  Where it adds methods to a
class of Part I, the class there ends with a comment saying so.

Chainer v7 programs run after changing their imports (`import onefchainer
as chainer`, ...).  Only the standard library and NumPy are required; CuPy
(GPU) and matplotlib (plots) are used when installed and asked for.
"""
import collections
import contextlib
import copy
import gzip
import hashlib
import heapq
import inspect
import io
import itertools
import json
import math
import os
import shutil
import struct
import sys
import tempfile
import time
import types
import urllib.error
import urllib.request
import warnings
import weakref

import numpy as np

__version__ = '0.1.0'


# #############################################################################
# PART I. THE IDEAS
# #############################################################################


# =============================================================================
# Chapter 1. Arrays
# =============================================================================
# All numbers live in n-dimensional arrays: NumPy's on the CPU, CuPy's on an
# NVIDIA GPU.  CuPy copies NumPy's API, so code that takes its array module
# `xp` from its data (`xp = get_array_module(x)`) runs on either device
# unchanged.  That is the whole idea; no function below calls bare `np.` on
# data.  (Devices as objects, '@numpy' and '@cupy:0', are plumbing: Chapter 21.)


try:  # CuPy is optional: everything works without it.
    import cupy
except ImportError:
    cupy = None

_array_types = (np.ndarray,) if cupy is None else (np.ndarray, cupy.ndarray)


def get_array_module(*args):
    """Return `cupy` if any argument lives on the GPU, else `numpy`."""
    if cupy is not None:
        return cupy.get_array_module(*[
            a.data if isinstance(a, Variable) else a for a in args])
    return np


def _xp(array):
    # The one-array fast path of get_array_module, used on every op (np.generic: a 0-dim result).
    return np if isinstance(array, (np.ndarray, np.generic)) else cupy


# =============================================================================
# Chapter 2. Configuration
# =============================================================================
# A few switches change how the same code behaves: `train` (dropout is active
# only while training), `enable_backprop` (off: no graph is recorded, which
# saves memory and time at test time) and `debug` (check every result for
# NaN/inf and name the function that made it).  Change them for a block of
# code with `using_config`, which always puts the old value back.


class _Config:
    """The configuration object `config`: train, enable_backprop, debug, dtype, ...
    Chainer: chainer.configuration.GlobalConfig.
    """
    def __init__(self):
        self.train = True
        self.enable_backprop = True
        self.debug = False
        self.dtype = np.dtype(np.float32)
        self.keep_graph_on_report = False
        self.type_check = True
        self.use_cudnn = 'never'

    # Continued in Chapter 24 (show).


config = _Config()


@contextlib.contextmanager
def using_config(name, value, config=config):
    """Set `config.<name>` (a str) to `value` inside a `with` block; on leaving it,
    also by an exception, the old value is restored (or the name removed if it
    was unset).  Yields nothing.  Chainer: chainer.using_config."""
    had_value = hasattr(config, name)
    old = getattr(config, name, None)
    setattr(config, name, value)
    try:
        yield
    finally:
        if had_value:
            setattr(config, name, old)
        else:
            delattr(config, name)


def no_backprop_mode():
    """`with no_backprop_mode():` records no graph inside the block (test time:
    less memory, less time). Chainer: chainer.no_backprop_mode.
    """
    return using_config('enable_backprop', False)


# =============================================================================
# Chapter 3. Variable and Function
# =============================================================================
# Define-by-run: there is no separate "graph building" step.  Every time a
# Function is applied to Variables, it computes its result *and* remembers
# where the result came from:
#
#     x ──> [Function f] ──> y          y.creator is f, f.inputs is (x,)
#
# Running ordinary Python (loops, ifs, recursion) therefore records exactly
# the graph that was executed, and backprop (Chapter 4) walks it backwards.
#
# Memory: a Variable holds its creator strongly and a Function holds its
# inputs strongly, but its outputs only *weakly*.  So the references all
# point backwards, there are no cycles, and the whole graph is freed by
# reference counting the moment the user drops the last Variable of it.


class Variable:
    """An array in the graph: its data, its gradient and the Function that made it.

    Variable(data=None, name=None, grad=None, requires_grad=True)

    data: a numpy/cupy array (None for a parameter not yet shaped); name: a
    label for graphs and messages; grad: dL/d(this variable), an array like
    data, or None; requires_grad: False for constants (data, labels), which
    then get no gradient.  Raises TypeError if data is not an array.
    Chainer: chainer.Variable.
    """

    # Without this, `ndarray * Variable` would be NumPy's multiplication,
    # which makes an object array of Variables; a higher priority makes
    # NumPy hand the operation to Variable.__rmul__ instead.
    __array_priority__ = 200

    def __init__(self, data=None, name=None, grad=None, requires_grad=True):
        if data is not None and not isinstance(data, _array_types):
            raise TypeError(
                'Variable: data must be a numpy.ndarray or cupy.ndarray, not '
                '{}; convert it first, e.g. numpy.asarray(data, '
                'dtype=numpy.float32)'.format(type(data).__name__))
        self.data = data
        self.name = name
        self._grad = None
        self.creator = None        # the Function that computed this (None: a leaf)
        self.rank = 0              # distance from the leaves, orders backprop
        self.requires_grad = requires_grad
        if grad is not None:
            self.grad = grad

    @property
    def grad(self):
        """The gradient array, or None (Chainer: Variable.grad)."""
        return self._grad

    @grad.setter
    def grad(self, grad):
        self._grad = _checked_grad(self, grad)     # shape and dtype: Chapter 23

    def cleargrad(self):
        """Forget the gradient (grad = None); optimizers do this before backward."""
        self._grad = None

    shape = property(lambda self: self.data.shape, doc='The shape of data.')
    ndim = property(lambda self: self.data.ndim, doc='The number of axes of data.')
    size = property(lambda self: self.data.size, doc='The number of elements of data.')
    dtype = property(lambda self: self.data.dtype, doc='The dtype of data.')

    def backward(self, retain_grad=False, enable_double_backprop=False):
        """Compute the gradient of this variable w.r.t. every variable behind it.

        A one-element output (a loss) starts from gradient 1; a larger one
        needs its `.grad` set first (else ValueError).  Afterwards each leaf
        that requires a gradient holds dL/dx in `.grad`, summed into what was
        there; intermediate gradients are dropped unless retain_grad=True.
        enable_double_backprop=True raises NotImplementedError.
        Chainer: Variable.backward.
        """
        if enable_double_backprop:     # backward here works on arrays, not Variables
            raise NotImplementedError('backward: enable_double_backprop is not supported')
        if self._grad is None:
            if self.data.size != 1:
                raise ValueError(
                    'backward: this variable has shape {}, so its gradient '
                    'cannot be assumed to be 1; reduce it to one value first '
                    '(e.g. F.sum(y)) or set y.grad to an array of shape {}'
                    .format(self.data.shape, self.data.shape))
            self._grad = _xp(self.data).ones_like(self.data)
        _backprop([self], retain_grad)

    # The operators (x + y, x * W ...) are added in Chapter 5, once the
    # functions they build exist.

    __hash__ = object.__hash__

    # Continued in Chapter 5 (__add__, __mul__); Chapter 9 (__sub__, __truediv__,
    # __pow__, __getitem__, reshape, T, ...); Chapter 21 (xp, device, to_device,
    # to_cpu, ...); Chapter 23 (array, grad_var, backward, __len__, ...);
    # Chapter 24 (set_creator, addgrad, copydata, mean, ...).


def as_variable(obj):
    """Return `obj` if it is a Variable, else wrap the array (no gradient)."""
    if isinstance(obj, Variable):
        return obj
    return Variable(obj, requires_grad=False)


def as_array(obj):
    """The array of `obj` if it is a Variable, else `obj` itself.
    Chainer: chainer.as_array.
    """
    return obj.data if isinstance(obj, Variable) else obj


class Function:
    """An operation that records itself in the graph when called.

    Subclass it and write two methods on *tuples of arrays*:

        forward(self, inputs)                -> tuple of output arrays
        backward(self, inputs, grad_outputs) -> tuple of input gradients

    `backward` gets the inputs of `forward` and the gradient of the loss
    w.r.t. each output, and returns the gradient w.r.t. each input (None
    where an input needs none).  Calling the Function on Variables (or
    arrays) runs forward and, when backprop is enabled and an input needs a
    gradient, links the outputs to it for Chapter 4.  Returns one Variable,
    or a tuple.  Chainer: chainer.Function (the old-style function node).
    """

    rank = 0
    inputs = None
    outputs = None

    @property
    def label(self):
        """The name used in messages and graphs (the class name by default)."""
        return type(self).__name__

    def __call__(self, *inputs):
        """Apply the function to Variables or arrays; see the class docstring."""
        # Every op comes through here, so one plain loop gathers the arrays,
        # whether any input needs a gradient and the highest rank at once.
        in_data = []
        requires_grad = False           # an output needs a grad if some input does
        rank = 0
        for x in inputs:
            if not isinstance(x, Variable):   # raw arrays: wrap them, then start again
                return self(*[_as_input(self, x) for x in inputs])
            in_data.append(x.data)
            if x.requires_grad:
                requires_grad = True
            if x.rank > rank:
                rank = x.rank
        in_data = tuple(in_data)
        try:
            out_data = self.forward(in_data)
        except (TypeError, ValueError, IndexError) as error:
            _explain(self, in_data, error)    # adds the function's name and inputs: Chapter 23
            raise                             # the same error, down to forward's failing line
        if type(out_data) is not tuple:
            out_data = tuple(out_data) if isinstance(out_data, list) else (out_data,)
        outputs = []
        for y in out_data:
            if not isinstance(y, _array_types):   # NumPy returns 0-dim results as scalars
                y = _xp(in_data[0]).asarray(y)
            outputs.append(Variable(y, None, None, requires_grad))
        if config.debug:
            _check_finite(self, 'forward', out_data)
        if requires_grad and config.enable_backprop:   # record the graph
            self.rank = rank
            self.inputs = inputs
            refs = []
            for y in outputs:
                y.creator = self
                y.rank = rank + 1
                refs.append(weakref.ref(y))
            self.outputs = tuple(refs)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    # forward and backward are yours to write (above); Chainer's per-device
    # variants (forward_cpu, forward_gpu, ...) are plumbing: Chapter 24.

    # Continued in Chapter 23 (output_data, unchain); Chapter 24 (forward,
    # backward, forward_cpu, backward_cpu, ...).


def _as_input(function, x):
    if isinstance(x, Variable):
        return x
    if not isinstance(x, _array_types):
        raise TypeError(
            '{}: inputs must be Variables or numpy/cupy arrays, not {}'
            .format(function.label, type(x).__name__))
    return Variable(x, requires_grad=False)


# =============================================================================
# Chapter 4. Backprop
# =============================================================================
# The chain rule, applied to the recorded graph.  If L is the loss and a
# function computed y = f(x), then
#
#     dL/dx = dL/dy * dy/dx          (summed over every y that used x)
#
# so the gradient of every variable can be computed from the gradients of
# the variables after it.  We must therefore visit functions in *reverse
# topological order*: a function may run its backward only once every
# function that used its outputs has run.  `rank` gives that order cheaply:
# a function's rank is the highest rank of its inputs, and its outputs get
# rank + 1, so every function that uses a variable outranks the function
# that made it.  A max-heap on rank therefore always pops a function that no
# unvisited function depends on.  For y = f(g(x), x):  g has rank 0, its
# output rank 1, f rank 1; backward pops f, then g.  The loop is iterative,
# so a graph of a million ops needs no recursion.
#
# A variable used twice (x + x, or two branches meeting: a "diamond") gets
# the sum of both contributions.  The gradient of an intermediate variable
# is dropped as soon as its function has used it (unless retain_grad=True),
# so backward holds only the gradients at its current frontier.  The arrays
# of the graph itself go when the user drops the loss (Chapter 3).


def _backprop(roots, retain_grad):
    heap = []
    seen = set()
    tie = itertools.count()    # equal ranks pop in push order: deterministic
    for root in roots:
        if root.creator is not None and root.creator not in seen:
            seen.add(root.creator)
            heapq.heappush(heap, (-root.creator.rank, next(tie), root.creator))
    # Accumulating: the first gradient a variable gets is stored as it is, and
    # that array may be shared: for y = x + x, Add's backward hands the same
    # gy to both inputs.  Adding the second contribution *in place* would then
    # also change gy.  So the first sum makes a new array, which is ours: the
    # variable goes into `owned`, and later sums may add into it in place.
    owned = set()
    # A grad an intermediate had before this pass is replaced, a leaf's added to.
    reached = set(roots)
    while heap:
        function = heapq.heappop(heap)[2]
        inputs = function.inputs
        # A speed path: most functions have one output and one input, and
        # building no lists for them makes a chain of tiny ops (forward and
        # backward, bench_overhead.py) about a fifth faster on Python 3.11.
        if len(function.outputs) == 1:
            y = function.outputs[0]()         # a weak reference: None if dropped
            outputs = (y,)
            grad_outputs = (None if y is None else y._grad,)
        else:
            outputs = [ref() for ref in function.outputs]
            grad_outputs = tuple([None if y is None else y._grad for y in outputs])
        in_data = (inputs[0].data,) if len(inputs) == 1 else tuple([x.data for x in inputs])
        grad_inputs = function.backward(in_data, grad_outputs)
        if type(grad_inputs) is not tuple or len(grad_inputs) != len(inputs) or config.debug:
            grad_inputs = _checked_grad_inputs(function, grad_inputs)   # Chapter 23
        for x, gx in zip(inputs, grad_inputs):
            if gx is None or not x.requires_grad:
                continue
            if not isinstance(gx, _array_types):      # NumPy returns 0-dim results as scalars
                gx = _xp(x.data).asarray(gx, dtype=x.data.dtype)
            if gx.shape != x.data.shape or gx.dtype is not x.data.dtype:
                gx = _check_grad_input(function, [v is x for v in inputs].index(True), x, gx)
            if x not in reached and (x._grad is None or x.creator is not None):
                x._grad = gx
            elif x in owned:        # an array of our own: add in place
                x._grad += gx
            else:                   # maybe shared: a new array, ours from now on
                x._grad = _xp(gx).add(x._grad, gx, out=_xp(gx).empty_like(gx))  # 0-dim too
                owned.add(x)
            reached.add(x)
            creator = x.creator
            if creator is not None and creator not in seen:
                seen.add(creator)
                heapq.heappush(heap, (-creator.rank, next(tie), creator))
        if not retain_grad:
            # Each grad is freed once its function has used it (the loss's too, as
            # in Chainer): backward holds no more than a frontier of the graph's grads.
            for y in outputs:
                if y is not None:
                    y._grad = None


# =============================================================================
# Chapter 5. The functions of an MLP
# =============================================================================
# Every operation is a Function subclass with its forward and its backward
# side by side, plus a lower-case helper (`F.relu(x)`) that applies it.  The
# derivative sits next to the formula it differentiates.  This chapter has
# only what a multi-layer perceptron needs; Chapter 9 has the rest.
#
# Broadcasting: NumPy stretches a (3,) array to (2, 3) in `a + b`.  The
# stretched input was *used* twice, so its gradient is the sum of the
# output gradient over the stretched axes: `_sum_to` does that.


# Each public name says, where it is defined, which of Chainer's modules
# hold it: `@_export('functions')` above `def relu` (below) makes it
# onefchainer.functions.relu, as chainer.functions.relu is.  Chapter 24
# builds the modules from these marks.
_exports = collections.defaultdict(dict)   # module path -> {name: object}


def _export(*modules, **objects):
    """Put the decorated definition (or the keyword `objects`) in `modules`."""
    def mark(definition):
        for module in modules:
            _exports[module][definition.__name__] = definition
        return definition
    for module in modules:
        _exports[module].update(objects)
    return mark


def _sum_to(gx, shape):
    """Sum `gx` down to `shape`, undoing NumPy broadcasting."""
    if gx.shape == shape:
        return gx
    lead = gx.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and gx.shape[lead + i] != 1)
    return gx.sum(axis=axes, keepdims=True, dtype=gx.dtype).reshape(shape)   # int32 stays int32
_export('utils.array', sum_to=_sum_to)
_export('utils', sum_to=_sum_to)


def _check_dtypes(label, a, b):
    if a.dtype != b.dtype:
        raise TypeError('{}: dtypes differ: {} and {}; convert one with '
                        '.astype(...)'.format(label, a.dtype, b.dtype))


# ----- arithmetic ------------------------------------------------------------

@_export('functions.math.basic_math')
class Add(Function):
    """Function node of a + b for two arrays of one dtype (broadcasting).
    Backward: each input gets gy summed down to its own shape.
    Chainer: chainer.functions.math.basic_math.Add.
    """
    label = 'add'

    def forward(self, inputs):
        a, b = inputs
        _check_dtypes('add', a, b)
        return a + b,

    def backward(self, inputs, grad_outputs):      # d(a+b)/da = d(a+b)/db = 1
        a, b = inputs
        gy, = grad_outputs
        return _sum_to(gy, a.shape), _sum_to(gy, b.shape)


@_export('functions.math.basic_math')
class Mul(Function):
    """Function node of a * b (elementwise, broadcasting, one dtype).
    Backward: gy * b for a and gy * a for b. Chainer: chainer.functions.math.basic_math.Mul.
    """
    label = 'mul'

    def forward(self, inputs):
        a, b = inputs
        _check_dtypes('mul', a, b)
        return a * b,

    def backward(self, inputs, grad_outputs):      # d(ab)/da = b
        a, b = inputs
        gy, = grad_outputs
        return _sum_to(gy * b, a.shape), _sum_to(gy * a, b.shape)


# With Add and Mul, `x + y` and `x * y` on Variables can record themselves.
# (Numbers as operands, `x * 2`, and the other operators come in Chapter 9.)
Variable.__add__ = Variable.__radd__ = lambda self, other: Add()(self, other)
Variable.__mul__ = Variable.__rmul__ = lambda self, other: Mul()(self, other)


# ----- linear ------------------------------------------------------------------
# y = x W^T + b, with W of shape (out_size, in_size) as in Chainer.  Inputs
# with more than two axes (images) are flattened after the batch axis.

@_export('functions.connection.linear')
class LinearFunction(Function):
    """Function node of y = x W^T (+ b). Backward: gx = gy W (skipped when x needs
    no gradient), gW = gy^T x, gb = sum(gy, axis=0).
    Chainer: chainer.functions.connection.linear.LinearFunction.
    """
    label = 'linear'
    input_names = ('x', 'W', 'b')      # for error messages

    def forward(self, inputs):
        x, W = inputs[0], inputs[1]
        b = inputs[2] if len(inputs) == 3 else None
        if x.ndim > 2:
            x = x.reshape(len(x), math.prod(x.shape[1:]))
        if x.ndim != 2 or W.ndim != 2:
            raise ValueError('linear: x must have 2 or more dimensions and W 2, got '
                             'x.shape {} and W.shape {}'.format(inputs[0].shape, W.shape))
        if x.shape[1] != W.shape[1]:
            raise ValueError('linear: x.shape[1] ({}) != W.shape[1] ({}) (x.shape '
                             '{}, W.shape {})'.format(x.shape[1], W.shape[1],
                                                      inputs[0].shape, W.shape))
        if x.dtype != W.dtype:          # Chainer v7 mixes float dtypes: Chapter 23
            W = _in_dtype_of(self, x, W)
        _require_float('linear', W)
        y = x @ W.T            # matmul: a little faster than dot on transposed operands
        if b is not None:
            if b.shape != (W.shape[0],):
                raise ValueError('linear: b.shape {} != (W.shape[0],) = ({},)'
                                 .format(b.shape, W.shape[0]))
            if b.dtype != x.dtype:      # as in Chainer v7, which mixes W's dtype only
                raise TypeError('linear: b.dtype {} != x.dtype {}'.format(b.dtype, x.dtype))
            y += b         # in place: y is our own fresh array
        return y,

    def backward(self, inputs, grad_outputs):      # dx = dy W, dW = dy^T x, db = sum(dy)
        x, W = inputs[0], inputs[1]
        gy, = grad_outputs
        x2 = x.reshape(len(x), math.prod(x.shape[1:])) if x.ndim > 2 else x
        # A data batch needs no gradient: skipping it saves the first layer's
        # biggest matrix product (a tenth of an MNIST training step).
        gx = (gy @ W).reshape(x.shape) if self.inputs[0].requires_grad else None
        gW = gy.T @ x2
        if len(inputs) == 3:
            return gx, gW, gy.sum(axis=0)
        return gx, gW


@_export('functions', 'functions.connection.linear')
def linear(x, W, b=None, n_batch_axes=1):
    """Fully connected layer y = x W^T + b.

    x: float (N, in_size), or (N, ...) flattened; W: (out_size, in_size) of any
    float dtype (as in Chainer v7: used in x's dtype, gW in W's); b: (out_size,)
    of x's dtype or None (default). n_batch_axes must be 1 (else NotImplementedError).
    Returns a Variable (N, out_size) of x's dtype. Raises ValueError for shapes
    that do not fit, TypeError for b of another dtype. Chainer: chainer.functions.linear.
    """
    if n_batch_axes != 1:
        raise NotImplementedError('linear: only n_batch_axes=1 is supported')
    if b is None:
        return LinearFunction()(x, W)
    return LinearFunction()(x, W, b)


# ----- activations ---------------------------------------------------------------

@_export('functions.activation.relu')
class ReLU(Function):
    """Function node of y = max(x, 0); backward gy where y > 0, else 0.
    Chainer: chainer.functions.activation.relu.ReLU.
    """
    label = 'relu'

    def forward(self, inputs):
        x, = inputs
        # maximum, not x * (x > 0): that is a little faster but makes
        # relu(-inf) NaN (-inf * 0) instead of 0.
        self.y = _xp(x).maximum(x, x.dtype.type(0))
        return self.y,

    def backward(self, inputs, grad_outputs):      # 1 where x > 0, else 0
        return grad_outputs[0] * (self.y > 0),

    # Continued in Chapter 22 (backward, grad_kernel).


@_export('functions', 'functions.activation.relu')
def relu(x):
    """Rectified linear unit max(x, 0), elementwise, of a float Variable or array.
    Returns a Variable of the same shape and dtype. Chainer: chainer.functions.relu.
    """
    return ReLU()(x)


# ----- losses and metrics --------------------------------------------------------
# Softmax cross entropy of scores x (N, C) and labels t (N,):
#
#     loss = -1/N sum_n log softmax(x_n)[t_n]
#     dloss/dx_n = (softmax(x_n) - onehot(t_n)) / N
#
# Fusing the two steps gives that short gradient and avoids ever taking the
# log of a softmax that rounded to zero.

@_export('functions.loss.softmax_cross_entropy')
class SoftmaxCrossEntropy(Function):
    """Function node of softmax cross entropy: the loss -log softmax(x)[t] per
    row, averaged (reduce='mean') or not (reduce='no'). Backward
    (softmax(x) - onehot(t)) * weight / count.
    Chainer: chainer.functions.loss.softmax_cross_entropy.SoftmaxCrossEntropy.
    """
    label = 'softmax_cross_entropy'
    input_names = ('x', 't')

    def __init__(self, normalize=True, ignore_label=-1, reduce='mean',
                 class_weight=None):
        self.normalize = normalize
        self.ignore_label = ignore_label
        self.reduce = reduce
        self.class_weight = class_weight

    def _check_labels(self, t, n_class):
        """(valid, t with ignored labels replaced by 0); a label outside
        [0, n_class) that is not ignore_label raises ValueError."""
        bad = ((t < 0) | (t >= n_class)) & (t != self.ignore_label)
        if bad.any():       # on a GPU this would wait for the device: Chapter 22 defers it
            index = tuple(int(i[0]) for i in _xp(t).nonzero(bad))
            raise ValueError(
                '{}: labels must be in [0, {}) or equal ignore_label ({}); t{} is {}'
                .format(self.label, n_class, self.ignore_label, list(index), int(t[index])))
        valid = t != self.ignore_label
        return valid, _xp(t).where(valid, t, 0)      # ignored rows pick class 0, masked below

    def forward(self, inputs):
        x, t = inputs
        self._check(x, t)                  # shapes and dtypes: Chapter 23
        self.valid, safe_t = self._check_labels(t, x.shape[1])
        loss = self._losses(x, safe_t)
        if self.reduce == 'no':
            return loss.astype(x.dtype, copy=False),
        count = self.valid.sum() if self.normalize else len(x)
        self.coeff = 1.0 / max(int(count), 1)
        return _xp(x).asarray(loss.sum(dtype=_accumulator(x.dtype)) * self.coeff, dtype=x.dtype),

    def _losses(self, x, safe_t):
        """-log softmax(x)[t] per row (times class_weight[t]); keeps softmax(x) for backward."""
        xp = _xp(x)
        shifted = x - x.max(axis=1, keepdims=True)
        e = xp.exp(shifted)
        s = e.sum(axis=1, keepdims=True)
        self.t = safe_t[:, None]
        # log softmax at the true class only: shifted[t] - log(sum e)
        log_p = (xp.take_along_axis(shifted, self.t, axis=1) - xp.log(s))[:, 0]
        self.y = e / s         # softmax, reused by backward
        loss = -log_p * self.valid
        if self.class_weight is not None:
            class_weight = _device_of(x).send(self.class_weight)   # a host array: Chapter 21
            self.weight = class_weight[self.t[:, 0]] * self.valid
            loss *= self.weight
        return loss

    def backward(self, inputs, grad_outputs):      # (softmax - onehot) * weight
        x, t = inputs
        gy, = grad_outputs
        xp = _xp(x)
        gx = self.y.copy()
        classes = xp.arange(x.shape[1]).reshape((1, -1) + (1,) * (x.ndim - 2))
        gx -= classes == self.t       # minus the one-hot of t
        w = self.valid if self.class_weight is None else self.weight
        w = w.astype(x.dtype, copy=False)[:, None]
        if self.reduce == 'no':
            gx *= w * gy[:, None]
        else:
            gx *= w * (gy * self.coeff)
        return gx, None

    # Continued in Chapter 22 (forward, _coefficient_later); Chapter 23 (_check).


@_export('functions', 'functions.loss.softmax_cross_entropy')
def softmax_cross_entropy(x, t, normalize=True, cache_score=True,
                          class_weight=None, ignore_label=-1, reduce='mean',
                          enable_double_backprop=False,
                          soft_target_loss='cross-entropy'):
    """Cross entropy of softmax(x) against integer labels t.

        loss_n = -log softmax(x_n)[t_n]  (times class_weight[t_n] if given)

    x: float scores (N, C) or (N, C, d1, ...); t: integer labels (N,) or
    (N, d1, ...), each in [0, C) or equal to ignore_label (default -1, such
    rows count 0). reduce='mean' (default) returns the scalar sum of losses
    divided by the number of non-ignored labels (normalize=True, default) or by
    N (normalize=False); reduce='no' returns the per-example losses, of t's
    shape. class_weight: (C,) array or None. cache_score,
    enable_double_backprop and soft_target_loss are accepted for Chainer's
    signature and have no effect. Raises TypeError for non-float x or
    non-integer t, ValueError for mismatched shapes or an unknown reduce, and
    ValueError for a label outside [0, C) that is not ignore_label (on a GPU
    at the next read of a value: Chapter 22). Chainer: F.softmax_cross_entropy.
    """
    if reduce not in ('mean', 'no'):
        raise ValueError("softmax_cross_entropy: reduce must be 'mean' or 'no', "
                         "got {!r}".format(reduce))
    return SoftmaxCrossEntropy(normalize, ignore_label, reduce, class_weight)(x, t)


# =============================================================================
# Chapter 6. Links
# =============================================================================
# A *Parameter* is a Variable that a model owns and an optimizer updates.  Its
# starting values come from an *initializer*, which fills an array in place.
# The scale matters: with fan_in inputs per unit, weights of standard
# deviation 1/sqrt(fan_in) (LeCun) keep activations from growing or shrinking
# layer after layer.  (The initializers themselves are in Chapter 10.)
#
# A *Link* owns parameters (Linear owns W and b); a *Chain* owns links, so a
# whole model is a tree whose paths name every parameter ('/l1/W').  That
# tree is what optimizers walk and what serializers save.


@_export('variable')
class Parameter(Variable):
    """A Variable owned by a link.  It may start *uninitialized* (data None)
    when its shape is only known at the first forward pass.
    Chainer: chainer.Parameter.
    """

    def __init__(self, initializer=None, shape=None, name=None):
        if isinstance(initializer, _array_types):
            super().__init__(initializer, name=name)
            self.initializer = Constant(initializer)     # initializers: Chapter 10
        else:
            super().__init__(None, name=name)
            self.initializer = _get_initializer(initializer, NaN())
            if shape is not None:
                self.initialize(shape)
        self.update_rule = None

    @property
    def is_initialized(self):
        """True once the parameter has data (a lazily shaped one has None
        until its first initialize). Chainer: chainer.Parameter.is_initialized.
        """
        return self.data is not None

    def initialize(self, shape, xp=np):
        """Create the data: a new array of `shape` (int or tuple) on `xp`
        (default numpy) filled by the parameter's initializer; clears the gradient
        (zeros if zerograd came first: Chapter 23). Chainer: Parameter.initialize.
        """
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        self.data = generate_array(self.initializer, shape, xp)
        self._grad = xp.zeros_like(self.data) if self.__dict__.pop('_zeros_asked', 0) else None

    # Continued in Chapter 21 (to_device); Chapter 23 (zerograd, cleargrad, update).


@_export('link')
class Link:
    """An object that owns parameters (and, in a Chain, other links).

    Assign parameters inside `with self.init_scope():` so the link registers
    them:   with self.init_scope(): self.W = Parameter(...)
    Calling a link calls its `forward`.
    Chainer: chainer.Link.
    """

    def __init__(self, **params):
        # object.__setattr__: our __setattr__ below reads _within_init_scope,
        # which does not exist yet.
        object.__setattr__(self, '_params', [])
        object.__setattr__(self, '_persistent', [])
        object.__setattr__(self, '_within_init_scope', False)
        self.name = None
        for name, shape in params.items():   # Chainer's old Link(W=(3, 2)) form
            self.add_param(name, *_shape_and_dtype(shape))    # Chapter 10

    @contextlib.contextmanager
    def init_scope(self):
        """Context manager: Parameters (and, in a Chain, Links) assigned as
        attributes inside it are registered with this link and named after the
        attribute. Chainer: chainer.Link.init_scope.
        """
        old = self._within_init_scope
        object.__setattr__(self, '_within_init_scope', True)
        try:
            yield
        finally:
            object.__setattr__(self, '_within_init_scope', old)

    def __setattr__(self, name, value):
        if self._within_init_scope and isinstance(value, Parameter):
            value.name = name
            if name not in self._params:
                self._params.append(name)
        object.__setattr__(self, name, value)

    def params(self, include_uninit=True):
        """Iterate over the Parameters of this link and of all its descendants
        (include_uninit default True: also those without data).
        Chainer: chainer.Link.params.
        """
        for _, param in self.namedparams(include_uninit):
            yield param

    def namedparams(self, include_uninit=True):
        """Iterate over (path, Parameter) pairs, paths like '/l1/W', sorted by name
        within each link; include_uninit as in params. Chainer: chainer.Link.namedparams.
        """
        # Sorted by name, as in Chainer: the order then does not depend on the
        # order of assignment in __init__.
        for name in sorted(self._params):
            param = self.__dict__[name]
            if include_uninit or param.data is not None:
                yield '/' + name, param

    def cleargrads(self):
        """Set the gradient of every parameter to None (the next backward then
        writes instead of adding). Chainer: chainer.Link.cleargrads.
        """
        for param in self.params():
            param.cleargrad()

    def __call__(self, *args, **kwargs):
        """Run forward(*args, **kwargs) and return its result. Chainer: chainer.Link.__call__."""
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        """The link's computation, defined by subclasses. Chainer: Link.forward."""
        raise NotImplementedError('{}.forward is not implemented'.format(
            type(self).__name__))

    # Continued in Chapter 10 (links, namedlinks, children, within_init_scope,
    # ...); Chapter 14 (serialize); Chapter 21 (device, xp, to_device, to_cpu,
    # ...); Chapter 24 (addgrads).
_export('device_resident', DeviceResident=Link)


@_export('link')
class Chain(Link):
    """A link made of named child links:

        with self.init_scope(): self.l1 = L.Linear(784, 100)
    or, Chainer's older style,  super().__init__(l1=L.Linear(784, 100))
    """

    def __init__(self, **links):
        super().__init__()
        object.__setattr__(self, '_children', [])
        for name, link in links.items():     # Chainer's older style (Chapter 10)
            self.add_link(name, link)

    def __setattr__(self, name, value):
        if self._within_init_scope and isinstance(value, Link):
            if name in self._params or name in self._persistent:
                raise AttributeError('{} is already a parameter of this chain'.format(name))
            value.name = name
            if name not in self._children:
                self._children.append(name)
        super().__setattr__(name, value)

    def namedparams(self, include_uninit=True):
        yield from super().namedparams(include_uninit)
        for name in sorted(self._children):
            for path, param in self.__dict__[name].namedparams(include_uninit):
                yield '/' + name + path, param

    # Continued in Chapter 10 (children, namedlinks, __delattr__, __getitem__,
    # ...); Chapter 14 (serialize).


@_export('links', 'links.connection.linear')
class Linear(Link):
    """Fully connected layer: y = x W^T + b.

    Linear(in_size, out_size), or Linear(out_size) / Linear(None, out_size) to
    take in_size from the first input. Parameters: W of shape (out_size,
    in_size) and b of shape (out_size,). nobias (default False): no b.
    initialW: initializer, scalar or array for W (default LeCunNormal());
    initial_bias: the same for b (default 0). Calling it: x of shape (N,
    in_size) (or (N, ...), flattened) -> (N, out_size).
    Chainer: chainer.links.Linear.
    """

    def __init__(self, in_size, out_size=None, nobias=False, initialW=None,
                 initial_bias=None):
        super().__init__()
        if out_size is None:
            in_size, out_size = None, in_size
        self.in_size, self.out_size = in_size, out_size
        with self.init_scope():
            self.W = Parameter(_get_initializer(initialW, LeCunNormal()))
            if in_size is not None:
                self.W.initialize((out_size, in_size))
            self.b = None if nobias else Parameter(
                _get_initializer(initial_bias, Zero()), out_size)

    def forward(self, x, n_batch_axes=1):
        """linear(x, W, b); a lazily sized W takes in_size from the first x.
        n_batch_axes must be 1. Chainer: chainer.links.Linear.forward."""
        if self.W.data is None:
            data = _check_first_input('Linear', x)      # its array: Chapter 23
            self.W.initialize((self.out_size, int(np.prod(data.shape[1:]))), _xp(data))
        return linear(x, self.W, self.b, n_batch_axes)


# =============================================================================
# Chapter 7. Optimizers
# =============================================================================
# After backward, every parameter p holds dL/dp in p.grad.  An optimizer
# turns that into a step.  Plain SGD:   p <- p - lr * grad.
# Adam keeps running averages of the gradient (m) and of its square (v) and
# steps by m / sqrt(v): large where the gradient is consistent, small where it
# is noise.  Both averages start at 0, so early on they are biased toward 0;
# the step size lr = alpha * sqrt(1 - beta2^t) / (1 - beta1^t) corrects that.
#
#     m <- m + (1 - beta1) (grad - m)
#     v <- v + (1 - beta2) (grad^2 - v)
#     p <- p - eta (lr m / (sqrt(v) + eps) + weight_decay_rate p)
#
# As in Chainer, each parameter gets an *update rule* holding its own state
# (m, v, ...) and reading hyperparameters from the optimizer, so setting
# `optimizer.lr = 0.1` reaches every rule.


@_export('optimizer')
class Hyperparameter:
    """Hyperparameters (lr, beta1, ...) that fall back to the parent's, so a
    rule reads the optimizer's values unless it sets its own.
    Chainer: chainer.optimizer.Hyperparameter."""

    def __init__(self, parent=None):
        object.__setattr__(self, '_parent', parent)

    def __getattr__(self, name):            # only called when `name` is not set here
        if name == '_parent':   # copy/pickle build the object without __init__:
            raise AttributeError(name)      # without this, self._parent recurses forever
        if self._parent is None:
            raise AttributeError('hyperparameter {!r} is not defined'.format(name))
        return getattr(self._parent, name)

    # Continued in Chapter 13 (get_dict).


class _HyperparameterProxy:
    """`optimizer.lr` reads and writes `optimizer.hyperparam.lr`.

    A descriptor: a class attribute whose __get__/__set__ Python calls when
    the attribute is read or written on an instance.
    """

    def __init__(self, name):
        self.name = name

    def __get__(self, optimizer, owner=None):
        return self if optimizer is None else getattr(optimizer.hyperparam, self.name)

    def __set__(self, optimizer, value):
        setattr(optimizer.hyperparam, self.name, value)
_export('optimizer', HyperparameterProxy=_HyperparameterProxy)


@_export('optimizer')
class UpdateRule:
    """How one parameter is updated.

    `hyperparam` reads the optimizer's values unless set here; `state` (None
    until the first update) holds the rule's arrays (e.g. m, v); `t` counts
    this rule's updates; `enabled` False skips them.  Subclasses write
    init_state(param), which fills self.state, and update_core(param), which
    changes param.data in place from param.grad.  Chainer: chainer.UpdateRule.
    """

    _state_from_file = False     # True after a load put host arrays in state: Chapter 14

    def __init__(self, parent_hyperparam=None):
        self.hyperparam = Hyperparameter(parent_hyperparam)
        self.state = None
        self.enabled = True
        self.t = 0                # updates so far (Adam's bias correction needs it)
        self._hooks = collections.OrderedDict()

    def update(self, param):
        """Update `param` from its gradient (count t, make the state, hooks,
        update_core); nothing if disabled or grad is None. Chainer: UpdateRule.update."""
        if not self.enabled or param.grad is None:
            return             # nothing to learn from: leave param and state alone
        self.t += 1
        if self.state is None:   # the first update: make the state beside param
            self.state = {}
            self.init_state(param)
        elif self._state_from_file:
            self._move_loaded_state(param)      # Chapter 14
        for hook, timing in self._hooks.values():      # hooks: Chapter 13
            if timing == 'pre':
                hook(self, param)
        self.update_core(param)
        for hook, timing in self._hooks.values():
            if timing == 'post':
                hook(self, param)

    def init_state(self, param):
        """Create the rule's state arrays in self.state (a dict), shaped like
        param.data; the base rule has none. Chainer: chainer.UpdateRule.init_state.
        """

    # Continued in Chapter 13 (__init__, update_core, update_core_gpu, add_hook, ...);
    # Chapter 14 (serialize).


@_export('optimizer')
class Optimizer:
    """Updates the parameters of its target link:

        optimizer = optimizers.Adam().setup(model)
        optimizer.update(lossfun, x, t)    # lossfun(x, t), cleargrads, backward, update

    `t` counts updates, `epoch` epochs; hyperparameters live in `hyperparam`
    and are also attributes (optimizer.lr = 0.1 reaches every rule).
    Chainer: chainer.Optimizer (and chainer.GradientMethod).
    """

    target = None
    t = 0
    epoch = 0
    update_rule_class = None      # each optimizer's rule, made per parameter by setup

    def __init__(self, **hyperparams):
        self.hyperparam = Hyperparameter()
        for name, value in hyperparams.items():
            setattr(self.hyperparam, name, value)
        self._hooks = collections.OrderedDict()

    def setup(self, link):
        """Make `link` (a Link) the target and give each of its parameters a new
        update rule; resets t and epoch. Returns self. Raises TypeError for a
        non-Link. Chainer: chainer.Optimizer.setup.
        """
        if not isinstance(link, Link):
            raise TypeError('{}.setup: expected a Link, got {}'.format(
                type(self).__name__, type(link).__name__))
        self.target = link
        self.t = 0
        self.epoch = 0
        for param in link.params():
            param.update_rule = self.create_update_rule()
        if next(link.params(), None) is None:
            _warn_no_params(self, link)       # Chapter 23
        return self

    def create_update_rule(self):
        """A new UpdateRule for one parameter: update_rule_class(hyperparam), or
        an override. Chainer: chainer.GradientMethod.create_update_rule.
        """
        if self.update_rule_class is None:
            raise NotImplementedError('{} names no update_rule_class'.format(type(self).__name__))
        return self.update_rule_class(self.hyperparam)

    def update(self, lossfun=None, *args, **kwds):
        """Update once.  With `lossfun`, first compute the loss from `args`,
        clear the old gradients and run backward.
        Chainer: chainer.Optimizer.update.
        """
        self._check_setup()       # setup() must come first: Chapter 23
        if lossfun is not None:
            loss = lossfun(*args, **kwds)
            self.target.cleargrads()
            loss.backward()
            del loss             # the graph can go before the update runs
        params = list(self.target.params(include_uninit=False))
        for param in params:
            if param.update_rule is None:   # added after setup(); hooks need its rule too
                param.update_rule = self.create_update_rule()
            if param.grad is None:    # unused by this loss: as in Chainer, still decays
                param.grad = _xp(param.data).zeros_like(param.data)
        self.call_hooks('pre')
        self.t += 1
        for param in params:
            param.update_rule.update(param)
        self.call_hooks('post')

    # Continued in Chapter 13 (use_auto_new_epoch, new_epoch, add_hook,
    # remove_hook, ...); Chapter 14 (serialize); Chapter 23 (_check_setup, update,
    # set_loss_scale); Chapter 24 (use_cleargrads).
_export('optimizer', GradientMethod=Optimizer)


@_export('optimizers.sgd')
class SGDRule(UpdateRule):
    """Update rule of SGD: p -= lr * grad. Chainer: chainer.optimizers.sgd.SGDRule."""
    def update_core(self, param):                  # p -= lr * grad
        param.data -= self.hyperparam.lr * param.grad

    # Continued in Chapter 22 (update_core, update_core_gpu, gpu_kernel).


@_export('optimizers', 'optimizers.sgd')
class SGD(Optimizer):
    """Stochastic gradient descent: p -= lr * grad for every parameter.
    lr: learning rate, default 0.01. Chainer: chainer.optimizers.SGD."""
    lr = _HyperparameterProxy('lr')
    update_rule_class = SGDRule

    def __init__(self, lr=0.01):
        super().__init__(lr=lr)


@_export('optimizers.adam')
class AdamRule(UpdateRule):
    """Adam's rule for one parameter: state m, v (vhat with amsgrad)."""

    def init_state(self, param):
        xp = _xp(param.data)
        self.state['m'] = xp.zeros_like(param.data)
        self.state['v'] = xp.zeros_like(param.data)
        if self.hyperparam.amsgrad:
            self.state['vhat'] = xp.zeros_like(param.data)

    def update_core(self, param):
        hp = self.hyperparam
        # Read each hyperparameter once: every read walks to the optimizer.
        beta1, beta2, t = hp.beta1, hp.beta2, self.t
        lr = hp.alpha * math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
        constants = (1.0 - beta1, 1.0 - beta2, hp.eps, lr, hp.eta, hp.weight_decay_rate)
        bounds = self.bounds if hp.adabound else None     # AdaBound's clipping: Chapter 13
        self._step(param, constants, bounds)     # Chapter 22: faster; float16 in float32

    def _step(self, param, constants, bounds=None):    # _adam_step (below) on param's arrays
        data, state = param.data, self.state
        _adam_step(_xp(data), _xp(data).empty_like(data), data, param.grad, state['m'],
                   state['v'], state.get('vhat'), constants, bounds)

    # Continued in Chapter 13 (__init__, alpha_t, bounds); Chapter 22 (update_core, _step).


def _adam_step(xp, step, data, grad, m, v, vhat=None, constants=(), bounds=None):
    """One Adam update of `data` in place, the formulas above in Chainer's operation order;
    `step`: scratch memory of data's shape.  Each line writes into an array: no allocation."""
    one_minus_beta1, one_minus_beta2, eps, lr, eta, weight_decay_rate = constants
    xp.subtract(grad, m, out=step)
    step *= one_minus_beta1
    m += step                                  # m += (1 - beta1)(g - m)
    xp.multiply(grad, grad, out=step)
    step -= v
    step *= one_minus_beta2
    v += step                                  # v += (1 - beta2)(g^2 - v)
    if vhat is not None:                       # AMSGrad: use the largest v seen so far
        v = xp.maximum(vhat, v, out=vhat)
    xp.sqrt(v, out=step)
    step += eps
    xp.divide(lr, step, out=step)
    if bounds:                                 # AdaBound: clip into (lower, upper)
        xp.clip(step, *bounds, out=step)
    step *= m                                  # lr m / (sqrt(v) + eps)
    if eta != 1.0:
        step *= eta
    if weight_decay_rate != 0:
        data *= 1.0 - eta * weight_decay_rate  # p -= eta weight_decay_rate p
    data -= step


@_export('optimizers', 'optimizers.adam')
class Adam(Optimizer):
    """Adam, by the formulas that open this chapter; amsgrad uses the running
    maximum of v, adabound (final_lr, gamma) clips the steps (AdaBound, Chapter 13).
    Defaults: alpha 0.001, beta1 0.9, beta2 0.999, eps 1e-8, eta 1.0, weight_decay_rate 0,
    amsgrad False, adabound False, final_lr 0.1, gamma 1e-3. Chainer: chainer.optimizers.Adam."""
    alpha = _HyperparameterProxy('alpha')
    beta1 = _HyperparameterProxy('beta1')
    beta2 = _HyperparameterProxy('beta2')
    eps = _HyperparameterProxy('eps')
    eta = _HyperparameterProxy('eta')
    weight_decay_rate = _HyperparameterProxy('weight_decay_rate')
    amsgrad = _HyperparameterProxy('amsgrad')
    update_rule_class = AdamRule

    def __init__(self, alpha=0.001, beta1=0.9, beta2=0.999, eps=1e-8, eta=1.0,
                 weight_decay_rate=0, amsgrad=False, adabound=False, final_lr=0.1, gamma=1e-3):
        super().__init__(alpha=alpha, beta1=beta1, beta2=beta2, eps=eps, eta=eta,
                         weight_decay_rate=weight_decay_rate, amsgrad=amsgrad,
                         adabound=adabound, final_lr=final_lr, gamma=gamma)

    # Continued in Chapter 13 (alpha_t, lr, adabound).


# =============================================================================
# Chapter 8. Training
# =============================================================================
# Training repeats four steps: take a batch, compute the loss, backprop,
# update.  This program (tested as it stands) reaches about 97 % on MNIST
# in five epochs; train_mnist.py does it with the Trainer of Chapter 20.
#
#     import numpy as np
#     import onefchainer as chainer
#     import onefchainer.functions as F
#     import onefchainer.links as L
#
#     class MLP(chainer.Chain):
#         def __init__(self):
#             super().__init__()
#             with self.init_scope():
#                 self.l1 = L.Linear(784, 100)
#                 self.l2 = L.Linear(100, 10)
#
#         def forward(self, x):
#             return self.l2(F.relu(self.l1(x)))
#
#     train, test = chainer.datasets.get_mnist()   # datasets of (image, label): Ch. 19
#     model = MLP()
#     optimizer = chainer.optimizers.Adam().setup(model)
#     for epoch in range(5):
#         order = np.random.permutation(len(train))
#         for i in range(0, len(order), 100):
#             x, t = train[order[i:i + 100]]     # images (100, 784), labels (100,)
#             loss = F.softmax_cross_entropy(model(x), t)
#             model.cleargrads()
#             loss.backward()
#             optimizer.update()
#         with chainer.using_config('train', False), chainer.no_backprop_mode():
#             x, t = test[np.arange(len(test))]
#             print(epoch + 1, F.accuracy(model(x), t).data)


# =============================================================================
# END OF PART I.  You have seen every idea; what follows is more of the same
# kind (Part II) and the plumbing of a real framework (Part III).


# =============================================================================


# #############################################################################
# PART II. THE LIBRARY
# #############################################################################
# From here on, some chapters add methods to classes of Part I.  They write
#
#     @_continue_class(Link)
#     class _LinkTreeAndCopies:
#         def copy(self, mode='share'): ...
#
# which reads "class Link, continued": the methods are added to the class
# defined earlier, exactly as if they had been written there.  The body's
# name only says what it adds.

def _continue_class(cls):
    """Class decorator: add the members of the decorated class body to `cls`.

    The body's own name is only a label (_LinkDevices: Link's device
    methods); it ends up bound to `cls` itself.  A zero-argument super() in
    the added methods refers to `cls`.
    """
    def add_members(body):
        for name, member in vars(body).items():
            if name in ('__module__', '__qualname__', '__dict__', '__weakref__',
                        '__doc__', '__firstlineno__', '__static_attributes__'):
                continue
            for function in (member, getattr(member, 'fget', None),
                             getattr(member, 'fset', None)):
                code = getattr(function, '__code__', None)
                if code is not None and '__class__' in code.co_freevars:
                    function.__closure__[code.co_freevars.index('__class__')] \
                        .cell_contents = cls      # super() means cls, not body
            setattr(cls, name, member)
        return cls
    return add_members


# =============================================================================
# Chapter 9. More functions
# =============================================================================
# The rest of Chainer's functions, each again a Function with its forward and
# backward side by side.  First, numbers as operands: `x * 2` could wrap 2 in
# an array and use Mul, but a constant needs no gradient, so one-input
# Functions (MulConstant) keep it as a plain number.  That skips an array and
# a reduction in backward, and NumPy then keeps x's dtype (float32 * 2.0 is
# float32).  Then the operators of Variable are rebound to the F functions.
#
# F.sum, F.max, F.min and F.pow have the names of Python builtins, and
# F.copy that of the stdlib module copy: here they are written _sum, _max,
# _min, _pow and _copy, so that everywhere in this file sum, max, min, pow
# and copy are Python's own; their marks file them under F's names.
#
# Sections, in order: operators on Variables; elementwise math (exp, log,
# trigonometric, clip, maximum, ...); special functions (erf, lgamma, ...);
# reductions; shapes (reshape, transpose, concat, get_item, flips, tiles,
# split_axis, pad, tensordot, einsum, ...); linear algebra (det, inv,
# cholesky); activations; softmax; dropout; losses; more losses and metrics;
# composites; broadcast products, maxout, bilinear; embeddings.


def _check_same_dtype(label, arrays):
    if len({a.dtype for a in arrays}) > 1:
        raise TypeError('{}: dtypes differ: {}; convert with .astype(...)'.format(
            label, [str(a.dtype) for a in arrays]))


def _scalar_constant(value, like):
    """`value` as a constant to combine with `like`, or None if it is no scalar.

    Python scalars stay as they are: NumPy 2 then keeps the array's dtype
    (float32 * 2.0 is float32; for NumPy 1.x see below).  A NumPy scalar
    (np.float64(2)) would promote float32 data to float64 under NumPy 2's
    rules, so it is cast to the array's dtype, as Chainer does, except a
    float for integer data (_truncates).
    """
    kind = type(value)
    if kind is float or kind is int:   # the common case, decided without isinstance
        if _PYTHON_SCALARS_ARE_WEAK:
            return value
        return _numpy1_scalar(value, like)
    if not isinstance(value, np.number):
        return None                    # bool and everything else: not a constant
    dtype = getattr(like.data if isinstance(like, Variable) else like, 'dtype', None)
    if dtype is None or _truncates(dtype, value.dtype):
        return value
    return dtype.type(value)


# Integer data meeting a float: the one rule, whatever form the float takes
# (a Python float, a NumPy scalar, an array).  Casting the float to the data's
# dtype would truncate it silently (int32 * numpy.float32(1.5) is * 1); so
# it is never cast, and the operation refuses it: a constant's op sees its
# result change dtype (AddConstant.forward), an array constant is refused by
# _cast_array_constant, and two Variables of different dtypes by the op.
def _truncates(dtype, constant_dtype):
    return dtype.kind in 'biu' and constant_dtype.kind in 'fc'


# NumPy 2 (NEP 50) lets a Python scalar take the array's dtype.  NumPy 1.x
# does too, except for a 0-dim array: there float32 * 2.0 is float64.
_PYTHON_SCALARS_ARE_WEAK = int(np.__version__.split('.')[0]) >= 2


def _numpy1_scalar(value, like):
    """A Python scalar cast to `like`'s dtype, as NumPy 2 would use it (NumPy 1.x
    only).  A float with integer data is left alone: the op refuses it."""
    dtype = getattr(like.data if isinstance(like, Variable) else like, 'dtype', None)
    if dtype is None or (type(value) is float and _truncates(dtype, np.dtype(float))):
        return value
    return dtype.type(value)


def _arithmetic(lhs, rhs, binary, constant_rhs, constant_lhs):
    """`lhs op rhs` as a Function: binary()(lhs, rhs) for two arrays, or, when
    one side is a scalar, a one-input Function that keeps it as a constant
    (a scalar has no gradient, so it needs no place in the graph):
    constant_rhs(c)(lhs) for `x op c` and constant_lhs(c)(rhs) for `c op x`."""
    constant = _scalar_constant(rhs, lhs)
    if constant is not None:
        return constant_rhs(constant)(lhs)
    constant = _scalar_constant(lhs, rhs)
    if constant is not None:
        return constant_lhs(constant)(rhs)
    if not (isinstance(lhs, Variable) and isinstance(rhs, Variable)):
        lhs, rhs = _cast_array_constant(lhs, rhs, binary.label)
    return binary()(lhs, rhs)


def _cast_array_constant(lhs, rhs, label):
    """An array constant takes the dtype of the Variable it meets, as in
    Chainer: float32 x + numpy.ones(2) (float64) is float32, except a float
    array for an integer Variable, which raises TypeError (_truncates).  Two
    Variables of different dtypes are not touched: the op names both dtypes."""
    if isinstance(lhs, Variable) and isinstance(rhs, _array_types):
        variable, constant = lhs, rhs
    elif isinstance(rhs, Variable) and isinstance(lhs, _array_types):
        variable, constant = rhs, lhs
    else:
        return lhs, rhs
    data = variable.data
    if data is None or constant.dtype == data.dtype:
        return lhs, rhs
    if _truncates(data.dtype, constant.dtype):
        _require_float(label, data)
    constant = constant.astype(data.dtype)
    return (variable, constant) if variable is lhs else (constant, variable)


@_export('functions.math.basic_math')
class AddConstant(Function):
    """Function node of x + c for a scalar constant c (no gradient for c).
    Chainer: chainer.functions.math.basic_math.AddConstant.
    """
    label = 'add'

    def __init__(self, constant):
        self.constant = constant

    def forward(self, inputs):
        y = inputs[0] + self.constant
        if y.dtype is not inputs[0].dtype:     # an int array and a float constant
            _require_float(self.label, inputs[0])
        return y,

    def backward(self, inputs, grad_outputs):
        return grad_outputs


@_export('functions.math.basic_math')
class Sub(Function):
    """Function node of a - b for two arrays of one dtype (broadcasting).
    Backward: gy for a, -gy for b, each summed down to its shape.
    Chainer: chainer.functions.math.basic_math.Sub.
    """
    label = 'sub'

    def forward(self, inputs):
        a, b = inputs
        _check_dtypes('sub', a, b)
        return a - b,

    def backward(self, inputs, grad_outputs):      # d(a-b)/db = -1
        a, b = inputs
        gy, = grad_outputs
        return _sum_to(gy, a.shape), _sum_to(-gy, b.shape)


@_export('functions.math.basic_math')
class SubFromConstant(Function):
    """Function node of c - x for a scalar constant c; backward -gy.
    Chainer: chainer.functions.math.basic_math.SubFromConstant.
    """
    label = 'sub'

    def __init__(self, constant):
        self.constant = constant

    def forward(self, inputs):
        y = self.constant - inputs[0]
        if y.dtype is not inputs[0].dtype:     # an int array and a float constant
            _require_float(self.label, inputs[0])
        return y,

    def backward(self, inputs, grad_outputs):
        return -grad_outputs[0],


@_export('functions.math.basic_math')
class MulConstant(Function):
    """Function node of x * c for a scalar constant c; backward gy * c.
    Chainer: chainer.functions.math.basic_math.MulConstant.
    """
    label = 'mul'

    def __init__(self, constant):
        self.constant = constant

    def forward(self, inputs):
        y = inputs[0] * self.constant
        if y.dtype is not inputs[0].dtype:     # an int array and a float constant
            _require_float(self.label, inputs[0])
        return y,

    def backward(self, inputs, grad_outputs):
        return grad_outputs[0] * self.constant,


@_export('functions.math.basic_math')
class Div(Function):
    """Function node of a / b (elementwise, broadcasting, one dtype).
    Backward: gy / b for a and -gy * a / b**2 for b. Chainer: chainer.functions.math.basic_math.Div.
    """
    label = 'div'

    def forward(self, inputs):
        a, b = inputs
        _check_dtypes('div', a, b)
        _require_float('div', a)
        return a / b,

    def backward(self, inputs, grad_outputs):      # d(a/b)/db = -a/b^2
        a, b = inputs
        gy, = grad_outputs
        ga = gy / b
        return _sum_to(ga, a.shape), _sum_to(-ga * a / b, b.shape)


@_export('functions.math.basic_math')
class DivFromConstant(Function):
    """Function node of c / x for a scalar constant c; backward -gy * c / x**2.
    Chainer: chainer.functions.math.basic_math.DivFromConstant.
    """
    label = 'div'

    def __init__(self, constant):
        self.constant = constant

    def forward(self, inputs):
        _require_float('div', inputs[0])
        return self.constant / inputs[0],

    def backward(self, inputs, grad_outputs):      # d(c/x)/dx = -c/x^2
        x, = inputs
        return -grad_outputs[0] * self.constant / (x * x),


@_export('functions.math.basic_math')
class Neg(Function):
    """Function node of -x; backward -gy. Chainer: chainer.functions.math.basic_math.Neg."""
    label = 'neg'

    def forward(self, inputs):
        return -inputs[0],

    def backward(self, inputs, grad_outputs):
        return -grad_outputs[0],


class Pow(Function):
    """Function node of a ** b for two arrays of one dtype (broadcasting).
    Backward: gy * b * a**(b-1) for a, gy * a**b * log(a) for b (0 where a <= 0).
    Chainer: chainer.functions.math.basic_math.Pow.
    """
    label = 'pow'

    def forward(self, inputs):
        a, b = inputs
        _check_dtypes('pow', a, b)
        _require_float('pow', a)
        self.y = a ** b
        return self.y,

    def backward(self, inputs, grad_outputs):      # d(a^b)/da = b a^(b-1); d/db = a^b log a
        a, b = inputs
        gy, = grad_outputs
        xp = _xp(a)
        ga = gy * b * a ** (b - 1)
        gb = gy * self.y * xp.log(xp.where(a > 0, a, 1))   # 0 where log a is undefined
        return _sum_to(ga, a.shape), _sum_to(gb, b.shape)


class PowConstantExponent(Function):
    """Function node of x ** c for a scalar exponent c; backward gy * c * x**(c-1).
    Chainer: chainer.functions.math.basic_math.PowVarConst.
    """
    label = 'pow'

    def __init__(self, exponent):
        self.exponent = exponent

    def forward(self, inputs):
        _require_float('pow', inputs[0])
        return inputs[0] ** self.exponent,

    def backward(self, inputs, grad_outputs):      # d(x^c)/dx = c x^(c-1)
        x, = inputs
        return grad_outputs[0] * self.exponent * x ** (self.exponent - 1),


class PowConstantBase(Function):
    """Function node of c ** x for a scalar base c; backward gy * c**x * log(c).
    Chainer: chainer.functions.math.basic_math.PowConstVar.
    """
    label = 'pow'

    def __init__(self, base):
        self.base = base

    def forward(self, inputs):
        _require_float('pow', inputs[0])
        self.y = self.base ** inputs[0]
        return self.y,

    def backward(self, inputs, grad_outputs):      # d(c^x)/dx = c^x log c
        return grad_outputs[0] * self.y * math.log(self.base),


def _subtract_constant(c):     # x - c is x + (-c)
    return AddConstant(-c)


def _divide_by_constant(c):    # x / c is x * (1/c): a multiply is cheaper than a divide
    # (A NumPy float c keeps its dtype in 1/c; NumPy 1.x would make it float64.)
    function = MulConstant(c.dtype.type(1) / c if isinstance(c, np.floating) else 1.0 / c)
    function.label = 'div'       # so that errors name what the user wrote
    return function


@_export('functions', 'functions.math.basic_math')
def add(*xs):
    """Elementwise sum of any number of Variables or arrays: F.add(a, b, c).

    All of one float dtype (shapes broadcast); a scalar may stand for one of
    them. Returns a Variable. Raises TypeError when the dtypes differ, and
    ValueError for no input at all. Also `a + b` on a Variable.
    Chainer: chainer.functions.add.
    """
    _require_inputs('add', xs)
    y = xs[0]
    for x in xs[1:]:
        y = _arithmetic(y, x, Add, AddConstant, AddConstant)
    return y


@_export('functions', 'functions.math.basic_math')
def sub(a, b):
    """Elementwise difference a - b.

    a, b: Variables or arrays of one float dtype (shapes broadcast), or one of
    them a Python/NumPy scalar. Returns a Variable. Raises TypeError when the
    dtypes differ. Also `a - b` on a Variable. Chainer: a - b on chainer.Variable.
    """
    return _arithmetic(a, b, Sub, _subtract_constant, SubFromConstant)


@_export('functions', 'functions.math.basic_math')
def mul(a, b):
    """Elementwise product a * b.

    a, b: Variables or arrays of one float dtype (shapes broadcast), or one of
    them a scalar. Returns a Variable. Raises TypeError when the dtypes differ.
    Also `a * b` on a Variable. Chainer: a * b on chainer.Variable.
    """
    return _arithmetic(a, b, Mul, MulConstant, MulConstant)


@_export('functions', 'functions.math.basic_math')
def div(a, b):
    """Elementwise quotient a / b.

    a, b: Variables or arrays of one float dtype (shapes broadcast), or one of
    them a scalar. Returns a Variable. Raises TypeError when the dtypes differ.
    Also `a / b` on a Variable. Chainer: a / b on chainer.Variable.
    """
    return _arithmetic(a, b, Div, _divide_by_constant, DivFromConstant)


@_export('functions', 'functions.math.basic_math')
def neg(x):
    """Elementwise negation -x of a Variable or array; returns a Variable.
    Chainer: -x on chainer.Variable.
    """
    return Neg()(x)


def _pow(a, b):     # F.pow (a builtin's name: see the start of this chapter)
    """Elementwise power a ** b.

    a, b: Variables or arrays of one float dtype (shapes broadcast), or one of
    them a scalar. The gradient for b is a**b * log(a), taken as 0 where a <= 0.
    Returns a Variable. Raises TypeError when the dtypes differ.
    Chainer: a ** b on chainer.Variable.
    """
    return _arithmetic(a, b, Pow, PowConstantExponent, PowConstantBase)
_export('functions.math.basic_math', pow=_pow)
_export('functions', pow=_pow)


# ----- operators on Variables ------------------------------------------------
# Now that the functions exist, Variable gets its operators, so that writing
# `x * W + b` records the same graph as F.add(F.mul(x, W), b): the operators
# *are* those functions.  Reflected forms (2 - x, 1 / x, which Python sends to
# x.__rsub__ and x.__rtruediv__) put the operands back in order first.

def _reshape_method(self, *shape):
    """x.reshape(*shape) or x.reshape(shape): F.reshape on this Variable.
    Chainer: chainer.Variable.reshape.
    """
    return reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)


def _transpose_method(self, *axes):
    """x.transpose(*axes), x.transpose(axes) or x.transpose() (reverse the axes):
    F.transpose on this Variable. Chainer: chainer.Variable.transpose.
    """
    if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], (tuple, list))):
        axes = axes[0]
    return transpose(self, axes or None)


Variable.reshape = _reshape_method
Variable.transpose = _transpose_method
Variable.T = property(lambda self: transpose(self),
                      doc='x.T: the transpose of x, axes reversed (F.transpose). '
                          'Chainer: chainer.Variable.T.')
Variable.__getitem__ = lambda self, slices: get_item(self, slices)
Variable.__neg__ = neg
Variable.__add__ = Variable.__radd__ = lambda self, other: _arithmetic(
    self, other, Add, AddConstant, AddConstant)
Variable.__sub__ = sub
Variable.__rsub__ = lambda self, other: sub(other, self)
Variable.__mul__ = Variable.__rmul__ = mul
Variable.__truediv__ = div
Variable.__rtruediv__ = lambda self, other: div(other, self)
Variable.__pow__ = _pow
Variable.__rpow__ = lambda self, other: _arithmetic(
    other, self, Pow, PowConstantExponent, PowConstantBase)
Variable.__matmul__ = lambda self, other: matmul(*_cast_array_constant(self, other, 'matmul'))
Variable.__rmatmul__ = lambda self, other: matmul(*_cast_array_constant(other, self, 'matmul'))


@_export('functions.math.matmul')
class MatMul(Function):
    """Function node of matmul(a, b) (optionally transposing the last two axes
    of either); backward dA = dY B^T, dB = A^T dY.
    Chainer: chainer.functions.math.matmul.MatMul.
    """
    label = 'matmul'
    input_names = ('a', 'b')

    def __init__(self, transa=False, transb=False):
        self.transa, self.transb = transa, transb

    def forward(self, inputs):
        a, b = inputs
        if a.ndim < 2 or b.ndim < 2:
            raise ValueError('matmul: both inputs need 2 or more dimensions, got '
                             'shapes {} and {}'.format(a.shape, b.shape))
        if a.dtype != b.dtype:      # Chainer v7: mixed floats give NumPy's promoted dtype
            _mixed_floats(self, a, b)
        _require_float('matmul', a)
        a = a.swapaxes(-1, -2) if self.transa else a
        b = b.swapaxes(-1, -2) if self.transb else b
        if a.shape[-1] != b.shape[-2]:
            raise ValueError('matmul: a.shape[-1] ({}) != b.shape[-2] ({}) '
                             '(shapes {} and {})'.format(a.shape[-1], b.shape[-2],
                                                          a.shape, b.shape))
        return _xp(a).matmul(a, b),

    def backward(self, inputs, grad_outputs):      # Y = AB: dA = dY B^T, dB = A^T dY
        a, b = inputs
        gy, = grad_outputs
        xp = _xp(a)
        at = a if self.transa else a.swapaxes(-1, -2)     # A^T as used in forward
        bt = b if self.transb else b.swapaxes(-1, -2)
        ga = xp.matmul(gy, bt)
        gb = xp.matmul(at, gy)
        if self.transa:
            ga = ga.swapaxes(-1, -2)
        if self.transb:
            gb = gb.swapaxes(-1, -2)
        return _sum_to(ga, a.shape), _sum_to(gb, b.shape)


@_export('functions', 'functions.math.basic_math', 'functions.math.matmul')
def matmul(a, b, transa=False, transb=False):
    """Matrix product of a and b, batched over leading axes.

    a: (..., N, K) or (..., K, N) with transa; b: (..., K, M) or (..., M, K)
    with transb; transa/transb (default False) transpose the last two axes
    first. Both need 2 or more dimensions and one dtype; leading axes broadcast.
    Returns a Variable of shape (..., N, M). Raises ValueError on shapes that do
    not fit, TypeError on differing dtypes. Chainer: chainer.functions.matmul.
    """
    return MatMul(transa, transb)(a, b)


# ----- elementwise math --------------------------------------------------------
# A one-input formula needs no class of its own: each row below holds
# y = f(x) beside its derivative, gx = f'(x) gy, written with x or, where
# that is cheaper, with the output y ((e^x)' = e^x, tan' = 1 + tan^2), and
# one Function serves every row.  Chainer writes one class per row (Exp,
# Sin, ...).  The activations sigmoid and tanh are rows too (their functions
# are with the other activations, below): their derivatives are formulas
# of y.

_ELEMENTWISE = {       # label: (y = f(x), gx from x, y and gy, does gx read y?)
    'exp': (lambda xp, x: xp.exp(x), lambda xp, x, y, gy: gy * y, True),
    'log': (lambda xp, x: xp.log(x), lambda xp, x, y, gy: gy / x, False),
    'sqrt': (lambda xp, x: xp.sqrt(x), lambda xp, x, y, gy: gy / (2 * y), True),
    'absolute': (lambda xp, x: abs(x), lambda xp, x, y, gy: gy * xp.sign(x), False),
    'sin': (lambda xp, x: xp.sin(x), lambda xp, x, y, gy: gy * xp.cos(x), False),
    'cos': (lambda xp, x: xp.cos(x), lambda xp, x, y, gy: -gy * xp.sin(x), False),
    'tan': (lambda xp, x: xp.tan(x), lambda xp, x, y, gy: gy * (1 + y * y), True),
    'arcsin': (lambda xp, x: xp.arcsin(x), lambda xp, x, y, gy: gy / xp.sqrt(1 - x * x), False),
    'arccos': (lambda xp, x: xp.arccos(x), lambda xp, x, y, gy: -gy / xp.sqrt(1 - x * x), False),
    'arctan': (lambda xp, x: xp.arctan(x), lambda xp, x, y, gy: gy / (1 + x * x), False),
    'arctanh': (lambda xp, x: xp.arctanh(x), lambda xp, x, y, gy: gy / (1 - x * x), False),
    'sinh': (lambda xp, x: xp.sinh(x), lambda xp, x, y, gy: gy * xp.cosh(x), False),
    'cosh': (lambda xp, x: xp.cosh(x), lambda xp, x, y, gy: gy * xp.sinh(x), False),
    'log1p': (lambda xp, x: xp.log1p(x), lambda xp, x, y, gy: gy / (1 + x), False),
    'expm1': (lambda xp, x: xp.expm1(x), lambda xp, x, y, gy: gy * (y + 1), True),
    'log2': (lambda xp, x: xp.log2(x), lambda xp, x, y, gy: gy / (x * math.log(2.0)), False),
    'log10': (lambda xp, x: xp.log10(x), lambda xp, x, y, gy: gy / (x * math.log(10.0)), False),
    'rsqrt': (lambda xp, x: xp.reciprocal(xp.sqrt(x)),          # (x^-1/2)' = -y^3 / 2
              lambda xp, x, y, gy: gy * (y * y * y) * -0.5, True),
    # 1 / (1 + e^-x) written with tanh, which never overflows; s' = s (1 - s)
    'sigmoid': (lambda xp, x: xp.tanh(x * 0.5) * 0.5 + 0.5,
                lambda xp, x, y, gy: gy * y * (1 - y), True),
    'tanh': (lambda xp, x: xp.tanh(x), lambda xp, x, y, gy: gy * (1 - y * y), True),
}


class _Elementwise(Function):
    """Function node of one row of _ELEMENTWISE: forward y = f(x) for float
    x, backward f'(x) gy.  Each row has its subclass, _ELEMENTWISE_FUNCTION[label]
    (made below), holding the row as class attributes (label, f, df, keeps_y),
    so that making a node runs no __init__: exp, log, sigmoid, tanh... are on
    hot paths.  Chainer: one class per formula, e.g.
    chainer.functions.math.exponential.Exp, chainer.functions.math.trigonometric.Sin.
    """

    y = None

    def forward(self, inputs):
        x, = inputs
        if x.dtype.kind != 'f':               # (the test inline: a call less per op)
            _require_float(self.label, x)
        self.xp = xp = _xp(x)                 # kept for backward, for the same reason
        y = self.f(xp, x)
        if self.keeps_y:
            self.y = y
        return y,

    def backward(self, inputs, grad_outputs):
        x, = inputs
        gx = self.df(self.xp, x, self.y, grad_outputs[0])
        # In x's dtype: on NumPy 1.x, 1 + x * x of a 0-dim float32 is float64.
        # (`is`, not ==: a dtype comparison costs as much as a small op; an
        # equal dtype that is another object only costs a copy.)
        return (gx if gx.dtype is x.dtype else gx.astype(x.dtype)),


_ELEMENTWISE_FUNCTION = {
    label: type('_Elementwise_' + label, (_Elementwise,),
                {'label': label, 'f': staticmethod(f), 'df': staticmethod(df),
                 'keeps_y': keeps_y})
    for label, (f, df, keeps_y) in _ELEMENTWISE.items()}


@_export('functions', 'functions.math.exponential')
def exp(x):
    """Elementwise exponential e**x of a float Variable or array; returns a
    Variable of the same shape and dtype. Chainer: chainer.functions.exp.
    """
    return _ELEMENTWISE_FUNCTION['exp']()(x)


@_export('functions', 'functions.math.exponential')
def log(x):
    """Elementwise natural logarithm of a float Variable or array (x <= 0 gives
    -inf or NaN, as NumPy does); returns a Variable. Chainer: chainer.functions.log.
    """
    return _ELEMENTWISE_FUNCTION['log']()(x)


@_export('functions', 'functions.math.sqrt')
def sqrt(x):
    """Elementwise square root of a float Variable or array; returns a Variable.
    Chainer: chainer.functions.sqrt.
    """
    return _ELEMENTWISE_FUNCTION['sqrt']()(x)


# ----- more elementwise math ---------------------------------------------------
# clip, maximum and minimum, then the functions of the table's other rows.

@_export('functions.math.clip')
class Clip(Function):
    """Function node of y = min(max(x, x_min), x_max) (either bound may be None);
    backward gy where x_min <= x <= x_max, else 0 (the bounds count as inside).
    Chainer: chainer.functions.math.clip.Clip.
    """
    label = 'clip'

    def __init__(self, x_min, x_max):
        self.x_min, self.x_max = x_min, x_max

    def forward(self, inputs):
        x, = inputs
        _require_float('clip', x)
        xp = _xp(x)
        y = x if self.x_min is None else xp.maximum(x, x.dtype.type(self.x_min))
        return y if self.x_max is None else xp.minimum(y, x.dtype.type(self.x_max)),

    def backward(self, inputs, grad_outputs):      # 1 inside [x_min, x_max], 0 outside
        x, = inputs
        gx = grad_outputs[0]
        if self.x_min is not None:
            gx = gx * (x >= self.x_min)
        if self.x_max is not None:
            gx = gx * (x <= self.x_max)
        return gx,


@_export('functions.math.maximum')
class Maximum(Function):
    """Function node of y = max(x1, x2) elementwise (broadcasting, one float
    dtype); backward: gy to x1 where x1 >= x2, else to x2 (a tie goes to x1).
    Chainer: chainer.functions.math.maximum.Maximum.
    """
    label = 'maximum'
    input_names = ('x1', 'x2')

    def __init__(self, take_min=False):
        self.take_min = take_min

    def forward(self, inputs):
        x1, x2 = inputs
        _check_dtypes(self.label, x1, x2)
        _require_float(self.label, x1)
        xp = _xp(x1)
        return (xp.minimum if self.take_min else xp.maximum)(x1, x2),

    def backward(self, inputs, grad_outputs):      # the winner gets gy
        x1, x2 = inputs
        gy, = grad_outputs
        xp = _xp(gy)
        first = x1 <= x2 if self.take_min else x1 >= x2
        zero = gy.dtype.type(0)
        return (_sum_to(xp.where(first, gy, zero), x1.shape),
                _sum_to(xp.where(first, zero, gy), x2.shape))


@_export('functions.math.minimum')
class Minimum(Maximum):
    """Function node of y = min(x1, x2) elementwise; backward: gy to x1 where
    x1 <= x2, else to x2. Chainer: chainer.functions.math.minimum.Minimum.
    """
    label = 'minimum'

    def __init__(self):
        super().__init__(take_min=True)


@_export('functions', 'functions.math.basic_math')
def absolute(x):
    """Elementwise absolute value |x| of a float Variable or array (also
    abs(x) on a Variable). The gradient is sign(x) gy, 0 at x = 0. Returns a
    Variable of x's shape and dtype; TypeError for integer x.
    Chainer: chainer.functions.absolute.
    """
    return _ELEMENTWISE_FUNCTION['absolute']()(x)


@_export('functions', 'functions.math.trigonometric')
def sin(x):
    """Elementwise sine of a float Variable or array (radians); returns a
    Variable of x's shape and dtype. Chainer: chainer.functions.sin.
    """
    return _ELEMENTWISE_FUNCTION['sin']()(x)


@_export('functions', 'functions.math.trigonometric')
def cos(x):
    """Elementwise cosine of a float Variable or array (radians); returns a
    Variable of x's shape and dtype. Chainer: chainer.functions.cos.
    """
    return _ELEMENTWISE_FUNCTION['cos']()(x)


@_export('functions', 'functions.math.trigonometric')
def tan(x):
    """Elementwise tangent of a float Variable or array (radians); returns a
    Variable of x's shape and dtype. Chainer: chainer.functions.tan.
    """
    return _ELEMENTWISE_FUNCTION['tan']()(x)


@_export('functions', 'functions.math.trigonometric')
def arcsin(x):
    """Elementwise inverse sine of a float Variable or array, in [-pi/2, pi/2]
    (NaN outside [-1, 1], as NumPy gives); gradient 1/sqrt(1 - x**2).
    Returns a Variable. Chainer: chainer.functions.arcsin.
    """
    return _ELEMENTWISE_FUNCTION['arcsin']()(x)


@_export('functions', 'functions.math.trigonometric')
def arccos(x):
    """Elementwise inverse cosine of a float Variable or array, in [0, pi]
    (NaN outside [-1, 1]); gradient -1/sqrt(1 - x**2). Returns a Variable.
    Chainer: chainer.functions.arccos.
    """
    return _ELEMENTWISE_FUNCTION['arccos']()(x)


@_export('functions', 'functions.math.trigonometric')
def arctan(x):
    """Elementwise inverse tangent of a float Variable or array, in (-pi/2,
    pi/2); gradient 1/(1 + x**2). Returns a Variable.
    Chainer: chainer.functions.arctan.
    """
    return _ELEMENTWISE_FUNCTION['arctan']()(x)


@_export('functions', 'functions.math.hyperbolic')
def sinh(x):
    """Elementwise hyperbolic sine (e**x - e**-x)/2 of a float Variable or
    array; returns a Variable. Chainer: chainer.functions.sinh.
    """
    return _ELEMENTWISE_FUNCTION['sinh']()(x)


@_export('functions', 'functions.math.hyperbolic')
def cosh(x):
    """Elementwise hyperbolic cosine (e**x + e**-x)/2 of a float Variable or
    array; returns a Variable. Chainer: chainer.functions.cosh.
    """
    return _ELEMENTWISE_FUNCTION['cosh']()(x)


@_export('functions', 'functions.math.logarithm_1p')
def log1p(x):
    """Elementwise log(1 + x) of a float Variable or array, accurate where x
    is tiny; returns a Variable. Chainer: chainer.functions.log1p.
    """
    return _ELEMENTWISE_FUNCTION['log1p']()(x)


@_export('functions', 'functions.math.exponential_m1')
def expm1(x):
    """Elementwise e**x - 1 of a float Variable or array, accurate where x is
    tiny; returns a Variable. Chainer: chainer.functions.expm1.
    """
    return _ELEMENTWISE_FUNCTION['expm1']()(x)


@_export('functions', 'functions.math.exponential')
def log2(x):
    """Elementwise base-2 logarithm of a float Variable or array (x <= 0 gives
    -inf or NaN, as NumPy does); returns a Variable. Chainer: chainer.functions.log2.
    """
    return _ELEMENTWISE_FUNCTION['log2']()(x)


@_export('functions', 'functions.math.exponential')
def log10(x):
    """Elementwise base-10 logarithm of a float Variable or array (x <= 0
    gives -inf or NaN); returns a Variable. Chainer: chainer.functions.log10.
    """
    return _ELEMENTWISE_FUNCTION['log10']()(x)


@_export('functions', 'functions.math.sqrt')
def rsqrt(x):
    """Elementwise reciprocal square root 1 / sqrt(x) of a float Variable or
    array; gradient -x**-1.5 / 2. Returns a Variable. Chainer: chainer.functions.rsqrt.
    """
    return _ELEMENTWISE_FUNCTION['rsqrt']()(x)


@_export('functions', 'functions.math.clip')
def clip(x, x_min, x_max):
    """Elementwise clip: x_min where x < x_min, x_max where x > x_max, else x.

    x: float Variable or array; x_min, x_max: numbers, one of them may be None
    (no bound on that side). The gradient is gy inside [x_min, x_max] (bounds
    included) and 0 outside. Returns a Variable of x's shape and dtype. Raises
    ValueError when both bounds are None or x_min >= x_max, TypeError for
    integer x. Chainer: chainer.functions.clip.
    """
    if x_min is None and x_max is None:
        raise ValueError('clip: x_min and x_max are both None; give at least one bound')
    if x_min is not None and x_max is not None and x_min >= x_max:
        raise ValueError('clip: x_min ({}) must be less than x_max ({})'.format(x_min, x_max))
    return Clip(x_min, x_max)(x)


@_export('functions', 'functions.math.maximum')
def maximum(x1, x2):
    """Elementwise maximum of x1 and x2: float Variables or arrays of one
    dtype whose shapes broadcast. The gradient goes to x1 where x1 >= x2, else
    to x2. Returns a Variable. Raises TypeError for differing or integer
    dtypes, ValueError for shapes that do not broadcast.
    Chainer: chainer.functions.maximum.
    """
    return Maximum()(x1, x2)


@_export('functions', 'functions.math.minimum')
def minimum(x1, x2):
    """Elementwise minimum of x1 and x2: float Variables or arrays of one
    dtype whose shapes broadcast. The gradient goes to x1 where x1 <= x2, else
    to x2. Returns a Variable. Raises TypeError for differing or integer
    dtypes, ValueError for shapes that do not broadcast.
    Chainer: chainer.functions.minimum.
    """
    return Minimum()(x1, x2)


@_export('functions.math.trigonometric')
class Arctan2(Function):
    """Function node of y = arctan2(x1, x2), the angle of the point (x2, x1)
    (broadcasting, one float dtype); backward gy * x2 / (x1**2 + x2**2) for
    x1 and -gy * x1 / (x1**2 + x2**2) for x2.
    Chainer: chainer.functions.math.trigonometric.Arctan2.
    """
    label = 'arctan2'
    input_names = ('x1', 'x2')

    def forward(self, inputs):
        x1, x2 = inputs
        _check_dtypes('arctan2', x1, x2)
        _require_float('arctan2', x1)
        return _xp(x1).arctan2(x1, x2),

    def backward(self, inputs, grad_outputs):      # d atan(x1/x2) = (x2 dx1 - x1 dx2) / r^2
        x1, x2 = inputs
        g = grad_outputs[0] / (x1 * x1 + x2 * x2)
        return _sum_to(g * x2, x1.shape), _sum_to(-g * x1, x2.shape)


@_export('functions.math.fmod')
class Fmod(Function):
    """Function node of y = fmod(x, divisor) = x - fix(x / divisor) * divisor
    (the remainder with the sign of x; broadcasting, one float dtype).
    Backward: gy for x, -fix(x / divisor) * gy for divisor.
    Chainer: chainer.functions.math.fmod.Fmod.
    """
    label = 'fmod'
    input_names = ('x', 'divisor')

    def forward(self, inputs):
        x, divisor = inputs
        _check_dtypes('fmod', x, divisor)
        _require_float('fmod', x)
        return _xp(x).fmod(x, divisor),

    def backward(self, inputs, grad_outputs):      # the quotient fix(x/d) is a step function
        x, divisor = inputs
        gy, = grad_outputs
        return (_sum_to(gy, x.shape),
                _sum_to(-_xp(x).fix(x / divisor) * gy, divisor.shape))


@_export('functions', 'functions.math.trigonometric')
def arctan2(x1, x2):
    """Elementwise angle arctan(x1 / x2) of the point (x2, x1), in [-pi, pi],
    as numpy.arctan2. x1, x2: float Variables or arrays of one dtype whose
    shapes broadcast. Gradients x2 / (x1**2 + x2**2) and -x1 / (x1**2 + x2**2).
    Returns a Variable. Raises TypeError for differing or integer dtypes.
    Chainer: chainer.functions.arctan2.
    """
    return Arctan2()(x1, x2)


@_export('functions', 'functions.math.arctanh')
def arctanh(x):
    """Elementwise inverse hyperbolic tangent of a float Variable or array
    (+-inf at +-1, NaN outside [-1, 1]); gradient 1 / (1 - x**2). Returns a
    Variable. Chainer: chainer.functions.arctanh.
    """
    return _ELEMENTWISE_FUNCTION['arctanh']()(x)


@_export('functions', 'functions.math.fmod')
def fmod(x, divisor):
    """Elementwise remainder of x / divisor with the sign of x (numpy.fmod):
    x - fix(x / divisor) * divisor. x, divisor: float Variables or arrays of
    one dtype whose shapes broadcast. Gradients 1 for x and -fix(x / divisor)
    for divisor. Returns a Variable. Raises TypeError for differing or integer
    dtypes. Chainer: chainer.functions.fmod.
    """
    return Fmod()(x, divisor)


# sign, floor, ceil and fix are step functions: their derivative is 0 almost
# everywhere, so, as in Chainer, they return a Variable outside the graph
# (requires_grad False) and backprop stops there.

def _step_function(label, x, step):
    data = _input_data(label, x)
    y = _xp(data).asarray(step(data))          # NumPy gives a 0-dim input back as a scalar
    return Variable(y if y.dtype == data.dtype else y.astype(data.dtype), requires_grad=False)


@_export('functions', 'functions.math.sign')
def sign(x):
    """Elementwise sign of x: -1 where x < 0, 0 where x == 0, 1 where x > 0,
    in x's dtype. Not differentiable: returns a Variable with no gradient and
    no link to x. Chainer: chainer.functions.sign.
    """
    return _step_function('sign', x, lambda a: _xp(a).sign(a))


@_export('functions', 'functions.math.floor')
def floor(x):
    """Elementwise floor (the largest integer <= x), in x's dtype. Not
    differentiable: returns a Variable with no gradient and no link to x.
    Chainer: chainer.functions.floor.
    """
    return _step_function('floor', x, lambda a: _xp(a).floor(a))


@_export('functions', 'functions.math.ceil')
def ceil(x):
    """Elementwise ceiling (the smallest integer >= x), in x's dtype. Not
    differentiable: returns a Variable with no gradient and no link to x.
    Chainer: chainer.functions.ceil.
    """
    return _step_function('ceil', x, lambda a: _xp(a).ceil(a))


@_export('functions', 'functions.math.fix')
def fix(x):
    """Elementwise rounding toward zero (numpy.fix), in x's dtype. Not
    differentiable: returns a Variable with no gradient and no link to x.
    Chainer: chainer.functions.fix.
    """
    return _step_function('fix', x, lambda a: _xp(a).fix(a))


# ----- special functions: erf, erfc, ndtr, log_ndtr, lgamma --------------------
# NumPy has none of these, and this file does without SciPy: on the CPU each
# element goes through Python's math module (slow, one call per element, but
# exact to double precision); on a GPU a small CUDA kernel is compiled on
# first use from CUDA's own erf, erfc, normcdf, erfcx and lgamma.

_SQRT2 = math.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_special_kernels = {}


def _elementwise_special(label, x, on_cpu, cuda_code):
    """on_cpu (a float -> float function) applied to every element of x,
    or on CuPy arrays the CUDA expression cuda_code (of x, giving y)."""
    xp = _xp(x)
    if xp is np:
        return np.asarray(np.frompyfunc(on_cpu, 1, 1)(x), dtype=x.dtype)
    kernel = _special_kernels.get(label)
    if kernel is None:
        if not hasattr(xp, 'ElementwiseKernel'):
            raise NotImplementedError('{}: needs cupy.ElementwiseKernel for {} arrays'
                                      .format(label, xp.__name__))
        kernel = xp.ElementwiseKernel('T x', 'T y', cuda_code, 'onefchainer_' + label)
        _special_kernels[label] = kernel
    return kernel(x)


def _log_ndtr_scalar(x):
    if x > 0:                  # ndtr near 1: log1p keeps the small tail
        return math.log1p(-0.5 * math.erfc(x / _SQRT2))
    if x > -30:
        return math.log(0.5 * math.erfc(-x / _SQRT2))
    # Far left erfc underflows: Phi(x) = phi(x) / -x * (1 - 1/x^2 + 3/x^4 - ...).
    s = 1.0 / (x * x)
    return (-0.5 * x * x - math.log(-x) - _LOG_SQRT_2PI
            + math.log1p(s * (-1 + s * (3 + s * (-15 + s * 105)))))


def _lgamma_scalar(x):
    try:
        return math.lgamma(x)
    except ValueError:         # a pole (0, -1, -2, ...): SciPy's gammaln says inf
        return math.inf


def _digamma(x):
    """psi(x) = d/dx log|Gamma(x)|, elementwise in x's dtype, on NumPy or CuPy:
    psi(x) = psi(x + 1) - 1/x lifts x to 10 or more, where the asymptotic
    series is exact to double precision; x < 1/2 first reflects,
    psi(x) = psi(1 - x) - pi / tan(pi x)."""
    xp = _xp(x)
    z = x.astype(np.float64)
    reflect = z < 0.5
    z = xp.where(reflect, 1 - z, z)
    shift = xp.zeros_like(z)
    for _ in range(10):
        small = z < 10
        shift -= xp.where(small, 1 / z, 0)
        z = xp.where(small, z + 1, z)
    s = 1 / (z * z)
    psi = xp.log(z) - 0.5 / z - s * (1 / 12 - s * (1 / 120 - s * (1 / 252 - s * (
        1 / 240 - s / 132)))) + shift
    psi = xp.where(reflect, psi - math.pi / xp.tan(math.pi * x.astype(np.float64)), psi)
    return psi.astype(x.dtype)


@_export('functions.math.erf')
class Erf(Function):
    """Function node of y = erf(x); backward gy * 2/sqrt(pi) exp(-x^2).
    Chainer: chainer.functions.math.erf.Erf.
    """
    label = 'erf'

    def forward(self, inputs):
        _require_float('erf', inputs[0])
        return _elementwise_special('erf', inputs[0], math.erf, 'y = erf(x)'),

    def backward(self, inputs, grad_outputs):      # erf' = 2/sqrt(pi) e^{-x^2}
        x, = inputs
        return grad_outputs[0] * (x.dtype.type(2 / math.sqrt(math.pi)) * _xp(x).exp(-x * x)),


@_export('functions.math.erfc')
class Erfc(Function):
    """Function node of y = erfc(x) = 1 - erf(x), exact for large x;
    backward -gy * 2/sqrt(pi) exp(-x^2). Chainer: chainer.functions.math.erfc.Erfc.
    """
    label = 'erfc'

    def forward(self, inputs):
        _require_float('erfc', inputs[0])
        return _elementwise_special('erfc', inputs[0], math.erfc, 'y = erfc(x)'),

    def backward(self, inputs, grad_outputs):      # erfc' = -erf'
        x, = inputs
        return grad_outputs[0] * (x.dtype.type(-2 / math.sqrt(math.pi)) * _xp(x).exp(-x * x)),


@_export('functions.math.ndtr')
class Ndtr(Function):
    """Function node of the standard normal CDF y = Phi(x) = erfc(-x/sqrt 2)/2;
    backward gy * exp(-x^2/2) / sqrt(2 pi). Chainer: chainer.functions.math.ndtr.Ndtr.
    """
    label = 'ndtr'

    def forward(self, inputs):
        _require_float('ndtr', inputs[0])
        return _elementwise_special('ndtr', inputs[0],
                                    lambda v: 0.5 * math.erfc(-v / _SQRT2), 'y = normcdf(x)'),

    def backward(self, inputs, grad_outputs):      # Phi' = the normal density phi
        x, = inputs
        return grad_outputs[0] * (x.dtype.type(1 / math.sqrt(2 * math.pi))
                                  * _xp(x).exp(x * x * x.dtype.type(-0.5))),


@_export('functions.math.log_ndtr')
class LogNdtr(Function):
    """Function node of y = log Phi(x), accurate in both tails; backward
    gy * phi(x) / Phi(x), taken as exp(-x^2/2 - y) / sqrt(2 pi) so it stays
    finite far left. Chainer: chainer.functions.math.log_ndtr.LogNdtr.
    """
    label = 'log_ndtr'

    def forward(self, inputs):
        _require_float('log_ndtr', inputs[0])
        self.y = _elementwise_special(
            'log_ndtr', inputs[0], _log_ndtr_scalar,
            'y = x > 0 ? log1p(-normcdf(-x)) : log(erfcx(-x * sqrt(0.5)) / 2) - x * x / 2')
        return self.y,

    def backward(self, inputs, grad_outputs):      # (log Phi)' = phi / Phi
        x, = inputs
        return grad_outputs[0] * (x.dtype.type(1 / math.sqrt(2 * math.pi))
                                  * _xp(x).exp(x * x * x.dtype.type(-0.5) - self.y)),


@_export('functions.math.lgamma')
class LGamma(Function):
    """Function node of y = log|Gamma(x)| (inf at 0, -1, -2, ...); backward
    gy * digamma(x). Chainer: chainer.functions.math.lgamma.LGamma.
    """
    label = 'lgamma'

    def forward(self, inputs):
        _require_float('lgamma', inputs[0])
        return _elementwise_special('lgamma', inputs[0], _lgamma_scalar, 'y = lgamma(x)'),

    def backward(self, inputs, grad_outputs):      # (log Gamma)' = psi, the digamma function
        return grad_outputs[0] * _digamma(inputs[0]),


@_export('functions', 'functions.math.erf')
def erf(x):
    """Elementwise error function erf(x) = 2/sqrt(pi) * integral_0^x e^{-t^2} dt
    of a float Variable or array (CPU: Python's math.erf per element; GPU: a
    CUDA kernel compiled on first use). Returns a Variable of x's shape and
    dtype. Raises TypeError for integer x. Chainer: chainer.functions.erf.
    """
    return Erf()(x)


@_export('functions', 'functions.math.erfc')
def erfc(x):
    """Elementwise complementary error function erfc(x) = 1 - erf(x), without
    the cancellation for large x; float Variable or array in, Variable of the
    same shape and dtype out. Raises TypeError for integer x.
    Chainer: chainer.functions.erfc.
    """
    return Erfc()(x)


@_export('functions', 'functions.math.ndtr')
def ndtr(x):
    """Elementwise standard normal cumulative distribution
    Phi(x) = (1 + erf(x / sqrt 2)) / 2 (computed as erfc(-x / sqrt 2) / 2);
    float Variable or array in, Variable out. Raises TypeError for integer x.
    Chainer: chainer.functions.ndtr.
    """
    return Ndtr()(x)


@_export('functions', 'functions.math.log_ndtr')
def log_ndtr(x):
    """Elementwise log Phi(x), the log of the standard normal CDF, accurate
    far into both tails (no SciPy needed, unlike Chainer's CPU version);
    float Variable or array in, Variable out. Raises TypeError for integer x.
    Chainer: chainer.functions.log_ndtr.
    """
    return LogNdtr()(x)


@_export('functions', 'functions.math.lgamma')
def lgamma(x):
    """Elementwise log|Gamma(x)| (inf at 0, -1, -2, ...), with gradient
    digamma(x) (computed here by recurrence and asymptotic series; no SciPy
    needed, unlike Chainer's CPU version); float Variable or array in,
    Variable out. Raises TypeError for integer x. Chainer: chainer.functions.lgamma.
    """
    return LGamma()(x)


Variable.__abs__ = absolute


# ----- reductions --------------------------------------------------------------

def _normalize_axis(axis, ndim, label):
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError('{}: axis {} is out of bounds for an array of '
                             'dimension {}'.format(label, a, ndim))
    return tuple(sorted(a % ndim for a in axes))


def _int_axis(label, axis, none_too=False):
    """`axis` as an int (a bool is not one), or None where none_too says so."""
    if axis is None and none_too:
        return None
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise TypeError('{}: axis must be an int{}, got {!r}'.format(
            label, ' or None' if none_too else '', axis))
    return int(axis)


def _keepdims_shape(shape, axes):
    """The shape a reduction over `axes` has with keepdims=True."""
    if axes is None:
        return (1,) * len(shape)
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def _accumulator(dtype):
    """The dtype to add up values of `dtype` in: float32 for float16, as in
    Chainer's means and losses (softmax_cross_entropy's since Chapter 5), else
    None (the dtype itself).  float16 tops out at 65504, and a running float16
    sum of ones stops growing at 2048, where 2048 + 1 rounds back to 2048."""
    return np.float32 if dtype == np.float16 else None


def _sum_wide(a, axis=None, keepdims=False):
    """a.sum(axis, keepdims) added up in _accumulator(a.dtype): float32 for
    float16 (and returned in float32: the caller divides, then casts back)."""
    return a.sum(axis=axis, keepdims=keepdims, dtype=_accumulator(a.dtype))


@_export('functions.math.sum')
class Sum(Function):
    """Function node of x.sum(axis, keepdims); backward broadcasts gy back
    to x's shape. Chainer: chainer.functions.math.sum.Sum.
    """
    label = 'sum'

    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, inputs):
        x, = inputs
        self.axis = _normalize_axis(self.axis, x.ndim, 'sum')
        if x.dtype == np.float16:      # see _sum_wide
            return _sum_wide(x, self.axis, self.keepdims).astype(np.float16),
        return x.sum(axis=self.axis, keepdims=self.keepdims),

    def backward(self, inputs, grad_outputs):      # every x_i gets dL/dy
        x, = inputs
        gy = grad_outputs[0].reshape(_keepdims_shape(x.shape, self.axis))
        # astype copies; it also brings the int64 gradient of an int32 sum
        # (NumPy sums small ints in int64, so the sum cannot overflow) back to x's dtype.
        return _xp(x).broadcast_to(gy, x.shape).astype(x.dtype),


@_export('functions.math.minmax')
class Max(Function):
    """Function node of x.max(axis, keepdims) (x.min with take_min=True).
    Backward: gy goes to the element(s) equal to the result, 0 elsewhere
    (ties each get gy). Chainer: chainer.functions.math.minmax.Max.
    """
    label = 'max'

    def __init__(self, axis=None, keepdims=False, take_min=False):
        self.axis, self.keepdims, self.take_min = axis, keepdims, take_min

    def forward(self, inputs):
        x, = inputs
        self.axis = _normalize_axis(self.axis, x.ndim, self.label)
        reduce = x.min if self.take_min else x.max
        self.y = reduce(axis=self.axis, keepdims=True)
        return self.y if self.keepdims else self.y.reshape(
            [n for i, n in enumerate(self.y.shape)
             if self.axis is not None and i not in self.axis]),

    def backward(self, inputs, grad_outputs):      # only the winner(s) get dL/dy
        x, = inputs
        gy = grad_outputs[0].reshape(self.y.shape)
        return gy * (x == self.y),


@_export('functions.math.minmax')
class Min(Max):
    """Function node of x.min(axis, keepdims); see Max.
    Chainer: chainer.functions.math.minmax.Min.
    """
    label = 'min'

    def __init__(self, axis=None, keepdims=False):
        super().__init__(axis, keepdims, take_min=True)


@_export('functions.math.prod')
class Prod(Function):
    """Function node of x.prod(axis, keepdims). Backward: each element gets gy
    times the product of the *other* elements of its group, computed from
    running products from the left and from the right, so that a zero in x
    gives the right gradient (dividing y by x would give NaN).
    Chainer: chainer.functions.math.prod.Prod.
    """
    label = 'prod'

    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, inputs):
        x, = inputs
        _require_float('prod', x)
        self.axis = _normalize_axis(self.axis, x.ndim, 'prod')
        return _xp(x).asarray(x.prod(axis=self.axis, keepdims=self.keepdims)),

    def backward(self, inputs, grad_outputs):      # d(prod)/dx_i = prod_{j != i} x_j
        x, = inputs
        xp = _xp(x)
        axes = tuple(range(x.ndim)) if self.axis is None else self.axis
        kept = [a for a in range(x.ndim) if a not in axes]
        order = kept + list(axes)                  # the reduced axes last, as one
        moved = x.transpose(order)
        groups = moved.reshape(moved.shape[:len(kept)] + (-1,))
        if groups.shape[-1] == 0:
            return xp.zeros_like(x),
        ones = xp.ones(groups.shape[:-1] + (1,), x.dtype)
        before = xp.cumprod(xp.concatenate([ones, groups[..., :-1]], axis=-1), axis=-1)
        after = xp.cumprod(xp.concatenate([ones, groups[..., :0:-1]], axis=-1), axis=-1)
        others = (before * after[..., ::-1]).reshape(moved.shape)
        others = others.transpose(tuple(np.argsort(order)))
        gy = grad_outputs[0].reshape(_keepdims_shape(x.shape, self.axis))
        return gy * others,


@_export('functions.math.cumsum')
class Cumsum(Function):
    """Function node of the cumulative sum along `axis` (None: of x flattened).
    Backward: y_i = sum_{j <= i} x_j, so x_j gets sum_{i >= j} gy_i, a
    cumulative sum of gy taken from the far end.
    Chainer: chainer.functions.math.cumsum.Cumsum.
    """
    label = 'cumsum'

    def __init__(self, axis=None):
        self.axis = axis

    def forward(self, inputs):
        x, = inputs
        _require_float('cumsum', x)
        if self.axis is not None:
            self.axis = _normalize_axis(self.axis, x.ndim, 'cumsum')[0]
        return _xp(x).cumsum(x, axis=self.axis),

    def backward(self, inputs, grad_outputs):      # x_j feeds every y_i with i >= j
        x, = inputs
        gy, = grad_outputs
        axis = 0 if self.axis is None else self.axis
        flipped = _xp(gy).flip(gy, axis)
        return _xp(gy).flip(flipped.cumsum(axis=axis), axis).reshape(x.shape),


@_export('functions.math.cumprod')
class Cumprod(Function):
    """Function node of the cumulative product along `axis` (None: of x
    flattened).  Backward without dividing by x (which may hold zeros):
    y_i = x_0 ... x_i, so x_j gets y_{j-1} * z_j with z_j = sum_{i >= j}
    gy_i x_{j+1} ... x_i, run from the far end as z_j = gy_j + x_{j+1} z_{j+1}.
    Chainer: chainer.functions.math.cumprod.Cumprod.
    """
    label = 'cumprod'

    def __init__(self, axis=None):
        self.axis = axis

    def forward(self, inputs):
        x, = inputs
        _require_float('cumprod', x)
        if self.axis is not None:
            self.axis = _normalize_axis(self.axis, x.ndim, 'cumprod')[0]
        self.y = _xp(x).cumprod(x, axis=self.axis)
        return self.y,

    def backward(self, inputs, grad_outputs):      # product rule, one factor at a time
        x, = inputs
        gy, = grad_outputs
        xp = _xp(x)
        axis = 0 if self.axis is None else self.axis
        xs = x.reshape(-1) if self.axis is None else x
        xs, gy, y = [xp.moveaxis(a, axis, 0) for a in (xs, gy, self.y.reshape(xs.shape))]
        if len(gy) == 0:
            return xp.zeros_like(x),
        z = xp.empty_like(gy)
        z[-1] = gy[-1]
        for j in range(len(gy) - 2, -1, -1):         # a Python loop over the axis only
            z[j] = gy[j] + xs[j + 1] * z[j + 1]
        z[1:] *= y[:-1]
        return xp.moveaxis(z, 0, axis).reshape(x.shape),


def _sum(x, axis=None, keepdims=False):     # F.sum
    """Sum of the elements of x over `axis`.

    x: Variable or array. axis: None (default, all axes), an int or a tuple of
    ints (negative counts from the end). keepdims (default False) keeps the
    summed axes with size 1. Returns a Variable. Raises ValueError for an axis
    out of bounds. Chainer: chainer.functions.sum.
    """
    return Sum(axis, keepdims)(x)
_export('functions.math.sum', sum=_sum)
_export('functions', sum=_sum)


@_export('functions')
def mean(x, axis=None, weights=None, keepdims=False):
    """Arithmetic mean of x over `axis`: sum(x, axis) / (number of elements summed).

    x: Variable or array; axis: None (all), int or tuple; keepdims default
    False. With weights it is average(x, axis, weights, keepdims), as in
    Chainer (where mean is average). Returns a Variable.
    Chainer: chainer.functions.mean.
    """
    if weights is not None:
        return average(x, axis, weights, keepdims)      # further down this chapter
    data = _input_data('mean', x)
    _require_float('mean', data)
    if data.dtype == np.float16:    # a float16 sum would overflow first: in float32
        return cast(mean(cast(x, np.float32), axis, keepdims=keepdims), np.float16)
    axes = _normalize_axis(axis, data.ndim, 'mean')
    count = data.size if axes is None else int(np.prod([data.shape[a] for a in axes]))
    # The mean of nothing is NaN, as in NumPy (whose warning is left out).
    return Sum(axes, keepdims)(x) * (1.0 / count if count else math.nan)


def _max(x, axis=None, keepdims=False):     # F.max
    """Maximum of x over `axis` (None: all axes; int or tuple), keepdims default
    False. Returns a Variable; the gradient flows to the maximal element(s).
    Raises ValueError for an axis out of bounds. Chainer: chainer.functions.max.
    """
    return Max(axis, keepdims)(x)
_export('functions.math.minmax', max=_max)
_export('functions', max=_max)


def _min(x, axis=None, keepdims=False):     # F.min
    """Minimum of x over `axis` (None: all axes; int or tuple), keepdims default
    False. Returns a Variable; the gradient flows to the minimal element(s).
    Raises ValueError for an axis out of bounds. Chainer: chainer.functions.min.
    """
    return Min(axis, keepdims)(x)
_export('functions.math.minmax', min=_min)
_export('functions', min=_min)


@_export('functions', 'functions.math.prod')
def prod(x, axis=None, keepdims=False):
    """Product of the elements of x over `axis`.

    x: float Variable or array; axis: None (default, all axes), an int or a
    tuple of distinct ints; keepdims (default False) keeps the reduced axes
    with size 1. The gradient of each element is gy times the product of the
    others (exact where x has zeros). Returns a Variable. Raises TypeError for
    integer x or an axis of another type, ValueError for an axis out of bounds
    or repeated. Chainer: chainer.functions.prod.
    """
    if axis is not None:
        axes = (axis,) if isinstance(axis, (int, np.integer)) else axis
        if not isinstance(axes, tuple) or not all(
                isinstance(a, (int, np.integer)) for a in axes):
            raise TypeError('prod: axis must be None, an int or a tuple of ints, got {!r}'
                            .format(axis))
        if len(set(axes)) != len(axes):
            raise ValueError('prod: axis {} repeats an axis'.format(axis))
    return Prod(axis, keepdims)(x)


@_export('functions', 'functions.math.cumsum')
def cumsum(x, axis=None):
    """Cumulative sum of x along `axis` (an int, negative from the end), or of
    x flattened to one axis when axis is None (the default).

    x: float Variable or array. Returns a Variable of x's shape (1-d of x.size
    for axis None). Raises TypeError for integer x or a non-int axis,
    ValueError for an axis out of bounds. Chainer: chainer.functions.cumsum.
    """
    return Cumsum(_int_axis('cumsum', axis, none_too=True))(x)


@_export('functions', 'functions.math.cumprod')
def cumprod(x, axis=None):
    """Cumulative product of x along `axis` (an int, negative from the end),
    or of x flattened to one axis when axis is None (the default).

    x: float Variable or array. Returns a Variable of x's shape (1-d of
    x.size for axis None); the gradient is exact where x has zeros. Raises
    TypeError for integer x or a non-int axis, ValueError for an axis out of
    bounds. Chainer: chainer.functions.cumprod.
    """
    return Cumprod(_int_axis('cumprod', axis, none_too=True))(x)


@_export('functions.math.logsumexp')
class LogSumExp(Function):
    """Function node of y = log(sum(exp(x), axis)), computed after taking out
    the maximum so that exp cannot overflow; backward gy * exp(x - y)
    (softmax times gy). Chainer: chainer.functions.math.logsumexp.LogSumExp.
    """
    label = 'logsumexp'

    def __init__(self, axis=None):
        self.axis = axis

    def forward(self, inputs):
        x, = inputs
        _require_float('logsumexp', x)
        self.axis = _normalize_axis(self.axis, x.ndim, 'logsumexp')
        self.y = _log_sum_exp(x, self.axis)          # with keepdims, for backward
        return self.y.reshape([n for i, n in enumerate(x.shape)
                               if self.axis is not None and i not in self.axis]),

    def backward(self, inputs, grad_outputs):      # d/dx_i log sum e^x = e^{x_i} / sum e^x
        x, = inputs
        gy = grad_outputs[0].reshape(self.y.shape)
        return gy * _xp(x).exp(x - self.y),


@_export('functions.normalization.l2_normalization')
class NormalizeL2(Function):
    """Function node of y = x / (||x|| + eps), ||x|| the L2 norm along `axis`.
    Backward: gy / (||x|| + eps) - x * sum(x gy) / (||x|| (||x|| + eps)**2),
    the second term 0 where ||x|| is 0.
    Chainer: chainer.functions.normalization.l2_normalization.NormalizeL2.
    """
    label = 'normalize'

    def __init__(self, eps, axis):
        self.eps, self.axis = eps, axis

    def forward(self, inputs):
        x, = inputs
        _require_float('normalize', x)
        self.axis = _normalize_axis(self.axis, x.ndim, 'normalize')
        # float16 in float32: its squares overflow above 256, and 1 / eps above 65504
        wide = x.astype(np.promote_types(x.dtype, np.float32), copy=False)
        self.norm = _xp(x).sqrt((wide * wide).sum(axis=self.axis, keepdims=True))
        self.scale = 1 / (self.norm + self.eps)
        return (x * self.scale).astype(x.dtype, copy=False),

    def backward(self, inputs, grad_outputs):      # quotient rule; d||x||/dx = x / ||x||
        x, = inputs
        gy, = grad_outputs
        xp = _xp(x)
        along = (x * gy).sum(axis=self.axis, keepdims=True)
        zero = self.norm == 0
        along = xp.where(zero, x.dtype.type(0), along / xp.where(zero, 1, self.norm))
        return ((gy - x * along * self.scale) * self.scale).astype(x.dtype, copy=False),


@_export('functions', 'functions.math.average')
def average(x, axis=None, weights=None, keepdims=False):
    """Weighted mean sum(x * w, axis) / sum(w) over `axis`.

    x: float Variable or array. axis: None (default, all axes), an int or a
    tuple of ints (only None or one axis with weights). weights: None (all 1:
    the plain mean), else a Variable or array of x's shape for axis None, or
    of shape (x.shape[axis],) for an int axis; weights get gradients too.
    keepdims (default False) keeps the reduced axes with size 1. Returns a
    Variable. Raises ValueError for a tuple axis with weights, repeated
    axes, or weights of the wrong shape. Chainer: chainer.functions.average.
    """
    if weights is None:
        return mean(x, axis, keepdims=keepdims)
    data = _input_data('average', x)
    if data.dtype == np.float16:    # as mean: the sums in float32
        return cast(average(cast(x, np.float32), axis, cast(weights, np.float32), keepdims),
                    np.float16)
    axes = _normalize_axis(axis, data.ndim, 'average')
    if axis is not None and not isinstance(axis, (int, np.integer)) and \
            len(set(axes)) != len(axis):
        raise ValueError('average: axis {} repeats an axis'.format(axis))
    if axes is not None and len(axes) > 1:
        raise ValueError('average: a tuple axis is not supported with weights, got {}'
                         .format(axis))
    w_shape = _input_data('average', weights).shape
    wanted = data.shape if axes is None else (data.shape[axes[0]],)
    if w_shape != wanted:
        raise ValueError('average: weights must have shape {} for x of shape {} and '
                         'axis {}, got {}'.format(wanted, data.shape, axis, w_shape))
    if axes is not None:
        weights = reshape(weights, (1,) * axes[0] + wanted + (1,) * (data.ndim - axes[0] - 1))
    total = Sum(axes, keepdims)(mul(x, weights))
    return total / broadcast_to(Sum()(weights), total.shape)


@_export('functions', 'functions.activation.log_softmax', 'functions.math.logsumexp')
def logsumexp(x, axis=None):
    """log(sum(exp(x), axis)), computed without overflow (the maximum is
    taken out first). x: float Variable or array; axis: None (default, all
    axes), an int or a tuple of ints. The gradient is softmax(x) along axis
    times gy. Returns a Variable. Raises ValueError for an axis out of
    bounds, TypeError for integer x. Chainer: chainer.functions.logsumexp.
    """
    return LogSumExp(axis)(x)


@_export('functions', 'functions.normalization.l2_normalization')
def normalize(x, eps=1e-5, axis=1):
    """L2 normalization: x / (sqrt(sum(x**2, axis)) + eps), no reduction.

    x: float Variable or array, e.g. (N, K); eps (default 1e-5) keeps a zero
    vector from dividing by 0; axis: an int or tuple of ints (default 1).
    Returns a Variable of x's shape. Raises ValueError for an axis out of
    bounds, TypeError for integer x. Chainer: chainer.functions.normalize.
    """
    return NormalizeL2(eps, axis)(x)


@_export('functions', 'functions.math.batch_l2_norm_squared')
def batch_l2_norm_squared(x):
    """Squared L2 norm of each example: sum(x[n]**2) over all axes but the
    first. x: float Variable or array (N, ...) with 2 or more dimensions.
    Returns a Variable (N,); gradient 2 x gy. Raises ValueError for fewer than
    2 dimensions, TypeError for integer x.
    Chainer: chainer.functions.batch_l2_norm_squared.
    """
    data = _input_data('batch_l2_norm_squared', x)
    _require_float('batch_l2_norm_squared', data)
    if data.ndim < 2:
        raise ValueError('batch_l2_norm_squared: x needs 2 or more dimensions, got shape '
                         '{}'.format(data.shape))
    return Sum(tuple(range(1, data.ndim)))(mul(x, x))


# ----- shapes ------------------------------------------------------------------
# These only move numbers around, so backward moves the gradient back.

@_export('functions.array.reshape')
class Reshape(Function):
    """Function node of x.reshape(shape); backward reshapes gy back.
    Chainer: chainer.functions.array.reshape.Reshape.
    """
    label = 'reshape'

    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, inputs):
        x, = inputs
        try:
            return x.reshape(self.shape),
        except ValueError:
            raise ValueError('reshape: cannot reshape an array of shape {} '
                             '(size {}) into shape {}'.format(
                                 x.shape, x.size, self.shape)) from None

    def backward(self, inputs, grad_outputs):
        return grad_outputs[0].reshape(inputs[0].shape),


@_export('functions.array.transpose')
class Transpose(Function):
    """Function node of x.transpose(axes) (None: reverse the axes); backward
    applies the inverse permutation. Chainer: chainer.functions.array.transpose.Transpose.
    """
    label = 'transpose'

    def __init__(self, axes=None):
        self.axes = axes

    def forward(self, inputs):
        x, = inputs
        if self.axes is None:
            self.axes = tuple(range(x.ndim))[::-1]
        if sorted(a % max(x.ndim, 1) for a in self.axes) != list(range(x.ndim)):   # 0-dim: ()
            raise ValueError('transpose: axes {} are not a permutation of the '
                             '{} axes of shape {}'.format(self.axes, x.ndim, x.shape))
        return x.transpose(self.axes),

    def backward(self, inputs, grad_outputs):
        inverse = tuple(np.argsort([a % inputs[0].ndim for a in self.axes]))
        return grad_outputs[0].transpose(inverse),


@_export('functions.array.broadcast')
class BroadcastTo(Function):
    """Function node of broadcast_to(x, shape); backward sums gy back to
    x's shape. Chainer: chainer.functions.array.broadcast.BroadcastTo.
    """
    label = 'broadcast_to'

    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, inputs):
        x, = inputs
        try:
            return _xp(x).broadcast_to(x, self.shape),
        except ValueError:
            raise ValueError('broadcast_to: cannot broadcast shape {} to {}'
                             .format(x.shape, self.shape)) from None

    def backward(self, inputs, grad_outputs):
        return _sum_to(grad_outputs[0], inputs[0].shape),


@_export('functions.array.concat')
class Concat(Function):
    """Function node of concatenate(xs, axis); backward splits gy at the
    input boundaries. Chainer: chainer.functions.array.concat.Concat.
    """
    label = 'concat'

    def __init__(self, axis=1):
        self.axis = axis

    def forward(self, inputs):
        shapes = [x.shape for x in inputs]
        ndim = inputs[0].ndim
        if not -ndim <= self.axis < ndim or any(
                len(s) != ndim or s[:self.axis % ndim] + s[self.axis % ndim + 1:] !=
                shapes[0][:self.axis % ndim] + shapes[0][self.axis % ndim + 1:]
                for s in shapes):
            raise ValueError('concat: shapes {} cannot be joined along axis {}'
                             .format(shapes, self.axis))
        _check_same_dtype('concat', inputs)
        return _xp(inputs[0]).concatenate(inputs, axis=self.axis),

    def backward(self, inputs, grad_outputs):
        bounds = np.cumsum([x.shape[self.axis] for x in inputs])[:-1].tolist()
        return tuple(_xp(inputs[0]).split(grad_outputs[0], bounds, axis=self.axis))


@_export('functions.array.stack')
class Stack(Function):
    """Function node of stack(xs, axis); backward takes each slice of gy.
    Chainer: chainer.functions.array.stack.
    """
    label = 'stack'

    def __init__(self, axis=0):
        self.axis = axis

    def forward(self, inputs):
        if len({x.shape for x in inputs}) != 1:
            raise ValueError('stack: all inputs need one shape, got {}'.format(
                [x.shape for x in inputs]))
        _check_same_dtype('stack', inputs)
        return _xp(inputs[0]).stack(inputs, axis=self.axis),

    def backward(self, inputs, grad_outputs):
        gy, = grad_outputs
        return tuple(gy.take(i, axis=self.axis) for i in range(len(inputs)))


@_export('functions.array.get_item')
class GetItem(Function):
    """Function node of x[slices]; backward scatters gy into zeros of x's
    shape, adding repeated indices (add.at). Chainer: chainer.functions.array.get_item.GetItem.
    """
    label = 'get_item'

    def __init__(self, slices):
        self.slices = slices

    def forward(self, inputs):
        return inputs[0][self.slices],

    def backward(self, inputs, grad_outputs):
        x, = inputs
        xp = _xp(x)
        gx = xp.zeros_like(x)
        # Fancy indexing may pick an element twice: add.at sums the repeats.
        xp.add.at(gx, self.slices, grad_outputs[0])
        return gx,


@_export('functions', 'functions.array.reshape')
def reshape(x, shape):
    """x with a new shape of the same size (no copy where NumPy needs none).

    shape: tuple of ints, one of them may be -1. Returns x itself as a Variable
    when the shape is unchanged (no graph node, as in Chainer). Raises
    ValueError when the sizes differ. Chainer: chainer.functions.reshape.
    """
    if tuple(shape) == _input_data('reshape', x).shape:
        return as_variable(x)     # as in Chainer: no op, no graph node
    return Reshape(shape)(x)


@_export('functions', 'functions.array.transpose')
def transpose(x, axes=None):
    """x with its axes permuted: axes None (default) reverses them, else a
    permutation of range(x.ndim). Returns a Variable. Raises ValueError for an
    axes tuple that is not a permutation. Chainer: chainer.functions.transpose.
    """
    return Transpose(axes)(x)


@_export('functions', 'functions.array.depth2space')
def depth2space(X, r):
    """Subpixel rearrangement: channels become r x r spatial blocks.

    X: Variable or array (B, C * r * r, H, W); r: int block size. Output
    element (b, c, h * r + i, w * r + j) is X[b, (i * r + j) * C + c, h, w],
    so the result is (B, C, H * r, W * r). A reshape and a transpose, so the
    gradient moves back. Raises ValueError for X not 4-d or channels not a
    multiple of r * r. Chainer: chainer.functions.depth2space.
    """
    shape = _input_data('depth2space', X).shape
    if len(shape) != 4 or shape[1] % (r * r):
        raise ValueError('depth2space: X must be (B, C * r * r, H, W) with r={}, got shape '
                         '{}'.format(r, shape))
    b, c, h, w = shape
    c //= r * r
    y = transpose(reshape(X, (b, r, r, c, h, w)), (0, 3, 4, 1, 5, 2))
    return reshape(y, (b, c, h * r, w * r))


@_export('functions', 'functions.array.space2depth')
def space2depth(X, r):
    """The inverse of depth2space: r x r spatial blocks become channels.

    X: Variable or array (B, C, H, W) with H and W multiples of r. Output
    element (b, (i * r + j) * C + c, h, w) is X[b, c, h * r + i, w * r + j],
    so the result is (B, C * r * r, H / r, W / r). Raises ValueError for X
    not 4-d or H, W not multiples of r. Chainer: chainer.functions.space2depth.
    """
    shape = _input_data('space2depth', X).shape
    if len(shape) != 4 or shape[2] % r or shape[3] % r:
        raise ValueError('space2depth: X must be (B, C, H, W) with H and W multiples of '
                         'r={}, got shape {}'.format(r, shape))
    b, c, h, w = shape
    y = transpose(reshape(X, (b, c, h // r, r, w // r, r)), (0, 3, 5, 1, 2, 4))
    return reshape(y, (b, r * r * c, h // r, w // r))


@_export('functions', 'functions.array.broadcast')
def broadcast_to(x, shape):
    """x broadcast to `shape` (a tuple) by NumPy's rules; the gradient is summed
    back. Returns a Variable. Raises ValueError when x cannot be broadcast.
    Chainer: chainer.functions.broadcast_to.
    """
    return BroadcastTo(shape)(x)


@_export('functions', 'functions.array.concat')
def concat(xs, axis=1):
    """Join the Variables/arrays in the sequence `xs` along `axis` (default 1).

    All inputs need one dtype and equal sizes on every other axis. Returns a
    Variable. Raises ValueError for shapes that do not fit, TypeError for mixed
    dtypes or an empty sequence. Chainer: chainer.functions.concat.
    """
    _require_inputs('concat', xs)
    return Concat(axis)(*xs)


@_export('functions', 'functions.array.stack')
def stack(xs, axis=0):
    """Stack the Variables/arrays in `xs` along a new axis `axis` (default 0).

    All inputs need one shape and one dtype. Returns a Variable with one more
    dimension. Raises ValueError/TypeError otherwise (also for no input). Chainer: chainer.functions.stack.
    """
    _require_inputs('stack', xs)
    return Stack(axis)(*xs)


@_export('functions', 'functions.array.flatten')
def flatten(x):
    """x reshaped to one dimension of x.size elements; returns a Variable.
    Chainer: chainer.functions.flatten.
    """
    return reshape(x, (_input_data('flatten', x).size,))


@_export('functions', 'functions.array.expand_dims')
def expand_dims(x, axis):
    """x with a new axis of size 1 inserted at `axis` (-ndim-1 <= axis <= ndim).
    Returns a Variable. Raises ValueError for an axis out of bounds.
    Chainer: chainer.functions.expand_dims.
    """
    shape = list(_input_data('expand_dims', x).shape)
    if not -len(shape) - 1 <= axis <= len(shape):
        raise ValueError('expand_dims: axis {} is out of bounds for shape {}'
                         .format(axis, tuple(shape)))
    shape.insert(axis % (len(shape) + 1), 1)
    return reshape(x, shape)


@_export('functions', 'functions.array.squeeze')
def squeeze(x, axis=None):
    """x without axes of size 1: all of them (axis None, default) or the given
    int/tuple `axis`. Returns a Variable. Raises ValueError when a given axis has
    a size other than 1. Chainer: chainer.functions.squeeze.
    """
    shape = _input_data('squeeze', x).shape
    axes = _normalize_axis(axis, len(shape), 'squeeze')
    if axes is None:
        axes = tuple(i for i, n in enumerate(shape) if n == 1)
    for a in axes:
        if shape[a] != 1:
            raise ValueError('squeeze: axis {} of shape {} has size {}, not 1'
                             .format(a, shape, shape[a]))
    return reshape(x, [n for i, n in enumerate(shape) if i not in axes])


@_export('functions', 'functions.array.get_item')
def get_item(x, slices):
    """x[slices] as a Variable: ints, slices, None, Ellipsis, integer or boolean
    arrays, as NumPy indexes (a list is an array: of ints an integer index, of
    bools a mask).
    The gradient of an element picked twice is the sum of both.
    Chainer: chainer.functions.get_item (also `x[...]` on a Variable).
    """
    if isinstance(slices, list):
        # As NumPy: a list is an array index, of bools a mask (True is an int
        # to Python, so it must not become 1), of lists a 2-d index, [] empty.
        index = np.asarray(slices)
        if index.dtype.kind in 'biu':
            slices = index
        elif index.size == 0:
            slices = index.astype(np.intp)
    return GetItem(slices)(x)


@_export('functions.array.scatter_add')
class ScatterAdd(Function):
    """Function node of y = a with b added at a[slices] (repeated indices
    add up, as numpy.add.at); backward gy for a, gy[slices] for b.
    Chainer: chainer.functions.array.scatter_add.ScatterAdd.
    """
    label = 'scatter_add'

    def __init__(self, slices):
        self.slices = slices

    def forward(self, inputs):
        a, b = inputs
        _check_same_dtype('scatter_add', inputs)
        y = a.copy()
        target = y[self.slices].shape
        if target != b.shape:
            raise ValueError('scatter_add: b must have the shape {} of a[slices] (no '
                             'broadcasting, as in Chainer), got {}'.format(target, b.shape))
        _xp(a).add.at(y, self.slices, b)
        return y,

    def backward(self, inputs, grad_outputs):      # y = a + (b placed at slices)
        gy, = grad_outputs
        return gy, gy[self.slices]


@_export('functions', 'functions.array.scatter_add')
def scatter_add(a, slices, b):
    """A copy of a with b added at a[slices]; a itself is not changed.

    slices: what get_item takes (ints, slices, None, Ellipsis, integer or
    boolean arrays, a tuple of them; a list of ints is an integer array).
    Elements picked more than once get every value added. b: a Variable or
    array of a's dtype and exactly a[slices]'s shape. Returns a Variable;
    a and b both get gradients. Raises ValueError when b's shape differs.
    Chainer: chainer.functions.scatter_add.
    """
    if isinstance(slices, list) and all(isinstance(s, (int, np.integer)) for s in slices):
        slices = np.asarray(slices, dtype=np.intp)
    elif isinstance(slices, list):
        slices = tuple(slices)
    return ScatterAdd(slices)(a, b)


# ----- more shapes: flips, tiles, repeats, choices, casts --------------------

@_export('functions.array.flip')
class Flip(Function):
    """Function node of x reversed along `axis`; backward reverses gy back.
    Chainer: chainer.functions.array.flip.Flip (also FlipLR, FlipUD).
    """
    label = 'flip'

    def __init__(self, axis, label='flip'):
        self.axis, self.label = axis, label

    def forward(self, inputs):
        x, = inputs
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError('{}: axis {} is out of bounds for shape {}'.format(
                self.label, self.axis, x.shape))
        return _xp(x).flip(x, self.axis),

    def backward(self, inputs, grad_outputs):      # a flip is its own inverse
        return _xp(grad_outputs[0]).flip(grad_outputs[0], self.axis),


@_export('functions.array.tile')
class Tile(Function):
    """Function node of numpy.tile(x, reps). Backward: output index
    (r, s) on each axis (copy r of element s) is reshaped into two axes, and
    the copies are summed. Chainer: chainer.functions.array.tile.Tile.
    """
    label = 'tile'

    def __init__(self, reps):
        self.reps = reps

    def forward(self, inputs):
        return _xp(inputs[0]).tile(inputs[0], self.reps),

    def backward(self, inputs, grad_outputs):      # each element got used once per copy
        x, = inputs
        n = len(x.shape) if len(x.shape) > len(self.reps) else len(self.reps)
        reps = (1,) * (n - len(self.reps)) + self.reps
        shape = (1,) * (n - x.ndim) + x.shape
        split = [size for pair in zip(reps, shape) for size in pair]
        gy = grad_outputs[0]
        return gy.reshape(split).sum(axis=tuple(range(0, 2 * n, 2)),
                                     dtype=gy.dtype).reshape(x.shape),


@_export('functions.array.repeat')
class Repeat(Function):
    """Function node of numpy.repeat(x, repeats, axis) (axis None: x
    flattened first). Backward: each element gets the sum of the gradients of
    its copies. Chainer: chainer.functions.array.repeat.Repeat.
    """
    label = 'repeat'

    def __init__(self, repeats, axis=None):
        self.repeats, self.axis = repeats, axis

    def forward(self, inputs):
        x, = inputs
        if self.axis is not None and not -x.ndim <= self.axis < x.ndim:
            raise ValueError('repeat: axis {} is out of bounds for shape {}'.format(
                self.axis, x.shape))
        repeats = self.repeats[0] if len(self.repeats) == 1 else list(self.repeats)
        return _xp(x).repeat(x, repeats, self.axis),

    def backward(self, inputs, grad_outputs):      # the copies' gradients add up
        x, = inputs
        gy, = grad_outputs
        xp = _xp(gy)
        source = (x.size,) if self.axis is None else x.shape
        axis = 0 if self.axis is None else self.axis % x.ndim
        n = source[axis]
        if len(self.repeats) == 1:                 # copies sit side by side: reshape and sum
            split = source[:axis] + (n, self.repeats[0]) + source[axis + 1:]
            gx = gy.reshape(split).sum(axis=axis + 1, dtype=gy.dtype)
        else:                                      # uneven copies: scatter-add by index
            index = xp.asarray(np.repeat(np.arange(n), self.repeats))
            moved = xp.moveaxis(gy, axis, 0)
            gx = xp.zeros((n,) + moved.shape[1:], gy.dtype)
            xp.add.at(gx, index, moved)
            gx = xp.moveaxis(gx, 0, axis)
        return gx.reshape(x.shape),


@_export('functions.array.where')
class Where(Function):
    """Function node of y = x where condition, else y (condition, x and y
    broadcast). Backward: gy goes to x where condition holds and to y
    elsewhere, each summed down to its shape.
    Chainer: chainer.functions.array.where.Where.
    """
    label = 'where'
    input_names = ('x', 'y')

    def __init__(self, condition):
        self.condition = condition

    def forward(self, inputs):
        x, y = inputs
        _check_dtypes('where', x, y)
        return _xp(x).where(self.condition, x, y),

    def backward(self, inputs, grad_outputs):      # each element came from x or from y
        x, y = inputs
        gy, = grad_outputs
        xp = _xp(gy)
        zero = gy.dtype.type(0)
        return (_sum_to(xp.where(self.condition, gy, zero), x.shape),
                _sum_to(xp.where(self.condition, zero, gy), y.shape))


@_export('functions.array.cast')
class Cast(Function):
    """Function node of x.astype(typ); backward casts gy back to x's dtype
    (no gradient for an integer x). Chainer: chainer.functions.array.cast.Cast.
    """
    label = 'cast'

    def __init__(self, typ):
        self.typ = typ

    def forward(self, inputs):
        return inputs[0].astype(self.typ, copy=False),

    def backward(self, inputs, grad_outputs):      # only the dtype changed
        x, = inputs
        if x.dtype.kind != 'f':
            return None,
        return grad_outputs[0].astype(x.dtype, copy=False),


@_export('functions.array.separate')
class Separate(Function):
    """Function node that cuts x along `axis` into x.shape[axis] arrays, that
    axis removed. Backward stacks the gradients again (zeros for an output
    that got none). Chainer: chainer.functions.array.separate.Separate.
    """
    label = 'separate'

    def __init__(self, axis=0):
        self.axis = axis

    def forward(self, inputs):
        x, = inputs
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError('separate: axis {} is out of bounds for shape {}'.format(
                self.axis, x.shape))
        return tuple(x.take(i, axis=self.axis) for i in range(x.shape[self.axis]))

    def backward(self, inputs, grad_outputs):      # piece i is slice i of x
        x, = inputs
        xp = _xp(x)
        shape = x.shape[:self.axis % x.ndim] + x.shape[self.axis % x.ndim + 1:]
        grads = [xp.zeros(shape, x.dtype) if g is None else g for g in grad_outputs]
        return xp.stack(grads, axis=self.axis),


def _int_or_ints(label, name, value):
    """`value` (an int or a tuple/list of ints) as a tuple, checked >= 0."""
    values = (value,) if isinstance(value, (int, np.integer)) else value
    if not isinstance(values, (tuple, list)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise TypeError('{}: {} must be an int or a tuple of ints, got {!r}'.format(
            label, name, value))
    if any(v < 0 for v in values):
        raise ValueError('{}: {} must be >= 0, got {!r}'.format(label, name, value))
    return tuple(int(v) for v in values)


@_export('functions', 'functions.array.flip')
def flip(x, axis):
    """x reversed along the int `axis` (negative counts from the end); the
    gradient is reversed back. Returns a Variable. Raises TypeError for a
    non-int axis, ValueError for an axis out of bounds.
    Chainer: chainer.functions.flip.
    """
    return Flip(_int_axis('flip', axis))(x)


@_export('functions', 'functions.array.fliplr')
def fliplr(a):
    """a reversed along axis 1 (left/right); a needs 2 or more dimensions
    (else ValueError). Returns a Variable. Chainer: chainer.functions.fliplr.
    """
    if _input_data('fliplr', a).ndim < 2:
        raise ValueError('fliplr: needs 2 or more dimensions, got shape {}'.format(
            _input_data('fliplr', a).shape))
    return Flip(1, 'fliplr')(a)


@_export('functions', 'functions.array.flipud')
def flipud(a):
    """a reversed along axis 0 (up/down); a needs 1 or more dimensions (else
    ValueError). Returns a Variable. Chainer: chainer.functions.flipud.
    """
    if _input_data('flipud', a).ndim < 1:
        raise ValueError('flipud: needs 1 or more dimensions, got shape ()')
    return Flip(0, 'flipud')(a)


@_export('functions', 'functions.array.tile')
def tile(x, reps):
    """x repeated as a whole `reps` times along each axis, as numpy.tile.

    reps: an int or a tuple of ints >= 0; when reps and x.ndim differ, the
    shorter one is padded with 1s at the front. The gradient of an element is
    the sum over its copies. Returns a Variable. Raises TypeError for reps of
    another type, ValueError for a negative one. Chainer: chainer.functions.tile.
    """
    return Tile(_int_or_ints('tile', 'reps', reps))(x)


@_export('functions', 'functions.array.repeat')
def repeat(x, repeats, axis=None):
    """Each element of x repeated, as numpy.repeat.

    repeats: an int (every element that often) or a tuple of ints >= 0, one
    per element along `axis`; axis: an int, or None (default) to repeat the
    elements of x flattened (the result is then 1-d). The gradient of an
    element is the sum over its copies. Returns a Variable. Raises TypeError
    for repeats or axis of another type, ValueError for a negative count, an
    axis out of bounds or a tuple of the wrong length.
    Chainer: chainer.functions.repeat.
    """
    repeats = _int_or_ints('repeat', 'repeats', repeats)
    if axis is not None:
        axis = _int_axis('repeat', axis)
    return Repeat(repeats, axis)(x)


@_export('functions', 'functions.array.where')
def where(condition, x, y):
    """Elementwise choice: x where `condition` is True, else y.

    condition: a bool array or Variable (no gradient); x, y: Variables or
    arrays of one dtype. The shapes of all three broadcast. The gradient goes
    to x where condition holds and to y elsewhere. Returns a Variable. Raises
    TypeError for a non-bool condition or differing dtypes, ValueError for
    shapes that do not broadcast. Chainer: chainer.functions.where.
    """
    condition = _input_data('where', condition)
    if condition.dtype != np.bool_:
        raise TypeError('where: condition must be a bool array, got dtype {}'.format(
            condition.dtype))
    shapes = [condition.shape, _input_data('where', x).shape, _input_data('where', y).shape]
    try:
        np.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError('where: shapes of condition, x and y do not broadcast: {}'
                         .format(shapes)) from None
    return Where(condition)(x, y)


@_export('functions', 'functions.array.cast')
def cast(x, typ):
    """x converted to dtype `typ` (anything numpy.dtype accepts: numpy.float32,
    'float16', ...). The gradient is cast back to x's dtype (none for an
    integer x). If x already has that dtype, x itself is returned as a
    Variable when backprop is off (config.enable_backprop False), else a new
    graph node. Raises TypeError for a typ that is no dtype.
    Chainer: chainer.functions.cast.
    """
    dtype = np.dtype(typ)
    if _input_data('cast', x).dtype == dtype and not config.enable_backprop:
        return as_variable(x)
    return Cast(dtype)(x)


@_export('functions', 'functions.array.separate')
def separate(x, axis=0):
    """The slices of x along `axis` (default 0), that axis removed: a tuple of
    x.shape[axis] Variables (x of shape (2, 3, 4) with axis=1 gives three of
    shape (2, 4)). Backward stacks the gradients again. Raises ValueError for
    an axis out of bounds. Chainer: chainer.functions.separate.
    """
    ys = Separate(_int_axis('separate', axis))(x)
    return ys if isinstance(ys, tuple) else (ys,)


# ----- splitting, padding, moving axes, diagonals, contractions --------------
# Most of these are again pure moves: backward sends each gradient element
# back to the place its value came from.  tensordot is a matrix product over
# chosen axes, so its backward is two more tensordots.

@_export('functions.array.split_axis')
class SplitAxis(Function):
    """Function node that cuts x along `axis` at the given indices (or into
    equal sections); backward concatenates the gradients again (zeros for
    a piece that got none). Chainer: chainer.functions.array.split_axis.SplitAxis.
    """
    label = 'split_axis'

    def __init__(self, indices_or_sections, axis):
        self.indices_or_sections, self.axis = indices_or_sections, axis

    def forward(self, inputs):
        x, = inputs
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError('split_axis: axis {} is out of bounds for shape {}'.format(
                self.axis, x.shape))
        sections = self.indices_or_sections
        if isinstance(sections, int) and x.shape[self.axis] % sections:
            raise ValueError('split_axis: axis {} of shape {} (size {}) does not split '
                             'into {} equal sections'.format(self.axis, x.shape,
                                                             x.shape[self.axis], sections))
        if not isinstance(sections, int) and sections and sections[-1] > x.shape[self.axis]:
            # NumPy would return empty pieces past the end; Chainer refuses.
            raise ValueError('split_axis: index {} is past the end of axis {} of shape {}'
                             .format(sections[-1], self.axis, x.shape))
        ys = tuple(_xp(x).split(x, sections, axis=self.axis))
        self.shapes = [y.shape for y in ys]      # for pieces that get no gradient
        return ys

    def backward(self, inputs, grad_outputs):      # the pieces side by side again
        x, = inputs
        xp = _xp(x)
        grads = [xp.zeros(shape, x.dtype) if g is None else g
                 for g, shape in zip(grad_outputs, self.shapes)]
        return xp.concatenate(grads, axis=self.axis),


@_export('functions.array.pad')
class Pad(Function):
    """Function node of numpy.pad(x, pad_width, mode, **keywords). Backward:
    'constant' padding adds new numbers, so gx is the middle of gy; 'edge',
    'reflect', 'symmetric' and 'wrap' copy elements of x into the border,
    so each element gets the gradients of all its copies (found by padding
    the element indices the same way). Chainer: chainer.functions.array.pad.Pad.
    """
    label = 'pad'

    def __init__(self, pad_width, mode, keywords):
        self.pad_width, self.mode, self.keywords = pad_width, mode, keywords

    def forward(self, inputs):
        x, = inputs
        _require_float('pad', x)
        try:
            self.widths = np.broadcast_to(np.asarray(self.pad_width, dtype=np.intp),
                                          (x.ndim, 2))
        except ValueError:
            raise ValueError('pad: pad_width {!r} does not fit the {} axes of shape {}'
                             .format(self.pad_width, x.ndim, x.shape)) from None
        if (self.widths < 0).any():
            raise ValueError('pad: pad_width must be >= 0, got {!r}'.format(self.pad_width))
        if x.ndim == 0:             # no axis to pad (NumPy's pad fails on it): x itself
            return x.copy(),
        return _xp(x).pad(x, self.widths, mode=self.mode, **self.keywords),

    def backward(self, inputs, grad_outputs):      # each element of x gets its copies' gy
        x, = inputs
        gy, = grad_outputs
        if self.mode == 'constant' or x.ndim == 0:
            return gy[tuple(slice(before, before + n)
                            for (before, _), n in zip(self.widths, x.shape))],
        xp = _xp(x)
        source = xp.pad(xp.arange(x.size).reshape(x.shape), self.widths, mode=self.mode)
        gx = xp.bincount(source.ravel(), weights=gy.ravel(), minlength=x.size)
        return gx.astype(x.dtype, copy=False).reshape(x.shape),


@_export('functions.array.broadcast')
class Broadcast(Function):
    """Function node that broadcasts all inputs to one shape; backward sums
    each gradient back to its input's shape.
    Chainer: chainer.functions.array.broadcast.Broadcast.
    """
    label = 'broadcast'

    def forward(self, inputs):
        try:
            shape = np.broadcast_shapes(*[x.shape for x in inputs])
        except ValueError:
            raise ValueError('broadcast: shapes {} do not broadcast'.format(
                [x.shape for x in inputs])) from None
        return tuple(_xp(x).broadcast_to(x, shape) for x in inputs)

    def backward(self, inputs, grad_outputs):      # a stretched input was used many times
        return tuple(None if g is None else _sum_to(g, x.shape)
                     for x, g in zip(inputs, grad_outputs))


@_export('functions.array.copy')
class Copy(Function):
    """Function node that sends x to another device; backward sends gy back
    to x's device. Chainer: chainer.functions.array.copy.Copy.
    """
    label = 'copy'

    def __init__(self, device):
        self.device = device

    def forward(self, inputs):
        return self.device.send(inputs[0]),

    def backward(self, inputs, grad_outputs):      # the same numbers, moved back
        return _device_of(inputs[0]).send(grad_outputs[0]),


@_export('functions.array.diagonal')
class Diagonal(Function):
    """Function node of numpy.diagonal(x, offset, axis1, axis2) (the diagonal
    as the last axis); backward writes gy onto the same diagonal of zeros.
    Chainer: chainer.functions.array.diagonal.Diagonal.
    """
    label = 'diagonal'

    def __init__(self, offset, axis1, axis2):
        self.offset, self.axis1, self.axis2 = offset, axis1, axis2

    def forward(self, inputs):
        x, = inputs
        return _xp(x).diagonal(x, self.offset, self.axis1, self.axis2).copy(),

    def backward(self, inputs, grad_outputs):      # y_i = x[i, i + offset]
        x, = inputs
        gy, = grad_outputs
        xp = _xp(x)
        gx = xp.zeros_like(x)
        square = xp.moveaxis(gx, (self.axis1, self.axis2), (-2, -1))   # a view into gx
        i = xp.arange(gy.shape[-1])
        if self.offset >= 0:
            square[..., i, i + self.offset] = gy
        else:
            square[..., i - self.offset, i] = gy
        return gx,


@_export('functions.math.tensordot')
class TensorDot(Function):
    """Function node of numpy.tensordot(a, b, (a_axes, b_axes)): a sum over
    the paired axes. Backward: ga = gy . b summed over b's free axes, gb =
    a . gy summed over a's free axes, each transposed back to its input's
    axis order. Chainer: chainer.functions.math.tensordot.TensorDot.
    """
    label = 'tensordot'
    input_names = ('a', 'b')

    def __init__(self, axes):
        self.axes = axes

    def forward(self, inputs):
        a, b = inputs
        if a.dtype != b.dtype:      # Chainer v7: mixed floats give NumPy's promoted dtype
            _mixed_floats(self, a, b)
        _require_float('tensordot', a)
        if isinstance(self.axes, (int, np.integer)):
            if not 0 <= self.axes <= min(a.ndim, b.ndim):
                raise ValueError('tensordot: axes={} needs that many axes in a (shape {}) '
                                 'and b (shape {})'.format(self.axes, a.shape, b.shape))
            a_axes, b_axes = range(a.ndim - self.axes, a.ndim), range(self.axes)
        else:
            a_axes, b_axes = [(v,) if isinstance(v, (int, np.integer)) else v
                              for v in self.axes]
        try:
            self.a_axes = [_normalize_axis(int(i), a.ndim, 'tensordot')[0] for i in a_axes]
            self.b_axes = [_normalize_axis(int(i), b.ndim, 'tensordot')[0] for i in b_axes]
        except TypeError:
            raise TypeError('tensordot: axes must be an int or a pair of ints or int '
                            'sequences, got {!r}'.format(self.axes)) from None
        if len(self.a_axes) != len(self.b_axes) or any(
                a.shape[i] != b.shape[j] for i, j in zip(self.a_axes, self.b_axes)):
            raise ValueError('tensordot: axes {} of a (shape {}) and {} of b (shape {}) '
                             'do not pair up'.format(self.a_axes, a.shape, self.b_axes,
                                                     b.shape))
        return _xp(a).tensordot(a, b, (self.a_axes, self.b_axes)),

    def backward(self, inputs, grad_outputs):      # dY/dA: contract gy with B's free axes
        a, b = inputs
        gy, = grad_outputs
        xp = _xp(a)
        a_free = [i for i in range(a.ndim) if i not in self.a_axes]
        b_free = [j for j in range(b.ndim) if j not in self.b_axes]
        n = len(a_free)
        ga = xp.tensordot(gy, b, (list(range(n, gy.ndim)), b_free))
        ga_axes = a_free + [self.a_axes[self.b_axes.index(j)] for j in sorted(self.b_axes)]
        gb = xp.tensordot(a, gy, (a_free, list(range(n))))
        gb_axes = [self.b_axes[self.a_axes.index(i)] for i in sorted(self.a_axes)] + b_free
        ga = ga.transpose(tuple(np.argsort(ga_axes).tolist()))
        gb = gb.transpose(tuple(np.argsort(gb_axes).tolist()))
        return ga.astype(a.dtype, copy=False), gb.astype(b.dtype, copy=False)


@_export('functions.math.sum')
class SumTo(Function):
    """Function node that sums x down to `shape` (undoing a broadcast);
    backward broadcasts gy back. Chainer: chainer.functions.math.sum.SumTo.
    """
    label = 'sum_to'

    def __init__(self, shape):
        self.shape = shape

    def forward(self, inputs):
        x, = inputs
        lead = x.ndim - len(self.shape)
        if lead < 0 or any(n not in (1, m) for n, m in zip(self.shape, x.shape[lead:])):
            raise ValueError('sum_to: shape {} cannot be summed to {} (x would have to '
                             'broadcast to it)'.format(x.shape, self.shape))
        return _sum_to(x, self.shape),

    def backward(self, inputs, grad_outputs):      # each x_i fed one y_j
        return _xp(inputs[0]).broadcast_to(grad_outputs[0], inputs[0].shape).copy(),


@_export('functions.array.select_item')
class SelectItem(Function):
    """Function node of y[i] = x[i, t[i]]; backward puts gy[i] at [i, t[i]]
    of zeros (no gradient for t). Chainer: chainer.functions.array.select_item.SelectItem.
    """
    label = 'select_item'
    input_names = ('x', 't')

    def forward(self, inputs):
        x, t = inputs
        if t.dtype.kind not in 'iu' or x.ndim != 2 or t.shape != x.shape[:1]:
            raise ValueError('select_item: needs x of 2 dimensions (B, N) and integer t '
                             'of shape (B,), got x {} {} and t {} {}'.format(
                                 x.shape, x.dtype, t.shape, t.dtype))
        xp = _xp(x)
        # A label out of range would wrap around or fail later; reading the
        # labels on a GPU waits for it, so there only in debug mode.
        if (xp is np or config.debug) and ((t < 0) | (t >= x.shape[1])).any():
            raise ValueError('select_item: labels t must be in [0, {}), got {}'.format(
                x.shape[1], t))
        self.rows = xp.arange(len(t))
        return x[self.rows, t],

    def backward(self, inputs, grad_outputs):      # only the picked element gets gy
        x, t = inputs
        gx = _xp(x).zeros_like(x)
        gx[self.rows, t] = grad_outputs[0]
        return gx, None


@_export('functions.array.permutate')
class Permutate(Function):
    """Function node of y = x[indices] along `axis` (inv=True: y[indices] = x);
    backward applies the inverse permutation to gy.
    Chainer: chainer.functions.array.permutate.Permutate.
    """
    label = 'permutate'

    def __init__(self, indices, axis, inv):
        self.indices, self.axis, self.inv = indices, axis, inv

    def forward(self, inputs):
        x, = inputs
        if not -x.ndim <= self.axis < x.ndim or len(self.indices) != x.shape[self.axis]:
            raise ValueError('permutate: indices of length {} do not fit axis {} of '
                             'shape {}'.format(len(self.indices), self.axis, x.shape))
        xp = _xp(x)
        indices = xp.asarray(self.indices)
        # Checking that the indices are a permutation reads them: on a GPU
        # that waits, so there only in debug mode.
        if (xp is np or config.debug) and not (
                xp.sort(indices) == xp.arange(len(indices))).all():
            raise ValueError('permutate: indices must be a permutation of 0..{}, got {}'
                             .format(len(indices) - 1, self.indices))
        inverse = xp.empty_like(indices)
        inverse[indices] = xp.arange(len(indices), dtype=indices.dtype)
        self.forward_order, self.backward_order = (
            (inverse, indices) if self.inv else (indices, inverse))
        return x.take(self.forward_order, axis=self.axis),

    def backward(self, inputs, grad_outputs):      # undo the permutation
        return grad_outputs[0].take(self.backward_order, axis=self.axis),


@_export('functions', 'functions.array.split_axis')
def split_axis(x, indices_or_sections, axis, force_tuple=True):
    """x cut into pieces along `axis`, as numpy.split.

    indices_or_sections: an int n (n equal pieces; the size along axis must
    divide by n) or a sorted sequence of ints (the cut points). axis: an int.
    Returns a tuple of Variables; with force_tuple=False a single piece is
    returned as a Variable, not a 1-tuple. Backward concatenates the pieces'
    gradients. Raises ValueError for an uneven split, unsorted indices or an
    axis out of bounds, TypeError for indices that are not ints.
    Chainer: chainer.functions.split_axis.
    """
    axis = _int_axis('split_axis', axis)
    if isinstance(indices_or_sections, (int, np.integer)) and not isinstance(
            indices_or_sections, bool):
        if indices_or_sections <= 0:
            raise ValueError('split_axis: the number of sections must be > 0, got {}'
                             .format(indices_or_sections))
        sections = int(indices_or_sections)
    else:
        sections = list(np.asarray(as_array(indices_or_sections)).tolist()) \
            if not isinstance(indices_or_sections, (list, tuple)) else list(indices_or_sections)
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                   for i in sections):
            raise TypeError('split_axis: indices_or_sections must be an int or a sequence '
                            'of ints, got {!r}'.format(indices_or_sections))
        if sections != sorted(sections):
            raise ValueError('split_axis: indices must be sorted, got {}'.format(sections))
        sections = [int(i) for i in sections]
    ys = SplitAxis(sections, axis)(x)
    ys = ys if isinstance(ys, tuple) else (ys,)
    return ys if force_tuple or len(ys) != 1 else ys[0]


_PAD_MODES = ('constant', 'edge', 'reflect', 'symmetric', 'wrap')


@_export('functions', 'functions.array.pad')
def pad(x, pad_width, mode, **keywords):
    """x with a border added to each axis, as numpy.pad.

    x: float Variable or array. pad_width: an int (that many before and after
    on every axis), a pair (before, after) for every axis, or one pair per
    axis. mode: 'constant' (keyword constant_values, default 0), or one of
    'edge', 'reflect', 'symmetric', 'wrap', whose borders copy elements of x
    (their gradients flow back to those elements). Returns a Variable.
    Raises ValueError for another mode or a pad_width that does not fit,
    TypeError for integer x. Chainer: chainer.functions.pad.
    """
    if mode not in _PAD_MODES:
        raise ValueError('pad: mode must be one of {}, got {!r}'.format(_PAD_MODES, mode))
    return Pad(pad_width, mode, keywords)(x)


def _axes_tuple(label, name, axes, ndim):
    values = (axes,) if isinstance(axes, (int, np.integer)) else axes
    if not isinstance(values, (tuple, list)) or not all(
            isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in values):
        raise TypeError('{}: {} must be an int or a tuple of ints, got {!r}'.format(
            label, name, axes))
    for a in values:
        if not -ndim <= a < ndim:
            raise ValueError('{}: {} {} is out of bounds for {} dimensions'.format(
                label, name, a, ndim))
    values = [int(a) % ndim for a in values]
    if len(set(values)) != len(values):
        raise ValueError('{}: {} {!r} repeats an axis'.format(label, name, axes))
    return values


@_export('functions', 'functions.array.moveaxis')
def moveaxis(x, source, destination):
    """x with the axes `source` moved to the places `destination` (ints or
    tuples of ints of one length, negative from the end), the other axes
    keeping their order, as numpy.moveaxis. Returns a Variable (a
    transpose). Raises TypeError for non-int axes, ValueError for axes out of
    bounds, repeated or of differing lengths. Chainer: chainer.functions.moveaxis.
    """
    ndim = _input_data('moveaxis', x).ndim
    source = _axes_tuple('moveaxis', 'source', source, ndim)
    destination = _axes_tuple('moveaxis', 'destination', destination, ndim)
    if len(source) != len(destination):
        raise ValueError('moveaxis: source {} and destination {} differ in length'.format(
            source, destination))
    order = [a for a in range(ndim) if a not in source]
    for place, axis in sorted(zip(destination, source)):
        order.insert(place, axis)
    return transpose(x, tuple(order))


@_export('functions', 'functions.array.rollaxis')
def rollaxis(x, axis, start=0):
    """x with axis `axis` moved to just before position `start` (default 0),
    as numpy.rollaxis: -ndim <= axis < ndim, -ndim <= start <= ndim. Returns a
    Variable (a transpose). Raises TypeError for non-int arguments,
    ValueError for ones out of bounds. Chainer: chainer.functions.rollaxis.
    """
    ndim = _input_data('rollaxis', x).ndim
    axis = _int_axis('rollaxis', axis)
    if not isinstance(start, (int, np.integer)) or isinstance(start, bool):
        raise TypeError('rollaxis: start must be an int, got {!r}'.format(start))
    if not -ndim <= axis < ndim or not -ndim <= start <= ndim:
        raise ValueError('rollaxis: axis {} or start {} is out of bounds for {} dimensions'
                         .format(axis, start, ndim))
    axis, start = axis % ndim, (start + ndim if start < 0 else start)
    if axis < start:
        start -= 1                 # the axis leaves its old place first
    order = [a for a in range(ndim) if a != axis]
    order.insert(start, axis)
    return transpose(x, tuple(order))


@_export('functions', 'functions.array.broadcast')
def broadcast(*args):
    """The inputs broadcast to one common shape, by NumPy's rules.

    args: Variables or arrays (one or more). Returns a tuple of Variables, or
    for a single input that input as a Variable (as in Chainer). Gradients
    are summed back to each input's shape. Raises ValueError for no input or
    shapes that do not broadcast. Chainer: chainer.functions.broadcast.
    """
    _require_inputs('broadcast', args)
    if len(args) == 1:
        return as_variable(_input_data('broadcast', args[0]) if not isinstance(
            args[0], Variable) else args[0])
    return Broadcast()(*args)


def _copy(x, dst):     # F.copy (the stdlib module's name: see the start of this chapter)
    """x copied to device `dst`: -1, '@numpy' or a CpuDevice for the CPU, N,
    '@cupy:N' or a GpuDevice for GPU N (anything get_device accepts). On the
    same device no copy is made. The gradient is sent back to x's device.
    Returns a Variable. Raises ValueError for an unknown device specifier.
    Chainer: chainer.functions.copy.
    """
    _input_data('copy', x)
    return Copy(get_device(dst))(x)
_export('functions.array.copy', copy=_copy)
_export('functions', copy=_copy)

# _sum, _max, _min, _pow and _copy are written so that Python's builtins (and
# the module copy) keep their names in this file; outside, help() and repr()
# show Chainer's names.
for _function, _name in ((_sum, 'sum'), (_max, 'max'), (_min, 'min'), (_pow, 'pow'),
                         (_copy, 'copy')):
    _function.__name__ = _function.__qualname__ = _name
del _function, _name


@_export('functions', 'functions.array.dstack')
def dstack(xs):
    """The sequence xs joined along a third axis, as numpy.dstack: 1-d
    inputs (N,) become (1, N, 1), 2-d (M, N) become (M, N, 1), then all are
    concatenated along axis 2. All need one dtype and equal other sizes.
    Returns a Variable. Raises ValueError for no input or shapes that do not
    fit. Chainer: chainer.functions.dstack.
    """
    _require_inputs('dstack', xs)
    shaped = []
    for x in xs:
        shape = _input_data('dstack', x).shape
        if len(shape) < 3:
            shape = {0: (1, 1, 1), 1: (1,) + shape + (1,), 2: shape + (1,)}[len(shape)]
            x = reshape(x, shape)
        shaped.append(x)
    return Concat(axis=2)(*shaped)


@_export('functions', 'functions.array.diagonal')
def diagonal(x, offset=0, axis1=0, axis2=1):
    """The diagonal x[..., i, i + offset] of the two axes axis1 and axis2
    (defaults 0 and 1), as numpy.diagonal: those axes are removed and the
    diagonal becomes the last axis. offset > 0 goes above the main diagonal,
    < 0 below. Returns a Variable (a copy); the gradient goes back onto the
    diagonal. Raises ValueError for x with fewer than 2 dimensions or equal
    or out-of-bounds axes. Chainer: chainer.functions.diagonal.
    """
    ndim = _input_data('diagonal', x).ndim
    if ndim < 2:
        raise ValueError('diagonal: x needs 2 or more dimensions, got {}'.format(ndim))
    axis1, axis2 = _axes_tuple('diagonal', 'axes', (axis1, axis2), ndim)
    return Diagonal(int(offset), axis1, axis2)(x)


@_export('functions', 'functions.math.tensordot')
def tensordot(a, b, axes=2):
    """Tensor dot product: sum of a * b over pairs of axes, as numpy.tensordot.

    a, b: float Variables or arrays of one dtype. axes: an int n (the last n
    axes of a with the first n of b; default 2) or a pair (a_axes, b_axes) of
    ints or equal-length int sequences. Returns a Variable whose shape is a's
    remaining axes then b's. Raises ValueError when the paired sizes differ,
    TypeError for integer or differing dtypes.
    Chainer: chainer.functions.tensordot.
    """
    if not isinstance(axes, (int, np.integer)) and not (
            isinstance(axes, (tuple, list)) and len(axes) == 2):
        raise TypeError('tensordot: axes must be an int or a pair (a_axes, b_axes), got '
                        '{!r}'.format(axes))
    return TensorDot(axes)(a, b)


def _einsum_parse(subscripts, shapes):
    """Explicit subscripts for `shapes`: ([one string per operand], output),
    each '...' replaced by capital letters, and the implicit output (the
    letters used once, sorted, after the '...' axes) written out."""
    if not isinstance(subscripts, str):
        raise TypeError('einsum: subscripts must be a str, got {!r}'.format(subscripts))
    spec = subscripts.replace(' ', '')
    inputs, arrow, output = spec.partition('->')
    inputs = inputs.split(',')
    if len(inputs) != len(shapes):
        raise ValueError('einsum: {!r} names {} operands, got {}'.format(
            subscripts, len(inputs), len(shapes)))
    for part in inputs + [output]:
        letters = part.replace('...', '')
        if not all('a' <= c <= 'z' or 'A' <= c <= 'Z' for c in letters) or \
                part.count('...') > 1:
            raise ValueError('einsum: bad subscripts {!r} (letters, one optional '
                             '"..." per operand, commas and one "->")'.format(subscripts))
    spare = [c for c in 'ZYXWVUTSRQPONMLKJIHGFEDCBA' if c not in spec]
    widest = 0
    expanded = []
    for part, shape in zip(inputs, shapes):
        width = len(shape) - len(part.replace('...', ''))
        if width < 0 or (width > 0 and '...' not in part):
            raise ValueError('einsum: subscripts {!r} do not fit an operand of shape {}'
                             .format(part, shape))
        widest = width if width > widest else widest
        expanded.append((part, width))
    ellipsis_all = ''.join(spare[:widest])
    result = [part.replace('...', ellipsis_all[widest - width:]) for part, width in expanded]
    if arrow:
        output = output.replace('...', ellipsis_all)
    else:
        joined = ''.join(p.replace('...', '') for p in inputs)
        output = ellipsis_all + ''.join(sorted(c for c in set(joined) if joined.count(c) == 1))
    for c in output:
        if not any(c in part for part in result):
            raise ValueError('einsum: output letter {!r} of {!r} is in no operand'
                             .format(c, subscripts))
    return result, output


class Einsum(Function):
    """Function node of numpy.einsum with explicit subscripts.  Backward: the
    gradient for operand k is again an einsum, of gy with the other operands,
    onto k's letters; a letter summed in k alone is broadcast back, and a
    repeated letter (a diagonal, 'ii') puts the gradient on that diagonal.
    Chainer: chainer.functions.math.einsum.EinSum.
    """
    label = 'einsum'

    def __init__(self, subscripts):
        self.subscripts = subscripts

    def forward(self, inputs):
        _require_float('einsum', *inputs)
        _check_same_dtype('einsum', inputs)
        self.ins, self.out = _einsum_parse(self.subscripts, [a.shape for a in inputs])
        spec = ','.join(self.ins) + '->' + self.out
        return _xp(inputs[0]).asarray(_xp(inputs[0]).einsum(spec, *inputs)),

    def backward(self, inputs, grad_outputs):      # linear in each operand
        xp = _xp(inputs[0])
        gy, = grad_outputs
        grads = []
        for k, (a, part) in enumerate(zip(inputs, self.ins)):
            others = [(p, x) for i, (p, x) in enumerate(zip(self.ins, inputs)) if i != k]
            seen = self.out + ''.join(p for p, _ in others)
            unique = ''.join(c for i, c in enumerate(part) if part.index(c) == i)
            kept = ''.join(c for c in unique if c in seen)
            spec = ','.join([self.out] + [p for p, _ in others]) + '->' + kept
            g = xp.einsum(spec, gy, *[x for _, x in others])
            size = {c: a.shape[part.index(c)] for c in unique}
            for i, c in enumerate(kept):          # a size-1 axis that einsum broadcast
                if g.shape[i] != size[c] and size[c] == 1:
                    g = g.sum(axis=i, keepdims=True)      # a's axis was broadcast: sum back
                elif g.shape[i] != size[c]:               # the others' axis was: spread out
                    g = xp.broadcast_to(g, g.shape[:i] + (size[c],) + g.shape[i + 1:])
            g = g.reshape([size[c] if c in kept else 1 for c in unique])
            g = xp.broadcast_to(g, [size[c] for c in unique])
            if len(unique) < len(part):               # a diagonal: write g onto it
                full = xp.zeros_like(a)
                index = tuple(xp.arange(size[c]).reshape(
                    [-1 if u == c else 1 for u in unique]) for c in part)
                full[index] = g
                g = full
            grads.append(xp.asarray(g, dtype=a.dtype, order='C'))   # 0-dim stays 0-dim
        return tuple(grads)


@_export('functions', 'functions.math.einsum')
def einsum(subscripts, *operands):
    """Einstein summation, as numpy.einsum: einsum('ij,jk->ik', a, b) is a @ b.

    subscripts: a str of letters per operand, separated by commas, with an
    optional '...' for leading axes and an optional '->output' (without it
    the output is the letters used once, sorted). operands: float Variables
    or arrays of one dtype; axes of size 1 broadcast as in NumPy (Chainer
    wants equal '...' shapes). Each operand gets a gradient (repeated
    letters such as 'ii->i' included). Returns a Variable. Raises ValueError for
    subscripts that do not fit the operands, TypeError for integer or
    differing dtypes. Chainer: chainer.functions.einsum.
    """
    _require_inputs('einsum', operands)
    return Einsum(subscripts)(*operands)


@_export('functions', 'functions.math.matmul')
def batch_matmul(a, b, transa=False, transb=False):
    """Matrix products of two batches of matrices (deprecated in Chainer for
    matmul, and warns DeprecationWarning as Chainer does).

    a, b: float Variables or arrays of one dtype, each (B, M, N) (B matrices)
    or (B, N) (B column vectors, N x 1). transa/transb (default False)
    transpose each matrix first. Returns a 3-d Variable (B, M, K). Raises
    ValueError for inputs that are not 2-d or 3-d or whose sizes do not fit.
    Chainer: chainer.functions.batch_matmul.
    """
    warnings.warn('batch_matmul is deprecated. Use matmul instead.', DeprecationWarning)
    shapes = [_input_data('batch_matmul', v).shape for v in (a, b)]
    _check_dtypes('batch_matmul', _input_data('batch_matmul', a),     # Chainer v7 mixes
                  _input_data('batch_matmul', b))                     # them in matmul only
    if any(len(s) not in (2, 3) for s in shapes):
        raise ValueError('batch_matmul: a and b need 2 or 3 dimensions, got shapes {} '
                         'and {}'.format(*shapes))
    a, b = [reshape(v, s if len(s) == 3 else s + (1,)) for v, s in zip((a, b), shapes)]
    return MatMul(transa, transb)(a, b)


@_export('functions', 'functions.math.sum')
def sum_to(x, shape):
    """x summed down to `shape`, the reverse of broadcast_to: leading axes
    are summed away and axes where shape has 1 are summed to 1. Returns x
    itself as a Variable when the shape is already `shape`. Raises
    ValueError when x could not have been broadcast from `shape`.
    Chainer: chainer.functions.sum_to.
    """
    shape = tuple(shape)
    if _input_data('sum_to', x).shape == shape:
        return as_variable(x)
    return SumTo(shape)(x)


@_export('functions', 'functions.array.select_item')
def select_item(x, t):
    """y[i] = x[i, t[i]]: one element of each row of x.

    x: Variable or array (B, N); t: integer array (B,), each in [0, N).
    Returns a Variable (B,); the gradient goes to the picked elements only.
    Raises ValueError for other shapes, non-integer t or a label out of range
    (on a GPU only in debug mode, as in Chainer).
    Chainer: chainer.functions.select_item.
    """
    return SelectItem()(x, t)


@_export('functions', 'functions.array.permutate')
def permutate(x, indices, axis=0, inv=False):
    """x reordered along `axis` (default 0): y[i] = x[indices[i]]; with
    inv=True the inverse, y[indices[i]] = x[i].

    indices: a 1-d integer array or Variable, a permutation of
    0..x.shape[axis]-1. Returns a Variable; the gradient is permuted back.
    Raises ValueError for indices that are not a 1-d int array, not a
    permutation (checked on a GPU only in debug mode) or of the wrong length.
    Chainer: chainer.functions.permutate.
    """
    indices = as_array(indices)
    if not isinstance(indices, _array_types) or indices.dtype.kind != 'i' \
            or indices.ndim != 1:
        raise ValueError('permutate: indices must be a one-dimensional int array, got '
                         '{!r}'.format(indices))
    return Permutate(indices, _int_axis('permutate', axis), inv)(x)


# ----- linear algebra: determinants, inverses, Cholesky ----------------------------
# Forward is xp.linalg; backward is the matrix calculus of each formula,
# written with the forward's results (the inverse, the determinant) kept.

def _require_square(label, a, ndim):
    if a.ndim != ndim or a.shape[-1] != a.shape[-2]:
        raise ValueError('{}: needs {} of square matrices, got shape {}'.format(
            label, 'a batch (B, N, N)' if ndim == 3 else 'one (N, N)', a.shape))


def _transposed(a):
    return a.swapaxes(-1, -2)


@_export('functions.math.det')
class BatchDet(Function):
    """Function node of y[b] = det(a[b]) for a (B, N, N) (or one (N, N) with
    ndim 2); backward gy * det(a) * inv(a)^T, Jacobi's formula.
    Chainer: chainer.functions.math.det.BatchDet.
    """
    label = 'det'

    def __init__(self, ndim):
        self.ndim = ndim

    def forward(self, inputs):
        a, = inputs
        _require_float(self.label, a)
        _require_square(self.label, a, self.ndim)
        self.y = _xp(a).linalg.det(a)
        return self.y,

    def backward(self, inputs, grad_outputs):      # d det(a) = det(a) tr(inv(a) da)
        a, = inputs
        scale = (grad_outputs[0] * self.y)[..., None, None]
        return scale * _transposed(_xp(a).linalg.inv(a)),


@_export('functions.math.inv')
class BatchInv(Function):
    """Function node of y[b] = inv(a[b]) for a (B, N, N) (or one (N, N) with
    ndim 2); backward -y^T gy y^T.  Chainer: chainer.functions.math.inv.BatchInv.
    """
    label = 'inv'

    def __init__(self, ndim):
        self.ndim = ndim

    def forward(self, inputs):
        a, = inputs
        _require_float(self.label, a)
        _require_square(self.label, a, self.ndim)
        xp = _xp(a)
        try:
            self.y = xp.linalg.inv(a)
        except np.linalg.LinAlgError:
            raise ValueError('{}: input has singular matrices (shape {})'.format(
                self.label, a.shape)) from None
        return self.y,

    def backward(self, inputs, grad_outputs):      # d inv(a) = -inv(a) da inv(a)
        yt = _transposed(self.y)
        return -_xp(yt).matmul(_xp(yt).matmul(yt, grad_outputs[0]), yt),


@_export('functions.math.cholesky')
class Cholesky(Function):
    """Function node of the lower-triangular L with L L^T = a (a symmetric
    positive definite, (N, N)).  Backward (Murray 2016): with
    phi = L^T gy on and below the diagonal, the diagonal halved, and
    s = L^-T phi L^-1, the gradient is (s + s^T) / 2, symmetric because
    only a's symmetric part matters.
    Chainer: chainer.functions.math.cholesky.Cholesky.
    """
    label = 'cholesky'

    def forward(self, inputs):
        a, = inputs
        _require_float('cholesky', a)
        _require_square('cholesky', a, 2)
        xp = _xp(a)
        try:
            self.y = xp.linalg.cholesky(a)
        except np.linalg.LinAlgError:
            raise ValueError('cholesky: input is not positive definite (shape {})'
                             .format(a.shape)) from None
        return self.y,

    def backward(self, inputs, grad_outputs):      # from d(L L^T) = da, L triangular
        y = self.y
        xp = _xp(y)
        n = y.shape[0]
        mask = xp.tri(n, dtype=y.dtype) - y.dtype.type(0.5) * xp.eye(n, dtype=y.dtype)
        phi = mask * y.T.dot(grad_outputs[0])
        y_inv = xp.linalg.inv(y)
        s = y_inv.T.dot(phi).dot(y_inv)
        return (s + s.T) * y.dtype.type(0.5),


@_export('functions', 'functions.math.det')
def det(a):
    """Determinant of one square matrix a: a float Variable or array (N, N).
    Returns a 0-dim Variable; the gradient is gy * det(a) * inv(a)^T (a must
    be invertible for backward). Raises ValueError for a shape that is not
    (N, N), TypeError for integer a. Chainer: chainer.functions.det.
    """
    return BatchDet(2)(a)


@_export('functions', 'functions.math.det')
def batch_det(a):
    """Determinants of a batch of square matrices: a is a float Variable or
    array (B, N, N). Returns a Variable (B,). Raises ValueError for another
    shape, TypeError for integer a. Chainer: chainer.functions.batch_det.
    """
    return BatchDet(3)(a)


@_export('functions', 'functions.math.inv')
def inv(a):
    """Inverse of one square matrix a: a float Variable or array (N, N).
    Returns a Variable (N, N); the gradient is -inv(a)^T gy inv(a)^T.
    Raises ValueError for another shape or a singular matrix (on the CPU;
    CuPy returns NaN or inf instead), TypeError for integer a.
    Chainer: chainer.functions.inv.
    """
    return BatchInv(2)(a)


@_export('functions', 'functions.math.inv')
def batch_inv(a):
    """Inverses of a batch of square matrices: a is a float Variable or array
    (B, N, N). Returns a Variable (B, N, N). Raises ValueError for another
    shape or a singular matrix (on the CPU), TypeError for integer a.
    Chainer: chainer.functions.batch_inv.
    """
    return BatchInv(3)(a)


@_export('functions', 'functions.math.cholesky')
def cholesky(a):
    """Cholesky factor: the lower-triangular L with L L^T = a, for a float
    Variable or array a (N, N), symmetric positive definite (only its lower
    triangle is read). Returns a Variable (N, N); the gradient is symmetric.
    Raises ValueError for another shape or a matrix that is not positive
    definite (on the CPU), TypeError for integer a.
    Chainer: chainer.functions.cholesky.
    """
    return Cholesky()(a)


# ----- activations: leaky_relu, crelu, rrelu, sigmoid, tanh -----------------------

@_export('functions.activation.leaky_relu')
class LeakyReLU(Function):
    """Function node of y = x where x >= 0, else slope * x; backward gy or
    slope * gy. Chainer: chainer.functions.activation.leaky_relu.LeakyReLU.
    """
    label = 'leaky_relu'

    def __init__(self, slope):
        self.slope = slope

    def forward(self, inputs):
        x, = inputs
        _require_float('leaky_relu', x)
        return _xp(x).where(x >= 0, x, x * self.slope),

    def backward(self, inputs, grad_outputs):      # 1 where x >= 0, else slope
        x, = inputs
        gy, = grad_outputs
        return _xp(x).where(x >= 0, gy, gy * self.slope),


@_export('functions.activation.crelu')
class CReLU(Function):
    """Function node of y = concat(max(0, x), max(0, -x)) along `axis`;
    backward gy_first * (x > 0) - gy_second * (x < 0).
    Chainer: chainer.functions.activation.crelu.CReLU.
    """
    label = 'crelu'

    def __init__(self, axis):
        self.axis = axis

    def forward(self, inputs):
        x, = inputs
        _require_float('crelu', x)
        self.axis = _normalize_axis(self.axis, x.ndim, 'crelu')[0]
        zero = x.dtype.type(0)
        xp = _xp(x)
        return xp.concatenate([xp.maximum(x, zero), xp.maximum(-x, zero)], self.axis),

    def backward(self, inputs, grad_outputs):      # each half is a relu, of x and of -x
        x, = inputs
        first, second = _xp(x).split(grad_outputs[0], 2, self.axis)
        return first * (x > 0) - second * (x < 0),


@_export('functions.activation.rrelu')
class RReLU(Function):
    """Function node of y = x where x >= 0, else r * x, r an array of x's
    shape; backward gy where y >= 0, else r * gy.
    Chainer: chainer.functions.activation.rrelu.RReLU.
    """
    label = 'rrelu'

    def __init__(self, lower, upper, r):
        self.lower, self.upper, self.r = lower, upper, r

    def forward(self, inputs):
        x, = inputs
        _require_float('rrelu', x)
        xp = _xp(x)
        if self.r is not None:
            if self.r.shape != x.shape or self.r.dtype != x.dtype:
                raise ValueError('rrelu: r must have x\'s shape {} and dtype {}, got {} '
                                 'and {}'.format(x.shape, x.dtype, self.r.shape, self.r.dtype))
        if not config.train:              # test mode: the mean slope, as Chainer
            self.r = xp.full(x.shape, (self.lower + self.upper) / 2, dtype=x.dtype)
        elif self.r is None:              # train mode: a fresh slope per element
            self.r = xp.random.uniform(self.lower, self.upper, x.shape).astype(x.dtype)
        self.negative = x < 0
        return xp.where(self.negative, x * self.r, x),

    def backward(self, inputs, grad_outputs):      # slope 1 or r, as in forward
        gy, = grad_outputs        # (gy may be a NumPy scalar for a 0-dim x: xp from r)
        return _xp(self.r).where(self.negative, gy * self.r, gy),


@_export('functions', 'functions.activation.leaky_relu')
def leaky_relu(x, slope=0.2):
    """Leaky ReLU: x where x >= 0, else slope * x (slope default 0.2), elementwise.
    Returns a Variable of the same shape and dtype. Chainer: chainer.functions.leaky_relu.
    """
    return LeakyReLU(slope)(x)


@_export('functions', 'functions.activation.crelu')
def crelu(x, axis=1):
    """Concatenated ReLU: concat(max(0, x), max(0, -x)) along `axis`
    (default 1), so that axis doubles in size.

    x: float Variable or array. Returns a Variable. Raises TypeError for
    integer x or a non-int axis, ValueError for an axis out of bounds.
    Chainer: chainer.functions.crelu.
    """
    return CReLU(_int_axis('crelu', axis))(x)


@_export('functions', 'functions.activation.rrelu')
def rrelu(x, l=1. / 8, u=1. / 3, r=None, return_r=False):
    """Randomized leaky ReLU: x where x >= 0, else r * x, elementwise.

    In training (config.train True) r is drawn uniformly from [l, u) for each
    element, unless an array r (x's shape and dtype, on x's device) is given;
    in test mode r is (l + u) / 2 everywhere. Defaults l = 1/8, u = 1/3; they
    need 0 <= l < u < 1. Returns a Variable, or (Variable, r) when return_r
    is True. Raises ValueError for bad l, u or r, TypeError for integer x.
    Chainer: chainer.functions.rrelu.
    """
    if not (0.0 <= l < 1.0 and 0.0 <= u < 1.0 and l < u):
        raise ValueError('rrelu: needs 0 <= l < u < 1, got l={} and u={}'.format(l, u))
    function = RReLU(l, u, r)
    y = function(x)
    return (y, function.r) if return_r else y


# sigmoid and tanh are one-input formulas: their rows, each beside its
# derivative, are in the table of 'elementwise math' above.

@_export('functions', 'functions.activation.sigmoid')
def sigmoid(x):
    """Logistic sigmoid 1 / (1 + e**-x), elementwise, without overflow for large |x|.
    Returns a Variable of the same shape and dtype. Chainer: chainer.functions.sigmoid.
    """
    return _ELEMENTWISE_FUNCTION['sigmoid']()(x)


@_export('functions', 'functions.activation.tanh')
def tanh(x):
    """Hyperbolic tangent, elementwise; returns a Variable of the same shape and
    dtype. Chainer: chainer.functions.tanh.
    """
    return _ELEMENTWISE_FUNCTION['tanh']()(x)


# ----- more activations ----------------------------------------------------------

@_export('functions.activation.softplus')
class Softplus(Function):
    """Function node of y = log(1 + e**(beta x)) / beta, computed as
    (max(beta x, 0) + log1p(e**-|beta x|)) / beta so that e**(beta x) cannot
    overflow; backward gy * sigmoid(beta x).
    Chainer: chainer.functions.activation.softplus.Softplus.
    """
    label = 'softplus'

    def __init__(self, beta=1.0):
        self.beta = float(beta)

    def forward(self, inputs):
        x, = inputs
        _require_float('softplus', x)
        xp = _xp(x)
        bx = x * self.beta
        return (xp.maximum(bx, 0) + xp.log1p(xp.exp(-abs(bx)))) * (1.0 / self.beta),

    def backward(self, inputs, grad_outputs):      # softplus' = sigmoid(beta x)
        x, = inputs
        sigmoid_bx = _xp(x).tanh(x * (0.5 * self.beta)) * 0.5 + 0.5
        return grad_outputs[0] * sigmoid_bx,


@_export('functions.activation.elu')
class ELU(Function):
    """Function node of y = x where x > 0, else alpha (e**x - 1); backward gy
    where x > 0, else gy * alpha e**x. Chainer: chainer.functions.activation.elu.ELU.
    """
    label = 'elu'

    def __init__(self, alpha=1.0, label='elu'):
        self.alpha, self.label = float(alpha), label

    def forward(self, inputs):
        x, = inputs
        _require_float(self.label, x)
        xp = _xp(x)
        # expm1 of min(x, 0): the branch not taken must not overflow either.
        return xp.where(x > 0, x, xp.expm1(xp.minimum(x, 0)) * self.alpha),

    def backward(self, inputs, grad_outputs):      # 1 where x > 0, else alpha e^x
        x, = inputs
        gy, = grad_outputs
        xp = _xp(x)
        return xp.where(x > 0, gy, gy * xp.exp(xp.minimum(x, 0)) * self.alpha),


@_export('functions.activation.hard_sigmoid')
class HardSigmoid(Function):
    """Function node of y = clip(0.2 x + 0.5, 0, 1); backward 0.2 gy where
    -2.5 < x < 2.5, else 0. Chainer: chainer.functions.activation.hard_sigmoid.HardSigmoid.
    """
    label = 'hard_sigmoid'

    def forward(self, inputs):
        x, = inputs
        _require_float('hard_sigmoid', x)
        return _xp(x).clip(x * 0.2 + 0.5, 0.0, 1.0),

    def backward(self, inputs, grad_outputs):      # slope 0.2 on the ramp, 0 on the flats
        x, = inputs
        return grad_outputs[0] * ((-2.5 < x) & (x < 2.5)) * 0.2,


@_export('functions.activation.clipped_relu')
class ClippedReLU(Function):
    """Function node of y = min(max(x, 0), z); backward gy where 0 < x < z,
    else 0. Chainer: chainer.functions.activation.clipped_relu.ClippedReLU.
    """
    label = 'clipped_relu'

    def __init__(self, z, label='clipped_relu'):
        self.z, self.label = z, label

    def forward(self, inputs):
        x, = inputs
        _require_float(self.label, x)
        return _xp(x).clip(x, 0.0, self.z),

    def backward(self, inputs, grad_outputs):      # 1 between the two flats
        x, = inputs
        return grad_outputs[0] * ((0 < x) & (x < self.z)),


@_export('functions', 'functions.activation.softplus')
def softplus(x, beta=1.0):
    """Softplus log(1 + e**(beta x)) / beta, elementwise, a smooth ReLU that
    cannot overflow; beta default 1.0. Gradient sigmoid(beta x). Returns a
    Variable of x's shape and dtype; TypeError for integer x.
    Chainer: chainer.functions.softplus.
    """
    return Softplus(beta)(x)


@_export('functions', 'functions.activation.elu')
def elu(x, alpha=1.0):
    """Exponential linear unit: x where x > 0, else alpha (e**x - 1),
    elementwise; alpha default 1.0. Returns a Variable of x's shape and dtype;
    TypeError for integer x. Chainer: chainer.functions.elu.
    """
    return ELU(alpha)(x)


@_export('functions', 'functions.activation.selu')
def selu(x, alpha=1.6732632423543772848170429916717,
         scale=1.0507009873554804934193349852946):
    """Scaled ELU: scale * elu(x, alpha), with Chainer's defaults alpha
    1.6732632423543772848170429916717 and scale 1.0507009873554804934193349852946
    (the values that keep activations at mean 0, variance 1). Returns a
    Variable of x's shape and dtype. Chainer: chainer.functions.selu.
    """
    return mul(ELU(alpha, 'selu')(x), scale)     # 'selu' names it in errors


@_export('functions', 'functions.activation.hard_sigmoid')
def hard_sigmoid(x):
    """Piecewise-linear sigmoid: 0 for x < -2.5, 0.2 x + 0.5 between, 1 for
    x > 2.5, elementwise. Returns a Variable of x's shape and dtype;
    TypeError for integer x. Chainer: chainer.functions.hard_sigmoid.
    """
    return HardSigmoid()(x)


@_export('functions', 'functions.activation.clipped_relu')
def clipped_relu(x, z=20.0):
    """ReLU capped at z: min(max(x, 0), z), elementwise; z default 20.0, a
    number > 0 (else ValueError; TypeError for a non-number). The gradient is
    1 where 0 < x < z. Returns a Variable. Chainer: chainer.functions.clipped_relu.
    """
    if isinstance(z, bool) or not isinstance(z, (int, float, np.integer, np.floating)):
        raise TypeError('clipped_relu: z must be a number, got {!r}'.format(z))
    if not z > 0:
        raise ValueError('clipped_relu: z must be > 0, got {}'.format(z))
    return ClippedReLU(float(z))(x)


@_export('functions', 'functions.activation.clipped_relu')
def relu6(x):
    """ReLU capped at 6: min(max(x, 0), 6), elementwise (clipped_relu with
    z=6). Returns a Variable of x's shape and dtype. Chainer: chainer.functions.relu6.
    """
    return ClippedReLU(6.0, 'relu6')(x)


# ----- activations with learned slopes: prelu and swish ---------------------------
# Both take a weight array W of shape x.shape[1:1 + W.ndim]: one slope per
# channel (or per leading feature axes), shared over the batch axis and any
# trailing axes.  Its gradient therefore sums over those shared axes.

def _per_feature(label, x, W, name):
    """Check a per-feature weight W against x; returns (the shape W takes to
    broadcast against x, the axes W is shared over)."""
    _require_float(label, x)
    _check_same_dtype(label, (x, W))
    if x.ndim < W.ndim + 1 or x.shape[1:1 + W.ndim] != W.shape:
        raise ValueError('{}: {}.shape {} must equal x.shape[1:{}] (x.shape {}, the first '
                         'axis being the batch)'.format(label, name, W.shape, 1 + W.ndim,
                                                        x.shape))
    expanded = (1,) + W.shape + (1,) * (x.ndim - W.ndim - 1)
    return expanded, (0,) + tuple(range(1 + W.ndim, x.ndim))


@_export('functions.activation.prelu')
class PReLUFunction(Function):
    """Function node of y = x where x >= 0, else W x (W broadcast per feature);
    backward gy or W gy for x, and the sum of x gy where x < 0 for W.
    Chainer: chainer.functions.activation.prelu.PReLUFunction.
    """
    label = 'prelu'
    input_names = ('x', 'W')

    def forward(self, inputs):
        x, W = inputs
        self.expanded, self.shared = _per_feature('prelu', x, W, 'W')
        self.negative = x < 0
        return _xp(x).where(self.negative, x * W.reshape(self.expanded), x),

    def backward(self, inputs, grad_outputs):      # dy/dx = 1 or W; dy/dW = x where x < 0
        x, W = inputs
        gy, = grad_outputs
        xp = _xp(x)
        gx = xp.where(self.negative, gy * W.reshape(self.expanded), gy)
        gW = xp.where(self.negative, x * gy, x.dtype.type(0)).sum(axis=self.shared)
        return gx, gW.reshape(W.shape)


class SwishFunction(Function):
    """Function node of y = x sigmoid(beta x) (beta broadcast per feature);
    backward gy (beta y + s (1 - beta y)) for x and the sum of gy y (x - y)
    for beta, s = sigmoid(beta x). Chainer: chainer.functions.activation.swish.Swish.
    """
    label = 'swish'
    input_names = ('x', 'beta')

    def forward(self, inputs):
        x, beta = inputs
        self.expanded, self.shared = _per_feature('swish', x, beta, 'beta')
        beta = beta.reshape(self.expanded)
        self.s = _xp(x).tanh(x * beta * 0.5) * 0.5 + 0.5    # sigmoid, as in Sigmoid
        self.y = x * self.s
        return self.y,

    def backward(self, inputs, grad_outputs):
        x, beta = inputs
        gy, = grad_outputs
        s, y = self.s, self.y
        by = beta.reshape(self.expanded) * y
        gx = gy * (by + s * (1 - by))              # d/dx x s(bx) = s + b x s (1 - s)
        gbeta = (gy * y * (x - y)).sum(axis=self.shared)   # d/db x s(bx) = x^2 s (1 - s)
        return gx, gbeta.reshape(beta.shape)


@_export('functions', 'functions.activation.prelu')
def prelu(x, W):
    """Parametric ReLU: y = x where x >= 0, else W * x, elementwise.

    x: float (N, ...) with the batch first; W: x's dtype, shape
    x.shape[1:1 + W.ndim] (shape () for one slope, (C,) for one per channel),
    broadcast over the batch and the trailing axes.  Both get gradients.
    Returns a Variable of x's shape.  Raises ValueError when W's shape does not
    fit x, TypeError for integer x or mixed dtypes. Chainer: chainer.functions.prelu.
    """
    return PReLUFunction()(x, W)


@_export('functions', 'functions.activation.swish')
def swish(x, beta):
    """Swish activation: y = x * sigmoid(beta * x), elementwise.

    x: float (N, ...); beta: x's dtype, shape x.shape[1:1 + beta.ndim],
    broadcast like prelu's W.  Both get gradients.  Returns a Variable of x's
    shape.  Raises ValueError when beta's shape does not fit x, TypeError for
    integer x or mixed dtypes. Chainer: chainer.functions.swish.
    """
    return SwishFunction()(x, beta)


# ----- softmax -------------------------------------------------------------------
# softmax(x)_i = e^{x_i} / sum_j e^{x_j}.  Subtracting max(x) first changes
# nothing mathematically but keeps e^x from overflowing (the log-sum-exp
# trick).  log_softmax(x) = x - max - log(sum e^{x - max}) is then exact even
# where softmax itself would round to 0.

def _log_sum_exp(x, axis):
    """log(sum(exp(x), axis)) with keepdims, computed without overflow, in
    x's dtype (float16 summed in float32)."""
    xp = _xp(x)
    m = x.max(axis=axis, keepdims=True)
    # A row of -inf, or one holding +inf, is not shifted: inf - inf would be
    # NaN, where the answer is -inf (log 0) or +inf.
    m = xp.where(xp.isinf(m), x.dtype.type(0), m)
    s = _sum_wide(xp.exp(x - m), axis, keepdims=True)
    with np.errstate(divide='ignore'):       # log(0) = -inf is the answer
        return (m + xp.log(s)).astype(x.dtype, copy=False)


@_export('functions.activation.softmax')
class Softmax(Function):
    """Function node of y = softmax(x, axis); backward y * (gy - sum(gy * y, axis)).
    Chainer: chainer.functions.activation.softmax.Softmax.
    """
    label = 'softmax'

    def __init__(self, axis=1):
        self.axis = axis

    def forward(self, inputs):
        x, = inputs
        _require_float('softmax', x)
        y = _xp(x).exp(x - x.max(axis=self.axis, keepdims=True))
        y /= _sum_wide(y, self.axis, keepdims=True)
        self.y = y
        return y,

    def backward(self, inputs, grad_outputs):      # dx = y * (dy - sum(dy * y))
        y = self.y
        gx = y * grad_outputs[0]
        gx -= y * _sum_wide(gx, self.axis, keepdims=True)      # (float16: summed in float32)
        return gx,


@_export('functions.activation.log_softmax')
class LogSoftmax(Function):
    """Function node of y = x - log(sum(exp(x), axis)); backward
    gy - exp(y) * sum(gy, axis). Chainer: chainer.functions.activation.log_softmax.LogSoftmax.
    """
    label = 'log_softmax'

    def __init__(self, axis=1):
        self.axis = axis

    def forward(self, inputs):
        x, = inputs
        _require_float('log_softmax', x)
        self.y = x - _log_sum_exp(x, self.axis)
        return self.y,

    def backward(self, inputs, grad_outputs):      # dx = dy - softmax * sum(dy)
        gy, = grad_outputs
        gx = gy - _xp(gy).exp(self.y) * _sum_wide(gy, self.axis, keepdims=True)
        return gx.astype(gy.dtype, copy=False),        # (float16: summed in float32)


@_export('functions', 'functions.activation.softmax')
def softmax(x, axis=1):
    """Softmax along `axis` (default 1): exp(x) / sum(exp(x), axis), computed after
    subtracting the maximum so it cannot overflow. x: float Variable or array,
    e.g. scores of shape (N, C). Returns a Variable of x's shape whose values
    along `axis` sum to 1. Chainer: chainer.functions.softmax.
    """
    return Softmax(axis)(x)


@_export('functions', 'functions.activation.log_softmax')
def log_softmax(x, axis=1):
    """log(softmax(x, axis)) computed as x - max - log(sum(exp(x - max))): exact
    even where softmax rounds to 0. axis default 1. Returns a Variable of x's
    shape. Chainer: chainer.functions.log_softmax.
    """
    return LogSoftmax(axis)(x)


@_export('functions', 'functions.noise.gumbel_softmax')
def gumbel_softmax(log_pi, tau=0.1, axis=1):
    """Gumbel-softmax sample: softmax((log_pi + g) / tau, axis), g drawn
    from the standard Gumbel distribution for each element (fresh on every
    call, in train and test mode alike, as in Chainer).

    log_pi: float Variable or array of (unnormalized) log-probabilities;
    tau: temperature (default 0.1; a float, or a Variable/array that
    broadcasts); axis (default 1). Gradients flow to log_pi (and tau). A
    0-dim log_pi gives ones(()), as in Chainer. Returns a Variable.
    Chainer: chainer.functions.gumbel_softmax.
    """
    data = _input_data('gumbel_softmax', log_pi)
    _require_float('gumbel_softmax', data)
    xp = _xp(data)
    if data.ndim < 1:
        return Variable(xp.ones((), data.dtype))
    g = xp.random.gumbel(size=data.shape).astype(data.dtype)
    return softmax((log_pi + g) / tau, axis=axis)


# ----- dropout -----------------------------------------------------------------

@_export('functions.noise.dropout')
class Dropout(Function):
    """Function node of dropout: y = x * mask, where mask is 0 with probability
    `ratio` and 1/(1 - ratio) otherwise; backward gy * mask.
    Chainer: chainer.functions.noise.dropout.Dropout.
    """
    label = 'dropout'

    def __init__(self, ratio):
        self.ratio = ratio

    def forward(self, inputs):
        x, = inputs
        _require_float('dropout', x)
        xp = _xp(x)
        # Scale the kept units by 1/(1-ratio) so the expected value is unchanged
        # and nothing needs rescaling at test time.
        scale = x.dtype.type(1.0 / (1.0 - self.ratio))
        # CuPy can draw float32 directly (half the memory); NumPy's rand cannot.
        draws = xp.random.rand(*x.shape) if xp is np else xp.random.rand(*x.shape, dtype=np.float32)
        self.mask = (draws >= self.ratio) * scale
        self.mask = self.mask.astype(x.dtype, copy=False)
        return x * self.mask,

    def backward(self, inputs, grad_outputs):
        return grad_outputs[0] * self.mask,


@_export('functions', 'functions.noise.dropout')
def dropout(x, ratio=.5):
    """Randomly zero elements of x with probability `ratio` (default .5) and scale
    the rest by 1/(1 - ratio), so the expected value is unchanged.

    Only while config.train is True; otherwise (and for ratio 0) x is returned
    as it is, as a Variable. Raises ValueError unless 0 <= ratio < 1.
    Chainer: chainer.functions.dropout.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError('dropout: ratio must be in [0, 1), got {}'.format(ratio))
    if not config.train or ratio == 0.0:
        _input_data('dropout', x)
        return as_variable(x)
    return Dropout(ratio)(x)


# ----- losses ------------------------------------------------------------------

@_export('functions.loss.mean_squared_error')
class MeanSquaredError(Function):
    """Function node of mean((a - b)**2) over all elements; backward
    2 (a - b) gy / size for a, its negative for b.
    Chainer: chainer.functions.loss.mean_squared_error.MeanSquaredError.
    """
    label = 'mean_squared_error'

    def forward(self, inputs):
        a, b = inputs
        if a.shape != b.shape:
            raise ValueError('mean_squared_error: shapes differ: {} and {}'.format(
                a.shape, b.shape))
        _check_dtypes('mean_squared_error', a, b)
        _require_float('mean_squared_error', a)
        self.diff = (a - b).ravel()
        n = self.diff.size         # 0: the mean of nothing is NaN, its gradient empty
        wide = self.diff.astype(np.promote_types(a.dtype, np.float32), copy=False)  # _sum_wide
        return _xp(a).asarray(wide.dot(wide) / n if n else math.nan, dtype=a.dtype),

    def backward(self, inputs, grad_outputs):      # d/da mean((a-b)^2) = 2(a-b)/n
        gy, = grad_outputs
        ga = (self.diff * (gy * (2.0 / max(self.diff.size, 1)))).reshape(inputs[0].shape)
        return ga, -ga


@_export('functions', 'functions.loss.mean_squared_error')
def mean_squared_error(x0, x1):
    """Mean squared error sum((x0 - x1)**2) / x0.size, as a scalar Variable.

    x0, x1: float Variables or arrays of one shape and one dtype. Raises
    ValueError for differing shapes, TypeError for differing dtypes.
    Chainer: chainer.functions.mean_squared_error.
    """
    return MeanSquaredError()(x0, x1)


def _check_pair(label, a, b):
    """Two inputs of a loss: one shape, one float dtype."""
    if a.shape != b.shape:
        raise ValueError('{}: shapes differ: {} and {}'.format(label, a.shape, b.shape))
    _check_dtypes(label, a, b)
    _require_float(label, a)


@_export('functions.loss.absolute_error')
class AbsoluteError(Function):
    """Function node of |x0 - x1| elementwise; backward sign(x0 - x1) gy for
    x0, its negative for x1. Chainer: chainer.functions.loss.absolute_error.AbsoluteError.
    """
    label = 'absolute_error'

    def forward(self, inputs):
        _check_pair(self.label, *inputs)
        self.diff = inputs[0] - inputs[1]
        return abs(self.diff),

    def backward(self, inputs, grad_outputs):      # |d|' = sign(d)
        gx = grad_outputs[0] * _xp(self.diff).sign(self.diff)
        return gx, -gx


@_export('functions.loss.mean_absolute_error')
class MeanAbsoluteError(Function):
    """Function node of mean(|x0 - x1|) over all elements; backward
    sign(x0 - x1) gy / size for x0, its negative for x1.
    Chainer: chainer.functions.loss.mean_absolute_error.MeanAbsoluteError.
    """
    label = 'mean_absolute_error'

    def forward(self, inputs):
        _check_pair(self.label, *inputs)
        self.diff = inputs[0] - inputs[1]
        n = self.diff.size         # 0: the mean of nothing is NaN, as for mean_squared_error
        return _xp(self.diff).asarray(_sum_wide(abs(self.diff)) / n if n else math.nan,
                                      dtype=self.diff.dtype),

    def backward(self, inputs, grad_outputs):      # d/dx0 mean|x0-x1| = sign(x0-x1)/n
        gy, = grad_outputs
        gx = _xp(self.diff).sign(self.diff) * (gy * (1.0 / max(self.diff.size, 1)))
        return gx, -gx


@_export('functions.loss.huber_loss')
class HuberLoss(Function):
    """Function node of the Huber loss of d = x - t: d**2 / 2 where |d| <= delta,
    else delta (|d| - delta / 2); summed along axis 1 (reduce=
    'sum_along_second_axis') or not (reduce='no'). Backward: clip(d, -delta,
    delta) gy for x, its negative for t.
    Chainer: chainer.functions.loss.huber_loss.HuberLoss.
    """
    label = 'huber_loss'
    input_names = ('x', 't')

    def __init__(self, delta, reduce='sum_along_second_axis'):
        self.delta, self.reduce = delta, reduce

    def forward(self, inputs):
        x, t = inputs
        _check_pair(self.label, x, t)
        if self.reduce == 'sum_along_second_axis' and x.ndim < 2:
            raise ValueError("huber_loss: reduce='sum_along_second_axis' needs 2 or more "
                             'dimensions, got shape {}'.format(x.shape))
        xp = _xp(x)
        self.diff = x - t
        size = abs(self.diff)
        # Quadratic near 0, linear beyond delta: the two pieces meet smoothly at |d| = delta.
        y = xp.where(size <= self.delta, self.diff * self.diff * 0.5,
                     (size - 0.5 * self.delta) * self.delta)
        return (y.sum(axis=1) if self.reduce == 'sum_along_second_axis' else y),

    def backward(self, inputs, grad_outputs):      # d loss / d x = clip(d, -delta, delta)
        gy, = grad_outputs
        if self.reduce == 'sum_along_second_axis':
            gy = _xp(gy).expand_dims(gy, 1)
        gx = _xp(gy).clip(self.diff, -self.delta, self.delta) * gy
        return gx, -gx


@_export('functions.loss.sigmoid_cross_entropy')
class SigmoidCrossEntropy(Function):
    """Function node of the cross entropy of sigmoid(x) against 0/1 labels t:
    loss = -(t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))), 0 where t == -1,
    computed as log(1 + e**-|x|) - x (t - [x >= 0]), which cannot overflow.
    Backward: (sigmoid(x) - t) gy, 0 where t == -1, divided as the loss was.
    Chainer: chainer.functions.loss.sigmoid_cross_entropy.SigmoidCrossEntropy.
    """
    label = 'sigmoid_cross_entropy'
    input_names = ('x', 't')
    ignore_label = -1

    def __init__(self, normalize=True, reduce='mean'):
        self.normalize, self.reduce = normalize, reduce

    def forward(self, inputs):
        x, t = inputs
        _require_float(self.label, x)
        if t.dtype.kind != 'i':
            raise TypeError('sigmoid_cross_entropy: t must hold signed integer labels '
                            '(0, 1 or -1), got dtype {}'.format(t.dtype))
        if x.shape != t.shape:
            raise ValueError('sigmoid_cross_entropy: x.shape {} and t.shape {} differ'
                             .format(x.shape, t.shape))
        xp = _xp(x)
        self.valid = t != self.ignore_label
        self.t = t.astype(x.dtype)
        # -x (t - [x >= 0]) is |x| where the label disagrees with x's sign and 0
        # where it agrees, also for x = +-inf (where the product would be NaN)
        loss = xp.log1p(xp.exp(-abs(x))) + xp.where(self.t != (x >= 0), abs(x), 0)
        loss = xp.where(self.valid, loss, x.dtype.type(0))
        if self.reduce == 'no':
            return loss,
        if self.normalize:       # over the labels that count; an array, so no wait on a GPU
            count = xp.maximum(self.valid.sum(), 1)
            self.coeff = (1.0 / count).astype(np.promote_types(x.dtype, np.float32))
        else:                    # over the batch
            self.coeff = 1.0 / (len(x) if x.ndim and len(x) else 1)
        return xp.asarray(_sum_wide(loss) * self.coeff, dtype=x.dtype),

    def backward(self, inputs, grad_outputs):      # d loss / dx = sigmoid(x) - t
        x, t = inputs
        gy, = grad_outputs
        xp = _xp(x)
        sigmoid_x = xp.tanh(x * 0.5) * 0.5 + 0.5
        gx = xp.where(self.valid, sigmoid_x - self.t, x.dtype.type(0))
        gx *= gy if self.reduce == 'no' else gy * self.coeff
        return gx, None


@_export('functions', 'functions.loss.absolute_error')
def absolute_error(x0, x1):
    """Elementwise absolute error |x0 - x1|, not reduced.

    x0, x1: float Variables or arrays of one shape and dtype. The gradient is
    sign(x0 - x1) gy (0 where they are equal). Returns a Variable of their
    shape. Raises ValueError for differing shapes, TypeError for differing or
    integer dtypes. Chainer: chainer.functions.absolute_error.
    """
    return AbsoluteError()(x0, x1)


@_export('functions', 'functions.loss.mean_absolute_error')
def mean_absolute_error(x0, x1):
    """Mean absolute error sum(|x0 - x1|) / x0.size, as a scalar Variable.

    x0, x1: float Variables or arrays of one shape and dtype (NaN for empty
    ones). Raises ValueError for differing shapes, TypeError for differing or
    integer dtypes. Chainer: chainer.functions.mean_absolute_error.
    """
    return MeanAbsoluteError()(x0, x1)


@_export('functions', 'functions.loss.huber_loss')
def huber_loss(x, t, delta, reduce='sum_along_second_axis'):
    """Huber loss of d = x - t, elementwise:

        d**2 / 2                  where |d| <= delta
        delta (|d| - delta / 2)   elsewhere

    x, t: float Variables or arrays of one shape and dtype, e.g. (N, K);
    delta: a float > 0. reduce='sum_along_second_axis' (default) sums over
    axis 1, giving shape (N,) for (N, K) (x needs 2 or more dimensions);
    reduce='no' keeps the elementwise losses. Returns a Variable. Raises
    ValueError for another reduce or differing shapes, TypeError for differing
    or integer dtypes. Chainer: chainer.functions.huber_loss.
    """
    if reduce not in ('sum_along_second_axis', 'no'):
        raise ValueError("huber_loss: reduce must be 'sum_along_second_axis' or 'no', "
                         'got {!r}'.format(reduce))
    return HuberLoss(delta, reduce)(x, t)


@_export('functions', 'functions.loss.sigmoid_cross_entropy')
def sigmoid_cross_entropy(x, t, normalize=True, reduce='mean'):
    """Cross entropy of sigmoid(x) against binary labels t, elementwise:

        loss = -(t log sigmoid(x) + (1 - t) log(1 - sigmoid(x)))

    x: float scores (pre-sigmoid), any shape such as (N, K); t: signed integer
    labels of x's shape, each 0 or 1, or -1 to ignore that element (its loss
    and gradient are 0; labels are not otherwise checked). reduce='mean'
    (default) returns the scalar sum of the losses divided by the number of
    labels that are not -1 (normalize=True, default; at least 1) or by N =
    len(x) (normalize=False); reduce='no' returns the elementwise losses, of
    x's shape (normalize is then ignored). Raises TypeError for integer x or
    non-signed-integer t, ValueError for differing shapes or another reduce.
    Chainer: chainer.functions.sigmoid_cross_entropy.
    """
    if reduce not in ('mean', 'no'):
        raise ValueError("sigmoid_cross_entropy: reduce must be 'mean' or 'no', "
                         'got {!r}'.format(reduce))
    return SigmoidCrossEntropy(normalize, reduce)(x, t)


@_export('functions', 'functions.evaluation.accuracy')
def accuracy(y, t, ignore_label=None):
    """Fraction of examples whose arg-max over axis 1 of y equals the label t.

    y: scores (N, C) or (N, C, d1, ...); t: integer labels (N,) or (N, d1, ...).
    Labels equal to ignore_label (default None: none) are left out of the
    count (0 if all are; NaN for an empty batch). Returns a 0-dim Variable of y's dtype with no
    gradient. Raises TypeError for non-integer t, ValueError for shapes that do
    not match. Chainer: chainer.functions.accuracy.
    """
    y, t = _input_data('accuracy', y), _input_data('accuracy', t)
    if t.dtype.kind not in 'iu':
        raise TypeError('accuracy: t must hold integer labels, got dtype {}'.format(t.dtype))
    _require_float('accuracy', y)
    if y.ndim < 2 or t.shape != y.shape[:1] + y.shape[2:]:
        raise ValueError('accuracy: y.shape {} and t.shape {} do not match'.format(
            y.shape, t.shape))
    xp = _xp(y)
    hit = y.argmax(axis=1) == t
    if hit.size == 0:                  # an empty batch: NaN, as NumPy's mean, without its warning
        value = math.nan
    elif ignore_label is None:
        value = hit.mean()
    else:
        valid = t != ignore_label
        total = valid.sum()
        value = (hit & valid).sum() / xp.maximum(total, 1)   # 0 if all are ignored; no sync on a GPU
    return Variable(xp.asarray(value, dtype=y.dtype), requires_grad=False)


# ----- more losses and metrics ---------------------------------------------------
# Hinge and contrastive losses have kinks, so they get their own backward;
# the losses of a VAE and the triplet loss are short formulas over the
# functions above.  The metrics at the end are not differentiable: like
# accuracy they return Variables outside the graph.

@_export('functions.loss.hinge')
class Hinge(Function):
    """Function node of the hinge loss of scores x (N, K) against labels t
    (N,): d = max(0, 1 - x) at the true class, max(0, 1 + x) at the others,
    loss d (norm 'L1') or d**2 ('L2'), summed and divided by N
    (reduce='mean') or not (reduce='no'). Backward: +-gy where d > 0 (L1)
    or +-2 d gy (L2), the sign - at the true class.
    Chainer: chainer.functions.loss.hinge.Hinge.
    """
    label = 'hinge'
    input_names = ('x', 't')

    def __init__(self, norm='L1', reduce='mean'):
        self.norm, self.reduce = norm, reduce

    def forward(self, inputs):
        x, t = inputs
        _require_float('hinge', x)
        if t.dtype.kind not in 'iu' or x.ndim != 2 or t.shape != x.shape[:1]:
            raise ValueError('hinge: needs float x (N, K) and integer t (N,), got x {} {} '
                             'and t {} {}'.format(x.shape, x.dtype, t.shape, t.dtype))
        xp = _xp(x)
        # Labels are read on the CPU only; a GPU would have to wait for them.
        if xp is np and ((t < 0) | (t >= x.shape[1])).any():
            raise ValueError('hinge: labels t must be in [0, {}), got {}'.format(
                x.shape[1], t))
        self.sign = xp.ones_like(x)
        self.sign[xp.arange(len(t)), t] = -1           # -1 at the true class
        self.d = xp.maximum(1 + self.sign * x, x.dtype.type(0))
        loss = self.d if self.norm == 'L1' else self.d * self.d
        if self.reduce == 'mean':
            return xp.asarray(_sum_wide(loss) / max(len(x), 1), dtype=x.dtype),
        return loss,

    def backward(self, inputs, grad_outputs):      # d(1 +- x)/dx = +-1 where positive
        x, t = inputs
        gy, = grad_outputs
        if self.reduce == 'mean':
            gy = gy / x.dtype.type(max(len(x), 1))      # in x's dtype, on NumPy 1.x too
        slope = (self.d > 0).astype(x.dtype) if self.norm == 'L1' else 2 * self.d
        return gy * slope * self.sign, None


@_export('functions.loss.contrastive')
class Contrastive(Function):
    """Function node of the contrastive loss of pairs (x0[n], x1[n]) with
    labels y[n] (1 similar, 0 dissimilar): with d = ||x0 - x1||,
    loss = (y d**2 + (1 - y) max(margin - d, 0)**2) / 2, averaged over N
    (reduce='mean') or not ('no'). Backward for x0: (y - (1 - y)
    max(margin - d, 0) / d) (x0 - x1) gy, with d at least 1e-7; x1 gets the
    negative. Chainer: chainer.functions.loss.contrastive.Contrastive.
    """
    label = 'contrastive'
    input_names = ('x0', 'x1', 'y')

    def __init__(self, margin, reduce):
        self.margin, self.reduce = margin, reduce

    def forward(self, inputs):
        x0, x1, y = inputs
        _check_dtypes('contrastive', x0, x1)
        _require_float('contrastive', x0)
        if x0.shape != x1.shape or x0.ndim != 2 or y.shape != x0.shape[:1] \
                or y.dtype.kind not in 'iu' or len(x0) == 0:
            raise ValueError('contrastive: needs x0, x1 of one shape (N, K), N > 0, and '
                             'integer y (N,), got {}, {} and y {} {}'.format(
                                 x0.shape, x1.shape, y.shape, y.dtype))
        xp = _xp(x0)
        self.diff = x0 - x1
        dist_sq = (self.diff * self.diff).sum(axis=1)
        self.dist = xp.sqrt(dist_sq)
        self.gap = xp.maximum(self.margin - self.dist, x0.dtype.type(0))
        self.y = y.astype(x0.dtype)
        loss = (self.y * dist_sq + (1 - self.y) * self.gap * self.gap) * 0.5
        if self.reduce == 'mean':
            return xp.asarray(_sum_wide(loss) / len(x0), dtype=x0.dtype),
        return loss,

    def backward(self, inputs, grad_outputs):      # d||x0 - x1|| / dx0 = (x0 - x1) / d
        x0 = inputs[0]
        gy, = grad_outputs
        xp = _xp(x0)
        gy = gy / len(x0) if self.reduce == 'mean' else gy
        eps = 5e-3 if x0.dtype == np.float16 else 1e-7   # 1/1e-7 overflows float16
        pull = self.y - (1 - self.y) * self.gap / xp.maximum(self.dist, x0.dtype.type(eps))
        gx0 = (pull * gy)[:, None] * self.diff
        return gx0, -gx0, None


def _reduce_loss(label, loss, reduce):
    """loss summed (reduce='sum'), averaged ('mean') or left elementwise ('no')."""
    if reduce == 'sum':
        return Sum()(loss)
    if reduce == 'mean':
        return mean(loss)
    return loss


def _check_reduce(label, reduce, allowed):
    if reduce not in allowed:
        raise ValueError('{}: reduce must be one of {}, got {!r}'.format(label, allowed, reduce))


@_export('functions', 'functions.loss.hinge')
def hinge(x, t, norm='L1', reduce='mean'):
    """Hinge loss for one-of-K classification.

        loss[n, k] = max(0, 1 - s x[n, k]) ** p,  s = 1 if k == t[n] else -1

    p = 1 for norm='L1' (default), 2 for 'L2'. x: float scores (N, K); t:
    integer labels (N,) in [0, K). reduce='mean' (default) returns the scalar
    sum of all losses divided by N; 'no' returns the (N, K) losses. Raises
    NotImplementedError for another norm, ValueError for another reduce,
    shapes that do not fit or labels out of range (checked on the CPU).
    Chainer: chainer.functions.hinge.
    """
    if norm not in ('L1', 'L2'):
        raise NotImplementedError("hinge: norm must be 'L1' or 'L2', got {!r}".format(norm))
    _check_reduce('hinge', reduce, ('mean', 'no'))
    return Hinge(norm, reduce)(x, t)


@_export('functions', 'functions.loss.vae')
def gaussian_kl_divergence(mean, ln_var, reduce='sum'):
    """KL divergence of N(mean, exp(ln_var)) (diagonal) from N(0, I), as in a
    VAE: elementwise (mean**2 + exp(ln_var) - ln_var - 1) / 2.

    mean, ln_var: float Variables or arrays of one shape and dtype.
    reduce='sum' (default) sums everything, 'mean' averages, 'no' keeps the
    elementwise values. Returns a Variable. Raises ValueError for another
    reduce. Chainer: chainer.functions.gaussian_kl_divergence.
    """
    _check_reduce('gaussian_kl_divergence', reduce, ('sum', 'mean', 'no'))
    loss = (mul(mean, mean) + exp(ln_var) - ln_var - 1) * 0.5
    return _reduce_loss('gaussian_kl_divergence', loss, reduce)


@_export('functions', 'functions.loss.vae')
def gaussian_nll(x, mean, ln_var, reduce='sum'):
    """Negative log-likelihood of x under N(mean, exp(ln_var)) (diagonal),
    elementwise (ln_var + log(2 pi)) / 2 + (x - mean)**2 exp(-ln_var) / 2.

    x, mean, ln_var: float Variables or arrays of one shape and dtype.
    reduce='sum' (default), 'mean' or 'no' as in gaussian_kl_divergence.
    Returns a Variable. Raises ValueError for another reduce.
    Chainer: chainer.functions.gaussian_nll.
    """
    _check_reduce('gaussian_nll', reduce, ('sum', 'mean', 'no'))
    diff = sub(x, mean)
    loss = (ln_var + math.log(2 * math.pi)) * 0.5 + diff * diff * exp(-as_variable(ln_var)) * 0.5
    return _reduce_loss('gaussian_nll', loss, reduce)


@_export('functions', 'functions.loss.vae')
def bernoulli_nll(x, y, reduce='sum'):
    """Negative log-likelihood of x under Bernoulli(sigmoid(y)), elementwise
    -(x log p + (1 - x) log(1 - p)) with p = sigmoid(y), computed as
    softplus(y) - x y so that it cannot overflow.

    x: float data (usually in [0, 1]); y: float pre-sigmoid parameters of x's
    shape and dtype. reduce='sum' (default), 'mean' or 'no'. Returns a
    Variable. Raises ValueError for another reduce.
    Chainer: chainer.functions.bernoulli_nll.
    """
    _check_reduce('bernoulli_nll', reduce, ('sum', 'mean', 'no'))
    return _reduce_loss('bernoulli_nll', softplus(y) - mul(x, y), reduce)


@_export('functions', 'functions.loss.contrastive')
def contrastive(x0, x1, y, margin=1, reduce='mean'):
    """Contrastive loss of pairs: with d[n] = ||x0[n] - x1[n]||,

        loss[n] = (y[n] d[n]**2 + (1 - y[n]) max(margin - d[n], 0)**2) / 2

    x0, x1: float (N, K) of one shape and dtype, N > 0; y: integer (N,), 1
    for a similar pair, 0 for a dissimilar one. margin: a number > 0 (default
    1). reduce='mean' (default) averages over N, 'no' returns (N,). Raises
    ValueError for margin <= 0, another reduce or shapes that do not fit.
    Chainer: chainer.functions.contrastive.
    """
    if margin <= 0:
        raise ValueError('contrastive: margin must be > 0, got {}'.format(margin))
    _check_reduce('contrastive', reduce, ('mean', 'no'))
    return Contrastive(margin, reduce)(x0, x1, y)


@_export('functions', 'functions.loss.triplet')
def triplet(anchor, positive, negative, margin=0.2, reduce='mean'):
    """Triplet loss: for each row n,

        loss[n] = max(||a[n] - p[n]||**2 - ||a[n] - n[n]||**2 + margin, 0)

    anchor, positive, negative: float Variables or arrays of one shape (N, K)
    and dtype, N > 0. margin: a number > 0 (default 0.2). reduce='mean'
    (default) averages over N, 'no' returns (N,). Raises ValueError for
    margin <= 0, another reduce or differing shapes.
    Chainer: chainer.functions.triplet.
    """
    if margin <= 0:
        raise ValueError('triplet: margin must be > 0, got {}'.format(margin))
    _check_reduce('triplet', reduce, ('mean', 'no'))
    shapes = [_input_data('triplet', v).shape for v in (anchor, positive, negative)]
    if len(set(shapes)) != 1 or len(shapes[0]) < 2 or shapes[0][0] == 0:
        raise ValueError('triplet: anchor, positive and negative need one shape (N, K), '
                         'N > 0, got {}'.format(shapes))
    to_positive, to_negative = sub(anchor, positive), sub(anchor, negative)
    gap = Sum(1)(to_positive * to_positive - to_negative * to_negative)
    loss = relu(gap + margin)
    return mean(loss) if reduce == 'mean' else loss


@_export('functions', 'functions.evaluation.binary_accuracy')
def binary_accuracy(y, t):
    """Fraction of elements whose prediction [y >= 0] equals the label t.

    y: float scores of any shape; t: signed integer labels of y's shape, 1,
    0, or -1 to ignore that element. The count is over labels that are not
    -1 (at least 1, so all ignored gives 0). Returns a 0-dim Variable of y's
    dtype with no gradient. Raises TypeError for integer y or non-signed t,
    ValueError for differing shapes. Chainer: chainer.functions.binary_accuracy.
    """
    y, t = _input_data('binary_accuracy', y), _input_data('binary_accuracy', t)
    _require_float('binary_accuracy', y)
    if t.dtype.kind != 'i':
        raise TypeError('binary_accuracy: t must hold signed integer labels, got dtype {}'
                        .format(t.dtype))
    if y.shape != t.shape:
        raise ValueError('binary_accuracy: y.shape {} and t.shape {} differ'.format(
            y.shape, t.shape))
    xp = _xp(y)
    count = xp.maximum((t != -1).sum(), 1)       # an array: no wait on a GPU
    hits = ((y >= 0) == t).sum()                 # t == -1 never equals True or False
    return Variable(xp.asarray(hits / count, dtype=y.dtype), requires_grad=False)


@_export('functions', 'functions.evaluation.r2_score')
def r2_score(pred, true, sample_weight=None, multioutput='uniform_average'):
    """Coefficient of determination R**2 = 1 - SS_res / SS_tot per output
    (column), with SS_res = sum((pred - true)**2, axis 0) and SS_tot =
    sum((true - mean(true, axis 0))**2, axis 0); 0 where SS_tot is 0.

    pred, true: float Variables or arrays of one shape. multioutput
    'uniform_average' (default) returns the mean over outputs (a 0-dim
    Variable), 'raw_values' one value per output. sample_weight must be None.
    No gradient. Raises NotImplementedError for sample_weight, ValueError for
    another multioutput or differing shapes. Chainer: chainer.functions.r2_score.
    """
    if sample_weight is not None:
        raise NotImplementedError('r2_score: sample_weight is not supported (as in Chainer)')
    if multioutput not in ('uniform_average', 'raw_values'):
        raise ValueError("r2_score: multioutput must be 'uniform_average' or 'raw_values', "
                         "got {!r}".format(multioutput))
    pred, true = _input_data('r2_score', pred), _input_data('r2_score', true)
    _require_float('r2_score', pred, true)
    if pred.shape != true.shape:
        raise ValueError('r2_score: pred.shape {} and true.shape {} differ'.format(
            pred.shape, true.shape))
    xp = _xp(pred)
    residual = ((pred - true) ** 2).sum(axis=0)
    total = ((true - true.mean(axis=0)) ** 2).sum(axis=0)
    flat = total == 0
    score = xp.where(flat, 0.0, 1 - residual / xp.where(flat, 1, total)).astype(pred.dtype)
    if multioutput == 'uniform_average':
        score = xp.asarray(score.mean(), dtype=pred.dtype)
    return Variable(score, requires_grad=False)


@_export('functions', 'functions.evaluation.classification_summary')
def classification_summary(y, t, label_num=None, beta=1.0, ignore_label=-1):
    """Per-class precision, recall, F-beta score and support of a batch.

    With pred = argmax(y, axis 1), for each class c: precision = tp / (tp +
    fp) (NaN if c was never predicted), recall = tp / (tp + fn) (NaN if c
    never occurs in t), F-beta = (1 + beta**2) P R / (beta**2 P + R), support
    = the number of labels equal to c. y: float scores (N, C, d1, ...); t:
    integer labels (N, d1, ...); elements whose label is ignore_label
    (default -1) are left out. label_num: the number of classes (default
    None: t.max() + 1, read from the device). Returns a tuple of four
    Variables of shape (label_num,) without gradient: precision, recall,
    F-beta (float64, as in Chainer) and support (integers). Raises TypeError
    for integer y or non-integer t, ValueError for shapes that do not match.
    Chainer: chainer.functions.classification_summary.
    """
    y, t = _input_data('classification_summary', y), _input_data('classification_summary', t)
    _require_float('classification_summary', y)
    if t.dtype.kind not in 'iu':
        raise TypeError('classification_summary: t must hold integer labels, got dtype {}'
                        .format(t.dtype))
    if y.ndim < 2 or y.ndim < t.ndim or y.shape[0] != t.shape[0] \
            or y.shape[2:t.ndim + 1] != t.shape[1:] or any(n != 1 for n in y.shape[t.ndim + 1:]):
        raise ValueError('classification_summary: y.shape {} and t.shape {} do not match'
                         .format(y.shape, t.shape))
    xp = _xp(y)
    t = t.astype(np.int32, copy=False).ravel()
    if label_num is None:
        label_num = int(t.max()) + 1 if t.size else 0
    ignored = t == ignore_label
    # Ignored elements are counted in an extra class label_num, then dropped.
    pred = xp.where(ignored, label_num, y.argmax(axis=1).ravel())
    true = xp.where(ignored, label_num, t)
    support = xp.bincount(true, minlength=label_num + 1)[:label_num]
    relevant = xp.bincount(pred, minlength=label_num + 1)[:label_num]
    tp = xp.bincount(xp.where(pred == true, true, label_num), minlength=label_num + 1)[:label_num]
    with np.errstate(divide='ignore', invalid='ignore'):   # 0/0 is NaN, as in Chainer
        precision = tp / relevant
        recall = tp / support
        b2 = beta * beta
        fbeta = (1 + b2) * precision * recall / (b2 * precision + recall)
    return tuple(Variable(a, requires_grad=False) for a in (precision, recall, fbeta, support))


@_export('functions', 'functions.evaluation.classification_summary')
def precision(y, t, label_num=None, ignore_label=-1):
    """Per-class precision tp / (tp + fp) of argmax(y, axis 1) against t, and
    the support: the tuple (precision, support) of classification_summary,
    whose docstring has the arguments. Chainer: chainer.functions.precision.
    """
    summary = classification_summary(y, t, label_num, 1.0, ignore_label)
    return summary[0], summary[3]


@_export('functions', 'functions.evaluation.classification_summary')
def recall(y, t, label_num=None, ignore_label=-1):
    """Per-class recall tp / (tp + fn) of argmax(y, axis 1) against t, and the
    support: the tuple (recall, support) of classification_summary, whose
    docstring has the arguments. Chainer: chainer.functions.recall.
    """
    summary = classification_summary(y, t, label_num, 1.0, ignore_label)
    return summary[1], summary[3]


@_export('functions', 'functions.evaluation.classification_summary')
def f1_score(y, t, label_num=None, ignore_label=-1):
    """Per-class F1 score 2 P R / (P + R) of argmax(y, axis 1) against t, and
    the support: the tuple (f1, support) of classification_summary with
    beta=1, whose docstring has the arguments. Chainer: chainer.functions.f1_score.
    """
    summary = classification_summary(y, t, label_num, 1.0, ignore_label)
    return summary[2], summary[3]


@_export('functions.math.identity')
class Identity(Function):
    """Function node that returns its inputs unchanged and passes the gradients
    back unchanged. Chainer: chainer.functions.array.identity.Identity.
    """
    label = 'identity'

    def forward(self, inputs):
        return inputs

    def backward(self, inputs, grad_outputs):
        return grad_outputs


@_export('functions', 'functions.math.identity')
def identity(*inputs):
    """Return the inputs unchanged as new Variables (a node in the graph, no
    copy of the data): one Variable for one input, else a tuple.
    Chainer: chainer.functions.identity.
    """
    return Identity()(*inputs)


# ----- composites: square, squared_error, swapaxes, hstack, vstack, argmax ----
# Each but linear_interpolate is one line on top of the functions above, so
# its gradient comes for free.

@_export('functions', 'functions.math.square')
def square(x):
    """x * x, elementwise: a Variable of x's shape and dtype (float).
    Gradient 2 x gy.  Chainer: chainer.functions.square."""
    return mul(x, x)


@_export('functions', 'functions.loss.squared_error')
def squared_error(x0, x1):
    """(x0 - x1)^2, elementwise, for two float arrays of one shape and dtype
    (broadcasting as in sub); returns a Variable, not reduced.
    Chainer: chainer.functions.squared_error (alias F.squared_difference)."""
    return square(sub(x0, x1))
_export('functions.loss.squared_error', squared_difference=squared_error)
_export('functions', squared_difference=squared_error)


@_export('functions.math.linear_interpolate')
class LinearInterpolate(Function):
    """Function node of z = p * x + (1 - p) * y; backward (x - y) gz,
    p gz, (1 - p) gz. Chainer: chainer.functions.math.linear_interpolate.
    """
    label = 'linear_interpolate'

    def forward(self, inputs):
        p, x, y = inputs
        _require_float('linear_interpolate', p, x, y)
        _check_same_dtype('linear_interpolate', inputs)
        if not p.shape == x.shape == y.shape:
            raise ValueError('linear_interpolate: p, x and y need one shape, got {}, {} '
                             'and {}'.format(p.shape, x.shape, y.shape))
        one = p.dtype.type(1)       # not 1: NumPy 1.x makes 1 - p float64 for a 0-dim p
        return p * x + (one - p) * y,

    def backward(self, inputs, grad_outputs):      # linear in x and y, and in p
        p, x, y = inputs
        gz, = grad_outputs
        return (x - y) * gz, p * gz, (p.dtype.type(1) - p) * gz


@_export('functions', 'functions.math.linear_interpolate')
def linear_interpolate(p, x, y):
    """Elementwise p * x + (1 - p) * y. p, x, y: float Variables or arrays of
    one shape and dtype; all three get gradients. Returns a Variable. Raises
    ValueError for differing shapes, TypeError for integer or differing
    dtypes. Chainer: chainer.functions.linear_interpolate.
    """
    return LinearInterpolate()(p, x, y)


@_export('functions', 'functions.array.swapaxes')
def swapaxes(x, axis1, axis2):
    """x with axes axis1 and axis2 exchanged (a transpose; negative axes count
    from the end).  Returns a Variable; IndexError for an axis out of range.
    Chainer: chainer.functions.swapaxes."""
    axes = list(range(_input_data('swapaxes', x).ndim))
    axes[axis1], axes[axis2] = axes[axis2], axes[axis1]
    return transpose(x, tuple(axes))


@_export('functions', 'functions.array.hstack')
def hstack(xs):
    """Concatenate the sequence xs along axis 1 (axis 0 for 1-d inputs); the
    shapes must agree elsewhere.  Returns a Variable; ValueError for no input.
    Chainer: chainer.functions.hstack."""
    _require_inputs('hstack', xs)
    ndim = _input_data('hstack', xs[0]).ndim
    if ndim == 0:                  # 0-dim inputs become (1,) first, as in NumPy
        xs = [reshape(x, (1,)) for x in xs]
    return concat(xs, axis=0 if ndim <= 1 else 1)


@_export('functions', 'functions.array.vstack')
def vstack(xs):
    """Concatenate the sequence xs along axis 0; 1-d inputs of length n become
    rows (1, n) first.  Returns a Variable; ValueError for no input.
    Chainer: chainer.functions.vstack."""
    _require_inputs('vstack', xs)
    if _input_data('vstack', xs[0]).ndim <= 1:
        xs = [reshape(x, (1, -1)) for x in xs]
    return concat(xs, axis=0)


@_export('functions', 'functions.math.minmax')
def argmax(x, axis=None):
    """Index of the largest element of x, over all of x (axis None, default)
    or along `axis`.  Returns an int32 Variable with no gradient.
    Chainer: chainer.functions.argmax."""
    data = _input_data('argmax', x)
    return Variable(_xp(data).asarray(data.argmax(axis=axis), dtype=np.int32),
                    requires_grad=False)


@_export('functions', 'functions.math.minmax')
def argmin(x, axis=None):
    """Index of the smallest element of x, over all of x (axis None, default)
    or along `axis`.  Returns an int32 Variable with no gradient.
    Chainer: chainer.functions.argmin."""
    data = _input_data('argmin', x)
    return Variable(_xp(data).asarray(data.argmin(axis=axis), dtype=np.int32),
                    requires_grad=False)


# ----- broadcast products, maxout and the bilinear form ----------------------------
# scale and bias follow Caffe's broadcasting: y has shape y.shape placed at
# `axis` of x, padded with 1s on both sides, then broadcast (x (N, 3, 4, 5)
# with y (3, 4) and axis 1 uses y as (1, 3, 4, 1)).  Built from reshape,
# broadcast_to, mul and add, so their gradients come for free.

def _caffe_broadcast(label, x, y, axis):
    """y reshaped so that it broadcasts against x from `axis` on."""
    x_shape = _input_data(label, x).shape
    y_shape = _input_data(label, y).shape
    if not 0 <= axis <= len(x_shape) - len(y_shape) \
            or x_shape[axis:axis + len(y_shape)] != y_shape:
        raise ValueError('{}: y.shape {} must equal x.shape[{}:{}] (x.shape {}, axis {})'
                         .format(label, y_shape, axis, axis + len(y_shape), x_shape, axis))
    padded = (1,) * axis + y_shape + (1,) * (len(x_shape) - axis - len(y_shape))
    return broadcast_to(reshape(y, padded), x_shape)


@_export('functions', 'functions.math.scale')
def scale(x, y, axis=1):
    """Elementwise product x * y, with y broadcast from `axis` of x: y.shape
    must equal x.shape[axis:axis + y.ndim] (axis default 1, a non-negative int).
    Returns a Variable of x's shape; both get gradients.  Raises ValueError
    when the shapes do not fit. Chainer: chainer.functions.scale.
    """
    return mul(x, _caffe_broadcast('scale', x, y, axis))


@_export('functions', 'functions.math.bias')
def bias(x, y, axis=1):
    """Elementwise sum x + y, with y broadcast from `axis` of x as in scale.
    Returns a Variable of x's shape; both get gradients.  Raises ValueError
    when the shapes do not fit. Chainer: chainer.functions.bias.
    """
    return add(x, _caffe_broadcast('bias', x, y, axis))


@_export('functions', 'functions.activation.maxout')
def maxout(x, pool_size, axis=1):
    """Maxout: split `axis` of x (size M * pool_size) into (M, pool_size) and
    take the maximum over each pool: y[..., m, ...] = max_p x[..., m * pool_size + p, ...].

    x: float array; pool_size: a positive int dividing x.shape[axis]; axis
    default 1.  Returns a Variable of x's shape with x.shape[axis] divided by
    pool_size; the gradient goes to the pool's maximum.  Raises ValueError
    for a bad pool_size or axis. Chainer: chainer.functions.maxout.
    """
    shape = _input_data('maxout', x).shape
    pool_size = _positive_int('maxout', 'pool_size', pool_size)
    if not -len(shape) <= axis < len(shape):
        raise ValueError('maxout: axis {} is out of range for x.shape {}'.format(axis, shape))
    axis %= len(shape)
    if shape[axis] % pool_size:
        raise ValueError('maxout: x.shape[{}] = {} is not divisible by pool_size {} '
                         '(x.shape {})'.format(axis, shape[axis], pool_size, shape))
    pooled = shape[:axis] + (shape[axis] // pool_size, pool_size) + shape[axis + 1:]
    return _max(reshape(x, pooled), axis=axis + 1)


@_export('functions.connection.bilinear')
class BilinearFunction(Function):
    """Function node of y[i, l] = sum_jk e1[i, j] e2[i, k] W[j, k, l]
    (+ e1 V1 + e2 V2 + b when given); backward contracts gy with the other
    factors. Chainer: chainer.functions.connection.bilinear.BilinearFunction.
    """
    label = 'bilinear'
    input_names = ('e1', 'e2', 'W', 'V1', 'V2', 'b')

    def forward(self, inputs):
        e1, e2, W = inputs[:3]
        _require_float('bilinear', e1)
        _check_same_dtype('bilinear', inputs)
        if e1.ndim < 1 or e2.ndim < 1 or W.ndim != 3:
            raise ValueError('bilinear: e1 and e2 need a batch axis and W 3 dimensions '
                             '(J, K, L); got e1 {}, e2 {}, W {}'.format(e1.shape, e2.shape,
                                                                         W.shape))
        a, c = e1.reshape(len(e1), -1), e2.reshape(len(e2), -1)   # axes after the first, flat
        shapes = [('W', W.shape, (a.shape[-1], c.shape[-1], W.shape[-1]))]
        if len(inputs) == 6:
            V1, V2, b = inputs[3:]
            L_ = W.shape[-1]
            shapes += [('V1', V1.shape, (a.shape[-1], L_)), ('V2', V2.shape, (c.shape[-1], L_)),
                       ('b', b.shape, (L_,))]
        if len(e1) != len(e2) or any(got != want for _, got, want in shapes):
            raise ValueError('bilinear: expected e1 (I, J), e2 (I, K), W (J, K, L), V1 (J, L), '
                             'V2 (K, L), b (L,); got e1 {}, e2 {}, {}'.format(
                                 e1.shape, e2.shape, ', '.join(
                                     '{} {}'.format(n, s) for n, s, _ in shapes)))
        self.a, self.c = a, c
        # The outer product of each row pair, flattened, meets W as one matrix.
        self.ac = (a[:, :, None] * c[:, None, :]).reshape(len(a), -1)
        y = self.ac.dot(W.reshape(-1, W.shape[-1]))
        if len(inputs) == 6:
            y += a.dot(V1) + c.dot(V2) + b
        return y,

    def backward(self, inputs, grad_outputs):
        e1, e2, W = inputs[:3]
        gy, = grad_outputs
        a, c = self.a, self.c
        J, K, L_ = W.shape
        g_ac = gy.dot(W.reshape(-1, L_).T).reshape(len(a), J, K)   # dL/d(a_j c_k)
        ga = (g_ac * c[:, None, :]).sum(axis=2)
        gc = (g_ac * a[:, :, None]).sum(axis=1)
        gW = self.ac.T.dot(gy).reshape(W.shape)
        if len(inputs) == 3:
            return ga.reshape(e1.shape), gc.reshape(e2.shape), gW
        V1, V2, b = inputs[3:]
        ga += gy.dot(V1.T)
        gc += gy.dot(V2.T)
        return (ga.reshape(e1.shape), gc.reshape(e2.shape), gW, a.T.dot(gy), c.T.dot(gy),
                gy.sum(axis=0))


@_export('functions', 'functions.connection.bilinear')
def bilinear(e1, e2, W, V1=None, V2=None, b=None):
    """Bilinear form of two batches of vectors:
    y[i, l] = sum_jk e1[i, j] e2[i, k] W[j, k, l] + sum_j e1[i, j] V1[j, l]
              + sum_k e2[i, k] V2[k, l] + b[l].

    e1: float (I, J) and e2 (I, K) (more axes are flattened after the first);
    W: (J, K, L); V1 (J, L), V2 (K, L), b (L,): all three or none (default
    None: the linear terms are left out).  One dtype throughout; all get
    gradients.  Returns a Variable of shape (I, L).  Raises ValueError for
    shapes that do not fit or only some of V1, V2, b. Chainer: chainer.functions.bilinear.
    """
    given = [v is not None for v in (V1, V2, b)]
    if any(given) and not all(given):
        raise ValueError('bilinear: give all of V1, V2 and b, or none of them; got V1 {}, '
                         'V2 {}, b {}'.format(*['given' if g else 'None' for g in given]))
    if all(given):
        return BilinearFunction()(e1, e2, W, V1, V2, b)
    return BilinearFunction()(e1, e2, W)


# ----- embeddings ------------------------------------------------------------------
# embed_id(x, W) is W[x]: row x of W for every integer id in x.  It is the
# product of a one-hot vector with W, without building the one-hot, and its
# gradient adds gy into the rows that were picked.

@_export('functions.connection.embed_id')
class EmbedIDFunction(Function):
    """Function node of y = W[x] (zeros where x == ignore_label); backward
    scatter-adds gy into the rows of W that x picked (no gradient for x).
    Chainer: chainer.functions.connection.embed_id.EmbedIDFunction.
    """
    label = 'embed_id'
    input_names = ('x', 'W')

    def __init__(self, ignore_label=None):
        self.ignore_label = ignore_label

    def forward(self, inputs):
        x, W = inputs
        if x.dtype.kind != 'i' or x.ndim < 1:
            raise TypeError('embed_id: x must be signed integer ids with 1 or more '
                            'dimensions, got dtype {} shape {}'.format(x.dtype, x.shape))
        if W.ndim != 2:
            raise ValueError('embed_id: W must have 2 dimensions (n_ids, size), got '
                             'shape {}'.format(W.shape))
        _require_float('embed_id', W)
        xp = _xp(W)
        self.ignored = None if self.ignore_label is None else x == self.ignore_label
        ids = x if self.ignored is None else xp.where(self.ignored, 0, x)
        # A negative id would silently wrap around; the check reads the
        # values, which on a GPU means waiting, so there only in debug mode.
        if xp is np or config.debug:
            bad = (ids < 0) | (ids >= len(W))
            if bad.any():
                raise ValueError('embed_id: ids must be in [0, {}) or equal ignore_label '
                                 '({}); got {}'.format(len(W), self.ignore_label,
                                                       int(x[bad][0])))
        self.ids = ids
        y = W[ids]
        if self.ignored is not None:
            # where, not y[mask] = 0: on CuPy a boolean-mask assignment waits
            # for the device to count the mask.
            y = xp.where(self.ignored[..., None], W.dtype.type(0), y)
        return y,

    def backward(self, inputs, grad_outputs):      # row i of W gets the sum of gy where x == i
        x, W = inputs
        gy, = grad_outputs
        xp = _xp(W)
        if self.ignored is not None:
            gy = xp.where(self.ignored[..., None], gy.dtype.type(0), gy)
        gW = xp.zeros_like(W)
        xp.add.at(gW, self.ids, gy)
        return None, gW


@_export('functions', 'functions.connection.embed_id')
def embed_id(x, W, ignore_label=None):
    """Word embedding: y[..., :] = W[x[...]], the row of W for each integer id.

    x: signed integer ids (B,) or of any shape with 1 or more dimensions, each
    in [0, V) or equal to ignore_label; W: float (V, d). ignore_label (default
    None): an int whose ids give zero vectors. Only W gets a gradient. Returns
    a Variable of shape x.shape + (d,). Raises TypeError for a non-integer x,
    ValueError for an id out of range (on a GPU only with config.debug, as in
    Chainer) or a W that is not 2-d. Chainer: chainer.functions.embed_id.
    """
    return EmbedIDFunction(ignore_label)(x, W)


# =============================================================================
# Chapter 10. Initializers and more links
# =============================================================================
# An initializer fills a parameter's array in place.  LeCunNormal draws from
# N(0, 1/fan_in), which keeps the variance of activations steady from layer
# to layer; HeNormal doubles it, because ReLU zeroes half of them.  fan_in is
# the number of inputs per unit (in_size for Linear, in_channels * kh * kw
# for a convolution).


def _get_fans(shape):
    """(fan_in, fan_out) of a weight shape (out, in, *kernel): in * prod(kernel)
    and out * prod(kernel). Raises ValueError for fewer than 2 dimensions.
    Chainer: chainer.initializer.get_fans.
    """
    if len(shape) < 2:
        raise ValueError('initializer: fan in/out need a shape with 2 or more '
                         'dimensions, got {}'.format(shape))
    receptive = int(np.prod(shape[2:]))
    return shape[1] * receptive, shape[0] * receptive
_export('initializers', get_fans=_get_fans)


@_export('initializer', 'initializers')
class Initializer:
    """Fills an array in place: `initializer(array)`.  Random ones draw from
    `rng` if given, else from the array's module: on the CPU NumPy's global
    generator, so numpy.random.seed makes initialization reproducible, as in
    Chainer."""

    def __init__(self, dtype=None, rng=None):
        self.dtype = dtype
        self.rng = rng

    def _random(self, array):
        return _xp(array).random if self.rng is None else self.rng

    def __call__(self, array):
        """Fill `array` (a NumPy or CuPy array) in place; returns None."""
        raise NotImplementedError


@_export('initializers', 'initializers.constant')
class Constant(Initializer):
    """Initializer that fills with `fill_value`: a scalar, or an array of the
    parameter's shape (copied to the array's device). dtype: default None
    (config.dtype). Chainer: chainer.initializers.Constant.
    """
    def __init__(self, fill_value, dtype=None):
        super().__init__(dtype)
        self.fill_value = fill_value

    def __call__(self, array):
        fill = self.fill_value
        array[...] = _device_of(array).send(fill) if isinstance(fill, _array_types) else fill


@_export('initializers', 'initializers.constant')
class Zero(Constant):
    """Initializer that fills with 0. Chainer: chainer.initializers.Zero."""
    def __init__(self, dtype=None):
        super().__init__(0.0, dtype)


@_export('initializers', 'initializers.constant')
class One(Constant):
    """Initializer that fills with 1. Chainer: chainer.initializers.One."""
    def __init__(self, dtype=None):
        super().__init__(1.0, dtype)


@_export('initializers', 'initializers.constant')
class NaN(Constant):
    """Initializer that fills with NaN: the placeholder of a parameter whose
    values are to come from elsewhere (a file, copyparams), so that forgetting
    them shows. Chainer: chainer.initializers.NaN.
    """
    def __init__(self, dtype=None):
        super().__init__(np.nan, dtype)


@_export('initializers', 'initializers.normal')
class Normal(Initializer):
    """Initializer drawing from the normal distribution N(0, scale**2).
    scale: standard deviation, default 0.05; dtype: default None (config.dtype);
    rng: a numpy.random.RandomState-like generator, default None (the array
    module's global one). Chainer: chainer.initializers.Normal.
    """
    def __init__(self, scale=0.05, dtype=None, rng=None):
        super().__init__(dtype, rng)
        self.scale = scale

    def __call__(self, array):
        array[...] = self._random(array).normal(0.0, self.scale, array.shape)


@_export('initializers', 'initializers.uniform')
class Uniform(Initializer):
    """Initializer drawing from the uniform distribution U(-scale, scale).
    scale default 0.05; dtype, rng as for Normal. Chainer: chainer.initializers.Uniform.
    """
    def __init__(self, scale=0.05, dtype=None, rng=None):
        super().__init__(dtype, rng)
        self.scale = scale

    def __call__(self, array):
        array[...] = self._random(array).uniform(-self.scale, self.scale, array.shape)


@_export('initializers', 'initializers.normal')
class LeCunNormal(Initializer):
    """Initializer drawing from N(0, scale**2 / fan_in) (LeCun).
    scale default 1.0; dtype, rng as for Normal; the array needs 2 or more
    dimensions (ValueError otherwise). The default initialW of L.Linear.
    Chainer: chainer.initializers.LeCunNormal.
    """

    def __init__(self, scale=1.0, dtype=None, rng=None):
        super().__init__(dtype, rng)
        self.scale = scale

    def __call__(self, array):
        fan_in, _ = _get_fans(array.shape)
        Normal(self.scale * math.sqrt(1.0 / fan_in), rng=self.rng)(array)


@_export('initializers', 'initializers.normal')
class HeNormal(Initializer):
    """Initializer drawing from N(0, scale**2 * 2 / fan) (He), for ReLU networks.
    fan_option: 'fan_in' (default) or 'fan_out'; scale default 1.0; dtype, rng
    as for Normal. Chainer: chainer.initializers.HeNormal.
    """

    def __init__(self, scale=1.0, dtype=None, fan_option='fan_in', rng=None):
        super().__init__(dtype, rng)
        self.scale = scale
        self.fan_option = fan_option

    def __call__(self, array):
        fan_in, fan_out = _get_fans(array.shape)
        fan = {'fan_in': fan_in, 'fan_out': fan_out}[self.fan_option]
        Normal(self.scale * math.sqrt(2.0 / fan), rng=self.rng)(array)


@_export('initializers', 'initializers.normal')
class GlorotNormal(Initializer):
    """Initializer drawing from N(0, scale**2 * 2 / (fan_in + fan_out)) (Glorot).
    scale default 1.0; dtype, rng as for Normal. Chainer: chainer.initializers.GlorotNormal.
    """

    def __init__(self, scale=1.0, dtype=None, rng=None):
        super().__init__(dtype, rng)
        self.scale = scale

    def __call__(self, array):
        fan_in, fan_out = _get_fans(array.shape)
        Normal(self.scale * math.sqrt(2.0 / (fan_in + fan_out)), rng=self.rng)(array)


@_export('initializers', 'initializers.uniform')
class GlorotUniform(Initializer):
    """Initializer drawing from U(-s, s), s = scale * sqrt(6 / (fan_in + fan_out)).
    scale default 1.0; dtype, rng as for Normal. Chainer: chainer.initializers.GlorotUniform.
    """

    def __init__(self, scale=1.0, dtype=None, rng=None):
        super().__init__(dtype, rng)
        self.scale = scale

    def __call__(self, array):
        fan_in, fan_out = _get_fans(array.shape)
        Uniform(self.scale * math.sqrt(6.0 / (fan_in + fan_out)), rng=self.rng)(array)


@_export('initializers', 'initializers.uniform')
class HeUniform(Initializer):
    """U(-s, s) with s = scale * sqrt(6 / fan_in).  Chainer: initializers.HeUniform."""

    def __init__(self, scale=1.0, dtype=None, rng=None):
        super().__init__(dtype, rng)
        self.scale = scale

    def __call__(self, array):
        fan_in, _ = _get_fans(array.shape)
        Uniform(self.scale * math.sqrt(6.0 / fan_in), rng=self.rng)(array)


@_export('initializers', 'initializers.uniform')
class LeCunUniform(Initializer):
    """U(-s, s) with s = scale * sqrt(3 / fan_in).  Chainer: initializers.LeCunUniform."""

    def __init__(self, scale=1.0, dtype=None, rng=None):
        super().__init__(dtype, rng)
        self.scale = scale

    def __call__(self, array):
        fan_in, _ = _get_fans(array.shape)
        Uniform(self.scale * math.sqrt(3.0 / fan_in), rng=self.rng)(array)


class _IdentityInitializer(Initializer):
    """Initializer that fills a square matrix with scale * I.  scale default
    1.0; dtype default None (config.dtype).  Raises ValueError unless the
    array is 2-D and square.  Marked as initializers.Identity below (the
    name Identity here is F.identity's Function, Chapter 9).
    Chainer: chainer.initializers.Identity.
    """

    def __init__(self, scale=1.0, dtype=None):
        super().__init__(dtype)
        self.scale = scale

    def __call__(self, array):
        shape = array.shape
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError('Identity: the array must be a square matrix, got shape '
                             '{}'.format(shape))
        array[...] = _xp(array).identity(shape[0]) * self.scale
_export('initializers.constant', Identity=_IdentityInitializer)
_export('initializers', Identity=_IdentityInitializer)


_ORTHOGONAL_MODES = {       # mode: (needs in >= out, needs in <= out)
    'auto': (False, False), 'projection': (False, True),
    'embedding': (True, False), 'basis': (True, True)}


@_export('initializers', 'initializers.orthogonal')
class Orthogonal(Initializer):
    """Initializer with orthonormal rows (or columns) times scale (Saxe et
    al. 2013): the array, seen as a matrix (out, in) = (shape[0], the product
    of the rest), is Q of the QR decomposition of a standard normal matrix
    (of its transpose when in > out), with signs making R's diagonal
    positive, so Q is drawn uniformly.  A 0-dim array gets +-scale.
    scale default 1.1; dtype default None; mode 'auto' (default, any
    shape), 'projection' (in >= out), 'embedding' (in <= out) or 'basis'
    (in == out): ValueError for another shape or mode, or an empty array;
    rng as for Normal, default numpy.random (drawn on the host, also for a
    GPU array). Chainer: chainer.initializers.Orthogonal.
    """

    def __init__(self, scale=1.1, dtype=None, mode='auto', rng=None):
        if mode not in _ORTHOGONAL_MODES:
            raise ValueError('Orthogonal: mode must be one of {}, not {!r}'.format(
                ', '.join(map(repr, _ORTHOGONAL_MODES)), mode))
        super().__init__(dtype, rng)
        self.scale = scale
        self.mode = mode

    def __call__(self, array):
        rng = np.random if self.rng is None else self.rng
        if array.ndim == 0:
            array[...] = self.scale * (2 * int(rng.randint(2)) - 1)
            return
        if array.size == 0:
            raise ValueError('Orthogonal: the array must not be empty, got shape '
                             '{}'.format(array.shape))
        out_dim, in_dim = array.shape[0], array.size // array.shape[0]
        needs_embedding, needs_projection = _ORTHOGONAL_MODES[self.mode]
        if (needs_embedding and in_dim > out_dim) or (needs_projection and in_dim < out_dim):
            raise ValueError('Orthogonal: cannot make an orthogonal {} of shape {} (in {}, '
                             'out {})'.format(self.mode, array.shape, in_dim, out_dim))
        # QR on the host: a few milliseconds once, and CuPy's needs cuSOLVER.
        a = _to_cpu(rng.normal(size=(out_dim, in_dim)))
        transpose = in_dim > out_dim     # QR gives orthonormal columns: make them the long side
        q, r = np.linalg.qr(a.T if transpose else a)
        q *= np.copysign(self.scale, np.diag(r))
        if transpose:
            q = q.T
        array[...] = _device_of(array).send(q.reshape(array.shape).astype(array.dtype))


@_export('initializers')
def _get_initializer(spec, default=None):
    """Accept what Chainer accepts for initialW: None, a scalar, an array,
    an Initializer or any callable that fills an array."""
    if spec is None:
        return default
    if _scalar_constant(spec, None) is not None or isinstance(spec, _array_types):
        return Constant(spec)
    if callable(spec):
        return spec
    raise TypeError('initializer: expected None, a scalar, an array or an '
                    'Initializer, got {}'.format(type(spec).__name__))


@_export('initializers')
def generate_array(initializer, shape, xp, dtype=None, device=None):
    """Return a new array of `shape` on `xp` (numpy or cupy), filled by `initializer`.

    dtype: default the initializer's dtype, else config.dtype; device: if given,
    overrides xp. Raises ValueError when a Constant holds an array of another
    shape. Chainer: chainer.initializers.generate_array.
    """
    dtype = np.dtype(dtype or getattr(initializer, 'dtype', None) or config.dtype)
    if device is not None:
        xp = get_device(device).xp
    array = xp.empty(shape, dtype=dtype)
    if isinstance(initializer, Constant) and isinstance(initializer.fill_value, _array_types) \
            and initializer.fill_value.shape != tuple(shape):
        raise ValueError('initializer: array of shape {} given for a parameter of '
                         'shape {}'.format(initializer.fill_value.shape, tuple(shape)))
    initializer(array)
    return array


def _check_same_shape(operation, path, mine, theirs):
    """Raise ValueError naming `path` and both shapes unless they agree (mine
    None: a parameter without data takes any shape)."""
    if mine is not None and mine.shape != theirs.shape:
        raise ValueError('{}: {} has shape {} here but {} in the source; nothing was '
                         'changed'.format(operation, path, mine.shape, theirs.shape))


def _shape_and_dtype(value):
    """(shape, dtype) of a parameter given to Link(**params) as Chainer takes
    it: a shape (an int, a tuple of ints or None; float32), or a pair
    (shape, dtype) such as ((2, 3), 'd')."""
    if isinstance(value, tuple) and len(value) == 2 and \
            not isinstance(value[1], (int, np.integer)):
        return value
    return value, np.float32


@_continue_class(Link)
class _LinkTreeAndCopies:

    @property
    def within_init_scope(self):
        """True inside `with self.init_scope():`. Chainer: chainer.Link.within_init_scope."""
        return self._within_init_scope

    def __delattr__(self, name):
        for registry in (self._params, self._persistent):
            if name in registry:
                registry.remove(name)
        object.__delattr__(self, name)

    def add_param(self, name, shape=None, dtype=np.float32, initializer=None):
        """Register a new Parameter `name`: of `shape` (None: uninitialized until
        set), dtype default float32, filled by `initializer` (default NaN).
        Raises AttributeError if the attribute exists. Chainer: chainer.Link.add_param.
        """
        if name in self.__dict__:
            raise AttributeError('add_param: {!r} already exists on {}'.format(
                name, type(self).__name__))
        if initializer is None:
            initializer = NaN(dtype)
        param = Parameter(initializer, shape)
        with self.init_scope():
            setattr(self, name, param)

    def add_persistent(self, name, value):
        """Register `value` as a persistent attribute `name`: saved and loaded by
        serializers and moved by to_device (arrays), but not updated by optimizers.
        Raises AttributeError if the attribute exists. Chainer: chainer.Link.add_persistent.
        """
        if name in self.__dict__:
            raise AttributeError('add_persistent: {!r} already exists'.format(name))
        self._persistent.append(name)
        object.__setattr__(self, name, value)

    def register_persistent(self, name):
        """Register the existing attribute `name` as persistent (see
        add_persistent). Chainer: chainer.Link.register_persistent."""
        self._persistent.append(name)

    def links(self, skipself=False):
        """Iterate over this link (unless skipself) and all its descendants.
        Chainer: chainer.Link.links.
        """
        for _, link in self.namedlinks(skipself):
            yield link

    def namedlinks(self, skipself=False):
        """Iterate over (path, Link) pairs: '/' for this link (unless skipself),
        '/l1', '/l1/l2' ... for descendants. Chainer: chainer.Link.namedlinks.
        """
        if not skipself:
            yield '/', self

    def children(self):
        """Iterate over the direct child links (none for a plain Link).
        Chainer: chainer.Link.children.
        """
        return iter(())

    def count_params(self):
        """The total number of elements (an int) of the initialized parameters;
        warns (UserWarning) for each one without data. Chainer: chainer.Link.count_params.
        """
        for path, param in self.namedparams():
            if param.data is None:
                warnings.warn('count_params: parameter {} is not initialized yet (no '
                              'shape), so the count leaves it out'.format(path), stacklevel=2)
        return int(np.sum([p.size for p in self.params() if p.data is not None]))

    def zerograds(self):
        """Set the gradient of every parameter to zeros (deprecated in Chainer in
        favour of cleargrads). Chainer: chainer.Link.zerograds.
        """
        for param in self.params():
            param.zerograd()

    def copyparams(self, link, copy_persistent=True):
        """Copy every parameter value (and, with copy_persistent, every
        persistent value) of `link`, of the same structure, into self.  Raises
        ValueError naming the path and both shapes for a missing or misshapen
        parameter, before anything is copied. Chainer: chainer.Link.copyparams.
        """
        # Every pair is checked before the first copy: a failed copyparams
        # changes nothing (Chainer's stops half-way, with NumPy's message).
        source = dict(link.namedparams())
        pairs = []
        for name, param in self.namedparams():
            if name not in source:
                raise ValueError('copyparams: {} has no parameter {}; nothing was '
                                 'copied'.format(type(link).__name__, name))
            src = source[name].data
            if src is None:       # Chainer skips it silently: self keeps other values
                if param.data is None:
                    continue      # neither has data yet: nothing to copy
                raise ValueError('copyparams: {} of the source has no data (it is not '
                                 'initialized: run the source once first)'.format(name))
            _check_same_shape('copyparams', name, param.data, src)
            pairs.append((param, src))
        persistents = []
        if copy_persistent:
            theirs = dict(link.namedlinks())
            for path, own in self.namedlinks():
                for key in own._persistent:
                    name = path.rstrip('/') + '/' + key
                    if path not in theirs or key not in theirs[path].__dict__:
                        raise ValueError('copyparams: {} has no persistent value {}; '
                                         'nothing was copied'.format(type(link).__name__, name))
                    value = theirs[path].__dict__[key]
                    mine = own.__dict__.get(key)
                    if isinstance(value, _array_types) and isinstance(mine, _array_types):
                        _check_same_shape('copyparams', name, mine, value)
                    persistents.append((own, key, value))
        for param, src in pairs:
            if param.data is None:
                param.initialize(src.shape, self.xp)
            param.data[...] = _device_of(param.data).send(src)     # across devices too
        for own, key, value in persistents:
            object.__setattr__(own, key, copy.deepcopy(value))

    def copy(self, mode='share'):
        """A twin of this link.  'share' (the default): new Parameter objects
        around the *same* arrays, so an update of one is an update of both
        (e.g. a model for evaluation); 'copy': copies of the arrays; 'init':
        fresh values from each parameter's initializer.
        Chainer: chainer.Link.copy.
        """
        if mode == 'copy':
            return copy.deepcopy(self)
        if mode == 'init':
            twin = copy.deepcopy(self)
            for param in twin.params(include_uninit=False):
                param.initialize(param.shape, param.xp)
            return twin
        if mode != 'share':
            raise ValueError("Link.copy: mode must be 'share', 'copy' or 'init', "
                             "not {!r}".format(mode))
        twin = copy.copy(self)
        object.__setattr__(twin, '_params', list(self._params))
        object.__setattr__(twin, '_persistent', list(self._persistent))
        twin.name = None
        for name in self._params:
            param = twin.__dict__[name] = copy.copy(self.__dict__[name])
            param._grad = None
        return twin

    @property
    def update_enabled(self):
        """True if an optimizer would update at least one parameter.
        Chainer: chainer.Link.update_enabled.
        """
        return any(param.update_rule is not None and param.update_rule.enabled
                   for param in self.params())

    def enable_update(self):
        """Let the optimizer update this link's parameters again (after
        disable_update). Chainer: chainer.Link.enable_update.
        """
        for param in self.params():
            if param.update_rule is not None:
                param.update_rule.enabled = True

    def disable_update(self):
        """Freeze this link's parameters: the optimizer skips them until
        enable_update. Chainer: chainer.Link.disable_update.
        """
        for param in self.params():
            if param.update_rule is not None:
                param.update_rule.enabled = False

    def repeat(self, n_repeat, mode='init'):
        """Not supported: raises NotImplementedError. Chainer: chainer.Link.repeat."""
        raise NotImplementedError('Link.repeat is not supported')


@_continue_class(Chain)
class _ChainTreeAndCopies:

    def __delattr__(self, name):
        if name in self._children:
            self._children.remove(name)
        super().__delattr__(name)

    def __getitem__(self, name):
        return getattr(self, name)

    def add_link(self, name, link):
        """Register `link` as the child `name` (Chainer's older style; the same
        as assigning it inside init_scope). Raises AttributeError if the attribute
        exists. Chainer: chainer.Chain.add_link.
        """
        if name in self.__dict__:
            raise AttributeError('add_link: {!r} already exists on {}'.format(
                name, type(self).__name__))
        with self.init_scope():
            setattr(self, name, link)

    def children(self):                  # in lexical order of names, as in Chainer
        for name in sorted(self._children):
            yield self.__dict__[name]

    def copy(self, mode='share'):
        twin = super().copy(mode)
        if mode == 'share':                  # the children are shared-copied too
            object.__setattr__(twin, '_children', list(self._children))
            for name in self._children:
                child = twin.__dict__[name] = self.__dict__[name].copy(mode)
                child.name = name
        return twin

    def namedlinks(self, skipself=False):
        if not skipself:
            yield '/', self
        for name in sorted(self._children):
            for path, link in self.__dict__[name].namedlinks():
                yield '/' + name + path.rstrip('/'), link


@_export('link')
class ChainList(Link):
    """A link made of an ordered list of child links, named '0', '1', ...:
    ChainList(link0, link1) or append(link). Indexing, len() and iteration
    give the children. Chainer: chainer.ChainList.
    """

    def __init__(self, *links):
        super().__init__()
        object.__setattr__(self, '_children', [])
        for link in links:
            self.add_link(link)

    def __setattr__(self, name, value):
        if self._within_init_scope and isinstance(value, Link):
            raise TypeError('ChainList: add links with append(), not attributes')
        super().__setattr__(name, value)

    def add_link(self, link):
        """Append `link` as the next child, named str(index).
        Chainer: chainer.ChainList.add_link (also `append`).
        """
        link.name = str(len(self._children))
        self._children.append(link)

    append = add_link

    def __getitem__(self, index):
        return self._children[index]

    def __iter__(self):
        return iter(self._children)

    def __len__(self):
        return len(self._children)

    def children(self):
        return iter(self._children)

    def copy(self, mode='share'):
        twin = super().copy(mode)
        if mode == 'share':
            object.__setattr__(twin, '_children', [])
            for link in self._children:
                twin.add_link(link.copy(mode))
        return twin

    def namedparams(self, include_uninit=True):
        yield from super().namedparams(include_uninit)
        for i, link in enumerate(self._children):
            for path, param in link.namedparams(include_uninit):
                yield '/{}{}'.format(i, path), param

    def namedlinks(self, skipself=False):
        if not skipself:
            yield '/', self
        for i, link in enumerate(self._children):
            for path, child in link.namedlinks():
                yield '/{}{}'.format(i, path.rstrip('/')), child

    def serialize(self, serializer):
        super().serialize(serializer)
        for i, link in enumerate(self._children):
            link.serialize(serializer[str(i)])


@_export('sequential')
class Sequential(ChainList):
    """Links and functions applied one after another: Sequential(L.Linear(3, 4),
    F.relu, L.Linear(4, 2)).  Links become children (their parameters are
    optimized and saved); functions are just called.  Chainer: chainer.Sequential."""

    def __init__(self, *layers):
        super().__init__()
        self._layers = []
        for layer in layers:
            self.append(layer)

    def append(self, layer):
        if not callable(layer):
            raise TypeError('Sequential: each layer must be a Link or a callable, not {}'
                            .format(type(layer).__name__))
        if isinstance(layer, Link):
            self.add_link(layer)
        self._layers.append(layer)

    def __len__(self):
        return len(self._layers)

    def __getitem__(self, index):
        return self._layers[index]

    def copy(self, mode='share'):
        twin = super().copy(mode)
        children = iter(twin._children)     # the twin's links, in the same order
        object.__setattr__(twin, '_layers', [
            next(children) if isinstance(layer, Link) else layer for layer in self._layers])
        return twin

    def forward(self, *x):
        for layer in self._layers:
            x = layer(*x) if isinstance(x, tuple) else layer(x)
        return x


@_export('links')
class Classifier(Chain):
    """A Chain that computes the loss (and accuracy) of `predictor` and reports
    them.

    Calling classifier(x, t) returns lossfun(predictor(x), t) and reports
    'loss' and, while compute_accuracy (default True), 'accuracy' =
    accfun(y, t). lossfun default F.softmax_cross_entropy, accfun default
    F.accuracy. label_key: which argument is the label, an int position
    (default -1, the last) or a keyword name; the others go to the predictor.
    Chainer: chainer.links.Classifier.
    """

    compute_accuracy = True

    def __init__(self, predictor, lossfun=softmax_cross_entropy,
                 accfun=accuracy, label_key=-1):
        super().__init__()
        self.lossfun = lossfun
        self.accfun = accfun
        self.label_key = label_key
        self.y = self.loss = self.accuracy = None
        with self.init_scope():
            self.predictor = predictor

    def forward(self, *args, **kwargs):
        """Compute predictor(*args) and the loss against the label argument;
        returns the loss Variable. Also sets self.y, self.loss and (if
        compute_accuracy) self.accuracy, and reports 'loss' and 'accuracy' under
        this link's observer name. Raises ValueError for a label_key out of range.
        Chainer: chainer.links.Classifier.forward.
        """
        if isinstance(self.label_key, int):
            if not -len(args) <= self.label_key < len(args):
                raise ValueError('Classifier: label_key {} is out of range for {} '
                                 'arguments'.format(self.label_key, len(args)))
            t = args[self.label_key]
            args = args[:self.label_key] + args[self.label_key:][1:] \
                if self.label_key != -1 else args[:-1]
        else:
            t = kwargs.pop(self.label_key)
        self.y = self.loss = self.accuracy = None
        self.y = self.predictor(*args, **kwargs)
        self.loss = self.lossfun(self.y, t)
        report({'loss': self.loss}, self)
        if self.compute_accuracy:
            self.accuracy = self.accfun(self.y, t)
            report({'accuracy': self.accuracy}, self)
        return self.loss


@_export('links', 'links.connection.embed_id')
class EmbedID(Link):
    """Embedding layer: a table W of in_size vectors of size out_size, looked
    up by integer ids (F.embed_id).

    EmbedID(in_size, out_size, initialW=None, ignore_label=None). W has shape
    (in_size, out_size); initialW: initializer, scalar or array (default
    Normal(1.0), standard normal values). ignore_label: an int whose ids give
    zero vectors. Calling it: integer ids x -> x.shape + (out_size,). Saved in
    npz files under the key W. Chainer: chainer.links.EmbedID.
    """

    def __init__(self, in_size, out_size, initialW=None, ignore_label=None):
        super().__init__()
        self.ignore_label = ignore_label
        with self.init_scope():
            self.W = Parameter(_get_initializer(initialW, Normal(1.0)))
            self.W.initialize((in_size, out_size))

    def forward(self, x):
        """embed_id(x, W, ignore_label) for integer ids x.
        Chainer: chainer.links.EmbedID.forward."""
        return embed_id(x, self.W, self.ignore_label)


# ----- more links: learned activations, broadcast products, maxout, bilinear ----------
# Each holds its parameters as Linear and EmbedID do (assigned in
# init_scope, so npz files use Chainer's keys) and calls a function of
# Chapter 9; the links made of links (Scale, Maxout, Highway) are Chains.

def _check_link_input(link_name, x, param, name):
    """x's array, after checking that param (per-feature, as in prelu) fits
    x.shape[1:]: the error then names the link, not only the function."""
    data = _input_data(link_name, x)
    if param.data is not None and data.shape[1:1 + param.ndim] != param.shape:
        raise ValueError('{}: the input has shape {} but {} has shape {}; it must equal '
                         'x.shape[1:{}]'.format(link_name, data.shape, name, param.shape,
                                                1 + param.ndim))
    return data


@_export('links', 'links.activation.prelu')
class PReLU(Link):
    """Parametric ReLU with a learned slope W (F.prelu).

    PReLU(shape=(), init=0.25): W has `shape` (() for one slope shared by all
    features, (C,) for one per channel) and starts at `init`.  Calling it: x
    (N, ...) with x.shape[1:1 + W.ndim] == W.shape -> same shape.  Saved key:
    W.  Raises ValueError for an input that does not fit W.
    Chainer: chainer.links.PReLU.
    """

    def __init__(self, shape=(), init=0.25):
        super().__init__()
        with self.init_scope():
            self.W = Parameter(init, shape)

    def forward(self, x):
        """prelu(x, W). Chainer: chainer.links.PReLU.forward."""
        _check_link_input('PReLU', x, self.W, 'W')
        return prelu(x, self.W)


@_export('links', 'links.activation.swish')
class Swish(Link):
    """Swish activation x * sigmoid(beta x) with a learned beta (F.swish).

    Swish(beta_shape, beta_init=1.0): beta has shape beta_shape and starts at
    beta_init; beta_shape None takes x.shape[1:] from the first input.
    Calling it: x (N, ...) -> same shape.  Saved key: beta.  Raises
    ValueError for an input that does not fit beta. Chainer: chainer.links.Swish.
    """

    def __init__(self, beta_shape, beta_init=1.0):
        super().__init__()
        with self.init_scope():
            self.beta = Parameter(Constant(beta_init), beta_shape)

    def forward(self, x):
        """swish(x, beta); a lazily shaped beta takes x.shape[1:].
        Chainer: chainer.links.Swish.forward."""
        data = _check_link_input('Swish', x, self.beta, 'beta')
        if self.beta.data is None:
            self.beta.initialize(_check_first_input('Swish', data).shape[1:], _xp(data))
        return swish(x, self.beta)


@_export('links', 'links.connection.bias')
class Bias(Link):
    """Learned broadcast sum x + b (F.bias).

    Bias(axis=1, shape=None): b has `shape` and starts at 0; with shape None
    the link has no parameter and is called with the summand: link(x, y).
    Calling it: link(x) -> bias(x, b, axis).  Saved key: b.  Raises
    ValueError for the wrong number of inputs or shapes that do not fit.
    Chainer: chainer.links.Bias.
    """

    def __init__(self, axis=1, shape=None):
        super().__init__()
        self.axis = axis
        if shape is not None:
            with self.init_scope():
                self.b = Parameter(0, shape)

    def forward(self, *xs):
        """bias(x, b, axis), or bias(x, y, axis) for a link without b.
        Chainer: chainer.links.Bias.forward."""
        x, y = _learned_or_given('Bias', xs, getattr(self, 'b', None))
        return bias(x, y, self.axis)


@_export('links', 'links.connection.scale')
class Scale(Chain):
    """Learned broadcast product x * W (F.scale), optionally plus a Bias.

    Scale(axis=1, W_shape=None, bias_term=False, bias_shape=None): W has
    W_shape and starts at 1; with W_shape None there is no W and the link is
    called with the factor: link(x, y).  bias_term=True adds a child Bias
    link `bias` of W_shape (or bias_shape when there is no W; ValueError if
    neither is given).  Saved keys: W, bias/b.  Chainer: chainer.links.Scale.
    """

    def __init__(self, axis=1, W_shape=None, bias_term=False, bias_shape=None):
        super().__init__()
        self.axis = axis
        with self.init_scope():
            if W_shape is not None:
                self.W = Parameter(1, W_shape)
            if bias_term:
                if W_shape is None and bias_shape is None:
                    raise ValueError('Scale: bias_term=True needs W_shape or bias_shape')
                self.bias = Bias(axis, W_shape if W_shape is not None else bias_shape)

    def forward(self, *xs):
        """scale(x, W, axis) (or scale(x, y, axis) without W), then the bias
        if there is one. Chainer: chainer.links.Scale.forward."""
        x, y = _learned_or_given('Scale', xs, getattr(self, 'W', None))
        z = scale(x, y, self.axis)
        return self.bias(z) if 'bias' in self._children else z


def _learned_or_given(link_name, xs, param):
    """(x, the second operand): the link's parameter, or the caller's."""
    want = 1 if param is not None else 2
    if len(xs) != want:
        raise ValueError('{}: expected {} input{} ({}), got {}'.format(
            link_name, want, 's' if want == 2 else '',
            'x; the link holds the other' if want == 1 else 'x and y: the link holds no '
            'parameter', len(xs)))
    return (xs[0], param) if want == 1 else xs


@_export('links', 'links.activation.maxout')
class Maxout(Chain):
    """Fully connected maxout layer: y[i] = max_p (W[i, p] . x + b[i, p]).

    Maxout(in_size, out_size, pool_size, initialW=None, initial_bias=0): a
    child Linear `linear` (in_size -> out_size * pool_size; in_size None
    reads it from the first input), then F.maxout with pool_size.  initialW:
    initializer, scalar, or an array of shape (out_size, pool_size, in_size);
    initial_bias: likewise, an array of shape (out_size, pool_size), or None
    for no bias.  Calling it: x (N, in_size) -> (N, out_size).  Saved keys:
    linear/W, linear/b.  Raises ValueError for arrays of another ndim.
    Chainer: chainer.links.Maxout.
    """

    def __init__(self, in_size, out_size, pool_size, initialW=None, initial_bias=0):
        super().__init__()
        units = out_size * pool_size
        split = (out_size, pool_size)
        initialW = _reshaped_initializer('Maxout', 'initialW', initialW, 3, split)
        initial_bias = _reshaped_initializer('Maxout', 'initial_bias', initial_bias, 2, split)
        self.out_size, self.pool_size = out_size, pool_size
        with self.init_scope():
            self.linear = Linear(in_size, units, nobias=initial_bias is None,
                                 initialW=initialW, initial_bias=initial_bias)

    def forward(self, x):
        """maxout(linear(x), pool_size). Chainer: chainer.links.Maxout.forward."""
        return maxout(self.linear(x), self.pool_size)


def _reshaped_initializer(link_name, name, spec, ndim, split):
    """Maxout's initializers see its weights as (out_size, pool_size, ...);
    the Linear inside holds them flat, (out_size * pool_size, ...)."""
    if isinstance(spec, _array_types):
        if spec.ndim != ndim:
            raise ValueError('{}: {} must have {} dimensions (out_size, pool_size{}), got '
                             'shape {}'.format(link_name, name, ndim,
                                               ', in_size' if ndim == 3 else '', spec.shape))
        return spec.reshape((-1,) + spec.shape[2:])
    if callable(spec) and not isinstance(spec, Initializer):
        def fill(array):       # a plain function fills the unflattened view (no copy)
            spec(array.reshape(split + array.shape[1:]))
        return fill
    return spec


@_export('links', 'links.connection.bilinear')
class Bilinear(Link):
    """Bilinear layer (F.bilinear): y = e1 W e2 + e1 V1 + e2 V2 + b.

    Bilinear(left_size, right_size, out_size, nobias=False, initialW=None,
    initial_bias=None).  W: (left_size, right_size, out_size), default
    LeCunNormal; V1 (left_size, out_size), V2 (right_size, out_size) and b
    (out_size,) unless nobias.  initial_bias: None (V1, V2 LeCunNormal, b 0)
    or a tuple of three initializers/scalars/arrays for V1, V2, b.  Calling
    it: e1 (N, left_size), e2 (N, right_size) -> (N, out_size).  Saved keys:
    W, V1, V2, b.  Raises ValueError for arrays of the wrong shape, an
    initial_bias that is not a 3-tuple, or inputs that do not fit.
    Chainer: chainer.links.Bilinear.
    """

    def __init__(self, left_size, right_size, out_size, nobias=False, initialW=None,
                 initial_bias=None):
        super().__init__()
        self.in_sizes = (left_size, right_size)
        self.nobias = nobias
        shapes = {'W': (left_size, right_size, out_size), 'V1': (left_size, out_size),
                  'V2': (right_size, out_size), 'b': (out_size,)}
        initials = {'W': initialW}
        if not nobias:
            if initial_bias is None:
                initials.update(V1=None, V2=None, b=0)
            elif isinstance(initial_bias, tuple) and len(initial_bias) == 3:
                initials.update(zip(('V1', 'V2', 'b'), initial_bias))
            else:
                raise ValueError('Bilinear: initial_bias must be None or a tuple of 3 '
                                 '(for V1, V2, b), got {!r}'.format(initial_bias))
        with self.init_scope():
            for name, spec in initials.items():
                if isinstance(spec, _array_types) and spec.shape != shapes[name]:
                    raise ValueError('Bilinear: the initial {} has shape {}, expected {}'
                                     .format(name, spec.shape, shapes[name]))
                setattr(self, name, Parameter(_get_initializer(spec, LeCunNormal()),
                                              shapes[name]))

    def forward(self, e1, e2):
        """bilinear(e1, e2, W[, V1, V2, b]). Chainer: chainer.links.Bilinear.forward."""
        left, right = (_input_data('Bilinear', e).shape for e in (e1, e2))
        if len(left) < 1 or len(right) < 1 or \
                (int(np.prod(left[1:])), int(np.prod(right[1:]))) != self.in_sizes:
            raise ValueError('Bilinear: expected inputs of shape (N, {}) and (N, {}), got '
                             '{} and {}'.format(*self.in_sizes, left, right))
        if self.nobias:
            return bilinear(e1, e2, self.W)
        return bilinear(e1, e2, self.W, self.V1, self.V2, self.b)


@_export('links', 'links.connection.highway')
class Highway(Chain):
    """Highway layer: y = activate(plain(x)) * t + x * (1 - t), with the
    transform gate t = sigmoid(transform(x)).

    Highway(in_out_size, nobias=False, activate=relu, init_Wh=None,
    init_Wt=None, init_bh=None, init_bt=-1): two child Linear links of
    in_out_size -> in_out_size, `plain` (initialW init_Wh, initial_bias
    init_bh) and `transform` (init_Wt, init_bt; the bias starts at -1 so the
    layer first mostly carries x through).  Calling it: x (N, in_out_size)
    -> same shape.  Saved keys: plain/W, plain/b, transform/W, transform/b.
    Chainer: chainer.links.Highway.
    """

    def __init__(self, in_out_size, nobias=False, activate=relu, init_Wh=None,
                 init_Wt=None, init_bh=None, init_bt=-1):
        super().__init__()
        self.activate = activate
        with self.init_scope():
            self.plain = Linear(in_out_size, in_out_size, nobias=nobias,
                                initialW=init_Wh, initial_bias=init_bh)
            self.transform = Linear(in_out_size, in_out_size, nobias=nobias,
                                    initialW=init_Wt, initial_bias=init_bt)

    def forward(self, x):
        """The gated mix of activate(plain(x)) and x. Chainer: chainer.links.Highway.forward."""
        size = self.plain.W.shape[1]
        shape = _input_data('Highway', x).shape
        if len(shape) != 2 or shape[1] != size:
            raise ValueError('Highway: expected an input of shape (N, {}), got {}'
                             .format(size, shape))
        t = sigmoid(self.transform(x))
        return add(mul(self.activate(self.plain(x)), t), mul(x, sub(1, t)))


class ParameterLink(Link):
    """A link that holds one array as its parameter W and returns it when
    called (Chainer's old way to train a bare array).

    ParameterLink(array): W is a Parameter holding `array` (its dtype and
    device kept).  Calling it returns W through identity, so gradients reach
    W.  Saved key: W.  Filed as chainer.links.Parameter (the name
    chainer.Parameter is the Variable class). Chainer: chainer.links.Parameter.
    """

    def __init__(self, array):
        super().__init__()
        if not isinstance(array, _array_types):
            raise TypeError('Parameter: expected a numpy/cupy array, got {}'
                            .format(type(array).__name__))
        with self.init_scope():
            self.W = Parameter(array)

    def forward(self, volatile='off'):
        """identity(W); `volatile` (Chainer v1's flag) is accepted and ignored.
        Chainer: chainer.links.Parameter.forward."""
        return identity(self.W)
_export('links.connection.parameter', Parameter=ParameterLink)
_export('links', Parameter=ParameterLink)

# ----- simplified dropconnect ---------------------------------------------------------
# Dropout drops units; dropconnect drops single weights: each example n sees
# its own thinned matrix (the mask M[n] of 0s and 1s, kept with probability
# 1 - ratio, the kept weights scaled by 1/(1 - ratio)):
#
#     y[n] = (W * M[n] / (1 - ratio)) x[n] + b
#
# Backward: gx[n] = gy[n] (W * M[n]) / (1 - ratio);
#           gW = sum_n (gy[n] outer x[n]) * M[n] / (1 - ratio);  gb = sum_n gy[n].
# ("Simplified": the paper samples the pre-activation from a Gaussian at test
# time; here test time is the plain linear layer.)

class SimplifiedDropconnectFunction(Function):
    """Function node of simplified_dropconnect: a linear layer whose weights
    are masked per example (batchwise mask (n, M, N)) or for the whole batch
    (M, N).  Chainer: chainer.functions.noise.simplified_dropconnect.SimplifiedDropconnect.
    """

    label = 'simplified_dropconnect'

    def __init__(self, ratio, mask, use_batchwise_mask):
        self.ratio, self.mask, self.use_batchwise_mask = ratio, mask, use_batchwise_mask

    def forward(self, inputs):
        x, W = inputs[:2]
        _require_float(self.label, x, W)
        if W.dtype != x.dtype:      # Chainer v7 mixes float dtypes (see _in_dtype_of)
            W = _in_dtype_of(self, x, W)
        if len(inputs) == 3 and inputs[2].dtype != x.dtype:     # as in Chainer v7
            raise TypeError('simplified_dropconnect: b.dtype {} != x.dtype {}'
                            .format(inputs[2].dtype, x.dtype))
        if x.ndim < 2 or W.ndim != 2 or int(np.prod(x.shape[1:])) != W.shape[1]:
            raise ValueError('simplified_dropconnect: x must be (n, ...) with N = W.shape[1] '
                             'values per example and W 2-D, got x.shape {}, W.shape {}'
                             .format(x.shape, W.shape))
        if len(inputs) == 3 and inputs[2].shape != W.shape[:1]:
            raise ValueError('simplified_dropconnect: b.shape {} != (W.shape[0],) = {}'
                             .format(inputs[2].shape, W.shape[:1]))
        xp = _xp(x)
        n = x.shape[0]
        if self.mask is None:
            shape = ((n,) if self.use_batchwise_mask else ()) + W.shape
            draws = xp.random.rand(*shape) if xp is np else \
                xp.random.rand(*shape, dtype=np.float32)
            self.mask = draws >= self.ratio
        elif self.mask.shape not in ((n,) + W.shape, W.shape):
            raise ValueError('simplified_dropconnect: mask must have shape {} or {}, got {}'
                             .format((n,) + W.shape, W.shape, self.mask.shape))
        self.x_mat = x.reshape(n, -1)
        scale = W.dtype.type(1.0 / (1.0 - self.ratio))
        self.W_masked = W * scale * self.mask        # (n, M, N) or (M, N)
        if self.W_masked.ndim == 3:
            y = xp.matmul(self.W_masked, self.x_mat[:, :, None])[:, :, 0]
        else:
            y = self.x_mat.dot(self.W_masked.T)
        if len(inputs) == 3:
            y += inputs[2]
        return y,

    def backward(self, inputs, grad_outputs):
        x, W = inputs[:2]
        gy, = grad_outputs
        xp = _xp(gy)
        scale = W.dtype.type(1.0 / (1.0 - self.ratio))
        if self.W_masked.ndim == 3:
            gx = xp.matmul(gy[:, None, :], self.W_masked)[:, 0, :]
            gW = (gy[:, :, None] * self.x_mat[:, None, :] * self.mask).sum(axis=0)
        else:
            gx = gy.dot(self.W_masked)
            gW = gy.T.dot(self.x_mat) * self.mask
        gW *= scale
        grads = (gx.reshape(x.shape), gW)
        return grads + (gy.sum(axis=0),) if len(inputs) == 3 else grads


@_export('functions', 'functions.noise.simplified_dropconnect')
def simplified_dropconnect(x, W, b=None, ratio=.5, train=True, mask=None,
                           use_batchwise_mask=True):
    """Linear layer with dropconnect: y[n] = (W * mask[n] / (1 - ratio)) x[n] + b.

    x: (n, ...) flattened to (n, N); W: (M, N); b: (M,) or None.  mask: None
    (drawn: each weight kept with probability 1 - ratio, per example with
    use_batchwise_mask=True (n, M, N), else one (M, N) for the batch), or a
    given array/Variable of shape (n, M, N) or (M, N) (then
    use_batchwise_mask is ignored).  train=False uses ratio 0 (the plain
    linear layer, a given mask still applied).  Returns y (n, M).  Raises
    ValueError on bad shapes or ratio outside [0, 1), TypeError on integer
    or mixed dtypes.  Chainer: chainer.functions.simplified_dropconnect.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError('simplified_dropconnect: ratio must be in [0, 1), got {}'
                         .format(ratio))
    if not train:
        ratio = 0.0
    if mask is not None:
        mask = _input_data('simplified_dropconnect', mask)
    inputs = (x, W) if b is None else (x, W, b)
    return SimplifiedDropconnectFunction(ratio, mask, use_batchwise_mask)(*inputs)


@_export('links', 'links.activation.simplified_dropconnect')
class SimplifiedDropconnect(Link):
    """Linear layer with simplified dropconnect (F.simplified_dropconnect).

    SimplifiedDropconnect(in_size, out_size, ratio=.5, nobias=False,
    initialW=None, initial_bias=None).  W (out_size, in_size) starts from
    HeNormal(1/sqrt(2)) unless initialW, b (out_size,) at 0 unless
    initial_bias; in_size None takes it from the first input.  Calling it:
    link(x, train=True, mask=None, use_batchwise_mask=True) -> (n,
    out_size); a given mask is also kept as the persistent `mask` (saved),
    as in Chainer.  Saved keys: W, b.  Chainer: chainer.links.SimplifiedDropconnect.
    """

    def __init__(self, in_size, out_size, ratio=.5, nobias=False, initialW=None,
                 initial_bias=None):
        super().__init__()
        self.out_size, self.ratio = out_size, ratio
        with self.init_scope():
            self.W = Parameter(_get_initializer(initialW, HeNormal(1.0 / np.sqrt(2))))
            if in_size is not None:
                self.W.initialize((out_size, in_size))
            self.b = None if nobias else Parameter(
                _get_initializer(initial_bias, Zero()), out_size)

    def forward(self, x, train=True, mask=None, use_batchwise_mask=True):
        """simplified_dropconnect(x, W, b, ratio, train, mask, use_batchwise_mask).
        Chainer: chainer.links.SimplifiedDropconnect.forward."""
        if self.W.data is None:
            data = _check_first_input('SimplifiedDropconnect', x)
            self.W.initialize((self.out_size, data.size // len(data)), _xp(data))
        if mask is not None and 'mask' not in self.__dict__:
            self.add_persistent('mask', mask)
        return simplified_dropconnect(x, self.W, self.b, self.ratio, train, mask,
                                      use_batchwise_mask)


# =============================================================================
# Chapter 11. Convolutional networks
# =============================================================================
# A convolution slides a small kernel W (out_channels, C, kh, kw) over an
# image x (N, C, H, W) and, at every position (i, j) of the output, takes
# the inner product of W with the patch of x under it:
#
#     y[n, o, i, j] = b[o] + sum_{c, u, v} W[o, c, u, v] x[n, c, sy*i + u, sx*j + v]
#
# (x already padded by ph rows and pw columns of zeros on each side).  The
# output has  out_h = (H + 2 ph - kh) // sy + 1  rows, and so for columns.
#
# im2col.  Copy every patch into a column of one matrix, one column per
# output pixel of every image in the batch:
#
#     col[(c, u, v), (n, i, j)] = x[n, c, sy*i + u, sx*j + v]
#
# Then the whole convolution of the whole batch is ONE matrix product,
#
#     y2 = W2 @ col     with W2 = W.reshape(out_channels, C*kh*kw),
#
# y2 of shape (out_channels, N*out_h*out_w), i.e. y with its first two axes
# swapped.  That is why convolutions run at the speed of BLAS (or cuBLAS):
# all the sliding has turned into copying, and one big product keeps BLAS's
# threads busy where N small ones would mostly wait on each other.  The copy
# costs memory, C*kh*kw values per output pixel, and it is cheap to make:
# `as_strided` gives the patches as a 6-D *view* of x (N, C, kh, kw, out_h,
# out_w) in which moving one output row steps sy rows of x, and one reshape
# copies it into col.
#
# The order of the columns is ours to choose, and it sets the speed of
# everything around the product.  Here they run (i, j, n), the batch LAST:
#
#     col[(c, u, v), (i, j, n)] = x[c, sy*i + u, sx*j + v, n]
#
# with x, and every image between two layers, stored (C, H, W, N) in memory
# (a view puts the axes back in (N, C, H, W) order, so no one outside this
# chapter sees the difference).  For one kernel offset and one output row,
# a row of col is then out_w*N consecutive values of x (at stride 1), so
# building col copies long contiguous runs, at about the speed of memcpy;
# the product y2 = W2 @ col comes out (O, out_h, out_w, N), already the
# layout the next layer reads; and batch normalization, ReLU and pooling
# work on runs of N values rather than of out_w.  With the columns in (n, i,
# j) order the runs were out_w values long (14 in the MNIST CNN, batch 100):
# building its second patch matrix (22.6 MB) took 7 to 11 ms instead of 3.5,
# col2im 8.6 ms instead of 5.4, and max pooling 5 to 10 times as long.
#
# Backward, with gy = dL/dy:
#
#     dL/dW2  = gy2 @ col^T         (gy2: gy as the matrix y2 was)
#     dL/dcol = W2^T @ gy2          (one gradient per patch copy)
#
# and col2im undoes im2col: an input pixel was copied into every patch that
# covers it, so its gradient is the SUM of the gradients of all its copies.
# For each kernel offset (u, v) the copies form a strided slice of x, so
# col2im is a loop over the kh*kw offsets adding one slice each:
#
#     gx[:, :, u : u + sy*out_h : sy, v : v + sx*out_w : sx] += gcol[:, :, u, v]
#
# Pooling uses the same patches: max pooling keeps each patch's largest value
# (its gradient goes to that one pixel), average pooling their mean (its
# gradient is shared equally).  Batch normalization, last, rescales every
# channel to zero mean and unit variance over the batch, so that deep stacks
# of layers train with larger learning rates.

_BATCH_LAST = (1, 2, 3, 0)      # the axes of (N, C, H, W) in memory order: (C, H, W, N)


def _ntuple(value, n, what, label):
    """Chainer's `stride=2` or `stride=(2, 1, 1)`: an int or n ints."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * n
    if len(values) != n or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                   for v in values):
        raise TypeError('{}: {} must be an int or {}, got {!r}'.format(
            label, what, 'a pair of ints' if n == 2 else 'a tuple of {} ints'.format(n), value))
    return tuple(int(v) for v in values)


def _pair(value, what, label):
    """Chainer's `stride=2` or `stride=(2, 1)`: an int or a pair of ints."""
    return _ntuple(value, 2, what, label)


def _conv_outsize(size, k, s, p, cover_all=False, d=1):
    """Output length along one axis, Chainer's rule.  cover_all adds one more
    window when the last one would leave input pixels unvisited; a kernel
    dilated by d spans (k - 1) d + 1 pixels."""
    k = (k - 1) * d + 1
    if cover_all:
        return (size + p * 2 - k + s - 1) // s + 1
    return (size + p * 2 - k) // s + 1


@_export('utils', 'utils.conv')
def get_conv_outsize(size, k, s, p, cover_all=False, d=1):
    """The output length of a convolution along one axis: input length `size`,
    kernel `k`, stride `s`, padding `p`, dilation `d` (ints); cover_all
    (default False) adds the window that reaches the last pixels.  Returns
    an int. Chainer: chainer.utils.get_conv_outsize."""
    return _conv_outsize(size, k, s, p, cover_all, d)


@_export('utils', 'utils.conv')
def get_deconv_outsize(size, k, s, p, cover_all=False, d=1):
    """The output length of a deconvolution along one axis, the inverse of
    get_conv_outsize: s (size - 1) + (k - 1) d + 1 - 2 p, one pixel less with
    cover_all (default False).  Returns an int. Chainer: chainer.utils.get_deconv_outsize."""
    k = (k - 1) * d + 1
    return s * (size - 1) + k - 2 * p - (s - 1 if cover_all else 0)


def _check_image(label, x_shape, ksize, stride, pad, cover_all=False, dilate=(1, 1)):
    """Validate a 4-D input against a kernel; return (out_h, out_w)."""
    if len(x_shape) != 4:
        raise ValueError('{}: x must be 4-D (batch, channels, height, width), got '
                         'shape {}'.format(label, tuple(x_shape)))
    (kh, kw), (sy, sx), (ph, pw), (dy, dx) = ksize, stride, pad, dilate
    if sy < 1 or sx < 1 or ph < 0 or pw < 0 or kh < 1 or kw < 1 or dy < 1 or dx < 1:
        raise ValueError('{}: ksize, stride and dilate must be >= 1 and pad >= 0, got ksize '
                         '{}, stride {}, pad {}, dilate {}'.format(label, ksize, stride, pad,
                                                                  dilate))
    h, w = x_shape[2:]
    kh, kw = (kh - 1) * dy + 1, (kw - 1) * dx + 1       # the span of a dilated kernel
    if kh > h + 2 * ph or kw > w + 2 * pw:
        raise ValueError('{}: the kernel {}x{} is larger than the padded input {}x{} '
                         '(x.shape {}, pad {}{}); pad more or use a smaller kernel'
                         .format(label, kh, kw, h + 2 * ph, w + 2 * pw, tuple(x_shape), pad,
                                 '' if dilate == (1, 1) else ', dilate {}'.format(dilate)))
    return ((h + 2 * ph - kh + (sy - 1 if cover_all else 0)) // sy + 1,
            (w + 2 * pw - kw + (sx - 1 if cover_all else 0)) // sx + 1)


def _memory_order(x):
    """x's axes from the one with the largest stride (outermost in memory) to
    the smallest: (0, 1, 2, 3) for a C-contiguous NCHW batch."""
    return tuple(sorted(range(x.ndim), key=lambda axis: -abs(x.strides[axis])))


def _empty(xp, shape, dtype, order):
    """An uninitialized array of `shape` whose axes lie in memory in `order`
    (outermost first): _empty(np, (N, C, H, W), f, (1, 2, 3, 0)) is NCHW to
    index and (C, H, W, N) in memory."""
    return xp.empty(tuple(shape[axis] for axis in order), dtype).transpose(
        tuple(np.argsort(order)))


def _copy_in_order(x, order):
    """A copy of x laid out in memory in `order` (as _empty's)."""
    copy = _empty(_xp(x), x.shape, x.dtype, order)
    copy[...] = x
    return copy


def _patches(x, ksize, stride, pad, cover_all=False, pad_value=0, dilate=(1, 1), order=None):
    """im2col as a view: (N, C, kh, kw, out_h, out_w), no data copied except
    the padding.  Element [n, c, u, v, i, j] is x_padded[n, c, sy*i+dy*u, sx*j+dx*v].
    The padded copy keeps x's memory layout, or takes `order` (as _empty's;
    then x is copied into that layout even when there is no padding)."""
    (kh, kw), (sy, sx), (ph, pw), (dy, dx) = ksize, stride, pad, dilate
    n, c, h, w = x.shape
    out_h = _conv_outsize(h, kh, sy, ph, cover_all, dy)
    out_w = _conv_outsize(w, kw, sx, pw, cover_all, dx)
    xp = _xp(x)
    # cover_all's extra window may reach up to s - 1 pixels past the padding.
    extra_h, extra_w = (sy - 1, sx - 1) if cover_all else (0, 0)
    if ph or pw or extra_h or extra_w or (order is not None and _memory_order(x) != order):
        full_h, full_w = h + 2 * ph + extra_h, w + 2 * pw + extra_w
        padded = _empty(xp, (n, c, full_h, full_w), x.dtype, order or _memory_order(x))
        padded[:, :, :ph] = pad_value              # only the border is filled:
        padded[:, :, ph + h:] = pad_value          # the inside is x
        padded[:, :, ph:ph + h, :pw] = pad_value
        padded[:, :, ph:ph + h, pw + w:] = pad_value
        padded[:, :, ph:ph + h, pw:pw + w] = x
        x = padded
    strides = x.strides
    as_strided = (np.lib.stride_tricks if xp is np else cupy.lib.stride_tricks).as_strided
    return as_strided(x, (n, c, kh, kw, out_h, out_w),
                      strides[:2] + (strides[2] * dy, strides[3] * dx,
                                     strides[2] * sy, strides[3] * sx))


def _col2im(gcol, h, w, stride, pad, dilate=(1, 1)):
    """The adjoint of _patches: sum each patch copy's gradient back onto the
    pixel it came from.  gcol: (N, C, kh, kw, out_h, out_w) -> (N, C, h, w)
    (the first two axes may as well be (C, N): they are only carried along),
    laid out in memory as gcol[:, :, 0, 0] is, so that each slice added is
    read and written in the same order.  Copies that landed in the padding
    (or past it, under cover_all) drop out: each offset's slice is cut to
    the pixels inside x, and gx needs no padded border to be cropped (which
    saved a quarter of col2im's time in the MNIST CNN)."""
    n, c, kh, kw, out_h, out_w = gcol.shape
    (sy, sx), (ph, pw), (dy, dx) = stride, pad, dilate
    gx = _empty(_xp(gcol), (n, c, h, w), gcol.dtype, _memory_order(gcol[:, :, 0, 0]))
    gx[...] = 0
    for u in range(kh):
        rows = _inside(h, out_h, sy, dy, ph, u)
        for v in range(kw):
            columns = _inside(w, out_w, sx, dx, pw, v)
            if rows and columns:
                gx[:, :, rows[1], columns[1]] += gcol[:, :, u, v, rows[0], columns[0]]
    return gx


def _inside(size, out, s, d, p, u):
    """Along one axis, for kernel offset u: (the output positions i whose
    pixel s*i + d*u - p lies inside 0..size-1, the slice of those pixels),
    or None when there are none."""
    first = max(0, -((d * u - p) // s))                 # ceil((p - d u) / s)
    end = min(out, (size - 1 + p - d * u) // s + 1)
    if end <= first:
        return None
    start = s * first + d * u - p
    return slice(first, end), slice(start, start + s * (end - first - 1) + 1, s)


def _patches_nd(x, ksize, stride, pad, cover_all=False, pad_value=0, dilate=None):
    """_patches with any number d of spatial axes: the view (N, C, k1..kd,
    o1..od) of x (N, C, s1..sd).  The 2-D one above stays as it is, spelled
    out, for the speed of the common case."""
    sizes = x.shape[2:]
    dilate = (1,) * len(sizes) if dilate is None else dilate
    outs = tuple(_conv_outsize(size, k, s, p, cover_all, d)
                 for size, k, s, p, d in zip(sizes, ksize, stride, pad, dilate))
    xp = _xp(x)
    extras = tuple(s - 1 for s in stride) if cover_all else (0,) * len(sizes)
    if any(pad) or any(extras):
        padded = xp.full(x.shape[:2] + tuple(size + 2 * p + e for size, p, e in
                                             zip(sizes, pad, extras)),
                         pad_value, dtype=x.dtype)
        padded[(Ellipsis,) + tuple(slice(p, p + size) for p, size in zip(pad, sizes))] = x
        x = padded
    strides = x.strides
    as_strided = (np.lib.stride_tricks if xp is np else cupy.lib.stride_tricks).as_strided
    return as_strided(x, x.shape[:2] + tuple(ksize) + outs,
                      strides[:2] + tuple(st * d for st, d in zip(strides[2:], dilate))
                      + tuple(st * s for st, s in zip(strides[2:], stride)))


def _col2im_nd(gcol, sizes, stride, pad, dilate=None):
    """_col2im with d spatial axes: (N, C, k1..kd, o1..od) -> (N, C, s1..sd),
    one strided slice added per kernel offset (a loop over prod(k) offsets)."""
    d = len(sizes)
    ksize, outs = gcol.shape[2:2 + d], gcol.shape[2 + d:]
    dilate = (1,) * d if dilate is None else dilate
    full = tuple(max(size + 2 * p, s * (o - 1) + (k - 1) * dl + 1) for size, k, s, p, dl, o
                 in zip(sizes, ksize, stride, pad, dilate, outs))
    gx = _xp(gcol).zeros(gcol.shape[:2] + full, dtype=gcol.dtype)
    for offset in itertools.product(*[range(k) for k in ksize]):
        gx[(Ellipsis,) + tuple(slice(dl * u, dl * u + s * o, s) for u, s, dl, o
                               in zip(offset, stride, dilate, outs))] += \
            gcol[(slice(None), slice(None)) + offset]
    return gx[(Ellipsis,) + tuple(slice(p, p + size) for p, size in zip(pad, sizes))]


# ----- convolution -------------------------------------------------------------
# Two generalizations cost almost nothing on top of im2col.
#
# Dilation d spreads the kernel's taps d pixels apart, so a 3x3 kernel sees a
# 5x5 field at d = 2 with no more weights:
#
#     y[n, o, i, j] = b[o] + sum_{c, u, v} W[o, c, u, v] x[n, c, sy*i + dy*u, sx*j + dx*v]
#
# It only changes the strides of the patch view (a step of u moves dy rows),
# and col2im's slices start at dy*u instead of u; the kernel spans
# (k - 1) d + 1 pixels in the output size rule.
#
# Groups G split the C input channels and the O output channels into G
# equal blocks; output block g sees only input block g, so W is
# (O, C/G, kh, kw).  With the patch matrix cut into G row blocks the single
# product becomes G of them, one batched matmul:
#
#     y2[g] = W2[g] @ col[g],    W2: (G, O/G, C/G*kh*kw),  col: (G, C/G*kh*kw, N*out_h*out_w)
#
# and backward is the same per block.  G = C with one filter per channel is
# the depthwise convolution.

@_export('functions.connection.convolution_2d')
class Convolution2DFunction(Function):
    """Function node of convolution_2d: im2col, then one matrix product per
    group; backward: gW from col and gy, gx by col2im of W^T gy, gb by
    summing gy.  Chainer: chainer.functions.connection.convolution_2d.Convolution2DFunction.
    """

    label = 'convolution_2d'

    def __init__(self, stride=1, pad=0, cover_all=False, dilate=1, groups=1):
        self.stride = _pair(stride, 'stride', self.label)
        self.pad = _pair(pad, 'pad', self.label)
        self.cover_all = cover_all
        self.dilate = _pair(dilate, 'dilate', self.label)
        self.groups = _positive_int(self.label, 'groups', groups)

    def forward(self, inputs):
        x, W = inputs[0], inputs[1]
        b = inputs[2] if len(inputs) == 3 else None
        if W.ndim != 4:
            raise ValueError('convolution_2d: W must be 4-D (out_channels, in_channels / '
                             'groups, kh, kw), got W.shape {}'.format(W.shape))
        out_h, out_w = _check_image(self.label, x.shape, W.shape[2:], self.stride, self.pad,
                                    self.cover_all, self.dilate)
        g = self.groups
        if x.shape[1] != W.shape[1] * g or W.shape[0] % g:
            raise ValueError('convolution_2d: x has {} channels but W expects {} (x.shape {}, '
                             'W.shape {}){}'.format(
                                 x.shape[1], W.shape[1] * g, x.shape, W.shape,
                                 '' if g == 1 else ' with groups={} (W.shape[0] must divide '
                                 'by it too)'.format(g)))
        if x.dtype != W.dtype:      # Chainer v7 mixes float dtypes (see _in_dtype_of)
            W = _in_dtype_of(self, x, W)
        if b is not None and b.shape != (W.shape[0],):
            raise ValueError('convolution_2d: b.shape {} != (W.shape[0],) = ({},)'
                             .format(b.shape, W.shape[0]))
        if b is not None and b.dtype != x.dtype:       # as in Chainer v7
            raise TypeError('convolution_2d: b.dtype {} != x.dtype {}'.format(b.dtype, x.dtype))
        n, out_channels = len(x), W.shape[0]
        # The one copy of the forward pass: the patches, kept for dL/dW, with
        # their columns in (i, j, n) order (the batch last, see above).
        patches = _patches(x, W.shape[2:], self.stride, self.pad, self.cover_all,
                           dilate=self.dilate, order=_BATCH_LAST)
        self.col = patches.transpose(1, 2, 3, 4, 5, 0).reshape(g, W[0].size, -1)
        y = W.reshape(g, out_channels // g, -1) @ self.col     # (G, O/G, out_h*out_w*N)
        y = y.reshape(out_channels, -1)
        if b is not None:
            y += b[:, None]
        # (O, out_h, out_w, N) in memory, which every op downstream takes as it
        # is; only the axes of the view are put back in (N, O, out_h, out_w) order.
        return y.reshape(out_channels, out_h, out_w, n).transpose(3, 0, 1, 2),

    def backward(self, inputs, grad_outputs):
        x, W = inputs[0], inputs[1]
        gy = grad_outputs[0]
        n, out_channels = gy.shape[:2]
        g = self.groups
        # Free when gy is laid out like our output, else one copy.
        gy2 = gy.transpose(1, 2, 3, 0).reshape(g, out_channels // g, -1)
        gW = (gy2 @ self.col.swapaxes(1, 2)).reshape(W.shape)
        gx = None
        if self.inputs[0].requires_grad:      # a data batch needs none
            gcol = W.reshape(g, out_channels // g, -1).swapaxes(1, 2) @ gy2
            # (C, kh, kw, out_h, out_w, N) in memory, and gx comes out (C, h, w, N).
            gcol = gcol.reshape((x.shape[1],) + W.shape[2:] + gy.shape[2:] + (n,))
            gx = _col2im(gcol.transpose(5, 0, 1, 2, 3, 4), x.shape[2], x.shape[3],
                         self.stride, self.pad, self.dilate)
        if len(inputs) == 3:
            return gx, gW, gy2.sum(axis=2).reshape(-1)
        return gx, gW


@_export('functions', 'functions.connection.convolution_2d')
def convolution_2d(x, W, b=None, stride=1, pad=0, cover_all=False, *, dilate=1, groups=1):
    """2-D convolution (cross-correlation, as in Chainer) of NCHW images.

    y[n, o, i, j] = b[o] + sum_{c,u,v} W[o, c, u, v] x[n, c', sy i + dy u, sx j + dx v]
    over the input channels c' of o's group.  x: (N, C, H, W); W:
    (out_channels, C / groups, kh, kw); b: (out_channels,) or None.  stride,
    pad, dilate: int or (row, column) pair.  cover_all=True adds one output
    row/column where the last window would miss input pixels.  groups splits
    the channels into that many independent blocks (C and out_channels must
    divide by it).  Returns (N, out_channels, out_h, out_w), out_h = (H + 2
    pad - ((kh - 1) dilate + 1)) // stride + 1.  Raises ValueError on a
    non-4-D x, a channel mismatch or a kernel larger than the padded input.
    Follows chainer.functions.convolution_2d.
    """
    function = Convolution2DFunction(stride, pad, cover_all, dilate, groups)
    return function(x, W) if b is None else function(x, W, b)


@_export('functions', 'functions.connection.dilated_convolution_2d')
def dilated_convolution_2d(x, W, b=None, stride=1, pad=0, dilate=1, cover_all=False):
    """convolution_2d with the kernel's taps `dilate` pixels apart.

    x: (N, C, H, W); W: (out_channels, C, kh, kw); b: (out_channels,) or None.
    Same as convolution_2d(x, W, b, stride, pad, cover_all, dilate=dilate);
    out_h = (H + 2 pad - ((kh - 1) dilate + 1)) // stride + 1.  Raises as
    convolution_2d.  Follows chainer.functions.dilated_convolution_2d.
    """
    return convolution_2d(x, W, b, stride, pad, cover_all, dilate=dilate)


@_export('functions', 'functions.connection.depthwise_convolution_2d')
def depthwise_convolution_2d(x, W, b=None, stride=1, pad=0):
    """Convolve each input channel separately with its own M filters.

    y[n, c M + m, i, j] = b[c M + m] + sum_{u,v} W[m, c, u, v] x[n, c, sy i + u, sx j + v].
    x: (N, C, H, W); W: (M, C, kh, kw) (M, the channel multiplier, first, as
    in Chainer); b: (C M,) or None.  Returns (N, C M, out_h, out_w).  It is
    convolution_2d with groups=C and W rearranged to (C M, 1, kh, kw).
    Raises ValueError when W is not 4-D or W.shape[1] != C.
    Follows chainer.functions.depthwise_convolution_2d.
    """
    w_shape = _input_data('depthwise_convolution_2d', W).shape
    if len(w_shape) != 4:
        raise ValueError('depthwise_convolution_2d: W must be 4-D (channel_multiplier, '
                         'in_channels, kh, kw), got W.shape {}'.format(w_shape))
    multiplier, in_channels, kh, kw = w_shape
    # Output channel c*M + m belongs to group c: bring c to the front first.
    W = reshape(transpose(W, (1, 0, 2, 3)), (in_channels * multiplier, 1, kh, kw))
    return convolution_2d(x, W, b, stride, pad, groups=in_channels)


# ----- deconvolution (transposed convolution) ------------------------------------
# Convolution is linear in x: y2 = W2 @ im2col(x).  Its transpose, which
# carries a gradient at the output back to the input, is therefore
#
#     x -> col2im(W2^T @ x2)
#
# i.e. exactly convolution's backward w.r.t. x, and it is a layer in its own
# right: every input pixel stamps a kh x kw copy of the kernel, scaled by
# its value, onto the output, sy pixels further for each step, the stamps
# adding where they overlap.  So the image grows:
#
#     out_h = sy (h - 1) + (kh - 1) dy + 1 - 2 ph
#
# (the inverse of the convolution size rule; padding now crops the output).
# Several out_h give back the same h under the floor of convolution's rule,
# so `outsize` may differ from it by up to sy - 1 either way: extra rows get
# no stamp (only b), missing rows crop the last stamps, and then the
# convolution that maps the output back onto x needs cover_all to reach
# every pixel of x (backward uses it so).  The W of a deconvolution is
# the W of the convolution it transposes, (in_channels, out_channels / G,
# kh, kw): its first axis meets x.  Backward is then a convolution forward:
#
#     dL/dx = convolution_2d(gy, W)        dL/dW2 = x2 @ im2col(gy)^T

@_export('functions.connection.deconvolution_2d')
class Deconvolution2DFunction(Function):
    """Function node of deconvolution_2d: one matrix product (per group),
    then col2im; backward: im2col of gy, then the products of a convolution.
    Chainer: chainer.functions.connection.deconvolution_2d.Deconvolution2DFunction.
    """

    label = 'deconvolution_2d'

    def __init__(self, stride=1, pad=0, outsize=None, dilate=1, groups=1):
        self.stride = _pair(stride, 'stride', self.label)
        self.pad = _pair(pad, 'pad', self.label)
        self.outsize = None if outsize is None else _pair(outsize, 'outsize', self.label)
        self.dilate = _pair(dilate, 'dilate', self.label)
        self.groups = _positive_int(self.label, 'groups', groups)

    def _output_size(self, x, W):
        """(out_h, out_w), checked against x's size; and whether the
        convolution that maps the output back onto x needs cover_all."""
        if x.ndim != 4 or W.ndim != 4:
            raise ValueError('deconvolution_2d: x and W must be 4-D, got x.shape {}, W.shape '
                             '{}'.format(x.shape, W.shape))
        (sy, sx), (ph, pw), (dy, dx) = self.stride, self.pad, self.dilate
        if min(sy, sx, dy, dx) < 1 or min(ph, pw) < 0:
            raise ValueError('deconvolution_2d: stride and dilate must be >= 1 and pad >= 0, '
                             'got stride {}, pad {}, dilate {}'.format(self.stride, self.pad,
                                                                     self.dilate))
        sizes, cover_all = [], False
        for axis, s, p, d, given in ((2, sy, ph, dy, None if self.outsize is None
                                      else self.outsize[0]),
                                     (3, sx, pw, dx, None if self.outsize is None
                                      else self.outsize[1])):
            size, k = x.shape[axis], W.shape[axis]
            out = s * (size - 1) + (k - 1) * d + 1 - 2 * p if given is None else given
            low, high = _conv_outsize(out, k, s, p, False, d), _conv_outsize(out, k, s, p, True, d)
            if out < 1 or not low <= size <= high:
                raise ValueError(
                    'deconvolution_2d: no output size fits: x.shape {} with W.shape {}, '
                    'stride {}, pad {}, dilate {} gives {} along axis {}{}'.format(
                        x.shape, W.shape, self.stride, self.pad, self.dilate, out, axis,
                        '' if given is None else ' (outsize {}), which a convolution maps '
                        'to {}, not {}'.format(self.outsize, low if low == high else
                                               '{} or {}'.format(low, high), size)))
            cover_all = cover_all or size != low
            sizes.append(out)
        return tuple(sizes), cover_all

    def forward(self, inputs):
        x, W = inputs[0], inputs[1]
        b = inputs[2] if len(inputs) == 3 else None
        (out_h, out_w), self.cover_all = self._output_size(x, W)
        g = self.groups
        if x.shape[1] != W.shape[0] or W.shape[0] % g:
            raise ValueError('deconvolution_2d: x has {} channels but W expects {} (x.shape '
                             '{}, W.shape {}){}'.format(
                                 x.shape[1], W.shape[0], x.shape, W.shape,
                                 '' if g == 1 else ' with groups={} (which must divide '
                                 'W.shape[0])'.format(g)))
        if x.dtype != W.dtype:      # Chainer v7 mixes float dtypes (see _in_dtype_of)
            W = _in_dtype_of(self, x, W)
        if b is not None and b.dtype != x.dtype:       # as in Chainer v7
            raise TypeError('deconvolution_2d: b.dtype {} != x.dtype {}'.format(b.dtype,
                                                                              x.dtype))
        out_channels = W.shape[1] * g
        if b is not None and b.shape != (out_channels,):
            raise ValueError('deconvolution_2d: b.shape {} != (W.shape[1] * groups,) = ({},)'
                             .format(b.shape, out_channels))
        n, in_channels, h, w = x.shape
        x2 = x.transpose(1, 0, 2, 3).reshape(g, in_channels // g, -1)    # (G, C/G, N*h*w)
        W2 = W.reshape(g, in_channels // g, -1)                    # (G, C/G, O/G*kh*kw)
        gcol = (W2.swapaxes(1, 2) @ x2).reshape((out_channels,) + W.shape[2:] + (n, h, w))
        y = _col2im(gcol.transpose(0, 3, 1, 2, 4, 5), out_h, out_w, self.stride, self.pad,
                    self.dilate)                                   # (O, N, out_h, out_w)
        if b is not None:
            y += b[:, None, None, None]
        return y.transpose(1, 0, 2, 3),

    def backward(self, inputs, grad_outputs):
        x, W = inputs[0], inputs[1]
        gy, = grad_outputs
        g = self.groups
        n, in_channels, h, w = x.shape
        # The patches of gy that the forward pass stamped, one column per x pixel.
        col = _patches(gy, W.shape[2:], self.stride, self.pad, self.cover_all,
                       dilate=self.dilate)
        col = col.transpose(1, 2, 3, 0, 4, 5).reshape(g, W[0].size, n * h * w)  # (G, O/G*kh*kw, P)
        x2 = x.transpose(1, 0, 2, 3).reshape(g, in_channels // g, -1)
        gW = (x2 @ col.swapaxes(1, 2)).reshape(W.shape)
        gx = (W.reshape(g, in_channels // g, -1) @ col).reshape(in_channels, n, h, w)
        gx = gx.transpose(1, 0, 2, 3)
        if len(inputs) == 3:
            return gx, gW, gy.sum(axis=(0, 2, 3))
        return gx, gW


@_export('functions', 'functions.connection.deconvolution_2d')
def deconvolution_2d(x, W, b=None, stride=1, pad=0, outsize=None, *, dilate=1, groups=1):
    """2-D transposed convolution: the adjoint of convolution_2d with the same W.

    y = col2im(W2^T @ x2) + b: each input pixel adds W[c, o] times its value
    onto the output window it maps to.  x: (N, C, h, w); W: (C, out_channels
    / groups, kh, kw); b: (out_channels,) or None.  stride, pad, dilate: int
    or pair.  The output is (N, out_channels, out_h, out_w) with out_h = sy
    (h - 1) + (kh - 1) dy + 1 - 2 ph, or outsize (a pair), which may differ
    from that by up to sy - 1 either way.  Raises ValueError on non-4-D inputs, a channel
    mismatch, or an outsize whose convolution would not give back h.
    Follows chainer.functions.deconvolution_2d.
    """
    function = Deconvolution2DFunction(stride, pad, outsize, dilate, groups)
    return function(x, W) if b is None else function(x, W, b)


@_export('functions.array.im2col')
class Im2Col(Function):
    """Function node of im2col: every kh x kw patch as a column of channels;
    backward sums the columns back with col2im. Chainer: chainer.functions.im2col.
    """

    label = 'im2col'

    def __init__(self, ksize, stride, pad, cover_all, dilate=1):
        self.ksize = _pair(ksize, 'ksize', self.label)
        self.stride = _pair(stride, 'stride', self.label)
        self.pad = _pair(pad, 'pad', self.label)
        self.cover_all = cover_all
        self.dilate = _pair(dilate, 'dilate', self.label)

    def forward(self, inputs):
        x, = inputs
        out_h, out_w = _check_image(self.label, x.shape, self.ksize, self.stride, self.pad,
                                    self.cover_all, self.dilate)
        col = _patches(x, self.ksize, self.stride, self.pad, self.cover_all,
                       dilate=self.dilate)
        return col.reshape(len(x), -1, out_h, out_w),

    def backward(self, inputs, grad_outputs):
        x, = inputs
        gy, = grad_outputs
        gcol = gy.reshape(x.shape[:2] + self.ksize + gy.shape[2:])
        return _col2im(gcol, x.shape[2], x.shape[3], self.stride, self.pad, self.dilate),


@_export('functions', 'functions.array.im2col')
def im2col(x, ksize, stride=1, pad=0, cover_all=False, dilate=1):
    """The patches of x (N, C, H, W) as channels: (N, C*kh*kw, out_h, out_w),
    channel c*kh*kw + u*kw + v holding the pixel at kernel offset (u, v) of
    channel c (dilate spaces the offsets).  Arguments as in convolution_2d.
    Follows chainer.functions.im2col."""
    return Im2Col(ksize, stride, pad, cover_all, dilate)(x)


# ----- pooling -------------------------------------------------------------------
# Pooling windows are patches too.  Max pooling pads with -inf, so padding is
# never the maximum; Chainer's default cover_all=True keeps a last, partial
# window.  Average pooling pads with zeros and always divides by kh*kw, as
# Chainer does, so a window hanging over the border averages in the zeros.

class MaxPooling2D(Function):
    """Function node of max_pooling_2d: the maximum of each window; backward
    routes gy to the (first) maximal element.  return_indices=True keeps
    `winner`, each maximum's offset in its window, for upsampling_2d.
    Chainer: chainer.functions.MaxPooling2D.
    """

    label = 'max_pooling_2d'

    def __init__(self, ksize, stride=None, pad=0, cover_all=True, return_indices=False):
        self.ksize = _pair(ksize, 'ksize', self.label)
        self.stride = self.ksize if stride is None else _pair(stride, 'stride', self.label)
        self.pad = _pair(pad, 'pad', self.label)
        self.cover_all = cover_all
        self.return_indices = return_indices

    def _tiles(self, x):
        """x as (N, C, out_h, kh, out_w, kw) when the windows tile it exactly
        (stride = ksize, no padding, sizes that divide), else None."""
        (kh, kw), (h, w) = self.ksize, x.shape[2:]
        if self.stride != self.ksize or self.pad != (0, 0) or h % kh or w % kw:
            return None
        return x.reshape(x.shape[:2] + (h // kh, kh, w // kw, kw))   # a view

    def forward(self, inputs):
        x, = inputs
        out_h, out_w = _check_image(self.label, x.shape, self.ksize, self.stride, self.pad,
                                    self.cover_all)
        _require_float(self.label, x)
        xp = _xp(x)
        kh, kw = self.ksize
        tiles = self._tiles(x)
        if tiles is not None:
            # Windows that tile x (2x2 at stride 2, the usual case): a reshape is
            # their patch view, y the maximum over the kh*kw offsets, each a
            # strided view of x.  Where the maximum sits is left to backward,
            # which has x and y; this keeps no mask from forward to backward.
            # With the batch-last layout, the MNIST CNN's two poolings went
            # from 45 to 10 ms per step, forward and backward (CPU time).
            offsets = [tiles[:, :, :, u, :, v] for u in range(kh) for v in range(kw)]
            y = offsets[0].copy(order='K') if len(offsets) == 1 else \
                xp.maximum(offsets[0], offsets[1])
            for offset in offsets[2:]:
                xp.maximum(y, offset, out=y)
            self.y = y
            if self.return_indices:
                first = _first_maxima(tiles, y)
                self.winner = xp.zeros_like(y, dtype=np.int8 if kh * kw < 128 else np.int32)
                for k in range(1, kh * kw):
                    xp.copyto(self.winner, k, where=first[:, :, :, k // kw, :, k % kw])
            return y,
        windows = _patches(x, self.ksize, self.stride, self.pad, self.cover_all, -np.inf)
        # A running maximum over the kh*kw window offsets, each a strided view
        # of x: no patch copy.  `winner` remembers the offset u*kw + v where
        # each maximum sits (the first one on ties, as argmax would), the only
        # place its gradient goes.
        y = windows[:, :, 0, 0].copy(order='K')
        self.winner = xp.zeros_like(y, dtype=np.int8 if kh * kw < 128 else np.int32)
        for k in range(1, kh * kw):
            candidate = windows[:, :, k // kw, k % kw]
            better = candidate > y
            xp.copyto(y, candidate, where=better)
            xp.copyto(self.winner, k, where=better)
        return y,

    def backward(self, inputs, grad_outputs):
        x, = inputs
        gy, = grad_outputs
        xp = _xp(gy)
        (kh, kw), (sy, sx), (ph, pw) = self.ksize, self.stride, self.pad
        tiles = self._tiles(x)
        if tiles is not None:
            # Every pixel is in exactly one window: gx is gy at its window's
            # first maximum and 0 elsewhere, written once, with no col2im.
            order = _memory_order(x)
            if _memory_order(gy) != order:     # e.g. NCHW from a Linear after us:
                gy = _copy_in_order(gy, order)  # read across x's layout, it costs 10x
            gx = _empty(xp, x.shape, gy.dtype, order).reshape(tiles.shape)
            xp.multiply(gy[:, :, :, None, :, None], _first_maxima(tiles, self.y), out=gx)
            return gx.reshape(x.shape),
        out_h, out_w = gy.shape[2:]
        # col2im, with each offset's patch gradient being gy where it won.
        extra_h, extra_w = (sy - 1, sx - 1) if self.cover_all else (0, 0)
        h, w = x.shape[2:]
        gx = _empty(xp, x.shape[:2] + (h + 2 * ph + extra_h, w + 2 * pw + extra_w), gy.dtype,
                    _memory_order(x))
        gx[...] = 0
        for k in range(kh * kw):
            u, v = k // kw, k % kw
            gx[:, :, u:u + sy * out_h:sy, v:v + sx * out_w:sx] += gy * (self.winner == k)
        return gx[:, :, ph:ph + h, pw:pw + w],


def _first_maxima(tiles, y):
    """True where an element of tiles (N, C, out_h, kh, out_w, kw) is the
    maximum y of its window, only the first of them (in u*kw + v order) on ties."""
    xp = _xp(y)
    first = _empty(xp, tiles.shape, np.bool_, _memory_order(tiles))
    xp.equal(tiles, y[:, :, :, None, :, None], out=first)      # every maximum
    kh, kw = tiles.shape[3], tiles.shape[5]
    taken = first[:, :, :, 0, :, 0].copy(order='K')
    for k in range(1, kh * kw):
        here = first[:, :, :, k // kw, :, k % kw]
        xp.greater(here, taken, out=here)                      # a maximum not yet taken
        if k < kh * kw - 1:
            xp.logical_or(taken, here, out=taken)
    return first


@_export('functions', 'functions.pooling.max_pooling_nd')
def max_pooling_2d(x, ksize, stride=None, pad=0, cover_all=True, return_indices=False):
    """The maximum of each ksize window of x (N, C, H, W), per channel.

    ksize, stride, pad: int or pair; stride=None means stride = ksize.
    cover_all=True (Chainer's default) adds a last partial window so every
    pixel is covered: out_h = (H + 2 pad - kh + stride - 1) // stride + 1.
    Padding never wins (it is -inf).  Returns y (N, C, out_h, out_w); with
    return_indices=True, the pair (y, indices), indices an int32 array of
    y's shape holding each maximum's offset u*kw + v in its window (what
    upsampling_2d takes).  Raises ValueError on a non-4-D x or a window
    larger than the padded input.  Follows chainer.functions.max_pooling_2d.
    """
    function = MaxPooling2D(ksize, stride, pad, cover_all, return_indices)
    y = function(x)
    if return_indices:
        return y, function.winner.astype(np.int32)
    return y


@_export('functions.pooling.average_pooling_2d')
class AveragePooling2D(Function):
    """Function node of average_pooling_2d: the mean of each kh x kw window
    (padding counted as zeros); backward spreads gy / (kh kw) over the window.
    Chainer: chainer.functions.pooling.average_pooling_2d.AveragePooling2D.
    """

    label = 'average_pooling_2d'

    def __init__(self, ksize, stride=None, pad=0):
        self.ksize = _pair(ksize, 'ksize', self.label)
        self.stride = self.ksize if stride is None else _pair(stride, 'stride', self.label)
        self.pad = _pair(pad, 'pad', self.label)

    def forward(self, inputs):
        x, = inputs
        _check_image(self.label, x.shape, self.ksize, self.stride, self.pad)
        window = _patches(x, self.ksize, self.stride, self.pad)  # a view: nothing copied
        y = window.sum(axis=(2, 3))
        y *= x.dtype.type(1.0 / (self.ksize[0] * self.ksize[1]))
        return y,

    def backward(self, inputs, grad_outputs):      # each pixel of a window gets gy / (kh*kw)
        x, = inputs
        gy, = grad_outputs
        share = gy * gy.dtype.type(1.0 / (self.ksize[0] * self.ksize[1]))
        gcol = _xp(gy).broadcast_to(share[:, :, None, None],
                                    x.shape[:2] + self.ksize + gy.shape[2:])
        return _col2im(gcol, x.shape[2], x.shape[3], self.stride, self.pad),


@_export('functions', 'functions.pooling.average_pooling_2d')
def average_pooling_2d(x, ksize, stride=None, pad=0):
    """The mean of each ksize window of x (N, C, H, W), per channel.

    ksize, stride, pad: int or pair; stride=None means stride = ksize.
    The padding counts as zeros and every window is divided by kh*kw, as in
    Chainer.  out_h = (H + 2 pad - kh) // stride + 1.  Returns (N, C, out_h,
    out_w).  Raises ValueError on a non-4-D x or a window larger than the
    padded input.  Follows chainer.functions.average_pooling_2d.
    """
    return AveragePooling2D(ksize, stride, pad)(x)


# ----- unpooling and upsampling ---------------------------------------------------
# The way back up.  Unpooling copies every pixel into its whole kh x kw
# window of a larger image, windows placed as pooling would place them
# (copies adding up where windows overlap): col2im of x broadcast over the
# kernel offsets, a deconvolution with a kernel of ones per channel.
# Upsampling copies each pixel to one place only, the offset where max
# pooling found the maximum, and leaves the rest of the window zero.  The
# output size inverts pooling's (default cover_all=True) rule:
#
#     out_h = sy (h - 1) + kh - 2 ph  (- (sy - 1) with cover_all)
#
# Backward reads gy's windows, im2col's patch view: unpooling sums each
# window, upsampling picks the element at the remembered offset.

class _Unpool(Function):
    """The shared part of unpooling_2d and upsampling_2d: sizes and checks."""

    def __init__(self, ksize, stride, pad, outsize, cover_all):
        self.ksize = _pair(ksize, 'ksize', self.label)
        self.stride = self.ksize if stride is None else _pair(stride, 'stride', self.label)
        self.pad = _pair(pad, 'pad', self.label)
        self.outsize = None if outsize is None else _pair(outsize, 'outsize', self.label)
        self.cover_all = cover_all

    def _output_size(self, x):
        if x.ndim != 4:
            raise ValueError('{}: x must be 4-D (batch, channels, height, width), got shape '
                             '{}'.format(self.label, x.shape))
        _require_float(self.label, x)
        sizes = []
        for i in (0, 1):
            k, s, p, size = self.ksize[i], self.stride[i], self.pad[i], x.shape[2 + i]
            if k < 1 or s < 1 or p < 0:
                raise ValueError('{}: ksize and stride must be >= 1 and pad >= 0, got ksize '
                                 '{}, stride {}, pad {}'.format(self.label, self.ksize,
                                                                self.stride, self.pad))
            out = (s * (size - 1) + k - 2 * p - (s - 1 if self.cover_all else 0)
                   if self.outsize is None else self.outsize[i])
            if out < 1 or _conv_outsize(out, k, s, p, self.cover_all) != size:
                raise ValueError('{}: output size {} along axis {} does not pool back to x\'s '
                                 '{} (x.shape {}, ksize {}, stride {}, pad {}, outsize {}, '
                                 'cover_all {})'.format(self.label, out, 2 + i, size, x.shape,
                                                        self.ksize, self.stride, self.pad,
                                                        self.outsize, self.cover_all))
            sizes.append(out)
        return sizes

    def _windows(self, gy):
        """gy's windows, (N, C, kh, kw, h, w): the patches pooling would read."""
        return _patches(gy, self.ksize, self.stride, self.pad, self.cover_all)


@_export('functions.pooling.unpooling_2d')
class Unpooling2D(_Unpool):
    """Function node of unpooling_2d: col2im of x repeated over each window;
    backward sums gy over each window.
    Chainer: chainer.functions.pooling.unpooling_2d.Unpooling2D.
    """

    label = 'unpooling_2d'

    def forward(self, inputs):
        x, = inputs
        out_h, out_w = self._output_size(x)
        col = _xp(x).broadcast_to(x[:, :, None, None], x.shape[:2] + self.ksize + x.shape[2:])
        return _col2im(col, out_h, out_w, self.stride, self.pad),

    def backward(self, inputs, grad_outputs):       # each copy's gradient flows back
        return self._windows(grad_outputs[0]).sum(axis=(2, 3)),


@_export('functions', 'functions.pooling.unpooling_2d')
def unpooling_2d(x, ksize, stride=None, pad=0, outsize=None, cover_all=True):
    """Copy every pixel of x (N, C, h, w) into its whole ksize window of a larger image.

    The inverse placement of pooling (overlapping copies add up).  ksize,
    stride, pad: int or pair; stride=None means ksize.  The output is (N,
    C, out_h, out_w) with out_h = stride (h - 1) + kh - 2 pad, less stride
    - 1 when cover_all (the default, as in max_pooling_2d), or outsize (a
    pair) if given.  Raises ValueError on a non-4-D x or an outsize that
    pooling would not bring back to h; TypeError on an integer x.
    Follows chainer.functions.unpooling_2d.
    """
    return Unpooling2D(ksize, stride, pad, outsize, cover_all)(x)


@_export('functions.pooling.upsampling_2d')
class Upsampling2D(_Unpool):
    """Function node of upsampling_2d: each pixel to the offset `indices`
    names in its window; backward reads gy back from the same place.
    Chainer: chainer.functions.pooling.upsampling_2d.Upsampling2D.
    """

    label = 'upsampling_2d'

    def __init__(self, indices, ksize, stride, pad, outsize, cover_all):
        super().__init__(ksize, stride, pad, outsize, cover_all)
        self.indices = indices

    def forward(self, inputs):
        x, = inputs
        out_h, out_w = self._output_size(x)
        if self.indices.shape != x.shape:
            raise ValueError('upsampling_2d: indices.shape {} != x.shape {}'
                             .format(self.indices.shape, x.shape))
        xp = _xp(x)
        kh, kw = self.ksize
        col = xp.zeros(x.shape[:2] + self.ksize + x.shape[2:], dtype=x.dtype)
        for k in range(kh * kw):
            col[:, :, k // kw, k % kw] = xp.where(self.indices == k, x, 0)
        return _col2im(col, out_h, out_w, self.stride, self.pad),

    def backward(self, inputs, grad_outputs):
        windows = self._windows(grad_outputs[0])
        kh, kw = self.ksize
        gx = _xp(windows).zeros(inputs[0].shape, dtype=windows.dtype)
        for k in range(kh * kw):
            gx += windows[:, :, k // kw, k % kw] * (self.indices == k)
        return gx,


@_export('functions', 'functions.pooling.upsampling_2d')
def upsampling_2d(x, indexes, ksize, stride=None, pad=0, outsize=None, cover_all=True):
    """Put every pixel of x (N, C, h, w) where max pooling found it; zeros elsewhere.

    indexes: an integer array of x's shape, each entry the offset u*kw + v
    within its ksize window, as max_pooling_2d(..., return_indices=True)
    returns it.  ksize, stride, pad, outsize, cover_all and the output size
    as in unpooling_2d (pass the pooling's own arguments, and outsize = the
    pooled image's size to get that size back).  Raises ValueError on
    mismatched indexes or sizes.  Follows chainer.functions.upsampling_2d.
    """
    indexes = _input_data('upsampling_2d', indexes)
    return Upsampling2D(indexes, ksize, stride, pad, outsize, cover_all)(x)


# ----- N spatial axes: convolution_nd, pooling_nd, deconvolution_nd, unpooling_nd ---
# Nothing above depends on there being two spatial axes.  With d of them (a
# signal (N, C, L) for d = 1, a volume (N, C, D, H, W) for d = 3) the patch
# view is (N, C, k1..kd, o1..od), element
#
#     x_padded[n, c, s1*i1 + d1*u1, ..., sd*id + dd*ud]
#
# each output length follows the same one-axis rule, and col2im loops over
# the k1*...*kd kernel offsets instead of kh*kw.  So the N-D functions below
# are the 2-D ones with the axis lists spelled generally (_patches_nd,
# _col2im_nd); the 2-D functions keep their own spelled-out code, the path
# a CNN runs every step.  W gains one kernel axis per spatial axis:
# convolution's is (O, C/G, k1..kd), deconvolution's (C, O/G, k1..kd).

def _check_volume(label, x_shape, ksize, stride, pad, cover_all=False, dilate=None):
    """Validate x (N, C, s1..sd) against a kernel; return the output lengths."""
    sizes = tuple(x_shape[2:])
    dilate = (1,) * len(sizes) if dilate is None else dilate
    if min(ksize + stride + dilate) < 1 or min(pad) < 0:
        raise ValueError('{}: ksize, stride and dilate must be >= 1 and pad >= 0, got ksize '
                         '{}, stride {}, pad {}, dilate {}'.format(label, ksize, stride, pad,
                                                                  dilate))
    spans = tuple((k - 1) * d + 1 for k, d in zip(ksize, dilate))
    padded = tuple(size + 2 * p for size, p in zip(sizes, pad))
    if any(span > room for span, room in zip(spans, padded)):
        raise ValueError('{}: the kernel {} is larger than the padded input {} (x.shape {}, '
                         'pad {}, dilate {}); pad more or use a smaller kernel'
                         .format(label, spans, padded, tuple(x_shape), pad, dilate))
    return tuple(_conv_outsize(size, k, s, p, cover_all, d)
                 for size, k, s, p, d in zip(sizes, ksize, stride, pad, dilate))


def _spatial_ndim(label, x, want=None):
    """The number of spatial axes of x (N, C, s1..sd); `want` (1, 3) checks it."""
    ndim = _input_data(label, x).ndim - 2
    if ndim < 1 or (want is not None and ndim != want):
        raise ValueError('{}: x must have {} spatial axes (batch, channels, {}), got shape {}'
                         .format(label, want or '1 or more', want and ', '.join(
                             ['length'] if want == 1 else ['depth', 'height', 'width'])
                             or 'spatial...', _input_data(label, x).shape))
    return ndim


def _to_front(ndim, *axes):
    """The transpose that brings `axes` of an (N, C, ...) array to the front."""
    return axes + tuple(a for a in range(ndim) if a not in axes)


class ConvolutionNDFunction(Function):
    """Function node of convolution_nd: Convolution2DFunction with d spatial
    axes (im2col by _patches_nd, col2im by _col2im_nd).
    Chainer: chainer.functions.connection.convolution_nd.ConvolutionND.
    """

    label = 'convolution_nd'

    def __init__(self, ndim, stride=1, pad=0, cover_all=False, dilate=1, groups=1):
        self.ndim = ndim
        self.stride = _ntuple(stride, ndim, 'stride', self.label)
        self.pad = _ntuple(pad, ndim, 'pad', self.label)
        self.cover_all = cover_all
        self.dilate = _ntuple(dilate, ndim, 'dilate', self.label)
        self.groups = _positive_int(self.label, 'groups', groups)

    def forward(self, inputs):
        x, W = inputs[0], inputs[1]
        b = inputs[2] if len(inputs) == 3 else None
        d, g = self.ndim, self.groups
        if x.ndim != d + 2 or W.ndim != d + 2:
            raise ValueError('convolution_nd: x and W must both be {}-D ((batch, channels, '
                             'spatial...) and (out_channels, in_channels / groups, k...)), got '
                             'x.shape {}, W.shape {}'.format(d + 2, x.shape, W.shape))
        outs = _check_volume(self.label, x.shape, W.shape[2:], self.stride, self.pad,
                             self.cover_all, self.dilate)
        if x.shape[1] != W.shape[1] * g or W.shape[0] % g:
            raise ValueError('convolution_nd: x has {} channels but W expects {} (x.shape {}, '
                             'W.shape {}, groups {}; W.shape[0] must divide by groups)'
                             .format(x.shape[1], W.shape[1] * g, x.shape, W.shape, g))
        if x.dtype != W.dtype or b is not None and b.dtype != x.dtype:
            W, b = _in_dtype_of(self, x, W, b)      # Chainer v7 mixes float dtypes, b's too
        if b is not None and b.shape != (W.shape[0],):
            raise ValueError('convolution_nd: b.shape {} != (W.shape[0],) = ({},)'
                             .format(b.shape, W.shape[0]))
        n, out_channels = len(x), W.shape[0]
        patches = _patches_nd(x, W.shape[2:], self.stride, self.pad, self.cover_all,
                              dilate=self.dilate)
        # (C, k1..kd, N, o1..od): channel and kernel offsets are the rows of col.
        order = (1,) + tuple(range(2, 2 + d)) + (0,) + tuple(range(2 + d, 2 + 2 * d))
        self.col = patches.transpose(order).reshape(g, W[0].size, n * math.prod(outs))
        y = (W.reshape(g, out_channels // g, -1) @ self.col).reshape((out_channels, n) + outs)
        if b is not None:
            y += b.reshape((-1,) + (1,) * (d + 1))
        return y.transpose(_to_front(d + 2, 1, 0)),

    def backward(self, inputs, grad_outputs):
        x, W = inputs[0], inputs[1]
        gy = grad_outputs[0]
        d, g = self.ndim, self.groups
        n, out_channels = gy.shape[:2]
        gy2 = gy.transpose(_to_front(d + 2, 1, 0)).reshape(g, out_channels // g, -1)
        gW = (gy2 @ self.col.swapaxes(1, 2)).reshape(W.shape)
        gx = None
        if self.inputs[0].requires_grad:
            gcol = W.reshape(g, out_channels // g, -1).swapaxes(1, 2) @ gy2
            gcol = gcol.reshape((x.shape[1],) + W.shape[2:] + (n,) + gy.shape[2:])
            # (C, N, k..., o...) for col2im, the channel axis first as in 2-D.
            gcol = gcol.transpose(_to_front(2 + 2 * d, 0, d + 1))
            gx = _col2im_nd(gcol, x.shape[2:], self.stride, self.pad, self.dilate)
            gx = gx.transpose(_to_front(d + 2, 1, 0))
        if len(inputs) == 3:
            return gx, gW, gy2.sum(axis=2).reshape(-1)
        return gx, gW


@_export('functions', 'functions.connection.convolution_nd')
def convolution_nd(x, W, b=None, stride=1, pad=0, cover_all=False, dilate=1, groups=1):
    """N-dimensional convolution (cross-correlation) of x (N, C, s1, ..., sd).

    y[n, o, i1..id] = b[o] + sum_{c, u1..ud} W[o, c, u1..ud]
    x[n, c', s1 i1 + d1 u1, ..., sd id + dd ud] over the channels c' of o's
    group.  W: (out_channels, C / groups, k1, ..., kd); b: (out_channels,) or
    None.  stride, pad, dilate: an int or d ints.  Each output length is
    (size + 2 pad - ((k - 1) dilate + 1)) // stride + 1 (cover_all=True: one
    more where the last window would miss input).  d = 2 gives convolution_2d.
    Returns (N, out_channels, o1, ..., od).  Raises ValueError when x and W
    do not have the same ndim (>= 3), the channels do not match, or a kernel
    is larger than the padded input.  Chainer: chainer.functions.convolution_nd.
    """
    ndim = _spatial_ndim('convolution_nd', x)
    function = ConvolutionNDFunction(ndim, stride, pad, cover_all, dilate, groups)
    return function(x, W) if b is None else function(x, W, b)


@_export('functions', 'functions.connection.convolution_nd')
def convolution_1d(x, W, b=None, stride=1, pad=0, cover_all=False, dilate=1, groups=1):
    """convolution_nd for signals: x (N, C, L), W (out_channels, C / groups, k).

    Returns (N, out_channels, out_l).  Raises ValueError unless x is 3-D.
    Chainer: chainer.functions.convolution_1d.
    """
    _spatial_ndim('convolution_1d', x, 1)
    return convolution_nd(x, W, b, stride, pad, cover_all, dilate, groups)


@_export('functions', 'functions.connection.convolution_nd')
def convolution_3d(x, W, b=None, stride=1, pad=0, cover_all=False, dilate=1, groups=1):
    """convolution_nd for volumes: x (N, C, D, H, W), W (out_channels, C / groups, kd, kh, kw).

    Returns (N, out_channels, out_d, out_h, out_w).  Raises ValueError
    unless x is 5-D.  Chainer: chainer.functions.convolution_3d.
    """
    _spatial_ndim('convolution_3d', x, 3)
    return convolution_nd(x, W, b, stride, pad, cover_all, dilate, groups)


@_export('functions.pooling.max_pooling_nd')
class MaxPoolingND(Function):
    """Function node of max_pooling_nd: MaxPooling2D with d spatial axes (a
    running maximum over the k1*...*kd window offsets; gy goes to the first
    maximum).  Chainer: chainer.functions.pooling.max_pooling_nd.MaxPoolingND.
    """

    label = 'max_pooling_nd'

    def __init__(self, ndim, ksize, stride=None, pad=0, cover_all=True):
        self.ndim = ndim
        self.ksize = _ntuple(ksize, ndim, 'ksize', self.label)
        self.stride = self.ksize if stride is None else _ntuple(stride, ndim, 'stride',
                                                                 self.label)
        self.pad = _ntuple(pad, ndim, 'pad', self.label)
        self.cover_all = cover_all

    def forward(self, inputs):
        x, = inputs
        _check_volume(self.label, x.shape, self.ksize, self.stride, self.pad, self.cover_all)
        _require_float(self.label, x)
        xp = _xp(x)
        windows = _patches_nd(x, self.ksize, self.stride, self.pad, self.cover_all, -np.inf)
        offsets = list(itertools.product(*[range(k) for k in self.ksize]))
        y = windows[(slice(None), slice(None)) + offsets[0]].copy()
        self.winner = xp.zeros(y.shape, dtype=np.int8 if len(offsets) < 128 else np.int32)
        for k, offset in enumerate(offsets[1:], 1):
            candidate = windows[(slice(None), slice(None)) + offset]
            better = candidate > y
            xp.copyto(y, candidate, where=better)
            xp.copyto(self.winner, k, where=better)
        return y,

    def backward(self, inputs, grad_outputs):
        x, = inputs
        gy, = grad_outputs
        xp = _xp(gy)
        # The patch gradient of offset k is gy where k won: col2im of that.
        gcol = xp.zeros(gy.shape[:2] + self.ksize + gy.shape[2:], dtype=gy.dtype)
        for k, offset in enumerate(itertools.product(*[range(k) for k in self.ksize])):
            gcol[(slice(None), slice(None)) + offset] = gy * (self.winner == k)
        return _col2im_nd(gcol, x.shape[2:], self.stride, self.pad),


@_export('functions', 'functions.pooling.max_pooling_nd')
def max_pooling_nd(x, ksize, stride=None, pad=0, cover_all=True, return_indices=False):
    """The maximum of each window of x (N, C, s1, ..., sd), per channel.

    ksize, stride, pad: an int or d ints; stride=None means ksize.
    cover_all=True (Chainer's default) keeps a last partial window: each
    output length is (size + 2 pad - k + stride - 1) // stride + 1.  Padding
    is -inf, never the maximum.  Returns y (N, C, o1, ..., od); with
    return_indices=True, (y, indices), indices int32 of y's shape holding
    each maximum's flat offset in its window (row-major over k1..kd).
    Raises ValueError on fewer than 3 axes or a window larger than the
    padded input, TypeError on integer x.  Chainer: chainer.functions.max_pooling_nd.
    """
    function = MaxPoolingND(_spatial_ndim('max_pooling_nd', x), ksize, stride, pad, cover_all)
    y = function(x)
    if return_indices:
        return y, function.winner.astype(np.int32)
    return y


@_export('functions', 'functions.pooling.max_pooling_nd')
def max_pooling_1d(x, ksize, stride=None, pad=0, cover_all=True, return_indices=False):
    """max_pooling_nd of a signal x (N, C, L).  Raises ValueError unless x is
    3-D.  Chainer: chainer.functions.max_pooling_1d."""
    _spatial_ndim('max_pooling_1d', x, 1)
    return max_pooling_nd(x, ksize, stride, pad, cover_all, return_indices)


@_export('functions', 'functions.pooling.max_pooling_nd')
def max_pooling_3d(x, ksize, stride=None, pad=0, cover_all=True, return_indices=False):
    """max_pooling_nd of a volume x (N, C, D, H, W).  Raises ValueError
    unless x is 5-D.  Chainer: chainer.functions.max_pooling_3d."""
    _spatial_ndim('max_pooling_3d', x, 3)
    return max_pooling_nd(x, ksize, stride, pad, cover_all, return_indices)


@_export('functions.pooling.average_pooling_nd')
class AveragePoolingND(Function):
    """Function node of average_pooling_nd: each window's sum divided by its
    size (pad_value=0: the full k1*...*kd; None: the pixels inside x only);
    backward spreads gy / size over the window.
    Chainer: chainer.functions.pooling.average_pooling_nd.AveragePoolingND.
    """

    label = 'average_pooling_nd'

    def __init__(self, ndim, ksize, stride=None, pad=0, pad_value=0):
        if pad_value is not None and not (isinstance(pad_value, (int, float)) and
                                          pad_value == 0):
            raise ValueError('average_pooling_nd: pad_value must be 0 or None, got {!r}'
                             .format(pad_value))
        self.ndim = ndim
        self.ksize = _ntuple(ksize, ndim, 'ksize', self.label)
        self.stride = self.ksize if stride is None else _ntuple(stride, ndim, 'stride',
                                                                 self.label)
        self.pad = _ntuple(pad, ndim, 'pad', self.label)
        self.pad_value = pad_value

    def _scale(self, x, outs):
        """1 / window size: a scalar, or (with pad_value=None) an array of the
        output's spatial shape, the product of the in-bounds count per axis."""
        if self.pad_value is not None:
            return x.dtype.type(1.0 / math.prod(self.ksize))
        xp = _xp(x)
        count = None
        for size, k, s, p, o in zip(x.shape[2:], self.ksize, self.stride, self.pad, outs):
            start = np.arange(o) * s - p
            inside = np.minimum(start + k, size) - np.maximum(start, 0)
            count = inside if count is None else np.multiply.outer(count, inside)
        return xp.asarray(1.0 / count, dtype=x.dtype)

    def forward(self, inputs):
        x, = inputs
        outs = _check_volume(self.label, x.shape, self.ksize, self.stride, self.pad)
        _require_float(self.label, x)
        d = self.ndim
        y = _patches_nd(x, self.ksize, self.stride, self.pad).sum(axis=tuple(range(2, 2 + d)))
        self.scale = self._scale(x, outs)
        y *= self.scale
        return y,

    def backward(self, inputs, grad_outputs):
        x, = inputs
        gy, = grad_outputs
        share = gy * self.scale
        d = self.ndim
        gcol = _xp(gy).broadcast_to(share[(slice(None), slice(None)) + (None,) * d],
                                    gy.shape[:2] + self.ksize + gy.shape[2:])
        return _col2im_nd(gcol, x.shape[2:], self.stride, self.pad),


@_export('functions', 'functions.pooling.average_pooling_nd')
def average_pooling_nd(x, ksize, stride=None, pad=0, pad_value=0):
    """The mean of each window of x (N, C, s1, ..., sd), per channel.

    ksize, stride, pad: an int or d ints; stride=None means ksize.  Each
    output length is (size + 2 pad - k) // stride + 1.  pad_value=0 counts
    the padding as zeros and divides every window by k1*...*kd; pad_value=None
    divides each window by the number of its pixels inside x.  Returns (N, C,
    o1, ..., od).  Raises ValueError on fewer than 3 axes, a window larger
    than the padded input or another pad_value; TypeError on integer x.
    Chainer: chainer.functions.average_pooling_nd.
    """
    return AveragePoolingND(_spatial_ndim('average_pooling_nd', x), ksize, stride, pad,
                            pad_value)(x)


@_export('functions', 'functions.pooling.average_pooling_nd')
def average_pooling_1d(x, ksize, stride=None, pad=0, pad_value=0):
    """average_pooling_nd of a signal x (N, C, L).  Raises ValueError unless
    x is 3-D.  Chainer: chainer.functions.average_pooling_1d."""
    _spatial_ndim('average_pooling_1d', x, 1)
    return average_pooling_nd(x, ksize, stride, pad, pad_value)


@_export('functions', 'functions.pooling.average_pooling_nd')
def average_pooling_3d(x, ksize, stride=None, pad=0, pad_value=0):
    """average_pooling_nd of a volume x (N, C, D, H, W).  Raises ValueError
    unless x is 5-D.  Chainer: chainer.functions.average_pooling_3d."""
    _spatial_ndim('average_pooling_3d', x, 3)
    return average_pooling_nd(x, ksize, stride, pad, pad_value)


# ----- batch normalization -------------------------------------------------------
# Over the axes that are averaged (all but the channel axis by default: the
# batch, and the pixels of an image), with m values per channel:
#
#     mu = mean(x),  var = mean((x - mu)^2),  x_hat = (x - mu) / sqrt(var + eps)
#     y = gamma x_hat + beta
#
# Backward, differentiating through mu and var too (they depend on x):
#
#     dbeta  = sum(gy),   dgamma = sum(gy x_hat)
#     dx     = gamma / sqrt(var + eps) * (gy - dbeta / m - x_hat dgamma / m)
#
# Training also keeps running averages for test time; the variance is made
# unbiased (times m / (m - 1)) before it is averaged in:
#
#     running_mean = decay running_mean + (1 - decay) mu
#     running_var  = decay running_var  + (1 - decay) var m / max(m - 1, 1)
#
# At test time (fixed_batch_normalization) mu and var are those constants, so
# y is an affine function of x and its gradients are direct.
#
# Speed (training, on the CPU).  Each formula above is a pass over x, and for
# the MNIST CNN's 10 MB maps every pass from memory costs about 1.5 ms.  So
# the channels are taken as the rows of a (K, m) matrix (a view, as the
# images come batch-last from the convolution) and normalized a block of
# rows at a time, small enough (_BN_BLOCK values) that the passes after the
# first find the block in the cache; x_hat is not kept but recomputed in
# backward from x, which the graph keeps anyway; and the two sums of
# products, sum((x - mu)^2) and sum(gy (x - mu)), are einsum's, with no
# array of products written first.  Forward and backward of the CNN's two
# batch normalizations: 28 ms per step before, 15.5 ms after (CPU time,
# NumPy 1.26, bench_cnn.py's breakdown); in one block, 30 % slower.  The
# statistics stay float32, and two-pass: sum((x - mu)^2), not sum(x^2) - m mu^2,
# which cancels in float32.

def _bn_axes(label, x, gamma, axis):
    """The averaged axes, and the shape that broadcasts gamma against x."""
    if axis is None:
        axis = (0,) + tuple(range(2, x.ndim))
    elif isinstance(axis, (int, np.integer)):
        axis = (int(axis),)
    axis = tuple(a % x.ndim if -x.ndim <= a < x.ndim else a for a in axis)
    if x.ndim < 2 or any(not 0 <= a < x.ndim for a in axis):
        raise ValueError('{}: x must have 2 or more dimensions and axis must name its '
                         'axes, got x.shape {}, axis {}'.format(label, x.shape, axis))
    kept = tuple(d for i, d in enumerate(x.shape) if i not in axis)
    if gamma.shape != kept:
        raise ValueError('{}: gamma and beta must have shape {} (x.shape {} without axes '
                         '{}), got gamma.shape {}'.format(label, kept, x.shape, axis,
                                                          gamma.shape))
    expanded = tuple(1 if i in axis else d for i, d in enumerate(x.shape))
    return axis, expanded


class BatchNormalizationFunction(Function):
    """Function node of batch_normalization in training: normalizes with the
    batch's mean and variance and updates the running averages in place.
    Chainer: chainer.functions.normalization.batch_normalization.BatchNormalization.
    """

    label = 'batch_normalization'

    def __init__(self, eps=2e-5, running_mean=None, running_var=None, decay=0.9, axis=None):
        self.eps = eps
        self.running_mean = running_mean
        self.running_var = running_var
        self.decay = decay
        self.axis = axis

    def forward(self, inputs):
        x, gamma, beta = inputs
        if not x.dtype == gamma.dtype == beta.dtype:    # Chainer v7's mixed precision:
            if gamma.dtype != beta.dtype:                   # x's dtype may differ, not these
                _check_dtypes('batch_normalization: gamma and beta', gamma, beta)
            gamma, beta = _in_dtype_of(self, x, gamma, beta)    # y in x's dtype
        if beta.shape != gamma.shape:
            raise ValueError('batch_normalization: beta.shape {} != gamma.shape {}'
                             .format(beta.shape, gamma.shape))
        self.axis = _bn_axes(self.label, x, gamma, self.axis)[0]
        for name, a in (('running_mean', self.running_mean), ('running_var', self.running_var)):
            if a is not None and a.shape != gamma.shape:    # checked before either is updated
                raise ValueError('batch_normalization: {}.shape {} != gamma.shape {}'
                                 .format(name, a.shape, gamma.shape))
        xp = _xp(x)
        # The averaged axes in x's memory order, kept: backward reads gy in
        # the same order, whatever gy's own layout (a batch-last x may meet a
        # C-contiguous gy, or a broadcast one).
        self.order = _averaged_order(x, self.axis)
        x2 = _channel_rows(x, self.axis, self.order)  # (K, m): a view for batch-last images
        m = x2.shape[1]
        wide = np.dtype(_accumulator(x.dtype) or x.dtype)   # float16's statistics in float32
        y2 = xp.empty(x2.shape, x.dtype)
        self.mean = xp.empty(len(x2), wide)
        self.inv_std = xp.empty(len(x2), wide)
        var_all = xp.empty(len(x2), wide)
        gamma2, beta2 = gamma.reshape(-1, 1), beta.reshape(-1, 1)
        for rows, centered in _row_blocks(x2):
            mean = x2[rows].mean(axis=1, keepdims=True, dtype=wide)
            xp.subtract(x2[rows], mean, out=centered, casting='unsafe')
            var = xp.einsum('ij,ij->i', centered, centered, dtype=wide)[:, None] / wide.type(m)
            inv_std = 1.0 / xp.sqrt(var + wide.type(self.eps))
            self.mean[rows], var_all[rows], self.inv_std[rows] = mean[:, 0], var[:, 0], \
                inv_std[:, 0]
            xp.multiply(centered, inv_std * gamma2[rows], out=y2[rows])   # gamma x_hat
            y2[rows] += beta2[rows]
        if self.running_mean is not None:     # updated in place, as in Chainer
            unbiased = m / max(m - 1.0, 1.0)
            self.running_mean *= self.decay
            self.running_mean += (1 - self.decay) * self.mean.reshape(gamma.shape)
            self.running_var *= self.decay
            self.running_var += (1 - self.decay) * unbiased * var_all.reshape(gamma.shape)
        return _channel_rows_back(y2, x, self.axis, self.order),

    def backward(self, inputs, grad_outputs):
        x, gamma, beta = inputs
        gy, = grad_outputs
        xp = _xp(x)
        x2, gy2 = (_channel_rows(a, self.axis, self.order) for a in (x, gy))
        # The sums in float32 for float16 (_accumulator): a running float16 sum
        # of 10,000 ones stops at 2048, and m = 78,400 would overflow float16.
        # m in the sums' dtype: NumPy 1.x turns float32 / int into float64 once
        # the int passes 65535 (a batch of 100 28x28 maps has m = 78400).
        wide = np.dtype(_accumulator(x.dtype) or x.dtype)
        m = wide.type(x2.shape[1])
        gx2 = xp.empty(x2.shape, x.dtype)
        ggamma, gbeta = xp.empty(len(x2), wide), xp.empty(len(x2), wide)
        gamma2 = gamma.reshape(-1, 1)
        for rows, centered in _row_blocks(x2):
            # x - mu again, in the cache: cheaper than keeping x_hat.  With
            # x_hat = (x - mu) inv_std, gx = scale gy + a (x - mu) + c per row.
            xp.subtract(x2[rows], self.mean[rows, None], out=centered)
            inv_std, scale = self.inv_std[rows, None], gamma2[rows] * self.inv_std[rows, None]
            gbeta[rows] = gy2[rows].sum(axis=1, dtype=wide)
            ggamma[rows] = xp.einsum('ij,ij->i', gy2[rows], centered, dtype=wide) * \
                inv_std[:, 0]
            centered *= -scale * inv_std * (ggamma[rows, None] / m)
            xp.multiply(gy2[rows], scale, out=gx2[rows])
            gx2[rows] += centered
            gx2[rows] -= scale * (gbeta[rows, None] / m)
        return (_channel_rows_back(gx2, x, self.axis, self.order),
                ggamma.reshape(gamma.shape).astype(gamma.dtype, copy=False),
                gbeta.reshape(gamma.shape).astype(beta.dtype, copy=False))


def _averaged_order(x, axis):
    """The averaged axes of x, outermost in memory first (as _memory_order)."""
    return sorted(axis, key=lambda a: -abs(x.strides[a]))


def _channel_rows(x, axis, averaged):
    """x as a (K, m) matrix: a row for each of the K normalized entries (the
    channels), its m averaged values (batch and pixels) along it in the order
    `averaged` (_averaged_order): a view for the batch-last images of a
    convolution, else a copy.  The same `averaged` pairs x's and gy's elements."""
    kept = [a for a in range(x.ndim) if a not in axis]
    k = math.prod(x.shape[a] for a in kept)
    return x.transpose(kept + list(averaged)).reshape(k, x.size // max(k, 1))


def _channel_rows_back(y2, x, axis, averaged):
    """The inverse of _channel_rows: y2 (K, m) as an array of x's shape (a view)."""
    order = [a for a in range(x.ndim) if a not in axis] + list(averaged)
    return y2.reshape([x.shape[a] for a in order]).transpose(tuple(np.argsort(order)))


_BN_BLOCK = 1 << 17       # values: a block of rows and its scratch stay in the cache


def _row_blocks(x2):
    """(rows, scratch) for blocks of the rows of x2 that fit in the cache,
    scratch an uninitialized array of the block's shape.  On a GPU, one
    block: each pass is a kernel launch there."""
    xp = _xp(x2)
    count = max(1, len(x2) if xp is not np else _BN_BLOCK // max(x2.shape[1], 1))
    scratch = xp.empty((min(count, len(x2)), x2.shape[1]), x2.dtype)
    for start in range(0, len(x2), count):
        rows = slice(start, min(start + count, len(x2)))
        yield rows, scratch[:rows.stop - rows.start]


@_export('functions', 'functions.normalization.batch_normalization')
def batch_normalization(x, gamma, beta, eps=2e-5, running_mean=None, running_var=None,
                        decay=0.9, axis=None):
    """Normalize x with its own batch statistics: gamma (x - mu)/sqrt(var + eps) + beta.

    x: (N, C) or (N, C, H, W) (any ndim >= 2); gamma, beta: the shape of x
    without the averaged axes, (C,) by default (axis=None averages all axes
    but 1).  running_mean/running_var (arrays of gamma's shape), if given,
    are updated in place with the momentum `decay` (the variance unbiased by
    m/(m-1)).  gamma and beta may have another float dtype than x (Chainer
    v7's mixed precision, e.g. float16 x with float32 parameters): y has x's
    dtype, each gradient its variable's.  Returns y of x's shape.  Raises
    ValueError on mismatched shapes, TypeError for a non-float dtype.
    Follows chainer.functions.batch_normalization.
    """
    return BatchNormalizationFunction(eps, running_mean, running_var, decay, axis)(
        x, gamma, beta)


@_export('functions.normalization.batch_normalization')
class FixedBatchNormalization(Function):
    """Function node of fixed_batch_normalization: normalizes with a given
    mean and variance; all five inputs get gradients.
    Chainer: chainer.functions.normalization.batch_normalization.FixedBatchNormalization.
    """

    label = 'fixed_batch_normalization'

    def __init__(self, eps=2e-5, axis=None):
        self.eps = eps
        self.axis = axis

    def forward(self, inputs):
        x, gamma, beta, mean, var = inputs
        if any(a.dtype != x.dtype for a in inputs):     # Chainer v7's mixed precision
            gamma, beta, mean, var = _in_dtype_of(self, x, gamma, beta, mean, var)
        self.axis, expanded = _bn_axes(self.label, x, gamma, self.axis)
        for name, a in (('beta', beta), ('mean', mean), ('var', var)):
            if a.shape != gamma.shape:
                raise ValueError('fixed_batch_normalization: {}.shape {} != gamma.shape {}'
                                 .format(name, a.shape, gamma.shape))
        self.expanded = expanded
        self.inv_std = 1.0 / _xp(x).sqrt(var + x.dtype.type(self.eps))
        scale = (gamma * self.inv_std).reshape(expanded)
        y = x - mean.reshape(expanded)
        y *= scale
        y += beta.reshape(expanded)
        return y,

    def backward(self, inputs, grad_outputs):   # y = gamma (x - mean) inv_std + beta
        x, gamma, beta, mean, var = inputs
        gy, = grad_outputs
        x_hat = (x - mean.reshape(self.expanded)) * self.inv_std.reshape(self.expanded)
        gbeta = _sum_wide(gy, self.axis)            # (float16: summed in float32)
        ggamma = _sum_wide(gy * x_hat, self.axis)
        gx = gy * (gamma * self.inv_std).reshape(self.expanded)
        gmean = -gamma * self.inv_std * gbeta
        gvar = -0.5 * gamma * self.inv_std * self.inv_std * ggamma   # d inv_std/dvar = -inv_std^3/2
        return gx, ggamma.astype(x.dtype, copy=False), gbeta.astype(x.dtype, copy=False), \
            gmean.astype(x.dtype, copy=False), gvar.astype(x.dtype, copy=False)


@_export('functions', 'functions.normalization.batch_normalization')
def fixed_batch_normalization(x, gamma, beta, mean, var, eps=2e-5, axis=None):
    """Normalize x with given statistics: gamma (x - mean)/sqrt(var + eps) + beta.

    Shapes as in batch_normalization; mean and var have gamma's shape.  Used
    at test time with the running averages.  Returns y of x's shape.
    Follows chainer.functions.fixed_batch_normalization.
    """
    return FixedBatchNormalization(eps, axis)(x, gamma, beta, mean, var)


# ----- batch renormalization -----------------------------------------------------
# Batch normalization trains on batch statistics but tests on running ones;
# with small or correlated batches the two disagree.  Renormalization corrects
# the batch's x_hat towards what the running statistics would give:
#
#     sigma = sqrt(var + eps),  sigma_run = sqrt(running_var + eps)
#     r = clip(sigma / sigma_run, 1/rmax, rmax)
#     d = clip((mu - running_mean) / sigma_run, -dmax, dmax)
#     y = gamma (x_hat r + d) + beta
#
# r and d are treated as constants in backward (the paper's stop-gradient),
# so the gradient is batch normalization's with gamma r in place of gamma.
# rmax=1, dmax=0 gives r=1, d=0: plain batch normalization.

@_export('functions.normalization.batch_renormalization')
class BatchRenormalizationFunction(Function):
    """Function node of batch_renormalization: batch normalization corrected
    by r and d towards the running statistics (updated in place only when
    update_statistics).
    Chainer: chainer.functions.normalization.batch_renormalization.BatchRenormalizationFunction.
    """

    label = 'batch_renormalization'

    def __init__(self, eps, running_mean, running_var, decay, rmax, dmax, update_statistics):
        self.eps, self.decay, self.rmax, self.dmax = eps, decay, rmax, dmax
        self.running_mean, self.running_var = running_mean, running_var
        self.update_statistics = update_statistics

    def forward(self, inputs):
        x, gamma, beta = inputs
        _require_float(self.label, x)
        _check_same_dtype(self.label, (x, gamma, beta))
        if beta.shape != gamma.shape:
            raise ValueError('batch_renormalization: beta.shape {} != gamma.shape {}'
                             .format(beta.shape, gamma.shape))
        axis = (0,) + tuple(range(1 + gamma.ndim, x.ndim))   # gamma covers x.shape[1:1+M]
        self.axis, expanded = _bn_axes(self.label, x, gamma, axis)
        for name, a in (('running_mean', self.running_mean), ('running_var', self.running_var)):
            if a.shape != gamma.shape:
                raise ValueError('batch_renormalization: {}.shape {} != gamma.shape {}'
                                 .format(name, a.shape, gamma.shape))
        self.expanded = expanded
        xp = _xp(x)
        dtype = x.dtype.type
        mean = x.mean(axis=self.axis, keepdims=True)
        centered = x - mean
        var = (centered * centered).mean(axis=self.axis, keepdims=True)
        self.std = xp.sqrt(var + dtype(self.eps))
        running_std = xp.sqrt(self.running_var + dtype(self.eps)).reshape(expanded)
        self.r = xp.clip(self.std / running_std, dtype(1.0 / self.rmax), dtype(self.rmax))
        self.d = d = xp.clip((mean - self.running_mean.reshape(expanded)) / running_std,
                    dtype(-self.dmax), dtype(self.dmax))
        self.x_hat = centered / self.std
        y = self.x_hat * self.r
        y += d
        y *= gamma.reshape(expanded)
        y += beta.reshape(expanded)
        if self.update_statistics:       # after r and d used the old averages
            m = x.size // gamma.size
            self.running_mean *= self.decay
            self.running_mean += (1 - self.decay) * mean.reshape(gamma.shape)
            self.running_var *= self.decay
            self.running_var += ((1 - self.decay) * m / max(m - 1.0, 1.0)) * \
                var.reshape(gamma.shape)
        return y,

    def backward(self, inputs, grad_outputs):   # batch normalization's, gamma -> gamma r
        x, gamma, beta = inputs
        gy, = grad_outputs
        expanded = self.expanded
        m = x.dtype.type(x.size // gamma.size)
        gbeta = gy.sum(axis=self.axis)
        g_xhat = (gy * self.x_hat).sum(axis=self.axis, keepdims=True)
        # gamma's gradient is sum(gy (x_hat r + d)), with r and d per channel
        ggamma = (g_xhat * self.r + gbeta.reshape(expanded) * self.d).reshape(gamma.shape)
        gx = gy - (gbeta / m).reshape(expanded)
        gx -= self.x_hat * (g_xhat / m)
        gx *= gamma.reshape(expanded) * self.r / self.std
        return gx, ggamma, gbeta


@_export('functions', 'functions.normalization.batch_renormalization')
def batch_renormalization(x, gamma, beta, rmax, dmax, eps=2e-5, running_mean=None,
                          running_var=None, decay=0.9, update_statistics=False):
    """Batch renormalization: gamma (x_hat r + d) + beta, x_hat = (x - mu)/sigma.

    sigma = sqrt(var + eps) of the batch, sigma_run = sqrt(running_var + eps),
    r = clip(sigma / sigma_run, 1/rmax, rmax), d = clip((mu - running_mean) /
    sigma_run, -dmax, dmax); r and d get no gradient.  x: (N, C, ...);
    gamma, beta: x.shape[1:1+M] (M = gamma.ndim), averaging over the other
    axes.  running_mean, running_var (gamma's shape) are required; they are
    updated in place (momentum decay, variance made unbiased by m/(m-1))
    only when update_statistics=True.  Returns y of x's shape.  Raises
    TypeError without running_mean/running_var or on mixed or integer
    dtypes, ValueError on mismatched shapes.
    Chainer: chainer.functions.batch_renormalization.
    """
    if running_mean is None:
        raise TypeError('batch_renormalization: running_mean is required')
    if running_var is None:
        raise TypeError('batch_renormalization: running_var is required')
    running_mean = _input_data('batch_renormalization', running_mean)
    running_var = _input_data('batch_renormalization', running_var)
    return BatchRenormalizationFunction(eps, running_mean, running_var, decay, rmax, dmax,
                                        update_statistics)(x, gamma, beta)


@_export('functions', 'functions.normalization.batch_renormalization')
def fixed_batch_renormalization(x, gamma, beta, mean, var, eps=2e-5):
    """Test-time batch renormalization: gamma (x - mean)/sqrt(var + eps) + beta.

    The same as fixed_batch_normalization (r and d vanish with the running
    statistics), which Chainer v7 recommends instead; shapes as there.
    Returns y of x's shape.  Chainer: chainer.functions.fixed_batch_renormalization.
    """
    ndim = _input_data('fixed_batch_renormalization', x).ndim
    head = 1 + _input_data('fixed_batch_renormalization', gamma).ndim
    return fixed_batch_normalization(x, gamma, beta, mean, var, eps,
                                     axis=(0,) + tuple(range(head, ndim)))


# ----- layer and group normalization ---------------------------------------------
# batch_normalization averages each feature over the batch; these average
# each example over its own features instead (layer: all of them; group: the
# channels of one group and their pixels), so they act the same in training
# and at test time and need no running averages.  Both reduce to
# normalizing the rows of a matrix, whose gradient, with g = gy * gamma, is
#     gx = inv_std (g - mean(g) - x_hat mean(g x_hat))      (means along the row)
# the same as batch normalization's with rows in place of columns.

def _normalize_rows(x, eps):
    """x_hat = (x - mean) / sqrt(var + eps) for each row of the 2-d x, and the
    1 / sqrt(var + eps) of each row (shape (rows, 1))."""
    centered = x - x.mean(axis=1, keepdims=True)
    var = (centered * centered).mean(axis=1, keepdims=True)
    inv_std = 1.0 / _xp(x).sqrt(var + x.dtype.type(eps))
    return centered * inv_std, inv_std


def _normalize_rows_grad(g, x_hat, inv_std):
    return inv_std * (g - g.mean(axis=1, keepdims=True)
                      - x_hat * (g * x_hat).mean(axis=1, keepdims=True))


class LayerNormalizationFunction(Function):
    """Function node of y = gamma x_hat + beta, x_hat each row of x normalized
    to mean 0 and variance 1 (plus eps); backward as in the comment above.
    Chainer: chainer.functions.normalization.layer_normalization.LayerNormalization.
    """
    label = 'layer_normalization'
    input_names = ('x', 'gamma', 'beta')

    def __init__(self, eps=1e-5):
        self.eps = eps

    def forward(self, inputs):
        x, gamma, beta = inputs
        _require_float(self.label, x)
        _check_same_dtype(self.label, inputs)
        if x.ndim != 2 or gamma.shape != (x.shape[1],) or beta.shape != gamma.shape:
            raise ValueError('layer_normalization: x must be (N, D) and gamma, beta (D,); '
                             'got x.shape {}, gamma.shape {}, beta.shape {}'
                             .format(x.shape, gamma.shape, beta.shape))
        self.x_hat, self.inv_std = _normalize_rows(x, self.eps)
        return self.x_hat * gamma + beta,

    def backward(self, inputs, grad_outputs):
        x, gamma, beta = inputs
        gy, = grad_outputs
        gx = _normalize_rows_grad(gy * gamma, self.x_hat, self.inv_std)
        # over the batch, float16 in float32 (_sum_wide)
        return (gx, _sum_wide(gy * self.x_hat, 0).astype(gamma.dtype, copy=False),
                _sum_wide(gy, 0).astype(beta.dtype, copy=False))


class GroupNormalizationFunction(Function):
    """Function node of group normalization: the channels of x (N, C, ...)
    split into `groups`; each (example, group) block normalized to mean 0 and
    variance 1 (plus eps), then y = gamma[c] x_hat + beta[c].
    Chainer: chainer.functions.normalization.group_normalization.GroupNormalization.
    """
    label = 'group_normalization'
    input_names = ('x', 'gamma', 'beta')

    def __init__(self, groups, eps=1e-5):
        self.groups, self.eps = groups, eps

    def forward(self, inputs):
        x, gamma, beta = inputs
        _require_float(self.label, x)
        if not x.dtype == gamma.dtype == beta.dtype:    # Chainer v7's mixed precision
            gamma, beta = _in_dtype_of(self, x, gamma, beta)
        if x.ndim < 2 or gamma.shape != (x.shape[1],) or beta.shape != gamma.shape:
            raise ValueError('group_normalization: x must be (N, C, ...) and gamma, beta '
                             '(C,); got x.shape {}, gamma.shape {}, beta.shape {}'
                             .format(x.shape, gamma.shape, beta.shape))
        _check_group_count('group_normalization', x.shape, self.groups)
        n, c = x.shape[:2]
        x_hat, self.inv_std = _normalize_rows(x.reshape(n * self.groups, -1), self.eps)
        self.x_hat = x_hat.reshape(n, c, -1)       # channel axis back, pixels flat
        y = self.x_hat * gamma[:, None] + beta[:, None]
        return y.reshape(x.shape),

    def backward(self, inputs, grad_outputs):
        x, gamma, beta = inputs
        n, c = x.shape[:2]
        gy = grad_outputs[0].reshape(n, c, -1)
        g = (gy * gamma[:, None]).reshape(n * self.groups, -1)
        gx = _normalize_rows_grad(g, self.x_hat.reshape(n * self.groups, -1), self.inv_std)
        return (gx.reshape(x.shape),                # float16 sums in float32 (_sum_wide)
                _sum_wide(gy * self.x_hat, (0, 2)).astype(gamma.dtype, copy=False),
                _sum_wide(gy, (0, 2)).astype(beta.dtype, copy=False))


def _check_group_count(label, shape, groups):
    _positive_int(label, 'groups', groups)
    if len(shape) < 2 or shape[1] % groups:
        raise ValueError('{}: the channel count x.shape[1] must be divisible by groups {}; '
                         'got x.shape {}'.format(label, groups, shape))


@_export('functions', 'functions.normalization.layer_normalization')
def layer_normalization(x, gamma, beta, eps=1e-5):
    """Layer normalization: each row of x normalized by its own mean and
    variance, then scaled and shifted: y = gamma (x - mu) / sqrt(var + eps) + beta.

    x: float (N, D); gamma, beta: (D,), x's dtype; eps default 1e-5.  All
    three get gradients.  Returns a Variable of shape (N, D).  Raises
    ValueError on other shapes, TypeError for integer x or mixed dtypes.
    Chainer: chainer.functions.layer_normalization.
    """
    return LayerNormalizationFunction(eps)(x, gamma, beta)


@_export('functions', 'functions.normalization.group_normalization')
def group_normalization(x, groups, gamma, beta, eps=1e-5):
    """Group normalization: the C channels of x split into `groups` groups of
    C / groups; each group of each example normalized by its own mean and
    variance (over its channels and all their pixels), then
    y[:, c] = gamma[c] x_hat[:, c] + beta[c].

    x: float (N, C, ...); groups: a positive int dividing C; gamma, beta:
    (C,), x's dtype; eps default 1e-5.  Returns a Variable of x's shape.
    Raises ValueError when C is not divisible by groups or shapes do not fit,
    TypeError for a non-int groups, integer x or mixed dtypes.
    Chainer: chainer.functions.group_normalization.
    """
    return GroupNormalizationFunction(groups, eps)(x, gamma, beta)


# ----- local response normalization, resizing and shifting images -------------------
# LRN (AlexNet) divides each channel by the energy of its neighbours; resizing
# is a fixed linear map per axis, so one matrix for rows and one for columns
# carry both the forward and (transposed) the backward; shift only moves pixels.

def _channel_window_sum(a, half):
    """sum of a over channels c - half .. c + half (axis 1), clipped at the ends."""
    total = a.copy()
    for i in range(1, half + 1):
        total[:, i:] += a[:, :-i]
        total[:, :-i] += a[:, i:]
    return total


@_export('functions.normalization.local_response_normalization')
class LocalResponseNormalization(Function):
    """Function node of y = x * s**-beta, s = k + alpha * (sum of x**2 over
    the channels within n // 2 of each channel).  Backward:
    gy * s**-beta - 2 alpha beta x * (window sum of y gy / s).
    Chainer: chainer.functions.normalization.local_response_normalization.
    """
    label = 'local_response_normalization'

    def __init__(self, n, k, alpha, beta):
        self.n, self.k, self.alpha, self.beta = n, k, alpha, beta

    def forward(self, inputs):
        x, = inputs
        _require_float('local_response_normalization', x)
        if x.ndim < 2:
            raise ValueError('local_response_normalization: x needs 2 or more dimensions '
                             '(N, C, ...), got shape {}'.format(x.shape))
        dtype = x.dtype.type
        self.s = dtype(self.k) + dtype(self.alpha) * _channel_window_sum(x * x, self.n // 2)
        self.scale = self.s ** dtype(-self.beta)
        self.y = x * self.scale
        return self.y,

    def backward(self, inputs, grad_outputs):      # x_c enters its own y and its neighbours' s
        x, = inputs
        gy, = grad_outputs
        dtype = x.dtype.type
        around = _channel_window_sum(self.y * gy / self.s, self.n // 2)
        return gy * self.scale - dtype(2 * self.alpha * self.beta) * x * around,


@_export('functions', 'functions.normalization.local_response_normalization')
def local_response_normalization(x, n=5, k=2, alpha=1e-4, beta=.75):
    """Local response normalization across channels (AlexNet):
    y = x / (k + alpha * sum_{|c' - c| <= n // 2} x_c'^2) ** beta.

    x: float Variable or array (N, C, ...); n (default 5) the window of
    channels, k (default 2), alpha (default 1e-4), beta (default 0.75).
    Returns a Variable of x's shape. Raises ValueError for fewer than 2
    dimensions, TypeError for integer x.
    Chainer: chainer.functions.local_response_normalization.
    """
    return LocalResponseNormalization(n, k, alpha, beta)(x)


def _resize_matrix(xp, out_size, in_size, mode, align_corners, dtype):
    """(out_size, in_size) matrix taking a line of in_size pixels to out_size:
    each row holds the weights (1 - w, w) of the two nearest source pixels
    (bilinear), or one 1 (nearest)."""
    rows = np.arange(out_size)
    if mode == 'nearest':
        low = np.minimum(np.floor(rows * (in_size / out_size)), in_size - 1)
        weight = np.zeros(out_size)
    else:
        if align_corners:
            position = np.linspace(0, in_size - 1, num=out_size)
        else:           # pixel centres: output centre i sits at (i + 0.5) * in / out - 0.5
            position = np.maximum((rows + 0.5) * (in_size / out_size) - 0.5, 0)
        weight, low = np.modf(position)
    low = low.astype(np.intp)
    high = np.minimum(low + 1, in_size - 1)
    matrix = np.zeros((out_size, in_size))
    matrix[rows, low] += 1 - weight
    matrix[rows, high] += weight
    return xp.asarray(matrix.astype(dtype))


@_export('functions.array.resize_images')
class ResizeImages(Function):
    """Function node of y = R_h x R_w^T on each image (R_h, R_w the resize
    matrices of the two axes); backward R_h^T gy R_w.
    Chainer: chainer.functions.array.resize_images.ResizeImages.
    """
    label = 'resize_images'

    def __init__(self, output_shape, mode, align_corners):
        self.output_shape, self.mode, self.align_corners = output_shape, mode, align_corners

    def forward(self, inputs):
        x, = inputs
        _require_float('resize_images', x)
        if x.ndim != 4:
            raise ValueError('resize_images: x must be (N, C, H, W), got shape {}'
                             .format(x.shape))
        xp = _xp(x)
        self.rows, self.cols = [
            _resize_matrix(xp, out, size, self.mode, self.align_corners, x.dtype)
            for out, size in zip(self.output_shape, x.shape[2:])]
        return xp.einsum('ph,nchw,qw->ncpq', self.rows, x, self.cols),

    def backward(self, inputs, grad_outputs):      # a linear map: its transpose
        return _xp(inputs[0]).einsum('ph,ncpq,qw->nchw', self.rows, grad_outputs[0],
                                     self.cols),


@_export('functions', 'functions.array.resize_images')
def resize_images(x, output_shape, *, mode='bilinear', align_corners=True):
    """Images resized to output_shape = (out_H, out_W).

    x: float Variable or array (N, C, H, W). mode: 'bilinear' (default; each
    output pixel mixes its four nearest input pixels) or 'nearest' (input
    pixel floor(i * H / out_H)). align_corners (default True): corner pixels
    map onto corner pixels (source position i * (H - 1) / (out_H - 1));
    False maps pixel centres ((i + 0.5) * H / out_H - 0.5, clipped at 0).
    Returns a Variable (N, C, out_H, out_W). Raises ValueError for another
    mode, shape or output_shape, TypeError for integer x. Chainer: chainer.
    functions.resize_images (which takes float32 only; float64 works here).
    """
    if mode not in ('bilinear', 'nearest'):
        raise ValueError("resize_images: mode must be 'bilinear' or 'nearest', got {!r}"
                         .format(mode))
    output_shape = tuple(output_shape)
    if len(output_shape) != 2 or not all(
            isinstance(n, (int, np.integer)) and n > 0 for n in output_shape):
        raise ValueError('resize_images: output_shape must be two positive ints, got {}'
                         .format(output_shape))
    return ResizeImages(output_shape, mode, align_corners)(x)


def _shift_groups(src, kh, kw, dy, dx):
    """Each channel group of src moved by its own offset of the kh x kw
    grid (times dilate), zeros coming in; the centre offset (0, 0) goes to
    the last group, which also takes the channels left over."""
    y = _xp(src).zeros_like(src)
    groups = kh * kw
    size = src.shape[1] // groups
    height, width = src.shape[2:]
    for i in range(groups):
        g = {(groups - 1) // 2: groups - 1, groups - 1: (groups - 1) // 2}.get(i, i)
        sy, sx = (g // kw - kh // 2) * dy, (g % kw - kw // 2) * dx
        channels = slice(i * size, (i + 1) * size if i < groups - 1 else None)
        rows_out = slice(max(sy, 0), height + min(sy, 0))
        rows_in = slice(max(-sy, 0), height + min(-sy, 0))
        cols_out = slice(max(sx, 0), width + min(sx, 0))
        cols_in = slice(max(-sx, 0), width + min(-sx, 0))
        y[:, channels, rows_out, cols_out] = src[:, channels, rows_in, cols_in]
    return y


@_export('functions.connection.shift')
class Shift(Function):
    """Function node of the shift operation: channel group g moved by
    offset g of a kh x kw grid (times dilate); backward moves gy back by
    the opposite offsets. Chainer: chainer.functions.connection.shift.Shift.
    """
    label = 'shift'

    def __init__(self, kh, kw, dy, dx):
        self.kh, self.kw, self.dy, self.dx = kh, kw, dy, dx

    def forward(self, inputs):
        x, = inputs
        _require_float('shift', x)
        if x.ndim != 4 or x.shape[1] < self.kh * self.kw:
            raise ValueError('shift: x must be (N, C, H, W) with C >= kh * kw = {}, got '
                             'shape {}'.format(self.kh * self.kw, x.shape))
        return _shift_groups(x, self.kh, self.kw, self.dy, self.dx),

    def backward(self, inputs, grad_outputs):      # a move: move the gradient back
        return _shift_groups(grad_outputs[0], self.kh, self.kw, -self.dy, -self.dx),


@_export('functions', 'functions.connection.shift')
def shift(x, ksize=3, dilate=1):
    """Shift (Wu et al. 2017), a zero-parameter stand-in for a spatial
    convolution: the channels of x (N, C, H, W) are split into kh * kw
    groups (C // (kh kw) channels each, the rest joining the last), and
    group g is moved by ((g // kw - kh // 2) dy, (g % kw - kw // 2) dx)
    pixels, zeros filling in, except that the unmoved centre offset goes to
    the last group (and the last offset to the middle group). ksize
    (default 3) and dilate (default 1): ints or pairs; ksize must be odd.
    Returns a Variable of x's shape. Raises ValueError for an even ksize,
    x not 4-d or C < kh * kw, TypeError for integer x.
    Chainer: chainer.functions.shift.
    """
    kh, kw = ksize if isinstance(ksize, (tuple, list)) else (ksize, ksize)
    dy, dx = dilate if isinstance(dilate, (tuple, list)) else (dilate, dilate)
    if kh % 2 != 1 or kw % 2 != 1:
        raise ValueError('shift: ksize must be odd, got {}'.format(ksize))
    return Shift(kh, kw, dy, dx)(x)


# ----- the links -----------------------------------------------------------------

@_export('links', 'links.connection.convolution_2d')
class Convolution2D(Link):
    """A convolution layer: owns W (out_channels, in_channels / groups, kh, kw) and b.

    Convolution2D(in_channels, out_channels, ksize, stride=1, pad=0, ...), or
    the short form Convolution2D(out_channels, ksize), or in_channels=None:
    in_channels is then read from the first input.  W starts LeCunNormal, b
    zero (nobias=True: no b).  Calling it on x (N, C, H, W) returns
    F.convolution_2d(x, W, b, stride, pad, dilate=dilate, groups=groups).
    Raises ValueError when in_channels or out_channels does not divide by
    groups.  Follows chainer.links.Convolution2D.
    """

    def __init__(self, in_channels, out_channels, ksize=None, stride=1, pad=0,
                 nobias=False, initialW=None, initial_bias=None, *, dilate=1, groups=1):
        super().__init__()
        if ksize is None:                      # the short form (out_channels, ksize)
            in_channels, out_channels, ksize = None, in_channels, out_channels
        label = type(self).__name__
        self.ksize = _pair(ksize, 'ksize', label)
        self.stride = _pair(stride, 'stride', label)
        self.pad = _pair(pad, 'pad', label)
        self.dilate = _pair(dilate, 'dilate', label)
        self.groups = _positive_int(label, 'groups', groups)
        _check_link_groups(label, out_channels, self.groups, 'out_channels')
        self.in_channels, self.out_channels = in_channels, out_channels
        with self.init_scope():
            self.W = Parameter(_get_initializer(initialW, LeCunNormal()))
            if in_channels is not None:
                self._initialize_params(in_channels, np)
            self.b = None if nobias else Parameter(
                _get_initializer(initial_bias, Zero()), out_channels)

    def _initialize_params(self, in_channels, xp):
        _check_link_groups(type(self).__name__, in_channels, self.groups, 'in_channels')
        self.in_channels = in_channels
        self.W.initialize((self.out_channels, in_channels // self.groups) + self.ksize, xp)

    def forward(self, x):
        if self.W.data is None:
            data = _input_data(type(self).__name__, x)
            # Check before W takes its shape, so a bad first call changes nothing.
            _check_image('convolution_2d', data.shape, self.ksize, self.stride, self.pad,
                         dilate=self.dilate)
            self._initialize_params(data.shape[1], _xp(data))
        return convolution_2d(x, self.W, self.b, self.stride, self.pad, dilate=self.dilate,
                              groups=self.groups)


def _check_link_groups(label, channels, groups, what):
    if channels is not None and channels % groups:
        raise ValueError('{}: {} ({}) must divide by groups ({})'
                         .format(label, what, channels, groups))


@_export('links', 'links.connection.dilated_convolution_2d')
class DilatedConvolution2D(Convolution2D):
    """A dilated convolution layer: Convolution2D with the taps `dilate` apart.

    DilatedConvolution2D(in_channels, out_channels, ksize=None, stride=1,
    pad=0, dilate=1, nobias=False, initialW=None, initial_bias=None) (note
    dilate's place: fifth, as in Chainer), or the short form
    (out_channels, ksize).  W: (out_channels, in_channels, kh, kw), LeCunNormal;
    b zero.  Calling it returns F.dilated_convolution_2d(x, W, b, stride,
    pad, dilate).  Follows chainer.links.DilatedConvolution2D.
    """

    def __init__(self, in_channels, out_channels, ksize=None, stride=1, pad=0, dilate=1,
                 nobias=False, initialW=None, initial_bias=None):
        super().__init__(in_channels, out_channels, ksize, stride, pad, nobias, initialW,
                         initial_bias, dilate=dilate)


@_export('links', 'links.connection.depthwise_convolution_2d')
class DepthwiseConvolution2D(Link):
    """A depthwise convolution layer: channel_multiplier filters per input channel.

    W: (channel_multiplier, in_channels, kh, kw), drawn from HeNormal with
    scale 1/sqrt(2) (Chainer's default); b: (in_channels *
    channel_multiplier,) zero (nobias=True: none).  in_channels=None reads
    it from the first input (W and b wait until then).  Calling it on x
    (N, in_channels, H, W) returns F.depthwise_convolution_2d(x, W, b,
    stride, pad).  Follows chainer.links.DepthwiseConvolution2D.
    """

    def __init__(self, in_channels, channel_multiplier, ksize, stride=1, pad=0,
                 nobias=False, initialW=None, initial_bias=None):
        super().__init__()
        label = 'DepthwiseConvolution2D'
        self.ksize = _pair(ksize, 'ksize', label)
        self.stride = _pair(stride, 'stride', label)
        self.pad = _pair(pad, 'pad', label)
        self.channel_multiplier = channel_multiplier
        self.nobias = nobias
        with self.init_scope():
            self.W = Parameter(_get_initializer(initialW, HeNormal(1 / math.sqrt(2))))
            self.b = None if nobias else Parameter(_get_initializer(initial_bias, Zero()))
        if in_channels is not None:
            self._initialize_params(in_channels, np)

    def _initialize_params(self, in_channels, xp):
        self.W.initialize((self.channel_multiplier, in_channels) + self.ksize, xp)
        if self.b is not None:
            self.b.initialize(self.channel_multiplier * in_channels, xp)

    def forward(self, x):
        if self.W.data is None:
            data = _input_data('DepthwiseConvolution2D', x)
            _check_image('depthwise_convolution_2d', data.shape, self.ksize, self.stride,
                         self.pad)
            self._initialize_params(data.shape[1], _xp(data))
        return depthwise_convolution_2d(x, self.W, self.b, self.stride, self.pad)


@_export('links', 'links.connection.deconvolution_2d')
class Deconvolution2D(Link):
    """A transposed convolution layer: owns W (in_channels, out_channels / groups, kh, kw) and b.

    Deconvolution2D(in_channels, out_channels, ksize, stride=1, pad=0,
    nobias=False, outsize=None, ...), the short form (out_channels, ksize),
    or in_channels=None, read from the first input.  W starts LeCunNormal
    (its fan-in is out_channels / groups * kh * kw, W's axes after the
    first), b zero.  Calling it on x returns F.deconvolution_2d(x, W, b,
    stride, pad, outsize, dilate=dilate, groups=groups).  Raises ValueError
    when in_channels or out_channels does not divide by groups.
    Follows chainer.links.Deconvolution2D.
    """

    def __init__(self, in_channels, out_channels, ksize=None, stride=1, pad=0,
                 nobias=False, outsize=None, initialW=None, initial_bias=None, *,
                 dilate=1, groups=1):
        super().__init__()
        if ksize is None:                      # the short form (out_channels, ksize)
            in_channels, out_channels, ksize = None, in_channels, out_channels
        label = 'Deconvolution2D'
        self.ksize = _pair(ksize, 'ksize', label)
        self.stride = _pair(stride, 'stride', label)
        self.pad = _pair(pad, 'pad', label)
        self.dilate = _pair(dilate, 'dilate', label)
        self.outsize = None if outsize is None else _pair(outsize, 'outsize', label)
        self.groups = _positive_int(label, 'groups', groups)
        _check_link_groups(label, out_channels, self.groups, 'out_channels')
        self.in_channels, self.out_channels = in_channels, out_channels
        with self.init_scope():
            self.W = Parameter(_get_initializer(initialW, LeCunNormal()))
            if in_channels is not None:
                self._initialize_params(in_channels, np)
            self.b = None if nobias else Parameter(
                _get_initializer(initial_bias, Zero()), out_channels)

    def _initialize_params(self, in_channels, xp):
        _check_link_groups('Deconvolution2D', in_channels, self.groups, 'in_channels')
        self.in_channels = in_channels
        self.W.initialize((in_channels, self.out_channels // self.groups) + self.ksize, xp)

    def forward(self, x):
        if self.W.data is None:
            data = _input_data('Deconvolution2D', x)
            if data.ndim != 4:
                raise ValueError('Deconvolution2D: x must be 4-D (batch, channels, height, '
                                 'width), got shape {}'.format(data.shape))
            self._initialize_params(data.shape[1], _xp(data))
        return deconvolution_2d(x, self.W, self.b, self.stride, self.pad, self.outsize,
                                dilate=self.dilate, groups=self.groups)


@_export('links', 'links.connection.convolution_nd')
class ConvolutionND(Link):
    """An N-dimensional convolution layer: owns W (out_channels, in_channels / groups, k1..kd) and b.

    ConvolutionND(ndim, in_channels, out_channels, ksize=None, stride=1,
    pad=0, nobias=False, initialW=None, initial_bias=None, cover_all=False,
    dilate=1, groups=1), or the short form (ndim, out_channels, ksize), or
    in_channels=None, read from the first input.  ksize, stride, pad,
    dilate: an int or ndim ints.  W starts LeCunNormal, b zero (nobias=True:
    none); saved keys W, b.  Calling it on x (N, C, s1..sd) returns
    F.convolution_nd(x, W, b, stride, pad, cover_all, dilate, groups).
    Raises ValueError when a channel count does not divide by groups.
    Chainer: chainer.links.ConvolutionND.
    """

    def __init__(self, ndim, in_channels, out_channels, ksize=None, stride=1, pad=0,
                 nobias=False, initialW=None, initial_bias=None, cover_all=False, dilate=1,
                 groups=1):
        super().__init__()
        if ksize is None:                      # the short form (ndim, out_channels, ksize)
            in_channels, out_channels, ksize = None, in_channels, out_channels
        label = type(self).__name__
        self.ndim = ndim
        self.ksize = _ntuple(ksize, ndim, 'ksize', label)
        self.stride = _ntuple(stride, ndim, 'stride', label)
        self.pad = _ntuple(pad, ndim, 'pad', label)
        self.dilate = _ntuple(dilate, ndim, 'dilate', label)
        self.cover_all = cover_all
        self.groups = _positive_int(label, 'groups', groups)
        _check_link_groups(label, out_channels, self.groups, 'out_channels')
        self.in_channels, self.out_channels = in_channels, out_channels
        with self.init_scope():
            self.W = Parameter(_get_initializer(initialW, LeCunNormal()))
            if in_channels is not None:
                self._initialize_params(in_channels, np)
            self.b = None if nobias else Parameter(
                _get_initializer(initial_bias, Zero()), out_channels)

    def _initialize_params(self, in_channels, xp):
        _check_link_groups(type(self).__name__, in_channels, self.groups, 'in_channels')
        self.in_channels = in_channels
        self.W.initialize((self.out_channels, in_channels // self.groups) + self.ksize, xp)

    def forward(self, x):
        if self.W.data is None:
            data = _input_data(type(self).__name__, x)
            # Check before W takes its shape, so a bad first call changes nothing.
            _spatial_ndim(type(self).__name__, data, self.ndim)
            _check_volume('convolution_nd', data.shape, self.ksize, self.stride, self.pad,
                          self.cover_all, self.dilate)
            self._initialize_params(data.shape[1], _xp(data))
        return convolution_nd(x, self.W, self.b, self.stride, self.pad, self.cover_all,
                              self.dilate, self.groups)


@_export('links', 'links.connection.convolution_nd')
class Convolution1D(ConvolutionND):
    """ConvolutionND with ndim=1: W (out_channels, in_channels / groups, k).

    Convolution1D(in_channels, out_channels, ksize, stride=1, pad=0, ...)
    with ConvolutionND's other arguments.  Chainer: chainer.links.Convolution1D.
    """

    def __init__(self, in_channels, out_channels, ksize, stride=1, pad=0, nobias=False,
                 initialW=None, initial_bias=None, cover_all=False, dilate=1, groups=1):
        super().__init__(1, in_channels, out_channels, ksize, stride, pad, nobias, initialW,
                         initial_bias, cover_all, dilate, groups)


@_export('links', 'links.connection.convolution_nd')
class Convolution3D(ConvolutionND):
    """ConvolutionND with ndim=3: W (out_channels, in_channels / groups, kd, kh, kw).

    Convolution3D(in_channels, out_channels, ksize, stride=1, pad=0, ...)
    with ConvolutionND's other arguments.  Chainer: chainer.links.Convolution3D.
    """

    def __init__(self, in_channels, out_channels, ksize, stride=1, pad=0, nobias=False,
                 initialW=None, initial_bias=None, cover_all=False, dilate=1, groups=1):
        super().__init__(3, in_channels, out_channels, ksize, stride, pad, nobias, initialW,
                         initial_bias, cover_all, dilate, groups)


@_export('links', 'links.normalization.batch_normalization')
class BatchNormalization(Link):
    """Batch normalization with learned gamma, beta and running statistics.

    size: the channel count (int or shape), or None with `axis` given, to
    read it from the first input.  In config.train it normalizes with the
    batch's statistics and updates the persistents avg_mean/avg_var
    (momentum decay; finetune=True averages all batches seen, counting them
    in N); otherwise it uses avg_mean/avg_var.  gamma starts at 1 and beta
    at 0 (initial_gamma, initial_beta; use_gamma/use_beta=False fixes them).
    Saved keys: gamma, beta, avg_mean, avg_var, N, as in Chainer.  Follows
    chainer.links.BatchNormalization.
    """

    def __init__(self, size=None, decay=0.9, eps=2e-5, dtype=None, use_gamma=True,
                 use_beta=True, initial_gamma=None, initial_beta=None, axis=None,
                 initial_avg_mean=None, initial_avg_var=None):
        super().__init__()
        if size is None and axis is None:
            raise ValueError('BatchNormalization: give size, or axis to read the size '
                             'from the first input')
        self.decay, self.eps = decay, eps
        self.axis = (axis,) if isinstance(axis, (int, np.integer)) else axis
        self._dtype = np.dtype(dtype or config.dtype)
        self._initial_avg = (initial_avg_mean, initial_avg_var)
        self.add_persistent('N', 0)
        with self.init_scope():
            self.gamma = self.beta = None
            for name, use, initial, default in (('gamma', use_gamma, initial_gamma, One()),
                                                ('beta', use_beta, initial_beta, Zero())):
                if use:
                    initializer = _get_initializer(initial, default)
                    setattr(self, name, Parameter(_BNInitializer(initializer, self._dtype)))
        self.add_persistent('avg_mean', None)
        self.add_persistent('avg_var', None)
        if size is not None:
            self._initialize_params(size, np)

    def _initialize_params(self, shape, xp):
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        for name, initial, default in (('avg_mean', self._initial_avg[0], Zero()),
                                       ('avg_var', self._initial_avg[1], One())):
            array = generate_array(_get_initializer(initial, default), shape, xp, self._dtype)
            object.__setattr__(self, name, array)
        for param in (self.gamma, self.beta):
            if param is not None:
                param.initialize(shape, xp)

    def forward(self, x, finetune=False):
        data = _input_data('BatchNormalization', x)
        if self.avg_mean is None:
            if any(not -data.ndim <= a < data.ndim for a in self.axis):
                raise ValueError('BatchNormalization: axis {} does not fit x.shape {}'
                                 .format(self.axis, data.shape))
            kept = tuple(d for i, d in enumerate(data.shape)
                         if i not in [a % data.ndim for a in self.axis])
            self._initialize_params(kept, _xp(data))
        xp = _xp(self.avg_mean)
        gamma = self.gamma if self.gamma is not None else xp.ones_like(self.avg_mean)
        beta = self.beta if self.beta is not None else xp.zeros_like(self.avg_mean)
        if config.train:
            if finetune:
                self.N += 1
                decay = 1.0 - 1.0 / self.N
            else:
                decay = self.decay
            return batch_normalization(x, gamma, beta, self.eps, self.avg_mean,
                                       self.avg_var, decay, self.axis)
        return fixed_batch_normalization(x, gamma, beta, self.avg_mean, self.avg_var,
                                         self.eps, self.axis)

    def start_finetuning(self):
        """Restart the count of finetune batches (N)."""
        self.N = 0


@_export('links', 'links.normalization.batch_renormalization')
class BatchRenormalization(BatchNormalization):
    """Batch renormalization with learned gamma, beta and running statistics.

    BatchRenormalization(size, rmax=1, dmax=0, decay=0.9, eps=2e-5,
    dtype=None, use_gamma=True, use_beta=True, initial_gamma=None,
    initial_beta=None, initial_avg_mean=None, initial_avg_var=None).
    size: the channel count (int or shape).  In config.train it calls
    F.batch_renormalization with avg_mean/avg_var, updating them (momentum
    decay; finetune=True averages all batches, counting them in N);
    otherwise F.fixed_batch_normalization with them.  rmax and dmax bound
    the corrections r and d (the defaults make it batch normalization).
    Saved keys: gamma, beta, avg_mean, avg_var, N, as BatchNormalization.
    Chainer: chainer.links.BatchRenormalization.
    """

    def __init__(self, size, rmax=1, dmax=0, decay=0.9, eps=2e-5, dtype=None,
                 use_gamma=True, use_beta=True, initial_gamma=None, initial_beta=None,
                 initial_avg_mean=None, initial_avg_var=None):
        if size is None:
            raise ValueError('BatchRenormalization: size is required (the channel count)')
        super().__init__(size, decay, eps, dtype, use_gamma, use_beta, initial_gamma,
                         initial_beta, initial_avg_mean=initial_avg_mean,
                         initial_avg_var=initial_avg_var)
        self.rmax, self.dmax = rmax, dmax

    def forward(self, x, finetune=False):
        xp = _xp(self.avg_mean)
        gamma = self.gamma if self.gamma is not None else xp.ones_like(self.avg_mean)
        beta = self.beta if self.beta is not None else xp.zeros_like(self.avg_mean)
        if not config.train:
            return fixed_batch_renormalization(x, gamma, beta, self.avg_mean, self.avg_var,
                                               self.eps)
        if finetune:
            self.N += 1
            decay = 1.0 - 1.0 / self.N
        else:
            decay = self.decay
        return batch_renormalization(x, gamma, beta, self.rmax, self.dmax, self.eps,
                                     self.avg_mean, self.avg_var, decay,
                                     update_statistics=True)


# ----- network-in-network and inception blocks: chains of convolutions ---------------

@_export('links', 'links.connection.mlp_convolution_2d')
class MLPConvolution2D(ChainList):
    """Network-in-network "mlpconv": a convolution followed by 1x1
    convolutions, i.e. a small MLP applied at every pixel.

    MLPConvolution2D(in_channels, out_channels, ksize=None, stride=1, pad=0,
    activation=relu, *, conv_init=None, bias_init=None).  out_channels: a
    non-empty sequence of channel counts; the first Convolution2D has
    ksize/stride/pad, the rest are 1x1.  MLPConvolution2D(out_channels,
    ksize) (ksize None) takes in_channels from the first input.  Calling it:
    activation between the convolutions, none after the last.  Saved keys:
    0/W, 0/b, 1/W, ...  Raises ValueError on an empty out_channels.
    Chainer: chainer.links.MLPConvolution2D.
    """

    def __init__(self, in_channels, out_channels, ksize=None, stride=1, pad=0,
                 activation=relu, *, conv_init=None, bias_init=None):
        if ksize is None:          # MLPConvolution2D(out_channels, ksize)
            in_channels, out_channels, ksize = None, in_channels, out_channels
        out_channels = list(out_channels)
        if not out_channels:
            raise ValueError('MLPConvolution2D: out_channels must name at least one '
                             'convolution, got {}'.format(out_channels))
        convs = [Convolution2D(in_channels, out_channels[0], ksize, stride, pad,
                               initialW=conv_init, initial_bias=bias_init)]
        convs += [Convolution2D(n_in, n_out, 1, initialW=conv_init, initial_bias=bias_init)
                  for n_in, n_out in zip(out_channels, out_channels[1:])]
        super().__init__(*convs)
        self.activation = activation

    def forward(self, x):
        """activation between the convolutions. Chainer: MLPConvolution2D.forward."""
        for conv in self[:-1]:
            x = self.activation(conv(x))
        return self[-1](x)


@_export('links', 'links.connection.inception')
class Inception(Chain):
    """The GoogLeNet inception block: four branches side by side, their
    outputs concatenated along the channels and passed through relu:

        conv1(x),  conv3(relu(proj3(x))),  conv5(relu(proj5(x))),
        projp(max_pooling_2d(x, 3, stride=1, pad=1))

    Inception(in_channels, out1, proj3, out3, proj5, out5, proj_pool,
    conv_init=None, bias_init=None): conv1, proj3, proj5, projp are 1x1,
    conv3 3x3 (pad 1), conv5 5x5 (pad 2), so x (N, in_channels, H, W) gives
    (N, out1 + out3 + out5 + proj_pool, H, W).  Saved keys: conv1/W, conv1/b,
    proj3/..., conv3/..., proj5/..., conv5/..., projp/...
    Chainer: chainer.links.Inception.
    """

    def __init__(self, in_channels, out1, proj3, out3, proj5, out5, proj_pool,
                 conv_init=None, bias_init=None):
        super().__init__()
        init = dict(initialW=conv_init, initial_bias=bias_init)
        with self.init_scope():
            self.conv1 = Convolution2D(in_channels, out1, 1, **init)
            self.proj3 = Convolution2D(in_channels, proj3, 1, **init)
            self.conv3 = Convolution2D(proj3, out3, 3, pad=1, **init)
            self.proj5 = Convolution2D(in_channels, proj5, 1, **init)
            self.conv5 = Convolution2D(proj5, out5, 5, pad=2, **init)
            self.projp = Convolution2D(in_channels, proj_pool, 1, **init)

    def forward(self, x):
        """relu(concat of the four branches). Chainer: Inception.forward."""
        branches = (self.conv1(x), self.conv3(relu(self.proj3(x))),
                    self.conv5(relu(self.proj5(x))),
                    self.projp(max_pooling_2d(x, 3, stride=1, pad=1)))
        return relu(concat(branches, axis=1))


@_export('links', 'links.connection.inceptionbn')
class InceptionBN(Chain):
    """The inception block of GoogLeNet with batch normalization (Ioffe &
    Szegedy 2015): every convolution is followed by BatchNormalization and
    relu, the 5x5 branch becomes two 3x3 convolutions, and the pooling is
    max or average:

        [relu(bn(conv1(x)))]                      (only when out1 > 0)
        relu(bn(conv3(relu(bn(proj3(x))))))
        relu(bn(conv33b(relu(bn(conv33a(relu(bn(proj33(x)))))))))
        pool(x, 3, stride, pad=1)  [-> relu(bn(poolp(.)))  when proj_pool]

    concatenated along the channels (no relu after the concat, unlike
    Inception).  InceptionBN(in_channels, out1, proj3, out3, proj33, out33,
    pooltype, proj_pool=None, stride=1, conv_init=None, dtype=None):
    pooltype 'max' (max_pooling_2d, cover_all=False) or 'avg'; `stride` is
    that of the last convolution of each branch and of the pooling, so a
    stride-2 block halves H and W (it must have out1 == 0).  The convolutions
    have no bias (the batch normalization's beta plays its part); dtype is
    the normalizations' (default config.dtype).  x (N, in_channels, H, W) ->
    (N, out1 + out3 + out33 + (proj_pool or in_channels), H', W').
    Saved keys: conv1, proj3, conv3, proj33, conv33a, conv33b, poolp (W) and
    conv1n, proj3n, conv3n, proj33n, conv33an, conv33bn, poolpn (gamma, beta,
    avg_mean, avg_var, N).  Raises NotImplementedError for another pooltype,
    ValueError for out1 > 0 with stride != 1 or without proj_pool.
    Chainer: chainer.links.InceptionBN.
    """

    def __init__(self, in_channels, out1, proj3, out3, proj33, out33, pooltype,
                 proj_pool=None, stride=1, conv_init=None, dtype=None):
        super().__init__()
        if pooltype not in ('max', 'avg'):
            raise NotImplementedError("InceptionBN: pooltype must be 'max' or 'avg', got {!r}"
                                      .format(pooltype))
        if out1 > 0 and (stride != 1 or proj_pool is None):
            raise ValueError('InceptionBN: a 1x1 branch (out1={}) needs stride 1 and a '
                             'proj_pool, got stride={}, proj_pool={}'.format(out1, stride, proj_pool))
        self.out1, self.proj_pool, self.stride, self.pooltype = out1, proj_pool, stride, pooltype
        dtype = get_dtype(dtype)

        def conv(n_in, n_out, ksize, stride=1):
            return Convolution2D(n_in, n_out, ksize, stride=stride, pad=ksize // 2,
                                 nobias=True, initialW=conv_init)

        with self.init_scope():
            self.proj3, self.proj3n = conv(in_channels, proj3, 1), BatchNormalization(proj3, dtype=dtype)
            self.conv3, self.conv3n = conv(proj3, out3, 3, stride), BatchNormalization(out3, dtype=dtype)
            self.proj33 = conv(in_channels, proj33, 1)
            self.proj33n = BatchNormalization(proj33, dtype=dtype)
            self.conv33a, self.conv33an = conv(proj33, out33, 3), BatchNormalization(out33, dtype=dtype)
            self.conv33b = conv(out33, out33, 3, stride)
            self.conv33bn = BatchNormalization(out33, dtype=dtype)
            if out1 > 0:
                self.conv1, self.conv1n = conv(in_channels, out1, 1), BatchNormalization(out1, dtype=dtype)
            if proj_pool is not None:
                self.poolp = conv(in_channels, proj_pool, 1)
                self.poolpn = BatchNormalization(proj_pool, dtype=dtype)

    def forward(self, x):
        """The branches, concatenated along axis 1. Chainer: InceptionBN.forward."""
        outs = []
        if self.out1 > 0:
            outs.append(relu(self.conv1n(self.conv1(x))))
        h = relu(self.proj3n(self.proj3(x)))
        outs.append(relu(self.conv3n(self.conv3(h))))
        h = relu(self.proj33n(self.proj33(x)))
        h = relu(self.conv33an(self.conv33a(h)))
        outs.append(relu(self.conv33bn(self.conv33b(h))))
        if self.pooltype == 'max':
            p = max_pooling_2d(x, 3, stride=self.stride, pad=1, cover_all=False)
        else:
            p = average_pooling_2d(x, 3, stride=self.stride, pad=1)
        if self.proj_pool is not None:
            p = relu(self.poolpn(self.poolp(p)))
        outs.append(p)
        return concat(outs, axis=1)


@_export('links', 'links.normalization.layer_normalization')
class LayerNormalization(Link):
    """Layer normalization with learned gamma and beta (F.layer_normalization).

    LayerNormalization(size=None, eps=1e-6, initial_gamma=None,
    initial_beta=None).  size: the unit count D, or None to read it from the
    first input.  eps default 1e-6 (Chainer's link default; the function's is
    1e-5).  gamma starts at 1 and beta at 0 unless initial_gamma /
    initial_beta (initializer, scalar or array) say otherwise.  Calling it:
    x (N, D) -> (N, D).  Saved keys: gamma, beta.  Raises ValueError for an
    input that is not (N, D). Chainer: chainer.links.LayerNormalization.
    """

    def __init__(self, size=None, eps=1e-6, initial_gamma=None, initial_beta=None):
        super().__init__()
        self.eps = eps
        with self.init_scope():
            self.gamma = Parameter(_get_initializer(initial_gamma, One()))
            self.beta = Parameter(_get_initializer(initial_beta, Zero()))
        if size is not None:
            self.gamma.initialize(size)
            self.beta.initialize(size)

    def forward(self, x):
        """layer_normalization(x, gamma, beta, eps); a lazily sized link takes
        D from the first x. Chainer: chainer.links.LayerNormalization.forward."""
        data = _input_data('LayerNormalization', x)
        if data.ndim != 2 or (self.gamma.data is not None and
                              data.shape[1:] != self.gamma.shape):
            raise ValueError('LayerNormalization: x must have shape (N, {}), got {}'.format(
                'D' if self.gamma.data is None else self.gamma.shape[0], data.shape))
        if self.gamma.data is None:
            self.gamma.initialize(data.shape[1], _xp(data))
            self.beta.initialize(data.shape[1], _xp(data))
        return layer_normalization(x, self.gamma, self.beta, self.eps)


@_export('links', 'links.normalization.group_normalization')
class GroupNormalization(Link):
    """Group normalization with learned gamma and beta (F.group_normalization).

    GroupNormalization(groups, size=None, eps=1e-5, initial_gamma=None,
    initial_beta=None).  groups: how many groups the channels split into (it
    must divide the channel count); size: the channel count C, or None to
    read x.shape[1] of the first input.  gamma starts at 1 and beta at 0
    unless initial_gamma / initial_beta say otherwise.  Calling it: x
    (N, C, ...) -> same shape.  Saved keys: gamma, beta.  Raises ValueError
    for an input whose channels do not fit. Chainer: chainer.links.GroupNormalization.
    """

    def __init__(self, groups, size=None, eps=1e-5, initial_gamma=None, initial_beta=None):
        super().__init__()
        self.groups, self.eps = groups, eps
        with self.init_scope():
            self.gamma = Parameter(_get_initializer(initial_gamma, One()))
            self.beta = Parameter(_get_initializer(initial_beta, Zero()))
        if size is not None:
            self.gamma.initialize(size)
            self.beta.initialize(size)

    def forward(self, x):
        """group_normalization(x, groups, gamma, beta, eps); a lazily sized link
        takes C from the first x. Chainer: chainer.links.GroupNormalization.forward."""
        data = _input_data('GroupNormalization', x)
        _check_group_count('GroupNormalization', data.shape, self.groups)   # before gamma takes a shape
        if self.gamma.data is None:
            self.gamma.initialize(data.shape[1], _xp(data))
            self.beta.initialize(data.shape[1], _xp(data))
        elif data.shape[1] != self.gamma.shape[0]:
            raise ValueError('GroupNormalization: x has {} channels (shape {}) but gamma has '
                             'shape {}'.format(data.shape[1], data.shape, self.gamma.shape))
        return group_normalization(x, self.groups, self.gamma, self.beta, self.eps)


class _BNInitializer(Initializer):
    """An initializer that fills in BatchNormalization's dtype (Chainer makes
    gamma and beta float32 or the given dtype, whatever the config says)."""

    def __init__(self, initializer, dtype):
        super().__init__(dtype)
        self.initializer = initializer

    def __call__(self, array):
        self.initializer(array)


# =============================================================================
# Chapter 13. More optimizers and hooks
# =============================================================================
# MomentumSGD, AdaGrad, AdaDelta and RMSprop, each an update rule beside its
# optimizer, their variants (NesterovAG, CorrectedMomentumSGD, RMSpropGraves,
# SMORMS3, AdaBound), and the hooks that change gradients before any rule
# sees them.
#
# Each rule writes its formulas twice, side by side.  update_core_cpu runs
# them in NumPy, one pass over the arrays per line.  On a GPU each pass would
# be a kernel launch, and for small parameters the launches cost more than
# the arithmetic, so `gpu_kernel` holds the same formulas in the same order
# as the loop body of ONE elementwise kernel in CUDA C, and update_core_gpu
# runs it per parameter, passing the arrays and numbers by name.  (How the
# kernels are compiled, and why the GPU then rounds as NumPy does: Chapter 22.)
# A new optimizer is its rule (both halves) and its Optimizer, here.


class _FusedKernel:
    """An elementwise GPU kernel: `body`, in CUDA C, runs once per element over
    the named `inputs` and `outputs`, e.g. 'T grad, T lr' and 'T param' (T:
    the arrays' dtype; a number passed for a T is cast to it).  Outputs are
    updated in place, or made when not passed.  Call it with every input, then
    the outputs, by name; returns the output array(s).  Compiled at the first
    call as 'onefchainer_' + name (Chapter 22).  float16_in_float32: an update
    of float16 arrays runs in float32 copies stored back, as the rules whose
    CPU half uses _step_in_float32 (or Adam's float32 step) do."""

    def __init__(self, name, inputs, outputs, body, float16_in_float32=False):
        self.name, self.inputs, self.outputs, self.body = name, inputs, outputs, body
        self.float16_in_float32 = float16_in_float32
        self.names = [p.split()[-1] for p in (inputs + ',' + outputs).split(',')]
        self.n_inputs = inputs.count(',') + 1
        self.compiled = None

    def __call__(self, **arguments):
        names = self.names[:len(arguments)]       # CuPy takes them by position
        if len(names) < self.n_inputs or arguments.keys() != set(names):
            raise TypeError('kernel {}: got the arguments {}; it takes {}, then {}'.format(
                self.name, sorted(arguments), self.inputs, self.outputs))
        arrays = [arguments[name] for name in names]
        kernel = self.compiled or self.compile()
        if self.float16_in_float32 and len(names) == len(self.names) and any(
                getattr(a, 'dtype', None) == np.float16 for a in arrays[self.n_inputs:]):
            # In float16, eps = 1e-8 is 0 and 0 / 0 is NaN: step float32 copies.
            wide = [a.astype(np.float32) if getattr(a, 'dtype', None) == np.float16 else a
                    for a in arrays]
            kernel(*wide)
            for narrow, value in zip(arrays[self.n_inputs:], wide[self.n_inputs:]):
                if value is not narrow:
                    narrow[...] = value
            outputs = tuple(arrays[self.n_inputs:])
            return outputs if len(outputs) > 1 else outputs[0]
        return kernel(*arrays)

    # Continued in Chapter 22 (compile).


@_continue_class(UpdateRule)
class _UpdateRulePerDevice:

    # A rule writes update_core, or, as here and in Chainer, one method per device.
    def update_core(self, param):
        """Update param.data in place from param.grad. The base
        implementation calls update_core_cpu or update_core_gpu by the array type;
        a rule overrides either this or those. Chainer: chainer.UpdateRule.update_core.
        """
        if isinstance(param.data, np.ndarray):
            self.update_core_cpu(param)
        else:
            self.update_core_gpu(param)

    def update_core_cpu(self, param):
        """update_core for NumPy arrays; raises NotImplementedError unless a
        subclass defines it. Chainer: chainer.UpdateRule.update_core_cpu.
        """
        raise NotImplementedError('{}: define update_core or update_core_cpu'.format(
            type(self).__name__))

    def update_core_gpu(self, param):
        """update_core for CuPy arrays; raises NotImplementedError unless a
        subclass defines it. Chainer: chainer.UpdateRule.update_core_gpu.
        """
        raise NotImplementedError('{}: define update_core or update_core_gpu'.format(
            type(self).__name__))


@_continue_class(UpdateRule)
class _UpdateRuleHooks:

    def add_hook(self, hook, name=None, timing='auto'):
        """hook(rule, param) runs before ('pre') or after ('post') each update.
        Chainer: chainer.UpdateRule.add_hook.
        """
        if timing == 'auto':
            timing = getattr(hook, 'timing', 'pre')
        if timing not in ('pre', 'post'):
            raise ValueError("UpdateRule.add_hook: timing must be 'auto', 'pre' or "
                             "'post', not {!r}".format(timing))
        self._hooks[name or getattr(hook, 'name', type(hook).__name__)] = (hook, timing)

    def remove_hook(self, name):
        """Remove the hook registered as `name` (KeyError if there is none).
        Chainer: chainer.UpdateRule.remove_hook.
        """
        del self._hooks[name]


# A rule also stands alone, as in Chainer: AdamRule(alpha=0.01) sets its own
# alpha, and AdamRule() reads Adam's defaults, taken from Adam.__init__'s
# signature so that each default is written once.

def _default_hyperparam(rule_class):
    """Hyperparameter holding the defaults of the optimizer that uses
    `rule_class` (or a base rule of it), or None if no optimizer does."""
    optimizers, todo = [], [Optimizer]
    while todo:
        optimizers.append(todo.pop())
        todo += optimizers[-1].__subclasses__()
    for rule in rule_class.__mro__:
        users = [o for o in optimizers if o.update_rule_class is rule]
        if users:    # the optimizer named after the rule (Adam, not AMSGrad)
            owner = next((o for o in users if o.__name__ + 'Rule' == rule.__name__), users[0])
            defaults = Hyperparameter()
            for p in list(inspect.signature(owner.__init__).parameters.values())[1:]:
                if p.default is not p.empty:
                    setattr(defaults, p.name, p.default)
            return defaults
    return None


@_continue_class(UpdateRule)
class _UpdateRuleStandingAlone:
    _init_with_parent = UpdateRule.__init__        # Chapter 7's

    def __init__(self, parent_hyperparam=None, **hyperparams):
        """A rule reading `parent_hyperparam` (default: the defaults of its
        optimizer, e.g. Adam's for AdamRule); keywords (alpha=..., lr=...) set
        the rule's own values, None leaves one as it is.  An unknown keyword
        raises TypeError. Chainer: chainer.UpdateRule and each rule's __init__.
        """
        if parent_hyperparam is None or hyperparams:     # (an optimizer's setup passes neither)
            defaults = _default_hyperparam(type(self))
            known = defaults.get_dict() if defaults is not None else {}
            unknown = sorted(set(hyperparams) - set(known))
            if unknown:
                raise TypeError('{}: unknown hyperparameter(s) {}; it takes {}'.format(
                    type(self).__name__, ', '.join(unknown), ', '.join(sorted(known)) or 'none'))
            if parent_hyperparam is None:
                parent_hyperparam = defaults
        self._init_with_parent(parent_hyperparam)
        for name, value in hyperparams.items():
            if value is not None:
                setattr(self.hyperparam, name, value)


@_continue_class(Hyperparameter)
class _HyperparameterAsDict:

    def get_dict(self):
        """A dict of all hyperparameters, the parent's first, overridden by
        this object's own. Chainer: chainer.optimizer.Hyperparameter.get_dict.
        """
        d = {} if self._parent is None else self._parent.get_dict()
        d.update({k: v for k, v in vars(self).items() if k != '_parent'})
        return d


def _adam_lr(hp, t):
    if t == 0:
        raise RuntimeError('Adam: the learning rate is undefined before the '
                           'first update (t == 0)')
    return hp.alpha * math.sqrt(1.0 - hp.beta2 ** t) / (1.0 - hp.beta1 ** t)


# Adam's effective step size, bias correction included, for logs
# (observe_lr reads optimizer.lr) and for Chainer's attribute names.

@_continue_class(AdamRule)
class _AdamRuleStepSize:

    def __init__(self, parent_hyperparam=None, **hyperparams):
        super().__init__(parent_hyperparam, **hyperparams)
        # AdaBound's bounds scale final_lr by alpha now / alpha at the rule's start.
        self.initial_alpha = getattr(self.hyperparam, 'alpha', None)
    @property
    def alpha_t(self):
        """This rule's bias-corrected step size
        alpha * sqrt(1 - beta2**t) / (1 - beta1**t). Raises RuntimeError before the
        first update (t == 0). Chainer: chainer.optimizers.adam.AdamRule.alpha_t (also lr).
        """
        return _adam_lr(self.hyperparam, self.t)

    lr = alpha_t      # Chainer's older name for the bias-corrected step size

    @property
    def bounds(self):
        """AdaBound's (lower, upper) bounds on the step size at update t:
        f * (1 - 1 / (gamma t + 1)) and f * (1 + 1 / (gamma t)), where
        f = final_lr * alpha / initial_alpha follows a schedule's change of
        alpha.  Both close in on f.  Raises RuntimeError before the first
        update (t == 0). Chainer: chainer.optimizers.adam.AdamRule.bounds.
        """
        if self.t == 0:
            raise RuntimeError('AdaBound: the bounds are undefined before the first '
                               'update (t == 0)')
        hp = self.hyperparam
        final_lr = hp.final_lr * hp.alpha / self.initial_alpha
        return (final_lr * (1.0 - 1.0 / (hp.gamma * self.t + 1)),
                final_lr * (1.0 + 1.0 / (hp.gamma * self.t)))


@_continue_class(Adam)
class _AdamStepSize:
    adabound = _HyperparameterProxy('adabound')
    final_lr = _HyperparameterProxy('final_lr')
    gamma = _HyperparameterProxy('gamma')

    @property
    def alpha_t(self):
        """The step size of the latest update, bias correction included.
        Raises RuntimeError before the first update.
        Chainer: chainer.optimizers.Adam.alpha_t (also lr).
        """
        return _adam_lr(self.hyperparam, self.t)

    lr = alpha_t      # Chainer's older name, still what observe_lr reads


@_continue_class(Optimizer)
class _OptimizerHooks:
    use_auto_new_epoch = False   # set by an updater that calls new_epoch itself

    def new_epoch(self, auto=False):
        """Count one more epoch.  An updater with auto_new_epoch=True (the
        default) calls this itself, with auto=True, at every epoch's end.
        Chainer: chainer.Optimizer.new_epoch.
        """
        if auto and not self.use_auto_new_epoch:
            raise RuntimeError('Optimizer.new_epoch(auto=True) is for updaters that '
                               'set optimizer.use_auto_new_epoch = True')
        if not auto and self.use_auto_new_epoch:
            raise RuntimeError(
                'Optimizer.new_epoch: the updater already counts the epochs of this '
                'optimizer, so calling it by hand too would count each one twice; '
                'pass auto_new_epoch=False to the updater, or stop calling new_epoch')
        self.epoch += 1

    def add_hook(self, hook, name=None, timing='auto'):
        """Hooks run before each update: WeightDecay, GradientClipping, ...
        Chainer: chainer.Optimizer.add_hook.
        """
        self._check_setup('add_hook()')
        name = name or getattr(hook, 'name', type(hook).__name__)
        if name in self._hooks:
            raise KeyError('add_hook: a hook named {!r} already exists'.format(name))
        if timing == 'auto':
            timing = getattr(hook, 'timing', 'pre')
        self._hooks[name] = (hook, timing)

    def remove_hook(self, name):
        """Remove the optimizer hook registered as `name` (KeyError if none).
        Chainer: chainer.Optimizer.remove_hook.
        """
        del self._hooks[name]

    def call_hooks(self, timing='pre'):
        """Run the hooks of `timing` ('pre', default, or 'post'): per-parameter
        hooks (call_for_each_param) on every parameter that has a gradient and an
        enabled rule, others once with the optimizer. Chainer: chainer.Optimizer.call_hooks.
        """
        for hook, hook_timing in list(self._hooks.values()):
            if hook_timing != timing:
                continue
            if getattr(hook, 'call_for_each_param', False):
                for param in self.target.params(include_uninit=False):
                    if param.grad is not None and param.update_rule.enabled:
                        hook(param.update_rule, param)
            else:
                hook(self)


@_export('optimizers.momentum_sgd')
class MomentumSGDRule(UpdateRule):
    """Update rule of MomentumSGD: v = momentum * v - lr * grad; p += v.
    State: v. Chainer: chainer.optimizers.momentum_sgd.MomentumSGDRule.
    """
    def init_state(self, param):
        self.state['v'] = _xp(param.data).zeros_like(param.data)

    def update_core_cpu(self, param):              # v = momentum v - lr grad; p += v
        v = self.state['v']
        v *= self.hyperparam.momentum
        v -= self.hyperparam.lr * param.grad
        param.data += v

    gpu_kernel = _FusedKernel('momentum_sgd', 'T grad, T lr, T momentum', 'T param, T v', '''
        v *= momentum;
        v -= lr * grad;
        param += v;''')

    def update_core_gpu(self, param):
        hp = self.hyperparam
        self.gpu_kernel(grad=param.grad, lr=hp.lr, momentum=hp.momentum,
                        param=param.data, v=self.state['v'])


@_export('optimizers', 'optimizers.momentum_sgd')
class MomentumSGD(Optimizer):
    """SGD with momentum: v = momentum * v - lr * grad; p += v.
    lr default 0.01, momentum default 0.9. Chainer: chainer.optimizers.MomentumSGD.
    """
    lr = _HyperparameterProxy('lr')
    momentum = _HyperparameterProxy('momentum')
    update_rule_class = MomentumSGDRule

    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__(lr=lr, momentum=momentum)


@_export('optimizers.nesterov_ag')
class NesterovAGRule(UpdateRule):
    """Update rule of NesterovAG (see NesterovAG). State: v.
    Chainer: chainer.optimizers.nesterov_ag.NesterovAGRule.
    """
    def init_state(self, param):
        self.state['v'] = _xp(param.data).zeros_like(param.data)

    def update_core_cpu(self, param):
        grad, hp, v = param.grad, self.hyperparam, self.state['v']
        lr, momentum = hp.lr, hp.momentum
        # The step looks ahead: MomentumSGD's step plus momentum times the next one.
        momentum_squared, lr_one_plus_momentum = momentum * momentum, (1 + momentum) * lr
        v *= momentum
        v -= lr * grad
        param.data += momentum_squared * v
        param.data -= lr_one_plus_momentum * grad

    # momentum_squared and lr_one_plus_momentum: the CPU's Python products, made once
    gpu_kernel = _FusedKernel(
        'nesterov_ag', 'T grad, T lr, T momentum, T momentum_squared, T lr_one_plus_momentum',
        'T param, T v', '''
        v *= momentum;
        v -= lr * grad;
        param += momentum_squared * v;
        param -= lr_one_plus_momentum * grad;''')

    def update_core_gpu(self, param):
        lr, momentum = self.hyperparam.lr, self.hyperparam.momentum
        self.gpu_kernel(grad=param.grad, lr=lr, momentum=momentum,
                        momentum_squared=momentum * momentum,
                        lr_one_plus_momentum=(1 + momentum) * lr,
                        param=param.data, v=self.state['v'])


@_export('optimizers', 'optimizers.nesterov_ag')
class NesterovAG(Optimizer):
    """Nesterov's accelerated gradient: v = momentum v - lr grad;
    p += momentum**2 v - (1 + momentum) lr grad.
    lr default 0.01, momentum default 0.9. Chainer: chainer.optimizers.NesterovAG.
    """
    lr = _HyperparameterProxy('lr')
    momentum = _HyperparameterProxy('momentum')
    update_rule_class = NesterovAGRule

    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__(lr=lr, momentum=momentum)


@_export('optimizers.corrected_momentum_sgd')
class CorrectedMomentumSGDRule(UpdateRule):
    """Update rule of CorrectedMomentumSGD: v = momentum v - grad; p += lr v.
    State: v. Chainer: chainer.optimizers.corrected_momentum_sgd.CorrectedMomentumSGDRule.
    """
    def init_state(self, param):
        self.state['v'] = _xp(param.data).zeros_like(param.data)

    def update_core_cpu(self, param):              # v = momentum v - g; p += lr v
        v, hp = self.state['v'], self.hyperparam
        v *= hp.momentum
        v -= param.grad
        param.data += hp.lr * v

    gpu_kernel = _FusedKernel('corrected_momentum_sgd', 'T grad, T lr, T momentum',
                              'T param, T v', '''
        v *= momentum;
        v -= grad;
        param += lr * v;''')

    def update_core_gpu(self, param):
        hp = self.hyperparam
        self.gpu_kernel(grad=param.grad, lr=hp.lr, momentum=hp.momentum,
                        param=param.data, v=self.state['v'])


@_export('optimizers', 'optimizers.corrected_momentum_sgd')
class CorrectedMomentumSGD(Optimizer):
    """Momentum SGD with lr outside the velocity: v = momentum v - grad;
    p += lr v.  With a constant lr it steps as MomentumSGD does; when a
    schedule changes lr, the new lr applies to the whole velocity at once
    (Goyal et al. 2017, "momentum correction").  lr default 0.01, momentum
    default 0.9. Chainer: chainer.optimizers.CorrectedMomentumSGD.
    """
    lr = _HyperparameterProxy('lr')
    momentum = _HyperparameterProxy('momentum')
    update_rule_class = CorrectedMomentumSGDRule

    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__(lr=lr, momentum=momentum)


def _step_in_float32(step, data, grad, *state):
    """Run step(data, grad, *state), which updates data and the state arrays
    in place (CPU).  A float16 parameter is stepped in float32 copies that are
    stored back, as Chainer's Adam does: in float16 the eps of these rules
    (1e-8, 1e-16) rounds to 0, and an entry whose gradient has always been 0
    would step by 0 / 0 = NaN.  The state stays float16, as in Chainer.
    (Their GPU kernels do the same: float16_in_float32.)"""
    if data.dtype != np.float16:
        return step(data, grad, *state)
    wide = [a.astype(np.float32) for a in (data, grad) + state]
    step(*wide)
    for narrow, value in zip((data,) + state, wide[:1] + wide[2:]):
        narrow[...] = value


@_export('optimizers.ada_grad')
class AdaGradRule(UpdateRule):
    """Update rule of AdaGrad: h += grad**2; p -= lr * grad / (sqrt(h) + eps).
    State: h. Chainer: chainer.optimizers.ada_grad.AdaGradRule.
    """
    def init_state(self, param):
        self.state['h'] = _xp(param.data).zeros_like(param.data)

    def update_core_cpu(self, param):              # h += g^2; p -= lr g / (sqrt(h) + eps)
        grad, h, hp = param.grad, self.state['h'], self.hyperparam
        def step(data, grad, h):
            h += grad * grad
            data -= hp.lr * grad / (np.sqrt(h) + hp.eps)
        _step_in_float32(step, param.data, grad, h)

    gpu_kernel = _FusedKernel('adagrad', 'T grad, T lr, T eps', 'T param, T h', '''
        h += grad * grad;
        param -= lr * grad / (sqrt(h) + eps);''', float16_in_float32=True)

    def update_core_gpu(self, param):
        hp = self.hyperparam
        self.gpu_kernel(grad=param.grad, lr=hp.lr, eps=hp.eps, param=param.data,
                        h=self.state['h'])


@_export('optimizers', 'optimizers.ada_grad')
class AdaGrad(Optimizer):
    """AdaGrad: h += grad**2; p -= lr * grad / (sqrt(h) + eps).
    lr default 0.001, eps default 1e-8. Chainer: chainer.optimizers.AdaGrad.
    """
    lr = _HyperparameterProxy('lr')
    eps = _HyperparameterProxy('eps')
    update_rule_class = AdaGradRule

    def __init__(self, lr=0.001, eps=1e-8):
        super().__init__(lr=lr, eps=eps)


@_export('optimizers.ada_delta')
class AdaDeltaRule(UpdateRule):
    """Update rule of AdaDelta (see AdaDelta). State: msg, msdx.
    Chainer: chainer.optimizers.ada_delta.AdaDeltaRule.
    """
    def init_state(self, param):
        xp = _xp(param.data)
        self.state['msg'] = xp.zeros_like(param.data)
        self.state['msdx'] = xp.zeros_like(param.data)

    def update_core_cpu(self, param):
        # msg: mean square gradient, msdx: mean square step; the step is
        # g * rms(previous steps) / rms(gradients), so no learning rate is needed.
        grad, hp = param.grad, self.hyperparam
        msg, msdx = self.state['msg'], self.state['msdx']
        def step(data, grad, msg, msdx):
            msg *= hp.rho
            msg += (1 - hp.rho) * grad * grad
            dx = np.sqrt((msdx + hp.eps) / (msg + hp.eps)) * grad
            msdx *= hp.rho
            msdx += (1 - hp.rho) * dx * dx
            data -= dx
        _step_in_float32(step, param.data, grad, msg, msdx)

    gpu_kernel = _FusedKernel('adadelta', 'T grad, T one_minus_rho, T rho, T eps',
                              'T param, T msg, T msdx', '''
        msg *= rho;
        msg += one_minus_rho * grad * grad;
        T dx = sqrt((msdx + eps) / (msg + eps)) * grad;
        msdx *= rho;
        msdx += one_minus_rho * dx * dx;
        param -= dx;''', float16_in_float32=True)

    def update_core_gpu(self, param):
        hp = self.hyperparam
        self.gpu_kernel(grad=param.grad, one_minus_rho=1 - hp.rho, rho=hp.rho, eps=hp.eps,
                        param=param.data, msg=self.state['msg'], msdx=self.state['msdx'])


@_export('optimizers', 'optimizers.ada_delta')
class AdaDelta(Optimizer):
    """AdaDelta, which needs no learning rate:
    msg = rho msg + (1-rho) grad**2; dx = sqrt((msdx + eps) / (msg + eps)) grad;
    msdx = rho msdx + (1-rho) dx**2; p -= dx.
    rho default 0.95, eps default 1e-6. Chainer: chainer.optimizers.AdaDelta.
    """
    rho = _HyperparameterProxy('rho')
    eps = _HyperparameterProxy('eps')
    update_rule_class = AdaDeltaRule

    def __init__(self, rho=0.95, eps=1e-6):
        super().__init__(rho=rho, eps=eps)


@_export('optimizers.rmsprop')
class RMSpropRule(UpdateRule):
    """Update rule of RMSprop (see RMSprop). State: ms.
    Chainer: chainer.optimizers.rmsprop.RMSpropRule.
    """
    def init_state(self, param):
        self.state['ms'] = _xp(param.data).zeros_like(param.data)

    def update_core_cpu(self, param):              # ms = a ms + (1-a) g^2; p -= lr g / (sqrt(ms) + eps)
        grad, hp, ms = param.grad, self.hyperparam, self.state['ms']
        def step(data, grad, ms):
            ms *= hp.alpha
            ms += (1 - hp.alpha) * grad * grad
            denom = np.sqrt(ms + hp.eps) if hp.eps_inside_sqrt else np.sqrt(ms) + hp.eps
            data -= hp.lr * grad / denom
        _step_in_float32(step, param.data, grad, ms)

    gpu_kernel = _FusedKernel(
        'rmsprop', 'T grad, T lr, T alpha, T one_minus_alpha, T eps, bool eps_inside_sqrt',
        'T param, T ms', '''
        ms *= alpha;
        ms += one_minus_alpha * grad * grad;
        T denom = eps_inside_sqrt ? sqrt(ms + eps) : sqrt(ms) + eps;
        param -= lr * grad / denom;''', float16_in_float32=True)

    def update_core_gpu(self, param):
        hp = self.hyperparam
        self.gpu_kernel(grad=param.grad, lr=hp.lr, alpha=hp.alpha, one_minus_alpha=1 - hp.alpha,
                        eps=hp.eps, eps_inside_sqrt=bool(hp.eps_inside_sqrt),
                        param=param.data, ms=self.state['ms'])


@_export('optimizers', 'optimizers.rmsprop')
class RMSprop(Optimizer):
    """RMSprop: ms = alpha ms + (1-alpha) grad**2; p -= lr grad / (sqrt(ms) + eps),
    or / sqrt(ms + eps) with eps_inside_sqrt. lr default 0.01, alpha 0.99,
    eps 1e-8, eps_inside_sqrt False. Chainer: chainer.optimizers.RMSprop.
    """
    lr = _HyperparameterProxy('lr')
    alpha = _HyperparameterProxy('alpha')
    eps = _HyperparameterProxy('eps')
    update_rule_class = RMSpropRule

    def __init__(self, lr=0.01, alpha=0.99, eps=1e-8, eps_inside_sqrt=False):
        super().__init__(lr=lr, alpha=alpha, eps=eps, eps_inside_sqrt=eps_inside_sqrt)


@_export('optimizers.rmsprop_graves')
class RMSpropGravesRule(UpdateRule):
    """Update rule of RMSpropGraves (see RMSpropGraves). State: n, g, delta.
    Chainer: chainer.optimizers.rmsprop_graves.RMSpropGravesRule.
    """
    def init_state(self, param):
        xp = _xp(param.data)
        self.state['n'] = xp.zeros_like(param.data)
        self.state['g'] = xp.zeros_like(param.data)
        self.state['delta'] = xp.zeros_like(param.data)

    def update_core_cpu(self, param):
        # n - g**2 estimates the gradient's variance, not its mean square as
        # RMSprop's ms does: steps are scaled by how noisy the gradient is.
        grad, hp = param.grad, self.hyperparam
        n, g, delta = self.state['n'], self.state['g'], self.state['delta']
        alpha, one_minus_alpha = hp.alpha, 1 - hp.alpha
        def step(data, grad, n, g, delta):
            n *= alpha
            n += one_minus_alpha * grad * grad
            g *= alpha
            g += one_minus_alpha * grad
            delta *= hp.momentum
            delta -= hp.lr * grad / np.sqrt(n - g * g + hp.eps)
            data += delta
        _step_in_float32(step, param.data, grad, n, g, delta)

    gpu_kernel = _FusedKernel(
        'rmsprop_graves', 'T grad, T lr, T alpha, T one_minus_alpha, T momentum, T eps',
        'T param, T n, T g, T delta', '''
        n *= alpha;
        n += one_minus_alpha * grad * grad;
        g *= alpha;
        g += one_minus_alpha * grad;
        delta *= momentum;
        delta -= lr * grad / sqrt(n - g * g + eps);
        param += delta;''', float16_in_float32=True)

    def update_core_gpu(self, param):
        hp, state = self.hyperparam, self.state
        self.gpu_kernel(grad=param.grad, lr=hp.lr, alpha=hp.alpha, one_minus_alpha=1 - hp.alpha,
                        momentum=hp.momentum, eps=hp.eps, param=param.data,
                        n=state['n'], g=state['g'], delta=state['delta'])


@_export('optimizers', 'optimizers.rmsprop_graves')
class RMSpropGraves(Optimizer):
    """Alex Graves's RMSprop: n = alpha n + (1-alpha) grad**2;
    g = alpha g + (1-alpha) grad; delta = momentum delta - lr grad / sqrt(n - g**2 + eps);
    p += delta.  lr default 1e-4, alpha 0.95, momentum 0.9, eps 1e-4.
    Chainer: chainer.optimizers.RMSpropGraves.
    """
    lr = _HyperparameterProxy('lr')
    alpha = _HyperparameterProxy('alpha')
    momentum = _HyperparameterProxy('momentum')
    eps = _HyperparameterProxy('eps')
    update_rule_class = RMSpropGravesRule

    def __init__(self, lr=1e-4, alpha=0.95, momentum=0.9, eps=1e-4):
        super().__init__(lr=lr, alpha=alpha, momentum=momentum, eps=eps)


@_export('optimizers.smorms3')
class SMORMS3Rule(UpdateRule):
    """Update rule of SMORMS3 (see SMORMS3). State: mem (starts at 1), g, g2.
    Chainer: chainer.optimizers.smorms3.SMORMS3Rule.
    """
    def init_state(self, param):
        xp = _xp(param.data)
        self.state['mem'] = xp.ones_like(param.data)
        self.state['g'] = xp.zeros_like(param.data)
        self.state['g2'] = xp.zeros_like(param.data)

    def update_core_cpu(self, param):
        # mem is a per-element memory length: averages over about mem steps,
        # shortened where g**2 / g2 says the gradient keeps its sign (x near 1).
        grad, hp = param.grad, self.hyperparam
        mem, g, g2 = self.state['mem'], self.state['g'], self.state['g2']
        def step(data, grad, mem, g, g2):
            r = 1 / (mem + 1)
            g *= 1 - r
            g += r * grad
            g2 *= 1 - r
            g2 += r * grad * grad
            x = g * g / (g2 + hp.eps)
            data -= grad * np.minimum(x, hp.lr) / (np.sqrt(g2) + hp.eps)
            mem *= 1 - x
            mem += 1
        _step_in_float32(step, param.data, grad, mem, g, g2)

    gpu_kernel = _FusedKernel('smorms3', 'T grad, T lr, T eps', 'T param, T mem, T g, T g2', '''
        T r = 1 / (mem + 1);
        g *= 1 - r;
        g += r * grad;
        g2 *= 1 - r;
        g2 += r * grad * grad;
        T x = g * g / (g2 + eps);
        param -= grad * min(x, lr) / (sqrt(g2) + eps);
        mem *= 1 - x;
        mem += 1;''', float16_in_float32=True)

    def update_core_gpu(self, param):
        hp, state = self.hyperparam, self.state
        self.gpu_kernel(grad=param.grad, lr=hp.lr, eps=hp.eps, param=param.data,
                        mem=state['mem'], g=state['g'], g2=state['g2'])


@_export('optimizers', 'optimizers.smorms3')
class SMORMS3(Optimizer):
    """Simon Funk's SMORMS3: r = 1 / (mem + 1); g = (1-r) g + r grad;
    g2 = (1-r) g2 + r grad**2; x = g**2 / (g2 + eps);
    p -= grad min(x, lr) / (sqrt(g2) + eps); mem = 1 + mem (1 - x).
    lr default 0.001, eps default 1e-16. Chainer: chainer.optimizers.SMORMS3.
    """
    lr = _HyperparameterProxy('lr')
    eps = _HyperparameterProxy('eps')
    update_rule_class = SMORMS3Rule

    def __init__(self, lr=0.001, eps=1e-16):
        super().__init__(lr=lr, eps=eps)


@_export('optimizers.msvag')
class MSVAGRule(UpdateRule):
    """Update rule of MSVAG (see MSVAG). State: m, v; beta_power (beta**t,
    an attribute, not saved, as in Chainer).
    Chainer: chainer.optimizers.msvag.MSVAGRule.
    """
    def __init__(self, parent_hyperparam=None, **hyperparams):
        super().__init__(parent_hyperparam, **hyperparams)
        self.beta_power = self.hyperparam.beta

    def init_state(self, param):
        xp = _xp(param.data)
        self.state['m'] = xp.zeros_like(param.data)
        self.state['v'] = xp.zeros_like(param.data)

    def _next_beta_power(self):
        """(beta, beta**t, rho) of this update; beta_power moves on to beta**(t+1)."""
        beta, beta_power = self.hyperparam.beta, self.beta_power
        rho = min((1 - beta) ** 2 * (1 - beta_power ** 2)
                  / ((1 - beta_power) ** 2 * (1 - beta ** 2)), 0.9999)
        self.beta_power = beta_power * beta
        return beta, beta_power, rho

    def update_core_cpu(self, param):
        # mt and vt estimate the gradient's mean and mean square; s its variance
        # (rho corrects for the correlation of the moving averages).  The
        # step is Adam's direction without the division, shrunk where the
        # variance dominates the squared mean: factor = mt^2 / (mt^2 + rho s).
        grad, hp = param.grad, self.hyperparam
        m, v = self.state['m'], self.state['v']
        beta, beta_power, rho = self._next_beta_power()
        m += (1 - beta) * (grad - m)
        v += (1 - beta) * (grad * grad - v)
        mt = m / (1 - beta_power)
        vt = v / (1 - beta_power)
        mt2 = mt * mt
        s = (vt - mt2) / (1 - rho)
        with np.errstate(invalid='ignore', divide='ignore'):    # 0/0 where m = v = 0
            factor = np.clip(mt2 / (mt2 + rho * s), 0, 1)
        factor = np.where(np.isnan(factor), 0, factor)     # (not factor[...] =: 0-dim is a scalar)
        param.data -= hp.eta * (hp.lr * mt * factor + hp.weight_decay_rate * param.data)

    # factor: np.clip's bounds, and the CPU's NaN (from 0/0 where m = v = 0) made 0
    gpu_kernel = _FusedKernel(
        'msvag', 'T grad, T lr, T one_minus_beta, T one_minus_beta_power, T rho, '
        'T one_minus_rho, T eta, T weight_decay_rate', 'T param, T m, T v', '''
        m += one_minus_beta * (grad - m);
        v += one_minus_beta * (grad * grad - v);
        T mt = m / one_minus_beta_power;
        T vt = v / one_minus_beta_power;
        T mt2 = mt * mt;
        T s = (vt - mt2) / one_minus_rho;
        T factor = mt2 / (mt2 + rho * s);
        factor = factor < 0 ? 0 : factor;
        factor = factor > 1 ? 1 : factor;
        factor = (m == 0) && (v == 0) ? 0 : factor;
        param -= eta * (lr * mt * factor + weight_decay_rate * param);''')

    def update_core_gpu(self, param):
        hp = self.hyperparam
        beta, beta_power, rho = self._next_beta_power()
        self.gpu_kernel(grad=param.grad, lr=hp.lr, one_minus_beta=1 - beta,
                        one_minus_beta_power=1 - beta_power, rho=rho, one_minus_rho=1 - rho,
                        eta=hp.eta, weight_decay_rate=hp.weight_decay_rate,
                        param=param.data, m=self.state['m'], v=self.state['v'])


@_export('optimizers', 'optimizers.msvag')
class MSVAG(Optimizer):
    """M-SVAG (Balles and Hennig 2017, "Dissecting Adam"), with decoupled
    weight decay.  With b = beta, bt = beta**t:
    m = b m + (1-b) grad; v = b v + (1-b) grad**2; mt = m / (1-bt);
    vt = v / (1-bt); rho = min((1-b)**2 (1-bt**2) / ((1-bt)**2 (1-b**2)), 0.9999);
    s = (vt - mt**2) / (1-rho); factor = clip(mt**2 / (mt**2 + rho s), 0, 1)
    (0 where that is 0/0); p -= eta (lr mt factor + weight_decay_rate p).
    lr default 0.1, beta 0.9, eta 1.0, weight_decay_rate 0.
    Chainer: chainer.optimizers.MSVAG.
    """
    lr = _HyperparameterProxy('lr')
    beta = _HyperparameterProxy('beta')
    eta = _HyperparameterProxy('eta')
    weight_decay_rate = _HyperparameterProxy('weight_decay_rate')
    update_rule_class = MSVAGRule

    def __init__(self, lr=0.1, beta=0.9, eta=1.0, weight_decay_rate=0):
        super().__init__(lr=lr, beta=beta, eta=eta, weight_decay_rate=weight_decay_rate)


# ----- optimizers, hooks, initializers, serializers ------------------------------

@_export('optimizers', 'optimizers.adam')
class AMSGrad(Adam):
    """Adam with amsgrad=True: steps use the running maximum of v, so the
    step size never grows back.  Same arguments and defaults as Adam.
    Chainer: chainer.optimizers.AMSGrad."""

    def __init__(self, alpha=0.001, beta1=0.9, beta2=0.999, eps=1e-8, eta=1.0,
                 weight_decay_rate=0):
        super().__init__(alpha, beta1, beta2, eps, eta, weight_decay_rate, amsgrad=True)


@_export('optimizers', 'optimizers.adam')
class AdamW(Adam):
    """Adam with decoupled weight decay: p -= eta weight_decay_rate p besides
    the Adam step (set weight_decay_rate; default 0).  Same arguments as Adam.
    Chainer: chainer.optimizers.AdamW."""


# AdaBound starts as Adam and ends as SGD with lr final_lr: Adam's per-element
# step size lr / (sqrt(v) + eps) is clipped into AdamRule.bounds, which
# tighten around final_lr as t grows (gamma sets how fast).

@_export('optimizers', 'optimizers.adam')
class AdaBound(Adam):
    """Adam with adabound=True: the step size alpha_t / (sqrt(v) + eps) is
    clipped into [lower, upper] (AdamRule.bounds), which close in on
    final_lr.  Arguments (this order): alpha 0.001, beta1 0.9, beta2 0.999,
    final_lr 0.1, gamma 1e-3, eps 1e-8, eta 1.0.
    Chainer: chainer.optimizers.AdaBound."""

    def __init__(self, alpha=0.001, beta1=0.9, beta2=0.999, final_lr=0.1, gamma=1e-3,
                 eps=1e-8, eta=1.0):
        super().__init__(alpha, beta1, beta2, eps, eta, amsgrad=False, adabound=True,
                         final_lr=final_lr, gamma=gamma)


@_export('optimizers', 'optimizers.adam')
class AMSBound(Adam):
    """AdaBound on AMSGrad (amsgrad=True, adabound=True): the running maximum
    of v, and the step size clipped into AdamRule.bounds.  Same arguments
    and defaults as AdaBound. Chainer: chainer.optimizers.AMSBound."""

    def __init__(self, alpha=0.001, beta1=0.9, beta2=0.999, final_lr=0.1, gamma=1e-3,
                 eps=1e-8, eta=1.0):
        super().__init__(alpha, beta1, beta2, eps, eta, amsgrad=True, adabound=True,
                         final_lr=final_lr, gamma=gamma)


# ----- optimizer hooks ---------------------------------------------------------
# Hooks change the gradients before the update rule sees them.  They assign
# new arrays instead of modifying grads in place, since a gradient array may
# be shared by two parameters (add passes one array to both of its inputs).

@_export('optimizer', 'optimizer_hooks', 'optimizer_hooks.weight_decay')
class WeightDecay:
    """Optimizer hook for L2 regularization: grad += rate * p before each
    update (rate: a float). Chainer: chainer.optimizer_hooks.WeightDecay.
    """
    name = 'WeightDecay'
    call_for_each_param = True
    timing = 'pre'

    def __init__(self, rate):
        self.rate = rate

    def __call__(self, rule, param):
        """Add rate * param.data to param.grad (a new array; `rule` is unused)."""
        param.grad = param.grad + self.rate * param.data


@_export('optimizer', 'optimizer_hooks', 'optimizer_hooks.lasso')
class Lasso:
    """Optimizer hook for L1 regularization: grad += rate * sign(p) before each
    update (rate: a float). Chainer: chainer.optimizer_hooks.Lasso.
    """
    name = 'Lasso'
    call_for_each_param = True
    timing = 'pre'

    def __init__(self, rate):
        self.rate = rate

    def __call__(self, rule, param):
        """Add rate * sign(param.data) to param.grad (a new array)."""
        param.grad = param.grad + self.rate * _xp(param.data).sign(param.data)


@_export('optimizer', 'optimizer_hooks', 'optimizer_hooks.gradient_hard_clipping')
class GradientHardClipping:
    """Optimizer hook that clips every gradient element into
    [lower_bound, upper_bound] before each update.
    Chainer: chainer.optimizer_hooks.GradientHardClipping.
    """
    name = 'GradientHardClipping'
    call_for_each_param = True
    timing = 'pre'

    def __init__(self, lower_bound, upper_bound):
        self.lower_bound, self.upper_bound = lower_bound, upper_bound

    def __call__(self, rule, param):
        """Replace param.grad by its elements clipped into the bounds."""
        param.grad = _xp(param.grad).clip(param.grad, self.lower_bound, self.upper_bound)


@_export('optimizer', 'optimizer_hooks', 'optimizer_hooks.gradient_clipping')
class GradientClipping:
    """Optimizer hook that rescales all gradients together so that their
    global L2 norm is at most `threshold` (gradients scaled by threshold /
    norm when norm exceeds it). Chainer: chainer.optimizer_hooks.GradientClipping.
    """
    name = 'GradientClipping'
    call_for_each_param = False
    timing = 'pre'

    def __init__(self, threshold):
        self.threshold = threshold

    def __call__(self, opt):
        """Rescale the gradients of opt.target's parameters when their
        global L2 norm exceeds the threshold.
        """
        params = [p for p in opt.target.params(False) if p.grad is not None]
        sum_of_squares = 0.0
        for p in params:     # summed where the grads live: one wait for a GPU, not one per param
            sum_of_squares = sum_of_squares + (p.grad * p.grad).sum(dtype=np.float64)
        norm = math.sqrt(float(sum_of_squares))
        rate = self.threshold / norm if norm > 0 else 1.0
        if rate < 1:
            for p in params:
                p.grad = p.grad * p.grad.dtype.type(rate)


def _exponential_decay_noise(xp, shape, dtype, hook, rule):
    """GradientNoise's default noise: N(0, sigma**2) with
    sigma**2 = hook.eta / (1 + rule.t)**0.55, annealed as training goes on
    (Neelakantan et al. 2015). Chainer:
    chainer.optimizer_hooks.gradient_noise.exponential_decay_noise."""
    std = math.sqrt(hook.eta / (1 + rule.t) ** 0.55)
    return xp.random.normal(0, std, shape).astype(dtype, copy=False)


@_export('optimizer', 'optimizer_hooks', 'optimizer_hooks.gradient_noise')
class GradientNoise:
    """Optimizer hook that adds noise to each gradient before the update:
    grad += noise_func(xp, grad.shape, grad.dtype, hook, rule).  The default
    noise_func draws N(0, eta / (1 + t)**0.55), t the rule's update count when
    the hook runs (as an optimizer hook, before the rule counts this update:
    0 at the first); eta, a float, sets the scale (0.01, 0.3 or 1.0 in the
    paper).  The draws come from the array module's global generator
    (numpy.random, cupy.random). Chainer: chainer.optimizer_hooks.GradientNoise.
    """
    name = 'GradientNoise'
    call_for_each_param = True
    timing = 'pre'

    def __init__(self, eta, noise_func=_exponential_decay_noise):
        self.eta = eta
        self.noise_func = noise_func

    def __call__(self, rule, param):
        """Add noise_func's noise to param.grad (a new array)."""
        grad = param.grad
        param.grad = grad + self.noise_func(_xp(grad), grad.shape, grad.dtype, self, rule)


@_export('optimizer_hooks', 'optimizer_hooks.gradient_lars')
class GradientLARS:
    """Optimizer hook for layer-wise adaptive rate scaling (LARS, You et al.
    2017): per parameter, grad = (grad + weight_decay p) * rate, with
    rate = |p| / (eps + |grad| + weight_decay |p|) (L2 norms) where
    |p| > threshold, and 1 elsewhere, so a layer's step is sized to its
    weights.  threshold default 1e-2, weight_decay 0.0, eps 1e-9.
    Chainer: chainer.optimizer_hooks.GradientLARS.
    """
    name = 'GradientLARS'
    call_for_each_param = True
    timing = 'pre'

    def __init__(self, threshold=1e-2, weight_decay=0.0, eps=1e-9):
        self.threshold = threshold
        self.weight_decay = weight_decay
        self.eps = eps

    def __call__(self, rule, param):
        """Replace param.grad by its rescaled, weight-decayed value (a new array)."""
        p, grad = param.data, param.grad
        xp = _xp(p)
        p_norm, g_norm = xp.linalg.norm(p), xp.linalg.norm(grad)
        # Chosen on the device, so that a GPU never waits for the norms.
        rate = xp.where(p_norm > self.threshold,
                        p_norm / (self.eps + g_norm + self.weight_decay * p_norm), 1.0)
        param.grad = (grad + self.weight_decay * p) * rate.astype(grad.dtype)


# =============================================================================
# Chapter 14. Serializers
# =============================================================================


# Saving walks the object tree with a *serializer*: every object's
# `serialize(serializer)` calls `value = serializer(key, value)` for each
# thing it owns and `serializer[name]` to descend into a child.  The same
# method serves both directions: a saver records the value and returns it, a
# loader returns the stored one.  Keys are paths ('predictor/l1/W'), exactly
# Chainer's, so .npz files move both ways between Chainer and onefchainer.
#
# Loading is done twice: first a *checking* pass that walks the same
# `serialize` methods but only compares keys and shapes, then the real pass.
# So a file that does not fit leaves the model untouched (Chainer itself
# stops half-way, with part of the model already overwritten).

@_export('serializer', 'serializers')
class Serializer:
    """Base of serializers: serializer[key] gives the serializer of a child
    object, serializer(key, value) saves value (or, for a Deserializer, loads
    and returns it). An object's serialize(serializer) calls both.
    Chainer: chainer.Serializer.
    """
    def __getitem__(self, key):
        raise NotImplementedError

    def __call__(self, key, value):
        """Save `value` under `key` (a Serializer) or return the value loaded
        from `key` (a Deserializer); `value` may be an array (filled in place when
        loading), a scalar or None. Chainer: chainer.Serializer.__call__.
        """
        raise NotImplementedError
_export('serializer', AbstractSerializer=Serializer)


@_export('serializer', 'serializers')
class Deserializer(Serializer):
    """Base of deserializers, the loading side of Serializer.
    check_only True means a dry pass that must change nothing.
    Chainer: chainer.Deserializer.
    """
    check_only = False     # True in load_npz's first pass, which must change nothing

    def stored(self, key):
        """The value stored under `key`, whatever the object holds now."""
        return self(key, None)


@_export('serializers', 'serializers.npz')
class DictionarySerializer(Serializer):
    """Collects {path: host NumPy array} from an object's serialize(): paths
    like 'predictor/l1/W'; None is stored as a 0-dim object array, as Chainer
    does. target: the dict to fill (default a new one); path: prefix.
    Chainer: chainer.serializers.DictionarySerializer.
    """

    def __init__(self, target=None, path=''):
        self.target = {} if target is None else target
        self.path = path

    def __getitem__(self, key):
        return DictionarySerializer(self.target, self.path + key.strip('/') + '/')

    def __call__(self, key, value):
        key = key.lstrip('/')
        if value is None:
            array = np.asarray(None)      # what Chainer stores for "not yet initialized"
        elif isinstance(value, _array_types):
            array = _to_cpu(value)
        else:
            array = np.asarray(value)
        self.target[self.path + key] = array
        return value

    def save(self, obj):
        """Run obj.serialize(self), collecting its values into self.target.
        Chainer: chainer.serializers.DictionarySerializer.save.
        """
        obj.serialize(self)


def _write_atomically(path, write):
    """Write to a temporary file beside `path`, then rename it into place:
    a crash mid-write never leaves a truncated file under the real name."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.',
                                     suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
        # mkstemp makes the file private (0600); give it the mode a plain
        # open() would: the old file's, or 0666 less the umask.
        try:
            mode = os.stat(path).st_mode & 0o777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


@_export('serializers', 'serializers.npz')
def save_npz(file, obj, compression=True):
    """Save `obj` (a Link, Optimizer, Trainer ... anything with serialize) to an
    .npz file in Chainer's key layout.

    file: a path (written to a temporary file, then renamed into place) or an
    open binary file. compression: default True (np.savez_compressed).
    Chainer: chainer.serializers.save_npz.
    """
    serializer = DictionarySerializer()
    serializer.save(obj)
    savez = np.savez_compressed if compression else np.savez
    if isinstance(file, (str, os.PathLike)):
        _write_atomically(file, lambda f: savez(f, **serializer.target))
    else:
        savez(file, **serializer.target)


@_export('serializers', 'serializers.npz')
class NpzDeserializer(Deserializer):
    """Loads values from an open npz file (a dict-like of arrays) into an
    object's serialize(). path: key prefix; strict (default True): a missing
    key raises KeyError, else it is skipped; ignore_names: keys (a list or a
    predicate) left alone; check_only: only raise if the file does not fit
    (KeyError for a missing key, ValueError for a shape mismatch), change
    nothing. Chainer: chainer.serializers.NpzDeserializer.
    """

    def __init__(self, npz, path='', strict=True, ignore_names=None,
                 check_only=False, file_name='the file'):
        self.npz = npz
        self.path = path
        self.strict = strict
        self.ignore_names = ignore_names or ()
        self.check_only = check_only
        self.file_name = file_name
        self.tally = {'found': 0, 'missing': [], 'root': path}   # shared with the children

    def __getitem__(self, key):
        child = NpzDeserializer(self.npz, self.path + key.strip('/') + '/', self.strict,
                                self.ignore_names, self.check_only, self.file_name)
        child.tally = self.tally
        return child

    def stored(self, key):
        full_key = self.path + key.lstrip('/')
        if full_key in self.npz:
            return self.npz[full_key][()]
        if self.strict:
            raise KeyError('load_npz: {!r} not found in {}; nothing was loaded'.format(
                full_key, self.file_name))
        return None

    def __call__(self, key, value):
        key = self.path + key.lstrip('/')
        if key in self.ignore_names or (callable(self.ignore_names) and self.ignore_names(key)):
            return value
        if key not in self.npz:
            self.tally['missing'].append(key)
            if not self.strict:
                return value
            raise KeyError('load_npz: {!r} not found in {}; nothing was loaded ({})'.format(
                key, self.file_name, _npz_key_hint(self.npz, key, self.tally['root'])
                or 'pass strict=False to skip missing keys'))
        self.tally['found'] += 1
        stored = self.npz[key]
        if stored.dtype == object:          # a parameter saved before initialization
            stored = stored[()]
            if stored is None:
                return value
        if isinstance(value, _array_types) and stored.shape != value.shape:
            raise ValueError('load_npz: {!r} has shape {} in {} but shape {} in the '
                             'object; nothing was loaded'.format(
                                 key, stored.shape, self.file_name, value.shape))
        if not isinstance(value, _array_types) and value is not None and stored.ndim != 0:
            raise ValueError('load_npz: {!r} holds an array of shape {} in {} but the '
                             'object expects a scalar; nothing was loaded'.format(
                                 key, stored.shape, self.file_name))
        if self.check_only:
            return value
        if value is None:
            return stored
        if isinstance(value, np.ndarray):
            np.copyto(value, stored, casting='unsafe')
            return value
        if isinstance(value, _array_types):
            value.set(np.asarray(stored, dtype=value.dtype))
            return value
        if isinstance(value, bool):
            return bool(stored)
        if isinstance(value, (int, float, str)):
            return type(value)(stored)
        return stored[()] if stored.ndim == 0 else stored


@_export('serializers', 'serializers.npz')
def load_npz(file, obj, path='', strict=True, ignore_names=None):
    """Load `obj` from an .npz file written by save_npz or by Chainer.

    file: a path or an open binary file. path: a key prefix selecting a
    sub-tree, e.g. 'updater/model:main/' in a trainer snapshot. strict
    (default True): a key missing from the file raises KeyError, naming the
    path= to use when the file has it under a prefix; False skips it, unless
    no key matches at all, which is a KeyError too. ignore_names: keys, or a predicate on keys, to leave alone. The file is
    checked completely before anything changes: on KeyError or ValueError
    (shapes that differ) obj is untouched. Chainer: chainer.serializers.load_npz.
    """
    name = file if isinstance(file, (str, os.PathLike)) else 'the file'
    with np.load(file, allow_pickle=True) as npz:
        for check_only in (True, False):
            deserializer = NpzDeserializer(npz, path, strict, ignore_names, check_only,
                                           repr(os.fspath(name)) if name != 'the file'
                                           else name)
            obj.serialize(deserializer)
            tally = deserializer.tally
            if check_only and tally['missing'] and not tally['found']:
                # strict=False and not one key matched: loading "succeeded"
                # with the object unchanged, which is never what was meant.
                first = tally['missing'][0]
                raise KeyError('load_npz: none of the {} keys that {} reads was found '
                               'in {} (the first: {!r}), even with strict=False; nothing '
                               'was loaded ({})'.format(
                                   len(tally['missing']), type(obj).__name__,
                                   deserializer.file_name, first,
                                   _npz_key_hint(npz, first, path) or
                                   'check the file and path={!r}'.format(path)))


def _npz_key_hint(npz, key, path):
    """Advice for a key missing from an npz: if the file holds it under a
    longer prefix (a trainer snapshot keeps the model under
    'updater/model:main/'), the path= that reaches it; if under a shorter
    one (a bare model's file loaded into L.Classifier(model)), the child
    link to load it into, since no path= or strict=False can do that."""
    relative = key[len(path):]
    prefixes = sorted({name[:-len(relative)] for name in npz.files
                       if name.endswith('/' + relative)})
    if prefixes:
        return 'the file has it under {}: pass path={!r}'.format(
            ' and '.join(repr(p) for p in prefixes), prefixes[0])
    parts = relative.split('/')
    for cut in range(1, len(parts)):           # the longest tail the file holds
        if path + '/'.join(parts[cut:]) in npz.files:
            child = ''.join('[{}]'.format(p) if p.isdigit() else '.' + p
                            for p in parts[:cut])
            return ('the file has it as {!r}: it was saved from the link this object '
                    'holds at {!r}; load it into that link: load_npz(file, obj{})'.format(
                        path + '/'.join(parts[cut:]), '/'.join(parts[:cut]), child))
    return None


@_continue_class(Link)
class _LinkSerialization:

    def serialize(self, serializer):
        """Save or load the parameters and persistent values through `serializer`
        (Chapter 14); an uninitialized parameter takes its shape from the file.
        Chainer: chainer.Link.serialize.
        """
        for name in self._params:
            param = self.__dict__[name]
            value = serializer(name, param.data)
            if param.data is None and value is not None:   # lazy: shape from the file
                param.initialize(value.shape, self.xp)
                param.data[...] = param.xp.asarray(value)
        for name in self._persistent:
            object.__setattr__(self, name, serializer(name, self.__dict__[name]))


@_continue_class(Chain)
class _ChainSerialization:

    def serialize(self, serializer):
        super().serialize(serializer)
        for name in self._children:
            self.__dict__[name].serialize(serializer[name])


# A rule's state loaded from a file arrives as NumPy arrays.  It moves beside
# its parameter (a GPU one, say) at the next update, as Chainer does: a lazy
# parameter may get its data only after the optimizer was loaded (a trainer
# loads the optimizer first).

@_continue_class(UpdateRule)
class _UpdateRuleLoadedState:
    def _move_loaded_state(self, param):
        self._state_from_file = False
        device = _device_of(param.data)
        for key in self.state:
            self.state[key] = device.send(self.state[key])


@_continue_class(UpdateRule)
class _UpdateRuleSerialization:

    def _state_names(self, param):
        """The state keys this rule would create, without creating them."""
        probe = copy.copy(self)
        probe.state = {}
        probe.init_state(Parameter(np.zeros(1, np.float32)) if param.data is None else param)
        return list(probe.state)

    def serialize(self, serializer):
        """Save or load t and the state arrays; a rule without state loads
        them from the file if it holds all of them. Chainer: chainer.UpdateRule.serialize.
        """
        self.t = serializer('t', self.t)
        if not isinstance(serializer, Deserializer):
            for key in self.state or ():   # no state yet (no update): nothing to save
                self.state[key] = serializer(key, self.state[key])
            return
        names = list(self.state) if self.state is not None else \
            self._state_names(Parameter(np.zeros(1, np.float32)))
        present = [key for key in names if _is_stored(serializer, key)]
        if not present:
            # Saved before this rule's first update (by us or by Chainer, which
            # writes no state then either): the rule is fresh again.
            if not serializer.check_only:
                self.state = None
            return
        if len(present) < len(names):
            raise KeyError('load_npz: {} has update-rule state {} but not {}; '
                           'nothing was loaded'.format(
                               serializer.file_name if hasattr(serializer, 'file_name')
                               else 'the file', present,
                               [key for key in names if key not in present]))
        if self.state is None:
            loaded = {key: serializer(key, None) for key in names}
            if not serializer.check_only:
                self.state = loaded
                self._state_from_file = True
        else:
            for key in self.state:
                self.state[key] = serializer(key, self.state[key])


def _is_stored(deserializer, key):
    """Whether `deserializer` holds a value under `key` (strict or not)."""
    try:
        return deserializer.stored(key) is not None
    except KeyError:
        return False


@_continue_class(Optimizer)
class _OptimizerSerialization:

    def serialize(self, serializer):
        """Save or load t, epoch and every parameter's update-rule state, under
        the parameter's path. Raises RuntimeError before setup(link).
        Chainer: chainer.Optimizer.serialize.
        """
        self._check_setup('saving or loading it (save_npz, load_npz, a snapshot)')
        self.t = serializer('t', self.t)
        self.epoch = serializer('epoch', self.epoch)
        for name, param in self.target.namedparams():
            if param.update_rule is not None:
                param.update_rule.serialize(serializer[name])


# =============================================================================
# Chapter 15. Reporter
# =============================================================================


# A model reports values (`report({'loss': loss}, self)`) without knowing
# who listens.  The training loop opens a *scope* with a fresh dict, runs
# the model, and finds the values there under the model's registered name
# ('main/loss').  Extensions then average them (DictSummary) for the logs.
# Reported Variables are cut from their graph, so a log entry never keeps a
# whole computational graph alive.

_reporters = []


@_export('reporter')
class Reporter:
    """Collects reported values into `observation` (a dict) under names
    '<observer name>/<key>'. `with reporter:` makes it the current one, as does
    scope(observation). Chainer: chainer.Reporter.
    """
    def __init__(self):
        self._observer_names = {}
        self.observation = {}

    def __enter__(self):
        _reporters.append(self)
        return self

    def __exit__(self, *exc_info):
        _reporters.pop()

    @contextlib.contextmanager
    def scope(self, observation):
        """Context manager: make this reporter current and collect into
        `observation` (a dict) until the block ends. Chainer: chainer.Reporter.scope.
        """
        old = self.observation
        self.observation = observation
        self.__enter__()
        try:
            yield
        finally:
            self.__exit__(None, None, None)
            self.observation = old

    def add_observer(self, name, observer):
        """Name `observer` (any object, e.g. a link) `name`: what it reports is
        stored as '<name>/<key>'. Chainer: chainer.Reporter.add_observer.
        """
        self._observer_names[id(observer)] = name

    def add_observers(self, prefix, observers):
        """add_observer(prefix + name, observer) for each (name, observer) pair,
        e.g. prefix 'main' and model.namedlinks(skipself=True).
        Chainer: chainer.Reporter.add_observers.
        """
        for name, observer in observers:
            self._observer_names[id(observer)] = prefix + name

    def report(self, values, observer=None):
        """Store `values` (a dict of Variables, arrays or scalars) in the current
        observation, keys prefixed with the observer's name when observer is
        given. Variables are cut from the graph unless config.keep_graph_on_report.
        Raises KeyError for an observer that was never added. Chainer: chainer.Reporter.report.
        """
        if not config.keep_graph_on_report:
            values = {key: Variable(value.data, requires_grad=False)
                      if isinstance(value, Variable) else value
                      for key, value in values.items()}
        if observer is not None:
            name = self._observer_names.get(id(observer))
            if name is None:
                raise KeyError('report: the observer {} is not registered with '
                               'this reporter'.format(type(observer).__name__))
            values = {name + '/' + key: value for key, value in values.items()}
        self.observation.update(values)


@_export('reporter')
def get_current_reporter():
    """The innermost active Reporter. Raises IndexError when there is none.
    Chainer: chainer.get_current_reporter.
    """
    return _reporters[-1]


@_export('reporter')
def report(values, observer=None):
    """Report `values` (a dict) to the current reporter, named after `observer`
    when given (see Reporter.report); does nothing outside a reporter's scope.
    Chainer: chainer.report.
    """
    if _reporters:
        _reporters[-1].report(values, observer)


@_export('reporter')
@contextlib.contextmanager
def report_scope(observation):
    """Context manager: collect what is reported into `observation` (a dict)
    on the current reporter until the block ends. Raises IndexError without
    an active reporter. Chainer: chainer.report_scope.
    """
    current = _reporters[-1]
    old = current.observation
    current.observation = observation
    try:
        yield
    finally:
        current.observation = old


@_export('reporter')
class Summary:
    """Running mean and standard deviation of one reported value.  Values
    stay arrays (on their device) until the mean is asked for.
    Chainer: chainer.reporter.Summary.
    """

    def __init__(self):
        # NumPy float64 sums (a Python float would take on float32 from the
        # values): the means Chainer logs, and the same after a resume.
        self._x = np.float64(0.0)
        self._x2 = np.float64(0.0)
        self._n = 0

    def add(self, value, weight=1):
        """Add `value` (a scalar, 0-dim array or Variable) with `weight` (default 1)
        to the running sums; arrays stay on their device.
        Chainer: chainer.reporter.Summary.add.
        """
        if isinstance(value, Variable):
            value = value.data
        if isinstance(weight, Variable):     # a 0-dim Variable, as Chainer takes
            weight = weight.data
        if not isinstance(value, np.ndarray) and isinstance(value, _array_types) and \
                value.ndim == 0:
            # On the GPU: both sums in one launch, in float64, on the device.
            if not isinstance(self._x, _array_types):
                self._x = _xp(value).asarray(self._x, dtype=np.float64)
                self._x2 = _xp(value).asarray(self._x2, dtype=np.float64)
            self.gpu_kernel(value=value.reshape(()), weight=float(weight), x=self._x,
                            x2=self._x2)
            self._n += weight
            return
        self._x = self._x + weight * value
        self._x2 = self._x2 + weight * value * value
        self._n += weight

    # The two sums of add on a GPU, in one launch (a _FusedKernel, Chapter 13).
    gpu_kernel = _FusedKernel('summary_add', 'T value, float64 weight',
                              'float64 x, float64 x2', '''
        double v = value;
        x += weight * v;
        x2 += weight * v * v;''')

    def compute_mean(self):
        """The weighted mean of the added values: a float for scalars (NaN if
        none), an array of their shape for arrays (as Chainer, elementwise).
        Chainer: chainer.reporter.Summary.compute_mean.
        """
        _raise_deferred_errors()     # a bad label seen on a GPU surfaces here
        if not self._n:
            return float('nan')
        if getattr(self._x, 'ndim', 0):
            return self._x / self._n
        return float(float(self._x) / self._n)

    def make_statistics(self):
        """(mean, standard deviation) of the added values: floats, or arrays
        for arrays. Chainer: chainer.reporter.Summary.make_statistics.
        """
        mean = self.compute_mean()
        if getattr(mean, 'ndim', 0):
            xp = _xp(mean)
            return mean, xp.sqrt(xp.maximum(self._x2 / self._n - mean * mean, 0.0))
        variance = float(self._x2) / self._n - mean * mean if self._n else float('nan')
        return mean, math.sqrt(max(variance, 0.0))

    def serialize(self, serializer):
        """Save or load the running sums and the count.
        Chainer: chainer.reporter.Summary.serialize.
        """
        for name in ('_x', '_x2'):
            value = getattr(self, name)
            if getattr(value, 'ndim', 0):          # sums of arrays stay arrays
                setattr(self, name, serializer(name, value))
            else:
                setattr(self, name, np.float64(serializer(name, float(value))))
        self._n = serializer('_n', self._n)


@_export('reporter')
class DictSummary:
    """A Summary per key of the dicts added to it.
    Chainer: chainer.reporter.DictSummary.
    """

    def __init__(self):
        self._summaries = collections.defaultdict(Summary)

    def add(self, d):
        """Add each scalar value of the dict `d` (a value may be a (value, weight)
        pair) to the Summary of its key; non-scalar values are ignored.
        Chainer: chainer.reporter.DictSummary.add.
        """
        for key, value in d.items():
            weight = 1
            if isinstance(value, tuple) and len(value) == 2:
                value, weight = value
                if isinstance(weight, Variable):
                    weight = weight.data
                if np.ndim(weight) != 0:
                    raise ValueError('DictSummary.add: the weight of {!r} must be a scalar, '
                                     'got shape {}'.format(key, np.shape(weight)))
            if isinstance(value, Variable):
                value = value.data
            if isinstance(value, (int, float, np.number)) or \
                    isinstance(value, _array_types) and value.size == 1:
                self._summaries[key].add(value, weight)

    def compute_mean(self):
        """{key: mean} for every key added. Chainer: chainer.reporter.DictSummary.compute_mean."""
        return {key: s.compute_mean() for key, s in self._summaries.items()}

    def make_statistics(self):
        """{key: mean, key + '.std': standard deviation} for every key added.
        Chainer: chainer.reporter.DictSummary.make_statistics.
        """
        stats = {}
        for key, s in self._summaries.items():
            mean, std = s.make_statistics()
            stats[key] = mean
            stats[key + '.std'] = std
        return stats

    def serialize(self, serializer):
        """Save or load every key's Summary; loading replaces what was summed.
        Chainer: chainer.reporter.DictSummary.serialize.
        """
        if not isinstance(serializer, Deserializer):
            names = list(self._summaries)
            serializer('_names', json.dumps(names))
            for i, key in enumerate(names):
                self._summaries[key].serialize(serializer['_summaries'][str(i)])
            return
        # Loading: the file says which keys there are, and what was summed
        # here before goes (as in Chainer).  A checking pass must follow the
        # file's names too, but leaves this summary alone.
        names = serializer.stored('_names')
        if names is None:                 # not in the file, and strict=False
            return
        names = json.loads(names)
        loaded = collections.defaultdict(Summary)
        for i, key in enumerate(names):
            loaded[key].serialize(serializer['_summaries'][str(i)])
        if not serializer.check_only:
            self._summaries = loaded


# =============================================================================
# Chapter 17. Gradient check
# =============================================================================


# The test every backward must pass: the derivative is the limit of
#
#     (f(x + eps) - f(x - eps)) / (2 eps)
#
# so nudging the inputs both ways and watching the outputs gives a numerical
# derivative to compare with the one backward computes.  Nudging each element
# in turn (numerical_grad) costs two forward passes per element: hours for a
# large input.  check_backward, as Chainer's, nudges all of them at once along
# one random direction d instead: the derivative of t -> f(x + t d) at t = 0
# must be gx . d, the dot product of backward's gradient with d.  A wrong
# gradient would have to be wrong exactly orthogonally to a random d to pass.

@_export('gradient_check')
class NondifferentiableError(Exception):
    """Raised by numerical_grad and check_backward with
    detect_nondifferentiable=True when f has a kink, jump or change of
    finiteness within eps of the point. Chainer: gradient_check.NondifferentiableError.
    """


def _central_difference(outputs_at, grad_outputs, eps, detect_nondifferentiable=False,
                        diff_atol=0, diff_rtol=1e-2, where='x'):
    """The derivative at t = 0 of sum(outputs_at(t) * grad_outputs), in float64.
    outputs_at(t): a list of arrays.  Two points (t = -eps, +eps) by default;
    with detect_nondifferentiable five (-eps, -eps/2, 0, eps/2, eps), which are
    first checked to lie on one smooth curve (see _check_smooth), and the
    derivative is the five-point one, exact up to eps**4."""
    if not detect_nondifferentiable:
        samples = [outputs_at(-eps), outputs_at(eps)]
        weights = (-1.0 / (2 * eps), 1.0 / (2 * eps))
    else:
        samples = [outputs_at(t) for t in (-eps, -eps / 2, 0.0, eps / 2, eps)]
        _check_smooth(samples, eps, diff_atol, diff_rtol, where)
        samples = samples[:2] + samples[3:]
        weights = tuple(w / (6 * eps) for w in (1.0, -8.0, 8.0, -1.0))
    total = 0
    for i, gy in enumerate(grad_outputs):
        if gy is None:
            continue
        change = sum(w * ys[i] for w, ys in zip(weights, samples))
        total = total + (change * gy.astype(np.float64, copy=False)).sum()
    return total


def _check_smooth(samples, eps, diff_atol, diff_rtol, where):
    # Five samples of a function differentiable at t = 0 lie on a parabola,
    # up to eps**3: an output whose samples change finiteness, or miss their
    # least-squares parabola by more than diff_atol + diff_rtol * their
    # spread (root mean square), crosses a kink or a jump.
    t = np.vander(np.arange(5.0) - 2, 3)
    for i in range(len(samples[0])):
        stack = _to_cpu(_xp(samples[0][i]).stack([ys[i] for ys in samples])).reshape(5, -1)
        if stack.size == 0:
            continue
        finite = np.isfinite(stack)
        problem = None
        if (finite != finite[:1]).any():
            problem = 'turns non-finite'
        elif finite.all():
            fit, _, _, _ = np.linalg.lstsq(t, stack, rcond=None)
            misfit = np.sqrt(((t @ fit - stack) ** 2).mean(axis=0))
            spread = stack.max(axis=0) - stack.min(axis=0)
            if ((misfit > diff_atol + diff_rtol * spread) & (spread > 0)).any():
                problem = 'has a kink or jump'
        if problem:
            raise NondifferentiableError(
                'numerical gradient: output {} {} within eps={} of the point, moving {}; '
                'samples at -eps, -eps/2, 0, eps/2, eps:\n{}'.format(
                    i, problem, eps, where, stack[:, :8]))


@_export('gradient_check')
def numerical_grad(f, inputs, grad_outputs, eps=1e-3, detect_nondifferentiable=False,
                   diff_atol=0, diff_rtol=1e-2, center_outputs=None):
    """Numerical gradients of sum(f() * grad_outputs) w.r.t. each array in
    `inputs`, by central differences (f(x + eps) - f(x - eps)) / (2 eps) taken
    element by element (two calls of f per element). f takes no arguments,
    reads the arrays of `inputs` (modified and restored in place) and returns
    a sequence of arrays; grad_outputs: one array (or None) per output. eps
    default 1e-3. detect_nondifferentiable (default False): sample five
    points per element and raise NondifferentiableError where they are not
    on one smooth curve (tolerance diff_atol + diff_rtol * their spread).
    center_outputs is accepted and ignored (as in Chainer). Returns a tuple
    of float64 arrays shaped like the inputs. Raises ValueError unless eps > 0.
    Chainer: chainer.gradient_check.numerical_grad.
    """
    if eps <= 0:
        raise ValueError('numerical_grad: eps must be positive, got {}'.format(eps))
    grads = []
    for k, x in enumerate(inputs):
        gx = _xp(x).zeros(x.shape, np.float64)
        for index in np.ndindex(*x.shape):
            original = x[index].copy()

            def outputs_at(t):
                x[index] = original + t
                try:
                    return [_xp(y).array(y, dtype=np.float64) for y in f()]
                finally:
                    x[index] = original
            gx[index] = _central_difference(outputs_at, grad_outputs, eps,
                                            detect_nondifferentiable, diff_atol, diff_rtol,
                                            'input {} at {}'.format(k, index))
        grads.append(gx)
    return tuple(grads)


def _random_direction(shapes):
    """Arrays of `shapes` (host NumPy, float64) together of length 1, drawn
    at random from a fixed seed: the same direction on every run, and the
    global numpy.random stream (which the code under test may use) is left
    alone.  Each element gets at least 1/10 of an even share, so no element
    can be left out of the check."""
    sizes = [int(np.prod(shape)) for shape in shapes]
    total = sum(sizes)
    d = np.random.RandomState(21).normal(size=total)
    if total:
        d = np.copysign(np.sqrt(0.99 * d * d / (d * d).sum() + 0.01 / total), d)
    parts = np.split(d, np.cumsum(sizes)[:-1]) if sizes else []
    return [part.reshape(shape) for part, shape in zip(parts, shapes)]


@_export('gradient_check')
def check_backward(func, x_data, y_grad, params=(), eps=1e-3, atol=1e-5,
                   rtol=1e-4, no_grads=None, dtype=None, detect_nondifferentiable=False,
                   elementwise=False):
    """Assert that the backward of `func` matches numerical gradients.

    func: takes Variables, returns a Variable or a tuple. x_data: an array or a
    tuple of arrays (integer ones, such as labels, are not differentiated
    unless no_grads says otherwise). y_grad: the output gradient(s), or None
    for a single-valued output. params: a Parameter or a sequence of them,
    used by func, also checked. eps default 1e-3; dtype: cast float inputs
    and params first. As in Chainer, the check is along one random direction
    d (drawn from a fixed seed, unlike Chainer's from numpy.random, so the
    check never moves the caller's random stream) over all checked inputs and
    params: the numerical
    derivative of t -> func(x + t d) must match sum(gx * d) within
    allclose(atol=1e-5, rtol=1e-4) by default; it costs a few forward passes
    whatever the size.  elementwise=True (not in Chainer) compares every
    element's numerical gradient instead, two forward passes per element.
    detect_nondifferentiable (default False): raise NondifferentiableError
    when func has a kink or jump within eps of x (five samples per derivative).
    Raises AssertionError naming the input or parameter whose gradient is
    wrong, and ValueError for y_grad None with a non-scalar output, for
    y_grad not of the outputs' number and shapes, for no_grads not of the
    inputs' number and for a dtype that is not float.
    Chainer: chainer.gradient_check.check_backward.
    """
    xs = tuple(x_data) if isinstance(x_data, (tuple, list)) else (x_data,)
    params = (params,) if isinstance(params, Variable) else tuple(params)  # one Parameter: a 1-tuple
    if dtype is not None and np.dtype(dtype).kind != 'f':
        raise ValueError('check_backward: dtype must be a float dtype, got {}'.format(dtype))
    if no_grads is not None and len(no_grads) != len(xs):
        raise ValueError('check_backward: no_grads has {} entries for {} inputs'.format(
            len(no_grads), len(xs)))
    if dtype is not None:
        xs = tuple(x.astype(dtype) if x.dtype.kind == 'f' else x for x in xs)
        for p in params:
            p.data = p.data.astype(dtype)
    if no_grads is None:
        no_grads = [x.dtype.kind != 'f' for x in xs]
    variables = [Variable(x.copy(), requires_grad=not ng) for x, ng in zip(xs, no_grads)]
    ys = func(*variables)
    ys = ys if isinstance(ys, tuple) else (ys,)
    if y_grad is None:
        if any(y.size != 1 for y in ys):
            raise ValueError('check_backward: y_grad is None, so every output must '
                             'hold one value; got shapes {}'.format([y.shape for y in ys]))
        y_grads = tuple(_xp(y.data).ones_like(y.data) for y in ys)
    else:
        y_grads = tuple(y_grad) if isinstance(y_grad, (tuple, list)) else (y_grad,)
        if len(y_grads) != len(ys) or any(g is not None and g.shape != y.shape
                                          for g, y in zip(y_grads, ys)):
            raise ValueError('check_backward: y_grad must give one gradient per output, of its '
                             'shape: outputs {}, y_grad {}'.format(
                                 [y.shape for y in ys],
                                 [None if g is None else g.shape for g in y_grads]))
        if dtype is not None:
            y_grads = tuple(g if g is None else g.astype(dtype) for g in y_grads)
    for param in params:
        param.cleargrad()
    for y, gy in zip(ys, y_grads):
        y.grad = gy
    _backprop(list(ys), retain_grad=False)

    checked = [v for v in variables if v.requires_grad] + list(params)
    names = ['input {}'.format(i) for i, v in enumerate(variables) if v.requires_grad] + \
        ['parameter {!r}'.format(p.name) for p in params]
    backward = [_to_cpu(v.grad) if v.grad is not None else np.zeros(v.shape, v.dtype)
                for v in checked]

    def outputs():
        with no_backprop_mode():
            out = func(*[Variable(v.data) for v in variables])
        return [_xp(y.data).array(y.data, dtype=np.float64)
                for y in (out if isinstance(out, tuple) else (out,))]

    if elementwise:
        numeric = numerical_grad(outputs, [v.data for v in checked], y_grads, eps,
                                 detect_nondifferentiable, diff_rtol=rtol)
        for name, actual, expected in zip(names, backward, numeric):
            expected = _to_cpu(expected)
            if actual.shape != expected.shape or not np.allclose(actual, expected, atol=atol,
                                                                 rtol=rtol):
                raise AssertionError(
                    'check_backward: the gradient of {} does not match the numerical one '
                    '(max abs error {:.3g}, atol={}, rtol={})\nbackward:\n{}\nnumerical:\n{}'
                    .format(name, float(np.abs(actual - expected).max()) if actual.shape
                            == expected.shape else float('inf'), atol, rtol, actual, expected))
        return

    for name, actual, v in zip(names, backward, checked):
        if actual.shape != v.shape:
            raise AssertionError('check_backward: the gradient of {} has shape {}, the {} '
                                 'has shape {}'.format(name, actual.shape, name, v.shape))
    directions = _random_direction([v.shape for v in checked])
    originals = [v.data for v in checked]
    on_device = [_xp(x).asarray(d) for x, d in zip(originals, directions)]

    def along(moved):
        # The numerical derivative of func along the direction, moving only
        # the checked variables in `moved`, and backward's (sum of gx . d).
        def outputs_at(t):
            for k in moved:
                x = originals[k]
                checked[k].data = _xp(x).asarray(x.astype(np.float64) + t * on_device[k],
                                                 dtype=x.dtype)     # (0-dim stays an array)
            try:
                return outputs()
            finally:
                for k in moved:
                    checked[k].data = originals[k]
        numeric = float(_central_difference(
            outputs_at, y_grads, eps, detect_nondifferentiable, 0, rtol,
            'along a random direction of ' + ', '.join(names[k] for k in moved)))
        analytic = float(sum((backward[k].astype(np.float64) * directions[k]).sum()
                             for k in moved))
        return numeric, analytic

    numeric, analytic = along(range(len(checked)))
    if np.isclose(analytic, numeric, atol=atol, rtol=rtol):
        return
    # Which one is wrong?  The same check with one variable moved at a time.
    wrong = []
    for k in range(len(checked)):
        numeric_k, analytic_k = along([k])
        if not np.isclose(analytic_k, numeric_k, atol=atol, rtol=rtol):
            wrong.append('{} (numerical {:.6g}, backward {:.6g})'.format(
                names[k], numeric_k, analytic_k))
    raise AssertionError(
        'check_backward: the gradient of {} does not match the numerical one along a '
        'random direction d: numerical derivative {:.6g}, backward sum(gx * d) {:.6g} '
        '(atol={}, rtol={}, eps={}); elementwise=True compares every element'.format(
            ', '.join(wrong) or 'all inputs and parameters together', numeric, analytic,
            atol, rtol, eps))


@_export('gradient_check', 'testing')
def assert_allclose(x, y, atol=1e-5, rtol=1e-4, verbose=True):
    """numpy.testing.assert_allclose on arrays from either device.
    Chainer: testing.assert_allclose (also in gradient_check)."""
    np.testing.assert_allclose(_to_cpu(as_array(x)), _to_cpu(as_array(y)),
                               atol=atol, rtol=rtol, verbose=verbose)


@_export('utils')
def force_array(x, dtype=None):
    """x as an array: NumPy turns 0-dim results into scalars, this turns them
    back (cast to dtype if given). Chainer: chainer.utils.force_array.
    """
    if isinstance(x, _array_types):
        return x if dtype is None else x.astype(dtype, copy=False)
    return np.asarray(x, dtype=dtype)


@_export('utils')
def force_type(dtype, value):
    """`value` as an array of `dtype` (a scalar becomes a 0-dim array).  Chainer: utils.force_type."""
    if isinstance(value, _array_types):
        return value if value.dtype == dtype else value.astype(dtype)
    return np.asarray(value, dtype=dtype)


@_export('utils')
@contextlib.contextmanager
def tempdir(**kwargs):
    """A temporary folder for a `with` block, removed afterwards.  Chainer: utils.tempdir."""
    folder = tempfile.mkdtemp(**kwargs)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@_export('utils', 'utils.experimental')
def experimental(api_name):
    """Chainer warns that an API is experimental; nothing here is, so this does nothing."""


def _size_of_shape(shape):
    """The number of elements of an array of `shape` (a tuple of ints), an int.
    Chainer: chainer.utils.size_of_shape."""
    return int(np.prod(shape))
_export('utils.array', size_of_shape=_size_of_shape)
_export('utils', size_of_shape=_size_of_shape)


# =============================================================================
# Chapter 19. Data: datasets, downloading, iterators, batching
# =============================================================================


# Training needs a steady stream of minibatches, and Chainer splits that job
# into three small pieces that can be swapped independently:
#
#   * a *dataset* is anything with __len__ and __getitem__ (a NumPy array is
#     one); TupleDataset zips datasets together, SubDataset takes a window of
#     one without copying it;
#   * an *iterator* decides which examples form the next batch and keeps the
#     bookkeeping a trainer needs (epoch, position, "did an epoch just end?");
#   * a *converter* (concat_examples) turns the list of examples an iterator
#     returns into stacked arrays on the right device.
#
# MNIST and Fashion-MNIST come as IDX files, a tiny format: a 4-byte magic
# number (two zero bytes, a type code, the number of dimensions), one
# big-endian uint32 per dimension, then the raw numbers.  Files are taken from
# $ONEFCHAINER_DATASET_ROOT/<name>/ (default ~/.onefchainer/dataset) and
# downloaded there when missing.  Every file is checked against the SHA-256 of
# its official decompressed content, so a truncated download, a proxy's HTML
# error page or a wrong file can never silently become training data.

# --- Datasets ----------------------------------------------------------------

def _example_positions(index, length, owner):
    """What `index` means in NumPy for a dataset of `length` examples: an
    int position (negative ones count from the end), or an array of them for
    a slice, a list or array of ints, or a boolean mask of one entry per
    example.  Raises IndexError (TypeError for other kinds of index) naming
    `owner` and the index as given."""
    if isinstance(index, slice):
        return np.arange(*index.indices(length))
    if isinstance(index, (list, np.ndarray)):
        positions = np.asarray(index)
        if positions.ndim == 0:
            return _example_positions(positions.item(), length, owner)
        if positions.dtype == np.bool_:
            if positions.shape != (length,):
                raise IndexError('{}: a boolean mask needs one entry per example, shape '
                                 '({},), got shape {}'.format(owner, length, positions.shape))
            return np.flatnonzero(positions)
        if positions.size == 0:
            return positions.astype(np.intp).reshape(-1)
        if positions.ndim != 1 or positions.dtype.kind not in 'iu':
            raise IndexError('{}: an index array must be 1-d, of ints or bools, got {!r}'
                             .format(owner, index))
        outside = (positions < -length) | (positions >= length)
        if outside.any():
            raise IndexError('{}: index {} out of range for length {} (in {})'.format(
                owner, positions[outside][0], length, positions.tolist()))
        return positions % length
    if isinstance(index, (int, np.integer)) and not isinstance(index, (bool, np.bool_)):
        if not -length <= index < length:
            raise IndexError('{}: index {} out of range for length {}'.format(owner, index, length))
        return int(index) % length
    raise TypeError('{}: an index must be an int, a slice, a list or array of ints or a '
                    'boolean mask, got {!r}'.format(owner, index))


def _take_examples(dataset, indices):
    """Return the examples at `indices` (integers) as a list.

    Our own dataset classes answer a whole index array at once (`_take`),
    which saves a Python-level __getitem__ call (and a tuple build) per
    example; measured on MNIST-sized data, SerialIterator.next plus
    concat_examples for a batch of 100 takes about 150 us this way against
    240 us one example at a time.  Array rows are taken as views, not
    fancy-indexed: concat_examples copies them anyway, and a fancy-indexed
    copy would be a second 300 kB copy.
    """
    if isinstance(dataset, (TupleDataset, SubDataset)):
        return dataset._take(indices)
    return [dataset[i] for i in np.asarray(indices).tolist()]  # ints: fastest


@_export('datasets', 'datasets.tuple_dataset')
class TupleDataset:
    """Dataset of tuples: example i is (datasets[0][i], datasets[1][i], ..).
    Chainer: chainer.datasets.TupleDataset.
    """

    def __init__(self, *datasets):
        if not datasets:
            raise ValueError('TupleDataset needs at least one dataset')
        lengths = [len(dataset) for dataset in datasets]
        if len(set(lengths)) != 1:
            raise ValueError('TupleDataset needs datasets of equal length, '
                             'but got lengths {}'.format(lengths))
        self._datasets = datasets
        self._length = lengths[0]

    def __getitem__(self, index):
        # As in Chainer: a slice gives a list of example tuples; anything
        # else (an int, an index array) a tuple of what each dataset gives,
        # so that `x, t = train[[3, 5, 8]]` works.
        if isinstance(index, slice):
            return list(zip(*[dataset[index] for dataset in self._datasets]))
        return tuple(dataset[index] for dataset in self._datasets)

    def _take(self, indices):
        return list(zip(*[_take_examples(dataset, indices) for dataset in self._datasets]))

    def __len__(self):
        return self._length


@_export('datasets', 'datasets.sub_dataset')
class SubDataset:
    """The examples start..finish-1 of `dataset`, optionally seen through a
    permutation `order` of the whole base dataset.  Nothing is copied.
    Chainer: chainer.datasets.SubDataset.
    """

    def __init__(self, dataset, start, finish, order=None):
        if not 0 <= start <= finish <= len(dataset):
            raise ValueError(
                'SubDataset needs 0 <= start <= finish <= len(dataset), but '
                'got start={}, finish={}, len(dataset)={}'.format(
                    start, finish, len(dataset)))
        if order is not None and len(order) != len(dataset):
            raise ValueError(
                'order must have the length of the base dataset ({}), but '
                'has length {}'.format(len(dataset), len(order)))
        self._dataset = dataset
        self._start = start
        self._size = finish - start
        self._order = None if order is None else np.asarray(order)

    def __len__(self):
        return self._size

    def __getitem__(self, index):
        positions = _example_positions(index, self._size, 'SubDataset')
        if not isinstance(positions, np.ndarray):
            return self._dataset[self._base_positions(positions)]
        return self._take(positions)     # a list of examples, as in Chainer

    def _take(self, indices):
        positions = self._base_positions(np.asarray(indices, dtype=np.intp))
        return _take_examples(self._dataset, positions)

    def _base_positions(self, index):
        # Works on one int and on an index array alike, so a whole batch is
        # translated into base-dataset positions with a few vector operations.
        if np.any((index < -self._size) | (index >= self._size)):
            raise IndexError('index {} is out of range for a SubDataset of '
                             'length {}'.format(index, self._size))
        index = index % self._size + self._start  # % wraps negative indices
        return index if self._order is None else self._order[index]


@_export('datasets', 'datasets.sub_dataset')
def split_dataset(dataset, split_at, order=None):
    """Split `dataset` into its first `split_at` examples and the rest.
    Chainer: chainer.datasets.split_dataset.
    """
    if not isinstance(split_at, (int, np.integer)):
        raise TypeError('split_dataset: split_at must be an integer, but got {!r}'
                        .format(split_at))
    total = len(dataset)
    if not 0 <= split_at <= total:
        raise ValueError('split_dataset: split_at must be between 0 and the dataset '
                         'length {}, but got {}'.format(total, split_at))
    return (SubDataset(dataset, 0, split_at, order),
            SubDataset(dataset, split_at, total, order))


@_export('datasets', 'datasets.sub_dataset')
def split_dataset_random(dataset, first_size, seed=None):
    """Like split_dataset, but over a random permutation (reproducible with
    `seed`; the same seed gives the same split as Chainer)."""
    order = np.random.RandomState(seed).permutation(len(dataset))
    return split_dataset(dataset, first_size, order)


# ----- chainer.dataset and chainer.datasets ------------------------------------

@_export('dataset', 'dataset.dataset_mixin')
class DatasetMixin:
    """Base class for a dataset written as get_example(i): indexing with an
    int, a slice or a list of ints calls it.  Chainer: dataset.DatasetMixin."""

    def __getitem__(self, index):
        # An int goes to get_example as given (as in Chainer: len is not needed)
        if isinstance(index, (slice, list, np.ndarray)):
            positions = _example_positions(index, len(self), type(self).__name__)
            if isinstance(positions, np.ndarray):
                return [self.get_example(i) for i in positions.tolist()]
            index = positions
        return self.get_example(index)

    def __len__(self):
        raise NotImplementedError('{}: define __len__'.format(type(self).__name__))

    def get_example(self, i):
        """Return example `i` (0 <= i < len(self)); write this in a subclass.
        Chainer: chainer.dataset.DatasetMixin.get_example.
        """
        raise NotImplementedError('{}: define get_example(i)'.format(type(self).__name__))


@_export('dataset', 'dataset.convert')
class Converter:
    """A batch converter object: `converter(batch, device)`.  Chainer:
    dataset.Converter (made with the @converter() decorator)."""

    def __init__(self, function=None):
        self._function = function

    def __call__(self, batch, device=None):
        """Convert `batch` (a list of examples) to arrays on `device`."""
        return self._function(batch, device)


@_export('dataset', 'dataset.convert')
def converter():
    """Decorator that turns `f(batch, device)` into a Converter.  Chainer: dataset.converter."""
    return Converter


@_export('dataset', 'dataset.download')
def cache_or_load_file(path, creator, loader):
    """loader(path) if the file exists, else creator(path) (which writes it
    and returns the data).  Chainer: dataset.cache_or_load_file."""
    if os.path.exists(path):
        return loader(path)
    folder = os.path.dirname(path) or '.'
    os.makedirs(folder, exist_ok=True)
    return creator(path)


@_export('datasets', 'datasets.dict_dataset')
class DictDataset:
    """Dataset of dicts: example i is {key: dataset[i] for each keyword
    dataset}.  Chainer: datasets.DictDataset."""

    def __init__(self, **datasets):
        if not datasets:
            raise ValueError('DictDataset needs at least one dataset')
        lengths = {key: len(d) for key, d in datasets.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError('DictDataset needs datasets of equal length, but got {}'
                             .format(lengths))
        self._datasets = datasets
        self._length = next(iter(lengths.values()))

    def __getitem__(self, index):
        batches = {key: d[index] for key, d in self._datasets.items()}
        if isinstance(index, slice):
            return [dict(zip(batches, values)) for values in zip(*batches.values())]
        return batches

    def __len__(self):
        return self._length


@_export('datasets', 'datasets.transform_dataset')
class TransformDataset:
    """`transform(dataset[i])` for each example, computed when asked.
    Chainer: datasets.TransformDataset."""

    def __init__(self, dataset, transform):
        self._dataset = dataset
        self._transform = transform

    def __getitem__(self, index):
        if isinstance(index, (slice, list, np.ndarray)):
            positions = _example_positions(index, len(self), 'TransformDataset')
            if isinstance(positions, np.ndarray):     # one transform per example
                return [self._transform(self._dataset[i]) for i in positions.tolist()]
            index = positions
        return self._transform(self._dataset[index])

    def __len__(self):
        return len(self._dataset)


@_export('datasets', 'datasets.concatenated_dataset')
class ConcatenatedDataset:
    """The examples of several datasets, one after another.  Chainer:
    datasets.ConcatenatedDataset."""

    def __init__(self, *datasets):
        self._datasets = datasets
        self._ends = np.cumsum([len(d) for d in datasets])

    def __len__(self):
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, index):
        index = _example_positions(index, len(self), 'ConcatenatedDataset')
        if isinstance(index, np.ndarray):
            return [self[i] for i in index.tolist()]
        which = int(np.searchsorted(self._ends, index, side='right'))
        start = 0 if which == 0 else int(self._ends[which - 1])
        return self._datasets[which][index - start]


@_export('datasets', 'datasets.sub_dataset')
def split_dataset_n(dataset, n, order=None):
    """A list of n SubDatasets of dataset, each of len(dataset) // n examples
    (the last len(dataset) % n are in none, as Chainer documents), in the given
    `order` (an index array; default the dataset's own order).
    Chainer: chainer.datasets.split_dataset_n."""
    size = len(dataset) // n
    return [SubDataset(dataset, size * i, size * (i + 1), order) for i in range(n)]


@_export('datasets', 'datasets.sub_dataset')
def split_dataset_n_random(dataset, n, seed=None):
    """split_dataset_n over a random permutation of dataset, drawn from
    numpy.random.RandomState(seed) (seed None: a fresh one); the same seed
    picks the same examples as Chainer's.
    Chainer: chainer.datasets.split_dataset_n_random."""
    return split_dataset_n(dataset, n, np.random.RandomState(seed).permutation(len(dataset)))


@_export('datasets', 'datasets.sub_dataset')
def get_cross_validation_datasets(dataset, n_folds=None, order=None, **kwargs):
    """n_folds (train, test) pairs of SubDatasets covering the dataset.  The
    parts are len(dataset) * i // n_folds apart; as in Chainer, the first
    pair tests on the LAST part and trains on the rest in order, and each
    next pair rotates the order right by its test part, so pair k tests on
    the k-th part from the end.  Chainer: datasets.get_cross_validation_datasets."""
    n_folds = kwargs.get('n_fold', n_folds)
    order = np.arange(len(dataset)) if order is None else np.asarray(order)
    total = len(dataset)
    bounds = [total * i // n_folds for i in range(n_folds + 1)]
    splits = []
    for i in reversed(range(n_folds)):
        test_size = bounds[i + 1] - bounds[i]
        splits.append(split_dataset(dataset, total - test_size, order))
        order = np.roll(order, test_size)    # the test part moves to the front
    return splits


@_export('datasets', 'datasets.sub_dataset')
def get_cross_validation_datasets_random(dataset, n_folds, seed=None, **kwargs):
    """get_cross_validation_datasets over a random permutation of dataset,
    drawn from numpy.random.RandomState(seed); returns n_folds (train, test)
    pairs of SubDatasets.  Chainer: chainer.datasets.get_cross_validation_datasets_random."""
    order = np.random.RandomState(seed).permutation(len(dataset))
    return get_cross_validation_datasets(dataset, n_folds, order)


# --- Image files -------------------------------------------------------------
# Image datasets read one file per example, when the example is asked for, so a
# folder of photos larger than memory can feed a trainer.  Pillow decodes the
# files; it is imported only here, so onefchainer itself needs only NumPy.
# An image comes out as Chainer's convolutions want it: channels first,
# (C, H, W), with C = 1 for grey-scale files.

def _pillow_image(dataset_name):
    """Pillow's Image module, or ImportError saying how to get it."""
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError('{} reads image files with Pillow, which cannot be imported ({}); '
                          'install it: pip install Pillow'.format(dataset_name, e)) from None
    return Image


def _read_image_chw(Image, file, dtype):
    """The image in `file` (a path or a file object) as a (C, H, W) array."""
    with Image.open(file) as f:
        image = np.asarray(f, dtype=dtype)
    if image.ndim == 2:                      # grey-scale: one channel
        image = image[:, :, None]
    return image.transpose(2, 0, 1)          # a view, as in Chainer


def _read_label_file(path):
    """[(image path, int label)] from a Caffe-style file: "path label" a line."""
    pairs = []
    with open(path) as lines:
        for i, line in enumerate(lines):
            fields = line.split()
            if len(fields) != 2:
                raise ValueError('invalid format at line {} in file {}: expected "path label", '
                                 'got {!r}'.format(i, path, line.rstrip('\n')))
            pairs.append((fields[0], int(fields[1])))
    return pairs


@_export('datasets', 'datasets.image_dataset')
class ImageDataset(DatasetMixin):
    """Images read from files, one per example, when indexed.

    paths: a list of file paths, or the path of a text file listing them one
    a line; each is relative to `root` (default '.').  dtype: of the arrays
    (default config.dtype).  Example i is an array (C, H, W) of the pixel
    values as stored (0..255 for 8-bit files, not scaled).  Needs Pillow
    (ImportError at construction without it).  Chainer: datasets.ImageDataset.
    """

    def __init__(self, paths, root='.', dtype=None):
        self._image = _pillow_image('ImageDataset')
        if isinstance(paths, str):
            with open(paths) as lines:
                paths = [line.strip() for line in lines]
        self._paths = paths
        self._root = root
        self._dtype = get_dtype(dtype)

    def __len__(self):
        return len(self._paths)

    def get_example(self, i):
        return _read_image_chw(self._image, os.path.join(self._root, self._paths[i]), self._dtype)


@_export('datasets', 'datasets.image_dataset')
class LabeledImageDataset(DatasetMixin):
    """(image, label) pairs, the image read from its file when indexed.

    pairs: a list of (path, int label), or the path of a text file with
    "path label" on each line (Caffe's format; ValueError naming the line
    otherwise); paths are relative to `root`.  Example i is ((C, H, W) array
    of dtype `dtype`, default config.dtype; 0-d label array of `label_dtype`,
    default int32).  Needs Pillow.  Chainer: datasets.LabeledImageDataset.
    """

    def __init__(self, pairs, root='.', dtype=None, label_dtype=np.int32):
        self._image = _pillow_image('LabeledImageDataset')
        self._pairs = _read_label_file(pairs) if isinstance(pairs, str) else pairs
        self._root = root
        self._dtype = get_dtype(dtype)
        self._label_dtype = label_dtype

    def __len__(self):
        return len(self._pairs)

    def get_example(self, i):
        path, label = self._pairs[i]
        image = _read_image_chw(self._image, os.path.join(self._root, path), self._dtype)
        return image, np.array(label, dtype=self._label_dtype)


@_export('datasets', 'datasets.image_dataset')
class ZippedImageDataset(DatasetMixin):
    """Images read from one zip archive (every file in it, in the archive's
    order; folders skipped), when indexed: one large file instead of many
    small ones.  Example i (or the member named i) is a (C, H, W) array of
    `dtype` (default config.dtype).  Needs Pillow.
    Chainer: datasets.ZippedImageDataset.
    """

    def __init__(self, zipfilename, dtype=None):
        import threading
        import zipfile      # plumbing the image datasets alone need
        self._image = _pillow_image('ZippedImageDataset')
        self._zipfilename = zipfilename
        self._zip = zipfile.ZipFile(zipfilename)
        self._zip_pid = os.getpid()
        self._paths = [name for name in self._zip.namelist() if not name.endswith('/')]
        self._dtype = get_dtype(dtype)
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._paths)

    # An open ZipFile cannot be pickled, and one shared with a forked worker
    # process would share its file position: each process opens its own.
    def __getstate__(self):
        state = dict(self.__dict__, _zip=None, _lock=None, _image=None)
        return state

    def __setstate__(self, state):
        import threading
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._image = _pillow_image('ZippedImageDataset')

    def get_example(self, i_or_name):
        import zipfile
        name = i_or_name if isinstance(i_or_name, str) else self._paths[i_or_name]
        with self._lock:                     # one ZipFile read at a time (threads)
            if self._zip is None or self._zip_pid != os.getpid():
                self._zip = zipfile.ZipFile(self._zipfilename)
                self._zip_pid = os.getpid()
            data = self._zip.read(name)
        return _read_image_chw(self._image, io.BytesIO(data), self._dtype)


@_export('datasets', 'datasets.image_dataset')
class LabeledZippedImageDataset(DatasetMixin):
    """(image, label) pairs: the images in a zip archive, the pairs in a label
    file of "member-name label" lines (as LabeledImageDataset's).  Example i
    is ((C, H, W) array of `dtype`, 0-d label array of `label_dtype`, default
    int32).  Needs Pillow.  Chainer: datasets.LabeledZippedImageDataset.
    """

    def __init__(self, zipfilename, labelfilename, dtype=None, label_dtype=np.int32):
        self._pairs = _read_label_file(labelfilename)
        self._label_dtype = label_dtype
        self._images = ZippedImageDataset(zipfilename, dtype=dtype)

    def __len__(self):
        return len(self._pairs)

    def get_example(self, i):
        name, label = self._pairs[i]
        return self._images.get_example(name), np.array(label, dtype=self._label_dtype)


@_export('datasets', 'datasets.image_dataset')
class MultiZippedImageDataset(DatasetMixin):
    """The images of several zip archives, one archive after another (each a
    ZippedImageDataset).  Chainer: datasets.MultiZippedImageDataset."""

    def __init__(self, zipfilenames, dtype=None):
        self._archives = [ZippedImageDataset(name, dtype) for name in zipfilenames]
        self._ends = np.cumsum([len(a) for a in self._archives]).tolist()

    def __len__(self):
        return self._ends[-1] if self._ends else 0

    def get_example(self, i):
        which = int(np.searchsorted(self._ends, i, side='right'))
        start = self._ends[which - 1] if which else 0
        return self._archives[which].get_example(i - start)


# --- IDX files ---------------------------------------------------------------

@_export('datasets')
class DatasetError(RuntimeError):
    """A dataset file is missing and cannot be downloaded, or is damaged; the
    message names every file concerned and what to do. A RuntimeError.
    onefchainer's own: Chainer lets the underlying error through.
    """


# Third magic byte -> element type.  IDX stores multi-byte numbers big-endian.
_IDX_DTYPES = {0x08: '>u1', 0x09: '>i1', 0x0B: '>i2', 0x0C: '>i4',
               0x0D: '>f4', 0x0E: '>f8'}
_READ_CHUNK = 1 << 20


def _read_idx(path):
    """Parse an IDX file, gzipped or not; return (array, SHA-256 hex digest of
    the decompressed bytes).  Gzip is recognised by its magic bytes, not by the
    file name, so a decompressed file works under either name."""
    with open(path, 'rb') as raw_file:
        is_gzip = raw_file.read(2) == b'\x1f\x8b'
        try:
            if is_gzip:  # the last 4 bytes: decompressed size mod 2**32
                raw_file.seek(-4, os.SEEK_END)
                stored_size, = struct.unpack('<I', raw_file.read(4))
            else:
                stored_size = os.fstat(raw_file.fileno()).st_size
            raw_file.seek(0)
            stream = gzip.GzipFile(fileobj=raw_file) if is_gzip else raw_file
            return _parse_idx(path, stream, stored_size, is_gzip)
        # gzip reports damaged data as OSError, EOFError or zlib's own error.
        except (OSError, EOFError, gzip.zlib.error) as error:
            if not is_gzip:
                raise
            raise DatasetError('{} is not a valid gzip file ({}: {})'.format(
                path, type(error).__name__, error)) from None


def _parse_idx(path, stream, stored_size, is_gzip):
    magic = stream.read(4)
    if (len(magic) < 4 or magic[:2] != b'\0\0' or magic[2] not in _IDX_DTYPES
            or magic[3] == 0):
        raise DatasetError(
            '{} is not an IDX file: it starts with {!r}, but an IDX file '
            'starts with two zero bytes, a type code (one of {}) and a '
            'nonzero number of dimensions'.format(path, magic, ', '.join(
                '0x{:02X}'.format(code) for code in _IDX_DTYPES)))
    dims_bytes = stream.read(4 * magic[3])
    if len(dims_bytes) < 4 * magic[3]:
        raise DatasetError('{}: the IDX header is cut short'.format(path))
    shape = struct.unpack('>{}I'.format(magic[3]), dims_bytes)
    dtype = np.dtype(_IDX_DTYPES[magic[2]])
    data_size = dtype.itemsize
    for dim in shape:  # Python ints: a garbage header cannot overflow here
        data_size *= dim
    header_size = 4 + len(dims_bytes)
    # Checking the size before allocating keeps a damaged header from asking
    # for terabytes; gzip only tells us the total modulo 2**32.
    if is_gzip:
        size_ok = (header_size + data_size) % 2 ** 32 == stored_size
    else:
        size_ok = header_size + data_size == stored_size
    if not size_ok:
        raise DatasetError(
            '{}: the IDX header promises shape {} of {} ({} bytes of data), '
            'but the file holds {} bytes after the header{}'.format(
                path, shape, dtype.name, data_size, stored_size - header_size,
                ' (by its gzip size field; a gzip file that was cut short '
                'reads nonsense there)' if is_gzip else ''))
    # Decompress straight into the final buffer in 1 MiB slices and hash each
    # slice while it is hot in cache: no intermediate bytes object, so the
    # peak memory is the array itself (47 MB for MNIST's training images).
    raw = np.empty(data_size, dtype=np.uint8)
    digest = hashlib.sha256(magic + dims_bytes)
    view, filled = memoryview(raw), 0
    while filled < data_size:
        count = stream.readinto(view[filled:filled + _READ_CHUNK])
        if not count:
            break
        digest.update(view[filled:filled + count])
        filled += count
    if filled != data_size or stream.read(1):
        raise DatasetError('{}: the IDX data is {} than its header says ({} '
                           'bytes)'.format(path, 'shorter' if filled <
                                           data_size else 'longer', data_size))
    array = raw.view(dtype)
    if not dtype.isnative:  # byte-swap in place rather than copy
        array = array.byteswap(inplace=True).view(dtype.newbyteorder('='))
    return array.reshape(shape), digest.hexdigest()


# --- Where dataset files live, and where they come from ----------------------

_DATASET_ROOT_ENV = 'ONEFCHAINER_DATASET_ROOT'
_dataset_root_override = None

# SHA-256 of each official file *after* decompression: the .gz bytes differ
# between mirrors and compressors, the content must not.
_OFFICIAL_SHA256 = {
    'mnist': {
        'train-images-idx3-ubyte':
            'ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db',
        'train-labels-idx1-ubyte':
            '65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5',
        't10k-images-idx3-ubyte':
            '0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7',
        't10k-labels-idx1-ubyte':
            'ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2',
    },
    'fashion-mnist': {
        'train-images-idx3-ubyte':
            'c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888',
        'train-labels-idx1-ubyte':
            'bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9',
        't10k-images-idx3-ubyte':
            '5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b',
        't10k-labels-idx1-ubyte':
            '0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34',
    },
}
# Tried in order; each URL is <mirror><file name>.gz.  A plain dict so that a
# test (or a user behind a firewall) can point it at another server.
_MIRRORS = {
    'mnist': ['https://ossci-datasets.s3.amazonaws.com/mnist/',
              'https://storage.googleapis.com/cvdf-datasets/mnist/'],
    'fashion-mnist': [
        'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/'],
}
_SYSTEM_DATASET_DIR = '/usr/share/datasets'
# Seconds a server gets to accept the connection and, after that, to send the
# next bytes; ONEFCHAINER_DOWNLOAD_TIMEOUT overrides it.  Short, because a
# firewall that drops packets otherwise looks like a hang.
_DOWNLOAD_TIMEOUT = 10
_DOWNLOAD_TIMEOUT_ENV = 'ONEFCHAINER_DOWNLOAD_TIMEOUT'


@_export('dataset', 'dataset.download')
def get_dataset_root():
    """Return the folder that holds one subfolder per dataset (a str).

    In order: the path given to set_dataset_root(), the environment variable
    ONEFCHAINER_DATASET_ROOT, else ~/.onefchainer/dataset ('~' expanded).
    Chainer: chainer.dataset.get_dataset_root (its default differs).
    """
    if _dataset_root_override is not None:
        return _dataset_root_override
    root = os.environ.get(_DATASET_ROOT_ENV) or os.path.join(
        '~', '.onefchainer', 'dataset')
    return os.path.expanduser(root)


@_export('dataset', 'dataset.download')
def set_dataset_root(path):
    """Use `path` (str) as the dataset root from now on; it takes precedence
    over ONEFCHAINER_DATASET_ROOT.  Chainer: chainer.dataset.set_dataset_root."""
    global _dataset_root_override
    _dataset_root_override = path


@_export('dataset', 'dataset.download')
def get_dataset_directory(dataset_name, create_directory=True):
    """Return <dataset root>/<dataset_name> (a str), creating the folder (and
    any missing parents) unless create_directory is False.
    Chainer: chainer.dataset.get_dataset_directory."""
    path = os.path.join(get_dataset_root(), dataset_name)
    if create_directory:
        os.makedirs(path, exist_ok=True)
    return path


def _download_timeout():
    """Seconds to wait for a server: $ONEFCHAINER_DOWNLOAD_TIMEOUT or 10."""
    text = os.environ.get(_DOWNLOAD_TIMEOUT_ENV)
    if not text:
        return _DOWNLOAD_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise DatasetError('{}={!r}: expected a positive number of seconds, e.g. '
                           '{}=60'.format(_DOWNLOAD_TIMEOUT_ENV, text, _DOWNLOAD_TIMEOUT_ENV))
    return seconds


def _how_to_fix(dataset_name, file_name, folder):
    """What the user can do about missing or bad files: the advice depends on
    whether they chose the dataset root themselves."""
    names = [file_name] if isinstance(file_name, str) else list(file_name)
    if len(names) == 1:
        files = 'the official file {0}.gz (or the decompressed {0})'.format(names[0])
    else:
        files = 'the official files {} (each .gz or decompressed)'.format(
            ', '.join(names))
    files += ', fetched elsewhere (from the URLs above, say),'
    if _dataset_root_override is not None or os.environ.get(_DATASET_ROOT_ENV):
        chosen_by = ('set_dataset_root()' if _dataset_root_override is not None
                     else 'the environment variable ' + _DATASET_ROOT_ENV)
        root = get_dataset_root()
        advice = ('Put {} into {}. The dataset root {} was chosen by {}{}.'.format(
            files, folder, root, chosen_by,
            '' if os.path.isdir(root) else ' and does not exist (a typo?)'))
    else:
        advice = ('Put {} into {} by hand, or set the environment variable {} '
                  'to a folder whose {}/ subfolder holds them.'.format(
                      files, folder, _DATASET_ROOT_ENV, dataset_name))
    if dataset_name == 'fashion-mnist':
        advice += (" On Debian, the package dataset-fashion-mnist installs them "
                   "into {}.".format(os.path.join(_SYSTEM_DATASET_DIR, dataset_name)))
    return advice


def _find_local_idx(dataset_name, file_name):
    """The path of a local copy of an official file, or None.  The dataset
    root first, then the read-only system folder where Debian's dataset
    packages install (dataset-fashion-mnist); .gz wins if both exist."""
    folder = get_dataset_directory(dataset_name, create_directory=False)
    for place in (folder, os.path.join(_SYSTEM_DATASET_DIR, dataset_name)):
        for name in (file_name + '.gz', file_name):
            path = os.path.join(place, name)
            if os.path.isfile(path):
                return path
    return None


def _load_idx(dataset_name, file_name):
    """Load one official IDX file of a dataset, downloading it if missing."""
    expected_sha256 = _OFFICIAL_SHA256[dataset_name][file_name]
    folder = get_dataset_directory(dataset_name, create_directory=False)
    path = _find_local_idx(dataset_name, file_name)
    if path is None:
        _fetch_missing_files(dataset_name, [file_name])
        path = os.path.join(folder, file_name + '.gz')
    try:
        array, found_sha256 = _read_idx(path)
    except DatasetError as error:
        raise DatasetError('{}\n{}'.format(error, _how_to_fix(
            dataset_name, file_name, folder))) from None
    if found_sha256 != expected_sha256:
        # Never overwrite a file the user put there: they may want to know.
        raise DatasetError(
            '{} is not the official {} file: the SHA-256 of its decompressed '
            'content is {}, expected {}. Delete it to have it downloaded '
            'again.\n{}'.format(path, dataset_name, found_sha256,
                                expected_sha256, _how_to_fix(
                                    dataset_name, file_name, folder)))
    return array


def _fetch_missing_files(dataset_name, file_names):
    """Download each of `file_names` that no local folder holds.  Every file
    is tried before anything is reported, and a server that did not answer is
    not asked again, so a dead network costs one timeout per mirror, not one
    per file.  Raises one DatasetError listing every file that could not be
    had and what to do; a folder made for a download that failed is removed."""
    folder = get_dataset_directory(dataset_name, create_directory=False)
    missing = [name for name in file_names
               if _find_local_idx(dataset_name, name) is None]
    if not missing:
        return
    timeout = _download_timeout()
    created = []                     # folders this call made, innermost last
    parent = folder
    while parent and not os.path.exists(parent):
        created.insert(0, parent)
        parent = os.path.dirname(parent)
    failed, silent_mirrors = {}, set()
    for file_name in missing:
        failures = _download_idx(dataset_name, file_name, folder,
                                 _OFFICIAL_SHA256[dataset_name][file_name],
                                 timeout, silent_mirrors)
        if failures is not None:
            failed[file_name] = failures
    if not failed:
        return
    for path in reversed(created):   # leave no empty folder behind
        try:
            os.rmdir(path)
        except FileNotFoundError:    # never made: the server did not answer
            continue
        except OSError:              # not empty: someone else's now
            break
    raise DatasetError(
        'Could not get {} of the {} {} files (each server gets {:g} s to answer; '
        '{} changes that). Tried:\n{}\n{}'.format(
            len(failed), len(file_names), dataset_name, timeout,
            _DOWNLOAD_TIMEOUT_ENV, '\n'.join(
                '  {}:\n{}'.format(name, '\n'.join('    ' + failure
                                                   for failure in failures))
                for name, failures in failed.items()),
            _how_to_fix(dataset_name, list(failed), folder)))


def _download_idx(dataset_name, file_name, folder, expected_sha256, timeout,
                  silent_mirrors):
    """Fetch <file_name>.gz into `folder` from the first mirror that serves the
    official content.  Returns None on success, else the list of what went
    wrong at each mirror.  A mirror that could not be reached is added to
    `silent_mirrors` and skipped from then on.  The file only ever appears
    under its final name complete and verified (written elsewhere, renamed)."""
    failures = []
    mirrors = _MIRRORS.get(dataset_name, [])
    if mirrors and all(mirror in silent_mirrors for mirror in mirrors):
        return ['not tried: no server answered for an earlier file']
    for mirror in mirrors:
        url = mirror + file_name + '.gz'
        if mirror in silent_mirrors:
            continue
        print('Downloading {} file {}.gz from {} to {}'.format(
            dataset_name, file_name, url, folder), file=sys.stderr)
        temporary, failed_before = None, len(failures)
        try:
            temporary = _fetch_url(url, folder, file_name, timeout)
            array, found_sha256 = _read_idx(temporary)
            if found_sha256 != expected_sha256:
                failures.append('{}: downloaded, but the SHA-256 of its '
                                'content is {}, expected {}'.format(
                                    url, found_sha256, expected_sha256))
                continue
            os.chmod(temporary, 0o644)  # mkstemp makes it private (0600)
            os.replace(temporary, os.path.join(folder, file_name + '.gz'))
            temporary = None
            return None
        except urllib.error.HTTPError as error:   # the server answered: no
            failures.append('{}: {}'.format(url, error))
        except OSError as error:  # no connection, or it went silent
            silent_mirrors.add(mirror)
            reason = getattr(error, 'reason', error)
            if 'timed out' in str(reason):
                reason = 'no answer within {:g} s ({})'.format(timeout, reason)
            failures.append('{}: {}'.format(url, reason))
        except Exception as error:  # damaged content: try the next mirror
            failures.append('{}: {}'.format(url, error))
        finally:
            if temporary is not None and os.path.exists(temporary):
                os.remove(temporary)
            if len(failures) > failed_before:  # said at once: a stalled network
                print('  failed: ' + failures[-1][len(url) + 2:],   # shows after
                      file=sys.stderr)                            # one timeout
    if not failures:
        failures.append('no mirror is known for {}'.format(dataset_name))
    return failures


def _fetch_url(url, folder, file_name, timeout):
    """Copy `url` into a new temporary file in `folder` (made only once the
    server has answered) and return its path.  Live progress on a terminal;
    logs and test output get one line at the end."""
    show_progress = sys.stderr is not None and sys.stderr.isatty()
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        os.makedirs(folder, exist_ok=True)
        # Same folder as the target, so os.replace is an atomic rename.
        handle, temporary = tempfile.mkstemp(
            prefix='.{}.'.format(file_name), suffix='.part', dir=folder)
        try:
            with os.fdopen(handle, 'wb') as out:
                total = int(reply.headers.get('Content-Length') or 0)
                received, started, last_shown = 0, time.monotonic(), 0.0
                while True:
                    chunk = reply.read(1 << 16)
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    if show_progress and time.monotonic() - last_shown > 0.2:
                        last_shown = time.monotonic()
                        percent = ' of {:.1f} MB ({:.0%})'.format(
                            total / 1e6, received / total) if total else ''
                        sys.stderr.write('\r  {:.1f} MB{}'.format(
                            received / 1e6, percent))
                        sys.stderr.flush()
            print('{}  {:.1f} MB in {:.1f} s'.format(
                '\r' if show_progress else '', received / 1e6,
                time.monotonic() - started), file=sys.stderr)
            # A connection that drops early just ends the stream: only the
            # length the server announced tells a cut-short transfer from a
            # complete one.
            if total and received != total:
                raise DatasetError('the transfer was cut short: received {} of '
                                   'the {} bytes the server announced'.format(
                                       received, total))
        except BaseException:
            os.remove(temporary)
            raise
    return temporary


# --- MNIST and Fashion-MNIST -------------------------------------------------

def _mnist_like_split(images, labels, withlabel, ndim, scale, dtype,
                      label_dtype, rgb_format):
    count, height, width = images.shape
    if ndim == 1:
        images = images.reshape(count, height * width)
    elif ndim == 2:
        images = images.reshape(count, height, width)
    elif ndim == 3:
        images = images.reshape(count, 1, height, width)
        if rgb_format:  # a broadcast view: astype below makes the 3 copies
            images = np.broadcast_to(images, (count, 3, height, width))
    else:
        raise ValueError('ndim must be 1, 2 or 3, but got {}'.format(ndim))
    # uint8 -> dtype directly, then scale in place: never a float64 detour,
    # never a second full-size temporary.
    pixels = images.astype(config.dtype if dtype is None else dtype)
    pixels *= scale / 255.
    if withlabel:
        return TupleDataset(pixels, labels.astype(label_dtype))
    return pixels


def _get_mnist_like(dataset_name, withlabel, ndim, scale, dtype, label_dtype,
                    rgb_format):
    if ndim not in (1, 2, 3):  # fail before reading 50 MB, not after
        raise ValueError('ndim must be 1, 2 or 3, but got {}'.format(ndim))
    # Every missing file is fetched (or reported) before any is parsed.
    _fetch_missing_files(dataset_name, [
        prefix + suffix for prefix in ('train', 't10k')
        for suffix in ('-labels-idx1-ubyte', '-images-idx3-ubyte')])
    splits = []
    for prefix in ('train', 't10k'):
        labels = _load_idx(dataset_name, prefix + '-labels-idx1-ubyte')
        images = _load_idx(dataset_name, prefix + '-images-idx3-ubyte')
        splits.append(_mnist_like_split(images, labels, withlabel, ndim, scale,
                                        dtype, label_dtype, rgb_format))
        del images  # let the raw uint8 pixels go before the next split loads
    return tuple(splits)


@_export('datasets', 'datasets.mnist')
def get_mnist(withlabel=True, ndim=1, scale=1., dtype=None,
              label_dtype=np.int32, rgb_format=False):
    """MNIST handwritten digits as (train, test): 60000 and 10000 examples.

    Pixels are scaled from 0..255 to [0, scale] (scale default 1.) in dtype
    (default config.dtype, float32). ndim=1 (default) gives images of shape
    (784,), 2 gives (28, 28), 3 gives (1, 28, 28), or (3, 28, 28) with
    rgb_format. withlabel (default True): each split is a TupleDataset(images,
    labels of label_dtype, default int32); else an array of images.
    The four official files are read from <dataset root>/mnist/ (see
    get_dataset_root; .gz or decompressed) and downloaded there when missing,
    each checked against its official SHA-256. Raises DatasetError listing every
    file that could not be had, or naming a damaged one, with what to do;
    ValueError for ndim not in 1, 2, 3. Chainer: chainer.datasets.get_mnist.
    """
    return _get_mnist_like('mnist', withlabel, ndim, scale, dtype,
                           label_dtype, rgb_format)


@_export('datasets', 'datasets.fashion_mnist')
def get_fashion_mnist(withlabel=True, ndim=1, scale=1., dtype=None,
                      label_dtype=np.int32, rgb_format=False):
    """Fashion-MNIST (Zalando's clothing pictures, 10 classes; see
    get_fashion_mnist_labels), a drop-in replacement for MNIST: the same shapes,
    arguments, return values and errors as get_mnist. The files are read from
    <dataset root>/fashion-mnist/, else from /usr/share/datasets/fashion-mnist/
    (Debian's dataset-fashion-mnist package), else downloaded.
    Chainer: chainer.datasets.get_fashion_mnist.
    """
    return _get_mnist_like('fashion-mnist', withlabel, ndim, scale, dtype,
                           label_dtype, rgb_format)


@_export('datasets', 'datasets.fashion_mnist')
def get_fashion_mnist_labels():
    """The ten Fashion-MNIST class names, index = label: ['T-shirt/top',
    'Trouser', ..., 'Ankle boot']. Chainer: chainer.datasets.get_fashion_mnist_labels.
    """
    return ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
            'Shirt', 'Sneaker', 'Bag', 'Ankle boot']


# --- Iterators ---------------------------------------------------------------

@_export('dataset', 'dataset.iterator')
class Iterator:
    """Base of all dataset iterators: a Python iterator over minibatches that
    can also be snapshotted (serialize) and closed (finalize, or `with`).
    Chainer: chainer.dataset.Iterator.
    """

    def __iter__(self):
        return self

    def __next__(self):
        raise NotImplementedError

    def next(self):
        """The next minibatch, as __next__ (Python 2 style name kept by Chainer).
        Raises StopIteration at the end of a non-repeating iterator.
        Chainer: chainer.dataset.Iterator.next.
        """
        return self.__next__()

    def finalize(self):
        """Release what the iterator holds (threads, files); nothing here. Also
        called on leaving `with iterator:`. Chainer: chainer.dataset.Iterator.finalize.
        """
        pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        self.finalize()

    def serialize(self, serializer):
        """Save or load the iterator's position, for snapshots; nothing here.
        Chainer: chainer.dataset.Iterator.serialize.
        """
        pass


@_export('iterators', 'iterators.order_samplers')
class OrderSampler:
    """Chooses the order of the next epoch: called as
    sampler(current_order, current_position) -> new order of the same size.
    Chainer: chainer.iterators.OrderSampler.
    """

    def __call__(self, current_order, current_position):
        """Return the order (an integer array of len(current_order)) of the next
        epoch; current_position is where the previous one stopped.
        """
        raise NotImplementedError


@_export('iterators', 'iterators.order_samplers')
class ShuffleOrderSampler(OrderSampler):
    """An OrderSampler returning a fresh random permutation each epoch, drawn
    from `random_state` (a numpy.random.RandomState) or, if None (default),
    from NumPy's global generator. Chainer: chainer.iterators.ShuffleOrderSampler.
    """
    def __init__(self, random_state=None):
        self._random_state = random_state

    def __call__(self, current_order, current_position):
        # With no random_state, NumPy's global generator is used, so
        # np.random.seed makes shuffling reproducible.
        generator = self._random_state or np.random
        return generator.permutation(len(current_order))


@_export('iterators', 'iterators.serial_iterator')
class SerialIterator(Iterator):
    """Iterates over `dataset` batch_size examples at a time, returning each
    batch as a list of examples.

    repeat (default True): loop over epochs forever; False: one pass, then
    StopIteration (the last batch may be short). shuffle: None (default) and
    True shuffle every epoch, False keeps the dataset order; order_sampler: a
    callable choosing each epoch's order (not together with shuffle, else
    ValueError). When repeating, a batch that crosses the end of an epoch is
    completed from the next epoch, so every batch is full. Attributes: epoch,
    epoch_detail (a float), is_new_epoch, current_position. An empty dataset
    gives no batch (repeat=False) or a ValueError (repeat=True); batch_size
    below 1 is a ValueError.
    Chainer: chainer.iterators.SerialIterator.
    """

    def __init__(self, dataset, batch_size, repeat=True, shuffle=None,
                 order_sampler=None):
        if shuffle is not None and order_sampler is not None:
            raise ValueError('give either shuffle or order_sampler, not '
                             'both (shuffle=None lets order_sampler decide)')
        if order_sampler is None and (shuffle is None or shuffle):
            order_sampler = ShuffleOrderSampler()
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError('SerialIterator: batch_size must be a positive integer, '
                             'got {!r}'.format(batch_size))
        self.dataset = dataset
        self.batch_size = batch_size
        self._repeat = repeat
        self.order_sampler = order_sampler
        self.reset()

    def reset(self):
        """Go back to the start: epoch 0, position 0, a new order.
        Chainer: chainer.iterators.SerialIterator.reset.
        """
        self.current_position = 0
        self.epoch = 0
        self.is_new_epoch = False
        # -1 stands for "no batch yet": some serializers cannot store None.
        self._previous_epoch_detail = -1.
        self._order = None
        if self.order_sampler:
            self._order = self.order_sampler(np.arange(len(self.dataset)), 0)

    @property
    def repeat(self):
        """Whether the iterator loops over epochs forever. Chainer: SerialIterator.repeat."""
        return self._repeat

    @property
    def _epoch_size(self):
        return len(self.dataset if self._order is None else self._order)

    @property
    def epoch_detail(self):
        """Epochs done as a float, e.g. 2.5 is halfway through the third.
        Chainer: chainer.iterators.SerialIterator.epoch_detail.
        """
        return self.epoch + self.current_position / max(self._epoch_size, 1)

    @property
    def previous_epoch_detail(self):
        """epoch_detail before the latest batch; None before the first.
        Chainer: chainer.iterators.SerialIterator.previous_epoch_detail.
        """
        if self._previous_epoch_detail < 0:
            return None
        return self._previous_epoch_detail

    def _positions(self, start, stop):
        if self._order is None:
            return np.arange(start, stop)
        return self._order[start:stop]

    def __next__(self):
        epoch_size = self._epoch_size
        if epoch_size == 0:      # an empty dataset gives no batch, not one empty batch
            if not self._repeat:
                raise StopIteration
            raise ValueError('SerialIterator: cannot repeat over an empty dataset '
                             '(length 0); check how the dataset was built or split')
        self._previous_epoch_detail = self.epoch_detail
        if not self._repeat and self.epoch > 0:
            raise StopIteration
        start, wanted = self.current_position, self.batch_size
        pieces, is_new_epoch = [], False
        while start + wanted >= epoch_size:  # this batch finishes the epoch
            pieces.append(self._positions(start, epoch_size))
            wanted -= epoch_size - start
            self.epoch += 1
            is_new_epoch = True
            if self._order is not None:
                new_order = self.order_sampler(self._order, start)
                if len(new_order) != len(self._order):
                    raise ValueError(
                        'order_sampler returned an order of length {}, but '
                        'it must keep the length {}'.format(
                            len(new_order), len(self._order)))
                self._order = new_order
            start = 0
            if not self._repeat:
                wanted = 0
                break
        pieces.append(self._positions(start, start + wanted))
        self.current_position = start + wanted
        self.is_new_epoch = is_new_epoch
        indices = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        return _take_examples(self.dataset, indices)

    def serialize(self, serializer):
        # Conversions: a deserializer may hand back NumPy scalars.
        self.current_position = int(serializer('current_position',
                                               self.current_position))
        self.epoch = int(serializer('epoch', self.epoch))
        self.is_new_epoch = bool(serializer('is_new_epoch', self.is_new_epoch))
        if self._order is not None:
            serializer('order', self._order)  # loading fills it in place
        self._previous_epoch_detail = float(serializer(
            'previous_epoch_detail', self._previous_epoch_detail))


# The parallel iterators load batches in worker processes or threads; only
# the speed differs, so here they are the SerialIterator, taking (and
# ignoring) their worker options.  They give the same batches as Chainer's
# SerialIterator would for the same seed.
@_export('iterators', 'iterators.multiprocess_iterator')
class MultiprocessIterator(SerialIterator):
    """SerialIterator that accepts MultiprocessIterator's options (n_processes,
    n_prefetch, shared_mem, dataset_timeout, maxtasksperchild) and loads in
    the main process.  Chainer: iterators.MultiprocessIterator."""

    def __init__(self, dataset, batch_size, repeat=True, shuffle=None, n_processes=None,
                 n_prefetch=1, shared_mem=None, order_sampler=None, dataset_timeout=30.0,
                 maxtasksperchild=None):
        super().__init__(dataset, batch_size, repeat, shuffle, order_sampler)

    def finalize(self):
        pass


@_export('iterators', 'iterators.multithread_iterator')
class MultithreadIterator(SerialIterator):
    """SerialIterator that accepts n_threads and loads in the calling thread.
    Chainer: iterators.MultithreadIterator."""

    def __init__(self, dataset, batch_size, repeat=True, shuffle=None, n_threads=1,
                 order_sampler=None):
        super().__init__(dataset, batch_size, repeat, shuffle, order_sampler)

    def finalize(self):
        pass


# --- Batching ----------------------------------------------------------------

def _stack_examples(values, padding):
    if not isinstance(values[0], _array_types):  # scalars (labels): no padding
        return np.asarray(values)
    xp = _xp(values[0])          # a dataset may already live on the GPU
    if padding is None:
        try:  # concatenate of [None]-views beats stack's per-array checks
            return xp.concatenate([value[None] for value in values])
        except ValueError as error:
            raise ValueError(
                'concat_examples: cannot stack examples of different shapes {}; '
                'pass padding= to pad them to a common shape'.format(
                    sorted({value.shape for value in values}))) from error
    ndims = {value.ndim for value in values}
    if len(ndims) > 1:
        first = values[0].ndim
        odd = next(i for i, value in enumerate(values) if value.ndim != first)
        raise ValueError(
            'concat_examples: padding needs examples with one number of axes, but '
            'example 0 has shape {} and example {} has shape {}'.format(
                values[0].shape, odd, values[odd].shape))
    shape = np.max([value.shape for value in values], axis=0)
    stacked = xp.full((len(values),) + tuple(shape), padding,
                      dtype=values[0].dtype)
    for row, value in zip(stacked, values):
        row[tuple(slice(size) for size in value.shape)] = value
    return stacked


@_export('dataset', 'dataset.convert')
def concat_examples(batch, device=None, padding=None):
    """Turn a list of examples into batched arrays along a new first axis:
    arrays -> one array, tuples -> a tuple of arrays, dicts -> a dict of
    arrays.  Examples of different shapes are padded with `padding` (one value,
    or a tuple/dict of values per field) up to the largest shape.
    Chainer: chainer.dataset.concat_examples.
    """
    if len(batch) == 0:
        raise ValueError('concat_examples: the batch is empty, there is nothing to concatenate')

    def field(key, field_padding):
        values = [example[key] for example in batch]
        return _send_to_device(device, _stack_examples(values, field_padding))

    first = batch[0]
    if isinstance(first, tuple):
        if not isinstance(padding, tuple):
            padding = (padding,) * len(first)
        return tuple(field(i, padding[i]) for i in range(len(first)))
    if isinstance(first, dict):
        if not isinstance(padding, dict):
            padding = dict.fromkeys(first, padding)
        return {key: field(key, padding[key]) for key in first}
    return _send_to_device(device, _stack_examples(batch, padding))
_export('dataset.convert', concat_examples_func=concat_examples)


@_export('dataset', 'dataset.convert')
def to_device(device, x):
    """Send array `x` to `device` (None: leave it where it is).
    Chainer: chainer.dataset.to_device.
    """
    return _send_to_device(device, x)


# =============================================================================
# Chapter 20. The training loop: Trainer and extensions
# =============================================================================


# Training repeats four steps: take a batch, compute the loss, backprop,
# update.  What turns that loop into an experiment is everything around it:
# evaluating on held-out data, logging, printing, plotting, saving snapshots,
# changing the learning rate.  That part is the same in every project, so
# Chainer builds it from three kinds of small objects:
#
#   * an *Updater* owns the iterators and optimizers and performs one
#     training step per `update()`; it also counts iterations and epochs;
#   * the *Trainer* calls `update()` until its *stop trigger* fires, and
#     after each update runs its *extensions*;
#   * an *extension* is any callable(trainer).  Its *trigger* decides when it
#     runs ((1, 'epoch'): at the end of every epoch) and its *priority* the
#     order within one iteration: writers of observations first (Evaluator),
#     then editors, then readers (LogReport, PrintReport), snapshots last.
#
# Values travel from the model to the logs through the reporter (Chapter 15):
# for every iteration the Trainer opens a fresh `observation` dict, the
# model's report() calls fill it ('main/loss'), the Evaluator adds
# 'validation/main/loss', and LogReport averages what it sees.
#
# Everything that has state also has `serialize`, so save_npz(path, trainer)
# captures a whole run (iteration, iterator position and order, optimizer
# state, logs, trigger states) and load_npz(path, trainer) continues it as if
# it had never stopped.

# ----- updaters ----------------------------------------------------------------

@_export('training', 'training.updater')
class Updater:
    """What the Trainer needs from an updater: update(), the counters
    (iteration, epoch, epoch_detail), its optimizers, serialize().
    Chainer: chainer.training.Updater.
    """

    def connect_trainer(self, trainer):
        """Called once by the Trainer's constructor; does nothing here.
        Chainer: chainer.training.Updater.connect_trainer.
        """

    def finalize(self):
        """Release the updater's resources (its iterators); subclasses define it.
        Chainer: chainer.training.Updater.finalize.
        """
        raise NotImplementedError

    def get_optimizer(self, name):
        """The optimizer registered as `name` (e.g. 'main'); KeyError if none.
        Chainer: chainer.training.Updater.get_optimizer.
        """
        raise NotImplementedError

    def get_all_optimizers(self):
        """A dict {name: optimizer} of all optimizers.
        Chainer: chainer.training.Updater.get_all_optimizers.
        """
        raise NotImplementedError

    def update(self):
        """Perform one training step and count the iteration.
        Chainer: chainer.training.Updater.update.
        """
        raise NotImplementedError

    def serialize(self, serializer):
        """Save or load the updater's state (iterators, optimizers, models,
        iteration count). Chainer: chainer.training.Updater.serialize.
        """
        raise NotImplementedError


@_export('training', 'training.updater', 'training.updaters',
         'training.updaters.standard_updater')
class StandardUpdater(Updater):
    """One step = one batch from the 'main' iterator through the 'main'
    optimizer:

        batch  = iterator.next()                    # a list of examples
        arrays = converter(batch, device)           # e.g. (x, t), stacked
        optimizer.update(loss_func, *arrays)        # forward, backward, step

    `iterator` and `optimizer` may be dicts of names; the epoch counters are
    those of the 'main' iterator.  For anything else (a GAN has two models
    and two losses) subclass it and override `update_core`.
    Chainer: chainer.training.updaters.StandardUpdater.
    """

    # Class-level defaults, so that a subclass whose __init__ sets only
    # _iterators, _optimizers, converter, device and iteration (without
    # calling this __init__) still gets working methods.
    converter = staticmethod(concat_examples)
    device = None
    loss_func = None
    loss_scale = None
    auto_new_epoch = True
    iteration = 0
    _input_device = None

    def __init__(self, iterator, optimizer, converter=concat_examples,
                 device=None, loss_func=None, loss_scale=None,
                 auto_new_epoch=True, *, input_device=None):
        self._iterators = iterator if isinstance(iterator, dict) else {'main': iterator}
        self._optimizers = optimizer if isinstance(optimizer, dict) else {'main': optimizer}
        if device is not None:
            # As in Chainer: `device` is where the model lives, so move it.
            device = get_device(device)
            for opt in self._optimizers.values():
                opt.target.to_device(device)
        self.device = device
        self._input_device = None if input_device is None else get_device(input_device)
        self.converter = converter
        self.loss_func = loss_func
        self.iteration = 0
        self.loss_scale = loss_scale
        if loss_scale is not None:
            for opt in self._optimizers.values():
                if not hasattr(opt, 'set_loss_scale'):
                    raise NotImplementedError(
                        'StandardUpdater: loss_scale needs '
                        '{}.set_loss_scale, which onefchainer does not have'
                        .format(type(opt).__name__))
                opt.set_loss_scale(loss_scale)
        self.auto_new_epoch = auto_new_epoch
        if auto_new_epoch:
            for opt in self._optimizers.values():
                opt.use_auto_new_epoch = True

    @property
    def input_device(self):
        """Where batches are sent: `input_device` if given, else `device`.
        Chainer: chainer.training.updaters.StandardUpdater.input_device.
        """
        return self.device if self._input_device is None else self._input_device

    # The epoch counters belong to the main iterator: an epoch is one pass
    # over its dataset.
    @property
    def epoch(self):
        """Completed epochs of the 'main' iterator (an int).
        Chainer: chainer.training.updaters.StandardUpdater.epoch.
        """
        return self._iterators['main'].epoch

    @property
    def epoch_detail(self):
        """Epochs done as a float (2.5: halfway through the third), from the
        'main' iterator. Chainer: StandardUpdater.epoch_detail.
        """
        return self._iterators['main'].epoch_detail

    @property
    def previous_epoch_detail(self):
        """epoch_detail before the latest batch (None before the first).
        Chainer: StandardUpdater.previous_epoch_detail.
        """
        return self._iterators['main'].previous_epoch_detail

    @property
    def is_new_epoch(self):
        """True if the latest batch finished an epoch. Chainer: StandardUpdater.is_new_epoch."""
        return self._iterators['main'].is_new_epoch

    def get_iterator(self, name):
        """The iterator registered as `name` (e.g. 'main'); KeyError if none.
        Chainer: StandardUpdater.get_iterator.
        """
        return self._iterators[name]

    def get_optimizer(self, name):
        return self._optimizers[name]

    def get_all_optimizers(self):
        return dict(self._optimizers)

    def finalize(self):
        for iterator in self._iterators.values():
            iterator.finalize()

    def update(self):
        self.update_core()
        self.iteration += 1

    def update_core(self):
        """One step: take the next batch of the 'main' iterator, convert it to
        arrays on input_device, call optimizer.update(loss_func or the model,
        *arrays) (a dict becomes keyword arguments) and, at an epoch's end, count
        the optimizer's epoch. Override it for other training schemes.
        Chainer: StandardUpdater.update_core.
        """
        iterator = self._iterators['main']
        optimizer = self._optimizers['main']
        in_arrays = self.converter(iterator.next(), self.input_device)
        loss_func = self.loss_func or optimizer.target
        # The converter's result decides how the model is called: a tuple
        # (x, t) gives positional arguments, a dict keyword arguments.
        if isinstance(in_arrays, tuple):
            optimizer.update(loss_func, *in_arrays)
        elif isinstance(in_arrays, dict):
            optimizer.update(loss_func, **in_arrays)
        else:
            optimizer.update(loss_func, in_arrays)
        if self.auto_new_epoch and iterator.is_new_epoch:
            optimizer.new_epoch(auto=True)

    def serialize(self, serializer):
        # Key names as in Chainer: 'iterator:main/...', 'optimizer:main/...',
        # 'model:main/...', so snapshots move between the two.
        for name, iterator in self._iterators.items():
            iterator.serialize(serializer['iterator:' + name])
        for name, optimizer in self._optimizers.items():
            optimizer.serialize(serializer['optimizer:' + name])
            optimizer.target.serialize(serializer['model:' + name])
        self.iteration = int(serializer('iteration', self.iteration))


# ----- triggers ----------------------------------------------------------------
# A trigger is a callable(trainer) -> bool.  Wherever one is expected, a tuple
# such as (20, 'epoch') or (500, 'iteration') may be given instead.

@_export('training', 'training.trigger', 'training.triggers',
         'training.triggers.interval_trigger')
class IntervalTrigger:
    """Fires every `period` iterations or epochs: (2, 'epoch') fires at the
    ends of epochs 2, 4, 6, ...

    Epochs need care: with 100 examples and batches of 30, epoch 1 ends
    inside the 4th batch, so `epoch_detail` goes 0.9 -> 1.2 and never equals
    1.  The trigger therefore remembers the value from its previous call and
    fires when floor(value / period) changed in between, which happens once
    per boundary however the batches fall.  That memory is saved in
    snapshots, so a resumed run fires at the same iterations.
    Chainer: chainer.training.triggers.IntervalTrigger.
    """

    def __init__(self, period, unit):
        if unit not in ('epoch', 'iteration'):
            raise ValueError("IntervalTrigger: unit must be 'epoch' or "
                             "'iteration', not {!r}".format(unit))
        if not period > 0:
            raise ValueError('IntervalTrigger: period must be positive, got '
                             '{!r}'.format(period))
        self.period = period
        self.unit = unit
        self._previous_iteration = 0
        self._previous_epoch_detail = 0.0

    def __call__(self, trainer):
        """True if a multiple of `period` iterations/epochs was passed since the
        previous call (see the class). Chainer: chainer.training.triggers.IntervalTrigger.__call__.
        """
        updater = trainer.updater
        if self.unit == 'epoch':
            now = updater.epoch_detail
            before = self._previous_epoch_detail
            if before < 0:   # unknown (see serialize): ask the updater instead
                before = getattr(updater, 'previous_epoch_detail', None) or 0.0
        else:
            now = updater.iteration
            before = self._previous_iteration
            if before < 0:
                before = now - 1
        # Both are kept whatever the unit, as in Chainer's snapshots.
        self._previous_iteration = updater.iteration
        if hasattr(updater, 'epoch_detail'):
            self._previous_epoch_detail = updater.epoch_detail
        return before // self.period != now // self.period

    def get_training_length(self):
        """(period, unit): as a stop trigger, the length of training (used by
        ProgressBar). Chainer: IntervalTrigger.get_training_length.
        """
        return self.period, self.unit

    def serialize(self, serializer):
        """Save or load the iteration and epoch_detail of the previous call, so a
        resumed run fires at the same points. Chainer: IntervalTrigger.serialize.
        """
        try:
            self._previous_iteration = int(serializer(
                'previous_iteration', self._previous_iteration))
            self._previous_epoch_detail = float(serializer(
                'previous_epoch_detail', self._previous_epoch_detail))
        except KeyError:
            # A snapshot from a version that did not save them: -1 makes
            # __call__ fall back on the updater's own previous values.
            warnings.warn('IntervalTrigger: the snapshot holds no previous '
                          'iteration/epoch; guessing them from the updater')
            self._previous_iteration = -1
            self._previous_epoch_detail = -1.0

    def __str__(self):
        return '{}({}, {!r})'.format(type(self).__name__, self.period, self.unit)


@_export('training.triggers', 'training.triggers.manual_schedule_trigger')
class ManualScheduleTrigger:
    """Fires when training passes one of the given points:
    ManualScheduleTrigger([10, 25], 'epoch').
    Chainer: chainer.training.triggers.ManualScheduleTrigger.
    """

    def __init__(self, points, unit):
        if unit not in ('epoch', 'iteration'):
            raise ValueError("ManualScheduleTrigger: unit must be 'epoch' or "
                             "'iteration', not {!r}".format(unit))
        self.points = list(points) if isinstance(points, (list, tuple)) else [points]
        self.unit = unit
        self.finished = False      # the Trainer skips initialize() once True
        self._previous_iteration = 0
        self._previous_epoch_detail = 0.0

    def __call__(self, trainer):
        """True if training passed one of the points since the previous call;
        sets `finished` once the last point is reached. Chainer: ManualScheduleTrigger.__call__.
        """
        updater = trainer.updater
        if self.unit == 'epoch':
            now, before = updater.epoch_detail, self._previous_epoch_detail
        else:
            now, before = updater.iteration, self._previous_iteration
        self._previous_iteration = updater.iteration
        if hasattr(updater, 'epoch_detail'):
            self._previous_epoch_detail = updater.epoch_detail
        fire = any(before < point <= now for point in self.points)
        if now >= max(self.points):
            self.finished = True
        return fire

    def serialize(self, serializer):
        """Save or load the previous call's position and `finished`.
        Chainer: ManualScheduleTrigger.serialize.
        """
        self._previous_iteration = int(serializer(
            'previous_iteration', self._previous_iteration))
        self._previous_epoch_detail = float(serializer(
            'previous_epoch_detail', self._previous_epoch_detail))
        self.finished = bool(serializer('finished', self.finished))


@_export('training.triggers', 'training.triggers.minmax_value_trigger')
class BestValueTrigger:
    """Fires when the mean of a reported value over the latest interval is
    the best so far, as judged by compare(best, new) -> bool.
    Chainer: chainer.training.triggers.BestValueTrigger.
    """

    def __init__(self, key, compare, trigger=(1, 'epoch')):
        self._key = key
        self._compare = compare
        self._interval_trigger = get_trigger(trigger)
        self._summary = DictSummary()
        self._best_value = None

    def __call__(self, trainer):
        """At the end of each interval, True if the interval's mean of `key` is
        better than every earlier one by compare(best, new); False otherwise and
        between interval ends. Chainer: chainer.training.triggers.BestValueTrigger.__call__.
        """
        value = trainer.observation.get(self._key)
        if value is not None:
            self._summary.add({self._key: value})
        if not self._interval_trigger(trainer):
            return False
        mean = self._summary.compute_mean().get(self._key)
        self._summary = DictSummary()
        if mean is None:
            return False
        if self._best_value is None or self._compare(self._best_value, mean):
            self._best_value = mean
            return True
        return False

    def serialize(self, serializer):
        """Save or load the interval trigger, the running mean and the best value.
        Chainer: BestValueTrigger.serialize.
        """
        self._interval_trigger.serialize(serializer['interval_trigger'])
        self._summary.serialize(serializer['summary'])
        best = serializer('best_value', self._best_value)
        self._best_value = None if best is None else float(best)


@_export('training.triggers', 'training.triggers.minmax_value_trigger')
class MaxValueTrigger(BestValueTrigger):
    """Fires when `key` reaches a new maximum, e.g. validation accuracy.
    Chainer: chainer.training.triggers.MaxValueTrigger.
    """

    def __init__(self, key, trigger=(1, 'epoch')):
        super().__init__(key, lambda best, new: new > best, trigger)


@_export('training.triggers', 'training.triggers.minmax_value_trigger')
class MinValueTrigger(BestValueTrigger):
    """Fires when `key` reaches a new minimum, e.g. validation loss.
    Chainer: chainer.training.triggers.MinValueTrigger.
    """

    def __init__(self, key, trigger=(1, 'epoch')):
        super().__init__(key, lambda best, new: new < best, trigger)


@_export('training.triggers', 'training.triggers.once_trigger')
class OnceTrigger:
    """Fires at the first call only, i.e. after the first iteration; with
    call_on_resume=True also at the first call after a resume from a snapshot.
    `finished` (True once it will not fire again) makes the Trainer skip the
    extension's initialize() on resume.
    Chainer: chainer.training.triggers.OnceTrigger.
    """

    def __init__(self, call_on_resume=False):
        self._flag_first = True            # saved: has it fired in this run?
        self._flag_resumed = call_on_resume    # not saved: fire again after a load

    @property
    def finished(self):
        """True if the trigger will not fire again.
        Chainer: OnceTrigger.finished.
        """
        return not (self._flag_first or self._flag_resumed)

    def __call__(self, trainer):
        """True at the first call (and, with call_on_resume, the first after a
        resume), False after. Chainer: OnceTrigger.__call__.
        """
        fire = not self.finished
        self._flag_first = self._flag_resumed = False
        return fire

    def serialize(self, serializer):
        """Save or load whether it has yet to fire ('_flag_first', Chainer's key).
        Chainer: OnceTrigger.serialize.
        """
        try:
            self._flag_first = bool(serializer('_flag_first', self._flag_first))
        except KeyError:
            # An old snapshot: most likely taken after the first iteration.
            warnings.warn('OnceTrigger: the snapshot does not say whether it has '
                          'fired; assuming it has')
            self._flag_first = False


@_export('training.triggers', 'training.triggers.time_trigger')
class TimeTrigger:
    """Fires at the first call after each `period` seconds of training
    (trainer.elapsed_time, which continues across a resume): after period,
    2 * period, ... Raises ValueError for period <= 0.
    Chainer: chainer.training.triggers.TimeTrigger.
    """

    def __init__(self, period):
        if not period > 0:
            raise ValueError('TimeTrigger: period must be positive, got {!r}'.format(period))
        self._period = period
        self._next_time = period

    def __call__(self, trainer):
        """True if elapsed_time has passed the next multiple of `period`; the
        next one is then a period later. Chainer: TimeTrigger.__call__.
        """
        if trainer.elapsed_time <= self._next_time:
            return False
        # Chainer adds one period, so after a long pause it fires at several
        # consecutive calls until it has caught up; kept that way.
        self._next_time += self._period
        return True

    def serialize(self, serializer):
        """Save or load the next firing time ('next_time', Chainer's key).
        Chainer: TimeTrigger.serialize.
        """
        self._next_time = float(serializer('next_time', self._next_time))


@_export('training.triggers', 'training.triggers.early_stopping_trigger')
class EarlyStoppingTrigger:
    """A stop trigger for early stopping: at the end of each `check_trigger`
    interval it takes the mean of `monitor` over the interval; when that mean
    has failed to beat the best one for `patience` checks in a row, it fires.
    It also fires when `max_trigger` does, the longest training allowed.

    mode: 'min' (lower is better), 'max', or 'auto' ('max' if 'accuracy' is
    in the key, else 'min').  verbose=True prints the comparison chosen and
    the epoch at which it stops.  `patients` is accepted as an old spelling
    of `patience` (default 3), as in Chainer.  Raises ValueError for another
    mode or patience < 1, TypeError for both spellings.  Unlike Chainer's, its
    state (best value, count, interval sums, inner triggers) is saved in
    snapshots.  One value cannot be: the stop trigger reads iteration N's
    observation after the extensions, snapshot included, so a run resumed
    from snapshot_iter_N computes that interval's mean without iteration N.
    Chainer: chainer.training.triggers.EarlyStoppingTrigger.
    """

    def __init__(self, check_trigger=(1, 'epoch'), monitor='main/loss', patience=None,
                 mode='auto', verbose=False, max_trigger=(100, 'epoch'), **kwargs):
        patients = kwargs.pop('patients', None)
        if kwargs:
            raise TypeError('EarlyStoppingTrigger: unexpected keyword argument(s) '
                            '{}'.format(', '.join(sorted(kwargs))))
        if patients is not None and patience is not None:
            raise TypeError("EarlyStoppingTrigger: give 'patience' or its old "
                            "spelling 'patients', not both")
        patience = 3 if patience is None and patients is None else (
            patience if patients is None else patients)
        # Any real number >= 1, as Chainer compares the count with it (3, 3.0,
        # numpy.int64(3)); a bool or 0 is a mistake.
        if isinstance(patience, bool) or not (isinstance(patience, (int, float, np.number))
                                              and patience >= 1):
            raise ValueError('EarlyStoppingTrigger: patience must be a number >= 1, '
                             'got {!r}'.format(patience))
        if mode not in ('auto', 'max', 'min'):
            raise ValueError("EarlyStoppingTrigger: mode must be 'auto', 'max' or "
                             "'min', not {!r}".format(mode))
        if mode == 'auto':
            mode = 'max' if 'accuracy' in monitor else 'min'
        self.monitor = monitor
        self.patience = patience
        self.verbose = verbose
        self.count = 0               # checks in a row without a new best
        if mode == 'max':
            self._compare = lambda new, best: new > best
        else:
            self._compare = lambda new, best: new < best
        self.best = -math.inf if mode == 'max' else math.inf
        self._interval_trigger = get_trigger(check_trigger)
        self._max_trigger = get_trigger(max_trigger)
        self._summary = DictSummary()
        self._loaded = False         # True between loading a snapshot and the next call
        if verbose:
            print('EarlyStoppingTrigger: {} is better when {}'.format(
                monitor, 'greater' if mode == 'max' else 'less'))

    def __call__(self, trainer):
        """True if training should stop: max_trigger fired, or this check's mean
        was not the best for `patience` checks in a row.
        Chainer: EarlyStoppingTrigger.__call__.
        """
        observation = trainer.observation
        loaded, self._loaded = self._loaded, False
        if self.monitor in observation:
            self._summary.add({self.monitor: observation[self.monitor]})
        if self._max_trigger(trainer):
            return True
        if not self._interval_trigger(trainer):
            return False
        # The first call after a resume comes before any update, so nothing
        # is reported yet: check with the values the snapshot held.
        resumed_check = loaded and self.monitor in self._summary.compute_mean()
        if self.monitor not in observation and not resumed_check:
            # As Chainer: the check needs the value reported at its iteration.
            warnings.warn('EarlyStoppingTrigger: {!r} was not reported at iteration '
                          '{}'.format(self.monitor, trainer.updater.iteration))
            return False
        mean = self._summary.compute_mean()[self.monitor]
        self._summary = DictSummary()
        if self._compare(mean, self.best):
            self.best, self.count = mean, 0
        else:
            self.count += 1
        if self.count >= self.patience:
            if self.verbose:
                print('EarlyStoppingTrigger: stopping at epoch {}'.format(
                    trainer.updater.epoch))
            return True
        return False

    def get_training_length(self):
        """max_trigger's (period, unit), the longest the training can be (used by
        ProgressBar). Chainer: EarlyStoppingTrigger.get_training_length.
        """
        return self._max_trigger.get_training_length()

    def serialize(self, serializer):
        """Save or load best, count, the interval's sums and both inner
        triggers (Chainer saves none of it; a Chainer snapshot, lacking the
        keys, leaves a fresh state with a warning).
        """
        try:
            self._interval_trigger.serialize(serializer['interval_trigger'])
            self._max_trigger.serialize(serializer['max_trigger'])
            self._summary.serialize(serializer['summary'])
            self.best = float(serializer('best', self.best))
            self.count = int(serializer('count', self.count))
            self._loaded = isinstance(serializer, Deserializer)
        except KeyError:
            warnings.warn('EarlyStoppingTrigger: the snapshot holds no state of it '
                          '(Chainer does not save one); starting its count afresh')

def _never_fire_trigger(trainer):
    return False


@_export('training', 'training.trigger', 'training.util')
def get_trigger(trigger):
    """A callable is a trigger already; None never fires; a tuple such as
    (1, 'epoch') becomes an IntervalTrigger.
    Chainer: chainer.training.get_trigger.
    """
    if callable(trigger):
        return trigger
    if trigger is None:
        return _never_fire_trigger
    return IntervalTrigger(*trigger)


# ----- the extension protocol ---------------------------------------------------
# An extension is any callable(trainer).  The Trainer also looks for these
# optional attributes: trigger, priority, name/default_name, and the methods
# initialize(trainer) (before the loop, also after resuming), finalize()
# (after the loop, even when it failed), on_error(trainer, exc, tb) and
# serialize(serializer) (its state in snapshots).

PRIORITY_WRITER = 300    # writes observations (Evaluator): runs first
PRIORITY_EDITOR = 200    # edits observations
PRIORITY_READER = 100    # reads them (LogReport, PrintReport): the default
_export('training', 'training.extension', PRIORITY_WRITER=PRIORITY_WRITER,
        PRIORITY_EDITOR=PRIORITY_EDITOR, PRIORITY_READER=PRIORITY_READER)
# Snapshots run after everything else: by then LogReport has filed this
# iteration and every trigger has seen it, so a resumed run neither loses
# nor repeats anything.
_PRIORITY_SNAPSHOT = -100


@_export('training', 'training.extension')
class Extension:
    """Base class for extensions with state; override __call__.
    Chainer: chainer.training.Extension.
    """

    trigger = 1, 'iteration'
    priority = PRIORITY_READER
    name = None

    @property
    def default_name(self):
        """The name the trainer uses unless given one: the class name.
        Chainer: chainer.training.Extension.default_name.
        """
        return type(self).__name__

    def __call__(self, trainer):
        """Do the extension's work on `trainer`; subclasses define it
        (NotImplementedError here). Chainer: chainer.training.Extension.__call__.
        """
        raise NotImplementedError('{} does not implement __call__'.format(
            type(self).__name__))

    def initialize(self, trainer):
        """Called by Trainer.run before the loop (also when resuming).
        Chainer: chainer.training.Extension.initialize.
        """
        pass

    def finalize(self):
        """Called after the training loop, even when it failed.
        Chainer: chainer.training.Extension.finalize.
        """
        pass

    def on_error(self, trainer, exc, tb):
        """Called when the training loop raises `exc` (with traceback `tb`),
        before finalize. Chainer: chainer.training.Extension.on_error.
        """
        pass

    def serialize(self, serializer):
        """Save or load the extension's state in snapshots; nothing here.
        Chainer: chainer.training.Extension.serialize.
        """
        pass


@_export('training', 'training.extension')
def make_extension(trigger=None, default_name=None, priority=None,
                   finalizer=None, initializer=None, on_error=None):
    """Decorator giving a plain function the attributes of an extension:

        @make_extension(trigger=(1, 'epoch'))
        def halve_lr(trainer): trainer.updater.get_optimizer('main').lr /= 2

    Chainer: chainer.training.make_extension.
    """
    def decorate(function):
        function.trigger = Extension.trigger if trigger is None else trigger
        function.default_name = default_name or function.__name__
        function.priority = Extension.priority if priority is None else priority
        function.finalize = finalizer
        function.initialize = initializer
        function.on_error = on_error
        return function
    return decorate


class _ExtensionEntry:
    def __init__(self, extension, priority, trigger, call_before_training):
        self.extension = extension
        self.priority = priority
        self.trigger = trigger
        self.call_before_training = call_before_training


# ----- the trainer -------------------------------------------------------------

@_export('training', 'training.trainer')
class Trainer:
    """Runs `updater.update()` until `stop_trigger` fires, calling the
    extensions after every update:

        trainer = Trainer(updater, (20, 'epoch'), out='result')
        trainer.extend(extensions.LogReport())
        trainer.run()

    As in Chainer, stop_trigger=None never fires: give a length.
    """

    def __init__(self, updater, stop_trigger=None, out='result', extensions=None):
        self.updater = updater
        self.stop_trigger = get_trigger(stop_trigger)
        self.out = out
        self.observation = {}
        # Models report to this reporter.  Each optimizer's target is an
        # observer under the optimizer's name, so Classifier's
        # report({'loss': ...}, self) arrives as 'main/loss' (a GAN's
        # discriminator as 'dis/loss'), and its sub-links as 'main/predictor'.
        self.reporter = Reporter()
        for name, optimizer in updater.get_all_optimizers().items():
            self.reporter.add_observer(name, optimizer.target)
            self.reporter.add_observers(name, optimizer.target.namedlinks(skipself=True))
        self._extensions = collections.OrderedDict()
        self._start_at = None
        self._snapshot_elapsed_time = 0.0   # time spent before a resume
        self._final_elapsed_time = None
        self._done = False
        connect = getattr(updater, 'connect_trainer', None)
        if connect is not None:
            connect(self)
        for extension in extensions or ():
            self.extend(extension)

    @property
    def is_before_training(self):
        """True while no update has run (updater.iteration == 0).
        Chainer: chainer.training.Trainer.is_before_training.
        """
        return self.updater.iteration == 0

    @property
    def elapsed_time(self):
        """Seconds of training so far, including the runs before a resume.
        Raises RuntimeError before run() starts.
        Chainer: chainer.training.Trainer.elapsed_time.
        """
        if self._done:
            return self._final_elapsed_time
        if self._start_at is None:
            raise RuntimeError('Trainer.elapsed_time: training has not started')
        return time.perf_counter() - self._start_at + self._snapshot_elapsed_time

    def extend(self, extension, name=None, trigger=None, priority=None, *,
               call_before_training=False):
        """Register an extension.  Unset arguments come from the extension's
        own attributes; a repeated name gets a suffix ('LogReport_1').
        Raises TypeError for an extension without a name, ValueError for the
        name 'training'. Chainer: chainer.training.Trainer.extend.
        """
        if name is None:
            name = (getattr(extension, 'name', None) or
                    getattr(extension, 'default_name', None) or
                    getattr(extension, '__name__', None))
            if name is None:
                raise TypeError('Trainer.extend: the extension has no name; '
                                'pass name=')
        if name == 'training':
            raise ValueError("Trainer.extend: the name 'training' is reserved")
        if trigger is None:
            trigger = getattr(extension, 'trigger', (1, 'iteration'))
        if priority is None:
            priority = getattr(extension, 'priority', PRIORITY_READER)
        unique, ordinal = name, 0
        while unique in self._extensions:
            ordinal += 1
            unique = '{}_{}'.format(name, ordinal)
        extension.name = unique
        self._extensions[unique] = _ExtensionEntry(
            extension, priority, get_trigger(trigger), call_before_training)

    def get_extension(self, name):
        """The extension registered as `name`. Raises ValueError naming the
        registered ones if there is none. Chainer: chainer.training.Trainer.get_extension.
        """
        if name not in self._extensions:
            raise ValueError('Trainer.get_extension: no extension named {!r} '
                             '(have: {})'.format(name, ', '.join(self._extensions)))
        return self._extensions[name].extension

    def run(self, show_loop_exception_msg=True):
        """Train: create `out`, initialize the extensions, then update and call
        every extension whose trigger fires until the stop trigger fires. On an
        exception, prints a note (unless show_loop_exception_msg is False), calls
        every extension's on_error, and re-raises; extensions and the updater are
        finalized in any case. Raises RuntimeError on a second run.
        Chainer: chainer.training.Trainer.run.
        """
        if self._done:
            raise RuntimeError('Trainer.run: this trainer has finished; to train '
                               'further, make a new Trainer and load a snapshot')
        os.makedirs(self.out, exist_ok=True)
        # Highest priority first; sorted() is stable, so equal priorities run
        # in the order they were added.
        entries = sorted(self._extensions.values(), key=lambda e: e.priority,
                         reverse=True)
        self._start_at = time.perf_counter()
        # A snapshot that loads itself (autoload) restores the state the
        # other extensions initialize from, so it goes first.
        loads_first = sorted(entries, key=lambda e: not getattr(e.extension, 'autoload', False))
        for entry in loads_first:
            initialize = getattr(entry.extension, 'initialize', None)
            if initialize is not None and not getattr(entry.trigger, 'finished', False):
                initialize(self)
        if self.is_before_training:
            self.observation = {}
            with self.reporter.scope(self.observation):
                for entry in entries:
                    if entry.call_before_training:
                        entry.extension(self)

        try:
            while not self.stop_trigger(self):
                self.observation = {}
                with self.reporter.scope(self.observation):
                    self.updater.update()
                    for entry in entries:
                        if entry.trigger(self):
                            entry.extension(self)
        except Exception as error:
            if show_loop_exception_msg:
                sys.stderr.write('Exception in main training loop: {}\nWill finalize '
                                 'trainer extensions and updater before reraising '
                                 'the exception.\n'.format(error))
            for entry in entries:
                on_error = getattr(entry.extension, 'on_error', None)
                if on_error is not None:
                    try:     # every handler runs; their own failures are only printed
                        on_error(self, error, error.__traceback__)
                    except Exception as handler_error:
                        sys.stderr.write('Exception in error handler: {}\n'.format(
                            handler_error))
            raise
        finally:
            for entry in entries:
                finalize = getattr(entry.extension, 'finalize', None)
                if finalize is not None:
                    finalize()
            self.updater.finalize()
        self._final_elapsed_time = self.elapsed_time
        self._done = True

    def serialize(self, serializer):
        """Save or load the updater, the stop trigger, every extension and its
        trigger, and the elapsed time: a whole-trainer snapshot.
        Chainer: chainer.training.Trainer.serialize.
        """
        self.updater.serialize(serializer['updater'])
        if hasattr(self.stop_trigger, 'serialize'):
            self.stop_trigger.serialize(serializer['stop_trigger'])
        extensions = serializer['extensions']
        triggers = serializer['extension_triggers']
        for name, entry in self._extensions.items():
            if hasattr(entry.extension, 'serialize'):
                entry.extension.serialize(extensions[name])
            if hasattr(entry.trigger, 'serialize'):
                entry.trigger.serialize(triggers[name])
        if isinstance(serializer, Deserializer):
            self._snapshot_elapsed_time = float(serializer(
                '_snapshot_elapsed_time', self._snapshot_elapsed_time))
        else:
            serializer('_snapshot_elapsed_time', self._snapshot_elapsed_time
                       if self._start_at is None else self.elapsed_time)


# ----- evaluation ----------------------------------------------------------------

@_export('training.extensions', 'training.extensions.evaluator')
class Evaluator(Extension):
    """Extension that runs the model over a whole validation iterator and
    reports the means of what it reported, prefixed with its name:
    'validation/main/loss', 'validation/main/accuracy'.

    iterator: an iterator (repeat=False) or a dict of them ('main' is used);
    target: the link to evaluate or a dict; converter: default
    concat_examples; device: where batches are sent; eval_hook(evaluator):
    called first; eval_func: called instead of target. progress_bar is
    accepted and draws nothing. Runs with config.train False and no graph,
    once per epoch by default, so the model is left exactly as it was. An
    iterator that repeats (it would never end) or gives no batch at all is a
    ValueError. Chainer: chainer.training.extensions.Evaluator.
    """

    trigger = 1, 'epoch'
    default_name = 'validation'
    priority = PRIORITY_WRITER

    def __init__(self, iterator, target, converter=concat_examples, device=None,
                 eval_hook=None, eval_func=None, *, progress_bar=False):
        # progress_bar (Chainer prints one while evaluating) is accepted and
        # ignored: the trainer's ProgressBar already shows where training is.
        self._iterators = iterator if isinstance(iterator, dict) else {'main': iterator}
        self._targets = target if isinstance(target, dict) else {'main': target}
        self.converter = converter
        self.device = None if device is None else get_device(device)
        self.eval_hook = eval_hook
        self.eval_func = eval_func
        for name, it in self._iterators.items():
            if getattr(it, 'repeat', False):
                warnings.warn('Evaluator: iterator {!r} repeats forever, so '
                              'evaluation would never end; create it with '
                              'repeat=False'.format(name))

    def get_iterator(self, name):
        """The iterator registered as `name`. Chainer: Evaluator.get_iterator."""
        return self._iterators[name]

    def get_all_iterators(self):
        """A dict {name: iterator}. Chainer: Evaluator.get_all_iterators."""
        return dict(self._iterators)

    def get_target(self, name):
        """The link registered as `name`. Chainer: Evaluator.get_target."""
        return self._targets[name]

    def get_all_targets(self):
        """A dict {name: link}. Chainer: Evaluator.get_all_targets."""
        return dict(self._targets)

    def __call__(self, trainer=None):
        # A reporter of our own, so that the model's reports land under our
        # names; the means then go to the trainer's reporter in one report.
        reporter = Reporter()
        prefix = '' if self.name is None else self.name + '/'
        for name, target in self._targets.items():
            reporter.add_observer(prefix + name, target)
            reporter.add_observers(prefix + name, target.namedlinks(skipself=True))
        with reporter, using_config('train', False):
            result = self.evaluate()
        report(result)
        return result

    def evaluate(self):
        """Run eval_func (or the target) over every batch of the 'main' iterator
        (reset first) and return {key: mean over batches} of what it reported.
        Chainer: chainer.training.extensions.Evaluator.evaluate.
        """
        iterator = self._iterators['main']
        if getattr(iterator, 'repeat', False):
            raise ValueError(
                "Evaluator: iterator 'main' repeats forever ({}(..., repeat=True)), "
                'so evaluation would never end; create it with repeat=False'
                .format(type(iterator).__name__))
        eval_func = self.eval_func or self._targets['main']
        if self.eval_hook:
            self.eval_hook(self)
        if hasattr(iterator, 'reset'):   # start every evaluation from the top
            iterator.reset()
            batches = iterator
        else:
            batches = copy.copy(iterator)
        summary = DictSummary()
        batch = None
        for batch in batches:
            observation = {}
            with report_scope(observation):
                in_arrays = self.converter(batch, self.device)
                with no_backprop_mode():
                    if isinstance(in_arrays, tuple):
                        eval_func(*in_arrays)
                    elif isinstance(in_arrays, dict):
                        eval_func(**in_arrays)
                    else:
                        eval_func(in_arrays)
            summary.add(observation)    # each batch counts once, as in Chainer
        if batch is None:
            raise ValueError("Evaluator: iterator 'main' gave no batch (its dataset has "
                             'length {}), so there is nothing to evaluate'.format(
                                 len(getattr(iterator, 'dataset', ()))))
        return summary.compute_mean()

    def finalize(self):
        for iterator in self._iterators.values():
            iterator.finalize()


# ----- logging and printing ----------------------------------------------------

@_export('training.extensions', 'training.extensions.log_report')
class LogReport(Extension):
    """Averages the observations over each interval of `trigger` and appends
    the means, with 'epoch', 'iteration' and 'elapsed_time', to `log`; the
    whole list is (re)written as JSON to out/<filename> every time.

    It runs every iteration (to see every observation) and decides with its
    own `trigger` when an interval is over.
    Chainer: chainer.training.extensions.LogReport.
    """

    def __init__(self, keys=None, trigger=(1, 'epoch'), postprocess=None,
                 filename=None, log_name='log'):
        self._keys = keys
        self._trigger = get_trigger(trigger)
        self._postprocess = postprocess
        self._log_name = log_name if filename is None else filename
        self._log = []
        self._summary = DictSummary()

    @property
    def log(self):
        """The list of log entries (dicts) written so far. Chainer: LogReport.log."""
        return self._log

    def __call__(self, trainer):
        observation = trainer.observation
        if self._keys is None:
            self._summary.add(observation)
        else:
            self._summary.add({key: observation[key] for key in self._keys
                               if key in observation})
        # Extended with call_before_training=True, it also files a row for
        # iteration 0 (e.g. the Evaluator's score of the untrained model).
        if not (trainer.is_before_training or self._trigger(trainer)):
            return
        entry = {key: float(mean) for key, mean in self._summary.compute_mean().items()}
        entry['epoch'] = trainer.updater.epoch
        entry['iteration'] = trainer.updater.iteration
        entry['elapsed_time'] = trainer.elapsed_time
        if self._postprocess is not None:
            self._postprocess(entry)
        if not self._log and self._keys is not None:
            _warn_unreported_keys('LogReport', self._keys, entry)
        self._log.append(entry)
        if self._log_name is not None:
            text = json.dumps(self._log, indent=4).encode('utf-8')
            path = os.path.join(trainer.out, self._log_name.format(**entry))
            _write_atomically(path, lambda f: f.write(text))
        self._summary = DictSummary()

    def serialize(self, serializer):
        if hasattr(self._trigger, 'serialize'):
            self._trigger.serialize(serializer['_trigger'])
        self._summary.serialize(serializer['_summary'])
        text = serializer('_log', json.dumps(self._log))   # floats survive JSON exactly
        if isinstance(serializer, Deserializer):
            self._log = json.loads(text)


def _warn_unreported_keys(owner, keys, entry):
    """Warn, at the first log entry, about asked-for keys it lacks: a typo
    would otherwise show as a blank column forever."""
    unknown = [key for key in keys if key not in entry]
    if unknown:
        warnings.warn(
            '{}: {} not in the first log entry, which has {}; check the spelling '
            '(a key reported less often than the log is written, e.g. by an '
            'Evaluator with a longer trigger, shows up later)'.format(
                owner, ', '.join(repr(key) for key in unknown), sorted(entry)),
            stacklevel=3)


@_export('training.extensions', 'training.extensions.print_report')
class PrintReport(Extension):
    """Prints chosen entries of a LogReport's log as a table, one row per
    entry, as soon as the entry exists:

        epoch       main/loss   validation/main/loss  ...
        1           0.191       0.0957                ...

    `log_report` is the name of a LogReport extended to the same trainer, or
    a LogReport object that this extension then drives itself.  `out`
    defaults to the sys.stdout of the moment of printing.
    Chainer: chainer.training.extensions.PrintReport.
    """

    def __init__(self, entries, log_report='LogReport', out=None):
        self._entries = list(entries)
        self._log_report = log_report
        self._out = out
        self._log_len = 0            # log entries printed so far
        # Each column is as wide as its title, at least 10, plus two spaces.
        self._widths = [max(10, len(entry)) for entry in self._entries]
        self._header_printed = False

    def _stream(self):
        return sys.stdout if self._out is None else self._out

    def __call__(self, trainer):
        out = self._stream()
        if not self._header_printed:
            out.write('  '.join('{:{}}'.format(entry, width) for entry, width
                                in zip(self._entries, self._widths)) + '\n')
            self._header_printed = True
        log_report = self._log_report
        if isinstance(log_report, str):
            log_report = trainer.get_extension(log_report)
        elif isinstance(log_report, LogReport):
            log_report(trainer)
        else:
            raise TypeError('PrintReport: log_report must be a name or a '
                            'LogReport, not {}'.format(type(log_report).__name__))
        log = log_report.log
        if self._log_len == 0 and log:
            _warn_unreported_keys('PrintReport', self._entries, log[0])
        while self._log_len < len(log):
            # '\033[J' erases to the end of the screen: whatever a
            # ProgressBar drew below the cursor disappears under the row.
            out.write('\033[J')
            self._print_row(out, log[self._log_len])
            self._log_len += 1

    def _print_row(self, out, entry):
        for key, width in zip(self._entries, self._widths):
            if key in entry:
                out.write('{:<{}g}  '.format(entry[key], width))
            else:
                out.write(' ' * (width + 2))
        out.write('\n')
        if hasattr(out, 'flush'):
            out.flush()

    def serialize(self, serializer):
        if isinstance(self._log_report, LogReport):
            self._log_report.serialize(serializer['_log_report'])


def _format_duration(seconds):
    """Like str(datetime.timedelta(seconds=...)): H:MM:SS[.ffffff]."""
    if not math.isfinite(seconds):
        return 'unknown'
    micro = int(round(max(seconds, 0.0) * 1e6))
    days, micro = divmod(micro, 86400 * 10 ** 6)
    whole, micro = divmod(micro, 10 ** 6)
    hours, rest = divmod(whole, 3600)
    text = '{}:{:02d}:{:02d}'.format(hours, *divmod(rest, 60))
    if micro:
        text += '.{:06d}'.format(micro)
    if days:
        text = '{} day{}, {}'.format(days, '' if days == 1 else 's', text)
    return text


@_export('training.extensions', 'training.extensions.progress_bar')
class ProgressBar(Extension):
    """Extension that draws, every `update_interval` iterations (default 100),
    in place:

             total [##########........................................] 20.00%
        this epoch [#########################.........................] 50.00%
               500 iter, 1 epoch / 5 epochs
            231.62 iters/sec. Estimated time to finish: 0:00:17.

    and moves the cursor back up ('\033[4A') so the next drawing replaces it.
    The rate line stays empty until there is a rate. training_length:
    (length, unit), default taken from the trainer's stop trigger (TypeError if
    it has none); bar_length default 50; out default sys.stdout.
    Chainer: chainer.training.extensions.ProgressBar.
    """

    def __init__(self, training_length=None, update_interval=100, bar_length=50,
                 out=None):
        self._training_length = training_length
        self._update_interval = update_interval
        self._bar_length = bar_length
        self._out = out
        self._recent = []    # (iteration, epoch_detail, time) of the last 100 drawings

    def _stream(self):
        return sys.stdout if self._out is None else self._out

    def _bar(self, title, rate):
        marks = int(rate * self._bar_length)
        return '{:>10} [{}{}] {:6.2%}\n'.format(
            title, '#' * marks, '.' * (self._bar_length - marks), rate)

    def __call__(self, trainer):
        if self._training_length is None:
            get_length = getattr(trainer.stop_trigger, 'get_training_length', None)
            if get_length is None:
                raise TypeError('ProgressBar: cannot tell the training length from '
                                'a {}; pass training_length=(length, unit)'.format(
                                    type(trainer.stop_trigger).__name__))
            self._training_length = get_length()
        length, unit = self._training_length
        updater = trainer.updater
        iteration = updater.iteration
        if iteration % self._update_interval != 0:
            return
        epoch = updater.epoch_detail
        now = time.time()
        self._recent.append((iteration, epoch, now))
        done = iteration if unit == 'iteration' else epoch
        out = self._stream()
        out.write('\033[J')
        out.write(self._bar('total', min(done / length, 1.0)))
        out.write(self._bar('this epoch', epoch - int(epoch)))
        out.write('{:10} iter, {} epoch / {} {}s\n'.format(
            iteration, updater.epoch, length, unit))
        # Speed over the recent drawings, not since the start: it follows
        # changes (a slow first iteration, an evaluation) more quickly.
        old_iteration, old_epoch, then = self._recent[0]
        span = now - then
        if span > 0:
            iterations_per_second = (iteration - old_iteration) / span
            units_per_second = (done - (old_iteration if unit == 'iteration'
                                        else old_epoch)) / span
            remaining = (round((length - done) / units_per_second)
                         if units_per_second > 0 else float('inf'))
            out.write('{:10.5g} iters/sec. Estimated time to finish: {}.\n'.format(
                iterations_per_second, _format_duration(remaining)))
        else:   # the first drawing: no rate yet, so no line that pretends one
            out.write('\n')
        out.write('\033[4A')          # back to the top of the bar
        if hasattr(out, 'flush'):
            out.flush()
        if len(self._recent) > 100:
            del self._recent[0]

    def finalize(self):
        out = self._stream()
        out.write('\033[J')           # wipe the bar
        if hasattr(out, 'flush'):
            out.flush()


# ----- snapshots ---------------------------------------------------------------
# A snapshot is save_npz of the trainer (or of one object) into out/.  It is
# written under a temporary name and renamed, so a crash never leaves a
# half-written snapshot under the real name.  Resuming:
#
#     serializers.load_npz('result/snapshot_iter_1200', trainer)
#     trainer.run()
#
# or snapshot(autoload=True), which loads the newest snapshot in out/ when
# the run starts.  Caveat, as in Chainer: NumPy's global random state (used
# by shuffling iterators) is not part of a snapshot.

@_export('training.extensions.snapshot_writers')
class Writer:
    """How a snapshot reaches the disk: writer(filename, outdir, target).
    Chainer: chainer.training.extensions.snapshot_writers.Writer.
    """

    def __init__(self):
        self._post_save_hooks = []

    def __call__(self, filename, outdir, target):
        """Write `target` to outdir/filename; subclasses define how.
        Chainer: chainer.training.extensions.snapshot_writers.Writer.__call__.
        """
        raise NotImplementedError

    def save(self, filename, outdir, target, savefun, **kwds):
        """savefun(path, target) into a private temporary folder in outdir,
        then an atomic rename to outdir/filename.
        Chainer: chainer.training.extensions.snapshot_writers.Writer.save.
        """
        destination = os.path.join(outdir, filename)
        os.makedirs(os.path.dirname(destination) or '.', exist_ok=True)
        folder = tempfile.mkdtemp(prefix='.' + os.path.basename(filename) + '.',
                                  dir=os.path.dirname(destination) or '.')
        try:
            temporary = os.path.join(folder, os.path.basename(filename))
            savefun(temporary, target, **kwds)
            os.replace(temporary, destination)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        for hook in self._post_save_hooks:
            hook()

    def _add_cleanup_hook(self, hook):
        self._post_save_hooks.append(hook)

    def finalize(self):
        """Wait for or release pending writes; nothing here.
        Chainer: chainer.training.extensions.snapshot_writers.Writer.finalize.
        """
        pass


@_export('training.extensions.snapshot_writers')
class SimpleWriter(Writer):
    """Calls savefun(path, target, **kwds) right away.
    Chainer: chainer.training.extensions.snapshot_writers.SimpleWriter.
    """

    def __init__(self, savefun=save_npz, **kwds):
        super().__init__()
        self._savefun = savefun
        self._kwds = kwds

    def __call__(self, filename, outdir, target):
        self.save(filename, outdir, target, self._savefun, **self._kwds)


def _snapshot_files(pattern, folder):
    """Files in `folder` named like `pattern` (same text before its first
    '{' and after its last '}'), oldest first."""
    prefix, suffix = pattern.split('{')[0], pattern.split('}')[-1]
    found = []
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.startswith(prefix) and name.endswith(suffix) and os.path.isfile(path):
            # Equal times (a coarse clock) are ordered by the numbers in the
            # name, so 'snapshot_iter_10' counts as newer than '_9'.
            numbers = [int(''.join(g)) for is_digit, g in itertools.groupby(name, str.isdigit)
                       if is_digit]
            found.append((os.stat(path).st_mtime_ns, numbers, name))
    return [name for _, _, name in sorted(found)]


class _Snapshot(Extension):
    # Named like Chainer's class: its name is part of snapshot keys
    # ('extension_triggers/_Snapshot/...').
    trigger = 1, 'epoch'
    priority = _PRIORITY_SNAPSHOT

    def __init__(self, target=None, condition=None, writer=None,
                 filename='snapshot_iter_{.updater.iteration}',
                 snapshot_on_error=False, n_retains=-1, autoload=False):
        self._target = target
        self.filename = filename
        self.condition = condition
        self.writer = SimpleWriter() if writer is None else writer
        self._snapshot_on_error = snapshot_on_error
        self.n_retains = -1 if n_retains is None else n_retains
        self.autoload = autoload

    def initialize(self, trainer):
        target = trainer if self._target is None else self._target
        if self.autoload and isinstance(self.filename, str) and os.path.isdir(trainer.out):
            names = _snapshot_files(self.filename, trainer.out)
            if names:
                load_npz(os.path.join(trainer.out, names[-1]), target)
        if self.n_retains > 0 and isinstance(self.filename, str) and \
                hasattr(self.writer, '_add_cleanup_hook'):
            def remove_stale():
                names = _snapshot_files(self.filename, trainer.out)
                for name in names[:max(len(names) - self.n_retains, 0)]:
                    os.remove(os.path.join(trainer.out, name))
            self.writer._add_cleanup_hook(remove_stale)

    def __call__(self, trainer):
        if self.condition is None or self.condition():
            self._make_snapshot(trainer)

    def on_error(self, trainer, exc, tb):
        if self._snapshot_on_error:
            self._make_snapshot(trainer)

    def _make_snapshot(self, trainer):
        target = trainer if self._target is None else self._target
        filename = self.filename(trainer) if callable(self.filename) else \
            self.filename.format(trainer)
        self.writer(filename, trainer.out, target)

    def finalize(self):
        if hasattr(self.writer, 'finalize'):
            self.writer.finalize()


@_export('training.extensions')
def snapshot(savefun=None, filename='snapshot_iter_{.updater.iteration}', *,
             target=None, condition=None, writer=None, snapshot_on_error=False,
             n_retains=-1, autoload=False):
    """Extension saving the trainer (or `target`) to out/<filename>, where
    filename is formatted with the trainer: the default gives
    'snapshot_iter_1200'.  Once per epoch unless extended with a trigger.

    n_retains: keep only the newest n files of this name pattern.
    autoload: at the start of run(), load the newest of them, if any.
    condition: a callable() -> bool; no snapshot when it says False.
    Chainer: chainer.training.extensions.snapshot.
    """
    if savefun is not None and writer is not None:
        raise TypeError('snapshot: give savefun or writer, not both')
    if writer is None:
        writer = SimpleWriter(save_npz if savefun is None else savefun)
    return _Snapshot(target, condition, writer, filename, snapshot_on_error,
                     n_retains, autoload)


@_export('training.extensions')
def snapshot_object(target, filename, savefun=None, **kwargs):
    """snapshot() of one object (a model, an optimizer), e.g.
    snapshot_object(model, 'model_epoch_{.updater.epoch}').
    Chainer: chainer.training.extensions.snapshot_object.
    """
    return snapshot(savefun, filename, target=target, **kwargs)


# ----- plots ---------------------------------------------------------------------

def _matplotlib_available():
    try:
        import matplotlib  # noqa: F401  (imported only to see whether it exists)
    except ImportError:
        return False
    return True


def _warn_no_matplotlib():
    warnings.warn('PlotReport: matplotlib is not installed, so nothing will be '
                  'plotted (pip install matplotlib)')


@_export('training.extensions', 'training.extensions.plot_report')
class PlotReport(Extension):
    """Extension plotting the interval means of `y_keys` (a key or a list)
    against `x_key` ('iteration' default, or 'epoch') into out/<filename>,
    redrawn at every interval of `trigger` (default (1, 'epoch')).

    The y axis is labelled with the keys' last parts ('loss'), integer x
    values get integer ticks, the legend sits inside the axes. filename (or
    Chainer's older file_name, default 'plot.png'): its extension picks the
    format (.png, .pdf ...). marker default 'x', grid default True;
    postprocess(figure, axes, summary) runs before saving. matplotlib is
    imported only here and draws on an Agg canvas (no window, no global
    state); without it the extension warns once and does nothing.
    Chainer: chainer.training.extensions.PlotReport.
    """

    def __init__(self, y_keys, x_key='iteration', trigger=(1, 'epoch'),
                 postprocess=None, filename=None, marker='x', grid=True,
                 file_name='plot.png'):
        self._y_keys = (y_keys,) if isinstance(y_keys, str) else tuple(y_keys)
        self._x_key = x_key
        self._trigger = get_trigger(trigger)
        self._postprocess = postprocess
        self._filename = file_name if filename is None else filename
        self._marker = marker
        self._grid = grid
        self._summary = DictSummary()
        self._data = {key: [] for key in self._y_keys}
        if not _matplotlib_available():
            _warn_no_matplotlib()

    @classmethod
    def available(cls):
        """Whether plots can be drawn (warns when they cannot).
        Chainer: chainer.training.extensions.PlotReport.available.
        """
        if _matplotlib_available():
            return True
        _warn_no_matplotlib()
        return False

    def __call__(self, trainer):
        if not _matplotlib_available():
            return
        observation = trainer.observation
        self._summary.add({key: observation[key] for key in self._y_keys
                           if key in observation})
        if not (trainer.is_before_training or self._trigger(trainer)):
            return
        means = {key: float(value) for key, value in self._summary.compute_mean().items()}
        means['epoch'] = trainer.updater.epoch
        means['iteration'] = trainer.updater.iteration
        x = means[self._x_key]
        for key in self._y_keys:
            if key in means:
                self._data[key].append((x, means[key]))
        self._draw(os.path.join(trainer.out, self._filename))
        self._summary = DictSummary()

    def _draw(self, path):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
        figure = Figure()
        FigureCanvasAgg(figure)
        axes = figure.add_subplot(111)
        axes.set_xlabel(self._x_key)
        axes.set_ylabel(_plot_y_label(self._y_keys))
        if self._x_key in ('epoch', 'iteration'):   # no tick at epoch 2.5
            axes.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10],
                                                     min_n_ticks=1))
        if self._grid:
            axes.grid()
        for key in self._y_keys:
            if self._data[key]:
                xs, ys = zip(*self._data[key])
                axes.plot(xs, ys, marker=self._marker, label=key)
        if not axes.has_data():
            return
        if self._postprocess is not None:
            self._postprocess(figure, axes, self._summary)
        # The legend inside the axes, where it hides the fewest points: no
        # empty margin beside the plot.
        axes.legend(loc='best')
        figure.tight_layout()
        file_format = os.path.splitext(path)[1][1:] or 'png'   # loss.pdf: a PDF
        _write_atomically(path, lambda f: figure.savefig(
            f, format=file_format, bbox_inches='tight'))

    def serialize(self, serializer):
        key = '_plot_' + self._filename
        text = serializer(key, json.dumps(self._data))
        if isinstance(serializer, Deserializer):
            self._data = {k: [tuple(point) for point in v]
                          for k, v in json.loads(text).items()}
        # Beyond Chainer's snapshot: where the interval stands and its running
        # means, so a run resumed mid-interval draws the points it would have.
        if hasattr(self._trigger, 'serialize'):
            self._trigger.serialize(serializer['_trigger'])
        try:
            self._summary.serialize(serializer['_summary'])
        except KeyError:
            warnings.warn('PlotReport: the snapshot holds no running means (one '
                          'written by Chainer?); the next point averages fewer values')


def _plot_y_label(y_keys):
    """The y-axis label of a PlotReport: the last part of the plotted keys
    ('loss' for main/loss and validation/main/loss), each distinct one once."""
    names = []
    for key in y_keys:
        name = key.rsplit('/', 1)[-1]
        if name not in names:
            names.append(name)
    return ', '.join(names)


# ----- the graph, as a picture -----------------------------------------------------
# The recorded graph (Chapter 3) is a picture waiting to be drawn: DOT is
# Graphviz's text format (`dot -Tpng cg.dot -o cg.png`).  Variables are
# octagons labelled with name, shape and dtype; functions are boxes.

_DEFAULT_VARIABLE_STYLE = {'shape': 'octagon', 'fillcolor': '#E0E0E0', 'style': 'filled'}
_DEFAULT_FUNCTION_STYLE = {'shape': 'record', 'fillcolor': '#6495ED', 'style': 'filled'}


def _dot_node(node_id, label, style):
    attributes = [('label', label)] + list(style.items())
    return '{} [{}];'.format(node_id, ','.join(
        '{}="{}"'.format(key, str(value).replace('"', '\\"')) for key, value in attributes))


def _variable_label(variable):
    # Chainer's wording: 'W: (3, 4), float32', '(4), int32', 'float32' (0-dim).
    parts = []
    if variable.data is not None and variable.data.ndim:
        parts.append('({})'.format(', '.join(str(n) for n in variable.data.shape)))
    parts.append(str(variable.dtype) if variable.data is not None else 'None')
    label = ', '.join(parts)
    return '{}: {}'.format(variable.name, label) if variable.name else label


def _graph_to_dot(root, variable_style=None, function_style=None):
    """DOT text of every variable and function behind `root`."""
    variable_style = _DEFAULT_VARIABLE_STYLE if variable_style is None else variable_style
    function_style = _DEFAULT_FUNCTION_STYLE if function_style is None else function_style
    lines = ['digraph graphname{rankdir=TB;']
    edges = []
    shown = set()

    def show_variable(variable):
        if id(variable) not in shown:
            shown.add(id(variable))
            lines.append(_dot_node(id(variable), _variable_label(variable), variable_style))

    show_variable(root)
    pending = [root]
    while pending:                          # iterative: deep graphs are fine
        function = pending.pop().creator
        if function is None or id(function) in shown:
            continue
        shown.add(id(function))
        lines.append(_dot_node(id(function), function.label, function_style))
        for x in function.inputs:
            show_variable(x)
            edges.append('{} -> {};'.format(id(x), id(function)))
            pending.append(x)
        for ref in function.outputs:
            y = ref()
            if y is not None:          # an output nobody kept is gone already
                show_variable(y)
                edges.append('{} -> {};'.format(id(function), id(y)))
    return '\n'.join(lines + edges + ['}']) + '\n'


@_export('training.extensions', 'training.extensions.computational_graph')
class DumpGraph(Extension):
    """Writes the graph behind the reported value `root_name` (e.g.
    'main/loss') of the first iteration to out/<filename> as DOT.

    Reported values are normally cut from their graph (Chapter 15), so from
    `initialize` until the dump it turns config.keep_graph_on_report on,
    and then puts the old value back.
    Chainer: chainer.training.extensions.DumpGraph.
    """

    default_name = 'dump_graph'

    def __init__(self, root_name, filename=None, variable_style=None,
                 function_style=None, out_name='cg.dot'):
        self._root_name = root_name
        self._filename = out_name if filename is None else filename
        self._variable_style = variable_style
        self._function_style = function_style
        self._original_flag = None
        self._flag_called = False     # True once the dump has happened
        self._holding_flag = False    # True while we have the switch turned on

    def initialize(self, trainer):
        if not self._flag_called and not self._holding_flag:
            self._original_flag = config.keep_graph_on_report
            config.keep_graph_on_report = True
            self._holding_flag = True

    def _release_flag(self):
        if self._holding_flag:
            config.keep_graph_on_report = self._original_flag
            self._holding_flag = False

    def trigger(self, trainer):
        # The trigger (a method) fires once.  If a snapshot loaded after
        # initialize says the dump already happened, let the switch go.
        if self._flag_called:
            self._release_flag()
            return False
        return True

    def __call__(self, trainer):
        try:
            if self._root_name not in trainer.observation:
                raise KeyError('DumpGraph: nothing was reported as {!r}; reported: '
                               '{}'.format(self._root_name, sorted(trainer.observation)))
            root = trainer.observation[self._root_name]
            if not isinstance(root, Variable):
                raise TypeError('DumpGraph: {!r} is a {}, not a Variable'.format(
                    self._root_name, type(root).__name__))
            text = _graph_to_dot(root, self._variable_style,
                                 self._function_style).encode('utf-8')
            _write_atomically(os.path.join(trainer.out, self._filename),
                              lambda f: f.write(text))
        finally:
            self._flag_called = True
            self._release_flag()

    def finalize(self):
        self._release_flag()

    def serialize(self, serializer):
        # Key names as in Chainer.
        original = serializer('_original_flag', bool(self._original_flag))
        if not self._holding_flag:     # never forget the value we must restore
            self._original_flag = bool(original)
        self._flag_called = bool(serializer('_flag_called', self._flag_called))


@_export('training.extensions', 'training.extensions.computational_graph')
def dump_graph(root_name, filename=None, variable_style=None, function_style=None,
               out_name='cg.dot'):
    """The function spelling of DumpGraph (Chainer v1-v5 examples use it).
    Chainer: extensions.dump_graph."""
    return DumpGraph(root_name, filename, variable_style, function_style, out_name)


@_export('training.extensions', 'training.extensions.variable_unchain')
@make_extension(trigger=(1, 'iteration'))
def unchain_variables(trainer):
    """Cut the graph behind every Variable in the trainer's observation, so
    that it is freed now.  Chainer: extensions.unchain_variables."""
    for value in trainer.observation.values():
        if isinstance(value, Variable):
            value.unchain_backward()


@_export('computational_graph')
class ComputationalGraph:
    """The graph behind one output Variable; dump() gives it as DOT text (what
    DumpGraph writes).  Chainer: computational_graph.ComputationalGraph."""

    def __init__(self, output, variable_style=None, function_style=None):
        self._output = output
        self._variable_style = variable_style
        self._function_style = function_style

    def dump(self, format='dot'):
        """The graph as text in `format` ('dot', the default).
        Chainer: chainer.computational_graph.ComputationalGraph.dump.
        """
        if format != 'dot':
            raise NotSupportedError('ComputationalGraph.dump: only format="dot" is supported, '
                                    'not {!r}'.format(format))
        return _graph_to_dot(self._output, self._variable_style, self._function_style)


@_export('computational_graph')
def build_computational_graph(outputs, remove_split=True, variable_style=None,
                              function_style=None, **kwargs):
    """The graph behind `outputs` (one Variable, or a sequence of exactly one).
    Chainer: computational_graph.build_computational_graph."""
    if isinstance(outputs, Variable):
        outputs = [outputs]
    outputs = list(outputs)
    if len(outputs) != 1:
        raise NotSupportedError('build_computational_graph: one output is supported here, '
                                'got {}; build one graph per output'.format(len(outputs)))
    return ComputationalGraph(outputs[0], variable_style, function_style)


@_export('training.extensions', 'training.extensions.fail_on_nonnumber')
class FailOnNonNumber(Extension):
    """Stop training with a clear error once a parameter holds NaN or inf.
    Chainer: extensions.FailOnNonNumber."""

    def __call__(self, trainer):
        for name, optimizer in trainer.updater.get_all_optimizers().items():
            for path, param in optimizer.target.namedparams():
                xp = _xp(param.data)
                if param.data is not None and not xp.isfinite(param.data).all():
                    raise RuntimeError(
                        'FailOnNonNumber: parameter {} of optimizer {!r} holds NaN or '
                        'inf after iteration {}; lower the learning rate or check the '
                        'data'.format(path, name, trainer.updater.iteration))


# Per-parameter statistics for the log.  Each takes the flattened array and
# returns a scalar, or several (percentile), on the array's device: the
# extension adds them up without copying anything to the host.
_PARAMETER_STATISTICS = {
    'mean': lambda x: _xp(x).mean(x),
    'std': lambda x: _xp(x).std(x),
    'min': lambda x: _xp(x).min(x),
    'max': lambda x: _xp(x).max(x),
    'zeros': lambda x: _xp(x).count_nonzero(x == 0),
    # The points of a normal distribution at -3 .. +3 standard deviations.
    'percentile': lambda x: _xp(x).percentile(x, (0.13, 2.28, 15.87, 50, 84.13, 97.72, 99.87)),
}


@_export('training.extensions', 'training.extensions.parameter_statistics')
class ParameterStatistics(Extension):
    """Reports statistics of the parameters (report_params) and gradients
    (report_grads) of `links` (a Link or a list of them), averaged over the
    calls between firings of `trigger` (default (1, 'epoch')), under keys

        [prefix/]<link name><parameter path>/<data|grad>/<statistic>

    e.g. 'None/predictor/l1/W/grad/std' for a root link (its name is None, as
    in Chainer); a statistic with several values gets '/0', '/1', ...
    `statistics`: 'default' (mean, std, min, max, zeros: the count of exact
    zeros, percentile: at 0.13, 2.28, 15.87, 50, 84.13, 97.72, 99.87), None
    (none), or a dict {name: function of a 1-d array}.  skip_nan_params=True
    reports NaN instead of the statistics of an array holding a NaN.
    Parameters or gradients that are None (not initialized, not computed) are
    skipped.  Extend it with the default trigger (every iteration) so that it
    sees every update.  Raises TypeError if `links` holds a non-Link or
    `statistics` is neither 'default', None nor a dict.
    Chainer: chainer.training.extensions.ParameterStatistics.
    """

    default_name = 'parameter_statistics'
    priority = PRIORITY_WRITER
    report_key_template = '{prefix}{link_name}{param_name}/{attr_name}/{function_name}'
    default_statistics = _PARAMETER_STATISTICS

    def __init__(self, links, statistics='default', report_params=True, report_grads=True,
                 prefix=None, trigger=(1, 'epoch'), skip_nan_params=False):
        links = list(links) if isinstance(links, (list, tuple)) else [links]
        for link in links:
            if not isinstance(link, Link):
                raise TypeError('ParameterStatistics: links must be Links, got a '
                                '{}'.format(type(link).__name__))
        if isinstance(statistics, str) and statistics == 'default':
            statistics = self.default_statistics
        elif statistics is None:
            statistics = {}
        elif not isinstance(statistics, dict):
            raise TypeError("ParameterStatistics: statistics must be 'default', None or "
                            "a dict of functions, not {!r}".format(statistics))
        self._links = links
        self._statistics = dict(statistics)
        self._attrs = [a for a, on in (('data', report_params), ('grad', report_grads)) if on]
        self._prefix = prefix
        self._trigger = get_trigger(trigger)
        self._summary = DictSummary()
        self._skip_nan_params = skip_nan_params

    def __call__(self, trainer):
        """Add this call's statistics to the running means; when the trigger
        fires, report the means and start afresh. Chainer: ParameterStatistics.__call__.
        """
        statistics = {}
        prefix = self._prefix + '/' if self._prefix else ''
        for link in self._links:
            for param_name, param in link.namedparams():
                for attr_name in self._attrs:
                    array = getattr(param, attr_name)
                    if array is None:
                        continue
                    array = array.ravel()
                    # where() instead of `if isnan.any()`: no wait for the GPU.
                    has_nan = _xp(array).isnan(array).any() if self._skip_nan_params else None
                    for function_name, function in self._statistics.items():
                        value = function(array)
                        if has_nan is not None:
                            value = _xp(array).where(has_nan, np.nan, value)
                        key = self.report_key_template.format(
                            prefix=prefix, link_name=link.name, param_name=param_name,
                            attr_name=attr_name, function_name=function_name)
                        if isinstance(value, _array_types) and value.size > 1:
                            statistics.update(('{}/{}'.format(key, i), v)
                                              for i, v in enumerate(value))
                        else:
                            statistics[key] = value
        self._summary.add(statistics)
        if self._trigger(trainer):
            report(self._summary.compute_mean())
            self._summary = DictSummary()

    def register_statistics(self, name, function):
        """Add a statistic: `function` maps a 1-d array to a number or an array
        of numbers, reported under `name`. Chainer: ParameterStatistics.register_statistics.
        """
        self._statistics[name] = function

    def serialize(self, serializer):
        """Save or load the trigger and the sums since it last fired (Chainer
        saves neither; a Chainer snapshot leaves them fresh, with a warning).
        """
        try:
            self._trigger.serialize(serializer['trigger'])
            self._summary.serialize(serializer['summary'])
        except KeyError:
            warnings.warn('ParameterStatistics: the snapshot holds no state of it '
                          '(Chainer does not save one); starting its means afresh')


@_export('training.extensions', 'training.extensions.micro_average')
class MicroAverage(Extension):
    """Reports the micro-average sum(n_i) / sum(d_i) of two observed values
    under `result_key`, once per firing of `trigger` (default (1, 'epoch')),
    then starts the sums afresh.  The n_i (e.g. the count of correct
    predictions) and d_i (e.g. the batch size) are read from the observation
    at `numerator_key` and `denominator_key`; iterations reporting either
    one not are skipped (the trigger is not consulted either).  Unlike the
    mean of the per-batch ratios (the macro-average), batches weigh by d_i.
    The sums are saved in snapshots as _numerator and _denominator.
    Chainer: chainer.training.extensions.MicroAverage.
    """

    priority = PRIORITY_EDITOR

    def __init__(self, numerator_key, denominator_key, result_key, trigger=(1, 'epoch')):
        self._trigger = get_trigger(trigger)
        self._numerator_key = numerator_key
        self._denominator_key = denominator_key
        self._result_key = result_key
        # Floats, not ints: a snapshot loads into the type held here, and
        # sums such as accuracy * batch size are fractional.
        self._numerator = 0.0
        self._denominator = 0.0

    def __call__(self, trainer):
        observation = trainer.observation
        if self._numerator_key not in observation or self._denominator_key not in observation:
            return
        # Device values stay sums on the device: no wait for the GPU per step.
        self._numerator = self._numerator + observation[self._numerator_key]
        self._denominator = self._denominator + observation[self._denominator_key]
        if self._trigger(trainer):
            numerator, denominator = self._numerator, self._denominator
            if isinstance(numerator, _array_types) and not isinstance(numerator, np.ndarray):
                result = numerator / denominator        # read (and waited for) by the reporter
            else:
                result = float(numerator) / denominator
            self._numerator = self._denominator = 0.0
            report({self._result_key: result})

    def serialize(self, serializer):
        self._numerator = serializer('_numerator', self._numerator)
        self._denominator = serializer('_denominator', self._denominator)


def _variables_of(targets):
    """The Variables in `targets`: a Variable, a Link's parameters (also the
    uninitialized ones), or lists and tuples of them, in order."""
    if isinstance(targets, Variable):
        return [targets]
    if isinstance(targets, Link):
        return list(targets.params(include_uninit=True))
    if isinstance(targets, (list, tuple)):
        return [v for target in targets for v in _variables_of(target)]
    return []


@_export('training.extensions', 'training.extensions.variable_statistics_plot')
class VariableStatisticsPlot(Extension):
    """Plots, against the iteration, the mean, standard deviation and
    percentiles of the values (report_data) and gradients (report_grad) of
    `targets` (a Variable, a Link, or a list of them; all their arrays are
    pooled), into out/<filename> (default 'statistics.png'; Chainer's older
    file_name is accepted) whenever `trigger` (default (1, 'epoch')) fires.

    VariableStatisticsPlot(targets, max_sample_size=1000, report_data=True,
    report_grad=True, plot_mean=True, plot_std=True, percentile_sigmas=(0,
    0.13, 2.28, 15.87, 50, 84.13, 97.72, 99.87, 100), trigger=(1, 'epoch'),
    filename=None, figsize=None, marker=None, grid=True).  Every call
    computes the statistics (on the arrays' device; an array that is None
    counts as zeros) and keeps at most max_sample_size of them, a uniform
    random sample of all calls (reservoir sampling).  Layout: a column for
    data and one for grad; a row for mean and std (an error bar when both),
    a row for the percentiles (bands between symmetric pairs, a line for the
    middle one).  matplotlib is imported only when drawing; without it the
    extension warns and does nothing.  Raises ValueError if targets hold no
    Variable or nothing is to be plotted.
    Chainer: chainer.training.extensions.VariableStatisticsPlot.
    """

    def __init__(self, targets, max_sample_size=1000, report_data=True, report_grad=True,
                 plot_mean=True, plot_std=True,
                 percentile_sigmas=(0, 0.13, 2.28, 15.87, 50, 84.13, 97.72, 99.87, 100),
                 trigger=(1, 'epoch'), filename=None, figsize=None, marker=None, grid=True,
                 **kwargs):
        file_name = kwargs.pop('file_name', 'statistics.png')
        if kwargs:
            raise TypeError('VariableStatisticsPlot: unexpected arguments {}'
                            .format(sorted(kwargs)))
        self._vars = _variables_of(targets)
        if not self._vars:
            raise ValueError('VariableStatisticsPlot: targets hold no Variable to collect '
                             'statistics of (got {!r})'.format(targets))
        if isinstance(percentile_sigmas, (int, float)):
            percentile_sigmas = (percentile_sigmas,)
        self._percentiles = tuple(percentile_sigmas or ())
        if not (plot_mean or plot_std or self._percentiles):
            raise ValueError('VariableStatisticsPlot: nothing to plot (plot_mean, plot_std '
                             'and percentile_sigmas all off)')
        self._keys = [k for k, on in (('data', report_data), ('grad', report_grad)) if on]
        self._plot_mean, self._plot_std = bool(plot_mean), bool(plot_std)
        self._trigger = get_trigger(trigger)
        self._filename = filename if filename is not None else file_name
        self._figsize, self._marker, self._grid = figsize, marker, grid
        self._max_sample_size = max_sample_size
        self._samples = []      # (iteration, statistics (keys, values), on the device)
        self._seen = 0

    @staticmethod
    def available():
        """Whether matplotlib can be imported (warns when not).
        Chainer: VariableStatisticsPlot.available."""
        if _matplotlib_available():
            return True
        _warn_no_matplotlib()
        return False

    def _statistics(self):
        """(len(keys), n_statistics) float32 array of this call, on the device."""
        xp = _xp(self._vars[0].data) if self._vars[0].data is not None else np
        n = self._plot_mean + self._plot_std + len(self._percentiles)
        rows = []
        for key in self._keys:
            arrays = [getattr(v, key).ravel() for v in self._vars
                      if getattr(v, key) is not None]
            if not arrays:
                rows.append(xp.zeros(n, np.float32))
                continue
            x = xp.concatenate(arrays)
            row = ([x.mean(keepdims=True)] if self._plot_mean else []) + \
                ([x.std(keepdims=True)] if self._plot_std else [])
            if self._percentiles:
                row.append(xp.percentile(x, self._percentiles))
            rows.append(xp.concatenate([xp.asarray(r).ravel() for r in row]).astype(np.float32))
        return xp.stack(rows)

    def __call__(self, trainer):
        if not self.available():
            return
        sample = (trainer.updater.iteration, self._statistics())
        # Reservoir sampling: the k-th call replaces a random kept sample
        # with probability size / k, so every call is kept equally likely
        # (drawn from NumPy's global generator, as Chainer: np.random.seed
        # repeats it).
        if len(self._samples) < self._max_sample_size:
            self._samples.append(sample)
        elif np.random.random_sample() < self._max_sample_size / float(self._seen + 1):
            self._samples[np.random.randint(self._max_sample_size)] = sample
        self._seen += 1
        if self._trigger(trainer):
            self._draw(os.path.join(trainer.out, self._filename))

    def _draw(self, path):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        samples = sorted(self._samples, key=lambda s: s[0])
        iterations = [s[0] for s in samples]
        data = np.stack([_to_cpu(s[1]) for s in samples])      # (samples, keys, statistics)
        n_rows = int(self._plot_mean or self._plot_std) + int(bool(self._percentiles))
        figure = Figure(figsize=self._figsize)
        FigureCanvasAgg(figure)
        axes = figure.subplots(n_rows, len(self._keys), sharex=True, squeeze=False)
        color = 'C0'
        offset = self._plot_mean + self._plot_std
        n = len(self._percentiles)
        for col, key in enumerate(self._keys):
            row = 0
            axes[0, col].set_title(key)
            if offset:
                if offset == 2:
                    axes[0, col].errorbar(iterations, data[:, col, 0], data[:, col, 1],
                                          color=color, ecolor=(0.12, 0.47, 0.71, 0.2),
                                          label='mean, std', marker=self._marker)
                else:
                    axes[0, col].plot(iterations, data[:, col, 0], color=color,
                                      label='mean' if self._plot_mean else 'std',
                                      marker=self._marker)
                row = 1
            if n:
                ax = axes[row, col]
                for i in range(n // 2):   # a band from the i-th lowest to the i-th highest
                    ax.fill_between(iterations, data[:, col, offset + i],
                                    data[:, col, offset + n - 1 - i], color=color, alpha=0.2,
                                    linewidth=0,
                                    label='percentile' if i == n // 2 - 1 and n % 2 == 0
                                    else '_nolegend_')
                if n % 2:
                    ax.plot(iterations, data[:, col, offset + n // 2], color=color,
                            label='percentile', marker=self._marker)
                ax.set_xlabel('iteration')
        for ax in axes.ravel():
            ax.legend()
            if self._grid:
                ax.grid()
                ax.set_axisbelow(True)
        file_format = os.path.splitext(path)[1][1:] or 'png'
        _write_atomically(path, lambda f: figure.savefig(f, format=file_format))

# ----- hyperparameter schedules and observations ---------------------------------
# Schedules set an optimizer attribute (lr, alpha, momentum) at each call;
# the step count `_t` and the last value are saved, so a resumed run goes on
# with the same values.

class _Shift(Extension):
    """What every schedule below shares; each subclass says only how its
    value changes, in _value(): the value of optimizer.<attr> after self._t
    calls.  `optimizer` None means the trainer's 'main' one.  When training
    starts, initialize() checks that `attr` is one of the optimizer's
    hyperparameters: setattr would quietly create a new attribute that no
    update rule reads if it were misspelt ('lr' on Adam, whose step size is
    'alpha'), so a misspelt name raises AttributeError before the first
    update.  It also takes the schedule's starting value from the optimizer
    when that argument is None, and sets the value for the calls done so far
    (the snapshot's last value when resuming).  A `target` stops the value
    once passed (see _stop_at_target).  Snapshots hold `_t` and
    `_last_value` (Chainer's keys), or only `_t` where Chainer saves no more.
    Chainer: the ExponentialShift ... InverseShift classes, each on its own.
    """

    # Which argument None means "the optimizer's value when training starts".
    _start_from_optimizer = '_init'
    # Chainer's snapshot layout: _t and _last_value, or _t alone.
    _saves_last_value = True

    def __init__(self, attr, init=None, target=None, optimizer=None):
        self._attr = attr
        self._init = init
        self._target = target
        self._optimizer = optimizer
        self._t = 0
        self._last_value = None

    def _value(self):
        raise NotImplementedError

    def _growing(self):
        """Whether the value grows, which says on which side the target lies."""
        return False

    def _get_optimizer(self, trainer):
        return self._optimizer or trainer.updater.get_optimizer('main')

    def _set(self, optimizer, value):
        setattr(optimizer, self._attr, value)
        self._last_value = value

    def initialize(self, trainer):
        optimizer = self._get_optimizer(trainer)
        names = optimizer.hyperparam.get_dict()
        if self._attr not in names:
            raise AttributeError('{}: {} has no hyperparameter {!r}; its hyperparameters '
                                 'are {}'.format(type(self).__name__, type(optimizer).__name__,
                                                 self._attr, sorted(names)))
        start = self._start_from_optimizer
        if start is not None and getattr(self, start) is None:
            setattr(self, start, getattr(optimizer, self._attr))
        # Resuming: the optimizer forgot the value, the snapshot did not.  A
        # fresh run starts at the value after 0 calls (init), target or not.
        resumed = self._saves_last_value and self._last_value is not None
        self._set(optimizer, self._last_value if resumed else self._value())

    def __call__(self, trainer):
        self._t += 1
        value = _stop_at_target(self._value(), self._target, self._growing())
        self._set(self._get_optimizer(trainer), value)

    def serialize(self, serializer):
        """Save or load the call count `_t` and, where Chainer saves it,
        `_last_value`.  Chainer: the schedules' serialize.
        """
        self._t = int(serializer('_t', self._t))
        if self._saves_last_value:
            value = serializer('_last_value', self._last_value)
            self._last_value = value.item() if isinstance(value, np.ndarray) else value


def _stop_at_target(value, target, growing):
    # Stop once the value has passed `target`, comparing value / target with
    # 1 (Chainer's test) so that negative schedules work too.  Multiplying by
    # target**2 > 0 gives the same test without dividing, so a value or
    # target of 0 needs no special case.
    if target is None:
        return value
    if growing:
        passed = value * target > target * target
    else:
        passed = value * target < target * target
    return target if passed else value


def _require_positive(label, name, value):
    if not value > 0:
        raise ValueError('{}: {} must be positive, got {!r}'.format(label, name, value))


@_export('training.extensions', 'training.extensions.exponential_shift')
class ExponentialShift(_Shift):
    """Multiplies optimizer.<attr> by `rate` at each call (extend it with a
    trigger, e.g. (10, 'epoch')): after t calls it is init * rate ** t,
    stopped at `target` if given.  init=None takes the optimizer's value when
    training starts; optimizer=None means the trainer's 'main' one.  Raises
    ValueError for rate < 0, and AttributeError (when training starts) if
    `attr` is not a hyperparameter of the optimizer.
    Chainer: chainer.training.extensions.ExponentialShift.
    """

    def __init__(self, attr, rate, init=None, target=None, optimizer=None):
        if rate < 0:
            raise ValueError('ExponentialShift: rate must not be negative, got '
                             '{!r}'.format(rate))
        super().__init__(attr, init, target, optimizer)
        self._rate = rate

    def _value(self):
        return self._init * self._rate ** self._t

    def _growing(self):
        return self._rate > 1


@_export('training.extensions', 'training.extensions.linear_shift')
class LinearShift(_Shift):
    """Moves optimizer.<attr> linearly from value_range[0] to value_range[1]
    between calls time_range[0] and time_range[1]; constant outside.
    optimizer=None means the trainer's 'main' one.  Raises AttributeError
    (when training starts) if `attr` is not a hyperparameter of the optimizer.
    Chainer: chainer.training.extensions.LinearShift.
    """

    _start_from_optimizer = None      # both ends are given

    def __init__(self, attr, value_range, time_range, optimizer=None):
        super().__init__(attr, optimizer=optimizer)
        self._value_range = value_range
        self._time_range = time_range

    def _value(self):
        (t1, t2), (v1, v2) = self._time_range, self._value_range
        if self._t <= t1:
            return v1
        if self._t >= t2:
            return v2
        return v1 + (v2 - v1) * (self._t - t1) / (t2 - t1)


@_export('training.extensions', 'training.extensions.step_shift')
class StepShift(_Shift):
    """Multiplies optimizer.<attr> by `gamma` every `step` calls: after t calls
    it is init * gamma ** floor(t / step), stopped at `target` if given.
    init=None takes the optimizer's value when training starts; optimizer=None
    means the trainer's 'main' one.  Extended with the default trigger it is
    called every iteration.  Raises ValueError for step <= 0 or gamma < 0, and
    AttributeError (when training starts) if `attr` is not a hyperparameter of
    the optimizer.  Chainer: chainer.training.extensions.StepShift.
    """

    def __init__(self, attr, gamma, step, init=None, target=None, optimizer=None):
        _require_positive('StepShift', 'step', step)
        if gamma < 0:
            raise ValueError('StepShift: gamma must not be negative, got {!r}'.format(gamma))
        super().__init__(attr, init, target, optimizer)
        self._gamma = gamma
        self._step = step

    def _value(self):
        return self._init * self._gamma ** (self._t // self._step)

    def _growing(self):
        return self._gamma > 1


@_export('training.extensions', 'training.extensions.multistep_shift')
class MultistepShift(_Shift):
    """Multiplies optimizer.<attr> by `gamma` at each call count listed in
    `step_value` (increasing): init before step_value[0], init * gamma from
    there to step_value[1], init * gamma**2 after that, and so on.  `init` is
    required; None takes the optimizer's value when training starts.
    Raises ValueError for an empty or unsorted step_value or gamma < 0, and
    AttributeError (when training starts) if `attr` is not a hyperparameter of
    the optimizer.  Chainer: chainer.training.extensions.MultistepShift.
    """

    _saves_last_value = False     # _current_step says it

    def __init__(self, attr, gamma, step_value, init, optimizer=None):
        step_value = list(step_value)
        if not step_value or any(b <= a for a, b in zip(step_value, step_value[1:])):
            raise ValueError('MultistepShift: step_value must be a non-empty, strictly '
                             'increasing sequence, got {!r}'.format(step_value))
        if gamma < 0:
            raise ValueError('MultistepShift: gamma must not be negative, got '
                             '{!r}'.format(gamma))
        super().__init__(attr, init, optimizer=optimizer)
        self._gamma = gamma
        self._step_value = step_value
        self._current_step = 0      # how many of step_value were passed

    # initialize() sets init * gamma**current_step, not init: Chainer sets
    # init, so a run resumed after a step would train with the old value until
    # the next call; this way it goes on as if it had never stopped.
    def _value(self):
        return self._init * self._gamma ** self._current_step

    def __call__(self, trainer):
        self._t += 1
        if (self._current_step < len(self._step_value)
                and self._t >= self._step_value[self._current_step]):
            self._current_step += 1
        self._set(self._get_optimizer(trainer), self._value())

    def serialize(self, serializer):
        """Save or load `_t` and `_current_step` (Chainer's keys).
        Chainer: MultistepShift.serialize.
        """
        super().serialize(serializer)
        self._current_step = int(serializer('_current_step', self._current_step))


@_export('training.extensions', 'training.extensions.warmup_shift')
class WarmupShift(_Shift):
    """Moves optimizer.<attr> linearly from `warmup_start` to `init` over the
    first `warmup_iter` calls: after t calls it is
    (t * init + (warmup_iter - t) * warmup_start) / warmup_iter, and from call
    warmup_iter on the extension leaves the attribute alone (another schedule
    may take over).  warmup_start=None takes the optimizer's value when
    training starts.  Raises ValueError for warmup_iter <= 0, and
    AttributeError (when training starts) if `attr` is not a hyperparameter of
    the optimizer.  Chainer: chainer.training.extensions.WarmupShift.
    """

    _start_from_optimizer = '_warmup_start'
    _saves_last_value = False

    def __init__(self, attr, warmup_start, warmup_iter, init, optimizer=None):
        _require_positive('WarmupShift', 'warmup_iter', warmup_iter)
        super().__init__(attr, init, optimizer=optimizer)
        self._warmup_start = warmup_start
        self._warmup_iter = warmup_iter

    # initialize() sets the value for the calls done so far: warmup_start on
    # a fresh run.  (Chainer sets warmup_start, so a run resumed after the
    # warm-up would stay at warmup_start for good.)
    def _value(self):
        t, n = min(self._t, self._warmup_iter), self._warmup_iter
        return (t * self._init + (n - t) * self._warmup_start) / n

    def __call__(self, trainer):
        self._t += 1
        if self._t <= self._warmup_iter:      # after that, leave it alone
            self._set(self._get_optimizer(trainer), self._value())


@_export('training.extensions', 'training.extensions.polynomial_shift')
class PolynomialShift(_Shift):
    """Decays optimizer.<attr> polynomially to 0 over `max_count` calls: after
    t calls it is init * max(1 - t / max_count, 0) ** rate (0 from call
    max_count on), stopped at `target` if given.  A negative rate makes it
    grow instead, to inf at max_count unless `target` stops it.  init=None
    takes the optimizer's value when training starts.  Raises ValueError for
    max_count <= 0, and AttributeError (when training starts) if `attr` is not
    a hyperparameter of the optimizer.
    Chainer: chainer.training.extensions.PolynomialShift.
    """

    def __init__(self, attr, rate, max_count, init=None, target=None, optimizer=None):
        _require_positive('PolynomialShift', 'max_count', max_count)
        super().__init__(attr, init, target, optimizer)
        self._rate = rate
        self._max_count = max_count

    def _value(self):
        decay = max(1 - self._t / self._max_count, 0)
        if decay == 0 and self._rate < 0:    # 0 ** negative: Python raises
            return math.copysign(math.inf, self._init)
        return self._init * decay ** self._rate

    def _growing(self):
        return self._rate <= 0


@_export('training.extensions', 'training.extensions.inverse_shift')
class InverseShift(_Shift):
    """Caffe's 'inv' policy: after t calls optimizer.<attr> is
    init * (1 + gamma * t) ** (-power), stopped at `target` if given (it grows
    when power < 0).  init=None takes the optimizer's value when training
    starts.  Raises ValueError for gamma < 0, and AttributeError (when training
    starts) if `attr` is not a hyperparameter of the optimizer.
    Chainer: chainer.training.extensions.InverseShift.
    """

    def __init__(self, attr, gamma, power, init=None, target=None, optimizer=None):
        if gamma < 0:
            raise ValueError('InverseShift: gamma must not be negative, got '
                             '{!r}'.format(gamma))
        super().__init__(attr, init, target, optimizer)
        self._gamma = gamma
        self._power = power

    def _value(self):
        return self._init * (1 + self._gamma * self._t) ** (-self._power)

    def _growing(self):
        return self._power < 0

@_export('training.extensions', 'training.extensions.value_observation')
def observe_value(observation_key, target_func):
    """Extension putting target_func(trainer) into the observation under
    `observation_key` (once per epoch by default), e.g. for LogReport.
    Chainer: chainer.training.extensions.observe_value.
    """
    @make_extension(trigger=(1, 'epoch'), priority=PRIORITY_WRITER)
    def _observe_value(trainer):
        trainer.observation[observation_key] = target_func(trainer)
    return _observe_value


@_export('training.extensions', 'training.extensions.value_observation')
def observe_lr(optimizer_name='main', observation_key='lr'):
    """observe_value of the optimizer's learning rate (`lr`; Adam's is the
    effective step size alpha * sqrt(1 - beta2^t) / (1 - beta1^t)).
    Chainer: chainer.training.extensions.observe_lr.
    """
    return observe_value(observation_key,
                         lambda trainer: trainer.updater.get_optimizer(optimizer_name).lr)


# #############################################################################
# PART III. PLUMBING
# #############################################################################
# What a real framework needs and a learner can skip: devices as objects,
# code that is there only for speed, conveniences and checks on the classes
# of Part I, readable error messages, and the names and module paths that
# Chainer programs import.


# =============================================================================
# Chapter 21. Devices
# =============================================================================
# A *device* names where arrays live ('@numpy', '@cupy:0', or Chainer's older
# integers -1 and 0) and can `send` arrays there.  Variables, parameters and
# links get their to_device/to_cpu/to_gpu methods here.


def _to_cpu(array):
    """Return `array` as a NumPy array (a copy from the GPU; NumPy arrays and
    None as they are; lists and tuples element by element).
    Chainer: chainer.backends.cuda.to_cpu.
    """
    if array is None or isinstance(array, np.ndarray):
        return array
    if cupy is not None and isinstance(array, cupy.ndarray):
        _raise_deferred_errors()            # reading anyway: report a bad label now
        return array.get()
    if isinstance(array, (list, tuple)):    # as cuda.to_cpu in Chainer: each one
        return type(array)(_to_cpu(a) for a in array)
    return np.asarray(array)
_export('cuda', to_cpu=_to_cpu)


def _require_cupy(what):
    if cupy is None:
        raise RuntimeError(
            '{}: CuPy is not installed, so no GPU can be used. Install the '
            'CuPy wheel matching your CUDA version (e.g. '
            '`pip install cupy-cuda12x`), or use the CPU (-1 or "@numpy").'
            .format(what))


def _to_gpu(array, device_id=None):
    """Return `array` as a CuPy array on GPU `device_id` (default: the current
    one); lists and tuples element by element, None as it is. Raises
    RuntimeError without CuPy. Chainer: chainer.backends.cuda.to_gpu.
    """
    _require_cupy('to_gpu')
    if array is None:
        return None
    if isinstance(array, (list, tuple)):    # as cuda.to_gpu in Chainer: each one
        return type(array)(_to_gpu(a, device_id) for a in array)
    device_id = cupy.cuda.runtime.getDevice() if device_id is None else device_id
    with cupy.cuda.Device(device_id):
        return cupy.asarray(array)
_export('cuda', to_gpu=_to_gpu)


@_export('backend')
class Device:
    """Where arrays live.  `xp` is its array module; `send` moves arrays."""

    xp = np

    def send(self, arrays):
        """Send an array, or a tuple/list/dict of them, to this device."""
        if isinstance(arrays, (tuple, list)):
            return type(arrays)(self.send(a) for a in arrays)
        if isinstance(arrays, dict):
            return {k: self.send(a) for k, a in arrays.items()}
        return self.send_array(arrays)

    def use(self):
        """Make this device the current one (a no-op on the CPU).
        Chainer: chainer.backend.Device.use.
        """
        pass

    def __eq__(self, other):
        return isinstance(other, Device) and str(self) == str(other)

    def __hash__(self):
        return hash(str(self))

    def __deepcopy__(self, memo):
        # A device only names a place, so copies share it.  (A GpuDevice holds
        # the cupy module, which deepcopy cannot copy: deepcopy(model) of a
        # model on the GPU, which keeps its device in Link._device, failed.)
        return self

    def __repr__(self):
        return '<Device {}>'.format(self)


@_export('backend')
class CpuDevice(Device):
    """The CPU, where arrays are NumPy arrays; its name is '@numpy'.
    Chainer: chainer.backend.CpuDevice.
    """
    xp = np

    def send_array(self, array):
        """Return `array` as a NumPy array (copied from the GPU if it lives there)."""
        return _to_cpu(array)

    def __str__(self):
        return '@numpy'


@_export('backend', 'cuda')
class GpuDevice(Device):
    """GPU number `device_id`, where arrays are CuPy arrays; its name is
    '@cupy:N'. Raises RuntimeError without CuPy. Chainer: chainer.backend.GpuDevice.
    """
    def __init__(self, device_id):
        _require_cupy('get_device(@cupy:{})'.format(device_id))
        self.device_id = device_id
        self.device = cupy.cuda.Device(device_id)
        self.xp = cupy

    def send_array(self, array):
        """Return `array` as a CuPy array on this GPU (copied if needed)."""
        return _to_gpu(array, self.device_id)

    def use(self):
        self.device.use()

    def __str__(self):
        return '@cupy:{}'.format(self.device_id)


@_export('backend')
def get_device(device_spec):
    """Return the Device named by `device_spec`.

    Accepted, as in Chainer: a Device; '@numpy'; '@cupy:N'; and the legacy
    integer forms -1 (CPU) and N >= 0 (GPU N), also as strings ('-1', '0').
    """
    if isinstance(device_spec, Device):
        return device_spec
    spec = device_spec
    if isinstance(spec, str) and spec.lstrip('-').isdigit():
        spec = int(spec)
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        return CpuDevice() if spec < 0 else GpuDevice(int(spec))
    if spec is np or spec == '@numpy':
        return CpuDevice()
    if isinstance(spec, str) and spec.startswith('@cupy:') and spec[6:].isdigit():
        return GpuDevice(int(spec[6:]))
    if cupy is not None and isinstance(spec, cupy.cuda.Device):
        return GpuDevice(spec.id)
    raise ValueError(
        'get_device: invalid device specifier {!r}; use -1 or "@numpy" for '
        'the CPU, or N or "@cupy:N" for GPU N'.format(device_spec))


def _send_to_device(device, array):
    """Send to `device` (any spec get_device accepts); None leaves it alone."""
    return array if device is None else get_device(device).send(array)


def _device_of(array):
    """The Device that `array` lives on (CpuDevice for NumPy arrays and None).
    Chainer: chainer.backend.get_device_from_array.
    """
    if isinstance(array, np.ndarray) or array is None:
        return CpuDevice()
    return GpuDevice(array.device.id)


@_export('backend')
@contextlib.contextmanager
def using_device(device_spec):
    """Make `device_spec` the current device inside a `with` block (CuPy's
    current GPU; nothing for the CPU).  Chainer: chainer.using_device."""
    device = get_device(device_spec)
    if isinstance(device, GpuDevice):
        with device.device:
            yield
    else:
        yield


@_export('backend')
def copyto(dst, src):
    """Copy `src` into the array `dst` in place, across devices if needed.
    Chainer: chainer.backend.copyto."""
    if isinstance(dst, np.ndarray):
        np.copyto(dst, _to_cpu(src))
    else:
        with dst.device:
            cupy.copyto(dst, cupy.asarray(src))


def get_array_types():
    """The array types onefchainer takes: (numpy.ndarray[, cupy.ndarray]).
    Chainer: chainer.get_array_types."""
    return _array_types


def get_cpu_array_types():
    """The CPU array types: (numpy.ndarray,). Chainer: chainer.get_cpu_array_types."""
    return (np.ndarray,)


def is_arrays_compatible(arrays):
    """True if all arrays (None skipped) are of one kind: all NumPy or all CuPy."""
    kinds = {type(a) for a in arrays if a is not None}
    return len(kinds) <= 1


def print_runtime_info(out=None):
    """Write the platform and the versions of onefchainer, NumPy and CuPy
    ('Not Available' without it) to `out` (default sys.stdout).
    Chainer: chainer.print_runtime_info."""
    out = sys.stdout if out is None else out
    out.write('Platform: {}\nonefchainer: {}\nNumPy: {}\nCuPy: {}\n'.format(
        sys.platform, __version__, np.__version__,
        'Not Available' if cupy is None else cupy.__version__))


_export('backend', get_device_from_array=_device_of)


def _current_gpu():
    _require_cupy('to_gpu')
    return GpuDevice(cupy.cuda.runtime.getDevice())


@_continue_class(Variable)
class _VariableDevices:
    xp = property(lambda self: get_array_module(self.data),
                  doc='The array module of the data: numpy or cupy. Chainer: Variable.xp.')
    device = property(lambda self: _device_of(self.data),
                      doc='The Device the data lives on. Chainer: Variable.device.')

    # ----- devices -----
    def to_device(self, device):
        """Move data and grad to `device` (any spec get_device accepts); returns
        self. Chainer: Variable.to_device.
        """
        device = get_device(device)
        self.data = device.send(self.data)
        self._grad = device.send(self._grad)
        return self

    def to_cpu(self):
        """Move data and grad to the CPU; returns self. Chainer: Variable.to_cpu."""
        return self.to_device(CpuDevice())

    def to_gpu(self, device=None):
        """Move data and grad to GPU `device` (default: the current one); returns
        self. Raises RuntimeError without CuPy. Chainer: Variable.to_gpu.
        """
        return self.to_device(_current_gpu() if device is None else device)


@_continue_class(Parameter)
class _ParameterDevices:

    def to_device(self, device):
        super().to_device(device)
        if self.update_rule is not None and self.update_rule.state:
            state = self.update_rule.state
            for key in state:
                state[key] = get_device(device).send(state[key])
        return self


@_continue_class(Link)
class _LinkDevices:

    # ----- devices -----
    @property
    def device(self):
        """The Device of the parameters (CPU for a link without initialized ones,
        unless to_device chose another). Chainer: chainer.Link.device.
        """
        for param in self.params(include_uninit=False):
            return _device_of(param.data)
        return getattr(self, '_device', CpuDevice())

    @property
    def xp(self):
        """The array module of the link's device: numpy or cupy. Chainer: chainer.Link.xp."""
        return self.device.xp

    def to_device(self, device):
        """Move every parameter, gradient and persistent array of this link and
        its descendants to `device` (a Device or a spec such as '@numpy',
        '@cupy:0', 0, -1); returns self. Chainer: chainer.Link.to_device.
        """
        device = get_device(device)
        for link in self.links():
            object.__setattr__(link, '_device', device)
            for name in link._params:
                link.__dict__[name].to_device(device)
            for name in link._persistent:
                value = link.__dict__[name]
                if isinstance(value, _array_types):
                    object.__setattr__(link, name, device.send(value))
        return self

    def to_cpu(self):
        """Move the link to the CPU (to_device('@numpy')); returns self.
        Chainer: chainer.Link.to_cpu.
        """
        return self.to_device(CpuDevice())

    def to_gpu(self, device=None):
        """Move the link to GPU `device` (default: the current one); returns self.
        Needs CuPy. Chainer: chainer.Link.to_gpu.
        """
        return self.to_device(_current_gpu() if device is None else device)


# =============================================================================
# Chapter 22. Speed paths
# =============================================================================
# Code that exists only to be fast, with what it buys.  Where it speeds up a
# class of Part I, it continues that class; the arithmetic stays the one
# Part I shows.

# ----- fused kernels on the GPU --------------------------------------------------
# Every update rule and a few ops run on a GPU as one elementwise kernel
# (_FusedKernel, Chapter 13) that computes the formulas of their CPU code in
# its order, with T the parameter's dtype as NumPy casts a Python scalar to
# it.  They are compiled with --fmad=false: nvcc would otherwise merge
# a * b + c into one fused multiply-add, rounded once instead of twice, and
# the GPU's result would drift from the CPU's.

@_continue_class(_FusedKernel)
class _FusedKernelCompiled:

    def compile(self):
        """Compile the kernel with CuPy (at its first call) and keep it."""
        self.compiled = cupy.ElementwiseKernel(
            self.inputs, self.outputs, self.body, 'onefchainer_' + self.name,
            options=('--fmad=false',))
        return self.compiled


# ----- Chapter 5's ReLU and Chapter 7's rules, continued ----------------------------
# On a GPU, ReLU's backward would be two launches (compare, multiply) and SGD's
# update two (multiply, subtract): one kernel each does the same.

@_continue_class(ReLU)
class _ReLUOnTheGPU:
    backward_cpu = ReLU.backward                   # Chapter 5's
    grad_kernel = _FusedKernel('relu_grad', 'T gy, T y', 'T gx', 'gx = gy * (y > 0);')

    def backward(self, inputs, grad_outputs):
        if isinstance(self.y, (np.ndarray, np.generic)):     # (0-dim: a NumPy scalar)
            return self.backward_cpu(inputs, grad_outputs)
        return self.grad_kernel(gy=grad_outputs[0], y=self.y),


@_continue_class(SGDRule)
class _SGDRuleOnTheGPU:
    update_core_cpu = SGDRule.update_core          # Chapter 7's
    update_core = UpdateRule.update_core           # picks the device (Chapter 13)
    gpu_kernel = _FusedKernel('sgd', 'T grad, T lr', 'T param', 'param -= lr * grad;')

    def update_core_gpu(self, param):
        self.gpu_kernel(grad=param.grad, lr=self.hyperparam.lr, param=param.data)


# Adam on the CPU: _adam_step makes about ten passes over each array.  For
# the big weight matrices of an MLP, walking them in blocks that fit in the
# cache keeps each block there for all ten passes instead of streaming every
# array from memory ten times: about 3 ms of an MNIST training step.  On a
# GPU, the ten passes are one kernel.

_ADAM_BLOCK = 1 << 18      # elements: a block of each array stays in the cache
_adam_scratch = {}         # dtype -> one block of scratch memory, reused


def _adam_kernel(name, amsgrad, adabound):
    """Adam's update as one kernel, _adam_step line by line (multiplying by eta
    or decay = 1 changes nothing), with AMSGrad's and AdaBound's lines."""
    inputs = 'T grad, T one_minus_beta1, T one_minus_beta2, T eps, T lr, T eta, T decay'
    outputs = 'T param, T m, T v'
    body = ['m += one_minus_beta1 * (grad - m);', 'v += one_minus_beta2 * (grad * grad - v);']
    if amsgrad:
        outputs += ', T vhat'
        body.append('vhat = max(vhat, v);')
    body.append('T step = lr / (sqrt({}) + eps);'.format('vhat' if amsgrad else 'v'))
    if adabound:
        inputs += ', T lower, T upper'
        body.append('step = min(max(step, lower), upper);')       # as np.clip
    body += ['step *= m;', 'step *= eta;', 'param *= decay;', 'param -= step;']
    return _FusedKernel(name, inputs, outputs, '\n'.join(body), float16_in_float32=True)


@_continue_class(AdamRule)
class _AdamRuleSpeedPaths:
    gpu_kernels = {    # (amsgrad, adabound): kernel
        (False, False): _adam_kernel('adam', False, False),
        (True, False): _adam_kernel('amsgrad', True, False),
        (False, True): _adam_kernel('adabound', False, True),
        (True, True): _adam_kernel('amsbound', True, True)}

    update_core_cpu = update_core_gpu = AdamRule.update_core     # Chapter 7's, which
    update_core = UpdateRule.update_core     # a subclass may override per device (Chapter 13)

    def _step(self, param, constants, bounds=None):
        # Chapter 7's _step: _adam_step over the arrays, block by block on the
        # CPU; on a GPU, one kernel.
        data, state = param.data, self.state
        arrays = [data, param.grad, state['m'], state['v']]
        if 'vhat' in state:
            arrays.append(state['vhat'])
        if not isinstance(data, np.ndarray):
            return self._step_gpu(arrays, constants, bounds)
        interm = data.dtype
        if interm == np.float16:
            # As Chainer: a float16 parameter is updated in float32 (m and v stay
            # float16).  In float16, eps = 1e-8 rounds to 0 and a zero gradient
            # would make 0 / 0 = NaN.  (On a GPU, _FusedKernel does the same.)
            interm = np.dtype(np.float32)
            arrays = [data, arrays[1].astype(interm)] + list(arrays[2:])
        size = data.size
        if size > _ADAM_BLOCK and all(a.flags.c_contiguous for a in arrays):
            flat = [a.reshape(-1) for a in arrays]
            scratch = _adam_scratch.get(interm)
            if scratch is None:       # one block of scratch, reused: fresh pages cost faults
                scratch = _adam_scratch[interm] = np.empty(_ADAM_BLOCK, interm)
            for start in range(0, size, _ADAM_BLOCK):
                block = [a[start:start + _ADAM_BLOCK] for a in flat]
                _adam_step(np, scratch[:len(block[0])], *block, constants=constants,
                           bounds=bounds)
        else:
            _adam_step(np, np.empty_like(data, interm), *arrays, constants=constants,
                       bounds=bounds)

    def _step_gpu(self, arrays, constants, bounds):
        one_minus_beta1, one_minus_beta2, eps, lr, eta, weight_decay_rate = constants
        named = dict(zip(('param', 'grad', 'm', 'v', 'vhat'), arrays))
        if bounds:
            named['lower'], named['upper'] = bounds
        self.gpu_kernels[len(arrays) == 5, bool(bounds)](
            one_minus_beta1=one_minus_beta1, one_minus_beta2=one_minus_beta2, eps=eps, lr=lr,
            eta=eta, decay=1.0 - eta * weight_decay_rate, **named)


# ----- label checks that wait for the next read (GPU) ---------------------------
# On the CPU, checking that every label is in [0, n_class) costs a comparison.
# On a GPU, `if bad.any()` makes Python wait until the device has computed
# everything before it (a host sync) in every step, and the GPU then idles
# while Python issues the next step.  So on a GPU the check stays on the
# device: `_label_check` flags the bad labels in the same pass that prepares
# the labels; their largest value is folded into one small device array per
# (function, n_class, ignore_label); the batch's loss (and its gradient)
# becomes NaN, so a value read directly is never silently wrong; and the
# first read of a value on the host (cuda.to_cpu, Variable.item, the means
# of the reporter's Summary that LogReport, PrintReport and Evaluator use)
# raises the error, naming the function and the label.  config.debug makes
# the check immediate on a GPU too, stopping at the batch itself.

_DEFER_CHECKS_ON_CPU = False     # True runs the GPU's deferred path on the CPU (tests)
_NO_BAD_LABEL = np.iinfo(np.int64).min
_pending_label_checks = {}       # (label, n_class, ignore_label) -> worst bad label so far (device)


def _defers_checks(array):
    """True if the checks of data in `array` must not make the host wait."""
    if config.debug:
        return False
    return _DEFER_CHECKS_ON_CPU or not isinstance(array, np.ndarray)


_label_check_kernel = _FusedKernel(      # one pass instead of eight launches
    'label_check', 'S t, int64 n_class, int64 ignore, int64 none',
    'S safe_t, bool valid, int64 flagged', '''
    bool in_range = (t >= 0) && (t < n_class);
    valid = (t != ignore);
    safe_t = (valid && in_range) ? t : 0;
    flagged = (valid && !in_range) ? t : none;''')


def _label_check(t, n_class, ignore_label):
    """(safe_t, valid, flagged) for labels t, without a sync: safe_t is t with
    ignored and bad labels replaced by 0 (so indexing with it stays in
    bounds), valid is t != ignore_label, flagged is t where it is a bad label
    (valid but outside [0, n_class)) and _NO_BAD_LABEL elsewhere (int64)."""
    if isinstance(t, np.ndarray):
        in_range = (t >= 0) & (t < n_class)
        valid = t != ignore_label
        safe_t = np.where(valid & in_range, t, 0).astype(t.dtype, copy=False)
        flagged = np.where(valid & ~in_range, t.astype(np.int64), _NO_BAD_LABEL)
        return safe_t, valid, flagged
    return _label_check_kernel(t=t, n_class=n_class, ignore=ignore_label, none=_NO_BAD_LABEL)


def _remember_label_check(label, n_class, ignore_label, flagged):
    """Fold the bad labels of one batch into the pending check of its kind;
    returns the batch's worst bad label (a device 0-dim array)."""
    if flagged.size == 0:           # an empty batch has no worst label (max would raise)
        worst = _xp(flagged).full((), _NO_BAD_LABEL, flagged.dtype)
    else:
        worst = flagged.max()
    if not isinstance(worst, _array_types):     # NumPy gives a scalar
        worst = np.asarray(worst)
    key = (label, n_class, ignore_label)
    pending = _pending_label_checks.get(key)
    if pending is None:
        _pending_label_checks[key] = worst.copy()
    else:
        _xp(pending).maximum(pending, worst, out=pending)
    return worst


def _raise_deferred_errors():
    """Raise the error of a bad label that a GPU op found since the last read.
    Called wherever a value is read on the host anyway, so it adds no sync of
    its own to a training step."""
    if not _pending_label_checks:
        return
    pending = list(_pending_label_checks.items())
    _pending_label_checks.clear()
    for (label, n_class, ignore_label), worst in pending:
        worst = int(worst.item())
        if worst != _NO_BAD_LABEL:
            raise ValueError(
                '{}: labels must be in [0, {}) or equal ignore_label ({}); a batch '
                'since the last read held label {} (found on the device, where that '
                "batch's loss was made NaN; set chainer.config.debug = True to stop "
                'at the batch itself)'.format(label, n_class, ignore_label, worst))


@_continue_class(SoftmaxCrossEntropy)
class _SoftmaxCrossEntropyOnTheGPU:
    # Chapter 5's forward checks the labels at once.  Where checks are deferred,
    # this one computes the same values without a host sync.
    _forward_checking_at_once = SoftmaxCrossEntropy.forward

    def forward(self, inputs):
        x, t = inputs
        if not _defers_checks(t):
            return self._forward_checking_at_once(inputs)
        self._check(x, t)
        n_class = x.shape[1]
        safe_t, self.valid, flagged = _label_check(t, n_class, self.ignore_label)
        worst = _remember_label_check(self.label, n_class, self.ignore_label, flagged)
        loss = self._losses(x, safe_t)
        if self.reduce == 'no':
            loss = _xp(loss).where(flagged == _NO_BAD_LABEL, loss, np.nan)
            return loss.astype(x.dtype, copy=False),
        count = self.valid.sum() if self.normalize else len(x)
        self.coeff = self._coefficient_later(count, worst, _accumulator(x.dtype) or x.dtype)
        return _xp(x).asarray(loss.sum(dtype=_accumulator(x.dtype)) * self.coeff, dtype=x.dtype),

    coefficient_kernel = _FusedKernel(
        'sce_coeff', 'int64 count, int64 worst, int64 none, float64 nan_value', 'T coeff', '''
        double n = count;
        n = max(n, 1.0);
        coeff = (worst == none) ? 1.0 / n : nan_value;''')

    def _coefficient_later(self, count, worst, dtype):
        """1 / max(count, 1), or NaN after a bad label, computed on the device."""
        xp = _xp(self.valid)
        if xp is np:
            return np.where(worst == _NO_BAD_LABEL, 1.0 / max(int(count), 1),
                            np.nan).astype(dtype)
        return self.coefficient_kernel(count=count, worst=worst, none=_NO_BAD_LABEL,
                                       nan_value=np.nan, coeff=xp.empty((), dtype))  # one launch


# =============================================================================
# Chapter 23. Conveniences, checks and error messages
# =============================================================================
# Printing, cutting the graph, Chainer's other Variable methods, and the
# checks that turn a wrong shape or dtype into a message naming the function
# at fault instead of a NumPy error three calls deeper.

def _checked_grad(variable, grad):
    """What the Variable.grad setter stores: the array of `grad`, checked."""
    variable.__dict__.pop('_grad_at_update', None)     # a new grad: debug mode's, below
    if grad is None:
        return None
    if isinstance(grad, Variable):
        grad = grad.data
    if isinstance(grad, np.generic):     # NumPy's 0-dim result (an optimizer hook's, say)
        grad = np.asarray(grad)
    if not isinstance(grad, _array_types):
        raise TypeError('Variable.grad: must be an array or None, not '
                        '{}'.format(type(grad).__name__))
    if variable.data is not None and (grad.shape != variable.data.shape or
                                      grad.dtype != variable.data.dtype):
        _check_grad_input(None, None, variable, grad)
    return grad


def _checked_grad_inputs(function, grad_inputs):
    """The gradients a backward returned, as a tuple with one per input."""
    if not isinstance(grad_inputs, tuple):
        grad_inputs = tuple(grad_inputs) if isinstance(grad_inputs, list) else (grad_inputs,)
    if len(grad_inputs) != len(function.inputs):
        raise ValueError(
            '{}.backward returned {} gradients for {} inputs'.format(
                function.label, len(grad_inputs), len(function.inputs)))
    if config.debug:
        _check_finite(function, 'backward', grad_inputs)
    return grad_inputs


class DebugMode:
    """`with chainer.DebugMode(True):` turns config.debug on in a block.
    Chainer: chainer.DebugMode."""

    def __init__(self, debug):
        self._using = using_config('debug', debug)

    def __enter__(self):
        self._using.__enter__()

    def __exit__(self, *exc_info):
        return self._using.__exit__(*exc_info)


@_export('function')
def force_backprop_mode():
    """`with force_backprop_mode():` records the graph inside the block even
    where an outer no_backprop_mode turned it off. Chainer: chainer.force_backprop_mode.
    """
    return using_config('enable_backprop', True)


def is_debug():
    """True if config.debug is on (every result checked for NaN/inf).
    Chainer: chainer.is_debug.
    """
    return bool(config.debug)


def set_debug(debug):
    """Set config.debug to `debug` (a bool; False by default).  Debug mode
    raises at the first NaN or inf a forward or backward produces, naming the
    function, and makes a GPU check labels and ids at once (with a host sync)
    instead of at the next read.  Returns None.  Chainer: chainer.set_debug."""
    config.debug = debug


def get_dtype(dtype=None, map_mixed16=None):
    """`dtype` as a numpy dtype, or config.dtype if None.  Chainer: chainer.get_dtype."""
    return np.dtype(config.dtype if dtype is None else dtype)


def backward(outputs, grad_outputs=None, **kwargs):
    """Backprop from several outputs at once; `grad_outputs` gives each one's
    gradient (None: 1 for a size-1 output).  Chainer: chainer.backward."""
    outputs = list(outputs)
    grad_outputs = [None] * len(outputs) if grad_outputs is None else list(grad_outputs)
    if len(grad_outputs) != len(outputs):
        raise ValueError('backward: {} outputs but {} grad_outputs'.format(
            len(outputs), len(grad_outputs)))
    for y, gy in zip(outputs, grad_outputs):
        if gy is not None:
            y.grad = gy
        elif y.grad is None:
            if y.size != 1:
                raise ValueError('backward: an output of shape {} needs its grad_output'
                                 .format(y.shape))
            y.grad = _xp(y.data).ones_like(y.data)
    _backprop(outputs, kwargs.get('retain_grad', False))


# ----- switches and backprop from the top level: chainer.DebugMode, chainer.backward --


@_continue_class(Variable)
class _VariableConveniences:

    # ----- the array and its gradient -----
    @property
    def array(self):
        """The data array (the same as .data). Chainer: Variable.array."""
        return self.data

    @array.setter
    def array(self, data):
        self.data = data

    @property
    def grad_var(self):
        """The gradient wrapped in a new Variable, or None. Chainer: Variable.grad_var."""
        return None if self._grad is None else Variable(self._grad)

    def zerograd(self):
        """Set the gradient to zeros of the data's shape and dtype.
        Chainer: Variable.zerograd (deprecated there in favour of cleargrad).
        """
        self._grad = None if self.data is None else _xp(self.data).zeros_like(self.data)

    def __len__(self):
        if self.data is None or self.data.ndim == 0:
            raise TypeError('len() of a {} Variable'.format(
                '0-dimensional' if self.data is not None else 'data-less (uninitialized)'))
        return len(self.data)

    def __iter__(self):          # the rows, each a Variable of the graph (as Chainer)
        rows = len(self)         # raises for 0-dim and data-less, as NumPy does for 0-dim
        return (self[i] for i in range(rows))

    # ----- Python's protocols -----
    # Answering these would be silently wrong: `if loss == 0:` would compare
    # objects, `bool(Variable(zeros(3)))` would be True.  Each raises
    # TypeError, as in Chainer, saying how to ask the array instead.  (NumPy
    # arrays on the left hand over to these too: __array_priority__.)
    def __eq__(self, other):
        raise _no_comparison('==')

    def __ne__(self, other):
        raise _no_comparison('!=')

    def __lt__(self, other):
        raise _no_comparison('<')

    def __le__(self, other):
        raise _no_comparison('<=')

    def __gt__(self, other):
        raise _no_comparison('>')

    def __ge__(self, other):
        raise _no_comparison('>=')

    # Defining __eq__ would make the class unhashable; Variables stay hashed by
    # identity (Chainer's are unhashable): backprop's sets and a user's dict
    # keyed by parameter rely on it, and == never answers, so no two differ.
    __hash__ = object.__hash__

    def __bool__(self):
        raise TypeError('a Variable has no truth value (if v:, v and w); ask its '
                        'array: bool(v.array) for one element, v.array.any() or .all()')

    def __contains__(self, value):
        raise TypeError('`x in variable` is not defined; ask the array: '
                        'x in v.array')

    def __pos__(self):           # +v is v, as in Chainer
        return self

    def item(self):
        """The value of a one-element Variable as a Python number (raises
        ValueError for more elements). Chainer: Variable.item.
        """
        _raise_deferred_errors()
        return self.data.item()

    def __repr__(self):
        if self.data is None:
            return 'variable {}(None)'.format(self.name or '').replace(' (', '(')
        prefix = 'variable {}('.format(self.name) if self.name else 'variable('
        return prefix + np.array2string(_to_cpu(self.data), separator=', ',
                                        prefix=prefix) + ')'

    def __str__(self):
        prefix = 'variable {}('.format(self.name) if self.name else 'variable('
        return prefix + ('None' if self.data is None else
                         np.array2string(_to_cpu(self.data), prefix=prefix)) + ')'

    def unchain(self):
        """Cut this variable from its creator: backprop stops here."""
        self.creator = None

    def unchain_backward(self):
        """Cut every edge behind this variable, freeing the graph now."""
        pending = [self.creator] if self.creator is not None else []
        seen = set(pending)
        while pending:
            function = pending.pop()
            for x in function.inputs or ():
                if x.creator is not None and x.creator not in seen:
                    seen.add(x.creator)
                    pending.append(x.creator)
            function.unchain()
        self.creator = None


@_continue_class(Parameter)
class _ParameterWithoutData:

    # A lazily shaped parameter has no data until its first forward; the
    # paths other than forward must not leave it half made (a grad, no data).
    def zerograd(self):
        """Set the gradient to zeros; without data yet, once initialize gives
        it a shape (as Chainer). Chainer: Parameter.zerograd."""
        if self.data is None:
            self._zeros_asked = True
        else:
            self._grad = _xp(self.data).zeros_like(self.data)
        self.__dict__.pop('_grad_at_update', None)     # debug mode's, above

    def cleargrad(self):
        """Forget the gradient (grad = None), a zerograd asked for before there
        was data and a loss scale (below). Chainer: Parameter.cleargrad."""
        self._grad = None
        self.__dict__.pop('_zeros_asked', None)
        self.__dict__.pop('_loss_scale', None)
        self.__dict__.pop('_grad_at_update', None)     # debug mode's, above

    def update(self):
        """Update the data by the parameter's update rule (set by an optimizer's
        setup); nothing without a rule or data. Chainer: Parameter.update."""
        if self.update_rule is not None and self.data is not None:
            _unscale_gradient(self)            # a backward(loss_scale=...): below
            self.update_rule.update(self)


def _no_comparison(op):
    return TypeError('Variables do not support {}: it would compare objects, not '
                     'values; compare the arrays instead, e.g. v.array {} 0 or '
                     'numpy.array_equal(v.array, w.array)'.format(op, op))


@_continue_class(Function)
class _FunctionConveniences:

    @property
    def output_data(self):
        """The arrays of the outputs that still exist (None for dropped ones).
        Chainer: Function.output_data.
        """
        return tuple(None if y() is None else y().data for y in self.outputs)

    def unchain(self):
        """Drop this function's links to its inputs and outputs."""
        for ref in self.outputs or ():
            y = ref()
            if y is not None:
                y.creator = None
        self.inputs = None


def _describe(arrays):
    return ', '.join('{} {}'.format(a.shape, a.dtype) if hasattr(a, 'shape')
                     else repr(a) for a in arrays)


def _explain(function, in_data, error):
    """Give an error raised inside forward the function's name and its
    inputs' shapes and dtypes, keeping the error itself: Function.__call__
    re-raises it, so its type (a user's ValueError subclass stays one) and
    its traceback, down to the line of forward that failed, reach the user.
    Usually the message becomes 'label: message (inputs: shapes dtypes)'.
    An exception that writes its own message (NumPy's AxisError) gets that
    line as a note instead (Python 3.11+; before, a new error of its type,
    or of its kind, says it and is raised from it).  Inputs on different
    devices raise the error that says so, caused by this one."""
    message = str(error)
    label = function.label
    if message.startswith(label.lower() + ':') or message.startswith(label + ':'):
        return                             # it names the function already
    mixed = _mixed_devices_error(function, in_data)
    if mixed is not None:
        raise mixed from error
    context = '{}: {} (inputs: {})'.format(label, message, _describe(in_data))
    if type(error).__str__ is BaseException.__str__:      # str(error) is args[0]
        error.args = (context,)
    elif hasattr(error, 'add_note'):
        error.add_note(context)
    else:
        try:
            replacement = type(error)(context)
        except Exception:                  # a constructor that wants more
            replacement = None
        if replacement is None or context not in str(replacement):
            replacement = (TypeError if isinstance(error, TypeError) else
                           IndexError if isinstance(error, IndexError) else
                           ValueError)(context)
        raise replacement from error


def _check_finite(function, direction, arrays):
    for i, a in enumerate(arrays):
        # Not _xp(a): a 0-dim NumPy result may still be a scalar here, not an ndarray.
        xp = cupy if cupy is not None and isinstance(a, cupy.ndarray) else np
        if a is not None and a.dtype.kind == 'f' and not xp.isfinite(a).all():
            raise FloatingPointError(
                '{}: NaN or inf in the {} output {} (shape {}); found because '
                'config.debug is on'.format(function.label, direction, i, a.shape))


@_continue_class(SoftmaxCrossEntropy)
class _SoftmaxCrossEntropyChecks:

    def _check(self, x, t):
        label = self.label
        if x.dtype.kind != 'f':
            raise TypeError('{}: x must hold float scores, got dtype {}'.format(label, x.dtype))
        if t.dtype.kind not in 'iu':
            raise TypeError('{}: t must hold integer labels, got dtype {}'.format(
                label, t.dtype))
        if x.ndim < 2 or t.shape != x.shape[:1] + x.shape[2:]:
            raise ValueError('{}: x.shape {} and t.shape {} do not match; t should '
                             'have shape {}'.format(label, x.shape, t.shape,
                                                    x.shape[:1] + x.shape[2:]))


@_continue_class(Optimizer)
class _OptimizerChecks:

    def _check_setup(self, method='update()'):
        if self.target is None:
            raise RuntimeError('{}: call setup(link) before {}'.format(
                type(self).__name__, method))


def _check_grad_input(function, index, x, gx):
    """Return gradient `gx` for variable `x`; raise unless it fits (same shape
    and dtype), naming who made it: input `index` of `function`'s backward, or,
    with function None, an assignment to x.grad.  A wrong gradient stored
    silently would turn up later as a dtype or shape change far from its
    cause.  Only a function that takes mixed float dtypes (mixed_dtypes, see
    _in_dtype_of) has a float gradient cast to its variable's float dtype."""
    where = ('Variable.grad' if function is None else
             '{}.backward: the gradient of input {}'.format(function.label, index))
    if gx.shape != x.data.shape:
        raise ValueError('{} has shape {} but the variable has shape {}; a gradient '
                         'has the shape of its variable'.format(where, gx.shape, x.data.shape))
    if gx.dtype != x.data.dtype and getattr(function, 'mixed_dtypes', False) and \
            gx.dtype.kind == 'f' and x.data.dtype.kind == 'f':
        return gx.astype(x.data.dtype)
    if gx.dtype != x.data.dtype:
        raise TypeError('{} has dtype {} but the variable has dtype {}; cast it with '
                        '.astype(numpy.{})'.format(where, gx.dtype, x.data.dtype,
                                                   x.data.dtype))
    return gx


def _mixed_floats(function, a, b):
    """Chainer v7's matmul and tensordot of two float dtypes: the result in
    NumPy's promoted dtype, each gradient cast back to its input's
    (_check_grad_input).  Other dtype pairs raise TypeError, as before."""
    if a.dtype.kind != 'f' or b.dtype.kind != 'f':
        _check_dtypes(function.label, a, b)
    function.mixed_dtypes = True


def _in_dtype_of(function, x, *arrays):
    """Chainer v7's mixed dtypes: the float `arrays` (weights such as W, gamma,
    beta; None stays None) in float x's dtype, so the result has x's dtype;
    `function` is marked mixed_dtypes, so that each gradient is cast back to
    its own variable's dtype (_check_grad_input).  Returns one array for one,
    else a tuple.  An x or array that is not float raises TypeError naming
    the function and the dtypes."""
    floats = [a for a in (x,) + arrays if a is not None]
    if any(a.dtype.kind != 'f' for a in floats):
        raise TypeError('{}: x.dtype ({}) and the dtypes of the weights ({}) must be float '
                        'dtypes; convert x with x.astype(numpy.float32)'.format(
                            function.label, x.dtype, ', '.join(str(a.dtype) for a in floats[1:])))
    function.mixed_dtypes = True
    cast = tuple(None if a is None else a.astype(x.dtype, copy=False) for a in arrays)
    return cast[0] if len(cast) == 1 else cast


def _require_float(label, *arrays):
    """Raise unless every array holds floating-point numbers.

    Integer arrays are welcome where the math stays exact (add, mul, sum,
    reshape, indexing, relu...), but a function built on division, e^x, 1/x
    or a float factor would truncate or silently switch to float64; its
    gradient would be truncated too (the mean of three ints gets gradient 0).
    """
    for a in arrays:
        if a.dtype.kind != 'f':
            raise TypeError(
                '{}: needs floating-point input, got dtype {} (shape {}); integer '
                'math would truncate the result or its gradient; convert it with '
                '.astype(numpy.float32)'.format(label, a.dtype, a.shape))


def _positive_int(label, name, value):
    """`value` as an int: TypeError unless it is one (a bool is not),
    ValueError unless it is positive."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError('{}: {} must be a positive int, got {!r}'.format(label, name, value))
    if value <= 0:
        raise ValueError('{}: {} must be a positive int, got {!r}'.format(label, name, value))
    return int(value)


def _require_inputs(label, xs):
    if len(xs) == 0:
        raise ValueError('{}: needs at least one input, got none'.format(label))


def _input_data(label, x):
    """The array behind argument `x` of `label`, for helpers that look at it
    before any Function sees it; anything else gets the error a Function gives."""
    if isinstance(x, Variable):
        return x.data
    if isinstance(x, _array_types):
        return x
    raise TypeError('{}: inputs must be Variables or numpy/cupy arrays, not {}; '
                    'convert it first, e.g. numpy.asarray(x, dtype=numpy.float32)'
                    .format(label, type(x).__name__))


def _mixed_devices_error(function, in_data):
    """The error for inputs on different devices, or None if they share one.
    Function.__call__ asks (through _explain) only once forward has failed,
    so it costs the hot path nothing."""
    devices = [(i, str(_device_of(a))) for i, a in enumerate(in_data)
               if isinstance(a, _array_types)]
    if len({device for _, device in devices}) < 2:
        return None
    names = getattr(function, 'input_names', ())
    (i, first), (j, second) = devices[0], next(d for d in devices if d[1] != devices[0][1])
    name_i = names[i] if i < len(names) else 'input {}'.format(i)
    name_j = names[j] if j < len(names) else 'input {}'.format(j)
    return TypeError(
        '{}: {} is on {} but {} is on {}; send the batch with device.send(x) or '
        'concat_examples(batch, device), or move the model with '
        'model.to_device(device)'.format(function.label, name_i, first, name_j, second))


def _check_first_input(link_name, x):
    """The array of the first input of a link that learns its input size from
    it, checked *before* anything is initialized: one example without its
    batch axis would otherwise fix the weights to a wrong shape for good."""
    data = _input_data(link_name, x)
    if data.ndim < 2:
        raise ValueError(
            '{}: the input has shape {}, with no batch axis, so its size cannot be '
            'learned from it; pass a batch, e.g. x[None] (shape {}) for one '
            'example'.format(link_name, data.shape, (1,) + data.shape))
    return data


def _warn_no_params(optimizer, link):
    warnings.warn(
        '{}.setup: {} has no parameters, so training will change nothing; '
        'parameters and child links must be assigned inside '
        '`with self.init_scope():` to be registered'.format(
            type(optimizer).__name__, type(link).__name__), stacklevel=3)


# ----- loss scaling ---------------------------------------------------------------
# backward(loss_scale=s) starts from s instead of 1, so that small float16
# gradients do not round to zero on the way back: every gradient is s times
# the true one.  Each parameter it reaches remembers s, and the optimizer's
# next update divides the gradient by s before anything else (its hooks
# included), so the step is the one the true gradient gives.  Parameter's
# cleargrad forgets s (Chapter 23).  No cost without a loss_scale.

_backward_from_one = Variable.backward              # Chapter 3's
_update_from_gradients = Optimizer.update           # Chapter 7's
_loss_scale_used = False     # until a backward(loss_scale=...), update looks at nothing


def _variable_backward(self, retain_grad=False, enable_double_backprop=False,
                       loss_scale=None):
    """Compute the gradient of this variable w.r.t. every variable behind it
    (Chapter 3's backward).  loss_scale (default None): a positive number the
    starting gradient 1 of a one-element output is multiplied by (a grad set
    by hand is used as it is), so every gradient is scaled by it; each
    Parameter reached keeps it, and Optimizer.update divides its gradient by
    it first, so the update is unchanged.  Raises ValueError for a loss_scale
    that is not a positive number. Chainer: Variable.backward.
    """
    if loss_scale is None:
        return _backward_from_one(self, retain_grad, enable_double_backprop)
    if isinstance(loss_scale, bool) or not isinstance(loss_scale, (int, float, np.number)) \
            or not 0 < loss_scale < math.inf:
        raise ValueError('backward: loss_scale must be a positive number, not '
                         '{!r}'.format(loss_scale))
    global _loss_scale_used
    _loss_scale_used = True
    if self._grad is None and self.data is not None and self.data.size == 1:
        self._grad = _xp(self.data).full_like(self.data, loss_scale)
    leaves, seen = {self} if self.creator is None else set(), set()
    pending = [self.creator] if self.creator is not None else []
    while pending:                  # the leaves behind self, before backprop runs
        function = pending.pop()
        for x in function.inputs or ():
            if x.creator is None:
                leaves.add(x)
            elif x.creator not in seen:
                seen.add(x.creator)
                pending.append(x.creator)
    _backward_from_one(self, retain_grad, enable_double_backprop)
    for leaf in leaves:
        if isinstance(leaf, Parameter) and leaf._grad is not None:
            leaf._loss_scale = float(loss_scale)


def _unscale_gradient(param):
    """Divide the gradient of `param` by the loss_scale its backward used (in
    float32 for float16, where a large scale would be inf), and forget it."""
    scale = param.__dict__.pop('_loss_scale', None)
    if scale is not None and param._grad is not None:
        grad = param._grad
        wide = grad.astype(np.float32) if grad.dtype == np.float16 else grad
        param.grad = (wide / wide.dtype.type(scale)).astype(grad.dtype, copy=False)


def _optimizer_update(self, lossfun=None, *args, **kwds):
    """Update once (Chapter 7's update).  With `lossfun`, first compute the loss
    from `args`, clear the old gradients and run backward, with the loss_scale
    of set_loss_scale if one was set.  Gradients a backward(loss_scale=...)
    scaled are divided by the scale first.  In config.debug mode, warns
    (UserWarning) of a gradient added to since the last update used it: a
    forgotten cleargrads(). Chainer: chainer.Optimizer.update.
    """
    loss_scale = getattr(self, '_loss_scale', None)
    if lossfun is not None and loss_scale is not None:
        self._check_setup()
        loss = lossfun(*args, **kwds)
        self.target.cleargrads()
        loss.backward(loss_scale=loss_scale)
        del loss
        lossfun = None
    if self.target is None or not (_loss_scale_used or config.debug):
        return _update_from_gradients(self, lossfun, *args, **kwds)    # the common case
    if _loss_scale_used:
        for param in self.target.params(include_uninit=False):
            _unscale_gradient(param)
    if not config.debug:
        return _update_from_gradients(self, lossfun, *args, **kwds)
    _warn_accumulated_gradients(self)
    result = _update_from_gradients(self, lossfun, *args, **kwds)
    for param in self.target.params(include_uninit=False):
        param._grad_at_update = param._grad      # cleargrad and the grad setter drop it
    return result


def _warn_accumulated_gradients(optimizer):
    """In debug mode: warn if a gradient an update used was added to since
    (backward adds into a gradient nobody cleared), so that this update would
    apply two steps' gradients at once: a forgotten cleargrads()."""
    stale = [path for path, param in optimizer.target.namedparams(include_uninit=False)
             if param._grad is not None and '_grad_at_update' in param.__dict__
             and param._grad is not param.__dict__['_grad_at_update']]
    if stale:
        warnings.warn(
            '{}.update: the gradient of {} was added to since the last update, which had '
            'used it (no cleargrads() in between), so this update applies the sum of both '
            "steps' gradients; call model.cleargrads() before loss.backward(), or "
            'optimizer.update(lossfun, ...), which does (config.debug)'.format(
                type(optimizer).__name__, ', '.join(stale[:3]) +
                (' and {} more'.format(len(stale) - 3) if len(stale) > 3 else '')),
            stacklevel=3)


def _optimizer_set_loss_scale(self, loss_scale):
    """Scale every loss update(lossfun, ...) backpropagates by `loss_scale` (a
    positive number; None: no scaling); the update itself is unchanged.
    Chainer: chainer.Optimizer.set_loss_scale (static loss scaling).
    """
    if loss_scale is not None and (isinstance(loss_scale, bool) or not isinstance(
            loss_scale, (int, float, np.number)) or not 0 < loss_scale < math.inf):
        raise ValueError('set_loss_scale: loss_scale must be a positive number or None, '
                         'not {!r}'.format(loss_scale))
    self._loss_scale = loss_scale


Variable.backward = _variable_backward
Optimizer.update = _optimizer_update
Optimizer.set_loss_scale = _optimizer_set_loss_scale


# =============================================================================
# Chapter 24. Chainer compatibility
# =============================================================================
# Chainer programs import `chainer.functions`, `chainer.training.extensions`
# and so on.  This is one file, so those modules are made here: Python finds
# `import onefchainer.functions` in `sys.modules` before it looks for a
# package on disk, so registering a module object there is all it takes.
# What goes in each module was marked where it is defined (`@_export`,
# Chapter 5); this chapter builds the modules from the marks, and holds what
# is only about compatibility: older names, Chainer's per-device method
# variants, and the names left out on purpose, each saying why.


@_continue_class(Function)
class _FunctionCompatibility:

    # Chainer also lets a Function write one method per device instead:
    # forward_cpu/forward_gpu and backward_cpu/backward_gpu.
    def forward(self, inputs):
        """Compute the outputs from a tuple of input arrays.  This default calls
        forward_cpu or forward_gpu by where the inputs live, as Chainer's
        old-style functions may define. Chainer: Function.forward.
        """
        on_cpu = isinstance(inputs[0], np.ndarray)
        return (self.forward_cpu if on_cpu else self.forward_gpu)(inputs)

    def backward(self, inputs, grad_outputs):
        """Compute the input gradients from the inputs and output gradients.  This
        default calls backward_cpu or backward_gpu by where the inputs live.
        Chainer: Function.backward.
        """
        on_cpu = isinstance(inputs[0], np.ndarray)
        return (self.backward_cpu if on_cpu else self.backward_gpu)(inputs, grad_outputs)

    def forward_cpu(self, inputs):
        """Forward on NumPy arrays: define it (with forward_gpu) instead of forward.
        Raises NotImplementedError unless overridden. Chainer: Function.forward_cpu.
        """
        raise NotImplementedError('{}: write forward (or forward_cpu and forward_gpu)'
                                  .format(self.label))

    def backward_cpu(self, inputs, grad_outputs):
        """Backward on NumPy arrays: define it (with backward_gpu) instead of
        backward. Raises NotImplementedError unless overridden.
        Chainer: Function.backward_cpu.
        """
        raise NotImplementedError('{}: write backward (or backward_cpu and backward_gpu) '
                                  'to differentiate it'.format(self.label))

    forward_gpu, backward_gpu = forward_cpu, backward_cpu

    def retain_inputs(self, indexes):
        """Chainer frees the inputs not named here; this graph keeps them all."""

    retain_outputs = retain_inputs


@_continue_class(Variable)
class _VariableCompatibility:

    # ----- the graph -----
    def set_creator(self, function):
        """Make `function` this variable's creator (rank follows).
        Chainer: Variable.set_creator.
        """
        self.creator = function
        self.rank = function.rank + 1


@_continue_class(Optimizer)
class _OptimizerCompatibility:

    def use_cleargrads(self, use=True):
        """Accepted for Chainer 1 code; does nothing (gradients are always cleared
        to None). Chainer: chainer.Optimizer.use_cleargrads.
        """
        pass     # Chainer-1 compatibility: grads are always cleared to None


@_continue_class(_Config)
class _ConfigCompatibility:

    def show(self, file=sys.stdout):
        """Write every setting, one per line, to `file` (default sys.stdout).
        Chainer: chainer.configuration.GlobalConfig.show.
        """
        for name in sorted(vars(self)):
            file.write('{:<22}{}\n'.format(name, getattr(self, name)))


global_config = config   # one config: Chainer's per-thread layer is left out

_this_module = sys.modules[__name__]


def _submodule(dotted_name, **members):
    """Make `onefchainer.<dotted_name>` importable although this is one file.

    Python finds `import onefchainer.functions` in `sys.modules` before it
    looks for a package on disk, so registering a module object there is all
    it takes.  The object is also set as an attribute of its parent.
    """
    head, _, name = dotted_name.rpartition('.')
    parent = _this_module
    if head:     # a parent is made if needed, and is a package: it holds modules
        parent = _submodule(head)
        parent.__path__ = getattr(parent, '__path__', [])
    full_name = __name__ + '.' + dotted_name
    module = sys.modules.get(full_name) or types.ModuleType(full_name)
    module.__dict__.update(members)
    sys.modules[full_name] = module
    if isinstance(getattr(parent, name, module), types.ModuleType):
        setattr(parent, name, module)      # but utils.experimental stays the function
    return module


# The modules, from the marks that Chapters 1-23 left at each definition.
# Each top-level one also becomes a global here: `functions` below is
# onefchainer.functions.
for _path in sorted(_exports):
    _submodule(_path, **_exports[_path])


# What a definition cannot mark: plain values, the modules that hold modules,
# and the names of Chapters 1-4, which come before the marks are introduced.
_submodule('cuda', cupy=cupy, available=cupy is not None, get_array_module=get_array_module)
_submodule('backends', cuda=cuda)
_submodule('backend', cuda=cuda, get_array_module=get_array_module)
_submodule('configuration', GlobalConfig=_Config, using_config=using_config)
_submodule('variable', Variable=Variable, as_variable=as_variable, as_array=as_array)
_submodule('function', Function=Function, no_backprop_mode=no_backprop_mode)
GradientMethod = Optimizer     # Chainer's name for the base of gradient-based optimizers


# ----- the rest of Chainer's surface -------------------------------------------
# Real Chainer programs reach the features above by many roads: module paths
# (`from chainer.backends.cuda import to_cpu`, `chainer.datasets.mnist`),
# function-style spellings of classes (`extensions.dump_graph`), and older
# names Chainer v7 still accepts (`cuda.get_device(0).use()`).  What follows
# lays those roads to the same objects, so a Chainer program runs after only
# its imports change.  A Chainer name whose feature is deliberately left out
# (ChainerX, multi-GPU and multi-node training, RNNs, HDF5, ...) raises
# NotSupportedError saying so, instead of a puzzling AttributeError.

class NotSupportedError(NotImplementedError):
    """Raised for a Chainer v7 name whose feature onefchainer leaves out."""


# Why each family of names is left out; the keys are used by the lists below.
_OUT_OF_SCOPE = {
    'chainerx': 'ChainerX (Chainer\'s C++ array backend) is out of scope; NumPy and CuPy are used',
    'multi': 'multi-GPU / multi-process training is out of scope; use one device',
    'rnn': 'recurrent networks (LSTM/GRU and friends) are out of scope',
    'double': 'FunctionNode and double backprop are out of scope; write a Function (Chapter 3)',
    'hooks': 'function and link hooks are out of scope',
    'hdf5': 'HDF5 files are out of scope (they need h5py); use save_npz/load_npz',
    'distributions': 'probability distributions are out of scope',
    'static': 'static-graph optimization is out of scope',
    'mixed16': 'mixed16 (automatic mixed precision) is out of scope; set config.dtype',
    'images': 'pickle-file and text-file datasets are out of scope; use TupleDataset over arrays '
              '(or ImageDataset for image files)',
    'data': 'only MNIST and Fashion-MNIST are provided as built-in datasets',
    'pretrained': 'pretrained models (VGG, ResNet, GoogLeNet) are out of scope',
    'testing': 'chainer.testing (Chainer\'s own test helpers) is out of scope; use pytest and '
               'gradient_check',
    'thread': 'per-thread configuration is out of scope: config is one global object',
    'dali': 'NVIDIA DALI is out of scope',
    'ideep': 'iDeep (Intel CPU acceleration) is out of scope; NumPy is used on the CPU',
    'missing': 'not implemented here (see README, "Compatibility"); build it from what '
               'exists, e.g. as a Function subclass (Chapter 3)',
}


def _not_supported(module, reason_key=None, **names_by_reason):
    """Make missing names of `module` raise NotSupportedError.

    `names_by_reason` maps a key of _OUT_OF_SCOPE to a space-separated list
    of Chainer names; `reason_key` (optional) covers every other non-dunder
    name, for modules that are out of scope as a whole.  Other names still
    raise AttributeError, so typos stay typos.  (Module-level __getattr__,
    PEP 562, is consulted only for names the module does not have.)
    """
    reasons = dict(getattr(module, '_not_supported_reasons', {}))
    for key, names in names_by_reason.items():
        for name in names.split():
            reasons[name] = key
    module._not_supported_reasons = reasons
    module._not_supported_default = reason_key or getattr(module, '_not_supported_default', None)

    def __getattr__(name):
        key = reasons.get(name)
        if key is None and not name.startswith('__'):
            key = module._not_supported_default
        if key is None:
            raise AttributeError('module {!r} has no attribute {!r}'.format(
                module.__name__, name))
        chainer_name = 'chainer' + module.__name__[len(__name__):] + '.' + name
        raise NotSupportedError('{} is not supported by onefchainer: {}'.format(
            chainer_name, _OUT_OF_SCOPE[key]))

    module.__getattr__ = __getattr__
    return module


def _out_of_scope_module(dotted_name, reason_key, **members):
    """Register a module whose every (other) name raises NotSupportedError."""
    return _not_supported(_submodule(dotted_name, **members), reason_key)


# ----- chainer.cuda / chainer.backends.cuda: the pre-v6 device API ----------
# Before `chainer.get_device`, a GPU was chosen with cupy's Device object
# (`cuda.get_device_from_id(0).use()`, `with cuda.get_device(x):`) and the
# CPU was a do-nothing DummyDevice.  The functions below return those objects
# when CuPy is there, and DummyDevice for the CPU.

class DummyDeviceType:
    """The CPU in the pre-v6 CUDA API: a device that does nothing (id -1)."""

    id = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def use(self):
        """Does nothing: the CPU needs no selecting. Chainer: cuda.DummyDevice.use."""
        pass

    def synchronize(self):
        """Does nothing: the CPU does not run ahead. Chainer: cuda.DummyDevice.synchronize."""
        pass

    def __eq__(self, other):
        return isinstance(other, DummyDeviceType)

    def __hash__(self):
        return hash(DummyDeviceType)

    def __int__(self):
        return -1

    def __repr__(self):
        return '<DummyDevice>'


DummyDevice = DummyDeviceType()


def check_cuda_available():
    """Raise RuntimeError unless CuPy (and so a GPU) can be used.  Chainer: cuda.check_cuda_available."""
    _require_cupy('check_cuda_available')


def _cuda_device_from_id(device_id):
    """cupy.cuda.Device(device_id), or DummyDevice for None or a negative id.
    Chainer: cuda.get_device_from_id."""
    if device_id is None or int(device_id) < 0:
        return DummyDevice
    check_cuda_available()
    return cupy.cuda.Device(int(device_id))


def _cuda_device_from_array(*arrays):
    """The cupy Device of the first CuPy array given, else DummyDevice.
    Chainer: cuda.get_device_from_array."""
    for array in arrays:
        if isinstance(array, Variable):
            array = array.data
        if cupy is not None and isinstance(array, cupy.ndarray):
            return array.device
    return DummyDevice


def _cuda_get_device(*args):
    """The v1 spelling: an int id, a CuPy array or a cupy Device gives a cupy
    Device; anything else (a NumPy array, None) DummyDevice.  Like Chainer's
    cuda.get_device, an int always means a GPU, so it needs CuPy."""
    for arg in args:
        if isinstance(arg, (int, np.integer)) and not isinstance(arg, bool):
            check_cuda_available()
            return cupy.cuda.Device(int(arg))
        if cupy is not None and isinstance(arg, (cupy.ndarray, cupy.cuda.Device)):
            return arg.device if isinstance(arg, cupy.ndarray) else arg
    return DummyDevice


def _cupy_attribute(name):
    """cupy.<name> for the kernel helpers, or a clear error without CuPy."""
    def function(*args, **kwargs):
        _require_cupy('cuda.' + name)
        return getattr(cupy, name)(*args, **kwargs)
    function.__name__ = name
    function.__doc__ = 'cupy.{} (Chainer: cuda.{}); without CuPy it raises RuntimeError.'.format(
        name, name)
    return function


def _cuda_copy(array, out=None, out_device=None, stream=None):
    """Copy a CuPy array, optionally to another GPU or into `out`.  Chainer: cuda.copy."""
    _require_cupy('cuda.copy')
    if out is None:
        with _cuda_device_from_id(out_device if out_device is not None
                                  else array.device.id):
            out = cupy.empty_like(array)
    with array.device:
        cupy.copyto(out, array)
    return out


def should_use_cudnn(level, lowest_version=0):
    """False: onefchainer never calls cuDNN. Chainer: chainer.should_use_cudnn."""
    return False


def should_use_cudnn_tensor_core(dtype):
    """False: onefchainer never calls cuDNN.
    Chainer: chainer.should_use_cudnn_tensor_core."""
    return False


def _get_max_workspace_size():
    """0: no cuDNN workspace is used. Chainer: cuda.get_max_workspace_size."""
    return 0


def _set_max_workspace_size(size):
    """Accepted and ignored: no cuDNN workspace is used.
    Chainer: cuda.set_max_workspace_size."""


def _not_available():
    """False: this backend is not supported by onefchainer."""
    return False


def _fuse_without_cupy(*args, **kwargs):
    """Without CuPy, cuda.fuse() leaves the function as it is. Chainer: cuda.fuse."""
    return lambda function: function


def _clear_no_memo():
    """Without CuPy there is no kernel cache to clear. Chainer: cuda.clear_memo."""


def _memoize(for_each_device=False):
    """cupy.memoize where CuPy is installed; else a decorator that returns the function."""
    if cupy is not None:
        return cupy.memoize(for_each_device)
    return lambda function: function


_submodule('cuda', DummyDevice=DummyDevice, DummyDeviceType=DummyDeviceType,
           check_cuda_available=check_cuda_available, get_device=_cuda_get_device,
           get_device_from_id=_cuda_device_from_id,
           get_device_from_array=_cuda_device_from_array,
           Device=cupy.cuda.Device if cupy is not None else DummyDeviceType,
           ndarray=cupy.ndarray if cupy is not None else np.ndarray, copy=_cuda_copy,
           elementwise=_cupy_attribute('ElementwiseKernel'),
           reduce=_cupy_attribute('ReductionKernel'), raw=_cupy_attribute('RawKernel'),
           fuse=getattr(cupy, 'fuse', None) or _fuse_without_cupy, memoize=_memoize,
           clear_memo=getattr(cupy, 'clear_memo', None) or _clear_no_memo,
           Stream=getattr(getattr(cupy, 'cuda', None), 'Stream', None) or _cupy_attribute('Stream'),
           Event=getattr(getattr(cupy, 'cuda', None), 'Event', None) or _cupy_attribute('Event'),
           cudnn_enabled=False, config=config, should_use_cudnn=should_use_cudnn,
           should_use_cudnn_tensor_core=should_use_cudnn_tensor_core,
           get_max_workspace_size=_get_max_workspace_size,
           set_max_workspace_size=_set_max_workspace_size)
_not_supported(cuda, missing='get_cudnn_dropout_states get_cudnn_dropout_states_core')
sys.modules[__name__ + '.backends.cuda'] = cuda      # chainer.backends.cuda is chainer.cuda
_out_of_scope_module('backends.intel64', 'ideep', is_ideep_available=_not_available)


# ----- chainer.backend ----------------------------------------------------------


_not_supported(
    backend,
    chainerx='ChainerxDevice from_chx to_chx', ideep='Intel64Device')


# ----- chainerx: `import chainerx` becomes `from onefchainer import chainerx` --
# Chainer v6/v7 examples compare `device.xp is chainerx`; that stays False
# here, and everything else in it says ChainerX is not supported.
chainerx = _out_of_scope_module('chainerx', 'chainerx', is_available=_not_available)


# ----- chainer (top level) -------------------------------------------------------


DeviceResident = Link          # here Link is the only thing that lives on a device
AbstractSerializer = Serializer
disable_experimental_feature_warning = False


_not_supported(
    _this_module,
    chainerx='Fallback get_compute_mode', double='FunctionNode FunctionAdapter grad',
    hooks='FunctionHook LinkHook get_function_hooks', mixed16='mixed16',
    distributions='Distribution kl_divergence register_kl cross_entropy',
    static='static_graph static_code')


# ----- chainer.configuration, .variable, .function, .link, .serializer ----------
_not_supported(
    _submodule('configuration', config=config, global_config=global_config),
    thread='LocalConfig')
_not_supported(
    variable,
    double='VariableNode', missing='variable_repr variable_str')
_not_supported(function, double='FunctionAdapter', hooks='FunctionHook')
for _name in ('function_hooks', 'link_hooks'):
    _out_of_scope_module(_name, 'hooks')
_out_of_scope_module('function_node', 'double')
_out_of_scope_module('distributions', 'distributions')
_out_of_scope_module('graph_optimizations', 'static')
_out_of_scope_module('testing', 'testing')
del _name


_not_supported(
    functions,
    rnn='lstm slstm tree_lstm n_step_lstm n_step_bilstm n_step_gru n_step_bigru '
        'n_step_rnn n_step_birnn zoneout transpose_sequence pad_sequence '
        'connectionist_temporal_classification crf1d argmax_crf1d',
    missing='as_strided black_out cross_covariance decorrelated_batch_normalization decov '
            'digamma discriminative_margin_based_clustering_loss erfcinv erfcx erfinv fft '
            'fixed_decorrelated_batch_normalization forget gaussian ifft ndtri '
            'negative_sampling polygamma sparse_matmul spatial_transformer_grid '
            'spatial_transformer_sampler zeta '
            'roi_average_align_2d roi_average_pooling_2d roi_max_align_2d '
            'roi_max_pooling_2d roi_pooling_2d spatial_pyramid_pooling_2d '
            'deconvolution_1d '
            'deconvolution_3d deconvolution_nd deformable_convolution_2d_sampler '
            'local_convolution_2d '
            'unpooling_1d unpooling_3d '
            'unpooling_nd')
_not_supported(
    links,
    rnn='LSTM GRU StatefulGRU StatelessGRU StatefulMGU StatelessMGU StatefulPeepholeLSTM '
        'StatefulZoneoutLSTM StatelessLSTM NStepLSTM NStepBiLSTM NStepGRU NStepBiGRU '
        'NStepRNNReLU NStepRNNTanh NStepBiRNNReLU NStepBiRNNTanh ChildSumTreeLSTM '
        'NaryTreeLSTM CRF1d',
    pretrained='VGG16Layers VGG19Layers ResNet50Layers ResNet101Layers ResNet152Layers '
               'GoogLeNet',
    missing='BinaryHierarchicalSoftmax BlackOut DecorrelatedBatchNormalization '
            'NegativeSampling TheanoFunction Deconvolution1D Deconvolution3D '
            'DeconvolutionND '
            'DeformableConvolution2D '
            'LocalConvolution2D')


_not_supported(optimizer,
               missing='make_deprecation_message')
_not_supported(
    initializers,
    missing='DownsamplingConvFilter UpsamplingDeconvFilter')
_not_supported(serializers, hdf5='HDF5Serializer HDF5Deserializer save_hdf5 load_hdf5')
_out_of_scope_module('serializers.hdf5', 'hdf5')


_not_supported(dataset, multi='ConcatWithAsyncTransfer', missing='TabularDataset cached_download')
_not_supported(
    dataset.convert,
    multi='ConcatWithAsyncTransfer Conveyor')
_not_supported(dataset.download,
               missing='cached_download')
_not_supported(
    datasets,
    images='PickleDataset PickleDatasetWriter '
           'open_pickle_dataset open_pickle_dataset_writer TextDataset',
    data='get_cifar10 get_cifar100 get_svhn get_ptb_words get_ptb_words_vocabulary '
         'get_kuzushiji_mnist get_kuzushiji_mnist_labels')
_not_supported(datasets.mnist,
               missing='make_npz preprocess_mnist')
_not_supported(datasets.fashion_mnist,
               missing='make_npz preprocess_mnist')


# ----- chainer.iterators -----------------------------------------------------------
_not_supported(
    iterators,
    dali='DaliIterator')


# ----- chainer.training ---------------------------------------------------------


_not_supported(training, multi='ParallelUpdater')
_not_supported(training.updaters, multi='ParallelUpdater MultiprocessParallelUpdater')
_not_supported(training.updater, multi='ParallelUpdater')
_not_supported(
    training.extensions.snapshot_writers,
    missing='StandardWriter ThreadWriter ProcessWriter QueueWriter ThreadQueueWriter '
            'ProcessQueueWriter')


# ----- chainer.gradient_check, chainer.utils, chainer.computational_graph ------


_not_supported(
    gradient_check,
    double='check_double_backward')
_not_supported(
    utils,
    missing='CooMatrix WalkerAlias enable_final final get_order nondeterministic to_coo')


_not_supported(
    computational_graph,
    missing='DotNode')


# ----- methods Chainer's classes have that Chapters 3-7 did not need -------------

def _variable_addgrad(self, var):
    """Add `var`'s gradient to this one's (None counts as zero); a Parameter
    without data first takes the gradient's shape (its initializer's values).
    Chainer: Variable.addgrad."""
    if var.grad is None:
        return
    _check_same_shape('addgrad', self.name or 'the variable', self.data, var.grad)
    if self.data is None and isinstance(self, Parameter):
        self.initialize(var.grad.shape, _xp(var.grad))
    if self.grad is None:
        self.grad = var.grad.copy()
    else:                    # out=: a 0-dim sum would be a NumPy scalar
        self.grad = _xp(self.grad).add(self.grad, _send_to_device(self.device, var.grad),
                                       out=_xp(self.grad).empty_like(self.grad))


def _variable_copydata(self, var):
    """Copy `var`'s data into this variable's array in place (across devices);
    a Parameter without data first takes the source's shape. Raises ValueError
    for a source without data. Chainer: Variable.copydata."""
    source = as_array(var)
    if source is None:       # Chainer copies the NaN it fills the source with
        raise ValueError('copydata: the source {} has no data (it is not initialized); '
                         'nothing was copied'.format(getattr(var, 'name', None) or 'variable'))
    _check_same_shape('copydata', self.name or 'the variable', self.data, source)
    if self.data is None and isinstance(self, Parameter):
        self.initialize(source.shape, _xp(source))
    copyto(self.data, source)


def _variable_mean(self, axis=None, weights=None, keepdims=False):
    """F.mean(self, axis, weights, keepdims): with weights, F.average.
    Chainer: Variable.mean."""
    return mean(self, axis, weights, keepdims)


def _link_addgrads(self, link):
    """Add each gradient of `link` to this link's parameter of the same name.
    Raises ValueError/TypeError naming the path and both shapes/dtypes for a
    missing or misfitting parameter, before anything is added. Chainer: Link.addgrads."""
    theirs = dict(link.namedparams())
    pairs = []
    for name, param in self.namedparams():        # every pair checked before the first add
        if name not in theirs:
            raise ValueError('addgrads: {} has no parameter {}; nothing was '
                             'added'.format(type(link).__name__, name))
        other = theirs[name]
        if other.grad is not None:
            _check_same_shape('addgrads', name, param.data, other.grad)
            dtype = (param.data.dtype if param.data is not None else   # what initialize makes
                     np.dtype(getattr(param.initializer, 'dtype', None) or config.dtype))
            if other.grad.dtype != dtype:
                raise TypeError('addgrads: the gradient of {} has dtype {} in the source but '
                                'the parameter here {}; nothing was added'.format(
                                    name, other.grad.dtype, dtype))
        pairs.append((param, other))
    for param, other in pairs:
        param.addgrad(other)


def _method_not_supported(qualified_name, reason_key):
    def method(self, *args, **kwargs):
        raise NotSupportedError('chainer.{} is not supported by onefchainer: {}'.format(
            qualified_name, _OUT_OF_SCOPE[reason_key]))
    method.__name__ = qualified_name.rsplit('.', 1)[-1]
    method.__doc__ = 'Not supported by onefchainer ({}): raises NotSupportedError.'.format(
        _OUT_OF_SCOPE[reason_key])
    return method


Variable.addgrad = _variable_addgrad
Variable.copydata = _variable_copydata
Variable.mean = _variable_mean
Variable.raw_array = property(lambda self: self.data,
                              doc='The data array. Chainer: Variable.raw_array.')
Variable.label = property(lambda self: _variable_label(self),
                          doc='A short description: shape and dtype. Chainer: Variable.label.')
Link.addgrads = _link_addgrads
for _cls, _names, _key in ((Variable, 'to_chx from_chx', 'chainerx'),
                           (Link, 'to_chx from_chx', 'chainerx'),
                           (Variable, 'to_intel64', 'ideep'), (Link, 'to_intel64', 'ideep'),
                           (Link, 'add_hook delete_hook', 'hooks'),
                           (Optimizer, 'loss_scaling update_loss_scale', 'mixed16')):
    for _name in _names.split():
        if not hasattr(_cls, _name):
            setattr(_cls, _name, _method_not_supported(_cls.__name__ + '.' + _name, _key))
del _cls, _names, _key, _name


# ----- help() on each module ----------------------------------------------------
# The modules are filled from the marks at the definitions, so nothing else
# lists their names: make `help(onefchainer.functions)` do it, each name with
# the first line of its docstring, and set __all__ so that pydoc documents
# every one (it otherwise skips what a module did not define itself).

def _summary(obj):
    if not isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
        return 'a {}'.format(type(obj).__name__)
    paragraph = ' '.join((obj.__doc__ or '').strip().split('\n\n')[0].split())
    sentence = paragraph.split('. ')[0].rstrip('.')
    return sentence if len(sentence) <= 80 else sentence[:77] + '...'


for _module in list(sys.modules.values()):
    if getattr(_module, '__name__', '').startswith(__name__ + '.') and \
            sys.modules[_module.__name__] is _module and '__all__' not in vars(_module):
        _names = sorted(name for name, obj in vars(_module).items()
                        if not name.startswith('_') and not isinstance(obj, types.ModuleType))
        _module.__all__ = _names
        _module.__doc__ = 'chainer{}, as onefchainer has it: {} names.\n\n{}\n'.format(
            _module.__name__[len(__name__):], len(_names), '\n'.join(
                '{:<34} {}'.format(name, _summary(vars(_module)[name])) for name in _names))
del _module, _names
