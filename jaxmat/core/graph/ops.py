"""Device-side helpers on batches: edge and pair vectors, convolution, sums over graphs,
dense chunks. Every helper accepts both layouts."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jraph

Batch = jraph.GraphsTuple


def safe_norm(x: jax.Array, axis: int = -1, keepdims: bool = False) -> jax.Array:
    """Euclidean norm whose gradient is finite (zero) at x = 0."""
    sq = jnp.sum(x * x, axis=axis, keepdims=keepdims)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def is_dense(batch: Batch) -> bool:
    """True for the dense layout (a static property: the key ``globals["dense"]``)."""
    return isinstance(batch.globals, dict) and "dense" in batch.globals


def _dense_dims(batch: Batch) -> tuple[int, int, int]:
    G = n_graphs(batch)
    n = n_nodes(batch) // G
    return G, n, n // 2


def _rolled(x: jax.Array, K: int) -> jax.Array:
    """(G, n, ...) -> (G, n, K, ...) with ``out[:, a, k-1] = x[:, (a + k) % n]``."""
    n = x.shape[1]
    if K == 0:
        return jnp.zeros(x.shape[:2] + (0,) + x.shape[2:], x.dtype)
    xx = jnp.concatenate([x, x[:, :K]], axis=1)
    return jnp.stack([xx[:, k:k + n] for k in range(1, K + 1)], axis=2)


def edge_vectors(batch: Batch) -> jax.Array:
    """Edge vectors R[j] - R[i] + shift @ cell (Å), shape (E, 3), j = sender, i = receiver."""
    pos = batch.nodes["positions"]
    if is_dense(batch):
        G, n, K = _dense_dims(batch)
        p = pos.reshape(G, n, 3)
        return (_rolled(p, K) - p[:, :, None, :]).reshape(-1, 3)
    return _vectors(batch, batch.senders, batch.receivers, batch.edges["shifts"])


def _vectors(batch: Batch, senders: jax.Array, receivers: jax.Array,
             shifts: jax.Array) -> jax.Array:
    """R[senders] - R[receivers] + shifts @ cell of the receiver's graph (Å)."""
    pos = batch.nodes["positions"]
    cell = batch.globals["cell"][batch.nodes["graph"][receivers]]
    return pos[senders] - pos[receivers] + jnp.einsum("ek,ekl->el", shifts, cell)


class Pairs(NamedTuple):
    """Each unordered neighbour pair of a batch once (see :func:`pair_list`): ``receivers``
    i, ``senders`` j (P,), integer cell ``shifts`` (P, 3) and ``mask`` (P,)."""

    senders: jax.Array
    receivers: jax.Array
    shifts: jax.Array
    mask: jax.Array


def pair_list(batch: Batch) -> Pairs:
    """The unordered pairs of a batch, for models whose edge weights are the same in both
    directions (functions of the distance: SchNet's filters).

    Dense: the pair slots. Sparse: the edge list is symmetric (every edge ``(i, j, s)`` has
    its reverse ``(j, i, -s)``, as every cutoff list; :func:`batch` checks it), and the
    direction kept is ``i < j``, or for an atom and its own image the one whose first
    non-zero shift component is positive. ``P = ceil(E / 2)``; slots past the pairs are
    masked copies of the last edge. Use with :func:`pair_vectors` and ``convolve(...,
    pairs=)``: half the per-edge work of the directed list.
    """
    if is_dense(batch):
        return Pairs(batch.senders, batch.receivers, batch.edges["shifts"], batch.edges["mask"])
    s, r, sh = batch.senders, batch.receivers, batch.edges["shifts"]
    E = s.shape[0]
    first = jnp.where(sh[:, 0] != 0, sh[:, 0], jnp.where(sh[:, 1] != 0, sh[:, 1], sh[:, 2]))
    keep = batch.edges["mask"] & ((r < s) | ((r == s) & (first > 0)))
    P = (E + 1) // 2
    idx = jnp.nonzero(keep, size=P, fill_value=E - 1)[0]
    mask = jnp.arange(P) < jnp.sum(keep)
    return Pairs(s[idx], r[idx], sh[idx], mask)


def pair_vectors(batch: Batch, pairs: Pairs) -> jax.Array:
    """Vectors R[j] - R[i] + shift @ cell (Å), shape (P, 3), of :func:`pair_list`'s pairs."""
    if is_dense(batch):
        return edge_vectors(batch)
    return _vectors(batch, pairs.senders, pairs.receivers, pairs.shifts)


def convolve(h: jax.Array, w: jax.Array, batch: Batch, pairs: Pairs | None = None) -> jax.Array:
    """Continuous-filter convolution ``out_i = sum_{j in N(i)} w_ij * h_j``.

    ``h`` (N, F) node features, ``w`` edge weights that are the same for both directions
    of a pair (a function of the distance, as SchNet's filters), zero on masked edges:
    (E, F) on the batch's edges, or (P, F) on ``pairs`` (:func:`pair_list`), each of which
    sends ``h_j`` to ``i`` and ``h_i`` to ``j``. Sparse: gathers + ``segment_sum``; dense
    (where the pairs are the edges): rolls of the atom blocks.
    """
    if not is_dense(batch):
        n = h.shape[0]
        if pairs is None:
            return jax.ops.segment_sum(h[batch.senders] * w, batch.receivers, n)
        return (jax.ops.segment_sum(h[pairs.senders] * w, pairs.receivers, n)
                + jax.ops.segment_sum(h[pairs.receivers] * w, pairs.senders, n))
    G, n, K = _dense_dims(batch)
    F = h.shape[1:]
    h3 = h.reshape(G, n, *F)
    if K == 0:
        return jnp.zeros_like(h)
    w4 = w.reshape(G, n, K, *F)
    out = jnp.sum(_rolled(h3, K) * w4, axis=2)  # i <- j = i + k
    # messages from i to j = i + k, stored at slot (i, k); split (whose transpose is a
    # concatenation) rather than K slices (whose transposes are K full-size pads)
    back = jnp.split(h3[:, :, None] * w4, K, axis=2)
    for k in range(1, K + 1):
        out = out + jnp.roll(back[k - 1][:, :, 0], k, axis=1)
    return out.reshape(h.shape)


def n_graphs(batch: Batch) -> int:
    return batch.n_node.shape[0]


def n_nodes(batch: Batch) -> int:
    return batch.nodes["species"].shape[0]


def graph_sum(x: jax.Array, batch: Batch) -> jax.Array:
    """Sum per-node values into their graphs (padding nodes must already be zero)."""
    if is_dense(batch):
        G = n_graphs(batch)
        return x.reshape(G, -1, *x.shape[1:]).sum(axis=1)
    return jax.ops.segment_sum(x, batch.nodes["graph"], n_graphs(batch))


def to_device(b: Batch) -> Batch:
    return jax.tree_util.tree_map(jnp.asarray, b)


# --------------------------------------------------------------------------- dense chunks
def dense_chunks(batch: Batch, max_slots: int = 2048) -> int:
    """Number of equal chunks of graphs to process a dense batch in, so that each chunk
    has at most ``max_slots`` pair slots (its edge arrays stay in cache); 1 for sparse
    batches, small batches, or when the graph count has no fitting divisor."""
    if not is_dense(batch):
        return 1
    G = n_graphs(batch)
    per_graph = max(batch.senders.shape[0] // G, 1)
    bound = max_slots // per_graph
    if bound >= G:
        return 1
    size = max((d for d in range(1, bound + 1) if G % d == 0), default=1)
    return G // size if 4 * size >= bound and size > 0 else 1


def split_dense(batch: Batch, n_chunks: int) -> Batch:
    """A dense batch as ``n_chunks`` stacked dense batches of ``G / n_chunks`` graphs
    (a leading chunk axis on every leaf); :func:`merge_chunks` undoes it for outputs."""
    if not is_dense(batch):
        raise ValueError("split_dense needs a dense batch")
    G = n_graphs(batch)
    if n_chunks < 1 or G % n_chunks:
        raise ValueError(f"cannot split {G} graphs into {n_chunks} equal chunks")
    n_local = n_nodes(batch) // n_chunks

    def r(x):
        return x.reshape(n_chunks, x.shape[0] // n_chunks, *x.shape[1:])

    return batch._replace(
        nodes={k: r(v) for k, v in batch.nodes.items()},
        edges={k: r(v) for k, v in batch.edges.items()},
        globals={k: r(v) for k, v in batch.globals.items()},
        senders=r(batch.senders) % n_local, receivers=r(batch.receivers) % n_local,
        n_node=r(batch.n_node), n_edge=r(batch.n_edge))


def merge_chunks(tree: Any) -> Any:
    """Per-chunk outputs (leading chunk axis) -> outputs of the whole dense batch."""
    return jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), tree)
