# Stubs of the compiled module shardflow._partition (see ext/shardflow/_partition.pyx):
# the partition kernel of columnar batches (key hash -> shard, stable counting-sort
# scatter), over the buffer protocol only.
from collections.abc import Sequence

from typing_extensions import Buffer

MAX_SHARDS: int

def shard_of(keys: Buffer, nshards: int) -> memoryview: ...
def partition(
    keys: Buffer,
    nshards: int,
    columns: Sequence[Buffer] = (),
    outs: Sequence[Buffer | None] | None = None,
    order: bool | Buffer = False,
) -> tuple[memoryview, Buffer | None, list[Buffer]]: ...
