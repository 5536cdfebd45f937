"""Atom graphs: validation, neighbour lists (cutoff, PBC), padded batches, masks.

Conventions (every model and tool relies on them):

* An edge ``e`` joins ``senders[e] = j`` to ``receivers[e] = i``; its vector
  points from atom ``i`` to the periodic image of ``j``::

      vec_e = R[j] - R[i] + shifts[e] @ cell[graph(e)]          (Å)

  ``shifts`` are integer cell offsets stored as floats, so the same batch
  serves for strain derivatives (stress).
* A batch is a :class:`jraph.GraphsTuple` padded to a fixed :class:`Budget`.
  The last graph is a padding graph that owns every padding node and edge;
  ``nodes["mask"]``, ``edges["mask"]`` and ``globals["mask"]`` are ``True`` for
  real entries. The padding graph has at least two nodes, ``PAD_DISTANCE`` apart, and
  padding edges join the last two (shift (1, 0, 0) in the padding graph's cell of
  ``PAD_DISTANCE`` · I), so no edge has zero length — also for a model that ignores the
  shifts and takes ``positions[senders] - positions[receivers]`` — and a plain
  ``jnp.linalg.norm`` of :func:`edge_vectors` has a finite gradient; padding atom slots of the dense layout
  sit ``PAD_DISTANCE`` apart on the x axis for the same reason. The padding graph's
  ``pbc`` is False, so it has no stress.
* ``nodes``: ``positions`` (N, 3) Å, ``species`` (N,) atomic numbers (0 for
  padding), ``graph`` (N,) graph index, ``mask``; optional ``forces`` (eV/Å).
  ``edges``: ``shifts`` (E, 3), ``mask``. ``globals``: ``cell`` (G, 3, 3) Å,
  ``pbc`` (G, 3), ``n_atoms`` (G,), ``mask``; optional ``energy`` (eV),
  ``stress`` (eV/Å³, ASE sign convention) and any other graph targets.

Two layouts share these names (``layout=`` in :func:`batch` and :class:`GraphLoader`):

* ``"sparse"`` (default): the padded edge list above, for any structure. Edge lists are
  symmetric (every edge ``(i, j, s)`` has its reverse ``(j, i, -s)``; :func:`batch` checks
  it), so a model whose edge weights are the same in both directions computes them once per
  pair (:func:`pair_list`).
* ``"dense"``: for small non-periodic molecules. Every graph owns a block of
  ``n_max`` atom slots (node ``g * n_max + a``; slots past the molecule's size are
  padding nodes with ``mask`` False, so there is no separate padding node) and
  ``K = n_max // 2`` pair slots per atom: slot ``(g, a, k)``, edge index
  ``(g * n_max + a) * K + (k - 1)``, joins receiver ``a`` to sender ``(a + k) % n_max``
  of the same block, for ``k = 1..K``. Each *unordered* pair appears exactly once
  (for even ``n_max`` the duplicated slots ``k = n_max/2, a >= n_max/2`` are masked),
  and ``edges["mask"]`` is True exactly for the pairs of the sparse neighbour list,
  so both layouts hold the same edges. Graph ``g``'s real atoms come first in
  its block; ``n_node[g] = n_max``, ``n_edge[g] = n_max * K``; graphs beyond the
  data are padding graphs (``globals["mask"]`` False). The layout is flagged by
  the key ``globals["dense"]`` ((G,) int32, = n_max); a key is static under ``jit``.
  Pair vectors, sums over graphs and the filter convolution become reshapes, rolls
  and broadcasts (no gather or scatter), and every pair's filter is computed once
  instead of once per direction. Use the helpers :func:`edge_vectors`,
  :func:`convolve` and :func:`graph_sum`, which accept both layouts; a model that
  indexes ``senders``/``receivers`` itself must only be given sparse batches.
  Molecules are independent, so a dense batch also splits into equal chunks of graphs
  (:func:`split_dense`, :func:`merge_chunks`); :func:`jaxmat.core.potential.potential` maps
  over such chunks so that every chunk's edge arrays stay in cache.

Optional line graph (bond graph, :mod:`jaxmat.core.graph.linegraph`; sparse layout only): when the
records carry one, ``edges["line"]`` holds ``senders``/``receivers`` (T,) edge indices and
``mask`` (T,) for T triplets (T = ``Budget.n_triplet``). Padding triplets join the last
edge to itself and are masked. Batches without line graphs are unchanged.
"""
from __future__ import annotations

from jaxmat.core.graph.batching import Batch, batch, pad_positions
from jaxmat.core.graph.budget import (LAYOUTS, PAD_NODES, Budget, choose_layout, dense_budget, dense_shape,
                                      estimate_budget, fixed_budget, pack, resolve_layout)
from jaxmat.core.graph.loader import Batcher, GraphLoader
from jaxmat.core.graph.neighborlist import check_symmetric, knn_neighbor_list, neighbor_list
from jaxmat.core.graph.ops import (Pairs, convolve, dense_chunks, edge_vectors, graph_sum,
                                   is_dense, merge_chunks, n_graphs, n_nodes, pair_list,
                                   pair_vectors, safe_norm, split_dense, to_device)
from jaxmat.core.graph.labels import LABEL_KEYS, label_keys_found, read_label
from jaxmat.core.graph.linegraph import add_line_graph, line_graph
from jaxmat.core.graph.records import (Record, atoms_to_record, check_records, make_record,
                                       records, records_from_atoms)
from jaxmat.core.graph.structure import MAX_Z, MIN_DISTANCE, PAD_DISTANCE, validate_structure
