"""numba kernels. Everything here is compiled with ``cache=True``; each kernel has a
plain-numpy twin in :mod:`cpullm.reference` that the tests compare against."""
