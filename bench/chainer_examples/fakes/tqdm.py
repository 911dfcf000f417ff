"""Stand-in for tqdm (not installed): tqdm(iterable) just iterates."""
def tqdm(iterable=None, *a, **k):
    return iterable
