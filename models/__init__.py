"""seqserve's offline side: length-aware sequence models, training, export and parity.

Everything here needs torch; the server (``service/``) never imports this package.
"""
