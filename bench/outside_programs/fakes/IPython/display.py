def display(*objs, **kwargs):
    for o in objs:
        print(o)


class Image(object):
    def __init__(self, *args, **kwargs):
        self.args = args
