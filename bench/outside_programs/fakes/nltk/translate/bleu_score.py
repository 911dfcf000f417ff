"""corpus_bleu with NLTK's arguments: BLEU-4 with uniform weights, the brevity penalty, and
(smoothing function method1) epsilon for empty n-gram matches; enough for a harness score."""
import collections
import math


class SmoothingFunction(object):
    def __init__(self, epsilon=0.1):
        self.epsilon = epsilon

    def method1(self, p_n, *args, **kwargs):
        return [(num + self.epsilon) / den if num == 0 else num / den for num, den in p_n]


def corpus_bleu(list_of_references, hypotheses, weights=(0.25, 0.25, 0.25, 0.25),
                smoothing_function=None, **kwargs):
    num = [0] * len(weights)
    den = [0] * len(weights)
    hyp_len = ref_len = 0
    for refs, hyp in zip(list_of_references, hypotheses):
        hyp = list(hyp)
        hyp_len += len(hyp)
        ref_len += min((len(r) for r in refs), key=lambda n: (abs(n - len(hyp)), n))
        for n in range(1, len(weights) + 1):
            grams = collections.Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
            best = collections.Counter()
            for r in refs:
                r = list(r)
                best |= collections.Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
            num[n - 1] += sum(min(c, best[g]) for g, c in grams.items())
            den[n - 1] += max(1, sum(grams.values()))
    if hyp_len == 0:
        return 0.
    p = list(zip(num, den))
    if smoothing_function is not None:
        p = smoothing_function(p)
    else:
        p = [a / b for a, b in p]
    if min(p) <= 0:
        return 0.
    bp = 1. if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(sum(w * math.log(x) for w, x in zip(weights, p)))
