"""Count array-module calls and host syncs per MNIST training step, without a GPU.

onefchainer takes its GPU path whenever an array is a `cupy.ndarray` and not a
`numpy.ndarray`.  This script installs a small *recording stand-in* for CuPy
in `sys.modules['cupy']` before importing onefchainer, so onefchainer's own
import finds it (`_array_types`, `_xp`, `get_array_module`, `GpuDevice` all
see it exactly as they would see CuPy).  Its arrays wrap NumPy arrays but are
not NumPy arrays, so every op goes down the GPU path; every call is counted,
and so is every *host sync*: anything that needs a device value on the host
(`bool()`, `int()`, `float()`, `.get()`, `.item()`, `.tolist()`, printing,
`__array__`).  Host-to-device copies (`asarray` of host data) are counted
apart.  Like CuPy, it refuses NumPy arrays as operands and implicit
conversion to NumPy, so a forgotten transfer fails here too.

`ElementwiseKernel` (the fused optimizer updates, the LSTM cell) is run by a tiny
interpreter of the C subset those kernels are written in (declarations,
assignments, + - * /, c ? a : b, sqrt, max, tanh); that checks their formulas
against the CPU path, but not that nvcc compiles them: the real check is on
a GPU (bench/gpu_checks.sh).

    python bench/count_gpu_calls.py [--steps 5] [--batchsize 100] [--optimizer Adam]
    python bench/count_gpu_calls.py --trainer 20   # through Trainer + LogReport/PrintReport/ProgressBar
    python bench/count_gpu_calls.py --json         # one JSON line, for the tests
    python bench/count_gpu_calls.py --compare-optimizers   # fused updates vs the CPU path
    python bench/count_gpu_calls.py --pytest -q [args]     # the suite, the stand-in as its GPU
"""
import argparse
import collections
import io
import json
import os
import re
import sys
import tempfile
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

COUNTS = collections.Counter()     # 'call:<name>', 'sync:<name>', 'h2d:<name>'
COMPILED = set()                   # the kernels made, each with its compile options
_HOST_INPUTS = {'asarray', 'array', 'asanyarray', 'ascontiguousarray'}
_HOST_INDICES = {'at'}      # ufunc.at takes host index arrays, as CuPy's does


def _count(kind, name):
    COUNTS[kind + ':' + name] += 1


def _unwrap(obj, accept_host=False):
    if isinstance(obj, FakeArray):
        return obj._a
    if isinstance(obj, np.ndarray) and obj.ndim > 0 and not accept_host:
        # CuPy: "Unsupported type <class 'numpy.ndarray'>"
        raise TypeError('Unsupported type {} (a host array given to the device)'.format(type(obj)))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_unwrap(o, accept_host) for o in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v, accept_host) for k, v in obj.items()}
    return obj


def _wrap(obj):
    if isinstance(obj, np.ndarray):
        return FakeArray(obj)
    if isinstance(obj, np.generic):        # CuPy returns 0-dim arrays where NumPy gives scalars
        return FakeArray(np.asarray(obj))
    if isinstance(obj, tuple) and hasattr(obj, '_fields'):   # a named tuple (eigh's result)
        return type(obj)(*(_wrap(o) for o in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_wrap(o) for o in obj)
    return obj


class _MemoryPointer:
    """What CuPy's ndarray.data is, as far as its address (.ptr) goes."""

    def __init__(self, array):
        self.ptr = array.__array_interface__['data'][0]


class _Callable:
    """A NumPy function, ufunc or method that counts its calls."""

    def __init__(self, target, name):
        self._target, self._name = target, name

    def __call__(self, *args, **kwargs):
        _count('call', self._name)
        host = self._name.split('.')[-1] in _HOST_INPUTS
        if self._name.split('.')[-1] in _HOST_INDICES:
            return _wrap(self._target(*_unwrap(args, True), **_unwrap(kwargs, True)))
        if host and args and not isinstance(args[0], FakeArray) and np.size(args[0]) > 0:
            _count('h2d', self._name)
        return _wrap(self._target(*_unwrap(args, host), **_unwrap(kwargs, host)))

    def __getattr__(self, name):           # ufunc.at, ufunc.reduce, random.rand ...
        return _wrap_attribute(getattr(self._target, name), self._name + '.' + name)


def _wrap_attribute(value, name):
    if isinstance(value, type) or not callable(value) and not isinstance(value, types.ModuleType):
        return _wrap(value)                # dtypes (xp.float32), constants, shapes
    return _Callable(value, name)


class FakeArray:
    """A device array: a NumPy array that is not a numpy.ndarray."""

    __array_priority__ = 100
    __array_ufunc__ = None                 # NumPy defers to our reflected operators
    __hash__ = None

    def __init__(self, array):
        self._a = array

    def __getattr__(self, name):
        return _wrap_attribute(getattr(self._a, name), 'ndarray.' + name)

    @property
    def device(self):
        return _Device(0)

    @property
    def data(self):
        return _MemoryPointer(self._a)

    def __len__(self):
        return len(self._a)

    def _sync(self, name):
        _count('sync', name)
        return self._a

    def set(self, array, stream=None):       # host to device, into this array
        _count('h2d', 'set')
        self._a[...] = array

    def get(self, stream=None):
        return self._sync('get').copy()

    def item(self):
        return self._sync('item').item()

    def tolist(self):
        return self._sync('tolist').tolist()

    def __bool__(self):
        return bool(self._sync('__bool__'))

    def __int__(self):
        return int(self._sync('__int__'))

    def __float__(self):
        return float(self._sync('__float__'))

    def __index__(self):
        return self._sync('__index__').__index__()

    def __repr__(self):
        return repr(self._sync('__repr__'))

    def __format__(self, spec):
        return format(self._sync('__format__'), spec)

    def __array__(self, *args, **kwargs):
        _count('sync', '__array__')
        raise TypeError('Implicit conversion to a NumPy array is not allowed. '
                        'Please use `.get()` to construct a NumPy array explicitly.')

    def __iter__(self):
        _count('call', 'ndarray.__iter__')
        return iter([FakeArray(row) for row in self._a])


def _operator(dunder, in_place):
    def method(self, *args):
        _count('call', 'ndarray.' + dunder)
        result = getattr(self._a, dunder)(*_unwrap(args))
        if result is NotImplemented or in_place:
            return self if in_place else result
        return _wrap(result)
    method.__name__ = dunder
    return method


for _name in ('add sub mul truediv floordiv mod pow matmul and or xor lshift rshift'.split()):
    for _dunder in ('__{}__', '__r{}__', '__i{}__'):
        setattr(FakeArray, _dunder.format(_name),
                _operator(_dunder.format(_name), _dunder.startswith('__i')))
for _name in 'lt le gt ge eq ne neg pos abs invert getitem setitem'.split():
    setattr(FakeArray, '__{}__'.format(_name), _operator('__{}__'.format(_name), False))


def _count_index(what, key):
    # CuPy takes host arrays as indices (it copies them over).  A boolean
    # mask on the device is a sync: CuPy reads how many entries are True
    # before it can size the result (cupy/_core/_routines_indexing).
    _count('call', 'ndarray.' + what)
    keys = key if isinstance(key, tuple) else (key,)
    if any(isinstance(k, FakeArray) and k._a.dtype == np.bool_ for k in keys):
        _count('sync', 'ndarray.{}[boolean mask]'.format(what))
    return _unwrap(key, True)


FakeArray.__setitem__ = lambda self, key, value: self._a.__setitem__(
    _count_index('__setitem__', key), _unwrap(value))
FakeArray.__getitem__ = lambda self, key: _wrap(self._a[_count_index('__getitem__', key)])


# ----- ElementwiseKernel: the C subset of onefchainer's kernels, run by NumPy -----

_C_TO_PY = [(re.compile(r'&&'), '&'), (re.compile(r'\|\|'), '|'), (re.compile(r'!(?!=)'), '~')]
_C_FUNCTIONS = {'sqrt': np.sqrt, 'max': np.maximum, 'min': np.minimum, 'fabs': np.abs,
                'tanh': np.tanh}
_C_TYPES = {'bool': np.bool_, 'float': np.float32, 'double': np.float64, 'int': np.int32,
            'long long': np.int64}
_STATEMENT = re.compile(r'(?:(bool|float|double|int|long long|[A-Z])\s+)?(\w+)\s*([-+*/]?=)\s*(.*)$',
                        re.S)


def _params(text):
    return [tuple(p.split()) for p in text.split(',') if p.strip()]


class _ElementwiseKernel:
    """Runs the kernel's statements with NumPy, elementwise over whole arrays,
    with CuPy's typing: a one-letter type is that of the arrays passed for it,
    scalars are cast to their parameter's type, missing outputs are allocated."""

    def __init__(self, in_params, out_params, operation, name='kernel', **kwargs):
        self.ins, self.outs, self.name = _params(in_params), _params(out_params), name
        # Recorded, not applied: NumPy rounds every operation anyway.
        COMPILED.add(name + ('' if '--fmad=false' in kwargs.get('options', ()) else
                             ' without --fmad=false'))
        for pattern, replacement in _C_TO_PY:
            operation = pattern.sub(replacement, operation)
        self.statements = [_STATEMENT.match(s.strip()).groups()
                           for s in operation.split(';') if s.strip()]

    def __call__(self, *args):
        _count('call', 'ElementwiseKernel.' + self.name)
        if len(args) not in (len(self.ins), len(self.ins) + len(self.outs)):
            raise TypeError('{}: wrong number of arguments'.format(self.name))
        params = self.ins + self.outs
        values = [_unwrap(a) for a in args]
        types = {}
        for (kind, _), value in zip(params, values):
            if len(kind) == 1 and isinstance(value, np.ndarray):
                types.setdefault(kind, value.dtype)
        dtype_of = (lambda kind: types[kind] if len(kind) == 1 else
                    np.dtype(_C_TYPES.get(kind, kind)))
        shape = np.broadcast_shapes(*[v.shape for v in values if isinstance(v, np.ndarray)])
        for kind, _ in self.outs[len(values) - len(self.ins):]:
            values.append(np.empty(shape, dtype_of(kind)))
        scope = {name: (v if isinstance(v, np.ndarray) else dtype_of(kind).type(v))
                 for (kind, name), v in zip(params, values)}
        scope.update(_C_FUNCTIONS)
        out_names = [name for _, name in self.outs]
        for kind, target, op, expression in self.statements:
            if '?' in expression:                      # c ? a : b
                condition, rest = expression.split('?', 1)
                expression = 'where({}, {})'.format(condition, ','.join(rest.split(':', 1)))
            value = eval(expression, {'__builtins__': {}, 'where': np.where}, scope)
            if op != '=':
                value = eval('a {} b'.format(op[0]), {}, {'a': scope[target], 'b': value})
            if target in out_names:
                scope[target][...] = value             # outputs are written in place
            else:
                scope[target] = np.asarray(value, dtype_of(kind) if kind else None)
        outputs = tuple(FakeArray(v) for v in values[len(self.ins):])
        return outputs[0] if len(outputs) == 1 else outputs


# ----- the module -----------------------------------------------------------------

class _Device:
    def __init__(self, device_id=None):
        self.id = 0 if device_id is None else int(device_id)

    def use(self):
        pass

    def synchronize(self):
        _count('sync', 'synchronize')

    __enter__ = lambda self: self
    __exit__ = lambda self, *exc: None


class _Event:
    """cupy.cuda.Event: a point in the stream; synchronize() waits for it (a sync)."""

    def record(self, stream=None):
        import time
        self.time = time.perf_counter()

    def synchronize(self):
        _count('sync', 'Event.synchronize')


def _elapsed_time(start, stop):
    """cupy.cuda.get_elapsed_time: milliseconds between two recorded events."""
    return (stop.time - start.time) * 1000


class _FakeCupy(types.ModuleType):
    ndarray = FakeArray
    ElementwiseKernel = _ElementwiseKernel
    cuda = types.SimpleNamespace(
        Device=_Device, runtime=types.SimpleNamespace(getDevice=lambda: 0), Event=_Event,
        get_elapsed_time=_elapsed_time)

    def __getattr__(self, name):
        return _wrap_attribute(getattr(np, name), name)

    @staticmethod
    def get_array_module(*args):
        return sys.modules['cupy'] if any(isinstance(a, FakeArray) for a in args) else np

    @staticmethod
    def asnumpy(array):
        return array.get() if isinstance(array, FakeArray) else np.asarray(array)

    random = None     # set below: a random stream of its own, as CuPy's is not NumPy's


class _Random:
    """cupy.random: draws (rand, normal, uniform ...; with CuPy's dtype=) from
    a stream of its own; RandomState makes another one."""

    def __init__(self, seed=None):
        self._state = np.random.RandomState(seed)

    def seed(self, seed=None):
        self._state.seed(seed)

    def RandomState(self, seed=None):
        return _Random(seed)

    def __getattr__(self, name):
        def draw(*args, dtype=None, **kwargs):
            _count('call', 'random.' + name)
            drawn = np.asarray(getattr(self._state, name)(*args, **kwargs))
            return FakeArray(drawn if dtype is None else drawn.astype(dtype))
        return draw


_FakeCupy.random = _Random(1234)


def install():
    """Put the stand-in in sys.modules['cupy']; call before importing onefchainer."""
    if 'onefchainer' in sys.modules:
        raise RuntimeError('install() must run before onefchainer is imported')
    sys.modules['cupy'] = _FakeCupy('cupy')
    return sys.modules['cupy']


# ----- the measurements ------------------------------------------------------------

_MNIST = []


def _load_batches(n, batchsize):
    import onefchainer as chainer
    if _MNIST and len(_MNIST[0]) >= n * batchsize:
        return _MNIST
    try:
        train, _ = chainer.datasets.get_mnist()
        x, t = chainer.dataset.concat_examples(train[:n * batchsize])
    except Exception:
        rng = np.random.RandomState(0)
        x = rng.rand(n * batchsize, 784).astype(np.float32)
        t = rng.randint(0, 10, n * batchsize).astype(np.int32)
    _MNIST[:] = [x, t]
    return _MNIST


def _model(optimizer_name):
    import onefchainer as chainer
    import onefchainer.functions as F
    import onefchainer.links as L

    class MLP(chainer.Chain):
        def __init__(self):
            super().__init__()
            with self.init_scope():
                self.l1 = L.Linear(784, 1000)
                self.l2 = L.Linear(1000, 1000)
                self.l3 = L.Linear(1000, 10)

        def forward(self, x):
            return self.l3(F.relu(self.l2(F.relu(self.l1(x)))))

    model = L.Classifier(MLP())
    model.to_device('@cupy:0')
    optimizer = getattr(chainer.optimizers, optimizer_name)().setup(model)
    return model, optimizer


def _per_step(deltas):
    calls = [sum(v for k, v in d.items() if k.startswith('call:')) for d in deltas]
    syncs = [sum(v for k, v in d.items() if k.startswith('sync:')) for d in deltas]
    h2d = [sum(v for k, v in d.items() if k.startswith('h2d:')) for d in deltas]
    return calls, syncs, h2d


def count_steps(steps, batchsize, optimizer_name):
    """optimizer.update(model, x, t) with the batch already on the device."""
    import onefchainer as chainer
    model, optimizer = _model(optimizer_name)
    x, t = _load_batches(steps + 2, batchsize)
    device = chainer.get_device('@cupy:0')
    deltas = []
    for i in range(steps + 2):
        xb, tb = device.send(x[i * batchsize:(i + 1) * batchsize]), \
            device.send(t[i * batchsize:(i + 1) * batchsize])
        before = COUNTS.copy()
        optimizer.update(model, xb, tb)
        deltas.append(COUNTS - before)
    return deltas[2:], model     # the first steps also create the optimizer state


def count_trainer(iterations, batchsize, optimizer_name):
    """Trainer + StandardUpdater(device=0) + LogReport/PrintReport/ProgressBar that
    fire only after the last iteration: returns the per-iteration deltas between
    triggers and the counts of the final (triggered) iteration's extensions."""
    import onefchainer as chainer
    from onefchainer.training import extensions
    model, optimizer = _model(optimizer_name)
    x, t = _load_batches(iterations, batchsize)
    train = chainer.datasets.TupleDataset(x, t)
    iterator = chainer.iterators.SerialIterator(train, batchsize, shuffle=False)
    updater = chainer.training.StandardUpdater(iterator, optimizer, device=0)
    out = tempfile.mkdtemp(prefix='count_gpu_calls_')
    trainer = chainer.training.Trainer(updater, (iterations, 'iteration'), out=out)
    snapshots = []
    # Runs first after each update: the counts between two of its calls are one
    # update plus the previous iteration's extensions.
    trainer.extend(lambda trainer: snapshots.append(COUNTS.copy()), name='recorder',
                   trigger=(1, 'iteration'), priority=10 ** 6)
    trainer.extend(extensions.LogReport(trigger=(iterations, 'iteration')))
    trainer.extend(extensions.PrintReport(['epoch', 'iteration', 'main/loss', 'main/accuracy']),
                   trigger=(1, 'iteration'))
    trainer.extend(extensions.ProgressBar(update_interval=5, out=io.StringIO()))
    saved_stdout, sys.stdout = sys.stdout, io.StringIO()   # PrintReport's table
    try:
        trainer.run()
    finally:
        printed, sys.stdout = sys.stdout.getvalue(), saved_stdout
    at_trigger = COUNTS - snapshots[-1]
    deltas = [b - a for a, b in zip(snapshots, snapshots[1:])]
    return deltas[2:], at_trigger, printed


OPTIMIZER_CASES = [          # (name, keyword arguments): every fused kernel and branch
    ('SGD', {'lr': 0.1}), ('MomentumSGD', {'lr': 0.1, 'momentum': 0.8}),
    ('AdaGrad', {'lr': 0.05}), ('AdaDelta', {}), ('RMSprop', {'lr': 0.01}),
    ('RMSprop', {'lr': 0.01, 'eps_inside_sqrt': True}), ('Adam', {}),
    ('Adam', {'amsgrad': True, 'eta': 0.5, 'weight_decay_rate': 0.1}),
    ('NesterovAG', {'lr': 0.1, 'momentum': 0.8}), ('CorrectedMomentumSGD', {'lr': 0.1}),
    ('RMSpropGraves', {'lr': 0.01}), ('SMORMS3', {'lr': 0.01}),
    ('AdaBound', {'alpha': 0.01, 'final_lr': 0.05, 'gamma': 0.1}),
    ('AMSBound', {'alpha': 0.01, 'final_lr': 0.05, 'gamma': 0.1, 'eta': 0.5}),
    ('MSVAG', {'lr': 0.01}), ('MSVAG', {'lr': 0.01, 'beta': 0.5, 'eta': 0.5,
                                        'weight_decay_rate': 0.1})]


ALL_OPTIMIZERS = ('SGD', 'MomentumSGD', 'AdaGrad', 'AdaDelta', 'RMSprop', 'Adam', 'NesterovAG',
                  'CorrectedMomentumSGD', 'RMSpropGraves', 'SMORMS3', 'AdaBound', 'AMSBound',
                  'MSVAG')


def run_optimizer(name, kwargs, device, steps=5, dtype=np.float32):
    """Parameters after `steps` updates of optimizers.<name>(**kwargs) on `device`,
    from fixed data and gradients; returns them as NumPy arrays."""
    import onefchainer as chainer
    rng = np.random.RandomState(0)
    link = chainer.Link()
    # Parameters as small as the steps, so that a step rounded differently
    # shows in the result (added to values near 1 it would mostly vanish).
    with link.init_scope():
        link.W = chainer.Parameter(rng.uniform(-1e-3, 1e-3, (64, 33)).astype(dtype))
        link.b = chainer.Parameter(rng.uniform(-1e-3, 1e-3, (33,)).astype(dtype))
    link.to_device(device)
    optimizer = getattr(chainer.optimizers, name)(**kwargs).setup(link)
    for _ in range(steps):
        for param in link.params():
            param.grad = chainer.get_device(device).send(
                rng.uniform(-1, 1, param.shape).astype(dtype))
        optimizer.update()
    return [chainer.cuda.to_cpu(param.data) for param in link.params()]


def compare_optimizers():
    """For each case: the largest |GPU path - CPU path| over the parameters."""
    result = {}
    for name, kwargs in OPTIMIZER_CASES:
        for dtype in (np.float32, np.float64):
            cpu = run_optimizer(name, kwargs, '@numpy', dtype=dtype)
            gpu = run_optimizer(name, kwargs, '@cupy:0', dtype=dtype)
            key = '{}{} {}'.format(name, kwargs or '', np.dtype(dtype).name)
            result[key] = max(float(np.max(np.abs(a - b))) for a, b in zip(cpu, gpu))
    result['kernels'] = sorted(k.split('.', 1)[1] for k in COUNTS
                               if k.startswith('call:ElementwiseKernel.onefchainer_'))
    return result


def main():
    if sys.argv[1:2] == ['--pytest']:      # the suite on the stand-in, as on a GPU
        os.environ['ONEFCHAINER_TEST_DEVICE'] = '@cupy:0'
        install()
        import pytest
        sys.exit(pytest.main(['-p', 'no:cacheprovider'] + sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--batchsize', '-b', type=int, default=100)
    parser.add_argument('--optimizer', default='Adam',
                        help="an optimizer's name, or 'all': syncs per step of each (JSON)")
    parser.add_argument('--trainer', type=int, default=0, metavar='N',
                        help='instead: N iterations through the Trainer with extensions')
    parser.add_argument('--compare-optimizers', action='store_true',
                        help='instead: each fused update rule against the CPU path (JSON)')
    parser.add_argument('--json', action='store_true', help='print one JSON line')
    parser.add_argument('--top', type=int, default=15, help='most frequent calls to list')
    args = parser.parse_args()
    install()
    sys.path.insert(0, os.path.dirname(HERE))
    import onefchainer
    assert onefchainer.cupy is sys.modules['cupy'], 'onefchainer did not pick up the stand-in'

    if args.compare_optimizers:
        print(json.dumps(compare_optimizers()))
        return
    if args.optimizer == 'all':
        print(json.dumps({name: _per_step(count_steps(args.steps, args.batchsize, name)[0])
                          for name in ALL_OPTIMIZERS}))
        return
    at_trigger, printed = collections.Counter(), ''
    if args.trainer:
        deltas, at_trigger, printed = count_trainer(args.trainer, args.batchsize, args.optimizer)
    else:
        deltas, _ = count_steps(args.steps, args.batchsize, args.optimizer)
    calls, syncs, h2d = _per_step(deltas)
    names = collections.Counter()
    for d in deltas:
        names.update(d)
    result = {'steps': len(deltas), 'calls_per_step': calls, 'syncs_per_step': syncs,
              'h2d_per_step': h2d,
              'syncs': sorted(k for k in names if k.startswith('sync:')),
              'syncs_at_trigger': sum(v for k, v in at_trigger.items() if k.startswith('sync:')),
              'printed_rows': printed.count('\n') - 1 if printed else 0,
              'compiled': sorted(COMPILED)}
    if args.json:
        print(json.dumps(result))
        return
    print('MNIST MLP 784-1000-1000-10, {}, batch {}, through the CuPy stand-in{}'.format(
        args.optimizer, args.batchsize,
        ', Trainer with LogReport/PrintReport/ProgressBar' if args.trainer else ''))
    print('  array-module calls per step: {}'.format(calls))
    print('  host syncs per step:         {}   {}'.format(syncs, result['syncs'] or ''))
    print('  host-to-device copies/step:  {}'.format(h2d))
    if args.trainer:
        print('  host syncs when LogReport fires: {}'.format(result['syncs_at_trigger']))
    print('  most frequent calls per step:')
    for name, n in names.most_common(args.top):
        print('    {:6.1f}  {}'.format(n / len(deltas), name))


if __name__ == '__main__':
    main()
