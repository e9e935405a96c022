"""Training as an operator runs it: odd data sizes for the worker count, existing output folders."""

from __future__ import annotations

from dermground.train.loop import batch_share, epoch_order


def test_every_worker_gets_a_share_of_a_batch_smaller_than_the_worker_count():
    """5 tuples, batch 4, 2 workers: the epoch's last batch holds one tuple. A worker with nothing
    to run never joins DDP's gradient all-reduce and the run hung there (test_train_ray.py's DDP
    test trains exactly that tail)."""
    order = epoch_order(5, seed=0, epoch=0)
    full = [batch_share(order, 0, 4, rank, 2) for rank in range(2)]
    assert full == [order[0:4][0::2], order[0:4][1::2]]  # a full batch is split as it always was
    tail = [batch_share(order, 1, 4, rank, 2) for rank in range(2)]
    assert tail[0] == [order[4]] and tail[1] == [order[0]]  # topped up with the epoch's first tuple
    one = epoch_order(1, seed=0, epoch=0)  # a data set smaller than the worker count
    assert [batch_share(one, 0, 4, rank, 3) for rank in range(3)] == [[0], [0], [0]]
