"""What this machine runs fast, asked by the search, training and the reports alike.

``policy``: precision, memory format, threads and the process group; ``timing``: latency measured so that
pruned-vs-dense comparisons are fair; ``allocator``: freed memory kept, so that forwards do not page-fault afresh.
"""
