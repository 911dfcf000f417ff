"""The distribution cases that make_misc_fixture.py runs on Chainer 7.8.1 and
test_onefchainer.py runs on onefchainer: the same program for both, given
the framework's `chainer`, `D` (distributions) and `F` (functions) modules.

run_cases(chainer, D, F) returns {name: array} of each case's parameters,
its outputs (log_prob, entropy, kl_divergence, a seeded sample, ...) and the
gradients of one scalar made of all of them w.r.t. the parameters.
"""
import numpy as np


def _params(rng):
    f32 = np.float32
    positive = lambda *shape: rng.uniform(0.5, 2.0, shape).astype(f32)   # noqa: E731
    lower = np.tril(rng.uniform(-0.5, 0.5, (2, 3, 3))) + 2 * np.eye(3)
    return {
        'normal': dict(loc=rng.randn(3, 4).astype(f32), log_scale=rng.randn(3, 4).astype(f32) * .3,
                       loc2=rng.randn(3, 4).astype(f32), scale2=positive(3, 4),
                       x=rng.randn(2, 3, 4).astype(f32), u=rng.uniform(.01, .99, (2, 3, 4)).astype(f32)),
        'bernoulli': dict(logit=rng.randn(3, 4).astype(f32) * 2, p2=rng.uniform(.1, .9, (3, 4)).astype(f32),
                          x=rng.randint(0, 2, (2, 3, 4)).astype(f32),
                          x_bad=np.array([[0, 1, .5, .25]] * 3, f32)),
        'categorical': dict(logit=rng.randn(3, 5).astype(f32), p2=rng.dirichlet(np.ones(5), 3).astype(f32),
                            x=rng.randint(0, 5, (2, 3)).astype(np.int32)),
        'uniform': dict(low=rng.uniform(-1, 0, (3,)).astype(f32), high=rng.uniform(1, 2, (3,)).astype(f32),
                        x=rng.uniform(0, 1, (2, 3)).astype(f32), u=rng.uniform(0, 1, (2, 3)).astype(f32)),
        'laplace': dict(loc=rng.randn(3).astype(f32), scale=positive(3), loc2=rng.randn(3).astype(f32),
                        scale2=positive(3), x=rng.randn(2, 3).astype(f32),
                        u=rng.uniform(0.05, .95, (2, 3)).astype(f32)),
        'lognormal': dict(mu=rng.randn(3).astype(f32) * .5, sigma=positive(3), mu2=rng.randn(3).astype(f32),
                          sigma2=positive(3), x=positive(2, 3)),
        'gamma': dict(k=positive(3), theta=positive(3), k2=positive(3), theta2=positive(3), x=positive(2, 3)),
        'beta': dict(a=positive(3), b=positive(3), a2=positive(3), b2=positive(3),
                     x=rng.uniform(.1, .9, (2, 3)).astype(f32)),
        'exponential': dict(lam=positive(3), lam2=positive(3), x=positive(2, 3),
                            u=rng.uniform(.1, .9, (2, 3)).astype(f32)),
        'gumbel': dict(loc=rng.randn(3).astype(f32), scale=positive(3), loc2=rng.randn(3).astype(f32),
                       scale2=positive(3), x=rng.randn(2, 3).astype(f32)),
        'cauchy': dict(loc=rng.randn(3).astype(f32), scale=positive(3), x=rng.randn(2, 3).astype(f32),
                       u=rng.uniform(.1, .9, (2, 3)).astype(f32)),
        'pareto': dict(scale=positive(3), alpha=positive(3) + 1.5, scale2=positive(3) * .3,
                       alpha2=positive(3), x=positive(2, 3) + 2),
        'chisquare': dict(k=positive(3) * 3, x=positive(2, 3)),
        'poisson': dict(lam=positive(3), lam2=positive(3), x=rng.randint(0, 5, (2, 3)).astype(f32)),
        'geometric': dict(p=rng.uniform(.2, .8, (3,)).astype(f32), p2=rng.uniform(.2, .8, (3,)).astype(f32),
                          x=rng.randint(1, 5, (2, 3)).astype(f32)),
        'dirichlet': dict(alpha=positive(2, 4), alpha2=positive(2, 4),
                          x=rng.dirichlet(np.ones(4), (3, 2)).astype(f32)),
        'onehot': dict(p=rng.dirichlet(np.ones(4), 3).astype(f32), p2=rng.dirichlet(np.ones(4), 3).astype(f32),
                       x=np.eye(4, dtype=f32)[rng.randint(0, 4, (2, 3))]),
        'mvn': dict(loc=rng.randn(2, 3).astype(f32), scale_tril=lower.astype(f32),
                    loc2=rng.randn(2, 3).astype(f32), scale_tril2=(lower[::-1] * 1.2).astype(f32),
                    x=rng.randn(4, 2, 3).astype(f32)),
    }


def _build(name, v, D):
    if name == 'normal':
        return D.Normal(v['loc'], log_scale=v['log_scale']), D.Normal(v['loc2'], scale=v['scale2'])
    if name == 'bernoulli':
        return D.Bernoulli(logit=v['logit']), D.Bernoulli(p=v['p2'])
    if name == 'categorical':
        return D.Categorical(logit=v['logit']), D.Categorical(v['p2'])
    if name == 'uniform':
        return D.Uniform(low=v['low'], high=v['high']), D.Uniform(low=v['low'] - 1, high=v['high'] * 2)
    if name == 'laplace':
        return D.Laplace(v['loc'], v['scale']), D.Laplace(v['loc2'], v['scale2'])
    if name == 'lognormal':
        return D.LogNormal(v['mu'], v['sigma']), D.LogNormal(v['mu2'], v['sigma2'])
    if name == 'gamma':
        return D.Gamma(v['k'], v['theta']), D.Gamma(v['k2'], v['theta2'])
    if name == 'beta':
        return D.Beta(v['a'], v['b']), D.Beta(v['a2'], v['b2'])
    if name == 'exponential':
        return D.Exponential(v['lam']), D.Exponential(v['lam2'])
    if name == 'gumbel':
        return D.Gumbel(v['loc'], v['scale']), D.Gumbel(v['loc2'], v['scale2'])
    if name == 'cauchy':
        return D.Cauchy(v['loc'], v['scale']), None
    if name == 'pareto':
        return D.Pareto(v['scale'], v['alpha']), D.Pareto(v['scale2'], v['alpha2'])
    if name == 'chisquare':
        return D.Chisquare(v['k']), None
    if name == 'poisson':
        return D.Poisson(v['lam']), D.Poisson(v['lam2'])
    if name == 'geometric':
        return D.Geometric(v['p']), D.Geometric(v['p2'])
    if name == 'dirichlet':
        return D.Dirichlet(v['alpha']), D.Dirichlet(v['alpha2'])
    if name == 'onehot':
        return D.OneHotCategorical(v['p']), D.OneHotCategorical(v['p2'])
    return (D.MultivariateNormal(v['loc'], scale_tril=v['scale_tril']),
            D.MultivariateNormal(v['loc2'], scale_tril=v['scale_tril2']))


OUTPUTS = {      # what each case computes, beyond log_prob, entropy, kl and a sample
    'normal': 'mean stddev variance prob cdf icdf log_cdf survival_function '
              'log_survival_function',
    'bernoulli': 'mean stddev variance prob',
    'categorical': 'p',
    'uniform': 'mean stddev variance cdf icdf',
    'laplace': 'mean stddev variance prob cdf icdf',
    'lognormal': 'mean variance',
    'gamma': 'mean variance',
    'beta': 'mean variance',
    'mvn': 'covariance',
    'exponential': 'mean variance cdf icdf',
    'gumbel': 'mean variance',
    'cauchy': 'cdf icdf',
    'pareto': 'mean variance',
    'chisquare': 'mean variance',
    'poisson': 'mean variance',
    'geometric': 'mean variance',
    'dirichlet': 'mean variance',
    'onehot': 'mean variance',
}
NO_ENTROPY = {'poisson', 'geometric', 'onehot'}      # Chainer 7.8.1 gives none for these
ONE_POINT = {'prob', 'cdf', 'icdf', 'log_cdf', 'survival_function', 'log_survival_function'}


def run_cases(chainer, D, F):
    rng = np.random.RandomState(7813)
    out = {}
    for name, arrays in sorted(_params(rng).items()):
        v = {key: (chainer.Variable(a.copy()) if a.dtype.kind == 'f' and key not in ('x', 'u', 'x_bad')
                   else a) for key, a in arrays.items()}
        p, q = _build(name, v, D)
        results = {'log_prob': p.log_prob(v['x'])}
        if name not in NO_ENTROPY:
            results['entropy'] = p.entropy
        if q is not None:
            results['kl'] = chainer.kl_divergence(p, q)
        np.random.seed(5)
        results['sample'] = p.sample((2,))
        for what in OUTPUTS[name].split():
            point = v['u'] if what == 'icdf' else v['x']
            results[what] = getattr(p, what)(point) if what in ONE_POINT else getattr(p, what)
        if name == 'normal':      # Independent: the last batch axis made an event axis
            ip, iq = D.Independent(p, 1), D.Independent(q)
            results.update(ind_log_prob=ip.log_prob(v['x']), ind_entropy=ip.entropy,
                           ind_kl=chainer.kl_divergence(ip, iq), ind_prob=ip.prob(v['x']),
                           ind_sample=ip.sample(3))
            out['normal/shapes'] = np.array(ip.batch_shape + (-1,) + ip.event_shape)
        if name == 'bernoulli':
            checked = D.Bernoulli(logit=v['logit'], binary_check=True)
            results.update(checked_log_prob=checked.log_prob(v['x_bad']),
                           checked_prob=checked.prob(v['x_bad']))
        loss = 0
        for i, (what, y) in enumerate(sorted(results.items())):
            y = chainer.as_variable(y)
            out['{}/{}'.format(name, what)] = np.asarray(y.array)
            if y.dtype.kind == 'f' and np.isfinite(y.array).all() and y.creator is not None:
                loss = loss + F.sum(y) * (1.0 / (i + 1))
        loss.backward()
        for key, a in sorted(v.items()):
            if isinstance(a, chainer.Variable):
                out['{}/grad_{}'.format(name, key)] = a.grad
            out['{}/{}'.format(name, key)] = np.asarray(getattr(a, 'array', a))
    return out
