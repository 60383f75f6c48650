"""One exception family for user-facing problems; the CLI prints its message and exits 2."""


class FlmplanError(ValueError):
    """Bad input or an impossible request, said in one plain sentence."""


class InvalidLayout(FlmplanError):
    """A parallel layout that cannot work for this model and cluster."""


class Infeasible(FlmplanError):
    """A valid layout that does not fit (memory) or a request nothing can satisfy."""
