"""Stand-in for IPython, so that notebooks run as scripts: display() prints, Image() is a no-op."""


def get_ipython():
    return None       # not inside an IPython kernel
