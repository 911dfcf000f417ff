"""The TabularDataset cases that make_tabular_fixture.py runs on Chainer 7.8.1
and test_onefchainer.py runs on onefchainer: one program for both, given the
framework's `dataset` module (chainer.dataset) and its `tabular` package.

run_tabular_cases(dataset, tabular) returns {case name: value}, each value
made JSON-plain by `plain` (tuples, lists, dicts, arrays with their dtype,
NumPy scalars, the name of an exception raised), so the two can be compared
with ==.
"""
import re

import numpy as np


def plain(value):
    """`value` as JSON-plain data that still tells a tuple from a list, an
    array from a list, and a NumPy scalar from a Python number."""
    if isinstance(value, tuple):
        return {'tuple': [plain(v) for v in value]}
    if isinstance(value, list):
        return {'list': [plain(v) for v in value]}
    if isinstance(value, dict):
        return {'dict': {str(k): plain(v) for k, v in sorted(value.items())}}
    if isinstance(value, np.ndarray):
        return {'array': value.tolist(), 'dtype': str(value.dtype), 'shape': list(value.shape)}
    if isinstance(value, np.generic):
        return {'scalar': value.item(), 'dtype': str(value.dtype)}
    if value in (tuple, dict):
        return value.__name__
    if isinstance(value, str) and re.fullmatch(r'_[0-9]+', value):
        return '_<id>'                # an unnamed column's key: '_' + id(data)
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return repr(type(value))


def _attempt(function):
    try:
        return plain(function())
    except Exception as error:        # the exception's type is the result
        return {'error': type(error).__name__}


def run_tabular_cases(dataset, tabular):
    cases = {}

    class Table(dataset.TabularDataset):
        """A user's subclass, as Chainer's documentation writes one."""

        def __len__(self):
            return 6

        @property
        def keys(self):
            return ('a', 'b', 'c')

        @property
        def mode(self):
            return tuple

        def get_examples(self, indices, key_indices):
            data = np.arange(18).reshape(6, 3)
            if indices is not None:
                data = data[indices]
            if key_indices is not None:
                data = data[:, list(key_indices)]
            return tuple(data.T)

    def describe(name, table, rows=True):
        # Rows only inside the view: Chainer 7.8.1 does not check a view's
        # bounds (table.slice[:2][5] gives a row of table) and reads a
        # negative index of a view in its base; onefchainer raises IndexError
        # and counts from the view's end (its own test checks both).
        size = len(table)
        cases[name + '/len'] = _attempt(lambda: len(table))
        cases[name + '/keys'] = _attempt(lambda: table.keys)
        cases[name + '/mode'] = _attempt(lambda: table.mode)
        cases[name + '/fetch'] = _attempt(table.fetch)
        if size:    # Chainer's convert fails on an empty column (IndexError)
            cases[name + '/convert'] = _attempt(lambda: table.convert(table.fetch()))
        if rows and size:
            cases[name + '/rows'] = _attempt(lambda: list(table))
            cases[name + '/get_last'] = _attempt(lambda: table[size - 1])
            cases[name + '/slice_items'] = _attempt(lambda: table[1:4])
            cases[name + '/list_items'] = _attempt(lambda: table[[size - 1, 0, size - 1]])

    table = Table()
    describe('table', table)
    describe('astuple', table.astuple())
    describe('asdict', table.asdict())
    # slices: rows as slices, ints, negative ints, masks; columns by name and position
    for name, rows in (('all', slice(None)), ('step', slice(1, None, 2)),
                       ('reverse', slice(None, None, -1)), ('rev_step', slice(4, 0, -2)),
                       ('empty', slice(3, 3)), ('beyond', slice(2, 100)),
                       ('ints', [4, 0, 4]), ('negative', [-1, -6]), ('array', np.array([3, 1])),
                       ('mask', [True, False, True, False, False, True]),
                       ('np_mask', np.array([False] * 5 + [True])), ('none', [])):
        describe('slice_' + name, table.slice[rows])
        describe('slice_' + name + '_cols', table.slice[rows, ('c', 0)])
        describe('slice_' + name + '_one', table.slice[rows, 'b'])
        describe('slice_' + name + '_one_int', table.slice[rows, -1])
    describe('slice_dict', table.asdict().slice[::2, ('b', 'a')])
    describe('slice_one_of_dict', table.asdict().slice[:, 'c'])
    # slices of slices compose
    for name, outer, inner in (('ss', slice(1, 6), slice(None, None, 2)),
                               ('ss_rev', slice(None, None, -1), slice(1, 4)),
                               ('ss_revrev', slice(5, 0, -1), slice(None, None, -2)),
                               ('sl', slice(1, None, 2), [2, 0]),
                               ('ls', [5, 3, 1, 0], slice(1, 3)),
                               ('ll', [5, 3, 1], [2, 2, 0])):
        describe(name, table.slice[outer].slice[inner, ('b', 'a')].slice[:, (1,)])
        describe(name + '_full', table.slice[outer, ('c', 'a')].slice[inner])
    for name, bad in (('row', lambda: table.slice[[6]]), ('row_neg', lambda: table.slice[[-7]]),
                      ('mask_len', lambda: table.slice[[True, False]]),
                      ('key', lambda: table.slice[:, ('z',)]),
                      ('key_int', lambda: table.slice[:, (3,)]),
                      ('key_one', lambda: table.slice[:, 'z'])):
        cases['bad_slice/' + name] = _attempt(bad)

    # from_data in each of its forms
    a = np.arange(5, dtype=np.float32) * 1.5
    b = ['p', 'q', 'r', 's', 't']
    describe('from_array', tabular.from_data(a), rows=True)
    describe('from_list', tabular.from_data(b))
    describe('from_pair', tabular.from_data(('x', a)))
    describe('from_tuple', tabular.from_data((('x', a), ('y', b))))
    describe('from_tuple_unnamed', tabular.from_data((a, ('y', b))).slice[:, ('y',)])
    describe('from_dict', tabular.from_data({'x': a, 'y': b}))
    describe('from_callable', tabular.from_data(('sq', lambda i: i * i), size=4))
    describe('from_callables', tabular.from_data(
        (('v', lambda i: i + 10), (('p', 'q'), lambda i: (i, -i))), size=3))
    describe('from_mixed', tabular.from_data(
        (('x', a), ('name', lambda i: 'n{}'.format(i)), (('d', 'e'), lambda i: {'d': i, 'e': 2 * i}))))
    describe('from_dict_callable', tabular.from_data({'x': b, 'y': lambda i: i * 3}))
    cases['from/callable_no_size'] = _attempt(lambda: tabular.from_data(('k', lambda i: i)))
    cases['from/callable_no_key'] = _attempt(lambda: tabular.from_data((a, lambda i: i)))

    # concat: along rows, with slices and lists crossing the boundaries.  (Not
    # a step below -1 across a boundary: Chainer 7.8.1 gives wrong rows, e.g.
    # rows 8, 7, 4, 1 for slice(8, 0, -3); onefchainer's own test checks it.)
    first = tabular.from_data((('x', a), ('y', b)))
    second = tabular.from_data((('x', np.arange(3, dtype=np.float32)), ('y', ['u', 'v', 'w'])))
    third = tabular.from_data((('x', np.array([9.], np.float32)), ('y', ['z'])))
    joined_rows = first.concat(second, third)
    describe('concat', joined_rows)
    for name, rows in (('step', slice(1, None, 3)), ('reverse', slice(None, None, -1)),
                       ('inside_first', slice(1, 3)),
                       ('inside_second', slice(5, 7)), ('empty', slice(4, 4)),
                       ('ints', [8, 0, 5, 4, 6]), ('one_part', [6, 5]), ('none', [])):
        describe('concat_' + name, joined_rows.slice[rows])
        describe('concat_' + name + '_y', joined_rows.slice[rows, 'y'])
    describe('concat_dict', first.asdict().concat(second))
    cases['bad/concat_keys'] = _attempt(lambda: first.concat(tabular.from_data(('x', a))))

    # join: along columns
    left = tabular.from_data({'x': a})
    right = tabular.from_data((('y', b), ('z', np.arange(5) * 2)))
    beside = left.join(right)
    describe('join', beside)
    describe('join_cols', beside.slice[:, ('z', 'x', 'z')])
    describe('join_rows', beside.slice[[4, 1], ('y', 'x')])
    describe('join_tuple_first', right.join(left))
    describe('join_unary', tabular.from_data(a).join(tabular.from_data(('w', b))))
    cases['bad/join_length'] = _attempt(lambda: left.join(tabular.from_data(('w', b[:3]))))
    cases['bad/join_keys'] = _attempt(lambda: left.join(tabular.from_data({'x': b})))

    # transform and transform_batch
    describe('transform_tuple', first.transform(('s', 't'), lambda x, y: (x * np.float32(2), y + '!')))
    describe('transform_dict', first.asdict().transform(
        ('s',), lambda x, y: {'s': '{}{}'.format(y, int(x))}))
    describe('transform_value', tabular.from_data(a).transform('h', lambda x: x / np.float32(2)))
    describe('transform_sliced', first.transform(('s', 't'), lambda x, y: (y, x)).slice[1:4, 't'])
    describe('transform_batch_tuple', first.transform_batch(
        ('s', 't'), lambda x, y: (np.asarray(x) + 1, [v.upper() for v in y])))
    describe('transform_batch_dict', first.asdict().transform_batch(
        ('u',), lambda x, y: {'u': np.asarray(x) * 10}))
    describe('transform_batch_value', tabular.from_data(b).transform_batch(
        'n', lambda y: [len(v) for v in y]))
    describe('transform_batch_sliced', first.transform_batch(
        ('s',), lambda x, y: np.asarray(x) - 1).slice[[4, 0]])
    flip = iter([(1,), 2, (3,)] * 10)
    changing = tabular.from_data(b).transform('c', lambda y: next(flip))
    cases['bad/transform_type'] = _attempt(lambda: changing.fetch())
    shrinking = first.transform_batch(('s',), lambda x, y: (x[:2],))
    cases['bad/transform_batch_length'] = _attempt(lambda: shrinking.fetch())

    # with_converter; the converter of the first dataset survives the views
    summed = first.with_converter(lambda x, y: (np.asarray(x).sum(), len(y)))
    describe('converter', summed)
    describe('converter_sliced', summed.slice[:2])
    describe('converter_concat', summed.concat(second))
    describe('converter_join', summed.join(tabular.from_data(('w', b))))
    describe('converter_dict', first.asdict().with_converter(lambda x, y: {'n': len(x)}))
    describe('converter_value', tabular.from_data(a).with_converter(lambda x: x.max()))

    # DelegateDataset, the documented way to write a table class
    class Delegating(tabular.DelegateDataset):
        def __init__(self):
            super().__init__(tabular.from_data((('a', np.arange(4)), ('b', self.get_b),
                                                (('d', 'e'), self.get_de))))

        def get_b(self, i):
            return 'b[{}]'.format(i)

        def get_de(self, i):
            return {'d': i * 2, 'e': 'e[{}]'.format(i)}

    describe('delegate', Delegating())
    describe('delegate_dict', Delegating().asdict().slice[2:, ('e', 'a')])
    return cases
