"""seqserve's online side: load a model repository and serve it over HTTP.

Nothing here imports `models/`: the server reads only the repository on disk.
"""

__version__ = "0.1.0"
