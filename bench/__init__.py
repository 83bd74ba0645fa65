"""seqserve's benchmark: the server under load beside the in-process ceiling and the unbatched floor.

`seqserve bench` builds the reference model, starts seqserve (and the floor,
the same server with `max_batch_size=1`) on 127.0.0.1, drives both with its
own load generator and measures the ceiling in a separate process; then it
writes JSON, a markdown table and plots (`bench.report`).
"""
