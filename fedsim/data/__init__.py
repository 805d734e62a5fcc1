"""Data sets, client partitions and the private-batch oracle.

`datasets` and `partition` are public facts of an experiment; `batches` re-derives the
private batches that clients trained on, so only the evaluator (and the clients) use it.
"""

from fedsim.data.datasets import Dataset, load_dataset
from fedsim.data.partition import partition_indices

__all__ = ["Dataset", "load_dataset", "partition_indices"]
